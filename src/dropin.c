/* dropin.c: ADK's own run endpoints, POST /run_sse and POST /run, served
 * as runcast runs (DESIGN.md "ADK drop-in"), so that a frontend written for
 * ADK's api_server changes one URL and gets runs that outlive it.
 *
 * A call registers a run exactly as POST …/run does (replacing the
 * session's active one), then follows that run in the session's log
 * through a hub view (hub.h): the view skips the log until the run's first
 * event, turns each agent.event into ADK's frame (`data: <Event JSON>`, the
 * bytes of the encoded frame from its data line on: nothing is re-encoded)
 * and ends the answer at the run's terminal event, with ADK's error frame
 * when the run did not complete. /run_sse streams the frames; /run answers
 * the JSON array of the events at the end. The client leaving ends only
 * the answer: the run goes on, in the log, task status and the console. */
#include "dropin.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "api.h"
#include "auth.h"
#include "hub.h"
#include "router.h"
#include "run.h"
#include "server.h"
#include "session.h"
#include "store.h"
#include "stream.h"

static size_t max_answer_bytes;

void dropin_configure(size_t max_run_answer)
{
    max_answer_bytes = max_run_answer;
}

/* One call of /run_sse or /run, from its request to the end of its answer. */
struct dropin {
    struct conn *c;
    int sse; /* /run_sse (a stream), else /run (one JSON answer at the end) */
    struct route_params p;
    char run_id[24];
    int begun, registered, status; /* the run's registration (store_done_cb) */
    enum { VIEW_BEFORE_RUN, VIEW_IN_RUN, VIEW_ENDED } view;
    struct subscriber *sub;
    /* /run: the events so far, as the text of a JSON array without its
     * closing bracket, and the run's error frame when it did not complete. */
    struct buf events;
    json_t *error;
};

static void dropin_free(struct dropin *d)
{
    buf_free(&d->events);
    json_decref(d->error);
    free(d);
}

/* ---- the view: the log as ADK frames ------------------------------------ */

/* ADK's error frame for a run that ended with event type (data: the
 * event's JSON), or NULL when ADK would end the body without one: the run
 * completed, or it failed on an agent event with errorCode (ADK relays that
 * event and ends normally; so did runcast). An ADK error frame runcast
 * received (agent_error's detail) is ADK's own: it is sent as it came.
 * Returns a new reference. */
static json_t *error_frame(const char *type, json_t *data)
{
    const char *what = type + 4; /* after "run." */
    char text[512];
    if (strcmp(what, "completed") == 0)
        return NULL;
    if (strcmp(what, "failed") == 0) {
        const char *code = json_string_value(json_object_get(data, "code"));
        json_t *detail = json_object_get(data, "detail");
        if (code && strcmp(code, "agent_error") == 0 && json_is_object(detail))
            return json_object_get(detail, "errorCode") ? NULL : json_incref(detail);
        const char *message = json_string_value(json_object_get(data, "message"));
        str_copy(text, sizeof(text), message ? message : "the run failed");
        what = code ? code : what;
    } else if (strcmp(what, "superseded") == 0) {
        snprintf(text, sizeof(text), "the run was superseded by run %s",
                 json_string_value(json_object_get(data, "by")));
    } else if (strcmp(what, "cancelled") == 0) {
        snprintf(text, sizeof(text), "the run was cancelled (%s)",
                 json_string_value(json_object_get(data, "reason")));
    } else {
        snprintf(text, sizeof(text), "the run timed out (%s)",
                 json_string_value(json_object_get(data, "phase")));
    }
    return json_pack("{s:s, s:{s:s, s:s, s:O}}", "error", text, "error_details", "error_type", what,
                     "error_message", text, "run_id", json_object_get(data, "run_id"));
}

static int type_is(const char *type, size_t len, const char *name)
{
    return len == strlen(name) && memcmp(type, name, len) == 0;
}

static int type_is_terminal(const char *type, size_t len)
{
    static const char *const terminal[] = {"run.completed", "run.failed", "run.cancelled",
                                           "run.timed_out", "run.superseded"};
    for (size_t i = 0; i < RC_ARRAY_SIZE(terminal); i++) {
        if (type_is(type, len, terminal[i]))
            return 1;
    }
    return 0;
}

/* The hub view (hub.h) of one call: frames before the run's first event
 * are skipped (the view starts at the oldest retained one: in Redis mode
 * the run may reach this node's copy after the call subscribed), the
 * run's agent events become ADK frames, its terminal event ends the
 * answer. A session runs one run at a time, so every agent.event between
 * the run's first and terminal events is the run's. */
static struct frame *dropin_view(void *arg, struct frame *f, int *end)
{
    struct dropin *d = arg;
    struct frame_parts fp;
    if (d->view == VIEW_ENDED || frame_parse(f, &fp) < 0)
        return NULL;
    const char *type = fp.type, *data = fp.data;
    size_t type_len = fp.type_len;
    if (type_is(type, type_len, "agent.event")) {
        if (d->view != VIEW_IN_RUN)
            return NULL;
        return frame_new(0, data, (size_t)(f->data + f->len - data));
    }
    if (type_len < 4 || memcmp(type, "run.", 4) != 0)
        return NULL; /* stream.reset, session.closed: the run's own end comes first */
    const char *json = data + 5 + (data[5] == ' ');
    const char *eol = memchr(json, '\n', (size_t)(f->data + f->len - json));
    json_t *o = json_loadb(json, eol ? (size_t)(eol - json) : 0, 0, NULL);
    const char *run_id = json_string_value(json_object_get(o, "run_id"));
    if (run_id == NULL || strcmp(run_id, d->run_id) != 0) {
        json_decref(o);
        return NULL;
    }
    d->view = VIEW_IN_RUN;
    struct frame *out = NULL;
    if (type_is_terminal(type, type_len)) {
        char name[32];
        snprintf(name, sizeof(name), "%.*s", (int)type_len, type);
        json_t *err = error_frame(name, o);
        d->view = VIEW_ENDED;
        *end = 1;
        if (err && d->sse) {
            char *text = json_dumps(err, JSON_COMPACT);
            struct buf b = {0};
            buf_printf(&b, "data: %s\n\n", text);
            out = frame_new(0, b.data, b.len);
            buf_free(&b);
            free(text);
            json_decref(err);
        } else {
            d->error = err;
        }
    }
    json_decref(o);
    return out;
}

/* ---- /run: the events collected into one JSON answer --------------------- */

/* The view's frames, "data: <JSON>\n\n" (a JSON text of several lines comes
 * as several data lines: their join is the same JSON). Keepalives are
 * skipped. Returns 1 (everything taken), or -ENOSPC past the answer's
 * bound: the call is then answered with an error and unsubscribed. */
static int collect_send(void *transport, const uv_buf_t *bufs, unsigned nbufs, void *write)
{
    struct dropin *d = transport;
    for (unsigned i = 0; i < nbufs; i++) {
        const char *p = bufs[i].base, *end = bufs[i].base + bufs[i].len;
        if (bufs[i].len < 5 || memcmp(p, "data:", 5) != 0)
            continue;
        buf_append_str(&d->events, d->events.len == 0 ? "[" : ",");
        int first = 1;
        while (end - p > 5 && memcmp(p, "data:", 5) == 0) {
            p += 5 + (p[5] == ' ');
            const char *eol = memchr(p, '\n', (size_t)(end - p));
            if (eol == NULL)
                break; /* the view's frames end with a blank line */
            if (!first)
                buf_append_str(&d->events, "\n");
            buf_append(&d->events, p, (size_t)(eol - p));
            first = 0;
            p = eol + 1;
        }
    }
    if (d->events.len > max_answer_bytes) {
        conn_respond_error(d->c, 502, "answer_too_large",
                           "the run's events pass the answer's bound (--subscriber-buffer): "
                           "use /run_sse; the run goes on", NULL);
        hub_unsubscribe(d->sub);
        dropin_free(d);
        return -ENOSPC;
    }
    RC_UNUSED(write);
    return 1;
}

static size_t collect_pending(void *transport)
{
    RC_UNUSED(transport);
    return 0;
}

/* The run ended: ADK's answers, 200 with the events, or (ADK JS) 500
 * {"error", "events"} when the run did not complete. */
static void collect_end(void *transport)
{
    struct dropin *d = transport;
    buf_append_str(&d->events, d->events.len == 0 ? "[]" : "]");
    if (d->error == NULL) {
        conn_respond(d->c, 200, "application/json", NULL, d->events.data, d->events.len);
    } else {
        json_t *msg = json_object_get(d->error, "error");
        char *text = json_dumps(json_is_string(msg) ? msg : d->error, JSON_COMPACT | JSON_ENCODE_ANY);
        struct buf b = {0};
        buf_printf(&b, "{\"error\":%s,\"events\":", text);
        buf_append(&b, d->events.data, d->events.len);
        buf_append_str(&b, "}");
        conn_respond(d->c, 500, "application/json", NULL, b.data, b.len);
        buf_free(&b);
        free(text);
    }
    dropin_free(d);
}

/* The hub cut the answer (the log was reset under it): 503, the run goes
 * on. */
static void collect_cut(void *transport, int abort)
{
    struct dropin *d = transport;
    hub_unsubscribe(d->sub);
    conn_respond_error(d->c, 503, "stream_reset",
                       "the session's log was reset; the run goes on (GET …/run shows it)", NULL);
    dropin_free(d);
    RC_UNUSED(abort);
}

static const struct subscriber_ops collect_ops = {
    .send = collect_send,
    .pending = collect_pending,
    .end = collect_end,
    .cut = collect_cut,
};

/* ---- the call ------------------------------------------------------------ */

/* /run_sse's view subscriber went away (the run ended, or the client left:
 * the run goes on). */
static void dropin_left(void *arg)
{
    dropin_free(arg);
}

/* Follows the registered run: the answer's head and the view. */
static void dropin_follow(void *arg, int status)
{
    struct dropin *d = arg;
    struct session *s = session_find(d->p.app, d->p.user, d->p.session);
    if (status < 0 || s == NULL) {
        api_respond_refused_run(d->c, status < 0 ? status : -ENOENT);
        dropin_free(d);
        return;
    }
    struct hub_subscribe_options opt = {.view = dropin_view, .view_arg = d};
    int err;
    if (d->sse) {
        opt.on_leave = dropin_left;
        opt.leave_arg = d;
        err = stream_open(d->c, s->hub, &opt);
    } else {
        err = hub_subscribe(s->hub, &collect_ops, d, &opt, &d->sub);
    }
    if (err == -ENOSPC)
        conn_respond_error(d->c, 503, "too_many_subscribers",
                           "the subscriber limit (--max-subscribers) is reached; the run goes on",
                           "Retry-After: 1\r\n");
    if (err < 0)
        dropin_free(d);
}

/* The store registered the run (store_done_cb): once the session's log can
 * place subscribers (a Redis copy may be loading), follow it. */
static void dropin_registered(void *arg, int status)
{
    struct dropin *d = arg;
    d->status = status;
    d->registered = 1;
    if (!d->begun)
        return; /* memory mode: dropin_handle_request follows once it has the run's id */
    api_when_placeable(&d->p, status, dropin_follow, d);
}

/* ---- the request body: ADK's RunAgentRequest ----------------------------- */

/* Appends a FastAPI/pydantic validation error ({"type", "loc": ["body",
 * field], "msg", "input"}) to list. */
static void invalid(json_t *list, const char *type, const char *field, const char *msg,
                    json_t *input)
{
    json_t *e = json_pack("{s:s, s:[s], s:s, s:O}", "type", type, "loc", "body", "msg", msg, "input",
                          input ? input : json_null());
    if (field)
        json_array_append_new(json_object_get(e, "loc"), json_string(field));
    json_array_append_new(list, e);
}

/* body's field, by ADK's camelCase name or its snake_case alias. */
static json_t *field(json_t *body, const char *camel, const char *snake)
{
    json_t *v = json_object_get(body, camel);
    return v ? v : json_object_get(body, snake);
}

/* Reads one of appName, userId, sessionId into out (a path parameter:
 * runcast keys its sessions by them). */
static void id_field(json_t *body, json_t *errors, const char *camel, const char *snake, char *out)
{
    json_t *v = field(body, camel, snake);
    if (v == NULL)
        invalid(errors, "missing", camel, "Field required", body);
    else if (!json_is_string(v))
        invalid(errors, "string_type", camel, "Input should be a valid string", v);
    else if (!str_is_path_param(json_string_value(v), json_string_length(v)))
        invalid(errors, "string_pattern_mismatch", camel,
                "String should match pattern '^[A-Za-z0-9_.-]{1,128}$' (runcast keys sessions by "
                "it), and not be . or ..", v);
    else
        memcpy(out, json_string_value(v), json_string_length(v) + 1);
}

/* A run request: ADK's RunAgentRequest, read. */
struct run_request {
    struct route_params p;
    json_t *message, *state_delta; /* new references; state_delta may be NULL */
    int streaming;
};

/* Reads ADK's RunAgentRequest from a body (camelCase or snake_case).
 * Returns NULL with q filled, or the list of FastAPI validation errors (a
 * new reference; q then holds nothing). */
static json_t *read_request(const struct http_request *req, struct run_request *q)
{
    memset(q, 0, sizeof(*q));
    json_error_t jerr;
    json_t *body = json_loadb(req->body ? req->body : "", req->body_len, JSON_REJECT_DUPLICATES, &jerr);
    json_t *errors = json_array();
    if (body == NULL) {
        json_array_append_new(errors, json_pack("{s:s, s:[s,i], s:s, s:{}, s:{s:s}}", "type",
                                                "json_invalid", "loc", "body",
                                                (json_int_t)jerr.position, "msg",
                                                "JSON decode error", "input", "ctx", "error",
                                                jerr.text));
        return errors;
    }
    if (!json_is_object(body)) {
        invalid(errors, "model_attributes_type", NULL,
                "Input should be a valid dictionary or object to extract fields from", body);
        json_decref(body);
        return errors;
    }
    id_field(body, errors, "appName", "app_name", q->p.app);
    id_field(body, errors, "userId", "user_id", q->p.user);
    id_field(body, errors, "sessionId", "session_id", q->p.session);
    json_t *streaming = field(body, "streaming", "streaming");
    json_t *delta = field(body, "stateDelta", "state_delta");
    const char *why = NULL;
    if (field(body, "newMessage", "new_message") == NULL)
        invalid(errors, "missing", "newMessage", "Field required", body);
    else if ((q->message = api_new_message(body, &why)) == NULL)
        invalid(errors, "value_error", "newMessage", why, field(body, "newMessage", "new_message"));
    if (streaming && !json_is_boolean(streaming) && !json_is_null(streaming))
        invalid(errors, "bool_type", "streaming", "Input should be a valid boolean", streaming);
    if (delta && !json_is_object(delta) && !json_is_null(delta))
        invalid(errors, "dict_type", "stateDelta", "Input should be a valid dictionary", delta);
    if (json_array_size(errors) == 0) {
        q->streaming = json_is_true(streaming); /* ADK's default: false */
        q->state_delta = json_is_object(delta) ? json_incref(delta) : NULL;
    }
    json_decref(body);
    if (json_array_size(errors) > 0) {
        json_decref(q->message);
        q->message = NULL;
        return errors;
    }
    json_decref(errors);
    return NULL;
}

void dropin_handle_request(struct conn *c, const struct http_request *req, int route,
                           const struct auth_grant *grant)
{
    struct run_request q;
    json_t *errors = read_request(req, &q);
    if (errors) {
        json_t *o = json_pack("{s:o}", "detail", errors);
        conn_respond_json(c, 422, o, NULL);
        json_decref(o);
        return;
    }
    struct session *s = NULL;
    if (grant->user[0] && strcmp(grant->user, q.p.user) != 0)
        conn_respond_error(c, 403, "forbidden", "the token's user is not the request's userId", NULL);
    else
        s = api_run_session(c, &q.p);
    if (s == NULL) {
        json_decref(q.message);
        json_decref(q.state_delta);
        return;
    }
    struct dropin *d = xcalloc(1, sizeof(*d));
    d->c = c;
    d->sse = route == ROUTE_ADK_RUN_SSE;
    d->p = q.p;
    /* ADK's /run never streams the model (it ignores the field): the same
     * events as ADK's. */
    struct run_input in = {
        .new_message = q.message, .state_delta = q.state_delta, .streaming = d->sse && q.streaming};
    struct run *r = session_start_run(s, &in, dropin_registered, d);
    str_copy(d->run_id, sizeof(d->run_id), r->id);
    d->begun = 1;
    if (d->registered)
        dropin_registered(d, d->status);
}
