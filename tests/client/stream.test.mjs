// `fal.stream` through falgate: `POST fal.run/{endpoint}/stream` is relayed as an event stream,
// event by event, under the sync-run policy. The emulator holds the run open after its first
// partial until the test releases it, so "a partial arrived before the end" needs no timing.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";

import { ApiError, ValidationError } from "@fal-ai/client";

import {
  ECHO, HOOK, T, VPG, assertLogsHoldNoSecrets, assertUpstreamHygiene, rejectionOf, startStack,
} from "./support.mjs";

const INPUT = { input_concept: "a lighthouse keeper feeding seagulls at dawn", style: "Cinematic", prompt_length: "Short" };

describe("fal.stream through the proxy route", () => {
  let stack;
  let fal;
  before(async () => {
    stack = await startStack();
    fal = stack.client();
  }, HOOK);
  after(async () => stack?.stop());

  test("a partial output arrives while fal still holds the run open, and done() resolves with the output", T, async () => {
    await stack.fault({ op: "run_stream", action: { kind: "hold", after_events: 1, key: "first-partial" } });
    const mark = await stack.mark();
    const stream = await fal.stream(VPG, { input: INPUT });
    const done = stream.done();
    done.catch(() => {});
    const first = await stream[Symbol.asyncIterator]().next();
    assert.equal(first.done, false, "the stream ended before any partial arrived");
    assert.equal(typeof first.value.prompt, "string", JSON.stringify(first.value));
    // Only now may fal go on: the partial was relayed before the run ended.
    await stack.release("first-partial");
    const output = await done;
    assert.deepEqual(output, { prompt: "Cinematic video of a lighthouse keeper feeding seagulls at dawn." });
    assert.ok(output.prompt.startsWith(first.value.prompt) && first.value.prompt.length < output.prompt.length);
    assert.equal(typeof stream.requestId, "string", "x-fal-request-id relayed");
    const [seen, ...more] = await stack.upstreamSince(mark);
    assert.equal(more.length, 0);
    assert.equal(`${seen.method} ${seen.path}`, `POST /fal.run/${VPG}/stream`);
    await stack.clearFaults();
  });

  test("an endpoint without sync_run cannot be streamed, and nothing reaches fal", T, async () => {
    const mark = await stack.mark();
    const stream = await fal.stream(ECHO, { input: { x: 1 } });
    const err = await rejectionOf(stream.done());
    assert.ok(err instanceof ApiError, `${err?.name}`);
    assert.equal(err.status, 403);
    assert.equal(err.body.code, "sync_run_not_allowed");
    assert.deepEqual(await stack.upstreamSince(mark), []);
  });

  test("an invalid input fails with a ValidationError naming the field, and nothing reaches fal", T, async () => {
    const mark = await stack.mark();
    const stream = await fal.stream(VPG, { input: { style: "Cinematic" } });
    const err = await rejectionOf(stream.done());
    assert.ok(err instanceof ValidationError, `${err?.name}: ${JSON.stringify(err?.body)}`);
    assert.ok(err.fieldErrors.some((e) => e.loc.includes("input_concept")), JSON.stringify(err.body));
    assert.deepEqual(await stack.upstreamSince(mark), []);
  });

  test("fal saw only the server key, and the logs hold no secret", T, async () => {
    await assertUpstreamHygiene(stack);
    await assertLogsHoldNoSecrets(stack);
  });
});
