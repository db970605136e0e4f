/* api.c: request handlers. Each validates its input, does its work on the
 * session table and answers. Nothing here waits: in memory mode every
 * answer is immediate; in Redis mode (store_redis.h) the requests that
 * need the cluster's state are answered from the store's reply, and the
 * conn owes its answer until then (server.h's deferred answers). */
#include "api.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "auth.h"
#include "console.h"
#include "agui.h"
#include "dropin.h"
#include "hub.h"
#include "json_text.h"
#include "limiter.h"
#include "log.h"
#include "metrics.h"
#include "proxy.h"
#include "quota.h"
#include "router.h"
#include "run.h"
#include "server.h"
#include "session.h"
#include "store.h"
#include "store_redis.h"
#include "stream.h"
#include "upstream.h"

static int draining;
static int shared_store; /* Redis mode */

void api_set_shared_store(int value)
{
    shared_store = value;
}

static void respond_too_many_user_sessions(struct conn *c);

static void respond_store_unavailable(struct conn *c)
{
    conn_respond_error(c, 503, "store_unavailable", "the store (Redis) is unreachable",
                       "Retry-After: 1\r\n");
}

/* Redis mode, the store is down: answers 503 and returns 1. */
static int store_down(struct conn *c)
{
    if (!shared_store || store_redis_is_up())
        return 0;
    respond_store_unavailable(c);
    return 1;
}
static const char *upstream_kind = "http";

void api_set_upstream_kind(const char *kind)
{
    upstream_kind = kind;
}

void api_set_draining(int value)
{
    draining = value;
}

static void respond_json_steal(struct conn *c, int status, json_t *obj)
{
    conn_respond_json(c, status, obj, NULL);
    json_decref(obj);
}

static void events_path(char *out, size_t size, const struct route_params *p)
{
    snprintf(out, size, "/apps/%s/users/%s/sessions/%s/run", p->app, p->user, p->session);
}

json_t *api_new_message(json_t *body, const char **why)
{
    json_t *nm = json_object_get(body, "newMessage");
    if (nm == NULL)
        nm = json_object_get(body, "new_message");
    if (nm != NULL) {
        json_t *parts = json_object_get(nm, "parts");
        if (!json_is_object(nm) || !json_is_array(parts) || json_array_size(parts) == 0) {
            *why = "newMessage must be an object with a non-empty \"parts\" array";
            return NULL;
        }
        size_t i;
        json_t *part;
        json_array_foreach(parts, i, part) {
            json_t *text = json_object_get(part, "text");
            if (!json_is_object(part) || json_object_size(part) == 0 ||
                (text && (!json_is_string(text) || json_string_length(text) == 0))) {
                *why = "each part must be a non-empty object; a text part needs non-empty text";
                return NULL;
            }
        }
        json_t *copy = json_deep_copy(nm);
        if (!json_is_string(json_object_get(copy, "role")))
            json_object_set_new(copy, "role", json_string("user"));
        return copy;
    }
    json_t *text = json_object_get(body, "message");
    if (text == NULL)
        text = json_object_get(body, "query");
    if (!json_is_string(text) || json_string_length(text) == 0) {
        *why = "the body needs a non-empty \"message\" (or \"query\", or \"newMessage\")";
        return NULL;
    }
    return json_pack("{s:s, s:[{s:O}]}", "role", "user", "parts", "text", text);
}

static int content_type_is_json(const struct http_request *req)
{
    const struct http_header *h = http_find_header(req, "Content-Type");
    if (h == NULL)
        return 1; /* lenient: a body with no type is tried as JSON */
    const char *v = h->value;
    size_t n = h->value_len;
    for (size_t i = 0; i < n; i++) {
        if (v[i] == ';') {
            n = i;
            break;
        }
    }
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    return str_ieq(v, n, "application/json");
}

/* A body of another type is answered 415: returns 0 then, else 1. */
static int body_is_json(struct conn *c, const struct http_request *req)
{
    if (content_type_is_json(req))
        return 1;
    conn_respond_error(c, 415, "unsupported_media_type",
                       "the body must be JSON (Content-Type: application/json)", NULL);
    return 0;
}

json_t *api_json_body(struct conn *c, const struct http_request *req)
{
    json_error_t jerr;
    json_t *body = json_loadb(req->body ? req->body : "", req->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (body == NULL) {
        char msg[256];
        snprintf(msg, sizeof(msg), "invalid JSON body: %s", jerr.text);
        conn_respond_error(c, 400, "invalid_json", msg, NULL);
    }
    return body;
}

/* Checks a POST …/run body (already parsed JSON) and maps it to the ADK
 * request's parts. Returns the new message (a new reference) and sets
 * *state_delta (a new reference, or NULL) and *streaming (default 1); or
 * returns NULL with *why naming what is wrong. */
static json_t *run_request_from_body(json_t *body, json_t **state_delta, int *streaming,
                                     const char **why)
{
    json_t *stream = json_object_get(body, "streaming");
    json_t *delta = json_object_get(body, "stateDelta");
    if (delta == NULL)
        delta = json_object_get(body, "state_delta");
    *state_delta = NULL;
    *streaming = stream ? json_is_true(stream) : 1;
    if (!json_is_object(body)) {
        *why = "the body must be a JSON object";
        return NULL;
    }
    if (stream && !json_is_boolean(stream)) {
        *why = "\"streaming\" must be a boolean";
        return NULL;
    }
    if (delta && !json_is_null(delta) && !json_is_object(delta)) {
        *why = "\"stateDelta\" must be an object";
        return NULL;
    }
    json_t *message = api_new_message(body, why);
    if (message && json_is_object(delta))
        *state_delta = json_incref(delta);
    return message;
}

void api_when_placeable(const struct route_params *p, int status, store_done_cb follow, void *arg)
{
    struct session *s = session_find(p->app, p->user, p->session);
    if (status >= 0 && s && !store_ready(s->log, NULL, follow, arg))
        return;
    follow(arg, status);
}

void api_respond_refused_run(struct conn *c, int status)
{
    if (status == -EDQUOT)
        respond_too_many_user_sessions(c);
    else
        respond_store_unavailable(c);
}

static void respond_too_many_user_sessions(struct conn *c)
{
    conn_respond_error(c, 429, "too_many_user_sessions",
                       "this user has --max-sessions-per-user sessions", "Retry-After: 1\r\n");
}

/* session_get_or_create() for a request: on failure answers it (503 at
 * --max-sessions, 429 at --max-sessions-per-user) and returns the negative
 * errno. */
static int get_or_create_session(struct conn *c, const struct route_params *p,
                                 struct session **out)
{
    int err = session_get_or_create(p->app, p->user, p->session, out);
    if (err == -EDQUOT)
        respond_too_many_user_sessions(c);
    else if (err < 0)
        conn_respond_error(c, 503, "too_many_sessions",
                           "the session limit (--max-sessions) is reached", "Retry-After: 1\r\n");
    return err;
}

/* A POST's 202, sent once the store registered the run (at once in
 * memory mode: then post_registered runs before session_start_run
 * returns, and the answer waits for the run's fields). */
struct post_answer {
    struct conn *c;
    int begun, registered, status;
    char run_id[32], session_id[129], state[16], path[512];
};

/* Appends ,"key":"value" (the key is plain text) to a JSON object's text. */
static void append_field(struct buf *out, const char *key, const char *value)
{
    buf_append(out, ",\"", 2);
    buf_append_str(out, key);
    buf_append(out, "\":", 2);
    json_text_string(out, value, strlen(value));
}

static void post_answer(struct post_answer *a)
{
    if (a->status < 0) {
        api_respond_refused_run(a->c, a->status);
        free(a);
        return;
    }
    /* The bytes json_dumps would write for this object, without building
     * it (the run storm's every POST paid json_pack and json_dumps). */
    struct buf body = {0};
    buf_append_str(&body, "{\"success\":true");
    append_field(&body, "run_id", a->run_id);
    append_field(&body, "session_id", a->session_id);
    append_field(&body, "status", a->status == STORE_REFUSED ? "failed" : a->state);
    append_field(&body, "events", a->path);
    buf_append_str(&body, "}");
    conn_respond(a->c, 202, "application/json", NULL, body.data, body.len);
    buf_free(&body);
    free(a);
}

static void post_registered(void *arg, int status)
{
    struct post_answer *a = arg;
    a->status = status;
    a->registered = 1;
    if (a->begun)
        post_answer(a);
}

/* While draining, new runs are refused: answers 503 and returns 1. */
static int refuse_if_draining(struct conn *c)
{
    if (draining)
        conn_respond_error(c, 503, "draining", "runcast is shutting down", "Retry-After: 1\r\n");
    return draining;
}

struct session *api_run_session(struct conn *c, const struct route_params *p)
{
    return refuse_if_draining(c) ? NULL : api_stream_session(c, p);
}

struct session *api_stream_session(struct conn *c, const struct route_params *p)
{
    struct session *s;
    if (store_down(c) || get_or_create_session(c, p, &s) < 0)
        return NULL;
    return s;
}

static void handle_post_run(struct conn *c, const struct http_request *req,
                            const struct route_params *p)
{
    json_t *body;
    if (refuse_if_draining(c) || !body_is_json(c, req) || (body = api_json_body(c, req)) == NULL)
        return;
    const char *why = NULL;
    json_t *state_delta;
    int stream;
    json_t *message = run_request_from_body(body, &state_delta, &stream, &why);
    json_decref(body); /* why is a literal; message and state_delta hold their own refs */
    if (message == NULL) {
        conn_respond_error(c, 400, "invalid_request", why, NULL);
        return;
    }

    struct session *s = api_run_session(c, p);
    if (s == NULL) {
        json_decref(message);
        json_decref(state_delta);
        return;
    }
    struct post_answer *a = xcalloc(1, sizeof(*a));
    a->c = c;
    struct run_input in = {.new_message = message, .state_delta = state_delta, .streaming = stream};
    struct run *r = session_start_run(s, &in, post_registered, a);
    str_copy(a->run_id, sizeof(a->run_id), r->id);
    str_copy(a->session_id, sizeof(a->session_id), s->id);
    str_copy(a->state, sizeof(a->state), run_state_name(r->state));
    events_path(a->path, sizeof(a->path), p);
    a->begun = 1;
    if (a->registered)
        post_answer(a);
}

/* Reads Last-Event-ID from the header or ?last_event_id=. Returns 1 and fills
 * out, 0 when absent, -EINVAL when unusable. */
static int last_event_id(const struct http_request *req, char *out, size_t size)
{
    const struct http_header *h = http_find_header(req, "Last-Event-ID");
    if (h) {
        if (h->value_len == 0)
            return 0;
        if (h->value_len >= size)
            return -EINVAL;
        memcpy(out, h->value, h->value_len);
        out[h->value_len] = '\0';
        return 1;
    }
    if (req->query == NULL)
        return 0;
    ssize_t n = http_query_get(req->query, req->query_len, "last_event_id", out, size);
    if (n == -ENOENT || n == 0)
        return 0;
    return n < 0 ? -EINVAL : 1;
}

/* A GET of the stream on its way. In Redis mode it may wait for the store
 * at each step: is the session a deleted one (its tombstone), how many
 * streams has the user on other nodes, is the session's log loaded. */
struct stream_request {
    struct conn *c;
    struct route_params p;
    char id[256];
    int has_id, from_live;
    uint64_t deadline_ms;
    enum { ASK_TOMBSTONE, ASK_USER_STREAMS, ASK_NOTHING } step;
    int elsewhere; /* the user's streams on other nodes */
};

static void stream_step(struct stream_request *q);

static void stream_subscribe(struct stream_request *q, struct session *s)
{
    struct conn *c = q->c;
    void *counted;
    if (quota_subscriber_begin_shared(q->p.user, q->elsewhere, &counted) < 0) {
        conn_respond_error(c, 429, "too_many_user_subscribers",
                           "this user has --max-subscribers-per-user streams open",
                           "Retry-After: 1\r\n");
        return;
    }
    struct hub_subscribe_options opt = {
        .last_event_id = q->has_id ? q->id : NULL,
        .from_live = q->from_live,
        .deadline_ms = q->deadline_ms,
        .on_leave = quota_subscriber_end,
        .leave_arg = counted,
    };
    int err = stream_open(c, s->hub, &opt);
    if (err < 0)
        quota_subscriber_end(counted);
    if (err == -ENOSPC)
        conn_respond_error(c, 503, "too_many_subscribers",
                           "the subscriber limit (--max-subscribers) is reached", "Retry-After: 1\r\n");
}

/* The session's log can place subscribers now (status 0) or not. */
static void stream_on_ready(void *arg, int status)
{
    struct stream_request *q = arg;
    struct session *s = session_find(q->p.app, q->p.user, q->p.session);
    if (status == -EDQUOT)
        respond_too_many_user_sessions(q->c);
    else if (status < 0 || s == NULL)
        respond_store_unavailable(q->c);
    else
        stream_subscribe(q, s);
    free(q);
}

/* The store's answer to the step q asked about. */
static void stream_on_store(void *arg, int err, json_t *result)
{
    struct stream_request *q = arg;
    if (err < 0) {
        respond_store_unavailable(q->c);
        free(q);
        return;
    }
    if (q->step == ASK_TOMBSTONE && json_is_true(json_object_get(result, "deleted"))) {
        conn_respond(q->c, 204, NULL, NULL, NULL, 0); /* as session_was_deleted() */
        free(q);
        return;
    }
    if (q->step == ASK_USER_STREAMS)
        q->elsewhere = (int)json_integer_value(json_object_get(result, "elsewhere"));
    q->step++;
    stream_step(q);
}

static void stream_step(struct stream_request *q)
{
    const struct route_params *p = &q->p;
    if (q->step == ASK_TOMBSTONE) {
        if (shared_store && q->has_id && session_find(p->app, p->user, p->session) == NULL) {
            store_redis_was_deleted(p->app, p->user, p->session, q->id, stream_on_store, q);
            return;
        }
        q->step++;
    }
    if (q->step == ASK_USER_STREAMS) {
        if (shared_store && quota_subscriber_cap() > 0) {
            store_redis_user_subscribers(p->user, stream_on_store, q);
            return;
        }
        q->step++;
    }
    struct session *s;
    if (get_or_create_session(q->c, p, &s) < 0) {
        free(q);
        return;
    }
    if (store_ready(s->log, q->has_id ? q->id : NULL, stream_on_ready, q))
        stream_on_ready(q, 0);
}

static void handle_get_stream(struct conn *c, const struct http_request *req,
                              const struct route_params *p, const struct auth_grant *grant)
{
    char id[256], from[16];
    int has_id = last_event_id(req, id, sizeof(id));
    if (has_id < 0) {
        /* An id we cannot even read is an id we cannot place: reset. */
        strcpy(id, "invalid");
        has_id = 1;
    }
    int from_live = 0;
    if (req->query && http_query_get(req->query, req->query_len, "from", from, sizeof(from)) > 0) {
        if (strcmp(from, "live") != 0) {
            conn_respond_error(c, 400, "invalid_request", "from must be \"live\"", NULL);
            return;
        }
        from_live = 1;
    }
    if (has_id && session_was_deleted(p->app, p->user, p->session, id)) {
        /* The tab's session was deleted: EventSource stops on 204. */
        conn_respond(c, 204, NULL, NULL, NULL, 0);
        return;
    }
    if (store_down(c))
        return;
    struct stream_request *q = xcalloc(1, sizeof(*q));
    q->c = c;
    q->p = *p;
    q->has_id = has_id;
    str_copy(q->id, sizeof(q->id), has_id ? id : "");
    q->from_live = from_live;
    q->deadline_ms = auth_grant_deadline_ms(grant);
    stream_step(q);
}

/* Redis mode: the answer to a cluster-wide request. */
struct store_answer {
    struct conn *c;
    int route;
    char session_id[129];
};

static void store_answered(void *arg, int err, json_t *result)
{
    struct store_answer *a = arg;
    struct conn *c = a->c;
    if (err == -ENOENT)
        conn_respond_error(c, 404, "session_not_found", "no such session", NULL);
    else if (err == -ESRCH)
        conn_respond_error(c, 404, "no_active_run", "the session has no active run", NULL);
    else if (err < 0)
        respond_store_unavailable(c);
    else if (a->route == ROUTE_SESSION_RUN)
        respond_json_steal(c, 200, json_pack("{s:b, s:O, s:s}", "success", 1, "run_id",
                                             json_object_get(result, "run_id"), "status", "cancelled"));
    else if (a->route == ROUTE_SESSION)
        respond_json_steal(c, 200, json_pack("{s:b, s:s, s:O}", "success", 1, "session_id",
                                             a->session_id, "run_id", json_object_get(result, "run_id")));
    else
        conn_respond_json(c, 200, result, NULL);
    free(a);
}

static struct store_answer *store_answer_new(struct conn *c, int route, const char *session_id)
{
    struct store_answer *a = xmalloc(sizeof(*a));
    a->c = c;
    a->route = route;
    str_copy(a->session_id, sizeof(a->session_id), session_id);
    return a;
}

static void handle_cancel_run(struct conn *c, const struct route_params *p)
{
    if (shared_store) {
        if (!store_down(c))
            store_redis_cancel(p->app, p->user, p->session, "client_request", store_answered,
                               store_answer_new(c, ROUTE_SESSION_RUN, NULL));
        return;
    }
    struct session *s = session_find(p->app, p->user, p->session);
    if (s == NULL) {
        conn_respond_error(c, 404, "session_not_found", "no such session", NULL);
        return;
    }
    session_touch(s);
    if (s->run == NULL || !run_is_active(s->run)) {
        conn_respond_error(c, 404, "no_active_run", "the session has no active run", NULL);
        return;
    }
    run_cancel(s->run, "client_request");
    respond_json_steal(c, 200, json_pack("{s:b, s:s, s:s}", "success", 1, "run_id", s->run->id,
                                         "status", "cancelled"));
}

static void handle_session_status(struct conn *c, const struct route_params *p)
{
    if (shared_store) {
        if (!store_down(c))
            store_redis_status(p->app, p->user, p->session, store_answered,
                               store_answer_new(c, ROUTE_SESSION_STATUS, NULL));
        return;
    }
    struct session *s = session_find(p->app, p->user, p->session);
    if (s == NULL) {
        conn_respond_error(c, 404, "session_not_found", "no such session", NULL);
        return;
    }
    session_touch(s);
    respond_json_steal(c, 200, session_status_json(s));
}

/* DELETE of a session: runcast's session ends, and the DELETE goes to the
 * upstream too (ADK's session is the same conversation). One answer:
 * runcast's 200 when runcast knew the session (after the upstream
 * answered or failed), else the upstream's 2xx verbatim, else runcast's
 * 404, or the 502/504 of an upstream runcast could not ask. */
struct delete_request {
    json_t *ours; /* runcast's 200 body, or NULL: runcast did not know the session */
    char session_id[129];
};

static void delete_forwarded(struct conn *c, const struct proxy_answer *a, void *arg)
{
    struct delete_request *d = arg;
    int upstream_2xx = a->outcome == PROXY_ANSWERED && a->status >= 200 && a->status < 300;
    if (!upstream_2xx && !(a->outcome == PROXY_ANSWERED && a->status == 404)) {
        char status[16];
        snprintf(status, sizeof(status), "%d", a->outcome == PROXY_ANSWERED ? a->status : 0);
        log_event(LOG_WARN, "session.upstream_delete", "session", d->session_id, "status", status,
                  "message", a->outcome == PROXY_ANSWERED ? "unexpected answer" : a->message, NULL);
    }
    if (d->ours)
        respond_json_steal(c, 200, d->ours);
    else if (upstream_2xx || a->outcome != PROXY_ANSWERED)
        proxy_respond_answer(c, a);
    else
        conn_respond_error(c, 404, "session_not_found", "no such session", NULL);
    free(d);
}

/* Forwards the DELETE once runcast's own part is done (ours: its answer). */
static void delete_forward(struct conn *c, struct proxy_forward *fwd, json_t *ours,
                           const char *session_id)
{
    if (fwd == NULL) { /* shutting down: runcast's part alone */
        if (ours)
            respond_json_steal(c, 200, ours);
        else
            conn_respond_error(c, 404, "session_not_found", "no such session", NULL);
        return;
    }
    struct delete_request *d = xcalloc(1, sizeof(*d));
    d->ours = ours;
    str_copy(d->session_id, sizeof(d->session_id), session_id);
    proxy_forward_start(fwd, delete_forwarded, d);
}

/* Redis mode: the store deleted the session (or did not know it). */
struct store_delete {
    struct conn *c;
    struct proxy_forward *fwd;
    char session_id[129];
};

static void store_deleted(void *arg, int err, json_t *result)
{
    struct store_delete *sd = arg;
    if (err < 0 && err != -ENOENT) {
        if (sd->fwd)
            proxy_forward_drop(sd->fwd);
        respond_store_unavailable(sd->c);
    } else {
        json_t *ours = err == -ENOENT ? NULL
                       : json_pack("{s:b, s:s, s:O}", "success", 1, "session_id", sd->session_id,
                                   "run_id", json_object_get(result, "run_id"));
        delete_forward(sd->c, sd->fwd, ours, sd->session_id);
    }
    free(sd);
}

static void handle_delete_session(struct conn *c, const struct http_request *req,
                                  const struct route_params *p)
{
    if (shared_store) {
        if (store_down(c))
            return;
        struct store_delete *sd = xcalloc(1, sizeof(*sd));
        sd->c = c;
        sd->fwd = proxy_forward_new(c, req);
        str_copy(sd->session_id, sizeof(sd->session_id), p->session);
        store_redis_delete(p->app, p->user, p->session, store_deleted, sd);
        return;
    }
    struct proxy_forward *fwd = proxy_forward_new(c, req);
    struct session *s = session_find(p->app, p->user, p->session);
    json_t *ours = NULL;
    if (s != NULL) {
        ours = json_pack("{s:b, s:s, s:o}", "success", 1, "session_id", p->session, "run_id",
                         s->run ? json_string(s->run->id) : json_null());
        session_delete(s, "session_deleted");
    }
    delete_forward(c, fwd, ours, p->session);
}

static void handle_all_status(struct conn *c, const struct http_request *req)
{
    char value[32];
    int all = 0;
    long limit = 1000;
    if (req->query && http_query_get(req->query, req->query_len, "all", value, sizeof(value)) >= 0)
        all = strcmp(value, "0") != 0 && strcmp(value, "false") != 0;
    if (req->query && http_query_get(req->query, req->query_len, "limit", value, sizeof(value)) >= 0) {
        char *end;
        limit = strtol(value, &end, 10);
        if (*value == '\0' || *end != '\0' || limit < 0) {
            conn_respond_error(c, 400, "invalid_request", "limit must be a non-negative integer", NULL);
            return;
        }
    }
    if (shared_store) {
        if (!store_down(c))
            store_redis_status_all(all, limit, store_answered,
                                   store_answer_new(c, ROUTE_ALL_STATUS, NULL));
        return;
    }
    json_t *list = json_array();
    for (struct session *s = session_first(); s && (long)json_array_size(list) < limit;
         s = session_next(s)) {
        if (all || (s->run && run_is_active(s->run)))
            json_array_append_new(list, session_status_json(s));
    }
    json_t *o = json_pack("{s:I, s:I, s:I, s:I, s:o}", "total_tasks", (json_int_t)run_count_active(),
                          "running_tasks", (json_int_t)limiter_active(), "queued_tasks",
                          (json_int_t)limiter_queued(), "sessions_total", (json_int_t)session_count(),
                          "sessions", list);
    respond_json_steal(c, 200, o);
}

/* Collects the numbers other modules keep for metrics_render(). */
static void metrics_snapshot_take(struct metrics_snapshot *snap)
{
    static const enum run_state outcomes[] = {RUN_COMPLETED, RUN_FAILED, RUN_CANCELLED,
                                              RUN_TIMED_OUT, RUN_SUPERSEDED};
    memset(snap, 0, sizeof(*snap));
    for (size_t i = 0; i < RC_ARRAY_SIZE(outcomes); i++)
        snap->runs_by_outcome[snap->run_outcomes++] =
            (struct metrics_count){run_state_name(outcomes[i]), run_count_outcome(outcomes[i])};
    snap->subscribers_dropped_slow = hub_dropped_total(HUB_DROP_SLOW);
    snap->subscribers_dropped_lagged = hub_dropped_total(HUB_DROP_LAGGED);
    snap->runs_active = run_count_active();
    snap->runs_queued = limiter_queued();
    snap->sessions = session_count();
    snap->subscribers = hub_total_subscribers();
    snap->upstream_transfers = upstream_live_transfers() + proxy_live_transfers();
    snap->forwarded_active = proxy_active();
    snap->frames = frame_count();
    snap->log_lines_dropped = log_dropped_lines();
    if (shared_store) {
        struct store_redis_stats st;
        store_redis_stats(&st);
        snap->store_redis = 1;
        snap->store_up = st.up;
        snap->store_reconnects = st.reconnects;
        snap->store_fenced_appends = st.fenced_appends;
        snap->runs_reaped = st.runs_reaped;
        snap->store_pubsub_resets = st.pubsub_resets;
    }
}

/* data is NULL for the main listener, &auth_admin_listener for
 * --admin-listen: the access-control gate decides what each may serve. */
void api_handle_request(struct conn *c, const struct http_request *req, void *data)
{
    struct route_params p;
    struct auth_grant grant;
    int route = router_match(req->path, req->path_len, &p);
    int bad_forward = 0;
    if (route >= 0 && proxy_forwards(route, req->method)) {
        /* The upstream's route: the gate checks the user its path names. */
        route = ROUTE_FORWARD;
        bad_forward = proxy_check_path(req->path, req->path_len, p.user, sizeof(p.user)) < 0;
    }
    if (!auth_check_request(c, req, bad_forward ? ROUTE_NONE : route, &p, data, &grant))
        return;
    if (bad_forward) {
        conn_respond_error(c, 400, "invalid_path",
                           "the path has a dot segment, an empty segment or an encoded '/', "
                           "'\\' or NUL",
                           NULL);
        return;
    }
    if (route == ROUTE_FORWARD) {
        struct proxy_forward *fwd = req->method == HTTP_OTHER ? NULL : proxy_forward_new(c, req);
        if (req->method == HTTP_OTHER)
            conn_respond_error(c, 501, "not_implemented", "this method is not forwarded", NULL);
        else if (fwd == NULL)
            conn_respond_error(c, 503, "draining", "runcast is shutting down", "Retry-After: 1\r\n");
        else
            proxy_forward_start(fwd, NULL, NULL);
        return;
    }
    if (route < 0) {
        conn_respond_error(c, 400, "invalid_path_parameter",
                           "app, user and session must be 1 to 128 characters of [A-Za-z0-9_.-], "
                           "and not . or ..",
                           NULL);
        return;
    }
    if (!router_allows(route, req->method)) {
        conn_respond_error(c, 405, "method_not_allowed", "method not allowed on this route",
                           router_allow_header(route));
        return;
    }
    switch (route) {
    case ROUTE_SESSION_RUN:
        if (req->method == HTTP_POST)
            handle_post_run(c, req, &p);
        else if (req->method == HTTP_GET)
            handle_get_stream(c, req, &p, &grant);
        else
            handle_cancel_run(c, &p);
        break;
    case ROUTE_SESSION_STATUS:
        handle_session_status(c, &p);
        break;
    case ROUTE_SESSION:
        handle_delete_session(c, req, &p);
        break;
    case ROUTE_ALL_STATUS:
        handle_all_status(c, req);
        break;
    case ROUTE_HEALTHZ:
        respond_json_steal(c, 200, json_pack("{s:s, s:s}", "status", "ok", "upstream", upstream_kind));
        break;
    case ROUTE_READYZ:
        if (draining)
            respond_json_steal(c, 503, json_pack("{s:s}", "status", "draining"));
        else if (shared_store && !store_redis_is_up())
            respond_json_steal(c, 503, json_pack("{s:s}", "status", "store_unavailable"));
        else
            respond_json_steal(c, 200, json_pack("{s:s}", "status", "ready"));
        break;
    case ROUTE_METRICS: {
        struct buf text = {0};
        struct metrics_snapshot snap;
        metrics_snapshot_take(&snap);
        metrics_render(&text, &snap);
        conn_respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, text.data, text.len);
        buf_free(&text);
        break;
    }
    case ROUTE_CONSOLE:
    case ROUTE_CONSOLE_ASSET:
        console_serve(c, req);
        break;
    case ROUTE_ADK_RUN_SSE:
    case ROUTE_ADK_RUN:
        dropin_handle_request(c, req, route, &grant);
        break;
    case ROUTE_AGUI:
        if (body_is_json(c, req))
            agui_handle_post(c, req, &p);
        break;
    case ROUTE_AGUI_RESUME:
        agui_handle_resume(c, &p);
        break;
    default:
        conn_respond_error(c, 404, "not_found", "no such route", NULL);
        break;
    }
}
