//! One compiled validator: a schema with its overlays applied and its URL rules, and the step
//! that turns every failure into fal's 422 items in the schema's field order.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

use super::overlay::UrlRule;
use super::{errors, url, FieldError};

/// A compiled schema with its overlays applied.
#[derive(Debug)]
pub(super) struct Variant {
    validator: jsonschema::Validator,
    /// Top-level field names in the schema's order, for ordering the 422 items like fal does.
    order: Vec<String>,
    urls: BTreeMap<String, UrlRule>,
}

impl Variant {
    pub(super) fn build(schema: &Value, urls: BTreeMap<String, UrlRule>) -> Result<Self, (String, String)> {
        let validator = jsonschema::options()
            .offline()
            // fal's pydantic does not enforce `format`, so neither do we: a `uri` format would
            // otherwise disagree with fal on inputs it accepts. URL rules come from overlays.
            .should_validate_formats(false)
            .build(schema)
            .map_err(|err| (err.instance_path().to_string(), err.to_string()))?;
        let order = field_order(schema);
        Ok(Self { validator, order, urls })
    }

    /// The failures of `value` (the schema's, then the URL rules'), sorted by field order: the
    /// first [`errors::MAX_ITEMS`] found, then one item counting the rest, so the answer never
    /// grows with the input.
    pub(super) fn check(&self, value: &Value) -> Vec<FieldError> {
        let mut items = errors::Items::default();
        if !self.validator.is_valid(value) {
            for error in self.validator.iter_errors(value) {
                errors::push_field_errors(value, &error, &mut items);
            }
        }
        for (field, rule) in &self.urls {
            if let Some(Value::String(text)) = value.get(field) {
                let loc = [Value::from("body"), Value::from(field.as_str())];
                if let Some(failure) = url::check(rule, text, &loc) {
                    items.push(failure);
                }
            }
        }
        let (mut failures, more) = items.finish();
        let rank = |error: &FieldError| {
            let field = error.loc.get(1).and_then(Value::as_str);
            field
                .and_then(|field| self.order.iter().position(|name| name == field))
                .unwrap_or(usize::MAX)
        };
        failures.sort_by_key(rank);
        keep_one_type_error_per_field(&mut failures);
        failures.extend(errors::more_item(more));
        failures
    }
}

/// pydantic reports one type error per field where JSON Schema reports `type` and `enum`
/// separately: keep `none is not an allowed value` first, else the enum error (it names the
/// permitted values), else the first type error.
fn keep_one_type_error_per_field(failures: &mut Vec<FieldError>) {
    let rank = |kind: &str| match kind {
        "type_error.none.not_allowed" => 0,
        "type_error.enum" => 1,
        _ => 2,
    };
    let mut best: HashMap<String, (usize, usize)> = HashMap::new();
    for (index, failure) in failures
        .iter()
        .enumerate()
        .filter(|(_, f)| f.kind.starts_with("type_error."))
    {
        let candidate = (rank(&failure.kind), index);
        best.entry(Value::from(failure.loc.clone()).to_string())
            .and_modify(|kept| *kept = (*kept).min(candidate))
            .or_insert(candidate);
    }
    let mut index = 0;
    failures.retain(|failure| {
        let keep = !failure.kind.starts_with("type_error.")
            || best
                .get(&Value::from(failure.loc.clone()).to_string())
                .map(|&(_, kept)| kept)
                == Some(index);
        index += 1;
        keep
    });
}

/// The schema's top-level field names: `x-fal-order-properties` (fal's published order) if
/// present, else `required` fields first, then the rest by name.
fn field_order(schema: &Value) -> Vec<String> {
    let names = |key: &str| -> Vec<String> {
        schema
            .get(key)
            .and_then(Value::as_array)
            .map(|names| names.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let mut order = names("x-fal-order-properties");
    order.extend(names("required"));
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        order.extend(properties.keys().cloned());
    }
    let mut seen = HashSet::new();
    order.retain(|name| seen.insert(name.clone()));
    order
}
