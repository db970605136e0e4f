/* test_upstream.c: upstream calls against a scripted fake upstream.
 *
 * The fake upstream is a thread with plain blocking sockets on 127.0.0.1: it
 * accepts connections, reads each request (head and body) and plays the next
 * scripted reply: writes, chunks, pauses, then closes, keeps the connection
 * for the next request, or waits for the client to close it. The main thread
 * drives upstream calls on a uv loop and counts every callback. Every wait has
 * a deadline; alarm() backs them all up. */
#include <arpa/inet.h>
#include <dirent.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "../../src/frame_scan.h"
#include "../../src/log.h"
#include "../../src/upstream.h"
#include "test.h"

#define SERVER_DEADLINE_MS 5000
#define WAIT_MS 5000

/* ---- the fake upstream ---- */

enum act_kind {
    ACT_END = 0,     /* end of the reply: close the connection */
    ACT_WRITE,       /* bytes as they are */
    ACT_CHUNK,       /* bytes as one HTTP/1.1 chunk */
    ACT_PAUSE,       /* ms */
    ACT_KEEP,        /* keep the connection for the next request */
    ACT_AWAIT_CLOSE, /* wait until the client closes the connection */
    ACT_RESET,       /* abort the connection (RST) */
};

struct act {
    enum act_kind kind;
    const char *bytes;
    int ms;
};

struct reply {
    struct act acts[16];
};

#define W(s) {ACT_WRITE, (s), 0}
#define CHUNK(s) {ACT_CHUNK, (s), 0}
#define PAUSE(n) {ACT_PAUSE, NULL, (n)}
#define LAST_CHUNK W("0\r\n\r\n")
#define KEEP {ACT_KEEP, NULL, 0}
#define AWAIT_CLOSE {ACT_AWAIT_CLOSE, NULL, 0}
#define RESET {ACT_RESET, NULL, 0}

#define SSE_HEAD "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n" \
                 "Transfer-Encoding: chunked\r\n\r\n"
#define CREATED "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
#define NOT_FOUND "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n" \
                  "Content-Length: 35\r\n\r\n{\"detail\":\"Session not found: s1\"}"

struct seen_request {
    char method[16];
    char path[256];
    char head[4096];
    char body[4096];
};

struct fake {
    int listen_fd;
    int port;
    int stop_pipe[2];
    pthread_t thread;
    const struct reply *replies;
    int n_replies;
    struct seen_request seen[8];
    int n_seen;             /* read by the main thread after the join only */
    int connections;        /* idem */
    atomic_int client_closes; /* the client closed a connection we waited on */
};

static uint64_t mono_ms(void)
{
    return uv_hrtime() / 1000000u;
}

/* Waits until fd is readable; 1 readable, 0 deadline or stop. */
static int wait_readable(struct fake *f, int fd, uint64_t deadline)
{
    for (;;) {
        uint64_t now = mono_ms();
        if (now >= deadline)
            return 0;
        struct pollfd p[2] = {{fd, POLLIN, 0}, {f->stop_pipe[0], POLLIN, 0}};
        int n = poll(p, 2, (int)(deadline - now));
        if (n < 0)
            return 0;
        if (p[0].revents) /* before the stop: bytes or an EOF already there count */
            return 1;
        if (p[1].revents)
            return 0;
    }
}

static void send_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n <= 0)
            return;
        data += n;
        len -= (size_t)n;
    }
}

/* Reads one request. 1: read; 0: the client closed before sending one; -1: error. */
static int read_request(struct fake *f, int fd, struct seen_request *req)
{
    char buf[8192];
    size_t len = 0;
    uint64_t deadline = mono_ms() + SERVER_DEADLINE_MS;
    char *end = NULL;
    while (end == NULL) {
        if (len == sizeof(buf) - 1 || !wait_readable(f, fd, deadline))
            return -1;
        ssize_t n = recv(fd, buf + len, sizeof(buf) - 1 - len, 0);
        if (n <= 0)
            return len == 0 ? 0 : -1;
        len += (size_t)n;
        buf[len] = '\0';
        end = strstr(buf, "\r\n\r\n");
    }
    size_t head_len = (size_t)(end - buf) + 4;
    snprintf(req->head, sizeof(req->head), "%.*s", (int)head_len, buf);
    sscanf(buf, "%15s %255s", req->method, req->path);
    size_t body_len = 0;
    for (char *line = strstr(req->head, "\r\n"); line; line = strstr(line + 2, "\r\n"))
        if (strncasecmp(line + 2, "Content-Length:", 15) == 0)
            body_len = strtoul(line + 17, NULL, 10);
    while (len < head_len + body_len) {
        if (len == sizeof(buf) - 1 || !wait_readable(f, fd, deadline))
            return -1;
        ssize_t n = recv(fd, buf + len, sizeof(buf) - 1 - len, 0);
        if (n <= 0)
            return -1;
        len += (size_t)n;
    }
    snprintf(req->body, sizeof(req->body), "%.*s", (int)body_len, buf + head_len);
    return 1;
}

/* Waits until the client closes fd (or the deadline/stop). */
static void await_client_close(struct fake *f, int fd)
{
    uint64_t deadline = mono_ms() + SERVER_DEADLINE_MS;
    char buf[512];
    while (wait_readable(f, fd, deadline)) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n <= 0) {
            atomic_fetch_add(&f->client_closes, 1);
            return;
        }
    }
}

/* Plays one reply. Returns 1 if the connection stays open. */
static int play(struct fake *f, int fd, const struct reply *r)
{
    for (const struct act *a = r->acts; a->kind != ACT_END; a++) {
        switch (a->kind) {
        case ACT_WRITE:
            send_all(fd, a->bytes, strlen(a->bytes));
            break;
        case ACT_CHUNK: {
            char size[32];
            int n = snprintf(size, sizeof(size), "%zx\r\n", strlen(a->bytes));
            send_all(fd, size, (size_t)n);
            send_all(fd, a->bytes, strlen(a->bytes));
            send_all(fd, "\r\n", 2);
            break;
        }
        case ACT_PAUSE:
            poll(NULL, 0, a->ms);
            break;
        case ACT_KEEP:
            return 1;
        case ACT_AWAIT_CLOSE:
            await_client_close(f, fd);
            return 0;
        case ACT_RESET: {
            struct linger lg = {.l_onoff = 1, .l_linger = 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
            return 0;
        }
        case ACT_END:
            break;
        }
    }
    return 0;
}

static void *fake_main(void *arg)
{
    struct fake *f = arg;
    int conn = -1;
    int next = 0;
    while (next < f->n_replies) {
        if (conn < 0) {
            if (!wait_readable(f, f->listen_fd, mono_ms() + SERVER_DEADLINE_MS))
                break;
            conn = accept(f->listen_fd, NULL, NULL);
            if (conn < 0)
                break;
            int one = 1;
            setsockopt(conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            f->connections++;
        }
        int r = f->n_seen < (int)RC_ARRAY_SIZE(f->seen) ? read_request(f, conn, &f->seen[f->n_seen]) : -1;
        if (r <= 0) {
            close(conn);
            conn = -1;
            if (r < 0)
                break;
            continue; /* a kept-alive connection the client gave up: take the next */
        }
        f->n_seen++;
        if (!play(f, conn, &f->replies[next++])) {
            close(conn);
            conn = -1;
        }
    }
    if (conn >= 0) { /* kept alive after the last reply: hold it until the client closes */
        await_client_close(f, conn);
        close(conn);
    }
    return NULL;
}

static void fake_start(struct fake *f, const struct reply *replies, int n)
{
    memset(f, 0, sizeof(*f));
    f->replies = replies;
    f->n_replies = n;
    f->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int rc = bind(f->listen_fd, (struct sockaddr *)&addr, sizeof(addr));
    CHECK_EQ(rc, 0);
    CHECK_EQ(listen(f->listen_fd, 16), 0);
    socklen_t alen = sizeof(addr);
    getsockname(f->listen_fd, (struct sockaddr *)&addr, &alen);
    f->port = ntohs(addr.sin_port);
    CHECK_EQ(pipe(f->stop_pipe), 0);
    CHECK_EQ(pthread_create(&f->thread, NULL, fake_main, f), 0);
}

static void fake_stop(struct fake *f)
{
    ssize_t ignored = write(f->stop_pipe[1], "x", 1);
    (void)ignored;
    pthread_join(f->thread, NULL);
    close(f->listen_fd);
    close(f->stop_pipe[0]);
    close(f->stop_pipe[1]);
}

/* A port with nothing listening: bound once, then released. */
static int closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, (struct sockaddr *)&addr, sizeof(addr));
    socklen_t alen = sizeof(addr);
    getsockname(fd, (struct sockaddr *)&addr, &alen);
    close(fd);
    return ntohs(addr.sin_port);
}

/* ---- the loop side ---- */

static uv_loop_t loop;
static uv_timer_t guard; /* wakes the loop so that waits can check their deadline */
static char base_url[64];
static int shutdown_done;

/* What a call told us, in order. */
struct probe {
    char seq[64]; /* S session ready, R request sent, E event, X end */
    int session_ready, request_sent, events, ends, after_end;
    char event[8][256];
    enum upstream_outcome outcome;
    long status;
    char phase[32];
    char message[256];
    char log_detail[256];
    char detail_error[256];
    char detail_json[256]; /* the whole detail, compact, keys sorted */
    int has_detail;
    int cancel_on_event;             /* cancel from inside the Nth event (1-based) */
    struct upstream_call *call;
    void (*on_end_hook)(struct probe *p);
    void (*on_event_hook)(struct probe *p);
};

static void note(struct probe *p, char c)
{
    size_t n = strlen(p->seq);
    if (n + 1 < sizeof(p->seq))
        p->seq[n] = c;
    if (p->ends)
        p->after_end++;
}

static void probe_session_ready(void *arg)
{
    struct probe *p = arg;
    p->session_ready++;
    note(p, 'S');
}

static void probe_request_sent(void *arg)
{
    struct probe *p = arg;
    p->request_sent++;
    note(p, 'R');
}

static void probe_event(void *arg, const char *json, size_t len)
{
    struct probe *p = arg;
    if (p->events < 8)
        snprintf(p->event[p->events], sizeof(p->event[0]), "%.*s", (int)len, json);
    p->events++;
    note(p, 'E');
    if (p->cancel_on_event == p->events)
        upstream_call_cancel(p->call);
    if (p->on_event_hook)
        p->on_event_hook(p);
}

static void probe_end(void *arg, const struct upstream_result *res)
{
    struct probe *p = arg;
    note(p, 'X');
    p->ends++;
    p->outcome = res->outcome;
    p->status = res->status;
    snprintf(p->phase, sizeof(p->phase), "%s", res->phase ? res->phase : "");
    snprintf(p->message, sizeof(p->message), "%s", res->message);
    snprintf(p->log_detail, sizeof(p->log_detail), "%s", res->log_detail);
    if (res->detail) {
        p->has_detail = 1;
        json_t *e = json_object_get(res->detail, "error");
        snprintf(p->detail_error, sizeof(p->detail_error), "%s",
                 json_is_string(e) ? json_string_value(e) : "");
        char *text = json_dumps(res->detail, JSON_COMPACT | JSON_SORT_KEYS);
        snprintf(p->detail_json, sizeof(p->detail_json), "%s", text ? text : "");
        free(text);
    }
    if (p->on_end_hook)
        p->on_end_hook(p);
}

static const struct upstream_callbacks probe_callbacks = {
    .on_session_ready = probe_session_ready,
    .on_request_sent = probe_request_sent,
    .on_event = probe_event,
    .on_end = probe_end,
};

static struct upstream_config default_config(int port)
{
    snprintf(base_url, sizeof(base_url), "http://127.0.0.1:%d", port);
    return (struct upstream_config){
        .base_url = base_url,
        .connect_timeout_ms = 2000,
        .first_event_timeout_ms = 3000,
        .idle_timeout_ms = 3000,
        .run_timeout_ms = 5000,
        .retries = 3,
        .retry_backoff_ms = 10,
        .max_event_bytes = 64 * 1024,
    };
}

static void guard_cb(uv_timer_t *t)
{
    RC_UNUSED(t);
}

static void setup(const struct upstream_config *cfg)
{
    alarm(30); /* the backstop behind every deadline below */
    log_configure(LOG_ERROR, LOG_TEXT); /* the drain tests' log lines are expected */
    CHECK_EQ(uv_loop_init(&loop), 0);
    uv_timer_init(&loop, &guard);
    shutdown_done = 0;
    CHECK_EQ(upstream_init(&loop, cfg), 0);
}

/* Runs the loop until cond(arg) holds; 1 if it did before the deadline. */
static int wait_until(int (*cond)(void *), void *arg, int timeout_ms)
{
    uint64_t deadline = mono_ms() + (uint64_t)timeout_ms;
    uv_timer_start(&guard, guard_cb, 5, 5);
    while (!cond(arg) && mono_ms() < deadline)
        uv_run(&loop, UV_RUN_ONCE);
    uv_timer_stop(&guard);
    return cond(arg);
}

static int probe_ended(void *arg)
{
    return ((struct probe *)arg)->ends > 0;
}

static int no_live_transfers(void *arg)
{
    RC_UNUSED(arg);
    return upstream_live_transfers() == 0;
}

static int is_set(void *arg)
{
    return *(int *)arg != 0;
}

static int client_closed(void *arg)
{
    return atomic_load(&((struct fake *)arg)->client_closes) > 0;
}

static void on_shutdown(void *arg)
{
    *(int *)arg = 1;
}

/* Shuts the module down and checks that the loop closes cleanly. */
static void teardown(void)
{
    upstream_shutdown(on_shutdown, &shutdown_done);
    CHECK(wait_until(is_set, &shutdown_done, WAIT_MS));
    CHECK_EQ(upstream_live_transfers(), 0);
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ(uv_loop_close(&loop), 0);
    alarm(0);
}

static json_t *hello_message(void)
{
    return json_pack("{s:s, s:[{s:s}]}", "role", "user", "parts", "text", "hi");
}

/* Starts one call for app/u1/s1 with message "hi". */
static struct upstream_call *start_call(struct probe *p, int session_ready, json_t *state_delta)
{
    json_t *msg = hello_message();
    struct upstream_request req = {
        .app = "app", .user = "u1", .session = "s1",
        .session_ready = session_ready,
        .new_message = msg,
        .state_delta = state_delta,
        .streaming = 1,
    };
    int err = 1;
    p->call = upstream_call_start(&req, &probe_callbacks, p, &err);
    json_decref(msg);
    CHECK(p->call != NULL);
    CHECK_EQ(err, 0);
    return p->call;
}

/* Plays the script, runs one call until it ends, shuts down, joins the fake. */
static void run_one(struct fake *f, const struct reply *replies, int n,
                    struct upstream_config *cfg_or_null, struct probe *p, int session_ready)
{
    fake_start(f, replies, n);
    struct upstream_config cfg = default_config(f->port);
    if (cfg_or_null) {
        cfg_or_null->base_url = cfg.base_url;
        cfg = *cfg_or_null;
    }
    setup(&cfg);
    start_call(p, session_ready, NULL);
    CHECK(wait_until(probe_ended, p, WAIT_MS));
    CHECK(wait_until(no_live_transfers, NULL, WAIT_MS));
    teardown();
    fake_stop(f);
}

/* ---- tests ---- */

static void stream_relays_three_events_split_across_writes(void)
{
    static const struct reply replies[] = {
        {{W(CREATED)}},
        {{W(SSE_HEAD), CHUNK("data: {\"a\""), PAUSE(5), CHUNK(":1}\n\ndata: {\"b\""), PAUSE(5),
          CHUNK(":2}\r\n\r\n"), PAUSE(5), CHUNK("data: {\"c\":3}\n"), PAUSE(5), CHUNK("\n"),
          LAST_CHUNK}},
    };
    struct fake f;
    struct probe p = {0};
    run_one(&f, replies, 2, NULL, &p, 0);

    CHECK_STREQ(p.seq, "SREEEX");
    CHECK_EQ(p.session_ready, 1);
    CHECK_EQ(p.request_sent, 1);
    CHECK_EQ(p.events, 3);
    CHECK_STREQ(p.event[0], "{\"a\":1}");
    CHECK_STREQ(p.event[1], "{\"b\":2}");
    CHECK_STREQ(p.event[2], "{\"c\":3}");
    CHECK_EQ(p.ends, 1);
    CHECK_EQ(p.outcome, UPSTREAM_COMPLETED);
    CHECK_EQ(p.status, 200);
    CHECK_EQ(p.after_end, 0);

    CHECK_EQ(f.n_seen, 2);
    CHECK_STREQ(f.seen[0].method, "POST");
    CHECK_STREQ(f.seen[0].path, "/apps/app/users/u1/sessions/s1");
    CHECK_STREQ(f.seen[0].body, "{}");
    CHECK_STREQ(f.seen[1].method, "POST");
    CHECK_STREQ(f.seen[1].path, "/run_sse");
    CHECK_STREQ(f.seen[1].body,
                "{\"appName\":\"app\",\"userId\":\"u1\",\"sessionId\":\"s1\","
                "\"newMessage\":{\"role\":\"user\",\"parts\":[{\"text\":\"hi\"}]},\"streaming\":true}");
    CHECK(strcasestr(f.seen[1].head, "\r\nAccept: text/event-stream\r\n") != NULL);
    CHECK(strcasestr(f.seen[1].head, "\r\nContent-Type: application/json\r\n") != NULL);
    CHECK(strcasestr(f.seen[1].head, "\r\nExpect:") == NULL);
}

static void session_conflict_409_counts_as_ready(void)
{
    static const struct reply replies[] = {
        {{W("HTTP/1.1 409 Conflict\r\nContent-Length: 2\r\n\r\n{}")}},
        {{W(SSE_HEAD), CHUNK("data: {\"n\":1}\n\n"), LAST_CHUNK}},
    };
    struct fake f;
    struct probe p = {0};
    run_one(&f, replies, 2, NULL, &p, 0);
    CHECK_STREQ(p.seq, "SREX");
    CHECK_EQ(p.outcome, UPSTREAM_COMPLETED);
    CHECK_EQ(f.n_seen, 2);
}

static void session_create_failure_is_http_error(void)
{
    static const struct reply replies[] = {
        {{W("HTTP/1.1 422 Unprocessable\r\nContent-Length: 13\r\n\r\n{\"detail\":[]}")}},
    };
    struct fake f;
    struct probe p = {0};
    run_one(&f, replies, 1, NULL, &p, 0);
    CHECK_STREQ(p.seq, "X");
    CHECK_EQ(p.outcome, UPSTREAM_HTTP);
    CHECK_EQ(p.status, 422);
    CHECK_STREQ(p.message, "upstream answered 422: {\"detail\":[]}");
    CHECK_EQ(f.n_seen, 1);
}

static void run_404_creates_session_and_retries_once(void)
{
    static const struct reply replies[] = {
        {{W(CREATED)}},
        {{W(NOT_FOUND)}},
        {{W(CREATED)}},
        {{W(SSE_HEAD), CHUNK("data: {\"n\":1}\n\n"), LAST_CHUNK}},
    };
    struct fake f;
    struct probe p = {0};
    run_one(&f, replies, 4, NULL, &p, 0);
    CHECK_STREQ(p.seq, "SRSEX");
    CHECK_EQ(p.request_sent, 1);
    CHECK_EQ(p.outcome, UPSTREAM_COMPLETED);
    CHECK_EQ(f.n_seen, 4);
    CHECK_STREQ(f.seen[0].path, "/apps/app/users/u1/sessions/s1");
    CHECK_STREQ(f.seen[1].path, "/run_sse");
    CHECK_STREQ(f.seen[2].path, "/apps/app/users/u1/sessions/s1");
    CHECK_STREQ(f.seen[3].path, "/run_sse");
}

/* A JSON answer whose body ends with the connection. */
#define JSON_ANSWER(status, body) \
    "HTTP/1.1 " status "\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n" body
#define ONE_EVENT {{W(SSE_HEAD), CHUNK("data: {\"n\":1}\n\n"), LAST_CHUNK}}

/* A server without the path form (404 or 405) gets the body form, whose
 * answer names the session asked for. */
static void create_falls_back_to_body_form(void)
{
    static const char *const refusals[] = {
        JSON_ANSWER("404 Not Found", "{\"detail\":\"Not Found\"}"),
        JSON_ANSWER("405 Method Not Allowed", "{\"detail\":\"Method Not Allowed\"}"),
    };
    for (int i = 0; i < 2; i++) {
        const struct reply replies[] = {
            {{W(refusals[i])}},
            {{W(JSON_ANSWER("200 OK", "{\"id\":\"s1\",\"appName\":\"app\",\"state\":{}}"))}},
            ONE_EVENT,
        };
        struct fake f;
        struct probe p = {0};
        run_one(&f, replies, 3, NULL, &p, 0);
        CHECK_STREQ(p.seq, "SREX");
        CHECK_EQ(p.outcome, UPSTREAM_COMPLETED);
        CHECK_EQ(f.n_seen, 3);
        CHECK_STREQ(f.seen[0].path, "/apps/app/users/u1/sessions/s1");
        CHECK_STREQ(f.seen[0].body, "{}");
        CHECK_STREQ(f.seen[1].path, "/apps/app/users/u1/sessions");
        CHECK_STREQ(f.seen[1].body, "{\"sessionId\":\"s1\"}");
        CHECK_STREQ(f.seen[2].path, "/run_sse");
    }
}

/* A create answer naming another session (ADK JS ignores a body's
 * sessionId) fails the run: /run_sse would only answer 404. */
static void created_with_another_id_is_protocol_error(void)
{
    static const struct reply replies[] = {
        {{W(JSON_ANSWER("405 Method Not Allowed", "{}"))}},
        {{W(JSON_ANSWER("200 OK", "{\"id\":\"0b7c-random\",\"events\":[]}"))}},
    };
    struct fake f;
    struct probe p = {0};
    run_one(&f, replies, 2, NULL, &p, 0);
    CHECK_STREQ(p.seq, "X");
    CHECK_EQ(p.outcome, UPSTREAM_PROTOCOL);
    CHECK_STREQ(p.message, "the upstream created session \"0b7c-random\" when asked for \"s1\"");
    CHECK_EQ(f.n_seen, 2);
}

/* "Already exists" means ready in both dialects; any other 400 is an error. */
static void already_exists_400_is_ready_other_400_is_not(void)
{
    static const struct reply ready[] = {
        {{W(JSON_ANSWER("400 Bad Request", "{\"error\":\"Session already exists: s1\"}"))}},
        ONE_EVENT,
    };
    struct fake f;
    struct probe p = {0};
    run_one(&f, ready, 2, NULL, &p, 0);
    CHECK_STREQ(p.seq, "SREX");
    CHECK_EQ(p.outcome, UPSTREAM_COMPLETED);
    CHECK_EQ(f.n_seen, 2);

    static const struct reply refused[] = {
        {{W(JSON_ANSWER("400 Bad Request", "{\"error\":\"Invalid state\"}"))}},
    };
    struct probe q = {0};
    run_one(&f, refused, 1, NULL, &q, 0);
    CHECK_STREQ(q.seq, "X");
    CHECK_EQ(q.outcome, UPSTREAM_HTTP);
    CHECK_EQ(q.status, 400);
    CHECK_STREQ(q.message, "upstream answered 400: {\"error\":\"Invalid state\"}");
    CHECK_EQ(f.n_seen, 1);
}

/* A /run_sse 404 for a session thought ready (the upstream restarted)
 * re-creates it with the path form and retries. */
static void run_404_when_ready_recreates_by_path(void)
{
    static const struct reply replies[] = {
        {{W(NOT_FOUND)}},
        {{W(JSON_ANSWER("200 OK", "{\"id\":\"s1\"}"))}},
        ONE_EVENT,
    };
    struct fake f;
    struct probe p = {0};
    run_one(&f, replies, 3, NULL, &p, 1);
    CHECK_STREQ(p.seq, "RSEX");
    CHECK_EQ(p.outcome, UPSTREAM_COMPLETED);
    CHECK_EQ(f.n_seen, 3);
    CHECK_STREQ(f.seen[0].path, "/run_sse");
    CHECK_STREQ(f.seen[1].path, "/apps/app/users/u1/sessions/s1");
    CHECK_STREQ(f.seen[2].path, "/run_sse");
}

static void second_404_is_http_error(void)
{
    static const struct reply replies[] = {
        {{W(NOT_FOUND)}},
        {{W(CREATED)}},
        {{W(NOT_FOUND)}},
    };
    struct fake f;
    struct probe p = {0};
    run_one(&f, replies, 3, NULL, &p, 1);
    CHECK_STREQ(p.seq, "RSX");
    CHECK_EQ(p.outcome, UPSTREAM_HTTP);
    CHECK_EQ(p.status, 404);
    CHECK_STREQ(p.message, "upstream answered 404: {\"detail\":\"Session not found: s1\"}");
    CHECK_EQ(f.n_seen, 3);
}

#define TOO_MANY "HTTP/1.1 429 Too Many Requests\r\nContent-Length: 4\r\n\r\nslow"
#define BUSY "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy"

static void rate_limited_twice_then_completes(void)
{
    static const struct reply replies[] = {
        {{W(TOO_MANY)}},
        {{W(TOO_MANY)}},
        {{W(SSE_HEAD), CHUNK("data: {\"n\":1}\n\n"), LAST_CHUNK}},
    };
    struct fake f;
    struct probe p = {0};
    struct upstream_config cfg = default_config(0);
    cfg.retries = 3;
    cfg.retry_backoff_ms = 10;
    run_one(&f, replies, 3, &cfg, &p, 1);
    CHECK_STREQ(p.seq, "REX");
    CHECK_EQ(p.outcome, UPSTREAM_COMPLETED);
    CHECK_EQ(f.n_seen, 3);
    for (int i = 0; i < 3; i++)
        CHECK_STREQ(f.seen[i].path, "/run_sse");
}

static void unavailable_forever_is_rate_limited_after_retries(void)
{
    static const struct reply replies[] = {{{W(BUSY)}}, {{W(BUSY)}}, {{W(BUSY)}}};
    struct fake f;
    struct probe p = {0};
    struct upstream_config cfg = default_config(0);
    cfg.retries = 2;
    cfg.retry_backoff_ms = 10;
    run_one(&f, replies, 3, &cfg, &p, 1);
    CHECK_STREQ(p.seq, "RX");
    CHECK_EQ(p.outcome, UPSTREAM_RATE_LIMITED);
    CHECK_EQ(p.status, 503);
    CHECK_STREQ(p.message, "upstream answered 503 after 3 attempts: busy");
    CHECK_EQ(f.n_seen, 3);
}

static void retry_after_is_honoured(void)
{
    static const struct reply replies[] = {
        {{W("HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n")}},
        {{W(SSE_HEAD), CHUNK("data: {\"n\":1}\n\n"), LAST_CHUNK}},
    };
    struct fake f;
    struct probe p = {0};
    struct upstream_config cfg = default_config(0);
    cfg.retry_backoff_ms = 10;
    uint64_t t0 = mono_ms();
    run_one(&f, replies, 2, &cfg, &p, 1);
    uint64_t elapsed = mono_ms() - t0;
    CHECK_EQ(p.outcome, UPSTREAM_COMPLETED);
    CHECK(elapsed >= 950); /* the 1 s of Retry-After, not the 10 ms backoff */
    CHECK_EQ(f.n_seen, 2);
}

static void retry_after_beyond_run_budget_gives_up_at_once(void)
{
    static const struct reply replies[] = {
        {{W("HTTP/1.1 429 Too Many Requests\r\nRetry-After: 60\r\nContent-Length: 4\r\n\r\nslow")}},
    };
    struct fake f;
    struct probe p = {0};
    struct upstream_config cfg = default_config(0);
    cfg.run_timeout_ms = 2000;
    uint64_t t0 = mono_ms();
    run_one(&f, replies, 1, &cfg, &p, 1);
    CHECK(mono_ms() - t0 < 1500);
    CHECK_EQ(p.outcome, UPSTREAM_RATE_LIMITED);
    CHECK_EQ(p.status, 429);
    CHECK_STREQ(p.message, "upstream answered 429 after 1 attempts: slow");
    CHECK_EQ(f.n_seen, 1);
}

static void server_error_is_http_with_excerpt(void)
{
    static const struct reply replies[] = {
        {{W("HTTP/1.1 500 Internal Server Error\r\nContent-Length: 14\r\n\r\ninternal\nboom\n")}},
    };
    struct fake f;
    struct probe p = {0};
    run_one(&f, replies, 1, NULL, &p, 1);
    CHECK_STREQ(p.seq, "RX");
    CHECK_EQ(p.outcome, UPSTREAM_HTTP);
    CHECK_EQ(p.status, 500);
    CHECK_STREQ(p.message, "upstream answered 500: internal boom");
}

static void long_error_body_is_cut_to_200_bytes(void)
{
    static char head_and_body[2048];
    static struct reply replies[1];
    int n = snprintf(head_and_body, sizeof(head_and_body),
                     "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 1000\r\n\r\n");
    memset(head_and_body + n, 'x', 1000);
    head_and_body[n + 1000] = '\0';
    replies[0] = (struct reply){{W(head_and_body)}};
    struct fake f;
    struct probe p = {0};
    run_one(&f, replies, 1, NULL, &p, 1);
    CHECK_EQ(p.outcome, UPSTREAM_HTTP);
    CHECK_EQ(p.status, 502);
    CHECK_EQ(strlen(p.message), strlen("upstream answered 502: ") + 200);
}

static void error_frame_is_agent_error(void)
{
    static const struct reply replies[] = {
        {{W(SSE_HEAD), CHUNK("data: {\"n\":1}\n\n"),
          CHUNK("data: {\"error\":\"ValueError: boom\",\"error_details\":{\"error_type\":\"ValueError\"}}\n\n"),
          LAST_CHUNK}},
    };
    struct fake f;
    struct probe p = {0};
    run_one(&f, replies, 1, NULL, &p, 1);
    CHECK_STREQ(p.seq, "REX");
    CHECK_EQ(p.outcome, UPSTREAM_AGENT_ERROR);
    CHECK_EQ(p.has_detail, 1);
    CHECK_STREQ(p.detail_error, "ValueError: boom");
    CHECK_STREQ(p.message, "agent error: ValueError: boom");
}

/* No parameter can change the upstream path: bytes outside the unreserved
 * set are percent-encoded, and dot segments reach the upstream as they are
 * (libcurl would otherwise resolve "/apps/../users" to "/users"). */
static void parameters_cannot_change_the_upstream_path(void)
{
    static const struct reply replies[] = {
        {{W(JSON_ANSWER("200 OK", "{}"))}},
        ONE_EVENT,
    };
    struct fake f;
    fake_start(&f, replies, 2);
    struct upstream_config cfg = default_config(f.port);
    setup(&cfg);
    json_t *msg = hello_message();
    struct upstream_request req = {
        .app = "..", .user = "a b/c?d#%", .session = "s1", .new_message = msg, .streaming = 1,
    };
    struct probe p = {0};
    int err = 1;
    p.call = upstream_call_start(&req, &probe_callbacks, &p, &err);
    json_decref(msg);
    CHECK(p.call != NULL);
    CHECK(wait_until(probe_ended, &p, WAIT_MS));
    CHECK(wait_until(no_live_transfers, NULL, WAIT_MS));
    teardown();
    fake_stop(&f);
    CHECK_EQ(p.outcome, UPSTREAM_COMPLETED);
    CHECK_EQ(f.n_seen, 2);
    CHECK_STREQ(f.seen[0].path, "/apps/../users/a%20b%2Fc%3Fd%23%25/sessions/s1");
    CHECK_STREQ(f.seen[1].path, "/run_sse");
}

/* ADK's model errors are ordinary events with errorCode/errorMessage and a
 * normal end of stream: relayed, then the run fails with the error. */
static void event_with_error_code_is_relayed_then_agent_error(void)
{
    static const struct reply replies[] = {
        {{W(SSE_HEAD), CHUNK("data: {\"n\":1}\n\n"),
          CHUNK("data: {\"id\":\"e2\",\"errorCode\":\"UNKNOWN_ERROR\","
                "\"errorMessage\":\"model exploded\",\"timestamp\":1764000000123}\n\n"),
          CHUNK("data: {\"errorCode\":\"LATER\",\"errorMessage\":\"second\"}\n\n"),
          LAST_CHUNK}},
    };
    struct fake f;
    struct probe p = {0};
    run_one(&f, replies, 1, NULL, &p, 1);
    CHECK_STREQ(p.seq, "REEEX");
    CHECK_STREQ(p.event[1], "{\"id\":\"e2\",\"errorCode\":\"UNKNOWN_ERROR\","
                            "\"errorMessage\":\"model exploded\",\"timestamp\":1764000000123}");
    CHECK_EQ(p.outcome, UPSTREAM_AGENT_ERROR);
    CHECK_EQ(p.has_detail, 1);
    CHECK_STREQ(p.detail_json, "{\"errorCode\":\"UNKNOWN_ERROR\",\"errorMessage\":\"model exploded\"}");
    CHECK_STREQ(p.message, "agent error: model exploded");
}

/* null error fields are no error; an errorCode alone is one. */
static void null_error_fields_complete_error_code_alone_fails(void)
{
    static const struct reply ok[] = {
        {{W(SSE_HEAD), CHUNK("data: {\"errorCode\":null,\"errorMessage\":null}\n\n"),
          LAST_CHUNK}},
    };
    struct fake f;
    struct probe p = {0};
    run_one(&f, ok, 1, NULL, &p, 1);
    CHECK_STREQ(p.seq, "REX");
    CHECK_EQ(p.outcome, UPSTREAM_COMPLETED);

    static const struct reply code_only[] = {
        {{W(SSE_HEAD), CHUNK("data: {\"errorCode\":\"SAFETY\"}\n\n"), LAST_CHUNK}},
    };
    struct probe q = {0};
    run_one(&f, code_only, 1, NULL, &q, 1);
    CHECK_STREQ(q.seq, "REX");
    CHECK_EQ(q.outcome, UPSTREAM_AGENT_ERROR);
    CHECK_STREQ(q.detail_json, "{\"errorCode\":\"SAFETY\"}");
    CHECK_STREQ(q.message, "agent error: SAFETY");
}

/* ADK JS ends with {} when something that is not an Error was thrown. */
static void empty_object_frame_is_agent_error(void)
{
    static const struct reply replies[] = {
        {{W(SSE_HEAD), CHUNK("data: {\"n\":1}\n\n"), CHUNK("data: {}\n\n"), LAST_CHUNK}},
    };
    struct fake f;
    struct probe p = {0};
    run_one(&f, replies, 1, NULL, &p, 1);
    CHECK_STREQ(p.seq, "REX");
    CHECK_EQ(p.events, 1);
    CHECK_EQ(p.outcome, UPSTREAM_AGENT_ERROR);
    CHECK_STREQ(p.detail_json, "{}");
    CHECK_STREQ(p.message, "agent error: the agent failed without a message");
}

static void invalid_json_error_frame_keeps_its_raw_text(void)
{
    static const struct reply replies[] = {
        {{W(SSE_HEAD), CHUNK("data: {\"error\": \"it's \"bad\"\"}\n\n"), LAST_CHUNK}},
    };
    struct fake f;
    struct probe p = {0};
    run_one(&f, replies, 1, NULL, &p, 1);
    CHECK_STREQ(p.seq, "RX");
    CHECK_EQ(p.outcome, UPSTREAM_AGENT_ERROR);
    CHECK_EQ(p.has_detail, 1);
    CHECK_STREQ(p.detail_error, "{\"error\": \"it's \"bad\"\"}");
}

static void event_with_content_and_error_is_relayed(void)
{
    static const struct reply replies[] = {
        {{W(SSE_HEAD), CHUNK("data: {\"error\":\"x\",\"content\":{}}\n\n"), LAST_CHUNK}},
    };
    struct fake f;
    struct probe p = {0};
    run_one(&f, replies, 1, NULL, &p, 1);
    CHECK_STREQ(p.seq, "REX");
    CHECK_EQ(p.outcome, UPSTREAM_COMPLETED);
    CHECK_STREQ(p.event[0], "{\"error\":\"x\",\"content\":{}}");
}

static void non_json_frame_is_protocol_and_not_relayed(void)
{
    static const struct reply replies[] = {
        {{W(SSE_HEAD), CHUNK("data: {\"n\":1}\n\ndata: hello\n\ndata: {\"n\":2}\n\n"), LAST_CHUNK}},
    };
    struct fake f;
    struct probe p = {0};
    run_one(&f, replies, 1, NULL, &p, 1);
    CHECK_STREQ(p.seq, "REX");
    CHECK_EQ(p.events, 1);
    CHECK_EQ(p.outcome, UPSTREAM_PROTOCOL);
    CHECK_STREQ(p.message, "upstream sent a frame that is not JSON");
}

static void non_object_frame_is_protocol(void)
{
    static const struct reply replies[] = {
        {{W(SSE_HEAD), CHUNK("data: [1,2]\n\n"), LAST_CHUNK}},
    };
    struct fake f;
    struct probe p = {0};
    run_one(&f, replies, 1, NULL, &p, 1);
    CHECK_STREQ(p.seq, "RX");
    CHECK_EQ(p.outcome, UPSTREAM_PROTOCOL);
}

static void chunked_body_cut_is_protocol(void)
{
    static const struct reply replies[] = {
        {{W(SSE_HEAD), CHUNK("data: {\"n\":1}\n\n")}}, /* closes without the last chunk */
    };
    struct fake f;
    struct probe p = {0};
    run_one(&f, replies, 1, NULL, &p, 1);
    CHECK_STREQ(p.seq, "REX");
    CHECK_EQ(p.outcome, UPSTREAM_PROTOCOL);
    CHECK_STREQ(p.message, "upstream connection cut before the end of the body");
}

static void stream_ending_inside_a_frame_is_protocol(void)
{
    static const struct reply replies[] = {
        {{W("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
            "data: {\"n\":1}\n\ndata: {\"n\"")}},
    };
    struct fake f;
    struct probe p = {0};
    run_one(&f, replies, 1, NULL, &p, 1);
    CHECK_STREQ(p.seq, "REX");
    CHECK_EQ(p.outcome, UPSTREAM_PROTOCOL);
    CHECK_STREQ(p.message, "stream ended inside a frame");
}

static void close_delimited_stream_completes(void)
{
    static const struct reply replies[] = {
        {{W("HTTP/1.1 200 OK\r\ncontent-type: TEXT/Event-Stream\r\nConnection: close\r\n\r\n"
            "data: {\"n\":1}\r\n\r\n")}},
    };
    struct fake f;
    struct probe p = {0};
    run_one(&f, replies, 1, NULL, &p, 1);
    CHECK_STREQ(p.seq, "REX");
    CHECK_EQ(p.outcome, UPSTREAM_COMPLETED);
}

static void wrong_content_type_is_protocol(void)
{
    static const struct reply replies[] = {
        {{W("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")}},
    };
    struct fake f;
    struct probe p = {0};
    run_one(&f, replies, 1, NULL, &p, 1);
    CHECK_STREQ(p.seq, "RX");
    CHECK_EQ(p.outcome, UPSTREAM_PROTOCOL);
    CHECK_STREQ(p.message, "unexpected content type \"application/json\" from the upstream");
}

static void oversized_frame_is_protocol(void)
{
    static const struct reply replies[] = {
        {{W(SSE_HEAD), CHUNK("data: {\"text\":\"0123456789012345678901234567890123456789\"}\n\n"),
          LAST_CHUNK}},
    };
    struct fake f;
    struct probe p = {0};
    struct upstream_config cfg = default_config(0);
    cfg.max_event_bytes = 16;
    run_one(&f, replies, 1, &cfg, &p, 1);
    CHECK_STREQ(p.seq, "RX");
    CHECK_EQ(p.outcome, UPSTREAM_PROTOCOL);
    CHECK_STREQ(p.message, "upstream frame larger than 16 bytes");
}

static void connection_refused_is_unreachable(void)
{
    struct upstream_config cfg = default_config(closed_port());
    setup(&cfg);
    struct probe p = {0}, q = {0};
    start_call(&p, 1, NULL);
    start_call(&q, 0, NULL);
    CHECK(wait_until(probe_ended, &p, WAIT_MS));
    CHECK(wait_until(probe_ended, &q, WAIT_MS));
    CHECK(wait_until(no_live_transfers, NULL, WAIT_MS));
    teardown();
    CHECK_STREQ(p.seq, "RX"); /* the request was handed over, then failed */
    CHECK_EQ(p.outcome, UPSTREAM_UNREACHABLE);
    CHECK_EQ(p.status, 0);
    CHECK_STREQ(q.seq, "X"); /* failed while creating the session */
    CHECK_EQ(q.outcome, UPSTREAM_UNREACHABLE);
    /* The upstream's address is for the log, not for browsers. */
    CHECK_STREQ(p.message, "cannot reach the upstream: Couldn't connect to server");
    CHECK(strstr(p.log_detail, "127.0.0.1") != NULL);
    CHECK(strstr(q.log_detail, "127.0.0.1") != NULL);
}

static void hang_after_headers_times_out_idle(void)
{
    static const struct reply replies[] = {
        {{W(SSE_HEAD), CHUNK("data: {\"n\":1}\n\n"), AWAIT_CLOSE}},
    };
    struct fake f;
    struct probe p = {0};
    struct upstream_config cfg = default_config(0);
    cfg.idle_timeout_ms = 200;
    cfg.first_event_timeout_ms = 3000;
    uint64_t t0 = mono_ms();
    run_one(&f, replies, 1, &cfg, &p, 1);
    CHECK(mono_ms() - t0 >= 200);
    CHECK_STREQ(p.seq, "REX");
    CHECK_EQ(p.outcome, UPSTREAM_TIMED_OUT);
    CHECK_STREQ(p.phase, "idle");
    CHECK_EQ(atomic_load(&f.client_closes), 1);
}

static void no_event_times_out_first_event_when_shorter(void)
{
    static const struct reply replies[] = {{{W(SSE_HEAD), AWAIT_CLOSE}}};
    struct fake f;
    struct probe p = {0};
    struct upstream_config cfg = default_config(0);
    cfg.idle_timeout_ms = 1000;
    cfg.first_event_timeout_ms = 150;
    run_one(&f, replies, 1, &cfg, &p, 1);
    CHECK_STREQ(p.seq, "RX");
    CHECK_EQ(p.outcome, UPSTREAM_TIMED_OUT);
    CHECK_STREQ(p.phase, "first_event");
}

static void no_event_times_out_idle_when_shorter(void)
{
    static const struct reply replies[] = {{{W(SSE_HEAD), AWAIT_CLOSE}}};
    struct fake f;
    struct probe p = {0};
    struct upstream_config cfg = default_config(0);
    cfg.idle_timeout_ms = 150;
    cfg.first_event_timeout_ms = 1000;
    run_one(&f, replies, 1, &cfg, &p, 1);
    CHECK_EQ(p.outcome, UPSTREAM_TIMED_OUT);
    CHECK_STREQ(p.phase, "idle");
}

static void long_run_times_out_total(void)
{
    static const struct reply replies[] = {
        {{W(SSE_HEAD), CHUNK("data: {\"n\":1}\n\n"), PAUSE(100), CHUNK("data: {\"n\":2}\n\n"),
          AWAIT_CLOSE}},
    };
    struct fake f;
    struct probe p = {0};
    struct upstream_config cfg = default_config(0);
    cfg.idle_timeout_ms = 0;
    cfg.first_event_timeout_ms = 0;
    cfg.run_timeout_ms = 300;
    run_one(&f, replies, 1, &cfg, &p, 1);
    CHECK_STREQ(p.seq, "REEX");
    CHECK_EQ(p.outcome, UPSTREAM_TIMED_OUT);
    CHECK_STREQ(p.phase, "total");
}

static void cancel_inside_on_event_stops_everything(void)
{
    static const struct reply replies[] = {
        {{W(SSE_HEAD), CHUNK("data: {\"n\":1}\n\ndata: {\"n\":2}\n\n"), PAUSE(20),
          CHUNK("data: {\"n\":3}\n\n"), AWAIT_CLOSE}},
    };
    struct fake f;
    struct probe p = {0};
    p.cancel_on_event = 1;
    fake_start(&f, replies, 1);
    struct upstream_config cfg = default_config(f.port);
    setup(&cfg);
    start_call(&p, 1, NULL);
    CHECK(wait_until(client_closed, &f, WAIT_MS)); /* torn down, not at shutdown */
    CHECK(wait_until(no_live_transfers, NULL, WAIT_MS));
    CHECK_EQ(upstream_live_transfers(), 0);
    teardown();
    fake_stop(&f);
    CHECK_STREQ(p.seq, "RE");
    CHECK_EQ(p.events, 1);
    CHECK_EQ(p.ends, 0);
    CHECK_EQ(atomic_load(&f.client_closes), 1);
}

static void cancel_right_after_start_runs_no_callback(void)
{
    struct fake f;
    fake_start(&f, NULL, 0);
    struct upstream_config cfg = default_config(f.port);
    setup(&cfg);
    struct probe p = {0};
    start_call(&p, 1, NULL);
    CHECK_EQ(upstream_live_transfers(), 1);
    upstream_call_cancel(p.call);
    CHECK(wait_until(no_live_transfers, NULL, WAIT_MS));
    teardown();
    fake_stop(&f);
    CHECK_STREQ(p.seq, "");
}

static int got_event(void *arg)
{
    return ((struct probe *)arg)->events > 0;
}

/* A drained call runs no callback again, its response is read to its end
 * (so its connection is kept alive and reused), and the same session's next
 * call sends only after that. */
static void drained_call_is_read_to_its_end_before_the_next_call_sends(void)
{
    static const struct reply replies[] = {
        {{W(SSE_HEAD), CHUNK("data: {\"n\":1}\n\n"), PAUSE(300), CHUNK("data: {\"n\":2}\n\n"),
          LAST_CHUNK, KEEP}},
        {{W(SSE_HEAD), CHUNK("data: {\"n\":3}\n\n"), LAST_CHUNK, KEEP}},
    };
    struct fake f;
    struct probe p = {0}, q = {0};
    fake_start(&f, replies, 2);
    struct upstream_config cfg = default_config(f.port);
    cfg.drain_ms = 3000;
    setup(&cfg);
    start_call(&p, 1, NULL);
    CHECK(wait_until(got_event, &p, WAIT_MS));
    upstream_call_drain(p.call);
    start_call(&q, 1, NULL);
    CHECK_EQ(upstream_live_transfers(), 1); /* the drain's; q waits */
    CHECK(wait_until(probe_ended, &q, WAIT_MS));
    CHECK(wait_until(no_live_transfers, NULL, WAIT_MS));
    teardown();
    fake_stop(&f);
    CHECK_STREQ(p.seq, "RE");
    CHECK_STREQ(q.seq, "REX");
    CHECK_EQ(q.outcome, UPSTREAM_COMPLETED);
    CHECK_STREQ(q.event[0], "{\"n\":3}");
    CHECK_EQ(f.n_seen, 2);
    CHECK_EQ(f.connections, 1);
}

/* A drain that outlasts drain_ms is cut; the waiting call then sends. */
static void drain_past_its_limit_is_cut_then_the_next_call_sends(void)
{
    static const struct reply replies[] = {
        {{W(SSE_HEAD), CHUNK("data: {\"n\":1}\n\n"), AWAIT_CLOSE}},
        {{W(SSE_HEAD), CHUNK("data: {\"n\":3}\n\n"), LAST_CHUNK, KEEP}},
    };
    struct fake f;
    struct probe p = {0}, q = {0};
    fake_start(&f, replies, 2);
    struct upstream_config cfg = default_config(f.port);
    cfg.drain_ms = 200;
    setup(&cfg);
    start_call(&p, 1, NULL);
    CHECK(wait_until(got_event, &p, WAIT_MS));
    uint64_t t0 = mono_ms();
    upstream_call_drain(p.call);
    start_call(&q, 1, NULL);
    CHECK(!wait_until(client_closed, &f, 100)); /* the drain goes on, q waits */
    CHECK_EQ(q.request_sent, 0);
    CHECK_EQ(upstream_live_transfers(), 1);
    CHECK(wait_until(client_closed, &f, WAIT_MS));
    CHECK(mono_ms() - t0 >= 190);
    CHECK(wait_until(probe_ended, &q, WAIT_MS));
    CHECK(wait_until(no_live_transfers, NULL, WAIT_MS));
    teardown();
    fake_stop(&f);
    CHECK_STREQ(p.seq, "RE");
    CHECK_STREQ(q.seq, "REX");
    CHECK_EQ(q.outcome, UPSTREAM_COMPLETED);
    CHECK_EQ(f.connections, 2);
}

/* Without drain_ms, draining is cancelling: the connection closes at once
 * and the next call does not wait. */
static void drain_without_drain_ms_cancels(void)
{
    static const struct reply replies[] = {
        {{W(SSE_HEAD), CHUNK("data: {\"n\":1}\n\n"), AWAIT_CLOSE}},
    };
    struct fake f;
    struct probe p = {0};
    fake_start(&f, replies, 1);
    struct upstream_config cfg = default_config(f.port);
    setup(&cfg);
    start_call(&p, 1, NULL);
    CHECK(wait_until(got_event, &p, WAIT_MS));
    uint64_t t0 = mono_ms();
    upstream_call_drain(p.call);
    CHECK(wait_until(client_closed, &f, WAIT_MS));
    CHECK(mono_ms() - t0 < 1000);
    CHECK(wait_until(no_live_transfers, NULL, WAIT_MS));
    teardown();
    fake_stop(&f);
    CHECK_STREQ(p.seq, "RE");
}

/* Keep-alive: the second call, started from the first one's on_end, reuses
 * the connection. */
static struct probe *second_probe;

static void start_second_call(struct probe *p)
{
    RC_UNUSED(p);
    start_call(second_probe, 1, NULL);
}

static void connection_is_reused_between_calls(void)
{
    static const struct reply replies[] = {
        {{W(SSE_HEAD), CHUNK("data: {\"n\":1}\n\n"), LAST_CHUNK, KEEP}},
        {{W(SSE_HEAD), CHUNK("data: {\"n\":2}\n\n"), LAST_CHUNK, KEEP}},
    };
    struct fake f;
    struct probe p = {0}, q = {0};
    second_probe = &q;
    p.on_end_hook = start_second_call;
    fake_start(&f, replies, 2);
    struct upstream_config cfg = default_config(f.port);
    setup(&cfg);
    start_call(&p, 1, NULL);
    CHECK(wait_until(probe_ended, &p, WAIT_MS));
    CHECK(wait_until(probe_ended, &q, WAIT_MS));
    CHECK(wait_until(no_live_transfers, NULL, WAIT_MS));
    teardown(); /* closes the cached connection */
    fake_stop(&f);
    CHECK_STREQ(p.seq, "REX");
    CHECK_STREQ(q.seq, "REX");
    CHECK_EQ(q.outcome, UPSTREAM_COMPLETED);
    CHECK_STREQ(q.event[0], "{\"n\":2}");
    CHECK_EQ(f.n_seen, 2);
    CHECK_EQ(f.connections, 1);
    CHECK_EQ(atomic_load(&f.client_closes), 1);
}

/* Easy handles are reused (curl_uv keeps finished ones, reset): a create
 * request made with the handle a /run_sse used carries nothing of it, and
 * the next /run_sse nothing of the create. */
static void reused_easy_handle_carries_nothing_over(void)
{
    static const struct reply replies[] = {
        {{W(SSE_HEAD), CHUNK("data: {\"n\":1}\n\n"), LAST_CHUNK, KEEP}},
        {{W(CREATED), KEEP}},
        {{W(SSE_HEAD), CHUNK("data: {\"n\":2}\n\n"), LAST_CHUNK, KEEP}},
    };
    struct fake f;
    struct probe p = {0}, q = {0};
    fake_start(&f, replies, 3);
    struct upstream_config cfg = default_config(f.port);
    setup(&cfg);
    json_t *delta = json_pack("{s:i}", "k", 1);
    start_call(&p, 1, delta);
    json_decref(delta);
    CHECK(wait_until(probe_ended, &p, WAIT_MS));
    CHECK(wait_until(no_live_transfers, NULL, WAIT_MS));
    start_call(&q, 0, NULL);
    CHECK(wait_until(probe_ended, &q, WAIT_MS));
    teardown();
    fake_stop(&f);
    CHECK_EQ(p.outcome, UPSTREAM_COMPLETED);
    CHECK_EQ(q.outcome, UPSTREAM_COMPLETED);
    CHECK_STREQ(q.event[0], "{\"n\":2}");
    CHECK_EQ(f.n_seen, 3);
    CHECK_EQ(f.connections, 1);
    CHECK_STREQ(f.seen[1].path, "/apps/app/users/u1/sessions/s1");
    CHECK_STREQ(f.seen[1].body, "{}");
    CHECK(strcasestr(f.seen[1].head, "Accept: application/json\r\n") != NULL);
    CHECK(strcasestr(f.seen[1].head, "text/event-stream") == NULL);
    CHECK_STREQ(f.seen[2].path, "/run_sse");
    CHECK(strcasestr(f.seen[2].head, "Accept: text/event-stream\r\n") != NULL);
    CHECK(strcasestr(f.seen[2].head, "Content-Length: 118\r\n") != NULL);
    CHECK_STREQ(f.seen[2].body,
                "{\"appName\":\"app\",\"userId\":\"u1\",\"sessionId\":\"s1\","
                "\"newMessage\":{\"role\":\"user\",\"parts\":[{\"text\":\"hi\"}]},"
                "\"streaming\":true}");
}

/* Open descriptors of this process. */
static int open_descriptors(void)
{
    int n = 0;
    DIR *dir = opendir("/proc/self/fd");
    if (dir == NULL)
        return -1;
    while (readdir(dir) != NULL)
        n++;
    closedir(dir);
    return n;
}

/* Shutdown leaves no descriptor behind: not libcurl's cached connection,
 * not curl_uv's epoll set. */
static void shutdown_closes_every_descriptor(void)
{
    static const struct reply replies[] = {
        {{W(SSE_HEAD), CHUNK("data: {\"n\":1}\n\n"), LAST_CHUNK, KEEP}},
    };
    int before = open_descriptors();
    struct fake f;
    struct probe p = {0};
    fake_start(&f, replies, 1);
    struct upstream_config cfg = default_config(f.port);
    setup(&cfg);
    start_call(&p, 1, NULL);
    CHECK(wait_until(probe_ended, &p, WAIT_MS));
    CHECK(wait_until(no_live_transfers, NULL, WAIT_MS));
    teardown();
    fake_stop(&f);
    CHECK_EQ(p.outcome, UPSTREAM_COMPLETED);
    CHECK_EQ(atomic_load(&f.client_closes), 1);
    CHECK_EQ(open_descriptors(), before);
}

/* A call started from inside another call's on_event (libcurl on the stack)
 * still runs. */
static void start_inside_on_event(struct probe *p)
{
    RC_UNUSED(p);
    if (second_probe->call == NULL)
        start_call(second_probe, 1, NULL);
}

static void call_started_inside_on_event_runs(void)
{
    static const struct reply replies[] = {
        {{W(SSE_HEAD), CHUNK("data: {\"n\":1}\n\n"), LAST_CHUNK}},
        {{W(SSE_HEAD), CHUNK("data: {\"n\":2}\n\n"), LAST_CHUNK}},
    };
    struct fake f;
    struct probe p = {0}, q = {0};
    second_probe = &q;
    p.on_event_hook = start_inside_on_event;
    fake_start(&f, replies, 2);
    struct upstream_config cfg = default_config(f.port);
    setup(&cfg);
    start_call(&p, 1, NULL);
    CHECK(wait_until(probe_ended, &p, WAIT_MS));
    CHECK(wait_until(probe_ended, &q, WAIT_MS));
    CHECK(wait_until(no_live_transfers, NULL, WAIT_MS));
    teardown();
    fake_stop(&f);
    CHECK_STREQ(p.seq, "REX");
    CHECK_STREQ(q.seq, "REX");
    CHECK_EQ(q.outcome, UPSTREAM_COMPLETED);
    CHECK_EQ(f.n_seen, 2);
}

/* The upstream drops a kept-alive connection just as a request arrives on it
 * (the race with an idle-connection timeout): the request is sent again on a
 * fresh connection, whether the drop is a reset or a plain close. */
static void dropped_kept_alive_connection_is_retried(int reset)
{
    static const struct reply reset_replies[] = {
        {{W(CREATED), KEEP}},
        {{RESET}},
        {{W(SSE_HEAD), CHUNK("data: {\"n\":1}\n\n"), LAST_CHUNK}},
    };
    static const struct reply close_replies[] = {
        {{W(CREATED), KEEP}},
        {{{ACT_END, NULL, 0}}},
        {{W(SSE_HEAD), CHUNK("data: {\"n\":1}\n\n"), LAST_CHUNK}},
    };
    struct fake f;
    struct probe p = {0};
    run_one(&f, reset ? reset_replies : close_replies, 3, NULL, &p, 0);
    CHECK_STREQ(p.seq, "SREX");
    CHECK_EQ(p.outcome, UPSTREAM_COMPLETED);
    CHECK_EQ(f.n_seen, 3);
    CHECK_STREQ(f.seen[1].path, "/run_sse");
    CHECK_STREQ(f.seen[2].path, "/run_sse");
    CHECK_EQ(f.connections, 2);
}

static void reset_kept_alive_connection_is_retried(void)
{
    dropped_kept_alive_connection_is_retried(1);
}

static void closed_kept_alive_connection_is_retried(void)
{
    dropped_kept_alive_connection_is_retried(0);
}

static void state_delta_is_sent(void)
{
    static const struct reply replies[] = {
        {{W(SSE_HEAD), CHUNK("data: {\"n\":1}\n\n"), LAST_CHUNK}},
    };
    struct fake f;
    struct probe p = {0};
    fake_start(&f, replies, 1);
    struct upstream_config cfg = default_config(f.port);
    setup(&cfg);
    json_t *delta = json_pack("{s:i}", "k", 1);
    start_call(&p, 1, delta);
    json_decref(delta);
    CHECK(wait_until(probe_ended, &p, WAIT_MS));
    teardown();
    fake_stop(&f);
    CHECK_EQ(p.outcome, UPSTREAM_COMPLETED);
    CHECK_STREQ(f.seen[0].body,
                "{\"appName\":\"app\",\"userId\":\"u1\",\"sessionId\":\"s1\","
                "\"newMessage\":{\"role\":\"user\",\"parts\":[{\"text\":\"hi\"}]},\"streaming\":true,"
                "\"stateDelta\":{\"k\":1}}");
}

static void start_rejects_missing_message(void)
{
    struct upstream_config cfg = default_config(closed_port());
    setup(&cfg);
    struct upstream_request req = {.app = "app", .user = "u1", .session = "s1", .streaming = 1};
    struct probe p = {0};
    int err = 0;
    CHECK(upstream_call_start(&req, &probe_callbacks, &p, &err) == NULL);
    CHECK_EQ(err, -EINVAL);
    CHECK_EQ(upstream_live_transfers(), 0);
    teardown();
}

/* ---- the fast frame check ---- */

/* What the full check (jansson) would do with a frame: 1 relay it. */
static int jansson_relays(const char *data, size_t len)
{
    json_error_t error;
    json_t *frame = json_loadb(data, len, JSON_DECODE_ANY, &error);
    if (frame == NULL)
        return 0;
    int relay = json_is_object(frame) && json_object_size(frame) > 0;
    if (relay && (json_object_get(frame, "error") || json_object_get(frame, "errorCode") ||
                  json_object_get(frame, "errorMessage")))
        relay = 0; /* an error frame, or an event whose error is noted */
    json_decref(frame);
    return relay;
}

static void fast_frame_check_is_exact_where_sure(void)
{
    static const struct {
        const char *text;
        int sure;
    } cases[] = {
        {"{\"id\":\"e5c8\",\"timestamp\":1796194498.743616,\"content\":{\"role\":\"model\","
         "\"parts\":[{\"text\":\"event 0xxx\"}]},\"partial\":true,\"actions\":{\"stateDelta\":{}},"
         "\"customMetadata\":{\"seq\":0,\"sent_at_us\":1796194498743616}}", 1},
        {"{}", 0},                       /* ADK JS's error frame for a non-Error throw */
        {"{\"a\":{}}", 1},
        {" {\"a\" : [1, 2.5e10, -0, 0.5E-3, true, false, null, \"x\\n\\u00e9\\\"\"] }\r\n", 1},
        {"{\"a\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"}", 1}, /* é € and an emoji */
        {"{\"x\":{\"error\":1}}", 1},  /* only a top-level error counts */
        {"{\"errors\":1}", 1},
        {"{\"errorCodes\":1,\"errorMessages\":2}", 1},
        {"{\"content\":{},\"errorCode\":\"X\"}", 0}, /* an event with an error */
        {"{\"errorMessage\":\"boom\"}", 0},
        {"{\"error\":\"boom\"}", 0},     /* jansson judges error frames */
        {"{\"content\":{},\"error\":null}", 0},
        {"{\"\\u0065rror\":\"boom\"}", 0}, /* an escaped name might be "error" */
        {"[1]", 0},
        {"\"text\"", 0},
        {"", 0},
        {"{", 0},
        {"{\"a\":1} x", 0},
        {"{\"a\":1,}", 0},
        {"{\"a\":01}", 0},
        {"{\"a\":1.}", 0},
        {"{\"a\":-}", 0},
        {"{\"a\":12345678901234567890}", 0},
        {"{\"a\":1e400}", 0},
        {"{\"a\":tru}", 0},
        {"{\"a\":\"\\u0000\"}", 0},
        {"{\"a\":\"\\ud83d\\ude00\"}", 0},
        {"{\"a\":\"\\x\"}", 0},
        {"{\"a\":\"\t\"}", 0},
        {"{\"a\":\"\xff\"}", 0},
        {"{\"a\":\"\xc0\xaf\"}", 0},         /* overlong */
        {"{\"a\":\"\xed\xa0\x80\"}", 0},     /* a surrogate */
        {"{\"a\":\"\xf4\x90\x80\x80\"}", 0}, /* past U+10FFFF */
        {"{\"a\":\"\xe2\x82\"}", 0},         /* cut short */
        {"{\"a\" 1}", 0},
        {"{a:1}", 0},
    };
    for (size_t i = 0; i < RC_ARRAY_SIZE(cases); i++) {
        size_t len = strlen(cases[i].text);
        int fast = frame_scan_is_plain_object(cases[i].text, len);
        if (fast != cases[i].sure)
            fprintf(stderr, "  case %zu: %s\n", i, cases[i].text);
        CHECK_EQ(fast, cases[i].sure);
        if (fast)
            CHECK_EQ(jansson_relays(cases[i].text, len), 1);
    }
    /* {"a":[[[…]]]} nested past the scanner's depth: left to jansson */
    char deep[200];
    size_t n = (size_t)snprintf(deep, sizeof(deep), "{\"a\":");
    for (int i = 0; i < 80; i++)
        deep[n++] = '[';
    for (int i = 0; i < 80; i++)
        deep[n++] = ']';
    deep[n++] = '}';
    CHECK_EQ(frame_scan_is_plain_object(deep, n), 0);
    CHECK_EQ(jansson_relays(deep, n), 1);
}

/* Mutations of real frames: whenever the fast check is sure, jansson agrees
 * (the converse need not hold: "not sure" only costs a full parse). */
static void fast_frame_check_never_contradicts_jansson(void)
{
    static const char *seeds[] = {
        "{\"id\":\"e5c8\",\"content\":{\"parts\":[{\"text\":\"h\\u00e9 \\\"x\\\"\"}]},"
        "\"partial\":true,\"n\":-12.5e-3,\"ok\":[true,false,null],\"customMetadata\":{\"seq\":7}}",
        "{\"error\":\"bad\",\"error_details\":{\"a\":1}}",
        "{\"a\":\"\xc3\xa9\",\"b\":[{},[],\"\"],\"c\":0}",
    };
    static const char alphabet[] = "{}[]\":,\\ 0123456789-+.eEtrufalsn\xc3\xa9\xff\x01u";
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    int sure = 0;
    for (int round = 0; round < 20000; round++) {
        char buf[512];
        const char *seed = seeds[round % RC_ARRAY_SIZE(seeds)];
        size_t len = strlen(seed);
        memcpy(buf, seed, len);
        int edits = 1 + round % 3;
        for (int e = 0; e < edits; e++) {
            rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
            size_t at = (size_t)(rng % len);
            char c = alphabet[(rng >> 32) % (sizeof(alphabet) - 1)];
            switch ((rng >> 40) % 3) {
            case 0: buf[at] = c; break;                                          /* replace */
            case 1: memmove(buf + at, buf + at + 1, len - at - 1); len--; break; /* delete */
            default:                                                             /* insert */
                if (len + 1 < sizeof(buf)) {
                    memmove(buf + at + 1, buf + at, len - at);
                    buf[at] = c;
                    len++;
                }
            }
        }
        if (frame_scan_is_plain_object(buf, len)) {
            sure++;
            if (!jansson_relays(buf, len)) {
                fprintf(stderr, "  contradiction: %.*s\n", (int)len, buf);
                CHECK(!"the fast check accepted what jansson refuses");
                break;
            }
        }
    }
    CHECK(sure > 1000); /* the property was exercised, not vacuous */
}

int main(void)
{
    RUN_TEST(fast_frame_check_is_exact_where_sure);
    RUN_TEST(fast_frame_check_never_contradicts_jansson);
    RUN_TEST(stream_relays_three_events_split_across_writes);
    RUN_TEST(session_conflict_409_counts_as_ready);
    RUN_TEST(session_create_failure_is_http_error);
    RUN_TEST(run_404_creates_session_and_retries_once);
    RUN_TEST(create_falls_back_to_body_form);
    RUN_TEST(created_with_another_id_is_protocol_error);
    RUN_TEST(already_exists_400_is_ready_other_400_is_not);
    RUN_TEST(run_404_when_ready_recreates_by_path);
    RUN_TEST(parameters_cannot_change_the_upstream_path);
    RUN_TEST(second_404_is_http_error);
    RUN_TEST(rate_limited_twice_then_completes);
    RUN_TEST(unavailable_forever_is_rate_limited_after_retries);
    RUN_TEST(retry_after_is_honoured);
    RUN_TEST(retry_after_beyond_run_budget_gives_up_at_once);
    RUN_TEST(server_error_is_http_with_excerpt);
    RUN_TEST(long_error_body_is_cut_to_200_bytes);
    RUN_TEST(error_frame_is_agent_error);
    RUN_TEST(event_with_error_code_is_relayed_then_agent_error);
    RUN_TEST(null_error_fields_complete_error_code_alone_fails);
    RUN_TEST(empty_object_frame_is_agent_error);
    RUN_TEST(invalid_json_error_frame_keeps_its_raw_text);
    RUN_TEST(event_with_content_and_error_is_relayed);
    RUN_TEST(non_json_frame_is_protocol_and_not_relayed);
    RUN_TEST(non_object_frame_is_protocol);
    RUN_TEST(chunked_body_cut_is_protocol);
    RUN_TEST(stream_ending_inside_a_frame_is_protocol);
    RUN_TEST(close_delimited_stream_completes);
    RUN_TEST(wrong_content_type_is_protocol);
    RUN_TEST(oversized_frame_is_protocol);
    RUN_TEST(connection_refused_is_unreachable);
    RUN_TEST(hang_after_headers_times_out_idle);
    RUN_TEST(no_event_times_out_first_event_when_shorter);
    RUN_TEST(no_event_times_out_idle_when_shorter);
    RUN_TEST(long_run_times_out_total);
    RUN_TEST(cancel_inside_on_event_stops_everything);
    RUN_TEST(cancel_right_after_start_runs_no_callback);
    RUN_TEST(connection_is_reused_between_calls);
    RUN_TEST(reused_easy_handle_carries_nothing_over);
    RUN_TEST(shutdown_closes_every_descriptor);
    RUN_TEST(call_started_inside_on_event_runs);
    RUN_TEST(reset_kept_alive_connection_is_retried);
    RUN_TEST(closed_kept_alive_connection_is_retried);
    RUN_TEST(state_delta_is_sent);
    RUN_TEST(start_rejects_missing_message);
    RUN_TEST(drained_call_is_read_to_its_end_before_the_next_call_sends);
    RUN_TEST(drain_past_its_limit_is_cut_then_the_next_call_sends);
    RUN_TEST(drain_without_drain_ms_cancels);
    return test_report("test_upstream");
}
