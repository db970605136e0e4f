/* Unit tests for limiter.c: slots, FIFO order, O(1) leave, the token bucket
 * and the queue timeout, on a real libuv loop with deadlines. */
#include "../../src/limiter.c"

#include "test.h"

struct waiter {
    struct limiter_waiter w;
    int admitted;
    int expired;
    int order;
};

static int admissions;

static void on_admitted(struct limiter_waiter *lw)
{
    struct waiter *w = container_of(lw, struct waiter, w);
    w->admitted++;
    w->order = ++admissions;
}

static void on_expired(struct limiter_waiter *lw)
{
    container_of(lw, struct waiter, w)->expired++;
}

static uv_loop_t loop;

static void setup(int max_concurrent, double rate, int burst, uint64_t queue_timeout_ms)
{
    struct limiter_config cfg = {max_concurrent, rate, burst, queue_timeout_ms};
    uv_loop_init(&loop);
    limiter_init(&loop, &cfg);
    admissions = 0;
}

static void teardown(void)
{
    limiter_shutdown();
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ(uv_loop_close(&loop), 0);
}

static void init_waiter(struct waiter *w)
{
    memset(w, 0, sizeof(*w));
    list_init(&w->w.link);
    w->w.on_admitted = on_admitted;
    w->w.on_expired = on_expired;
}

/* Runs the loop until cond holds or deadline_ms passes; the limiter's timer
 * is unref'd, so a ref'd guard timer keeps the loop turning. */
static uv_timer_t guard;
static void guard_cb(uv_timer_t *t) {}
#define RUN_UNTIL(cond, deadline_ms) do { \
    uint64_t until_ = time_mono_ms() + (deadline_ms); \
    uv_timer_init(&loop, &guard); \
    uv_timer_start(&guard, guard_cb, 5, 5); \
    while (!(cond) && time_mono_ms() < until_) \
        uv_run(&loop, UV_RUN_ONCE); \
    uv_close((uv_handle_t *)&guard, NULL); \
    uv_run(&loop, UV_RUN_NOWAIT); \
    } while (0)

static void slots_admit_in_fifo_order(void)
{
    setup(2, 0, 0, 60000);
    struct waiter w[5];
    size_t pos = 0;
    for (int i = 0; i < 5; i++)
        init_waiter(&w[i]);
    CHECK_EQ(limiter_acquire(&w[0].w, &pos), 1);
    CHECK_EQ(limiter_acquire(&w[1].w, &pos), 1);
    CHECK_EQ(limiter_acquire(&w[2].w, &pos), 0);
    CHECK_EQ(pos, 1);
    CHECK_EQ(limiter_acquire(&w[3].w, &pos), 0);
    CHECK_EQ(pos, 2);
    CHECK_EQ(limiter_acquire(&w[4].w, &pos), 0);
    CHECK_EQ(pos, 3);
    CHECK_EQ(limiter_active(), 2);
    CHECK_EQ(limiter_queued(), 3);
    limiter_leave(&w[3].w); /* O(1), from the middle */
    CHECK_EQ(limiter_queued(), 2);
    limiter_leave(&w[3].w); /* twice is harmless */
    CHECK_EQ(limiter_queued(), 2);
    limiter_release();
    CHECK_EQ(w[2].admitted, 1);
    CHECK_EQ(w[4].admitted, 0);
    limiter_release();
    CHECK_EQ(w[4].admitted, 1);
    CHECK_EQ(w[3].admitted, 0);
    CHECK_EQ(limiter_active(), 2);
    CHECK_EQ(limiter_queued(), 0);
    limiter_release();
    limiter_release();
    CHECK_EQ(limiter_active(), 0);
    teardown();
}

/* A waiter admitted from release() that releases at once must not recurse
 * into admitting the next one from inside its own callback. */
static struct waiter chain[3];
static int depth, max_depth;
static void on_admitted_release(struct limiter_waiter *lw)
{
    depth++;
    if (depth > max_depth)
        max_depth = depth;
    on_admitted(lw);
    limiter_release();
    depth--;
}

static void release_inside_admission_does_not_recurse(void)
{
    setup(1, 0, 0, 60000);
    struct waiter first;
    size_t pos;
    init_waiter(&first);
    CHECK_EQ(limiter_acquire(&first.w, &pos), 1);
    for (int i = 0; i < 3; i++) {
        init_waiter(&chain[i]);
        chain[i].w.on_admitted = on_admitted_release;
        CHECK_EQ(limiter_acquire(&chain[i].w, &pos), 0);
    }
    limiter_release();
    CHECK_EQ(chain[0].admitted + chain[1].admitted + chain[2].admitted, 3);
    CHECK_EQ(max_depth, 1);
    CHECK_EQ(limiter_active(), 0);
    teardown();
}

static void token_bucket_spaces_starts(void)
{
    setup(100, 20.0, 2, 60000); /* a token every 50 ms, two at once */
    struct waiter w[4];
    size_t pos;
    for (int i = 0; i < 4; i++)
        init_waiter(&w[i]);
    uint64_t t0 = time_mono_ms();
    CHECK_EQ(limiter_acquire(&w[0].w, &pos), 1);
    CHECK_EQ(limiter_acquire(&w[1].w, &pos), 1);
    CHECK_EQ(limiter_acquire(&w[2].w, &pos), 0);
    CHECK_EQ(limiter_acquire(&w[3].w, &pos), 0);
    RUN_UNTIL(w[3].admitted, 5000);
    uint64_t elapsed = time_mono_ms() - t0;
    CHECK_EQ(w[2].admitted, 1);
    CHECK_EQ(w[3].admitted, 1);
    CHECK(w[2].order < w[3].order);
    CHECK(elapsed >= 90); /* two tokens at 20/s need at least ~100 ms */
    CHECK_EQ(limiter_active(), 4);
    for (int i = 0; i < 4; i++)
        limiter_release();
    teardown();
}

static void queue_timeout_expires_the_head_only(void)
{
    setup(1, 0, 0, 100);
    struct waiter busy, a, b;
    size_t pos;
    init_waiter(&busy);
    init_waiter(&a);
    init_waiter(&b);
    CHECK_EQ(limiter_acquire(&busy.w, &pos), 1);
    CHECK_EQ(limiter_acquire(&a.w, &pos), 0);
    RUN_UNTIL(a.expired, 5000);
    CHECK_EQ(a.expired, 1);
    CHECK_EQ(a.admitted, 0);
    CHECK_EQ(limiter_queued(), 0);
    CHECK_EQ(limiter_acquire(&b.w, &pos), 0);
    limiter_release();
    CHECK_EQ(b.admitted, 1);
    CHECK_EQ(b.expired, 0);
    limiter_release();
    teardown();
}

int main(void)
{
    RUN_TEST(slots_admit_in_fifo_order);
    RUN_TEST(release_inside_admission_does_not_recurse);
    RUN_TEST(token_bucket_spaces_starts);
    RUN_TEST(queue_timeout_expires_the_head_only);
    return test_report("test_limiter");
}
