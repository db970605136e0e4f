/* quota.c: per-user caps (see quota.h). One table of the users that have
 * something counted (table.h), keyed by name; an entry lives while its user
 * has an active run, an open stream or a session, and is freed as soon as
 * every count is back to 0. */
#include "quota.h"

#include <stdlib.h>

#include "table.h"

static struct {
    int max_runs;
    int max_subscribers;
    int max_sessions;
} limits;

/* One user with something counted. Owned by the users table; freed by
 * user_release_if_idle() when every count is back to 0, or by
 * quota_shutdown(). */
struct user_entry {
    struct table_entry entry; /* key: name */
    int runs;
    int subscribers;
    int sessions;
    char name[];
};

static struct table users;

/* The user's entry; created when create is set (never fails), else NULL. */
static struct user_entry *user_lookup(const char *name, int create)
{
    size_t len = strlen(name);
    struct table_entry *found = table_find(&users, name, len);
    if (found != NULL)
        return container_of(found, struct user_entry, entry);
    if (!create)
        return NULL;
    struct user_entry *e = xcalloc(1, sizeof(*e) + len + 1);
    memcpy(e->name, name, len + 1);
    table_insert(&users, &e->entry, e->name, len);
    return e;
}

static void user_release_if_idle(struct user_entry *e)
{
    if (e->runs > 0 || e->subscribers > 0 || e->sessions > 0)
        return;
    table_remove(&users, &e->entry);
    free(e);
}

void quota_shutdown(void)
{
    /* table_for_each cannot remove: collect the entries, then free them. */
    struct user_entry **all = xcalloc(users.count + 1, sizeof(*all));
    size_t n = 0;
    table_for_each(&users, te)
        all[n++] = container_of(te, struct user_entry, entry);
    table_free(&users);
    for (size_t i = 0; i < n; i++)
        free(all[i]);
    free(all);
    table_init(&users);
    limits.max_runs = limits.max_subscribers = limits.max_sessions = 0;
}

void quota_init(int max_runs_per_user, int max_subscribers_per_user, int max_sessions_per_user)
{
    quota_shutdown();
    limits.max_runs = max_runs_per_user;
    limits.max_subscribers = max_subscribers_per_user;
    limits.max_sessions = max_sessions_per_user;
}

size_t quota_user_count(void)
{
    return users.count;
}

int quota_run_begin(const char *user)
{
    if (limits.max_runs <= 0)
        return 0;
    struct user_entry *e = user_lookup(user, 1);
    e->runs++;
    return e->runs > limits.max_runs ? -EDQUOT : 0;
}

void quota_run_end(const char *user)
{
    if (limits.max_runs <= 0)
        return;
    struct user_entry *e = user_lookup(user, 0);
    if (e == NULL || e->runs == 0)
        return;
    e->runs--;
    user_release_if_idle(e);
}

int quota_subscriber_begin(const char *user, void **handle)
{
    return quota_subscriber_begin_shared(user, 0, handle);
}

int quota_subscriber_cap(void)
{
    return limits.max_subscribers;
}

int quota_subscriber_begin_shared(const char *user, int elsewhere, void **handle)
{
    *handle = NULL;
    if (limits.max_subscribers <= 0)
        return 0;
    struct user_entry *e = user_lookup(user, 1);
    if (e->subscribers + elsewhere >= limits.max_subscribers) {
        user_release_if_idle(e);
        return -EDQUOT;
    }
    e->subscribers++;
    *handle = e;
    return 0;
}

void quota_subscriber_end(void *handle)
{
    struct user_entry *e = handle;
    if (e == NULL)
        return;
    e->subscribers--;
    user_release_if_idle(e);
}

int quota_session_begin(const char *user)
{
    if (limits.max_sessions <= 0)
        return 0;
    struct user_entry *e = user_lookup(user, 1);
    if (e->sessions >= limits.max_sessions) {
        user_release_if_idle(e);
        return -EDQUOT;
    }
    e->sessions++;
    return 0;
}

void quota_session_end(const char *user)
{
    if (limits.max_sessions <= 0)
        return;
    struct user_entry *e = user_lookup(user, 0);
    if (e == NULL || e->sessions == 0)
        return;
    e->sessions--;
    user_release_if_idle(e);
}
