/* router.c: a fixed route table; paths are split on '/' and compared segment
 * by segment, "{}" standing for a path parameter. */
#include "router.h"

struct route_entry {
    enum route route;
    const char *pattern; /* segments after the leading '/', "{}" for a parameter */
    unsigned methods;    /* bit (1 << enum http_method) */
    const char *allow;
};

#define M(m) (1u << (m))

static const struct route_entry routes[] = {
    {ROUTE_SESSION_RUN, "apps/{}/users/{}/sessions/{}/run",
     M(HTTP_GET) | M(HTTP_POST) | M(HTTP_DELETE), "Allow: GET, POST, DELETE\r\n"},
    {ROUTE_SESSION_STATUS, "apps/{}/users/{}/sessions/{}/task-status", M(HTTP_GET),
     "Allow: GET\r\n"},
    {ROUTE_SESSION, "apps/{}/users/{}/sessions/{}", M(HTTP_DELETE), "Allow: DELETE\r\n"},
    {ROUTE_ALL_STATUS, "task-status", M(HTTP_GET), "Allow: GET\r\n"},
    {ROUTE_METRICS, "metrics", M(HTTP_GET), "Allow: GET\r\n"},
    {ROUTE_HEALTHZ, "healthz", M(HTTP_GET) | M(HTTP_HEAD), "Allow: GET, HEAD\r\n"},
    {ROUTE_READYZ, "readyz", M(HTTP_GET) | M(HTTP_HEAD), "Allow: GET, HEAD\r\n"},
    {ROUTE_CONSOLE, "", M(HTTP_GET) | M(HTTP_HEAD), "Allow: GET, HEAD\r\n"},
    {ROUTE_CONSOLE_ASSET, "console/{}", M(HTTP_GET) | M(HTTP_HEAD), "Allow: GET, HEAD\r\n"},
    {ROUTE_ADK_RUN_SSE, "run_sse", M(HTTP_POST), "Allow: POST\r\n"},
    {ROUTE_ADK_RUN, "run", M(HTTP_POST), "Allow: POST\r\n"},
    {ROUTE_AGUI, "apps/{}/users/{}/agui", M(HTTP_POST), "Allow: POST\r\n"},
    {ROUTE_AGUI_RESUME, "apps/{}/users/{}/agui/{}", M(HTTP_GET), "Allow: GET\r\n"},
    {ROUTE_FORWARD, NULL,
     M(HTTP_GET) | M(HTTP_HEAD) | M(HTTP_POST) | M(HTTP_PUT) | M(HTTP_PATCH) | M(HTTP_DELETE) |
         M(HTTP_OPTIONS),
     "Allow: GET, HEAD, POST, PUT, PATCH, DELETE\r\n"},
};

/* Matches one pattern. Returns 1 on a match, 0 when the shape differs,
 * -EINVAL when the shape matches but a parameter is invalid. */
static int match_pattern(const char *pattern, const char *path, size_t len,
                         struct route_params *params)
{
    char *slots[3] = {params->app, params->user, params->session};
    int nparam = 0, bad = 0;
    const char *p = pattern;
    size_t i = 0;
    for (;;) {
        const char *pe = strchr(p, '/');
        size_t plen = pe ? (size_t)(pe - p) : strlen(p);
        size_t start = i;
        while (i < len && path[i] != '/')
            i++;
        size_t slen = i - start;
        if (plen == 2 && p[0] == '{' && p[1] == '}') {
            if (!str_is_path_param(path + start, slen)) {
                bad = 1;
            } else {
                memcpy(slots[nparam], path + start, slen);
                slots[nparam][slen] = '\0';
            }
            nparam++;
        } else if (plen != slen || memcmp(p, path + start, slen) != 0) {
            return 0;
        }
        if (pe == NULL)
            return i == len ? (bad ? -EINVAL : 1) : 0;
        if (i == len)
            return 0; /* path ended before the pattern */
        i++;          /* skip '/' */
        p = pe + 1;
    }
}

int router_match(const char *path, size_t path_len, struct route_params *params)
{
    if (path_len == 0 || path[0] != '/')
        return ROUTE_NONE;
    for (size_t i = 0; i < RC_ARRAY_SIZE(routes); i++) {
        if (routes[i].pattern == NULL)
            continue;
        int m = match_pattern(routes[i].pattern, path + 1, path_len - 1, params);
        if (m < 0)
            return m;
        if (m > 0)
            return routes[i].route;
    }
    return ROUTE_NONE;
}

static const struct route_entry *entry(enum route route)
{
    for (size_t i = 0; i < RC_ARRAY_SIZE(routes); i++) {
        if (routes[i].route == route)
            return &routes[i];
    }
    return NULL;
}

int router_allows(enum route route, enum http_method method)
{
    const struct route_entry *e = entry(route);
    return e && (e->methods & M(method)) != 0;
}

const char *router_allow_header(enum route route)
{
    const struct route_entry *e = entry(route);
    return e ? e->allow : "";
}
