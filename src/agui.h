/* agui.h: the AG-UI protocol over runcast runs (DESIGN.md "AG-UI"): an
 * @ag-ui/client HttpAgent points at POST …/agui, and a reloaded page
 * rejoins its run with GET …/agui/{threadId}. */
#ifndef RUNCAST_AGUI_H
#define RUNCAST_AGUI_H

#include "http.h"

struct conn;
struct route_params;

/* Handles POST /apps/{app}/users/{user}/agui (the gate let it through):
 * validates the RunAgentInput (400), starts a run of session (app, user,
 * threadId) with the messages the thread has not seen, and answers its
 * events as AG-UI events, ending with the run. */
void agui_handle_post(struct conn *c, const struct http_request *req, const struct route_params *p);
/* Handles GET /apps/{app}/users/{user}/agui/{threadId}: the thread's
 * MESSAGES_SNAPSHOT and the live tail of its latest run, or 204 when
 * runcast retains nothing of it. */
void agui_handle_resume(struct conn *c, const struct route_params *p);

#endif
