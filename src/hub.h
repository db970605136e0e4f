/* hub.h: a session's event log and the subscribers it fans out to.
 *
 * Every event is encoded once into a reference-counted frame; the log keeps
 * the latest frames (bounded by count and bytes) and each subscriber is only
 * a cursor into it, so no event byte is ever copied per subscriber. Writes
 * are batched per loop iteration: publishing only queues, a check handle
 * flushes. A subscriber with one write in flight gets the next batch when that write
 * completes (the write callback is the "proceed" of h2o's generators). One
 * loop-wide timer sends a keepalive comment line to every stream that has
 * been silent for heartbeat_ms.
 *
 * Streams are chunked on HTTP/1.1 (close-delimited on HTTP/1.0): a normal
 * end (hub_destroy, a deadline) sends the last chunk and the connection
 * serves the next request, while a drop or a shutdown cuts it, so a client
 * can tell the two apart.
 */
#ifndef RUNCAST_HUB_H
#define RUNCAST_HUB_H

#include <uv.h>

#include "common.h"

struct conn;
struct hub;

struct hub_config {
    int history;              /* frames kept per session */
    size_t history_bytes;     /* bytes kept per session */
    size_t subscriber_buffer; /* unsent bytes queued per subscriber before it is dropped */
    uint64_t heartbeat_ms;    /* no stream stays silent longer (0: no keepalives) */
    uint64_t retry_ms;        /* the stream's opening "retry:" line (part of the first block) */
    int max_subscribers;      /* over this, hub_subscribe() fails with -ENOSPC */
};

/* Why subscribers left, for metrics (runcast_subscribers_dropped_total{reason}). */
enum hub_drop_reason {
    HUB_DROP_SLOW = 0,  /* unsent bytes passed subscriber_buffer */
    HUB_DROP_LAGGED,    /* its next event was evicted from the log before it was sent */
    HUB_DROP_REASONS
};

/* Starts the heartbeat timer on loop. Call once. */
void hub_init(uv_loop_t *loop, const struct hub_config *cfg);
/* Stops and closes the heartbeat timer (at shutdown, once every hub is gone). */
void hub_shutdown(void);

/* A new empty log with a fresh incarnation id (ids of an earlier hub for the
 * same session are recognised as foreign). Never fails. */
struct hub *hub_create(void);
/* Ends every stream normally (after flushing what was already published,
 * so a session.closed published just before is delivered), then frees the
 * log.
 * Frames still being written are released when their writes complete. */
void hub_destroy(struct hub *h);

/* Appends one event to the log and queues it for every subscriber; the
 * queued frames are written when the current loop iteration has handled its
 * I/O, one vectored write per subscriber for all the events published
 * meanwhile. data is a JSON object text (copied into the frame). run_start marks the
 * first event of a run: the default replay of a new subscriber begins at the
 * latest such event. Returns the event's sequence number (1, 2, ...). */
uint64_t hub_publish(struct hub *h, const char *event, const char *data, size_t data_len,
                     int run_start);

/* Turns conn (whose request was GET …/run) into a subscriber: sends the SSE
 * response head and the retry line, then replays from the position that
 * last_event_id (NULL when the client sent none) or from_live selects, as
 * DESIGN.md says, with a stream.reset first when an id cannot be placed.
 * Returns 0, or -ENOSPC over max_subscribers (nothing was sent: the caller
 * answers 503), or another negative errno when the connection is gone. */
int hub_subscribe(struct hub *h, struct conn *conn, const char *last_event_id, int from_live);

/* hub_subscribe() with the rest of what a stream may need. */
struct hub_subscribe_options {
    const char *last_event_id; /* NULL when the client sent none */
    int from_live;
    /* time_mono_ms() at which the stream ends (its token expires), 0: never.
     * It then gets what was already handed to it, a `stream.closed`
     * {"reason": "token_expired"} without an id line (so the client's last
     * id stays the last event it really got), and a normal end. One
     * timer serves every stream's deadline (a min-heap). */
    uint64_t deadline_ms;
    /* Called once when the subscriber goes away, whatever the reason (from
     * its connection's close callback). Not called when hub_subscribe_with()
     * fails: the caller cleans up then. May be NULL. */
    void (*on_leave)(void *arg);
    void *leave_arg;
};
int hub_subscribe_with(struct hub *h, struct conn *conn, const struct hub_subscribe_options *opt);

size_t hub_subscriber_count(const struct hub *h);
/* The incarnation h's event ids carry (what tells a re-created session's
 * ids from the deleted one's), and the incarnation an event id names:
 * 0, or -EINVAL for an id hub_publish() cannot have made. */
uint32_t hub_incarnation(const struct hub *h);
int hub_event_id_incarnation(const char *id, uint32_t *out);
/* Totals over every hub, for metrics, status and the soak. */
size_t hub_total_subscribers(void);
size_t hub_total_frames(void);
uint64_t hub_dropped_total(enum hub_drop_reason reason);

#endif
