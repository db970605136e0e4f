"""The SSE stream: framing, replay, resume, fan-out, slow subscribers, heartbeats."""

import time
import urllib.parse

from harness import (Conn, all_status, build_request, demo_call, eq, expect, fail, post_run,
                     run_events, spath, task_status, test, wait_until)


def keys(evs):
    return [e.key() for e in evs]


def check_same(got, want, what):
    g, w = keys(got), keys(want)
    if g == w:
        return
    for i, (a, b) in enumerate(zip(g, w)):
        if a != b:
            fail("%s: first difference at %d: got %r, want %r (lengths %d/%d)"
                 % (what, i, a[:2] + (a[2][:80],), b[:2] + (b[2][:80],), len(g), len(w)))
    fail("%s: lengths differ: got %d, want %d (got tail %r, want tail %r)"
         % (what, len(g), len(w), g[-2:], w[-2:]))


def completed_run(t, d, sid, msg, s):
    """POSTs msg and waits on s for its run.completed; returns the run_id."""
    j, _, _ = post_run(d, sid, msg)
    s.wait_event("run.completed", 10, run_id=j["run_id"])
    return j["run_id"]


@test()
def test_stream_headers_retry_line_and_get_creates_the_session(t):
    d = t.daemon("--sse-retry", "1500ms")
    sid = "fresh"
    task_status(d, sid, expect_status=404)
    s = t.sse(d, spath(sid) + "/run")
    eq(s.wait_retry(), "1500", "retry value")
    ctype = s.header("Content-Type") or ""
    expect(ctype.split(";")[0].strip() == "text/event-stream", "Content-Type %r" % ctype)
    eq(s.header("Cache-Control"), "no-cache", "Cache-Control")
    eq(s.header("X-Accel-Buffering"), "no", "X-Accel-Buffering")
    # no blank line after it: it joins the first event block, so no parser
    # dispatches an empty message for it
    eq(bytes(s.raw), b"retry: 1500\n", "the stream's opening bytes")
    st = task_status(d, sid)
    eq(st["session_id"], sid, "session_id")
    eq(st["has_task"], False, "has_task")
    eq(st["status"], None, "status")
    eq(st["run_id"], None, "run_id")
    eq(st["subscribers"], 1, "subscribers")
    eq(s.snapshot(), [], "events on a fresh session")


@test()
def test_event_framing_has_id_event_and_json_data(t):
    d = t.daemon()
    sid = "framing"
    s = t.sse(d, spath(sid) + "/run")
    s.wait_retry()
    rid = completed_run(t, d, sid, "frame me !word-delay=0", s)
    raw = bytes(s.raw).decode()
    expect(raw.startswith("retry: "), "stream opens with %r" % raw[:40])
    body = raw[raw.index("\n") + 1:]
    blocks = [b for b in body.split("\n\n") if b]
    evs = s.snapshot()
    eq(len(blocks), len(evs), "blocks vs parsed events")
    for blk, e in zip(blocks, evs):
        lines = blk.split("\n")
        eq([l.split(":", 1)[0] for l in lines], ["id", "event", "data"], "lines of %r" % blk[:80])
        eq(lines[0], "id: " + e.id, "id line")
        eq(lines[1], "event: " + e.type, "event line")
        expect(isinstance(e.json(), dict), "data is not a JSON object: %r" % e.data[:80])
    ids = [e.id for e in evs]
    eq(len(set(ids)), len(ids), "ids distinct")
    eq([e.type for e in evs][0], "run.started", "first event")
    eq(evs[0].json().get("run_id"), rid, "run.started run_id")


def _resume(t, use_header):
    d = t.daemon()
    sid = "resume"
    a = t.sse(d, spath(sid) + "/run")
    a.wait_retry()
    j, _, _ = post_run(d, sid, "!events=40 !rate=40")
    rid = j["run_id"]
    b = t.sse(d, spath(sid) + "/run")
    b.wait_for(lambda evs: sum(1 for e in evs if e.type == "agent.event") >= 5, 5, "5 agent events on b")
    b.close()
    b.thread.join(2)
    part = b.snapshot()
    expect(not any(e.type == "run.completed" for e in part), "run completed before b disconnected")
    last = part[-1].id
    if use_header:
        b2 = t.sse(d, spath(sid) + "/run", headers={"Last-Event-ID": last})
    else:
        b2 = t.sse(d, spath(sid) + "/run?last_event_id=" + urllib.parse.quote(last, safe=""))
    b2.wait_event("run.completed", 6, run_id=rid)
    a.wait_event("run.completed", 6, run_id=rid)
    rest = b2.snapshot()
    expect(rest and rest[0].type != "stream.reset", "resume sent stream.reset: %r" % rest[:1])
    full = a.snapshot()
    eq(full[0].type, "run.started", "a's first event")
    check_same(part + rest, full, "resumed sequence vs uninterrupted subscriber")
    eq(full[-1].json().get("events"), 40, "run.completed events")


@test()
def test_resume_with_last_event_id_header_has_no_gap_and_no_duplicate(t):
    _resume(t, True)


@test()
def test_resume_with_last_event_id_query_has_no_gap_and_no_duplicate(t):
    _resume(t, False)


@test()
def test_last_event_id_of_the_newest_event_replays_nothing(t):
    d = t.daemon()
    sid = "newest"
    a = t.sse(d, spath(sid) + "/run")
    a.wait_retry()
    completed_run(t, d, sid, "one !word-delay=0", a)
    last = a.snapshot()[-1].id
    b = t.sse(d, spath(sid) + "/run", headers={"Last-Event-ID": last})
    b.wait_retry()
    r2 = completed_run(t, d, sid, "two !word-delay=0", a)
    b.wait_event("run.completed", 5, run_id=r2)
    check_same(b.snapshot(), run_events(a.snapshot(), r2), "b after resuming at the newest id")


@test()
def test_demo_events_carry_their_send_time_and_sequence(t):
    """The benchmarks measure delivery latency from the demo agent's
    customMetadata.sent_at_us: it must be the wall clock when the event left
    the agent (after the POST, before it arrived, paced by !rate)."""
    d = t.daemon()
    sid = "stamps"
    s = t.sse(d, spath(sid) + "/run")
    s.wait_retry()
    wall_minus_mono = time.time() - time.monotonic()
    posted_us = time.time() * 1e6
    j, _, _ = post_run(d, sid, "!events=5 !rate=50 !bytes=64")
    s.wait_event("run.completed", 5, run_id=j["run_id"])
    agent = [e for e in run_events(s.snapshot(), j["run_id"]) if e.type == "agent.event"]
    eq(len(agent), 5, "agent events")
    meta = [e.json()["customMetadata"] for e in agent]
    eq([m["seq"] for m in meta], [0, 1, 2, 3, 4], "seq")
    sent = [m["sent_at_us"] for m in meta]
    slop_us = 2000  # time.time() vs the monotonic clock the reader stamps with
    for e, at in zip(agent, sent):
        eq(len(e.json()["content"]["parts"][0]["text"]), 64, "text bytes")
        arrived_us = (e.at + wall_minus_mono) * 1e6
        expect(posted_us - slop_us <= at <= arrived_us + slop_us,
               "sent_at_us %d not between the POST (%d) and the arrival (%d)"
               % (at, posted_us, arrived_us))
    eq(sent, sorted(sent), "sent_at_us in order")
    # 50 events/s: the fifth leaves about 80 ms after the first (1 ms timer steps).
    expect(sent[4] - sent[0] >= 70000, "5 events at 50/s spanned only %d us" % (sent[4] - sent[0]))


@test()
def test_five_subscribers_see_identical_sequences(t):
    d = t.daemon()
    sid = "five"
    subs = [t.sse(d, spath(sid) + "/run") for _ in range(5)]
    for s in subs:
        s.wait_retry()
    eq(task_status(d, sid)["subscribers"], 5, "subscribers")
    j, _, _ = post_run(d, sid, "!events=50 !word-delay=0")
    for s in subs:
        s.wait_event("run.completed", 5, run_id=j["run_id"])
    ref = subs[0].snapshot()
    eq(len(ref), 52, "events (started + 50 + completed)")
    for i, s in enumerate(subs[1:], 1):
        check_same(s.snapshot(), ref, "subscriber %d vs subscriber 0" % i)


@test(timeout=40)
def test_subscriber_that_never_reads_is_dropped_while_others_get_everything(t):
    # 6.4 MB of events: more than the kernel can absorb on loopback (the
    # sender's socket buffer autotunes up to tcp_wmem max, 4 MB) plus 64k;
    # the rate keeps each upstream burst far below 64k.
    d = t.daemon("--subscriber-buffer", "64k")
    sid = "slow"
    fast = t.sse(d, spath(sid) + "/run")
    fast.wait_retry()
    slow = t.conn(d, timeout=10, rcvbuf=4096)
    slow.send(build_request("GET", spath(sid) + "/run", None, {}))
    _, status, _, _ = slow.read_head()
    eq(status, 200, "slow subscriber status")
    eq(task_status(d, sid)["subscribers"], 2, "subscribers before the run")
    j, _, _ = post_run(d, sid, "!events=800 !bytes=8000 !word-delay=0 !rate=2000")
    rid = j["run_id"]
    done = fast.wait_event("run.completed", 20, run_id=rid)
    eq(done.json().get("events"), 800, "run.completed events")
    evs = fast.snapshot()
    eq(len(run_events(evs, rid)), 802, "fast subscriber's events of the run")
    wait_until(lambda: task_status(d, sid)["subscribers"] == 1, 5, "slow subscriber dropped (subscribers == 1)")
    # The dropped subscriber got a gap-free prefix and then the end of the stream.
    got = slow.read_to_eof(time.monotonic() + 10)
    wire = slow.buf + got
    # a cut, not a normal end: the chunked body lacks its last chunk
    expect(not wire.endswith(b"\r\n0\r\n\r\n"), "a dropped stream ended with the last chunk")
    text = wire.decode("utf-8", "replace")
    ids = [l[4:] for l in text.split("\n") if l.startswith("id: ")]
    full_ids = [e.id for e in evs]
    # the last id line may be cut mid-value; compare the complete ones
    complete = ids[:-1]
    eq(complete, full_ids[:len(complete)], "slow subscriber's ids are a prefix of the full sequence")
    expect(len(ids) < len(full_ids), "slow subscriber got everything (%d ids): was it dropped?" % len(ids))


@test()
def test_reader_that_keeps_up_is_not_dropped_by_an_upstream_burst(t):
    # 50 x 16k events sent back to back: an 800k burst, more than the 256k
    # subscriber buffer but far less than what the kernel's socket buffers
    # take on loopback. The subscriber reads at once, so nothing needs to
    # stay queued in runcast: it must get the whole run.
    d = t.daemon("--subscriber-buffer", "256k")
    sid = "burst"
    s = t.sse(d, spath(sid) + "/run")
    s.wait_retry()
    j, _, _ = post_run(d, sid, "!events=50 !bytes=16000 !word-delay=0")
    done = s.wait_event("run.completed", 10, run_id=j["run_id"])
    eq(done.json().get("events"), 50, "run.completed events")
    eq(len(run_events(s.snapshot(), j["run_id"])), 52, "events received")
    eq(task_status(d, sid)["subscribers"], 1, "subscribers after the burst")


@test()
def test_from_live_skips_replay(t):
    d = t.daemon()
    sid = "live"
    a = t.sse(d, spath(sid) + "/run")
    a.wait_retry()
    r1 = completed_run(t, d, sid, "first !word-delay=0", a)
    replay = t.sse(d, spath(sid) + "/run")
    replay.wait_event("run.completed", 3, run_id=r1)
    live = t.sse(d, spath(sid) + "/run?from=live")
    live.wait_retry()
    r2 = completed_run(t, d, sid, "second !word-delay=0", a)
    live.wait_event("run.completed", 5, run_id=r2)
    check_same(live.snapshot(), run_events(a.snapshot(), r2), "?from=live stream")


@test()
def test_default_replay_starts_at_the_latest_runs_first_event(t):
    d = t.daemon()
    sid = "latest"
    a = t.sse(d, spath(sid) + "/run")
    a.wait_retry()
    completed_run(t, d, sid, "first run !word-delay=0", a)
    r2 = completed_run(t, d, sid, "second run !word-delay=0", a)
    want = run_events(a.snapshot(), r2)
    eq(want[0].type, "run.started", "run 2 first event")
    b = t.sse(d, spath(sid) + "/run")
    b.wait_event("run.completed", 3, run_id=r2)
    check_same(b.snapshot(), want, "default replay")
    # while a run is active, the replay starts at that run's first event too
    j, _, _ = post_run(d, sid, "third !events=20 !rate=20")
    r3 = j["run_id"]
    a.wait_for(lambda evs: sum(1 for e in run_events(evs, r3) if e.type == "agent.event") >= 2, 5,
               "two agent events of run 3")
    c = t.sse(d, spath(sid) + "/run")
    c.wait_event("run.completed", 5, run_id=r3)
    a.wait_event("run.completed", 5, run_id=r3)
    check_same(c.snapshot(), run_events(a.snapshot(), r3), "default replay during an active run")


def _unknown_id(t, use_header):
    d = t.daemon()
    sid = "unknown"
    a = t.sse(d, spath(sid) + "/run")
    a.wait_retry()
    completed_run(t, d, sid, "one !word-delay=0", a)
    completed_run(t, d, sid, "two !word-delay=0", a)
    full = a.snapshot()
    if use_header:
        b = t.sse(d, spath(sid) + "/run", headers={"Last-Event-ID": "bogus"})
    else:
        b = t.sse(d, spath(sid) + "/run?last_event_id=bogus")
    evs = b.wait_count(1 + len(full))
    check_reset(evs[0])
    check_same(evs[1:], full, "replay after stream.reset")


def check_reset(e):
    eq(e.type, "stream.reset", "first event")
    expect(not e.has_id, "stream.reset has an id line: %r" % e.raw)
    reason = e.json().get("reason")
    expect(isinstance(reason, str) and reason, "stream.reset reason: %r" % e.data)


@test()
def test_unknown_last_event_id_header_gives_stream_reset_then_oldest(t):
    _unknown_id(t, True)


@test()
def test_unknown_last_event_id_query_gives_stream_reset_then_oldest(t):
    _unknown_id(t, False)


@test()
def test_last_event_id_from_a_deleted_and_recreated_session_gives_stream_reset(t):
    d = t.daemon()
    sid = "reborn"
    a = t.sse(d, spath(sid) + "/run")
    a.wait_retry()
    completed_run(t, d, sid, "!events=20 !word-delay=0", a)
    old_ids = [e.id for e in a.snapshot()]
    early = old_ids[2]
    r = d.delete(spath(sid))
    expect(r.status in (200, 204), "DELETE session: %d" % r.status)
    a.wait_eof(3)
    a2 = t.sse(d, spath(sid) + "/run")
    a2.wait_retry()
    completed_run(t, d, sid, "!events=20 !word-delay=0", a2)
    full = a2.snapshot()
    b = t.sse(d, spath(sid) + "/run", headers={"Last-Event-ID": early})
    evs = b.wait_count(1 + len(full))
    check_reset(evs[0])
    check_same(evs[1:], full, "replay after stream.reset (new incarnation)")


@test()
def test_history_limit_evicted_id_gives_stream_reset_and_replays_oldest_retained(t):
    d = t.daemon("--history", "5")
    sid = "history"
    a = t.sse(d, spath(sid) + "/run")
    a.wait_retry()
    completed_run(t, d, sid, "!events=20 !word-delay=0", a)
    full = a.snapshot()
    eq(len(full), 22, "events of the run")
    b = t.sse(d, spath(sid) + "/run", headers={"Last-Event-ID": full[1].id})
    evs = b.wait_count(6)
    check_reset(evs[0])
    check_same(evs[1:6], full[-5:], "replay of the 5 retained events")
    # the default replay cannot start at the run's (evicted) first event either
    c = t.sse(d, spath(sid) + "/run")
    evs = c.wait_count(6)
    check_reset(evs[0])
    check_same(evs[1:6], full[-5:], "default replay with the run start evicted")
    # an id still retained resumes normally
    e = t.sse(d, spath(sid) + "/run", headers={"Last-Event-ID": full[-3].id})
    evs = e.wait_count(2)
    check_same(evs[:2], full[-2:], "resume from a retained id")


@test()
def test_history_bytes_limit_evicts_old_events(t):
    d = t.daemon("--history-bytes", "16k")
    sid = "hbytes"
    a = t.sse(d, spath(sid) + "/run")
    a.wait_retry()
    completed_run(t, d, sid, "!events=40 !bytes=2000 !word-delay=0", a)
    full = a.snapshot()
    b = t.sse(d, spath(sid) + "/run", headers={"Last-Event-ID": full[0].id})
    first = b.wait_count(1)[0]
    check_reset(first)
    b.wait_event("run.completed", 3)
    evs = b.snapshot()[1:]
    expect(0 < len(evs) < len(full), "replayed %d of %d events under a 16k history" % (len(evs), len(full)))
    check_same(evs, full[-len(evs):], "replay is the newest suffix")
    size = sum(len(e.data) for e in evs)
    expect(size <= 16 * 1024 + 4096, "replayed %d data bytes under a 16k history" % size)


@test()
def test_heartbeat_comment_arrives_on_an_idle_stream(t):
    d = t.daemon("--heartbeat", "0.2")
    s = t.sse(d, spath("idle") + "/run")
    s.wait_retry()
    s.wait_comment("keepalive", 2)
    # a comment line and no blank line: nothing for a parser to dispatch
    eq(bytes(s.raw), b"retry: 3000\n: keepalive\n", "an idle stream's bytes")
    eq(s.snapshot(), [], "events on an idle stream")


@test()
def test_closing_the_only_subscriber_does_not_cancel_the_run(t):
    d = t.daemon()
    sid = "outlive"
    s = t.sse(d, spath(sid) + "/run")
    s.wait_retry()
    j, _, _ = post_run(d, sid, "!events=20 !rate=20")
    rid = j["run_id"]
    s.wait_event("agent.event", 5)
    s.close()
    wait_until(lambda: task_status(d, sid)["subscribers"] == 0, 3, "subscriber gone")
    st = wait_until(lambda: (lambda x: x if not x["has_task"] else None)(task_status(d, sid)), 5,
                    "run to end")
    eq((st["status"], st["run_id"], st["events"]), ("completed", rid, 20), "task-status after")
    eq(demo_call(d, sid)[0]["state"], "finished", "upstream call state")
    eq(all_status(d)["total_tasks"], 0, "total_tasks")


# ---------------------------------------------------------------- how streams end

def blocks_without_data(raw):
    """Event blocks (text between blank lines) with no data line: what a
    parser that dispatches on every blank line (fetch-event-source) would
    hand to onmessage as an empty message."""
    text = bytes(raw).decode("utf-8", "replace")
    done = text[:text.rfind("\n\n") + 2] if "\n\n" in text else ""
    return [b for b in done.split("\n\n")[:-1]
            if not any(l.startswith("data:") for l in b.split("\n"))]


@test()
def test_stream_is_chunked_and_a_normal_end_keeps_the_connection(t):
    d = t.daemon("--heartbeat", "0.1")
    sid = "ends"
    s = t.sse(d, spath(sid) + "/run")
    eq(s.header("Transfer-Encoding"), "chunked", "Transfer-Encoding")
    expect(s.header("Connection") is None, "Connection: %r" % s.header("Connection"))
    s.wait_comment("keepalive", 2)
    rid = completed_run(t, d, sid, "end me !word-delay=0", s)
    r = d.delete(spath(sid))
    eq(r.status, 200, "DELETE session")
    s.wait_eof(5)
    eq((s.completed, s.cut, s.error), (True, False, None), "completed, cut, error")
    evs = s.snapshot()
    eq(evs[-1].type, "session.closed", "last event")
    expect(any(e.type == "run.completed" and e.json()["run_id"] == rid for e in evs), "run.completed")
    eq(blocks_without_data(s.raw), [], "blocks that would be empty messages")
    # the same connection serves the next request
    s.conn.send(build_request("GET", "/healthz"))
    r = s.conn.read_response()
    eq(r.status, 200, "GET /healthz after the stream on its connection")
    eq(r.json()["status"], "ok", "healthz body")


@test()
def test_http10_stream_stays_close_delimited(t):
    d = t.daemon()
    sid = "old"
    s = t.sse(d, spath(sid) + "/run", version="HTTP/1.0")
    eq(s.header("Transfer-Encoding"), None, "Transfer-Encoding")
    eq(s.header("Connection"), "close", "Connection")
    s.wait_retry()
    completed_run(t, d, sid, "old client !word-delay=0", s)
    eq(d.delete(spath(sid)).status, 200, "DELETE session")
    s.wait_eof(5)
    eq((s.completed, s.cut), (False, False), "completed, cut")
    eq(s.snapshot()[-1].type, "session.closed", "last event")


@test(valgrind=False)
def test_no_stream_is_silent_longer_than_the_heartbeat(t):
    hb = 0.5
    d = t.daemon("--heartbeat", "0.5s")
    idle = t.sse(d, spath("quiet") + "/run")
    busy = t.sse(d, spath("talks") + "/run")
    idle.wait_retry()
    busy.wait_retry()
    # an event in the middle of a period on one stream: its silence starts
    # over there, not at the next tick
    time.sleep(hb / 2)
    j, _, _ = post_run(d, "talks", "one !word-delay=0")
    busy.wait_event("run.completed", 5, run_id=j["run_id"])
    end = time.monotonic() + 4.0
    while time.monotonic() < end:
        expect(not idle.eof and not busy.eof, "a stream ended")
        time.sleep(0.05)
    for name, s in (("idle", idle), ("busy", busy)):
        with s.cond:
            times = [s.head_at] + [a[0] for a in s.arrivals]
        times.append(time.monotonic())
        gap = max(b - a for a, b in zip(times, times[1:]))
        expect(gap <= hb + 0.15, "%s stream silent for %.3fs with --heartbeat %.1fs (arrivals %r)"
               % (name, gap, hb, [round(x - times[0], 3) for x in times]))
        expect(len(s.comments) >= 7, "%s: %d keepalives in 4.25s" % (name, len(s.comments)))
    eq(blocks_without_data(idle.raw), [], "blocks that would be empty messages")
