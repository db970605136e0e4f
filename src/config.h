/* config.h: every option is a flag with an environment twin
 * (--run-timeout <-> RUNCAST_RUN_TIMEOUT). Durations are seconds with
 * decimals ("0.25") or with a suffix ("250ms", "5s", "2m", "1h"); sizes are
 * bytes with an optional k/m/g suffix (powers of 1024). Flags win over the
 * environment, which wins over defaults. */
#ifndef RUNCAST_CONFIG_H
#define RUNCAST_CONFIG_H

#include "common.h"

struct config {
    char listen_host[256];
    int listen_port;
    char upstream[1024];       /* "demo" or a base URL */
    int max_concurrent_runs;
    double runs_per_second;    /* 0: unlimited */
    int burst;
    uint64_t queue_timeout_ms;
    uint64_t connect_timeout_ms;
    uint64_t first_event_timeout_ms;
    uint64_t idle_timeout_ms;
    uint64_t run_timeout_ms;
    int upstream_retries;
    uint64_t retry_backoff_ms;
    uint64_t upstream_drain_ms; /* 0: a replaced run's upstream stream closes at once */
    uint64_t session_ttl_ms;
    int history;               /* events kept per session */
    size_t history_bytes;      /* bytes kept per session */
    uint64_t heartbeat_ms;
    size_t subscriber_buffer;  /* bytes queued per subscriber before it is dropped */
    size_t max_body;
    size_t max_header;
    uint64_t delay_alert_ms;
    uint64_t shutdown_grace_ms;
    uint64_t head_timeout_ms;  /* a request's head+body must arrive within this (408) */
    uint64_t keepalive_timeout_ms;
    int max_sessions;
    int max_subscribers;
    uint64_t sse_retry_ms;     /* the "retry:" line sent to browsers */
    uint64_t demo_word_delay_ms; /* the built-in demo agent's pause between words */
    char log_format[16];       /* "text" | "json" */
    char log_level[16];        /* "debug" | "info" | "warn" | "error" */
    /* Access control (auth.h): secrets here are never logged or echoed. */
    char auth[8];              /* "none" | "jwt" */
    char jwt_secret[1024];     /* HS256/384/512 key */
    char jwt_public_key[1024]; /* path of the PEM public key (RS256, ES256) */
    char jwt_user_claim[64];
    char jwt_audience[256];    /* "": not checked */
    char jwt_issuer[256];      /* "": not checked */
    char jwt_cookie[64];       /* "": tokens are not read from cookies */
    uint64_t jwt_leeway_ms;
    char admin_claim[256];     /* "NAME=VALUE", "NAME" (claim is true) or "": no admin tokens */
    char admin_listen_host[256]; /* "": no admin listener */
    int admin_listen_port;
    char allow_origin[4096];   /* comma-separated origins, "*", or "" */
    char allow_host[4096];     /* comma-separated Host names, "*", or "": the default list */
    int max_runs_per_user;     /* 0: unlimited */
    int max_subscribers_per_user; /* 0: unlimited */
    int max_sessions_per_user; /* 0: unlimited */
    char store[256];           /* "memory" or "redis://HOST:PORT[/DB]" */
    char node_id[128];         /* "": made up at start (store_redis_default_node_id) */
    uint64_t node_lease_ms;
};

/* Fills cfg with the defaults of DESIGN.md. */
void config_defaults(struct config *cfg);
/* Applies RUNCAST_* environment variables, then argv flags (argv[0] is the
 * program). Returns 0; 1 when --help or --version was printed (exit 0);
 * -EINVAL after printing a one-line error to stderr (exit 2). */
int config_load(struct config *cfg, int argc, char **argv);

/* Parsers shared with the demo agent's own flags. Each returns 0 or -EINVAL. */
int config_parse_duration_ms(const char *s, uint64_t *out_ms);
int config_parse_size(const char *s, size_t *out);
/* "HOST:PORT", "[::1]:PORT" or ":PORT" (host 127.0.0.1). */
int config_parse_listen(const char *s, char *host, size_t host_size, int *port);

#endif
