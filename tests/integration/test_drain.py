"""--upstream-drain: a superseded or cancelled run's /run_sse is read to its
end (at most the drain) and the session's next upstream request waits for
it, so an upstream that does not abort a run on disconnect (ADK JS) never
runs two runs on one session at once. The demo agent's /debug/calls tells
what the upstream saw: each call's state and when it arrived and ended."""

import time

from harness import (demo_call, eq, expect, post_run, request, run_events, spath,
                     task_status, terminal_events, test, wait_until)


def first_agent_event(s, rid, what="first agent.event of the long run"):
    s.wait_for(lambda evs: any(e.type == "agent.event" for e in run_events(evs, rid)), 5, what)


def one_call(d, sid, text):
    calls = demo_call(d, sid, text)
    eq(len(calls), 1, "upstream calls with %r" % text)
    return calls[0]


def ended_call(d, sid, text, timeout, what):
    """The demo's one call with text, once it is over (finished or
    client_gone)."""
    def over():
        c = demo_call(d, sid, text)
        return c and c[0]["state"] in ("finished", "client_gone", "cut") and c[0]
    return wait_until(over, timeout, what)


def log_records(d, event, session):
    return [r for r in d.logs() if r.get("event") == event and r.get("session") == session]


@test(timeout=30)
def test_drain_superseded_call_runs_to_its_end_before_the_next_request(t):
    d = t.daemon("--upstream-drain", "5s", "--delay-alert", "300ms")
    sid = "drain-supersede"
    s = t.sse(d, spath(sid) + "/run")
    s.wait_retry()
    j1, _, _ = post_run(d, sid, "long !events=15 !rate=10")
    r1 = j1["run_id"]
    first_agent_event(s, r1)
    t0 = time.monotonic()
    j2, _, _ = post_run(d, sid, "quick one !word-delay=0")
    r2 = j2["run_id"]
    eq(j2["status"], "running", "the new run's POST status (registered and running at once)")
    # The old run ends at once; the new one is running at once, its request waits.
    sup = s.wait_event("run.superseded", 2, run_id=r1)
    eq(sup.json().get("by"), r2, "run.superseded by")
    s.wait_event("run.started", 2, run_id=r2)
    expect(time.monotonic() - t0 < 1.0, "run.superseded and run.started took %.2fs"
           % (time.monotonic() - t0))
    st = task_status(d, sid)
    eq((st["run_id"], st["status"], st["has_task"]), (r2, "running", True), "task status while waiting")
    eq(demo_call(d, sid, "quick one"), [], "the new run's request before the old one ended")

    s.wait_event("run.completed", 10, run_id=r2)
    old = one_call(d, sid, "long")
    new = one_call(d, sid, "quick one")
    eq((old["state"], old["events"]), ("finished", 15), "the drained call (read to its end)")
    expect(new["received_at_us"] >= old["ended_at_us"] > 0,
           "the new request arrived %.3fs after the old call ended (must not be before)"
           % ((new["received_at_us"] - old["ended_at_us"]) / 1e6))
    eq(new["state"], "finished", "the new call")
    # Nothing of the drained run was relayed after its terminal event.
    evs = s.snapshot()
    eq(len(terminal_events(evs, r1)), 1, "terminal events of the superseded run")
    i_sup = evs.index(sup)
    before_r2_start = [e for e in evs[i_sup + 1:] if e.type == "agent.event"
                       and "event " in e.data]
    eq(before_r2_start, [], "agent events of the drained run after run.superseded")
    drained = log_records(d, "upstream.drained", sid)
    eq(len(drained), 1, "upstream.drained log lines")
    expect(int(drained[0]["after_ms"]) >= 500, "drained after %s ms" % drained[0]["after_ms"])
    # The start delay includes the wait (it measures registration -> request sent).
    delayed = [r for r in d.logs() if r.get("event") == "run.start_delayed" and r.get("run") == r2]
    eq(len(delayed), 1, "run.start_delayed of the waiting run")
    expect(float(delayed[0]["delay_ms"]) >= 500, "start delay %s ms" % delayed[0]["delay_ms"])
    eq(log_records(d, "upstream.drain_cut", sid), [], "upstream.drain_cut log lines")


@test(timeout=30, memory_only="in cluster mode a cancel reaches the run through Redis as "
      "another node's write, which closes at once (README, ADK api_server)")
def test_drain_cancelled_call_runs_to_its_end(t):
    d = t.daemon("--upstream-drain", "5s")
    sid = "drain-cancel"
    s = t.sse(d, spath(sid) + "/run")
    s.wait_retry()
    j1, _, _ = post_run(d, sid, "long !events=12 !rate=10")
    r1 = j1["run_id"]
    first_agent_event(s, r1)
    r = d.delete(spath(sid) + "/run")
    eq(r.status, 200, "DELETE run status")
    c = s.wait_event("run.cancelled", 2, run_id=r1)
    eq(c.json().get("reason"), "client_request", "run.cancelled reason")
    j2, _, _ = post_run(d, sid, "next !word-delay=0")
    s.wait_event("run.completed", 10, run_id=j2["run_id"])
    old = one_call(d, sid, "long")
    new = one_call(d, sid, "next")
    eq((old["state"], old["events"]), ("finished", 12), "the drained call (read to its end)")
    expect(new["received_at_us"] >= old["ended_at_us"] > 0, "the next request arrived before "
           "the cancelled call ended")
    eq(len(log_records(d, "upstream.drained", sid)), 1, "upstream.drained log lines")
    eq(len(terminal_events(s.snapshot(), r1)), 1, "terminal events of the cancelled run")


@test(timeout=30)
def test_drain_past_its_limit_is_cut_then_the_next_request_is_sent(t):
    d = t.daemon("--upstream-drain", "0.3s")
    sid = "drain-cut"
    s = t.sse(d, spath(sid) + "/run")
    s.wait_retry()
    j1, _, _ = post_run(d, sid, "long !events=100 !rate=10")
    r1 = j1["run_id"]
    first_agent_event(s, r1)
    _, t_post_us, _ = post_run(d, sid, "quick one !word-delay=0")
    s.wait_event("run.superseded", 2, run_id=r1)
    old = ended_call(d, sid, "long", 5, "the drained call's end")
    eq(old["state"], "client_gone", "the drained call, cut")
    cut_after = (old["ended_at_us"] - t_post_us) / 1e6
    expect(0.25 <= cut_after <= 3.0, "the drain was cut %.3fs after the supersede (drain 0.3s)"
           % cut_after)
    expect(old["events"] < 100, "the cut call sent all its events")
    new = ended_call(d, sid, "quick one", 5, "the new run's call")
    expect(new["received_at_us"] >= old["ended_at_us"], "the new request arrived before the cut")
    cuts = log_records(d, "upstream.drain_cut", sid)
    eq([r.get("reason") for r in cuts], ["drain_limit"], "upstream.drain_cut reasons")
    eq(log_records(d, "upstream.drained", sid), [], "upstream.drained log lines")


@test(timeout=30)
def test_drain_waiting_run_superseded_before_it_sends_sends_nothing(t):
    d = t.daemon("--upstream-drain", "5s")
    sid = "drain-third"
    s = t.sse(d, spath(sid) + "/run")
    s.wait_retry()
    j1, _, _ = post_run(d, sid, "first !events=15 !rate=10")
    r1 = j1["run_id"]
    first_agent_event(s, r1)
    c = t.conn(d)
    j2, _, _ = post_run(d, sid, "second !word-delay=0", conn=c)
    j3, _, _ = post_run(d, sid, "third !word-delay=0", conn=c)
    r2, r3 = j2["run_id"], j3["run_id"]
    s.wait_event("run.superseded", 2, run_id=r2)
    s.wait_event("run.completed", 10, run_id=r3)
    calls = demo_call(d, sid)
    eq([cl["text"] for cl in calls], ["first !events=15 !rate=10", "third !word-delay=0"],
       "upstream calls of the session (the second never sent)")
    eq((calls[0]["state"], calls[0]["events"]), ("finished", 15), "the drained call")
    expect(calls[1]["received_at_us"] >= calls[0]["ended_at_us"], "the third request arrived "
           "before the drained call ended")
    evs = s.snapshot()
    eq([e.type for e in terminal_events(evs, r2)], ["run.superseded"], "the waiting run's end")
    eq([e.type for e in run_events(evs, r2) if e.type == "agent.event"], [],
       "agent events of the waiting run")


@test(timeout=30)
def test_drain_waiting_run_times_out_and_sends_nothing(t):
    d = t.daemon("--upstream-drain", "3s", "--run-timeout", "1.5s")
    sid = "drain-timeout"
    s = t.sse(d, spath(sid) + "/run")
    s.wait_retry()
    j1, _, _ = post_run(d, sid, "long !events=100 !rate=10")
    r1 = j1["run_id"]
    first_agent_event(s, r1)
    t0 = time.monotonic()
    j2, _, _ = post_run(d, sid, "waits !word-delay=0")
    to = s.wait_event("run.timed_out", 5, run_id=j2["run_id"])
    eq(to.json().get("phase"), "total", "the waiting run's timeout phase")
    expect(1.3 <= to.at - t0 <= 3.0, "the waiting run timed out after %.2fs (run timeout 1.5s)"
           % (to.at - t0))
    old = ended_call(d, sid, "long", 6, "the drained call's end")
    eq(old["state"], "client_gone", "the drained call (cut at 3s)")
    eq(demo_call(d, sid, "waits"), [], "upstream calls of the run that timed out waiting")


@test(timeout=30)
def test_drain_session_deleted_closes_at_once(t):
    d = t.daemon("--upstream-drain", "5s")
    sid = "drain-delete"
    s = t.sse(d, spath(sid) + "/run")
    s.wait_retry()
    j1, _, _ = post_run(d, sid, "long !events=100 !rate=10")
    first_agent_event(s, j1["run_id"])
    t_us = time.time() * 1e6
    r = d.delete(spath(sid))
    eq(r.status, 200, "DELETE session status")
    old = ended_call(d, sid, "long", 3, "the deleted session's call closed")
    eq(old["state"], "client_gone", "the deleted session's call")
    expect(old["ended_at_us"] - t_us < 1.5e6, "the call closed %.3fs after the DELETE"
           % ((old["ended_at_us"] - t_us) / 1e6))
    eq(log_records(d, "upstream.drained", sid) + log_records(d, "upstream.drain_cut", sid), [],
       "drain log lines")


@test(timeout=30)
def test_drain_shutdown_cuts_the_drain_and_exits_promptly(t):
    a = t.agent()  # its own process: /debug/calls outlives runcast
    d = t.daemon("--upstream-drain", "20s", upstream="http://127.0.0.1:%d" % a.port)
    sid = "drain-shutdown"
    s = t.sse(d, spath(sid) + "/run")
    s.wait_retry()
    j1, _, _ = post_run(d, sid, "long !events=300 !rate=10")
    first_agent_event(s, j1["run_id"])
    post_run(d, sid, "waits !word-delay=0")  # waits for the 30 s run's drain
    s.wait_event("run.superseded", 2, run_id=j1["run_id"])
    t0 = time.monotonic()
    problems = d.stop(timeout=10)
    took = time.monotonic() - t0
    eq(problems, [], "stopping during a drain")
    expect(took < 3.0, "SIGTERM to exit took %.2fs during a 20s drain" % took)
    cuts = log_records(d, "upstream.drain_cut", sid)
    eq([r.get("reason") for r in cuts], ["shutdown"], "upstream.drain_cut reasons")
    old = ended_call(a, sid, "long", 3, "the drained call closed")
    eq(old["state"], "client_gone", "the drained call")
    eq(demo_call(a, sid, "waits"), [], "upstream calls of the waiting run")
