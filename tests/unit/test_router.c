/* Unit tests for router.c: route table, parameters, methods. */
#include "../../src/router.c"

#include "test.h"

static int match(const char *path, struct route_params *p)
{
    return router_match(path, strlen(path), p);
}

static void session_routes_capture_their_parameters(void)
{
    struct route_params p;
    CHECK_EQ(match("/apps/a1/users/u.2/sessions/s-3_x/run", &p), ROUTE_SESSION_RUN);
    CHECK_STREQ(p.app, "a1");
    CHECK_STREQ(p.user, "u.2");
    CHECK_STREQ(p.session, "s-3_x");
    CHECK_EQ(match("/apps/a/users/u/sessions/s/task-status", &p), ROUTE_SESSION_STATUS);
    CHECK_EQ(match("/apps/a/users/u/sessions/s", &p), ROUTE_SESSION);
    CHECK_STREQ(p.session, "s");
}

static void fixed_routes_match_exactly(void)
{
    struct route_params p;
    CHECK_EQ(match("/task-status", &p), ROUTE_ALL_STATUS);
    CHECK_EQ(match("/metrics", &p), ROUTE_METRICS);
    CHECK_EQ(match("/healthz", &p), ROUTE_HEALTHZ);
    CHECK_EQ(match("/readyz", &p), ROUTE_READYZ);
    CHECK_EQ(match("/", &p), ROUTE_CONSOLE);
}

static void unknown_paths_are_not_found(void)
{
    struct route_params p;
    CHECK_EQ(match("/healthz/", &p), ROUTE_NONE);
    CHECK_EQ(match("/nope", &p), ROUTE_NONE);
    CHECK_EQ(match("/apps/a/users/u/sessions/s/other", &p), ROUTE_NONE);
    CHECK_EQ(match("/apps/a/users/u/sessions/s/run/x", &p), ROUTE_NONE);
    CHECK_EQ(match("/apps/a/users/u/sessions", &p), ROUTE_NONE);
    CHECK_EQ(match("/apps/a/users/u", &p), ROUTE_NONE);
    CHECK_EQ(match("", &p), ROUTE_NONE);
    CHECK_EQ(match("healthz", &p), ROUTE_NONE);
}

static void bad_parameters_are_invalid(void)
{
    struct route_params p;
    char longp[200];
    CHECK_EQ(match("/apps/b$d/users/u/sessions/s/run", &p), -EINVAL);
    CHECK_EQ(match("/apps/a/users/u%20/sessions/s/run", &p), -EINVAL);
    CHECK_EQ(match("/apps//users/u/sessions/s/run", &p), -EINVAL);
    CHECK_EQ(match("/apps/a/users/u/sessions/s s", &p), -EINVAL);
    memset(longp, 0, sizeof(longp));
    strcpy(longp, "/apps/a/users/u/sessions/");
    size_t n = strlen(longp);
    memset(longp + n, 'x', 129);
    CHECK_EQ(match(longp, &p), -EINVAL);
    longp[n + 128] = '\0'; /* exactly 128 characters is fine */
    CHECK_EQ(match(longp, &p), ROUTE_SESSION);
    CHECK_EQ(strlen(p.session), 128);
}

static void methods_and_allow_headers(void)
{
    CHECK(router_allows(ROUTE_SESSION_RUN, HTTP_POST));
    CHECK(router_allows(ROUTE_SESSION_RUN, HTTP_GET));
    CHECK(router_allows(ROUTE_SESSION_RUN, HTTP_DELETE));
    CHECK(!router_allows(ROUTE_SESSION_RUN, HTTP_PUT));
    CHECK(!router_allows(ROUTE_SESSION, HTTP_GET));
    CHECK(!router_allows(ROUTE_ALL_STATUS, HTTP_POST));
    CHECK_STREQ(router_allow_header(ROUTE_SESSION_RUN), "Allow: GET, POST, DELETE\r\n");
    CHECK_STREQ(router_allow_header(ROUTE_SESSION), "Allow: DELETE\r\n");
}

int main(void)
{
    RUN_TEST(session_routes_capture_their_parameters);
    RUN_TEST(fixed_routes_match_exactly);
    RUN_TEST(unknown_paths_are_not_found);
    RUN_TEST(bad_parameters_are_invalid);
    RUN_TEST(methods_and_allow_headers);
    return test_report("test_router");
}
