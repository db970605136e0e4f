/* upstream.h: calls to the agent service (ADK api_server) with libcurl's
 * multi interface driven by the libuv loop.
 *
 * One upstream_call is one agent run as the upstream sees it: create the ADK
 * session when runcast has not done so yet for this session (path form
 * first, then the body form; see upstream.c), POST /run_sse,
 * read its event stream, map faults to outcomes (ADK.md, DESIGN.md). The
 * caller (run.c) learns what happens through callbacks, and can cancel at any
 * time; after upstream_call_cancel() returns no callback runs again, and the
 * libcurl transfer is torn down later at a safe point (never inside a libcurl
 * callback). upstream_call_drain() lets go of a call the same way, but keeps
 * a /run_sse response already under way open to its end (for at most
 * drain_ms), and the same session's next call waits for that end before it
 * sends anything: an upstream that does not abort a run when its client goes
 * away (ADK JS) would otherwise run two runs on one ADK session at once.
 */
#ifndef RUNCAST_UPSTREAM_H
#define RUNCAST_UPSTREAM_H

#include <uv.h>

#include "common.h"

struct upstream_config {
    const char *base_url;        /* "http://127.0.0.1:8001" (no trailing slash) */
    uint64_t connect_timeout_ms; /* TCP (+TLS) connect */
    uint64_t first_event_timeout_ms; /* request sent -> first event */
    uint64_t idle_timeout_ms;    /* no byte from the upstream for this long */
    uint64_t run_timeout_ms;     /* whole call, retries included */
    int retries;                 /* extra attempts after a 429/503 */
    uint64_t retry_backoff_ms;   /* first backoff; doubled each time, with jitter */
    size_t max_event_bytes;      /* one upstream frame; larger is upstream_protocol */
    uint64_t drain_ms;           /* upstream_call_drain's bound; 0: it only cancels */
};

/* How a call ended. */
enum upstream_outcome {
    UPSTREAM_COMPLETED = 0,   /* 2xx event stream ended normally */
    UPSTREAM_UNREACHABLE,     /* connect failed (refused, DNS, TLS) */
    UPSTREAM_HTTP,            /* non-2xx other than 429/503 (status, excerpt) */
    UPSTREAM_RATE_LIMITED,    /* 429/503 still after the retries */
    UPSTREAM_AGENT_ERROR,     /* ADK error frame {"error": ...} or {}, or an event
                               * with errorCode/errorMessage (detail) */
    UPSTREAM_PROTOCOL,        /* bad frame, wrong content type, cut short */
    UPSTREAM_TIMED_OUT,       /* phase says which deadline passed */
};

struct upstream_result {
    enum upstream_outcome outcome;
    long status;          /* last HTTP status, 0 if none */
    const char *phase;    /* UPSTREAM_TIMED_OUT: "connect", "first_event", "idle", "total" */
    char message[256];    /* human text for browsers (for UPSTREAM_HTTP: includes a body
                           * excerpt); never names the upstream's host or port */
    char log_detail[256]; /* "" or libcurl's own words, which may name the upstream's
                           * host and port: for the log only */
    struct json_t *detail; /* UPSTREAM_AGENT_ERROR: the error frame, or {"errorCode",
                            * "errorMessage"} (borrowed, valid during on_end) */
};

struct upstream_callbacks {
    /* The ADK session now exists upstream (created, or "already exists"). */
    void (*on_session_ready)(void *arg);
    /* The /run_sse request was handed to the network (the run has "started"). */
    void (*on_request_sent)(void *arg);
    /* The upstream answered 429/503 and the request will be sent again after
     * wait_ms (optional). */
    void (*on_retry)(void *arg, long status, uint64_t wait_ms);
    /* One upstream event: its data, verbatim (valid JSON object text). */
    void (*on_event)(void *arg, const char *json, size_t len);
    /* Exactly once, last. The call is finished and must not be cancelled. */
    void (*on_end)(void *arg, const struct upstream_result *result);
};

struct upstream_request {
    const char *app;
    const char *user;
    const char *session;
    int session_ready;              /* 1: skip the create-session step */
    struct json_t *new_message;     /* {"role":"user","parts":[...]} (borrowed) */
    struct json_t *state_delta;     /* NULL or an object (borrowed) */
    struct json_t *custom_metadata; /* NULL or an object (borrowed) */
    int streaming;
};

/* Sets up the multi handle on loop. Returns 0 or a negative errno. */
int upstream_init(uv_loop_t *loop, const struct upstream_config *cfg);
/* Cancels no active call, but cuts every drain (upstream_call_drain); frees
 * the multi handle after every call is finished or cancelled and torn down.
 * done(arg) runs from a libuv close callback. */
void upstream_shutdown(void (*done)(void *arg), void *arg);

/* Starts a call. The request's JSON is serialised at once (nothing borrowed is
 * kept). Returns the call, or NULL with *err set to a negative errno. */
struct upstream_call *upstream_call_start(const struct upstream_request *req,
                                          const struct upstream_callbacks *cb, void *arg,
                                          int *err);
/* Stops a call: no callback runs after this returns; the connection is closed
 * at a safe point. Safe from any callback, including this call's own. */
void upstream_call_cancel(struct upstream_call *call);

/* Lets go of a call as upstream_call_cancel() does (no callback runs after
 * this returns), except that a /run_sse request already handed to the network
 * keeps its connection: its response is read to its end and discarded, for
 * at most drain_ms, then closed ("upstream.drained" / "upstream.drain_cut" in
 * the log). Until then every upstream_call_start() for the same (app, user,
 * session) waits before sending anything; its run_timeout covers the wait.
 * A call with no such request open, drain_ms 0, or shutdown under way is
 * simply cancelled. Safe from any callback. */
void upstream_call_drain(struct upstream_call *call);

/* Transfers not yet torn down (cancelled ones included), for tests and the soak. */
size_t upstream_live_transfers(void);

#endif
