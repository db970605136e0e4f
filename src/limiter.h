/* limiter.h: how many upstream calls run at once (--max-concurrent-runs) and
 * how fast they start (token bucket: --runs-per-second, --burst).
 *
 * A run that cannot start waits in one FIFO queue; leaving the queue is O(1)
 * (intrusive list). Queued waiters are admitted only by limiter.c's
 * dispatch loop (from limiter_release() and the timer), which is not
 * re-entrant: a run that ends inside another's on_admitted gives its slot
 * back to the loop already running instead of recursing.
 */
#ifndef RUNCAST_LIMITER_H
#define RUNCAST_LIMITER_H

#include <uv.h>

#include "common.h"

struct limiter_waiter {
    struct list link;
    uint64_t enqueued_ms;
    /* Called when the waiter got its slot (it left the queue). */
    void (*on_admitted)(struct limiter_waiter *w);
    /* Called when it waited longer than the queue timeout (it left the queue). */
    void (*on_expired)(struct limiter_waiter *w);
};

struct limiter_config {
    int max_concurrent;
    double runs_per_second; /* 0: no rate limit */
    int burst;              /* bucket size; 0: ceil(runs_per_second) */
    uint64_t queue_timeout_ms;
};

void limiter_init(uv_loop_t *loop, const struct limiter_config *cfg);
/* Stops admitting (queued waiters stay queued until their runs end) and
 * closes the timer. Call before cancelling runs at shutdown, so that a slot
 * given back then does not start a queued run only to cancel it. */
void limiter_shutdown(void);
/* Takes a slot at once (returns 1) or queues w (returns 0; *position is its
 * 1-based place in the queue). */
int limiter_acquire(struct limiter_waiter *w, size_t *position);
/* Removes a queued waiter. O(1). Safe on a waiter that is not queued. */
void limiter_leave(struct limiter_waiter *w);
/* Gives a slot back; queued waiters may be admitted before this returns. */
void limiter_release(void);

size_t limiter_active(void);
size_t limiter_queued(void);

#endif
