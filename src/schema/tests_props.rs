//! Property tests: inputs generated from the shipped schema's enums always pass, and corrupting
//! any one field fails with exactly that field's `loc`.

use std::sync::LazyLock;

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::tests::{check, compile, seed_source, shipped};
use super::*;

static SCHEMAS: LazyLock<Schemas> = LazyLock::new(|| compile(seed_source()));

/// Every field of the shipped schema with its enum values (empty for free text).
static FIELDS: LazyLock<Vec<(String, Vec<String>)>> = LazyLock::new(|| {
    let text = std::fs::read_to_string(shipped("video-prompt-generator.json")).expect("shipped schema");
    let schema: Value = serde_json::from_str(&text).expect("JSON");
    let properties = schema["properties"].as_object().expect("properties");
    properties
        .iter()
        .map(|(name, field)| {
            let values = field["enum"].as_array().map_or_else(Vec::new, |values| {
                values.iter().filter_map(Value::as_str).map(str::to_owned).collect()
            });
            (name.clone(), values)
        })
        .collect()
});

/// One optional value per field: an enum member, free text, or (for `image_url`) null.
fn field_value(name: &str, values: &[String]) -> BoxedStrategy<Option<Value>> {
    if !values.is_empty() {
        return proptest::option::of(proptest::sample::select(values.to_vec()).prop_map(Value::String)).boxed();
    }
    let text = any::<String>().prop_map(Value::String);
    match name {
        "input_concept" => text.prop_map(Some).boxed(),
        "image_url" => proptest::option::of(prop_oneof![text, Just(Value::Null)]).boxed(),
        _ => proptest::option::of(text).boxed(),
    }
}

fn valid_input() -> impl Strategy<Value = Map<String, Value>> {
    let fields: Vec<BoxedStrategy<Option<(String, Value)>>> = FIELDS
        .iter()
        .map(|(name, values)| {
            let name = name.clone();
            field_value(&name, values)
                .prop_map(move |value| value.map(|value| (name.clone(), value)))
                .boxed()
        })
        .collect();
    fields.prop_map(|pairs| pairs.into_iter().flatten().collect())
}

/// Breaks `field` in `input` in way number `how` (0..3); every break is invalid for every field.
fn corrupt(input: &mut Map<String, Value>, field: &str, how: usize) {
    let is_enum = FIELDS.iter().any(|(name, values)| name == field && !values.is_empty());
    let broken = match (field, how) {
        ("input_concept", 0) => {
            input.remove(field);
            return;
        }
        (_, 0) if is_enum => json!(format!("not a {field}")),
        ("image_url", 2) => json!({ "url": "https://example.com" }),
        (_, 0) | (_, 1) => json!(7),
        (_, _) if field == "image_url" => json!(["https://example.com"]),
        _ => Value::Null,
    };
    input.insert(field.to_owned(), broken);
}

proptest! {
    #[test]
    fn inputs_generated_from_the_schema_always_pass(input in valid_input()) {
        let body = Value::Object(input);
        let passed = check(&SCHEMAS, None, &body);
        prop_assert!(passed.is_ok(), "{body}: {passed:?}");
    }

    #[test]
    fn corrupting_one_field_fails_with_that_fields_loc(
        mut input in valid_input(),
        field in 0..10usize,
        how in 0..3usize,
    ) {
        let name = FIELDS[field % FIELDS.len()].0.clone();
        corrupt(&mut input, &name, how);
        let body = Value::Object(input);
        match check(&SCHEMAS, None, &body) {
            Err(Rejection::Invalid(errors)) => {
                prop_assert!(!errors.is_empty());
                for error in &errors {
                    prop_assert_eq!(&error.loc, &vec![json!("body"), json!(name.as_str())], "{}", body);
                }
            }
            other => prop_assert!(false, "{} should fail on {}: {:?}", body, name, other),
        }
    }
}
