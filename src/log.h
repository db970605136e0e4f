/* log.h: one line per event, logfmt ("text") or JSON lines, to stderr.
 *
 * log_event(LOG_INFO, "run.started", "session", "s1", "run", "r-1", NULL)
 * writes `level=info event=run.started session=s1 run=r-1` or the same as a
 * JSON object. Fields are name/value string pairs ended by NULL; numbers are
 * formatted by the caller. Values are quoted/escaped as each format needs, so
 * user text can never break a line. Safe from any thread (one write per line).
 */
#ifndef RUNCAST_LOG_H
#define RUNCAST_LOG_H

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };
enum log_format { LOG_TEXT = 0, LOG_JSON };

void log_configure(enum log_level min_level, enum log_format format);
/* Parses "debug|info|warn|error" / "text|json"; returns 0 or -EINVAL. */
int log_parse_level(const char *s, enum log_level *out);
int log_parse_format(const char *s, enum log_format *out);
int log_enabled(enum log_level level);
void log_event(enum log_level level, const char *event, ...) __attribute__((sentinel));

#endif
