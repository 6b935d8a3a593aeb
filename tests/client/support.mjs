// Test support for the client end-to-end suite.
//
// Starts a real `falgate emulator` and a real `falgate serve` on ephemeral ports, wires the gate to
// the emulator through the environment, and hands out `@fal-ai/client` instances that talk to the
// gate through the official proxy protocol (`x-fal-target-url`). Nothing here uses a fixed port or
// a fixed sleep: startup waits for the "listening on" lines, shutdown waits for the exit event.
// `startCluster` does the same for several gates on one Redis behind nginx (balancer.mjs), whose
// replicas can be stopped and started again on their ports.

import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { connect } from "node:net";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";

import { createFalClient } from "@fal-ai/client";

import { UPSTREAM_HEADER, startNginx } from "./balancer.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = resolve(HERE, "..", "..");
export const CONFIG_PATH = resolve(HERE, "falgate.test.toml");

/** Per-test timeout: nothing in this suite may hang. */
export const TEST_TIMEOUT_MS = 20_000;
const STARTUP_TIMEOUT_MS = 15_000;
const SHUTDOWN_TIMEOUT_MS = 5_000;

export const VPG = "fal-ai/video-prompt-generator";
export const ECHO = "fal-ai/echo";
/** Not listed under [endpoints] in falgate.test.toml, so no caller may use it. */
export const NOT_ALLOWED = "fal-ai/flux/dev";

// The test process itself must never hold fal credentials: the client must not be able to fall
// back to `Authorization: Key ...` from the environment, or the gate would be bypassed silently.
for (const name of ["FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET"]) delete process.env[name];

const children = new Set();
process.on("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});

export function falgateBin() {
  const bin = process.env.FALGATE_BIN
    ? resolve(process.env.FALGATE_BIN)
    : resolve(HERE, "..", "..", "target", "debug", "falgate");
  if (!existsSync(bin)) {
    throw new Error(`falgate binary not found at ${bin}; run \`cargo build\` or set FALGATE_BIN`);
  }
  return bin;
}

/** The environment for child processes: the caller's, minus anything fal or falgate related. */
function baseEnv() {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith("FALGATE_") || k.startsWith("FAL_") || k === "RUST_LOG") continue;
    env[k] = v;
  }
  return env;
}

/**
 * Spawns `bin args` and resolves with `{child, url, output}` once a stdout line matches `pattern`
 * (whose first group is the URL). `output` keeps every stdout and stderr chunk, in order.
 */
function spawnAndWaitForUrl(name, args, env, pattern) {
  const child = spawn(falgateBin(), args, { env, cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  const output = [];
  const exited = new Promise((res) => child.once("exit", (code, signal) => res({ code, signal })));
  child.once("exit", () => children.delete(child));

  const url = new Promise((res, rej) => {
    let pending = "";
    const timer = setTimeout(() => {
      rej(new Error(`${name} did not print its listening line within ${STARTUP_TIMEOUT_MS} ms:\n${output.join("")}`));
    }, STARTUP_TIMEOUT_MS);
    child.stdout.on("data", (chunk) => {
      pending += chunk.toString("utf8");
      const lines = pending.split("\n");
      pending = lines.pop();
      for (const line of lines) {
        const m = pattern.exec(line.trim());
        if (m) {
          clearTimeout(timer);
          res(m[1].replace(/\/$/, ""));
        }
      }
    });
    child.once("error", (err) => {
      clearTimeout(timer);
      rej(err);
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      rej(new Error(`${name} exited early (code ${code}, signal ${signal}):\n${output.join("")}`));
    });
  });
  child.stdout.on("data", (c) => output.push(c.toString("utf8")));
  child.stderr.on("data", (c) => output.push(c.toString("utf8")));
  return url.then((u) => ({ child, url: u, output, exited }));
}

async function stopChild(proc) {
  if (!proc || proc.child.exitCode !== null || proc.child.signalCode !== null) return;
  proc.child.kill("SIGTERM");
  const timer = setTimeout(() => proc.child.kill("SIGKILL"), SHUTDOWN_TIMEOUT_MS);
  await proc.exited;
  clearTimeout(timer);
}

const b64url = (v) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");

/** Mints an HS256 JWT with node:crypto. `exp` defaults to now + 600 s. */
export function mintJwt(secret, { sub = "e2e-user", exp, iat, ...extra } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const header = b64url({ alg: "HS256", typ: "JWT" });
  const claims = b64url({ sub, iat: iat ?? now, exp: exp ?? now + 600, ...extra });
  const sig = createHmac("sha256", secret).update(`${header}.${claims}`).digest("base64url");
  return `${header}.${claims}.${sig}`;
}

const random = (n = 12) => randomBytes(n).toString("hex");

/** Starts a `falgate emulator` on an ephemeral port. */
function startEmulator() {
  return spawnAndWaitForUrl(
    "falgate emulator",
    ["emulator", "--listen", "127.0.0.1:0"],
    { ...baseEnv(), RUST_LOG: "info" },
    /^falgate emulator listening on (http:\/\/\S+)$/,
  );
}

/** Starts `falgate serve` in front of the emulator at `E`, listening on `listen`. */
function startGate({ configPath, E, secret, falKey, listen = "127.0.0.1:0", env = {}, name = "falgate serve" }) {
  return spawnAndWaitForUrl(
    name,
    ["serve", "--config", configPath],
    {
      ...baseEnv(),
      FALGATE_LISTEN: listen,
      FALGATE_ADMIN_LISTEN: "127.0.0.1:0",
      FALGATE_UPSTREAM__QUEUE_URL: E,
      FALGATE_UPSTREAM__RUN_URL: `${E}/fal.run`,
      FALGATE_UPSTREAM__STORAGE_URL: `${E}/rest.fal.ai`,
      FALGATE_AUTH__HS256_SECRET: secret,
      FAL_KEY: falKey,
      RUST_LOG: "info",
      ...env,
    },
    /^falgate listening on (http:\/\/\S+)$/,
  );
}

const freshSecrets = () => ({
  secret: `hs-${random(24)}`,
  falKey: `fk-canary-${random(16)}`,
  cookie: `falgate_e2e_session=ck-${random(16)}`,
});

/**
 * Starts an emulator and a gate in front of it. Returns the stack handle; call `stop()` when done.
 */
export async function startStack({ configPath = CONFIG_PATH, env = {} } = {}) {
  const emulator = await startEmulator();
  const { secret, falKey, cookie } = freshSecrets();
  let gate;
  try {
    gate = await startGate({ configPath, E: emulator.url, secret, falKey, env });
  } catch (err) {
    await stopChild(emulator);
    throw err;
  }
  return new Stack({ emulator, gate, secret, falKey, cookie });
}

class Stack {
  constructor({ emulator, gate, secret, falKey, cookie }) {
    this.emulatorProc = emulator;
    this.gateProc = gate;
    this.emulatorUrl = emulator.url;
    this.gateUrl = gate.url;
    this.proxyUrl = `${gate.url}/api/fal/proxy`;
    this.secret = secret;
    this.falKey = falKey;
    this.cookie = cookie;
    /** Every bearer token handed to the gate, valid or not: none may ever show up in its logs. */
    this.tokens = new Set();
    /** Every `x-falgate-request-id` the gate answered a client with: each must be in its logs. */
    this.requestIds = new Set();
  }

  /** Remembers the gate's request id of `res` (a response from the gate or its balancer). */
  noteRequestId(res) {
    const id = res.headers.get("x-falgate-request-id");
    if (id) this.requestIds.add(id);
  }

  /** A token signed with the gate's secret (or `secret`), remembered for the secrets check. */
  token(claims = {}, secret = this.secret) {
    const t = mintJwt(secret, claims);
    this.tokens.add(t);
    return t;
  }

  /**
   * An `@fal-ai/client` that reaches fal only through the gate's proxy route.
   * `token`: a JWT string, `null` for no Authorization header, or omitted for a fresh valid token.
   * Every response the gate sends is appended to `client.responses` ({url, toGate, target, method,
   * status, headers, requestHeaders (as sent), at}); every fetch that threw (a transport error the client may retry silently) to
   * `client.transportErrors` ({url, target, error, at}).
   */
  client({ token, sub = "e2e-user", tier, sessionCookie } = {}) {
    const bearer = sessionCookie ? null : token === undefined ? this.token(tier ? { sub, tier } : { sub }) : token;
    if (sessionCookie) this.tokens.add(sessionCookie.split("=").slice(1).join("="));
    if (bearer) this.tokens.add(bearer);
    const responses = [];
    const transportErrors = [];
    const gateUrl = this.gateUrl;
    const cookie = this.cookie;
    const stack = this;
    const fetchThroughGate = async (input, init = {}) => {
      const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
      const headers = new Headers(init.headers);
      const toGate = url.startsWith(`${gateUrl}/`);
      if (toGate) {
        if (bearer) headers.set("authorization", `Bearer ${bearer}`);
        // A browser would send its cookies to the gate; they must never reach fal.
        headers.set("cookie", sessionCookie ? `${cookie}; ${sessionCookie}` : cookie);
      }
      const target = headers.get("x-fal-target-url");
      let res;
      try {
        res = await fetch(input, { ...init, headers });
      } catch (error) {
        transportErrors.push({ url, toGate, target, error, at: Date.now() });
        throw error;
      }
      const method = (init.method ?? "GET").toUpperCase();
      if (toGate) stack.noteRequestId(res);
      responses.push({ url, toGate, target, method, status: res.status, headers: res.headers, requestHeaders: headers, at: Date.now() });
      return res;
    };
    const fal = createFalClient({
      credentials: undefined,
      suppressLocalCredentialsWarning: true,
      proxyUrl: { url: this.proxyUrl, when: "always" },
      fetch: fetchThroughGate,
    });
    fal.responses = responses;
    fal.transportErrors = transportErrors;
    /** This client's own fetch (the caller's token added, the response recorded), for token providers. */
    fal.gateFetch = fetchThroughGate;
    return fal;
  }

  /** Raw request to the gate's proxy route (for protocol checks the client cannot express). */
  async proxyFetch(target, { method = "GET", token, headers = {}, body } = {}) {
    const h = new Headers({ accept: "application/json", "content-type": "application/json", ...headers });
    if (target !== null) h.set("x-fal-target-url", target);
    const bearer = token === undefined ? this.token() : token;
    if (bearer) h.set("authorization", `Bearer ${bearer}`);
    h.set("cookie", this.cookie);
    const payload = body === undefined || typeof body === "string" ? body : JSON.stringify(body);
    const res = await fetch(this.proxyUrl, { method, headers: h, body: payload });
    this.noteRequestId(res);
    return res;
  }

  // ---- emulator control API ----

  async emulatorJson(method, path, body) {
    const res = await fetch(`${this.emulatorUrl}${path}`, {
      method,
      headers: body === undefined ? {} : { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    assert.ok(res.ok, `emulator ${method} ${path} answered ${res.status}: ${text}`);
    return text ? JSON.parse(text) : undefined;
  }

  /** Every request the emulator recorded, oldest first. */
  upstreamRequests() {
    return this.emulatorJson("GET", "/_emulator/requests");
  }

  /** A mark to pass to `upstreamSince`. */
  async mark() {
    return (await this.upstreamRequests()).length;
  }

  async upstreamSince(mark) {
    return (await this.upstreamRequests()).slice(mark);
  }

  clearUpstreamRequests() {
    return this.emulatorJson("DELETE", "/_emulator/requests");
  }

  /** Installs a fault: {op, path_contains, action, times}. */
  fault({ op = null, path_contains = null, action, times = null }) {
    return this.emulatorJson("POST", "/_emulator/faults", { op, path_contains, action, times });
  }

  clearFaults() {
    return this.emulatorJson("DELETE", "/_emulator/faults");
  }

  /** Releases the event streams a `hold` fault holds under `key`. */
  release(key) {
    return this.emulatorJson("POST", "/_emulator/release", { key });
  }

  /** Everything falgate serve has written to stdout and stderr so far. */
  gateLogs() {
    return this.gateProc.output.join("");
  }

  emulatorLogs() {
    return this.emulatorProc.output.join("");
  }

  async stopGate() {
    await stopChild(this.gateProc);
  }

  async stop() {
    await stopChild(this.gateProc);
    await stopChild(this.emulatorProc);
  }
}

/** The Redis the replica test shares between its gates ($FALGATE_TEST_REDIS_URL to override). */
export const REDIS_URL = process.env.FALGATE_TEST_REDIS_URL ?? "redis://127.0.0.1:6379";

/** Fails clearly when nothing answers PING at `url` (scripts/test starts one on 127.0.0.1:6379). */
async function assertRedisUp(url) {
  const { hostname, port } = new URL(url);
  const answer = await new Promise((res) => {
    const socket = connect({ host: hostname, port: Number(port || 6379) });
    const timer = setTimeout(() => { socket.destroy(); res("no answer within 1 s"); }, 1_000);
    socket.once("error", (err) => { clearTimeout(timer); res(err.message); });
    socket.once("connect", () => socket.write("PING\r\n"));
    socket.once("data", (d) => { clearTimeout(timer); socket.end(); res(d.toString()); });
  });
  assert.match(answer, /^\+PONG/, `Redis at ${url} does not answer PING (${answer}); scripts/test starts one`);
}

/**
 * `replicas` gates on one Redis (a fresh key prefix per run) in front of one emulator, behind
 * nginx (balancer.mjs). The handle is a Stack whose `gateUrl` is the balancer, so `client()`,
 * `proxyFetch()` and the shared assertions go through nginx; `replicas[i]` can be stopped and
 * started again on its port.
 */
export async function startCluster({ replicas = 3, configPath = CONFIG_PATH, env = {} } = {}) {
  await assertRedisUp(REDIS_URL);
  const emulator = await startEmulator();
  const secrets = freshSecrets();
  const keyPrefix = `falgate-e2e-${random(8)}`;
  const gateEnv = { FALGATE_REDIS__URL: REDIS_URL, FALGATE_REDIS__KEY_PREFIX: keyPrefix, ...env };
  const common = { configPath, E: emulator.url, secret: secrets.secret, falKey: secrets.falKey, env: gateEnv };
  const started = await Promise.allSettled(
    Array.from({ length: replicas }, (_, i) => startGate({ ...common, name: `falgate replica ${i}` })),
  );
  const procs = started.filter((s) => s.status === "fulfilled").map((s) => s.value);
  let balancer;
  try {
    const failed = started.find((s) => s.status === "rejected");
    if (failed) throw failed.reason;
    balancer = await startNginx(procs.map((p) => new URL(p.url).host));
  } catch (err) {
    await Promise.all([...procs, emulator].map(stopChild));
    throw err;
  }
  return new Cluster({ emulator, balancer, procs, common, keyPrefix, ...secrets });
}

class Cluster extends Stack {
  constructor({ emulator, balancer, procs, common, keyPrefix, secret, falKey, cookie }) {
    super({ emulator, gate: { url: balancer.url, output: [] }, secret, falKey, cookie });
    this.balancer = balancer;
    this.common = common;
    this.keyPrefix = keyPrefix;
    /** One entry per replica: its address ("127.0.0.1:PORT"), current process and all past ones. */
    this.replicas = procs.map((proc, index) => ({
      index,
      url: proc.url,
      addr: new URL(proc.url).host,
      proc,
      incarnations: [proc],
    }));
  }

  /** The replica that answered a response recorded by `client()` (the last one nginx tried). */
  static answeredBy(response) {
    return response.headers.get(UPSTREAM_HEADER)?.split(",").at(-1).trim();
  }

  /** Sends SIGTERM to replica `i`; resolves with its {code, signal} when it has exited. */
  terminate(i) {
    const { proc } = this.replicas[i];
    proc.child.kill("SIGTERM");
    return proc.exited;
  }

  /** Starts replica `i` again on its former address (after `terminate(i)` resolved). */
  async restart(i) {
    const replica = this.replicas[i];
    const proc = await startGate({ ...this.common, listen: replica.addr, name: `falgate replica ${i} (restarted)` });
    assert.equal(proc.url, replica.url, "the restarted replica listens where it did");
    replica.proc = proc;
    replica.incarnations.push(proc);
    return proc;
  }

  /** Everything every replica process, past and present, wrote to stdout and stderr. */
  gateLogs() {
    return this.replicas.flatMap((r) => r.incarnations).map((p) => p.output.join("")).join("");
  }

  async stopGate() {
    await Promise.all(this.replicas.map((r) => stopChild(r.proc)));
  }

  async stop() {
    await this.stopGate();
    await this.balancer?.stop();
    await stopChild(this.emulatorProc);
  }
}

// ---- assertions shared by the test files ----

export function headerValues(record, name) {
  return (record.headers ?? []).filter(([n]) => n.toLowerCase() === name).map(([, v]) => v);
}

/** Requests that reached the emulator through the gate (the fake CDN is called directly). */
export function viaGate(records) {
  return records.filter((r) => !r.path.startsWith("/_"));
}

/**
 * Every request fal saw carried exactly one `authorization: Key <FAL_KEY>`, never a Bearer value,
 * no cookie and no x-fal-target-url. Returns the checked records.
 */
export async function assertUpstreamHygiene(stack) {
  const records = viaGate(await stack.upstreamRequests());
  assert.ok(records.length > 0, "the emulator recorded no request made through the gate; the check would be vacuous");
  for (const r of records) {
    const where = `${r.method} ${r.path}`;
    assert.deepEqual(headerValues(r, "authorization"), [`Key ${stack.falKey}`], `${where}: authorization`);
    for (const [name, value] of r.headers) {
      assert.ok(!/bearer/i.test(value), `${where}: header ${name} carries a Bearer value`);
      for (const t of stack.tokens) assert.ok(!value.includes(t), `${where}: header ${name} carries a caller token`);
      assert.ok(!value.includes(stack.cookie), `${where}: header ${name} carries the caller's cookie`);
    }
    assert.deepEqual(headerValues(r, "cookie"), [], `${where}: cookie forwarded`);
    assert.deepEqual(headerValues(r, "x-fal-target-url"), [], `${where}: x-fal-target-url forwarded`);
  }
  return records;
}

/**
 * Stops the gate (so every log line is flushed), proves the logs hold the calls (every
 * `x-falgate-request-id` a client received appears in them: startup lines alone would make the
 * sweep vacuous), then checks that its output never contains the fal key, a caller token (or its
 * signature) or the caller's cookie.
 */
export async function assertLogsHoldNoSecrets(stack) {
  await stack.stopGate();
  const logs = stack.gateLogs();
  assert.ok(stack.requestIds.size > 0, "no client received a falgate request id; the sweep would be vacuous");
  const missing = [...stack.requestIds].filter((id) => !logs.includes(id));
  assert.deepEqual(missing, [], `${missing.length} of ${stack.requestIds.size} request ids are not in the logs`);
  assert.ok(!logs.includes(stack.falKey), "falgate logs contain FAL_KEY");
  assert.ok(!logs.includes(stack.falKey.slice("fk-canary-".length)), "falgate logs contain part of FAL_KEY");
  assert.ok(!logs.includes(stack.secret), "falgate logs contain the HS256 secret");
  assert.ok(!logs.includes(stack.cookie.split("=")[1]), "falgate logs contain the caller's cookie");
  assert.ok(stack.tokens.size > 0);
  for (const t of stack.tokens) {
    assert.ok(!logs.includes(t), "falgate logs contain a caller's bearer token");
    const signature = t.split(".")[2] ?? "";
    if (signature.length >= 16) assert.ok(!logs.includes(signature), "falgate logs contain a token signature");
  }
}

/** Resolves with the rejection of `promise`, or fails if it fulfils. */
export async function rejectionOf(promise) {
  try {
    const value = await promise;
    assert.fail(`expected a rejection, got ${JSON.stringify(value)}`);
  } catch (err) {
    if (err instanceof assert.AssertionError) throw err;
    return err;
  }
}

/** Polls the status through the gate until `requestId` is COMPLETED. */
export async function waitCompleted(fal, endpointId, requestId) {
  return fal.queue.subscribeToStatus(endpointId, { requestId, logs: false });
}

export const T = { timeout: TEST_TIMEOUT_MS };
export const HOOK = { timeout: 2 * STARTUP_TIMEOUT_MS };
