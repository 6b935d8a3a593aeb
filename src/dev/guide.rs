//! The guide `falgate dev` prints once it listens: a real request id, tokens, and commands
//! naming falgate as it was started.

use super::*;

/// What the guide prints.
pub(super) struct Guide {
    pub(super) gate: String,
    pub(super) emulator: String,
    pub(super) token: String,
    pub(super) second_token: String,
    pub(super) secret: String,
    pub(super) secret_source: SecretSource,
    pub(super) origins: Vec<String>,
    /// Mints a token for one more user, as the shell runs it.
    pub(super) token_command: String,
}

impl Guide {
    /// Submits the example input as `dev-user`, so the guide's polling examples name a real
    /// request; `None` (and a placeholder in the guide) when that did not work, e.g. with a
    /// `--config` that does not allow the example endpoint.
    pub(super) async fn submit_example(&self) -> Option<String> {
        let answer = reqwest::Client::new()
            .post(format!("{}/api/fal/queue/{EXAMPLE_ENDPOINT}", self.gate))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(EXAMPLE_INPUT)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?;
        if !answer.status().is_success() {
            return None;
        }
        let body: serde_json::Value = answer.json().await.ok()?;
        body.get("request_id")?.as_str().map(str::to_owned)
    }

    pub(super) fn render(&self, request_id: Option<&str>) -> String {
        let Self {
            gate,
            emulator,
            token,
            second_token,
            secret,
            secret_source,
            origins,
            token_command,
        } = self;
        let queue = format!("{gate}/api/fal/queue/{EXAMPLE_ENDPOINT}");
        let (id, id_note) = match request_id {
            Some(id) => (id.to_owned(), "the request submitted at startup:"),
            None => (
                "REQUEST_ID".to_owned(),
                "put the request_id the submit answered in place of REQUEST_ID:",
            ),
        };
        let origins = origins.join(", ");
        // A secret dev did not generate may be a real one (an image's environment): never printed.
        let (signed, secret_lines) = match secret_source {
            SecretSource::Environment => (
                "the HS256 secret FALGATE_AUTH__HS256_SECRET holds (not printed: dev prints only a secret it generated)",
                format!("More users, with the same FALGATE_AUTH__HS256_SECRET set:\n  {token_command}"),
            ),
            SecretSource::Random => (
                "a random HS256 secret (pass --secret to keep one across restarts)",
                format!(
                    "export FALGATE_AUTH__HS256_SECRET={secret}\nMore users, with the secret above exported:\n  {token_command}"
                ),
            ),
            SecretSource::Flag => (
                "the HS256 secret passed with --secret",
                format!(
                    "export FALGATE_AUTH__HS256_SECRET={secret}\nMore users, with the secret above exported:\n  {token_command}"
                ),
            ),
        };
        format!(
            r#"
falgate dev is ready: fal is emulated at {emulator} (no FAL_KEY, no internet needed).

Playground (open in a browser; the token rides in the URL fragment, which is never sent):
  {gate}/#token={token}
  as the second user: {gate}/#token={second_token}

Tokens, valid 24 h, signed with {signed}:
export TOKEN={token}
export TOKEN2={second_token}
{secret_lines}

Browser origins allowed (CORS; --cors-origin ORIGIN to name others): {origins}

Submit, then poll and read {id_note}
  curl -s -X POST '{queue}' -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' -d '{EXAMPLE_INPUT}'
  curl -s '{queue}/requests/{id}/status?logs=1' -H "authorization: Bearer $TOKEN"
  curl -s '{queue}/requests/{id}' -H "authorization: Bearer $TOKEN"
The second user gets 404 for the same request:
  curl -s '{queue}/requests/{id}' -H "authorization: Bearer $TOKEN2"
Synchronous run:
  curl -s -X POST '{gate}/api/fal/run/{EXAMPLE_ENDPOINT}' -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' -d '{EXAMPLE_INPUT}'

@fal-ai/client: save as falgate-example.mjs (an ES module: top-level await and import need .mjs,
or "type": "module" in package.json), then `npm install @fal-ai/client` and `node falgate-example.mjs`.
In a browser app, get the token from your backend instead (README: "Where a frontend's token comes from").
  import {{ fal }} from "@fal-ai/client";
  fal.config({{
    proxyUrl: {{ url: "{gate}/api/fal/proxy", when: "always" }},
    requestMiddleware: async (req) => ({{ ...req, headers: {{ ...req.headers, authorization: "Bearer {token}" }} }}),
  }});
  const {{ data, requestId }} = await fal.subscribe("{EXAMPLE_ENDPOINT}", {{ input: {{ input_concept: "a lighthouse in a storm" }}, logs: true }});
  console.log(requestId, data.prompt);
"#
        )
    }
}
