/* console.h: the built-in web console. The files under web/ are turned into a
 * table of byte arrays at build time (scripts/embed-web writes
 * $(BUILD)/web_assets.c), so the page ships inside the binary and loads
 * nothing from anywhere else: GET / is web/index.html, GET /console/NAME is
 * web/NAME. */
#ifndef RUNCAST_CONSOLE_H
#define RUNCAST_CONSOLE_H

#include "common.h"
#include "http.h"

struct conn;

/* One embedded file. Static data, never freed. */
struct console_asset {
    const char *path;          /* URL path: "/" or "/console/NAME" */
    const char *content_type;  /* with charset for text types */
    const char *etag;          /* strong validator, quoted: a hash of the bytes */
    const unsigned char *data;
    size_t len;
};

/* Defined by the generated web_assets.c; ends with an entry whose path is
 * NULL. */
extern const struct console_asset console_assets[];

/* Answers a GET or HEAD of "/" or "/console/NAME": 200 with the file, 304
 * when If-None-Match names its ETag, 404 for an unknown name. Every answer
 * carries the console's Content-Security-Policy. Call from the request
 * callback; it answers before it returns. */
void console_serve(struct conn *c, const struct http_request *req);

#endif
