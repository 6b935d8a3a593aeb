//! Every endpoint's input schema, compiled once at start, and [`Schemas::validate`]: strict JSON,
//! then the schema with the operator's and the caller's tier overlays, answering with every
//! failing field in fal's own 422 `detail` shape. The original bytes are what is forwarded.

mod errors;
mod overlay;
mod source;
mod strict;
mod url;
mod variant;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

pub use overlay::{FieldOverlay, Overlay};
use variant::Variant;

/// One endpoint's schema settings, built by config from TOML.
#[derive(Clone, Debug)]
pub struct SchemaSource {
    /// The configured endpoint id, e.g. `fal-ai/video-prompt-generator`.
    pub endpoint: String,
    /// A JSON Schema file, or fal's OpenAPI document for the endpoint.
    pub path: PathBuf,
    /// Whether fields the schema does not name are refused (the default) or passed on.
    pub unknown_fields: UnknownFields,
    /// The operator's overlay, applied for every tier.
    pub overlay: Option<Overlay>,
    /// Further overlays per tier, applied after the operator's.
    pub tier_overlays: BTreeMap<String, Overlay>,
    /// URL prefixes that pass every URL rule's scheme and host checks. Never read from the
    /// config file: `falgate dev` sets its emulator's CDN (`http://127.0.0.1:…/_storage/files/`),
    /// so files uploaded in dev work as inputs under the shipped `https`-only rules.
    pub trusted_url_prefixes: Vec<String>,
}

/// What happens to top-level input fields the schema does not name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownFields {
    /// 422 `value_error.extra` for each (the default; overrides the schema's `additionalProperties`).
    #[default]
    Refuse,
    /// Accepted and forwarded untouched (the schema's `additionalProperties` is ignored).
    Allow,
}

/// Bounds on one JSON body, checked while it is parsed (so a refusal costs no more than the
/// bound): a body within `max_body_bytes` can still hold 800,000 keys. `config` reads them
/// from `[request]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonLimits {
    pub max_object_keys: usize,
    pub max_values: usize,
    pub max_string_bytes: usize,
}

impl Default for JsonLimits {
    fn default() -> Self {
        Self {
            max_object_keys: 1024,
            max_values: 100_000,
            max_string_bytes: 10 * 1024 * 1024,
        }
    }
}

/// Per-request bounds on the body, from the endpoint's config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValidationLimits {
    /// Deepest nesting of arrays and objects, the top-level object counting as 1.
    pub max_depth: usize,
    /// Largest body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Most keys in one object, values in all, and bytes in one string (`[request]`).
    pub json: JsonLimits,
}

impl ValidationLimits {
    fn shape(&self) -> strict::Shape {
        strict::Shape {
            max_depth: self.max_depth,
            json: self.json,
        }
    }
}

/// Every configured endpoint's compiled validators. Built once; `Send + Sync`.
#[derive(Debug)]
pub struct Schemas {
    endpoints: HashMap<String, Endpoint>,
}

/// A body that passed: the exact bytes to forward, and their parsed value (for pricing by field).
#[derive(Clone, Debug)]
pub struct ValidInput {
    /// The caller's original bytes; never re-serialised, and no defaults injected.
    pub bytes: Bytes,
    /// The parsed input (always a JSON object).
    pub value: Value,
    /// The schema's top-level `default`s, shared with the compiled schema (no copy per call):
    /// read through [`Self::ruled`] for the fields `value` lacks.
    defaults: Arc<[(String, Value)]>,
}

/// The input as fal runs it: a top-level field is the caller's value, else the schema's
/// `default`. What `Limiter::credits_for` and `Grant::check_options` read (they name top-level
/// fields only); a lookup over the parsed input and the compiled defaults, so nothing is copied.
#[derive(Clone, Copy, Debug)]
pub struct Ruled<'a> {
    value: &'a Value,
    defaults: &'a [(String, Value)],
}

impl<'a> Ruled<'a> {
    /// The field `name` as fal runs it.
    pub fn get(&self, name: &str) -> Option<&'a Value> {
        self.value.get(name).or_else(|| {
            self.defaults
                .iter()
                .find(|(field, _)| field == name)
                .map(|(_, default)| default)
        })
    }
}

/// An input read as it is (no defaults): tests, and inputs the gate wrote itself.
impl<'a> From<&'a Value> for Ruled<'a> {
    fn from(value: &'a Value) -> Self {
        Self { value, defaults: &[] }
    }
}

impl ValidInput {
    /// An input with no schema defaults to apply (no schema, or one the gate wrote itself).
    pub fn new(bytes: Bytes, value: Value) -> Self {
        Self {
            bytes,
            value,
            defaults: Arc::from([]),
        }
    }

    /// The input as fal runs it: the schema's defaults applied for absent top-level fields.
    /// What `Limiter::credits_for` and `Grant::check_options` read; never forwarded.
    pub fn ruled(&self) -> Ruled<'_> {
        Ruled {
            value: &self.value,
            defaults: &self.defaults,
        }
    }
}

/// Why a body was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Rejection {
    /// Not strict JSON (bad UTF-8, BOM, duplicate key, too deep, trailing data, empty): the
    /// gate answers 400 `invalid_json`. (Strict JSON that is not an object is [`Self::Invalid`],
    /// as fal answers it.)
    #[error("the request body is not a strict JSON object: {0}")]
    Malformed(String),
    /// Strict JSON over a shape bound (keys per object, values, string bytes): 413
    /// `json_too_large`.
    #[error("the request body is too complex: {0}")]
    TooComplex(String),
    /// Larger than `ValidationLimits::max_body_bytes`: 413 `body_too_large`.
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    /// No schema is configured for the endpoint: fail closed, never forward (500 `internal`).
    #[error("no input schema is configured for `{0}`")]
    NoSchema(String),
    /// The input breaks the schema: 422 `validation_failed` with these items as `detail`.
    #[error("the input does not match the endpoint's schema ({} field errors)", .0.len())]
    Invalid(Vec<FieldError>),
}

/// One item of fal's 422 `detail` array.
#[derive(Clone, Debug, serde::Serialize, PartialEq)]
pub struct FieldError {
    /// `["body", field, ...]`: keys as strings, array indices as numbers.
    pub loc: Vec<Value>,
    /// pydantic's message, e.g. `field required`.
    pub msg: String,
    /// pydantic's error type, e.g. `value_error.missing`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Extra facts about the error, e.g. `{"enum_values": [...]}` or `{"limit_value": 10}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ctx: Option<Value>,
}

/// Why the schemas could not be compiled; names the file and the JSON pointer inside it.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// The schema file could not be read.
    #[error("{}: cannot read schema: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The schema file is not JSON.
    #[error("{}: not JSON (line {line}, column {column}): {reason}", path.display())]
    Json {
        path: PathBuf,
        line: usize,
        column: usize,
        reason: String,
    },
    /// The schema, its `$ref`s or an overlay is unusable at `pointer`.
    #[error("{}#{pointer}: {reason}", path.display())]
    Schema {
        path: PathBuf,
        pointer: String,
        reason: String,
    },
    /// Two sources name the same endpoint.
    #[error("endpoint `{0}` has two schema entries")]
    DuplicateEndpoint(String),
}

/// One endpoint: the validator every caller gets, and one per tier that has an overlay.
#[derive(Debug)]
struct Endpoint {
    base: Variant,
    tiers: HashMap<String, Variant>,
    /// The input schema as every caller gets it (operator overlay applied), and per tier: what
    /// the playground renders its form from.
    base_schema: Value,
    tier_schemas: HashMap<String, Value>,
    /// The top-level fields the endpoint's own schema gives a `default` (before overlays: a
    /// field a tier may not send still runs with fal's default), found once at compile time.
    defaults: Arc<[(String, Value)]>,
}

impl Default for ValidationLimits {
    fn default() -> Self {
        Self {
            max_depth: 32,
            max_body_bytes: 10 * 1024 * 1024,
            json: JsonLimits::default(),
        }
    }
}

impl Schemas {
    /// Reads and compiles every source; the first problem is returned with its file and pointer.
    pub fn compile(sources: Vec<SchemaSource>) -> Result<Self, CompileError> {
        let mut endpoints = HashMap::new();
        for source in sources {
            if endpoints.contains_key(&source.endpoint) {
                return Err(CompileError::DuplicateEndpoint(source.endpoint));
            }
            let endpoint = Endpoint::compile(&source)?;
            endpoints.insert(source.endpoint, endpoint);
        }
        Ok(Self { endpoints })
    }

    /// The input schema a caller of `tier` is validated against (overlays applied, `$ref`s
    /// inlined), for rendering a form; `None` for an endpoint without a schema.
    pub fn input_schema(&self, endpoint: &str, tier: Option<&str>) -> Option<&Value> {
        let compiled = self.endpoints.get(endpoint)?;
        Some(
            tier.and_then(|tier| compiled.tier_schemas.get(tier))
                .unwrap_or(&compiled.base_schema),
        )
    }

    /// Whether `endpoint` has a schema.
    pub fn has(&self, endpoint: &str) -> bool {
        self.endpoints.contains_key(endpoint)
    }

    /// Validates `body` for `endpoint` (the configured entry; policy maps sub paths to it) as
    /// seen by a caller of `tier`. Every failing field is reported, in the schema's field order.
    pub fn validate(
        &self,
        endpoint: &str,
        tier: Option<&str>,
        body: &[u8],
        limits: &ValidationLimits,
    ) -> Result<ValidInput, Rejection> {
        if body.len() > limits.max_body_bytes {
            return Err(Rejection::TooLarge(limits.max_body_bytes));
        }
        let compiled = self
            .endpoints
            .get(endpoint)
            .ok_or_else(|| Rejection::NoSchema(endpoint.to_owned()))?;
        let variant = tier.and_then(|tier| compiled.tiers.get(tier)).unwrap_or(&compiled.base);
        let value = Value::Object(strict::parse_object(body, &limits.shape())?);
        let failures = variant.check(&value);
        if failures.is_empty() {
            Ok(ValidInput {
                bytes: Bytes::copy_from_slice(body),
                value,
                defaults: Arc::clone(&compiled.defaults),
            })
        } else {
            Err(Rejection::Invalid(failures))
        }
    }
}

/// Strict-parses a body that has no endpoint schema (storage initiate): one JSON object, no
/// duplicate keys, within the limits.
pub fn parse_object(body: &[u8], limits: &ValidationLimits) -> Result<Value, Rejection> {
    if body.len() > limits.max_body_bytes {
        return Err(Rejection::TooLarge(limits.max_body_bytes));
    }
    Ok(Value::Object(strict::parse_object(body, &limits.shape())?))
}

impl From<strict::Unparsed> for Rejection {
    fn from(refusal: strict::Unparsed) -> Self {
        match refusal {
            strict::Unparsed::Malformed(why) => Self::Malformed(why),
            strict::Unparsed::TooComplex(why) => Self::TooComplex(why),
            // fal (pydantic) answers 422 with one item on `["body"]`; `@fal-ai/client` turns it
            // into a `ValidationError`, so the gate answers the same.
            strict::Unparsed::NotObject => Self::Invalid(vec![errors::not_an_object()]),
        }
    }
}

impl Endpoint {
    fn compile(source: &SchemaSource) -> Result<Self, CompileError> {
        let mut schema = source::load(&source.path, &source.endpoint)?;
        let fail = |(pointer, reason): (String, String)| CompileError::Schema {
            path: source.path.clone(),
            pointer,
            reason,
        };
        let Value::Object(root) = &mut schema else {
            return Err(fail((String::new(), "the input schema must be a JSON object".into())));
        };
        match source.unknown_fields {
            UnknownFields::Refuse => root.insert("additionalProperties".into(), Value::Bool(false)),
            UnknownFields::Allow => root.remove("additionalProperties"),
        };
        let defaults = Arc::from(top_level_defaults(&schema));
        let mut urls = BTreeMap::new();
        if let Some(overlay) = &source.overlay {
            overlay::apply(&mut schema, &mut urls, overlay)
                .map_err(|(at, why)| fail((at, format!("operator overlay: {why}"))))?;
        }
        for rule in urls.values_mut() {
            rule.trusted_prefixes.clone_from(&source.trusted_url_prefixes);
        }
        let base = Variant::build(&schema, urls.clone()).map_err(fail)?;
        let mut tiers = HashMap::new();
        let mut tier_schemas = HashMap::new();
        for (tier, overlay) in &source.tier_overlays {
            let (mut tier_schema, mut tier_urls) = (schema.clone(), urls.clone());
            overlay::apply(&mut tier_schema, &mut tier_urls, overlay)
                .map_err(|(at, why)| fail((at, format!("tier `{tier}` overlay: {why}"))))?;
            for rule in tier_urls.values_mut() {
                rule.trusted_prefixes.clone_from(&source.trusted_url_prefixes);
            }
            tiers.insert(tier.clone(), Variant::build(&tier_schema, tier_urls).map_err(fail)?);
            tier_schemas.insert(tier.clone(), tier_schema);
        }
        Ok(Self {
            base,
            tiers,
            base_schema: schema,
            tier_schemas,
            defaults,
        })
    }
}

/// The `default` of each top-level property (`$ref`s are already inlined): what fal's model
/// (pydantic) fills in for an absent field. Prices and options name top-level fields only.
fn top_level_defaults(schema: &Value) -> Vec<(String, Value)> {
    let Some(Value::Object(properties)) = schema.get("properties") else {
        return Vec::new();
    };
    properties
        .iter()
        .filter_map(|(name, field)| Some((name.clone(), field.get("default")?.clone())))
        .collect()
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_compile;
#[cfg(test)]
mod tests_overlay;
#[cfg(test)]
mod tests_props;
#[cfg(test)]
mod tests_security;
