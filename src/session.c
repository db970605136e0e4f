/* session.c: the session table (see session.h). A chained hash table that
 * doubles as it fills, plus the activity list that expiry walks from its
 * oldest end. */
#include "session.h"

#include <stdlib.h>

#include "hub.h"
#include "log.h"
#include "run.h"

static struct session_config config;
static struct session **buckets;
static size_t bucket_count;
static size_t count;
static struct list by_activity;
static uv_timer_t expiry_timer;

static void expiry_cb(uv_timer_t *t);
static void session_remove(struct session *s, const char *reason, int publish_closed);

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
    size_t la = strlen(app) + 1, lu = strlen(user) + 1, li = strlen(id) + 1;
    s = xcalloc(1, sizeof(*s) + la + lu + li);
    memcpy(s->key, app, la);
    memcpy(s->key + la, user, lu);
    memcpy(s->key + la + lu, id, li);
    s->app = s->key;
    s->user = s->key + la;
    s->id = s->key + la + lu;
    s->hash = key_hash(app, user, id);
    s->hub = hub_create();
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
    if (s->run && run_is_active(s->run))
        run_cancel(s->run, reason);
    if (publish_closed) {
        char data[64];
        int n = snprintf(data, sizeof(data), "{\"reason\":\"%s\"}", reason);
        hub_publish(s->hub, "session.closed", data, (size_t)n, 0);
    }
    table_unlink(s);
    hub_destroy(s->hub);
    if (s->run)
        run_free(s->run);
    log_event(LOG_INFO, "session.closed", "app", s->app, "user", s->user, "session", s->id,
              "reason", reason, NULL);
    free(s);
}

void session_delete(struct session *s, const char *reason)
{
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
 * session that is not due, so each tick costs O(expired + touched). */
static void expiry_cb(uv_timer_t *t)
{
    uint64_t now = time_mono_ms();
    size_t budget = count;
    while (!list_empty(&by_activity) && budget-- > 0) {
        struct session *s = container_of(by_activity.next, struct session, activity_link);
        if (now - s->last_activity_ms < config.ttl_ms)
            break;
        if (hub_subscriber_count(s->hub) > 0) {
            session_touch(s);
            continue;
        }
        log_event(LOG_INFO, "session.expired", "session", s->id, NULL);
        session_delete(s, "session_expired");
    }
}
