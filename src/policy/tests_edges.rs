//! Edges of the policy that the main tests do not pin, each found by mutation testing
//! (`scripts/mutants policy`, see TESTING.md): kept apart from `tests.rs` so feature work there
//! does not collide with them.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::HeaderValue;

use super::*;
use crate::config::Config;
use crate::fal::parse_queue_path;

fn policy(toml: &str) -> Policy {
    let env = HashMap::from([("FALGATE_AUTH__HS256_SECRET".to_owned(), "x".repeat(32))]);
    Policy::new(&Config::from_toml(toml, &env).unwrap().policy())
}

fn caller(tier: &str) -> Caller {
    Caller {
        issuer: Arc::from("default"),
        subject: "u".into(),
        tier: tier.into(),
        scopes: Vec::new().into(),
    }
}

const ENDPOINT: &str = "[endpoints.\"fal-ai/flux\"]\nschema = \"flux.json\"\n";

#[test]
fn uploads_allowed_by_config_pass_the_policy_with_no_endpoint_entry() {
    let policy = policy(&format!("{ENDPOINT}[storage]\nuploads = \"allow\"\n"));
    let grant = policy
        .authorize(
            &caller("any"),
            &Call {
                op: Op::StorageInitiate { multipart: false },
            },
        )
        .expect("uploads are allowed by config");
    assert_eq!(grant.endpoint, None);
}

#[test]
fn a_priority_at_or_under_the_cap_is_left_as_the_caller_sent_it() {
    let policy = policy(&format!("{ENDPOINT}[tiers.std]\nmax_queue_priority = \"normal\"\n"));
    let call = Call {
        op: parse_queue_path("/fal-ai/flux/dev", None).unwrap(),
    };
    let grant = policy.authorize(&caller("std"), &call).unwrap();
    // No header asked for nothing above the cap: none is added.
    let mut none = HeaderMap::new();
    grant.cap_priority(&mut none);
    assert!(none.get(PRIORITY_HEADER).is_none(), "{none:?}");
    // `low` is under a `normal` cap: kept.
    let mut low = HeaderMap::new();
    low.insert(PRIORITY_HEADER, HeaderValue::from_static("low"));
    grant.cap_priority(&mut low);
    assert_eq!(low[PRIORITY_HEADER], "low");
}
