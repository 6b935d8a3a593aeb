//! fal's `x-fal-*` request header values, parsed and bounded, and written back in one canonical
//! form: what fal receives is always the value that was checked, never the caller's bytes
//! (the headers `@fal-ai/client` sends, `libs/client/src/queue.ts` and `storage.ts` in
//! `fal-ai/fal-js`; `x-fal-no-retry`: <https://docs.fal.ai/model-apis/model-endpoints/reliability>).
//! The per-tier rules over them are `policy::FalHeaderRules`.

use serde::{Deserialize, Serialize};

/// Longest runner hint accepted (fal documents no limit; hints are short routing keys).
const MAX_RUNNER_HINT: usize = 256;
/// Longest `x-fal-request-timeout` accepted, in seconds (a day).
pub const MAX_REQUEST_TIMEOUT_SECONDS: f64 = 86_400.0;
/// Longest object expiration accepted, in seconds (100 years: longer than fal's "1y" preset).
const MAX_EXPIRATION_SECONDS: u64 = 100 * 365 * 86_400;
/// Most ACL rules accepted in one lifecycle.
const MAX_ACL_RULES: usize = 32;
/// Longest user name in an ACL rule.
const MAX_ACL_USER: usize = 256;

/// Why a header value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid value")]
pub struct HeaderValueError;

/// `x-fal-request-timeout`: seconds before processing starts, more than 1 (fal's clients refuse
/// less), at most a day.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct RequestTimeout(f64);

impl RequestTimeout {
    /// Parses `30`, `30.0` or `30.5`.
    pub fn parse(raw: &str) -> Result<Self, HeaderValueError> {
        let plain = !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        let secs = raw.parse::<f64>().ok().filter(|_| plain).ok_or(HeaderValueError)?;
        Self::new(secs)
    }

    /// A timeout of `secs` seconds, when in bounds.
    pub fn new(secs: f64) -> Result<Self, HeaderValueError> {
        if secs.is_finite() && secs > 1.0 && secs <= MAX_REQUEST_TIMEOUT_SECONDS {
            Ok(Self(secs))
        } else {
            Err(HeaderValueError)
        }
    }

    /// The canonical header value: no trailing `.0`, the shortest decimal otherwise.
    pub fn to_header(self) -> String {
        format!("{}", self.0)
    }
}

/// `x-fal-object-lifecycle-preference` / `x-fal-object-lifecycle`: how long fal keeps the
/// objects a call makes, and who may read them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectLifecycle {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_duration_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_acl: Option<Acl>,
}

/// The initial access rules of a lifecycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acl {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Decision>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AclRule>,
}

/// One user's access rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    pub user: String,
    pub decision: Decision,
}

/// An access decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Hide,
    Forbid,
    Allow,
}

impl ObjectLifecycle {
    /// Parses the header's JSON (unknown or duplicate fields refused) and checks its bounds.
    pub fn parse(raw: &str) -> Result<Self, HeaderValueError> {
        // serde would also read a struct from an array; fal's format is an object.
        if !raw.trim_start().starts_with('{') {
            return Err(HeaderValueError);
        }
        let lifecycle: Self = serde_json::from_str(raw).map_err(|_| HeaderValueError)?;
        lifecycle.check().map(|()| lifecycle)
    }

    /// Checks the bounds (also for a lifecycle written in the config).
    pub fn check(&self) -> Result<(), HeaderValueError> {
        let rules = self.initial_acl.as_ref().map_or(&[][..], |acl| &acl.rules[..]);
        let bounded = self
            .expiration_duration_seconds
            .is_none_or(|secs| secs <= MAX_EXPIRATION_SECONDS)
            && rules.len() <= MAX_ACL_RULES
            && rules.iter().all(|rule| {
                !rule.user.is_empty() && rule.user.len() <= MAX_ACL_USER && !rule.user.chars().any(char::is_control)
            });
        if bounded {
            Ok(())
        } else {
            Err(HeaderValueError)
        }
    }

    /// Lowers the expiration to `max` seconds (a lifecycle without one, kept forever, gets `max`).
    pub fn cap_expiration(&mut self, max: u64) {
        let secs = self.expiration_duration_seconds.map_or(max, |secs| secs.min(max));
        self.expiration_duration_seconds = Some(secs);
    }

    /// The canonical header value: compact JSON, fields in a fixed order.
    pub fn to_header(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// `x-fal-runner-hint`: a free-form routing key; printable ASCII without spaces, bounded.
pub fn check_runner_hint(raw: &str) -> Result<&str, HeaderValueError> {
    if !raw.is_empty() && raw.len() <= MAX_RUNNER_HINT && raw.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(raw)
    } else {
        Err(HeaderValueError)
    }
}

/// `x-fal-no-retry`: `1`/`true`/`yes` turn fal's retries off (canonically `1`); `0`/`false`/`no`
/// are fal's default (nothing is sent).
pub fn parse_no_retry(raw: &str) -> Result<bool, HeaderValueError> {
    match raw {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => Err(HeaderValueError),
    }
}

/// `x-fal-disable-fallbacks`: `1`/`true`/`yes` ask fal not to route the call to a fallback
/// (canonically `true`); `0`/`false`/`no` are fal's default (nothing is sent).
pub fn parse_disable_fallbacks(raw: &str) -> Result<bool, HeaderValueError> {
    parse_no_retry(raw)
}

/// `x-fal-store-io`: `0` asks fal not to keep the call's input and output, `1` to keep them.
pub fn parse_store_io(raw: &str) -> Result<bool, HeaderValueError> {
    match raw {
        "1" => Ok(true),
        "0" => Ok(false),
        _ => Err(HeaderValueError),
    }
}

/// fal's queue priorities, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    Low,
    Normal,
}

impl Priority {
    /// Parses fal's header value.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "low" => Some(Self::Low),
            "normal" => Some(Self::Normal),
            _ => None,
        }
    }

    /// fal's header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Normal => "normal",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_timeouts_are_bounded_and_canonical() {
        assert_eq!(RequestTimeout::parse("30").unwrap().to_header(), "30");
        assert_eq!(RequestTimeout::parse("30.0").unwrap().to_header(), "30");
        assert_eq!(RequestTimeout::parse("30.50").unwrap().to_header(), "30.5");
        for bad in ["1", "0.5", "-5", "NaN", "inf", "1e3", " 30", "30s", "", "86401", "+30"] {
            assert!(RequestTimeout::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lifecycles_are_strict_bounded_and_rewritten_canonically() {
        let raw = r#" { "initial_acl": {"rules": [{"decision": "allow", "user": "u1"}], "default": "forbid"},
                       "expiration_duration_seconds": 3600 } "#;
        let lifecycle = ObjectLifecycle::parse(raw).unwrap();
        assert_eq!(
            lifecycle.to_header(),
            r#"{"expiration_duration_seconds":3600,"initial_acl":{"default":"forbid","rules":[{"user":"u1","decision":"allow"}]}}"#
        );
        for bad in [
            r#"{"expiration_duration_seconds":1,"expiration_duration_seconds":2}"#,
            r#"{"expiration_duration_seconds":-1}"#,
            r#"{"expiration_duration_seconds":99999999999999}"#,
            r#"{"expiration_duration_seconds":"60"}"#,
            r#"{"other":1}"#,
            r#"{"initial_acl":{"default":"public"}}"#,
            r#"{"initial_acl":{"rules":[{"user":"","decision":"allow"}]}}"#,
            r#"[]"#,
            "",
        ] {
            assert!(ObjectLifecycle::parse(bad).is_err(), "{bad}");
        }
        let many = format!(
            r#"{{"initial_acl":{{"rules":[{}]}}}}"#,
            vec![r#"{"user":"u","decision":"hide"}"#; 33].join(",")
        );
        assert!(ObjectLifecycle::parse(&many).is_err());
    }

    #[test]
    fn an_expiration_cap_lowers_or_sets_the_expiration() {
        let mut long = ObjectLifecycle::parse(r#"{"expiration_duration_seconds":604800}"#).unwrap();
        long.cap_expiration(3600);
        assert_eq!(long.expiration_duration_seconds, Some(3600));
        let mut forever = ObjectLifecycle::parse(r#"{"initial_acl":{"default":"hide"}}"#).unwrap();
        forever.cap_expiration(3600);
        assert_eq!(forever.expiration_duration_seconds, Some(3600));
        let mut short = ObjectLifecycle::parse(r#"{"expiration_duration_seconds":60}"#).unwrap();
        short.cap_expiration(3600);
        assert_eq!(short.expiration_duration_seconds, Some(60));
    }
}

#[cfg(test)]
mod tests_edges;
