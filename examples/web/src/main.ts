// Calls falgate from the browser with the official client. The only falgate-specific parts are
// `proxyUrl` (falgate's proxy route) and `requestMiddleware` (the user's falgate token).
import { fal, ApiError, ValidationError } from "@fal-ai/client";
import type { VideoPromptGeneratorInput } from "@fal-ai/client/endpoints";

/** What the backend answers (examples/token-server: GET /api/falgate-token). */
interface FalgateToken {
  token: string;
  /** Unix seconds. */
  expires_at: number;
  falgate_url: string;
}

let cached: FalgateToken | null = null;

/**
 * The logged-in user's falgate token, from our own backend (same origin, session cookie). It is
 * fetched again shortly before it expires, so a long session keeps working.
 */
async function getMyJwt(): Promise<FalgateToken> {
  if (cached && cached.expires_at * 1000 - 30_000 > Date.now()) return cached;
  const answer = await fetch("/api/falgate-token", { credentials: "same-origin" });
  if (answer.status === 401) throw new Error("log in first");
  if (!answer.ok) throw new Error(`token server answered ${answer.status}`);
  cached = (await answer.json()) as FalgateToken;
  return cached;
}

const $ = (id: string) => document.getElementById(id) as HTMLElement;

async function main(): Promise<void> {
  const { falgate_url: falgateUrl } = await getMyJwt();
  fal.config({
    proxyUrl: `${falgateUrl}/api/fal/proxy`,
    requestMiddleware: async (request) => {
      const { token } = await getMyJwt();
      return { ...request, headers: { ...request.headers, authorization: `Bearer ${token}` } };
    },
  });
  $("who").textContent = "Logged in.";
  $("form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("result").textContent = "";
    try {
      const input: VideoPromptGeneratorInput = { input_concept: ($("concept") as HTMLInputElement).value };
      // A File (or Blob) in the input is uploaded to fal's storage by the client first (through
      // falgate, which must allow uploads: `[storage] uploads = "allow"`), then sent as its URL.
      const image = ($("image") as HTMLInputElement).files?.[0];
      if (image) input.image_url = image;
      const { data, requestId } = await fal.subscribe("fal-ai/video-prompt-generator", {
        input,
        logs: true,
        onQueueUpdate: (update) => {
          $("status").textContent = update.status;
        },
      });
      $("status").textContent = `COMPLETED ${requestId}`;
      $("result").textContent = data.prompt;
    } catch (error) {
      if (error instanceof ValidationError) {
        $("status").textContent = error.fieldErrors.map((e) => `${e.loc.join(".")}: ${e.msg}`).join("; ");
      } else if (error instanceof ApiError) {
        $("status").textContent = `falgate answered ${error.status}: ${JSON.stringify(error.body)}`;
      } else {
        $("status").textContent = String(error);
      }
    }
  });
}

main().catch((error: unknown) => {
  $("status").textContent = error instanceof Error ? error.message : String(error);
});
