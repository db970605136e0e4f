/**
 * throws_non_error — offline agent whose model throws something that is NOT
 * an Error instance.
 *
 * ADK's model-error handler only handles `instanceof Error`; anything else is
 * rethrown, escapes Runner.runAsync, and the api_server's /run_sse catch does
 * `res.end("data: " + JSON.stringify({error: e.message}) + "\n\n")`. With no
 * `.message` that is `data: {}`.
 * Any message -> streaming:true: one partial chunk ("about to throw "), then
 * `throw "boom"` (a string). streaming:false: throws immediately.
 * Directives in the message text:
 *   - `object`  -> throw {x: 1}                   (final frame `{}` too)
 *   - `message` -> throw {message: "boom object"}  (final frame
 *                  `{"error":"boom object"}`: non-Error, but has .message)
 */
import { LlmAgent } from "@google/adk";
import { geminiChunk, OfflineModel } from "../offline_model.js";

async function* throwsScript(turn) {
  if (turn.stream) {
    yield geminiChunk({ parts: [{ text: "about to throw " }] });
  }
  if (turn.userText.includes("object")) throw { x: 1 };
  if (turn.userText.includes("message")) throw { message: "boom object" };
  throw "boom";
}

export const rootAgent = new LlmAgent({
  name: "throws_non_error",
  description: "Offline agent whose model throws a non-Error (runcast tests).",
  model: new OfflineModel({ script: throwsScript }),
});
