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

#include "json_text.h"
#include "log.h"
#include "metrics.h"
#include "quota.h"
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

/* The terminal state whose event is `event`, or RUN_STATES for none. */
static enum run_state terminal_state_named(const char *event)
{
    for (int st = RUN_COMPLETED; st < RUN_STATES; st++)
        if (event && strcmp(event, state_events[st]) == 0)
            return (enum run_state)st;
    return RUN_STATES;
}

void run_count_terminal(const char *event)
{
    enum run_state st = terminal_state_named(event);
    if (st < RUN_STATES)
        outcomes[st]++;
}

#define TO(state) (1u << (state))
/* The states each state may go to (run.h draws this table); terminal
 * states go nowhere. */
static const unsigned transitions[RUN_STATES] = {
    [RUN_REGISTERED] = TO(RUN_QUEUED) | TO(RUN_RUNNING) | TO(RUN_FAILED),
    [RUN_QUEUED] = TO(RUN_RUNNING) | TO(RUN_FAILED) | TO(RUN_CANCELLED) | TO(RUN_SUPERSEDED),
    [RUN_RUNNING] = TO(RUN_COMPLETED) | TO(RUN_FAILED) | TO(RUN_TIMED_OUT) | TO(RUN_CANCELLED) |
                    TO(RUN_SUPERSEDED),
};
#undef TO

static int transition_allowed(enum run_state from, enum run_state to)
{
    return (transitions[from] >> to) & 1u;
}

static int is_terminal(enum run_state state)
{
    return state >= RUN_COMPLETED;
}

static char *ms_text(char *out, size_t size, uint64_t ns)
{
    snprintf(out, size, "%.3f", (double)ns / 1e6);
    return out;
}

static void run_call_upstream(struct run *r);

/* How run_transition() treats the upstream call when a run ends, and
 * whether its event still has to be written. */
enum run_call_end {
    RUN_CALL_CANCEL = 0,  /* still going (or none): cancel it */
    RUN_CALL_FINISHED,    /* it ended by itself (on_end): only forget it */
    RUN_ENDED_ELSEWHERE,  /* another node wrote the terminal event: cancel, write nothing */
};

/* Whether a run this node ends in `to` lets its upstream call drain
 * (upstream_call_drain: a sent /run_sse is read to its end, bounded by
 * --upstream-drain, and the session's next request waits for it) rather than
 * close at once. Only when a client replaced or stopped the run: then the
 * session's next run may follow at once, and an upstream that does not abort
 * a run on disconnect (ADK JS) would write one ADK session from two runs.
 * Every other end closes at once: a deadline or failure must stop the call
 * now, and a deleted or expired session or a shutdown is the end of it. */
static int run_end_drains(enum run_state to, json_t *data)
{
    if (to == RUN_SUPERSEDED)
        return 1;
    const char *reason = json_string_value(json_object_get(data, "reason"));
    return to == RUN_CANCELLED && reason != NULL && strcmp(reason, "client_request") == 0;
}

/* A terminal transition's bookkeeping (run_transition only): the upstream
 * call is cancelled or drained (unless it ended by itself) and forgotten, the queue
 * place and the quota given back, the outcome counted. The limiter slot is
 * given back last, by run_transition. */
static void run_release(struct run *r, enum run_state to, json_t *data, enum run_call_end call_end,
                        uint64_t now_ns)
{
    r->ended_at = time_wall_seconds();
    if (r->call && call_end == RUN_CALL_CANCEL && run_end_drains(to, data))
        upstream_call_drain(r->call);
    else if (r->call && call_end != RUN_CALL_FINISHED)
        upstream_call_cancel(r->call);
    r->call = NULL;
    limiter_leave(&r->waiter);
    quota_run_end(r->host->user);
    active_runs--;
    metrics_observe(METRICS_RUN_DURATION, (double)(now_ns - r->registered_ns) / 1e9);
    if (to == RUN_COMPLETED)
        json_object_set_new(data, "duration_ms",
                            json_integer((json_int_t)((now_ns - r->started_ns) / 1000000)));
}

/* The log line of a transition to `to`: run.queued, run.started, or
 * run.ended for every terminal state. */
static void run_log_transition(const struct run *r, enum run_state to, json_t *data,
                               uint64_t now_ns)
{
    const char *session = r->host->session_id;
    char ms[32], n[32];
    if (!log_enabled(LOG_INFO))
        return; /* nothing to format */
    if (to == RUN_QUEUED) {
        snprintf(n, sizeof(n), "%" JSON_INTEGER_FORMAT,
                 json_integer_value(json_object_get(data, "position")));
        log_event(LOG_INFO, "run.queued", "session", session, "run", r->id, "position", n, NULL);
    } else if (to == RUN_RUNNING) {
        log_event(LOG_INFO, "run.started", "session", session, "run", r->id, "delay_ms",
                  ms_text(ms, sizeof(ms), now_ns - r->registered_ns), NULL);
    } else {
        snprintf(n, sizeof(n), "%" PRIu64, r->events);
        log_event(LOG_INFO, "run.ended", "session", session, "run", r->id, "outcome",
                  state_names[to], "duration_ms", ms_text(ms, sizeof(ms), now_ns - r->registered_ns),
                  "events", n, NULL);
    }
}

/* The one place a run changes state. data is the event's JSON object without
 * run_id (stolen; may be NULL). Appends the event to the session's log and
 * writes the log line; entering RUNNING takes the limiter slot the run was
 * given and starts the upstream call; a terminal state releases everything
 * the run held, exactly once. May be re-entered once: a call that cannot
 * start fails the run from inside its RUNNING transition, after that
 * transition is complete. */
static void run_transition(struct run *r, enum run_state to, json_t *data, enum run_call_end call_end)
{
    assert(transition_allowed(r->state, to));
    enum run_state from = r->state;
    struct run_host *host = r->host;
    uint64_t now_ns = time_mono_ns();

    r->state = to;
    if (data == NULL)
        data = json_object();
    json_object_set_new(data, "run_id", json_string(r->id));
    if (from == RUN_REGISTERED && r->in.first_event)
        json_object_update_missing(data, r->in.first_event);
    if (to == RUN_RUNNING) {
        r->holds_slot = 1; /* only admission leads here */
        r->started_at = time_wall_seconds();
        r->started_ns = now_ns;
        json_object_set_new(data, "started_at", json_real(r->started_at));
    }
    if (is_terminal(to))
        run_release(r, to, data, call_end, now_ns);
    else /* the server's clock: a tab replaying the run later shows its true age */
        json_object_set_new(data, "created_at", json_real(r->created_at));

    char *text = json_text(data);
    /* The first event of a run is where a new subscriber's replay starts. */
    if (from == RUN_REGISTERED) {
        store_start_run(host->log, r->id, state_events[to], text, strlen(text), r->on_registered,
                        r->registered_arg);
        if (is_terminal(to)) /* refused at once: no store counts a run's first event */
            run_count_terminal(state_events[to]);
    }
    else if (call_end == RUN_ENDED_ELSEWHERE)
        ; /* already in the log */
    else if (is_terminal(to))
        store_end_run(host->log, r->id, state_events[to], text, strlen(text));
    else
        store_append(host->log, r->id, state_events[to], text, strlen(text));
    free(text);
    host->touch(host);
    run_log_transition(r, to, data, now_ns);
    json_decref(data);

    if (to == RUN_RUNNING) {
        run_call_upstream(r); /* may end the run: last */
    } else if (is_terminal(to) && r->holds_slot) {
        /* Last: giving the slot back may admit other runs right now. */
        r->holds_slot = 0;
        limiter_release();
    }
}

/* ---- upstream callbacks (called at safe points, see upstream.h) ---------- */

static void on_session_ready(void *arg)
{
    struct run *r = arg;
    r->host->upstream_ready = 1;
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
        log_event(LOG_WARN, "run.start_delayed", "session", r->host->session_id, "run", r->id,
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
    log_event(LOG_WARN, "run.upstream_retry", "session", r->host->session_id, "run", r->id, "status", st,
              "wait_ms", wait, NULL);
}

static void on_event(void *arg, const char *json, size_t len)
{
    struct run *r = arg;
    if (r->events++ == 0) {
        char ms[32];
        uint64_t after_ns = time_mono_ns() - (r->sent_ns ? r->sent_ns : r->started_ns);
        metrics_observe(METRICS_TIME_TO_FIRST_EVENT, (double)after_ns / 1e9);
        if (log_enabled(LOG_INFO))
            log_event(LOG_INFO, "run.first_event", "session", r->host->session_id, "run", r->id,
                      "after_ms", ms_text(ms, sizeof(ms), after_ns), NULL);
    }
    metrics_count_event();
    store_append(r->host->log, r->id, "agent.event", json, len);
    r->host->touch(r->host);
}

static json_t *failure(const char *code, const char *message)
{
    return json_pack("{s:s, s:s}", "code", code, "message", message);
}

/* What an extra field of a terminal event holds. */
enum outcome_extra {
    EXTRA_NONE = 0,
    EXTRA_EVENTS, /* "events": agent events relayed */
    EXTRA_STATUS, /* "status": the upstream's HTTP status */
    EXTRA_DETAIL, /* the agent's own error message, and "detail": its frame */
    EXTRA_PHASE,  /* "phase": which deadline passed */
};

/* How each upstream outcome ends a run: the state, the fault counted
 * (-1: none), the failure code of run.failed (NULL: not a failure), and
 * the extra field of its event. */
static const struct outcome_rule {
    enum run_state state;
    int fault; /* enum metrics_upstream_error, or -1 */
    const char *code;
    enum outcome_extra extra;
} outcome_rules[] = {
    [UPSTREAM_COMPLETED] = {RUN_COMPLETED, -1, NULL, EXTRA_EVENTS},
    [UPSTREAM_UNREACHABLE] = {RUN_FAILED, METRICS_UPSTREAM_UNREACHABLE, "upstream_unreachable",
                              EXTRA_NONE},
    [UPSTREAM_HTTP] = {RUN_FAILED, METRICS_UPSTREAM_HTTP, "upstream_http", EXTRA_STATUS},
    [UPSTREAM_RATE_LIMITED] = {RUN_FAILED, METRICS_UPSTREAM_RATE_LIMITED, "rate_limited",
                               EXTRA_STATUS},
    [UPSTREAM_AGENT_ERROR] = {RUN_FAILED, METRICS_UPSTREAM_AGENT_ERROR, "agent_error",
                              EXTRA_DETAIL},
    [UPSTREAM_PROTOCOL] = {RUN_FAILED, METRICS_UPSTREAM_PROTOCOL, "upstream_protocol", EXTRA_NONE},
    [UPSTREAM_TIMED_OUT] = {RUN_TIMED_OUT, METRICS_UPSTREAM_TIMEOUT, NULL, EXTRA_PHASE},
};

/* The upstream's own words for an agent error: an error frame's "error",
 * or the "errorMessage" of an event that carried an ADK error; else the
 * generic message. */
static const char *agent_error_message(const struct upstream_result *res)
{
    json_t *err = res->detail ? json_object_get(res->detail, "error") : NULL;
    if (!json_is_string(err) && res->detail)
        err = json_object_get(res->detail, "errorMessage");
    return json_is_string(err) ? json_string_value(err) : res->message;
}

/* The upstream call ended (by itself): the run ends as outcome_rules says. */
static void on_end(void *arg, const struct upstream_result *res)
{
    struct run *r = arg;
    const struct outcome_rule *rule = &outcome_rules[res->outcome];
    if (res->log_detail[0])
        log_event(LOG_WARN, "run.upstream_error", "session", r->host->session_id, "run", r->id,
                  "error", res->log_detail, NULL);
    if (rule->fault >= 0)
        metrics_count_upstream_error((enum metrics_upstream_error)rule->fault);
    const char *message = rule->extra == EXTRA_DETAIL ? agent_error_message(res) : res->message;
    json_t *data = rule->code ? failure(rule->code, message) : json_object();
    switch (rule->extra) {
    case EXTRA_NONE:
        break;
    case EXTRA_EVENTS:
        json_object_set_new(data, "events", json_integer((json_int_t)r->events));
        break;
    case EXTRA_STATUS:
        json_object_set_new(data, "status", json_integer(res->status));
        break;
    case EXTRA_DETAIL:
        if (res->detail)
            json_object_set(data, "detail", res->detail);
        break;
    case EXTRA_PHASE:
        json_object_set_new(data, "phase", json_string(res->phase ? res->phase : "total"));
        break;
    }
    run_transition(r, rule->state, data, RUN_CALL_FINISHED);
}

static const struct upstream_callbacks upstream_callbacks = {
    .on_session_ready = on_session_ready,
    .on_request_sent = on_request_sent,
    .on_retry = on_retry,
    .on_event = on_event,
    .on_end = on_end,
};

void run_input_free(struct run_input *in)
{
    json_decref(in->new_message);
    json_decref(in->state_delta);
    json_decref(in->custom_metadata);
    json_decref(in->first_event);
    in->new_message = in->state_delta = in->custom_metadata = in->first_event = NULL;
}

/* Starts the upstream call of a run that just entered RUNNING (called by
 * run_transition only). A call that cannot start fails the run. */
static void run_call_upstream(struct run *r)
{
    struct run_host *host = r->host;
    struct upstream_request req = {
        .app = host->app,
        .user = host->user,
        .session = host->session_id,
        .session_ready = host->upstream_ready,
        .new_message = r->in.new_message,
        .state_delta = r->in.state_delta,
        .custom_metadata = r->in.custom_metadata,
        .streaming = r->in.streaming,
    };
    int err = 0;
    r->call = upstream_call_start(&req, &upstream_callbacks, r, &err);
    run_input_free(&r->in);
    if (r->call == NULL) {
        char msg[128];
        snprintf(msg, sizeof(msg), "could not start the upstream call: %s", strerror(-err));
        run_transition(r, RUN_FAILED, failure("upstream_unreachable", msg), RUN_CALL_CANCEL);
    }
}

static void on_admitted(struct limiter_waiter *w)
{
    run_transition(container_of(w, struct run, waiter), RUN_RUNNING, NULL, RUN_CALL_CANCEL);
}

static void on_queue_expired(struct limiter_waiter *w)
{
    struct run *r = container_of(w, struct run, waiter);
    run_transition(r, RUN_FAILED,
                   failure("rate_limited", "the run waited in the queue longer than --queue-timeout"),
                   RUN_CALL_CANCEL);
}

struct run *run_create(struct run_host *host, const struct run_input *in)
{
    struct run *r = xcalloc(1, sizeof(*r));
    if (id_counter == 0 && uv_random(NULL, NULL, &id_base, sizeof(id_base), 0, NULL) != 0)
        id_base = (uint32_t)uv_hrtime();
    snprintf(r->id, sizeof(r->id), "r%08" PRIx32 "%08" PRIx64, id_base, ++id_counter);
    r->host = host;
    r->state = RUN_REGISTERED;
    r->created_at = time_wall_seconds();
    r->registered_ns = time_mono_ns();
    r->in = *in;
    list_init(&r->waiter.link);
    r->waiter.on_admitted = on_admitted;
    r->waiter.on_expired = on_queue_expired;
    active_runs++;
    return r;
}

void run_begin(struct run *r, store_done_cb on_registered, void *arg)
{
    struct run_host *host = r->host;
    r->on_registered = on_registered;
    r->registered_arg = arg;
    log_event(LOG_INFO, "run.registered", "app", host->app, "user", host->user, "session",
              host->session_id, "run", r->id, NULL);
    /* Over --max-runs-per-user the run fails at once rather than queue: a
     * user can then hold at most that many limiter slots, queued or not,
     * whatever the others do. */
    if (quota_run_begin(host->user) < 0) {
        run_transition(r, RUN_FAILED,
                       failure("rate_limited", "this user already has --max-runs-per-user active runs"),
                       RUN_CALL_CANCEL);
        return;
    }
    size_t position = 0;
    if (limiter_acquire(&r->waiter, &position))
        run_transition(r, RUN_RUNNING, NULL, RUN_CALL_CANCEL);
    else
        run_transition(r, RUN_QUEUED, json_pack("{s:I}", "position", (json_int_t)position),
                       RUN_CALL_CANCEL);
}

void run_supersede(struct run *r, const char *by)
{
    run_transition(r, RUN_SUPERSEDED, json_pack("{s:s}", "by", by), RUN_CALL_CANCEL);
}

void run_cancel(struct run *r, const char *reason)
{
    run_transition(r, RUN_CANCELLED, json_pack("{s:s}", "reason", reason), RUN_CALL_CANCEL);
}

void run_end_elsewhere(struct run *r, const char *event)
{
    enum run_state st = terminal_state_named(event);
    run_transition(r, st < RUN_STATES ? st : RUN_FAILED, NULL, RUN_ENDED_ELSEWHERE);
}

void run_fail_store_lost(struct run *r)
{
    run_transition(r, RUN_FAILED,
                   failure("store_lost", "the store lost this run's events (Redis restarted "
                                         "without persistence, or failed over)"),
                   RUN_CALL_CANCEL);
}

void run_free(struct run *r)
{
    assert(!run_is_active(r));
    run_input_free(&r->in);
    free(r);
}

static json_t *time_or_null(double t)
{
    return t > 0 ? json_real(t) : json_null();
}

void run_status_json(const struct run *r, json_t *o)
{
    json_object_set_new(o, "has_task", json_boolean(r && run_is_active(r)));
    json_object_set_new(o, "status", r ? json_string(run_state_name(r->state)) : json_null());
    json_object_set_new(o, "run_id", r ? json_string(r->id) : json_null());
    json_object_set_new(o, "created_at", r ? time_or_null(r->created_at) : json_null());
    json_object_set_new(o, "started_at", r ? time_or_null(r->started_at) : json_null());
    json_object_set_new(o, "ended_at", r ? time_or_null(r->ended_at) : json_null());
    json_object_set_new(o, "events", json_integer(r ? (json_int_t)r->events : 0));
}
