/* session.c: the session table (see session.h). Sessions sit in the one
 * hash table (table.h), keyed by "app\0user\0id", plus the activity list
 * that expiry walks from its oldest end; beside them the tombstones of
 * deleted sessions, in a second table with a list in order of deletion,
 * which the same expiry timer trims from its oldest end. */
#include "session.h"

#include <jansson.h>
#include <stdlib.h>

#include "hub.h"
#include "log.h"
#include "quota.h"
#include "run.h"
#include "store.h"

static struct session_config config;
static struct table sessions;
static struct list by_activity;
static uv_timer_t expiry_timer;

/* What DELETE leaves of a session: its key and the incarnation its event
 * ids carried. Owned by the tombstone table; freed once older than the TTL,
 * when the table is full and it is the oldest, or at shutdown. */
struct tombstone {
    struct table_entry entry;  /* in tombstones, keyed by key[] */
    struct list age_link;      /* oldest deletion first */
    uint64_t deleted_ms;       /* time_mono_ms() of the DELETE */
    uint32_t incarnation;      /* of the deleted session's log (store.h) */
    const char *app, *user, *id; /* point into key[] */
    char key[];
};

static struct table tombstones;
static struct list tombs_by_age;

static void expiry_cb(uv_timer_t *t);
static void session_touch_host(struct run_host *host);
static const struct store_watch session_watch;
static void session_remove(struct session *s, const char *reason, int publish_closed);
static void tombstones_free_all(void);

/* The longest key: three path parameters of at most 128 characters. */
#define KEY_MAX (3 * (128 + 1))

/* Writes "app\0user\0id" into key (KEY_MAX bytes) and returns its length
 * (without a final NUL), or 0 when a part is longer than a path parameter
 * can be (no such session can exist). */
static size_t key_make(char *key, const char *app, const char *user, const char *id)
{
    const char *parts[3] = {app, user, id};
    size_t len = 0;
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(parts[i]);
        if (n > 128)
            return 0;
        memcpy(key + len, parts[i], n + 1);
        len += n + 1;
    }
    return len - 1;
}

void session_table_init(uv_loop_t *loop, const struct session_config *cfg)
{
    config = *cfg;
    table_init(&sessions);
    list_init(&by_activity);
    table_init(&tombstones);
    list_init(&tombs_by_age);
    uv_timer_init(loop, &expiry_timer);
    uv_unref((uv_handle_t *)&expiry_timer);
    if (config.ttl_ms > 0) {
        uint64_t every = config.ttl_ms / 4 ? config.ttl_ms / 4 : 1;
        if (every > 1000)
            every = 1000;
        uv_timer_start(&expiry_timer, expiry_cb, every, every);
    }
}

void session_table_shutdown(const char *reason)
{
    /* Not deleted, only no longer served: no session.closed. */
    while (!list_empty(&by_activity))
        session_remove(container_of(by_activity.next, struct session, activity_link), reason, 0);
    uv_timer_stop(&expiry_timer);
    uv_close((uv_handle_t *)&expiry_timer, NULL);
    table_free(&sessions);
    tombstones_free_all();
}

void session_table_end_runs(const char *reason)
{
    struct session *next;
    /* Ending a run touches its session (to the tail of the list): the next
     * one is taken first. */
    for (struct session *s = session_first(); s; s = next) {
        next = session_next(s);
        if (s->run && run_is_active(s->run))
            run_cancel(s->run, reason);
    }
}

struct session *session_find(const char *app, const char *user, const char *id)
{
    char key[KEY_MAX];
    size_t len = key_make(key, app, user, id);
    struct table_entry *e = len ? table_find(&sessions, key, len) : NULL;
    return e ? container_of(e, struct session, entry) : NULL;
}

/* Copies key[0..len] (as key_make() wrote it, final NUL included) into
 * copy and points the three parts at the copy. */
static void key_copy(char *copy, const char *key, size_t len, const char **app, const char **user,
                     const char **id)
{
    memcpy(copy, key, len + 1);
    *app = copy;
    *user = *app + strlen(*app) + 1;
    *id = *user + strlen(*user) + 1;
}

int session_get_or_create(const char *app, const char *user, const char *id,
                          struct session **out)
{
    char key[KEY_MAX];
    size_t len = key_make(key, app, user, id);
    if (len == 0)
        return -EINVAL; /* not path parameters (the router allows 128 characters) */
    struct table_entry *e = table_find(&sessions, key, len);
    struct session *s = e ? container_of(e, struct session, entry) : NULL;
    if (s) {
        session_touch(s);
        *out = s;
        return 0;
    }
    if (sessions.count >= (size_t)config.max_sessions)
        return -ENOSPC;
    if (quota_session_begin(user) < 0)
        return -EDQUOT;
    s = xcalloc(1, sizeof(*s) + len + 1);
    key_copy(s->key, key, len, &s->app, &s->user, &s->id);
    s->log = store_open(s->app, s->user, s->id);
    store_watch(s->log, &session_watch, s);
    s->hub = hub_create(s->log);
    s->host = (struct run_host){.app = s->app, .user = s->user, .session_id = s->id,
                                .log = s->log, .touch = session_touch_host};
    s->created_at = time_wall_seconds();
    s->last_activity_ms = time_mono_ms();
    list_insert_tail(&by_activity, &s->activity_link);
    table_insert(&sessions, &s->entry, s->key, len);
    *out = s;
    return 0;
}

void session_touch(struct session *s)
{
    s->last_activity_ms = time_mono_ms();
    list_remove(&s->activity_link);
    list_insert_tail(&by_activity, &s->activity_link);
}

static void session_touch_host(struct run_host *host)
{
    session_touch(container_of(host, struct session, host));
}

/* Ends s's current run if it is still active — superseded by the run with
 * id by when a new run replaces it, else cancelled with reason — and frees
 * it: the one place a session lets go of a run. Safe from request handlers
 * and timers (never called from the run's own callbacks). */
static void session_retire_run(struct session *s, const char *by, const char *reason)
{
    struct run *r = s->run;
    if (r == NULL)
        return;
    s->run = NULL;
    if (run_is_active(r)) {
        if (by)
            run_supersede(r, by);
        else
            run_cancel(r, reason);
    }
    run_free(r);
}

struct run *session_start_run(struct session *s, const struct run_input *in,
                              store_done_cb on_registered, void *arg)
{
    struct run *r = run_create(&s->host, in);
    /* The old run ends (and gives its slot back) before the new one asks
     * for a slot, and nothing waits for its upstream to go away. */
    session_retire_run(s, r->id, NULL);
    s->run = r;
    run_begin(r, on_registered, arg);
    return r;
}

json_t *session_status_json(const struct session *s)
{
    json_t *o = json_object();
    json_object_set_new(o, "session_id", json_string(s->id));
    json_object_set_new(o, "app", json_string(s->app));
    json_object_set_new(o, "user", json_string(s->user));
    run_status_json(s->run, o);
    json_object_set_new(o, "subscribers", json_integer((json_int_t)hub_subscriber_count(s->hub)));
    return o;
}

static void table_unlink(struct session *s)
{
    table_remove(&sessions, &s->entry);
    list_remove(&s->activity_link);
}

/* Cancels the active run, optionally tells subscribers the session is gone,
 * ends every stream and frees s. */
static void session_remove(struct session *s, const char *reason, int publish_closed)
{
    session_retire_run(s, NULL, reason);
    if (publish_closed) {
        char data[64];
        int n = snprintf(data, sizeof(data), "{\"reason\":\"%s\"}", reason);
        store_append(s->log, NULL, "session.closed", data, (size_t)n);
    }
    table_unlink(s);
    hub_destroy(s->hub);
    store_close(s->log);
    if (reason) /* NULL: only this node's copy goes (its caller logged why) */
        log_event(LOG_INFO, "session.closed", "app", s->app, "user", s->user, "session", s->id,
                  "reason", reason, NULL);
    quota_session_end(s->user);
    free(s);
}

/* ---- what a shared store tells the session (store_watch) ------------------ */

static void watch_run_ended(void *arg, const char *run_id, const char *event)
{
    struct session *s = arg;
    struct run *r = s->run;
    if (r == NULL || !run_is_active(r) || strcmp(r->id, run_id) != 0)
        return;
    if (event)
        run_end_elsewhere(r, event);
    else
        run_fail_store_lost(r);
}

/* Deleted or expired by a node (maybe this one): the session.closed is in
 * the log, so the streams end after it; the run, if still active here,
 * was cancelled there. */
static void watch_closed(void *arg, const char *reason)
{
    struct session *s = arg;
    if (s->run && run_is_active(s->run))
        run_end_elsewhere(s->run, "run.cancelled");
    session_remove(s, reason, 0);
}

static void watch_reset(void *arg)
{
    struct session *s = arg;
    hub_reset(s->hub);
}

static size_t watch_subscribers(void *arg)
{
    struct session *s = arg;
    return hub_subscriber_count(s->hub);
}

static const struct store_watch session_watch = {
    .run_ended = watch_run_ended,
    .closed = watch_closed,
    .reset = watch_reset,
    .subscribers = watch_subscribers,
};

/* ---- tombstones ----------------------------------------------------------- */

static struct tombstone *tombstone_find(const char *app, const char *user, const char *id)
{
    char key[KEY_MAX];
    size_t len = key_make(key, app, user, id);
    struct table_entry *e = len ? table_find(&tombstones, key, len) : NULL;
    return e ? container_of(e, struct tombstone, entry) : NULL;
}

static void tombstone_free(struct tombstone *t)
{
    table_remove(&tombstones, &t->entry);
    list_remove(&t->age_link);
    free(t);
}

/* Remembers that s, about to be freed, was deleted: a new tombstone, or
 * the key's existing one (an earlier incarnation's) now naming s's
 * incarnation. At --max-sessions tombstones the oldest makes room. */
static void tombstone_bury(const struct session *s)
{
    size_t len = s->entry.key_len;
    struct table_entry *e = table_find(&tombstones, s->key, len);
    struct tombstone *t = e ? container_of(e, struct tombstone, entry) : NULL;
    if (t == NULL) {
        if (tombstones.count >= (size_t)config.max_sessions)
            tombstone_free(container_of(tombs_by_age.next, struct tombstone, age_link));
        t = xcalloc(1, sizeof(*t) + len + 1);
        key_copy(t->key, s->key, len, &t->app, &t->user, &t->id);
        table_insert(&tombstones, &t->entry, t->key, len);
    } else {
        list_remove(&t->age_link);
    }
    struct store_meta meta;
    store_meta(s->log, &meta);
    t->incarnation = meta.incarnation;
    t->deleted_ms = time_mono_ms();
    list_insert_tail(&tombs_by_age, &t->age_link);
}

/* Frees the tombstones at least --session-ttl old: oldest first, stopping
 * at the first younger one. */
static void tombstones_expire(uint64_t now)
{
    while (!list_empty(&tombs_by_age)) {
        struct tombstone *t = container_of(tombs_by_age.next, struct tombstone, age_link);
        if (now - t->deleted_ms < config.ttl_ms)
            break;
        tombstone_free(t);
    }
}

static void tombstones_free_all(void)
{
    while (!list_empty(&tombs_by_age))
        tombstone_free(container_of(tombs_by_age.next, struct tombstone, age_link));
    table_free(&tombstones);
}

int session_was_deleted(const char *app, const char *user, const char *id,
                        const char *last_event_id)
{
    uint32_t incarnation;
    if (last_event_id == NULL || session_find(app, user, id) != NULL ||
        store_event_id_incarnation(last_event_id, &incarnation) < 0)
        return 0;
    struct tombstone *t = tombstone_find(app, user, id);
    return t != NULL && t->incarnation == incarnation;
}

void session_delete(struct session *s, const char *reason)
{
    tombstone_bury(s);
    session_remove(s, reason, 1);
}

size_t session_count(void)
{
    return sessions.count;
}

struct session *session_first(void)
{
    return list_empty(&by_activity) ? NULL
                                    : container_of(by_activity.next, struct session, activity_link);
}

struct session *session_next(const struct session *s)
{
    return s->activity_link.next == &by_activity
               ? NULL
               : container_of(s->activity_link.next, struct session, activity_link);
}

/* Removes sessions idle for the TTL, oldest first; a session with a
 * subscriber is only touched (its stream keeps it alive). Stops at the first
 * session that is not due, so each tick costs O(expired + touched). Frees
 * the tombstones as old as the TTL the same way. */
static void expiry_cb(uv_timer_t *t)
{
    uint64_t now = time_mono_ms();
    size_t budget = sessions.count;
    int shared = store_is_shared();
    /* A shared store expires sessions itself (session.closed comes through
     * the log); this node's copy of one it no longer serves goes later. */
    uint64_t ttl = shared ? 2 * config.ttl_ms : config.ttl_ms;
    tombstones_expire(now);
    while (!list_empty(&by_activity) && budget-- > 0) {
        struct session *s = container_of(by_activity.next, struct session, activity_link);
        if (now - s->last_activity_ms < ttl)
            break;
        if (hub_subscriber_count(s->hub) > 0 || (shared && s->run && run_is_active(s->run))) {
            session_touch(s);
            continue;
        }
        if (shared) {
            log_event(LOG_INFO, "session.released", "app", s->app, "user", s->user, "session",
                      s->id, NULL);
            session_remove(s, NULL, 0);
            continue;
        }
        log_event(LOG_INFO, "session.expired", "session", s->id, NULL);
        session_remove(s, "session_expired", 1); /* expired, not deleted: no tombstone */
    }
}
