/* log.c: logfmt and JSON lines (see log.h). */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

static enum log_level min_level = LOG_INFO;
static enum log_format format = LOG_TEXT;

/* Output must never block the loop. When stderr is a pipe or a socket (a
 * supervisor, journald, a test harness), its reader can stall, and one
 * blocking write(2) would then freeze every stream. So such an stderr is
 * made non-blocking (log_attach); a line the reader has no room for waits in
 * `pending`, which the next line and a timer on the loop flush; past
 * LOG_PENDING_MAX bytes whole lines are dropped, counted, and reported by a
 * `log.dropped` line once there is room again. A terminal or a regular file
 * is written directly, as it cannot stall on a reader. */
#define LOG_PENDING_MAX (1024 * 1024)
#define LOG_FLUSH_MS 50
#define LOG_EXIT_FLUSH_MS 1000

static struct {
    pthread_mutex_t lock; /* the demo agent logs from its own thread */
    int nonblocking;
    int saved_flags;
    struct buf pending;
    uint64_t dropped, dropped_unreported;
    uv_timer_t flush_timer;
} sink = {.lock = PTHREAD_MUTEX_INITIALIZER};

static const char *level_names[] = {"debug", "info", "warn", "error"};

void log_configure(enum log_level level, enum log_format fmt)
{
    min_level = level;
    format = fmt;
}

int log_parse_level(const char *s, enum log_level *out)
{
    for (int i = 0; i < (int)RC_ARRAY_SIZE(level_names); i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    if (strcmp(s, "warning") == 0) {
        *out = LOG_WARN;
        return 0;
    }
    return -EINVAL;
}

int log_parse_format(const char *s, enum log_format *out)
{
    if (strcmp(s, "text") == 0)
        *out = LOG_TEXT;
    else if (strcmp(s, "json") == 0)
        *out = LOG_JSON;
    else
        return -EINVAL;
    return 0;
}

int log_enabled(enum log_level level)
{
    return level >= min_level;
}

/* JSON string escaping; also used for logfmt's quoted values, whose escapes
 * are the same for the characters that matter (quote, backslash, controls). */
static void append_escaped(struct buf *b, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        switch (c) {
        case '"': buf_append(b, "\\\"", 2); break;
        case '\\': buf_append(b, "\\\\", 2); break;
        case '\n': buf_append(b, "\\n", 2); break;
        case '\r': buf_append(b, "\\r", 2); break;
        case '\t': buf_append(b, "\\t", 2); break;
        default:
            if (c < 0x20 || c == 0x7f)
                buf_printf(b, "\\u%04x", c);
            else
                buf_append(b, s, 1);
        }
    }
}

static int logfmt_needs_quotes(const char *s)
{
    if (*s == '\0')
        return 1;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c == 0x7f)
            return 1;
    }
    return 0;
}

static void append_field(struct buf *b, const char *name, const char *value)
{
    if (format == LOG_JSON) {
        buf_append(b, ",\"", 2);
        append_escaped(b, name);
        buf_append(b, "\":\"", 3);
        append_escaped(b, value);
        buf_append(b, "\"", 1);
        return;
    }
    buf_printf(b, " %s=", name);
    if (logfmt_needs_quotes(value)) {
        buf_append(b, "\"", 1);
        append_escaped(b, value);
        buf_append(b, "\"", 1);
    } else {
        buf_append_str(b, value);
    }
}

/* Formats one line into b: the time, the level, the event, then the
 * name/value pairs of ap up to a NULL name. */
static void format_line(struct buf *b, enum log_level level, const char *event, va_list ap)
{
    double now = time_wall_seconds();
    if (format == LOG_JSON)
        buf_printf(b, "{\"ts\":%.3f,\"level\":\"%s\"", now, level_names[level]);
    else
        buf_printf(b, "ts=%.3f level=%s", now, level_names[level]);
    append_field(b, "event", event);
    for (;;) {
        const char *name = va_arg(ap, const char *);
        if (name == NULL)
            break;
        const char *value = va_arg(ap, const char *);
        append_field(b, name, value ? value : "");
    }
    if (format == LOG_JSON)
        buf_append(b, "}", 1);
    buf_append(b, "\n", 1);
}

static void format_fields(struct buf *b, enum log_level level, const char *event, ...)
{
    va_list ap;
    va_start(ap, event);
    format_line(b, level, event, ap);
    va_end(ap);
}

/* Writes what pending holds, as far as stderr takes it. Holds sink.lock. */
static void flush_pending_locked(void)
{
    while (sink.pending.len > 0) {
        ssize_t n = write(STDERR_FILENO, sink.pending.data, sink.pending.len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) { /* EAGAIN: the reader is behind; any other error: give up on it */
            if (n < 0 && errno != EAGAIN)
                buf_reset(&sink.pending);
            return;
        }
        buf_consume(&sink.pending, (size_t)n);
    }
}

/* Queues a `log.dropped` line once the backlog has room again. Holds sink.lock. */
static void report_drops_locked(void)
{
    if (sink.dropped_unreported > 0 && sink.pending.len < LOG_PENDING_MAX / 2) {
        char count[24];
        snprintf(count, sizeof(count), "%llu", (unsigned long long)sink.dropped_unreported);
        sink.dropped_unreported = 0;
        format_fields(&sink.pending, LOG_WARN, "log.dropped", "lines", count, NULL);
    }
}

/* Queues line[0..len) behind what is pending, or drops it. Holds sink.lock. */
static void enqueue_locked(const char *line, size_t len)
{
    report_drops_locked();
    if (sink.pending.len + len > LOG_PENDING_MAX) {
        sink.dropped++;
        sink.dropped_unreported++;
        return;
    }
    buf_append(&sink.pending, line, len);
}

static void emit(const char *line, size_t len)
{
    pthread_mutex_lock(&sink.lock);
    if (!sink.nonblocking) {
        ssize_t ignored = write(STDERR_FILENO, line, len);
        (void)ignored;
    } else {
        flush_pending_locked();
        size_t sent = 0;
        if (sink.pending.len == 0 && sink.dropped_unreported == 0) {
            ssize_t n;
            do
                n = write(STDERR_FILENO, line, len);
            while (n < 0 && errno == EINTR);
            sent = n > 0 ? (size_t)n : 0;
        }
        if (sent < len)
            enqueue_locked(line + sent, len - sent);
    }
    pthread_mutex_unlock(&sink.lock);
}

void log_event(enum log_level level, const char *event, ...)
{
    if (!log_enabled(level))
        return;
    struct buf b = {0};
    va_list ap;
    va_start(ap, event);
    format_line(&b, level, event, ap);
    va_end(ap);
    emit(b.data, b.len);
    buf_free(&b);
}

static void on_flush_timer(uv_timer_t *t)
{
    pthread_mutex_lock(&sink.lock);
    flush_pending_locked();
    report_drops_locked(); /* even when nothing more is logged */
    flush_pending_locked();
    pthread_mutex_unlock(&sink.lock);
}

int log_attach(uv_loop_t *loop)
{
    struct stat st;
    if (fstat(STDERR_FILENO, &st) < 0 || !(S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)))
        return 0;
    int flags = fcntl(STDERR_FILENO, F_GETFL);
    if (flags < 0 || fcntl(STDERR_FILENO, F_SETFL, flags | O_NONBLOCK) < 0)
        return 0;
    pthread_mutex_lock(&sink.lock);
    sink.saved_flags = flags;
    sink.nonblocking = 1;
    pthread_mutex_unlock(&sink.lock);
    uv_timer_init(loop, &sink.flush_timer);
    uv_timer_start(&sink.flush_timer, on_flush_timer, LOG_FLUSH_MS, LOG_FLUSH_MS);
    uv_unref((uv_handle_t *)&sink.flush_timer); /* logs alone never keep the loop up */
    return 1;
}

void log_detach(void)
{
    if (sink.nonblocking)
        uv_close((uv_handle_t *)&sink.flush_timer, NULL);
}

void log_finish(void)
{
    pthread_mutex_lock(&sink.lock);
    if (sink.nonblocking) {
        /* Off the loop now: wait a little for the reader, never forever. */
        uint64_t deadline = time_mono_ms() + LOG_EXIT_FLUSH_MS;
        for (;;) {
            flush_pending_locked();
            uint64_t now = time_mono_ms();
            if (sink.pending.len == 0 || now >= deadline)
                break;
            struct pollfd pfd = {.fd = STDERR_FILENO, .events = POLLOUT};
            poll(&pfd, 1, (int)(deadline - now));
        }
        buf_free(&sink.pending);
        sink.nonblocking = 0;
        fcntl(STDERR_FILENO, F_SETFL, sink.saved_flags);
    }
    pthread_mutex_unlock(&sink.lock);
}

uint64_t log_dropped_lines(void)
{
    pthread_mutex_lock(&sink.lock);
    uint64_t n = sink.dropped;
    pthread_mutex_unlock(&sink.lock);
    return n;
}
