/* loadgen.c: the benchmark load generator for runcast and Nchan.
 *
 * One thread, one epoll loop, libc only. It holds many SSE subscribers (over
 * several 127.0.0.x source addresses, so the per-address ephemeral port range
 * is no limit), parses their streams, and records for every event the
 * delivery latency from the send timestamp that the upstream put inside it
 * ("sent_at_us", CLOCK_REALTIME microseconds) into a log-bucketed histogram.
 * It also drives the load: for runcast it starts runs on the demo agent with
 * POST …/run ("!events=N !bytes=B !rate=R"), for Nchan it publishes the same
 * JSON events itself with HTTP POSTs to the publisher location. With
 * --serve-upstream it is runcast's upstream as well: it answers /run_sse and
 * writes the events to runcast itself, as it publishes them to Nchan.
 *
 * Modes (see usage()):
 *   fanout  subscribers on `sessions` sessions (+ idle ones), events at a
 *           total rate, a warm-up then a measured window; also samples the
 *           server's RSS before and after the subscribers connect, so the
 *           idle scenario is fanout with idle subscribers and a small probe.
 *   storm   runcast only: POSTs runs at a target rate round-robin over the
 *           sessions (each POST supersedes the session's active run), one
 *           subscriber per session counts terminal events, and /debug/calls
 *           of the demo agent is polled for the time each upstream call
 *           arrived (POST send time -> demo receive time).
 *   replay  runcast only: a run of N events fills a session's log, then many
 *           subscribers reconnect at once with Last-Event-ID = the first
 *           event's id and read the log to its end.
 *
 * Server CPU is read from /proc/<pid>/task/<tid>/schedstat (ns on CPU,
 * summed over threads) at both ends of the measured window, in total and per
 * --server-pid (a cluster: every node and redis-server); RSS from
 * /proc/<pid>/status. The result is one JSON object on stdout. Every phase
 * has a deadline, so a run always stops by itself; SIGTERM ends the current
 * phase early and still prints the result (an idle-only generator holding
 * subscribers for another's measurement is stopped that way).
 *
 * Cluster mode: --sub-ports spreads each session's subscribers over several
 * nodes and --post-ports the storm's POST connections; POSTs of fanout go
 * to --port, the node that then owns the runs. In storm mode every run id
 * is tracked from its 202 to its terminal events, so "exactly one terminal
 * event per accepted run" is checked run by run.
 *
 * Build: cc -O2 -o loadgen loadgen.c   (see bench/Makefile)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define MAX_PIDS 8
#define MAX_PORTS 16
#define READ_SIZE (64 * 1024)
#define MAX_LINE (4 * 1024 * 1024)

/* ---- small helpers ------------------------------------------------------ */

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loadgen: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (p == NULL)
        die("out of memory");
    return p;
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (p == NULL)
        die("out of memory");
    return p;
}

static uint64_t wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* A growable byte buffer; off is the start of the unconsumed part. */
struct bytes {
    char *data;
    size_t len, off, cap;
};

static void bytes_reserve(struct bytes *b, size_t extra)
{
    if (b->off > 0 && b->off == b->len) {
        b->off = b->len = 0;
    }
    if (b->len + extra <= b->cap)
        return;
    if (b->off > 0) {
        memmove(b->data, b->data + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        if (b->len + extra <= b->cap)
            return;
    }
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra)
        cap *= 2;
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
}

static void bytes_append(struct bytes *b, const void *p, size_t n)
{
    bytes_reserve(b, n);
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void bytes_printf(struct bytes *b, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        size_t room = b->cap - b->len;
        va_start(ap, fmt);
        int n = vsnprintf(b->data ? b->data + b->len : NULL, b->data ? room : 0, fmt, ap);
        va_end(ap);
        if (n < 0)
            die("vsnprintf");
        if ((size_t)n < room && b->data) {
            b->len += (size_t)n;
            return;
        }
        bytes_reserve(b, (size_t)n + 1);
    }
}

static void bytes_free(struct bytes *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

/* Parses the unsigned decimal number right after `key` in [p, end), or -1. */
static int64_t find_number(const char *p, const char *end, const char *key, size_t key_len)
{
    const char *k = memmem(p, (size_t)(end - p), key, key_len);
    if (k == NULL)
        return -1;
    k += key_len;
    while (k < end && *k == ' ')
        k++;
    if (k >= end || *k < '0' || *k > '9')
        return -1;
    int64_t v = 0;
    while (k < end && *k >= '0' && *k <= '9')
        v = v * 10 + (*k++ - '0');
    return v;
}

/* ---- histogram: log-linear buckets, about 3% wide, exact max ------------ */

#define HIST_SUB_BITS 5
#define HIST_SUB (1 << HIST_SUB_BITS)
#define HIST_BUCKETS ((64 - HIST_SUB_BITS + 1) * HIST_SUB)

struct hist {
    uint64_t count, sum, max;
    uint64_t b[HIST_BUCKETS];
};

static int hist_bucket(uint64_t v)
{
    if (v < HIST_SUB)
        return (int)v;
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - HIST_SUB_BITS;
    return ((shift + 1) << HIST_SUB_BITS) + (int)((v >> shift) & (HIST_SUB - 1));
}

/* The middle of a bucket's value range. */
static uint64_t hist_value(int bucket)
{
    if (bucket < HIST_SUB)
        return (uint64_t)bucket;
    int shift = (bucket >> HIST_SUB_BITS) - 1;
    uint64_t m = (uint64_t)(bucket & (HIST_SUB - 1)) + HIST_SUB;
    uint64_t lo = m << shift, width = (uint64_t)1 << shift;
    return lo + width / 2;
}

static void hist_add(struct hist *h, uint64_t v)
{
    h->count++;
    h->sum += v;
    if (v > h->max)
        h->max = v;
    h->b[hist_bucket(v)]++;
}

static uint64_t hist_quantile(const struct hist *h, double q)
{
    if (h->count == 0)
        return 0;
    uint64_t rank = (uint64_t)ceil(q * (double)h->count);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= rank) {
            uint64_t v = hist_value(i);
            return v > h->max ? h->max : v;
        }
    }
    return h->max;
}

static void hist_json(struct bytes *o, const char *name, const struct hist *h)
{
    bytes_printf(o, "\"%s\":{\"count\":%" PRIu64 ",\"p50\":%" PRIu64 ",\"p99\":%" PRIu64
                    ",\"p999\":%" PRIu64 ",\"max\":%" PRIu64 ",\"mean\":%.1f}",
                 name, h->count, hist_quantile(h, 0.50), hist_quantile(h, 0.99),
                 hist_quantile(h, 0.999), h->max,
                 h->count ? (double)h->sum / (double)h->count : 0.0);
}

/* ---- options ------------------------------------------------------------ */

enum target { TARGET_RUNCAST, TARGET_NCHAN };
enum mode { MODE_FANOUT, MODE_STORM, MODE_REPLAY };

static struct {
    enum mode mode;
    enum target target;
    int port, demo_port;
    int sessions, subs;         /* active sessions, subscribers per session */
    int idle, idle_sessions;    /* idle subscribers, over this many sessions */
    double rate;                /* fanout: events/s in total; storm: POSTs/s */
    int bytes;
    double warmup, duration, settle, drain, connect_timeout;
    const char *prefix;
    int src;                    /* source addresses 127.0.0.1 .. 127.0.0.src */
    int server_pids[MAX_PIDS], nserver;
    int aux_pids[MAX_PIDS], naux;
    int post_conns;
    const char *run_directives;
    int replay_events, replay_subs;
    double replay_rate;
    int max_connecting;
    int pub_inflight;
    double poll_interval;
    int serve_upstream;         /* fanout on runcast: be its upstream on this port */
    int sub_ports[MAX_PORTS], nsub_ports;   /* subscribers spread over these (cluster) */
    int post_ports[MAX_PORTS], npost_ports; /* storm: POST connections spread over these */
} opt = {
    .mode = MODE_FANOUT,
    .target = TARGET_RUNCAST,
    .port = 8000,
    .sessions = 1,
    .subs = 10,
    .idle_sessions = 100,
    .rate = 100,
    .bytes = 128,
    .warmup = 2,
    .duration = 10,
    .settle = 1,
    .drain = 10,
    .connect_timeout = 60,
    .src = 9,
    .post_conns = 16,
    .run_directives = "!events=3 !rate=20",
    .replay_events = 998,
    .replay_subs = 1000,
    .replay_rate = 20000,
    .max_connecting = 256,
    .pub_inflight = 4096,
    .poll_interval = 0.2,
};

/* ---- /proc sampling ----------------------------------------------------- */

/* ns on CPU of every thread of pid (schedstat), or of the process from
 * /proc/pid/stat ticks when schedstat is missing. 0 when pid is gone. */
static uint64_t proc_cpu_ns(int pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/task", pid);
    DIR *d = opendir(path);
    uint64_t total = 0;
    int found = 0;
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.')
                continue;
            char p2[320];
            snprintf(p2, sizeof(p2), "/proc/%d/task/%s/schedstat", pid, e->d_name);
            FILE *f = fopen(p2, "r");
            if (!f)
                continue;
            unsigned long long ns;
            if (fscanf(f, "%llu", &ns) == 1) {
                total += ns;
                found = 1;
            }
            fclose(f);
        }
        closedir(d);
    }
    if (found)
        return total;
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char line[1024];
    if (!fgets(line, sizeof(line), f)) {
        fclose(f);
        return 0;
    }
    fclose(f);
    char *p = strrchr(line, ')');
    unsigned long long ut = 0, st = 0;
    if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) == 2)
        return (ut + st) * (1000000000ull / (unsigned long long)sysconf(_SC_CLK_TCK));
    return 0;
}

static uint64_t pids_cpu_ns(const int *pids, int n)
{
    uint64_t t = 0;
    for (int i = 0; i < n; i++)
        t += proc_cpu_ns(pids[i]);
    return t;
}

/* A field of /proc/pid/status in KiB ("VmRSS", "VmHWM"), summed over pids. */
static uint64_t pids_status_kib(const int *pids, int n, const char *field)
{
    uint64_t total = 0;
    size_t flen = strlen(field);
    for (int i = 0; i < n; i++) {
        char path[64], line[256];
        snprintf(path, sizeof(path), "/proc/%d/status", pids[i]);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        while (fgets(line, sizeof(line), f)) {
            if (strncmp(line, field, flen) == 0 && line[flen] == ':') {
                total += strtoull(line + flen + 1, NULL, 10);
                break;
            }
        }
        fclose(f);
    }
    return total;
}

static uint64_t self_cpu_ns(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ((uint64_t)ru.ru_utime.tv_sec + (uint64_t)ru.ru_stime.tv_sec) * 1000000000ull +
           ((uint64_t)ru.ru_utime.tv_usec + (uint64_t)ru.ru_stime.tv_usec) * 1000ull;
}

struct cpu_mark {
    uint64_t server_ns, aux_ns, self_ns, at_us;
    uint64_t each_ns[MAX_PIDS]; /* per server pid, in --server-pid order */
};

static struct cpu_mark cpu_mark_now(void)
{
    struct cpu_mark m = {
        .aux_ns = pids_cpu_ns(opt.aux_pids, opt.naux),
        .self_ns = self_cpu_ns(),
        .at_us = mono_us(),
    };
    for (int i = 0; i < opt.nserver; i++) {
        m.each_ns[i] = proc_cpu_ns(opt.server_pids[i]);
        m.server_ns += m.each_ns[i];
    }
    return m;
}

/* ---- connections -------------------------------------------------------- */

enum conn_kind {
    KIND_SUB,      /* an SSE subscriber */
    KIND_CLIENT,   /* a keep-alive HTTP client: POSTs, publishes, debug polls */
    KIND_LISTEN,   /* --serve-upstream: the listening socket */
    KIND_UPSTREAM, /* --serve-upstream: a connection from runcast's libcurl */
};

enum conn_state { CS_CONNECTING, CS_HEAD, CS_BODY, CS_CLOSED };

enum ev_type {
    EV_MESSAGE = 0, /* no event field (Nchan) */
    EV_AGENT,       /* agent.event */
    EV_TERMINAL,    /* run.completed/failed/cancelled/timed_out/superseded */
    EV_RUN_OTHER,   /* run.started, run.queued */
    EV_RESET,       /* stream.reset */
    EV_OTHER,
};

enum client_role { ROLE_POST, ROLE_PUB, ROLE_DEBUG };

struct conn {
    int fd;
    enum conn_kind kind;
    enum conn_state state;
    int session;          /* index in the session table, -1 for none */
    int port;             /* the server port a subscriber connects to */
    int idle;             /* an idle subscriber (excluded from latency) */
    int replay;           /* a replay subscriber: done at run.completed */
    int probe;            /* the replay probe */
    uint64_t t_start_us;  /* mono, when the connect began */
    struct bytes in;      /* head, then the partial line of the body */
    struct bytes out;     /* unsent request bytes */
    int want_out;         /* EPOLLOUT registered */
    /* body framing */
    int chunked;
    int ch_state;         /* 0 size line, 1 data, 2 CRLF after data */
    uint64_t ch_left;
    /* the SSE event being assembled */
    int ev_data;
    enum ev_type ev_type;
    int64_t ev_sent_at, ev_seq;
    char ev_run_id[40];   /* storm: the run id of a terminal event */
    int ev_term;          /* enum term_kind of a terminal event, or -1 */
    char first_id[64], last_id[64];
    int64_t last_seq;     /* last agent event seq, -1 before the first */
    uint64_t events;      /* every event with data */
    /* client role */
    enum client_role role;
    int inflight;
    int64_t post_k;       /* storm: the POST in flight on this client, -1 for none */
};

/* ---- global state ------------------------------------------------------- */

static int epfd;
static struct conn **subs;
static int nsubs, subs_started, subs_ready, subs_connecting;
static uint64_t now_wall, now_mono;

static struct {
    uint64_t connect, http, closed, gaps, no_timestamp, publish, post, reset, debug;
} err;

static int measuring;          /* inside the measured window */
static struct hist lat;        /* delivery latency, µs, window only */
static uint64_t delivered;     /* agent events received in the window */
static uint64_t delivered_all; /* every agent event received */
static uint64_t other_events;  /* non-agent events */

/* storm */
static uint64_t *post_sent_us; /* wall µs at write, by k */
static uint8_t *post_matched;
static uint64_t post_cap, posted, post_answered, post_accepted;
static struct hist post_latency, upstream_delay;
static uint64_t *post_issued_mono;
static uint64_t terminal_seen;

/* storm: every run id seen, from its POST's 202 and from its terminal
 * events, so that "exactly one terminal event per accepted run" is checked
 * run by run rather than as two totals. Open addressing, never shrinks. */
enum term_kind { TERM_COMPLETED, TERM_FAILED, TERM_CANCELLED, TERM_TIMED_OUT, TERM_SUPERSEDED, TERM_KINDS };
static const char *const term_names[TERM_KINDS] = {"completed", "failed", "cancelled", "timed_out",
                                                   "superseded"};
struct run_slot {
    char id[40];
    uint8_t accepted;
    uint32_t terminals;
};
static struct run_slot *run_table;
static size_t run_table_cap;
static uint64_t terminals_by_kind[TERM_KINDS];
static uint64_t debug_polls, debug_matched;
static uint64_t max_post_backlog;

/* nchan publishing */
static uint64_t published, pub_answered;
static int publishing;          /* fanout: events are being published */
static uint64_t *channel_seq;

/* replay */
static struct hist replay_time;
static uint64_t replay_done, replay_events_total;
static char replay_first_id[64];
static int probe_done;
static uint64_t probe_events;

static void conn_close_fd(struct conn *c);

static void ep_set(struct conn *c, uint32_t events, int op)
{
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(epfd, op, c->fd, &ev) < 0)
        die("epoll_ctl: %s", strerror(errno));
}

/* Opens a non-blocking TCP connection from 127.0.0.<1 + n % src>. Returns
 * the fd or -errno. */
static int tcp_connect(int port, int n)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (opt.src > 1) {
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(0x7f000001u + (uint32_t)(n % opt.src));
        if (bind(fd, (struct sockaddr *)&src, sizeof(src)) < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
    }
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    dst.sin_addr.s_addr = htonl(0x7f000001u);
    if (connect(fd, (struct sockaddr *)&dst, sizeof(dst)) < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

/* Writes what it can of c->out; arms EPOLLOUT for the rest. Returns 0 or -1
 * when the connection failed (it is then closed). */
static int conn_flush(struct conn *c)
{
    if (c->state == CS_CONNECTING)
        return 0;
    while (c->out.len > c->out.off) {
        ssize_t n = write(c->fd, c->out.data + c->out.off, c->out.len - c->out.off);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            if (errno == EINTR)
                continue;
            conn_close_fd(c);
            return -1;
        }
        c->out.off += (size_t)n;
    }
    int want = c->out.len > c->out.off;
    if (!want)
        c->out.off = c->out.len = 0;
    if (want != c->want_out) {
        c->want_out = want;
        ep_set(c, EPOLLIN | (want ? EPOLLOUT : 0), EPOLL_CTL_MOD);
    }
    return 0;
}

static void session_name(char *out, size_t size, int session)
{
    snprintf(out, size, "%s%d", opt.prefix, session);
}

/* ---- subscribers -------------------------------------------------------- */

static void sub_start(struct conn *c, int n)
{
    c->t_start_us = mono_us();
    int fd = tcp_connect(c->port, n);
    if (fd < 0) {
        err.connect++;
        c->state = CS_CLOSED;
        return;
    }
    c->fd = fd;
    c->state = CS_CONNECTING;
    char name[96];
    session_name(name, sizeof(name), c->session);
    if (opt.target == TARGET_NCHAN)
        bytes_printf(&c->out, "GET /sub/%s HTTP/1.1\r\n", name);
    else
        bytes_printf(&c->out, "GET /apps/bench/users/u/sessions/%s/run HTTP/1.1\r\n", name);
    bytes_printf(&c->out, "Host: 127.0.0.1\r\nAccept: text/event-stream\r\n");
    if (c->replay && replay_first_id[0])
        bytes_printf(&c->out, "Last-Event-ID: %s\r\n", replay_first_id);
    bytes_printf(&c->out, "\r\n");
    ep_set(c, EPOLLOUT, EPOLL_CTL_ADD);
    c->want_out = 1;
    subs_connecting++;
}

static void conn_close_fd(struct conn *c)
{
    if (c->state == CS_CLOSED)
        return;
    if (c->state == CS_CONNECTING || (c->kind == KIND_SUB && c->state == CS_HEAD))
        subs_connecting -= c->kind == KIND_SUB;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->state = CS_CLOSED;
    bytes_free(&c->in);
    bytes_free(&c->out);
}

static enum ev_type classify(const char *v, size_t n)
{
    if (n == 11 && memcmp(v, "agent.event", 11) == 0)
        return EV_AGENT;
    if (n > 4 && memcmp(v, "run.", 4) == 0) {
        if ((n == 13 && memcmp(v, "run.completed", 13) == 0) ||
            (n == 10 && memcmp(v, "run.failed", 10) == 0) ||
            (n == 13 && memcmp(v, "run.cancelled", 13) == 0) ||
            (n == 13 && memcmp(v, "run.timed_out", 13) == 0) ||
            (n == 14 && memcmp(v, "run.superseded", 14) == 0))
            return EV_TERMINAL;
        return EV_RUN_OTHER;
    }
    if (n == 12 && memcmp(v, "stream.reset", 12) == 0)
        return EV_RESET;
    return EV_OTHER;
}

/* The enum term_kind of a terminal event name (classify said EV_TERMINAL). */
static int term_kind(const char *v, size_t n)
{
    for (int i = 0; i < TERM_KINDS; i++)
        if (n == 4 + strlen(term_names[i]) && memcmp(v + 4, term_names[i], n - 4) == 0)
            return i;
    return -1;
}

/* The slot of run id [id, id+n) in run_table, created empty if new. */
static struct run_slot *run_slot(const char *id, size_t n)
{
    if (n >= sizeof(run_table[0].id))
        n = sizeof(run_table[0].id) - 1;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)id[i]) * 1099511628211ull;
    for (size_t probes = 0; probes < run_table_cap; probes++) {
        struct run_slot *s = &run_table[(h + probes) & (run_table_cap - 1)];
        if (s->id[0] == '\0') {
            memcpy(s->id, id, n);
            s->id[n] = '\0';
            return s;
        }
        if (strlen(s->id) == n && memcmp(s->id, id, n) == 0)
            return s;
    }
    die("the run table is full");
    return NULL;
}

/* Copies the value of "run_id":"..." in [p, p+n) into out (size 40), or "". */
static void find_run_id(const char *p, size_t n, char *out)
{
    static const char KEY[] = "\"run_id\":\"";
    out[0] = '\0';
    const char *k = memmem(p, n, KEY, sizeof(KEY) - 1);
    if (k == NULL)
        return;
    k += sizeof(KEY) - 1;
    const char *q = memchr(k, '"', (size_t)(p + n - k));
    if (q == NULL || q - k >= 40)
        return;
    memcpy(out, k, (size_t)(q - k));
    out[q - k] = '\0';
}

/* One dispatched SSE event of subscriber c. */
static void sub_dispatch(struct conn *c)
{
    c->events++;
    if (c->ev_type == EV_AGENT || c->ev_type == EV_MESSAGE) {
        if (c->ev_sent_at < 0) {
            err.no_timestamp++;
        } else {
            delivered_all++;
            if (c->ev_seq >= 0) {
                if (c->ev_seq > c->last_seq + 1)
                    err.gaps += (uint64_t)(c->ev_seq - c->last_seq - 1);
                c->last_seq = c->ev_seq;
            }
            if (measuring && !c->idle && !c->replay && !c->probe) {
                uint64_t t = now_wall;
                delivered++;
                hist_add(&lat, t > (uint64_t)c->ev_sent_at ? t - (uint64_t)c->ev_sent_at : 0);
            }
        }
    } else {
        other_events++;
        if (c->ev_type == EV_TERMINAL) {
            terminal_seen++;
            if (run_table && c->ev_term >= 0) {
                terminals_by_kind[c->ev_term]++;
                if (c->ev_run_id[0])
                    run_slot(c->ev_run_id, strlen(c->ev_run_id))->terminals++;
            }
            if (c->replay || c->probe) {
                uint64_t t = mono_us();
                if (c->probe) {
                    probe_done = 1;
                    probe_events = c->events;
                } else {
                    replay_done++;
                    replay_events_total += c->events;
                    hist_add(&replay_time, t - c->t_start_us);
                }
                conn_close_fd(c);
            }
        } else if (c->ev_type == EV_RESET) {
            err.reset++;
        }
    }
    c->ev_data = 0;
    c->ev_type = EV_MESSAGE;
    c->ev_sent_at = -1;
    c->ev_seq = -1;
    c->ev_term = -1;
    c->ev_run_id[0] = '\0';
}

static const char K_SENT[] = "\"sent_at_us\":";
static const char K_SEQ[] = "\"seq\":";

/* Reads the decimal number that ends right before *end (stepping back over
 * it) and checks that key precedes it. Returns the number, or -1. */
static int64_t number_before(const char *start, const char **end, const char *key, size_t key_len)
{
    const char *q = *end;
    int64_t v = 0, scale = 1;
    int digits = 0;
    while (q > start && q[-1] >= '0' && q[-1] <= '9' && digits < 18) {
        q--;
        v += (int64_t)(*q - '0') * scale;
        scale *= 10;
        digits++;
    }
    if (digits == 0 || (size_t)(q - start) < key_len || memcmp(q - key_len, key, key_len) != 0)
        return -1;
    *end = q - key_len;
    return v;
}

/* The demo agent (and publish_one for Nchan) ends every event with
 * ...,"customMetadata":{"seq":N,"sent_at_us":T}}: parsing that tail
 * backwards costs a few compares instead of a search through the event
 * (which was a quarter of the generator's CPU at a million events/s). Sets
 * *seq and returns sent_at_us, or -1 when the line has another shape. */
static int64_t tail_metadata(const char *p, size_t n, int64_t *seq)
{
    const char *end = p + n;
    while (end > p && end[-1] == '}')
        end--;
    int64_t sent = number_before(p, &end, K_SENT, sizeof(K_SENT) - 1);
    if (sent < 0 || end <= p || end[-1] != ',')
        return -1;
    end--;
    int64_t s = number_before(p, &end, K_SEQ, sizeof(K_SEQ) - 1);
    if (s < 0)
        return -1;
    *seq = s;
    return sent;
}

/* One complete line of subscriber c's stream (no line end). */
static void sub_line(struct conn *c, const char *p, size_t n)
{
    if (n > 0 && p[n - 1] == '\r')
        n--;
    if (n == 0) {
        if (c->ev_data)
            sub_dispatch(c);
        else {
            c->ev_type = EV_MESSAGE;
        }
        return;
    }
    if (p[0] == ':')
        return;
    if (n >= 5 && memcmp(p, "data:", 5) == 0) {
        c->ev_data = 1;
        if (c->ev_type == EV_TERMINAL && run_table)
            find_run_id(p, n, c->ev_run_id);
        if (c->ev_type == EV_AGENT || c->ev_type == EV_MESSAGE) {
            const char *end = p + n;
            int64_t s = -1;
            int64_t v = tail_metadata(p, n, &s);
            if (v < 0) { /* another shape: search */
                v = find_number(p, end, K_SENT, sizeof(K_SENT) - 1);
                s = find_number(p, end, K_SEQ, sizeof(K_SEQ) - 1);
            }
            c->ev_sent_at = v;
            c->ev_seq = s;
        }
        return;
    }
    if (n >= 6 && memcmp(p, "event:", 6) == 0) {
        const char *v = p + 6;
        size_t vn = n - 6;
        if (vn && *v == ' ') {
            v++;
            vn--;
        }
        c->ev_type = classify(v, vn);
        if (c->ev_type == EV_TERMINAL)
            c->ev_term = term_kind(v, vn);
        return;
    }
    if (n >= 3 && memcmp(p, "id:", 3) == 0) {
        const char *v = p + 3;
        size_t vn = n - 3;
        if (vn && *v == ' ') {
            v++;
            vn--;
        }
        if (vn >= sizeof(c->last_id))
            vn = sizeof(c->last_id) - 1;
        memcpy(c->last_id, v, vn);
        c->last_id[vn] = '\0';
        if (!c->first_id[0])
            memcpy(c->first_id, c->last_id, vn + 1);
        return;
    }
}

/* SSE bytes of c's body, any split. */
static void sub_sse_feed(struct conn *c, const char *p, size_t n)
{
    const char *end = p + n;
    if (c->in.len > c->in.off) {
        const char *nl = memchr(p, '\n', n);
        if (nl == NULL) {
            if (c->in.len - c->in.off + n > MAX_LINE) {
                err.http++;
                conn_close_fd(c);
                return;
            }
            bytes_append(&c->in, p, n);
            return;
        }
        bytes_append(&c->in, p, (size_t)(nl - p));
        sub_line(c, c->in.data + c->in.off, c->in.len - c->in.off);
        c->in.off = c->in.len = 0;
        if (c->state == CS_CLOSED)
            return;
        p = nl + 1;
    }
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (nl == NULL) {
            bytes_append(&c->in, p, (size_t)(end - p));
            return;
        }
        sub_line(c, p, (size_t)(nl - p));
        if (c->state == CS_CLOSED)
            return;
        p = nl + 1;
    }
}

/* Body bytes of c, de-chunked when the response is chunked. */
static void sub_body_feed(struct conn *c, const char *p, size_t n)
{
    if (!c->chunked) {
        sub_sse_feed(c, p, n);
        return;
    }
    const char *end = p + n;
    while (p < end && c->state != CS_CLOSED) {
        if (c->ch_state == 1) {
            size_t take = (size_t)(end - p) < c->ch_left ? (size_t)(end - p) : (size_t)c->ch_left;
            sub_sse_feed(c, p, take);
            p += take;
            c->ch_left -= take;
            if (c->ch_left == 0)
                c->ch_state = 2;
        } else if (c->ch_state == 2) {
            if (*p++ == '\n')
                c->ch_state = 0;
        } else {
            char ch = *p++;
            if (ch == '\n') {
                if (c->ch_left == 0) {
                    conn_close_fd(c); /* last chunk: the stream ended */
                    err.closed++;
                    return;
                }
                c->ch_state = 1;
            } else if (c->ch_state == 0) {
                int d = (ch >= '0' && ch <= '9') ? ch - '0' : (ch >= 'a' && ch <= 'f') ? ch - 'a' + 10
                      : (ch >= 'A' && ch <= 'F') ? ch - 'A' + 10 : -1;
                if (d >= 0)
                    c->ch_left = c->ch_left * 16 + (uint64_t)d;
                else
                    c->ch_state = 3; /* extension or CR: skip to LF */
            }
        }
        if (c->ch_state == 3 && p < end && p[-1] == '\n')
            c->ch_state = 0;
    }
}

/* Parses the response head of c in c->in; on success moves to the body. */
static void sub_head(struct conn *c)
{
    char *h = c->in.data + c->in.off;
    size_t hn = c->in.len - c->in.off;
    char *e = memmem(h, hn, "\r\n\r\n", 4);
    if (e == NULL) {
        if (hn > 64 * 1024) {
            err.http++;
            conn_close_fd(c);
        }
        return;
    }
    size_t head_len = (size_t)(e - h) + 4;
    int status = hn > 12 ? atoi(h + 9) : 0;
    if (status != 200) {
        err.http++;
        if (err.http <= 3)
            fprintf(stderr, "loadgen: subscriber got status %d: %.*s\n", status,
                    (int)(head_len > 200 ? 200 : head_len), h);
        conn_close_fd(c);
        return;
    }
    char save = h[head_len - 1];
    h[head_len - 1] = '\0';
    c->chunked = strcasestr(h, "\ntransfer-encoding: chunked") != NULL;
    h[head_len - 1] = save;
    c->state = CS_BODY;
    subs_connecting--;
    subs_ready++;
    /* Keep the rest: copy out, reset, feed. */
    size_t rest = hn - head_len;
    char *tmp = NULL;
    if (rest) {
        tmp = malloc(rest);
        memcpy(tmp, h + head_len, rest);
    }
    c->in.off = c->in.len = 0;
    if (rest) {
        sub_body_feed(c, tmp, rest);
        free(tmp);
    }
}

static char readbuf[READ_SIZE];

static void sub_on_event(struct conn *c, uint32_t events)
{
    if (c->state == CS_CONNECTING) {
        int so = 0;
        socklen_t sl = sizeof(so);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &so, &sl);
        if (so != 0 || (events & (EPOLLERR | EPOLLHUP))) {
            err.connect++;
            conn_close_fd(c);
            return;
        }
        c->state = CS_HEAD;
        c->want_out = 1;
        ep_set(c, EPOLLIN | EPOLLOUT, EPOLL_CTL_MOD);
        conn_flush(c);
        return;
    }
    if (events & EPOLLOUT) {
        if (conn_flush(c) < 0)
            return;
    }
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        return;
    now_wall = wall_us();
    ssize_t n = read(c->fd, readbuf, sizeof(readbuf));
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        if (c->state == CS_HEAD)
            err.http++;
        else
            err.closed++;
        conn_close_fd(c);
        return;
    }
    if (c->state == CS_HEAD) {
        bytes_append(&c->in, readbuf, (size_t)n);
        sub_head(c);
        return;
    }
    sub_body_feed(c, readbuf, (size_t)n);
}

/* ---- HTTP clients (POST runs, Nchan publishes, demo debug polls) --------- */

static struct conn **clients;
static int nclients;
static struct conn *debug_conn;

static struct conn *client_open(enum client_role role, int port, int n)
{
    struct conn *c = xcalloc(1, sizeof(*c));
    c->kind = KIND_CLIENT;
    c->role = role;
    c->session = -1;
    c->post_k = -1;
    int fd = tcp_connect(port, n);
    if (fd < 0)
        die("connect to 127.0.0.1:%d: %s", port, strerror(-fd));
    c->fd = fd;
    c->state = CS_CONNECTING;
    ep_set(c, EPOLLOUT, EPOLL_CTL_ADD);
    c->want_out = 1;
    clients = xrealloc(clients, (size_t)(nclients + 1) * sizeof(*clients));
    clients[nclients++] = c;
    return c;
}

static void storm_debug_body(const char *body, size_t n);

/* One complete response on client c. */
static void client_response(struct conn *c, int status, const char *body, size_t body_len)
{
    c->inflight--;
    if (c->role == ROLE_PUB) {
        pub_answered++;
        if (status != 201 && status != 202) {
            err.publish++;
            if (err.publish <= 3)
                fprintf(stderr, "loadgen: publish answered %d\n", status);
        }
    } else if (c->role == ROLE_POST) {
        post_answered++;
        if (status == 202) {
            post_accepted++;
            if (run_table) {
                char id[40];
                find_run_id(body, body_len, id);
                if (id[0])
                    run_slot(id, strlen(id))->accepted = 1;
                else
                    err.post++;
            }
        } else {
            err.post++;
            if (err.post <= 3)
                fprintf(stderr, "loadgen: POST answered %d: %.*s\n", status,
                        (int)(body_len > 300 ? 300 : body_len), body);
        }
        if (c->post_k >= 0 && (uint64_t)c->post_k < post_cap) {
            hist_add(&post_latency, mono_us() - post_issued_mono[c->post_k]);
            c->post_k = -1;
        }
    } else if (c->role == ROLE_DEBUG) {
        debug_polls++;
        if (status == 200)
            storm_debug_body(body, body_len);
        else
            err.debug++;
    }
}

/* The next complete Content-Length framed HTTP message (request or
 * response) in c->in: returns its head and consumes it, with *body and
 * *body_len set; NULL while it is incomplete. Chunked bodies are not
 * supported (nothing here needs them). */
static char *next_message(struct conn *c, const char **body, size_t *body_len)
{
    char *h = c->in.data + c->in.off;
    size_t hn = c->in.len - c->in.off;
    char *e = hn ? memmem(h, hn, "\r\n\r\n", 4) : NULL;
    if (e == NULL)
        return NULL;
    size_t head_len = (size_t)(e - h) + 4;
    char save = h[head_len - 1];
    h[head_len - 1] = '\0';
    char *cl = strcasestr(h, "\ncontent-length:");
    *body_len = cl ? strtoull(cl + 16, NULL, 10) : 0;
    if (!cl && strcasestr(h, "\ntransfer-encoding: chunked"))
        die("chunked messages are not supported here");
    h[head_len - 1] = save;
    if (hn < head_len + *body_len)
        return NULL;
    c->in.off += head_len + *body_len;
    *body = h + head_len;
    return h;
}

/* Parses complete responses from c->in. */
static void client_parse(struct conn *c)
{
    const char *h, *body;
    size_t body_len;
    while ((h = next_message(c, &body, &body_len)) != NULL)
        client_response(c, atoi(h + 9), body, body_len);
}

/* The readiness work every request/response connection shares: flushes on
 * EPOLLOUT, then reads once into readbuf on EPOLLIN. Returns the bytes read,
 * 0 when there is nothing to read now, or -1 when the connection failed or
 * the peer closed it (c is then closed). */
static ssize_t conn_ready(struct conn *c, uint32_t events)
{
    if ((events & EPOLLOUT) && conn_flush(c) < 0)
        return -1;
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        return 0;
    ssize_t n = read(c->fd, readbuf, sizeof(readbuf));
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (n <= 0) {
        conn_close_fd(c);
        return -1;
    }
    return n;
}

static void client_on_event(struct conn *c, uint32_t events)
{
    if (c->state == CS_CONNECTING) {
        int so = 0;
        socklen_t sl = sizeof(so);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &so, &sl);
        if (so != 0)
            die("client connect failed: %s", strerror(so));
        c->state = CS_BODY;
        c->want_out = 1;
        ep_set(c, EPOLLIN | EPOLLOUT, EPOLL_CTL_MOD);
        conn_flush(c);
        return;
    }
    ssize_t n = conn_ready(c, events);
    if (n < 0) {
        fprintf(stderr, "loadgen: client connection (role %d) closed by the server\n", c->role);
        if (c->role == ROLE_PUB)
            err.publish++;
        else if (c->role == ROLE_POST)
            err.post++;
        else
            err.debug++;
        return;
    }
    if (n > 0) {
        bytes_append(&c->in, readbuf, (size_t)n);
        client_parse(c);
    }
}

/* ---- driving: runcast runs, Nchan publishes ------------------------------ */

/* POSTs one run with these directives to session s on client c. */
static void post_run(struct conn *c, int session, const char *message)
{
    char name[96];
    session_name(name, sizeof(name), session);
    char body[512];
    int bl = snprintf(body, sizeof(body), "{\"message\":\"%s\"}", message);
    bytes_printf(&c->out,
                 "POST /apps/bench/users/u/sessions/%s/run HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
                 name, bl, body);
    c->inflight++;
    conn_flush(c);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng_next(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static char *event_text;

/* Appends the next event of channel ch to out in the demo agent's exact
 * format, so every source sends the same bytes; sent_at_us is now. */
static void event_append(struct bytes *out, int ch)
{
    uint64_t seq = channel_seq[ch]++;
    if (event_text == NULL) {
        event_text = xcalloc(1, (size_t)opt.bytes + 32);
    }
    /* "event <i>" padded with x (or cut) to exactly opt.bytes bytes. */
    char head[32];
    int hl = snprintf(head, sizeof(head), "event %" PRIu64, seq);
    size_t b = (size_t)opt.bytes;
    memset(event_text, 'x', b);
    memcpy(event_text, head, (size_t)hl < b ? (size_t)hl : b);
    event_text[b] = '\0';
    uint64_t t = wall_us();
    char json_head[256];
    int jl = snprintf(json_head, sizeof(json_head),
                      "{\"id\":\"%016" PRIx64 "\",\"invocationId\":\"e-%016" PRIx64
                      "\",\"author\":\"demo_agent\",\"timestamp\":%" PRIu64 ".%06" PRIu64
                      ",\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"",
                      rng_next(), (uint64_t)0x5eed0000u + (uint64_t)ch, t / 1000000u, t % 1000000u);
    char json_tail[256];
    int tl = snprintf(json_tail, sizeof(json_tail),
                      "\"}]},\"partial\":true,\"actions\":{\"stateDelta\":{},\"artifactDelta\":{},"
                      "\"requestedAuthConfigs\":{}},\"customMetadata\":{\"seq\":%" PRIu64
                      ",\"sent_at_us\":%" PRIu64 "}}",
                      seq, t);
    bytes_append(out, json_head, (size_t)jl);
    bytes_append(out, event_text, b);
    bytes_append(out, json_tail, (size_t)tl);
}

/* Publishes one event to Nchan channel ch. */
static void publish_one(struct conn *c, int ch)
{
    static struct bytes ev;
    char name[96];
    session_name(name, sizeof(name), ch);
    ev.len = ev.off = 0;
    event_append(&ev, ch);
    bytes_printf(&c->out,
                 "POST /pub/%s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 "Content-Length: %zu\r\n\r\n",
                 name, ev.len);
    bytes_append(&c->out, ev.data, ev.len);
    c->inflight++;
    published++;
}

/* ---- --serve-upstream: the generator as runcast's ADK upstream ---------- */

/* With --serve-upstream, runcast's upstream is this process, as Nchan's
 * publisher is: both servers are then fed by the process that measures
 * them, with no third process on the load core. It answers ADK's
 * create-session with {} and /run_sse with a close-delimited event stream
 * of session k (from "sessionId"), written by fanout_tick. */
static struct conn **up_streams; /* by session */
static int up_open;

static void upstream_listen(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opt.serve_upstream)};
    a.sin_addr.s_addr = htonl(0x7f000001u);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 1024) < 0)
        die("--serve-upstream %d: %s", opt.serve_upstream, strerror(errno));
    struct conn *l = xcalloc(1, sizeof(*l));
    l->kind = KIND_LISTEN;
    l->fd = fd;
    l->state = CS_BODY;
    ep_set(l, EPOLLIN, EPOLL_CTL_ADD);
    up_streams = xcalloc((size_t)opt.sessions + 1, sizeof(*up_streams));
}

static void upstream_accept(struct conn *l)
{
    int fd;
    while ((fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        struct conn *c = xcalloc(1, sizeof(*c));
        c->kind = KIND_UPSTREAM;
        c->fd = fd;
        c->state = CS_HEAD;
        c->session = -1;
        ep_set(c, EPOLLIN, EPOLL_CTL_ADD);
    }
}

/* Answers the complete requests in c->in; a /run_sse turns c into session
 * k's stream (nothing more is read from it). */
static void upstream_parse(struct conn *c)
{
    const char *h, *body;
    size_t body_len;
    while (c->state == CS_HEAD && (h = next_message(c, &body, &body_len)) != NULL) {
        const char *body_end = body + body_len;
        if (strncmp(h, "POST /run_sse ", 14) != 0) {
            bytes_printf(&c->out, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                  "Content-Length: 2\r\n\r\n{}");
            conn_flush(c);
            continue;
        }
        static const char KEY[] = "\"sessionId\":\"";
        const char *k = memmem(body, (size_t)(body_end - body), KEY, sizeof(KEY) - 1);
        size_t plen = strlen(opt.prefix);
        int session = -1;
        if (k && (size_t)(body_end - k) > sizeof(KEY) - 1 + plen &&
            memcmp(k + sizeof(KEY) - 1, opt.prefix, plen) == 0)
            session = atoi(k + sizeof(KEY) - 1 + plen);
        if (session < 0 || session >= opt.sessions || up_streams[session] != NULL)
            die("--serve-upstream: unexpected /run_sse body %.*s", (int)body_len, body);
        bytes_printf(&c->out, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                              "Cache-Control: no-cache\r\nConnection: close\r\n\r\n");
        c->state = CS_BODY;
        c->session = session;
        up_streams[session] = c;
        up_open++;
        conn_flush(c);
    }
}

static void upstream_on_event(struct conn *c, uint32_t events)
{
    ssize_t n = conn_ready(c, events);
    if (n > 0 && c->state == CS_HEAD) {
        bytes_append(&c->in, readbuf, (size_t)n);
        upstream_parse(c);
    }
    if (n < 0 && c->session >= 0 && up_streams[c->session] == c) {
        up_streams[c->session] = NULL;
        up_open--;
        if (publishing)
            err.closed++;
    }
}

/* Writes the next event of session ch to its stream as one SSE frame. */
static void upstream_publish(int ch)
{
    struct conn *c = up_streams[ch];
    published++;
    if (c == NULL || c->state == CS_CLOSED) {
        err.publish++;
        return;
    }
    bytes_append(&c->out, "data: ", 6);
    event_append(&c->out, ch);
    bytes_append(&c->out, "\n\n", 2);
    conn_flush(c);
}

/* ---- storm -------------------------------------------------------------- */

/* The k of "k=<n>" in each call's text, matched with its received_at_us. */
static void storm_debug_body(const char *body, size_t n)
{
    const char *p = body, *end = body + n;
    static const char TEXT[] = "\"text\":\"";
    static const char RECV[] = "\"received_at_us\":";
    for (;;) {
        const char *t = memmem(p, (size_t)(end - p), TEXT, sizeof(TEXT) - 1);
        if (t == NULL)
            break;
        t += sizeof(TEXT) - 1;
        const char *q = memchr(t, '"', (size_t)(end - t));
        if (q == NULL)
            break;
        int64_t k = find_number(t, q, "k=", 2);
        const char *r = memmem(q, (size_t)(end - q), RECV, sizeof(RECV) - 1);
        if (r == NULL)
            break;
        int64_t recv = find_number(r, end, RECV, sizeof(RECV) - 1);
        p = r + 1;
        if (k < 0 || (uint64_t)k >= posted || recv < 0 || post_matched[k])
            continue;
        post_matched[k] = 1;
        debug_matched++;
        uint64_t sent = post_sent_us[k];
        hist_add(&upstream_delay, (uint64_t)recv > sent ? (uint64_t)recv - sent : 0);
    }
}

static void debug_poll(void)
{
    if (debug_conn == NULL || debug_conn->state == CS_CLOSED || debug_conn->state == CS_CONNECTING ||
        debug_conn->inflight > 0)
        return;
    bytes_printf(&debug_conn->out, "GET /debug/calls HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    debug_conn->inflight++;
    conn_flush(debug_conn);
}

/* ---- the loop ----------------------------------------------------------- */

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

static void loop_once(int timeout_ms)
{
    struct epoll_event evs[512];
    int n = epoll_wait(epfd, evs, 512, timeout_ms);
    if (n < 0 && errno != EINTR)
        die("epoll_wait: %s", strerror(errno));
    now_mono = mono_us();
    for (int i = 0; i < n; i++) {
        struct conn *c = evs[i].data.ptr;
        if (c->state == CS_CLOSED)
            continue;
        if (c->kind == KIND_SUB)
            sub_on_event(c, evs[i].events);
        else if (c->kind == KIND_CLIENT)
            client_on_event(c, evs[i].events);
        else if (c->kind == KIND_LISTEN)
            upstream_accept(c);
        else
            upstream_on_event(c, evs[i].events);
    }
    now_mono = mono_us();
}

/* Starts connects up to max_connecting at a time. */
static void connect_more(void)
{
    while (subs_started < nsubs && subs_connecting < opt.max_connecting) {
        struct conn *c = subs[subs_started];
        sub_start(c, subs_started);
        subs_started++;
    }
}

static int subs_open(void)
{
    int open_count = 0;
    for (int i = 0; i < nsubs; i++)
        open_count += subs[i]->state != CS_CLOSED;
    return open_count;
}

/* The port of the rank-th subscriber of a session: --sub-ports round robin
 * (so each session's subscribers are spread over the nodes), else --port. */
static int sub_port(int rank)
{
    return opt.nsub_ports ? opt.sub_ports[rank % opt.nsub_ports] : opt.port;
}

/* The port of the n-th storm POST connection: --post-ports round robin. */
static int post_port(int n)
{
    return opt.npost_ports ? opt.post_ports[n % opt.npost_ports] : opt.port;
}

static struct conn *sub_new(int session, int idle, int port)
{
    struct conn *c = xcalloc(1, sizeof(*c));
    c->kind = KIND_SUB;
    c->port = port;
    c->fd = -1;
    c->state = CS_CLOSED;
    c->session = session;
    c->idle = idle;
    c->last_seq = -1;
    c->ev_sent_at = -1;
    c->ev_seq = -1;
    c->ev_term = -1;
    return c;
}

/* Connects every subscriber in subs[], throttled; returns the seconds it took. */
static double connect_all(void)
{
    uint64_t t0 = mono_us(), deadline = t0 + (uint64_t)(opt.connect_timeout * 1e6);
    while (!interrupted && now_mono < deadline) {
        connect_more();
        if (subs_started == nsubs && subs_connecting == 0)
            break;
        loop_once(5);
    }
    if (subs_connecting > 0)
        fprintf(stderr, "loadgen: %d subscribers still connecting at the deadline\n", subs_connecting);
    return (double)(mono_us() - t0) / 1e6;
}

/* Runs the loop for seconds (1 ms ticks), calling tick() after each turn. */
static void run_for(double seconds, void (*tick)(void))
{
    uint64_t end = mono_us() + (uint64_t)(seconds * 1e6);
    while (!interrupted && now_mono < end) {
        loop_once(1);
        if (tick)
            tick();
    }
}

/* ---- fanout ------------------------------------------------------------- */

static uint64_t pub_start_mono;
static struct conn *pub_conn;
static uint64_t pub_target;

static char run_message[160];
static int runs_posted;

static void fanout_tick(void)
{
    if (!publishing || pub_conn->state != CS_BODY)
        return;
    if (opt.serve_upstream) {
        double due = (double)(now_mono - pub_start_mono) / 1e6 * opt.rate;
        while (published < (uint64_t)due)
            upstream_publish((int)(published % (uint64_t)opt.sessions));
        return;
    }
    if (opt.target == TARGET_RUNCAST) {
        /* Session k's run starts k/rate seconds in, so the sessions' event
         * schedules interleave evenly, as Nchan's round-robin publishes do
         * (all at once would make every period start with a burst). */
        double due = (double)(now_mono - pub_start_mono) / 1e6 * opt.rate + 1;
        while (runs_posted < opt.sessions && runs_posted < due)
            post_run(pub_conn, runs_posted++, run_message);
        return;
    }
    double due = (double)(now_mono - pub_start_mono) / 1e6 * opt.rate;
    pub_target = (uint64_t)due;
    while (published < pub_target && pub_conn->inflight < opt.pub_inflight)
        publish_one(pub_conn, (int)(published % (uint64_t)opt.sessions));
    conn_flush(pub_conn);
}

static void emit_common(struct bytes *o, const char *mode)
{
    bytes_printf(o, "{\"mode\":\"%s\",\"target\":\"%s\"", mode,
                 opt.target == TARGET_NCHAN ? "nchan" : "runcast");
}

static void emit_errors(struct bytes *o)
{
    bytes_printf(o,
                 ",\"errors\":{\"connect\":%" PRIu64 ",\"http\":%" PRIu64 ",\"closed\":%" PRIu64
                 ",\"gaps\":%" PRIu64 ",\"no_timestamp\":%" PRIu64 ",\"publish\":%" PRIu64
                 ",\"post\":%" PRIu64 ",\"reset\":%" PRIu64 ",\"debug\":%" PRIu64 "}",
                 err.connect, err.http, err.closed, err.gaps, err.no_timestamp, err.publish,
                 err.post, err.reset, err.debug);
}

static void emit_cpu(struct bytes *o, struct cpu_mark a, struct cpu_mark b, uint64_t events)
{
    double wall = (double)(b.at_us - a.at_us) / 1e6;
    double server = (double)(b.server_ns - a.server_ns) / 1e9;
    double aux = (double)(b.aux_ns - a.aux_ns) / 1e9;
    double self = (double)(b.self_ns - a.self_ns) / 1e9;
    bytes_printf(o,
                 ",\"window_s\":%.3f,\"server_cpu_s\":%.4f,\"server_cpu_util\":%.3f"
                 ",\"server_cpu_s_per_M_events\":%.3f,\"events_per_server_cpu_s\":%.0f"
                 ",\"client_cpu_s\":%.4f,\"client_cpu_util\":%.3f"
                 ",\"upstream_cpu_s\":%.4f,\"upstream_cpu_util\":%.3f",
                 wall, server, wall > 0 ? server / wall : 0,
                 events ? server / ((double)events / 1e6) : 0,
                 server > 0 ? (double)events / server : 0, self, wall > 0 ? self / wall : 0,
                 aux, wall > 0 ? aux / wall : 0);
    bytes_printf(o, ",\"server_cpu_s_each\":[");
    for (int i = 0; i < opt.nserver; i++)
        bytes_printf(o, "%s%.4f", i ? "," : "", (double)(b.each_ns[i] - a.each_ns[i]) / 1e9);
    bytes_printf(o, "]");
}

static int run_fanout(void)
{
    int total_active = opt.sessions * opt.subs;
    nsubs = total_active + opt.idle;
    subs = xcalloc((size_t)nsubs, sizeof(*subs));
    /* Interleave sessions so each source address carries some of every one. */
    for (int i = 0; i < total_active; i++)
        subs[i] = sub_new(i % opt.sessions, 0, sub_port(i / opt.sessions));
    for (int i = 0; i < opt.idle; i++)
        subs[total_active + i] = sub_new(opt.sessions + i % opt.idle_sessions, 1,
                                         sub_port(i / opt.idle_sessions));
    channel_seq = xcalloc((size_t)opt.sessions + 1, sizeof(*channel_seq));
    if (opt.serve_upstream)
        upstream_listen();

    uint64_t rss_base = pids_status_kib(opt.server_pids, opt.nserver, "VmRSS");
    double connect_s = connect_all();
    int ready = subs_ready;
    run_for(opt.settle, NULL);
    uint64_t rss_loaded = pids_status_kib(opt.server_pids, opt.nserver, "VmRSS");

    /* Start the load. */
    struct conn *c = NULL;
    if (opt.rate > 0 && opt.sessions > 0) {
        if (opt.target == TARGET_NCHAN) {
            pub_conn = c = client_open(ROLE_PUB, opt.port, 0);
        } else {
            pub_conn = c = client_open(ROLE_POST, opt.port, 0);
            double per = opt.rate / opt.sessions;
            /* Enough events to outlast the window, counting the stagger. */
            uint64_t events = (uint64_t)ceil(per * (opt.warmup + opt.duration + 3 +
                                                    opt.sessions / opt.rate));
            snprintf(run_message, sizeof(run_message), "!events=%" PRIu64 " !bytes=%d !rate=%g",
                     events, opt.bytes, per);
        }
        /* Wait for the connect; fanout_tick then posts or publishes. */
        uint64_t dl = mono_us() + 5000000;
        while (!interrupted && c->state == CS_CONNECTING && now_mono < dl)
            loop_once(1);
        if (opt.serve_upstream) {
            /* Every run at once; the events start when every stream is open. */
            for (int k = 0; k < opt.sessions; k++)
                post_run(c, k, run_message);
            dl = mono_us() + 10000000;
            while (!interrupted && up_open < opt.sessions && now_mono < dl)
                loop_once(1);
            if (up_open < opt.sessions)
                die("--serve-upstream: %d of %d runs reached the upstream", up_open, opt.sessions);
            runs_posted = opt.sessions;
        }
        publishing = 1;
        pub_start_mono = mono_us();
    } else {
        pub_start_mono = mono_us();
    }
    run_for(opt.warmup, fanout_tick);
    struct cpu_mark a = cpu_mark_now();
    measuring = 1;
    run_for(opt.duration, fanout_tick);
    measuring = 0;
    struct cpu_mark b = cpu_mark_now();
    uint64_t rss_end = pids_status_kib(opt.server_pids, opt.nserver, "VmRSS");
    uint64_t rss_hwm = pids_status_kib(opt.server_pids, opt.nserver, "VmHWM");
    int still_open = subs_open();
    publishing = 0;

    double window = (double)(b.at_us - a.at_us) / 1e6;
    struct bytes o = {0};
    emit_common(&o, "fanout");
    bytes_printf(&o,
                 ",\"sessions\":%d,\"subs_per_session\":%d,\"idle\":%d,\"idle_sessions\":%d"
                 ",\"subscribers\":%d,\"ready\":%d,\"open_at_end\":%d,\"connect_s\":%.3f"
                 ",\"rate\":%g,\"bytes\":%d,\"delivered\":%" PRIu64 ",\"events_per_s\":%.1f"
                 ",\"expected_per_s\":%.1f",
                 opt.sessions, opt.subs, opt.idle, opt.idle ? opt.idle_sessions : 0, nsubs, ready,
                 still_open, connect_s, opt.rate, opt.bytes, delivered,
                 window > 0 ? (double)delivered / window : 0, opt.rate * opt.subs);
    bytes_printf(&o, ",");
    hist_json(&o, "latency_us", &lat);
    emit_cpu(&o, a, b, delivered);
    bytes_printf(&o,
                 ",\"rss_kib_base\":%" PRIu64 ",\"rss_kib_loaded\":%" PRIu64 ",\"rss_kib_end\":%" PRIu64
                 ",\"rss_kib_hwm\":%" PRIu64 ",\"rss_bytes_per_sub\":%.0f",
                 rss_base, rss_loaded, rss_end, rss_hwm,
                 nsubs ? (double)(rss_loaded > rss_base ? rss_loaded - rss_base : 0) * 1024.0 / nsubs : 0);
    bytes_printf(&o, ",\"published\":%" PRIu64 ",\"publish_answered\":%" PRIu64
                     ",\"other_events\":%" PRIu64,
                 published, pub_answered, other_events);
    emit_errors(&o);
    bytes_printf(&o, "}\n");
    fwrite(o.data, 1, o.len, stdout);
    return 0;
}

/* ---- storm -------------------------------------------------------------- */

static uint64_t storm_start;
static int storm_posting;

static void storm_tick(void)
{
    static uint64_t last_poll;
    if (now_mono - last_poll >= (uint64_t)(opt.poll_interval * 1e6)) {
        last_poll = now_mono;
        debug_poll();
    }
    if (!storm_posting)
        return;
    uint64_t due = (uint64_t)((double)(now_mono - storm_start) / 1e6 * opt.rate);
    if (due > post_cap)
        due = post_cap;
    /* With --post-ports the search for a free connection starts after the
     * last one used, so the POSTs spread evenly over the nodes at any rate
     * (from 0 every time, a light load would all go to the first). */
    static int next_client;
    for (int j = 0; j < nclients && posted < due; j++) {
        int i = opt.npost_ports > 1 ? (next_client + j) % nclients : j;
        struct conn *c = clients[i];
        if (c->role != ROLE_POST || c->state != CS_BODY || c->inflight > 0)
            continue;
        next_client = i + 1;
        uint64_t k = posted++;
        char msg[160];
        snprintf(msg, sizeof(msg), "%s k=%" PRIu64, opt.run_directives, k);
        c->post_k = (int64_t)k;
        post_issued_mono[k] = mono_us();
        post_sent_us[k] = wall_us();
        post_run(c, (int)(k % (uint64_t)opt.sessions), msg);
    }
    if (due > posted && due - posted > max_post_backlog)
        max_post_backlog = due - posted;
}

static int run_storm(void)
{
    if (opt.target != TARGET_RUNCAST)
        die("storm runs against runcast only");
    if (opt.demo_port <= 0)
        die("storm needs --demo-port");
    nsubs = opt.sessions;
    subs = xcalloc((size_t)nsubs, sizeof(*subs));
    for (int i = 0; i < nsubs; i++)
        subs[i] = sub_new(i, 0, sub_port(i));
    post_cap = (uint64_t)ceil(opt.rate * opt.duration) + 1;
    post_sent_us = xcalloc(post_cap, sizeof(*post_sent_us));
    post_issued_mono = xcalloc(post_cap, sizeof(*post_issued_mono));
    post_matched = xcalloc(post_cap, 1);
    run_table_cap = 64;
    while (run_table_cap < 4 * (post_cap + 16))
        run_table_cap *= 2;
    run_table = xcalloc(run_table_cap, sizeof(*run_table));

    double connect_s = connect_all();
    for (int i = 0; i < opt.post_conns; i++)
        client_open(ROLE_POST, post_port(i), i);
    debug_conn = client_open(ROLE_DEBUG, opt.demo_port, 0);
    run_for(opt.settle, storm_tick);

    struct cpu_mark a = cpu_mark_now();
    storm_start = mono_us();
    storm_posting = 1;
    run_for(opt.duration, storm_tick);
    storm_posting = 0;
    struct cpu_mark b = cpu_mark_now();
    /* Drain: every answer, every terminal event, a last poll or two. */
    uint64_t dl = mono_us() + (uint64_t)(opt.drain * 1e6);
    while (!interrupted && now_mono < dl &&
           (post_answered < posted || terminal_seen < post_accepted))
        run_for(0.05, storm_tick);
    run_for(2 * opt.poll_interval + 0.1, storm_tick);
    uint64_t dl2 = mono_us() + 2000000;
    while (!interrupted && debug_conn->inflight > 0 && now_mono < dl2)
        loop_once(5);

    struct bytes o = {0};
    emit_common(&o, "storm");
    bytes_printf(&o,
                 ",\"sessions\":%d,\"rate\":%g,\"duration_s\":%g,\"post_conns\":%d"
                 ",\"directives\":\"%s\",\"connect_s\":%.3f,\"posted\":%" PRIu64
                 ",\"answered\":%" PRIu64 ",\"accepted\":%" PRIu64 ",\"posts_per_s\":%.1f"
                 ",\"max_post_backlog\":%" PRIu64 ",\"terminal_events\":%" PRIu64
                 ",\"runs_lost\":%" PRId64 ",\"debug_polls\":%" PRIu64 ",\"upstream_matched\":%" PRIu64,
                 opt.sessions, opt.rate, opt.duration, opt.post_conns, opt.run_directives, connect_s,
                 posted, post_answered, post_accepted,
                 (double)posted / ((double)(b.at_us - a.at_us) / 1e6), max_post_backlog,
                 terminal_seen, (int64_t)post_accepted - (int64_t)terminal_seen, debug_polls,
                 debug_matched);
    bytes_printf(&o, ",");
    hist_json(&o, "post_latency_us", &post_latency);
    bytes_printf(&o, ",");
    hist_json(&o, "upstream_delay_us", &upstream_delay);
    emit_cpu(&o, a, b, posted);
    bytes_printf(&o, ",\"rss_kib_end\":%" PRIu64 ",\"agent_events\":%" PRIu64,
                 pids_status_kib(opt.server_pids, opt.nserver, "VmRSS"), delivered_all);
    /* Run by run: accepted without a terminal event, with several, and
     * terminal events of runs whose 202 never came. */
    uint64_t no_terminal = 0, several = 0, unknown = 0, accepted_ids = 0;
    for (size_t i = 0; i < run_table_cap; i++) {
        const struct run_slot *r = &run_table[i];
        if (r->id[0] == '\0')
            continue;
        accepted_ids += r->accepted;
        if (r->accepted && r->terminals == 0)
            no_terminal++;
        if (r->terminals > 1)
            several++;
        if (!r->accepted && r->terminals > 0)
            unknown++;
    }
    bytes_printf(&o, ",\"accepted_run_ids\":%" PRIu64 ",\"runs_without_terminal\":%" PRIu64
                     ",\"runs_with_several_terminals\":%" PRIu64
                     ",\"terminals_of_unknown_runs\":%" PRIu64 ",\"terminals_by_type\":{",
                 accepted_ids, no_terminal, several, unknown);
    for (int i = 0; i < TERM_KINDS; i++)
        bytes_printf(&o, "%s\"%s\":%" PRIu64, i ? "," : "", term_names[i], terminals_by_kind[i]);
    bytes_printf(&o, "}");
    emit_errors(&o);
    bytes_printf(&o, "}\n");
    fwrite(o.data, 1, o.len, stdout);
    return 0;
}

/* ---- replay ------------------------------------------------------------- */

static int run_replay(void)
{
    if (opt.target != TARGET_RUNCAST)
        die("replay runs against runcast only");
    /* 1. Fill the log: one run of replay_events events on session 0. */
    struct conn *c = client_open(ROLE_POST, opt.port, 0);
    char msg[160];
    snprintf(msg, sizeof(msg), "!events=%d !bytes=%d !rate=%g", opt.replay_events, opt.bytes,
             opt.replay_rate);
    post_cap = 0;
    uint64_t dl = mono_us() + 5000000;
    while (!interrupted && c->state == CS_CONNECTING && now_mono < dl)
        loop_once(1);
    post_run(c, 0, msg);
    while (!interrupted && c->inflight > 0 && now_mono < dl)
        loop_once(1);
    if (post_accepted != 1)
        die("the replay run was not accepted");
    /* 2. A probe reads the whole run (default replay) and learns the first id. */
    nsubs = 1;
    subs = xcalloc(1, sizeof(*subs));
    subs[0] = sub_new(0, 0, opt.port);
    subs[0]->probe = 1;
    sub_start(subs[0], 0);
    dl = mono_us() + 60000000;
    while (!interrupted && !probe_done && now_mono < dl)
        loop_once(5);
    if (!probe_done)
        die("the probe did not see the run end");
    memcpy(replay_first_id, subs[0]->first_id, sizeof(replay_first_id));
    uint64_t log_events = probe_events;
    /* 3. Everyone reconnects at once with Last-Event-ID = the first event. */
    free(subs[0]);
    subs_ready = 0;
    nsubs = opt.replay_subs;
    subs_started = 0;
    subs = xcalloc((size_t)nsubs, sizeof(*subs));
    for (int i = 0; i < nsubs; i++) {
        subs[i] = sub_new(0, 0, opt.port);
        subs[i]->replay = 1;
    }
    opt.max_connecting = nsubs;
    struct cpu_mark a = cpu_mark_now();
    dl = a.at_us + (uint64_t)(opt.connect_timeout * 1e6);
    while (!interrupted && now_mono < dl && replay_done + err.connect + err.http + err.closed < (uint64_t)nsubs) {
        connect_more();
        loop_once(1);
    }
    struct cpu_mark b = cpu_mark_now();
    double wall = (double)(b.at_us - a.at_us) / 1e6;

    struct bytes o = {0};
    emit_common(&o, "replay");
    bytes_printf(&o,
                 ",\"log_events\":%" PRIu64 ",\"first_id\":\"%s\",\"subscribers\":%d"
                 ",\"completed\":%" PRIu64 ",\"events_delivered\":%" PRIu64
                 ",\"wall_s\":%.4f,\"events_per_s\":%.0f,",
                 log_events, replay_first_id, nsubs, replay_done, replay_events_total, wall,
                 wall > 0 ? (double)replay_events_total / wall : 0);
    hist_json(&o, "completion_us", &replay_time);
    emit_cpu(&o, a, b, replay_events_total);
    emit_errors(&o);
    bytes_printf(&o, "}\n");
    fwrite(o.data, 1, o.len, stdout);
    return 0;
}

/* ---- main --------------------------------------------------------------- */

/* Parses "P1,P2,..." into ports[] (at most MAX_PORTS); returns the count. */
static int parse_ports(const char *text, int *ports)
{
    int n = 0;
    const char *p = text;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > 65535 || n == MAX_PORTS || (*end != ',' && *end != '\0'))
            die("bad port list %s", text);
        ports[n++] = (int)v;
        p = *end ? end + 1 : end;
    }
    return n;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen --mode fanout|storm|replay [options]\n"
            "  --target runcast|nchan   server kind (default runcast)\n"
            "  --port N                 server port on 127.0.0.1\n"
            "  --demo-port N            storm: the demo agent's port (/debug/calls)\n"
            "  --sessions N --subs N    active sessions, subscribers per session\n"
            "  --idle N --idle-sessions N  extra idle subscribers over N sessions\n"
            "  --rate R                 fanout: events/s in total; storm: POSTs/s\n"
            "  --bytes B                text bytes per event (default 128)\n"
            "  --warmup S --duration S --settle S --drain S --connect-timeout S\n"
            "  --prefix P               session/channel name prefix\n"
            "  --src N                  source addresses 127.0.0.1..N (default 9)\n"
            "  --server-pid P --aux-pid P  processes whose CPU/RSS is reported (repeat)\n"
            "  --post-conns N --directives TEXT   storm: POST connections, run directives\n"
            "  --replay-events N --replay-subs N --replay-rate R\n"
            "  --max-connecting N       connects in progress at once (default 256)\n"
            "  --serve-upstream N       fanout on runcast: be its upstream on port N (runcast's\n"
            "                           --upstream), publishing as for Nchan, instead of the demo agent\n"
            "  --sub-ports P1,P2,...    subscribers connect to these ports round robin (each\n"
            "                           session's k-th subscriber to P[k %% n]); POSTs go to --port\n"
            "  --post-ports P1,P2,...   storm: the POST connections, round robin over these ports\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"mode", 1, 0, 'm'}, {"target", 1, 0, 't'}, {"port", 1, 0, 'p'},
        {"demo-port", 1, 0, 'D'}, {"sessions", 1, 0, 's'}, {"subs", 1, 0, 'n'},
        {"idle", 1, 0, 'i'}, {"idle-sessions", 1, 0, 'I'}, {"rate", 1, 0, 'r'},
        {"bytes", 1, 0, 'b'}, {"warmup", 1, 0, 'w'}, {"duration", 1, 0, 'd'},
        {"settle", 1, 0, 'S'}, {"drain", 1, 0, 'X'}, {"connect-timeout", 1, 0, 'C'},
        {"prefix", 1, 0, 'P'}, {"src", 1, 0, 'a'}, {"server-pid", 1, 0, 'k'},
        {"aux-pid", 1, 0, 'x'}, {"post-conns", 1, 0, 'c'}, {"directives", 1, 0, 'R'},
        {"replay-events", 1, 0, 'e'}, {"replay-subs", 1, 0, 'E'}, {"replay-rate", 1, 0, 'Q'},
        {"max-connecting", 1, 0, 'M'}, {"serve-upstream", 1, 0, 'U'}, {"help", 0, 0, 'h'},
        {"sub-ports", 1, 0, 'B'}, {"post-ports", 1, 0, 'O'},
        {0, 0, 0, 0},
    };
    static char prefix_buf[32];
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'm':
            if (!strcmp(optarg, "fanout")) opt.mode = MODE_FANOUT;
            else if (!strcmp(optarg, "storm")) opt.mode = MODE_STORM;
            else if (!strcmp(optarg, "replay")) opt.mode = MODE_REPLAY;
            else usage();
            break;
        case 't':
            if (!strcmp(optarg, "runcast")) opt.target = TARGET_RUNCAST;
            else if (!strcmp(optarg, "nchan")) opt.target = TARGET_NCHAN;
            else usage();
            break;
        case 'p': opt.port = atoi(optarg); break;
        case 'D': opt.demo_port = atoi(optarg); break;
        case 's': opt.sessions = atoi(optarg); break;
        case 'n': opt.subs = atoi(optarg); break;
        case 'i': opt.idle = atoi(optarg); break;
        case 'I': opt.idle_sessions = atoi(optarg); break;
        case 'r': opt.rate = atof(optarg); break;
        case 'b': opt.bytes = atoi(optarg); break;
        case 'w': opt.warmup = atof(optarg); break;
        case 'd': opt.duration = atof(optarg); break;
        case 'S': opt.settle = atof(optarg); break;
        case 'X': opt.drain = atof(optarg); break;
        case 'C': opt.connect_timeout = atof(optarg); break;
        case 'P': opt.prefix = optarg; break;
        case 'a': opt.src = atoi(optarg); break;
        case 'k':
            if (opt.nserver < MAX_PIDS) opt.server_pids[opt.nserver++] = atoi(optarg);
            break;
        case 'x':
            if (opt.naux < MAX_PIDS) opt.aux_pids[opt.naux++] = atoi(optarg);
            break;
        case 'c': opt.post_conns = atoi(optarg); break;
        case 'R': opt.run_directives = optarg; break;
        case 'e': opt.replay_events = atoi(optarg); break;
        case 'E': opt.replay_subs = atoi(optarg); break;
        case 'Q': opt.replay_rate = atof(optarg); break;
        case 'M': opt.max_connecting = atoi(optarg); break;
        case 'U': opt.serve_upstream = atoi(optarg); break;
        case 'B': opt.nsub_ports = parse_ports(optarg, opt.sub_ports); break;
        case 'O': opt.npost_ports = parse_ports(optarg, opt.post_ports); break;
        default: usage();
        }
    }
    if (opt.port <= 0 || opt.sessions < 0 || opt.subs < 0 || opt.idle < 0 || opt.bytes < 1 ||
        opt.src < 1 || opt.src > 254 || opt.idle_sessions < 1 || opt.max_connecting < 1)
        usage();
    if (opt.prefix == NULL) {
        snprintf(prefix_buf, sizeof(prefix_buf), "b%d-", (int)getpid());
        opt.prefix = prefix_buf;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1: %s", strerror(errno));
    now_mono = mono_us();
    switch (opt.mode) {
    case MODE_FANOUT: return run_fanout();
    case MODE_STORM: return run_storm();
    case MODE_REPLAY: return run_replay();
    }
    return 2;
}
