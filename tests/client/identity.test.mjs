// Who may do what, as a frontend sees it: ownership between users, tiers, cookie sessions.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { resolve } from "node:path";

import { ApiError } from "@fal-ai/client";

import {
  HOOK, T, VPG, assertLogsHoldNoSecrets, assertUpstreamHygiene, rejectionOf, startStack,
} from "./support.mjs";

const INPUT = { input_concept: "a lighthouse in a storm" };

describe("identity", () => {
  let stack;
  before(async () => {
    stack = await startStack({ configPath: resolve(import.meta.dirname, "falgate.identity.toml") });
  }, HOOK);
  after(async () => stack?.stop());

  test("a user cannot read, stream or cancel another user's request", T, async () => {
    const alice = stack.client({ sub: "alice" });
    const bob = stack.client({ sub: "bob" });
    const { request_id: requestId } = await alice.queue.submit(VPG, { input: INPUT });
    const mark = await stack.mark();
    for (const attempt of [
      () => bob.queue.status(VPG, { requestId }),
      () => bob.queue.result(VPG, { requestId }),
      () => bob.queue.cancel(VPG, { requestId }),
    ]) {
      const err = await rejectionOf(attempt());
      assert.ok(err instanceof ApiError, String(err));
      assert.equal(err.status, 404);
      assert.equal(err.body.code, "request_not_found");
    }
    assert.deepEqual(await stack.upstreamSince(mark), [], "bob's calls reached fal");
    const status = await alice.queue.status(VPG, { requestId });
    assert.ok(["IN_QUEUE", "IN_PROGRESS", "COMPLETED"].includes(status.status));
  });

  test("a free-tier user gets 403 for a premium model and fal never sees it", T, async () => {
    const free = stack.client({ sub: "f", tier: "free" });
    const mark = await stack.mark();
    const err = await rejectionOf(free.subscribe(VPG, { input: { ...INPUT, model: "openai/gpt-4o" } }));
    assert.ok(err instanceof ApiError, String(err));
    assert.equal(err.status, 403);
    assert.equal(err.body.code, "option_not_allowed");
    assert.match(err.body.message, /`model`/);
    assert.deepEqual(await stack.upstreamSince(mark), []);
    const pro = stack.client({ sub: "p", tier: "pro" });
    const { data } = await pro.subscribe(VPG, { input: { ...INPUT, model: "openai/gpt-4o" } });
    assert.ok(data.prompt.length > 0);
  });

  test("a free-tier submit goes to fal with low priority", T, async () => {
    const free = stack.client({ sub: "f2", tier: "free" });
    const mark = await stack.mark();
    await free.queue.submit(VPG, { input: INPUT });
    const [submit] = await stack.upstreamSince(mark);
    const priority = submit.headers.filter(([n]) => n === "x-fal-queue-priority").map(([, v]) => v);
    assert.deepEqual(priority, ["low"]);
  });

  test("a browser with a cookie session works without an Authorization header", T, async () => {
    const token = stack.token({ sub: "cookie-user" });
    const browser = stack.client({ sessionCookie: `falgate_token=${token}` });
    const { data, requestId } = await browser.subscribe(VPG, { input: INPUT });
    assert.ok(data.prompt.length > 0);
    assert.ok(requestId);
  });

  test("a preflight from the app's origin is answered without a token", T, async () => {
    const res = await fetch(stack.proxyUrl, {
      method: "OPTIONS",
      headers: { origin: "https://app.example.com", "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type, x-fal-target-url" },
    });
    assert.equal(res.status, 204);
    assert.equal(res.headers.get("access-control-allow-origin"), "https://app.example.com");
    assert.equal(res.headers.get("access-control-allow-credentials"), "true");
  });

  test("fal only ever saw the server key", T, async () => {
    await assertUpstreamHygiene(stack);
  });

  test("the gate's logs hold no secret", T, async () => {
    await assertLogsHoldNoSecrets(stack);
  });
});
