/* store.h: where a session's events live — ids, retention, replay positions.
 *
 * A store keeps one event log per session (struct store_log) and is reached
 * only through its table of functions (struct store_ops), so that another
 * store (Redis, CLUSTER.md) is one more file implementing the same table.
 * store_memory.c is the first: a bounded ring per session in this process.
 *
 * Every event is encoded once into a frame: the SSE bytes of the event
 * ("id: …\nevent: …\ndata: …\n\n"), reference-counted and shared by every
 * subscriber. The log owns one reference to each frame it retains; whoever
 * needs a frame longer (a subscriber's queue, a write in flight) takes its
 * own with frame_retain(). A log hands every frame it appends, in order, to
 * its one listener (the session's hub, hub.h): synchronously for the memory
 * store, when the store confirms the append for a remote one.
 *
 * Ids are "<incarnation as 8 hex digits>-<seq>": seq counts 1, 2, … within
 * a log; the incarnation is new for every log opened, so an id of a deleted
 * (or otherwise lost) log is recognised as foreign, never misplaced.
 */
#ifndef RUNCAST_STORE_H
#define RUNCAST_STORE_H

#include "common.h"

/* One encoded event, shared by every subscriber. */
struct frame {
    uint32_t refs;
    uint64_t seq; /* its place in the log; 0 for bytes outside any log (keepalives, preambles) */
    size_t len;
    char data[];
};

/* A new frame holding a copy of data, with one reference (the caller's). */
struct frame *frame_new(uint64_t seq, const char *data, size_t len);
static inline void frame_retain(struct frame *f)
{
    f->refs++;
}
/* Drops one reference; the last one frees the frame. Cannot fail. */
void frame_release(struct frame *f);
/* Frames alive in this process (in logs, queues or writes), for metrics and
 * the leak checks of tests and the soak. */
size_t frame_count(void);

struct store_config {
    int history;          /* --history: frames kept per session */
    size_t history_bytes; /* --history-bytes: bytes kept per session (the newest frame always stays) */
};

/* What a log knows about itself (DESIGN.md's ids and retention). */
struct store_meta {
    uint32_t incarnation;
    uint64_t oldest_seq;    /* oldest retained frame; newest_seq + 1 when none is */
    uint64_t newest_seq;    /* newest appended frame; 0 before the first */
    uint64_t run_start_seq; /* first frame of the latest run; 0 when no run started */
    size_t frames, bytes;   /* retained */
};

struct store_log;
/* Called with every frame a log appends, in seq order. The frame is
 * borrowed: retain it to keep it. */
typedef void (*store_listener_cb)(void *arg, struct frame *f);

/* A store's table of functions. A log is "struct store_log" to callers; an
 * implementation embeds it first in its own struct. Appends return the new
 * frame's seq (> 0) or a negative errno (the memory store never fails).
 * Loop thread only. */
struct store_ops {
    const char *name;
    /* Takes the limits; called once by store_init(). */
    void (*configure)(const struct store_config *cfg);
    /* A new empty log with a fresh incarnation. Never fails. */
    struct store_log *(*open)(void);
    /* Frees the log and its references. Its listener must be gone. */
    void (*close)(struct store_log *log);
    /* Sets (or with cb NULL clears) the one listener of log. */
    void (*listen)(struct store_log *log, store_listener_cb cb, void *arg);
    /* Appends a run's first event: default replay begins at the latest one. */
    int64_t (*start_run)(struct store_log *log, const char *event, const char *data, size_t len);
    /* Appends an event (data is a JSON object text, copied into the frame). */
    int64_t (*append)(struct store_log *log, const char *event, const char *data, size_t len);
    /* Appends a run's terminal event. */
    int64_t (*end_run)(struct store_log *log, const char *event, const char *data, size_t len);
    /* The frame with this seq (borrowed), or NULL when it is not (or no
     * longer) retained. Cheap: the fan-out calls it for every replayed frame. */
    struct frame *(*read)(const struct store_log *log, uint64_t seq);
    void (*meta)(const struct store_log *log, struct store_meta *out);
};

struct store_log {
    const struct store_ops *ops;
};

/* The in-memory store (store_memory.c). */
extern const struct store_ops store_memory_ops;

/* Chooses the store every store_open() uses and configures it. Call once,
 * before the first store_open(). */
void store_init(const struct store_ops *ops, const struct store_config *cfg);
/* A new log of the configured store. Never fails. */
struct store_log *store_open(void);

static inline void store_close(struct store_log *log)
{
    log->ops->close(log);
}
static inline void store_listen(struct store_log *log, store_listener_cb cb, void *arg)
{
    log->ops->listen(log, cb, arg);
}
static inline int64_t store_start_run(struct store_log *log, const char *event, const char *data,
                                      size_t len)
{
    return log->ops->start_run(log, event, data, len);
}
static inline int64_t store_append(struct store_log *log, const char *event, const char *data,
                                   size_t len)
{
    return log->ops->append(log, event, data, len);
}
static inline int64_t store_end_run(struct store_log *log, const char *event, const char *data,
                                    size_t len)
{
    return log->ops->end_run(log, event, data, len);
}
static inline struct frame *store_read(const struct store_log *log, uint64_t seq)
{
    return log->ops->read(log, seq);
}
static inline void store_meta(const struct store_log *log, struct store_meta *out)
{
    log->ops->meta(log, out);
}

/* ---- ids and positions (the same for every store) --------------------------- */

/* Writes the id of (incarnation, seq) into out (size >= 32). */
void store_format_id(char *out, size_t size, uint32_t incarnation, uint64_t seq);
/* Parses "<8 hex digits>-<seq>" as store_format_id() makes it. Returns 0,
 * or -EINVAL for anything a store cannot have made. */
int store_parse_id(const char *id, uint32_t *incarnation, uint64_t *seq);
/* The incarnation an event id names (what a deleted session's tombstone
 * compares): 0, or -EINVAL. */
int store_event_id_incarnation(const char *id, uint32_t *out);
/* Where a new subscriber of log starts, as DESIGN.md says: after
 * last_event_id (NULL when the client sent none), at the live end
 * (from_live), or at the latest run's first event. *reset_reason is NULL
 * when the position is exact, else why a stream.reset comes first
 * ("unknown_event_id", "event_id_evicted", "run_start_evicted"; static
 * strings) and the position is the oldest retained frame. */
uint64_t store_locate(const struct store_log *log, const char *last_event_id, int from_live,
                      const char **reset_reason);

#endif
