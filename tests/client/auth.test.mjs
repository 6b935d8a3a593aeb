// Caller authentication at the gate: only a valid HS256 bearer token gets through.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";

import { ApiError } from "@fal-ai/client";

import {
  HOOK, T, VPG, assertLogsHoldNoSecrets, assertUpstreamHygiene, mintJwt, rejectionOf, startStack,
} from "./support.mjs";

const INPUT = { input_concept: "a clockmaker's workshop" };

describe("caller authentication", () => {
  let stack;
  before(async () => {
    stack = await startStack();
  }, HOOK);
  after(async () => stack?.stop());

  /** Runs `call(fal)` with a client holding `token`, expects falgate's 401 `unauthenticated` that never reached fal. */
  async function assertUnauthorized(token, call) {
    const fal = stack.client({ token });
    const mark = await stack.mark();
    const err = await rejectionOf(call(fal));
    assert.ok(err instanceof ApiError, `expected ApiError, got ${err}`);
    assert.equal(err.status, 401, `body ${JSON.stringify(err.body)}`);
    assert.equal(err.body?.code, "unauthenticated", `falgate's code in ${JSON.stringify(err.body)}`);
    const res = fal.responses.at(-1);
    assert.match(res.headers.get("www-authenticate") ?? "", /^Bearer\b/i, "WWW-Authenticate: Bearer");
    assert.equal(res.headers.get("x-falgate-error"), "unauthenticated");
    assert.deepEqual(await stack.upstreamSince(mark), [], "a refused call never reaches fal");
    return err;
  }

  test("a valid token is accepted (control for the refusals below)", T, async () => {
    const result = await stack.client().subscribe(VPG, { input: INPUT });
    assert.ok(result.data.prompt.length > 0);
  });

  test("a request without a bearer token is refused with 401 on submit", T, async () => {
    await assertUnauthorized(null, (fal) => fal.queue.submit(VPG, { input: INPUT }));
  });

  test("a request without a bearer token is refused with 401 on fal.run", T, async () => {
    await assertUnauthorized(null, (fal) => fal.run(VPG, { input: INPUT }));
  });

  test("a token signed with another secret is refused with 401", T, async () => {
    const forged = mintJwt("not-the-gate-secret", { sub: "mallory" });
    stack.tokens.add(forged);
    await assertUnauthorized(forged, (fal) => fal.queue.submit(VPG, { input: INPUT }));
  });

  test("a token expired for longer than the 5 s leeway is refused with 401", T, async () => {
    const now = Math.floor(Date.now() / 1000);
    const expired = stack.token({ sub: "e2e-user", iat: now - 3600, exp: now - 60 });
    await assertUnauthorized(expired, (fal) => fal.queue.submit(VPG, { input: INPUT }));
  });

  test("a token with alg none is refused with 401", T, async () => {
    const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
    const now = Math.floor(Date.now() / 1000);
    const unsigned = `${b64({ alg: "none", typ: "JWT" })}.${b64({ sub: "mallory", iat: now, exp: now + 600 })}.`;
    stack.tokens.add(unsigned);
    await assertUnauthorized(unsigned, (fal) => fal.queue.submit(VPG, { input: INPUT }));
  });

  test("a garbage bearer value is refused with 401", T, async () => {
    const garbage = "not-a-jwt-e2e-garbage-token";
    stack.tokens.add(garbage);
    await assertUnauthorized(garbage, (fal) => fal.queue.submit(VPG, { input: INPUT }));
  });

  test("status of an existing request without a token is refused with 401", T, async () => {
    const { request_id: requestId } = await stack.client().queue.submit(VPG, { input: INPUT });
    await assertUnauthorized(null, (fal) => fal.queue.status(VPG, { requestId }));
  });

  test("a caller's own fal key sent as Authorization: Key is not accepted nor forwarded", T, async () => {
    // Bring-your-own-key passthrough is the official proxy's default; falgate must not do it.
    const byok = `Key byok-${Date.now()}`;
    const mark = await stack.mark();
    const res = await stack.proxyFetch(`https://queue.fal.run/${VPG}`, {
      method: "POST", token: null, headers: { authorization: byok }, body: INPUT,
    });
    assert.equal(res.status, 401);
    assert.deepEqual(await stack.upstreamSince(mark), []);
  });

  test("every request fal saw carried exactly the server key and nothing of the caller", T, async () => {
    await assertUpstreamHygiene(stack);
  });

  test("the gate's logs never contain FAL_KEY, a caller token or a cookie", T, async () => {
    await assertLogsHoldNoSecrets(stack);
  });
});
