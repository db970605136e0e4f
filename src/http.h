/* http.h: a strict, small HTTP/1.1 request parser and response helpers.
 *
 * The parser works over a byte buffer: the connection keeps the bytes it has
 * read and calls http_parse_request_resume() again when more arrive, with a
 * small state that lets a chunked body be decoded incrementally. It never
 * allocates except for a chunked body, which it decodes into
 * req->body_owned. It refuses every shape that lets two parsers disagree on
 * where a request ends (request smuggling).
 */
#ifndef RUNCAST_HTTP_H
#define RUNCAST_HTTP_H

#include "common.h"

#define HTTP_MAX_HEADERS 64

enum http_method {
    HTTP_OTHER = 0,
    HTTP_GET,
    HTTP_HEAD,
    HTTP_POST,
    HTTP_PUT,
    HTTP_DELETE,
    HTTP_OPTIONS,
    HTTP_PATCH,
};

/* Negative results of http_parse_request(). */
enum http_error {
    HTTP_ERR_BAD_REQUEST = -1,     /* 400: malformed, smuggling shape, bare LF, obs-fold */
    HTTP_ERR_HEAD_TOO_LARGE = -2,  /* 431: head over limits.max_header, or too many headers */
    HTTP_ERR_URI_TOO_LONG = -3,    /* 414: request-target over limits.max_target */
    HTTP_ERR_BODY_TOO_LARGE = -4,  /* 413: body over limits.max_body (known from Content-Length) */
    HTTP_ERR_NOT_IMPLEMENTED = -5, /* 501: a transfer-coding other than chunked */
    HTTP_ERR_VERSION = -6,         /* 505: not HTTP/1.0 or HTTP/1.1 */
    HTTP_ERR_HOST = -7,            /* 400: HTTP/1.1 without Host; two Hosts; an invalid one */
};

struct http_header {
    const char *name;
    size_t name_len;
    const char *value; /* without leading/trailing optional whitespace */
    size_t value_len;
};

/* Limits the parser enforces. */
struct http_limits {
    size_t max_header; /* bytes of request line + headers + final CRLF */
    size_t max_body;   /* bytes of (decoded) body */
    size_t max_target; /* bytes of request-target */
};

/* One parsed request. Every pointer points into the buffer given to
 * http_parse_request(), except body when the body was chunked (then it points
 * into body_owned). Valid as long as that buffer is unchanged. */
struct http_request {
    enum http_method method;
    const char *method_name;
    size_t method_len;
    const char *target; /* raw request-target, e.g. "/a/b?x=1" */
    size_t target_len;
    const char *path; /* target up to '?' */
    size_t path_len;
    const char *query; /* after '?', NULL when there is none */
    size_t query_len;
    int version_minor; /* 0 or 1 */
    struct http_header headers[HTTP_MAX_HEADERS];
    size_t header_count;
    int keep_alive;    /* HTTP/1.1 unless "Connection: close"; 1.0 only with keep-alive */
    int expect_continue; /* "Expect: 100-continue" */
    size_t head_len;   /* bytes of the head; nonzero once the head is complete */
    const char *body;
    size_t body_len;
    char *body_owned; /* decoded chunked body; release with http_request_free() */
};

/* Where a chunked body's decoding stopped, for the request at the start of
 * the caller's buffer. A connection keeps one, zeroed at first, and passes
 * it to every http_parse_request_resume() call for that request, so a body
 * trickled in small pieces is decoded once, not again on every read. The
 * parser resets it when the request completes or fails; the owner calls
 * http_body_state_free() if it drops the request (the conn goes away). */
struct http_body_state {
    size_t raw_done;      /* encoded body bytes decoded so far */
    size_t chunk_left;    /* data bytes of the current chunk not yet read */
    int phase;            /* size line, data, CRLF after data, trailers */
    struct buf decoded;   /* the data so far */
    size_t examined;      /* head and body bytes scanned over all calls and
                             requests: the parser's cost, for tests */
};

/* Parses one request from buf[0..len).
 * Returns the number of bytes the whole request (head + body) occupies when it
 * is complete; 0 when more bytes are needed (req->head_len is then nonzero if
 * the head itself is complete, so the caller can send "100 Continue" or switch
 * from a head timeout to a body timeout); or a negative enum http_error.
 * Call http_request_free() on req after every call that may have allocated
 * (it is always safe to call). A body too large is reported as soon as the
 * head is complete, without waiting for the body. */
ssize_t http_parse_request(const char *buf, size_t len, const struct http_limits *limits,
                           struct http_request *req);
/* The same answers as http_parse_request() for the same bytes, decoding a
 * chunked body incrementally in st (see struct http_body_state): the cost
 * of a call is the head plus the bytes that arrived since the last one. */
ssize_t http_parse_request_resume(const char *buf, size_t len, const struct http_limits *limits,
                                  struct http_request *req, struct http_body_state *st);
/* Frees what st holds and zeroes it (examined is kept). Cannot fail. */
void http_body_state_free(struct http_body_state *st);
void http_request_free(struct http_request *req);

/* First header with this name (case-insensitive), or NULL. */
const struct http_header *http_find_header(const struct http_request *req, const char *name);

/* Looks up `key` in an application/x-www-form-urlencoded query string and
 * percent-decodes its value ('+' is a space) into out (NUL-terminated).
 * Returns the decoded length, -ENOENT when the key is absent, -EINVAL for a bad
 * escape or a decoded NUL, -ENOSPC when out is too small. */
ssize_t http_query_get(const char *query, size_t query_len, const char *key,
                       char *out, size_t out_size);

/* Status code for a negative enum http_error (400 for unknown values). */
int http_error_status(int err);
/* snake_case error code for a negative enum http_error ("bad_request"...). */
const char *http_error_code(int err);
/* Human text for a negative enum http_error. */
const char *http_strerror(int err);
/* Reason phrase for a status code ("OK", "Not Found"...); "Unknown" otherwise. */
const char *http_status_reason(int status);

#endif
