/* demo_internal.h: what the files of the demo agent share (src/demo/).
 * The rest of runcast sees only src/demo.h.
 *
 * The agent, file by file, in the order a /run_sse call walks them:
 *
 *   agent.c       one `struct demo`: create, stop, destroy; the embedded
 *                 agent's thread; `runcast demo-agent`'s command line
 *   handlers.c    the HTTP routes: sessions, /run_sse, /debug/calls, /health
 *   directives.c  a message's `!` words -> struct demo_directives (pure)
 *   sessions.c    the session table (table.h) with its age list
 *   calls.c       the ring of recent /run_sse calls (/debug/calls)
 *   stream.c      a run: the answer after !delay, then the paced frames
 *
 * Everything lives on the agent's one loop: no locks anywhere.
 */
#ifndef RUNCAST_DEMO_INTERNAL_H
#define RUNCAST_DEMO_INTERNAL_H

#include <jansson.h>
#include <time.h>
#include <uv.h>

#include "../common.h"
#include "../demo.h"
#include "../http.h"
#include "../server.h"
#include "../table.h"

#define DEMO_MAX_SESSIONS 100000
#define DEMO_CALL_RING 1000
#define DEMO_CALL_TEXT_MAX 8192          /* bytes of a message kept in /debug/calls */
#define DEMO_ID_MAX 256                  /* appName, userId, sessionId */
#define DEMO_MAX_EVENT_BYTES (16u << 20) /* !bytes cap */
#define DEMO_MAX_QUEUED (1u << 20)       /* unsent bytes before a run waits */
#define DEMO_TICK_BYTES (256u << 10)     /* frames gathered into one write */
#define DEMO_TICK_FRAMES 4096            /* frames written per timer tick at most */
#define DEMO_DEFAULT_WORD_DELAY_MS 50
#define DEMO_NAME_MAX 64                 /* !tool name, !state key */

/* Wall-clock microseconds (CLOCK_REALTIME): event timestamps, call times. */
static inline uint64_t demo_wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* splitmix64: ids only need to look random and not repeat within a run. */
static inline uint64_t demo_rng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* ---- directives.c ------------------------------------------------------- */

/* What a message's `!` words ask for (docs/DEMO.md). Owned by whoever holds
 * it (a handler on its stack, then its run); error is its one allocation. */
struct demo_directives {
    int has_word_delay;
    uint64_t word_delay_ms;
    uint64_t delay_ms;
    uint64_t first_ms;
    int has_events;
    uint64_t events;
    uint64_t bytes;         /* default 16 */
    double rate;            /* 0: pace by the word delay */
    int hang;
    int status;             /* 0: none */
    uint64_t status_calls;  /* !status=CODExN: N; 0: every call */
    char retry_after[64];   /* "" when not given */
    char *error;            /* NULL when not given */
    int malformed;
    int64_t cut_after;      /* frames before the cut; -1: no cut */
    char ctype[256];        /* "" when not given */
    int forget;
    char tool[DEMO_NAME_MAX + 1];      /* !tool: the function to call; "" when not given */
    char state_key[DEMO_NAME_MAX + 1]; /* !state: the stateDelta key; "" when not given */
    int think;
};

/* The directives of a message without any: bytes 16, no cut. */
void demo_directives_init(struct demo_directives *dir);
/* Splits text (a C string) into words: `!` words go to dir (unknown names and
 * bad values are dropped), the others are appended to words_out joined with
 * single spaces. Returns the number of plain words. Cannot fail. */
uint64_t demo_directives_parse(const char *text, struct demo_directives *dir,
                               struct buf *words_out);
/* Frees what dir owns (its !error text). Safe twice. */
void demo_directives_free(struct demo_directives *dir);

/* ---- sessions.c --------------------------------------------------------- */

/* Owned by the table; gone after demo_session_remove(). Nothing else keeps a
 * pointer to a session across callbacks (a run copies what it needs). */
struct demo_session {
    struct table_entry entry;  /* key: "app\0user\0id" */
    struct list age_node;      /* in demo_sessions.by_age, oldest first */
    char *key;                 /* "app\0user\0id\0", one allocation */
    const char *app, *user, *id; /* into key */
    double created_at;         /* wall seconds (lastUpdateTime) */
    uint64_t status_text_hash; /* !status=CODExN: the message being refused... */
    uint64_t status_count;     /* ...and how many calls in a row carried it */
};

struct demo_sessions {
    struct table table; /* struct demo_session.entry */
    struct list by_age;
};

void demo_sessions_init(struct demo_sessions *t);
/* Frees every session and the table. */
void demo_sessions_free(struct demo_sessions *t);
/* The session (app, user, id), or NULL. Borrowed: valid until removed. */
struct demo_session *demo_session_find(struct demo_sessions *t, const char *app,
                                       const char *user, const char *id);
/* Adds a session that demo_session_find() did not find; evicts the oldest
 * one beyond DEMO_MAX_SESSIONS. Returns it (owned by the table). */
struct demo_session *demo_session_add(struct demo_sessions *t, const char *app,
                                      const char *user, const char *id);
/* Unlinks and frees s. Cannot fail. */
void demo_session_remove(struct demo_sessions *t, struct demo_session *s);
/* !status=CODExN bookkeeping; see sessions.c. Returns 1 to refuse this call. */
int demo_session_status_turn(struct demo_session *s, const char *text, uint64_t n);
/* ADK's Session shape. Caller owns the result. */
json_t *demo_session_json(const struct demo_session *s);

/* ---- calls.c ------------------------------------------------------------ */

/* A call's life, as /debug/calls shows it. waiting -> streaming -> one of
 * the final states; waiting may go straight to a final state (an immediate
 * answer, or the client leaving during !delay). */
enum demo_call_state {
    DEMO_CALL_WAITING = 0,
    DEMO_CALL_STREAMING,
    DEMO_CALL_FINISHED,
    DEMO_CALL_CLIENT_GONE,
    DEMO_CALL_CUT,
};

/* One /run_sse call. Owned by the ring slot (id - 1) % DEMO_CALL_RING; a
 * run refers to it by id, so a call evicted while its run goes on is simply
 * no longer updated. */
struct demo_call {
    uint64_t id; /* 0: empty slot */
    char *session;
    char *text;
    int status;
    enum demo_call_state state;
    uint64_t events;
    uint64_t received_at_us;
    uint64_t ended_at_us;
};

struct demo_calls {
    struct demo_call ring[DEMO_CALL_RING];
    uint64_t last_id;
};

/* The call with this id, or NULL when it left the ring. Borrowed. */
struct demo_call *demo_call_get(struct demo_calls *calls, uint64_t id);
/* Records a new call (state waiting, status 0), evicting the oldest. */
struct demo_call *demo_call_new(struct demo_calls *calls);
/* The one place a call changes state; final states are final. call may be
 * NULL (evicted): nothing happens. */
void demo_call_set_state(struct demo_call *call, enum demo_call_state to);
/* The call got an immediate, non-streamed status and is over. */
void demo_call_answered(struct demo_call *call, int status);
/* The call as /debug/calls shows it. Caller owns the result. */
json_t *demo_call_json(const struct demo_call *call);
/* Frees the ring's strings. */
void demo_calls_free(struct demo_calls *calls);

/* ---- agent.c ------------------------------------------------------------ */

/* One agent. Owned by whoever created it (the demo thread, or demo_main);
 * freed by demo_destroy() once its loop has stopped. */
struct demo {
    uv_loop_t *loop;
    struct server *server; /* NULL once closed */
    uint64_t word_delay_ms;
    struct demo_sessions sessions;
    struct demo_calls calls;
    struct list runs; /* struct demo_run.node (stream.c): runs not yet released */
    uint64_t rng;
    int stopping;
};

/* ---- handlers.c --------------------------------------------------------- */

/* The server's request callback: routes one request. Answers before it
 * returns, except a /run_sse run that waits for !delay (a deferred answer,
 * see server.h). */
void demo_on_request(struct conn *c, const struct http_request *req, void *data);
/* Sends {"detail": detail} with status; extra: NULL or header lines. */
void demo_respond_detail(struct conn *c, int status, const char *detail, const char *extra);

/* ---- stream.c ----------------------------------------------------------- */

/* Takes a parsed /run_sse call over: answers status_answer (a !status
 * refusal) or begins the stream, at once or after !delay. dir is moved into
 * the run (dir->error is NULL afterwards); words (what follows "Echo: ", a
 * space before each word but the first) is copied. */
void demo_run_start(struct demo *d, struct conn *c, struct demo_call *call,
                    struct demo_directives *dir, const struct buf *words, int streaming,
                    int status_answer);
/* Releases every run of d (their calls become client_gone) without writing
 * anything more; the memory goes from the close callbacks that follow. For
 * demo_stop(), before server_close(). */
void demo_runs_stop(struct demo *d);

#endif
