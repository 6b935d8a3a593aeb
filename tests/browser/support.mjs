// Support for the browser tests: a real `falgate dev` (gate + emulator + playground) on ephemeral
// ports, and headless Chromium from Debian's package driven by playwright-core. Nothing
// downloads a browser: the executable is /usr/bin/chromium (or FALGATE_CHROMIUM), launched with
// a fresh user-data-dir that is removed afterwards. A case run through `withPage` that fails
// leaves a screenshot and the page's console under artifacts/ (gitignored; CI keeps the folder).

import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const HERE = dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = resolve(HERE, "..", "..");
export const ARTIFACTS = resolve(HERE, "artifacts");
export const CHROMIUM = process.env.FALGATE_CHROMIUM || "/usr/bin/chromium";
export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
/** How long one wait in the page may take before the case fails. */
export const WAIT_MS = 15_000;
const STARTUP_TIMEOUT_MS = 20_000;
/** Per-test timeout, so a case runs bounded however its file is run (npm test adds its own). */
export const T = { timeout: 60_000 };
/** Per-hook timeout: `before` starts falgate dev (and a browser), `after` stops them. */
export const HOOK = { timeout: 2 * STARTUP_TIMEOUT_MS + 10_000 };
/** How long one call to a local server (the emulator's control API) may take. */
const CALL_TIMEOUT_MS = 10_000;

// No fal credentials in the test process or its children.
for (const name of ["FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET"]) delete process.env[name];

const children = new Set();
process.on("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});

export function falgateBin() {
  const bin = process.env.FALGATE_BIN
    ? resolve(process.env.FALGATE_BIN)
    : resolve(REPO_ROOT, "target", "debug", "falgate");
  if (!existsSync(bin)) throw new Error(`falgate binary not found at ${bin}; run \`cargo build\` or set FALGATE_BIN`);
  return bin;
}

/** The environment for children: the caller's, minus anything fal or falgate related. */
export function cleanEnv(extra = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith("FALGATE_") || k.startsWith("FAL_") || k === "RUST_LOG") continue;
    env[k] = v;
  }
  return { ...env, ...extra };
}

/**
 * Starts `falgate dev --listen 127.0.0.1:0 ...args` and resolves once its guide is printed, with
 * what the guide says: `{ url, emulator, token, token2, secret, output, stop() }`.
 */
export async function startDev(args = [], env = {}) {
  const child = spawn(falgateBin(), ["dev", "--listen", "127.0.0.1:0", ...args], {
    env: cleanEnv(env),
    cwd: REPO_ROOT,
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.add(child);
  const exited = new Promise((res) => child.once("exit", (code, signal) => res({ code, signal })));
  child.once("exit", () => children.delete(child));
  const output = [];
  child.stderr.on("data", (c) => output.push(c.toString("utf8")));
  const found = await new Promise((res, rej) => {
    let text = "";
    const timer = setTimeout(
      () => rej(new Error(`falgate dev printed no guide within ${STARTUP_TIMEOUT_MS} ms:\n${output.join("")}`)),
      STARTUP_TIMEOUT_MS,
    );
    child.stdout.on("data", (chunk) => {
      text += chunk.toString("utf8");
      output.push(chunk.toString("utf8"));
      const pick = (re) => (re.exec(text) || [])[1];
      const guide = {
        url: pick(/^falgate listening on (\S+)$/m),
        emulator: pick(/fal is emulated at (\S+) /),
        token: pick(/^export TOKEN=(\S+)$/m),
        token2: pick(/^export TOKEN2=(\S+)$/m),
        secret: pick(/^export FALGATE_AUTH__HS256_SECRET=(\S+)$/m),
      };
      if (Object.values(guide).every(Boolean) && /console\.log/.test(text)) {
        clearTimeout(timer);
        res(guide);
      }
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      rej(new Error(`falgate dev exited early (code ${code}, signal ${signal}):\n${output.join("")}`));
    });
  });
  return {
    ...found,
    output,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** Launches Chromium on a fresh profile; `close()` ends it and removes the profile. */
export async function launchBrowser() {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: apt-get install chromium (scripts/test does it)`);
  }
  const profile = mkdtempSync(join(tmpdir(), "falgate-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
  });
  return {
    context,
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/**
 * Runs `fn(page, log)` in a new tab. `log` collects console messages, page errors and every
 * request's URL. On failure a full-page screenshot and the log are written to
 * artifacts/<name>.png / .log before the error is rethrown.
 */
export async function withPage(browser, name, fn) {
  const page = await browser.context.newPage();
  const log = { console: [], errors: [], requests: [] };
  page.on("console", (m) => log.console.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => log.errors.push(String(e)));
  page.on("request", (r) => log.requests.push(r.url()));
  try {
    return await fn(page, log);
  } catch (error) {
    mkdirSync(ARTIFACTS, { recursive: true });
    const file = join(ARTIFACTS, `${name.replace(/[^a-z0-9-]+/gi, "-")}`);
    await page.screenshot({ path: `${file}.png`, fullPage: true }).catch(() => {});
    writeFileSync(`${file}.log`, JSON.stringify({ error: String(error), ...log }, null, 2));
    throw error;
  } finally {
    await page.close();
  }
}

/** Waits until `#id`'s text matches `pattern` (a RegExp) and returns the text. */
export async function waitForText(page, id, pattern) {
  const handle = await page.waitForFunction(
    ([id, source, flags]) => {
      const text = document.getElementById(id)?.textContent ?? "";
      return new RegExp(source, flags).test(text) ? text : false;
    },
    [id, pattern.source, pattern.flags],
    { timeout: WAIT_MS },
  );
  return handle.jsonValue();
}

/** The emulator's recorded requests (its test control API). */
export async function emulatorRequests(dev) {
  const answer = await fetch(`${dev.emulator}/_emulator/requests`, { signal: AbortSignal.timeout(CALL_TIMEOUT_MS) });
  return answer.json();
}

/** The playground URL for `token`, with `query` as the search string. */
export function playground(dev, query, token = dev.token) {
  const search = new URLSearchParams(query).toString();
  return `${dev.url}/${search ? `?${search}` : ""}#token=${token}`;
}
