/* json_text.h: compact JSON text from jansson values, without json_dumps.
 *
 * jansson 2.14's json_dumps checks every object and array it writes for a
 * reference loop, by formatting the container's address with snprintf("%p")
 * into a hash table, and goes through a callback per fragment: about 12,000
 * instructions for each small text a run start writes (its state events,
 * the /run_sse body), against about 7,000 here, most of them the times'
 * "%.17g". The values runcast builds cannot hold a loop (jansson refuses
 * to insert a container into itself, and nothing here builds one
 * indirectly), so this writer skips the check.
 *
 * The text is byte for byte what json_dumps(v, JSON_COMPACT) writes (keys in
 * insertion order, the same string escapes, reals as "%.17g" with ".0"
 * added to integral ones); tests/unit/test_util.c compares the two. */
#ifndef RUNCAST_JSON_TEXT_H
#define RUNCAST_JSON_TEXT_H

#include <jansson.h>

#include "common.h"

/* Appends s[0..len) to out as a JSON string, quoted and escaped as
 * json_dumps escapes it (s must be UTF-8, as jansson's strings are). */
void json_text_string(struct buf *out, const char *s, size_t len);

/* Appends v's compact text to out. */
void json_text_append(struct buf *out, const json_t *v);

/* v's compact text in a new NUL-terminated string (free() it); NULL for a
 * NULL v. */
char *json_text(const json_t *v);

#endif
