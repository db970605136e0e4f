/* store_redis.h: the Redis store — cluster mode (CLUSTER.md).
 *
 * Every runcast process given the same --store redis://… serves the same
 * sessions. The state that must outlive a process lives in Redis; each
 * process keeps, for the sessions it serves, a mirror of the log (a memory
 * log, store.h's cache) fed only from Redis, so every node delivers the
 * same events with the same ids. A run's events are written by the node
 * that runs it (its owner) through a fenced, idempotent script; any node
 * can end any run (supersede, cancel, delete, expiry), and a node whose
 * lease lapses has its runs ended as node_lost by the others.
 *
 * The store's operations (store_redis_ops) are the log-level ones; the
 * functions below are the cluster-wide requests of the API (task status,
 * cancel, delete) and the node's life. Loop thread only.
 */
#ifndef RUNCAST_STORE_REDIS_H
#define RUNCAST_STORE_REDIS_H

#include <uv.h>

#include "common.h"
#include "store.h"

struct json_t;

struct store_redis_config {
    char host[64];
    int port;
    int db;
    const char *node_id;       /* --node-id (copied) */
    uint64_t lease_ms;         /* --node-lease */
    uint64_t session_ttl_ms;   /* --session-ttl (0: never) */
    int max_runs_per_user;     /* 0: no cap */
    int max_sessions_per_user; /* 0: no cap */
};

extern const struct store_ops store_redis_ops;
extern const char store_redis_lua[];

/* Parses "redis://HOST:PORT[/DB]" into cfg's host, port and db. HOST must
 * be a numeric address or "localhost" (no DNS on the loop). Returns 0 or
 * -EINVAL. */
int store_redis_parse_url(const char *url, struct store_redis_config *cfg);
/* A node id nobody else has: host name, port and a random suffix. */
void store_redis_default_node_id(char *out, size_t size, int port);

/* Connects (in the background) and starts the node's tick. Call once,
 * before store_init(&store_redis_ops, ...). Returns 0 or a negative errno. */
int store_redis_start(uv_loop_t *loop, const struct store_redis_config *cfg);
/* Calls done(arg) once every write this node queued is confirmed and the
 * events it wrote are back in its copies (so streams can be given them),
 * or after timeout_ms. */
void store_redis_settle(uint64_t timeout_ms, void (*done)(void *arg), void *arg);
/* Stops the tick, waits (at most timeout_ms) until every write this node
 * queued is confirmed, then closes the connections and calls done(arg). */
void store_redis_stop(uint64_t timeout_ms, void (*done)(void *arg), void *arg);
/* 1 when Redis is reachable (the command connection is up). */
int store_redis_is_up(void);

/* The answer to a cluster-wide request: err 0 and result (borrowed), or
 * -ENOENT (no such session), -ESRCH (no active run), or another negative
 * errno (the store is unavailable). Runs at a safe point, exactly once. */
typedef void (*store_redis_result_cb)(void *arg, int err, struct json_t *result);

/* DESIGN.md's per-session task status object. */
void store_redis_status(const char *app, const char *user, const char *sid,
                        store_redis_result_cb cb, void *arg);
/* GET /task-status's object: {total_tasks, running_tasks, queued_tasks,
 * sessions_total, sessions}. */
void store_redis_status_all(int all, long limit, store_redis_result_cb cb, void *arg);
/* Cancels the session's active run: result {"run_id"}. */
void store_redis_cancel(const char *app, const char *user, const char *sid, const char *reason,
                        store_redis_result_cb cb, void *arg);
/* Deletes the session (its active run cancelled, session.closed, a
 * tombstone for --session-ttl): result {"run_id": latest or null}. */
void store_redis_delete(const char *app, const char *user, const char *sid,
                        store_redis_result_cb cb, void *arg);
/* Whether last_event_id names a deleted incarnation of a session that
 * does not exist: result {"deleted": true|false}. */
void store_redis_was_deleted(const char *app, const char *user, const char *sid,
                             const char *last_event_id, store_redis_result_cb cb, void *arg);

/* The user's event streams on the other nodes, as of their latest tick:
 * result {"elsewhere": n} (--max-subscribers-per-user across the cluster). */
void store_redis_user_subscribers(const char *user, store_redis_result_cb cb, void *arg);

/* Counters for metrics. */
struct store_redis_stats {
    int up;
    uint64_t reconnects;       /* times the connection came back after being lost */
    uint64_t fenced_appends;   /* writes refused because the run was no longer this node's */
    uint64_t runs_reaped;      /* runs this node ended as node_lost */
    uint64_t pubsub_resets;    /* pub/sub connections dropped as wedged */
    uint64_t commands;         /* replies received */
    uint64_t command_latency_us; /* their total latency */
    size_t mirrors;            /* logs mirrored */
    size_t outbox;             /* writes not yet confirmed */
};
void store_redis_stats(struct store_redis_stats *out);

#endif
