/**
 * tools — offline agent with one FunctionTool, `add(a, b)`, and one tool the
 * client runs, `lookup(text)`.
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
 *
 * `lookup` is a LongRunningFunctionTool whose execute returns nothing, so ADK
 * sends no functionResponse of its own and the run ends after the call: the
 * client (an AG-UI frontend) answers it in the next run.
 *   A message containing "lookup": one chunk with a `functionCall` part
 *      {name:"lookup", args:{text: <the message>}} (ADK assigns the id).
 *   A run whose message is a `functionResponse` for lookup: the text
 *      `lookup returned <JSON of the response>`, streamed in 3 chunks.
 */
import { FunctionTool, LlmAgent, LongRunningFunctionTool } from "@google/adk";
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

const lookup = new LongRunningFunctionTool({
  name: "lookup",
  description: "Looks text up on the client; the client sends the answer.",
  parameters: {
    type: "OBJECT",
    properties: { text: { type: "STRING", description: "what to look up" } },
    required: ["text"],
  },
  execute: () => undefined,
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
  const answer = turn.functionResponses.find((r) => r.name === "lookup");
  if (answer) {
    yield* textChunks(turn, `lookup returned ${JSON.stringify(answer.response)}`, 3);
    return;
  }
  if (turn.userText.includes("lookup")) {
    // No usageMetadata: with it, ADK's stream aggregator adds a content-less
    // usage event after the call, and ADK JS 2.0.0 then takes the step for
    // an unfinished tool step and calls the model again, over and over.
    yield geminiChunk({
      parts: [{ functionCall: { name: "lookup", args: { text: turn.userText } } }],
      finishReason: "STOP",
    });
    return;
  }
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
  tools: [add, lookup],
});
