"""Access control over real sockets: JWT bound to the path's user (valid,
another user, none, garbage, expired, not yet valid, wrong audience and
issuer, alg none, HS/RS confusion), tokens from the header, the query and a
cookie, a stream cut at exp and resumed with a fresh token, CORS preflight
and disallowed origins, admin tokens and --admin-listen, per-user caps on
runs and streams, the warning for an open public listener, and no token or
secret in any log line.

Tokens are minted with build/tests/jwt-mint (libjwt, the library runcast
verifies with); RSA and EC keys are made with the openssl CLI in a
temporary directory."""

import atexit
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time

from harness import (RUNCAST_BIN, DEFAULT_TIMEOUT, check_error, eq, expect, fail, free_port,
                     request, spath, terminal_events, test, wait_until)

MINT = os.path.join(os.path.dirname(os.path.abspath(RUNCAST_BIN)), "tests", "jwt-mint")
SECRET = "integration-secret-0123456789-abcdefghij"
JSON_HEADERS = {"Content-Type": "application/json"}


# ---------------------------------------------------------------- keys and tokens

class Keys:
    """A temporary directory with the HMAC secret and RSA / EC key pairs,
    made once for the whole module and removed at exit."""

    _lock = threading.Lock()
    _dir = None

    @classmethod
    def path(cls, name):
        with cls._lock:
            if cls._dir is None:
                d = tempfile.mkdtemp(prefix="runcast-auth-")
                atexit.register(shutil.rmtree, d, True)
                with open(os.path.join(d, "secret"), "w") as f:
                    f.write(SECRET)
                cls._openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                             "-out", os.path.join(d, "rsa.pem"))
                cls._openssl("pkey", "-in", os.path.join(d, "rsa.pem"), "-pubout",
                             "-out", os.path.join(d, "rsa.pub.pem"))
                cls._openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                             "-out", os.path.join(d, "ec.pem"))
                cls._openssl("pkey", "-in", os.path.join(d, "ec.pem"), "-pubout",
                             "-out", os.path.join(d, "ec.pub.pem"))
                cls._dir = d
            return os.path.join(cls._dir, name)

    @staticmethod
    def _openssl(*args):
        r = subprocess.run(["openssl"] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=60)
        if r.returncode != 0:
            fail("openssl %s failed: %s" % (" ".join(args), r.stderr.decode(errors="replace")))


def mint(claims, alg="HS256", key="secret", header=None):
    """A token from jwt-mint: alg, the key file's name in Keys, claims."""
    expect(os.path.exists(MINT), "jwt-mint not built: %s" % MINT)
    argv = [MINT, alg, Keys.path(key) if alg != "none" else "-", json.dumps(claims)]
    if header is not None:
        argv.append(json.dumps(header))
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    if r.returncode != 0:
        fail("jwt-mint %s failed: %s" % (alg, r.stderr.decode(errors="replace")))
    return r.stdout.decode().strip()


def claims_for(user, ttl=600, **extra):
    c = {"sub": user, "exp": int(time.time()) + ttl}
    c.update(extra)
    return c


def bearer(token):
    return {"Authorization": "Bearer " + token}


def jwt_daemon(t, *args, env=None):
    e = {"RUNCAST_JWT_SECRET": SECRET}
    if env:
        e.update(env)
    return t.daemon("--auth", "jwt", *args, env=e)


def post(d, path, message, headers=None):
    h = dict(JSON_HEADERS)
    h.update(headers or {})
    return request(d.port, "POST", path, body=json.dumps({"message": message}).encode(), headers=h)


def check_401(resp, what, code):
    err = check_error(resp, 401, what, code)
    www = resp.header("WWW-Authenticate") or ""
    expect(www.startswith("Bearer"), "%s: WWW-Authenticate is %r" % (what, www))
    return err


def no_secrets_logged(d, *secrets):
    """No log line holds a token or the secret, nor a long part of one."""
    with d.cond:
        lines = list(d.lines)
    for s in secrets:
        for part in (s, s[-24:]):
            for line in lines:
                expect(part not in line, "a log line holds a secret or token: %r" % line)


# ---------------------------------------------------------------- tokens

@test(timeout=30)
def test_jwt_valid_token_other_user_none_and_garbage(t):
    d = jwt_daemon(t)
    alice = mint(claims_for("alice"))
    bob = mint(claims_for("bob"))
    run_path = spath("s1", user="alice") + "/run"

    r = post(d, run_path, "hello alice", bearer(alice))
    eq(r.status, 202, "POST with alice's token")
    run_id = r.json()["run_id"]
    s = t.sse(d, run_path, headers=bearer(alice))
    s.wait_event("run.completed", run_id=run_id, timeout=DEFAULT_TIMEOUT * 2)
    st = d.get(spath("s1", user="alice") + "/task-status", headers=bearer(alice))
    eq(st.status, 200, "task-status with alice's token")
    eq(st.json()["run_id"], run_id, "task-status run_id")

    # bob's valid token on alice's session: 403 on every session route
    for method, path in (("POST", run_path), ("GET", run_path), ("DELETE", run_path),
                         ("GET", spath("s1", user="alice") + "/task-status"),
                         ("DELETE", spath("s1", user="alice"))):
        body = json.dumps({"message": "x"}).encode() if method == "POST" else None
        r = request(d.port, method, path, body=body, headers=dict(bearer(bob), **JSON_HEADERS))
        check_error(r, 403, "%s %s with bob's token" % (method, path), "forbidden")
    eq(len(terminal_events(s.snapshot(), run_id)), 1, "alice's run ended once, untouched by bob")

    # no token: 401 unauthorized + WWW-Authenticate: Bearer
    for method, path in (("POST", run_path), ("GET", run_path),
                         ("GET", spath("s1", user="alice") + "/task-status")):
        body = json.dumps({"message": "x"}).encode() if method == "POST" else None
        r = request(d.port, method, path, body=body, headers=JSON_HEADERS)
        check_401(r, "%s %s without a token" % (method, path), "unauthorized")
        eq(r.header("WWW-Authenticate"), 'Bearer realm="runcast"', "WWW-Authenticate")

    # garbage of every shape and length: 401 invalid_token, never a crash
    garbage = ["x", "a.b.c", "....", "Zm9v.YmFy.YmF6", "e30.e30.e30", "\u00e9t\u00e9".encode().hex(),
               "A" * 4000, ".".join(["QUFB" * 1000] * 3), alice[:-3], alice + "x",
               alice.replace(".", "..", 1)]
    for g in garbage:
        r = d.get(spath("s1", user="alice") + "/task-status", headers=bearer(g))
        err = check_401(r, "garbage token of %d bytes" % len(g), "invalid_token")
        expect(g not in err["message"] and g[:12] not in err["message"],
               "the error message echoes the token: %r" % err)
        expect('error="invalid_token"' in r.header("WWW-Authenticate"), "error=invalid_token")
    r = d.get(spath("s1", user="alice") + "/task-status", headers={"Authorization": "Basic YTpi"})
    check_401(r, "Basic credentials", "invalid_token")
    r = d.get(spath("s1", user="alice") + "/task-status?access_token=" + "A" * 8000)
    check_401(r, "an 8000-byte query token", "invalid_token")
    r = d.get(spath("s1", user="alice") + "/task-status", headers=bearer("A.B." + "C" * 9000))
    check_401(r, "a token over the 8192-byte cap", "invalid_token")

    # open routes stay open
    eq(d.get("/healthz").status, 200, "/healthz without a token")
    eq(d.get("/readyz").status, 200, "/readyz without a token")
    # /task-status and /metrics are not for users
    check_error(d.get("/task-status", headers=bearer(alice)), 403, "/task-status, user token",
                "forbidden")
    check_401(d.get("/metrics"), "/metrics without a token", "unauthorized")
    # The log reader runs behind the answers: wait for the lines to arrive.
    def refused():
        return len([r for r in d.logs() if r.get("event") == "auth.refused"])
    wait_until(lambda: refused() >= len(garbage) + 5, 5, "auth.refused lines (%d)" % refused())
    no_secrets_logged(d, SECRET, alice, bob)


@test(timeout=30)
def test_jwt_expired_not_yet_valid_wrong_audience_and_issuer(t):
    d = jwt_daemon(t, "--jwt-audience", "runcast", "--jwt-issuer", "https://id.test",
                   "--jwt-leeway", "0")
    now = int(time.time())
    good = {"sub": "alice", "aud": "runcast", "iss": "https://id.test", "exp": now + 600}
    path = spath("nosuch", user="alice") + "/task-status"

    def status_with(claims):
        return d.get(path, headers=bearer(mint(claims)))

    # passing the gate: the handler answers 404 for the unknown session
    check_error(status_with(good), 404, "good token", "session_not_found")
    check_error(status_with(dict(good, aud=["other", "runcast"])), 404, "aud array", "session_not_found")
    cases = [
        ("expired", dict(good, exp=now - 5), "expired"),
        ("future nbf", dict(good, nbf=now + 300), "not valid yet"),
        ("wrong audience", dict(good, aud="other"), "audience"),
        ("no audience", {k: v for k, v in good.items() if k != "aud"}, "audience"),
        ("wrong issuer", dict(good, iss="https://evil.test"), "issuer"),
        ("no exp", {k: v for k, v in good.items() if k != "exp"}, "exp"),
        ("numeric user", dict(good, sub=42), "user claim"),
    ]
    for what, claims, word in cases:
        err = check_401(status_with(claims), what, "invalid_token")
        expect(word in err["message"], "%s: message %r lacks %r" % (what, err["message"], word))
    # a leeway forgives a little clock skew, no more
    d2 = jwt_daemon(t, "--jwt-leeway", "60s")
    p2 = spath("nosuch", user="alice") + "/task-status"
    check_error(d2.get(p2, headers=bearer(mint(dict(sub="alice", exp=now - 20)))), 404,
                "expired 20 s ago with 60 s leeway", "session_not_found")
    check_401(d2.get(p2, headers=bearer(mint(dict(sub="alice", exp=now - 120)))),
              "expired 120 s ago with 60 s leeway", "invalid_token")


@test(timeout=60)
def test_jwt_alg_none_and_hs_rs_confusion_are_refused(t):
    d = t.daemon("--auth", "jwt", "--jwt-public-key", Keys.path("rsa.pub.pem"))
    path = spath("nosuch", user="alice") + "/task-status"
    c = claims_for("alice")
    check_error(d.get(path, headers=bearer(mint(c, "RS256", "rsa.pem"))), 404, "RS256",
                "session_not_found")
    check_error(d.get(path, headers=bearer(mint(c, "RS512", "rsa.pem"))), 404, "RS512",
                "session_not_found")
    # HS256 signed with the RS256 public key's PEM as the secret
    confused = mint(c, "HS256", "rsa.pub.pem")
    err = check_401(d.get(path, headers=bearer(confused)), "HS256 with the public key as secret",
                    "invalid_token")
    expect("algorithm" in err["message"], "message: %r" % err["message"])
    err = check_401(d.get(path, headers=bearer(mint(c, "none"))), "alg none", "invalid_token")
    expect("alg none" in err["message"], "message: %r" % err["message"])
    check_401(d.get(path, headers=bearer(mint(c, "ES256", "ec.pem"))), "ES256 on an RSA key",
              "invalid_token")
    check_401(d.get(path, headers=bearer(mint(c, "HS256"))), "HS256 on an RSA key", "invalid_token")
    # an unsigned token with the signature of a valid one stays refused
    rs = mint(c, "RS256", "rsa.pem")
    none = mint(dict(c, sub="mallory"), "none")
    check_401(d.get(spath("x", user="mallory") + "/task-status",
                    headers=bearer(none + rs.rsplit(".", 1)[1])), "none + stolen signature",
              "invalid_token")

    e = t.daemon("--auth", "jwt", "--jwt-public-key", Keys.path("ec.pub.pem"))
    check_error(e.get(path, headers=bearer(mint(c, "ES256", "ec.pem"))), 404, "ES256 on an EC key",
                "session_not_found")
    check_401(e.get(path, headers=bearer(mint(c, "RS256", "rsa.pem"))), "RS256 on an EC key",
              "invalid_token")
    check_401(e.get(path, headers=bearer(mint(c, "HS256", "ec.pub.pem"))),
              "HS256 with the EC public key as secret", "invalid_token")
    # and with a secret configured, RS/ES tokens mean nothing
    h = jwt_daemon(t)
    check_401(h.get(path, headers=bearer(mint(c, "RS256", "rsa.pem"))), "RS256 on a secret",
              "invalid_token")
    check_401(h.get(path, headers=bearer(mint(c, "none"))), "alg none on a secret", "invalid_token")


@test(timeout=30)
def test_jwt_token_from_header_query_or_cookie(t):
    d = jwt_daemon(t, "--jwt-cookie", "rc_token")
    alice = mint(claims_for("alice"))
    run_path = spath("s1", user="alice") + "/run"
    via_header = t.sse(d, run_path, headers=bearer(alice))
    via_query = t.sse(d, run_path + "?access_token=" + alice)
    via_cookie = t.sse(d, run_path, headers={"Cookie": "theme=dark; rc_token=" + alice + "; x=1"})
    r = post(d, run_path, "three ways", bearer(alice))
    eq(r.status, 202, "POST")
    run_id = r.json()["run_id"]
    for s in (via_header, via_query, via_cookie):
        s.wait_event("run.completed", run_id=run_id, timeout=DEFAULT_TIMEOUT * 2)
    keys = [[(e.id, e.type, e.data) for e in s.snapshot()] for s in (via_header, via_query, via_cookie)]
    eq(keys[1], keys[0], "query subscriber's events")
    eq(keys[2], keys[0], "cookie subscriber's events")
    # a POST can carry its token in the cookie too; another cookie name is no token
    eq(post(d, run_path, "cookie post", {"Cookie": "rc_token=" + alice}).status, 202, "POST with cookie")
    check_401(post(d, run_path, "x", {"Cookie": "token=" + alice}), "other cookie", "unauthorized")
    # another user's token in the query is still another user
    bob = mint(claims_for("bob"))
    check_error(d.get(run_path + "?access_token=" + bob), 403, "bob's token in the query", "forbidden")
    no_secrets_logged(d, SECRET, alice, bob)


@test(timeout=60, valgrind=False)
def test_stream_ends_at_token_exp_and_resumes_with_a_fresh_token(t):
    d = jwt_daemon(t, "--jwt-leeway", "0")
    run_path = spath("s1", user="alice") + "/run"
    exp = int(time.time()) + 3
    short = mint({"sub": "alice", "exp": exp})
    fresh = mint(claims_for("alice"))
    first = t.sse(d, run_path, headers=bearer(short))
    # 120 events at 30/s: the run outlives the short token by seconds
    r = post(d, run_path, "!events=120 !rate=30", bearer(fresh))
    eq(r.status, 202, "POST")
    run_id = r.json()["run_id"]
    first.wait_eof(timeout=exp - time.time() + 5)
    ended = time.time()
    expect(ended >= exp - 0.5, "the stream ended %.2fs before exp" % (exp - ended))
    evs = first.snapshot()
    expect(evs and evs[-1].type == "stream.closed", "last event: %r" % evs[-1:])
    eq(evs[-1].json(), {"reason": "token_expired"}, "stream.closed data")
    eq(evs[-1].has_id, False, "stream.closed has no id line")
    expect(not terminal_events(evs, run_id), "the run was still going when the stream ended")
    agent = [e for e in evs if e.type == "agent.event"]
    expect(len(agent) >= 10, "events before exp: %d" % len(agent))
    last_id = [e for e in evs if e.has_id][-1].id

    # the expired token is refused; a fresh one resumes right after last_id
    check_401(d.get(run_path, headers=dict(bearer(short), **{"Last-Event-ID": last_id})),
              "reconnect with the expired token", "invalid_token")
    second = t.sse(d, run_path, headers=dict(bearer(fresh), **{"Last-Event-ID": last_id}))
    second.wait_event("run.completed", run_id=run_id, timeout=15)
    evs2 = second.snapshot()
    expect(all(e.type != "stream.reset" for e in evs2), "no stream.reset on resume")
    seqs = [e.json()["customMetadata"]["seq"] for e in agent] + \
           [e.json()["customMetadata"]["seq"] for e in evs2 if e.type == "agent.event"]
    eq(seqs, list(range(120)), "agent event seqs across both streams")
    ids = [e.id for e in evs if e.has_id] + [e.id for e in evs2 if e.has_id]
    eq(len(set(ids)), len(ids), "no event delivered twice")


# ---------------------------------------------------------------- CORS

@test(timeout=30)
def test_cors_preflight_and_disallowed_origin(t):
    d = jwt_daemon(t, "--allow-origin", "https://app.test", "--allow-origin", "http://localhost:3000")
    alice = mint(claims_for("alice"))
    run_path = spath("s1", user="alice") + "/run"

    # preflight: no token needed; methods, headers, max-age for the allowed origin
    r = request(d.port, "OPTIONS", run_path, headers={
        "Origin": "https://app.test", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    eq(r.status, 204, "preflight status")
    eq(r.header("Access-Control-Allow-Origin"), "https://app.test", "Allow-Origin")
    eq(r.header("Access-Control-Allow-Credentials"), "true", "Allow-Credentials")
    eq(r.header("Access-Control-Allow-Methods"), "GET, POST, DELETE", "Allow-Methods")
    eq(r.header("Access-Control-Allow-Headers"), "Authorization, Content-Type, Last-Event-ID",
       "Allow-Headers")
    eq(r.header("Access-Control-Max-Age"), "600", "Max-Age")
    eq(r.header("Vary"), "Origin", "Vary")
    r = request(d.port, "OPTIONS", "/apps/a/users/alice/sessions/s1/task-status", headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "GET"})
    eq(r.status, 204, "preflight of task-status")
    eq(r.header("Access-Control-Allow-Methods"), "GET", "task-status Allow-Methods")

    def cors_headers(resp):
        return [k for k, _ in resp.headers if k.lower().startswith("access-control-")]

    # a disallowed origin: preflight 403, no CORS headers
    r = request(d.port, "OPTIONS", run_path, headers={
        "Origin": "https://evil.test", "Access-Control-Request-Method": "POST"})
    check_error(r, 403, "preflight from evil", "origin_not_allowed")
    eq(cors_headers(r), [], "CORS headers for evil's preflight")
    # a state-changing request from it: 403 even with a valid token, nothing done
    r = post(d, run_path, "from evil", dict(bearer(alice), Origin="https://evil.test"))
    check_error(r, 403, "POST from evil", "origin_not_allowed")
    eq(cors_headers(r), [], "CORS headers for evil's POST")
    r = request(d.port, "DELETE", spath("s1", user="alice"),
                headers=dict(bearer(alice), Origin="https://evil.test"))
    check_error(r, 403, "DELETE from evil", "origin_not_allowed")
    check_error(d.get(spath("s1", user="alice") + "/task-status", headers=bearer(alice)), 404,
                "no session was created by evil's POST", "session_not_found")
    # a GET from it is answered (the browser keeps it from the page): no CORS headers
    r = d.get(spath("s1", user="alice") + "/task-status",
              headers=dict(bearer(alice), Origin="https://evil.test"))
    eq(r.status, 404, "GET from evil")
    eq(cors_headers(r), [], "CORS headers for evil's GET")

    # the allowed origin gets its headers on successes and on errors alike
    r = post(d, run_path, "from the app", dict(bearer(alice), Origin="https://app.test"))
    eq(r.status, 202, "POST from the app")
    eq(r.header("Access-Control-Allow-Origin"), "https://app.test", "Allow-Origin on 202")
    r = post(d, run_path, "no token", {"Origin": "https://app.test"})
    check_401(r, "POST from the app without a token", "unauthorized")
    eq(r.header("Access-Control-Allow-Origin"), "https://app.test", "Allow-Origin on 401")
    expect("WWW-Authenticate" in (r.header("Access-Control-Expose-Headers") or ""),
           "WWW-Authenticate exposed to the page")
    s = t.sse(d, run_path + "?access_token=" + alice, headers={"Origin": "https://app.test"})
    eq(s.header("Access-Control-Allow-Origin"), "https://app.test", "Allow-Origin on the stream")
    # the gateway's own origin (as the console would send it) needs no listing
    r = post(d, run_path, "same origin", dict(bearer(alice), Origin="http://127.0.0.1:%d" % d.port,
                                                Host="127.0.0.1:%d" % d.port))
    eq(r.status, 202, "same-origin POST")


@test(timeout=20)
def test_cors_star_allows_any_origin_without_credentials(t):
    d = t.daemon("--allow-origin", "*")
    r = post(d, spath("s1") + "/run", "hi", {"Origin": "https://anywhere.test"})
    eq(r.status, 202, "POST from anywhere")
    eq(r.header("Access-Control-Allow-Origin"), "*", "Allow-Origin")
    eq(r.header("Access-Control-Allow-Credentials"), None, "no Allow-Credentials with *")
    # no --allow-origin at all: a cross-origin POST is refused, --auth none or not
    e = t.daemon()
    check_error(post(e, spath("s1") + "/run", "hi", {"Origin": "https://anywhere.test"}), 403,
                "cross-origin POST without --allow-origin", "origin_not_allowed")
    eq(post(e, spath("s1") + "/run", "hi").status, 202, "POST without Origin (curl)")


# ---------------------------------------------------------------- admin

@test(timeout=30)
def test_admin_token_and_admin_listener(t):
    admin_port = free_port()
    d = jwt_daemon(t, "--admin-claim", "role=admin", "--admin-listen", "127.0.0.1:%d" % admin_port)
    d.wait_log(lambda r: r.get("event") == "admin.listening", DEFAULT_TIMEOUT, "admin.listening")
    alice = mint(claims_for("alice"))
    admin = mint(claims_for("ops", role="admin"))
    eq(post(d, spath("s1", user="alice") + "/run", "hi", bearer(alice)).status, 202, "alice's POST")

    check_401(d.get("/metrics"), "/metrics, no token", "unauthorized")
    check_error(d.get("/metrics", headers=bearer(alice)), 403, "/metrics, user token", "forbidden")
    r = d.get("/metrics", headers=bearer(admin))
    eq(r.status, 200, "/metrics, admin token")
    expect(b"runcast_runs_active" in r.body, "metrics body")
    check_401(d.get("/task-status?all=1"), "/task-status, no token", "unauthorized")
    r = d.get("/task-status?all=1", headers=bearer(admin))
    eq(r.status, 200, "/task-status, admin token")
    eq([s["session_id"] for s in r.json()["sessions"]], ["s1"], "sessions seen by the admin")
    # an admin token is not alice's token
    check_error(d.get(spath("s1", user="alice") + "/task-status", headers=bearer(admin)), 403,
                "alice's session with the admin token", "forbidden")
    # a role claim with another value is no admin
    check_error(d.get("/metrics", headers=bearer(mint(claims_for("x", role="viewer")))), 403,
                "/metrics, role viewer", "forbidden")

    # the admin listener: those routes without tokens, nothing else
    r = request(admin_port, "GET", "/metrics")
    eq(r.status, 200, "admin listener /metrics")
    r = request(admin_port, "GET", "/task-status?all=1")
    eq(r.status, 200, "admin listener /task-status")
    eq(r.json()["sessions_total"], 1, "admin listener sessions_total")
    eq(request(admin_port, "GET", "/healthz").status, 200, "admin listener /healthz")
    eq(request(admin_port, "GET", "/readyz").status, 200, "admin listener /readyz")
    check_error(request(admin_port, "GET", spath("s1", user="alice") + "/task-status"), 404,
                "a session route on the admin listener", "not_found")
    check_error(request(admin_port, "POST", spath("s1", user="alice") + "/run",
                        body=b'{"message":"x"}', headers=JSON_HEADERS), 404,
                "POST on the admin listener", "not_found")
    no_secrets_logged(d, SECRET, alice, admin)


# ---------------------------------------------------------------- per-user caps

@test(timeout=40)
def test_per_user_run_cap_two_users_two_slots(t):
    d = t.daemon("--max-concurrent-runs", "2", "--max-runs-per-user", "1")

    def post_json(user, sid, message):
        r = post(d, spath(sid, user=user) + "/run", message)
        eq(r.status, 202, "POST %s/%s" % (user, sid))
        return r.json()

    s_a2 = t.sse(d, spath("a2", user="alice") + "/run")
    a1 = post_json("alice", "a1", "!hang")
    eq(a1["status"], "running", "alice's first run")
    a2 = post_json("alice", "a2", "!hang")
    eq(a2["status"], "failed", "alice's second run (over her cap)")
    ev = s_a2.wait_event("run.failed", run_id=a2["run_id"])
    eq(ev.json()["code"], "rate_limited", "run.failed code")
    # bob gets the second slot at once, instead of queueing behind alice
    b1 = post_json("bob", "b1", "!hang")
    eq(b1["status"], "running", "bob's run")
    st = d.get("/task-status").json()
    eq((st["running_tasks"], st["queued_tasks"], st["total_tasks"]), (2, 0, 2), "slots")
    # a new run in alice's own session replaces hers: it does not count twice
    a1b = post_json("alice", "a1", "!hang")
    eq(a1b["status"], "running", "alice's run superseding her own")
    # once her run ends, alice may start another
    eq(d.delete(spath("a1", user="alice") + "/run").status, 200, "cancel alice's run")
    a2b = post_json("alice", "a2", "hello again")
    expect(a2b["status"] in ("running", "queued"), "alice's run after hers ended: %r" % a2b)
    s_a2.wait_event("run.completed", run_id=a2b["run_id"], timeout=DEFAULT_TIMEOUT * 2)
    eq(d.delete(spath("b1", user="bob") + "/run").status, 200, "cancel bob's run")
    wait_until(lambda: d.get("/task-status").json()["total_tasks"] == 0, DEFAULT_TIMEOUT,
               "no active run")


@test(timeout=30)
def test_per_user_stream_cap_answers_429(t):
    d = t.daemon("--max-subscribers-per-user", "2")
    path = spath("s1", user="alice") + "/run"
    one = t.sse(d, path)
    t.sse(d, spath("s2", user="alice") + "/run")
    r = d.get(path)
    check_error(r, 429, "alice's third stream", "too_many_user_subscribers")
    eq(r.header("Retry-After"), "1", "Retry-After")
    t.sse(d, spath("s1", user="bob") + "/run")  # bob has his own allowance
    one.close()
    wait_until(lambda: d.get(spath("s1", user="alice") + "/task-status").json()["subscribers"] == 0,
               DEFAULT_TIMEOUT, "alice's first stream gone")
    again = t.sse(d, path)
    eq(again.status, 200, "a stream after one closed")
    check_error(d.get(path), 429, "over the cap again", "too_many_user_subscribers")


# ---------------------------------------------------------------- start-up

@test(timeout=30)
def test_open_public_listener_warns_and_secrets_stay_out_of_errors(t):
    d = t.daemon("--listen", "0.0.0.0:0")
    rec = d.wait_log(lambda r: r.get("event") == "auth.disabled", DEFAULT_TIMEOUT, "auth.disabled")
    eq(rec.get("level"), "warn", "auth.disabled level")
    e = t.daemon()
    expect(not [r for r in e.logs() if r.get("event") == "auth.disabled"],
           "no warning on loopback")
    # a refused secret is never printed
    for argv in (["--auth", "jwt", "--jwt-secret", "short-secret-xyz"],
                 ["--jwt-secret", SECRET],
                 ["--auth", "jwt", "--jwt-secret", SECRET + "k" * 1100]):
        r = subprocess.run([RUNCAST_BIN, "--listen", "127.0.0.1:0"] + argv, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=10)
        eq(r.returncode, 2, "exit status for %s" % argv[:2])
        err = r.stderr.decode(errors="replace")
        expect(err.count("\n") == 1, "one line: %r" % err)
        expect("short-secret" not in err and SECRET[:16] not in err, "secret in %r" % err)
    r = subprocess.run([RUNCAST_BIN, "--listen", "127.0.0.1:0", "--auth", "jwt",
                        "--jwt-public-key", Keys.path("rsa.pem")],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
    eq(r.returncode, 2, "exit status with a private key as --jwt-public-key")
    expect("not a PEM public key" in r.stderr.decode(), "stderr: %r" % r.stderr)


# ---------------------------------------------------------------- Host allow-list (DNS rebinding)

def check_421(resp, what):
    """A Host refused by --allow-host: 421 with the contract's error shape."""
    err = check_error(resp, 421, what, "host_not_allowed")
    expect("--allow-host" in err.get("message", ""), "%s: message %r" % (what, err))
    return err


def host_get(d, path, host):
    return request(d.port, "GET", path, headers={"Host": host})


def host_post(d, path, host, origin=None):
    h = {"Host": host}
    if origin:
        h["Origin"] = origin
    return post(d, path, "hello", headers=h)


@test(timeout=30)
def test_rebound_host_name_gets_421_and_creates_nothing(t):
    d = t.daemon()
    evil = "evil.example:%d" % d.port
    origin = "http://" + evil  # the page's own origin: the same-origin check alone let it in
    check_421(host_post(d, spath("rb") + "/run", evil, origin), "POST run from a rebound name")
    check_421(host_post(d, spath("rb") + "/run", "evil.example"), "POST run, Host without port")
    check_421(host_get(d, spath("rb") + "/run", evil), "GET stream from a rebound name")
    check_421(host_get(d, spath("rb") + "/task-status", evil), "GET session status")
    check_421(host_get(d, "/", evil), "GET / (the console)")
    check_421(host_get(d, "/task-status?all=1", evil), "GET /task-status")
    check_421(host_get(d, "/metrics", evil), "GET /metrics")
    check_421(request(d.port, "DELETE", spath("rb"), headers={"Host": evil}), "DELETE session")
    check_421(request(d.port, "OPTIONS", spath("rb") + "/run",
                      headers={"Host": evil, "Origin": origin,
                               "Access-Control-Request-Method": "POST"}), "preflight")
    check_421(host_get(d, "/no/such/route", evil), "an unknown route")
    # names that only look local are names, not addresses
    for host in ("localhost.evil.example", "127.0.0.1.nip.io:%d" % d.port, "evil.example:80",
                 "localhost.", "127.1"):
        check_421(host_get(d, "/task-status", host), "Host %r" % host)
    # not even a host name: refused (400 by the parser or 421 here), never served
    for host in ("localhost:%d@evil.example" % d.port, "[::1]x", "localhost:port", "[::1"):
        r = host_get(d, "/task-status", host)
        expect(r.status in (400, 421), "Host %r: status %d" % (host, r.status))
    # nothing was created by any of them
    task_status_404 = request(d.port, "GET", spath("rb") + "/task-status")
    check_error(task_status_404, 404, "the session after refused requests", "session_not_found")
    eq(d.get("/task-status?all=1").json()["sessions_total"], 0, "sessions after refused requests")
    # health checks come from load balancers with any Host
    for path in ("/healthz", "/readyz"):
        eq(host_get(d, path, evil).status, 200, "%s with a foreign Host" % path)
    refused = [r for r in d.logs() if r.get("event") == "http.host_refused"]
    expect(len(refused) >= 1 and refused[0].get("host") == evil,
           "http.host_refused log lines: %r" % refused[:2])


@test(timeout=30)
def test_default_allowed_hosts_are_loopback_names_and_addresses(t):
    d = t.daemon()
    port = d.port
    for host in ("localhost:%d" % port, "LocalHost:%d" % port, "localhost", "127.0.0.1:%d" % port,
                 "127.0.0.1", "[::1]:%d" % port, "[::1]", "192.168.1.20:%d" % port,
                 "[fe80::1]:8000"):
        r = host_post(d, spath("ok") + "/run", host, "http://" + host)
        eq(r.status, 202, "POST run with Host %r" % host)
        eq(host_get(d, spath("ok") + "/task-status", host).status, 200,
           "task-status with Host %r" % host)
        r = host_get(d, "/", host)
        eq(r.status, 200, "GET / with Host %r" % host)
    # HTTP/1.0 without a Host is no browser (and so no rebinding): served
    from harness import raw_exchange
    r = raw_exchange(port, b"GET /task-status HTTP/1.0\r\n\r\n")
    eq(r.status, 200, "HTTP/1.0 without Host")


@test(timeout=40)
def test_allow_host_replaces_the_default_list_and_star_allows_any(t):
    d = t.daemon("--allow-host", "app.example.com,[2001:db8::1]:8443")
    for host in ("app.example.com", "APP.example.com:8443", "[2001:db8::1]"):
        eq(host_post(d, spath("c") + "/run", host).status, 202, "POST with Host %r" % host)
    for host in ("localhost:%d" % d.port, "127.0.0.1:%d" % d.port, "127.0.0.1", "[::1]:%d" % d.port,
                 "evil.example", "sub.app.example.com", "10.0.0.1"):
        check_421(host_post(d, spath("c") + "/run", host), "POST with Host %r" % host)
    eq(host_get(d, "/healthz", "localhost").status, 200, "/healthz is exempt")
    # the environment twin
    e = t.daemon(env={"RUNCAST_ALLOW_HOST": "one.example,two.example:9000"})
    eq(host_get(e, "/task-status", "two.example").status, 200, "env: two.example")
    check_421(host_get(e, "/task-status", "localhost"), "env list: localhost refused")
    # * allows any Host
    s = t.daemon("--allow-host", "*")
    eq(host_post(s, spath("c") + "/run", "evil.example:%d" % s.port).status, 202, "* : evil.example")
    # bad values exit 2 naming the flag
    for bad in ("http://app.example.com", "a b", "*,app.example.com", "app.example.com/x",
                "app.example.com:99999", "[::1", ","):
        r = subprocess.run([RUNCAST_BIN, "--listen", "127.0.0.1:0", "--allow-host", bad],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
        eq(r.returncode, 2, "exit status for --allow-host %r" % bad)
        expect("--allow-host" in r.stderr.decode(), "stderr names the flag: %r" % r.stderr)


@test(timeout=30)
def test_host_check_comes_before_tokens_and_covers_the_admin_listener(t):
    admin_port = free_port()
    d = jwt_daemon(t, "--admin-listen", "127.0.0.1:%d" % admin_port)
    alice = mint(claims_for("alice"))
    evil = "evil.example:%d" % d.port
    h = {"Host": evil}
    h.update(bearer(alice))
    check_421(request(d.port, "GET", spath("s", user="alice") + "/task-status", headers=h),
              "a valid token from a rebound name")
    check_421(request(d.port, "GET", spath("s", user="alice") + "/task-status",
                      headers={"Host": evil}), "no token from a rebound name")
    r = request(d.port, "POST", spath("s", user="alice") + "/run", body=b'{"message":"x"}',
                headers=dict(JSON_HEADERS, Host="localhost:%d" % d.port, **bearer(alice)))
    eq(r.status, 202, "the same token from localhost")
    # the admin listener serves without tokens: a rebound name must not read it
    check_421(request(admin_port, "GET", "/task-status?all=1",
                      headers={"Host": "evil.example:%d" % admin_port}), "admin /task-status")
    check_421(request(admin_port, "GET", "/metrics", headers={"Host": "evil.example"}),
              "admin /metrics")
    eq(request(admin_port, "GET", "/metrics", headers={"Host": "localhost:%d" % admin_port}).status,
       200, "admin /metrics from localhost")
    eq(request(admin_port, "GET", "/healthz", headers={"Host": "evil.example"}).status, 200,
       "admin /healthz is exempt")


# ---------------------------------------------------------------- per-user session cap

@test(timeout=40)
def test_per_user_session_cap_answers_429_and_frees_on_delete_and_expiry(t):
    d = t.daemon("--max-sessions-per-user", "2")

    def status_of(sid, user="alice"):
        return d.get(spath(sid, user=user) + "/task-status").status

    eq(post(d, spath("s1", user="alice") + "/run", "hello").status, 202, "alice's 1st session (POST)")
    t.sse(d, spath("s2", user="alice") + "/run")  # a stream creates a session too
    r = post(d, spath("s3", user="alice") + "/run", "hello")
    check_error(r, 429, "alice's 3rd session by POST", "too_many_user_sessions")
    eq(r.header("Retry-After"), "1", "Retry-After of the POST")
    r = d.get(spath("s3", user="alice") + "/run")
    check_error(r, 429, "alice's 3rd session by GET stream", "too_many_user_sessions")
    eq(r.header("Retry-After"), "1", "Retry-After of the GET")
    eq(status_of("s3"), 404, "the refused session was not created")
    # her own sessions still take runs and streams; bob has his own allowance
    eq(post(d, spath("s1", user="alice") + "/run", "again").status, 202, "a run in her 1st session")
    t.sse(d, spath("s1", user="alice") + "/run")
    eq(post(d, spath("s1", user="bob") + "/run", "hello").status, 202, "bob's 1st session")
    eq(post(d, spath("s2", user="bob") + "/run", "hello").status, 202, "bob's 2nd session")
    eq(d.get("/task-status?all=1").json()["sessions_total"], 4, "sessions")
    # deleting one frees its slot at once
    eq(d.delete(spath("s1", user="alice")).status, 200, "DELETE alice's s1")
    eq(post(d, spath("s3", user="alice") + "/run", "hello").status, 202, "alice's s3 after a delete")
    check_error(post(d, spath("s4", user="alice") + "/run", "hello"), 429, "alice full again",
                "too_many_user_sessions")

    # expiry frees a slot too
    e = t.daemon("--max-sessions-per-user", "1", "--session-ttl", "0.3s")
    eq(post(e, spath("a", user="carol") + "/run", "hi").status, 202, "carol's session")
    check_error(post(e, spath("b", user="carol") + "/run", "hi"), 429, "carol's 2nd session",
                "too_many_user_sessions")
    # (not polled through its task-status: that is activity, which keeps it)
    e.wait_log(lambda r: r.get("event") == "session.expired" and r.get("session") == "a",
               DEFAULT_TIMEOUT, "carol's idle session expired")
    eq(post(e, spath("b", user="carol") + "/run", "hi").status, 202, "carol's session after expiry")


@test(timeout=30)
def test_per_user_session_cap_is_the_token_users_under_jwt(t):
    d = jwt_daemon(t, "--max-sessions-per-user", "1")
    alice = bearer(mint(claims_for("alice")))
    eq(post(d, spath("s1", user="alice") + "/run", "hi", headers=alice).status, 202, "alice's session")
    check_error(post(d, spath("s2", user="alice") + "/run", "hi", headers=alice), 429,
                "alice's 2nd session", "too_many_user_sessions")
    bob = bearer(mint(claims_for("bob")))
    eq(post(d, spath("s2", user="bob") + "/run", "hi", headers=bob).status, 202, "bob's session")


# ---------------------------------------------------------------- far-future and fractional exp

@test(timeout=40, valgrind=False)
def test_far_future_and_fractional_exp_keep_the_stream_open_until_exp(t):
    d = jwt_daemon(t, "--jwt-leeway", "0")
    run_path = spath("far", user="alice") + "/run"
    far = []
    for exp in (1e17, 1e300, int(time.time()) + 3600.5):
        s = t.sse(d, run_path, headers=bearer(mint({"sub": "alice", "exp": exp})))
        s.wait_retry()
        far.append((exp, s))
    r = post(d, run_path, "still here? !word-delay=0", bearer(mint(claims_for("alice"))))
    eq(r.status, 202, "POST")
    run_id = r.json()["run_id"]
    for exp, s in far:
        s.wait_event("run.completed", 10, run_id=run_id)  # fails if the stream ended at once
    # a fractional exp a moment away: the stream ends at it, not before
    exp = int(time.time()) + 2.5
    soon = t.sse(d, run_path, headers=bearer(mint({"sub": "alice", "exp": exp})))
    soon.wait_retry()
    closed = soon.wait_event("stream.closed", timeout=exp - time.time() + 5)
    ended = time.time()
    eq(closed.json(), {"reason": "token_expired"}, "stream.closed data")
    expect(exp - 0.02 <= ended <= exp + 1.5, "cut %.3fs after exp" % (ended - exp))
    soon.wait_eof(5)
    for exp, s in far:
        expect(not s.eof, "the stream with exp %r ended" % exp)
        eq([e.type for e in s.snapshot() if e.type == "stream.closed"], [],
           "stream.closed with exp %r" % exp)
