// fal's own errors are relayed unchanged; fal's failures (garbage, drops, stalls) become falgate errors.

import { after, afterEach, before, describe, test } from "node:test";
import assert from "node:assert/strict";

import { ApiError, ValidationError } from "@fal-ai/client";

import {
  HOOK, T, VPG, assertLogsHoldNoSecrets, assertUpstreamHygiene, rejectionOf, startStack, waitCompleted,
} from "./support.mjs";

const INPUT = { input_concept: "a snow globe on a radiator" };

describe("error relay", () => {
  let stack;
  let fal;
  before(async () => {
    stack = await startStack();
    fal = stack.client();
  }, HOOK);
  afterEach(async () => stack?.clearFaults());
  after(async () => stack?.stop());

  async function completedRequest() {
    const { request_id: requestId } = await fal.queue.submit(VPG, { input: INPUT });
    await waitCompleted(fal, VPG, requestId);
    return requestId;
  }

  test("a 500 from fal on result reaches the client as an ApiError with fal's status, body and request id", T, async () => {
    const requestId = await completedRequest();
    const body = { detail: "Internal server error", error_type: "internal_error" };
    await stack.fault({
      op: "result",
      path_contains: requestId,
      action: { kind: "status", status: 500, body, headers: [["x-fal-request-id", requestId]] },
      times: 1,
    });
    const err = await rejectionOf(fal.queue.result(VPG, { requestId }));
    assert.ok(err instanceof ApiError, `${err}`);
    assert.equal(err.status, 500);
    assert.deepEqual(err.body, body, "fal's body is relayed as sent");
    assert.equal(err.requestId, requestId, "x-fal-request-id is relayed");
    assert.equal(fal.responses.at(-1).headers.get("x-falgate-error"), null, "fal's error is not labelled as falgate's");
  });

  test("a 422 from fal on fal.run reaches the client as a ValidationError with fal's field errors", T, async () => {
    const detail = [{ loc: ["body", "input_concept"], msg: "content policy violation", type: "content_policy_violation" }];
    await stack.fault({ op: "run", action: { kind: "status", status: 422, body: { detail }, headers: [] }, times: 1 });
    const err = await rejectionOf(fal.run(VPG, { input: INPUT }));
    assert.ok(err instanceof ValidationError, `${err?.name}: ${JSON.stringify(err?.body)}`);
    assert.deepEqual(err.fieldErrors, detail);
    assert.equal(fal.responses.at(-1).headers.get("x-falgate-error"), null);
  });

  test("a transient 503 from fal on status is relayed as 503 so the client's retry recovers", T, async () => {
    const { request_id: requestId } = await fal.queue.submit(VPG, { input: INPUT });
    await stack.fault({
      op: "status",
      path_contains: requestId,
      action: { kind: "status", status: 503, body: { detail: "runner_scheduling_failure" }, headers: [] },
      times: 1,
    });
    const before = fal.responses.length;
    const done = await waitCompleted(fal, VPG, requestId);
    assert.equal(done.status, "COMPLETED");
    const statuses = fal.responses.slice(before).map((r) => r.status);
    assert.equal(statuses[0], 503, `gate relayed: ${statuses}`);
    assert.equal(fal.responses[before].headers.get("x-falgate-error"), null);
  });

  test("garbage from fal on status becomes a falgate 502, which the client's status retry recovers from", T, async () => {
    const { request_id: requestId } = await fal.queue.submit(VPG, { input: INPUT });
    await stack.fault({ op: "status", path_contains: requestId, action: { kind: "garbage" }, times: 1 });
    const before = fal.responses.length;
    const done = await waitCompleted(fal, VPG, requestId);
    assert.equal(done.status, "COMPLETED");
    const first = fal.responses[before];
    assert.equal(first.status, 502);
    assert.ok(first.headers.get("x-falgate-error"), "the 502 is falgate's own");
  });

  test("garbage from fal on result becomes a falgate 502, not a 200 the client cannot parse", T, async () => {
    const { request_id: requestId } = await fal.queue.submit(VPG, { input: INPUT });
    await waitCompleted(fal, VPG, requestId);
    await stack.fault({ op: "result", path_contains: requestId, action: { kind: "garbage" }, times: 1 });
    const res = await stack.proxyFetch(`https://queue.fal.run/${VPG}/requests/${requestId}`);
    assert.equal(res.status, 502);
    assert.equal(res.headers.get("x-falgate-error"), "upstream_bad_response");
    assert.equal((await res.json()).code, "upstream_bad_response");
  });

  test("a submit fal breaks off after receiving it is a non-retryable 424, so one click makes one job", T, async () => {
    await stack.fault({ op: "submit", action: { kind: "drop" }, times: 1 });
    const mark = await stack.mark();
    const err = await rejectionOf(fal.queue.submit(VPG, { input: INPUT }));
    assert.ok(err instanceof ApiError, String(err));
    assert.equal(err.status, 424);
    assert.equal(err.body.code, "submit_outcome_unknown");
    const submits = (await stack.upstreamSince(mark)).filter((r) => r.method === "POST");
    assert.equal(submits.length, 1, "the client retried the submit");
  });

  test("a dropped connection on status becomes a falgate 502 with a JSON error body", T, async () => {
    const { request_id: requestId } = await fal.queue.submit(VPG, { input: INPUT });
    await stack.fault({ op: "status", path_contains: requestId, action: { kind: "drop" }, times: 1 });
    const res = await stack.proxyFetch(`https://queue.fal.run/${VPG}/requests/${requestId}/status?logs=0`);
    assert.equal(res.status, 502);
    const body = await res.json();
    assert.equal(res.headers.get("x-falgate-error"), body.code);
    assert.equal(typeof body.message, "string");
    assert.equal(typeof body.request_id, "string");
  });

  test("fal stalling past first_byte_timeout becomes a falgate 504 without waiting for fal", T, async () => {
    const { request_id: requestId } = await fal.queue.submit(VPG, { input: INPUT });
    await stack.fault({ op: "status", path_contains: requestId, action: { kind: "stall", ms: 15_000 }, times: 1 });
    const started = Date.now();
    const res = await stack.proxyFetch(`https://queue.fal.run/${VPG}/requests/${requestId}/status?logs=0`);
    const took = Date.now() - started;
    assert.equal(res.status, 504);
    const body = await res.json();
    assert.equal(res.headers.get("x-falgate-error"), body.code);
    assert.ok(took >= 4_000 && took < 12_000, `answered after ${took} ms; first_byte_timeout_ms is 5000`);
  });

  test("a status stream that fal drops mid-way fails the client's stream instead of hanging or ending cleanly", T, async () => {
    const { request_id: requestId } = await fal.queue.submit(VPG, { input: INPUT });
    await stack.fault({ op: "status_stream", path_contains: requestId, action: { kind: "stream_drop", after_events: 1 }, times: 1 });
    const stream = await fal.queue.streamStatus(VPG, { requestId, logs: false });
    const events = [];
    stream.on("data", (d) => events.push(d));
    const outcome = await Promise.race([
      stream.done().then((v) => ({ resolved: v }), (e) => ({ rejected: e })),
      new Promise((res) => setTimeout(() => res({ hung: true }), 10_000).unref()),
    ]);
    assert.ok(!outcome.hung, "the stream settled within 10 s");
    assert.ok(events.length >= 1, "the event sent before the drop was relayed");
    assert.ok(!events.some((e) => e?.status === "COMPLETED"), "no COMPLETED was invented");
    // A clean end would make done() resolve with IN_QUEUE as if the request had finished.
    assert.ok(outcome.rejected, `done() must reject on a broken upstream, got ${JSON.stringify(outcome.resolved)}`);
    assert.ok(outcome.rejected instanceof ApiError, `${outcome.rejected}`);
  });

  test("every request fal saw carried exactly the server key and nothing of the caller", T, async () => {
    await assertUpstreamHygiene(stack);
  });

  test("the gate's logs never contain FAL_KEY, a caller token or a cookie", T, async () => {
    await assertLogsHoldNoSecrets(stack);
  });
});
