/* test_util.c: common.h's helpers: str_list_next (the one comma-separated
 * list scanner, used for HTTP token lists and If-None-Match), the
 * console's ETag matching built on it, and the number formatters. */
#include "../../src/console.c"

#include <inttypes.h>

#include "../../src/store.h"

#include "test.h"

/* Collects every element of list, joined with '|', into out. Returns the
 * number of elements. */
static int collect(const char *list, char *out, size_t out_size)
{
    const char *item;
    size_t item_len, pos = 0, used = 0;
    int n = 0;
    out[0] = '\0';
    while (str_list_next(list, strlen(list), &pos, &item, &item_len)) {
        used += (size_t)snprintf(out + used, out_size - used, "%s%.*s", n ? "|" : "",
                                 (int)item_len, item);
        n++;
    }
    CHECK_EQ(pos, strlen(list)); /* the cursor ends at the end */
    return n;
}

static void numbers_format_like_printf(void)
{
    static const uint64_t values[] = {0, 7, 9, 10, 99, 100, 4294967295u, 18446744073709551615u};
    char got[32], want[32];
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        got[fmt_u64(got, values[i])] = '\0';
        snprintf(want, sizeof(want), "%" PRIu64, values[i]);
        CHECK_STREQ(got, want);
        CHECK_EQ(fmt_hex32(got, (uint32_t)values[i]), 8);
        got[8] = '\0';
        snprintf(want, sizeof(want), "%08" PRIx32, (uint32_t)values[i]);
        CHECK_STREQ(got, want);
    }
    char id[STORE_ID_MAX];
    store_format_id(id, sizeof(id), 0xdeadbeef, 18446744073709551615u);
    CHECK_STREQ(id, "deadbeef-18446744073709551615");
    store_format_id(id, sizeof(id), 0, 0);
    CHECK_STREQ(id, "00000000-0");
    char small[12];
    store_format_id(small, sizeof(small), 1, 123456);
    CHECK_STREQ(small, "00000001-12"); /* cut, as snprintf cuts */
}

static void list_elements_lose_blanks_and_empty_ones(void)
{
    char out[256];
    CHECK_EQ(collect("close", out, sizeof(out)), 1);
    CHECK_STREQ(out, "close");
    CHECK_EQ(collect("a,b,c", out, sizeof(out)), 3);
    CHECK_STREQ(out, "a|b|c");
    CHECK_EQ(collect("  keep-alive ,\tUpgrade\t", out, sizeof(out)), 2);
    CHECK_STREQ(out, "keep-alive|Upgrade");
    CHECK_EQ(collect(",,a,, ,\t,b,", out, sizeof(out)), 2);
    CHECK_STREQ(out, "a|b");
    CHECK_EQ(collect("a b , c\td", out, sizeof(out)), 2); /* inner blanks stay */
    CHECK_STREQ(out, "a b|c\td");
}

static void empty_and_blank_lists_have_no_element(void)
{
    char out[64];
    CHECK_EQ(collect("", out, sizeof(out)), 0);
    CHECK_EQ(collect(" ", out, sizeof(out)), 0);
    CHECK_EQ(collect(",", out, sizeof(out)), 0);
    CHECK_EQ(collect(" ,\t, ", out, sizeof(out)), 0);
    CHECK_STREQ(out, "");
}

static void quoted_commas_do_not_split(void)
{
    char out[256];
    CHECK_EQ(collect("\"a,b\", \"c\"", out, sizeof(out)), 2);
    CHECK_STREQ(out, "\"a,b\"|\"c\"");
    CHECK_EQ(collect("W/\"x,y\" ,W/\"z\"", out, sizeof(out)), 2);
    CHECK_STREQ(out, "W/\"x,y\"|W/\"z\"");
    CHECK_EQ(collect("\"a\\\",b\",c", out, sizeof(out)), 2); /* an escaped quote */
    CHECK_STREQ(out, "\"a\\\",b\"|c");
    CHECK_EQ(collect("x;q=\"1,2\",y", out, sizeof(out)), 2);
    CHECK_STREQ(out, "x;q=\"1,2\"|y");
    CHECK_EQ(collect("\"open, to the end ", out, sizeof(out)), 1); /* unterminated */
    CHECK_STREQ(out, "\"open, to the end");
}

/* The list's length bounds the scan: bytes past len are never read. */
static void scan_stops_at_len(void)
{
    const char *list = "a,b,c";
    const char *item;
    size_t item_len, pos = 0;
    CHECK_EQ(str_list_next(list, 3, &pos, &item, &item_len), 1);
    CHECK_MEMEQ(item, item_len, "a");
    CHECK_EQ(str_list_next(list, 3, &pos, &item, &item_len), 1);
    CHECK_MEMEQ(item, item_len, "b");
    CHECK_EQ(pos, 3);
    CHECK_EQ(str_list_next(list, 3, &pos, &item, &item_len), 0);
    CHECK_EQ(str_list_next(list, 3, &pos, &item, &item_len), 0);
}

static void if_none_match_compares_weakly(void)
{
    const char *etag = "\"abc123\"";
    CHECK_EQ(etag_listed("\"abc123\"", 8, etag), 1);
    CHECK_EQ(etag_listed("W/\"abc123\"", 10, etag), 1);
    CHECK_EQ(etag_listed("*", 1, etag), 1);
    CHECK_EQ(etag_listed(" \t*\t ", 5, etag), 1);
    const char *list = "\"x\", W/\"y,z\" ,\t\"abc123\"\t";
    CHECK_EQ(etag_listed(list, strlen(list), etag), 1);
    CHECK_EQ(etag_listed("\"abc1234\"", 9, etag), 0);
    CHECK_EQ(etag_listed("abc123", 6, etag), 0);      /* unquoted is another tag */
    CHECK_EQ(etag_listed("W/", 2, etag), 0);
    CHECK_EQ(etag_listed("\"*\"", 3, etag), 0);
    CHECK_EQ(etag_listed("", 0, etag), 0);
    CHECK_EQ(etag_listed(" , ,", 4, etag), 0);
    /* a comma inside another tag does not make "abc123" appear */
    list = "\"q,\"abc123\"\"";
    CHECK_EQ(etag_listed(list, strlen(list), etag), 0);
}

int main(void)
{
    RUN_TEST(numbers_format_like_printf);
    RUN_TEST(list_elements_lose_blanks_and_empty_ones);
    RUN_TEST(empty_and_blank_lists_have_no_element);
    RUN_TEST(quoted_commas_do_not_split);
    RUN_TEST(scan_stops_at_len);
    RUN_TEST(if_none_match_compares_weakly);
    return test_report("test_util");
}
