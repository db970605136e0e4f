"""A randomized cluster test: 3 nodes, 3 sessions, random POST / DELETE /
subscribe / reconnect / close across the nodes, with node kills (kill -9,
later a replacement node), freezes (SIGSTOP for up to about two leases, then
SIGCONT), Redis pub/sub kills and short CLIENT PAUSEs, with two upstream calls
at once per node (so runs also queue), then the Checker over every stream.

The seed is printed; RUNCAST_CLUSTER_SEED=N replays a run (the timing of
the daemons still varies), RUNCAST_CLUSTER_STEPS=N changes its length, RUNCAST_CLUSTER_VERBOSE=1 prints
the operations also when the test passes."""

import os
import random
import sys
import time

from harness import TestFailure, eq, expect, spath, test, wait_until
from cluster import Checker, Cluster, data_of, is_terminal_of, status_of

STEPS = int(os.environ.get("RUNCAST_CLUSTER_STEPS") or 150)


def seed_of():
    env = os.environ.get("RUNCAST_CLUSTER_SEED")
    return int(env) if env else random.SystemRandom().randrange(1, 1 << 31)


@test(timeout=150)
def test_random_operations_with_node_kills_keep_every_stream_consistent(t):
    seed = seed_of()
    print("     random: RUNCAST_CLUSTER_SEED=%d RUNCAST_CLUSTER_STEPS=%d" % (seed, STEPS))
    sys.stdout.flush()
    try:
        random_ops(t, random.Random(seed))
    except TestFailure as e:
        raise TestFailure("RUNCAST_CLUSTER_SEED=%d: %s" % (seed, e))


def random_ops(t, rng):
    # Two upstream calls at once per node: some runs queue (run.queued), and
    # are superseded, cancelled or reaped while queued.
    c = Cluster(t, 3, args=["--history", "5000", "--max-concurrent-runs", "2"])
    chk = Checker(t)
    sids = ["ra", "rb", "rc"]   # random POSTs and DELETEs go to these
    doomed = {"kill": "rk", "freeze": "rf"}   # one long run each, whose node dies or freezes
    watched = sids + list(doomed.values())
    posted_on = {}      # run_id -> node name it was posted to
    impaired = set()    # names of nodes ever killed or frozen
    log = []            # what was done, for the failure message

    def up():
        return c.alive()

    # One anchor per session stays subscribed from its first event to the end,
    # always resuming with its Last-Event-ID (it has one from the first run
    # on), so that every run posted must reach some stream.
    anchors = [chk.sub(rng.choice(up()), sid, label="anchor-" + sid) for sid in watched]
    for a in anchors:
        j = chk.post(rng.choice(up()), a.sid, "first !events=2 !rate=100")
        a.wait_terminal(j["run_id"], 5)
    active = list(anchors)   # subs still connected (or to reconnect)
    dead = None              # (node, step) of the killed node not yet replaced
    frozen = None            # (node, step) of the SIGSTOPped node
    kills = 0
    # Besides the random ones, one kill and one freeze at chosen steps, each
    # of the node that just started a long run in a session of its own (no
    # random POST supersedes it): that run must end node_lost.
    forced = [(rng.randrange(STEPS // 5, STEPS // 2), "kill"), (rng.randrange(STEPS // 2, STEPS - 20), "freeze")]
    doomed_runs = {}

    # A forced fault waits for a random kill or freeze to end, so the loop
    # runs on past STEPS (a bounded few) until both have happened.
    step = -1
    while step + 1 < STEPS or (forced and step + 1 < STEPS + 100):
        step += 1
        # A browser reconnects a stream its node dropped (EventSource retry).
        for s in active:
            if s.cur.eof:
                n = rng.choice(up())
                s.reconnect(n)
                log.append("%d: %s's stream ended; resumed on %s" % (step, s.label, n.name))
        op = rng.choices(["post", "delete", "subscribe", "reconnect", "close", "kill", "freeze",
                          "pubsub", "pause"], weights=[30, 8, 8, 10, 4, 4, 4, 2, 2])[0]
        n = rng.choice(up())
        sid = rng.choice(sids)
        victim = None
        if forced and forced[0][0] <= step and dead is None and frozen is None:
            op = forced.pop(0)[1]
            victim = n
            j = chk.post(n, doomed[op], "doomed !events=400 !rate=20")
            doomed_runs[j["run_id"]] = op
            posted_on[j["run_id"]] = n.name
            anchor = anchors[watched.index(doomed[op])]
            anchor.wait_event("run.started", 5, run_id=j["run_id"])
            log.append("%d: POST %s on %s -> %s (to %s)" % (step, doomed[op], n.name, j["run_id"], op))
        if op == "post":
            msg = "m%d !events=%d !rate=%d" % (step, rng.randint(1, 40), rng.choice([20, 50, 200]))
            j = chk.post(n, sid, msg)
            posted_on[j["run_id"]] = n.name
            log.append("%d: POST %s on %s -> %s" % (step, sid, n.name, j["run_id"]))
        elif op == "delete":
            r = n.delete(spath(sid) + "/run")
            expect(r.status in (200, 404), "step %d: DELETE %s on %s: %d %r" % (step, sid, n.name, r.status, r.body))
            log.append("%d: DELETE %s on %s -> %d" % (step, sid, n.name, r.status))
        elif op == "subscribe" and len(active) < 10:
            sid = rng.choice(watched)
            s = chk.sub(n, sid)
            active.append(s)
            log.append("%d: %s subscribes to %s on %s" % (step, s.label, sid, n.name))
        elif op == "reconnect":
            s = rng.choice(active)
            s.reconnect(n)
            log.append("%d: %s resumes on %s" % (step, s.label, n.name))
        elif op == "close":
            extra = [s for s in active if s not in anchors]
            if extra:
                s = rng.choice(extra)
                s.close()
                active.remove(s)
                log.append("%d: %s closes" % (step, s.label))
        elif op == "kill" and dead is None and frozen is None and (kills < 2 or victim is not None):
            victim = victim or rng.choice(up())
            victim.kill9()
            impaired.add(victim.name)
            dead = (victim, step)
            kills += 1
            log.append("%d: kill -9 %s" % (step, victim.name))
        elif op == "freeze" and dead is None and frozen is None:
            forced_freeze = victim is not None
            victim = victim or rng.choice(up())
            victim.freeze()
            impaired.add(victim.name)
            least = c.lease_s + 1.5 if forced_freeze else 0.5   # past the lease: reaped, then fenced
            now = time.monotonic()
            frozen = (victim, step, now + rng.uniform(least, 2 * c.lease_s + 1), now + least)
            log.append("%d: SIGSTOP %s" % (step, victim.name))
        elif op == "pause":
            ms = rng.choice([100, 300, 600])
            c.redis.pause(ms, "ALL")
            log.append("%d: CLIENT PAUSE %d ALL" % (step, ms))
        elif op == "pubsub":
            k = c.redis.kill_pubsub()
            log.append("%d: CLIENT KILL TYPE pubsub (%d)" % (step, k))
        if dead is not None and step - dead[1] >= 8:
            new = c.restart_node(dead[0])
            log.append("%d: %s replaces the killed %s" % (step, new.name, dead[0].name))
            dead = None
        if frozen is not None and forced and forced[0][0] <= step:
            frozen = frozen[:2] + (frozen[3], frozen[3])   # a forced fault is due: thaw at the earliest
        if frozen is not None and time.monotonic() >= frozen[2]:
            frozen[0].thaw()
            log.append("%d: SIGCONT %s" % (step, frozen[0].name))
            frozen = None
        time.sleep(rng.uniform(0, 0.12))   # random pacing between operations (seeded), not a wait

    expect(not forced, "forced faults left undone: %r (raise RUNCAST_CLUSTER_STEPS)" % forced)
    if frozen is not None:
        time.sleep(max(0.0, frozen[2] - time.monotonic()))   # the freeze's chosen length
        frozen[0].thaw()
        log.append("end: SIGCONT %s" % frozen[0].name)
    try:
        settle(t, c, chk, watched, active, rng)
        chk.verify()
        for rid, why in doomed_runs.items():
            e = anchors[watched.index(doomed[why])].wait_terminal(rid, 1)
            eq((e.type, (data_of(e) or {}).get("code")), ("run.failed", "node_lost"),
               "the long run of the node that was %s" % ("killed" if why == "kill" else "frozen"))
        # node_lost only for runs posted to a node that was killed or frozen
        for s in chk.subs:
            for e in s.events():
                d = data_of(e) or {}
                if e.type == "run.failed" and d.get("code") == "node_lost":
                    owner = posted_on.get(d.get("run_id"))
                    expect(owner in impaired, "run %s failed node_lost but its node %s was never killed or "
                                              "frozen" % (d.get("run_id"), owner))
                expect(not (e.type == "run.failed" and d.get("code") == "store_lost"),
                       "run %s failed store_lost (Redis kept its data)" % d.get("run_id"))
    except TestFailure as e:
        shown = log if os.environ.get("RUNCAST_CLUSTER_VERBOSE") else log[-60:]
        raise TestFailure("%s\n  operations%s:\n    %s"
                          % (e, "" if shown is log else " (the last 60; all: RUNCAST_CLUSTER_VERBOSE=1)",
                             "\n    ".join(shown)))
    if os.environ.get("RUNCAST_CLUSTER_VERBOSE"):
        print("     operations:\n       " + "\n       ".join(log))
        kinds = {}
        for s in chk.subs:
            for e in s.events():
                if e.type != "agent.event":
                    d = data_of(e) or {}
                    k = e.type + ("/" + str(d.get("code") or d.get("reason")) if e.type in ("run.failed", "run.cancelled",
                                                                                             "stream.reset") else "")
                    kinds[k] = kinds.get(k, 0) + 1
        print("     events received (all streams): %s" % ", ".join("%s %d" % kv for kv in sorted(kinds.items())))


def settle(t, c, chk, sids, active, rng):
    """Every run ends, every stream catches up to the same last event."""
    def idle(sid):
        st = status_of(c.alive()[0], sid)
        return st is None or not st["has_task"]
    for sid in sids:
        wait_until(lambda: idle(sid), 3 + 2 * c.lease_s + 5, "no active run in %s" % sid, interval=0.1)
    for s in active:
        if s.cur.eof:
            s.reconnect(rng.choice(c.alive()))
    for sid in sids:
        st = status_of(c.alive()[0], sid)
        if st is None:
            continue
        last = st["run_id"]
        subs = [s for s in active if s.sid == sid]
        for s in subs:
            s.wait_for(lambda evs: any(is_terminal_of(e, last) for e in evs), 6,
                       "the terminal of %s's last run %s" % (sid, last))
        ends = sorted(set(s.last_id() for s in subs))
        eq(len(ends), 1, "last ids of %s's streams (%s)" % (sid, ", ".join(s.label for s in subs)))
