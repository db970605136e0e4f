/* metrics.c: counters, histograms and the text exposition (see metrics.h). */
#include "metrics.h"

#include <inttypes.h>

/* Upper bounds in seconds; the last bucket is +Inf. Fine at the low end,
 * where task_execution_delay lives (it should be well under a millisecond). */
static const double bucket_bounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                       0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5,
                                       5,      10,      30,     60,    120,    300};
#define BUCKETS RC_ARRAY_SIZE(bucket_bounds)

struct histogram {
    uint64_t buckets[BUCKETS + 1]; /* not cumulative; the last is +Inf */
    uint64_t count;
    double sum;
};

static struct histogram histograms[METRICS_HISTOGRAMS];
static uint64_t upstream_errors[METRICS_UPSTREAM_ERRORS];
static uint64_t events_total;
static uint64_t http_responses[600];
static uint64_t forwarded_responses[600];

static const char *histogram_names[METRICS_HISTOGRAMS] = {
    "runcast_task_execution_delay_seconds",
    "runcast_time_to_first_event_seconds",
    "runcast_run_duration_seconds",
    "runcast_store_command_seconds",
};
static const char *histogram_help[METRICS_HISTOGRAMS] = {
    "Time from a run's registration to its upstream request being sent.",
    "Time from the upstream request to the first agent event.",
    "Time from a run's registration to its terminal event.",
    "Time from a Redis store command to its reply.",
};
static const char *upstream_error_kinds[METRICS_UPSTREAM_ERRORS] = {
    "unreachable", "http", "rate_limited", "agent_error", "protocol", "timeout",
};

void metrics_observe(enum metrics_histogram h, double seconds)
{
    struct histogram *hg = &histograms[h];
    size_t i = 0;
    while (i < BUCKETS && seconds > bucket_bounds[i])
        i++;
    hg->buckets[i]++;
    hg->count++;
    hg->sum += seconds;
}

void metrics_count_upstream_error(enum metrics_upstream_error kind)
{
    upstream_errors[kind]++;
}

void metrics_count_event(void)
{
    events_total++;
}

void metrics_count_http_response(int status)
{
    if (status >= 100 && status < 600)
        http_responses[status]++;
}

void metrics_count_forwarded(int status)
{
    if (status >= 100 && status < 600)
        forwarded_responses[status]++;
}

static void render_histogram(struct buf *out, enum metrics_histogram h)
{
    const struct histogram *hg = &histograms[h];
    const char *name = histogram_names[h];
    buf_printf(out, "# HELP %s %s\n# TYPE %s histogram\n", name, histogram_help[h], name);
    uint64_t cumulative = 0;
    for (size_t i = 0; i < BUCKETS; i++) {
        cumulative += hg->buckets[i];
        buf_printf(out, "%s_bucket{le=\"%g\"} %" PRIu64 "\n", name, bucket_bounds[i], cumulative);
    }
    cumulative += hg->buckets[BUCKETS];
    buf_printf(out, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", name, cumulative);
    buf_printf(out, "%s_sum %.9f\n%s_count %" PRIu64 "\n", name, hg->sum, name, hg->count);
}

static void render_header(struct buf *out, const char *name, const char *type, const char *help)
{
    buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void metrics_render(struct buf *out, const struct metrics_snapshot *snap)
{
    for (int h = 0; h < METRICS_HISTOGRAMS; h++)
        if (h != METRICS_STORE_COMMAND || snap->store_redis)
            render_histogram(out, (enum metrics_histogram)h);

    render_header(out, "runcast_runs_total", "counter", "Runs ended, by outcome.");
    for (size_t i = 0; i < snap->run_outcomes; i++)
        buf_printf(out, "runcast_runs_total{outcome=\"%s\"} %" PRIu64 "\n",
                   snap->runs_by_outcome[i].label, snap->runs_by_outcome[i].value);

    render_header(out, "runcast_events_total", "counter", "Agent events relayed from the upstream.");
    buf_printf(out, "runcast_events_total %" PRIu64 "\n", events_total);

    render_header(out, "runcast_subscribers_dropped_total", "counter",
                  "Subscribers disconnected because they could not keep up.");
    buf_printf(out, "runcast_subscribers_dropped_total{reason=\"slow\"} %" PRIu64 "\n",
               snap->subscribers_dropped_slow);
    buf_printf(out, "runcast_subscribers_dropped_total{reason=\"lagged\"} %" PRIu64 "\n",
               snap->subscribers_dropped_lagged);

    render_header(out, "runcast_upstream_errors_total", "counter", "Upstream faults, by kind.");
    for (int k = 0; k < METRICS_UPSTREAM_ERRORS; k++)
        buf_printf(out, "runcast_upstream_errors_total{kind=\"%s\"} %" PRIu64 "\n",
                   upstream_error_kinds[k], upstream_errors[k]);

    render_header(out, "runcast_http_requests_total", "counter", "HTTP responses, by status code.");
    for (int code = 100; code < 600; code++) {
        if (http_responses[code])
            buf_printf(out, "runcast_http_requests_total{code=\"%d\"} %" PRIu64 "\n", code,
                       http_responses[code]);
    }

    render_header(out, "runcast_forwarded_requests_total", "counter",
                  "Requests forwarded to the upstream, by the status their client got.");
    for (int code = 100; code < 600; code++) {
        if (forwarded_responses[code])
            buf_printf(out, "runcast_forwarded_requests_total{code=\"%d\"} %" PRIu64 "\n", code,
                       forwarded_responses[code]);
    }
    render_header(out, "runcast_forwarded_active", "gauge",
                  "Forwarded requests not yet freed (answered or streaming, or being torn down).");
    buf_printf(out, "runcast_forwarded_active %zu\n", snap->forwarded_active);

    render_header(out, "runcast_runs_active", "gauge", "Runs queued or running.");
    buf_printf(out, "runcast_runs_active %zu\n", snap->runs_active);
    render_header(out, "runcast_runs_queued", "gauge", "Runs waiting for the limiter.");
    buf_printf(out, "runcast_runs_queued %zu\n", snap->runs_queued);
    render_header(out, "runcast_sessions", "gauge", "Sessions in the table.");
    buf_printf(out, "runcast_sessions %zu\n", snap->sessions);
    render_header(out, "runcast_subscribers", "gauge", "Connected SSE subscribers.");
    buf_printf(out, "runcast_subscribers %zu\n", snap->subscribers);
    render_header(out, "runcast_upstream_transfers", "gauge",
                  "libcurl transfers not yet torn down (cancelled ones included).");
    buf_printf(out, "runcast_upstream_transfers %zu\n", snap->upstream_transfers);
    render_header(out, "runcast_frames", "gauge",
                  "Encoded events alive: in replay logs or in writes in flight.");
    buf_printf(out, "runcast_frames %zu\n", snap->frames);
    render_header(out, "runcast_log_lines_dropped_total", "counter",
                  "Log lines dropped because stderr's reader fell too far behind.");
    buf_printf(out, "runcast_log_lines_dropped_total %" PRIu64 "\n", snap->log_lines_dropped);
    if (!snap->store_redis)
        return;
    render_header(out, "runcast_store_up", "gauge", "1 while Redis is reachable.");
    buf_printf(out, "runcast_store_up %d\n", snap->store_up);
    render_header(out, "runcast_store_reconnects_total", "counter",
                  "Times the connection to Redis came back after being lost.");
    buf_printf(out, "runcast_store_reconnects_total %" PRIu64 "\n", snap->store_reconnects);
    render_header(out, "runcast_store_fenced_appends_total", "counter",
                  "Writes refused because their run was no longer this node's.");
    buf_printf(out, "runcast_store_fenced_appends_total %" PRIu64 "\n", snap->store_fenced_appends);
    render_header(out, "runcast_store_pubsub_resets_total", "counter",
                  "Pub/sub connections to Redis replaced because they stopped delivering.");
    buf_printf(out, "runcast_store_pubsub_resets_total %" PRIu64 "\n", snap->store_pubsub_resets);
    render_header(out, "runcast_runs_reaped_total", "counter",
                  "Runs of other nodes this node ended as node_lost.");
    buf_printf(out, "runcast_runs_reaped_total %" PRIu64 "\n", snap->runs_reaped);
}
