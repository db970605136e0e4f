/* sse.c: Server-Sent Events encoder and incremental parser.
 *
 * The parser follows the WHATWG HTML "Interpreting an event stream" rules on
 * bytes rather than decoded text: it never fails on invalid UTF-8, it passes
 * the bytes through unchanged (a browser would show U+FFFD instead).
 *
 * Speed: a chunk is scanned with memchr() for line ends, and a line that lies
 * wholly inside the chunk is interpreted in place; only the unterminated tail
 * of a chunk is copied into p->line, and a data value is copied once, into the
 * data buffer.
 */
#include "sse.h"

/* Finds line ends (CR or LF) in [.., end) with memchr(). The next CR and the
 * next LF are remembered separately so that a chunk full of lines ended by
 * one kind never makes the search for the other kind rescan it: every byte is
 * looked at at most once per kind. */
struct eol_scan {
    const char *end;
    const char *cr; /* next CR at or after the last search start, end when
                     * there is none, NULL before the first search */
    const char *lf; /* same for LF */
};

static void eol_scan_init(struct eol_scan *s, const char *end)
{
    s->end = end;
    s->cr = s->lf = NULL;
}

static const char *find_from(const char *pos, const char *end, char c)
{
    const char *hit = memchr(pos, c, (size_t)(end - pos));
    return hit ? hit : end;
}

/* The first CR or LF in [pos, end), or NULL when there is none. pos must not
 * move backwards between calls. */
static const char *eol_scan_next(struct eol_scan *s, const char *pos)
{
    if (s->cr == NULL || s->cr < pos)
        s->cr = find_from(pos, s->end, '\r');
    if (s->lf == NULL || s->lf < pos)
        s->lf = find_from(pos, s->end, '\n');
    const char *eol = s->cr < s->lf ? s->cr : s->lf;
    return eol == s->end ? NULL : eol;
}

/* Appends "<prefix><text without CR and LF>\n". Stripping keeps a hostile or
 * careless id or event name from ending the line early and injecting fields
 * or a premature dispatch. */
static void encode_single_line(struct buf *out, const char *prefix,
                               const char *text)
{
    size_t len = strlen(text);
    const char *pos = text, *end = text + len;
    struct eol_scan scan;

    buf_append_str(out, prefix);
    buf_reserve(out, len + 1);
    eol_scan_init(&scan, end);
    for (const char *eol; (eol = eol_scan_next(&scan, pos)) != NULL; pos = eol + 1)
        buf_append(out, pos, (size_t)(eol - pos));
    buf_append(out, pos, (size_t)(end - pos));
    buf_append(out, "\n", 1);
}

/* An id or event containing CR or LF has those bytes removed (see
 * encode_single_line). In data, each CRLF, lone CR and LF starts a new "data:"
 * line, so a parser gives back the data with every line end turned into "\n":
 * data without CR round-trips exactly. data may be NULL when data_len is 0.
 * Cannot fail (buffers abort on out-of-memory). */
size_t sse_encode(struct buf *out, const char *id, const char *event,
                  const char *data, size_t data_len)
{
    size_t start = out->len;
    if (data == NULL)
        data = ""; /* data_len is 0: one empty data line */
    const char *pos = data, *end = data + data_len;
    struct eol_scan scan;

    if (id != NULL)
        encode_single_line(out, "id: ", id);
    if (event != NULL)
        encode_single_line(out, "event: ", event);

    buf_reserve(out, data_len + 8);
    eol_scan_init(&scan, end);
    for (;;) {
        const char *eol = pos < end ? eol_scan_next(&scan, pos) : NULL;
        const char *line_end = eol ? eol : end;
        buf_append(out, "data: ", 6);
        buf_append(out, pos, (size_t)(line_end - pos));
        buf_append(out, "\n", 1);
        if (eol == NULL)
            break;
        pos = eol + 1;
        if (*eol == '\r' && pos < end && *pos == '\n')
            pos++;
    }
    buf_append(out, "\n", 1);
    return out->len - start;
}

void sse_parser_init(struct sse_parser *p, size_t max_event_bytes)
{
    memset(p, 0, sizeof(*p));
    p->max_event_bytes = max_event_bytes;
}

void sse_parser_free(struct sse_parser *p)
{
    buf_free(&p->line);
    buf_free(&p->data);
    buf_free(&p->event);
    buf_free(&p->id);
}

/* Bytes of an undispatched event: an unterminated line (including a partly
 * matched BOM, which would become line bytes if it is not a BOM after all),
 * or data or event fields not yet followed by a blank line. A lone "id:" line
 * does not count: it is never dispatched on its own. */
int sse_parser_has_partial(const struct sse_parser *p)
{
    return p->line.len > 0 || p->has_data || p->event.len > 0 ||
           (p->bom_state > 0 && p->bom_state < 3);
}

static void reset_event(struct sse_parser *p)
{
    buf_reset(&p->data);
    buf_reset(&p->event);
    p->has_data = 0;
}

/* The blank line: hands the collected event to cb (unless it has no data) and
 * starts a new one. The last event ID buffer is kept. Returns cb's value. */
static int dispatch(struct sse_parser *p, sse_event_cb cb, void *arg)
{
    if (p->data.len == 0) {
        reset_event(p);
        return 0;
    }
    /* Every data field appended an LF: drop the last one. Truncating keeps
     * the data NUL-terminated for the callback. */
    p->data.len--;
    p->data.data[p->data.len] = '\0';

    struct sse_event ev = {
        .event = p->event.len ? p->event.data : "message",
        .event_len = p->event.len ? p->event.len : strlen("message"),
        .data = p->data.data,
        .data_len = p->data.len,
        .id = p->id.len ? p->id.data : "",
        .id_len = p->id.len,
    };
    int rc = cb ? cb(arg, &ev) : 0;
    reset_event(p);
    return rc;
}

static int field_is(const char *name, size_t name_len, const char *cstr)
{
    return name_len == strlen(cstr) && memcmp(name, cstr, name_len) == 0;
}

/* Interprets one line (without its line end). Returns 0, cb's nonzero value,
 * or -E2BIG when the event's data would pass max_event_bytes. line may point
 * into the caller's chunk or into p->line; it is not kept. */
static int process_line(struct sse_parser *p, const char *line, size_t len,
                        sse_event_cb cb, void *arg)
{
    if (len == 0)
        return dispatch(p, cb, arg);
    if (line[0] == ':')
        return 0; /* comment */

    const char *colon = memchr(line, ':', len);
    size_t name_len = colon ? (size_t)(colon - line) : len;
    const char *value = colon ? colon + 1 : line + len;
    const char *end = line + len;
    if (value < end && *value == ' ')
        value++;
    size_t value_len = (size_t)(end - value);

    if (field_is(line, name_len, "data")) {
        /* Counted with the "\n" that follows each data line. */
        if (value_len + 1 > p->max_event_bytes - p->data.len)
            return -E2BIG;
        buf_reserve(&p->data, value_len + 1);
        buf_append(&p->data, value, value_len);
        buf_append(&p->data, "\n", 1);
        p->has_data = 1;
    } else if (field_is(line, name_len, "event")) {
        buf_reset(&p->event);
        buf_append(&p->event, value, value_len);
    } else if (field_is(line, name_len, "id")) {
        if (memchr(value, '\0', value_len) == NULL) {
            buf_reset(&p->id);
            buf_append(&p->id, value, value_len);
        }
    }
    /* "retry" only matters to a reconnecting client, which runcast is not
     * toward its upstream; it and unknown fields are ignored. */
    return 0;
}

/* Consumes the start of a stream against the UTF-8 BOM, possibly across
 * feeds. Returns how many bytes of the chunk it took. When the stream turns
 * out not to start with a BOM, the bytes already matched are ordinary line
 * bytes: they go into p->line (they hold no CR or LF). */
static size_t skip_bom(struct sse_parser *p, const char *bytes, size_t n)
{
    static const char bom[3] = { '\xEF', '\xBB', '\xBF' };
    size_t i = 0;

    while (p->bom_state < 3 && i < n) {
        if (bytes[i] != bom[p->bom_state]) {
            if (p->bom_state > 0)
                buf_append(&p->line, bom, (size_t)p->bom_state);
            p->bom_state = 3;
            break;
        }
        p->bom_state++;
        i++;
    }
    return i;
}

/* The rest of the chunk after a callback stops the parser is not consumed.
 * The callback must neither feed nor free the parser; it returns nonzero
 * instead and its caller frees the parser once this returns. */
int sse_parser_feed(struct sse_parser *p, const char *bytes, size_t n,
                    sse_event_cb cb, void *arg)
{
    if (n == 0)
        return 0;
    const char *pos = bytes + skip_bom(p, bytes, n);
    const char *end = bytes + n;
    size_t max = p->max_event_bytes;
    struct eol_scan scan;

    eol_scan_init(&scan, end);
    while (pos < end) {
        if (p->last_was_cr) {
            p->last_was_cr = 0;
            if (*pos == '\n') { /* second half of a CRLF */
                pos++;
                continue;
            }
        }

        const char *eol = eol_scan_next(&scan, pos);
        size_t span = (size_t)((eol ? eol : end) - pos);
        if (p->line.len > max || span > max - p->line.len)
            return -E2BIG;
        if (eol == NULL) {
            buf_append(&p->line, pos, span);
            break;
        }

        const char *line = pos;
        size_t line_len = span;
        if (p->line.len > 0) { /* the line began in an earlier chunk */
            buf_append(&p->line, pos, span);
            line = p->line.data;
            line_len = p->line.len;
        }
        p->last_was_cr = *eol == '\r';
        pos = eol + 1;

        int rc = process_line(p, line, line_len, cb, arg);
        buf_reset(&p->line);
        if (rc != 0)
            return rc;
    }
    return 0;
}
