/* table.h: the one hash table of runcast. A chained table keyed by bytes
 * (a key may hold NULs: "app\0user\0id"), with intrusive entries: the
 * caller embeds a struct table_entry in its own struct and keeps the key
 * bytes alive while the entry is in the table. The table owns only its
 * bucket array; it doubles when the load passes 2. FNV-1a hashes. */
#ifndef RUNCAST_TABLE_H
#define RUNCAST_TABLE_H

#include <stddef.h>
#include <stdint.h>

struct table_entry {
    struct table_entry *next; /* in its bucket */
    uint64_t hash;
    const char *key;          /* borrowed from the entry's owner */
    size_t key_len;
};

struct table {
    struct table_entry **buckets;
    size_t bucket_count; /* 0 before the first insert, then a power of two */
    size_t count;
};

/* FNV-1a of key[0..len). */
uint64_t table_hash(const char *key, size_t len);
/* An empty table; allocates nothing until the first insert. */
void table_init(struct table *t);
/* Frees the bucket array (not the entries). The table is empty afterwards. */
void table_free(struct table *t);
/* The entry whose key is key[0..len), or NULL. */
struct table_entry *table_find(const struct table *t, const char *key, size_t len);
/* Adds e under key[0..len), which must stay valid while e is in t and must
 * not be in t already. Cannot fail (allocation failure aborts). */
void table_insert(struct table *t, struct table_entry *e, const char *key, size_t len);
/* Removes e, which must be in t. */
void table_remove(struct table *t, struct table_entry *e);

/* Every entry, in no particular order; the loop body must not insert or
 * remove (collect first, then remove). */
#define table_for_each(t, e)                                                         \
    for (size_t table_i_ = 0; table_i_ < (t)->bucket_count; table_i_++)              \
        for (struct table_entry *e = (t)->buckets[table_i_]; e != NULL; e = e->next)

#endif
