// examples/token-server and examples/web, driven in Chromium against `falgate dev`: the app (on
// the token server's origin) gets its user's token from the backend and calls falgate, on
// another origin, through proxyUrl + requestMiddleware. scripts/test builds (and type-checks)
// examples/web before this runs.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createServer } from "node:net";
import { resolve } from "node:path";

import {
  HOOK, REPO_ROOT, T, cleanEnv, emulatorRequests, launchBrowser, startDev, waitForText, withPage,
} from "./support.mjs";

const WEB = resolve(REPO_ROOT, "examples", "web");
const TOKEN_SERVER = resolve(REPO_ROOT, "examples", "token-server", "server.mjs");

/** A free port on 127.0.0.1 (the token server's, known before falgate dev starts for its CORS). */
async function freePort() {
  const server = createServer();
  await new Promise((res) => server.listen(0, "127.0.0.1", res));
  const { port } = server.address();
  await new Promise((res) => server.close(res));
  return port;
}

function startTokenServer(env) {
  const child = spawn(process.execPath, [TOKEN_SERVER], { env: cleanEnv(env), stdio: ["ignore", "pipe", "pipe"] });
  const output = [];
  child.stderr.on("data", (c) => output.push(c.toString()));
  const url = new Promise((res, rej) => {
    child.stdout.on("data", (c) => {
      output.push(c.toString());
      const m = /token-server listening on (\S+)/.exec(output.join(""));
      if (m) res(m[1]);
    });
    child.once("exit", (code) => rej(new Error(`token server exited (${code}):\n${output.join("")}`)));
  });
  return { child, url };
}

let dev;
let tokenServer;
let origin;
let browser;

before(async () => {
  assert.ok(existsSync(resolve(WEB, "dist", "main.js")), "build examples/web first (npm run build)");
  const port = await freePort();
  origin = `http://127.0.0.1:${port}`;
  [dev, browser] = await Promise.all([startDev(["--cors-origin", origin]), launchBrowser()]);
  assert.ok(dev.output.join("").includes(`Browser origins allowed (CORS; --cors-origin ORIGIN to name others): ${origin}`));
  tokenServer = startTokenServer({ FALGATE_SECRET: dev.secret, FALGATE_URL: dev.url, PORT: String(port), STATIC_DIR: WEB });
  assert.equal(await tokenServer.url, origin);
}, HOOK);

after(async () => {
  tokenServer?.child.kill("SIGTERM");
  await browser?.close();
  await dev?.stop();
}, HOOK);

test("the web example runs the model as its logged-in user, through falgate on another origin", T, async () => {
  await withPage(browser, "example-web", async (page, log) => {
    await page.goto(`${origin}/login?user=alice`);
    await waitForText(page, "who", /Logged in/);
    await page.fill("#concept", "a copyable example");
    await page.click("#run");
    const status = await waitForText(page, "status", /^COMPLETED \S|answered|Error|:/);
    assert.match(status, /^COMPLETED [0-9a-f-]{36}$/);
    assert.match(await page.textContent("#result"), /a copyable example/);
    const id = status.split(" ")[1];
    // fal saw the submit, with falgate's key and not the user's token.
    const submit = (await emulatorRequests(dev)).find(
      (r) => r.method === "POST" && r.path === "/fal-ai/video-prompt-generator" && r.body.includes("a copyable example"),
    );
    assert.ok(submit, "fal never saw the submit");
    const auth = submit.headers.find(([name]) => name === "authorization");
    assert.match(auth[1], /^Key /);
    const anonymous = await fetch(`${origin}/api/falgate-token`);
    assert.equal(anonymous.status, 401, "the token server must refuse a caller without a session");
    assert.ok(log.requests.some((u) => u.startsWith(`${dev.url}/api/fal/proxy`)));
    assert.ok(id);
  });
});

test("a file in the input is uploaded to the emulator's CDN and accepted as the image_url", T, async () => {
  await withPage(browser, "example-web-upload", async (page) => {
    await page.goto(`${origin}/login?user=bob`);
    await waitForText(page, "who", /Logged in/);
    await page.fill("#concept", "with a reference");
    // A 1x1 PNG.
    const png = Buffer.from(
      "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==",
      "base64",
    );
    await page.setInputFiles("#image", { name: "ref.png", mimeType: "image/png", buffer: png });
    await page.click("#run");
    const status = await waitForText(page, "status", /^COMPLETED \S|answered|Error|:/);
    assert.match(status, /^COMPLETED /);
    const submit = (await emulatorRequests(dev)).find(
      (r) => r.method === "POST" && r.path === "/fal-ai/video-prompt-generator" && r.body.includes("with a reference"),
    );
    const url = JSON.parse(submit.body).image_url;
    assert.ok(url.startsWith(`${dev.emulator}/_storage/files/`), url);
    // The URL serves the uploaded bytes.
    const stored = Buffer.from(await (await fetch(url)).arrayBuffer());
    assert.deepEqual(stored, png);
    const seen = (await emulatorRequests(dev)).map((r) => `${r.method} ${r.path}`);
    assert.ok(seen.includes("POST /rest.fal.ai/storage/upload/initiate"), seen.join("\n"));
  });
});

test("without a login the example says so and calls nothing", T, async () => {
  await browser.context.clearCookies();
  await withPage(browser, "example-web-logged-out", async (page, log) => {
    await page.goto(`${origin}/`);
    await waitForText(page, "status", /log in first/);
    assert.ok(!log.requests.some((u) => u.startsWith(dev.url)));
  });
});
