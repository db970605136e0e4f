/**
 * echo — offline agent that echoes the user's last message.
 *
 * Drive it with POST /run_sse {appName:"echo", newMessage:{role:"user",
 * parts:[{text:"hello"}]}, streaming:true|false}.
 *   - Reply text is exactly `echo: <user text>`.
 *   - streaming:true  -> the reply is split into 3 Gemini chunks (the 3 thirds
 *     of the string, by code point); ADK emits 3 `partial:true` events, then
 *     the aggregated final event (`partial:false`, finishReason "STOP",
 *     usageMetadata).
 *   - streaming:false -> one event with the whole reply (no `partial` key).
 *   - If the user text contains `state?`, the reply is instead
 *     `state: <JSON.stringify(session state)>` — the state as the agent sees
 *     it in this turn, i.e. including the `stateDelta` sent with the same
 *     /run_sse request and the state given at session creation.
 * usageMetadata token counts are word counts (deterministic, fake).
 */
import { LlmAgent } from "@google/adk";
import { OfflineModel, STATE_MARKER, textChunks } from "../offline_model.js";

async function* echoScript(turn) {
  const text = turn.userText.includes("state?")
    ? `state: ${JSON.stringify(turn.state ?? null)}`
    : `echo: ${turn.userText}`;
  yield* textChunks(turn, text, 3);
}

export const rootAgent = new LlmAgent({
  name: "echo",
  description: "Offline echo agent (runcast tests).",
  model: new OfflineModel({ script: echoScript }),
  // Function instruction: not templated; exposes the session state to the
  // offline model through the system instruction.
  instruction: (ctx) => `${STATE_MARKER} ${JSON.stringify(ctx.state.toRecord())}`,
});
