/* test_demo.c: the demo agent's pure parts: the `!` directive parser (the
 * table in docs/DEMO.md), the session table and the !status=CODExN count.
 * The HTTP side is covered by tests/integration against the real binary. */
#include "demo/demo_internal.h"

#include <stdlib.h>

#include "test.h"

/* Parses text into *dir and returns the plain words (caller frees). */
static char *parse(const char *text, struct demo_directives *dir, uint64_t *words)
{
    struct buf out = {0};
    demo_directives_init(dir);
    *words = demo_directives_parse(text, dir, &out);
    char *s = xstrndup(out.data ? out.data : "", out.len);
    buf_free(&out);
    return s;
}

static void plain_words_are_joined_with_single_spaces(void)
{
    struct demo_directives dir;
    uint64_t n;
    char *w = parse("  hello \t there\n\r\v\f world  ", &dir, &n);
    CHECK_STREQ(w, "hello there world");
    CHECK_EQ(n, 3);
    free(w);
    w = parse("", &dir, &n);
    CHECK_STREQ(w, "");
    CHECK_EQ(n, 0);
    free(w);
    w = parse(" \t ", &dir, &n);
    CHECK_STREQ(w, "");
    CHECK_EQ(n, 0);
    free(w);
    /* a '!' inside a word is text; only a leading one makes a directive */
    w = parse("wow! a!b", &dir, &n);
    CHECK_STREQ(w, "wow! a!b");
    CHECK_EQ(n, 2);
    free(w);
    demo_directives_free(&dir);
}

static void a_message_without_directives_has_the_defaults(void)
{
    struct demo_directives dir;
    uint64_t n;
    char *w = parse("hello", &dir, &n);
    CHECK_EQ(dir.has_word_delay, 0);
    CHECK_EQ(dir.delay_ms, 0);
    CHECK_EQ(dir.first_ms, 0);
    CHECK_EQ(dir.has_events, 0);
    CHECK_EQ(dir.bytes, 16);
    CHECK(dir.rate == 0);
    CHECK_EQ(dir.hang, 0);
    CHECK_EQ(dir.status, 0);
    CHECK_EQ(dir.status_calls, 0);
    CHECK_STREQ(dir.retry_after, "");
    CHECK(dir.error == NULL);
    CHECK_EQ(dir.malformed, 0);
    CHECK_EQ(dir.cut_after, -1);
    CHECK_STREQ(dir.ctype, "");
    CHECK_EQ(dir.forget, 0);
    CHECK_STREQ(dir.tool, "");
    CHECK_STREQ(dir.state_key, "");
    CHECK_EQ(dir.think, 0);
    free(w);
    demo_directives_free(&dir);
}

static void directives_are_removed_from_the_echo_and_applied(void)
{
    struct demo_directives dir;
    uint64_t n;
    char *w = parse("!word-delay=200ms hi !delay=2s !first=0.2 there !events=5 !bytes=100 "
                    "!rate=2.5 !hang !status=503x2 !retry-after=7 !error=boom !malformed "
                    "!cut=3 !ctype=text/plain !forget you !tool=get_weather-2 !state=note !think",
                    &dir, &n);
    CHECK_STREQ(w, "hi there you");
    CHECK_EQ(n, 3);
    CHECK_EQ(dir.has_word_delay, 1);
    CHECK_EQ(dir.word_delay_ms, 200);
    CHECK_EQ(dir.delay_ms, 2000);
    CHECK_EQ(dir.first_ms, 200);
    CHECK_EQ(dir.has_events, 1);
    CHECK_EQ(dir.events, 5);
    CHECK_EQ(dir.bytes, 100);
    CHECK(dir.rate == 2.5);
    CHECK_EQ(dir.hang, 1);
    CHECK_EQ(dir.status, 503);
    CHECK_EQ(dir.status_calls, 2);
    CHECK_STREQ(dir.retry_after, "7");
    CHECK_STREQ(dir.error, "boom");
    CHECK_EQ(dir.malformed, 1);
    CHECK_EQ(dir.cut_after, 3);
    CHECK_STREQ(dir.ctype, "text/plain");
    CHECK_EQ(dir.forget, 1);
    CHECK_STREQ(dir.tool, "get_weather-2");
    CHECK_STREQ(dir.state_key, "note");
    CHECK_EQ(dir.think, 1);
    free(w);
    demo_directives_free(&dir);
    CHECK(dir.error == NULL);
}

static void cut_alone_is_after_one_frame_and_cut_0_after_the_head(void)
{
    struct demo_directives dir;
    uint64_t n;
    char *w = parse("!cut", &dir, &n);
    CHECK_EQ(dir.cut_after, 1);
    CHECK_STREQ(w, "");
    CHECK_EQ(n, 0);
    free(w);
    w = parse("!cut=0", &dir, &n);
    CHECK_EQ(dir.cut_after, 0);
    free(w);
}

static void status_takes_200_to_599_with_an_optional_count(void)
{
    static const struct {
        const char *text;
        int status;
        uint64_t calls;
    } cases[] = {
        {"!status=200", 200, 0},   {"!status=599", 599, 0},   {"!status=429x1", 429, 1},
        {"!status=199", 0, 0},     {"!status=600", 0, 0},     {"!status=503x0", 0, 0},
        {"!status=503x", 0, 0},    {"!status=x2", 0, 0},      {"!status=abc", 0, 0},
        {"!status=", 0, 0},        {"!status=+503", 0, 0},    {"!status=503x2x3", 0, 0},
    };
    for (size_t i = 0; i < RC_ARRAY_SIZE(cases); i++) {
        struct demo_directives dir;
        uint64_t n;
        char *w = parse(cases[i].text, &dir, &n);
        CHECK_EQ(dir.status, cases[i].status);
        CHECK_EQ(dir.status_calls, cases[i].calls);
        CHECK_STREQ(w, "");
        if (dir.status != cases[i].status)
            fprintf(stderr, "  case %s\n", cases[i].text);
        free(w);
    }
}

static void bad_values_and_unknown_names_are_dropped_and_ignored(void)
{
    struct demo_directives dir;
    uint64_t n;
    char *w = parse("a !word-delay=fast !delay=-1 !first=2x !events=-1 !events=1e3 !bytes= "
                    "!rate=0 !rate=-1 !rate=inf !rate=nan !rate=2/s !cut=x !cut=-1 "
                    "!hang=1 !forget=yes !malformed=1 !retry-after !error !ctype "
                    "!tool !tool= !state !state= !think=1 !nope !nope=1 ! != b",
                    &dir, &n);
    CHECK_STREQ(w, "a b");
    CHECK_EQ(n, 2);
    CHECK_EQ(dir.has_word_delay, 0);
    CHECK_EQ(dir.delay_ms, 0);
    CHECK_EQ(dir.first_ms, 0);
    CHECK_EQ(dir.has_events, 0);
    CHECK_EQ(dir.bytes, 16);
    CHECK(dir.rate == 0);
    CHECK_EQ(dir.cut_after, -1);
    CHECK_EQ(dir.hang, 0);
    CHECK_EQ(dir.forget, 0);
    CHECK_EQ(dir.malformed, 0);
    CHECK_STREQ(dir.retry_after, "");
    CHECK(dir.error == NULL);
    CHECK_STREQ(dir.ctype, "");
    CHECK_STREQ(dir.tool, "");
    CHECK_STREQ(dir.state_key, "");
    CHECK_EQ(dir.think, 0);
    free(w);
    demo_directives_free(&dir);
}

/* !tool and !state take 1 to 64 of [A-Za-z0-9_-]; anything else leaves
 * the directive unset. */
static void tool_and_state_names_are_1_to_64_letters_digits_underscores_dashes(void)
{
    static const char *bad[] = {"a.b", "a/b", "a:b", "\xc3\xa9t\xc3\xa9", "a=b", "{x}", "a!"};
    struct demo_directives dir;
    uint64_t n;
    char text[200];
    for (size_t i = 0; i < RC_ARRAY_SIZE(bad); i++) {
        snprintf(text, sizeof(text), "!tool=%s !state=%s", bad[i], bad[i]);
        char *w = parse(text, &dir, &n);
        CHECK_STREQ(dir.tool, "");
        CHECK_STREQ(dir.state_key, "");
        CHECK_STREQ(w, "");
        free(w);
    }
    char name[80];
    memset(name, 'a', 65); /* one more than fits */
    name[65] = '\0';
    snprintf(text, sizeof(text), "!tool=%s !state=%s", name, name);
    char *w = parse(text, &dir, &n);
    CHECK_STREQ(dir.tool, "");
    CHECK_STREQ(dir.state_key, "");
    free(w);
    name[64] = '\0'; /* exactly 64 */
    snprintf(text, sizeof(text), "!tool=%s !state=%s", name, name);
    w = parse(text, &dir, &n);
    CHECK_EQ(strlen(dir.tool), 64);
    CHECK_EQ(strlen(dir.state_key), 64);
    free(w);
    w = parse("!tool=AZaz09_- !state=x", &dir, &n);
    CHECK_STREQ(dir.tool, "AZaz09_-");
    CHECK_STREQ(dir.state_key, "x");
    free(w);
}

static void bytes_is_capped_at_16_mib(void)
{
    struct demo_directives dir;
    uint64_t n;
    char *w = parse("!bytes=99999999999", &dir, &n);
    CHECK_EQ(dir.bytes, 16u << 20);
    free(w);
    w = parse("!bytes=0", &dir, &n);
    CHECK_EQ(dir.bytes, 0);
    free(w);
    w = parse("!bytes=99999999999999999999", &dir, &n); /* 20 digits: not a number */
    CHECK_EQ(dir.bytes, 16);
    free(w);
}

static void header_values_must_be_printable_ascii_that_fits(void)
{
    struct demo_directives dir;
    uint64_t n;
    char *w = parse("!retry-after=\xc3\xa9t\xc3\xa9 !ctype=\x01x", &dir, &n);
    CHECK_STREQ(dir.retry_after, "");
    CHECK_STREQ(dir.ctype, "");
    free(w);
    char text[400] = "!ctype=";
    memset(text + 7, 'a', 256); /* one more than fits */
    w = parse(text, &dir, &n);
    CHECK_STREQ(dir.ctype, "");
    free(w);
    text[7 + 255] = '\0'; /* exactly 255 */
    w = parse(text, &dir, &n);
    CHECK_EQ(strlen(dir.ctype), 255);
    free(w);
    w = parse("!retry-after=Wed,21-Oct-2015", &dir, &n);
    CHECK_STREQ(dir.retry_after, "Wed,21-Oct-2015");
    free(w);
}

static void the_last_of_a_repeated_directive_wins(void)
{
    struct demo_directives dir;
    uint64_t n;
    char *w = parse("!error=first !error=second !status=503x2 !status=500 !delay=1s !delay=bad",
                    &dir, &n);
    CHECK_STREQ(dir.error, "second"); /* the first one is freed, not leaked */
    CHECK_EQ(dir.status, 500);
    CHECK_EQ(dir.status_calls, 0);
    CHECK_EQ(dir.delay_ms, 1000); /* a bad value leaves the earlier one */
    free(w);
    demo_directives_free(&dir);
}

/* ---- sessions ---------------------------------------------------------- */

static void sessions_are_keyed_by_app_user_and_id(void)
{
    struct demo_sessions t;
    demo_sessions_init(&t);
    struct demo_session *s = demo_session_add(&t, "app", "alice", "s1");
    CHECK_STREQ(s->app, "app");
    CHECK_STREQ(s->user, "alice");
    CHECK_STREQ(s->id, "s1");
    CHECK(demo_session_find(&t, "app", "alice", "s1") == s);
    CHECK(demo_session_find(&t, "app", "bob", "s1") == NULL);
    CHECK(demo_session_find(&t, "ap", "palice", "s1") == NULL); /* the NULs separate */
    CHECK(demo_session_find(&t, "app", "alice", "s") == NULL);
    struct demo_session *other = demo_session_add(&t, "app", "bob", "s1");
    CHECK(other != s);
    CHECK_EQ(t.table.count, 2);
    demo_session_remove(&t, s);
    CHECK(demo_session_find(&t, "app", "alice", "s1") == NULL);
    CHECK(demo_session_find(&t, "app", "bob", "s1") == other);
    CHECK_EQ(t.table.count, 1);
    demo_sessions_free(&t);
    CHECK_EQ(t.table.count, 0);
}

static void the_oldest_session_is_forgotten_beyond_the_cap(void)
{
    struct demo_sessions t;
    demo_sessions_init(&t);
    char id[32];
    for (int i = 0; i < DEMO_MAX_SESSIONS + 2; i++) {
        snprintf(id, sizeof(id), "s%d", i);
        demo_session_add(&t, "a", "u", id);
    }
    CHECK_EQ(t.table.count, DEMO_MAX_SESSIONS);
    CHECK(demo_session_find(&t, "a", "u", "s0") == NULL);
    CHECK(demo_session_find(&t, "a", "u", "s1") == NULL);
    CHECK(demo_session_find(&t, "a", "u", "s2") != NULL);
    snprintf(id, sizeof(id), "s%d", DEMO_MAX_SESSIONS + 1);
    CHECK(demo_session_find(&t, "a", "u", id) != NULL);
    demo_sessions_free(&t);
}

/* !status=503x2: the first 2 calls in a row with this message are refused,
 * the third runs, and the count starts over. */
static void status_count_refuses_n_calls_in_a_row_then_starts_over(void)
{
    struct demo_sessions t;
    demo_sessions_init(&t);
    struct demo_session *s = demo_session_add(&t, "a", "u", "s");
    const char *m = "hi !status=503x2";
    CHECK_EQ(demo_session_status_turn(s, m, 2), 1);
    CHECK_EQ(demo_session_status_turn(s, m, 2), 1);
    CHECK_EQ(demo_session_status_turn(s, m, 2), 0);
    CHECK_EQ(demo_session_status_turn(s, m, 2), 1); /* sent again: a new row */
    /* a different message starts a new row */
    CHECK_EQ(demo_session_status_turn(s, "other !status=503x2", 2), 1);
    CHECK_EQ(demo_session_status_turn(s, m, 2), 1);
    CHECK_EQ(demo_session_status_turn(s, m, 2), 1);
    /* a call without CODExN ends the row */
    CHECK_EQ(demo_session_status_turn(s, "plain", 0), 0);
    CHECK_EQ(demo_session_status_turn(s, m, 2), 1);
    CHECK_EQ(demo_session_status_turn(s, m, 2), 1);
    CHECK_EQ(demo_session_status_turn(s, m, 2), 0);
    demo_sessions_free(&t);
}

int main(void)
{
    RUN_TEST(plain_words_are_joined_with_single_spaces);
    RUN_TEST(a_message_without_directives_has_the_defaults);
    RUN_TEST(directives_are_removed_from_the_echo_and_applied);
    RUN_TEST(cut_alone_is_after_one_frame_and_cut_0_after_the_head);
    RUN_TEST(status_takes_200_to_599_with_an_optional_count);
    RUN_TEST(bad_values_and_unknown_names_are_dropped_and_ignored);
    RUN_TEST(tool_and_state_names_are_1_to_64_letters_digits_underscores_dashes);
    RUN_TEST(bytes_is_capped_at_16_mib);
    RUN_TEST(header_values_must_be_printable_ascii_that_fits);
    RUN_TEST(the_last_of_a_repeated_directive_wins);
    RUN_TEST(sessions_are_keyed_by_app_user_and_id);
    RUN_TEST(the_oldest_session_is_forgotten_beyond_the_cap);
    RUN_TEST(status_count_refuses_n_calls_in_a_row_then_starts_over);
    return test_report("test_demo");
}
