/* http.c: runcast's strict HTTP/1.1 request parser (RFC 9110/9112 subset).
 *
 * The head is parsed again from its first byte each time the connection has
 * read more (it is bounded by max_header). A chunked body is not: the
 * connection keeps a struct http_body_state, so each body byte is decoded
 * once however it is split, and a body trickled in tiny pieces costs time
 * linear in its size. Errors are reported at the first byte that makes the
 * request invalid, so a prefix of a bad request returns either 0 or the same
 * error as the whole of it.
 *
 * Everything that lets two HTTP implementations disagree on where a request
 * ends is refused: bare LF or CR, obs-fold, whitespace before a colon,
 * Transfer-Encoding with Content-Length, repeated or list-valued
 * Content-Length, transfer-codings other than a single "chunked".
 */
#include "http.h"

#include <stdlib.h>

/* Internal scan results besides 0 (done) and a negative enum http_error. */
#define SCAN_OK 0
#define SCAN_MORE 1

/* A read position over buf[0..len). len is already clipped to the limit that
 * applies, so running out of bytes means "need more or over the limit". */
struct cursor {
    const unsigned char *p;
    size_t len;
    size_t pos;
};

/* tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
 *         "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA */
static int is_tchar(unsigned char ch)
{
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
        return 1;
    return ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

/* Visible ASCII except '#': origin-form and "*" never contain a fragment. */
static int is_target_char(unsigned char ch)
{
    return ch > 0x20 && ch < 0x7f && ch != '#';
}

static size_t size_add_saturated(size_t a, size_t b)
{
    return a > SIZE_MAX - b ? SIZE_MAX : a + b;
}

/* Consumes CRLF. A CR not followed by LF, or anything else, is malformed. */
static int scan_crlf(struct cursor *c)
{
    if (c->pos == c->len)
        return SCAN_MORE;
    if (c->p[c->pos] != '\r')
        return HTTP_ERR_BAD_REQUEST;
    if (c->pos + 1 == c->len)
        return SCAN_MORE;
    if (c->p[c->pos + 1] != '\n')
        return HTTP_ERR_BAD_REQUEST;
    c->pos += 2;
    return SCAN_OK;
}

/* Consumes 1*tchar. */
static int scan_token(struct cursor *c)
{
    size_t start = c->pos;
    while (c->pos < c->len && is_tchar(c->p[c->pos]))
        c->pos++;
    if (c->pos == c->len)
        return SCAN_MORE;
    return c->pos == start ? HTTP_ERR_BAD_REQUEST : SCAN_OK;
}

static enum http_method method_from_name(const char *name, size_t len)
{
    static const struct {
        const char *name;
        enum http_method method;
    } methods[] = {
        {"GET", HTTP_GET},         {"HEAD", HTTP_HEAD},   {"POST", HTTP_POST},
        {"PUT", HTTP_PUT},         {"DELETE", HTTP_DELETE}, {"OPTIONS", HTTP_OPTIONS},
        {"PATCH", HTTP_PATCH},
    };
    for (size_t i = 0; i < RC_ARRAY_SIZE(methods); i++) {
        if (strlen(methods[i].name) == len && memcmp(methods[i].name, name, len) == 0)
            return methods[i].method;
    }
    return HTTP_OTHER;
}

/* request-line = method SP request-target SP HTTP-version CRLF, after any
 * empty lines. Fills the request-line fields of req. */
static int scan_request_line(struct cursor *c, const struct http_limits *limits,
                             struct http_request *req)
{
    int rc;

    while (c->pos < c->len && c->p[c->pos] == '\r') {
        if ((rc = scan_crlf(c)) != SCAN_OK)
            return rc;
    }

    size_t start = c->pos;
    if ((rc = scan_token(c)) != SCAN_OK)
        return rc;
    if (c->p[c->pos] != ' ')
        return HTTP_ERR_BAD_REQUEST;
    req->method_name = (const char *)c->p + start;
    req->method_len = c->pos - start;
    req->method = method_from_name(req->method_name, req->method_len);
    c->pos++;

    start = c->pos;
    while (c->pos < c->len && is_target_char(c->p[c->pos])) {
        if (c->pos == start && c->p[c->pos] != '/' && c->p[c->pos] != '*')
            return HTTP_ERR_BAD_REQUEST; /* absolute-form, authority-form, junk */
        c->pos++;
        if (c->pos - start > limits->max_target)
            return HTTP_ERR_URI_TOO_LONG;
    }
    if (c->pos == c->len)
        return SCAN_MORE;
    if (c->p[c->pos] != ' ' || c->pos == start)
        return HTTP_ERR_BAD_REQUEST;
    req->target = (const char *)c->p + start;
    req->target_len = c->pos - start;
    if (req->target[0] == '*' && (req->target_len != 1 || req->method != HTTP_OPTIONS))
        return HTTP_ERR_BAD_REQUEST;
    c->pos++;

    /* HTTP-version = "HTTP/" DIGIT "." DIGIT; only 1.0 and 1.1 are served. */
    static const char version_shape[] = "HTTP/D.D";
    for (size_t i = 0; i < sizeof(version_shape) - 1; i++, c->pos++) {
        if (c->pos == c->len)
            return SCAN_MORE;
        unsigned char ch = c->p[c->pos];
        int ok = version_shape[i] == 'D' ? (ch >= '0' && ch <= '9') : ch == version_shape[i];
        if (!ok)
            return HTTP_ERR_BAD_REQUEST;
    }
    if (c->pos == c->len)
        return SCAN_MORE;
    if (c->p[c->pos] != '\r')
        return HTTP_ERR_BAD_REQUEST;
    const unsigned char *version = c->p + c->pos - 3;
    if (version[0] != '1' || (version[2] != '0' && version[2] != '1'))
        return HTTP_ERR_VERSION;
    req->version_minor = version[2] - '0';
    return scan_crlf(c);
}

/* field-line = field-name ":" OWS field-value OWS CRLF, starting at a byte
 * that is not CR. Leading whitespace (obs-fold), whitespace before the colon
 * and control characters other than HTAB in the value are malformed. */
static int scan_field_line(struct cursor *c, struct http_header *out)
{
    int rc;
    size_t start = c->pos;

    if ((rc = scan_token(c)) != SCAN_OK)
        return rc;
    if (c->p[c->pos] != ':')
        return HTTP_ERR_BAD_REQUEST;
    out->name = (const char *)c->p + start;
    out->name_len = c->pos - start;
    c->pos++;

    while (c->pos < c->len && (c->p[c->pos] == ' ' || c->p[c->pos] == '\t'))
        c->pos++;
    size_t value_start = c->pos, value_end = c->pos;
    for (; c->pos < c->len && c->p[c->pos] != '\r'; c->pos++) {
        unsigned char ch = c->p[c->pos];
        if (ch == ' ' || ch == '\t')
            continue;
        if (ch < 0x20 || ch == 0x7f)
            return HTTP_ERR_BAD_REQUEST;
        value_end = c->pos + 1;
    }
    if ((rc = scan_crlf(c)) != SCAN_OK)
        return rc;
    out->value = (const char *)c->p + value_start;
    out->value_len = value_end - value_start;
    return SCAN_OK;
}

/* Field lines up to and including the empty line. With headers == NULL the
 * lines are checked and dropped (a chunked trailer section). */
static int scan_field_section(struct cursor *c, struct http_header *headers, size_t *count)
{
    for (;;) {
        if (c->pos == c->len)
            return SCAN_MORE;
        unsigned char ch = c->p[c->pos];
        if (ch == '\r')
            return scan_crlf(c);
        if (ch == ' ' || ch == '\t')
            return HTTP_ERR_BAD_REQUEST; /* obs-fold, or whitespace before the first field */
        struct http_header dropped, *h = &dropped;
        if (headers != NULL) {
            if (*count == HTTP_MAX_HEADERS)
                return HTTP_ERR_HEAD_TOO_LARGE;
            h = &headers[*count];
        }
        int rc = scan_field_line(c, h);
        if (rc != SCAN_OK)
            return rc;
        if (headers != NULL)
            (*count)++;
    }
}

/* Content-Length = 1*DIGIT, no sign, no list, no overflow. */
static int parse_content_length(const char *s, size_t len, size_t *out)
{
    size_t value = 0;
    if (len == 0)
        return HTTP_ERR_BAD_REQUEST;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return HTTP_ERR_BAD_REQUEST;
        size_t digit = (size_t)(s[i] - '0');
        if (value > (SIZE_MAX - digit) / 10)
            return HTTP_ERR_BAD_REQUEST;
        value = value * 10 + digit;
    }
    *out = value;
    return SCAN_OK;
}

/* 1 when the comma-separated list s[0..len) holds `token` (case-insensitive). */
static int list_has_token(const char *s, size_t len, const char *token)
{
    const char *item;
    size_t item_len, pos = 0;
    while (str_list_next(s, len, &pos, &item, &item_len)) {
        if (str_ieq(item, item_len, token))
            return 1;
    }
    return 0;
}

/* Host = uri-host [ ":" port ] (RFC 9110 7.2): reg-name, IPv4 or an
 * IP-literal in brackets, so unreserved, pct-encoded, sub-delims, ':' and
 * brackets; empty is allowed (a target with no authority). Anything else
 * (space, '/', '@', a comma-joined list) is refused. */
static int is_host_value(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
            continue;
        if (strchr("-._~%!$&'()*+;=:[]", ch) == NULL)
            return 0;
    }
    return 1;
}

/* How the body is delimited, decided from the header fields. */
enum body_framing { BODY_NONE, BODY_LENGTH, BODY_CHUNKED };

/* Reads the fields that matter to runcast (framing, Connection, Expect,
 * Host) and refuses every ambiguous framing, and what RFC 9112 3.2 says
 * must be 400: an HTTP/1.1 request without Host, any request with two Host
 * lines or an invalid one (HTTP/1.0 may leave it out). */
static int apply_headers(struct http_request *req, const struct http_limits *limits,
                         enum body_framing *framing, size_t *content_length)
{
    const struct http_header *cl = NULL, *te = NULL;
    size_t cl_count = 0, te_count = 0, host_count = 0;
    int has_close = 0, has_keep_alive = 0;

    for (size_t i = 0; i < req->header_count; i++) {
        const struct http_header *h = &req->headers[i];
        if (str_ieq(h->name, h->name_len, "content-length")) {
            cl = h;
            cl_count++;
        } else if (str_ieq(h->name, h->name_len, "transfer-encoding")) {
            te = h;
            te_count++;
        } else if (str_ieq(h->name, h->name_len, "connection")) {
            has_close |= list_has_token(h->value, h->value_len, "close");
            has_keep_alive |= list_has_token(h->value, h->value_len, "keep-alive");
        } else if (str_ieq(h->name, h->name_len, "expect")) {
            if (str_ieq(h->value, h->value_len, "100-continue"))
                req->expect_continue = 1;
        } else if (str_ieq(h->name, h->name_len, "host")) {
            if (!is_host_value(h->value, h->value_len))
                return HTTP_ERR_HOST;
            host_count++;
        }
    }
    if (host_count > 1 || (host_count == 0 && req->version_minor == 1))
        return HTTP_ERR_HOST;
    req->keep_alive = req->version_minor == 1 ? !has_close : has_keep_alive && !has_close;

    *framing = BODY_NONE;
    if (te_count > 0) {
        if (req->version_minor == 0 || cl_count > 0 || te->value_len == 0)
            return HTTP_ERR_BAD_REQUEST;
        if (te_count > 1 || !str_ieq(te->value, te->value_len, "chunked"))
            return HTTP_ERR_NOT_IMPLEMENTED;
        *framing = BODY_CHUNKED;
        return SCAN_OK;
    }
    if (cl_count > 1)
        return HTTP_ERR_BAD_REQUEST;
    if (cl_count == 1) {
        int rc = parse_content_length(cl->value, cl->value_len, content_length);
        if (rc != SCAN_OK)
            return rc;
        if (*content_length > limits->max_body)
            return HTTP_ERR_BODY_TOO_LARGE;
        *framing = BODY_LENGTH;
    }
    return SCAN_OK;
}

/* chunk-size [ chunk-ext ] CRLF, where chunk-ext is *( ";" token [ "=" token ] )
 * with no whitespace and no quoted strings. A size over `room` (what is left
 * of max_body) is 413; a size that does not fit in size_t is malformed. */
static int scan_chunk_size_line(struct cursor *c, size_t room, size_t *size)
{
    size_t start = c->pos, value = 0;
    int rc, digit;

    while (c->pos < c->len && (digit = hex_digit_value(c->p[c->pos])) >= 0) {
        if (value > (SIZE_MAX >> 4))
            return HTTP_ERR_BAD_REQUEST;
        value = (value << 4) | (size_t)digit;
        c->pos++;
    }
    if (c->pos == c->len)
        return SCAN_MORE;
    if (c->pos == start)
        return HTTP_ERR_BAD_REQUEST; /* no digits: sign, whitespace, junk */
    if (value > room)
        return HTTP_ERR_BODY_TOO_LARGE;
    while (c->p[c->pos] == ';') {
        c->pos++;
        if ((rc = scan_token(c)) != SCAN_OK)
            return rc;
        if (c->p[c->pos] == '=') {
            c->pos++;
            if ((rc = scan_token(c)) != SCAN_OK)
                return rc;
        }
    }
    *size = value;
    return scan_crlf(c);
}

static ssize_t parse_request(const char *buf, size_t len, const struct http_limits *limits,
                             struct http_request *req, struct http_body_state *st);

/* Where the decoder is inside a chunked body (struct http_body_state). */
enum chunk_phase { CHUNK_SIZE = 0, CHUNK_DATA, CHUNK_DATA_END, CHUNK_TRAILERS };

/* Scans one line of the chunked framing (a size line or a trailer field
 * line) that starts at c->pos and may take at most max_line bytes: a longer
 * one is 413, like framing past max_body + max_header. A line cut short is rescanned from its start by the
 * next call, so the cap also bounds what a peer trickling it can cost. */
static int scan_chunk_line(struct cursor *c, size_t max_line, size_t room, size_t *size,
                           int trailer)
{
    struct cursor line = {c->p, c->len, c->pos};
    if (line.len - line.pos > max_line)
        line.len = line.pos + max_line;
    int rc;
    if (!trailer)
        rc = scan_chunk_size_line(&line, room, size);
    else if (line.pos < line.len && line.p[line.pos] == '\r')
        rc = scan_crlf(&line);
    else if (line.pos < line.len && (line.p[line.pos] == ' ' || line.p[line.pos] == '\t'))
        rc = HTTP_ERR_BAD_REQUEST; /* obs-fold */
    else {
        struct http_header dropped;
        rc = line.pos == line.len ? SCAN_MORE : scan_field_line(&line, &dropped);
    }
    if (rc == SCAN_MORE && line.len < c->len)
        return HTTP_ERR_BODY_TOO_LARGE; /* padding in the framing, as past max_raw */
    if (rc == SCAN_OK)
        c->pos = line.pos;
    return rc;
}

/* Decodes the chunked body at buf[0..len) from where st stopped, appending
 * data to st->decoded: every byte is looked at once, except a framing line
 * cut short, which is scanned again from its start. The encoded body may
 * take at most max_body + max_header bytes (data plus framing and
 * trailers), so a peer cannot make the connection buffer without bound with
 * tiny chunks or padding. Returns the encoded length once the body is
 * complete, 0 for more, or a negative error. */
static ssize_t decode_chunked_body(const char *buf, size_t len, const struct http_limits *limits,
                                   struct http_body_state *st)
{
    size_t max_raw = size_add_saturated(limits->max_body, limits->max_header);
    struct cursor c = {(const unsigned char *)buf, len < max_raw ? len : max_raw, st->raw_done};
    size_t size = 0;
    int rc = SCAN_OK;

    while (rc == SCAN_OK) {
        size_t from = c.pos;
        switch ((enum chunk_phase)st->phase) {
        case CHUNK_SIZE:
            rc = scan_chunk_line(&c, limits->max_header, limits->max_body - st->decoded.len,
                                 &size, 0);
            if (rc != SCAN_OK)
                break;
            st->chunk_left = size;
            st->phase = size ? CHUNK_DATA : CHUNK_TRAILERS;
            break;
        case CHUNK_DATA: {
            size_t n = c.len - c.pos < st->chunk_left ? c.len - c.pos : st->chunk_left;
            buf_append(&st->decoded, c.p + c.pos, n);
            c.pos += n;
            st->chunk_left -= n;
            if (st->chunk_left)
                rc = SCAN_MORE;
            else
                st->phase = CHUNK_DATA_END;
            break;
        }
        case CHUNK_DATA_END:
            rc = scan_crlf(&c);
            if (rc == SCAN_OK)
                st->phase = CHUNK_SIZE;
            break;
        case CHUNK_TRAILERS:
            rc = scan_chunk_line(&c, limits->max_header, 0, NULL, 1);
            if (rc == SCAN_OK && c.pos - from == 2) {
                st->examined += 2;
                return (ssize_t)c.pos; /* the empty line: the body is complete */
            }
            break;
        }
        st->examined += (rc == SCAN_OK || st->phase == CHUNK_DATA ? c.pos : c.len) - from;
        if (rc == SCAN_OK || st->phase == CHUNK_DATA)
            st->raw_done = c.pos;
    }
    if (rc == SCAN_MORE)
        return len > max_raw ? HTTP_ERR_BODY_TOO_LARGE : 0;
    return rc;
}

/* Hands the decoded body to req (NUL-terminated, req owns it) and readies
 * st for the next request. */
static void take_chunked_body(struct http_body_state *st, struct http_request *req)
{
    buf_reserve(&st->decoded, 1);
    st->decoded.data[st->decoded.len] = '\0';
    req->body_owned = st->decoded.data;
    req->body = req->body_owned;
    req->body_len = st->decoded.len;
    memset(&st->decoded, 0, sizeof(st->decoded));
    http_body_state_free(st);
}

void http_body_state_free(struct http_body_state *st)
{
    buf_free(&st->decoded);
    size_t examined = st->examined;
    memset(st, 0, sizeof(*st));
    st->examined = examined; /* a total over every request */
}

ssize_t http_parse_request(const char *buf, size_t len, const struct http_limits *limits,
                           struct http_request *req)
{
    struct http_body_state st;
    memset(&st, 0, sizeof(st));
    ssize_t rc = http_parse_request_resume(buf, len, limits, req, &st);
    http_body_state_free(&st);
    return rc;
}

/* Resets *req (it does not free a previous body_owned: call
 * http_request_free() first), then parses the head within max_header bytes
 * (again on every call: it is bounded) and the body its fields announce;
 * a chunked body resumes where st stopped. st is reset when the request
 * completes or fails. */
ssize_t http_parse_request_resume(const char *buf, size_t len, const struct http_limits *limits,
                                  struct http_request *req, struct http_body_state *st)
{
    memset(req, 0, sizeof(*req));
    ssize_t rc = parse_request(buf, len, limits, req, st);
    if (rc != 0)
        http_body_state_free(st);
    return rc;
}

/* http_parse_request_resume() before st is reset. */
static ssize_t parse_request(const char *buf, size_t len, const struct http_limits *limits,
                             struct http_request *req, struct http_body_state *st)
{

    struct cursor c = {(const unsigned char *)buf, len < limits->max_header ? len : limits->max_header, 0};
    int rc = scan_request_line(&c, limits, req);
    if (rc == SCAN_OK)
        rc = scan_field_section(&c, req->headers, &req->header_count);
    if (rc == SCAN_MORE)
        return len > limits->max_header ? HTTP_ERR_HEAD_TOO_LARGE : 0;
    if (rc != SCAN_OK)
        return rc;
    req->head_len = c.pos;
    st->examined += c.pos;

    const char *question = memchr(req->target, '?', req->target_len);
    req->path = req->target;
    req->path_len = question ? (size_t)(question - req->target) : req->target_len;
    if (question) {
        req->query = question + 1;
        req->query_len = req->target_len - req->path_len - 1;
    }

    enum body_framing framing;
    size_t content_length = 0;
    if ((rc = apply_headers(req, limits, &framing, &content_length)) != SCAN_OK)
        return rc;

    const char *body = buf + req->head_len;
    size_t available = len - req->head_len;
    switch (framing) {
    case BODY_NONE:
        return (ssize_t)req->head_len;
    case BODY_LENGTH:
        if (available < content_length)
            return 0;
        req->body = body;
        req->body_len = content_length;
        return (ssize_t)(req->head_len + content_length);
    case BODY_CHUNKED: {
        ssize_t raw_len = decode_chunked_body(body, available, limits, st);
        if (raw_len <= 0)
            return raw_len;
        take_chunked_body(st, req);
        return (ssize_t)req->head_len + raw_len;
    }
    }
    return HTTP_ERR_BAD_REQUEST;
}

/* Frees the decoded chunked body. Cannot fail; safe on a zeroed request and
 * when called twice. */
void http_request_free(struct http_request *req)
{
    if (req->body_owned != NULL && req->body == req->body_owned) {
        req->body = NULL;
        req->body_len = 0;
    }
    free(req->body_owned);
    req->body_owned = NULL;
}

const struct http_header *http_find_header(const struct http_request *req, const char *name)
{
    for (size_t i = 0; i < req->header_count; i++) {
        const struct http_header *h = &req->headers[i];
        if (str_ieq(h->name, h->name_len, name))
            return h;
    }
    return NULL;
}

/* Decodes one byte of a form-urlencoded component at s[*pos..len) and
 * advances *pos. Returns the byte, or -1 for a bad %XX escape. */
static int form_decode_next(const char *s, size_t len, size_t *pos)
{
    unsigned char ch = (unsigned char)s[*pos];
    if (ch == '+') {
        (*pos)++;
        return ' ';
    }
    if (ch != '%') {
        (*pos)++;
        return ch;
    }
    if (len - *pos < 3)
        return -1;
    int high = hex_digit_value((unsigned char)s[*pos + 1]);
    int low = hex_digit_value((unsigned char)s[*pos + 2]);
    if (high < 0 || low < 0)
        return -1;
    *pos += 3;
    return high << 4 | low;
}

/* 1 when the encoded name s[0..len) decodes to key, 0 when it decodes to
 * something else, -EINVAL when it does not decode (bad escape or NUL). */
static int form_name_equals(const char *s, size_t len, const char *key)
{
    size_t pos = 0, k = 0;
    int equal = 1;
    while (pos < len) {
        int ch = form_decode_next(s, len, &pos);
        if (ch <= 0)
            return -EINVAL;
        if (equal && (key[k] == '\0' || (unsigned char)key[k] != ch))
            equal = 0;
        if (equal)
            k++;
    }
    return equal && key[k] == '\0';
}

/* Pairs are examined in order and the first whose name decodes to key wins.
 * A name that does not decode (before the match) makes the whole lookup
 * -EINVAL: it might have been the key. Values of other pairs are not
 * examined. A pair without '=' has an empty value. */
ssize_t http_query_get(const char *query, size_t query_len, const char *key,
                       char *out, size_t out_size)
{
    size_t i = 0;
    while (query != NULL && i < query_len) {
        const char *pair = query + i;
        const char *amp = memchr(pair, '&', query_len - i);
        size_t pair_len = amp ? (size_t)(amp - pair) : query_len - i;
        i += pair_len + 1;
        if (pair_len == 0)
            continue;

        const char *eq = memchr(pair, '=', pair_len);
        size_t name_len = eq ? (size_t)(eq - pair) : pair_len;
        int match = form_name_equals(pair, name_len, key);
        if (match < 0)
            return match;
        if (!match)
            continue;

        const char *value = eq ? eq + 1 : pair + pair_len;
        size_t value_len = pair_len - (size_t)(value - pair);
        size_t pos = 0, n = 0;
        while (pos < value_len) {
            int ch = form_decode_next(value, value_len, &pos);
            if (ch <= 0)
                return -EINVAL;
            if (n + 1 < out_size)
                out[n] = (char)ch;
            n++;
        }
        if (n + 1 > out_size)
            return -ENOSPC;
        out[n] = '\0';
        return (ssize_t)n;
    }
    return -ENOENT;
}

/* One row per enum http_error; the first row is also the fallback. */
static const struct {
    int err;
    int status;
    const char *code;
    const char *text;
} http_errors[] = {
    {HTTP_ERR_BAD_REQUEST, 400, "bad_request", "malformed HTTP request"},
    {HTTP_ERR_HEAD_TOO_LARGE, 431, "header_too_large", "request header fields too large"},
    {HTTP_ERR_URI_TOO_LONG, 414, "uri_too_long", "request-target too long"},
    {HTTP_ERR_BODY_TOO_LARGE, 413, "body_too_large", "request body too large"},
    {HTTP_ERR_NOT_IMPLEMENTED, 501, "not_implemented", "transfer-coding not implemented"},
    {HTTP_ERR_VERSION, 505, "http_version_not_supported", "HTTP version not supported"},
    {HTTP_ERR_HOST, 400, "invalid_host", "an HTTP/1.1 request needs exactly one valid Host header"},
};

static size_t http_error_index(int err)
{
    for (size_t i = 0; i < RC_ARRAY_SIZE(http_errors); i++) {
        if (http_errors[i].err == err)
            return i;
    }
    return 0;
}

int http_error_status(int err)
{
    return http_errors[http_error_index(err)].status;
}

const char *http_error_code(int err)
{
    return http_errors[http_error_index(err)].code;
}

const char *http_strerror(int err)
{
    return http_errors[http_error_index(err)].text;
}

const char *http_status_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}
