/* demo.c: the built-in demo agent, an ADK api_server look-alike (docs/DEMO.md).
 *
 * One `struct demo` is one agent: a server on one loop, its sessions, the
 * ring of recent /run_sse calls and the runs streaming right now. Everything
 * lives on that loop; the embedded agent gets a thread and loop of its own,
 * `runcast demo-agent` uses the default loop of the process.
 *
 * Data path: demo_on_request() -> demo_run_sse() parses the RunAgentRequest
 * and its directives -> a `struct demo_run` answers (at once or after
 * !delay), then its timer paces the frames (run_pump) until the body ends,
 * the agent cuts it, or the client goes away.
 */
#include "demo.h"

#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "config.h"
#include "http.h"
#include "log.h"
#include "server.h"

#define DEMO_MAX_SESSIONS 100000
#define DEMO_CALL_RING 1000
#define DEMO_CALL_TEXT_MAX 8192          /* bytes of a message kept in /debug/calls */
#define DEMO_ID_MAX 256                  /* appName, userId, sessionId */
#define DEMO_MAX_EVENT_BYTES (16u << 20) /* !bytes cap */
#define DEMO_MAX_QUEUED (1u << 20)       /* unsent bytes before a run waits */
#define DEMO_TICK_BYTES (256u << 10)     /* frames gathered into one write */
#define DEMO_TICK_FRAMES 4096            /* frames written per timer tick at most */
#define DEMO_DEFAULT_WORD_DELAY_MS 50

/* ---- small helpers ------------------------------------------------------ */

static uint64_t wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* splitmix64: ids only need to look random and not repeat within a run. */
static uint64_t rng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Length of s[0..len) cut to at most max bytes without splitting a UTF-8
 * sequence (the input is valid UTF-8: it came out of jansson). */
static size_t utf8_cut(const char *s, size_t len, size_t max)
{
    if (len <= max)
        return len;
    size_t n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    return n;
}

/* Strict unsigned decimal; returns 0 or -EINVAL. */
static int parse_u64(const char *s, size_t len, uint64_t *out)
{
    if (len == 0 || len > 19)
        return -EINVAL;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return 0;
}

/* 1 when s[0..len) is 1..max printable ASCII characters (safe in a header). */
static int is_header_token(const char *s, size_t len, size_t max)
{
    if (len == 0 || len > max)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (s[i] < 0x21 || s[i] > 0x7e)
            return 0;
    return 1;
}

static int json_buf_append(const char *data, size_t size, void *arg)
{
    buf_append(arg, data, size);
    return 0;
}

/* Sends {"detail": detail}. */
static void respond_detail(struct conn *c, int status, const char *detail, const char *extra)
{
    json_t *obj = json_pack("{s:s}", "detail", detail);
    conn_respond_json(c, status, obj, extra);
    json_decref(obj);
}

/* Sends FastAPI's validation answer: 422 {"detail":[errors...]}. Steals errors. */
static void respond_422(struct conn *c, json_t *errors)
{
    json_t *obj = json_pack("{s:o}", "detail", errors);
    conn_respond_json(c, 422, obj, NULL);
    json_decref(obj);
}

/* One FastAPI-style validation error for body field `field`. */
static json_t *validation_error(const char *type, const char *field, const char *msg)
{
    return json_pack("{s:s,s:[s,s],s:s}", "type", type, "loc", "body", field, "msg", msg);
}

/* ---- sessions: a chained hash table plus an age list for eviction ------- */

/* Owned by the table; gone after session_remove(). Nothing else keeps a
 * pointer to a session across callbacks (a run copies what it needs). */
struct demo_session {
    struct demo_session *hash_next;
    struct list age_node;  /* in session_table.by_age, oldest first */
    uint64_t hash;
    char *key;             /* "app\0user\0id\0", one allocation */
    size_t key_len;
    const char *app, *user, *id; /* into key */
    double created_at;     /* wall seconds (lastUpdateTime) */
    uint64_t status_text_hash; /* !status=CODExN: the message being refused... */
    uint64_t status_count;     /* ...and how many calls in a row carried it */
};

struct session_table {
    struct demo_session **buckets;
    size_t bucket_count; /* a power of two */
    size_t count;
    struct list by_age;
};

static uint64_t key_hash(const char *key, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)key[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* Builds the lookup key of (app, user, id) into key. */
static void key_build(struct buf *key, const char *app, const char *user, const char *id)
{
    buf_reset(key);
    buf_append(key, app, strlen(app) + 1);
    buf_append(key, user, strlen(user) + 1);
    buf_append(key, id, strlen(id) + 1);
}

static void session_table_init(struct session_table *t)
{
    t->bucket_count = 64;
    t->buckets = xcalloc(t->bucket_count, sizeof(*t->buckets));
    t->count = 0;
    list_init(&t->by_age);
}

static struct demo_session *session_find(struct session_table *t, const char *app,
                                         const char *user, const char *id)
{
    struct buf key = {0};
    key_build(&key, app, user, id);
    uint64_t h = key_hash(key.data, key.len);
    struct demo_session *s = t->buckets[h & (t->bucket_count - 1)];
    for (; s != NULL; s = s->hash_next)
        if (s->hash == h && s->key_len == key.len && memcmp(s->key, key.data, key.len) == 0)
            break;
    buf_free(&key);
    return s;
}

static void session_table_grow(struct session_table *t)
{
    size_t count = t->bucket_count * 2;
    struct demo_session **buckets = xcalloc(count, sizeof(*buckets));
    for (size_t i = 0; i < t->bucket_count; i++) {
        struct demo_session *s = t->buckets[i], *next;
        for (; s != NULL; s = next) {
            next = s->hash_next;
            s->hash_next = buckets[s->hash & (count - 1)];
            buckets[s->hash & (count - 1)] = s;
        }
    }
    free(t->buckets);
    t->buckets = buckets;
    t->bucket_count = count;
}

/* Unlinks and frees s. Cannot fail. */
static void session_remove(struct session_table *t, struct demo_session *s)
{
    struct demo_session **pp = &t->buckets[s->hash & (t->bucket_count - 1)];
    while (*pp != s)
        pp = &(*pp)->hash_next;
    *pp = s->hash_next;
    list_remove(&s->age_node);
    t->count--;
    free(s->key);
    free(s);
}

/* Adds a session that session_find() did not find; evicts the oldest one
 * beyond DEMO_MAX_SESSIONS. Returns the new session (owned by the table). */
static struct demo_session *session_add(struct session_table *t, const char *app,
                                        const char *user, const char *id)
{
    struct buf key = {0};
    key_build(&key, app, user, id);
    struct demo_session *s = xcalloc(1, sizeof(*s));
    s->key = key.data; /* take the buffer */
    s->key_len = key.len;
    s->hash = key_hash(s->key, s->key_len);
    s->app = s->key;
    s->user = s->app + strlen(s->app) + 1;
    s->id = s->user + strlen(s->user) + 1;
    s->created_at = (double)wall_us() / 1e6;
    if (t->count + 1 > t->bucket_count)
        session_table_grow(t);
    size_t b = s->hash & (t->bucket_count - 1);
    s->hash_next = t->buckets[b];
    t->buckets[b] = s;
    list_insert_tail(&t->by_age, &s->age_node);
    t->count++;
    while (t->count > DEMO_MAX_SESSIONS)
        session_remove(t, container_of(t->by_age.next, struct demo_session, age_node));
    return s;
}

/* !status=CODExN: counts this call among the calls in a row that carry the
 * same message (the gateway's retries of it). Returns 1 while the count is
 * at most n (answer with the status); the call after that runs normally and
 * the count starts over. n == 0 (a call without CODExN) ends the row. */
static int session_status_turn(struct demo_session *s, const char *text, uint64_t n)
{
    if (n == 0) {
        s->status_count = 0;
        return 0;
    }
    uint64_t h = key_hash(text, strlen(text));
    if (s->status_count > 0 && s->status_text_hash == h) {
        s->status_count++;
    } else {
        s->status_text_hash = h;
        s->status_count = 1;
    }
    if (s->status_count <= n)
        return 1;
    s->status_count = 0;
    return 0;
}

static void session_table_free(struct session_table *t)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &t->by_age)
        session_remove(t, container_of(pos, struct demo_session, age_node));
    free(t->buckets);
    t->buckets = NULL;
}

/* ADK's Session shape. Caller owns the result. */
static json_t *session_json(const struct demo_session *s)
{
    return json_pack("{s:s,s:s,s:s,s:{},s:[],s:f}", "id", s->id, "appName", s->app,
                     "userId", s->user, "state", "events", "lastUpdateTime", s->created_at);
}

/* ---- the call ring (/debug/calls) --------------------------------------- */

/* A call's life, as /debug/calls shows it. waiting -> streaming -> one of
 * the final states; waiting may go straight to a final state (an immediate
 * answer, or the client leaving during !delay). */
enum call_state {
    CALL_WAITING = 0,
    CALL_STREAMING,
    CALL_FINISHED,
    CALL_CLIENT_GONE,
    CALL_CUT,
};

static const char *const call_state_names[] = {"waiting", "streaming", "finished",
                                               "client_gone", "cut"};

/* One /run_sse call. Owned by the ring slot (id - 1) % DEMO_CALL_RING; a
 * run refers to it by id, so a call evicted while its run goes on is simply
 * no longer updated. */
struct demo_call {
    uint64_t id; /* 0: empty slot */
    char *session;
    char *text;
    int status;
    enum call_state state;
    uint64_t events;
    uint64_t received_at_us;
    uint64_t ended_at_us;
};

/* ---- the agent ---------------------------------------------------------- */

struct demo_run;

/* One agent. Owned by whoever created it (the demo thread, or demo_main);
 * freed by demo_destroy() once its loop has stopped. */
struct demo {
    uv_loop_t *loop;
    struct server *server; /* NULL once closed */
    uint64_t word_delay_ms;
    struct session_table sessions;
    struct demo_call calls[DEMO_CALL_RING];
    uint64_t last_call_id;
    struct list runs; /* struct demo_run.node: runs not yet released */
    uint64_t rng;
    int stopping;
};

static struct demo_call *call_get(struct demo *d, uint64_t id)
{
    struct demo_call *call = &d->calls[(id - 1) % DEMO_CALL_RING];
    return call->id == id ? call : NULL;
}

/* Records a new call (state waiting, status 0), evicting the oldest. */
static struct demo_call *call_new(struct demo *d)
{
    uint64_t id = ++d->last_call_id;
    struct demo_call *call = &d->calls[(id - 1) % DEMO_CALL_RING];
    free(call->session);
    free(call->text);
    memset(call, 0, sizeof(*call));
    call->id = id;
    call->session = xstrdup("");
    call->text = xstrdup("");
    call->received_at_us = wall_us();
    return call;
}

/* The one place a call changes state; final states are final. */
static void call_set_state(struct demo_call *call, enum call_state to)
{
    if (call == NULL || call->state == to)
        return;
    if (call->state >= CALL_FINISHED)
        return; /* already over: a late close after a cut or an end */
    call->state = to;
    if (to >= CALL_FINISHED)
        call->ended_at_us = wall_us();
}

/* Answers an immediate, non-streamed status and closes the call. */
static void call_answered(struct demo_call *call, int status)
{
    call->status = status;
    call_set_state(call, CALL_FINISHED);
}

static json_t *call_json(const struct demo_call *call)
{
    return json_pack("{s:I,s:s,s:s,s:i,s:s,s:I,s:I,s:I}", "id", (json_int_t)call->id,
                     "session", call->session, "text", call->text, "status", call->status,
                     "state", call_state_names[call->state], "events", (json_int_t)call->events,
                     "received_at_us", (json_int_t)call->received_at_us,
                     "ended_at_us", (json_int_t)call->ended_at_us);
}

static void calls_free(struct demo *d)
{
    for (size_t i = 0; i < DEMO_CALL_RING; i++) {
        free(d->calls[i].session);
        free(d->calls[i].text);
        d->calls[i].session = d->calls[i].text = NULL;
    }
}

/* ---- directives --------------------------------------------------------- */

/* What a message's `!` words ask for (docs/DEMO.md). Owned by its run. */
struct demo_directives {
    int has_word_delay;
    uint64_t word_delay_ms;
    uint64_t delay_ms;
    uint64_t first_ms;
    int has_events;
    uint64_t events;
    uint64_t bytes;
    double rate;            /* 0: pace by the word delay */
    int hang;
    int status;             /* 0: none */
    uint64_t status_calls;  /* !status=CODExN: N; 0: every call */
    char retry_after[64];   /* "" when not given */
    char *error;            /* NULL when not given */
    int malformed;
    int64_t cut_after;      /* frames before the cut; -1: no cut */
    char ctype[256];        /* "" when not given */
    int forget;
};

static int value_is(const char *name, size_t name_len, const char *cstr)
{
    return strlen(cstr) == name_len && memcmp(name, cstr, name_len) == 0;
}

static int parse_duration(const char *v, size_t len, uint64_t *out_ms)
{
    char tmp[64];
    if (len == 0 || len >= sizeof(tmp))
        return -EINVAL;
    memcpy(tmp, v, len);
    tmp[len] = '\0';
    return config_parse_duration_ms(tmp, out_ms);
}

/* !status=CODE or !status=CODExN, CODE in 200..599. */
static int parse_status(const char *v, size_t len, int *code, uint64_t *calls)
{
    const char *x = memchr(v, 'x', len);
    size_t code_len = x ? (size_t)(x - v) : len;
    uint64_t c, n = 0;
    if (parse_u64(v, code_len, &c) != 0 || c < 200 || c > 599)
        return -EINVAL;
    if (x && (parse_u64(x + 1, len - code_len - 1, &n) != 0 || n == 0))
        return -EINVAL;
    *code = (int)c;
    *calls = n;
    return 0;
}

/* Applies one directive word (without its '!'). Unknown names and bad values
 * are ignored: the word is dropped from the echo either way. */
static void directive_apply(struct demo_directives *dir, const char *w, size_t len)
{
    const char *eq = memchr(w, '=', len);
    size_t name_len = eq ? (size_t)(eq - w) : len;
    const char *v = eq ? eq + 1 : NULL;
    size_t vlen = eq ? len - name_len - 1 : 0;
    uint64_t n;

    if (v == NULL) {
        if (value_is(w, name_len, "hang"))
            dir->hang = 1;
        else if (value_is(w, name_len, "malformed"))
            dir->malformed = 1;
        else if (value_is(w, name_len, "forget"))
            dir->forget = 1;
        else if (value_is(w, name_len, "cut"))
            dir->cut_after = 1;
        return;
    }
    if (value_is(w, name_len, "word-delay")) {
        if (parse_duration(v, vlen, &dir->word_delay_ms) == 0)
            dir->has_word_delay = 1;
    } else if (value_is(w, name_len, "delay")) {
        parse_duration(v, vlen, &dir->delay_ms);
    } else if (value_is(w, name_len, "first")) {
        parse_duration(v, vlen, &dir->first_ms);
    } else if (value_is(w, name_len, "events")) {
        if (parse_u64(v, vlen, &dir->events) == 0)
            dir->has_events = 1;
    } else if (value_is(w, name_len, "bytes")) {
        if (parse_u64(v, vlen, &n) == 0)
            dir->bytes = n < DEMO_MAX_EVENT_BYTES ? n : DEMO_MAX_EVENT_BYTES;
    } else if (value_is(w, name_len, "rate")) {
        char tmp[64], *end;
        if (vlen > 0 && vlen < sizeof(tmp)) {
            memcpy(tmp, v, vlen);
            tmp[vlen] = '\0';
            double r = strtod(tmp, &end);
            if (*end == '\0' && isfinite(r) && r > 0)
                dir->rate = r;
        }
    } else if (value_is(w, name_len, "status")) {
        parse_status(v, vlen, &dir->status, &dir->status_calls);
    } else if (value_is(w, name_len, "retry-after")) {
        if (is_header_token(v, vlen, sizeof(dir->retry_after) - 1)) {
            memcpy(dir->retry_after, v, vlen);
            dir->retry_after[vlen] = '\0';
        }
    } else if (value_is(w, name_len, "error")) {
        free(dir->error);
        dir->error = xstrndup(v, vlen);
    } else if (value_is(w, name_len, "cut")) {
        if (parse_u64(v, vlen, &n) == 0 && n <= INT64_MAX)
            dir->cut_after = (int64_t)n;
    } else if (value_is(w, name_len, "ctype")) {
        if (is_header_token(v, vlen, sizeof(dir->ctype) - 1)) {
            memcpy(dir->ctype, v, vlen);
            dir->ctype[vlen] = '\0';
        }
    }
}

static int is_space(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f';
}

/* Splits text into words: `!` words go to dir, the others are joined with
 * single spaces into words_out. Returns the number of plain words. */
static uint64_t directives_parse(const char *text, struct demo_directives *dir,
                                 struct buf *words_out)
{
    uint64_t words = 0;
    const char *p = text;
    while (*p) {
        while (*p && is_space(*p))
            p++;
        const char *w = p;
        while (*p && !is_space(*p))
            p++;
        size_t len = (size_t)(p - w);
        if (len == 0)
            break;
        if (w[0] == '!') {
            directive_apply(dir, w + 1, len - 1);
        } else {
            if (words_out->len > 0)
                buf_append(words_out, " ", 1);
            buf_append(words_out, w, len);
            words++;
        }
    }
    return words;
}

/* ---- runs --------------------------------------------------------------- */

enum run_phase {
    RUN_DELAYING,  /* !delay: no answer yet */
    RUN_STREAMING, /* head sent, the timer paces the frames */
    RUN_HANGING,   /* !hang: head sent, nothing more */
    RUN_OVER,      /* released: waiting for the timer's and the conn's close */
};

/* What the run sends after its regular events. */
enum run_tail { TAIL_NONE = 0, TAIL_AGGREGATED, TAIL_ERROR };

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
    int stream_begun;   /* the conn will call run_on_conn_close */
    enum run_phase phase;
    uint64_t call_id;
    struct demo_directives dir;
    int status_answer;  /* !status to answer after !delay; 0: stream */
    char *echo;         /* "Echo: <words>" */
    size_t echo_len;
    size_t echo_pos;    /* start of the next word to stream */
    uint64_t prompt_words, echo_words;
    uint64_t regular;   /* events before the tail */
    enum run_tail tail;
    uint64_t next_frame; /* index of the next planned frame (regular, then tail) */
    uint64_t frames_sent;
    uint64_t start_ns;  /* when frame 0 is due (uv_hrtime) */
    double interval_ns;
    char invocation_id[24];
    struct buf scratch; /* !events text */
};

static void run_on_timer(uv_timer_t *timer);

static void run_maybe_free(struct demo_run *run)
{
    if (!run->timer_closed || run->conn != NULL)
        return;
    free(run->dir.error);
    free(run->echo);
    buf_free(&run->scratch);
    free(run);
}

static void run_on_timer_closed(uv_handle_t *handle)
{
    struct demo_run *run = handle->data;
    run->timer_closed = 1;
    run_maybe_free(run);
}

/* Stops the run for good: no frame is sent after this. The memory goes when
 * the timer is closed and the conn lets go (see struct demo_run). Safe to
 * call twice and from any callback. */
static void run_release(struct demo_run *run)
{
    if (run->phase == RUN_OVER)
        return;
    run->phase = RUN_OVER;
    list_remove(&run->node);
    uv_timer_stop(&run->timer);
    uv_close((uv_handle_t *)&run->timer, run_on_timer_closed);
}

/* The stream's connection went away (peer, write error, our own cut,
 * server_close). After this returns the conn is dead. */
static void run_on_conn_close(struct conn *c, void *arg)
{
    struct demo_run *run = arg;
    run->conn = NULL;
    call_set_state(call_get(run->demo, run->call_id), CALL_CLIENT_GONE);
    run_release(run);
    run_maybe_free(run);
}

/* Appends `data: <json>\n\n`. */
static void frame_append_json(struct buf *out, json_t *obj)
{
    buf_append(out, "data: ", 6);
    json_dump_callback(obj, json_buf_append, out, JSON_COMPACT | JSON_REAL_PRECISION(16));
    buf_append(out, "\n\n", 2);
}

/* Appends one ADK Event frame with this text. final: the aggregated event. */
static void run_append_event(struct demo_run *run, struct buf *out, const char *text,
                             size_t len, int final)
{
    uint64_t now_us = wall_us();
    char id[17];
    snprintf(id, sizeof(id), "%016llx", (unsigned long long)rng_next(&run->demo->rng));
    json_t *str = json_stringn(text, len);
    json_t *ev = json_pack("{s:s,s:s,s:s,s:f,s:{s:s,s:[{s:o}]},s:b}", "id", id,
                           "invocationId", run->invocation_id, "author", "demo_agent",
                           "timestamp", (double)now_us / 1e6, "content", "role", "model",
                           "parts", "text", str ? str : json_string(""), "partial", !final);
    if (final) {
        json_object_set_new(ev, "turnComplete", json_true());
        json_object_set_new(ev, "finishReason", json_string("STOP"));
        json_object_set_new(ev, "usageMetadata",
                            json_pack("{s:I,s:I,s:I}",
                                      "promptTokenCount", (json_int_t)run->prompt_words,
                                      "candidatesTokenCount", (json_int_t)run->echo_words,
                                      "totalTokenCount",
                                      (json_int_t)(run->prompt_words + run->echo_words)));
    }
    json_object_set_new(ev, "actions", json_pack("{s:{},s:{},s:{}}", "stateDelta",
                                                 "artifactDelta", "requestedAuthConfigs"));
    json_object_set_new(ev, "customMetadata",
                        json_pack("{s:I,s:I}", "seq", (json_int_t)run->frames_sent,
                                  "sent_at_us", (json_int_t)now_us));
    frame_append_json(out, ev);
    json_decref(ev);
}

/* Appends the ADK 2.x error frame for !error. */
static void run_append_error(struct demo_run *run, struct buf *out)
{
    json_t *msg = json_string(run->dir.error);
    if (msg == NULL)
        msg = json_string("");
    json_t *frame = json_pack("{s:O,s:{s:s,s:O,s:f}}", "error", msg,
                              "error_details", "error_type", "ValueError",
                              "error_message", msg,
                              "timestamp", (double)wall_us() / 1e6);
    json_decref(msg);
    frame_append_json(out, frame);
    json_decref(frame);
}

/* Appends planned frame run->next_frame (a word, an !events event, or the
 * tail) and advances. */
static void run_append_next(struct demo_run *run, struct buf *out)
{
    if (run->next_frame < run->regular && run->dir.has_events) {
        struct buf *t = &run->scratch;
        buf_reset(t);
        buf_printf(t, "event %llu", (unsigned long long)run->next_frame);
        if (t->len > run->dir.bytes) {
            t->len = run->dir.bytes;
            t->data[t->len] = '\0';
        }
        while (t->len < run->dir.bytes) {
            size_t n = run->dir.bytes - t->len;
            static const char xs[] = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
            buf_append(t, xs, n < sizeof(xs) - 1 ? n : sizeof(xs) - 1);
        }
        run_append_event(run, out, t->data, t->len, 0);
    } else if (run->next_frame < run->regular) {
        /* The space before a word belongs to that word. */
        size_t start = run->echo_pos, end = start + 1;
        while (end < run->echo_len && run->echo[end] != ' ')
            end++;
        run_append_event(run, out, run->echo + start, end - start, 0);
        run->echo_pos = end;
    } else if (run->tail == TAIL_AGGREGATED) {
        run_append_event(run, out, run->echo, run->echo_len, 1);
    } else {
        run_append_error(run, out);
    }
    run->next_frame++;
    run->frames_sent++;
}

static uint64_t run_frames_planned(const struct demo_run *run)
{
    return run->regular + (run->tail != TAIL_NONE);
}

/* When planned frame i is due (uv_hrtime ns). Absolute, so a late tick does
 * not push every later frame back; the tail goes right after the last
 * regular event. */
static uint64_t run_due_ns(const struct demo_run *run, uint64_t i)
{
    if (i >= run->regular)
        i = run->regular ? run->regular - 1 : 0;
    return run->start_ns + (uint64_t)((double)i * run->interval_ns);
}

/* Rewrites every "sent_at_us" in out with the time now, so the stamp says
 * when the event was handed to the network rather than when jansson began
 * building it (the benchmarks measure delivery latency from it). A number
 * of another width is left as it is. */
static void restamp_sent_at(struct buf *out)
{
    static const char key[] = "\"sent_at_us\":";
    char now[24];
    int n = snprintf(now, sizeof(now), "%llu", (unsigned long long)wall_us());
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

/* Writes out (if anything) to the stream. Returns 0, or -1 when the conn
 * went away meanwhile (run->conn is then NULL or closing). */
static int run_flush(struct demo_run *run, struct buf *out)
{
    if (out->len == 0)
        return 0;
    restamp_sent_at(out);
    int rc = conn_stream_write_copy(run->conn, out->data, out->len);
    buf_reset(out);
    return rc < 0 || run->conn == NULL ? -1 : 0;
}

/* Normal end of the body (last chunk); the conn goes back to reading. */
static void run_end(struct demo_run *run)
{
    struct conn *c = run->conn;
    /* An empty write only checks the conn: when it is already closing (the
     * peer left, its close callback not yet delivered), ending the stream
     * would not be certain to cancel that callback, so let it come. */
    if (conn_stream_write_copy(c, "", 0) != 0) {
        run_release(run);
        return;
    }
    run->conn = NULL; /* conn_stream_end() never calls the close callback */
    call_set_state(call_get(run->demo, run->call_id), CALL_FINISHED);
    run_release(run);
    conn_stream_end(c);
}

/* !cut: close without the last chunk. Queued frames are flushed first (a
 * graceful close), so the client sees exactly the frames before the cut and
 * then an early EOF. run->conn stays set until the close callback. */
static void run_cut(struct demo_run *run)
{
    call_set_state(call_get(run->demo, run->call_id), CALL_CUT);
    run_release(run);
    conn_close(run->conn, 0);
}

/* Sends what is due now, then re-arms the timer. Stops at the backpressure
 * bound: more frames wait for a later tick rather than queue up. */
static void run_pump(struct demo_run *run)
{
    struct buf out = {0};
    uint64_t now = uv_hrtime();
    unsigned frames = 0;
    int blocked = 0;
    struct demo_call *call = call_get(run->demo, run->call_id);

    for (;;) {
        if (run->dir.cut_after >= 0 && run->frames_sent >= (uint64_t)run->dir.cut_after)
            break;
        if (run->dir.malformed && run->frames_sent == 1) {
            buf_append_str(&out, "data: {not json\n\n");
            run->frames_sent++;
            run->next_frame = run_frames_planned(run); /* nothing else follows */
            break;
        }
        if (run->next_frame >= run_frames_planned(run))
            break;
        if (run_due_ns(run, run->next_frame) > now)
            break;
        if (conn_write_queue_bytes(run->conn) > DEMO_MAX_QUEUED ||
            out.len >= DEMO_TICK_BYTES || frames >= DEMO_TICK_FRAMES) {
            blocked = 1;
            break;
        }
        run_append_next(run, &out);
        frames++;
    }
    if (call)
        call->events = run->frames_sent;
    int gone = run_flush(run, &out);
    buf_free(&out);
    if (gone)
        return; /* the close callback has run or will run */

    int cut_now = run->dir.cut_after >= 0 && run->frames_sent >= (uint64_t)run->dir.cut_after;
    int done = run->next_frame >= run_frames_planned(run);
    if (cut_now || (done && run->dir.cut_after >= 0)) {
        run_cut(run);
    } else if (done) {
        run_end(run);
    } else {
        /* Never 0 ms: libuv 1.44 would run the timer again in the same pass. */
        uint64_t wait_ms = 1;
        if (!blocked) {
            uint64_t due = run_due_ns(run, run->next_frame);
            if (due > now)
                wait_ms = (due - now + 999999) / 1000000;
        }
        uv_timer_start(&run->timer, run_on_timer, wait_ms, 0);
    }
}

/* Sends the run's first answer: a !status reply, or the stream's head. */
static void run_answer(struct demo_run *run)
{
    struct demo_call *call = call_get(run->demo, run->call_id);

    if (run->status_answer) {
        char extra[96] = "";
        char detail[64];
        if (run->dir.retry_after[0])
            snprintf(extra, sizeof(extra), "Retry-After: %s\r\n", run->dir.retry_after);
        snprintf(detail, sizeof(detail), "demo status %d", run->status_answer);
        struct conn *c = run->conn;
        run->conn = NULL;
        if (call)
            call_answered(call, run->status_answer);
        run_release(run);
        respond_detail(c, run->status_answer, detail, extra[0] ? extra : NULL);
        run_maybe_free(run);
        return;
    }

    char headers[384];
    snprintf(headers, sizeof(headers), "Content-Type: %s\r\nCache-Control: no-cache\r\n",
             run->dir.ctype[0] ? run->dir.ctype : "text/event-stream; charset=utf-8");
    if (conn_stream_begin(run->conn, 200, headers, 1, run_on_conn_close, run) != 0) {
        run->conn = NULL;
        call_set_state(call, CALL_CLIENT_GONE);
        run_release(run);
        run_maybe_free(run);
        return;
    }
    run->stream_begun = 1;
    if (call) {
        call->status = 200;
        call_set_state(call, CALL_STREAMING);
    }
    if (run->dir.hang) {
        run->phase = RUN_HANGING;
        return;
    }
    run->phase = RUN_STREAMING;
    run->start_ns = uv_hrtime() + run->dir.first_ms * 1000000u;
    run_pump(run);
}

static void run_on_timer(uv_timer_t *timer)
{
    struct demo_run *run = timer->data;
    if (run->phase == RUN_DELAYING)
        run_answer(run);
    else if (run->phase == RUN_STREAMING)
        run_pump(run);
}

/* Takes a parsed call over: answers now, or after !delay. dir and echo are
 * moved into the run. */
static void run_start(struct demo *d, struct conn *c, struct demo_call *call,
                      struct demo_directives *dir, struct buf *words, uint64_t prompt_words,
                      int streaming, int status_answer)
{
    struct demo_run *run = xcalloc(1, sizeof(*run));
    run->demo = d;
    run->conn = c;
    run->call_id = call->id;
    run->dir = *dir;
    dir->error = NULL;
    run->status_answer = status_answer;
    run->prompt_words = prompt_words;
    struct buf echo = {0};
    buf_append_str(&echo, words->len ? "Echo: " : "Echo:");
    buf_append(&echo, words->data, words->len);
    run->echo = echo.data;
    run->echo_len = echo.len;
    run->echo_words = prompt_words + 1;
    snprintf(run->invocation_id, sizeof(run->invocation_id), "e-%016llx",
             (unsigned long long)rng_next(&d->rng));
    if (run->dir.has_events) {
        run->regular = run->dir.events;
        run->tail = run->dir.error ? TAIL_ERROR : TAIL_NONE;
    } else {
        run->regular = streaming ? run->echo_words : 0;
        run->tail = run->dir.error ? TAIL_ERROR : TAIL_AGGREGATED;
    }
    uint64_t word_delay_ms = run->dir.has_word_delay ? run->dir.word_delay_ms : d->word_delay_ms;
    run->interval_ns = run->dir.rate > 0 ? 1e9 / run->dir.rate : (double)word_delay_ms * 1e6;
    uv_timer_init(d->loop, &run->timer);
    run->timer.data = run;
    list_insert_tail(&d->runs, &run->node);

    if (run->dir.delay_ms > 0) {
        run->phase = RUN_DELAYING;
        uv_timer_start(&run->timer, run_on_timer, run->dir.delay_ms, 0);
    } else {
        run_answer(run);
    }
}

/* ---- request handlers --------------------------------------------------- */

/* Copies a JSON string member found under the camelCase or snake_case name.
 * Returns 0 (and *out, malloc'd), -ENOENT when absent or null, -EINVAL when
 * not a string of 1..DEMO_ID_MAX bytes; adds the validation error. */
static int body_id(json_t *body, const char *camel, const char *snake, char **out,
                   json_t *errors)
{
    json_t *v = json_object_get(body, camel);
    if (v == NULL || json_is_null(v))
        v = json_object_get(body, snake);
    if (v == NULL || json_is_null(v))
        return -ENOENT;
    if (!json_is_string(v) || json_string_length(v) == 0 ||
        json_string_length(v) > DEMO_ID_MAX) {
        json_array_append_new(errors, validation_error("string_type", camel,
                                                       "Input should be a string of 1 to 256 bytes"));
        return -EINVAL;
    }
    *out = xstrdup(json_string_value(v));
    return 0;
}

/* Parses a JSON body that must be an object. Returns it (caller owns) or
 * NULL after answering 422. */
static json_t *body_object(struct conn *c, const struct http_request *req)
{
    json_error_t jerr;
    json_t *body = json_loadb(req->body ? req->body : "", req->body_len, JSON_DECODE_ANY, &jerr);
    if (body == NULL) {
        json_t *errors = json_array();
        json_array_append_new(errors, json_pack("{s:s,s:[s,i],s:s}", "type", "json_invalid",
                                                "loc", "body", (int)jerr.position,
                                                "msg", "JSON decode error"));
        respond_422(c, errors);
        return NULL;
    }
    if (!json_is_object(body)) {
        json_decref(body);
        json_t *errors = json_array();
        json_array_append_new(errors, json_pack("{s:s,s:[s],s:s}", "type", "model_attributes_type",
                                                "loc", "body",
                                                "msg", "Input should be a valid dictionary"));
        respond_422(c, errors);
        return NULL;
    }
    return body;
}

/* POST /apps/{app}/users/{user}/sessions (the id from the body's sessionId,
 * or made up) and POST …/sessions/{path_id} (the id from the path; the body
 * may hold a state, which the demo ignores), as Python ADK answers both. */
static void demo_session_create(struct demo *d, struct conn *c, const struct http_request *req,
                                const char *app, const char *user, const char *path_id)
{
    char *id = NULL;
    if (path_id != NULL) {
        id = xstrdup(path_id);
    } else if (req->body_len > 0) {
        json_t *body = body_object(c, req);
        if (body == NULL)
            return;
        json_t *errors = json_array();
        int rc = body_id(body, "sessionId", "session_id", &id, errors);
        json_decref(body);
        if (rc == -EINVAL) {
            respond_422(c, errors);
            return;
        }
        json_decref(errors);
    }
    if (id == NULL) {
        uint64_t a = rng_next(&d->rng), b = rng_next(&d->rng);
        char uuid[40];
        snprintf(uuid, sizeof(uuid), "%08llx-%04llx-4%03llx-%04llx-%012llx",
                 (unsigned long long)(a >> 32), (unsigned long long)((a >> 16) & 0xffff),
                 (unsigned long long)(a & 0xfff),
                 (unsigned long long)(0x8000 | ((b >> 48) & 0x3fff)),
                 (unsigned long long)(b & 0xffffffffffffull));
        id = xstrdup(uuid);
    }
    if (session_find(&d->sessions, app, user, id) != NULL) {
        char detail[DEMO_ID_MAX + 64];
        snprintf(detail, sizeof(detail), "Session already exists: %s", id);
        respond_detail(c, 409, detail, NULL);
    } else {
        json_t *obj = session_json(session_add(&d->sessions, app, user, id));
        conn_respond_json(c, 200, obj, NULL);
        json_decref(obj);
    }
    free(id);
}

/* GET|DELETE /apps/{app}/users/{user}/sessions/{sid} */
static void demo_session_one(struct demo *d, struct conn *c, const struct http_request *req,
                             const char *app, const char *user, const char *id)
{
    struct demo_session *s = session_find(&d->sessions, app, user, id);
    if (s == NULL) {
        respond_detail(c, 404, "Session not found", NULL);
    } else if (req->method == HTTP_GET) {
        json_t *obj = session_json(s);
        conn_respond_json(c, 200, obj, NULL);
        json_decref(obj);
    } else {
        session_remove(&d->sessions, s);
        conn_respond(c, 204, NULL, NULL, NULL, 0);
    }
}

/* Concatenates the text of newMessage.parts[]; -EINVAL when the shape is
 * wrong (parts without text, e.g. inlineData, are skipped). */
static int message_text(json_t *msg, struct buf *text)
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
    }
    return 0;
}

/* POST /run_sse: validates the RunAgentRequest, records the call, then
 * answers 404 / !status / a stream. */
static void demo_run_sse(struct demo *d, struct conn *c, const struct http_request *req)
{
    struct demo_call *call = call_new(d);
    json_t *body = body_object(c, req);
    if (body == NULL) {
        call_answered(call, 422);
        return;
    }
    json_t *errors = json_array();
    char *app = NULL, *user = NULL, *sid = NULL;
    struct buf text = {0};
    if (body_id(body, "appName", "app_name", &app, errors) == -ENOENT) {
        json_array_append_new(errors, validation_error("missing", "appName", "Field required"));
    }
    if (body_id(body, "userId", "user_id", &user, errors) == -ENOENT) {
        json_array_append_new(errors, validation_error("missing", "userId", "Field required"));
    }
    if (body_id(body, "sessionId", "session_id", &sid, errors) == -ENOENT) {
        json_array_append_new(errors, validation_error("missing", "sessionId", "Field required"));
    }
    json_t *msg = json_object_get(body, "newMessage");
    if (msg == NULL)
        msg = json_object_get(body, "new_message");
    if (msg == NULL) {
        json_array_append_new(errors, validation_error("missing", "newMessage", "Field required"));
    } else if (message_text(msg, &text) != 0) {
        json_array_append_new(errors, validation_error("model_type", "newMessage",
                                                       "Input should be a valid Content"));
    }
    json_t *streaming_json = json_object_get(body, "streaming");
    if (streaming_json != NULL && !json_is_boolean(streaming_json))
        json_array_append_new(errors, validation_error("bool_type", "streaming",
                                                       "Input should be a valid boolean"));
    int streaming = json_is_true(streaming_json);

    if (sid) {
        free(call->session);
        call->session = xstrndup(sid, utf8_cut(sid, strlen(sid), DEMO_ID_MAX));
    }
    free(call->text);
    call->text = xstrndup(text.data ? text.data : "",
                          utf8_cut(text.data ? text.data : "", text.len, DEMO_CALL_TEXT_MAX));

    struct demo_session *s = NULL;
    if (json_array_size(errors) > 0) {
        respond_422(c, errors);
        errors = NULL;
        call_answered(call, 422);
    } else if ((s = session_find(&d->sessions, app, user, sid)) == NULL) {
        char detail[DEMO_ID_MAX + 64];
        snprintf(detail, sizeof(detail), "Session not found: %s", sid);
        respond_detail(c, 404, detail, NULL);
        call_answered(call, 404);
    } else {
        struct demo_directives dir = {.bytes = 16, .cut_after = -1};
        struct buf words = {0};
        uint64_t prompt_words = directives_parse(text.data ? text.data : "", &dir, &words);
        int refused = session_status_turn(s, text.data ? text.data : "",
                                          dir.status ? dir.status_calls : 0);
        int status = dir.status && (dir.status_calls == 0 || refused) ? dir.status : 0;
        if (dir.forget)
            session_remove(&d->sessions, s);
        run_start(d, c, call, &dir, &words, prompt_words, streaming, status);
        buf_free(&words);
        free(dir.error);
    }
    json_decref(errors);
    json_decref(body);
    free(app);
    free(user);
    free(sid);
    buf_free(&text);
}

/* GET /debug/calls[?session=SID] */
static void demo_debug_calls(struct demo *d, struct conn *c, const struct http_request *req)
{
    char filter[DEMO_ID_MAX + 1];
    int filtered = 0;
    if (req->query) {
        ssize_t n = http_query_get(req->query, req->query_len, "session", filter, sizeof(filter));
        if (n >= 0) {
            filtered = 1;
        } else if (n != -ENOENT) {
            respond_detail(c, 400, "bad session parameter", NULL);
            return;
        }
    }
    json_t *calls = json_array();
    uint64_t first = d->last_call_id > DEMO_CALL_RING ? d->last_call_id - DEMO_CALL_RING + 1 : 1;
    for (uint64_t id = first; id <= d->last_call_id; id++) {
        struct demo_call *call = call_get(d, id);
        if (call == NULL || (filtered && strcmp(call->session, filter) != 0))
            continue;
        json_array_append_new(calls, call_json(call));
    }
    json_t *obj = json_pack("{s:o}", "calls", calls);
    conn_respond_json(c, 200, obj, NULL);
    json_decref(obj);
}

/* Splits path into at most max segments (no empty ones). Returns the count,
 * or -1 when the path has an empty segment or too many. */
static int path_split(const char *path, size_t len, char seg[][DEMO_ID_MAX + 1], int max)
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

static void respond_not_allowed(struct conn *c, const char *allow)
{
    char extra[64];
    snprintf(extra, sizeof(extra), "Allow: %s\r\n", allow);
    respond_detail(c, 405, "Method Not Allowed", extra);
}

/* The server's request callback: routes one request. Answers before it
 * returns, except a /run_sse run that waits for !delay. */
static void demo_on_request(struct conn *c, const struct http_request *req, void *data)
{
    struct demo *d = data;
    char seg[6][DEMO_ID_MAX + 1];
    int n = path_split(req->path, req->path_len, seg, 6);
    enum http_method m = req->method;

    if (n == 1 && strcmp(seg[0], "run_sse") == 0) {
        if (m == HTTP_POST)
            demo_run_sse(d, c, req);
        else
            respond_not_allowed(c, "POST");
    } else if (n == 1 && strcmp(seg[0], "health") == 0) {
        if (m == HTTP_GET) {
            json_t *obj = json_pack("{s:s}", "status", "ok");
            conn_respond_json(c, 200, obj, NULL);
            json_decref(obj);
        } else {
            respond_not_allowed(c, "GET");
        }
    } else if (n == 2 && strcmp(seg[0], "debug") == 0 && strcmp(seg[1], "calls") == 0) {
        if (m == HTTP_GET)
            demo_debug_calls(d, c, req);
        else
            respond_not_allowed(c, "GET");
    } else if ((n == 5 || n == 6) && strcmp(seg[0], "apps") == 0 &&
               strcmp(seg[2], "users") == 0 && strcmp(seg[4], "sessions") == 0 &&
               str_is_path_param(seg[1], strlen(seg[1])) &&
               str_is_path_param(seg[3], strlen(seg[3])) &&
               (n == 5 || str_is_path_param(seg[5], strlen(seg[5])))) {
        if (n == 5 && m == HTTP_POST)
            demo_session_create(d, c, req, seg[1], seg[3], NULL);
        else if (n == 5)
            respond_not_allowed(c, "POST");
        else if (m == HTTP_POST)
            demo_session_create(d, c, req, seg[1], seg[3], seg[5]);
        else if (m == HTTP_GET || m == HTTP_DELETE)
            demo_session_one(d, c, req, seg[1], seg[3], seg[5]);
        else
            respond_not_allowed(c, "GET, POST, DELETE");
    } else {
        respond_detail(c, 404, "Not Found", NULL);
    }
}

/* ---- lifecycle ---------------------------------------------------------- */

/* Creates an agent listening on cfg's host:port on loop. Returns 0 and
 * *out, or a negative errno from server_start() (nothing is left open). */
static int demo_create(uv_loop_t *loop, const struct demo_config *cfg, struct demo **out)
{
    struct demo *d = xcalloc(1, sizeof(*d));
    d->loop = loop;
    d->word_delay_ms = cfg->word_delay_ms;
    d->rng = uv_hrtime() ^ ((uint64_t)(uintptr_t)d << 16) ^ (uint64_t)getpid();
    session_table_init(&d->sessions);
    list_init(&d->runs);
    struct server_config sc = {
        .host = cfg->host,
        .port = cfg->port,
        .max_header = 16 * 1024,
        .max_body = 1024 * 1024,
        .head_timeout_ms = 10000,
        .keepalive_timeout_ms = 60000,
    };
    int rc = server_start(loop, &sc, demo_on_request, d, &d->server);
    if (rc != 0) {
        session_table_free(&d->sessions);
        free(d);
        return rc;
    }
    *out = d;
    return 0;
}

static void demo_on_server_closed(void *arg)
{
    struct demo *d = arg;
    d->server = NULL;
}

/* Starts stopping: releases every run and closes the server (and with it
 * every connection). The loop runs out once the close callbacks are done;
 * then demo_destroy(). Safe to call twice. */
static void demo_stop(struct demo *d)
{
    if (d->stopping)
        return;
    d->stopping = 1;
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &d->runs) {
        struct demo_run *run = container_of(pos, struct demo_run, node);
        if (!run->stream_begun)
            run->conn = NULL; /* never answered: server_close() takes the conn */
        call_set_state(call_get(d, run->call_id), CALL_CLIENT_GONE);
        run_release(run);
        run_maybe_free(run);
    }
    server_close(d->server, demo_on_server_closed, d);
}

/* Frees a stopped agent after its loop has run out. */
static void demo_destroy(struct demo *d)
{
    session_table_free(&d->sessions);
    calls_free(d);
    free(d);
}

static void format_address(char *out, size_t size, const char *host, int port)
{
    if (strchr(host, ':'))
        snprintf(out, size, "[%s]:%d", host, port);
    else
        snprintf(out, size, "%s:%d", host, port);
}

static void log_listening(const char *host, int port)
{
    char address[300];
    format_address(address, sizeof(address), host, port);
    log_event(LOG_INFO, "demo.listening", "address", address, NULL);
}

/* ---- the embedded agent's thread --------------------------------------- */

/* The one embedded agent. The loop and the thread belong to the caller of
 * demo_start_thread(); everything the loop holds belongs to the thread. */
static struct {
    int running;
    uv_thread_t thread;
    uv_loop_t loop;
    uv_async_t stop_async;
    uv_sem_t ready;
    struct demo_config cfg;
    int port; /* set by the thread before it posts ready */
    int err;
    struct demo *demo;
} demo_thread;

static void demo_thread_on_stop(uv_async_t *async)
{
    demo_stop(demo_thread.demo);
    uv_close((uv_handle_t *)async, NULL);
}

static void demo_thread_main(void *arg)
{
    int rc = demo_create(&demo_thread.loop, &demo_thread.cfg, &demo_thread.demo);
    if (rc == 0)
        rc = uv_async_init(&demo_thread.loop, &demo_thread.stop_async, demo_thread_on_stop);
    if (rc != 0) {
        if (demo_thread.demo)
            demo_stop(demo_thread.demo);
        uv_run(&demo_thread.loop, UV_RUN_DEFAULT); /* let close callbacks run */
        if (demo_thread.demo)
            demo_destroy(demo_thread.demo);
        demo_thread.demo = NULL;
        demo_thread.err = rc;
        uv_sem_post(&demo_thread.ready);
        return;
    }
    demo_thread.port = server_port(demo_thread.demo->server);
    log_listening(demo_thread.cfg.host, demo_thread.port);
    uv_sem_post(&demo_thread.ready);
    uv_run(&demo_thread.loop, UV_RUN_DEFAULT);
    demo_destroy(demo_thread.demo);
    demo_thread.demo = NULL;
    log_event(LOG_INFO, "demo.stopped", NULL);
}

int demo_start_thread(const struct demo_config *cfg, int *port_out)
{
    if (demo_thread.running)
        return -EALREADY;
    memset(&demo_thread, 0, sizeof(demo_thread));
    demo_thread.cfg = *cfg;
    demo_thread.cfg.host[sizeof(demo_thread.cfg.host) - 1] = '\0';
    int rc = uv_loop_init(&demo_thread.loop);
    if (rc != 0)
        return rc;
    rc = uv_sem_init(&demo_thread.ready, 0);
    if (rc != 0) {
        uv_loop_close(&demo_thread.loop);
        return rc;
    }
    json_object_seed(0); /* jansson's one global, set before a second thread uses it */
    rc = uv_thread_create(&demo_thread.thread, demo_thread_main, NULL);
    if (rc != 0) {
        uv_sem_destroy(&demo_thread.ready);
        uv_loop_close(&demo_thread.loop);
        return rc;
    }
    uv_sem_wait(&demo_thread.ready);
    uv_sem_destroy(&demo_thread.ready);
    if (demo_thread.err != 0) {
        uv_thread_join(&demo_thread.thread);
        uv_loop_close(&demo_thread.loop);
        return demo_thread.err;
    }
    demo_thread.running = 1;
    *port_out = demo_thread.port;
    return 0;
}

void demo_stop_thread(void)
{
    if (!demo_thread.running)
        return;
    uv_async_send(&demo_thread.stop_async);
    uv_thread_join(&demo_thread.thread);
    uv_loop_close(&demo_thread.loop);
    demo_thread.running = 0;
}

/* ---- `runcast demo-agent` ------------------------------------------------ */

struct demo_fg {
    struct demo *demo;
    uv_signal_t sigint, sigterm;
};

static void demo_fg_on_signal(uv_signal_t *sig, int signum)
{
    struct demo_fg *fg = sig->data;
    log_event(LOG_INFO, "demo.stopping", "signal", signum == SIGINT ? "SIGINT" : "SIGTERM",
              NULL);
    demo_stop(fg->demo);
    if (!uv_is_closing((uv_handle_t *)&fg->sigint))
        uv_close((uv_handle_t *)&fg->sigint, NULL);
    if (!uv_is_closing((uv_handle_t *)&fg->sigterm))
        uv_close((uv_handle_t *)&fg->sigterm, NULL);
}

static void demo_usage(FILE *out)
{
    fprintf(out, "usage: runcast demo-agent [--listen HOST:PORT] [--word-delay D]\n");
}

/* Reads the value of a "--name VALUE" or "--name=VALUE" flag at argv[*i].
 * Returns the value, or NULL when argv[*i] is not this flag; sets *missing
 * when the flag has no value. */
static const char *flag_value(int argc, char **argv, int *i, const char *name, int *missing)
{
    size_t n = strlen(name);
    const char *a = argv[*i];
    if (strncmp(a, name, n) != 0)
        return NULL;
    if (a[n] == '=')
        return a + n + 1;
    if (a[n] != '\0')
        return NULL;
    if (*i + 1 >= argc) {
        *missing = 1;
        return NULL;
    }
    return argv[++*i];
}

int demo_main(int argc, char **argv)
{
    struct demo_config cfg = {.host = "127.0.0.1", .port = 8001,
                              .word_delay_ms = DEMO_DEFAULT_WORD_DELAY_MS};
    int i = 1;
    if (i < argc && strcmp(argv[i], "demo-agent") == 0)
        i++; /* called with the whole command line */
    for (; i < argc; i++) {
        int missing = 0;
        const char *v;
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            demo_usage(stdout);
            return 0;
        } else if ((v = flag_value(argc, argv, &i, "--listen", &missing)) != NULL) {
            if (config_parse_listen(v, cfg.host, sizeof(cfg.host), &cfg.port) != 0) {
                fprintf(stderr, "runcast demo-agent: bad --listen value '%s' (want HOST:PORT)\n", v);
                return 2;
            }
        } else if ((v = flag_value(argc, argv, &i, "--word-delay", &missing)) != NULL) {
            if (config_parse_duration_ms(v, &cfg.word_delay_ms) != 0) {
                fprintf(stderr, "runcast demo-agent: bad --word-delay value '%s' (e.g. 50ms, 0.2, 1s)\n", v);
                return 2;
            }
        } else if (missing) {
            fprintf(stderr, "runcast demo-agent: %s needs a value\n", argv[i]);
            return 2;
        } else {
            fprintf(stderr, "runcast demo-agent: unknown argument '%s' (try --help)\n", argv[i]);
            return 2;
        }
    }

    signal(SIGPIPE, SIG_IGN);
    uv_loop_t *loop = uv_default_loop();
    struct demo_fg fg = {0};
    int rc = demo_create(loop, &cfg, &fg.demo);
    if (rc != 0) {
        char address[300];
        format_address(address, sizeof(address), cfg.host, cfg.port);
        fprintf(stderr, "runcast demo-agent: cannot listen on %s: %s\n", address, uv_strerror(rc));
        uv_run(loop, UV_RUN_DEFAULT);
        uv_loop_close(loop);
        return 1;
    }
    uv_signal_init(loop, &fg.sigint);
    uv_signal_init(loop, &fg.sigterm);
    fg.sigint.data = fg.sigterm.data = &fg;
    uv_signal_start(&fg.sigint, demo_fg_on_signal, SIGINT);
    uv_signal_start(&fg.sigterm, demo_fg_on_signal, SIGTERM);
    log_listening(cfg.host, server_port(fg.demo->server));
    uv_run(loop, UV_RUN_DEFAULT);
    demo_destroy(fg.demo);
    uv_loop_close(loop);
    log_event(LOG_INFO, "demo.stopped", NULL);
    return 0;
}
