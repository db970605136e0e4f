// lib.mjs: what the console's browser tests share. Starts the real runcast
// binary (demo agent upstream) on a free loopback port, launches Debian's
// chromium through playwright-core, and opens the console in a fresh context
// that records every request the page makes and every page error.
//
// Nothing here sleeps: every wait is on an event (a log line, a process exit,
// a DOM condition) with a deadline.

import { spawn } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createHmac } from 'node:crypto';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const ROOT = resolve(here, '..', '..');
export const RUNCAST_BIN = resolve(ROOT, process.env.RUNCAST_BIN || 'build/runcast');
export const OUTPUT = resolve(ROOT, process.env.E2E_OUTPUT || 'tests/output/e2e');
export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

// Deadlines. Generous: the machine is shared and timings are noisy; a test
// only waits this long when something is wrong.
export const T_START = 15000;   // a process to be ready
export const T_UI = 15000;      // a DOM condition

/* Waits until fn() returns a truthy value or deadline ms pass; fn is called
 * whenever emitter emits one of the events. */
function waitOn(emitter, events, fn, deadline, what) {
  return new Promise((resolveP, rejectP) => {
    const check = () => {
      let v;
      try { v = fn(); } catch (err) { done(); rejectP(err); return; }
      if (v) { done(); resolveP(v); }
    };
    const timer = setTimeout(() => { done(); rejectP(new Error('timed out after ' + deadline + ' ms waiting for ' + what)); }, deadline);
    const done = () => {
      clearTimeout(timer);
      for (const e of events) emitter.removeListener(e, check);
    };
    for (const e of events) emitter.on(e, check);
    check();
  });
}

/* Starts runcast on 127.0.0.1:<free port> (port 0, read back from its
 * `listening` log line), with the demo agent or opts.upstream (a URL). Returns {url, port, logs(), stop(),
 * kill()}; stop() sends SIGTERM and asserts a clean exit 0;
 * kill(signal = 'SIGKILL') kills it on purpose (a server dying mid-stream),
 * waits for it to exit and returns {code, signal}; stop() after kill() only
 * checks the log for sanitizer reports. */
export async function startRuncast(args = [], { upstream = 'demo' } = {}) {
  const proc = spawn(RUNCAST_BIN, ['--listen', '127.0.0.1:0', '--upstream', upstream,
    '--shutdown-grace', '1s', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  let exit = null;
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (chunk) => { stderr += chunk; });
  proc.on('exit', (code, signal) => { exit = { code, signal }; });
  const m = await waitOn(proc.stderr, ['data'], () => {
    if (exit) throw new Error('runcast exited (' + JSON.stringify(exit) + ') before listening:\n' + stderr);
    return /event=listening address=127\.0\.0\.1:(\d+)/.exec(stderr);
  }, T_START, 'runcast to log "listening"').catch((err) => { proc.kill('SIGKILL'); throw err; });
  const port = Number(m[1]);
  const url = 'http://127.0.0.1:' + port;
  let killed = false;
  return {
    port,
    url,
    logs: () => stderr,
    async kill(signal = 'SIGKILL') {
      killed = true;
      if (!exit) {
        proc.kill(signal);
        await waitOn(proc, ['exit'], () => exit, T_START, 'runcast to exit on ' + signal);
      }
      return exit;
    },
    async stop() {
      if (killed) {
        assert.doesNotMatch(stderr, /ERROR: (Address|Leak|Undefined)Sanitizer|runtime error:/, 'sanitizer report');
        return;
      }
      if (!exit) {
        proc.kill('SIGTERM');
        await waitOn(proc, ['exit'], () => exit, T_START, 'runcast to exit on SIGTERM')
          .catch((err) => { proc.kill('SIGKILL'); throw err; });
      }
      assert.deepEqual(exit, { code: 0, signal: null }, 'runcast exit status; its log ends:\n' + stderr.slice(-2000));
      assert.doesNotMatch(stderr, /ERROR: (Address|Leak|Undefined)Sanitizer|runtime error:/, 'sanitizer report');
    },
  };
}

/* A free loopback TCP port (bound to port 0, read back, closed): for a
 * server that cannot be told to pick one itself and say which. */
export function freePort() {
  return new Promise((resolveP, rejectP) => {
    const srv = createServer();
    srv.on('error', rejectP);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolveP(port));
    });
  });
}

// The real ADK JS (npm's @google/adk-devtools 2.0.0, installed into
// tests/adk/node_modules by tests/adk/bootstrap) with the offline agents in
// tests/adk/agents/ (see tests/integration/test_adk.py).
export const ADK_DIR = resolve(ROOT, 'tests', 'adk');
export const ADK_CLI = resolve(ADK_DIR, 'node_modules', '@google', 'adk-devtools', 'dist', 'esm', 'cli_entrypoint.js');
export const ADK_APPS = ['echo', 'fails', 'slow', 'throws_non_error', 'tools'];
export const T_ADK_START = 60000;  // node loads ADK and the agents: seconds on a busy machine

/* Starts ADK's CLI (`command`: 'web' serves the dev UI at /dev-ui/ and the
 * API; 'api_server' the API only) on 127.0.0.1:<free port>, offline: the
 * agents in tests/adk/agents/, sessions in memory, no compile or bundle step.
 * Ready when GET /list-apps names every agent. Returns {port, url, logs(),
 * stop()}; stop() sends SIGTERM (SIGKILL if it lingers) and waits for exit. */
export async function startAdk(command = 'web') {
  if (!existsSync(ADK_CLI))
    throw new Error('ADK JS is not installed (' + ADK_CLI + ' is missing): run tests/adk/bootstrap');
  const port = await freePort();
  const env = { ...process.env };
  delete env.DATABASE_URL;  // else ADK keeps its sessions there, not in memory
  const proc = spawn(process.execPath, [ADK_CLI, command, '--host', '127.0.0.1', '--port', String(port),
    '--compile', 'false', '--bundle', 'false', '--session_service_uri', 'memory://', 'agents'],
  { cwd: ADK_DIR, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  let exit = null;
  for (const s of [proc.stdout, proc.stderr]) {
    s.setEncoding('utf8');
    s.on('data', (chunk) => { output += chunk; });
  }
  proc.on('exit', (code, signal) => { exit = { code, signal }; });
  const url = 'http://127.0.0.1:' + port;
  const stop = async () => {
    if (exit) return exit;
    proc.kill('SIGTERM');
    try {
      await waitOn(proc, ['exit'], () => exit, T_START, 'ADK to exit on SIGTERM');
    } catch {
      proc.kill('SIGKILL');
      await waitOn(proc, ['exit'], () => exit, T_START, 'ADK to exit on SIGKILL');
    }
    return exit;
  };
  try {
    await pollUntil(async () => {
      if (exit) throw new Error('adk ' + command + ' exited (' + JSON.stringify(exit) + ') before it was ready');
      try {
        const res = await fetch(url + '/list-apps', { signal: AbortSignal.timeout(5000) });
        return res.status === 200 && JSON.stringify(await res.json()) === JSON.stringify(ADK_APPS);
      } catch { return false; }  // not listening yet
    }, T_ADK_START, 'adk ' + command + ' on port ' + port + ' to list the offline agents');
  } catch (err) {
    await stop();
    err.message += '\nits output ends:\n' + output.slice(-3000);
    throw err;
  }
  return { port, url, logs: () => output, stop };
}

/* JSON over HTTP to runcast from the test itself (not the page). */
export async function api(rc, method, path, body, headers = {}) {
  const init = { method, headers: { ...headers } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(rc.url + path, init);
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, headers: res.headers, json, text };
}

/* Polls fn (async) every 50 ms until it returns truthy or the deadline
 * passes: for conditions outside the browser (a run's state over HTTP). */
export async function pollUntil(fn, deadline, what) {
  const end = Date.now() + deadline;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error('timed out after ' + deadline + ' ms waiting for ' + what);
    await new Promise((r) => setTimeout(r, 50));  // a poll interval, not a wait for an outcome
  }
}

export async function launchBrowser() {
  // playwright gives each launch a fresh temporary profile (--user-data-dir)
  // of its own and removes it at close.
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 60000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/* A fresh context (own storage) and page at rc.url + '/' + hash. Every
 * request the context makes is recorded (requests[]), and so are page errors
 * and console messages (errors[], consoleLines[]). waitLive: wait for the
 * stream to go live (false where it cannot, e.g. before a token is given).
 * rc only needs .url (e.g. a reverse proxy's origin); contextOptions are
 * added to playwright's newContext options (e.g. ignoreHTTPSErrors). */
export async function openConsole(browser, rc, { hash = '', viewport = { width: 1280, height: 800 }, mobile = false, waitLive = true, contextOptions = {} } = {}) {
  const context = await browser.newContext({
    viewport, isMobile: mobile, hasTouch: mobile, deviceScaleFactor: mobile ? 2 : 1, colorScheme: 'light',
    ...contextOptions,
  });
  const requests = [];
  const errors = [];
  const consoleLines = [];
  context.on('request', (r) => requests.push({ url: r.url(), method: r.method(), headers: r.headers() }));
  const page = await context.newPage();
  page.setDefaultTimeout(T_UI);
  page.on('pageerror', (err) => errors.push(String(err && err.stack || err)));
  page.on('console', (msg) => consoleLines.push(msg.type() + ': ' + msg.text()));
  const response = await page.goto(rc.url + '/' + (hash ? '#' + hash : ''));
  if (waitLive)
    await page.waitForFunction(() => document.getElementById('conn').dataset.state === 'live');
  return { context, page, requests, errors, consoleLines, response };
}

/* Asserts what must hold for every page: no script error, no CSP report,
 * and no request left runcast's origin (rc.url: pass the proxy's origin
 * when the page was opened through one). Then closes the context. */
export async function closeConsole(rc, ui) {
  try {
    assert.deepEqual(ui.errors, [], 'page errors');
    assert.deepEqual(ui.consoleLines.filter((l) => /Content.Security.Policy|Refused to/i.test(l)), [],
      'CSP violations');
    const foreign = ui.requests.filter((r) => !r.url.startsWith(rc.url + '/'));
    assert.deepEqual(foreign, [], 'requests outside ' + rc.url);
  } finally {
    await ui.context.close();
  }
}

export async function screenshot(page, name, opts = {}) {
  mkdirSync(OUTPUT, { recursive: true });
  const path = join(OUTPUT, name + '.png');
  await page.screenshot({ path, ...opts });
  return path;
}

/* Types a message into the composer, sends it with the Send button, and
 * waits until its run is in the transcript (rendering is deferred to the
 * next frame). Returns its index in the transcript. */
export async function sendMessage(page, text) {
  const before = await page.locator('#transcript .run').count();
  await page.fill('#message', text);
  await page.click('#send');
  await page.waitForFunction((n) => document.querySelectorAll('#transcript .run').length > n, before);
  return before;
}

/* Runs in the page (self-contained: playwright sends its source; the
 * page's CSP forbids eval, so predicates are data, not code). Without
 * q.cond: every run article of the transcript as plain data. With it: true
 * when run q.index (negative: from the end) matches every field of q.cond:
 * state, badge, meta, reply, user (exact), partial (a block still partial),
 * minEvents / maxEvents (agent events applied). */
function probeRuns(q) {
  const view = (n) => ({
    id: n.dataset.runId || null,
    state: n.dataset.state,
    badge: n.querySelector('.badge').textContent,
    meta: n.querySelector('.run-meta').textContent,
    user: n.querySelector('.user-msg').hidden ? null : n.querySelector('.user-msg').textContent,
    reply: Array.from(n.querySelectorAll('.reply-block')).map((b) => b.textContent).join('\n'),
    partial: Array.from(n.querySelectorAll('.reply-block')).some((b) => b.dataset.partial === 'true'),
    blocks: Array.from(n.querySelectorAll('.reply-block')).map((b) => ({ text: b.textContent, partial: b.dataset.partial })),
    agentEvents: Number(n.dataset.agentEvents),
    error: n.querySelector('.run-error').hidden ? null : n.querySelector('.run-error').textContent,
    timeline: Array.from(n.querySelectorAll('.timeline li')).map((li) => li.textContent),
  });
  const nodes = Array.from(document.querySelectorAll('#transcript .run'));
  if (!q || !q.cond) return nodes.map(view);
  const n = nodes[q.index < 0 ? nodes.length + q.index : q.index];
  if (!n) return false;
  const r = view(n);
  for (const [k, v] of Object.entries(q.cond)) {
    if (k === 'minEvents') { if (r.agentEvents < v) return false; }
    else if (k === 'maxEvents') { if (r.agentEvents > v) return false; }
    else if (r[k] !== v) return false;
  }
  return true;
}

/* Waits until the transcript's run number `index` (0-based; negative counts
 * from the end) matches cond (see probeRuns). */
export async function waitRun(page, index, cond, what = JSON.stringify(cond), timeout = T_UI) {
  try {
    await page.waitForFunction(probeRuns, { index, cond }, { timeout });
  } catch (err) {
    const runs = await runsOf(page).catch(() => '(page gone)');
    throw new Error('waiting for run ' + index + ' to be ' + what + ': ' + err.message.split('\n')[0] +
      '\nruns: ' + JSON.stringify(runs, null, 1));
  }
}

/* The transcript's runs, in order. */
export function runsOf(page) {
  return page.evaluate(probeRuns, null);
}

/* HS256 JWT from node's own crypto. */
export function mintJwt(secret, claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = b64({ alg: 'HS256', typ: 'JWT' });
  const body = b64(claims);
  const sig = createHmac('sha256', secret).update(head + '.' + body).digest('base64url');
  return head + '.' + body + '.' + sig;
}
