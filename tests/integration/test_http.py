"""Bad input and HTTP/1.1 edge cases: every rejection has its status and the
JSON error shape, and the daemon keeps answering afterwards."""

import json
import os
import re
import time

from harness import (Conn, build_request, check_error, demo_call, eq, expect, post_run,
                     raw_exchange, request, spath, task_status, test, wait_until)

RUN = spath("s1") + "/run"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def post_raw_body(d, path, body, ctype="application/json"):
    return request(d.port, "POST", path, body=body, headers={"Content-Type": ctype})


@test()
def test_invalid_and_non_object_json_bodies_are_400(t):
    d = t.daemon()
    for body in (b"{bad", b"", b"{\"message\": \"x\"", b"\xff\xfe", b"[1, 2]", b"\"text\"", b"42",
                 b"null", b"{\"message\": \"x\"} trailing"):
        r = post_raw_body(d, RUN, body)
        check_error(r, 400, "POST body %r" % body)
        d.healthy()
    task_status(d, "s1", expect_status=404)


@test()
def test_empty_or_missing_message_is_400(t):
    d = t.daemon()
    for obj in ({"message": ""}, {}, {"foo": "bar"}, {"query": ""}, {"message": 42},
                {"message": None}, {"newMessage": {"role": "user", "parts": []}},
                {"newMessage": {"role": "user", "parts": [{"text": ""}]}}, {"newMessage": "hi"}):
        r = d.post_json(RUN, obj)
        check_error(r, 400, "POST %r" % obj)
        d.healthy()
    eq(demo_call(d, "s1"), [], "upstream calls after rejected POSTs")


@test()
def test_bad_path_params_are_400(t):
    d = t.daemon()
    long_ = "a" * 129
    for path in (spath(long_) + "/run", spath(long_) + "/task-status", spath("bad$name") + "/run",
                 spath("bad$name") + "/task-status", spath(long_), spath("s", app="b@d") + "/run",
                 spath("s", user="a" * 129) + "/task-status", spath("sp%20ace") + "/task-status"):
        for method in ("GET", "POST", "DELETE"):
            is_run, is_status = path.endswith("/run"), path.endswith("/task-status")
            if method == "POST" and not is_run:
                continue
            if method == "DELETE" and is_status:
                continue
            if method == "GET" and not (is_run or is_status):
                continue
            body = json.dumps({"message": "hi"}).encode() if method == "POST" else None
            r = request(d.port, method, path, body=body,
                        headers={"Content-Type": "application/json"} if body else None)
            check_error(r, 400, "%s %s" % (method, path[:60]))
        d.healthy()
    # 128 characters is still a valid name: an unknown session, not a bad one
    task_status(d, "a" * 128, expect_status=404)
    j, _, _ = post_run(d, "A-z_0.9" + "b" * 121, "ok !word-delay=0")
    eq(len(j["session_id"]), 128, "128-char session id accepted")


@test()
def test_unknown_route_is_forwarded_to_the_upstream(t):
    """Paths runcast does not own go to the upstream (README: Forwarding to
    the upstream): here the demo agent, whose 404 comes back verbatim."""
    d = t.daemon()
    for path in ("/nope", "/apps/a/users/u/sessions/s/other", "/apps/a/users/u", "/task-status/x",
                 "/healthz/x", "/apps/a/users/u/sessions/s/run/x"):
        r = d.get(path)
        eq((r.status, r.json()), (404, {"detail": "Not Found"}), "GET %s: the demo agent's 404" % path)
    r = d.get(spath("s1"))
    eq((r.status, r.json()), (404, {"detail": "Session not found"}),
       "GET of a session path is ADK's get-session: the demo agent's answer")
    d.healthy()


@test()
def test_wrong_method_is_405_with_allow(t):
    d = t.daemon()
    cases = [("PUT", RUN, {"GET", "POST", "DELETE"}),
             ("PATCH", RUN, {"GET", "POST", "DELETE"}),
             ("POST", "/healthz", {"GET"}),
             ("DELETE", "/task-status", {"GET"}),
             ("POST", spath("s1") + "/task-status", {"GET"}),
             ("POST", "/", {"GET", "HEAD"})]
    for method, path, must in cases:
        r = request(d.port, method, path, body=b"{}" if method in ("PUT", "PATCH", "POST") else None)
        check_error(r, 405, "%s %s" % (method, path))
        allow = r.header("Allow")
        expect(allow is not None, "%s %s: no Allow header" % (method, path))
        got = {m.strip() for m in allow.split(",")}
        expect(must <= got, "%s %s: Allow %r lacks %r" % (method, path, allow, must - got))
        expect(method not in got, "%s %s: Allow %r lists the method" % (method, path, allow))
        d.healthy()


@test()
def test_body_over_max_body_is_413(t):
    d = t.daemon("--max-body", "1k")
    body = json.dumps({"message": "x" * 2000}).encode()
    check_error(post_raw_body(d, RUN, body), 413, "POST 2k body with --max-body 1k")
    d.healthy()
    # chunked: the decoded size counts
    c = Conn(d.port)
    try:
        head = ("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Transfer-Encoding: chunked\r\n\r\n" % RUN).encode()
        c.send(head)
        for i in range(0, len(body), 500):
            part = body[i:i + 500]
            try:
                c.send(b"%x\r\n%s\r\n" % (len(part), part))
            except OSError:
                break
        try:
            c.send(b"0\r\n\r\n")
        except OSError:
            pass
        check_error(c.read_response(), 413, "chunked 2k body with --max-body 1k")
    finally:
        c.close()
    d.healthy()
    # just under the limit is fine
    ok = json.dumps({"message": "y" * 900 + " !word-delay=0"}).encode()
    expect(len(ok) <= 1024, "test body too big")
    r = post_raw_body(d, RUN, ok)
    eq(r.status, 202, "POST %d-byte body" % len(ok))


@test()
def test_head_over_max_header_is_431(t):
    d = t.daemon("--max-header", "4k")
    r = request(d.port, "GET", "/healthz", headers={"X-Big": "a" * 8000})
    check_error(r, 431, "8k header with --max-header 4k")
    d.healthy()
    many = {"X-H%d" % i: "v" for i in range(200)}
    r = request(d.port, "GET", "/healthz", headers=many)
    check_error(r, 431, "200 headers")
    d.healthy()
    r = request(d.port, "GET", "/healthz", headers={"X-Ok": "a" * 3000})
    eq(r.status, 200, "3k header under --max-header 4k")


@test()
def test_very_long_uri_is_414(t):
    d = t.daemon("--max-header", "1m")
    r = request(d.port, "GET", "/healthz?x=" + "a" * 100000)
    check_error(r, 414, "100k request-target")
    d.healthy()
    d2 = t.daemon()
    r = request(d2.port, "GET", "/healthz?x=" + "a" * 12000)
    check_error(r, 414, "12k request-target with the default --max-header")
    d2.healthy()


@test()
def test_smuggling_shapes_are_400_and_close_the_connection(t):
    d = t.daemon()
    body = b'{"message":"hi"}'
    cases = {
        "TE+CL": b"POST " + RUN.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % (len(body) + 7)
                 + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body),
        "two Content-Length": b"POST " + RUN.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                              b"Content-Type: application/json\r\nContent-Length: %d\r\n"
                              b"Content-Length: %d\r\n\r\n%s" % (len(body), len(body) + 1, body + b"x"),
        "obs-fold": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n  b\r\n\r\n",
        "bare LF": b"GET /healthz HTTP/1.1\nHost: x\n\n",
        "bare LF in a header": b"GET /healthz HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n",
        "space before colon": b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length : 0\r\n\r\n",
        "bad Content-Length": b"POST " + RUN.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                              b"Content-Length: +5\r\n\r\nhello",
        "TE not chunked-last": b"POST " + RUN.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                               b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    }
    for name, data in cases.items():
        c = Conn(d.port)
        try:
            c.send(data)
            r = c.read_response()
            expect(r.status in (400, 501) if name == "TE not chunked-last" else r.status == 400,
                   "%s: status %d %r" % (name, r.status, r.body[:200]))
            check_error(r, r.status, name)
            expect(c.wait_eof(2), "%s: connection not closed after the error" % name)
        finally:
            c.close()
        d.healthy()
    eq(demo_call(d, "s1"), [], "upstream calls after smuggling attempts")


@test()
def test_chunked_post_body_is_decoded_and_accepted(t):
    d = t.daemon()
    msg = "chunked hello !word-delay=0"
    body = json.dumps({"message": msg}).encode()
    parts = [body[:7], body[7:19], body[19:]]
    data = ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" % RUN).encode()
    for p in parts:
        data += b"%x;ext=1\r\n%s\r\n" % (len(p), p) if p is parts[1] else b"%x\r\n%s\r\n" % (len(p), p)
    data += b"0\r\n\r\n"
    r = raw_exchange(d.port, data)
    eq(r.status, 202, "chunked POST status (%r)" % r.body[:200])
    rid = r.json()["run_id"]
    wait_until(lambda: not task_status(d, "s1")["has_task"], 5, "the chunked POST's run to end")
    st = task_status(d, "s1")
    eq((st["run_id"], st["status"]), (rid, "completed"), "run of the chunked POST")
    eq([c["text"] for c in demo_call(d, "s1")], [msg], "message received upstream")


@test()
def test_slow_head_gets_408_while_others_are_served(t):
    d = t.daemon("--head-timeout", "0.3")
    slow = Conn(d.port)
    t.closers.append(slow.close)
    t0 = time.monotonic()
    slow.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    for _ in range(3):
        t1 = time.monotonic()
        r = request(d.port, "GET", "/healthz")
        eq(r.status, 200, "other client's /healthz")
        expect(time.monotonic() - t1 < 0.25, "other client took %.3fs" % (time.monotonic() - t1))
    r = slow.read_response(timeout=3)
    elapsed = time.monotonic() - t0
    check_error(r, 408, "slow head")
    expect(0.25 <= elapsed <= 2.0, "408 after %.3fs with --head-timeout 0.3" % elapsed)
    expect(slow.wait_eof(2), "connection not closed after 408")
    # a slow body counts too
    slow2 = Conn(d.port)
    t.closers.append(slow2.close)
    t0 = time.monotonic()
    slow2.send(("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Content-Length: 100\r\n\r\n{\"mess" % RUN).encode())
    r = slow2.read_response(timeout=3)
    check_error(r, 408, "slow body")
    expect(time.monotonic() - t0 <= 2.0, "slow body 408 after %.3fs" % (time.monotonic() - t0))
    d.healthy()


@test()
def test_keepalive_and_pipelined_requests_are_answered_in_order(t):
    d = t.daemon()
    c = t.conn(d)
    # keep-alive: sequential requests on one connection
    for _ in range(3):
        c.send(build_request("GET", "/healthz"))
        r = c.read_response()
        eq(r.status, 200, "keep-alive /healthz")
        expect((r.header("Connection") or "").lower() != "close", "server closed a keep-alive connection")
    # three pipelined GET /healthz in one write
    c.send(build_request("GET", "/healthz") * 3)
    for i in range(3):
        eq(c.read_response().status, 200, "pipelined /healthz %d" % i)
    # mixed pipeline: order is visible in the answers
    body = json.dumps({"message": "piped !word-delay=0"}).encode()
    c.send(build_request("GET", "/nope")
           + build_request("POST", RUN, body, {"Content-Type": "application/json"})
           + build_request("GET", spath("s1") + "/task-status")
           + build_request("GET", "/healthz"))
    r = c.read_response()
    eq((r.status, r.json()), (404, {"detail": "Not Found"}), "pipelined 1: /nope (forwarded)")
    r = c.read_response()
    eq(r.status, 202, "pipelined 2: POST run")
    rid = r.json()["run_id"]
    r = c.read_response()
    eq(r.status, 200, "pipelined 3: task-status")
    eq(r.json()["run_id"], rid, "pipelined 3: task-status run_id")
    eq(c.read_response().status, 200, "pipelined 4: /healthz")
    # split across writes, byte by byte
    for b in build_request("GET", "/healthz"):
        c.send(bytes([b]))
    eq(c.read_response().status, 200, "byte-by-byte /healthz")
    # Connection: close is honoured
    c.send(build_request("GET", "/healthz", headers={"Connection": "close"}))
    eq(c.read_response().status, 200, "Connection: close request")
    expect(c.wait_eof(2), "connection not closed after Connection: close")


@test()
def test_health_ready_metrics_and_console_answer(t):
    d = t.daemon()
    eq(d.get("/healthz").status, 200, "/healthz")
    eq(d.get("/readyz").status, 200, "/readyz")
    r = d.get("/metrics")
    eq(r.status, 200, "/metrics")
    expect((r.header("Content-Type") or "").startswith("text/plain"), "metrics Content-Type %r"
           % r.header("Content-Type"))
    text = r.body.decode()
    for name in ("runcast_task_execution_delay_seconds", "runcast_time_to_first_event_seconds",
                 "runcast_run_duration_seconds", "runcast_runs_total", "runcast_events_total",
                 "runcast_subscribers_dropped_total", "runcast_upstream_errors_total",
                 "runcast_http_requests_total", "runcast_runs_active", "runcast_runs_queued",
                 "runcast_sessions", "runcast_subscribers"):
        expect(name in text, "/metrics lacks %s" % name)
    r = d.get("/")
    eq(r.status, 200, "GET /")
    expect((r.header("Content-Type") or "").startswith("text/html"), "console Content-Type %r"
           % r.header("Content-Type"))


@test()
def test_console_files_are_embedded_with_csp_and_etags(t):
    d = t.daemon()
    root = d.get("/")
    eq(root.status, 200, "GET /")
    csp = root.header("Content-Security-Policy") or ""
    for directive in ("default-src 'none'", "script-src 'self'", "style-src 'self'",
                      "connect-src 'self'", "frame-ancestors 'none'"):
        expect(directive in csp, "CSP %r lacks %s" % (csp, directive))
    eq(root.header("X-Content-Type-Options"), "nosniff", "nosniff on /")
    expect(b'src="/console/app.js"' in root.body, "index.html refers to /console/app.js")
    for path, ctype in (("/console/app.js", "text/javascript; charset=utf-8"),
                        ("/console/app.css", "text/css; charset=utf-8"),
                        ("/console/favicon.svg", "image/svg+xml")):
        r = d.get(path)
        eq(r.status, 200, path)
        eq(r.header("Content-Type"), ctype, path + " Content-Type")
        eq(r.header("Content-Security-Policy"), csp, path + " CSP")
        with open(os.path.join(ROOT, "web", os.path.basename(path)), "rb") as f:
            eq(r.body, f.read(), path + " is web/" + os.path.basename(path) + " byte for byte")
        etag = r.header("ETag") or ""
        expect(re.fullmatch(r'"[0-9a-f]{20}"', etag) is not None, "%s ETag %r" % (path, etag))
        again = d.get(path, headers={"If-None-Match": 'W/"other", ' + etag})
        eq(again.status, 304, path + " revalidated with its ETag")
        eq(again.body, b"", path + " 304 body")
        eq(d.get(path, headers={"If-None-Match": '"other"'}).status, 200, path + " another ETag")
    head = request(d.port, "HEAD", "/")
    eq(head.status, 200, "HEAD /")
    eq(head.header("Content-Length"), str(len(root.body)), "HEAD / Content-Length")
    err = check_error(d.get("/console/missing.js"), 404, "unknown console file", "not_found")
    eq(err["message"], "no such console file", "404 message")
    check_error(d.get("/console/index.html"), 404, "index.html is served only at /", "not_found")
    check_error(d.get("/console/a%20b"), 400, "a console name outside [A-Za-z0-9_.-]")
    r = request(d.port, "POST", "/console/app.js")
    check_error(r, 405, "POST a console file", "method_not_allowed")
    eq(r.header("Allow"), "GET, HEAD", "Allow of a console file")


@test()
def test_unsupported_version_and_garbage_request_line(t):
    d = t.daemon()
    r = raw_exchange(d.port, b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n")
    check_error(r, 505, "HTTP/2.0 request line")
    d.healthy()
    for data in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", b"GET\r\n\r\n",
                 b"GET /healthz\r\n\r\n", b"GET  /healthz HTTP/1.1\r\nHost: x\r\n\r\n"):
        r = raw_exchange(d.port, data)
        check_error(r, 400, "request %r" % data[:30])
        d.healthy()


@test()
def test_head_answers_have_the_get_head_and_no_body(t):
    d = t.daemon()
    c = t.conn(d)
    for path, status in (("/healthz", 200), ("/readyz", 200), ("/", 200),
                         ("/console/app.js", 200), ("/nope", 404), (RUN, 405)):
        get = request(d.port, "GET", path) if status != 405 else None
        # HEAD and a GET pipelined in one write: a body after the HEAD's
        # head would be read as the GET's answer
        c.send(build_request("HEAD", path) + build_request("GET", "/healthz"))
        r = c.read_response(head_request=True)
        eq(r.status, status, "HEAD %s status" % path)
        cl = r.header("Content-Length")
        expect(cl is not None, "HEAD %s: no Content-Length" % path)
        if get is not None:
            eq(get.status, status, "GET %s status" % path)
            eq(int(cl), len(get.body), "HEAD %s Content-Length vs the GET body" % path)
            eq(r.header("Content-Type"), get.header("Content-Type"), "HEAD %s Content-Type" % path)
        if status == 405:
            expect("GET" in (r.header("Allow") or ""), "HEAD %s Allow: %r" % (path, r.header("Allow")))
        nxt = c.read_response()
        eq((nxt.status, nxt.json()["status"]), (200, "ok"), "the GET after HEAD %s" % path)


@test()
def test_http11_without_host_or_with_two_hosts_is_400(t):
    d = t.daemon()
    for name, raw in (
            ("no Host", b"GET /healthz HTTP/1.1\r\n\r\n"),
            ("two Hosts", b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"),
            ("two Hosts, HTTP/1.0", b"GET /healthz HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"),
            ("a Host list", b"GET /healthz HTTP/1.1\r\nHost: a, b\r\n\r\n"),
            ("no Host, a body", ("POST %s HTTP/1.1\r\nContent-Type: application/json\r\n"
                                 "Content-Length: 17\r\n\r\n{\"message\": \"x\"}" % RUN).encode())):
        c = t.conn(d)
        c.send(raw)
        r = c.read_response()
        check_error(r, 400, name, "invalid_host")
        eq(r.header("Connection"), "close", "%s: Connection" % name)
        expect(c.wait_eof(2), "%s: connection not closed" % name)
    task_status(d, "s1", expect_status=404)  # the POST without Host started nothing
    r = raw_exchange(d.port, b"GET /healthz HTTP/1.0\r\n\r\n")
    eq(r.status, 200, "HTTP/1.0 without Host")
    d.healthy()
