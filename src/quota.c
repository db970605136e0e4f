/* quota.c: per-user caps (see quota.h). One hash table of users that have
 * something counted, keyed by name; an entry lives while its user has an
 * active run or an open stream. */
#include "quota.h"

#include <stdlib.h>

static struct {
    int max_runs;
    int max_subscribers;
    int max_sessions;
} limits;

/* One user with something counted; freed when every count is back to 0. */
struct user_entry {
    struct user_entry *next;
    int runs;
    int subscribers;
    int sessions;
    char name[];
};

static struct user_entry **user_buckets;
static size_t user_bucket_count, user_count;

static uint64_t user_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static void users_grow(void)
{
    size_t count = user_bucket_count ? user_bucket_count * 2 : 64;
    struct user_entry **buckets = xcalloc(count, sizeof(*buckets));
    for (size_t i = 0; i < user_bucket_count; i++) {
        struct user_entry *e = user_buckets[i], *next;
        for (; e; e = next) {
            next = e->next;
            size_t b = user_hash(e->name) & (count - 1);
            e->next = buckets[b];
            buckets[b] = e;
        }
    }
    free(user_buckets);
    user_buckets = buckets;
    user_bucket_count = count;
}

/* The user's entry; created when create is set (never fails), else NULL. */
static struct user_entry *user_lookup(const char *name, int create)
{
    if (user_bucket_count == 0) {
        if (!create)
            return NULL;
        users_grow();
    }
    struct user_entry **slot = &user_buckets[user_hash(name) & (user_bucket_count - 1)];
    for (struct user_entry *e = *slot; e; e = e->next) {
        if (strcmp(e->name, name) == 0)
            return e;
    }
    if (!create)
        return NULL;
    if (user_count + 1 > user_bucket_count * 2) {
        users_grow();
        slot = &user_buckets[user_hash(name) & (user_bucket_count - 1)];
    }
    size_t len = strlen(name);
    struct user_entry *e = xcalloc(1, sizeof(*e) + len + 1);
    memcpy(e->name, name, len + 1);
    e->next = *slot;
    *slot = e;
    user_count++;
    return e;
}

static void user_release_if_idle(struct user_entry *e)
{
    if (e->runs > 0 || e->subscribers > 0 || e->sessions > 0)
        return;
    struct user_entry **slot = &user_buckets[user_hash(e->name) & (user_bucket_count - 1)];
    while (*slot != e)
        slot = &(*slot)->next;
    *slot = e->next;
    user_count--;
    free(e);
}

void quota_shutdown(void)
{
    for (size_t i = 0; i < user_bucket_count; i++) {
        struct user_entry *e = user_buckets[i], *next;
        for (; e; e = next) {
            next = e->next;
            free(e);
        }
    }
    free(user_buckets);
    user_buckets = NULL;
    user_bucket_count = user_count = 0;
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
    return user_count;
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
    *handle = NULL;
    if (limits.max_subscribers <= 0)
        return 0;
    struct user_entry *e = user_lookup(user, 1);
    if (e->subscribers >= limits.max_subscribers) {
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
