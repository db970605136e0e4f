/* server.c: the HTTP/1.1 listener and its connections (see server.h).
 *
 * Ownership. A server owns its listener, its accept back-off timer and every
 * connection (struct conn). A conn owns its tcp handle, its one timer and its
 * read buffer; each queued write owns its request and any bytes it carries
 * (struct conn_write). Nothing is freed inside the code path that may still
 * be using it: a conn is marked CONN_CLOSING, its handles are closed, and its
 * memory goes only from the last of these callbacks: the two handle close
 * callbacks and every write/shutdown callback (see conn_maybe_free()).
 * A stream's owner hears of the close once, synchronously, when the conn
 * starts closing for whatever reason (see conn_notify_close()); from then on
 * every conn_* call on it is a harmless no-op or error.
 *
 * A conn's life:
 *
 *   READING --(request callback calls conn_stream_begin)--> STREAMING
 *   STREAMING --(conn_stream_end, chunked)--> READING
 *   any --(conn_close, peer EOF/reset, write error, timeout)--> CLOSING
 *
 * In READING the conn parses what it has read and hands one request at a
 * time to the request callback. The callback normally answers before it
 * returns; it may also answer later (the gateway in Redis mode, the demo's
 * !delay; see server.h): the conn then "owes an answer" (conn->awaiting),
 * parses nothing more until it comes, and its memory stays valid until the
 * owner answers (conn_respond*() on a closed conn is a no-op,
 * conn_stream_begin() fails), calls conn_close(), or server_close() runs,
 * even if the peer left meanwhile.
 *
 * Timers. One uv_timer_t per conn, whose meaning is conn->timer_mode: the
 * keep-alive idle timeout between requests, the head timeout from the first
 * byte of a request to its last (408), a send timeout while reading is paused
 * for backpressure, a zero-delay "process what is buffered" tick (so that
 * pipelined requests are never dispatched from inside a caller's own call
 * into this file), and a deadline for a graceful close. Streams run none.
 *
 * Reads. libuv's alloc callback hands out one 64 KiB scratch per server: the
 * loop is single-threaded and libuv uses the buffer only until the read
 * callback returns. A read is parsed straight from the scratch when the conn
 * has nothing buffered; only the unconsumed tail (at most one partial
 * request) is copied into the conn's own buffer, which is released when it
 * empties. An idle conn therefore costs sizeof(struct conn) (the two libuv
 * handles included) and nothing else.
 */
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <liburing.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "log.h"

#define LISTEN_BACKLOG 1024
#define ACCEPT_BACKOFF_MS 100
#define READ_SCRATCH_SIZE (64 * 1024)
/* Pipelined requests stop being read when this much output waits in libuv,
 * and resume when it is down to WRITE_QUEUE_LOW. */
#define WRITE_QUEUE_HIGH (1024 * 1024)
#define WRITE_QUEUE_LOW (256 * 1024)
/* A graceful close gets this long to flush queued writes before it resets. */
#define CLOSE_FLUSH_MS 5000
/* After an error response, unread request bytes are drained (and dropped)
 * for at most this long / this much, so that closing with unread input does
 * not make the kernel reset the connection before the client read the error
 * (a "lingering close"). */
#define LINGER_MS 1000
#define LINGER_MAX_BYTES (1024 * 1024)
#define MAX_TARGET 8192
#define CHUNK_HEAD_MAX 20 /* "%zx\r\n" of a size_t */

/* Writes the chunk-size line of a chunk of len bytes ("1a3\r\n") into out
 * (CHUNK_HEAD_MAX bytes) and returns its length. By hand: snprintf cost
 * about 700 instructions per call, once per subscriber per flush on the
 * fan-out path (callgrind). */
static int chunk_size_line(char *out, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    char digits[2 * sizeof(size_t)];
    int n = 0;
    do {
        digits[n++] = hex[len & 15];
        len >>= 4;
    } while (len != 0);
    for (int i = 0; i < n; i++)
        out[i] = digits[n - 1 - i];
    out[n] = '\r';
    out[n + 1] = '\n';
    return n + 2;
}

enum conn_state { CONN_READING, CONN_STREAMING, CONN_CLOSING };

enum conn_timer {
    TIMER_OFF = 0,
    TIMER_IDLE,    /* keep-alive: no request under way; expiry closes silently */
    TIMER_REQUEST, /* a request started arriving; expiry answers 408 */
    TIMER_PROCESS, /* zero delay: parse and dispatch buffered requests */
    TIMER_SEND,    /* reading paused for backpressure; expiry resets */
    TIMER_CLOSE,   /* graceful close deadline (flush, then linger); expiry resets */
};

struct server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_timer_t accept_timer;  /* accept back-off; open from start to close */
    int listen_fd;            /* our dup of the listening socket, -1 once stopped */
    int port;
    char host[256];
    struct server_config cfg; /* cfg.host points to host */
    struct http_limits limits;
    server_request_cb on_request;
    void *data;
    struct list conns;        /* struct conn.node, until each is freed */
    size_t conn_count;
    unsigned listener_open : 1; /* listener initialised, close callback not yet run */
    unsigned timer_open : 1;
    unsigned accepting : 1;
    unsigned backing_off : 1;
    unsigned closing : 1;
    void (*done)(void *arg);
    void *done_arg;
    uint64_t accepted;
    uint64_t accept_errors;
    uint64_t read_pauses;
    char scratch[READ_SCRATCH_SIZE];
};

struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    struct server *server;
    struct list node;      /* in server->conns */
    struct buf rbuf;       /* unparsed input */
    struct http_body_state body_state; /* the chunked body of the request at rbuf's start */
    char *peer;            /* "ip:port", made by conn_peer() */
    char *answer_headers;  /* conn_set_answer_headers(): for the current request's answer */
    conn_close_cb on_close;
    void *close_arg;
    uint64_t requests;
    size_t linger_bytes;
    unsigned writes_pending; /* write and shutdown requests whose callback has not run */
    uint8_t state;           /* enum conn_state */
    uint8_t timer_mode;      /* enum conn_timer */
    uint8_t handles_open;    /* tcp + timer, until their close callbacks */
    unsigned chunked : 1;
    unsigned paused : 1;      /* we stopped reading (flow control) */
    unsigned in_dispatch : 1; /* the request callback is running */
    unsigned answered : 1;    /* the request being dispatched was answered */
    unsigned awaiting : 1;    /* owes a deferred answer (see above) */
    unsigned close_after : 1; /* close once the current answer is sent */
    unsigned http10 : 1;
    unsigned keep_alive10 : 1;   /* HTTP/1.0 with Connection: keep-alive */
    unsigned continue_sent : 1;
    unsigned head_request : 1; /* the request being answered is HEAD: no body goes out */
    unsigned linger : 1;
    unsigned eof : 1;
    unsigned shutdown_done : 1;
    struct batched_send *batched; /* its send waiting in the send batch, or NULL */
};

/* One uv_write: the request, who to tell, and the bytes it owns (response,
 * chunk framing or a copy), all in one allocation freed by conn_on_write(). */
struct conn_write {
    uv_write_t req;
    struct conn *conn;
    conn_write_cb on_done;
    void *arg;
    char data[];
};

static void conn_process(struct conn *c, const char *data, size_t len);
static void conn_begin_close(struct conn *c, int abort);
static void conn_close_handles(struct conn *c, int reset);
static void conn_maybe_free(struct conn *c);
static void server_maybe_free(struct server *s);
static void server_on_connection(uv_stream_t *listener, int status);

/* ---- small helpers -------------------------------------------------------- */

static uint64_t conn_queue_size(const struct conn *c)
{
    return uv_stream_get_write_queue_size((const uv_stream_t *)&c->tcp);
}

static void batch_send_now(struct conn *c);

static void conn_on_timer(uv_timer_t *timer);

/* Points the conn's one timer at mode; a zero timeout disables the idle,
 * request and send timeouts (TIMER_PROCESS is meant to be zero). */
static void conn_timer_set(struct conn *c, enum conn_timer mode, uint64_t ms)
{
    if (mode == TIMER_OFF || (ms == 0 && mode != TIMER_PROCESS)) {
        c->timer_mode = TIMER_OFF;
        uv_timer_stop(&c->timer);
        return;
    }
    c->timer_mode = (uint8_t)mode;
    uv_timer_start(&c->timer, conn_on_timer, ms, 0);
}

static void conn_on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    struct conn *c = handle->data;
    buf->base = c->server->scratch;
    buf->len = sizeof(c->server->scratch);
}

static void conn_on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

static void conn_read_start(struct conn *c)
{
    if (c->eof || uv_is_closing((uv_handle_t *)&c->tcp))
        return;
    int rc = uv_read_start((uv_stream_t *)&c->tcp, conn_on_alloc, conn_on_read);
    RC_UNUSED(rc); /* UV_EALREADY when already reading */
}

static void conn_pause(struct conn *c)
{
    if (c->paused)
        return;
    c->paused = 1;
    c->server->read_pauses++;
    uv_read_stop((uv_stream_t *)&c->tcp);
}

/* Input the conn cannot parse yet (it owes an answer, or streams chunked) is
 * kept, up to one maximal request more; past that it stops reading. */
static void conn_buffer_input(struct conn *c, const char *data, size_t len)
{
    buf_append(&c->rbuf, data, len);
    const struct server *s = c->server;
    if (c->rbuf.len > s->limits.max_header + s->limits.max_body + READ_SCRATCH_SIZE)
        conn_pause(c);
}

/* ---- writing -------------------------------------------------------------- */

static struct conn_write *conn_write_new(size_t data_len)
{
    struct conn_write *w = xmalloc(sizeof(*w) + data_len);
    w->on_done = NULL;
    w->arg = NULL;
    return w;
}

/* Lets a paused conn read again once its output drained to the low mark. */
static void conn_maybe_resume(struct conn *c)
{
    if (!c->paused || c->state != CONN_READING || c->awaiting)
        return;
    if (conn_queue_size(c) > WRITE_QUEUE_LOW) {
        conn_timer_set(c, TIMER_SEND, c->server->cfg.keepalive_timeout_ms); /* progress */
        return;
    }
    conn_timer_set(c, TIMER_PROCESS, 0); /* conn_process() reads again */
}

/* Tells the writer, then reacts to the outcome: a failed write ends the
 * conn; a drained queue may resume reading. The conn is freed here when this
 * was the last thing it waited for. */
static void conn_on_write(uv_write_t *req, int status)
{
    struct conn_write *w = container_of(req, struct conn_write, req);
    struct conn *c = w->conn;
    conn_write_cb on_done = w->on_done;
    void *arg = w->arg;
    free(w);
    c->writes_pending--;
    if (on_done)
        on_done(c, arg, status);
    if (status < 0)
        conn_begin_close(c, 1);
    else
        conn_maybe_resume(c);
    conn_maybe_free(c);
}

/* Queues bufs under w (freed on every path). Returns 0 or a negative errno;
 * on error w->on_done is not called. */
static int conn_submit(struct conn *c, struct conn_write *w, const uv_buf_t *bufs, unsigned nbufs)
{
    w->conn = c;
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, nbufs, conn_on_write);
    if (rc < 0) {
        free(w);
        return rc;
    }
    c->writes_pending++;
    return 0;
}

/* Queues len bytes already stored in w->data. */
static int conn_submit_data(struct conn *c, struct conn_write *w, size_t len)
{
    uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
    return conn_submit(c, w, &b, 1);
}

static int conn_send_copy(struct conn *c, const char *data, size_t len)
{
    struct conn_write *w = conn_write_new(len);
    memcpy(w->data, data, len);
    return conn_submit_data(c, w, len);
}

/* {"error":{"code":…,"message":…}} as a malloc'd string. */
static char *error_body(const char *code, const char *message)
{
    json_t *obj = json_pack("{s:{s:s,s:s}}", "error", "code", code ? code : "error",
                            "message", message ? message : "");
    char *text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    return text ? text : xstrdup("{\"error\":{\"code\":\"internal_error\",\"message\":\"\"}}");
}

/* Writes a whole response (one allocation) and, when the conn must close
 * after it, starts a graceful close. No ownership check: internal answers
 * (parser errors, 408, the public conn_respond) all come through here. The
 * answer to HEAD is the head a GET would get, its Content-Length included,
 * and no body: that is done here, once, for every handler (RFC 9110 9.3.2). */
static void conn_send_head_and_body(struct conn *c, int status, const char *content_type,
                                    const char *extra_headers, const char *body, size_t body_len,
                                    int framed)
{
    int closing = c->close_after;
    int has_length = status >= 200 && status != 204 && status != 304;
    int send_body = has_length && !c->head_request;
    c->head_request = 0; /* answered: the flag belonged to this request */
    /* The head from its parts, without printf: it is written for every
     * answer, and a run storm answers thousands a second. */
    char status_line[64], length[48] = "";
    memcpy(status_line, "HTTP/1.1 ", 9);
    size_t n = 9 + fmt_u64(status_line + 9, (uint64_t)status);
    status_line[n++] = ' ';
    str_copy(status_line + n, sizeof(status_line) - n - 2, http_status_reason(status));
    n += strlen(status_line + n);
    memcpy(status_line + n, "\r\n", 3);
    if (has_length && !framed) {
        memcpy(length, "Content-Length: ", 16);
        memcpy(length + 16 + fmt_u64(length + 16, body_len), "\r\n", 3);
    }
    const char *parts[] = {
        status_line,
        content_type ? "Content-Type: " : "",
        content_type ? content_type : "",
        content_type ? "\r\n" : "",
        length,
        extra_headers ? extra_headers : "",
        c->answer_headers ? c->answer_headers : "",
        closing ? "Connection: close\r\n" : c->keep_alive10 ? "Connection: keep-alive\r\n" : "",
        "\r\n",
    };
    size_t lens[sizeof(parts) / sizeof(parts[0])], head_len = 0;
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
        head_len += lens[i] = strlen(parts[i]);
    if (!send_body)
        body_len = 0;
    struct conn_write *w = conn_write_new(head_len + body_len);
    char *at = w->data;
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
        memcpy(at, parts[i], lens[i]);
        at += lens[i];
    }
    if (body_len)
        memcpy(w->data + head_len, body, body_len);
    if (c->server->cfg.on_response)
        c->server->cfg.on_response(status);
    int rc = conn_submit_data(c, w, head_len + body_len);
    if (rc < 0 || closing)
        conn_begin_close(c, rc < 0);
}

static void conn_send_response(struct conn *c, int status, const char *content_type,
                               const char *extra_headers, const char *body, size_t body_len)
{
    conn_send_head_and_body(c, status, content_type, extra_headers, body, body_len, 0);
}

static void conn_send_error(struct conn *c, int status, const char *code, const char *message)
{
    char *body = error_body(code, message);
    conn_send_response(c, status, "application/json", NULL, body, strlen(body));
    free(body);
}

/* ---- reading and dispatching ---------------------------------------------- */

/* The parser refused the input: answer its status and close (the rest of the
 * input is never parsed; it is drained for a moment, see LINGER_MS). */
static void conn_fail(struct conn *c, int err)
{
    c->head_request = 0; /* the method of a refused request is not trusted */
    c->close_after = 1;
    c->keep_alive10 = 0;
    c->linger = 1;
    conn_send_error(c, http_error_status(err), http_error_code(err), http_strerror(err));
}

/* Hands one complete request to the request callback. The callback may close
 * the conn, stream, answer, or answer later: conn_process() looks at the
 * state afterwards and never touches the request's bytes again. */
static void conn_dispatch(struct conn *c, const struct http_request *req)
{
    c->requests++;
    free(c->answer_headers); /* they belonged to the previous request's answer */
    c->answer_headers = NULL;
    c->close_after = !req->keep_alive || c->eof;
    c->http10 = req->version_minor == 0;
    c->keep_alive10 = c->http10 && req->keep_alive;
    c->head_request = req->method == HTTP_HEAD;
    c->answered = 0;
    c->continue_sent = 0;
    c->in_dispatch = 1;
    c->server->on_request(c, req, c->server->data);
    c->in_dispatch = 0;
    if (c->state == CONN_READING && !c->answered)
        c->awaiting = 1;
}

/* After input was processed: the timer that fits a reading conn. */
static void conn_arm_reading_timer(struct conn *c)
{
    const struct server_config *cfg = &c->server->cfg;
    if (c->awaiting)
        conn_timer_set(c, TIMER_OFF, 0);
    else if (c->paused)
        conn_timer_set(c, TIMER_SEND, cfg->keepalive_timeout_ms);
    else if (c->rbuf.len > 0) {
        if (c->timer_mode != TIMER_REQUEST)
            conn_timer_set(c, TIMER_REQUEST, cfg->head_timeout_ms);
    } else
        conn_timer_set(c, TIMER_IDLE, cfg->keepalive_timeout_ms);
}

/* Parses and dispatches every complete request in the conn's buffer plus
 * data[0..len) (the server's read scratch, or NULL), in order, until one is
 * incomplete or the conn stops reading requests (streaming, closing, owing
 * an answer, paused). Keeps the unparsed tail. Never called re-entrantly:
 * callers are the read callback and the conn's TIMER_PROCESS tick. */
static void conn_process(struct conn *c, const char *data, size_t len)
{
    struct server *s = c->server;
    if (c->paused && c->state == CONN_READING && !c->awaiting &&
        conn_queue_size(c) <= WRITE_QUEUE_LOW) {
        c->paused = 0;
        conn_read_start(c);
    }
    if (c->paused || c->awaiting) {
        if (len)
            conn_buffer_input(c, data, len);
        conn_arm_reading_timer(c);
        return;
    }

    const char *base;
    size_t avail;
    int from_scratch = c->rbuf.len == 0 && len > 0;
    if (from_scratch) {
        base = data;
        avail = len;
    } else {
        if (len)
            buf_append(&c->rbuf, data, len);
        base = c->rbuf.data;
        avail = c->rbuf.len;
    }

    size_t off = 0;
    while (c->state == CONN_READING && !c->awaiting && !c->paused && off < avail) {
        struct http_request req;
        ssize_t n = http_parse_request_resume(base + off, avail - off, &s->limits, &req,
                                              &c->body_state);
        if (n < 0) {
            http_request_free(&req);
            conn_fail(c, (int)n);
            break;
        }
        if (n == 0) {
            if (req.head_len && req.expect_continue && req.version_minor == 1 &&
                !c->continue_sent) {
                c->continue_sent = 1;
                static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
                if (conn_send_copy(c, cont, sizeof(cont) - 1) < 0)
                    conn_begin_close(c, 1);
            }
            http_request_free(&req);
            break;
        }
        c->timer_mode = TIMER_OFF; /* the next request gets a fresh head timeout */
        conn_dispatch(c, &req);
        http_request_free(&req);
        off += (size_t)n;
        if (c->state == CONN_READING && conn_queue_size(c) > WRITE_QUEUE_HIGH)
            conn_pause(c);
    }

    if (c->state == CONN_CLOSING || (c->state == CONN_STREAMING && !c->chunked)) {
        buf_free(&c->rbuf); /* the rest is never parsed */
        return;
    }
    if (from_scratch) {
        if (off < avail)
            buf_append(&c->rbuf, base + off, avail - off);
    } else {
        buf_consume(&c->rbuf, off);
    }
    if (c->rbuf.len == 0)
        buf_free(&c->rbuf); /* an idle conn holds no buffer */
    if (c->state == CONN_READING)
        conn_arm_reading_timer(c);
}

/* The peer finished sending (EOF) or failed (a negative errno). */
static void conn_on_read_end(struct conn *c, ssize_t err)
{
    c->eof = 1;
    switch ((enum conn_state)c->state) {
    case CONN_READING:
        if (err != UV_EOF) {
            conn_begin_close(c, 1);
        } else if (c->awaiting) {
            /* The pending request is answered, then the complete requests
             * behind it (TIMER_PROCESS), then the conn closes. */
        } else {
            if (c->rbuf.len && !c->paused)
                conn_process(c, NULL, 0); /* complete requests still get answered */
            if (c->awaiting)
                c->close_after = 1;
            else
                conn_begin_close(c, 0);
        }
        break;
    case CONN_STREAMING:
        conn_begin_close(c, err != UV_EOF); /* the client left */
        break;
    case CONN_CLOSING:
        if (err != UV_EOF || c->shutdown_done)
            conn_close_handles(c, err != UV_EOF);
        break;
    }
}

static void conn_on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = stream->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        conn_on_read_end(c, nread);
        return;
    }
    switch ((enum conn_state)c->state) {
    case CONN_READING:
        conn_process(c, buf->base, (size_t)nread);
        break;
    case CONN_STREAMING:
        if (c->chunked)
            conn_buffer_input(c, buf->base, (size_t)nread); /* served after the stream */
        break; /* chunked=0: the body ends at close, nothing more is served */
    case CONN_CLOSING:
        c->linger_bytes += (size_t)nread;
        if (c->linger_bytes > LINGER_MAX_BYTES)
            conn_close_handles(c, 1);
        break;
    }
}

static void conn_on_timer(uv_timer_t *timer)
{
    struct conn *c = timer->data;
    enum conn_timer mode = (enum conn_timer)c->timer_mode;
    c->timer_mode = TIMER_OFF;
    switch (mode) {
    case TIMER_OFF:
        break;
    case TIMER_IDLE:
        conn_begin_close(c, 0);
        break;
    case TIMER_REQUEST:
        c->head_request = 0;
        c->close_after = 1;
        c->keep_alive10 = 0;
        c->linger = 1;
        conn_send_error(c, 408, "request_timeout", "the request did not arrive in time");
        break;
    case TIMER_PROCESS:
        if (c->state == CONN_READING)
            conn_process(c, NULL, 0);
        /* A half-closed client whose last complete request was answered. */
        if (c->eof && c->state == CONN_READING && !c->awaiting && !c->paused)
            conn_begin_close(c, 0);
        break;
    case TIMER_SEND:
    case TIMER_CLOSE:
        conn_begin_close(c, 1);
        break;
    }
}

/* ---- closing -------------------------------------------------------------- */

static void conn_on_handle_closed(uv_handle_t *handle)
{
    struct conn *c = handle->data;
    c->handles_open--;
    conn_maybe_free(c);
}

/* Closes the tcp handle (with a reset when asked and libuv allows it: not
 * while a shutdown is in progress) and the timer. While the conn owes a
 * deferred answer the timer stays open (stopped): that keeps the memory, and
 * conn_settle_answer() closes it later, so that even then the conn is freed
 * from a close callback. Idempotent. */
static void conn_close_handles(struct conn *c, int reset)
{
    c->state = CONN_CLOSING;
    uv_handle_t *tcp = (uv_handle_t *)&c->tcp;
    if (!uv_is_closing(tcp)) {
        if (!reset || uv_tcp_close_reset(&c->tcp, conn_on_handle_closed) != 0)
            uv_close(tcp, conn_on_handle_closed);
    }
    uv_handle_t *timer = (uv_handle_t *)&c->timer;
    uv_timer_stop(&c->timer);
    if ((!c->awaiting || c->server->closing) && !uv_is_closing(timer))
        uv_close(timer, conn_on_handle_closed);
}

/* The owner of a deferred answer answered or let go: a conn
 * that closed meanwhile may now go. */
static void conn_settle_answer(struct conn *c)
{
    if (!c->awaiting)
        return;
    c->awaiting = 0;
    if (uv_is_closing((uv_handle_t *)&c->tcp))
        conn_close_handles(c, 0);
}

/* Frees the conn once nothing refers to it any more: both handles closed
 * and every write and shutdown callback run. */
static void conn_maybe_free(struct conn *c)
{
    struct server *s = c->server;
    if (c->handles_open || c->writes_pending)
        return;
    list_remove(&c->node);
    s->conn_count--;
    buf_free(&c->rbuf);
    http_body_state_free(&c->body_state);
    free(c->peer);
    free(c->answer_headers);
    free(c);
    server_maybe_free(s);
}

static void conn_on_shutdown(uv_shutdown_t *req, int status)
{
    struct conn *c = req->data;
    free(req);
    c->writes_pending--;
    c->shutdown_done = 1;
    if (!uv_is_closing((uv_handle_t *)&c->tcp)) {
        if (status < 0 || c->eof || !c->linger || c->server->closing) {
            conn_close_handles(c, status < 0);
        } else {
            conn_read_start(c); /* lingering close: drain until EOF or deadline */
            conn_timer_set(c, TIMER_CLOSE, LINGER_MS);
        }
    }
    conn_maybe_free(c);
}

/* The stream owner's close callback runs exactly once, at the moment the
 * conn starts closing (for any reason), as the last thing conn_begin_close() does.
 * Write callbacks still pending run after it (status 0 if the bytes went out
 * during a graceful close, else UV_ECANCELED); the memory stays valid until
 * they have. */
static void conn_notify_close(struct conn *c)
{
    conn_close_cb cb = c->on_close;
    c->on_close = NULL;
    if (cb)
        cb(c, c->close_arg);
}

/* Every close goes through here. Graceful: libuv's shutdown waits for queued
 * writes, then sends FIN; the handles close from conn_on_shutdown() (after a
 * lingering drain for error answers), or at the CLOSE_FLUSH_MS deadline with
 * a reset. Abort: reset now. Idempotent; an abort after a graceful close
 * escalates. */
static void conn_begin_close(struct conn *c, int abort)
{
    if (c->batched)
        batch_send_now(c); /* its bytes go before the FIN, as if sent at once */
    if (c->state == CONN_CLOSING) {
        if (abort || (c->server->closing && c->shutdown_done))
            conn_close_handles(c, abort);
        return;
    }
    c->state = CONN_CLOSING;
    if (!c->in_dispatch)
        buf_free(&c->rbuf); /* else conn_process() frees it after the callback */
    if (c->server->closing)
        c->linger = 0;
    uv_shutdown_t *req = abort ? NULL : xmalloc(sizeof(*req));
    if (req) {
        req->data = c;
        if (uv_shutdown(req, (uv_stream_t *)&c->tcp, conn_on_shutdown) != 0) {
            free(req);
            req = NULL;
        }
    }
    if (req) {
        c->writes_pending++;
        conn_timer_set(c, TIMER_CLOSE, CLOSE_FLUSH_MS);
    } else {
        conn_close_handles(c, abort);
    }
    conn_notify_close(c);
}

/* The public close also settles a deferred answer: the owner lets go. */
void conn_close(struct conn *c, int abort)
{
    conn_begin_close(c, abort);
    conn_settle_answer(c);
}

/* ---- answering ------------------------------------------------------------ */

/* A public answer is allowed for the request being dispatched (once) or for a
 * deferred one. Returns 1 when c may answer now; on a closing conn it settles
 * a deferred answer and returns 0. */
static int conn_take_answer(struct conn *c)
{
    if (c->state == CONN_CLOSING) {
        conn_settle_answer(c);
        return 0;
    }
    if (c->state != CONN_READING)
        return 0;
    if (c->in_dispatch && !c->answered) {
        c->answered = 1;
        return 1;
    }
    if (!c->in_dispatch && c->awaiting) {
        c->awaiting = 0;
        c->answered = 1;
        return 1;
    }
    log_event(LOG_WARN, "http.extra_answer", "peer", conn_peer(c), NULL);
    return 0;
}

/* After a deferred answer, pipelined requests waiting in the
 * buffer go next, from a tick of their own (never from inside the caller's
 * call). */
static void conn_after_deferred_answer(struct conn *c, int was_dispatching)
{
    if (!was_dispatching && c->state == CONN_READING)
        conn_timer_set(c, TIMER_PROCESS, 0);
}

void conn_respond(struct conn *c, int status, const char *content_type,
                  const char *extra_headers, const char *body, size_t body_len)
{
    int dispatching = c->in_dispatch;
    if (!conn_take_answer(c))
        return;
    conn_send_response(c, status, content_type, extra_headers, body, body_len);
    conn_after_deferred_answer(c, dispatching);
}

void conn_respond_framed(struct conn *c, int status, const char *headers, const char *body,
                         size_t body_len)
{
    int dispatching = c->in_dispatch;
    if (!conn_take_answer(c))
        return;
    conn_send_head_and_body(c, status, NULL, headers, body, body_len, 1);
    conn_after_deferred_answer(c, dispatching);
}

void conn_respond_json(struct conn *c, int status, json_t *obj, const char *extra_headers)
{
    /* 15 digits: timestamps print as 1764132000.123, not ...0.1229999 */
    char *text = obj ? json_dumps(obj, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;
    if (text == NULL) {
        char *body = error_body("internal_error", "response could not be encoded");
        conn_respond(c, 500, "application/json", NULL, body, strlen(body));
        free(body);
        return;
    }
    conn_respond(c, status, "application/json", extra_headers, text, strlen(text));
    free(text);
}

void conn_respond_error(struct conn *c, int status, const char *code, const char *message,
                        const char *extra_headers)
{
    char *body = error_body(code, message);
    conn_respond(c, status, "application/json", extra_headers, body, strlen(body));
    free(body);
}

void conn_set_answer_headers(struct conn *c, const char *lines)
{
    free(c->answer_headers);
    c->answer_headers = lines && *lines ? xstrdup(lines) : NULL;
}

/* ---- streams -------------------------------------------------------------- */

int conn_stream_begin(struct conn *c, int status, const char *headers, int chunked,
                      conn_close_cb on_close, void *arg)
{
    int dispatching = c->in_dispatch;
    if (c->state == CONN_CLOSING) {
        conn_take_answer(c);
        return UV_ECANCELED;
    }
    if (!conn_take_answer(c))
        return UV_EINVAL;
    if (c->eof) { /* a half-closed client cannot follow a stream */
        conn_begin_close(c, 0);
        return UV_ECANCELED;
    }
    c->head_request = 0; /* no HEAD route streams */
    if (c->http10)
        chunked = 0; /* HTTP/1.0 has no chunked coding: the body ends at close */
    int close = !chunked || c->close_after;
    const char *fmt = "HTTP/1.1 %d %s\r\n%s%s%s%s\r\n";
    const char *reason = http_status_reason(status);
    const char *te = chunked ? "Transfer-Encoding: chunked\r\n" : "";
    const char *conn_hdr = close ? "Connection: close\r\n" : "";
    const char *hdrs = headers ? headers : "";
    const char *answer = c->answer_headers ? c->answer_headers : "";
    int head_len = snprintf(NULL, 0, fmt, status, reason, hdrs, answer, te, conn_hdr);
    struct conn_write *w = conn_write_new((size_t)head_len + 1);
    snprintf(w->data, (size_t)head_len + 1, fmt, status, reason, hdrs, answer, te, conn_hdr);
    if (c->server->cfg.on_response)
        c->server->cfg.on_response(status);
    int rc = conn_submit_data(c, w, (size_t)head_len);
    if (rc < 0) {
        conn_begin_close(c, 1);
        return rc;
    }
    c->state = CONN_STREAMING;
    c->chunked = chunked != 0;
    c->close_after = close;
    c->on_close = on_close;
    c->close_arg = arg;
    conn_timer_set(c, TIMER_OFF, 0);
    if (!chunked && !dispatching)
        buf_free(&c->rbuf); /* pipelined input is never served */
    if (c->paused && !chunked) {
        c->paused = 0; /* keep reading: EOF tells that the client left */
        conn_read_start(c);
    }
    return 0;
}

int conn_stream_write(struct conn *c, const uv_buf_t *bufs, unsigned nbufs,
                      conn_write_cb on_done, void *arg)
{
    if (c->state == CONN_CLOSING)
        return UV_ECANCELED;
    if (c->state != CONN_STREAMING || nbufs == 0)
        return UV_EINVAL;
    size_t total = 0;
    for (unsigned i = 0; i < nbufs; i++)
        total += bufs[i].len;

    struct conn_write *w;
    int rc;
    if (!c->chunked || total == 0) {
        w = conn_write_new(0);
        w->on_done = on_done;
        w->arg = arg;
        rc = conn_submit(c, w, bufs, nbufs);
    } else {
        /* chunk-size line + the caller's bufs + CRLF; the framing bytes live
         * in w (libuv copies the uv_buf_t array itself). */
        w = conn_write_new(CHUNK_HEAD_MAX + 2);
        w->on_done = on_done;
        w->arg = arg;
        int head = chunk_size_line(w->data, total);
        memcpy(w->data + CHUNK_HEAD_MAX, "\r\n", 2);
        uv_buf_t small[16];
        uv_buf_t *all = nbufs + 2 <= RC_ARRAY_SIZE(small) ? small
                        : xmalloc((nbufs + 2) * sizeof(*all));
        all[0] = uv_buf_init(w->data, (unsigned)head);
        memcpy(all + 1, bufs, nbufs * sizeof(*bufs));
        all[nbufs + 1] = uv_buf_init(w->data + CHUNK_HEAD_MAX, 2);
        rc = conn_submit(c, w, all, nbufs + 2);
        if (all != small)
            free(all);
    }
    if (rc < 0)
        conn_begin_close(c, 1);
    return rc;
}

/* Points out[] at what is left of bufs[0..nbufs) after skipping `skip`
 * bytes. Returns the number of entries filled (out has room for nbufs). */
static unsigned iov_rest(const uv_buf_t *bufs, unsigned nbufs, size_t skip, uv_buf_t *out)
{
    unsigned first = 0;
    while (first < nbufs && skip >= bufs[first].len)
        skip -= bufs[first++].len;
    unsigned n = 0;
    for (unsigned i = first; i < nbufs; i++)
        out[n++] = bufs[i];
    if (n > 0) {
        out[0].base += skip;
        out[0].len -= (unsigned)skip;
    }
    return n;
}

/* One sendmsg of iov on fd, without waiting. Returns the bytes the kernel
 * took (0 when the socket is full) or a negative errno. */
static ssize_t fd_sendmsg(uv_os_fd_t fd, const uv_buf_t *iov, unsigned count)
{
    /* sendmsg rather than uv_try_write's write(2), which goes through the
     * VFS layer (vfs_write, fdget_pos: about 7% of the server's CPU in
     * fan-out under perf; sendmsg measured about 2% less CPU per delivery).
     * uv_buf_t is laid out as struct iovec on Unix. */
    struct msghdr msg = {.msg_iov = (struct iovec *)iov,
                         .msg_iovlen = count < IOV_MAX ? count : IOV_MAX};
    ssize_t n;
    do
        n = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n >= 0)
        return n;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)
        return 0;
    return -errno;
}

/* fd_sendmsg() on c's socket. A negative errno closes c. */
static ssize_t conn_sendmsg(struct conn *c, const uv_buf_t *bufs, unsigned nbufs)
{
    uv_os_fd_t fd;
    ssize_t n = uv_fileno((const uv_handle_t *)&c->tcp, &fd) == 0 ? fd_sendmsg(fd, bufs, nbufs)
                                                                    : UV_EBADF;
    if (n < 0)
        conn_begin_close(c, 1);
    return n;
}

/* Fills all[] (room for nbufs + 2) with one chunk of a stream: on a chunked
 * stream the size line (written into size_line, CHUNK_HEAD_MAX bytes), bufs
 * and the CRLF; else bufs alone. payload is the bytes of bufs. Returns the
 * number of entries and sets *total to their bytes. */
static unsigned stream_chunk_iov(const struct conn *c, const uv_buf_t *bufs, unsigned nbufs,
                                 size_t payload, char *size_line, uv_buf_t *all, size_t *total)
{
    unsigned k = 0;
    *total = payload;
    if (c->chunked) {
        int head = chunk_size_line(size_line, payload);
        all[k++] = uv_buf_init(size_line, (unsigned)head);
        *total += (size_t)head + 2;
    }
    memcpy(all + k, bufs, nbufs * sizeof(*bufs));
    k += nbufs;
    if (c->chunked)
        all[k++] = uv_buf_init((char *)"\r\n", 2);
    return k;
}

/* Queues what the kernel left of a chunk, `sent` bytes of all[0..count)
 * having gone: the framing bytes still unsent are copied into the queued
 * write, which owns them (size_line holds the chunk's size line); the
 * caller's bytes must stay valid until on_done. Returns 0 (on_done will
 * run) or a negative errno (it will not; the caller closes c). */
static int stream_queue_rest(struct conn *c, uv_buf_t *all, unsigned count,
                             const char *size_line, size_t sent,
                             conn_write_cb on_done, void *arg)
{
    struct conn_write *w = conn_write_new(CHUNK_HEAD_MAX + 2);
    w->on_done = on_done;
    w->arg = arg;
    if (c->chunked) {
        memcpy(w->data, size_line, all[0].len);
        all[0].base = w->data;
        memcpy(w->data + CHUNK_HEAD_MAX, "\r\n", 2);
        all[count - 1].base = w->data + CHUNK_HEAD_MAX;
    }
    uv_buf_t rest_small[66];
    uv_buf_t *rest = count <= RC_ARRAY_SIZE(rest_small) ? rest_small
                     : xmalloc(count * sizeof(*rest));
    unsigned nrest = iov_rest(all, count, sent, rest);
    int rc = conn_submit(c, w, rest, nrest); /* libuv copies the array */
    if (rest != rest_small)
        free(rest);
    return rc;
}

/* ---- the send batch (io_uring) --------------------------------------------
 *
 * The hub flushes every subscriber once per loop iteration: at 100 sessions
 * × 10 subscribers that is ten sendmsg calls per upstream event. Between
 * conn_send_batch_begin() and conn_send_batch_end() a stream send that
 * would go straight to the kernel is kept instead (its iovec and framing
 * copied into a struct batched_send; the caller's bytes stay valid because
 * it was told "queued"), and the end hands them all to io_uring with one
 * io_uring_enter: SENDMSG with MSG_DONTWAIT, which io_uring runs inline and
 * fails with EAGAIN rather than waiting (REQ_F_NOWAIT), so the enter
 * returns with every completion posted. Each result is then treated as
 * sendmsg's would have been (a short send queues the exact rest, EAGAIN
 * queues it all, an error closes the conn), and only after every send of
 * the batch is settled are the callers told (on_done), so nothing re-enters
 * the batch while it is in the kernel.
 *
 * Where io_uring is unavailable (io_uring_queue_init fails: an old kernel,
 * kernel.io_uring_disabled, seccomp) or RUNCAST_IO_URING=0, or once a
 * submission failed, the batch never opens and every send is a sendmsg as
 * before. Only the main loop's thread opens a batch (the hub's flush); the
 * demo agent's loop never does, so this state is that thread's alone.
 */

#define SEND_BATCH_MAX 256    /* sends per io_uring_enter (the ring's SQ entries) */
#define SEND_IOV_MAX (64 + 2) /* a hub batch of frames and the chunk framing */

/* A send kept in the batch. Owned by the batch; conn->batched points here
 * until it is settled (batch_finish). */
struct batched_send {
    struct conn *conn; /* NULL once settled */
    conn_write_cb on_done;
    void *arg;
    size_t total;      /* bytes of iov, framing included */
    unsigned count;
    struct msghdr msg; /* what the SQE points at: valid until the batch is reaped */
    char size_line[CHUNK_HEAD_MAX];
    uv_buf_t iov[SEND_IOV_MAX];
};

/* A settled send whose caller is told at the end of the batch. */
struct batched_outcome {
    struct conn *conn;
    conn_write_cb on_done; /* NULL: its rest was queued, which tells the caller */
    void *arg;
    int status;
};

static struct {
    int state; /* 0: not set up yet; 1: io_uring; -1: sendmsg only */
    int open;  /* between conn_send_batch_begin() and conn_send_batch_end() */
    struct io_uring ring;
    struct batched_send *sends; /* SEND_BATCH_MAX */
    unsigned nsends;
    struct batched_outcome *outcomes;
    unsigned noutcomes, outcomes_cap;
    uint64_t submits, sends_submitted; /* io_uring_enter calls, SQEs they carried */
} batch;

int conn_send_batch_init(void)
{
    if (batch.state != 0)
        return batch.state == 1;
    batch.state = -1;
    const char *env = getenv("RUNCAST_IO_URING");
    if (env && strcmp(env, "0") == 0)
        return 0;
    /* One thread submits and reaps, always inside io_uring_enter: no
     * interrupts to run completions (DEFER_TASKRUN), and every SQE of a
     * submission goes in even if one fails (SUBMIT_ALL). Older kernels
     * refuse the flags: then none. */
    struct io_uring_params p = {.flags = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER |
                                         IORING_SETUP_DEFER_TASKRUN};
    int rc = io_uring_queue_init_params(SEND_BATCH_MAX, &batch.ring, &p);
    if (rc == -EINVAL) {
        memset(&p, 0, sizeof(p));
        rc = io_uring_queue_init_params(SEND_BATCH_MAX, &batch.ring, &p);
    }
    if (rc < 0) {
        log_event(LOG_INFO, "io_uring.unavailable", "error", strerror(-rc), NULL);
        return 0;
    }
    batch.sends = xcalloc(SEND_BATCH_MAX, sizeof(*batch.sends));
    batch.state = 1;
    return 1;
}

void conn_send_batch_close(void)
{
    if (batch.state == 1)
        io_uring_queue_exit(&batch.ring);
    free(batch.sends);
    free(batch.outcomes);
    memset(&batch, 0, sizeof(batch));
}

/* Settles b: n is what the kernel took, or a negative errno. A short send
 * queues its exact rest now, so nothing can overtake it; the caller is told
 * at the end of the batch. Never calls back. */
static void batch_finish(struct batched_send *b, ssize_t n)
{
    struct conn *c = b->conn;
    b->conn = NULL;
    c->batched = NULL;
    if (n == -EAGAIN || n == -EWOULDBLOCK || n == -ENOBUFS || n == -EINTR)
        n = 0;
    int status = 0;
    conn_write_cb on_done = b->on_done;
    if (n < 0) {
        status = (int)n;
    } else if ((size_t)n < b->total) {
        status = stream_queue_rest(c, b->iov, b->count, b->size_line, (size_t)n, b->on_done, b->arg);
        if (status == 0)
            on_done = NULL; /* the queued write tells the caller */
    }
    if (batch.noutcomes == batch.outcomes_cap) {
        batch.outcomes_cap = batch.outcomes_cap ? 2 * batch.outcomes_cap : 64;
        batch.outcomes = xrealloc(batch.outcomes, batch.outcomes_cap * sizeof(*batch.outcomes));
    }
    batch.outcomes[batch.noutcomes++] = (struct batched_outcome){c, on_done, b->arg, status};
}

/* Sends c's batched send at once with sendmsg (c is closing: its bytes must
 * go before the FIN, or it must be settled before a reset). */
static void batch_send_now(struct conn *c)
{
    struct batched_send *b = c->batched;
    uv_os_fd_t fd;
    batch_finish(b, uv_fileno((const uv_handle_t *)&c->tcp, &fd) == 0
                        ? fd_sendmsg(fd, b->iov, b->count) : UV_EBADF);
}

/* Hands every unsettled send to the kernel in one io_uring_enter and
 * settles each with its completion. If io_uring fails, the ring is given up
 * (the sendmsg path from then on) and what it did not take goes by sendmsg. */
static void batch_submit(void)
{
    if (batch.state != 1) { /* the ring failed earlier in this batch */
        for (unsigned i = 0; i < batch.nsends; i++)
            if (batch.sends[i].conn)
                batch_send_now(batch.sends[i].conn);
        batch.nsends = 0;
        return;
    }
    unsigned prepared = 0;
    for (unsigned i = 0; i < batch.nsends; i++) {
        struct batched_send *b = &batch.sends[i];
        uv_os_fd_t fd;
        if (b->conn == NULL)
            continue; /* settled early (batch_send_now) */
        if (uv_fileno((const uv_handle_t *)&b->conn->tcp, &fd) != 0) {
            batch_finish(b, UV_EBADF);
            continue;
        }
        struct io_uring_sqe *sqe = io_uring_get_sqe(&batch.ring);
        b->msg = (struct msghdr){.msg_iov = (struct iovec *)b->iov, .msg_iovlen = b->count};
        io_uring_prep_sendmsg(sqe, fd, &b->msg, MSG_DONTWAIT | MSG_NOSIGNAL);
        io_uring_sqe_set_data(sqe, b);
        prepared++;
    }
    int submitted = prepared ? io_uring_submit_and_wait(&batch.ring, prepared) : 0;
    unsigned reaped = 0;
    while (submitted > 0 && reaped < (unsigned)submitted) {
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&batch.ring, head, cqe) {
            batch_finish(io_uring_cqe_get_data(cqe), cqe->res);
            seen++;
        }
        io_uring_cq_advance(&batch.ring, seen);
        reaped += seen;
        if (reaped < (unsigned)submitted) {
            int rc = io_uring_wait_cqe(&batch.ring, &cqe);
            if (rc < 0 && rc != -EINTR)
                break;
        }
    }
    batch.submits++;
    batch.sends_submitted += prepared;
    if (submitted != (int)prepared || reaped != (unsigned)prepared) {
        /* Not every send went in and came back: give up the ring (its exit
         * drops what it still holds) and finish by hand. A send the kernel
         * did take and did not report would be sent twice; io_uring never
         * reported that short of a broken ring. */
        log_event(LOG_WARN, "io_uring.failed", "submitted", submitted < 0 ? strerror(-submitted) : "short",
                  NULL);
        io_uring_queue_exit(&batch.ring);
        batch.state = -1;
        for (unsigned i = 0; i < batch.nsends; i++)
            if (batch.sends[i].conn)
                batch_send_now(batch.sends[i].conn);
    }
    batch.nsends = 0;
}

/* Keeps one chunk for the batch. Returns 0: queued, on_done will run. */
static int batch_add(struct conn *c, const uv_buf_t *bufs, unsigned nbufs, size_t payload,
                     conn_write_cb on_done, void *arg)
{
    if (batch.nsends == SEND_BATCH_MAX)
        batch_submit(); /* settles them; callers are still told at the end */
    struct batched_send *b = &batch.sends[batch.nsends++];
    b->conn = c;
    b->on_done = on_done;
    b->arg = arg;
    b->count = stream_chunk_iov(c, bufs, nbufs, payload, b->size_line, b->iov, &b->total);
    c->batched = b;
    c->writes_pending++; /* the conn stays until its outcome is told */
    return 0;
}

void conn_send_batch_begin(void)
{
    if (batch.state == 0)
        conn_send_batch_init();
    batch.open = batch.state == 1;
}

/* Submits the batch, then tells every caller its outcome, as libuv would
 * for a queued write (conn_on_write): on_done, then a close on error. The
 * batch is closed first, so what the callers send now goes by sendmsg. */
void conn_send_batch_end(void)
{
    if (!batch.open)
        return;
    batch.open = 0;
    if (batch.nsends > 0)
        batch_submit();
    for (unsigned i = 0; i < batch.noutcomes; i++) {
        struct batched_outcome o = batch.outcomes[i];
        struct conn *c = o.conn;
        c->writes_pending--;
        if (o.on_done)
            o.on_done(c, o.arg, o.status);
        if (o.status < 0)
            conn_begin_close(c, 1);
        conn_maybe_free(c);
    }
    batch.noutcomes = 0;
}

const char *conn_send_path(void)
{
    return batch.state == 1 ? "io_uring" : "sendmsg";
}

/* The direct write, then a queued write for the rest. On a chunked stream
 * the chunk's size line and CRLF go around bufs in the same sendmsg (stack
 * bytes); only when the kernel leaves some over are the framing bytes still
 * unsent copied into the queued write, which owns them. Inside a send batch
 * the direct write waits for the batch's end instead. */
int conn_stream_send(struct conn *c, const uv_buf_t *bufs, unsigned nbufs,
                     conn_write_cb on_done, void *arg)
{
    if (c->state == CONN_CLOSING)
        return UV_ECANCELED;
    if (c->state != CONN_STREAMING)
        return UV_EINVAL;
    size_t payload = 0;
    for (unsigned i = 0; i < nbufs; i++)
        payload += bufs[i].len;
    if (payload == 0)
        return 1; /* an empty chunk would end a chunked body */
    if (c->batched)
        batch_send_now(c); /* nothing overtakes it */
    else if (batch.open && nbufs + 2 <= SEND_IOV_MAX && conn_queue_size(c) == 0)
        return batch_add(c, bufs, nbufs, payload, on_done, arg);

    char size_line[CHUNK_HEAD_MAX];
    uv_buf_t small[66];
    uv_buf_t *all = nbufs + 2 <= RC_ARRAY_SIZE(small) ? small : xmalloc((nbufs + 2) * sizeof(*all));
    size_t total;
    unsigned count = stream_chunk_iov(c, bufs, nbufs, payload, size_line, all, &total);

    /* Nothing may overtake bytes libuv still holds. */
    ssize_t n = conn_queue_size(c) == 0 ? conn_sendmsg(c, all, count) : 0;
    int rc;
    if (n < 0) {
        rc = (int)n;
    } else if ((size_t)n == total) {
        rc = 1;
    } else {
        rc = stream_queue_rest(c, all, count, size_line, (size_t)n, on_done, arg);
        if (rc < 0)
            conn_begin_close(c, 1);
    }
    if (all != small)
        free(all);
    return rc;
}

size_t conn_write_queue_bytes(const struct conn *c)
{
    return conn_queue_size(c) + (c->batched ? c->batched->total : 0);
}

void conn_stream_end(struct conn *c)
{
    c->on_close = NULL; /* the owner lets go, whatever the state */
    c->close_arg = NULL;
    if (c->state != CONN_STREAMING)
        return;
    if (!c->chunked || c->close_after) {
        if (c->chunked && conn_send_copy(c, "0\r\n\r\n", 5) < 0) {
            conn_begin_close(c, 1);
            return;
        }
        conn_begin_close(c, 0);
        return;
    }
    if (conn_send_copy(c, "0\r\n\r\n", 5) < 0) {
        conn_begin_close(c, 1);
        return;
    }
    c->state = CONN_READING;
    c->chunked = 0;
    if (c->in_dispatch)
        return; /* conn_process() goes on with the next request itself */
    if (c->paused && conn_queue_size(c) <= WRITE_QUEUE_LOW) {
        c->paused = 0;
        conn_read_start(c);
    }
    conn_timer_set(c, TIMER_PROCESS, 0);
}

/* ---- demo-only: copied writes (see server.h) ------------------------------ */

/* One allocation holds the chunk framing and the copy; conn_on_write() frees
 * it. The demo agent writes each tick's frames with this; the gateway's
 * fan-out uses conn_stream_send() instead (no copy, no request when the
 * kernel takes it all). */
int conn_stream_write_copy(struct conn *c, const void *data, size_t len)
{
    if (c->state == CONN_CLOSING)
        return UV_ECANCELED;
    if (c->state != CONN_STREAMING)
        return UV_EINVAL;
    if (len == 0)
        return 0; /* an empty chunk would end a chunked body */
    size_t n = 0;
    struct conn_write *w = conn_write_new(CHUNK_HEAD_MAX + len + 2);
    if (c->chunked)
        n = (size_t)chunk_size_line(w->data, len);
    memcpy(w->data + n, data, len);
    n += len;
    if (c->chunked) {
        memcpy(w->data + n, "\r\n", 2);
        n += 2;
    }
    int rc = conn_submit_data(c, w, n);
    if (rc < 0)
        conn_begin_close(c, 1);
    return rc;
}

/* ---- peers ---------------------------------------------------------------- */

/* Formatted on first use (most conns are never logged) and kept until the
 * conn is freed. */
const char *conn_peer(const struct conn *cc)
{
    struct conn *c = (struct conn *)cc; /* the text is a cache */
    if (c->peer)
        return c->peer;
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    char ip[INET6_ADDRSTRLEN] = "";
    char text[INET6_ADDRSTRLEN + 16];
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0)
        return "unknown"; /* not cached: the handle may simply be closing */
    if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
        uv_ip6_name(a, ip, sizeof(ip));
        snprintf(text, sizeof(text), "[%s]:%d", ip, ntohs(a->sin6_port));
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
        uv_ip4_name(a, ip, sizeof(ip));
        snprintf(text, sizeof(text), "%s:%d", ip, ntohs(a->sin_port));
    }
    c->peer = xstrdup(text);
    return c->peer;
}

/* ---- accepting -------------------------------------------------------------
 *
 * Running out of descriptors (EMFILE/ENFILE). libuv's accept loop
 * (uv__server_io) first tries its own "EMFILE trick": it closes a descriptor
 * it keeps in reserve (loop->emfile_fd), accepts and immediately closes every
 * pending connection (so clients see a close instead of hanging), and
 * re-reserves the descriptor. When that works the connection callback is
 * never told. When it cannot (the reserve is gone, e.g. another thread took
 * the freed descriptor), libuv calls the connection callback with the error
 * and then *retries accept() at once in the same loop*, for as long as the
 * listening fd is open: a callback that merely returns spins the CPU. There is
 * no "stop listening" call in libuv other than closing the handle.
 *
 * So on any accept error we close the listener handle (that ends libuv's
 * loop and frees one descriptor) but not the listening socket: server_start()
 * kept a dup of it (listen_fd), so the kernel keeps queueing connections in
 * the backlog meanwhile. After ACCEPT_BACKOFF_MS a timer dups listen_fd into
 * a fresh handle and listens again; if descriptors are still short the same
 * happens again, at most once per back-off period.
 */

static void server_on_accept_retry(uv_timer_t *timer);

static void server_on_listener_closed(uv_handle_t *handle)
{
    struct server *s = handle->data;
    s->listener_open = 0;
    if (!s->closing && s->accepting)
        uv_timer_start(&s->accept_timer, server_on_accept_retry, ACCEPT_BACKOFF_MS, 0);
    server_maybe_free(s);
}

/* Opens a listener handle on a dup of listen_fd. Returns 0 or a negative
 * errno (the listener is then closed or was never opened). */
static int server_listen_again(struct server *s)
{
    int fd = fcntl(s->listen_fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    uv_tcp_init(s->loop, &s->listener);
    s->listener.data = s;
    s->listener_open = 1;
    int rc = uv_tcp_open(&s->listener, fd);
    if (rc < 0)
        close(fd);
    else
        rc = uv_listen((uv_stream_t *)&s->listener, LISTEN_BACKLOG, server_on_connection);
    if (rc < 0)
        uv_close((uv_handle_t *)&s->listener, server_on_listener_closed);
    return rc;
}

static void server_on_accept_retry(uv_timer_t *timer)
{
    struct server *s = timer->data;
    if (s->closing || !s->accepting || s->listener_open)
        return;
    /* When the listener was opened and failed, its close callback re-arms. */
    if (server_listen_again(s) < 0 && !s->listener_open)
        uv_timer_start(&s->accept_timer, server_on_accept_retry, ACCEPT_BACKOFF_MS, 0);
}

static void server_accept_failed(struct server *s, int status)
{
    s->accept_errors++;
    if (!s->backing_off) {
        s->backing_off = 1;
        log_event(LOG_WARN, "server.accept_failed", "error", uv_strerror(status),
                  "action", "pausing accept", NULL);
    }
    if (s->listener_open && !uv_is_closing((uv_handle_t *)&s->listener))
        uv_close((uv_handle_t *)&s->listener, server_on_listener_closed);
}

static void server_on_connection(uv_stream_t *listener, int status)
{
    struct server *s = listener->data;
    if (status < 0) {
        server_accept_failed(s, status);
        return;
    }
    struct conn *c = xcalloc(1, sizeof(*c));
    c->server = s;
    list_insert_tail(&s->conns, &c->node);
    s->conn_count++;
    uv_tcp_init(s->loop, &c->tcp); /* cannot fail: no socket is created */
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->handles_open = 2;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
        conn_close_handles(c, 0);
        return;
    }
    s->accepted++;
    if (s->backing_off) {
        s->backing_off = 0;
        log_event(LOG_INFO, "server.accept_resumed", NULL);
    }
    uv_tcp_nodelay(&c->tcp, 1);
    conn_read_start(c);
    conn_arm_reading_timer(c);
}

/* ---- the server ------------------------------------------------------------ */

static void server_maybe_free(struct server *s)
{
    if (!s->closing || s->listener_open || s->timer_open || !list_empty(&s->conns))
        return;
    void (*done)(void *) = s->done;
    void *arg = s->done_arg;
    free(s);
    if (done)
        done(arg);
}

static void server_on_timer_closed(uv_handle_t *handle)
{
    struct server *s = handle->data;
    s->timer_open = 0;
    server_maybe_free(s);
}

/* Turns host ("127.0.0.1", "::1", "[::1]", or a name such as "localhost",
 * resolved synchronously: this runs once, at start-up) and port into addr.
 * Returns 0 or a negative errno. */
static int server_parse_addr(uv_loop_t *loop, const char *host, int port,
                             struct sockaddr_storage *addr)
{
    char bare[256];
    size_t n = strlen(host);
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
        if (n - 2 >= sizeof(bare))
            return UV_EINVAL;
        memcpy(bare, host + 1, n - 2);
        bare[n - 2] = '\0';
        host = bare;
    }
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)addr) == 0)
        return 0;
    if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)addr) == 0)
        return 0;
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    uv_getaddrinfo_t req;
    int rc = uv_getaddrinfo(loop, &req, NULL, host, NULL, &hints);
    if (rc < 0)
        return UV_EINVAL;
    const struct addrinfo *ai = req.addrinfo;
    while (ai && ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
        ai = ai->ai_next;
    rc = UV_EINVAL;
    if (ai && ai->ai_addrlen <= sizeof(*addr)) {
        memcpy(addr, ai->ai_addr, ai->ai_addrlen);
        if (ai->ai_family == AF_INET)
            ((struct sockaddr_in *)addr)->sin_port = htons((uint16_t)port);
        else
            ((struct sockaddr_in6 *)addr)->sin6_port = htons((uint16_t)port);
        rc = 0;
    }
    uv_freeaddrinfo(req.addrinfo);
    return rc;
}

int server_start(uv_loop_t *loop, const struct server_config *cfg,
                 server_request_cb on_request, void *data, struct server **out)
{
    struct sockaddr_storage addr;
    const char *host = cfg->host ? cfg->host : "127.0.0.1";
    if (cfg->port < 0 || cfg->port > 65535 || strlen(host) >= sizeof(((struct server *)0)->host))
        return UV_EINVAL;
    int rc = server_parse_addr(loop, host, cfg->port, &addr);
    if (rc < 0)
        return rc;

    struct server *s = xcalloc(1, sizeof(*s));
    s->loop = loop;
    str_copy(s->host, sizeof(s->host), host);
    s->cfg = *cfg;
    s->cfg.host = s->host;
    s->limits.max_header = cfg->max_header ? cfg->max_header : 16 * 1024;
    s->limits.max_body = cfg->max_body;
    s->limits.max_target = s->limits.max_header < MAX_TARGET ? s->limits.max_header : MAX_TARGET;
    s->on_request = on_request;
    s->data = data;
    s->listen_fd = -1;
    list_init(&s->conns);
    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    s->listener_open = 1;
    uv_timer_init(loop, &s->accept_timer);
    s->accept_timer.data = s;
    s->timer_open = 1;

    rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->listener, LISTEN_BACKLOG, server_on_connection);
    struct sockaddr_storage bound;
    int bound_len = sizeof(bound);
    if (rc == 0)
        rc = uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &bound_len);
    if (rc == 0) {
        uv_os_fd_t fd;
        rc = uv_fileno((uv_handle_t *)&s->listener, &fd);
        if (rc == 0)
            s->listen_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
        if (rc == 0 && s->listen_fd < 0)
            rc = -errno;
    }
    if (rc < 0) {
        s->closing = 1; /* freed by the close callbacks; done is NULL */
        uv_close((uv_handle_t *)&s->listener, server_on_listener_closed);
        uv_close((uv_handle_t *)&s->accept_timer, server_on_timer_closed);
        return rc;
    }
    s->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                : ((struct sockaddr_in *)&bound)->sin_port);
    s->accepting = 1;
    *out = s;
    return 0;
}

int server_port(const struct server *s)
{
    return s->port;
}

size_t server_connection_count(const struct server *s)
{
    return s->conn_count;
}

void server_stop_accepting(struct server *s)
{
    if (!s->accepting)
        return;
    s->accepting = 0;
    uv_timer_stop(&s->accept_timer);
    if (s->listener_open && !uv_is_closing((uv_handle_t *)&s->listener))
        uv_close((uv_handle_t *)&s->listener, server_on_listener_closed);
    if (s->listen_fd >= 0) {
        close(s->listen_fd);
        s->listen_fd = -1;
    }
}

void server_close(struct server *s, void (*done)(void *arg), void *arg)
{
    if (s->closing)
        return;
    s->closing = 1;
    s->done = done;
    s->done_arg = arg;
    server_stop_accepting(s);
    uv_close((uv_handle_t *)&s->accept_timer, server_on_timer_closed);
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &s->conns) {
        struct conn *c = container_of(pos, struct conn, node);
        conn_begin_close(c, 0);
        if (uv_is_closing((uv_handle_t *)&c->tcp))
            conn_close_handles(c, 0); /* a closed conn that waited for its answer */
    }
}
