/* frame_scan.c: the fast frame check (see frame_scan.h).
 *
 * Most upstream frames are plain JSON objects that runcast relays verbatim;
 * building a jansson tree for each one only to throw it away was a tenth of
 * runcast's CPU in fan-out. This scanner walks the bytes once, allocating
 * nothing, and says "certainly plain" or "not sure"; upstream.c hands every
 * "not sure" to jansson, so the verdicts stay jansson's. fuzz/fuzz_sse.c
 * checks that it is never sure of a frame jansson would not relay.
 */
#include "frame_scan.h"

#include <string.h>

/* A scanner over one frame that never allocates. It only ever answers "yes,
 * certainly" or "not sure": whatever it does not fully understand (escapes
 * that decode to NUL or surrogates, huge numbers, deep nesting, a top-level
 * key spelled with escapes, any error) is left to jansson, so the verdicts
 * are jansson's, only faster for ordinary frames. */
struct scan {
    const unsigned char *p, *end;
};

#define SCAN_MAX_DEPTH 64

static void scan_ws(struct scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

static int scan_hex4(struct scan *s, unsigned *out)
{
    if (s->end - s->p < 4)
        return 0;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = *s->p++;
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= c - '0';
        else if (c >= 'a' && c <= 'f')
            v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            v |= c - 'A' + 10;
        else
            return 0;
    }
    *out = v;
    return 1;
}

/* One UTF-8 sequence starting at a byte >= 0x80, as strictly as jansson
 * (no overlongs, no surrogates, nothing past U+10FFFF). */
static int scan_utf8(struct scan *s)
{
    unsigned char c = *s->p++;
    int more;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        more = 1;
    else if (c >= 0xE0 && c <= 0xEF) {
        more = 2;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        more = 3;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        return 0;
    }
    if (s->end - s->p < more)
        return 0;
    for (int i = 0; i < more; i++, lo = 0x80, hi = 0xBF) {
        unsigned char b = *s->p++;
        if (b < lo || b > hi)
            return 0;
    }
    return 1;
}

/* 1 for the bytes that end a run of ordinary string characters: '"', '\\',
 * control characters and the bytes of UTF-8 sequences. */
static const unsigned char string_stop[256] = {
    [0x00 ... 0x1f] = 1, ['"'] = 1, ['\\'] = 1, [0x80 ... 0xff] = 1,
};

/* A string; s->p is at its opening quote. *plain is set when it had no
 * escape (its raw bytes are its value). */
static int scan_string(struct scan *s, int *plain)
{
    s->p++;
    *plain = 1;
    while (s->p < s->end) {
        /* Most of an event is plain ASCII text: skip it a table look-up
         * per byte (this loop was the largest user-space cost per event). */
        while (s->p < s->end && !string_stop[(unsigned char)*s->p])
            s->p++;
        if (s->p >= s->end)
            break;
        unsigned char c = *s->p;
        if (c == '"') {
            s->p++;
            return 1;
        }
        if (c < 0x20)
            return 0;
        if (c >= 0x80) {
            if (!scan_utf8(s))
                return 0;
            continue;
        }
        s->p++;
        if (c != '\\')
            continue;
        *plain = 0;
        if (s->p >= s->end)
            return 0;
        c = *s->p++;
        if (c == 'u') {
            unsigned v;
            if (!scan_hex4(s, &v) || v == 0 || (v >= 0xD800 && v <= 0xDFFF))
                return 0; /* NUL and surrogate pairs: jansson decides */
        } else if (!strchr("\"\\/bfnrt", c) || c == '\0') {
            return 0;
        }
    }
    return 0;
}

static int scan_digits(struct scan *s)
{
    int n = 0;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9') {
        s->p++;
        n++;
    }
    return n;
}

/* A number whose value jansson certainly accepts: integers of at most 18
 * digits (no int64 overflow), reals with an exponent of at most 2 digits
 * (no double overflow). */
static int scan_number(struct scan *s)
{
    if (*s->p == '-')
        s->p++;
    if (s->p >= s->end)
        return 0;
    int digits;
    if (*s->p == '0') {
        s->p++;
        digits = 1;
    } else {
        digits = scan_digits(s);
        if (digits == 0)
            return 0;
    }
    int real = 0;
    if (s->p < s->end && *s->p == '.') {
        s->p++;
        if (scan_digits(s) == 0)
            return 0;
        real = 1;
    }
    if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
        s->p++;
        if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
            s->p++;
        int e = scan_digits(s);
        if (e == 0 || e > 2)
            return 0;
        real = 1;
    }
    return real ? digits <= 300 : digits <= 18;
}

static int scan_literal(struct scan *s, const char *word, size_t n)
{
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0)
        return 0;
    s->p += n;
    return 1;
}

static int scan_value(struct scan *s, int depth);

/* 1 when a top-level member name says the frame may be an error: "error"
 * (an error frame), "errorCode" or "errorMessage" (an event with an error). */
static int is_error_name(const unsigned char *name, size_t len)
{
    return (len == 5 && memcmp(name, "error", 5) == 0) ||
           (len == 9 && memcmp(name, "errorCode", 9) == 0) ||
           (len == 12 && memcmp(name, "errorMessage", 12) == 0);
}

/* An object; s->p is at '{'. At depth 0 an empty object, a member whose name
 * may be an error's (is_error_name) or a name with escapes (which might
 * decode to one) makes the answer "not sure". */
static int scan_object(struct scan *s, int depth)
{
    s->p++;
    scan_ws(s);
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        return depth > 0;
    }
    for (;;) {
        if (s->p >= s->end || *s->p != '"')
            return 0;
        const unsigned char *name = s->p + 1;
        int plain;
        if (!scan_string(s, &plain))
            return 0;
        if (depth == 0 && (!plain || is_error_name(name, (size_t)(s->p - 1 - name))))
            return 0;
        scan_ws(s);
        if (s->p >= s->end || *s->p++ != ':')
            return 0;
        scan_ws(s);
        if (!scan_value(s, depth + 1))
            return 0;
        scan_ws(s);
        if (s->p >= s->end)
            return 0;
        if (*s->p == '}') {
            s->p++;
            return 1;
        }
        if (*s->p++ != ',')
            return 0;
        scan_ws(s);
    }
}

static int scan_array(struct scan *s, int depth)
{
    s->p++;
    scan_ws(s);
    if (s->p < s->end && *s->p == ']') {
        s->p++;
        return 1;
    }
    for (;;) {
        if (!scan_value(s, depth + 1))
            return 0;
        scan_ws(s);
        if (s->p >= s->end)
            return 0;
        if (*s->p == ']') {
            s->p++;
            return 1;
        }
        if (*s->p++ != ',')
            return 0;
        scan_ws(s);
    }
}

static int scan_value(struct scan *s, int depth)
{
    if (s->p >= s->end || depth > SCAN_MAX_DEPTH)
        return 0;
    int plain;
    switch (*s->p) {
    case '{': return scan_object(s, depth);
    case '[': return scan_array(s, depth);
    case '"': return scan_string(s, &plain);
    case 't': return scan_literal(s, "true", 4);
    case 'f': return scan_literal(s, "false", 5);
    case 'n': return scan_literal(s, "null", 4);
    default: return scan_number(s);
    }
}

int frame_scan_is_plain_object(const char *data, size_t len)
{
    struct scan s = {(const unsigned char *)data, (const unsigned char *)data + len};
    scan_ws(&s);
    if (s.p >= s.end || *s.p != '{' || !scan_object(&s, 0))
        return 0;
    scan_ws(&s);
    return s.p == s.end;
}
