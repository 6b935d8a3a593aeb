// fal.run, endpoint policy and input validation through falgate.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";

import { ApiError, ValidationError } from "@fal-ai/client";

import {
  ECHO, HOOK, NOT_ALLOWED, T, VPG, assertLogsHoldNoSecrets, assertUpstreamHygiene, rejectionOf,
  startStack, viaGate,
} from "./support.mjs";

const INPUT = { input_concept: "a paper boat in a rain gutter", camera_style: "Macro extreme" };

/** Asserts that `err` is falgate's own refusal: exactly `status` and `code` (body and header). */
function assertGateRefusal(fal, err, status, code) {
  assert.ok(err instanceof ApiError, `expected ApiError, got ${err}`);
  assert.equal(err.status, status, `status; body ${JSON.stringify(err.body)}`);
  assert.equal(err.body?.code, code, `falgate's code in ${JSON.stringify(err.body)}`);
  assert.equal(typeof err.body.message, "string");
  assert.equal(err.message, err.body.message, "the client surfaces falgate's message");
  const res = fal.responses.at(-1);
  assert.equal(res.status, status);
  assert.equal(res.headers.get("x-falgate-error"), code, "x-falgate-error header names the code");
}

/**
 * Asserts a ValidationError the gate made itself (`validation_failed`, fal's 422 shape), not one
 * relayed from fal (the emulator answers the same 422): fal saw nothing since `mark`.
 */
async function assertGateValidation(stack, fal, err, mark) {
  assert.ok(err instanceof ValidationError, `expected ValidationError, got ${err?.name}: ${JSON.stringify(err?.body)}`);
  assert.equal(err.status, 422);
  assert.equal(err.body?.code, "validation_failed", `falgate's code in ${JSON.stringify(err.body)}`);
  assert.equal(fal.responses.at(-1).headers.get("x-falgate-error"), "validation_failed");
  assert.deepEqual(await stack.upstreamSince(mark), [], "the invalid input reached fal");
}

describe("fal.run and policy through the proxy route", () => {
  let stack;
  let fal;
  before(async () => {
    stack = await startStack();
    fal = stack.client();
  }, HOOK);
  after(async () => stack?.stop());

  test("fal.run on an endpoint with sync_run returns the prompt from fal.run and a request id", T, async () => {
    const mark = await stack.mark();
    const result = await fal.run(VPG, { input: INPUT });
    assert.equal(typeof result.data.prompt, "string");
    assert.ok(result.data.prompt.length > 0);
    assert.ok(result.requestId.length > 0, "requestId from x-fal-request-id");
    const seen = viaGate(await stack.upstreamSince(mark));
    assert.deepEqual(seen.map((r) => `${r.method} ${r.path}`), [`POST /fal.run/${VPG}`], "one synchronous call, no queue traffic");
  });

  test("fal.run and the queue give the same prompt for the same input", T, async () => {
    const run = await fal.run(VPG, { input: INPUT });
    const queued = await fal.subscribe(VPG, { input: INPUT });
    assert.equal(run.data.prompt, queued.data.prompt);
  });

  test("fal.run on an endpoint without sync_run is refused with 403 and never reaches fal", T, async () => {
    const mark = await stack.mark();
    const err = await rejectionOf(fal.run(ECHO, { input: { hello: "world" } }));
    assertGateRefusal(fal, err, 403, "sync_run_not_allowed");
    assert.deepEqual(await stack.upstreamSince(mark), []);
  });

  test("fal.run on an endpoint missing from the config is refused with 403 and never reaches fal", T, async () => {
    const mark = await stack.mark();
    const err = await rejectionOf(fal.run(NOT_ALLOWED, { input: { prompt: "a cat" } }));
    assertGateRefusal(fal, err, 403, "endpoint_not_allowed");
    assert.deepEqual(await stack.upstreamSince(mark), []);
  });

  test("queue.submit to an endpoint missing from the config is refused with 403 and never reaches fal", T, async () => {
    const mark = await stack.mark();
    const err = await rejectionOf(fal.queue.submit(NOT_ALLOWED, { input: { prompt: "a cat" } }));
    assertGateRefusal(fal, err, 403, "endpoint_not_allowed");
    assert.deepEqual(await stack.upstreamSince(mark), []);
  });

  test("fal.run without input_concept fails with a ValidationError naming input_concept", T, async () => {
    const mark = await stack.mark();
    const err = await rejectionOf(fal.run(VPG, { input: { style: "Simple" } }));
    await assertGateValidation(stack, fal, err, mark);
    assert.ok(err.getFieldErrors("input_concept").length > 0, `fieldErrors: ${JSON.stringify(err.fieldErrors)}`);
  });

  test("fal.run with a style outside the enum fails with a ValidationError naming style", T, async () => {
    const mark = await stack.mark();
    const err = await rejectionOf(fal.run(VPG, { input: { input_concept: "a fox", style: "Baroque" } }));
    await assertGateValidation(stack, fal, err, mark);
    assert.ok(err.getFieldErrors("style").length > 0, `fieldErrors: ${JSON.stringify(err.fieldErrors)}`);
    assert.equal(err.getFieldErrors("input_concept").length, 0, "only the bad field is reported");
  });

  test("subscribe without input_concept fails with a ValidationError naming input_concept", T, async () => {
    const mark = await stack.mark();
    const err = await rejectionOf(fal.subscribe(VPG, { input: { prompt_length: "Long" } }));
    await assertGateValidation(stack, fal, err, mark);
    assert.ok(err.getFieldErrors("input_concept").length > 0, `fieldErrors: ${JSON.stringify(err.fieldErrors)}`);
  });

  test("subscribe with a camera_direction outside the enum fails with a ValidationError naming camera_direction", T, async () => {
    const mark = await stack.mark();
    const err = await rejectionOf(fal.subscribe(VPG, { input: { input_concept: "a fox", camera_direction: "Sideways" } }));
    await assertGateValidation(stack, fal, err, mark);
    assert.ok(err.getFieldErrors("camera_direction").length > 0, `fieldErrors: ${JSON.stringify(err.fieldErrors)}`);
  });

  test("every request fal saw carried exactly the server key and nothing of the caller", T, async () => {
    await assertUpstreamHygiene(stack);
  });

  test("the gate's logs never contain FAL_KEY, a caller token or a cookie", T, async () => {
    await assertLogsHoldNoSecrets(stack);
  });
});
