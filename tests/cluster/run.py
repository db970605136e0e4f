#!/usr/bin/env python3
"""run.py: runs runcast's cluster-mode fault tests (tests/cluster/) against
$RUNCAST_BIN (default build/runcast), each with its own private redis-server
(redis-server from $PATH, or $REDIS_SERVER) and runcast nodes.

  python3 tests/cluster/run.py [FILTER...]

The runner is tests/integration/run.py's (one ok/FAIL line per test, each
under its own timeout); the last line is `cluster: N passed, M failed`.
RUNCAST_CLUSTER_SEED fixes the randomized test's seed (it prints the one it
used); RUNCAST_CLUSTER_STEPS its number of steps."""

import importlib.util
import os
import shutil
import subprocess
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
HERE = os.path.dirname(os.path.abspath(__file__))
INTEGRATION = os.path.join(HERE, "..", "integration")
sys.path.insert(0, INTEGRATION)
sys.path.insert(0, HERE)

import harness  # noqa: E402
import test_checker  # noqa: E402,F401
import test_cluster  # noqa: E402,F401
import test_random  # noqa: E402,F401
import test_run_cluster  # noqa: E402,F401


def load_runner():
    spec = importlib.util.spec_from_file_location("integration_run", os.path.join(INTEGRATION, "run.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def preflight():
    from harness import REDIS_SERVER
    if not (os.path.exists(REDIS_SERVER) or shutil.which(REDIS_SERVER)):
        print("cluster: redis-server not found (%s); scripts/bootstrap installs it" % REDIS_SERVER)
    try:
        out = subprocess.run([harness.RUNCAST_BIN, "--help"], capture_output=True, timeout=10)
        text = (out.stdout + out.stderr).decode("utf-8", "replace")
        if "--store" not in text:
            print("cluster: %s --help lists no --store: cluster mode is missing, the cluster tests will fail"
                  % harness.RUNCAST_BIN)
    except (OSError, subprocess.TimeoutExpired) as e:
        print("cluster: cannot run %s --help: %s" % (harness.RUNCAST_BIN, e))
    sys.stdout.flush()


def with_diagnostics(fn):
    """A failing test's message gets what its subscribers received and the
    nodes' warn/error log lines (cluster.diagnose)."""
    def wrapped(ctx):
        try:
            fn(ctx)
        except harness.TestFailure as e:
            raise harness.TestFailure("%s\n  --- diagnostics\n%s" % (e, cluster.diagnose(ctx)))
    return wrapped


if __name__ == "__main__":
    import cluster  # noqa: E402
    harness.TESTS[:] = [(name, with_diagnostics(fn), timeout) for name, fn, timeout in harness.TESTS]
    preflight()
    sys.exit(load_runner().main(sys.argv[1:], suite="cluster"))
