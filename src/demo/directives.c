/* directives.c: a message's `!` words, parsed into struct demo_directives
 * (the table in docs/DEMO.md). Pure: no loop, no I/O, nothing global. */
#include "demo_internal.h"

#include <math.h>
#include <stdlib.h>

#include "../config.h"

/* Strict unsigned decimal; returns 0 or -EINVAL. */
static int demo_parse_u64(const char *s, size_t len, uint64_t *out)
{
    if (len == 0 || len > 19)
        return -EINVAL;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return 0;
}

/* 1 when s[0..len) is 1..max printable ASCII characters (safe in a header). */
static int demo_is_header_token(const char *s, size_t len, size_t max)
{
    if (len == 0 || len > max)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (s[i] < 0x21 || s[i] > 0x7e)
            return 0;
    return 1;
}

/* Copies a name of 1..size-1 of [A-Za-z0-9_-] into out[size], or leaves out
 * as it is. */
static void demo_copy_name(char *out, size_t size, const char *v, size_t len)
{
    if (len == 0 || len >= size)
        return;
    for (size_t i = 0; i < len; i++) {
        char ch = v[i];
        if (!(ch >= 'A' && ch <= 'Z') && !(ch >= 'a' && ch <= 'z') &&
            !(ch >= '0' && ch <= '9') && ch != '_' && ch != '-')
            return;
    }
    memcpy(out, v, len);
    out[len] = '\0';
}

static int demo_name_is(const char *name, size_t name_len, const char *cstr)
{
    return strlen(cstr) == name_len && memcmp(name, cstr, name_len) == 0;
}

/* The gateway's duration syntax (config_parse_duration_ms). 0 or -EINVAL. */
static int demo_parse_duration(const char *v, size_t len, uint64_t *out_ms)
{
    char tmp[64];
    if (len == 0 || len >= sizeof(tmp))
        return -EINVAL;
    memcpy(tmp, v, len);
    tmp[len] = '\0';
    return config_parse_duration_ms(tmp, out_ms);
}

/* !status=CODE or !status=CODExN, CODE in 200..599, N >= 1. 0 or -EINVAL
 * (then *code and *calls are untouched). */
static int demo_parse_status(const char *v, size_t len, int *code, uint64_t *calls)
{
    const char *x = memchr(v, 'x', len);
    size_t code_len = x ? (size_t)(x - v) : len;
    uint64_t c, n = 0;
    if (demo_parse_u64(v, code_len, &c) != 0 || c < 200 || c > 599)
        return -EINVAL;
    if (x && (demo_parse_u64(x + 1, len - code_len - 1, &n) != 0 || n == 0))
        return -EINVAL;
    *code = (int)c;
    *calls = n;
    return 0;
}

/* A positive finite decimal (!rate). 0 or -EINVAL. */
static int demo_parse_rate(const char *v, size_t len, double *out)
{
    char tmp[64], *end;
    if (len == 0 || len >= sizeof(tmp))
        return -EINVAL;
    memcpy(tmp, v, len);
    tmp[len] = '\0';
    double r = strtod(tmp, &end);
    if (*end != '\0' || !isfinite(r) || r <= 0)
        return -EINVAL;
    *out = r;
    return 0;
}

/* Copies a header-safe value into out[size], or leaves out as it is. */
static void demo_copy_token(char *out, size_t size, const char *v, size_t len)
{
    if (demo_is_header_token(v, len, size - 1)) {
        memcpy(out, v, len);
        out[len] = '\0';
    }
}

/* Applies one directive word (without its '!'). Unknown names and bad values
 * are ignored: the word is dropped from the echo either way. */
static void demo_directive_apply(struct demo_directives *dir, const char *w, size_t len)
{
    const char *eq = memchr(w, '=', len);
    size_t name_len = eq ? (size_t)(eq - w) : len;
    const char *v = eq ? eq + 1 : NULL;
    size_t vlen = eq ? len - name_len - 1 : 0;
    uint64_t n;

    if (v == NULL) {
        if (demo_name_is(w, name_len, "hang"))
            dir->hang = 1;
        else if (demo_name_is(w, name_len, "malformed"))
            dir->malformed = 1;
        else if (demo_name_is(w, name_len, "forget"))
            dir->forget = 1;
        else if (demo_name_is(w, name_len, "cut"))
            dir->cut_after = 1;
        else if (demo_name_is(w, name_len, "think"))
            dir->think = 1;
        return;
    }
    if (demo_name_is(w, name_len, "word-delay")) {
        if (demo_parse_duration(v, vlen, &dir->word_delay_ms) == 0)
            dir->has_word_delay = 1;
    } else if (demo_name_is(w, name_len, "delay")) {
        demo_parse_duration(v, vlen, &dir->delay_ms);
    } else if (demo_name_is(w, name_len, "first")) {
        demo_parse_duration(v, vlen, &dir->first_ms);
    } else if (demo_name_is(w, name_len, "events")) {
        if (demo_parse_u64(v, vlen, &dir->events) == 0)
            dir->has_events = 1;
    } else if (demo_name_is(w, name_len, "bytes")) {
        if (demo_parse_u64(v, vlen, &n) == 0)
            dir->bytes = n < DEMO_MAX_EVENT_BYTES ? n : DEMO_MAX_EVENT_BYTES;
    } else if (demo_name_is(w, name_len, "rate")) {
        demo_parse_rate(v, vlen, &dir->rate);
    } else if (demo_name_is(w, name_len, "status")) {
        demo_parse_status(v, vlen, &dir->status, &dir->status_calls);
    } else if (demo_name_is(w, name_len, "retry-after")) {
        demo_copy_token(dir->retry_after, sizeof(dir->retry_after), v, vlen);
    } else if (demo_name_is(w, name_len, "error")) {
        free(dir->error);
        dir->error = xstrndup(v, vlen);
    } else if (demo_name_is(w, name_len, "cut")) {
        if (demo_parse_u64(v, vlen, &n) == 0 && n <= INT64_MAX)
            dir->cut_after = (int64_t)n;
    } else if (demo_name_is(w, name_len, "ctype")) {
        demo_copy_token(dir->ctype, sizeof(dir->ctype), v, vlen);
    } else if (demo_name_is(w, name_len, "tool")) {
        demo_copy_name(dir->tool, sizeof(dir->tool), v, vlen);
    } else if (demo_name_is(w, name_len, "state")) {
        demo_copy_name(dir->state_key, sizeof(dir->state_key), v, vlen);
    }
}

static int demo_is_space(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f';
}

void demo_directives_init(struct demo_directives *dir)
{
    memset(dir, 0, sizeof(*dir));
    dir->bytes = 16;
    dir->cut_after = -1;
}

uint64_t demo_directives_parse(const char *text, struct demo_directives *dir,
                               struct buf *words_out)
{
    uint64_t words = 0;
    const char *p = text;
    while (*p) {
        while (*p && demo_is_space(*p))
            p++;
        const char *w = p;
        while (*p && !demo_is_space(*p))
            p++;
        size_t len = (size_t)(p - w);
        if (len == 0)
            break;
        if (w[0] == '!') {
            demo_directive_apply(dir, w + 1, len - 1);
        } else {
            if (words_out->len > 0)
                buf_append(words_out, " ", 1);
            buf_append(words_out, w, len);
            words++;
        }
    }
    return words;
}

void demo_directives_free(struct demo_directives *dir)
{
    free(dir->error);
    dir->error = NULL;
}
