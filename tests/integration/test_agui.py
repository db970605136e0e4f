"""AG-UI (DESIGN.md "AG-UI"; README "Use with an AG-UI frontend"): POST
…/agui answers a runcast run's events as AG-UI events, GET …/agui/{thread}
rejoins it. The real @ag-ui/client is in tests/e2e/agui.test.mjs; this
file checks the wire: the exact translation of ADK events (against a
scripted fake upstream, which also shows what runcast sends upstream),
the snapshot, framing and heartbeats, errors, the gate and the caps,
and that the run is an ordinary runcast run (against the demo agent)."""

import json
import threading

from harness import (TIME_SCALE, SseClient, check_error, eq, expect, request, spath, task_status,
                     test, wait_until)
from test_auth import SECRET, bearer, claims_for, mint
from test_proxy import FakeUpstream, answer

JSON = {"Content-Type": "application/json"}


def agui_path(app="app", user="u"):
    return "/apps/%s/users/%s/agui" % (app, user)


def run_input(thread, run, messages, **extra):
    body = {"threadId": thread, "runId": run, "messages": messages, "state": {}, "tools": [],
            "context": [], "forwardedProps": {}}
    body.update(extra)
    return body


def user(id_, text):
    return {"id": id_, "role": "user", "content": text}


def post(t, d, body, headers=None, expect_status=200, **kw):
    h = dict(JSON)
    h.update(headers or {})
    return SseClient(t, d.port, agui_path(**kw), method="POST", body=json.dumps(body).encode(),
                     headers=h, expect_status=expect_status)


def events(s, timeout=20):
    """The AG-UI events of a stream, once its body ended."""
    s.wait_eof(timeout * TIME_SCALE)
    return [e.json() for e in s.events]


def brief(evs):
    """(type, the field that says what it is about) of each event."""
    out = []
    for e in evs:
        key = e.get("delta", e.get("messageId", e.get("toolCallId", e.get("code", ""))))
        out.append((e["type"], key if isinstance(key, str) else json.dumps(key)))
    return out


# ---------------------------------------------------------------- a scripted upstream

def adk_frame(o):
    return b"data: " + json.dumps(o).encode() + b"\n\n"


class ScriptedAdk:
    """A fake ADK api_server: sessions are created, each /run_sse answers the
    next script (a list of ADK events) and records the request body."""

    def __init__(self, t, scripts, gate=None):
        self.scripts = list(scripts)
        self.bodies = []
        self.gate = gate  # an Event the answer waits for after its first frame
        self.up = FakeUpstream(t, self.handle)

    def handle(self, c, req):
        if "/sessions/" in req.target:
            sid = req.target.rsplit("/", 1)[1]
            answer(c, 200, json.dumps({"id": sid, "state": {}, "events": []}).encode(),
                   [("Content-Type", "application/json")])
            return True
        self.bodies.append(json.loads(req.body))
        script = self.scripts.pop(0)
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
        for i, ev in enumerate(script):
            c.sendall(adk_frame(ev))
            if i == 0 and self.gate is not None:
                self.gate.wait(30)
        return False


THOUGHT = "Let me think"
SCRIPT = [
    {"partial": True, "content": {"role": "model", "parts": [{"text": THOUGHT, "thought": True}]}},
    {"partial": True, "content": {"role": "model", "parts": [{"text": "Hello"}]}},
    {"partial": True, "content": {"role": "model", "parts": [{"text": " world"}]}},
    {"content": {"role": "model", "parts": [{"text": THOUGHT, "thought": True},
                                            {"text": "Hello world"}]},
     "actions": {"stateDelta": {"mood": "ok", "a/b~": 1}}},
    {"content": {"role": "model",
                 "parts": [{"functionCall": {"id": "c1", "name": "lookup", "args": {"q": "x"}}}]}},
    {"content": {"role": "user", "parts": [{"functionResponse": {"id": "c1", "name": "lookup",
                                                                  "response": {"v": 2}}}]}},
    {"content": {"role": "model", "parts": [{"text": "Done."}]}},
]


def scripted_daemon(t, scripts, *args, gate=None):
    adk = ScriptedAdk(t, scripts, gate)
    return adk, t.daemon(*args, upstream=adk.up.url())


@test(timeout=30)
def test_agui_translates_adk_events_like_the_reference_middleware(t):
    adk, d = scripted_daemon(t, [SCRIPT])
    s = post(t, d, run_input("th1", "run-a", [user("u1", "hi")], state={"k": 1},
                             tools=[{"name": "lookup", "description": "d", "parameters": {}}],
                             forwardedProps={"p": True}))
    evs = events(s)
    ids = [e.get("messageId") for e in evs if e["type"] == "REASONING_START"]
    eq(len(ids), 1, "one reasoning span")
    r = ids[0]
    m = next(e["messageId"] for e in evs if e["type"] == "TEXT_MESSAGE_START")
    last = [e["messageId"] for e in evs if e["type"] == "TEXT_MESSAGE_START"][-1]
    res = next(e["messageId"] for e in evs if e["type"] == "TOOL_CALL_RESULT")
    eq(brief(evs), [
        ("RUN_STARTED", ""),
        ("REASONING_START", r), ("REASONING_MESSAGE_START", r), ("REASONING_MESSAGE_CONTENT", THOUGHT),
        ("REASONING_MESSAGE_END", r), ("REASONING_END", r),
        ("TEXT_MESSAGE_START", m), ("TEXT_MESSAGE_CONTENT", "Hello"),
        ("TEXT_MESSAGE_CONTENT", " world"),
        ("TEXT_MESSAGE_END", m),
        ("STATE_DELTA", json.dumps([{"op": "add", "path": "/mood", "value": "ok"},
                                    {"op": "add", "path": "/a~1b~0", "value": 1}])),
        ("TOOL_CALL_START", "c1"), ("TOOL_CALL_ARGS", '{"q":"x"}'), ("TOOL_CALL_END", "c1"),
        ("TOOL_CALL_RESULT", res),
        ("TEXT_MESSAGE_START", last), ("TEXT_MESSAGE_CONTENT", "Done."), ("TEXT_MESSAGE_END", last),
        ("RUN_FINISHED", ""),
    ], "the AG-UI events")
    expect(len({r, m, last, res}) == 4, "distinct ids: %r" % [r, m, last, res])
    eq((evs[0]["threadId"], evs[0]["runId"]), ("th1", "run-a"), "RUN_STARTED names the client's run")
    eq((evs[-1]["threadId"], evs[-1]["runId"]), ("th1", "run-a"), "RUN_FINISHED too")
    rc_run = evs[0]["metadata"]["runcast"]["run_id"]
    eq(evs[-1]["metadata"]["runcast"], {"run_id": rc_run, "events": 7}, "runcast's extras")
    start = next(e for e in evs if e["type"] == "TOOL_CALL_START")
    eq(start["toolCallName"], "lookup", "the tool's name")
    result = next(e for e in evs if e["type"] == "TOOL_CALL_RESULT")
    eq((result["toolCallId"], result["role"], result["content"]), ("c1", "tool", '{"v":2}'),
       "the tool result")
    # What went upstream: the one new message, the state, the rest in customMetadata.
    eq(len(adk.bodies), 1, "one /run_sse")
    b = adk.bodies[0]
    eq(b["newMessage"], {"role": "user", "parts": [{"text": "hi"}]}, "newMessage")
    eq(b["stateDelta"], {"k": 1}, "stateDelta")
    eq(b["customMetadata"], {"agui": {"tools": [{"name": "lookup", "description": "d",
                                                 "parameters": {}}],
                                      "forwardedProps": {"p": True}}}, "customMetadata")
    eq((b["sessionId"], b["userId"], b["appName"], b["streaming"]), ("th1", "u", "app", True),
       "the run's session")
    # Raw framing: LF only, an id line on every event.
    raw = bytes(s.raw)
    expect(b"\r" not in raw, "LF framing only")
    eq(raw.count(b"\nid: ") + raw.startswith(b"id: "), len(evs), "an id line per event")

    # The thread rebuilt: the resume of a finished run is its snapshot and its end.
    g = SseClient(t, d.port, agui_path() + "/th1")
    snap = events(g)
    eq([e["type"] for e in snap], ["RUN_STARTED", "MESSAGES_SNAPSHOT", "RUN_FINISHED"], "resume")
    eq(snap[1]["messages"], [
        user("u1", "hi"),
        {"id": r, "role": "reasoning", "content": THOUGHT},
        {"id": m, "role": "assistant", "content": "Hello world"},
        {"id": "c1", "role": "assistant",
         "toolCalls": [{"id": "c1", "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q":"x"}'}}]},
        {"id": res, "toolCallId": "c1", "role": "tool", "content": '{"v":2}'},
        {"id": last, "role": "assistant", "content": "Done."},
    ], "the snapshot: what the client built")
    eq(snap[2], evs[-1], "the same RUN_FINISHED")


@test(timeout=30)
def test_agui_next_run_sends_only_what_is_new(t):
    adk, d = scripted_daemon(t, [SCRIPT, [{"content": {"parts": [{"text": "ok"}]}}],
                                 [{"content": {"parts": [{"text": "ok"}]}}]])
    evs = events(post(t, d, run_input("th2", "r1", [user("u1", "hi")])))
    g = events(SseClient(t, d.port, agui_path() + "/th2"))
    history = g[1]["messages"]
    # The client's next input: everything it has, a tool result and a new question.
    tool = {"id": "t9", "role": "tool", "toolCallId": "c1", "content": '{"ok":true}'}
    evs = events(post(t, d, run_input("th2", "r2", history + [tool, user("u2", "next")])))
    eq(evs[-1]["type"], "RUN_FINISHED", "second run")
    eq(adk.bodies[1]["newMessage"], {"role": "user", "parts": [
        {"functionResponse": {"id": "c1", "name": "lookup", "response": {"ok": True}}},
        {"text": "next"}]}, "only the new messages went upstream")
    expect("stateDelta" not in adk.bodies[1] and "customMetadata" not in adk.bodies[1],
           "nothing else: %r" % adk.bodies[1])
    # A non-JSON tool result goes as {"result": text}; the name comes from the thread.
    tool2 = {"id": "t10", "role": "tool", "toolCallId": "c1", "content": "plain"}
    g = events(SseClient(t, d.port, agui_path() + "/th2"))
    evs = events(post(t, d, run_input("th2", "r3", g[1]["messages"] + [tool2])))
    eq(adk.bodies[2]["newMessage"]["parts"],
       [{"functionResponse": {"id": "c1", "name": "lookup", "response": {"result": "plain"}}}],
       "a text tool result")


@test()
def test_agui_refuses_bad_input_with_clear_errors(t):
    d = t.daemon()
    cases = [
        (b"{not json", "invalid_json"),
        (b"[]", "invalid_input"),
        (json.dumps({"runId": "r", "messages": []}).encode(), "invalid_input"),
        (json.dumps(run_input("a/b", "r", [user("u1", "x")])).encode(), "invalid_input"),
        (json.dumps(run_input("..", "r", [user("u1", "x")])).encode(), "invalid_input"),
        (json.dumps(run_input("t", "", [user("u1", "x")])).encode(), "invalid_input"),
        (json.dumps(run_input("t", "r", {"id": "u1"})).encode(), "invalid_input"),
        (json.dumps(run_input("t", "r", [{"role": "user", "content": "no id"}])).encode(),
         "invalid_input"),
        (json.dumps(run_input("t", "r", [user("u1", "x")], state=[1])).encode(), "invalid_input"),
        (json.dumps(run_input("t", "r", [user("u1", "x")], tools={})).encode(), "invalid_input"),
        (json.dumps(run_input("t", "r", [{"id": "a", "role": "assistant", "content": "x"}])).encode(),
         "no_new_message"),
        (json.dumps(run_input("t", "r", [user("u1", "")])).encode(), "no_new_message"),
        (json.dumps(run_input("t", "r", [{"id": "t1", "role": "tool", "toolCallId": "nope",
                                          "content": "x"}])).encode(), "invalid_input"),
    ]
    for body, code in cases:
        r = request(d.port, "POST", agui_path(), body, JSON)
        check_error(r, 400, "POST %r" % body[:80], code)
    r = request(d.port, "POST", agui_path(), b"{}", {"Content-Type": "text/plain"})
    check_error(r, 415, "text/plain", "unsupported_media_type")
    r = request(d.port, "GET", agui_path())
    eq((r.status, r.header("Allow")), (405, "POST"), "GET …/agui")
    r = request(d.port, "POST", agui_path() + "/t", b"{}", JSON)
    eq((r.status, r.header("Allow")), (405, "GET"), "POST …/agui/{thread}")
    r = request(d.port, "GET", agui_path() + "/a%2Fb")
    check_error(r, 400, "bad thread", "invalid_path_parameter")
    # No run was started by any of them, and the daemon serves on.
    eq(request(d.port, "GET", "/task-status").json()["total_tasks"], 0, "no runs")
    task_status(d, "t", expect_status=404)


@test()
def test_agui_resume_of_an_unknown_thread_is_204_and_creates_nothing(t):
    d = t.daemon()
    r = request(d.port, "GET", agui_path() + "/never")
    eq((r.status, r.body), (204, b""), "unknown thread")
    task_status(d, "never", expect_status=404)  # no session was created


@test(timeout=30)
def test_agui_resume_mid_run_gives_the_snapshot_then_the_tail(t):
    d = t.daemon()
    words = " ".join("w%d" % i for i in range(12))
    a = post(t, d, run_input("th3", "r1", [user("u1", words + " !word-delay=60ms")]))
    a.wait_for(lambda evs: sum('"TEXT_MESSAGE_CONTENT"' in e.data for e in evs) >= 3,
               10 * TIME_SCALE, "three content events")
    a.close()  # the page reloads
    g = SseClient(t, d.port, agui_path() + "/th3")
    evs = events(g)
    types = [e["type"] for e in evs]
    eq(types[:3], ["RUN_STARTED", "MESSAGES_SNAPSHOT", "TEXT_MESSAGE_START"], "the preamble")
    eq(types[-2:], ["TEXT_MESSAGE_END", "RUN_FINISHED"], "the end")
    expect(set(types[3:-2]) == {"TEXT_MESSAGE_CONTENT"}, "then content only: %r" % types)
    snap = evs[1]["messages"]
    eq(snap[0], user("u1", words + " !word-delay=60ms"), "the input as the client sent it")
    eq(len(snap), 2, "input and the unfinished reply")
    mid = snap[1]["id"]
    eq(evs[2]["messageId"], mid, "the re-opening start names the unfinished message")
    text = snap[1]["content"] + "".join(e["delta"] for e in evs[3:-2])
    eq(text, "Echo: " + words, "snapshot and tail: no text missing or repeated")
    # A second resume now: the finished thread, the same message.
    snap2 = events(SseClient(t, d.port, agui_path() + "/th3"))
    eq(snap2[1]["messages"][1], {"id": mid, "role": "assistant", "content": "Echo: " + words},
       "the finished message")
    eq(snap2[2]["type"], "RUN_FINISHED", "and the run's end")


@test(timeout=30)
def test_agui_run_is_a_runcast_run(t):
    d = t.daemon()
    core = t.sse(d, spath("th4") + "/run")
    a = post(t, d, run_input("th4", "client-run", [user("u1", "a b c d e f g h !word-delay=80ms")]))
    started = core.wait_event("run.started")
    rid = started.json()["run_id"]
    eq(started.json()["agui"], {"threadId": "th4", "runId": "client-run",
                                "messages": [user("u1", "a b c d e f g h !word-delay=80ms")]},
       "the run's first event records its AG-UI input")
    st = task_status(d, "th4")
    eq((st["has_task"], st["status"], st["run_id"]), (True, "running", rid), "task status")
    a.wait_for(lambda evs: any('"TEXT_MESSAGE_CONTENT"' in e.data for e in evs), 10 * TIME_SCALE,
               "content")
    r = request(d.port, "DELETE", spath("th4") + "/run")
    eq(r.status, 200, "cancel")
    evs = events(a)
    eq([e["type"] for e in evs[-2:]], ["TEXT_MESSAGE_END", "RUN_ERROR"], "closed, then the error")
    eq((evs[-1]["code"], evs[-1]["metadata"]["runcast"]),
       ("cancelled", {"run_id": rid, "reason": "client_request"}), "RUN_ERROR cancelled")
    core.wait_event("run.cancelled")
    # A client that leaves ends only its answer.
    b = post(t, d, run_input("th4", "r2", [user("u2", "x y z !word-delay=100ms")]))
    b.wait_for(lambda evs: len(evs) >= 2, 10 * TIME_SCALE, "started")
    b.close()
    core.wait_event("run.completed", timeout=10 * TIME_SCALE)
    eq(task_status(d, "th4")["status"], "completed", "the run went on")


@test(timeout=30)
def test_agui_supersede_ends_the_first_answer(t):
    d = t.daemon()
    a = post(t, d, run_input("th5", "r1", [user("u1", "a b c d e f g !word-delay=100ms")]))
    a.wait_for(lambda evs: any('"TEXT_MESSAGE_CONTENT"' in e.data for e in evs), 10 * TIME_SCALE,
               "content")
    b = post(t, d, run_input("th5", "r2", [user("u1", "x"), user("u2", "second")]))
    first, second = events(a), events(b)
    eq([e["type"] for e in first[-2:]], ["TEXT_MESSAGE_END", "RUN_ERROR"], "first closed, then error")
    eq(first[-1]["code"], "superseded", "superseded")
    eq(first[-1]["metadata"]["runcast"]["by"], second[0]["metadata"]["runcast"]["run_id"], "by")
    eq((second[0]["runId"], second[-1]["type"]), ("r2", "RUN_FINISHED"), "second run")
    content = "".join(e["delta"] for e in second if e["type"] == "TEXT_MESSAGE_CONTENT")
    eq(content, "Echo: second", "only the new message went upstream")


@test(timeout=30)
def test_agui_agent_error_and_upstream_failure_codes(t):
    d = t.daemon()
    evs = events(post(t, d, run_input("th6", "r1", [user("u1", "one two !error=boom")])))
    eq([e["type"] for e in evs[-2:]], ["TEXT_MESSAGE_END", "RUN_ERROR"], "closed, then the error")
    eq((evs[-1]["message"], evs[-1]["code"]), ("boom", "agent_error"), "agent_error")
    evs = events(post(t, d, run_input("th7", "r1", [user("u1", "x !status=500")])))
    eq([e["type"] for e in evs], ["RUN_STARTED", "RUN_ERROR"], "nothing opened")
    eq((evs[-1]["code"], evs[-1]["metadata"]["runcast"]["status"]), ("upstream_http", 500),
       "upstream_http")


@test(timeout=30)
def test_agui_heartbeats_are_ping_comments(t):
    d = t.daemon("--heartbeat", "0.1")
    a = post(t, d, run_input("th8", "r1", [user("u1", "a !first=600ms")]))
    a.wait_comment("ping", 5 * TIME_SCALE)
    evs = events(a)
    eq(evs[-1]["type"], "RUN_FINISHED", "the run ends")
    expect(b": keepalive" not in bytes(a.raw), "no other heartbeat")


@test(timeout=30)
def test_agui_gate_cors_and_user_stream_cap(t):
    d = t.daemon("--auth", "jwt", "--allow-origin", "https://app.test",
                 "--max-subscribers-per-user", "1", env={"RUNCAST_JWT_SECRET": SECRET})
    body = json.dumps(run_input("th9", "r1", [user("u1", "a b c !word-delay=200ms")])).encode()
    r = request(d.port, "POST", agui_path(), body, JSON)
    eq(r.status, 401, "no token")
    other = bearer(mint(claims_for("v")))
    r = request(d.port, "POST", agui_path(), body, dict(JSON, **other))
    check_error(r, 403, "another user's token", "forbidden")
    r = request(d.port, "OPTIONS", agui_path(), None,
                {"Origin": "https://app.test", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type, authorization"})
    eq(r.status, 204, "preflight")
    expect("POST" in (r.header("Access-Control-Allow-Methods") or ""), "POST allowed")
    eq(r.header("Access-Control-Allow-Origin"), "https://app.test", "origin")
    mine = bearer(mint(claims_for("u")))
    a = post(t, d, json.loads(body), headers=dict(mine, Origin="https://app.test"))
    eq(a.header("Access-Control-Allow-Origin"), "https://app.test", "CORS on the stream")
    a.wait_for(lambda evs: len(evs) >= 1, 10 * TIME_SCALE, "started")
    # The user's one stream is open: a second is refused, and starts no run.
    r = request(d.port, "POST", agui_path(),
                json.dumps(run_input("th10", "r1", [user("u1", "x")])).encode(), dict(JSON, **mine))
    check_error(r, 429, "second stream", "too_many_user_subscribers")
    r = request(d.port, "GET", spath("th10") + "/task-status", None, mine)
    check_error(r, 404, "no session th10")
    r = request(d.port, "GET", agui_path() + "/th9", None, mine)
    check_error(r, 429, "resume while the stream is open", "too_many_user_subscribers")
    eq(events(a)[-1]["type"], "RUN_FINISHED", "first stream ends")
    wait_until(lambda: request(d.port, "GET", agui_path() + "/th9", None, mine).status == 200,
               5 * TIME_SCALE, "the stream's slot is given back")
