"""Run controls and observability: the limiter (concurrency, queue, token
bucket, queue timeout), run timeouts, upstream faults and retries, metrics,
logs, session expiry, configuration errors, graceful shutdown, and the rule
that a limiter slot is released exactly once on every path."""

import collections
import json
import os
import re
import socket
import subprocess
import threading
import time

from harness import (RUNCAST_BIN, TIME_SCALE, Daemon, all_status, build_request, check_error, demo_call, eq,
                     expect, fail, free_port, post_run, run_events, spath,
                     task_status, terminal_events, test, wait_until)


# ---------------------------------------------------------------- helpers

class Metrics:
    """One scrape of GET /metrics, parsed from the Prometheus text format."""

    LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?[ \t]+(\S+)$')
    LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

    def __init__(self, text):
        self.text = text
        self.samples = {}
        self.types = {}
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 4 and parts[1] == "TYPE":
                    self.types[parts[2]] = parts[3]
                continue
            m = self.LINE.match(line)
            expect(m is not None, "metrics: unparsable line %r" % line)
            labels = tuple(sorted(self.LABEL.findall(m.group(2) or "")))
            key = (m.group(1), labels)
            expect(key not in self.samples, "metrics: duplicate sample %r" % line)
            self.samples[key] = float(m.group(3))

    def get(self, name, **labels):
        key = (name, tuple(sorted(labels.items())))
        if key not in self.samples:
            fail("metrics: no sample %s%r in:\n%s" % (name, labels, self.text[:3000]))
        return self.samples[key]

    def value(self, name, default, **labels):
        return self.samples.get((name, tuple(sorted(labels.items()))), default)

    def labelled(self, name, label):
        """{label value: sample value} of every sample of name."""
        out = {}
        for (n, labels), v in self.samples.items():
            if n == name:
                d = dict(labels)
                if label in d:
                    out[d[label]] = v
        return out

    def histogram(self, name):
        """(count, sum) after checking the buckets: cumulative, le ascending,
        ending with +Inf equal to _count."""
        eq(self.types.get(name), "histogram", "TYPE of %s" % name)
        buckets = []
        for (n, labels), v in self.samples.items():
            if n == name + "_bucket":
                le = dict(labels)["le"]
                buckets.append((float("inf") if le == "+Inf" else float(le), v))
        buckets.sort()
        expect(buckets and buckets[-1][0] == float("inf"), "%s: no +Inf bucket" % name)
        for (_, a), (_, b) in zip(buckets, buckets[1:]):
            expect(a <= b, "%s: buckets not cumulative: %r" % (name, buckets))
        count = self.get(name + "_count")
        total = self.get(name + "_sum")
        eq(buckets[-1][1], count, "%s +Inf bucket vs _count" % name)
        expect(total >= 0, "%s_sum negative: %r" % (name, total))
        return count, total


def scrape(d):
    r = d.get("/metrics")
    eq(r.status, 200, "GET /metrics status")
    ctype = r.header("Content-Type") or ""
    expect(ctype.startswith("text/plain; version=0.0.4"), "metrics Content-Type %r" % ctype)
    return Metrics(r.body.decode("utf-8"))


def agent_count(s):
    return sum(1 for e in s.snapshot() if e.type == "agent.event")


def wait_first_agent_event(s, rid, timeout=5):
    s.wait_for(lambda evs: any(e.type == "agent.event" for e in run_events(evs, rid)), timeout,
               "first agent.event of %s" % rid)


def terminal(s, rid, type_, timeout=5):
    """Waits for the run's terminal event, checks it is of type_ and the only
    one; returns its data."""
    s.wait_for(lambda evs: terminal_events(evs, rid), timeout, "terminal event of %s" % rid)
    term = terminal_events(s.snapshot(), rid)
    eq([e.type for e in term], [type_], "terminal events of %s" % rid)
    return term[0].json()


def subscribe(t, d, sid):
    s = t.sse(d, spath(sid) + "/run")
    s.wait_retry()
    return s


def calls_in_state(d, sid, state, n=1):
    def check():
        calls = demo_call(d, sid)
        return len(calls) >= n and all(c["state"] == state for c in calls) and calls
    return check


def run_cli(args, env=None, timeout=5):
    """Runs the binary with args to completion (no daemon expected)."""
    penv = dict(os.environ)
    for k in list(penv):
        if k.startswith("RUNCAST_"):
            del penv[k]
    if env:
        penv.update(env)
    try:
        p = subprocess.run([RUNCAST_BIN] + list(args), stdin=subprocess.DEVNULL,
                           capture_output=True, env=penv, timeout=timeout)
    except subprocess.TimeoutExpired:
        fail("runcast %r did not exit within %.0fs" % (args, timeout))
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


# ---------------------------------------------------------------- limiter

@test()
def test_limiter_queues_extra_runs_and_starts_them_when_a_slot_frees(t):
    d = t.daemon("--max-concurrent-runs", "2")
    subs = {sid: subscribe(t, d, sid) for sid in ("qa", "qb", "qc", "qd")}
    ja, _, _ = post_run(d, "qa", "!hang")
    jb, _, _ = post_run(d, "qb", "!hang")
    eq((ja["status"], jb["status"]), ("running", "running"), "POST status of the first two runs")
    wait_until(calls_in_state(d, "qa", "streaming"), 3, "qa's call streaming")
    jc, _, _ = post_run(d, "qc", "!hang")
    jd, _, _ = post_run(d, "qd", "!hang")
    eq((jc["status"], jd["status"]), ("queued", "queued"), "POST status of the next two runs")
    for sid, j, position in (("qc", jc, 1), ("qd", jd, 2)):
        data = subs[sid].wait_event("run.queued", 3, run_id=j["run_id"]).json()
        expect(isinstance(data.pop("created_at", None), float), "run.queued created_at: %r" % data)
        eq(data, {"run_id": j["run_id"], "position": position}, "run.queued of %s" % sid)
    st = all_status(d)
    eq((st["total_tasks"], st["running_tasks"], st["queued_tasks"]), (4, 2, 2), "/task-status counts")
    eq((task_status(d, "qc")["status"], task_status(d, "qc")["has_task"]), ("queued", True),
       "task-status of a queued run")
    eq(task_status(d, "qc")["started_at"], None, "started_at of a queued run")
    eq(demo_call(d, "qc"), [], "upstream calls of a queued run")

    # A queued run that is cancelled leaves the queue at once.
    r = d.delete(spath("qc") + "/run")
    eq(r.status, 200, "DELETE of a queued run")
    eq(terminal(subs["qc"], jc["run_id"], "run.cancelled")["reason"], "client_request", "reason")
    st = all_status(d)
    eq((st["total_tasks"], st["running_tasks"], st["queued_tasks"]), (3, 2, 1),
       "/task-status counts after cancelling a queued run")

    # A queued run that is superseded leaves the queue; its successor queues
    # in its place (position 1: nothing else waits).
    jd2, _, _ = post_run(d, "qd", "second !word-delay=0")
    eq(jd2["status"], "queued", "POST status of the replacement")
    eq(terminal(subs["qd"], jd["run_id"], "run.superseded")["by"], jd2["run_id"], "superseded by")
    ev = subs["qd"].wait_event("run.queued", 3, run_id=jd2["run_id"])
    eq(ev.json()["position"], 1, "position of the replacement")
    st = all_status(d)
    eq((st["total_tasks"], st["running_tasks"], st["queued_tasks"]), (3, 2, 1),
       "/task-status counts after superseding a queued run")
    eq(demo_call(d, "qd"), [], "upstream calls of the superseded queued run")

    # Freeing a slot starts the queued run at once.
    t0 = time.monotonic()
    eq(d.delete(spath("qa") + "/run").status, 200, "DELETE of a running run")
    ev = subs["qd"].wait_event("run.started", 2, run_id=jd2["run_id"])
    expect(ev.at - t0 < 1.0 * TIME_SCALE, "queued run started %.3fs after a slot freed" % (ev.at - t0))
    terminal(subs["qd"], jd2["run_id"], "run.completed")
    eq([c["text"] for c in demo_call(d, "qd")], ["second !word-delay=0"], "upstream calls of qd")
    wait_until(calls_in_state(d, "qa", "client_gone"), 3, "cancelled run's upstream call closed")
    st = all_status(d)
    eq((st["total_tasks"], st["running_tasks"], st["queued_tasks"]), (1, 1, 0), "/task-status at the end")


@test(valgrind=False)
def test_queue_timeout_fails_a_queued_run_with_rate_limited(t):
    d = t.daemon("--max-concurrent-runs", "1", "--queue-timeout", "0.2")
    post_run(d, "holder", "!hang")
    s = subscribe(t, d, "waiter")
    j, _, t_post = post_run(d, "waiter", "never starts")
    eq(j["status"], "queued", "POST status")
    data = terminal(s, j["run_id"], "run.failed", 3)
    eq(data["code"], "rate_limited", "run.failed code")
    expect(isinstance(data.get("message"), str) and data["message"], "message: %r" % data)
    ev = terminal_events(s.snapshot(), j["run_id"])[0]
    waited = ev.at - t_post
    expect(0.15 <= waited <= 1.5, "queued run failed %.3fs after its POST (queue timeout 0.2s)" % waited)
    eq([e.type for e in run_events(s.snapshot(), j["run_id"])], ["run.queued", "run.failed"], "run events")
    eq(demo_call(d, "waiter"), [], "upstream calls of the timed-out queued run")
    st = all_status(d)
    eq((st["running_tasks"], st["queued_tasks"]), (1, 0), "/task-status after the queue timeout")
    eq(task_status(d, "waiter")["status"], "failed", "task-status of the failed run")


@test(valgrind=False)
def test_token_bucket_paces_run_starts(t):
    d = t.daemon("--runs-per-second", "4", "--burst", "2", "--queue-timeout", "5")
    sids = ["tb%d" % i for i in range(4)]
    subs = {sid: subscribe(t, d, sid) for sid in sids}
    posts = [post_run(d, sid, "x !word-delay=0") for sid in sids]
    eq([j["status"] for j, _, _ in posts], ["running", "running", "queued", "queued"],
       "POST statuses under --burst 2")
    eq(subs["tb3"].wait_event("run.queued", 2, run_id=posts[3][0]["run_id"]).json()["position"], 2,
       "position of the fourth run")
    for (j, _, _), sid in zip(posts, sids):
        subs[sid].wait_event("run.started", 3, run_id=j["run_id"])
        terminal(subs[sid], j["run_id"], "run.completed")
    # Paced by the daemon's own clock (its log's ts), not by when this busy
    # client happened to read the events.
    last = posts[3][0]["run_id"]
    d.wait_log(lambda r: r.get("event") == "run.started" and r.get("run") == last, 3,
               "run.started log line of the fourth run")

    def log_ts(event):
        ts = {r["run"]: r["ts"] for r in d.logs() if r.get("event") == event}
        return [ts[j["run_id"]] for j, _, _ in posts]
    registered, started = log_ts("run.registered"), log_ts("run.started")
    # The second POST took the last token; the next one needs 0.25s.
    after_second = started[2] - registered[1]
    expect(after_second >= 0.15,
           "third run started %.3fs after the second was registered (a token takes 0.25s)" % after_second)
    expect(started[2] - registered[2] <= 1.0,
           "third run started %.3fs after it was registered" % (started[2] - registered[2]))
    gap = started[3] - started[2]
    expect(0.15 <= gap <= 1.0, "fourth run started %.3fs after the third (rate 4/s)" % gap)


# ---------------------------------------------------------------- timeouts

@test(valgrind=False)
def test_first_event_timeout_ends_silent_runs_and_closes_their_calls(t):
    d = t.daemon("--first-event-timeout", "0.3", "--idle-timeout", "10")
    runs = {}
    for sid, msg in (("slowfirst", "!first=5s"), ("hung", "!hang")):
        s = subscribe(t, d, sid)
        j, _, t_post = post_run(d, sid, msg)
        runs[sid] = (s, j["run_id"], t_post)
    for sid, (s, rid, t_post) in runs.items():
        data = terminal(s, rid, "run.timed_out", 3)
        eq(data, {"run_id": rid, "phase": "first_event"}, "%s run.timed_out" % sid)
        took = terminal_events(s.snapshot(), rid)[0].at - t_post
        expect(0.25 <= took <= 2.0, "%s timed out %.3fs after its POST (timeout 0.3s)" % (sid, took))
        eq(agent_count(s), 0, "%s agent events" % sid)
        wait_until(calls_in_state(d, sid, "client_gone"), 3, "%s upstream call client_gone" % sid)
        eq(task_status(d, sid)["status"], "timed_out", "%s task-status" % sid)


@test(valgrind=False)
def test_idle_timeout_ends_a_run_whose_upstream_goes_quiet(t):
    d = t.daemon("--idle-timeout", "0.3", "--first-event-timeout", "10")
    s = subscribe(t, d, "idle")
    j, _, _ = post_run(d, "idle", "a b c !word-delay=2s")
    rid = j["run_id"]
    wait_first_agent_event(s, rid)
    data = terminal(s, rid, "run.timed_out", 3)
    eq(data, {"run_id": rid, "phase": "idle"}, "run.timed_out")
    evs = run_events(s.snapshot(), rid)
    eq([e.type for e in evs], ["run.started", "agent.event", "run.timed_out"], "run events")
    quiet = evs[2].at - evs[1].at
    expect(0.25 <= quiet <= 1.5, "timed out %.3fs after the last event (idle timeout 0.3s)" % quiet)
    wait_until(calls_in_state(d, "idle", "client_gone"), 3, "upstream call client_gone")


@test(valgrind=False)
def test_run_timeout_ends_a_long_run_with_phase_total(t):
    d = t.daemon("--run-timeout", "0.5", "--idle-timeout", "10", "--first-event-timeout", "10")
    s = subscribe(t, d, "long")
    j, _, t_post = post_run(d, "long", "!events=100 !rate=20")
    rid = j["run_id"]
    data = terminal(s, rid, "run.timed_out", 3)
    eq(data, {"run_id": rid, "phase": "total"}, "run.timed_out")
    took = terminal_events(s.snapshot(), rid)[0].at - t_post
    expect(0.4 <= took <= 2.0, "timed out %.3fs after the POST (run timeout 0.5s)" % took)
    n = agent_count(s)
    expect(3 <= n < 100, "agent events before the run timeout: %d" % n)
    wait_until(calls_in_state(d, "long", "client_gone"), 3, "upstream call client_gone")
    eq(task_status(d, "long")["events"], n, "task-status events")


@test(valgrind=False)
def test_connect_timeout_against_a_full_accept_queue(t):
    # A listener that never accepts, with its backlog filled, drops new SYNs:
    # connecting to it hangs, on loopback.
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.closers.append(lst.close)
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    port = lst.getsockname()[1]
    fillers = []
    for _ in range(8):
        f = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.closers.append(f.close)
        f.settimeout(0.2)
        try:
            f.connect(("127.0.0.1", port))
            fillers.append(f)
        except OSError:
            break
    else:
        fail("the accept queue never filled up; cannot provoke a connect timeout")
    d = t.daemon("--connect-timeout", "0.2", "--max-concurrent-runs", "1",
                 upstream="http://127.0.0.1:%d" % port)
    s = subscribe(t, d, "noconn")
    for i in range(2):
        j, _, t_post = post_run(d, "noconn", "try %d" % i)
        eq(j["status"], "running", "POST %d status (a timed-out run must give its slot back)" % i)
        data = terminal(s, j["run_id"], "run.timed_out", 3)
        eq(data, {"run_id": j["run_id"], "phase": "connect"}, "run.timed_out")
        took = terminal_events(s.snapshot(), j["run_id"])[0].at - t_post
        expect(0.15 <= took <= 2.0, "connect timed out after %.3fs (timeout 0.2s)" % took)
    st = all_status(d)
    eq((st["running_tasks"], st["queued_tasks"]), (0, 0), "/task-status after")
    eq(scrape(d).get("runcast_upstream_errors_total", kind="timeout"), 2, "upstream timeout errors")


# ---------------------------------------------------------------- upstream faults

@test()
def test_429_twice_is_retried_and_the_run_completes(t):
    d = t.daemon("--retry-backoff", "0.05")
    s = subscribe(t, d, "r429")
    j, _, _ = post_run(d, "r429", "again !status=429x2")
    data = terminal(s, j["run_id"], "run.completed")
    eq(data["events"], 3, "run.completed events (Echo:, again, aggregated)")
    calls = demo_call(d, "r429")
    eq([(c["status"], c["text"]) for c in calls], [(429, "again !status=429x2")] * 2 + [(200, "again !status=429x2")],
       "upstream calls (status, text)")
    eq([e.type for e in run_events(s.snapshot(), j["run_id"])],
       ["run.started"] + ["agent.event"] * 3 + ["run.completed"], "run events (retries are invisible)")
    m = scrape(d)
    eq(m.get("runcast_upstream_errors_total", kind="rate_limited"), 2, "rate_limited upstream errors")
    eq(m.get("runcast_runs_total", outcome="completed"), 1, "completed runs")


@test()
def test_503_forever_fails_rate_limited_after_exactly_the_retries(t):
    d = t.daemon("--upstream-retries", "2", "--retry-backoff", "0.02")
    s = subscribe(t, d, "r503")
    j, _, _ = post_run(d, "r503", "x !status=503")
    data = terminal(s, j["run_id"], "run.failed")
    eq((data["code"], data.get("status")), ("rate_limited", 503), "run.failed code and status")
    expect(isinstance(data.get("message"), str) and data["message"], "message: %r" % data)
    eq([c["status"] for c in demo_call(d, "r503")], [503, 503, 503], "upstream calls")
    eq(scrape(d).get("runcast_upstream_errors_total", kind="rate_limited"), 3,
       "rate_limited upstream errors (every 503 counts)")


@test()
def test_retry_after_is_honoured(t):
    d = t.daemon("--retry-backoff", "0.01")
    s = subscribe(t, d, "rafter")
    j, _, _ = post_run(d, "rafter", "later !status=429x1 !retry-after=1")
    terminal(s, j["run_id"], "run.completed", 5)
    calls = demo_call(d, "rafter")
    eq([c["status"] for c in calls], [429, 200], "upstream call statuses")
    gap = (calls[1]["received_at_us"] - calls[0]["received_at_us"]) / 1e6
    expect(gap >= 0.9, "retry came %.3fs after a 429 with Retry-After: 1" % gap)
    expect(gap <= 3.0 * TIME_SCALE, "retry came %.3fs after a 429 with Retry-After: 1" % gap)


@test()
def test_upstream_500_message_carries_an_excerpt_of_the_body(t):
    d = t.daemon()
    s = subscribe(t, d, "e500")
    j, _, _ = post_run(d, "e500", "x !status=500")
    data = terminal(s, j["run_id"], "run.failed")
    eq((data["code"], data.get("status")), ("upstream_http", 500), "run.failed code and status")
    expect("demo status 500" in data.get("message", ""), "message lacks the body excerpt: %r" % data)
    eq(len(demo_call(d, "e500")), 1, "upstream calls (a 500 is not retried)")


@test()
def test_protocol_faults_fail_the_run_with_upstream_protocol(t):
    d = t.daemon()
    cases = {
        "malformed": "one two !malformed",
        "cut": "one two three !cut !word-delay=0",
        "ctype": "one !ctype=text/plain",
    }
    subs, rids = {}, {}
    for sid, msg in cases.items():
        subs[sid] = subscribe(t, d, sid)
        rids[sid] = post_run(d, sid, msg)[0]["run_id"]
    for sid in cases:
        s, rid = subs[sid], rids[sid]
        data = terminal(s, rid, "run.failed")
        eq(data["code"], "upstream_protocol", "%s: run.failed code" % sid)
        expect(isinstance(data.get("message"), str) and data["message"], "%s: message %r" % (sid, data))
        for e in run_events(s.snapshot(), rid):
            expect("not json" not in e.data, "%s: malformed bytes relayed: %r" % (sid, e))
            if e.type == "agent.event":
                expect(isinstance(e.json(), dict), "%s: agent.event not an object" % sid)
    # !malformed: the first event, then the bad frame; !cut: the first frame
    # only; !ctype: nothing is relayed from a non-SSE body.
    eq(agent_count(subs["malformed"]), 1, "malformed: agent events relayed")
    eq(agent_count(subs["cut"]), 1, "cut: agent events relayed")
    eq(agent_count(subs["ctype"]), 0, "ctype: agent events relayed")
    eq(scrape(d).get("runcast_upstream_errors_total", kind="protocol"), 3, "protocol upstream errors")
    for sid in cases:
        eq(task_status(d, sid)["status"], "failed", "%s task-status" % sid)


# ---------------------------------------------------------------- metrics

@test(timeout=30, valgrind=False)
def test_metrics_count_a_scripted_sequence_exactly(t):
    d = t.daemon("--first-event-timeout", "0.5", "--idle-timeout", "10", "--retry-backoff", "0.02")
    m0 = scrape(d)
    for name in ("runcast_task_execution_delay_seconds", "runcast_time_to_first_event_seconds",
                 "runcast_run_duration_seconds"):
        eq(m0.histogram(name), (0, 0), "%s before any run" % name)
    eq(m0.types.get("runcast_runs_total"), "counter", "TYPE runcast_runs_total")
    for g in ("runcast_runs_active", "runcast_runs_queued", "runcast_sessions", "runcast_subscribers"):
        eq(m0.types.get(g), "gauge", "TYPE %s" % g)
        eq(m0.get(g), 0, "%s before any run" % g)
    eq(m0.labelled("runcast_runs_total", "outcome"),
       {k: 0 for k in ("completed", "failed", "cancelled", "timed_out", "superseded")}, "runs_total at start")

    sids = ["c1", "c2", "s1", "k1", "f1", "t1", "r1", "e1", "p1"]
    subs = {sid: subscribe(t, d, sid) for sid in sids}
    posts = 0

    def post(sid, msg):
        nonlocal posts
        posts += 1
        return post_run(d, sid, msg)[0]["run_id"]

    # 2 completed
    for sid in ("c1", "c2"):
        terminal(subs[sid], post(sid, "one two !word-delay=0"), "run.completed")
    # 2 superseded, then 1 completed; each superseded run got an event first,
    # so its request was surely sent
    a = post("s1", "!events=1000 !rate=20")
    wait_first_agent_event(subs["s1"], a)
    b = post("s1", "!events=1000 !rate=20")
    wait_first_agent_event(subs["s1"], b)
    c = post("s1", "three !word-delay=0")
    terminal(subs["s1"], a, "run.superseded")
    terminal(subs["s1"], b, "run.superseded")
    terminal(subs["s1"], c, "run.completed")
    # 1 cancelled
    k = post("k1", "!events=1000 !rate=20")
    wait_first_agent_event(subs["k1"], k)
    eq(d.delete(spath("k1") + "/run").status, 200, "DELETE k1 run")
    terminal(subs["k1"], k, "run.cancelled")
    # failed: http 500, agent error, protocol
    terminal(subs["f1"], post("f1", "!status=500"), "run.failed")
    terminal(subs["e1"], post("e1", "bad !error=boom !word-delay=0"), "run.failed")
    terminal(subs["p1"], post("p1", "!malformed"), "run.failed")
    # timed out (first_event)
    terminal(subs["t1"], post("t1", "!first=5s"), "run.timed_out", 3)
    # completed after two 429s
    terminal(subs["r1"], post("r1", "again !status=429x2"), "run.completed")
    # deliberate 404s and a 400
    task_status(d, "nope1", expect_status=404)
    task_status(d, "nope2", expect_status=404)
    r = d.post_json(spath("bad") + "/run", [1, 2])
    eq(r.status, 400, "non-object body")

    m = scrape(d)
    eq(m.labelled("runcast_runs_total", "outcome"),
       {"completed": 4, "failed": 3, "cancelled": 1, "timed_out": 1, "superseded": 2}, "runs_total")
    eq(m.labelled("runcast_upstream_errors_total", "kind"),
       {"unreachable": 0, "http": 1, "rate_limited": 2, "agent_error": 1, "protocol": 1, "timeout": 1},
       "upstream_errors_total")
    seen = sum(agent_count(s) for s in subs.values())
    # c1, c2: Echo: one two + aggregate; s1 C: 3; e1: 2 partials; p1: 1;
    # r1: 3; the superseded and cancelled runs: at least one each.
    expect(seen >= 4 + 4 + 3 + 2 + 1 + 3 + 3, "agent events seen: %d" % seen)
    eq(m.get("runcast_events_total"), seen, "events_total vs agent.event frames seen by subscribers")
    eq(m.histogram("runcast_task_execution_delay_seconds")[0], 11,
       "task_execution_delay count (every run sent its request)")
    eq(m.histogram("runcast_time_to_first_event_seconds")[0], 9,
       "time_to_first_event count (all runs but the 500 and the timed-out one)")
    eq(m.histogram("runcast_run_duration_seconds")[0], 11, "run_duration count (runs ended)")
    dur_sum = m.histogram("runcast_run_duration_seconds")[1]
    expect(dur_sum >= 0.5, "run_duration sum %.3f < the 0.5s timed-out run alone" % dur_sum)
    codes = m.labelled("runcast_http_requests_total", "code")
    eq(codes.get("202"), posts, "http_requests_total{code=202} vs POSTs")
    eq(codes.get("404"), 2, "http_requests_total{code=404}")
    eq(codes.get("400"), 1, "http_requests_total{code=400}")
    for g, want in (("runcast_runs_active", 0), ("runcast_runs_queued", 0),
                    ("runcast_sessions", len(sids)), ("runcast_subscribers", len(sids))):
        eq(m.get(g), want, g)
    eq(m.labelled("runcast_subscribers_dropped_total", "reason"), {"slow": 0, "lagged": 0},
       "subscribers_dropped_total")

    # Exactly one more 200 between two scrapes: the first scrape itself; the
    # demo agent's own answers (/debug/calls) are not runcast's requests.
    demo_call(d, "c1")
    m2 = scrape(d)
    eq(m2.get("runcast_http_requests_total", code="200"), codes["200"] + 1,
       "http_requests_total{code=200} after one more scrape")

    # Gauges follow live state: one hanging run, one subscriber fewer.
    subs["c1"].close()
    post("c2", "!hang")
    m3 = wait_until(lambda: (lambda x: x if x.get("runcast_subscribers") == len(sids) - 1 else None)(scrape(d)),
                    3, "subscribers gauge after a stream closed")
    eq((m3.get("runcast_runs_active"), m3.get("runcast_runs_queued")), (1, 0), "runs_active, runs_queued")
    eq(m3.get("runcast_http_requests_total", code="202"), posts, "202s after one more POST")


# ---------------------------------------------------------------- logs

DELAY_ALERT = "%g" % (0.25 * TIME_SCALE)
HOLD_SLOT = "!events=%d !rate=10" % (6 * TIME_SCALE)


def check_run_logs(recs, sid, rid, queued):
    """The run's log lines: registered, [queued], started, first_event, ended."""
    mine = [r for r in recs if r.get("run") == rid]
    for r in mine:
        eq(r.get("session"), sid, "session field of %s" % r.get("event"))
    events = [r.get("event") for r in mine if r.get("event") != "run.start_delayed"]
    want = ["run.registered"] + (["run.queued"] if queued else []) + \
        ["run.started", "run.first_event", "run.ended"]
    eq(events, want, "log events of run %s" % rid)
    ended = [r for r in mine if r.get("event") == "run.ended"][0]
    eq(ended.get("outcome"), "completed", "run.ended outcome")
    expect(re.fullmatch(r"\d+(\.\d+)?", str(ended.get("duration_ms"))) is not None,
           "run.ended duration_ms: %r" % ended)
    for r in mine:
        if r.get("event") != "run.start_delayed":
            eq(r.get("level"), "info", "level of %s" % r.get("event"))
    return mine


@test()
def test_json_logs_trace_each_run_step_and_warn_on_delayed_start(t):
    # The first run holds the only slot for ~0.5s; the second one's start
    # delay passes the alert, the first one's (session creation) does not.
    d = t.daemon("--max-concurrent-runs", "1", "--delay-alert", DELAY_ALERT)
    s1, s2 = subscribe(t, d, "log1"), subscribe(t, d, "log2")
    j1, _, _ = post_run(d, "log1", HOLD_SLOT)
    j2, _, _ = post_run(d, "log2", "b !word-delay=0")
    eq(j2["status"], "queued", "second POST status")
    terminal(s1, j1["run_id"], "run.completed")
    terminal(s2, j2["run_id"], "run.completed")
    d.wait_log(lambda r: r.get("event") == "run.ended" and r.get("run") == j2["run_id"], 3,
               "run.ended of the second run")
    with d.cond:
        lines = list(d.lines)
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            fail("stderr line is not JSON: %r" % line)
        expect(isinstance(obj, dict) and isinstance(obj.get("event"), str) and obj.get("level"),
               "JSON log line lacks event/level: %r" % line)
    recs = d.logs()
    check_run_logs(recs, "log1", j1["run_id"], queued=False)
    mine = check_run_logs(recs, "log2", j2["run_id"], queued=True)
    q = [r for r in mine if r["event"] == "run.queued"][0]
    eq(str(q.get("position")), "1", "run.queued position")
    delayed = [r for r in recs if r.get("event") == "run.start_delayed"]
    eq([r.get("run") for r in delayed], [j2["run_id"]], "runs with run.start_delayed")
    eq(delayed[0].get("level"), "warn", "run.start_delayed level")
    eq(delayed[0].get("session"), "log2", "run.start_delayed session")
    expect(float(delayed[0].get("delay_ms")) >= float(DELAY_ALERT) * 1000,
           "start_delayed delay_ms: %r" % delayed[0])


@test()
def test_log_lines_stay_whole_with_odd_characters_in_the_upstream_url(t):
    odd = 'http://127.0.0.1:1/p"q\\r\nx\ty\u00e9\u2603\x01z'
    for fmt in ("json", "text"):
        d = Daemon(t, ("--log-format", fmt), upstream=odd)
        s = subscribe(t, d, "odd")
        j, _, _ = post_run(d, "odd", "hello")
        s.wait_for(lambda evs: terminal_events(evs, j["run_id"]), 5, "terminal event")
        eq(terminal_events(s.snapshot(), j["run_id"])[0].type, "run.failed", "%s: terminal event" % fmt)
        d.wait_log(lambda r: r.get("event") == "run.ended", 3, "run.ended")
        problems = d.stop()
        if problems:
            fail("; ".join(problems))
        with d.cond:
            lines = list(d.lines)
        for line in lines:
            if fmt == "json":
                try:
                    obj = json.loads(line)
                except ValueError:
                    fail("json: stderr line is not JSON: %r" % line)
                expect(isinstance(obj, dict), "json: line is not an object: %r" % line)
            else:
                expect(re.match(r"ts=\S+ level=(debug|info|warn|error) event=\S+", line) is not None,
                       "text: line is not logfmt (split by a raw newline?): %r" % line)
        lst = [r for r in d.logs() if r.get("event") == "listening"]
        eq(len(lst), 1, "%s: listening lines" % fmt)
        eq(lst[0].get("upstream"), odd, "%s: upstream field round trip" % fmt)


@test()
def test_text_log_format_and_warn_level(t):
    d = t.daemon("--log-format", "text")
    j, _, _ = post_run(d, "txt", "hi !word-delay=0")
    wait_until(lambda: task_status(d, "txt")["status"] == "completed", 3, "run completed")
    rec = d.wait_log(lambda r: r.get("event") == "run.ended", 3, "run.ended (logfmt)")
    eq((rec.get("session"), rec.get("run"), rec.get("outcome")), ("txt", j["run_id"], "completed"),
       "run.ended fields")
    with d.cond:
        lines = list(d.lines)
    for line in lines:
        expect(re.match(r"ts=\d+(\.\d+)? level=(debug|info|warn|error) event=\S+( |$)", line) is not None,
               "not a logfmt line: %r" % line)

    # --log-level warn: no info line, but the start-delay warning is there.
    d2 = Daemon(t, ("--log-level", "warn", "--max-concurrent-runs", "1", "--delay-alert", DELAY_ALERT),
                port=free_port())
    post_run(d2, "w1", HOLD_SLOT)
    j2, _, _ = post_run(d2, "w2", "b !word-delay=0")
    eq(j2["status"], "queued", "second POST status")
    rec = d2.wait_log(lambda r: r.get("event") == "run.start_delayed", 5, "run.start_delayed")
    eq((rec.get("level"), rec.get("run")), ("warn", j2["run_id"]), "run.start_delayed level and run")
    wait_until(lambda: task_status(d2, "w2")["status"] == "completed", 3, "second run completed")
    recs = d2.logs()
    eq([r for r in recs if r.get("level") in ("info", "debug")], [], "info/debug lines under --log-level warn")


# ---------------------------------------------------------------- session expiry

@test(valgrind=False)
def test_session_ttl_expires_idle_sessions_and_keeps_subscribed_ones(t):
    ttl = 0.3
    d = t.daemon("--session-ttl", "0.3", "--heartbeat", "0.1")
    kept = subscribe(t, d, "kept")

    def listed():
        # /task-status does not touch sessions (a session's own task-status does)
        return {x["session_id"]: x for x in all_status(d, "?all=1")["sessions"]}

    post_run(d, "idle", "a !word-delay=0")
    jh, _, _ = post_run(d, "hanger", "!hang")
    wait_until(calls_in_state(d, "hanger", "streaming"), 3, "hanging call streaming")
    done = wait_until(lambda: listed().get("idle", {}).get("status") == "completed" and time.monotonic(),
                      3, "idle session's run completed")
    gone = wait_until(lambda: "idle" not in listed() and time.monotonic(), 3, "idle session expired")
    expect(gone - done >= ttl * 0.6, "idle session expired %.3fs after its run ended (ttl %.1fs)"
           % (gone - done, ttl))
    wait_until(lambda: "hanger" not in listed(), 3, "session with a hanging run expired")
    task_status(d, "idle", expect_status=404)
    task_status(d, "hanger", expect_status=404)
    wait_until(calls_in_state(d, "hanger", "client_gone"), 3, "expired run's upstream call closed")
    m = scrape(d)
    eq(m.labelled("runcast_runs_total", "outcome")["cancelled"], 1, "cancelled runs (the expired one)")
    eq(m.labelled("runcast_runs_total", "outcome")["completed"], 1, "completed runs")
    eq((m.get("runcast_runs_active"), m.get("runcast_sessions")), (0, 1), "runs_active, sessions")
    ended = d.wait_log(lambda r: r.get("event") == "run.ended" and r.get("run") == jh["run_id"], 3,
                       "run.ended of the expired run")
    eq(ended.get("outcome"), "cancelled", "outcome of the expired run")
    closed = [r for r in d.logs() if r.get("event") == "session.closed" and r.get("session") == "hanger"]
    eq([r.get("reason") for r in closed], ["session_expired"], "session.closed log of the hanger session")

    # The subscribed, quiet session survives 5 TTLs; the server answers fast.
    t_end = time.monotonic() + 5 * ttl
    worst = 0.0
    while time.monotonic() < t_end:
        t0 = time.monotonic()
        d.healthy()
        worst = max(worst, time.monotonic() - t0)
        expect("kept" in listed(), "subscribed session expired")
        time.sleep(0.05)
    expect(worst < 1.0, "slowest /healthz answer %.3fs" % worst)
    expect(len(kept.comments) >= 3, "keepalive comments on the quiet stream: %r" % kept.comments)
    expect(not kept.eof, "the quiet stream ended")
    eq(task_status(d, "kept")["subscribers"], 1, "subscribers of the kept session")


@test()
def test_an_expiring_session_takes_its_queued_run_out_of_the_queue(t):
    d = t.daemon("--max-concurrent-runs", "1", "--session-ttl", "0.3")
    subscribe(t, d, "holder")  # a subscriber keeps this one alive
    post_run(d, "holder", "!hang")
    j, _, _ = post_run(d, "queued", "x")
    eq(j["status"], "queued", "POST status")
    wait_until(lambda: "queued" not in [x["session_id"] for x in all_status(d, "?all=1")["sessions"]],
               3, "session with a queued run expired")
    st = all_status(d)
    eq((st["total_tasks"], st["running_tasks"], st["queued_tasks"]), (1, 1, 0), "/task-status after expiry")
    m = scrape(d)
    eq((m.get("runcast_runs_queued"), m.get("runcast_runs_active")), (0, 1), "runs_queued, runs_active")
    eq(m.labelled("runcast_runs_total", "outcome")["cancelled"], 1, "cancelled runs")
    eq(demo_call(d, "queued"), [], "upstream calls of the expired queued run")


# ---------------------------------------------------------------- configuration

@test()
def test_bad_configuration_exits_2_naming_the_flag_or_variable(t):
    bad = [("--run-timeout", "abc"), ("--max-concurrent-runs", "abc"), ("--max-body", "12q"),
           ("--log-format", "xml"), ("--upstream", "ftp://x")]
    for flag, value in bad:
        rc, out, err = run_cli(["--listen", "127.0.0.1:0", flag, value])
        eq(rc, 2, "exit status for %s %s (stderr %r)" % (flag, value, err))
        lines = err.strip("\n").split("\n")
        eq(len(lines), 1, "stderr lines for %s %s: %r" % (flag, value, err))
        expect(flag in lines[0], "stderr does not name %s: %r" % (flag, err))
        var = "RUNCAST_" + flag[2:].upper().replace("-", "_")
        rc, out, err = run_cli(["--listen", "127.0.0.1:0"], env={var: value})
        eq(rc, 2, "exit status for %s=%s (stderr %r)" % (var, value, err))
        lines = err.strip("\n").split("\n")
        eq(len(lines), 1, "stderr lines for %s=%s: %r" % (var, value, err))
        expect(var in lines[0], "stderr does not name %s: %r" % (var, err))
    rc, out, err = run_cli(["--no-such-flag"])
    eq(rc, 2, "exit status for an unknown flag")
    eq(len(err.strip("\n").split("\n")), 1, "stderr lines for an unknown flag: %r" % err)
    expect("--no-such-flag" in err, "stderr does not name the unknown flag: %r" % err)


@test()
def test_help_lists_every_flag_and_version_prints(t):
    rc, out, err = run_cli(["--help"])
    eq(rc, 0, "--help exit status")
    flags = ["--listen", "--upstream", "--max-concurrent-runs", "--runs-per-second", "--burst",
             "--queue-timeout", "--connect-timeout", "--first-event-timeout", "--idle-timeout",
             "--run-timeout", "--upstream-retries", "--retry-backoff", "--session-ttl", "--history",
             "--history-bytes", "--heartbeat", "--subscriber-buffer", "--max-body", "--max-header",
             "--delay-alert", "--log-format", "--log-level", "--shutdown-grace", "--version"]
    for f in flags:
        expect(re.search(r"(^|\s)%s(\s|=|$)" % re.escape(f), out, re.M) is not None,
               "--help does not list %s" % f)
        if f != "--version":
            var = "RUNCAST_" + f[2:].upper().replace("-", "_")
            expect(var in out, "--help does not name %s" % var)
    rc, out, err = run_cli(["--version"])
    eq((rc, out.strip()), (0, "runcast 0.1.0"), "--version")


# ---------------------------------------------------------------- shutdown

@test(timeout=30, valgrind=False)
def test_sigterm_drains_finishes_short_runs_and_cancels_the_rest(t):
    d = t.daemon("--shutdown-grace", "2")
    h1, h2 = subscribe(t, d, "hang"), subscribe(t, d, "hang")
    fs = subscribe(t, d, "fin")
    jh, _, _ = post_run(d, "hang", "!hang")
    h1.wait_event("run.started", 3, run_id=jh["run_id"])
    h2.wait_event("run.started", 3, run_id=jh["run_id"])
    jf, _, _ = post_run(d, "fin", "!events=8 !rate=10")
    wait_first_agent_event(fs, jf["run_id"])
    c = t.conn(d)
    c.send(build_request("GET", "/readyz"))
    r = c.read_response()
    eq((r.status, r.json()), (200, {"status": "ready"}), "/readyz before the signal")

    result = {}
    stopper = threading.Thread(target=lambda: result.update(problems=d.stop(timeout=8)), daemon=True)
    t_sig = time.monotonic()
    stopper.start()

    def draining():
        c.send(build_request("GET", "/readyz"))
        resp = c.read_response()
        return resp.status == 503 and resp
    r = wait_until(draining, 2, "/readyz 503 on a kept-alive connection")
    eq(r.json(), {"status": "draining"}, "/readyz body while draining")
    c.send(build_request("POST", spath("late") + "/run", json.dumps({"message": "too late"}).encode(),
                         {"Content-Type": "application/json"}))
    check_error(c.read_response(), 503, "POST while draining", code="draining")
    refused = False
    try:
        probe = socket.create_connection(("127.0.0.1", d.port), timeout=1)
        probe.close()
    except OSError:
        refused = True
    expect(refused, "a new connection was accepted while draining")

    # The short run finishes normally inside the grace period.
    data = terminal(fs, jf["run_id"], "run.completed", 3)
    eq(data["events"], 8, "run.completed events of the short run")
    eq(agent_count(fs), 8, "agent events of the short run")
    # The hanging one is cancelled when the grace period ends.
    for s in (h1, h2):
        data = terminal(s, jh["run_id"], "run.cancelled", 5)
        eq(data["reason"], "shutdown", "run.cancelled reason")
    waited = terminal_events(h1.snapshot(), jh["run_id"])[0].at - t_sig
    expect(waited >= 1.7, "hanging run cancelled %.3fs after SIGTERM (grace 2s)" % waited)
    for name, s, last in (("h1", h1, "run.cancelled"), ("h2", h2, "run.cancelled"), ("fin", fs, "run.completed")):
        s.wait_eof(3)
        eq(s.snapshot()[-1].type, last, "%s: last event before EOF" % name)
    stopper.join(10)
    expect(not stopper.is_alive(), "Daemon.stop did not return")
    if result.get("problems"):
        fail("; ".join(result["problems"]))
    eq(d.proc.returncode, 0, "exit status")


# ---------------------------------------------------------------- slots

@test(timeout=30, valgrind=False)
def test_a_slot_is_released_exactly_once_on_every_path(t):
    d = t.daemon("--max-concurrent-runs", "2", "--first-event-timeout", "0.3", "--idle-timeout", "10",
                 "--queue-timeout", "0.3", "--upstream-retries", "1", "--retry-backoff", "0.02")
    outcomes = collections.Counter()
    sent = 0
    subs = {}

    def sub(sid):
        if sid not in subs:
            subs[sid] = subscribe(t, d, sid)
        return subs[sid]

    def run(sid, msg, status="running"):
        s = sub(sid)
        j, _, _ = post_run(d, sid, msg)
        eq(j["status"], status, "POST %s %r status (a leaked slot would queue it)" % (sid, msg))
        return s, j["run_id"]

    def ends(sid, rid, type_, timeout=5, **want):
        data = terminal(subs[sid], rid, type_, timeout)
        for k, v in want.items():
            eq(data.get(k), v, "%s %s %s" % (sid, type_, k))
        outcomes[type_.split(".")[1]] += 1

    s, rid = run("p-done", "a !word-delay=0")
    ends("p-done", rid, "run.completed")
    sent += 1
    s, rid = run("p-500", "!status=500")
    ends("p-500", rid, "run.failed", code="upstream_http")
    sent += 1
    s, rid = run("p-503", "x !status=503")
    ends("p-503", rid, "run.failed", code="rate_limited")
    sent += 1
    s, rid = run("p-cancel", "!events=100 !rate=5")
    wait_first_agent_event(s, rid)
    eq(d.delete(spath("p-cancel") + "/run").status, 200, "DELETE p-cancel")
    ends("p-cancel", rid, "run.cancelled")
    sent += 1
    s, rid = run("p-timeout", "!hang")
    ends("p-timeout", rid, "run.timed_out", phase="first_event")
    sent += 1
    s, rid = run("p-super", "!events=100 !rate=5")
    wait_first_agent_event(s, rid)
    s, rid2 = run("p-super", "b !word-delay=0")
    ends("p-super", rid, "run.superseded")
    ends("p-super", rid2, "run.completed")
    sent += 2
    s, rid = run("p-malformed", "!malformed")
    ends("p-malformed", rid, "run.failed", code="upstream_protocol")
    s, rid = run("p-cut", "a b c !cut !word-delay=0")
    ends("p-cut", rid, "run.failed", code="upstream_protocol")
    sent += 2

    # Queue paths: both slots busy.
    s, h1 = run("p-hold1", "!events=100 !rate=5")
    s, h2 = run("p-hold2", "!events=100 !rate=5")
    wait_first_agent_event(subs["p-hold1"], h1)
    wait_first_agent_event(subs["p-hold2"], h2)
    sent += 2
    s, q = run("p-qtimeout", "x", status="queued")
    ends("p-qtimeout", q, "run.failed", code="rate_limited")
    s, q = run("p-qcancel", "x", status="queued")
    eq(d.delete(spath("p-qcancel") + "/run").status, 200, "DELETE of a queued run")
    ends("p-qcancel", q, "run.cancelled")
    s, qa = run("p-qsuper", "x", status="queued")
    s, qb = run("p-qsuper", "y", status="queued")
    ends("p-qsuper", qa, "run.superseded")
    st = all_status(d)
    eq((st["running_tasks"], st["queued_tasks"]), (2, 1), "/task-status with one queued run")
    eq(d.delete(spath("p-qsuper") + "/run").status, 200, "DELETE of the queued replacement")
    ends("p-qsuper", qb, "run.cancelled")
    s, q = run("p-qdelete", "x", status="queued")
    r = d.delete(spath("p-qdelete"))
    expect(r.status in (200, 204), "DELETE session with a queued run: %r" % r)
    ends("p-qdelete", q, "run.cancelled", reason="session_deleted")
    subs["p-qdelete"].wait_eof(3)
    for sid, rid in (("p-hold1", h1), ("p-hold2", h2)):
        eq(d.delete(spath(sid) + "/run").status, 200, "DELETE %s" % sid)
        ends(sid, rid, "run.cancelled")

    st = all_status(d)
    eq((st["total_tasks"], st["running_tasks"], st["queued_tasks"]), (0, 0, 0), "/task-status after every path")
    m = scrape(d)
    eq((m.get("runcast_runs_active"), m.get("runcast_runs_queued")), (0, 0), "runs_active, runs_queued")
    want = {k: outcomes.get(k, 0) for k in ("completed", "failed", "cancelled", "timed_out", "superseded")}
    eq(m.labelled("runcast_runs_total", "outcome"), want, "runs_total")
    eq(m.histogram("runcast_task_execution_delay_seconds")[0], sent,
       "task_execution_delay count (queued runs that never started are not in it)")
    eq(m.histogram("runcast_run_duration_seconds")[0], sum(want.values()), "run_duration count")

    # Two slots free: two new runs start at once, a third waits.
    run("n1", "!hang")
    run("n2", "!hang")
    run("n3", "!hang", status="queued")
    st = all_status(d)
    eq((st["running_tasks"], st["queued_tasks"]), (2, 1), "/task-status with fresh runs")


@test()
def test_unreachable_upstream_releases_its_slot(t):
    d = t.daemon("--max-concurrent-runs", "1", upstream="http://127.0.0.1:1")
    s = subscribe(t, d, "unreach")
    for i in range(3):
        j, _, _ = post_run(d, "unreach", "try %d" % i)
        eq(j["status"], "running", "POST %d status" % i)
        eq(terminal(s, j["run_id"], "run.failed")["code"], "upstream_unreachable", "run.failed code")
    st = all_status(d)
    eq((st["running_tasks"], st["queued_tasks"]), (0, 0), "/task-status after")
    m = scrape(d)
    eq(m.get("runcast_upstream_errors_total", kind="unreachable"), 3, "unreachable upstream errors")
    eq(m.histogram("runcast_time_to_first_event_seconds")[0], 0, "time_to_first_event count")


# ---------------------------------------------------------------- more limiter and shutdown paths

@test()
def test_superseding_under_a_full_limiter_gives_the_slot_to_the_oldest_waiter(t):
    d = t.daemon("--max-concurrent-runs", "1")
    sa, sb = subscribe(t, d, "fa"), subscribe(t, d, "fb")
    ja, _, _ = post_run(d, "fa", "!hang")
    jb, _, _ = post_run(d, "fb", "b !word-delay=0")
    eq((ja["status"], jb["status"]), ("running", "queued"), "POST statuses")
    wait_until(calls_in_state(d, "fa", "streaming"), 3, "fa's first call streaming")
    ja2, _, _ = post_run(d, "fa", "a2 !word-delay=0")
    # The superseded run gives its slot back before its successor asks for
    # one, so the run that waited longer (fb) gets it; fa's new run queues.
    eq(ja2["status"], "queued", "status of the replacement")
    eq(terminal(sa, ja["run_id"], "run.superseded")["by"], ja2["run_id"], "superseded by")
    eq(sa.wait_event("run.queued", 2, run_id=ja2["run_id"]).json()["position"], 1, "position")
    terminal(sb, jb["run_id"], "run.completed")
    terminal(sa, ja2["run_id"], "run.completed")
    wait_until(lambda: [c["state"] for c in demo_call(d, "fa")] == ["client_gone", "finished"], 3,
               "fa's calls: the superseded one closed, the new one finished")
    st = all_status(d)
    eq((st["total_tasks"], st["running_tasks"], st["queued_tasks"]), (0, 0, 0), "/task-status at the end")


@test(valgrind=False)
def test_superseding_or_cancelling_during_retry_backoff_stops_the_retries(t):
    d = t.daemon("--max-concurrent-runs", "1", "--retry-backoff", "0.4", "--upstream-retries", "3")
    s = subscribe(t, d, "bo")
    j1, _, _ = post_run(d, "bo", "one !status=429x3")
    wait_until(lambda: [c["status"] for c in demo_call(d, "bo")] == [429], 2, "first 429")
    j2, _, _ = post_run(d, "bo", "two !status=429x3")
    eq(j2["status"], "running", "the replacement takes the slot back at once")
    terminal(s, j1["run_id"], "run.superseded")
    wait_until(lambda: [c["status"] for c in demo_call(d, "bo", "two")] == [429], 2, "second run's 429")
    eq(d.delete(spath("bo") + "/run").status, 200, "DELETE during backoff")
    terminal(s, j2["run_id"], "run.cancelled")
    # Both runs were waiting to retry (0.4s +-20%); no retry may follow.
    t_end = time.monotonic() + 0.8
    while time.monotonic() < t_end:
        eq(len(demo_call(d, "bo")), 2, "upstream calls after superseding/cancelling during backoff")
        time.sleep(0.05)
    st = all_status(d)
    eq((st["running_tasks"], st["queued_tasks"]), (0, 0), "/task-status after")
    j3, _, _ = post_run(d, "bo2", "three !word-delay=0")
    eq(j3["status"], "running", "a new run gets the slot")


@test()
def test_sigterm_with_nothing_active_exits_without_waiting_for_the_grace(t):
    d = t.daemon("--shutdown-grace", "5")
    d.healthy()
    t0 = time.monotonic()
    problems = d.stop(timeout=8)
    took = time.monotonic() - t0
    if problems:
        fail("; ".join(problems))
    expect(took < 1.5 * TIME_SCALE, "idle daemon took %.3fs to exit (grace 5s)" % took)


@test()
def test_shutdown_cancels_queued_runs_without_starting_them(t):
    d = t.daemon("--max-concurrent-runs", "1", "--shutdown-grace", "0.3")
    s1, s2 = subscribe(t, d, "sq1"), subscribe(t, d, "sq2")
    j1, _, _ = post_run(d, "sq1", "!hang")
    j2, _, _ = post_run(d, "sq2", "waits")
    eq(j2["status"], "queued", "second POST status")
    s1.wait_event("run.started", 3, run_id=j1["run_id"])
    problems = d.stop(timeout=8)
    if problems:
        fail("; ".join(problems))
    for s, rid in ((s1, j1["run_id"]), (s2, j2["run_id"])):
        s.wait_eof(3)
        eq(terminal(s, rid, "run.cancelled", 1)["reason"], "shutdown", "run.cancelled reason")
    eq([e.type for e in run_events(s2.snapshot(), j2["run_id"])], ["run.queued", "run.cancelled"],
       "events of the run still queued at shutdown (it must not start)")


# ---------------------------------------------------------------- deleted sessions stay deleted

def _delete_with_stream(t, d, sid):
    """A completed run on a subscribed session, then DELETE: returns the ids
    the stream got (session.closed last) and the monotonic time just before
    the DELETE was sent."""
    from harness import DEFAULT_TIMEOUT
    s = t.sse(d, spath(sid) + "/run")
    s.wait_retry()
    j, _, _ = post_run(d, sid, "hello there")
    s.wait_event("run.completed", run_id=j["run_id"])
    before = time.monotonic()
    r = d.delete(spath(sid))
    eq(r.status, 200, "DELETE session %s" % sid)
    closed = s.wait_event("session.closed")
    s.wait_eof(DEFAULT_TIMEOUT)
    ids = [e.id for e in s.snapshot() if e.has_id]
    eq(ids[-1], closed.id, "the last id the tab has is session.closed's")
    return ids, before


def _reconnect(t, d, sid, last_id, header=True):
    """GET the session's stream with last_id as the Last-Event-ID header or
    ?last_event_id=, as EventSource or the console reconnect. Returns the
    status and the connection, its head read (a 200 stream stays open)."""
    import urllib.parse
    path = spath(sid) + "/run"
    c = t.conn(d)
    if header:
        c.send(build_request("GET", path, None, {"Last-Event-ID": last_id}))
    else:
        c.send(build_request("GET", path + "?last_event_id=" + urllib.parse.quote(last_id)))
    version, status, reason, hdrs = c.read_head()
    if status == 204:
        expect(not any(k.lower() in ("content-length", "transfer-encoding") and v != "0"
                       for k, v in hdrs), "a 204 with a body: %r" % hdrs)
    return status, c


def _reconnect_status(t, d, sid, last_id, header=True):
    status, c = _reconnect(t, d, sid, last_id, header)
    c.close()
    return status


@test(timeout=40, valgrind=False)
def test_a_deleted_session_stays_deleted_for_its_reconnecting_streams(t):
    ttl = 3.0 * TIME_SCALE
    d = t.daemon("--session-ttl", "%gs" % ttl)
    ids, deleted_before = _delete_with_stream(t, d, "gone")
    # EventSource reconnects with its last id (header) or a page with ?last_event_id=
    for last_id in (ids[-1], ids[0], ids[len(ids) // 2]):
        for header in (True, False):
            eq(_reconnect_status(t, d, "gone", last_id, header), 204,
               "stream of the deleted session, id %s header=%s" % (last_id, header))
    task_status(d, "gone", expect_status=404)
    eq(all_status(d, "?all=1")["sessions_total"], 0, "sessions after the 204s")
    # still so later in the TTL
    wait_until(lambda: time.monotonic() - deleted_before >= ttl * 0.6, ttl, "60% of the TTL")
    status = _reconnect_status(t, d, "gone", ids[-1])
    expect(time.monotonic() - deleted_before < ttl, "checked within the TTL (machine too slow)")
    eq(status, 204, "stream of the deleted session at 60% of the TTL")
    task_status(d, "gone", expect_status=404)
    # after the TTL the tombstone is gone: the id is one runcast cannot place,
    # the stream re-creates the session and says so with stream.reset
    first = {}

    def reconnect():
        status, c = _reconnect(t, d, "gone", ids[-1])
        if status == 200:
            first["at"] = time.monotonic()
            first["head"] = c.read_until(b"stream.reset", time.monotonic() + 5)
            return True
        eq(status, 204, "reconnect status while the tombstone lives")
        c.close()
        return False
    wait_until(reconnect, ttl + 5.0, "the tombstone expired", interval=0.1)
    expect(first["at"] - deleted_before >= ttl,
           "the tombstone lived %.2fs, less than the TTL %.2fs" % (first["at"] - deleted_before, ttl))
    eq(task_status(d, "gone")["status"], None, "the re-created session has no run")


@test(timeout=30)
def test_a_post_after_delete_starts_a_new_incarnation_and_old_ids_get_stream_reset(t):
    d = t.daemon()
    ids, _ = _delete_with_stream(t, d, "again")
    eq(_reconnect_status(t, d, "again", ids[-1]), 204, "old id before the new incarnation")
    j, _, _ = post_run(d, "again", "hello once more")
    eq(task_status(d, "again")["run_id"], j["run_id"], "the re-created session's run")
    for header in (True, False):
        status, c = _reconnect(t, d, "again", ids[-1], header)
        eq(status, 200, "old id after the new incarnation (header=%s)" % header)
        c.read_until(b"event: stream.reset\ndata: {\"reason\":\"unknown_event_id\"}\n\n",
                     time.monotonic() + 5)
        head = c.read_until(b"event: run.", time.monotonic() + 5)
        expect(b"id: " in head and ids[-1].split("-")[0].encode() not in head,
               "the new incarnation's ids follow: %r" % head)
        c.close()
    # a GET without an id on a deleted session is a new tab: it creates the session
    ids2, _ = _delete_with_stream(t, d, "again")
    s = t.sse(d, spath("again") + "/run")
    s.wait_retry()
    eq(task_status(d, "again")["status"], None, "a fresh stream re-created the session")
    expect(ids2[-1].split("-")[0] != ids[-1].split("-")[0], "incarnations differ")


@test(timeout=30, memory_only="Redis keeps tombstones as keys with a TTL, not bounded by --max-sessions")
def test_tombstones_are_bounded_by_max_sessions_oldest_forgotten_first(t):
    d = t.daemon("--max-sessions", "2")
    last = {}
    for sid in ("t1", "t2", "t3"):
        ids, _ = _delete_with_stream(t, d, sid)
        last[sid] = ids[-1]
    # two tombstones kept (the newest), t1's was forgotten to make room
    eq(_reconnect_status(t, d, "t3", last["t3"]), 204, "t3's id")
    eq(_reconnect_status(t, d, "t2", last["t2"]), 204, "t2's id")
    status, c = _reconnect(t, d, "t1", last["t1"])
    eq(status, 200, "t1's id once its tombstone made room: a new incarnation")
    c.read_until(b"event: stream.reset\ndata: {\"reason\":\"unknown_event_id\"}\n\n",
                 time.monotonic() + 5)
