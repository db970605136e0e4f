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
 * store; for the Redis store (store_redis.c) when the event comes back
 * from Redis, so that every node delivers the same sequence.
 *
 * A shared store can change a log under its session's feet (another node
 * ends the run this node is running, deletes the session, or the store lost
 * data): it tells the session through the log's watcher (struct
 * store_watch). The memory store never does.
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

/* Where the fields of an encoded log frame are (sse_encode's "id: …\nevent:
 * …\ndata: …\n\n"): pointers into the frame, not NUL-terminated. data
 * points at the first "data:" line, data_end after the last data line. */
struct frame_parts {
    const char *id, *type, *data, *data_end;
    size_t id_len, type_len;
};
/* Finds f's parts. Returns 0, or -EINVAL for bytes that are no event
 * (keepalives, preambles). */
int frame_parse(const struct frame *f, struct frame_parts *out);

struct store_config {
    int history;          /* --history: frames kept per session */
    size_t history_bytes; /* --history-bytes: bytes kept per session (the newest frame always stays) */
    /* Called once for every terminal event (run.completed, ...) this
     * process wrote to a log, so that each run's outcome is counted once
     * however many nodes share the store. */
    void (*on_terminal)(const char *event);
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
/* The end of an asynchronous store step: 0 done as asked, STORE_REFUSED
 * (start_run: the cluster-wide --max-runs-per-user cap; the store wrote the
 * run's run.failed rate_limited instead), or a negative errno (-ENOTCONN,
 * -ETIMEDOUT, ...: the store is unavailable; nothing was written; for
 * ready(): -ENOENT the session was deleted, -EDQUOT the user has
 * --max-sessions-per-user sessions, -ECANCELED the log closed). */
typedef void (*store_done_cb)(void *arg, int status);
#define STORE_REFUSED 1

/* What a shared store tells a log's session (store_watch()). Called from
 * the loop at safe points, never from inside a store_* call. */
struct store_watch {
    /* The run run_id of this session, which this process runs, was ended
     * by someone else: its terminal event is in the log (event: its type,
     * "run.superseded", ...) or, event NULL, the store lost it (the session
     * then writes run.failed store_lost). The run must stop without
     * writing anything more. */
    void (*run_ended)(void *arg, const char *run_id, const char *event);
    /* The session was deleted or expired (its session.closed, whose
     * reason is given, is in the log and was handed to the listener). */
    void (*closed)(void *arg, const char *reason);
    /* The log's events were replaced (the store lost data, or this process
     * fell too far behind): what was handed to the listener so far does not
     * continue, so every stream must end (clients reconnect and resume from
     * their last id, or get stream.reset). */
    void (*reset)(void *arg);
    /* The session's subscribers on this node (shared task status, expiry). */
    size_t (*subscribers)(void *arg);
};

/* A store's table of functions. A log is "struct store_log" to callers; an
 * implementation embeds it first in its own struct. Appends return the new
 * frame's seq (> 0), 0 when the store confirms later (a remote store), or
 * a negative errno (the memory store never fails). Loop thread only. */
struct store_ops {
    const char *name;
    int shared; /* other processes share its logs (Redis): sessions are only copies here */
    /* Takes the limits; called once by store_init(). */
    void (*configure)(const struct store_config *cfg);
    /* The log of session (app, user, session): a new empty one with a fresh
     * incarnation for the memory store, the shared one (loading in the
     * background) for a remote store. Never fails. */
    struct store_log *(*open)(const char *app, const char *user, const char *session);
    /* Frees the log and its references (a remote store's at a safe time).
     * Its listener must be gone. */
    void (*close)(struct store_log *log);
    /* Sets (or with cb NULL clears) the one listener of log. */
    void (*listen)(struct store_log *log, store_listener_cb cb, void *arg);
    /* Sets the watcher of log (NULL: none). The memory store ignores it. */
    void (*watch)(struct store_log *log, const struct store_watch *w, void *arg);
    /* 1 when read() and meta() show the log's retained events, so that a
     * subscriber resuming after last_event_id (NULL: none) can be placed;
     * else 0, and done(arg, status) runs once when it is (0) or cannot be
     * (a negative errno). A remote store's copy may lag: an id it has not
     * seen yet makes it catch up first, rather than reset the client. */
    int (*ready)(struct store_log *log, const char *last_event_id, store_done_cb done, void *arg);
    /* Appends run_id's first event, replacing the session's current run
     * (DESIGN.md): default replay begins at the latest one. done(arg,
     * status) runs once, possibly before this returns, when the run is
     * registered; the events of the run appended meanwhile follow it. */
    int64_t (*start_run)(struct store_log *log, const char *run_id, const char *event,
                         const char *data, size_t len, store_done_cb done, void *arg);
    /* Appends an event of run_id (NULL: of no run, e.g. session.closed);
     * data is a JSON object text, copied into the frame. */
    int64_t (*append)(struct store_log *log, const char *run_id, const char *event,
                      const char *data, size_t len);
    /* Appends run_id's terminal event. */
    int64_t (*end_run)(struct store_log *log, const char *run_id, const char *event,
                       const char *data, size_t len);
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

/* A memory log used as another store's cache of a shared log
 * (store_redis.c): the caller decides every frame's seq. store_memory_put()
 * appends an event as (seq, epoch) and hands it to the listener; seq must
 * be the newest + 1, except right after store_memory_restart(), which drops
 * every frame and starts over at any (epoch, seq). */
struct store_log *store_memory_open_cache(uint32_t epoch);
void store_memory_put(struct store_log *log, uint64_t seq, const char *event, const char *data,
                      size_t len, int run_start);
void store_memory_restart(struct store_log *log, uint32_t epoch, uint64_t newest_seq,
                          uint64_t run_start_seq);

/* Chooses the store every store_open() uses and configures it. Call once,
 * before the first store_open(). */
void store_init(const struct store_ops *ops, const struct store_config *cfg);
/* The log of a session, of the configured store. Never fails. */
struct store_log *store_open(const char *app, const char *user, const char *session);
/* The configured store's name ("memory", "redis"). */
const char *store_name(void);
/* 1 when the configured store is shared with other processes. */
int store_is_shared(void);

static inline void store_close(struct store_log *log)
{
    log->ops->close(log);
}
static inline void store_listen(struct store_log *log, store_listener_cb cb, void *arg)
{
    log->ops->listen(log, cb, arg);
}
static inline void store_watch(struct store_log *log, const struct store_watch *w, void *arg)
{
    log->ops->watch(log, w, arg);
}
static inline int store_ready(struct store_log *log, const char *last_event_id,
                              store_done_cb done, void *arg)
{
    return log->ops->ready(log, last_event_id, done, arg);
}
static inline int64_t store_start_run(struct store_log *log, const char *run_id, const char *event,
                                      const char *data, size_t len, store_done_cb done, void *arg)
{
    return log->ops->start_run(log, run_id, event, data, len, done, arg);
}
static inline int64_t store_append(struct store_log *log, const char *run_id, const char *event,
                                   const char *data, size_t len)
{
    return log->ops->append(log, run_id, event, data, len);
}
static inline int64_t store_end_run(struct store_log *log, const char *run_id, const char *event,
                                    const char *data, size_t len)
{
    return log->ops->end_run(log, run_id, event, data, len);
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

/* The longest id with its NUL: 8 hex digits, '-', 20 digits. */
#define STORE_ID_MAX 30
/* Writes the id of (incarnation, seq) into out (size >= STORE_ID_MAX;
 * a smaller buffer gets it cut). */
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
