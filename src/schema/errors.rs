//! Turns `jsonschema` errors into fal's own 422 items: pydantic-v1 `loc`, `msg` and `type`
//! (`value_error.missing`, `type_error.enum` with `ctx.enum_values`, ...), one per failing field,
//! at most [`MAX_ITEMS`] of them: an input with a million bad fields gets 50 items and a count.

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::paths::LocationSegment;
use jsonschema::{JsonType, ValidationError};
use serde_json::{json, Value};

use super::strict::{shown, shown_key};
use super::FieldError;

/// Most field errors one 422 lists; the rest are counted in one last item.
pub(crate) const MAX_ITEMS: usize = 50;

/// The items kept for a 422, and how many were found in all.
#[derive(Default)]
pub(super) struct Items {
    kept: Vec<FieldError>,
    found: usize,
}

impl Items {
    pub(super) fn push(&mut self, item: FieldError) {
        self.found += 1;
        if self.kept.len() < MAX_ITEMS {
            self.kept.push(item);
        }
    }

    pub(super) fn is_full(&self) -> bool {
        self.kept.len() == MAX_ITEMS
    }

    /// Counts `n` more items without keeping them.
    pub(super) fn count_more(&mut self, n: usize) {
        self.found += n;
    }

    /// The kept items and how many more were found.
    pub(super) fn finish(self) -> (Vec<FieldError>, usize) {
        let more = self.found - self.kept.len();
        (self.kept, more)
    }
}

/// The last item of a 422 whose errors did not all fit.
pub(super) fn more_item(more: usize) -> Option<FieldError> {
    (more > 0).then(|| FieldError {
        loc: vec![Value::from("body")],
        msg: format!("{more} more errors not shown (at most {MAX_ITEMS} are listed)"),
        kind: "too_many_errors".into(),
        ctx: Some(json!({ "more": more })),
    })
}

/// fal's item for a body that is valid JSON but not an object (pydantic v1's `type_error.dict`).
pub(super) fn not_an_object() -> FieldError {
    FieldError {
        loc: vec![Value::from("body")],
        msg: "value is not a valid dict".into(),
        kind: "type_error.dict".into(),
        ctx: None,
    }
}

/// The fal items for one `jsonschema` error on `root` (the whole input), appended to `out`.
pub(super) fn push_field_errors(root: &Value, error: &ValidationError<'_>, out: &mut Items) {
    let loc = loc_of(root, error);
    let item = |loc: Vec<Value>, msg: String, kind: &str, ctx: Option<Value>| FieldError {
        loc,
        msg,
        kind: kind.to_owned(),
        ctx,
    };
    let limit = |limit: Value| Some(json!({ "limit_value": limit }));
    match error.kind() {
        ValidationErrorKind::Required { property } => {
            let mut loc = loc;
            loc.push(property.clone());
            out.push(item(loc, "field required".into(), "value_error.missing", None));
        }
        ValidationErrorKind::AdditionalProperties { unexpected }
        | ValidationErrorKind::UnevaluatedProperties { unexpected } => {
            for name in unexpected {
                if out.is_full() {
                    // Counted, not built: a flood of keys costs no item per key.
                    out.count_more(1);
                    continue;
                }
                let mut loc = loc.clone();
                loc.push(Value::String(shown_key(name)));
                out.push(item(
                    loc,
                    "extra fields not permitted".into(),
                    "value_error.extra",
                    None,
                ));
            }
        }
        ValidationErrorKind::Type { kind } => {
            let (msg, kind) = type_error(error.instance(), kind);
            out.push(item(loc, msg.into(), kind, None));
        }
        ValidationErrorKind::Enum { options } => {
            let permitted: Vec<String> = options
                .as_array()
                .map_or_else(Vec::new, |values| values.iter().map(quoted).collect());
            let msg = format!(
                "value is not a valid enumeration member; permitted: {}",
                permitted.join(", ")
            );
            out.push(item(
                loc,
                msg,
                "type_error.enum",
                Some(json!({ "enum_values": &**options })),
            ));
        }
        ValidationErrorKind::Constant { expected_value } => {
            let msg = format!("unexpected value; permitted: {}", quoted(expected_value));
            out.push(item(
                loc,
                msg,
                "value_error.const",
                Some(json!({ "given": error.instance(), "permitted": [&**expected_value] })),
            ));
        }
        ValidationErrorKind::MaxLength { limit: max } => {
            let msg = format!("ensure this value has at most {max} characters");
            out.push(item(loc, msg, "value_error.any_str.max_length", limit(json!(max))));
        }
        ValidationErrorKind::MinLength { limit: min } => {
            let msg = format!("ensure this value has at least {min} characters");
            out.push(item(loc, msg, "value_error.any_str.min_length", limit(json!(min))));
        }
        ValidationErrorKind::Maximum { limit: max } => {
            let msg = format!("ensure this value is less than or equal to {max}");
            out.push(item(loc, msg, "value_error.number.not_le", limit(max.clone())));
        }
        ValidationErrorKind::Minimum { limit: min } => {
            let msg = format!("ensure this value is greater than or equal to {min}");
            out.push(item(loc, msg, "value_error.number.not_ge", limit(min.clone())));
        }
        ValidationErrorKind::ExclusiveMaximum { limit: max } => {
            out.push(item(
                loc,
                format!("ensure this value is less than {max}"),
                "value_error.number.not_lt",
                limit(max.clone()),
            ));
        }
        ValidationErrorKind::ExclusiveMinimum { limit: min } => {
            out.push(item(
                loc,
                format!("ensure this value is greater than {min}"),
                "value_error.number.not_gt",
                limit(min.clone()),
            ));
        }
        ValidationErrorKind::MaxItems { limit: max } => {
            out.push(item(
                loc,
                format!("ensure this value has at most {max} items"),
                "value_error.list.max_items",
                limit(json!(max)),
            ));
        }
        ValidationErrorKind::MinItems { limit: min } => {
            out.push(item(
                loc,
                format!("ensure this value has at least {min} items"),
                "value_error.list.min_items",
                limit(json!(min)),
            ));
        }
        ValidationErrorKind::Pattern { pattern } => {
            let msg = format!("string does not match regex \"{pattern}\"");
            out.push(item(
                loc,
                msg,
                "value_error.str.regex",
                Some(json!({ "pattern": pattern })),
            ));
        }
        ValidationErrorKind::FalseSchema => {
            out.push(item(
                loc,
                "this field is not allowed".into(),
                "value_error.forbidden",
                None,
            ));
        }
        // jsonschema's own text may quote the caller's value: cut it.
        _ => out.push(item(loc, shown(&error.to_string(), 200), "value_error", None)),
    }
}

/// pydantic-v1's message and type for a value of the wrong JSON type.
fn type_error(instance: &Value, expected: &TypeKind) -> (&'static str, &'static str) {
    if instance.is_null() {
        return ("none is not an allowed value", "type_error.none.not_allowed");
    }
    let wanted = match expected {
        TypeKind::Single(kind) => Some(*kind),
        TypeKind::Multiple(set) => set.iter().find(|kind| *kind != JsonType::Null),
    };
    match wanted {
        Some(JsonType::String) => ("str type expected", "type_error.str"),
        Some(JsonType::Integer) => ("value is not a valid integer", "type_error.integer"),
        Some(JsonType::Number) => ("value is not a valid float", "type_error.float"),
        Some(JsonType::Boolean) => ("value could not be parsed to a boolean", "type_error.bool"),
        Some(JsonType::Array) => ("value is not a valid list", "type_error.list"),
        Some(JsonType::Object) => ("value is not a valid dict", "type_error.dict"),
        Some(JsonType::Null) | None => ("value is not none", "type_error.none.allowed"),
    }
}

/// `["body", ...]` for the instance location (keys shown escaped and truncated) of `error`, with keys as strings and indices as
/// numbers (decided by walking `root`, so a key spelled `"0"` stays a string).
fn loc_of(root: &Value, error: &ValidationError<'_>) -> Vec<Value> {
    let mut loc = vec![Value::from("body")];
    let mut node = Some(root);
    for segment in error.instance_path().segments() {
        let key = match &segment {
            LocationSegment::Property(key) => key.to_string(),
            LocationSegment::Index(index) => index.to_string(),
        };
        match node {
            Some(Value::Array(items)) => {
                let index = key.parse::<usize>().ok();
                node = index.and_then(|index| items.get(index));
                loc.push(index.map_or_else(|| Value::String(key), Value::from));
            }
            Some(Value::Object(map)) => {
                node = map.get(&key);
                loc.push(Value::String(shown_key(&key)));
            }
            _ => {
                node = None;
                loc.push(Value::String(shown_key(&key)));
            }
        }
    }
    loc
}

/// A value the way pydantic prints it in a message: strings in single quotes.
fn quoted(value: &Value) -> String {
    match value {
        Value::String(text) => format!("'{text}'"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests_edges;
