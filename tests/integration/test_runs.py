"""Runs: start, replace, cancel, fail, task status, sessions, upstream faults."""

import json
import re
import socket
import time

from harness import (TERMINAL, TIME_SCALE, all_status, build_request, check_error, demo_call, eq,
                     expect, fail, post_run, request, run_events, spath, task_status, terminal_events,
                     test, wait_until)


def agent_texts(evs):
    """The text of each agent.event's first part."""
    out = []
    for e in evs:
        if e.type == "agent.event":
            d = e.json()
            out.append(d["content"]["parts"][0]["text"])
    return out


@test()
def test_run_reaches_upstream_within_2s_and_completes(t):
    d = t.daemon()
    sid = "reach"
    s = t.sse(d, spath(sid) + "/run")
    s.wait_retry()
    j, t_post, _ = post_run(d, sid, "hello world !word-delay=0")
    rid = j["run_id"]
    done = s.wait_event("run.completed", 5, run_id=rid)
    calls = demo_call(d, sid)
    eq(len(calls), 1, "upstream calls for the session")
    c = calls[0]
    delay = c["received_at_us"] - t_post
    # 2 s in make test; under valgrind (TIME_SCALE 4) every deadline stretches.
    expect(delay <= 2_000_000 * TIME_SCALE, "upstream received the run %.3fs after the POST (> %gs)"
           % (delay / 1e6, 2 * TIME_SCALE))
    eq(c["text"], "hello world !word-delay=0", "message text as received upstream")
    evs = run_events(s.snapshot(), rid)
    types = [e.type for e in evs]
    eq(types[0], "run.started", "first event of the run")
    eq(types[-1], "run.completed", "last event of the run")
    agents = [e for e in evs if e.type == "agent.event"]
    eq(types, ["run.started"] + ["agent.event"] * len(agents) + ["run.completed"], "event order")
    # "Echo: hello world": three partial words, then the aggregated event.
    eq(agent_texts(agents), ["Echo:", " hello", " world", "Echo: hello world"], "agent event texts")
    eq(agents[-1].json().get("partial", False), False, "aggregated event partial")
    eq(agents[-1].json().get("turnComplete"), True, "aggregated event turnComplete")
    dc = done.json()
    eq(dc.get("events"), len(agents), "run.completed events")
    expect(isinstance(dc.get("duration_ms"), (int, float)) and dc["duration_ms"] >= 0,
           "run.completed duration_ms: %r" % dc)
    for e in evs:
        expect(e.has_id and e.id, "event %r has no id" % e)
        if e.type != "agent.event":
            eq(e.json().get("run_id"), rid, "%s run_id" % e.type)
    wait_until(lambda: demo_call(d, sid)[0]["state"] == "finished", 3, "upstream call state finished")


@test()
def test_replacing_a_long_run_supersedes_it_and_the_new_run_completes(t):
    d = t.daemon()
    sid = "replace"
    s = t.sse(d, spath(sid) + "/run")
    s.wait_retry()
    j1, _, _ = post_run(d, sid, "long !events=100 !rate=10")
    r1 = j1["run_id"]
    s.wait_for(lambda evs: any(e.type == "agent.event" for e in run_events(evs, r1)), 5,
               "first agent.event of the long run")
    j2, t_post2, _ = post_run(d, sid, "quick one !word-delay=0")
    r2 = j2["run_id"]
    expect(r2 != r1, "new run_id equals old one")
    sup = s.wait_event("run.superseded", 3, run_id=r1)
    eq(sup.json().get("by"), r2, "run.superseded by")
    s.wait_event("run.completed", 5, run_id=r2)
    calls = demo_call(d, sid, "quick one")
    eq(len(calls), 1, "upstream calls of the new run")
    delay = calls[0]["received_at_us"] - t_post2
    expect(delay <= 2_000_000, "new run reached upstream %.3fs after its POST (> 2s)" % (delay / 1e6))

    def old_state():
        c = demo_call(d, sid, "long")
        return c and c[0]["state"] == "client_gone" and c[0]
    wait_until(old_state, 3, "old upstream call state client_gone")
    eq(len(terminal_events(s.snapshot(), r1)), 1, "terminal events of the superseded run")
    eq(len(terminal_events(s.snapshot(), r2)), 1, "terminal events of the new run")
    # superseded comes before the new run's first event? not required; but
    # the old run must get no agent events after its terminal event.
    evs = s.snapshot()
    i_sup = evs.index(sup)
    later_old = [e for e in evs[i_sup + 1:] if e.type != "agent.event" and e.json().get("run_id") == r1]
    eq(later_old, [], "events of the superseded run after run.superseded")
    st = task_status(d, sid)
    eq(st["run_id"], r2, "task-status run_id")
    eq(st["status"], "completed", "task-status status")


@test(timeout=30)
def test_ten_posts_back_to_back_only_the_last_completes(t):
    d = t.daemon()
    sid = "ten"
    s = t.sse(d, spath(sid) + "/run")
    s.wait_retry()
    c = t.conn(d)
    rids = []
    for i in range(10):
        msg = ("slow %d !events=30 !rate=10" % i) if i < 9 else "last one !word-delay=0"
        j, _, _ = post_run(d, sid, msg, conn=c)
        rids.append(j["run_id"])
    eq(len(set(rids)), 10, "distinct run ids")
    s.wait_event("run.completed", 5, run_id=rids[9])
    evs = s.snapshot()
    for i in range(9):
        term = terminal_events(evs, rids[i])
        eq([e.type for e in term], ["run.superseded"], "terminal events of run %d" % i)
        eq(term[0].json().get("by"), rids[i + 1], "run %d superseded by" % i)
    eq([e.type for e in terminal_events(evs, rids[9])], ["run.completed"], "terminal events of the last run")
    st = task_status(d, sid)
    eq((st["has_task"], st["status"], st["run_id"]), (False, "completed", rids[9]), "task-status after")
    eq(all_status(d)["total_tasks"], 0, "total_tasks after")

    # No upstream call stays open: the superseded ones were all closed.
    def none_open():
        calls = demo_call(d, sid)
        return all(cl["state"] in ("finished", "client_gone") for cl in calls) and calls
    calls = wait_until(none_open, 5, "all upstream calls closed")
    eq([cl["state"] for cl in calls if "last one" in cl["text"]], ["finished"], "last call state")
    # Still exactly one terminal event per run once everything settled.
    evs = s.snapshot()
    for i in range(10):
        eq(len(terminal_events(evs, rids[i])), 1, "terminal events of run %d after settling" % i)


@test()
def test_post_returns_202_before_the_run_finishes(t):
    d = t.daemon()
    sid = "early"
    s = t.sse(d, spath(sid) + "/run")
    s.wait_retry()
    t0 = time.monotonic()
    j, _, t_ret = post_run(d, sid, "slow !events=10 !rate=5")
    expect(t_ret - t0 < 1.0, "POST took %.3fs" % (t_ret - t0))
    eq(j["status"], "running", "POST status")
    st = task_status(d, sid)
    eq((st["has_task"], st["status"]), (True, "running"), "task-status right after POST")
    expect(not terminal_events(s.snapshot(), j["run_id"]), "run ended before the POST returned")
    done = s.wait_event("run.completed", 6, run_id=j["run_id"])
    expect(done.at - t_ret >= 1.0, "run completed only %.3fs after the POST returned" % (done.at - t_ret))
    eq(done.json().get("events"), 10, "run.completed events")


@test()
def test_task_status_goes_running_then_completed(t):
    d = t.daemon()
    sid = "status"
    task_status(d, sid, expect_status=404)
    j, _, _ = post_run(d, sid, "!events=10 !rate=10")
    rid = j["run_id"]
    st = task_status(d, sid)
    eq(st["session_id"], sid, "session_id")
    eq(st["has_task"], True, "has_task while running")
    eq(st["status"], "running", "status while running")
    eq(st["run_id"], rid, "run_id")
    for k in ("created_at", "started_at", "ended_at", "events", "subscribers"):
        expect(k in st, "task-status lacks %r: %r" % (k, st))
    expect(st["created_at"] is not None, "created_at null while running")
    eq(st["ended_at"], None, "ended_at while running")
    st = wait_until(lambda: (lambda x: x if x["status"] != "running" else None)(task_status(d, sid)),
                    5, "status leaving running")
    eq(st["status"], "completed", "final status")
    eq(st["has_task"], False, "has_task after")
    eq(st["run_id"], rid, "run_id after")
    eq(st["events"], 10, "events after")
    eq(st["subscribers"], 0, "subscribers")
    for k in ("created_at", "started_at", "ended_at"):
        expect(st[k] is not None, "%s is null after completion: %r" % (k, st))
    if all(isinstance(st[k], (int, float)) for k in ("created_at", "started_at", "ended_at")):
        expect(st["created_at"] <= st["started_at"] <= st["ended_at"],
               "created_at <= started_at <= ended_at: %r" % st)
        expect(st["ended_at"] - st["started_at"] > 0, "run lasted no time: %r" % st)


@test()
def test_delete_run_cancels_it_and_closes_the_upstream_call(t):
    d = t.daemon()
    sid = "cancel"
    s = t.sse(d, spath(sid) + "/run")
    s.wait_retry()
    j, _, _ = post_run(d, sid, "!hang")
    rid = j["run_id"]
    wait_until(lambda: [c for c in demo_call(d, sid) if c["state"] == "streaming"], 3,
               "upstream call streaming")
    r = d.delete(spath(sid) + "/run")
    eq(r.status, 200, "DELETE run status")
    eq(r.json(), {"success": True, "run_id": rid, "status": "cancelled"}, "DELETE run body")
    ev = s.wait_event("run.cancelled", 3, run_id=rid)
    eq(ev.json().get("reason"), "client_request", "run.cancelled reason")
    wait_until(lambda: demo_call(d, sid)[0]["state"] == "client_gone", 3, "upstream call client_gone")
    st = task_status(d, sid)
    eq((st["has_task"], st["status"], st["run_id"]), (False, "cancelled", rid), "task-status after cancel")
    expect(st["ended_at"] is not None, "ended_at null after cancel")
    r = d.delete(spath(sid) + "/run")
    check_error(r, 404, "second DELETE run")
    eq(len(terminal_events(s.snapshot(), rid)), 1, "terminal events of the cancelled run")
    r = d.delete(spath("never-seen") + "/run")
    check_error(r, 404, "DELETE run of an unknown session")


@test()
def test_error_frame_fails_the_run_with_agent_error(t):
    d = t.daemon()
    sid = "agenterr"
    s = t.sse(d, spath(sid) + "/run")
    s.wait_retry()
    j, _, _ = post_run(d, sid, "hi there !error=boom !word-delay=0")
    rid = j["run_id"]
    ev = s.wait_event("run.failed", 5, run_id=rid)
    data = ev.json()
    eq(data.get("code"), "agent_error", "run.failed code")
    expect(isinstance(data.get("message"), str) and data["message"], "run.failed message: %r" % data)
    detail = data.get("detail")
    expect(isinstance(detail, dict), "run.failed detail is not an object: %r" % data)
    eq(detail.get("error"), "boom", "detail.error")
    eq((detail.get("error_details") or {}).get("error_message"), "boom", "detail.error_details.error_message")
    evs = run_events(s.snapshot(), rid)
    agents = [e for e in evs if e.type == "agent.event"]
    for e in agents:
        expect("error" not in e.json(), "error frame relayed as agent.event: %r" % e)
    # the error frame takes the place of the aggregated event (docs/DEMO.md)
    eq(agent_texts(agents), ["Echo:", " hi", " there"], "agent events before the error")
    eq([e.type for e in evs][-1], "run.failed", "last event")
    st = task_status(d, sid)
    eq((st["has_task"], st["status"], st["events"]), (False, "failed", 3), "task-status after")


@test()
def test_delete_session_cancels_run_closes_streams_and_forgets_it(t):
    d = t.daemon()
    sid = "delsess"
    s1 = t.sse(d, spath(sid) + "/run")
    s2 = t.sse(d, spath(sid) + "/run")
    s1.wait_retry()
    s2.wait_retry()
    j, _, _ = post_run(d, sid, "!hang")
    rid = j["run_id"]
    s1.wait_event("run.started", 3, run_id=rid)
    s2.wait_event("run.started", 3, run_id=rid)
    wait_until(lambda: [c for c in demo_call(d, sid) if c["state"] == "streaming"], 3,
               "upstream call streaming")
    r = d.delete(spath(sid))
    expect(r.status in (200, 204), "DELETE session status %d %r" % (r.status, r.body))
    for name, s in (("s1", s1), ("s2", s2)):
        s.wait_eof(3)
        evs = s.snapshot()
        types = [e.type for e in evs]
        expect("session.closed" in types, "%s: no session.closed: %r" % (name, types))
        eq(types[-1], "session.closed", "%s: last event" % name)
        canc = [e for e in evs if e.type == "run.cancelled"]
        eq(len(canc), 1, "%s: run.cancelled count" % name)
        eq(canc[0].json().get("reason"), "session_deleted", "%s: run.cancelled reason" % name)
        eq(canc[0].json().get("run_id"), rid, "%s: run.cancelled run_id" % name)
        expect(types.index("run.cancelled") < types.index("session.closed"),
               "%s: run.cancelled after session.closed" % name)
    task_status(d, sid, expect_status=404)
    check_error(d.delete(spath(sid)), 404, "second DELETE session")
    wait_until(lambda: demo_call(d, sid)[0]["state"] == "client_gone", 3, "upstream call client_gone")
    eq(all_status(d)["total_tasks"], 0, "total_tasks after delete")


@test(timeout=30)
def test_ten_sessions_two_posts_each_count_ten_tasks_then_zero(t):
    d = t.daemon()
    sids = ["multi%d" % i for i in range(10)]
    last = {}
    for sid in sids:
        post_run(d, sid, "first !hang")
        j, _, _ = post_run(d, sid, "second !hang")
        last[sid] = j["run_id"]
    st = all_status(d)
    eq(st["total_tasks"], 10, "total_tasks while active")
    eq(st["running_tasks"], 10, "running_tasks while active")
    eq(st["queued_tasks"], 0, "queued_tasks while active")
    eq(sorted((x["session_id"], x["run_id"]) for x in st["sessions"]),
       sorted(last.items()), "sessions list (session_id, run_id)")
    for sid in sids:
        r = d.delete(spath(sid))
        expect(r.status in (200, 204), "DELETE session %s: %d" % (sid, r.status))
    st = all_status(d)
    eq((st["total_tasks"], st["running_tasks"], st["queued_tasks"], st["sessions"]), (0, 0, 0, []),
       "/task-status after deleting")
    st = all_status(d, "?all=1")
    eq(st["sessions"], [], "/task-status?all=1 after deleting")


@test()
def test_three_sessions_are_listed_with_their_runs(t):
    d = t.daemon()
    runs = {}
    for sid in ("alpha", "beta", "gamma"):
        j, _, _ = post_run(d, sid, "!hang")
        runs[sid] = j["run_id"]
    # a finished session must not count as a task
    j, _, _ = post_run(d, "done", "quick !word-delay=0")
    wait_until(lambda: task_status(d, "done")["status"] == "completed", 5, "session 'done' completed")
    st = all_status(d)
    eq(st["total_tasks"], 3, "total_tasks")
    eq(st["running_tasks"], 3, "running_tasks")
    eq(st["queued_tasks"], 0, "queued_tasks")
    eq(sorted(x["session_id"] for x in st["sessions"]), ["alpha", "beta", "gamma"], "session ids")
    for x in st["sessions"]:
        eq(x["run_id"], runs[x["session_id"]], "run_id of %s" % x["session_id"])
        eq(x["has_task"], True, "has_task of %s" % x["session_id"])
        eq(x["status"], "running", "status of %s" % x["session_id"])
    st = all_status(d, "?all=1")
    eq(sorted(x["session_id"] for x in st["sessions"]), ["alpha", "beta", "done", "gamma"], "?all=1 session ids")
    st = all_status(d, "?all=1&limit=2")
    eq(len(st["sessions"]), 2, "?all=1&limit=2 list length")
    eq(st["total_tasks"], 3, "total_tasks with limit")


@test()
def test_upstream_500_fails_the_run_with_upstream_http(t):
    d = t.daemon()
    sid = "up500"
    s = t.sse(d, spath(sid) + "/run")
    s.wait_retry()
    j, _, _ = post_run(d, sid, "x !status=500")
    ev = s.wait_event("run.failed", 5, run_id=j["run_id"])
    data = ev.json()
    eq(data.get("code"), "upstream_http", "run.failed code")
    eq(data.get("status"), 500, "run.failed status")
    expect(isinstance(data.get("message"), str) and data["message"], "message: %r" % data)
    eq(task_status(d, sid)["status"], "failed", "task-status status")
    eq([e.type for e in run_events(s.snapshot(), j["run_id"])], ["run.started", "run.failed"], "run events")


@test()
def test_refused_upstream_fails_the_run_with_upstream_unreachable(t):
    d = t.daemon(upstream="http://127.0.0.1:1")
    d.healthy()
    sid = "refused"
    s = t.sse(d, spath(sid) + "/run")
    s.wait_retry()
    j, _, _ = post_run(d, sid, "hello")
    ev = s.wait_event("run.failed", 10, run_id=j["run_id"])
    data = ev.json()
    eq(data.get("code"), "upstream_unreachable", "run.failed code")
    # libcurl's own words name the upstream's address: the log has them,
    # browsers get its generic text.
    eq(data.get("message"), "cannot reach the upstream: Couldn't connect to server",
       "run.failed message")
    rec = d.wait_log(lambda r: r.get("event") == "run.upstream_error", 5, "run.upstream_error")
    eq((rec.get("session"), rec.get("run")), (sid, j["run_id"]), "run.upstream_error ids")
    expect("127.0.0.1 port 1" in rec.get("error", ""), "logged error: %r" % rec)
    st = task_status(d, sid)
    eq((st["has_task"], st["status"]), (False, "failed"), "task-status after")
    eq(len(terminal_events(s.snapshot(), j["run_id"])), 1, "terminal events")


@test()
def test_standalone_demo_agent_as_upstream(t):
    a = t.agent("--word-delay", "0")
    d = t.daemon(upstream="http://127.0.0.1:%d" % a.port)
    sid = "standalone"
    s = t.sse(d, spath(sid) + "/run")
    s.wait_retry()
    j, t_post, _ = post_run(d, sid, "over the wire")
    ev = s.wait_event("run.completed", 5, run_id=j["run_id"])
    eq(ev.json().get("events"), 5, "run.completed events")
    agents = [e for e in run_events(s.snapshot(), j["run_id"]) if e.type == "agent.event"]
    eq(agent_texts(agents), ["Echo:", " over", " the", " wire", "Echo: over the wire"], "texts")
    r = request(a.port, "GET", "/debug/calls?session=" + sid)
    calls = r.json()["calls"]
    eq(len(calls), 1, "agent calls")
    expect(calls[0]["received_at_us"] - t_post <= 2_000_000, "upstream reached after > 2s")


@test()
def test_sigterm_cancels_active_runs_and_ends_streams(t):
    d = t.daemon()
    sid = "shutdown"
    s = t.sse(d, spath(sid) + "/run")
    s.wait_retry()
    j, _, _ = post_run(d, sid, "!hang")
    s.wait_event("run.started", 3, run_id=j["run_id"])
    problems = d.stop()
    if problems:
        fail("; ".join(problems))
    s.wait_eof(3)
    canc = [e for e in s.snapshot() if e.type == "run.cancelled"]
    eq(len(canc), 1, "run.cancelled count")
    eq(canc[0].json().get("reason"), "shutdown", "run.cancelled reason")


@test()
def test_newmessage_and_query_bodies_start_runs(t):
    d = t.daemon()
    sid = "shapes"
    s = t.sse(d, spath(sid) + "/run")
    s.wait_retry()
    path = spath(sid) + "/run"
    r = d.post_json(path, {"query": "via query !word-delay=0"})
    eq(r.status, 202, "query body status (%r)" % r.body)
    s.wait_event("run.completed", 5, run_id=r.json()["run_id"])
    r = d.post_json(path, {"newMessage": {"role": "user", "parts": [{"text": "via adk !word-delay=0"}]}})
    eq(r.status, 202, "newMessage body status (%r)" % r.body)
    s.wait_event("run.completed", 5, run_id=r.json()["run_id"])
    texts = sorted(c["text"] for c in demo_call(d, sid))
    eq(texts, ["via adk !word-delay=0", "via query !word-delay=0"], "texts received upstream")
    r = d.post_json(path, {"message": "not streamed !word-delay=0", "streaming": False})
    eq(r.status, 202, "streaming:false status")
    rid = r.json()["run_id"]
    ev = s.wait_event("run.completed", 5, run_id=rid)
    eq(ev.json().get("events"), 1, "streaming:false => one aggregated event")


@test()
def test_dot_and_dot_dot_path_parameters_are_refused_everywhere(t):
    d = t.daemon()
    bad = [("..", "u", "s1"), ("app", "..", "s1"), ("app", "u", ".."), (".", "u", "s1"),
           ("app", ".", "s1"), ("app", "u", ".")]
    for app, user, sid in bad:
        base = "/apps/%s/users/%s/sessions/%s" % (app, user, sid)
        for method, path in [("POST", base + "/run"), ("GET", base + "/run"),
                             ("DELETE", base + "/run"), ("GET", base + "/task-status"),
                             ("DELETE", base)]:
            body = b'{"message": "hi"}' if method == "POST" else None
            r = request(d.port, method, path, body=body,
                        headers={"Content-Type": "application/json"} if body else None)
            check_error(r, 400, "%s %s" % (method, path), "invalid_path_parameter")
    eq(all_status(d, "?all=1")["sessions"], [], "sessions created")
    eq(d.demo_calls(), [], "upstream calls")
    # Dots inside a parameter are fine.
    j, _, _ = post_run(d, "a..b", "dots !word-delay=0", app=".app", user="u.")
    s = t.sse(d, spath("a..b", app=".app", user="u.") + "/run")
    s.wait_event("run.completed", 5, run_id=j["run_id"])
    eq([c["session"] for c in d.demo_calls()], ["a..b"], "upstream calls")


@test()
def test_run_queued_and_started_carry_the_servers_times(t):
    d = t.daemon("--max-concurrent-runs", "1")
    s = t.sse(d, spath("times") + "/run")
    s.wait_retry()
    before = time.time()
    blocker, _, _ = post_run(d, "blocker", "hold !delay=10s")
    queued, _, _ = post_run(d, "times", "after the blocker !word-delay=0")
    q = s.wait_event("run.queued", 5, run_id=queued["run_id"]).json()
    eq(d.delete(spath("blocker") + "/run").status, 200, "cancel the blocker")
    st = s.wait_event("run.started", 5, run_id=queued["run_id"]).json()
    s.wait_event("run.completed", 5, run_id=queued["run_id"])
    after = time.time()
    status = task_status(d, "times")
    eq(q["created_at"], st["created_at"], "created_at in run.queued and run.started")
    # The server's times are in whole milliseconds.
    expect(before - 0.001 <= q["created_at"] <= st["started_at"] <= after + 0.001,
           "times out of order: %r %r (%f..%f)" % (q, st, before, after))
    expect(abs(status["created_at"] - st["created_at"]) < 1e-3 and
           abs(status["started_at"] - st["started_at"]) < 1e-3,
           "task status %r vs run.started %r" % (status, st))


@test()
def test_post_answers_202_with_exact_bytes(t):
    # The 202 is written without jansson (api.c, json_text_string): its head
    # and body must be byte for byte what jansson wrote before, for a running and a queued
    # run, with dots, dashes and underscores in every parameter.
    d = t.daemon("--max-concurrent-runs", "1")

    def post_raw(sid, app, user, message):
        body = json.dumps({"message": message}).encode()
        path = spath(sid, app=app, user=user) + "/run"
        sock = socket.create_connection(("127.0.0.1", d.port), 5)
        try:
            sock.sendall(build_request("POST", path, body, {"Content-Type": "application/json",
                                                            "Connection": "close"}))
            data, deadline = b"", time.monotonic() + 5
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            return path, data
        finally:
            sock.close()

    for sid, app, user, state in (("a.b-c_d", "my_app.v-2", "u.s-e_r", "running"),
                                  ("second", "app", "u", "queued")):
        path, data = post_raw(sid, app, user, "hold !delay=10s")
        head, _, body = data.partition(b"\r\n\r\n")
        m = re.match(rb'^\{"success":true,"run_id":"(r[0-9a-f]{16})","session_id":"([^"]*)",'
                            rb'"status":"([a-z]+)","events":"([^"]*)"\}$', body)
        expect(m is not None, "202 body: %r" % body)
        eq(m.group(2).decode(), sid, "session_id")
        eq(m.group(3).decode(), state, "status")
        eq(m.group(4).decode(), path, "events")
        lines = head.split(b"\r\n")
        eq(lines[0], b"HTTP/1.1 202 Accepted", "status line")
        eq(head, b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\nConnection: close" % len(body), "202 head")
