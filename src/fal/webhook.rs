//! The `fal_webhook` query parameter of a submit, parsed once into the URL that is checked and
//! forwarded.
//!
//! URL parsers disagree on backslashes, whitespace and percent-encoded authorities
//! (`https://hooks.example.com\@evil.example/` is `hooks.example.com` to a WHATWG parser and
//! `evil.example` to others), so such values are refused outright; anything else is held as its
//! WHATWG serialisation, and that serialisation is what the policy checks and what fal receives
//! (never the caller's raw string).

use std::fmt;

use url::Url;

/// Longest webhook URL accepted.
const MAX_WEBHOOK_LEN: usize = 2048;

/// A webhook URL in canonical form. The policy decides whether its host is allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Webhook(Url);

/// Why a `fal_webhook` value was refused before any host check.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("fal_webhook must be a plain absolute URL (no whitespace, backslashes, encoded authority or fragment)")]
pub struct WebhookError;

impl Webhook {
    /// Parses a decoded query value; refuses every form two parsers could read differently.
    pub fn parse(raw: &str) -> Result<Self, WebhookError> {
        let plain =
            !raw.is_empty() && raw.len() <= MAX_WEBHOOK_LEN && raw.bytes().all(|b| b.is_ascii_graphic() && b != b'\\');
        if !plain || authority(raw).is_none_or(|authority| authority.contains('%')) {
            return Err(WebhookError);
        }
        let url = Url::parse(raw).map_err(|_| WebhookError)?;
        if url.fragment().is_some() || url.cannot_be_a_base() {
            return Err(WebhookError);
        }
        Ok(Self(url))
    }

    /// The parsed URL (scheme, host and port are what the policy checks).
    pub fn url(&self) -> &Url {
        &self.0
    }

    /// The canonical serialisation: what fal receives.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The raw authority (`user@host:port`) after `scheme://`, or None without one.
fn authority(raw: &str) -> Option<&str> {
    let (_, rest) = raw.split_once("://")?;
    Some(rest.split(['/', '?', '#']).next().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ambiguous_webhooks_are_refused() {
        for raw in [
            "https://hooks.example.com\\@evil.example/h",
            "https://hooks.example.com/\\evil",
            "https://hooks%2Eexample.com/h",
            "https://evil.example%2F@hooks.example.com/h",
            "https://hooks.example.com\t/h",
            "https://hooks.example.com/h h",
            "https://hooks.example.com/h#frag",
            "https://hook\u{ff0e}example.com/h",
            "https:hooks.example.com/h",
            "mailto:a@hooks.example.com",
            "",
        ] {
            assert_eq!(Webhook::parse(raw), Err(WebhookError), "{raw:?}");
        }
    }

    #[test]
    fn a_webhook_is_held_in_its_canonical_form() {
        for (raw, canonical) in [
            ("https://hooks.example.com/h?x=1", "https://hooks.example.com/h?x=1"),
            ("https://hooks.example.com", "https://hooks.example.com/"),
            ("https://HOOKS.example.com:443/a/../h", "https://hooks.example.com/h"),
            ("https://hooks.example.com/%7Eh", "https://hooks.example.com/%7Eh"),
        ] {
            let hook = Webhook::parse(raw).unwrap();
            assert_eq!(hook.as_str(), canonical);
            assert_eq!(Url::parse(hook.as_str()).unwrap().as_str(), canonical, "stable");
        }
    }
}

#[cfg(test)]
mod tests_edges;
