/* hub.h: the fan-out of one session's events to its subscribers.
 *
 * A hub listens to its session's log (store.h) and hands every frame the
 * log appends, in order, to each subscriber: no event byte is copied per
 * subscriber, a subscriber only holds references. Writes are batched per
 * loop iteration: an append only queues, a check handle flushes, one
 * vectored send per subscriber. A subscriber with a send in flight gets
 * the next batch when that send completes (hub_write_done() is the
 * "proceed" of h2o's generators). One loop-wide timer sends a keepalive
 * comment line to every stream that has been silent for heartbeat_ms; one
 * min-heap and one timer end streams at their deadlines.
 *
 * The hub knows no connection: a subscriber's transport is a small table of
 * functions (struct subscriber_ops). stream.c implements it on an HTTP
 * connection (the SSE response head, chunked framing); tests use a fake.
 */
#ifndef RUNCAST_HUB_H
#define RUNCAST_HUB_H

#include <uv.h>

#include "common.h"

struct hub;
struct store_log;
struct subscriber;

struct hub_config {
    size_t subscriber_buffer; /* unsent bytes queued per subscriber before it is dropped */
    uint64_t heartbeat_ms;    /* no stream stays silent longer (0: no keepalives) */
    uint64_t retry_ms;        /* the stream's opening "retry:" line (part of the first block) */
    int max_subscribers;      /* over this, hub_subscribe() fails with -ENOSPC */
    /* Called around each flush of the subscribers that got frames (NULL:
     * none), so the transports can hand the flush's sends to the kernel
     * together (conn_send_batch_begin/end). A send inside returns 0 and
     * completes through hub_write_done() at the end. */
    void (*flush_begin)(void);
    void (*flush_end)(void);
};

/* Why subscribers left, for metrics (runcast_subscribers_dropped_total{reason}). */
enum hub_drop_reason {
    HUB_DROP_SLOW = 0,  /* unsent bytes passed subscriber_buffer */
    HUB_DROP_LAGGED,    /* its next event was evicted from the log before it was sent */
    HUB_DROP_REASONS
};

/* What a subscriber's transport can do (Nchan's per-transport tables). The
 * hub calls these from the loop thread only; transport is what was given to
 * hub_subscribe(). */
struct subscriber_ops {
    /* Sends bufs (encoded SSE bytes) in order as one write. Returns 1 when
     * the transport took everything at once (bufs may be released on
     * return), 0 when some was queued: bufs must then stay valid and the
     * transport calls hub_write_done(write, status) once when the write
     * finished; or a negative errno when the transport is going away (it
     * then calls, or has called, hub_unsubscribe()). Nothing may overtake
     * bytes still queued. */
    int (*send)(void *transport, const uv_buf_t *bufs, unsigned nbufs, void *write);
    /* Bytes the transport holds that its peer has not taken. */
    size_t (*pending)(void *transport);
    /* The normal end of the stream, after what was already sent. The hub
     * has let go of the subscriber: the transport must not call
     * hub_unsubscribe() afterwards. */
    void (*end)(void *transport);
    /* Cuts the stream (abort: reset rather than flush what is queued). The
     * transport calls hub_unsubscribe() before this returns. */
    void (*cut)(void *transport, int abort);
};

/* Starts the heartbeat and deadline timers' handles on loop. Call once. */
void hub_init(uv_loop_t *loop, const struct hub_config *cfg);
/* Stops and closes the handles (at shutdown, once every hub is gone). */
void hub_shutdown(void);

/* A hub fanning out what log appends from now on (it becomes log's
 * listener). log must outlive the hub. Never fails. */
struct hub *hub_create(struct store_log *log);
/* Ends every stream normally (after flushing what log had appended, so a
 * session.closed appended just before is delivered), stops listening to the
 * log and frees the hub. Frames still being written are released when
 * their writes complete. */
void hub_destroy(struct hub *h);

/* The log's events were replaced (store_watch.reset): cuts every stream
 * (after what was already handed to its transport), so that clients
 * reconnect with their last id and are placed in the new log. */
void hub_reset(struct hub *h);

/* What a new subscriber asks for. */
struct hub_subscribe_options {
    const char *last_event_id; /* NULL when the client sent none */
    int from_live;
    /* time_mono_ms() at which the stream ends (its token expires), 0: never.
     * It then gets what was already handed to it, a `stream.closed`
     * {"reason": "token_expired"} without an id line (so the client's last
     * id stays the last event it really got), and a normal end. */
    uint64_t deadline_ms;
    /* Called once when the subscriber goes away, whatever the reason. Not
     * called when hub_subscribe() fails: the caller cleans up then. May be
     * NULL. */
    void (*on_leave)(void *arg);
    void *leave_arg;
    /* A view, for a stream in another framing (ADK's /run_sse and /run,
     * dropin.c); NULL for DESIGN.md's SSE stream. Every frame of the log
     * goes through view(view_arg, f, &end), in order, instead of straight
     * to the transport: it returns the frame to send (a new reference,
     * which may be f retained) or NULL to send nothing, and sets *end to
     * end the stream normally once what it returned is sent. A view stream
     * starts at the oldest frame the log retains and gets no "retry:"
     * line, no stream.reset and no deadline; keepalives it does get. */
    struct frame *(*view)(void *arg, struct frame *f, int *end);
    void *view_arg;
    /* What an idle stream gets every heartbeat interval (a frame that
     * outlives the stream); NULL: the SSE comment `: keepalive`. */
    struct frame *keepalive;
};

/* 1 when one more subscriber is allowed (--max-subscribers), else 0. */
int hub_has_room(void);
/* Makes transport a subscriber of h: stores it in *out (before anything is
 * sent, so the transport can hub_unsubscribe() from inside its send), then
 * sends the "retry:" line, a stream.reset when last_event_id cannot be
 * placed, and the replay, as DESIGN.md says. Returns 0, or -ENOSPC over
 * max_subscribers (nothing was sent, *out untouched). On 0 the subscriber
 * may already be gone (its first send failed). */
int hub_subscribe(struct hub *h, const struct subscriber_ops *ops, void *transport,
                  const struct hub_subscribe_options *opt, struct subscriber **out);
/* The transport went away (peer left, write error, cut): forgets and frees
 * s, calls its on_leave. Sends in flight lose their subscriber; their
 * frames are released when hub_write_done() reports them. */
void hub_unsubscribe(struct subscriber *s);
/* A send that returned 0 finished (status 0 or a negative errno): releases
 * its frames and, if its subscriber is still there, proceeds with what it
 * has to send next (an error cuts it). */
void hub_write_done(void *write, int status);

size_t hub_subscriber_count(const struct hub *h);
/* Totals over every hub, for metrics, status and the soak. */
size_t hub_total_subscribers(void);
uint64_t hub_dropped_total(enum hub_drop_reason reason);

#endif
