// `fal.realtime` through falgate: the official client mints its temporary fal token through the
// proxy route (`POST https://rest.fal.ai/tokens/`, falgate adds the server key), then opens the
// realtime WebSocket to fal itself with that token. The emulator's realtime path is an echo that
// accepts only tokens it issued, so an echo proves the token came from fal via falgate, and a
// forged token is refused by "fal" the way fal refuses it (HTTP 401 on the upgrade).

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { resolve } from "node:path";

import { WebSocket as WsWebSocket } from "ws";

import { HOOK, T, assertLogsHoldNoSecrets, startStack } from "./support.mjs";

const APP = "fal-ai/realtime-echo";
const CONFIG = resolve(import.meta.dirname ?? new URL(".", import.meta.url).pathname, "falgate.realtime.toml");
const REALTIME_PATH = `/fal.run/${APP}/realtime`;

/**
 * `@fal-ai/client` opens `new WebSocket("wss://fal.run/...")` with the global WebSocket and a
 * hardcoded host (no config reaches it), and Node 20 has no global WebSocket. This shim is the
 * `ws` package with that one origin mapped to the emulator, which serves fal.run under `/fal.run/`.
 */
function installWebSocketShim(emulatorUrl) {
  const previous = globalThis.WebSocket;
  const base = emulatorUrl.replace(/^http/, "ws");
  const rewrite = (url) => String(url).replace(/^wss:\/\/fal\.run\//, `${base}/fal.run/`);
  globalThis.WebSocket = class extends WsWebSocket {
    constructor(url, ...rest) {
      super(rewrite(url), ...rest);
    }
  };
  return () => {
    globalThis.WebSocket = previous;
  };
}

/**
 * The `tokenProvider` README shows (the client's built-in one is deprecated): mints the fal token
 * through falgate's proxy route with the caller's JWT, exactly the request the built-in one made.
 * `app` is `owner/alias/path`; fal scopes tokens by alias.
 */
const tokenThroughGate = (fal, proxyUrl) => async (app) => {
  const res = await fal.gateFetch(proxyUrl, {
    method: "POST",
    headers: { "content-type": "application/json", "x-fal-target-url": "https://rest.fal.ai/tokens/" },
    body: JSON.stringify({ allowed_apps: [app.split("/")[1]], token_expiration: 120 }),
  });
  if (!res.ok) throw new Error(`falgate refused the token: ${res.status} ${await res.text()}`);
  return res.json();
};

/** Connects with `handler` extras, sends `input`, and settles on the first result or error. */
function roundTrip(fal, input, handler = {}) {
  let connection;
  const settled = new Promise((res, rej) => {
    connection = fal.realtime.connect(APP, { throttleInterval: 0, ...handler, onResult: res, onError: rej });
  });
  connection.send(input);
  return settled.finally(() => connection.close());
}

const tokenOf = (recorded) => new URLSearchParams(recorded.query ?? "").get("fal_jwt_token");

describe("fal.realtime with a temporary token minted through falgate", () => {
  let stack;
  let restore;
  /** The fal token falgate relayed in the first test. */
  let falToken;
  before(async () => {
    stack = await startStack({ configPath: CONFIG });
    restore = installWebSocketShim(stack.emulatorUrl);
  }, HOOK);
  after(async () => {
    restore?.();
    await stack?.stop();
  });

  test("the client gets its token through falgate and the realtime echo answers", T, async () => {
    const fal = stack.client();
    const mark = await stack.mark();
    const output = await roundTrip(
      fal,
      { prompt: "a lighthouse at dawn", seed: 7 },
      { tokenProvider: tokenThroughGate(fal, stack.proxyUrl), tokenExpirationSeconds: 120 },
    );
    assert.deepEqual(output, { prompt: "a lighthouse at dawn", seed: 7 });

    const minted = fal.responses.filter((r) => r.target === "https://rest.fal.ai/tokens/");
    assert.deepEqual(minted.map((r) => [r.method, r.status, r.toGate]), [["POST", 200, true]]);
    const seen = await stack.upstreamSince(mark);
    assert.deepEqual(seen.map((r) => `${r.method} ${r.path}`), ["POST /rest.fal.ai/tokens/", `GET ${REALTIME_PATH}`]);
    const [mint, socket] = seen;
    const auth = mint.headers.filter(([name]) => name === "authorization").map(([, value]) => value);
    assert.deepEqual(auth, [`Key ${stack.falKey}`], "fal got the server key, not the caller's JWT");
    assert.deepEqual(JSON.parse(mint.body), { allowed_apps: ["realtime-echo"], token_expiration: 120 });
    const token = tokenOf(socket);
    assert.match(token ?? "", /^emu-token-/, "the socket carried the token fal issued");
    falToken = token;
    assert.ok(!stack.tokens.has(token), "the socket never carries the caller's JWT");
    assert.ok(!socket.headers.some(([name]) => name === "authorization"), "no credential header to fal's socket");
  });

  test("a token minted through fal's current POST /tokens/realtime works the same", T, async () => {
    const fal = stack.client();
    const mark = await stack.mark();
    const realtimeToken = async (app) => {
      const res = await fal.gateFetch(stack.proxyUrl, {
        method: "POST",
        headers: { "content-type": "application/json", "x-fal-target-url": "https://rest.fal.ai/tokens/realtime" },
        body: JSON.stringify({ allowed_apps: [app.split("/")[1]], duration: 120 }),
      });
      if (res.status !== 201) throw new Error(`falgate refused the token: ${res.status} ${await res.text()}`);
      return (await res.json()).token;
    };
    const output = await roundTrip(fal, { prompt: "current route" }, { tokenProvider: realtimeToken, tokenExpirationSeconds: 120 });
    assert.deepEqual(output, { prompt: "current route" });
    const seen = await stack.upstreamSince(mark);
    assert.deepEqual(seen.map((r) => `${r.method} ${r.path}`), ["POST /rest.fal.ai/tokens/realtime", `GET ${REALTIME_PATH}`]);
    assert.deepEqual(JSON.parse(seen[0].body), { allowed_apps: ["realtime-echo"], duration: 120 });
    assert.match(tokenOf(seen[1]) ?? "", /^emu-token-/, "the socket carried the token fal issued");
  });

  test("a token fal did not issue is refused by fal: 401 on the upgrade, onError and no result", T, async () => {
    const forged = "emu-token-00000000-0000-4000-8000-000000000000";
    const status = await new Promise((res, rej) => {
      const ws = new WsWebSocket(`${stack.emulatorUrl.replace(/^http/, "ws")}${REALTIME_PATH}?fal_jwt_token=${forged}`);
      ws.on("unexpected-response", (_req, response) => {
        res(response.statusCode);
        ws.terminate();
      });
      ws.on("open", () => rej(new Error("the forged token was accepted")));
      ws.on("error", () => {});
    });
    assert.equal(status, 401);

    const mark = await stack.mark();
    const fal = stack.client();
    const outcome = await roundTrip(fal, { prompt: "x" }, { tokenProvider: async () => forged }).then(
      (output) => ({ output }),
      (error) => ({ error }),
    );
    assert.ok(outcome.error, `a forged token produced a result: ${JSON.stringify(outcome.output)}`);
    const seen = await stack.upstreamSince(mark);
    assert.deepEqual(seen.map((r) => `${r.method} ${r.path} ${tokenOf(r)}`), [`GET ${REALTIME_PATH} ${forged}`]);
    assert.deepEqual(fal.responses, [], "a token provider of its own sends nothing to falgate");
  });

  test("falgate's logs hold neither the fal token it relayed nor any secret", T, async () => {
    assert.ok(falToken, "the first test relayed no token");
    await assertLogsHoldNoSecrets(stack);
    assert.ok(!stack.gateLogs().includes(falToken), "falgate logs contain the temporary fal token");
  });
});
