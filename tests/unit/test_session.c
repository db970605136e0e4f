/* Unit tests for session.c's expiry: idle sessions go after --session-ttl,
 * sessions with a subscriber stay, an active run is cancelled with
 * session_expired, and DELETE's tombstones are forgotten after the TTL. A
 * real uv loop drives the expiry timer with short TTLs; every wait has a
 * deadline. The events a session's runs append are recorded by a store
 * that wraps the memory store (the store seam at work), so they can be
 * checked after the session is gone; the upstream is a fake whose calls
 * never end by themselves. */
#include "../../src/session.c"

#include <stdlib.h>

#include "store.h"
#include "test.h"
#include "upstream.h"

#define TTL_MS 150

/* ---- fake upstream ------------------------------------------------------- */

struct upstream_call {
    int cancelled;
};
static struct upstream_call calls[8];
static int calls_started, calls_cancelled;

struct upstream_call *upstream_call_start(const struct upstream_request *req,
                                          const struct upstream_callbacks *cb, void *arg, int *err)
{
    struct upstream_call *c = &calls[calls_started++];
    c->cancelled = 0;
    return c;
}

void upstream_call_cancel(struct upstream_call *call)
{
    CHECK(!call->cancelled); /* at most once */
    call->cancelled = 1;
    calls_cancelled++;
}

void upstream_call_drain(struct upstream_call *call)
{
    upstream_call_cancel(call);
}

size_t upstream_live_transfers(void)
{
    return 0;
}

/* ---- a store that records what is appended --------------------------------- */

static struct buf appended; /* "event data\n" per append, every log */

static void record(const char *event, const char *data, size_t len)
{
    buf_printf(&appended, "%s %.*s\n", event, (int)len, data);
}

static int64_t recording_start_run(struct store_log *log, const char *run_id, const char *event,
                                   const char *data, size_t len, store_done_cb done, void *arg)
{
    record(event, data, len);
    return store_memory_ops.start_run(log, run_id, event, data, len, done, arg);
}

static int64_t recording_append(struct store_log *log, const char *run_id, const char *event,
                                const char *data, size_t len)
{
    record(event, data, len);
    return store_memory_ops.append(log, run_id, event, data, len);
}

static int64_t recording_end_run(struct store_log *log, const char *run_id, const char *event,
                                 const char *data, size_t len)
{
    record(event, data, len);
    return store_memory_ops.end_run(log, run_id, event, data, len);
}

static struct store_ops recording_ops;

static struct store_log *recording_open(const char *app, const char *user, const char *session)
{
    struct store_log *log = store_memory_ops.open(app, user, session);
    log->ops = &recording_ops; /* the memory store's functions, through ours */
    return log;
}

/* Occurrences of needle in what was appended. */
static int appended_count(const char *needle)
{
    int n = 0;
    for (const char *p = appended.data; p && (p = strstr(p, needle)) != NULL; p++)
        n++;
    return n;
}

/* ---- a subscriber transport that takes everything ----------------------- */

struct sink {
    struct subscriber *sub;
    int attached;
    size_t bytes;
    int ended;
};

static int sink_send(void *transport, const uv_buf_t *bufs, unsigned nbufs, void *write)
{
    struct sink *k = transport;
    for (unsigned i = 0; i < nbufs; i++)
        k->bytes += bufs[i].len;
    return 1;
}

static size_t sink_pending(void *transport)
{
    return 0;
}

static void sink_end(void *transport)
{
    struct sink *k = transport;
    k->attached = 0;
    k->ended++;
}

static void sink_cut(void *transport, int abort)
{
    struct sink *k = transport;
    if (k->attached) {
        k->attached = 0;
        hub_unsubscribe(k->sub);
    }
}

static const struct subscriber_ops sink_ops = {
    .send = sink_send, .pending = sink_pending, .end = sink_end, .cut = sink_cut,
};

/* ---- loop ---------------------------------------------------------------- */

static uv_loop_t loop;
static uv_timer_t keep_alive; /* the expiry timer is unref'd: this keeps uv_run going */

static void keep_alive_cb(uv_timer_t *t)
{
}

static void setup(void)
{
    log_configure(LOG_ERROR, LOG_TEXT);
    uv_loop_init(&loop);
    recording_ops = store_memory_ops;
    recording_ops.name = "recording";
    recording_ops.open = recording_open;
    recording_ops.start_run = recording_start_run;
    recording_ops.append = recording_append;
    recording_ops.end_run = recording_end_run;
    struct store_config stc = {.history = 100, .history_bytes = 1 << 20, .on_terminal = run_count_terminal};
    store_init(&recording_ops, &stc);
    struct hub_config hc = {.subscriber_buffer = 1 << 20, .retry_ms = 1000, .max_subscribers = 10};
    hub_init(&loop, &hc);
    struct limiter_config lc = {.max_concurrent = 4, .queue_timeout_ms = 100000};
    limiter_init(&loop, &lc);
    struct session_config sc = {.max_sessions = 100, .ttl_ms = TTL_MS};
    session_table_init(&loop, &sc);
    uv_timer_init(&loop, &keep_alive);
    uv_timer_start(&keep_alive, keep_alive_cb, 5, 5);
    buf_reset(&appended);
    calls_started = calls_cancelled = 0;
}

static void teardown(void)
{
    session_table_shutdown("shutdown");
    CHECK_EQ(run_count_active(), 0);
    CHECK_EQ(limiter_active(), 0);
    limiter_shutdown();
    hub_shutdown();
    uv_close((uv_handle_t *)&keep_alive, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ(uv_loop_close(&loop), 0);
    CHECK_EQ(frame_count(), 0);
    CHECK_EQ(hub_total_subscribers(), 0);
    CHECK_EQ(quota_user_count(), 0);
    store_init(&store_memory_ops, &(struct store_config){.history = 100, .history_bytes = 1 << 20, .on_terminal = run_count_terminal});
}

/* Runs the loop until session_count() is want or deadline_ms passed.
 * Returns the milliseconds it ran. */
static uint64_t run_until_sessions(size_t want, uint64_t deadline_ms)
{
    uint64_t start = time_mono_ms();
    while (session_count() != want && time_mono_ms() - start < deadline_ms)
        uv_run(&loop, UV_RUN_ONCE);
    return time_mono_ms() - start;
}

/* Runs the loop for ms. */
static void run_for(uint64_t ms)
{
    uint64_t start = time_mono_ms();
    while (time_mono_ms() - start < ms)
        uv_run(&loop, UV_RUN_ONCE);
}

static struct session *new_session(const char *id)
{
    struct session *s = NULL;
    CHECK_EQ(session_get_or_create("app", "user", id, &s), 0);
    return s;
}

/* ---- tests --------------------------------------------------------------- */

static void idle_session_expires_after_the_ttl(void)
{
    setup();
    new_session("idle");
    CHECK_EQ(session_count(), 1);
    run_for(TTL_MS / 2);
    CHECK_EQ(session_count(), 1); /* not before the TTL */
    uint64_t waited = run_until_sessions(0, 2000);
    CHECK_EQ(session_count(), 0);
    CHECK(TTL_MS / 2 + waited >= TTL_MS);
    CHECK(waited < 1000);
    CHECK_EQ(session_find("app", "user", "idle") == NULL, 1);
    /* expired, not deleted: no tombstone, and subscribers were told */
    CHECK_EQ(tombstones.count, 0);
    CHECK_EQ(appended_count("session.closed {\"reason\":\"session_expired\"}"), 1);
    teardown();
}

static void touched_session_outlives_the_ttl(void)
{
    setup();
    struct session *s = new_session("busy");
    for (int i = 0; i < 6; i++) { /* 6 x TTL/3: twice the TTL in all */
        run_for(TTL_MS / 3);
        CHECK_EQ(session_count(), 1);
        session_touch(s);
    }
    CHECK_EQ(session_count(), 1);
    run_until_sessions(0, 2000);
    CHECK_EQ(session_count(), 0);
    teardown();
}

static void subscribed_session_is_kept(void)
{
    setup();
    struct session *s = new_session("watched");
    struct sink k = {.attached = 1};
    struct hub_subscribe_options opt = {.from_live = 1};
    CHECK_EQ(hub_subscribe(s->hub, &sink_ops, &k, &opt, &k.sub), 0);
    CHECK_EQ(k.attached, 1);
    run_for(3 * TTL_MS);
    CHECK_EQ(session_count(), 1);
    CHECK_EQ(k.ended, 0);
    sink_cut(&k, 0); /* the tab closes */
    CHECK_EQ(hub_subscriber_count(s->hub), 0);
    uint64_t waited = run_until_sessions(0, 2000);
    CHECK_EQ(session_count(), 0);
    CHECK(waited < 1000);
    CHECK_EQ(appended_count("session.closed"), 1);
    teardown();
}

static void active_run_is_cancelled_when_its_session_expires(void)
{
    setup();
    struct session *s = new_session("running");
    json_t *msg = json_pack("{s:s, s:[{s:s}]}", "role", "user", "parts", "text", "hi");
    struct run_input in = {.new_message = msg, .streaming = 1};
    struct run *r = session_start_run(s, &in, NULL, NULL);
    CHECK_EQ(r->state, RUN_RUNNING);
    CHECK_EQ(calls_started, 1);
    CHECK_EQ(run_count_active(), 1);
    uint64_t cancelled_before = run_count_outcome(RUN_CANCELLED);
    run_until_sessions(0, 2000);
    CHECK_EQ(session_count(), 0);
    CHECK_EQ(calls_cancelled, 1);
    CHECK_EQ(run_count_active(), 0);
    CHECK_EQ(limiter_active(), 0);
    CHECK_EQ(run_count_outcome(RUN_CANCELLED) - cancelled_before, 1);
    CHECK_EQ(appended_count("run.started "), 1);
    CHECK_EQ(appended_count("run.cancelled {\"reason\":\"session_expired\""), 1);
    /* the run's terminal event comes before the session's last word */
    const char *cancelled = strstr(appended.data, "run.cancelled");
    const char *closed = strstr(appended.data, "session.closed");
    CHECK(cancelled != NULL && closed != NULL && cancelled < closed);
    teardown();
}

static void tombstones_are_forgotten_after_the_ttl(void)
{
    setup();
    struct session *s = new_session("deleted");
    struct store_meta m;
    store_meta(s->log, &m);
    char id[40];
    store_format_id(id, sizeof(id), m.incarnation, 1);
    char other[40];
    store_format_id(other, sizeof(other), m.incarnation + 1, 1);
    session_delete(s, "session_deleted");
    CHECK_EQ(session_count(), 0);
    CHECK_EQ(tombstones.count, 1);
    CHECK_EQ(session_was_deleted("app", "user", "deleted", id), 1);
    CHECK_EQ(session_was_deleted("app", "user", "deleted", other), 0); /* another incarnation */
    CHECK_EQ(session_was_deleted("app", "user", "deleted", NULL), 0);
    run_for(TTL_MS / 2);
    CHECK_EQ(tombstones.count, 1);
    CHECK_EQ(session_was_deleted("app", "user", "deleted", id), 1);
    uint64_t start = time_mono_ms();
    while (tombstones.count > 0 && time_mono_ms() - start < 2000)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK_EQ(tombstones.count, 0);
    CHECK(time_mono_ms() - start < 1000);
    CHECK_EQ(session_was_deleted("app", "user", "deleted", id), 0);
    teardown();
}

int main(void)
{
    RUN_TEST(idle_session_expires_after_the_ttl);
    RUN_TEST(touched_session_outlives_the_ttl);
    RUN_TEST(subscribed_session_is_kept);
    RUN_TEST(active_run_is_cancelled_when_its_session_expires);
    RUN_TEST(tombstones_are_forgotten_after_the_ttl);
    buf_free(&appended);
    return test_report("test_session");
}
