/* jwt-mint: makes a signed JWT with libjwt (the library runcast verifies
 * with), for the integration tests and for the README's example.
 *
 *   jwt-mint ALG KEY_FILE CLAIMS_JSON [HEADER_JSON]
 *
 * ALG is HS256/384/512, RS256/384/512, ES256/384/512 or none. KEY_FILE holds
 * the HMAC secret (its bytes exactly, a trailing newline included if there
 * is one) or the PEM private key; it is ignored for "none" (pass "-").
 * CLAIMS_JSON is the payload object; HEADER_JSON adds header fields. Prints
 * the token and a newline; exits 1 with a message on stderr on any error.
 */
#include <errno.h>
#include <jwt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned char key[65536];

int main(int argc, char **argv)
{
    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: jwt-mint ALG KEY_FILE CLAIMS_JSON [HEADER_JSON]\n");
        return 1;
    }
    jwt_alg_t alg = strcmp(argv[1], "none") == 0 ? JWT_ALG_NONE : jwt_str_alg(argv[1]);
    if (alg == JWT_ALG_INVAL) {
        fprintf(stderr, "jwt-mint: unknown algorithm %s\n", argv[1]);
        return 1;
    }
    size_t key_len = 0;
    if (alg != JWT_ALG_NONE) {
        FILE *f = fopen(argv[2], "rb");
        if (f == NULL) {
            perror(argv[2]);
            return 1;
        }
        key_len = fread(key, 1, sizeof(key) - 1, f);
        fclose(f);
        if (key_len == 0) {
            fprintf(stderr, "jwt-mint: %s is empty\n", argv[2]);
            return 1;
        }
    }
    jwt_t *jwt = NULL;
    char *token = NULL;
    int err = jwt_new(&jwt);
    if (err == 0)
        err = jwt_add_grants_json(jwt, argv[3]);
    if (err == 0 && argc == 5)
        err = jwt_add_headers_json(jwt, argv[4]);
    if (err == 0)
        err = jwt_set_alg(jwt, alg, alg == JWT_ALG_NONE ? NULL : key, (int)key_len);
    if (err == 0 && (token = jwt_encode_str(jwt)) == NULL)
        err = errno ? errno : EINVAL;
    if (err != 0) {
        fprintf(stderr, "jwt-mint: %s\n", strerror(err));
        jwt_free(jwt);
        return 1;
    }
    printf("%s\n", token);
    free(token);
    jwt_free(jwt);
    return 0;
}
