/* test.h: a tiny unit-test harness in the spirit of libuv's: checks count,
 * a failing check names its line, and main() ends with "N passed, N failed". */
#ifndef RUNCAST_TEST_H
#define RUNCAST_TEST_H

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static int test_current_failed;
static int tests_passed, tests_failed;

#define CHECK(cond) do { \
    if (!(cond)) { \
        test_current_failed = 1; \
        fprintf(stderr, "  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
    } } while (0)

#define CHECK_EQ(a, b) do { \
    long long check_a_ = (long long)(a), check_b_ = (long long)(b); \
    if (check_a_ != check_b_) { \
        test_current_failed = 1; \
        fprintf(stderr, "  %s:%d: %s == %s failed: %lld != %lld\n", \
                __FILE__, __LINE__, #a, #b, check_a_, check_b_); \
    } } while (0)

#define CHECK_STREQ(a, b) do { \
    const char *check_a_ = (a), *check_b_ = (b); \
    if (check_a_ == NULL || check_b_ == NULL || strcmp(check_a_, check_b_) != 0) { \
        test_current_failed = 1; \
        fprintf(stderr, "  %s:%d: %s == %s failed: \"%s\" != \"%s\"\n", __FILE__, __LINE__, \
                #a, #b, check_a_ ? check_a_ : "(null)", check_b_ ? check_b_ : "(null)"); \
    } } while (0)

/* Compares a counted string with a C string. */
#define CHECK_MEMEQ(ptr, len, cstr) do { \
    const char *check_p_ = (const char *)(ptr), *check_s_ = (cstr); \
    size_t check_l_ = (size_t)(len); \
    if (check_p_ == NULL || check_l_ != strlen(check_s_) || memcmp(check_p_, check_s_, check_l_) != 0) { \
        test_current_failed = 1; \
        fprintf(stderr, "  %s:%d: %s == \"%s\" failed: got \"%.*s\"\n", __FILE__, __LINE__, \
                #ptr, check_s_, check_p_ ? (int)check_l_ : 6, check_p_ ? check_p_ : "(null)"); \
    } } while (0)

#define RUN_TEST(fn) do { \
    test_current_failed = 0; \
    fn(); \
    if (test_current_failed) { tests_failed++; fprintf(stderr, "FAIL %s\n", #fn); } \
    else { tests_passed++; fprintf(stderr, "ok   %s\n", #fn); } \
    } while (0)

static inline int test_report(const char *suite)
{
    printf("%s: %d passed, %d failed\n", suite, tests_passed, tests_failed);
    return tests_failed ? 1 : 0;
}

#endif
