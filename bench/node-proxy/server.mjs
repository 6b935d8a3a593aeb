// fal's official server proxy (@fal-ai/server-proxy, Express adapter) as bench/run's
// comparison target, configured the way its README shows.
//
// The proxy takes its upstream from the caller's `x-fal-target-url`, which its allowlist only
// admits on fal's hosts (`https://queue.fal.run/...`). To point it at the local static upstream
// without editing the package, this server wraps `globalThis.fetch` and rewrites
// `https://queue.fal.run` to UPSTREAM (e.g. `http://127.0.0.1:18081`); everything else the
// proxy does (URL allowlist, header copying, relay) runs unchanged.
//
// Env: PORT (listen port on 127.0.0.1), UPSTREAM (base URL), FAL_KEY.
import express from "express";
import { createHandler, route } from "@fal-ai/server-proxy/express";

const port = Number(process.env.PORT ?? 18083);
const upstream = process.env.UPSTREAM ?? "http://127.0.0.1:18081";
const falQueue = "https://queue.fal.run";

const realFetch = globalThis.fetch;
globalThis.fetch = (input, init) => {
  const url = typeof input === "string" ? input : input.url;
  const local = url.startsWith(falQueue) ? upstream + url.slice(falQueue.length) : url;
  return realFetch(local, init);
};

const app = express();
app.all(route, express.json(), createHandler());
app.listen(port, "127.0.0.1", () => console.log(`node proxy on 127.0.0.1:${port} -> ${upstream}`));
