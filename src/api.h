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

#endif
