"""Hostile clients and resource exhaustion: connections reset or half-closed
mid-request and mid-stream, thousands of pipelined requests in one write,
slowloris heads and bodies, a 100 MB body announced, running out of file
descriptors, and the --max-sessions / --max-subscribers caps. The daemon must
keep serving everyone else, free what a client held when it leaves, and
never cancel a run because a subscriber misbehaved.

(A subscriber that never reads while a fast run floods it is covered by
test_streams.py.)"""

import os
import socket
import struct
import threading
import time

from harness import (TIME_SCALE, Conn, Daemon, free_port, build_request, check_error, demo_call, eq, expect,
                     fail, post_run, run_events, spath, task_status, test, wait_until)

RUN = spath("s1") + "/run"


# ---------------------------------------------------------------- helpers

def metric(d, name, **labels):
    """The value of one sample of GET /metrics (0 when a labelled sample has
    not appeared yet; a missing unlabelled one fails)."""
    r = d.get("/metrics")
    eq(r.status, 200, "GET /metrics status")
    want = name
    if labels:
        want += "{" + ",".join('%s="%s"' % kv for kv in sorted(labels.items())) + "}"
    for line in r.body.decode().splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == want:
            return float(value)
    if labels:
        return 0.0
    fail("/metrics has no sample %s" % want)


def wait_metric(d, name, value, timeout, **labels):
    wait_until(lambda: metric(d, name, **labels) == value, timeout,
               "%s == %r (now %r)" % (name, value, metric(d, name, **labels)))


def reset_close(sock):
    """Closes with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def cpu_seconds(pid):
    """utime + stime of a process (all its threads), in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_stream(t, d, sid, timeout=5.0):
    """A raw stream connection whose head has been read (200)."""
    c = Conn(d.port, timeout)
    t.closers.append(c.close)
    c.send(build_request("GET", spath(sid) + "/run"))
    _, status, _, _ = c.read_head()
    eq(status, 200, "GET stream %s status" % sid)
    return c


def agent_events_of(s, rid):
    return [e for e in run_events(s.snapshot(), rid) if e.type == "agent.event"]


class Trickler:
    """Sends data one byte every `interval` seconds on its own thread, until
    everything is sent, a send fails, or stop()."""

    def __init__(self, conn, data, interval=0.1):
        self.conn = conn
        self.data = data
        self.interval = interval
        self.sent = 0
        self.error = None
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        for i in range(len(self.data)):
            if self.stopped.is_set():
                return
            try:
                self.conn.sock.send(self.data[i:i + 1])
            except OSError as e:
                self.error = e
                return
            self.sent += 1
            self.stopped.wait(self.interval)  # pacing, not waiting for a result

    def stop(self):
        self.stopped.set()
        self.thread.join(2)


# ---------------------------------------------------------------- resets and half-closes

@test()
def test_resetting_stream_clients_restore_the_subscriber_gauge_and_the_run_completes(t):
    d = t.daemon()
    sid = "rst"
    keep = t.sse(d, spath(sid) + "/run")
    keep.wait_retry()
    wait_metric(d, "runcast_subscribers", 1, 3)
    j, _, _ = post_run(d, sid, "reset me !events=80 !rate=100")
    rid = j["run_id"]
    # ten subscribers join mid-run, read part of the stream, and reset
    for i in range(10):
        c = open_stream(t, d, sid)
        c.read_until(b"event: agent.event", time.monotonic() + 5)
        if i == 0:
            eq(metric(d, "runcast_subscribers"), 2, "subscribers with one resetting client")
        reset_close(c.sock)
    # a reset in the middle of a request head, and of a request body
    c = Conn(d.port)
    c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Half: ")
    reset_close(c.sock)
    c = Conn(d.port)
    c.send(("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 50\r\n\r\n{\"mess" % spath("other")).encode())
    reset_close(c.sock)
    wait_metric(d, "runcast_subscribers", 1, 3)
    d.healthy()
    keep.wait_event("run.completed", 10, run_id=rid)
    eq(len(agent_events_of(keep, rid)), 80, "agent events the remaining subscriber got")
    eq(terminal_types(keep, rid), ["run.completed"], "terminal events of the run")
    st = task_status(d, sid)
    eq((st["run_id"], st["status"], st["subscribers"]), (rid, "completed", 1), "task-status after the resets")
    task_status(d, "other", expect_status=404)
    eq(demo_call(d, "other"), [], "upstream calls of the reset POST")


def terminal_types(s, rid):
    return [e.type for e in run_events(s.snapshot(), rid)
            if e.type.startswith("run.") and e.type not in ("run.queued", "run.started")]


@test()
def test_half_closed_client_still_gets_its_answers_then_the_connection_ends(t):
    d = t.daemon()
    c = t.conn(d)
    c.send(build_request("GET", "/healthz"))
    c.sock.shutdown(socket.SHUT_WR)
    r = c.read_response()
    eq((r.status, r.json()), (200, {"status": "ok", "upstream": "demo"}), "GET /healthz before SHUT_WR")
    expect(c.wait_eof(2), "connection not closed after answering a half-closed client")
    # pipelined requests, a POST among them, then the half-close
    body = b'{"message": "half closed !word-delay=0"}'
    c = t.conn(d)
    c.send(build_request("GET", "/healthz")
           + build_request("POST", RUN, body, {"Content-Type": "application/json"})
           + build_request("GET", "/nope"))
    c.sock.shutdown(socket.SHUT_WR)
    eq(c.read_response().status, 200, "pipelined 1 after SHUT_WR: /healthz")
    r = c.read_response()
    eq(r.status, 202, "pipelined 2 after SHUT_WR: POST run (%r)" % r.body[:200])
    rid = r.json()["run_id"]
    r = c.read_response()
    eq((r.status, r.json()), (404, {"detail": "Not Found"}),
       "pipelined 3 after SHUT_WR: /nope (forwarded to the demo agent)")
    eq(c.read_to_eof(time.monotonic() + 2), b"", "bytes after the last answer")
    st = wait_until(lambda: (lambda s: not s["has_task"] and s)(task_status(d, "s1")), 5,
                    "the half-closed client's run to end")
    eq((st["run_id"], st["status"]), (rid, "completed"), "the half-closed client's run")


@test()
def test_half_closed_stream_subscriber_is_let_go_and_the_run_goes_on(t):
    """A stream owns its connection: a subscriber that half-closes has left
    (no request can follow). The daemon ends that stream, frees the
    subscriber, and the run is not affected."""
    d = t.daemon()
    sid = "half"
    keep = t.sse(d, spath(sid) + "/run")
    keep.wait_retry()
    wait_metric(d, "runcast_subscribers", 1, 3)
    j, _, _ = post_run(d, sid, "half close me !events=50 !rate=100")
    c = open_stream(t, d, sid)
    c.read_until(b"event: agent.event", time.monotonic() + 5)
    eq(metric(d, "runcast_subscribers"), 2, "subscribers before the half-close")
    c.sock.shutdown(socket.SHUT_WR)
    expect(c.wait_eof(3), "stream not ended after its client half-closed")
    wait_metric(d, "runcast_subscribers", 1, 3)
    keep.wait_event("run.completed", 10, run_id=j["run_id"])
    eq(len(agent_events_of(keep, j["run_id"])), 50, "agent events the other subscriber got")
    eq(task_status(d, sid)["status"], "completed", "run status")


# ---------------------------------------------------------------- pipelining

@test(timeout=40)
def test_five_thousand_pipelined_requests_in_one_write_are_answered_in_order(t):
    d = t.daemon()
    n = 5000

    def path(i):
        return "/readyz" if i % 10 == 3 else "/nope" if i % 10 == 7 else "/healthz"

    data = b"".join(build_request("GET", path(i)) for i in range(n))
    n404_before = metric(d, "runcast_http_requests_total", code="404")
    c = t.conn(d, timeout=10 * TIME_SCALE)
    sender = c.sock.dup()  # its own timeout; the connection stays open until both close
    t.closers.append(sender.close)
    send_error = []

    def send_all():
        try:
            sender.settimeout(20 * TIME_SCALE)
            sender.sendall(data)  # one write as far as we are concerned
        except OSError as e:
            send_error.append(e)

    th = threading.Thread(target=send_all, daemon=True)
    th.start()
    deadline = time.monotonic() + 20 * TIME_SCALE
    want = {"/healthz": (200, b'{"status":"ok","upstream":"demo"}'), "/readyz": (200, b'{"status":"ready"}')}
    for i in range(n):
        r = c.read_response(timeout=max(0.1, deadline - time.monotonic()))
        p = path(i)
        if p == "/nope":
            if r.status != 404:
                fail("answer %d (GET %s): status %d %r" % (i, p, r.status, r.body[:100]))
        elif (r.status, r.body.replace(b" ", b"")) != want[p]:
            fail("answer %d (GET %s): %d %r" % (i, p, r.status, r.body[:100]))
    th.join(5)
    eq(send_error, [], "errors sending the pipeline")
    eq(c.buf, b"", "bytes after the 5000th answer")
    eq(metric(d, "runcast_http_requests_total", code="404") - n404_before, n // 10,
       "404 answers counted")
    c.send(build_request("GET", "/healthz", headers={"Connection": "close"}))
    eq(c.read_response().status, 200, "request 5001 on the same connection")
    eq(c.read_to_eof(time.monotonic() + 2), b"", "bytes after request 5001")


# ---------------------------------------------------------------- slowloris

@test()
def test_slowloris_head_one_byte_per_100ms_gets_408_while_others_are_served(t):
    d = t.daemon("--head-timeout", "0.5")
    slow = t.conn(d)
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
    t0 = time.monotonic()
    trickle = Trickler(slow, head)
    t.closers.append(trickle.stop)
    served = 0
    while time.monotonic() - t0 < 0.4:
        t1 = time.monotonic()
        eq(d.get("/healthz").status, 200, "another client's /healthz")
        took = time.monotonic() - t1
        expect(took < 0.25 * TIME_SCALE, "another client waited %.3fs" % took)
        served += 1
    expect(served >= 5, "only %d other requests served in 0.4s" % served)
    r = slow.read_response(timeout=3 * TIME_SCALE)
    elapsed = time.monotonic() - t0
    check_error(r, 408, "trickled head")
    expect(0.45 <= elapsed <= 0.5 + 1.0 * TIME_SCALE,
           "408 after %.3fs with --head-timeout 0.5 (the trickle must not extend it)" % elapsed)
    expect(3 <= trickle.sent < len(head), "bytes trickled before the 408: %d" % trickle.sent)
    expect(slow.wait_eof(2 * TIME_SCALE), "connection not closed after the 408")
    trickle.stop()
    d.healthy()


@test()
def test_slowloris_body_one_byte_per_100ms_gets_408(t):
    d = t.daemon("--head-timeout", "0.5")
    slow = t.conn(d)
    body = b'{"message": "' + b"z" * 85 + b'"}'
    eq(len(body), 100, "body size")
    t0 = time.monotonic()
    slow.send(("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               "Content-Length: 100\r\n\r\n" % RUN).encode())
    trickle = Trickler(slow, body)
    t.closers.append(trickle.stop)
    r = slow.read_response(timeout=3 * TIME_SCALE)
    elapsed = time.monotonic() - t0
    check_error(r, 408, "trickled body")
    expect(0.45 <= elapsed <= 0.5 + 1.0 * TIME_SCALE, "body 408 after %.3fs with --head-timeout 0.5"
           % elapsed)
    expect(3 <= trickle.sent < len(body), "body bytes trickled before the 408: %d" % trickle.sent)
    expect(slow.wait_eof(2 * TIME_SCALE), "connection not closed after the 408")
    trickle.stop()
    d.healthy()
    task_status(d, "s1", expect_status=404)
    eq(demo_call(d, "s1"), [], "upstream calls for the trickled POST")


# ---------------------------------------------------------------- huge body

@test()
def test_hundred_megabyte_body_is_refused_with_413_without_being_read(t):
    d = t.daemon()
    c = t.conn(d)
    head = ("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 104857600\r\n\r\n" % RUN).encode()
    t0 = time.monotonic()
    c.send(head + b"x" * 16384)
    r = c.read_response(timeout=2 * TIME_SCALE)
    took = time.monotonic() - t0
    check_error(r, 413, "Content-Length: 104857600 with the default --max-body 1m")
    expect(took < 0.5 * TIME_SCALE, "413 after %.3fs" % took)
    # go on sending: the daemon drains a little, then closes; sends then
    # fail (EPIPE/ECONNRESET) or block (nothing read any more)
    sent = 16384
    chunk = b"x" * 65536
    c.sock.settimeout(1.0 * TIME_SCALE)
    deadline = time.monotonic() + 5 * TIME_SCALE
    stop_reason = None
    while sent < 104857600 and time.monotonic() < deadline:
        try:
            c.sock.sendall(chunk)
        except OSError as e:  # socket.timeout included
            stop_reason = e
            break
        sent += len(chunk)
    expect(stop_reason is not None, "sent %d bytes after the 413 within 5s, nothing stopped us" % sent)
    expect(sent < 16 * 1024 * 1024, "the daemon took %d bytes of the refused body" % sent)
    expect(c.wait_eof(3 * TIME_SCALE), "connection not closed after the 413 (stopped by %r)" % stop_reason)
    d.healthy()
    task_status(d, "s1", expect_status=404)
    eq(demo_call(d, "s1"), [], "upstream calls for the refused POST")


# ---------------------------------------------------------------- resource exhaustion

@test(timeout=40)
def test_out_of_descriptors_keeps_old_connections_does_not_spin_and_recovers(t):
    d = Daemon(t, (), rlimit_nofile=64)
    first = t.conn(d)
    first.send(build_request("GET", "/healthz"))
    eq(first.read_response().status, 200, "first keep-alive connection")
    held, refused = [], []
    while len(held) < 100 and len(refused) < 3:
        c = Conn(d.port, 1.0)
        t.closers.append(c.close)
        c.send(build_request("GET", "/healthz"))
        try:
            r = c.read_response(timeout=0.5 * TIME_SCALE)
        except Exception:  # no answer in time, or closed without one
            refused.append(c)
            continue
        eq(r.status, 200, "GET /healthz on connection %d" % (len(held) + 2))
        held.append(c)
    eq(len(refused), 3, "connections left unanswered (held %d)" % len(held))
    expect(20 <= len(held) < 64, "connections the daemon held under RLIMIT_NOFILE 64: %d" % len(held))
    # (a) an old keep-alive connection is still served
    first.send(build_request("GET", "/healthz"))
    eq(first.read_response(timeout=1 * TIME_SCALE).status, 200, "old keep-alive connection while saturated")
    # a run started now cannot reach the upstream (no socket): it fails at
    # once instead of hanging, and frees its slot
    body = b'{"message": "no fds !word-delay=0"}'
    first.send(build_request("POST", spath("fd") + "/run", body, {"Content-Type": "application/json"}))
    r = first.read_response()
    eq(r.status, 202, "POST run while out of descriptors")
    starved = r.json()["run_id"]

    def ended():
        first.send(build_request("GET", spath("fd") + "/task-status"))
        st = first.read_response().json()
        return not st["has_task"] and st
    st = wait_until(ended, 5 * TIME_SCALE, "the run started without descriptors to end")
    eq((st["run_id"], st["status"]), (starved, "failed"), "run started without descriptors")
    # (b) saturated, with connections waiting, the daemon does not spin
    for _ in range(5):
        c = Conn(d.port, 1.0)
        t.closers.append(c.close)
        c.send(build_request("GET", "/healthz"))
        refused.append(c)
    cpu0, w0 = cpu_seconds(d.proc.pid), time.monotonic()
    time.sleep(1.0)  # measuring CPU over a second of wall time
    cpu1, w1 = cpu_seconds(d.proc.pid), time.monotonic()
    expect(cpu1 - cpu0 < 0.3, "daemon used %.2fs CPU in %.2fs while out of descriptors"
           % (cpu1 - cpu0, w1 - w0))
    eq(d.alive(), True, "daemon alive while out of descriptors")
    # (c) descriptors come back: a new connection is answered
    for c in held + refused:
        c.close()
    t0 = time.monotonic()

    def answered():
        try:
            return request_ok(d.port)
        except Exception:
            return False
    wait_until(answered, 3 * TIME_SCALE, "a new connection answered after closing the others")
    took = time.monotonic() - t0
    expect(took < 2 * TIME_SCALE, "recovered after %.2fs" % took)
    first.send(build_request("GET", "/healthz"))
    eq(first.read_response().status, 200, "old keep-alive connection after recovery")
    # the starved run's events replay; a new run reaches the upstream and completes
    s = t.sse(d, spath("fd") + "/run")
    ev = s.wait_event("run.failed", 5, run_id=starved)
    eq(ev.json()["code"], "upstream_unreachable", "code of the run started without descriptors")
    j, _, _ = post_run(d, "fd", "after exhaustion !word-delay=0")
    s.wait_event("run.completed", 10, run_id=j["run_id"])
    eq(len(agent_events_of(s, j["run_id"])), 4, "agent events of the run after recovery (3 words + aggregate)")


def request_ok(port):
    c = Conn(port, 1.0 * TIME_SCALE)
    try:
        c.send(build_request("GET", "/healthz", headers={"Connection": "close"}))
        return c.read_response().status == 200
    finally:
        c.close()


@test()
def test_max_sessions_refuses_the_fourth_session_with_503_and_frees_a_slot_on_delete(t):
    d = t.daemon("--max-sessions", "3")
    j1, _, _ = post_run(d, "s1", "one !word-delay=0")
    post_run(d, "s2", "two !hang")
    s3 = t.sse(d, spath("s3") + "/run")
    s3.wait_retry()
    eq(metric(d, "runcast_sessions"), 3, "sessions gauge")
    for method in ("POST", "GET"):
        if method == "POST":
            r = d.post_json(spath("s4") + "/run", {"message": "four"})
        else:
            r = d.get(spath("s4") + "/run")
        check_error(r, 503, "%s on a fourth session" % method, code="too_many_sessions")
        eq(r.header("Retry-After"), "1", "Retry-After of the 503")
    task_status(d, "s4", expect_status=404)
    eq(demo_call(d, "s4"), [], "upstream calls for the refused session")
    # the three existing sessions still work
    j, _, _ = post_run(d, "s3", "three !word-delay=0")
    s3.wait_event("run.completed", 10, run_id=j["run_id"])
    eq(task_status(d, "s2")["status"], "running", "s2 status")
    s1 = t.sse(d, spath("s1") + "/run")
    s1.wait_event("run.completed", 5, run_id=j1["run_id"])
    # deleting one frees its slot
    eq(d.delete(spath("s2")).status, 200, "DELETE s2")
    post_run(d, "s4", "four !word-delay=0")
    eq(metric(d, "runcast_sessions"), 3, "sessions gauge after the swap")
    check_error(d.post_json(spath("s5") + "/run", {"message": "five"}), 503, "POST a fifth session",
                code="too_many_sessions")


@test()
def test_max_subscribers_refuses_the_third_stream_with_503_until_one_leaves(t):
    d = t.daemon("--max-subscribers", "2")
    a = t.sse(d, spath("a") + "/run")
    b = t.sse(d, spath("b") + "/run")
    a.wait_retry()
    b.wait_retry()
    for sid in ("a", "c"):
        r = d.get(spath(sid) + "/run")
        check_error(r, 503, "third stream (session %s)" % sid, code="too_many_subscribers")
        eq(r.header("Retry-After"), "1", "Retry-After of the 503")
    eq(metric(d, "runcast_subscribers"), 2, "subscribers gauge at the cap")
    # the two streams keep working
    j, _, _ = post_run(d, "a", "to a !word-delay=0")
    a.wait_event("run.completed", 10, run_id=j["run_id"])
    a.close()
    wait_metric(d, "runcast_subscribers", 1, 3)
    c = t.sse(d, spath("c") + "/run")
    c.wait_retry()
    j, _, _ = post_run(d, "c", "to c !word-delay=0")
    c.wait_event("run.completed", 10, run_id=j["run_id"])
    check_error(d.get(spath("b") + "/run"), 503, "third stream again", code="too_many_subscribers")
    eq(task_status(d, "b")["subscribers"], 1, "b's subscriber still there")


@test(timeout=60)
def test_a_stalled_log_reader_never_stalls_the_loop_lines_are_dropped_and_counted(t):
    """The soak found this: with stderr a pipe nobody reads, a blocking log
    write froze every request. Now the backlog is bounded, what does not fit
    is dropped and counted, and the server keeps answering."""
    d = Daemon(t, ("--demo-word-delay", "0", "--log-level", "debug"), port=free_port(),
               stderr_held=True)
    posts = 0
    deadline = time.monotonic() + 30 * TIME_SCALE
    while metric(d, "runcast_log_lines_dropped_total") == 0:
        expect(time.monotonic() < deadline, "no log line dropped after %d POSTs" % posts)
        for _ in range(50):
            post_run(d, "lg%d" % (posts % 10), "a few words to log !word-delay=0")
            posts += 1
        t0 = time.monotonic()
        d.healthy()
        expect(time.monotonic() - t0 < 2.0 * TIME_SCALE,
               "/healthz took %.2fs with the log reader stalled" % (time.monotonic() - t0))
    dropped = metric(d, "runcast_log_lines_dropped_total")
    d.release_stderr()
    # Once the backlog has room again, a log.dropped line reports the drops.
    def reported():
        return sum(int(r["lines"]) for r in d.logs() if r.get("event") == "log.dropped")
    wait_until(lambda: reported() == metric(d, "runcast_log_lines_dropped_total"), 10 * TIME_SCALE,
               "log.dropped lines adding up to the counter (%r)" % reported())
    expect(reported() >= dropped, "reported %d dropped lines, the counter had %d" % (reported(), dropped))
    eq({r["level"] for r in d.logs() if r.get("event") == "log.dropped"}, {"warn"},
       "level of log.dropped")
    # And what is logged from now on arrives whole.
    post_run(d, "lg-after", "after the release")
    d.wait_log(lambda r: r.get("event") == "run.registered" and r.get("session") == "lg-after",
               10 * TIME_SCALE, "a line logged after the release")
