"""Cluster mode (CLUSTER.md, Contract): one test per clause, each on its own
redis-server and runcast nodes (--node-lease 2s). Every wait has a deadline;
every subscriber feeds the Checker, which each test runs at its end."""

import os
import signal
import subprocess
import threading
import time

import harness
from harness import TERMINAL, Daemon, check_error, eq, expect, fail, spath, test, wait_until
from cluster import (Checker, Cluster, LatencyProxy, RedisServer, agent_seqs, data_of, metric, metric_sum, post,
                     same_sequence, status_of)

LONG = "long !events=400 !rate=20"   # 20 s: a run that some fault must end


def terminal(sub, run_id, timeout):
    """The run's terminal event as this sub received it: (type, data)."""
    e = sub.wait_terminal(run_id, timeout)
    return e.type, data_of(e)


def calls_with(node, sid, text):
    return [c for c in node.demo_calls(sid) if text in c.get("text", "")]


def wait_call_state(node, sid, text, state, timeout, what):
    """Waits until the node's demo agent call whose text contains `text` is in
    `state` (client_gone: runcast closed the upstream connection)."""
    def check():
        calls = calls_with(node, sid, text)
        return calls and all(c["state"] == state for c in calls) and calls
    return wait_until(check, timeout, "%s: %s's demo call %r %s" % (what, node.name, text, state))


def events_of_invocation(sub, invocation):
    return agent_seqs(sub.events(), invocation)


def expect_whole_run(sub, run_id, n):
    """The run's agent events reached this sub once each, in order: the demo
    agent's customMetadata.seq 0..n-1."""
    got = events_of_invocation(sub, invocation_of(sub, run_id))
    if got != list(range(n)):
        missing = sorted(set(range(n)) - set(got))
        repeated = sorted(x for x in set(got) if got.count(x) > 1)
        fail("%s: run %s's agent events: %d of %d; missing seq %s; repeated %s; in order: %s"
             % (sub.label, run_id, len(got), n, missing[:20], repeated[:20], got == sorted(got)))


def invocation_of(sub, run_id):
    """The demo agent's invocationId of a run's agent events (the first agent
    event after its run.started)."""
    inside = False
    for e in sub.events():
        d = data_of(e) or {}
        if e.type == "run.started" and d.get("run_id") == run_id:
            inside = True
        elif inside and e.type == "agent.event":
            return d.get("invocationId")
    fail("%s: no agent event of run %s" % (sub.label, run_id))


def wait_readyz(nodes, status, body, timeout):
    for n in nodes:
        wait_until(lambda: n.readyz() == (status, body), timeout,
                   "GET /readyz %d %r on %s" % (status, body, n.name), interval=0.05)


# ---------------------------------------------------------------- any node serves any session

@test(timeout=40)
def test_post_on_b_supersedes_a_run_owned_by_a_with_exactly_one_terminal(t):
    c = Cluster(t, 3)
    A, B, C = c.nodes
    chk = Checker(t)
    subs = [chk.sub(n, "s", label="sub@" + n.name) for n in (A, B, C)]
    r1 = chk.post(A, "s", LONG)["run_id"]
    for s in subs:
        s.wait_agent_events(3, 5)
    r2 = chk.post(B, "s", "short !events=10 !rate=50")["run_id"]
    # registration is cluster-wide and immediate: C already names r2
    st = status_of(C, "s")
    eq((st["run_id"], st["has_task"]), (r2, True), "task-status on n3 right after the POST on n2")
    for s in subs:
        typ, d = terminal(s, r1, 3)
        eq((typ, d.get("by")), ("run.superseded", r2), "%s: r1's terminal" % s.label)
    for s in subs:
        eq(terminal(s, r2, 5)[0], "run.completed", "%s: r2's terminal" % s.label)
    wait_call_state(A, "s", "long", "client_gone", 3, "superseded run's upstream torn down")
    eq(len(calls_with(B, "s", "short")), 1, "r2's upstream calls on n2 (the node it was posted to)")
    eq(calls_with(A, "s", "short") + calls_with(C, "s", "short"), [], "r2's upstream calls elsewhere")
    for n in (A, B, C):
        st = status_of(n, "s")
        eq((st["run_id"], st["status"], st["has_task"], st["events"]), (r2, "completed", False, 10),
           "task-status on %s" % n.name)
    same_sequence(subs, "the three nodes' streams")
    chk.verify()


@test(timeout=40)
def test_delete_on_c_cancels_a_run_owned_by_a(t):
    c = Cluster(t, 3)
    A, B, C = c.nodes
    chk = Checker(t)
    subs = [chk.sub(n, "s", label="sub@" + n.name) for n in (A, B, C)]
    r = chk.post(A, "s", LONG)["run_id"]
    subs[2].wait_agent_events(3, 5)
    resp = C.delete(spath("s") + "/run")
    eq(resp.status, 200, "DELETE run on n3")
    eq(resp.json(), {"success": True, "run_id": r, "status": "cancelled"}, "DELETE run body")
    for s in subs:
        typ, d = terminal(s, r, 3)
        eq((typ, d.get("reason")), ("run.cancelled", "client_request"), "%s: terminal" % s.label)
    wait_call_state(A, "s", "long", "client_gone", 3, "cancelled run's upstream torn down")
    check_error(B.delete(spath("s") + "/run"), 404, "second DELETE run on n2")
    for n in (A, B, C):
        st = status_of(n, "s")
        eq((st["run_id"], st["status"], st["has_task"]), (r, "cancelled", False), "task-status on %s" % n.name)
    same_sequence(subs, "the three nodes' streams")
    chk.verify()


@test(timeout=40)
def test_task_status_is_cluster_wide(t):
    c = Cluster(t, 3)
    A, B, C = c.nodes
    chk = Checker(t)
    w1 = chk.sub(C, "s1", user="u1")
    w2 = chk.sub(C, "s2", user="u2")
    r1 = chk.post(A, "s1", "one !events=40 !rate=20", user="u1")["run_id"]
    r2 = chk.post(B, "s2", "two !events=40 !rate=20", user="u2")["run_id"]
    for n in (A, B, C):
        for sid, user, rid in (("s1", "u1", r1), ("s2", "u2", r2)):
            st = status_of(n, sid, user=user)
            expect(st is not None, "task-status of %s on %s: 404" % (sid, n.name))
            eq((st["session_id"], st["run_id"], st["has_task"], st["status"]), (sid, rid, True, "running"),
               "task-status of %s on %s while running" % (sid, n.name))
        r = n.get("/task-status")
        eq(r.status, 200, "GET /task-status on %s" % n.name)
        j = r.json()
        eq((j["total_tasks"], j["running_tasks"], j["queued_tasks"]), (2, 2, 0), "totals on %s" % n.name)
        eq(sorted((x["session_id"], x["run_id"], x["has_task"]) for x in j["sessions"]),
           [("s1", r1, True), ("s2", r2, True)], "sessions listed on %s" % n.name)
        eq(status_of(n, "nope", user="u1"), None, "task-status of an unknown session on %s" % n.name)
    w1.wait_terminal(r1, 6)
    w2.wait_terminal(r2, 6)
    for n in (A, B, C):
        for sid, user, rid in (("s1", "u1", r1), ("s2", "u2", r2)):
            st = status_of(n, sid, user=user)
            eq((st["run_id"], st["has_task"], st["status"], st["events"]), (rid, False, "completed", 40),
               "task-status of %s on %s after" % (sid, n.name))
            expect(st["ended_at"] is not None and st["started_at"] is not None, "times on %s: %r" % (n.name, st))
        j = n.get("/task-status").json()
        eq(j["total_tasks"], 0, "total_tasks on %s after" % n.name)
        got = sorted(x["session_id"] for x in n.get("/task-status?all=1").json()["sessions"])
        eq(got, ["s1", "s2"], "/task-status?all=1 on %s" % n.name)
    chk.verify()


@test(timeout=40)
def test_per_user_run_cap_holds_across_nodes(t):
    c = Cluster(t, 3, args=["--max-runs-per-user", "1"])
    A, B, C = c.nodes
    chk = Checker(t)
    w1 = chk.sub(C, "s1", user="alice")
    w2 = chk.sub(C, "s2", user="alice")
    r1 = chk.post(A, "s1", LONG, user="alice")
    eq(r1["status"], "running", "alice's first run on n1")
    over = chk.post(B, "s2", "second !events=5", user="alice")
    eq(over["status"], "failed", "alice's second run, on n2 (over the cap)")
    typ, d = terminal(w2, over["run_id"], 3)
    eq((typ, d.get("code")), ("run.failed", "rate_limited"), "the capped run's terminal")
    bob = chk.post(B, "s3", "bob !events=5 !rate=100", user="bob")
    eq(bob["status"], "running", "bob's run on n2")
    w3 = chk.sub(A, "s3", user="bob")
    w3.wait_terminal(bob["run_id"], 5)
    # A new run in the same session replaces alice's run: it never counts twice.
    again = chk.post(C, "s1", LONG, user="alice")
    eq(again["status"], "running", "alice's replacing run in s1, on n3")
    eq(terminal(w1, r1["run_id"], 3)[0], "run.superseded", "alice's first run")
    # Cancelling it frees her slot for every node.
    eq(B.delete(spath("s1", user="alice") + "/run").status, 200, "DELETE alice's run on n2")
    w1.wait_terminal(again["run_id"], 3)
    wait_until(lambda: not status_of(C, "s1", user="alice")["has_task"], 3, "s1 inactive on n3")
    freed = chk.post(C, "s2", "after !events=5 !rate=100", user="alice")
    eq(freed["status"], "running", "alice's run on n3 after her active run was cancelled")
    eq(terminal(w2, freed["run_id"], 5)[0], "run.completed", "that run's terminal")
    # Three POSTs for alice at once, one per node: exactly one gets the slot.
    results = {}

    def post_on(node, sid):
        results[sid] = chk.post(node, sid, LONG, user="alice")["status"]
    threads = [threading.Thread(target=post_on, args=(n, "race%d" % i)) for i, n in enumerate((A, B, C))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    eq(sorted(results.values()), ["failed", "failed", "running"], "statuses of three simultaneous POSTs")
    for sid, st in results.items():
        if st == "running":
            eq(C.delete(spath(sid, user="alice") + "/run").status, 200, "DELETE the running one")
    wait_until(lambda: C.get("/task-status").json()["total_tasks"] == 0, 3, "no active run left")
    chk.verify(require_terminal=False)


@test(timeout=40)
def test_delete_session_on_c_closes_it_on_every_node(t):
    c = Cluster(t, 3)
    A, B, C = c.nodes
    chk = Checker(t)
    subs = [chk.sub(n, "s", label="sub@" + n.name) for n in (A, B, C)]
    r = chk.post(A, "s", LONG)["run_id"]
    subs[1].wait_agent_events(3, 5)
    resp = C.delete(spath("s"))
    eq(resp.status, 200, "DELETE session on n3")
    for s in subs:
        typ, d = terminal(s, r, 3)
        eq((typ, d.get("reason")), ("run.cancelled", "session_deleted"), "%s: terminal" % s.label)
        s.wait_event("session.closed", 3)
        s.cur.wait_eof(3)
        eq(s.events()[-1].type, "session.closed", "%s: last event" % s.label)
    wait_call_state(A, "s", "long", "client_gone", 3, "deleted session's run torn down")
    last = subs[0].last_id()
    for n in (A, B, C):
        eq(status_of(n, "s"), None, "task-status on %s after the DELETE" % n.name)
    r204 = B.get(spath("s") + "/run", headers={"Last-Event-ID": last})
    eq(r204.status, 204, "resuming the deleted session on n2 with its last id")
    # Asked again where the upstream no longer has it either: each node here
    # has its own demo agent, and a DELETE runcast did not know goes by the
    # upstream's answer (README "Forwarding to the upstream"); n3's deleted it.
    check_error(C.delete(spath("s")), 404, "second DELETE session on n3")
    chk.verify()


# ---------------------------------------------------------------- the same sequence everywhere

@test(timeout=40)
def test_resume_on_another_node_with_last_event_id_is_gap_free(t):
    c = Cluster(t, 3)
    A, B, C = c.nodes
    chk = Checker(t)
    obs = chk.sub(C, "s", label="observer@n3")
    x = chk.sub(A, "s", label="x")
    y = chk.sub(C, "s", label="y")
    r = chk.post(B, "s", "resume !events=60 !rate=30")["run_id"]
    x.wait_agent_events(10, 5)
    x.close()
    y.wait_agent_events(15, 5)
    y.reconnect(A)                 # C -> A, while the run goes on (owner B)
    obs.wait_agent_events(30, 5)   # x misses some events while away
    x.reconnect(C)                 # A -> C with its Last-Event-ID
    eq(x.segments[1].resume_id is not None, True, "x resumed with an id")
    for s in (obs, x, y):
        eq(terminal(s, r, 6)[0], "run.completed", "%s: terminal" % s.label)
    same_sequence([obs, x, y], "the observer and the two resumed subscribers")
    # After the end: resuming from an early id on the third node replays the rest.
    early = [e for e in obs.events() if e.has_id][4].id
    z = chk.sub(B, "s", label="z@n2", last_event_id=early)
    z.wait_terminal(r, 5)
    want = [e.key() for e in obs.events() if e.has_id]
    eq([e.key() for e in z.events() if e.has_id], want[5:], "replay after the 5th event, on n2")
    chk.verify()
    eq(chk.resets(), [], "stream.reset events")


@test(timeout=40)
def test_resume_on_a_lagging_node_continues_without_reset(t):
    """A client resumes on a node whose copy of the session is behind the
    id it holds (that node's Redis traffic is 150 ms late each way, as it is
    for a moment after a node wakes up or on a slow link): the id is this
    session's and still stored, so the stream continues without
    stream.reset."""
    c = Cluster(t, 2)
    A, B = c.nodes
    slow = LatencyProxy(t, c.redis.port, 0.15)
    C = c.add("n3-slow", store=slow.url())
    c.wait_ready(C, timeout=10)
    chk = Checker(t)
    obs = chk.sub(C, "s", label="observer@n3-slow")    # n3 follows the session
    x = chk.sub(B, "s", label="x")
    r = chk.post(A, "s", "lag !events=150 !rate=50")["run_id"]
    for k in (20, 60, 100):
        x.wait_agent_events(k, 5)
        x.reconnect(C if x.cur_node is B else B)
    for s in (obs, x):
        eq(terminal(s, r, 8)[0], "run.completed", "%s: terminal" % s.label)
    eq(chk.resets(), [], "stream.reset events")
    same_sequence([obs, x], "the observer and the resumed subscriber")
    chk.verify()


@test(timeout=40)
def test_three_nodes_deliver_the_same_sequence(t):
    c = Cluster(t, 3)
    A, B, C = c.nodes
    chk = Checker(t)
    subs = [chk.sub(n, sid, label="%s@%s" % (sid, n.name)) for sid in ("s", "t") for n in (A, B, C)]
    s_subs, t_subs = subs[:3], subs[3:]
    rt = chk.post(C, "t", "other session !events=60 !rate=40")["run_id"]
    ra = chk.post(A, "s", "a !events=40 !rate=40")["run_id"]
    s_subs[1].wait_agent_events(5, 5)
    rb = chk.post(B, "s", "b !events=20 !rate=40")["run_id"]      # supersedes ra
    s_subs[2].wait_terminal(rb, 5)
    rc = chk.post(C, "s", "c !events=100 !rate=50")["run_id"]
    s_subs[0].wait_for(lambda evs: any(e.type == "run.started" and (data_of(e) or {}).get("run_id") == rc
                                       for e in evs), 5, "rc started")
    eq(A.delete(spath("s") + "/run").status, 200, "DELETE rc on n1")
    rd = chk.post(A, "s", "d !events=10 !rate=100")["run_id"]
    for s in s_subs:
        s.wait_terminal(rd, 5)
    for s in t_subs:
        s.wait_terminal(rt, 5)
    seq = same_sequence(s_subs, "session s on the three nodes")
    same_sequence(t_subs, "session t on the three nodes")
    types = [k[1] for k in seq if k[1] != "agent.event"]
    eq(types, ["run.started", "run.superseded", "run.started", "run.completed", "run.started",
               "run.cancelled", "run.started", "run.completed"], "session s's run events")
    eq([terminal(s_subs[0], r, 1)[0] for r in (ra, rb, rc, rd)],
       ["run.superseded", "run.completed", "run.cancelled", "run.completed"], "terminals of s's runs")
    chk.verify()


# ---------------------------------------------------------------- a dead node's runs end

@test(timeout=40)
def test_kill_9_of_the_owner_fails_its_run_node_lost_within_the_lease(t):
    c = Cluster(t, 3)
    A, B, C = c.nodes
    chk = Checker(t)
    sa, sb, sc = (chk.sub(n, "s", label="sub@" + n.name) for n in (A, B, C))
    w2 = chk.sub(C, "s2", label="s2@n3")
    r = chk.post(A, "s", LONG)["run_id"]
    r_2 = chk.post(A, "s2", LONG)["run_id"]
    sb.wait_agent_events(3, 5)
    w2.wait_agent_events(3, 5)
    t_kill = time.monotonic()
    A.kill9()
    limit = c.lease_s + 1.5
    for s, run in ((sb, r), (sc, r), (w2, r_2)):
        e = s.wait_terminal(run, limit + 1.0)
        eq((e.type, (data_of(e) or {}).get("code")), ("run.failed", "node_lost"), "%s: terminal" % s.label)
        expect(e.at - t_kill <= limit, "%s: node_lost %.2fs after kill -9 (lease %.1fs + 1.5s)"
               % (s.label, e.at - t_kill, c.lease_s))
    sa.cur.wait_eof(3)
    sa.reconnect(B)                # the killed node's subscriber resumes elsewhere
    eq(terminal(sa, r, 3)[0], "run.failed", "resumed subscriber: terminal")
    for n in (B, C):
        st = status_of(n, "s")
        eq((st["run_id"], st["status"], st["has_task"]), (r, "failed", False), "task-status on %s" % n.name)
        eq(n.get("/task-status").json()["total_tasks"], 0, "total_tasks on %s" % n.name)
    reaped = sum(metric_sum(n.metrics(), "runcast_runs_reaped_total") for n in (B, C))
    eq(reaped, 2, "runcast_runs_reaped_total summed over the live nodes (each run counted once)")
    r2 = chk.post(B, "s", "after !events=5 !rate=100")["run_id"]
    for s in (sa, sb, sc):
        eq(terminal(s, r2, 5)[0], "run.completed", "%s: the next run" % s.label)
    same_sequence([sb, sc], "the live nodes' streams")
    chk.verify()


@test(timeout=45)
def test_sigstopped_owner_past_its_lease_is_fenced_after_sigcont(t):
    c = Cluster(t, 3)
    A, B, C = c.nodes
    chk = Checker(t)
    sa, sb, sc = (chk.sub(n, "s", label="sub@" + n.name) for n in (A, B, C))
    r = chk.post(A, "s", LONG)["run_id"]
    sb.wait_agent_events(3, 5)
    t_stop = time.monotonic()
    A.freeze()
    limit = c.lease_s + 1.5
    for s in (sb, sc):
        e = s.wait_terminal(r, limit + 1.0)
        eq((e.type, (data_of(e) or {}).get("code")), ("run.failed", "node_lost"), "%s: terminal" % s.label)
        expect(e.at - t_stop <= limit, "%s: node_lost %.2fs after SIGSTOP (lease %.1fs + 1.5s)"
               % (s.label, e.at - t_stop, c.lease_s))
    A.thaw()
    # The woken node tears the run down and stays healthy.
    wait_call_state(A, "s", "long", "client_gone", 5, "fenced run's upstream torn down")
    wait_until(lambda: A.readyz() == (200, {"status": "ready"}), 5, "/readyz 200 on the woken node")
    eq(terminal(sa, r, 5), terminal(sb, r, 1), "the woken node's subscriber: terminal")
    st = status_of(A, "s")
    eq((st["run_id"], st["status"], st["has_task"]), (r, "failed", False), "task-status on the woken node")
    r2 = chk.post(A, "s", "after !events=10 !rate=100")["run_id"]
    for s in (sa, sb, sc):
        eq(terminal(s, r2, 5)[0], "run.completed", "%s: a new run on the woken node" % s.label)
    m = A.metrics()
    expect(metric(m, "runcast_store_fenced_appends_total") is not None,
           "runcast_store_fenced_appends_total missing on the woken node")
    same_sequence([sa, sb, sc], "the three nodes' streams")
    chk.verify()   # nothing of r after its node_lost, on any node


@test(timeout=45)
def test_node_stalled_with_its_answers_waiting_keeps_its_store_connection(t):
    """A whole process stalls (SIGSTOP, a paused VM) with appends in flight,
    and their answers arrive while it sleeps. On waking, the command deadline
    has passed, but the answers are in the socket: the node reads them
    instead of dropping the connection, and serves at once. (libuv runs
    timers before I/O, and epoll_wait returns EINTR after SIGCONT.)"""
    c = Cluster(t, 2)
    A, B = c.nodes
    chk = Checker(t)
    sb = chk.sub(B, "s", label="sub@n2")
    r = chk.post(A, "s", "stall !events=400 !rate=50")["run_id"]
    sb.wait_agent_events(3, 5)
    reconnects = metric(A.metrics(), "runcast_store_reconnects_total")
    redis_pid = c.redis.proc.pid
    os.kill(redis_pid, signal.SIGSTOP)
    t.closers.insert(0, lambda: os.kill(redis_pid, signal.SIGCONT))
    seen = metric(A.metrics(), "runcast_events_total")
    # Two more events read from the upstream: the first one's append is sent, unanswered.
    wait_until(lambda: metric(A.metrics(), "runcast_events_total") >= seen + 2, 3,
               "A reads events while Redis sleeps")
    A.freeze()
    os.kill(redis_pid, signal.SIGCONT)   # Redis answers A, whose socket keeps the answers
    # Stalled past the store's command deadline (the larger of the lease and 2 s).
    time.sleep(max(c.lease_s, 2.0) + 0.5)   # the stall's length (the fault), not a wait for a result
    A.thaw()
    eq(A.readyz(), (200, {"status": "ready"}), "/readyz on the woken node")
    eq(status_of(A, "s")["run_id"], r, "task-status on the woken node, asked at once")
    eq(metric(A.metrics(), "runcast_store_reconnects_total"), reconnects,
       "runcast_store_reconnects_total on the woken node (before the stall, after)")
    # Stalled past its lease too: B reaped the run, and A is fenced.
    typ, d = terminal(sb, r, 5)
    eq((typ, d.get("code")), ("run.failed", "node_lost"), "sub@n2: the stalled owner's run")
    chk.verify()


@test(timeout=45)
def test_woken_owner_cannot_write_into_the_run_that_replaced_its_own(t):
    """The frozen owner's run is reaped and a new run of the same session
    starts on another node; when the owner wakes up, its late appends are
    fenced: the new run's events arrive whole and alone."""
    c = Cluster(t, 3)
    A, B, C = c.nodes
    chk = Checker(t)
    subs = [chk.sub(n, "s", label="sub@" + n.name) for n in (A, B, C)]
    r = chk.post(A, "s", "old !events=400 !rate=50")["run_id"]
    subs[1].wait_agent_events(3, 5)
    A.freeze()
    for s in subs[1:]:
        typ, d = terminal(s, r, c.lease_s + 2.5)
        eq((typ, d.get("code")), ("run.failed", "node_lost"), "%s: the frozen owner's run" % s.label)
    rb = chk.post(B, "s", "new !events=40 !rate=20")["run_id"]
    subs[2].wait_for(lambda evs: any(e.type == "run.started" and (data_of(e) or {}).get("run_id") == rb
                                     for e in evs), 3, "the new run started")
    A.thaw()
    wait_call_state(A, "s", "old", "client_gone", 5, "the fenced run's upstream torn down")
    for s in subs:
        typ, d = terminal(s, rb, 6)
        eq((typ, d.get("events")), ("run.completed", 40), "%s: the new run's terminal" % s.label)
        expect_whole_run(s, rb, 40)
    same_sequence(subs, "the three nodes' streams")
    chk.verify()


@test(timeout=40)
def test_node_restarted_under_its_node_id_still_ends_the_dead_process_runs(t):
    """A process restarted at once with the same --node-id (a supervisor's
    restart) knows nothing of its predecessor's runs: they must still end
    (node_lost), not stay active for ever."""
    c = Cluster(t, 2)
    A, B = c.nodes
    chk = Checker(t)
    sb = chk.sub(B, "s")
    r = chk.post(A, "s", LONG)["run_id"]
    sb.wait_agent_events(3, 5)
    t_kill = time.monotonic()
    A.kill9()
    again = c.add(A.name)
    c.wait_ready(again)
    limit = c.lease_s + 1.5
    e = sb.wait_terminal(r, limit + 1.0)
    eq((e.type, (data_of(e) or {}).get("code")), ("run.failed", "node_lost"), "terminal")
    expect(e.at - t_kill <= limit, "node_lost %.2fs after kill -9 (lease %.1fs + 1.5s)"
           % (e.at - t_kill, c.lease_s))
    eq(status_of(again, "s")["status"], "failed", "task-status on the restarted node")
    chk.verify()


# ---------------------------------------------------------------- store loss

@test(timeout=45)
def test_redis_restart_without_persistence_resets_streams_and_ends_runs_store_lost(t):
    c = Cluster(t, 3, aof=False)
    A, B, C = c.nodes
    chk = Checker(t)
    subs = [chk.sub(n, "s", label="sub@" + n.name) for n in (A, B, C)]
    r0 = chk.post(B, "s", "warm !events=5 !rate=100")["run_id"]
    for s in subs:
        s.wait_terminal(r0, 5)
    before = subs[1].last_id()
    idle = chk.sub(B, "idle", label="idle@n2")
    ri = chk.post(C, "idle", "idle !events=3 !rate=100")["run_id"]
    idle.wait_terminal(ri, 5)
    idle.close()
    r1 = chk.post(A, "s", LONG)["run_id"]
    for s in subs:
        s.wait_agent_events(8, 5)
    old_run_id, new_run_id = c.redis.restart()
    # An open stream either goes on (stream.reset before anything new) or
    # ends, and the client resumes with its Last-Event-ID.
    for s in subs:
        wait_until(lambda: s.cur.eof or any(e.type in TERMINAL and (data_of(e) or {}).get("run_id") == r1
                                            for e in s.events()), 8,
                   "%s: r1's terminal or the stream's end after the Redis restart" % s.label)
        if s.cur.eof:
            s.reconnect(s.cur_node)
        eq(terminal(s, r1, 5)[0:1], ("run.failed",), "%s: r1's terminal" % s.label)
        eq(terminal(s, r1, 1)[1].get("code"), "store_lost", "%s: r1's failure code" % s.label)
    # A client resuming from before the loss is told so first.
    z = chk.sub(C, "s", label="z@n3", last_event_id=before)
    first = z.wait_for(lambda evs: evs and evs[0], 5, "the first event")
    eq(first.type, "stream.reset", "first event when resuming from before the data loss")
    eq(terminal(z, r1, 5)[1].get("code"), "store_lost", "z: r1's failure code")
    # A session without an active run lost its log too: resuming it says so.
    idle.reconnect(A)
    first = idle.cur.wait_for(lambda evs: evs and evs[0], 5, "an event after the reconnect")
    eq(first.type, "stream.reset", "first event when resuming the idle session after the data loss")
    wait_call_state(A, "s", "long", "client_gone", 5, "lost run's upstream torn down")
    for n in (A, B, C):
        eq(n.readyz(), (200, {"status": "ready"}), "/readyz on %s" % n.name)
        expect((metric(n.metrics(), "runcast_store_reconnects_total") or 0) >= 1,
               "runcast_store_reconnects_total on %s" % n.name)
    r2 = chk.post(B, "s", "after !events=5 !rate=100")["run_id"]
    for s in subs + [z]:
        eq(terminal(s, r2, 5)[0], "run.completed", "%s: the next run" % s.label)
    chk.verify()


def aof_restart_test(t, crash):
    """600k filler keys make Redis spend about half a second LOADING after
    the restart (it answers -LOADING meanwhile): the nodes must wait it out,
    not drop what they could not write."""
    redis = RedisServer(t, aof=True)
    redis.fill(600000)
    c = Cluster(t, 3, redis=redis)
    A, B, C = c.nodes
    chk = Checker(t)
    subs = [chk.sub(n, "s", label="sub@" + n.name) for n in (A, B, C)]
    r0 = chk.post(B, "s", "warm !events=5 !rate=100")["run_id"]
    for s in subs:
        s.wait_terminal(r0, 5)
    before = subs[1].last_id()
    r1 = chk.post(A, "s", "during !events=150 !rate=50")["run_id"]
    for s in subs:
        s.wait_agent_events(5 + 5, 5)
    if crash:
        c.redis.kill9()
        c.redis.start()
    else:
        c.redis.restart()
    for s in subs:
        typ, d = terminal(s, r1, 12)
        eq((typ, d.get("events")), ("run.completed", 150), "%s: r1's terminal" % s.label)
        expect_whole_run(s, r1, 150)
    z = chk.sub(C, "s", label="z@n3", last_event_id=before)
    z.wait_terminal(r1, 5)
    want = [e.key() for e in subs[1].events() if e.has_id]
    i = [k[0] for k in want].index(before)
    eq([e.key() for e in z.events() if e.has_id], want[i + 1:], "replay from before the restart")
    eq(chk.resets(), [], "stream.reset events")
    same_sequence(subs, "the three nodes' streams")
    chk.verify()


@test(timeout=45)
def test_redis_restart_with_aof_loses_nothing_and_resets_nothing(t):
    aof_restart_test(t, crash=False)


@test(timeout=45)
def test_redis_kill_9_with_aof_appendfsync_always_loses_nothing(t):
    aof_restart_test(t, crash=True)


# ---------------------------------------------------------------- Redis pauses and faults

def pause_test(t, pause_ms, sigstop=False):
    c = Cluster(t, 3)
    A, B, C = c.nodes
    chk = Checker(t)
    subs = [chk.sub(n, "s", label="sub@" + n.name) for n in (A, B, C)]
    r = chk.post(A, "s", "paused !events=80 !rate=20")["run_id"]
    for s in subs:
        s.wait_agent_events(5, 5)
    if sigstop:
        os.kill(c.redis.proc.pid, signal.SIGSTOP)
        t.closers.insert(0, lambda: os.kill(c.redis.proc.pid, signal.SIGCONT))
        time.sleep(pause_ms / 1000.0)   # the fault's length, not a wait for a result
        os.kill(c.redis.proc.pid, signal.SIGCONT)
    else:
        c.redis.pause(pause_ms, "ALL")
    for s in subs:
        typ, d = terminal(s, r, 12)
        eq((typ, d.get("code"), d.get("events")), ("run.completed", None, 80), "%s: terminal" % s.label)
        expect_whole_run(s, r, 80)
    for n in (A, B, C):
        eq(metric_sum(n.metrics(), "runcast_runs_reaped_total"), 0, "runcast_runs_reaped_total on %s" % n.name)
    same_sequence(subs, "the three nodes' streams")
    chk.verify()


@test(timeout=40)
def test_client_pause_1000ms_all_shorter_than_the_lease_causes_no_node_lost(t):
    pause_test(t, 1000)


@test(timeout=40)
def test_client_pause_1500ms_all_shorter_than_the_lease_causes_no_node_lost(t):
    pause_test(t, 1500)


@test(timeout=40)
def test_redis_sigstopped_for_1500ms_causes_no_node_lost(t):
    """A frozen Redis answers nothing at all (CLIENT PAUSE still reads and
    queues): the nodes' command deadlines fire, they reconnect, and the run
    still completes whole."""
    pause_test(t, 1500, sigstop=True)


@test(timeout=40)
def test_client_kill_type_pubsub_mid_run_loses_no_event(t):
    c = Cluster(t, 3)
    A, B, C = c.nodes
    chk = Checker(t)
    subs = [chk.sub(n, "s", label="sub@" + n.name) for n in (A, B, C)]
    subs += [chk.sub(n, "s", label="sub2@" + n.name) for n in (A, B, C)]
    r = chk.post(A, "s", "pubsub !events=100 !rate=25")["run_id"]
    killed = []
    for k in (5, 30, 60):
        subs[1].wait_agent_events(k, 6)
        killed.append(c.redis.kill_pubsub())
        wait_until(lambda: len(c.redis.pubsub_clients()) >= 3, 5, "the nodes' pub/sub connections back")
    expect(all(n >= 3 for n in killed), "pub/sub connections killed each time: %r (3 nodes)" % killed)
    for s in subs:
        typ, d = terminal(s, r, 8)
        eq((typ, d.get("events")), ("run.completed", 100), "%s: terminal" % s.label)
        expect_whole_run(s, r, 100)
    # A whole short run published while the pub/sub connections are down.
    eq(c.redis.kill_pubsub() >= 3, True, "pub/sub connections killed")
    r2 = chk.post(B, "s", "quick !events=3 !rate=1000")["run_id"]
    for s in subs:
        eq(terminal(s, r2, 5)[0], "run.completed", "%s: the quick run" % s.label)
    same_sequence(subs, "every stream")
    chk.verify()
    eq(chk.resets(), [], "stream.reset events")


@test(timeout=40)
def test_wedged_pubsub_connection_still_delivers_every_event(t):
    """n3's pub/sub connection goes silent without closing (Centrifugo's
    silent wedge): n3's subscribers must still get every event, and n3 must
    not look healthy while delivering nothing."""
    c = Cluster(t, 2)
    A, B = c.nodes
    proxy = LatencyProxy(t, c.redis.port)
    C = c.add("n3-proxied", store=proxy.url())
    c.wait_ready(C)
    chk = Checker(t)
    obs = chk.sub(B, "s", label="observer@n2")
    w = chk.sub(C, "s", label="sub@n3-proxied")
    r0 = chk.post(A, "s", "before !events=5 !rate=100")["run_id"]
    w.wait_terminal(r0, 5)
    expect(proxy.wedge_pubsub() >= 1, "n3's pub/sub connection not seen on the proxy")
    r1 = chk.post(A, "s", "wedged !events=40 !rate=20")["run_id"]
    obs.wait_terminal(r1, 5)
    typ, d = terminal(w, r1, c.lease_s + 3)
    eq((typ, d.get("events")), ("run.completed", 40), "the wedged node's subscriber: terminal")
    expect_whole_run(w, r1, 40)
    r2 = chk.post(B, "s", "after !events=5 !rate=100")["run_id"]
    eq(terminal(w, r2, c.lease_s + 3)[0], "run.completed", "the next run on the wedged node's subscriber")
    obs.wait_terminal(r2, 5)
    eq(metric(C.metrics(), "runcast_store_pubsub_resets_total"), 1.0,
       "n3 replaced its wedged pub/sub connection once")
    same_sequence([obs, w], "the two streams")
    chk.verify()


@test(timeout=50)
def test_redis_down_gives_503s_keeps_streams_open_and_recovers_without_restarts(t):
    c = Cluster(t, 3, aof=True, args=["--heartbeat", "0.5s"])
    A, B, C = c.nodes
    pids = [n.pid for n in c.nodes]
    chk = Checker(t)
    sa, sb = chk.sub(A, "s", label="sub@n1"), chk.sub(B, "s", label="sub@n2")
    r0 = chk.post(C, "s", "before !events=5 !rate=100")["run_id"]
    sa.wait_terminal(r0, 5)
    sb.wait_terminal(r0, 5)
    for n in c.nodes:
        eq(metric(n.metrics(), "runcast_store_up"), 1.0, "runcast_store_up on %s" % n.name)
    reconnects = [metric(n.metrics(), "runcast_store_reconnects_total") or 0 for n in c.nodes]
    c.redis.stop()
    wait_readyz(c.nodes, 503, {"status": "store_unavailable"}, 5)
    for n in c.nodes:
        r = n.post_json(spath("s2") + "/run", {"message": "refused"})
        check_error(r, 503, "POST run on %s while Redis is down" % n.name, code="store_unavailable")
        expect((r.header("Retry-After") or "").isdigit(), "POST 503 on %s: Retry-After %r (want seconds)"
               % (n.name, r.header("Retry-After")))
        eq(n.get("/healthz").status, 200, "/healthz on %s while Redis is down" % n.name)
        eq(metric(n.metrics(), "runcast_store_up"), 0.0, "runcast_store_up on %s while down" % n.name)
    for s in (sa, sb):
        with s.cur.cond:
            n0 = s.cur.comments.count("keepalive")
        s.cur.wait_for(lambda evs: s.cur.comments.count("keepalive") >= n0 + 5, 6,
                       "five more keepalives while Redis is down")
        expect(not s.cur.eof, "%s ended while Redis was down" % s.label)
    c.redis.start()
    wait_readyz(c.nodes, 200, {"status": "ready"}, 10)
    for n, before in zip(c.nodes, reconnects):
        m = n.metrics()
        eq(metric(m, "runcast_store_up"), 1.0, "runcast_store_up on %s after" % n.name)
        expect((metric(m, "runcast_store_reconnects_total") or 0) > before,
               "runcast_store_reconnects_total did not grow on %s" % n.name)
    r1 = chk.post(C, "s", "after !events=20 !rate=100")["run_id"]
    for s in (sa, sb):
        eq(terminal(s, r1, 5)[0], "run.completed", "%s: the run after Redis returned" % s.label)
        eq(len(s.segments), 1, "%s reconnected" % s.label)
    eq([n.pid for n in c.nodes], pids, "node pids")
    expect(all(n.alive() for n in c.nodes), "a node died")
    eq(chk.resets(), [], "stream.reset events")
    same_sequence([sa, sb], "the two streams")
    chk.verify()


# ---------------------------------------------------------------- expiry, configuration, metrics

@test(timeout=40)
def test_session_expiry_runs_cluster_wide(t):
    """A session's own task-status is a request that keeps it alive: the
    test watches the global /task-status?all=1 instead."""
    c = Cluster(t, 3, args=["--session-ttl", "2s"])
    A, B, C = c.nodes

    def listed(n):
        r = n.get("/task-status?all=1")
        eq(r.status, 200, "GET /task-status?all=1 on %s" % n.name)
        return {x["session_id"]: x for x in r.json()["sessions"]}
    j = post(A, "idle", "x !events=3 !rate=100")
    wait_until(lambda: (listed(B).get("idle") or {}).get("status") == "completed", 5, "idle's run completed (n2)")
    busy = post(B, "busy", "busy !events=100 !rate=20")   # 5 s of run events keep it alive
    for n in (A, B, C):
        wait_until(lambda: "idle" not in listed(n), 2 + 4, "session idle gone from %s's list" % n.name,
                   interval=0.1)
    for n in (A, B, C):
        eq(status_of(n, "idle"), None, "task-status of the expired session on %s" % n.name)
    st = wait_until(lambda: (lambda x: x if x and not x["has_task"] else None)(listed(C).get("busy")), 8,
                    "busy's run ended", interval=0.1)
    eq((st["run_id"], st["status"]), (busy["run_id"], "completed"), "busy session's run (not expired)")
    expect(j["run_id"] != busy["run_id"], "distinct runs")
    for n in (A, B, C):
        eq(n.get("/healthz").status, 200, "/healthz on %s" % n.name)


@test(timeout=30)
def test_env_twins_and_a_redis_db_number_configure_cluster_mode(t):
    out = subprocess.run([harness.RUNCAST_BIN, "--help"], capture_output=True, timeout=10)
    text = (out.stdout + out.stderr).decode("utf-8", "replace")
    for flag in ("--store", "--node-id", "--node-lease"):
        expect(flag in text, "--help does not list %s" % flag)
    c = Cluster(t, 1, db=3)
    A = c.nodes[0]
    env = {"RUNCAST_STORE": c.redis.url(3), "RUNCAST_NODE_ID": "env-node", "RUNCAST_NODE_LEASE": c.lease}
    d = Daemon(t, [], env=env)
    wait_until(lambda: d.get("/readyz").status == 200, 8, "/readyz on the env-configured node")
    chk = Checker(t)
    s = chk.sub(A, "s")
    r = post(_DaemonNode(d), "s", "via env !events=3 !rate=100")["run_id"]
    chk.note("s", r)
    eq(s.wait_terminal(r, 5).type, "run.completed", "a run posted to the env-configured node, seen on n1")
    expect(c.redis.call("DBSIZE", db=3) > 0, "nothing stored in Redis db 3")
    eq(c.redis.call("DBSIZE", db=0), 0, "keys in Redis db 0 (the store is db 3)")
    chk.verify()


class _DaemonNode:
    def __init__(self, d):
        self.d = d
        self.name = "env-node"
        self.port = d.port

    def post_json(self, path, obj, **kw):
        return self.d.post_json(path, obj, **kw)


@test(timeout=30)
def test_store_metrics_are_exposed(t):
    c = Cluster(t, 2)
    A, B = c.nodes
    chk = Checker(t)
    s = chk.sub(B, "s")
    r = chk.post(A, "s", "m !events=5 !rate=100")["run_id"]
    s.wait_terminal(r, 5)
    for n in (A, B):
        m = n.metrics()
        types = m["#TYPE"]
        for name, typ in (("runcast_store_up", "gauge"), ("runcast_store_reconnects_total", "counter"),
                          ("runcast_store_fenced_appends_total", "counter"),
                          ("runcast_runs_reaped_total", "counter"),
                          ("runcast_store_command_seconds", "histogram")):
            eq(types.get(name), typ, "# TYPE of %s on %s" % (name, n.name))
        eq(metric(m, "runcast_store_up"), 1.0, "runcast_store_up on %s" % n.name)
        expect(metric_sum(m, "runcast_store_command_seconds_count") > 0,
               "runcast_store_command_seconds_count on %s" % n.name)
        expect(any('le="+Inf"' in k for k in m.get("runcast_store_command_seconds_bucket", {})),
               "runcast_store_command_seconds has no +Inf bucket on %s" % n.name)
    chk.verify()


@test(timeout=40)
def test_agui_run_on_one_node_resumes_on_another_with_the_same_messages(t):
    """AG-UI (README "Use with an AG-UI frontend"): the answer of POST …/agui
    on A is cut mid-run; GET …/agui/{thread} on B rebuilds the thread from
    Redis and follows the run to its end; C, after the end, rebuilds the
    same messages."""
    import json
    from harness import SseClient, TIME_SCALE
    c = Cluster(t, 3)
    A, B, C = c.nodes
    words = " ".join("w%d" % i for i in range(15))
    body = {"threadId": "ag", "runId": "client-1", "state": {}, "tools": [], "context": [],
            "forwardedProps": {}, "messages": [{"id": "u1", "role": "user",
                                                "content": words + " !word-delay=60ms"}]}
    a = SseClient(t, A.port, "/apps/app/users/u/agui", method="POST",
                  body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    a.wait_for(lambda evs: sum('"TEXT_MESSAGE_CONTENT"' in e.data for e in evs) >= 3,
               10 * TIME_SCALE, "three content events on A")
    opened = [e.json() for e in a.events if '"TEXT_MESSAGE_START"' in e.data][0]["messageId"]
    a.close()
    g = SseClient(t, B.port, "/apps/app/users/u/agui/ag")
    g.wait_eof(20 * TIME_SCALE)
    evs = [e.json() for e in g.events]
    eq([e["type"] for e in evs[:3]], ["RUN_STARTED", "MESSAGES_SNAPSHOT", "TEXT_MESSAGE_START"],
       "B's preamble")
    eq(evs[0]["runId"], "client-1", "the client's runId")
    eq(evs[2]["messageId"], opened, "the message A opened, re-opened on B")
    eq(evs[-1]["type"], "RUN_FINISHED", "B follows the run to its end")
    snap = evs[1]["messages"]
    text = snap[1]["content"] + "".join(e["delta"] for e in evs[3:]
                                        if e["type"] == "TEXT_MESSAGE_CONTENT")
    eq(text, "Echo: " + words, "no text missing or repeated")
    h = SseClient(t, C.port, "/apps/app/users/u/agui/ag")
    h.wait_eof(20 * TIME_SCALE)
    done = [e.json() for e in h.events]
    eq(done[1]["messages"], [body["messages"][0],
                             {"id": opened, "role": "assistant", "content": "Echo: " + words}],
       "C's snapshot after the end")
    r = harness.request(C.port, "GET", "/apps/app/users/u/agui/nothing-here")
    eq(r.status, 204, "an unknown thread on C")
