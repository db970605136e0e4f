/* handlers.c: the demo agent's HTTP routes, FastAPI-shaped like ADK's
 * api_server: sessions (create, get, delete), POST /run_sse (validate the
 * RunAgentRequest, record the call, hand it to stream.c), GET /debug/calls,
 * GET /health. Every handler answers before it returns, except a /run_sse
 * call whose run answers later (!delay). */
#include "demo_internal.h"

#include <stdio.h>
#include <stdlib.h>

/* Length of s[0..len) cut to at most max bytes without splitting a UTF-8
 * sequence (the input is valid UTF-8: it came out of jansson). */
static size_t demo_utf8_cut(const char *s, size_t len, size_t max)
{
    if (len <= max)
        return len;
    size_t n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    return n;
}

void demo_respond_detail(struct conn *c, int status, const char *detail, const char *extra)
{
    json_t *obj = json_pack("{s:s}", "detail", detail);
    conn_respond_json(c, status, obj, extra);
    json_decref(obj);
}

/* Sends FastAPI's validation answer: 422 {"detail":[errors...]}. Steals errors. */
static void demo_respond_422(struct conn *c, json_t *errors)
{
    json_t *obj = json_pack("{s:o}", "detail", errors);
    conn_respond_json(c, 422, obj, NULL);
    json_decref(obj);
}

/* One FastAPI-style validation error for body field `field`. Caller owns it. */
static json_t *demo_validation_error(const char *type, const char *field, const char *msg)
{
    return json_pack("{s:s,s:[s,s],s:s}", "type", type, "loc", "body", field, "msg", msg);
}

/* Copies a JSON string member found under the camelCase or snake_case name.
 * Returns 0 (and *out, malloc'd), -ENOENT when absent or null, -EINVAL when
 * not a string of 1..DEMO_ID_MAX bytes; adds the validation error. */
static int demo_body_id(json_t *body, const char *camel, const char *snake, char **out,
                   json_t *errors)
{
    json_t *v = json_object_get(body, camel);
    if (v == NULL || json_is_null(v))
        v = json_object_get(body, snake);
    if (v == NULL || json_is_null(v))
        return -ENOENT;
    if (!json_is_string(v) || json_string_length(v) == 0 ||
        json_string_length(v) > DEMO_ID_MAX) {
        json_array_append_new(errors,
                              demo_validation_error("string_type", camel,
                                                    "Input should be a string of 1 to 256 bytes"));
        return -EINVAL;
    }
    *out = xstrdup(json_string_value(v));
    return 0;
}

/* Parses a JSON body that must be an object. Returns it (caller owns) or
 * NULL after answering 422. */
static json_t *demo_body_object(struct conn *c, const struct http_request *req)
{
    json_error_t jerr;
    json_t *body = json_loadb(req->body ? req->body : "", req->body_len, JSON_DECODE_ANY, &jerr);
    if (body == NULL) {
        json_t *errors = json_array();
        json_array_append_new(errors, json_pack("{s:s,s:[s,i],s:s}", "type", "json_invalid",
                                                "loc", "body", (int)jerr.position,
                                                "msg", "JSON decode error"));
        demo_respond_422(c, errors);
        return NULL;
    }
    if (!json_is_object(body)) {
        json_decref(body);
        json_t *errors = json_array();
        json_array_append_new(errors, json_pack("{s:s,s:[s],s:s}", "type", "model_attributes_type",
                                                "loc", "body",
                                                "msg", "Input should be a valid dictionary"));
        demo_respond_422(c, errors);
        return NULL;
    }
    return body;
}

/* POST /apps/{app}/users/{user}/sessions (the id from the body's sessionId,
 * or made up) and POST …/sessions/{path_id} (the id from the path; the body
 * may hold a state, which the demo ignores), as Python ADK answers both. */
static void demo_handle_session_create(struct demo *d, struct conn *c,
                                       const struct http_request *req, const char *app,
                                       const char *user, const char *path_id)
{
    char *id = NULL;
    if (path_id != NULL) {
        id = xstrdup(path_id);
    } else if (req->body_len > 0) {
        json_t *body = demo_body_object(c, req);
        if (body == NULL)
            return;
        json_t *errors = json_array();
        int rc = demo_body_id(body, "sessionId", "session_id", &id, errors);
        json_decref(body);
        if (rc == -EINVAL) {
            demo_respond_422(c, errors);
            return;
        }
        json_decref(errors);
    }
    if (id == NULL) {
        uint64_t a = demo_rng_next(&d->rng), b = demo_rng_next(&d->rng);
        char uuid[40];
        snprintf(uuid, sizeof(uuid), "%08llx-%04llx-4%03llx-%04llx-%012llx",
                 (unsigned long long)(a >> 32), (unsigned long long)((a >> 16) & 0xffff),
                 (unsigned long long)(a & 0xfff),
                 (unsigned long long)(0x8000 | ((b >> 48) & 0x3fff)),
                 (unsigned long long)(b & 0xffffffffffffull));
        id = xstrdup(uuid);
    }
    if (demo_session_find(&d->sessions, app, user, id) != NULL) {
        char detail[DEMO_ID_MAX + 64];
        snprintf(detail, sizeof(detail), "Session already exists: %s", id);
        demo_respond_detail(c, 409, detail, NULL);
    } else {
        json_t *obj = demo_session_json(demo_session_add(&d->sessions, app, user, id));
        conn_respond_json(c, 200, obj, NULL);
        json_decref(obj);
    }
    free(id);
}

/* GET|DELETE /apps/{app}/users/{user}/sessions/{sid} */
static void demo_handle_session_one(struct demo *d, struct conn *c,
                                    const struct http_request *req, const char *app,
                                    const char *user, const char *id)
{
    struct demo_session *s = demo_session_find(&d->sessions, app, user, id);
    if (s == NULL) {
        demo_respond_detail(c, 404, "Session not found", NULL);
    } else if (req->method == HTTP_GET) {
        json_t *obj = demo_session_json(s);
        conn_respond_json(c, 200, obj, NULL);
        json_decref(obj);
    } else {
        demo_session_remove(&d->sessions, s);
        conn_respond(c, 204, NULL, NULL, NULL, 0);
    }
}

/* Appends a functionResponse part's "NAME returned <response as compact
 * JSON>" to responses, space-joined. A missing or null name is "", a missing
 * or null response {}; -EINVAL when fr is not an object, its name not a
 * string or its response not an object. */
static int demo_function_response_append(json_t *fr, struct buf *responses)
{
    if (!json_is_object(fr))
        return -EINVAL;
    json_t *name = json_object_get(fr, "name");
    json_t *response = json_object_get(fr, "response");
    if ((name != NULL && !json_is_null(name) && !json_is_string(name)) ||
        (response != NULL && !json_is_null(response) && !json_is_object(response)))
        return -EINVAL;
    if (responses->len > 0)
        buf_append(responses, " ", 1);
    if (json_is_string(name))
        buf_append(responses, json_string_value(name), json_string_length(name));
    buf_append_str(responses, " returned ");
    char *dump = json_is_object(response)
                     ? json_dumps(response, JSON_COMPACT | JSON_REAL_PRECISION(16))
                     : NULL;
    buf_append_str(responses, dump ? dump : "{}");
    free(dump);
    return 0;
}

/* Concatenates the text of newMessage.parts[] into text and describes its
 * functionResponse parts in responses; -EINVAL when the shape is wrong
 * (other parts, e.g. inlineData, are skipped). */
static int demo_message_text(json_t *msg, struct buf *text, struct buf *responses)
{
    if (!json_is_object(msg))
        return -EINVAL;
    json_t *parts = json_object_get(msg, "parts");
    if (parts == NULL || json_is_null(parts))
        return 0;
    if (!json_is_array(parts))
        return -EINVAL;
    size_t i;
    json_t *part;
    json_array_foreach(parts, i, part) {
        if (!json_is_object(part))
            return -EINVAL;
        json_t *t = json_object_get(part, "text");
        if (json_is_string(t))
            buf_append(text, json_string_value(t), json_string_length(t));
        json_t *fr = json_object_get(part, "functionResponse");
        if (fr != NULL && demo_function_response_append(fr, responses) != 0)
            return -EINVAL;
    }
    return 0;
}

/* A RunAgentRequest's fields. Owns its strings (demo_run_request_free). */
struct demo_run_request {
    char *app, *user, *sid; /* NULL when missing or invalid */
    struct buf text;        /* newMessage.parts[].text, concatenated */
    struct buf responses;   /* "NAME returned {…}" per functionResponse part */
    int streaming;          /* default false */
};

/* Reads body's fields (camelCase or snake_case) into r, adding one FastAPI
 * validation error to errors for each missing or invalid field. */
static void demo_run_request_parse(json_t *body, json_t *errors, struct demo_run_request *r)
{
    if (demo_body_id(body, "appName", "app_name", &r->app, errors) == -ENOENT)
        json_array_append_new(errors,
                              demo_validation_error("missing", "appName", "Field required"));
    if (demo_body_id(body, "userId", "user_id", &r->user, errors) == -ENOENT)
        json_array_append_new(errors, demo_validation_error("missing", "userId", "Field required"));
    if (demo_body_id(body, "sessionId", "session_id", &r->sid, errors) == -ENOENT)
        json_array_append_new(errors,
                              demo_validation_error("missing", "sessionId", "Field required"));
    json_t *msg = json_object_get(body, "newMessage");
    if (msg == NULL)
        msg = json_object_get(body, "new_message");
    if (msg == NULL)
        json_array_append_new(errors,
                              demo_validation_error("missing", "newMessage", "Field required"));
    else if (demo_message_text(msg, &r->text, &r->responses) != 0)
        json_array_append_new(errors, demo_validation_error("model_type", "newMessage",
                                                            "Input should be a valid Content"));
    json_t *streaming = json_object_get(body, "streaming");
    if (streaming != NULL && !json_is_boolean(streaming))
        json_array_append_new(errors, demo_validation_error("bool_type", "streaming",
                                                            "Input should be a valid boolean"));
    r->streaming = json_is_true(streaming);
}

static void demo_run_request_free(struct demo_run_request *r)
{
    free(r->app);
    free(r->user);
    free(r->sid);
    buf_free(&r->text);
    buf_free(&r->responses);
}

/* The message text as a C string ("" when there was none). Borrowed. */
static const char *demo_run_request_text(const struct demo_run_request *r)
{
    return r->text.data ? r->text.data : "";
}

/* Keeps the call's session id and text for /debug/calls, cut to their caps. */
static void demo_call_record(struct demo_call *call, const struct demo_run_request *r)
{
    if (r->sid) {
        free(call->session);
        call->session = xstrndup(r->sid, demo_utf8_cut(r->sid, strlen(r->sid), DEMO_ID_MAX));
    }
    const char *text = demo_run_request_text(r);
    free(call->text);
    call->text = xstrndup(text, demo_utf8_cut(text, r->text.len, DEMO_CALL_TEXT_MAX));
}

/* A valid call for an existing session: parses its directives, counts the
 * !status=CODExN row, applies !forget and hands the call to stream.c. The
 * words to echo: the functionResponse descriptions, then the text's words. */
static void demo_run_accept(struct demo *d, struct conn *c, struct demo_call *call,
                            struct demo_session *s, const struct demo_run_request *r)
{
    const char *text = demo_run_request_text(r);
    struct demo_directives dir;
    demo_directives_init(&dir);
    struct buf words = {0};
    buf_append(&words, r->responses.data, r->responses.len);
    demo_directives_parse(text, &dir, &words);
    int refused = demo_session_status_turn(s, text, dir.status ? dir.status_calls : 0);
    int status = dir.status && (dir.status_calls == 0 || refused) ? dir.status : 0;
    if (dir.forget)
        demo_session_remove(&d->sessions, s);
    demo_run_start(d, c, call, &dir, &words, r->streaming, status);
    buf_free(&words);
    demo_directives_free(&dir);
}

/* POST /run_sse: validates the RunAgentRequest, records the call, then
 * answers 422 / 404 / (stream.c) !status or a stream. */
static void demo_handle_run_sse(struct demo *d, struct conn *c, const struct http_request *req)
{
    struct demo_call *call = demo_call_new(&d->calls);
    json_t *body = demo_body_object(c, req);
    if (body == NULL) {
        demo_call_answered(call, 422);
        return;
    }
    json_t *errors = json_array();
    struct demo_run_request r = {0};
    demo_run_request_parse(body, errors, &r);
    json_decref(body);
    demo_call_record(call, &r);

    struct demo_session *s = NULL;
    if (json_array_size(errors) > 0) {
        demo_respond_422(c, errors); /* steals errors */
        demo_call_answered(call, 422);
    } else if ((s = demo_session_find(&d->sessions, r.app, r.user, r.sid)) == NULL) {
        json_decref(errors);
        char detail[DEMO_ID_MAX + 64];
        snprintf(detail, sizeof(detail), "Session not found: %s", r.sid);
        demo_respond_detail(c, 404, detail, NULL);
        demo_call_answered(call, 404);
    } else {
        json_decref(errors);
        demo_run_accept(d, c, call, s, &r);
    }
    demo_run_request_free(&r);
}

/* GET /debug/calls[?session=SID] */
static void demo_handle_debug_calls(struct demo *d, struct conn *c,
                                    const struct http_request *req)
{
    char filter[DEMO_ID_MAX + 1];
    int filtered = 0;
    if (req->query) {
        ssize_t n = http_query_get(req->query, req->query_len, "session", filter, sizeof(filter));
        if (n >= 0) {
            filtered = 1;
        } else if (n != -ENOENT) {
            demo_respond_detail(c, 400, "bad session parameter", NULL);
            return;
        }
    }
    json_t *calls = json_array();
    uint64_t first = d->calls.last_id > DEMO_CALL_RING ? d->calls.last_id - DEMO_CALL_RING + 1 : 1;
    for (uint64_t id = first; id <= d->calls.last_id; id++) {
        struct demo_call *call = demo_call_get(&d->calls, id);
        if (call == NULL || (filtered && strcmp(call->session, filter) != 0))
            continue;
        json_array_append_new(calls, demo_call_json(call));
    }
    json_t *obj = json_pack("{s:o}", "calls", calls);
    conn_respond_json(c, 200, obj, NULL);
    json_decref(obj);
}

/* Splits path into at most max segments (no empty ones). Returns the count,
 * or -1 when the path has an empty segment or too many. */
static int demo_path_split(const char *path, size_t len, char seg[][DEMO_ID_MAX + 1], int max)
{
    int n = 0;
    size_t i = 0;
    if (len == 0 || path[0] != '/')
        return -1;
    while (i < len) {
        size_t start = ++i;
        while (i < len && path[i] != '/')
            i++;
        size_t seg_len = i - start;
        if (seg_len == 0 || seg_len > DEMO_ID_MAX || n == max)
            return -1;
        memcpy(seg[n], path + start, seg_len);
        seg[n][seg_len] = '\0';
        n++;
    }
    return n;
}

static void demo_respond_not_allowed(struct conn *c, const char *allow)
{
    char extra[64];
    snprintf(extra, sizeof(extra), "Allow: %s\r\n", allow);
    demo_respond_detail(c, 405, "Method Not Allowed", extra);
}

/* The server's request callback: routes one request. Answers before it
 * returns, except a /run_sse run that waits for !delay. */
void demo_on_request(struct conn *c, const struct http_request *req, void *data)
{
    struct demo *d = data;
    char seg[6][DEMO_ID_MAX + 1];
    int n = demo_path_split(req->path, req->path_len, seg, 6);
    enum http_method m = req->method;

    if (n == 1 && strcmp(seg[0], "run_sse") == 0) {
        if (m == HTTP_POST)
            demo_handle_run_sse(d, c, req);
        else
            demo_respond_not_allowed(c, "POST");
    } else if (n == 1 && strcmp(seg[0], "health") == 0) {
        if (m == HTTP_GET) {
            json_t *obj = json_pack("{s:s}", "status", "ok");
            conn_respond_json(c, 200, obj, NULL);
            json_decref(obj);
        } else {
            demo_respond_not_allowed(c, "GET");
        }
    } else if (n == 2 && strcmp(seg[0], "debug") == 0 && strcmp(seg[1], "calls") == 0) {
        if (m == HTTP_GET)
            demo_handle_debug_calls(d, c, req);
        else
            demo_respond_not_allowed(c, "GET");
    } else if ((n == 5 || n == 6) && strcmp(seg[0], "apps") == 0 &&
               strcmp(seg[2], "users") == 0 && strcmp(seg[4], "sessions") == 0 &&
               str_is_path_param(seg[1], strlen(seg[1])) &&
               str_is_path_param(seg[3], strlen(seg[3])) &&
               (n == 5 || str_is_path_param(seg[5], strlen(seg[5])))) {
        if (n == 5 && m == HTTP_POST)
            demo_handle_session_create(d, c, req, seg[1], seg[3], NULL);
        else if (n == 5)
            demo_respond_not_allowed(c, "POST");
        else if (m == HTTP_POST)
            demo_handle_session_create(d, c, req, seg[1], seg[3], seg[5]);
        else if (m == HTTP_GET || m == HTTP_DELETE)
            demo_handle_session_one(d, c, req, seg[1], seg[3], seg[5]);
        else
            demo_respond_not_allowed(c, "GET, POST, DELETE");
    } else {
        demo_respond_detail(c, 404, "Not Found", NULL);
    }
}
