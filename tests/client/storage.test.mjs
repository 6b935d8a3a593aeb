// fal.storage uploads: initiate goes through the gate, the bytes go straight to the (fake) CDN.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";

import {
  HOOK, T, VPG, assertLogsHoldNoSecrets, assertUpstreamHygiene, startStack, viaGate,
} from "./support.mjs";

describe("storage uploads", () => {
  let stack;
  let fal;
  before(async () => {
    stack = await startStack();
    fal = stack.client();
  }, HOOK);
  after(async () => stack?.stop());

  test("fal.storage.upload returns a file_url that serves back the uploaded bytes", T, async () => {
    const content = `hello falgate ${randomBytes(8).toString("hex")}\n`;
    const mark = await stack.mark();
    const url = await fal.storage.upload(new Blob([content], { type: "text/plain" }));
    assert.match(url, /^https?:\/\//);
    const res = await fetch(url);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), content);

    const seen = await stack.upstreamSince(mark);
    const initiate = viaGate(seen).find((r) => r.path === "/rest.fal.ai/storage/upload/initiate");
    assert.ok(initiate, `initiate reached the storage API: ${seen.map((r) => `${r.method} ${r.path}`)}`);
    assert.equal(initiate.method, "POST");
    assert.match(initiate.query ?? "", /storage_type=fal-cdn-v3/);
    const body = typeof initiate.body === "string" ? JSON.parse(initiate.body) : initiate.body;
    assert.equal(body.content_type, "text/plain");
  });

  test("the upload PUT goes straight to upload_url and carries neither the caller's token nor the fal key", T, async () => {
    const before = fal.responses.length;
    const mark = await stack.mark();
    await fal.storage.upload(new Blob([randomBytes(64)], { type: "application/octet-stream" }));
    const calls = fal.responses.slice(before);
    assert.equal(calls.length, 2, `initiate + PUT: ${calls.map((c) => c.url)}`);
    assert.equal(calls[0].toGate, true, "initiate goes through the gate");
    assert.equal(calls[0].target, "https://rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3");
    assert.equal(calls[1].toGate, false, "the PUT does not go through the gate");
    // The emulator does not record its CDN routes, so the PUT is checked as the client sent it.
    assert.equal(calls[1].method, "PUT");
    assert.equal(calls[1].status, 200, `the PUT answered ${calls[1].status}`);
    assert.equal(calls[1].requestHeaders.get("authorization"), null, "the CDN PUT carries an Authorization");
    assert.equal(calls[1].requestHeaders.get("cookie"), null, "the CDN PUT carries a cookie");
    const seen = await stack.upstreamSince(mark);
    assert.deepEqual(seen.map((r) => `${r.method} ${r.path}`), ["POST /rest.fal.ai/storage/upload/initiate"], "only the initiate went through the gate");
  });

  test("a Blob inside subscribe input is uploaded and replaced by its URL before the submit", T, async () => {
    const mark = await stack.mark();
    const image = new Blob([randomBytes(128)], { type: "image/png" });
    const result = await fal.subscribe(VPG, { input: { input_concept: "a kite over dunes", image_url: image } });
    assert.ok(result.data.prompt.length > 0);
    const seen = viaGate(await stack.upstreamSince(mark));
    const submit = seen.find((r) => r.method === "POST" && r.path === `/${VPG}`);
    assert.ok(submit, "the submit reached fal");
    const body = typeof submit.body === "string" ? JSON.parse(submit.body) : submit.body;
    assert.match(body.image_url, /^https?:\/\//, "image_url is the uploaded file's URL");
    const back = await fetch(body.image_url);
    assert.equal(back.status, 200);
    assert.equal(Buffer.from(await back.arrayBuffer()).length, 128);
  });

  test("a file over the client's multipart threshold is uploaded in parts: only the initiate goes through the gate", T, async () => {
    // 91 MiB: over @fal-ai/client's 90 MiB threshold, ten 10 MiB parts.
    const bytes = randomBytes(91 * 1024 * 1024);
    const before = fal.responses.length;
    const mark = await stack.mark();
    const url = await fal.storage.upload(new Blob([bytes], { type: "application/octet-stream" }));
    const calls = fal.responses.slice(before);
    assert.equal(calls[0].toGate, true, "the initiate goes through the gate");
    assert.equal(calls[0].target, "https://rest.fal.ai/storage/upload/initiate-multipart?storage_type=fal-cdn-v3");
    assert.equal(calls[0].status, 200);
    const direct = calls.slice(1);
    assert.equal(direct.length, 11, `ten parts and the completion: ${direct.map((c) => `${c.method} ${c.url}`)}`);
    for (const call of direct) {
      assert.equal(call.toGate, false, `${call.method} ${call.url} went through the gate`);
      assert.equal(call.status, 200, `${call.method} ${call.url} answered ${call.status}`);
      assert.equal(call.requestHeaders.get("authorization"), null, "a part carries an Authorization");
    }
    assert.match(direct[10].url, /\/complete(\?|$)/);
    const seen = await stack.upstreamSince(mark);
    assert.deepEqual(
      seen.map((r) => `${r.method} ${r.path}`),
      ["POST /rest.fal.ai/storage/upload/initiate-multipart"],
      "only the initiate went through the gate",
    );
    const back = Buffer.from(await (await fetch(url)).arrayBuffer());
    assert.equal(back.length, bytes.length);
    const digest = (b) => createHash("sha256").update(b).digest("hex");
    assert.equal(digest(back), digest(bytes), "the joined file is the file uploaded");
  });

  test("every request fal saw carried exactly the server key and nothing of the caller", T, async () => {
    await assertUpstreamHygiene(stack);
  });

  test("the gate's logs never contain FAL_KEY, a caller token or a cookie", T, async () => {
    await assertLogsHoldNoSecrets(stack);
  });
});
