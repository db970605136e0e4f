/* Unit tests for hub.c over the memory store: replay positions, the log's
 * bounds, fan-out and drops, with a fake subscriber transport that records
 * what would go on the wire. Writes complete only when the test says so, as
 * with a real socket. */
#include "../../src/hub.c"

#include <stdlib.h>

#include "test.h"

struct pending_write {
    void *write; /* the hub's token for hub_write_done() */
    size_t bytes;
};

/* A fake subscriber transport: records every byte it is given, takes what
 * the test lets it take at once and queues the rest, like a socket. */
struct fake {
    struct buf wire;        /* every byte handed to "the socket" */
    struct subscriber *sub; /* the hub's, while attached */
    int attached;           /* the hub holds it: a cut must unsubscribe */
    int closed;
    int close_calls;        /* cuts */
    struct pending_write pending[256];
    int npending;
    size_t queue_bytes;     /* what pending() reports */
    size_t take;            /* bytes send() writes at once (0: the socket is full) */
    int try_error;          /* send() fails with this (and cuts) */
    int try_calls;
    int ended;              /* end() calls: normal ends */
};

static void fake_cut(void *transport, int abort)
{
    struct fake *c = transport;
    if (c->closed)
        return;
    c->closed = 1;
    c->close_calls++;
    if (c->attached) {
        c->attached = 0;
        hub_unsubscribe(c->sub);
    }
}

/* Like the server: the kernel takes what it takes (nothing while writes are
 * queued), the rest becomes a pending write; an error cuts the stream (the
 * hub hears of it at once). */
/* Set between the flush hooks of batching_setup(): a send is kept for the
 * batch's end, as the server's io_uring batch keeps it. */
static int batching;

static int fake_send(void *transport, const uv_buf_t *bufs, unsigned nbufs, void *write)
{
    struct fake *c = transport;
    if (c->closed)
        return UV_ECANCELED;
    c->try_calls++;
    if (c->try_error) {
        fake_cut(c, 1);
        return c->try_error;
    }
    if (batching) {
        size_t bytes = 0;
        for (unsigned i = 0; i < nbufs; i++) {
            buf_append(&c->wire, bufs[i].base, bufs[i].len);
            bytes += bufs[i].len;
        }
        c->pending[c->npending++] = (struct pending_write){write, bytes};
        return 0;
    }
    size_t taken = 0, queued = 0;
    for (unsigned i = 0; i < nbufs; i++) {
        size_t part = 0;
        if (c->npending == 0 && taken < c->take)
            part = bufs[i].len < c->take - taken ? bufs[i].len : c->take - taken;
        buf_append(&c->wire, bufs[i].base, bufs[i].len); /* all of it, in order */
        taken += part;
        queued += bufs[i].len - part;
    }
    c->take -= taken;
    if (queued == 0)
        return 1;
    if (c->npending == (int)RC_ARRAY_SIZE(c->pending)) {
        CHECK(!"too many writes in flight");
        return -ENOBUFS;
    }
    c->pending[c->npending++] = (struct pending_write){write, queued};
    return 0;
}

static size_t fake_pending(void *transport)
{
    return ((struct fake *)transport)->queue_bytes;
}

/* The normal end: the hub let go already. */
static void fake_end(void *transport)
{
    struct fake *c = transport;
    c->attached = 0;
    c->ended++;
}

static const struct subscriber_ops fake_ops = {
    .send = fake_send, .pending = fake_pending, .end = fake_end, .cut = fake_cut,
};

static int subscribe_with(struct hub *h, struct fake *c, const struct hub_subscribe_options *opt)
{
    c->attached = 1;
    int rc = hub_subscribe(h, &fake_ops, c, opt, &c->sub);
    if (rc < 0)
        c->attached = 0;
    return rc;
}

static int subscribe(struct hub *h, struct fake *c, const char *last_event_id, int from_live)
{
    struct hub_subscribe_options opt = {.last_event_id = last_event_id, .from_live = from_live};
    return subscribe_with(h, c, &opt);
}

/* The client goes away. */
static void fake_leave(struct fake *c)
{
    fake_cut(c, 0);
}

/* Completes every pending write (status 0, or -ECANCELED once closed). */
static void complete_writes(struct fake *c)
{
    while (c->npending > 0) {
        struct pending_write w = c->pending[0];
        memmove(c->pending, c->pending + 1, (size_t)--c->npending * sizeof(w));
        hub_write_done(w.write, c->closed ? UV_ECANCELED : 0);
    }
}

/* ---- a session's log and its hub ------------------------------------------ */

static struct hub *hub_new(void)
{
    return hub_create(store_open("app", "user", "session"));
}

static void hub_free(struct hub *h)
{
    struct store_log *log = h->log;
    hub_destroy(h);
    store_close(log);
}

static uint64_t publish(struct hub *h, const char *event, const char *data, size_t len,
                        int run_start)
{
    int64_t seq = run_start ? store_start_run(h->log, "r1", event, data, len, NULL, NULL)
                            : store_append(h->log, "r1", event, data, len);
    CHECK(seq > 0);
    return (uint64_t)seq;
}

static struct store_meta meta_of(const struct hub *h)
{
    struct store_meta m;
    store_meta(h->log, &m);
    return m;
}

static uv_loop_t loop;
static uint64_t heartbeat_ms; /* the next setup()'s --heartbeat; 0: none */

static int max_subscribers = 10;

static void setup(int history, size_t history_bytes, size_t subscriber_buffer)
{
    struct store_config store_cfg = {.history = history, .history_bytes = history_bytes};
    store_init(&store_memory_ops, &store_cfg);
    struct hub_config cfg = {
        .subscriber_buffer = subscriber_buffer,
        .heartbeat_ms = heartbeat_ms,
        .retry_ms = 3000,
        .max_subscribers = max_subscribers,
    };
    uv_loop_init(&loop);
    hub_init(&loop, &cfg);
}

/* Makes every stream look silent for ms longer than it has been. */
static void age_streams(uint64_t ms)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &all_subscribers)
        container_of(pos, struct subscriber, all_link)->last_write_ms -= ms;
}

/* all_subscribers is in last-write order, oldest first. */
static int heartbeat_order_valid(void)
{
    uint64_t prev = 0;
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &all_subscribers) {
        uint64_t t = container_of(pos, struct subscriber, all_link)->last_write_ms;
        if (t < prev)
            return 0;
        prev = t;
    }
    return 1;
}

static void teardown(void)
{
    heartbeat_ms = 0;
    hub_shutdown();
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ(uv_loop_close(&loop), 0);
    CHECK_EQ(frame_count(), 0);
    CHECK_EQ(hub_total_subscribers(), 0);
}

static void publish_n(struct hub *h, const char *event, int n)
{
    for (int i = 0; i < n; i++) {
        char data[64];
        int len = snprintf(data, sizeof(data), "{\"n\":%d}", i);
        publish(h, event, data, (size_t)len, 0);
    }
}

/* Ends the loop iteration: what was published since the last one is
 * written (the hub batches writes per iteration). */
static void flush(void)
{
    uv_run(&loop, UV_RUN_NOWAIT);
}

/* Number of occurrences of needle in the fake's wire bytes. */
static int count(const struct fake *c, const char *needle)
{
    int n = 0;
    for (const char *p = c->wire.data; p && (p = strstr(p, needle)) != NULL; p++)
        n++;
    return n;
}

static void id_line(char *out, size_t size, const struct hub *h, uint64_t seq)
{
    char id[40];
    store_format_id(id, sizeof(id), meta_of(h).incarnation, seq);
    snprintf(out, size, "id: %s\n", id);
}

static void default_replay_starts_at_latest_run(void)
{
    setup(100, 1 << 20, 1 << 20);
    struct hub *h = hub_new();
    publish(h, "run.started", "{}", 2, 1);
    publish_n(h, "agent.event", 3);
    publish(h, "run.started", "{\"second\":1}", 12, 1); /* seq 5 */
    publish_n(h, "agent.event", 2);
    struct fake c = {0};
    CHECK_EQ(subscribe(h, &c, NULL, 0), 0);
    /* retry joins the first event block: no empty message for it */
    CHECK(strncmp(c.wire.data, "retry: 3000\nid: ", 16) == 0);
    CHECK_EQ(count(&c, "event: run.started"), 1);
    CHECK_EQ(count(&c, "{\"second\":1}"), 1);
    CHECK_EQ(count(&c, "event: agent.event"), 2);
    char line[64];
    id_line(line, sizeof(line), h, 5);
    CHECK(strstr(c.wire.data, line) != NULL);
    id_line(line, sizeof(line), h, 4);
    CHECK(strstr(c.wire.data, line) == NULL);
    complete_writes(&c);
    hub_free(h);
    CHECK_EQ(c.ended, 1); /* a normal end, not a cut */
    CHECK_EQ(c.close_calls, 0);
    CHECK_EQ(hub_total_subscribers(), 0);
    complete_writes(&c);
    buf_free(&c.wire);
    teardown();
}

static void last_event_id_resumes_without_gap_or_duplicate(void)
{
    setup(100, 1 << 20, 1 << 20);
    struct hub *h = hub_new();
    publish(h, "run.started", "{}", 2, 1);
    publish_n(h, "agent.event", 9); /* seq 1..10 */
    char id[40];
    store_format_id(id, sizeof(id), meta_of(h).incarnation, 6);
    struct fake c = {0};
    CHECK_EQ(subscribe(h, &c, id, 0), 0);
    CHECK_EQ(count(&c, "id: "), 4); /* 7, 8, 9, 10 */
    CHECK_EQ(count(&c, "stream.reset"), 0);
    char line[64];
    id_line(line, sizeof(line), h, 7);
    CHECK(strstr(c.wire.data, line) != NULL);
    id_line(line, sizeof(line), h, 6);
    CHECK(strstr(c.wire.data, line) == NULL);
    complete_writes(&c);
    publish_n(h, "agent.event", 1); /* live: 11 */
    CHECK_EQ(count(&c, "id: "), 4); /* queued until the iteration ends */
    flush();
    CHECK_EQ(count(&c, "id: "), 5);
    complete_writes(&c);
    /* The newest id: nothing to replay, no reset. */
    store_format_id(id, sizeof(id), meta_of(h).incarnation, 11);
    struct fake d = {0};
    CHECK_EQ(subscribe(h, &d, id, 0), 0);
    CHECK_EQ(count(&d, "id: "), 0);
    CHECK_EQ(count(&d, "stream.reset"), 0);
    complete_writes(&d);
    hub_free(h);
    complete_writes(&c);
    complete_writes(&d);
    buf_free(&c.wire);
    buf_free(&d.wire);
    teardown();
}

static void unplaceable_ids_reset_then_replay_oldest(void)
{
    setup(5, 1 << 20, 1 << 20);
    struct hub *h = hub_new();
    publish(h, "run.started", "{}", 2, 1);
    publish_n(h, "agent.event", 9); /* seq 1..10, log keeps 6..10 */
    CHECK_EQ(meta_of(h).frames, 5);
    const char *foreign[] = {"bogus", "00000000-3", "", "ffffffff-99999999999999999999"};
    for (size_t i = 0; i < RC_ARRAY_SIZE(foreign); i++) {
        struct fake c = {0};
        CHECK_EQ(subscribe(h, &c, foreign[i], 0), 0);
        CHECK_EQ(count(&c, "event: stream.reset\ndata: {\"reason\":\"unknown_event_id\"}"), 1);
        CHECK_EQ(count(&c, "id: "), 5);
        complete_writes(&c);
        fake_leave(&c);
        buf_free(&c.wire);
    }
    char id[40];
    store_format_id(id, sizeof(id), meta_of(h).incarnation, 3); /* evicted */
    struct fake c = {0};
    CHECK_EQ(subscribe(h, &c, id, 0), 0);
    CHECK_EQ(count(&c, "\"reason\":\"event_id_evicted\""), 1);
    CHECK_EQ(count(&c, "id: "), 5);
    complete_writes(&c);
    fake_leave(&c);
    buf_free(&c.wire);
    /* Default replay whose run start was evicted also resets. */
    struct fake d = {0};
    CHECK_EQ(subscribe(h, &d, NULL, 0), 0);
    CHECK_EQ(count(&d, "\"reason\":\"run_start_evicted\""), 1);
    complete_writes(&d);
    fake_leave(&d);
    buf_free(&d.wire);
    /* An id of an earlier incarnation of the session is foreign. */
    struct hub *again = hub_new();
    publish(again, "run.started", "{}", 2, 1);
    store_format_id(id, sizeof(id), meta_of(h).incarnation, 10);
    struct fake e = {0};
    CHECK_EQ(subscribe(again, &e, id, 0), 0);
    CHECK_EQ(count(&e, "\"reason\":\"unknown_event_id\""), 1);
    complete_writes(&e);
    hub_free(again);
    hub_free(h);
    complete_writes(&e);
    buf_free(&e.wire);
    teardown();
}

static void from_live_skips_replay(void)
{
    setup(100, 1 << 20, 1 << 20);
    struct hub *h = hub_new();
    publish(h, "run.started", "{}", 2, 1);
    publish_n(h, "agent.event", 3);
    struct fake c = {0};
    CHECK_EQ(subscribe(h, &c, NULL, 1), 0);
    CHECK_EQ(count(&c, "id: "), 0);
    complete_writes(&c);
    publish_n(h, "agent.event", 1);
    flush();
    CHECK_EQ(count(&c, "id: "), 1);
    complete_writes(&c);
    hub_free(h);
    complete_writes(&c);
    buf_free(&c.wire);
    teardown();
}

static void ids_strictly_increase(void)
{
    setup(100, 1 << 20, 1 << 20);
    struct hub *h = hub_new();
    uint64_t prev = 0;
    for (int i = 0; i < 50; i++) {
        uint64_t seq = publish(h, "agent.event", "{}", 2, i == 0);
        CHECK(seq > prev);
        prev = seq;
    }
    CHECK_EQ(prev, 50);
    hub_free(h);
    teardown();
}

static void log_is_bounded_by_count_and_bytes(void)
{
    setup(10, 1024, 1 << 20);
    struct hub *h = hub_new();
    publish_n(h, "agent.event", 25);
    CHECK_EQ(meta_of(h).frames, 10);
    CHECK_EQ(meta_of(h).oldest_seq, 16);
    char big[300];
    memset(big, 'x', sizeof(big));
    big[0] = '"';
    big[sizeof(big) - 1] = '"';
    for (int i = 0; i < 10; i++)
        publish(h, "agent.event", big, sizeof(big), 0);
    CHECK(meta_of(h).bytes <= 1024);
    CHECK(meta_of(h).frames >= 2 && meta_of(h).frames <= 3);
    CHECK_EQ(frame_count(), meta_of(h).frames + 1); /* + the shared keepalive */
    hub_free(h);
    teardown();
}

static void slow_subscriber_is_dropped_and_others_get_everything(void)
{
    setup(1000, 1 << 22, 4096);
    struct hub *h = hub_new();
    struct fake fast = {0}, slow = {0};
    CHECK_EQ(subscribe(h, &fast, NULL, 1), 0);
    CHECK_EQ(subscribe(h, &slow, NULL, 1), 0);
    complete_writes(&fast);
    complete_writes(&slow);
    char data[512];
    memset(data, 'y', sizeof(data));
    data[0] = '"';
    data[sizeof(data) - 1] = '"';
    for (int i = 0; i < 40; i++) {
        publish(h, "agent.event", data, sizeof(data), 0);
        flush();
        complete_writes(&fast); /* the fast reader drains each time */
        slow.queue_bytes = slow.npending ? slow.pending[0].bytes : 0; /* stuck in libuv */
    }
    CHECK_EQ(slow.close_calls, 1);
    CHECK_EQ(fast.close_calls, 0);
    CHECK_EQ(count(&fast, "event: agent.event"), 40);
    CHECK_EQ(hub_dropped_total(HUB_DROP_SLOW), 1);
    CHECK_EQ(hub_subscriber_count(h), 1);
    complete_writes(&slow);
    hub_free(h);
    complete_writes(&fast);
    buf_free(&fast.wire);
    buf_free(&slow.wire);
    teardown();
}

/* All in one loop iteration (no flush between the publishes): a socket
 * that takes nothing is dropped as soon as its backlog passes the buffer,
 * one that takes everything is not, however big the burst. */
static void burst_in_one_iteration_drops_only_the_blocked_subscriber(void)
{
    setup(1000, 1 << 22, 4096);
    struct hub *h = hub_new();
    struct fake fast = {0}, blocked = {0};
    CHECK_EQ(subscribe(h, &fast, NULL, 1), 0);
    CHECK_EQ(subscribe(h, &blocked, NULL, 1), 0);
    complete_writes(&fast);
    complete_writes(&blocked);
    fast.take = SIZE_MAX;
    uint64_t dropped_before = hub_dropped_total(HUB_DROP_SLOW);
    char data[512];
    memset(data, 'y', sizeof(data));
    data[0] = '"';
    data[sizeof(data) - 1] = '"';
    for (int i = 0; i < 40; i++) {
        publish(h, "agent.event", data, sizeof(data), 0);
        blocked.queue_bytes = blocked.npending ? blocked.pending[0].bytes : 0;
    }
    CHECK_EQ(blocked.close_calls, 1);
    CHECK(count(&blocked, "event: agent.event") < 12); /* dropped near 4096 bytes */
    CHECK_EQ(fast.close_calls, 0);
    CHECK_EQ(hub_dropped_total(HUB_DROP_SLOW) - dropped_before, 1);
    flush();
    CHECK_EQ(count(&fast, "event: agent.event"), 40);
    CHECK_EQ(fast.npending, 0);
    complete_writes(&blocked);
    hub_free(h);
    buf_free(&fast.wire);
    buf_free(&blocked.wire);
    teardown();
}

static void live_subscriber_never_lags_behind_a_tiny_log(void)
{
    setup(5, 1 << 20, 1 << 20);
    struct hub *h = hub_new();
    struct fake c = {0};
    CHECK_EQ(subscribe(h, &c, NULL, 1), 0);
    /* The socket is backed up while 20 events arrive at once: the log
     * keeps 5, the subscriber holds references to all 20. */
    c.queue_bytes = 100;
    publish_n(h, "agent.event", 20);
    CHECK_EQ(meta_of(h).frames, 5);
    CHECK_EQ(count(&c, "event: agent.event"), 0);
    c.queue_bytes = 0;
    complete_writes(&c);
    CHECK_EQ(count(&c, "event: agent.event"), 20);
    CHECK_EQ(c.close_calls, 0);
    CHECK_EQ(hub_dropped_total(HUB_DROP_LAGGED), 0);
    hub_free(h);
    complete_writes(&c);
    buf_free(&c.wire);
    teardown();
}

static void destroy_flushes_everything_before_closing(void)
{
    setup(1000, 1 << 22, 1 << 20);
    struct hub *h = hub_new();
    struct fake c = {0};
    CHECK_EQ(subscribe(h, &c, NULL, 1), 0);
    c.queue_bytes = 1; /* backed up: events pile up behind the first write */
    publish_n(h, "agent.event", 100);
    publish(h, "session.closed", "{\"reason\":\"session_deleted\"}", 28, 0);
    hub_free(h);
    CHECK_EQ(c.ended, 1);
    CHECK_EQ(c.close_calls, 0);
    CHECK_EQ(count(&c, "event: agent.event"), 100);
    CHECK_EQ(count(&c, "event: session.closed"), 1);
    complete_writes(&c);
    buf_free(&c.wire);
    teardown();
}

/* Many streams due at once get their keepalives HEARTBEAT_BATCH per loop
 * iteration, oldest first, the timer re-armed at once for the rest. */
static void heartbeat_burst_is_spread_over_iterations(void)
{
    enum { N = 2 * HEARTBEAT_BATCH + 10 };
    heartbeat_ms = 1000;
    max_subscribers = N;
    setup(100, 1 << 20, 1 << 20);
    struct hub *h = hub_new();
    static struct fake f[N];
    memset(f, 0, sizeof(f));
    for (int i = 0; i < N; i++) {
        f[i].take = 1 << 20;
        CHECK_EQ(subscribe(h, &f[i], NULL, 1), 0);
    }
    age_streams(1100);
    int sent[3];
    for (int round = 0; round < 3; round++) {
        heartbeat_cb(&heartbeat_timer);
        sent[round] = 0;
        for (int i = 0; i < N; i++)
            sent[round] += count(&f[i], ": keepalive\n");
        if (round < 2)
            CHECK_EQ(uv_timer_get_due_in(&heartbeat_timer), 0);
    }
    CHECK_EQ(sent[0], HEARTBEAT_BATCH);
    CHECK_EQ(sent[1], 2 * HEARTBEAT_BATCH);
    CHECK_EQ(sent[2], N);
    CHECK_EQ(count(&f[0], ": keepalive\n"), 1); /* the oldest first */
    CHECK(uv_timer_get_due_in(&heartbeat_timer) > 800);
    hub_free(h);
    for (int i = 0; i < N; i++)
        buf_free(&f[i].wire);
    max_subscribers = 10;
    teardown();
}

/* A log whose events were replaced (a remote store lost data): every
 * stream is cut, none ended normally, and new subscribers are placed in
 * the new log from the hub's fresh view of it. */
static void reset_cuts_every_stream(void)
{
    setup(1000, 1 << 22, 1 << 20);
    struct hub *h = hub_new();
    struct fake a = {0}, b = {0}, late = {0};
    a.take = b.take = late.take = 1 << 20;
    CHECK_EQ(subscribe(h, &a, NULL, 1), 0);
    CHECK_EQ(subscribe(h, &b, NULL, 1), 0);
    publish_n(h, "agent.event", 3);
    flush();
    store_memory_restart(h->log, 0xabcdef01u, 40, 0);
    hub_reset(h);
    CHECK_EQ(hub_subscriber_count(h), 0);
    CHECK_EQ(a.close_calls, 1);
    CHECK_EQ(b.close_calls, 1);
    CHECK_EQ(a.ended + b.ended, 0);
    CHECK_EQ(count(&a, "event: agent.event"), 3);
    CHECK_EQ(subscribe(h, &late, NULL, 1), 0);
    store_memory_put(h->log, 41, "agent.event", "{}", 2, 0);
    flush();
    CHECK_EQ(count(&late, "id: abcdef01-41\n"), 1);
    hub_free(h);
    buf_free(&a.wire);
    buf_free(&b.wire);
    buf_free(&late.wire);
    teardown();
}

/* A stream written in the middle of a period is not due when an idle one
 * is; each due stream gets one comment line (no blank line: it dispatches
 * nothing) and moves to the tail; the timer then waits for the next one. */
static void heartbeat_reaches_silent_streams_only(void)
{
    heartbeat_ms = 1000;
    setup(100, 1 << 20, 1 << 20);
    struct hub *quiet = hub_new(), *talking = hub_new();
    struct fake idle = {0}, busy = {0};
    CHECK_EQ(subscribe(quiet, &idle, NULL, 1), 0);
    CHECK_EQ(subscribe(talking, &busy, NULL, 1), 0);
    CHECK(uv_is_active((uv_handle_t *)&heartbeat_timer));
    CHECK_EQ(uv_timer_get_due_in(&heartbeat_timer), 1000);
    complete_writes(&idle);
    complete_writes(&busy);
    heartbeat_cb(&heartbeat_timer); /* both wrote their preamble just now */
    CHECK_EQ(count(&idle, ": keepalive"), 0);
    CHECK_EQ(count(&busy, ": keepalive"), 0);

    age_streams(600);
    publish_n(talking, "agent.event", 1); /* busy writes mid-period */
    flush();
    CHECK(heartbeat_order_valid());
    CHECK(container_of(all_subscribers.prev, struct subscriber, all_link)->transport == &busy);
    complete_writes(&busy);
    age_streams(500); /* idle: silent 1100 ms; busy: 500 ms */
    heartbeat_cb(&heartbeat_timer);
    CHECK_EQ(count(&idle, ": keepalive\n"), 1);
    CHECK_EQ(count(&idle, ": keepalive\n\n"), 0);
    CHECK_EQ(count(&busy, ": keepalive"), 0);
    CHECK(heartbeat_order_valid());
    /* next due: busy, 500 ms after its event */
    CHECK(uv_is_active((uv_handle_t *)&heartbeat_timer));
    CHECK(uv_timer_get_due_in(&heartbeat_timer) <= 500);
    complete_writes(&idle);

    /* within an eighth of the period: served by the same wake-up */
    age_streams(400);
    heartbeat_cb(&heartbeat_timer);
    CHECK_EQ(count(&busy, ": keepalive\n"), 1);
    CHECK_EQ(count(&idle, ": keepalive\n"), 1);
    complete_writes(&busy);
    hub_free(quiet);
    hub_free(talking);
    buf_free(&idle.wire);
    buf_free(&busy.wire);
    teardown();
}

/* The fakes whose writes the batch's end completes, and the hook calls. */
static struct fake *batch_fakes[4];
static int nbatch_fakes, flush_begins, flush_ends;

static void on_flush_begin(void)
{
    flush_begins++;
    batching = 1;
}

static void complete_writes(struct fake *c);

static void on_flush_end(void)
{
    flush_ends++;
    batching = 0;
    for (int i = 0; i < nbatch_fakes; i++)
        complete_writes(batch_fakes[i]);
}

/* Every flush is wrapped in the hooks once; a send kept for the batch (0)
 * completes at its end through hub_write_done(), which sends nothing more
 * when nothing more was published: one send per subscriber per flush, and
 * the bytes exactly as without the batch. */
static void batched_flush_sends_once_per_subscriber_and_completes_at_the_end(void)
{
    setup(100, 1 << 20, 1 << 20);
    hub_shutdown(); /* again, with the hooks */
    uv_run(&loop, UV_RUN_DEFAULT);
    struct hub_config cfg = {.subscriber_buffer = 1 << 20, .retry_ms = 3000,
                             .max_subscribers = max_subscribers,
                             .flush_begin = on_flush_begin, .flush_end = on_flush_end};
    hub_init(&loop, &cfg);
    flush_begins = flush_ends = 0;
    struct hub *h = hub_new();
    struct fake a = {.take = 1 << 20}, b = {.take = 1 << 20};
    batch_fakes[0] = &a;
    batch_fakes[1] = &b;
    nbatch_fakes = 2;
    CHECK_EQ(subscribe(h, &a, NULL, 1), 0);
    CHECK_EQ(subscribe(h, &b, NULL, 1), 0);
    flush();
    int begins = flush_begins, a_calls = a.try_calls, b_calls = b.try_calls;
    publish_n(h, "agent.event", 3);
    flush();
    CHECK_EQ(flush_begins, begins + 1);
    CHECK_EQ(flush_ends, flush_begins);
    CHECK_EQ(a.try_calls, a_calls + 1);
    CHECK_EQ(b.try_calls, b_calls + 1);
    CHECK_EQ(a.npending, 0);
    CHECK_EQ(b.npending, 0);
    CHECK_EQ(count(&a, "event: agent.event"), 3);
    CHECK_EQ(strcmp(a.wire.data, b.wire.data), 0);
    publish_n(h, "agent.event", 2);
    flush();
    CHECK_EQ(flush_begins, begins + 2);
    CHECK_EQ(a.try_calls, a_calls + 2);
    CHECK_EQ(count(&b, "event: agent.event"), 5);
    CHECK_EQ(hub_subscriber_count(h), 2);
    hub_free(h);
    nbatch_fakes = 0;
    buf_free(&a.wire);
    buf_free(&b.wire);
    teardown();
}

static void one_write_per_subscriber_per_iteration(void)
{
    setup(100, 1 << 20, 1 << 20);
    struct hub *h = hub_new();
    struct fake a = {0}, b = {0};
    CHECK_EQ(subscribe(h, &a, NULL, 1), 0);
    CHECK_EQ(subscribe(h, &b, NULL, 1), 0);
    complete_writes(&a);
    complete_writes(&b);
    size_t before = a.wire.len;
    publish_n(h, "agent.event", 5);
    CHECK_EQ(a.npending, 0);
    flush();
    CHECK_EQ(a.npending, 1);
    CHECK_EQ(b.npending, 1);
    CHECK_EQ(a.pending[0].bytes, a.wire.len - before);
    CHECK_EQ(count(&a, "event: agent.event"), 5);
    CHECK_EQ(count(&b, "event: agent.event"), 5);
    CHECK_EQ(strcmp(a.wire.data, b.wire.data), 0);
    complete_writes(&a);
    complete_writes(&b);
    hub_free(h);
    buf_free(&a.wire);
    buf_free(&b.wire);
    teardown();
}

static struct hub *timer_hub;

static void publish_from_timer(uv_timer_t *t)
{
    publish(timer_hub, "run.timed_out", "{}", 2, 0);
}

/* A publish from a timer callback (run timeouts, expiry) is flushed in the
 * same loop iteration, not when some later I/O or timer wakes the loop. */
static void publish_outside_io_is_not_delayed(void)
{
    setup(100, 1 << 20, 1 << 20);
    timer_hub = hub_new();
    struct fake c = {0};
    CHECK_EQ(subscribe(timer_hub, &c, NULL, 1), 0);
    complete_writes(&c);
    uv_timer_t now, later;
    uv_timer_init(&loop, &now);
    uv_timer_init(&loop, &later);
    uv_timer_start(&now, publish_from_timer, 0, 0);
    uv_timer_start(&later, publish_from_timer, 60000, 0); /* keeps the loop alive */
    uint64_t t0 = uv_hrtime();
    uv_run(&loop, UV_RUN_ONCE);
    CHECK_EQ(count(&c, "event: run.timed_out"), 1);
    CHECK((uv_hrtime() - t0) / 1000000 < 30000); /* did not sleep until `later` */
    uv_close((uv_handle_t *)&now, NULL);
    uv_close((uv_handle_t *)&later, NULL);
    complete_writes(&c);
    hub_free(timer_hub);
    complete_writes(&c);
    buf_free(&c.wire);
    teardown();
}

/* What the kernel takes at once is written without a queued write, the rest
 * is queued from the first byte it did not take: the wire is exact. */
static void direct_writes_and_partial_ones_keep_the_bytes_exact(void)
{
    setup(100, 1 << 20, 1 << 20);
    struct hub *h = hub_new();
    struct fake c = {0}, ref = {0};
    CHECK_EQ(subscribe(h, &c, NULL, 1), 0);
    CHECK_EQ(subscribe(h, &ref, NULL, 1), 0); /* takes nothing: all queued */
    complete_writes(&c);
    complete_writes(&ref);
    c.take = SIZE_MAX;
    publish_n(h, "agent.event", 3);
    flush();
    CHECK_EQ(c.npending, 0); /* all taken at once */
    CHECK_EQ(count(&c, "event: agent.event"), 3);
    CHECK_EQ(frame_count(), 3 + 1); /* the log + keepalive: no reference left behind */
    c.take = 25; /* part of the first frame */
    publish_n(h, "agent.event", 2);
    flush();
    CHECK_EQ(c.npending, 1);
    CHECK_EQ(c.take, 0);
    CHECK_EQ(count(&c, "event: agent.event"), 5);
    complete_writes(&ref);
    CHECK_EQ(c.wire.len, ref.wire.len);
    CHECK_EQ(memcmp(c.wire.data, ref.wire.data, c.wire.len), 0);
    /* While a write is queued, new frames wait for it (never overtake). */
    c.queue_bytes = 10;
    c.take = SIZE_MAX;
    publish_n(h, "agent.event", 1);
    flush();
    CHECK_EQ(c.npending, 1);
    CHECK_EQ(count(&c, "event: agent.event"), 5);
    c.queue_bytes = 0;
    complete_writes(&c); /* proceed: the waiting frame goes out directly */
    CHECK_EQ(count(&c, "event: agent.event"), 6);
    CHECK_EQ(c.npending, 0);
    complete_writes(&ref);
    hub_free(h);
    complete_writes(&c);
    complete_writes(&ref);
    buf_free(&c.wire);
    buf_free(&ref.wire);
    teardown();
}

/* A replay longer than the per-iteration budget continues in later loop
 * iterations, in order, with nothing lost. */
static void long_replay_continues_over_iterations(void)
{
    setup(1000, 1 << 22, 1 << 22);
    struct hub *h = hub_new();
    char data[1000];
    memset(data, 'z', sizeof(data));
    data[0] = '"';
    data[sizeof(data) - 1] = '"';
    publish(h, "run.started", "{}", 2, 1);
    for (int i = 0; i < 600; i++) /* ~600 KB: more than two budgets */
        publish(h, "agent.event", data, sizeof(data), 0);
    struct fake c = {0};
    c.take = SIZE_MAX;
    CHECK_EQ(subscribe(h, &c, NULL, 0), 0);
    int first = count(&c, "event: agent.event");
    CHECK(first > 0 && first < 600);
    for (int i = 0; i < 10 && count(&c, "event: agent.event") < 600; i++)
        flush();
    CHECK_EQ(count(&c, "event: agent.event"), 600);
    CHECK_EQ(count(&c, "event: run.started"), 1);
    CHECK_EQ(c.npending, 0);
    char last[64];
    id_line(last, sizeof(last), h, 601);
    CHECK(strstr(c.wire.data, last) != NULL);
    hub_free(h);
    buf_free(&c.wire);
    teardown();
}

/* A write error closes the stream at once (the close callback frees the
 * subscriber inside the write): the heartbeat, the flush and hub_destroy
 * must not touch it afterwards (ASan checks). */
static void write_errors_free_the_subscriber_safely(void)
{
    heartbeat_ms = 1000;
    setup(100, 1 << 20, 1 << 20);
    struct hub *h = hub_new();
    struct fake a = {0}, b = {0}, d = {0};
    CHECK_EQ(subscribe(h, &a, NULL, 1), 0);
    CHECK_EQ(subscribe(h, &b, NULL, 1), 0);
    CHECK_EQ(subscribe(h, &d, NULL, 1), 0);
    complete_writes(&a);
    complete_writes(&b);
    complete_writes(&d);
    a.try_error = UV_EPIPE;
    age_streams(1000);
    heartbeat_cb(&heartbeat_timer); /* all three due: keepalive; a fails */
    CHECK_EQ(a.close_calls, 1);
    CHECK_EQ(count(&b, ": keepalive"), 1);
    complete_writes(&b);
    complete_writes(&d);
    b.try_error = UV_ECONNRESET;
    publish_n(h, "agent.event", 1);
    flush();
    CHECK_EQ(b.close_calls, 1);
    CHECK_EQ(count(&d, "event: agent.event"), 1);
    CHECK_EQ(hub_subscriber_count(h), 1);
    complete_writes(&d);
    d.try_error = UV_EPIPE;
    publish_n(h, "agent.event", 1);
    hub_free(h); /* d fails inside hub_destroy's flush */
    CHECK_EQ(d.close_calls, 1);
    CHECK_EQ(hub_total_subscribers(), 0);
    complete_writes(&a);
    complete_writes(&b);
    complete_writes(&d);
    buf_free(&a.wire);
    buf_free(&b.wire);
    buf_free(&d.wire);
    teardown();
}

static void subscriber_limit_is_enforced(void)
{
    setup(100, 1 << 20, 1 << 20);
    struct hub *h = hub_new();
    struct fake c[11];
    memset(c, 0, sizeof(c));
    for (int i = 0; i < 10; i++)
        CHECK_EQ(subscribe(h, &c[i], NULL, 0), 0);
    CHECK_EQ(subscribe(h, &c[10], NULL, 0), -ENOSPC);
    CHECK_EQ(hub_total_subscribers(), 10);
    for (int i = 0; i < 10; i++)
        complete_writes(&c[i]);
    hub_free(h);
    for (int i = 0; i < 11; i++)
        buf_free(&c[i].wire);
    teardown();
}

static int left_calls;

static void count_leave(void *arg)
{
    left_calls++;
    CHECK(arg == &left_calls);
}

/* Every parent's deadline is at most its children's, and every subscriber
 * knows its place. */
static int deadline_heap_valid(void)
{
    for (size_t i = 0; i < deadline_count; i++) {
        if (deadline_heap[i]->heap_index != i || deadline_heap[i]->deadline_ms == 0)
            return 0;
        if (i > 0 && deadline_heap[(i - 1) / 2]->deadline_ms > deadline_heap[i]->deadline_ms)
            return 0;
    }
    return 1;
}

static void stream_ends_at_its_deadline_after_what_it_was_given(void)
{
    setup(100, 1 << 20, 1 << 20);
    left_calls = 0;
    struct hub *h = hub_new();
    publish(h, "run.started", "{}", 2, 1);
    publish_n(h, "agent.event", 2);
    struct fake c = {0};
    struct hub_subscribe_options opt = {.deadline_ms = time_mono_ms() + 60000,
                                        .on_leave = count_leave, .leave_arg = &left_calls};
    CHECK_EQ(subscribe_with(h, &c, &opt), 0);
    CHECK_EQ(deadline_count, 1);
    complete_writes(&c);
    publish_n(h, "agent.event", 1); /* handed to the connection before the deadline */
    deadline_heap[0]->deadline_ms = 1; /* the deadline has passed */
    deadline_cb(&deadline_timer);
    CHECK_EQ(c.ended, 1); /* a normal end: the client can tell it from a cut */
    CHECK_EQ(c.closed, 0);
    CHECK_EQ(left_calls, 1);
    CHECK_EQ(deadline_count, 0);
    CHECK_EQ(count(&c, "event: agent.event"), 3);
    /* the last thing on the wire, with no id line of its own */
    const char *tail = "\n\nevent: stream.closed\ndata: {\"reason\":\"token_expired\"}\n\n";
    CHECK(c.wire.len > strlen(tail) &&
          strcmp(c.wire.data + c.wire.len - strlen(tail), tail) == 0);
    complete_writes(&c);
    publish(h, "agent.event", "{}", 2, 0); /* nobody left to send it to */
    CHECK_EQ(count(&c, "event: agent.event"), 3);
    hub_free(h);
    buf_free(&c.wire);
    teardown();
}

static void one_heap_orders_every_deadline(void)
{
    setup(100, 1 << 20, 1 << 20);
    left_calls = 0;
    struct hub *h = hub_new();
    struct fake c[8];
    memset(c, 0, sizeof(c));
    uint64_t base = time_mono_ms() + 600000;
    static const int order[8] = {5, 1, 7, 3, 0, 6, 2, 4};
    for (int i = 0; i < 8; i++) {
        struct hub_subscribe_options opt = {.deadline_ms = base + 1000u * (unsigned)order[i],
                                            .on_leave = count_leave, .leave_arg = &left_calls};
        CHECK_EQ(subscribe_with(h, &c[i], &opt), 0);
        CHECK(deadline_heap_valid());
    }
    CHECK_EQ(deadline_count, 8);
    CHECK(deadline_heap[0]->transport == &c[4]);
    /* streams closed for other reasons leave the heap from anywhere in it */
    fake_leave(&c[4]);
    CHECK(deadline_heap_valid());
    CHECK(deadline_heap[0]->transport == &c[1]);
    fake_leave(&c[7]);
    fake_leave(&c[3]);
    CHECK(deadline_heap_valid());
    CHECK_EQ(deadline_count, 5);
    CHECK_EQ(left_calls, 3);
    /* the earliest two pass: one tick ends exactly those */
    deadline_heap[0]->deadline_ms = 1; /* c[1] */
    for (size_t i = 0; i < deadline_count; i++) {
        if (deadline_heap[i]->transport == &c[6]) {
            deadline_heap[i]->deadline_ms = 2;
            heap_sift_up(i);
            break;
        }
    }
    CHECK(deadline_heap_valid());
    deadline_cb(&deadline_timer);
    CHECK_EQ(c[1].ended + c[6].ended, 2);
    CHECK_EQ(c[0].ended + c[2].ended + c[5].ended, 0);
    CHECK_EQ(deadline_count, 3);
    CHECK(deadline_heap_valid());
    CHECK(uv_is_active((uv_handle_t *)&deadline_timer));
    for (int i = 0; i < 8; i++)
        complete_writes(&c[i]);
    hub_free(h);
    CHECK_EQ(deadline_count, 0);
    CHECK_EQ(left_calls, 8);
    for (int i = 0; i < 8; i++)
        buf_free(&c[i].wire);
    teardown();
}

/* A view that sends the "keep" frames as they are, skips the others, ends
 * the stream at the "end" frame, and records the seq of every frame shown. */
struct view_probe {
    uint64_t seen[32];
    int nseen;
};

static struct frame *probe_view(void *arg, struct frame *f, int *end)
{
    struct view_probe *v = arg;
    if (v->nseen < (int)RC_ARRAY_SIZE(v->seen))
        v->seen[v->nseen++] = f->seq;
    if (memmem(f->data, f->len, "event: end\n", 11))
        *end = 1;
    if (memmem(f->data, f->len, "event: keep\n", 12) == NULL)
        return NULL;
    frame_retain(f);
    return f;
}

static void view_replays_from_the_oldest_frame_and_ends_after_its_last_write(void)
{
    setup(100, 1 << 20, 1 << 20);
    struct hub *h = hub_new();
    publish(h, "skip", "{}", 2, 1);
    publish(h, "keep", "{\"n\":1}", 7, 0);
    struct view_probe v = {0};
    struct fake c = {.take = 0}; /* the socket takes nothing: writes stay queued */
    struct hub_subscribe_options opt = {.view = probe_view, .view_arg = &v};
    CHECK_EQ(subscribe_with(h, &c, &opt), 0);
    CHECK_EQ(v.nseen, 2); /* the replay went through the view, from seq 1 */
    CHECK_EQ(v.seen[0], 1);
    CHECK_EQ(v.seen[1], 2);
    CHECK_EQ(count(&c, "retry:"), 0);
    CHECK_EQ(count(&c, "event: keep"), 1);
    CHECK_EQ(count(&c, "event: skip"), 0);

    publish(h, "keep", "{\"n\":2}", 7, 0);
    publish(h, "end", "{}", 2, 0);
    publish(h, "keep", "{\"n\":3}", 7, 0); /* after the end: never shown */
    flush();
    CHECK_EQ(v.nseen, 4);
    CHECK_EQ(v.seen[3], 4);
    CHECK_EQ(count(&c, "event: keep"), 2);
    CHECK_EQ(c.ended, 0); /* its writes are still queued */
    complete_writes(&c);
    CHECK_EQ(c.ended, 1);
    CHECK_EQ(v.nseen, 4);
    CHECK_EQ(hub_subscriber_count(h), 0);
    buf_free(&c.wire);
    hub_free(h);
    teardown();
}

int main(void)
{
    RUN_TEST(default_replay_starts_at_latest_run);
    RUN_TEST(batched_flush_sends_once_per_subscriber_and_completes_at_the_end);
    RUN_TEST(last_event_id_resumes_without_gap_or_duplicate);
    RUN_TEST(unplaceable_ids_reset_then_replay_oldest);
    RUN_TEST(from_live_skips_replay);
    RUN_TEST(ids_strictly_increase);
    RUN_TEST(log_is_bounded_by_count_and_bytes);
    RUN_TEST(slow_subscriber_is_dropped_and_others_get_everything);
    RUN_TEST(burst_in_one_iteration_drops_only_the_blocked_subscriber);
    RUN_TEST(live_subscriber_never_lags_behind_a_tiny_log);
    RUN_TEST(destroy_flushes_everything_before_closing);
    RUN_TEST(heartbeat_reaches_silent_streams_only);
    RUN_TEST(one_write_per_subscriber_per_iteration);
    RUN_TEST(publish_outside_io_is_not_delayed);
    RUN_TEST(direct_writes_and_partial_ones_keep_the_bytes_exact);
    RUN_TEST(long_replay_continues_over_iterations);
    RUN_TEST(write_errors_free_the_subscriber_safely);
    RUN_TEST(subscriber_limit_is_enforced);
    RUN_TEST(stream_ends_at_its_deadline_after_what_it_was_given);
    RUN_TEST(one_heap_orders_every_deadline);
    RUN_TEST(reset_cuts_every_stream);
    RUN_TEST(heartbeat_burst_is_spread_over_iterations);
    RUN_TEST(view_replays_from_the_oldest_frame_and_ends_after_its_last_write);
    return test_report("test_hub");
}
