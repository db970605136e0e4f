/* stream.h: an SSE stream on an HTTP connection, as a hub subscriber.
 *
 * The transport side of a subscriber (hub.h's subscriber_ops) on server.c's
 * conn_stream_* functions: the response head, the framing (chunked on
 * HTTP/1.1, so that a normal end — a deleted session, an expired token —
 * lets the connection serve the next request while a drop or a shutdown
 * cuts it, and a client can tell the two apart; close-delimited on
 * HTTP/1.0), and the wiring of the connection's close to the hub.
 */
#ifndef RUNCAST_STREAM_H
#define RUNCAST_STREAM_H

#include "hub.h"

struct conn;

/* Turns conn (whose request was GET …/run, or ADK's POST /run_sse with
 * opt->view set) into a subscriber of h: sends the SSE response head, then
 * hub_subscribe() sends the retry line and the replay opt asks for. Returns 0, or -ENOSPC over --max-subscribers (nothing
 * was sent: the caller answers 503), or another negative errno when the
 * connection is gone; opt->on_leave is called only after 0. */
int stream_open(struct conn *conn, struct hub *h, const struct hub_subscribe_options *opt);

#endif
