/* fuzz_http: the HTTP/1.1 request parser over a pipelined byte stream.
 *
 * Property (prefix consistency): a connection appends what it reads to a
 * buffer, calls http_parse_request_resume() with its chunked-body state and
 * consumes every complete request.
 * Feeding the stream in chunks split at input-chosen points must give exactly
 * the outcomes of parsing the whole stream at once: per request its method,
 * target, header count, keep-alive, Expect, head length and body bytes, then
 * the same error, or the same bytes left waiting for more (so the body
 * decoded incrementally across any split is the body decoded at once, and
 * the stateless http_parse_request() agrees with it). Every call is also
 * checked for sanity: lengths within the buffer, pointers inside the head,
 * header values trimmed and free of CR/LF, and no accepted request with an
 * ambiguous framing (Transfer-Encoding with Content-Length, two lengths, a
 * body length that is not the Content-Length). abort() on any violation.
 *
 * Input: byte 0 = bits 0-2: k, the number of chunk-size bytes that follow
 * minus one; bits 3-4: which limits apply (small ones reach the 413/414/431
 * paths with short inputs). Then k+1 bytes: chunk i holds 1 + size[i % (k+1)]
 * bytes. The rest is the stream.
 */
#include <stdint.h>
#include <stdlib.h>

#include "http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const struct http_limits limit_sets[4] = {
    {.max_header = 4096, .max_body = 8192, .max_target = 1024},
    {.max_header = 256, .max_body = 512, .max_target = 64},
    {.max_header = 64, .max_body = 16, .max_target = 16},
    {.max_header = 1024, .max_body = 0, .max_target = 1024},
};

/* What one parse step ended with. result > 0: a complete request of that
 * many bytes; < 0: an error (the stream ends); 0: the bytes left at the end
 * of the stream (`left`) wait for more. */
struct outcome {
    ssize_t result;
    size_t left;
    size_t head_len;
    int method;
    size_t target_len;
    uint64_t target_hash;
    size_t header_count;
    int keep_alive;
    int expect_continue;
    size_t body_len;
    uint64_t body_hash;
};

struct outcomes {
    struct outcome *v;
    size_t n, cap;
};

static uint64_t hash_bytes(const void *p, size_t len)
{
    const unsigned char *s = p;
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ s[i]) * 1099511628211ull;
    return h;
}

static void push(struct outcomes *o, const struct outcome *x)
{
    if (o->n == o->cap) {
        o->cap = o->cap ? o->cap * 2 : 16;
        o->v = xrealloc(o->v, o->cap * sizeof(*o->v));
    }
    o->v[o->n++] = *x;
}

static int inside(const char *p, size_t len, const char *lo, const char *hi)
{
    return p >= lo && p <= hi && len <= (size_t)(hi - p);
}

/* Checks one result of http_parse_request(buf, len). */
static void check_sane(const char *buf, size_t len, ssize_t n, const struct http_request *req)
{
    if (n < 0) {
        if (n < HTTP_ERR_HOST)
            abort();
        return;
    }
    if ((size_t)n > len || req->head_len > len)
        abort();
    if (n == 0)
        return;
    const char *head_end = buf + req->head_len;
    if (req->head_len == 0 || req->head_len > (size_t)n)
        abort();
    if (!inside(req->method_name, req->method_len, buf, head_end) || req->method_len == 0)
        abort();
    if (!inside(req->target, req->target_len, buf, head_end) || req->target_len == 0)
        abort();
    if (req->path != req->target ||
        req->path_len + (req->query ? 1 + req->query_len : 0) != req->target_len)
        abort();
    if (req->version_minor != 0 && req->version_minor != 1)
        abort();
    if (req->header_count > HTTP_MAX_HEADERS)
        abort();

    size_t lengths = 0, codings = 0, content_length = 0;
    for (size_t i = 0; i < req->header_count; i++) {
        const struct http_header *h = &req->headers[i];
        if (!inside(h->name, h->name_len, buf, head_end) || h->name_len == 0 ||
            !inside(h->value, h->value_len, buf, head_end))
            abort();
        if (memchr(h->name, ':', h->name_len) || memchr(h->value, '\r', h->value_len) ||
            memchr(h->value, '\n', h->value_len))
            abort();
        if (h->value_len > 0 && (h->value[0] == ' ' || h->value[0] == '\t' ||
                                 h->value[h->value_len - 1] == ' ' ||
                                 h->value[h->value_len - 1] == '\t'))
            abort();
        if (str_ieq(h->name, h->name_len, "content-length")) {
            lengths++;
            content_length = strtoull(h->value, NULL, 10);
        }
        if (str_ieq(h->name, h->name_len, "transfer-encoding"))
            codings++;
    }
    /* The smuggling shapes are never accepted. */
    if (lengths > 1 || codings > 1 || (lengths && codings))
        abort();
    if (codings) {
        if (req->body != req->body_owned || req->body_owned == NULL)
            abort();
    } else {
        if (req->body_owned != NULL)
            abort();
        if (req->body_len != (lengths ? content_length : 0) ||
            (size_t)n != req->head_len + req->body_len)
            abort();
        if (req->body_len && req->body != head_end)
            abort();
    }
}

/* Appends `chunk` to the connection buffer `acc` and parses and consumes as
 * the server does. Returns 1 when the stream ended with an error. */
static int feed(struct buf *acc, const char *chunk, size_t chunk_len,
                const struct http_limits *limits, struct outcomes *out, size_t *head_len,
                struct http_body_state *st)
{
    buf_append(acc, chunk, chunk_len);
    while (acc->len > 0) {
        struct http_request req;
        ssize_t n = http_parse_request_resume(acc->data, acc->len, limits, &req, st);
        check_sane(acc->data, acc->len, n, &req);
        if (n != 0 && (st->decoded.len != 0 || st->raw_done != 0))
            abort(); /* a finished request leaves no state behind */
        if (n == 0) {
            /* A head seen complete stays complete as bytes arrive. */
            if (*head_len != 0 && req.head_len != *head_len)
                abort();
            *head_len = req.head_len;
            http_request_free(&req);
            return 0;
        }
        struct outcome o;
        memset(&o, 0, sizeof(o)); /* padding too: outcomes are compared with memcmp */
        o.result = n;
        if (n > 0) {
            o.head_len = req.head_len;
            o.method = (int)req.method;
            o.target_len = req.target_len;
            o.target_hash = hash_bytes(req.target, req.target_len);
            o.header_count = req.header_count;
            o.keep_alive = req.keep_alive;
            o.expect_continue = req.expect_continue;
            o.body_len = req.body_len;
            o.body_hash = hash_bytes(req.body, req.body_len);
        }
        http_request_free(&req);
        push(out, &o);
        if (n < 0)
            return 1;
        buf_consume(acc, (size_t)n);
        *head_len = 0;
    }
    return 0;
}

/* Parses stream[0..len) fed in chunks of 1 + sizes[i % nsizes] bytes, or in
 * one piece when nsizes is 0. */
static void run_stream(const char *stream, size_t len, const uint8_t *sizes, size_t nsizes,
                       const struct http_limits *limits, struct outcomes *out)
{
    struct buf acc = {0};
    struct http_body_state st;
    memset(&st, 0, sizeof(st));
    size_t pos = 0, i = 0, head_len = 0;
    int failed = 0;
    while (pos < len && !failed) {
        size_t chunk = nsizes ? 1 + (size_t)sizes[i++ % nsizes] : len;
        if (chunk > len - pos)
            chunk = len - pos;
        failed = feed(&acc, stream + pos, chunk, limits, out, &head_len, &st);
        pos += chunk;
    }
    http_body_state_free(&st);
    if (!failed) {
        struct outcome o;
        memset(&o, 0, sizeof(o));
        o.left = acc.len;
        o.head_len = head_len;
        push(out, &o);
    }
    buf_free(&acc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t nsizes = (size_t)(data[0] & 7) + 1;
    const struct http_limits *limits = &limit_sets[(data[0] >> 3) & 3];
    if (size < 1 + nsizes)
        return 0;
    const uint8_t *sizes = data + 1;
    size_t len = size - 1 - nsizes;
    /* An exact-size heap copy: ASan sees any read past the stream. */
    char *stream = xmalloc(len);
    memcpy(stream, data + 1 + nsizes, len);

    struct outcomes whole = {0}, split = {0};
    run_stream(stream, len, NULL, 0, limits, &whole);
    /* The stateless parser gives the first request's outcome too. */
    struct http_request req;
    ssize_t first = http_parse_request(stream, len, limits, &req);
    http_request_free(&req);
    if (whole.n == 0 || (first != 0 && first != whole.v[0].result) ||
        (first == 0 && whole.v[0].result != 0))
        abort();
    run_stream(stream, len, sizes, nsizes, limits, &split);
    if (whole.n != split.n || memcmp(whole.v, split.v, whole.n * sizeof(*whole.v)) != 0)
        abort();

    free(whole.v);
    free(split.v);
    free(stream);
    return 0;
}
