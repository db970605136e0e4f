/**
 * tools — offline agent with one FunctionTool, `add(a, b)`.
 *
 * Drive it with a message containing numbers, e.g. "add 2 and 40"; the first
 * two integers in the text are a and b (defaults 2 and 3).
 *   1st model call: one chunk with a `functionCall` part
 *      {name:"add", args:{a,b}} (finishReason STOP, usageMetadata). ADK assigns
 *      the call id ("adk-<uuid>") and runs the tool, which returns
 *      {result: a+b}; ADK emits the functionResponse event (author "tools").
 *   2nd model call (last content is the functionResponse): final text
 *      `the sum of <a> and <b> is <a+b>` streamed in 3 chunks, as for echo.
 * With streaming:true the wire carries: functionCall event, a usage-only
 * event (no content), functionResponse event, 3 partial text events, final
 * text event. With streaming:false: functionCall, functionResponse, final text.
 */
import { FunctionTool, LlmAgent } from "@google/adk";
import { geminiChunk, OfflineModel, textChunks, usageFor } from "../offline_model.js";

const add = new FunctionTool({
  name: "add",
  description: "Adds two integers and returns {result: a + b}.",
  parameters: {
    type: "OBJECT",
    properties: {
      a: { type: "INTEGER", description: "first addend" },
      b: { type: "INTEGER", description: "second addend" },
    },
    required: ["a", "b"],
  },
  execute: ({ a, b }) => ({ result: Number(a) + Number(b) }),
});

function lastCallArgs(contents) {
  for (let i = contents.length - 1; i >= 0; i--) {
    for (const p of contents[i].parts ?? []) {
      if (p.functionCall?.name === "add") return p.functionCall.args ?? {};
    }
  }
  return {};
}

async function* toolsScript(turn) {
  const fr = turn.functionResponses.find((r) => r.name === "add");
  if (fr) {
    const { a, b } = lastCallArgs(turn.contents);
    const result = fr.response?.result ?? JSON.stringify(fr.response);
    yield* textChunks(turn, `the sum of ${a} and ${b} is ${result}`, 3);
    return;
  }
  const nums = (turn.userText.match(/-?\d+/g) ?? []).map(Number);
  const a = nums[0] ?? 2;
  const b = nums[1] ?? 3;
  yield geminiChunk({
    parts: [{ functionCall: { name: "add", args: { a, b } } }],
    finishReason: "STOP",
    usageMetadata: usageFor(turn, "add"),
  });
}

export const rootAgent = new LlmAgent({
  name: "tools",
  description: "Offline agent that calls the add tool (runcast tests).",
  model: new OfflineModel({ script: toolsScript }),
  tools: [add],
});
