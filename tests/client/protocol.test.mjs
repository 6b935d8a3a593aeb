// The proxy protocol's edges: target checks, body limits, and request ownership between callers.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";

import { ApiError } from "@fal-ai/client";

import {
  HOOK, T, VPG, assertLogsHoldNoSecrets, assertUpstreamHygiene, rejectionOf, startStack,
} from "./support.mjs";

const INPUT = { input_concept: "a tram in the fog" };

describe("proxy protocol edges", () => {
  let stack;
  before(async () => {
    stack = await startStack();
  }, HOOK);
  after(async () => stack?.stop());

  /** Asserts falgate's own refusal: exactly `status` and `code`, in the body and the header. */
  async function assertRefusedUnforwarded(res, status, code) {
    const body = await res.json();
    assert.equal(res.status, status, `status; body ${JSON.stringify(body)}`);
    assert.equal(body.code, code, `falgate's code in ${JSON.stringify(body)}`);
    assert.equal(res.headers.get("x-falgate-error"), code);
    return body;
  }

  test("a proxy request without x-fal-target-url is refused with 400", T, async () => {
    const mark = await stack.mark();
    const res = await stack.proxyFetch(null, { method: "POST", body: INPUT });
    await assertRefusedUnforwarded(res, 400, "invalid_target");
    assert.deepEqual(await stack.upstreamSince(mark), []);
  });

  test("a target outside fal's hosts is refused with 400 and never forwarded", T, async () => {
    const mark = await stack.mark();
    for (const target of [`https://evil.example/${VPG}`, `https://queue.fal.run.evil.example/${VPG}`, `https://fal.ai.evil.example/${VPG}`]) {
      const res = await stack.proxyFetch(target, { method: "POST", body: INPUT });
      await assertRefusedUnforwarded(res, 400, "invalid_target");
    }
    assert.deepEqual(await stack.upstreamSince(mark), []);
  });

  test("a target whose path climbs out of an allowed endpoint is refused and never forwarded", T, async () => {
    const mark = await stack.mark();
    const res = await stack.proxyFetch(`https://queue.fal.run/${VPG}/../../fal-ai/flux/dev`, { method: "POST", body: INPUT });
    await assertRefusedUnforwarded(res, 400, "invalid_target");
    assert.deepEqual(await stack.upstreamSince(mark), []);
  });

  test("an input larger than max_body_bytes is refused with 413 and never forwarded", T, async () => {
    const fal = stack.client();
    const mark = await stack.mark();
    const err = await rejectionOf(fal.queue.submit(VPG, { input: { ...INPUT, custom_elements: "x".repeat(1_200_000) } }));
    assert.ok(err instanceof ApiError, `${err}`);
    assert.equal(err.status, 413);
    assert.equal(err.body?.code, "body_too_large", `falgate's code in ${JSON.stringify(err.body)}`);
    assert.deepEqual(await stack.upstreamSince(mark), []);
  });

  test("a submit that is not JSON is refused with 415 and never forwarded", T, async () => {
    const mark = await stack.mark();
    const res = await stack.proxyFetch(`https://queue.fal.run/${VPG}`, {
      method: "POST", headers: { "content-type": "text/plain" }, body: "input_concept=x",
    });
    await assertRefusedUnforwarded(res, 415, "unsupported_media_type");
    assert.deepEqual(await stack.upstreamSince(mark), []);
  });

  test("another caller cannot read, stream or cancel a request: 404 as if it did not exist", T, async () => {
    const alice = stack.client({ sub: "alice" });
    const bob = stack.client({ sub: "bob" });
    const { request_id: requestId } = await alice.queue.submit(VPG, { input: INPUT });
    const mark = await stack.mark();
    for (const call of [
      () => bob.queue.status(VPG, { requestId }),
      () => bob.queue.result(VPG, { requestId }),
      () => bob.queue.cancel(VPG, { requestId }),
    ]) {
      const err = await rejectionOf(call());
      assert.ok(err instanceof ApiError, `${err}`);
      assert.equal(err.status, 404, `body ${JSON.stringify(err.body)}`);
      assert.equal(err.body?.code, "request_not_found", "falgate's own 404, not fal's");
    }
    const stream = await bob.queue.streamStatus(VPG, { requestId });
    const streamErr = await rejectionOf(stream.done());
    assert.equal(streamErr.status, 404);
    assert.deepEqual(await stack.upstreamSince(mark), [], "bob's calls never reached fal");
    // Alice still owns it.
    const done = await alice.queue.subscribeToStatus(VPG, { requestId });
    assert.equal(done.status, "COMPLETED");
  });

  test("an unknown request id is 404 for its caller", T, async () => {
    const fal = stack.client();
    const mark = await stack.mark();
    const err = await rejectionOf(fal.queue.status(VPG, { requestId: "00000000-0000-4000-8000-000000000000" }));
    assert.ok(err instanceof ApiError);
    assert.equal(err.status, 404);
    // The emulator answers an unknown id with a 404 too: only falgate's code and fal's silence
    // show the gate's ownership check refused it.
    assert.equal(err.body?.code, "request_not_found", `body ${JSON.stringify(err.body)}`);
    assert.equal(fal.responses.at(-1).headers.get("x-falgate-error"), "request_not_found");
    assert.deepEqual(await stack.upstreamSince(mark), [], "the unknown id was asked of fal");
  });

  test("every request fal saw carried exactly the server key and nothing of the caller", T, async () => {
    await assertUpstreamHygiene(stack);
  });

  test("the gate's logs never contain FAL_KEY, a caller token or a cookie", T, async () => {
    await assertLogsHoldNoSecrets(stack);
  });
});
