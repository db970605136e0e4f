#!/usr/bin/env python3
"""test_run_cluster.py: tests of scripts/run-cluster (what `make
run-cluster` runs) against $RUNCAST_BIN, which must be cluster-capable
(--store).

  RUNCAST_BIN=build/runcast python3 tests/cluster/test_run_cluster.py [FILTER...]

Each test starts the script on free loopback ports (RUN_CLUSTER_* variables)
with a fresh temporary directory, talks to the cluster through its nginx,
and stops the script the way a person does (SIGTERM, or Ctrl-C on a
terminal). Every process the script started must be gone when it has
exited: its descendants, recorded while it ran, and any process whose
command line names the test's ports or directory.

The tests register with harness.test, so a suite that imports this module
runs them; run on its own, it runs only them with tests/integration/run.py's
runner: one ok/FAIL line per test, then `run-cluster: N passed, M failed`."""

import fcntl
import os
import pty
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean
ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import harness  # noqa: E402
from harness import (SseClient, eq, expect, fail, free_port, post_run, request, spath,  # noqa: E402
                     test, wait_until)
from test_streams import check_same  # noqa: E402

SCRIPT = os.path.join(ROOT, "scripts", "run-cluster")
READY_TIMEOUT = 60.0   # the script's own waits are 20 s per process
STOP_TIMEOUT = 40.0    # the script's own limit is 20 s per process
EXIT_TIMEOUT = 20.0    # a refusal, before anything runs long

# ---------------------------------------------------------------- processes

def proc_stat(pid):
    """(ppid, start time in ticks) of pid, or None when it does not exist."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), int(fields[19])


def started_at(pid):
    """pid's start time (ticks), None when it does not exist: with the time
    recorded earlier, tells the same process from a reused pid."""
    st = proc_stat(pid)
    return st[1] if st else None


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def descendants(pid):
    """{pid: start time} of every process below pid."""
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st:
                children.setdefault(st[0], []).append((int(name), st[1]))
    out, todo = {}, [pid]
    while todo:
        for child, start in children.get(todo.pop(), []):
            out[child] = start
            todo.append(child)
    return out


def cmdlines_naming(tokens):
    """[(pid, command line)] of the processes whose command line contains
    one of tokens."""
    pids = [int(name) for name in os.listdir("/proc") if name.isdigit() and int(name) != os.getpid()]
    return [(pid, cmd) for pid, cmd in ((pid, cmdline(pid)) for pid in pids)
            if any(tok in cmd for tok in tokens)]


def listening(port):
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Cluster:
    """scripts/run-cluster as a child of the test, on free ports, in a temp
    directory (or in directory, ports: [nginx, n1, n2, n3, redis]).
    tty=True runs it on a pseudo-terminal of its own (as its controlling
    terminal), so that stop("ctrl-c") is a real Ctrl-C. Output (stdout
    and stderr together) is collected on a thread."""

    def __init__(self, t, env=None, tty=False, ports=None, directory=None):
        self.dir = directory or tempfile.mkdtemp(prefix="runcast-cluster-")
        self.port, n1, n2, n3, self.redis_port = ports or [free_port() for _ in range(5)]
        self.node_ports = [n1, n2, n3]
        penv = dict(os.environ)
        penv.update({
            "RUNCAST_BIN": harness.RUNCAST_BIN,
            "RUN_CLUSTER_DIR": self.dir,
            "RUN_CLUSTER_PORT": str(self.port),
            "RUN_CLUSTER_NODE_PORTS": " ".join(map(str, self.node_ports)),
            "RUN_CLUSTER_REDIS_PORT": str(self.redis_port),
        })
        penv.update(env or {})
        self.out = bytearray()
        self.cond = threading.Condition()
        self.eof = False
        self.known = {}  # pid -> start time: every descendant seen
        self.master = None
        if tty:
            self.master, slave = pty.openpty()

            def take_terminal():
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            self.proc = subprocess.Popen([SCRIPT], stdin=slave, stdout=slave, stderr=slave, env=penv,
                                         start_new_session=True, preexec_fn=take_terminal)
            os.close(slave)
            read = lambda: os.read(self.master, 65536)  # noqa: E731
        else:
            self.proc = subprocess.Popen([SCRIPT], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, env=penv)
            read = lambda: self.proc.stdout.read1(65536)  # noqa: E731
        self.reader = threading.Thread(target=self._read, args=(read,), daemon=True)
        self.reader.start()
        t.closers.append(self.cleanup)

    def _read(self, read):
        while True:
            try:
                data = read()
            except OSError:  # the pty's EIO once every writer has gone
                data = b""
            with self.cond:
                if not data:
                    self.eof = True
                    self.cond.notify_all()
                    return
                self.out += data
                self.cond.notify_all()

    def text(self):
        with self.cond:
            return self.out.decode("utf-8", "replace")

    def wait_output(self, pattern, timeout):
        """The first match of pattern in the output; fails when the script
        exits or the deadline passes first."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                m = re.search(pattern, self.out.decode("utf-8", "replace"))
                if m:
                    return m
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    break
                self.cond.wait(min(left, 0.2))
        fail("%s waiting for %r in run-cluster's output:\n%s"
             % ("exited" if self.eof else "timed out after %.0fs" % timeout, pattern, self.text()))

    def wait_ready(self):
        """Waits for the script's ready message; returns {name: pid} of what
        it says runs (nginx, n1..n3, redis) and records every descendant."""
        self.wait_output(r"Stop with Ctrl-C\.", READY_TIMEOUT)
        pids = {m.group(1): int(m.group(2))
                for m in re.finditer(r"^  (nginx|n\d|redis) .* pid (\d+)", self.text(), re.M)}
        eq(sorted(pids), ["n1", "n2", "n3", "nginx", "redis"], "processes the ready message names")
        self.known.update(descendants(self.proc.pid))
        for name, pid in pids.items():
            expect(pid in self.known, "%s (pid %d) is not a child of run-cluster" % (name, pid))
        return pids

    def wait_exit(self, timeout):
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            fail("run-cluster still running %.0fs later; output:\n%s" % (timeout, self.text()))
        self.reader.join(5)
        return rc

    def stop(self, how="SIGTERM"):
        """Stops the script (SIGTERM, or Ctrl-C on its terminal); returns its
        exit status once it has exited."""
        self.known.update(descendants(self.proc.pid))
        if how == "ctrl-c":
            os.write(self.master, b"\x03")
        else:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit(STOP_TIMEOUT)

    def leftovers(self):
        """What still runs of what the script started: ["pid N (command)"]."""
        tokens = [self.dir] + ["127.0.0.1:%d" % p for p in [self.port, self.redis_port] + self.node_ports]
        left = dict(cmdlines_naming(tokens))
        left.update((pid, cmdline(pid)) for pid, start in self.known.items() if started_at(pid) == start)
        return ["pid %d (%s)" % pc for pc in sorted(left.items())]

    def check_nothing_left(self):
        left = self.leftovers()
        expect(not left, "still running after run-cluster exited: %s" % left)
        busy = [p for p in [self.port, self.redis_port] + self.node_ports if listening(p)]
        expect(not busy, "ports still accepting connections: %r" % busy)

    def access_log(self):
        with open(os.path.join(self.dir, "logs", "nginx-access.log")) as f:
            return f.read()

    def cleanup(self):
        """Last resort when a test failed midway: no process outlives it."""
        try:
            if self.proc.poll() is None:
                self.known.update(descendants(self.proc.pid))
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            for pid, start in self.known.items():
                if started_at(pid) == start:
                    os.kill(pid, signal.SIGKILL)
        finally:
            if self.master is not None:
                os.close(self.master)
                self.master = None
            shutil.rmtree(self.dir, ignore_errors=True)


class Via:
    """An address for harness helpers that take a daemon (they use .port)."""

    def __init__(self, port):
        self.port = port


def upstream_of(log, method, path):
    """The node (upstream port) nginx sent each `method path` request to, in
    order, from the access log's upstream= field."""
    return [int(m.group(1)) for m in re.finditer(
        r'"%s %s HTTP/1\.1" \d+ \d+ upstream=127\.0\.0\.1:(\d+) ' % (method, re.escape(path)), log)]


def redis_config(port, name):
    out = subprocess.run(["redis-cli", "-p", str(port), "config", "get", name],
                         capture_output=True, text=True, timeout=5).stdout.split()
    eq(out[:1], [name], "redis-cli config get %s" % name)
    return out[1]


# ---------------------------------------------------------------- tests

@test(timeout=120)
def test_run_cluster_serves_a_session_from_every_node_through_nginx_and_stops_clean(t):
    c = Cluster(t)
    c.wait_ready()
    front = Via(c.port)

    r = request(c.port, "GET", "/")
    eq(r.status, 200, "GET / (the console) through nginx")
    expect((r.header("Content-Type") or "").startswith("text/html"), "console Content-Type %r"
           % r.header("Content-Type"))
    for port in c.node_ports:
        r = request(port, "GET", "/readyz")
        eq((r.status, r.json()), (200, {"status": "ready"}), "node %d /readyz" % port)
    eq(redis_config(c.redis_port, "appendonly"), "yes", "Redis appendonly")
    eq(redis_config(c.redis_port, "appendfsync"), "everysec", "Redis appendfsync")
    eq(redis_config(c.redis_port, "maxmemory-policy"), "noeviction", "Redis maxmemory-policy")
    eq(redis_config(c.redis_port, "dir"), os.path.join(c.dir, "redis"), "Redis data directory")

    # Round-robin: the subscription, the POST and the resumed subscription
    # land on three different nodes, and the session is the same on each.
    sid = "rr"
    path = spath(sid) + "/run"
    a = SseClient(t, c.port, path)
    a.wait_retry()
    j, _, _ = post_run(front, sid, "!events=40 !rate=40")
    a.wait_for(lambda evs: len(evs) >= 6, 10, "6 events on a")
    part = a.snapshot()[:6]
    b = SseClient(t, c.port, path, headers={"Last-Event-ID": part[-1].id})
    b.wait_event("run.completed", 10, run_id=j["run_id"])
    a.wait_event("run.completed", 10, run_id=j["run_id"])
    rest = b.snapshot()
    expect(rest and rest[0].type != "stream.reset", "resume on another node sent stream.reset: %r" % rest[:1])
    check_same(part + rest, a.snapshot(), "resumed on another node vs uninterrupted subscriber")
    a.close()
    b.close()
    log = wait_until(lambda: len(upstream_of(c.access_log(), "GET", path)) == 2 and c.access_log(), 5,
                     "nginx to log both streams")
    nodes = upstream_of(log, "GET", path)[:1] + upstream_of(log, "POST", path) + upstream_of(log, "GET", path)[1:]
    eq(sorted(nodes), sorted(c.node_ports), "nodes of the first stream, the POST and the resumed stream")

    eq(c.stop(), 0, "run-cluster's exit status after SIGTERM; output:\n" + c.text())
    expect(c.text().rstrip().endswith("run-cluster: stopped"), "last line; output:\n" + c.text())
    c.check_nothing_left()
    expect(os.path.isdir(os.path.join(c.dir, "redis", "appendonlydir")), "Redis wrote no AOF in its directory")


@test(timeout=120)
def test_run_cluster_keeps_a_run_cut_by_stopping_in_redis_for_the_next_start(t):
    """Redis stops last and keeps its append-only file: the owner's last
    event (run.cancelled at shutdown) survives into the next start."""
    c = Cluster(t, env={"RUNCAST_SHUTDOWN_GRACE": "0.5s"})
    c.wait_ready()
    sid = "restart"
    path = spath(sid) + "/run"
    a = SseClient(t, c.port, path)
    a.wait_retry()
    j, _, _ = post_run(Via(c.port), sid, "!events=600 !rate=20")
    a.wait_for(lambda evs: len(evs) >= 3, 10, "the run under way")
    eq(c.stop(), 0, "run-cluster's exit status after SIGTERM mid-run; output:\n" + c.text())
    c.check_nothing_left()
    seen = a.snapshot()
    expect(not any(e.type == "run.cancelled" for e in seen), "the run ended before the stop")

    again = Cluster(t, env={"RUNCAST_SHUTDOWN_GRACE": "0.5s"}, directory=c.dir,
                    ports=[c.port] + c.node_ports + [c.redis_port])
    again.wait_ready()
    b = SseClient(t, again.port, path, headers={"Last-Event-ID": seen[-1].id})
    end = b.wait_event("run.cancelled", 5, run_id=j["run_id"])
    eq(end.json()["reason"], "shutdown", "run.cancelled reason")
    rest = b.snapshot()
    expect(rest[0].type != "stream.reset", "resume after a restart with AOF sent stream.reset: %r" % rest[:1])
    expect(all(e.type == "agent.event" for e in rest[:-1]), "between the resume point and run.cancelled: %r"
           % [e.type for e in rest])
    b.close()
    eq(again.stop(), 0, "exit status of the second run-cluster; output:\n" + again.text())
    again.check_nothing_left()


@test(timeout=120)
def test_run_cluster_stops_on_ctrl_c_with_nothing_left_and_exits_0(t):
    c = Cluster(t, tty=True)
    c.wait_ready()
    eq(request(c.port, "GET", "/readyz").status, 200, "/readyz through nginx")
    eq(c.stop("ctrl-c"), 0, "run-cluster's exit status after Ctrl-C; output:\n" + c.text())
    c.check_nothing_left()


@test(timeout=120)
def test_run_cluster_reports_a_node_that_dies_and_serves_on(t):
    c = Cluster(t)
    pids = c.wait_ready()
    os.kill(pids["n2"], signal.SIGKILL)
    c.wait_output(r"n2 \(pid %d\) exited with status 137" % pids["n2"], 10)
    for _ in range(4):  # nginx skips the dead node
        eq(request(c.port, "GET", "/readyz").status, 200, "/readyz through nginx without n2")
    eq(c.stop(), 1, "exit status after SIGTERM once a node had died; output:\n" + c.text())
    c.check_nothing_left()


@test(timeout=120)
def test_run_cluster_refuses_a_busy_port_before_starting_anything(t):
    ports = [free_port() for _ in range(5)]
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", ports[2]))
        s.listen(1)
        c = Cluster(t, ports=ports)
        eq(c.wait_exit(EXIT_TIMEOUT), 1, "exit status; output:\n" + c.text())
    expect("port %d on 127.0.0.1 is already in use" % ports[2] in c.text(), "message; output:\n" + c.text())
    c.check_nothing_left()


@test(timeout=120)
def test_run_cluster_names_a_missing_binary(t):
    c = Cluster(t, env={"RUNCAST_BIN": "/nonexistent/runcast"})
    eq(c.wait_exit(EXIT_TIMEOUT), 1, "exit status; output:\n" + c.text())
    expect("no runcast binary at /nonexistent/runcast" in c.text(), "message; output:\n" + c.text())
    c.check_nothing_left()


@test(timeout=120)
def test_run_cluster_stops_what_had_started_when_a_node_cannot_start(t):
    c = Cluster(t, env={"RUNCAST_BIN": "/bin/false"})
    eq(c.wait_exit(READY_TIMEOUT), 1, "exit status; output:\n" + c.text())
    expect(re.search(r"n1 \(pid \d+\) exited with status 1", c.text()) and
           "node n1 on 127.0.0.1:%d failed to start" % c.node_ports[0] in c.text(), "message; output:\n" + c.text())
    c.check_nothing_left()


if __name__ == "__main__":
    import run  # tests/integration/run.py: only this module's tests are registered
    sys.exit(run.main(sys.argv[1:], suite="run-cluster"))
