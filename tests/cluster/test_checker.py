"""The cluster suite's own tooling: the checker on synthetic event lists, the
RESP client and RedisServer fixture, and Sub + Checker over a real stream of
a memory-mode node (these need no cluster-capable binary)."""

import json
import os
import signal

from harness import Event, TestFailure, eq, expect, fail, test, wait_until
from cluster import Checker, LatencyProxy, Resp, RedisServer, check_session, parse_id, post, same_sequence

EP1 = "0000abcd"
EP2 = "1234beef"
_clock = [0.0]


def ev(seq, type_, data=None, epoch=EP1, has_id=True):
    """A synthetic event; data is a dict (JSON-encoded) or a run id string
    (for run.* events) or an invocation id (agent.event)."""
    _clock[0] += 0.001
    if isinstance(data, str):
        data = {"invocationId": data} if type_ == "agent.event" else {"run_id": data}
    text = json.dumps(data or {})
    eid = "%s-%d" % (epoch, seq) if has_id else None
    return Event(eid, has_id, type_, text, "", _clock[0])


def reset():
    return ev(0, "stream.reset", {"reason": "unknown_event_id"}, has_id=False)


def run_a():
    """Two runs: r1 superseded by r2, r2 completed, seq 1..8."""
    return [ev(1, "run.started", "r1"), ev(2, "agent.event", "i1"), ev(3, "agent.event", "i1"),
            ev(4, "run.superseded", {"run_id": "r1", "by": "r2"}), ev(5, "run.started", "r2"),
            ev(6, "agent.event", "i2"), ev(7, "agent.event", "i2"), ev(8, "run.completed", "r2")]


def one(events, resume=None, node="n1", label="t"):
    return (label, [(node, resume, events)])


def problems_of(traces, **kw):
    return check_session("s", traces, **kw)


def expect_problem(traces, fragment, **kw):
    probs = problems_of(traces, **kw)
    expect(any(fragment in p for p in probs), "checker missed %r; it said %r" % (fragment, probs))


@test(timeout=5)
def test_checker_accepts_a_clean_sequence_on_two_nodes(t):
    evs = run_a()
    eq(problems_of([one(evs), one(list(evs), node="n2", label="u")]), [], "problems")
    # A resume on another node that continues right after the last id.
    eq(problems_of([("t", [("n1", None, evs[:3]), ("n2", evs[2].id, evs[3:])])]), [], "resume problems")
    eq(parse_id("0000abcd-17"), ("0000abcd", 17), "parse_id")
    eq(parse_id("17"), None, "parse_id of a bare number")


@test(timeout=5)
def test_checker_finds_gaps_reordering_and_foreign_ids(t):
    evs = run_a()
    expect_problem([one(evs[:3] + evs[4:])], "gap of 1")
    expect_problem([one([evs[0], evs[2], evs[1]] + evs[3:])], "not increasing")
    expect_problem([one(evs[:4] + [ev(5, "run.started", "r2", epoch=EP2)])], "epoch changed without stream.reset")
    expect_problem([one(evs[:2] + [Event("7", True, "agent.event", "{}", "", 9.0)])], "not <8 hex>-<seq>")
    # resumed: the first event must be the one right after the resume id
    expect_problem([("t", [("n1", None, evs[:3]), ("n2", evs[2].id, evs[4:])])], "gap of 1")
    # a stream.reset excuses a gap and an epoch change, not a step back
    eq(problems_of([one(evs[:3] + [reset()] + evs[5:])], require_terminal=False), [], "gap after reset")
    eq(problems_of([one(evs[:3] + [reset(), ev(1, "run.failed", {"run_id": "r1", "code": "store_lost"}, epoch=EP2)])]),
       [], "new epoch after reset")
    expect_problem([one(evs[:5] + [reset()] + evs[1:2])], "not greater")


@test(timeout=5)
def test_checker_finds_events_after_a_terminal_and_double_terminals(t):
    evs = run_a()
    # an agent event of r1 (its invocation) after run.superseded
    leak = evs[:5] + [ev(6, "agent.event", "i1")] + [ev(7, "agent.event", "i2"), ev(8, "run.completed", "r2")]
    expect_problem([one(leak)], "agent.event 0000abcd-6 (invocation i1) of run r1 after its terminal")
    # a run event after its terminal
    late = evs + [ev(9, "run.failed", {"run_id": "r1", "code": "node_lost"})]
    expect_problem([one(late)], "run.failed 0000abcd-9 of run r1 after its terminal")
    # an agent event between runs
    stray = evs[:4] + [ev(5, "agent.event", "i9"), ev(6, "run.started", "r2"), ev(7, "run.completed", "r2")]
    expect_problem([one(stray)], "outside any run")
    # two terminals of one run, seen on different nodes only (each node's
    # own sequence looks fine): the union finds them
    a = evs[:2] + [ev(3, "run.completed", "r1")]
    b = evs[:2] + [ev(4, "run.failed", {"run_id": "r1", "code": "node_lost"}, epoch=EP1)]
    probs = problems_of([one(a), one(b, node="n2", label="u")])
    expect(any("gap" in p for p in probs), "the gap on u: %r" % probs)
    expect(any("2 terminal events" in p for p in probs), "two terminals: %r" % probs)


@test(timeout=5)
def test_checker_finds_different_content_for_one_id_and_missing_terminals(t):
    evs = run_a()
    other = list(evs)
    other[5] = ev(6, "agent.event", {"invocationId": "i2", "text": "different"})
    expect_problem([one(evs), one(other, node="n2", label="u")], "id 0000abcd-6 is agent.event")
    expect_problem([one(evs[:3])], "run r1 has no terminal event on any node")
    eq(problems_of([one(evs[:3])], require_terminal=False), [], "without require_terminal")
    expect_problem([one(evs)], "run r7 has no terminal event", noted_runs=["r1", "r2", "r7"])
    try:
        same_sequence([_FakeSub("a", evs), _FakeSub("b", evs[:-1])], "same")
        fail("same_sequence accepted different sequences")
    except TestFailure as e:
        expect("differ at index 7" in str(e), "same_sequence message: %s" % e)


class _FakeSub:
    def __init__(self, label, evs):
        self.label = label
        self.evs = evs

    def events(self):
        return self.evs


@test(timeout=20)
def test_redis_fixture_restarts_on_its_port_with_and_without_aof(t):
    for aof in (False, True):
        r = RedisServer(t, aof=aof)
        port = r.port
        eq(r.call("SET", "k", "v"), "OK", "SET")
        eq(r.call("XADD", "st", "1-0", "type", "x"), "1-0", "XADD")
        old, new = r.restart()
        eq(r.port, port, "port after restart")
        expect(old != new, "run_id unchanged across a restart: %s" % old)
        eq(r.call("GET", "k"), "v" if aof else None, "GET after restart (aof=%s)" % aof)
        r.kill9()
        r.start()
        eq(r.call("GET", "k"), "v" if aof else None, "GET after kill -9 and start (aof=%s)" % aof)
        eq(r.call("XLEN", "st"), 1 if aof else 0, "XLEN after kill -9 (aof=%s)" % aof)
        eq(r.call("SET", "d1", "x", db=1), "OK", "SET in db 1")
        eq(r.call("DBSIZE", db=1), 1, "DBSIZE of db 1")
        r.stop()
        expect(not r.running(), "redis-server still running after stop")


@test(timeout=20)
def test_redis_fixture_pauses_and_kills_pubsub_clients(t):
    import time
    r = RedisServer(t)
    sub = Resp(r.port)
    eq(sub.call("SUBSCRIBE", "ch"), ["subscribe", "ch", 1], "SUBSCRIBE reply")
    wait_until(lambda: len(r.pubsub_clients()) == 1, 2, "one pubsub client")
    eq(r.kill_pubsub(), 1, "CLIENT KILL TYPE pubsub")
    try:
        got = sub._reply()
        fail("subscriber still connected: %r" % got)
    except (ConnectionError, OSError):
        pass
    sub.close()
    r.pause(300)
    t0 = time.monotonic()
    eq(r.call("SET", "k", "v"), "OK", "SET during pause")
    waited = time.monotonic() - t0
    expect(0.2 <= waited < 2.0, "CLIENT PAUSE 300 held SET for %.3fs" % waited)
    os.kill(r.proc.pid, signal.SIGSTOP)
    try:
        r.call("PING", timeout=0.3)
        fail("a SIGSTOPped redis answered")
    except OSError:
        pass
    os.kill(r.proc.pid, signal.SIGCONT)
    eq(r.call("PING"), "PONG", "PING after SIGCONT")


@test(timeout=10)
def test_latency_proxy_delays_redis_traffic_both_ways(t):
    import time
    r = RedisServer(t)
    p = LatencyProxy(t, r.port, 0.1)
    conn = Resp(p.port)
    t0 = time.monotonic()
    eq(conn.call("PING"), "PONG", "PING through the proxy")
    took = time.monotonic() - t0
    expect(0.2 <= took < 1.0, "a round trip through a 100 ms proxy took %.3fs" % took)
    eq(conn.call("SET", "k", "v" * 100000), "OK", "a large SET through the proxy")
    eq(len(conn.call("GET", "k")), 100000, "a large GET through the proxy")
    conn.close()


class _MemNode:
    """A memory-mode daemon dressed as a Node for Sub (no --store)."""

    def __init__(self, d, name):
        self.d = d
        self.name = name
        self.port = d.port

    def post_json(self, path, obj, **kw):
        return self.d.post_json(path, obj, **kw)


@test(timeout=20)
def test_subs_and_checker_over_a_memory_mode_stream(t):
    d = t.daemon()
    node = _MemNode(d, "mem")
    chk = Checker(t)
    a = chk.sub(node, "s1")
    b = chk.sub(node, "s1")
    r1 = chk.post(node, "s1", "one !events=20 !rate=100")["run_id"]
    a.wait_agent_events(5, 5)
    a.reconnect(node)          # resumes with its Last-Event-ID
    r2 = chk.post(node, "s1", "two !events=5 !rate=200")["run_id"]
    a.wait_terminal(r2, 5)
    b.wait_terminal(r2, 5)
    eq(a.wait_terminal(r1, 1).type, "run.superseded", "r1's terminal")
    eq(len(a.segments), 2, "connections of a")
    expect(a.segments[1].resume_id is not None, "the second connection resumed with an id")
    chk.verify()
    eq(chk.resets(), [], "stream.reset events")
    # the checker notices what a broken node would do: drop one event of b
    b.segments[0].client.events.pop(3)
    expect(any("gap of 1" in p for p in chk.problems()), "dropped event not found: %r" % chk.problems())
    # a subscriber that joins after the runs replays the latest run only
    c = chk.sub(node, "s1")
    c.wait_terminal(r2, 5)
    eq([e.id for e in c.events() if e.has_id], [e.id for e in a.events() if e.has_id][-len(c.events()):],
       "late subscriber's ids")
    post(node, "s2", "x", expect_status=202)
