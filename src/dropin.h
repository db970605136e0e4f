/* dropin.h: ADK's POST /run_sse and POST /run as runcast runs (DESIGN.md
 * "ADK drop-in"): a frontend written for ADK's api_server points at runcast
 * and its runs outlive it. */
#ifndef RUNCAST_DROPIN_H
#define RUNCAST_DROPIN_H

#include <stddef.h>

#include "http.h"

struct conn;
struct auth_grant;

/* A /run answer holds at most this many bytes of events (--subscriber-buffer,
 * a stream's bound); past it the answer is an error and the run goes on. */
void dropin_configure(size_t max_run_answer);
/* Handles ROUTE_ADK_RUN_SSE or ROUTE_ADK_RUN (POST; the gate let it through
 * and put the token's user, if it must match userId, in grant): validates
 * ADK's RunAgentRequest (422 in FastAPI's shape), registers the run as
 * POST …/run does and answers in ADK's shapes once the store registered
 * it: a stream of ADK frames ending with the run, or the JSON array of its
 * events. */
void dropin_handle_request(struct conn *c, const struct http_request *req, int route,
                           const struct auth_grant *grant);

#endif
