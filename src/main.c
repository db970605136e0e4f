/* main.c: wires the subsystems onto one loop, and shuts them down in order.
 *
 * Start: config -> log -> access control -> demo agent (its own thread) ->
 * upstream -> proxy (forwarding) -> hub -> limiter -> sessions -> listener (and
 * --admin-listen). Stop (SIGTERM/SIGINT): stop accepting and
 * turn /readyz to 503, give active runs --shutdown-grace to finish, cancel
 * what still runs with reason "shutdown", cut forwarded requests, end every
 * stream after its last events, close every handle, exit 0.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "api.h"
#include "auth.h"
#include "config.h"
#include "dropin.h"
#include "demo.h"
#include "hub.h"
#include "limiter.h"
#include "log.h"
#include "metrics.h"
#include "proxy.h"
#include "quota.h"
#include "run.h"
#include "server.h"
#include "session.h"
#include "store.h"
#include "store_redis.h"
#include "upstream.h"

static struct config cfg;
static struct server *server;
static struct server *admin_server; /* --admin-listen, or NULL */
static uv_signal_t sigterm_handle, sigint_handle;
static uv_timer_t drain_timer;
static uint64_t drain_deadline_ms;
static int stopping;
static int shared_store; /* --store redis://… */
static int demo_running;

static void on_server_closed(void *arg);

/* The main listener is closed after the admin one, so that /metrics and
 * /task-status answer for as long as the gateway does. */
static void on_admin_server_closed(void *arg)
{
    admin_server = NULL;
    server_close(server, on_server_closed, NULL);
}

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
static void close_everything(void *arg)
{
    session_table_shutdown("shutdown");
    proxy_shutdown(NULL, NULL); /* before the listeners: forwards hold their conns */
    if (shared_store) /* the runs' last writes are confirmed by now, or given up */
        store_redis_stop(2000, NULL, NULL);
    if (admin_server)
        server_close(admin_server, on_admin_server_closed, NULL);
    else
        server_close(server, on_server_closed, NULL);
}

static void finish_shutdown(void)
{
    uv_timer_stop(&drain_timer);
    limiter_shutdown();
    if (!shared_store) {
        close_everything(NULL);
        return;
    }
    /* The runs' run.cancelled go to Redis and come back to this node's
     * streams before they end, as in memory mode. */
    session_table_end_runs("shutdown");
    store_redis_settle(2000, close_everything, NULL);
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
    if (admin_server)
        server_stop_accepting(admin_server);
    drain_deadline_ms = time_mono_ms() + cfg.shutdown_grace_ms;
    uv_timer_start(&drain_timer, drain_tick, 0, 25);
}

/* Redis mode: checks --store and --node-id and starts connecting. Returns
 * 0, or -EINVAL after printing why. */
static int start_redis_store(uv_loop_t *loop)
{
    struct store_redis_config rc = {
        .lease_ms = cfg.node_lease_ms,
        .session_ttl_ms = cfg.session_ttl_ms,
        .max_runs_per_user = cfg.max_runs_per_user,
        .max_sessions_per_user = cfg.max_sessions_per_user,
    };
    if (store_redis_parse_url(cfg.store, &rc) < 0) {
        fprintf(stderr, "runcast: --store must be memory or redis://HOST:PORT[/DB] with a numeric "
                        "HOST or localhost, not \"%s\"\n", cfg.store);
        return -EINVAL;
    }
    if (cfg.node_id[0] == '\0')
        store_redis_default_node_id(cfg.node_id, sizeof(cfg.node_id), cfg.listen_port);
    else if (!str_is_path_param(cfg.node_id, strlen(cfg.node_id))) {
        fprintf(stderr, "runcast: --node-id must be 1 to 128 characters of [A-Za-z0-9_.-]\n");
        return -EINVAL;
    }
    rc.node_id = cfg.node_id;
    int err = store_redis_start(loop, &rc);
    if (err < 0) {
        fprintf(stderr, "runcast: cannot start the Redis store: %s\n", strerror(-err));
        return err;
    }
    return 0;
}

/* 1 when host only accepts connections from this machine. */
static int host_is_loopback(const char *host)
{
    return strncmp(host, "127.", 4) == 0 || strcmp(host, "::1") == 0 ||
           strcmp(host, "localhost") == 0;
}

/* Access control from the configuration. Returns 0, or a negative errno
 * after auth_init() printed why. */
static int start_auth(void)
{
    struct auth_config ac = {
        .jwt = strcmp(cfg.auth, "jwt") == 0,
        .secret = cfg.jwt_secret,
        .public_key_path = cfg.jwt_public_key,
        .user_claim = cfg.jwt_user_claim,
        .audience = cfg.jwt_audience,
        .issuer = cfg.jwt_issuer,
        .cookie = cfg.jwt_cookie,
        .leeway_ms = cfg.jwt_leeway_ms,
        .admin_claim = cfg.admin_claim,
        .allow_origins = cfg.allow_origin,
        .allow_hosts = cfg.allow_host,
        .listen_host = cfg.listen_host,
        .admin_listen_host = cfg.admin_listen_host,
    };
    quota_init(cfg.max_runs_per_user, cfg.max_subscribers_per_user, cfg.max_sessions_per_user);
    int err = auth_init(&ac);
    /* The key is in auth.c now; this copy is not needed any more. */
    memset(cfg.jwt_secret, 0, sizeof(cfg.jwt_secret));
    if (err < 0)
        return err;
    if (!ac.jwt && !host_is_loopback(cfg.listen_host))
        log_event(LOG_WARN, "auth.disabled", "listen", cfg.listen_host[0] ? cfg.listen_host : "*",
                  "message", "--auth none on a non-loopback address: anyone who can reach it can "
                  "read every session and start runs", NULL);
    if (cfg.admin_listen_host[0] || cfg.admin_listen_port) {
        if (!host_is_loopback(cfg.admin_listen_host))
            log_event(LOG_WARN, "auth.admin_exposed", "listen",
                      cfg.admin_listen_host[0] ? cfg.admin_listen_host : "*", "message",
                      "--admin-listen serves /task-status and /metrics without tokens", NULL);
    }
    return 0;
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
    if (start_auth() < 0)
        return 2;

    char upstream[sizeof(cfg.upstream) + 32];
    str_copy(upstream, sizeof(upstream), cfg.upstream);
    api_set_upstream_kind(strcmp(cfg.upstream, "demo") == 0 ? "demo" : "http");
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
        .drain_ms = cfg.upstream_drain_ms,
        .max_event_bytes = cfg.max_body > 1024 * 1024 ? cfg.max_body : 1024 * 1024,
    };
    err = upstream_init(loop, &uc);
    if (err < 0) {
        fprintf(stderr, "runcast: cannot start the upstream client: %s\n", uv_strerror(err));
        return 1;
    }
    struct proxy_config pc = {
        .base_url = upstream,
        .connect_timeout_ms = cfg.connect_timeout_ms,
        .first_event_timeout_ms = cfg.first_event_timeout_ms,
        .idle_timeout_ms = cfg.idle_timeout_ms,
        .strip_cors = auth_answers_cors(),
    };
    err = proxy_init(loop, &pc);
    if (err < 0) {
        fprintf(stderr, "runcast: cannot start the forwarding client: %s\n", uv_strerror(err));
        return 1;
    }
    struct store_config stc = {.history = cfg.history,
                               .history_bytes = cfg.history_bytes,
                               .on_terminal = run_count_terminal};
    if (strcmp(cfg.store, "memory") == 0) {
        store_init(&store_memory_ops, &stc);
    } else if (start_redis_store(loop) == 0) {
        store_init(&store_redis_ops, &stc);
        api_set_shared_store(1);
        shared_store = 1;
    } else {
        return 2;
    }
    struct hub_config hc = {
        .subscriber_buffer = cfg.subscriber_buffer,
        .heartbeat_ms = cfg.heartbeat_ms,
        .retry_ms = cfg.sse_retry_ms,
        .max_subscribers = cfg.max_subscribers,
        .flush_begin = conn_send_batch_begin,
        .flush_end = conn_send_batch_end,
    };
    hub_init(loop, &hc);
    conn_send_batch_init();
    dropin_configure(cfg.subscriber_buffer);
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
    if (cfg.admin_listen_host[0] || cfg.admin_listen_port) {
        struct server_config asc = svc;
        asc.host = cfg.admin_listen_host[0] ? cfg.admin_listen_host : "0.0.0.0";
        asc.port = cfg.admin_listen_port;
        err = server_start(loop, &asc, api_handle_request, (void *)&auth_admin_listener,
                           &admin_server);
        if (err < 0) {
            fprintf(stderr, "runcast: cannot listen on %s:%d (--admin-listen): %s\n", asc.host,
                    asc.port, uv_strerror(err));
            return 1;
        }
        char admin_address[300];
        snprintf(admin_address, sizeof(admin_address),
                 strchr(asc.host, ':') ? "[%s]:%d" : "%s:%d", asc.host, server_port(admin_server));
        log_event(LOG_INFO, "admin.listening", "address", admin_address, NULL);
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
              strcmp(cfg.upstream, "demo") == 0 ? "demo" : upstream, "auth", cfg.auth, "store",
              shared_store ? "redis" : "memory", "node", shared_store ? cfg.node_id : "-",
              "sends", conn_send_path(), NULL);

    uv_run(loop, UV_RUN_DEFAULT);
    if (demo_running)
        demo_stop_thread();
    rc = uv_loop_close(loop);
    conn_send_batch_close();
    auth_shutdown();
    quota_shutdown(); /* after the loop: every stream has left its user's count */
    log_event(LOG_INFO, "shutdown.done", NULL);
    log_finish();
    return rc == 0 ? 0 : 1;
}
