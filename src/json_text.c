/* json_text.c: compact JSON text without json_dumps (see json_text.h). */
#include "json_text.h"

#include <stdio.h>
#include <stdlib.h>

/* The short escapes; the other bytes below 0x20 are written \u00XX. */
static const char *const escapes[128] = {
    ['\b'] = "\\b", ['\f'] = "\\f", ['\n'] = "\\n", ['\r'] = "\\r", ['\t'] = "\\t",
    ['"'] = "\\\"", ['\\'] = "\\\\",
};

void json_text_string(struct buf *out, const char *s, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    buf_reserve(out, len + 2);
    buf_append(out, "\"", 1);
    size_t plain = 0; /* bytes before i that need no escape, not yet copied */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            plain++;
            continue;
        }
        buf_append(out, s + i - plain, plain);
        plain = 0;
        if (escapes[c] != NULL) {
            buf_append_str(out, escapes[c]);
        } else {
            char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            buf_append(out, u, sizeof(u));
        }
    }
    buf_append(out, s + len - plain, plain);
    buf_append(out, "\"", 1);
}

/* jansson's real format: "%.17g", ".0" added when that reads as an integer,
 * and the exponent without '+' or leading zeros. */
static void append_real(struct buf *out, double value)
{
    char text[64];
    int n = snprintf(text, sizeof(text), "%.17g", value);
    if (n < 0 || (size_t)n >= sizeof(text) - 3)
        return; /* cannot happen for a finite double */
    size_t len = (size_t)n;
    if (strchr(text, '.') == NULL && strchr(text, 'e') == NULL) {
        memcpy(text + len, ".0", 3);
        len += 2;
    }
    char *e = strchr(text, 'e');
    if (e != NULL) {
        /* The exponent loses its '+' and leading zeros: "e+05" -> "e5",
         * "e-05" -> "e-5" (the bytes from start up to end go). */
        char *start = e + 1, *end = e + 2;
        if (*start == '-')
            start++;
        while (*end == '0')
            end++;
        if (end != start) {
            memmove(start, end, len - (size_t)(end - text) + 1);
            len -= (size_t)(end - start);
        }
    }
    buf_append(out, text, len);
}

static void append_integer(struct buf *out, json_int_t value)
{
    char digits[24];
    size_t n = 0;
    uint64_t magnitude = (uint64_t)value;
    if (value < 0) {
        digits[n++] = '-';
        magnitude = 0 - magnitude;
    }
    n += fmt_u64(digits + n, magnitude);
    buf_append(out, digits, n);
}

void json_text_append(struct buf *out, const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *key;
        json_t *value;
        int first = 1;
        buf_append(out, "{", 1);
        json_object_foreach((json_t *)v, key, value) {
            if (!first)
                buf_append(out, ",", 1);
            first = 0;
            json_text_string(out, key, strlen(key));
            buf_append(out, ":", 1);
            json_text_append(out, value);
        }
        buf_append(out, "}", 1);
        break;
    }
    case JSON_ARRAY:
        buf_append(out, "[", 1);
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i > 0)
                buf_append(out, ",", 1);
            json_text_append(out, json_array_get(v, i));
        }
        buf_append(out, "]", 1);
        break;
    case JSON_STRING:
        json_text_string(out, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        append_integer(out, json_integer_value(v));
        break;
    case JSON_REAL:
        append_real(out, json_real_value(v));
        break;
    case JSON_TRUE:
        buf_append_str(out, "true");
        break;
    case JSON_FALSE:
        buf_append_str(out, "false");
        break;
    case JSON_NULL:
        buf_append_str(out, "null");
        break;
    }
}

char *json_text(const json_t *v)
{
    if (v == NULL)
        return NULL;
    struct buf out = {0};
    json_text_append(&out, v);
    return out.data;
}
