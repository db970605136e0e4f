"""harness.py: a small, dependency-free integration harness for runcast.

Pieces:
  Daemon     starts build/runcast (or the standalone demo agent), waits for its
             "listening" log line, captures stderr, stops it with SIGTERM and a
             deadline (SIGKILL and a test failure when it does not exit).
  Response / request() / Conn
             an HTTP/1.1 client over raw sockets, so tests can also send
             malformed bytes; every read has a deadline.
  SseClient  a subscriber that parses the event stream incrementally on its own
             thread; tests wait on received events with wait_for(predicate,
             timeout), never on sleeps.
  Ctx        per-test context: owns daemons and sockets and releases them when
             the test ends (also when it fails or times out).

Everything waits with a deadline; nothing sleeps and hopes.
"""

import json
import os
import re
import resource
import signal
import socket
import shutil
import subprocess
import tempfile
import threading
import time

RUNCAST_BIN = os.environ.get("RUNCAST_BIN") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "build", "runcast")

# RUNCAST_VALGRIND=1 runs every daemon (the standalone demo agent too) under
# valgrind (VALGRIND_ARGV): start and stop deadlines, test timeouts and
# DEFAULT_TIMEOUT grow by TIME_SCALE, stop() fails on valgrind's exit code
# (VALGRIND_RC) or on any report it printed, and tests registered with
# @test(valgrind=False) (timing-sensitive ones) are left out (SKIPPED).
VALGRIND = os.environ.get("RUNCAST_VALGRIND", "") not in ("", "0")
VALGRIND_RC = 99
VALGRIND_ARGV = ["valgrind", "--error-exitcode=%d" % VALGRIND_RC, "--leak-check=full",
                 "--errors-for-leak-kinds=definite", "--show-leak-kinds=definite",
                 "--trace-children=no", "-q"]
TIME_SCALE = float(os.environ.get("RUNCAST_TIME_SCALE") or (4.0 if VALGRIND else 1.0))

DEFAULT_TIMEOUT = 5.0 * TIME_SCALE

# RUNCAST_TEST_STORE=redis runs every gateway Daemon in cluster mode, each on
# a private redis-server of its own (unless the test passes --store), so
# that the suite's cases also hold with --store redis://.
STORE = os.environ.get("RUNCAST_TEST_STORE") or "memory"
REDIS_SERVER = os.environ.get("REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"


class TestFailure(Exception):
    pass


def fail(msg):
    raise TestFailure(msg)


def expect(cond, msg):
    if not cond:
        raise TestFailure(msg)


def eq(actual, expected, what):
    if actual != expected:
        raise TestFailure("%s: expected %r, got %r" % (what, expected, actual))


def wait_until(fn, timeout, what, interval=0.02):
    """Polls fn() until it returns a truthy value (returned) or the deadline
    passes (TestFailure naming `what` and the last value seen)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise TestFailure("timed out after %.1fs waiting for %s (last: %r)" % (timeout, what, last))
        time.sleep(interval)


def now_us():
    return int(time.time() * 1_000_000)


# ---------------------------------------------------------------- logs

def parse_log_line(line):
    """A JSON log line as a dict; a logfmt line as a dict of its fields; None
    for anything else."""
    line = line.strip()
    if not line:
        return None
    if line.startswith("{"):
        try:
            obj = json.loads(line)
            return obj if isinstance(obj, dict) else None
        except ValueError:
            return None
    fields = {}
    for m in re.finditer(r'([A-Za-z0-9_.]+)=("(?:[^"\\]|\\.)*"|\S*)', line):
        v = m.group(2)
        if v.startswith('"'):
            try:
                v = json.loads(v)
            except ValueError:
                v = v[1:-1]
        fields[m.group(1)] = v
    return fields or None


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def port_of(address):
    return int(str(address).rsplit(":", 1)[1])


# ---------------------------------------------------------------- daemon

# ---- Redis (cluster mode) ----------------------------------------------------

class RespError(Exception):
    pass


class Resp:
    """One connection to Redis speaking RESP2. call() returns str (simple and
    bulk strings, utf-8), int, None or a list; an error reply raises RespError."""

    def __init__(self, port, timeout=3.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout)
        self.file = self.sock.makefile("rb")

    def call(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        return self._reply()

    def _reply(self):
        line = self.file.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.file.read(n + 2)
            if len(data) != n + 2:
                raise ConnectionError("redis closed the connection mid-reply")
            return data[:-2].decode("utf-8", "replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise RespError("bad RESP line %r" % line)

    def close(self):
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass



class RedisServer:
    """A private redis-server. aof=True: --appendonly yes --appendfsync always
    (a restart loses nothing); aof=False: no persistence at all (a restart
    loses everything). The port stays the same across restarts. Stopped and
    its directory removed after the test's daemons stopped (ctx.after)."""

    def __init__(self, ctx, aof=False, port=None, args=()):
        self.ctx = ctx
        self.aof = aof
        self.args = list(args)
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="runcast-redis-")
        self.proc = None
        self.starts = 0
        ctx.after.append(self._cleanup)
        self.start()

    def url(self, db=None):
        return "redis://127.0.0.1:%d%s" % (self.port, "" if db is None else "/%d" % db)

    def start(self, timeout=5.0):
        expect(self.proc is None or self.proc.poll() is not None, "redis-server already running")
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "yes" if self.aof else "no",
                "--appendfsync", "always", "--dir", self.dir, "--daemonize", "no",
                "--logfile", os.path.join(self.dir, "redis.log"),
                "--maxmemory-policy", "noeviction", "--enable-debug-command", "local"] + self.args
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                fail("redis-server on port %d exited (rc=%s) at start; log:\n%s"
                     % (self.port, self.proc.returncode, self.log_tail()))
            try:
                if self.call("PING") == "PONG":
                    return
            except (OSError, ConnectionError, RespError):
                pass
            if time.monotonic() >= deadline:
                fail("redis-server on port %d not answering PING within %.1fs; log:\n%s"
                     % (self.port, timeout, self.log_tail()))
            time.sleep(0.02)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=5.0):
        """SIGTERM (with AOF: fsynced and closed), then wait for the exit."""
        if not self.running():
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            fail("redis-server did not exit within %.1fs of SIGTERM" % timeout)

    def kill9(self):
        if self.running():
            self.proc.kill()
            self.proc.wait(5)

    def restart(self):
        """Stop and start again on the same port; returns (old, new) run_id."""
        old = self.run_id()
        self.stop()
        self.start()
        return old, self.run_id()

    def call(self, *args, db=None, timeout=3.0):
        """One command on a fresh connection (SELECT db first when given)."""
        r = Resp(self.port, timeout)
        try:
            if db is not None:
                r.call("SELECT", db)
            return r.call(*args)
        finally:
            r.close()

    def info(self, section="server"):
        out = {}
        for line in self.call("INFO", section).splitlines():
            k, sep, v = line.partition(":")
            if sep:
                out[k.strip()] = v.strip()
        return out

    def run_id(self):
        return self.info("server")["run_id"]

    def fill(self, keys):
        """Adds `keys` filler keys and rewrites the AOF, so that the next
        start spends a while LOADING (answering -LOADING to every command)."""
        eq(self.call("DEBUG", "POPULATE", keys, "filler"), "OK", "DEBUG POPULATE")
        if self.aof:
            self.call("BGREWRITEAOF")
            wait_until(lambda: self.info("persistence").get("aof_rewrite_in_progress") == "0"
                       and self.info("persistence").get("aof_rewrite_scheduled") == "0", 30,
                       "the AOF rewrite", interval=0.05)

    def pause(self, ms, mode="ALL"):
        eq(self.call("CLIENT", "PAUSE", ms, mode), "OK", "CLIENT PAUSE reply")

    def kill_pubsub(self):
        """CLIENT KILL TYPE pubsub; returns how many connections were killed."""
        return self.call("CLIENT", "KILL", "TYPE", "pubsub")

    def pubsub_clients(self):
        out = self.call("CLIENT", "LIST", "TYPE", "pubsub")
        return [l for l in out.splitlines() if l.strip()]

    def log_tail(self, n=15):
        try:
            with open(os.path.join(self.dir, "redis.log"), errors="replace") as f:
                lines = f.read().splitlines()[-n:]
        except OSError:
            lines = []
        return "\n".join("    | " + l for l in lines)

    def _cleanup(self):
        problems = []
        if self.running():
            self.proc.kill()
            self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)
        return problems



class Daemon:
    """A runcast process. upstream="demo" waits for both the gateway's and the
    embedded demo agent's listening lines; demo_port is then set."""

    def __init__(self, ctx, args=(), upstream="demo", agent=False, env=None,
                 start_timeout=10.0, port=None, rlimit_nofile=None, stderr_held=False):
        """port: listen on this port (see free_port()) and wait for /healthz
        instead of the listening log lines (for a --log-level that hides
        them); demo_port stays None then. rlimit_nofile: the process's
        RLIMIT_NOFILE (soft and hard). stderr_held: nobody reads the
        daemon's stderr until release_stderr() (needs port)."""
        self.ctx = ctx
        self.agent = agent
        self.lines = []
        self.cond = threading.Condition()
        self.eof = False
        self.port = None
        self.demo_port = None
        self.stopped = False
        self.stderr_released = threading.Event()
        if not stderr_held:
            self.stderr_released.set()
        if agent:
            argv = [RUNCAST_BIN, "demo-agent", "--listen", "127.0.0.1:0"] + list(args)
        else:
            argv = [RUNCAST_BIN, "--listen", "127.0.0.1:%d" % (port or 0), "--upstream", upstream,
                    "--log-format", "json"] + list(args)
        self.redis = None
        if (STORE == "redis" and not agent and not any(str(a).startswith("--store") for a in args)
                and "RUNCAST_STORE" not in (env or {})):
            self.redis = RedisServer(ctx)
            argv += ["--store", self.redis.url()]
        if VALGRIND:
            argv = VALGRIND_ARGV + argv
            start_timeout *= TIME_SCALE
        self.argv = argv
        penv = dict(os.environ)
        penv.setdefault("RUNCAST_SHUTDOWN_GRACE", "0.2s")
        if env:
            penv.update(env)
        if not os.path.exists(RUNCAST_BIN):
            fail("binary not found: %s" % RUNCAST_BIN)
        preexec = None
        if rlimit_nofile is not None:
            def preexec():
                resource.setrlimit(resource.RLIMIT_NOFILE, (rlimit_nofile, rlimit_nofile))
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=penv, preexec_fn=preexec)
        ctx.daemons.append(self)
        self.reader = threading.Thread(target=self._read_stderr, daemon=True)
        self.reader.start()
        if port is not None and not agent:
            self.port = port
            self._wait_healthz(start_timeout)
        elif agent:
            rec = self.wait_log(lambda r: r.get("event") == "demo.listening", start_timeout,
                                "demo.listening log line")
            self.port = port_of(rec["address"])
            self.demo_port = self.port
        else:
            rec = self.wait_log(lambda r: r.get("event") == "listening", start_timeout,
                                "listening log line")
            self.port = port_of(rec["address"])
            if upstream == "demo":
                rec = self.wait_log(lambda r: r.get("event") == "demo.listening", start_timeout,
                                    "demo.listening log line")
                self.demo_port = port_of(rec["address"])
        if self.redis is not None:  # requests before the store is up get 503
            wait_until(self._store_ready, start_timeout, "/readyz 200 (the store up)")

    def _store_ready(self):
        """/readyz says ready, or does not say (auth, an admin listener): then
        the store.up log line."""
        try:
            status = request(self.port, "GET", "/readyz", timeout=1.0).status
        except (OSError, TestFailure):
            return False
        if status in (200, 503):
            return status == 200
        return any(r.get("event") == "store.up" for r in self.logs())

    def _wait_healthz(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self.reader.join(2)  # the reader ends at EOF with the last lines
                fail("process exited (rc=%s) before answering /healthz; stderr tail:\n%s"
                     % (self.proc.returncode, self.tail()))
            try:
                if request(self.port, "GET", "/healthz", timeout=1.0).status == 200:
                    return
            except (OSError, TestFailure):
                pass
            if time.monotonic() >= deadline:
                fail("no /healthz answer on port %d within %.1fs; stderr tail:\n%s"
                     % (self.port, timeout, self.tail()))
            time.sleep(0.02)

    def release_stderr(self):
        self.stderr_released.set()

    def _read_stderr(self):
        f = self.proc.stderr
        self.stderr_released.wait()
        for raw in iter(f.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def logs(self):
        with self.cond:
            return [r for r in (parse_log_line(l) for l in self.lines) if r is not None]

    def wait_log(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        with self.cond:
            i = 0
            while True:
                while i < len(self.lines):
                    rec = parse_log_line(self.lines[i])
                    i += 1
                    if rec is not None and pred(rec):
                        return rec
                if self.eof:
                    fail("process exited (rc=%s) before %s; stderr tail:\n%s"
                         % (self.proc.poll(), what, self.tail()))
                left = deadline - time.monotonic()
                if left <= 0:
                    fail("timed out after %.1fs waiting for %s; stderr tail:\n%s"
                         % (timeout, what, self.tail()))
                self.cond.wait(left)

    def tail(self, n=20):
        return "\n".join("    | " + l for l in self.lines[-n:])

    def sanitizer_errors(self):
        with self.cond:
            return [l for l in self.lines
                    if "ERROR: AddressSanitizer" in l or "ERROR: LeakSanitizer" in l
                    or "runtime error:" in l]

    def valgrind_report(self):
        """valgrind's own lines ("==PID== ..."), its warnings left out."""
        with self.cond:
            return [l for l in self.lines if re.match(r"==\d+== ", l) and "Warning:" not in l]

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=6.0):
        """SIGTERM, wait up to timeout, SIGKILL if still running. Returns a
        list of problems (empty when the daemon behaved)."""
        if self.stopped:
            return []
        if VALGRIND:
            timeout = max(timeout * TIME_SCALE, 20.0)
        self.stopped = True
        self.stderr_released.set()
        problems = []
        rc = self.proc.poll()
        if rc is not None:
            problems.append("%s exited on its own during the test (rc=%s)" % (self.name(), rc))
        else:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                problems.append("%s did not exit within %.0fs of SIGTERM (killed)" % (self.name(), timeout))
                rc = None
            if rc is not None and rc != 0:
                problems.append("%s exited with rc=%s after SIGTERM" % (self.name(), rc))
        self.reader.join(2)
        san = self.sanitizer_errors()
        if san:
            problems.append("%s sanitizer report: %s" % (self.name(), san[0]))
        vg = self.valgrind_report() if VALGRIND else []
        if vg or (VALGRIND and rc == VALGRIND_RC):
            problems.append("%s: valgrind reported errors (rc=%s):\n%s"
                            % (self.name(), rc, "\n".join("    " + l for l in vg[:60])))
        if problems:
            problems[-1] += "\n  stderr tail:\n" + self.tail()
        return problems

    def name(self):
        return "demo-agent" if self.agent else "runcast"

    # ---- convenience wrappers over request()

    def get(self, path, **kw):
        return request(self.port, "GET", path, **kw)

    def post_json(self, path, obj, **kw):
        return request(self.port, "POST", path, body=json.dumps(obj).encode(),
                       headers={"Content-Type": "application/json"}, **kw)

    def delete(self, path, **kw):
        return request(self.port, "DELETE", path, **kw)

    def demo_calls(self, session=None):
        expect(self.demo_port is not None, "no demo agent port known")
        path = "/debug/calls" + ("?session=" + session if session else "")
        r = request(self.demo_port, "GET", path)
        eq(r.status, 200, "demo GET %s status" % path)
        return r.json()["calls"]

    def healthy(self):
        r = self.get("/healthz")
        eq(r.status, 200, "GET /healthz status")
        return r


# ---------------------------------------------------------------- HTTP client

class Response:
    def __init__(self, status, reason, headers, body, version):
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (name, value), names as sent
        self.body = body
        self.version = version

    def header(self, name):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def json(self):
        try:
            return json.loads(self.body.decode("utf-8"))
        except ValueError as e:
            fail("response body is not JSON (%s): %r" % (e, self.body[:300]))

    def __repr__(self):
        return "<%d %s %r>" % (self.status, self.reason, self.body[:300])


class Conn:
    """One TCP connection. Reads buffer what they do not consume, so pipelined
    responses can be read one after another."""

    def __init__(self, port, timeout=DEFAULT_TIMEOUT, rcvbuf=None, ctx=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.buf = b""
        self.eof = False
        self.timeout = timeout
        if ctx is not None:
            ctx.closers.append(self.close)

    def send(self, data):
        self.sock.sendall(data)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def _fill(self, deadline):
        """Reads more bytes; False at EOF. TestFailure past the deadline."""
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            fail("read timed out (have %d bytes: %r)" % (len(self.buf), self.buf[:200]))
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            fail("read timed out (have %d bytes: %r)" % (len(self.buf), self.buf[:200]))
        except ConnectionResetError:
            self.eof = True
            return False
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_until(self, marker, deadline):
        while marker not in self.buf:
            if not self._fill(deadline):
                fail("connection closed before %r (have %r)" % (marker, self.buf[:300]))
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_exact(self, n, deadline):
        while len(self.buf) < n:
            if not self._fill(deadline):
                fail("connection closed after %d of %d bytes" % (len(self.buf), n))
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_to_eof(self, deadline):
        while self._fill(deadline):
            pass
        out, self.buf = self.buf, b""
        return out

    def wait_eof(self, timeout):
        """True when the peer closes (or resets) within timeout; the bytes
        read meanwhile are discarded."""
        deadline = time.monotonic() + timeout
        try:
            while self._fill(deadline):
                self.buf = b""
        except TestFailure:
            return False
        return True

    def read_head(self, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        head = self.read_until(b"\r\n\r\n", deadline).decode("latin-1")
        lines = head.split("\r\n")
        m = re.match(r"(HTTP/1\.[01]) (\d{3}) ?(.*)$", lines[0])
        expect(m is not None, "bad status line %r" % lines[0])
        headers = []
        for l in lines[1:]:
            if not l:
                continue
            k, _, v = l.partition(":")
            headers.append((k.strip(), v.strip()))
        return m.group(1), int(m.group(2)), m.group(3), headers

    def read_response(self, timeout=None, head_request=False):
        deadline = time.monotonic() + (timeout or self.timeout)
        version, status, reason, headers = self.read_head(deadline - time.monotonic())
        r = Response(status, reason, headers, b"", version)
        te = (r.header("Transfer-Encoding") or "").lower()
        cl = r.header("Content-Length")
        if head_request or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif "chunked" in te:
            body = b""
            while True:
                size_line = self.read_until(b"\r\n", deadline)
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    # trailers until an empty line
                    while self.read_until(b"\r\n", deadline) != b"\r\n":
                        pass
                    break
                body += self.read_exact(size, deadline)
                self.read_exact(2, deadline)
        elif cl is not None:
            body = self.read_exact(int(cl), deadline)
        else:
            body = self.read_to_eof(deadline)
        r.body = body
        return r


def build_request(method, path, body=None, headers=None, host="127.0.0.1"):
    hdrs = {"Host": host}
    if headers:
        hdrs.update(headers)
    if body is not None and not any(k.lower() in ("content-length", "transfer-encoding") for k in hdrs):
        hdrs["Content-Length"] = str(len(body))
    out = "%s %s HTTP/1.1\r\n" % (method, path)
    for k, v in hdrs.items():
        out += "%s: %s\r\n" % (k, v)
    out += "\r\n"
    return out.encode("latin-1") + (body or b"")


def request(port, method, path, body=None, headers=None, timeout=DEFAULT_TIMEOUT):
    """One request on a fresh connection (Connection: close)."""
    h = {"Connection": "close"}
    if headers:
        h.update(headers)
    c = Conn(port, timeout)
    try:
        c.send(build_request(method, path, body, h))
        return c.read_response(timeout, head_request=(method == "HEAD"))
    finally:
        c.close()


def raw_exchange(port, data, timeout=DEFAULT_TIMEOUT):
    """Sends raw bytes, returns the first response."""
    c = Conn(port, timeout)
    try:
        c.send(data)
        return c.read_response(timeout)
    finally:
        c.close()


def check_error(resp, status, what, code=None):
    """The status and the JSON error shape {"error":{"code","message"}}."""
    if resp.status != status:
        fail("%s: expected status %d, got %d (body %r)" % (what, status, resp.status, resp.body[:300]))
    ctype = resp.header("Content-Type") or ""
    expect(ctype.startswith("application/json"),
           "%s: error Content-Type is %r, want application/json" % (what, ctype))
    obj = resp.json()
    expect(isinstance(obj, dict) and isinstance(obj.get("error"), dict),
           "%s: error body not {\"error\":{...}}: %r" % (what, obj))
    err = obj["error"]
    expect(isinstance(err.get("code"), str) and re.fullmatch(r"[a-z0-9_]+", err["code"] or "") is not None,
           "%s: error.code not snake_case string: %r" % (what, err))
    expect(isinstance(err.get("message"), str) and err["message"] != "",
           "%s: error.message missing/empty: %r" % (what, err))
    if code is not None:
        eq(err["code"], code, "%s: error.code" % what)
    return err


# ---------------------------------------------------------------- SSE client

class Event:
    __slots__ = ("id", "has_id", "type", "data", "raw", "at")

    def __init__(self, id_, has_id, type_, data, raw, at):
        self.id = id_
        self.has_id = has_id
        self.type = type_
        self.data = data  # the data text (str)
        self.raw = raw
        self.at = at      # time.monotonic() when dispatched

    def json(self):
        try:
            return json.loads(self.data)
        except ValueError:
            fail("event %s data is not JSON: %r" % (self.type, self.data[:300]))

    def key(self):
        return (self.id, self.type, self.data)

    def __repr__(self):
        return "<%s id=%r %s>" % (self.type, self.id, self.data[:120])


class SseClient:
    """GET an SSE stream (or POST one: ADK's /run_sse) and parse it on a thread.

    Each event records whether it had an id line of its own (has_id); the
    stream's opening bytes (the "retry:" line) and comments are kept too.
    raw is the body (de-chunked when the answer is chunked); arrivals holds
    (time.monotonic(), bytes) for every read of the socket. A chunked body
    ends either with its last chunk (completed: a normal end; the
    connection's later bytes stay in conn.buf, so the test may send its next
    request on conn) or with a close before it (cut)."""

    def __init__(self, ctx, port, path, headers=None, timeout=DEFAULT_TIMEOUT, expect_status=200,
                 version="HTTP/1.1", method="GET", body=None):
        self.ctx = ctx
        self.path = path
        self.conn = Conn(port, timeout)
        ctx.closers.append(self.close)
        h = {}
        if headers:
            h.update(headers)
        req = build_request(method, path, body, h)
        if version != "HTTP/1.1":
            req = req.replace(b" HTTP/1.1\r\n", (" %s\r\n" % version).encode(), 1)
        self.conn.send(req)
        self.head_at = time.monotonic()
        version, status, reason, hdrs = self.conn.read_head(timeout)
        self.status = status
        self.resp = Response(status, reason, hdrs, b"", version)
        if status != expect_status:
            body = b""
            try:
                cl = self.resp.header("Content-Length")
                if cl:
                    body = self.conn.read_exact(int(cl), time.monotonic() + timeout)
            except TestFailure:
                pass
            fail("%s %s: expected %d, got %d %r" % (method, path, expect_status, status, body[:300]))
        self.events = []
        self.comments = []
        self.retry = None
        self.raw = bytearray()
        self.arrivals = []
        self.chunked = "chunked" in (self.resp.header("Transfer-Encoding") or "").lower()
        self.completed = False  # the last chunk arrived
        self.cut = False        # the connection closed before it
        self.eof = False
        self.closed = False
        self.error = None
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def header(self, name):
        return self.resp.header(name)

    def close(self):
        with self.cond:
            self.closed = True
        self.conn.close()

    def _run(self):
        sock = self.conn.sock
        pending = bytes(self.conn.buf)
        self.conn.buf = b""
        wire = b""        # chunked: bytes not decoded yet
        chunk_left = 0    # data bytes of the current chunk still to come
        state = "size"    # "size" line, "data", "crlf" after data, "last" CRLF
        line_buf = b""
        cur = {"id": None, "has_id": False, "event": None, "data": [], "raw": []}

        def feed(data):
            nonlocal line_buf, cur
            with self.cond:
                self.raw += data
            line_buf += data
            while b"\n" in line_buf:
                line, line_buf = line_buf.split(b"\n", 1)
                if line.endswith(b"\r"):
                    line = line[:-1]
                text = line.decode("utf-8", "replace")
                if text == "":
                    if cur["data"] or cur["event"] is not None or cur["has_id"]:
                        ev = Event(cur["id"], cur["has_id"], cur["event"] or "message",
                                   "\n".join(cur["data"]), "\n".join(cur["raw"]), time.monotonic())
                        with self.cond:
                            self.events.append(ev)
                            self.cond.notify_all()
                    cur = {"id": None, "has_id": False, "event": None, "data": [], "raw": []}
                    continue
                cur["raw"].append(text)
                if text.startswith(":"):
                    with self.cond:
                        self.comments.append(text[1:].strip())
                        self.cond.notify_all()
                    cur["raw"].pop()
                    continue
                name, _, value = text.partition(":")
                if value.startswith(" "):
                    value = value[1:]
                if name == "id":
                    cur["id"] = value
                    cur["has_id"] = True
                elif name == "event":
                    cur["event"] = value
                elif name == "data":
                    cur["data"].append(value)
                elif name == "retry":
                    with self.cond:
                        self.retry = value
                        self.cond.notify_all()
                    cur["raw"].pop()

        def dechunk(data):
            """Body bytes of data; sets completed at the last chunk."""
            nonlocal wire, chunk_left, state
            wire += data
            out = b""
            while not self.completed:
                if state == "data":
                    take = wire[:chunk_left]
                    out += take
                    wire = wire[len(take):]
                    chunk_left -= len(take)
                    if chunk_left:
                        break
                    state = "crlf"
                elif state in ("crlf", "last"):
                    if len(wire) < 2:
                        break
                    if wire[:2] != b"\r\n":
                        raise TestFailure("bad chunk framing at %r" % wire[:40])
                    wire = wire[2:]
                    if state == "last":
                        with self.cond:
                            self.completed = True
                        self.conn.buf = wire  # the next response on this connection
                        wire = b""
                        break
                    state = "size"
                else:
                    i = wire.find(b"\r\n")
                    if i < 0:
                        break
                    size = int(wire[:i].split(b";")[0], 16)
                    wire = wire[i + 2:]
                    chunk_left = size
                    state = "data" if size else "last"
            return out

        def receive(data):
            with self.cond:
                self.arrivals.append((time.monotonic(), len(data)))
            feed(dechunk(data) if self.chunked else data)

        try:
            if pending:
                receive(pending)  # the whole body may have come with the head
            try:
                sock.settimeout(0.1)
            except OSError:  # closed by the test already
                return
            while not self.completed:
                with self.cond:
                    if self.closed:
                        return
                try:
                    data = sock.recv(65536)
                except socket.timeout:
                    continue
                except OSError as e:
                    with self.cond:
                        if not self.closed:
                            self.error = e
                    break
                if not data:
                    break
                receive(data)
        except TestFailure as e:
            with self.cond:
                self.error = e
        finally:
            with self.cond:
                self.cut = self.chunked and not self.completed and not self.closed
                self.eof = True
                self.cond.notify_all()

    # ---- waiting

    def wait_for(self, pred, timeout, what):
        """Waits until pred(events) is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                v = pred(self.events)
                if v:
                    return v
                if self.eof:
                    fail("stream %s ended (error=%r) while waiting for %s; got %s"
                         % (self.path, self.error, what, self.summary()))
                left = deadline - time.monotonic()
                if left <= 0:
                    fail("timed out after %.1fs waiting for %s on %s; got %s"
                         % (timeout, what, self.path, self.summary()))
                self.cond.wait(min(left, 0.2))

    def wait_event(self, type_, timeout=DEFAULT_TIMEOUT, run_id=None, where=None):
        """The first event of this type (and run_id / matching where(data))."""
        def pred(evs):
            for e in evs:
                if e.type != type_:
                    continue
                if run_id is not None or where is not None:
                    d = e.json()
                    if run_id is not None and d.get("run_id") != run_id:
                        continue
                    if where is not None and not where(d):
                        continue
                return e
            return None
        return self.wait_for(pred, timeout, "%s%s" % (type_, " run_id=%s" % run_id if run_id else ""))

    def wait_count(self, n, timeout=DEFAULT_TIMEOUT):
        return self.wait_for(lambda evs: len(evs) >= n and list(evs[:n]), timeout, "%d events" % n)

    def wait_retry(self, timeout=DEFAULT_TIMEOUT):
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.retry is None:
                if self.eof:
                    fail("stream %s ended before its retry line" % self.path)
                left = deadline - time.monotonic()
                if left <= 0:
                    fail("no retry line within %.1fs on %s (raw %r)" % (timeout, self.path, bytes(self.raw[:200])))
                self.cond.wait(min(left, 0.2))
            return self.retry

    def wait_comment(self, text, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while text not in self.comments:
                if self.eof:
                    fail("stream %s ended while waiting for comment %r" % (self.path, text))
                left = deadline - time.monotonic()
                if left <= 0:
                    fail("no %r comment within %.1fs (comments %r)" % (text, timeout, self.comments))
                self.cond.wait(min(left, 0.2))

    def wait_eof(self, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.eof:
                left = deadline - time.monotonic()
                if left <= 0:
                    fail("stream %s did not end within %.1fs; got %s" % (self.path, timeout, self.summary()))
                self.cond.wait(min(left, 0.2))

    def snapshot(self):
        with self.cond:
            return list(self.events)

    def summary(self, n=12):
        evs = self.snapshot()
        if len(evs) <= n:
            return "%d events %r" % (len(evs), evs)
        return "%d events, first %r ... last %r" % (len(evs), evs[:n // 2], evs[-n // 2:])


def run_events(events, run_id):
    """The slice of events belonging to one run: from its run.queued or
    run.started (data.run_id) to its terminal event, inclusive; agent.event
    frames between them are attributed to the run (they may not carry a
    run_id: their data is the upstream's JSON verbatim)."""
    out = []
    inside = False
    for e in events:
        d = None
        if e.type != "agent.event":
            try:
                d = json.loads(e.data)
            except ValueError:
                d = None
        rid = d.get("run_id") if isinstance(d, dict) else None
        if e.type in ("run.queued", "run.started") and rid == run_id:
            inside = True
        if inside and (e.type == "agent.event" or rid == run_id):
            out.append(e)
        if e.type in TERMINAL and rid == run_id:
            break
        if inside and rid is not None and rid != run_id and e.type in ("run.queued", "run.started"):
            inside = False
    return out


TERMINAL = ("run.completed", "run.failed", "run.cancelled", "run.timed_out", "run.superseded")


def terminal_events(events, run_id):
    out = []
    for e in events:
        if e.type in TERMINAL:
            d = e.json()
            if d.get("run_id") == run_id:
                out.append(e)
    return out


# ---------------------------------------------------------------- per-test context

class Ctx:
    def __init__(self, name):
        self.name = name
        self.daemons = []
        self.closers = []
        # Run after the daemons stopped (a store they use, e.g. the cluster
        # suite's redis-server); each returns a list of problems or None.
        self.after = []

    def daemon(self, *args, upstream="demo", env=None):
        return Daemon(self, args, upstream=upstream, env=env)

    def agent(self, *args):
        return Daemon(self, args, agent=True)

    def sse(self, d, path, **kw):
        return SseClient(self, d.port, path, **kw)

    def conn(self, d, timeout=DEFAULT_TIMEOUT, rcvbuf=None):
        return Conn(d.port, timeout, rcvbuf=rcvbuf, ctx=self)

    def cleanup(self):
        """Closes sockets and stops daemons; returns the daemons' problems."""
        for c in self.closers:
            try:
                c()
            except Exception:
                pass
        problems = []
        for d in self.daemons:
            try:
                problems += d.stop()
            except Exception as e:  # never let cleanup hang the suite
                problems.append("stopping %s: %r" % (d.name(), e))
        for fn in self.after:
            try:
                problems += fn() or []
            except Exception as e:
                problems.append("cleanup: %r" % e)
        return problems


# ---------------------------------------------------------------- registry

TESTS = []


SKIPPED = []  # names left out under RUNCAST_VALGRIND
MEMORY_ONLY = []  # (name, reason) left out under RUNCAST_TEST_STORE=redis


def test(timeout=20.0, valgrind=True, memory_only=None):
    """Registers a test. valgrind=False: leave it out under RUNCAST_VALGRIND
    (it measures timings that valgrind's slowness breaks). memory_only: why
    the behaviour it checks is memory mode's alone (README: cluster mode);
    under RUNCAST_TEST_STORE=redis it is left out and listed with that
    reason."""
    def deco(fn):
        if VALGRIND and not valgrind:
            SKIPPED.append(fn.__name__)
        elif memory_only and STORE != "memory":
            MEMORY_ONLY.append((fn.__name__, memory_only))
        else:
            TESTS.append((fn.__name__, fn, timeout * TIME_SCALE))
        return fn
    return deco


# ---------------------------------------------------------------- API helpers

def spath(sid, app="app", user="u"):
    return "/apps/%s/users/%s/sessions/%s" % (app, user, sid)


def post_run(d, sid, message, expect_status=202, conn=None, **kw):
    """POST {"message": message} to the session's run endpoint; checks the
    202 shape and returns (json, posted_at_us, returned_at_monotonic)."""
    body = json.dumps({"message": message}).encode()
    t_us = now_us()
    path = spath(sid, **kw) + "/run"
    if conn is not None:
        conn.send(build_request("POST", path, body, {"Content-Type": "application/json"}))
        r = conn.read_response()
    else:
        r = request(d.port, "POST", path, body=body, headers={"Content-Type": "application/json"})
    if r.status != expect_status:
        fail("POST %s %r: expected %d, got %d %r" % (path, message, expect_status, r.status, r.body[:300]))
    if expect_status != 202:
        return r, t_us, time.monotonic()
    j = r.json()
    eq(j.get("success"), True, "POST run success")
    expect(isinstance(j.get("run_id"), str) and j["run_id"], "POST run: run_id missing: %r" % j)
    eq(j.get("session_id"), sid, "POST run session_id")
    expect(j.get("status") in ("running", "queued"), "POST run status: %r" % j)
    eq(j.get("events"), path, "POST run events (stream path)")
    return j, t_us, time.monotonic()


def task_status(d, sid, expect_status=200, **kw):
    path = spath(sid, **kw) + "/task-status"
    r = d.get(path)
    if expect_status == 404:
        check_error(r, 404, "GET %s" % path)
        return None
    if r.status != expect_status:
        fail("GET %s: expected %d, got %d %r" % (path, expect_status, r.status, r.body[:300]))
    return r.json()


def all_status(d, query=""):
    r = d.get("/task-status" + query)
    eq(r.status, 200, "GET /task-status status")
    return r.json()


def demo_call(d, sid, text_contains=None):
    """The demo agent's calls for a session (optionally only those whose text
    contains text_contains)."""
    calls = d.demo_calls(sid)
    if text_contains is not None:
        calls = [c for c in calls if text_contains in c.get("text", "")]
    return calls
