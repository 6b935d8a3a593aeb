// Canary sweep at the most verbose log level: FAL_KEY, tokens and cookies appear nowhere in the
// gate's output, whatever happened (successes, refusals, fal errors), and never reach fal.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";

import { HOOK, T, VPG, assertLogsHoldNoSecrets, assertUpstreamHygiene, rejectionOf, startStack } from "./support.mjs";

describe("secret hygiene at RUST_LOG=trace", () => {
  let stack;
  before(async () => {
    stack = await startStack({ env: { RUST_LOG: "trace" } });
  }, HOOK);
  after(async () => stack?.stop());

  test("a full job, refusals and fal errors leave no secret in any log line", T, async () => {
    const fal = stack.client();
    const { data } = await fal.subscribe(VPG, { input: { input_concept: "a canary in a coal mine" }, logs: true });
    assert.ok(data.prompt);
    await rejectionOf(stack.client({ token: stack.token({ sub: "x" }, "wrong-secret-wrong-secret-wrong-secret") }).run(VPG, { input: {} }));
    await rejectionOf(fal.run(VPG, { input: { style: "Noir" } }));
    await stack.fault({ op: "result", action: { kind: "status", status: 401, body: { detail: "bad key" } } });
    const { request_id: requestId } = await fal.queue.submit(VPG, { input: { input_concept: "x" } });
    const err = await rejectionOf(fal.queue.result(VPG, { requestId }));
    assert.equal(err.status, 502, "fal's 401 on the server key is never a 401 to the browser");
    await stack.clearFaults();
    assert.ok(stack.gateLogs().length > 1000, "trace logging produced almost nothing; the sweep would be vacuous");
  });

  test("fal only ever saw the server key", T, async () => {
    await assertUpstreamHygiene(stack);
  });

  test("no log line holds FAL_KEY, a token or a cookie", T, async () => {
    await assertLogsHoldNoSecrets(stack);
  });
});

describe("secret hygiene with JSON log lines", () => {
  let stack;
  before(async () => {
    stack = await startStack({ env: { FALGATE_LOG__FORMAT: "json" } });
  }, HOOK);
  after(async () => stack?.stop());

  test("calls and refusals are logged as JSON lines carrying their request ids", T, async () => {
    const fal = stack.client();
    const { data } = await fal.subscribe(VPG, { input: { input_concept: "a canary in a coal mine" } });
    assert.ok(data.prompt);
    await rejectionOf(fal.run(VPG, { input: { style: "Noir" } }));
    await rejectionOf(stack.client({ token: null }).run(VPG, { input: { input_concept: "x" } }));
  });

  test("no log line holds FAL_KEY, a token or a cookie", T, async () => {
    await assertLogsHoldNoSecrets(stack);
    // The request ids were found in JSON log lines (the listening announcements are plain text).
    const json = stack.gateLogs().split("\n").flatMap((l) => { try { return [JSON.parse(l)]; } catch { return []; } });
    for (const id of stack.requestIds) {
      assert.ok(json.some((line) => JSON.stringify(line).includes(id)), `no JSON line carries request id ${id}`);
    }
  });
});
