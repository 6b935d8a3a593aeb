// The queue API through falgate, driven by the official @fal-ai/client in proxy mode.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";

import { ApiError } from "@fal-ai/client";

import {
  ECHO, HOOK, T, VPG, assertLogsHoldNoSecrets, assertUpstreamHygiene, headerValues, rejectionOf,
  startStack, viaGate, waitCompleted,
} from "./support.mjs";

const INPUT = { input_concept: "a lighthouse keeper feeding seagulls at dawn", style: "Cinematic", prompt_length: "Short" };

describe("queue through the proxy route", () => {
  let stack;
  let fal;
  before(async () => {
    stack = await startStack();
    fal = stack.client();
  }, HOOK);
  after(async () => stack?.stop());

  let pollingPrompt;

  test("subscribe in polling mode reports IN_QUEUE, IN_PROGRESS and COMPLETED with logs and returns a prompt", T, async () => {
    const updates = [];
    let enqueued;
    const result = await fal.subscribe(VPG, {
      input: INPUT,
      logs: true,
      onEnqueue: (id) => { enqueued = id; },
      onQueueUpdate: (u) => updates.push(u),
    });
    const statuses = updates.map((u) => u.status);
    assert.equal(statuses[0], "IN_QUEUE", `first update: ${statuses}`);
    assert.ok(statuses.includes("IN_PROGRESS"), `statuses seen: ${statuses}`);
    assert.equal(statuses.at(-1), "COMPLETED");
    const completed = updates.at(-1);
    assert.ok(Array.isArray(completed.logs) && completed.logs.length > 0, "COMPLETED status carries logs when logs=1");
    for (const entry of completed.logs) assert.equal(typeof entry.message, "string");

    assert.equal(typeof result.data.prompt, "string");
    assert.ok(result.data.prompt.length > 0, "prompt is non-empty");
    assert.equal(typeof enqueued, "string");
    assert.equal(result.requestId, enqueued, "result requestId is the submitted request id (x-fal-request-id relayed)");
    pollingPrompt = result.data.prompt;
  });

  test("subscribe with the same input twice yields the same prompt", T, async () => {
    const a = await fal.subscribe(VPG, { input: INPUT });
    const b = await fal.subscribe(VPG, { input: INPUT });
    assert.notEqual(a.requestId, b.requestId, "two submissions are two requests");
    assert.equal(a.data.prompt, b.data.prompt);
    if (pollingPrompt !== undefined) assert.equal(a.data.prompt, pollingPrompt);
  });

  test("subscribe in streaming mode relays status events until COMPLETED and returns the same prompt", T, async () => {
    const updates = [];
    const result = await fal.subscribe(VPG, {
      input: INPUT,
      logs: true,
      mode: "streaming",
      onQueueUpdate: (u) => updates.push(u),
    });
    assert.ok(updates.length > 0, "at least one streamed status");
    for (const u of updates) assert.equal(typeof u.status, "string", `a parsed status object, got ${u}`);
    assert.equal(updates.at(-1).status, "COMPLETED");
    assert.ok(updates.some((u) => Array.isArray(u.logs) && u.logs.length > 0), "logs streamed with logs=1");
    assert.ok(result.data.prompt.length > 0);
    if (pollingPrompt !== undefined) assert.equal(result.data.prompt, pollingPrompt);
  });

  test("queue.submit, status and result work step by step and reach the emulator's queue API", T, async () => {
    const mark = await stack.mark();
    const submitted = await fal.queue.submit(VPG, { input: INPUT });
    assert.equal(typeof submitted.request_id, "string");
    assert.ok(submitted.request_id.length > 0);

    const first = await fal.queue.status(VPG, { requestId: submitted.request_id, logs: true });
    assert.ok(["IN_QUEUE", "IN_PROGRESS", "COMPLETED"].includes(first.status), `status ${first.status}`);

    const done = await waitCompleted(fal, VPG, submitted.request_id);
    assert.equal(done.status, "COMPLETED");
    const result = await fal.queue.result(VPG, { requestId: submitted.request_id });
    assert.ok(result.data.prompt.length > 0);
    assert.equal(result.requestId, submitted.request_id);

    const seen = viaGate(await stack.upstreamSince(mark));
    const submit = seen.find((r) => r.method === "POST" && r.path === `/${VPG}`);
    assert.ok(submit, `emulator saw the submit at /${VPG}: ${seen.map((r) => `${r.method} ${r.path}`)}`);
    const body = typeof submit.body === "string" ? JSON.parse(submit.body) : submit.body;
    assert.equal(body.input_concept, INPUT.input_concept, "the input reached fal unchanged");
    assert.ok(
      seen.some((r) => r.method === "GET" && r.path === `/${VPG}/requests/${submitted.request_id}/status`),
      "status went to /{app}/requests/{id}/status",
    );
    assert.ok(
      seen.some((r) => r.method === "GET" && r.path === `/${VPG}/requests/${submitted.request_id}`),
      "result went to /{app}/requests/{id}",
    );
  });

  test("queue.streamStatus relays events as they happen and done() resolves with COMPLETED", T, async () => {
    const { request_id: requestId } = await fal.queue.submit(VPG, { input: INPUT });
    const stream = await fal.queue.streamStatus(VPG, { requestId, logs: true });
    const events = [];
    stream.on("data", (d) => events.push({ at: Date.now(), status: d?.status }));
    const final = await stream.done();
    const doneAt = Date.now();
    assert.equal(final.status, "COMPLETED");
    assert.ok(events.length >= 2, `expected several events, got ${JSON.stringify(events)}`);
    assert.equal(events.at(-1).status, "COMPLETED");
    // Unbuffered relay: the first event (IN_QUEUE, ~0.3 s queue + ~0.7 s progress in the emulator)
    // arrives long before the stream ends; a buffering gate would deliver everything at once.
    assert.ok(doneAt - events[0].at >= 300, `first event ${doneAt - events[0].at} ms before the end`);
  });

  test("queue.cancel of a queued request is accepted", T, async () => {
    const { request_id: requestId } = await fal.queue.submit(VPG, { input: INPUT });
    const mark = await stack.mark();
    await fal.queue.cancel(VPG, { requestId });
    assert.equal(fal.responses.at(-1).status, 202, "fal's answer to the cancel is relayed");
    const seen = viaGate(await stack.upstreamSince(mark));
    assert.deepEqual(seen.map((r) => `${r.method} ${r.path}`), [`PUT /${VPG}/requests/${requestId}/cancel`]);
    // The job really was cancelled: a second cancel finds it completed (fal's 400).
    const again = await rejectionOf(fal.queue.cancel(VPG, { requestId }));
    assert.equal(again.status, 400);
  });

  test("queue.cancel after completion is refused with fal's 400 relayed as an ApiError", T, async () => {
    const { request_id: requestId } = await fal.queue.submit(VPG, { input: INPUT });
    await waitCompleted(fal, VPG, requestId);
    const err = await rejectionOf(fal.queue.cancel(VPG, { requestId }));
    assert.ok(err instanceof ApiError, `${err}`);
    assert.equal(err.status, 400);
  });

  test("an endpoint without sync_run still works through the queue and reaches fal under its own path", T, async () => {
    const input = { hello: "world", n: 3 };
    const result = await fal.subscribe(ECHO, { input });
    assert.deepEqual(result.data, { echo: input, endpoint: ECHO });
  });

  test("x-fal-disable-fallbacks set on a submit reaches fal in its canonical form", T, async () => {
    const mark = await stack.mark();
    const { request_id: id } = await fal.queue.submit(VPG, { input: INPUT, headers: { "X-Fal-Disable-Fallbacks": "yes" } });
    assert.match(id, /^[0-9a-f-]{36}$/);
    const submit = viaGate(await stack.upstreamSince(mark)).find((r) => r.method === "POST" && r.path === `/${VPG}`);
    assert.ok(submit, "the submit reached fal");
    assert.deepEqual(headerValues(submit, "x-fal-disable-fallbacks"), ["true"]);
    const refused = await rejectionOf(fal.queue.submit(VPG, { input: INPUT, headers: { "x-fal-disable-fallbacks": "perhaps" } }));
    assert.ok(refused instanceof ApiError && refused.status === 400, `an invalid value: ${refused}`);
  });

  test("every request fal saw carried exactly the server key and nothing of the caller", T, async () => {
    const records = await assertUpstreamHygiene(stack);
    // Proxy-mode requests must still look like client requests to fal.
    const submit = records.find((r) => r.method === "POST");
    assert.deepEqual(headerValues(submit, "content-type").map((v) => v.split(";")[0]), ["application/json"]);
  });

  test("the gate's logs never contain FAL_KEY, a caller token or a cookie", T, async () => {
    await assertLogsHoldNoSecrets(stack);
  });
});
