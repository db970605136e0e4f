/* fuzz_token: what runcast reads to decide who a request is (auth.c).
 *
 * Token (auth_verify_token), the whole input, under an HS256 secret and
 * under an RSA public key: the result is 0 or one enum auth_error; a token
 * is accepted only when it is at most AUTH_MAX_TOKEN bytes of exactly three
 * base64url parts whose header names an algorithm of the configured key
 * family (never "none"), and then its user is "" or a valid path parameter;
 * checking the same token twice (the second time from the cache of
 * accepted tokens) gives the same answer and claims.
 *
 * Base64url (b64url_decode): agrees with a plain reference decoder on
 * every input (length, bytes, and which inputs are refused).
 *
 * Gate (auth_check_request) with the input as the Authorization value, the
 * raw ?access_token= value, the Cookie header, the Origin header and the
 * Host header (each request that parses): it answers exactly when it
 * returns 0, once, with 204, 401, 403, 404 or 421; a 401 carries
 * WWW-Authenticate; the CORS headers it sets name only a configured
 * origin; a listed Host ("gw") and /healthz are never refused with 421.
 */
#include <stdint.h>
#include <stdlib.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "../src/auth.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#include "../tests/unit/fake_conn.h" /* auth.c's only way out */

/* ---- two configurations, swapped in per input -------------------------------- */

static const char secret[] = "fuzz-secret-0123456789abcdef0123456789";
static __typeof__(auth) with_secret, with_rsa;

static void use(const __typeof__(auth) *state)
{
    memcpy(&auth, state, sizeof(auth));
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    log_configure(LOG_ERROR, LOG_TEXT); /* auth.refused lines are info */
    EVP_PKEY *rsa = EVP_RSA_gen(2048);
    char path[] = "/tmp/fuzz-token-XXXXXX";
    int fd = mkstemp(path);
    FILE *f = fdopen(fd, "w");
    PEM_write_PUBKEY(f, rsa);
    fclose(f);
    EVP_PKEY_free(rsa);
    struct auth_config rc = {.jwt = 1, .public_key_path = path, .user_claim = "sub",
                             .leeway_ms = 30000, .admin_claim = "role=admin",
                             .allow_origins = "https://app.test,http://localhost:3000",
                             .cookie = "rc_token", .allow_hosts = "", .listen_host = "gw"};
    if (auth_init(&rc) != 0)
        abort();
    unlink(path);
    with_rsa = auth;
    memset(&auth, 0, sizeof(auth)); /* with_rsa owns those strings now */
    struct auth_config sc = {.jwt = 1, .secret = secret, .user_claim = "sub", .leeway_ms = 30000,
                             .admin_claim = "role", .allow_origins = "*", .cookie = "rc_token",
                             .allow_hosts = "gw,app.test:8443,::1"};
    if (auth_init(&sc) != 0)
        abort();
    with_secret = auth;
    return 0;
}

/* ---- properties -------------------------------------------------------------- */

/* Decodes like b64url_decode, one sextet at a time into a bit string. */
static ssize_t reference_decode(const char *in, size_t len, unsigned char *out)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    if (len % 4 == 1)
        return -EINVAL;
    size_t bits = 0;
    memset(out, 0, len);
    for (size_t i = 0; i < len; i++) {
        const char *p = in[i] ? memchr(alphabet, in[i], 64) : NULL;
        if (p == NULL)
            return -EINVAL;
        int v = (int)(p - alphabet);
        for (int b = 5; b >= 0; b--, bits++) {
            if (v & (1 << b))
                out[bits / 8] |= (unsigned char)(0x80 >> (bits % 8));
        }
    }
    return (ssize_t)(bits / 8);
}

static void check_base64(const char *in, size_t len)
{
    if (len > 4096)
        return;
    unsigned char *a = malloc(len + 1), *b = malloc(len + 1);
    ssize_t na = b64url_decode(in, len, a);
    ssize_t nb = reference_decode(in, len, b);
    if (na != nb || (na > 0 && memcmp(a, b, (size_t)na) != 0))
        abort();
    free(a);
    free(b);
}

static void check_token(const char *token, size_t len)
{
    struct auth_claims claims, again;
    int err = auth_verify_token(token, len, 1800000000.0, &claims);
    if (err > 0 || err < AUTH_ERR_CLAIMS)
        abort();
    if (auth_verify_token(token, len, 1800000000.0, &again) != err)
        abort();
    if (err != 0)
        return;
    if (len > AUTH_MAX_TOKEN || memchr(token, '\0', len))
        abort();
    const char *dot1 = memchr(token, '.', len);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token)) : NULL;
    if (!dot2 || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)))
        abort();
    json_t *header = segment_json(token, (size_t)(dot1 - token));
    const char *alg = header ? json_string_value(json_object_get(header, "alg")) : NULL;
    if (alg == NULL || (auth.allowed_algs & ALG_BIT(alg_from_name(alg))) == 0)
        abort();
    json_decref(header);
    if (claims.user[0] && !str_is_path_param(claims.user, strlen(claims.user)))
        abort();
    if (strcmp(claims.user, again.user) != 0 || claims.exp != again.exp ||
        claims.admin != again.admin)
        abort();
}

/* The value bytes as one header value: no CR, LF or NUL (else NULL). */
static char *header_value(const uint8_t *data, size_t size)
{
    for (size_t i = 0; i < size; i++) {
        if (data[i] == '\r' || data[i] == '\n' || data[i] == '\0')
            return NULL;
    }
    return strndup((const char *)data, size);
}

/* Runs the gate on raw and checks what it answered; returns the status it
 * answered, 0 when it let the request through (or raw did not parse). */
static int check_gate(const char *raw)
{
    struct http_limits limits = {65536, 1 << 20, 65536};
    struct http_request req;
    int status = 0;
    memset(&req, 0, sizeof(req));
    ssize_t n = http_parse_request(raw, strlen(raw), &limits, &req);
    if (n > 0) {
        struct route_params params;
        struct auth_grant grant;
        struct conn c = {0};
        int route = router_match(req.path, req.path_len, &params);
        int pass = auth_check_request(&c, &req, route, &params, NULL, &grant);
        if (pass != (c.answers == 0) || c.answers > 1)
            abort();
        if (!pass && c.status != 204 && c.status != 401 && c.status != 403 && c.status != 404 &&
            c.status != 421)
            abort();
        if (c.status == 401 && strncmp(c.headers, "WWW-Authenticate: Bearer", 24) != 0)
            abort();
        const char *acao = strstr(c.answer, "Access-Control-Allow-Origin: ");
        if (acao) {
            acao += strlen("Access-Control-Allow-Origin: ");
            size_t vlen = strcspn(acao, "\r");
            int listed = auth.any_origin && vlen == 1 && *acao == '*';
            for (size_t i = 0; i < auth.origin_count; i++)
                listed |= strlen(auth.origins[i]) == vlen &&
                          strncasecmp(auth.origins[i], acao, vlen) == 0;
            if (!listed)
                abort();
        }
        if (pass && grant.expires_at < 0)
            abort();
        status = pass ? 0 : c.status;
    }
    http_request_free(&req);
    return status;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *token = (const char *)data;
    check_base64(token, size);
    use(&with_secret);
    check_token(token, size);
    use(&with_rsa);
    check_token(token, size);

    char *value = header_value(data, size);
    if (value == NULL || size > 12000) {
        free(value);
        return 0;
    }
    struct buf raw = {0};
    for (int config = 0; config < 2; config++) {
        use(config ? &with_rsa : &with_secret);
        buf_reset(&raw);
        buf_printf(&raw, "POST /apps/a/users/alice/sessions/s/run HTTP/1.1\r\nHost: gw\r\n"
                   "Authorization: %s\r\nContent-Length: 0\r\n\r\n", value);
        check_gate(raw.data);
        buf_reset(&raw);
        buf_printf(&raw, "GET /apps/a/users/alice/sessions/s/run?access_token=%s HTTP/1.1\r\n"
                   "Host: gw\r\n\r\n", value);
        check_gate(raw.data);
        buf_reset(&raw);
        buf_printf(&raw, "GET /metrics HTTP/1.1\r\nHost: gw\r\nCookie: %s\r\n\r\n", value);
        check_gate(raw.data);
        buf_reset(&raw);
        buf_printf(&raw, "OPTIONS /apps/a/users/alice/sessions/s/run HTTP/1.1\r\nHost: gw\r\n"
                   "Origin: %s\r\nAccess-Control-Request-Method: POST\r\n\r\n", value);
        check_gate(raw.data);
        buf_reset(&raw);
        buf_printf(&raw, "DELETE /apps/a/users/alice/sessions/s HTTP/1.1\r\nHost: gw\r\n"
                   "Origin: %s\r\n\r\n", value);
        check_gate(raw.data);
        /* Host: a listed name is never refused, a probe never is */
        buf_reset(&raw);
        buf_printf(&raw, "GET /task-status HTTP/1.1\r\nHost: %s\r\n\r\n", value);
        if (check_gate(raw.data) == 421 && strcasecmp(value, "gw") == 0)
            abort();
        buf_reset(&raw);
        buf_printf(&raw, "GET /healthz HTTP/1.1\r\nHost: %s\r\n\r\n", value);
        if (check_gate(raw.data) == 421)
            abort();
    }
    buf_free(&raw);
    free(value);
    use(&with_secret);
    return 0;
}
