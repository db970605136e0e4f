/* test_util.c: common.h's helpers: str_list_next (the one comma-separated
 * list scanner, used for HTTP token lists and If-None-Match), the
 * console's ETag matching built on it, the number formatters and string
 * copies, and json_text against json_dumps. */
#include "../../src/console.c"

#include <inttypes.h>

#include "../../src/json_text.h"
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

static void copies_are_cut_to_fit(void)
{
    char out[6];
    str_copy(out, sizeof(out), "abc");
    CHECK_STREQ(out, "abc");
    str_copy(out, sizeof(out), "abcdefgh");
    CHECK_STREQ(out, "abcde"); /* as snprintf("%s") cuts */
    str_copy(out, sizeof(out), NULL);
    CHECK_STREQ(out, "");
    str_copyn(out, sizeof(out), "xyz!", 2);
    CHECK_STREQ(out, "xy");
    str_copy(out, 0, "overwrites nothing");
    CHECK_STREQ(out, "xy");
}

/* Checks json_text(v) against json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
 * steals v. */
static void check_text_matches(json_t *v)
{
    char *ours = json_text(v);
    char *theirs = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    CHECK_STREQ(ours, theirs);
    free(ours);
    free(theirs);
    json_decref(v);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* A random value up to depth levels deep: every kind of value, strings
 * with every byte below 0x80 and some multi-byte UTF-8, doubles from
 * random bits (every exponent) and from a few decimal digits. */
static json_t *random_value(int depth)
{
    static const char *const multibyte[] = {"\xc3\xa9", "\xe2\x80\xa8", "\xf0\x9f\x98\x80"};
    switch (rng() % (depth > 0 ? 8 : 6)) {
    case 0: {
        char text[40];
        size_t n = 0, len = rng() % 12;
        for (size_t i = 0; i < len; i++) {
            uint64_t r = rng();
            if (r % 5 == 0) {
                const char *m = multibyte[r % 3];
                memcpy(text + n, m, strlen(m));
                n += strlen(m);
            } else {
                text[n++] = (char)(1 + r % 127);
            }
        }
        return json_stringn(text, n);
    }
    case 1:
        return json_integer((json_int_t)rng() >> (rng() % 64));
    case 2: {
        uint64_t bits = rng();
        double d;
        memcpy(&d, &bits, sizeof(d));
        return json_real(d); /* NULL for NaN and infinities: json_object_set_new skips it */
    }
    case 3:
        return json_real((double)(int64_t)(rng() % 2000001 - 1000000) / 1000.0);
    case 4:
        return json_boolean(rng() % 2);
    case 5:
        return json_null();
    case 6: {
        json_t *a = json_array();
        for (int i = (int)(rng() % 4); i > 0; i--)
            json_array_append_new(a, random_value(depth - 1));
        return a;
    }
    default: {
        json_t *o = json_object();
        for (int i = (int)(rng() % 5); i > 0; i--) {
            char key[8];
            snprintf(key, sizeof(key), "%c%u", (char)(1 + rng() % 127), (unsigned)(rng() % 10));
            json_object_set_new(o, key, random_value(depth - 1));
        }
        return o;
    }
    }
}

static void json_text_writes_what_jansson_writes(void)
{
    check_text_matches(json_pack("{s:s, s:f, s:f}", "run_id", "r0000000100000001", "created_at",
                                 1764860000.1234567, "started_at", 1764860000.0));
    check_text_matches(json_string("\"\\/\b\f\n\r\t\x01\x1f\x7f end"));
    check_text_matches(json_integer(INT64_MIN));
    check_text_matches(json_integer(INT64_MAX));
    check_text_matches(json_integer(0));
    static const double reals[] = {0.0, -0.0, 1.0, -1.5, 0.1, 1e20, 1e21, 1e-5, 1.5e-300, 1e300,
                                   123456789012345680.0, 5e-324, 1.7976931348623157e308};
    for (size_t i = 0; i < sizeof(reals) / sizeof(reals[0]); i++)
        check_text_matches(json_real(reals[i]));
    check_text_matches(json_object());
    check_text_matches(json_array());
    check_text_matches(json_pack("{s:[{s:s},{}], s:{s:n, s:b}}", "parts", "text", "hi",
                                 "meta", "a", "b", 0));
    for (int i = 0; i < 20000; i++) {
        json_t *v = random_value(4);
        if (v != NULL)
            check_text_matches(v);
    }
}

int main(void)
{
    RUN_TEST(numbers_format_like_printf);
    RUN_TEST(list_elements_lose_blanks_and_empty_ones);
    RUN_TEST(empty_and_blank_lists_have_no_element);
    RUN_TEST(quoted_commas_do_not_split);
    RUN_TEST(scan_stops_at_len);
    RUN_TEST(if_none_match_compares_weakly);
    RUN_TEST(copies_are_cut_to_fit);
    RUN_TEST(json_text_writes_what_jansson_writes);
    return test_report("test_util");
}
