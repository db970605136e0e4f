/* table.c: the chained hash table (see table.h). */
#include "table.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"

#define TABLE_FIRST_BUCKETS 64

uint64_t table_hash(const char *key, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)key[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

void table_init(struct table *t)
{
    t->buckets = NULL;
    t->bucket_count = 0;
    t->count = 0;
}

void table_free(struct table *t)
{
    free(t->buckets);
    table_init(t);
}

static size_t bucket_of(const struct table *t, uint64_t hash)
{
    return (size_t)(hash & (t->bucket_count - 1));
}

struct table_entry *table_find(const struct table *t, const char *key, size_t len)
{
    if (t->count == 0)
        return NULL;
    uint64_t hash = table_hash(key, len);
    for (struct table_entry *e = t->buckets[bucket_of(t, hash)]; e != NULL; e = e->next) {
        if (e->hash == hash && e->key_len == len && memcmp(e->key, key, len) == 0)
            return e;
    }
    return NULL;
}

/* Doubles the bucket array (or makes the first one) and rehashes. */
static void table_grow(struct table *t)
{
    size_t n = t->bucket_count ? t->bucket_count * 2 : TABLE_FIRST_BUCKETS;
    struct table_entry **buckets = xcalloc(n, sizeof(*buckets));
    for (size_t i = 0; i < t->bucket_count; i++) {
        struct table_entry *e = t->buckets[i], *next;
        for (; e != NULL; e = next) {
            next = e->next;
            size_t b = (size_t)(e->hash & (n - 1));
            e->next = buckets[b];
            buckets[b] = e;
        }
    }
    free(t->buckets);
    t->buckets = buckets;
    t->bucket_count = n;
}

void table_insert(struct table *t, struct table_entry *e, const char *key, size_t len)
{
    if (t->count + 1 > t->bucket_count * 2)
        table_grow(t);
    e->hash = table_hash(key, len);
    e->key = key;
    e->key_len = len;
    size_t b = bucket_of(t, e->hash);
    e->next = t->buckets[b];
    t->buckets[b] = e;
    t->count++;
}

void table_remove(struct table *t, struct table_entry *e)
{
    struct table_entry **pp = &t->buckets[bucket_of(t, e->hash)];
    while (*pp != e)
        pp = &(*pp)->next;
    *pp = e->next;
    t->count--;
}
