/* test_table.c: the hash table: find, insert, remove, growth, keys with NULs. */
#include "table.h"

#include <stdio.h>
#include <string.h>

#include "test.h"

struct item {
    struct table_entry entry;
    char key[32];
    size_t len;
};

static void finds_what_was_inserted_and_nothing_else(void)
{
    struct table t;
    table_init(&t);
    CHECK(table_find(&t, "a", 1) == NULL);
    static struct item items[1000];
    for (int i = 0; i < 1000; i++) {
        /* keys with NULs inside, as session keys are */
        items[i].len = (size_t)snprintf(items[i].key, sizeof(items[i].key), "app%c%d%cs", 0, i, 0);
        table_insert(&t, &items[i].entry, items[i].key, items[i].len);
    }
    CHECK_EQ(t.count, 1000);
    CHECK(t.bucket_count >= 512); /* grew: load at most 2 */
    for (int i = 0; i < 1000; i++)
        CHECK(table_find(&t, items[i].key, items[i].len) == &items[i].entry);
    CHECK(table_find(&t, "app", 3) == NULL);
    CHECK(table_find(&t, items[5].key, items[5].len - 1) == NULL); /* a prefix is another key */
    size_t seen = 0;
    table_for_each(&t, e) seen++;
    CHECK_EQ(seen, 1000);
    for (int i = 0; i < 1000; i += 2)
        table_remove(&t, &items[i].entry);
    CHECK_EQ(t.count, 500);
    for (int i = 0; i < 1000; i++)
        CHECK((table_find(&t, items[i].key, items[i].len) != NULL) == (i % 2 == 1));
    table_free(&t);
    CHECK_EQ(t.count, 0);
    CHECK(table_find(&t, items[1].key, items[1].len) == NULL);
}

int main(void)
{
    RUN_TEST(finds_what_was_inserted_and_nothing_else);
    return test_report("test_table");
}
