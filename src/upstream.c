/* upstream.c: calls to the agent service (ADK api_server): the call state
 * machine, session creation, /run_sse, retries, timeouts and error mapping
 * (see upstream.h). Transfers run on a curl_uv (curl_uv.c: libcurl's multi
 * interface on the libuv loop); frames are checked by frame_scan.c.
 *
 * Safe points. curl_uv's rule is that nothing is torn down inside a libcurl
 * callback, and a caller's callback must be able to do anything, including
 * cancelling its call or starting another. So nothing is torn down where it
 * is decided: a call whose outcome is known (or that was cancelled) is marked
 * and its service task is deferred (curl_uv_defer); the task runs outside any
 * libcurl callback: it removes the easy handle, runs on_end (ended calls
 * only), then closes the call's timer and frees the call in the close
 * callback. Bytes that arrive for a marked call are swallowed (the write
 * callback always returns the full length; it never aborts the transfer
 * itself). The same task also runs work that must not happen inside libcurl:
 * a transfer started while libcurl is on the stack (say,
 * upstream_call_start() from an on_event callback) and the on_request_sent
 * notification.
 *
 * When is a request "sent"? When its easy handle is handed to libcurl
 * (curl_uv_add of the first /run_sse attempt). The notification
 * itself runs from the service task (or, at the latest, just before the
 * first response byte is reported), so no callback ever runs before
 * upstream_call_start() has returned: run.c always holds the call pointer
 * when it hears from it. Only the first /run_sse attempt is reported;
 * retries after a 404 or 429/503 are not.
 *
 * Timeouts. connect: libcurl's CURLOPT_CONNECTTIMEOUT_MS (no other libcurl
 * timeout is set, so CURLE_OPERATION_TIMEDOUT always means "connect"); 0
 * leaves libcurl's own default (300 s). first_event, idle and total: one
 * uv_timer_t per call, armed for the nearest deadline; moving a deadline
 * later (a byte arrived) does not re-arm it: the timer recomputes when it
 * fires. idle applies to the create-session request from the moment it is
 * handed to libcurl, and to /run_sse once its response has started; before
 * the first event, the first_event deadline (request sent -> first event)
 * applies too, and the nearer one wins.
 *
 * Draining. Python ADK aborts a run when its client disconnects; ADK JS 2.0.0
 * does not: it runs the abandoned run to its end and appends its events to
 * the ADK session, so a next run of that session started at once writes the
 * session together with it. upstream_call_drain() therefore keeps a sent
 * /run_sse open (CALL_DRAINING: nothing reaches the caller any more, bytes
 * are swallowed) until its body ends or drain_ms passes, and the call is
 * filed in up.drains under its session; a call started for that session
 * meanwhile waits on the drain's list without sending anything, and is
 * started by the drain's teardown, once the old connection is closed.
 *
 * Ownership: the module state (struct upstream_module) is owned by
 * upstream_init()/upstream_shutdown(). A call is owned by this module: it is
 * freed from its timer's close callback after on_end (or after a cancel).
 */
#include "upstream.h"

#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <time.h>

#include "curl_uv.h"
#include "frame_scan.h"
#include "json_text.h"
#include "log.h"
#include "sse.h"
#include "table.h"

#define EXCERPT_BYTES 200
#define DEFAULT_MAX_EVENT_BYTES (1024 * 1024)
#define NO_DEADLINE UINT64_MAX
#define RETRY_AFTER_CAP_MS (24ull * 3600 * 1000)
#define CREATE_ANSWER_MAX (64 * 1024) /* a create-session answer kept to read its id */

enum call_state {
    CALL_ACTIVE = 0, /* running: transfers, backoff waits, the wait for a drain */
    CALL_ENDING,     /* outcome recorded; teardown and on_end are queued */
    CALL_DRAINING,   /* let go (no callback ever again), its /run_sse read to the end */
    CALL_CANCELLED,  /* cancelled: teardown queued, no callback ever again */
    CALL_CLOSING,    /* torn down; the timer is closing, then the call is freed */
};

/* The requests of a call, in the order they are tried. Creating a session
 * tries the path form first: ADK JS honours only that one (it ignores a
 * sessionId in the body and makes up an id), Python ADK honours both (the
 * path form is deprecated there). A server without the path form answers
 * 404/405, and the body form follows. */
enum call_step {
    STEP_CREATE_BY_PATH = 0, /* POST …/sessions/{session} {} */
    STEP_CREATE_BY_BODY,     /* POST …/sessions {"sessionId": …} */
    STEP_RUN,                /* POST /run_sse */
    STEP_COUNT,
};

/* One request, serialised once when the call starts. */
struct upstream_post {
    char *url;
    char *body;
};

/* What the body of the current response is for, decided at the end of its
 * headers. */
enum body_mode {
    BODY_PENDING = 0, /* headers not finished yet */
    BODY_DISCARD,     /* nobody reads it (a retry is coming) */
    BODY_EXCERPT,     /* an error answer: keep its first bytes for the message */
    BODY_KEEP,        /* a create-session answer: keep it (bounded) to judge it */
    BODY_STREAM,      /* 2xx text/event-stream: parse and relay */
};

/* What to do when the current transfer finishes. */
enum verdict {
    VERDICT_NONE = 0,
    VERDICT_CREATED,       /* a create-session answer: judged with its body */
    VERDICT_RETRY_404,     /* /run_sse said 404: create the session, retry once */
    VERDICT_RETRY_LATER,   /* 429/503 with retries left: wait, retry */
    VERDICT_HTTP,          /* end UPSTREAM_HTTP with an excerpt */
    VERDICT_RATE_LIMITED,  /* end UPSTREAM_RATE_LIMITED with an excerpt */
    VERDICT_STREAM,        /* the event stream; its end is the end of the run */
};

struct upstream_call {
    struct curl_uv_task service; /* deferred teardown and starts (service_call) */
    enum call_state state;
    struct upstream_callbacks cb;
    void *arg;

    char *session;                     /* the id asked for (owned) */
    struct upstream_post post[STEP_COUNT]; /* owned */

    enum call_step step;
    int retried_404;     /* the one create-and-retry after a 404 was used */
    int rate_retries;    /* 429/503 retries done */
    int sent_reported;   /* on_request_sent was scheduled (first /run_sse only) */
    int sent_pending;    /* ... and has not run yet */
    int start_deferred;  /* the next transfer waits for the service task */
    int got_first_event;
    json_t *error_event; /* {"errorCode","errorMessage"} of the first event with one */

    /* The current transfer (easy == NULL between transfers). */
    CURL *easy;
    char errbuf[CURL_ERROR_SIZE];
    int response_started; /* a response byte arrived */
    int headers_done;     /* the final (non-1xx) header block ended */
    enum body_mode mode;
    enum verdict verdict;
    char content_type[128];
    int64_t retry_after_ms; /* -1: no Retry-After */
    uint64_t retry_wait_ms; /* VERDICT_RETRY_LATER: how long to wait */
    struct buf excerpt;
    struct sse_parser parser;
    int parser_live;

    /* Deadlines, in uv_now() milliseconds. */
    uint64_t start_ms;      /* upstream_call_start */
    uint64_t sent_ms;       /* the current /run_sse attempt was handed to libcurl */
    uint64_t last_rx_ms;    /* last byte received (or the transfer's start) */
    uint64_t backoff_until_ms; /* NO_DEADLINE unless waiting to retry */
    uv_timer_t timer;

    struct upstream_result result; /* result.detail owned until teardown */

    /* Draining (upstream_call_drain): filed in up.drains under its session's
     * key (post[STEP_CREATE_BY_PATH].url names app, user and session) until
     * teardown; waiters holds the same session's calls started meanwhile,
     * linked by their wait_link, until then. */
    struct table_entry drain_entry;
    int in_drains;
    uint64_t drain_start_ms;
    struct list waiters;
    struct list wait_link; /* linked while this call waits for a drain */
};

/* The module: one curl_uv (one multi handle) on one loop. */
static struct upstream_module {
    int initialized;
    uv_loop_t *loop;
    struct upstream_config cfg;
    char *base_url;
    struct curl_uv *curl; /* NULL once shutdown has closed it */
    size_t calls;         /* allocated calls, closing ones included */
    struct table drains;  /* draining calls by session key (drain_entry) */
    /* The request headers, the same for every call: built once, not per
     * call (six allocations each run start saves). */
    struct curl_slist *create_headers, *run_headers;
    int shutting_down;
    void (*done)(void *arg);
    void *done_arg;
    uint64_t rng;
} up;

static void call_timer_cb(uv_timer_t *timer);
static struct curl_slist *make_headers(const char *accept);
static void attempt_begin(struct upstream_call *call);
static void maybe_finish_shutdown(void);

/* ---- small helpers ---- */

static uint64_t now_ms(void)
{
    return uv_now(up.loop);
}

/* xorshift64*: jitter only, no need for quality. */
static double random_unit(void)
{
    up.rng ^= up.rng >> 12;
    up.rng ^= up.rng << 25;
    up.rng ^= up.rng >> 27;
    return (double)((up.rng * 2685821657736338717ull) >> 11) / (double)(1ull << 53);
}

/* retry_backoff_ms * 2^k, with +-20% jitter. */
static uint64_t backoff_ms(int k)
{
    if (k > 20)
        k = 20;
    double base = (double)up.cfg.retry_backoff_ms * (double)(1ull << k);
    return (uint64_t)(base * (0.8 + 0.4 * random_unit()));
}

/* Copies text into out (size n), replacing control bytes by spaces so that a
 * body excerpt cannot break a log line, and trimming trailing blanks. */
static void copy_printable(char *out, size_t n, const char *text, size_t len)
{
    size_t j = 0;
    for (size_t i = 0; i < len && j + 1 < n; i++) {
        unsigned char c = (unsigned char)text[i];
        out[j++] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
    }
    while (j > 0 && out[j - 1] == ' ')
        j--;
    out[j] = '\0';
}

static int is_connect_error(CURLcode res)
{
    switch (res) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
        return 1;
    default:
        return 0;
    }
}

/* ---- ending a call ---- */

/* Records the outcome and queues the teardown; on_end runs from the service
 * queue. Only the first outcome counts. Safe from any libcurl callback. */
static void finish(struct upstream_call *call, enum upstream_outcome outcome,
                   const char *phase, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void finish(struct upstream_call *call, enum upstream_outcome outcome,
                   const char *phase, const char *fmt, ...)
{
    if (call->state != CALL_ACTIVE)
        return;
    call->state = CALL_ENDING;
    call->result.outcome = outcome;
    call->result.phase = phase;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(call->result.message, sizeof(call->result.message), fmt, ap);
    va_end(ap);
    uv_timer_stop(&call->timer);
    curl_uv_defer(up.curl, &call->service);
}

/* Ends with the current error answer: UPSTREAM_HTTP or UPSTREAM_RATE_LIMITED,
 * its status and the first bytes of its body. */
static void finish_with_excerpt(struct upstream_call *call)
{
    char excerpt[EXCERPT_BYTES + 1];
    copy_printable(excerpt, sizeof(excerpt), call->excerpt.data ? call->excerpt.data : "",
                   call->excerpt.len);
    long status = call->result.status;
    if (call->verdict == VERDICT_RATE_LIMITED)
        finish(call, UPSTREAM_RATE_LIMITED, NULL, "upstream answered %ld after %d attempts: %s",
               status, call->rate_retries + 1, excerpt);
    else
        finish(call, UPSTREAM_HTTP, NULL, "upstream answered %ld: %s", status, excerpt);
}

/* ---- the current transfer ---- */

/* Removes and frees the current easy handle. Never from a libcurl callback. */
static void transfer_release(struct upstream_call *call)
{
    if (call->easy != NULL) {
        curl_uv_remove(up.curl, call->easy);
        call->easy = NULL;
    }
    if (call->parser_live) {
        sse_parser_free(&call->parser);
        call->parser_live = 0;
    }
    buf_reset(&call->excerpt);
}

/* ---- draining ---- */

/* The draining call of call's session (it may be cut already and wait for
 * its teardown), or NULL. */
static struct upstream_call *drain_find(const struct upstream_call *call)
{
    const char *key = call->post[STEP_CREATE_BY_PATH].url;
    struct table_entry *e = table_find(&up.drains, key, strlen(key));
    return e ? container_of(e, struct upstream_call, drain_entry) : NULL;
}

/* Ends a drain: its response is over (cut_reason NULL), or it is cut now
 * (past drain_ms, shutdown). The service task then closes the connection
 * and lets the session's waiting calls go (drain_release). Leaves up.drains
 * as it is, so it may run while iterating over it. */
static void drain_end(struct upstream_call *call, const char *cut_reason)
{
    char ms[24];
    snprintf(ms, sizeof(ms), "%llu", (unsigned long long)(now_ms() - call->drain_start_ms));
    if (cut_reason)
        log_event(LOG_WARN, "upstream.drain_cut", "session", call->session, "after_ms", ms,
                  "reason", cut_reason, NULL);
    else
        log_event(LOG_INFO, "upstream.drained", "session", call->session, "after_ms", ms, NULL);
    call->state = CALL_CANCELLED;
    uv_timer_stop(&call->timer);
    curl_uv_defer(up.curl, &call->service);
}

/* From teardown, once call's connection is closed: a waiting call leaves
 * its drain's list; a drained call leaves up.drains and starts the calls
 * that waited for it (those still active: a waiter that ended meanwhile
 * sends nothing). */
static void drain_release(struct upstream_call *call)
{
    if (list_linked(&call->wait_link))
        list_remove(&call->wait_link);
    if (!call->in_drains)
        return;
    table_remove(&up.drains, &call->drain_entry);
    call->in_drains = 0;
    while (!list_empty(&call->waiters)) {
        struct upstream_call *waiter = container_of(call->waiters.next, struct upstream_call,
                                                    wait_link);
        list_remove(&waiter->wait_link);
        if (waiter->state == CALL_ACTIVE)
            attempt_begin(waiter);
    }
}

/* ---- timers ---- */

/* The deadlines a call can wait for; the timed-out ones name the phase
 * reported in upstream_result.phase. */
enum deadline_kind {
    DEADLINE_NONE = 0,
    DEADLINE_TOTAL,       /* run_timeout_ms since upstream_call_start */
    DEADLINE_FIRST_EVENT, /* first_event_timeout_ms since /run_sse was sent */
    DEADLINE_IDLE,        /* idle_timeout_ms since the last byte */
    DEADLINE_BACKOFF,     /* the wait before a 429/503 retry is over */
};

/* The nearest deadline of the call (NO_DEADLINE if none) and its kind. */
static uint64_t nearest_deadline(const struct upstream_call *call, enum deadline_kind *kind)
{
    uint64_t best = NO_DEADLINE;
    *kind = DEADLINE_NONE;
#define CONSIDER(deadline, k) do { \
        uint64_t d_ = (deadline); \
        if (d_ < best) { best = d_; *kind = (k); } \
    } while (0)
    if (up.cfg.run_timeout_ms)
        CONSIDER(call->start_ms + up.cfg.run_timeout_ms, DEADLINE_TOTAL);
    if (call->easy != NULL) {
        if (call->step == STEP_RUN && !call->got_first_event && up.cfg.first_event_timeout_ms)
            CONSIDER(call->sent_ms + up.cfg.first_event_timeout_ms, DEADLINE_FIRST_EVENT);
        if (up.cfg.idle_timeout_ms && (call->step != STEP_RUN || call->response_started))
            CONSIDER(call->last_rx_ms + up.cfg.idle_timeout_ms, DEADLINE_IDLE);
    }
    if (call->backoff_until_ms != NO_DEADLINE)
        CONSIDER(call->backoff_until_ms, DEADLINE_BACKOFF);
#undef CONSIDER
    return best;
}

/* Arms the call's timer for its nearest deadline. Call after a deadline
 * appears or moves earlier; a deadline moving later needs nothing. */
static void timer_rearm(struct upstream_call *call)
{
    enum deadline_kind kind;
    uint64_t deadline = nearest_deadline(call, &kind);
    if (deadline == NO_DEADLINE) {
        uv_timer_stop(&call->timer);
        return;
    }
    uint64_t now = now_ms();
    uv_timer_start(&call->timer, call_timer_cb, deadline > now ? deadline - now : 0, 0);
}

/* The call's timer: retries after a backoff, or ends the call with the
 * deadline that passed; re-arms when the nearest deadline moved later. */
static void call_timer_cb(uv_timer_t *timer)
{
    struct upstream_call *call = container_of(timer, struct upstream_call, timer);
    if (call->state == CALL_DRAINING) {
        drain_end(call, "drain_limit");
        return;
    }
    if (call->state != CALL_ACTIVE)
        return;
    enum deadline_kind kind;
    uint64_t deadline = nearest_deadline(call, &kind);
    if (deadline == NO_DEADLINE)
        return;
    if (deadline > now_ms()) {
        timer_rearm(call);
        return;
    }
    switch (kind) {
    case DEADLINE_BACKOFF:
        call->backoff_until_ms = NO_DEADLINE;
        attempt_begin(call);
        return;
    case DEADLINE_TOTAL:
        finish(call, UPSTREAM_TIMED_OUT, "total", "the run took longer than %llu ms",
               (unsigned long long)up.cfg.run_timeout_ms);
        return;
    case DEADLINE_FIRST_EVENT:
        finish(call, UPSTREAM_TIMED_OUT, "first_event", "no event from the upstream within %llu ms",
               (unsigned long long)up.cfg.first_event_timeout_ms);
        return;
    case DEADLINE_IDLE:
    case DEADLINE_NONE:
        finish(call, UPSTREAM_TIMED_OUT, "idle", "the upstream sent nothing for %llu ms",
               (unsigned long long)up.cfg.idle_timeout_ms);
        return;
    }
}

/* ---- callbacks to the caller ---- */

/* Delivers a pending on_request_sent. Returns 0 if the call is still active. */
static int deliver_request_sent(struct upstream_call *call)
{
    if (call->sent_pending && call->state != CALL_CANCELLED) {
        call->sent_pending = 0;
        if (call->cb.on_request_sent)
            call->cb.on_request_sent(call->arg);
    }
    return call->state == CALL_ACTIVE ? 0 : -1;
}

/* ---- response parsing (libcurl callbacks: mark, never tear down) ---- */

static int content_type_is_event_stream(const char *ct)
{
    static const char want[] = "text/event-stream";
    size_t n = sizeof(want) - 1;
    if (strncasecmp(ct, want, n) != 0)
        return 0;
    char c = ct[n];
    return c == '\0' || c == ';' || c == ' ' || c == '\t';
}

static void parse_retry_after(struct upstream_call *call, const char *value)
{
    if (*value >= '0' && *value <= '9') {
        char *end;
        unsigned long long seconds = strtoull(value, &end, 10);
        uint64_t ms = seconds >= RETRY_AFTER_CAP_MS / 1000 ? RETRY_AFTER_CAP_MS : seconds * 1000;
        call->retry_after_ms = (int64_t)ms;
        return;
    }
    time_t when = curl_getdate(value, NULL);
    if (when == (time_t)-1)
        return;
    time_t now = time(NULL);
    int64_t ms = when > now ? (int64_t)(when - now) * 1000 : 0;
    call->retry_after_ms = ms > (int64_t)RETRY_AFTER_CAP_MS ? (int64_t)RETRY_AFTER_CAP_MS : ms;
}

/* Decides what a /run_sse response means, at the end of its headers. */
static void judge_run_response(struct upstream_call *call, long status)
{
    if (status >= 200 && status < 300) {
        if (!content_type_is_event_stream(call->content_type)) {
            finish(call, UPSTREAM_PROTOCOL, NULL, "unexpected content type \"%s\" from the upstream",
                   call->content_type);
            return;
        }
        call->mode = BODY_STREAM;
        call->verdict = VERDICT_STREAM;
        size_t max = up.cfg.max_event_bytes ? up.cfg.max_event_bytes : DEFAULT_MAX_EVENT_BYTES;
        sse_parser_init(&call->parser, max);
        call->parser_live = 1;
        return;
    }
    if (status == 404 && !call->retried_404) {
        call->mode = BODY_DISCARD;
        call->verdict = VERDICT_RETRY_404;
        return;
    }
    if (status == 429 || status == 503) {
        if (call->rate_retries < up.cfg.retries) {
            uint64_t wait = call->retry_after_ms >= 0 ? (uint64_t)call->retry_after_ms
                                                      : backoff_ms(call->rate_retries);
            uint64_t deadline = call->start_ms + up.cfg.run_timeout_ms;
            if (up.cfg.run_timeout_ms == 0 || now_ms() + wait < deadline) {
                call->mode = BODY_DISCARD;
                call->verdict = VERDICT_RETRY_LATER;
                call->retry_wait_ms = wait;
                return;
            }
        }
        call->mode = BODY_EXCERPT;
        call->verdict = VERDICT_RATE_LIMITED;
        return;
    }
    call->mode = BODY_EXCERPT;
    call->verdict = VERDICT_HTTP;
}

static void end_of_headers(struct upstream_call *call)
{
    long status = 0;
    curl_easy_getinfo(call->easy, CURLINFO_RESPONSE_CODE, &status);
    if (status >= 100 && status < 200)
        return; /* an interim response; the real one follows */
    call->headers_done = 1;
    call->result.status = status;
    if (call->step != STEP_RUN) {
        call->mode = BODY_KEEP;
        call->verdict = VERDICT_CREATED;
        return;
    }
    judge_run_response(call, status);
}

/* CURLOPT_HEADERFUNCTION: one header line at a time, status lines included. */
static size_t on_header(char *data, size_t size, size_t nitems, void *userp)
{
    struct upstream_call *call = userp;
    size_t len = size * nitems;
    if (call->state != CALL_ACTIVE)
        return len;
    call->last_rx_ms = now_ms();
    if (!call->response_started) {
        call->response_started = 1;
        timer_rearm(call); /* the idle deadline starts now */
    }
    if (deliver_request_sent(call) < 0 || call->headers_done)
        return len; /* trailers after the body are of no interest */
    if (len >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        call->content_type[0] = '\0';
        call->retry_after_ms = -1;
        return len;
    }
    if ((len == 2 && data[0] == '\r' && data[1] == '\n') || (len == 1 && data[0] == '\n')) {
        end_of_headers(call);
        return len;
    }
    const char *colon = memchr(data, ':', len);
    if (colon == NULL)
        return len;
    size_t name_len = (size_t)(colon - data);
    const char *v = colon + 1, *end = data + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
        end--;
    size_t vlen = (size_t)(end - v);
    if (str_ieq(data, name_len, "content-type")) {
        if (vlen >= sizeof(call->content_type))
            vlen = sizeof(call->content_type) - 1;
        memcpy(call->content_type, v, vlen);
        call->content_type[vlen] = '\0';
    } else if (str_ieq(data, name_len, "retry-after")) {
        char value[64];
        copy_printable(value, sizeof(value), v, vlen);
        parse_retry_after(call, value);
    }
    return len;
}

/* An old ADK builds its error frame with string formatting: keep the raw text
 * as {"error": "<text>"}. */
static json_t *raw_error_detail(const char *data, size_t len)
{
    json_t *text = json_stringn(data, len);
    if (text == NULL) { /* not UTF-8: keep what is ASCII */
        char *copy = xstrndup(data, len);
        for (size_t i = 0; i < len; i++)
            if ((unsigned char)copy[i] >= 0x80 || copy[i] == '\0')
                copy[i] = '?';
        text = json_stringn(copy, len);
        free(copy);
    }
    json_t *detail = json_object();
    json_object_set_new(detail, "error", text ? text : json_string(""));
    return detail;
}

static int starts_with_error_key(const char *data, size_t len)
{
    static const char prefix[] = "{\"error\"";
    size_t i = 0;
    while (i < len && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r'))
        i++;
    return len - i >= sizeof(prefix) - 1 && memcmp(data + i, prefix, sizeof(prefix) - 1) == 0;
}

/* An ordinary event that carries an ADK error (a model error: ADK JS and
 * Python ADK both send it as an event with errorCode/errorMessage, then end
 * the stream normally). The event is relayed like any other; the first such
 * error is kept and fails the run when the stream ends (stream_ended). */
static void note_error_event(struct upstream_call *call, json_t *frame)
{
    json_t *code = json_object_get(frame, "errorCode");
    json_t *message = json_object_get(frame, "errorMessage");
    if (code != NULL && json_is_null(code))
        code = NULL;
    if (message != NULL && json_is_null(message))
        message = NULL;
    if (call->error_event != NULL || (code == NULL && message == NULL))
        return;
    call->error_event = json_object();
    if (code != NULL)
        json_object_set(call->error_event, "errorCode", code);
    if (message != NULL)
        json_object_set(call->error_event, "errorMessage", message);
}

/* sse_event_cb: one upstream frame. Returns nonzero to stop the parser once
 * the call is no longer active (ended by this frame or cancelled by on_event). */
static int on_sse_event(void *arg, const struct sse_event *ev)
{
    struct upstream_call *call = arg;
    if (call->state != CALL_ACTIVE)
        return 1;
    call->got_first_event = 1;
    /* Most frames are plain objects: relay them without building a tree
     * (jansson's allocations were a tenth of runcast's CPU in fan-out). */
    if (frame_scan_is_plain_object(ev->data, ev->data_len))
        goto relay;
    json_error_t error;
    json_t *frame = json_loadb(ev->data, ev->data_len, JSON_DECODE_ANY, &error);
    if (frame == NULL) {
        if (starts_with_error_key(ev->data, ev->data_len)) {
            call->result.detail = raw_error_detail(ev->data, ev->data_len);
            char text[160];
            copy_printable(text, sizeof(text), ev->data, ev->data_len);
            finish(call, UPSTREAM_AGENT_ERROR, NULL, "agent error: %s", text);
        } else {
            finish(call, UPSTREAM_PROTOCOL, NULL, "upstream sent a frame that is not JSON");
        }
        return 1;
    }
    if (!json_is_object(frame)) {
        json_decref(frame);
        finish(call, UPSTREAM_PROTOCOL, NULL, "upstream sent a frame that is not a JSON object");
        return 1;
    }
    if (json_object_size(frame) == 0) {
        /* ADK JS's error frame when something that is not an Error was thrown. */
        call->result.detail = frame;
        finish(call, UPSTREAM_AGENT_ERROR, NULL, "agent error: the agent failed without a message");
        return 1;
    }
    json_t *err = json_object_get(frame, "error");
    if (err != NULL && !json_is_null(err) && json_object_get(frame, "content") == NULL) {
        call->result.detail = frame;
        char text[160];
        if (json_is_string(err))
            copy_printable(text, sizeof(text), json_string_value(err), json_string_length(err));
        else
            snprintf(text, sizeof(text), "(non-text error)");
        finish(call, UPSTREAM_AGENT_ERROR, NULL, "agent error: %s", text);
        return 1;
    }
    note_error_event(call, frame);
    json_decref(frame);
relay:
    if (call->cb.on_event)
        call->cb.on_event(call->arg, ev->data, ev->data_len);
    return call->state == CALL_ACTIVE ? 0 : 1;
}

/* CURLOPT_WRITEFUNCTION: body bytes. Always takes everything: a call that is
 * no longer active swallows the rest until the service task removes it. */
static size_t on_body(char *data, size_t size, size_t nmemb, void *userp)
{
    struct upstream_call *call = userp;
    size_t len = size * nmemb;
    if (call->state != CALL_ACTIVE)
        return len;
    call->last_rx_ms = now_ms();
    if (deliver_request_sent(call) < 0)
        return len;
    switch (call->mode) {
    case BODY_STREAM: {
        int r = sse_parser_feed(&call->parser, data, len, on_sse_event, call);
        if (r == -E2BIG)
            finish(call, UPSTREAM_PROTOCOL, NULL, "upstream frame larger than %zu bytes",
                   call->parser.max_event_bytes);
        break;
    }
    case BODY_EXCERPT: {
        size_t room = EXCERPT_BYTES - call->excerpt.len;
        buf_append(&call->excerpt, data, len < room ? len : room);
        if (call->excerpt.len >= EXCERPT_BYTES)
            finish_with_excerpt(call); /* no need to read the rest */
        break;
    }
    case BODY_KEEP: {
        size_t room = CREATE_ANSWER_MAX - call->excerpt.len;
        buf_append(&call->excerpt, data, len < room ? len : room);
        break;
    }
    case BODY_PENDING:
    case BODY_DISCARD:
        break;
    }
    return len;
}

/* ---- starting transfers ---- */

static CURL *make_easy(struct upstream_call *call)
{
    CURL *easy = curl_uv_easy(up.curl);
    if (easy == NULL)
        return NULL;
    int run = call->step == STEP_RUN;
    const struct upstream_post *post = &call->post[call->step];
    const char *body = post->body;
    curl_easy_setopt(easy, CURLOPT_URL, post->url);
    curl_easy_setopt(easy, CURLOPT_PATH_AS_IS, 1L); /* no dot-segment squashing */
    curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(easy, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, run ? up.run_headers : up.create_headers);
    curl_easy_setopt(easy, CURLOPT_USERAGENT, "runcast");
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
    if (up.cfg.connect_timeout_ms)
        curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, (long)up.cfg.connect_timeout_ms);
    curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(easy, CURLOPT_HEADERDATA, call);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, call);
    curl_easy_setopt(easy, CURLOPT_PRIVATE, call);
    call->errbuf[0] = '\0';
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, call->errbuf);
    return easy;
}

/* Hands the transfer for call->step to libcurl. Failures end the call.
 * Never from inside a libcurl callback (see attempt_begin). */
static void attempt_start(struct upstream_call *call)
{
    call->response_started = 0;
    call->headers_done = 0;
    call->mode = BODY_PENDING;
    call->verdict = VERDICT_NONE;
    call->content_type[0] = '\0';
    call->retry_after_ms = -1;
    call->result.status = 0;
    buf_reset(&call->excerpt);

    CURL *easy = make_easy(call);
    if (easy == NULL) {
        finish(call, UPSTREAM_UNREACHABLE, NULL, "cannot create a libcurl transfer");
        return;
    }
    if (curl_uv_add(up.curl, easy) < 0) {
        curl_easy_cleanup(easy);
        finish(call, UPSTREAM_UNREACHABLE, NULL, "libcurl refused the transfer");
        return;
    }
    call->easy = easy;
    uint64_t now = now_ms();
    call->last_rx_ms = now;
    if (call->step == STEP_RUN) {
        call->sent_ms = now;
        if (!call->sent_reported) {
            call->sent_reported = 1;
            call->sent_pending = 1;
            curl_uv_defer(up.curl, &call->service);
        }
    }
    timer_rearm(call);
}

/* Starts the next transfer now, or from the service task when libcurl is on
 * the stack (curl_uv_add is not allowed there). */
static void attempt_begin(struct upstream_call *call)
{
    if (curl_uv_in_callback(up.curl)) {
        call->start_deferred = 1;
        curl_uv_defer(up.curl, &call->service);
        return;
    }
    attempt_start(call);
}

/* ---- finished transfers (outside libcurl callbacks) ---- */

/* Ends a call whose transfer failed below HTTP. Browsers get libcurl's
 * generic text for the code; its error buffer ("Failed to connect to
 * 10.0.0.5 port 8001 …") names the upstream's address and goes to the log
 * only (result.log_detail). */
static void transfer_failed(struct upstream_call *call, CURLcode res)
{
    const char *why = curl_easy_strerror(res);
    snprintf(call->result.log_detail, sizeof(call->result.log_detail), "%s",
             call->errbuf[0] ? call->errbuf : why);
    if (res == CURLE_OPERATION_TIMEDOUT) {
        finish(call, UPSTREAM_TIMED_OUT, "connect", "cannot connect to the upstream within %llu ms",
               (unsigned long long)up.cfg.connect_timeout_ms);
        return;
    }
    if (is_connect_error(res)) {
        finish(call, UPSTREAM_UNREACHABLE, NULL, "cannot reach the upstream: %s", why);
        return;
    }
    finish(call, UPSTREAM_PROTOCOL, NULL, "the upstream gave no valid response: %s", why);
}

/* The id of the session a create answer describes, or NULL when the answer
 * names none (not JSON, cut at CREATE_ANSWER_MAX, or no "id"). */
static json_t *created_id(const struct upstream_call *call)
{
    if (call->excerpt.len == 0)
        return NULL;
    json_t *answer = json_loadb(call->excerpt.data, call->excerpt.len, 0, NULL);
    json_t *id = json_incref(json_object_get(answer, "id"));
    json_decref(answer);
    if (!json_is_string(id)) {
        json_decref(id);
        return NULL;
    }
    return id;
}

/* Prepares the create-session request in the body form, POST …/sessions
 * {"sessionId": …}, when the path form was refused: its URL is the path
 * form's without the last segment. Built only then, as most calls never
 * need it (the session is ready, or the path form works). It cannot fail:
 * the session id is in the /run_sse body already, so jansson took it. */
static void prepare_create_by_body(struct upstream_call *call)
{
    struct upstream_post *post = &call->post[STEP_CREATE_BY_BODY];
    if (post->url != NULL)
        return;
    const char *by_path = call->post[STEP_CREATE_BY_PATH].url;
    post->url = xstrndup(by_path, (size_t)(strrchr(by_path, '/') - by_path));
    json_t *o = json_pack("{s:s}", "sessionId", call->session);
    post->body = json_text(o);
    json_decref(o);
}

/* Decides what a create-session answer means, with its body: the session
 * exists (go on with /run_sse), the path form is not there (try the body
 * form), or the run fails. "Already exists" is ready too: Python ADK says
 * 409 (400 in old versions), ADK JS 400 {"error": "Session already exists"}. */
static void judge_created(struct upstream_call *call)
{
    long status = call->result.status;
    int ready = 0;
    if (status >= 200 && status < 300) {
        json_t *id = created_id(call);
        if (id != NULL && strcmp(json_string_value(id), call->session) != 0) {
            char got[64];
            copy_printable(got, sizeof(got), json_string_value(id), json_string_length(id));
            json_decref(id);
            finish(call, UPSTREAM_PROTOCOL, NULL,
                   "the upstream created session \"%s\" when asked for \"%s\"", got,
                   call->session);
            return;
        }
        json_decref(id);
        ready = 1;
    } else if (status == 409) {
        ready = 1;
    } else if (status == 400) {
        ready = call->excerpt.len > 0 &&
                memmem(call->excerpt.data, call->excerpt.len, "already exists", 14) != NULL;
    } else if ((status == 404 || status == 405) && call->step == STEP_CREATE_BY_PATH) {
        transfer_release(call);
        call->step = STEP_CREATE_BY_BODY;
        prepare_create_by_body(call);
        attempt_begin(call);
        return;
    }
    if (!ready) {
        call->verdict = VERDICT_HTTP;
        if (call->excerpt.len > EXCERPT_BYTES)
            call->excerpt.len = EXCERPT_BYTES;
        finish_with_excerpt(call);
        return;
    }
    transfer_release(call);
    call->step = STEP_RUN;
    if (call->cb.on_session_ready)
        call->cb.on_session_ready(call->arg);
    if (call->state == CALL_ACTIVE)
        attempt_begin(call);
}

/* The normal end of the event stream: the run completed, unless an event on
 * the way carried an ADK error (errorCode/errorMessage), which ends it as an
 * agent error once the stream is over. */
static void stream_ended(struct upstream_call *call)
{
    if (call->error_event == NULL) {
        finish(call, UPSTREAM_COMPLETED, NULL, "upstream stream ended");
        return;
    }
    json_t *message = json_object_get(call->error_event, "errorMessage");
    if (!json_is_string(message))
        message = json_object_get(call->error_event, "errorCode");
    char text[160];
    if (json_is_string(message))
        copy_printable(text, sizeof(text), json_string_value(message), json_string_length(message));
    else
        snprintf(text, sizeof(text), "(no message)");
    call->result.detail = call->error_event;
    call->error_event = NULL;
    finish(call, UPSTREAM_AGENT_ERROR, NULL, "agent error: %s", text);
}

/* Acts on the verdict of a finished transfer: the next step, a retry, or the
 * call's outcome. Outside libcurl (from on_transfer_done), so it may release
 * the transfer and start the next one itself. */
static void transfer_done(struct upstream_call *call, CURLcode res)
{
    if (call->state == CALL_DRAINING) {
        drain_end(call, NULL);
        return;
    }
    if (call->state != CALL_ACTIVE)
        return; /* the service task removes it */
    if (!call->headers_done) {
        transfer_failed(call, res == CURLE_OK ? CURLE_GOT_NOTHING : res);
        return;
    }
    switch (call->verdict) {
    case VERDICT_CREATED:
        judge_created(call);
        return;
    case VERDICT_RETRY_404:
        transfer_release(call);
        call->retried_404 = 1;
        call->step = STEP_CREATE_BY_PATH;
        attempt_begin(call);
        return;
    case VERDICT_RETRY_LATER:
        transfer_release(call);
        call->rate_retries++;
        if (log_enabled(LOG_DEBUG)) {
            char status[24], wait[24];
            snprintf(status, sizeof(status), "%ld", call->result.status);
            snprintf(wait, sizeof(wait), "%llu", (unsigned long long)call->retry_wait_ms);
            log_event(LOG_DEBUG, "upstream.retry", "url", call->post[STEP_RUN].url, "status", status,
                      "wait_ms", wait, NULL);
        }
        call->backoff_until_ms = now_ms() + call->retry_wait_ms;
        timer_rearm(call);
        if (call->cb.on_retry)
            call->cb.on_retry(call->arg, call->result.status, call->retry_wait_ms);
        return;
    case VERDICT_HTTP:
    case VERDICT_RATE_LIMITED:
        finish_with_excerpt(call);
        return;
    case VERDICT_STREAM:
        if (res != CURLE_OK)
            finish(call, UPSTREAM_PROTOCOL, NULL, "upstream connection cut before the end of the body");
        else if (sse_parser_has_partial(&call->parser))
            finish(call, UPSTREAM_PROTOCOL, NULL, "stream ended inside a frame");
        else
            stream_ended(call);
        return;
    case VERDICT_NONE:
        break;
    }
    transfer_failed(call, res);
}

/* curl_uv_done_cb: a transfer finished. Ignores a handle that is no longer
 * its call's current one. */
static void on_transfer_done(CURL *easy, CURLcode res, void *arg)
{
    struct upstream_call *call = NULL;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&call);
    if (call != NULL && call->easy == easy)
        transfer_done(call, res);
}

/* ---- the service task: teardown and deferred work at a safe point ---- */

static void call_closed_cb(uv_handle_t *handle)
{
    struct upstream_call *call = container_of((uv_timer_t *)handle, struct upstream_call, timer);
    for (int i = 0; i < STEP_COUNT; i++) {
        free(call->post[i].url);
        free(call->post[i].body);
    }
    free(call->session);
    buf_free(&call->excerpt);
    free(call);
    up.calls--;
    maybe_finish_shutdown();
}

/* Removes the transfer (the connection closes), lets the calls waiting for
 * a drained one go, runs on_end for an ended call, closes the call. */
static void teardown(struct upstream_call *call)
{
    int ended = call->state == CALL_ENDING;
    transfer_release(call);
    drain_release(call);
    call->state = CALL_CLOSING;
    if (ended && call->cb.on_end)
        call->cb.on_end(call->arg, &call->result);
    json_decref(call->result.detail);
    call->result.detail = NULL;
    json_decref(call->error_event);
    call->error_event = NULL;
    uv_close((uv_handle_t *)&call->timer, call_closed_cb);
}

/* curl_uv_task: runs at a safe point what was deferred for the call. */
static void service_call(struct curl_uv_task *task)
{
    struct upstream_call *call = container_of(task, struct upstream_call, service);
    if (call->state == CALL_CLOSING)
        return;
    if (call->start_deferred && call->state == CALL_ACTIVE) {
        call->start_deferred = 0;
        attempt_start(call);
    }
    /* A call that ended before the notification ran still reports it first:
     * on_request_sent then on_end, never on_end alone for a sent request. */
    deliver_request_sent(call);
    if (call->state == CALL_ENDING || call->state == CALL_CANCELLED)
        teardown(call);
}

/* ---- module life ---- */

int upstream_init(uv_loop_t *loop, const struct upstream_config *cfg)
{
    if (up.initialized || loop == NULL || cfg == NULL || cfg->base_url == NULL)
        return -EINVAL;
    memset(&up, 0, sizeof(up));
    int err;
    up.curl = curl_uv_new(loop, on_transfer_done, NULL, &err);
    if (up.curl == NULL)
        return err;
    up.loop = loop;
    up.cfg = *cfg;
    up.base_url = xstrdup(cfg->base_url);
    up.cfg.base_url = up.base_url;
    up.rng = uv_hrtime() | 1;
    table_init(&up.drains);
    up.create_headers = make_headers("Accept: application/json");
    up.run_headers = make_headers("Accept: text/event-stream");
    up.initialized = 1;
    return 0;
}

static void curl_closed_cb(void *arg)
{
    void (*done)(void *) = up.done;
    void *done_arg = up.done_arg;
    free(up.base_url);
    curl_slist_free_all(up.create_headers);
    curl_slist_free_all(up.run_headers);
    table_free(&up.drains);
    memset(&up, 0, sizeof(up));
    if (done)
        done(done_arg);
}

/* Runs once no call is left: closes the curl_uv; done() runs once its
 * handles have closed. */
static void maybe_finish_shutdown(void)
{
    if (!up.shutting_down || up.calls > 0 || up.curl == NULL)
        return;
    struct curl_uv *curl = up.curl;
    up.curl = NULL;
    curl_uv_close(curl, curl_closed_cb, NULL);
}

void upstream_shutdown(void (*done)(void *arg), void *arg)
{
    if (!up.initialized || up.shutting_down)
        return;
    up.shutting_down = 1;
    up.done = done;
    up.done_arg = arg;
    /* Nothing must outlive the process's last runs by up to drain_ms. */
    table_for_each(&up.drains, e) {
        struct upstream_call *call = container_of(e, struct upstream_call, drain_entry);
        if (call->state == CALL_DRAINING)
            drain_end(call, "shutdown");
    }
    maybe_finish_shutdown();
}

size_t upstream_live_transfers(void)
{
    return up.curl != NULL ? curl_uv_transfers(up.curl) : 0;
}

/* ---- calls ---- */

static struct curl_slist *make_headers(const char *accept)
{
    struct curl_slist *h = NULL;
    h = curl_slist_append(h, "Content-Type: application/json");
    h = curl_slist_append(h, accept);
    h = curl_slist_append(h, "Expect:"); /* no 100-continue round trip */
    return h;
}

/* Serialises the /run_sse body; NULL if jansson cannot (bad input). */
static char *run_body(const struct upstream_request *req)
{
    json_t *o = json_object();
    json_object_set_new(o, "appName", json_string(req->app));
    json_object_set_new(o, "userId", json_string(req->user));
    json_object_set_new(o, "sessionId", json_string(req->session));
    json_object_set(o, "newMessage", req->new_message);
    json_object_set_new(o, "streaming", json_boolean(req->streaming));
    size_t fields = 5;
    if (req->state_delta != NULL)
        fields += json_object_set(o, "stateDelta", req->state_delta) == 0;
    if (req->custom_metadata != NULL)
        fields += json_object_set(o, "customMetadata", req->custom_metadata) == 0;
    char *text = NULL;
    if (json_object_size(o) == fields)
        text = json_text(o);
    json_decref(o);
    return text;
}

/* Appends s to url as one path segment: every byte outside RFC 3986's
 * unreserved set is percent-encoded, so no parameter can add a segment or a
 * query. ("." and ".." cannot arrive: str_is_path_param refuses them, and
 * CURLOPT_PATH_AS_IS keeps libcurl from resolving them.) */
static void url_append_segment(struct buf *url, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    buf_append(url, "/", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~') {
            buf_append(url, s, 1);
        } else {
            char esc[3] = {'%', hex[c >> 4], hex[c & 15]};
            buf_append(url, esc, 3);
        }
    }
}

/* {base}/apps/{app}/users/{user}/sessions, each parameter one segment. */
static void sessions_url(struct buf *url, const struct upstream_request *req)
{
    buf_printf(url, "%s/apps", up.base_url);
    url_append_segment(url, req->app);
    buf_printf(url, "/users");
    url_append_segment(url, req->user);
    buf_printf(url, "/sessions");
}

struct upstream_call *upstream_call_start(const struct upstream_request *req,
                                          const struct upstream_callbacks *cb, void *arg,
                                          int *err)
{
    int dummy;
    if (err == NULL)
        err = &dummy;
    if (!up.initialized || up.shutting_down) {
        *err = up.shutting_down ? -ESHUTDOWN : -EINVAL;
        return NULL;
    }
    if (req == NULL || cb == NULL || req->app == NULL || req->user == NULL ||
        req->session == NULL || req->new_message == NULL) {
        *err = -EINVAL;
        return NULL;
    }
    char *rbody = run_body(req);
    if (rbody == NULL) {
        *err = -EINVAL;
        return NULL;
    }

    struct upstream_call *call = xcalloc(1, sizeof(*call));
    list_init(&call->service.node);
    call->service.run = service_call;
    list_init(&call->waiters);
    list_init(&call->wait_link);
    call->cb = *cb;
    call->arg = arg;
    call->session = xstrdup(req->session);
    struct buf url = {0};
    sessions_url(&url, req);
    url_append_segment(&url, req->session);
    call->post[STEP_CREATE_BY_PATH] = (struct upstream_post){url.data, xstrdup("{}")};
    url = (struct buf){0};
    buf_printf(&url, "%s/run_sse", up.base_url);
    call->post[STEP_RUN] = (struct upstream_post){url.data, rbody};
    call->step = req->session_ready ? STEP_RUN : STEP_CREATE_BY_PATH;
    call->retry_after_ms = -1;
    call->backoff_until_ms = NO_DEADLINE;
    call->start_ms = now_ms();
    uv_timer_init(up.loop, &call->timer);
    up.calls++;
    struct upstream_call *drain = drain_find(call);
    if (drain != NULL) {
        /* The upstream may still be writing this session for the drained
         * run: send nothing before its end (drain_release). The total
         * deadline runs meanwhile. */
        list_insert_tail(&drain->waiters, &call->wait_link);
        timer_rearm(call);
    } else {
        attempt_begin(call);
    }
    *err = 0;
    return call;
}

void upstream_call_cancel(struct upstream_call *call)
{
    if (call == NULL || call->state == CALL_CLOSING || call->state == CALL_CANCELLED)
        return;
    call->state = CALL_CANCELLED;
    call->sent_pending = 0;
    uv_timer_stop(&call->timer);
    curl_uv_defer(up.curl, &call->service);
}

void upstream_call_drain(struct upstream_call *call)
{
    /* Only a sent /run_sse has a run upstream that could go on without us;
     * a second drain of one session cannot arise (its calls wait for the
     * first), but would close at once rather than be lost track of. */
    if (call == NULL || call->state != CALL_ACTIVE || up.cfg.drain_ms == 0 || up.shutting_down ||
        call->easy == NULL || call->step != STEP_RUN || drain_find(call) != NULL) {
        upstream_call_cancel(call);
        return;
    }
    const char *key = call->post[STEP_CREATE_BY_PATH].url;
    call->state = CALL_DRAINING;
    call->sent_pending = 0;
    call->drain_start_ms = now_ms();
    table_insert(&up.drains, &call->drain_entry, key, strlen(key));
    call->in_drains = 1;
    uv_timer_start(&call->timer, call_timer_cb, up.cfg.drain_ms, 0);
}
