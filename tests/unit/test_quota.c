/* test_quota.c: per-user caps: runs (counted even over the cap), streams and
 * sessions (refused at the cap, nothing counted), each user on its own, and
 * a user's entry freed as soon as all of its counts are back to 0. */
#include "quota.h"

#include <stdio.h>

#include "test.h"

static void runs_over_the_cap_fail_but_are_counted(void)
{
    quota_init(2, 0, 0);
    CHECK_EQ(quota_run_begin("alice"), 0);
    CHECK_EQ(quota_run_begin("alice"), 0);
    CHECK_EQ(quota_run_begin("alice"), -EDQUOT); /* counted all the same */
    CHECK_EQ(quota_run_begin("alice"), -EDQUOT);
    CHECK_EQ(quota_user_count(), 1);
    quota_run_end("alice");
    quota_run_end("alice");
    CHECK_EQ(quota_run_begin("alice"), -EDQUOT); /* 3 again: still over */
    quota_run_end("alice");
    quota_run_end("alice");
    CHECK_EQ(quota_user_count(), 1); /* one run left */
    CHECK_EQ(quota_run_begin("alice"), 0); /* 2 */
    quota_run_end("alice");
    quota_run_end("alice");
    CHECK_EQ(quota_user_count(), 0);
    quota_run_end("alice"); /* one end too many: ignored */
    quota_run_end("nobody");
    CHECK_EQ(quota_user_count(), 0);
    CHECK_EQ(quota_run_begin("alice"), 0);
    CHECK_EQ(quota_run_begin("alice"), 0);
    CHECK_EQ(quota_run_begin("alice"), -EDQUOT); /* the extra end did not raise the cap */
    quota_shutdown();
    CHECK_EQ(quota_user_count(), 0);
}

static void streams_at_the_cap_are_refused_and_not_counted(void)
{
    quota_init(0, 2, 0);
    void *a = NULL, *b = NULL, *c = (void *)1;
    CHECK_EQ(quota_subscriber_begin("alice", &a), 0);
    CHECK_EQ(quota_subscriber_begin("alice", &b), 0);
    CHECK(a != NULL && b != NULL);
    CHECK_EQ(quota_subscriber_begin("alice", &c), -EDQUOT);
    CHECK(c == NULL);
    quota_subscriber_end(c); /* NULL: nothing was counted */
    CHECK_EQ(quota_user_count(), 1);
    quota_subscriber_end(a);
    CHECK_EQ(quota_subscriber_begin("alice", &c), 0); /* one left: room again */
    CHECK(c != NULL);
    quota_subscriber_end(b);
    quota_subscriber_end(c);
    CHECK_EQ(quota_user_count(), 0);
    quota_shutdown();
}

static void sessions_at_the_cap_are_refused_and_not_counted(void)
{
    quota_init(0, 0, 3);
    for (int i = 0; i < 3; i++)
        CHECK_EQ(quota_session_begin("alice"), 0);
    CHECK_EQ(quota_session_begin("alice"), -EDQUOT);
    CHECK_EQ(quota_session_begin("alice"), -EDQUOT);
    CHECK_EQ(quota_user_count(), 1);
    quota_session_end("alice");
    CHECK_EQ(quota_session_begin("alice"), 0); /* the refusals counted nothing */
    CHECK_EQ(quota_session_begin("alice"), -EDQUOT);
    for (int i = 0; i < 3; i++)
        quota_session_end("alice");
    CHECK_EQ(quota_user_count(), 0);
    quota_session_end("alice"); /* one end too many: ignored */
    CHECK_EQ(quota_user_count(), 0);
    quota_shutdown();
}

static void each_user_has_its_own_counts(void)
{
    quota_init(1, 1, 1);
    void *alice_stream, *bob_stream, *refused;
    CHECK_EQ(quota_run_begin("alice"), 0);
    CHECK_EQ(quota_subscriber_begin("alice", &alice_stream), 0);
    CHECK_EQ(quota_session_begin("alice"), 0);
    CHECK_EQ(quota_run_begin("bob"), 0);
    CHECK_EQ(quota_subscriber_begin("bob", &bob_stream), 0);
    CHECK_EQ(quota_session_begin("bob"), 0);
    CHECK(alice_stream != bob_stream);
    CHECK_EQ(quota_user_count(), 2);
    CHECK_EQ(quota_subscriber_begin("alice", &refused), -EDQUOT);
    CHECK_EQ(quota_session_begin("bob"), -EDQUOT);
    /* names differ by case or by a prefix: other users */
    CHECK_EQ(quota_session_begin("Alice"), 0);
    CHECK_EQ(quota_session_begin("alic"), 0);
    CHECK_EQ(quota_user_count(), 4);
    quota_session_end("Alice");
    quota_session_end("alic");
    quota_run_end("alice");
    quota_subscriber_end(alice_stream);
    quota_session_end("alice");
    CHECK_EQ(quota_user_count(), 1); /* bob only */
    quota_run_end("bob");
    quota_subscriber_end(bob_stream);
    quota_session_end("bob");
    CHECK_EQ(quota_user_count(), 0);
    quota_shutdown();
}

/* The entry lives while any of its three counts is above 0. */
static void entry_is_freed_only_when_every_count_is_zero(void)
{
    quota_init(5, 5, 5);
    void *stream;
    CHECK_EQ(quota_run_begin("carol"), 0);
    CHECK_EQ(quota_subscriber_begin("carol", &stream), 0);
    CHECK_EQ(quota_session_begin("carol"), 0);
    CHECK_EQ(quota_user_count(), 1);
    quota_run_end("carol");
    CHECK_EQ(quota_user_count(), 1);
    quota_session_end("carol");
    CHECK_EQ(quota_user_count(), 1);
    quota_subscriber_end(stream);
    CHECK_EQ(quota_user_count(), 0);
    /* counted again from nothing: a fresh entry */
    CHECK_EQ(quota_session_begin("carol"), 0);
    CHECK_EQ(quota_user_count(), 1);
    quota_session_end("carol");
    CHECK_EQ(quota_user_count(), 0);
    quota_shutdown();
}

static void a_zero_cap_counts_nothing(void)
{
    quota_init(0, 0, 0);
    void *stream = (void *)1;
    for (int i = 0; i < 100; i++) {
        CHECK_EQ(quota_run_begin("dave"), 0);
        CHECK_EQ(quota_session_begin("dave"), 0);
    }
    CHECK_EQ(quota_subscriber_begin("dave", &stream), 0);
    CHECK(stream == NULL);
    CHECK_EQ(quota_user_count(), 0);
    quota_run_end("dave");
    quota_session_end("dave");
    quota_subscriber_end(stream);
    CHECK_EQ(quota_user_count(), 0);
    quota_shutdown();
}

#define MANY_USERS 5000

static void many_users_are_counted_exactly(void)
{
    quota_init(1, 2, 1);
    static void *streams[MANY_USERS];
    char name[32];
    for (int i = 0; i < MANY_USERS; i++) {
        snprintf(name, sizeof(name), "user-%d", i);
        CHECK_EQ(quota_run_begin(name), 0);
        CHECK_EQ(quota_subscriber_begin(name, &streams[i]), 0);
        CHECK_EQ(quota_session_begin(name), 0);
    }
    CHECK_EQ(quota_user_count(), MANY_USERS);
    int refused_sessions = 0, over_runs = 0;
    for (int i = 0; i < MANY_USERS; i++) {
        snprintf(name, sizeof(name), "user-%d", i);
        refused_sessions += quota_session_begin(name) == -EDQUOT;
        if (i % 2 == 0)
            over_runs += quota_run_begin(name) == -EDQUOT;
    }
    CHECK_EQ(refused_sessions, MANY_USERS);
    CHECK_EQ(over_runs, MANY_USERS / 2);
    for (int i = 0; i < MANY_USERS; i++) {
        snprintf(name, sizeof(name), "user-%d", i);
        quota_run_end(name);
        if (i % 2 == 0)
            quota_run_end(name);
        quota_session_end(name);
    }
    CHECK_EQ(quota_user_count(), MANY_USERS); /* every stream is still open */
    for (int i = 0; i < MANY_USERS; i += 2)
        quota_subscriber_end(streams[i]);
    CHECK_EQ(quota_user_count(), MANY_USERS / 2);
    for (int i = 1; i < MANY_USERS; i += 2)
        quota_subscriber_end(streams[i]);
    CHECK_EQ(quota_user_count(), 0);
    quota_shutdown();
}

/* quota_shutdown frees entries still counted (LeakSanitizer checks) and
 * lifts the caps. */
static void shutdown_frees_what_is_still_counted(void)
{
    quota_init(1, 1, 1);
    void *stream;
    char name[32];
    for (int i = 0; i < 100; i++) {
        snprintf(name, sizeof(name), "left-%d", i);
        CHECK_EQ(quota_run_begin(name), 0);
        CHECK_EQ(quota_subscriber_begin(name, &stream), 0);
    }
    CHECK_EQ(quota_user_count(), 100);
    quota_shutdown();
    CHECK_EQ(quota_user_count(), 0);
    /* no caps after shutdown: nothing counted, nothing refused */
    CHECK_EQ(quota_run_begin("left-0"), 0);
    CHECK_EQ(quota_run_begin("left-0"), 0);
    CHECK_EQ(quota_session_begin("left-0"), 0);
    CHECK_EQ(quota_user_count(), 0);
    /* quota_init forgets every count too */
    quota_init(1, 0, 0);
    CHECK_EQ(quota_run_begin("erin"), 0);
    quota_init(1, 0, 0);
    CHECK_EQ(quota_user_count(), 0);
    CHECK_EQ(quota_run_begin("erin"), 0);
    quota_shutdown();
}

int main(void)
{
    RUN_TEST(runs_over_the_cap_fail_but_are_counted);
    RUN_TEST(streams_at_the_cap_are_refused_and_not_counted);
    RUN_TEST(sessions_at_the_cap_are_refused_and_not_counted);
    RUN_TEST(each_user_has_its_own_counts);
    RUN_TEST(entry_is_freed_only_when_every_count_is_zero);
    RUN_TEST(a_zero_cap_counts_nothing);
    RUN_TEST(many_users_are_counted_exactly);
    RUN_TEST(shutdown_frees_what_is_still_counted);
    return test_report("test_quota");
}
