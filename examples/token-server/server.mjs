// A minimal backend that signs falgate tokens for its logged-in users: copy the /api/falgate-token
// handler into your own backend, behind your own login.
//
//   FALGATE_SECRET=<falgate's auth.hs256_secret>  FALGATE_URL=http://127.0.0.1:8080  node server.mjs
//
// Environment:
//   FALGATE_SECRET  the HS256 secret falgate verifies with (FALGATE_AUTH__HS256_SECRET there;
//                   `falgate dev` prints it). At least 32 bytes. Required.
//   FALGATE_URL     where the browser reaches falgate; handed to the app with each token.
//   PORT            this server's port (default 3001; 0 picks a free one).
//   STATIC_DIR      a folder to serve at / (examples/web, built), so app and backend share an origin.
//   TOKEN_TTL       token lifetime in seconds (default 600; keep it short: the browser holds it).
//
// Routes:
//   GET /login?user=alice   demo login: sets a session cookie (replace with your real login)
//   GET /api/falgate-token  {token, expires_at, falgate_url} for the logged-in user; 401 otherwise
//
// The token carries `sub` (the user id: falgate keys ownership, limits and quotas on it) and
// `tier` (falgate's auth.tier_claim: picks the user's limits and allowed endpoints).

import { randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import { createServer } from "node:http";
import { extname, join, normalize, resolve } from "node:path";

import { SignJWT } from "jose";

const secret = process.env.FALGATE_SECRET;
if (!secret || Buffer.byteLength(secret) < 32) {
  console.error("FALGATE_SECRET must be set to falgate's HS256 secret (at least 32 bytes)");
  process.exit(64);
}
const key = new TextEncoder().encode(secret);
const falgateUrl = process.env.FALGATE_URL ?? "http://127.0.0.1:8080";
const ttl = Number(process.env.TOKEN_TTL ?? 600);
const staticDir = process.env.STATIC_DIR ? resolve(process.env.STATIC_DIR) : null;

/** Your users and their plans. In a real backend: your database. */
const USERS = { alice: { tier: "pro" }, bob: { tier: "default" } };
/** Session id -> user id. In a real backend: your session store or your IdP's session. */
const sessions = new Map();

function sessionUser(req) {
  const cookie = (req.headers.cookie ?? "").split(/;\s*/).find((c) => c.startsWith("session="));
  return cookie ? sessions.get(cookie.slice("session=".length)) : undefined;
}

/** Signs a short-lived falgate token for `userId`. */
async function falgateToken(userId) {
  const now = Math.floor(Date.now() / 1000);
  const token = await new SignJWT({ tier: USERS[userId].tier })
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setSubject(userId)
    .setIssuedAt(now)
    .setExpirationTime(now + ttl)
    .sign(key);
  return { token, expires_at: now + ttl, falgate_url: falgateUrl };
}

function json(res, status, body) {
  res.writeHead(status, { "content-type": "application/json", "cache-control": "no-store" });
  res.end(JSON.stringify(body));
}

const TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css" };

async function serveStatic(res, pathname) {
  if (!staticDir) return json(res, 404, { error: "not found" });
  const file = normalize(join(staticDir, pathname === "/" ? "index.html" : pathname));
  if (!file.startsWith(staticDir)) return json(res, 404, { error: "not found" });
  try {
    const body = await readFile(file);
    res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream" });
    res.end(body);
  } catch {
    json(res, 404, { error: "not found" });
  }
}

const server = createServer(async (req, res) => {
  const url = new URL(req.url, "http://localhost");
  if (url.pathname === "/login") {
    const user = url.searchParams.get("user");
    if (!USERS[user]) return json(res, 403, { error: "unknown user" });
    const id = randomBytes(24).toString("base64url");
    sessions.set(id, user);
    res.writeHead(302, { "set-cookie": `session=${id}; HttpOnly; SameSite=Lax; Path=/`, location: "/" });
    return res.end();
  }
  if (url.pathname === "/api/falgate-token") {
    const user = sessionUser(req);
    if (!user) return json(res, 401, { error: "log in first" });
    return json(res, 200, await falgateToken(user));
  }
  return serveStatic(res, url.pathname);
});

server.listen(Number(process.env.PORT ?? 3001), "127.0.0.1", () => {
  console.log(`token-server listening on http://127.0.0.1:${server.address().port}`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
