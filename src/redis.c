/* redis.c: a Redis client on the libuv loop (see redis.h).
 *
 * Two connections (struct redis_conn): COMMANDS carries commands, scripts
 * and the handshake; PUBSUB carries subscriptions. Each is a small state
 * machine driven by one uv timer whose meaning depends on the state:
 *
 *   DOWN       --timer (backoff)-->  CONNECTING   (redisAsyncConnect)
 *   CONNECTING --connected------->   HANDSHAKE    (SCRIPT LOAD each, INFO server)
 *   CONNECTING --timer (deadline)->  DOWN         (-ETIMEDOUT)
 *   HANDSHAKE  --INFO reply------->  UP           (on_state(1); PUBSUB skips HANDSHAKE)
 *   HANDSHAKE, UP --lost / timer-->  DOWN         (on_state(0) if it was UP)
 *
 * In HANDSHAKE and UP the timer is the deadline of the oldest command in
 * flight (COMMANDS: Redis answers in order, so all deadlines are met when the
 * oldest one is) or of the subscribes not yet confirmed (PUBSUB). A passed
 * deadline drops the connection, after the loop has read the socket once
 * more (see conn_timer_cb): hiredis 0.14 has no timeouts of its own.
 *
 * hiredis on the loop. hiredis 0.14's own libuv adapter (<hiredis/adapters/
 * libuv.h>) returns early on a poll error status, and libuv reports POLLERR
 * exactly so, after stopping the handle: a connect refused after
 * EINPROGRESS, or a reset socket, would then sit unnoticed until a deadline.
 * Its uv_poll_init failure path also leaks, and its handles cannot be
 * counted. So this file carries the adapter's ~40 lines with curl_uv.c's
 * fix: an error is passed on as readiness in the directions hiredis waits
 * for, and hiredis meets the real error in its own read, write or connect
 * check. The poll handles are counted with our timers, so that
 * redis_close's done runs after the last one has closed.
 *
 * Lifetimes. hiredis owns and frees each redisAsyncContext: after a failed
 * connect, after a read or write error (on_disconnect), or when we call
 * redisAsyncFree (a passed deadline, redis_close). Before it frees one it
 * calls every pending reply callback with a NULL reply; conn->ac is set to
 * NULL first whenever we start the freeing, so that nothing re-enters a
 * dying context. The struct redis owns both connections, the command
 * records (struct redis_cmd: in flight on hiredis, or in r->failed waiting
 * to be delivered), the scripts and the subscriptions; it is freed from the
 * last close callback after redis_close().
 */
#include "redis.h"

#include <arpa/inet.h>
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/async.h>
#include <openssl/evp.h>

#include "table.h"

enum conn_kind { CONN_COMMANDS, CONN_PUBSUB };
enum conn_state { CONN_DOWN, CONN_CONNECTING, CONN_HANDSHAKE, CONN_UP };

struct redis_conn {
    struct redis *r;
    enum conn_kind kind;
    enum conn_state state;
    redisAsyncContext *ac; /* NULL while DOWN or being freed; hiredis owns it */
    uv_timer_t timer;      /* see the state table above */
    struct list inflight;  /* COMMANDS: struct redis_cmd, oldest first */
    unsigned failures;     /* attempts since it was last UP: the backoff exponent */
    int handshake_left;    /* handshake replies still to come */
    int drop_err;          /* what commands lost with ac fail with */
    int looked_again;      /* a deadline passed; the loop reads the socket once more before we drop */
};

struct redis_script {
    struct list node; /* in r->scripts */
    char *name, *source;
    char sha[41];     /* SHA-1 of source, hex: what EVALSHA names */
};

enum cmd_kind {
    CMD_USER,        /* redis_command: the user's callback */
    CMD_EVAL,        /* redis_eval: the user's callback, one retry on NOSCRIPT */
    CMD_SCRIPT_LOAD, /* internal: handshake or a NOSCRIPT retry */
    CMD_SELECT,      /* internal: the handshake's first step when cfg.db is not 0 */
    CMD_INFO,        /* internal: the handshake's last step */
};

/* One command. Owned by r: linked in conn.inflight while hiredis holds it
 * (its privdata), in r->failed once it has failed and waits for the safe
 * point; freed after its callback. */
struct redis_cmd {
    struct list node;
    struct redis *r;
    enum cmd_kind kind;
    int handshake;          /* a handshake step: counts toward handshake_left */
    int retried;            /* CMD_EVAL: NOSCRIPT was answered once */
    int err;                /* in r->failed: what the callback gets */
    redis_reply_cb cb;
    void *arg;
    uint64_t deadline_ms;   /* uv_now() by which the reply must have come */
    uint64_t sent_ns;       /* uv_hrtime() at send, for the latency sum */
    struct redis_script *script;
    char *formatted;        /* CMD_EVAL: the EVALSHA command, kept for the retry */
    size_t formatted_len;
};

enum sub_state {
    SUB_IDLE,      /* waits for the PUBSUB connection */
    SUB_PENDING,   /* SUBSCRIBE sent, not yet confirmed */
    SUB_CONFIRMED, /* messages are delivered */
    SUB_LEAVING,   /* UNSUBSCRIBE sent; the user is gone unless revived */
};

/* One channel's subscription. Owned by r. An unsubscribed channel stays as
 * SUB_LEAVING until Redis acknowledges the UNSUBSCRIBE, because hiredis 0.14
 * keeps one callback per channel and drops it on that acknowledgement: a
 * SUBSCRIBE sent before it would lose its callback. A redis_subscribe in
 * the meantime revives the record; its SUBSCRIBE goes after the ack. */
struct redis_sub {
    struct table_entry entry; /* in r->subs_by_channel, keyed by channel */
    struct list node;         /* in r->subs */
    char *channel;
    enum sub_state state;
    int revived;              /* SUB_LEAVING: subscribe again once acknowledged */
    struct redis_sub_callbacks cb;
    void *arg;
};

struct redis {
    uv_loop_t *loop;
    char host[INET6_ADDRSTRLEN];
    int port;
    struct redis_config cfg;
    struct redis_callbacks cb;
    void *arg;
    struct redis_conn commands, pubsub;
    uv_idle_t safe_point;      /* delivers r->failed; active only while it is not empty */
    struct list failed;        /* struct redis_cmd that failed, in order */
    struct list scripts;       /* struct redis_script */
    struct list subs;          /* struct redis_sub */
    struct table subs_by_channel;
    int subs_pending;          /* subs in SUB_PENDING: the PUBSUB deadline runs while > 0 */
    char run_id[41];
    struct redis_stats stats;
    uint64_t rng;              /* xorshift state for the jitter */
    int closing;
    int handles_open;          /* timers, idle and hiredis poll handles not yet closed */
    void (*done)(void *arg);
    void *done_arg;
};

static void conn_connect(struct redis_conn *conn);
static void conn_timer_cb(uv_timer_t *timer);
static void conn_arm_deadline(struct redis_conn *conn);
static void subs_send_all(struct redis *r);

/* ---- hiredis on libuv: the adapter ---- */

struct redis_poll {
    uv_poll_t handle;
    redisAsyncContext *ac; /* NULL once hiredis has let go (cleanup) */
    struct redis *r;
    int events;            /* UV_READABLE/UV_WRITABLE that hiredis asked for */
    int in_write;          /* inside hiredis's write handler */
};

static void handle_closed(struct redis *r);

static void poll_cb(uv_poll_t *handle, int status, int events)
{
    struct redis_poll *p = container_of(handle, struct redis_poll, handle);
    if (status < 0)
        events = p->events;
    if (p->ac != NULL && (events & UV_READABLE))
        redisAsyncHandleRead(p->ac);
    if (p->ac != NULL && (events & UV_WRITABLE)) {
        p->in_write = 1;
        redisAsyncHandleWrite(p->ac);
        p->in_write = 0;
    }
    /* libuv stopped the handle on the error; hiredis may still want it. */
    if (status < 0 && p->ac != NULL && p->events != 0 && !uv_is_active((uv_handle_t *)handle))
        uv_poll_start(handle, p->events, poll_cb);
}

/* uv_poll_start() costs an epoll_ctl even when the mask does not change,
 * and hiredis asks to read again after every write: only changes go to
 * libuv. */
static void poll_update(struct redis_poll *p, int events)
{
    if (events == p->events && (events == 0 || uv_is_active((uv_handle_t *)&p->handle)))
        return;
    p->events = events;
    if (events != 0)
        uv_poll_start(&p->handle, events, poll_cb);
    else
        uv_poll_stop(&p->handle);
}

static void poll_add_read(void *privdata)
{
    struct redis_poll *p = privdata;
    poll_update(p, p->events | UV_READABLE);
}

static void poll_del_read(void *privdata)
{
    struct redis_poll *p = privdata;
    poll_update(p, p->events & ~UV_READABLE);
}

/* hiredis has bytes to send. Once connected they are written at once (a
 * write(2) per command): waiting for writability instead costs two
 * uv_poll_start() per command, each an epoll_ctl pair in libuv (4.6
 * epoll_ctl per event in the fan-out benchmark). Only a connect in
 * progress, a full socket buffer or an error wait for the loop (the error
 * then comes out of hiredis's own write handler). */
static void poll_add_write(void *privdata)
{
    struct redis_poll *p = privdata;
    redisAsyncContext *ac = p->ac;
    if (ac != NULL && (ac->c.flags & REDIS_CONNECTED) && !p->in_write) {
        int done = 0;
        if (redisBufferWrite(&ac->c, &done) == REDIS_OK && done)
            return;
    }
    poll_update(p, p->events | UV_WRITABLE);
}

static void poll_del_write(void *privdata)
{
    struct redis_poll *p = privdata;
    poll_update(p, p->events & ~UV_WRITABLE);
}

static void poll_closed_cb(uv_handle_t *handle)
{
    struct redis_poll *p = container_of((uv_poll_t *)handle, struct redis_poll, handle);
    struct redis *r = p->r;
    free(p);
    handle_closed(r);
}

/* hiredis is freeing the context (its socket closes right after). */
static void poll_cleanup(void *privdata)
{
    struct redis_poll *p = privdata;
    p->ac = NULL;
    uv_close((uv_handle_t *)&p->handle, poll_closed_cb);
}

/* Puts ac's socket on the loop. Returns 0, or a negative errno (ac is
 * untouched and still the caller's to free). */
static int poll_attach(struct redis *r, redisAsyncContext *ac)
{
    struct redis_poll *p = xcalloc(1, sizeof(*p));
    int rc = uv_poll_init_socket(r->loop, &p->handle, ac->c.fd);
    if (rc < 0) {
        free(p);
        return rc;
    }
    p->ac = ac;
    p->r = r;
    r->handles_open++;
    ac->ev.data = p;
    ac->ev.addRead = poll_add_read;
    ac->ev.delRead = poll_del_read;
    ac->ev.addWrite = poll_add_write;
    ac->ev.delWrite = poll_del_write;
    ac->ev.cleanup = poll_cleanup;
    return 0;
}

/* ---- failing commands at a safe point ---- */

static void cmd_free(struct redis_cmd *cmd)
{
    free(cmd->formatted);
    free(cmd);
}

/* Runs the callbacks of the failed commands, each once. */
static void deliver_failed(struct redis *r)
{
    while (!list_empty(&r->failed)) {
        struct redis_cmd *cmd = container_of(r->failed.next, struct redis_cmd, node);
        list_remove(&cmd->node);
        r->stats.commands_failed++;
        cmd->cb(cmd->arg, NULL, cmd->err);
        cmd_free(cmd);
    }
}

static void safe_point_cb(uv_idle_t *idle)
{
    deliver_failed(container_of(idle, struct redis, safe_point));
    uv_idle_stop(idle);
}

/* The command failed with err: internal ones are simply freed, the user's
 * callback runs at the next safe point. Safe anywhere, hiredis callbacks
 * included. */
static void cmd_fail(struct redis_cmd *cmd, int err)
{
    struct redis *r = cmd->r;
    list_remove(&cmd->node);
    if (cmd->kind == CMD_SCRIPT_LOAD || cmd->kind == CMD_INFO || cmd->kind == CMD_SELECT) {
        cmd_free(cmd);
        return;
    }
    cmd->err = r->closing ? -ECANCELED : err;
    list_insert_tail(&r->failed, &cmd->node);
    if (!r->closing)
        uv_idle_start(&r->safe_point, safe_point_cb);
}

/* ---- the connection state machine ---- */

static uint64_t rng_next(struct redis *r)
{
    r->rng ^= r->rng << 13;
    r->rng ^= r->rng >> 7;
    r->rng ^= r->rng << 17;
    return r->rng;
}

/* The delay before attempt n+1: first * 2^n capped at max, jittered into
 * [d/2, d] so that many nodes do not reconnect in step. */
static uint64_t backoff_ms(struct redis *r, unsigned failures)
{
    uint64_t d = r->cfg.retry_first_ms;
    for (unsigned i = 0; i < failures && d < r->cfg.retry_max_ms; i++)
        d *= 2;
    if (d > r->cfg.retry_max_ms)
        d = r->cfg.retry_max_ms;
    uint64_t half = d / 2;
    return half + (half > 0 ? rng_next(r) % (d - half + 1) : 0);
}

/* conn has lost its context (hiredis freed it or is freeing it; conn->ac
 * is already NULL): back to DOWN, a reconnect scheduled, and the owner
 * told if it was up. The owner's callbacks may call redis_close. */
static void conn_lost(struct redis_conn *conn, int err)
{
    struct redis *r = conn->r;
    int was_up = conn->state == CONN_UP;
    conn->state = CONN_DOWN;
    if (r->closing)
        return;
    uv_timer_start(&conn->timer, conn_timer_cb, backoff_ms(r, conn->failures++), 0);
    if (!was_up)
        return;
    r->stats.disconnects++;
    if (conn->kind == CONN_COMMANDS) {
        r->cb.on_state(r->arg, 0, err);
        return;
    }
    /* Every subscription is lost with the connection. Each is moved back
     * into r->subs before its callback, so that callbacks may unsubscribe
     * any of them. */
    r->subs_pending = 0;
    struct list todo;
    list_init(&todo);
    while (!list_empty(&r->subs)) {
        struct list *node = r->subs.next;
        list_remove(node);
        list_insert_tail(&todo, node);
    }
    while (!list_empty(&todo)) {
        struct redis_sub *sub = container_of(todo.next, struct redis_sub, node);
        list_remove(&sub->node);
        list_insert_tail(&r->subs, &sub->node);
        if (sub->state == SUB_LEAVING && !sub->revived) {
            table_remove(&r->subs_by_channel, &sub->entry);
            list_remove(&sub->node);
            free(sub->channel);
            free(sub);
            continue;
        }
        int was_confirmed = sub->state == SUB_CONFIRMED;
        sub->state = SUB_IDLE;
        sub->revived = 0;
        if (was_confirmed && sub->cb.on_subscribed != NULL)
            sub->cb.on_subscribed(sub->arg, 0);
        if (r->closing) {
            while (!list_empty(&todo)) { /* redis_close frees what is in r->subs */
                struct list *node = todo.next;
                list_remove(node);
                list_insert_tail(&r->subs, node);
            }
            return;
        }
    }
}

/* Drops conn's context on purpose (a passed deadline, a bad handshake):
 * commands in flight fail with -ETIMEDOUT if their own deadline passed,
 * else with err (-ECONNRESET when err is -ETIMEDOUT: theirs had not). Safe inside hiredis callbacks (hiredis then frees the context when
 * its callback returns). */
static void conn_drop(struct redis_conn *conn, int err)
{
    redisAsyncContext *ac = conn->ac;
    conn->ac = NULL;
    conn->drop_err = err;
    redisAsyncFree(ac);
    conn_lost(conn, err);
}

static void conn_up(struct redis_conn *conn)
{
    struct redis *r = conn->r;
    conn->state = CONN_UP;
    conn->failures = 0;
    if (conn->kind == CONN_PUBSUB) {
        subs_send_all(r);
        return;
    }
    r->stats.connects++;
    r->cb.on_state(r->arg, 1, 0);
}

/* The one timer of a connection; what it means depends on the state. */
static void conn_timer_cb(uv_timer_t *timer)
{
    struct redis_conn *conn = container_of(timer, struct redis_conn, timer);
    struct redis *r = conn->r;
    switch (conn->state) {
    case CONN_DOWN:
        conn_connect(conn);
        return;
    case CONN_CONNECTING:
        break;
    case CONN_HANDSHAKE:
    case CONN_UP:
        if (conn->kind == CONN_COMMANDS) {
            if (list_empty(&conn->inflight))
                return;
            struct redis_cmd *oldest = container_of(conn->inflight.next, struct redis_cmd, node);
            if (uv_now(r->loop) < oldest->deadline_ms) {
                conn_arm_deadline(conn);
                return;
            }
        }
        break;
    }
    /* A passed deadline. Timers run before I/O in a loop iteration, so after
     * the whole process stalled (SIGSTOP, a paused VM) the answer may be in
     * the socket unread: the poll of this iteration looks first, and only a
     * deadline still passed 1 ms later drops the connection. */
    if (!conn->looked_again) {
        conn->looked_again = 1;
        uv_timer_start(&conn->timer, conn_timer_cb, 1, 0);
        return;
    }
    r->stats.timeouts++;
    conn_drop(conn, -ETIMEDOUT);
}

/* Arms the timer for the oldest command in flight (COMMANDS) or for the
 * subscribes not yet confirmed (PUBSUB: restarted at each confirmation, so
 * the deadline is "no progress for command_timeout_ms"). */
static void conn_arm_deadline(struct redis_conn *conn)
{
    struct redis *r = conn->r;
    conn->looked_again = 0;
    if (conn->state != CONN_HANDSHAKE && conn->state != CONN_UP)
        return;
    if (conn->kind == CONN_PUBSUB) {
        if (r->subs_pending > 0)
            uv_timer_start(&conn->timer, conn_timer_cb, r->cfg.command_timeout_ms, 0);
        else
            uv_timer_stop(&conn->timer);
        return;
    }
    if (list_empty(&conn->inflight)) {
        uv_timer_stop(&conn->timer);
        return;
    }
    struct redis_cmd *oldest = container_of(conn->inflight.next, struct redis_cmd, node);
    uint64_t now = uv_now(r->loop);
    uv_timer_start(&conn->timer, conn_timer_cb,
                   oldest->deadline_ms > now ? oldest->deadline_ms - now : 0, 0);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);

/* Hands a formatted command to hiredis on the COMMANDS connection, with a
 * fresh deadline. Returns 0, or -ENOTCONN (the command is not linked
 * anywhere; the caller fails it). */
static int cmd_send(struct redis *r, struct redis_cmd *cmd, const char *formatted, size_t len)
{
    struct redis_conn *conn = &r->commands;
    int ready = conn->state == CONN_UP || (conn->state == CONN_HANDSHAKE && cmd->handshake);
    if (r->closing || conn->ac == NULL || !ready)
        return -ENOTCONN;
    if (redisAsyncFormattedCommand(conn->ac, on_reply, cmd, formatted, len) != REDIS_OK)
        return -ENOTCONN;
    cmd->deadline_ms = uv_now(r->loop) + r->cfg.command_timeout_ms;
    cmd->sent_ns = uv_hrtime();
    list_insert_tail(&conn->inflight, &cmd->node);
    if (!uv_is_active((uv_handle_t *)&conn->timer))
        conn_arm_deadline(conn);
    if (cmd->kind == CMD_USER || cmd->kind == CMD_EVAL)
        r->stats.commands_sent++;
    return 0;
}

static struct redis_cmd *cmd_new(struct redis *r, enum cmd_kind kind, redis_reply_cb cb, void *arg)
{
    struct redis_cmd *cmd = xcalloc(1, sizeof(*cmd));
    list_init(&cmd->node);
    cmd->r = r;
    cmd->kind = kind;
    cmd->cb = cb;
    cmd->arg = arg;
    return cmd;
}

/* Sends SCRIPT LOAD for script (internal: its reply is only counted). */
static void script_load(struct redis *r, struct redis_script *script, int handshake)
{
    struct redis_cmd *cmd = cmd_new(r, CMD_SCRIPT_LOAD, NULL, NULL);
    cmd->script = script;
    cmd->handshake = handshake;
    char *formatted;
    int len = redisFormatCommand(&formatted, "SCRIPT LOAD %s", script->source);
    if (len < 0 || cmd_send(r, cmd, formatted, (size_t)len) < 0)
        cmd_free(cmd);
    else if (handshake)
        r->commands.handshake_left++;
    if (len >= 0)
        redisFreeCommand(formatted);
}

/* Connected: COMMANDS loads every script and reads the run_id (all
 * pipelined; INFO last, so its reply ends the handshake); PUBSUB is up. */
static void conn_start_handshake(struct redis_conn *conn)
{
    struct redis *r = conn->r;
    uv_timer_stop(&conn->timer); /* the connect deadline */
    if (conn->kind == CONN_PUBSUB) {
        conn_up(conn);
        return;
    }
    conn->state = CONN_HANDSHAKE;
    conn->handshake_left = 0;
    if (r->cfg.db != 0) {
        struct redis_cmd *sel = cmd_new(r, CMD_SELECT, NULL, NULL);
        sel->handshake = 1;
        char *formatted;
        int len = redisFormatCommand(&formatted, "SELECT %d", r->cfg.db);
        if (cmd_send(r, sel, formatted, (size_t)len) == 0)
            conn->handshake_left++;
        else
            cmd_free(sel);
        redisFreeCommand(formatted);
    }
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &r->scripts) {
        script_load(r, container_of(pos, struct redis_script, node), 1);
    }
    struct redis_cmd *cmd = cmd_new(r, CMD_INFO, NULL, NULL);
    cmd->handshake = 1;
    char *formatted;
    int len = redisFormatCommand(&formatted, "INFO server");
    if (cmd_send(r, cmd, formatted, (size_t)len) == 0)
        conn->handshake_left++;
    else
        cmd_free(cmd);
    redisFreeCommand(formatted);
}

/* Copies INFO's "run_id:<40 hex>" into r->run_id. Returns 0 or -EPROTO. */
static int parse_run_id(struct redis *r, const redisReply *reply)
{
    if (reply->type != REDIS_REPLY_STRING)
        return -EPROTO;
    const char *p = strstr(reply->str, "\nrun_id:");
    if (p == NULL)
        return -EPROTO;
    p += strlen("\nrun_id:");
    size_t n = strcspn(p, "\r\n");
    if (n != 40)
        return -EPROTO;
    memcpy(r->run_id, p, 40);
    r->run_id[40] = '\0';
    /* A restarted Redis still loading its data answers INFO but refuses
     * everything else: not up yet. */
    if (strstr(reply->str, "\nloading:1") != NULL)
        return -EAGAIN;
    return 0;
}

/* "-LOADING": Redis (re)started and is reading its data back; it refuses
 * every command until it is done. */
static int is_loading(const redisReply *reply)
{
    return reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "LOADING", 7) == 0;
}

static int is_noscript(const redisReply *reply)
{
    return reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "NOSCRIPT", 8) == 0;
}

static void cmd_deliver(struct redis *r, struct redis_cmd *cmd, redisReply *reply)
{
    r->stats.replies++;
    r->stats.command_latency_us += (uv_hrtime() - cmd->sent_ns) / 1000;
    cmd->cb(cmd->arg, reply, 0);
    cmd_free(cmd);
}

/* hiredis's callback for every COMMANDS command: a reply, or NULL when the
 * context is being freed with cmd in flight. */
static void on_reply(redisAsyncContext *ac, void *reply_ptr, void *privdata)
{
    struct redis_cmd *cmd = privdata;
    struct redis *r = cmd->r;
    struct redis_conn *conn = &r->commands;
    redisReply *reply = reply_ptr;
    list_remove(&cmd->node);
    if (reply == NULL) {
        int expired = uv_now(r->loop) >= cmd->deadline_ms;
        int lost = conn->drop_err == -ETIMEDOUT ? -ECONNRESET : conn->drop_err;
        cmd_fail(cmd, expired ? -ETIMEDOUT : lost);
        return;
    }
    conn_arm_deadline(conn);
    if (is_loading(reply)) {
        /* Not an answer: the command did not run. Treated as a lost
         * connection, so the owner's retry waits for a Redis that is ready
         * (reconnect with backoff, the handshake checks INFO's loading). */
        cmd_fail(cmd, -EAGAIN);
        conn_drop(conn, -EAGAIN);
        return;
    }
    switch (cmd->kind) {
    case CMD_USER:
        cmd_deliver(r, cmd, reply);
        return;
    case CMD_EVAL:
        if (!is_noscript(reply) || cmd->retried) {
            cmd_deliver(r, cmd, reply);
            return;
        }
        /* Redis forgot the script: load it again, then the same EVALSHA
         * right behind it on the same connection. */
        cmd->retried = 1;
        r->stats.script_reloads++;
        script_load(r, cmd->script, 0);
        if (cmd_send(r, cmd, cmd->formatted, cmd->formatted_len) < 0)
            cmd_fail(cmd, -ENOTCONN);
        return;
    case CMD_SCRIPT_LOAD:
    case CMD_SELECT:
    case CMD_INFO:
        break;
    }
    int rc = cmd->kind == CMD_INFO ? parse_run_id(r, reply) : 0;
    if (cmd->kind == CMD_SELECT && reply->type == REDIS_REPLY_ERROR)
        rc = -EPROTO; /* no such database */
    int handshake = cmd->handshake;
    cmd_free(cmd);
    if (!handshake || conn->state != CONN_HANDSHAKE)
        return;
    if (rc < 0) {
        conn_drop(conn, rc);
        return;
    }
    if (--conn->handshake_left == 0)
        conn_up(conn);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct redis_conn *conn = ac->data;
    if (conn->ac != ac)
        return;
    if (status != REDIS_OK) {
        conn->ac = NULL; /* hiredis frees it when we return */
        conn_lost(conn, -ECONNREFUSED);
        return;
    }
    conn_start_handshake(conn);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct redis_conn *conn = ac->data;
    if (conn->ac != ac)
        return; /* we dropped it ourselves */
    conn->ac = NULL;
    conn_lost(conn, -ECONNRESET);
}

/* DOWN: starts a non-blocking connect (hiredis's getaddrinfo sees only a
 * numeric address, so it does not block). Failing here counts as a failed
 * attempt. */
static void conn_connect(struct redis_conn *conn)
{
    struct redis *r = conn->r;
    redisAsyncContext *ac = redisAsyncConnect(r->host, r->port);
    if (ac == NULL) {
        conn_lost(conn, -ENOMEM);
        return;
    }
    if (ac->err != 0 || poll_attach(r, ac) < 0) {
        redisAsyncFree(ac);
        conn_lost(conn, -ECONNREFUSED);
        return;
    }
    ac->data = conn;
    conn->ac = ac;
    conn->drop_err = -ECONNRESET;
    conn->state = CONN_CONNECTING;
    /* The connect callback after the adapter: setting it asks for the
     * first write event, which is how hiredis sees the connect finish. */
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    conn->looked_again = 0;
    uv_timer_start(&conn->timer, conn_timer_cb, r->cfg.connect_timeout_ms, 0);
}

/* ---- pub/sub ---- */

static struct redis_sub *sub_find(struct redis *r, const char *channel, size_t len)
{
    struct table_entry *e = table_find(&r->subs_by_channel, channel, len);
    return e != NULL ? container_of(e, struct redis_sub, entry) : NULL;
}

static void sub_free(struct redis *r, struct redis_sub *sub)
{
    table_remove(&r->subs_by_channel, &sub->entry);
    list_remove(&sub->node);
    free(sub->channel);
    free(sub);
}

static void on_pubsub_reply(redisAsyncContext *ac, void *reply_ptr, void *privdata);

/* Sends SUBSCRIBE or UNSUBSCRIBE for sub. Returns 0 or -ENOTCONN. */
static int sub_send(struct redis *r, struct redis_sub *sub, const char *verb)
{
    struct redis_conn *conn = &r->pubsub;
    if (conn->ac == NULL || conn->state != CONN_UP)
        return -ENOTCONN;
    if (redisAsyncCommand(conn->ac, on_pubsub_reply, conn, "%s %s", verb, sub->channel) != REDIS_OK)
        return -ENOTCONN;
    return 0;
}

static void sub_subscribe(struct redis *r, struct redis_sub *sub)
{
    if (sub_send(r, sub, "SUBSCRIBE") < 0)
        return;
    sub->state = SUB_PENDING;
    if (r->subs_pending++ == 0)
        conn_arm_deadline(&r->pubsub);
}

static void subs_send_all(struct redis *r)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &r->subs) {
        struct redis_sub *sub = container_of(pos, struct redis_sub, node);
        if (sub->state == SUB_IDLE)
            sub_subscribe(r, sub);
    }
}

/* hiredis's callback for every reply on PUBSUB: ["subscribe", channel, n],
 * ["message", channel, payload], ["unsubscribe", channel, n]; NULL when the
 * context is being freed (on_disconnect or conn_drop handles that). */
static void on_pubsub_reply(redisAsyncContext *ac, void *reply_ptr, void *privdata)
{
    struct redis_conn *conn = privdata;
    struct redis *r = conn->r;
    redisReply *reply = reply_ptr;
    if (reply == NULL || conn->ac != ac || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3)
        return;
    const redisReply *kind = reply->element[0], *channel = reply->element[1];
    if (kind->type != REDIS_REPLY_STRING || channel->type != REDIS_REPLY_STRING)
        return;
    struct redis_sub *sub = sub_find(r, channel->str, channel->len);
    if (sub == NULL)
        return;
    if (strcmp(kind->str, "message") == 0) {
        const redisReply *payload = reply->element[2];
        if (sub->state != SUB_CONFIRMED || payload->type != REDIS_REPLY_STRING)
            return;
        r->stats.messages++;
        sub->cb.on_message(sub->arg, payload->str, payload->len);
    } else if (strcmp(kind->str, "subscribe") == 0) {
        if (sub->state != SUB_PENDING)
            return;
        sub->state = SUB_CONFIRMED;
        r->subs_pending--;
        conn_arm_deadline(conn);
        if (sub->cb.on_subscribed != NULL)
            sub->cb.on_subscribed(sub->arg, 1);
    } else if (strcmp(kind->str, "unsubscribe") == 0) {
        if (sub->state != SUB_LEAVING)
            return;
        if (!sub->revived) {
            sub_free(r, sub);
            return;
        }
        sub->revived = 0;
        sub->state = SUB_IDLE;
        sub_subscribe(r, sub);
    }
}

int redis_subscribe(struct redis *r, const char *channel, const struct redis_sub_callbacks *cb,
                    void *arg)
{
    assert(!r->closing);
    struct redis_sub *sub = sub_find(r, channel, strlen(channel));
    if (sub != NULL && (sub->state != SUB_LEAVING || sub->revived))
        return -EEXIST;
    if (sub == NULL) {
        sub = xcalloc(1, sizeof(*sub));
        sub->channel = xstrdup(channel);
        sub->state = SUB_IDLE;
        list_insert_tail(&r->subs, &sub->node);
        table_insert(&r->subs_by_channel, &sub->entry, sub->channel, strlen(sub->channel));
    } else {
        sub->revived = 1; /* subscribes again once the UNSUBSCRIBE is acknowledged */
    }
    sub->cb = *cb;
    sub->arg = arg;
    if (sub->state == SUB_IDLE)
        sub_subscribe(r, sub);
    return 0;
}

int redis_unsubscribe(struct redis *r, const char *channel)
{
    struct redis_sub *sub = sub_find(r, channel, strlen(channel));
    if (sub == NULL || (sub->state == SUB_LEAVING && !sub->revived))
        return -ENOENT;
    if (sub->state == SUB_LEAVING) {
        sub->revived = 0;
        return 0;
    }
    if (sub->state == SUB_PENDING && --r->subs_pending == 0)
        conn_arm_deadline(&r->pubsub);
    if (sub->state != SUB_IDLE && sub_send(r, sub, "UNSUBSCRIBE") == 0) {
        sub->state = SUB_LEAVING;
        return 0;
    }
    sub_free(r, sub);
    return 0;
}

/* ---- commands ---- */

/* Sends formatted (len < 0: hiredis refused the format) for a new record;
 * fails it at the safe point when it cannot be sent. */
static void cmd_start(struct redis *r, struct redis_cmd *cmd, const char *formatted, int len)
{
    assert(!r->closing);
    int rc = len < 0 ? -EINVAL : cmd_send(r, cmd, formatted, (size_t)len);
    if (rc < 0)
        cmd_fail(cmd, rc);
}

void redis_command(struct redis *r, redis_reply_cb cb, void *arg, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *formatted = NULL;
    int len = redisvFormatCommand(&formatted, fmt, ap);
    va_end(ap);
    cmd_start(r, cmd_new(r, CMD_USER, cb, arg), formatted, len);
    if (len >= 0)
        redisFreeCommand(formatted);
}

/* The RESP request for argv (lengths argvlen, or strlen when NULL), in a
 * malloc'ed buffer of *len bytes. hiredis's redisFormatCommandArgv writes
 * each length with sprintf, which was a sixth of a node's instructions per
 * appended event. */
static char *resp_format(int argc, const char **argv, const size_t *argvlen, size_t *len)
{
    size_t stack[32];
    size_t *lens = argc <= 32 ? stack : xmalloc((size_t)argc * sizeof(*lens));
    size_t total = 1 + 20 + 2;
    for (int i = 0; i < argc; i++) {
        lens[i] = argvlen ? argvlen[i] : strlen(argv[i]);
        total += 1 + 20 + 2 + lens[i] + 2;
    }
    char *out = xmalloc(total), *p = out;
    *p++ = '*';
    p += fmt_u64(p, (uint64_t)argc);
    *p++ = '\r', *p++ = '\n';
    for (int i = 0; i < argc; i++) {
        *p++ = '$';
        p += fmt_u64(p, lens[i]);
        *p++ = '\r', *p++ = '\n';
        memcpy(p, argv[i], lens[i]);
        p += lens[i];
        *p++ = '\r', *p++ = '\n';
    }
    if (lens != stack)
        free(lens);
    *len = (size_t)(p - out);
    return out;
}

void redis_command_argv(struct redis *r, redis_reply_cb cb, void *arg, int argc, const char **argv,
                        const size_t *argvlen)
{
    size_t len;
    char *formatted = resp_format(argc, argv, argvlen, &len);
    cmd_start(r, cmd_new(r, CMD_USER, cb, arg), formatted, (int)len);
    free(formatted);
}

static struct redis_script *script_find(struct redis *r, const char *name)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &r->scripts) {
        struct redis_script *s = container_of(pos, struct redis_script, node);
        if (strcmp(s->name, name) == 0)
            return s;
    }
    return NULL;
}

int redis_script_add(struct redis *r, const char *name, const char *lua_source)
{
    if (script_find(r, name) != NULL)
        return -EEXIST;
    struct redis_script *s = xcalloc(1, sizeof(*s));
    s->name = xstrdup(name);
    s->source = xstrdup(lua_source);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    if (EVP_Digest(s->source, strlen(s->source), md, &md_len, EVP_sha1(), NULL) != 1 || md_len != 20)
        abort(); /* SHA-1 is always there: a broken libcrypto */
    for (unsigned i = 0; i < 20; i++)
        snprintf(s->sha + 2 * i, 3, "%02x", md[i]);
    list_insert_tail(&r->scripts, &s->node);
    if (r->commands.state == CONN_UP)
        script_load(r, s, 0);
    return 0;
}

void redis_eval(struct redis *r, const char *name, redis_reply_cb cb, void *arg, int nkeys,
                const char **keys, int nargs, const char **args)
{
    struct redis_cmd *cmd = cmd_new(r, CMD_EVAL, cb, arg);
    cmd->script = script_find(r, name);
    if (cmd->script == NULL) {
        cmd_fail(cmd, -ENOENT);
        return;
    }
    int argc = 3 + nkeys + nargs;
    const char **argv = xcalloc((size_t)argc, sizeof(*argv));
    char nkeys_text[21];
    nkeys_text[fmt_u64(nkeys_text, (uint64_t)nkeys)] = '\0';
    argv[0] = "EVALSHA";
    argv[1] = cmd->script->sha;
    argv[2] = nkeys_text;
    for (int i = 0; i < nkeys; i++)
        argv[3 + i] = keys[i];
    for (int i = 0; i < nargs; i++)
        argv[3 + nkeys + i] = args[i];
    cmd->formatted = resp_format(argc, argv, NULL, &cmd->formatted_len);
    free(argv);
    cmd_start(r, cmd, cmd->formatted, (int)cmd->formatted_len);
}

/* ---- life ---- */

static void conn_init(struct redis *r, struct redis_conn *conn, enum conn_kind kind)
{
    conn->r = r;
    conn->kind = kind;
    conn->state = CONN_DOWN;
    list_init(&conn->inflight);
    uv_timer_init(r->loop, &conn->timer);
    r->handles_open++;
}

struct redis *redis_open(uv_loop_t *loop, const char *host, int port, const struct redis_config *cfg,
                         const struct redis_callbacks *cb, void *arg, int *err)
{
    unsigned char addr[sizeof(struct in6_addr)];
    if (strcmp(host, "localhost") == 0)
        host = "127.0.0.1";
    if ((inet_pton(AF_INET, host, addr) != 1 && inet_pton(AF_INET6, host, addr) != 1) ||
        port <= 0 || port > 65535) {
        *err = -EINVAL;
        return NULL;
    }
    struct redis *r = xcalloc(1, sizeof(*r));
    r->loop = loop;
    str_copy(r->host, sizeof(r->host), host);
    r->port = port;
    r->cfg = *cfg;
    r->cb = *cb;
    r->arg = arg;
    r->rng = uv_hrtime() ^ ((uint64_t)(uintptr_t)r << 16) ^ 0x9e3779b97f4a7c15ull;
    list_init(&r->failed);
    list_init(&r->scripts);
    list_init(&r->subs);
    table_init(&r->subs_by_channel);
    uv_idle_init(loop, &r->safe_point);
    r->handles_open++;
    conn_init(r, &r->commands, CONN_COMMANDS);
    conn_init(r, &r->pubsub, CONN_PUBSUB);
    conn_connect(&r->commands);
    conn_connect(&r->pubsub);
    *err = 0;
    return r;
}

/* The last handle has closed: the failed commands (-ECANCELED by now) are
 * delivered, then done, then r is freed. */
static void handle_closed(struct redis *r)
{
    if (--r->handles_open > 0 || !r->closing)
        return;
    deliver_failed(r);
    while (!list_empty(&r->scripts)) {
        struct redis_script *s = container_of(r->scripts.next, struct redis_script, node);
        list_remove(&s->node);
        free(s->name);
        free(s->source);
        free(s);
    }
    while (!list_empty(&r->subs))
        sub_free(r, container_of(r->subs.next, struct redis_sub, node));
    table_free(&r->subs_by_channel);
    void (*done)(void *) = r->done;
    void *done_arg = r->done_arg;
    free(r);
    if (done != NULL)
        done(done_arg);
}

static void uv_handle_closed_cb(uv_handle_t *handle)
{
    handle_closed(handle->data);
}

void redis_close(struct redis *r, void (*done)(void *arg), void *arg)
{
    assert(!r->closing);
    r->closing = 1;
    r->done = done;
    r->done_arg = arg;
    /* Commands already failed keep their error; the rest get -ECANCELED. */
    struct redis_conn *conns[] = {&r->commands, &r->pubsub};
    for (size_t i = 0; i < RC_ARRAY_SIZE(conns); i++) {
        struct redis_conn *conn = conns[i];
        if (conn->ac != NULL) {
            redisAsyncContext *ac = conn->ac;
            conn->ac = NULL;
            conn->drop_err = -ECANCELED;
            redisAsyncFree(ac);
        }
        conn->state = CONN_DOWN;
        conn->timer.data = r;
        uv_close((uv_handle_t *)&conn->timer, uv_handle_closed_cb);
    }
    r->safe_point.data = r;
    uv_close((uv_handle_t *)&r->safe_point, uv_handle_closed_cb);
}

int redis_is_up(const struct redis *r)
{
    return r->commands.state == CONN_UP;
}

void redis_reset_pubsub(struct redis *r)
{
    if (r->pubsub.state == CONN_UP)
        conn_drop(&r->pubsub, -ETIMEDOUT);
}

const char *redis_server_run_id(const struct redis *r)
{
    return r->run_id;
}

void redis_stats(const struct redis *r, struct redis_stats *out)
{
    *out = r->stats;
}
