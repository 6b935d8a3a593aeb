//! The strict JSON parse every input goes through before its schema: UTF-8 only, no BOM, no
//! duplicate keys, bounded nesting, one top-level object and nothing after it.
//!
//! Why hand-written: `serde_json::Value` silently keeps the *last* of two duplicate keys, while
//! fal's Python parser may keep another, so a validated body could mean something else upstream
//! (SECURITY-CASES 71). A `DeserializeSeed` over serde_json's own tokenizer keeps its UTF-8,
//! surrogate, control-character and number checks and adds the two it lacks: duplicate keys
//! and a configurable depth (serde_json's fixed limit is 128).

use std::fmt;

use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Parses `body` as exactly one JSON object, nested at most `max_depth` containers deep.
pub(super) fn parse_object(body: &[u8], max_depth: usize) -> Result<Map<String, Value>, String> {
    if body.starts_with(b"\xEF\xBB\xBF") {
        return Err("the body starts with a byte order mark; send plain UTF-8".into());
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("the body is empty; send a JSON object".into());
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = StrictValue { depth_left: max_depth }
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value))
        .map_err(|err| err.to_string())?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err("the body must be a JSON object".into()),
    }
}

/// One JSON value, with `depth_left` containers still allowed at and below it.
#[derive(Clone, Copy)]
struct StrictValue {
    depth_left: usize,
}

impl StrictValue {
    /// The seed for a container's children, or an error if this container is one too deep.
    fn enter<E: serde::de::Error>(&self) -> Result<Self, E> {
        match self.depth_left.checked_sub(1) {
            Some(depth_left) => Ok(Self { depth_left }),
            None => Err(E::custom("the JSON is nested too deeply")),
        }
    }
}

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Value, E> {
        // serde_json already refuses 1e400; a non-finite float can only come from elsewhere.
        serde_json::Number::from_f64(value)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
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
            if map.contains_key(&key) {
                let shown: String = key.chars().take(64).collect();
                return Err(A::Error::custom(format!("duplicate key `{shown}`")));
            }
            let value = access.next_value_seed(child)?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}
