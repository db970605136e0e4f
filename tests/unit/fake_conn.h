/* fake_conn.h: a connection that records how auth.c's gate answered (its
 * only way out to the HTTP layer), for tests/unit/test_auth.c and
 * fuzz/fuzz_token.c, which compile auth.c into themselves. Include it once,
 * after auth.c. */
#ifndef RUNCAST_FAKE_CONN_H
#define RUNCAST_FAKE_CONN_H

#include <stdio.h>
#include <string.h>

struct conn {
    int status;         /* 0: not answered */
    char headers[2048]; /* extra headers of the answer */
    char answer[2048];  /* conn_set_answer_headers() */
    char code[64];      /* error code of a JSON error */
    int answers;
};

void conn_set_answer_headers(struct conn *c, const char *lines)
{
    snprintf(c->answer, sizeof(c->answer), "%s", lines ? lines : "");
}

void conn_respond(struct conn *c, int status, const char *content_type, const char *extra_headers,
                  const char *body, size_t body_len)
{
    c->status = status;
    c->answers++;
    snprintf(c->headers, sizeof(c->headers), "%s", extra_headers ? extra_headers : "");
}

void conn_respond_error(struct conn *c, int status, const char *code, const char *message,
                        const char *extra_headers)
{
    conn_respond(c, status, "application/json", extra_headers, message, strlen(message));
    snprintf(c->code, sizeof(c->code), "%s", code);
}

const char *conn_peer(const struct conn *c)
{
    return "127.0.0.1:1";
}

#endif
