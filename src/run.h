/* run.h: one agent run and its state machine.
 *
 * The transitions transition_allowed() in run.c permits, and nothing else:
 *
 *   REGISTERED --slot free-----------------------------> RUNNING
 *   REGISTERED --no slot-------> QUEUED --admitted-----> RUNNING
 *   REGISTERED --> FAILED        (rate_limited: --max-runs-per-user)
 *   QUEUED     --> FAILED        (rate_limited: --queue-timeout)
 *   QUEUED     --> CANCELLED | SUPERSEDED
 *   RUNNING    --> COMPLETED | FAILED | TIMED_OUT | CANCELLED | SUPERSEDED
 *
 * COMPLETED, FAILED, CANCELLED, TIMED_OUT and SUPERSEDED are terminal.
 * REGISTERED lasts only inside run_begin(); its way out publishes the run's
 * first event (run.queued, run.started or run.failed), where default replay
 * begins.
 *
 * run_transition() in run.c is the only place a state changes: each change
 * appends its event to the session's log and writes its log line, and each
 * terminal change also releases the limiter slot, the quota and the
 * upstream call (closed, or drained when a client replaced or cancelled
 * the run: run_end_drains) and counts the outcome, exactly once.
 * holds_slot and call change only there.
 */
#ifndef RUNCAST_RUN_H
#define RUNCAST_RUN_H

#include "common.h"
#include "limiter.h"
#include "store.h"

struct store_log;
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

/* What a run asks of the upstream, and what its first event records. The
 * JSON references are the run's once given to run_create(). */
struct run_input {
    struct json_t *new_message;     /* {"role": "user", "parts": [...]} */
    struct json_t *state_delta;     /* NULL: none */
    struct json_t *custom_metadata; /* the /run_sse body's customMetadata; NULL: none */
    /* Fields added to the run's first event (run.started, run.queued or
     * run.failed), where every replay of the run begins: what a client
     * needs to rebuild the run's input (AG-UI's, agui.c). NULL: none. */
    struct json_t *first_event;
    int streaming;
};

/* Lets go of in's references (and sets them to NULL). */
void run_input_free(struct run_input *in);

/* The session as its runs see it. session.c embeds one in struct session
 * and fills it, so run.c needs no struct session (and session.h does not
 * need run.c's internals: no include cycle). */
struct run_host {
    const char *app, *user, *session_id;
    struct store_log *log;  /* where the run's events go (borrowed) */
    int upstream_ready;     /* the ADK session exists upstream */
    /* Marks activity now (the session's expiry clock). */
    void (*touch)(struct run_host *host);
};

/* A run. Owned by its session (struct session's run): session.c creates it
 * with run_create() when a POST starts one, and frees it with run_free()
 * when the next run supersedes it or the session goes away — by then the
 * run has ended, so no callback of its can still run. Nothing else keeps a
 * pointer to a run past that (the upstream call is cancelled, the limiter
 * waiter unlinked, at the terminal transition). */
struct run {
    char id[24];
    struct run_host *host;    /* its session's; outlives the run */
    enum run_state state;
    double created_at, started_at, ended_at; /* wall clock seconds; 0 = not yet */
    uint64_t registered_ns, started_ns, sent_ns; /* monotonic; 0 = not yet */
    uint64_t events;          /* agent events relayed */
    struct run_input in;      /* owned; its JSON is let go once the upstream call starts */
    int holds_slot;           /* a limiter slot: set on RUNNING, given back at the end */
    struct upstream_call *call; /* while RUNNING */
    struct limiter_waiter waiter;
    store_done_cb on_registered; /* run_begin()'s: the store registered the run */
    void *registered_arg;
};

/* A warning is logged when a run's start delay passes this (0: never). */
void run_configure(uint64_t delay_alert_ms);

/* A new REGISTERED run of host, with a fresh id; nothing is published yet.
 * Takes ownership of in's references. Never fails. The caller (the
 * session) owns the run. */
struct run *run_create(struct run_host *host, const struct run_input *in);
/* Takes a REGISTERED run out of that state: it starts (run.started), queues
 * for a slot (run.queued) or, over --max-runs-per-user, fails
 * (run.failed rate_limited). on_registered(arg, status) runs once when the
 * store has registered the run as the session's current one (store.h's
 * store_done_cb; at once for the memory store). Never fails. */
void run_begin(struct run *r, store_done_cb on_registered, void *arg);
/* Ends an active run as superseded by the run with id by. */
void run_supersede(struct run *r, const char *by);
/* Ends an active run as cancelled with this reason ("client_request", ...). */
void run_cancel(struct run *r, const char *reason);
/* Ends an active run whose terminal event another node wrote (event, e.g.
 * "run.superseded"; NULL: a failure), writing nothing (store_watch). */
void run_end_elsewhere(struct run *r, const char *event);
/* Ends an active run whose events the store lost: run.failed store_lost. */
void run_fail_store_lost(struct run *r);
/* Frees a run that is no longer active (its owner's call). */
void run_free(struct run *r);

int run_is_active(const struct run *r);
const char *run_state_name(enum run_state state);
/* Sets the run fields of DESIGN.md "Task status" on o (has_task, status,
 * run_id, created_at, started_at, ended_at, events); r may be NULL (no run
 * yet). */
void run_status_json(const struct run *r, struct json_t *o);

/* Counters for status and metrics. */
size_t run_count_active(void);
uint64_t run_count_outcome(enum run_state state);
/* Counts the outcome of a terminal event this process wrote (the store's
 * on_terminal, store.h): each run's outcome is counted once, by the node
 * whose write the store accepted. */
void run_count_terminal(const char *event);

#endif
