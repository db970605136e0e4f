/* fuzz_body: POST …/run body → ADK newMessage → upstream /run_sse request.
 *
 * Follows the daemon's path: run_request_from_body() (api.c: JSON object,
 * "streaming" a boolean, "stateDelta" an object or null, then
 * new_message_from_body()), then run_body() (upstream.c), which serialises
 * the request that upstream_call_start() sends. The body is the whole input.
 *
 * Property: a body is either refused with a reason, or mapped to a request
 * that is valid JSON with appName/userId/sessionId as given, "streaming" as
 * asked (default true), a newMessage equal to the one built, with a string
 * role and a non-empty "parts" array of non-empty objects (a "text" part
 * being a non-empty string), and "stateDelta" exactly when the body had an
 * object. Every JSON input is written by json_text() exactly as
 * json_dumps(JSON_COMPACT) writes it. No crash and no leak (LeakSanitizer
 * runs per input).
 */
#include <stdint.h>

/* The .c files hold the static functions under test; the rest of the
 * daemon is linked from the fuzzing library. */
#include "../src/api.c"
#include "../src/upstream.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_message(const json_t *nm)
{
    const json_t *parts = json_object_get(nm, "parts");
    if (!json_is_object(nm) || !json_is_string(json_object_get(nm, "role")) ||
        !json_is_array(parts) || json_array_size(parts) == 0)
        abort();
    for (size_t i = 0; i < json_array_size(parts); i++) {
        const json_t *part = json_array_get(parts, i);
        const json_t *text = json_object_get(part, "text");
        if (!json_is_object(part) || json_object_size(part) == 0)
            abort();
        if (text && (!json_is_string(text) || json_string_length(text) == 0))
            abort();
    }
}

static void check_request(const char *text, const json_t *message, const json_t *state_delta,
                          int streaming)
{
    json_error_t err;
    json_t *o = json_loads(text, JSON_REJECT_DUPLICATES, &err);
    if (!json_is_object(o))
        abort();
    const char *app = json_string_value(json_object_get(o, "appName"));
    const char *user = json_string_value(json_object_get(o, "userId"));
    const char *session = json_string_value(json_object_get(o, "sessionId"));
    if (!app || !user || !session || strcmp(app, "demo") || strcmp(user, "alice.b") ||
        strcmp(session, "s-1_x"))
        abort();
    json_t *nm = json_object_get(o, "newMessage");
    check_message(nm);
    if (!json_equal(nm, (json_t *)message))
        abort();
    json_t *stream = json_object_get(o, "streaming");
    if (!json_is_boolean(stream) || json_is_true(stream) != streaming)
        abort();
    json_t *delta = json_object_get(o, "stateDelta");
    if ((delta != NULL) != (state_delta != NULL) ||
        (delta && !json_equal(delta, (json_t *)state_delta)))
        abort();
    if (json_object_size(o) != (state_delta ? 6u : 5u))
        abort();
    json_decref(o);
}

/* json_text() writes what json_dumps() writes, for any JSON at all. */
static void same_text_as_jansson(const json_t *v)
{
    char *ours = json_text(v);
    char *theirs = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (theirs == NULL || strcmp(ours, theirs) != 0)
        abort();
    free(ours);
    free(theirs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_error_t jerr;
    json_t *body = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &jerr);
    if (body == NULL)
        return 0;
    same_text_as_jansson(body);

    json_t *state_delta;
    int streaming;
    const char *why = NULL;
    json_t *message = run_request_from_body(body, &state_delta, &streaming, &why);
    json_decref(body);
    if (message == NULL) {
        if (why == NULL)
            abort(); /* a refusal always says why */
        return 0;
    }
    check_message(message);

    struct upstream_request req = {
        .app = "demo",
        .user = "alice.b",
        .session = "s-1_x",
        .new_message = message,
        .state_delta = state_delta,
        .streaming = streaming,
    };
    char *text = run_body(&req);
    if (text == NULL)
        abort(); /* a message the API accepted must reach the upstream */
    check_request(text, message, state_delta, streaming);
    free(text);
    json_decref(message);
    json_decref(state_delta);
    return 0;
}
