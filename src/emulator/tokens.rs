//! `POST rest.fal.ai/tokens/`: fal's temporary tokens for `fal.realtime` and client-mode streams.
//! The body is `{"allowed_apps": [alias, ...], "token_expiration": seconds}`; the answer is the
//! token as a JSON string. Issued tokens are remembered ([`Emulator::issued_token`]) so a test can
//! check that a token a client holds was minted here, for which apps and how long.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::status::{detail, json_response};
use super::{lock, Emulator};

/// One token the emulator issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedToken {
    pub allowed_apps: Vec<String>,
    pub expiration: Duration,
    pub issued_at: Instant,
}

pub(crate) fn issue(emulator: &Emulator, body: &[u8]) -> Response {
    issue_as(emulator, body, false)
}

/// `POST rest.fal.ai/tokens/realtime`: body `{"allowed_apps": [...], "duration": seconds}`;
/// answered 201 `{"token": …}`.
pub(crate) fn issue_realtime(emulator: &Emulator, body: &[u8]) -> Response {
    issue_as(emulator, body, true)
}

fn issue_as(emulator: &Emulator, body: &[u8], realtime: bool) -> Response {
    let request = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
    let apps: Option<Vec<String>> = request["allowed_apps"]
        .as_array()
        .and_then(|items| items.iter().map(|item| item.as_str().map(str::to_owned)).collect());
    let lifetime = if realtime { "duration" } else { "token_expiration" };
    let (Some(apps), Some(seconds)) = (apps, request[lifetime].as_u64()) else {
        let msg = format!("allowed_apps and {lifetime} are required");
        let item = json!({ "loc": ["body"], "msg": msg, "type": "value_error.missing" });
        return detail(StatusCode::UNPROCESSABLE_ENTITY, json!([item]));
    };
    let token = format!("emu-token-{}", uuid::Uuid::new_v4());
    let issued = IssuedToken {
        allowed_apps: apps,
        expiration: Duration::from_secs(seconds),
        issued_at: Instant::now(),
    };
    lock(&emulator.inner.tokens).insert(token.clone(), issued);
    if realtime {
        return json_response(StatusCode::CREATED, &json!({ "token": token }));
    }
    json_response(StatusCode::OK, &Value::String(token))
}

impl Emulator {
    /// The token `token` if this emulator issued it.
    pub fn issued_token(&self, token: &str) -> Option<IssuedToken> {
        lock(&self.inner.tokens).get(token).cloned()
    }
}
