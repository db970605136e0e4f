/* redis.h: a Redis client on runcast's libuv loop (hiredis 0.14, async).
 *
 * One struct redis talks to one Redis server over two connections: one for
 * commands and scripts, one for pub/sub (a hiredis context in subscribe mode
 * can run nothing else). Each connection reconnects by itself, with
 * exponential backoff and jitter, until redis_close(). hiredis 0.14 has no
 * timeouts, so every deadline (connect, each command, each subscribe) is a uv
 * timer; a command whose deadline passes fails with -ETIMEDOUT and its
 * connection, now presumed wedged, is dropped and re-established.
 *
 * The command connection is "up" only after its handshake: every registered
 * script is SCRIPT LOADed and INFO server's run_id read (CLUSTER.md compares
 * it to detect a Redis restart or failover). Commands issued while it is not
 * up fail fast with -ENOTCONN: there is no queue to replay, because the
 * owner must decide what a lost write means.
 *
 * Nothing blocks the loop: the host must be a numeric IPv4 or IPv6 address
 * (or "localhost", taken as 127.0.0.1), so hiredis's resolver never does a
 * DNS lookup.
 *
 * Callbacks. A command's callback runs exactly once: with the reply (error
 * replies included: check reply->type == REDIS_REPLY_ERROR) and err 0, or
 * with reply NULL and a negative errno. Error callbacks always run from the
 * loop (a safe point), never from inside a redis_* call; reply callbacks run
 * from hiredis's read path and may call any redis_* function, redis_close()
 * included. Loop thread only.
 */
#ifndef RUNCAST_REDIS_H
#define RUNCAST_REDIS_H

#include <hiredis/hiredis.h>
#include <uv.h>

#include "common.h"

struct redis;

struct redis_config {
    uint64_t connect_timeout_ms; /* a TCP connect not done by then is abandoned */
    uint64_t command_timeout_ms; /* per command, per handshake step, per subscribe */
    uint64_t retry_first_ms;     /* first reconnect delay; doubles per failed attempt */
    uint64_t retry_max_ms;       /* cap of the delay; each delay is jittered into [d/2, d] */
    int db;                      /* SELECTed first on every connect when not 0 */
};

struct redis_callbacks {
    /* The command connection came up (up 1, err 0: handshake done, run_id
     * read) or was lost (up 0, err: -ECONNRESET, -ETIMEDOUT, ...). Called on
     * changes only: failed reconnect attempts while down are silent. Never
     * called after redis_close(). */
    void (*on_state)(void *arg, int up, int err);
};

/* A command's result: reply is borrowed (freed when the callback returns),
 * or NULL with err < 0: -ENOTCONN (not up when issued), -ETIMEDOUT (its
 * deadline passed), -ECONNRESET (the connection was lost with it in flight:
 * it may or may not have run), -ECANCELED (redis_close), -EINVAL (a format
 * hiredis refused), -ENOENT (redis_eval of an unknown script). */
typedef void (*redis_reply_cb)(void *arg, redisReply *reply, int err);

/* A subscription's callbacks. on_subscribed(arg, 1) each time Redis confirms
 * the subscription (first time, and after every pub/sub reconnect: messages
 * published meanwhile are lost, so the owner catches up from its log);
 * on_subscribed(arg, 0) when the pub/sub connection is lost. on_message gets
 * each message's payload, borrowed. */
struct redis_sub_callbacks {
    void (*on_subscribed)(void *arg, int subscribed);
    void (*on_message)(void *arg, const char *payload, size_t len);
};

/* Counters for metrics; monotonic since redis_open(). */
struct redis_stats {
    uint64_t commands_sent;      /* user commands handed to hiredis (eval retries included) */
    uint64_t commands_failed;    /* user callbacks run with err < 0 */
    uint64_t command_latency_us; /* sum over replies received, send to reply */
    uint64_t replies;            /* user callbacks run with a reply */
    uint64_t connects;           /* times the command connection came up */
    uint64_t disconnects;        /* times a connection (either) was lost after it was up */
    uint64_t timeouts;           /* deadlines passed: connect, command, subscribe */
    uint64_t script_reloads;     /* NOSCRIPT replies answered with SCRIPT LOAD and a retry */
    uint64_t messages;           /* pub/sub messages delivered */
};

/* Starts connecting to host:port in the background and returns the client
 * (owned by the caller until redis_close), or NULL with *err = -EINVAL when
 * host is not a numeric address or "localhost". cfg and cb are copied. */
struct redis *redis_open(uv_loop_t *loop, const char *host, int port, const struct redis_config *cfg,
                         const struct redis_callbacks *cb, void *arg, int *err);

/* Fails every pending command with -ECANCELED, forgets every subscription
 * (their callbacks are not called again), closes both connections and every
 * uv handle; done(arg) runs from the last close callback, after the pending
 * callbacks, and r is freed. No redis_* call on r after this one. */
void redis_close(struct redis *r, void (*done)(void *arg), void *arg);

/* 1 when the command connection is up (handshake done). */
int redis_is_up(const struct redis *r);

/* The run_id of the server as of the latest time the connection came up
 * (40 hex digits; "" before the first). Borrowed; stays readable while down. */
const char *redis_server_run_id(const struct redis *r);

/* Sends a command (hiredis's printf-like format: %s, %b with a length, ...)
 * on the command connection; cb runs exactly once (see redis_reply_cb). */
void redis_command(struct redis *r, redis_reply_cb cb, void *arg, const char *fmt, ...);

/* The same with argc binary-safe arguments (argvlen NULL: C strings). */
void redis_command_argv(struct redis *r, redis_reply_cb cb, void *arg, int argc, const char **argv,
                        const size_t *argvlen);

/* Registers a Lua script under name (both copied). It is SCRIPT LOADed on
 * every connect (now too, if up). Returns 0, or -EEXIST for a known name. */
int redis_script_add(struct redis *r, const char *name, const char *lua_source);

/* Runs the script registered as name with EVALSHA; a NOSCRIPT reply (Redis
 * restarted, SCRIPT FLUSH) is answered by loading it again and retrying
 * once, so cb still runs exactly once. keys and args are C strings. */
void redis_eval(struct redis *r, const char *name, redis_reply_cb cb, void *arg, int nkeys,
                const char **keys, int nargs, const char **args);

/* Subscribes to channel (copied) on the pub/sub connection, now or as soon
 * as it is up, and again after every reconnect. Returns 0, or -EEXIST when
 * channel already has a subscription. */
int redis_subscribe(struct redis *r, const char *channel, const struct redis_sub_callbacks *cb,
                    void *arg);

/* Ends the subscription: its callbacks are never called again, from now
 * on. Returns 0, or -ENOENT. Safe from inside its own callbacks. */
int redis_unsubscribe(struct redis *r, const char *channel);

/* Drops the pub/sub connection if it is up, as if it had failed: it is
 * re-established (with backoff) and every subscription confirmed again.
 * For an owner that found it wedged (it stopped delivering while still
 * connected, which no deadline of this client sees). */
void redis_reset_pubsub(struct redis *r);

/* Copies the counters into out. */
void redis_stats(const struct redis *r, struct redis_stats *out);

#endif
