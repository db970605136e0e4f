/* proxy.h: forwarding what runcast does not own to the upstream (ADK
 * drop-in): any path and method outside runcast's routes goes to the
 * upstream's base URL unchanged, and the answer comes back streamed and
 * bounded (backpressure: the upstream transfer pauses while the client's
 * connection has too much queued).
 *
 * A forward is made in two steps: proxy_forward_new() copies the request
 * while it is being dispatched (its bytes die with the dispatch), then
 * proxy_forward_start() sends it, now or later (Redis mode's DELETE starts
 * it after the store answered). The conn owes its answer from the dispatch
 * until the forward answers it. Loop thread only.
 */
#ifndef RUNCAST_PROXY_H
#define RUNCAST_PROXY_H

#include <uv.h>

#include "common.h"
#include "http.h"

struct conn;
struct proxy_forward;

struct proxy_config {
    const char *base_url;            /* "http://127.0.0.1:8001" (no trailing slash) */
    uint64_t connect_timeout_ms;     /* --connect-timeout */
    uint64_t first_event_timeout_ms; /* --first-event-timeout: with connect, the head's deadline */
    uint64_t idle_timeout_ms;        /* --idle-timeout: no byte from the upstream this long */
    int strip_cors;                  /* runcast answers CORS (--allow-origin): drop the upstream's */
};

/* How a collected forward ended (proxy_forward_start with on_answer). */
enum proxy_outcome {
    PROXY_ANSWERED = 0, /* the upstream answered: status, headers, body */
    PROXY_UNREACHABLE,  /* refused, DNS, TLS, or no valid response: 502 */
    PROXY_TIMED_OUT,    /* no head in time, or silent too long: 504 */
    PROXY_CANCELLED,    /* shutdown */
};

/* An upstream's answer, valid during the on_answer callback only. */
struct proxy_answer {
    enum proxy_outcome outcome;
    int status;          /* PROXY_ANSWERED only */
    const char *headers; /* "Name: value\r\n"… minus hop-by-hop and framing headers */
    const char *body;
    size_t body_len;
    const char *message; /* the failure's words for clients (never the upstream's address) */
};
typedef void (*proxy_answer_cb)(struct conn *c, const struct proxy_answer *answer, void *arg);

/* Sets up the module's own curl_uv on loop. Returns 0 or a negative errno. */
int proxy_init(uv_loop_t *loop, const struct proxy_config *cfg);
/* Cancels every forward (a conn still owed its answer gets 503 draining, a
 * streaming one is cut), refuses new ones, and frees the multi handle once
 * every transfer is torn down; done(arg) then runs from a libuv close
 * callback. Call before the listeners close (they would free the conns). */
void proxy_shutdown(void (*done)(void *arg), void *arg);

/* 1 when (route, method) goes to the upstream: every path runcast does not
 * know, and the methods runcast does not answer on the paths it shares
 * with ADK: the session's (GET is ADK's get-session, POST its path-form
 * create), /run_sse and /run (all but POST). DELETE of a session is
 * runcast's and is forwarded too (api.c). route is router_match()'s. */
int proxy_forwards(int route, enum http_method method);

/* Checks a forwarded path: it must start with '/', have no empty segment
 * ("//"), no dot segment ("." or "..", percent-encoded forms too) and no
 * encoded '/', '\' or NUL, so that the upstream routes exactly what the
 * gate checked. Returns 1 when the path is a user's (/apps/{app}/users/{user}
 * or below; "apps" and "users" in any case, as Express matches them) with
 * the percent-decoded {user} in user (NUL-terminated), 0 when it is no
 * user's (user ""), -EINVAL when it is refused (or {user} does not fit). */
int proxy_check_path(const char *path, size_t len, char *user, size_t user_size);

/* Copies req (method, target, headers, body) into a forward for c, which
 * then owes its answer to it. Returns NULL after proxy_shutdown(). */
struct proxy_forward *proxy_forward_new(struct conn *c, const struct http_request *req);
/* Sends the request. on_answer NULL: the answer is relayed to the client
 * (streamed; 502/504 JSON on failure). Otherwise the answer (at most 64 KiB
 * of body; more is PROXY_UNREACHABLE) is handed to on_answer, which must
 * answer c itself. The forward frees itself when done. */
void proxy_forward_start(struct proxy_forward *fwd, proxy_answer_cb on_answer, void *arg);
/* Frees a forward that was never started; the conn still owes its answer. */
void proxy_forward_drop(struct proxy_forward *fwd);
/* Answers c with a collected answer: the upstream's status, headers and
 * body verbatim, or the failure's 502/504 JSON. */
void proxy_respond_answer(struct conn *c, const struct proxy_answer *answer);

/* Forwards alive (not yet freed) and their libcurl transfers, for metrics
 * and leak hunting. */
size_t proxy_active(void);
size_t proxy_live_transfers(void);

#endif
