/* router.h: maps a request path to one of the API's routes. */
#ifndef RUNCAST_ROUTER_H
#define RUNCAST_ROUTER_H

#include "common.h"
#include "http.h"

enum route {
    ROUTE_NONE = 0,        /* unknown path: 404 */
    ROUTE_SESSION_RUN,     /* /apps/{app}/users/{user}/sessions/{session}/run */
    ROUTE_SESSION_STATUS,  /* /apps/{app}/users/{user}/sessions/{session}/task-status */
    ROUTE_SESSION,         /* /apps/{app}/users/{user}/sessions/{session} */
    ROUTE_ALL_STATUS,      /* /task-status */
    ROUTE_METRICS,         /* /metrics */
    ROUTE_HEALTHZ,         /* /healthz */
    ROUTE_READYZ,          /* /readyz */
    ROUTE_CONSOLE,         /* / */
    ROUTE_CONSOLE_ASSET,   /* /console/{name}: the console's scripts, styles, icons */
    ROUTE_ADK_RUN_SSE,     /* /run_sse: ADK's streaming run endpoint (dropin.c) */
    ROUTE_ADK_RUN,         /* /run: ADK's run endpoint, answered when the run ends */
    ROUTE_AGUI,            /* /apps/{app}/users/{user}/agui: an AG-UI run (agui.c) */
    ROUTE_AGUI_RESUME,     /* /apps/{app}/users/{user}/agui/{thread}: rejoin its run */
    ROUTE_FORWARD,         /* what runcast does not own: the upstream's (proxy.c); never
                            * matched here, api.c turns a request into it */
};

/* Path parameters, NUL-terminated. */
struct route_params {
    char app[129];
    char user[129];
    char session[129];
};

/* Matches path. Returns the route (ROUTE_NONE when nothing matches), or
 * -EINVAL when the path has a route's shape (a session's, or a console
 * file's) but a parameter is not 1..128 characters of [A-Za-z0-9_.-]. A
 * console file's name is returned in params->app. */
int router_match(const char *path, size_t path_len, struct route_params *params);
/* 1 when route answers method. */
int router_allows(enum route route, enum http_method method);
/* The "Allow: ...\r\n" header line for a 405. */
const char *router_allow_header(enum route route);

#endif
