// Input validation at the gate, as @fal-ai/client sees it: a ValidationError with fal's field
// errors, raised at submit, and nothing sent to fal.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";

import { ValidationError } from "@fal-ai/client";

import { HOOK, T, VPG, assertLogsHoldNoSecrets, rejectionOf, startStack } from "./support.mjs";

describe("schema validation", () => {
  let stack;
  before(async () => {
    stack = await startStack();
  }, HOOK);
  after(async () => stack?.stop());

  test("a bad submit raises ValidationError with every field error and fal sees nothing", T, async () => {
    const fal = stack.client();
    const mark = await stack.mark();
    const err = await rejectionOf(fal.queue.submit(VPG, { input: { style: "Noir", pacing: "Warp" } }));
    assert.ok(err instanceof ValidationError, String(err));
    assert.equal(err.status, 422);
    assert.equal(err.body.code, "validation_failed");
    assert.deepEqual(err.fieldErrors.map((e) => e.loc.at(-1)), ["input_concept", "style", "pacing"]);
    assert.equal(err.getFieldErrors("style")[0].type, "type_error.enum");
    assert.deepEqual(await stack.upstreamSince(mark), []);
  });

  test("subscribe with a bad input fails before anything is queued", T, async () => {
    const fal = stack.client();
    const mark = await stack.mark();
    const err = await rejectionOf(fal.subscribe(VPG, { input: { input_concept: "x", camera_direction: "Sideways" } }));
    assert.ok(err instanceof ValidationError, String(err));
    assert.deepEqual(err.fieldErrors.map((e) => e.loc.at(-1)), ["camera_direction"]);
    assert.deepEqual(await stack.upstreamSince(mark), []);
  });

  test("the gate's logs hold no secret", T, async () => {
    await assertLogsHoldNoSecrets(stack);
  });
});
