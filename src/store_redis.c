/* store_redis.c: the Redis store (see store_redis.h, CLUSTER.md).
 *
 * A log here is a mirror: a memory log (the cache) that holds the session's
 * retained events exactly as Redis has them, filled only from Redis — the
 * pub/sub channel for live events, the "open" script for the retained ones
 * and for every catch-up. Its life:
 *
 *   subscribe --confirmed--> load ("open": the retained events, merged with
 *   the messages that arrived meanwhile) --> live; a message whose seq
 *   skips ahead, a resubscription, or a tick that sees the log moved on
 *   loads again (only what is missing). A load that finds another epoch, a
 *   rollback or a gap it cannot fill restarts the cache and resets the
 *   session's streams (store_watch.reset).
 *
 * Writes of the run this node owns go through the log's outbox, in order:
 * each is a script call sent at once while Redis is up, kept until its
 * reply, and sent again after a reconnect if the reply was lost (an append
 * carries the run's append number k, so a retry is a DUP, never a
 * duplicate event). Appends return 0: the event reaches the listener when
 * it comes back from Redis, like everyone else's.
 *
 * A log is freed when its session closed it and nothing refers to it (a
 * command in flight, a write not yet confirmed, a note queued): at a safe
 * time, never from inside a callback that still uses it.
 */
#include "store_redis.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "log.h"
#include "metrics.h"
#include "redis.h"
#include "table.h"

#define SCRIPT "rc"
#define MAX_KEY (3 * 129 + 16)
#define TICK_PROBES 1000 /* mirrors probed per tick, round robin */

enum mirror_state {
    MIRROR_SUBSCRIBING = 0, /* waiting for the channel's confirmation */
    MIRROR_LOADING,         /* an "open" in flight; messages are buffered */
    MIRROR_LIVE,            /* in step with the channel */
};

struct redis_log {
    struct store_log base;    /* first: a struct store_log * is a struct redis_log * */
    struct store_log *cache;  /* the retained events, as Redis has them */
    struct table_entry entry; /* in logs, keyed by S */
    struct list link;         /* open: in the probe ring; closed with writes left: in closing */
    int refs;                 /* the session's (until close) + commands + writes + notes */
    int closed;
    enum mirror_state state;
    int subscribed;           /* Redis confirmed the channel (and has not dropped it since) */
    int loaded;               /* cache holds the log: subscribers can be placed */
    int load_again;           /* a load was asked for while one was in flight */
    uint32_t epoch;           /* the cache's, once loaded */
    struct list buffered;     /* struct message: channel messages that arrived while loading */
    struct list waiters;      /* struct waiter: ready() callers */
    struct list outbox;       /* struct write: unconfirmed writes, in order */
    const struct store_watch *watch;
    void *watch_arg;
    store_listener_cb listener;
    void *listener_arg;
    /* The latest run this node ran in this session (or ""); run_over once
     * its terminal event is in the log, whoever wrote it. */
    char run_id[32];
    int run_over;
    uint32_t run_epoch;       /* the epoch its start was confirmed in; 0 before */
    uint64_t run_k;           /* its last append number */
    int run_lost;             /* the store lost it: its store_lost write may re-create S */
    int subscribers_sent;     /* the count the latest tick recorded */
    uint64_t written_seq;     /* the newest seq this node's writes got (in epoch) */
    char app[129], user[129], sid[129];
    char channel[MAX_KEY + 16];
    char S[MAX_KEY];          /* "db/app/user/session": its name in Redis */
};

/* A channel message: "<epoch>|<seq>|<flag>|<type>|<run>|<data>", parsed. */
struct message {
    struct list link;
    uint32_t epoch;
    uint64_t seq;
    char flag;
    const char *type, *run, *data;
    size_t data_len;
    char text[]; /* the payload, with the separators made NULs */
};

struct waiter {
    struct list link;
    store_done_cb done;
    void *arg;
};

/* A queued write: its script arguments, kept to be sent again. */
enum write_kind { WRITE_START, WRITE_APPEND };
struct write {
    struct list link;          /* in its log's outbox */
    struct redis_log *log;     /* holds a reference */
    enum write_kind kind;
    int in_flight;
    char run_id[32];
    char event[32];
    int terminal;
    store_done_cb done;        /* WRITE_START: the registration's */
    void *done_arg;
    uint64_t sent_ns;
    int argc;
    const char **argv; /* into the same allocation as the write */
};

/* Something to tell a session at the next safe point. */
enum note_kind { NOTE_RUN_ENDED, NOTE_CLOSED, NOTE_RESET, NOTE_WAITER };
struct note {
    struct list link;
    struct redis_log *log;     /* holds a reference */
    enum note_kind kind;
    int status;                /* NOTE_WAITER */
    store_done_cb done;
    void *done_arg;
    int has_event;
    char run_id[32];
    char event[32];
};

static struct {
    uv_loop_t *loop;
    struct redis *redis;
    struct store_redis_config cfg;
    char node_id[128];
    struct store_config store;
    struct table logs;         /* every open mirror, by S */
    struct list probe_ring;    /* the same, in probe order */
    struct list closing;       /* closed logs with writes not yet confirmed */
    struct list notes;
    uv_idle_t notes_idle;
    uv_timer_t tick_timer;
    int tick_in_flight;
    char probe_channel[160];   /* the node's own: each tick publishes on it */
    /* Script arguments that never change, formatted once. */
    struct {
        char ttl[24], history[24], runs_cap[24], sessions_cap[24];
    } arg;
    int probes_unseen;         /* ticks answered since the last probe came back */
    int was_up;                /* up once: the next up is a reconnect */
    int stopping;
    uv_timer_t stop_timer;
    uv_timer_t settle_timer;
    uint64_t settle_deadline_ms;
    void (*settle_done)(void *arg);
    void *settle_arg;
    void (*stop_done)(void *arg);
    void *stop_arg;
    size_t outbox_count;
    struct store_redis_stats stats;
} rs;

static void log_unref(struct redis_log *l);
static void mirror_load(struct redis_log *l);
static void write_send(struct write *w);
static void stop_check(void);

/* ---- small helpers ------------------------------------------------------ */

static char *u64_text(char *out, size_t size, uint64_t v)
{
    char digits[20];
    str_copyn(out, size, digits, fmt_u64(digits, v));
    return out;
}

static void epoch_text(char *out, size_t size, uint32_t epoch)
{
    char digits[8];
    str_copyn(out, size, digits, fmt_hex32(digits, epoch));
}

/* A random non-zero 32-bit epoch: xorshift64 seeded once from the kernel
 * (one getrandom(2) per process, not one per run). */
static uint32_t epoch_random(void)
{
    static uint64_t state;
    while (state == 0)
        if (uv_random(NULL, NULL, &state, sizeof(state), 0, NULL) != 0)
            state = uv_hrtime() ^ ((uint64_t)uv_os_getpid() << 32);
    uint32_t e;
    do {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        e = (uint32_t)(state >> 32);
    } while (e == 0);
    return e;
}

static int parse_epoch(const char *s, uint32_t *out)
{
    char *end;
    if (s == NULL || strlen(s) != 8)
        return -EINVAL;
    unsigned long v = strtoul(s, &end, 16);
    if (*end != '\0')
        return -EINVAL;
    *out = (uint32_t)v;
    return 0;
}

static const char *reply_str(const redisReply *r)
{
    return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) ? r->str : "";
}

static long long reply_int(const redisReply *r)
{
    if (r == NULL)
        return 0;
    if (r->type == REDIS_REPLY_INTEGER)
        return r->integer;
    if (r->type == REDIS_REPLY_STRING)
        return strtoll(r->str, NULL, 10);
    return 0;
}

/* The status word of a script's array reply ("" for anything else). */
static const char *reply_status(const redisReply *r)
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements == 0)
        return "";
    return reply_str(r->element[0]);
}

static const redisReply *reply_at(const redisReply *r, size_t i)
{
    return r && r->type == REDIS_REPLY_ARRAY && i < r->elements ? r->element[i] : NULL;
}

static void count_reply(uint64_t sent_ns)
{
    uint64_t us = (time_mono_ns() - sent_ns) / 1000;
    rs.stats.commands++;
    rs.stats.command_latency_us += us;
    metrics_observe(METRICS_STORE_COMMAND, (double)us / 1e6);
}

static void log_script_error(const char *op, const redisReply *reply)
{
    log_event(LOG_ERROR, "store.script_error", "op", op, "error",
              reply && reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply", NULL);
}

/* ---- notes: what sessions hear, at a safe point --------------------------- */

static void notes_run(uv_idle_t *idle)
{
    struct list batch;
    list_init(&batch);
    /* Notes queued while running these wait for the next round. */
    while (!list_empty(&rs.notes)) {
        struct list *n = rs.notes.next;
        list_remove(n);
        list_insert_tail(&batch, n);
    }
    while (!list_empty(&batch)) {
        struct note *n = container_of(batch.next, struct note, link);
        list_remove(&n->link);
        struct redis_log *l = n->log;
        if (n->kind == NOTE_WAITER) {
            n->done(n->done_arg, n->status);
        } else if (!l->closed && l->watch) {
            if (n->kind == NOTE_RUN_ENDED)
                l->watch->run_ended(l->watch_arg, n->run_id, n->has_event ? n->event : NULL);
            else if (n->kind == NOTE_CLOSED)
                l->watch->closed(l->watch_arg, n->event);
            else
                l->watch->reset(l->watch_arg);
        }
        log_unref(l);
        free(n);
    }
    if (list_empty(&rs.notes))
        uv_idle_stop(&rs.notes_idle);
}

static struct note *note_add(struct redis_log *l, enum note_kind kind)
{
    struct note *n = xcalloc(1, sizeof(*n));
    n->log = l;
    n->kind = kind;
    l->refs++;
    list_insert_tail(&rs.notes, &n->link);
    uv_idle_start(&rs.notes_idle, notes_run);
    return n;
}

/* Tells the session that run_id (if it is the one it runs) ended
 * elsewhere: event is its terminal event, or NULL when the store lost it. */
static void note_run_ended(struct redis_log *l, const char *run_id, const char *event)
{
    if (l->run_over || l->run_id[0] == '\0' || strcmp(run_id, l->run_id) != 0)
        return;
    if (event)
        l->run_over = 1;
    else if (l->run_lost)
        return; /* told already */
    else
        l->run_lost = 1;
    if (l->closed)
        return;
    struct note *n = note_add(l, NOTE_RUN_ENDED);
    str_copy(n->run_id, sizeof(n->run_id), run_id);
    if (event) {
        n->has_event = 1;
        str_copy(n->event, sizeof(n->event), event);
    }
}

static void waiters_finish(struct redis_log *l, int status)
{
    while (!list_empty(&l->waiters)) {
        struct waiter *w = container_of(l->waiters.next, struct waiter, link);
        list_remove(&w->link);
        struct note *n = note_add(l, NOTE_WAITER);
        n->status = status;
        n->done = w->done;
        n->done_arg = w->arg;
        free(w);
    }
}

/* ---- the mirror ---------------------------------------------------------- */

/* Hands one event of the log to the cache (and so to the listener) and
 * tells the session what it means for it. */
static void mirror_apply(struct redis_log *l, uint64_t seq, char flag, const char *type,
                         const char *run, const char *data, size_t len)
{
    store_memory_put(l->cache, seq, type, data, len, flag == 's');
    if (flag == 't') {
        note_run_ended(l, run, type);
    } else if (strcmp(type, "session.closed") == 0 && !l->closed) {
        struct note *n = note_add(l, NOTE_CLOSED);
        json_t *o = json_loadb(data, len, 0, NULL);
        const char *reason = json_string_value(json_object_get(o, "reason"));
        str_copy(n->event, sizeof(n->event), reason ? reason : "closed");
        json_decref(o);
    }
}

static uint64_t cache_newest(const struct redis_log *l)
{
    struct store_meta m;
    store_meta(l->cache, &m);
    return m.newest_seq;
}

/* Starts the cache over at (epoch, newest_seq): the session's streams no
 * longer continue. */
static void mirror_restart(struct redis_log *l, uint32_t epoch, uint64_t newest_seq,
                           uint64_t run_start)
{
    int was_loaded = l->loaded;
    store_memory_restart(l->cache, epoch, newest_seq, run_start);
    l->epoch = epoch;
    l->loaded = 1;
    if (was_loaded && !l->closed)
        note_add(l, NOTE_RESET);
}

/* Applies the buffered messages that follow the cache; a gap means another
 * load. Returns 1 when every buffered message was used or dropped. */
static int mirror_drain_buffer(struct redis_log *l)
{
    while (!list_empty(&l->buffered)) {
        struct message *m = container_of(l->buffered.next, struct message, link);
        uint64_t next = cache_newest(l) + 1;
        if (m->epoch == l->epoch && m->seq > next)
            return 0; /* a gap: the load after this one fills it */
        list_remove(&m->link);
        if (m->epoch == l->epoch && m->seq == next)
            mirror_apply(l, m->seq, m->flag, m->type, m->run, m->data, m->data_len);
        else if (m->epoch != l->epoch) {
            free(m);
            return 0; /* another epoch: load it */
        }
        free(m);
    }
    return 1;
}

static void buffered_free(struct redis_log *l)
{
    while (!list_empty(&l->buffered)) {
        struct message *m = container_of(l->buffered.next, struct message, link);
        list_remove(&m->link);
        free(m);
    }
}

/* The "open" reply: OK epoch seq run_start entries | NOMETA | EDQUOT. */
static void on_loaded(void *arg, redisReply *reply, int err)
{
    struct redis_log *l = arg;
    const char *st = err ? "" : reply_status(reply);
    if (l->closed) {
        log_unref(l);
        return;
    }
    if (strcmp(st, "OK") != 0) {
        l->state = MIRROR_SUBSCRIBING; /* the next confirmation, tick or ready() loads again */
        buffered_free(l);
        if (err == 0 && strcmp(st, "EDQUOT") != 0)
            log_script_error("open", reply);
        if (!l->loaded)
            waiters_finish(l, strcmp(st, "EDQUOT") == 0 ? -EDQUOT : err ? err : -EIO);
        log_unref(l);
        return;
    }
    uint32_t epoch;
    if (parse_epoch(reply_str(reply_at(reply, 1)), &epoch) < 0) {
        log_script_error("open", reply);
        l->state = MIRROR_SUBSCRIBING;
        log_unref(l);
        return;
    }
    uint64_t seq = (uint64_t)reply_int(reply_at(reply, 2));
    uint64_t run_start = (uint64_t)reply_int(reply_at(reply, 3));
    const redisReply *entries = reply_at(reply, 4);
    size_t n = entries && entries->type == REDIS_REPLY_ARRAY ? entries->elements : 0;
    uint64_t first = seq + 1;
    if (n > 0)
        first = strtoull(reply_str(reply_at(entries->element[0], 0)), NULL, 10);
    /* The cache continues only with the same epoch, from exactly where it
     * stopped; anything else starts it over. */
    if (!l->loaded || epoch != l->epoch || first != cache_newest(l) + 1)
        mirror_restart(l, epoch, first - 1, run_start);
    for (size_t i = 0; i < n; i++) {
        const redisReply *e = entries->element[i];
        const redisReply *fields = reply_at(e, 1);
        uint64_t s = strtoull(reply_str(reply_at(e, 0)), NULL, 10);
        const char *flag = "-", *type = "", *run = "", *data = "{}";
        size_t data_len = 2;
        for (size_t j = 0; fields && j + 1 < fields->elements; j += 2) {
            const char *k = reply_str(fields->element[j]);
            const redisReply *v = fields->element[j + 1];
            if (strcmp(k, "f") == 0)
                flag = reply_str(v);
            else if (strcmp(k, "t") == 0)
                type = reply_str(v);
            else if (strcmp(k, "r") == 0)
                run = reply_str(v);
            else if (strcmp(k, "d") == 0) {
                data = reply_str(v);
                data_len = v->len;
            }
        }
        if (s == cache_newest(l) + 1)
            mirror_apply(l, s, flag[0], type, run, data, data_len);
    }
    l->state = MIRROR_LIVE;
    int again = !mirror_drain_buffer(l) || l->load_again;
    if (!l->load_again) /* else they wait for the load asked for after they came */
        waiters_finish(l, 0);
    if (again) {
        l->load_again = 0;
        mirror_load(l);
    }
    log_unref(l);
}

/* Loads what the cache misses (all of it the first time). One at a time:
 * a load asked for during another runs after it. */
static void mirror_load(struct redis_log *l)
{
    if (l->state == MIRROR_LOADING) {
        l->load_again = 1;
        return;
    }
    char epoch[16], mirror_epoch[16], after[24];
    epoch_text(epoch, sizeof(epoch), epoch_random());
    epoch_text(mirror_epoch, sizeof(mirror_epoch), l->loaded ? l->epoch : 0);
    u64_text(after, sizeof(after), l->loaded ? cache_newest(l) : 0);
    const char *args[] = {"open", l->S, l->user, l->app, l->sid, epoch, "1", mirror_epoch,
                          after, rs.arg.history, rs.arg.sessions_cap, rs.arg.ttl, rs.arg.history};
    l->state = MIRROR_LOADING;
    l->refs++;
    redis_eval(rs.redis, SCRIPT, on_loaded, l, 0, NULL, (int)(sizeof(args) / sizeof(args[0])), args);
}

static void on_subscribed(void *arg, int subscribed)
{
    struct redis_log *l = arg;
    l->subscribed = subscribed;
    if (!subscribed) {
        if (l->state == MIRROR_LIVE)
            l->state = MIRROR_SUBSCRIBING;
        return;
    }
    /* Messages published while unsubscribed are lost: catch up from the log. */
    mirror_load(l);
}

/* A channel message. In step: applied; ahead of the cache: buffered and a
 * load fills the gap; behind: already had. */
static void on_message(void *arg, const char *payload, size_t len)
{
    struct redis_log *l = arg;
    struct message *m = xmalloc(sizeof(*m) + len + 1);
    memcpy(m->text, payload, len);
    m->text[len] = '\0';
    char *field[6];
    char *p = m->text;
    for (int i = 0; i < 5; i++) {
        field[i] = p;
        p = strchr(p, '|');
        if (p == NULL) {
            free(m);
            return;
        }
        *p++ = '\0';
    }
    field[5] = p;
    if (parse_epoch(field[0], &m->epoch) < 0) {
        free(m);
        return;
    }
    m->seq = strtoull(field[1], NULL, 10);
    m->flag = field[2][0];
    m->type = field[3];
    m->run = field[4];
    m->data = field[5];
    m->data_len = len - (size_t)(field[5] - m->text);
    if (l->state == MIRROR_LOADING) {
        list_insert_tail(&l->buffered, &m->link);
        return;
    }
    if (l->state != MIRROR_LIVE || !l->loaded) {
        free(m);
        return;
    }
    uint64_t next = cache_newest(l) + 1;
    if (m->epoch == l->epoch && m->seq == next) {
        mirror_apply(l, m->seq, m->flag, m->type, m->run, m->data, m->data_len);
        free(m);
    } else if (m->epoch == l->epoch && m->seq < next) {
        free(m);
    } else {
        list_insert_tail(&l->buffered, &m->link);
        mirror_load(l);
    }
}

static const struct redis_sub_callbacks sub_callbacks = {
    .on_subscribed = on_subscribed,
    .on_message = on_message,
};

/* ---- store operations ------------------------------------------------------ */

/* The session's name in Redis, S. The database number is part of it
 * because pub/sub channels are not per database: two clusters on one
 * Redis server in different databases must not hear each other. */
static void session_key(char *S, const char *app, const char *user, const char *sid)
{
    snprintf(S, MAX_KEY, "%d/%s/%s/%s", rs.cfg.db, app, user, sid);
}

static void redis_configure(const struct store_config *cfg)
{
    rs.store = *cfg;
    u64_text(rs.arg.history, sizeof(rs.arg.history), (uint64_t)cfg->history);
    store_memory_ops.configure(cfg);
}

static struct store_log *redis_open_log(const char *app, const char *user, const char *session)
{
    struct redis_log *l = xcalloc(1, sizeof(*l));
    l->base.ops = &store_redis_ops;
    l->cache = store_memory_open_cache(0);
    l->refs = 1;
    str_copy(l->app, sizeof(l->app), app);
    str_copy(l->user, sizeof(l->user), user);
    str_copy(l->sid, sizeof(l->sid), session);
    session_key(l->S, app, user, session);
    snprintf(l->channel, sizeof(l->channel), "rc:{%s}:c", l->S);
    list_init(&l->buffered);
    list_init(&l->waiters);
    list_init(&l->outbox);
    table_insert(&rs.logs, &l->entry, l->S, strlen(l->S));
    list_insert_tail(&rs.probe_ring, &l->link);
    rs.stats.mirrors++;
    redis_subscribe(rs.redis, l->channel, &sub_callbacks, l);
    return &l->base;
}

static void log_unref(struct redis_log *l)
{
    if (--l->refs > 0)
        return;
    buffered_free(l);
    store_close(l->cache);
    free(l);
    stop_check();
}

static void redis_close_log(struct store_log *log)
{
    struct redis_log *l = (struct redis_log *)log;
    l->closed = 1;
    l->watch = NULL;
    l->listener = NULL;
    store_listen(l->cache, NULL, NULL);
    redis_unsubscribe(rs.redis, l->channel);
    table_remove(&rs.logs, &l->entry);
    list_remove(&l->link);
    if (!list_empty(&l->outbox))
        list_insert_tail(&rs.closing, &l->link);
    rs.stats.mirrors--;
    waiters_finish(l, -ECANCELED);
    /* Unconfirmed writes go on: a run's terminal event must land. */
    log_unref(l);
}

static void redis_listen(struct store_log *log, store_listener_cb cb, void *arg)
{
    struct redis_log *l = (struct redis_log *)log;
    l->listener = cb;
    l->listener_arg = arg;
    store_listen(l->cache, cb, arg);
}

static void redis_watch(struct store_log *log, const struct store_watch *w, void *arg)
{
    struct redis_log *l = (struct redis_log *)log;
    l->watch = w;
    l->watch_arg = arg;
}

/* 1 when the cache already holds last_event_id (or no id is given);
 * an id of another epoch or past the newest event may be one this copy
 * has not caught up with yet: that one is not reset before a load. */
static int cache_places(const struct redis_log *l, const char *last_event_id)
{
    uint32_t epoch;
    uint64_t seq;
    if (last_event_id == NULL || store_parse_id(last_event_id, &epoch, &seq) < 0)
        return 1;
    return epoch == l->epoch && seq <= cache_newest(l);
}

static int redis_ready(struct store_log *log, const char *last_event_id, store_done_cb done,
                       void *arg)
{
    struct redis_log *l = (struct redis_log *)log;
    if (l->loaded && (cache_places(l, last_event_id) || !redis_is_up(rs.redis)))
        return 1;
    struct waiter *w = xmalloc(sizeof(*w));
    w->done = done;
    w->arg = arg;
    list_insert_tail(&l->waiters, &w->link);
    if (!redis_is_up(rs.redis))
        waiters_finish(l, -ENOTCONN);
    else if (l->state != MIRROR_SUBSCRIBING || l->subscribed)
        mirror_load(l); /* LOADING: once more after this one */
    return 0;
}

static struct frame *redis_read(const struct store_log *log, uint64_t seq)
{
    return store_read(((const struct redis_log *)log)->cache, seq);
}

static void redis_meta(const struct store_log *log, struct store_meta *out)
{
    store_meta(((const struct redis_log *)log)->cache, out);
}

/* ---- writes ---------------------------------------------------------------- */

static struct write *write_new(struct redis_log *l, enum write_kind kind, const char *run_id,
                               const char *event, int argc, const char **argv)
{
    /* One allocation: the write, its argument vector, the arguments. */
    size_t bytes = sizeof(struct write) + (size_t)argc * sizeof(char *);
    for (int i = 0; i < argc; i++)
        bytes += strlen(argv[i]) + 1;
    struct write *w = xmalloc(bytes);
    memset(w, 0, sizeof(*w));
    w->log = l;
    w->kind = kind;
    str_copy(w->run_id, sizeof(w->run_id), run_id);
    str_copy(w->event, sizeof(w->event), event);
    w->argc = argc;
    w->argv = (const char **)(w + 1);
    char *text = (char *)(w->argv + argc);
    for (int i = 0; i < argc; i++) {
        size_t n = strlen(argv[i]) + 1;
        memcpy(text, argv[i], n);
        w->argv[i] = text;
        text += n;
    }
    l->refs++;
    rs.outbox_count++;
    list_insert_tail(&l->outbox, &w->link);
    return w;
}

static void write_free(struct write *w)
{
    struct redis_log *l = w->log;
    list_remove(&w->link);
    if (l->closed && list_empty(&l->outbox))
        list_remove(&l->link); /* out of closing */
    free(w);
    rs.outbox_count--;
    log_unref(l);
}

/* Sends the log's unsent writes in order, unless one is in flight (its
 * failure must be known before anything after it is sent again). */
static void outbox_flush(struct redis_log *l)
{
    if (!redis_is_up(rs.redis))
        return;
    struct list *pos;
    for (pos = l->outbox.next; pos != &l->outbox; pos = pos->next)
        if (container_of(pos, struct write, link)->in_flight)
            return;
    for (pos = l->outbox.next; pos != &l->outbox;) {
        struct write *w = container_of(pos, struct write, link);
        pos = pos->next; /* a send that fails at once re-enters only through the loop */
        write_send(w);
    }
}

static int64_t redis_write_event(struct redis_log *l, const char *run_id, const char *event,
                                 const char *data, size_t len, int terminal);

/* A write of the owner's run was refused: the run ended elsewhere (ended:
 * its terminal event), or its events were lost (NOMETA, or another epoch):
 * then the run ends run.failed store_lost, also when the refused write was
 * its own terminal event. */
static void write_fenced(struct write *w, const char *epoch_text_, const char *ended)
{
    struct redis_log *l = w->log;
    uint32_t epoch = 0;
    rs.stats.fenced_appends++;
    if (strcmp(w->run_id, l->run_id) != 0 || l->run_over)
        return;
    int lost = parse_epoch(epoch_text_, &epoch) < 0 || (l->run_epoch && epoch != l->run_epoch);
    if (!lost) {
        note_run_ended(l, w->run_id, ended);
    } else if (!w->terminal) {
        note_run_ended(l, w->run_id, NULL); /* the session writes store_lost */
    } else if (!l->run_lost) {
        static const char fmt[] = "{\"code\":\"store_lost\",\"message\":\"the store lost this run's "
                                  "events (Redis restarted or failed over)\",\"run_id\":\"%s\"}";
        char data[256];
        int n = snprintf(data, sizeof(data), fmt, w->run_id);
        l->run_lost = 1;
        redis_write_event(l, w->run_id, "run.failed", data, (size_t)n, 1);
    }
}

/* A write of l got seq in epoch: l's streams are settled once its copy
 * has it. */
static void note_written(struct redis_log *l, const redisReply *reply)
{
    uint32_t epoch;
    uint64_t seq = (uint64_t)reply_int(reply_at(reply, 2));
    if (parse_epoch(reply_str(reply_at(reply, 1)), &epoch) == 0 && epoch == l->epoch &&
        seq > l->written_seq)
        l->written_seq = seq;
}

static void on_start_reply(struct write *w, redisReply *reply)
{
    struct redis_log *l = w->log;
    const char *st = reply_status(reply);
    int status = 0;
    uint32_t epoch = 0;
    parse_epoch(reply_str(reply_at(reply, 1)), &epoch);
    if (strcmp(st, "OK") == 0 || strcmp(st, "REFUSED") == 0 || strcmp(st, "DUP") == 0) {
        note_written(l, reply);
        if (strcmp(w->run_id, l->run_id) == 0)
            l->run_epoch = epoch;
        const char *superseded = reply_str(reply_at(reply, 3));
        if (superseded[0] && rs.store.on_terminal)
            rs.store.on_terminal("run.superseded");
        if (strcmp(st, "REFUSED") == 0) {
            status = STORE_REFUSED;
            if (rs.store.on_terminal)
                rs.store.on_terminal("run.failed");
            note_run_ended(l, w->run_id, "run.failed");
        }
    } else {
        status = strcmp(st, "EDQUOT") == 0 ? -EDQUOT : -EIO;
        if (status == -EIO)
            log_script_error("start", reply);
        note_run_ended(l, w->run_id, "run.failed");
    }
    if (w->done)
        w->done(w->done_arg, status);
}

static void on_append_reply(struct write *w, redisReply *reply)
{
    const char *st = reply_status(reply);
    if (strcmp(st, "OK") == 0)
        note_written(w->log, reply);
    if (strcmp(st, "OK") == 0 || strcmp(st, "DUP") == 0) {
        if (w->terminal) {
            if (rs.store.on_terminal)
                rs.store.on_terminal(w->event);
            if (strcmp(w->run_id, w->log->run_id) == 0)
                w->log->run_over = 1;
        }
    } else if (strcmp(st, "FENCED") == 0) {
        write_fenced(w, reply_str(reply_at(reply, 1)), reply_str(reply_at(reply, 2)));
    } else if (strcmp(st, "NOMETA") == 0) {
        write_fenced(w, "", NULL);
    } else {
        log_script_error("append", reply);
    }
}

static void on_write_reply(void *arg, redisReply *reply, int err)
{
    struct write *w = arg;
    w->in_flight = 0;
    if (err) {
        /* Lost with its connection (it may have run: a retry is a DUP), or
         * not sent. A registration is not retried: its POST answers 503
         * now, and a start that did run is ended by the next tick (the run
         * is no longer this node's). */
        struct redis_log *l = w->log;
        l->refs++;
        if (w->kind == WRITE_START) {
            note_run_ended(l, w->run_id, "run.failed");
            if (w->done)
                w->done(w->done_arg, err);
            write_free(w);
        }
        outbox_flush(l); /* if the connection is already back */
        log_unref(l);
        stop_check();
        return;
    }
    count_reply(w->sent_ns);
    if (w->kind == WRITE_START)
        on_start_reply(w, reply);
    else
        on_append_reply(w, reply);
    struct redis_log *l = w->log;
    l->refs++;
    write_free(w);
    outbox_flush(l);
    log_unref(l);
    stop_check();
}

static void write_send(struct write *w)
{
    if (w->in_flight)
        return;
    w->in_flight = 1;
    w->sent_ns = time_mono_ns();
    redis_eval(rs.redis, SCRIPT, on_write_reply, w, 0, NULL, w->argc, w->argv);
}

/* Queues a write behind the log's others and sends it if nothing stands
 * in the way. */
static void write_queue(struct write *w)
{
    struct redis_log *l = w->log;
    if (!redis_is_up(rs.redis)) {
        if (w->kind == WRITE_START) { /* not retried: see on_write_reply */
            w->in_flight = 1;
            redis_eval(rs.redis, SCRIPT, on_write_reply, w, 0, NULL, w->argc, w->argv);
        }
        return;
    }
    if (l->outbox.next == &w->link || !container_of(w->link.prev, struct write, link)->in_flight) {
        outbox_flush(l);
        return;
    }
    write_send(w); /* everything before it is in flight: order holds on the one connection */
}

static int64_t redis_start_run(struct store_log *log, const char *run_id, const char *event,
                               const char *data, size_t len, store_done_cb done, void *arg)
{
    struct redis_log *l = (struct redis_log *)log;
    char epoch[16];
    epoch_text(epoch, sizeof(epoch), epoch_random());
    char *text = xstrndup(data, len);
    const char *args[] = {"start", l->S, l->user, l->app, l->sid, rs.node_id, run_id, epoch,
                          event, text, rs.arg.runs_cap, rs.arg.sessions_cap, rs.arg.ttl, rs.arg.history};
    str_copy(l->run_id, sizeof(l->run_id), run_id);
    l->run_over = 0;
    l->run_epoch = 0;
    l->run_k = 0;
    l->run_lost = 0;
    struct write *w = write_new(l, WRITE_START, run_id, event, (int)(sizeof(args) / sizeof(args[0])),
                                args);
    free(text);
    w->done = done;
    w->done_arg = arg;
    write_queue(w);
    return 0;
}

static int64_t redis_write_event(struct redis_log *l, const char *run_id, const char *event,
                                 const char *data, size_t len, int terminal)
{
    char k[24], epoch[16] = "";
    int own = run_id && strcmp(run_id, l->run_id) == 0;
    /* The lost arguments only for the store_lost of a run the store lost. */
    int lost = own && l->run_lost && terminal;
    u64_text(k, sizeof(k), own ? ++l->run_k : 0);
    if (lost) /* uv_random is a getrandom(2): only when needed */
        epoch_text(epoch, sizeof(epoch), epoch_random());
    char *text = xstrndup(data, len);
    const char *args[] = {"append", l->S, run_id ? run_id : "", k, terminal ? "t" : "-", event,
                          text, rs.arg.ttl, rs.arg.history, epoch, rs.node_id, l->user, l->app, l->sid};
    int argc = lost ? 14 : 9;
    struct write *w = write_new(l, WRITE_APPEND, run_id, event, argc, args);
    free(text);
    w->terminal = terminal;
    write_queue(w);
    return 0;
}

static int64_t redis_append(struct store_log *log, const char *run_id, const char *event,
                            const char *data, size_t len)
{
    return redis_write_event((struct redis_log *)log, run_id, event, data, len, 0);
}

static int64_t redis_end_run(struct store_log *log, const char *run_id, const char *event,
                             const char *data, size_t len)
{
    return redis_write_event((struct redis_log *)log, run_id, event, data, len, 1);
}

const struct store_ops store_redis_ops = {
    .name = "redis",
    .shared = 1,
    .configure = redis_configure,
    .open = redis_open_log,
    .close = redis_close_log,
    .listen = redis_listen,
    .watch = redis_watch,
    .ready = redis_ready,
    .start_run = redis_start_run,
    .append = redis_append,
    .end_run = redis_end_run,
    .read = redis_read,
    .meta = redis_meta,
};

/* ---- the tick: lease, ownership, subscriber counts, probes, reaping -------- */

static struct redis_log *log_find(const char *S)
{
    struct table_entry *e = table_find(&rs.logs, S, strlen(S));
    return e ? container_of(e, struct redis_log, entry) : NULL;
}

/* A tick's probe came back through the pub/sub connection. */
static void on_probe(void *arg, const char *payload, size_t len)
{
    rs.probes_unseen = 0;
}

static void on_probe_subscribed(void *arg, int subscribed)
{
    rs.probes_unseen = 0;
}

static const struct redis_sub_callbacks probe_callbacks = {
    .on_subscribed = on_probe_subscribed,
    .on_message = on_probe,
};

/* A log line about session S ("db/app/user/session"), with its parts. */
static void log_session_event(const char *event, const char *S)
{
    char copy[MAX_KEY];
    str_copy(copy, sizeof(copy), S);
    char *part[4] = {copy, "", "", ""};
    for (int i = 1; i < 4 && part[i - 1]; i++) {
        char *slash = strchr(part[i - 1], '/');
        if (slash == NULL)
            break;
        *slash = '\0';
        part[i] = slash + 1;
    }
    log_event(LOG_INFO, event, "app", part[1], "user", part[2], "session", part[3], NULL);
}

static void on_tick(void *arg, redisReply *reply, int err)
{
    uint64_t sent_ns = (uint64_t)(uintptr_t)arg;
    rs.tick_in_flight = 0;
    if (err)
        return;
    count_reply(sent_ns);
    rs.probes_unseen++;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 4) {
        log_script_error("tick", reply);
        return;
    }
    const redisReply *lost = reply->element[0], *reaped = reply->element[1];
    const redisReply *probe = reply->element[2];
    for (size_t i = 0; i + 2 < lost->elements; i += 3) {
        struct redis_log *l = log_find(reply_str(lost->element[i]));
        const char *ended = reply_str(lost->element[i + 2]);
        if (l)
            note_run_ended(l, reply_str(lost->element[i + 1]), ended[0] ? ended : NULL);
    }
    for (size_t i = 0; i + 2 < reaped->elements; i += 3) {
        rs.stats.runs_reaped++;
        if (rs.store.on_terminal)
            rs.store.on_terminal("run.failed");
        log_event(LOG_WARN, "run.reaped", "session", reply_str(reaped->element[i]), "run",
                  reply_str(reaped->element[i + 1]), "outcome", "failed", "code", "node_lost", "node",
                  reply_str(reaped->element[i + 2]), NULL);
    }
    for (size_t i = 0; i < probe->elements; i++) {
        struct redis_log *l = log_find(reply_str(probe->element[i]));
        if (l && l->state == MIRROR_LIVE)
            mirror_load(l);
    }
    const redisReply *expired = reply->element[3];
    for (size_t i = 0; i + 1 < expired->elements; i += 2) {
        if (reply_str(expired->element[i + 1])[0] && rs.store.on_terminal)
            rs.store.on_terminal("run.cancelled");
        log_session_event("session.expired", reply_str(expired->element[i]));
    }
}

/* Appends the tick's arguments for one list of triples or pairs. */
struct arglist {
    const char **v;
    char **owned;
    int n, cap, nowned;
};

static void arg_add(struct arglist *a, const char *s, int copy)
{
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 64;
        a->v = xrealloc(a->v, (size_t)a->cap * sizeof(*a->v));
        a->owned = xrealloc(a->owned, (size_t)a->cap * sizeof(*a->owned));
    }
    if (copy) {
        char *c = xstrdup(s);
        a->owned[a->nowned++] = c;
        s = c;
    }
    a->v[a->n++] = s;
}

static void tick_cb(uv_timer_t *t)
{
    if (rs.tick_in_flight || !redis_is_up(rs.redis))
        return;
    /* Three ticks answered and none of their probes delivered: the pub/sub
     * connection is wedged (connected, silent; Centrifugo's bug). A new
     * one resubscribes, and every copy catches up from the log. */
    if (rs.probes_unseen >= 3) {
        log_event(LOG_WARN, "store.pubsub_wedged", NULL);
        rs.stats.pubsub_resets++;
        rs.probes_unseen = 0;
        redis_reset_pubsub(rs.redis);
    }
    char lease[24], limit[24], stall[24], num[24];
    u64_text(lease, sizeof(lease), rs.cfg.lease_ms);
    u64_text(limit, sizeof(limit), 1000);
    u64_text(stall, sizeof(stall), rs.cfg.lease_ms / 2);
    struct arglist a = {0};
    arg_add(&a, "tick", 0);
    arg_add(&a, rs.node_id, 0);
    arg_add(&a, lease, 0);
    arg_add(&a, limit, 0);
    arg_add(&a, rs.arg.ttl, 0);
    arg_add(&a, stall, 0);
    arg_add(&a, rs.arg.history, 0);
    arg_add(&a, rs.probe_channel + strlen("rc:probe:"), 0);
    /* The runs this node runs. */
    int count_at = a.n;
    arg_add(&a, "0", 0);
    int runs = 0;
    struct list *pos;
    for (pos = rs.probe_ring.next; pos != &rs.probe_ring; pos = pos->next) {
        struct redis_log *l = container_of(pos, struct redis_log, link);
        if (l->run_id[0] == '\0' || l->run_over)
            continue;
        char e[16] = "";
        if (l->run_epoch)
            epoch_text(e, sizeof(e), l->run_epoch);
        arg_add(&a, l->S, 0);
        arg_add(&a, l->run_id, 0);
        arg_add(&a, e, 1);
        runs++;
    }
    a.v[count_at] = a.owned[a.nowned++] = xstrdup(u64_text(num, sizeof(num), (uint64_t)runs));
    /* Subscriber counts that changed. */
    count_at = a.n;
    arg_add(&a, "0", 0);
    int subs = 0;
    for (pos = rs.probe_ring.next; pos != &rs.probe_ring; pos = pos->next) {
        struct redis_log *l = container_of(pos, struct redis_log, link);
        int n = l->watch && l->watch->subscribers ? (int)l->watch->subscribers(l->watch_arg) : 0;
        if (n == l->subscribers_sent)
            continue;
        l->subscribers_sent = n;
        arg_add(&a, l->S, 0);
        arg_add(&a, u64_text(num, sizeof(num), (uint64_t)n), 1);
        subs++;
    }
    a.v[count_at] = a.owned[a.nowned++] = xstrdup(u64_text(num, sizeof(num), (uint64_t)subs));
    /* Probes: the next TICK_PROBES live mirrors, round robin. */
    count_at = a.n;
    arg_add(&a, "0", 0);
    int probes = 0;
    size_t total = rs.stats.mirrors;
    for (size_t i = 0; i < total && probes < TICK_PROBES; i++) {
        struct list *first = rs.probe_ring.next;
        struct redis_log *l = container_of(first, struct redis_log, link);
        list_remove(first);
        list_insert_tail(&rs.probe_ring, first);
        if (l->state == MIRROR_SUBSCRIBING && l->subscribed) {
            mirror_load(l); /* its last load failed (Redis was down) */
            continue;
        }
        if (l->state != MIRROR_LIVE || !l->loaded)
            continue;
        char e[16];
        epoch_text(e, sizeof(e), l->epoch);
        arg_add(&a, l->S, 0);
        arg_add(&a, e, 1);
        arg_add(&a, u64_text(num, sizeof(num), cache_newest(l)), 1);
        probes++;
    }
    a.v[count_at] = a.owned[a.nowned++] = xstrdup(u64_text(num, sizeof(num), (uint64_t)probes));
    rs.tick_in_flight = 1;
    redis_eval(rs.redis, SCRIPT, on_tick, (void *)(uintptr_t)time_mono_ns(), 0, NULL, a.n, a.v);
    for (int i = 0; i < a.nowned; i++)
        free(a.owned[i]);
    free(a.owned);
    free(a.v);
}

/* ---- the connection ----------------------------------------------------------- */

static void on_state(void *arg, int up, int err)
{
    rs.stats.up = up;
    if (!up) {
        log_event(LOG_WARN, "store.down", "error", strerror(-err), NULL);
        return;
    }
    if (rs.was_up)
        rs.stats.reconnects++;
    rs.was_up = 1;
    log_event(LOG_INFO, "store.up", "node", rs.node_id, NULL);
    /* Writes whose replies were lost go again, in order, then the tick. */
    struct list *lists[2] = {&rs.probe_ring, &rs.closing};
    for (int i = 0; i < 2; i++)
        for (struct list *pos = lists[i]->next; pos != lists[i]; pos = pos->next)
            outbox_flush(container_of(pos, struct redis_log, link));
    tick_cb(&rs.tick_timer);
}

int store_redis_parse_url(const char *url, struct store_redis_config *cfg)
{
    static const char prefix[] = "redis://";
    if (strncmp(url, prefix, sizeof(prefix) - 1) != 0)
        return -EINVAL;
    const char *host = url + sizeof(prefix) - 1;
    const char *colon = strrchr(host, ':');
    if (colon == NULL || colon == host || (size_t)(colon - host) >= sizeof(cfg->host))
        return -EINVAL;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || port < 1 || port > 65535)
        return -EINVAL;
    long db = 0;
    if (*end == '/') {
        char *db_end;
        db = strtol(end + 1, &db_end, 10);
        if (db_end == end + 1 || *db_end != '\0' || db < 0 || db > 1000000)
            return -EINVAL;
    } else if (*end != '\0') {
        return -EINVAL;
    }
    memcpy(cfg->host, host, (size_t)(colon - host));
    cfg->host[colon - host] = '\0';
    cfg->port = (int)port;
    cfg->db = (int)db;
    return 0;
}

void store_redis_default_node_id(char *out, size_t size, int port)
{
    char host[64];
    size_t len = sizeof(host);
    if (uv_os_gethostname(host, &len) != 0)
        strcpy(host, "node");
    for (char *p = host; *p; p++)
        if (!str_is_path_param(p, 1))
            *p = '-';
    uint32_t r = epoch_random();
    snprintf(out, size, "%s-%d-%06" PRIx32, host, port, r & 0xffffffu);
}

int store_redis_start(uv_loop_t *loop, const struct store_redis_config *cfg)
{
    rs.loop = loop;
    rs.cfg = *cfg;
    str_copy(rs.node_id, sizeof(rs.node_id), cfg->node_id);
    rs.cfg.node_id = rs.node_id;
    u64_text(rs.arg.ttl, sizeof(rs.arg.ttl), cfg->session_ttl_ms);
    u64_text(rs.arg.runs_cap, sizeof(rs.arg.runs_cap), (uint64_t)cfg->max_runs_per_user);
    u64_text(rs.arg.sessions_cap, sizeof(rs.arg.sessions_cap), (uint64_t)cfg->max_sessions_per_user);
    table_init(&rs.logs);
    list_init(&rs.probe_ring);
    list_init(&rs.closing);
    list_init(&rs.notes);
    uv_idle_init(loop, &rs.notes_idle);
    uv_timer_init(loop, &rs.tick_timer);
    uv_timer_init(loop, &rs.stop_timer);
    uv_timer_init(loop, &rs.settle_timer);
    uint64_t command_timeout = cfg->lease_ms > 2000 ? cfg->lease_ms : 2000;
    struct redis_config rc = {
        .connect_timeout_ms = 2000,
        .command_timeout_ms = command_timeout,
        .retry_first_ms = 50,
        .retry_max_ms = 1000,
        .db = cfg->db,
    };
    struct redis_callbacks cb = {.on_state = on_state};
    int err = 0;
    rs.redis = redis_open(loop, cfg->host, cfg->port, &rc, &cb, NULL, &err);
    if (rs.redis == NULL)
        return err;
    redis_script_add(rs.redis, SCRIPT, store_redis_lua);
    snprintf(rs.probe_channel, sizeof(rs.probe_channel), "rc:probe:%d:%s", cfg->db, rs.node_id);
    redis_subscribe(rs.redis, rs.probe_channel, &probe_callbacks, NULL);
    /* Ticks often enough that a lease lapses within about a second of its
     * end and that a stall of half a lease is told from a normal gap. */
    uint64_t every = cfg->lease_ms / 4;
    if (every > 1000)
        every = 1000;
    if (every < 10)
        every = 10;
    uv_timer_start(&rs.tick_timer, tick_cb, every, every);
    return 0;
}

int store_redis_is_up(void)
{
    return rs.redis && redis_is_up(rs.redis);
}

static void on_redis_closed(void *arg)
{
    uv_close((uv_handle_t *)&rs.notes_idle, NULL);
    uv_close((uv_handle_t *)&rs.tick_timer, NULL);
    uv_close((uv_handle_t *)&rs.stop_timer, NULL);
    uv_close((uv_handle_t *)&rs.settle_timer, NULL);
    table_free(&rs.logs);
    rs.redis = NULL;
    if (rs.stop_done)
        rs.stop_done(rs.stop_arg);
}

/* Closes the connection once stopping and nothing waits for Redis. */
static void stop_finish(void)
{
    if (!rs.stopping || rs.redis == NULL || rs.stopping == 2)
        return;
    rs.stopping = 2;
    uv_timer_stop(&rs.stop_timer);
    redis_close(rs.redis, on_redis_closed, NULL);
}

static void stop_check(void)
{
    if (rs.stopping == 1 && rs.outbox_count == 0)
        stop_finish();
}

static void stop_timeout_cb(uv_timer_t *t)
{
    if (rs.outbox_count)
        log_event(LOG_WARN, "store.unflushed", "writes",
                  u64_text((char[24]){0}, 24, rs.outbox_count), NULL);
    stop_finish();
}

static int settled(void)
{
    if (rs.outbox_count > 0 && redis_is_up(rs.redis))
        return 0;
    for (struct list *pos = rs.probe_ring.next; pos != &rs.probe_ring; pos = pos->next) {
        struct redis_log *l = container_of(pos, struct redis_log, link);
        if (l->loaded && l->written_seq > cache_newest(l) && l->subscribed)
            return 0;
    }
    return 1;
}

static void settle_cb(uv_timer_t *t)
{
    if (!settled() && time_mono_ms() < rs.settle_deadline_ms)
        return;
    uv_timer_stop(&rs.settle_timer);
    rs.settle_done(rs.settle_arg);
}

void store_redis_settle(uint64_t timeout_ms, void (*done)(void *arg), void *arg)
{
    rs.settle_done = done;
    rs.settle_arg = arg;
    rs.settle_deadline_ms = time_mono_ms() + timeout_ms;
    uv_timer_start(&rs.settle_timer, settle_cb, 0, 10);
}

void store_redis_stop(uint64_t timeout_ms, void (*done)(void *arg), void *arg)
{
    rs.stopping = 1;
    rs.stop_done = done;
    rs.stop_arg = arg;
    uv_timer_stop(&rs.tick_timer);
    uv_timer_start(&rs.stop_timer, stop_timeout_cb, timeout_ms, 0);
    stop_check();
}

void store_redis_stats(struct store_redis_stats *out)
{
    *out = rs.stats;
    out->up = store_redis_is_up();
    out->outbox = rs.outbox_count;
}

/* ---- cluster-wide requests of the API ---------------------------------------- */

struct request {
    store_redis_result_cb cb;
    void *arg;
    int op;
    uint64_t sent_ns;
};

enum { REQ_STATUS, REQ_STATUS_ALL, REQ_CANCEL, REQ_DELETE, REQ_TOMB, REQ_USER_SUBS };

static json_t *time_or_null(const char *s)
{
    return s[0] ? json_real(strtod(s, NULL)) : json_null();
}

static struct redis_log *log_find(const char *S);

/* A status script's fields as DESIGN.md's per-session object. Subscribers:
 * the other nodes' as of their latest tick, plus this node's, exactly. */
static json_t *status_object(const redisReply *f)
{
    struct redis_log *l = log_find(reply_str(reply_at(f, 10)));
    long long mine = l && l->watch ? (long long)l->watch->subscribers(l->watch_arg) : 0;
    const char *run = reply_str(reply_at(f, 3)), *state = reply_str(reply_at(f, 4));
    int active = strcmp(state, "queued") == 0 || strcmp(state, "running") == 0;
    json_t *o = json_object();
    json_object_set_new(o, "session_id", json_string(reply_str(reply_at(f, 2))));
    json_object_set_new(o, "app", json_string(reply_str(reply_at(f, 0))));
    json_object_set_new(o, "user", json_string(reply_str(reply_at(f, 1))));
    json_object_set_new(o, "has_task", json_boolean(active));
    json_object_set_new(o, "status", state[0] ? json_string(state) : json_null());
    json_object_set_new(o, "run_id", run[0] ? json_string(run) : json_null());
    json_object_set_new(o, "created_at", run[0] ? time_or_null(reply_str(reply_at(f, 5))) : json_null());
    json_object_set_new(o, "started_at", time_or_null(reply_str(reply_at(f, 6))));
    json_object_set_new(o, "ended_at", time_or_null(reply_str(reply_at(f, 7))));
    json_object_set_new(o, "events", json_integer(reply_int(reply_at(f, 8))));
    json_object_set_new(o, "subscribers", json_integer(reply_int(reply_at(f, 9)) + mine));
    return o;
}

static void on_request_reply(void *arg, redisReply *reply, int err)
{
    struct request *q = arg;
    json_t *result = NULL;
    if (err == 0) {
        count_reply(q->sent_ns);
        const char *st = reply_status(reply);
        if (q->op == REQ_TOMB) {
            result = json_pack("{s:b}", "deleted", reply_int(reply) == 1);
        } else if (q->op == REQ_USER_SUBS) {
            result = json_pack("{s:I}", "elsewhere", (json_int_t)reply_int(reply));
        } else if (strcmp(st, "NOSESSION") == 0) {
            err = -ENOENT;
        } else if (strcmp(st, "NORUN") == 0) {
            err = -ESRCH;
        } else if (strcmp(st, "OK") != 0) {
            log_script_error("request", reply);
            err = -EIO;
        } else if (q->op == REQ_STATUS) {
            result = status_object(reply_at(reply, 1));
        } else if (q->op == REQ_STATUS_ALL) {
            json_t *list = json_array();
            const redisReply *l = reply_at(reply, 5);
            for (size_t i = 0; l && i < l->elements; i++)
                json_array_append_new(list, status_object(l->element[i]));
            result = json_pack("{s:I, s:I, s:I, s:I, s:o}", "total_tasks",
                               (json_int_t)reply_int(reply_at(reply, 1)), "running_tasks",
                               (json_int_t)reply_int(reply_at(reply, 2)), "queued_tasks",
                               (json_int_t)reply_int(reply_at(reply, 3)), "sessions_total",
                               (json_int_t)reply_int(reply_at(reply, 4)), "sessions", list);
        } else if (q->op == REQ_CANCEL) {
            if (rs.store.on_terminal)
                rs.store.on_terminal("run.cancelled");
            result = json_pack("{s:s}", "run_id", reply_str(reply_at(reply, 1)));
        } else { /* REQ_DELETE */
            const char *run = reply_str(reply_at(reply, 1));
            if (reply_str(reply_at(reply, 2))[0] && rs.store.on_terminal)
                rs.store.on_terminal("run.cancelled");
            result = json_pack("{s:o}", "run_id", run[0] ? json_string(run) : json_null());
        }
    }
    q->cb(q->arg, err, result);
    json_decref(result);
    free(q);
}

static void request_send(int op, store_redis_result_cb cb, void *arg, int argc, const char **argv)
{
    struct request *q = xmalloc(sizeof(*q));
    q->cb = cb;
    q->arg = arg;
    q->op = op;
    q->sent_ns = time_mono_ns();
    redis_eval(rs.redis, SCRIPT, on_request_reply, q, 0, NULL, argc, argv);
}


void store_redis_status(const char *app, const char *user, const char *sid,
                        store_redis_result_cb cb, void *arg)
{
    char S[MAX_KEY];
    session_key(S, app, user, sid);
    const char *args[] = {"status", S, rs.node_id};
    request_send(REQ_STATUS, cb, arg, 3, args);
}

void store_redis_status_all(int all, long limit, store_redis_result_cb cb, void *arg)
{
    char lim[24];
    u64_text(lim, sizeof(lim), (uint64_t)limit);
    const char *args[] = {"status_all", all ? "1" : "0", lim, rs.node_id};
    request_send(REQ_STATUS_ALL, cb, arg, 4, args);
}

void store_redis_cancel(const char *app, const char *user, const char *sid, const char *reason,
                        store_redis_result_cb cb, void *arg)
{
    char S[MAX_KEY];
    session_key(S, app, user, sid);
    const char *args[] = {"cancel", S, reason, rs.arg.ttl, rs.arg.history};
    request_send(REQ_CANCEL, cb, arg, 5, args);
}

void store_redis_delete(const char *app, const char *user, const char *sid,
                        store_redis_result_cb cb, void *arg)
{
    char S[MAX_KEY], tomb[24];
    session_key(S, app, user, sid);
    /* A deleted session's tombstone lasts --session-ttl (an hour when
     * sessions never expire). */
    u64_text(tomb, sizeof(tomb), rs.cfg.session_ttl_ms ? rs.cfg.session_ttl_ms : 3600000);
    const char *args[] = {"delete", S, tomb, rs.arg.history};
    request_send(REQ_DELETE, cb, arg, 4, args);
}

void store_redis_was_deleted(const char *app, const char *user, const char *sid,
                             const char *last_event_id, store_redis_result_cb cb, void *arg)
{
    char S[MAX_KEY], epoch[16];
    uint32_t incarnation;
    session_key(S, app, user, sid);
    if (store_event_id_incarnation(last_event_id, &incarnation) < 0)
        incarnation = 0;
    epoch_text(epoch, sizeof(epoch), incarnation);
    const char *args[] = {"tomb", S, epoch};
    request_send(REQ_TOMB, cb, arg, 3, args);
}

void store_redis_user_subscribers(const char *user, store_redis_result_cb cb, void *arg)
{
    const char *args[] = {"user_subs", user, rs.node_id};
    request_send(REQ_USER_SUBS, cb, arg, 3, args);
}
