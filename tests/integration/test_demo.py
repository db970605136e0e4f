"""The demo agent's /run_sse frames for what an AG-UI translation reads
(docs/DEMO.md): a client-side tool call (!tool), a state delta (!state), a
thought (!think) and a client's functionResponse parts, POSTed straight to
the standalone agent and checked frame by frame, every field."""

import json
import re

from harness import SseClient, eq, expect, request, test

EMPTY_ACTIONS = {"stateDelta": {}, "artifactDelta": {}, "requestedAuthConfigs": {}}
EVENT_KEYS = ["id", "invocationId", "author", "timestamp", "content", "partial", "actions",
              "customMetadata"]
AGGREGATED_KEYS = EVENT_KEYS[:6] + ["turnComplete", "finishReason", "usageMetadata"] + EVENT_KEYS[6:]


def agent(t):
    """The standalone demo agent (no word delay) with session "s" of app "a"."""
    a = t.agent("--word-delay", "0")
    r = request(a.port, "POST", "/apps/a/users/u/sessions", b'{"sessionId":"s"}',
                {"Content-Type": "application/json"})
    eq(r.status, 200, "session create")
    return a


def run_body(parts, streaming):
    return json.dumps({"appName": "a", "userId": "u", "sessionId": "s",
                       "newMessage": {"role": "user", "parts": parts},
                       "streaming": streaming}).encode()


def run_sse(t, a, parts, streaming=True):
    """POSTs /run_sse; returns the frames' JSON once the body has ended
    normally (its last chunk)."""
    s = SseClient(t, a.port, "/run_sse", method="POST", body=run_body(parts, streaming),
                  headers={"Content-Type": "application/json"})
    s.wait_eof(5)
    expect(s.completed and not s.cut, "the body ended with its last chunk")
    return [json.loads(e.data) for e in s.events]


def say(t, a, text, streaming=True):
    return run_sse(t, a, [{"text": text}], streaming)


def check_event(ev, seq, parts, partial=True, state=None, usage=None, invocation=None):
    """ev is the demo's event number seq with exactly these parts; a whole
    event when partial is False, the aggregated one when usage is given
    (prompt, candidates); stateDelta is state or {}."""
    eq(list(ev), AGGREGATED_KEYS if usage else EVENT_KEYS, "event %d keys" % seq)
    expect(re.fullmatch(r"[0-9a-f]{16}", ev["id"]), "event %d id %r" % (seq, ev["id"]))
    expect(re.fullmatch(r"e-[0-9a-f]{16}", ev["invocationId"]), "invocationId %r" % ev["invocationId"])
    if invocation is not None:
        eq(ev["invocationId"], invocation, "event %d invocationId" % seq)
    eq(ev["author"], "demo_agent", "event %d author" % seq)
    expect(isinstance(ev["timestamp"], float), "event %d timestamp %r" % (seq, ev["timestamp"]))
    eq(ev["content"], {"role": "model", "parts": parts}, "event %d content" % seq)
    eq(ev["partial"], partial, "event %d partial" % seq)
    if usage:
        eq((ev["turnComplete"], ev["finishReason"]), (True, "STOP"), "event %d end" % seq)
        eq(ev["usageMetadata"], {"promptTokenCount": usage[0], "candidatesTokenCount": usage[1],
                                 "totalTokenCount": usage[0] + usage[1]}, "event %d usage" % seq)
    eq(ev["actions"], dict(EMPTY_ACTIONS, stateDelta=state or {}), "event %d actions" % seq)
    eq(sorted(ev["customMetadata"]), ["sent_at_us", "seq"], "event %d customMetadata" % seq)
    eq(ev["customMetadata"]["seq"], seq, "event %d seq" % seq)


def check_call(ev, seq, name, text, state=None, invocation=None):
    """ev is !tool's whole event: one functionCall part. Returns its id."""
    call = ev["content"]["parts"][0]["functionCall"]
    expect(re.fullmatch(r"call-[0-9a-f]{16}", call["id"]), "call id %r" % call["id"])
    check_event(ev, seq, [{"functionCall": {"id": call["id"], "name": name, "args": {"text": text}}}],
                partial=False, state=state, invocation=invocation)
    return call["id"]


def texts(frames):
    return [p.get("text") for f in frames for p in f["content"]["parts"]]


THOUGHT_2 = {"text": "thinking about 2 words", "thought": True}


@test()
def test_demo_tool_state_and_think_together_frame_by_frame(t):
    a = agent(t)
    f = say(t, a, "hello world !tool=lookup !state=note !think")
    eq(len(f), 6, "frames: the thought, 3 words, the aggregated event, the call")
    inv = f[0]["invocationId"]
    check_event(f[0], 0, [THOUGHT_2], invocation=inv)
    check_event(f[1], 1, [{"text": "Echo:"}], invocation=inv)
    check_event(f[2], 2, [{"text": " hello"}], invocation=inv)
    check_event(f[3], 3, [{"text": " world"}], invocation=inv)
    check_event(f[4], 4, [THOUGHT_2, {"text": "Echo: hello world"}], partial=False,
                state={"note": "hello world"}, usage=(2, 3), invocation=inv)
    check_call(f[5], 5, "lookup", "hello world", invocation=inv)
    eq(len({ev["id"] for ev in f}), 6, "distinct event ids")


@test()
def test_demo_tool_call_follows_the_run_and_ends_it(t):
    a = agent(t)
    f = say(t, a, "find it !tool=get_weather-2")
    eq(texts(f[:4]), ["Echo:", " find", " it", "Echo: find it"], "the echo as without !tool")
    check_event(f[3], 3, [{"text": "Echo: find it"}], partial=False, usage=(2, 3))
    check_call(f[4], 4, "get_weather-2", "find it")
    eq(len(f), 5, "nothing after the call")
    f = say(t, a, "find it !tool=lookup", streaming=False)
    eq(len(f), 2, "not streamed: the aggregated event, then the call")
    check_event(f[0], 0, [{"text": "Echo: find it"}], partial=False, usage=(2, 3))
    check_call(f[1], 1, "lookup", "find it")
    f = say(t, a, "find it !events=2 !tool=lookup")
    eq(texts(f), ["event 0xxxxxxxxx", "event 1xxxxxxxxx", None], "!events, then the call")
    check_call(f[2], 2, "lookup", "find it")
    f = say(t, a, "!tool=lookup", streaming=False)
    check_call(f[1], 1, "lookup", "")
    # !error: the error frame stays the last one; no call
    f = say(t, a, "find it !tool=lookup !error=boom")
    eq(texts(f[:3]), ["Echo:", " find", " it"], "partial words before the error")
    eq(f[3]["error"], "boom", "the error frame")
    eq(len(f), 4, "no call after the error frame")
    # a bad name is no directive
    f = say(t, a, "find it !tool=a.b", streaming=False)
    eq(len(f), 1, "no call for !tool=a.b")


@test()
def test_demo_state_delta_goes_on_the_aggregated_event_else_on_the_last(t):
    a = agent(t)
    f = say(t, a, "keep this !state=note")
    eq([ev["actions"]["stateDelta"] for ev in f], [{}, {}, {}, {"note": "keep this"}], "streamed")
    check_event(f[3], 3, [{"text": "Echo: keep this"}], partial=False, state={"note": "keep this"},
                usage=(2, 3))
    f = say(t, a, "keep this !state=note", streaming=False)
    eq([ev["actions"]["stateDelta"] for ev in f], [{"note": "keep this"}], "not streamed")
    f = say(t, a, "keep !events=3 !state=k")
    eq([ev["actions"]["stateDelta"] for ev in f], [{}, {}, {"k": "keep"}], "!events: the last one")
    f = say(t, a, "keep !events=2 !state=k !tool=t")
    eq([ev["actions"]["stateDelta"] for ev in f], [{}, {}, {"k": "keep"}], "the call is last")
    check_call(f[2], 2, "t", "keep", state={"k": "keep"})
    f = say(t, a, "keep this !state=k !error=boom")
    eq([ev.get("actions", {}).get("stateDelta") for ev in f], [{}, {}, {"k": "keep this"}, None],
       "!error: the last partial event")
    f = say(t, a, "keep !events=0 !state=k")
    eq(f, [], "no event, no delta")


@test()
def test_demo_think_streams_a_thought_before_the_words(t):
    a = agent(t)
    f = say(t, a, "hello world !think")
    eq(len(f), 5, "the thought, 3 words, the aggregated event")
    check_event(f[0], 0, [THOUGHT_2])
    eq(texts(f[1:4]), ["Echo:", " hello", " world"], "the words after it")
    check_event(f[4], 4, [THOUGHT_2, {"text": "Echo: hello world"}], partial=False, usage=(2, 3))
    f = say(t, a, "hello world !think", streaming=False)
    eq(len(f), 1, "not streamed: the aggregated event alone")
    check_event(f[0], 0, [THOUGHT_2, {"text": "Echo: hello world"}], partial=False, usage=(2, 3))
    f = say(t, a, "!think")
    eq([ev["content"]["parts"] for ev in f],
       [[{"text": "thinking about 0 words", "thought": True}], [{"text": "Echo:"}],
        [{"text": "thinking about 0 words", "thought": True}, {"text": "Echo:"}]], "no words")
    f = say(t, a, "x !events=2 !think")
    eq(texts(f), ["event 0xxxxxxxxx", "event 1xxxxxxxxx"], "!events: no thought")


@test()
def test_demo_function_responses_are_echoed_before_the_words(t):
    a = agent(t)
    lookup = {"functionResponse": {"id": "call-1", "name": "lookup",
                                   "response": {"sky": "blue", "n": 2, "ok": True}}}
    other = {"functionResponse": {"id": "call-2", "name": "other", "response": {}}}
    f = run_sse(t, a, [lookup, other, {"text": "thanks !state=k"}], streaming=False)
    echoed = 'lookup returned {"sky":"blue","n":2,"ok":true} other returned {} thanks'
    check_event(f[0], 0, [{"text": "Echo: " + echoed}], partial=False, state={"k": echoed},
                usage=(7, 8))
    # only functionResponse parts: no error; a space inside the JSON starts a word
    spaced = {"functionResponse": {"name": "lookup", "response": {"sky": "deep  blue"}}}
    f = run_sse(t, a, [spaced])
    eq(texts(f), ["Echo:", " lookup", " returned", ' {"sky":"deep', " ", ' blue"}',
                  'Echo: lookup returned {"sky":"deep  blue"}'], "streamed word by word")
    eq(f[-1]["usageMetadata"]["promptTokenCount"], 5, "words echoed")
    # a missing name is empty, a missing response {}; !tool's args carry it all
    f = run_sse(t, a, [{"functionResponse": {"id": "c"}}, {"text": "!tool=next"}], streaming=False)
    eq(texts(f), ["Echo:  returned {}", None], "missing name and response")
    check_call(f[1], 1, "next", " returned {}")
    calls = request(a.port, "GET", "/debug/calls?session=s").json()["calls"]
    eq([c["text"] for c in calls[-3:]], ["thanks !state=k", "", "!tool=next"],
       "/debug/calls: the text parts only")


@test()
def test_demo_malformed_function_responses_are_422(t):
    a = agent(t)
    for fr in ("x", [], {"name": 3}, {"name": "f", "response": "x"}, {"response": [1]}):
        r = request(a.port, "POST", "/run_sse", run_body([{"functionResponse": fr}], True),
                    {"Content-Type": "application/json"})
        eq((r.status, r.json()),
           (422, {"detail": [{"type": "model_type", "loc": ["body", "newMessage"],
                              "msg": "Input should be a valid Content"}]}), "functionResponse %r" % (fr,))
    f = run_sse(t, a, [{"functionResponse": {"name": None, "response": None}}], streaming=False)
    eq(texts(f), ["Echo:  returned {}"], "null name and response are missing ones")
