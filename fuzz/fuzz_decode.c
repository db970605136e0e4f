/* fuzz_decode: what runcast reads from a request's path, query and headers.
 * The whole input is used as each of them in turn.
 *
 * Path (router.c router_match): a match is exact, i.e. the route's path
 * rebuilt from the parameters is the input; parameters are 1..128 chars of
 * [A-Za-z0-9_.-]; -EINVAL only for a /apps/… shape.
 *
 * Query (http.c http_query_get), for several keys and output sizes (exact
 * heap buffers, so ASan sees any overflow): every size agrees with the
 * largest one: the same value when it fits, -ENOSPC when it does not, the
 * same error otherwise; a value is NUL-terminated and has no NUL inside. And
 * a value percent-encoded into "x=1&k=<value>&k=2" decodes back to itself.
 *
 * Last-Event-ID (api.c last_event_id, as header and as ?last_event_id=, then
 * store.c store_parse_id and store_locate against small memory logs):
 * store_parse_id accepts exactly [0-9a-f]{8}-[0-9]+ with a seq that fits in
 * 64 bits, and store_event_id_incarnation (what deleted sessions'
 * tombstones compare)
 * agrees with it on the verdict and the incarnation; a position is
 * within [oldest retained, last + 1]; an exact position (no stream.reset)
 * lies right after the given id, or at the latest run's start or the live
 * end when there is no id. Also Content-Type (api.c content_type_is_json):
 * no crash. And the path as a forwarded one (proxy.c proxy_check_path):
 * see check_forwarded_path.
 */
#include <ctype.h>
#include <stdint.h>

/* Statics under test; everything else comes from the fuzzing library. */
#include "../src/api.c"
#include "../src/store_memory.c"
#include "proxy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* ---- path ---------------------------------------------------------------- */

static void check_path(const char *path, size_t len)
{
    static const struct {
        enum route route;
        const char *path; /* "%s" stands for app, user, session */
    } shapes[] = {
        {ROUTE_SESSION_RUN, "/apps/%s/users/%s/sessions/%s/run"},
        {ROUTE_SESSION_STATUS, "/apps/%s/users/%s/sessions/%s/task-status"},
        {ROUTE_SESSION, "/apps/%s/users/%s/sessions/%s"},
        {ROUTE_ALL_STATUS, "/task-status"},
        {ROUTE_METRICS, "/metrics"},
        {ROUTE_HEALTHZ, "/healthz"},
        {ROUTE_READYZ, "/readyz"},
        {ROUTE_CONSOLE, "/"},
        {ROUTE_CONSOLE_ASSET, "/console/%s"}, /* the file name lands in app */
        {ROUTE_ADK_RUN_SSE, "/run_sse"},
        {ROUTE_ADK_RUN, "/run"},
    };
    struct route_params p;
    memset(&p, 0xAA, sizeof(p));
    int route = router_match(path, len, &p);
    if (route == -EINVAL) {
        if ((len < 6 || memcmp(path, "/apps/", 6) != 0) &&
            (len < 9 || memcmp(path, "/console/", 9) != 0))
            abort();
        return;
    }
    if (route == ROUTE_NONE)
        return;
    for (size_t i = 0; i < RC_ARRAY_SIZE(shapes); i++) {
        if (shapes[i].route != (enum route)route)
            continue;
        char rebuilt[600];
        int nparams = 0;
        for (const char *f = shapes[i].path; (f = strstr(f, "%s")) != NULL; f += 2)
            nparams++;
        {
            const char *params[3] = {p.app, p.user, p.session};
            for (int j = 0; j < nparams; j++) {
                size_t n = strnlen(params[j], sizeof(p.app));
                if (n == sizeof(p.app) || !str_is_path_param(params[j], n))
                    abort();
            }
        }
        int n = snprintf(rebuilt, sizeof(rebuilt), shapes[i].path, p.app, p.user, p.session);
        if ((size_t)n != len || memcmp(rebuilt, path, len) != 0)
            abort();
        return;
    }
    abort(); /* a route this harness does not know */
}

/* ---- forwarded path (proxy.c proxy_check_path) --------------------------
 * Accepted paths start with '/', have no empty segment and no segment
 * that is "." or ".." once percent-decoded (the upstream must route what
 * the gate checked); a user's path gives a NUL-terminated, non-empty user
 * that fits, which is its third segment decoded. Refused is -EINVAL only. */

/* Percent-decodes seg into out; -1 for a bad escape. */
static int decode(const char *seg, size_t len, char *out, size_t size, size_t *n)
{
    *n = 0;
    for (size_t i = 0; i < len; i++) {
        int ch = (unsigned char)seg[i];
        if (ch == '%') {
            if (i + 2 >= len || !isxdigit((unsigned char)seg[i + 1]) ||
                !isxdigit((unsigned char)seg[i + 2]))
                return -1;
            char hex[3] = {seg[i + 1], seg[i + 2], 0};
            ch = (int)strtol(hex, NULL, 16);
            i += 2;
        }
        if (*n + 1 < size)
            out[*n] = (char)ch;
        (*n)++;
    }
    out[*n + 1 < size ? *n : size - 1] = '\0';
    return 0;
}

static void check_forwarded_path(const char *path, size_t len)
{
    char user[129];
    memset(user, 0xAA, sizeof(user));
    int rc = proxy_check_path(path, len, user, sizeof(user));
    if (rc == -EINVAL)
        return;
    if ((rc != 0 && rc != 1) || len == 0 || path[0] != '/')
        abort();
    size_t end = len; /* a request's path: http.c took the query off */
    int index = 0;
    for (size_t i = 1; i <= end; index++) {
        size_t j = i;
        while (j < end && path[j] != '/')
            j++;
        char seg[600];
        size_t n;
        if (decode(path + i, j - i, seg, sizeof(seg), &n) < 0)
            abort(); /* a bad escape was accepted */
        if ((j - i == 0 && j < end) || (n == 1 && seg[0] == '.') ||
            (n == 2 && seg[0] == '.' && seg[1] == '.'))
            abort();
        if (rc == 1 && index == 3 && (n == 0 || n >= sizeof(user) || strcmp(seg, user) != 0))
            abort();
        i = j + 1;
    }
    if (rc == 1 && strnlen(user, sizeof(user)) == sizeof(user))
        abort();
}

/* ---- query --------------------------------------------------------------- */

static void check_query_key(const char *query, size_t len, const char *key)
{
    static const size_t sizes[] = {0, 1, 2, 8, 16, 32, 256};
    size_t big_size = len + 1; /* decoding never lengthens */
    char *big = xmalloc(big_size);
    ssize_t want = http_query_get(query, len, key, big, big_size);
    if (want != -ENOENT && want != -EINVAL && want < 0)
        abort();
    if (want >= 0 && (big[want] != '\0' || strlen(big) != (size_t)want))
        abort();
    for (size_t i = 0; i < RC_ARRAY_SIZE(sizes); i++) {
        char *out = xmalloc(sizes[i]);
        ssize_t got = http_query_get(query, len, key, out, sizes[i]);
        if (want >= 0 && (size_t)want >= sizes[i]) {
            if (got != -ENOSPC)
                abort();
        } else if (got != want || (want >= 0 && memcmp(out, big, (size_t)want + 1) != 0)) {
            abort();
        }
        free(out);
    }
    free(big);
}

/* "x=1&k=<value percent-encoded>&k=2" must give the value back for "k". */
static void check_query_round_trip(const char *value, size_t len)
{
    if (memchr(value, '\0', len) != NULL)
        return; /* a decoded NUL is refused by design */
    struct buf q = {0};
    buf_append_str(&q, "x=1&k=");
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)value[i];
        if (ch == ' ')
            buf_append(&q, "+", 1);
        else if ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                 ch == '-' || ch == '_' || ch == '.')
            buf_append(&q, &value[i], 1);
        else
            buf_printf(&q, (i & 1) ? "%%%02X" : "%%%02x", ch);
    }
    buf_append_str(&q, "&k=2");
    char *out = xmalloc(len + 1);
    if (http_query_get(q.data, q.len, "k", out, len + 1) != (ssize_t)len ||
        memcmp(out, value, len) != 0)
        abort();
    free(out);
    buf_free(&q);
}

/* ---- Last-Event-ID ------------------------------------------------------- */

static struct store_log *logs[3];

/* The ids store_parse_id must accept: [0-9a-f]{8}-[0-9]+ within 64 bits. */
static int id_is_valid(const char *id, uint32_t *epoch, uint64_t *seq)
{
    size_t len = strlen(id);
    uint64_t e = 0, s = 0;
    if (len < 10 || id[8] != '-')
        return 0;
    for (size_t i = 0; i < 8; i++) {
        const char *digit = memchr("0123456789abcdef", id[i], 16);
        if (id[i] == '\0' || digit == NULL)
            return 0;
        e = e << 4 | (uint64_t)(digit - "0123456789abcdef");
    }
    for (size_t i = 9; i < len; i++) {
        if (id[i] < '0' || id[i] > '9')
            return 0;
        uint64_t d = (uint64_t)(id[i] - '0');
        if (s > (UINT64_MAX - d) / 10)
            return 0;
        s = s * 10 + d;
    }
    *epoch = (uint32_t)e;
    *seq = s;
    return 1;
}

static void check_position(const struct store_log *log, const char *id, int from_live)
{
    const char *reason;
    uint64_t pos = store_locate(log, id, from_live, &reason);
    struct store_meta m;
    store_meta(log, &m);
    uint64_t oldest = m.oldest_seq;
    if (pos < oldest || pos > m.newest_seq + 1)
        abort();
    if (pos <= m.newest_seq && store_read(log, pos) == NULL)
        abort();
    if (reason != NULL) {
        if (pos != oldest)
            abort();
        return;
    }
    uint32_t epoch;
    uint64_t seq;
    if (id != NULL) {
        if (!id_is_valid(id, &epoch, &seq) || epoch != m.incarnation || pos != seq + 1)
            abort();
    } else if (pos != (from_live || m.run_start_seq == 0 ? m.newest_seq + 1 : m.run_start_seq)) {
        abort();
    }
}

static void check_last_event_id(const char *value, size_t len)
{
    struct http_request req;
    memset(&req, 0, sizeof(req));
    req.header_count = 1;
    req.headers[0] = (struct http_header){"Last-Event-ID", 13, value, len};

    char id[256];
    for (int as_query = 0; as_query < 2; as_query++) {
        if (as_query) {
            req.header_count = 0;
            req.query = value;
            req.query_len = len;
        }
        memset(id, 0xAA, sizeof(id));
        int has_id = last_event_id(&req, id, sizeof(id));
        if (has_id != -EINVAL && has_id != 0 && has_id != 1)
            abort();
        if (has_id == 1 && memchr(id, '\0', sizeof(id)) == NULL)
            abort();
        if (has_id < 0)
            strcpy(id, "invalid"); /* as handle_get_stream() does */

        uint32_t epoch, epoch_ref;
        uint64_t seq, seq_ref;
        int ok = has_id && store_parse_id(id, &epoch, &seq) == 0;
        if (has_id && (ok != id_is_valid(id, &epoch_ref, &seq_ref) ||
                       (ok && (epoch != epoch_ref || seq != seq_ref))))
            abort();
        /* what session.c's tombstones compare: the same verdict and epoch */
        uint32_t incarnation = 0;
        if (has_id && ((store_event_id_incarnation(id, &incarnation) == 0) != ok ||
                       (ok && incarnation != epoch)))
            abort();
        for (size_t i = 0; i < RC_ARRAY_SIZE(logs); i++) {
            for (int from_live = 0; from_live < 2; from_live++)
                check_position(logs[i], has_id ? id : NULL, from_live);
        }
    }
}

/* store_format_id() output always parses back. */
static void check_id_round_trip(const uint8_t *data, size_t size)
{
    uint32_t epoch = 0, e;
    uint64_t seq = 0, s;
    for (size_t i = 0; i < size && i < 12; i++) {
        if (i < 4)
            epoch = epoch << 8 | data[i];
        else
            seq = seq << 8 | data[i];
    }
    char id[40];
    store_format_id(id, sizeof(id), epoch, seq);
    if (store_parse_id(id, &e, &s) != 0 || e != epoch || s != seq)
        abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    struct store_config cfg = {.history = 4, .history_bytes = 1 << 20};
    store_init(&store_memory_ops, &cfg);
    static const uint32_t epochs[3] = {0x00000000, 0x00000001, 0xdeadbeef};
    static const int frames[3] = {0, 3, 10};  /* 10 > history: 1..6 are evicted */
    static const int run_start[3] = {0, 2, 5}; /* hub 2: the run's start is gone */
    for (size_t i = 0; i < RC_ARRAY_SIZE(logs); i++) {
        logs[i] = store_open("a", "u", "s");
        ((struct memory_log *)logs[i])->epoch = epochs[i];
        for (int f = 1; f <= frames[i]; f++) {
            if (f == run_start[i])
                store_start_run(logs[i], "r", "agent.event", "{}", 2, NULL, NULL);
            else
                store_append(logs[i], "r", "agent.event", "{}", 2);
        }
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = xmalloc(size); /* exact size: ASan sees any overread */
    memcpy(s, data, size);

    check_path(s, size);
    check_forwarded_path(s, size);
    static const char *const keys[] = {"last_event_id", "from", "all", "limit", "k", ""};
    for (size_t i = 0; i < RC_ARRAY_SIZE(keys); i++)
        check_query_key(s, size, keys[i]);
    check_query_round_trip(s, size);
    check_last_event_id(s, size);
    check_id_round_trip(data, size);

    struct http_request req;
    memset(&req, 0, sizeof(req));
    req.header_count = 1;
    req.headers[0] = (struct http_header){"Content-Type", 12, s, size};
    (void)content_type_is_json(&req);

    free(s);
    return 0;
}
