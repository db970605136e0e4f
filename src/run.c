/* run.c: the run state machine (see run.h). The data path of a run is:
 * run_start -> limiter -> run_begin_upstream -> upstream callbacks ->
 * store_append (the session's log) -> hub; every state change goes through
 * run_transition(). */
#include "run.h"

#include <assert.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "log.h"
#include "metrics.h"
#include "quota.h"
#include "session.h"
#include "store.h"
#include "upstream.h"

static uint64_t delay_alert_ns;
static uint64_t id_counter;
static uint32_t id_base;
static size_t active_runs;
static uint64_t outcomes[RUN_STATES];

static const char *state_names[RUN_STATES] = {
    [RUN_REGISTERED] = "registered",
    [RUN_QUEUED] = "queued",       [RUN_RUNNING] = "running",
    [RUN_COMPLETED] = "completed", [RUN_FAILED] = "failed",
    [RUN_CANCELLED] = "cancelled", [RUN_TIMED_OUT] = "timed_out",
    [RUN_SUPERSEDED] = "superseded",
};

/* The event each state publishes when entered. */
static const char *state_events[RUN_STATES] = {
    [RUN_REGISTERED] = NULL,
    [RUN_QUEUED] = "run.queued",       [RUN_RUNNING] = "run.started",
    [RUN_COMPLETED] = "run.completed", [RUN_FAILED] = "run.failed",
    [RUN_CANCELLED] = "run.cancelled", [RUN_TIMED_OUT] = "run.timed_out",
    [RUN_SUPERSEDED] = "run.superseded",
};

void run_configure(uint64_t delay_alert_ms)
{
    delay_alert_ns = delay_alert_ms * 1000000u;
}

const char *run_state_name(enum run_state state)
{
    return state_names[state];
}

int run_is_active(const struct run *r)
{
    return r->state == RUN_REGISTERED || r->state == RUN_QUEUED || r->state == RUN_RUNNING;
}

size_t run_count_active(void)
{
    return active_runs;
}

uint64_t run_count_outcome(enum run_state state)
{
    return outcomes[state];
}

static int transition_allowed(enum run_state from, enum run_state to)
{
    switch (from) {
    case RUN_REGISTERED:
        return to == RUN_QUEUED || to == RUN_RUNNING || to == RUN_FAILED;
    case RUN_QUEUED:
        return to == RUN_RUNNING || to == RUN_FAILED || to == RUN_CANCELLED ||
               to == RUN_SUPERSEDED;
    case RUN_RUNNING:
        return to != RUN_REGISTERED && to != RUN_QUEUED && to != RUN_RUNNING;
    default:
        return 0; /* terminal states are final */
    }
}

static char *ms_text(char *out, size_t size, uint64_t ns)
{
    snprintf(out, size, "%.3f", (double)ns / 1e6);
    return out;
}

/* The one place a run changes state. data is the event's JSON object without
 * run_id (stolen; may be NULL). Publishes the event, and for terminal states
 * releases everything the run held, exactly once. */
static void run_transition(struct run *r, enum run_state to, json_t *data)
{
    assert(transition_allowed(r->state, to));
    enum run_state from = r->state;
    struct session *s = r->session;
    uint64_t now_ns = time_mono_ns();
    char buf1[32], buf2[32];

    r->state = to;
    if (data == NULL)
        data = json_object();
    json_object_set_new(data, "run_id", json_string(r->id));

    if (to == RUN_RUNNING) {
        r->started_at = time_wall_seconds();
        r->started_ns = now_ns;
        json_object_set_new(data, "started_at", json_real(r->started_at));
    }
    if (to == RUN_QUEUED || to == RUN_RUNNING) {
        /* The server's clock, so that a tab replaying the run later (or
         * joining it late) shows its true age, not when it heard of it. */
        json_object_set_new(data, "created_at", json_real(r->created_at));
    } else { /* terminal */
        r->ended_at = time_wall_seconds();
        if (r->call) {
            upstream_call_cancel(r->call);
            r->call = NULL;
        }
        limiter_leave(&r->waiter);
        quota_run_end(s->user);
        active_runs--;
        outcomes[to]++;
        metrics_observe(METRICS_RUN_DURATION, (double)(now_ns - r->registered_ns) / 1e9);
        if (to == RUN_COMPLETED)
            json_object_set_new(data, "duration_ms",
                                json_integer((json_int_t)((now_ns - r->started_ns) / 1000000)));
    }

    char *text = json_dumps(data, JSON_COMPACT);
    /* The first event of a run is where a new subscriber's replay starts. */
    if (from == RUN_REGISTERED)
        store_start_run(s->log, state_events[to], text, strlen(text));
    else if (to == RUN_RUNNING)
        store_append(s->log, state_events[to], text, strlen(text));
    else
        store_end_run(s->log, state_events[to], text, strlen(text));
    free(text);
    json_decref(data);
    session_touch(s);

    if (to == RUN_RUNNING) {
        log_event(LOG_INFO, "run.started", "session", s->id, "run", r->id, "delay_ms",
                  ms_text(buf1, sizeof(buf1), now_ns - r->registered_ns), NULL);
    } else if (to != RUN_QUEUED) {
        log_event(LOG_INFO, "run.ended", "session", s->id, "run", r->id, "outcome",
                  state_names[to], "duration_ms",
                  ms_text(buf1, sizeof(buf1), now_ns - r->registered_ns), "events",
                  (snprintf(buf2, sizeof(buf2), "%" PRIu64, r->events), buf2), NULL);
        /* Last: giving the slot back may admit other runs right now. */
        if (r->holds_slot) {
            r->holds_slot = 0;
            limiter_release();
        }
    }
}

/* ---- upstream callbacks (called at safe points, see upstream.h) ---------- */

static void on_session_ready(void *arg)
{
    struct run *r = arg;
    r->session->upstream_ready = 1;
}

/* The metric that would have caught the original bug: how long a registered
 * run waited before its request reached the network. */
static void on_request_sent(void *arg)
{
    struct run *r = arg;
    uint64_t now_ns = time_mono_ns();
    uint64_t delay_ns = now_ns - r->registered_ns;
    r->sent_ns = now_ns;
    metrics_observe(METRICS_TASK_EXECUTION_DELAY, (double)delay_ns / 1e9);
    if (delay_alert_ns > 0 && delay_ns > delay_alert_ns) {
        char ms[32];
        log_event(LOG_WARN, "run.start_delayed", "session", r->session->id, "run", r->id,
                  "delay_ms", ms_text(ms, sizeof(ms), delay_ns), NULL);
    }
}

/* A 429/503 that will be retried is a fault worth counting and logging even
 * though the run goes on. */
static void on_retry(void *arg, long status, uint64_t wait_ms)
{
    struct run *r = arg;
    char st[24], wait[24];
    snprintf(st, sizeof(st), "%ld", status);
    snprintf(wait, sizeof(wait), "%" PRIu64, wait_ms);
    metrics_count_upstream_error(METRICS_UPSTREAM_RATE_LIMITED);
    log_event(LOG_WARN, "run.upstream_retry", "session", r->session->id, "run", r->id, "status", st,
              "wait_ms", wait, NULL);
}

static void on_event(void *arg, const char *json, size_t len)
{
    struct run *r = arg;
    if (r->events++ == 0) {
        char ms[32];
        uint64_t after_ns = time_mono_ns() - (r->sent_ns ? r->sent_ns : r->started_ns);
        metrics_observe(METRICS_TIME_TO_FIRST_EVENT, (double)after_ns / 1e9);
        log_event(LOG_INFO, "run.first_event", "session", r->session->id, "run", r->id,
                  "after_ms", ms_text(ms, sizeof(ms), after_ns), NULL);
    }
    metrics_count_event();
    store_append(r->session->log, "agent.event", json, len);
    session_touch(r->session);
}

static json_t *failure(const char *code, const char *message)
{
    return json_pack("{s:s, s:s}", "code", code, "message", message);
}

static void on_end(void *arg, const struct upstream_result *res)
{
    struct run *r = arg;
    json_t *data = NULL;
    enum run_state to = RUN_FAILED;
    r->call = NULL; /* finished: nothing left to cancel */
    if (res->log_detail[0])
        log_event(LOG_WARN, "run.upstream_error", "session", r->session->id, "run", r->id, "error",
                  res->log_detail, NULL);
    switch (res->outcome) {
    case UPSTREAM_COMPLETED:
        to = RUN_COMPLETED;
        data = json_pack("{s:I}", "events", (json_int_t)r->events);
        break;
    case UPSTREAM_UNREACHABLE:
        metrics_count_upstream_error(METRICS_UPSTREAM_UNREACHABLE);
        data = failure("upstream_unreachable", res->message);
        break;
    case UPSTREAM_HTTP:
        metrics_count_upstream_error(METRICS_UPSTREAM_HTTP);
        data = failure("upstream_http", res->message);
        json_object_set_new(data, "status", json_integer(res->status));
        break;
    case UPSTREAM_RATE_LIMITED:
        metrics_count_upstream_error(METRICS_UPSTREAM_RATE_LIMITED);
        data = failure("rate_limited", res->message);
        json_object_set_new(data, "status", json_integer(res->status));
        break;
    case UPSTREAM_AGENT_ERROR: {
        metrics_count_upstream_error(METRICS_UPSTREAM_AGENT_ERROR);
        /* The upstream's own words: an error frame's "error", or the
         * "errorMessage" of an event that carried an ADK error. */
        json_t *err = res->detail ? json_object_get(res->detail, "error") : NULL;
        if (!json_is_string(err) && res->detail)
            err = json_object_get(res->detail, "errorMessage");
        data = failure("agent_error", json_is_string(err) ? json_string_value(err) : res->message);
        if (res->detail)
            json_object_set(data, "detail", res->detail);
        break;
    }
    case UPSTREAM_PROTOCOL:
        metrics_count_upstream_error(METRICS_UPSTREAM_PROTOCOL);
        data = failure("upstream_protocol", res->message);
        break;
    case UPSTREAM_TIMED_OUT:
        metrics_count_upstream_error(METRICS_UPSTREAM_TIMEOUT);
        to = RUN_TIMED_OUT;
        data = json_pack("{s:s}", "phase", res->phase ? res->phase : "total");
        break;
    }
    run_transition(r, to, data);
}

static const struct upstream_callbacks upstream_callbacks = {
    .on_session_ready = on_session_ready,
    .on_request_sent = on_request_sent,
    .on_retry = on_retry,
    .on_event = on_event,
    .on_end = on_end,
};

/* Starts the upstream call of a run that holds a slot. */
static void run_begin_upstream(struct run *r)
{
    struct session *s = r->session;
    r->holds_slot = 1;
    run_transition(r, RUN_RUNNING, NULL);
    struct upstream_request req = {
        .app = s->app,
        .user = s->user,
        .session = s->id,
        .session_ready = s->upstream_ready,
        .new_message = r->new_message,
        .state_delta = r->state_delta,
        .streaming = r->streaming,
    };
    int err = 0;
    r->call = upstream_call_start(&req, &upstream_callbacks, r, &err);
    json_decref(r->new_message);
    json_decref(r->state_delta);
    r->new_message = r->state_delta = NULL;
    if (r->call == NULL) {
        char msg[128];
        snprintf(msg, sizeof(msg), "could not start the upstream call: %s", strerror(-err));
        run_transition(r, RUN_FAILED, failure("upstream_unreachable", msg));
    }
}

static void on_admitted(struct limiter_waiter *w)
{
    run_begin_upstream(container_of(w, struct run, waiter));
}

static void on_queue_expired(struct limiter_waiter *w)
{
    struct run *r = container_of(w, struct run, waiter);
    run_transition(r, RUN_FAILED,
                   failure("rate_limited", "the run waited in the queue longer than --queue-timeout"));
}

struct run *run_start(struct session *s, json_t *new_message, json_t *state_delta, int streaming)
{
    struct run *r = xcalloc(1, sizeof(*r));
    if (id_counter == 0 && uv_random(NULL, NULL, &id_base, sizeof(id_base), 0, NULL) != 0)
        id_base = (uint32_t)uv_hrtime();
    snprintf(r->id, sizeof(r->id), "r%08" PRIx32 "%08" PRIx64, id_base, ++id_counter);
    r->session = s;
    r->state = RUN_REGISTERED;
    r->created_at = time_wall_seconds();
    r->registered_ns = time_mono_ns();
    r->new_message = new_message;
    r->state_delta = state_delta;
    r->streaming = streaming;
    list_init(&r->waiter.link);
    r->waiter.on_admitted = on_admitted;
    r->waiter.on_expired = on_queue_expired;

    /* The old run ends (and gives its slot back) before the new one asks
     * for a slot, and nothing waits for its upstream to go away. */
    struct run *old = s->run;
    s->run = r;
    active_runs++;
    if (old) {
        if (run_is_active(old))
            run_transition(old, RUN_SUPERSEDED, json_pack("{s:s}", "by", r->id));
        run_free(old);
    }
    log_event(LOG_INFO, "run.registered", "app", s->app, "user", s->user, "session", s->id,
              "run", r->id, NULL);

    /* Over --max-runs-per-user the run fails at once rather than queue: a
     * user can then hold at most that many limiter slots, queued or not,
     * whatever the others do. */
    if (quota_run_begin(s->user) < 0) {
        run_transition(r, RUN_FAILED,
                       failure("rate_limited", "this user already has --max-runs-per-user active runs"));
        return r;
    }
    size_t position = 0;
    if (limiter_acquire(&r->waiter, &position)) {
        run_begin_upstream(r);
    } else {
        char pos[32];
        snprintf(pos, sizeof(pos), "%zu", position);
        log_event(LOG_INFO, "run.queued", "session", s->id, "run", r->id, "position", pos, NULL);
        run_transition(r, RUN_QUEUED, json_pack("{s:I}", "position", (json_int_t)position));
    }
    return r;
}

void run_cancel(struct run *r, const char *reason)
{
    run_transition(r, RUN_CANCELLED, json_pack("{s:s}", "reason", reason));
}

void run_free(struct run *r)
{
    assert(!run_is_active(r));
    json_decref(r->new_message);
    json_decref(r->state_delta);
    free(r);
}
