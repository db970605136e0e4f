// proxy.test.mjs: the console in headless chromium through a real nginx
// (Debian's nginx-light, installed by tests/e2e/bootstrap) in front of
// runcast, over HTTP/2 with TLS and over plain HTTP/1.1: the configuration
// the README's "Behind a reverse proxy (nginx)" section recommends.
//
// Each test starts its own runcast and its own private nginx: a config,
// pid file, logs, temp directories and a self-signed certificate for
// 127.0.0.1/localhost (openssl CLI) in a fresh temp directory, `daemon off;`
// as a child of this process, listening only on free loopback ports (never
// port 80, never /etc/nginx: `-p`, `-c` and `-e` point into the temp
// directory). It is stopped (SIGTERM, then checked to have exited) when the
// test ends, pass or fail.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  T_START, T_UI, closeConsole, launchBrowser, openConsole, pollUntil, runsOf, screenshot, sendMessage,
  startRuncast, waitRun,
} from './lib.mjs';

const NGINX = process.env.NGINX_BIN || '/usr/sbin/nginx';
const TEST_TIMEOUT = 90000;
const HEARTBEAT_S = 3;        // runcast --heartbeat
const READ_TIMEOUT_S = 5;     // nginx proxy_read_timeout: above the heartbeat
const IDLE_MS = 12000;        // the idle check: more than twice the read timeout

let browser;
const running = new Set();    // nginx instances not yet stopped

before(async () => {
  assert.ok(existsSync(NGINX), NGINX + ' is missing: run tests/e2e/bootstrap (it installs nginx-light)');
  browser = await launchBrowser();
});
after(async () => {
  for (const ngx of running) await ngx.stop().catch(() => {});
  if (browser) await browser.close();
});
// Last resort (the runner ending this process early): no nginx outlives it.
process.on('exit', () => { for (const ngx of running) ngx.kill(); });

async function freePort() {
  const srv = net.createServer();
  await new Promise((resolve, reject) => srv.once('error', reject).listen(0, '127.0.0.1', resolve));
  const { port } = srv.address();
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

const canConnect = (port) => new Promise((resolve) => {
  const s = net.connect(port, '127.0.0.1');
  s.once('connect', () => { s.destroy(); resolve(true); });
  s.once('error', () => resolve(false));
});

/* The `location /` block the README recommends. */
function proxyLocation(upstream, { host = true } = {}) {
  return `
    location / {
      proxy_pass ${upstream};
      proxy_http_version 1.1;
      ${host ? 'proxy_set_header Host $http_host;' : '# no Host line: nginx sends Host: <proxy_pass host:port>'}
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout ${READ_TIMEOUT_S}s;
    }`;
}

/* Starts a private nginx in front of rc: tls (HTTP/2 + TLS) and http
 * (HTTP/1.1) with the recommended config, noHost (HTTP/1.1, proxy_pass to
 * runcast's address without `Host $http_host`). Returns {tls, http, noHost}
 * (each {url}), accessLog(), errorLog(), stop(). */
async function startNginx(rc) {
  const dir = mkdtempSync(join(tmpdir(), 'runcast-nginx-'));
  chmodSync(dir, 0o711);  // as root, nginx's workers run as nobody and use the temp paths in here
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'), '-days', '1', '-subj', '/CN=127.0.0.1',
    '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost'], { stdio: ['ignore', 'ignore', 'pipe'] });
  const ports = { tls: await freePort(), http: await freePort(), noHost: await freePort() };
  const conf = `
daemon off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 128; }
http {
  log_format rc '$request_method $uri $server_protocol $status $upstream_status';
  access_log ${dir}/access.log rc;
  client_body_temp_path ${dir}/client_body_temp;
  proxy_temp_path ${dir}/proxy_temp;
  fastcgi_temp_path ${dir}/fastcgi_temp;
  uwsgi_temp_path ${dir}/uwsgi_temp;
  scgi_temp_path ${dir}/scgi_temp;

  upstream runcast {
    server 127.0.0.1:${rc.port};
    keepalive 8;
  }
  server {
    listen 127.0.0.1:${ports.tls} ssl http2;
    listen 127.0.0.1:${ports.http};
    ssl_certificate ${dir}/cert.pem;
    ssl_certificate_key ${dir}/key.pem;
    ${proxyLocation('http://runcast')}
  }
  server {
    listen 127.0.0.1:${ports.noHost};
    ${proxyLocation('http://127.0.0.1:' + rc.port, { host: false })}
  }
}
`;
  writeFileSync(join(dir, 'nginx.conf'), conf);
  const proc = spawn(NGINX, ['-p', dir + '/', '-c', join(dir, 'nginx.conf'), '-e', join(dir, 'error.log')],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  let exit = null;
  proc.stdout.on('data', (c) => { output += c; });
  proc.stderr.on('data', (c) => { output += c; });
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => { exit = { code, signal }; resolve(exit); }));
  const read = (name) => (existsSync(join(dir, name)) ? readFileSync(join(dir, name), 'utf8') : '');
  const ngx = {
    tls: { url: 'https://127.0.0.1:' + ports.tls },
    http: { url: 'http://127.0.0.1:' + ports.http },
    noHost: { url: 'http://127.0.0.1:' + ports.noHost },
    kill: () => { if (!exit) proc.kill('SIGTERM'); },
    accessLog: () => read('access.log'),
    errorLog: () => read('error.log'),
    async stop() {
      running.delete(ngx);
      try {
        if (!exit) {
          proc.kill('SIGTERM');  // fast shutdown of the master and its worker
          const timer = setTimeout(() => proc.kill('SIGKILL'), T_START);
          await exited;
          clearTimeout(timer);
        }
        assert.deepEqual(exit, { code: 0, signal: null }, 'nginx exit status; its error log:\n' + ngx.errorLog() + output);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
  running.add(ngx);
  try {
    await pollUntil(async () => {
      if (exit) throw new Error('nginx exited ' + JSON.stringify(exit) + ':\n' + output + ngx.errorLog());
      return (await canConnect(ports.tls)) && (await canConnect(ports.http)) && (await canConnect(ports.noHost));
    }, T_START, 'nginx to listen');
  } catch (err) {
    await ngx.stop().catch(() => {});
    throw err;
  }
  return ngx;
}

/* runcast (extra flags in args) behind a fresh nginx; body(rc, ngx); then
 * both stop, whatever happened. */
async function withProxy(args, body) {
  const rc = await startRuncast(args);
  let ngx = null;
  try {
    ngx = await startNginx(rc);
    await body(rc, ngx);
  } finally {
    try {
      if (ngx) await ngx.stop();
    } finally {
      await rc.stop();
    }
  }
}

/* The console at origin.url through the proxy; closeConsole checks that no
 * request left the proxy's origin. */
async function withPage(origin, hash, body) {
  const ui = await openConsole(browser, origin, { hash, contextOptions: { ignoreHTTPSErrors: true } });
  try {
    await body(ui);
  } finally {
    await closeConsole(origin, ui);
  }
}

const navProtocol = (page) => page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol);
const resourceProtocols = (page) => page.evaluate(() =>
  performance.getEntriesByType('resource').map((e) => new URL(e.name).pathname + ' ' + e.nextHopProtocol));
const accessLines = (ngx, re) => ngx.accessLog().split('\n').filter((l) => re.test(l));

/* A message that streams for about a second, checked mid-stream (partial
 * text on screen while the run is running: nginx does not buffer) and at the
 * end. */
async function streamOneReply(page, hashSession) {
  const words = ['one', 'two', 'three', 'four', 'five'];
  const index = await sendMessage(page, '!word-delay=200ms ' + words.join(' '));
  await waitRun(page, index, { state: 'running', partial: true, minEvents: 2, maxEvents: 5 }, 'running with partial text');
  const mid = (await runsOf(page))[index];
  assert.equal(mid.reply, ['Echo:', ...words].slice(0, mid.agentEvents).join(' '), 'partial text so far, in order');
  await waitRun(page, index, { state: 'completed' }, 'completed');
  const done = (await runsOf(page))[index];
  assert.deepEqual(done.blocks, [{ text: 'Echo: ' + words.join(' '), partial: 'false' }]);
  assert.equal(done.agentEvents, words.length + 2);
  assert.equal(done.error, null);
  assert.match(done.meta, / · 7 events$/);
  return `/apps/demo/users/alice/sessions/${hashSession}/run`;
}

test('through nginx over HTTP/2 + TLS: the console loads over h2, a reply streams in and completes',
  { timeout: TEST_TIMEOUT }, () => withProxy(['--heartbeat', HEARTBEAT_S + 's'], async (rc, ngx) => {
    await withPage(ngx.tls, 'demo/alice/h2', async ({ page, requests }) => {
      assert.equal(await navProtocol(page), 'h2', 'the page came over HTTP/2');
      const path = await streamOneReply(page, 'h2');
      assert.deepEqual((await resourceProtocols(page)).filter((l) => !l.endsWith(' h2')), [],
        'every finished request of the page went over h2');
      assert.ok(requests.some((r) => r.method === 'GET' && new URL(r.url).pathname === path), 'the page opened the stream');
      assert.deepEqual(accessLines(ngx, /^POST /), [`POST ${path} HTTP/2.0 202 202`], 'nginx access log');
      await screenshot(page, 'proxy-h2-completed');
    });
    assert.doesNotMatch(ngx.errorLog(), /\[(error|crit|alert|emerg)\]/, 'nginx error log');
  }));

test('through nginx over plain HTTP/1.1: the console works', { timeout: TEST_TIMEOUT },
  () => withProxy(['--heartbeat', HEARTBEAT_S + 's'], async (rc, ngx) => {
    await withPage(ngx.http, 'demo/alice/h1', async ({ page }) => {
      assert.equal(await navProtocol(page), 'http/1.1');
      const path = await streamOneReply(page, 'h1');
      assert.deepEqual(accessLines(ngx, /^POST /), [`POST ${path} HTTP/1.1 202 202`], 'nginx access log');
      await screenshot(page, 'proxy-http1-completed');
    });
    assert.doesNotMatch(ngx.errorLog(), /\[(error|crit|alert|emerg)\]/, 'nginx error log');
  }));

test(`an idle stream through nginx (--heartbeat ${HEARTBEAT_S}s, proxy_read_timeout ${READ_TIMEOUT_S}s) stays open ${IDLE_MS / 1000} s: no reconnect, never silent longer than the heartbeat`,
  { timeout: TEST_TIMEOUT }, (t) => withProxy(['--heartbeat', HEARTBEAT_S + 's'], async (rc, ngx) => {
    const path = '/apps/demo/users/alice/sessions/idle/run';
    // A second reader of the same session, through nginx's HTTP/1.1 port,
    // from Node: it sees the bytes (heartbeats) and when each chunk came.
    const ac = new AbortController();
    const res = await fetch(ngx.http.url + path + '?from=live', { signal: ac.signal });
    assert.equal(res.status, 200);
    const chunks = [];        // {at: ms, text}
    let rawEnd = null;        // 'done' or the read error
    let rawEndAt = null;
    const pump = (async () => {
      const reader = res.body.getReader();
      const dec = new TextDecoder();
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) { rawEnd = 'done'; rawEndAt = Date.now(); return; }
          chunks.push({ at: Date.now(), text: dec.decode(value, { stream: true }) });
        }
      } catch (err) {
        rawEnd = rawEnd || err;
        rawEndAt = rawEndAt || Date.now();
      }
    })();
    try {
      await withPage(ngx.tls, 'demo/alice/idle', async ({ page, requests }) => {
        assert.equal(await navProtocol(page), 'h2');
        const streamGets = () => requests.filter((r) => r.method === 'GET' && new URL(r.url).pathname === path).length;
        await streamOneReply(page, 'idle');  // some traffic first, then silence
        await pollUntil(() => chunks.some((c) => /event: run\.completed\n/.test(c.text)), T_UI,
          'the Node reader to see run.completed');
        // The page's connection pill: record every change of its state.
        await page.evaluate(() => {
          const pill = document.getElementById('conn');
          window.__connStates = [];
          new MutationObserver(() => window.__connStates.push(pill.dataset.state))
            .observe(pill, { attributes: true, attributeFilter: ['data-state'] });
        });
        const opens = streamGets();
        const idleFrom = Date.now();
        const idleChunk = chunks.length;

        await new Promise((r) => setTimeout(r, IDLE_MS));  // nothing may happen during this wait

        // What came to the Node reader while idle, and its silences (ms).
        const idle = chunks.slice(idleChunk);
        const text = idle.map((c) => c.text).join('');
        const times = [idleFrom, ...idle.map((c) => c.at), rawEndAt ?? Date.now()];
        const gaps = times.slice(1).map((t, i) => t - times[i]);
        const diag = '\n(Node reader through nginx: end ' + (rawEnd ? String(rawEnd) + ' ' + (rawEndAt - idleFrom) +
          ' ms into the idle time' : 'none') + ', silences until then ' +
          JSON.stringify(gaps) + ' ms, text ' + JSON.stringify(text) + ';\nnginx access log:\n' + ngx.accessLog() +
          'nginx error log:\n' + ngx.errorLog() + ')';
        t.diagnostic('idle through nginx: silences ' + JSON.stringify(gaps) + ' ms');

        assert.deepEqual(await page.evaluate(() => window.__connStates), [],
          'the page\'s stream state changed (its EventSource errored and reconnected)' + diag);
        assert.equal(await page.evaluate(() => document.getElementById('conn').dataset.state), 'live');
        assert.equal(streamGets(), opens, 'the page did not reopen its EventSource');
        assert.deepEqual(accessLines(ngx, /^GET \/apps\//), [],
          'no stream request ended at nginx (it logs a request when it ends)' + diag);
        assert.doesNotMatch(ngx.errorLog(), /upstream timed out/);
        assert.equal(rawEnd, null, 'the Node reader\'s stream is still open' + diag);
        // Heartbeats only, and no silence longer than the heartbeat (0.75 s
        // of slack for timers on a busy machine; a silence of the read
        // timeout, 5 s, would have cut the stream).
        assert.match(text, /^(: keepalive\n\n?)+$/, 'only heartbeats while idle' + diag);
        const beats = (text.match(/: keepalive\n/g) || []).length;
        assert.ok(beats >= Math.floor(IDLE_MS / 1000 / HEARTBEAT_S) - 1, beats + ' heartbeats in ' + IDLE_MS + ' ms' + diag);
        assert.ok(Math.max(...gaps) <= HEARTBEAT_S * 1000 + 750,
          'a silence longer than --heartbeat ' + HEARTBEAT_S + 's (issue 12 (c))' + diag);
        await screenshot(page, 'proxy-idle-12s');
      });
    } finally {
      ac.abort();
      await pump;
    }
  }));

test('without `proxy_set_header Host $http_host` every POST from the console is 403 origin_not_allowed',
  { timeout: TEST_TIMEOUT }, () => withProxy([], async (rc, ngx) => {
    await withPage(ngx.noHost, 'demo/alice/nohost', async ({ page }) => {
      const answer = page.waitForResponse((r) => r.request().method() === 'POST', { timeout: T_UI });
      await sendMessage(page, 'hello');
      const res = await answer;
      assert.equal(res.status(), 403);
      assert.equal((await res.json()).error.code, 'origin_not_allowed');
      await screenshot(page, 'proxy-no-host-403');
    });
    // runcast saw Host 127.0.0.1:<its own port> while the page's Origin is
    // nginx's; the tests above make the same POST through the configured
    // ports (Host $http_host) and get 202.
    assert.deepEqual(accessLines(ngx, /^POST /), ['POST /apps/demo/users/alice/sessions/nohost/run HTTP/1.1 403 403']);
  }));
