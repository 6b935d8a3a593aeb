// Three falgate replicas on one Redis behind nginx, driven by the official @fal-ai/client through
// the balancer, while one replica is restarted mid-run (SIGTERM, wait for its exit, start it again
// on the same port).
//
// What it proves:
// - A request submitted through one replica is polled through every other by its owner, before
//   and after the restart; another caller gets falgate's 404 `request_not_found` from each, and
//   fal never sees those polls (ownership lives in Redis, not in a replica).
// - A daily quota holds for the cluster: `daily_requests = N` for a tier lets exactly N submits
//   through, whichever replicas take them; the next ones are 403 `quota_exceeded` on every
//   replica (the restarted one included), and fal sees N submits.
// - No call fails while a replica restarts under load, and the calls in flight on it finish.
// - A submit whose connect a stopped replica refuses is passed on by nginx and reaches fal once.
//
// What "no call fails" rests on (the test fails when one is missing):
// 1. Drain (falgate): on SIGTERM the replica answers /readyz 503 at once (asserted: before the
//    drain, /readyz refused connections) and keeps serving new calls for `drain.delay_ms`, the
//    time Kubernetes needs to take it out of a Service; nginx OSS has no active health check, so
//    it keeps sending calls in that window and they are served. Then the listener closes and
//    calls and streams in flight finish (up to `drain.timeout_ms`; asserted with sync runs and
//    status streams that fal holds across the close) before it exits 0.
// 2. Failover (nginx, balancer.mjs): once the listener is closed a connect is refused, nothing
//    was sent, and `proxy_next_upstream error timeout` passes the call to the next replica, POST
//    included; `max_fails=1 fail_timeout=2s` keeps the replica out until it is back. A POST that
//    was sent is never passed on (no `non_idempotent`), so nginx never makes a second paid job;
//    idempotent polls, results, streams and cancels are passed on even then.
// 3. Shared state (Redis): whichever replica gets a poll, a quota check or a retry answers the
//    same, including a freshly restarted one.
// 4. Nothing else. @fal-ai/client retries 429/502/503/504 and transport errors, which would hide
//    a failure, so the test records every response the client got from the balancer and fails
//    on any of those, on a transport error, on any falgate refusal, and on a submit fal saw more
//    often than the clients made it.
// One window remains, inherent to HTTP/1.1 keep-alive: a request nginx writes on a kept-alive
// connection in the very instant the stopping replica closes it idle fails after it was sent
// (nginx drops a cached connection as soon as it sees the close; the race is a few µs wide). A
// poll is then passed on; a POST would be a 502 that the client retries, which this test reports.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { ApiError } from "@fal-ai/client";

import { UPSTREAM_HEADER } from "./balancer.mjs";
import {
  ECHO, HOOK, T, VPG, assertLogsHoldNoSecrets, assertUpstreamHygiene, rejectionOf, startCluster, viaGate,
} from "./support.mjs";

const CONFIG = resolve(dirname(fileURLToPath(import.meta.url)), "falgate.replicas.toml");
const REPLICAS = 3;
/** `[limits.tiers.capped] daily_requests` in falgate.replicas.toml. */
const CAPPED_DAILY_REQUESTS = 4;
/** The replica restarted mid-run. */
const VICTIM = 1;
const DRAIN = { FALGATE_DRAIN__DELAY_MS: "1000", FALGATE_DRAIN__TIMEOUT_MS: "10000" };
/** How long fal takes for the calls kept in flight across the restart (an emulator stall). */
const IN_FLIGHT_STALL_MS = 2_500;
/** Statuses @fal-ai/client retries by itself (so a failure would go unseen), and falgate's 424. */
const HIDDEN_FAILURES = new Set([424, 429, 500, 502, 503, 504]);

const run = randomBytes(4).toString("hex");
const INPUT = { input_concept: `a ferry between three islands ${run}` };
let seq = 0;
/** A fresh input per call, so each paid call fal sees can be told apart by its body. */
const unique = () => ({ input_concept: `${INPUT.input_concept} #${++seq}` });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Waits for `check()` to be truthy, polling; fails after `ms` naming `what` (or what it returns). */
async function until(what, ms, check) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    assert.ok(Date.now() < deadline, `${typeof what === "function" ? what() : what}: not within ${ms} ms`);
    await sleep(25);
  }
}

describe("three replicas on one Redis behind nginx", () => {
  let cluster;
  before(async () => {
    cluster = await startCluster({ replicas: REPLICAS, configPath: CONFIG, env: DRAIN });
  }, HOOK);
  after(async () => cluster?.stop());

  const answeredBy = (fal) => cluster.constructor.answeredBy(fal.responses.at(-1));
  const allAddrs = () => cluster.replicas.map((r) => r.addr).sort();

  /**
   * Polls `requestId`'s status through the balancer until every replica has answered: the owner
   * gets a status, anyone else falgate's 404, and fal sees none of the strangers' polls.
   */
  async function assertOwnedOnEveryReplica(owner, stranger, requestId) {
    const ownerSaw = new Set();
    for (let i = 0; i < 3 * REPLICAS && ownerSaw.size < REPLICAS; i++) {
      const status = await owner.queue.status(VPG, { requestId });
      assert.ok(["IN_QUEUE", "IN_PROGRESS", "COMPLETED"].includes(status.status), `status ${status.status}`);
      ownerSaw.add(answeredBy(owner));
    }
    assert.deepEqual([...ownerSaw].sort(), allAddrs(), "the owner polled through every replica");

    const mark = await cluster.mark();
    const strangerSaw = new Set();
    for (let i = 0; i < 3 * REPLICAS && strangerSaw.size < REPLICAS; i++) {
      const err = await rejectionOf(stranger.queue.status(VPG, { requestId }));
      assert.ok(err instanceof ApiError, `${err}`);
      assert.equal(err.status, 404);
      const res = stranger.responses.at(-1);
      assert.equal(res.headers.get("x-falgate-error"), "request_not_found", "falgate's own 404, not fal's");
      assert.equal(err.body?.code, "request_not_found");
      strangerSaw.add(answeredBy(stranger));
    }
    assert.deepEqual([...strangerSaw].sort(), allAddrs(), "the stranger was refused by every replica");
    const leaked = viaGate(await cluster.upstreamSince(mark)).filter((r) => r.path.includes(requestId));
    assert.deepEqual(leaked.map((r) => `${r.method} ${r.path}`), [], "a stranger's poll reached fal");
  }

  let alice;
  let bob;
  let aliceRequest;

  test("a request submitted through one replica is polled through every replica by its owner only", T, async () => {
    alice = cluster.client({ sub: `alice-${run}` });
    bob = cluster.client({ sub: `bob-${run}` });
    const { request_id: requestId } = await alice.queue.submit(VPG, { input: INPUT });
    aliceRequest = { requestId, submittedOn: answeredBy(alice) };
    assert.ok(allAddrs().includes(aliceRequest.submittedOn), `submitted through ${aliceRequest.submittedOn}`);
    await assertOwnedOnEveryReplica(alice, bob, requestId);
  });

  test("no call fails while a replica restarts under load, and its calls in flight finish", { timeout: 45_000 }, async (t) => {
    const victim = cluster.replicas[VICTIM];
    const mark = await cluster.mark();
    const users = Array.from({ length: 3 }, (_, i) => cluster.client({ sub: `load-${i}-${run}` }));
    const failures = [];
    let calls = 0;
    let running = true;

    // The calls of the client suite that make sense under load (queue.test.mjs, storage.test.mjs);
    // fal.run is exercised by the in-flight set below.
    const CALLS = {
      "subscribe (polling)": async (fal) => {
        const r = await fal.subscribe(VPG, { input: unique(), logs: true });
        assert.ok(r.data.prompt.length > 0);
      },
      "subscribe (streaming)": async (fal) => {
        const r = await fal.subscribe(VPG, { input: unique(), mode: "streaming" });
        assert.ok(r.data.prompt.length > 0);
      },
      "queue.submit, status, result": async (fal) => {
        const { request_id: requestId } = await fal.queue.submit(VPG, { input: unique() });
        await fal.queue.status(VPG, { requestId, logs: true });
        await fal.queue.subscribeToStatus(VPG, { requestId, logs: false });
        const r = await fal.queue.result(VPG, { requestId });
        assert.equal(r.requestId, requestId);
      },
      "subscribe (queue-only endpoint)": async (fal) => {
        const input = { hello: run, n: ++seq };
        const r = await fal.subscribe(ECHO, { input });
        assert.deepEqual(r.data, { echo: input, endpoint: ECHO });
      },
      "storage.upload": async (fal) => {
        const content = `bytes ${randomBytes(8).toString("hex")}`;
        const url = await fal.storage.upload(new File([content], `upload-${run}-${++seq}.txt`, { type: "text/plain" }));
        assert.equal(await (await fetch(url)).text(), content);
      },
      "queue.cancel": async (fal) => {
        const { request_id: requestId } = await fal.queue.submit(VPG, { input: unique() });
        try {
          await fal.queue.cancel(VPG, { requestId });
        } catch (err) {
          // Completed before the cancel arrived: fal's own 400, relayed.
          assert.ok(err instanceof ApiError && err.status === 400, `${err}`);
          assert.equal(fal.responses.at(-1).headers.get("x-falgate-error"), null);
        }
      },
    };
    const loops = users.map(async (fal, u) => {
      const names = Object.keys(CALLS);
      for (let i = u; running; i++) {
        const name = names[i % names.length];
        try {
          await CALLS[name](fal);
          calls++;
        } catch (error) {
          failures.push(`user ${u}, ${name}: ${error?.stack ?? error}`);
        }
      }
    });
    const load = Promise.all(loops);

    try {
      await until("load running", 10_000, () => calls >= 3);

      // Calls in flight on every replica when the victim gets SIGTERM: sync runs and status
      // streams that fal holds for IN_FLIGHT_STALL_MS (round robin spreads them over the three).
      const inflight = cluster.client({ sub: `inflight-${run}` });
      await cluster.fault({ op: "run", action: { kind: "stall", ms: IN_FLIGHT_STALL_MS }, times: 2 * REPLICAS });
      const jobs = [];
      for (let i = 0; i < REPLICAS; i++) jobs.push((await inflight.queue.submit(VPG, { input: unique() })).request_id);
      for (const id of jobs) {
        await cluster.fault({ op: "status_stream", path_contains: id, action: { kind: "stall", ms: IN_FLIGHT_STALL_MS }, times: 1 });
      }
      const firstInflight = inflight.responses.length;
      const runs = Array.from({ length: 2 * REPLICAS }, () => inflight.run(VPG, { input: unique() }));
      const streams = jobs.map(async (requestId) => {
        const stream = await inflight.queue.streamStatus(VPG, { requestId, logs: false });
        return stream.done();
      });
      // Wait until fal holds them all: then they are in flight on the replicas.
      await until("in-flight calls reach fal", 5_000, async () => {
        const seen = viaGate(await cluster.upstreamSince(mark));
        const held = seen.filter((r) => r.path.startsWith("/fal.run/") || r.path.endsWith("/status/stream"));
        return held.filter((r) => r.path.startsWith("/fal.run/")).length >= runs.length
          && jobs.every((id) => held.some((r) => r.path.includes(`${id}/status/stream`)));
      });

      // SIGTERM: /readyz turns 503 at once while the listener still serves.
      const servedBeforeStop = users.flatMap((fal) => fal.responses).filter((r) => cluster.constructor.answeredBy(r) === victim.addr).length;
      assert.ok(servedBeforeStop > 0, "the victim served part of the load before its restart");
      const stoppedAt = Date.now();
      const exited = cluster.terminate(VICTIM);
      let readyz;
      await until(() => `/readyz answers 503 on the draining replica (it answered ${readyz})`, 1_000, async () => {
        try {
          const res = await fetch(`${victim.url}/readyz`);
          await res.arrayBuffer();
          readyz = res.status;
        } catch (err) {
          readyz = `${err.cause?.code ?? err}`;
        }
        return readyz === 503;
      });
      const exit = await Promise.race([exited, sleep(15_000).then(() => null)]);
      assert.ok(exit, "the draining replica did not exit within 15 s");
      assert.deepEqual(exit, { code: 0, signal: null }, "a drained replica exits 0");
      const drainMs = Date.now() - stoppedAt;

      const restartedAt = Date.now();
      await cluster.restart(VICTIM);
      // Back in nginx's rotation: it answers load calls again.
      await until("the restarted replica serves calls through nginx", 10_000, () =>
        users.some((fal) => fal.responses.some((r) => r.at > restartedAt && cluster.constructor.answeredBy(r) === victim.addr)));
      const backMs = Date.now() - restartedAt;

      // Every call held in flight finished, and the victim had some of them.
      for (const r of await Promise.all(runs)) assert.ok(r.data.prompt.length > 0);
      for (const s of await Promise.all(streams)) assert.equal(s.status, "COMPLETED");
      const heldOnVictim = inflight.responses.slice(firstInflight)
        .filter((r) => r.headers.get(UPSTREAM_HEADER) === victim.addr).length;
      assert.ok(heldOnVictim > 0, "no call was in flight on the replica when it was stopped");

      running = false;
      await load;

      const all = [inflight, ...users];
      const responses = all.flatMap((fal) => fal.responses).filter((r) => r.toGate);
      const hidden = responses.filter((r) => HIDDEN_FAILURES.has(r.status) || r.headers.get("x-falgate-error"))
        .map((r) => `${r.status} ${r.headers.get("x-falgate-error") ?? "-"} ${r.method} ${r.target} via ${r.headers.get(UPSTREAM_HEADER)}`
          + ` (victim ${victim.addr}; ${r.at - stoppedAt} ms after its SIGTERM, ${r.at - restartedAt} ms after its restart)`);
      const transport = all.flatMap((fal) => fal.transportErrors).map((e) => `${e.target}: ${e.error?.cause?.code ?? e.error}`);
      // nginx passed no POST on after sending it: fal saw each paid call's body once.
      const bodies = new Map();
      for (const r of viaGate(await cluster.upstreamSince(mark)).filter((x) => x.method === "POST")) {
        bodies.set(r.body, [...(bodies.get(r.body) ?? []), r.path]);
      }
      const twice = [...bodies].filter(([, paths]) => paths.length > 1).map(([body, paths]) => `${paths} ${body}`);
      const posts = responses.filter((r) => r.method === "POST").length;
      assert.deepEqual(
        { failures, hidden, transport, twice },
        { failures: [], hidden: [], transport: [], twice: [] },
        "failed calls; responses or transport errors the client would have retried unseen; POSTs fal saw twice",
      );
      assert.equal(bodies.size, posts, "fal saw as many POSTs as the clients sent");

      const perReplica = Object.fromEntries(cluster.replicas.map((r) => [r.addr, 0]));
      for (const r of users.flatMap((fal) => fal.responses)) {
        const addr = cluster.constructor.answeredBy(r);
        if (addr in perReplica) perReplica[addr]++;
      }
      // Access log lines of calls nginx passed on to another replica ("a, b" upstreams), by method.
      const passedOn = {};
      for (const line of cluster.balancer.accessLog().split("\n").filter((l) => /"[^"]*,[^"]*"/.test(l))) {
        passedOn[line.split(" ")[0]] = (passedOn[line.split(" ")[0]] ?? 0) + 1;
      }
      t.diagnostic(`${calls} client calls, ${posts} POSTs; responses per replica ${JSON.stringify(perReplica)}`);
      t.diagnostic(`drain to exit ${drainMs} ms; restarted replica back in rotation after ${backMs} ms; `
        + `${heldOnVictim} held calls finished on it; calls nginx passed on to another replica: ${JSON.stringify(passedOn)}`);
    } finally {
      running = false;
      await load;
    }
  });

  test("a submit refused at connect by a stopped replica is passed on by nginx and reaches fal once", T, async () => {
    // No load now: round robin visits the stopped replica within REPLICAS calls, and nothing
    // else takes the refusal that marks it down.
    const victim = cluster.replicas[VICTIM];
    // The previous test's restart may have left the victim marked down in nginx for up to
    // fail_timeout (a call it refused while stopping): wait until nginx routes to it again, or
    // round robin would skip it and no submit would meet the stopped replica.
    await until("the victim serves calls through nginx before it is stopped", 10_000, async () => {
      const res = await fetch(`${cluster.gateUrl}/healthz`);
      await res.arrayBuffer();
      return res.headers.get(UPSTREAM_HEADER) === victim.addr;
    });
    const exit = await cluster.terminate(VICTIM);
    assert.deepEqual(exit, { code: 0, signal: null });
    const mark = await cluster.mark();
    const logged = cluster.balancer.accessLog().length;
    const dave = cluster.client({ sub: `dave-${run}` });
    const inputs = Array.from({ length: REPLICAS }, unique);
    for (const input of inputs) await dave.queue.submit(VPG, { input });
    assert.deepEqual(dave.responses.map((r) => r.status), inputs.map(() => 200));
    const passedOn = cluster.balancer.accessLog().slice(logged).split("\n").filter((l) => l.includes(`"${victim.addr}, `));
    assert.equal(passedOn.length, 1, `one submit met the stopped replica: ${passedOn}`);
    assert.match(passedOn[0], /^POST .* 200 "[^"]+" "502, 200"$/, "refused, then answered by another replica");
    const bodies = viaGate(await cluster.upstreamSince(mark)).filter((r) => r.method === "POST").map((r) => r.body).sort();
    assert.deepEqual(bodies, inputs.map((i) => JSON.stringify(i)).sort(), "fal saw each submit once");

    const restartedAt = Date.now();
    await cluster.restart(VICTIM);
    await until("the restarted replica serves calls through nginx", 10_000, async () => {
      const res = await fetch(`${cluster.gateUrl}/healthz`);
      await res.arrayBuffer();
      return res.headers.get(UPSTREAM_HEADER) === victim.addr;
    });
    assert.ok(Date.now() - restartedAt < 10_000);
  });

  test("after the restart the owner still polls through every replica, the stranger still gets 404", T, async () => {
    assert.ok(aliceRequest, "the first test submitted alice's request");
    await assertOwnedOnEveryReplica(alice, bob, aliceRequest.requestId);
    const result = await alice.queue.result(VPG, { requestId: aliceRequest.requestId });
    assert.ok(result.data.prompt.length > 0);
  });

  test("a daily quota holds across the three replicas: the (N+1)th submit is 403 wherever it lands", T, async () => {
    const carol = cluster.client({ sub: `carol-${run}`, tier: "capped" });
    const input = { input_concept: `quota probe ${run}` };
    const mark = await cluster.mark();
    const accepted = new Set();
    for (let i = 0; i < CAPPED_DAILY_REQUESTS; i++) {
      await carol.queue.submit(VPG, { input });
      accepted.add(answeredBy(carol));
    }
    assert.ok(accepted.size >= 2, `the ${CAPPED_DAILY_REQUESTS} accepted submits spread over replicas: ${[...accepted]}`);
    const refused = new Set();
    for (let i = 0; i < REPLICAS; i++) {
      const err = await rejectionOf(carol.queue.submit(VPG, { input }));
      assert.ok(err instanceof ApiError, `${err}`);
      assert.equal(err.status, 403);
      const res = carol.responses.at(-1);
      assert.equal(res.headers.get("x-falgate-error"), "quota_exceeded");
      assert.ok(Number(res.headers.get("retry-after")) > 0, "Retry-After names the quota's reset");
      refused.add(answeredBy(carol));
    }
    assert.deepEqual([...refused].sort(), allAddrs(), "every replica refused the submit over the quota");
    const submits = viaGate(await cluster.upstreamSince(mark))
      .filter((r) => r.method === "POST" && JSON.stringify(r.body ?? "").includes(`quota probe ${run}`));
    assert.equal(submits.length, CAPPED_DAILY_REQUESTS, "fal saw exactly the quota's submits");
  });

  test("every request fal saw carried exactly the server key and nothing of the callers", T, async () => {
    await assertUpstreamHygiene(cluster);
  });

  test("no replica's logs contain FAL_KEY, a caller token or a cookie", T, async () => {
    await assertLogsHoldNoSecrets(cluster);
  });
});
