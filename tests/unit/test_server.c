/* test_server.c: the listener and its connections, over real loopback sockets.
 *
 * Each test runs a server on a libuv loop in the main thread and a client
 * scenario in a second thread with plain blocking sockets (every receive has
 * a 3 s deadline, SO_RCVTIMEO). The scenario ends with harness_finish(),
 * which makes the loop close the server; the test then asserts that done ran
 * once and that uv_loop_close() returns 0 (no handle left behind). State the
 * client waits for is published by the loop thread under a mutex and waited
 * for with a deadline, never slept on. server.c is included to reach its
 * counters.
 */
#include "../../src/server.c"

#include <pthread.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>

#include "test.h"

#define RECV_TIMEOUT_MS 3000

struct harness {
    uv_loop_t loop;
    struct server *srv;
    uv_async_t finish;
    uv_timer_t watchdog;
    uv_timer_t later;     /* deferred work of the handler */
    uv_prepare_t probe;   /* publishes server counters before the loop blocks */
    pthread_t thread;
    void (*scenario)(struct harness *h);
    int port;
    struct conn *later_conn;
    int later_mode;       /* LATER_* */
    int steal_emfile_reserve;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* written by the loop thread under mu */
    long done_calls;
    long requests;
    long stream_closes;
    long stream_write_dones;
    long stream_write_status;
    long later_ran;
    long pauses;
    long accept_errors;
    long conns;
    long streams;
    long stream_rbuf_bytes;
    long pinned;          /* closed conns kept for a deferred answer */
    long conns_at_finish;
    long closes_when_close_returned; /* stream_closes right after conn_close() */
    long closes_when_write_done;     /* stream_closes when the write's on_done ran */
    long write_after_close;          /* conn_stream_write_copy() after conn_close() */
    long try_result;                 /* conn_stream_send() on a fresh stream */
    long try_after_close;            /* ... after conn_close() */
    long try_chunked;                /* ... on a chunked stream */
    long big_send;                   /* ... of BIG_CHUNK bytes into a small send buffer */
    /* the send batch (/batch-* paths) */
    long batch_send;                 /* conn_stream_send() inside the batch */
    long batch_pending;              /* conn_write_queue_bytes() right after it */
    long batch_queued_after_end;     /* conn_write_queue_bytes() after conn_send_batch_end() */
    long batch_done_calls;           /* its on_done */
    long batch_done_status;
    long batch_done_calls_at_end;    /* batch_done_calls when conn_send_batch_end() returned */
    long batch_filled;               /* bytes written past the conn to fill the socket */
    long batch_ends;                 /* batch_one_send() returned */
};

enum { LATER_RESPOND = 1, LATER_STREAM_END, LATER_CLOSE };

static void bump(struct harness *h, long *counter)
{
    pthread_mutex_lock(&h->mu);
    (*counter)++;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

/* Waits until *counter >= want; returns 1, or 0 at the deadline. */
static int wait_for(struct harness *h, const long *counter, long want, int timeout_ms)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&h->mu);
    while (*counter < want) {
        if (pthread_cond_timedwait(&h->cv, &h->mu, &deadline) != 0)
            break;
    }
    int ok = *counter >= want;
    pthread_mutex_unlock(&h->mu);
    return ok;
}

/* Waits until *counter <= want; returns 1, or 0 at the deadline. */
static int wait_for_at_most(struct harness *h, const long *counter, long want, int timeout_ms)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&h->mu);
    while (*counter > want) {
        if (pthread_cond_timedwait(&h->cv, &h->mu, &deadline) != 0)
            break;
    }
    int ok = *counter <= want;
    pthread_mutex_unlock(&h->mu);
    return ok;
}

static long read_counter(struct harness *h, const long *counter)
{
    pthread_mutex_lock(&h->mu);
    long v = *counter;
    pthread_mutex_unlock(&h->mu);
    return v;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- the server side (loop thread) ------------------------------------------ */

static int path_is(const struct http_request *req, const char *path)
{
    return req->path_len == strlen(path) && memcmp(req->path, path, req->path_len) == 0;
}

static void on_stream_close(struct conn *c, void *arg)
{
    struct harness *h = arg;
    bump(h, &h->stream_closes);
}

static void on_stream_written(struct conn *c, void *arg, int status)
{
    struct harness *h = arg;
    pthread_mutex_lock(&h->mu);
    h->stream_write_status = status;
    h->closes_when_write_done = h->stream_closes;
    pthread_mutex_unlock(&h->mu);
    bump(h, &h->stream_write_dones);
}

static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz";

/* One chunk far bigger than a small socket buffer: most of it, and the
 * chunk's final CRLF, must be queued after the direct write. */
#define BIG_CHUNK (600 * 1000)
static char big_chunk[BIG_CHUNK];

static void on_big_chunk_sent(struct conn *c, void *arg, int status)
{
    conn_stream_end(c);
}

static void on_batch_done(struct conn *c, void *arg, int status)
{
    struct harness *h = arg;
    pthread_mutex_lock(&h->mu);
    h->batch_done_status = status;
    pthread_mutex_unlock(&h->mu);
    bump(h, &h->batch_done_calls);
}

static void on_batch_big_done(struct conn *c, void *arg, int status)
{
    on_batch_done(c, arg, status);
    conn_stream_end(c);
}

/* Fills c's socket behind the conn's back until the kernel refuses more. */
static long fill_socket(struct conn *c)
{
    uv_os_fd_t fd;
    static char filler[4096];
    memset(filler, 'f', sizeof(filler));
    long filled = 0;
    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) != 0)
        return -1;
    for (;;) {
        ssize_t n = send(fd, filler, sizeof(filler), MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n <= 0)
            return filled;
        filled += n;
    }
}

/* One send inside a send batch, as the hub's flush makes it: what it
 * returned, what the conn held before and after the batch's end. */
static void batch_one_send(struct harness *h, struct conn *c, const uv_buf_t *bufs, unsigned nbufs,
                           conn_write_cb on_done)
{
    conn_send_batch_begin();
    long rc = conn_stream_send(c, bufs, nbufs, on_done, h);
    long pending = (long)conn_write_queue_bytes(c);
    conn_send_batch_end();
    pthread_mutex_lock(&h->mu);
    h->batch_send = rc;
    h->batch_pending = pending;
    h->batch_queued_after_end = (long)conn_write_queue_bytes(c);
    h->batch_done_calls_at_end = h->batch_done_calls;
    pthread_mutex_unlock(&h->mu);
    bump(h, &h->batch_ends);
}

static void batch_request(struct harness *h, struct conn *c, const struct http_request *req)
{
    if (path_is(req, "/batch-small")) {
        conn_stream_begin(c, 200, "Content-Type: text/plain\r\n", 1, on_stream_close, h);
        uv_buf_t two[2] = {uv_buf_init((char *)"x", 1), uv_buf_init((char *)"yz", 2)};
        batch_one_send(h, c, two, 2, on_batch_done);
        conn_stream_end(c);
    } else if (path_is(req, "/batch-big")) {
        uv_os_fd_t fd;
        int size = 4096;
        if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
        conn_stream_begin(c, 200, "Content-Type: text/plain\r\n", 1, on_stream_close, h);
        uv_buf_t three[3] = {uv_buf_init(big_chunk, 1000), uv_buf_init(big_chunk + 1000, 1),
                             uv_buf_init(big_chunk + 1001, BIG_CHUNK - 1001)};
        batch_one_send(h, c, three, 3, on_batch_big_done);
    } else if (path_is(req, "/batch-full")) {
        uv_os_fd_t fd;
        int size = 4096;
        if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
        conn_stream_begin(c, 200, "Content-Type: text/plain\r\n", 0, on_stream_close, h);
        long filled = conn_write_queue_bytes(c) == 0 ? fill_socket(c) : -1;
        pthread_mutex_lock(&h->mu);
        h->batch_filled = filled;
        pthread_mutex_unlock(&h->mu);
        uv_buf_t one = uv_buf_init((char *)"after-full\n", 11);
        batch_one_send(h, c, &one, 1, on_batch_done);
        conn_close(c, 0); /* graceful: what is queued goes first */
    } else if (path_is(req, "/batch-epipe")) {
        uv_os_fd_t fd;
        conn_stream_begin(c, 200, "Content-Type: text/plain\r\n", 1, on_stream_close, h);
        if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
            shutdown(fd, SHUT_WR); /* the next send fails with EPIPE */
        uv_buf_t one = uv_buf_init((char *)"lost", 4);
        batch_one_send(h, c, &one, 1, on_batch_done);
    } else if (path_is(req, "/batch-close")) {
        conn_stream_begin(c, 200, "Content-Type: text/plain\r\n", 0, on_stream_close, h);
        conn_send_batch_begin();
        uv_buf_t one = uv_buf_init((char *)"abc", 3);
        long rc = conn_stream_send(c, &one, 1, on_batch_done, h);
        conn_close(c, 0); /* inside the batch: "abc" must still go before the FIN */
        conn_send_batch_end();
        pthread_mutex_lock(&h->mu);
        h->batch_send = rc;
        h->batch_done_calls_at_end = h->batch_done_calls;
        pthread_mutex_unlock(&h->mu);
    }
}

static void echo(struct conn *c, const struct http_request *req)
{
    json_t *obj = json_pack("{s:s%,s:s%}", "method", req->method_name, req->method_len,
                            "path", req->path, req->path_len);
    conn_respond_json(c, 200, obj, NULL);
    json_decref(obj);
}

static void on_request(struct conn *c, const struct http_request *req, void *data)
{
    struct harness *h = data;
    bump(h, &h->requests);
    if (req->path_len > 7 && memcmp(req->path, "/batch-", 7) == 0) {
        batch_request(h, c, req);
    } else if (path_is(req, "/stream-close")) {
        conn_stream_begin(c, 200, "Content-Type: text/plain\r\n", 0, on_stream_close, h);
        static const char part[] = "hello ";
        uv_buf_t b = uv_buf_init((char *)part, sizeof(part) - 1);
        conn_stream_write(c, &b, 1, on_stream_written, h);
        conn_stream_write_copy(c, "world", 5);
        conn_close(c, 0);
        pthread_mutex_lock(&h->mu);
        h->closes_when_close_returned = h->stream_closes;
        pthread_mutex_unlock(&h->mu);
        h->write_after_close = conn_stream_write_copy(c, "late", 4);
        conn_close(c, 0); /* idempotent */
    } else if (path_is(req, "/try-write")) {
        conn_stream_begin(c, 200, "Content-Type: text/plain\r\n", 0, on_stream_close, h);
        uv_buf_t two[2] = {uv_buf_init((char *)"dir", 3), uv_buf_init((char *)"ect\n", 4)};
        long n = (long)conn_stream_send(c, two, 2, NULL, NULL);
        conn_stream_write_copy(c, "queued\n", 7);
        conn_close(c, 0);
        long after = (long)conn_stream_send(c, two, 2, NULL, NULL);
        pthread_mutex_lock(&h->mu);
        h->try_result = n;
        h->try_after_close = after;
        pthread_mutex_unlock(&h->mu);
    } else if (path_is(req, "/try-chunked")) {
        conn_stream_begin(c, 200, "Content-Type: text/plain\r\n", 1, on_stream_close, h);
        uv_buf_t two[2] = {uv_buf_init((char *)"x", 1), uv_buf_init((char *)"yz", 2)};
        long n = (long)conn_stream_send(c, two, 2, NULL, NULL);
        pthread_mutex_lock(&h->mu);
        h->try_chunked = n;
        pthread_mutex_unlock(&h->mu);
        conn_stream_end(c);
    } else if (path_is(req, "/big-chunk")) {
        uv_os_fd_t fd;
        int size = 4096;
        if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
        conn_stream_begin(c, 200, "Content-Type: text/plain\r\n", 1, on_stream_close, h);
        uv_buf_t three[3] = {uv_buf_init(big_chunk, 1000), uv_buf_init(big_chunk + 1000, 1),
                             uv_buf_init(big_chunk + 1001, BIG_CHUNK - 1001)};
        long n = (long)conn_stream_send(c, three, 3, on_big_chunk_sent, h);
        pthread_mutex_lock(&h->mu);
        h->big_send = n;
        pthread_mutex_unlock(&h->mu);
    } else if (path_is(req, "/missing")) {
        conn_respond_error(c, 404, "not_found", "no such thing", NULL);
    } else if (path_is(req, "/hold")) {
        conn_stream_begin(c, 200, "Content-Type: text/plain\r\n", 0, on_stream_close, h);
        conn_stream_write_copy(c, "open\n", 5);
    } else if (path_is(req, "/chunked") || path_is(req, "/chunked-later")) {
        conn_stream_begin(c, 200, "Content-Type: text/plain\r\n", 1, on_stream_close, h);
        uv_buf_t two[2] = {uv_buf_init((char *)alphabet, 3), uv_buf_init((char *)alphabet + 3, 2)};
        conn_stream_write(c, two, 2, on_stream_written, h);
        conn_stream_write_copy(c, "world!", 6);
        uv_buf_t many[20]; /* more than fit the stack array of framed bufs */
        for (int i = 0; i < 20; i++)
            many[i] = uv_buf_init((char *)alphabet + 5 + i, 1);
        conn_stream_write(c, many, 20, NULL, NULL);
        if (path_is(req, "/chunked")) {
            conn_stream_end(c);
        } else {
            h->later_conn = c;
            h->later_mode = LATER_STREAM_END;
        }
    } else if (path_is(req, "/defer")) {
        h->later_conn = c;
        h->later_mode = LATER_RESPOND;
    } else if (path_is(req, "/defer-close")) {
        h->later_conn = c;
        h->later_mode = LATER_CLOSE;
    } else if (path_is(req, "/defer-forever")) {
        /* never answered: server_close() takes the conn */
    } else if (path_is(req, "/stop-accepting")) {
        server_stop_accepting(h->srv);
        server_stop_accepting(h->srv);
        echo(c, req);
    } else if (path_is(req, "/close-now")) {
        conn_close(c, 1);
    } else if (path_is(req, "/peer")) {
        const char *peer = conn_peer(c);
        conn_respond(c, 200, "text/plain", NULL, peer, strlen(peer));
    } else if (path_is(req, "/small-sndbuf")) {
        uv_os_fd_t fd;
        int size = 4096;
        if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
        echo(c, req);
    } else {
        echo(c, req);
    }
}

static void on_later(uv_timer_t *timer)
{
    struct harness *h = timer->data;
    struct conn *c = h->later_conn;
    h->later_conn = NULL;
    if (h->later_mode == LATER_RESPOND)
        conn_respond(c, 200, "text/plain", NULL, "later", 5);
    else if (h->later_mode == LATER_CLOSE)
        conn_close(c, 0);
    else
        conn_stream_end(c);
    bump(h, &h->later_ran);
}

static void on_probe(uv_prepare_t *prepare)
{
    struct harness *h = prepare->data;
    /* Deferred work starts from here so that it never runs inside the
     * request callback. */
    if (h->later_conn && !uv_is_active((uv_handle_t *)&h->later))
        uv_timer_start(&h->later, on_later, 50, 0);
    if (h->srv == NULL)
        return;
    const struct server *s = h->srv;
    long streams = 0, rbuf = 0, pinned = 0;
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &s->conns) {
        const struct conn *c = container_of(pos, struct conn, node);
        if (c->awaiting && uv_is_closing((const uv_handle_t *)&c->tcp))
            pinned++;
        if (c->state == CONN_STREAMING) {
            streams++;
            rbuf += (long)c->rbuf.cap;
        }
    }
    pthread_mutex_lock(&h->mu);
    h->pauses = (long)s->read_pauses;
    h->accept_errors = (long)s->accept_errors;
    h->conns = (long)s->conn_count;
    h->streams = streams;
    h->stream_rbuf_bytes = rbuf;
    h->pinned = pinned;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

static void on_server_done(void *arg)
{
    struct harness *h = arg;
    bump(h, &h->done_calls);
}

static void on_finish(uv_async_t *async)
{
    struct harness *h = async->data;
    pthread_mutex_lock(&h->mu);
    h->conns_at_finish = (long)server_connection_count(h->srv);
    pthread_mutex_unlock(&h->mu);
    server_close(h->srv, on_server_done, h);
    h->srv = NULL;
    uv_close((uv_handle_t *)&h->finish, NULL);
    uv_close((uv_handle_t *)&h->watchdog, NULL);
    uv_close((uv_handle_t *)&h->later, NULL);
    uv_close((uv_handle_t *)&h->probe, NULL);
}

static void on_watchdog(uv_timer_t *timer)
{
    fprintf(stderr, "  watchdog: the test did not finish within 15 s\n");
    abort();
}

static void *client_main(void *arg)
{
    struct harness *h = arg;
    h->scenario(h);
    return NULL;
}

/* Asks the loop to close the server; the scenario may go on observing. */
static void harness_finish(struct harness *h)
{
    uv_async_send(&h->finish);
}

static struct server_config test_config(void)
{
    struct server_config cfg = {
        .host = "127.0.0.1",
        .port = 0,
        .max_header = 4096,
        .max_body = 1024 * 1024,
        .head_timeout_ms = 5000,
        .keepalive_timeout_ms = 5000,
    };
    return cfg;
}

/* Runs scenario against a server with cfg; h may be pre-set by the caller. */
static void harness_run(struct harness *h, const struct server_config *cfg,
                        void (*scenario)(struct harness *h))
{
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->cv, NULL);
    h->scenario = scenario;
    CHECK_EQ(uv_loop_init(&h->loop), 0);
    int rc = server_start(&h->loop, cfg, on_request, h, &h->srv);
    CHECK_EQ(rc, 0);
    if (rc != 0)
        abort();
    h->port = server_port(h->srv);
    if (h->steal_emfile_reserve && h->loop.emfile_fd >= 0) {
        close(h->loop.emfile_fd);
        h->loop.emfile_fd = -1;
    }
    uv_async_init(&h->loop, &h->finish, on_finish);
    h->finish.data = h;
    uv_timer_init(&h->loop, &h->watchdog);
    uv_timer_start(&h->watchdog, on_watchdog, 15000, 0);
    uv_timer_init(&h->loop, &h->later);
    h->later.data = h;
    uv_prepare_init(&h->loop, &h->probe);
    h->probe.data = h;
    uv_prepare_start(&h->probe, on_probe);
    pthread_create(&h->thread, NULL, client_main, h);
    uv_run(&h->loop, UV_RUN_DEFAULT);
    pthread_join(h->thread, NULL);
    CHECK_EQ(h->done_calls, 1);
    CHECK_EQ(uv_loop_close(&h->loop), 0);
    pthread_cond_destroy(&h->cv);
    pthread_mutex_destroy(&h->mu);
}

/* ---- the client side (scenario thread) -------------------------------------- */

static void set_timeouts(int fd)
{
    struct timeval tv = {RECV_TIMEOUT_MS / 1000, (RECV_TIMEOUT_MS % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

static int client_socket(int rcvbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    set_timeouts(fd);
    if (rcvbuf)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    return fd;
}

static int client_connect_fd(int fd, int port)
{
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", port, &a);
    return connect(fd, (struct sockaddr *)&a, sizeof(a));
}

static int client_connect(struct harness *h)
{
    int fd = client_socket(0);
    CHECK_EQ(client_connect_fd(fd, h->port), 0);
    return fd;
}

static void send_str(int fd, const char *s)
{
    size_t len = strlen(s), off = 0;
    while (off < len) {
        ssize_t n = send(fd, s + off, len - off, MSG_NOSIGNAL);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    CHECK_EQ(off, len);
}

/* Receives up to n bytes (fewer on EOF, error or deadline) into a malloc'd,
 * NUL-terminated buffer; *got tells how many. */
static char *recv_n(int fd, size_t n, size_t *got)
{
    char *p = xmalloc(n + 1);
    size_t off = 0;
    while (off < n) {
        ssize_t r = recv(fd, p + off, n - off, 0);
        if (r <= 0)
            break;
        off += (size_t)r;
    }
    p[off] = '\0';
    *got = off;
    return p;
}

/* Receives exactly the bytes of expected and checks them. */
#define EXPECT_RECV(fd, expected) do { \
    const char *exp_ = (expected); \
    size_t got_; \
    char *p_ = recv_n((fd), strlen(exp_), &got_); \
    CHECK_MEMEQ(p_, got_, exp_); \
    free(p_); \
    } while (0)

/* 1 when the peer closed (recv returns 0 or a reset) with no data first. */
static int recv_closed(int fd)
{
    char c;
    ssize_t r = recv(fd, &c, 1, 0);
    if (r == 0)
        return 1;
    if (r < 0 && errno == ECONNRESET)
        return 1;
    if (r > 0)
        fprintf(stderr, "  unexpected byte 0x%02x before close\n", (unsigned char)c);
    else
        fprintf(stderr, "  no close before the deadline: %s\n", strerror(errno));
    return 0;
}

static char *response(int status, const char *ctype, const char *body, const char *extra)
{
    struct buf b = {0};
    buf_printf(&b, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s\r\n%s",
               status, http_status_reason(status), ctype, strlen(body), extra ? extra : "", body);
    return b.data;
}

static char *echo_response(const char *method, const char *path, const char *extra)
{
    char body[512];
    snprintf(body, sizeof(body), "{\"method\":\"%s\",\"path\":\"%s\"}", method, path);
    return response(200, "application/json", body, extra);
}

static char *error_response(int status, const char *code, const char *message)
{
    char body[512];
    snprintf(body, sizeof(body), "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}", code, message);
    return response(status, "application/json", body, "Connection: close\r\n");
}

/* ---- scenarios and tests ---------------------------------------------------- */

static void keep_alive_scenario(struct harness *h)
{
    int fd = client_connect(h);
    char *r1 = echo_response("GET", "/one", NULL);
    char *r2 = echo_response("POST", "/two", NULL);
    send_str(fd, "GET /one HTTP/1.1\r\nHost: t\r\n\r\n");
    EXPECT_RECV(fd, r1);
    send_str(fd, "POST /two HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc");
    EXPECT_RECV(fd, r2);
    CHECK_EQ(read_counter(h, &h->requests), 2);
    free(r1);
    free(r2);
    close(fd);
    harness_finish(h);
}

static void keep_alive_serves_two_requests_on_one_connection(void)
{
    struct harness h = {0};
    struct server_config cfg = test_config();
    harness_run(&h, &cfg, keep_alive_scenario);
}

static void pipelined_scenario(struct harness *h)
{
    int fd = client_connect(h);
    send_str(fd, "GET /1 HTTP/1.1\r\nHost: t\r\n\r\nGET /2 HTTP/1.1\r\nHost: t\r\n\r\nDELETE /3 HTTP/1.1\r\nHost: t\r\n\r\n");
    char *r1 = echo_response("GET", "/1", NULL), *r2 = echo_response("GET", "/2", NULL);
    char *r3 = echo_response("DELETE", "/3", NULL);
    struct buf all = {0};
    buf_printf(&all, "%s%s%s", r1, r2, r3);
    EXPECT_RECV(fd, all.data);
    buf_free(&all);
    free(r1);
    free(r2);
    free(r3);
    close(fd);
    harness_finish(h);
}

static void pipelined_requests_sent_in_one_write_are_answered_in_order(void)
{
    struct harness h = {0};
    struct server_config cfg = test_config();
    harness_run(&h, &cfg, pipelined_scenario);
}

static void connection_close_scenario(struct harness *h)
{
    int fd = client_connect(h);
    send_str(fd, "GET /bye HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    char *r = echo_response("GET", "/bye", "Connection: close\r\n");
    EXPECT_RECV(fd, r);
    CHECK(recv_closed(fd));
    free(r);
    close(fd);
    harness_finish(h);
}

static void connection_close_request_is_answered_then_closed(void)
{
    struct harness h = {0};
    struct server_config cfg = test_config();
    harness_run(&h, &cfg, connection_close_scenario);
}

static void http10_scenario(struct harness *h)
{
    int fd = client_connect(h);
    send_str(fd, "GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    char *r = echo_response("GET", "/a", "Connection: keep-alive\r\n");
    EXPECT_RECV(fd, r);
    free(r);
    send_str(fd, "GET /b HTTP/1.0\r\n\r\n");
    r = echo_response("GET", "/b", "Connection: close\r\n");
    EXPECT_RECV(fd, r);
    CHECK(recv_closed(fd));
    free(r);
    close(fd);
    harness_finish(h);
}

static void http10_keep_alive_is_acknowledged_and_plain_http10_closes(void)
{
    struct harness h = {0};
    struct server_config cfg = test_config();
    harness_run(&h, &cfg, http10_scenario);
}

static void malformed_scenario(struct harness *h)
{
    int fd = client_connect(h);
    send_str(fd, "GET / HTTP/1.1\r\nHost: t\r\nNo colon here\r\n\r\nGET /never HTTP/1.1\r\nHost: t\r\n\r\n");
    char *r = error_response(400, http_error_code(HTTP_ERR_BAD_REQUEST),
                             http_strerror(HTTP_ERR_BAD_REQUEST));
    EXPECT_RECV(fd, r);
    CHECK(recv_closed(fd));
    CHECK_EQ(read_counter(h, &h->requests), 0);
    free(r);
    close(fd);
    harness_finish(h);
}

static void malformed_request_gets_400_json_error_and_close(void)
{
    struct harness h = {0};
    struct server_config cfg = test_config();
    harness_run(&h, &cfg, malformed_scenario);
}

static void head_too_large_scenario(struct harness *h)
{
    int fd = client_connect(h);
    struct buf req = {0};
    buf_append_str(&req, "GET / HTTP/1.1\r\nHost: t\r\nX-Big: ");
    for (int i = 0; i < 5000; i++)
        buf_append_str(&req, "a");
    buf_append_str(&req, "\r\n\r\n");
    send_str(fd, req.data);
    char *r = error_response(431, "header_too_large", http_strerror(HTTP_ERR_HEAD_TOO_LARGE));
    CHECK_STREQ(http_error_code(HTTP_ERR_HEAD_TOO_LARGE), "header_too_large");
    EXPECT_RECV(fd, r);
    CHECK(recv_closed(fd));
    free(r);
    buf_free(&req);
    close(fd);
    harness_finish(h);
}

static void oversized_head_gets_431_and_close(void)
{
    struct harness h = {0};
    struct server_config cfg = test_config();
    harness_run(&h, &cfg, head_too_large_scenario);
}

static void body_too_large_scenario(struct harness *h)
{
    int fd = client_connect(h);
    /* 100 MB announced, 4 KiB sent: the answer must not wait for the rest. */
    send_str(fd, "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 104857600\r\n\r\n");
    char chunk[4096];
    memset(chunk, 'x', sizeof(chunk));
    CHECK_EQ(send(fd, chunk, sizeof(chunk), MSG_NOSIGNAL), (ssize_t)sizeof(chunk));
    uint64_t t0 = now_ms();
    char *r = error_response(413, http_error_code(HTTP_ERR_BODY_TOO_LARGE),
                             http_strerror(HTTP_ERR_BODY_TOO_LARGE));
    EXPECT_RECV(fd, r);
    CHECK(recv_closed(fd));
    CHECK(now_ms() - t0 < 1500);
    CHECK_EQ(read_counter(h, &h->requests), 0);
    free(r);
    close(fd);
    harness_finish(h);
}

static void body_too_large_gets_413_without_reading_the_body(void)
{
    struct harness h = {0};
    struct server_config cfg = test_config();
    cfg.max_body = 1024;
    harness_run(&h, &cfg, body_too_large_scenario);
}

static void expect_continue_scenario(struct harness *h)
{
    int fd = client_connect(h);
    send_str(fd, "POST /up HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    EXPECT_RECV(fd, "HTTP/1.1 100 Continue\r\n\r\n");
    send_str(fd, "he");
    send_str(fd, "llo");
    char *r = echo_response("POST", "/up", NULL);
    EXPECT_RECV(fd, r);
    free(r);
    close(fd);
    harness_finish(h);
}

static void expect_continue_gets_one_100_then_the_answer(void)
{
    struct harness h = {0};
    struct server_config cfg = test_config();
    harness_run(&h, &cfg, expect_continue_scenario);
}

static void head_timeout_scenario(struct harness *h)
{
    int fd = client_connect(h);
    uint64_t t0 = now_ms();
    send_str(fd, "GET /slow HTTP/1.1\r\nHost: t\r\nHo");
    char *r = error_response(408, "request_timeout", "the request did not arrive in time");
    EXPECT_RECV(fd, r);
    uint64_t elapsed = now_ms() - t0;
    CHECK(elapsed >= 150 && elapsed < 2000);
    CHECK(recv_closed(fd));
    free(r);
    close(fd);
    harness_finish(h);
}

static void half_a_head_times_out_with_408_and_close(void)
{
    struct harness h = {0};
    struct server_config cfg = test_config();
    cfg.head_timeout_ms = 200;
    harness_run(&h, &cfg, head_timeout_scenario);
}

static void idle_scenario(struct harness *h)
{
    int fd = client_connect(h);
    send_str(fd, "GET /x HTTP/1.1\r\nHost: t\r\n\r\n");
    char *r = echo_response("GET", "/x", NULL);
    EXPECT_RECV(fd, r);
    uint64_t t0 = now_ms();
    CHECK(recv_closed(fd)); /* silently: no 408 on an idle connection */
    uint64_t elapsed = now_ms() - t0;
    CHECK(elapsed >= 150 && elapsed < 2000);
    free(r);
    close(fd);
    harness_finish(h);
}

static void idle_keep_alive_connection_is_closed_silently(void)
{
    struct harness h = {0};
    struct server_config cfg = test_config();
    cfg.keepalive_timeout_ms = 200;
    harness_run(&h, &cfg, idle_scenario);
}

static void half_close_scenario(struct harness *h)
{
    int fd = client_connect(h);
    send_str(fd, "GET /last HTTP/1.1\r\nHost: t\r\n\r\n");
    shutdown(fd, SHUT_WR);
    char *r = echo_response("GET", "/last", NULL);
    EXPECT_RECV(fd, r);
    CHECK(recv_closed(fd));
    free(r);
    close(fd);
    harness_finish(h);
}

static void half_closed_client_still_gets_its_answer(void)
{
    struct harness h = {0};
    struct server_config cfg = test_config();
    harness_run(&h, &cfg, half_close_scenario);
}

static void stream_close_scenario(struct harness *h)
{
    int fd = client_connect(h);
    send_str(fd, "GET /stream-close HTTP/1.1\r\nHost: t\r\n\r\nGET /discarded HTTP/1.1\r\nHost: t\r\n\r\n");
    EXPECT_RECV(fd, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
                    "hello world");
    CHECK(recv_closed(fd));
    CHECK(wait_for(h, &h->stream_closes, 1, RECV_TIMEOUT_MS));
    CHECK(wait_for(h, &h->stream_write_dones, 1, RECV_TIMEOUT_MS));
    CHECK_EQ(read_counter(h, &h->stream_write_status), 0);
    CHECK_EQ(read_counter(h, &h->requests), 1);
    close(fd);
    harness_finish(h);
}

static void stream_with_two_writes_then_conn_close_calls_on_close_once(void)
{
    struct harness h = {0};
    struct server_config cfg = test_config();
    harness_run(&h, &cfg, stream_close_scenario);
    CHECK_EQ(h.stream_closes, 1);
    CHECK_EQ(h.conns_at_finish, 0);
    CHECK_EQ(h.closes_when_close_returned, 1); /* synchronous, from conn_close() */
    CHECK_EQ(h.closes_when_write_done, 1);     /* pending writes finish after it */
    CHECK_EQ(h.write_after_close, UV_ECANCELED);
}

static void try_write_scenario(struct harness *h)
{
    int fd = client_connect(h);
    send_str(fd, "GET /try-chunked HTTP/1.1\r\nHost: t\r\n\r\n");
    EXPECT_RECV(fd, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "3\r\nxyz\r\n0\r\n\r\n");
    close(fd);
    fd = client_connect(h);
    send_str(fd, "GET /try-write HTTP/1.1\r\nHost: t\r\n\r\n");
    EXPECT_RECV(fd, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
                    "direct\nqueued\n");
    CHECK(recv_closed(fd));
    CHECK(wait_for(h, &h->stream_closes, 1, RECV_TIMEOUT_MS));
    close(fd);
    harness_finish(h);
}

/* The direct write goes out in order before later queued writes, as one
 * chunk on a chunked stream; it is refused once the conn is closing. */
static void send_writes_directly_in_order_and_frames_one_chunk(void)
{
    struct harness h = {0};
    struct server_config cfg = test_config();
    harness_run(&h, &cfg, try_write_scenario);
    CHECK_EQ(h.try_result, 1); /* a fresh loopback socket takes it all at once */
    CHECK_EQ(h.try_after_close, UV_ECANCELED);
    CHECK_EQ(h.try_chunked, 1);
    CHECK_EQ(h.stream_closes, 1);
    CHECK_EQ(h.conns_at_finish, 0);
}

static void big_chunk_scenario(struct harness *h)
{
    for (size_t i = 0; i < BIG_CHUNK; i++)
        big_chunk[i] = alphabet[i % 26];
    int fd = client_socket(4096);
    CHECK_EQ(client_connect_fd(fd, h->port), 0);
    send_str(fd, "GET /big-chunk HTTP/1.1\r\nHost: t\r\n\r\nGET /after HTTP/1.1\r\nHost: t\r\n\r\n");
    struct buf want = {0};
    buf_printf(&want, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
               "Transfer-Encoding: chunked\r\n\r\n%x\r\n", BIG_CHUNK);
    buf_append(&want, big_chunk, BIG_CHUNK);
    buf_append_str(&want, "\r\n0\r\n\r\n");
    char *r = echo_response("GET", "/after", NULL);
    buf_append_str(&want, r);
    free(r);
    size_t got;
    char *p = recv_n(fd, want.len, &got);
    CHECK_EQ(got, want.len);
    CHECK(got == want.len && memcmp(p, want.data, got) == 0);
    free(p);
    buf_free(&want);
    CHECK_EQ(read_counter(h, &h->big_send), 0); /* some of it was queued */
    CHECK_EQ(read_counter(h, &h->stream_closes), 0); /* a normal end */
    close(fd);
    CHECK(wait_for_at_most(h, &h->conns, 0, RECV_TIMEOUT_MS));
    harness_finish(h);
}

/* A chunk the kernel takes only part of: the rest, framing included, is
 * queued and the bytes on the wire are exactly one chunk; the end lets the
 * conn serve the pipelined request behind. */
static void send_queues_what_the_kernel_leaves_with_exact_chunk_framing(void)
{
    struct harness h = {0};
    struct server_config cfg = test_config();
    harness_run(&h, &cfg, big_chunk_scenario);
    CHECK_EQ(h.requests, 2);
    CHECK_EQ(h.conns_at_finish, 0);
}

static void head_scenario(struct harness *h)
{
    int fd = client_connect(h);
    /* HEAD of a handler's 200 and of an error, then a GET on the same
     * connection: no body bytes in between to be read as a response. */
    send_str(fd, "HEAD /x HTTP/1.1\r\nHost: t\r\n\r\n"
                 "HEAD /missing HTTP/1.1\r\nHost: t\r\n\r\n"
                 "GET /y HTTP/1.1\r\nHost: t\r\n\r\n");
    char *get_x = echo_response("HEAD", "/x", NULL);
    char *missing = response(404, "application/json",
                             "{\"error\":{\"code\":\"not_found\",\"message\":\"no such thing\"}}", NULL);
    char *get_y = echo_response("GET", "/y", NULL);
    struct buf want = {0};
    /* the heads as a GET would get them, Content-Length included */
    buf_append(&want, get_x, (size_t)(strstr(get_x, "\r\n\r\n") + 4 - get_x));
    buf_append(&want, missing, (size_t)(strstr(missing, "\r\n\r\n") + 4 - missing));
    buf_append_str(&want, get_y);
    EXPECT_RECV(fd, want.data);
    CHECK(strstr(want.data, "Content-Length: 29\r\n") != NULL);
    free(get_x);
    free(missing);
    free(get_y);
    buf_free(&want);
    close(fd);
    harness_finish(h);
}

static void head_answers_carry_no_body_and_keep_the_connection(void)
{
    struct harness h = {0};
    struct server_config cfg = test_config();
    harness_run(&h, &cfg, head_scenario);
    CHECK_EQ(h.requests, 3);
}

static void client_leaves_scenario(struct harness *h)
{
    int fd = client_connect(h);
    send_str(fd, "GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
    EXPECT_RECV(fd, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
                    "open\n");
    CHECK(wait_for(h, &h->streams, 1, RECV_TIMEOUT_MS));
    CHECK_EQ(read_counter(h, &h->stream_rbuf_bytes), 0); /* an idle stream buffers nothing */
    send_str(fd, "ignored bytes while streaming");
    close(fd);
    CHECK(wait_for(h, &h->stream_closes, 1, RECV_TIMEOUT_MS));

    /* The same with a reset instead of a FIN. */
    fd = client_connect(h);
    send_str(fd, "GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
    EXPECT_RECV(fd, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
                    "open\n");
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fd);
    CHECK(wait_for(h, &h->stream_closes, 2, RECV_TIMEOUT_MS));
    CHECK(wait_for_at_most(h, &h->conns, 0, RECV_TIMEOUT_MS));
    harness_finish(h);
}

static void client_closing_a_stream_calls_on_close_exactly_once(void)
{
    struct harness h = {0};
    struct server_config cfg = test_config();
    harness_run(&h, &cfg, client_leaves_scenario);
    CHECK_EQ(h.stream_closes, 2);
    CHECK_EQ(h.conns_at_finish, 0);
}

static const char chunked_body[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
    "5\r\nabcde\r\n6\r\nworld!\r\n14\r\nfghijklmnopqrstuvwxy\r\n0\r\n\r\n";

static void chunked_scenario(struct harness *h)
{
    int fd = client_connect(h);
    /* Ended inside the request callback, with a pipelined request behind. */
    send_str(fd, "GET /chunked HTTP/1.1\r\nHost: t\r\n\r\nGET /after HTTP/1.1\r\nHost: t\r\n\r\n");
    char *r = echo_response("GET", "/after", NULL);
    struct buf want = {0};
    buf_printf(&want, "%s%s", chunked_body, r);
    EXPECT_RECV(fd, want.data);
    free(r);
    /* Ended later from a timer, with a pipelined request behind. */
    send_str(fd, "GET /chunked-later HTTP/1.1\r\nHost: t\r\n\r\nGET /after2 HTTP/1.1\r\nHost: t\r\n\r\n");
    r = echo_response("GET", "/after2", NULL);
    buf_reset(&want);
    buf_printf(&want, "%s%s", chunked_body, r);
    EXPECT_RECV(fd, want.data);
    CHECK_EQ(read_counter(h, &h->later_ran), 1);
    CHECK_EQ(read_counter(h, &h->stream_write_dones), 2);
    CHECK_EQ(read_counter(h, &h->requests), 4);
    free(r);
    buf_free(&want);
    close(fd);
    harness_finish(h);
}

static void chunked_stream_frames_exactly_and_the_conn_is_reused_after_end(void)
{
    struct harness h = {0};
    struct server_config cfg = test_config();
    harness_run(&h, &cfg, chunked_scenario);
    CHECK_EQ(h.stream_closes, 0); /* conn_stream_end() never calls it */
}

static void server_close_scenario(struct harness *h)
{
    int idle = client_connect(h);
    send_str(idle, "GET /i HTTP/1.1\r\nHost: t\r\n\r\n");
    char *r = echo_response("GET", "/i", NULL);
    EXPECT_RECV(idle, r);
    free(r);
    int partial = client_connect(h);
    send_str(partial, "GET /p HTTP/1.1\r\nHost: t\r\n");
    int stream = client_connect(h);
    send_str(stream, "GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
    EXPECT_RECV(stream, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
                        "open\n");
    CHECK(wait_for(h, &h->conns, 3, RECV_TIMEOUT_MS));
    harness_finish(h);
    CHECK(recv_closed(idle));
    CHECK(recv_closed(partial));
    CHECK(recv_closed(stream));
    CHECK(wait_for(h, &h->done_calls, 1, RECV_TIMEOUT_MS));
    close(idle);
    close(partial);
    close(stream);
}

static void server_close_with_open_connections_calls_done_once(void)
{
    struct harness h = {0};
    struct server_config cfg = test_config();
    harness_run(&h, &cfg, server_close_scenario);
    CHECK_EQ(h.conns_at_finish, 3);
    CHECK_EQ(h.stream_closes, 1);
}

static void close_in_callback_scenario(struct harness *h)
{
    int fd = client_connect(h);
    send_str(fd, "GET /close-now HTTP/1.1\r\nHost: t\r\n\r\nGET /never HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(recv_closed(fd));
    CHECK_EQ(read_counter(h, &h->requests), 1);
    close(fd);
    harness_finish(h);
}

static void conn_close_inside_the_request_callback_stops_the_pipeline(void)
{
    struct harness h = {0};
    struct server_config cfg = test_config();
    harness_run(&h, &cfg, close_in_callback_scenario);
    CHECK_EQ(h.requests, 1);
}

static void deferred_scenario(struct harness *h)
{
    int fd = client_connect(h);
    send_str(fd, "GET /defer HTTP/1.1\r\nHost: t\r\n\r\nGET /next HTTP/1.1\r\nHost: t\r\n\r\n");
    char *r1 = response(200, "text/plain", "later", NULL);
    char *r2 = echo_response("GET", "/next", NULL);
    struct buf want = {0};
    buf_printf(&want, "%s%s", r1, r2);
    EXPECT_RECV(fd, want.data);
    free(r1);
    free(r2);
    buf_free(&want);
    close(fd);

    /* The client resets the connection while an answer is owed: the conn
     * stays valid for the owner's late answer, then goes. */
    fd = client_connect(h);
    send_str(fd, "GET /defer HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(wait_for(h, &h->requests, 3, RECV_TIMEOUT_MS));
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fd);
    CHECK(wait_for(h, &h->later_ran, 2, RECV_TIMEOUT_MS));
    CHECK(wait_for_at_most(h, &h->conns, 0, RECV_TIMEOUT_MS));
    harness_finish(h);
}

static void deferred_answer_keeps_order_and_survives_the_client_leaving(void)
{
    struct harness h = {0};
    struct server_config cfg = test_config();
    harness_run(&h, &cfg, deferred_scenario);
    CHECK_EQ(h.conns_at_finish, 0);
}

/* Sends path, then resets the connection once the server holds it closed
 * for its deferred answer. */
static void reset_while_owed(struct harness *h, const char *path, long requests_before)
{
    int fd = client_connect(h);
    char req[128];
    snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: t\r\n\r\n", path);
    send_str(fd, req);
    CHECK(wait_for(h, &h->requests, requests_before + 1, RECV_TIMEOUT_MS));
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fd);
}

static void deferred_close_scenario(struct harness *h)
{
    /* The owner closes instead of answering, after the client reset. */
    reset_while_owed(h, "/defer-close", 0);
    CHECK(wait_for(h, &h->later_ran, 1, RECV_TIMEOUT_MS));
    CHECK(wait_for_at_most(h, &h->conns, 0, RECV_TIMEOUT_MS));
    /* Never answered: the conn stays, closed, until server_close(). */
    reset_while_owed(h, "/defer-forever", 1);
    CHECK(wait_for(h, &h->pinned, 1, RECV_TIMEOUT_MS));
    harness_finish(h);
}

static void owed_answer_is_released_by_conn_close_or_server_close(void)
{
    struct harness h = {0};
    struct server_config cfg = test_config();
    harness_run(&h, &cfg, deferred_close_scenario);
    CHECK_EQ(h.conns_at_finish, 1);
}

static void stop_accepting_scenario(struct harness *h)
{
    int fd = client_connect(h);
    send_str(fd, "GET /stop-accepting HTTP/1.1\r\nHost: t\r\n\r\n");
    char *r = echo_response("GET", "/stop-accepting", NULL);
    EXPECT_RECV(fd, r);
    free(r);
    int other = client_socket(0);
    CHECK_EQ(client_connect_fd(other, h->port), -1);
    CHECK_EQ(errno, ECONNREFUSED);
    close(other);
    send_str(fd, "GET /still HTTP/1.1\r\nHost: t\r\n\r\n");
    r = echo_response("GET", "/still", NULL);
    EXPECT_RECV(fd, r);
    free(r);
    close(fd);
    harness_finish(h);
}

static void stop_accepting_refuses_new_connections_and_serves_open_ones(void)
{
    struct harness h = {0};
    struct server_config cfg = test_config();
    harness_run(&h, &cfg, stop_accepting_scenario);
}

static void peer_scenario(struct harness *h)
{
    int fd = client_connect(h);
    struct sockaddr_in me;
    socklen_t len = sizeof(me);
    getsockname(fd, (struct sockaddr *)&me, &len);
    char peer[64];
    snprintf(peer, sizeof(peer), "127.0.0.1:%d", ntohs(me.sin_port));
    send_str(fd, "GET /peer HTTP/1.1\r\nHost: t\r\n\r\n");
    char *r = response(200, "text/plain", peer, NULL);
    EXPECT_RECV(fd, r);
    free(r);
    close(fd);
    harness_finish(h);
}

static void conn_peer_is_ip_colon_port(void)
{
    struct harness h = {0};
    struct server_config cfg = test_config();
    harness_run(&h, &cfg, peer_scenario);
}

/* ---- backpressure ----------------------------------------------------------- */

#define FLOOD_REQUESTS 20000

static void *flood_sender(void *arg)
{
    int fd = *(int *)arg;
    struct buf all = {0};
    for (int i = 0; i < FLOOD_REQUESTS; i++)
        buf_printf(&all, "GET /%d HTTP/1.1\r\nHost: t\r\n\r\n", i);
    send_str(fd, all.data);
    buf_free(&all);
    return NULL;
}

static void flood_scenario(struct harness *h)
{
    int fd = client_socket(4096);
    set_timeouts(fd);
    CHECK_EQ(client_connect_fd(fd, h->port), 0);
    send_str(fd, "GET /small-sndbuf HTTP/1.1\r\nHost: t\r\n\r\n");
    char *r = echo_response("GET", "/small-sndbuf", NULL);
    EXPECT_RECV(fd, r);
    free(r);

    pthread_t sender;
    pthread_create(&sender, NULL, flood_sender, &fd);
    /* Nothing is read until the server stopped reading because over 1 MiB of
     * answers waits in libuv. */
    CHECK(wait_for(h, &h->pauses, 1, RECV_TIMEOUT_MS));
    int in_order = 1;
    for (int i = 0; i < FLOOD_REQUESTS && in_order; i++) {
        char path[16];
        snprintf(path, sizeof(path), "/%d", i);
        char *want = echo_response("GET", path, NULL);
        size_t got;
        char *p = recv_n(fd, strlen(want), &got);
        if (got != strlen(want) || memcmp(p, want, got) != 0) {
            fprintf(stderr, "  answer %d differs: %.*s\n", i, (int)got, p);
            in_order = 0;
        }
        free(p);
        free(want);
    }
    CHECK(in_order);
    pthread_join(sender, NULL);
    CHECK_EQ(read_counter(h, &h->requests), FLOOD_REQUESTS + 1);
    close(fd);
    harness_finish(h);
}

static void pipelined_flood_pauses_reading_and_answers_everything_in_order(void)
{
    struct harness h = {0};
    struct server_config cfg = test_config();
    harness_run(&h, &cfg, flood_scenario);
    CHECK(h.pauses >= 1);
}

/* ---- running out of descriptors --------------------------------------------- */

static void emfile_scenario(struct harness *h)
{
    int fd = client_socket(0);
    struct rlimit old, low;
    getrlimit(RLIMIT_NOFILE, &old);
    low = old;
    low.rlim_cur = 256;
    CHECK_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
    static int fillers[256];
    int nfill = 0, devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0)
        fillers[nfill++] = devnull;
    while (nfill < (int)RC_ARRAY_SIZE(fillers)) {
        int f = dup(devnull);
        if (f < 0)
            break;
        fillers[nfill++] = f;
    }
    CHECK(nfill > 0 && nfill < (int)RC_ARRAY_SIZE(fillers));

    /* The handshake completes in the kernel's backlog; accept() fails. */
    CHECK_EQ(client_connect_fd(fd, h->port), 0);
    CHECK(wait_for(h, &h->accept_errors, 1, RECV_TIMEOUT_MS));
    uint64_t t1 = now_ms();
    CHECK(wait_for(h, &h->accept_errors, 3, RECV_TIMEOUT_MS));
    uint64_t t3 = now_ms();
    /* Two back-off periods between the first and third failure: no spin. */
    CHECK(t3 - t1 >= 2 * ACCEPT_BACKOFF_MS - 30);

    for (int i = 0; i < nfill; i++)
        close(fillers[i]);
    setrlimit(RLIMIT_NOFILE, &old);
    send_str(fd, "GET /again HTTP/1.1\r\nHost: t\r\n\r\n");
    char *r = echo_response("GET", "/again", NULL);
    EXPECT_RECV(fd, r);
    free(r);
    close(fd);
    harness_finish(h);
}

static void accept_emfile_backs_off_without_spinning_and_recovers(void)
{
    struct harness h = {0};
    struct server_config cfg = test_config();
    /* libuv first tries its own EMFILE trick with a reserved descriptor
     * (loop->emfile_fd); take the reserve away, as another thread grabbing
     * the freed descriptor would, so that the connection callback sees the
     * error and the server's own back-off is what is tested. */
    h.steal_emfile_reserve = 1;
    harness_run(&h, &cfg, emfile_scenario);
    CHECK(h.accept_errors >= 3);
}

static void server_start_reports_bad_or_busy_addresses(void)
{
    uv_loop_t loop;
    CHECK_EQ(uv_loop_init(&loop), 0);
    struct server_config cfg = test_config();
    struct server *a = NULL, *b = NULL;
    CHECK_EQ(server_start(&loop, &cfg, on_request, NULL, &a), 0);
    cfg.port = server_port(a);
    CHECK(cfg.port > 0);
    CHECK_EQ(server_start(&loop, &cfg, on_request, NULL, &b), UV_EADDRINUSE);
    CHECK(b == NULL);
    char long_host[300];
    memset(long_host, 'a', sizeof(long_host) - 1);
    long_host[sizeof(long_host) - 1] = '\0';
    cfg.host = long_host;
    CHECK_EQ(server_start(&loop, &cfg, on_request, NULL, &b), UV_EINVAL);
    CHECK(b == NULL);
    cfg.host = "localhost"; /* a name is resolved */
    cfg.port = 0;
    CHECK_EQ(server_start(&loop, &cfg, on_request, NULL, &b), 0);
    CHECK(b != NULL && server_port(b) > 0);
    struct harness h = {0};
    pthread_mutex_init(&h.mu, NULL);
    pthread_cond_init(&h.cv, NULL);
    server_close(a, on_server_done, &h);
    if (b)
        server_close(b, on_server_done, &h);
    CHECK_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
    CHECK_EQ(h.done_calls, 2);
    CHECK_EQ(uv_loop_close(&loop), 0);
}

static void ipv6_scenario(struct harness *h)
{
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    set_timeouts(fd);
    struct sockaddr_in6 a;
    uv_ip6_addr("::1", h->port, &a);
    CHECK_EQ(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    struct sockaddr_in6 me;
    socklen_t len = sizeof(me);
    getsockname(fd, (struct sockaddr *)&me, &len);
    char peer[64];
    snprintf(peer, sizeof(peer), "[::1]:%d", ntohs(me.sin6_port));
    send_str(fd, "GET /peer HTTP/1.1\r\nHost: t\r\n\r\n");
    char *r = response(200, "text/plain", peer, NULL);
    EXPECT_RECV(fd, r);
    free(r);
    close(fd);
    harness_finish(h);
}

static void ipv6_listener_serves_and_formats_the_peer(void)
{
    int probe = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 a;
    uv_ip6_addr("::1", 0, &a);
    int have_v6 = probe >= 0 && bind(probe, (struct sockaddr *)&a, sizeof(a)) == 0;
    if (probe >= 0)
        close(probe);
    if (!have_v6) {
        fprintf(stderr, "  (no IPv6 loopback here: skipped)\n");
        return;
    }
    struct harness h = {0};
    struct server_config cfg = test_config();
    cfg.host = "::1";
    harness_run(&h, &cfg, ipv6_scenario);
}

static void idle_conn_is_small(void)
{
    /* Both libuv handles included; the read buffer is released when empty. */
    CHECK(sizeof(struct conn) <= 640);
}

static void chunk_size_lines_are_lowercase_hex_with_crlf(void)
{
    static const struct {
        size_t len;
        const char *line;
    } cases[] = {
        {0, "0\r\n"}, {1, "1\r\n"}, {15, "f\r\n"}, {16, "10\r\n"}, {0x1a3, "1a3\r\n"},
        {600000, "927c0\r\n"}, {SIZE_MAX, "ffffffffffffffff\r\n"},
    };
    for (size_t i = 0; i < RC_ARRAY_SIZE(cases); i++) {
        char out[CHUNK_HEAD_MAX];
        int n = chunk_size_line(out, cases[i].len);
        CHECK_EQ(n, (int)strlen(cases[i].line));
        CHECK(memcmp(out, cases[i].line, (size_t)n) == 0);
    }
}

/* ---- the send batch: both paths ------------------------------------------ */

static const char *const batch_head =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n";
static const char *const batch_head_close =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n";

/* Sets the send path: io_uring (returns 0 where the kernel refuses it, and
 * the caller skips), or the forced fallback. */
static int use_send_path(int io_uring)
{
    conn_send_batch_close();
    if (io_uring)
        unsetenv("RUNCAST_IO_URING");
    else
        setenv("RUNCAST_IO_URING", "0", 1);
    int on = conn_send_batch_init();
    CHECK_STREQ(conn_send_path(), on ? "io_uring" : "sendmsg");
    if (!io_uring)
        CHECK_EQ(on, 0);
    if (io_uring && !on)
        fprintf(stderr, "  io_uring unavailable here: its half of this test is skipped\n");
    return io_uring ? on : 1;
}

/* Runs scenario on a fresh harness *h over the given send path. Returns 0
 * (nothing run) where io_uring was asked for and the kernel refuses it. */
static int run_on_send_path(int io_uring, void (*scenario)(struct harness *), struct harness *h)
{
    if (!use_send_path(io_uring))
        return 0;
    *h = (struct harness){0};
    struct server_config cfg = test_config();
    harness_run(h, &cfg, scenario);
    return 1;
}

static void batch_small_scenario(struct harness *h)
{
    int fd = client_connect(h);
    send_str(fd, "GET /batch-small HTTP/1.1\r\nHost: t\r\n\r\n");
    EXPECT_RECV(fd, batch_head);
    EXPECT_RECV(fd, "3\r\nxyz\r\n0\r\n\r\n");
    close(fd);
    CHECK(wait_for_at_most(h, &h->conns, 0, RECV_TIMEOUT_MS));
    harness_finish(h);
}

/* A chunk the socket takes at once: without io_uring it is written on the
 * spot (1, no callback); in the batch it waits, counted as the conn's, and
 * the batch's end tells its on_done once with 0. The bytes are the same. */
static void batched_send_that_fits_completes_once_at_the_batch_end(void)
{
    for (int io_uring = 1; io_uring >= 0; io_uring--) {
        struct harness h;
        if (!run_on_send_path(io_uring, batch_small_scenario, &h))
            continue;
        CHECK_EQ(h.batch_send, io_uring ? 0 : 1);
        CHECK_EQ(h.batch_pending, io_uring ? 8 : 0); /* "3\r\n" "xyz" "\r\n" */
        CHECK_EQ(h.batch_queued_after_end, 0);
        CHECK_EQ(h.batch_done_calls, io_uring ? 1 : 0);
        CHECK_EQ(h.batch_done_calls_at_end, io_uring ? 1 : 0);
        CHECK_EQ(h.batch_done_status, 0);
        CHECK_EQ(h.stream_closes, 0);
        CHECK_EQ(h.conns_at_finish, 0);
    }
}

static void batch_big_scenario(struct harness *h)
{
    for (size_t i = 0; i < BIG_CHUNK; i++)
        big_chunk[i] = alphabet[i % 26];
    int fd = client_socket(4096);
    CHECK_EQ(client_connect_fd(fd, h->port), 0);
    send_str(fd, "GET /batch-big HTTP/1.1\r\nHost: t\r\n\r\nGET /after HTTP/1.1\r\nHost: t\r\n\r\n");
    struct buf want = {0};
    buf_printf(&want, "%s%x\r\n", batch_head, BIG_CHUNK);
    buf_append(&want, big_chunk, BIG_CHUNK);
    buf_append_str(&want, "\r\n0\r\n\r\n");
    char *r = echo_response("GET", "/after", NULL);
    buf_append_str(&want, r);
    free(r);
    size_t got;
    char *p = recv_n(fd, want.len, &got);
    CHECK_EQ(got, want.len);
    CHECK(got == want.len && memcmp(p, want.data, got) == 0);
    free(p);
    buf_free(&want);
    close(fd);
    CHECK(wait_for_at_most(h, &h->conns, 0, RECV_TIMEOUT_MS));
    harness_finish(h);
}

/* A chunk the kernel takes only part of, on both paths: the exact rest
 * (framing included) is queued when the batch ends, before anything else
 * can be written, and on_done runs once, when the rest is written. */
static void batched_partial_send_queues_the_exact_rest(void)
{
    for (int io_uring = 1; io_uring >= 0; io_uring--) {
        struct harness h;
        if (!run_on_send_path(io_uring, batch_big_scenario, &h))
            continue;
        size_t total = strlen("927c0\r\n") + BIG_CHUNK + 2;
        CHECK_EQ(h.batch_send, 0);
        CHECK_EQ(h.batch_pending, io_uring ? (long)total : h.batch_queued_after_end);
        CHECK(h.batch_queued_after_end > 0 && h.batch_queued_after_end < (long)total);
        CHECK_EQ(h.batch_done_calls_at_end, 0); /* the queued rest tells it */
        CHECK_EQ(h.batch_done_calls, 1);
        CHECK_EQ(h.batch_done_status, 0);
        CHECK_EQ(h.requests, 2);
        CHECK_EQ(h.conns_at_finish, 0);
    }
}

static void batch_full_scenario(struct harness *h)
{
    int fd = client_socket(4096);
    CHECK_EQ(client_connect_fd(fd, h->port), 0);
    send_str(fd, "GET /batch-full HTTP/1.1\r\nHost: t\r\n\r\n");
    EXPECT_RECV(fd, batch_head_close);
    CHECK(wait_for(h, &h->batch_ends, 1, RECV_TIMEOUT_MS));
    long filled = read_counter(h, &h->batch_filled);
    CHECK(filled > 0);
    size_t got;
    char *p = recv_n(fd, (size_t)filled + 11, &got);
    CHECK_EQ(got, (size_t)filled + 11);
    size_t fs = 0;
    while (fs < got && p[fs] == 'f')
        fs++;
    CHECK_EQ(fs, (size_t)filled);
    CHECK_MEMEQ(p + fs, got - fs, "after-full\n");
    free(p);
    CHECK(recv_closed(fd));
    close(fd);
    CHECK(wait_for_at_most(h, &h->conns, 0, RECV_TIMEOUT_MS));
    harness_finish(h);
}

/* A socket that is already full (EAGAIN): the whole chunk is queued, in
 * order after the bytes already in the socket, and on_done runs once when
 * the client has read its way to it. */
static void batched_send_to_a_full_socket_is_queued_whole(void)
{
    for (int io_uring = 1; io_uring >= 0; io_uring--) {
        struct harness h;
        if (!run_on_send_path(io_uring, batch_full_scenario, &h))
            continue;
        CHECK_EQ(h.batch_send, 0);
        CHECK_EQ(h.batch_pending, 11); /* in the batch, or queued in libuv */
        CHECK_EQ(h.batch_queued_after_end, 11);
        CHECK_EQ(h.batch_done_calls_at_end, 0);
        CHECK_EQ(h.batch_done_calls, 1);
        CHECK_EQ(h.batch_done_status, 0);
        CHECK_EQ(h.stream_closes, 1);
        CHECK_EQ(h.conns_at_finish, 0);
    }
}

static void batch_epipe_scenario(struct harness *h)
{
    int fd = client_connect(h);
    send_str(fd, "GET /batch-epipe HTTP/1.1\r\nHost: t\r\n\r\n");
    EXPECT_RECV(fd, batch_head);
    CHECK(recv_closed(fd));
    CHECK(wait_for(h, &h->stream_closes, 1, RECV_TIMEOUT_MS));
    close(fd);
    CHECK(wait_for_at_most(h, &h->conns, 0, RECV_TIMEOUT_MS));
    harness_finish(h);
}

/* A socket that can no longer send: without io_uring the send fails on the
 * spot (no callback); in the batch, on_done gets the error once at the
 * batch's end. Either way the conn closes and its owner hears once. */
static void batched_send_on_a_dead_socket_fails_once_and_closes(void)
{
    for (int io_uring = 1; io_uring >= 0; io_uring--) {
        struct harness h;
        if (!run_on_send_path(io_uring, batch_epipe_scenario, &h))
            continue;
        CHECK_EQ(h.batch_send, io_uring ? 0 : UV_EPIPE);
        CHECK_EQ(h.batch_done_calls, io_uring ? 1 : 0);
        CHECK_EQ(h.batch_done_calls_at_end, io_uring ? 1 : 0);
        CHECK_EQ(h.batch_done_status, io_uring ? UV_EPIPE : 0);
        CHECK_EQ(h.stream_closes, 1);
        CHECK_EQ(h.conns_at_finish, 0);
    }
}

static void batch_close_scenario(struct harness *h)
{
    int fd = client_connect(h);
    send_str(fd, "GET /batch-close HTTP/1.1\r\nHost: t\r\n\r\n");
    EXPECT_RECV(fd, batch_head_close);
    EXPECT_RECV(fd, "abc");
    CHECK(recv_closed(fd));
    close(fd);
    CHECK(wait_for_at_most(h, &h->conns, 0, RECV_TIMEOUT_MS));
    harness_finish(h);
}

/* A conn closed while its send waits in the batch: the send goes out
 * before the FIN, and on_done still runs once, at the batch's end. */
static void conn_closed_inside_the_batch_sends_first_then_closes(void)
{
    for (int io_uring = 1; io_uring >= 0; io_uring--) {
        struct harness h;
        if (!run_on_send_path(io_uring, batch_close_scenario, &h))
            continue;
        CHECK_EQ(h.batch_send, io_uring ? 0 : 1);
        CHECK_EQ(h.batch_done_calls, io_uring ? 1 : 0);
        CHECK_EQ(h.batch_done_calls_at_end, io_uring ? 1 : 0);
        CHECK_EQ(h.batch_done_status, 0);
        CHECK_EQ(h.stream_closes, 1);
        CHECK_EQ(h.conns_at_finish, 0);
    }
}

int main(void)
{
    log_configure(LOG_ERROR, LOG_TEXT); /* the EMFILE test warns, as it should */
    RUN_TEST(idle_conn_is_small);
    RUN_TEST(chunk_size_lines_are_lowercase_hex_with_crlf);
    RUN_TEST(keep_alive_serves_two_requests_on_one_connection);
    RUN_TEST(send_writes_directly_in_order_and_frames_one_chunk);
    RUN_TEST(send_queues_what_the_kernel_leaves_with_exact_chunk_framing);
    RUN_TEST(head_answers_carry_no_body_and_keep_the_connection);
    RUN_TEST(pipelined_requests_sent_in_one_write_are_answered_in_order);
    RUN_TEST(connection_close_request_is_answered_then_closed);
    RUN_TEST(http10_keep_alive_is_acknowledged_and_plain_http10_closes);
    RUN_TEST(malformed_request_gets_400_json_error_and_close);
    RUN_TEST(oversized_head_gets_431_and_close);
    RUN_TEST(body_too_large_gets_413_without_reading_the_body);
    RUN_TEST(expect_continue_gets_one_100_then_the_answer);
    RUN_TEST(half_a_head_times_out_with_408_and_close);
    RUN_TEST(idle_keep_alive_connection_is_closed_silently);
    RUN_TEST(half_closed_client_still_gets_its_answer);
    RUN_TEST(stream_with_two_writes_then_conn_close_calls_on_close_once);
    RUN_TEST(client_closing_a_stream_calls_on_close_exactly_once);
    RUN_TEST(chunked_stream_frames_exactly_and_the_conn_is_reused_after_end);
    RUN_TEST(server_close_with_open_connections_calls_done_once);
    RUN_TEST(conn_close_inside_the_request_callback_stops_the_pipeline);
    RUN_TEST(deferred_answer_keeps_order_and_survives_the_client_leaving);
    RUN_TEST(owed_answer_is_released_by_conn_close_or_server_close);
    RUN_TEST(stop_accepting_refuses_new_connections_and_serves_open_ones);
    RUN_TEST(conn_peer_is_ip_colon_port);
    RUN_TEST(pipelined_flood_pauses_reading_and_answers_everything_in_order);
    RUN_TEST(accept_emfile_backs_off_without_spinning_and_recovers);
    RUN_TEST(server_start_reports_bad_or_busy_addresses);
    RUN_TEST(ipv6_listener_serves_and_formats_the_peer);
    RUN_TEST(batched_send_that_fits_completes_once_at_the_batch_end);
    RUN_TEST(batched_partial_send_queues_the_exact_rest);
    RUN_TEST(batched_send_to_a_full_socket_is_queued_whole);
    RUN_TEST(batched_send_on_a_dead_socket_fails_once_and_closes);
    RUN_TEST(conn_closed_inside_the_batch_sends_first_then_closes);
    conn_send_batch_close();
    return test_report("test_server");
}
