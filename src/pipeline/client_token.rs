//! Temporary fal tokens for `fal.realtime` and client-mode `fal.stream`: `@fal-ai/client` POSTs
//! `{"allowed_apps": [alias], "token_expiration": 120}` to `rest.fal.ai/tokens/` through the
//! proxy. The calls made with the token go to fal directly, never through falgate, so the token
//! itself is the paid call: it runs the whole pipeline (policy: the `token` operation; the
//! caller's `token` rate, day requests and `client_token_cost` credits), and its body is checked
//! here: only `allowed_apps` (aliases the caller may mint for, `Policy::check_token_apps`) and
//! `token_expiration` (lowered to `client_token_max_seconds`). What is forwarded is this
//! module's own serialisation of the checked values, never the caller's bytes.
//!
//! fal's current realtime token route, `POST rest.fal.ai/tokens/realtime`, is the same operation
//! under the same rules: its body names the lifetime `duration` (`token_expiration` is taken
//! too), and what is forwarded is `{"allowed_apps": [...], "duration": seconds}`.

use bytes::Bytes;
use serde_json::{json, Value};

use crate::error::GateError;
use crate::limits::Limiter;
use crate::policy::{Grant, Policy};
use crate::schema::{FieldError, ValidInput};

/// Most apps one token may name (the client names one).
const MAX_APPS: usize = 8;

/// Checks a token request and returns the canonical body to forward.
pub(super) fn canonical(
    policy: &Policy,
    limiter: &Limiter,
    grant: &Grant<'_>,
    input: &ValidInput,
    realtime: bool,
) -> Result<ValidInput, GateError> {
    let (_, max_seconds) = limiter.client_token_terms();
    let invalid = |field: &str, msg: &str, kind: &str| {
        GateError::Invalid(vec![FieldError {
            loc: vec![Value::from("body"), Value::from(field)],
            msg: msg.to_owned(),
            kind: kind.to_owned(),
            ctx: None,
        }])
    };
    let Value::Object(fields) = &input.value else {
        return Err(invalid("allowed_apps", "field required", "value_error.missing"));
    };
    // The lifetime's name on each route (the realtime route also takes the legacy one).
    let lifetime = if realtime { "duration" } else { "token_expiration" };
    let known: &[&str] = if realtime {
        &["allowed_apps", "duration", "token_expiration"]
    } else {
        &["allowed_apps", "token_expiration"]
    };
    if let Some(extra) = fields.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(invalid(extra, "extra fields not permitted", "value_error.extra"));
    }
    let apps = match fields.get("allowed_apps") {
        None => return Err(invalid("allowed_apps", "field required", "value_error.missing")),
        Some(Value::Array(items)) if (1..=MAX_APPS).contains(&items.len()) => items
            .iter()
            .map(|item| item.as_str().filter(|alias| is_alias(alias)).map(str::to_owned))
            .collect::<Option<Vec<String>>>()
            .ok_or_else(|| invalid("allowed_apps", "each item must be an app alias", "type_error.str"))?,
        Some(_) => {
            return Err(invalid(
                "allowed_apps",
                &format!("must be a list of 1 to {MAX_APPS} app aliases"),
                "type_error.list",
            ))
        }
    };
    if realtime && fields.contains_key("duration") && fields.contains_key("token_expiration") {
        return Err(invalid(
            "duration",
            "give duration or token_expiration, not both",
            "value_error",
        ));
    }
    let (field, given) = match (fields.get(lifetime), fields.get("token_expiration")) {
        (Some(value), _) => (lifetime, Some(value)),
        (None, value) => ("token_expiration", value),
    };
    let seconds = match given {
        None => max_seconds,
        Some(value) => value
            .as_u64()
            .filter(|seconds| *seconds >= 1)
            .ok_or_else(|| invalid(field, "must be a positive integer", "type_error.integer"))?
            .min(max_seconds),
    };
    policy.check_token_apps(grant, &apps)?;
    let value = json!({ "allowed_apps": apps, lifetime: seconds });
    Ok(ValidInput::new(Bytes::from(value.to_string()), value))
}

/// An app alias as fal spells one: a plain path segment.
fn is_alias(alias: &str) -> bool {
    (1..=128).contains(&alias.len())
        && alias != "."
        && alias != ".."
        && alias.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}
