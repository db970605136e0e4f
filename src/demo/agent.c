/* agent.c: one demo agent's life (see demo.h, and demo_internal.h for the
 * files of src/demo/).
 *
 * One `struct demo` is one agent: a server on one loop, its sessions, the
 * ring of recent /run_sse calls and the runs streaming right now. Everything
 * lives on that loop; the embedded agent gets a thread and loop of its own
 * (demo_start_thread), `runcast demo-agent` uses the default loop of the
 * process (demo_main).
 */
#include "demo_internal.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "../config.h"
#include "../log.h"

/* ---- lifecycle ---------------------------------------------------------- */

/* Creates an agent listening on cfg's host:port on loop. Returns 0 and
 * *out, or a negative errno from server_start() (nothing is left open). */
static int demo_create(uv_loop_t *loop, const struct demo_config *cfg, struct demo **out)
{
    struct demo *d = xcalloc(1, sizeof(*d));
    d->loop = loop;
    d->word_delay_ms = cfg->word_delay_ms;
    d->rng = uv_hrtime() ^ ((uint64_t)(uintptr_t)d << 16) ^ (uint64_t)getpid();
    demo_sessions_init(&d->sessions);
    list_init(&d->runs);
    struct server_config sc = {
        .host = cfg->host,
        .port = cfg->port,
        .max_header = 16 * 1024,
        .max_body = 1024 * 1024,
        .head_timeout_ms = 10000,
        .keepalive_timeout_ms = 60000,
    };
    int rc = server_start(loop, &sc, demo_on_request, d, &d->server);
    if (rc != 0) {
        demo_sessions_free(&d->sessions);
        free(d);
        return rc;
    }
    *out = d;
    return 0;
}

static void demo_on_server_closed(void *arg)
{
    struct demo *d = arg;
    d->server = NULL;
}

/* Starts stopping: releases every run and closes the server (and with it
 * every connection). The loop runs out once the close callbacks are done;
 * then demo_destroy(). Safe to call twice. */
static void demo_stop(struct demo *d)
{
    if (d->stopping)
        return;
    d->stopping = 1;
    demo_runs_stop(d);
    server_close(d->server, demo_on_server_closed, d);
}

/* Frees a stopped agent after its loop has run out. */
static void demo_destroy(struct demo *d)
{
    demo_sessions_free(&d->sessions);
    demo_calls_free(&d->calls);
    free(d);
}

static void demo_format_address(char *out, size_t size, const char *host, int port)
{
    if (strchr(host, ':'))
        snprintf(out, size, "[%s]:%d", host, port);
    else
        snprintf(out, size, "%s:%d", host, port);
}

static void demo_log_listening(const char *host, int port)
{
    char address[300];
    demo_format_address(address, sizeof(address), host, port);
    log_event(LOG_INFO, "demo.listening", "address", address, NULL);
}

/* ---- the embedded agent's thread --------------------------------------- */

/* The one embedded agent. The loop and the thread belong to the caller of
 * demo_start_thread(); everything the loop holds belongs to the thread. */
static struct {
    int running;
    uv_thread_t thread;
    uv_loop_t loop;
    uv_async_t stop_async;
    uv_sem_t ready;
    struct demo_config cfg;
    int port; /* set by the thread before it posts ready */
    int err;
    struct demo *demo;
} demo_thread;

static void demo_thread_on_stop(uv_async_t *async)
{
    demo_stop(demo_thread.demo);
    uv_close((uv_handle_t *)async, NULL);
}

static void demo_thread_main(void *arg)
{
    int rc = demo_create(&demo_thread.loop, &demo_thread.cfg, &demo_thread.demo);
    if (rc == 0)
        rc = uv_async_init(&demo_thread.loop, &demo_thread.stop_async, demo_thread_on_stop);
    if (rc != 0) {
        if (demo_thread.demo)
            demo_stop(demo_thread.demo);
        uv_run(&demo_thread.loop, UV_RUN_DEFAULT); /* let close callbacks run */
        if (demo_thread.demo)
            demo_destroy(demo_thread.demo);
        demo_thread.demo = NULL;
        demo_thread.err = rc;
        uv_sem_post(&demo_thread.ready);
        return;
    }
    demo_thread.port = server_port(demo_thread.demo->server);
    demo_log_listening(demo_thread.cfg.host, demo_thread.port);
    uv_sem_post(&demo_thread.ready);
    uv_run(&demo_thread.loop, UV_RUN_DEFAULT);
    demo_destroy(demo_thread.demo);
    demo_thread.demo = NULL;
    log_event(LOG_INFO, "demo.stopped", NULL);
}

int demo_start_thread(const struct demo_config *cfg, int *port_out)
{
    if (demo_thread.running)
        return -EALREADY;
    memset(&demo_thread, 0, sizeof(demo_thread));
    demo_thread.cfg = *cfg;
    demo_thread.cfg.host[sizeof(demo_thread.cfg.host) - 1] = '\0';
    int rc = uv_loop_init(&demo_thread.loop);
    if (rc != 0)
        return rc;
    rc = uv_sem_init(&demo_thread.ready, 0);
    if (rc != 0) {
        uv_loop_close(&demo_thread.loop);
        return rc;
    }
    json_object_seed(0); /* jansson's one global, set before a second thread uses it */
    rc = uv_thread_create(&demo_thread.thread, demo_thread_main, NULL);
    if (rc != 0) {
        uv_sem_destroy(&demo_thread.ready);
        uv_loop_close(&demo_thread.loop);
        return rc;
    }
    uv_sem_wait(&demo_thread.ready);
    uv_sem_destroy(&demo_thread.ready);
    if (demo_thread.err != 0) {
        uv_thread_join(&demo_thread.thread);
        uv_loop_close(&demo_thread.loop);
        return demo_thread.err;
    }
    demo_thread.running = 1;
    *port_out = demo_thread.port;
    return 0;
}

void demo_stop_thread(void)
{
    if (!demo_thread.running)
        return;
    uv_async_send(&demo_thread.stop_async);
    uv_thread_join(&demo_thread.thread);
    uv_loop_close(&demo_thread.loop);
    demo_thread.running = 0;
}

/* ---- `runcast demo-agent` ------------------------------------------------ */

struct demo_fg {
    struct demo *demo;
    uv_signal_t sigint, sigterm;
};

static void demo_fg_on_signal(uv_signal_t *sig, int signum)
{
    struct demo_fg *fg = sig->data;
    log_event(LOG_INFO, "demo.stopping", "signal", signum == SIGINT ? "SIGINT" : "SIGTERM",
              NULL);
    demo_stop(fg->demo);
    if (!uv_is_closing((uv_handle_t *)&fg->sigint))
        uv_close((uv_handle_t *)&fg->sigint, NULL);
    if (!uv_is_closing((uv_handle_t *)&fg->sigterm))
        uv_close((uv_handle_t *)&fg->sigterm, NULL);
}

static void demo_usage(FILE *out)
{
    fprintf(out, "usage: runcast demo-agent [--listen HOST:PORT] [--word-delay D]\n");
}

/* Reads the value of a "--name VALUE" or "--name=VALUE" flag at argv[*i].
 * Returns the value, or NULL when argv[*i] is not this flag; sets *missing
 * when the flag has no value. */
static const char *demo_flag_value(int argc, char **argv, int *i, const char *name, int *missing)
{
    size_t n = strlen(name);
    const char *a = argv[*i];
    if (strncmp(a, name, n) != 0)
        return NULL;
    if (a[n] == '=')
        return a + n + 1;
    if (a[n] != '\0')
        return NULL;
    if (*i + 1 >= argc) {
        *missing = 1;
        return NULL;
    }
    return argv[++*i];
}

/* Reads `runcast demo-agent`'s flags into cfg. Returns -1 to go on, or the
 * exit status to end with: 0 after --help, 2 after a bad flag (one line on
 * stderr says which). */
static int demo_parse_args(int argc, char **argv, struct demo_config *cfg)
{
    int i = 1;
    if (i < argc && strcmp(argv[i], "demo-agent") == 0)
        i++; /* called with the whole command line */
    for (; i < argc; i++) {
        int missing = 0;
        const char *v;
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            demo_usage(stdout);
            return 0;
        } else if ((v = demo_flag_value(argc, argv, &i, "--listen", &missing)) != NULL) {
            if (config_parse_listen(v, cfg->host, sizeof(cfg->host), &cfg->port) != 0) {
                fprintf(stderr,
                        "runcast demo-agent: bad --listen value '%s' (want HOST:PORT)\n", v);
                return 2;
            }
        } else if ((v = demo_flag_value(argc, argv, &i, "--word-delay", &missing)) != NULL) {
            if (config_parse_duration_ms(v, &cfg->word_delay_ms) != 0) {
                fprintf(stderr,
                        "runcast demo-agent: bad --word-delay value '%s' (e.g. 50ms, 0.2, 1s)\n",
                        v);
                return 2;
            }
        } else if (missing) {
            fprintf(stderr, "runcast demo-agent: %s needs a value\n", argv[i]);
            return 2;
        } else {
            fprintf(stderr, "runcast demo-agent: unknown argument '%s' (try --help)\n", argv[i]);
            return 2;
        }
    }
    return -1;
}

int demo_main(int argc, char **argv)
{
    struct demo_config cfg = {.host = "127.0.0.1", .port = 8001,
                              .word_delay_ms = DEMO_DEFAULT_WORD_DELAY_MS};
    int status = demo_parse_args(argc, argv, &cfg);
    if (status >= 0)
        return status;

    signal(SIGPIPE, SIG_IGN);
    uv_loop_t *loop = uv_default_loop();
    struct demo_fg fg = {0};
    int rc = demo_create(loop, &cfg, &fg.demo);
    if (rc != 0) {
        char address[300];
        demo_format_address(address, sizeof(address), cfg.host, cfg.port);
        fprintf(stderr, "runcast demo-agent: cannot listen on %s: %s\n", address, uv_strerror(rc));
        uv_run(loop, UV_RUN_DEFAULT);
        uv_loop_close(loop);
        return 1;
    }
    uv_signal_init(loop, &fg.sigint);
    uv_signal_init(loop, &fg.sigterm);
    fg.sigint.data = fg.sigterm.data = &fg;
    uv_signal_start(&fg.sigint, demo_fg_on_signal, SIGINT);
    uv_signal_start(&fg.sigterm, demo_fg_on_signal, SIGTERM);
    demo_log_listening(cfg.host, server_port(fg.demo->server));
    uv_run(loop, UV_RUN_DEFAULT);
    demo_destroy(fg.demo);
    uv_loop_close(loop);
    log_event(LOG_INFO, "demo.stopped", NULL);
    return 0;
}
