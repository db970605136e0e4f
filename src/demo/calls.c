/* calls.c: the ring of the last DEMO_CALL_RING /run_sse calls, which
 * GET /debug/calls shows (tests use it to see what the upstream saw). */
#include "demo_internal.h"

#include <stdlib.h>

static const char *const demo_call_state_names[] = {"waiting", "streaming", "finished",
                                                    "client_gone", "cut"};

struct demo_call *demo_call_get(struct demo_calls *calls, uint64_t id)
{
    struct demo_call *call = &calls->ring[(id - 1) % DEMO_CALL_RING];
    return call->id == id ? call : NULL;
}

struct demo_call *demo_call_new(struct demo_calls *calls)
{
    uint64_t id = ++calls->last_id;
    struct demo_call *call = &calls->ring[(id - 1) % DEMO_CALL_RING];
    free(call->session);
    free(call->text);
    memset(call, 0, sizeof(*call));
    call->id = id;
    call->session = xstrdup("");
    call->text = xstrdup("");
    call->received_at_us = demo_wall_us();
    return call;
}

void demo_call_set_state(struct demo_call *call, enum demo_call_state to)
{
    if (call == NULL || call->state == to)
        return;
    if (call->state >= DEMO_CALL_FINISHED)
        return; /* already over: a late close after a cut or an end */
    call->state = to;
    if (to >= DEMO_CALL_FINISHED)
        call->ended_at_us = demo_wall_us();
}

void demo_call_answered(struct demo_call *call, int status)
{
    if (call == NULL)
        return;
    call->status = status;
    demo_call_set_state(call, DEMO_CALL_FINISHED);
}

json_t *demo_call_json(const struct demo_call *call)
{
    return json_pack("{s:I,s:s,s:s,s:i,s:s,s:I,s:I,s:I}", "id", (json_int_t)call->id,
                     "session", call->session, "text", call->text, "status", call->status,
                     "state", demo_call_state_names[call->state],
                     "events", (json_int_t)call->events,
                     "received_at_us", (json_int_t)call->received_at_us,
                     "ended_at_us", (json_int_t)call->ended_at_us);
}

void demo_calls_free(struct demo_calls *calls)
{
    for (size_t i = 0; i < DEMO_CALL_RING; i++) {
        free(calls->ring[i].session);
        free(calls->ring[i].text);
        calls->ring[i].session = calls->ring[i].text = NULL;
    }
}
