#!/usr/bin/env python3
"""run.py: runs runcast's integration suite against $RUNCAST_BIN (default
build/runcast).

  python3 tests/integration/run.py [FILTER...]

A FILTER selects the tests whose name contains it (any of them). Each test
runs with its own daemon(s) under an overall timeout; the runner prints one
ok/FAIL line per test and ends with exactly one line
`integration: N passed, M failed`. Exit status 1 on any failure.

The test modules are imported only when this file runs as a script, so that
another suite (tests/cluster/run.py) can load this runner and call
main(argv, suite=...) over its own tests."""

import os
import sys
import threading
import time
import traceback

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402


def run_one(name, fn, timeout):
    ctx = harness.Ctx(name)
    result = {}

    def body():
        try:
            fn(ctx)
            result["ok"] = True
        except harness.TestFailure as e:
            result["error"] = str(e)
        except BaseException:
            result["error"] = traceback.format_exc().rstrip()

    t0 = time.monotonic()
    th = threading.Thread(target=body, daemon=True, name=name)
    th.start()
    th.join(timeout)
    timed_out = th.is_alive()
    problems = ctx.cleanup()
    if timed_out:
        th.join(5)
    elapsed = time.monotonic() - t0
    errors = []
    if timed_out:
        errors.append("test timed out after %.0fs" % timeout)
    if "error" in result:
        errors.append(result["error"])
    errors += problems
    if not errors and not result.get("ok"):
        errors.append("test did not finish")
    return errors, elapsed


def main(argv, suite="integration"):
    filters = [a for a in argv if not a.startswith("-")]
    if not os.path.exists(harness.RUNCAST_BIN):
        print("run.py: binary %s not found" % harness.RUNCAST_BIN, file=sys.stderr)
    selected = [t for t in harness.TESTS if not filters or any(f in t[0] for f in filters)]
    passed = failed = 0
    for name, fn, timeout in selected:
        errors, elapsed = run_one(name, fn, timeout)
        if errors:
            failed += 1
            print("FAIL %s (%.2fs)" % (name, elapsed))
            for e in errors:
                for line in e.splitlines():
                    print("     " + line)
        else:
            passed += 1
            print("ok   %s (%.2fs)" % (name, elapsed))
        sys.stdout.flush()
    if harness.SKIPPED:
        print("left out under valgrind (timing-sensitive, they run in make test and make asan): %d: %s"
              % (len(harness.SKIPPED), ", ".join(harness.SKIPPED)))
    for name, why in harness.MEMORY_ONLY:
        print("memory mode only (run by make test): %s: %s" % (name, why))
    if harness.STORE != "memory":
        suite += " (--store %s)" % harness.STORE
    print("%s: %d passed, %d failed" % (suite, passed, failed))
    return 1 if failed or not selected else 0


if __name__ == "__main__":
    import test_runs  # noqa: E402,F401
    import test_streams  # noqa: E402,F401
    import test_http  # noqa: E402,F401
    import test_controls  # noqa: E402,F401
    import test_hostile  # noqa: E402,F401
    import test_auth  # noqa: E402,F401
    import test_adk  # noqa: E402,F401
    import test_dropin  # noqa: E402,F401
    import test_drain  # noqa: E402,F401
    import test_proxy  # noqa: E402,F401
    import test_agui  # noqa: E402,F401
    import test_demo  # noqa: E402,F401
    sys.exit(main(sys.argv[1:]))
