/* auth.c: access control (see auth.h).
 *
 * Token checks run in a fixed order, cheapest and most decisive first: the
 * shape and size, then the header's algorithm against the configured key
 * (libjwt 1.10 verifies with whatever algorithm the token names, so a token
 * saying HS256 would otherwise be checked with the RSA public key's PEM text
 * as its HMAC secret), then the signature, then the claims. The header and
 * the claims are decoded here with jansson, strictly (duplicate names
 * refused); the signature covers exactly those bytes.
 *
 * HS signatures are checked by libjwt with the secret. RS and ES signatures
 * are checked here with OpenSSL's EVP on the key parsed once at start-up:
 * libjwt 1.10 takes a key only as PEM bytes and parses them on every call
 * (about 0.3 ms, most of an RS256 check), which a stream of refused tokens
 * would pay each time. Verifying then costs tens of microseconds, on the
 * loop thread. A browser sends the same token with every request and every
 * stream reconnection, so the verdict for an accepted token is remembered:
 * a small direct-mapped cache keyed by the token's SHA-256. Only exp can
 * change the verdict for the same bytes (nbf has passed already when a
 * token is accepted), and it is checked on every hit.
 */
#include "auth.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <math.h>
#include <jwt.h>
#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

#include "log.h"
#include "router.h"
#include "server.h"

/* A key file larger than this is not a public key. */
#define AUTH_MAX_KEY_FILE (64 * 1024)
/* Preflight answers may be cached by the browser this long (seconds). */
#define AUTH_PREFLIGHT_MAX_AGE 600
#define AUTH_ALLOWED_HEADERS "Authorization, Content-Type, Last-Event-ID"

#define ALG_BIT(a) (1u << (a))

/* Accepted tokens remembered (direct-mapped: a new one replaces the one in
 * its slot). */
#define AUTH_CACHE_SLOTS 1024

struct cache_entry {
    unsigned char digest[32]; /* SHA-256 of the token; all zero: empty */
    struct auth_claims claims;
};

const struct auth_listener auth_admin_listener = {.admin = 1};

/* What auth_init() copied. Strings are owned; NULL means "not set". */
static struct {
    int jwt;
    unsigned allowed_algs;  /* ALG_BIT(jwt_alg_t) the key verifies */
    unsigned char *key;     /* the HMAC secret, or NULL with a public key */
    size_t key_len;
    EVP_PKEY *public_key;   /* --jwt-public-key, parsed once by auth_init() */
    char *user_claim;
    char *audience;
    char *issuer;
    char *cookie;
    double leeway_s;
    char *admin_name;
    char *admin_value;      /* NULL: the admin claim must be true */
    char **origins;
    size_t origin_count;
    int any_origin;         /* "*": any origin, no credentials */
    int check_hosts;        /* 0: every Host is served (allow_hosts NULL) */
    int any_host;           /* --allow-host "*" */
    int host_addresses;     /* the default list: every IPv4 or [IPv6] address */
    char **hosts;           /* allowed names, without port; IPv6 in brackets */
    size_t host_count;
    struct cache_entry *cache; /* AUTH_CACHE_SLOTS entries, with --auth jwt */
    uint64_t cache_hits;
} auth;

static char *dup_or_null(const char *s)
{
    return s && *s ? xstrdup(s) : NULL;
}

/* Reads and parses a PEM public key file (at start-up: blocking is fine
 * there) into auth.public_key, which every RS or ES check then uses, and
 * picks the algorithms it verifies: RS256/384/512 for RSA (2048 bits or
 * more), the one ES algorithm matching an EC key's curve. Returns 0 or
 * -EINVAL after printing one line. */
static int load_public_key(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "runcast: cannot read --jwt-public-key %s: %s\n", path, strerror(errno));
        return -EINVAL;
    }
    unsigned char *text = xmalloc(AUTH_MAX_KEY_FILE + 1);
    size_t n = fread(text, 1, AUTH_MAX_KEY_FILE + 1, f);
    fclose(f);
    const char *why = NULL;
    EVP_PKEY *pkey = NULL;
    if (n == 0 || n > AUTH_MAX_KEY_FILE) {
        why = "empty or larger than 64k";
    } else {
        BIO *bio = BIO_new_mem_buf(text, (int)n);
        pkey = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
        BIO_free(bio);
        if (pkey == NULL)
            why = "not a PEM public key (-----BEGIN PUBLIC KEY-----)";
    }
    if (pkey != NULL) {
        char group[64] = "";
        switch (EVP_PKEY_get_base_id(pkey)) {
        case EVP_PKEY_RSA:
            if (EVP_PKEY_get_bits(pkey) < 2048)
                why = "an RSA key shorter than 2048 bits";
            auth.allowed_algs = ALG_BIT(JWT_ALG_RS256) | ALG_BIT(JWT_ALG_RS384) |
                                ALG_BIT(JWT_ALG_RS512);
            break;
        case EVP_PKEY_EC:
            EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group,
                                           sizeof(group), NULL);
            if (strcmp(group, "prime256v1") == 0)
                auth.allowed_algs = ALG_BIT(JWT_ALG_ES256);
            else if (strcmp(group, "secp384r1") == 0)
                auth.allowed_algs = ALG_BIT(JWT_ALG_ES384);
            else if (strcmp(group, "secp521r1") == 0)
                auth.allowed_algs = ALG_BIT(JWT_ALG_ES512);
            else
                why = "an EC key on a curve other than P-256, P-384 or P-521";
            break;
        default:
            why = "neither an RSA nor an EC key";
            break;
        }
    }
    free(text);
    if (why) {
        fprintf(stderr, "runcast: --jwt-public-key %s: %s\n", path, why);
        EVP_PKEY_free(pkey);
        return -EINVAL;
    }
    auth.public_key = pkey;
    return 0;
}

/* Splits "a,b,c" into auth.origins; "*" alone sets any_origin. */
static void parse_origins(const char *list)
{
    if (list == NULL || *list == '\0')
        return;
    if (strcmp(list, "*") == 0) {
        auth.any_origin = 1;
        return;
    }
    for (const char *p = list;;) {
        size_t len = strcspn(p, ",");
        if (len > 0) {
            auth.origins = xrealloc(auth.origins, (auth.origin_count + 1) * sizeof(char *));
            auth.origins[auth.origin_count++] = xstrndup(p, len);
        }
        if (p[len] == '\0')
            break;
        p += len + 1;
    }
}

static void add_host(const char *name, size_t len)
{
    auth.hosts = xrealloc(auth.hosts, (auth.host_count + 1) * sizeof(char *));
    if (len > 0 && name[0] != '[' && memchr(name, ':', len)) { /* a bare IPv6 address */
        char *bracketed = xmalloc(len + 3);
        snprintf(bracketed, len + 3, "[%.*s]", (int)len, name);
        auth.hosts[auth.host_count++] = bracketed;
    } else {
        auth.hosts[auth.host_count++] = xstrndup(name, len);
    }
}

/* The --allow-host list (see auth_config.allow_hosts) into auth.hosts:
 * each entry without its port ("[::1]:8000" -> "[::1]", "a.example:80"
 * -> "a.example", "::1" -> "[::1]"). */
static void parse_hosts(const struct auth_config *cfg)
{
    const char *list = cfg->allow_hosts;
    if (list == NULL)
        return;
    auth.check_hosts = 1;
    if (*list == '\0') {
        if (cfg->listen_host && *cfg->listen_host)
            add_host(cfg->listen_host, strlen(cfg->listen_host));
        if (cfg->admin_listen_host && *cfg->admin_listen_host)
            add_host(cfg->admin_listen_host, strlen(cfg->admin_listen_host));
        add_host("localhost", strlen("localhost"));
        auth.host_addresses = 1;
        return;
    }
    if (strcmp(list, "*") == 0) {
        auth.any_host = 1;
        return;
    }
    for (const char *p = list;;) {
        size_t len = strcspn(p, ",");
        size_t name_len = len;
        if (len > 0 && p[0] == '[') {
            const char *close = memchr(p, ']', len);
            name_len = close ? (size_t)(close - p) + 1 : len;
        } else if (memchr(p, ':', len) == memrchr(p, ':', len)) { /* not a bare IPv6 */
            name_len = strcspn(p, ":,");
        }
        if (name_len > 0)
            add_host(p, name_len);
        if (p[len] == '\0')
            break;
        p += len + 1;
    }
}

int auth_init(const struct auth_config *cfg)
{
    auth_shutdown();
    auth.jwt = cfg->jwt;
    parse_origins(cfg->allow_origins);
    parse_hosts(cfg);
    if (!cfg->jwt)
        return 0;
    if (cfg->public_key_path && *cfg->public_key_path) {
        if (load_public_key(cfg->public_key_path) < 0) {
            auth_shutdown();
            return -EINVAL;
        }
    } else if (cfg->secret && *cfg->secret) {
        auth.key_len = strlen(cfg->secret);
        auth.key = (unsigned char *)xstrdup(cfg->secret);
        auth.allowed_algs = ALG_BIT(JWT_ALG_HS256) | ALG_BIT(JWT_ALG_HS384) | ALG_BIT(JWT_ALG_HS512);
    } else {
        fprintf(stderr, "runcast: --auth jwt needs --jwt-secret or --jwt-public-key\n");
        auth_shutdown();
        return -EINVAL;
    }
    auth.cache = xcalloc(AUTH_CACHE_SLOTS, sizeof(*auth.cache));
    auth.user_claim = xstrdup(cfg->user_claim && *cfg->user_claim ? cfg->user_claim : "sub");
    auth.audience = dup_or_null(cfg->audience);
    auth.issuer = dup_or_null(cfg->issuer);
    auth.cookie = dup_or_null(cfg->cookie);
    auth.leeway_s = (double)cfg->leeway_ms / 1000.0;
    if (cfg->admin_claim && *cfg->admin_claim) {
        const char *eq = strchr(cfg->admin_claim, '=');
        if (eq) {
            auth.admin_name = xstrndup(cfg->admin_claim, (size_t)(eq - cfg->admin_claim));
            auth.admin_value = xstrdup(eq + 1);
        } else {
            auth.admin_name = xstrdup(cfg->admin_claim);
        }
    }
    return 0;
}

void auth_shutdown(void)
{
    if (auth.key) /* a secret: wipe it before giving the memory back */
        memset(auth.key, 0, auth.key_len);
    free(auth.key);
    EVP_PKEY_free(auth.public_key);
    free(auth.cache);
    free(auth.user_claim);
    free(auth.audience);
    free(auth.issuer);
    free(auth.cookie);
    free(auth.admin_name);
    free(auth.admin_value);
    for (size_t i = 0; i < auth.origin_count; i++)
        free(auth.origins[i]);
    free(auth.origins);
    for (size_t i = 0; i < auth.host_count; i++)
        free(auth.hosts[i]);
    free(auth.hosts);
    memset(&auth, 0, sizeof(auth));
}

/* ---- tokens ------------------------------------------------------------- */

/* The text sent to clients for a negative enum auth_error. */
static const char *auth_strerror(int err)
{
    switch (err) {
    case AUTH_ERR_MALFORMED: return "the token is malformed";
    case AUTH_ERR_ALG_NONE: return "unsigned tokens (alg none) are not accepted";
    case AUTH_ERR_ALG: return "the token's algorithm does not match the configured key";
    case AUTH_ERR_SIGNATURE: return "the token's signature does not verify";
    case AUTH_ERR_EXPIRED: return "the token has expired";
    case AUTH_ERR_NOT_YET_VALID: return "the token is not valid yet (nbf)";
    case AUTH_ERR_AUDIENCE: return "the token's audience is not accepted";
    case AUTH_ERR_ISSUER: return "the token's issuer is not accepted";
    case AUTH_ERR_CLAIMS: return "the token needs a numeric exp and a string user claim";
    }
    return "the token is not accepted";
}

static int b64url_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* Decodes unpadded base64url in[0..len) into out (room for len * 3 / 4
 * bytes). Returns the decoded length, or -EINVAL. */
static ssize_t b64url_decode(const char *in, size_t len, unsigned char *out)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t n = 0;
    if (len % 4 == 1)
        return -EINVAL;
    for (size_t i = 0; i < len; i++) {
        int v = b64url_value((unsigned char)in[i]);
        if (v < 0)
            return -EINVAL;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (unsigned char)(acc >> bits);
        }
    }
    return (ssize_t)n;
}

/* One base64url segment holding a JSON object: a new reference, or NULL. */
static json_t *segment_json(const char *seg, size_t len)
{
    unsigned char buf[AUTH_MAX_TOKEN];
    ssize_t n = len ? b64url_decode(seg, len, buf) : -EINVAL;
    if (n <= 0)
        return NULL;
    json_t *obj = json_loadb((const char *)buf, (size_t)n, JSON_REJECT_DUPLICATES, NULL);
    if (obj && !json_is_object(obj)) {
        json_decref(obj);
        return NULL;
    }
    return obj;
}

/* The JWS algorithm named exactly (case matters in JWS), or JWT_ALG_INVAL. */
static jwt_alg_t alg_from_name(const char *name)
{
    for (int a = JWT_ALG_HS256; a < JWT_ALG_TERM; a++) {
        if (strcmp(jwt_alg_str((jwt_alg_t)a), name) == 0)
            return (jwt_alg_t)a;
    }
    return JWT_ALG_INVAL;
}

/* The header: a known algorithm the configured key verifies, no critical
 * extension we would have to understand, and a JWT (not some other JOSE
 * object). Returns the algorithm, or a negative enum auth_error. */
static int check_header(const json_t *header)
{
    const char *alg = json_string_value(json_object_get(header, "alg"));
    if (alg == NULL)
        return AUTH_ERR_MALFORMED;
    if (strcasecmp(alg, "none") == 0)
        return AUTH_ERR_ALG_NONE;
    jwt_alg_t a = alg_from_name(alg);
    if (a == JWT_ALG_INVAL || (auth.allowed_algs & ALG_BIT(a)) == 0)
        return AUTH_ERR_ALG;
    if (json_object_get(header, "crit") != NULL)
        return AUTH_ERR_MALFORMED;
    json_t *typ = json_object_get(header, "typ");
    if (typ && (!json_is_string(typ) || (strcasecmp(json_string_value(typ), "JWT") != 0 &&
                                         strcasecmp(json_string_value(typ), "at+jwt") != 0)))
        return AUTH_ERR_MALFORMED;
    return (int)a;
}

/* 1 when claim is the string value, or an array holding it. */
static int claim_has(const json_t *claim, const char *value)
{
    if (json_is_string(claim))
        return strcmp(json_string_value(claim), value) == 0;
    if (json_is_array(claim)) {
        size_t i;
        json_t *item;
        json_array_foreach(claim, i, item) {
            if (json_is_string(item) && strcmp(json_string_value(item), value) == 0)
                return 1;
        }
    }
    return 0;
}

/* Time, audience, issuer and user claims of a verified token. */
static int check_claims(const json_t *claims, double now, struct auth_claims *out)
{
    json_t *exp = json_object_get(claims, "exp");
    json_t *nbf = json_object_get(claims, "nbf");
    json_t *user = json_object_get(claims, auth.user_claim);
    if (!json_is_number(exp) || (nbf && !json_is_number(nbf)) || !json_is_string(user))
        return AUTH_ERR_CLAIMS;
    if (now >= json_number_value(exp) + auth.leeway_s)
        return AUTH_ERR_EXPIRED;
    if (nbf && now < json_number_value(nbf) - auth.leeway_s)
        return AUTH_ERR_NOT_YET_VALID;
    if (auth.audience && !claim_has(json_object_get(claims, "aud"), auth.audience))
        return AUTH_ERR_AUDIENCE;
    if (auth.issuer) {
        const char *iss = json_string_value(json_object_get(claims, "iss"));
        if (iss == NULL || strcmp(iss, auth.issuer) != 0)
            return AUTH_ERR_ISSUER;
    }
    memset(out, 0, sizeof(*out));
    const char *name = json_string_value(user);
    size_t len = json_string_length(user);
    if (str_is_path_param(name, len)) /* else "": it can own no session */
        memcpy(out->user, name, len + 1);
    out->exp = json_number_value(exp);
    if (auth.admin_name) {
        json_t *admin = json_object_get(claims, auth.admin_name);
        out->admin = auth.admin_value ? claim_has(admin, auth.admin_value) : json_is_true(admin);
    }
    return 0;
}

/* The token's cache slot, and its digest in digest[32]. */
static struct cache_entry *cache_slot(const char *token, size_t len, unsigned char *digest)
{
    unsigned int n = 0;
    if (!EVP_Digest(token, len, digest, &n, EVP_sha256(), NULL) || n != 32) {
        memset(digest, 0, 32); /* never matches a filled slot: no caching */
        return NULL;
    }
    uint32_t index;
    memcpy(&index, digest, sizeof(index));
    return &auth.cache[index % AUTH_CACHE_SLOTS];
}

static int verify_uncached(const char *token, size_t len, double now, struct auth_claims *out);

/* An HS signature, by libjwt with the secret. 0, AUTH_ERR_SIGNATURE, or
 * AUTH_ERR_ALG when libjwt read another algorithm than alg. */
static int verify_secret_signature(jwt_alg_t alg, const char *token, size_t len)
{
    char copy[AUTH_MAX_TOKEN + 1];
    memcpy(copy, token, len);
    copy[len] = '\0';
    jwt_t *jwt = NULL;
    int err = jwt_decode(&jwt, copy, auth.key, (int)auth.key_len);
    if (err == 0 && jwt_get_alg(jwt) != alg)
        err = AUTH_ERR_ALG; /* cannot happen unless libjwt read another header */
    else if (err != 0)
        err = AUTH_ERR_SIGNATURE;
    jwt_free(jwt);
    return err;
}

/* JWS's ES signature (R and S, each the curve's size, big-endian) as the
 * DER ECDSA-Sig-Value OpenSSL verifies, into der (room for der_size).
 * Returns its length, or -EINVAL when sig is not two halves of the size
 * the key's curve gives. */
static int es_signature_to_der(const unsigned char *sig, size_t sig_len, unsigned char *der,
                               size_t der_size)
{
    size_t half = ((size_t)EVP_PKEY_get_bits(auth.public_key) + 7) / 8;
    if (sig_len != 2 * half)
        return -EINVAL;
    ECDSA_SIG *ecdsa = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, (int)half, NULL), *s = BN_bin2bn(sig + half, (int)half, NULL);
    int n = -EINVAL;
    if (ecdsa && r && s && ECDSA_SIG_set0(ecdsa, r, s) == 1) {
        r = s = NULL; /* ecdsa owns them now */
        if (i2d_ECDSA_SIG(ecdsa, NULL) <= (int)der_size)
            n = i2d_ECDSA_SIG(ecdsa, &der);
    }
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(ecdsa);
    return n > 0 ? n : -EINVAL;
}

/* An RS (PKCS #1 v1.5) or ES signature over input[0..input_len) (the
 * token's "header.payload"), given as base64url sig_b64, checked with the
 * key parsed at start-up. 0 or AUTH_ERR_SIGNATURE. Never parses a key. */
static int verify_public_key_signature(jwt_alg_t alg, const char *input, size_t input_len,
                                       const char *sig_b64, size_t sig_b64_len)
{
    unsigned char sig[AUTH_MAX_TOKEN], der[256];
    ssize_t sig_len = b64url_decode(sig_b64, sig_b64_len, sig);
    if (sig_len <= 0)
        return AUTH_ERR_SIGNATURE;
    const EVP_MD *md = EVP_sha512();
    if (alg == JWT_ALG_RS256 || alg == JWT_ALG_ES256)
        md = EVP_sha256();
    else if (alg == JWT_ALG_RS384 || alg == JWT_ALG_ES384)
        md = EVP_sha384();
    const unsigned char *checked = sig;
    size_t checked_len = (size_t)sig_len;
    if (alg == JWT_ALG_ES256 || alg == JWT_ALG_ES384 || alg == JWT_ALG_ES512) {
        int n = es_signature_to_der(sig, (size_t)sig_len, der, sizeof(der));
        if (n < 0)
            return AUTH_ERR_SIGNATURE;
        checked = der;
        checked_len = (size_t)n;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestVerifyInit(ctx, NULL, md, NULL, auth.public_key) == 1 &&
             EVP_DigestVerify(ctx, checked, checked_len, (const unsigned char *)input,
                              input_len) == 1;
    EVP_MD_CTX_free(ctx);
    if (!ok)
        ERR_clear_error(); /* a refused signature leaves OpenSSL errors queued */
    return ok ? 0 : AUTH_ERR_SIGNATURE;
}

int auth_verify_token(const char *token, size_t len, double now, struct auth_claims *out)
{
    if (!auth.jwt || (auth.key == NULL && auth.public_key == NULL))
        return AUTH_ERR_ALG;
    if (len == 0 || len > AUTH_MAX_TOKEN)
        return AUTH_ERR_MALFORMED;
    unsigned char digest[32];
    struct cache_entry *slot = cache_slot(token, len, digest);
    if (slot && memcmp(slot->digest, digest, sizeof(digest)) == 0) {
        auth.cache_hits++;
        if (now >= slot->claims.exp + auth.leeway_s)
            return AUTH_ERR_EXPIRED;
        *out = slot->claims;
        return 0;
    }
    int err = verify_uncached(token, len, now, out);
    if (err == 0 && slot) {
        memcpy(slot->digest, digest, sizeof(digest));
        slot->claims = *out;
    }
    return err;
}

/* Everything auth_verify_token() says, without the cache. */
static int verify_uncached(const char *token, size_t len, double now, struct auth_claims *out)
{
    size_t dots[2], ndots = 0;
    for (size_t i = 0; i < len; i++) {
        if (token[i] == '.') {
            if (ndots == 2)
                return AUTH_ERR_MALFORMED;
            dots[ndots++] = i;
        } else if (b64url_value((unsigned char)token[i]) < 0) {
            return AUTH_ERR_MALFORMED;
        }
    }
    if (ndots != 2)
        return AUTH_ERR_MALFORMED;

    json_t *header = segment_json(token, dots[0]);
    if (header == NULL)
        return AUTH_ERR_MALFORMED;
    int alg = check_header(header);
    json_decref(header);
    if (alg < 0)
        return alg;
    json_t *claims = segment_json(token + dots[0] + 1, dots[1] - dots[0] - 1);
    if (claims == NULL)
        return AUTH_ERR_MALFORMED;
    if (dots[1] + 1 == len) { /* no signature at all */
        json_decref(claims);
        return AUTH_ERR_SIGNATURE;
    }

    /* The signature, now that the algorithm is known to fit the key. */
    int err = auth.public_key ? verify_public_key_signature((jwt_alg_t)alg, token, dots[1],
                                                            token + dots[1] + 1, len - dots[1] - 1)
                              : verify_secret_signature((jwt_alg_t)alg, token, len);
    if (err == 0)
        err = check_claims(claims, now, out);
    json_decref(claims);
    return err;
}

/* ---- requests ----------------------------------------------------------- */

enum token_source { TOKEN_NONE = 0, TOKEN_FOUND, TOKEN_BAD };

/* Finds the request's token: Authorization: Bearer, then ?access_token=,
 * then the --jwt-cookie cookie. The query's token is decoded into buf
 * (AUTH_MAX_TOKEN + 1 bytes). Sets *token and *len for TOKEN_FOUND;
 * TOKEN_BAD for an Authorization of another scheme or an unreadable or
 * oversized value. */
static enum token_source find_token(const struct http_request *req, char *buf, const char **token,
                                    size_t *len)
{
    const struct http_header *h = http_find_header(req, "Authorization");
    if (h) {
        if (h->value_len < 7 || !str_ieq(h->value, 6, "Bearer") || h->value[6] != ' ')
            return TOKEN_BAD;
        size_t i = 7;
        while (i < h->value_len && h->value[i] == ' ')
            i++;
        *token = h->value + i;
        *len = h->value_len - i;
        return *len ? TOKEN_FOUND : TOKEN_BAD;
    }
    if (req->query) {
        ssize_t n = http_query_get(req->query, req->query_len, "access_token", buf,
                                   AUTH_MAX_TOKEN + 1);
        if (n != -ENOENT) {
            if (n <= 0)
                return TOKEN_BAD;
            *token = buf;
            *len = (size_t)n;
            return TOKEN_FOUND;
        }
    }
    if (auth.cookie == NULL)
        return TOKEN_NONE;
    size_t want = strlen(auth.cookie);
    for (size_t k = 0; k < req->header_count; k++) {
        h = &req->headers[k];
        if (!str_ieq(h->name, h->name_len, "Cookie"))
            continue;
        /* "a=1; b=2": pairs split on ';', optional spaces before a name. */
        const char *p = h->value, *end = h->value + h->value_len;
        while (p < end) {
            while (p < end && (*p == ' ' || *p == ';'))
                p++;
            const char *pair = p;
            while (p < end && *p != ';')
                p++;
            const char *eq = memchr(pair, '=', (size_t)(p - pair));
            if (eq && (size_t)(eq - pair) == want && memcmp(pair, auth.cookie, want) == 0) {
                const char *v = eq + 1;
                size_t vlen = (size_t)(p - v);
                if (vlen >= 2 && v[0] == '"' && v[vlen - 1] == '"') {
                    v++;
                    vlen -= 2;
                }
                *token = v;
                *len = vlen;
                return vlen ? TOKEN_FOUND : TOKEN_BAD;
            }
        }
    }
    return TOKEN_NONE;
}

enum origin_verdict {
    ORIGIN_ABSENT = 0, /* no Origin header: not a cross-origin browser request */
    ORIGIN_SAME,       /* the request's own origin (scheme + Host) */
    ORIGIN_ALLOWED,    /* listed by --allow-origin, or "*" */
    ORIGIN_REFUSED,
};

static enum origin_verdict origin_check(const struct http_request *req, const char **origin,
                                        size_t *origin_len)
{
    const struct http_header *o = http_find_header(req, "Origin");
    if (o == NULL)
        return ORIGIN_ABSENT;
    *origin = o->value;
    *origin_len = o->value_len;
    for (size_t i = 0; i < auth.origin_count; i++) {
        if (str_ieq(o->value, o->value_len, auth.origins[i]))
            return ORIGIN_ALLOWED;
    }
    if (auth.any_origin)
        return ORIGIN_ALLOWED;
    const struct http_header *host = http_find_header(req, "Host");
    if (host && host->value_len > 0) {
        static const char *const schemes[] = {"http://", "https://"};
        for (size_t k = 0; k < RC_ARRAY_SIZE(schemes); k++) {
            size_t n = strlen(schemes[k]);
            if (o->value_len == n + host->value_len && strncasecmp(o->value, schemes[k], n) == 0 &&
                strncasecmp(o->value + n, host->value, host->value_len) == 0)
                return ORIGIN_SAME;
        }
    }
    return ORIGIN_REFUSED;
}

/* The host part of a Host header value (the name, the IPv4 address or the
 * [IPv6] address with its brackets) and its length, or 0 when value is not
 * host[:port] at all. */
static size_t host_name_length(const char *value, size_t len)
{
    size_t name_len;
    if (len > 0 && value[0] == '[') {
        const char *close = memchr(value, ']', len);
        if (close == NULL)
            return 0;
        name_len = (size_t)(close - value) + 1;
    } else {
        name_len = 0;
        while (name_len < len && value[name_len] != ':')
            name_len++;
    }
    if (name_len == len)
        return name_len;
    if (value[name_len] != ':' || len - name_len - 1 > 5)
        return 0;
    for (size_t i = name_len + 1; i < len; i++) {
        if (value[i] < '0' || value[i] > '9')
            return 0;
    }
    return name_len;
}

/* 1 when name[0..len) is an IPv4 address or a bracketed IPv6 address. */
static int host_is_address(const char *name, size_t len)
{
    char text[INET6_ADDRSTRLEN + 1];
    unsigned char addr[sizeof(struct in6_addr)];
    if (name[0] == '[') {
        if (len < 3 || len - 2 >= sizeof(text))
            return 0;
        memcpy(text, name + 1, len - 2);
        text[len - 2] = '\0';
        return inet_pton(AF_INET6, text, addr) == 1;
    }
    if (len >= sizeof(text))
        return 0;
    memcpy(text, name, len);
    text[len] = '\0';
    return inet_pton(AF_INET, text, addr) == 1;
}

/* 1 when the request's Host is one --allow-host lets in. A DNS rebinding
 * page reaches runcast under the attacker's name, which its browser sends
 * as Host; a request without Host comes from no browser. */
static int host_allowed(const struct http_request *req)
{
    if (!auth.check_hosts || auth.any_host)
        return 1;
    const struct http_header *h = http_find_header(req, "Host");
    if (h == NULL)
        return 1;
    size_t name_len = host_name_length(h->value, h->value_len);
    if (name_len == 0)
        return 0;
    for (size_t i = 0; i < auth.host_count; i++) {
        if (str_ieq(h->value, name_len, auth.hosts[i]))
            return 1;
    }
    return auth.host_addresses && host_is_address(h->value, name_len);
}

static void refuse_host(struct conn *c, const struct http_request *req)
{
    const struct http_header *h = http_find_header(req, "Host");
    char host[256] = "";
    if (h)
        snprintf(host, sizeof(host), "%.*s", (int)(h->value_len < 255 ? h->value_len : 255),
                 h->value);
    log_event(LOG_INFO, "http.host_refused", "host", host, "peer", conn_peer(c), NULL);
    conn_respond_error(c, 421, "host_not_allowed",
                       "this Host is not served here (--allow-host)", NULL);
}

static int method_changes_state(enum http_method m)
{
    return m != HTTP_GET && m != HTTP_HEAD && m != HTTP_OPTIONS;
}

/* The CORS headers of an allowed cross-origin request, into b. */
static void cors_headers(struct buf *b, const char *origin, size_t origin_len)
{
    if (auth.any_origin) {
        buf_append_str(b, "Access-Control-Allow-Origin: *\r\n");
    } else {
        /* Only a listed origin gets here, so the echoed bytes are ours. */
        buf_append_str(b, "Access-Control-Allow-Origin: ");
        buf_append(b, origin, origin_len);
        buf_append_str(b, "\r\nAccess-Control-Allow-Credentials: true\r\n");
    }
    buf_append_str(b, "Access-Control-Expose-Headers: WWW-Authenticate, Retry-After\r\n");
}

/* "GET, POST, DELETE" of a route's "Allow: GET, POST, DELETE\r\n". */
static void route_methods(struct buf *b, int route)
{
    const char *allow = router_allow_header(route);
    const char *p = strchr(allow, ':');
    if (p == NULL)
        return;
    p++;
    while (*p == ' ')
        p++;
    buf_append(b, p, strcspn(p, "\r"));
}

/* OPTIONS on a known route: a CORS preflight, or a plain OPTIONS. */
static void answer_options(struct conn *c, const struct http_request *req, int route,
                           enum origin_verdict verdict, const char *origin, size_t origin_len)
{
    struct buf b = {0};
    if (verdict == ORIGIN_ABSENT || verdict == ORIGIN_SAME ||
        http_find_header(req, "Access-Control-Request-Method") == NULL) {
        buf_append_str(&b, "Allow: ");
        route_methods(&b, route);
        buf_append_str(&b, ", OPTIONS\r\n");
        conn_respond(c, 204, NULL, b.data, NULL, 0);
    } else if (verdict == ORIGIN_REFUSED) {
        conn_respond_error(c, 403, "origin_not_allowed",
                           "this origin is not allowed (--allow-origin)", NULL);
    } else {
        /* The CORS headers themselves were set on the conn by the gate. */
        buf_append_str(&b, "Access-Control-Allow-Methods: ");
        route_methods(&b, route);
        buf_printf(&b, "\r\nAccess-Control-Allow-Headers: " AUTH_ALLOWED_HEADERS
                   "\r\nAccess-Control-Max-Age: %d\r\n", AUTH_PREFLIGHT_MAX_AGE);
        conn_respond(c, 204, NULL, b.data, NULL, 0);
    }
    RC_UNUSED(origin);
    RC_UNUSED(origin_len);
    buf_free(&b);
}

static void refuse_token(struct conn *c, const char *reason, int bad)
{
    log_event(LOG_INFO, "auth.refused", "reason", reason, "peer", conn_peer(c), NULL);
    conn_respond_error(c, 401, bad ? "invalid_token" : "unauthorized",
                       bad ? reason : "a bearer token is required",
                       bad ? "WWW-Authenticate: Bearer realm=\"runcast\", error=\"invalid_token\"\r\n"
                           : "WWW-Authenticate: Bearer realm=\"runcast\"\r\n");
}

static int route_is_admin(int route)
{
    return route == ROUTE_ALL_STATUS || route == ROUTE_METRICS;
}

int auth_check_request(struct conn *c, const struct http_request *req, int route,
                       const struct route_params *params, const void *listener,
                       struct auth_grant *out)
{
    const struct auth_listener *l = listener;
    const char *origin = NULL;
    size_t origin_len = 0;
    out->expires_at = 0;
    out->user[0] = '\0';

    if (route != ROUTE_HEALTHZ && route != ROUTE_READYZ && !host_allowed(req)) {
        refuse_host(c, req);
        return 0;
    }

    enum origin_verdict verdict = origin_check(req, &origin, &origin_len);
    if (verdict == ORIGIN_ALLOWED || (!auth.any_origin && auth.origin_count > 0)) {
        struct buf b = {0};
        if (verdict == ORIGIN_ALLOWED)
            cors_headers(&b, origin, origin_len);
        if (!auth.any_origin) /* the answer depends on Origin: tell caches */
            buf_append_str(&b, "Vary: Origin\r\n");
        conn_set_answer_headers(c, b.data);
        buf_free(&b);
    }
    if (verdict == ORIGIN_REFUSED && method_changes_state(req->method)) {
        conn_respond_error(c, 403, "origin_not_allowed",
                           "this origin is not allowed (--allow-origin)", NULL);
        return 0;
    }
    if (route <= ROUTE_NONE)
        return 1;
    if (l && l->admin && route != ROUTE_ALL_STATUS && route != ROUTE_METRICS &&
        route != ROUTE_HEALTHZ && route != ROUTE_READYZ) {
        conn_respond_error(c, 404, "not_found", "the admin listener serves only /task-status, "
                           "/metrics, /healthz and /readyz", NULL);
        return 0;
    }
    if (req->method == HTTP_OPTIONS) {
        /* A forwarded path's preflight is runcast's when runcast answers
         * CORS (--allow-origin); any other OPTIONS there is the upstream's,
         * and needs no token (browsers send none with a preflight). */
        if (route == ROUTE_FORWARD &&
            !(auth_answers_cors() && verdict != ORIGIN_ABSENT && verdict != ORIGIN_SAME &&
              http_find_header(req, "Access-Control-Request-Method") != NULL))
            return 1;
        answer_options(c, req, route, verdict, origin, origin_len);
        return 0;
    }
    if (route == ROUTE_HEALTHZ || route == ROUTE_READYZ || route == ROUTE_CONSOLE ||
        route == ROUTE_CONSOLE_ASSET ||
        (l && l->admin) || !auth.jwt)
        return 1;

    char query_token[AUTH_MAX_TOKEN + 1];
    const char *token = NULL;
    size_t len = 0;
    enum token_source src = find_token(req, query_token, &token, &len);
    if (src == TOKEN_NONE) {
        refuse_token(c, "no token", 0);
        return 0;
    }
    struct auth_claims claims;
    int err = src == TOKEN_BAD ? AUTH_ERR_MALFORMED
                               : auth_verify_token(token, len, time_wall_seconds(), &claims);
    if (err < 0) {
        refuse_token(c, auth_strerror(err), 1);
        return 0;
    }
    if (route_is_admin(route) && !claims.admin) {
        conn_respond_error(c, 403, "forbidden", auth.admin_name
                           ? "this route needs an admin token (--admin-claim)"
                           : "this route is served only on --admin-listen", NULL);
        return 0;
    }
    if (route == ROUTE_ADK_RUN_SSE || route == ROUTE_ADK_RUN) {
        /* The user is named in the body: the handler compares it. */
        if (!claims.admin)
            str_copy(out->user, sizeof(out->user), claims.user);
    } else if (route == ROUTE_FORWARD) {
        /* A user's path of the upstream's (/apps/{app}/users/{user}/…,
         * params->user as proxy_check_path() decoded it) is that user's;
         * an admin token may read any. Other forwarded paths (/list-apps,
         * the dev UI) need any valid token. */
        if (params->user[0] && !claims.admin && strcmp(claims.user, params->user) != 0) {
            conn_respond_error(c, 403, "forbidden", "the token's user is not this path's user",
                               NULL);
            return 0;
        }
    } else if (!route_is_admin(route) && strcmp(claims.user, params->user) != 0) {
        conn_respond_error(c, 403, "forbidden", "the token's user does not own this session",
                           NULL);
        return 0;
    }
    out->expires_at = claims.exp + auth.leeway_s;
    return 1;
}

int auth_answers_cors(void)
{
    return auth.any_origin || auth.origin_count > 0;
}

uint64_t auth_grant_deadline_ms(const struct auth_grant *grant)
{
    if (grant->expires_at <= 0)
        return 0;
    /* Rounded up and one more: the cut must never come before the token's
     * wall-clock expiry, or a reconnect with the same token would still be
     * let in (and cut at once) instead of getting its 401. */
    double left_ms = (grant->expires_at - time_wall_seconds()) * 1000.0;
    uint64_t now = time_mono_ms();
    /* A far-future exp (1e17, 1e300) would overflow the conversion; past a
     * century it is the same as none. */
    const double max_left_ms = 100.0 * 365 * 24 * 3600 * 1000;
    if (!(left_ms < max_left_ms))
        left_ms = max_left_ms;
    return left_ms < 1 ? now + 1 : now + (uint64_t)ceil(left_ms) + 1;
}
