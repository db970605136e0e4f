/* stream.c: SSE streams on HTTP connections (see stream.h).
 *
 * Ownership: a struct stream belongs to its connection's stream: it is
 * freed from the connection's close callback (a cut: peer gone, write
 * error, drop, shutdown), after telling the hub, or by stream_end() when
 * the hub ends the stream normally (the connection then lets go of it). */
#include "stream.h"

#include <stdlib.h>

#include "server.h"

struct stream {
    struct conn *conn;
    struct subscriber *sub; /* set by hub_subscribe() before anything is sent */
};

static void stream_write_done(struct conn *c, void *arg, int status)
{
    hub_write_done(arg, status);
}

static int stream_send(void *transport, const uv_buf_t *bufs, unsigned nbufs, void *write)
{
    struct stream *st = transport;
    return conn_stream_send(st->conn, bufs, nbufs, stream_write_done, write);
}

static size_t stream_pending(void *transport)
{
    struct stream *st = transport;
    return conn_write_queue_bytes(st->conn);
}

/* The hub let go: the last chunk (or a graceful close on HTTP/1.0), and
 * the close callback will not run. */
static void stream_end(void *transport)
{
    struct stream *st = transport;
    struct conn *conn = st->conn;
    free(st);
    conn_stream_end(conn);
}

/* conn_close() runs the close callback at once, which unsubscribes. */
static void stream_cut(void *transport, int abort)
{
    struct stream *st = transport;
    conn_close(st->conn, abort);
}

static void stream_on_close(struct conn *c, void *arg)
{
    struct stream *st = arg;
    if (st->sub)
        hub_unsubscribe(st->sub);
    free(st);
}

static const struct subscriber_ops stream_ops = {
    .send = stream_send,
    .pending = stream_pending,
    .end = stream_end,
    .cut = stream_cut,
};

int stream_open(struct conn *conn, struct hub *h, const struct hub_subscribe_options *opt)
{
    if (!hub_has_room())
        return -ENOSPC;
    struct stream *st = xcalloc(1, sizeof(*st));
    st->conn = conn;
    int err = conn_stream_begin(conn, 200,
                                "Content-Type: text/event-stream\r\n"
                                "Cache-Control: no-cache\r\n"
                                "X-Accel-Buffering: no\r\n",
                                1, stream_on_close, st);
    if (err < 0) {
        free(st);
        return err;
    }
    /* Cannot fail: there was room just now, and nothing ran since. */
    return hub_subscribe(h, &stream_ops, st, opt, &st->sub);
}
