/* test_config.c: defaults, value syntaxes, precedence and error paths of
 * config.c. Includes the .c to reach its option table. */
#include "../../src/config.c"

#include <fcntl.h>
#include <unistd.h>

#include "test.h"

/* Unsets every RUNCAST_* variable the table knows, so tests start clean. */
static void clear_env(void)
{
    char env[128];
    for (size_t i = 0; i < RC_ARRAY_SIZE(option_table); i++) {
        option_env_name(&option_table[i], env, sizeof(env));
        unsetenv(env);
    }
}

/* Runs config_load(cfg, argv) from defaults with fd (1 or 2) redirected into a
 * temporary file whose text ends up in out (NUL-terminated). Returns the
 * result of config_load. */
static int load_capturing(struct config *cfg, char **argv, int fd, char *out, size_t out_size)
{
    int argc = 0;
    while (argv[argc])
        argc++;
    config_defaults(cfg);

    FILE *tmp = tmpfile();
    fflush(stdout);
    fflush(stderr);
    int saved = dup(fd);
    dup2(fileno(tmp), fd);
    int rc = config_load(cfg, argc, argv);
    fflush(stdout);
    fflush(stderr);
    dup2(saved, fd);
    close(saved);

    rewind(tmp);
    size_t n = fread(out, 1, out_size - 1, tmp);
    out[n] = '\0';
    fclose(tmp);
    return rc;
}

/* config_load from defaults with stderr captured (and discarded). */
static int load(struct config *cfg, char **argv)
{
    char err[1024];
    return load_capturing(cfg, argv, 2, err, sizeof(err));
}

static void defaults_match_contract(void)
{
    struct config cfg;
    config_defaults(&cfg);
    CHECK_STREQ(cfg.listen_host, "127.0.0.1");
    CHECK_EQ(cfg.listen_port, 8000);
    CHECK_STREQ(cfg.upstream, "demo");
    CHECK_EQ(cfg.max_concurrent_runs, 64);
    CHECK(cfg.runs_per_second == 0.0);
    CHECK_EQ(cfg.burst, 0);
    CHECK_EQ(cfg.queue_timeout_ms, 30000);
    CHECK_EQ(cfg.connect_timeout_ms, 10000);
    CHECK_EQ(cfg.first_event_timeout_ms, 60000);
    CHECK_EQ(cfg.idle_timeout_ms, 120000);
    CHECK_EQ(cfg.run_timeout_ms, 300000);
    CHECK_EQ(cfg.upstream_retries, 3);
    CHECK_EQ(cfg.retry_backoff_ms, 500);
    CHECK_EQ(cfg.session_ttl_ms, 30 * 60 * 1000);
    CHECK_EQ(cfg.history, 1000);
    CHECK_EQ(cfg.history_bytes, 4 * 1024 * 1024);
    CHECK_EQ(cfg.heartbeat_ms, 15000);
    CHECK_EQ(cfg.subscriber_buffer, 1024 * 1024);
    CHECK_EQ(cfg.max_body, 1024 * 1024);
    CHECK_EQ(cfg.max_header, 16 * 1024);
    CHECK_EQ(cfg.delay_alert_ms, 5000);
    CHECK_EQ(cfg.shutdown_grace_ms, 10000);
    CHECK_EQ(cfg.head_timeout_ms, 10000);
    CHECK_EQ(cfg.keepalive_timeout_ms, 75000);
    CHECK_EQ(cfg.max_sessions, 100000);
    CHECK_EQ(cfg.max_subscribers, 200000);
    CHECK_EQ(cfg.sse_retry_ms, 3000);
    CHECK_EQ(cfg.demo_word_delay_ms, 50);
    CHECK_STREQ(cfg.log_format, "text");
    CHECK_STREQ(cfg.log_level, "info");
    CHECK_STREQ(cfg.allow_host, ""); /* the default list, built by auth.c */
    CHECK_EQ(cfg.max_sessions_per_user, 0);
}

static void load_without_env_or_flags_keeps_defaults(void)
{
    struct config cfg, defaults;
    char *argv[] = { "runcast", NULL };
    clear_env();
    config_defaults(&defaults);
    CHECK_EQ(load(&cfg, argv), 0);
    CHECK(memcmp(&cfg, &defaults, sizeof(cfg)) == 0);
}

/* Every row's field size matches the C type its kind writes, its default
 * and bounds parse, and the struct is covered: 45 options for 47 fields
 * (--listen and --admin-listen fill two each). */
static void option_table_is_consistent(void)
{
    CHECK_EQ(RC_ARRAY_SIZE(option_table), 48);
    for (size_t i = 0; i < RC_ARRAY_SIZE(option_table); i++) {
        const struct option *opt = &option_table[i];
        struct option_value v;
        size_t want = 0;
        switch (opt->kind) {
        case OPTION_DURATION: want = sizeof(uint64_t); break;
        case OPTION_SIZE: want = sizeof(size_t); break;
        case OPTION_INT: want = sizeof(int); break;
        case OPTION_DOUBLE: want = sizeof(double); break;
        default: want = opt->size; break;
        }
        if (opt->size != want || option_parse(opt, opt->default_text, &v) != 0)
            fprintf(stderr, "  bad row --%s\n", opt->name);
        CHECK_EQ(opt->size, want);
        CHECK_EQ(option_parse(opt, opt->default_text, &v), 0);
        if (opt->min_text)
            CHECK_EQ(option_parse_syntax(opt, opt->min_text, &v), 0);
        if (opt->max_text)
            CHECK_EQ(option_parse_syntax(opt, opt->max_text, &v), 0);
        for (size_t j = 0; j < i; j++)
            CHECK(strcmp(option_table[j].name, opt->name) != 0);
    }
}

static void env_twin_is_upper_snake_case(void)
{
    char env[128];
    option_env_name(option_find("run-timeout", 11), env, sizeof(env));
    CHECK_STREQ(env, "RUNCAST_RUN_TIMEOUT");
    option_env_name(option_find("demo-word-delay", 15), env, sizeof(env));
    CHECK_STREQ(env, "RUNCAST_DEMO_WORD_DELAY");
    option_env_name(option_find("listen", 6), env, sizeof(env));
    CHECK_STREQ(env, "RUNCAST_LISTEN");
}

static uint64_t duration_ok(const char *s)
{
    uint64_t ms = 12345;
    int rc = config_parse_duration_ms(s, &ms);
    if (rc != 0)
        fprintf(stderr, "  duration \"%s\" rejected\n", s);
    return rc == 0 ? ms : UINT64_MAX;
}

static void duration_accepts_seconds_decimals_and_suffixes(void)
{
    CHECK_EQ(duration_ok("0.25"), 250);
    CHECK_EQ(duration_ok("10"), 10000);
    CHECK_EQ(duration_ok("0"), 0);
    CHECK_EQ(duration_ok("250ms"), 250);
    CHECK_EQ(duration_ok("5s"), 5000);
    CHECK_EQ(duration_ok("1.5s"), 1500);
    CHECK_EQ(duration_ok("2m"), 120000);
    CHECK_EQ(duration_ok("0.5m"), 30000);
    CHECK_EQ(duration_ok("1h"), 3600000);
    CHECK_EQ(duration_ok("0ms"), 0);
    CHECK_EQ(duration_ok("1.0009s"), 1000);        /* below a millisecond: dropped */
    CHECK_EQ(duration_ok("0.1234567899s"), 123);   /* digits past nine ignored */
    CHECK_EQ(duration_ok("87600h"), 315360000000ULL); /* the ten-year cap itself */
}

static void duration_rejects_everything_else(void)
{
    static const char *bad[] = {
        "", "-1", "-1s", "+1", "5 s", " 5s", "5s ", "abc", "5x", "5sec", "5S", "1e3",
        ".5", "5.", "1.s", "ms", "s", "inf", "nan", "0x10", "1.5.5", "1,5",
        "99999999999999999999s",   /* overflows the digits */
        "87600.001h", "5256001m",  /* beyond the ten-year cap */
    };
    for (size_t i = 0; i < RC_ARRAY_SIZE(bad); i++) {
        uint64_t ms = 777;
        int rc = config_parse_duration_ms(bad[i], &ms);
        if (rc != -EINVAL)
            fprintf(stderr, "  duration \"%s\" accepted\n", bad[i]);
        CHECK_EQ(rc, -EINVAL);
        CHECK_EQ(ms, 777);
    }
}

static size_t size_ok(const char *s)
{
    size_t n = 12345;
    int rc = config_parse_size(s, &n);
    if (rc != 0)
        fprintf(stderr, "  size \"%s\" rejected\n", s);
    return rc == 0 ? n : SIZE_MAX;
}

static void size_accepts_bytes_and_binary_suffixes(void)
{
    CHECK_EQ(size_ok("1024"), 1024);
    CHECK_EQ(size_ok("0"), 0);
    CHECK_EQ(size_ok("64k"), 65536);
    CHECK_EQ(size_ok("64K"), 65536);
    CHECK_EQ(size_ok("4m"), 4194304);
    CHECK_EQ(size_ok("4M"), 4194304);
    CHECK_EQ(size_ok("1g"), 1073741824);
    CHECK_EQ(size_ok("2G"), 2147483648LL);
}

static void size_rejects_everything_else(void)
{
    static const char *bad[] = {
        "", "-1", "+1", "1.5m", "1kb", "1KB", "k", "1 k", " 1", "1 ", "1t", "1b", "abc",
        "0x10", "1e3", "18446744073709551616", "17179869184g",
    };
    for (size_t i = 0; i < RC_ARRAY_SIZE(bad); i++) {
        size_t n = 777;
        int rc = config_parse_size(bad[i], &n);
        if (rc != -EINVAL)
            fprintf(stderr, "  size \"%s\" accepted\n", bad[i]);
        CHECK_EQ(rc, -EINVAL);
        CHECK_EQ(n, 777);
    }
}

static void listen_accepts_ipv4_ipv6_hostnames_and_bare_port(void)
{
    char host[256];
    int port = -1;

    CHECK_EQ(config_parse_listen("127.0.0.1:8000", host, sizeof(host), &port), 0);
    CHECK_STREQ(host, "127.0.0.1");
    CHECK_EQ(port, 8000);
    CHECK_EQ(config_parse_listen("[::1]:8001", host, sizeof(host), &port), 0);
    CHECK_STREQ(host, "::1");
    CHECK_EQ(port, 8001);
    CHECK_EQ(config_parse_listen(":8002", host, sizeof(host), &port), 0);
    CHECK_STREQ(host, "127.0.0.1");
    CHECK_EQ(port, 8002);
    CHECK_EQ(config_parse_listen("localhost:8003", host, sizeof(host), &port), 0);
    CHECK_STREQ(host, "localhost");
    CHECK_EQ(port, 8003);
    CHECK_EQ(config_parse_listen("0.0.0.0:0", host, sizeof(host), &port), 0);
    CHECK_STREQ(host, "0.0.0.0");
    CHECK_EQ(port, 0);
    CHECK_EQ(config_parse_listen("[::]:65535", host, sizeof(host), &port), 0);
    CHECK_STREQ(host, "::");
    CHECK_EQ(port, 65535);
}

static void listen_rejects_malformed_addresses_and_ports(void)
{
    static const char *bad[] = {
        "", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:+1",
        "127.0.0.1:80a", "127.0.0.1: 80", ":", ":123456", "::1:8000", "[::1]8000",
        "[::1]", "[::1]:", "[]:80", "[zz]:80", "[::1:80", "a b:80", "host/x:80",
    };
    for (size_t i = 0; i < RC_ARRAY_SIZE(bad); i++) {
        char host[256] = "unchanged";
        int port = -1;
        int rc = config_parse_listen(bad[i], host, sizeof(host), &port);
        if (rc != -EINVAL)
            fprintf(stderr, "  listen \"%s\" accepted\n", bad[i]);
        CHECK_EQ(rc, -EINVAL);
        CHECK_STREQ(host, "unchanged");
        CHECK_EQ(port, -1);
    }
}

static void listen_rejects_host_longer_than_the_buffer(void)
{
    char host[6] = "x";
    int port = -1;
    CHECK_EQ(config_parse_listen("abcde:80", host, sizeof(host), &port), 0);
    CHECK_STREQ(host, "abcde");
    CHECK_EQ(config_parse_listen("abcdef:80", host, sizeof(host), &port), -EINVAL);
    CHECK_STREQ(host, "abcde");
}

static void flag_beats_env_and_env_beats_default(void)
{
    struct config cfg;
    char *argv[] = { "runcast", "--run-timeout", "9s", NULL };
    clear_env();
    setenv("RUNCAST_RUN_TIMEOUT", "7s", 1);
    setenv("RUNCAST_HISTORY", "5", 1);
    setenv("RUNCAST_LISTEN", ":9001", 1);
    CHECK_EQ(load(&cfg, argv), 0);
    CHECK_EQ(cfg.run_timeout_ms, 9000);  /* flag */
    CHECK_EQ(cfg.history, 5);            /* environment */
    CHECK_STREQ(cfg.listen_host, "127.0.0.1");
    CHECK_EQ(cfg.listen_port, 9001);
    CHECK_EQ(cfg.idle_timeout_ms, 120000);  /* default */
    clear_env();
}

static void flag_equals_value_form_is_accepted(void)
{
    struct config cfg;
    char *argv[] = {
        "runcast", "--listen=[::1]:9000", "--log-level=DEBUG", "--log-format", "json",
        "--upstream=http://127.0.0.1:8001/x?a=b", "--history-bytes=64k", "--heartbeat=0",
        "--retry-backoff", "0.25", NULL,
    };
    clear_env();
    CHECK_EQ(load(&cfg, argv), 0);
    CHECK_STREQ(cfg.listen_host, "::1");
    CHECK_EQ(cfg.listen_port, 9000);
    CHECK_STREQ(cfg.log_level, "debug");  /* stored in its canonical spelling */
    CHECK_STREQ(cfg.log_format, "json");
    CHECK_STREQ(cfg.upstream, "http://127.0.0.1:8001/x?a=b");  /* only the first '=' splits */
    CHECK_EQ(cfg.history_bytes, 65536);
    CHECK_EQ(cfg.heartbeat_ms, 0);
    CHECK_EQ(cfg.retry_backoff_ms, 250);
}

static void repeated_flag_last_one_wins(void)
{
    struct config cfg;
    char *argv[] = { "runcast", "--history", "5", "--history=6", NULL };
    clear_env();
    CHECK_EQ(load(&cfg, argv), 0);
    CHECK_EQ(cfg.history, 6);
}

static void bad_flag_value_prints_one_line_and_returns_einval(void)
{
    struct config cfg;
    char err[1024];
    char *argv[] = { "runcast", "--run-timeout", "abc", NULL };
    clear_env();
    CHECK_EQ(load_capturing(&cfg, argv, 2, err, sizeof(err)), -EINVAL);
    CHECK_STREQ(err, "runcast: invalid value \"abc\" for --run-timeout "
                     "(expected a duration like 0.25, 250ms, 5s, 2m)\n");
}

static void bad_env_value_names_the_variable(void)
{
    struct config cfg;
    char err[1024];
    char *argv[] = { "runcast", NULL };
    clear_env();
    setenv("RUNCAST_RUN_TIMEOUT", "abc", 1);
    CHECK_EQ(load_capturing(&cfg, argv, 2, err, sizeof(err)), -EINVAL);
    CHECK_STREQ(err, "runcast: invalid value \"abc\" for RUNCAST_RUN_TIMEOUT "
                     "(expected a duration like 0.25, 250ms, 5s, 2m)\n");
    setenv("RUNCAST_RUN_TIMEOUT", "", 1);
    CHECK_EQ(load(&cfg, argv), -EINVAL);
    clear_env();
}

static void unknown_flag_returns_einval(void)
{
    struct config cfg;
    char err[1024];
    char *argv[] = { "runcast", "--foo", NULL };
    char *argv_eq[] = { "runcast", "--foo=1", NULL };
    char *argv_short[] = { "runcast", "-x", NULL };
    clear_env();
    CHECK_EQ(load_capturing(&cfg, argv, 2, err, sizeof(err)), -EINVAL);
    CHECK_STREQ(err, "runcast: unknown option --foo\n");
    CHECK_EQ(load_capturing(&cfg, argv_eq, 2, err, sizeof(err)), -EINVAL);
    CHECK_STREQ(err, "runcast: unknown option --foo\n");
    CHECK_EQ(load_capturing(&cfg, argv_short, 2, err, sizeof(err)), -EINVAL);
    CHECK_STREQ(err, "runcast: unknown option -x\n");
}

static void missing_value_returns_einval(void)
{
    struct config cfg;
    char err[1024];
    char *argv[] = { "runcast", "--history", NULL };
    clear_env();
    CHECK_EQ(load_capturing(&cfg, argv, 2, err, sizeof(err)), -EINVAL);
    CHECK_STREQ(err, "runcast: missing value for --history\n");
}

static void positional_argument_returns_einval(void)
{
    struct config cfg;
    char err[1024];
    char *argv[] = { "runcast", "serve", NULL };
    clear_env();
    CHECK_EQ(load_capturing(&cfg, argv, 2, err, sizeof(err)), -EINVAL);
    CHECK_STREQ(err, "runcast: unexpected argument \"serve\" (see --help)\n");
}

static void values_outside_bounds_are_rejected(void)
{
    struct config cfg;
    char err[1024];
    char *below_int[] = { "runcast", "--max-concurrent-runs", "0", NULL };
    char *below_size[] = { "runcast", "--history-bytes", "1023", NULL };
    char *zero_head[] = { "runcast", "--head-timeout", "0", NULL };
    char *too_big_int[] = { "runcast", "--history", "2147483648", NULL };
    char *negative_int[] = { "runcast", "--upstream-retries", "-1", NULL };
    char *rate_too_high[] = { "runcast", "--runs-per-second", "1000000.5", NULL };
    char *bad_level[] = { "runcast", "--log-level", "verbose", NULL };
    clear_env();

    CHECK_EQ(load_capturing(&cfg, below_int, 2, err, sizeof(err)), -EINVAL);
    CHECK_STREQ(err, "runcast: invalid value \"0\" for --max-concurrent-runs "
                     "(expected an integer, at least 1)\n");
    CHECK_EQ(load_capturing(&cfg, below_size, 2, err, sizeof(err)), -EINVAL);
    CHECK_STREQ(err, "runcast: invalid value \"1023\" for --history-bytes "
                     "(expected a size like 1024, 64k, 4m, at least 1k)\n");
    CHECK_EQ(load_capturing(&cfg, zero_head, 2, err, sizeof(err)), -EINVAL);
    CHECK_STREQ(err, "runcast: invalid value \"0\" for --head-timeout "
                     "(expected a duration like 0.25, 250ms, 5s, 2m, at least 1ms)\n");
    CHECK_EQ(load(&cfg, too_big_int), -EINVAL);
    CHECK_EQ(load(&cfg, negative_int), -EINVAL);
    CHECK_EQ(load_capturing(&cfg, rate_too_high, 2, err, sizeof(err)), -EINVAL);
    CHECK_STREQ(err, "runcast: invalid value \"1000000.5\" for --runs-per-second "
                     "(expected a number like 0.5 or 20, from 0 to 1000000)\n");
    CHECK_EQ(load_capturing(&cfg, bad_level, 2, err, sizeof(err)), -EINVAL);
    CHECK_STREQ(err, "runcast: invalid value \"verbose\" for --log-level "
                     "(expected one of debug|info|warn|error)\n");
}

static void zero_means_off_only_where_documented(void)
{
    static const char *zero_ok[] = {
        "first-event-timeout", "idle-timeout", "run-timeout", "heartbeat", "delay-alert",
        "retry-backoff", "shutdown-grace", "demo-word-delay", "upstream-retries", "burst",
        "runs-per-second", "upstream-drain",
    };
    static const char *zero_bad[] = {
        "queue-timeout", "connect-timeout", "session-ttl", "head-timeout",
        "keepalive-timeout", "sse-retry", "max-concurrent-runs", "history", "history-bytes",
        "subscriber-buffer", "max-body", "max-header", "max-sessions", "max-subscribers",
    };
    struct config cfg;
    clear_env();
    for (size_t i = 0; i < RC_ARRAY_SIZE(zero_ok); i++) {
        char flag[64];
        snprintf(flag, sizeof(flag), "--%s=0", zero_ok[i]);
        char *argv[] = { "runcast", flag, NULL };
        if (load(&cfg, argv) != 0)
            fprintf(stderr, "  %s rejected\n", flag);
        CHECK_EQ(load(&cfg, argv), 0);
    }
    for (size_t i = 0; i < RC_ARRAY_SIZE(zero_bad); i++) {
        char flag[64];
        snprintf(flag, sizeof(flag), "--%s=0", zero_bad[i]);
        char *argv[] = { "runcast", flag, NULL };
        if (load(&cfg, argv) != -EINVAL)
            fprintf(stderr, "  %s accepted\n", flag);
        CHECK_EQ(load(&cfg, argv), -EINVAL);
    }
}

static void upstream_must_be_demo_or_http_url(void)
{
    struct config cfg;
    static const char *bad[] = { "", "ftp://x", "http://", "https://", "Demo", "localhost:8001" };
    char *ok[] = { "runcast", "--upstream", "https://agent.example/api", NULL };
    clear_env();
    CHECK_EQ(load(&cfg, ok), 0);
    CHECK_STREQ(cfg.upstream, "https://agent.example/api");
    for (size_t i = 0; i < RC_ARRAY_SIZE(bad); i++) {
        char *argv[] = { "runcast", "--upstream", (char *)bad[i], NULL };
        CHECK_EQ(load(&cfg, argv), -EINVAL);
    }
}

static void burst_zero_becomes_ceil_of_rate(void)
{
    struct config cfg;
    char *fractional[] = { "runcast", "--runs-per-second", "2.5", NULL };
    char *whole[] = { "runcast", "--runs-per-second", "4", NULL };
    char *small[] = { "runcast", "--runs-per-second", "0.1", NULL };
    char *explicit_burst[] = { "runcast", "--runs-per-second", "2.5", "--burst", "10", NULL };
    char *unlimited[] = { "runcast", NULL };
    clear_env();
    CHECK_EQ(load(&cfg, fractional), 0);
    CHECK(cfg.runs_per_second == 2.5);
    CHECK_EQ(cfg.burst, 3);
    CHECK_EQ(load(&cfg, whole), 0);
    CHECK_EQ(cfg.burst, 4);
    CHECK_EQ(load(&cfg, small), 0);
    CHECK_EQ(cfg.burst, 1);
    CHECK_EQ(load(&cfg, explicit_burst), 0);
    CHECK_EQ(cfg.burst, 10);
    CHECK_EQ(load(&cfg, unlimited), 0);
    CHECK_EQ(cfg.burst, 0);
}

static void help_lists_every_flag_with_env_and_default_and_returns_1(void)
{
    static char out[16384];
    struct config cfg;
    char *argv[] = { "runcast", "--history", "5", "--help", NULL };
    clear_env();
    setenv("RUNCAST_RUN_TIMEOUT", "abc", 1);  /* help still works */
    CHECK_EQ(load_capturing(&cfg, argv, 1, out, sizeof(out)), 1);
    CHECK(strncmp(out, "Usage: runcast", 14) == 0);
    for (size_t i = 0; i < RC_ARRAY_SIZE(option_table); i++) {
        const struct option *opt = &option_table[i];
        char flag[96], env[128], line[256];
        snprintf(flag, sizeof(flag), "\n  --%s %s\n", opt->name, option_metavar(opt));
        option_env_name(opt, env, sizeof(env));
        snprintf(line, sizeof(line), "\n      env %s, default %s\n", env, opt->default_text);
        if (!strstr(out, flag) || !strstr(out, line))
            fprintf(stderr, "  help misses --%s\n", opt->name);
        CHECK(strstr(out, flag) != NULL);
        CHECK(strstr(out, line) != NULL);
    }
    CHECK(strstr(out, "  --run-timeout D\n      longest a run may last (0: off)\n"
                      "      env RUNCAST_RUN_TIMEOUT, default 300s\n") != NULL);
    CHECK(strstr(out, "\n  --log-level debug|info|warn|error\n") != NULL);
    for (const char *line = out; *line; ) {  /* fits an 80-column terminal */
        size_t len = strcspn(line, "\n");
        CHECK(len <= 80);
        line += len + (line[len] == '\n');
    }
    clear_env();

    char *short_help[] = { "runcast", "-h", NULL };
    CHECK_EQ(load_capturing(&cfg, short_help, 1, out, sizeof(out)), 1);
    CHECK(strncmp(out, "Usage: runcast", 14) == 0);
}

static void help_as_an_option_value_is_not_help(void)
{
    struct config cfg;
    char *argv[] = { "runcast", "--upstream", "--help", NULL };
    clear_env();
    CHECK_EQ(load(&cfg, argv), -EINVAL);
}

static void version_prints_and_returns_1(void)
{
    struct config cfg;
    char out[256];
    char *argv[] = { "runcast", "--version", NULL };
    clear_env();
    CHECK_EQ(load_capturing(&cfg, argv, 1, out, sizeof(out)), 1);
    CHECK_STREQ(out, "runcast 0.1.0\n");
}

static void control_characters_in_a_bad_value_keep_the_error_on_one_line(void)
{
    struct config cfg;
    char err[1024];
    char *argv[] = { "runcast", "--history", "1\n2", NULL };
    clear_env();
    CHECK_EQ(load_capturing(&cfg, argv, 2, err, sizeof(err)), -EINVAL);
    CHECK_STREQ(err, "runcast: invalid value \"1?2\" for --history "
                     "(expected an integer, at least 1)\n");
}

static void auth_options_are_checked_together(void)
{
    struct config cfg;
    char err[1024];
    static const char secret[] = "s3cret-s3cret-s3cret-s3cret-s3cret";
    clear_env();
    char *none_with_key[] = { "runcast", "--jwt-secret", (char *)secret, NULL };
    CHECK_EQ(load_capturing(&cfg, none_with_key, 2, err, sizeof(err)), -EINVAL);
    CHECK(strstr(err, "--auth is none") != NULL);
    CHECK(strstr(err, secret) == NULL);
    char *jwt_without_key[] = { "runcast", "--auth", "jwt", NULL };
    CHECK_EQ(load_capturing(&cfg, jwt_without_key, 2, err, sizeof(err)), -EINVAL);
    CHECK(strstr(err, "exactly one of") != NULL);
    char *both[] = { "runcast", "--auth", "jwt", "--jwt-secret", (char *)secret,
                     "--jwt-public-key", "/k.pem", NULL };
    CHECK_EQ(load(&cfg, both), -EINVAL);
    char *short_secret[] = { "runcast", "--auth", "jwt", "--jwt-secret", "tooshort", NULL };
    CHECK_EQ(load_capturing(&cfg, short_secret, 2, err, sizeof(err)), -EINVAL);
    CHECK_STREQ(err, "runcast: --jwt-secret must be at least 32 bytes\n");
    char *ok[] = { "runcast", "--auth", "jwt", "--jwt-secret", (char *)secret, "--jwt-user-claim",
                   "uid", "--jwt-cookie", "rc_token", "--admin-claim", "role=admin",
                   "--admin-listen", "127.0.0.1:0", "--max-runs-per-user", "2",
                   "--max-subscribers-per-user", "3", NULL };
    CHECK_EQ(load(&cfg, ok), 0);
    CHECK_STREQ(cfg.auth, "jwt");
    CHECK_STREQ(cfg.jwt_secret, secret);
    CHECK_STREQ(cfg.jwt_user_claim, "uid");
    CHECK_STREQ(cfg.admin_claim, "role=admin");
    CHECK_STREQ(cfg.admin_listen_host, "127.0.0.1");
    CHECK_EQ(cfg.max_runs_per_user, 2);
    CHECK_EQ(cfg.max_subscribers_per_user, 3);
    char *bad_claim[] = { "runcast", "--auth", "jwt", "--jwt-secret", (char *)secret,
                          "--jwt-user-claim", "a b", NULL };
    CHECK_EQ(load(&cfg, bad_claim), -EINVAL);
    /* a secret too long for its buffer is refused without being echoed */
    char long_secret[1100];
    memset(long_secret, 'k', sizeof(long_secret) - 1);
    long_secret[sizeof(long_secret) - 1] = '\0';
    char *too_long[] = { "runcast", "--auth", "jwt", "--jwt-secret", long_secret, NULL };
    CHECK_EQ(load_capturing(&cfg, too_long, 2, err, sizeof(err)), -EINVAL);
    CHECK(strstr(err, "kkkk") == NULL);
    CHECK(strstr(err, "--jwt-secret") != NULL);
}

static void allow_origin_repeats_and_replaces_the_environment(void)
{
    struct config cfg;
    clear_env();
    setenv("RUNCAST_ALLOW_ORIGIN", "https://env.example", 1);
    char *none[] = { "runcast", NULL };
    CHECK_EQ(load(&cfg, none), 0);
    CHECK_STREQ(cfg.allow_origin, "https://env.example");
    char *two[] = { "runcast", "--allow-origin", "https://a.example",
                    "--allow-origin=http://localhost:3000,http://[::1]:8080", NULL };
    CHECK_EQ(load(&cfg, two), 0);
    CHECK_STREQ(cfg.allow_origin, "https://a.example,http://localhost:3000,http://[::1]:8080");
    clear_env();
    char *star_and_more[] = { "runcast", "--allow-origin", "*", "--allow-origin",
                              "https://a.example", NULL };
    CHECK_EQ(load(&cfg, star_and_more), -EINVAL);
    static const char *const bad[] = { "https://a.example/", "ftp://a.example", "a.example",
                                       "https://a.example:99999", "https://", "null" };
    for (size_t i = 0; i < RC_ARRAY_SIZE(bad); i++) {
        char *argv[] = { "runcast", "--allow-origin", (char *)bad[i], NULL };
        CHECK_EQ(load(&cfg, argv), -EINVAL);
    }
}

static void allow_host_takes_names_addresses_and_ports(void)
{
    struct config cfg;
    char err[1024];
    clear_env();
    setenv("RUNCAST_ALLOW_HOST", "env.example", 1);
    char *none[] = { "runcast", NULL };
    CHECK_EQ(load(&cfg, none), 0);
    CHECK_STREQ(cfg.allow_host, "env.example");
    char *two[] = { "runcast", "--allow-host", "app.example.com:8443,10.0.0.7",
                    "--allow-host=[::1]:8000,::1,my_host", NULL };
    CHECK_EQ(load(&cfg, two), 0);
    CHECK_STREQ(cfg.allow_host, "app.example.com:8443,10.0.0.7,[::1]:8000,::1,my_host");
    clear_env();
    char *star[] = { "runcast", "--allow-host", "*", NULL };
    CHECK_EQ(load(&cfg, star), 0);
    CHECK_STREQ(cfg.allow_host, "*");
    char *star_and_more[] = { "runcast", "--allow-host", "*", "--allow-host", "a.example", NULL };
    CHECK_EQ(load_capturing(&cfg, star_and_more, 2, err, sizeof(err)), -EINVAL);
    CHECK(strstr(err, "* must be the only host") != NULL);
    static const char *const bad[] = { "http://a.example", "a.example/", "a b", "a.example:",
                                       "a.example:99999", "a.example:8x", "[::1", "[zz::1]",
                                       "[::1]8000", ":8000", ",", "a.example,", "*,a.example" };
    for (size_t i = 0; i < RC_ARRAY_SIZE(bad); i++) {
        char *argv[] = { "runcast", "--allow-host", (char *)bad[i], NULL };
        CHECK_EQ(load_capturing(&cfg, argv, 2, err, sizeof(err)), -EINVAL);
        CHECK(strstr(err, "--allow-host") != NULL);
    }
    char *caps[] = { "runcast", "--max-sessions-per-user", "3", NULL };
    CHECK_EQ(load(&cfg, caps), 0);
    CHECK_EQ(cfg.max_sessions_per_user, 3);
    setenv("RUNCAST_MAX_SESSIONS_PER_USER", "5", 1);
    CHECK_EQ(load(&cfg, none), 0);
    CHECK_EQ(cfg.max_sessions_per_user, 5);
    clear_env();
}

int main(void)
{
    RUN_TEST(defaults_match_contract);
    RUN_TEST(load_without_env_or_flags_keeps_defaults);
    RUN_TEST(option_table_is_consistent);
    RUN_TEST(env_twin_is_upper_snake_case);
    RUN_TEST(duration_accepts_seconds_decimals_and_suffixes);
    RUN_TEST(duration_rejects_everything_else);
    RUN_TEST(size_accepts_bytes_and_binary_suffixes);
    RUN_TEST(size_rejects_everything_else);
    RUN_TEST(listen_accepts_ipv4_ipv6_hostnames_and_bare_port);
    RUN_TEST(listen_rejects_malformed_addresses_and_ports);
    RUN_TEST(listen_rejects_host_longer_than_the_buffer);
    RUN_TEST(flag_beats_env_and_env_beats_default);
    RUN_TEST(flag_equals_value_form_is_accepted);
    RUN_TEST(repeated_flag_last_one_wins);
    RUN_TEST(bad_flag_value_prints_one_line_and_returns_einval);
    RUN_TEST(bad_env_value_names_the_variable);
    RUN_TEST(unknown_flag_returns_einval);
    RUN_TEST(missing_value_returns_einval);
    RUN_TEST(positional_argument_returns_einval);
    RUN_TEST(values_outside_bounds_are_rejected);
    RUN_TEST(zero_means_off_only_where_documented);
    RUN_TEST(upstream_must_be_demo_or_http_url);
    RUN_TEST(burst_zero_becomes_ceil_of_rate);
    RUN_TEST(help_lists_every_flag_with_env_and_default_and_returns_1);
    RUN_TEST(help_as_an_option_value_is_not_help);
    RUN_TEST(version_prints_and_returns_1);
    RUN_TEST(control_characters_in_a_bad_value_keep_the_error_on_one_line);
    RUN_TEST(auth_options_are_checked_together);
    RUN_TEST(allow_origin_repeats_and_replaces_the_environment);
    RUN_TEST(allow_host_takes_names_addresses_and_ports);
    return test_report("test_config");
}
