/* api.h: the HTTP API of DESIGN.md, as the server's request callback. */
#ifndef RUNCAST_API_H
#define RUNCAST_API_H

#include "http.h"

struct conn;

/* server_request_cb for the gateway's listener. Answers (or turns the
 * connection into a stream) before returning, except in Redis mode, where
 * what needs the cluster's state is answered from the store's reply. */
void api_handle_request(struct conn *c, const struct http_request *req, void *data);
/* Draining: /readyz answers 503 and new runs are refused with 503. */
void api_set_draining(int draining);
/* What /healthz says the upstream is: "demo" (the built-in agent, whose
 * directives the console offers as examples) or "http" (anything else). */
void api_set_upstream_kind(const char *kind);
/* Redis mode (store_redis.h): cluster-wide status, cancel and delete, and
 * 503 store_unavailable while Redis is unreachable. */
void api_set_shared_store(int shared);

/* For the ADK drop-in (dropin.c), which starts runs as POST …/run does. */
struct json_t;
struct route_params;
struct session;
/* Builds the ADK newMessage of a run from a request body ("newMessage" or
 * "new_message", else "message" or "query" text). Returns a new reference,
 * or NULL with *why (a literal) saying what is unusable. */
struct json_t *api_new_message(struct json_t *body, const char **why);
/* The session a new run of p goes to, created on first use. When there can
 * be none (draining, the store down, a session cap) answers the request
 * (503 or 429) and returns NULL. */
struct session *api_run_session(struct conn *c, const struct route_params *p);
/* The request's body as JSON (a new reference), or NULL after answering
 * 400 invalid_json. */
struct json_t *api_json_body(struct conn *c, const struct http_request *req);
/* The session a stream of p goes to, created on first use (GET …/run's
 * rule); NULL after answering 503 or 429 when there can be none. */
struct session *api_stream_session(struct conn *c, const struct route_params *p);
/* Calls follow(arg, status) once the log of session p can place
 * subscribers (a Redis copy may be loading; store_ready()), or at once
 * when status < 0 or the session is gone (follow finds that out). */
void api_when_placeable(const struct route_params *p, int status,
                        void (*follow)(void *arg, int status), void *arg);
/* Answers a request whose run the store refused to register (a negative
 * status of store_done_cb): 429 for -EDQUOT, else 503. */
void api_respond_refused_run(struct conn *c, int status);

#endif
