// clients.test.mjs: runcast's SSE stream read by the client libraries real
// applications use, in Node (no browser): npm's `eventsource` (the WHATWG
// EventSource for Node, v3: the same API as v4, which needs Node 20, while
// Debian 12's nodejs is 18.19), `@microsoft/fetch-event-source`, and a bare
// `fetch` + ReadableStream reader (and node:http for keep-alive). Each test
// starts its own runcast (demo agent, see docs/DEMO.md for the `!`
// directives) on a free loopback port.
//
// fetch-event-source is written for browsers: it listens to `document`'s
// visibilitychange (not with `openWhenHidden: true`, but its dispose() still
// calls document.removeEventListener) and calls window.fetch,
// window.setTimeout and window.clearTimeout. Here it runs unmodified in Node
// with `openWhenHidden: true` and the smallest shim that satisfies that:
// `window` is Node's globalThis (whose fetch and timers it then uses) and
// `document` is a never-hidden object whose listener methods do nothing.
// Its parser, its reconnect logic and its onmessage/onerror/onclose calls
// are the library's own.
//
// What these tests wait for (issue 12, being implemented alongside):
//   (a) streams are `Transfer-Encoding: chunked` with keep-alive after a
//       normal end, so a server dying mid-stream is an error for the client,
//       not a clean end;
//   (b) no empty SSE message: `retry:` rides with the first event block and
//       heartbeats are a bare `: keepalive\n` (fetch-event-source, unlike
//       EventSource, calls onmessage with data '' for every blank line);
// and the contract's `204` for a Last-Event-ID of a deleted incarnation.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { EventSource } from 'eventsource';
import { fetchEventSource } from '@microsoft/fetch-event-source';
import { api, pollUntil, startRuncast } from './lib.mjs';

globalThis.window ??= globalThis;
globalThis.document ??= { hidden: false, addEventListener() {}, removeEventListener() {} };

const TEST_TIMEOUT = 60000;
const T_EVENT = 10000;  // deadline for something the stream must deliver

const RUN_EVENTS = ['run.queued', 'run.started', 'agent.event', 'run.completed', 'run.failed',
  'run.cancelled', 'run.timed_out', 'run.superseded', 'session.closed', 'stream.reset', 'stream.closed'];

const streamPath = (s) => '/apps/demo/users/alice/sessions/' + s + '/run';

/* Wakes up waiters when the test's callbacks record something: until(fn)
 * resolves as soon as fn() is truthy, or rejects after ms. */
function signal() {
  const waiters = new Set();
  const tick = () => { for (const w of [...waiters]) w(); };
  const until = (fn, ms, what) => new Promise((resolve, reject) => {
    const check = () => {
      let v;
      try { v = fn(); } catch (err) { finish(); reject(err); return; }
      if (v) { finish(); resolve(v); }
    };
    const timer = setTimeout(() => { finish(); reject(new Error('timed out after ' + ms + ' ms waiting for ' + what)); }, ms);
    const finish = () => { clearTimeout(timer); waiters.delete(check); };
    waiters.add(check);
    check();
  });
  return { tick, until };
}

/* One reader.read() with a deadline: {done, value} or throws the read's
 * own error (a cut connection) or a timeout. */
async function readWithin(reader, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error('timed out after ' + ms + ' ms waiting for ' + what)), ms);
  });
  try {
    return await Promise.race([reader.read(), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/* Reads the body's text into acc.text until pred(acc.text) holds. */
async function readUntil(reader, acc, pred, ms, what) {
  const end = Date.now() + ms;
  const dec = new TextDecoder();
  while (!pred(acc.text)) {
    const { done, value } = await readWithin(reader, Math.max(1, end - Date.now()), what);
    if (done) throw new Error('the stream ended while waiting for ' + what + '; it read:\n' + acc.text);
    acc.text += dec.decode(value, { stream: true });
  }
}

/* The events of SSE text (LF framing): [{id, event, data}] for each block
 * that has an event: line. */
function sseEvents(text) {
  const out = [];
  for (const block of text.split('\n\n')) {
    const f = {};
    for (const line of block.split('\n')) {
      const m = /^(id|event|data): ?(.*)$/.exec(line);
      if (m) f[m[1]] = m[2];
    }
    if (f.event) out.push({ id: f.id ?? null, event: f.event, data: f.data ?? null });
  }
  return out;
}

const agentText = (data) => data.content.parts.map((p) => p.text).join('');
const statusOf = async (rc, s) => (await api(rc, 'GET', '/apps/demo/users/alice/sessions/' + s + '/task-status')).status;

test('eventsource: named events exactly once with their ids, onmessage never fires; after session.closed its Last-Event-ID reconnect gets 204 and it stops',
  { timeout: TEST_TIMEOUT }, async () => {
    const rc = await startRuncast(['--sse-retry', '300ms']);
    const { tick, until } = signal();
    const calls = [];     // every request the library made: its Last-Event-ID and the answer's status
    const got = [];       // named events: {type, id, data}
    const errors = [];    // error events: {code, message, readyState}
    let opens = 0;
    let onmessageCalls = 0;
    const recordingFetch = async (url, init) => {
      const call = { lastEventId: init.headers['Last-Event-ID'] ?? null, status: null };
      calls.push(call);
      const res = await fetch(url, init);
      call.status = res.status;
      tick();
      return res;
    };
    const es = new EventSource(rc.url + streamPath('S'), { fetch: recordingFetch });
    try {
      es.onopen = () => { opens++; tick(); };
      es.onmessage = () => { onmessageCalls++; tick(); };
      es.onerror = (ev) => { errors.push({ code: ev.code, message: ev.message, readyState: es.readyState }); tick(); };
      for (const type of RUN_EVENTS)
        es.addEventListener(type, (ev) => { got.push({ type, id: ev.lastEventId, data: JSON.parse(ev.data) }); tick(); });
      await until(() => opens === 1, T_EVENT, 'the stream to open');

      const post = await api(rc, 'POST', streamPath('S'), { message: 'one two three !word-delay=20ms' });
      assert.equal(post.status, 202);
      const runId = post.json.run_id;
      await until(() => got.some((e) => e.type === 'run.completed'), T_EVENT, 'run.completed');

      // run.started, 4 partial events (Echo:, one, two, three), the
      // aggregated one, run.completed: each exactly once.
      assert.deepEqual(got.map((e) => e.type),
        ['run.started', 'agent.event', 'agent.event', 'agent.event', 'agent.event', 'agent.event', 'run.completed']);
      const agent = got.filter((e) => e.type === 'agent.event');
      assert.deepEqual(agent.map((e) => e.data.customMetadata.seq), [0, 1, 2, 3, 4]);
      assert.deepEqual(agent.map((e) => agentText(e.data)), ['Echo:', ' one', ' two', ' three', 'Echo: one two three']);
      assert.deepEqual(agent.map((e) => e.data.partial), [true, true, true, true, false]);
      assert.equal(got[0].data.run_id, runId);
      assert.equal(got.at(-1).data.run_id, runId);
      assert.equal(got.at(-1).data.events, 5);
      // Every event carries a distinct id, and they are the ids on the wire:
      // a fresh raw read of the session's replay has the same ones.
      assert.ok(got.every((e) => typeof e.id === 'string' && e.id !== ''), 'every event has an id: ' + JSON.stringify(got.map((e) => e.id)));
      assert.equal(new Set(got.map((e) => e.id)).size, got.length, 'ids are distinct');
      const ac = new AbortController();
      const res = await fetch(rc.url + streamPath('S'), { signal: ac.signal });
      const acc = { text: '' };
      await readUntil(res.body.getReader(), acc, (t) => /event: run\.completed\n/.test(t), T_EVENT, 'the replay up to run.completed');
      ac.abort();
      assert.deepEqual(got.map((e) => e.id), sseEvents(acc.text).map((e) => e.id));

      assert.equal(onmessageCalls, 0, 'onmessage never fires: every runcast event is named');
      assert.deepEqual(errors, []);
      assert.equal(opens, 1);

      // A normal end: DELETE the session -> session.closed (with an id),
      // then the stream ends. EventSource treats any end as a reason to
      // reconnect: an error event (readyState CONNECTING), then, after the
      // stream's `retry:` (300 ms), a request with Last-Event-ID = the id of
      // session.closed. The contract: that id is of the deleted incarnation
      // and no new one exists, so it gets 204 and creates nothing, and a 204
      // makes EventSource stop for good (readyState CLOSED).
      const del = await api(rc, 'DELETE', '/apps/demo/users/alice/sessions/S');
      assert.equal(del.status, 200);
      await until(() => got.some((e) => e.type === 'session.closed'), T_EVENT, 'session.closed');
      const closed = got.at(-1);
      assert.equal(closed.type, 'session.closed');
      assert.deepEqual(closed.data, { reason: 'session_deleted' });
      assert.notEqual(closed.id, '', 'session.closed has an id');
      await until(() => calls.length >= 2 && calls[1].status !== null, T_EVENT, 'EventSource to reconnect');
      assert.deepEqual(errors[0], { code: undefined, message: undefined, readyState: EventSource.CONNECTING },
        'the end of the stream is a reconnect (error event, CONNECTING), not a failure');
      assert.equal(calls[1].lastEventId, closed.id, 'the reconnect carries the last id as Last-Event-ID');
      if (calls[1].status !== 204) {
        // Say what came instead (a stream.reset, typically), then fail.
        await until(() => got.at(-1) !== closed, 2000, 'an event after the 200').catch(() => {});
        assert.fail('DESIGN.md: the Last-Event-ID of a deleted incarnation (no new one) gets 204 so EventSource stops; ' +
          'runcast answered ' + calls[1].status + ' and sent ' +
          JSON.stringify(got.slice(got.indexOf(closed) + 1).map((e) => ({ type: e.type, data: e.data }))) +
          ' (task-status of the session: ' + await statusOf(rc, 'S') + ')');
      }
      await until(() => es.readyState === EventSource.CLOSED, T_EVENT, 'EventSource to close');
      assert.deepEqual(errors.map((e) => [e.code, e.readyState]), [[undefined, EventSource.CONNECTING], [204, EventSource.CLOSED]]);
      assert.equal(got.at(-1), closed, 'nothing after session.closed');
      assert.equal(calls.length, 2);
      assert.equal(await statusOf(rc, 'S'), 404, 'the 204 created no session');
      assert.equal(onmessageCalls, 0);
    } finally {
      es.close();
      await rc.stop();
    }
  });

test('eventsource: a 429 (--max-subscribers-per-user) is final: error event with code 429, CLOSED, no retry',
  { timeout: TEST_TIMEOUT }, async () => {
    const rc = await startRuncast(['--max-subscribers-per-user', '1', '--sse-retry', '100ms']);
    const { tick, until } = signal();
    const ac = new AbortController();
    const calls = [];
    const errors = [];
    let es = null;
    try {
      // alice's one allowed stream, held by a plain reader.
      const first = await fetch(rc.url + streamPath('Q'), { signal: ac.signal });
      assert.equal(first.status, 200);
      es = new EventSource(rc.url + streamPath('Q2'), {
        fetch: async (url, init) => {
          const res = await fetch(url, init);
          calls.push({ status: res.status, retryAfter: res.headers.get('retry-after') });
          tick();
          return res;
        },
      });
      es.onerror = (ev) => { errors.push({ code: ev.code, readyState: es.readyState }); tick(); };
      await until(() => errors.length, T_EVENT, 'the error event');
      assert.deepEqual(calls, [{ status: 429, retryAfter: '1' }]);
      assert.deepEqual(errors, [{ code: 429, readyState: EventSource.CLOSED }],
        'EventSource gives up on a non-200 answer (Retry-After is not read): the page must reopen it');
      assert.equal(es.readyState, EventSource.CLOSED);
    } finally {
      if (es) es.close();
      ac.abort();
      await rc.stop();
    }
  });

/* fetchEventSource on session s with an app's callbacks: onmessage
 * JSON.parses every message's data (a parse failure throws, so the library
 * calls onerror), onerror records and rethrows (stop, no retry), onclose
 * records a clean end. fetch tees the body so the test also sees the bytes
 * the library read. skipEmpty: onmessage ignores a message whose data is ''
 * (an app that guards against them) instead of failing on it. */
function subscribeFes(rc, s, { skipEmpty = false } = {}) {
  const { tick, until } = signal();
  const st = { opens: 0, closes: 0, raw: [], parsed: [], errors: [], wire: '', ended: null };
  const ac = new AbortController();
  const teeFetch = async (url, init) => {
    const res = await fetch(url, init);
    if (!res.body) return res;
    const [mine, theirs] = res.body.tee();
    (async () => {
      const dec = new TextDecoder();
      const reader = theirs.getReader();
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          st.wire += dec.decode(value, { stream: true });
          tick();
        }
      } catch { /* the library's side reports it */ }
    })();
    return new Response(mine, { status: res.status, statusText: res.statusText, headers: res.headers });
  };
  st.done = fetchEventSource(rc.url + streamPath(s), {
    fetch: teeFetch,
    signal: ac.signal,
    openWhenHidden: true,
    async onopen(res) {
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type'), /^text\/event-stream/);
      st.opens++;
      tick();
    },
    onmessage(ev) {
      st.raw.push({ event: ev.event, id: ev.id, data: ev.data, retry: ev.retry });
      tick();
      if (skipEmpty && ev.data === '') return;
      const data = JSON.parse(ev.data);  // '' throws: "Unexpected end of JSON input"
      st.parsed.push({ type: ev.event, id: ev.id, data });
      tick();
    },
    onerror(err) { st.errors.push(err); tick(); throw err; },
    onclose() { st.closes++; tick(); },
  }).then(() => { st.ended = 'resolved'; tick(); }, (err) => { st.ended = err; tick(); });
  st.until = until;
  st.abort = async () => { ac.abort(); await st.done; };
  return st;
}

const EMPTY_HINT = 'an empty message is a blank line with no data: line (`retry: N\\n\\n` at the open, ' +
  '`: keepalive\\n\\n` heartbeats); issue 12 (b) sends `retry:` with the first event block and heartbeats without the blank line';

test('fetch-event-source: 34 events exactly once and no empty message across the stream open and heartbeats',
  { timeout: TEST_TIMEOUT }, async () => {
    const rc = await startRuncast(['--heartbeat', '0.3s', '--sse-retry', '300ms']);
    let st = null;
    try {
      st = subscribeFes(rc, 'F');
      await st.until(() => st.opens === 1 || st.errors.length, T_EVENT, 'the stream to open');
      assert.deepEqual(st.errors, []);

      // Idle for 1.2 s (a "nothing happens" wait: 4 heartbeats at 0.3 s):
      // the library must dispatch nothing, since no event was published.
      await new Promise((r) => setTimeout(r, 1200));
      assert.deepEqual(st.raw, [], 'messages dispatched on an idle stream (' + EMPTY_HINT + ')');
      assert.deepEqual(st.errors, []);
      const beats = (st.wire.match(/^: keepalive$/mg) || []).length;
      assert.ok(beats >= 3, 'at least 3 heartbeats in 1.2 s idle at --heartbeat 0.3s; the wire:\n' + JSON.stringify(st.wire));
      assert.match(st.wire, /^retry: 300\n/, 'the stream opens with retry: 300');

      const post = await api(rc, 'POST', streamPath('F'), { message: '!events=34 !word-delay=20ms' });
      assert.equal(post.status, 202);
      await st.until(() => st.parsed.some((e) => e.type === 'run.completed') || st.errors.length || st.ended,
        T_EVENT, 'run.completed');
      assert.deepEqual(st.raw.filter((m) => m.data === ''), [], 'empty messages (' + EMPTY_HINT + ')');
      assert.deepEqual(st.errors, [], 'onerror (the app\'s JSON.parse threw?)');
      assert.deepEqual(st.parsed.map((e) => e.type), ['run.started', ...Array(34).fill('agent.event'), 'run.completed']);
      const agent = st.parsed.filter((e) => e.type === 'agent.event');
      assert.deepEqual(agent.map((e) => e.data.customMetadata.seq), Array.from({ length: 34 }, (_, i) => i));
      assert.deepEqual(agent.map((e) => agentText(e.data)), Array.from({ length: 34 }, (_, i) => ('event ' + i).padEnd(16, 'x')));
      assert.equal(st.parsed.at(-1).data.events, 34);
      assert.equal(st.parsed.at(-1).data.run_id, post.json.run_id);
      assert.ok(st.parsed.every((e) => e.id !== ''), 'every event has an id');
      assert.equal(new Set(st.parsed.map((e) => e.id)).size, st.parsed.length, 'ids are distinct');
      assert.equal(st.raw[0].retry, 300, 'the retry: line reaches the library with the first event');
      assert.equal(st.opens, 1, 'no reconnect');
      assert.equal(st.closes, 0);
      assert.equal(st.ended, null);
    } finally {
      if (st) await st.abort();
      await rc.stop();
    }
  });

// This one checks only the framing (a), so its onmessage skips empty
// messages (the previous test fails on them).
test('fetch-event-source: a server killed mid-stream is an error (onerror), not a clean end (onclose)',
  { timeout: TEST_TIMEOUT }, async () => {
    const rc = await startRuncast([]);
    let st = null;
    try {
      st = subscribeFes(rc, 'K', { skipEmpty: true });
      await st.until(() => st.opens === 1 || st.errors.length, T_EVENT, 'the stream to open');
      const post = await api(rc, 'POST', streamPath('K'), { message: '!events=34 !word-delay=100ms' });
      assert.equal(post.status, 202);
      const agentCount = () => st.parsed.filter((e) => e.type === 'agent.event').length;
      await st.until(() => agentCount() >= 10 || st.errors.length || st.ended, T_EVENT, '10 agent events');
      assert.deepEqual(st.errors, []);
      assert.deepEqual(await rc.kill('SIGKILL'), { code: null, signal: 'SIGKILL' });

      await st.until(() => st.ended, T_EVENT, 'the library to notice the dead server');
      const n = agentCount();
      assert.ok(n >= 10 && n < 34, n + ' of 34 agent events before the kill');
      assert.equal(st.closes, 0, 'onclose fired after ' + n + ' of 34 events: the cut looked like a normal end ' +
        '(close-delimited stream; issue 12 (a) makes it chunked so a cut is a protocol error)');
      assert.equal(st.errors.length, 1, 'onerror once');
      assert.ok(st.errors[0] instanceof TypeError, 'a network error: ' + st.errors[0]);
      assert.equal(st.ended, st.errors[0], 'the promise rejects with the error onerror rethrew');
      // What arrived before the cut arrived once and in order.
      assert.deepEqual(st.parsed.filter((e) => e.type === 'agent.event').map((e) => e.data.customMetadata.seq),
        Array.from({ length: n }, (_, i) => i));
      assert.equal(st.opens, 1);
    } finally {
      if (st) await st.abort();
      await rc.stop();
    }
  });

test('fetch + ReadableStream: a normal end (session deleted) is done: true after session.closed',
  { timeout: TEST_TIMEOUT }, async () => {
    const rc = await startRuncast([]);
    const ac = new AbortController();
    try {
      const res = await fetch(rc.url + streamPath('R'), { signal: ac.signal });
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type'), /^text\/event-stream/);
      const reader = res.body.getReader();
      const acc = { text: '' };
      const post = await api(rc, 'POST', streamPath('R'), { message: 'a b !word-delay=10ms' });
      assert.equal(post.status, 202);
      await readUntil(reader, acc, (t) => /event: run\.completed\n/.test(t), T_EVENT, 'run.completed');
      assert.equal((await api(rc, 'DELETE', '/apps/demo/users/alice/sessions/R')).status, 200);
      await readUntil(reader, acc, (t) => /event: session\.closed\ndata: .*\n\n/.test(t), T_EVENT, 'session.closed');
      const last = await readWithin(reader, T_EVENT, 'the end of the body');
      assert.deepEqual(last, { done: true, value: undefined }, 'nothing after session.closed, then the body ends');
      assert.deepEqual(sseEvents(acc.text).map((e) => e.event),
        ['run.started', 'agent.event', 'agent.event', 'agent.event', 'agent.event', 'run.completed', 'session.closed']);
    } finally {
      ac.abort();
      await rc.stop();
    }
  });

test('fetch + ReadableStream: a server killed mid-stream makes reader.read() reject',
  { timeout: TEST_TIMEOUT }, async () => {
    const rc = await startRuncast([]);
    const ac = new AbortController();
    try {
      const res = await fetch(rc.url + streamPath('X'), { signal: ac.signal });
      assert.equal(res.status, 200);
      const reader = res.body.getReader();
      const acc = { text: '' };
      assert.equal((await api(rc, 'POST', streamPath('X'), { message: '!events=34 !word-delay=100ms' })).status, 202);
      await readUntil(reader, acc, (t) => sseEvents(t).filter((e) => e.event === 'agent.event').length >= 5,
        T_EVENT, '5 agent events');
      assert.deepEqual(await rc.kill('SIGKILL'), { code: null, signal: 'SIGKILL' });
      let outcome;
      try {
        for (;;) {
          const { done, value } = await readWithin(reader, T_EVENT, 'the read after the kill to settle');
          if (done) { outcome = 'done'; break; }
          acc.text += new TextDecoder().decode(value);
        }
      } catch (err) {
        outcome = err;
      }
      const n = sseEvents(acc.text).filter((e) => e.event === 'agent.event').length;
      assert.notEqual(outcome, 'done', 'the body ended cleanly (done: true) after ' + n + ' of 34 events although ' +
        'the server was killed (close-delimited stream; issue 12 (a) makes it chunked so a cut is an error)');
      assert.ok(outcome instanceof TypeError && !/timed out/.test(outcome.message), 'reader.read() rejects: ' + outcome);
      assert.ok(n >= 5 && n < 34, n + ' of 34 agent events');
    } finally {
      ac.abort();
      await rc.stop();
    }
  });

test('node:http: the stream is chunked, and after a normal end its connection is kept alive and reused',
  { timeout: TEST_TIMEOUT }, async () => {
    const rc = await startRuncast([]);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const get = (path) => new Promise((resolve, reject) => {
      const req = http.get(rc.url + path, { agent }, (res) => resolve({ req, res }));
      req.on('error', reject);
      req.setTimeout(T_EVENT, () => req.destroy(new Error('timed out on GET ' + path)));
    });
    try {
      const { req, res } = await get(streamPath('H'));
      assert.equal(res.statusCode, 200);
      let text = '';
      let ended = false;
      let failed = null;
      const { tick, until } = signal();
      res.setEncoding('utf8');
      res.on('data', (c) => { text += c; tick(); });
      res.on('end', () => { ended = true; tick(); });
      res.on('error', (e) => { failed = e; tick(); });
      res.on('aborted', () => { failed = new Error('aborted'); tick(); });
      assert.equal((await api(rc, 'POST', streamPath('H'), { message: 'hi !word-delay=10ms' })).status, 202);
      await until(() => /event: run\.completed\n/.test(text), T_EVENT, 'run.completed');
      assert.equal((await api(rc, 'DELETE', '/apps/demo/users/alice/sessions/H')).status, 200);
      await until(() => ended || failed, T_EVENT, 'the end of the stream');
      assert.equal(failed, null);
      assert.match(text, /event: session\.closed\ndata: \{"reason":"session_deleted"\}\n\n$/);
      const sock = req.socket;
      // Issue 12 (a): framing and connection reuse.
      assert.equal(res.headers['transfer-encoding'], 'chunked', 'stream framing; headers: ' + JSON.stringify(res.headers));
      assert.notEqual(res.headers.connection, 'close', 'keep-alive after a normal end');
      const next = await get('/healthz');
      next.res.resume();
      assert.equal(next.res.statusCode, 200);
      assert.equal(next.req.reusedSocket, true, 'the next request reuses the stream\'s connection');
      assert.equal(next.req.socket, sock);
    } finally {
      agent.destroy();
      await rc.stop();
    }
  });
