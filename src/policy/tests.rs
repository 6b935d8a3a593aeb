use std::collections::HashMap;
use std::sync::Arc;

use axum::http::HeaderValue;
use serde_json::json;

use super::*;
use crate::config::Config;
use crate::error::OnTheWire;
use crate::fal::{parse_queue_path, FalRequestId};

const CONFIG: &str = r#"
[endpoints."fal-ai/video-prompt-generator"]
sync_run = true
schema = "schemas/video-prompt-generator.json"
[endpoints."fal-ai/flux"]
schema = "flux.json"
[webhooks]
allowed_hosts = ["hooks.example.com"]
[tiers.free]
endpoints = ["fal-ai/video-prompt-generator"]
operations = ["submit", "status", "stream", "result", "cancel"]
max_queue_priority = "low"
[tiers.free.options."fal-ai/video-prompt-generator"]
model = ["google/gemini-flash-1.5", "meta-llama/llama-3.2-1b-instruct"]
[tiers.pro]
"#;

fn policy() -> Policy {
    let env = HashMap::from([("FALGATE_AUTH__HS256_SECRET".to_owned(), "x".repeat(32))]);
    Policy::new(&Config::from_toml(CONFIG, &env).unwrap().policy())
}

fn caller(tier: &str) -> Caller {
    Caller {
        issuer: Arc::from("default"),
        subject: "u".into(),
        tier: tier.into(),
        scopes: Vec::new().into(),
    }
}

fn call(path: &str, query: Option<&str>) -> Call {
    Call {
        op: parse_queue_path(path, query).unwrap(),
    }
}

#[test]
fn listed_endpoint_and_its_sub_paths_are_allowed_and_others_not() {
    let policy = policy();
    assert!(policy
        .authorize(&caller("pro"), &call("/fal-ai/video-prompt-generator", None))
        .is_ok());
    assert!(policy
        .authorize(&caller("pro"), &call("/fal-ai/flux/dev", None))
        .is_ok());
    for path in ["/fal-ai/fluxx", "/other/app", "/fal-ai/video-prompt-generatorx"] {
        let err = policy.authorize(&caller("pro"), &call(path, None)).unwrap_err();
        assert_eq!(err.code(), "endpoint_not_allowed", "{path}");
    }
}

#[test]
fn a_tier_only_reaches_its_own_endpoints_and_operations() {
    let policy = policy();
    assert_eq!(
        policy
            .authorize(&caller("free"), &call("/fal-ai/flux/dev", None))
            .unwrap_err()
            .code(),
        "endpoint_not_allowed"
    );
    let run = Call {
        op: Op::Run {
            endpoint: EndpointId::parse("fal-ai/video-prompt-generator").unwrap(),
        },
    };
    assert_eq!(
        policy.authorize(&caller("free"), &run).unwrap_err().code(),
        "endpoint_not_allowed"
    );
    assert!(policy.authorize(&caller("pro"), &run).is_ok());
    assert_eq!(
        policy.authorize(&caller("gold"), &run).unwrap_err().code(),
        "tier_not_allowed"
    );
}

#[test]
fn sync_run_needs_the_endpoint_flag() {
    let run = Call {
        op: Op::Run {
            endpoint: EndpointId::parse("fal-ai/flux/dev").unwrap(),
        },
    };
    assert_eq!(
        policy().authorize(&caller("pro"), &run).unwrap_err().code(),
        "sync_run_not_allowed"
    );
}

#[test]
fn status_of_an_unlisted_app_and_denied_uploads_are_refused() {
    let id = FalRequestId::parse("764cabcf-b745-4b3e-ae38-1200304cf45b").unwrap();
    let status = Call {
        op: Op::Result {
            app: AppId::from_segments(&["other", "app"]).unwrap(),
            id,
        },
    };
    assert_eq!(
        policy().authorize(&caller("pro"), &status).unwrap_err().code(),
        "endpoint_not_allowed"
    );
    assert_eq!(
        policy()
            .authorize(
                &caller("pro"),
                &Call {
                    op: Op::StorageInitiate { multipart: false }
                }
            )
            .unwrap_err()
            .code(),
        "uploads_not_allowed"
    );
}

#[test]
fn webhooks_only_reach_allowed_https_hosts() {
    let policy = policy();
    let ok = call(
        "/fal-ai/flux/dev",
        Some("fal_webhook=https%3A%2F%2Fhooks.example.com%2Fh"),
    );
    assert!(policy.authorize(&caller("pro"), &ok).is_ok());
    for hook in [
        "http://hooks.example.com/h",
        "https://hooks.example.com.evil.com/h",
        "https://evil.com/h",
        "https://hooks.example.com:8443/h",
        "https://user@hooks.example.com/h",
        "https://169.254.169.254/",
    ] {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("fal_webhook", hook)
            .finish();
        let err = policy
            .authorize(&caller("pro"), &call("/fal-ai/flux/dev", Some(&query)))
            .unwrap_err();
        assert_eq!(err.code(), "webhook_not_allowed", "{hook}");
        assert!(!policy.allows_webhook(hook), "{hook}");
    }
    assert!(policy.allows_webhook("https://hooks.example.com/h"));
}

#[test]
fn free_tier_priority_is_capped_to_low() {
    let policy = policy();
    let grant = policy
        .authorize(&caller("free"), &call("/fal-ai/video-prompt-generator", None))
        .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(PRIORITY_HEADER, HeaderValue::from_static("normal"));
    grant.cap_priority(&mut headers);
    assert_eq!(headers[PRIORITY_HEADER], "low");
    let mut empty = HeaderMap::new();
    grant.cap_priority(&mut empty);
    assert_eq!(empty[PRIORITY_HEADER], "low");
}

#[test]
fn free_tier_may_not_pick_a_premium_model() {
    let policy = policy();
    let grant = policy
        .authorize(&caller("free"), &call("/fal-ai/video-prompt-generator", None))
        .unwrap();
    assert!(grant
        .check_options(&json!({"model": "google/gemini-flash-1.5"}))
        .is_ok());
    let err = grant.check_options(&json!({"model": "openai/gpt-4o"})).unwrap_err();
    assert_eq!(err.code(), "option_not_allowed");
    assert!(
        err.message().contains("`model`") && err.message().contains("google/gemini-flash-1.5"),
        "{}",
        err.message()
    );
    let pro = policy
        .authorize(&caller("pro"), &call("/fal-ai/video-prompt-generator", None))
        .unwrap();
    assert!(pro.check_options(&json!({"model": "openai/gpt-4o"})).is_ok());
}

#[test]
fn a_token_alias_shared_with_an_endpoint_that_did_not_opt_in_is_refused() {
    let config = r#"
[endpoints."fal-ai/lcm"]
schema = "lcm.json"
client_tokens = true
[endpoints."other/lcm"]
schema = "lcm.json"
[endpoints."fal-ai/sdxl"]
schema = "sdxl.json"
client_tokens = true
"#;
    let env = HashMap::from([("FALGATE_AUTH__HS256_SECRET".to_owned(), "x".repeat(32))]);
    let policy = Policy::new(&Config::from_toml(config, &env).unwrap().policy());
    let token = Call {
        op: Op::ClientToken { realtime: false },
    };
    let grant = policy.authorize(&caller("any"), &token).unwrap();
    assert!(policy.check_token_apps(&grant, &["sdxl".into()]).is_ok());
    for refused in [
        vec!["lcm".to_owned()],
        vec!["sdxl".into(), "lcm".into()],
        vec!["flux".into()],
    ] {
        let err = policy.check_token_apps(&grant, &refused).unwrap_err();
        assert_eq!(err.code(), "endpoint_not_allowed", "{refused:?}");
    }
}
