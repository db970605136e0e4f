/* sse.h: Server-Sent Events, both ways.
 *
 * sse_encode() builds the bytes of one event for the browsers; the parser
 * reads an upstream's event stream incrementally, following the WHATWG
 * "interpreting an event stream" rules: LF, CRLF and CR line ends (a CR at the
 * end of one chunk and an LF at the start of the next are one line end), a
 * leading UTF-8 BOM is skipped, comments (":...") ignored, multi-line data
 * joined with "\n", one space after the colon removed, events with no data
 * not dispatched, a frame split across any number of feeds.
 */
#ifndef RUNCAST_SSE_H
#define RUNCAST_SSE_H

#include "common.h"

/* Appends "id: <id>\nevent: <event>\ndata: <line>\n...\n\n" to out. id and/or
 * event may be NULL (the line is then left out). Data containing LF, CR or
 * CRLF is split into several data lines so that a parser reassembles exactly
 * the same data (with "\n" between lines). Returns the number of bytes
 * appended. */
size_t sse_encode(struct buf *out, const char *id, const char *event,
                  const char *data, size_t data_len);

/* One dispatched event. Pointers are valid only during the callback. event is
 * "message" when the stream gave no event field. id is the last id seen (the
 * WHATWG "last event ID buffer"), possibly empty. */
struct sse_event {
    const char *event;
    size_t event_len;
    const char *data;
    size_t data_len;
    const char *id;
    size_t id_len;
};

/* Called for each dispatched event. Return 0 to go on, anything else to stop
 * feeding: sse_parser_feed() then returns that value. */
typedef int (*sse_event_cb)(void *arg, const struct sse_event *ev);

struct sse_parser {
    struct buf line;  /* the current, not yet terminated line */
    struct buf data;  /* data buffer of the event being built */
    struct buf event; /* event type buffer */
    struct buf id;    /* last event ID buffer */
    size_t max_event_bytes;
    int last_was_cr;  /* previous byte was a CR: a following LF is not a new line */
    int bom_state;    /* 0: nothing seen yet, 1..2: partial BOM, 3: past the BOM check */
    int has_data;     /* a data field was seen in the current event */
};

/* max_event_bytes bounds one line and one event's data (a hostile upstream
 * cannot make runcast buffer without limit). */
void sse_parser_init(struct sse_parser *p, size_t max_event_bytes);
/* Feeds n bytes. Returns 0, the callback's nonzero value if it stopped, or
 * -E2BIG when a line or an event passes max_event_bytes (the parser is then
 * unusable). */
int sse_parser_feed(struct sse_parser *p, const char *bytes, size_t n,
                    sse_event_cb cb, void *arg);
/* 1 when bytes of an undispatched event are pending (a stream that ends now
 * was cut in the middle of a frame). */
int sse_parser_has_partial(const struct sse_parser *p);
void sse_parser_free(struct sse_parser *p);

#endif
