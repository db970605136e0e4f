/* auth.h: access control. Who may call what (JWT bearer tokens bound to the
 * session's user, admin tokens, an admin listener) and from which web
 * origins (CORS). How much one user may hold is quota.h's.
 *
 * With --auth none every route is open, as before access control existed;
 * CORS applies in both modes. Tokens and secrets are
 * never logged nor echoed in an answer: errors name what is wrong ("token
 * expired"), never the token.
 */
#ifndef RUNCAST_AUTH_H
#define RUNCAST_AUTH_H

#include "common.h"
#include "http.h"

struct conn;
struct route_params;

struct auth_config {
    int jwt;                     /* 0: --auth none */
    const char *secret;          /* HS256/384/512 key, or NULL / "" */
    const char *public_key_path; /* PEM public key (RS256 or ES256), or NULL / "" */
    const char *user_claim;      /* "sub" */
    const char *audience;        /* NULL / "": not checked */
    const char *issuer;          /* NULL / "": not checked */
    const char *cookie;          /* NULL / "": tokens are not read from cookies */
    uint64_t leeway_ms;          /* allowed clock skew on exp and nbf */
    const char *admin_claim;     /* "NAME=VALUE", "NAME" (claim is true), NULL / "": none */
    const char *allow_origins;   /* comma-separated origins, "*", or NULL / "" */
    /* Host headers served (DNS rebinding): comma-separated names or
     * addresses, a port ignored; "*": any; "": the default list, which is
     * listen_host, admin_listen_host, localhost and every IP address (a
     * rebound page always sends a name). NULL: Host is not checked (unit
     * tests, fuzzers). */
    const char *allow_hosts;
    const char *listen_host;       /* --listen's host, for the default list */
    const char *admin_listen_host; /* --admin-listen's host, for the default list */
};

/* Copies cfg (and the key file's contents). Returns 0, or a negative errno
 * after printing one line to stderr (an unreadable or non-PEM key file).
 * Before auth_init() everything is open. */
int auth_init(const struct auth_config *cfg);
/* Frees what auth_init() holds (the secret is wiped first). */
void auth_shutdown(void);

/* ---- tokens ------------------------------------------------------------- */

/* Why a token was refused (auth.c turns each into the text sent to clients). */
enum auth_error {
    AUTH_ERR_MALFORMED = -1,     /* not three base64url parts of JSON, too long, crit/typ */
    AUTH_ERR_ALG_NONE = -2,      /* "alg": "none" */
    AUTH_ERR_ALG = -3,           /* an algorithm the configured key does not verify */
    AUTH_ERR_SIGNATURE = -4,     /* the signature does not verify */
    AUTH_ERR_EXPIRED = -5,       /* exp + leeway has passed */
    AUTH_ERR_NOT_YET_VALID = -6, /* nbf - leeway is still ahead */
    AUTH_ERR_AUDIENCE = -7,
    AUTH_ERR_ISSUER = -8,
    AUTH_ERR_CLAIMS = -9,        /* no numeric exp, or no string user claim */
};

/* Longest token accepted (bytes). */
#define AUTH_MAX_TOKEN 8192

struct auth_claims {
    char user[129]; /* the user claim; "" when it is not a valid path parameter */
    double exp;     /* seconds since the epoch */
    int admin;      /* the token carries the --admin-claim */
};

/* Verifies token[0..len) at wall-clock time now (seconds): the algorithm
 * against the configured key first (alg none and the other key family are
 * refused before any signature check), then the signature (HS with libjwt,
 * RS/ES with OpenSSL on the key parsed at start-up), then
 * exp, nbf, aud and iss. Returns 0 and fills out, or a negative enum
 * auth_error. Needs --auth jwt (auth_init()); otherwise AUTH_ERR_ALG. */
int auth_verify_token(const char *token, size_t len, double now, struct auth_claims *out);

/* ---- requests ----------------------------------------------------------- */

/* The request callback's data for the admin listener (--admin-listen): it
 * serves only /task-status, /metrics, /healthz and /readyz, without tokens.
 * The main listener passes NULL. Both check the Host header alike. */
struct auth_listener {
    int admin;
};
extern const struct auth_listener auth_admin_listener;

/* What auth_check_request() grants a request it lets through. */
struct auth_grant {
    double expires_at; /* wall seconds at which a stream must end (exp + leeway); 0: never */
    /* The token's user, for a route whose user is named in its body (ADK's
     * /run_sse and /run: the handler checks userId); "" when any will do
     * (no --auth, an admin token, the admin listener). */
    char user[129];
};

/* The gate in front of every handler. route is router_match()'s result
 * (negative and ROUTE_NONE pass through, to get their 400/404). First of
 * all, a request whose Host is not allowed (--allow-host) gets 421
 * host_not_allowed, whatever its route, except /healthz and /readyz (load
 * balancers probe with any Host); a request without Host (HTTP/1.0) is no
 * browser's and is not refused for it. An allowed
 * cross-origin request gets its CORS headers on whatever answers it
 * (conn_set_answer_headers()). Answers the request itself and returns 0
 * for: a state-changing request (not GET, HEAD or OPTIONS) from an origin
 * that is neither allowed nor the request's own (403), a route the admin
 * listener does not serve (404), OPTIONS on a known route (CORS preflight:
 * 204, or 403 for an origin not allowed; without Origin: 204 with Allow),
 * no or a bad token (401 with WWW-Authenticate), another user's session or
 * a non-admin token on an admin route (403). ROUTE_FORWARD (a path the
 * upstream serves, proxy.h) needs any valid token, and one of
 * params->user (or an admin's) when proxy_check_path() found a user in
 * the path; its OPTIONS is forwarded unless it is a CORS preflight and
 * --allow-origin is set. Otherwise returns 1 and fills out. Call from the
 * request callback. */
int auth_check_request(struct conn *c, const struct http_request *req, int route,
                       const struct route_params *params, const void *listener,
                       struct auth_grant *out);
/* 1 when runcast answers CORS itself (--allow-origin is set). */
int auth_answers_cors(void);
/* The monotonic time (time_mono_ms()) at which a stream opened under grant
 * must end, at least 1; 0 when it need not. */
uint64_t auth_grant_deadline_ms(const struct auth_grant *grant);

#endif
