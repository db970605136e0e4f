/* server.h: an HTTP/1.1 listener and its connections on one libuv loop.
 *
 * A server owns its connections. Requests are parsed with http.h and handed to
 * the request callback one at a time, in order (pipelined requests wait in the
 * read buffer), so answers are always in request order. The callback answers
 * with one of the conn_respond*() functions or turns the connection into a
 * stream with conn_stream_begin(), before it returns or later.
 *
 * Deferred answers. A request callback may return without answering (the
 * gateway in Redis mode, until the store replies; the demo agent's !delay):
 * the conn then "owes an answer", parses nothing more until it comes, and
 * stays valid, even after the peer left, until the owner answers
 * (conn_respond*() on a closed conn is a no-op, conn_stream_begin() fails),
 * calls conn_close(), or server_close() takes it. There is no function for
 * it: not answering is the request.
 *
 * A server has no global state: runcast's API and the demo agent each run one,
 * on different loops (threads).
 */
#ifndef RUNCAST_SERVER_H
#define RUNCAST_SERVER_H

#include <uv.h>

#include "common.h"
#include "http.h"

struct server;
struct conn;

typedef void (*server_request_cb)(struct conn *c, const struct http_request *req, void *data);

struct server_config {
    const char *host;              /* "127.0.0.1", "::1", "0.0.0.0" */
    int port;                      /* 0: any free port, see server_port() */
    size_t max_header;             /* --max-header */
    size_t max_body;               /* --max-body */
    uint64_t head_timeout_ms;      /* a started request must complete its head (and body) within this: 408 */
    uint64_t keepalive_timeout_ms; /* an idle keep-alive connection is closed after this */
    void (*on_response)(int status); /* optional: every status line sent (metrics) */
};

/* Binds, listens and starts accepting. On success stores the server in *out
 * and returns 0; on error returns a negative errno (e.g. UV_EADDRINUSE) and
 * *out is untouched. */
int server_start(uv_loop_t *loop, const struct server_config *cfg,
                 server_request_cb on_request, void *data, struct server **out);
/* The port actually bound (useful with port 0). */
int server_port(const struct server *s);
/* Number of open connections (streams included). */
size_t server_connection_count(const struct server *s);
/* Stops accepting new connections; existing ones are served on. */
void server_stop_accepting(struct server *s);
/* Closes the listener and every connection (stream owners get their close
 * callback), then frees the server and calls done(arg) from a libuv close
 * callback. */
void server_close(struct server *s, void (*done)(void *arg), void *arg);

/* ---- answering a request ------------------------------------------------ */

/* Sends a complete response with Content-Length. extra_headers is NULL or
 * zero or more "Name: value\r\n" lines. The body is copied. A request that
 * asked for Connection: close, or an error status from the parser, closes the
 * connection after the write. */
void conn_respond(struct conn *c, int status, const char *content_type,
                  const char *extra_headers, const char *body, size_t body_len);
/* Sends a complete response whose framing the caller wrote: headers holds
 * every header line, Content-Length included where the status has a body
 * (a proxy passes the upstream's own to a HEAD). The body (copied) goes
 * out unless the request was HEAD or the status has none (1xx, 204, 304). */
void conn_respond_framed(struct conn *c, int status, const char *headers, const char *body,
                         size_t body_len);
/* Sends obj (a JSON object or array) as application/json. Does not steal the
 * reference. */
struct json_t;
void conn_respond_json(struct conn *c, int status, struct json_t *obj, const char *extra_headers);
/* Sends {"error": {"code": code, "message": message}} with status. */
void conn_respond_error(struct conn *c, int status, const char *code, const char *message,
                        const char *extra_headers);

/* Header lines ("Name: value\r\n"...) added to whatever answers the request
 * being dispatched: a response or a stream head (CORS headers, set once by
 * the gate in front of every handler). Copied; NULL or "" clears them. They
 * are forgotten when the next request is dispatched. */
void conn_set_answer_headers(struct conn *c, const char *lines);

/* ---- streams ------------------------------------------------------------ */

/* Notified once when a stream's connection goes away (peer closed or reset,
 * write error, conn_close(), server_close()), synchronously from inside
 * conn_close() when that is the cause. Write callbacks still pending run
 * after it (status UV_ECANCELED), and the conn's memory stays valid until
 * they have; conn_stream_write() on it fails. Not called for conns that never
 * began a stream, nor after conn_stream_end(). */
typedef void (*conn_close_cb)(struct conn *c, void *arg);
/* Notified when a stream write finished (status 0 or a negative errno). The
 * buffers passed to conn_stream_write() may be released from here. */
typedef void (*conn_write_cb)(struct conn *c, void *arg, int status);

/* Sends the status line and headers of a response with no Content-Length.
 * chunked=0: the body ends when the connection closes ("Connection: close" is
 * sent). chunked=1: Transfer-Encoding: chunked, and conn_stream_end() ends
 * the body and lets the connection serve the next request, so a client can
 * tell a cut from the end (SSE to browsers, the demo agent). An HTTP/1.0
 * request always gets chunked=0. Any pipelined bytes after the request are
 * discarded for chunked=0. Returns 0 or a negative errno. */
int conn_stream_begin(struct conn *c, int status, const char *headers, int chunked,
                      conn_close_cb on_close, void *arg);
/* Queues bufs (not copied: they must stay valid until on_done runs). For a
 * chunked stream the chunk framing is added around them. on_done may be NULL.
 * Returns 0 or a negative errno (the connection is closing; on_done is then
 * not called). */
int conn_stream_write(struct conn *c, const uv_buf_t *bufs, unsigned nbufs,
                      conn_write_cb on_done, void *arg);
/* Sends bufs (one chunk on a chunked stream) with one sendmsg for what the
 * kernel takes now, without a request, a callback or a copy: the cheap path
 * for streams that are keeping up (a queued uv_write costs a request, a
 * deferred callback and, in libuv 1.44, an epoll_ctl when it completes).
 * What the kernel leaves is queued: bufs must then stay valid until on_done
 * runs (the chunk framing is the conn's own). Nothing overtakes bytes still
 * queued. Returns 1 when everything was written (on_done is not called), 0
 * when some was queued (on_done will run), or a negative errno: the
 * connection is closing (on_done is not called). */
int conn_stream_send(struct conn *c, const uv_buf_t *bufs, unsigned nbufs,
                     conn_write_cb on_done, void *arg);
/* The send batch (io_uring, see server.c): between begin and end, a
 * conn_stream_send() that would write at once is kept and returns 0 (its
 * on_done runs from conn_send_batch_end(), after every send of the batch
 * went to the kernel in one io_uring_enter). Main loop thread only; not
 * nested. Without io_uring (unavailable, RUNCAST_IO_URING=0, or after a
 * failed submission) begin does nothing and every send is a sendmsg. */
void conn_send_batch_begin(void);
void conn_send_batch_end(void);
/* Sets up io_uring (done by the first begin otherwise). Returns 1 when
 * batches will use it, 0 when sends stay on sendmsg. */
int conn_send_batch_init(void);
/* "io_uring" or "sendmsg": how batched sends go out. */
const char *conn_send_path(void);
/* Releases the ring at shutdown (no batch open). */
void conn_send_batch_close(void);
/* Bytes this connection holds that the kernel has not taken: queued in
 * libuv, or waiting in the send batch. */
size_t conn_write_queue_bytes(const struct conn *c);
/* Ends the stream normally: a chunked one gets its last chunk and the
 * connection goes back to reading requests (unless the request asked for
 * Connection: close); a close-delimited one is closed gracefully. The close
 * callback is not called: the owner lets go here. */
void conn_stream_end(struct conn *c);
/* Closes the connection (gracefully: queued writes are flushed first unless
 * abort is nonzero, which resets it). Safe to call more than once and from
 * any callback; the memory is released later from a libuv close callback. */
void conn_close(struct conn *c, int abort);

/* Peer address as text ("127.0.0.1:5555"), for logs. */
const char *conn_peer(const struct conn *c);

/* ---- demo-only: what only the demo agent (src/demo/) uses ---------------
 *
 * The gateway never uses this; it serves the built-in demo agent, which
 * runs its own server on its own loop. It stays in the server because it is
 * made of the conn's internals (its state, chunk framing and write queue);
 * moving it into src/demo/ would mean exporting those for one client. */

/* Copies data into one queued write (a chunk on a chunked stream): the demo's
 * paced frames, written piece by piece. len 0 writes nothing and only checks
 * the conn. Returns 0 or a negative errno (UV_ECANCELED: the connection is
 * closing; UV_EINVAL: not a stream). */
int conn_stream_write_copy(struct conn *c, const void *data, size_t len);

#endif
