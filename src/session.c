/* session.c: the session table (see session.h). A chained hash table that
 * doubles as it fills, plus the activity list that expiry walks from its
 * oldest end; and beside it the tombstones of deleted sessions, a second
 * chained hash table with a list in order of deletion, which the same
 * expiry timer trims from its oldest end. */
#include "session.h"

#include <jansson.h>
#include <stdlib.h>

#include "hub.h"
#include "log.h"
#include "quota.h"
#include "run.h"
#include "store.h"

static struct session_config config;
static struct session **buckets;
static size_t bucket_count;
static size_t count;
static struct list by_activity;
static uv_timer_t expiry_timer;

/* What DELETE leaves of a session: its key and the incarnation its event
 * ids carried. Owned by the tombstone table; freed once older than the TTL,
 * when the table is full and it is the oldest, or at shutdown. */
struct tombstone {
    struct tombstone *hash_next;
    struct list age_link;      /* oldest deletion first */
    uint64_t hash;
    uint64_t deleted_ms;       /* time_mono_ms() of the DELETE */
    uint32_t incarnation;      /* of the deleted session's log (store.h) */
    const char *app, *user, *id; /* point into key[] */
    char key[];
};

static struct tombstone **tomb_buckets;
static size_t tomb_bucket_count;
static size_t tomb_count;
static struct list tombs_by_age;

static void expiry_cb(uv_timer_t *t);
static void session_touch_host(struct run_host *host);
static void session_remove(struct session *s, const char *reason, int publish_closed);
static void tombstones_free_all(void);

/* FNV-1a over the three parts with a separator no part can contain. */
static uint64_t key_hash(const char *app, const char *user, const char *id)
{
    uint64_t h = 1469598103934665603ull;
    const char *parts[3] = {app, user, id};
    for (int i = 0; i < 3; i++) {
        for (const char *p = parts[i]; *p; p++) {
            h ^= (unsigned char)*p;
            h *= 1099511628211ull;
        }
        h ^= '/';
        h *= 1099511628211ull;
    }
    return h;
}

void session_table_init(uv_loop_t *loop, const struct session_config *cfg)
{
    config = *cfg;
    bucket_count = 64;
    buckets = xcalloc(bucket_count, sizeof(*buckets));
    list_init(&by_activity);
    tomb_bucket_count = 64;
    tomb_buckets = xcalloc(tomb_bucket_count, sizeof(*tomb_buckets));
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
    free(buckets);
    buckets = NULL;
    bucket_count = 0;
    tombstones_free_all();
}

static int session_matches(const struct session *s, uint64_t hash, const char *app,
                           const char *user, const char *id)
{
    return s->hash == hash && strcmp(s->id, id) == 0 && strcmp(s->user, user) == 0 &&
           strcmp(s->app, app) == 0;
}

struct session *session_find(const char *app, const char *user, const char *id)
{
    uint64_t hash = key_hash(app, user, id);
    for (struct session *s = buckets[hash % bucket_count]; s; s = s->hash_next) {
        if (session_matches(s, hash, app, user, id))
            return s;
    }
    return NULL;
}

static void table_grow(void)
{
    size_t n = bucket_count * 2;
    struct session **b = xcalloc(n, sizeof(*b));
    for (size_t i = 0; i < bucket_count; i++) {
        struct session *s = buckets[i];
        while (s) {
            struct session *next = s->hash_next;
            s->hash_next = b[s->hash % n];
            b[s->hash % n] = s;
            s = next;
        }
    }
    free(buckets);
    buckets = b;
    bucket_count = n;
}

/* Bytes key_store() needs for the three parts. */
static size_t key_size(const char *app, const char *user, const char *id)
{
    return strlen(app) + 1 + strlen(user) + 1 + strlen(id) + 1;
}

/* Copies the three parts into key (key_size() bytes) and points parts[] at
 * the copies. */
static void key_store(char *key, const char *app, const char *user, const char *id,
                      const char *parts[3])
{
    const char *in[3] = {app, user, id};
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(in[i]) + 1;
        memcpy(key, in[i], n);
        parts[i] = key;
        key += n;
    }
}

int session_get_or_create(const char *app, const char *user, const char *id,
                          struct session **out)
{
    struct session *s = session_find(app, user, id);
    if (s) {
        session_touch(s);
        *out = s;
        return 0;
    }
    if (count >= (size_t)config.max_sessions)
        return -ENOSPC;
    if (quota_session_begin(user) < 0)
        return -EDQUOT;
    s = xcalloc(1, sizeof(*s) + key_size(app, user, id));
    const char *parts[3];
    key_store(s->key, app, user, id, parts);
    s->app = parts[0];
    s->user = parts[1];
    s->id = parts[2];
    s->hash = key_hash(app, user, id);
    s->log = store_open();
    s->hub = hub_create(s->log);
    s->host = (struct run_host){.app = s->app, .user = s->user, .session_id = s->id,
                                .log = s->log, .touch = session_touch_host};
    s->created_at = time_wall_seconds();
    s->last_activity_ms = time_mono_ms();
    list_insert_tail(&by_activity, &s->activity_link);
    if (count + 1 > bucket_count)
        table_grow();
    s->hash_next = buckets[s->hash % bucket_count];
    buckets[s->hash % bucket_count] = s;
    count++;
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

struct run *session_start_run(struct session *s, json_t *new_message, json_t *state_delta,
                              int streaming)
{
    struct run *r = run_create(&s->host, new_message, state_delta, streaming);
    /* The old run ends (and gives its slot back) before the new one asks
     * for a slot, and nothing waits for its upstream to go away. */
    session_retire_run(s, r->id, NULL);
    s->run = r;
    run_begin(r);
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
    struct session **pp = &buckets[s->hash % bucket_count];
    while (*pp != s)
        pp = &(*pp)->hash_next;
    *pp = s->hash_next;
    list_remove(&s->activity_link);
    count--;
}

/* Cancels the active run, optionally tells subscribers the session is gone,
 * ends every stream and frees s. */
static void session_remove(struct session *s, const char *reason, int publish_closed)
{
    session_retire_run(s, NULL, reason);
    if (publish_closed) {
        char data[64];
        int n = snprintf(data, sizeof(data), "{\"reason\":\"%s\"}", reason);
        store_append(s->log, "session.closed", data, (size_t)n);
    }
    table_unlink(s);
    hub_destroy(s->hub);
    store_close(s->log);
    log_event(LOG_INFO, "session.closed", "app", s->app, "user", s->user, "session", s->id,
              "reason", reason, NULL);
    quota_session_end(s->user);
    free(s);
}

/* ---- tombstones ----------------------------------------------------------- */

static struct tombstone *tombstone_find(uint64_t hash, const char *app, const char *user,
                                        const char *id)
{
    for (struct tombstone *t = tomb_buckets[hash % tomb_bucket_count]; t; t = t->hash_next) {
        if (t->hash == hash && strcmp(t->id, id) == 0 && strcmp(t->user, user) == 0 &&
            strcmp(t->app, app) == 0)
            return t;
    }
    return NULL;
}

static void tombstone_free(struct tombstone *t)
{
    struct tombstone **pp = &tomb_buckets[t->hash % tomb_bucket_count];
    while (*pp != t)
        pp = &(*pp)->hash_next;
    *pp = t->hash_next;
    list_remove(&t->age_link);
    tomb_count--;
    free(t);
}

static void tombs_grow(void)
{
    size_t n = tomb_bucket_count * 2;
    struct tombstone **b = xcalloc(n, sizeof(*b));
    for (size_t i = 0; i < tomb_bucket_count; i++) {
        struct tombstone *t = tomb_buckets[i];
        while (t) {
            struct tombstone *next = t->hash_next;
            t->hash_next = b[t->hash % n];
            b[t->hash % n] = t;
            t = next;
        }
    }
    free(tomb_buckets);
    tomb_buckets = b;
    tomb_bucket_count = n;
}

/* Remembers that s, about to be freed, was deleted: a new tombstone, or
 * the key's existing one (an earlier incarnation's) now naming s's
 * incarnation. At --max-sessions tombstones the oldest makes room. */
static void tombstone_bury(const struct session *s)
{
    struct tombstone *t = tombstone_find(s->hash, s->app, s->user, s->id);
    if (t == NULL) {
        if (tomb_count >= (size_t)config.max_sessions)
            tombstone_free(container_of(tombs_by_age.next, struct tombstone, age_link));
        t = xcalloc(1, sizeof(*t) + key_size(s->app, s->user, s->id));
        const char *parts[3];
        key_store(t->key, s->app, s->user, s->id, parts);
        t->app = parts[0];
        t->user = parts[1];
        t->id = parts[2];
        t->hash = s->hash;
        if (tomb_count + 1 > tomb_bucket_count)
            tombs_grow();
        t->hash_next = tomb_buckets[t->hash % tomb_bucket_count];
        tomb_buckets[t->hash % tomb_bucket_count] = t;
        tomb_count++;
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
    free(tomb_buckets);
    tomb_buckets = NULL;
    tomb_bucket_count = 0;
}

int session_was_deleted(const char *app, const char *user, const char *id,
                        const char *last_event_id)
{
    uint32_t incarnation;
    if (last_event_id == NULL || session_find(app, user, id) != NULL ||
        store_event_id_incarnation(last_event_id, &incarnation) < 0)
        return 0;
    struct tombstone *t = tombstone_find(key_hash(app, user, id), app, user, id);
    return t != NULL && t->incarnation == incarnation;
}

void session_delete(struct session *s, const char *reason)
{
    tombstone_bury(s);
    session_remove(s, reason, 1);
}

size_t session_count(void)
{
    return count;
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
    size_t budget = count;
    tombstones_expire(now);
    while (!list_empty(&by_activity) && budget-- > 0) {
        struct session *s = container_of(by_activity.next, struct session, activity_link);
        if (now - s->last_activity_ms < config.ttl_ms)
            break;
        if (hub_subscriber_count(s->hub) > 0) {
            session_touch(s);
            continue;
        }
        log_event(LOG_INFO, "session.expired", "session", s->id, NULL);
        session_remove(s, "session_expired", 1); /* expired, not deleted: no tombstone */
    }
}
