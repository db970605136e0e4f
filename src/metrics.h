/* metrics.h: Prometheus text exposition (GET /metrics).
 *
 * Histograms and the counters no other module owns live here; gauges and the
 * counters that modules already keep (runs by outcome, subscribers dropped)
 * are read from those modules when the page is rendered, so each number has
 * exactly one source. Loop thread only. */
#ifndef RUNCAST_METRICS_H
#define RUNCAST_METRICS_H

#include "common.h"

enum metrics_histogram {
    METRICS_TASK_EXECUTION_DELAY = 0, /* registration -> upstream request sent */
    METRICS_TIME_TO_FIRST_EVENT,      /* upstream request sent -> first agent event */
    METRICS_RUN_DURATION,             /* registration -> terminal event */
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
/* Appends the whole exposition to out. */
void metrics_render(struct buf *out);
/* Number of observations in a histogram (for tests). */
uint64_t metrics_histogram_count(enum metrics_histogram h);

#endif
