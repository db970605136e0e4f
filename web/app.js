/* runcast console: chat with the agent through runcast and watch it work.
 *
 * Plain browser JavaScript, no build step, nothing loaded from elsewhere (the
 * page's Content-Security-Policy allows only this origin). Two halves:
 *
 * - Chat: one session at a time (app/user/session, kept in the URL's hash).
 *   Its event stream is read with EventSource; the transcript is a list of
 *   runs built only from the stream's events, so what a tab shows is what
 *   runcast published. The transcript and the last event id are kept in
 *   sessionStorage: a reload restores them and reopens the stream right after
 *   that id, so nothing is shown twice and nothing is lost.
 * - Operations: /task-status?all=1 and /metrics polled every 2 s: gauges, runs
 *   by outcome, the sessions table, and the start delay (p50/p99 of
 *   runcast_task_execution_delay_seconds over a sliding 10 s window) charted
 *   over the last five minutes.
 *
 * With --auth jwt the token (pasted once, kept in sessionStorage, so for this
 * tab only) goes out as "Authorization: Bearer" and, on the stream, which
 * EventSource cannot give headers, as ?access_token=.
 */
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);

  /* ---- small helpers ---------------------------------------------------- */

  const PARAM_RE = /^[A-Za-z0-9_.-]{1,128}$/;
  const ACTIVE = new Set(['sending', 'queued', 'running']);
  const MAX_ITEMS = 100;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }

  function storageGet(area, key) {
    try { return area.getItem(key); } catch (err) { return null; }
  }
  function storageSet(area, key, value) {
    try { area.setItem(key, value); } catch (err) { /* full or disabled: the page still works */ }
  }
  function storageDel(area, key) {
    try { area.removeItem(key); } catch (err) { /* ignore */ }
  }

  function randomId() {
    const bytes = new Uint8Array(4);
    crypto.getRandomValues(bytes);
    return 's-' + Array.from(bytes, (b) => b.toString(36).padStart(2, '0')).join('').slice(0, 7);
  }

  function fmtMs(ms) {
    if (ms === null || ms === undefined || !isFinite(ms)) return '–';
    if (ms < 1) return ms.toFixed(2) + ' ms';
    if (ms < 10) return ms.toFixed(1) + ' ms';
    if (ms < 1000) return Math.round(ms) + ' ms';
    if (ms < 60000) return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + ' s';
    const m = Math.floor(ms / 60000);
    return m + ' m ' + Math.round((ms % 60000) / 1000) + ' s';
  }

  function fmtAge(seconds) {
    if (seconds === null || !isFinite(seconds)) return '–';
    seconds = Math.max(0, seconds);
    if (seconds < 60) return Math.floor(seconds) + 's';
    if (seconds < 3600) return Math.floor(seconds / 60) + 'm ' + Math.floor(seconds % 60) + 's';
    return Math.floor(seconds / 3600) + 'h ' + Math.floor((seconds % 3600) / 60) + 'm';
  }

  function fmtSeconds(s) {
    return s === null || s === undefined ? '–' : fmtMs(s * 1000);
  }

  /* ---- access token ------------------------------------------------------ */

  const TOKEN_KEY = 'runcast.token';
  const auth = {
    token: storageGet(sessionStorage, TOKEN_KEY) || '',
    headers(extra) {
      const h = Object.assign({}, extra || {});
      if (this.token) h.Authorization = 'Bearer ' + this.token;
      return h;
    },
    set(token) {
      this.token = token.trim();
      if (this.token) storageSet(sessionStorage, TOKEN_KEY, this.token);
      else storageDel(sessionStorage, TOKEN_KEY);
      $('token-toggle').textContent = this.token ? 'Token ✓' : 'Token';
    },
  };

  /* Turns a failed answer into a sentence a person can act on. */
  function describeFailure(what, status, error) {
    const detail = error && (error.message || error.code) ? ': ' + (error.message || error.code) : '';
    if (status === 0) return what + ' failed: runcast cannot be reached (is it running?)';
    if (status === 401) {
      return what + ' was refused (401 Unauthorized' + detail + '). This runcast needs an access token: ' +
        (auth.token ? 'the one given was not accepted (expired or invalid).' : 'paste one under "Token".');
    }
    if (status === 403 && error && error.code === 'origin_not_allowed') {
      return what + ' was refused (403 origin_not_allowed): runcast does not accept requests from this ' +
        'page\'s origin (' + location.origin + '). Behind a proxy, pass the Host header on ' +
        '(nginx: proxy_set_header Host $http_host); or list the origin in --allow-origin.';
    }
    if (status === 421) {
      return what + ' was refused (421 Misdirected Request' + detail + '): runcast does not serve the ' +
        'host name ' + location.host + '. List it in --allow-host.';
    }
    if (status === 403) {
      return what + ' was refused (403 Forbidden' + detail + '). The token is valid but not allowed here' +
        ' (another user\'s session, or an admin-only page).';
    }
    return what + ' failed (' + status + (error && error.code ? ' ' + error.code : '') + detail + ')';
  }

  /* fetch that never throws: {status, ok, data, error}. status 0 is a network
   * failure. JSON bodies are parsed; an error body's {"error": {...}} is in
   * error. */
  async function request(method, path, body) {
    const init = { method, headers: auth.headers(), cache: 'no-store' };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (err) {
      return { status: 0, ok: false, data: null, text: '', error: { message: String(err.message || err) } };
    }
    const text = await res.text().catch(() => '');
    let data = null;
    if ((res.headers.get('Content-Type') || '').includes('json')) {
      try { data = JSON.parse(text); } catch (err) { data = null; }
    }
    const error = !res.ok ? ((data && data.error) || { message: text.slice(0, 200) }) : null;
    return { status: res.status, ok: res.ok, data, text, error };
  }

  /* ---- banner ------------------------------------------------------------ */

  function showBanner(text, kind) {
    $('banner-text').textContent = text;
    $('banner').classList.toggle('info', kind === 'info');
    $('banner').hidden = false;
    if (/\b401\b/.test(text)) openTokenBar();
  }
  function hideBanner() { $('banner').hidden = true; }

  function openTokenBar() {
    $('token-bar').hidden = false;
    $('token-toggle').setAttribute('aria-expanded', 'true');
  }

  /* ---- the chat session's state ----------------------------------------- */

  /* S: the open session. items: runs and notices in the order first seen.
   * A run: {kind:'run', id, message, state, position, blocks, agentEvents,
   * timeline, result, t0}. lastEventId: the id of the last event applied. */
  let S = null;
  let stream = null;           // the EventSource
  let retryTimer = 0;
  let retryDelay = 2000;
  let rebuilding = null;       // run ids already cleared since a stream.reset
  let saveTimer = 0;

  function stateKey(app, user, session) {
    return 'runcast.state:' + app + '/' + user + '/' + session;
  }

  function loadState(app, user, session) {
    const fresh = { app, user, session, items: [], lastEventId: '', streamRun: null, closed: false };
    const raw = storageGet(sessionStorage, stateKey(app, user, session));
    if (!raw) return fresh;
    try {
      const saved = JSON.parse(raw);
      if (saved && saved.v === 1 && Array.isArray(saved.items)) {
        return Object.assign(fresh, {
          items: saved.items, lastEventId: saved.lastEventId || '', streamRun: saved.streamRun || null,
        });
      }
    } catch (err) { /* a corrupt entry is dropped */ }
    return fresh;
  }

  /* The transcript and lastEventId are saved together, so a restored tab
   * resumes exactly after the last event it had shown. */
  function saveNow() {
    clearTimeout(saveTimer);
    saveTimer = 0;
    if (!S) return;
    const items = S.items.filter((it) => it.kind !== 'run' || it.state !== 'sending').slice(-MAX_ITEMS);
    storageSet(sessionStorage, stateKey(S.app, S.user, S.session), JSON.stringify({
      v: 1, items, lastEventId: S.lastEventId, streamRun: S.streamRun,
    }));
  }
  function saveSoon() {
    if (!saveTimer) saveTimer = setTimeout(saveNow, 300);
  }

  function findRun(id) {
    for (let i = S.items.length - 1; i >= 0; i--) {
      const it = S.items[i];
      if (it.kind === 'run' && it.id === id) return it;
    }
    return null;
  }

  function newRun(id, message) {
    return {
      kind: 'run', id, message: message || null, state: null, position: null, blocks: [],
      agentEvents: 0, timeline: [], result: null, t0: Date.now(), endedAt: null,
    };
  }

  function getRun(id) {
    let run = findRun(id);
    if (!run) {
      run = newRun(id, null);
      S.items.push(run);
      trimItems();
    }
    if (rebuilding && !rebuilding.has(id)) {
      /* The stream was reset and replays this run from its start: rebuild it
       * from what comes now instead of appending to what was shown. */
      rebuilding.add(id);
      Object.assign(run, { state: null, position: null, blocks: [], agentEvents: 0, timeline: [], result: null });
    }
    return run;
  }

  function trimItems() {
    while (S.items.length > MAX_ITEMS) {
      const gone = S.items.shift();
      const node = gone.kind === 'run' ? runNodes.get(gone.id) : null;
      if (node) { node.remove(); runNodes.delete(gone.id); }
    }
  }

  function addNotice(text, kindClass) {
    S.items.push({ kind: 'notice', text, cls: kindClass || '', at: Date.now() });
    trimItems();
    renderAll();
    saveSoon();
  }

  /* at: when it happened (ms since the epoch); now when not given. */
  function step(run, label, at) {
    run.timeline.push({ label, t: (at || Date.now()) - run.t0 });
  }

  /* run.queued and run.started carry the server's times (Unix seconds): a
   * run replayed or joined late then shows its true age. */
  function takeServerTimes(run, d) {
    if (typeof d.created_at === 'number' && d.created_at > 0) run.t0 = d.created_at * 1000;
  }

  function latestRun() {
    for (let i = S.items.length - 1; i >= 0; i--) {
      if (S.items[i].kind === 'run') return S.items[i];
    }
    return null;
  }

  /* ---- applying stream events -------------------------------------------- */

  /* ADK Event → text or tool blocks. partial chunks of one author are appended
   * to one block; the aggregated (non-partial) event replaces that block. */
  function applyAgentEvent(run, ev) {
    run.agentEvents++;
    if (run.agentEvents === 1) step(run, 'first event');
    const author = typeof ev.author === 'string' ? ev.author : '';
    const parts = ev.content && Array.isArray(ev.content.parts) ? ev.content.parts : [];
    const partial = ev.partial === true;
    let text = '';
    for (const p of parts) {
      if (p && typeof p.text === 'string' && !p.thought) text += p.text;
      if (p && p.functionCall) {
        run.blocks.push({ kind: 'tool', author, text: '→ ' + (p.functionCall.name || 'tool') + '(' +
          JSON.stringify(p.functionCall.args || {}).slice(0, 300) + ')' });
      }
      if (p && p.functionResponse) {
        run.blocks.push({ kind: 'tool', author, text: '← ' + (p.functionResponse.name || 'tool') + ': ' +
          JSON.stringify(p.functionResponse.response || {}).slice(0, 300) });
      }
    }
    if (!text) return;
    const last = run.blocks[run.blocks.length - 1];
    const open = last && last.kind === 'text' && last.partial && last.author === author;
    if (partial) {
      if (open) last.text += text;
      else run.blocks.push({ kind: 'text', author, text, partial: true });
    } else if (open) {
      last.text = text;
      last.partial = false;
    } else {
      run.blocks.push({ kind: 'text', author, text, partial: false });
    }
  }

  function onEvent(type, e) {
    if (!S) return;
    if (e.lastEventId) S.lastEventId = e.lastEventId;
    let d = {};
    try { d = JSON.parse(e.data); } catch (err) { d = {}; }
    if (d === null || typeof d !== 'object') d = {};

    if (type === 'stream.reset') {
      rebuilding = new Set();
      addNotice('Stream reset (' + (d.reason || 'unknown reason') + '): runcast could not continue ' +
        'exactly where this tab left off, so it replays what it still has. Runs below are rebuilt from it.', 'warn');
      return;
    }
    if (type === 'session.closed') {
      addNotice('Session closed (' + (d.reason || 'closed') + '). Sending a message starts it again.', 'warn');
      S.closed = true;
      S.lastEventId = '';
      S.streamRun = null;
      disconnect('closed');
      saveNow();
      return;
    }
    if (type === 'agent.event') {
      const run = S.streamRun ? getRun(S.streamRun) : null;
      if (run) applyAgentEvent(run, d);
      markDirty(run);
      return;
    }
    if (!d.run_id) return;
    const run = getRun(d.run_id);
    switch (type) {
    case 'run.queued':
      S.streamRun = run.id;
      run.state = 'queued';
      run.position = d.position;
      takeServerTimes(run, d);
      step(run, 'queued' + (d.position ? ' #' + d.position : ''), run.t0);
      break;
    case 'run.started':
      S.streamRun = run.id;
      run.state = 'running';
      takeServerTimes(run, d);
      step(run, 'started', typeof d.started_at === 'number' ? d.started_at * 1000 : undefined);
      break;
    case 'run.completed':
    case 'run.failed':
    case 'run.cancelled':
    case 'run.timed_out':
    case 'run.superseded':
      run.state = type.slice(4);
      run.result = d;
      run.endedAt = Date.now();
      step(run, run.state.replace('_', ' ') + (d.duration_ms !== undefined ? ' in ' + fmtMs(d.duration_ms) : ''));
      break;
    default:
      return;
    }
    markDirty(run);
  }

  /* ---- rendering the transcript ------------------------------------------ */

  const runNodes = new Map();  // run id → its <article>
  const noticeNodes = new WeakMap(); // notice item → its <div>
  const dirty = new Set();
  let renderScheduled = false;

  function markDirty(run) {
    if (run) dirty.add(run);
    saveSoon();
    if (renderScheduled) return;
    renderScheduled = true;
    /* rAF when visible (one paint per frame however fast events come);
     * a timer covers hidden tabs, where rAF does not run. */
    const flush = () => {
      if (!renderScheduled) return;
      renderScheduled = false;
      const stick = nearBottom();
      /* A run may have left the transcript since it was marked (a pending
       * POST merged into the run the stream announced first). */
      for (const r of dirty) if (S && S.items.includes(r)) renderRun(r);
      dirty.clear();
      updateControls();
      if (stick) scrollToBottom();
    };
    requestAnimationFrame(flush);
    setTimeout(flush, 120);
  }

  function nearBottom() {
    const t = $('transcript');
    return t.scrollHeight - t.scrollTop - t.clientHeight < 60;
  }
  function scrollToBottom() {
    const t = $('transcript');
    t.scrollTop = t.scrollHeight;
  }

  function badgeText(run) {
    switch (run.state) {
    case 'sending': return 'sending';
    case 'queued': return run.position ? 'queued #' + run.position : 'queued';
    case 'running': return 'running';
    case 'timed_out': return 'timed out';
    case null: case undefined: return 'registered';
    default: return run.state;
    }
  }

  function metaText(run) {
    const r = run.result || {};
    switch (run.state) {
    case 'running': case 'queued':
      return 'for ' + fmtMs(Date.now() - run.t0);
    case 'completed':
      return fmtMs(r.duration_ms) + ' · ' + (r.events !== undefined ? r.events : run.agentEvents) + ' events';
    case 'cancelled':
      return {
        client_request: 'by request', session_deleted: 'the session was deleted',
        session_expired: 'the session expired', shutdown: 'runcast shut down',
      }[r.reason] || (r.reason || '');
    case 'timed_out':
      return {
        connect: 'connecting to the agent', first_event: 'waiting for the first event',
        idle: 'the agent went quiet', total: 'the run took too long',
      }[r.phase] || (r.phase || '');
    case 'superseded':
      return 'a newer run replaced it' + (r.by ? ' (' + r.by + ')' : '');
    case 'sending':
      return 'posting the message…';
    default:
      return '';
    }
  }

  function renderRun(run) {
    let node = runNodes.get(run.id || run.localId);
    if (!node) {
      node = buildRunNode(run);
      runNodes.set(run.id || run.localId, node);
      const before = nextNodeAfter(run);
      $('transcript').insertBefore(node, before);
      $('empty').hidden = true;
    }
    const state = run.state || 'registered';
    node.className = 'run s-' + state;
    node.dataset.state = state;
    if (run.id) node.dataset.runId = run.id;
    node.dataset.agentEvents = String(run.agentEvents);

    const user = node.querySelector('.user-msg');
    user.hidden = !run.message;
    user.textContent = run.message || '';
    node.querySelector('.badge').textContent = badgeText(run);
    node.querySelector('.run-meta').textContent = metaText(run);
    node.querySelector('.run-id').textContent = run.id || '';

    const reply = node.querySelector('.reply');
    reply.replaceChildren();
    if (run.blocks.length === 0) {
      const waiting = {
        sending: 'sending…', queued: 'waiting for a free slot…', running: 'waiting for the agent…',
      }[run.state];
      if (waiting) reply.appendChild(el('span', 'waiting', waiting));
      else if (run.state === 'completed') reply.appendChild(el('span', 'waiting', '(no text in the reply)'));
    }
    let lastAuthor = null;
    for (const b of run.blocks) {
      const div = el('div', 'reply-block' + (b.kind === 'tool' ? ' reply-tool' : ''));
      if (b.kind === 'text') div.dataset.partial = String(!!b.partial);
      if (b.author && lastAuthor !== null && b.author !== lastAuthor) div.appendChild(el('span', 'reply-author', b.author));
      lastAuthor = b.author || lastAuthor;
      div.appendChild(document.createTextNode(b.text));
      reply.appendChild(div);
    }

    const errorBox = node.querySelector('.run-error');
    const r = run.result || {};
    if (run.state === 'failed' || run.sendError) {
      errorBox.hidden = false;
      errorBox.replaceChildren();
      if (run.sendError) {
        errorBox.textContent = run.sendError;
      } else {
        errorBox.appendChild(el('code', null, r.code || 'failed'));
        errorBox.appendChild(document.createTextNode(
          (r.status ? ' (HTTP ' + r.status + ')' : '') + (r.message ? ': ' + r.message : '')));
      }
    } else {
      errorBox.hidden = true;
    }

    const tl = node.querySelector('.timeline');
    tl.replaceChildren();
    for (const s of run.timeline) {
      const li = el('li', null, s.label);
      li.title = '+' + fmtMs(s.t) + ' after the run was registered';
      tl.appendChild(li);
    }
  }

  function buildRunNode(run) {
    const node = el('article', 'run');
    node.appendChild(el('div', 'user-msg'));
    const agent = el('div', 'agent');
    const head = el('div', 'run-head');
    head.appendChild(el('span', 'badge'));
    head.appendChild(el('span', 'run-meta'));
    head.appendChild(el('span', 'run-id'));
    agent.appendChild(head);
    agent.appendChild(el('div', 'reply'));
    const err = el('div', 'run-error');
    err.hidden = true;
    agent.appendChild(err);
    agent.appendChild(el('ol', 'timeline'));
    node.appendChild(agent);
    return node;
  }

  /* The DOM node of the first item after this one, so a run rendered late
   * still lands in order. */
  function nextNodeAfter(item) {
    const i = S.items.indexOf(item);
    for (let j = i + 1; j < S.items.length; j++) {
      const it = S.items[j];
      const n = it.kind === 'run' ? runNodes.get(it.id || it.localId) : noticeNodes.get(it);
      if (n && n.parentNode) return n;
    }
    return null;
  }

  function renderAll() {
    const t = $('transcript');
    const stick = nearBottom();
    for (const node of runNodes.values()) node.remove();
    runNodes.clear();
    t.querySelectorAll('.notice').forEach((n) => n.remove());
    for (const it of S.items) {
      if (it.kind === 'run') {
        renderRun(it);
      } else {
        let node = noticeNodes.get(it);
        if (!node) {
          node = el('div', 'notice ' + (it.cls || ''), it.text);
          noticeNodes.set(it, node);
        }
        t.appendChild(node);
      }
    }
    $('empty').hidden = S.items.length > 0;
    updateControls();
    if (stick) scrollToBottom();
  }

  function updateControls() {
    const last = S ? latestRun() : null;
    const active = !!(last && (last.state === 'queued' || last.state === 'running'));
    $('cancel').disabled = !active || cancelling;
  }

  /* Elapsed times of active runs tick without any event. */
  setInterval(() => {
    if (!S) return;
    for (const it of S.items) {
      if (it.kind === 'run' && ACTIVE.has(it.state)) {
        const node = runNodes.get(it.id || it.localId);
        if (node) node.querySelector('.run-meta').textContent = metaText(it);
      }
    }
  }, 250);

  /* ---- the stream --------------------------------------------------------- */

  function sessionPath() {
    return '/apps/' + S.app + '/users/' + S.user + '/sessions/' + S.session;
  }

  function setConn(state, text) {
    const pill = $('conn');
    pill.className = 'pill pill-' + state;
    pill.dataset.state = state;
    pill.textContent = text;
  }

  function disconnect(reason) {
    clearTimeout(retryTimer);
    if (stream) {
      stream.close();
      stream = null;
    }
    if (reason === 'closed') setConn('idle', 'session closed');
  }

  const STREAM_EVENTS = ['run.queued', 'run.started', 'agent.event', 'run.completed', 'run.failed',
    'run.cancelled', 'run.timed_out', 'run.superseded', 'session.closed', 'stream.reset'];

  function connect() {
    disconnect();
    const params = new URLSearchParams();
    if (S.lastEventId) params.set('last_event_id', S.lastEventId);
    if (auth.token) params.set('access_token', auth.token);
    const qs = params.toString();
    const es = new EventSource(sessionPath() + '/run' + (qs ? '?' + qs : ''));
    stream = es;
    S.closed = false;
    setConn('connecting', 'connecting…');
    es.onopen = () => {
      if (stream !== es) return;
      retryDelay = 2000;
      setConn('live', 'live');
      if (/stream/.test($('banner-text').textContent)) hideBanner();
    };
    es.onerror = () => {
      if (stream !== es) return;
      if (es.readyState === EventSource.CLOSED) {
        /* EventSource gives up on an HTTP error without saying which: ask. */
        setConn('error', 'stream refused');
        diagnoseStream(es);
      } else {
        setConn('connecting', 'reconnecting…');
      }
    };
    for (const type of STREAM_EVENTS) {
      es.addEventListener(type, (e) => { if (stream === es) onEvent(type, e); });
    }
  }

  async function diagnoseStream(es) {
    const ctrl = new AbortController();
    let status = 0, error = null;
    try {
      const res = await fetch(sessionPath() + '/run?from=live', {
        headers: auth.headers(), signal: ctrl.signal, cache: 'no-store',
      });
      status = res.status;
      if (!res.ok) {
        const body = await res.json().catch(() => null);
        error = body && body.error;
      }
      ctrl.abort();
    } catch (err) {
      status = status || 0;
    }
    if (stream !== es) return;
    if (status === 200) {
      showBanner('The event stream closed unexpectedly; retrying in ' + Math.round(retryDelay / 1000) + ' s.');
    } else {
      showBanner(describeFailure('The event stream', status, error) +
        ' Retrying in ' + Math.round(retryDelay / 1000) + ' s.');
    }
    retryTimer = setTimeout(() => { if (stream === es) connect(); }, retryDelay);
    retryDelay = Math.min(retryDelay * 2, 30000);
  }

  /* ---- sending and cancelling -------------------------------------------- */

  let localSeq = 0;
  let cancelling = false;

  async function send(text) {
    if (!S || !text.trim()) return;
    if (S.closed || !stream) connect();
    const pending = newRun(null, text);
    /* Unique across reloads too: a run whose POST failed is saved with it. */
    pending.localId = 'local-' + Date.now().toString(36) + '-' + (++localSeq);
    pending.state = 'sending';
    S.items.push(pending);
    trimItems();
    markDirty(pending);
    scrollToBottom();
    const res = await request('POST', sessionPath() + '/run', { message: text });
    if (!res.ok || !res.data || !res.data.run_id) {
      pending.state = 'failed';
      pending.sendError = describeFailure('Sending the message', res.status, res.error);
      markDirty(pending);
      if (res.status === 401 || res.status === 403) showBanner(pending.sendError);
      return;
    }
    const id = res.data.run_id;
    const existing = findRun(id);
    const node = runNodes.get(pending.localId);
    runNodes.delete(pending.localId);
    if (existing) {
      /* The stream was faster than the POST's answer: the run is there.
       * If it has no node yet, it takes the pending one, in the same place,
       * so the transcript never loses a line in between. */
      existing.message = text;
      S.items.splice(S.items.indexOf(pending), 1);
      dirty.delete(pending);
      if (node && !runNodes.has(id)) runNodes.set(id, node);
      else if (node) node.remove();
      markDirty(existing);
    } else {
      pending.id = id;
      delete pending.localId;
      pending.state = res.data.status === 'queued' ? 'queued' : 'running';
      if (node) runNodes.set(id, node);
      markDirty(pending);
    }
  }

  async function cancelRun() {
    if (!S) return;
    cancelling = true;
    updateControls();
    const res = await request('DELETE', sessionPath() + '/run');
    cancelling = false;
    updateControls();
    if (res.status === 404 && res.error && res.error.code === 'no_active_run') {
      addNotice('Nothing to cancel: the run had already ended.');
    } else if (!res.ok) {
      showBanner(describeFailure('Cancelling the run', res.status, res.error));
    }
  }

  /* ---- choosing the session ---------------------------------------------- */

  function openSession(app, user, session) {
    if (S) saveNow();
    disconnect();
    rebuilding = null;
    for (const node of runNodes.values()) node.remove();
    runNodes.clear();
    S = loadState(app, user, session);
    $('app').value = app;
    $('user').value = user;
    $('session').value = session;
    storageSet(localStorage, 'runcast.app', app);
    storageSet(localStorage, 'runcast.user', user);
    const hash = '#' + app + '/' + user + '/' + session;
    if (location.hash !== hash) history.replaceState(null, '', hash);
    $('session-note').textContent = sessionPath().slice(1);
    renderAll();
    scrollToBottom();
    connect();
    markCurrentRow();
  }

  function sessionFromHash() {
    const parts = decodeURIComponent(location.hash.slice(1)).split('/');
    if (parts.length === 3 && parts.every((p) => PARAM_RE.test(p))) return parts;
    return null;
  }

  function openFromForm() {
    const app = $('app').value.trim(), user = $('user').value.trim(), session = $('session').value.trim();
    if (![app, user, session].every((p) => PARAM_RE.test(p))) {
      showBanner('app, user and session must each be 1 to 128 characters of A-Z a-z 0-9 _ . -');
      return;
    }
    hideBanner();
    openSession(app, user, session);
  }

  /* ---- operations panel --------------------------------------------------- */

  const WINDOW_MS = 10000;     // quantiles over the last 10 s of runs
  const HISTORY_MS = 5 * 60000;
  const POLL_MS = 2000;
  const snapshots = [];        // {t, le: [bounds], counts: [cumulative]}
  const points = [];           // {t, p50, p99} in seconds, null when no run
  let pollTimer = 0;

  /* Prometheus text → {name: [{labels, value}]}. */
  function parseMetrics(text) {
    const out = {};
    for (const line of text.split('\n')) {
      if (!line || line[0] === '#') continue;
      const m = /^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
      if (!m) continue;
      const labels = {};
      if (m[2]) {
        const re = /([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
        let l;
        while ((l = re.exec(m[2])) !== null) labels[l[1]] = l[2];
      }
      (out[m[1]] = out[m[1]] || []).push({ labels, value: parseFloat(m[3]) });
    }
    return out;
  }

  function gauge(metrics, name) {
    const s = metrics[name];
    return s && s.length ? s[0].value : null;
  }

  /* histogram_quantile over bucket deltas: linear inside the bucket that
   * holds the q-th observation; the +Inf bucket answers its lower bound. */
  function quantile(q, le, counts) {
    const total = counts[counts.length - 1];
    if (!(total > 0)) return null;
    const rank = q * total;
    for (let i = 0; i < le.length; i++) {
      if (counts[i] >= rank) {
        if (!isFinite(le[i])) return i > 0 ? le[i - 1] : null;
        const lower = i > 0 ? le[i - 1] : 0;
        const below = i > 0 ? counts[i - 1] : 0;
        const inBucket = counts[i] - below;
        return inBucket > 0 ? lower + (le[i] - lower) * ((rank - below) / inBucket) : le[i];
      }
    }
    return null;
  }

  function recordDelay(metrics, now) {
    const series = (metrics.runcast_task_execution_delay_seconds_bucket || [])
      .map((s) => ({ le: s.labels.le === '+Inf' ? Infinity : parseFloat(s.labels.le), n: s.value }))
      .sort((a, b) => a.le - b.le);
    if (!series.length) return;
    const snap = { t: now, le: series.map((s) => s.le), counts: series.map((s) => s.n) };
    let base = null;
    for (const s of snapshots) {
      if (s.t <= now - WINDOW_MS + 500) base = s;
    }
    if (!base && snapshots.length) base = snapshots[0];
    snapshots.push(snap);
    while (snapshots.length > 2 && snapshots[1].t <= now - WINDOW_MS - 5000) snapshots.shift();
    if (!base || base.counts.length !== snap.counts.length) return;
    let delta = snap.counts.map((c, i) => c - base.counts[i]);
    if (delta.some((d) => d < 0)) delta = snap.counts.slice(); // runcast restarted
    points.push({ t: now, p50: quantile(0.5, snap.le, delta), p99: quantile(0.99, snap.le, delta) });
    while (points.length && points[0].t < now - HISTORY_MS) points.shift();
  }

  function renderOps(metrics, status, now) {
    const set = (id, v) => { $(id).textContent = v === null || v === undefined ? '–' : String(v); };
    set('g-active', gauge(metrics, 'runcast_runs_active'));
    set('g-queued', gauge(metrics, 'runcast_runs_queued'));
    set('g-sessions', gauge(metrics, 'runcast_sessions'));
    set('g-subscribers', gauge(metrics, 'runcast_subscribers'));
    for (const s of metrics.runcast_runs_total || []) {
      const n = document.querySelector('.o-n[data-outcome="' + s.labels.outcome + '"]');
      if (n) n.textContent = String(s.value);
    }
    const last = points[points.length - 1];
    $('p50-now').textContent = last && last.p50 !== null ? fmtSeconds(last.p50) : 'no runs';
    $('p99-now').textContent = last && last.p99 !== null ? fmtSeconds(last.p99) : 'no runs';
    drawChart(now);
    if (status) renderSessions(status, now);
  }

  function renderSessions(status, now) {
    const body = $('sessions-body');
    const list = Array.isArray(status.sessions) ? status.sessions : [];
    const total = status.sessions_total !== undefined ? status.sessions_total : list.length;
    $('sessions-count').textContent = list.length < total ? 'showing ' + list.length + ' of ' + total : String(total);
    const old = new Map();
    for (const tr of body.querySelectorAll('tr[data-session]')) old.set(tr.dataset.session, tr);
    body.querySelectorAll('tr.placeholder').forEach((tr) => tr.remove());
    if (!list.length) {
      for (const tr of old.values()) tr.remove();
      const tr = el('tr', 'placeholder');
      const td = el('td', null, 'no sessions yet');
      td.colSpan = 5;
      tr.appendChild(td);
      body.appendChild(tr);
      return;
    }
    const nowS = now / 1000;
    let prev = null;
    for (const s of list) {
      const key = (s.app || '?') + '/' + (s.user || '?') + '/' + s.session_id;
      let tr = old.get(key);
      old.delete(key);
      if (!tr) {
        tr = el('tr');
        tr.dataset.session = key;
        const name = el('td');
        name.title = key;
        name.appendChild(el('span', 'sess-name', s.session_id));
        name.appendChild(el('span', 'sess-path', ' ' + (s.app || '?') + '/' + (s.user || '?')));
        tr.appendChild(name);
        const st = el('td');
        st.appendChild(el('span', 'state'));
        tr.appendChild(st);
        tr.appendChild(el('td', 'num'));
        tr.appendChild(el('td', 'num'));
        tr.appendChild(el('td', 'num col-streams'));
        tr.tabIndex = 0;
        tr.title = 'Open this session in the chat';
      }
      const state = s.status || 'idle';
      tr.dataset.state = state;
      const badge = tr.children[1].firstChild;
      badge.className = 'state s-' + state + (s.has_task ? ' active' : '');
      badge.textContent = state.replace('_', ' ');
      let age;
      if (s.has_task) age = fmtAge(nowS - (s.created_at || nowS));
      else if (s.ended_at) age = fmtAge(nowS - s.ended_at) + ' ago';
      else age = '–';
      tr.children[2].textContent = age;
      tr.children[2].title = s.has_task ? 'since the run was registered' : 'since the last run ended';
      tr.children[3].textContent = String(s.events);
      tr.children[4].textContent = String(s.subscribers);
      const want = prev ? prev.nextSibling : body.firstChild;
      if (want !== tr) body.insertBefore(tr, want);
      prev = tr;
    }
    for (const tr of old.values()) tr.remove();
    markCurrentRow();
  }

  function markCurrentRow() {
    if (!S) return;
    const key = S.app + '/' + S.user + '/' + S.session;
    for (const tr of $('sessions-body').querySelectorAll('tr[data-session]')) {
      tr.classList.toggle('current', tr.dataset.session === key);
    }
  }

  /* 10^d seconds as a short label: 100µs, 1ms, 10ms, 1s... */
  function axisLabel(d) {
    if (d < -3) return Math.pow(10, d + 6).toFixed(0) + 'µs';
    if (d < 0) return Math.pow(10, d + 3).toFixed(0) + 'ms';
    return Math.pow(10, d).toFixed(0) + 's';
  }

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || '#888';
  }

  /* Log-scale chart of p50/p99 over the last five minutes. */
  function drawChart(now) {
    const canvas = $('chart');
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (!w || !h) return;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const pad = { l: 52, r: 10, t: 10, b: 20 };
    const pw = w - pad.l - pad.r, ph = h - pad.t - pad.b;

    const values = [];
    for (const p of points) {
      if (p.p50 > 0) values.push(p.p50);
      if (p.p99 > 0) values.push(p.p99);
    }
    let lo = -4, hi = -1;   // 0.1 ms .. 100 ms unless the data says otherwise
    if (values.length) {
      lo = Math.min(lo, Math.floor(Math.log10(Math.min(...values))));
      hi = Math.max(Math.ceil(Math.log10(Math.max(...values))), lo + 2);
      lo = Math.max(lo, hi - 6);
    }
    const y = (v) => pad.t + ph - ((Math.log10(Math.max(v, Math.pow(10, lo))) - lo) / (hi - lo)) * ph;
    const x = (t) => pad.l + pw - ((now - t) / HISTORY_MS) * pw;

    ctx.font = '11px ' + cssVar('--sans');
    ctx.fillStyle = cssVar('--muted');
    ctx.strokeStyle = cssVar('--line');
    ctx.lineWidth = 1;
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    for (let d = lo; d <= hi; d++) {
      const yy = Math.round(y(Math.pow(10, d))) + 0.5;
      ctx.beginPath();
      ctx.moveTo(pad.l, yy);
      ctx.lineTo(w - pad.r, yy);
      ctx.stroke();
      ctx.fillText(axisLabel(d), pad.l - 6, yy);
    }
    ctx.textAlign = 'center';
    ctx.textBaseline = 'alphabetic';
    for (let m = 5; m >= 0; m--) {
      ctx.fillText(m === 0 ? 'now' : '-' + m + 'm', Math.min(Math.max(x(now - m * 60000), pad.l + 10), w - pad.r - 12), h - 5);
    }

    for (const [key, color] of [['p99', cssVar('--p99')], ['p50', cssVar('--p50')]]) {
      ctx.strokeStyle = color;
      ctx.fillStyle = color;
      ctx.lineWidth = 2;
      let drawing = false;
      ctx.beginPath();
      for (let i = 0; i < points.length; i++) {
        const p = points[i];
        const v = p[key];
        if (v === null || !(v > 0)) { drawing = false; continue; }
        const px = x(p.t), py = y(v);
        if (!drawing) ctx.moveTo(px, py); else ctx.lineTo(px, py);
        drawing = true;
        const prevNull = i === 0 || !(points[i - 1][key] > 0);
        const nextNull = i === points.length - 1 || !(points[i + 1][key] > 0);
        if (prevNull && nextNull) ctx.fillRect(px - 2, py - 2, 4, 4);
      }
      ctx.stroke();
    }
  }

  async function pollOps() {
    clearTimeout(pollTimer);
    const [status, metrics] = await Promise.all([
      request('GET', '/task-status?all=1&limit=200'),
      request('GET', '/metrics'),
    ]);
    const now = Date.now();
    const errBox = $('ops-error');
    const problems = [];
    const opsFailure = (what, res) => (res.status === 403
      ? what + ' was refused (403 Forbidden' + (res.error && res.error.message ? ': ' + res.error.message : '') +
        '). The operations panel needs an admin token.'
      : describeFailure(what, res.status, res.error));
    if (!status.ok && !metrics.ok && status.status === metrics.status) {
      problems.push(opsFailure('Reading /task-status and /metrics', status));
    } else {
      if (!status.ok) problems.push(opsFailure('Reading /task-status', status));
      if (!metrics.ok) problems.push(opsFailure('Reading /metrics', metrics));
    }
    errBox.hidden = problems.length === 0;
    errBox.textContent = problems.join(' ');
    if (problems.some((p) => /\b401\b/.test(p))) openTokenBar();
    let parsed = {};
    if (metrics.ok) {
      parsed = parseMetrics(metrics.text);
      recordDelay(parsed, now);
    }
    renderOps(parsed, status.ok ? status.data : null, now);
    $('ops-updated').textContent = problems.length ? 'update failed' :
      'updated ' + new Date(now).toLocaleTimeString();
    pollTimer = setTimeout(pollOps, document.hidden ? 5 * POLL_MS : POLL_MS);
  }

  /* ---- wiring ------------------------------------------------------------ */

  function init() {
    auth.set(auth.token);
    if (auth.token) $('token').value = auth.token;

    $('token-toggle').addEventListener('click', () => {
      const bar = $('token-bar');
      bar.hidden = !bar.hidden;
      $('token-toggle').setAttribute('aria-expanded', String(!bar.hidden));
      if (!bar.hidden) $('token').focus();
    });
    $('token-save').addEventListener('click', () => {
      auth.set($('token').value);
      hideBanner();
      $('token-bar').hidden = true;
      $('token-toggle').setAttribute('aria-expanded', 'false');
      if (S) connect();
      pollOps();
    });
    $('token').addEventListener('keydown', (e) => {
      if (e.key === 'Enter') { e.preventDefault(); $('token-save').click(); }
    });
    $('token-clear').addEventListener('click', () => {
      $('token').value = '';
      auth.set('');
      if (S) connect();
      pollOps();
    });
    $('banner-close').addEventListener('click', hideBanner);

    $('session-form').addEventListener('submit', (e) => { e.preventDefault(); openFromForm(); });
    $('new-session').addEventListener('click', () => {
      $('session').value = randomId();
      openFromForm();
    });
    $('composer').addEventListener('submit', (e) => {
      e.preventDefault();
      const text = $('message').value;
      if (!text.trim()) return;
      $('message').value = '';
      send(text);
    });
    $('message').addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        $('composer').requestSubmit();
      }
    });
    $('cancel').addEventListener('click', cancelRun);
    for (const b of document.querySelectorAll('[data-example]')) {
      b.addEventListener('click', () => {
        $('message').value = b.dataset.example;
        $('message').focus();
      });
    }
    $('sessions-body').addEventListener('click', (e) => {
      const tr = e.target.closest('tr[data-session]');
      if (!tr) return;
      const [app, user, session] = tr.dataset.session.split('/');
      if (PARAM_RE.test(app) && PARAM_RE.test(user) && PARAM_RE.test(session)) openSession(app, user, session);
    });
    $('sessions-body').addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && e.target.matches('tr[data-session]')) e.target.click();
    });
    window.addEventListener('hashchange', () => {
      const p = sessionFromHash();
      if (p && S && p.join('/') !== [S.app, S.user, S.session].join('/')) openSession(p[0], p[1], p[2]);
    });
    window.addEventListener('pagehide', saveNow);
    window.addEventListener('resize', () => drawChart(Date.now()));
    document.addEventListener('visibilitychange', () => { if (!document.hidden) pollOps(); });

    const fromHash = sessionFromHash();
    const app = fromHash ? fromHash[0] : storageGet(localStorage, 'runcast.app') || 'demo';
    const user = fromHash ? fromHash[1] : storageGet(localStorage, 'runcast.user') || 'alice';
    const session = fromHash ? fromHash[2] : randomId();
    openSession(PARAM_RE.test(app) ? app : 'demo', PARAM_RE.test(user) ? user : 'alice', session);
    pollOps();
    showDemoExamples();
  }

  /* The example chips use the demo agent's directives (!delay=, !error=…),
   * which mean nothing to another agent: shown only when /healthz says the
   * upstream is the built-in demo. */
  async function showDemoExamples() {
    const health = await request('GET', '/healthz');
    const kind = health.ok && health.data && typeof health.data.upstream === 'string' ? health.data.upstream : '';
    $('demo-examples').dataset.upstream = kind;
    $('demo-examples').hidden = kind !== 'demo';
  }

  init();
})();
