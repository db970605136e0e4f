// agui.mjs: runcast's AG-UI client. @ag-ui/client's HttpAgent (1.0.0), plus
// resume: `connectAgent()` reattaches to a thread's run after a reload or a
// dropped connection, through runcast's `GET …/agui/{threadId}`.
//
//   import { RuncastAgent } from './agui.mjs';
//
//   const agent = new RuncastAgent({
//     url: 'https://chat.example.com/apps/my_app/users/alice/agui',
//     threadId: sessionStorage.threadId,           // the runcast session
//     headers: { Authorization: 'Bearer ' + token },
//   });
//   agent.subscribe({ onMessagesChanged: ({ messages }) => render(messages) });
//
//   await agent.connectAgent();   // on page load: the thread so far, then the
//                                 // live tail of a run still going; nothing
//                                 // (and no error) when there is no such thread
//   agent.addMessage({ id: crypto.randomUUID(), role: 'user', content: 'hi' });
//   await agent.runAgent();       // POST …/agui: one run, streamed
//
// Everything else is HttpAgent's: same config (`url`, `headers`, `threadId`,
// `initialMessages`, `initialState`, `fetch`), same events and subscribers.
// `url` is runcast's `…/apps/{app}/users/{user}/agui`; the resume request is
// `GET <url>/<threadId>` with the same headers.
//
// Two things @ag-ui/client 1.0.0 gets wrong here, which this class handles:
//  - runcast answers the resume with `204 No Content` when it has nothing of
//    the thread. The library takes every 2xx for a stream and fails on the
//    missing body ("Failed to getReader() from response"); here a 204 is an
//    empty event stream, so `connectAgent()` resolves with the messages it had.
//  - When the server cuts a stream (a crash, a proxy's timeout), the
//    library's read fails, the run fails with that error (fine: `runAgent()`
//    rejects), and then its cleanup calls the body reader's `cancel()`, which
//    rejects with the same error and rethrows it where nothing catches it: an
//    unhandled rejection, which ends a Node process. Here the reader's
//    `cancel()` never rejects, for runs and resumes alike.
// Also: HttpAgent gives each `runAgent()` a fresh AbortController but not
// `connectAgent()`, so after an `abortRun()` every resume would be aborted
// before it starts; here `connectAgent()` gets a fresh one too.
//
// An ES module with no build step: it needs `@ag-ui/client` (1.0.x)
// resolvable from where it is served (a bundler, or an import map in a page).

import {
  HttpAgent, enforceOutgoingInput, runHttpRequest, transformHttpEventStream,
} from '@ag-ui/client';

export class RuncastAgent extends HttpAgent {
  /* The run: HttpAgent's run() (POST RunAgentInput to `url`), its response
   * read through a guard against the uncaught cancel() rejection. */
  run(input) {
    const response = () => this.fetch(this.url, this.requestInit(enforceOutgoingInput(input)))
      .then(quietCancel);
    return transformHttpEventStream(runHttpRequest(response), this.debugLogger);
  }

  /* The resume: GET <url>/<threadId>, read by the library's own HTTP and SSE
   * code into the same event stream as a run. A 204 is an empty stream. */
  connect(input) {
    const response = () => this.fetch(this.resumeUrl(input.threadId), this.resumeInit(input))
      .then((res) => (res.status === 204 ? emptyResponse(res) : quietCancel(res)));
    return transformHttpEventStream(runHttpRequest(response), this.debugLogger);
  }

  /* As HttpAgent.runAgent() does for runs: a fresh AbortController per
   * resume (or the caller's), so abortRun() stops this one only. */
  connectAgent(parameters, subscriber) {
    this.abortController = parameters?.abortController ?? new AbortController();
    return super.connectAgent(parameters, subscriber);
  }

  /* The resume's address: `url` (trailing slashes dropped) + '/' + thread. */
  resumeUrl(threadId) {
    return this.url.replace(/\/+$/, '') + '/' + encodeURIComponent(threadId);
  }

  /* The resume's fetch options: HttpAgent's headers, no body. Override it
   * like requestInit() to change the request. */
  resumeInit(input) {
    return {
      method: 'GET',
      headers: { ...this.headers, Accept: 'text/event-stream' },
      signal: this.abortController.signal,
    };
  }
}

/* The response as runHttpRequest reads it (ok, status, headers, text(),
 * body.getReader()), with a body reader whose cancel() resolves even when the
 * stream has failed: the library rethrows that rejection uncaught. The read
 * errors themselves still reach the run. */
function quietCancel(res) {
  if (!res.ok || !res.body) return res;
  const { body } = res;
  return {
    ok: res.ok,
    status: res.status,
    statusText: res.statusText,
    headers: res.headers,
    url: res.url,
    text: () => res.text(),
    body: {
      getReader() {
        const reader = body.getReader();
        return {
          read: () => reader.read(),
          cancel: (reason) => reader.cancel(reason).catch(() => {}),
          releaseLock: () => reader.releaseLock(),
          get closed() { return reader.closed; },
        };
      },
    },
  };
}

/* A 204 as a response whose body is already at its end. */
function emptyResponse(res) {
  return {
    ok: true,
    status: res.status,
    statusText: res.statusText,
    headers: res.headers,
    url: res.url,
    text: async () => '',
    body: {
      getReader: () => ({
        read: async () => ({ done: true, value: undefined }),
        cancel: async () => {},
        releaseLock: () => {},
        closed: Promise.resolve(),
      }),
    },
  };
}
