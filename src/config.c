/* config.c: runcast's options, defined once in a table.
 *
 * Each row of option_table names one field of struct config: its flag, its
 * kind (which says how text becomes a value and which C type the field has),
 * where it lives (offsetof), its default as text, its bounds as text and its
 * help line. --help, the environment twin (RUNCAST_ + the flag in upper
 * snake case), parsing, bounds checks and the error messages all come from
 * that one table; no option has code of its own.
 *
 * Zero means "off" (or "none") for these durations only: --first-event-timeout,
 * --idle-timeout, --run-timeout (no limit), --heartbeat (no heartbeats),
 * --upstream-drain (close a replaced run's upstream stream at once),
 * --delay-alert (never warn), --retry-backoff (retry at once),
 * --shutdown-grace (cancel at once), --demo-word-delay (no pause) and
 * --jwt-leeway (exp and nbf to the second, at most 1h). Every
 * other duration must be at least 1ms. --runs-per-second 0 means unlimited;
 * --burst 0 means ceil(--runs-per-second), which config_load() resolves so
 * that the limiter always sees a burst >= 1 when rate limiting is on.
 *
 * Access control (--auth and the --jwt-* flags) is checked as a whole by
 * config_load(): a key given with --auth none is an error rather than an open
 * server, and the value of --jwt-secret is never printed, not even when it is
 * refused. --allow-origin and --allow-host may be repeated and take
 * comma-separated lists (their environment twins can only hold a list); a
 * flag replaces what the environment gave. An empty --allow-host means the
 * default list (auth.c builds it from --listen).
 */
#include "config.h"

#include <arpa/inet.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

#define CONFIG_VERSION "0.1.0"
#define CONFIG_ENV_PREFIX "RUNCAST_"

/* Durations above ten years are rejected: they mean "never" in practice, and
 * the cap keeps now_ms + timeout and timeout * 1000000 (nanoseconds) far from
 * overflow in every caller. */
#define CONFIG_DURATION_MAX_MS (10ULL * 365 * 24 * 3600 * 1000)

enum option_kind {
    OPTION_DURATION,  /* uint64_t milliseconds */
    OPTION_SIZE,      /* size_t bytes */
    OPTION_INT,       /* int */
    OPTION_DOUBLE,    /* double */
    OPTION_URL,       /* char[]: "demo" or an http:// or https:// URL */
    OPTION_LISTEN,    /* char[] host at offset, int port at port_offset */
    OPTION_ENUM,      /* char[]: one of the '|'-separated values */
    OPTION_STRING,    /* char[]: any text that fits, "" allowed; values is the --help metavar */
    OPTION_SECRET,    /* char[]: like OPTION_STRING, never echoed in an error */
    OPTION_LISTEN_OPTIONAL, /* like OPTION_LISTEN, or "" for none (host "", port 0) */
    OPTION_ORIGINS,   /* char[]: comma-separated origins; each use appends */
    OPTION_HOSTS,     /* char[]: comma-separated Host names; each use appends */
};

/* At most this many --allow-origin values, and --allow-host values. */
#define CONFIG_MAX_ORIGINS 16
#define CONFIG_MAX_HOSTS 16

struct option {
    const char *name;         /* the flag without "--" */
    enum option_kind kind;
    size_t offset;            /* of the field in struct config */
    size_t size;              /* sizeof that field: bounds strings, checks the kind */
    size_t port_offset;       /* OPTION_LISTEN only */
    const char *default_text;
    const char *min_text;     /* NULL: the kind's own lower bound */
    const char *max_text;     /* NULL: the kind's own upper bound */
    const char *values;       /* OPTION_ENUM: "text|json"; OPTION_STRING: metavar */
    const char *help;
};

#define FIELD(member) offsetof(struct config, member), sizeof(((struct config *)0)->member)

static const struct option option_table[] = {
    { "listen", OPTION_LISTEN, FIELD(listen_host), offsetof(struct config, listen_port),
      "127.0.0.1:8000", NULL, NULL, NULL,
      "address to listen on; port 0 picks a free port" },
    { "upstream", OPTION_URL, FIELD(upstream), 0, "demo", NULL, NULL, NULL,
      "agent service base URL, or \"demo\" for the built-in demo agent" },
    { "max-concurrent-runs", OPTION_INT, FIELD(max_concurrent_runs), 0, "64", "1", NULL, NULL,
      "upstream calls in flight at once; further runs wait in the queue" },
    { "runs-per-second", OPTION_DOUBLE, FIELD(runs_per_second), 0, "0", "0", "1000000", NULL,
      "rate at which runs may start (0: unlimited)" },
    { "burst", OPTION_INT, FIELD(burst), 0, "0", "0", NULL, NULL,
      "runs that may start at once under the rate (0: ceil of --runs-per-second)" },
    { "queue-timeout", OPTION_DURATION, FIELD(queue_timeout_ms), 0, "30s", "1ms", NULL, NULL,
      "longest a run waits in the queue before it fails (rate_limited)" },
    { "connect-timeout", OPTION_DURATION, FIELD(connect_timeout_ms), 0, "10s", "1ms", NULL, NULL,
      "upstream connect timeout" },
    { "first-event-timeout", OPTION_DURATION, FIELD(first_event_timeout_ms), 0, "60s", NULL, NULL,
      NULL, "longest wait for a run's first upstream event (0: off)" },
    { "idle-timeout", OPTION_DURATION, FIELD(idle_timeout_ms), 0, "120s", NULL, NULL, NULL,
      "longest silence between a run's upstream events (0: off)" },
    { "run-timeout", OPTION_DURATION, FIELD(run_timeout_ms), 0, "300s", NULL, NULL, NULL,
      "longest a run may last (0: off)" },
    { "upstream-retries", OPTION_INT, FIELD(upstream_retries), 0, "3", "0", NULL, NULL,
      "retries of a run's upstream request answered 429 or 503" },
    { "retry-backoff", OPTION_DURATION, FIELD(retry_backoff_ms), 0, "0.5s", NULL, NULL, NULL,
      "first retry delay, then 2x, 4x... with jitter (0: at once)" },
    { "upstream-drain", OPTION_DURATION, FIELD(upstream_drain_ms), 0, "0", NULL, NULL, NULL,
      "read a replaced run's upstream stream to its end, at most this (0: off)" },
    { "session-ttl", OPTION_DURATION, FIELD(session_ttl_ms), 0, "30m", "1ms", NULL, NULL,
      "a session with no subscriber, request or run event this long is removed" },
    { "history", OPTION_INT, FIELD(history), 0, "1000", "1", NULL, NULL,
      "events kept per session for replay" },
    { "history-bytes", OPTION_SIZE, FIELD(history_bytes), 0, "4m", "1k", NULL, NULL,
      "bytes of events kept per session for replay" },
    { "heartbeat", OPTION_DURATION, FIELD(heartbeat_ms), 0, "15s", NULL, NULL, NULL,
      "interval of keepalive comments on idle event streams (0: off)" },
    { "subscriber-buffer", OPTION_SIZE, FIELD(subscriber_buffer), 0, "1m", "1k", NULL, NULL,
      "bytes queued for a subscriber before it is dropped as too slow" },
    { "max-body", OPTION_SIZE, FIELD(max_body), 0, "1m", "1", NULL, NULL,
      "largest request body accepted" },
    { "max-header", OPTION_SIZE, FIELD(max_header), 0, "16k", "1k", NULL, NULL,
      "largest request head (request line and headers) accepted" },
    { "delay-alert", OPTION_DURATION, FIELD(delay_alert_ms), 0, "5s", NULL, NULL, NULL,
      "log a warning when a run's start delay exceeds this (0: off)" },
    { "shutdown-grace", OPTION_DURATION, FIELD(shutdown_grace_ms), 0, "10s", NULL, NULL, NULL,
      "on shutdown, how long active runs may go on before they are cancelled" },
    { "head-timeout", OPTION_DURATION, FIELD(head_timeout_ms), 0, "10s", "1ms", NULL, NULL,
      "a request's head and body must arrive within this (408)" },
    { "keepalive-timeout", OPTION_DURATION, FIELD(keepalive_timeout_ms), 0, "75s", "1ms", NULL,
      NULL, "an idle keep-alive connection is closed after this" },
    { "max-sessions", OPTION_INT, FIELD(max_sessions), 0, "100000", "1", NULL, NULL,
      "sessions held at once" },
    { "max-subscribers", OPTION_INT, FIELD(max_subscribers), 0, "200000", "1", NULL, NULL,
      "event-stream subscribers connected at once" },
    { "sse-retry", OPTION_DURATION, FIELD(sse_retry_ms), 0, "3s", "1ms", NULL, NULL,
      "reconnect delay sent to browsers in the stream's retry: line" },
    { "demo-word-delay", OPTION_DURATION, FIELD(demo_word_delay_ms), 0, "50ms", NULL, NULL, NULL,
      "the built-in demo agent's pause between words (0: none)" },
    { "log-format", OPTION_ENUM, FIELD(log_format), 0, "text", NULL, NULL, "text|json",
      "log line format" },
    { "log-level", OPTION_ENUM, FIELD(log_level), 0, "info", NULL, NULL, "debug|info|warn|error",
      "least severe level logged" },
    { "auth", OPTION_ENUM, FIELD(auth), 0, "none", NULL, NULL, "none|jwt",
      "access control: none (open) or jwt (bearer tokens, see README)" },
    { "jwt-secret", OPTION_SECRET, FIELD(jwt_secret), 0, "", NULL, NULL, NULL,
      "HS256/384/512 key, at least 32 bytes (prefer the environment)" },
    { "jwt-public-key", OPTION_STRING, FIELD(jwt_public_key), 0, "", NULL, NULL, "FILE",
      "PEM public key verifying RS256 or ES256 tokens" },
    { "jwt-user-claim", OPTION_STRING, FIELD(jwt_user_claim), 0, "sub", NULL, NULL, "NAME",
      "claim that must equal {user} in a session's path" },
    { "jwt-audience", OPTION_STRING, FIELD(jwt_audience), 0, "", NULL, NULL, "TEXT",
      "when set, the token's aud must be or contain this" },
    { "jwt-issuer", OPTION_STRING, FIELD(jwt_issuer), 0, "", NULL, NULL, "TEXT",
      "when set, the token's iss must equal this" },
    { "jwt-cookie", OPTION_STRING, FIELD(jwt_cookie), 0, "", NULL, NULL, "NAME",
      "also read the token from this cookie" },
    { "jwt-leeway", OPTION_DURATION, FIELD(jwt_leeway_ms), 0, "30s", NULL, "1h", NULL,
      "clock skew allowed on exp and nbf; streams end at exp + this" },
    { "admin-claim", OPTION_STRING, FIELD(admin_claim), 0, "", NULL, NULL, "NAME=VALUE",
      "claim of admin tokens (/task-status, /metrics); \"\": none" },
    { "admin-listen", OPTION_LISTEN_OPTIONAL, FIELD(admin_listen_host),
      offsetof(struct config, admin_listen_port), "", NULL, NULL, NULL,
      "second listener serving /task-status, /metrics, /healthz, /readyz" },
    { "allow-origin", OPTION_ORIGINS, FIELD(allow_origin), 0, "", NULL, NULL, NULL,
      "CORS origin allowed (repeatable, or comma-separated; * alone)" },
    { "allow-host", OPTION_HOSTS, FIELD(allow_host), 0, "", NULL, NULL, NULL,
      "Host served (comma-separated, *: any); \"\": localhost, IPs, --listen host" },
    { "max-runs-per-user", OPTION_INT, FIELD(max_runs_per_user), 0, "0", "0", NULL, NULL,
      "active runs per user; more fail with rate_limited (0: no cap)" },
    { "max-subscribers-per-user", OPTION_INT, FIELD(max_subscribers_per_user), 0, "0", "0", NULL,
      NULL, "event streams per user; more are refused with 429 (0: no cap)" },
    { "max-sessions-per-user", OPTION_INT, FIELD(max_sessions_per_user), 0, "0", "0", NULL, NULL,
      "sessions per user; more are refused with 429 (0: no cap)" },
    { "store", OPTION_STRING, FIELD(store), 0, "memory", NULL, NULL, "memory|redis://HOST:PORT[/DB]",
      "where logs and run state live: this process, or Redis shared by all nodes" },
    { "node-id", OPTION_STRING, FIELD(node_id), 0, "", NULL, NULL, "ID",
      "this node's name in Redis mode (\"\": host name, port and a random suffix)" },
    { "node-lease", OPTION_DURATION, FIELD(node_lease_ms), 0, "10s", "200ms", "1h", NULL,
      "Redis mode: a node silent this long is dead; its runs fail (node_lost)" },
};

/* A parsed value before it is stored; which member is set depends on the kind. */
struct option_value {
    uint64_t ms;
    size_t bytes;
    int i;
    double d;
    struct {
        char host[256];
        int port;
    } listen;
    char word[32];     /* OPTION_ENUM: the canonical spelling */
    const char *text;  /* OPTION_URL, text kinds: borrows the parsed text; OPTION_ENUM: word */
};

/* Parses decimal digits s[0..len) into *out; -EINVAL on anything else or on
 * overflow of uint64_t. */
static int parse_digits(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;

    if (len == 0)
        return -EINVAL;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        unsigned digit = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - digit) / 10)
            return -EINVAL;
        v = v * 10 + digit;
    }
    *out = v;
    return 0;
}

/* Durations: DIGITS[.DIGITS][ms|s|m|h], no suffix meaning seconds. The
 * fraction is exact to nine digits (further digits must be digits but are
 * ignored), and a part below one millisecond is dropped. No sign, no spaces,
 * at most CONFIG_DURATION_MAX_MS. */
int config_parse_duration_ms(const char *s, uint64_t *out_ms)
{
    size_t int_len = strspn(s, "0123456789");
    const char *p = s + int_len;
    uint64_t whole, frac = 0, frac_scale = 1, unit_ms;

    if (parse_digits(s, int_len, &whole) < 0)
        return -EINVAL;
    if (*p == '.') {
        size_t frac_len = strspn(p + 1, "0123456789");
        if (frac_len == 0)
            return -EINVAL;
        for (size_t i = 0; i < frac_len && i < 9; i++) {
            frac = frac * 10 + (uint64_t)(p[1 + i] - '0');
            frac_scale *= 10;
        }
        p += 1 + frac_len;
    }
    if (strcmp(p, "") == 0 || strcmp(p, "s") == 0)
        unit_ms = 1000;
    else if (strcmp(p, "ms") == 0)
        unit_ms = 1;
    else if (strcmp(p, "m") == 0)
        unit_ms = 60 * 1000;
    else if (strcmp(p, "h") == 0)
        unit_ms = 3600 * 1000;
    else
        return -EINVAL;

    /* frac < 10^9 and unit_ms <= 3.6e6, so frac * unit_ms < 3.6e15: no overflow. */
    if (whole > CONFIG_DURATION_MAX_MS / unit_ms)
        return -EINVAL;
    uint64_t ms = whole * unit_ms + frac * unit_ms / frac_scale;
    if (ms > CONFIG_DURATION_MAX_MS)
        return -EINVAL;
    *out_ms = ms;
    return 0;
}

/* Sizes: DIGITS[k|K|m|M|g|G], powers of 1024; no sign, spaces or fractions. */
int config_parse_size(const char *s, size_t *out)
{
    size_t len = strlen(s);
    uint64_t v, unit = 1;

    if (len > 0) {
        switch (s[len - 1]) {
        case 'k': case 'K': unit = 1024; break;
        case 'm': case 'M': unit = 1024 * 1024; break;
        case 'g': case 'G': unit = 1024 * 1024 * 1024; break;
        default: break;
        }
        if (unit != 1)
            len--;
    }
    if (parse_digits(s, len, &v) < 0)
        return -EINVAL;
    if (v > (uint64_t)SIZE_MAX / unit)
        return -EINVAL;
    *out = (size_t)(v * unit);
    return 0;
}

/* A host name or IPv4 address: letters, digits, '.', '-' and '_'. */
static int listen_host_valid(const char *s, size_t len)
{
    if (len == 0)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_'))
            return 0;
    }
    return 1;
}

/* "HOST:PORT", "[IPV6]:PORT" (host stored without brackets) or ":PORT" (host
 * 127.0.0.1). PORT is 0..65535 in decimal, 0 meaning any free port. host and
 * port are written only on success. */
int config_parse_listen(const char *s, char *host, size_t host_size, int *port)
{
    const char *host_start, *host_end, *port_text;
    char ipv6[INET6_ADDRSTRLEN + 1];
    unsigned char addr[sizeof(struct in6_addr)];
    uint64_t port_value;

    if (s[0] == '[') {
        host_start = s + 1;
        host_end = strchr(host_start, ']');
        if (host_end == NULL || host_end[1] != ':')
            return -EINVAL;
        size_t len = (size_t)(host_end - host_start);
        if (len == 0 || len >= sizeof(ipv6))
            return -EINVAL;
        memcpy(ipv6, host_start, len);
        ipv6[len] = '\0';
        if (inet_pton(AF_INET6, ipv6, addr) != 1)
            return -EINVAL;
        port_text = host_end + 2;
    } else {
        host_end = strrchr(s, ':');
        if (host_end == NULL)
            return -EINVAL;
        host_start = s;
        if (host_end == s) {
            host_start = "127.0.0.1";
            host_end = host_start + strlen(host_start);
        } else if (!listen_host_valid(s, (size_t)(host_end - s))) {
            return -EINVAL;  /* also rejects an IPv6 address without brackets */
        }
        port_text = strrchr(s, ':') + 1;
    }

    size_t port_len = strlen(port_text);
    if (port_len > 5 || parse_digits(port_text, port_len, &port_value) < 0 ||
        port_value > 65535)
        return -EINVAL;
    size_t host_len = (size_t)(host_end - host_start);
    if (host_len >= host_size)
        return -EINVAL;
    memcpy(host, host_start, host_len);
    host[host_len] = '\0';
    *port = (int)port_value;
    return 0;
}

/* 1 when s[0..len) is "*" or an origin as browsers send it: http:// or
 * https://, then a host name, IPv4 or [IPv6] address, then an optional
 * :PORT, and nothing else (no path, no trailing slash). */
static int origin_valid(const char *s, size_t len)
{
    size_t i;

    if (len == 1 && s[0] == '*')
        return 1;
    if (len > 7 && memcmp(s, "http://", 7) == 0)
        i = 7;
    else if (len > 8 && memcmp(s, "https://", 8) == 0)
        i = 8;
    else
        return 0;
    size_t host = i;
    if (s[i] == '[') {
        while (i < len && s[i] != ']') {
            char c = s[i];
            if (i > host && !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
                              (c >= 'A' && c <= 'F') || c == ':' || c == '.'))
                return 0;
            i++;
        }
        if (i == len || i == host + 1)
            return 0;
        i++;
    } else {
        while (i < len && s[i] != ':') {
            char c = s[i];
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '-'))
                return 0;
            i++;
        }
        if (i == host)
            return 0;
    }
    if (i == len)
        return 1;
    if (s[i] != ':' || len - i - 1 < 1 || len - i - 1 > 5)
        return 0;
    long port = 0;
    for (i++; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        port = port * 10 + (s[i] - '0');
    }
    return port <= 65535;
}

/* 1 when s[0..len) is "*" or a Host value as --allow-host takes it: a host
 * name ([A-Za-z0-9.-_]), an IPv4 address, [IPv6] or a bare IPv6 address,
 * then an optional :PORT (ignored when requests are checked). */
static int host_valid(const char *s, size_t len)
{
    char ipv6[INET6_ADDRSTRLEN + 1];
    unsigned char addr[sizeof(struct in6_addr)];
    size_t name_len;

    if (len == 1 && s[0] == '*')
        return 1;
    if (len > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', len);
        if (close == NULL)
            return 0;
        name_len = (size_t)(close - s) + 1;
        if (name_len - 2 == 0 || name_len - 2 >= sizeof(ipv6))
            return 0;
        memcpy(ipv6, s + 1, name_len - 2);
        ipv6[name_len - 2] = '\0';
        if (inet_pton(AF_INET6, ipv6, addr) != 1)
            return 0;
    } else if (memchr(s, ':', len) != memrchr(s, ':', len)) { /* a bare IPv6 address */
        if (len >= sizeof(ipv6))
            return 0;
        memcpy(ipv6, s, len);
        ipv6[len] = '\0';
        return inet_pton(AF_INET6, ipv6, addr) == 1;
    } else {
        const char *colon = memchr(s, ':', len);
        name_len = colon ? (size_t)(colon - s) : len;
        if (!listen_host_valid(s, name_len))
            return 0;
    }
    if (name_len == len)
        return 1;
    uint64_t port;
    return s[name_len] == ':' && len - name_len - 1 <= 5 &&
           parse_digits(s + name_len + 1, len - name_len - 1, &port) == 0 && port <= 65535;
}

/* A comma-separated list of 1..max items that valid() accepts, "*" only
 * alone. Returns how many, or -EINVAL. */
static int list_parse(const char *s, int (*valid)(const char *, size_t), int max)
{
    int n = 0, star = 0;

    for (;;) {
        size_t len = strcspn(s, ",");
        if (!valid(s, len) || ++n > max)
            return -EINVAL;
        star |= len == 1 && s[0] == '*';
        if (s[len] == '\0')
            break;
        s += len + 1;
    }
    return star && n > 1 ? -EINVAL : n;
}

/* How many items the list s of a list kind (OPTION_ORIGINS, OPTION_HOSTS)
 * holds, or -EINVAL when it is not a valid list of that kind. */
static int option_list_parse(const struct option *opt, const char *s)
{
    if (opt->kind == OPTION_HOSTS)
        return list_parse(s, host_valid, CONFIG_MAX_HOSTS);
    return list_parse(s, origin_valid, CONFIG_MAX_ORIGINS);
}

static int option_is_list(const struct option *opt)
{
    return opt->kind == OPTION_ORIGINS || opt->kind == OPTION_HOSTS;
}

/* Copies the spelling in opt->values that matches s case-insensitively into
 * storage and returns storage; NULL when none matches. */
static const char *enum_lookup(const struct option *opt, const char *s, char *storage,
                               size_t storage_size)
{
    const char *v = opt->values;

    while (*v) {
        size_t len = strcspn(v, "|");
        if (str_ieq(v, len, s) && len < storage_size) {
            memcpy(storage, v, len);
            storage[len] = '\0';
            return storage;
        }
        v += len;
        if (*v == '|')
            v++;
    }
    return NULL;
}

/* Turns text into a value of opt's kind, without bounds checks. For OPTION_URL
 * out->text borrows s; for OPTION_ENUM it points to out->word. */
static int option_parse_syntax(const struct option *opt, const char *s, struct option_value *out)
{
    uint64_t n;

    switch (opt->kind) {
    case OPTION_DURATION:
        return config_parse_duration_ms(s, &out->ms);
    case OPTION_SIZE:
        return config_parse_size(s, &out->bytes);
    case OPTION_INT:
        if (parse_digits(s, strlen(s), &n) < 0 || n > INT_MAX)
            return -EINVAL;
        out->i = (int)n;
        return 0;
    case OPTION_DOUBLE: {
        /* DIGITS[.DIGITS] only: strtod alone would take "inf", "1e9", " 1" and hex. */
        size_t int_len = strspn(s, "0123456789");
        const char *p = s + int_len;
        if (int_len == 0)
            return -EINVAL;
        if (*p == '.') {
            size_t frac_len = strspn(p + 1, "0123456789");
            if (frac_len == 0)
                return -EINVAL;
            p += 1 + frac_len;
        }
        if (*p != '\0')
            return -EINVAL;
        out->d = strtod(s, NULL);
        return 0;
    }
    case OPTION_URL:
        if (strlen(s) >= opt->size)
            return -EINVAL;
        if (strcmp(s, "demo") != 0 && strncmp(s, "http://", 7) != 0 &&
            strncmp(s, "https://", 8) != 0)
            return -EINVAL;
        if (strcmp(s, "http://") == 0 || strcmp(s, "https://") == 0)
            return -EINVAL;
        out->text = s;
        return 0;
    case OPTION_LISTEN:
        return config_parse_listen(s, out->listen.host, sizeof(out->listen.host),
                                   &out->listen.port);
    case OPTION_ENUM:
        out->text = enum_lookup(opt, s, out->word, sizeof(out->word));
        return out->text && strlen(out->text) < opt->size ? 0 : -EINVAL;
    case OPTION_STRING:
    case OPTION_SECRET:
        out->text = s;
        return strlen(s) < opt->size ? 0 : -EINVAL;
    case OPTION_LISTEN_OPTIONAL:
        if (*s == '\0') {
            out->listen.host[0] = '\0';
            out->listen.port = 0;
            return 0;
        }
        return config_parse_listen(s, out->listen.host, sizeof(out->listen.host),
                                   &out->listen.port);
    case OPTION_ORIGINS:
    case OPTION_HOSTS:
        out->text = s;
        return *s == '\0' || (strlen(s) < opt->size && option_list_parse(opt, s) > 0) ? 0
                                                                                      : -EINVAL;
    }
    return -EINVAL;
}

/* -1, 0 or 1 as a is below, equal to or above b; both of opt's kind. Only the
 * numeric kinds have bounds. */
static int option_compare(const struct option *opt, const struct option_value *a,
                          const struct option_value *b)
{
    switch (opt->kind) {
    case OPTION_DURATION: return (a->ms > b->ms) - (a->ms < b->ms);
    case OPTION_SIZE: return (a->bytes > b->bytes) - (a->bytes < b->bytes);
    case OPTION_INT: return (a->i > b->i) - (a->i < b->i);
    case OPTION_DOUBLE: return (a->d > b->d) - (a->d < b->d);
    default: return 0;
    }
}

/* Parses s as a value of opt, within opt's bounds. 0 or -EINVAL. */
static int option_parse(const struct option *opt, const char *s, struct option_value *out)
{
    struct option_value bound;

    if (option_parse_syntax(opt, s, out) < 0)
        return -EINVAL;
    if (opt->min_text) {
        if (option_parse_syntax(opt, opt->min_text, &bound) < 0)
            abort();  /* a broken table: the unit tests catch this */
        if (option_compare(opt, out, &bound) < 0)
            return -EINVAL;
    }
    if (opt->max_text) {
        if (option_parse_syntax(opt, opt->max_text, &bound) < 0)
            abort();
        if (option_compare(opt, out, &bound) > 0)
            return -EINVAL;
    }
    return 0;
}

/* Writes a value parsed by option_parse() into its field of cfg. */
static void option_store(const struct option *opt, const struct option_value *v,
                         struct config *cfg)
{
    char *field = (char *)cfg + opt->offset;

    switch (opt->kind) {
    case OPTION_DURATION: memcpy(field, &v->ms, sizeof(v->ms)); break;
    case OPTION_SIZE: memcpy(field, &v->bytes, sizeof(v->bytes)); break;
    case OPTION_INT: memcpy(field, &v->i, sizeof(v->i)); break;
    case OPTION_DOUBLE: memcpy(field, &v->d, sizeof(v->d)); break;
    case OPTION_URL:
    case OPTION_ENUM:
    case OPTION_STRING:
    case OPTION_SECRET:
        str_copy(field, opt->size, v->text);
        break;
    case OPTION_LISTEN:
    case OPTION_LISTEN_OPTIONAL:
        str_copy(field, opt->size, v->listen.host);
        memcpy((char *)cfg + opt->port_offset, &v->listen.port, sizeof(v->listen.port));
        break;
    case OPTION_ORIGINS: /* appends; option_apply() checked that it fits */
    case OPTION_HOSTS:
        if (*field != '\0' && *v->text != '\0')
            strcat(field, ",");
        strcat(field, v->text);
        break;
    }
}

/* The placeholder for opt's value in --help. */
static const char *option_metavar(const struct option *opt)
{
    switch (opt->kind) {
    case OPTION_DURATION: return "D";
    case OPTION_SIZE: return "S";
    case OPTION_INT: return "N";
    case OPTION_DOUBLE: return "R";
    case OPTION_URL: return "URL";
    case OPTION_LISTEN: return "HOST:PORT";
    case OPTION_ENUM: return opt->values;
    case OPTION_STRING: return opt->values ? opt->values : "TEXT";
    case OPTION_SECRET: return "SECRET";
    case OPTION_LISTEN_OPTIONAL: return "HOST:PORT";
    case OPTION_ORIGINS: return "ORIGIN";
    case OPTION_HOSTS: return "HOST";
    }
    return "VALUE";
}

/* Writes "RUNCAST_RUN_TIMEOUT" for "run-timeout" into out (NUL-terminated,
 * truncated to out_size). */
static void option_env_name(const struct option *opt, char *out, size_t out_size)
{
    size_t n = (size_t)snprintf(out, out_size, "%s%s", CONFIG_ENV_PREFIX, opt->name);
    if (n >= out_size)
        n = out_size - 1;
    for (size_t i = 0; i < n; i++) {
        if (out[i] == '-')
            out[i] = '_';
        else if (out[i] >= 'a' && out[i] <= 'z')
            out[i] = (char)(out[i] - 'a' + 'A');
    }
}

/* Prints "runcast: invalid value "V" for WHERE (expected ...)" on one line to
 * stderr; control characters of V are shown as '?' so the line stays one line. */
static void option_report_invalid(const struct option *opt, const char *value,
                                  const char *where)
{
    struct buf b = {0};

    if (opt->kind == OPTION_SECRET) { /* never echoed, not even in part */
        fprintf(stderr, "runcast: invalid value for %s (expected at most %zu bytes)\n", where,
                opt->size - 1);
        return;
    }
    buf_append_str(&b, "runcast: invalid value \"");
    for (const char *p = value; *p; p++) {
        if (p - value >= 200) {
            buf_append_str(&b, "...");
            break;
        }
        char c = ((unsigned char)*p < 0x20 || *p == 0x7f) ? '?' : *p;
        buf_append(&b, &c, 1);
    }
    buf_printf(&b, "\" for %s (expected ", where);
    switch (opt->kind) {
    case OPTION_DURATION: buf_append_str(&b, "a duration like 0.25, 250ms, 5s, 2m"); break;
    case OPTION_SIZE: buf_append_str(&b, "a size like 1024, 64k, 4m"); break;
    case OPTION_INT: buf_append_str(&b, "an integer"); break;
    case OPTION_DOUBLE: buf_append_str(&b, "a number like 0.5 or 20"); break;
    case OPTION_URL:
        buf_printf(&b, "\"demo\" or an http:// or https:// URL shorter than %zu bytes",
                   opt->size);
        break;
    case OPTION_LISTEN:
        buf_append_str(&b, "HOST:PORT, [IPV6]:PORT or :PORT with a port from 0 to 65535");
        break;
    case OPTION_ENUM: buf_printf(&b, "one of %s", opt->values); break;
    case OPTION_STRING:
    case OPTION_SECRET: buf_printf(&b, "text shorter than %zu bytes", opt->size); break;
    case OPTION_LISTEN_OPTIONAL:
        buf_append_str(&b, "\"\", HOST:PORT, [IPV6]:PORT or :PORT with a port from 0 to 65535");
        break;
    case OPTION_ORIGINS:
        buf_printf(&b, "up to %d comma-separated origins like https://app.example:8443, "
                   "or * alone", CONFIG_MAX_ORIGINS);
        break;
    case OPTION_HOSTS:
        buf_printf(&b, "up to %d comma-separated host names or addresses like app.example, "
                   "127.0.0.1:8000, [::1], or * alone", CONFIG_MAX_HOSTS);
        break;
    }
    if (opt->min_text && opt->max_text)
        buf_printf(&b, ", from %s to %s", opt->min_text, opt->max_text);
    else if (opt->min_text)
        buf_printf(&b, ", at least %s", opt->min_text);
    else if (opt->max_text)
        buf_printf(&b, ", at most %s", opt->max_text);
    buf_append_str(&b, ")\n");
    fputs(b.data, stderr);
    buf_free(&b);
}

/* Parses value for opt and stores it in cfg; on failure prints the one-line
 * error naming where (the flag or the variable) and returns -EINVAL. */
static int option_apply(const struct option *opt, const char *value, const char *where,
                        struct config *cfg)
{
    struct option_value v;

    if (option_parse(opt, value, &v) < 0) {
        option_report_invalid(opt, value, where);
        return -EINVAL;
    }
    if (option_is_list(opt)) {
        const char *field = (const char *)cfg + opt->offset;
        const char *what = opt->kind == OPTION_HOSTS ? "host" : "origin";
        int max = opt->kind == OPTION_HOSTS ? CONFIG_MAX_HOSTS : CONFIG_MAX_ORIGINS;
        size_t len = strlen(field);
        if ((len ? len + 1 : 0) + strlen(value) >= opt->size ||
            (len && *value && option_list_parse(opt, field) + option_list_parse(opt, value) > max)) {
            fprintf(stderr, "runcast: too many %ss for %s (at most %d)\n", what, where, max);
            return -EINVAL;
        }
        if (len && *value && (strcmp(field, "*") == 0 || strcmp(value, "*") == 0)) {
            fprintf(stderr, "runcast: %s: * must be the only %s\n", where, what);
            return -EINVAL;
        }
    }
    option_store(opt, &v, cfg);
    return 0;
}

/* The table row for a flag name of name_len bytes (without "--"), or NULL. */
static const struct option *option_find(const char *name, size_t name_len)
{
    for (size_t i = 0; i < RC_ARRAY_SIZE(option_table); i++) {
        const struct option *opt = &option_table[i];
        if (strlen(opt->name) == name_len && memcmp(opt->name, name, name_len) == 0)
            return opt;
    }
    return NULL;
}

void config_defaults(struct config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < RC_ARRAY_SIZE(option_table); i++) {
        const struct option *opt = &option_table[i];
        struct option_value v;
        if (option_parse(opt, opt->default_text, &v) < 0)
            abort();  /* a broken table: the unit tests catch this */
        option_store(opt, &v, cfg);
    }
}

static void config_print_help(FILE *out)
{
    char env[128];

    fputs("Usage: runcast [OPTION]...\n"
          "       runcast demo-agent [--listen HOST:PORT] [--word-delay D]\n"
          "\n"
          "Runs agent turns in the background and streams their events to every\n"
          "subscribed browser, with replay.\n"
          "\n"
          "Every option also reads an environment variable; a flag wins over the\n"
          "environment, which wins over the default. Write --flag VALUE or --flag=VALUE.\n"
          "Durations (D): seconds with decimals (0.25) or 250ms, 5s, 2m, 1h.\n"
          "Sizes (S): bytes (1024) or 64k, 4m, 1g (powers of 1024).\n"
          "\n"
          "Options:\n", out);
    for (size_t i = 0; i < RC_ARRAY_SIZE(option_table); i++) {
        const struct option *opt = &option_table[i];
        option_env_name(opt, env, sizeof(env));
        fprintf(out, "  --%s %s\n      %s\n      env %s, default %s\n", opt->name,
                option_metavar(opt), opt->help, env, opt->default_text);
    }
    fputs("  -h, --help\n      print this help and exit\n"
          "  --version\n      print the version and exit\n", out);
}

/* argv[i] is "--NAME VALUE" or "--NAME=VALUE" for a known option: sets *opt
 * and *value (NULL when it is missing) and returns how many argv entries the
 * option used. 0 for anything else (help, version, unknown, positional). */
static int config_split_flag(int argc, char **argv, int i, const struct option **opt,
                             const char **value)
{
    const char *arg = argv[i];

    if (strncmp(arg, "--", 2) != 0)
        return 0;
    const char *name = arg + 2;
    const char *eq = strchr(name, '=');
    *opt = option_find(name, eq ? (size_t)(eq - name) : strlen(name));
    if (*opt == NULL)
        return 0;
    if (eq) {
        *value = eq + 1;
        return 1;
    }
    *value = i + 1 < argc ? argv[i + 1] : NULL;
    return *value ? 2 : 1;
}

/* 1 when argv asks for --help or --version (it is then printed), else 0.
 * Looked at before anything else, so that help works whatever the
 * environment holds; option values are skipped ("--upstream --help" is not
 * a request for help). */
static int config_handle_info_flags(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const struct option *opt;
        const char *value;
        int used = config_split_flag(argc, argv, i, &opt, &value);
        if (used > 0) {
            i += used - 1;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            config_print_help(stdout);
            return 1;
        } else if (strcmp(argv[i], "--version") == 0) {
            fputs("runcast " CONFIG_VERSION "\n", stdout);
            return 1;
        }
    }
    return 0;
}

static int config_apply_env(struct config *cfg)
{
    char env[128];

    for (size_t i = 0; i < RC_ARRAY_SIZE(option_table); i++) {
        const struct option *opt = &option_table[i];
        option_env_name(opt, env, sizeof(env));
        const char *value = getenv(env);
        if (value && option_apply(opt, value, env, cfg) < 0)
            return -EINVAL;
    }
    return 0;
}

static int config_apply_argv(struct config *cfg, int argc, char **argv)
{
    char where[96];
    unsigned char seen[RC_ARRAY_SIZE(option_table)] = {0};

    for (int i = 1; i < argc; i++) {
        const struct option *opt;
        const char *value;
        int used = config_split_flag(argc, argv, i, &opt, &value);
        if (used == 0) {
            if (argv[i][0] == '-' && argv[i][1] != '\0') {
                fprintf(stderr, "runcast: unknown option %.*s\n",
                        (int)strcspn(argv[i], "="), argv[i]);
            } else {
                fprintf(stderr, "runcast: unexpected argument \"%s\" (see --help)\n", argv[i]);
            }
            return -EINVAL;
        }
        if (value == NULL) {
            fprintf(stderr, "runcast: missing value for --%s\n", opt->name);
            return -EINVAL;
        }
        snprintf(where, sizeof(where), "--%s", opt->name);
        /* A repeatable flag replaces the environment's list, then appends. */
        if (option_is_list(opt) && !seen[opt - option_table])
            ((char *)cfg + opt->offset)[0] = '\0';
        seen[opt - option_table] = 1;
        if (option_apply(opt, value, where, cfg) < 0)
            return -EINVAL;
        i += used - 1;
    }
    return 0;
}

/* 1 when s is a claim or cookie name: 1+ characters of [A-Za-z0-9_.:-]. */
static int name_valid(const char *s, size_t len)
{
    if (len == 0)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == ':' || c == '-'))
            return 0;
    }
    return 1;
}

/* The access-control options as a whole. Prints one line and returns
 * -EINVAL when they do not make sense together; never prints the secret. */
static int config_check_auth(const struct config *cfg)
{
    const char *err = NULL;
    int jwt = strcmp(cfg->auth, "jwt") == 0;
    int has_secret = cfg->jwt_secret[0] != '\0', has_key = cfg->jwt_public_key[0] != '\0';

    if (!jwt && (has_secret || has_key))
        err = "a JWT key is set but --auth is none (add --auth jwt, or drop the key)";
    else if (jwt && has_secret == has_key)
        err = "--auth jwt needs exactly one of --jwt-secret and --jwt-public-key";
    else if (jwt && has_secret && strlen(cfg->jwt_secret) < 32)
        err = "--jwt-secret must be at least 32 bytes";
    else if (!name_valid(cfg->jwt_user_claim, strlen(cfg->jwt_user_claim)))
        err = "--jwt-user-claim must be a claim name ([A-Za-z0-9_.:-])";
    else if (cfg->jwt_cookie[0] && !name_valid(cfg->jwt_cookie, strlen(cfg->jwt_cookie)))
        err = "--jwt-cookie must be a cookie name ([A-Za-z0-9_.:-])";
    else if (cfg->admin_claim[0] &&
             !name_valid(cfg->admin_claim, strcspn(cfg->admin_claim, "=")))
        err = "--admin-claim must be NAME=VALUE or NAME";
    if (err) {
        fprintf(stderr, "runcast: %s\n", err);
        return -EINVAL;
    }
    return 0;
}

/* Fields not named by the environment or argv keep the values cfg already
 * has (normally config_defaults()'). A --burst left at 0 becomes
 * ceil(--runs-per-second) when rate limiting is on. */
int config_load(struct config *cfg, int argc, char **argv)
{
    if (config_handle_info_flags(argc, argv))
        return 1;
    if (config_apply_env(cfg) < 0 || config_apply_argv(cfg, argc, argv) < 0)
        return -EINVAL;
    if (config_check_auth(cfg) < 0)
        return -EINVAL;
    if (cfg->runs_per_second > 0 && cfg->burst == 0) {
        cfg->burst = (int)cfg->runs_per_second;
        if ((double)cfg->burst < cfg->runs_per_second)
            cfg->burst++;
    }
    return 0;
}
