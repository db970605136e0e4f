/* test_http.c: the request parser's framing, limits and smuggling refusals,
 * and the query/status helpers. */
#include <stdlib.h>

#include "../../src/http.h"
#include "test.h"

static const struct http_limits default_limits = {
    .max_header = 8192,
    .max_body = 1 << 20,
    .max_target = 2048,
};

/* A request held with its exact length, so embedded NULs are possible. */
struct raw {
    const char *name;
    const char *data;
    size_t len;
};
#define RAW(name, literal) {name, literal, sizeof(literal) - 1}

static ssize_t parse_str(const char *s, struct http_request *req)
{
    return http_parse_request(s, strlen(s), &default_limits, req);
}

/* Parses a heap copy of exactly len bytes, so AddressSanitizer reports any
 * read past len. Only the result survives. */
static ssize_t parse_exact(const char *s, size_t len, const struct http_limits *limits)
{
    char *copy = malloc(len ? len : 1);
    memcpy(copy, s, len);
    struct http_request req;
    ssize_t rc = http_parse_request(copy, len, limits, &req);
    http_request_free(&req);
    free(copy);
    return rc;
}

/* The whole buffer parses to `expected`; every shorter prefix to 0 when
 * expected is a length, or to 0 or the same error otherwise. Returns the
 * number of prefixes that disagreed. */
static int check_every_prefix(const char *s, size_t len, const struct http_limits *limits,
                              ssize_t expected)
{
    int wrong = 0;
    if (parse_exact(s, len, limits) != expected) {
        fprintf(stderr, "  whole input: %zd, expected %zd\n", parse_exact(s, len, limits), expected);
        wrong++;
    }
    size_t end = expected > 0 ? (size_t)expected : len;
    for (size_t n = 0; n < end; n++) {
        ssize_t rc = parse_exact(s, n, limits);
        if (rc != 0 && (expected > 0 || rc != expected)) {
            fprintf(stderr, "  prefix of %zu bytes: %zd, expected 0%s\n", n, rc,
                    expected > 0 ? "" : " or the final error");
            wrong++;
        }
    }
    return wrong;
}

static void simple_get_parses_request_line_and_trimmed_headers(void)
{
    const char *s = "GET /apps/a/users/u/sessions/s/run?from=live&x=1 HTTP/1.1\r\n"
                    "Host: localhost:8000\r\n"
                    "Accept:  text/event-stream \t\r\n"
                    "X-Empty:\r\n"
                    "\r\n";
    struct http_request req;
    CHECK_EQ(parse_str(s, &req), strlen(s));
    CHECK_EQ(req.method, HTTP_GET);
    CHECK_MEMEQ(req.method_name, req.method_len, "GET");
    CHECK_MEMEQ(req.target, req.target_len, "/apps/a/users/u/sessions/s/run?from=live&x=1");
    CHECK_MEMEQ(req.path, req.path_len, "/apps/a/users/u/sessions/s/run");
    CHECK_MEMEQ(req.query, req.query_len, "from=live&x=1");
    CHECK_EQ(req.version_minor, 1);
    CHECK_EQ(req.header_count, 3);
    CHECK_MEMEQ(req.headers[0].name, req.headers[0].name_len, "Host");
    CHECK_MEMEQ(req.headers[0].value, req.headers[0].value_len, "localhost:8000");
    CHECK_MEMEQ(req.headers[1].name, req.headers[1].name_len, "Accept");
    CHECK_MEMEQ(req.headers[1].value, req.headers[1].value_len, "text/event-stream");
    CHECK_MEMEQ(req.headers[2].name, req.headers[2].name_len, "X-Empty");
    CHECK_MEMEQ(req.headers[2].value, req.headers[2].value_len, "");
    CHECK_EQ(req.keep_alive, 1);
    CHECK_EQ(req.expect_continue, 0);
    CHECK_EQ(req.head_len, strlen(s));
    CHECK(req.body == NULL);
    CHECK_EQ(req.body_len, 0);
    CHECK(req.body_owned == NULL);

    const struct http_header *h = http_find_header(&req, "accept");
    CHECK(h == &req.headers[1]);
    CHECK(http_find_header(&req, "HOST") == &req.headers[0]);
    CHECK(http_find_header(&req, "Hos") == NULL);
    CHECK(http_find_header(&req, "Content-Length") == NULL);
    http_request_free(&req);
}

static void target_without_question_mark_has_no_query(void)
{
    struct http_request req;
    const char *s = "GET /healthz HTTP/1.0\r\n\r\n";
    CHECK_EQ(parse_str(s, &req), strlen(s));
    CHECK_MEMEQ(req.path, req.path_len, "/healthz");
    CHECK(req.query == NULL);
    CHECK_EQ(req.query_len, 0);
    CHECK_EQ(req.version_minor, 0);

    s = "GET /x?a?b HTTP/1.1\r\nHost: h\r\n\r\n";
    CHECK_EQ(parse_str(s, &req), strlen(s));
    CHECK_MEMEQ(req.path, req.path_len, "/x");
    CHECK_MEMEQ(req.query, req.query_len, "a?b");

    s = "GET /x? HTTP/1.1\r\nHost: h\r\n\r\n";
    CHECK_EQ(parse_str(s, &req), strlen(s));
    CHECK_MEMEQ(req.path, req.path_len, "/x");
    CHECK(req.query != NULL);
    CHECK_EQ(req.query_len, 0);
}

static void methods_map_case_sensitively(void)
{
    static const struct {
        const char *name;
        enum http_method method;
    } cases[] = {
        {"GET", HTTP_GET},         {"HEAD", HTTP_HEAD},       {"POST", HTTP_POST},
        {"PUT", HTTP_PUT},         {"DELETE", HTTP_DELETE},   {"OPTIONS", HTTP_OPTIONS},
        {"PATCH", HTTP_PATCH},     {"get", HTTP_OTHER},       {"Post", HTTP_OTHER},
        {"PROPFIND", HTTP_OTHER},  {"GETS", HTTP_OTHER},      {"M-SEARCH", HTTP_OTHER},
    };
    for (size_t i = 0; i < RC_ARRAY_SIZE(cases); i++) {
        char s[128];
        snprintf(s, sizeof(s), "%s /x HTTP/1.1\r\nHost: h\r\n\r\n", cases[i].name);
        struct http_request req;
        CHECK_EQ(parse_str(s, &req), strlen(s));
        CHECK_EQ(req.method, cases[i].method);
        CHECK_MEMEQ(req.method_name, req.method_len, cases[i].name);
    }
}

static void asterisk_target_is_only_for_options(void)
{
    struct http_request req;
    const char *s = "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n";
    CHECK_EQ(parse_str(s, &req), strlen(s));
    CHECK_MEMEQ(req.target, req.target_len, "*");
    CHECK_MEMEQ(req.path, req.path_len, "*");
    CHECK_EQ(parse_str("GET * HTTP/1.1\r\nHost: h\r\n\r\n", &req), HTTP_ERR_BAD_REQUEST);
    CHECK_EQ(parse_str("OPTIONS *x HTTP/1.1\r\nHost: h\r\n\r\n", &req), HTTP_ERR_BAD_REQUEST);
}

static void leading_empty_lines_are_skipped_and_counted(void)
{
    const char *s = "\r\n\r\nGET /a HTTP/1.1\r\nHost: h\r\n\r\n";
    struct http_request req;
    CHECK_EQ(parse_str(s, &req), strlen(s));
    CHECK(req.method_name == s + 4);
    CHECK_EQ(req.head_len, strlen(s));
    CHECK_EQ(check_every_prefix(s, strlen(s), &default_limits, (ssize_t)strlen(s)), 0);
}

static void pipelined_requests_parse_one_after_another(void)
{
    const char *first = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    const char *second = "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello";
    const char *third = "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    const char *partial = "GET /d HTT";
    char buf[512];
    snprintf(buf, sizeof(buf), "%s%s%s%s", first, second, third, partial);
    size_t len = strlen(buf), offset = 0;
    struct http_request req;

    CHECK_EQ(http_parse_request(buf, len, &default_limits, &req), strlen(first));
    CHECK_MEMEQ(req.path, req.path_len, "/a");
    CHECK_EQ(req.body_len, 0);
    http_request_free(&req);
    offset += strlen(first);

    CHECK_EQ(http_parse_request(buf + offset, len - offset, &default_limits, &req), strlen(second));
    CHECK_MEMEQ(req.path, req.path_len, "/b");
    CHECK_MEMEQ(req.body, req.body_len, "hello");
    http_request_free(&req);
    offset += strlen(second);

    CHECK_EQ(http_parse_request(buf + offset, len - offset, &default_limits, &req), strlen(third));
    CHECK_MEMEQ(req.path, req.path_len, "/c");
    CHECK_MEMEQ(req.body, req.body_len, "abc");
    http_request_free(&req);
    offset += strlen(third);

    CHECK_EQ(http_parse_request(buf + offset, len - offset, &default_limits, &req), 0);
    CHECK_EQ(req.head_len, 0);
    http_request_free(&req);
    CHECK_EQ(offset + strlen(partial), len);
}

static void every_prefix_needs_more_bytes_until_the_last(void)
{
    static const struct raw requests[] = {
        RAW("get", "GET /a?b=c HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n"),
        RAW("content-length body", "POST /run HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n{\"a\":\"b c\"}"),
        RAW("chunked body", "POST /run HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                            "4;x=y\r\nabcd\r\n2\r\nef\r\n0\r\nT: v\r\n\r\n"),
        RAW("http/1.0", "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
        RAW("obs-text value", "GET / HTTP/1.1\r\nHost: h\r\nX-Name: caf\xc3\xa9\r\n\r\n"),
    };
    for (size_t i = 0; i < RC_ARRAY_SIZE(requests); i++) {
        const struct raw *r = &requests[i];
        int wrong = check_every_prefix(r->data, r->len, &default_limits, (ssize_t)r->len);
        if (wrong)
            fprintf(stderr, "  request \"%s\"\n", r->name);
        CHECK_EQ(wrong, 0);

        /* Bytes of a following request do not change the answer. */
        char buf[512];
        memcpy(buf, r->data, r->len);
        memcpy(buf + r->len, "GET / HTTP/1.1\r\nHost: h\r\n", 16);
        CHECK_EQ(parse_exact(buf, r->len + 16, &default_limits), r->len);
    }
}

static void content_length_body_points_into_the_buffer(void)
{
    const char *s = "POST /run HTTP/1.1\r\nHost: h\r\ncontent-length: 007\r\n\r\nhello!!GET";
    size_t head = strlen("POST /run HTTP/1.1\r\nHost: h\r\ncontent-length: 007\r\n\r\n");
    struct http_request req;
    CHECK_EQ(parse_str(s, &req), head + 7);
    CHECK_EQ(req.head_len, head);
    CHECK(req.body == s + head);
    CHECK_MEMEQ(req.body, req.body_len, "hello!!");
    CHECK(req.body_owned == NULL);
    http_request_free(&req);
    CHECK(req.body == s + head);

    const char *empty = "POST /run HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n";
    CHECK_EQ(parse_str(empty, &req), strlen(empty));
    CHECK_EQ(req.body_len, 0);
}

static void head_len_is_set_while_the_body_is_pending(void)
{
    const char *head = "POST /run HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 10\r\n\r\n";
    char buf[256];
    snprintf(buf, sizeof(buf), "%sabc", head);
    struct http_request req;
    CHECK_EQ(parse_str(buf, &req), 0);
    CHECK_EQ(req.head_len, strlen(head));
    CHECK_EQ(req.expect_continue, 1);

    CHECK_EQ(http_parse_request(buf, strlen(head) - 1, &default_limits, &req), 0);
    CHECK_EQ(req.head_len, 0);
}

static void chunked_body_is_decoded_from_chunks_extensions_and_trailers(void)
{
    const char *head = "POST /run HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n";
    const char *body = "5;name=value;flag\r\nhello\r\n"
                       "1\r\n \r\n"
                       "00A\r\n0123456789\r\n"
                       "0;last=1\r\n"
                       "Trailer-One: x\r\nChecksum:abc\r\n\r\n";
    char buf[512];
    snprintf(buf, sizeof(buf), "%s%sGET / HTTP/1.1\r\nHost: h\r\n", head, body);
    struct http_request req;
    CHECK_EQ(parse_str(buf, &req), strlen(head) + strlen(body));
    CHECK_EQ(req.head_len, strlen(head));
    CHECK_EQ(req.header_count, 2); /* Host, Transfer-Encoding */
    CHECK(req.body_owned != NULL);
    CHECK(req.body == req.body_owned);
    CHECK_MEMEQ(req.body, req.body_len, "hello 0123456789");
    CHECK_EQ(req.body_owned[req.body_len], '\0');
    CHECK(http_find_header(&req, "Checksum") == NULL);
    http_request_free(&req);
    CHECK(req.body_owned == NULL);
    CHECK(req.body == NULL);
    CHECK_EQ(req.body_len, 0);
    http_request_free(&req);

    const char *only_last = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    CHECK_EQ(parse_str(only_last, &req), strlen(only_last));
    CHECK_EQ(req.body_len, 0);
    CHECK(req.body == req.body_owned && req.body != NULL);
    http_request_free(&req);
}

static void chunked_body_needs_more_without_allocating(void)
{
    const char *s = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel";
    struct http_request req;
    CHECK_EQ(parse_str(s, &req), 0);
    CHECK(req.head_len > 0);
    CHECK(req.body_owned == NULL);
    CHECK(req.body == NULL);
}

static void malformed_chunked_bodies_are_bad_requests(void)
{
    static const struct raw bodies[] = {
        RAW("size line ends with bare LF", "5\nhello\r\n0\r\n\r\n"),
        RAW("size with a sign", "+5\r\nhello\r\n0\r\n\r\n"),
        RAW("size with leading whitespace", " 5\r\nhello\r\n0\r\n\r\n"),
        RAW("size with trailing whitespace", "5 \r\nhello\r\n0\r\n\r\n"),
        RAW("no size", "\r\nhello\r\n0\r\n\r\n"),
        RAW("0x prefix", "0x5\r\nhello\r\n0\r\n\r\n"),
        RAW("size overflows", "10000000000000000\r\nhello\r\n0\r\n\r\n"),
        RAW("size wraps to a small one", "10000000000000005\r\nhello\r\n0\r\n\r\n"),
        RAW("data longer than size", "3\r\nhello\r\n0\r\n\r\n"),
        RAW("no CRLF after data", "5\r\nhello0\r\n\r\n"),
        RAW("bare LF after data", "5\r\nhello\n0\r\n\r\n"),
        RAW("bare CR after data", "5\r\nhello\r0\r\n\r\n"),
        RAW("empty extension name", "5;\r\nhello\r\n0\r\n\r\n"),
        RAW("empty extension value", "5;a=\r\nhello\r\n0\r\n\r\n"),
        RAW("quoted extension value", "5;a=\"b\"\r\nhello\r\n0\r\n\r\n"),
        RAW("space around extension", "5 ;a=b\r\nhello\r\n0\r\n\r\n"),
        RAW("bare CR in last chunk", "0\r\r\n\r\n"),
        RAW("bare LF ends trailers", "0\r\n\n"),
        RAW("trailer without colon", "0\r\nBad\r\n\r\n"),
        RAW("obs-fold in trailer", "0\r\nA: b\r\n c\r\n\r\n"),
        RAW("space before colon in trailer", "0\r\nA : b\r\n\r\n"),
        RAW("NUL in trailer", "0\r\nA: b\0c\r\n\r\n"),
    };
    const char *head = "POST /run HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (size_t i = 0; i < RC_ARRAY_SIZE(bodies); i++) {
        char buf[256];
        size_t head_len = strlen(head);
        memcpy(buf, head, head_len);
        memcpy(buf + head_len, bodies[i].data, bodies[i].len);
        int wrong = check_every_prefix(buf, head_len + bodies[i].len, &default_limits,
                                       HTTP_ERR_BAD_REQUEST);
        if (wrong)
            fprintf(stderr, "  body \"%s\"\n", bodies[i].name);
        CHECK_EQ(wrong, 0);
    }
}

static void chunked_body_over_max_body_is_413_before_its_data(void)
{
    struct http_limits limits = default_limits;
    limits.max_body = 10;
    const char *head = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
    char buf[256];
    struct http_request req;

    snprintf(buf, sizeof(buf), "%s6\r\nabcdef\r\n5\r\n", head);
    CHECK_EQ(http_parse_request(buf, strlen(buf), &limits, &req), HTTP_ERR_BODY_TOO_LARGE);
    http_request_free(&req);

    snprintf(buf, sizeof(buf), "%sb\r\n", head);
    CHECK_EQ(http_parse_request(buf, strlen(buf), &limits, &req), HTTP_ERR_BODY_TOO_LARGE);
    http_request_free(&req);

    snprintf(buf, sizeof(buf), "%s6\r\nabcdef\r\n4\r\nghij\r\n0\r\n\r\n", head);
    CHECK_EQ(http_parse_request(buf, strlen(buf), &limits, &req), strlen(buf));
    CHECK_MEMEQ(req.body, req.body_len, "abcdefghij");
    http_request_free(&req);
}

static void chunked_framing_beyond_body_and_header_limits_is_413(void)
{
    struct http_limits limits = {.max_header = 128, .max_body = 4, .max_target = 64};
    const char *head = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
    char buf[512];
    size_t n = strlen(head);
    memcpy(buf, head, n);
    memset(buf + n, '0', 200); /* leading zeros: tiny data, endless framing */
    n += 200;
    memcpy(buf + n, "1\r\na\r\n0\r\n\r\n", 11);
    n += 11;
    CHECK_EQ(check_every_prefix(buf, n, &limits, HTTP_ERR_BODY_TOO_LARGE), 0);
    /* Exactly max_body + max_header encoded bytes still fit. */
    size_t body_len = 4 + 128;
    n = strlen(head);
    memset(buf + n, '0', body_len - 11);
    memcpy(buf + n + body_len - 11, "1\r\na\r\n0\r\n\r\n", 11);
    CHECK_EQ(parse_exact(buf, n + body_len, &limits), n + body_len);
    memset(buf + n, '0', body_len - 10);
    memcpy(buf + n + body_len - 10, "1\r\na\r\n0\r\n\r\n", 11);
    CHECK_EQ(parse_exact(buf, n + body_len + 1, &limits), HTTP_ERR_BODY_TOO_LARGE);
}

static void smuggling_shapes_are_bad_requests(void)
{
    static const struct raw requests[] = {
        RAW("TE and CL", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"),
        RAW("CL and TE", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
        RAW("CL and CL equal", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
        RAW("CL and CL different", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\ncontent-length: 6\r\n\r\nhello!"),
        RAW("CL with plus sign", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello"),
        RAW("CL with minus sign", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -5\r\n\r\nhello"),
        RAW("CL list", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello"),
        RAW("CL with inner space", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5 5\r\n\r\nhello"),
        RAW("CL empty", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \r\n\r\n"),
        RAW("CL hex", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x5\r\n\r\nhello"),
        RAW("CL overflows", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
        RAW("CL wraps to a small one", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551621\r\n\r\nhello"),
        RAW("TE in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        RAW("TE gzip in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: gzip\r\n\r\n"),
        RAW("TE empty", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \r\n\r\n"),
        RAW("obs-fold with space", "GET / HTTP/1.1\r\nHost: h\r\nX-A: b\r\n c\r\n\r\n"),
        RAW("obs-fold with tab", "GET / HTTP/1.1\r\nHost: h\r\nX-A: b\r\n\tc\r\n\r\n"),
        RAW("whitespace before first header", "GET / HTTP/1.1\r\nHost: h\r\n Host: a\r\n\r\n"),
        RAW("bare LF in request line", "GET / HTTP/1.1\nHost: a\r\n\r\n"),
        RAW("bare LF in header", "GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n"),
        RAW("bare LF ends head", "GET / HTTP/1.1\r\nHost: a\r\n\n"),
        RAW("bare LF before request line", "\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"),
        RAW("bare CR in header", "GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n"),
        RAW("bare CR in request line", "GET / HTTP/1.1\rHost: a\r\n\r\n"),
        RAW("bare CR before request line", "\rGET / HTTP/1.1\r\nHost: h\r\n\r\n"),
        RAW("space before colon", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length : 5\r\n\r\nhello"),
        RAW("tab before colon", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n"),
        RAW("NUL in header value", "GET / HTTP/1.1\r\nHost: h\r\nX-A: b\0c\r\n\r\n"),
        RAW("NUL in header name", "GET / HTTP/1.1\r\nHost: h\r\nX\0A: b\r\n\r\n"),
        RAW("DEL in header value", "GET / HTTP/1.1\r\nHost: h\r\nX-A: b\x7f\r\n\r\n"),
        RAW("ESC in header value", "GET / HTTP/1.1\r\nHost: h\r\nX-A: \x1b[0m\r\n\r\n"),
        RAW("empty header name", "GET / HTTP/1.1\r\nHost: h\r\n: b\r\n\r\n"),
        RAW("header without colon", "GET / HTTP/1.1\r\nHost: h\r\nHost\r\n\r\n"),
        RAW("quote in header name", "GET / HTTP/1.1\r\nHost: h\r\nX\"A: b\r\n\r\n"),
        RAW("double space after method", "GET  / HTTP/1.1\r\nHost: h\r\n\r\n"),
        RAW("double space after target", "GET /  HTTP/1.1\r\nHost: h\r\n\r\n"),
        RAW("tab after method", "GET\t/ HTTP/1.1\r\nHost: h\r\n\r\n"),
        RAW("empty method", " / HTTP/1.1\r\nHost: h\r\n\r\n"),
        RAW("absolute-form target", "GET http://example.com/ HTTP/1.1\r\nHost: h\r\n\r\n"),
        RAW("authority-form target", "CONNECT example.com:443 HTTP/1.1\r\nHost: h\r\n\r\n"),
        RAW("control byte in target", "GET /a\x01z HTTP/1.1\r\nHost: h\r\n\r\n"),
        RAW("byte over 0x7f in target", "GET /caf\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n"),
        RAW("DEL in target", "GET /a\x7f HTTP/1.1\r\nHost: h\r\n\r\n"),
        RAW("fragment in target", "GET /a#b HTTP/1.1\r\nHost: h\r\n\r\n"),
        RAW("missing version", "GET /\r\n\r\n"),
        RAW("lowercase version", "GET / http/1.1\r\n\r\n"),
        RAW("version without minor", "GET / HTTP/1\r\n\r\n"),
        RAW("version with two digits", "GET / HTTP/11.1\r\n\r\n"),
        RAW("junk after version", "GET / HTTP/1.1 \r\n\r\n"),
        RAW("junk version", "GET / SPDY/3\r\n\r\n"),
    };
    for (size_t i = 0; i < RC_ARRAY_SIZE(requests); i++) {
        const struct raw *r = &requests[i];
        int wrong = check_every_prefix(r->data, r->len, &default_limits, HTTP_ERR_BAD_REQUEST);
        if (wrong)
            fprintf(stderr, "  request \"%s\"\n", r->name);
        CHECK_EQ(wrong, 0);
    }
}

static void head_over_max_header_is_431(void)
{
    struct http_limits limits = default_limits;
    limits.max_header = 64;
    /* "GET / HTTP/1.0\r\nX: " + value + "\r\n\r\n" is 23 bytes + value (1.0:
     * no Host needed). */
    char buf[256];
    snprintf(buf, sizeof(buf), "GET / HTTP/1.0\r\nX: %041d\r\n\r\n", 0);
    CHECK_EQ(strlen(buf), 64);
    CHECK_EQ(parse_exact(buf, 64, &limits), 64);

    snprintf(buf, sizeof(buf), "GET / HTTP/1.0\r\nX: %042d\r\n\r\n", 0);
    CHECK_EQ(check_every_prefix(buf, 65, &limits, HTTP_ERR_HEAD_TOO_LARGE), 0);

    /* Without the end in sight: 431 once more than max_header bytes wait. */
    memset(buf, 'a', sizeof(buf));
    memcpy(buf, "GET / HTTP/1.1\r\nX: ", 19);
    CHECK_EQ(parse_exact(buf, 64, &limits), 0);
    CHECK_EQ(parse_exact(buf, 65, &limits), HTTP_ERR_HEAD_TOO_LARGE);
    CHECK_EQ(parse_exact(buf, 200, &limits), HTTP_ERR_HEAD_TOO_LARGE);

    /* Leading empty lines count toward the head. */
    snprintf(buf, sizeof(buf), "\r\n\r\nGET / HTTP/1.0\r\nX: %041d\r\n\r\n", 0);
    CHECK_EQ(parse_exact(buf, strlen(buf), &limits), HTTP_ERR_HEAD_TOO_LARGE);
}

static void more_than_max_headers_is_431(void)
{
    struct buf b = {0};
    buf_append_str(&b, "GET / HTTP/1.0\r\n");
    for (int i = 0; i < HTTP_MAX_HEADERS; i++)
        buf_printf(&b, "X-%d: %d\r\n", i, i);
    size_t without_end = b.len;
    buf_append_str(&b, "\r\n");
    struct http_request req;
    CHECK_EQ(http_parse_request(b.data, b.len, &default_limits, &req), b.len);
    CHECK_EQ(req.header_count, HTTP_MAX_HEADERS);
    CHECK_MEMEQ(req.headers[HTTP_MAX_HEADERS - 1].value, req.headers[HTTP_MAX_HEADERS - 1].value_len,
                "63");

    b.len = without_end;
    buf_append_str(&b, "X-64: 64\r\n\r\n");
    CHECK_EQ(check_every_prefix(b.data, b.len, &default_limits, HTTP_ERR_HEAD_TOO_LARGE), 0);
    /* Reported as soon as the 65th field starts. */
    CHECK_EQ(parse_exact(b.data, without_end + 1, &default_limits), HTTP_ERR_HEAD_TOO_LARGE);
    buf_free(&b);
}

/* RFC 9112 3.2: an HTTP/1.1 request needs exactly one Host; two are
 * refused in any version, and so is a value that is no uri-host[:port]. */
static void host_is_required_once_in_http11(void)
{
    static const struct raw refused[] = {
        RAW("no Host", "GET / HTTP/1.1\r\n\r\n"),
        RAW("no Host, body", "POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nab"),
        RAW("two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"),
        RAW("two Hosts, 1.0", "GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n"),
        RAW("a list", "GET / HTTP/1.1\r\nHost: a, b\r\n\r\n"),
        RAW("a space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
        RAW("a path", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"),
        RAW("userinfo", "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n"),
        RAW("obs-text", "GET / HTTP/1.1\r\nHost: caf\xc3\xa9\r\n\r\n"),
    };
    for (size_t i = 0; i < RC_ARRAY_SIZE(refused); i++) {
        const struct raw *r = &refused[i];
        int wrong = check_every_prefix(r->data, r->len, &default_limits, HTTP_ERR_HOST);
        if (wrong)
            fprintf(stderr, "  request \"%s\"\n", r->name);
        CHECK_EQ(wrong, 0);
    }
    static const struct raw accepted[] = {
        RAW("name and port", "GET / HTTP/1.1\r\nHost: localhost:8000\r\n\r\n"),
        RAW("IPv6 literal", "GET / HTTP/1.1\r\nHost: [::1]:8000\r\n\r\n"),
        RAW("empty", "GET / HTTP/1.1\r\nHost:\r\n\r\n"),
        RAW("1.0 without Host", "GET / HTTP/1.0\r\n\r\n"),
    };
    for (size_t i = 0; i < RC_ARRAY_SIZE(accepted); i++)
        CHECK_EQ(parse_exact(accepted[i].data, accepted[i].len, &default_limits),
                 (ssize_t)accepted[i].len);
    CHECK_EQ(http_error_status(HTTP_ERR_HOST), 400);
    CHECK_STREQ(http_error_code(HTTP_ERR_HOST), "invalid_host");
}

static void target_over_max_target_is_414_before_the_line_ends(void)
{
    struct http_limits limits = default_limits;
    limits.max_target = 16;
    const char *fits = "GET /aaaaaaaaaaaaaaa HTTP/1.1\r\nHost: h\r\n\r\n"; /* 16-byte target */
    CHECK_EQ(parse_exact(fits, strlen(fits), &limits), strlen(fits));

    const char *too_long = "GET /aaaaaaaaaaaaaaaa HTTP/1.1\r\nHost: h\r\n\r\n"; /* 17 */
    CHECK_EQ(check_every_prefix(too_long, strlen(too_long), &limits, HTTP_ERR_URI_TOO_LONG), 0);
    CHECK_EQ(parse_exact(too_long, strlen("GET /aaaaaaaaaaaaaaa"), &limits), 0);
    CHECK_EQ(parse_exact(too_long, strlen("GET /aaaaaaaaaaaaaaaa"), &limits), HTTP_ERR_URI_TOO_LONG);
}

static void content_length_over_max_body_is_413_before_the_body(void)
{
    struct http_limits limits = default_limits;
    limits.max_body = 100;
    const char *over = "POST /run HTTP/1.1\r\nHost: h\r\nContent-Length: 101\r\n\r\n";
    struct http_request req;
    CHECK_EQ(http_parse_request(over, strlen(over), &limits, &req), HTTP_ERR_BODY_TOO_LARGE);
    CHECK_EQ(req.head_len, strlen(over));
    CHECK_EQ(check_every_prefix(over, strlen(over), &limits, HTTP_ERR_BODY_TOO_LARGE), 0);

    const char *at_limit = "POST /run HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n";
    CHECK_EQ(http_parse_request(at_limit, strlen(at_limit), &limits, &req), 0);
    CHECK_EQ(req.head_len, strlen(at_limit));
}

static void transfer_codings_other_than_chunked_are_501(void)
{
    static const struct raw requests[] = {
        RAW("gzip", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n"),
        RAW("identity", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n"),
        RAW("chunked twice", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"),
        RAW("gzip then chunked", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
        RAW("chunked then gzip", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
        RAW("two fields", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
        RAW("chunked with parameter", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked;q=1\r\n\r\n"),
    };
    for (size_t i = 0; i < RC_ARRAY_SIZE(requests); i++) {
        const struct raw *r = &requests[i];
        int wrong = check_every_prefix(r->data, r->len, &default_limits, HTTP_ERR_NOT_IMPLEMENTED);
        if (wrong)
            fprintf(stderr, "  request \"%s\"\n", r->name);
        CHECK_EQ(wrong, 0);
    }
}

static void versions_other_than_1_0_and_1_1_are_505(void)
{
    struct http_request req;
    CHECK_EQ(parse_str("GET / HTTP/2.0\r\n\r\n", &req), HTTP_ERR_VERSION);
    CHECK_EQ(parse_str("GET / HTTP/1.2\r\n\r\n", &req), HTTP_ERR_VERSION);
    CHECK_EQ(parse_str("GET / HTTP/0.9\r\n\r\n", &req), HTTP_ERR_VERSION);
    CHECK_EQ(parse_str("GET / HTTP/2.0\r", &req), HTTP_ERR_VERSION);
    CHECK_EQ(parse_str("GET / HTTP/2.0", &req), 0);
    const char *s = "GET / HTTP/3.1\r\nHost: a\r\n\r\n";
    CHECK_EQ(check_every_prefix(s, strlen(s), &default_limits, HTTP_ERR_VERSION), 0);
}

static int keep_alive_of(const char *s)
{
    struct http_request req;
    ssize_t rc = parse_str(s, &req);
    return rc == (ssize_t)strlen(s) ? req.keep_alive : -1;
}

static void keep_alive_follows_version_and_connection_tokens(void)
{
    CHECK_EQ(keep_alive_of("GET / HTTP/1.1\r\nHost: h\r\n\r\n"), 1);
    CHECK_EQ(keep_alive_of("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"), 0);
    CHECK_EQ(keep_alive_of("GET / HTTP/1.1\r\nHost: h\r\nconnection: Upgrade, CLOSE\r\n\r\n"), 0);
    CHECK_EQ(keep_alive_of("GET / HTTP/1.1\r\nHost: h\r\nConnection: ,, close ,\r\n\r\n"), 0);
    CHECK_EQ(keep_alive_of("GET / HTTP/1.1\r\nHost: h\r\nConnection: closed\r\n\r\n"), 1);
    CHECK_EQ(keep_alive_of("GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"), 0);
    CHECK_EQ(keep_alive_of("GET / HTTP/1.1\r\nHost: h\r\nX-Connection: close\r\n\r\n"), 1);
    CHECK_EQ(keep_alive_of("GET / HTTP/1.0\r\n\r\n"), 0);
    CHECK_EQ(keep_alive_of("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), 1);
    CHECK_EQ(keep_alive_of("GET / HTTP/1.0\r\nConnection: foo, Keep-Alive\r\n\r\n"), 1);
    CHECK_EQ(keep_alive_of("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"), 0);
    CHECK_EQ(keep_alive_of("GET / HTTP/1.0\r\nConnection: keep-alived\r\n\r\n"), 0);
}

static void expect_continue_is_recognised_case_insensitively(void)
{
    struct http_request req;
    CHECK_EQ(parse_str("POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n", &req) > 0, 1);
    CHECK_EQ(req.expect_continue, 1);
    CHECK_EQ(parse_str("POST / HTTP/1.1\r\nHost: h\r\nEXPECT: 100-CONTINUE \r\n\r\n", &req) > 0, 1);
    CHECK_EQ(req.expect_continue, 1);
    CHECK_EQ(parse_str("POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue-x\r\n\r\n", &req) > 0, 1);
    CHECK_EQ(req.expect_continue, 0);
    CHECK_EQ(parse_str("POST / HTTP/1.1\r\nHost: h\r\n\r\n", &req) > 0, 1);
    CHECK_EQ(req.expect_continue, 0);
}

static void request_free_is_safe_on_zeroed_and_freed_requests(void)
{
    struct http_request req;
    memset(&req, 0, sizeof(req));
    http_request_free(&req);
    http_request_free(&req);
    CHECK(req.body_owned == NULL);
}

static ssize_t query(const char *q, const char *key, char *out, size_t out_size)
{
    return http_query_get(q, q ? strlen(q) : 0, key, out, out_size);
}

static void query_values_are_form_decoded(void)
{
    char out[64];
    CHECK_EQ(query("a=1&b=two", "b", out, sizeof(out)), 3);
    CHECK_STREQ(out, "two");
    CHECK_EQ(query("q=hello+world%21%2f%2F", "q", out, sizeof(out)), 14);
    CHECK_STREQ(out, "hello world!//");
    CHECK_EQ(query("last%5Fevent%5fid=7", "last_event_id", out, sizeof(out)), 1);
    CHECK_STREQ(out, "7");
    CHECK_EQ(query("a+b=1", "a b", out, sizeof(out)), 1);
    CHECK_STREQ(out, "1");
    CHECK_EQ(query("a=b=c", "a", out, sizeof(out)), 3);
    CHECK_STREQ(out, "b=c");
    CHECK_EQ(query("a=1&a=2", "a", out, sizeof(out)), 1);
    CHECK_STREQ(out, "1");
    CHECK_EQ(query("&&a=1&", "a", out, sizeof(out)), 1);
    CHECK_STREQ(out, "1");
    CHECK_EQ(query("x&flag", "flag", out, sizeof(out)), 0);
    CHECK_STREQ(out, "");
    CHECK_EQ(query("a=", "a", out, sizeof(out)), 0);
    CHECK_STREQ(out, "");
    CHECK_EQ(query("caf%C3%A9=1", "caf\xc3\xa9", out, sizeof(out)), 1);
    /* Only the query's bytes are read: the key must not match past query_len. */
    CHECK_EQ(http_query_get("a=12345", 4, "a", out, sizeof(out)), 2);
    CHECK_STREQ(out, "12");
}

static void query_lookup_reports_absent_malformed_and_small_buffers(void)
{
    char out[8];
    CHECK_EQ(query("ab=1", "a", out, sizeof(out)), -ENOENT);
    CHECK_EQ(query("a=1", "ab", out, sizeof(out)), -ENOENT);
    CHECK_EQ(query("A=1", "a", out, sizeof(out)), -ENOENT);
    CHECK_EQ(query("", "a", out, sizeof(out)), -ENOENT);
    CHECK_EQ(query(NULL, "a", out, sizeof(out)), -ENOENT);

    CHECK_EQ(query("a=%zz", "a", out, sizeof(out)), -EINVAL);
    CHECK_EQ(query("a=%4", "a", out, sizeof(out)), -EINVAL);
    CHECK_EQ(query("a=%", "a", out, sizeof(out)), -EINVAL);
    CHECK_EQ(query("a=x%00y", "a", out, sizeof(out)), -EINVAL);
    CHECK_EQ(query("%zz=1&a=2", "a", out, sizeof(out)), -EINVAL); /* might have been "a" */
    CHECK_EQ(query("b=%zz&a=1", "a", out, sizeof(out)), 1);       /* other values unread */
    CHECK_EQ(query("a=1&b=%zz", "a", out, sizeof(out)), 1);

    CHECK_EQ(query("a=hello", "a", out, 5), -ENOSPC);
    CHECK_EQ(query("a=hello", "a", out, 6), 5);
    CHECK_STREQ(out, "hello");
    CHECK_EQ(query("a=", "a", NULL, 0), -ENOSPC);
    CHECK_EQ(query("a=hello%zz", "a", out, 2), -EINVAL); /* a bad escape wins over size */
}

static void errors_map_to_status_code_and_text(void)
{
    static const struct {
        int err;
        int status;
        const char *code;
    } cases[] = {
        {HTTP_ERR_BAD_REQUEST, 400, "bad_request"},
        {HTTP_ERR_HEAD_TOO_LARGE, 431, "header_too_large"},
        {HTTP_ERR_URI_TOO_LONG, 414, "uri_too_long"},
        {HTTP_ERR_BODY_TOO_LARGE, 413, "body_too_large"},
        {HTTP_ERR_NOT_IMPLEMENTED, 501, "not_implemented"},
        {HTTP_ERR_VERSION, 505, "http_version_not_supported"},
        {-99, 400, "bad_request"},
        {0, 400, "bad_request"},
    };
    for (size_t i = 0; i < RC_ARRAY_SIZE(cases); i++) {
        CHECK_EQ(http_error_status(cases[i].err), cases[i].status);
        CHECK_STREQ(http_error_code(cases[i].err), cases[i].code);
        CHECK(strlen(http_strerror(cases[i].err)) > 0);
    }
    CHECK_STREQ(http_strerror(HTTP_ERR_HEAD_TOO_LARGE), "request header fields too large");
}

static void status_reasons_cover_every_status_runcast_sends(void)
{
    static const int statuses[] = {100, 200, 201, 202, 204, 301, 302, 304, 400, 401, 403, 404, 405, 408,
                                   409, 411, 413, 414, 415, 422, 429, 431, 500, 501, 502, 503, 504, 505};
    for (size_t i = 0; i < RC_ARRAY_SIZE(statuses); i++)
        CHECK(strcmp(http_status_reason(statuses[i]), "Unknown") != 0);
    CHECK_STREQ(http_status_reason(200), "OK");
    CHECK_STREQ(http_status_reason(202), "Accepted");
    CHECK_STREQ(http_status_reason(404), "Not Found");
    CHECK_STREQ(http_status_reason(431), "Request Header Fields Too Large");
    CHECK_STREQ(http_status_reason(503), "Service Unavailable");
    CHECK_STREQ(http_status_reason(999), "Unknown");
    CHECK_STREQ(http_status_reason(0), "Unknown");
}

/* Feeds a chunked request of `chunks` one-byte chunks the way a trickling
 * peer sends it: one chunk per read, the parser called after each on the
 * whole buffered request, as the server does. Returns the bytes the parser
 * examined in total. */
static size_t examined_for_trickled_chunks(size_t chunks)
{
    struct buf b = {0};
    buf_append_str(&b, "POST /run HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n");
    struct http_body_state st;
    memset(&st, 0, sizeof(st));
    struct http_request req;
    int early = 0;
    for (size_t i = 0; i < chunks; i++) {
        buf_append_str(&b, "1\r\nx\r\n");
        early += http_parse_request_resume(b.data, b.len, &default_limits, &req, &st) != 0;
        http_request_free(&req);
    }
    buf_append_str(&b, "0\r\n\r\n");
    CHECK_EQ(http_parse_request_resume(b.data, b.len, &default_limits, &req, &st), b.len);
    CHECK_EQ(req.body_len, chunks);
    CHECK(req.body_len > 0 && req.body[0] == 'x' && req.body[req.body_len - 1] == 'x');
    CHECK_EQ(early, 0);
    http_request_free(&req);
    buf_free(&b);
    return st.examined;
}

/* A body trickled in tiny chunks costs the head plus the new bytes per
 * read, not the whole body again: 4x the chunks, 4x the bytes examined
 * (re-reading the body on every read made it 16x). */
static void trickled_chunked_body_costs_linear_time(void)
{
    size_t head = strlen("POST /run HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n");
    size_t small = examined_for_trickled_chunks(2000);
    size_t large = examined_for_trickled_chunks(8000);
    /* every read: the head once more and the 6 new bytes; the end: 5 */
    CHECK_EQ(small, 2001 * head + 2000 * 6 + 5);
    CHECK_EQ(large, 8001 * head + 8000 * 6 + 5);
    CHECK(large <= 4 * small + 4 * head);
}

/* Deterministic mutation fuzzing: random byte flips, insertions and
 * deletions of valid requests. Every result is a valid code or a length
 * within the input, and every prefix agrees with the whole (0 or the same
 * error; 0 before a complete request). ASan catches reads past the end. */
static void mutated_requests_never_read_past_the_end_and_prefixes_agree(void)
{
    static const struct raw seeds[] = {
        RAW("get", "GET /a?b=c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"),
        RAW("cl", "POST /r HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"),
        RAW("chunked", "POST /r HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2;a=b\r\nab\r\n0\r\nT: 1\r\n\r\n"),
    };
    static const char alphabet[] = "\r\n :;=,0123456789abcdefABCDEF/?%+-\t\0\x7f\xff" "HTTPchunked";
    struct http_limits limits = {.max_header = 96, .max_body = 16, .max_target = 24};
    uint32_t state = 12345;
    int bad_results = 0, prefix_disagreements = 0;
    char buf[256];

    for (int iter = 0; iter < 3000; iter++) {
        const struct raw *seed = &seeds[iter % RC_ARRAY_SIZE(seeds)];
        size_t len = seed->len;
        memcpy(buf, seed->data, len);
        int mutations = 1 + iter % 3;
        for (int m = 0; m < mutations; m++) {
            state = state * 1103515245u + 12345u;
            uint32_t r = state >> 8;
            size_t at = r % (len + 1);
            char ch = alphabet[(r >> 12) % (sizeof(alphabet) - 1)];
            switch ((r >> 20) % 3) {
            case 0:
                if (at < len)
                    buf[at] = ch;
                break;
            case 1:
                if (len < sizeof(buf)) {
                    memmove(buf + at + 1, buf + at, len - at);
                    buf[at] = ch;
                    len++;
                }
                break;
            default:
                if (at < len) {
                    memmove(buf + at, buf + at + 1, len - at - 1);
                    len--;
                }
                break;
            }
        }
        ssize_t whole = parse_exact(buf, len, &limits);
        if (whole < HTTP_ERR_HOST || whole > (ssize_t)len)
            bad_results++;
        size_t end = whole > 0 ? (size_t)whole : len;
        for (size_t n = 0; n < end; n++) {
            ssize_t rc = parse_exact(buf, n, &limits);
            if (rc != 0 && (whole > 0 || rc != whole))
                prefix_disagreements++;
        }
    }
    CHECK_EQ(bad_results, 0);
    CHECK_EQ(prefix_disagreements, 0);
}

int main(void)
{
    RUN_TEST(simple_get_parses_request_line_and_trimmed_headers);
    RUN_TEST(host_is_required_once_in_http11);
    RUN_TEST(trickled_chunked_body_costs_linear_time);
    RUN_TEST(target_without_question_mark_has_no_query);
    RUN_TEST(methods_map_case_sensitively);
    RUN_TEST(asterisk_target_is_only_for_options);
    RUN_TEST(leading_empty_lines_are_skipped_and_counted);
    RUN_TEST(pipelined_requests_parse_one_after_another);
    RUN_TEST(every_prefix_needs_more_bytes_until_the_last);
    RUN_TEST(content_length_body_points_into_the_buffer);
    RUN_TEST(head_len_is_set_while_the_body_is_pending);
    RUN_TEST(chunked_body_is_decoded_from_chunks_extensions_and_trailers);
    RUN_TEST(chunked_body_needs_more_without_allocating);
    RUN_TEST(malformed_chunked_bodies_are_bad_requests);
    RUN_TEST(chunked_body_over_max_body_is_413_before_its_data);
    RUN_TEST(chunked_framing_beyond_body_and_header_limits_is_413);
    RUN_TEST(smuggling_shapes_are_bad_requests);
    RUN_TEST(head_over_max_header_is_431);
    RUN_TEST(more_than_max_headers_is_431);
    RUN_TEST(target_over_max_target_is_414_before_the_line_ends);
    RUN_TEST(content_length_over_max_body_is_413_before_the_body);
    RUN_TEST(transfer_codings_other_than_chunked_are_501);
    RUN_TEST(versions_other_than_1_0_and_1_1_are_505);
    RUN_TEST(keep_alive_follows_version_and_connection_tokens);
    RUN_TEST(expect_continue_is_recognised_case_insensitively);
    RUN_TEST(request_free_is_safe_on_zeroed_and_freed_requests);
    RUN_TEST(query_values_are_form_decoded);
    RUN_TEST(query_lookup_reports_absent_malformed_and_small_buffers);
    RUN_TEST(errors_map_to_status_code_and_text);
    RUN_TEST(status_reasons_cover_every_status_runcast_sends);
    RUN_TEST(mutated_requests_never_read_past_the_end_and_prefixes_agree);
    return test_report("test_http");
}
