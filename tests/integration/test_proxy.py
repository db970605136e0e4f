"""Forwarding to the upstream (README: Forwarding to the upstream): every
route runcast does not own goes to --upstream unchanged, its answer comes
back streamed with bounded buffering, failures are 502/504 or a cut, the
access gate applies, and DELETE of a session ends runcast's and ADK's.

Against the real ADK (test_adk.AdkServer, and `adk web` for the dev UI)
where ADK can show it, compared byte for byte with the same request sent
to ADK directly; against a small fake upstream in this file for the rest
(hop-by-hop headers, bodies, stalls, cuts, SSE pacing)."""

import hashlib
import json
import os
import socket
import subprocess
import threading
import time

from harness import (DEFAULT_TIMEOUT, STORE, TestFailure, build_request, check_error, eq, expect,
                     fail, free_port, request, spath, test, wait_until)
from test_adk import ADK_CLI, ADK_DIR, AdkServer, shared_adk
from test_auth import SECRET, claims_for, mint


# ---------------------------------------------------------------- the fake upstream

class FakeRequest:
    def __init__(self, method, target, headers, body):
        self.method, self.target, self.headers, self.body = method, target, headers, body

    def header(self, name):
        vals = [v for k, v in self.headers if k.lower() == name.lower()]
        return vals[0] if vals else None

    def names(self):
        return set(k.lower() for k, _ in self.headers)


class FakeUpstream:
    """A threaded HTTP/1.1 server on a loopback port. handler(sock, req)
    writes the raw answer and returns True to keep the connection. Every
    request is recorded."""

    def __init__(self, t, handler=None, sndbuf=None):
        self.handler = handler or echo_handler
        self.requests = []
        self.lock = threading.Lock()
        self.sndbuf = sndbuf
        self.closed_conns = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.conns = []
        t.closers.append(self.stop)
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def stop(self):
        self.stopping = True
        for s in [self.sock] + self.conns:
            try:
                s.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass

    def seen(self):
        with self.lock:
            return list(self.requests)

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            if self.sndbuf:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = c.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = []
                for l in lines[1:]:
                    k, _, v = l.partition(":")
                    headers.append((k.strip(), v.strip()))
                req = FakeRequest(method, target, headers, b"")
                n = int(req.header("Content-Length") or 0)
                while len(buf) < n:
                    data = c.recv(65536)
                    if not data:
                        return
                    buf += data
                req.body, buf = buf[:n], buf[n:]
                with self.lock:
                    self.requests.append(req)
                if not self.handler(c, req):
                    return
        except OSError:
            pass
        finally:
            with self.lock:
                self.closed_conns += 1
            try:
                c.close()
            except OSError:
                pass


def answer(c, status, body=b"", headers=(), reason="OK"):
    h = "HTTP/1.1 %d %s\r\n" % (status, reason)
    for k, v in headers:
        h += "%s: %s\r\n" % (k, v)
    if not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        h += "Content-Length: %d\r\n" % len(body)
    c.sendall(h.encode("latin-1") + b"\r\n" + body)


def echo_handler(c, req):
    """JSON {method, target, body} of the request, plus hop-by-hop headers
    that must not reach the client."""
    body = json.dumps({"method": req.method, "target": req.target,
                       "body": req.body.decode("latin-1")}).encode()
    if req.method == "HEAD":
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1234\r\n\r\n")
        return True
    answer(c, 200, body, [("Content-Type", "application/json"), ("X-Kept", "yes"),
                          ("Connection", "keep-alive, X-Resp-Hop"), ("X-Resp-Hop", "1"),
                          ("Keep-Alive", "timeout=5"), ("Trailer", "X-T"),
                          ("Proxy-Authenticate", "Basic")])
    return True


def proxy_daemon(t, up, *args, env=None):
    return t.daemon(*args, upstream=up.url(), env=env)


def metric(d, name):
    r = request(d.port, "GET", "/metrics")
    for line in r.body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    fail("metric %s missing" % name)


def wait_forwards_freed(d):
    wait_until(lambda: metric(d, "runcast_forwarded_active") == 0
               and metric(d, "runcast_upstream_transfers") == 0, 10 * DEFAULT_TIMEOUT / 5,
               "runcast_forwarded_active and runcast_upstream_transfers back to 0")


def rss_kib(d):
    with open("/proc/%d/status" % d.proc.pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# ---------------------------------------------------------------- the fake: headers, methods, bodies

@test(timeout=30)
def test_proxy_methods_bodies_and_hop_by_hop_headers(t):
    up = FakeUpstream(t)
    d = proxy_daemon(t, up)
    target = "/some/path%20x/y.js?q=1&r=%2F&s"
    hdrs = {"Connection": "X-Req-Hop", "X-Req-Hop": "1", "Keep-Alive": "timeout=1", "TE": "trailers",
            "Upgrade": "h2c", "Proxy-Authorization": "Basic eA==", "X-Custom": "kept",
            "Content-Type": "text/plain", "X-Forwarded-For": "10.1.2.3"}
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        body = ("%s body" % method).encode()
        r = request(d.port, method, target, body=body, headers=hdrs)
        eq(r.status, 200, "%s status" % method)
        eq(r.json(), {"method": method, "target": target, "body": body.decode()}, "%s echo" % method)
        eq(r.header("X-Kept"), "yes", "%s: an end-to-end response header passes" % method)
        for name in ("X-Resp-Hop", "Keep-Alive", "Trailer", "Proxy-Authenticate"):
            eq(r.header(name), None, "%s: response hop-by-hop %s dropped" % (method, name))
        seen = up.seen()[-1]
        for name in ("connection", "x-req-hop", "keep-alive", "te", "upgrade",
                     "proxy-authorization", "expect", "transfer-encoding"):
            expect(name not in seen.names(), "%s: request header %s reached the upstream" % (method, name))
        eq(seen.header("X-Custom"), "kept", "%s: X-Custom" % method)
        eq(seen.header("Content-Type"), "text/plain", "%s: Content-Type" % method)
        eq(seen.header("Host"), "127.0.0.1:%d" % up.port, "%s: Host is the upstream's" % method)
        eq(seen.header("X-Forwarded-For"), "10.1.2.3, 127.0.0.1", "%s: X-Forwarded-For" % method)
        eq(seen.header("X-Forwarded-Proto"), "http", "%s: X-Forwarded-Proto" % method)
        eq(seen.header("X-Forwarded-Host"), "127.0.0.1", "%s: X-Forwarded-Host" % method)
        eq(seen.body, body, "%s: body" % method)
    # HEAD: the upstream's Content-Length, no body
    c = t.conn(d)
    c.send(build_request("HEAD", "/h", headers={"Connection": "close"}))
    r = c.read_response(head_request=True)
    eq(r.status, 200, "HEAD status")
    eq(r.header("Content-Length"), "1234", "HEAD keeps the upstream's Content-Length")
    eq(c.read_to_eof(time.monotonic() + DEFAULT_TIMEOUT), b"", "HEAD has no body")
    eq(up.seen()[-1].method, "HEAD", "HEAD forwarded as HEAD")
    wait_forwards_freed(d)


@test(timeout=30)
def test_proxy_body_echo_900k_exact_and_413_over_max_body(t):
    def handler(c, req):
        answer(c, 201, req.body, [("Content-Type", "application/octet-stream")])
        return True
    up = FakeUpstream(t, handler)
    d = proxy_daemon(t, up, "--max-body", "1m")
    body = bytes((i * 7 + 3) % 256 for i in range(900 * 1024))
    r = request(d.port, "PUT", "/blob", body=body, headers={"Content-Type": "application/octet-stream"},
                timeout=3 * DEFAULT_TIMEOUT)
    eq(r.status, 201, "900 KiB PUT status")
    eq(len(r.body), len(body), "echoed length")
    eq(hashlib.sha256(r.body).hexdigest(), hashlib.sha256(body).hexdigest(), "echoed bytes")
    n = len(up.seen())
    r = request(d.port, "POST", "/blob", body=b"x" * (1024 * 1024 + 1))
    check_error(r, 413, "over --max-body")
    eq(len(up.seen()), n, "the upstream never saw the refused body")


@test(timeout=30)
def test_proxy_refuses_dot_segments_and_odd_paths(t):
    up = FakeUpstream(t)
    d = proxy_daemon(t, up)
    for path in ("/a/../b", "/a/./b", "/..", "/a/%2e%2E/b", "/a/.%2e", "/a/%2E", "//x", "/a//b",
                 "/a%2fb", "/a%5cb", "/a%00b", "/a%zz", "/apps/x/users/%2e%2e/sessions"):
        c = t.conn(d)
        c.send(("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" % path).encode())
        check_error(c.read_response(), 400, "GET %s" % path, "invalid_path")
    eq(len(up.seen()), 0, "the upstream saw none of them")
    # runcast's own paths keep their 405; / is still the console
    check_error(request(d.port, "PUT", "/healthz"), 405, "PUT /healthz", "method_not_allowed")
    check_error(request(d.port, "POST", spath("s") + "/task-status"), 405, "POST task-status")
    check_error(request(d.port, "PUT", spath("s") + "/run"), 405, "PUT …/run")
    check_error(request(d.port, "POST", "/"), 405, "POST /")
    r = request(d.port, "GET", "/")
    eq(r.status, 200, "GET / status")
    expect((r.header("Content-Type") or "").startswith("text/html"), "GET / is runcast's console")
    eq(len(up.seen()), 0, "nothing of runcast's reached the upstream")


@test(timeout=60)
def test_proxy_large_response_is_streamed_with_bounded_buffering(t):
    total = 48 * 1024 * 1024
    piece = bytes(range(256)) * 256  # 64 KiB
    sent = [0]

    def handler(c, req):
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                  b"Content-Length: %d\r\n\r\n" % total)
        while sent[0] < total:
            c.sendall(piece)
            sent[0] += len(piece)
        return True
    up = FakeUpstream(t, handler, sndbuf=64 * 1024)
    d = proxy_daemon(t, up)
    rss0 = rss_kib(d)
    c = t.conn(d, rcvbuf=64 * 1024)
    c.send(build_request("GET", "/big"))
    _, status, _, headers = c.read_head()
    eq(status, 200, "status")
    expect(("Transfer-Encoding", "chunked") in headers, "a large answer is streamed chunked: %r" % headers)
    # The client reads nothing: the upstream's writes must stall.
    last = [-1, time.monotonic()]

    def stalled():
        if sent[0] != last[0]:
            last[0], last[1] = sent[0], time.monotonic()
        return time.monotonic() - last[1] > 1.0
    wait_until(stalled, 20, "the upstream's writes stall while the client reads nothing")
    expect(sent[0] <= 24 * 1024 * 1024,
           "runcast read %d bytes ahead of a client that reads nothing" % sent[0])
    grown = rss_kib(d) - rss0
    expect(grown < 8 * 1024, "runcast's RSS grew by %d KiB while stalled" % grown)
    # Now read it all: every byte arrives, in order.
    h = hashlib.sha256()
    got = 0
    deadline = time.monotonic() + 40
    expected = hashlib.sha256(piece * (total // len(piece))).hexdigest()
    while True:
        size = int(c.read_until(b"\r\n", deadline).strip(), 16)
        if size == 0:
            break
        h.update(c.read_exact(size, deadline))
        got += size
        c.read_exact(2, deadline)
    eq(got, total, "bytes relayed")
    eq(h.hexdigest(), expected, "the bytes are the upstream's")
    wait_forwards_freed(d)


@test(timeout=30)
def test_proxy_sse_events_arrive_one_by_one(t):
    got = [threading.Event() for _ in range(5)]

    def handler(c, req):
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        for i in range(5):
            ev = b"data: {\"n\": %d}\n\n" % i
            c.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
            if not got[i].wait(10):
                return False
        c.sendall(b"0\r\n\r\n")
        return True
    up = FakeUpstream(t, handler)
    d = proxy_daemon(t, up)
    c = t.conn(d)
    c.send(build_request("POST", "/run_sse_like", body=b"{}", headers={"Content-Type": "application/json"}))
    _, status, _, headers = c.read_head()
    eq(status, 200, "status")
    eq(dict(headers).get("Content-Type"), "text/event-stream", "content type")
    deadline = time.monotonic() + 10
    text = b""
    for i in range(5):
        while b"data: {\"n\": %d}\n\n" % i not in text:
            size = int(c.read_until(b"\r\n", deadline).strip(), 16)
            expect(size > 0, "the stream ended before event %d" % i)
            text += c.read_exact(size, deadline)
            c.read_exact(2, deadline)
        got[i].set()  # only now does the upstream send the next one
    eq(c.read_until(b"\r\n\r\n", deadline), b"0\r\n\r\n", "the stream ends normally")


@test(timeout=30)
def test_proxy_upstream_down_is_502_without_its_address(t):
    port = free_port()
    d = t.daemon(upstream="http://127.0.0.1:%d" % port)
    for method in ("GET", "POST"):
        r = request(d.port, method, "/list-apps", body=b"{}" if method == "POST" else None)
        err = check_error(r, 502, "%s with the upstream down" % method, "upstream_unreachable")
        expect(str(port) not in r.body.decode() and "127.0.0.1" not in r.body.decode(),
               "the 502 names the upstream's address: %r" % err)
    d.wait_log(lambda rec: rec.get("event") == "proxy.failed" and str(port) in rec.get("detail", ""),
               DEFAULT_TIMEOUT, "proxy.failed log line with libcurl's words")
    wait_forwards_freed(d)


@test(timeout=30)
def test_proxy_silent_upstream_is_504_and_a_cut_after_the_head_is_visible(t):
    def handler(c, req):
        if req.target == "/silent":
            time.sleep(20)
            return False
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000000\r\n\r\n")
        c.sendall(b"x" * 100000)
        return False  # closes: 900000 bytes missing
    up = FakeUpstream(t, handler)
    d = proxy_daemon(t, up, "--connect-timeout", "0.3s", "--first-event-timeout", "0.5s")
    t0 = time.monotonic()
    check_error(request(d.port, "GET", "/silent", timeout=10), 504, "no head in time", "upstream_timeout")
    elapsed = time.monotonic() - t0
    expect(0.6 < elapsed < 5, "504 after %.2fs, want about 0.8s" % elapsed)
    c = t.conn(d)
    c.send(build_request("GET", "/cut"))
    _, status, _, headers = c.read_head()
    eq(status, 200, "cut: status")
    expect(("Transfer-Encoding", "chunked") in headers, "cut: chunked")
    rest = c.read_to_eof(time.monotonic() + 10)
    expect(len(rest) > 100000 and not rest.endswith(b"0\r\n\r\n"),
           "cut: the client sees an incomplete body (%d bytes, ends %r)" % (len(rest), rest[-10:]))
    wait_forwards_freed(d)


@test(timeout=30)
def test_proxy_client_leaving_closes_the_upstream_connection(t):
    closed = threading.Event()

    def handler(c, req):
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for i in range(2000):
                ev = b"data: %d\n\n" % i
                c.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
                time.sleep(0.01)
        except OSError:
            closed.set()
        return False
    up = FakeUpstream(t, handler)
    d = proxy_daemon(t, up)
    c = t.conn(d)
    c.send(build_request("GET", "/ticks"))
    c.read_head()
    c.read_until(b"data: 3\n\n", time.monotonic() + 10)
    c.close()
    expect(closed.wait(10), "the upstream saw its connection closed after the client left")
    wait_forwards_freed(d)


@test(timeout=60)
def test_proxy_hundred_requests_at_once(t):
    up = FakeUpstream(t)
    d = proxy_daemon(t, up)
    results = [None] * 100

    def one(i):
        try:
            body = ("request %d " % i).encode() * (i + 1)
            r = request(d.port, "POST", "/n/%d?i=%d" % (i, i), body=body, timeout=30)
            results[i] = (r.status, r.json()) == (200, {"method": "POST", "target": "/n/%d?i=%d" % (i, i),
                                                        "body": body.decode()})
        except Exception as e:  # noqa: BLE001
            results[i] = repr(e)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(100)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(45)
    bad = [(i, r) for i, r in enumerate(results) if r is not True]
    eq(bad, [], "requests not answered correctly")
    eq(len(up.seen()), 100, "requests the upstream saw")
    wait_forwards_freed(d)


@test(timeout=30)
def test_proxy_pipelined_owned_and_forwarded_in_order(t):
    up = FakeUpstream(t)
    d = proxy_daemon(t, up)
    paths = [("GET", "/one"), ("GET", "/healthz"), ("POST", "/two"), ("GET", "/task-status"),
             ("GET", "/three?x=1"), ("GET", spath("p1") + "/task-status")]
    data = b"".join(build_request(m, p, body=b"b" if m == "POST" else None) for m, p in paths)
    c = t.conn(d)
    c.send(data)
    for m, p in paths:
        r = c.read_response()
        if p.startswith("/healthz") or p == "/task-status":
            eq(r.status, 200, "%s" % p)
            expect("status" in r.json() or "sessions" in r.json(), "%s is runcast's" % p)
        elif p.endswith("/task-status"):
            check_error(r, 404, p, "session_not_found")
        else:
            eq(r.status, 200, p)
            eq(r.json()["target"], p, "answer to %s in order" % p)
    eq([x.target for x in up.seen()], ["/one", "/two", "/three?x=1"], "what the upstream saw")


@test(timeout=30)
def test_proxy_cors_preflight_admin_listener_and_host(t):
    up = FakeUpstream(t)
    admin = free_port()
    d = proxy_daemon(t, up, "--allow-origin", "https://app.example",
                     "--admin-listen", "127.0.0.1:%d" % admin)
    pre = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    r = request(d.port, "OPTIONS", "/list-apps", headers=pre)
    eq(r.status, 204, "preflight answered by runcast")
    eq(r.header("Access-Control-Allow-Origin"), "https://app.example", "preflight ACAO")
    eq(len(up.seen()), 0, "the preflight was not forwarded")
    r = request(d.port, "OPTIONS", "/list-apps")
    eq(r.status, 200, "a plain OPTIONS is forwarded")
    eq(up.seen()[-1].method, "OPTIONS", "forwarded OPTIONS")
    r = request(d.port, "GET", "/list-apps", headers={"Origin": "https://app.example"})
    eq(r.status, 200, "cross-origin GET")
    eq([v for k, v in r.headers if k.lower() == "access-control-allow-origin"], ["https://app.example"],
       "one Access-Control-Allow-Origin, runcast's")
    check_error(request(d.port, "POST", "/x", body=b"{}", headers={"Origin": "https://evil.example"}),
                403, "a state-changing request from a refused origin", "origin_not_allowed")
    check_error(request(d.port, "GET", "/x", headers={"Host": "evil.example"}), 421,
                "a Host not allowed", "host_not_allowed")
    check_error(request(admin, "GET", "/list-apps"), 404, "forwarded route on --admin-listen",
                "not_found")
    eq(len(up.seen()), 2, "refused requests never reached the upstream")


@test(timeout=30)
def test_proxy_auth_jwt_gates_forwarded_requests(t):
    up = FakeUpstream(t)
    d = proxy_daemon(t, up, "--auth", "jwt", "--admin-claim", "admin",
                     env={"RUNCAST_JWT_SECRET": SECRET})
    alice = {"Authorization": "Bearer " + mint(claims_for("alice"))}
    admin = {"Authorization": "Bearer " + mint(claims_for("root", admin=True))}
    check_error(request(d.port, "GET", "/list-apps"), 401, "no token", "unauthorized")
    check_error(request(d.port, "GET", "/apps/a/users/bob/sessions", headers=alice), 403,
                "alice on bob's path", "forbidden")
    check_error(request(d.port, "GET", "/APPS/a/USERS/bob/sessions", headers=alice), 403,
                "alice on bob's path, other case", "forbidden")
    check_error(request(d.port, "GET", "/apps/a/users/b%6Fb/sessions", headers=alice), 403,
                "alice on bob's path, percent-encoded", "forbidden")
    check_error(request(d.port, "GET", spath("s9", user="bob"), headers=alice), 403,
                "alice GETs bob's session", "forbidden")
    eq(len(up.seen()), 0, "the upstream saw no refused request")
    eq(request(d.port, "GET", "/apps/a/users/alice/sessions", headers=alice).status, 200, "alice's path")
    eq(request(d.port, "GET", "/apps/a/users/al%69ce/sessions", headers=alice).status, 200,
       "alice's path, percent-encoded")
    eq(request(d.port, "GET", "/list-apps", headers=alice).status, 200, "a path of no user")
    eq(request(d.port, "GET", "/list-apps?access_token=" + alice["Authorization"][7:]).status, 200,
       "token in the query")
    eq(request(d.port, "GET", "/apps/a/users/bob/sessions", headers=admin).status, 200,
       "an admin token reads any user's path")
    eq([r.target.split("?")[0] for r in up.seen()],
       ["/apps/a/users/alice/sessions", "/apps/a/users/al%69ce/sessions", "/list-apps", "/list-apps",
        "/apps/a/users/bob/sessions"], "what the upstream saw")


@test(timeout=30)
def test_proxy_delete_session_policy(t):
    def handler(c, req):
        if req.method == "DELETE" and req.target.endswith("/adk-only"):
            answer(c, 204, b"")
        elif req.method == "DELETE" and req.target.endswith("/both"):
            answer(c, 500, b"oops")
        elif req.method == "DELETE":
            answer(c, 404, b'{"error":"Session not found"}', [("Content-Type", "application/json")])
        else:  # session creation and /run_sse for runcast's own runs
            answer(c, 200, b'{"id":"%s"}' % req.target.rsplit("/", 1)[-1].encode(),
                   [("Content-Type", "application/json")])
        return True
    up = FakeUpstream(t, handler)
    d = proxy_daemon(t, up)
    # runcast knows "both" (a stream created it); the upstream fails: runcast's 200
    c = t.conn(d)
    c.send(build_request("GET", spath("both") + "/run"))
    eq(c.read_head()[1], 200, "stream opened")
    r = request(d.port, "DELETE", spath("both"))
    eq(r.status, 200, "runcast knew it")
    eq(r.json()["session_id"], "both", "runcast's answer")
    d.wait_log(lambda rec: rec.get("event") == "session.upstream_delete" and rec.get("status") == "500",
               DEFAULT_TIMEOUT, "warning for the upstream's 500")
    # only the upstream knows it: its 204 verbatim
    r = request(d.port, "DELETE", spath("adk-only"))
    eq((r.status, r.body, r.header("Transfer-Encoding")), (204, b"", None), "the upstream's 204")
    # neither: runcast's 404
    check_error(request(d.port, "DELETE", spath("nobody")), 404, "neither knew it", "session_not_found")
    eq([x.method + " " + x.target for x in up.seen()],
       ["DELETE " + spath("both"), "DELETE " + spath("adk-only"), "DELETE " + spath("nobody")],
       "each DELETE went upstream once")
    up.stop()
    check_error(request(d.port, "DELETE", spath("gone")), 502, "unknown and the upstream down",
                "upstream_unreachable")


# ---------------------------------------------------------------- the real ADK

def adk_pair(t, adk):
    return t.daemon(upstream=adk.url())


def same(t, d, adk, method, path, body=None, what=None):
    """The same request to runcast and to ADK: equal status and body."""
    h = {"Content-Type": "application/json"} if body is not None else None
    a = request(d.port, method, path, body=body, headers=h)
    b = request(adk.port, method, path, body=body, headers=h)
    eq((a.status, a.body), (b.status, b.body), what or "%s %s through runcast vs direct" % (method, path))
    return a


@test(timeout=90)
def test_proxy_adk_routes_match_direct(t):
    adk = shared_adk()
    d = adk_pair(t, adk)
    same(t, d, adk, "GET", "/list-apps")
    same(t, d, adk, "GET", "/version")
    same(t, d, adk, "GET", "/apps/echo/users/pu/sessions/missing-1")
    u = "pu%d" % os.getpid()
    # create by path, through runcast; by body, through runcast
    r = request(d.port, "POST", "/apps/echo/users/%s/sessions/p1" % u, body=b"{}",
                headers={"Content-Type": "application/json"})
    eq(r.status, 200, "create by path (body %r)" % r.body[:200])
    eq(r.json()["id"], "p1", "created id")
    r = request(d.port, "POST", "/apps/echo/users/%s/sessions" % u, body=b'{"state": {"k": 1}}',
                headers={"Content-Type": "application/json"})
    eq(r.status, 200, "create by body")
    body_id = r.json()["id"]
    same(t, d, adk, "GET", "/apps/echo/users/%s/sessions/p1" % u)
    same(t, d, adk, "GET", "/apps/echo/users/%s/sessions/%s" % (u, body_id))
    same(t, d, adk, "GET", "/apps/echo/users/%s/sessions" % u)
    eq(adk.session_ids("echo", u), sorted(["p1", body_id]), "ADK's sessions")
    # a session runcast also knows: a run through runcast, then ADK's GET through runcast
    r = request(d.port, "POST", "/apps/echo/users/%s/sessions/both/run" % u, body=b'{"message": "hi"}',
                headers={"Content-Type": "application/json"})
    eq(r.status, 202, "run")
    wait_until(lambda: (request(d.port, "GET", "/apps/echo/users/%s/sessions/both/task-status" % u)
                        .json().get("status")) == "completed", 30, "the run completed")
    a = same(t, d, adk, "GET", "/apps/echo/users/%s/sessions/both" % u)
    expect(len(a.json()["events"]) >= 2, "ADK's session holds the run's events")
    # DELETE: runcast's answer, and both are gone
    r = request(d.port, "DELETE", "/apps/echo/users/%s/sessions/both" % u)
    eq(r.status, 200, "DELETE a session both knew")
    eq(r.json()["session_id"], "both", "runcast's answer")
    eq(request(adk.port, "GET", "/apps/echo/users/%s/sessions/both" % u).status, 404,
       "ADK's session is gone")
    check_error(request(d.port, "GET", "/apps/echo/users/%s/sessions/both/task-status" % u), 404,
                "runcast's session is gone", "session_not_found")
    # DELETE of a session only ADK knows: ADK's answer verbatim
    r = request(d.port, "DELETE", "/apps/echo/users/%s/sessions/p1" % u)
    eq((r.status, r.body), (204, b""), "ADK's own DELETE answer")
    eq(adk.session_ids("echo", u), [body_id], "ADK's sessions after the deletes")
    wait_forwards_freed(d)


class AdkWeb(AdkServer):
    """`adk web`: the api_server plus the dev UI's static files at /dev-ui/."""

    def start(self):
        import tempfile
        self.log = tempfile.TemporaryFile()
        env = dict(os.environ)
        env.pop("DATABASE_URL", None)
        self.proc = subprocess.Popen(
            ["node", ADK_CLI, "web", "--host", "127.0.0.1", "--port", str(self.port),
             "--compile", "false", "--bundle", "false", "--session_service_uri", "memory://",
             "agents"],
            cwd=ADK_DIR, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            env=env, start_new_session=True)
        try:
            wait_until(self._ready, 60, "adk web on port %d" % self.port, interval=0.05)
        except TestFailure as e:
            self.stop()
            fail("%s:\n%s" % (e, self.tail()))


@test(timeout=120)
def test_proxy_adk_web_dev_ui_through_runcast(t):
    web = AdkWeb()
    t.closers.append(web.stop)
    d = adk_pair(t, web)
    direct = request(web.port, "GET", "/dev-ui/")
    eq(direct.status, 200, "ADK's dev UI index (direct)")
    r = request(d.port, "GET", "/dev-ui/")
    eq((r.status, r.body), (direct.status, direct.body), "/dev-ui/ through runcast")
    import re
    scripts = re.findall(rb'src="([^"]+\.js)"', direct.body)
    expect(scripts, "the dev UI names its scripts: %r" % direct.body[:300])
    asset = "/dev-ui/" + scripts[0].decode().lstrip("./")
    a = request(web.port, "GET", asset)
    eq(a.status, 200, "asset %s direct" % asset)
    b = request(d.port, "GET", asset, timeout=20)
    eq((b.status, len(b.body), b.body == a.body), (200, len(a.body), True), "asset %s through runcast" % asset)
    eq(b.header("Content-Type"), a.header("Content-Type"), "asset Content-Type")
    r = request(d.port, "GET", "/")
    eq(r.status, 200, "/ is runcast's console, not ADK's redirect")
    expect(b"runcast" in r.body.lower(), "runcast's console page")
