// agui.test.mjs: runcast's AG-UI endpoints (POST …/agui, GET …/agui/{threadId};
// DESIGN.md's "AG-UI", README's "Use with an AG-UI frontend") driven by the real
// @ag-ui/client 1.0.0: its HttpAgent's runAgent() through client/agui.mjs's
// RuncastAgent, whose connectAgent() is the resume. The library verifies
// every stream (verifyEvents: the first event, START before CONTENT/ARGS/END,
// nothing open at RUN_FINISHED) and rejects on a violation, so every awaited
// run below is also a protocol check; the raw wire is checked once more with
// fetch and the exported verifyEvents.
//
// Upstreams: runcast's demo agent (docs/DEMO.md: `!word-delay`, `!error`,
// `!tool=NAME`, `!state=KEY`, `!think`; /debug/calls shows what runcast sent
// it), and the real ADK JS api_server with the offline agents of tests/adk
// (echo, tools with its client-side `lookup`, fails, slow), started once for
// its tests. Each test starts its own runcast on a free loopback port.
//
// client/agui.mjs imports '@ag-ui/client' by its bare name, as an app would;
// from client/ there is no node_modules, so a resolve hook (registered below)
// resolves that module's bare imports from this directory's node_modules.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { register } from 'node:module';
import { pathToFileURL } from 'node:url';
import { from, lastValueFrom, toArray } from 'rxjs';
import { HttpAgent, verifyEvents } from '@ag-ui/client';
import { ROOT, api, pollUntil, startAdk, startRuncast } from './lib.mjs';

process.env.SUPPRESS_TRANSFORMATION_WARNINGS = '1';

const CLIENT_DIR = pathToFileURL(ROOT + '/client/').href;
register('data:text/javascript,' + encodeURIComponent(`
  let d;
  export function initialize(data) { d = data; }
  export function resolve(specifier, context, next) {
    const bare = !/^(\\.|\\/|[a-z]+:)/.test(specifier);
    if (bare && context.parentURL && context.parentURL.startsWith(d.clientDir))
      return next(specifier, { ...context, parentURL: d.resolveFrom });
    return next(specifier, context);
  }`), { data: { clientDir: CLIENT_DIR, resolveFrom: import.meta.url } });
const { RuncastAgent } = await import(CLIENT_DIR + 'agui.mjs');

const TEST_TIMEOUT = 30000;
const T_EVENT = 10000;  // deadline for something a stream must deliver

// An unhandled rejection would end a real app's Node process: none may happen.
const unhandled = [];
process.on('unhandledRejection', (err) => { unhandled.push(err); });

const SLOW = 'one two three four five six !word-delay=300ms';
const SLOW_REPLY = 'Echo: one two three four five six';

const aguiPath = (app, user = 'alice') => '/apps/' + app + '/users/' + user + '/agui';
const userMessage = (content) => ({ id: randomUUID(), role: 'user', content });
const types = (events) => events.map((e) => e.type);
const contents = (events) => events.filter((e) => e.type === 'TEXT_MESSAGE_CONTENT');
const ofType = (events, type) => events.filter((e) => e.type === type);
const repeat = (n, x) => Array.from({ length: n }, () => x);

/* A RuncastAgent (or the library's own HttpAgent: Agent) on rc's AG-UI
 * endpoint for (app, alice), thread threadId. Every request it sends is kept
 * in agent.sent (the body parsed). */
function agentFor(rc, threadId, { app = 'demo', Agent = RuncastAgent, ...config } = {}) {
  const sent = [];
  const agent = new Agent({
    url: rc.url + aguiPath(app),
    threadId,
    fetch: (url, init) => {
      sent.push({ url, method: init.method, body: init.body ? JSON.parse(init.body) : null });
      return fetch(url, init);
    },
    ...config,
  });
  agent.sent = sent;
  return agent;
}

/* Records the events of a run (onEvent: after the library's own
 * verification) and wakes whoever waits on them. until() fails at once when
 * the run has ended without what it waits for. */
function recorder() {
  const events = [];
  const waiters = new Set();
  const wake = () => { for (const w of [...waiters]) w(); };
  const rec = {
    events,
    ended: false,
    // A copy: the library puts a MESSAGES_SNAPSHOT's message objects into
    // agent.messages as they are, and later events change them in place.
    subscriber: { onEvent: ({ event }) => { events.push(structuredClone(event)); wake(); } },
    until: (fn, ms, what) => new Promise((resolve, reject) => {
      const check = () => {
        const v = fn(events);
        if (v) { finish(); resolve(v); }
        else if (rec.ended) { finish(); reject(new Error('the run ended (' + rec.ended + ') before ' + what + '; events: ' + JSON.stringify(events))); }
      };
      const timer = setTimeout(() => {
        finish();
        reject(new Error('timed out after ' + ms + ' ms waiting for ' + what + '; events: ' + JSON.stringify(events)));
      }, ms);
      const finish = () => { clearTimeout(timer); waiters.delete(check); };
      waiters.add(check);
      check();
    }),
  };
  rec.end = (how) => { rec.ended = how; wake(); };
  return rec;
}

/* Starts agent.runAgent(params) (or connectAgent) in the background:
 * {events, until, done}; done is its promise (settle it with within()). */
function start(agent, params = {}, method = 'runAgent') {
  const rec = recorder();
  rec.done = agent[method](params, rec.subscriber);
  rec.done.then(() => rec.end('resolved'), (err) => rec.end('rejected: ' + err.message));
  return rec;
}

/* Rejects when p has not settled within ms. */
function within(p, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error('timed out after ' + ms + ' ms waiting for ' + what)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/* agent.runAgent(params), recorded: {events, result}. */
async function run(agent, params = {}) {
  const rec = start(agent, params);
  const result = await within(rec.done, T_EVENT, 'runAgent to resolve');
  return { events: rec.events, result };
}

/* agent.connectAgent(), recorded: {events, result}. */
async function connect(agent) {
  const rec = start(agent, {}, 'connectAgent');
  const result = await within(rec.done, T_EVENT, 'connectAgent to resolve');
  return { events: rec.events, result };
}

/* The SSE body of a raw request, checked frame by frame against the
 * contract's framing (LF only; `id: <runcast event id>.<n>` + `data: <json>`,
 * or a `: ping` comment; runcast's ids are `<incarnation>-<sequence>`):
 * {status, headers, frames: [{id, event}], events}. */
async function rawStream(url, init) {
  const res = await fetch(url, init);
  const text = await res.text();
  if (res.status !== 200) return { status: res.status, headers: res.headers, text };
  assert.match(res.headers.get('content-type'), /^text\/event-stream/);
  assert.ok(!text.includes('\r'), 'no CR in the stream');
  assert.ok(text.endsWith('\n\n'), 'the body ends after a whole frame: ' + JSON.stringify(text.slice(-80)));
  const frames = [];
  for (const block of text.slice(0, -2).split('\n\n')) {
    if (block === ': ping') continue;
    const m = /^id: ([0-9a-f]+)-(\d+)\.(\d+)\ndata: (.*)$/.exec(block);
    assert.ok(m, 'a frame is `id: <incarnation>-<seq>.<n>` then one `data:` line: ' + JSON.stringify(block));
    frames.push({ id: [m[1], Number(m[2]), Number(m[3])], event: JSON.parse(m[4]) });
  }
  for (let i = 1; i < frames.length; i++) {
    const [a, b] = [frames[i - 1].id, frames[i].id];
    assert.ok(a[0] === b[0] && (b[1] > a[1] || (b[1] === a[1] && b[2] > a[2])), 'frame ids increase: ' + a + ' then ' + b);
  }
  return { status: res.status, headers: res.headers, frames, events: frames.map((f) => f.event) };
}

/* Runs raw events through the library's exported verifier; returns them, or
 * throws its AGUIError. */
function verified(events) {
  return lastValueFrom(verifyEvents()(from(events)).pipe(toArray()));
}

/* The demo agent's /run_sse calls for a session (docs/DEMO.md), on its own
 * port (runcast logs `event=demo.listening address=…`). */
async function demoCalls(rc, session) {
  const m = await pollUntil(() => /event=demo\.listening address=127\.0\.0\.1:(\d+)/.exec(rc.logs()),
    T_EVENT, 'the demo agent\'s address in runcast\'s log');
  const res = await fetch('http://127.0.0.1:' + m[1] + '/debug/calls?session=' + encodeURIComponent(session));
  assert.equal(res.status, 200);
  return (await res.json()).calls;
}

/* The text message [TEXT_MESSAGE_START, CONTENT..., END] at the head of
 * events: its id and text; asserts one id throughout. */
function textMessage(events) {
  const start = events.find((e) => e.type === 'TEXT_MESSAGE_START');
  assert.ok(start, 'a TEXT_MESSAGE_START in ' + JSON.stringify(types(events)));
  assert.equal(start.role, 'assistant');
  const parts = events.filter((e) => e.messageId === start.messageId);
  assert.equal(parts.at(-1).type, 'TEXT_MESSAGE_END', 'the message is closed');
  return { id: start.messageId, text: contents(parts).map((e) => e.delta).join(''), deltas: contents(parts).map((e) => e.delta) };
}

async function withRuncast(args, opts, fn) {
  const rc = await startRuncast(args, opts);
  try {
    await fn(rc);
  } finally {
    await rc.stop();
  }
}

describe('AG-UI with the demo agent', () => {
  test('a text run: RUN_STARTED, the message word by word, RUN_FINISHED; the thread replays as a snapshot', { timeout: TEST_TIMEOUT }, async () => {
    await withRuncast([], {}, async (rc) => {
      const user = userMessage('hello there');
      const agent = agentFor(rc, 'text-1', { initialMessages: [user] });
      const { events, result } = await run(agent, { runId: 'r-text-1' });
      assert.deepEqual(types(events), ['RUN_STARTED', 'TEXT_MESSAGE_START', ...repeat(3, 'TEXT_MESSAGE_CONTENT'),
        'TEXT_MESSAGE_END', 'RUN_FINISHED']);
      const msg = textMessage(events);
      assert.deepEqual(msg.deltas, ['Echo:', ' hello', ' there']);
      assert.deepEqual(agent.messages, [user, { id: msg.id, role: 'assistant', content: 'Echo: hello there' }]);
      assert.deepEqual(result.newMessages, [agent.messages[1]]);

      const [started, finished] = [events[0], events.at(-1)];
      assert.equal(started.threadId, 'text-1');
      assert.equal(started.runId, 'r-text-1');
      const runId = started.metadata.runcast.run_id;
      assert.equal(typeof runId, 'string');
      assert.deepEqual([finished.threadId, finished.runId, finished.metadata.runcast.run_id], ['text-1', 'r-text-1', runId]);
      const status = await api(rc, 'GET', '/apps/demo/users/alice/sessions/text-1/task-status');
      assert.equal(status.status, 200);
      assert.deepEqual([status.json.run_id, status.json.status], [runId, 'completed']);
      assert.deepEqual(agent.sent.map((s) => [s.method, s.url]), [['POST', rc.url + aguiPath('demo')]]);

      // A fresh agent (a reloaded page) gets the finished thread back: the
      // same messages, ids included (they are derived from runcast's log).
      const reloaded = agentFor(rc, 'text-1');
      const again = await connect(reloaded);
      assert.deepEqual(types(again.events), ['RUN_STARTED', 'MESSAGES_SNAPSHOT', 'RUN_FINISHED']);
      assert.equal(again.events[0].runId, 'r-text-1');
      assert.deepEqual(reloaded.messages, agent.messages);
      assert.deepEqual(reloaded.sent.map((s) => [s.method, s.url]), [['GET', rc.url + aguiPath('demo') + '/text-1']]);
    });
  });

  test('the wire: LF framing, ids, the raw events pass verifyEvents; 400 for bad input and for nothing new; 204 for an unknown thread', { timeout: TEST_TIMEOUT }, async () => {
    await withRuncast([], {}, async (rc) => {
      const user = userMessage('raw words');
      const input = { threadId: 'wire-1', runId: 'r-wire-1', messages: [user], state: {}, tools: [], context: [], forwardedProps: {} };
      const post = (body) => rawStream(rc.url + aguiPath('demo'), {
        method: 'POST', headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' }, body: JSON.stringify(body),
      });
      const ran = await post(input);
      assert.equal(ran.status, 200, ran.text);
      assert.deepEqual(types(ran.events), ['RUN_STARTED', 'TEXT_MESSAGE_START', ...repeat(3, 'TEXT_MESSAGE_CONTENT'),
        'TEXT_MESSAGE_END', 'RUN_FINISHED']);
      assert.deepEqual(await verified(ran.events), ran.events);

      const resumed = await rawStream(rc.url + aguiPath('demo') + '/wire-1', { headers: { Accept: 'text/event-stream' } });
      assert.equal(resumed.status, 200, resumed.text);
      assert.deepEqual(types(resumed.events), ['RUN_STARTED', 'MESSAGES_SNAPSHOT', 'RUN_FINISHED']);
      const id = ran.events[1].messageId;
      assert.deepEqual(resumed.events[1].messages, [user, { id, role: 'assistant', content: 'Echo: raw words' }]);
      assert.deepEqual(await verified(resumed.events), resumed.events);

      const same = await post({ ...input, runId: 'r-wire-2' });
      assert.equal(same.status, 400, same.text);
      assert.equal(JSON.parse(same.text).error.code, 'no_new_message');
      for (const bad of [{ ...input, messages: undefined }, { ...input, threadId: '..' }, { ...input, runId: '' }]) {
        const r = await post(bad);
        assert.equal(r.status, 400, JSON.stringify(bad) + ' → ' + r.text);
        assert.equal(JSON.parse(r.text).error.code, 'invalid_input');
      }

      const unknown = await fetch(rc.url + aguiPath('demo') + '/nobody-here', { headers: { Accept: 'text/event-stream' } });
      assert.equal(unknown.status, 204);
      assert.equal(await unknown.text(), '');
    });
  });

  test('a tool call: TOOL_CALL_START/ARGS/END with the call id; the tool message runs again and only it goes upstream', { timeout: TEST_TIMEOUT }, async () => {
    await withRuncast([], {}, async (rc) => {
      const user = userMessage('hello !tool=lookup');
      const agent = agentFor(rc, 'tool-1', { initialMessages: [user] });
      const first = await run(agent);
      assert.deepEqual(types(first.events), ['RUN_STARTED', 'TEXT_MESSAGE_START', 'TEXT_MESSAGE_CONTENT', 'TEXT_MESSAGE_CONTENT',
        'TEXT_MESSAGE_END', 'TOOL_CALL_START', 'TOOL_CALL_ARGS', 'TOOL_CALL_END', 'RUN_FINISHED']);
      const msg = textMessage(first.events);
      assert.equal(msg.text, 'Echo: hello');
      const [start, args, end] = first.events.slice(5, 8);
      const callId = start.toolCallId;
      assert.match(callId, /^call-/);
      assert.equal(start.toolCallName, 'lookup');
      assert.equal(start.parentMessageId, undefined);
      assert.deepEqual([args.toolCallId, end.toolCallId], [callId, callId]);
      assert.equal(args.delta, '{"text":"hello"}');  // the demo's call: args {text: <message>}
      assert.deepEqual(agent.messages, [
        user,
        { id: msg.id, role: 'assistant', content: 'Echo: hello' },
        { id: callId, role: 'assistant', toolCalls: [{ id: callId, type: 'function', function: { name: 'lookup', arguments: args.delta } }] },
      ]);

      const answer = { id: randomUUID(), role: 'tool', toolCallId: callId, content: JSON.stringify({ answer: 42 }) };
      agent.addMessage(answer);
      const second = await run(agent);
      assert.deepEqual(types(second.events), ['RUN_STARTED', 'TEXT_MESSAGE_START', ...repeat(4, 'TEXT_MESSAGE_CONTENT'),
        'TEXT_MESSAGE_END', 'RUN_FINISHED']);
      // the demo echoes a functionResponse as `NAME returned <response>`
      const reply = textMessage(second.events);
      assert.deepEqual(reply.deltas, ['Echo:', ' lookup', ' returned', ' {"answer":42}']);
      assert.equal(agent.messages.length, 5);
      assert.deepEqual(agent.messages.slice(3), [answer, { id: reply.id, role: 'assistant', content: reply.text }]);

      // HttpAgent sent the whole history; the agent got only the new part:
      // a message with no text (/debug/calls shows text parts only) whose
      // functionResponse it echoed, and no words (the first message again
      // would have been echoed after it).
      assert.deepEqual(agent.sent[1].body.messages, agent.messages.slice(0, 4));
      const calls = await demoCalls(rc, 'tool-1');
      assert.deepEqual(calls.map((c) => c.text), ['hello !tool=lookup', '']);
    });
  });

  test('state: !state=note arrives as STATE_DELTA and lands in agent.state beside the input state', { timeout: TEST_TIMEOUT }, async () => {
    await withRuncast([], {}, async (rc) => {
      const user = userMessage('hello !state=note');
      const agent = agentFor(rc, 'state-1', { initialMessages: [user], initialState: { x: 1 } });
      const { events } = await run(agent);
      assert.deepEqual(types(events), ['RUN_STARTED', 'TEXT_MESSAGE_START', 'TEXT_MESSAGE_CONTENT', 'TEXT_MESSAGE_CONTENT',
        'TEXT_MESSAGE_END', 'STATE_DELTA', 'RUN_FINISHED']);
      // the demo's stateDelta is {KEY: <message>}
      assert.deepEqual(ofType(events, 'STATE_DELTA')[0].delta, [{ op: 'add', path: '/note', value: 'hello' }]);
      assert.deepEqual(agent.state, { x: 1, note: 'hello' });
      // (the demo does not show the stateDelta it got: the ADK test below
      // checks that the input state reaches the agent)
      assert.deepEqual(agent.sent[0].body.state, { x: 1 });
    });
  });

  test('thinking: !think streams a reasoning message before the text', { timeout: TEST_TIMEOUT }, async () => {
    await withRuncast([], {}, async (rc) => {
      const user = userMessage('hello !think');
      const agent = agentFor(rc, 'think-1', { initialMessages: [user] });
      const { events } = await run(agent);
      const t = types(events);
      assert.deepEqual(t, ['RUN_STARTED', 'REASONING_START', 'REASONING_MESSAGE_START', 'REASONING_MESSAGE_CONTENT',
        'REASONING_MESSAGE_END', 'REASONING_END', 'TEXT_MESSAGE_START', 'TEXT_MESSAGE_CONTENT', 'TEXT_MESSAGE_CONTENT',
        'TEXT_MESSAGE_END', 'RUN_FINISHED']);
      const rs = ofType(events, 'REASONING_MESSAGE_START')[0];
      assert.equal(rs.role, 'reasoning');
      const thought = ofType(events, 'REASONING_MESSAGE_CONTENT').map((e) => e.delta).join('');
      assert.equal(thought, 'thinking about 1 words');  // the demo's thought part
      const msg = textMessage(events);
      assert.equal(msg.text, 'Echo: hello');
      assert.notEqual(rs.messageId, msg.id);
      assert.deepEqual(agent.messages, [
        user,
        { id: rs.messageId, role: 'reasoning', content: thought },
        { id: msg.id, role: 'assistant', content: 'Echo: hello' },
      ]);
      // The replayed thread is built the same way.
      const reloaded = agentFor(rc, 'think-1');
      await connect(reloaded);
      assert.deepEqual(reloaded.messages, agent.messages);
    });
  });

  test('an agent error: TEXT_MESSAGE_END, then RUN_ERROR agent_error "boom"; runAgent resolves', { timeout: TEST_TIMEOUT }, async () => {
    await withRuncast([], {}, async (rc) => {
      const user = userMessage('one two !error=boom');
      const agent = agentFor(rc, 'error-1', { initialMessages: [user] });
      const errors = [];
      agent.subscribe({ onRunErrorEvent: ({ event }) => { errors.push(event); } });
      const { events } = await run(agent);
      assert.deepEqual(types(events), ['RUN_STARTED', 'TEXT_MESSAGE_START', ...repeat(3, 'TEXT_MESSAGE_CONTENT'),
        'TEXT_MESSAGE_END', 'RUN_ERROR']);
      const err = events.at(-1);
      assert.deepEqual([err.code, err.message], ['agent_error', 'boom']);
      assert.equal(err.metadata.runcast.run_id, events[0].metadata.runcast.run_id);
      assert.deepEqual(errors, [err]);
      const msg = textMessage(events);
      assert.deepEqual(agent.messages, [user, { id: msg.id, role: 'assistant', content: 'Echo: one two' }]);
    });
  });

  test('supersede: a second run on the thread from another agent ends the first with TEXT_MESSAGE_END, RUN_ERROR superseded', { timeout: TEST_TIMEOUT }, async () => {
    await withRuncast([], {}, async (rc) => {
      const a = agentFor(rc, 'sup-1', { initialMessages: [userMessage(SLOW)] });
      const recA = start(a);
      await recA.until((ev) => contents(ev).length >= 2, T_EVENT, 'two TEXT_MESSAGE_CONTENT of the slow run');
      const b = agentFor(rc, 'sup-1', { initialMessages: [userMessage('again')] });
      const second = await run(b);
      await within(recA.done, T_EVENT, 'the superseded runAgent to resolve');
      const ta = types(recA.events);
      const n = contents(recA.events).length;
      assert.ok(n >= 2 && n < 7, 'the first run was cut short: ' + JSON.stringify(ta));
      assert.deepEqual(ta, ['RUN_STARTED', 'TEXT_MESSAGE_START', ...repeat(n, 'TEXT_MESSAGE_CONTENT'), 'TEXT_MESSAGE_END', 'RUN_ERROR']);
      assert.equal(recA.events.at(-1).code, 'superseded');
      assert.ok(SLOW_REPLY.startsWith(a.messages[1].content) && a.messages[1].content.length < SLOW_REPLY.length);
      assert.deepEqual(types(second.events), ['RUN_STARTED', 'TEXT_MESSAGE_START', 'TEXT_MESSAGE_CONTENT', 'TEXT_MESSAGE_CONTENT',
        'TEXT_MESSAGE_END', 'RUN_FINISHED']);
      assert.equal(b.messages[1].content, 'Echo: again');
      assert.deepEqual((await demoCalls(rc, 'sup-1')).map((c) => c.text), [SLOW, 'again']);
    });
  });

  test('cancel: DELETE …/sessions/{threadId}/run mid-run ends the stream with TEXT_MESSAGE_END, RUN_ERROR cancelled', { timeout: TEST_TIMEOUT }, async () => {
    await withRuncast([], {}, async (rc) => {
      const a = agentFor(rc, 'cancel-1', { initialMessages: [userMessage(SLOW)] });
      const rec = start(a);
      await rec.until((ev) => contents(ev).length >= 2, T_EVENT, 'two TEXT_MESSAGE_CONTENT');
      const del = await api(rc, 'DELETE', '/apps/demo/users/alice/sessions/cancel-1/run');
      assert.equal(del.status, 200, del.text);
      assert.equal(del.json.status, 'cancelled');
      await within(rec.done, T_EVENT, 'the cancelled runAgent to resolve');
      const n = contents(rec.events).length;
      assert.deepEqual(types(rec.events), ['RUN_STARTED', 'TEXT_MESSAGE_START', ...repeat(n, 'TEXT_MESSAGE_CONTENT'),
        'TEXT_MESSAGE_END', 'RUN_ERROR']);
      assert.equal(rec.events.at(-1).code, 'cancelled');
      assert.equal(rec.events.at(-1).metadata.runcast.run_id, del.json.run_id);
    });
  });

  test('resume: a run dropped after two words, resumed by a fresh agent, ends exactly as an uninterrupted one', { timeout: TEST_TIMEOUT }, async () => {
    await withRuncast([], {}, async (rc) => {
      const user = userMessage(SLOW);
      // A drops its connection after two words (abortRun: the page goes away).
      const a = agentFor(rc, 'resume-1', { initialMessages: [user] });
      const recA = start(a);
      await recA.until((ev) => contents(ev).length >= 2, T_EVENT, 'two TEXT_MESSAGE_CONTENT');
      a.abortRun();
      await within(recA.done, T_EVENT, 'the aborted runAgent to resolve');
      const idA = ofType(recA.events, 'TEXT_MESSAGE_START')[0].messageId;
      // the library ends an aborted run with its own RUN_ERROR code "abort"
      assert.deepEqual([recA.events.at(-1).type, recA.events.at(-1).code], ['RUN_ERROR', 'abort']);

      // C: the same input, uninterrupted, on another thread.
      const c = agentFor(rc, 'resume-2', { initialMessages: [user] });
      const runC = run(c);

      // B: a fresh agent (a reloaded page: no messages) on A's thread.
      const b = agentFor(rc, 'resume-1');
      const resumed = await connect(b);
      const tb = types(resumed.events);
      assert.deepEqual(tb.slice(0, 3), ['RUN_STARTED', 'MESSAGES_SNAPSHOT', 'TEXT_MESSAGE_START'], JSON.stringify(tb));
      const n = contents(resumed.events).length;
      assert.deepEqual(tb, ['RUN_STARTED', 'MESSAGES_SNAPSHOT', 'TEXT_MESSAGE_START', ...repeat(n, 'TEXT_MESSAGE_CONTENT'),
        'TEXT_MESSAGE_END', 'RUN_FINISHED']);
      const snapshot = resumed.events[1].messages;
      assert.deepEqual(snapshot[0], user);
      assert.deepEqual(snapshot.slice(1).map((m) => [m.id, m.role]), [[idA, 'assistant']]);
      assert.equal(resumed.events[2].messageId, idA);
      // The snapshot and the tail join with nothing lost or repeated.
      assert.equal(snapshot[1].content + contents(resumed.events).map((e) => e.delta).join(''), SLOW_REPLY);

      await runC;
      const shape = (msgs) => msgs.map(({ id, ...rest }) => (rest.role === 'user' ? { id, ...rest } : rest));
      assert.deepEqual(shape(b.messages), shape(c.messages));
      assert.deepEqual(b.messages, [user, { id: idA, role: 'assistant', content: SLOW_REPLY }]);
      assert.equal(b.messages.at(-1).id, idA);

      // A itself catches up too: its abortRun() does not abort the resume.
      assert.equal(a.messages[1].content.length < SLOW_REPLY.length, true);
      const caughtUp = await connect(a);
      assert.deepEqual(types(caughtUp.events), ['RUN_STARTED', 'MESSAGES_SNAPSHOT', 'RUN_FINISHED']);
      assert.deepEqual(a.messages, b.messages);
    });
  });

  test('connectAgent on a thread runcast does not know resolves with the messages it had (204)', { timeout: TEST_TIMEOUT }, async () => {
    await withRuncast([], {}, async (rc) => {
      const empty = agentFor(rc, 'nobody-here');
      const { events, result } = await connect(empty);
      assert.deepEqual([events, empty.messages, result.newMessages], [[], [], []]);
      const mine = userMessage('kept');
      const local = agentFor(rc, 'nobody-either', { initialMessages: [mine] });
      await connect(local);
      assert.deepEqual(local.messages, [mine]);
      assert.equal(local.isRunning, false);
    });
  });

  test('two runs on one thread with the library\'s own HttpAgent: it sends the whole history, the agent gets only the new message', { timeout: TEST_TIMEOUT }, async () => {
    await withRuncast([], {}, async (rc) => {
      const first = userMessage('first');
      const agent = agentFor(rc, 'two-1', { Agent: HttpAgent, initialMessages: [first] });
      await run(agent);
      const second = userMessage('second');
      agent.addMessage(second);
      await run(agent);
      assert.deepEqual(agent.messages.map((m) => [m.role, m.content]),
        [['user', 'first'], ['assistant', 'Echo: first'], ['user', 'second'], ['assistant', 'Echo: second']]);
      assert.deepEqual([agent.messages[0], agent.messages[2]], [first, second]);
      assert.notEqual(agent.messages[1].id, agent.messages[3].id);
      assert.deepEqual(agent.sent.map((s) => s.body.messages.length), [1, 3]);
      assert.deepEqual(agent.sent[1].body.messages, agent.messages.slice(0, 3));
      assert.deepEqual((await demoCalls(rc, 'two-1')).map((c) => c.text), ['first', 'second']);
    });
  });

  test('runcast dies mid-run: runAgent and connectAgent reject, and nothing is left unhandled', { timeout: TEST_TIMEOUT }, async () => {
    const rc = await startRuncast();
    try {
      const a = agentFor(rc, 'cut-1', { initialMessages: [userMessage(SLOW)] });
      const recA = start(a);
      await recA.until((ev) => contents(ev).length >= 1, T_EVENT, 'a TEXT_MESSAGE_CONTENT');
      const b = agentFor(rc, 'cut-1');
      const recB = start(b, {}, 'connectAgent');
      await recB.until((ev) => ev.some((e) => e.type === 'TEXT_MESSAGE_START'), T_EVENT, 'the resume\'s re-opened message');
      const before = unhandled.length;
      await rc.kill();
      const errors = await within(Promise.all([recA.done.then(() => null, (e) => e), recB.done.then(() => null, (e) => e)]),
        T_EVENT, 'both to settle');
      for (const e of errors) {
        assert.ok(e instanceof Error, 'rejected');
        assert.equal(e.message, 'terminated');
      }
      await new Promise((r) => setTimeout(r, 200));  // let a stray rejection surface (none may)
      assert.deepEqual(unhandled.slice(before), []);
    } finally {
      await rc.stop();
    }
  });
});

describe('AG-UI with the real ADK api_server', () => {
  let adk;
  before(async () => { adk = await startAdk('api_server'); });
  after(async () => { if (adk) await adk.stop(); });

  const withAdkRuncast = (fn) => withRuncast([], { upstream: adk.url }, fn);
  const adkSession = async (app, id) => {
    const res = await fetch(adk.url + '/apps/' + app + '/users/alice/sessions/' + id);
    assert.equal(res.status, 200);
    return res.json();
  };
  const userTexts = (session) => session.events.filter((e) => e.author === 'user').map((e) => e.content.parts);

  test('ADK echo: the reply in 3 chunks, the aggregate not repeated', { timeout: TEST_TIMEOUT }, async () => {
    await withAdkRuncast(async (rc) => {
      const user = userMessage('hello there');
      const agent = agentFor(rc, 'adk-text-1', { app: 'echo', initialMessages: [user] });
      const { events } = await run(agent);
      assert.deepEqual(types(events), ['RUN_STARTED', 'TEXT_MESSAGE_START', ...repeat(3, 'TEXT_MESSAGE_CONTENT'),
        'TEXT_MESSAGE_END', 'RUN_FINISHED']);
      const msg = textMessage(events);
      assert.equal(msg.text, 'echo: hello there');
      assert.deepEqual(agent.messages, [user, { id: msg.id, role: 'assistant', content: 'echo: hello there' }]);
      const reloaded = agentFor(rc, 'adk-text-1', { app: 'echo' });
      await connect(reloaded);
      assert.deepEqual(reloaded.messages, agent.messages);
    });
  });

  test('ADK tools: the server-side add call, its TOOL_CALL_RESULT, then the text', { timeout: TEST_TIMEOUT }, async () => {
    await withAdkRuncast(async (rc) => {
      const user = userMessage('add 2 and 40');
      const agent = agentFor(rc, 'adk-add-1', { app: 'tools', initialMessages: [user] });
      const { events } = await run(agent);
      assert.deepEqual(types(events), ['RUN_STARTED', 'TOOL_CALL_START', 'TOOL_CALL_ARGS', 'TOOL_CALL_END', 'TOOL_CALL_RESULT',
        'TEXT_MESSAGE_START', ...repeat(3, 'TEXT_MESSAGE_CONTENT'), 'TEXT_MESSAGE_END', 'RUN_FINISHED']);
      const [start, args, end, result] = events.slice(1, 5);
      const callId = start.toolCallId;
      assert.match(callId, /^adk-/);
      assert.equal(start.toolCallName, 'add');
      assert.deepEqual([args.toolCallId, args.delta, end.toolCallId], [callId, '{"a":2,"b":40}', callId]);
      assert.deepEqual([result.toolCallId, result.role, result.content], [callId, 'tool', '{"result":42}']);
      const msg = textMessage(events);
      assert.deepEqual(agent.messages, [
        user,
        { id: callId, role: 'assistant', toolCalls: [{ id: callId, type: 'function', function: { name: 'add', arguments: '{"a":2,"b":40}' } }] },
        { id: result.messageId, role: 'tool', toolCallId: callId, content: '{"result":42}' },
        { id: msg.id, role: 'assistant', content: 'the sum of 2 and 40 is 42' },
      ]);
    });
  });

  test('ADK client-side tool: lookup is called, the tool message answers it in the next run', { timeout: TEST_TIMEOUT }, async () => {
    await withAdkRuncast(async (rc) => {
      const user = userMessage('please lookup cats');
      const agent = agentFor(rc, 'adk-lookup-1', { app: 'tools', initialMessages: [user] });
      const first = await run(agent);
      assert.deepEqual(types(first.events), ['RUN_STARTED', 'TOOL_CALL_START', 'TOOL_CALL_ARGS', 'TOOL_CALL_END', 'RUN_FINISHED']);
      const [start, args] = first.events.slice(1, 3);
      const callId = start.toolCallId;
      assert.match(callId, /^adk-/);
      assert.deepEqual([start.toolCallName, args.delta], ['lookup', '{"text":"please lookup cats"}']);

      const answer = { id: randomUUID(), role: 'tool', toolCallId: callId, content: '{"answer":42}' };
      agent.addMessage(answer);
      const second = await run(agent);
      assert.deepEqual(types(second.events), ['RUN_STARTED', 'TEXT_MESSAGE_START', ...repeat(3, 'TEXT_MESSAGE_CONTENT'),
        'TEXT_MESSAGE_END', 'RUN_FINISHED']);
      const reply = textMessage(second.events);
      assert.equal(reply.text, 'lookup returned {"answer":42}');
      assert.deepEqual(agent.messages, [
        user,
        { id: callId, role: 'assistant', toolCalls: [{ id: callId, type: 'function', function: { name: 'lookup', arguments: args.delta } }] },
        answer,
        { id: reply.id, role: 'assistant', content: reply.text },
      ]);
      // ADK's session: the user's text once, then only the functionResponse.
      const session = await adkSession('tools', 'adk-lookup-1');
      assert.deepEqual(userTexts(session), [
        [{ text: 'please lookup cats' }],
        [{ functionResponse: { id: callId, name: 'lookup', response: { answer: 42 } } }],
      ]);
    });
  });

  test('ADK state: the input state reaches the session as stateDelta', { timeout: TEST_TIMEOUT }, async () => {
    await withAdkRuncast(async (rc) => {
      const agent = agentFor(rc, 'adk-state-1', { app: 'echo', initialMessages: [userMessage('state?')], initialState: { x: 1 } });
      const { events } = await run(agent);
      assert.equal(textMessage(events).text, 'state: {"x":1}');
      assert.deepEqual((await adkSession('echo', 'adk-state-1')).state, { x: 1 });
      assert.deepEqual(agent.state, { x: 1 });
    });
  });

  test('ADK error: the model fails mid-stream: TEXT_MESSAGE_END, RUN_ERROR agent_error', { timeout: TEST_TIMEOUT }, async () => {
    await withAdkRuncast(async (rc) => {
      const user = userMessage('go');
      const agent = agentFor(rc, 'adk-fails-1', { app: 'fails', initialMessages: [user] });
      const { events } = await run(agent);
      assert.deepEqual(types(events), ['RUN_STARTED', 'TEXT_MESSAGE_START', 'TEXT_MESSAGE_CONTENT', 'TEXT_MESSAGE_CONTENT',
        'TEXT_MESSAGE_END', 'RUN_ERROR']);
      assert.deepEqual([events.at(-1).code, events.at(-1).message], ['agent_error', 'offline model failure']);
      assert.deepEqual(agent.messages, [user, { id: textMessage(events).id, role: 'assistant', content: 'partial one partial two ' }]);
    });
  });

  test('ADK slow: supersede and cancel end the stream with TEXT_MESSAGE_END and RUN_ERROR', { timeout: TEST_TIMEOUT }, async () => {
    await withAdkRuncast(async (rc) => {
      const slow = 'slow 8 chunks every 300ms';
      for (const [thread, how, code] of [['adk-sup-1', 'supersede', 'superseded'], ['adk-cancel-1', 'cancel', 'cancelled']]) {
        const a = agentFor(rc, thread, { app: 'slow', initialMessages: [userMessage(slow)] });
        const rec = start(a);
        await rec.until((ev) => contents(ev).length >= 2, T_EVENT, 'two TEXT_MESSAGE_CONTENT');
        if (how === 'supersede') {
          const b = agentFor(rc, thread, { app: 'slow', initialMessages: [userMessage('slow 1 chunk every 10ms')] });
          const second = await run(b);
          assert.equal(textMessage(second.events).text, 'tick 1/1 ');
        } else {
          assert.equal((await api(rc, 'DELETE', '/apps/slow/users/alice/sessions/' + thread + '/run')).status, 200);
        }
        await within(rec.done, T_EVENT, 'the ' + how + ' runAgent to resolve');
        const n = contents(rec.events).length;
        assert.deepEqual(types(rec.events), ['RUN_STARTED', 'TEXT_MESSAGE_START', ...repeat(n, 'TEXT_MESSAGE_CONTENT'),
          'TEXT_MESSAGE_END', 'RUN_ERROR'], how);
        assert.equal(rec.events.at(-1).code, code);
      }
    });
  });

  test('ADK resume: a dropped slow run resumed by a fresh agent equals an uninterrupted one', { timeout: TEST_TIMEOUT }, async () => {
    await withAdkRuncast(async (rc) => {
      const user = userMessage('slow 6 chunks every 300ms');
      const full = [1, 2, 3, 4, 5, 6].map((i) => 'tick ' + i + '/6 ').join('');
      const a = agentFor(rc, 'adk-resume-1', { app: 'slow', initialMessages: [user] });
      const recA = start(a);
      await recA.until((ev) => contents(ev).length >= 2, T_EVENT, 'two TEXT_MESSAGE_CONTENT');
      a.abortRun();
      await within(recA.done, T_EVENT, 'the aborted runAgent to resolve');
      const idA = ofType(recA.events, 'TEXT_MESSAGE_START')[0].messageId;
      const c = agentFor(rc, 'adk-resume-2', { app: 'slow', initialMessages: [user] });
      const runC = run(c);
      const b = agentFor(rc, 'adk-resume-1', { app: 'slow' });
      const resumed = await connect(b);
      const n = contents(resumed.events).length;
      assert.deepEqual(types(resumed.events), ['RUN_STARTED', 'MESSAGES_SNAPSHOT', 'TEXT_MESSAGE_START',
        ...repeat(n, 'TEXT_MESSAGE_CONTENT'), 'TEXT_MESSAGE_END', 'RUN_FINISHED']);
      await runC;
      assert.deepEqual(b.messages, [user, { id: idA, role: 'assistant', content: full }]);
      assert.deepEqual(c.messages.map((m) => [m.role, m.content]), b.messages.map((m) => [m.role, m.content]));
    });
  });

  test('ADK two runs on one thread: ADK\'s session holds each user message once', { timeout: TEST_TIMEOUT }, async () => {
    await withAdkRuncast(async (rc) => {
      const agent = agentFor(rc, 'adk-two-1', { app: 'echo', initialMessages: [userMessage('first')] });
      await run(agent);
      agent.addMessage(userMessage('second'));
      await run(agent);
      assert.deepEqual(agent.messages.map((m) => [m.role, m.content]),
        [['user', 'first'], ['assistant', 'echo: first'], ['user', 'second'], ['assistant', 'echo: second']]);
      assert.deepEqual(agent.sent.map((s) => s.body.messages.length), [1, 3]);
      assert.deepEqual(userTexts(await adkSession('echo', 'adk-two-1')), [[{ text: 'first' }], [{ text: 'second' }]]);
    });
  });
});
