//! The URL checks JSON Schema cannot express: allowed schemes, public hosts only, and a
//! `data:` URI's declared media type and decoded size (computed from its length, never decoded).

use std::net::IpAddr;

use serde_json::{json, Value};

use super::overlay::{media_matches, UrlRule};
use super::FieldError;

/// Checks one string field's value against its URL rule; `loc` is the field's location.
pub(super) fn check(rule: &UrlRule, value: &str, loc: &[Value]) -> Option<FieldError> {
    let error = |msg: String, kind: &str, ctx: Value| FieldError {
        loc: loc.to_vec(),
        msg,
        kind: kind.to_owned(),
        ctx: Some(ctx),
    };
    if rule
        .trusted_prefixes
        .iter()
        .any(|prefix| value.starts_with(prefix.as_str()))
    {
        return None;
    }
    let scheme = scheme_of(value);
    if let Some(schemes) = &rule.schemes {
        if !scheme
            .as_deref()
            .is_some_and(|scheme| schemes.iter().any(|allowed| allowed == scheme))
        {
            return Some(error(
                "URL scheme not permitted".into(),
                "value_error.url.scheme",
                json!({ "allowed_schemes": schemes }),
            ));
        }
    }
    if scheme.as_deref() == Some("data") {
        return check_data_uri(rule, value, &error);
    }
    if rule.schemes.is_some() && !has_public_host(value) {
        return Some(error(
            "URL host is not a public host".into(),
            "value_error.url.host",
            json!({}),
        ));
    }
    None
}

/// The lower-cased scheme of `value`, if it starts with one (RFC 3986 `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":"`).
fn scheme_of(value: &str) -> Option<String> {
    let (scheme, _) = value.split_once(':')?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|first| first.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then(|| scheme.to_ascii_lowercase())
}

/// Checks a `data:` URI's declared media type and decoded size.
fn check_data_uri(
    rule: &UrlRule,
    value: &str,
    error: &dyn Fn(String, &str, Value) -> FieldError,
) -> Option<FieldError> {
    let Some((header, data)) = value["data:".len()..].split_once(',') else {
        return Some(error(
            "invalid data URI: no `,` before the data".into(),
            "value_error.data_uri",
            json!({}),
        ));
    };
    let mut params = header.split(';');
    let media_type = match params.next().unwrap_or_default().trim().to_ascii_lowercase() {
        empty if empty.is_empty() => "text/plain".to_owned(),
        media_type => media_type,
    };
    if let Some(types) = &rule.data_uri_types {
        if !types.iter().any(|allowed| media_matches(allowed, &media_type)) {
            let permitted: Vec<String> = types.iter().map(|t| format!("'{t}'")).collect();
            let msg = format!(
                "data URI media type '{media_type}' is not permitted; permitted: {}",
                permitted.join(", ")
            );
            return Some(error(
                msg,
                "value_error.data_uri.media_type",
                json!({ "permitted": types }),
            ));
        }
    }
    let base64 = params.any(|param| param.trim().eq_ignore_ascii_case("base64"));
    let size = decoded_len(data, base64);
    match rule.data_uri_max_bytes {
        Some(limit) if size > limit => Some(error(
            format!("data URI is larger than {limit} bytes"),
            "value_error.data_uri.max_bytes",
            json!({ "limit_value": limit }),
        )),
        _ => None,
    }
}

/// The decoded byte length of a data URI's payload, from its length alone.
fn decoded_len(data: &str, base64: bool) -> usize {
    if !base64 {
        // Percent-escapes shrink when decoded, so the raw length is an upper bound.
        return data.len();
    }
    let padding = data.bytes().rev().take(2).take_while(|&b| b == b'=').count();
    (data.len() / 4 * 3 + (data.len() % 4).saturating_sub(1)).saturating_sub(padding)
}

/// Whether `value` is a URL whose host is a public DNS name or a global IP address.
fn has_public_host(value: &str) -> bool {
    let Ok(url) = url::Url::parse(value) else {
        return false;
    };
    match url.host() {
        Some(url::Host::Domain(domain)) => {
            let domain = domain.trim_end_matches('.');
            let local = ["localhost", "local", "internal", "localdomain", "home.arpa"]
                .iter()
                .any(|suffix| domain == *suffix || domain.ends_with(&format!(".{suffix}")));
            domain.contains('.') && !local
        }
        Some(url::Host::Ipv4(ip)) => is_public(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => is_public(IpAddr::V6(ip)),
        None => false,
    }
}

/// Whether `ip` is routable on the public internet (no loopback, private, link-local, CGNAT, ...).
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            let [a, b, ..] = ip.octets();
            !(ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || ip.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || a >= 224)
        }
        IpAddr::V6(ip) => {
            let first = ip.segments()[0];
            match ip.to_ipv4_mapped() {
                Some(v4) => is_public(IpAddr::V4(v4)),
                None => {
                    !(ip.is_loopback()
                        || ip.is_unspecified()
                        || (first & 0xfe00) == 0xfc00
                        || (first & 0xffc0) == 0xfe80)
                }
            }
        }
    }
}
