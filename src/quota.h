/* quota.h: per-user caps on what one user may hold at once: active runs
 * (--max-runs-per-user), event streams (--max-subscribers-per-user) and
 * sessions (--max-sessions-per-user), so that one user cannot take every
 * limiter slot, every stream or every session.
 *
 * The user is the {user} of the session's path (with --auth jwt the gate has
 * bound it to the token's user claim). With a cap of 0 nothing is counted.
 * Loop thread only.
 */
#ifndef RUNCAST_QUOTA_H
#define RUNCAST_QUOTA_H

#include "common.h"

/* Sets the caps (0: none) and forgets every count. Before it, nothing is
 * capped. */
void quota_init(int max_runs_per_user, int max_subscribers_per_user, int max_sessions_per_user);
/* Frees the table; call once every run and stream has ended. */
void quota_shutdown(void);

/* Counts a new active run of user. Returns 0, or -EDQUOT when the user now
 * has more than --max-runs-per-user (the run is counted all the same: call
 * quota_run_end() when it ends, as for every run). */
int quota_run_begin(const char *user);
void quota_run_end(const char *user);
/* Counts a new event stream of user and sets *handle for
 * quota_subscriber_end(). Returns 0, or -EDQUOT at the cap (nothing
 * counted, *handle NULL). */
int quota_subscriber_begin(const char *user, void **handle);
/* The same in Redis mode: the user has `elsewhere` streams on other nodes
 * (as of their latest tick), which count toward the cap too. */
int quota_subscriber_begin_shared(const char *user, int elsewhere, void **handle);
/* --max-subscribers-per-user (0: none). */
int quota_subscriber_cap(void);
/* Forgets one stream counted by quota_subscriber_begin(); handle may be NULL
 * (nothing was counted). Fits hub_subscribe_options.on_leave. */
void quota_subscriber_end(void *handle);

/* Counts a new session of user (session.c, when it creates one). Returns
 * 0, or -EDQUOT at --max-sessions-per-user (nothing counted). */
int quota_session_begin(const char *user);
/* Forgets one session counted by quota_session_begin() (when it is freed,
 * whatever the reason). */
void quota_session_end(const char *user);

/* Users with something counted (for tests). */
size_t quota_user_count(void);

#endif
