"""runcast in front of the real ADK api_server: npm's ADK JS 2.0.0
(`adk api_server` from @google/adk-devtools, installed by tests/adk/bootstrap)
with the offline agents in tests/adk/agents/ (real LlmAgents whose model is a
local BaseLlm that feeds Gemini-shaped chunks through ADK's own streaming
aggregator: no network, no API key).

One ADK server is shared by the tests that only need one (started on first
use, stopped at exit); a test that restarts ADK starts its own. Each test
uses its own session ids, so what ADK stores can be checked exactly."""

import atexit
import json
import os
import signal
import subprocess
import tempfile
import threading

from harness import (TIME_SCALE, TestFailure, eq, expect, fail, free_port, post_run, request,
                     run_events, spath, task_status, terminal_events, test, wait_until)

ADK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "adk")
ADK_CLI = os.path.join(ADK_DIR, "node_modules", "@google", "adk-devtools", "dist", "esm",
                       "cli_entrypoint.js")
ADK_APPS = ["echo", "fails", "slow", "throws_non_error", "tools"]
ADK_START_TIMEOUT = 60.0


class AdkServer:
    """`adk api_server` on a loopback port. Ready when GET /list-apps names
    every offline agent (that also loads them: ADK loads agents lazily)."""

    def __init__(self, port=None):
        self.port = port or free_port()
        self.proc = None
        self.log = None
        self.start()

    def start(self):
        if not os.path.exists(ADK_CLI):
            fail("ADK JS is not installed (%s missing): run tests/adk/bootstrap" % ADK_CLI)
        self.log = tempfile.TemporaryFile()
        env = dict(os.environ)
        env.pop("DATABASE_URL", None)  # else ADK stores sessions there, not in memory
        self.proc = subprocess.Popen(
            ["node", ADK_CLI, "api_server", "--host", "127.0.0.1", "--port", str(self.port),
             "--compile", "false", "--bundle", "false", "--session_service_uri", "memory://",
             "agents"],
            cwd=ADK_DIR, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            env=env, start_new_session=True)
        try:
            wait_until(self._ready, ADK_START_TIMEOUT, "adk api_server on port %d" % self.port,
                       interval=0.05)
        except TestFailure as e:
            self.stop()
            fail("%s:\n%s" % (e, self.tail()))

    def _ready(self):
        """True once /list-apps names every agent; fails at once if the
        server exited."""
        if self.proc.poll() is not None:
            fail("adk api_server exited (rc=%s) before it was ready" % self.proc.returncode)
        try:
            r = request(self.port, "GET", "/list-apps", timeout=5.0)
            return r.status == 200 and r.json() == ADK_APPS
        except (OSError, ValueError, TestFailure):
            return False

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(5)

    def restart(self):
        """Stops the server and starts a new one on the same port: every
        session is gone (ADK JS keeps them in memory)."""
        self.stop()
        self.start()

    def tail(self, n=4000):
        if self.log is None:
            return ""
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-n:]

    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def get(self, path):
        r = request(self.port, "GET", path)
        eq(r.status, 200, "ADK GET %s status (body %r)" % (path, r.body[:200]))
        return r.json()

    def session(self, app, user, sid):
        return self.get("/apps/%s/users/%s/sessions/%s" % (app, user, sid))

    def session_ids(self, app, user):
        """The ids of the user's sessions in that app (ADK JS answers a page
        object {"sessions": [...]}, Python ADK a plain list)."""
        page = self.get("/apps/%s/users/%s/sessions" % (app, user))
        sessions = page["sessions"] if isinstance(page, dict) else page
        return sorted(s["id"] for s in sessions)


_shared = None
_shared_lock = threading.Lock()


def shared_adk():
    global _shared
    with _shared_lock:
        if _shared is None or _shared.proc.poll() is not None:
            _shared = AdkServer()
            atexit.register(_shared.stop)
        return _shared


def adk_daemon(t, adk, *args):
    return t.daemon(*args, upstream=adk.url())


def post_adk_body(d, sid, body, app, user="u"):
    """POST an ADK-style body ({"newMessage", "stateDelta", "streaming"}) to
    runcast's run endpoint; returns the run id."""
    path = spath(sid, app=app, user=user) + "/run"
    r = d.post_json(path, body)
    eq(r.status, 202, "POST %s status (body %r)" % (path, r.body[:300]))
    return r.json()["run_id"]


def user_text(text):
    return {"role": "user", "parts": [{"text": text}]}


def agent_events(s, rid):
    return [e.json() for e in run_events(s.snapshot(), rid) if e.type == "agent.event"]


def text_of(event):
    parts = (event.get("content") or {}).get("parts") or []
    return "".join(p.get("text", "") for p in parts)


def run_to_end(t, d, sid, app, message=None, body=None, terminal="run.completed", timeout=20):
    """Subscribes, posts a run (message text or an ADK-style body), waits for
    its terminal event; returns (stream, run_id, terminal event's data)."""
    s = t.sse(d, spath(sid, app=app) + "/run?from=live")
    s.wait_retry()
    if body is not None:
        rid = post_adk_body(d, sid, body, app)
    else:
        rid = post_run(d, sid, message, app=app)[0]["run_id"]
    ends = s.wait_for(lambda evs: terminal_events(evs, rid), timeout * TIME_SCALE,
                      "the end of run %s" % rid)
    eq(ends[0].type, terminal, "how run %s ended (%s)" % (rid, ends[0].data))
    return s, rid, ends[0].json()


def check_relayed_as_stored(adk, app, sid, relayed):
    """The run's non-partial events (ADK stores no partial ones) are, in
    order and identical, the last model-turn events ADK stored for the
    session: runcast relays ADK's JSON verbatim."""
    stored = [e for e in adk.session(app, "u", sid)["events"] if e.get("author") != "user"]
    finals = [e for e in relayed if e.get("partial") is not True]
    expect(finals, "no non-partial event relayed")
    eq(finals, stored[-len(finals):], "non-partial events relayed vs. stored by ADK")


@test(timeout=60)
def test_adk_streamed_runs_in_a_session_adk_never_saw_are_relayed_verbatim(t):
    adk = shared_adk()
    d = adk_daemon(t, adk)
    sid = "streamed"
    for n, text in enumerate(["hello real adk", "and a second run"]):
        s, rid, done = run_to_end(t, d, sid, "echo", message=text)
        evs = agent_events(s, rid)
        want = "echo: " + text
        eq([e.get("partial") for e in evs], [True, True, True, False], "run %d partial flags" % n)
        eq("".join(text_of(e) for e in evs[:3]), want, "run %d partial chunks" % n)
        eq(text_of(evs[3]), want, "run %d aggregated text" % n)
        final = evs[3]
        eq(final.get("finishReason"), "STOP", "run %d finishReason" % n)
        expect("turnComplete" not in final, "ADK JS sends no turnComplete: %r" % final)
        expect(isinstance(final.get("timestamp"), int) and final["timestamp"] > 10**12,
               "ADK JS timestamps are integer milliseconds: %r" % final.get("timestamp"))
        expect(isinstance(final.get("usageMetadata"), dict), "usageMetadata: %r" % final)
        eq(done.get("events"), 4, "run %d run.completed events" % n)
        check_relayed_as_stored(adk, "echo", sid, evs)
    # The session has exactly the id asked for, and no stray session exists.
    eq(adk.session_ids("echo", "u"), [sid], "ADK sessions of echo/u")
    stored = adk.session("echo", "u", sid)["events"]
    eq([e["author"] for e in stored], ["user", "echo", "user", "echo"], "turns ADK stored")
    eq(task_status(d, sid, app="echo")["status"], "completed", "task status")


@test(timeout=60)
def test_adk_non_streamed_run_is_one_event_without_partial(t):
    adk = shared_adk()
    d = adk_daemon(t, adk)
    s, rid, done = run_to_end(t, d, "plain", "echo", body={
        "newMessage": user_text("not streamed"), "streaming": False})
    evs = agent_events(s, rid)
    eq(len(evs), 1, "agent events")
    expect("partial" not in evs[0], "a non-streamed ADK JS event has no partial key: %r" % evs[0])
    eq(text_of(evs[0]), "echo: not streamed", "text")
    eq(done.get("events"), 1, "run.completed events")
    check_relayed_as_stored(adk, "echo", "plain", evs)


@test(timeout=60)
def test_adk_tool_call_and_the_usage_only_event_are_relayed(t):
    adk = shared_adk()
    d = adk_daemon(t, adk)
    s, rid, done = run_to_end(t, d, "tool", "tools", message="add 2 and 40")
    evs = agent_events(s, rid)
    calls = [p["functionCall"] for e in evs for p in (e.get("content") or {}).get("parts", [])
             if "functionCall" in p]
    answers = [p["functionResponse"] for e in evs for p in (e.get("content") or {}).get("parts", [])
               if "functionResponse" in p]
    eq([(c["name"], c["args"]) for c in calls], [("add", {"a": 2, "b": 40})], "function calls")
    eq([(a["name"], a["id"]) for a in answers], [("add", calls[0]["id"])], "function responses")
    eq(answers[0]["response"].get("result"), 42, "tool result")
    # ADK JS closes the function-call turn with an event that has usage and
    # a finish reason but no content: relayed like any other.
    bare = [e for e in evs if "content" not in e]
    eq(len(bare), 1, "events without content: %r" % bare)
    expect("usageMetadata" in bare[0] and bare[0].get("finishReason") == "STOP",
           "the content-less event: %r" % bare[0])
    eq(text_of(evs[-1]), "the sum of 2 and 40 is 42", "final text")
    eq(evs[-1].get("partial"), False, "final partial flag")
    eq(done.get("events"), len(evs), "run.completed events")
    check_relayed_as_stored(adk, "tools", "tool", evs)


@test(timeout=60)
def test_adk_state_delta_reaches_the_agents_state(t):
    adk = shared_adk()
    d = adk_daemon(t, adk)
    s, rid, _ = run_to_end(t, d, "state", "echo", body={
        "newMessage": user_text("state?"), "stateDelta": {"color": "blue", "n": 3}})
    evs = agent_events(s, rid)
    reply = text_of(evs[-1])
    expect(reply.startswith("state: "), "reply: %r" % reply)
    eq(json.loads(reply[len("state: "):]), {"color": "blue", "n": 3}, "state the agent saw")
    eq(adk.session("echo", "u", "state")["state"], {"color": "blue", "n": 3}, "ADK session state")


@test(timeout=60)
def test_adk_model_error_event_is_relayed_and_fails_the_run(t):
    adk = shared_adk()
    d = adk_daemon(t, adk)
    s, rid, failed = run_to_end(t, d, "fails", "fails", message="go", terminal="run.failed")
    evs = agent_events(s, rid)
    eq([e.get("partial") for e in evs], [True, True, None], "partials, then the error event")
    eq((evs[2].get("errorCode"), evs[2].get("errorMessage")),
       ("UNKNOWN_ERROR", "offline model failure"), "the relayed error event")
    eq(failed.get("code"), "agent_error", "run.failed code")
    eq(failed.get("message"), "offline model failure", "run.failed message")
    eq(failed.get("detail"), {"errorCode": "UNKNOWN_ERROR", "errorMessage": "offline model failure"},
       "run.failed detail")
    eq(task_status(d, "fails", app="fails")["status"], "failed", "task status")
    check_relayed_as_stored(adk, "fails", "fails", evs)

    # A Google API error inside the model: ADK puts its code in errorCode.
    s, rid, failed = run_to_end(t, d, "quota", "fails", message="json", terminal="run.failed")
    eq(failed.get("detail"), {"errorCode": "429", "errorMessage": "Resource exhausted (offline)"},
       "run.failed detail for an API error")


@test(timeout=60)
def test_adk_error_frames_fail_the_run_and_are_not_relayed(t):
    adk = shared_adk()
    d = adk_daemon(t, adk)
    # Thrown outside the model: ADK's final {"error": message} frame.
    s, rid, failed = run_to_end(t, d, "outside", "fails", message="outside", terminal="run.failed")
    eq(agent_events(s, rid), [], "agent events")
    eq((failed.get("code"), failed.get("message")),
       ("agent_error", "offline failure outside the model"), "run.failed")
    eq(failed.get("detail"), {"error": "offline failure outside the model"}, "run.failed detail")
    # Something that is not an Error thrown: ADK JS sends {} last.
    s, rid, failed = run_to_end(t, d, "boom", "throws_non_error", message="go", terminal="run.failed")
    evs = agent_events(s, rid)
    eq([(e.get("partial"), text_of(e)) for e in evs], [(True, "about to throw ")],
       "only the partial before the throw is relayed")
    eq((failed.get("code"), failed.get("detail")), ("agent_error", {}), "run.failed")
    # An app ADK does not know: ADK creates sessions for any app name, then
    # answers /run_sse 200 with an error frame.
    s, rid, failed = run_to_end(t, d, "nope", "nope", message="hi", terminal="run.failed")
    eq(failed.get("code"), "agent_error", "run.failed code for an unknown app")
    expect(failed.get("message", "").startswith("Agent 'nope' not found"), "message: %r" % failed)


@test(timeout=60)
def test_adk_supersede_and_cancel_a_slow_run(t):
    adk = shared_adk()
    d = adk_daemon(t, adk)
    sid = "slow"
    s = t.sse(d, spath(sid, app="slow") + "/run?from=live")
    s.wait_retry()
    first = post_run(d, sid, "slow 100 chunks every 100ms", app="slow")[0]["run_id"]
    s.wait_for(lambda evs: len(agent_events(s, first)) >= 2, 10 * TIME_SCALE, "two ticks")
    second = post_run(d, sid, "slow 3 chunks every 20ms", app="slow")[0]["run_id"]
    sup = s.wait_event("run.superseded", 5 * TIME_SCALE, run_id=first).json()
    eq(sup.get("by"), second, "superseded by")
    s.wait_event("run.completed", 10 * TIME_SCALE, run_id=second)
    texts = [text_of(e) for e in agent_events(s, second)]
    eq(texts, ["tick 1/3 ", "tick 2/3 ", "tick 3/3 ", "tick 1/3 tick 2/3 tick 3/3 "],
       "the second run's events")

    third = post_run(d, sid, "slow 100 chunks every 100ms", app="slow")[0]["run_id"]
    s.wait_for(lambda evs: len(agent_events(s, third)) >= 1, 10 * TIME_SCALE, "a tick")
    r = d.delete(spath(sid, app="slow") + "/run")
    eq(r.status, 200, "DELETE run status")
    eq(r.json().get("run_id"), third, "DELETE run id")
    eq(s.wait_event("run.cancelled", 5 * TIME_SCALE, run_id=third).json().get("reason"),
       "client_request", "cancel reason")
    eq(task_status(d, sid, app="slow")["status"], "cancelled", "task status")


def supersede_mid_run(t, d, sid):
    """Posts a 2 s slow run, then, after its second tick, a short one that
    supersedes it; returns (stream, first run id, second run id) once the
    second completed."""
    s = t.sse(d, spath(sid, app="slow") + "/run?from=live")
    s.wait_retry()
    first = post_run(d, sid, "slow 20 chunks every 100ms", app="slow")[0]["run_id"]
    s.wait_for(lambda evs: len(agent_events(s, first)) >= 2, 10 * TIME_SCALE, "two ticks")
    second = post_run(d, sid, "slow 3 chunks every 20ms", app="slow")[0]["run_id"]
    s.wait_event("run.superseded", 2 * TIME_SCALE, run_id=first)
    s.wait_event("run.completed", 15 * TIME_SCALE, run_id=second)
    return s, first, second


def stored_invocations(adk, sid, count):
    """The invocationId of each event ADK stored for the session, once it
    holds count events (the abandoned run may still be going on in ADK)."""
    def events():
        evs = adk.session("slow", "u", sid)["events"]
        return len(evs) >= count and evs
    evs = wait_until(events, 10 * TIME_SCALE, "%d events in ADK's session %s" % (count, sid))
    eq(len(evs), count, "events in ADK's session")
    return [e["invocationId"] for e in evs]


def interleaved(invocations):
    """True when some invocation's events are not contiguous."""
    seen, last = set(), None
    for inv in invocations:
        if inv != last and inv in seen:
            return True
        seen.add(inv)
        last = inv
    return False


@test(timeout=60)
def test_adk_drain_keeps_two_runs_of_one_session_apart(t):
    """ADK JS goes on with a run whose client went away; with a drain the
    superseding run's request is sent only once the first run ended, so
    ADK's session holds the first invocation's events, then the second's."""
    adk = shared_adk()
    d = adk_daemon(t, adk, "--upstream-drain", "10s")
    sid = "drained"
    s, first, second = supersede_mid_run(t, d, sid)
    invs = stored_invocations(adk, sid, 4)  # user + final, twice
    eq(len(set(invs)), 2, "invocations in ADK's session")
    expect(not interleaved(invs), "ADK's session written by two runs at once: %r" % invs)
    eq(invs[0], invs[1], "the first invocation's events come first (%r)" % invs)
    drained = [r for r in d.logs() if r.get("event") == "upstream.drained"]
    eq(len(drained), 1, "upstream.drained log lines")
    eq([text_of(e) for e in agent_events(s, second)][-1], "tick 1/3 tick 2/3 tick 3/3 ",
       "the second run's final text")


@test(timeout=60)
def test_adk_without_drain_two_runs_of_one_session_interleave(t):
    """What --upstream-drain exists for: with 0 (the default) the superseded
    run's connection closes at once, ADK JS runs it to its end anyway, and
    the second run, sent at once, writes the same session meanwhile (its
    user event and whole 60 ms reply land inside the first's 2 s run)."""
    adk = shared_adk()
    d = adk_daemon(t, adk)
    sid = "undrained"
    supersede_mid_run(t, d, sid)
    invs = stored_invocations(adk, sid, 4)
    eq(len(set(invs)), 2, "invocations in ADK's session")
    a, b = invs[0], [i for i in invs if i != invs[0]][0]
    eq(invs, [a, b, b, a], "ADK's session: first's user event, the second run, first's final")
    expect(interleaved(invs), "expected interleaved invocations: %r" % invs)


@test(timeout=120)
def test_adk_restart_between_two_runs_of_one_session(t):
    adk = AdkServer()
    t.closers.append(adk.stop)
    d = adk_daemon(t, adk)
    sid = "survivor"
    run_to_end(t, d, sid, "echo", message="before the restarts")
    eq(adk.session_ids("echo", "u"), [sid], "sessions before the restarts")
    # Twice: the re-creation is not a one-off for the session's first run.
    for text in ["after one restart", "after two restarts"]:
        adk.restart()
        eq(adk.session_ids("echo", "u"), [], "ADK forgot every session")
        s, rid, done = run_to_end(t, d, sid, "echo", message=text)
        eq(text_of(agent_events(s, rid)[-1]), "echo: " + text, "reply after the restart")
        eq(adk.session_ids("echo", "u"), [sid], "the session re-created with its own id")
    s, rid, done = run_to_end(t, d, sid, "echo", message="no restart")
    eq([text_of(e) for e in adk.session("echo", "u", sid)["events"] if e["author"] == "user"],
       ["after two restarts", "no restart"], "user turns ADK has since the last restart")


@test(timeout=120)
def test_adk_twenty_sessions_at_once(t):
    adk = shared_adk()
    d = adk_daemon(t, adk)
    sids = ["many%02d" % i for i in range(20)]
    streams = {}
    for sid in sids:
        streams[sid] = t.sse(d, spath(sid, app="echo", user="crowd") + "/run?from=live")
        streams[sid].wait_retry()
    runs = {sid: post_run(d, sid, "hi from " + sid, app="echo", user="crowd")[0]["run_id"]
            for sid in sids}
    for sid in sids:
        streams[sid].wait_event("run.completed", 30 * TIME_SCALE, run_id=runs[sid])
    for sid in sids:
        evs = agent_events(streams[sid], runs[sid])
        eq(len(evs), 4, "%s agent events" % sid)
        eq(text_of(evs[-1]), "echo: hi from " + sid, "%s reply" % sid)
    eq(adk.session_ids("echo", "crowd"), sids, "ADK sessions of echo/crowd")
