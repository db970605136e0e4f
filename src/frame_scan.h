/* frame_scan.h: a non-allocating check that an upstream frame is certainly a
 * plain JSON object, so that upstream.c can relay it without building a
 * jansson tree.
 */
#ifndef RUNCAST_FRAME_SCAN_H
#define RUNCAST_FRAME_SCAN_H

#include <stddef.h>

/* 1 when data is certainly one non-empty JSON object that jansson accepts
 * and that has no top-level "error", "errorCode" or "errorMessage" member (a
 * frame to relay as it is, with no error to note); 0 when unsure (jansson
 * then judges the frame). Never allocates, never fails; safe from any
 * callback. */
int frame_scan_is_plain_object(const char *data, size_t len);

#endif
