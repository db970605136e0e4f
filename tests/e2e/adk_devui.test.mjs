// adk_devui.test.mjs: ADK's own dev web UI (`adk web` from npm's
// @google/adk-devtools 2.0.0, the Angular app at /dev-ui/) in headless
// chromium, through runcast as an ADK drop-in (DESIGN.md, "ADK drop-in"):
// runcast forwards /dev-ui/, /list-apps, session CRUD and the /dev/ routes to
// ADK and serves POST /run_sse itself as a durable run. ADK runs offline with
// the agents in tests/adk/agents/ (no network, no API key); the page's web
// fonts are refused by the test (they would come from fonts.gstatic.com).
//
// RUNCAST_E2E_DIRECT=1 opens the page on ADK's own port instead (no runcast;
// the runcast-specific assertions are skipped): the same UI-driving steps
// against plain ADK, to tell a runcast fault from a change in ADK's UI.
//
// Every request the page makes is recorded; the API routes it used are
// written to tests/output/e2e/adk-devui-requests[-direct].txt and printed as
// test diagnostics: what runcast's forwarding has to cover.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  OUTPUT, T_UI, closeConsole, launchBrowser, openConsole, pollUntil, runsOf, screenshot, startAdk,
  startRuncast, waitRun,
} from './lib.mjs';

const DIRECT = process.env.RUNCAST_E2E_DIRECT === '1';
const MODE = DIRECT ? 'directly against ADK (RUNCAST_E2E_DIRECT=1)' : 'through runcast';
const TEST_TIMEOUT = 90000;
const T_RUN = 30000;      // an agent run to end (the slow one lasts ~7.5 s)
const USER = 'user';      // the dev UI's default user id

let browser = null;
let adk = null;
let rc = null;
let base = null;          // the origin the page is opened on: runcast's, or ADK's in direct mode
const routes = new Map(); // "METHOD /path?keys" -> Set of statuses, over both tests

before(async () => {
  browser = await launchBrowser();
  adk = await startAdk('web');
  if (!DIRECT) rc = await startRuncast([], { upstream: adk.url });
  base = DIRECT ? adk.url : rc.url;
});

after(async () => {
  try {
    writeRoutes();
    if (browser) await browser.close();
  } finally {
    try {
      if (rc) await rc.stop();
    } finally {
      if (adk) await adk.stop();
    }
  }
});

/* ---------------------------------------------------------------- helpers */

/* A request's route with its ids taken out: UUIDs (the UI's session ids)
 * become {id}, the builder's cache-busting ts= value goes, and the UI's own
 * static files under /dev-ui/ (hashed names) are one route. */
function routeOf(method, url) {
  const u = new URL(url);
  const uuid = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g;
  let path = u.pathname.replace(uuid, '{id}');
  if (/^\/dev-ui\/./.test(path)) path = '/dev-ui/<static file>';
  const query = Array.from(u.searchParams.entries())
    .map(([k, v]) => k + '=' + (k === 'ts' ? '…' : v.replace(uuid, '{id}'))).join('&');
  return method + ' ' + path + (query ? '?' + query : '');
}

/* "ROUTE -> statuses" lines of a route map, sorted. */
function routeLines(map) {
  return Array.from(map.entries()).map(([r, st]) => r + '  -> ' + Array.from(st).sort().join(',')).sort();
}

function writeRoutes() {
  if (!routes.size) return;
  mkdirSync(OUTPUT, { recursive: true });
  writeFileSync(join(OUTPUT, DIRECT ? 'adk-devui-requests-direct.txt' : 'adk-devui-requests.txt'),
    '# routes the ADK dev UI requested ' + MODE + ' (status codes seen)\n' + routeLines(routes).join('\n') + '\n');
}

// Routes ADK 2.0.0's own server does not have although its dev UI asks for
// them (the UI is newer than the server's routes): 404 from ADK itself,
// which the UI ignores.
const ADK_OWN_404 = /^\/dev\/apps\/[^/]+\/(builder|eval_sets|eval_results)$/;

/* GET on the page's origin from the test itself. */
async function get(path) {
  const res = await fetch(base + path, { signal: AbortSignal.timeout(T_UI) });
  return { status: res.status, type: res.headers.get('content-type') || '', text: await res.text() };
}

/* Through runcast, the dev UI's page and its app list must come from ADK:
 * says plainly which forwarding is missing before any browser step. */
async function assertForwarded() {
  if (DIRECT) return;
  const ui = await get('/dev-ui/');
  if (ui.status === 404)
    assert.fail('runcast does not forward /dev-ui/ to the upstream: GET /dev-ui/ answered 404 ' + ui.text.slice(0, 200));
  assert.equal(ui.status, 200, 'GET /dev-ui/ through runcast: ' + ui.text.slice(0, 200));
  assert.match(ui.text, /<app-root>/, 'GET /dev-ui/ through runcast is not ADK\'s dev UI page');
  const apps = await get('/list-apps?relative_path=./');
  assert.equal(apps.status, 200, 'runcast does not forward GET /list-apps to the upstream: ' + apps.status + ' ' + apps.text.slice(0, 200));
  assert.ok(/"echo"/.test(apps.text) && /"slow"/.test(apps.text), 'GET /list-apps through runcast: ' + apps.text.slice(0, 200));
}

/* Opens the dev UI at base + '/dev-ui/' in a fresh context (own
 * localStorage), waits for it to render, and runs body(ui). Requests that
 * would leave the page's origin (Google's web fonts) are refused at once
 * and recorded. After body: no page error, nothing but fonts outside the
 * origin, and no error status from the origin but ADK's own 404s (a 404 in
 * runcast's JSON shape means runcast did not forward the route). */
async function withDevUi(t, body) {
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 }, colorScheme: 'dark' });
  const ui = { context, page: null, foreign: [], errors: [], runSse: [], routes: new Map(), bad: [] };
  try {
    await context.route((url) => url.origin !== base, (route) => {
      ui.foreign.push(route.request().url());
      return route.abort('blockedbyclient');
    });
    context.on('response', (res) => {
      const r = res.request();
      if (!r.url().startsWith(base + '/')) return;
      const key = routeOf(r.method(), r.url());
      for (const m of [ui.routes, routes]) {
        if (!m.has(key)) m.set(key, new Set());
        m.get(key).add(res.status());
      }
      const path = new URL(r.url()).pathname;
      if (res.status() >= 400) {
        const rec = { route: key, path, status: res.status(), body: '' };
        ui.bad.push(rec);
        rec.done = res.text().then((b) => { rec.body = b.slice(0, 200); }, () => {});
      }
      if (path === '/run_sse') {
        const rec = { status: res.status(), type: res.headers()['content-type'] || '', body: null, finished: false };
        ui.runSse.push(rec);
        if (res.status() !== 200) res.text().then((b) => { rec.body = b.slice(0, 300); }, () => {});
      }
    });
    context.on('requestfinished', (r) => {
      if (new URL(r.url()).pathname !== '/run_sse') return;
      const rec = ui.runSse.find((x) => !x.finished);
      if (rec) rec.finished = true;
    });
    const page = await context.newPage();
    ui.page = page;
    page.setDefaultTimeout(T_UI);
    page.on('pageerror', (err) => ui.errors.push(String(err && err.stack || err).slice(0, 500)));
    await page.goto(base + '/dev-ui/');
    // Rendered: the toolbar's app selector, with nothing picked yet.
    await page.locator('.app-toolbar .selector-button .selector-label', { hasText: 'Select an app' }).waitFor();
    assert.equal(await page.title(), 'Agent Development Kit Dev UI');

    await body(ui);

    assert.deepEqual(ui.errors, [], 'page errors in the dev UI');
    assert.deepEqual(ui.foreign.filter((u) => !/^https:\/\/fonts\.(gstatic|googleapis)\.com\//.test(u)), [],
      'requests outside ' + base + ' other than web fonts');
    await Promise.all(ui.bad.map((b) => b.done));
    const runcast404 = (b) => /^\{"error":\{"code":"/.test(b.body);
    const unexpected = ui.bad.filter((b) => !(b.status === 404 && ADK_OWN_404.test(b.path) && !runcast404(b)));
    assert.deepEqual(unexpected.map((b) => b.route + ' -> ' + b.status + ' ' + b.body), [],
      'error answers to the dev UI\'s requests ' + MODE +
      (unexpected.some(runcast404) ? ' (runcast\'s own JSON errors: routes it does not forward to ADK)' : ''));
    t.diagnostic('routes the page requested:\n  ' + routeLines(ui.routes).join('\n  '));
  } finally {
    await context.close();
  }
}

/* Picks an agent in the toolbar's app selector. */
async function pickApp(page, app) {
  await page.locator('.app-toolbar .selector-button').click();
  await page.locator('.app-selector-item .app-selector-item-name', { hasText: new RegExp('^\\s*' + app + '\\s*$') }).click();
  await page.waitForURL((u) => u.searchParams.get('app') === app);
  await page.locator('.app-toolbar .selector-label', { hasText: new RegExp('^\\s*' + app + '\\s*$') }).waitFor();
  await page.locator('textarea.chat-input-box:enabled').waitFor();
}

/* Ticks "Streaming" in the chat panel's "More options" menu (kept in
 * localStorage "adk-use-sse"): /run_sse with "streaming": true, so the reply
 * grows from partial events. Off by default. */
async function enableStreaming(page) {
  await page.locator('button', { has: page.locator('mat-icon', { hasText: /^\s*more_vert\s*$/ }) }).click();
  const item = page.locator('.mat-mdc-menu-panel button', { hasText: 'Streaming' });
  await item.locator('mat-icon', { hasText: /^\s*check_box_outline_blank\s*$/ }).waitFor();
  await item.click();
  await item.locator('mat-icon', { hasText: /^\s*check_box\s*$/ }).waitFor();
  await page.keyboard.press('Escape');
  await page.locator('.mat-mdc-menu-panel').waitFor({ state: 'detached' });
  assert.equal(await page.evaluate(() => localStorage.getItem('adk-use-sse')), 'true');
}

/* Types text into the chat box and sends it with Enter. The UI creates the
 * session (ADK picks its id) and puts it in the URL: returns that id. */
async function sendChat(page, text) {
  const box = page.locator('textarea.chat-input-box');
  await box.fill(text);
  await box.press('Enter');
  await page.locator('.content-bubble.role-user', { hasText: text }).waitFor();
  await page.waitForURL((u) => !!u.searchParams.get('session'));
  return new URL(page.url()).searchParams.get('session');
}

/* The text of every agent message bubble, in order. */
function botTexts(page) {
  return page.evaluate(() => Array.from(document.querySelectorAll('.content-bubble.role-bot'))
    .map((n) => n.textContent.trim()));
}

/* What went wrong with /run_sse, for a failure message. */
function runSseReport(ui) {
  if (!ui.runSse.length) return 'the page got no answer to POST /run_sse';
  return 'POST /run_sse answered: ' + ui.runSse.map((r) => r.status + ' ' + r.type +
    (r.body ? ' ' + r.body : '')).join('; ') +
    (!DIRECT && ui.runSse.some((r) => r.status === 404 || r.status === 405)
      ? ' (runcast does not serve POST /run_sse)' : '');
}

/* Waits until an agent bubble's text (trimmed) is want.exact, or starts
 * with want.prefix; on timeout says what the page shows and how /run_sse
 * answered. */
async function waitBot(ui, want, what, timeout = T_UI) {
  try {
    await ui.page.waitForFunction((w) => Array.from(document.querySelectorAll('.content-bubble.role-bot'))
      .some((n) => {
        const t = n.textContent.trim();
        return w.exact !== undefined ? t === w.exact : t.startsWith(w.prefix);
      }), want, { timeout });
  } catch (err) {
    const bots = await botTexts(ui.page).catch(() => '(page gone)');
    throw new Error('waiting for ' + what + ' in the dev UI ' + MODE + ': ' + err.message.split('\n')[0] +
      '\nagent bubbles: ' + JSON.stringify(bots) + '\n' + runSseReport(ui));
  }
}

/* The session's entry in runcast's GET /task-status?all=1, or null. */
async function runcastSession(app, sid) {
  const res = await fetch(rc.url + '/task-status?all=1&limit=1000');
  assert.equal(res.status, 200, 'GET /task-status?all=1');
  const st = await res.json();
  return (st.sessions || []).find((s) => s.session_id === sid && (s.app === undefined || s.app === app)) || null;
}

/* Waits until runcast's task status shows the session's run ended, and
 * returns the entry. */
async function runcastEnded(app, sid) {
  let last = null;
  try {
    return await pollUntil(async () => {
      last = await runcastSession(app, sid);
      return last && !last.has_task && last.status !== 'queued' && last.status !== 'running' ? last : null;
    }, T_RUN, 'the run to end');
  } catch (err) {
    if (!last)
      throw new Error('runcast\'s GET /task-status?all=1 does not list the dev UI\'s session ' + app + '/' + USER + '/' + sid +
        ': runcast did not run this /run_sse itself (was it forwarded to ADK?)');
    throw new Error(err.message + '; runcast\'s task status of ' + sid + ': ' + JSON.stringify(last));
  }
}

/* The session as ADK itself stores it (asked on ADK's own port). */
async function adkSession(app, sid) {
  const res = await fetch(adk.url + '/apps/' + app + '/users/' + USER + '/sessions/' + sid);
  assert.equal(res.status, 200, 'ADK GET session ' + sid);
  return res.json();
}

/* The text of ADK's stored events by the agent (finals only: ADK does not
 * store partial events). */
function agentTexts(session) {
  return (session.events || []).filter((e) => e.author !== 'user' && !e.partial)
    .map((e) => ((e.content && e.content.parts) || []).map((p) => p.text || '').join(''))
    .filter((t) => t);
}

/* ------------------------------------------------------------------ tests */

test('ADK dev UI: pick the echo agent, send a message, the exact reply appears; runcast ran it',
  { timeout: TEST_TIMEOUT }, async (t) => {
    t.diagnostic('mode: ' + MODE);
    const t0 = Date.now();
    await assertForwarded();
    await withDevUi(t, async (ui) => {
      const { page } = ui;
      t.diagnostic('dev UI rendered after ' + (Date.now() - t0) + ' ms');
      await pickApp(page, 'echo');
      const text = 'hello from the dev UI ' + Math.random().toString(36).slice(2, 8);
      const sid = await sendChat(page, text);
      await waitBot(ui, { exact: 'echo: ' + text }, 'the reply "echo: ' + text + '"');
      t.diagnostic('reply shown after ' + (Date.now() - t0) + ' ms (session ' + sid + ')');
      assert.deepEqual(await botTexts(page), ['echo: ' + text], 'the agent said exactly this, once');
      await screenshot(page, 'adk-devui-reply');
      assert.equal(ui.runSse.length, 1, 'one POST /run_sse');
      assert.equal(ui.runSse[0].status, 200, runSseReport(ui));
      assert.match(ui.runSse[0].type, /^text\/event-stream/);

      // ADK has the turn under the UI's session id (runcast passed it on).
      assert.deepEqual(agentTexts(await adkSession('echo', sid)), ['echo: ' + text], 'ADK\'s stored session');

      if (!DIRECT) {
        const s = await runcastEnded('echo', sid);
        assert.equal(s.status, 'completed', 'runcast\'s run of the session: ' + JSON.stringify(s));
        assert.ok(s.events > 0, 'runcast relayed the run\'s events: ' + JSON.stringify(s));
        t.diagnostic('runcast task status: ' + JSON.stringify(s));
      }
    });
  });

test('ADK dev UI: a reload while the slow agent streams does not cancel the run; runcast\'s console shows it',
  { timeout: TEST_TIMEOUT }, async (t) => {
    t.diagnostic('mode: ' + MODE);
    const t0 = Date.now();
    const n = 25;  // chunks, 300 ms apart: about 7.5 s
    const full = Array.from({ length: n }, (_, i) => 'tick ' + (i + 1) + '/' + n).join(' ');
    await assertForwarded();
    let sid;
    await withDevUi(t, async (ui) => {
      const { page } = ui;
      await pickApp(page, 'slow');
      await enableStreaming(page);
      const prompt = 'slow ' + n + ' chunks every 300ms';
      sid = await sendChat(page, prompt);

      // The reply is streaming: the first partial text is on the page, the
      // last is not, and the /run_sse body has not ended.
      await waitBot(ui, { prefix: 'tick 1/' + n }, 'the first partial text');
      t.diagnostic('first partial text after ' + (Date.now() - t0) + ' ms (session ' + sid + ')');
      assert.ok(!(await botTexts(page)).some((b) => b.includes('tick ' + n + '/' + n)),
        'the run already ended before the reload: ' + JSON.stringify(await botTexts(page)));
      assert.equal(ui.runSse.length, 1, runSseReport(ui));
      assert.equal(ui.runSse[0].status, 200, runSseReport(ui));
      assert.equal(ui.runSse[0].finished, false, 'the /run_sse body already ended before the reload');
      if (!DIRECT) {
        const s = await runcastSession('slow', sid);
        assert.ok(s, 'runcast\'s GET /task-status?all=1 does not list the dev UI\'s session slow/' + USER + '/' + sid +
          ' while its /run_sse streams: runcast did not run it itself (was it forwarded to ADK?)');
        assert.equal(s.has_task, true, 'runcast has the run active before the reload: ' + JSON.stringify(s));
      }

      // Reload mid-run: the page drops its /run_sse connection, comes back
      // on the same session (from the URL) and shows what ADK has stored.
      const reloadAt = Date.now();
      await page.reload();
      await page.locator('.app-toolbar .selector-label', { hasText: /^\s*slow\s*$/ }).waitFor();
      await page.locator('.content-bubble.role-user', { hasText: prompt }).waitFor();
      assert.equal(new URL(page.url()).searchParams.get('session'), sid, 'the same session after the reload');
      t.diagnostic('page back after the reload in ' + (Date.now() - reloadAt) + ' ms');
      await screenshot(page, 'adk-devui-reload');

      // The run goes on to its end: not cancelled by the disconnect.
      if (!DIRECT) {
        const s = await runcastEnded('slow', sid);
        assert.equal(s.status, 'completed', 'runcast\'s run after the reload (not cancelled/failed): ' + JSON.stringify(s));
        assert.ok(s.events >= n, 'runcast relayed every chunk: ' + JSON.stringify(s));
        t.diagnostic('runcast task status: ' + JSON.stringify(s));
      }
      const stored = await pollUntil(async () => {
        const texts = agentTexts(await adkSession('slow', sid));
        return texts.length ? texts : null;
      }, T_RUN, 'ADK to store the slow agent\'s final reply');
      assert.deepEqual(stored.map((x) => x.trim()), [full], 'ADK\'s stored reply: the whole run');
      t.diagnostic('run complete ' + (Date.now() - t0) + ' ms after the test started');

      // Another reload shows the whole reply from the stored session.
      await page.reload();
      await waitBot(ui, { exact: full }, 'the whole reply after a second reload');
      assert.equal(ui.runSse.length, 1, 'the page did not run the agent again');
    });

    if (DIRECT) return;
    // runcast's own console at / shows the session's run, completed, with
    // the reply (replayed from runcast's log), and lists it in Operations.
    const con = await openConsole(browser, rc, { hash: 'slow/' + USER + '/' + sid });
    try {
      const { page } = con;
      await waitRun(page, -1, { state: 'completed' }, 'completed');
      const runs = await runsOf(page);
      assert.equal(runs.length, 1, 'one run in the session: ' + JSON.stringify(runs));
      assert.equal(runs[0].reply.trim(), full, 'the console shows the whole reply');
      await page.waitForFunction((key) => {
        const tr = document.querySelector('#sessions-body tr[data-session="' + key + '"]');
        return tr && tr.dataset.state === 'completed';
      }, 'slow/' + USER + '/' + sid);
      const row = page.locator('#sessions-body tr[data-session="slow/' + USER + '/' + sid + '"]');
      assert.equal(await row.locator('.state').textContent(), 'completed');
      assert.ok(Number(await row.locator('td').nth(3).textContent()) >= n, 'events in the console\'s row');
      await screenshot(page, 'adk-devui-console');
    } finally {
      await closeConsole(rc, con);
    }
  });
