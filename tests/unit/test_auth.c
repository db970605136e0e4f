/* Unit tests for auth.c (token checks, the request gate, CORS) and quota.c
 * (per-user caps). Tokens are minted here with libjwt, the library runcast
 * verifies with; RSA and EC keys are generated with OpenSSL into a
 * temporary directory. The gate answers through a fake connection that
 * records the status, headers and body it was given. */
#include "../../src/auth.c"

#include <dlfcn.h>
#include <openssl/ec.h>
#include <openssl/rsa.h>
#include <stdlib.h>
#include <unistd.h>

#include "quota.h"
#include "router.h"
#include "test.h"

#include "fake_conn.h"

/* ---- counting PEM key parses ------------------------------------------------ */

/* Every PEM public key parse in this process, runcast's and libjwt's alike
 * (libjwt's call resolves to this definition, which calls OpenSSL's). */
static int pem_key_parses;

EVP_PKEY *PEM_read_bio_PUBKEY(BIO *bio, EVP_PKEY **x, pem_password_cb *cb, void *u)
{
    static EVP_PKEY *(*real)(BIO *, EVP_PKEY **, pem_password_cb *, void *);
    if (real == NULL)
        *(void **)&real = dlsym(RTLD_NEXT, "PEM_read_bio_PUBKEY");
    pem_key_parses++;
    return real(bio, x, cb, u);
}

/* ---- keys and tokens ------------------------------------------------------- */

static const char secret[] = "0123456789abcdef0123456789abcdef-test";
static char tmpdir[] = "/tmp/runcast-test-auth-XXXXXX";
static char rsa_pub_path[256], ec_pub_path[256], rsa_priv_path[256];
static char *rsa_priv_pem, *rsa_pub_pem, *ec_priv_pem;

static char *pem_of(EVP_PKEY *pkey, int private_key)
{
    BIO *bio = BIO_new(BIO_s_mem());
    if (private_key)
        PEM_write_bio_PrivateKey(bio, pkey, NULL, NULL, 0, NULL, NULL);
    else
        PEM_write_bio_PUBKEY(bio, pkey);
    char *data;
    long n = BIO_get_mem_data(bio, &data);
    char *out = xstrndup(data, (size_t)n);
    BIO_free(bio);
    return out;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void make_keys(void)
{
    CHECK(mkdtemp(tmpdir) != NULL);
    EVP_PKEY *rsa = EVP_RSA_gen(2048);
    EVP_PKEY *ec = EVP_EC_gen("P-256");
    CHECK(rsa != NULL && ec != NULL);
    rsa_priv_pem = pem_of(rsa, 1);
    rsa_pub_pem = pem_of(rsa, 0);
    ec_priv_pem = pem_of(ec, 1);
    char *ec_pub_pem = pem_of(ec, 0);
    snprintf(rsa_pub_path, sizeof(rsa_pub_path), "%s/rsa.pub.pem", tmpdir);
    snprintf(ec_pub_path, sizeof(ec_pub_path), "%s/ec.pub.pem", tmpdir);
    snprintf(rsa_priv_path, sizeof(rsa_priv_path), "%s/rsa.pem", tmpdir);
    write_file(rsa_pub_path, rsa_pub_pem);
    write_file(ec_pub_path, ec_pub_pem);
    write_file(rsa_priv_path, rsa_priv_pem);
    free(ec_pub_pem);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(ec);
}

static void remove_keys(void)
{
    unlink(rsa_pub_path);
    unlink(ec_pub_path);
    unlink(rsa_priv_path);
    rmdir(tmpdir);
    free(rsa_priv_pem);
    free(rsa_pub_pem);
    free(ec_priv_pem);
}

/* A token signed with alg and key (a secret or a PEM private key), claims
 * and extra header fields as JSON. The caller frees it. */
static char *mint(jwt_alg_t alg, const char *key, const char *claims, const char *header)
{
    jwt_t *jwt = NULL;
    CHECK_EQ(jwt_new(&jwt), 0);
    CHECK_EQ(jwt_add_grants_json(jwt, claims), 0);
    if (header)
        CHECK_EQ(jwt_add_headers_json(jwt, header), 0);
    CHECK_EQ(jwt_set_alg(jwt, alg, (const unsigned char *)key, key ? (int)strlen(key) : 0), 0);
    char *token = jwt_encode_str(jwt);
    CHECK(token != NULL);
    jwt_free(jwt);
    return token;
}

#define NOW 1800000000.0

static void init_secret(void)
{
    struct auth_config cfg = {.jwt = 1, .secret = secret, .user_claim = "sub",
                              .leeway_ms = 30000, .admin_claim = "role=admin"};
    CHECK_EQ(auth_init(&cfg), 0);
}

static void init_public_key(const char *path)
{
    struct auth_config cfg = {.jwt = 1, .public_key_path = path, .user_claim = "sub",
                              .leeway_ms = 0};
    CHECK_EQ(auth_init(&cfg), 0);
}

static int verify(const char *token, double now, struct auth_claims *out)
{
    struct auth_claims scratch;
    return auth_verify_token(token, strlen(token), now, out ? out : &scratch);
}

/* ---- token checks ----------------------------------------------------------- */

static void hs256_token_gives_user_exp_and_admin(void)
{
    init_secret();
    struct auth_claims claims;
    char *t = mint(JWT_ALG_HS256, secret, "{\"sub\":\"alice\",\"exp\":1800000100}", NULL);
    CHECK_EQ(verify(t, NOW, &claims), 0);
    CHECK_STREQ(claims.user, "alice");
    CHECK(claims.exp == 1800000100.0);
    CHECK_EQ(claims.admin, 0);
    free(t);
    t = mint(JWT_ALG_HS512, secret, "{\"sub\":\"ops\",\"exp\":1800000100,\"role\":[\"x\",\"admin\"]}",
             NULL);
    CHECK_EQ(verify(t, NOW, &claims), 0);
    CHECK_EQ(claims.admin, 1);
    free(t);
    t = mint(JWT_ALG_HS384, secret, "{\"sub\":\"ops\",\"exp\":1800000100,\"role\":\"administrator\"}",
             NULL);
    CHECK_EQ(verify(t, NOW, &claims), 0);
    CHECK_EQ(claims.admin, 0);
    free(t);
    auth_shutdown();
}

static void times_are_checked_with_leeway(void)
{
    init_secret(); /* 30 s leeway */
    char *t = mint(JWT_ALG_HS256, secret, "{\"sub\":\"a\",\"exp\":1800000000}", NULL);
    CHECK_EQ(verify(t, NOW + 29, NULL), 0);
    CHECK_EQ(verify(t, NOW + 30, NULL), AUTH_ERR_EXPIRED);
    free(t);
    t = mint(JWT_ALG_HS256, secret, "{\"sub\":\"a\",\"exp\":1800009999,\"nbf\":1800000100}", NULL);
    CHECK_EQ(verify(t, NOW + 69, NULL), AUTH_ERR_NOT_YET_VALID);
    CHECK_EQ(verify(t, NOW + 70, NULL), 0);
    free(t);
    /* exp is required, and must be a number; a fractional one is fine */
    t = mint(JWT_ALG_HS256, secret, "{\"sub\":\"a\"}", NULL);
    CHECK_EQ(verify(t, NOW, NULL), AUTH_ERR_CLAIMS);
    free(t);
    t = mint(JWT_ALG_HS256, secret, "{\"sub\":\"a\",\"exp\":\"1800009999\"}", NULL);
    CHECK_EQ(verify(t, NOW, NULL), AUTH_ERR_CLAIMS);
    free(t);
    t = mint(JWT_ALG_HS256, secret, "{\"sub\":\"a\",\"exp\":1800000000.5}", NULL);
    CHECK_EQ(verify(t, NOW + 30.4, NULL), 0);
    CHECK_EQ(verify(t, NOW + 30.5, NULL), AUTH_ERR_EXPIRED);
    free(t);
    auth_shutdown();
}

static void audience_issuer_and_user_claim(void)
{
    struct auth_config cfg = {.jwt = 1, .secret = secret, .user_claim = "uid",
                              .audience = "runcast", .issuer = "https://id.example"};
    CHECK_EQ(auth_init(&cfg), 0);
    struct auth_claims claims;
    char *t = mint(JWT_ALG_HS256, secret,
                   "{\"uid\":\"bob\",\"exp\":1800000100,\"aud\":\"runcast\",\"iss\":\"https://id.example\"}",
                   NULL);
    CHECK_EQ(verify(t, NOW, &claims), 0);
    CHECK_STREQ(claims.user, "bob");
    free(t);
    t = mint(JWT_ALG_HS256, secret,
             "{\"uid\":\"bob\",\"exp\":1800000100,\"aud\":[\"other\",\"runcast\"],\"iss\":\"https://id.example\"}",
             NULL);
    CHECK_EQ(verify(t, NOW, NULL), 0);
    free(t);
    t = mint(JWT_ALG_HS256, secret,
             "{\"uid\":\"bob\",\"exp\":1800000100,\"aud\":\"other\",\"iss\":\"https://id.example\"}", NULL);
    CHECK_EQ(verify(t, NOW, NULL), AUTH_ERR_AUDIENCE);
    free(t);
    t = mint(JWT_ALG_HS256, secret, "{\"uid\":\"bob\",\"exp\":1800000100,\"iss\":\"https://id.example\"}",
             NULL);
    CHECK_EQ(verify(t, NOW, NULL), AUTH_ERR_AUDIENCE);
    free(t);
    t = mint(JWT_ALG_HS256, secret,
             "{\"uid\":\"bob\",\"exp\":1800000100,\"aud\":\"runcast\",\"iss\":\"https://evil.example\"}",
             NULL);
    CHECK_EQ(verify(t, NOW, NULL), AUTH_ERR_ISSUER);
    free(t);
    /* the user claim is the configured one, a string; "sub" alone is not enough */
    t = mint(JWT_ALG_HS256, secret,
             "{\"sub\":\"bob\",\"exp\":1800000100,\"aud\":\"runcast\",\"iss\":\"https://id.example\"}",
             NULL);
    CHECK_EQ(verify(t, NOW, NULL), AUTH_ERR_CLAIMS);
    free(t);
    /* a user that cannot be a path parameter owns no session */
    t = mint(JWT_ALG_HS256, secret,
             "{\"uid\":\"bob/../x\",\"exp\":1800000100,\"aud\":\"runcast\",\"iss\":\"https://id.example\"}",
             NULL);
    CHECK_EQ(verify(t, NOW, &claims), 0);
    CHECK_STREQ(claims.user, "");
    free(t);
    auth_shutdown();
}

static void alg_none_and_foreign_algorithms_are_refused(void)
{
    init_secret();
    char *t = mint(JWT_ALG_NONE, NULL, "{\"sub\":\"a\",\"exp\":1800000100}", NULL);
    CHECK_EQ(verify(t, NOW, NULL), AUTH_ERR_ALG_NONE);
    free(t);
    /* RS256 and ES256 tokens mean nothing to a secret */
    t = mint(JWT_ALG_RS256, rsa_priv_pem, "{\"sub\":\"a\",\"exp\":1800000100}", NULL);
    CHECK_EQ(verify(t, NOW, NULL), AUTH_ERR_ALG);
    free(t);
    t = mint(JWT_ALG_ES256, ec_priv_pem, "{\"sub\":\"a\",\"exp\":1800000100}", NULL);
    CHECK_EQ(verify(t, NOW, NULL), AUTH_ERR_ALG);
    free(t);
    auth_shutdown();

    init_public_key(rsa_pub_path);
    t = mint(JWT_ALG_RS256, rsa_priv_pem, "{\"sub\":\"a\",\"exp\":1800000100}", NULL);
    CHECK_EQ(verify(t, NOW, NULL), 0);
    free(t);
    /* the classic confusion: HS256 with the public key's PEM as the secret */
    t = mint(JWT_ALG_HS256, rsa_pub_pem, "{\"sub\":\"a\",\"exp\":1800000100}", NULL);
    CHECK_EQ(verify(t, NOW, NULL), AUTH_ERR_ALG);
    free(t);
    t = mint(JWT_ALG_ES256, ec_priv_pem, "{\"sub\":\"a\",\"exp\":1800000100}", NULL);
    CHECK_EQ(verify(t, NOW, NULL), AUTH_ERR_ALG);
    free(t);
    t = mint(JWT_ALG_NONE, NULL, "{\"sub\":\"a\",\"exp\":1800000100}", NULL);
    CHECK_EQ(verify(t, NOW, NULL), AUTH_ERR_ALG_NONE);
    free(t);
    auth_shutdown();

    init_public_key(ec_pub_path);
    t = mint(JWT_ALG_ES256, ec_priv_pem, "{\"sub\":\"a\",\"exp\":1800000100}", NULL);
    CHECK_EQ(verify(t, NOW, NULL), 0);
    free(t);
    t = mint(JWT_ALG_RS256, rsa_priv_pem, "{\"sub\":\"a\",\"exp\":1800000100}", NULL);
    CHECK_EQ(verify(t, NOW, NULL), AUTH_ERR_ALG);
    free(t);
    auth_shutdown();
}

/* The PEM key is parsed once, by auth_init(); no check parses it again,
 * whether it accepts or refuses the token. */
static void public_keys_are_parsed_once_at_start(void)
{
    static const char *const paths[2] = {rsa_pub_path, ec_pub_path};
    const char *privs[2] = {rsa_priv_pem, ec_priv_pem};
    static const jwt_alg_t algs[2] = {JWT_ALG_RS256, JWT_ALG_ES256};
    for (int k = 0; k < 2; k++) {
        pem_key_parses = 0;
        init_public_key(paths[k]);
        CHECK_EQ(pem_key_parses, 1);
        char *good = mint(algs[k], privs[k], "{\"sub\":\"a\",\"exp\":1800000100}", NULL);
        char *bad = xstrdup(good);
        size_t len = strlen(bad);
        bad[len - 3] = bad[len - 3] == 'A' ? 'B' : 'A';
        for (int i = 0; i < 10; i++)
            CHECK_EQ(verify(bad, NOW, NULL), AUTH_ERR_SIGNATURE); /* refused: never cached */
        char claims[96];
        for (int i = 0; i < 10; i++) { /* accepted, each a cache miss */
            snprintf(claims, sizeof(claims), "{\"sub\":\"a\",\"exp\":1800000100,\"n\":%d}", i);
            char *t = mint(algs[k], privs[k], claims, NULL);
            CHECK_EQ(verify(t, NOW, NULL), 0);
            free(t);
        }
        CHECK_EQ(verify(good, NOW, NULL), 0);
        /* the signature of one token on another's claims; a cut signature */
        char *other = mint(algs[k], privs[k], "{\"sub\":\"b\",\"exp\":1800000100}", NULL);
        char swapped[4096];
        snprintf(swapped, sizeof(swapped), "%.*s%s", (int)(strrchr(other, '.') - other), other,
                 strrchr(good, '.'));
        CHECK_EQ(verify(swapped, NOW, NULL), AUTH_ERR_SIGNATURE);
        snprintf(swapped, sizeof(swapped), "%.*s", (int)strlen(good) - 4, good);
        CHECK_EQ(verify(swapped, NOW, NULL), AUTH_ERR_SIGNATURE);
        CHECK_EQ(pem_key_parses, 1);
        free(other);
        free(good);
        free(bad);
        auth_shutdown();
    }
}

static void tampered_and_malformed_tokens_are_refused(void)
{
    init_secret();
    char *t = mint(JWT_ALG_HS256, secret, "{\"sub\":\"alice\",\"exp\":1800000100}", NULL);
    size_t len = strlen(t);
    /* another signature */
    char *bad = xstrdup(t);
    bad[len - 2] = bad[len - 2] == 'A' ? 'B' : 'A';
    CHECK_EQ(verify(bad, NOW, NULL), AUTH_ERR_SIGNATURE);
    free(bad);
    /* the same signature on other claims */
    char *other = mint(JWT_ALG_HS256, secret, "{\"sub\":\"mallory\",\"exp\":1800000100}", NULL);
    char *sig = strrchr(t, '.');
    char *forged = xmalloc(strlen(other) + strlen(sig) + 1);
    memcpy(forged, other, (size_t)(strrchr(other, '.') - other));
    strcpy(forged + (strrchr(other, '.') - other), sig);
    CHECK_EQ(verify(forged, NOW, NULL), AUTH_ERR_SIGNATURE);
    free(forged);
    free(other);
    /* the signature cut off */
    bad = xstrndup(t, (size_t)(sig - t) + 1);
    CHECK_EQ(verify(bad, NOW, NULL), AUTH_ERR_SIGNATURE);
    free(bad);
    free(t);
    /* a secret is checked with the secret's key, not another */
    t = mint(JWT_ALG_HS256, "another secret of at least thirty-two bytes",
             "{\"sub\":\"alice\",\"exp\":1800000100}", NULL);
    CHECK_EQ(verify(t, NOW, NULL), AUTH_ERR_SIGNATURE);
    free(t);

    static const char *const shapes[] = {
        "", "abc", "a.b", "a.b.c.d", "....", "eyJhbGciOiJIUzI1NiJ9.e30.a b",
        "eyJhbGciOiJIUzI1NiJ9.e30.abc=", "bm90IGpzb24.e30.abc", /* header "not json" */
        "W10.e30.abc",                                            /* header [] */
        "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.abc",                  /* claims "not json" */
        "eyJhbGciOiJIUzI1NiIsImFsZyI6IkhTMjU2In0.e30.abc",       /* duplicate alg */
        "eyJ0eXAiOiJKV1QifQ.e30.abc",                             /* no alg */
    };
    for (size_t i = 0; i < RC_ARRAY_SIZE(shapes); i++) {
        int err = verify(shapes[i], NOW, NULL);
        if (err != AUTH_ERR_MALFORMED)
            fprintf(stderr, "  shape %zu: %d\n", i, err);
        CHECK_EQ(err, AUTH_ERR_MALFORMED);
    }
    /* crit and an unknown typ are refused before the signature is looked at */
    t = mint(JWT_ALG_HS256, secret, "{\"sub\":\"a\",\"exp\":1800000100}", "{\"crit\":[\"x\"],\"x\":1}");
    CHECK_EQ(verify(t, NOW, NULL), AUTH_ERR_MALFORMED);
    free(t);
    /* {"alg":"HS256","typ":"JWE"} (libjwt always writes typ JWT) */
    CHECK_EQ(verify("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXRSJ9.e30.abc", NOW, NULL), AUTH_ERR_MALFORMED);
    /* "alg" is case-sensitive: "hs256" is no algorithm */
    CHECK_EQ(verify("eyJhbGciOiJoczI1NiJ9.e30.abc", NOW, NULL), AUTH_ERR_ALG);
    CHECK_EQ(verify("eyJhbGciOiJOT05FIn0.e30.", NOW, NULL), AUTH_ERR_ALG_NONE);

    /* any length: over the cap, and a long valid-looking one */
    char *huge = xmalloc(AUTH_MAX_TOKEN * 4);
    memset(huge, 'A', AUTH_MAX_TOKEN * 4 - 1);
    huge[AUTH_MAX_TOKEN * 4 - 1] = '\0';
    huge[10] = huge[20] = '.';
    CHECK_EQ(auth_verify_token(huge, AUTH_MAX_TOKEN + 1, NOW, &(struct auth_claims){0}),
             AUTH_ERR_MALFORMED);
    CHECK_EQ(verify(huge, NOW, NULL), AUTH_ERR_MALFORMED);
    CHECK_EQ(auth_verify_token(huge, AUTH_MAX_TOKEN, NOW, &(struct auth_claims){0}),
             AUTH_ERR_MALFORMED);
    free(huge);
    auth_shutdown();
    /* without --auth jwt no token is valid */
    CHECK_EQ(verify("eyJhbGciOiJIUzI1NiJ9.e30.abc", NOW, NULL), AUTH_ERR_ALG);
}

static void accepted_tokens_are_remembered_until_exp(void)
{
    init_secret(); /* 30 s leeway */
    struct auth_claims claims;
    char *t = mint(JWT_ALG_HS256, secret, "{\"sub\":\"alice\",\"exp\":1800000100,\"role\":\"admin\"}",
                   NULL);
    CHECK_EQ(verify(t, NOW, &claims), 0);
    CHECK_EQ(auth.cache_hits, 0);
    memset(&claims, 0, sizeof(claims));
    CHECK_EQ(verify(t, NOW + 1, &claims), 0);
    CHECK_EQ(auth.cache_hits, 1);
    CHECK_STREQ(claims.user, "alice");
    CHECK(claims.exp == 1800000100.0);
    CHECK_EQ(claims.admin, 1);
    /* a hit still expires */
    CHECK_EQ(verify(t, NOW + 129, NULL), 0);
    CHECK_EQ(verify(t, NOW + 130, NULL), AUTH_ERR_EXPIRED);
    CHECK_EQ(auth.cache_hits, 3);
    /* refused tokens are not remembered: each is checked in full */
    char *bad = xstrdup(t);
    bad[strlen(bad) - 2] = bad[strlen(bad) - 2] == 'A' ? 'B' : 'A';
    CHECK_EQ(verify(bad, NOW, NULL), AUTH_ERR_SIGNATURE);
    CHECK_EQ(verify(bad, NOW, NULL), AUTH_ERR_SIGNATURE);
    CHECK_EQ(auth.cache_hits, 3);
    char *late = mint(JWT_ALG_HS256, secret, "{\"sub\":\"bob\",\"exp\":1800009999,\"nbf\":1800000100}",
                      NULL);
    CHECK_EQ(verify(late, NOW, NULL), AUTH_ERR_NOT_YET_VALID);
    CHECK_EQ(verify(late, NOW + 100, NULL), 0);
    CHECK_EQ(auth.cache_hits, 3);
    free(late);
    free(bad);
    free(t);
    /* a new configuration forgets every verdict */
    init_secret();
    t = mint(JWT_ALG_HS256, secret, "{\"sub\":\"alice\",\"exp\":1800000100}", NULL);
    CHECK_EQ(verify(t, NOW, NULL), 0);
    CHECK_EQ(auth.cache_hits, 0);
    free(t);
    auth_shutdown();
}

static void bad_key_files_are_refused_at_start(void)
{
    struct auth_config cfg = {.jwt = 1, .public_key_path = "/nonexistent/key.pem"};
    CHECK_EQ(auth_init(&cfg), -EINVAL);
    cfg.public_key_path = rsa_priv_path; /* a private key is not a public key */
    CHECK_EQ(auth_init(&cfg), -EINVAL);
    CHECK(auth.key == NULL);
    char path[300];
    snprintf(path, sizeof(path), "%s/small.pem", tmpdir);
    EVP_PKEY *small = EVP_RSA_gen(1024);
    char *pem = pem_of(small, 0);
    write_file(path, pem);
    cfg.public_key_path = path;
    CHECK_EQ(auth_init(&cfg), -EINVAL);
    unlink(path);
    free(pem);
    EVP_PKEY_free(small);
    auth_shutdown();
}

/* ---- the gate ---------------------------------------------------------------- */

/* Parses raw into req (the bytes must outlive it). */
static void parse(const char *raw, struct http_request *req)
{
    struct http_limits limits = {16384, 1 << 20, 8192};
    memset(req, 0, sizeof(*req));
    CHECK(http_parse_request(raw, strlen(raw), &limits, req) > 0);
}

/* Runs the gate on raw; returns its result and fills c. */
static int gate(const char *raw, const void *listener, struct conn *c, struct auth_grant *grant)
{
    struct http_request req;
    struct route_params params;
    parse(raw, &req);
    memset(c, 0, sizeof(*c));
    int route = router_match(req.path, req.path_len, &params);
    int rc = auth_check_request(c, &req, route, &params, listener, grant);
    http_request_free(&req);
    return rc;
}

static void gate_binds_the_token_to_the_path_user(void)
{
    init_secret();
    char exp[32];
    double now = time_wall_seconds();
    snprintf(exp, sizeof(exp), "%.0f", now + 600);
    char claims[128];
    snprintf(claims, sizeof(claims), "{\"sub\":\"alice\",\"exp\":%s}", exp);
    char *t = mint(JWT_ALG_HS256, secret, claims, NULL);
    char raw[4096];
    struct conn c;
    struct auth_grant grant;

    snprintf(raw, sizeof(raw), "GET /apps/a/users/alice/sessions/s/run HTTP/1.1\r\nHost: x\r\n"
             "Authorization: Bearer %s\r\n\r\n", t);
    CHECK_EQ(gate(raw, NULL, &c, &grant), 1);
    CHECK_EQ(c.answers, 0);
    CHECK(grant.expires_at == atof(exp) + 30); /* exp + leeway */
    uint64_t deadline = auth_grant_deadline_ms(&grant);
    CHECK(deadline > time_mono_ms() + 620000 && deadline <= time_mono_ms() + 631000);

    snprintf(raw, sizeof(raw), "POST /apps/a/users/bob/sessions/s/run HTTP/1.1\r\nHost: x\r\n"
             "Authorization: bearer   %s\r\nContent-Length: 0\r\n\r\n", t);
    CHECK_EQ(gate(raw, NULL, &c, &grant), 0);
    CHECK_EQ(c.status, 403);
    CHECK_STREQ(c.code, "forbidden");

    /* the user's token cannot read every session, nor the metrics */
    snprintf(raw, sizeof(raw), "GET /task-status HTTP/1.1\r\nHost: x\r\n"
             "Authorization: Bearer %s\r\n\r\n", t);
    CHECK_EQ(gate(raw, NULL, &c, &grant), 0);
    CHECK_EQ(c.status, 403);

    /* no token; a bad one; another scheme */
    CHECK_EQ(gate("DELETE /apps/a/users/alice/sessions/s HTTP/1.1\r\nHost: x\r\n\r\n", NULL, &c,
                  &grant), 0);
    CHECK_EQ(c.status, 401);
    CHECK_STREQ(c.code, "unauthorized");
    CHECK_STREQ(c.headers, "WWW-Authenticate: Bearer realm=\"runcast\"\r\n");
    CHECK_EQ(gate("GET /apps/a/users/alice/sessions/s/task-status HTTP/1.1\r\nHost: x\r\n"
                  "Authorization: Bearer abc.def.ghi\r\n\r\n", NULL, &c, &grant), 0);
    CHECK_EQ(c.status, 401);
    CHECK_STREQ(c.code, "invalid_token");
    CHECK(strstr(c.headers, "error=\"invalid_token\"") != NULL);
    CHECK_EQ(gate("GET /apps/a/users/alice/sessions/s/task-status HTTP/1.1\r\nHost: x\r\n"
                  "Authorization: Basic YWxpY2U6eA==\r\n\r\n", NULL, &c, &grant), 0);
    CHECK_EQ(c.status, 401);

    /* open routes, and a 404 / 400 path passes through to be answered */
    CHECK_EQ(gate("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", NULL, &c, &grant), 1);
    CHECK_EQ(gate("GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n", NULL, &c, &grant), 1);
    CHECK_EQ(gate("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", NULL, &c, &grant), 1);
    CHECK_EQ(gate("GET /apps/a/users/a%20b/sessions/s/run HTTP/1.1\r\nHost: x\r\n\r\n", NULL, &c,
                  &grant), 1);
    free(t);

    /* an admin token reads /task-status and /metrics, not another's session */
    snprintf(claims, sizeof(claims), "{\"sub\":\"ops\",\"role\":\"admin\",\"exp\":%s}", exp);
    t = mint(JWT_ALG_HS256, secret, claims, NULL);
    snprintf(raw, sizeof(raw), "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", t);
    CHECK_EQ(gate(raw, NULL, &c, &grant), 1);
    snprintf(raw, sizeof(raw), "GET /apps/a/users/alice/sessions/s/run HTTP/1.1\r\nHost: x\r\n"
             "Authorization: Bearer %s\r\n\r\n", t);
    CHECK_EQ(gate(raw, NULL, &c, &grant), 0);
    CHECK_EQ(c.status, 403);
    free(t);
    auth_shutdown();
}

static void gate_reads_query_and_cookie_tokens(void)
{
    struct auth_config cfg = {.jwt = 1, .secret = secret, .user_claim = "sub", .cookie = "rc_token"};
    CHECK_EQ(auth_init(&cfg), 0);
    char claims[128];
    snprintf(claims, sizeof(claims), "{\"sub\":\"alice\",\"exp\":%.0f}", time_wall_seconds() + 600);
    char *t = mint(JWT_ALG_HS256, secret, claims, NULL);
    char raw[4096];
    struct conn c;
    struct auth_grant grant;

    snprintf(raw, sizeof(raw), "GET /apps/a/users/alice/sessions/s/run?from=live&access_token=%s "
             "HTTP/1.1\r\nHost: x\r\n\r\n", t);
    CHECK_EQ(gate(raw, NULL, &c, &grant), 1);
    snprintf(raw, sizeof(raw), "GET /apps/a/users/alice/sessions/s/run HTTP/1.1\r\nHost: x\r\n"
             "Cookie: theme=dark; rc_token=%s; other=1\r\n\r\n", t);
    CHECK_EQ(gate(raw, NULL, &c, &grant), 1);
    snprintf(raw, sizeof(raw), "GET /apps/a/users/alice/sessions/s/run HTTP/1.1\r\nHost: x\r\n"
             "Cookie: xrc_token=%s\r\n\r\n", t);
    CHECK_EQ(gate(raw, NULL, &c, &grant), 0);
    CHECK_EQ(c.status, 401);
    CHECK_STREQ(c.code, "unauthorized");
    /* an empty or oversized query token is a bad token, not a missing one */
    CHECK_EQ(gate("GET /apps/a/users/alice/sessions/s/run?access_token= HTTP/1.1\r\nHost: x\r\n\r\n",
                  NULL, &c, &grant), 0);
    CHECK_STREQ(c.code, "invalid_token");
    struct buf big = {0};
    buf_append_str(&big, "GET /apps/a/users/alice/sessions/s/run?access_token=");
    for (int i = 0; i < AUTH_MAX_TOKEN + 10; i++)
        buf_append(&big, "A", 1);
    buf_append_str(&big, " HTTP/1.1\r\nHost: x\r\n\r\n");
    struct http_request req;
    struct http_limits limits = {65536, 1 << 20, 65536};
    memset(&req, 0, sizeof(req));
    CHECK(http_parse_request(big.data, big.len, &limits, &req) > 0);
    struct route_params params;
    memset(&c, 0, sizeof(c));
    int route = router_match(req.path, req.path_len, &params);
    CHECK_EQ(auth_check_request(&c, &req, route, &params, NULL, &grant), 0);
    CHECK_STREQ(c.code, "invalid_token");
    http_request_free(&req);
    buf_free(&big);
    free(t);
    auth_shutdown();
}

static void cors_preflight_and_disallowed_origins(void)
{
    struct auth_config cfg = {.jwt = 0, .allow_origins = "https://app.example,http://localhost:3000"};
    CHECK_EQ(auth_init(&cfg), 0);
    struct conn c;
    struct auth_grant grant;

    CHECK_EQ(gate("OPTIONS /apps/a/users/u/sessions/s/run HTTP/1.1\r\nHost: x\r\n"
                  "Origin: https://app.example\r\nAccess-Control-Request-Method: POST\r\n"
                  "Access-Control-Request-Headers: authorization, content-type\r\n\r\n",
                  NULL, &c, &grant), 0);
    CHECK_EQ(c.status, 204);
    CHECK(strstr(c.answer, "Access-Control-Allow-Origin: https://app.example\r\n") != NULL);
    CHECK(strstr(c.answer, "Access-Control-Allow-Credentials: true\r\n") != NULL);
    CHECK(strstr(c.answer, "Vary: Origin\r\n") != NULL);
    CHECK_STREQ(c.headers, "Access-Control-Allow-Methods: GET, POST, DELETE\r\n"
                "Access-Control-Allow-Headers: Authorization, Content-Type, Last-Event-ID\r\n"
                "Access-Control-Max-Age: 600\r\n");

    CHECK_EQ(gate("OPTIONS /apps/a/users/u/sessions/s/run HTTP/1.1\r\nHost: x\r\n"
                  "Origin: https://evil.example\r\nAccess-Control-Request-Method: POST\r\n\r\n",
                  NULL, &c, &grant), 0);
    CHECK_EQ(c.status, 403);
    CHECK(strstr(c.answer, "Access-Control") == NULL);
    CHECK_EQ(gate("POST /apps/a/users/u/sessions/s/run HTTP/1.1\r\nHost: x\r\n"
                  "Origin: https://evil.example\r\nContent-Length: 0\r\n\r\n", NULL, &c, &grant), 0);
    CHECK_EQ(c.status, 403);
    CHECK_STREQ(c.code, "origin_not_allowed");
    CHECK(strstr(c.answer, "Access-Control") == NULL);
    CHECK_EQ(gate("DELETE /apps/a/users/u/sessions/s HTTP/1.1\r\nHost: x\r\n"
                  "Origin: null\r\n\r\n", NULL, &c, &grant), 0);
    CHECK_EQ(c.status, 403);
    /* a GET from elsewhere is answered, without CORS headers */
    CHECK_EQ(gate("GET /apps/a/users/u/sessions/s/task-status HTTP/1.1\r\nHost: x\r\n"
                  "Origin: https://evil.example\r\n\r\n", NULL, &c, &grant), 1);
    CHECK(strstr(c.answer, "Access-Control") == NULL);
    /* the request's own origin needs no listing; an allowed one gets headers */
    CHECK_EQ(gate("POST /apps/a/users/u/sessions/s/run HTTP/1.1\r\nHost: gw.example:8000\r\n"
                  "Origin: http://gw.example:8000\r\nContent-Length: 0\r\n\r\n", NULL, &c, &grant), 1);
    CHECK_EQ(gate("POST /apps/a/users/u/sessions/s/run HTTP/1.1\r\nHost: x\r\n"
                  "Origin: http://localhost:3000\r\nContent-Length: 0\r\n\r\n", NULL, &c, &grant), 1);
    CHECK(strstr(c.answer, "Access-Control-Allow-Origin: http://localhost:3000\r\n") != NULL);
    /* a plain OPTIONS gets Allow */
    CHECK_EQ(gate("OPTIONS /healthz HTTP/1.1\r\nHost: x\r\n\r\n", NULL, &c, &grant), 0);
    CHECK_EQ(c.status, 204);
    CHECK_STREQ(c.headers, "Allow: GET, HEAD, OPTIONS\r\n");
    auth_shutdown();

    cfg.allow_origins = "*";
    CHECK_EQ(auth_init(&cfg), 0);
    CHECK_EQ(gate("POST /apps/a/users/u/sessions/s/run HTTP/1.1\r\nHost: x\r\n"
                  "Origin: https://anywhere.example\r\nContent-Length: 0\r\n\r\n", NULL, &c, &grant), 1);
    CHECK(strstr(c.answer, "Access-Control-Allow-Origin: *\r\n") != NULL);
    CHECK(strstr(c.answer, "Credentials") == NULL);
    auth_shutdown();
}

static void admin_listener_serves_only_admin_routes_without_tokens(void)
{
    init_secret();
    struct conn c;
    struct auth_grant grant;
    CHECK_EQ(gate("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &auth_admin_listener, &c, &grant), 1);
    CHECK_EQ(gate("GET /task-status?all=1 HTTP/1.1\r\nHost: x\r\n\r\n", &auth_admin_listener, &c,
                  &grant), 1);
    CHECK_EQ(gate("GET /apps/a/users/u/sessions/s/run HTTP/1.1\r\nHost: x\r\n\r\n",
                  &auth_admin_listener, &c, &grant), 0);
    CHECK_EQ(c.status, 404);
    /* the main listener wants a token for the same routes */
    CHECK_EQ(gate("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", NULL, &c, &grant), 0);
    CHECK_EQ(c.status, 401);
    auth_shutdown();
}

/* The gate's verdict on GET path with this Host (NULL: no Host line, as
 * HTTP/1.0 may send): 1 let through, else the status it answered. */
static int host_verdict(const char *host, const char *path)
{
    char raw[512];
    struct conn c;
    struct auth_grant grant;
    if (host)
        snprintf(raw, sizeof(raw), "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, host);
    else
        snprintf(raw, sizeof(raw), "GET %s HTTP/1.0\r\n\r\n", path);
    int rc = gate(raw, NULL, &c, &grant);
    if (rc == 0 && c.status == 421)
        CHECK_STREQ(c.code, "host_not_allowed");
    return rc == 1 ? 1 : c.status;
}

static void gate_serves_only_allowed_hosts(void)
{
    static const char *const path = "/apps/a/users/u/sessions/s/run";
    /* the default list: --listen's host, localhost, any IP address */
    struct auth_config cfg = {.allow_hosts = "", .listen_host = "gw.internal"};
    CHECK_EQ(auth_init(&cfg), 0);
    static const char *const allowed[] = {
        "localhost", "localhost:8000", "LOCALHOST:1", "127.0.0.1", "127.0.0.1:8000",
        "[::1]", "[::1]:8000", "10.1.2.3:80", "[2001:db8::7]", "gw.internal:8000", "gw.internal",
    };
    for (size_t i = 0; i < RC_ARRAY_SIZE(allowed); i++) {
        if (host_verdict(allowed[i], path) != 1)
            fprintf(stderr, "  refused Host %s\n", allowed[i]);
        CHECK_EQ(host_verdict(allowed[i], path), 1);
    }
    static const char *const refused[] = {
        "evil.example", "evil.example:8000", "localhost.evil.example", "127.0.0.1.nip.io",
        "127.1", "localhost.", "[::1", "[::1]x", "localhost:80x", "localhost:123456", "",
        "[evil.example]", "gw.internal.evil.example",
    };
    for (size_t i = 0; i < RC_ARRAY_SIZE(refused); i++) {
        if (host_verdict(refused[i], path) != 421)
            fprintf(stderr, "  let in Host %s\n", refused[i]);
        CHECK_EQ(host_verdict(refused[i], path), 421);
    }
    CHECK_EQ(host_verdict(NULL, path), 1);                /* no Host: no browser */
    CHECK_EQ(host_verdict("evil.example", "/healthz"), 1); /* probes use any Host */
    CHECK_EQ(host_verdict("evil.example", "/readyz"), 1);
    CHECK_EQ(host_verdict("evil.example", "/"), 421);
    CHECK_EQ(host_verdict("evil.example", "/metrics"), 421);
    CHECK_EQ(host_verdict("evil.example", "/nothing/here"), 421);
    auth_shutdown();

    /* a list replaces the default; ports are ignored; a bare IPv6 works */
    cfg.allow_hosts = "App.Example.com:8443,::1,[2001:db8::1]:9";
    CHECK_EQ(auth_init(&cfg), 0);
    CHECK_EQ(host_verdict("app.example.com", path), 1);
    CHECK_EQ(host_verdict("app.example.com:1", path), 1);
    CHECK_EQ(host_verdict("[::1]:8000", path), 1);
    CHECK_EQ(host_verdict("[2001:db8::1]", path), 1);
    CHECK_EQ(host_verdict("localhost", path), 421);
    CHECK_EQ(host_verdict("127.0.0.1", path), 421);
    CHECK_EQ(host_verdict("gw.internal", path), 421);
    auth_shutdown();

    cfg.allow_hosts = "*";
    CHECK_EQ(auth_init(&cfg), 0);
    CHECK_EQ(host_verdict("evil.example:8000", path), 1);
    auth_shutdown();
    /* not configured (NULL), as before auth_init(): not checked */
    CHECK_EQ(host_verdict("evil.example", path), 1);
}

/* ---- per-user caps ---------------------------------------------------------- */

static void quota_counts_runs_and_streams_per_user(void)
{
    quota_init(2, 1, 0);
    CHECK_EQ(quota_run_begin("alice"), 0);
    CHECK_EQ(quota_run_begin("alice"), 0);
    CHECK_EQ(quota_run_begin("alice"), -EDQUOT); /* counted all the same */
    CHECK_EQ(quota_run_begin("bob"), 0);
    quota_run_end("alice");
    CHECK_EQ(quota_run_begin("alice"), -EDQUOT);
    quota_run_end("alice");
    quota_run_end("alice");
    CHECK_EQ(quota_run_begin("alice"), 0);
    void *h1, *h2, *h3;
    CHECK_EQ(quota_subscriber_begin("alice", &h1), 0);
    CHECK_EQ(quota_subscriber_begin("alice", &h2), -EDQUOT);
    CHECK(h2 == NULL);
    CHECK_EQ(quota_subscriber_begin("carol", &h3), 0);
    CHECK_EQ(quota_user_count(), 3);
    quota_subscriber_end(h3);
    quota_subscriber_end(h2); /* NULL: nothing */
    CHECK_EQ(quota_user_count(), 2);
    quota_run_end("alice");
    quota_run_end("alice");
    quota_run_end("bob");
    quota_subscriber_end(h1);
    CHECK_EQ(quota_user_count(), 0);
    /* many users: the table grows and empties again */
    char name[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof(name), "user%d", i);
        CHECK_EQ(quota_run_begin(name), 0);
    }
    CHECK_EQ(quota_user_count(), 1000);
    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof(name), "user%d", i);
        quota_run_end(name);
    }
    CHECK_EQ(quota_user_count(), 0);
    quota_shutdown();
    /* no cap: nothing counted */
    quota_init(0, 0, 0);
    CHECK_EQ(quota_run_begin("x"), 0);
    CHECK_EQ(quota_subscriber_begin("x", &h1), 0);
    CHECK(h1 == NULL);
    CHECK_EQ(quota_user_count(), 0);
    quota_shutdown();
}

static void quota_caps_sessions_per_user(void)
{
    quota_init(0, 0, 2);
    CHECK_EQ(quota_session_begin("alice"), 0);
    CHECK_EQ(quota_session_begin("alice"), 0);
    CHECK_EQ(quota_session_begin("alice"), -EDQUOT); /* not counted */
    CHECK_EQ(quota_session_begin("bob"), 0);
    CHECK_EQ(quota_user_count(), 2);
    quota_session_end("alice");
    CHECK_EQ(quota_session_begin("alice"), 0);
    CHECK_EQ(quota_session_begin("alice"), -EDQUOT);
    quota_session_end("alice");
    quota_session_end("alice");
    quota_session_end("alice"); /* one too many: ignored */
    quota_session_end("bob");
    CHECK_EQ(quota_user_count(), 0);
    /* refused at the cap, a user with nothing else counted leaves no entry */
    quota_init(0, 0, 1);
    CHECK_EQ(quota_session_begin("carol"), 0);
    CHECK_EQ(quota_session_begin("carol"), -EDQUOT);
    CHECK_EQ(quota_user_count(), 1);
    quota_session_end("carol");
    CHECK_EQ(quota_user_count(), 0);
    quota_shutdown();
    /* no cap: nothing counted */
    quota_init(0, 0, 0);
    for (int i = 0; i < 5; i++)
        CHECK_EQ(quota_session_begin("x"), 0);
    CHECK_EQ(quota_user_count(), 0);
    quota_session_end("x");
    quota_shutdown();
}

int main(void)
{
    make_keys();
    RUN_TEST(hs256_token_gives_user_exp_and_admin);
    RUN_TEST(times_are_checked_with_leeway);
    RUN_TEST(audience_issuer_and_user_claim);
    RUN_TEST(alg_none_and_foreign_algorithms_are_refused);
    RUN_TEST(tampered_and_malformed_tokens_are_refused);
    RUN_TEST(public_keys_are_parsed_once_at_start);
    RUN_TEST(accepted_tokens_are_remembered_until_exp);
    RUN_TEST(bad_key_files_are_refused_at_start);
    RUN_TEST(gate_binds_the_token_to_the_path_user);
    RUN_TEST(gate_reads_query_and_cookie_tokens);
    RUN_TEST(cors_preflight_and_disallowed_origins);
    RUN_TEST(admin_listener_serves_only_admin_routes_without_tokens);
    RUN_TEST(gate_serves_only_allowed_hosts);
    RUN_TEST(quota_counts_runs_and_streams_per_user);
    RUN_TEST(quota_caps_sessions_per_user);
    remove_keys();
    return test_report("test_auth");
}
