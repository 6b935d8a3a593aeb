//! Overlays: an operator or a tier tightens an endpoint's schema without copying it. Length caps,
//! narrowed enums and forbidden fields are written into the JSON Schema itself; URL rules (schemes,
//! data-URI size and type), which JSON Schema cannot express, become [`UrlRule`]s.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::source::escape;

/// Tightenings of an endpoint's input schema, keyed by top-level field name.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overlay {
    /// Per-field rules; every named field must exist in the schema.
    #[serde(default)]
    pub fields: BTreeMap<String, FieldOverlay>,
}

/// How one field is tightened. Every rule can only narrow what the schema (and any overlay
/// applied before it) allows; an overlay that would widen it is a compile error.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldOverlay {
    /// Longest string accepted, in characters (JSON Schema `maxLength`).
    pub max_length: Option<u64>,
    /// The only values accepted; each must be one the schema's `enum` already allows.
    pub allowed: Option<Vec<String>>,
    /// URL schemes accepted, e.g. `["https", "data"]`; non-data URLs must name a public host.
    pub schemes: Option<Vec<String>>,
    /// Largest decoded size of a `data:` URI, in bytes.
    pub data_uri_max_bytes: Option<usize>,
    /// Media types a `data:` URI may declare, e.g. `["image/png", "image/*"]`.
    pub data_uri_types: Option<Vec<String>>,
    /// The field may not be sent at all.
    #[serde(default)]
    pub forbidden: bool,
}

/// The URL checks for one string field, after every overlay was applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct UrlRule {
    pub(super) schemes: Option<Vec<String>>,
    pub(super) data_uri_max_bytes: Option<usize>,
    pub(super) data_uri_types: Option<Vec<String>>,
    /// Values starting with one of these pass (`SchemaSource::trusted_url_prefixes`).
    pub(super) trusted_prefixes: Vec<String>,
}

/// Why an overlay cannot apply: the JSON pointer into the schema, and the reason.
pub(super) type OverlayError = (String, String);

/// Applies `overlay` to `schema` (whose top-level properties it names), adding URL rules to `urls`.
pub(super) fn apply(
    schema: &mut Value,
    urls: &mut BTreeMap<String, UrlRule>,
    overlay: &Overlay,
) -> Result<(), OverlayError> {
    for (name, rules) in &overlay.fields {
        let pointer = format!("/properties/{}", escape(name));
        let field = schema.pointer_mut(&pointer).ok_or_else(|| {
            (
                pointer.clone(),
                format!("the overlay names `{name}`, which the schema does not have"),
            )
        })?;
        tighten(field, rules).map_err(|(at, why)| (format!("{pointer}{at}"), why))?;
        if rules.schemes.is_some() || rules.data_uri_max_bytes.is_some() || rules.data_uri_types.is_some() {
            let rule = urls.entry(name.clone()).or_default();
            merge_url_rule(rule, rules).map_err(|why| (pointer.clone(), why))?;
        }
    }
    Ok(())
}

/// Writes the schema-expressible rules into one field's schema.
fn tighten(field: &mut Value, rules: &FieldOverlay) -> Result<(), OverlayError> {
    if rules.forbidden {
        *field = Value::Bool(false);
        return Ok(());
    }
    let Value::Object(map) = field else {
        return Err((String::new(), "the field's schema is not an object".into()));
    };
    if let Some(limit) = rules.max_length {
        let current = map.get("maxLength").and_then(Value::as_u64).unwrap_or(u64::MAX);
        map.insert("maxLength".into(), json!(limit.min(current)));
    }
    if let Some(allowed) = &rules.allowed {
        narrow_enum(field, allowed)?;
    }
    Ok(())
}

/// Replaces the field's `enum` (at its top, or inside `allOf`/`anyOf`/`oneOf`) with `allowed`,
/// refusing values it did not allow; a field without an `enum` gets one.
fn narrow_enum(field: &mut Value, allowed: &[String]) -> Result<(), OverlayError> {
    let found = enum_pointer(field, "");
    let Some(values) = found
        .as_deref()
        .and_then(|at| field.pointer_mut(at))
        .and_then(Value::as_array_mut)
    else {
        if let Value::Object(map) = field {
            map.insert("enum".into(), json!(allowed));
        }
        return Ok(());
    };
    if let Some(extra) = allowed.iter().find(|value| !values.contains(&json!(value))) {
        let at = found.unwrap_or_default();
        return Err((
            at,
            format!("`{extra}` is not a value the schema allows, so an overlay cannot allow it"),
        ));
    }
    // A nullable enum stays nullable: the overlay narrows the strings, not the field's optionality.
    let keeps_null = values.contains(&Value::Null);
    *values = allowed.iter().map(|value| json!(value)).collect();
    if keeps_null {
        values.push(Value::Null);
    }
    Ok(())
}

/// The pointer (relative to `node`) of the first `enum` array in it or its combinator branches.
fn enum_pointer(node: &Value, at: &str) -> Option<String> {
    let map = node.as_object()?;
    if map.get("enum").is_some_and(Value::is_array) {
        return Some(format!("{at}/enum"));
    }
    ["allOf", "anyOf", "oneOf"].iter().find_map(|combinator| {
        let branches = map.get(*combinator)?.as_array()?;
        branches
            .iter()
            .enumerate()
            .find_map(|(index, branch)| enum_pointer(branch, &format!("{at}/{combinator}/{index}")))
    })
}

/// Tightens `rule` by `rules`: a later overlay may narrow the schemes, size and types, not widen them.
fn merge_url_rule(rule: &mut UrlRule, rules: &FieldOverlay) -> Result<(), String> {
    if let Some(schemes) = &rules.schemes {
        rule.schemes = Some(narrow_list(rule.schemes.as_deref(), schemes, "scheme")?);
    }
    if let Some(limit) = rules.data_uri_max_bytes {
        rule.data_uri_max_bytes = Some(rule.data_uri_max_bytes.map_or(limit, |current| current.min(limit)));
    }
    if let Some(types) = &rules.data_uri_types {
        rule.data_uri_types = Some(narrow_list(rule.data_uri_types.as_deref(), types, "data URI type")?);
    }
    Ok(())
}

/// `wanted` in lower case, provided each entry is matched by `current` (when there is one).
fn narrow_list(current: Option<&[String]>, wanted: &[String], what: &str) -> Result<Vec<String>, String> {
    let wanted: Vec<String> = wanted.iter().map(|value| value.to_ascii_lowercase()).collect();
    if let Some(current) = current {
        if let Some(extra) = wanted
            .iter()
            .find(|value| !current.iter().any(|have| media_matches(have, value)))
        {
            return Err(format!("{what} `{extra}` widens an earlier overlay"));
        }
    }
    Ok(wanted)
}

/// Whether `pattern` (`image/png`, `image/*`, `*/*`, or a scheme) covers `value`.
pub(super) fn media_matches(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix("/*") {
        Some("*") => true,
        Some(top) => value.split('/').next() == Some(top),
        None => pattern == value,
    }
}

#[cfg(test)]
mod tests_edges;
