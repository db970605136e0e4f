"""runcast as an ADK drop-in (DESIGN.md "ADK drop-in"): ADK's own POST
/run_sse and POST /run served by runcast as durable runs, checked against
the real ADK JS api_server (test_adk.py's offline agents): the same request
sent to ADK directly and through runcast gives the same bytes (event ids,
invocation ids and timestamps aside); a client that leaves does not end
the run; a second call on a session supersedes the first, which ends with
ADK's error frame."""

import json
import re

from harness import (TIME_SCALE, SseClient, eq, expect, request, spath, task_status, test,
                     wait_until)
from test_adk import adk_daemon, shared_adk, text_of, user_text


def run_body(app, sid, text, streaming=True, user="u", **extra):
    body = {"appName": app, "userId": user, "sessionId": sid, "newMessage": user_text(text),
            "streaming": streaming}
    body.update(extra)
    return body


def call_sse(t, port, body, timeout=20):
    """POST /run_sse; waits for the body's end; returns the SseClient."""
    s = SseClient(t, port, "/run_sse", method="POST", body=json.dumps(body).encode(),
                  headers={"Content-Type": "application/json"})
    s.wait_eof(timeout * TIME_SCALE)
    return s


def normalized(raw):
    """The body with what differs between two runs of one agent masked:
    event and function-call ids, invocation ids, timestamps."""
    text = bytes(raw).decode("utf-8")
    text = re.sub(r'"(id|invocationId)":"[^"]*"', r'"\1":"*"', text)
    return re.sub(r'"timestamp":[0-9.]+', '"timestamp":0', text)


def frames(s):
    """The JSON of each ADK frame (`data: <JSON>`) of a finished stream."""
    return [json.loads(e.data) for e in s.events]


def direct_and_through(t, adk, d, app, text, streaming=True, sid="same"):
    """The same /run_sse to ADK (session created there first: ADK answers
    404 for one it does not know) and through runcast (which creates it).
    Returns both finished streams."""
    r = request(adk.port, "POST", "/apps/%s/users/u/sessions/%s-direct" % (app, sid), b"{}",
                {"Content-Type": "application/json"})
    eq(r.status, 200, "ADK session create (%r)" % r.body[:200])
    direct = call_sse(t, adk.port, run_body(app, sid + "-direct", text, streaming))
    through = call_sse(t, d.port, run_body(app, sid + "-rc", text, streaming))
    return direct, through


@test(timeout=90)
def test_dropin_run_sse_sends_the_bytes_adk_sends(t):
    adk = shared_adk()
    d = adk_daemon(t, adk)
    cases = [("echo", "hello drop-in", True, 4), ("echo", "not streamed", False, 1),
             ("tools", "add 2 and 40", True, None), ("fails", "partial then a throw", True, 3),
             ("fails", "outside", True, 1), ("throws_non_error", "go", True, 2)]
    for n, (app, text, streaming, count) in enumerate(cases):
        direct, through = direct_and_through(t, adk, d, app, text, streaming, sid="c%d" % n)
        what = "%s %r streaming=%s" % (app, text, streaming)
        eq((through.status, through.header("Content-Type")), (200, "text/event-stream"),
           "%s: status and type" % what)
        eq((direct.completed, through.completed), (True, True), "%s: both bodies ended" % what)
        expect(through.raw, "%s: an empty body" % what)
        eq(normalized(through.raw), normalized(direct.raw), "%s: the body" % what)
        if count is not None:
            eq(len(through.events), count, "%s: frames" % what)
        if app == "fails" and text == "outside":
            eq(frames(through), [{"error": "offline failure outside the model"}],
               "ADK's error frame, as ADK sent it")
    eq(text_of(frames(through)[0]), "about to throw ", "throws_non_error: the partial")
    eq(frames(through)[1], {}, "throws_non_error: ADK JS's {} frame")


@test(timeout=60)
def test_dropin_run_answers_the_event_array_adk_answers(t):
    adk = shared_adk()
    d = adk_daemon(t, adk)
    r = request(adk.port, "POST", "/apps/echo/users/u/sessions/arr-direct", b"{}",
                {"Content-Type": "application/json"})
    eq(r.status, 200, "ADK session create")
    got = {}
    for port, sid in [(adk.port, "arr-direct"), (d.port, "arr-rc")]:
        r = request(port, "POST", "/run", json.dumps(run_body("echo", sid, "as an array", True)).encode(),
                    {"Content-Type": "application/json"}, timeout=20 * TIME_SCALE)
        eq((r.status, r.header("Content-Type").split(";")[0]), (200, "application/json"),
           "POST /run on port %d" % port)
        got[port] = r.json()
    compact = {port: json.dumps(evs, separators=(",", ":")).encode() for port, evs in got.items()}
    eq(normalized(compact[d.port]), normalized(compact[adk.port]), "the events of /run")
    # ADK's /run never streams, whatever "streaming" says: one final event.
    eq([e.get("partial") for e in got[d.port]], [None], "partial flags")
    eq(text_of(got[d.port][-1]), "echo: as an array", "final text")
    # A run that fails: ADK JS's shape, 500 {"error", "events"}.
    r = request(d.port, "POST", "/run", json.dumps(run_body("fails", "arr-fail", "outside")).encode(),
                {"Content-Type": "application/json"}, timeout=20 * TIME_SCALE)
    eq((r.status, r.json()), (500, {"error": "offline failure outside the model", "events": []}),
       "a failed /run")


@test(timeout=60)
def test_dropin_client_leaving_does_not_end_the_run(t):
    adk = shared_adk()
    d = adk_daemon(t, adk)
    sid = "leaver"
    s = SseClient(t, d.port, "/run_sse", method="POST",
                  body=json.dumps(run_body("slow", sid, "slow 30 chunks every 50ms")).encode(),
                  headers={"Content-Type": "application/json"})
    s.wait_count(2, 10 * TIME_SCALE)
    s.close()
    # The run goes on: runcast's status, its stream, and ADK's session say so.
    wait_until(lambda: task_status(d, sid, app="slow")["status"] == "completed", 20 * TIME_SCALE,
               "the run completed after its client left", interval=0.05)
    st = task_status(d, sid, app="slow")
    eq((st["has_task"], st["events"]), (False, 31), "task status (30 partial events and the final)")
    replay = t.sse(d, spath(sid, app="slow") + "/run")
    done = replay.wait_event("run.completed", 5 * TIME_SCALE).json()
    eq(done.get("events"), 31, "run.completed on runcast's stream")
    agent = [e.json() for e in replay.snapshot() if e.type == "agent.event"]
    eq(text_of(agent[-1]), "".join("tick %d/30 " % i for i in range(1, 31)), "the final text")
    stored = [e for e in adk.session("slow", "u", sid)["events"] if e.get("author") != "user"]
    eq(stored[-1], agent[-1], "the final event ADK stored is the one runcast relayed")


@test(timeout=90)
def test_dropin_second_call_supersedes_the_first_and_adk_never_runs_both(t):
    adk = shared_adk()
    # ADK JS goes on with a run whose client left: the drain keeps the next
    # request until ADK ended it (README "ADK api_server").
    d = adk_daemon(t, adk, "--upstream-drain", "20s")
    sid = "twice"
    first = SseClient(t, d.port, "/run_sse", method="POST",
                      body=json.dumps(run_body("slow", sid, "slow 20 chunks every 50ms")).encode(),
                      headers={"Content-Type": "application/json"})
    first.wait_count(2, 10 * TIME_SCALE)
    second = call_sse(t, d.port, run_body("slow", sid, "slow 3 chunks every 20ms"), timeout=30)
    first.wait_eof(5 * TIME_SCALE)
    eq(first.completed, True, "the first call's body ended normally")
    last = json.loads(first.events[-1].data)
    second_id = task_status(d, sid, app="slow")["run_id"]
    eq(last.get("error"), "the run was superseded by run " + second_id, "the first call's last frame")
    eq(last.get("error_details", {}).get("error_type"), "superseded", "error_details")
    eq([text_of(f) for f in frames(second)],
       ["tick 1/3 ", "tick 2/3 ", "tick 3/3 ", "tick 1/3 tick 2/3 tick 3/3 "], "the second call")
    # ADK's session: the first invocation's events all come before the
    # second's (never interleaved).
    stored = [e for e in adk.session("slow", "u", sid)["events"]]
    order = []
    for e in stored:
        if not order or order[-1] != e["invocationId"]:
            order.append(e["invocationId"])
    eq(len(order), 2, "invocations in ADK's session, in order of their events: %r"
       % [(e["invocationId"][-6:], e["author"], text_of(e)[:12]) for e in stored])


@test(timeout=60)
def test_dropin_cancel_through_runcast_ends_the_call_with_an_error_frame(t):
    adk = shared_adk()
    d = adk_daemon(t, adk)
    sid = "cancelled"
    s = SseClient(t, d.port, "/run_sse", method="POST",
                  body=json.dumps(run_body("slow", sid, "slow 100 chunks every 50ms")).encode(),
                  headers={"Content-Type": "application/json"})
    s.wait_count(1, 10 * TIME_SCALE)
    r = d.delete(spath(sid, app="slow") + "/run")
    eq(r.status, 200, "DELETE …/run")
    s.wait_eof(5 * TIME_SCALE)
    eq(s.completed, True, "the call's body ended normally")
    last = json.loads(s.events[-1].data)
    eq(last, {"error": "the run was cancelled (client_request)",
              "error_details": {"error_type": "cancelled",
                                "error_message": "the run was cancelled (client_request)",
                                "run_id": r.json()["run_id"]}}, "the last frame")


@test(timeout=60)
def test_dropin_snake_case_bodies_and_adks_validation_answers(t):
    adk = shared_adk()
    d = adk_daemon(t, adk)
    body = {"app_name": "echo", "user_id": "u", "session_id": "snake",
            "new_message": user_text("in snake case"), "streaming": False}
    s = call_sse(t, d.port, body)
    eq([text_of(f) for f in frames(s)], ["echo: in snake case"], "a snake_case body's events")

    def post(body_bytes):
        return request(d.port, "POST", "/run_sse", body_bytes, {"Content-Type": "application/json"})

    r = post(json.dumps({"appName": "echo", "sessionId": 7}).encode())
    eq(r.status, 422, "missing and mistyped fields")
    eq([(e["type"], e["loc"]) for e in r.json()["detail"]],
       [("missing", ["body", "userId"]), ("string_type", ["body", "sessionId"]),
        ("missing", ["body", "newMessage"])], "the validation errors")
    r = post(b'{"appName": ')
    eq((r.status, r.json()["detail"][0]["type"]), (422, "json_invalid"), "invalid JSON")
    r = post(json.dumps(run_body("echo", "a b", "x")).encode())
    eq((r.status, r.json()["detail"][0]["type"], r.json()["detail"][0]["loc"]),
       (422, "string_pattern_mismatch", ["body", "sessionId"]), "a session id runcast cannot key")
    r = post(json.dumps(dict(run_body("echo", "s", "x"), streaming="yes")).encode())
    eq((r.status, r.json()["detail"][0]["type"]), (422, "bool_type"), "streaming not a boolean")
    r = request(d.port, "POST", "/run", b"[1]", {"Content-Type": "application/json"})
    eq((r.status, r.json()["detail"][0]["type"]), (422, "model_attributes_type"), "not an object")
    # Nothing was started by the refused calls.
    eq(request(d.port, "GET", "/task-status?all=1").json()["sessions_total"], 1, "sessions")


@test(timeout=60)
def test_dropin_run_shows_on_runcasts_stream_and_status(t):
    adk = shared_adk()
    d = adk_daemon(t, adk)
    sid = "watched"
    watch = t.sse(d, spath(sid, app="echo") + "/run")
    watch.wait_retry()
    s = call_sse(t, d.port, run_body("echo", sid, "watch me"))
    done = watch.wait_event("run.completed", 10 * TIME_SCALE).json()
    agent = [e.data for e in watch.snapshot() if e.type == "agent.event"]
    eq(agent, [e.data for e in s.events], "the same events on runcast's stream as in the call")
    st = task_status(d, sid, app="echo")
    eq((st["status"], st["run_id"], st["events"]), ("completed", done["run_id"], 4), "task status")


@test(timeout=30)
def test_dropin_calls_need_a_token_of_the_bodys_user(t):
    from test_auth import bearer, claims_for, jwt_daemon, mint
    d = jwt_daemon(t)  # the demo agent upstream
    body = json.dumps(run_body("a", "tok", "hi !events=2")).encode()
    json_type = {"Content-Type": "application/json"}
    r = request(d.port, "POST", "/run_sse", body, json_type)
    eq((r.status, r.json()["error"]["code"]), (401, "unauthorized"), "no token")
    r = request(d.port, "POST", "/run", body, dict(json_type, **bearer(mint(claims_for("bob")))))
    eq((r.status, r.json()["error"]["code"]), (403, "forbidden"), "another user's token")
    s = SseClient(t, d.port, "/run_sse", method="POST", body=body,
                  headers=dict(json_type, **bearer(mint(claims_for("u")))))
    s.wait_eof(10 * TIME_SCALE)
    eq((s.completed, len(s.events)), (True, 2), "the user's own call: its two events")
    st = request(d.port, "GET", spath("tok", app="a") + "/task-status",
                 headers=bearer(mint(claims_for("u")))).json()
    eq((st["status"], st["events"]), ("completed", 2), "the one run the refused calls left")
