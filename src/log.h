/* log.h: one line per event, logfmt ("text") or JSON lines, to stderr.
 *
 * log_event(LOG_INFO, "run.started", "session", "s1", "run", "r-1", NULL)
 * writes `level=info event=run.started session=s1 run=r-1` or the same as a
 * JSON object. Fields are name/value string pairs ended by NULL; numbers are
 * formatted by the caller. Values are quoted/escaped as each format needs, so
 * user text can never break a line. Safe from any thread.
 *
 * Writing never blocks the loop: after log_attach(), an stderr that is a
 * pipe or socket whose reader falls behind gets a bounded backlog, then
 * whole lines are dropped and counted (see log.c).
 */
#ifndef RUNCAST_LOG_H
#define RUNCAST_LOG_H

#include <stdint.h>
#include <uv.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };
enum log_format { LOG_TEXT = 0, LOG_JSON };

void log_configure(enum log_level min_level, enum log_format format);
/* Parses "debug|info|warn|error" / "text|json"; returns 0 or -EINVAL. */
int log_parse_level(const char *s, enum log_level *out);
int log_parse_format(const char *s, enum log_format *out);
int log_enabled(enum log_level level);
void log_event(enum log_level level, const char *event, ...) __attribute__((sentinel));

/* Makes a pipe or socket stderr non-blocking, with a flush timer on loop
 * (unreferenced). Returns 1 if it did, 0 for a terminal or a file (written
 * directly, as before). */
int log_attach(uv_loop_t *loop);
/* Closes the flush timer; call while the loop still runs. */
void log_detach(void);
/* Last thing before exit: flushes the backlog, waiting at most a second for
 * the reader, and restores stderr's flags. */
void log_finish(void);
/* Lines dropped because stderr's reader was too far behind. */
uint64_t log_dropped_lines(void);

#endif
