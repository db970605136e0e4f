/* agui.c: the AG-UI protocol over runcast runs (DESIGN.md "AG-UI"), so that
 * frontends built on @ag-ui/client's HttpAgent (CopilotKit and the like)
 * use runcast unchanged, and a reloaded page rejoins its run.
 *
 * POST …/agui takes a RunAgentInput, starts an ordinary runcast run of the
 * session named by its threadId, and answers the run's events translated
 * into AG-UI through a hub view (hub.h). GET …/agui/{threadId} (resume)
 * answers one MESSAGES_SNAPSHOT of the thread rebuilt from the session's
 * log, then the live tail of its run.
 *
 * Both rest on one translation (struct agui_tr): fed the log's frames in
 * order, it produces the AG-UI events and, when asked, the messages
 * @ag-ui/client builds from them. Everything it produces is a function of
 * the log alone (message ids derive from event ids), so a snapshot built
 * on any node, at any time, matches what a client that never left holds.
 * The run's input messages reach the log in its first event ("agui"). */
#include "agui.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "api.h"
#include "auth.h"
#include "hub.h"
#include "quota.h"
#include "router.h"
#include "run.h"
#include "server.h"
#include "session.h"
#include "store.h"
#include "store_redis.h"
#include "stream.h"

#define AGUI_MAX_RUN_ID 128

/* ---- the translation ------------------------------------------------------ */

/* The translation of one thread's log. What is open is what the client
 * holds open (its verifier's view); messages, when kept, is what
 * @ag-ui/client's apply step builds from the events (a resume's
 * snapshot, and the ids a POST's input may already have sent). */
struct agui_tr {
    char thread_id[129];
    char run_id[24];          /* runcast's id of the run being translated ("" before one) */
    json_t *run;              /* {"threadId", "runId"} of that run, as its events name it */
    int in_run, ended;        /* the run began (its first event was seen) / ended */
    char text_id[96];         /* the open text message ("" when none) */
    char reasoning_id[96];    /* the open reasoning message and span ("" when none) */
    int streamed;             /* partial events came since the last whole one */
    json_t *call_ids;         /* the run's tool calls so far (an object used as a set) */
    json_t *terminal;         /* the run's RUN_FINISHED or RUN_ERROR, once ended */
    json_t *messages;         /* kept only when asked (NULL otherwise) */
    json_t *out;              /* the events of the last tr_feed() */
    char last_id[64];         /* the log event id last fed */
};

static void tr_init(struct agui_tr *t, const char *thread_id, int keep_messages)
{
    memset(t, 0, sizeof(*t));
    str_copy(t->thread_id, sizeof(t->thread_id), thread_id);
    t->call_ids = json_object();
    t->messages = keep_messages ? json_array() : NULL;
    t->out = json_array();
}

static void tr_free(struct agui_tr *t)
{
    json_decref(t->run);
    json_decref(t->call_ids);
    json_decref(t->terminal);
    json_decref(t->messages);
    json_decref(t->out);
}

/* 1 when v is the string s (inputs are the client's: any JSON at all). */
static int str_is(json_t *v, const char *s)
{
    return json_is_string(v) && strcmp(json_string_value(v), s) == 0;
}

/* v's text, "" when v is no string. */
static const char *str_of(json_t *v)
{
    return json_is_string(v) ? json_string_value(v) : "";
}

/* The message of messages with this id, or NULL. */
static json_t *message_find(json_t *messages, const char *id)
{
    size_t i;
    json_t *m;
    json_array_foreach(messages, i, m) {
        if (str_is(json_object_get(m, "id"), id))
            return m;
    }
    return NULL;
}

/* The tool call with this id among messages' tool calls (and in *at the
 * index of the message carrying it), or NULL. */
static json_t *call_find(json_t *messages, const char *id, size_t *at)
{
    size_t i, j;
    json_t *m, *call;
    json_array_foreach(messages, i, m) {
        json_array_foreach(json_object_get(m, "toolCalls"), j, call) {
            if (str_is(json_object_get(call, "id"), id)) {
                if (at)
                    *at = i;
                return call;
            }
        }
    }
    return NULL;
}

static void append_to_string(json_t *o, const char *key, json_t *delta)
{
    const char *old = json_string_value(json_object_get(o, key));
    struct buf b = {0};
    buf_append_str(&b, old ? old : "");
    buf_append(&b, json_string_value(delta), json_string_length(delta));
    json_object_set_new(o, key, json_stringn(b.data ? b.data : "", b.len));
    buf_free(&b);
}

/* What @ag-ui/client 1.0.0's apply step does to the messages with ev
 * (the events this translation produces; the others change no message). */
static void messages_apply(json_t *messages, json_t *ev)
{
    const char *type = json_string_value(json_object_get(ev, "type"));
    const char *id = json_string_value(json_object_get(ev, "messageId"));
    const char *call = json_string_value(json_object_get(ev, "toolCallId"));
    json_t *delta = json_object_get(ev, "delta");
    if (strcmp(type, "TEXT_MESSAGE_START") == 0 || strcmp(type, "REASONING_MESSAGE_START") == 0) {
        if (message_find(messages, id) == NULL)
            json_array_append_new(messages, json_pack("{s:s, s:O, s:s}", "id", id, "role",
                                                      json_object_get(ev, "role"), "content", ""));
    } else if (strcmp(type, "TEXT_MESSAGE_CONTENT") == 0 ||
               strcmp(type, "REASONING_MESSAGE_CONTENT") == 0) {
        json_t *m = message_find(messages, id);
        if (m)
            append_to_string(m, "content", delta);
    } else if (strcmp(type, "TOOL_CALL_START") == 0) {
        if (call_find(messages, call, NULL) == NULL) /* no parentMessageId: a message of its own */
            json_array_append_new(
                messages, json_pack("{s:s, s:s, s:[{s:s, s:s, s:{s:O, s:s}}]}", "id", call, "role",
                                    "assistant", "toolCalls", "id", call, "type", "function",
                                    "function", "name", json_object_get(ev, "toolCallName"),
                                    "arguments", ""));
    } else if (strcmp(type, "TOOL_CALL_ARGS") == 0) {
        json_t *c = call_find(messages, call, NULL);
        if (c)
            append_to_string(json_object_get(c, "function"), "arguments", delta);
    } else if (strcmp(type, "TOOL_CALL_RESULT") == 0) {
        /* After the assistant message carrying the call and the tool
         * results that follow it, else at the end. */
        json_t *m = json_pack("{s:s, s:s, s:s, s:O}", "id", id, "toolCallId", call, "role", "tool",
                              "content", json_object_get(ev, "content"));
        size_t at;
        if (call_find(messages, call, &at) == NULL) {
            json_array_append_new(messages, m);
            return;
        }
        at++;
        while (at < json_array_size(messages) &&
               str_is(json_object_get(json_array_get(messages, at), "role"), "tool"))
            at++;
        json_array_insert_new(messages, at, m);
    }
}

/* Produces ev (stolen): appends it to t->out and applies it to the kept
 * messages. */
static void emit(struct agui_tr *t, json_t *ev)
{
    if (ev == NULL)
        return; /* jansson refused a string (not UTF-8): nothing to say */
    if (t->messages)
        messages_apply(t->messages, ev);
    json_array_append_new(t->out, ev);
}

static void close_text(struct agui_tr *t)
{
    if (t->text_id[0] == '\0')
        return;
    emit(t, json_pack("{s:s, s:s}", "type", "TEXT_MESSAGE_END", "messageId", t->text_id));
    t->text_id[0] = '\0';
}

static void close_reasoning(struct agui_tr *t)
{
    if (t->reasoning_id[0] == '\0')
        return;
    emit(t, json_pack("{s:s, s:s}", "type", "REASONING_MESSAGE_END", "messageId", t->reasoning_id));
    emit(t, json_pack("{s:s, s:s}", "type", "REASONING_END", "messageId", t->reasoning_id));
    t->reasoning_id[0] = '\0';
}

static void close_open(struct agui_tr *t)
{
    close_text(t);
    close_reasoning(t);
}

/* The start events of a text message (thought 0) or of a reasoning span
 * and its message (thought 1) with this id, opened or re-opened. */
static void emit_open(struct agui_tr *t, int thought, const char *id)
{
    if (thought) {
        emit(t, json_pack("{s:s, s:s}", "type", "REASONING_START", "messageId", id));
        emit(t, json_pack("{s:s, s:s, s:s}", "type", "REASONING_MESSAGE_START", "messageId", id,
                          "role", "reasoning"));
    } else {
        emit(t, json_pack("{s:s, s:s, s:s}", "type", "TEXT_MESSAGE_START", "messageId", id, "role",
                          "assistant"));
    }
}

/* Adds text to the open text (or reasoning) message, opening one with an
 * id made of the event's id and the part's index when none is open (and
 * closing the other kind: the client shows one stream of text at a time). */
static void add_text(struct agui_tr *t, int thought, json_t *text, const struct frame_parts *fp,
                     size_t part)
{
    char *open = thought ? t->reasoning_id : t->text_id;
    if (json_string_length(text) == 0)
        return;
    if (open[0] == '\0') {
        if (thought)
            close_text(t);
        else
            close_reasoning(t);
        snprintf(open, sizeof(t->text_id), "%s-%.*s-%zu", thought ? "reasoning" : "msg",
                 (int)fp->id_len, fp->id, part);
        emit_open(t, thought, open);
    }
    emit(t, json_pack("{s:s, s:s, s:O}", "type",
                      thought ? "REASONING_MESSAGE_CONTENT" : "TEXT_MESSAGE_CONTENT", "messageId",
                      open, "delta", text));
}

/* One JSON-Patch "add" per top-level key: the client's state then holds
 * what ADK's does. */
static void emit_state_delta(struct agui_tr *t, json_t *delta)
{
    json_t *ops = json_array();
    const char *key;
    json_t *value;
    json_object_foreach(delta, key, value) {
        struct buf path = {0};
        buf_append_str(&path, "/");
        for (const char *k = key; *k; k++) /* JSON Pointer escapes (RFC 6901) */
            buf_append_str(&path, *k == '~' ? "~0" : *k == '/' ? "~1" : (char[]){*k, '\0'});
        json_array_append_new(ops, json_pack("{s:s, s:s, s:O}", "op", "add", "path", path.data,
                                             "value", value));
        buf_free(&path);
    }
    emit(t, json_pack("{s:s, s:o}", "type", "STATE_DELTA", "delta", ops));
}

/* One ADK event (an agent.event's data), as the reference ADK middleware
 * translates it: partial text streams into an open message; the whole
 * event that follows partial ones is their aggregate, not repeated; a
 * whole event alone is a whole message; tool calls (once per id) and
 * results close what is open; errors are left to the run's end. */
static void translate_adk_event(struct agui_tr *t, json_t *ev, const struct frame_parts *fp)
{
    if (json_object_get(ev, "errorCode") || json_object_get(ev, "error"))
        return;
    int partial = json_is_true(json_object_get(ev, "partial"));
    size_t i;
    json_t *part;
    json_array_foreach(json_object_get(json_object_get(ev, "content"), "parts"), i, part) {
        json_t *text = json_object_get(part, "text");
        json_t *call = json_object_get(part, "functionCall");
        json_t *result = json_object_get(part, "functionResponse");
        char id[96];
        if (json_is_string(text)) {
            if (partial || !t->streamed)
                add_text(t, json_is_true(json_object_get(part, "thought")), text, fp, i);
        } else if (json_is_object(call)) {
            json_t *cid = json_object_get(call, "id");
            const char *call_id = id;
            snprintf(id, sizeof(id), "call-%.*s-%zu", (int)fp->id_len, fp->id, i);
            if (json_is_string(cid) && json_string_length(cid) > 0)
                call_id = json_string_value(cid); /* ADK's: the tool result names it */
            if (json_object_get(t->call_ids, call_id))
                continue;
            json_object_set_new(t->call_ids, call_id, json_true());
            close_open(t);
            json_t *name = json_object_get(call, "name");
            char *args = json_dumps(json_object_get(call, "args"), JSON_COMPACT | JSON_ENCODE_ANY);
            emit(t, json_pack("{s:s, s:s, s:s}", "type", "TOOL_CALL_START", "toolCallId", call_id,
                              "toolCallName", str_of(name)));
            emit(t, json_pack("{s:s, s:s, s:s}", "type", "TOOL_CALL_ARGS", "toolCallId", call_id,
                              "delta", args ? args : "{}"));
            emit(t, json_pack("{s:s, s:s}", "type", "TOOL_CALL_END", "toolCallId", call_id));
            free(args);
        } else if (json_is_object(result)) {
            close_open(t);
            char *content = json_dumps(json_object_get(result, "response"),
                                       JSON_COMPACT | JSON_ENCODE_ANY);
            snprintf(id, sizeof(id), "result-%.*s-%zu", (int)fp->id_len, fp->id, i);
            emit(t, json_pack("{s:s, s:s, s:s, s:s, s:s}", "type", "TOOL_CALL_RESULT", "messageId",
                              id, "toolCallId", str_of(json_object_get(result, "id")), "role",
                              "tool", "content", content ? content : "{}"));
            free(content);
        }
    }
    if (partial) {
        t->streamed = 1;
    } else {
        close_open(t);
        t->streamed = 0;
    }
    json_t *delta = json_object_get(json_object_get(ev, "actions"), "stateDelta");
    if (json_is_object(delta) && json_object_size(delta) > 0)
        emit_state_delta(t, delta);
}

/* The run's threadId/runId as an event's fields, with runcast's own under
 * metadata.runcast. Returns a new object. */
static json_t *run_event(struct agui_tr *t, const char *type, json_t *runcast)
{
    json_t *ev = json_pack("{s:s}", "type", type);
    json_object_update(ev, t->run);
    json_object_set_new(runcast, "run_id", json_string(t->run_id));
    json_object_set_new(ev, "metadata", json_pack("{s:o}", "runcast", runcast));
    return ev;
}

/* The run's first event: RUN_STARTED, and its input messages (the
 * event's "agui", agui_handle_post's) into the thread's messages. */
static void begin_run(struct agui_tr *t, const char *run_id, json_t *data)
{
    close_open(t);
    str_copy(t->run_id, sizeof(t->run_id), run_id);
    t->in_run = 1;
    t->ended = 0;
    t->streamed = 0;
    json_object_clear(t->call_ids);
    json_decref(t->terminal);
    t->terminal = NULL;
    json_t *input = json_object_get(data, "agui");
    json_t *thread = json_object_get(input, "threadId"), *run = json_object_get(input, "runId");
    json_decref(t->run);
    t->run = json_pack("{s:s, s:s}", "threadId",
                       json_is_string(thread) ? json_string_value(thread) : t->thread_id, "runId",
                       json_is_string(run) ? json_string_value(run) : run_id);
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(input, "messages"), i, m) {
        const char *id = json_string_value(json_object_get(m, "id"));
        if (t->messages && id && json_is_string(json_object_get(m, "role")) &&
            message_find(t->messages, id) == NULL)
            json_array_append(t->messages, m);
    }
    emit(t, run_event(t, "RUN_STARTED", json_object()));
}

/* The run's terminal event (type "run.completed", …; data its JSON):
 * closes what is open, then RUN_FINISHED or RUN_ERROR {message, code}. */
static void end_run(struct agui_tr *t, const char *type, json_t *data)
{
    close_open(t);
    const char *what = type + 4; /* after "run." */
    json_t *runcast = json_object();
    json_t *ev;
    if (strcmp(what, "completed") == 0) {
        json_object_set(runcast, "events", json_object_get(data, "events"));
        ev = run_event(t, "RUN_FINISHED", runcast);
    } else {
        json_t *message;
        const char *code = what, *key = NULL;
        if (strcmp(what, "failed") == 0) {
            json_t *c = json_object_get(data, "code"), *m = json_object_get(data, "message");
            code = json_is_string(c) ? json_string_value(c) : "failed";
            message = json_is_string(m) ? json_incref(m) : json_string("the run failed");
            json_object_set(runcast, "detail", json_object_get(data, "detail"));
            json_object_set(runcast, "status", json_object_get(data, "status"));
        } else if (strcmp(what, "superseded") == 0) {
            key = "by";
            message = json_sprintf("the run was superseded by run %s", str_of(json_object_get(data, key)));
        } else if (strcmp(what, "cancelled") == 0) {
            key = "reason";
            message = json_sprintf("the run was cancelled (%s)", str_of(json_object_get(data, key)));
        } else {
            key = "phase";
            message = json_sprintf("the run timed out (%s)", str_of(json_object_get(data, key)));
        }
        if (key)
            json_object_set(runcast, key, json_object_get(data, key));
        ev = run_event(t, "RUN_ERROR", runcast);
        json_object_del(ev, "threadId"); /* RUN_ERROR names no run */
        json_object_del(ev, "runId");
        json_object_set_new(ev, "message", message ? message : json_string("the run ended"));
        json_object_set_new(ev, "code", json_string(code));
    }
    json_decref(t->terminal);
    t->terminal = json_deep_copy(ev);
    t->ended = 1;
    emit(t, ev);
}

static int type_is(const struct frame_parts *fp, const char *name)
{
    return fp->type_len == strlen(name) && memcmp(fp->type, name, fp->type_len) == 0;
}

static int is_terminal(const struct frame_parts *fp)
{
    static const char *const terminal[] = {"run.completed", "run.failed", "run.cancelled",
                                           "run.timed_out", "run.superseded"};
    for (size_t i = 0; i < RC_ARRAY_SIZE(terminal); i++) {
        if (type_is(fp, terminal[i]))
            return 1;
    }
    return 0;
}

/* The JSON of a frame's data lines (joined with "\n" when there are
 * several), or NULL. Returns a new reference. */
static json_t *frame_json(const struct frame_parts *fp)
{
    struct buf b = {0};
    for (const char *p = fp->data; p < fp->data_end;) {
        const char *eol = memchr(p, '\n', (size_t)(fp->data_end - p));
        const char *v = p + 5 + (p[5] == ' ');
        if (b.len > 0)
            buf_append_str(&b, "\n");
        buf_append(&b, v, (size_t)(eol - v));
        p = eol + 1;
    }
    json_t *o = json_loadb(b.data ? b.data : "", b.len, 0, NULL);
    buf_free(&b);
    return o;
}

/* Feeds one log frame; its events are in t->out (emptied first). */
static void tr_feed(struct agui_tr *t, const struct frame_parts *fp)
{
    json_array_clear(t->out);
    snprintf(t->last_id, sizeof(t->last_id), "%.*s", (int)fp->id_len, fp->id);
    int agent_event = type_is(fp, "agent.event");
    if (!agent_event && (fp->type_len < 4 || memcmp(fp->type, "run.", 4) != 0))
        return; /* session.closed, stream.reset: the run's own end comes first */
    json_t *data = frame_json(fp);
    if (!json_is_object(data)) {
        json_decref(data);
        return;
    }
    if (agent_event) {
        if (t->in_run && !t->ended)
            translate_adk_event(t, data, fp);
        json_decref(data);
        return;
    }
    const char *run_id = json_string_value(json_object_get(data, "run_id"));
    if (run_id && strcmp(run_id, t->run_id) != 0) {
        if (t->in_run && !t->ended) {
            json_decref(data); /* a log has one run at a time: not ours to say */
            return;
        }
        begin_run(t, run_id, data);
    }
    if (run_id && is_terminal(fp) && !t->ended) {
        char type[32];
        snprintf(type, sizeof(type), "%.*s", (int)fp->type_len, fp->type);
        end_run(t, type, data);
    }
    json_decref(data);
}

/* Feeds every frame log retains (a snapshot's or a POST's look at the
 * thread); returns the newest seq fed (0: none). */
static uint64_t tr_feed_log(struct agui_tr *t, struct store_log *log)
{
    struct store_meta m;
    store_meta(log, &m);
    for (uint64_t seq = m.oldest_seq; seq <= m.newest_seq; seq++) {
        struct frame *f = store_read(log, seq);
        struct frame_parts fp;
        if (f && frame_parse(f, &fp) == 0)
            tr_feed(t, &fp);
    }
    json_array_clear(t->out);
    return m.newest_seq;
}

/* ---- the answer stream ---------------------------------------------------- */

/* One answer of POST …/agui or GET …/agui/{threadId}, from the request to
 * the end of the stream. */
struct agui_stream {
    struct conn *c;
    struct route_params p;     /* session: the threadId */
    int resume;
    void *counted;             /* the user's stream (quota) */
    struct frame *ping;        /* its heartbeat */
    struct agui_tr tr;
    /* POST: the run it follows, and its registration (store_done_cb). */
    char run_id[24];
    int begun, registered, status, following;
    json_t *input;             /* the RunAgentInput, until the run starts */
    /* Resume: frames up to snapshot_seq are in the preamble, which goes
     * out with the first frame the view sees. */
    uint64_t snapshot_seq;
    struct frame *preamble;
    int ended;
    int new_thread;            /* no node has the thread: nothing to load */
};

static void agui_stream_free(struct agui_stream *a)
{
    quota_subscriber_end(a->counted);
    if (a->ping)
        frame_release(a->ping);
    if (a->preamble)
        frame_release(a->preamble);
    json_decref(a->input);
    tr_free(&a->tr);
    free(a);
}

/* events as one frame of SSE events (LF framing: what AG-UI clients
 * parse), with ids `<id>.<n>`: the log event they come from and their
 * place among its events, so that ids increase within a stream. */
static struct frame *encode_events(json_t *events, const char *id, size_t id_len)
{
    struct buf b = {0};
    size_t i;
    json_t *ev;
    json_array_foreach(events, i, ev) {
        char *text = json_dumps(ev, JSON_COMPACT);
        buf_printf(&b, "id: %.*s.%zu\ndata: %s\n\n", (int)id_len, id, i + 1, text);
        free(text);
    }
    struct frame *f = frame_new(0, b.data, b.len);
    buf_free(&b);
    return f;
}

/* The hub view (hub.h): the log's frames as AG-UI events. A POST's stream
 * skips the log until its run's first event; a resume's sends its
 * preamble with the first frame and translates what follows the
 * snapshot. Either ends at the run's end. */
static struct frame *agui_view(void *arg, struct frame *f, int *end)
{
    struct agui_stream *a = arg;
    struct frame_parts fp;
    if (a->ended || frame_parse(f, &fp) < 0)
        return NULL;
    if (a->resume && f->seq <= a->snapshot_seq) {
        struct frame *pre = a->preamble;
        a->preamble = NULL;
        a->ended = a->tr.ended;
        *end = a->ended;
        return pre;
    }
    if (!a->resume && !a->following) {
        if (!type_is(&fp, "run.started") && !type_is(&fp, "run.queued") && !type_is(&fp, "run.failed"))
            return NULL;
        json_t *data = frame_json(&fp);
        const char *run_id = json_string_value(json_object_get(data, "run_id"));
        a->following = run_id && strcmp(run_id, a->run_id) == 0;
        json_decref(data);
        if (!a->following)
            return NULL;
    }
    tr_feed(&a->tr, &fp);
    if (json_array_size(a->tr.out) == 0)
        return NULL;
    struct frame *out = encode_events(a->tr.out, fp.id, fp.id_len);
    a->ended = a->tr.ended;
    *end = a->ended;
    return out;
}

static void agui_left(void *arg)
{
    agui_stream_free(arg);
}

/* Turns the request into the stream of session s. On failure answers it
 * and frees a. */
static void agui_stream_open(struct agui_stream *a, struct session *s)
{
    static const char ping[] = ": ping\n\n";
    a->ping = frame_new(0, ping, sizeof(ping) - 1);
    struct hub_subscribe_options opt = {
        .view = agui_view,
        .view_arg = a,
        .keepalive = a->ping,
        .on_leave = agui_left,
        .leave_arg = a,
    };
    int err = stream_open(a->c, s->hub, &opt);
    if (err == -ENOSPC)
        conn_respond_error(a->c, 503, "too_many_subscribers",
                           "the subscriber limit (--max-subscribers) is reached", "Retry-After: 1\r\n");
    if (err < 0)
        agui_stream_free(a);
}

/* Counts the user's new stream (--max-subscribers-per-user, this node's).
 * Returns 0, or -EDQUOT after answering 429. */
static int agui_count_stream(struct agui_stream *a)
{
    if (quota_subscriber_begin(a->p.user, &a->counted) == 0)
        return 0;
    conn_respond_error(a->c, 429, "too_many_user_subscribers",
                       "this user has --max-subscribers-per-user streams open", "Retry-After: 1\r\n");
    return -EDQUOT;
}

static struct agui_stream *agui_stream_new(struct conn *c, const struct route_params *p, int resume)
{
    struct agui_stream *a = xcalloc(1, sizeof(*a));
    a->c = c;
    a->p = *p;
    a->resume = resume;
    tr_init(&a->tr, p->session, 0);
    return a;
}

/* ---- POST …/agui: the run ------------------------------------------------- */

static void respond_invalid(struct conn *c, const char *message)
{
    conn_respond_error(c, 400, "invalid_input", message, NULL);
}

/* Checks a RunAgentInput. Returns NULL, or what is wrong (a literal). */
static const char *input_problem(json_t *in)
{
    json_t *thread = json_object_get(in, "threadId"), *run = json_object_get(in, "runId");
    json_t *messages = json_object_get(in, "messages");
    static const char *const lists[] = {"tools", "context"};
    if (!json_is_object(in))
        return "the body must be a JSON object (AG-UI's RunAgentInput)";
    if (!json_is_string(thread) || !str_is_path_param(json_string_value(thread), json_string_length(thread)))
        return "threadId must be 1 to 128 characters of [A-Za-z0-9_.-], and not . or .. "
               "(it names the runcast session)";
    if (!json_is_string(run) || json_string_length(run) == 0 || json_string_length(run) > AGUI_MAX_RUN_ID)
        return "runId must be a string of 1 to 128 bytes";
    if (!json_is_array(messages))
        return "messages must be an array";
    size_t i;
    json_t *m;
    json_array_foreach(messages, i, m) {
        if (!json_is_string(json_object_get(m, "id")) || json_string_length(json_object_get(m, "id")) == 0 ||
            !json_is_string(json_object_get(m, "role")))
            return "every message needs a non-empty string id and a role";
    }
    for (size_t k = 0; k < RC_ARRAY_SIZE(lists); k++) {
        json_t *v = json_object_get(in, lists[k]);
        if (v && !json_is_array(v) && !json_is_null(v))
            return "tools and context must be arrays";
    }
    json_t *state = json_object_get(in, "state");
    if (state && !json_is_object(state) && !json_is_null(state))
        return "state must be an object";
    return NULL;
}

/* The name of tool call id among messages' tool calls, or NULL. */
static const char *call_name(json_t *messages, const char *id)
{
    json_t *call = call_find(messages, id, NULL);
    return json_string_value(json_object_get(json_object_get(call, "function"), "name"));
}

/* A message's content as text: a string, or the text parts of an array
 * joined. Returns a new reference. */
static json_t *content_text(json_t *content)
{
    if (json_is_string(content))
        return json_incref(content);
    struct buf b = {0};
    size_t i;
    json_t *part;
    json_array_foreach(content, i, part) {
        json_t *text = json_object_get(part, "text");
        if (json_is_string(text))
            buf_append(&b, json_string_value(text), json_string_length(text));
    }
    json_t *s = json_stringn(b.data ? b.data : "", b.len);
    buf_free(&b);
    return s;
}

/* The ADK parts of the new messages: user text as text parts, tool
 * results as functionResponse parts (the call's name found among the
 * input's or the thread's messages). Returns a new array, or NULL with
 * *why set. */
static json_t *upstream_parts(json_t *fresh, json_t *input_messages, json_t *thread_messages,
                              const char **why)
{
    json_t *parts = json_array();
    size_t i;
    json_t *m;
    json_array_foreach(fresh, i, m) {
        const char *role = json_string_value(json_object_get(m, "role"));
        json_t *text = content_text(json_object_get(m, "content"));
        if (strcmp(role, "user") == 0 && json_string_length(text) > 0) {
            json_array_append_new(parts, json_pack("{s:O}", "text", text));
        } else if (strcmp(role, "tool") == 0) {
            const char *call = json_string_value(json_object_get(m, "toolCallId"));
            const char *name = call ? call_name(input_messages, call) : NULL;
            if (name == NULL && call)
                name = call_name(thread_messages, call);
            if (name == NULL) {
                *why = "a tool message's toolCallId names no tool call of the thread";
                json_decref(text);
                json_decref(parts);
                return NULL;
            }
            json_t *response = json_loads(json_string_value(text), JSON_DECODE_ANY, NULL);
            if (!json_is_object(response)) {
                json_t *value = response ? response : json_incref(text);
                response = json_pack("{s:o}", "result", value);
            }
            json_array_append_new(parts, json_pack("{s:{s:s, s:s, s:o}}", "functionResponse", "id",
                                                   call, "name", name, "response", response));
        }
        json_decref(text);
    }
    return parts;
}

/* The messages of the input the thread has not seen: those after the
 * last one whose id it has, or, when it has none of them, those after
 * the last assistant message. Returns a new array. */
static json_t *fresh_messages(json_t *messages, json_t *thread_messages)
{
    long last = -1;
    size_t i;
    json_t *m;
    json_array_foreach(messages, i, m) {
        if (message_find(thread_messages, json_string_value(json_object_get(m, "id"))))
            last = (long)i;
    }
    if (last < 0) {
        json_array_foreach(messages, i, m) {
            if (str_is(json_object_get(m, "role"), "assistant"))
                last = (long)i;
        }
    }
    json_t *fresh = json_array();
    for (size_t k = (size_t)(last + 1); k < json_array_size(messages); k++)
        json_array_append(fresh, json_array_get(messages, k));
    return fresh;
}

/* tools, context and forwardedProps, when given, for the upstream's
 * customMetadata. Returns a new reference or NULL. */
static json_t *custom_metadata(json_t *in)
{
    static const char *const keys[] = {"tools", "context", "forwardedProps"};
    json_t *agui = json_object();
    for (size_t i = 0; i < RC_ARRAY_SIZE(keys); i++) {
        json_t *v = json_object_get(in, keys[i]);
        if (v && !json_is_null(v) && !(json_is_array(v) && json_array_size(v) == 0) &&
            !(json_is_object(v) && json_object_size(v) == 0))
            json_object_set(agui, keys[i], v);
    }
    if (json_object_size(agui) == 0) {
        json_decref(agui);
        return NULL;
    }
    return json_pack("{s:o}", "agui", agui);
}

/* The thread's session once a store step ended with status; NULL after
 * answering (the store is unavailable, or the session went away) and
 * freeing a. */
static struct session *agui_session(struct agui_stream *a, int status)
{
    struct session *s = session_find(a->p.app, a->p.user, a->p.session);
    if (status >= 0 && s != NULL)
        return s;
    api_respond_refused_run(a->c, status < 0 ? status : -ENOENT);
    agui_stream_free(a);
    return NULL;
}

static void agui_follow(void *arg, int status)
{
    struct agui_stream *a = arg;
    struct session *s = agui_session(a, status);
    if (s == NULL)
        return;
    agui_stream_open(a, s);
}

/* The store registered the run (store_done_cb): once the session's log
 * can place subscribers (a Redis copy may be loading), follow it. */
static void agui_registered(void *arg, int status)
{
    struct agui_stream *a = arg;
    a->status = status;
    a->registered = 1;
    if (!a->begun)
        return; /* memory mode: agui_start_run follows once it has the run's id */
    api_when_placeable(&a->p, status, agui_follow, a);
}

/* Makes the run's input from the RunAgentInput and the thread's messages
 * (an empty array for a thread runcast does not have): what the thread
 * has not seen goes upstream. Returns 0, or -EINVAL after answering 400. */
static int make_run_input(struct agui_stream *a, json_t *thread_messages, struct run_input *in)
{
    json_t *messages = json_object_get(a->input, "messages");
    json_t *fresh = fresh_messages(messages, thread_messages);
    const char *why = NULL;
    json_t *parts = upstream_parts(fresh, messages, thread_messages, &why);
    if (parts == NULL || json_array_size(parts) == 0) {
        if (parts)
            conn_respond_error(a->c, 400, "no_new_message",
                               "the input has no user or tool message after the last message this "
                               "thread already has",
                               NULL);
        else
            respond_invalid(a->c, why);
        json_decref(parts);
        json_decref(fresh);
        return -EINVAL;
    }
    json_t *state = json_object_get(a->input, "state");
    *in = (struct run_input){
        .new_message = json_pack("{s:s, s:o}", "role", "user", "parts", parts),
        .state_delta = json_object_size(state) > 0 ? json_incref(state) : NULL,
        .custom_metadata = custom_metadata(a->input),
        .first_event = json_pack("{s:{s:O, s:O, s:o}}", "agui", "threadId",
                                 json_object_get(a->input, "threadId"), "runId",
                                 json_object_get(a->input, "runId"), "messages", fresh),
        .streaming = 1,
    };
    return 0;
}

/* Starts the run of in on s and follows it. */
static void agui_start_run(struct agui_stream *a, struct session *s, struct run_input *in)
{
    json_decref(a->input);
    a->input = NULL;
    struct run *r = session_start_run(s, in, agui_registered, a);
    str_copy(a->run_id, sizeof(a->run_id), r->id);
    a->begun = 1;
    if (a->registered)
        agui_registered(a, a->status);
}

/* The thread's log is loaded (store_ready): its messages say what is new
 * in the input. */
static void agui_thread_ready(void *arg, int status)
{
    struct agui_stream *a = arg;
    struct session *s = agui_session(a, status);
    if (s == NULL)
        return;
    struct agui_tr thread;
    struct run_input in;
    tr_init(&thread, a->p.session, 1);
    tr_feed_log(&thread, s->log);
    int err = make_run_input(a, thread.messages, &in);
    tr_free(&thread);
    if (err < 0)
        agui_stream_free(a);
    else
        agui_start_run(a, s, &in);
}

/* The request goes on once it is known whether the thread exists. */
static void agui_post_continue(struct agui_stream *a)
{
    struct session *s;
    struct run_input in;
    if (a->new_thread) { /* a refused input creates nothing */
        json_t *none = json_array();
        int err = make_run_input(a, none, &in);
        json_decref(none);
        if (err < 0 || (s = api_run_session(a->c, &a->p)) == NULL) {
            if (err == 0)
                run_input_free(&in);
            agui_stream_free(a);
            return;
        }
        agui_start_run(a, s, &in);
        return;
    }
    if ((s = api_run_session(a->c, &a->p)) == NULL) {
        agui_stream_free(a);
        return;
    }
    if (store_ready(s->log, NULL, agui_thread_ready, a))
        agui_thread_ready(a, 0);
}

static void agui_resume_continue(struct agui_stream *a);

/* Redis mode, a thread this node has no copy of: does the cluster have
 * it (store_redis_status's answer)? */
static void agui_thread_known(void *arg, int err, json_t *result)
{
    struct agui_stream *a = arg;
    RC_UNUSED(result);
    if (err < 0 && err != -ENOENT) {
        api_respond_refused_run(a->c, err);
        agui_stream_free(a);
        return;
    }
    a->new_thread = err == -ENOENT;
    if (a->resume)
        agui_resume_continue(a);
    else
        agui_post_continue(a);
}

/* Finds out whether the thread exists anywhere, then goes on. */
static void agui_find_thread(struct agui_stream *a)
{
    int here = session_find(a->p.app, a->p.user, a->p.session) != NULL;
    if (!here && store_is_shared())
        store_redis_status(a->p.app, a->p.user, a->p.session, agui_thread_known, a);
    else
        agui_thread_known(a, here ? 0 : -ENOENT, NULL);
}

void agui_handle_post(struct conn *c, const struct http_request *req, const struct route_params *p)
{
    json_t *input = api_json_body(c, req);
    if (input == NULL)
        return;
    const char *why = input_problem(input);
    if (why) {
        respond_invalid(c, why);
        json_decref(input);
        return;
    }
    struct route_params tp = *p;
    str_copy(tp.session, sizeof(tp.session), json_string_value(json_object_get(input, "threadId")));
    struct agui_stream *a = agui_stream_new(c, &tp, 0);
    a->input = input;
    if (agui_count_stream(a) < 0)
        agui_stream_free(a);
    else
        agui_find_thread(a);
}

/* ---- GET …/agui/{threadId}: resume ---------------------------------------- */

/* The resume's first events: RUN_STARTED of the thread's latest run, the
 * snapshot, a re-opening start for what is open, and the run's end when
 * it has ended. */
static struct frame *resume_preamble(struct agui_tr *t)
{
    json_t *events = json_array();
    json_array_append_new(events, run_event(t, "RUN_STARTED", json_object()));
    json_array_append_new(events, json_pack("{s:s, s:O}", "type", "MESSAGES_SNAPSHOT", "messages",
                                            t->messages));
    json_array_clear(t->out);
    if (t->reasoning_id[0])
        emit_open(t, 1, t->reasoning_id);
    if (t->text_id[0])
        emit_open(t, 0, t->text_id);
    json_array_extend(events, t->out);
    json_array_clear(t->out);
    if (t->ended)
        json_array_append(events, t->terminal);
    struct frame *f = encode_events(events, t->last_id, strlen(t->last_id));
    json_decref(events);
    return f;
}

static void agui_resume_ready(void *arg, int status)
{
    struct agui_stream *a = arg;
    struct session *s = agui_session(a, status);
    if (s == NULL)
        return;
    json_decref(a->tr.messages);
    a->tr.messages = json_array();
    a->snapshot_seq = tr_feed_log(&a->tr, s->log);
    if (!a->tr.in_run) { /* nothing of a run is retained */
        conn_respond(a->c, 204, NULL, NULL, NULL, 0);
        agui_stream_free(a);
        return;
    }
    a->preamble = resume_preamble(&a->tr);
    json_decref(a->tr.messages); /* the live tail needs none */
    a->tr.messages = NULL;
    agui_stream_open(a, s);
}

static void agui_resume_continue(struct agui_stream *a)
{
    struct session *s;
    if (a->new_thread) {
        conn_respond(a->c, 204, NULL, NULL, NULL, 0); /* creates nothing */
        agui_stream_free(a);
        return;
    }
    if ((s = api_stream_session(a->c, &a->p)) == NULL) {
        agui_stream_free(a);
        return;
    }
    if (store_ready(s->log, NULL, agui_resume_ready, a))
        agui_resume_ready(a, 0);
}

void agui_handle_resume(struct conn *c, const struct route_params *p)
{
    struct agui_stream *a = agui_stream_new(c, p, 1);
    if (agui_count_stream(a) < 0)
        agui_stream_free(a);
    else
        agui_find_thread(a);
}
