/* fuzz_agui: a thread's log → AG-UI events, snapshots and resumes; a
 * RunAgentInput → what goes upstream.
 *
 * The input is lines. The first is a RunAgentInput (any bytes). Each other
 * line is one log frame, as runcast's stores encode them: 'a' + an
 * agent.event's data (the upstream's JSON, any bytes); 's'/'q' + a digit
 * (the run) + an optional JSON "agui" record: the run's first event;
 * 'c', 'f', 'x', 'p', 't' + a digit + text: run.completed, failed (the
 * text is its code), cancelled, superseded, timed_out; anything else:
 * session.closed.
 *
 * Properties: for every point k of the log at which a client could resume
 * (runcast retains a run), the resume's stream (RUN_STARTED, the snapshot,
 * re-opening starts, then the events of the frames after k until the run
 * ends) passes the rules of @ag-ui/client's verifier (first RUN_STARTED;
 * CONTENT/ARGS/END only inside their START; no START of an open id;
 * nothing open at RUN_FINISHED, and, runcast's own rule, at RUN_ERROR;
 * nothing after the end), and the messages a client holds at its end (the
 * snapshot, then each event applied) equal the snapshot of a client that
 * never left, at the same point. Every message has a string id and role.
 * A valid input becomes one ADK newMessage whose parts are non-empty text
 * or functionResponse {id, name: strings, response: an object}. No crash,
 * no leak.
 */
#include <inttypes.h>
#include <stdint.h>

#include "../src/agui.c"
#include "sse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_FRAMES 48

/* One line as a log frame (seq from 1). NULL for an empty line. */
static struct frame *line_frame(const char *p, size_t n, uint64_t seq)
{
    static const char *const ends[] = {"c", "run.completed", "f", "run.failed", "x",
                                       "run.cancelled", "p", "run.superseded", "t", "run.timed_out"};
    if (n == 0)
        return NULL;
    char id[32];
    snprintf(id, sizeof(id), "0000abcd-%" PRIu64, seq);
    struct buf b = {0};
    const char *type = "session.closed";
    json_t *o = NULL;
    char run[3] = {'r', (char)('0' + (n > 1 ? (unsigned char)p[1] % 10 : 0)), '\0'};
    if (p[0] == 'a') {
        sse_encode(&b, id, "agent.event", p + 1, n - 1);
    } else if (p[0] == 's' || p[0] == 'q') {
        type = p[0] == 's' ? "run.started" : "run.queued";
        o = json_pack("{s:s}", "run_id", run);
        json_t *agui = n > 2 ? json_loadb(p + 2, n - 2, 0, NULL) : NULL;
        if (agui)
            json_object_set_new(o, "agui", agui);
    } else {
        for (size_t i = 0; i < RC_ARRAY_SIZE(ends); i += 2) {
            if (p[0] == ends[i][0])
                type = ends[i + 1];
        }
        json_t *text = json_stringn(n > 2 ? p + 2 : "", n > 2 ? n - 2 : 0);
        o = json_pack("{s:s, s:O, s:O, s:O, s:O, s:O, s:i}", "run_id", run, "code", text ? text : json_null(),
                      "message", text ? text : json_null(), "reason", text ? text : json_null(),
                      "by", text ? text : json_null(), "phase", text ? text : json_null(),
                      "events", 1);
        json_decref(text);
    }
    if (o) {
        char *j = json_dumps(o, JSON_COMPACT);
        sse_encode(&b, id, type, j, strlen(j));
        free(j);
        json_decref(o);
    }
    struct frame *f = frame_new(seq, b.data, b.len);
    buf_free(&b);
    return f;
}

static int open_has(json_t *set, json_t *ev, const char *key)
{
    return json_object_get(set, str_of(json_object_get(ev, key))) != NULL;
}

/* Checks a stream's events against the verifier's rules; aborts on a
 * violation. */
static void verify(json_t *events)
{
    json_t *text = json_object(), *span = json_object(), *reasoning = json_object(),
           *tools = json_object();
    int ended = 0;
    size_t i;
    json_t *ev;
    json_array_foreach(events, i, ev) {
        const char *type = str_of(json_object_get(ev, "type"));
        json_t *set = NULL;
        const char *key = "messageId";
        int opens = 0, closes = 0;
        if (ended || (i == 0) != (strcmp(type, "RUN_STARTED") == 0))
            abort();
        if (strncmp(type, "TEXT_MESSAGE_", 13) == 0) {
            set = text;
            opens = strcmp(type + 13, "START") == 0;
            closes = strcmp(type + 13, "END") == 0;
        } else if (strncmp(type, "REASONING_MESSAGE_", 18) == 0) {
            set = reasoning;
            opens = strcmp(type + 18, "START") == 0;
            closes = strcmp(type + 18, "END") == 0;
        } else if (strcmp(type, "REASONING_START") == 0 || strcmp(type, "REASONING_END") == 0) {
            set = span;
            opens = type[10] == 'S';
            closes = !opens;
        } else if (strncmp(type, "TOOL_CALL_", 10) == 0 && strcmp(type, "TOOL_CALL_RESULT") != 0) {
            set = tools;
            key = "toolCallId";
            opens = strcmp(type + 10, "START") == 0;
            closes = strcmp(type + 10, "END") == 0;
        } else if (strcmp(type, "RUN_FINISHED") == 0 || strcmp(type, "RUN_ERROR") == 0) {
            if (json_object_size(text) + json_object_size(span) + json_object_size(reasoning) +
                    json_object_size(tools) > 0)
                abort();
            ended = 1;
        }
        if (set == NULL)
            continue;
        if (opens == open_has(set, ev, key))
            abort(); /* a START of an open id, or CONTENT/ARGS/END of none */
        if (opens)
            json_object_set_new(set, str_of(json_object_get(ev, key)), json_true());
        if (closes)
            json_object_del(set, str_of(json_object_get(ev, key)));
    }
    json_decref(text);
    json_decref(span);
    json_decref(reasoning);
    json_decref(tools);
}

static void check_messages(json_t *messages)
{
    size_t i;
    json_t *m;
    json_array_foreach(messages, i, m) {
        if (!json_is_string(json_object_get(m, "id")) || !json_is_string(json_object_get(m, "role")))
            abort();
    }
}

/* The events of a frame produced by resume_preamble(), parsed back. */
static json_t *preamble_events(struct agui_tr *t)
{
    struct frame *f = resume_preamble(t);
    json_t *events = json_array();
    const char *p = f->data, *end = f->data + f->len;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (eol - p > 6 && memcmp(p, "data: ", 6) == 0)
            json_array_append_new(events, json_loadb(p + 6, (size_t)(eol - p - 6), 0, NULL));
        p = eol + 1;
    }
    frame_release(f);
    return events;
}

/* Feeds one frame to t (its events, if any, in t->out). */
static void feed(struct agui_tr *t, struct frame *f)
{
    struct frame_parts fp;
    json_array_clear(t->out);
    if (frame_parse(f, &fp) == 0)
        tr_feed(t, &fp);
}

static void check_resumes(struct frame **frames, size_t n)
{
    json_t *snapshots[MAX_FRAMES + 1];
    struct agui_tr full;
    tr_init(&full, "th", 1);
    snapshots[0] = json_array();
    for (size_t j = 0; j < n; j++) {
        feed(&full, frames[j]);
        snapshots[j + 1] = json_deep_copy(full.messages);
    }
    check_messages(full.messages);
    tr_free(&full);
    for (size_t k = 0; k <= n; k++) {
        struct agui_tr t;
        tr_init(&t, "th", 1);
        for (size_t j = 0; j < k; j++)
            feed(&t, frames[j]);
        if (!t.in_run) {
            tr_free(&t);
            continue; /* 204 */
        }
        json_t *stream = preamble_events(&t);
        json_t *held = json_deep_copy(t.messages);
        size_t stop = k;
        while (!t.ended && stop < n) {
            feed(&t, frames[stop++]);
            size_t i;
            json_t *ev;
            json_array_foreach(t.out, i, ev) {
                messages_apply(held, ev);
                json_array_append(stream, ev);
            }
        }
        verify(stream);
        if (!json_equal(held, snapshots[stop]))
            abort(); /* the resumed client holds what one that never left holds */
        json_decref(stream);
        json_decref(held);
        tr_free(&t);
    }
    for (size_t j = 0; j <= n; j++)
        json_decref(snapshots[j]);
}

static void check_input(json_t *input, struct frame **frames, size_t n)
{
    if (input == NULL || input_problem(input) != NULL)
        return;
    struct agui_tr t;
    tr_init(&t, "th", 1);
    for (size_t j = 0; j < n; j++)
        feed(&t, frames[j]);
    json_t *messages = json_object_get(input, "messages");
    json_t *fresh = fresh_messages(messages, t.messages);
    const char *why = NULL;
    json_t *parts = upstream_parts(fresh, messages, t.messages, &why);
    if ((parts == NULL) != (why != NULL))
        abort();
    size_t i;
    json_t *part;
    json_array_foreach(parts, i, part) {
        json_t *text = json_object_get(part, "text"), *fr = json_object_get(part, "functionResponse");
        if (text ? !json_is_string(text) || json_string_length(text) == 0
                 : !json_is_string(json_object_get(fr, "id")) ||
                       !json_is_string(json_object_get(fr, "name")) ||
                       !json_is_object(json_object_get(fr, "response")))
            abort();
    }
    json_decref(parts);
    json_decref(fresh);
    tr_free(&t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data, *end = p + size;
    const char *eol = memchr(p, '\n', size);
    json_t *input = json_loadb(p, eol ? (size_t)(eol - p) : size, 0, NULL);
    struct frame *frames[MAX_FRAMES];
    size_t n = 0;
    for (p = eol ? eol + 1 : end; p < end && n < MAX_FRAMES;) {
        const char *e = memchr(p, '\n', (size_t)(end - p));
        size_t len = e ? (size_t)(e - p) : (size_t)(end - p);
        struct frame *f = line_frame(p, len, n + 1);
        if (f)
            frames[n++] = f;
        p += len + 1;
    }
    check_resumes(frames, n);
    check_input(input, frames, n);
    for (size_t j = 0; j < n; j++)
        frame_release(frames[j]);
    json_decref(input);
    return 0;
}
