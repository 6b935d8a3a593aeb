//! Reading one endpoint's schema file into a self-contained JSON Schema: a plain JSON Schema as
//! is, or the POST request-body schema of fal's OpenAPI document for the endpoint. Local `$ref`s
//! are inlined here; any other `$ref` is a compile error, so nothing is ever fetched.

use std::path::Path;

use serde_json::{Map, Value};

use super::CompileError;

/// How many `$ref`s may be followed inside one another before the schema counts as recursive.
const MAX_REF_DEPTH: usize = 32;

/// Reads `path` and returns the endpoint's input schema, every local `$ref` inlined.
pub(super) fn load(path: &Path, endpoint: &str) -> Result<Value, CompileError> {
    let bytes = std::fs::read(path).map_err(|source| CompileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let doc: Value = serde_json::from_slice(&bytes).map_err(|err| CompileError::Json {
        path: path.to_owned(),
        line: err.line(),
        column: err.column(),
        reason: err.to_string(),
    })?;
    let fail = |(pointer, reason): (String, String)| CompileError::Schema {
        path: path.to_owned(),
        pointer,
        reason,
    };
    if doc.get("openapi").is_some() {
        let pointer = request_body_pointer(endpoint);
        let root = doc.pointer(&pointer).ok_or_else(|| {
            fail((
                pointer.clone(),
                format!("no POST application/json request body for `/{endpoint}`"),
            ))
        })?;
        let mut schema = inline(&doc, root, &pointer, 0).map_err(fail)?;
        upgrade_openapi_30(&mut schema);
        if let Value::Object(map) = &mut schema {
            map.insert("$schema".into(), "https://json-schema.org/draft/2020-12/schema".into());
        }
        Ok(schema)
    } else {
        let mut schema = inline(&doc, &doc, "", 0).map_err(fail)?;
        if let Value::Object(map) = &mut schema {
            // Every reference into these was inlined above; dropping them keeps the result closed.
            map.remove("$defs");
            map.remove("definitions");
        }
        Ok(schema)
    }
}

/// The JSON pointer of the request body schema of `POST /{endpoint}` in an OpenAPI document.
fn request_body_pointer(endpoint: &str) -> String {
    let path = format!("/{endpoint}").replace('~', "~0").replace('/', "~1");
    format!("/paths/{path}/post/requestBody/content/application~1json/schema")
}

/// A copy of `node` (found at `pointer` in `doc`) with every local `$ref` replaced by its target.
fn inline(doc: &Value, node: &Value, pointer: &str, depth: usize) -> Result<Value, (String, String)> {
    match node {
        Value::Object(map) => match map.get("$ref") {
            Some(Value::String(reference)) => inline_ref(doc, map, reference, pointer, depth),
            _ => {
                let mut out = Map::new();
                for (key, child) in map {
                    let child_pointer = format!("{pointer}/{}", escape(key));
                    out.insert(key.clone(), inline(doc, child, &child_pointer, depth)?);
                }
                Ok(Value::Object(out))
            }
        },
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(index, child)| inline(doc, child, &format!("{pointer}/{index}"), depth))
            .collect::<Result<_, _>>()
            .map(Value::Array),
        other => Ok(other.clone()),
    }
}

/// Inlines one `{"$ref": ...}` object; sibling keywords are kept beside it in an `allOf`.
fn inline_ref(
    doc: &Value,
    map: &Map<String, Value>,
    reference: &str,
    pointer: &str,
    depth: usize,
) -> Result<Value, (String, String)> {
    let here = format!("{pointer}/$ref");
    let Some(target_pointer) = reference.strip_prefix('#') else {
        return Err((
            here,
            format!("`{reference}` is not a local reference; falgate never fetches schemas"),
        ));
    };
    if !(target_pointer.is_empty() || target_pointer.starts_with('/')) {
        return Err((here, format!("`{reference}` is not a JSON pointer reference")));
    }
    if depth >= MAX_REF_DEPTH {
        return Err((
            here,
            format!("`{reference}` is recursive; falgate needs a finite input schema"),
        ));
    }
    let target = doc
        .pointer(target_pointer)
        .ok_or_else(|| (here.clone(), format!("`{reference}` points at nothing in this file")))?;
    let resolved = inline(doc, target, target_pointer, depth + 1)?;
    if map.len() == 1 {
        return Ok(resolved);
    }
    let mut out = Map::new();
    for (key, child) in map.iter().filter(|(key, _)| key.as_str() != "$ref") {
        let child_pointer = format!("{pointer}/{}", escape(key));
        out.insert(key.clone(), inline(doc, child, &child_pointer, depth)?);
    }
    out.insert("allOf".into(), Value::Array(vec![resolved]));
    Ok(Value::Object(out))
}

/// Rewrites OpenAPI 3.0's dialect into JSON Schema: `nullable: true` and boolean exclusive bounds.
fn upgrade_openapi_30(node: &mut Value) {
    match node {
        Value::Object(map) => {
            // Only the boolean form is the keyword; a *property* named `nullable` is left alone.
            if map.get("nullable") == Some(&Value::Bool(true)) {
                map.remove("nullable");
                if let Some(kind) = map.get_mut("type").filter(|kind| kind.is_string()) {
                    *kind = Value::Array(vec![kind.take(), "null".into()]);
                }
                if let Some(Value::Array(values)) = map.get_mut("enum") {
                    values.push(Value::Null);
                }
            }
            for (exclusive, bound) in [("exclusiveMaximum", "maximum"), ("exclusiveMinimum", "minimum")] {
                if let Some(Value::Bool(flag)) = map.get(exclusive).cloned() {
                    map.remove(exclusive);
                    if let Some(limit) = map.get(bound).cloned().filter(|_| flag) {
                        map.remove(bound);
                        map.insert(exclusive.into(), limit);
                    }
                }
            }
            map.values_mut().for_each(upgrade_openapi_30);
        }
        Value::Array(items) => items.iter_mut().for_each(upgrade_openapi_30),
        _ => {}
    }
}

/// Escapes one JSON pointer segment (RFC 6901).
pub(super) fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}
