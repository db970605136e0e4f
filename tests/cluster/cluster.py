"""cluster.py: fixtures for runcast's cluster-mode fault tests (CLUSTER.md).

Built on tests/integration/harness.py (Daemon, SseClient, Ctx, wait_until,
and its Resp and RedisServer):
  Node          one runcast process in cluster mode: kill -9, SIGSTOP/SIGCONT
  Cluster       N nodes with distinct --node-id on one RedisServer
  LatencyProxy  a TCP proxy that delays a node's Redis traffic
  Sub           a logical subscriber of one session: an SseClient, and after
                reconnect(node) another one resuming with its Last-Event-ID
  Checker       fed by every Sub: per session, ids strictly increasing and
                contiguous unless a stream.reset came, exactly one terminal
                event per run, nothing of a run after its terminal event, and
                the same id -> (type, data) on every node.

Event ids are parsed (<8 hex>-<seq>) only in this file's checker; tests
treat them as opaque strings.
"""

import json
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time

import harness
from harness import (TERMINAL, Daemon, RedisServer, Resp, RespError, SseClient, TestFailure, eq,
                     expect, fail, free_port, request, spath, wait_until)

LEASE = os.environ.get("RUNCAST_CLUSTER_LEASE", "2s")


def seconds(d):
    """A duration in runcast's syntax ("2s", "500ms", "0.25") as seconds."""
    d = str(d)
    for suffix, mul in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if d.endswith(suffix):
            return float(d[:-len(suffix)]) * mul
    return float(d)


LEASE_S = seconds(LEASE)


# ---------------------------------------------------------------- latency

# A RESP command (SUBSCRIBE, PSUBSCRIBE, SSUBSCRIBE) in a client's bytes.
SUBSCRIBE_RE = re.compile(rb"\*[0-9]+\r\n\$[0-9]+\r\n[PpSs]?[Ss][Uu][Bb][Ss][Cc][Rr][Ii][Bb][Ee]\r\n")


class LatencyProxy:
    """A TCP proxy on a free loopback port that delays every byte by
    delay_s in each direction (there is no tc netem here): a node whose
    --store points at it sees a slow Redis, and lags behind the others.
    wedge_pubsub() silently stops forwarding on the connections that sent a
    SUBSCRIBE, in both directions, and keeps them open (a wedged pub/sub
    connection: nothing arrives, nothing fails)."""

    def __init__(self, ctx, target_port, delay_s=0.0):
        self.target_port = target_port
        self.delay_s = delay_s
        self.pubsub = set()     # ids of connection pairs that sent SUBSCRIBE
        self.wedged = set()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.socks = []
        self.closed = False
        ctx.closers.append(self.close)
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, db=None):
        return "redis://127.0.0.1:%d%s" % (self.port, "" if db is None else "/%d" % db)

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), 2)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            self.socks += [client, upstream]
            pair = id(client)
            for a, b, sniff in ((client, upstream, True), (upstream, client, False)):
                q = queue.Queue()
                threading.Thread(target=self._read, args=(a, q, pair, sniff), daemon=True).start()
                threading.Thread(target=self._write, args=(b, q, pair), daemon=True).start()

    def _read(self, sock, q, pair, sniff):
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if sniff and SUBSCRIBE_RE.search(data):
                self.pubsub.add(pair)
            q.put((time.monotonic() + self.delay_s, data))
            if not data:
                return

    def wedge_pubsub(self):
        """Wedges every pub/sub connection open now; returns how many."""
        self.wedged |= self.pubsub
        return len(self.pubsub)

    def _write(self, sock, q, pair):
        while True:
            due, data = q.get()
            left = due - time.monotonic()
            if left > 0:
                time.sleep(left)   # the latency this proxy injects, not a wait for a result
            if pair in self.wedged:
                continue
            try:
                if not data:
                    sock.shutdown(socket.SHUT_WR)
                    return
                sock.sendall(data)
            except OSError:
                return

    def close(self):
        self.closed = True
        for sock in [self.listener] + self.socks:
            try:
                sock.close()
            except OSError:
                pass


# ---------------------------------------------------------------- nodes

class Node:
    """One runcast process in cluster mode. `name` is its --node-id."""

    def __init__(self, cluster, name, args=(), env=None, store=None):
        self.cluster = cluster
        self.name = name
        self.frozen = False
        self.dead = False
        argv = ["--store", store or cluster.redis.url(cluster.db), "--node-id", name,
                "--node-lease", cluster.lease] + list(cluster.args) + list(args)
        self.d = Daemon(cluster.ctx, argv, env=env)

    @property
    def port(self):
        return self.d.port

    @property
    def pid(self):
        return self.d.proc.pid

    def __repr__(self):
        return "<node %s :%s%s>" % (self.name, self.port,
                                    " dead" if self.dead else " frozen" if self.frozen else "")

    def alive(self):
        return not self.dead and self.d.alive()

    def kill9(self):
        """kill -9; the harness no longer expects a clean exit from it."""
        self.d.stopped = True
        self.d.proc.kill()
        self.d.proc.wait(5)
        self.dead = True

    def freeze(self):
        os.kill(self.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self):
        if self.frozen:
            os.kill(self.pid, signal.SIGCONT)
            self.frozen = False

    # HTTP
    def get(self, path, **kw):
        return request(self.port, "GET", path, **kw)

    def post_json(self, path, obj, **kw):
        return self.d.post_json(path, obj, **kw)

    def delete(self, path, **kw):
        return request(self.port, "DELETE", path, **kw)

    def readyz(self, timeout=2.0):
        r = self.get("/readyz", timeout=timeout)
        try:
            body = json.loads(r.body.decode())
        except ValueError:
            body = r.body
        return r.status, body

    def metrics(self):
        r = self.get("/metrics")
        eq(r.status, 200, "GET /metrics on %s" % self.name)
        return parse_metrics(r.body.decode())

    def demo_calls(self, sid=None):
        return self.d.demo_calls(sid)

    def log_lines(self, pred=None, n=30):
        """The last n log lines (raw text), optionally only those whose parsed
        record satisfies pred."""
        with self.d.cond:
            lines = list(self.d.lines)
        if pred is not None:
            lines = [l for l in lines if (lambda r: r is not None and pred(r))(harness.parse_log_line(l))]
        return lines[-n:]


class Cluster:
    """N runcast nodes (--node-id n1..nN) sharing one RedisServer. args go to
    every node; lease is --node-lease."""

    def __init__(self, ctx, n=3, redis=None, aof=False, lease=LEASE, args=(), db=None):
        self.ctx = ctx
        self.redis = redis or RedisServer(ctx, aof=aof)
        self.lease = lease
        self.lease_s = seconds(lease)
        self.args = list(args)
        self.db = db
        self.nodes = []
        self.restarts = 0
        ctx.clusters = getattr(ctx, "clusters", []) + [self]
        ctx.closers.append(self._thaw_all)
        for i in range(n):
            self.add("n%d" % (i + 1))
        for node in self.nodes:
            self.wait_ready(node)

    def add(self, name, args=(), env=None, store=None):
        """Starts one more node (store: another Redis URL, e.g. a
        LatencyProxy's)."""
        node = Node(self, name, args, env, store)
        self.nodes.append(node)
        return node

    def __getitem__(self, i):
        return self.nodes[i]

    def alive(self):
        return [n for n in self.nodes if n.alive() and not n.frozen]

    def wait_ready(self, node, timeout=8.0):
        def ready():
            try:
                return node.readyz()[0] == 200
            except (OSError, TestFailure):
                return False
        wait_until(ready, timeout, "/readyz 200 on %s" % node.name, interval=0.05)

    def restart_node(self, node, args=()):
        """Starts a replacement for a dead node under a new --node-id."""
        self.restarts += 1
        new = self.add("%s-r%d" % (node.name.split("-")[0], self.restarts), args)
        self.wait_ready(new)
        return new

    def _thaw_all(self):
        for n in self.nodes:
            try:
                n.thaw()
            except OSError:
                pass

    def logs(self, n=12, pred=None):
        out = []
        for node in self.nodes:
            out.append("  %r log:" % node)
            out += ["    | " + l for l in node.log_lines(pred, n)]
        return "\n".join(out)


def parse_metrics(text):
    """Prometheus text as {name: {labels-text: value}} plus {"#TYPE": {name: type}}."""
    out = {"#TYPE": {}}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) >= 4:
                out["#TYPE"][parts[2]] = parts[3]
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m:
            try:
                out.setdefault(m.group(1), {})[m.group(2) or ""] = float(m.group(3))
            except ValueError:
                pass
    return out


def metric(metrics, name, labels=""):
    """A sample's value; None when absent."""
    return metrics.get(name, {}).get(labels)


def metric_sum(metrics, name):
    return sum(metrics.get(name, {}).values())


# ---------------------------------------------------------------- runs

def post(node, sid, message, user="u", app="app", expect_status=202):
    """POST {"message"} on a node; the parsed 202 body (or the Response when
    another status is expected)."""
    path = spath(sid, app=app, user=user) + "/run"
    r = node.post_json(path, {"message": message})
    if r.status != expect_status:
        fail("POST %s on %s: expected %d, got %d %r" % (path, node.name, expect_status, r.status, r.body[:300]))
    if expect_status != 202:
        return r
    j = r.json()
    expect(isinstance(j.get("run_id"), str) and j["run_id"], "POST on %s: no run_id: %r" % (node.name, j))
    return j


def status_of(node, sid, user="u", app="app"):
    r = node.get(spath(sid, app=app, user=user) + "/task-status")
    if r.status == 404:
        return None
    eq(r.status, 200, "GET task-status on %s" % node.name)
    return r.json()


def agent_seqs(events, invocation=None):
    """customMetadata.seq of the demo agent's events (of one invocation)."""
    out = []
    for e in events:
        if e.type == "agent.event":
            d = e.json()
            if invocation is None or d.get("invocationId") == invocation:
                out.append((d.get("customMetadata") or {}).get("seq"))
    return out


def data_of(e):
    try:
        d = json.loads(e.data)
    except ValueError:
        return None
    return d if isinstance(d, dict) else None


def is_terminal_of(e, run_id):
    if e.type not in TERMINAL:
        return False
    d = data_of(e)
    return d is not None and d.get("run_id") == run_id


# ---------------------------------------------------------------- subscribers

class Segment:
    """What one connection of a Sub received. resume_id: the Last-Event-ID it
    was opened with (None: a fresh stream)."""

    def __init__(self, node, resume_id, client):
        self.node = node
        self.resume_id = resume_id
        self.client = client

    def events(self):
        return self.client.snapshot()


class Sub:
    """A logical subscriber of one session (what a browser tab is): its
    connections, in order. reconnect(node) resumes on any node with the last
    id it received, as EventSource does."""

    def __init__(self, checker, node, sid, user="u", app="app", label=None, last_event_id=None):
        self.checker = checker
        self.sid = sid
        self.user = user
        self.app = app
        self.key = (app, user, sid)
        self.label = label or "sub%d" % (len(checker.subs) + 1)
        self.segments = []
        checker.subs.append(self)
        self._open(node, last_event_id)

    def __repr__(self):
        return "<%s of %s on %s>" % (self.label, self.sid, self.cur_node.name)

    def _open(self, node, last_event_id):
        headers = {"Last-Event-ID": last_event_id} if last_event_id else None
        client = SseClient(self.checker.ctx, node.port, spath(self.sid, app=self.app, user=self.user) + "/run",
                           headers=headers)
        self.segments.append(Segment(node, last_event_id, client))
        client.wait_retry()
        return client

    @property
    def cur(self):
        return self.segments[-1].client

    @property
    def cur_node(self):
        return self.segments[-1].node

    def last_id(self):
        for seg in reversed(self.segments):
            for e in reversed(seg.events()):
                if e.has_id and e.id:
                    return e.id
            if seg.resume_id:
                return seg.resume_id
        return None

    def close(self):
        self.cur.close()

    def reconnect(self, node):
        """Closes the current connection and resumes on node with the last
        id received (none: a fresh stream)."""
        self.cur.close()
        return self._open(node, self.last_id())

    def events(self):
        out = []
        for seg in self.segments:
            out += seg.events()
        return out

    def wait_for(self, pred, timeout, what):
        """pred over every event this Sub received (all connections)."""
        before = []
        for seg in self.segments[:-1]:
            before += seg.events()
        return self.cur.wait_for(lambda evs: pred(before + list(evs)), timeout,
                                 "%s (%s on %s)" % (what, self.label, self.cur_node.name))

    def wait_event(self, type_, timeout, run_id=None, where=None):
        def pred(evs):
            for e in evs:
                if e.type != type_:
                    continue
                d = data_of(e) or {}
                if run_id is not None and d.get("run_id") != run_id:
                    continue
                if where is not None and not where(d):
                    continue
                return e
            return None
        return self.wait_for(pred, timeout, "%s%s" % (type_, " of run %s" % run_id if run_id else ""))

    def wait_terminal(self, run_id, timeout):
        return self.wait_for(lambda evs: next((e for e in evs if is_terminal_of(e, run_id)), None),
                             timeout, "terminal event of run %s" % run_id)

    def wait_agent_events(self, n, timeout, invocation=None):
        return self.wait_for(lambda evs: len(agent_seqs(evs, invocation)) >= n, timeout,
                             "%d agent events" % n)

    def trace(self):
        return (self.label, [(seg.node.name, seg.resume_id, seg.events()) for seg in self.segments])


# ---------------------------------------------------------------- checker

ID_RE = re.compile(r"^([0-9a-f]{8})-([0-9]+)$")


def parse_id(text):
    """(epoch, seq) of an event id; None when it is not <8 hex>-<seq>. Only
    the checker looks inside ids."""
    m = ID_RE.match(text or "")
    return (m.group(1), int(m.group(2))) if m else None


class Lifecycle:
    """Follows runs through one ordered sequence of events: nothing of a run
    after its terminal event, agent events only inside a run. Agent events
    carry no run_id: the demo agent's invocationId (one per upstream call)
    ties each to the run it started in (inv_map, shared by a session)."""

    def __init__(self, where, problems, inv_map):
        self.where = where
        self.problems = problems
        self.inv_map = inv_map
        self.current = None    # the run the last run.queued/started named; None: unknown
        self.ended = {}        # run_id -> id of its terminal event

    def forget_position(self):
        self.current = None

    def feed(self, e):
        d = data_of(e)
        if e.type == "agent.event":
            inv = d.get("invocationId") if d else None
            owner = self.inv_map.get(inv) if inv else None
            if owner is None and self.current is not None and self.current not in self.ended and inv:
                self.inv_map[inv] = owner = self.current
            if owner is not None and owner in self.ended:
                self.problems.append("%s: agent.event %s (invocation %s) of run %s after its terminal event %s"
                                     % (self.where, e.id, inv, owner, self.ended[owner]))
            elif owner is None and self.current is not None and self.current in self.ended:
                self.problems.append("%s: agent.event %s (invocation %s) outside any run (after %s ended)"
                                     % (self.where, e.id, inv, self.current))
            return
        rid = d.get("run_id") if d else None
        if not rid:
            return
        if rid in self.ended:
            self.problems.append("%s: %s %s of run %s after its terminal event %s"
                                 % (self.where, e.type, e.id, rid, self.ended[rid]))
            return
        if e.type in ("run.queued", "run.started"):
            self.current = rid
        if e.type in TERMINAL:
            self.ended[rid] = e.id


def check_session(name, traces, noted_runs=(), require_terminal=True):
    """Checks one session's traces; returns a list of problems (strings).

    traces: [(label, [(node, resume_id, [Event])])], each a logical
    subscriber's connections in order. noted_runs: run ids the test started
    (each must end exactly once when require_terminal)."""
    problems = []
    inv_map = {}
    union = {}       # id -> (event, where first seen)
    for label, segments in traces:
        prev = None  # (epoch, seq, id) of the last id-bearing event
        life = None
        for i, (node, resume_id, events) in enumerate(segments):
            where = "%s/%s conn %d on %s" % (name, label, i + 1, node)
            if resume_id is None:
                prev = None
                life = Lifecycle(where, problems, inv_map)
            else:
                p = parse_id(resume_id)
                if p is None:
                    problems.append("%s: resumed with a malformed id %r" % (where, resume_id))
                    prev = None
                else:
                    prev = (p[0], p[1], resume_id)
                if life is None:
                    life = Lifecycle(where, problems, inv_map)
                life.where = where
            reset = None
            for e in events:
                if e.type == "stream.reset":
                    if e.has_id and e.id:
                        problems.append("%s: stream.reset carries an id %r" % (where, e.id))
                    reset = e.data
                    life = Lifecycle(where, problems, inv_map)   # the stream starts over
                    continue
                if not e.has_id or not e.id:
                    continue
                p = parse_id(e.id)
                if p is None:
                    problems.append("%s: id %r of %s is not <8 hex>-<seq>" % (where, e.id, e.type))
                    continue
                if prev is not None:
                    if reset is not None:
                        if p[0] == prev[0] and p[1] <= prev[1]:
                            problems.append("%s: stream.reset %s, then id %s after %s: the same epoch and not "
                                            "greater (%s was placeable: events repeated)"
                                            % (where, reset, e.id, prev[2], prev[2]))
                    elif p[0] != prev[0]:
                        problems.append("%s: id %s (%s) follows %s: epoch changed without stream.reset"
                                        % (where, e.id, e.type, prev[2]))
                    elif p[1] <= prev[1]:
                        problems.append("%s: id %s (%s) follows %s: not increasing" % (where, e.id, e.type, prev[2]))
                    elif p[1] != prev[1] + 1:
                        problems.append("%s: id %s (%s) follows %s: gap of %d without stream.reset"
                                        % (where, e.id, e.type, prev[2], p[1] - prev[1] - 1))
                reset = None
                prev = (p[0], p[1], e.id)
                life.feed(e)
                seen = union.get(e.id)
                if seen is None:
                    union[e.id] = (e, where)
                elif (seen[0].type, seen[0].data) != (e.type, e.data):
                    problems.append("%s: id %s is %s %s, but %s saw %s %s"
                                    % (where, e.id, e.type, e.data[:160], seen[1], seen[0].type, seen[0].data[:160]))
    # The union of what every node delivered, epoch by epoch (in the order the
    # epochs were first seen), seq by seq.
    by_epoch = {}
    for eid, (e, _) in union.items():
        ep, seq = parse_id(eid)
        by_epoch.setdefault(ep, []).append((seq, e))
    first_at = {ep: min(e.at for _, e in evs) for ep, evs in by_epoch.items()}
    life = Lifecycle("%s/all nodes" % name, problems, inv_map)
    terminals = {}
    started = []
    for ep in sorted(by_epoch, key=lambda x: first_at[x]):
        life.forget_position()
        for seq, e in sorted(by_epoch[ep], key=lambda x: x[0]):
            life.feed(e)
            d = data_of(e) or {}
            rid = d.get("run_id")
            if rid and e.type in TERMINAL:
                terminals.setdefault(rid, []).append(e)
            if rid and e.type in ("run.queued", "run.started") and rid not in started:
                started.append(rid)
    for rid, ts in terminals.items():
        if len(ts) > 1:
            problems.append("%s: run %s has %d terminal events: %s"
                            % (name, rid, len(ts), ", ".join("%s %s" % (t.type, t.id) for t in ts)))
    if require_terminal:
        for rid in list(started) + [r for r in noted_runs if r not in started]:
            if rid not in terminals:
                problems.append("%s: run %s has no terminal event on any node" % (name, rid))
    return problems


class Checker:
    """Owns the Subs of a test; verify() checks every session they watched."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.subs = []
        self.runs = {}   # (app, user, sid) -> run ids the test started
        ctx.checkers = getattr(ctx, "checkers", []) + [self]

    def sub(self, node, sid, **kw):
        return Sub(self, node, sid, **kw)

    def note(self, sid, run_id, user="u", app="app"):
        self.runs.setdefault((app, user, sid), []).append(run_id)
        return run_id

    def post(self, node, sid, message, user="u", app="app"):
        """post() plus note() of the run."""
        j = post(node, sid, message, user=user, app=app)
        self.note(sid, j["run_id"], user=user, app=app)
        return j

    def problems(self, require_terminal=True):
        keys = []
        for s in self.subs:
            if s.key not in keys:
                keys.append(s.key)
        out = []
        for key in keys:
            traces = [s.trace() for s in self.subs if s.key == key]
            out += check_session("/".join(key), traces, self.runs.get(key, ()), require_terminal)
        return out

    def verify(self, require_terminal=True):
        probs = self.problems(require_terminal)
        if probs:
            shown = probs[:15]
            more = "" if len(probs) <= 15 else "\n  ... and %d more" % (len(probs) - 15)
            fail("checker: %d problem(s):\n  %s%s" % (len(probs), "\n  ".join(shown), more))

    def resets(self, sub=None):
        subs = [sub] if sub else self.subs
        return [(s.label, e) for s in subs for e in s.events() if e.type == "stream.reset"]


def same_sequence(subs, what):
    """Every sub received the same id-bearing events (id, type, data) in the
    same order (all of them subscribed before the first event)."""
    seqs = [[e.key() for e in s.events() if e.has_id] for s in subs]
    for s, q in zip(subs[1:], seqs[1:]):
        if q != seqs[0]:
            n = next((i for i, (a, b) in enumerate(zip(seqs[0], q)) if a != b), min(len(q), len(seqs[0])))
            fail("%s: %s (%d events) and %s (%d events) differ at index %d: %r vs %r"
                 % (what, subs[0].label, len(seqs[0]), s.label, len(q), n,
                    seqs[0][n] if n < len(seqs[0]) else None, q[n] if n < len(q) else None))
    return seqs[0]


# ---------------------------------------------------------------- diagnostics

def describe_event(e):
    d = data_of(e) or {}
    if e.type == "agent.event":
        return None
    extra = ",".join("%s=%s" % (k, d[k]) for k in ("code", "reason", "by") if k in d)
    return "%s %s%s%s" % (e.id or "-", e.type, " " + d["run_id"] if d.get("run_id") else "",
                           " " + extra if extra else "")


def diagnose(ctx, log_lines=12):
    """What a failed test's subscribers received (every event but agent
    events, which are counted) and each node's last warn/error log lines."""
    out = []
    for chk in getattr(ctx, "checkers", []):
        for s in chk.subs:
            out.append("  %s (session %s):" % (s.label, s.sid))
            for i, seg in enumerate(s.segments):
                evs = seg.events()
                agents = sum(1 for e in evs if e.type == "agent.event")
                shown = [x for x in (describe_event(e) for e in evs) if x]
                out.append("    conn %d on %s%s, %d events (%d agent)%s: %s"
                           % (i + 1, seg.node.name, " from " + seg.resume_id if seg.resume_id else "",
                              len(evs), agents, " EOF" if seg.client.eof else "",
                              "; ".join(shown[-12:]) if shown else "-"))
    for c in getattr(ctx, "clusters", []):
        for node in c.nodes:
            lines = node.log_lines(lambda r: r.get("level") in ("warn", "error"), 1000)
            out.append("  %r: %s" % (node, "%d warn/error log lines, the last %d kinds:" % (len(lines), log_lines)
                                     if lines else "no warn/error log lines"))
            kinds = {}
            for l in lines:   # one line per kind (its text without the time), with a count
                key = re.sub(r'"ts":[0-9.]+,?', "", l)
                kinds[key] = (kinds.get(key, (0, l))[0] + 1, l)
            for n, l in list(kinds.values())[-log_lines:]:
                out.append("    | %s%s" % (l[:400], "  (x%d)" % n if n > 1 else ""))
    return "\n".join(out)
