//! The strict JSON parse every input goes through before its schema: UTF-8 only, no BOM, no
//! duplicate keys, bounded nesting, one top-level object and nothing after it; and bounded
//! shape: keys per object, values in all, bytes per string, each checked as the value is read,
//! so a body over a bound costs no more than the bound (a 10 MiB body of 800,000 keys is
//! refused at key 1,025, not parsed, validated and answered with 800,000 errors).
//!
//! Why hand-written: `serde_json::Value` silently keeps the *last* of two duplicate keys, while
//! fal's Python parser may keep another, so a validated body could mean something else upstream
//! (SECURITY-CASES 71). A `DeserializeSeed` over serde_json's own tokenizer keeps its UTF-8,
//! surrogate, control-character and number checks and adds the two it lacks: duplicate keys
//! and a configurable depth (serde_json's fixed limit is 128).

use std::cell::Cell;
use std::fmt;

use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::JsonLimits;

/// Bounds on one document's shape: its nesting, and the JSON bounds of `[request]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Shape {
    pub(super) max_depth: usize,
    pub(super) json: JsonLimits,
}

/// Why a body was not parsed.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Unparsed {
    /// Not strict JSON: 400.
    Malformed(String),
    /// Strict JSON over a [`Shape`] bound: 413.
    TooComplex(String),
    /// Strict JSON, but not an object (`[1]`, `"x"`, `null`): fal's 422 on `["body"]`.
    NotObject,
}

/// Parses `body` as exactly one JSON object within `shape`.
pub(super) fn parse_object(body: &[u8], shape: &Shape) -> Result<Map<String, Value>, Unparsed> {
    if body.starts_with(b"\xEF\xBB\xBF") {
        return Err(Unparsed::Malformed(
            "the body starts with a byte order mark; send plain UTF-8".into(),
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Unparsed::Malformed("the body is empty; send a JSON object".into()));
    }
    let budget = Budget {
        shape: *shape,
        values_left: Cell::new(shape.json.max_values),
        over: Cell::new(None),
    };
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = StrictValue {
        depth_left: shape.max_depth,
        budget: &budget,
    }
    .deserialize(&mut deserializer)
    .and_then(|value| deserializer.end().map(|()| value))
    .map_err(|err| match budget.over.take() {
        Some(why) => Unparsed::TooComplex(why),
        None => Unparsed::Malformed(err.to_string()),
    })?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(Unparsed::NotObject),
    }
}

/// What is left of a document's bounds while it is read; `over` says which bound stopped it
/// (serde's error type carries only text, so the kind travels beside it).
struct Budget {
    shape: Shape,
    values_left: Cell<usize>,
    over: Cell<Option<String>>,
}

impl Budget {
    fn refuse<E: serde::de::Error>(&self, why: String) -> E {
        let error = E::custom(&why);
        self.over.set(Some(why));
        error
    }

    /// Counts one more value.
    fn value<E: serde::de::Error>(&self) -> Result<(), E> {
        match self.values_left.get().checked_sub(1) {
            Some(left) => {
                self.values_left.set(left);
                Ok(())
            }
            None => Err(self.refuse(format!(
                "the JSON has more than {} values in all",
                self.shape.json.max_values
            ))),
        }
    }

    fn string<E: serde::de::Error>(&self, text: &str) -> Result<(), E> {
        if text.len() > self.shape.json.max_string_bytes {
            return Err(self.refuse(format!(
                "a JSON string is longer than {} bytes",
                self.shape.json.max_string_bytes
            )));
        }
        Ok(())
    }
}

/// One JSON value, with `depth_left` containers still allowed at and below it.
#[derive(Clone, Copy)]
struct StrictValue<'b> {
    depth_left: usize,
    budget: &'b Budget,
}

impl StrictValue<'_> {
    /// The seed for a container's children, or an error if this container is one too deep.
    fn enter<E: serde::de::Error>(&self) -> Result<Self, E> {
        self.budget.value()?;
        match self.depth_left.checked_sub(1) {
            Some(depth_left) => Ok(Self {
                depth_left,
                budget: self.budget,
            }),
            None => Err(E::custom("the JSON is nested too deeply")),
        }
    }
}

/// A caller's key or text as it may appear in a message: at most 64 characters, control
/// characters and backslashes escaped, so it can neither grow an error body nor forge a line
/// of the text log.
pub(crate) fn shown_key(key: &str) -> String {
    shown(key, 64)
}

/// `text` cut to `max` characters (marked with `…`), control characters and backslashes escaped.
pub(crate) fn shown(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max + 8));
    for c in text.chars().take(max) {
        if c.is_control() || c == '\\' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

impl<'de> DeserializeSeed<'de> for StrictValue<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue<'_> {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<Value, E> {
        self.budget.value()?;
        Ok(Value::Bool(value))
    }

    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Value, E> {
        self.budget.value()?;
        Ok(Value::from(value))
    }

    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Value, E> {
        self.budget.value()?;
        Ok(Value::from(value))
    }

    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Value, E> {
        self.budget.value()?;
        // serde_json already refuses 1e400; a non-finite float can only come from elsewhere.
        serde_json::Number::from_f64(value)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    // `visit_string` and `visit_borrowed_str` are left to serde's defaults, which call this one, so
    // every string spends the same budget whichever way a deserializer hands it over.
    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Value, E> {
        self.budget.value()?;
        self.budget.string(value)?;
        Ok(Value::String(value.to_owned()))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        self.budget.value()?;
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let child = self.enter()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(child)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let child = self.enter()?;
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.len() == self.budget.shape.json.max_object_keys {
                let max = self.budget.shape.json.max_object_keys;
                return Err(self.budget.refuse(format!("a JSON object has more than {max} keys")));
            }
            self.budget.string(&key)?;
            if map.contains_key(&key) {
                return Err(A::Error::custom(format!("duplicate key `{}`", shown_key(&key))));
            }
            let value = access.next_value_seed(child)?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: Shape = Shape {
        max_depth: 32,
        json: JsonLimits {
            max_object_keys: 4,
            max_values: 10,
            max_string_bytes: 8,
        },
    };

    fn too_complex(body: &str) -> String {
        match parse_object(body.as_bytes(), &SHAPE) {
            Err(Unparsed::TooComplex(why)) => why,
            other => panic!("expected TooComplex for {body}, got {other:?}"),
        }
    }

    #[test]
    fn each_shape_bound_is_refused_as_too_complex_at_its_limit() {
        assert!(parse_object(br#"{"a":1,"b":2,"c":3,"d":4}"#, &SHAPE).is_ok());
        assert!(too_complex(r#"{"a":1,"b":2,"c":3,"d":4,"e":5}"#).contains("more than 4 keys"));
        // Nested objects count their own keys.
        assert!(too_complex(r#"{"a":{"a":1,"b":2,"c":3,"d":4,"e":5}}"#).contains("more than 4 keys"));
        // Values in all: the object itself and nine more fit, the eleventh does not.
        assert!(parse_object(br#"{"a":[1,2,3,4,5,6,7,8]}"#, &SHAPE).is_ok());
        assert!(too_complex(r#"{"a":[1,2,3,4,5,6,7,8,9]}"#).contains("more than 10 values"));
        assert!(parse_object(br#"{"a":"12345678"}"#, &SHAPE).is_ok());
        assert!(too_complex(r#"{"a":"123456789"}"#).contains("longer than 8 bytes"));
        assert!(too_complex(r#"{"123456789":1}"#).contains("longer than 8 bytes"));
    }

    /// Every kind of value spends the value budget, `null` included: a flood of nulls (or of
    /// any one scalar) is refused at the same count as a flood of numbers.
    #[test]
    fn every_kind_of_value_counts_against_the_value_bound() {
        for scalar in ["null", "true", "-1", "1", "1.5", "\"s\"", "\"\\n\""] {
            let fits = format!(r#"{{"a":[{}]}}"#, [scalar; 8].join(","));
            assert!(parse_object(fits.as_bytes(), &SHAPE).is_ok(), "{fits}");
            let over = format!(r#"{{"a":[{}]}}"#, [scalar; 9].join(","));
            assert!(too_complex(&over).contains("more than 10 values"), "{over}");
        }
    }

    #[test]
    fn syntax_errors_stay_malformed_not_too_complex() {
        assert!(matches!(
            parse_object(br#"{"a":1,"a":2}"#, &SHAPE),
            Err(Unparsed::Malformed(_))
        ));
        assert!(matches!(parse_object(br#"{"a":"#, &SHAPE), Err(Unparsed::Malformed(_))));
    }

    #[test]
    fn json_that_is_not_an_object_is_told_apart_from_malformed_json() {
        for body in ["[1]", "\"x\"", "1", "null", "true"] {
            assert_eq!(
                parse_object(body.as_bytes(), &SHAPE),
                Err(Unparsed::NotObject),
                "{body}"
            );
        }
        assert!(matches!(parse_object(b"[1", &SHAPE), Err(Unparsed::Malformed(_))));
    }

    #[test]
    fn shown_keys_are_escaped_and_cut() {
        assert_eq!(shown_key("plain_key"), "plain_key");
        assert_eq!(shown_key("a\nforged=line\\"), "a\\nforged=line\\\\");
        let long = "k".repeat(1000);
        let shown = shown_key(&long);
        assert_eq!(shown.chars().count(), 65);
        assert!(shown.ends_with('…'));
    }

    #[test]
    fn a_duplicate_key_message_cannot_carry_a_newline() {
        let body = r#"{"a\nb":1,"a\nb":2}"#;
        let Err(Unparsed::Malformed(why)) = parse_object(body.as_bytes(), &SHAPE) else {
            panic!("duplicate keys are malformed")
        };
        assert!(!why.contains('\n'), "{why}");
        assert!(why.contains("a\\nb"), "{why}");
    }
}
