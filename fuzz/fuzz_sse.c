/* fuzz_sse: the incremental SSE parser and the encoder.
 *
 * Property 1 (split = one-shot): the upstream's bytes fed in chunks split at
 * input-chosen points dispatch exactly the events (event, data, id) that one
 * feed of the same bytes dispatches, end with the same result (0 or -E2BIG)
 * and, when it is 0, agree on sse_parser_has_partial().
 *
 * Property 2 (round trip): sse_encode(id, event, data) parsed back gives
 * exactly one event, nothing partial, with the data's CRLF and CR turned into
 * LF, the event name and id without their CR and LF bytes ("message" for an
 * empty or absent event, "" for an absent id).
 *
 * Property 3 (reference): the one-shot result equals that of a plain
 * reading of the WHATWG rules written here without any of the parser's
 * incremental machinery: strip a whole leading BOM, cut lines at CRLF, CR or
 * LF, interpret each; -E2BIG when a line or an event's data (with an LF per
 * data line) passes max_event_bytes.
 *
 * Property 4 (fast frame check): whenever frame_scan_is_plain_object()
 * is sure about an event's data, jansson agrees: it parses the data as a
 * non-empty object with no top-level "error", "errorCode" or "errorMessage"
 * member, so runcast relays exactly the frames the slow path would relay
 * without noting an error.
 *
 * Input: byte 0 = bits 0-2: k, the number of chunk-size bytes that follow
 * minus one; bits 3-4: max_event_bytes (1 MiB, 256, 32, 8). Then k+1 bytes:
 * chunk i holds 1 + size[i % (k+1)] bytes. The rest is the stream; for the
 * round trip it is split at its first two NULs into id, event and data.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>

#include "frame_scan.h"
#include "sse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const size_t max_event_choices[4] = {1 << 20, 256, 32, 8};

/* Property 4 on one event's data. */
static void check_fast_frame(const char *data, size_t len)
{
    if (!frame_scan_is_plain_object(data, len))
        return;
    json_error_t error;
    json_t *frame = json_loadb(data, len, JSON_DECODE_ANY, &error);
    if (frame == NULL || !json_is_object(frame) || json_object_size(frame) == 0 ||
        json_object_get(frame, "error") != NULL || json_object_get(frame, "errorCode") != NULL ||
        json_object_get(frame, "errorMessage") != NULL)
        abort();
    json_decref(frame);
}

/* Records every event as three length-prefixed fields. */
static int record_event(void *arg, const struct sse_event *ev)
{
    struct buf *log = arg;
    check_fast_frame(ev->data, ev->data_len);
    const char *fields[3] = {ev->event, ev->data, ev->id};
    size_t lens[3] = {ev->event_len, ev->data_len, ev->id_len};
    for (int i = 0; i < 3; i++) {
        if (fields[i][lens[i]] != '\0') /* every field is NUL-terminated */
            abort();
        buf_append(log, &lens[i], sizeof(lens[i]));
        buf_append(log, fields[i], lens[i]);
    }
    return 0;
}

/* Parses bytes[0..len) in chunks of 1 + sizes[i % nsizes] bytes (one piece
 * when nsizes is 0) into log; appends the result and has_partial. */
static void parse_all(const char *bytes, size_t len, const uint8_t *sizes, size_t nsizes,
                      size_t max_event_bytes, struct buf *log)
{
    struct sse_parser p;
    sse_parser_init(&p, max_event_bytes);
    int rc = 0;
    size_t pos = 0, i = 0;
    while (pos < len && rc == 0) {
        size_t chunk = nsizes ? 1 + (size_t)sizes[i++ % nsizes] : len;
        if (chunk > len - pos)
            chunk = len - pos;
        rc = sse_parser_feed(&p, bytes + pos, chunk, record_event, log);
        pos += chunk;
    }
    if (rc != 0 && rc != -E2BIG)
        abort();
    int partial = rc == 0 ? sse_parser_has_partial(&p) : -1;
    buf_append(log, &rc, sizeof(rc));
    buf_append(log, &partial, sizeof(partial));
    sse_parser_free(&p);
}

/* Property 3's model. Appends what parse_all() would to log. */
static void reference_parse(const char *s, size_t n, size_t max, struct buf *log)
{
    struct buf data = {0}, event = {0}, id = {0};
    int has_data = 0, rc = 0, line_pending = 0;
    size_t i = 0;
    if (n >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0)
        i = 3;
    while (i < n) {
        size_t start = i;
        while (i < n && s[i] != '\r' && s[i] != '\n')
            i++;
        const char *line = s + start;
        size_t len = i - start;
        if (len > max) {
            rc = -E2BIG;
            break;
        }
        if (i == n) {
            line_pending = len > 0; /* unterminated */
            break;
        }
        if (s[i] == '\r' && i + 1 < n && s[i + 1] == '\n')
            i++;
        i++;

        if (len == 0) { /* dispatch */
            if (data.len > 0) {
                data.len--; /* the last data line's LF */
                struct sse_event ev = {
                    .event = event.len ? event.data : "message",
                    .event_len = event.len ? event.len : strlen("message"),
                    .data = data.len ? data.data : "",
                    .data_len = data.len,
                    .id = id.len ? id.data : "",
                    .id_len = id.len,
                };
                if (data.len)
                    data.data[data.len] = '\0';
                record_event(log, &ev);
            }
            buf_reset(&data);
            buf_reset(&event);
            has_data = 0;
            continue;
        }
        if (line[0] == ':')
            continue;
        const char *colon = memchr(line, ':', len);
        size_t name_len = colon ? (size_t)(colon - line) : len;
        const char *value = colon ? colon + 1 : line + len;
        if (value < line + len && *value == ' ')
            value++;
        size_t value_len = (size_t)(line + len - value);
        if (name_len == 4 && memcmp(line, "data", 4) == 0) {
            if (data.len + value_len + 1 > max) {
                rc = -E2BIG;
                break;
            }
            buf_append(&data, value, value_len);
            buf_append(&data, "\n", 1);
            has_data = 1;
        } else if (name_len == 5 && memcmp(line, "event", 5) == 0) {
            buf_reset(&event);
            buf_append(&event, value, value_len);
        } else if (name_len == 2 && memcmp(line, "id", 2) == 0 &&
                   memchr(value, '\0', value_len) == NULL) {
            buf_reset(&id);
            buf_append(&id, value, value_len);
        }
    }
    int partial = rc == 0 ? (line_pending || has_data || event.len > 0) : -1;
    buf_append(log, &rc, sizeof(rc));
    buf_append(log, &partial, sizeof(partial));
    buf_free(&data);
    buf_free(&event);
    buf_free(&id);
}

/* s[0..len) without CR and LF, as a C string in out. */
static void strip_line_ends(struct buf *out, const char *s, size_t len)
{
    buf_reset(out);
    buf_append(out, "", 0);
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '\r' && s[i] != '\n')
            buf_append(out, &s[i], 1);
    }
}

/* Appends the event one field of each would be parsed into, to log. */
static void expected_event(struct buf *log, const char *id, size_t id_len, const char *event,
                           size_t event_len, const char *data, size_t data_len)
{
    struct buf tmp = {0}, want_data = {0};
    buf_append(&want_data, "", 0);
    for (size_t i = 0; i < data_len; i++) {
        if (data[i] == '\r' && i + 1 < data_len && data[i + 1] == '\n')
            continue; /* CRLF: the LF stands for both */
        buf_append(&want_data, data[i] == '\r' ? "\n" : &data[i], 1);
    }
    strip_line_ends(&tmp, event ? event : "", event ? event_len : 0);
    struct sse_event ev = {
        .event = tmp.len ? tmp.data : "message",
        .event_len = tmp.len ? tmp.len : strlen("message"),
        .data = want_data.data,
        .data_len = want_data.len,
    };
    struct buf id_buf = {0};
    strip_line_ends(&id_buf, id ? id : "", id ? id_len : 0);
    ev.id = id_buf.data;
    ev.id_len = id_buf.len;
    record_event(log, &ev);
    int rc = 0, partial = 0;
    buf_append(log, &rc, sizeof(rc));
    buf_append(log, &partial, sizeof(partial));
    buf_free(&tmp);
    buf_free(&want_data);
    buf_free(&id_buf);
}

static void check_round_trip(const char *bytes, size_t len)
{
    const char *id = NULL, *event = NULL, *payload = bytes;
    size_t id_len = 0, event_len = 0, payload_len = len;
    const char *nul = memchr(payload, '\0', payload_len);
    if (nul) {
        id = payload;
        id_len = (size_t)(nul - payload);
        payload_len -= id_len + 1;
        payload = nul + 1;
        nul = memchr(payload, '\0', payload_len);
        if (nul) {
            event = payload;
            event_len = (size_t)(nul - payload);
            payload_len -= event_len + 1;
            payload = nul + 1;
        }
    }
    /* id and event are C strings: they end at their NUL. */
    struct buf encoded = {0}, got = {0}, want = {0};
    sse_encode(&encoded, id, event, payload, payload_len);
    parse_all(encoded.data, encoded.len, NULL, 0, 1 << 20, &got);
    expected_event(&want, id, id_len, event, event_len, payload, payload_len);
    if (got.len != want.len || memcmp(got.data, want.data, got.len) != 0)
        abort();
    buf_free(&encoded);
    buf_free(&got);
    buf_free(&want);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t nsizes = (size_t)(data[0] & 7) + 1;
    size_t max_event_bytes = max_event_choices[(data[0] >> 3) & 3];
    if (size < 1 + nsizes)
        return 0;
    const uint8_t *sizes = data + 1;
    size_t len = size - 1 - nsizes;
    char *bytes = xmalloc(len); /* exact size: ASan sees any overread */
    memcpy(bytes, data + 1 + nsizes, len);

    struct buf whole = {0}, split = {0};
    parse_all(bytes, len, NULL, 0, max_event_bytes, &whole);
    parse_all(bytes, len, sizes, nsizes, max_event_bytes, &split);
    if (whole.len != split.len || memcmp(whole.data, split.data, whole.len) != 0)
        abort();
    struct buf model = {0};
    reference_parse(bytes, len, max_event_bytes, &model);
    if (whole.len != model.len || memcmp(whole.data, model.data, whole.len) != 0)
        abort();
    buf_free(&whole);
    buf_free(&split);
    buf_free(&model);

    check_round_trip(bytes, len);
    free(bytes);
    return 0;
}
