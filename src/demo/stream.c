/* stream.c: one accepted /run_sse call, from its answer to its last frame.
 *
 * A run answers at once or after !delay (a deferred answer, see server.h),
 * either with a !status refusal or with a chunked stream's head; then its
 * timer paces the frames (demo_run_pump) by absolute due times until the
 * body ends, the agent cuts it (!cut), or the client goes away.
 *
 *   DELAYING --timer--> (status answer: released)
 *   DELAYING --timer--> STREAMING | HANGING      (head sent)
 *   STREAMING --last frame--> released (end, or cut)
 *   any --conn closed / demo_runs_stop--> released (OVER)
 */
#include "demo_internal.h"

#include <stdio.h>
#include <stdlib.h>

enum demo_run_phase {
    DEMO_RUN_DELAYING,  /* !delay: no answer yet */
    DEMO_RUN_STREAMING, /* head sent, the timer paces the frames */
    DEMO_RUN_HANGING,   /* !hang: head sent, nothing more */
    DEMO_RUN_OVER,      /* released: waiting for the timer's and the conn's close */
};

/* What the run sends after its regular events (then the !tool call, if
 * any). */
enum demo_run_tail { DEMO_TAIL_NONE = 0, DEMO_TAIL_AGGREGATED, DEMO_TAIL_ERROR };

/* What an event is: a partial chunk, a whole event (the !tool call), or the
 * aggregated one (turnComplete, finishReason, usageMetadata). */
enum demo_event_kind { DEMO_EVENT_PARTIAL, DEMO_EVENT_WHOLE, DEMO_EVENT_AGGREGATED };

#define DEMO_NO_FRAME UINT64_MAX /* struct demo_run.state_frame: no frame carries it */

/* One accepted /run_sse call that answers later than the request callback
 * or streams. Owned by demo->runs until released; freed once both its timer
 * is closed and its conn no longer refers to it (conn == NULL): after
 * conn_stream_end(), after the stream's close callback, or at once when no
 * stream was begun. */
struct demo_run {
    struct list node;
    struct demo *demo;
    struct conn *conn;
    uv_timer_t timer;
    int timer_closed;
    int stream_begun;   /* the conn will call demo_run_on_conn_close */
    enum demo_run_phase phase;
    uint64_t call_id;
    struct demo_directives dir;
    int status_answer;  /* !status to answer after !delay; 0: stream */
    char *echo;         /* "Echo: <words>": the words are its last words_len bytes */
    size_t echo_len, words_len;
    size_t echo_pos;    /* start of the next word to stream */
    uint64_t prompt_words, echo_words;
    char thought[48];   /* !think: "thinking about N words"; "" without */
    int thought_first;  /* regular event 0 is the thought (!think, streaming) */
    uint64_t regular;   /* events before the tail */
    enum demo_run_tail tail;
    int tool;           /* the !tool call follows the tail */
    uint64_t state_frame; /* the frame with !state's delta; DEMO_NO_FRAME: none */
    uint64_t next_frame; /* index of the next planned frame (regular, tail, call) */
    uint64_t frames_sent;
    uint64_t start_ns;  /* when frame 0 is due (uv_hrtime) */
    double interval_ns;
    char invocation_id[24];
    struct buf scratch; /* !events text */
};

static void demo_run_on_timer(uv_timer_t *timer);

static struct demo_call *demo_run_call(const struct demo_run *run)
{
    return demo_call_get(&run->demo->calls, run->call_id);
}

/* Frees run once its timer is closed and its conn let go; else nothing. */
static void demo_run_maybe_free(struct demo_run *run)
{
    if (!run->timer_closed || run->conn != NULL)
        return;
    demo_directives_free(&run->dir);
    free(run->echo);
    buf_free(&run->scratch);
    free(run);
}

static void demo_run_on_timer_closed(uv_handle_t *handle)
{
    struct demo_run *run = handle->data;
    run->timer_closed = 1;
    demo_run_maybe_free(run);
}

/* Stops the run for good: no frame is sent after this. The memory goes when
 * the timer is closed and the conn lets go (see struct demo_run). Safe to
 * call twice and from any callback. */
static void demo_run_release(struct demo_run *run)
{
    if (run->phase == DEMO_RUN_OVER)
        return;
    run->phase = DEMO_RUN_OVER;
    list_remove(&run->node);
    uv_timer_stop(&run->timer);
    uv_close((uv_handle_t *)&run->timer, demo_run_on_timer_closed);
}

/* The stream's connection went away (peer, write error, our own cut,
 * server_close). After this returns the conn is dead. */
static void demo_run_on_conn_close(struct conn *c, void *arg)
{
    struct demo_run *run = arg;
    run->conn = NULL;
    demo_call_set_state(demo_run_call(run), DEMO_CALL_CLIENT_GONE);
    demo_run_release(run);
    demo_run_maybe_free(run);
}

void demo_runs_stop(struct demo *d)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &d->runs) {
        struct demo_run *run = container_of(pos, struct demo_run, node);
        if (!run->stream_begun)
            run->conn = NULL; /* never answered: server_close() takes the conn */
        demo_call_set_state(demo_run_call(run), DEMO_CALL_CLIENT_GONE);
        demo_run_release(run);
        demo_run_maybe_free(run);
    }
}

/* ---- frames --------------------------------------------------------------- */

static int demo_json_buf_append(const char *data, size_t size, void *arg)
{
    buf_append(arg, data, size);
    return 0;
}

/* Appends `data: <json>\n\n`. */
static void demo_frame_append_json(struct buf *out, json_t *obj)
{
    buf_append(out, "data: ", 6);
    json_dump_callback(obj, demo_json_buf_append, out, JSON_COMPACT | JSON_REAL_PRECISION(16));
    buf_append(out, "\n\n", 2);
}

/* {"text": text}. Caller owns it. */
static json_t *demo_text_part(const char *text, size_t len)
{
    json_t *str = json_stringn(text, len);
    return json_pack("{s:o}", "text", str ? str : json_string(""));
}

/* !think's {"text": "thinking about N words", "thought": true}. Caller owns it. */
static json_t *demo_run_thought_part(const struct demo_run *run)
{
    return json_pack("{s:s,s:b}", "text", run->thought, "thought", 1);
}

/* The echoed words (the echo without "Echo: ") as a JSON string. Caller owns
 * it. */
static json_t *demo_run_words_string(const struct demo_run *run)
{
    json_t *str = json_stringn(run->echo + run->echo_len - run->words_len, run->words_len);
    return str ? str : json_string("");
}

/* !tool's {"functionCall": {"id", "name", "args": {"text": <words>}}}. Caller
 * owns it. */
static json_t *demo_run_call_part(struct demo_run *run)
{
    char id[24];
    snprintf(id, sizeof(id), "call-%016llx",
             (unsigned long long)demo_rng_next(&run->demo->rng));
    return json_pack("{s:{s:s,s:s,s:{s:o}}}", "functionCall", "id", id, "name", run->dir.tool,
                     "args", "text", demo_run_words_string(run));
}

/* Appends one ADK Event frame with these content parts (stolen). The frame
 * the plan chose for it carries !state's delta. */
static void demo_run_append_event(struct demo_run *run, struct buf *out, json_t *parts,
                                  enum demo_event_kind kind)
{
    uint64_t now_us = demo_wall_us();
    char id[17];
    snprintf(id, sizeof(id), "%016llx", (unsigned long long)demo_rng_next(&run->demo->rng));
    json_t *ev = json_pack("{s:s,s:s,s:s,s:f,s:{s:s,s:o},s:b}", "id", id,
                           "invocationId", run->invocation_id, "author", "demo_agent",
                           "timestamp", (double)now_us / 1e6, "content", "role", "model",
                           "parts", parts, "partial", kind == DEMO_EVENT_PARTIAL);
    if (kind == DEMO_EVENT_AGGREGATED) {
        json_object_set_new(ev, "turnComplete", json_true());
        json_object_set_new(ev, "finishReason", json_string("STOP"));
        json_object_set_new(ev, "usageMetadata",
                            json_pack("{s:I,s:I,s:I}",
                                      "promptTokenCount", (json_int_t)run->prompt_words,
                                      "candidatesTokenCount", (json_int_t)run->echo_words,
                                      "totalTokenCount",
                                      (json_int_t)(run->prompt_words + run->echo_words)));
    }
    json_t *delta = json_object();
    if (run->next_frame == run->state_frame)
        json_object_set_new(delta, run->dir.state_key, demo_run_words_string(run));
    json_object_set_new(ev, "actions", json_pack("{s:o,s:{},s:{}}", "stateDelta", delta,
                                                 "artifactDelta", "requestedAuthConfigs"));
    json_object_set_new(ev, "customMetadata",
                        json_pack("{s:I,s:I}", "seq", (json_int_t)run->frames_sent,
                                  "sent_at_us", (json_int_t)now_us));
    demo_frame_append_json(out, ev);
    json_decref(ev);
}

/* Appends the ADK 2.x error frame for !error. */
static void demo_run_append_error(struct demo_run *run, struct buf *out)
{
    json_t *msg = json_string(run->dir.error);
    if (msg == NULL)
        msg = json_string("");
    json_t *frame = json_pack("{s:O,s:{s:s,s:O,s:f}}", "error", msg,
                              "error_details", "error_type", "ValueError",
                              "error_message", msg,
                              "timestamp", (double)demo_wall_us() / 1e6);
    json_decref(msg);
    demo_frame_append_json(out, frame);
    json_decref(frame);
}

/* The text of !events event i: "event <i>" padded with 'x', or cut, to
 * exactly !bytes bytes, in run->scratch. */
static void demo_run_events_text(struct demo_run *run, uint64_t i)
{
    static const char xs[] = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
    struct buf *t = &run->scratch;
    buf_reset(t);
    buf_printf(t, "event %llu", (unsigned long long)i);
    if (t->len > run->dir.bytes) {
        t->len = run->dir.bytes;
        t->data[t->len] = '\0';
    }
    while (t->len < run->dir.bytes) {
        size_t n = run->dir.bytes - t->len;
        buf_append(t, xs, n < sizeof(xs) - 1 ? n : sizeof(xs) - 1);
    }
}

/* Appends planned frame run->next_frame (an !events event, the thought, a
 * word, the tail, or the !tool call) and advances. */
static void demo_run_append_next(struct demo_run *run, struct buf *out)
{
    uint64_t i = run->next_frame;
    if (i < run->regular && run->dir.has_events) {
        demo_run_events_text(run, i);
        demo_run_append_event(run, out, json_pack("[o]", demo_text_part(run->scratch.data,
                                                                        run->scratch.len)),
                              DEMO_EVENT_PARTIAL);
    } else if (i == 0 && run->thought_first) {
        demo_run_append_event(run, out, json_pack("[o]", demo_run_thought_part(run)),
                              DEMO_EVENT_PARTIAL);
    } else if (i < run->regular) {
        /* The space before a word belongs to that word. */
        size_t start = run->echo_pos, end = start + 1;
        while (end < run->echo_len && run->echo[end] != ' ')
            end++;
        demo_run_append_event(run, out,
                              json_pack("[o]", demo_text_part(run->echo + start, end - start)),
                              DEMO_EVENT_PARTIAL);
        run->echo_pos = end;
    } else if (i == run->regular && run->tail == DEMO_TAIL_AGGREGATED) {
        json_t *parts = json_array();
        if (run->thought[0])
            json_array_append_new(parts, demo_run_thought_part(run));
        json_array_append_new(parts, demo_text_part(run->echo, run->echo_len));
        demo_run_append_event(run, out, parts, DEMO_EVENT_AGGREGATED);
    } else if (i == run->regular && run->tail == DEMO_TAIL_ERROR) {
        demo_run_append_error(run, out);
    } else {
        demo_run_append_event(run, out, json_pack("[o]", demo_run_call_part(run)),
                              DEMO_EVENT_WHOLE);
    }
    run->next_frame++;
    run->frames_sent++;
}

static uint64_t demo_run_frames_planned(const struct demo_run *run)
{
    return run->regular + (run->tail != DEMO_TAIL_NONE) + run->tool;
}

/* When planned frame i is due (uv_hrtime ns). Absolute, so a late tick does
 * not push every later frame back; the tail goes right after the last
 * regular event. */
static uint64_t demo_run_due_ns(const struct demo_run *run, uint64_t i)
{
    if (i >= run->regular)
        i = run->regular ? run->regular - 1 : 0;
    return run->start_ns + (uint64_t)((double)i * run->interval_ns);
}

/* Rewrites every "sent_at_us" in out with the time now, so the stamp says
 * when the event was handed to the network rather than when jansson began
 * building it (the benchmarks measure delivery latency from it). A number
 * of another width is left as it is. */
static void demo_restamp_sent_at(struct buf *out)
{
    static const char key[] = "\"sent_at_us\":";
    char now[24];
    int n = snprintf(now, sizeof(now), "%llu", (unsigned long long)demo_wall_us());
    char *p = out->data, *end = out->data + out->len;
    while ((p = memmem(p, (size_t)(end - p), key, sizeof(key) - 1)) != NULL) {
        p += sizeof(key) - 1;
        char *digits = p;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
        if (p - digits == n)
            memcpy(digits, now, (size_t)n);
    }
}

/* ---- pacing ---------------------------------------------------------------- */

/* Writes out (if anything) to the stream as one chunk. Returns 0, or -1 when
 * the conn went away meanwhile (run->conn is then NULL or closing). */
static int demo_run_flush(struct demo_run *run, struct buf *out)
{
    if (out->len == 0)
        return 0;
    demo_restamp_sent_at(out);
    int rc = conn_stream_write_copy(run->conn, out->data, out->len);
    buf_reset(out);
    return rc < 0 || run->conn == NULL ? -1 : 0;
}

/* Normal end of the body (last chunk); the conn goes back to reading. */
static void demo_run_end(struct demo_run *run)
{
    struct conn *c = run->conn;
    /* An empty write only checks the conn: when it is already closing (the
     * peer left, its close callback not yet delivered), ending the stream
     * would not be certain to cancel that callback, so let it come. */
    if (conn_stream_write_copy(c, "", 0) != 0) {
        demo_run_release(run);
        return;
    }
    run->conn = NULL; /* conn_stream_end() never calls the close callback */
    demo_call_set_state(demo_run_call(run), DEMO_CALL_FINISHED);
    demo_run_release(run);
    conn_stream_end(c);
}

/* !cut: close without the last chunk. Queued frames are flushed first (a
 * graceful close), so the client sees exactly the frames before the cut and
 * then an early EOF. run->conn stays set until the close callback. */
static void demo_run_cut(struct demo_run *run)
{
    demo_call_set_state(demo_run_call(run), DEMO_CALL_CUT);
    demo_run_release(run);
    conn_close(run->conn, 0);
}

static int demo_run_cut_due(const struct demo_run *run)
{
    return run->dir.cut_after >= 0 && run->frames_sent >= (uint64_t)run->dir.cut_after;
}

/* Sends what is due now, then re-arms the timer, ends, or cuts. Stops at the
 * backpressure bound: more frames wait for a later tick rather than queue
 * up. */
static void demo_run_pump(struct demo_run *run)
{
    struct buf out = {0};
    uint64_t now = uv_hrtime();
    unsigned frames = 0;
    int blocked = 0;
    struct demo_call *call = demo_run_call(run);

    for (;;) {
        if (demo_run_cut_due(run))
            break;
        if (run->dir.malformed && run->frames_sent == 1) {
            buf_append_str(&out, "data: {not json\n\n");
            run->frames_sent++;
            run->next_frame = demo_run_frames_planned(run); /* nothing else follows */
            break;
        }
        if (run->next_frame >= demo_run_frames_planned(run))
            break;
        if (demo_run_due_ns(run, run->next_frame) > now)
            break;
        if (conn_write_queue_bytes(run->conn) > DEMO_MAX_QUEUED ||
            out.len >= DEMO_TICK_BYTES || frames >= DEMO_TICK_FRAMES) {
            blocked = 1;
            break;
        }
        demo_run_append_next(run, &out);
        frames++;
    }
    if (call)
        call->events = run->frames_sent;
    int gone = demo_run_flush(run, &out);
    buf_free(&out);
    if (gone)
        return; /* the close callback has run or will run */

    int done = run->next_frame >= demo_run_frames_planned(run);
    if (demo_run_cut_due(run) || (done && run->dir.cut_after >= 0)) {
        demo_run_cut(run);
    } else if (done) {
        demo_run_end(run);
    } else {
        /* Never 0 ms: libuv 1.44 would run the timer again in the same pass. */
        uint64_t wait_ms = 1;
        if (!blocked) {
            uint64_t due = demo_run_due_ns(run, run->next_frame);
            if (due > now)
                wait_ms = (due - now + 999999) / 1000000;
        }
        uv_timer_start(&run->timer, demo_run_on_timer, wait_ms, 0);
    }
}

/* ---- the answer -------------------------------------------------------------- */

/* Answers the !status refusal and lets the run go. */
static void demo_run_answer_status(struct demo_run *run)
{
    char extra[96] = "";
    char detail[64];
    if (run->dir.retry_after[0])
        snprintf(extra, sizeof(extra), "Retry-After: %s\r\n", run->dir.retry_after);
    snprintf(detail, sizeof(detail), "demo status %d", run->status_answer);
    struct conn *c = run->conn;
    run->conn = NULL;
    demo_call_answered(demo_run_call(run), run->status_answer);
    demo_run_release(run);
    demo_respond_detail(c, run->status_answer, detail, extra[0] ? extra : NULL);
    demo_run_maybe_free(run);
}

/* Sends the run's first answer: a !status reply, or the stream's head (then
 * hangs, or starts pacing). */
static void demo_run_answer(struct demo_run *run)
{
    if (run->status_answer) {
        demo_run_answer_status(run);
        return;
    }
    struct demo_call *call = demo_run_call(run);
    char headers[384];
    snprintf(headers, sizeof(headers), "Content-Type: %s\r\nCache-Control: no-cache\r\n",
             run->dir.ctype[0] ? run->dir.ctype : "text/event-stream; charset=utf-8");
    if (conn_stream_begin(run->conn, 200, headers, 1, demo_run_on_conn_close, run) != 0) {
        run->conn = NULL;
        demo_call_set_state(call, DEMO_CALL_CLIENT_GONE);
        demo_run_release(run);
        demo_run_maybe_free(run);
        return;
    }
    run->stream_begun = 1;
    if (call) {
        call->status = 200;
        demo_call_set_state(call, DEMO_CALL_STREAMING);
    }
    if (run->dir.hang) {
        run->phase = DEMO_RUN_HANGING;
        return;
    }
    run->phase = DEMO_RUN_STREAMING;
    run->start_ns = uv_hrtime() + run->dir.first_ms * 1000000u;
    demo_run_pump(run);
}

static void demo_run_on_timer(uv_timer_t *timer)
{
    struct demo_run *run = timer->data;
    if (run->phase == DEMO_RUN_DELAYING)
        demo_run_answer(run);
    else if (run->phase == DEMO_RUN_STREAMING)
        demo_run_pump(run);
}

/* The frame that carries !state's delta: the aggregated event, else the
 * last event of the plan (the !tool call, else the last regular event). */
static uint64_t demo_run_state_frame(const struct demo_run *run)
{
    if (!run->dir.state_key[0])
        return DEMO_NO_FRAME;
    if (run->tail == DEMO_TAIL_AGGREGATED || run->tool)
        return run->regular; /* a tool call follows no error frame */
    return run->regular > 0 ? run->regular - 1 : DEMO_NO_FRAME;
}

/* Plans the frames: the echo word by word (streaming; after !think's
 * thought) then the aggregated event, or !events events; an !error frame
 * replaces the aggregated one; then the !tool call, unless !error. */
static void demo_run_plan(struct demo_run *run, const struct buf *words, int streaming,
                          uint64_t default_word_delay_ms)
{
    struct buf echo = {0};
    buf_append_str(&echo, words->len ? "Echo: " : "Echo:");
    buf_append(&echo, words->data, words->len);
    run->echo = echo.data;
    run->echo_len = echo.len;
    run->words_len = words->len;
    /* Each word but the first starts with its space (the word-by-word split). */
    run->echo_words = 1;
    for (size_t i = 0; i < echo.len; i++)
        run->echo_words += echo.data[i] == ' ';
    run->prompt_words = run->echo_words - 1;
    if (run->dir.has_events) {
        run->regular = run->dir.events;
        run->tail = run->dir.error ? DEMO_TAIL_ERROR : DEMO_TAIL_NONE;
    } else {
        if (run->dir.think)
            snprintf(run->thought, sizeof(run->thought), "thinking about %llu words",
                     (unsigned long long)run->prompt_words);
        run->thought_first = streaming && run->dir.think;
        run->regular = streaming ? run->echo_words + run->thought_first : 0;
        run->tail = run->dir.error ? DEMO_TAIL_ERROR : DEMO_TAIL_AGGREGATED;
    }
    run->tool = run->dir.tool[0] && !run->dir.error;
    run->state_frame = demo_run_state_frame(run);
    uint64_t word_delay_ms = run->dir.has_word_delay ? run->dir.word_delay_ms
                                                     : default_word_delay_ms;
    run->interval_ns = run->dir.rate > 0 ? 1e9 / run->dir.rate : (double)word_delay_ms * 1e6;
}

void demo_run_start(struct demo *d, struct conn *c, struct demo_call *call,
                    struct demo_directives *dir, const struct buf *words, int streaming,
                    int status_answer)
{
    struct demo_run *run = xcalloc(1, sizeof(*run));
    run->demo = d;
    run->conn = c;
    run->call_id = call->id;
    run->dir = *dir;
    dir->error = NULL;
    run->status_answer = status_answer;
    demo_run_plan(run, words, streaming, d->word_delay_ms);
    snprintf(run->invocation_id, sizeof(run->invocation_id), "e-%016llx",
             (unsigned long long)demo_rng_next(&d->rng));
    uv_timer_init(d->loop, &run->timer);
    run->timer.data = run;
    list_insert_tail(&d->runs, &run->node);

    if (run->dir.delay_ms > 0) {
        run->phase = DEMO_RUN_DELAYING;
        uv_timer_start(&run->timer, demo_run_on_timer, run->dir.delay_ms, 0);
    } else {
        demo_run_answer(run);
    }
}
