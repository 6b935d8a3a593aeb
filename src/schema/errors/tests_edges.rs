//! Every `jsonschema` error kind mapped to fal's item (loc, msg, type, ctx), and the item bound
//! crossed by one, found by mutation testing (`scripts/mutants schema-errors`, see TESTING.md).
//! The mapping is driven straight from `jsonschema`, so no overlay or sorting answers for it.

use serde_json::json;

use super::*;

/// The items `push_field_errors` makes for `instance` against `schema`.
fn items(schema: &Value, instance: &Value) -> Vec<FieldError> {
    let validator = jsonschema::options()
        .should_validate_formats(false)
        .build(schema)
        .expect("a valid schema");
    let mut out = Items::default();
    for error in validator.iter_errors(instance) {
        push_field_errors(instance, &error, &mut out);
    }
    let (kept, more) = out.finish();
    assert_eq!(more, 0);
    kept
}

/// The one item for `value` in field `x` of type `field`.
fn one(field: &Value, value: &Value) -> FieldError {
    let schema = json!({"type": "object", "properties": {"x": field}});
    let mut found = items(&schema, &json!({ "x": value }));
    assert_eq!(found.len(), 1, "{found:?}");
    let item = found.remove(0);
    assert_eq!(item.loc, vec![json!("body"), json!("x")]);
    item
}

fn shape(item: &FieldError) -> (&str, &str, Option<&Value>) {
    (item.msg.as_str(), item.kind.as_str(), item.ctx.as_ref())
}

#[test]
fn a_missing_field_is_located_at_the_field_it_names() {
    let found = items(
        &json!({"type": "object", "properties": {"o": {"type": "object", "required": ["need"]}}}),
        &json!({"o": {}}),
    );
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].loc, vec![json!("body"), json!("o"), json!("need")]);
    assert_eq!(shape(&found[0]), ("field required", "value_error.missing", None));
}

#[test]
fn each_extra_field_is_one_item_with_its_name_shown() {
    let found = items(
        &json!({"type": "object", "properties": {"keep": {}}, "additionalProperties": false}),
        &json!({"a": 1, "b\nforged": 2}),
    );
    let locs: Vec<_> = found.iter().map(|item| item.loc.clone()).collect();
    assert_eq!(
        locs,
        vec![
            vec![json!("body"), json!("a")],
            vec![json!("body"), json!("b\\nforged")]
        ]
    );
    assert!(found
        .iter()
        .all(|item| shape(item) == ("extra fields not permitted", "value_error.extra", None)));
}

#[test]
fn extra_fields_past_the_item_bound_are_counted_not_built() {
    let schema = json!({"type": "object", "properties": {"keep": {}}, "additionalProperties": false});
    let instance = Value::Object((0..MAX_ITEMS + 7).map(|n| (format!("k{n:03}"), json!(1))).collect());
    let validator = jsonschema::options().build(&schema).unwrap();
    let mut out = Items::default();
    for error in validator.iter_errors(&instance) {
        push_field_errors(&instance, &error, &mut out);
    }
    let (kept, more) = out.finish();
    assert_eq!((kept.len(), more), (MAX_ITEMS, 7));
}

#[test]
fn a_wrong_type_gets_pydantics_message_for_the_type_wanted() {
    for (wanted, given, msg, kind) in [
        (json!("string"), json!(1), "str type expected", "type_error.str"),
        (
            json!("integer"),
            json!("1"),
            "value is not a valid integer",
            "type_error.integer",
        ),
        (
            json!("number"),
            json!("1"),
            "value is not a valid float",
            "type_error.float",
        ),
        (
            json!("boolean"),
            json!(1),
            "value could not be parsed to a boolean",
            "type_error.bool",
        ),
        (json!("array"), json!(1), "value is not a valid list", "type_error.list"),
        (
            json!("object"),
            json!(1),
            "value is not a valid dict",
            "type_error.dict",
        ),
        (json!("null"), json!(1), "value is not none", "type_error.none.allowed"),
        (
            json!("string"),
            Value::Null,
            "none is not an allowed value",
            "type_error.none.not_allowed",
        ),
        (
            json!(["null", "integer"]),
            json!("1"),
            "value is not a valid integer",
            "type_error.integer",
        ),
        (
            json!(["integer", "null"]),
            json!("1"),
            "value is not a valid integer",
            "type_error.integer",
        ),
    ] {
        let item = one(&json!({ "type": wanted }), &given);
        assert_eq!(shape(&item), (msg, kind, None), "{wanted} given {given}");
    }
}

#[test]
fn an_enum_lists_its_values_the_way_pydantic_prints_them() {
    let item = one(&json!({"enum": ["a", 1, null]}), &json!("b"));
    assert_eq!(
        shape(&item),
        (
            "value is not a valid enumeration member; permitted: 'a', 1, null",
            "type_error.enum",
            Some(&json!({"enum_values": ["a", 1, null]}))
        )
    );
}

#[test]
fn a_const_names_the_value_given_and_the_one_permitted() {
    let item = one(&json!({"const": "x"}), &json!("y"));
    assert_eq!(
        shape(&item),
        (
            "unexpected value; permitted: 'x'",
            "value_error.const",
            Some(&json!({"given": "y", "permitted": ["x"]}))
        )
    );
}

#[test]
fn each_bound_names_its_limit() {
    for (rule, given, msg, kind, limit) in [
        (
            json!({"maxLength": 2}),
            json!("abc"),
            "ensure this value has at most 2 characters",
            "value_error.any_str.max_length",
            json!(2),
        ),
        (
            json!({"minLength": 2}),
            json!("a"),
            "ensure this value has at least 2 characters",
            "value_error.any_str.min_length",
            json!(2),
        ),
        (
            json!({"maximum": 5}),
            json!(6),
            "ensure this value is less than or equal to 5",
            "value_error.number.not_le",
            json!(5),
        ),
        (
            json!({"minimum": 5}),
            json!(4),
            "ensure this value is greater than or equal to 5",
            "value_error.number.not_ge",
            json!(5),
        ),
        (
            json!({"exclusiveMaximum": 5}),
            json!(5),
            "ensure this value is less than 5",
            "value_error.number.not_lt",
            json!(5),
        ),
        (
            json!({"exclusiveMinimum": 5}),
            json!(5),
            "ensure this value is greater than 5",
            "value_error.number.not_gt",
            json!(5),
        ),
        (
            json!({"maxItems": 1}),
            json!([1, 2]),
            "ensure this value has at most 1 items",
            "value_error.list.max_items",
            json!(1),
        ),
        (
            json!({"minItems": 2}),
            json!([1]),
            "ensure this value has at least 2 items",
            "value_error.list.min_items",
            json!(2),
        ),
    ] {
        let item = one(&rule, &given);
        assert_eq!(
            shape(&item),
            (msg, kind, Some(&json!({"limit_value": limit}))),
            "{rule}"
        );
    }
}

#[test]
fn a_pattern_and_a_false_schema_have_their_own_items() {
    let item = one(&json!({"pattern": "^a$"}), &json!("b"));
    assert_eq!(
        shape(&item),
        (
            "string does not match regex \"^a$\"",
            "value_error.str.regex",
            Some(&json!({"pattern": "^a$"}))
        )
    );
    let item = one(&json!(false), &json!(1));
    assert_eq!(
        shape(&item),
        ("this field is not allowed", "value_error.forbidden", None)
    );
}

#[test]
fn any_other_error_keeps_jsonschemas_text_cut_to_200_characters() {
    let long = "z".repeat(500);
    let item = one(&json!({"uniqueItems": true}), &json!([long, long]));
    assert_eq!(item.kind, "value_error");
    assert!(item.msg.contains("zzz"), "{}", item.msg);
    assert_eq!(item.msg.chars().count(), 201, "cut to 200 and marked");
    assert!(item.msg.ends_with('…'));
}

#[test]
fn a_location_holds_indices_as_numbers_and_keys_as_strings_even_when_numeric() {
    let schema = json!({"type": "object", "properties": {
        "list": {"type": "array", "items": {"type": "integer"}},
        "map": {"type": "object", "properties": {"0": {"type": "integer"}}},
        "nested": {"type": "object", "properties": {"list": {"type": "array", "items": {"type": "integer"}}}},
    }});
    let found = items(
        &schema,
        &json!({"list": [1, "x"], "map": {"0": "x"}, "nested": {"list": [1, 2, "x"]}}),
    );
    let mut locs: Vec<_> = found.iter().map(|item| item.loc.clone()).collect();
    locs.sort_by_key(|loc| loc[1].to_string());
    assert_eq!(
        locs,
        vec![
            vec![json!("body"), json!("list"), json!(1)],
            vec![json!("body"), json!("map"), json!("0")],
            // An index is read as a number only where the walk found an array.
            vec![json!("body"), json!("nested"), json!("list"), json!(2)],
        ]
    );
}

#[test]
fn the_items_bound_is_exactly_max_items_and_the_rest_are_counted() {
    let item = || not_an_object();
    let mut out = Items::default();
    for _ in 0..MAX_ITEMS - 1 {
        out.push(item());
    }
    assert!(!out.is_full());
    out.push(item());
    assert!(out.is_full());
    out.push(item());
    out.count_more(2);
    let (kept, more) = out.finish();
    assert_eq!((kept.len(), more), (MAX_ITEMS, 3));

    assert_eq!(more_item(0), None);
    let last = more_item(3).expect("an item counting the rest");
    assert_eq!(last.loc, vec![json!("body")]);
    assert_eq!(last.msg, "3 more errors not shown (at most 50 are listed)");
    assert_eq!(
        (last.kind.as_str(), last.ctx),
        ("too_many_errors", Some(json!({"more": 3})))
    );
}

#[test]
fn a_body_that_is_not_an_object_is_pydantics_dict_error() {
    let item = not_an_object();
    assert_eq!(item.loc, vec![json!("body")]);
    assert_eq!(shape(&item), ("value is not a valid dict", "type_error.dict", None));
}
