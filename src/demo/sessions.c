/* sessions.c: the demo agent's sessions, in the shared hash table (table.h)
 * keyed "app\0user\0id", plus an age list so that the oldest session goes
 * first once DEMO_MAX_SESSIONS are kept. */
#include "demo_internal.h"

#include <stdlib.h>

/* Builds "app\0user\0id\0" into key. Returns the table key's length (the
 * final NUL is not part of it: it only makes id a C string). */
static size_t demo_session_key(struct buf *key, const char *app, const char *user,
                               const char *id)
{
    buf_reset(key);
    buf_append(key, app, strlen(app) + 1);
    buf_append(key, user, strlen(user) + 1);
    buf_append(key, id, strlen(id) + 1);
    return key->len - 1;
}

void demo_sessions_init(struct demo_sessions *t)
{
    table_init(&t->table);
    list_init(&t->by_age);
}

struct demo_session *demo_session_find(struct demo_sessions *t, const char *app,
                                       const char *user, const char *id)
{
    struct buf key = {0};
    size_t len = demo_session_key(&key, app, user, id);
    struct table_entry *e = table_find(&t->table, key.data, len);
    buf_free(&key);
    return e ? container_of(e, struct demo_session, entry) : NULL;
}

void demo_session_remove(struct demo_sessions *t, struct demo_session *s)
{
    table_remove(&t->table, &s->entry);
    list_remove(&s->age_node);
    free(s->key);
    free(s);
}

struct demo_session *demo_session_add(struct demo_sessions *t, const char *app,
                                      const char *user, const char *id)
{
    struct buf key = {0};
    size_t len = demo_session_key(&key, app, user, id);
    struct demo_session *s = xcalloc(1, sizeof(*s));
    s->key = key.data; /* take the buffer */
    s->app = s->key;
    s->user = s->app + strlen(s->app) + 1;
    s->id = s->user + strlen(s->user) + 1;
    s->created_at = (double)demo_wall_us() / 1e6;
    table_insert(&t->table, &s->entry, s->key, len);
    list_insert_tail(&t->by_age, &s->age_node);
    while (t->table.count > DEMO_MAX_SESSIONS)
        demo_session_remove(t, container_of(t->by_age.next, struct demo_session, age_node));
    return s;
}

/* !status=CODExN: counts this call among the calls in a row that carry the
 * same message (the gateway's retries of it). Returns 1 while the count is
 * at most n (answer with the status); the call after that runs normally and
 * the count starts over. n == 0 (a call without CODExN) ends the row. */
int demo_session_status_turn(struct demo_session *s, const char *text, uint64_t n)
{
    if (n == 0) {
        s->status_count = 0;
        return 0;
    }
    uint64_t h = table_hash(text, strlen(text));
    if (s->status_count > 0 && s->status_text_hash == h) {
        s->status_count++;
    } else {
        s->status_text_hash = h;
        s->status_count = 1;
    }
    if (s->status_count <= n)
        return 1;
    s->status_count = 0;
    return 0;
}

void demo_sessions_free(struct demo_sessions *t)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &t->by_age)
        demo_session_remove(t, container_of(pos, struct demo_session, age_node));
    table_free(&t->table);
}

json_t *demo_session_json(const struct demo_session *s)
{
    return json_pack("{s:s,s:s,s:s,s:{},s:[],s:f}", "id", s->id, "appName", s->app,
                     "userId", s->user, "state", "events", "lastUpdateTime", s->created_at);
}
