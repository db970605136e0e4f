/* console.c: serves the embedded web console (see console.h). The files are
 * immutable for the life of the process, so each carries a strong ETag and
 * "Cache-Control: no-cache": a browser revalidates on every load and gets a
 * 304 until runcast is rebuilt with other files. */
#include "console.h"

#include <stdio.h>

#include "server.h"

/* The page needs nothing but its own origin: no inline script or style, no
 * third-party anything, no framing, no form posts, no <base> games. */
#define CONSOLE_CSP                                                                      \
    "Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; " \
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "    \
    "frame-ancestors 'none'\r\n"

#define CONSOLE_HEADERS                                                    \
    CONSOLE_CSP "X-Content-Type-Options: nosniff\r\n"                     \
                "Referrer-Policy: no-referrer\r\n"                        \
                "Cross-Origin-Resource-Policy: same-origin\r\n"

/* The asset served at path[0..path_len) (no query string), or NULL. */
static const struct console_asset *console_find(const char *path, size_t path_len)
{
    for (const struct console_asset *a = console_assets; a->path != NULL; a++) {
        if (strlen(a->path) == path_len && memcmp(a->path, path, path_len) == 0)
            return a;
    }
    return NULL;
}

/* 1 when an If-None-Match value (a comma-separated list of entity tags, or
 * "*") names etag. Weak comparison, as RFC 9110 asks for If-None-Match: a
 * W/ prefix is ignored. */
static int etag_listed(const char *list, size_t len, const char *etag)
{
    const char *item;
    size_t n, pos = 0;
    while (str_list_next(list, len, &pos, &item, &n)) {
        if (n >= 2 && item[0] == 'W' && item[1] == '/') {
            item += 2;
            n -= 2;
        }
        if (n == 1 && item[0] == '*')
            return 1;
        if (n > 0 && n == strlen(etag) && memcmp(item, etag, n) == 0)
            return 1;
    }
    return 0;
}

void console_serve(struct conn *c, const struct http_request *req)
{
    const struct console_asset *a = console_find(req->path, req->path_len);
    if (a == NULL) {
        conn_respond_error(c, 404, "not_found", "no such console file", CONSOLE_HEADERS);
        return;
    }
    char headers[768];
    snprintf(headers, sizeof(headers), "%sCache-Control: no-cache\r\nETag: %s\r\n",
             CONSOLE_HEADERS, a->etag);
    const struct http_header *inm = http_find_header(req, "If-None-Match");
    if (inm != NULL && etag_listed(inm->value, inm->value_len, a->etag)) {
        conn_respond(c, 304, NULL, headers, NULL, 0);
        return;
    }
    conn_respond(c, 200, a->content_type, headers, (const char *)a->data, a->len);
}
