//! Fuzz harnesses on the stable toolchain: every parser that reads bytes a stranger controls
//! (the `x-fal-target-url` header, queue paths and queries, the strict JSON reader, bearer
//! tokens, schema validation) is driven with generated and mutated input and must answer with
//! a value or an error, never a panic, and within its documented bounds.
//!
//! Why proptest and not cargo-fuzz: libFuzzer needs nightly's sanitizer flags, and CI and new
//! machines have only the stable toolchain. The case count comes from `FALGATE_FUZZ_CASES`
//! (default 256 per harness, a few seconds in CI); a long run by hand:
//! `FALGATE_FUZZ_CASES=200000 cargo test --release --lib tests_fuzz::`. A failure found this way
//! becomes a named regression test at the end of this file.

use std::sync::LazyLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{json, Map, Value};

use crate::auth::{Authenticator, Caller};
use crate::error::{render, GateError};
use crate::fal::{parse_queue_path, parse_target, Call, Op};
use crate::schema::{self, Rejection, SchemaSource, Schemas, UnknownFields, ValidationLimits};

/// Cases per harness: `FALGATE_FUZZ_CASES`, else 256.
fn config() -> ProptestConfig {
    let cases = std::env::var("FALGATE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        // Failures become named tests below, not files beside the sources.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Generators

const UUID: &str = "764cabcf-b745-4b3e-ae38-1200304cf45b";

/// A path segment: mostly the ones fal's paths are made of, sometimes tricks, sometimes noise.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "fal-ai", "flux", "dev", "video-prompt-generator", "requests", "status", "stream",
            "cancel", "workflows", "comfy", "owner", "alias", UUID, "764CABCF-B745-4B3E-AE38-1200304CF45B",
        ])
        .prop_map(str::to_owned),
        2 => prop::sample::select(vec![
            "", ".", "..", "%2e%2e", "%2f", "a%00", "\\", "@", "#", "?", ";", ":", "a b", "\u{ff0e}",
            "\u{3002}", "\u{0000}", "\u{feff}", "ü", "requests?x=1",
        ])
        .prop_map(str::to_owned),
        1 => "[a-zA-Z0-9._~%!$&'()*+,;=:@/\\-]{0,12}",
        1 => any::<String>(),
    ]
}

/// A raw path below the queue root: a canonical one with a few edits, or segments at random.
fn path_like() -> impl Strategy<Value = String> {
    let composed = (prop::collection::vec(segment(), 0..8), any::<bool>()).prop_map(|(segments, lead)| {
        let joined = segments.join("/");
        if lead {
            format!("/{joined}")
        } else {
            joined
        }
    });
    let canonical = prop::sample::select(vec![
        "/fal-ai/flux/dev".to_owned(),
        "/fal-ai/video-prompt-generator".to_owned(),
        "/comfy/owner/alias/sub".to_owned(),
        format!("/fal-ai/flux/requests/{UUID}"),
        format!("/fal-ai/flux/requests/{UUID}/status"),
        format!("/fal-ai/flux/requests/{UUID}/status/stream"),
        format!("/fal-ai/flux/requests/{UUID}/cancel"),
        format!("/workflows/owner/alias/requests/{UUID}/status"),
    ]);
    prop_oneof![1 => composed, 2 => mutated(canonical)]
}

/// `base` with up to three edits: a token spliced in, or characters cut out.
fn mutated(base: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    let token = prop::sample::select(vec![
        "/", ".", "..", "/..", "%2e", "%2f", "%", "\\", "@", "#", "?", ":443", "A", "é", "\u{3002}", " ", "\t",
        "requests", UUID, "//", "status", "?logs=1", "&logs=0", ";",
    ]);
    let edit = prop_oneof![
        (any::<prop::sample::Index>(), token).prop_map(|(at, t)| (at, Some(t))),
        any::<prop::sample::Index>().prop_map(|at| (at, None)),
    ];
    (base, prop::collection::vec(edit, 0..3)).prop_map(|(mut text, edits)| {
        for (at, token) in edits {
            let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
            let at = bounds[at.index(bounds.len())];
            match token {
                Some(token) => text.insert_str(at, token),
                None => {
                    if let Some(c) = text[at..].chars().next() {
                        text.replace_range(at..at + c.len_utf8(), "");
                    }
                }
            }
        }
        text
    })
}

/// A raw query: the parameters the routes know, repeated, encoded or unknown.
fn query_like() -> impl Strategy<Value = Option<String>> {
    let pair = prop_oneof![
        prop::sample::select(vec![
            "logs=1",
            "logs=0",
            "logs=true",
            "logs=false",
            "logs=maybe",
            "logs",
            "fal_webhook=https%3A%2F%2Fx.example%2Fh",
            "fal_webhook=",
            "fal%5Fwebhook=x",
            "x=1",
            "=",
            "&",
            "%",
            "%zz",
            "logs=%31",
        ])
        .prop_map(str::to_owned),
        "[a-z_=%&+0-9]{0,16}",
        any::<String>(),
    ];
    prop::option::of(prop::collection::vec(pair, 0..4).prop_map(|pairs| pairs.join("&")))
}

/// A string shaped like a target URL: a canonical one with a few edits, or a scheme, an
/// authority, a path and a query each drawn from canonical forms and the rewrites a URL parser
/// would normalise.
fn url_like() -> impl Strategy<Value = String> {
    let scheme = prop::sample::select(vec![
        "https://",
        "https://",
        "https://",
        "http://",
        "HTTPS://",
        "https:",
        "https:/",
        "https:\\\\",
        "//",
        "",
        "wss://",
    ]);
    let host = prop::sample::select(vec![
        "queue.fal.run",
        "queue.fal.run",
        "fal.run",
        "fal.run",
        "rest.fal.ai",
        "rest.alpha.fal.ai",
        "QUEUE.fal.run",
        "queue.fal.run.",
        "queue.fal.run:443",
        "queue.fal.run:8443",
        "user@queue.fal.run",
        "queue.fal.run@evil.com",
        "evil.com#@queue.fal.run",
        "127.0.0.1",
        "[::1]",
        "0x7f.1",
        "xn--fal-run",
        "queue%2efal%2erun",
        "queue\u{3002}fal\u{3002}run",
        "fal.run.evil.com",
        "",
    ]);
    let storage = prop::sample::select(vec![
        "",
        "",
        "",
        "/storage/upload/initiate?storage_type=fal-cdn-v3",
        "/storage/upload/initiate",
        "#frag",
        "?",
    ]);
    let composed =
        (scheme, host, path_like(), query_like(), storage).prop_map(|(scheme, host, path, query, storage)| {
            let path = if path.starts_with('/') || path.is_empty() {
                path
            } else {
                format!("/{path}")
            };
            let query = query.map(|q| format!("?{q}")).unwrap_or_default();
            format!("{scheme}{host}{path}{query}{storage}")
        });
    let canonical = prop::sample::select(vec![
        "https://queue.fal.run/fal-ai/flux/dev".to_owned(),
        "https://queue.fal.run/fal-ai/flux/dev?fal_webhook=https%3A%2F%2Fx.example%2Fh".to_owned(),
        "https://fal.run/fal-ai/video-prompt-generator".to_owned(),
        "https://rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3".to_owned(),
        format!("https://queue.fal.run/fal-ai/flux/requests/{UUID}/status?logs=1"),
        format!("https://queue.fal.run/fal-ai/flux/requests/{UUID}/status/stream"),
        format!("https://queue.fal.run/fal-ai/flux/requests/{UUID}"),
        format!("https://queue.fal.run/comfy/o/a/requests/{UUID}/cancel"),
    ]);
    prop_oneof![1 => composed, 2 => mutated(canonical)]
}

/// Any JSON value, nested at most `depth` levels below the top.
fn json_value(depth: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(depth, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(json_key(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A short string: any characters, or one the shipped schema or a URL check cares about.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => prop::collection::vec(any::<char>(), 0..12).prop_map(String::from_iter),
        1 => prop::sample::select(vec![
            "", "a lighthouse", "https://example.com/a.png", "data:image/png;base64,AAAA", "data:,x",
            "http://127.0.0.1/", "javascript:alert(1)", "Cinematic", "google/gemini-flash-1.5", "\u{0}",
        ])
        .prop_map(str::to_owned),
    ]
}

/// An object key: the shipped schema's field names, short words, or any characters.
fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(VPG_FIELDS.clone()),
        1 => prop::collection::vec(any::<char>(), 1..8).prop_map(String::from_iter),
    ]
}

/// A JSON object whose values nest at most `depth` levels.
fn json_object(depth: u32, max_keys: usize) -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(json_key(), json_value(depth), 0..max_keys).prop_map(|m| m.into_iter().collect())
}

/// One edit of a JSON text: overwrite, insert or delete a byte, or splice in a token.
#[derive(Clone, Debug)]
enum Edit {
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let token = prop::sample::select(vec![
        &b"{"[..],
        b"}",
        b"[",
        b"]",
        b",",
        b":",
        b"\"",
        b"\\",
        b"\\u0000",
        b"\\ud800",
        b"1e999",
        b"-0",
        b"null",
        b"\xEF\xBB\xBF",
        b"\xff",
        b"\xc0\x80",
        b"\x00",
        b"\"a\":1",
        b"/*",
        b" ",
    ]);
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Set(at, b)),
        (any::<usize>(), token).prop_map(|(at, t)| Edit::Insert(at, t.to_vec())),
        (any::<usize>(), 1..4usize).prop_map(|(at, n)| Edit::Delete(at, n)),
    ]
}

fn apply(mut text: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        let len = text.len();
        match edit {
            Edit::Set(at, b) if len > 0 => text[at % len] = *b,
            Edit::Insert(at, bytes) => {
                let at = at % (len + 1);
                text.splice(at..at, bytes.iter().copied());
            }
            Edit::Delete(at, n) if len > 0 => {
                let at = at % len;
                text.drain(at..(at + n).min(len));
            }
            _ => {}
        }
    }
    text
}

/// How deep `value` nests, a scalar counting 0 and each array or object 1.
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

// ---------------------------------------------------------------------------------------------
// Shared state

const VPG: &str = "fal-ai/video-prompt-generator";

fn shipped_schema() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/schemas/video-prompt-generator.json")
}

/// The shipped schema's field names.
static VPG_FIELDS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(shipped_schema()).unwrap()).unwrap();
    schema["properties"].as_object().unwrap().keys().cloned().collect()
});

/// The shipped schema, compiled as `config/falgate.toml` configures it (unknown fields refused).
static SCHEMAS: LazyLock<Schemas> = LazyLock::new(|| {
    Schemas::compile(vec![SchemaSource {
        endpoint: VPG.into(),
        path: shipped_schema(),
        unknown_fields: UnknownFields::Refuse,
        overlay: None,
        tier_overlays: Default::default(),
        trusted_url_prefixes: Vec::new(),
    }])
    .unwrap()
});

const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// An HS256 authenticator, with a current-thread runtime to drive it.
static AUTH: LazyLock<(Authenticator, tokio::runtime::Runtime)> = LazyLock::new(|| {
    let env = std::collections::HashMap::from([("FALGATE_AUTH__HS256_SECRET".to_owned(), SECRET.to_owned())]);
    let config = crate::config::Config::from_toml("[auth]\nleeway_seconds = 5\n", &env).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (Authenticator::new(&config.auth).unwrap(), runtime)
});

fn authenticate(token: &str) -> Result<Caller, crate::auth::AuthError> {
    let (auth, runtime) = &*AUTH;
    runtime.block_on(auth.authenticate(token))
}

/// `header.claims.signature`, HMAC-SHA256-signed with the configured secret, so the claims are
/// read after the signature passes.
fn signed(header: &Value, claims: &Value) -> String {
    use hmac::{Hmac, Mac};
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

fn now() -> i64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    i64::try_from(secs).unwrap()
}

/// Checks a 422's items and its rendered body: fal's shape, bounded in count and bytes.
fn assert_bounded_422(items: &[crate::schema::FieldError]) -> Result<(), TestCaseError> {
    prop_assert!(!items.is_empty());
    prop_assert!(
        items.len() <= 51,
        "{} detail items; at most 50 and one summary",
        items.len()
    );
    let body = render(&GateError::Invalid(items.to_vec()), "req-1");
    let text = body.to_string();
    prop_assert!(text.len() < 256 * 1024, "422 body of {} bytes", text.len());
    for item in body["detail"].as_array().unwrap() {
        prop_assert_eq!(&item["loc"][0], &json!("body"), "{}", item);
        prop_assert!(item["msg"].as_str().is_some_and(|m| !m.is_empty()), "{}", item);
        prop_assert!(item["type"].as_str().is_some_and(|t| !t.is_empty()), "{}", item);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Harnesses

proptest! {
    #![proptest_config(config())]

    /// Any string: an error or a call, never a panic.
    #[test]
    fn target_url_any_string(raw in any::<String>()) {
        if let Ok(call) = parse_target(&raw) {
            let _ = call.path_and_query();
        }
    }

    /// URL-shaped strings: what is accepted is canonical, on a fal host, and its rebuilt path
    /// parses back to the same call.
    #[test]
    fn target_url_accepts_only_canonical_fal_urls(raw in url_like()) {
        if let Ok(call) = parse_target(&raw) {
            let url = url::Url::parse(&raw).unwrap();
            prop_assert_eq!(url.as_str(), raw.as_str());
            prop_assert_eq!(url.scheme(), "https");
            prop_assert!(matches!(url.host_str(), Some("queue.fal.run" | "fal.run" | "rest.fal.ai" | "rest.alpha.fal.ai")));
            let rebuilt = call.path_and_query();
            prop_assert!(!rebuilt.contains(['#', '@', '\\', '%']) || rebuilt.contains("fal_webhook="), "{}", rebuilt);
            if url.host_str() == Some("queue.fal.run") {
                let (path, query) = rebuilt.split_once('?').map_or((rebuilt.as_str(), None), |(p, q)| (p, Some(q)));
                prop_assert_eq!(parse_queue_path(path, query), Ok(call.op.clone()));
            }
        }
    }

    /// Any path and query: an error or an operation, never a panic.
    #[test]
    fn queue_path_any_strings(path in any::<String>(), query in prop::option::of(any::<String>())) {
        let _ = parse_queue_path(&path, query.as_deref());
    }

    /// Path-shaped input: an accepted operation's canonical path parses back to itself and
    /// holds no encoded, empty or dot segment.
    #[test]
    fn queue_path_round_trips(path in path_like(), query in query_like()) {
        if let Ok(op) = parse_queue_path(&path, query.as_deref()) {
            let rebuilt = Call { op: op.clone() }.path_and_query();
            let (path, query) = rebuilt.split_once('?').map_or((rebuilt.as_str(), None), |(p, q)| (p, Some(q)));
            prop_assert!(path.starts_with('/') && !path.contains("//") && !path.contains(['%', '\\']), "{}", path);
            prop_assert!(path.split('/').skip(1).all(|s| !s.is_empty() && s != "." && s != ".."), "{}", path);
            prop_assert_eq!(parse_queue_path(path, query), Ok(op));
        }
    }

    /// Any bytes: an error or an object, never a panic; whatever is accepted serde_json reads
    /// the same way.
    #[test]
    fn strict_json_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(value) = schema::parse_object(&bytes, &ValidationLimits::default()) {
            let plain: Result<Value, String> = serde_json::from_slice(&bytes).map_err(|e| e.to_string());
            prop_assert_eq!(Ok(value), plain);
        }
    }

    /// Generated documents within the depth limit are accepted exactly as serde_json reads
    /// them; deeper ones are refused.
    #[test]
    fn strict_json_agrees_with_serde_json(object in json_object(6, 8), pretty in any::<bool>()) {
        let value = Value::Object(object);
        let text = if pretty { serde_json::to_vec_pretty(&value).unwrap() } else { serde_json::to_vec(&value).unwrap() };
        let limits = ValidationLimits { max_depth: 4, ..ValidationLimits::default() };
        let strict = schema::parse_object(&text, &limits);
        if depth(&value) <= limits.max_depth {
            let plain: Value = serde_json::from_slice(&text).unwrap();
            prop_assert_eq!(strict, Ok(plain));
        } else {
            prop_assert!(matches!(strict, Err(Rejection::Malformed(_))), "{:?}", strict);
        }
    }

    /// Mutated documents: whatever the strict reader accepts, serde_json accepts as the same value.
    #[test]
    fn strict_json_mutated_documents(object in json_object(4, 6), edits in prop::collection::vec(edit(), 1..6)) {
        let text = apply(serde_json::to_vec(&Value::Object(object)).unwrap(), &edits);
        if let Ok(value) = schema::parse_object(&text, &ValidationLimits::default()) {
            let plain: Result<Value, String> = serde_json::from_slice(&text).map_err(|e| e.to_string());
            prop_assert_eq!(Ok(value), plain);
        }
    }

    /// A key repeated in one object, at any depth and in any escaped spelling, is refused.
    #[test]
    fn strict_json_refuses_duplicate_keys(
        object in json_object(3, 6),
        key in "[a-z]{1,6}",
        first in json_value(2),
        second in json_value(2),
        escape in any::<bool>(),
        nest in 0..4usize,
    ) {
        // `{..., "key": first, ..., "key": second}` with the second key maybe spelt `\u0061...`.
        let spelt = if escape {
            key.chars().map(|c| format!("\\u{:04x}", c as u32)).collect::<String>()
        } else {
            key.clone()
        };
        let mut members: Vec<String> = object
            .iter()
            .filter(|(k, _)| **k != key)
            .map(|(k, v)| format!("{}:{v}", Value::String(k.clone())))
            .collect();
        members.insert(0, format!("\"{key}\":{first}"));
        members.push(format!("\"{spelt}\":{second}"));
        let mut text = format!("{{{}}}", members.join(","));
        for _ in 0..nest {
            text = format!("{{\"n\":[{text}]}}");
        }
        let strict = schema::parse_object(text.as_bytes(), &ValidationLimits::default());
        prop_assert!(matches!(&strict, Err(Rejection::Malformed(why)) if why.contains("duplicate")), "{}: {:?}", text, strict);
    }

    /// Arbitrarily deep brackets never overflow the stack.
    #[test]
    fn strict_json_deep_nesting(open in 1..20_000usize, kind in prop::sample::select(vec!["[", "{\"a\":"])) {
        let text = format!("{{\"a\":{}", kind.repeat(open));
        prop_assert!(schema::parse_object(text.as_bytes(), &ValidationLimits::default()).is_err());
    }

    /// Any string as a bearer token: refused, never a panic.
    #[test]
    fn token_any_string(token in any::<String>()) {
        prop_assert!(authenticate(&token).is_err());
    }

    /// Three arbitrary base64url segments (bytes, or JSON objects), unsigned: refused.
    #[test]
    fn token_any_base64_segments(
        header in prop_oneof![prop::collection::vec(any::<u8>(), 0..64), json_object(2, 6).prop_map(|o| Value::Object(o).to_string().into_bytes())],
        claims in prop_oneof![prop::collection::vec(any::<u8>(), 0..64), json_object(2, 6).prop_map(|o| Value::Object(o).to_string().into_bytes())],
        signature in prop::collection::vec(any::<u8>(), 0..48),
        dots in 0..5usize,
    ) {
        let mut token = [&header, &claims, &signature].map(|s| URL_SAFE_NO_PAD.encode(s)).join(".");
        token.push_str(&".".repeat(dots.saturating_sub(2)));
        prop_assert!(authenticate(&token).is_err());
    }

    /// Correctly signed tokens with arbitrary headers and claims: never a panic, and a caller
    /// only with a sane `sub`, a bounded tier and a bounded lifetime.
    #[test]
    fn token_signed_arbitrary_claims(
        extra_header in json_object(1, 4),
        alg in prop_oneof![4 => Just(json!("HS256")), 1 => prop::sample::select(vec![json!("hs256"), json!("none"), json!("RS256"), json!(1), Value::Null])],
        sub in prop_oneof![
            2 => "[a-z]{1,8}".prop_map(Value::String),
            1 => prop::collection::vec(prop::char::range('a', 'z'), 240..300).prop_map(|c| Value::String(String::from_iter(c))),
            1 => prop::collection::vec(any::<char>(), 0..12).prop_map(|c| Value::String(String::from_iter(c))),
            1 => json_value(1),
        ],
        exp in prop_oneof![
            3 => (-100i64..3600).prop_map(|d| json!(now() + d)),
            1 => (-100_000i64..200_000).prop_map(|d| json!(now() + d)),
            1 => json_value(0),
            1 => any::<f64>().prop_map(|f| json!(f)),
        ],
        iat in prop::option::of(prop_oneof![3 => (-3600i64..100).prop_map(|d| json!(now() + d)), 1 => json_value(0)]),
        tier in prop::option::of(json_value(1)),
        extra_claims in json_object(2, 4),
    ) {
        let mut header = extra_header;
        header.insert("alg".into(), alg);
        let mut claims = extra_claims;
        claims.insert("sub".into(), sub);
        claims.insert("exp".into(), exp);
        if let Some(iat) = iat {
            claims.insert("iat".into(), iat);
        }
        if let Some(tier) = tier {
            claims.insert("tier".into(), tier);
        }
        let token = signed(&Value::Object(header), &Value::Object(claims));
        if let Ok(caller) = authenticate(&token) {
            prop_assert!(!caller.subject.is_empty() && caller.subject.len() <= 256);
            prop_assert!(!caller.subject.chars().any(char::is_control));
            prop_assert!(!caller.tier.is_empty() && caller.tier.len() <= 64);
        }
    }

    /// Arbitrary objects against the shipped schema: accepted bytes are forwarded untouched,
    /// refusals are 400/413 or a bounded 422 in fal's shape, never a panic.
    #[test]
    fn schema_validation_arbitrary_objects(object in json_object(4, 12)) {
        let body = serde_json::to_vec(&Value::Object(object)).unwrap();
        match SCHEMAS.validate(VPG, None, &body, &ValidationLimits::default()) {
            Ok(valid) => prop_assert_eq!(&valid.bytes[..], &body[..]),
            Err(Rejection::Invalid(items)) => assert_bounded_422(&items)?,
            Err(Rejection::Malformed(_) | Rejection::TooLarge(_) | Rejection::TooComplex(_)) => {}
            Err(other) => prop_assert!(false, "{:?}", other),
        }
    }
}

/// A quarter of the cases for the wide harness: each case validates up to 150 unknown keys.
fn wide_config() -> ProptestConfig {
    let base = config();
    ProptestConfig {
        cases: (base.cases / 4).max(16),
        ..base
    }
}

proptest! {
    #![proptest_config(wide_config())]

    /// Wide objects (many unknown keys, long keys): the 422 stays bounded in items and bytes.
    #[test]
    fn schema_validation_wide_objects(
        keys in prop::collection::btree_set(prop::collection::vec(any::<char>(), 1..40).prop_map(String::from_iter), 55..150),
        value in json_value(1),
    ) {
        let object: Map<String, Value> = keys.into_iter().map(|k| (k, value.clone())).collect();
        let body = serde_json::to_vec(&Value::Object(object)).unwrap();
        match SCHEMAS.validate(VPG, None, &body, &ValidationLimits::default()) {
            Err(Rejection::Invalid(items)) => assert_bounded_422(&items)?,
            Err(Rejection::Malformed(_) | Rejection::TooLarge(_) | Rejection::TooComplex(_)) => {}
            other => prop_assert!(false, "{:?}", other.map(|_| ())),
        }
    }
}

/// Every harness's generator yields at least some accepted inputs, so the "if accepted"
/// properties above are not vacuous.
#[test]
fn generators_reach_the_accepting_paths() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let accepted = (0..1000)
        .filter(|_| {
            let raw = url_like().new_tree(&mut runner).unwrap().current();
            parse_target(&raw).is_ok()
        })
        .count();
    assert!(accepted > 0, "url_like never produced an accepted target");
    let paths = (0..1000)
        .filter(|_| {
            let (path, query) = (path_like(), query_like()).new_tree(&mut runner).unwrap().current();
            matches!(
                parse_queue_path(&path, query.as_deref()),
                Ok(Op::Status { .. } | Op::Submit { .. })
            )
        })
        .count();
    assert!(paths > 0, "path_like never produced an accepted path");
    let valid = signed(
        &json!({"alg": "HS256"}),
        &json!({"sub": "u", "exp": now() + 60, "iat": now()}),
    );
    assert!(
        authenticate(&valid).is_ok(),
        "the signed-token harness cannot reach a caller"
    );
}

// ---------------------------------------------------------------------------------------------
// Regressions found by the harnesses above (each named for what it broke).
