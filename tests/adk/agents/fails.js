/**
 * fails — offline agent whose model fails mid-stream with an Error.
 *
 * Any message -> streaming:true: two partial chunks ("partial one ",
 * "partial two "), then the model throws Error("offline model failure").
 * streaming:false: throws before producing anything.
 * ADK (LlmAgent.runAndHandleError) turns a thrown Error into a normal event
 * with errorCode "UNKNOWN_ERROR" and errorMessage = the Error's message; the
 * stream then ends normally (no `{"error":...}` frame, HTTP 200).
 * Directives in the message text:
 *   - `json`    -> the Error's message is a Google-API-style JSON error body
 *                  {"error":{"code":429,"message":"Resource exhausted (offline)",
 *                  "status":"RESOURCE_EXHAUSTED"}}, which ADK maps to
 *                  errorCode "429", errorMessage "Resource exhausted (offline)".
 *   - `outside` -> the Error is thrown from a beforeAgentCallback, i.e.
 *                  outside the model-error handler: the api_server ends the SSE
 *                  stream with a frame `data: {"error":"<message>"}`.
 */
import { LlmAgent } from "@google/adk";
import { geminiChunk, OfflineModel } from "../offline_model.js";

async function* failsScript(turn) {
  if (turn.stream) {
    yield geminiChunk({ parts: [{ text: "partial one " }] });
    yield geminiChunk({ parts: [{ text: "partial two " }] });
  }
  if (turn.userText.includes("json")) {
    throw new Error(
      JSON.stringify({
        error: { code: 429, message: "Resource exhausted (offline)", status: "RESOURCE_EXHAUSTED" },
      }),
    );
  }
  throw new Error("offline model failure");
}

export const rootAgent = new LlmAgent({
  name: "fails",
  description: "Offline agent whose model throws mid-stream (runcast tests).",
  model: new OfflineModel({ script: failsScript }),
  beforeAgentCallback: (context) => {
    const text = (context.userContent?.parts ?? []).map((p) => p.text ?? "").join("");
    if (text.includes("outside")) {
      throw new Error("offline failure outside the model");
    }
    return undefined;
  },
});
