/* session.h: the table of chat sessions, keyed by (app, user, session).
 *
 * A session owns its event log (store.h), the hub that fans it out to
 * subscribers (hub.h) and its latest run. It is
 * created by the first POST or GET of its stream, and removed by DELETE, by
 * expiry (no subscriber and no activity for --session-ttl) or at shutdown.
 * Sessions sit in a list ordered by last activity, so expiry looks only at
 * the oldest ones: each session is touched in O(1).
 *
 * A session removed by DELETE leaves a tombstone: its key and the
 * incarnation of its event ids, kept for --session-ttl, so that a browser
 * reconnecting with an id of it gets 204 instead of re-creating the session
 * (DESIGN.md). At most --max-sessions tombstones are kept; past that the
 * oldest is forgotten early.
 */
#ifndef RUNCAST_SESSION_H
#define RUNCAST_SESSION_H

#include <uv.h>

#include "common.h"
#include "run.h"
#include "table.h"

struct hub;
struct store_log;
struct json_t;

struct session {
    struct table_entry entry;  /* in the session table, keyed by key[] */
    struct list activity_link; /* oldest activity first */
    const char *app, *user, *id; /* point into key[] ("app\0user\0id") */
    struct store_log *log;     /* owned: its events (store.h) */
    struct hub *hub;           /* owned: fans the log out to subscribers */
    struct run *run;           /* latest run, active or finished, or NULL; owned */
    struct run_host host;      /* what its runs see of it (run.h) */
    uint64_t last_activity_ms;
    double created_at;         /* wall clock seconds */
    char key[];
};

struct session_config {
    int max_sessions;
    uint64_t ttl_ms; /* 0: sessions never expire */
};

void session_table_init(uv_loop_t *loop, const struct session_config *cfg);
/* Ends every session's active run (reason) and every stream, without
 * session.closed (the sessions were not deleted, the server is stopping), and
 * stops the expiry timer. */
void session_table_shutdown(const char *reason);

/* Cancels every active run (reason), keeping sessions and streams: in Redis
 * mode, before session_table_shutdown(), so that the streams get the
 * run.cancelled back from Redis before they end. */
void session_table_end_runs(const char *reason);

/* The session, or NULL. Parameters must already be valid path parameters. */
struct session *session_find(const char *app, const char *user, const char *id);
/* Finds or creates. Returns 0 and *out; -ENOSPC at --max-sessions,
 * -EDQUOT when user already has --max-sessions-per-user (quota.h), or
 * -EINVAL for parts longer than path parameters can be. */
int session_get_or_create(const char *app, const char *user, const char *id,
                          struct session **out);
/* Marks activity now (requests, run events, subscribers). O(1). */
void session_touch(struct session *s);
/* Starts a new run as s's current one (POST …/run): the previous run, if
 * still active, ends as superseded by it first and is freed; then the new
 * run starts, queues or fails (run_begin(), which calls on_registered(arg,
 * status) once the store registered it). Takes ownership of in's
 * references. Returns the run, owned by s. Never fails. */
struct run *session_start_run(struct session *s, const struct run_input *in,
                              store_done_cb on_registered, void *arg);
/* The per-session object of DESIGN.md "Task status" (a new reference). */
struct json_t *session_status_json(const struct session *s);
/* Cancels the active run (run.cancelled with reason), publishes
 * session.closed, ends every stream, frees the session and leaves its
 * tombstone (for DELETE; expiry removes sessions without one). */
void session_delete(struct session *s, const char *reason);
/* 1 when no session (app, user, id) exists and last_event_id is an event id
 * of its incarnation deleted less than --session-ttl ago (its tombstone),
 * else 0. The stream request is then answered 204 and creates nothing. */
int session_was_deleted(const char *app, const char *user, const char *id,
                        const char *last_event_id);

size_t session_count(void);
/* Iteration in activity order; the session returned may not be deleted
 * while iterating. */
struct session *session_first(void);
struct session *session_next(const struct session *s);

#endif
