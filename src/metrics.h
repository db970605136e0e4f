/* metrics.h: Prometheus text exposition (GET /metrics).
 *
 * Histograms and the counters no other module owns live here; gauges and the
 * counters that modules already keep (runs by outcome, subscribers dropped)
 * stay with those modules, so each number has exactly one source: the
 * caller of metrics_render() (api.c) collects them into a snapshot. metrics.c
 * includes no other module's header, so every module may count into it
 * without an include cycle. Loop thread only. */
#ifndef RUNCAST_METRICS_H
#define RUNCAST_METRICS_H

#include "common.h"

enum metrics_histogram {
    METRICS_TASK_EXECUTION_DELAY = 0, /* registration -> upstream request sent */
    METRICS_TIME_TO_FIRST_EVENT,      /* upstream request sent -> first agent event */
    METRICS_RUN_DURATION,             /* registration -> terminal event */
    METRICS_STORE_COMMAND,            /* a Redis store command: sent -> reply (Redis mode) */
    METRICS_HISTOGRAMS
};

enum metrics_upstream_error {
    METRICS_UPSTREAM_UNREACHABLE = 0,
    METRICS_UPSTREAM_HTTP,
    METRICS_UPSTREAM_RATE_LIMITED,
    METRICS_UPSTREAM_AGENT_ERROR,
    METRICS_UPSTREAM_PROTOCOL,
    METRICS_UPSTREAM_TIMEOUT,
    METRICS_UPSTREAM_ERRORS
};

void metrics_observe(enum metrics_histogram h, double seconds);
void metrics_count_upstream_error(enum metrics_upstream_error kind);
void metrics_count_event(void);
void metrics_count_http_response(int status);
/* A forwarded request's answer (proxy.c): the status its client got. */
void metrics_count_forwarded(int status);

/* A labelled count kept by another module. */
struct metrics_count {
    const char *label;
    uint64_t value;
};

/* The numbers other modules keep, read when the page is rendered. */
struct metrics_snapshot {
    struct metrics_count runs_by_outcome[8]; /* runcast_runs_total{outcome} */
    size_t run_outcomes;                     /* entries used */
    uint64_t subscribers_dropped_slow, subscribers_dropped_lagged;
    size_t runs_active, runs_queued, sessions, subscribers, upstream_transfers, frames;
    uint64_t log_lines_dropped;
    size_t forwarded_active; /* proxy.c's forwards alive */
    /* Redis mode only (store_redis set): the store's numbers. */
    int store_redis, store_up;
    uint64_t store_reconnects, store_fenced_appends, runs_reaped, store_pubsub_resets;
};

/* Appends the whole exposition to out: this module's histograms and
 * counters, and snap's numbers. */
void metrics_render(struct buf *out, const struct metrics_snapshot *snap);

#endif
