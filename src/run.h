/* run.h: one agent run and its state machine.
 *
 *   REGISTERED --slot free--> RUNNING --upstream end--> COMPLETED | FAILED | TIMED_OUT
 *       |                       ^   |
 *       +--no slot--> QUEUED ---+   +--> CANCELLED | SUPERSEDED
 *                       |
 *                       +--> CANCELLED | SUPERSEDED | FAILED (rate_limited: queue timeout)
 *
 * REGISTERED lasts only inside run_start(); its way out publishes the run's
 * first event (run.queued or run.started), where default replay begins.
 *
 * run_transition() in run.c is the only place a state changes; every change
 * publishes its event, and every terminal change also releases the limiter
 * slot, detaches the upstream call, and is logged and counted, exactly once.
 */
#ifndef RUNCAST_RUN_H
#define RUNCAST_RUN_H

#include "common.h"
#include "limiter.h"

struct session;
struct upstream_call;
struct json_t;

enum run_state {
    RUN_REGISTERED = 0,
    RUN_QUEUED,
    RUN_RUNNING,
    RUN_COMPLETED,
    RUN_FAILED,
    RUN_CANCELLED,
    RUN_TIMED_OUT,
    RUN_SUPERSEDED,
    RUN_STATES
};

struct run {
    char id[24];
    struct session *session;
    enum run_state state;
    double created_at, started_at, ended_at; /* wall clock seconds; 0 = not yet */
    uint64_t registered_ns, started_ns, sent_ns; /* monotonic; 0 = not yet */
    uint64_t events;          /* agent events relayed */
    struct json_t *new_message; /* owned until the upstream call is started */
    struct json_t *state_delta;
    int streaming;
    int holds_slot;
    struct upstream_call *call;
    struct limiter_waiter waiter;
};

/* A warning is logged when a run's start delay passes this (0: never). */
void run_configure(uint64_t delay_alert_ms);

/* Registers a new run as the session's current run: the previous active run
 * (if any) ends as superseded first, then the new run starts or queues. Takes
 * ownership of new_message and state_delta (state_delta may be NULL). Never
 * fails: a run that cannot start ends with run.failed. */
struct run *run_start(struct session *s, struct json_t *new_message, struct json_t *state_delta,
                      int streaming);
/* Ends an active run as cancelled with this reason ("client_request", ...). */
void run_cancel(struct run *r, const char *reason);
/* Frees a run that is no longer active. */
void run_free(struct run *r);

int run_is_active(const struct run *r);
const char *run_state_name(enum run_state state);

/* Counters for status and metrics. */
size_t run_count_active(void);
uint64_t run_count_outcome(enum run_state state);

#endif
