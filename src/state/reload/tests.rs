//! The swap: restart-only settings keep their running value, a new snapshot shares the
//! process-lived parts, a call in flight keeps its snapshot, and a bad config changes nothing.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::config::FalCredentials;
use crate::error::OnTheWire;
use crate::limits::{OpClass, Subject};
use crate::state::Gate;

const BASE: &str = r#"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
workers = 1
[endpoints."fal-ai/video-prompt-generator"]
schema = "config/schemas/video-prompt-generator.json"
[limits]
default_tier = "free"
[limits.tiers.free]
cancel = { burst = 3, per_minute = 1 }
"#;

fn config(extra: &str) -> Config {
    let env = HashMap::from([(
        "FALGATE_AUTH__HS256_SECRET".to_owned(),
        "0123456789abcdef0123456789abcdef".to_owned(),
    )]);
    Config::from_toml_in(&format!("{BASE}{extra}"), &env, Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn current() -> Arc<Current> {
    let gate = Gate::new(config(""), &FalCredentials::new("key".into())).unwrap();
    Arc::new(Current::new(gate))
}

const ALICE: Subject<'static> = Subject {
    principal: "default|alice",
    tier: "free",
};

async fn cancel(gate: &Gate) -> Result<(), crate::limits::LimitError> {
    gate.limiter.admit(&ALICE, OpClass::Cancel, None, 0).await.map(drop)
}

#[tokio::test]
async fn a_reload_swaps_the_config_keeps_the_process_parts_and_spares_calls_in_flight() {
    let current = current();
    let in_flight = current.load();
    cancel(&in_flight).await.unwrap();
    cancel(&in_flight).await.unwrap();

    let added = "[endpoints.\"fal-ai/echo\"]\nschema = \"tests/fixtures/schemas/any-object.json\"\n";
    let reloaded = current.reload(config(added)).await.unwrap();
    assert_eq!(reloaded, Reloaded::default());

    let next = current.load();
    assert!(!Arc::ptr_eq(&next, &in_flight));
    assert_eq!(next.config.endpoints.len(), 2);
    assert_eq!(
        in_flight.config.endpoints.len(),
        1,
        "a call in flight keeps its snapshot"
    );
    assert!(Arc::ptr_eq(&next.upstream, &in_flight.upstream));
    assert!(Arc::ptr_eq(&next.ownership, &in_flight.ownership));
    // Burst 3, two spent before the reload: one more, then refused.
    cancel(&next).await.unwrap();
    assert_eq!(cancel(&next).await.unwrap_err().code(), "rate_limited");
}

#[tokio::test]
async fn a_bad_config_keeps_the_running_snapshot() {
    let current = current();
    let running = current.load();
    let missing_schema = "[endpoints.\"fal-ai/echo\"]\nschema = \"no/such/schema.json\"\n";
    let err = current.reload(config(missing_schema)).await.unwrap_err();
    assert!(err.to_string().contains("no/such/schema.json"), "{err}");
    assert!(Arc::ptr_eq(&current.load(), &running));

    let mut no_default_tier = config("");
    no_default_tier.limits.default_tier = "gold".into();
    assert!(current.reload(no_default_tier).await.is_err());
    assert!(Arc::ptr_eq(&current.load(), &running));

    let reported = reload_and_report(&current, Err("`limitz`: unknown field".into())).await;
    assert!(!reported);
    assert!(Arc::ptr_eq(&current.load(), &running));
}

#[tokio::test]
async fn restart_only_settings_are_named_and_keep_their_running_value() {
    let current = current();
    let mut next = config("");
    next.listen = "127.0.0.1:9999".parse().unwrap();
    next.workers = 7;
    next.log_format = crate::config::LogFormat::Json;
    next.limits.max_tracked_callers += 1;
    next.limits.tiers.get_mut("free").unwrap().cancel = None;
    let reloaded = current.reload(next).await.unwrap();
    assert_eq!(
        reloaded.restart_needed,
        ["listen", "workers", "log.format", "limits.max_tracked_callers"]
    );
    let gate = current.load();
    let running = config("");
    assert_eq!(gate.config.listen, running.listen);
    assert_eq!(gate.config.workers, 1);
    assert_eq!(gate.config.log_format, running.log_format);
    assert_eq!(
        gate.config.limits.max_tracked_callers,
        running.limits.max_tracked_callers
    );
    // What may reload did: the cancel rate is gone.
    assert!(gate.config.limits.tiers["free"].cancel.is_none());
}
