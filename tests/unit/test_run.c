/* Unit tests for the run state machine (run.c) with the real limiter, session
 * table and hub, and a fake upstream whose calls the test ends by hand. */
#include "../../src/hub.c"
#include "../../src/run.c"

#include "session.h"
#include "quota.h"
#include "test.h"

/* ---- fake upstream ------------------------------------------------------- */
struct upstream_call {
    void *arg;
    int cancelled;
    int drained;
};
static struct upstream_call calls[64];
static int calls_started, calls_cancelled, calls_drained;

struct upstream_call *upstream_call_start(const struct upstream_request *req,
                                          const struct upstream_callbacks *cb, void *arg, int *err)
{
    struct upstream_call *c = &calls[calls_started++];
    c->arg = arg;
    c->cancelled = 0;
    return c;
}

size_t upstream_live_transfers(void)
{
    return 0;
}

void upstream_call_cancel(struct upstream_call *call)
{
    CHECK(!call->cancelled); /* at most once */
    call->cancelled = 1;
    calls_cancelled++;
}

/* The real one drains or cancels; either way the run lets go of the call,
 * so it counts as cancelled too. */
void upstream_call_drain(struct upstream_call *call)
{
    upstream_call_cancel(call);
    call->drained = 1;
    calls_drained++;
}

static uv_loop_t loop;

static void setup(int max_concurrent)
{
    log_configure(LOG_ERROR, LOG_TEXT);
    uv_loop_init(&loop);
    struct store_config stc = {.history = 1000, .history_bytes = 1 << 22, .on_terminal = run_count_terminal};
    store_init(&store_memory_ops, &stc);
    struct hub_config hc = {.subscriber_buffer = 1 << 20, .retry_ms = 1000, .max_subscribers = 10};
    hub_init(&loop, &hc);
    struct limiter_config lc = {.max_concurrent = max_concurrent, .queue_timeout_ms = 100000};
    limiter_init(&loop, &lc);
    struct session_config sc = {.max_sessions = 100, .ttl_ms = 0};
    session_table_init(&loop, &sc);
    memset(calls, 0, sizeof(calls));
    memset(outcomes, 0, sizeof(outcomes));
    calls_started = calls_cancelled = calls_drained = 0;
}

static void teardown(void)
{
    session_table_shutdown("shutdown");
    CHECK_EQ(limiter_active(), 0);
    CHECK_EQ(limiter_queued(), 0);
    CHECK_EQ(run_count_active(), 0);
    limiter_shutdown();
    hub_shutdown();
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ(uv_loop_close(&loop), 0);
    CHECK_EQ(frame_count(), 0);
}

/* Where default replay of s begins (the first event of its latest run). */
static uint64_t run_start_seq(const struct session *s)
{
    struct store_meta m;
    store_meta(s->log, &m);
    return m.run_start_seq;
}

static struct session *new_session(const char *id)
{
    struct session *s = NULL;
    CHECK_EQ(session_get_or_create("app", "user", id, &s), 0);
    return s;
}

static struct run *start(struct session *s)
{
    json_t *msg = json_pack("{s:s, s:[{s:s}]}", "role", "user", "parts", "text", "hi");
    struct run_input in = {.new_message = msg, .streaming = 1};
    return session_start_run(s, &in, NULL, NULL);
}

/* The event names in a session's log, space-separated. */
static void log_events(struct session *s, char *out, size_t size)
{
    struct store_meta m;
    store_meta(s->log, &m);
    out[0] = '\0';
    for (uint64_t seq = m.oldest_seq; seq <= m.newest_seq; seq++) {
        const char *ev = strstr(store_read(s->log, seq)->data, "event: ") + 7;
        size_t n = strcspn(ev, "\n");
        strncat(out, ev, n < size - strlen(out) - 2 ? n : 0);
        strcat(out, " ");
    }
}

static void finish(struct run *r, enum upstream_outcome outcome)
{
    struct upstream_result res = {.outcome = outcome, .status = 500, .phase = "idle"};
    snprintf(res.message, sizeof(res.message), "boom");
    on_end(r, &res);
}

static void run_starts_at_once_when_a_slot_is_free(void)
{
    setup(4);
    struct session *s = new_session("s1");
    struct run *r = start(s);
    CHECK_EQ(r->state, RUN_RUNNING);
    CHECK_EQ(calls_started, 1);
    CHECK_EQ(limiter_active(), 1);
    CHECK(r->started_at > 0);
    on_event(r, "{\"a\":1}", 7);
    on_event(r, "{\"a\":2}", 7);
    finish(r, UPSTREAM_COMPLETED);
    CHECK_EQ(r->state, RUN_COMPLETED);
    CHECK_EQ(r->events, 2);
    CHECK_EQ(limiter_active(), 0);
    char evs[512];
    log_events(s, evs, sizeof(evs));
    CHECK_STREQ(evs, "run.started agent.event agent.event run.completed ");
    CHECK_EQ(run_start_seq(s), 1);
    teardown();
}

static void superseded_run_gets_one_terminal_event(void)
{
    setup(4);
    struct session *s = new_session("s1");
    struct run *first = start(s);
    char first_id[24];
    strcpy(first_id, first->id);
    struct run *second = start(s);
    CHECK(s->run == second);
    CHECK_EQ(second->state, RUN_RUNNING);
    CHECK_EQ(calls_started, 2);
    CHECK_EQ(calls_cancelled, 1);
    CHECK(calls[0].cancelled);
    CHECK_EQ(limiter_active(), 1);
    CHECK_EQ(run_count_outcome(RUN_SUPERSEDED), 1);
    char evs[512];
    log_events(s, evs, sizeof(evs));
    CHECK_STREQ(evs, "run.started run.superseded run.started ");
    char by[64];
    snprintf(by, sizeof(by), "\"by\":\"%s\"", second->id);
    CHECK(strstr(store_read(s->log, 2)->data, by) != NULL);
    CHECK(strstr(store_read(s->log, 2)->data, first_id) != NULL);
    CHECK_EQ(run_start_seq(s), 3);
    teardown();
}

/* Only a client replacing or stopping a run drains its call (the session's
 * next run may follow at once); any other end closes it at once. */
static void only_a_client_replacing_or_cancelling_a_run_drains_its_call(void)
{
    setup(4);
    struct session *s = new_session("s1");
    start(s);
    struct run *r = start(s); /* supersedes call 0 */
    run_cancel(r, "client_request"); /* call 1 */
    r = start(s);
    run_cancel(r, "session_deleted"); /* call 2 */
    r = start(s);
    run_cancel(r, "shutdown"); /* call 3 */
    r = start(s);
    finish(r, UPSTREAM_TIMED_OUT); /* call 4: ended by itself, let go of nothing */
    CHECK_EQ(calls_started, 5);
    CHECK_EQ(calls_cancelled, 4);
    CHECK_EQ(calls_drained, 2);
    CHECK(calls[0].drained && calls[1].drained);
    CHECK(!calls[2].drained && !calls[3].drained && calls[2].cancelled && calls[3].cancelled);
    CHECK(!calls[4].cancelled && !calls[4].drained);
    teardown();
}

static void ten_back_to_back_runs_leave_one_active(void)
{
    setup(2);
    struct session *s = new_session("s1");
    struct run *r = NULL;
    for (int i = 0; i < 10; i++)
        r = start(s);
    CHECK_EQ(run_count_outcome(RUN_SUPERSEDED), 9);
    CHECK_EQ(run_count_active(), 1);
    CHECK_EQ(limiter_active(), 1);
    CHECK_EQ(calls_cancelled, 9);
    finish(r, UPSTREAM_COMPLETED);
    CHECK_EQ(run_count_outcome(RUN_COMPLETED), 1);
    CHECK_EQ(limiter_active(), 0);
    teardown();
}

static void queued_run_starts_when_a_slot_frees(void)
{
    setup(1);
    struct session *a = new_session("a"), *b = new_session("b"), *c = new_session("c");
    struct run *ra = start(a);
    struct run *rb = start(b);
    struct run *rc = start(c);
    CHECK_EQ(rb->state, RUN_QUEUED);
    CHECK_EQ(rc->state, RUN_QUEUED);
    CHECK_EQ(limiter_queued(), 2);
    CHECK(strstr(store_read(c->log, 1)->data, "\"position\":2") != NULL);
    CHECK_EQ(calls_started, 1);
    /* Cancelling a queued run takes it out of the queue, nothing starts. */
    run_cancel(rb, "client_request");
    CHECK_EQ(limiter_queued(), 1);
    CHECK_EQ(calls_started, 1);
    finish(ra, UPSTREAM_COMPLETED);
    CHECK_EQ(rc->state, RUN_RUNNING);
    CHECK_EQ(calls_started, 2);
    CHECK_EQ(limiter_queued(), 0);
    char evs[512];
    log_events(c, evs, sizeof(evs));
    CHECK_STREQ(evs, "run.queued run.started ");
    CHECK_EQ(run_start_seq(c), 1);
    teardown();
}

static void every_path_releases_its_slot_exactly_once(void)
{
    setup(3);
    enum upstream_outcome ends[] = {UPSTREAM_COMPLETED, UPSTREAM_UNREACHABLE, UPSTREAM_HTTP,
                                    UPSTREAM_RATE_LIMITED, UPSTREAM_AGENT_ERROR,
                                    UPSTREAM_PROTOCOL, UPSTREAM_TIMED_OUT};
    for (size_t i = 0; i < RC_ARRAY_SIZE(ends); i++) {
        char id[16];
        snprintf(id, sizeof(id), "e%zu", i);
        struct run *r = start(new_session(id));
        finish(r, ends[i]);
        CHECK_EQ(limiter_active(), 0);
    }
    CHECK_EQ(run_count_outcome(RUN_COMPLETED), 1);
    CHECK_EQ(run_count_outcome(RUN_FAILED), 5);
    CHECK_EQ(run_count_outcome(RUN_TIMED_OUT), 1);
    /* cancelled, superseded, queued then superseded, queued then expired */
    struct session *s = new_session("x");
    run_cancel(start(s), "client_request");
    CHECK_EQ(limiter_active(), 0);
    start(s);
    start(s);
    start(new_session("y"));
    start(new_session("z"));
    CHECK_EQ(limiter_active(), 3);
    struct session *q = new_session("q");
    struct run *queued = start(q);
    CHECK_EQ(queued->state, RUN_QUEUED);
    start(q); /* supersedes the queued run */
    CHECK_EQ(limiter_queued(), 1);
    on_queue_expired(&q->run->waiter); /* as the limiter's timer would */
    CHECK_EQ(q->run->state, RUN_FAILED);
    CHECK_EQ(limiter_active(), 3);
    teardown(); /* cancels the three running ones: every slot comes back */
    CHECK_EQ(run_count_outcome(RUN_CANCELLED), 4);
}

static void agent_error_carries_detail(void)
{
    setup(2);
    struct session *s = new_session("s");
    struct run *r = start(s);
    json_t *detail = json_pack("{s:s}", "error", "ValueError: boom");
    struct upstream_result res = {.outcome = UPSTREAM_AGENT_ERROR, .detail = detail};
    on_end(r, &res);
    json_decref(detail);
    CHECK_EQ(r->state, RUN_FAILED);
    const char *data = store_read(s->log, 2)->data;
    CHECK(strstr(data, "\"code\":\"agent_error\"") != NULL);
    CHECK(strstr(data, "\"message\":\"ValueError: boom\"") != NULL);
    CHECK(strstr(data, "\"detail\":{\"error\":\"ValueError: boom\"}") != NULL);
    teardown();
}

/* A run refused at once (--max-runs-per-user) is a run that ended: its
 * run.failed is its first event, written and counted once. */
static void run_refused_at_once_is_counted(void)
{
    setup(4);
    quota_init(1, 0, 0);
    uint64_t failed_before = run_count_outcome(RUN_FAILED);
    start(new_session("one"));
    struct session *s = new_session("two");
    struct run *r = start(s);
    CHECK_EQ(r->state, RUN_FAILED);
    CHECK_EQ(run_count_outcome(RUN_FAILED) - failed_before, 1);
    CHECK_EQ(run_start_seq(s), 1);
    CHECK(strstr(store_read(s->log, 1)->data, "\"code\":\"rate_limited\"") != NULL);
    teardown();
    quota_init(0, 0, 0);
}

int main(void)
{
    RUN_TEST(run_starts_at_once_when_a_slot_is_free);
    RUN_TEST(superseded_run_gets_one_terminal_event);
    RUN_TEST(only_a_client_replacing_or_cancelling_a_run_drains_its_call);
    RUN_TEST(ten_back_to_back_runs_leave_one_active);
    RUN_TEST(queued_run_starts_when_a_slot_frees);
    RUN_TEST(every_path_releases_its_slot_exactly_once);
    RUN_TEST(agent_error_carries_detail);
    RUN_TEST(run_refused_at_once_is_counted);
    return test_report("test_run");
}
