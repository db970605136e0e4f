/* limiter.c: concurrency slots, a token bucket and one FIFO queue (see
 * limiter.h). One timer serves both the queue timeout (the queue is FIFO, so
 * only its head can be the next to expire) and the next token refill. */
#include "limiter.h"

#include <math.h>

static struct limiter_config config;
static struct list queue;
static size_t queued, active;
static double tokens;
static uint64_t refilled_ms;
static int dispatching;
static int closed; /* shutting down: nothing is admitted any more */
static uv_timer_t timer;

static void timer_cb(uv_timer_t *t);

void limiter_init(uv_loop_t *loop, const struct limiter_config *cfg)
{
    config = *cfg;
    closed = 0;
    if (config.runs_per_second > 0 && config.burst <= 0)
        config.burst = (int)ceil(config.runs_per_second);
    tokens = config.burst;
    refilled_ms = time_mono_ms();
    list_init(&queue);
    uv_timer_init(loop, &timer);
    uv_unref((uv_handle_t *)&timer);
}

void limiter_shutdown(void)
{
    closed = 1;
    uv_timer_stop(&timer);
    uv_close((uv_handle_t *)&timer, NULL);
}

static void refill(uint64_t now)
{
    if (config.runs_per_second <= 0)
        return;
    tokens += (double)(now - refilled_ms) * config.runs_per_second / 1000.0;
    if (tokens > config.burst)
        tokens = config.burst;
    refilled_ms = now;
}

/* 1 when a run may start now (a slot and, if rate limited, a token). */
static int can_start(void)
{
    if (active >= (size_t)config.max_concurrent)
        return 0;
    if (config.runs_per_second <= 0)
        return 1;
    refill(time_mono_ms());
    return tokens >= 1.0;
}

static void take(void)
{
    active++;
    if (config.runs_per_second > 0)
        tokens -= 1.0;
}

/* Arms the timer for the earliest of: the queue head's timeout, the next
 * token (only useful when a slot is free). */
static void arm_timer(void)
{
    uv_timer_stop(&timer);
    if (list_empty(&queue))
        return;
    uint64_t now = time_mono_ms();
    struct limiter_waiter *head = container_of(queue.next, struct limiter_waiter, link);
    uint64_t due = head->enqueued_ms + config.queue_timeout_ms;
    uint64_t wait = due > now ? due - now : 0;
    if (config.runs_per_second > 0 && active < (size_t)config.max_concurrent && tokens < 1.0) {
        uint64_t token_wait = (uint64_t)ceil((1.0 - tokens) * 1000.0 / config.runs_per_second);
        if (token_wait < wait)
            wait = token_wait;
    }
    uv_timer_start(&timer, timer_cb, wait, 0);
}

/* Admits queued waiters while there is room. Not re-entrant: a waiter that
 * ends (and releases) inside on_admitted just lets this loop go on. */
static void dispatch(void)
{
    if (dispatching || closed)
        return;
    dispatching = 1;
    while (!list_empty(&queue) && can_start()) {
        struct limiter_waiter *w = container_of(queue.next, struct limiter_waiter, link);
        list_remove(&w->link);
        queued--;
        take();
        w->on_admitted(w);
    }
    dispatching = 0;
    arm_timer();
}

int limiter_acquire(struct limiter_waiter *w, size_t *position)
{
    if (list_empty(&queue) && can_start()) {
        take();
        return 1;
    }
    w->enqueued_ms = time_mono_ms();
    list_insert_tail(&queue, &w->link);
    queued++;
    *position = queued;
    if (queued == 1)
        arm_timer();
    return 0;
}

void limiter_leave(struct limiter_waiter *w)
{
    if (!list_linked(&w->link))
        return;
    list_remove(&w->link);
    queued--;
}

void limiter_release(void)
{
    active--;
    dispatch();
}

static void timer_cb(uv_timer_t *t)
{
    uint64_t now = time_mono_ms();
    while (!list_empty(&queue)) {
        struct limiter_waiter *w = container_of(queue.next, struct limiter_waiter, link);
        if (now - w->enqueued_ms < config.queue_timeout_ms)
            break;
        list_remove(&w->link);
        queued--;
        w->on_expired(w);
    }
    dispatch();
}

size_t limiter_active(void)
{
    return active;
}

size_t limiter_queued(void)
{
    return queued;
}
