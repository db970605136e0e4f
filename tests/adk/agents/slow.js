/**
 * slow — offline agent that streams many chunks slowly (for cancel/supersede
 * tests).
 *
 * Default: 50 chunks, one every 200 ms (~10 s). The message text can change
 * that: the first integer followed by "chunk(s)" (or the first bare integer)
 * is the chunk count, an integer followed by "ms" is the interval, e.g.
 * "slow 30 chunks every 100ms", "slow 5".
 * Chunk i (1-based) has text `tick <i>/<n> `; the last one carries
 * finishReason STOP + usageMetadata. streaming:true -> n partial events + the
 * aggregated final; streaming:false -> one event after n*interval ms.
 * The model waits BEFORE every chunk (so the first partial arrives after one
 * interval).
 * Abort: ADK passes the run's AbortSignal; the model stops at once when it
 * fires, like a real HTTP stream would. NOTE: with adk-devtools 2.0.0 on
 * Node >= 16 the api_server never fires it on client disconnect (its
 * req.on("close") listener is attached after 'close' already happened), so a
 * disconnected run goes on to completion. Put `noabort` in the text to make
 * the model ignore the signal anyway.
 * Progress goes to the server's stderr: "[offline-model] slow: ..." lines
 * (start, every 10th chunk, abort, done).
 */
import { LlmAgent } from "@google/adk";
import { geminiChunk, log, OfflineModel, sleep, usageFor } from "../offline_model.js";

async function* slowScript(turn) {
  const t = turn.userText;
  const count =
    Number((t.match(/(\d+)\s*chunks?/) ?? [])[1] ?? (t.match(/(?<![\d.])(\d+)(?!\s*ms)(?!\d)/) ?? [])[1] ?? 50);
  const interval = Number((t.match(/(\d+)\s*ms/) ?? [])[1] ?? 200);
  const honourAbort = !t.includes("noabort");
  const n = Math.max(1, count);
  log(`slow: start n=${n} interval=${interval}ms stream=${turn.stream} honourAbort=${honourAbort}`);
  let full = "";
  for (let i = 1; i <= n; i++) {
    const aborted = await sleep(interval, honourAbort ? turn.abortSignal : undefined);
    if (aborted || (honourAbort && turn.abortSignal?.aborted)) {
      log(`slow: aborted before chunk ${i}/${n}`);
      return;
    }
    const text = `tick ${i}/${n} `;
    full += text;
    if (i % 10 === 0) log(`slow: chunk ${i}/${n} (abortSignal.aborted=${!!turn.abortSignal?.aborted})`);
    yield i === n
      ? geminiChunk({ parts: [{ text }], finishReason: "STOP", usageMetadata: usageFor(turn, full) })
      : geminiChunk({ parts: [{ text }] });
  }
  log(`slow: done n=${n}`);
}

export const rootAgent = new LlmAgent({
  name: "slow",
  description: "Offline agent that streams slowly (runcast tests).",
  model: new OfflineModel({ script: slowScript }),
});
