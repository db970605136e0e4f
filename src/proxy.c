/* proxy.c: forwarding the routes runcast does not own to the upstream (see
 * proxy.h). A forward copies the client's request, sends it with libcurl
 * on a curl_uv of its own, and relays the answer.
 *
 * A forward's life (forward_enter() is the one place its state changes):
 *
 *   WAITING --head: no body, or a small one of known length--> BUFFERING
 *   WAITING --head: anything else--> STREAMING
 *   WAITING | BUFFERING | STREAMING --end, failure, timeout, client gone,
 *                                     shutdown--> DONE
 *
 * WAITING: the request is with libcurl; the conn owes its answer.
 * BUFFERING: the head is in and the body (at most SMALL_BODY bytes, or
 * COLLECT_MAX for a collected answer) is kept, so that a small answer goes
 * out whole with a Content-Length; the conn still owes its answer, so a
 * failure is still a 502/504. STREAMING: the head went out chunked; each
 * piece of body libcurl hands over is sent at once (an SSE stream flows
 * through unbuffered). When the client's connection has more than
 * QUEUE_HIGH bytes queued, the write callback returns CURL_WRITEFUNC_PAUSE
 * (libcurl stops reading the upstream's socket, so the upstream's own
 * writes stall) and the transfer is unpaused from the service task once
 * the queue is down to QUEUE_LOW: memory per forward stays bounded
 * whatever the answer's size. A failure after the head cuts the client's
 * connection (reset), so its chunked body is visibly incomplete.
 *
 * Safe points. As in upstream.c: nothing is torn down where it is decided,
 * since that may be inside a libcurl callback (the write or header
 * function) or inside curl_easy_pause(), which may deliver buffered bytes
 * synchronously. DONE queues the service task (curl_uv_defer), which
 * removes the easy handle and closes the timer; the forward is freed once
 * the timer has closed and every chunk write it queued has called back.
 * The unpause runs from the same task.
 *
 * Why a curl_uv of its own rather than upstream.c's: curl_uv hands every
 * finished transfer to one on_done, which knows its owner's object from
 * CURLINFO_PRIVATE; sharing would make upstream.c tell runs' transfers from
 * forwards'. Its own also shuts down on its own schedule (forwards are cut
 * before the listeners close, runs drain). The cost is a second pool of
 * upstream connections.
 *
 * Ownership: the module (struct proxy_module) by proxy_init/shutdown; a
 * forward by this module from proxy_forward_new() until freed; the conn is
 * the server's, used until the forward answered it, ended its stream, or
 * heard it close.
 */
#include "proxy.h"

#include <assert.h>
#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

#include "curl_uv.h"
#include "log.h"
#include "metrics.h"
#include "router.h"
#include "server.h"

#define SMALL_BODY (64 * 1024)   /* a known Content-Length up to this is answered whole */
#define COLLECT_MAX (64 * 1024)  /* a collected answer's body (DELETE) */
#define HEAD_MAX (64 * 1024)     /* the upstream's response head */
#define QUEUE_HIGH (128 * 1024)  /* client's queued bytes that pause the transfer */
#define QUEUE_LOW (32 * 1024)    /* ... and that let it go on */
#define NO_DEADLINE UINT64_MAX

enum forward_state {
    FORWARD_WAITING = 0,
    FORWARD_BUFFERING,
    FORWARD_STREAMING,
    FORWARD_DONE,
};

struct proxy_forward {
    struct curl_uv_task service; /* teardown and unpause, at a safe point */
    struct list node;            /* in proxy.forwards */
    enum forward_state state;
    struct conn *conn;           /* NULL once answered, ended or gone */
    proxy_answer_cb on_answer;   /* NULL: relay to the client */
    void *answer_arg;
    int head_only;               /* HEAD: no body comes back */
    int started;

    /* The request, copied at dispatch. */
    char *url;
    char *method;
    char *body;
    size_t body_len;
    int send_body;               /* the request had a body or a Content-Length */
    struct curl_slist *headers;

    /* The transfer. */
    CURL *easy;
    char errbuf[CURL_ERROR_SIZE];
    int status;                  /* the final status, once the head is in */
    struct buf head;             /* the upstream's header lines, raw, then filtered */
    struct buf body_kept;        /* BUFFERING */
    int paused;                  /* the write function returned CURL_WRITEFUNC_PAUSE */
    int resume_wanted;           /* ... and the client's queue drained */
    unsigned chunks_pending;     /* chunk writes whose callback has not run */

    uint64_t start_ms, last_rx_ms;
    uv_timer_t timer;
    int timer_open;
    int torn_down;
};

/* One piece of body on its way to the client (conn_stream_send needs the
 * bytes until its callback). */
struct forward_chunk {
    struct proxy_forward *fwd;
    char data[];
};

static struct proxy_module {
    int initialized, shutting_down;
    uv_loop_t *loop;
    struct proxy_config cfg;
    char *base_url;
    struct curl_uv *curl;
    struct list forwards;
    size_t active;
    void (*done)(void *arg);
    void *done_arg;
} proxy;

static void forward_service(struct curl_uv_task *task);
static void forward_maybe_free(struct proxy_forward *fwd);
static void maybe_finish_shutdown(void);

/* ---- paths ---- */

int proxy_forwards(int route, enum http_method method)
{
    if (route == ROUTE_NONE)
        return 1;
    if (route == ROUTE_ADK_RUN_SSE || route == ROUTE_ADK_RUN)
        return method != HTTP_POST; /* dropin.c serves the POSTs */
    return route == ROUTE_SESSION && method != HTTP_DELETE;
}

/* Percent-decodes seg[0..len) into out (out_size bytes, NUL-terminated).
 * Returns the decoded length; -EINVAL for a bad escape or an encoded '/',
 * '\' or NUL (the whole segment is checked even when out is full);
 * -ENOSPC when out is too small. */
static ssize_t decode_segment(const char *seg, size_t len, char *out, size_t out_size)
{
    size_t n = 0;
    int full = 0;
    for (size_t i = 0; i < len; i++, n++) {
        char ch = seg[i];
        if (ch == '%') {
            int hi = i + 2 < len ? hex_digit_value((unsigned char)seg[i + 1]) : -1;
            int lo = i + 2 < len ? hex_digit_value((unsigned char)seg[i + 2]) : -1;
            if (hi < 0 || lo < 0)
                return -EINVAL;
            ch = (char)(hi * 16 + lo);
            if (ch == '/' || ch == '\\' || ch == '\0')
                return -EINVAL;
            i += 2;
        }
        if (n + 1 < out_size)
            out[n] = ch;
        else
            full = 1;
    }
    if (full)
        return -ENOSPC;
    out[n] = '\0';
    return (ssize_t)n;
}

int proxy_check_path(const char *path, size_t len, char *user, size_t user_size)
{
    user[0] = '\0';
    if (len == 0 || path[0] != '/')
        return -EINVAL;
    /* The first four segments decoded, to spot /apps/{app}/users/{user};
     * "" when one does not fit (then it is no name compared here). */
    char first[4][129];
    int nseg = 0, user_too_long = 0;
    size_t i = 1;
    for (;;) {
        size_t start = i;
        while (i < len && path[i] != '/')
            i++;
        int last = i == len;
        if (i == start && !last)
            return -EINVAL; /* "//": servers differ on what it means */
        char small[3];
        char *out = nseg < 4 ? first[nseg] : small;
        size_t size = nseg < 4 ? sizeof(first[0]) : sizeof(small);
        ssize_t n = decode_segment(path + start, i - start, out, size);
        if (n == -EINVAL)
            return -EINVAL;
        if (n == -ENOSPC) {
            out[0] = '\0'; /* longer than two: no dot segment */
            user_too_long |= nseg == 3;
        } else if ((n == 1 && out[0] == '.') || (n == 2 && out[0] == '.' && out[1] == '.')) {
            return -EINVAL;
        }
        nseg++;
        if (last)
            break;
        i++;
    }
    if (nseg < 4 || strcasecmp(first[0], "apps") != 0 || strcasecmp(first[2], "users") != 0)
        return 0;
    size_t ulen = strlen(first[3]);
    if (user_too_long || ulen == 0 || ulen >= user_size)
        return -EINVAL;
    memcpy(user, first[3], ulen + 1);
    return 1;
}

/* ---- headers ---- */

/* 1 for the hop-by-hop headers of RFC 9110 7.6.1 (and Keep-Alive, Proxy-*):
 * they describe one connection, not the message. */
static int is_hop_by_hop(const char *name, size_t len)
{
    static const char *const hop[] = {"Connection", "Keep-Alive", "Proxy-Authenticate",
                                      "Proxy-Authorization", "Proxy-Connection", "TE",
                                      "Trailer", "Transfer-Encoding", "Upgrade"};
    for (size_t i = 0; i < RC_ARRAY_SIZE(hop); i++)
        if (str_ieq(name, len, hop[i]))
            return 1;
    return 0;
}

/* 1 when a Connection header's value (one of values[0..n)) names name. */
static int named_by_connection(const char *name, size_t len, const struct http_header *values,
                               size_t n)
{
    for (size_t k = 0; k < n; k++) {
        size_t pos = 0;
        const char *item;
        size_t item_len;
        while (str_list_next(values[k].value, values[k].value_len, &pos, &item, &item_len))
            if (item_len == len && strncasecmp(item, name, len) == 0)
                return 1;
    }
    return 0;
}

/* The Connection headers of a header list. */
static size_t connection_values(const struct http_header *h, size_t n, struct http_header *out,
                                size_t max)
{
    size_t found = 0;
    for (size_t i = 0; i < n && found < max; i++)
        if (str_ieq(h[i].name, h[i].name_len, "Connection"))
            out[found++] = h[i];
    return found;
}

/* The client's address without its port, for X-Forwarded-For. */
static void peer_address(struct conn *c, char *out, size_t size)
{
    const char *peer = conn_peer(c);
    const char *colon = strrchr(peer, ':');
    size_t len = colon ? (size_t)(colon - peer) : strlen(peer);
    if (len >= 2 && peer[0] == '[' && peer[len - 1] == ']') {
        peer++;
        len -= 2;
    }
    snprintf(out, size, "%.*s", (int)len, peer);
}

static struct curl_slist *add_header(struct curl_slist *list, const char *name, size_t name_len,
                                     const char *value, size_t value_len)
{
    struct buf line = {0};
    /* libcurl reads "Name:" as "remove Name"; "Name;" sends it empty. */
    if (value_len == 0)
        buf_printf(&line, "%.*s;", (int)name_len, name);
    else
        buf_printf(&line, "%.*s: %.*s", (int)name_len, name, (int)value_len, value);
    struct curl_slist *l = curl_slist_append(list, line.data);
    buf_free(&line);
    return l;
}

/* The request headers to send: the client's minus hop-by-hop ones, Host
 * (libcurl sends the upstream's) and the framing (libcurl frames the body
 * it sends), plus X-Forwarded-*; libcurl's own Expect, Accept and
 * Content-Type defaults are switched off. */
static struct curl_slist *request_headers(struct conn *c, const struct http_request *req)
{
    struct http_header conn_values[8];
    size_t nconn = connection_values(req->headers, req->header_count, conn_values, 8);
    struct curl_slist *list = NULL;
    struct buf xff = {0};
    const struct http_header *host = NULL;
    int has_accept = 0, has_type = 0, has_proto = 0, has_fhost = 0;
    for (size_t i = 0; i < req->header_count; i++) {
        const struct http_header *h = &req->headers[i];
        if (is_hop_by_hop(h->name, h->name_len) ||
            named_by_connection(h->name, h->name_len, conn_values, nconn) ||
            str_ieq(h->name, h->name_len, "Content-Length") ||
            str_ieq(h->name, h->name_len, "Expect"))
            continue;
        if (str_ieq(h->name, h->name_len, "Host")) {
            host = h;
            continue;
        }
        if (str_ieq(h->name, h->name_len, "X-Forwarded-For")) {
            buf_printf(&xff, "%.*s, ", (int)h->value_len, h->value);
            continue;
        }
        has_accept |= str_ieq(h->name, h->name_len, "Accept");
        has_type |= str_ieq(h->name, h->name_len, "Content-Type");
        has_proto |= str_ieq(h->name, h->name_len, "X-Forwarded-Proto");
        has_fhost |= str_ieq(h->name, h->name_len, "X-Forwarded-Host");
        list = add_header(list, h->name, h->name_len, h->value, h->value_len);
    }
    char ip[64];
    peer_address(c, ip, sizeof(ip));
    buf_append_str(&xff, ip);
    list = add_header(list, "X-Forwarded-For", 15, xff.data, xff.len);
    buf_free(&xff);
    /* A proxy in front of runcast (TLS) knows better: its values stay. */
    if (!has_proto)
        list = curl_slist_append(list, "X-Forwarded-Proto: http");
    if (!has_fhost && host)
        list = add_header(list, "X-Forwarded-Host", 16, host->value, host->value_len);
    if (!has_accept)
        list = curl_slist_append(list, "Accept:");
    if (!has_type)
        list = curl_slist_append(list, "Content-Type:");
    list = curl_slist_append(list, "Expect:"); /* no 100-continue round trip */
    return list;
}

/* Rewrites fwd->head (raw "Name: value\r\n" lines of the upstream's answer)
 * without hop-by-hop headers, the Connection-named ones, the framing
 * (runcast frames the body again; a HEAD's or 304's Content-Length stays,
 * it describes the resource) and, when runcast answers CORS itself, the
 * upstream's Access-Control-* headers (two Allow-Origin headers fail in a
 * browser). */
static void filter_response_headers(struct proxy_forward *fwd)
{
    struct http_header lines[128] = {{0}}, conn_values[8];
    size_t n = 0;
    const char *p = fwd->head.data ? fwd->head.data : "";
    const char *end = p + fwd->head.len;
    while (p < end && n < RC_ARRAY_SIZE(lines)) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *next = eol ? eol + 1 : end;
        const char *colon = memchr(p, ':', (size_t)(next - p));
        if (colon != NULL && colon > p && *p != ' ' && *p != '\t') {
            const char *v = colon + 1, *ve = next;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == '\n' || ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            lines[n++] = (struct http_header){p, (size_t)(colon - p), v, (size_t)(ve - v)};
        }
        p = next;
    }
    size_t nconn = connection_values(lines, n, conn_values, 8);
    int keep_length = fwd->head_only || fwd->status == 304;
    struct buf out = {0};
    for (size_t i = 0; i < n; i++) {
        const struct http_header *h = &lines[i];
        if (is_hop_by_hop(h->name, h->name_len) ||
            named_by_connection(h->name, h->name_len, conn_values, nconn) ||
            (!keep_length && str_ieq(h->name, h->name_len, "Content-Length")) ||
            (proxy.cfg.strip_cors && h->name_len > 15 &&
             strncasecmp(h->name, "Access-Control-", 15) == 0))
            continue;
        buf_printf(&out, "%.*s: %.*s\r\n", (int)h->name_len, h->name, (int)h->value_len, h->value);
    }
    buf_free(&fwd->head);
    fwd->head = out;
}

/* ---- the state machine ---- */

/* Moves fwd to state. The one place a forward's state changes: anything
 * else is an error in this file. Entering DONE queues the teardown. */
static void forward_enter(struct proxy_forward *fwd, enum forward_state to)
{
    static const unsigned allowed[] = {
        [FORWARD_WAITING] = 1u << FORWARD_BUFFERING | 1u << FORWARD_STREAMING | 1u << FORWARD_DONE,
        [FORWARD_BUFFERING] = 1u << FORWARD_DONE,
        [FORWARD_STREAMING] = 1u << FORWARD_DONE,
        [FORWARD_DONE] = 0,
    };
    assert(allowed[fwd->state] & (1u << to));
    fwd->state = to;
    if (to == FORWARD_DONE) {
        uv_timer_stop(&fwd->timer);
        curl_uv_defer(proxy.curl, &fwd->service);
    }
}

static const char *failure_code(enum proxy_outcome outcome)
{
    return outcome == PROXY_TIMED_OUT ? "upstream_timeout" : "upstream_unreachable";
}

void proxy_respond_answer(struct conn *c, const struct proxy_answer *a)
{
    if (a->outcome == PROXY_ANSWERED) {
        struct buf h = {0};
        buf_append_str(&h, a->headers ? a->headers : "");
        /* A collected answer lost its framing; HEAD and 304 kept theirs. */
        if (a->status >= 200 && a->status != 204 && a->status != 304 &&
            (a->body_len > 0 || strcasestr(h.data ? h.data : "", "content-length:") == NULL))
            buf_printf(&h, "Content-Length: %zu\r\n", a->body_len);
        conn_respond_framed(c, a->status, h.data, a->body, a->body_len);
        buf_free(&h);
        metrics_count_forwarded(a->status);
        return;
    }
    int status = a->outcome == PROXY_TIMED_OUT ? 504 : a->outcome == PROXY_CANCELLED ? 503 : 502;
    conn_respond_error(c, status, a->outcome == PROXY_CANCELLED ? "draining" : failure_code(a->outcome),
                       a->message, NULL);
    metrics_count_forwarded(status);
}

/* Ends fwd with outcome: answers the client (the answer, a 502/504, or a
 * cut once the head went out) or hands the answer to on_answer, then
 * queues the teardown. message: the client's words for a failure; detail:
 * libcurl's (may name the upstream's address: the log only). Safe from any
 * callback; only the first end counts. */
static void forward_end(struct proxy_forward *fwd, enum proxy_outcome outcome,
                        const char *message, const char *detail)
{
    if (fwd->state == FORWARD_DONE)
        return;
    enum forward_state was = fwd->state;
    struct conn *c = fwd->conn;
    fwd->conn = NULL;
    forward_enter(fwd, FORWARD_DONE);
    if (outcome != PROXY_ANSWERED && outcome != PROXY_CANCELLED)
        log_event(LOG_WARN, "proxy.failed", "method", fwd->method, "url", fwd->url, "reason",
                  message, "detail", detail && *detail ? detail : message, NULL);
    if (c == NULL)
        return; /* the client left */
    if (was == FORWARD_STREAMING) {
        if (outcome == PROXY_ANSWERED)
            conn_stream_end(c);
        else
            conn_close(c, 1); /* the chunked body stays visibly incomplete */
        return;
    }
    struct proxy_answer a = {.outcome = outcome, .status = fwd->status, .headers = fwd->head.data,
                             .body = fwd->body_kept.data, .body_len = fwd->body_kept.len,
                             .message = message};
    if (fwd->on_answer)
        fwd->on_answer(c, &a, fwd->answer_arg);
    else
        proxy_respond_answer(c, &a);
}

/* ---- deadlines ---- */

static uint64_t now_ms(void)
{
    return uv_now(proxy.loop);
}

/* The nearest deadline: before the head, connect + first event since the
 * start; at any time, the idle timeout since the last byte, except while
 * paused (the client is the slow one then). */
static uint64_t nearest_deadline(const struct proxy_forward *fwd, int *is_head)
{
    uint64_t best = NO_DEADLINE;
    *is_head = 0;
    if (fwd->state == FORWARD_WAITING && proxy.cfg.first_event_timeout_ms) {
        best = fwd->start_ms + proxy.cfg.connect_timeout_ms + proxy.cfg.first_event_timeout_ms;
        *is_head = 1;
    }
    if (proxy.cfg.idle_timeout_ms && !fwd->paused) {
        uint64_t idle = fwd->last_rx_ms + proxy.cfg.idle_timeout_ms;
        if (idle < best) {
            best = idle;
            *is_head = 0;
        }
    }
    return best;
}

static void forward_timer_cb(uv_timer_t *timer);

static void timer_rearm(struct proxy_forward *fwd)
{
    int is_head;
    uint64_t d = nearest_deadline(fwd, &is_head);
    if (fwd->state == FORWARD_DONE || d == NO_DEADLINE) {
        uv_timer_stop(&fwd->timer);
        return;
    }
    uint64_t now = now_ms();
    uv_timer_start(&fwd->timer, forward_timer_cb, d > now ? d - now : 0, 0);
}

static void forward_timer_cb(uv_timer_t *timer)
{
    struct proxy_forward *fwd = container_of(timer, struct proxy_forward, timer);
    int is_head;
    uint64_t d = nearest_deadline(fwd, &is_head);
    if (d > now_ms()) {
        timer_rearm(fwd);
        return;
    }
    forward_end(fwd, PROXY_TIMED_OUT,
                is_head ? "the upstream did not answer in time"
                        : "the upstream went silent (--idle-timeout)", NULL);
}

/* ---- libcurl's callbacks ---- */

/* conn_close_cb: the client's connection went away mid-stream (it left, a
 * write failed). The transfer is cancelled at the next safe point. */
static void client_gone(struct conn *c, void *arg)
{
    struct proxy_forward *fwd = arg;
    fwd->conn = NULL;
    forward_end(fwd, PROXY_CANCELLED, "the client left", NULL);
}

/* The end of the upstream's head: decide how the body goes back. */
static void head_complete(struct proxy_forward *fwd)
{
    filter_response_headers(fwd);
    curl_off_t length = -1;
    curl_easy_getinfo(fwd->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length);
    int no_body = fwd->head_only || fwd->status == 204 || fwd->status == 304;
    if (fwd->on_answer || no_body || (length >= 0 && length <= SMALL_BODY)) {
        forward_enter(fwd, FORWARD_BUFFERING);
        return;
    }
    struct conn *c = fwd->conn;
    if (c == NULL || conn_stream_begin(c, fwd->status, fwd->head.data, 1, client_gone, fwd) < 0) {
        fwd->conn = NULL; /* it went away: a failed begin settled its answer */
        forward_enter(fwd, FORWARD_STREAMING);
        forward_end(fwd, PROXY_ANSWERED, "the client left", NULL);
        return;
    }
    metrics_count_forwarded(fwd->status);
    forward_enter(fwd, FORWARD_STREAMING);
}

/* CURLOPT_HEADERFUNCTION: status lines and header lines of every response
 * (1xx interim ones too: each status line starts the head over). */
static size_t on_header(char *data, size_t size, size_t nitems, void *userp)
{
    struct proxy_forward *fwd = userp;
    size_t len = size * nitems;
    if (fwd->state != FORWARD_WAITING)
        return len; /* trailers, or a forward that ended */
    fwd->last_rx_ms = now_ms();
    if (len >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        buf_reset(&fwd->head);
        return len;
    }
    if ((len == 2 && data[0] == '\r') || (len == 1 && data[0] == '\n')) {
        long status = 0;
        curl_easy_getinfo(fwd->easy, CURLINFO_RESPONSE_CODE, &status);
        if (status >= 100 && status < 200)
            return len; /* interim; the real head follows */
        fwd->status = (int)status;
        head_complete(fwd);
        return len;
    }
    if (fwd->head.len + len > HEAD_MAX) {
        forward_end(fwd, PROXY_UNREACHABLE, "the upstream's response head is too large", NULL);
        return len;
    }
    buf_append(&fwd->head, data, len);
    return len;
}

/* Frees a chunk once the client's connection took it (or dropped it), and
 * asks for the unpause when the queue is low again. */
static void chunk_written(struct conn *c, void *arg, int status)
{
    struct forward_chunk *chunk = arg;
    struct proxy_forward *fwd = chunk->fwd;
    free(chunk);
    fwd->chunks_pending--;
    if (fwd->state == FORWARD_DONE) {
        forward_maybe_free(fwd);
        return;
    }
    if (status == 0 && fwd->paused && conn_write_queue_bytes(c) <= QUEUE_LOW) {
        fwd->resume_wanted = 1;
        curl_uv_defer(proxy.curl, &fwd->service);
    }
}

/* Sends one piece of body to the client: straight into the socket when it
 * takes it, else queued in a copy. */
static void relay_chunk(struct proxy_forward *fwd, const char *data, size_t len)
{
    struct forward_chunk *chunk = xmalloc(sizeof(*chunk) + len);
    chunk->fwd = fwd;
    memcpy(chunk->data, data, len);
    uv_buf_t b = uv_buf_init(chunk->data, (unsigned)len);
    fwd->chunks_pending++;
    int rc = conn_stream_send(fwd->conn, &b, 1, chunk_written, chunk);
    if (rc != 0) { /* 1: all sent; < 0: the conn is closing (its close callback ends fwd) */
        fwd->chunks_pending--;
        free(chunk);
    }
}

/* CURLOPT_WRITEFUNCTION: body bytes. Pauses (returns CURL_WRITEFUNC_PAUSE
 * without taking them: libcurl hands them again after the unpause) while
 * the client has QUEUE_HIGH queued. */
static size_t on_body(char *data, size_t size, size_t nmemb, void *userp)
{
    struct proxy_forward *fwd = userp;
    size_t len = size * nmemb;
    if (fwd->state == FORWARD_DONE)
        return len; /* swallowed until the teardown */
    fwd->last_rx_ms = now_ms();
    if (fwd->state == FORWARD_BUFFERING) {
        size_t max = fwd->on_answer ? COLLECT_MAX : SMALL_BODY;
        if (fwd->body_kept.len + len > max)
            forward_end(fwd, PROXY_UNREACHABLE, "the upstream's answer is larger than announced",
                        NULL);
        else
            buf_append(&fwd->body_kept, data, len);
        return len;
    }
    if (fwd->state != FORWARD_STREAMING || len == 0)
        return len;
    if (conn_write_queue_bytes(fwd->conn) > QUEUE_HIGH) {
        fwd->paused = 1;
        fwd->resume_wanted = 0;
        return CURL_WRITEFUNC_PAUSE;
    }
    relay_chunk(fwd, data, len);
    return len;
}

/* ---- finished transfers and the service task ---- */

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
        return 1;
    default:
        return 0;
    }
}

/* curl_uv_done_cb: the transfer finished (outside libcurl's callbacks). */
static void on_transfer_done(CURL *easy, CURLcode res, void *arg)
{
    struct proxy_forward *fwd = NULL;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&fwd);
    if (fwd == NULL || fwd->easy != easy || fwd->state == FORWARD_DONE)
        return;
    if (res == CURLE_OK && fwd->state != FORWARD_WAITING) {
        forward_end(fwd, PROXY_ANSWERED, NULL, NULL);
        return;
    }
    char message[160];
    const char *why = curl_easy_strerror(res);
    enum proxy_outcome outcome = PROXY_UNREACHABLE;
    if (res == CURLE_OPERATION_TIMEDOUT) {
        outcome = PROXY_TIMED_OUT;
        snprintf(message, sizeof(message), "cannot connect to the upstream in time");
    } else if (is_connect_error(res)) {
        snprintf(message, sizeof(message), "cannot reach the upstream: %s", why);
    } else if (fwd->state == FORWARD_WAITING) {
        snprintf(message, sizeof(message), "the upstream gave no valid response: %s",
                 res == CURLE_OK ? "no response" : why);
    } else {
        snprintf(message, sizeof(message), "the upstream's answer was cut: %s", why);
    }
    forward_end(fwd, outcome, message, fwd->errbuf[0] ? fwd->errbuf : why);
}

static void forward_timer_closed(uv_handle_t *handle)
{
    struct proxy_forward *fwd = container_of((uv_timer_t *)handle, struct proxy_forward, timer);
    fwd->timer_open = 0;
    forward_maybe_free(fwd);
}

/* Frees fwd once it is torn down and no chunk write refers to it. */
static void forward_maybe_free(struct proxy_forward *fwd)
{
    if (!fwd->torn_down || fwd->timer_open || fwd->chunks_pending > 0)
        return;
    list_remove(&fwd->node);
    free(fwd->url);
    free(fwd->method);
    free(fwd->body);
    curl_slist_free_all(fwd->headers);
    buf_free(&fwd->head);
    buf_free(&fwd->body_kept);
    free(fwd);
    proxy.active--;
    maybe_finish_shutdown();
}

/* curl_uv_task: at a safe point, the teardown of a DONE forward, or the
 * unpause of a paused one whose client drained its queue. */
static void forward_service(struct curl_uv_task *task)
{
    struct proxy_forward *fwd = container_of(task, struct proxy_forward, service);
    if (fwd->state != FORWARD_DONE) {
        if (fwd->paused && fwd->resume_wanted && fwd->easy) {
            fwd->paused = 0;
            fwd->resume_wanted = 0;
            fwd->last_rx_ms = now_ms(); /* the idle clock starts again */
            timer_rearm(fwd);
            curl_easy_pause(fwd->easy, CURLPAUSE_CONT); /* may deliver bytes, even pause again */
        }
        return;
    }
    if (fwd->torn_down)
        return;
    fwd->torn_down = 1;
    if (fwd->easy) {
        curl_uv_remove(proxy.curl, fwd->easy);
        fwd->easy = NULL;
    }
    uv_close((uv_handle_t *)&fwd->timer, forward_timer_closed);
}

/* ---- forwards ---- */

struct proxy_forward *proxy_forward_new(struct conn *c, const struct http_request *req)
{
    if (!proxy.initialized || proxy.shutting_down)
        return NULL;
    struct proxy_forward *fwd = xcalloc(1, sizeof(*fwd));
    list_init(&fwd->service.node);
    fwd->service.run = forward_service;
    fwd->conn = c;
    fwd->head_only = req->method == HTTP_HEAD;
    struct buf url = {0};
    buf_printf(&url, "%s%.*s", proxy.base_url, (int)req->target_len, req->target);
    fwd->url = url.data;
    fwd->method = xstrndup(req->method_name, req->method_len);
    fwd->send_body = req->body_len > 0 || http_find_header(req, "Content-Length") != NULL ||
                     http_find_header(req, "Transfer-Encoding") != NULL;
    fwd->body = xmalloc(req->body_len + 1);
    if (req->body_len)
        memcpy(fwd->body, req->body, req->body_len);
    fwd->body_len = req->body_len;
    fwd->headers = request_headers(c, req);
    uv_timer_init(proxy.loop, &fwd->timer);
    fwd->timer_open = 1;
    list_insert_tail(&proxy.forwards, &fwd->node);
    proxy.active++;
    return fwd;
}

void proxy_forward_drop(struct proxy_forward *fwd)
{
    fwd->conn = NULL;
    fwd->state = FORWARD_DONE;
    fwd->torn_down = 1;
    uv_close((uv_handle_t *)&fwd->timer, forward_timer_closed);
}

static CURL *make_easy(struct proxy_forward *fwd)
{
    CURL *easy = curl_uv_easy(proxy.curl);
    if (easy == NULL)
        return NULL;
    curl_easy_setopt(easy, CURLOPT_URL, fwd->url);
    curl_easy_setopt(easy, CURLOPT_PATH_AS_IS, 1L); /* the path goes as the client sent it */
    curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(easy, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    if (fwd->head_only) {
        curl_easy_setopt(easy, CURLOPT_NOBODY, 1L);
    } else if (fwd->send_body) {
        curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)fwd->body_len);
        curl_easy_setopt(easy, CURLOPT_POSTFIELDS, fwd->body);
        curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, fwd->method);
    } else if (strcmp(fwd->method, "GET") != 0) {
        curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, fwd->method);
    }
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, fwd->headers);
    curl_easy_setopt(easy, CURLOPT_HTTP_CONTENT_DECODING, 0L); /* bytes as the upstream sent them */
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_TCP_NODELAY, 1L);
    if (proxy.cfg.connect_timeout_ms)
        curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, (long)proxy.cfg.connect_timeout_ms);
    curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(easy, CURLOPT_HEADERDATA, fwd);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, fwd);
    curl_easy_setopt(easy, CURLOPT_PRIVATE, fwd);
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, fwd->errbuf);
    return easy;
}

void proxy_forward_start(struct proxy_forward *fwd, proxy_answer_cb on_answer, void *arg)
{
    fwd->on_answer = on_answer;
    fwd->answer_arg = arg;
    fwd->started = 1;
    fwd->start_ms = fwd->last_rx_ms = now_ms();
    /* Called from request handlers and store replies, never from inside
     * libcurl: the handle can be added at once. */
    CURL *easy = make_easy(fwd);
    if (easy == NULL || curl_uv_add(proxy.curl, easy) < 0) {
        if (easy)
            curl_easy_cleanup(easy);
        forward_end(fwd, PROXY_UNREACHABLE, "cannot start a libcurl transfer", NULL);
        return;
    }
    fwd->easy = easy;
    timer_rearm(fwd);
}

/* ---- module ---- */

int proxy_init(uv_loop_t *loop, const struct proxy_config *cfg)
{
    if (proxy.initialized || cfg == NULL || cfg->base_url == NULL)
        return -EINVAL;
    memset(&proxy, 0, sizeof(proxy));
    int err;
    proxy.curl = curl_uv_new(loop, on_transfer_done, NULL, &err);
    if (proxy.curl == NULL)
        return err;
    proxy.loop = loop;
    proxy.cfg = *cfg;
    proxy.base_url = xstrdup(cfg->base_url);
    proxy.cfg.base_url = proxy.base_url;
    list_init(&proxy.forwards);
    proxy.initialized = 1;
    return 0;
}

static void curl_closed_cb(void *arg)
{
    void (*done)(void *) = proxy.done;
    void *done_arg = proxy.done_arg;
    free(proxy.base_url);
    memset(&proxy, 0, sizeof(proxy));
    if (done)
        done(done_arg);
}

static void maybe_finish_shutdown(void)
{
    if (!proxy.shutting_down || proxy.active > 0 || proxy.curl == NULL)
        return;
    struct curl_uv *curl = proxy.curl;
    proxy.curl = NULL;
    curl_uv_close(curl, curl_closed_cb, NULL);
}

void proxy_shutdown(void (*done)(void *arg), void *arg)
{
    if (!proxy.initialized || proxy.shutting_down)
        return;
    proxy.shutting_down = 1;
    proxy.done = done;
    proxy.done_arg = arg;
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &proxy.forwards) {
        struct proxy_forward *fwd = container_of(pos, struct proxy_forward, node);
        if (fwd->started)
            forward_end(fwd, PROXY_CANCELLED, "runcast is shutting down", NULL);
    }
    maybe_finish_shutdown();
}

size_t proxy_active(void)
{
    return proxy.active;
}

size_t proxy_live_transfers(void)
{
    return proxy.curl != NULL ? curl_uv_transfers(proxy.curl) : 0;
}
