// The playground of `falgate dev`, in headless Chromium: a run completes from the caller's event
// stream, a bad input shows its field errors beside the fields, a second user cannot open the
// first user's request, "Open a request" lists the user's own requests, cancel reaches fal,
// streaming mode streams, and a failing case keeps a screenshot.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, rmSync } from "node:fs";
import { join } from "node:path";

import {
  ARTIFACTS,
  HOOK,
  T,
  emulatorRequests,
  launchBrowser,
  playground,
  startDev,
  waitForText,
  withPage,
  WAIT_MS,
} from "./support.mjs";

const VPG = "fal-ai/video-prompt-generator";

let dev;
let browser;

before(async () => {
  [dev, browser] = await Promise.all([startDev(), launchBrowser()]);
}, HOOK);

after(async () => {
  await browser?.close();
  await dev?.stop();
}, HOOK);

describe("playground", () => {
  test("a run completes and shows its result, from falgate's origin only, under its CSP", T, async () => {
    await withPage(browser, "run-completes", async (page, log) => {
      const violations = [];
      page.on("console", (m) => {
        if (/Content Security Policy/i.test(m.text())) violations.push(m.text());
      });
      const response = await page.goto(playground(dev, { autorun: "1", input_concept: "a lighthouse in a storm" }));
      const csp = response.headers()["content-security-policy"];
      assert.match(csp, /script-src 'self'/);
      assert.match(csp, /connect-src 'self'/);
      assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
      const result = await waitForText(page, "result", /\S/);
      assert.match(JSON.parse(result).prompt, /a lighthouse in a storm/);
      assert.equal(await page.textContent("#status"), "COMPLETED");
      assert.match(await page.textContent("#request-id"), /^[0-9a-f-]{36}$/);
      // The form came from the schema: enums as selects with their defaults, required marked.
      assert.equal(await page.$eval("#input-style", (e) => [e.tagName, e.value].join(" ")), "SELECT Simple");
      assert.equal(await page.$eval("#input-model", (e) => e.value), "google/gemini-flash-1.5");
      assert.equal(await page.$eval("#input-input_concept", (e) => e.required), true);
      assert.equal(await page.$$eval(".field[data-field=input_concept] .required-mark", (m) => m.length), 1);
      assert.equal(await page.$$eval(".field[data-field=style] .required-mark", (m) => m.length), 0);
      // The logs the emulator emitted were shown.
      assert.match(await page.textContent("#logs"), /\S/);
      const origins = new Set(log.requests.map((u) => new URL(u).origin));
      assert.deepEqual([...origins], [dev.url]);
      assert.ok(log.requests.some((u) => u.endsWith("/playground/fal-client.js")));
      assert.ok(log.requests.some((u) => u.endsWith("/api/fal/proxy")));
      assert.deepEqual(violations, []);
      assert.deepEqual(log.errors, []);
    });
  });

  test("a run completes from the event stream, not by polling", T, async () => {
    await withPage(browser, "events-complete", async (page, log) => {
      await page.goto(playground(dev, { autorun: "1", input_concept: "told by an event" }));
      const result = await waitForText(page, "result", /\S/);
      assert.match(JSON.parse(result).prompt, /told by an event/);
      assert.equal(await page.textContent("#status"), "COMPLETED");
      assert.equal(await page.$eval("#status", (e) => e.dataset.source), "events");
      assert.ok(log.requests.some((u) => u.endsWith("/api/fal/events")), "the page opened no event stream");
      // Far fewer status calls than polling every 250 ms: the backstop's and the final logs'.
      const id = await page.textContent("#request-id");
      const polls = (await emulatorRequests(dev)).filter((r) => r.path.endsWith(`/requests/${id}/status`));
      assert.ok(polls.length <= 3, `${polls.length} status polls`);
    });
  });

  test("open a request lists the user's own requests, and one opens with a click", T, async () => {
    const requestId = await withPage(browser, "list-first-user", async (page) => {
      await page.goto(playground(dev, { autorun: "1", input_concept: "listed for its owner" }));
      await waitForText(page, "result", /\S/);
      return page.textContent("#request-id");
    });
    await withPage(browser, "list-second-user", async (page) => {
      await page.goto(playground(dev, {}, dev.token2));
      await waitForText(page, "status", /^ready$/);
      // A list was shown, then a refresh shows the next (an empty list has no element to wait for).
      await page.waitForSelector("#requests[data-shown]", { state: "attached", timeout: WAIT_MS });
      const shown = Number(await page.$eval("#requests", (e) => e.dataset.shown));
      await page.click("#requests-refresh");
      await page.waitForFunction((n) => Number(document.getElementById("requests").dataset.shown) > n, shown, {
        timeout: WAIT_MS,
      });
      const ids = await page.$$eval("#requests li", (items) => items.map((i) => i.dataset.requestId));
      assert.ok(!ids.includes(requestId), "the second user saw the first user's request");
    });
    await withPage(browser, "list-first-user-again", async (page) => {
      await page.goto(playground(dev, {}));
      const item = `#requests li[data-request-id="${requestId}"]`;
      await page.waitForSelector(item, { timeout: WAIT_MS });
      assert.equal(await page.$eval(item, (e) => e.dataset.status), "COMPLETED");
      await page.click(`${item} button`);
      const result = await waitForText(page, "result", /\S/);
      assert.match(JSON.parse(result).prompt, /listed for its owner/);
    });
  });

  test("a bad input shows each field's error beside its field and reaches nothing", T, async () => {
    await withPage(browser, "field-errors", async (page) => {
      const before = (await emulatorRequests(dev)).length;
      await page.goto(
        playground(dev, { autorun: "1", image_url: "http://example.com/a.png" }),
      );
      const status = await waitForText(page, "status", /VALIDATION FAILED/);
      assert.match(status, /2 field error/);
      assert.match(await page.textContent("#error-input_concept"), /field required/);
      assert.match(await page.textContent("#error-image_url"), /scheme/i);
      assert.equal(await page.textContent("#error-style"), "");
      assert.equal(await page.$eval(".field[data-field=image_url]", (e) => e.classList.contains("invalid")), true);
      assert.equal(await page.textContent("#result"), "");
      assert.equal((await emulatorRequests(dev)).length, before, "fal saw the refused input");
    });
  });

  test("a second user cannot open the first user's request", T, async () => {
    const requestId = await withPage(browser, "first-user", async (page) => {
      await page.goto(playground(dev, { autorun: "1", input_concept: "owned by the first user" }));
      await waitForText(page, "result", /\S/);
      return page.textContent("#request-id");
    });
    await withPage(browser, "second-user", async (page) => {
      await page.goto(playground(dev, { request_id: requestId }, dev.token2));
      const status = await waitForText(page, "status", /^FAILED/);
      assert.match(status, /404 request_not_found/);
      assert.equal(await page.textContent("#result"), "");
      assert.match(await page.textContent("#who"), /dev-user-2/);
    });
    await withPage(browser, "first-user-again", async (page) => {
      await page.goto(playground(dev, { request_id: requestId }));
      const result = await waitForText(page, "result", /\S/);
      assert.match(JSON.parse(result).prompt, /owned by the first user/);
    });
  });

  test("streaming mode follows the run over the status stream", T, async () => {
    await withPage(browser, "streaming", async (page) => {
      await page.goto(playground(dev, { autorun: "1", mode: "streaming", input_concept: "streamed" }));
      const result = await waitForText(page, "result", /\S/);
      assert.match(JSON.parse(result).prompt, /streamed/);
      const id = await page.textContent("#request-id");
      const streams = (await emulatorRequests(dev)).filter(
        (r) => r.method === "GET" && r.path.endsWith(`/requests/${id}/status/stream`),
      );
      assert.equal(streams.length, 1, "the page did not stream the status");
      const polls = (await emulatorRequests(dev)).filter((r) => r.path.endsWith(`/requests/${id}/status`));
      assert.equal(polls.length, 0, "streaming mode polled");
    });
  });

  test("a failing case keeps a screenshot", T, async () => {
    const png = join(ARTIFACTS, "screenshot-self-check.png");
    rmSync(png, { force: true });
    await assert.rejects(
      withPage(browser, "screenshot-self-check", async (page) => {
        await page.goto(playground(dev, {}));
        throw new Error("deliberate failure");
      }),
      /deliberate failure/,
    );
    assert.ok(existsSync(png), "no screenshot was kept");
    rmSync(png, { force: true });
    rmSync(join(ARTIFACTS, "screenshot-self-check.log"), { force: true });
  });
});

describe("playground cancel", () => {
  let slow;
  before(async () => {
    // Jobs that run long enough to be cancelled by a click.
    slow = await startDev(["--emulator-job-ms", "30000"]);
  }, HOOK);
  after(async () => slow?.stop(), HOOK);

  test("the cancel button cancels the running request at fal", T, async () => {
    await withPage(browser, "cancel", async (page) => {
      await page.goto(playground(slow, { autorun: "1", input_concept: "never finished" }));
      await waitForText(page, "status", /IN_PROGRESS/);
      const id = await page.textContent("#request-id");
      await page.click("#cancel");
      const status = await waitForText(page, "status", /^CANCEL(LED$| FAILED)/);
      assert.equal(status, "CANCELLED");
      const cancels = (await emulatorRequests(slow)).filter(
        (r) => r.method === "PUT" && r.path === `/${VPG}/requests/${id}/cancel`,
      );
      assert.equal(cancels.length, 1);
      assert.equal(await page.textContent("#result"), "");
      // The run is over: the page may run again.
      await page.waitForFunction(() => !document.getElementById("run").disabled, null, { timeout: WAIT_MS });
    });
  });
});

describe("playground usage", () => {
  test("the limits panel shows what GET /api/fal/usage answers", T, async () => {
    const usage = await fetch(`${dev.url}/api/fal/usage`, { headers: { authorization: `Bearer ${dev.token2}` } });
    assert.equal(usage.status, 200);
    const body = await usage.json();
    await withPage(browser, "usage", async (page) => {
      await page.goto(playground(dev, {}, dev.token2));
      await page.waitForSelector("#usage:not([hidden])", { timeout: WAIT_MS });
      const rows = await page.$$eval("#usage-rows tr", (trs) =>
        trs.map((tr) => [tr.dataset.limit, tr.children[1].textContent, tr.children[2].textContent]),
      );
      assert.deepEqual(
        rows.map(([name]) => name),
        body.limits.map((l) => l.name),
      );
      for (const [name, , limit] of rows) {
        assert.equal(limit, String(body.limits.find((l) => l.name === name).limit ?? ""), name);
      }
    });
  });
});
