/* main.c: wires the subsystems onto one loop, and shuts them down in order.
 *
 * Start: config -> log -> demo agent (its own thread) -> upstream -> hub ->
 * limiter -> sessions -> listener. Stop (SIGTERM/SIGINT): stop accepting and
 * turn /readyz to 503, give active runs --shutdown-grace to finish, cancel
 * what still runs with reason "shutdown", end every stream after its last
 * events, close every handle, exit 0.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "api.h"
#include "config.h"
#include "demo.h"
#include "hub.h"
#include "limiter.h"
#include "log.h"
#include "metrics.h"
#include "run.h"
#include "server.h"
#include "session.h"
#include "upstream.h"

static struct config cfg;
static struct server *server;
static uv_signal_t sigterm_handle, sigint_handle;
static uv_timer_t drain_timer;
static uint64_t drain_deadline_ms;
static int stopping;
static int demo_running;

static void on_server_closed(void *arg)
{
    RC_UNUSED(arg);
    upstream_shutdown(NULL, NULL);
    hub_shutdown();
    uv_close((uv_handle_t *)&drain_timer, NULL);
    uv_close((uv_handle_t *)&sigterm_handle, NULL);
    uv_close((uv_handle_t *)&sigint_handle, NULL);
    log_detach();
}

/* The end of the grace period: what still runs is cancelled (run.cancelled
 * "shutdown"), every stream gets its last events and ends, handles close. */
static void finish_shutdown(void)
{
    uv_timer_stop(&drain_timer);
    limiter_shutdown();
    session_table_shutdown("shutdown");
    server_close(server, on_server_closed, NULL);
}

/* Polled while draining: a safe point outside every run's callbacks. */
static void drain_tick(uv_timer_t *t)
{
    if (run_count_active() == 0 || time_mono_ms() >= drain_deadline_ms)
        finish_shutdown();
}

/* Starts the orderly stop: no new connections or runs, /readyz 503, active
 * runs get up to --shutdown-grace to finish. A second signal exits at once. */
static void on_signal(uv_signal_t *handle, int signum)
{
    if (stopping) {
        log_event(LOG_WARN, "shutdown.forced", NULL);
        exit(1);
    }
    stopping = 1;
    char active[24];
    snprintf(active, sizeof(active), "%zu", run_count_active());
    log_event(LOG_INFO, "shutdown.begin", "signal", signum == SIGTERM ? "SIGTERM" : "SIGINT",
              "active_runs", active, NULL);
    api_set_draining(1);
    server_stop_accepting(server);
    drain_deadline_ms = time_mono_ms() + cfg.shutdown_grace_ms;
    uv_timer_start(&drain_timer, drain_tick, 0, 25);
}

/* Starts the built-in demo agent when --upstream is "demo" and rewrites the
 * upstream URL to point at it. Returns 0 or a negative errno. */
static int start_demo_if_needed(char *upstream, size_t size)
{
    if (strcmp(upstream, "demo") != 0)
        return 0;
    struct demo_config dc = {.port = 0, .word_delay_ms = cfg.demo_word_delay_ms};
    snprintf(dc.host, sizeof(dc.host), "127.0.0.1");
    int port = 0;
    int err = demo_start_thread(&dc, &port);
    if (err < 0)
        return err;
    demo_running = 1;
    snprintf(upstream, size, "http://127.0.0.1:%d", port);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "demo-agent") == 0)
        return demo_main(argc - 1, argv + 1);

    config_defaults(&cfg);
    int rc = config_load(&cfg, argc, argv);
    if (rc == 1)
        return 0;
    if (rc < 0)
        return 2;

    enum log_level level = LOG_INFO;
    enum log_format format = LOG_TEXT;
    log_parse_level(cfg.log_level, &level);
    log_parse_format(cfg.log_format, &format);
    log_configure(level, format);
    signal(SIGPIPE, SIG_IGN);

    char upstream[sizeof(cfg.upstream) + 32];
    snprintf(upstream, sizeof(upstream), "%s", cfg.upstream);
    int err = start_demo_if_needed(upstream, sizeof(upstream));
    if (err < 0) {
        fprintf(stderr, "runcast: cannot start the demo agent: %s\n", uv_strerror(err));
        return 1;
    }

    uv_loop_t *loop = uv_default_loop();
    struct upstream_config uc = {
        .base_url = upstream,
        .connect_timeout_ms = cfg.connect_timeout_ms,
        .first_event_timeout_ms = cfg.first_event_timeout_ms,
        .idle_timeout_ms = cfg.idle_timeout_ms,
        .run_timeout_ms = cfg.run_timeout_ms,
        .retries = cfg.upstream_retries,
        .retry_backoff_ms = cfg.retry_backoff_ms,
        .max_event_bytes = cfg.max_body > 1024 * 1024 ? cfg.max_body : 1024 * 1024,
    };
    err = upstream_init(loop, &uc);
    if (err < 0) {
        fprintf(stderr, "runcast: cannot start the upstream client: %s\n", uv_strerror(err));
        return 1;
    }
    struct hub_config hc = {
        .history = cfg.history,
        .history_bytes = cfg.history_bytes,
        .subscriber_buffer = cfg.subscriber_buffer,
        .heartbeat_ms = cfg.heartbeat_ms,
        .retry_ms = cfg.sse_retry_ms,
        .max_subscribers = cfg.max_subscribers,
    };
    hub_init(loop, &hc);
    struct limiter_config lc = {
        .max_concurrent = cfg.max_concurrent_runs,
        .runs_per_second = cfg.runs_per_second,
        .burst = cfg.burst,
        .queue_timeout_ms = cfg.queue_timeout_ms,
    };
    limiter_init(loop, &lc);
    run_configure(cfg.delay_alert_ms);
    struct session_config sc = {.max_sessions = cfg.max_sessions, .ttl_ms = cfg.session_ttl_ms};
    session_table_init(loop, &sc);

    struct server_config svc = {
        .host = cfg.listen_host,
        .port = cfg.listen_port,
        .max_header = cfg.max_header,
        .max_body = cfg.max_body,
        .head_timeout_ms = cfg.head_timeout_ms,
        .keepalive_timeout_ms = cfg.keepalive_timeout_ms,
        .on_response = metrics_count_http_response,
    };
    err = server_start(loop, &svc, api_handle_request, NULL, &server);
    if (err < 0) {
        fprintf(stderr, "runcast: cannot listen on %s:%d: %s\n", cfg.listen_host, cfg.listen_port,
                uv_strerror(err));
        return 1;
    }
    uv_timer_init(loop, &drain_timer);
    uv_signal_init(loop, &sigterm_handle);
    uv_signal_start(&sigterm_handle, on_signal, SIGTERM);
    uv_signal_init(loop, &sigint_handle);
    uv_signal_start(&sigint_handle, on_signal, SIGINT);

    log_attach(loop);
    char address[300];
    snprintf(address, sizeof(address), strchr(cfg.listen_host, ':') ? "[%s]:%d" : "%s:%d",
             cfg.listen_host, server_port(server));
    log_event(LOG_INFO, "listening", "address", address, "upstream",
              strcmp(cfg.upstream, "demo") == 0 ? "demo" : upstream, NULL);

    uv_run(loop, UV_RUN_DEFAULT);
    if (demo_running)
        demo_stop_thread();
    rc = uv_loop_close(loop);
    log_event(LOG_INFO, "shutdown.done", NULL);
    log_finish();
    return rc == 0 ? 0 : 1;
}
