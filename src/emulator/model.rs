//! The emulated models: `fal-ai/video-prompt-generator` validates its input exactly like the seed
//! schema (pydantic-v1 style 422 `detail` items) and builds a deterministic prompt; every other
//! endpoint echoes its input.

mod schema;

use serde_json::{json, Map, Value};

use schema::{Field, Kind, FIELDS};

/// The one endpoint with a real schema.
pub(crate) const VIDEO_PROMPT_GENERATOR: &str = "fal-ai/video-prompt-generator";

/// What running a model on an input produced.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ModelResult {
    /// 200 with this output.
    Output(Value),
    /// 422 with this `detail` array.
    Invalid(Value),
    /// fal failed the job on its side with this `error_type` (a `webhook` fault's `fail`):
    /// the result is a 500, the status and the webhook carry the error type.
    Failed(String),
}

/// Runs `endpoint` on a JSON object input.
pub(crate) fn run(endpoint: &str, input: &Map<String, Value>) -> ModelResult {
    if endpoint != VIDEO_PROMPT_GENERATOR {
        return ModelResult::Output(json!({ "echo": input, "endpoint": endpoint }));
    }
    let mut values = Map::new();
    let mut errors = Vec::new();
    for field in FIELDS {
        match check(field, input.get(field.name)) {
            Ok(value) => {
                values.insert(field.name.to_owned(), Value::String(value));
            }
            Err(error) => errors.push(error),
        }
    }
    if errors.is_empty() {
        ModelResult::Output(json!({ "prompt": prompt(&values) }))
    } else {
        ModelResult::Invalid(Value::Array(errors))
    }
}

/// The 422 `detail` for a body that is not a JSON object.
pub(crate) fn not_an_object(reason: &str) -> Value {
    json!([{ "loc": ["body"], "msg": reason, "type": "type_error.dict" }])
}

/// Validates one field, returning its value with the default applied or one `detail` item.
fn check(field: &Field, value: Option<&Value>) -> Result<String, Value> {
    let loc = json!(["body", field.name]);
    match (value, field.default) {
        (None, Some(default)) => return Ok(default.to_owned()),
        (Some(Value::Null), Some(default)) if field.nullable => return Ok(default.to_owned()),
        (None, None) => {
            return Err(json!({ "loc": loc, "msg": "field required", "type": "value_error.missing" }));
        }
        (Some(Value::Null), _) => {
            return Err(
                json!({ "loc": loc, "msg": "none is not an allowed value", "type": "type_error.none.not_allowed" }),
            );
        }
        _ => {}
    }
    let given = value.and_then(Value::as_str);
    match (&field.kind, given) {
        (Kind::Str, Some(text)) => Ok(text.to_owned()),
        (Kind::Str, None) => Err(json!({ "loc": loc, "msg": "str type expected", "type": "type_error.str" })),
        (Kind::Enum(allowed), Some(text)) if allowed.contains(&text) => Ok(text.to_owned()),
        (Kind::Enum(allowed), _) => {
            let permitted: Vec<String> = allowed.iter().map(|value| format!("'{value}'")).collect();
            let msg = format!(
                "value is not a valid enumeration member; permitted: {}",
                permitted.join(", ")
            );
            Err(json!({ "loc": loc, "msg": msg, "type": "type_error.enum", "ctx": { "enum_values": allowed } }))
        }
    }
}

/// Builds the deterministic prompt; `Short`, `Medium` and `Long` add progressively more parts.
fn prompt(values: &Map<String, Value>) -> String {
    let get = |name: &str| values.get(name).and_then(Value::as_str).unwrap_or_default();
    let mut text = format!("{} video of {}.", get("style"), get("input_concept").trim());
    let length = get("prompt_length");
    if length != "Short" {
        text.push_str(&format!(
            " Camera: {}, {}. Pacing: {}.",
            get("camera_style"),
            get("camera_direction"),
            get("pacing")
        ));
    }
    if length == "Long" {
        text.push_str(&format!(" Effects: {}.", get("special_effects")));
        for (label, name) in [("", "custom_elements"), ("Reference image: ", "image_url")] {
            let extra = get(name).trim();
            if !extra.is_empty() {
                text.push_str(&format!(" {label}{extra}"));
            }
        }
    }
    text.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_json(input: Value) -> ModelResult {
        match input {
            Value::Object(map) => run(VIDEO_PROMPT_GENERATOR, &map),
            other => panic!("test input must be an object: {other}"),
        }
    }

    #[test]
    fn enum_lists_match_the_seed_page_counts() {
        let counts: Vec<(&str, usize)> = FIELDS
            .iter()
            .filter_map(|field| match field.kind {
                Kind::Enum(values) => Some((field.name, values.len())),
                Kind::Str => None,
            })
            .collect();
        let expected = [
            ("style", 10),
            ("camera_style", 21),
            ("camera_direction", 18),
            ("pacing", 20),
            ("special_effects", 21),
            ("model", 13),
            ("prompt_length", 3),
        ];
        assert_eq!(counts, expected);
    }

    #[test]
    fn defaults_apply_and_lengths_differ() {
        let medium = run_json(json!({ "input_concept": "A city", "extra": 1 }));
        let expected = "Simple video of A city. Camera: None, None. Pacing: None.";
        assert_eq!(medium, ModelResult::Output(json!({ "prompt": expected })));
        let short = run_json(json!({ "input_concept": "A city", "prompt_length": "Short" }));
        assert_eq!(
            short,
            ModelResult::Output(json!({ "prompt": "Simple video of A city." }))
        );
        let long = run_json(json!({ "input_concept": "A city", "prompt_length": "Long", "custom_elements": "Neon." }));
        let long_text = "Simple video of A city. Camera: None, None. Pacing: None. Effects: None. Neon.";
        assert_eq!(long, ModelResult::Output(json!({ "prompt": long_text })));
    }

    #[test]
    fn errors_are_reported_per_field_in_schema_order() {
        let ModelResult::Invalid(detail) =
            run_json(json!({ "style": "Bogus", "custom_elements": 5, "image_url": null }))
        else {
            panic!("expected invalid");
        };
        let types: Vec<&str> = detail
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["type"].as_str())
            .collect();
        assert_eq!(types, ["value_error.missing", "type_error.enum", "type_error.str"]);
        assert_eq!(detail[1]["ctx"]["enum_values"].as_array().map(Vec::len), Some(10));
        assert!(detail[1]["msg"].as_str().is_some_and(|m| m.contains("'Cinematic'")));
    }

    #[test]
    fn other_endpoints_echo_their_input() {
        let map = json!({ "x": [1] }).as_object().cloned().unwrap_or_default();
        assert_eq!(
            run("a/b/c", &map),
            ModelResult::Output(json!({ "echo": { "x": [1] }, "endpoint": "a/b/c" }))
        );
    }
}
