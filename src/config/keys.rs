//! The config's key names, read from the serde structs themselves, and the key path an error
//! is about.
//!
//! Unknown keys of the top level and of each section are found here, before serde reads the
//! tree: serde reports the first problem it meets, so a misspelt `[limitz]` beside a partial
//! `[limits]` would otherwise surface as `limits: missing field` instead of as the typo.

use serde::de::{self, Deserialize, Visitor};
use toml::{Table, Value};

use super::file::RawConfig;

/// The field names of a `#[derive(Deserialize)]` struct: serde's derive hands them to
/// `deserialize_struct`, so this list can never drift from the struct.
pub(crate) fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

/// The top-level keys (`listen`, `upstream`, `limits`, …).
pub(crate) fn top_level() -> &'static [&'static str] {
    fields_of::<RawConfig>()
}

/// The keys of a top-level section whose keys are fixed; `None` for the free-form ones
/// (`endpoints` and `tiers` are keyed by the operator's names) and for scalars.
fn section(key: &str) -> Option<&'static [&'static str]> {
    Some(match key {
        "upstream" => fields_of::<super::file::RawUpstream>(),
        "auth" => fields_of::<super::file::RawAuth>(),
        "request" => fields_of::<super::file::RawRequest>(),
        "storage" => fields_of::<super::file::RawStorage>(),
        "log" => fields_of::<super::file::RawLog>(),
        "webhooks" => fields_of::<crate::webhooks::RawWebhooks>(),
        "cors" => fields_of::<super::file::RawCors>(),
        "ownership" => fields_of::<super::file::RawOwnership>(),
        "events" => fields_of::<crate::events::EventsConfig>(),
        "connections" => fields_of::<super::file::RawConnections>(),
        "drain" => fields_of::<super::file::RawDrain>(),
        "telemetry" => fields_of::<super::telemetry::RawTelemetry>(),
        "limits" => fields_of::<crate::limits::LimitsConfig>(),
        "redis" => fields_of::<crate::redis::RedisConfig>(),
        "playground" => fields_of::<super::file::RawPlayground>(),
        _ => return None,
    })
}

/// The first unknown key of the top level or of a fixed section, as its path and a message.
pub(crate) fn find_unknown(table: &Table) -> Option<(Vec<String>, String)> {
    let unknown = |path: Vec<String>, known: &[&str]| {
        let list = known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
        let message = format!("`{}`: unknown key, expected one of {list}", dotted(&path));
        Some((path, message))
    };
    let top = top_level();
    if let Some(key) = table.keys().find(|k| !top.contains(&k.as_str())) {
        return unknown(vec![key.clone()], top);
    }
    for (name, value) in table {
        let (Some(known), Value::Table(inner)) = (section(name), value) else {
            continue;
        };
        if let Some(key) = inner.keys().find(|k| !known.contains(&k.as_str())) {
            return unknown(vec![name.clone(), key.clone()], known);
        }
    }
    None
}

/// A key path as written in messages: `limits.trusted_proxies`, `endpoints."a/b".schema`.
pub(crate) fn dotted(path: &[String]) -> String {
    let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
    path.iter()
        .map(|s| if plain(s) { s.clone() } else { format!("{s:?}") })
        .collect::<Vec<_>>()
        .join(".")
}

/// The key path a serde error is about, and its message. An unknown field is reported at its
/// parent by serde: the field is appended, so the path names the offending key itself.
pub(crate) fn serde_error(err: serde_path_to_error::Error<toml::de::Error>) -> (Vec<String>, String) {
    use serde_path_to_error::Segment;
    let mut path: Vec<String> = err
        .path()
        .iter()
        .filter_map(|segment| match segment {
            Segment::Map { key } => Some(key.clone()),
            Segment::Seq { index } => Some(index.to_string()),
            Segment::Enum { variant } => Some(variant.clone()),
            Segment::Unknown => None,
        })
        .collect();
    let shown = err.path().to_string();
    let message = err.into_inner().message().to_owned();
    if let Some(field) = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
    {
        path.push(field.to_owned());
    }
    (path, format!("`{shown}`: {message}"))
}

/// The key a validation message names: its first back-quoted word, when that is a key path
/// (`upstream.queue_url`, `endpoints."a/b".schema`); empty when it names none.
pub(crate) fn mentioned(message: &str) -> Vec<String> {
    let Some(quoted) = first_quoted(message) else {
        return Vec::new();
    };
    let mut path = Vec::new();
    let mut rest = quoted;
    while !rest.is_empty() {
        let segment = if let Some(inner) = rest.strip_prefix('"') {
            let Some(end) = inner.find('"') else { break };
            let segment = &inner[..end];
            rest = &inner[end + 1..];
            segment
        } else {
            let end = rest.find('.').unwrap_or(rest.len());
            let segment = &rest[..end];
            rest = &rest[end..];
            segment
        };
        path.push(segment.to_owned());
        rest = rest.strip_prefix('.').unwrap_or(rest);
    }
    if path.first().is_some_and(|first| top_level().contains(&first.as_str())) {
        path
    } else {
        Vec::new()
    }
}

/// The first back-quoted word of a message.
fn first_quoted(message: &str) -> Option<&str> {
    let mut parts = message.split('`');
    parts.next();
    parts.next().filter(|_| parts.next().is_some())
}

/// The environment variable a validation message names first (`HTTPS_PROXY`), when it is one.
pub(crate) fn variable(message: &str) -> Option<&str> {
    first_quoted(message).filter(|word| {
        !word.is_empty()
            && word
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    })
}

/// serde's "invalid type/value" messages quote the value (`integer `123``); from the
/// environment that value may be a secret, so only its kind is kept.
pub(crate) fn without_value(message: &str) -> String {
    for marker in ["invalid type: ", "invalid value: "] {
        if let Some(start) = message.find(marker) {
            let (head, rest) = message.split_at(start + marker.len());
            if let Some(at) = rest.rfind(", expected ") {
                let kind = rest[..at].split(['`', '"']).next().unwrap_or_default().trim();
                return format!("{head}{kind}{}", &rest[at..]);
            }
        }
    }
    message.to_owned()
}

/// A deserializer that only records the field list serde's derive passes to it.
struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> de::Deserializer<'de> for FieldNames<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("fields recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn key_lists_come_from_the_structs() {
        let top = top_level();
        for key in ["listen", "upstream", "limits", "redis", "endpoints", "tiers"] {
            assert!(top.contains(&key), "{key} missing from {top:?}");
        }
        assert!(section("limits").unwrap().contains(&"trusted_proxies"));
        // Every section is checked for unknown keys, except the scalars and the operator-keyed.
        let free = ["listen", "admin_listen", "public_url", "workers", "endpoints", "tiers"];
        for key in top {
            assert_eq!(section(key).is_none(), free.contains(key), "{key}");
        }
    }

    #[test]
    fn unknown_keys_are_found_at_the_top_and_in_fixed_sections_only() {
        let table: Table = "[limitz]\nx = 1\n[limits]\nburst = 1\n".parse().unwrap();
        assert_eq!(find_unknown(&table).unwrap().0, path(&["limitz"]));
        let table: Table = "[limits]\ntrusted_proxiez = []\n".parse().unwrap();
        let (at, message) = find_unknown(&table).unwrap();
        assert_eq!(at, path(&["limits", "trusted_proxiez"]));
        assert!(message.contains("`trusted_proxies`"), "{message}");
        let table: Table = "[endpoints.\"a/b\"]\nanything = 1\n".parse().unwrap();
        assert!(find_unknown(&table).is_none());
    }

    #[test]
    fn a_message_names_its_key_path() {
        assert_eq!(
            mentioned("`upstream.queue_url` is not a URL"),
            path(&["upstream", "queue_url"])
        );
        assert_eq!(
            mentioned("`endpoints.\"a/b\".schema` is required"),
            path(&["endpoints", "a/b", "schema"])
        );
        assert!(mentioned("`HTTPS_PROXY` must be an http:// proxy URL").is_empty());
        assert_eq!(
            variable("`HTTPS_PROXY` must be an http:// proxy URL"),
            Some("HTTPS_PROXY")
        );
        assert_eq!(variable("`listen` must be an address"), None);
        assert!(mentioned("no key here").is_empty());
        assert_eq!(
            dotted(&path(&["endpoints", "a/b", "schema"])),
            "endpoints.\"a/b\".schema"
        );
    }

    #[test]
    fn values_are_dropped_from_type_errors() {
        let message = without_value("invalid type: integer `12345`, expected a string");
        assert_eq!(message, "invalid type: integer, expected a string");
        let message = without_value("`a.b`: invalid type: string \"s3cr3t, expected x\", expected a sequence");
        assert_eq!(message, "`a.b`: invalid type: string, expected a sequence");
    }
}
