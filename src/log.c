/* log.c: logfmt and JSON lines (see log.h). */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

static enum log_level min_level = LOG_INFO;
static enum log_format format = LOG_TEXT;

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

void log_event(enum log_level level, const char *event, ...)
{
    if (!log_enabled(level))
        return;
    struct buf b = {0};
    double now = time_wall_seconds();
    if (format == LOG_JSON)
        buf_printf(&b, "{\"ts\":%.3f,\"level\":\"%s\"", now, level_names[level]);
    else
        buf_printf(&b, "ts=%.3f level=%s", now, level_names[level]);
    append_field(&b, "event", event);
    va_list ap;
    va_start(ap, event);
    for (;;) {
        const char *name = va_arg(ap, const char *);
        if (name == NULL)
            break;
        const char *value = va_arg(ap, const char *);
        append_field(&b, name, value ? value : "");
    }
    va_end(ap);
    if (format == LOG_JSON)
        buf_append(&b, "}", 1);
    buf_append(&b, "\n", 1);
    ssize_t ignored = write(STDERR_FILENO, b.data, b.len);
    (void)ignored;
    buf_free(&b);
}
