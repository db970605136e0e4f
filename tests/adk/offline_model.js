/**
 * offline_model.js — shared offline "Gemini" for the runcast ADK test agents.
 *
 * Lives OUTSIDE agents/ on purpose: the ADK CLI treats every *.js file directly
 * in the agents dir as an agent, so a helper there would be loaded (and
 * silently skipped) as one.
 *
 * OfflineModel extends ADK's BaseLlm. Each agent gives it a `script`: an async
 * generator function `(turn) => AsyncIterable<GenerateContentResponse>` that
 * yields Gemini-shaped streamed chunks (build them with geminiChunk /
 * textChunks below) and may sleep or throw between chunks. OfflineModel then
 * does exactly what ADK's own Gemini class (models/google_llm.js) does with
 * the real API's output:
 *   - stream=true  (run request `streaming: true`, StreamingMode.SSE): every
 *     chunk goes through ADK's StreamingResponseAggregator, which yields one
 *     `partial: true` LlmResponse per text chunk and, on close(), the
 *     aggregated final (`partial: false`, finishReason, usageMetadata).
 *   - stream=false: the script's chunks are merged into ONE
 *     GenerateContentResponse (what generateContent would return) and
 *     converted with ADK's createLlmResponse — one event, no `partial` key.
 * An exception thrown by the script propagates out of generateContentAsync,
 * just like an API error would.
 *
 * Nothing here touches the network.
 */
import { BaseLlm } from "@google/adk";
import { GenerateContentResponse } from "@google/genai";
// Not exported from the package root; imported by file path (bypasses the
// package "exports" map). These are the very modules the Gemini class uses.
import { StreamingResponseAggregator } from "./node_modules/@google/adk/dist/esm/utils/streaming_utils.js";
import { createLlmResponse } from "./node_modules/@google/adk/dist/esm/models/llm_response.js";

export const MODEL_VERSION = "offline-gemini";

/** Marker that agents' instruction providers use to expose session state. */
export const STATE_MARKER = "OFFLINE_STATE_JSON:";

/** Crude deterministic "token" count: whitespace-separated words. */
export function countTokens(text) {
  const t = String(text ?? "").trim();
  return t ? t.split(/\s+/).length : 0;
}

/**
 * One Gemini-shaped streamed chunk, as @google/genai would hand it to ADK.
 * @param {object} o
 * @param {Array<object>} o.parts  Content parts, e.g. [{text: "hi"}].
 * @param {string=} o.finishReason e.g. "STOP" (only on the last chunk).
 * @param {object=} o.usageMetadata
 */
export function geminiChunk({ parts, finishReason, usageMetadata }) {
  const r = new GenerateContentResponse();
  const candidate = { content: { role: "model", parts }, index: 0 };
  if (finishReason) candidate.finishReason = finishReason;
  r.candidates = [candidate];
  if (usageMetadata) r.usageMetadata = usageMetadata;
  r.modelVersion = MODEL_VERSION;
  return r;
}

/** usageMetadata shaped like Gemini's, from prompt/reply texts. */
export function usageFor(turn, replyText) {
  const promptTokenCount = countTokens(turn.promptText);
  const candidatesTokenCount = countTokens(replyText);
  return {
    promptTokenCount,
    candidatesTokenCount,
    totalTokenCount: promptTokenCount + candidatesTokenCount,
  };
}

/**
 * Split `text` into `n` non-empty pieces (by code point, as equal as
 * possible; fewer pieces if text is shorter than n).
 */
export function splitText(text, n) {
  const cps = Array.from(text);
  const k = Math.max(1, Math.min(n, cps.length));
  const out = [];
  for (let i = 0; i < k; i++) {
    const a = Math.floor((i * cps.length) / k);
    const b = Math.floor(((i + 1) * cps.length) / k);
    out.push(cps.slice(a, b).join(""));
  }
  return out;
}

/**
 * `text` as n streamed Gemini chunks; the last one carries
 * finishReason STOP and usageMetadata.
 */
export function textChunks(turn, text, n = 3) {
  const pieces = splitText(text, n);
  return pieces.map((piece, i) =>
    i === pieces.length - 1
      ? geminiChunk({
          parts: [{ text: piece }],
          finishReason: "STOP",
          usageMetadata: usageFor(turn, text),
        })
      : geminiChunk({ parts: [{ text: piece }] }),
  );
}

/** Sleep that resolves early (returning true) if `signal` aborts. */
export function sleep(ms, signal) {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve(true);
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve(false);
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      resolve(true);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

export function log(msg) {
  process.stderr.write(`[offline-model] ${msg}\n`);
}

function partsText(content) {
  return (content?.parts ?? [])
    .filter((p) => typeof p.text === "string" && !p.thought)
    .map((p) => p.text)
    .join("");
}

/** What a script gets to look at for one model call. */
function makeTurn(llmRequest, stream, abortSignal) {
  const contents = llmRequest.contents ?? [];
  const lastContent = contents[contents.length - 1];
  let userText = "";
  for (let i = contents.length - 1; i >= 0; i--) {
    const c = contents[i];
    if (c.role === "user" && (c.parts ?? []).some((p) => typeof p.text === "string")) {
      userText = partsText(c);
      break;
    }
  }
  const systemInstruction =
    typeof llmRequest.config?.systemInstruction === "string"
      ? llmRequest.config.systemInstruction
      : "";
  let state;
  const idx = systemInstruction.indexOf(STATE_MARKER);
  if (idx >= 0) {
    const line = systemInstruction.slice(idx + STATE_MARKER.length).split("\n")[0];
    try {
      state = JSON.parse(line.trim());
    } catch {
      state = undefined;
    }
  }
  const promptText = contents.map(partsText).join(" ");
  const functionResponses = (lastContent?.parts ?? [])
    .filter((p) => p.functionResponse)
    .map((p) => p.functionResponse);
  return {
    request: llmRequest,
    contents,
    lastContent,
    userText,
    systemInstruction,
    state,
    promptText,
    functionResponses,
    stream,
    abortSignal,
  };
}

/** Merge streamed chunks into the one response generateContent would give. */
function mergeChunks(chunks) {
  const parts = [];
  let finishReason;
  let usageMetadata;
  for (const c of chunks) {
    const cand = c.candidates?.[0];
    for (const p of cand?.content?.parts ?? []) {
      const prev = parts[parts.length - 1];
      if (
        typeof p.text === "string" && prev && typeof prev.text === "string" &&
        !!prev.thought === !!p.thought && Object.keys(p).length === 1 + (p.thought ? 1 : 0) &&
        Object.keys(prev).length === 1 + (prev.thought ? 1 : 0)
      ) {
        parts[parts.length - 1] = { ...prev, text: prev.text + p.text };
      } else {
        parts.push({ ...p });
      }
    }
    if (cand?.finishReason) finishReason = cand.finishReason;
    if (c.usageMetadata) usageMetadata = c.usageMetadata;
  }
  return geminiChunk({ parts, finishReason, usageMetadata });
}

export class OfflineModel extends BaseLlm {
  /**
   * @param {object} o
   * @param {string=} o.model   model name (cosmetic)
   * @param {(turn: object) => AsyncIterable<GenerateContentResponse>} o.script
   */
  constructor({ model = MODEL_VERSION, script }) {
    super({ model });
    this.script = script;
  }

  async *generateContentAsync(llmRequest, stream = false, abortSignal) {
    const turn = makeTurn(llmRequest, stream, abortSignal);
    if (stream) {
      // Same loop as Gemini.generateContentAsync's streaming branch.
      const aggregator = new StreamingResponseAggregator();
      for await (const response of this.script(turn)) {
        for await (const llmResponse of aggregator.processResponse(response)) {
          yield llmResponse;
        }
      }
      const finalResponse = aggregator.close();
      if (finalResponse) {
        yield finalResponse;
      }
    } else {
      const chunks = [];
      for await (const response of this.script(turn)) chunks.push(response);
      yield createLlmResponse(mergeChunks(chunks));
    }
  }

  async connect() {
    throw new Error("OfflineModel does not support live (bidi) connections");
  }
}
