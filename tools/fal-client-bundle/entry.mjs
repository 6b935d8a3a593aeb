// What the playground imports from the vendored bundle.
export { createFalClient, ApiError, ValidationError } from "@fal-ai/client";
