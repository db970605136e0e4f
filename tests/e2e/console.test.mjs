// console.test.mjs: the console page in a real headless chromium against the
// real runcast binary with its demo agent (see docs/DEMO.md for the `!`
// directives the messages use). Each test starts its own runcast on a free
// loopback port, opens the page in a fresh browser context, and asserts what
// a person would see. Screenshots of each state go to tests/output/e2e/.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  ROOT, T_UI, api, closeConsole, launchBrowser, openConsole, pollUntil, runsOf, screenshot,
  sendMessage, startRuncast, waitRun,
} from './lib.mjs';

const TEST_TIMEOUT = 90000;
let browser;

before(async () => { browser = await launchBrowser(); });
after(async () => { if (browser) await browser.close(); });

/* Runs body(rc, ui) against a fresh runcast (extra flags in args) and a
 * fresh page, then checks the page's origin/CSP/error rules and that
 * runcast exits cleanly. */
async function withConsole(args, opts, body) {
  const rc = await startRuncast(args);
  let ui = null;
  try {
    ui = await openConsole(browser, rc, opts);
    await body(rc, ui);
  } finally {
    try {
      if (ui) await closeConsole(rc, ui);
    } finally {
      await rc.stop();
    }
  }
}

/* "Echo: w1 w2 …" after `events` partial events of the demo agent: the
 * first event is "Echo:", then one word each. */
function echoPrefix(words, events) {
  return ['Echo:', ...words.slice(0, Math.max(0, events - 1))].join(' ');
}

const DURATION = '\\d+(\\.\\d+)? (ms|s)';

test('a message streams in from partial chunks, the final text replaces them, completed with duration',
  { timeout: TEST_TIMEOUT }, () => withConsole([], { hash: 'demo/alice/chat' }, async (rc, ui) => {
    const { page } = ui;
    const words = ['one', 'two', 'three', 'four', 'five', 'six'];
    const final = echoPrefix(words, words.length + 1);
    await sendMessage(page, '!word-delay=250ms ' + words.join(' '));

    // Mid-stream: a partial block holding exactly the chunks received so far.
    await waitRun(page, -1, { state: 'running', partial: true, minEvents: 3, maxEvents: 6 }, 'running with some partial text');
    const [mid] = await runsOf(page);
    assert.equal(mid.blocks.length, 1);
    assert.equal(mid.blocks[0].partial, 'true');
    assert.equal(mid.reply, echoPrefix(words, mid.agentEvents), 'partial text is the chunks in order');
    assert.equal(mid.badge, 'running');
    assert.equal(mid.user, '!word-delay=250ms ' + words.join(' '));
    await screenshot(page, 'chat-streaming');

    // The end: one final block (the aggregated event replaced the partial
    // one instead of adding to it), 7 partial events + 1 final.
    await waitRun(page, -1, { state: 'completed' }, 'completed');
    const [done] = await runsOf(page);
    assert.deepEqual(done.blocks, [{ text: final, partial: 'false' }]);
    assert.equal(done.agentEvents, words.length + 2);
    assert.equal(done.badge, 'completed');
    assert.match(done.meta, new RegExp('^' + DURATION + ' · 8 events$'));
    assert.equal(done.error, null);
    assert.match(done.timeline.at(-1), new RegExp('^completed in ' + DURATION + '$'));
    assert.equal(await page.locator('#cancel').isDisabled(), true, 'Cancel is off once the run ended');

    const st = await api(rc, 'GET', '/apps/demo/users/alice/sessions/chat/task-status');
    assert.equal(st.status, 200);
    assert.equal(st.json.status, 'completed');
    assert.equal(st.json.run_id, done.id);
    assert.equal(st.json.events, 8);
    await screenshot(page, 'chat-completed');
  }));

test('a queued run shows its position, then runs and completes', { timeout: TEST_TIMEOUT },
  () => withConsole(['--max-concurrent-runs', '1'], { hash: 'demo/alice/waiter' }, async (rc, ui) => {
    const { page } = ui;
    // Another session holds the only slot until the test cancels it.
    const blocker = await api(rc, 'POST', '/apps/demo/users/bob/sessions/blocker/run', { message: '!hang hold the slot' });
    assert.equal(blocker.status, 202);
    assert.equal(blocker.json.status, 'running');

    await sendMessage(page, 'hello queue');
    await waitRun(page, -1, { state: 'queued', badge: 'queued #1' }, 'queued #1');
    const [queued] = await runsOf(page);
    assert.equal(queued.reply, '');
    assert.match(queued.meta, new RegExp('^for ' + DURATION + '$'));
    assert.equal(await page.locator('#cancel').isEnabled(), true, 'a queued run can be cancelled');
    await screenshot(page, 'run-queued');

    const del = await api(rc, 'DELETE', '/apps/demo/users/bob/sessions/blocker/run');
    assert.equal(del.status, 200);
    await waitRun(page, -1, { state: 'completed' }, 'completed after the slot freed');
    const [done] = await runsOf(page);
    assert.equal(done.reply, 'Echo: hello queue');
    assert.deepEqual(done.timeline.map((s) => s.replace(/ in .*/, '')),
      ['queued #1', 'started', 'first event', 'completed']);
  }));

test('failed runs show their code and message', { timeout: TEST_TIMEOUT },
  () => withConsole(['--upstream-retries', '0'], { hash: 'demo/alice/fails' }, async (rc, ui) => {
    const { page } = ui;
    await sendMessage(page, '!status=500 please fail');
    await waitRun(page, -1, { state: 'failed' }, 'failed (HTTP 500)');
    let [run] = await runsOf(page);
    assert.equal(run.badge, 'failed');
    assert.match(run.error, /^upstream_http \(HTTP 500\): .*demo status 500/);

    const second = await sendMessage(page, '!error=boom half way');
    assert.equal(second, 1);
    await waitRun(page, second, { state: 'failed' }, 'failed (agent error)');
    const runs = await runsOf(page);
    assert.equal(runs.length, 2, JSON.stringify(runs));
    run = runs[1];
    assert.match(run.error || '', /^agent_error/, JSON.stringify(runs));
    assert.equal(run.reply, 'Echo: half way', 'the partial text before the error stays');
    await screenshot(page, 'run-failed');
  }));

test('the demo agent\'s example chips are shown only when the upstream is the demo agent',
  { timeout: TEST_TIMEOUT }, async () => {
    const chips = (page) => page.evaluate(() => {
      const box = document.getElementById('demo-examples');
      return { upstream: box.dataset.upstream, hidden: box.hidden, chips: box.querySelectorAll('[data-example]').length,
        visible: box.getBoundingClientRect().height > 0 };
    });
    const settled = (page) => page.waitForFunction(() => document.getElementById('demo-examples').dataset.upstream !== undefined);
    await withConsole([], { hash: 'demo/alice/chips' }, async (rc, ui) => {
      await settled(ui.page);
      assert.deepEqual(await chips(ui.page), { upstream: 'demo', hidden: false, chips: 4, visible: true });
    });
    // Any other upstream (here one that is not even listening): no chips.
    await withConsole(['--upstream', 'http://127.0.0.1:9'], { hash: 'demo/alice/chips', waitLive: false }, async (rc, ui) => {
      await settled(ui.page);
      assert.deepEqual(await chips(ui.page), { upstream: 'http', hidden: true, chips: 4, visible: false });
    });
  });

test('a tab that joins a run late shows its age from the server\'s clock', { timeout: TEST_TIMEOUT },
  async () => {
    const rc = await startRuncast([]);
    try {
      const path = '/apps/demo/users/alice/sessions/late';
      const posted = await api(rc, 'POST', path + '/run', { message: '!word-delay=500ms ' + 'w '.repeat(20) });
      assert.equal(posted.status, 202);
      // Wait (on the server's own clock) until the run is two seconds old.
      await pollUntil(async () => {
        const st = await api(rc, 'GET', path + '/task-status');
        return st.json.started_at && Date.now() / 1000 - st.json.created_at >= 2;
      }, Date.now() + 10000, 'the run to be 2 s old');
      const ui = await openConsole(browser, rc, { hash: 'demo/alice/late' });
      try {
        await waitRun(ui.page, -1, { state: 'running' }, 'the replayed run running');
        const [run] = await runsOf(ui.page);
        const m = /^for (\d+(?:\.\d+)?) s$/.exec(run.meta);
        assert.ok(m && Number(m[1]) >= 2, 'the badge counts from the run\'s start: ' + JSON.stringify(run.meta));
        const since = await ui.page.evaluate(() => document.querySelector('#transcript .run .timeline li').title);
        assert.match(since, /^\+\d+(\.\d+)? ms after the run was registered$/, 'started, on the server\'s clock');
      } finally {
        await closeConsole(rc, ui);
      }
    } finally {
      await rc.stop();
    }
  });

test('the Cancel button cancels the active run', { timeout: TEST_TIMEOUT },
  () => withConsole([], { hash: 'demo/alice/cancel' }, async (rc, ui) => {
    const { page } = ui;
    const words = Array.from({ length: 30 }, (_, i) => 'c' + i);
    await sendMessage(page, '!word-delay=200ms ' + words.join(' '));
    await waitRun(page, -1, { state: 'running', minEvents: 2 }, 'running');
    await page.click('#cancel');
    await waitRun(page, -1, { state: 'cancelled' }, 'cancelled');
    const [run] = await runsOf(page);
    assert.equal(run.badge, 'cancelled');
    assert.equal(run.meta, 'by request');
    assert.ok(run.agentEvents < words.length + 1, 'cancelled before the end');
    assert.equal(run.reply, echoPrefix(words, run.agentEvents));
    await page.waitForFunction(() => document.getElementById('cancel').disabled);
    const st = await api(rc, 'GET', '/apps/demo/users/alice/sessions/cancel/task-status');
    assert.equal(st.json.status, 'cancelled');
    assert.equal(st.json.run_id, run.id);
    await screenshot(page, 'run-cancelled');
  }));

test('a run past its deadline shows timed out', { timeout: TEST_TIMEOUT },
  () => withConsole(['--first-event-timeout', '1s'], { hash: 'demo/alice/slow' }, async (rc, ui) => {
    const { page } = ui;
    await sendMessage(page, '!hang never answers');
    await waitRun(page, -1, { state: 'timed_out' }, 'timed out');
    const [run] = await runsOf(page);
    assert.equal(run.badge, 'timed out');
    assert.equal(run.meta, 'waiting for the first event');
    await screenshot(page, 'run-timed-out');
  }));

test('a newer message supersedes the active run', { timeout: TEST_TIMEOUT },
  () => withConsole([], { hash: 'demo/alice/super' }, async (rc, ui) => {
    const { page } = ui;
    await sendMessage(page, '!word-delay=300ms a long answer that will not finish');
    await waitRun(page, -1, { state: 'running', minEvents: 1 }, 'first run running');
    assert.equal(await sendMessage(page, 'second'), 1);
    await waitRun(page, 1, { state: 'completed', reply: 'Echo: second' }, 'second completed');
    const runs = await runsOf(page);
    assert.equal(runs.length, 2);
    assert.equal(runs[0].state, 'superseded');
    assert.equal(runs[0].meta, 'a newer run replaced it (' + runs[1].id + ')');
    assert.equal(runs[1].user, 'second');
    await screenshot(page, 'run-superseded');
  }));

test('a reload mid-run resumes after the last event: nothing duplicated, nothing lost', { timeout: TEST_TIMEOUT },
  () => withConsole([], { hash: 'demo/alice/reload' }, async (rc, ui) => {
    const { page, requests } = ui;
    const words = Array.from({ length: 40 }, (_, i) => 'w' + String(i + 1).padStart(2, '0'));
    await sendMessage(page, '!word-delay=150ms ' + words.join(' '));
    await waitRun(page, -1, { state: 'running', minEvents: 4 }, 'some words in');
    const [before] = await runsOf(page);
    assert.equal(before.reply, echoPrefix(words, before.agentEvents));

    const mark = requests.length;
    await page.reload();
    await page.waitForFunction(() => document.getElementById('conn').dataset.state === 'live');
    // The restored transcript goes on growing from where it was, still mid-run.
    await waitRun(page, -1, { state: 'running', partial: true, minEvents: 1 }, 'restored');
    const [restored] = await runsOf(page);
    assert.equal(restored.id, before.id);
    assert.ok(restored.agentEvents >= before.agentEvents, 'nothing shown before the reload is lost');
    await waitRun(page, -1, { partial: true, minEvents: 2 }, 'resumed');
    const [resumed] = await runsOf(page);
    assert.equal(resumed.reply, echoPrefix(words, resumed.agentEvents), 'each chunk exactly once, in order');
    assert.ok(resumed.agentEvents < words.length + 1, 'the reload happened mid-run (run too fast?)');

    const reconnect = requests.slice(mark).filter((r) => r.method === 'GET' && r.url.includes('/sessions/reload/run'));
    assert.ok(reconnect.length >= 1, 'the stream reopened after the reload');
    assert.match(reconnect[0].url, /[?&]last_event_id=[0-9a-f]+-\d+/, 'it resumes after the last event id');

    await waitRun(page, -1, { state: 'completed' }, 'completed');
    const runs = await runsOf(page);
    assert.equal(runs.length, 1, 'one run, not a replayed copy');
    assert.equal(runs[0].reply, echoPrefix(words, words.length + 1));
    assert.equal(runs[0].agentEvents, words.length + 2, 'every agent event applied exactly once');
    assert.match(runs[0].meta, / · 42 events$/);
    await screenshot(page, 'reload-resumed');
  }));

test('stream.reset is shown when runcast cannot place the tab\'s last event', { timeout: TEST_TIMEOUT },
  () => withConsole([], { hash: 'demo/alice/reset' }, async (rc, ui) => {
    const { page } = ui;
    const url = page.url();
    await sendMessage(page, 'first life');
    await waitRun(page, -1, { state: 'completed' }, 'first run completed');

    // While the tab is away the session is deleted and started again: the
    // tab's last event id belongs to the old incarnation.
    await page.goto('about:blank');
    const path = '/apps/demo/users/alice/sessions/reset';
    assert.equal((await api(rc, 'DELETE', path)).status, 200);
    const post = await api(rc, 'POST', path + '/run', { message: 'second life' });
    assert.equal(post.status, 202);
    await pollUntil(async () => (await api(rc, 'GET', path + '/task-status')).json.status === 'completed',
      T_UI, 'the second run to complete');

    await page.goto(url);
    await page.waitForSelector('.notice.warn');
    const notice = await page.locator('.notice.warn').textContent();
    assert.match(notice, /^Stream reset \(unknown_event_id\)/);
    await waitRun(page, -1, { state: 'completed', reply: 'Echo: second life' }, 'second run replayed');
    const runs = await runsOf(page);
    assert.deepEqual(runs.map((r) => [r.id, r.reply]),
      [[runs[0].id, 'Echo: first life'], [post.json.run_id, 'Echo: second life']]);
    await screenshot(page, 'stream-reset');
  }));

test('the operations panel lists sessions and runs live, with outcome totals and the delay chart',
  { timeout: TEST_TIMEOUT }, () => withConsole([], { hash: 'demo/alice/ops-a' }, async (rc, ui) => {
    const { page } = ui;
    await page.evaluate(() => { window.__samePage = true; });
    await sendMessage(page, 'hello ops');
    await waitRun(page, -1, { state: 'completed' }, 'completed');

    const row = (key) => page.locator('#sessions-body tr[data-session="' + key + '"]');
    await page.waitForFunction(() => {
      const tr = document.querySelector('#sessions-body tr[data-session="demo/alice/ops-a"]');
      return tr && tr.dataset.state === 'completed';
    });
    assert.equal(await row('demo/alice/ops-a').locator('td').nth(3).textContent(), '4', 'events of the run');
    assert.equal(await row('demo/alice/ops-a').locator('td').nth(4).textContent(), '1', 'this tab\'s stream');
    assert.equal(await row('demo/alice/ops-a').getAttribute('class'), 'current');

    // A run started elsewhere shows up, running, then cancelled: no reload.
    const path = '/apps/demo/users/bob/sessions/ops-b';
    assert.equal((await api(rc, 'POST', path + '/run', { message: '!hang' })).status, 202);
    await page.waitForFunction(() => {
      const tr = document.querySelector('#sessions-body tr[data-session="demo/bob/ops-b"]');
      return tr && tr.dataset.state === 'running' && tr.querySelector('.state.active') !== null;
    });
    await page.waitForFunction(() => document.getElementById('g-active').textContent === '1');
    await screenshot(page, 'ops-running');
    assert.equal((await api(rc, 'DELETE', path + '/run')).status, 200);
    await page.waitForFunction(() => {
      const tr = document.querySelector('#sessions-body tr[data-session="demo/bob/ops-b"]');
      return tr && tr.dataset.state === 'cancelled';
    });
    await page.waitForFunction(() => document.querySelector('.o-n[data-outcome="cancelled"]').textContent === '1');
    const outcomes = await page.evaluate(() => Object.fromEntries(
      Array.from(document.querySelectorAll('.o-n[data-outcome]')).map((n) => [n.dataset.outcome, n.textContent])));
    assert.deepEqual(outcomes, { completed: '1', failed: '0', cancelled: '1', timed_out: '0', superseded: '0' });
    assert.equal(await page.textContent('#g-active'), '0');
    assert.equal(await page.textContent('#g-sessions'), '2');
    assert.equal(await page.locator('#sessions-body tr[data-session]').count(), 2);

    // The start delay: a number now, and a p50 line drawn on the chart.
    await page.waitForFunction((re) => new RegExp(re).test(document.getElementById('p50-now').textContent),
      '^\\d+(\\.\\d+)? (µs|ms|s)$');
    const chart = await page.evaluate(() => {
      const c = document.getElementById('chart');
      const p50 = getComputedStyle(document.documentElement).getPropertyValue('--p50').trim();
      const m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(p50);
      const want = m.slice(1).map((h) => parseInt(h, 16));
      const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let hits = 0;
      for (let i = 0; i < data.length; i += 4) {
        if (Math.abs(data[i] - want[0]) < 8 && Math.abs(data[i + 1] - want[1]) < 8 && Math.abs(data[i + 2] - want[2]) < 8) hits++;
      }
      return { w: c.clientWidth, h: c.clientHeight, hits };
    });
    assert.ok(chart.w > 200 && chart.h > 100, 'chart size ' + JSON.stringify(chart));
    assert.ok(chart.hits > 0, 'the p50 series is drawn');
    assert.equal(await page.evaluate(() => window.__samePage), true, 'the page was never reloaded');
    await screenshot(page, 'ops-panel');
  }));

test('the page is served with a CSP and loads nothing outside runcast\'s origin', { timeout: TEST_TIMEOUT },
  () => withConsole([], { hash: 'demo/alice/csp' }, async (rc, ui) => {
    const { page, requests, response } = ui;
    const csp = response.headers()['content-security-policy'];
    assert.match(csp, /default-src 'none'/);
    assert.match(csp, /script-src 'self'/);
    assert.match(csp, /connect-src 'self'/);
    assert.match(csp, /frame-ancestors 'none'/);
    assert.equal(response.headers()['x-content-type-options'], 'nosniff');
    for (const asset of ['/console/app.js', '/console/app.css', '/console/favicon.svg']) {
      const r = await api(rc, 'GET', asset);
      assert.equal(r.status, 200, asset);
      assert.equal(r.headers.get('content-security-policy'), csp, asset);
    }
    await sendMessage(page, 'any request leaving?');
    await waitRun(page, -1, { state: 'completed' }, 'completed');
    await page.waitForFunction(() => /^updated/.test(document.getElementById('ops-updated').textContent));

    // Every request went to runcast (closeConsole asserts it again); these
    // are the ones the page needs.
    const paths = new Set(requests.map((r) => new URL(r.url).pathname));
    for (const p of ['/', '/console/app.js', '/console/app.css', '/console/favicon.svg', '/task-status',
      '/metrics', '/apps/demo/users/alice/sessions/csp/run']) {
      assert.ok(paths.has(p), 'the page requested ' + p + ' (got ' + [...paths].join(' ') + ')');
    }
    assert.deepEqual(requests.filter((r) => !r.url.startsWith(rc.url + '/')), []);
    // An attempt to reach elsewhere is refused by the CSP itself.
    const blocked = await page.evaluate(() => fetch('http://127.0.0.2:9/x').then(() => 'fetched', (e) => 'refused'));
    assert.equal(blocked, 'refused');
    ui.requests.splice(0);  // the probe above was ours, not the page's
    ui.consoleLines.splice(0);
  }));

test('at phone width the page has no horizontal overflow', { timeout: TEST_TIMEOUT },
  () => withConsole([], { hash: 'demo/alice/phone', viewport: { width: 390, height: 844 }, mobile: true },
    async (rc, ui) => {
      const { page } = ui;
      await sendMessage(page, 'a very long unbroken word ' + 'x'.repeat(120) + ' and then some more words');
      await waitRun(page, -1, { state: 'completed' }, 'completed');
      await sendMessage(page, '!status=500 and a failure');
      await waitRun(page, -1, { state: 'failed' }, 'failed');
      await page.waitForSelector('#sessions-body tr[data-session="demo/alice/phone"]');
      await screenshot(page, 'phone', { fullPage: true });
      const m = await page.evaluate(() => {
        const vw = document.documentElement.clientWidth;
        const wide = [];
        for (const n of document.querySelectorAll('body *')) {
          const r = n.getBoundingClientRect();
          if (r.width > 0 && (r.right > vw + 0.5 || r.left < -0.5)) wide.push(n.tagName + '.' + n.className);
        }
        return { vw, doc: document.documentElement.scrollWidth, body: document.body.scrollWidth, wide };
      });
      assert.equal(m.vw, 390);
      assert.deepEqual(m.wide, [], 'elements past the right edge');
      assert.ok(m.doc <= m.vw && m.body <= m.vw, 'no horizontal scroll: ' + JSON.stringify(m));
    }));

test('at laptop width the two panels sit side by side (README screenshot)', { timeout: TEST_TIMEOUT },
  () => withConsole([], { hash: 'demo/alice/tour' }, async (rc, ui) => {
    const { page } = ui;
    await api(rc, 'POST', '/apps/demo/users/bob/sessions/support-42/run', { message: '!word-delay=20ms how do I reset my password' });
    // A session id of the longest kind (128 characters) must not widen the table.
    const longId = 'conversation-' + 'x'.repeat(115);
    await api(rc, 'POST', '/apps/demo/users/carol/sessions/' + longId + '/run', { message: 'a long id' });
    await sendMessage(page, 'What can runcast do?');
    await waitRun(page, -1, { state: 'completed' }, 'completed');
    await sendMessage(page, '!status=500 this one fails');
    await waitRun(page, -1, { state: 'failed' }, 'failed');
    await sendMessage(page, '!word-delay=400ms a reply that streams in word by word while you watch');
    await waitRun(page, -1, { state: 'running', minEvents: 5 }, 'streaming');
    await page.waitForFunction(() => document.querySelectorAll('#sessions-body tr[data-session]').length === 3);
    const wrap = await page.evaluate(() => {
      const w = document.querySelector('.table-wrap');
      return { scroll: w.scrollWidth, client: w.clientWidth };
    });
    assert.ok(wrap.scroll <= wrap.client, 'the sessions table fits its panel: ' + JSON.stringify(wrap));
    const boxes = await page.evaluate(() => ['.chat', '.ops'].map((s) => {
      const r = document.querySelector(s).getBoundingClientRect();
      return { left: r.left, right: r.right, top: r.top };
    }));
    assert.ok(boxes[0].right <= boxes[1].left, 'chat left of operations: ' + JSON.stringify(boxes));
    assert.equal(boxes[0].top, boxes[1].top);
    assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= document.documentElement.clientWidth));
    const shot = await screenshot(page, 'console');
    if (process.env.E2E_DOCS_SCREENSHOT) copyFileSync(shot, join(ROOT, 'docs', 'console.png'));
    await page.click('#cancel');
    await waitRun(page, -1, { state: 'cancelled' }, 'cancelled');
  }));
