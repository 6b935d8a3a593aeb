//! What a verified delivery does ([`apply`]), on an in-process limiter: the slot is freed at
//! once, a server-side failure is refunded only when configured, and "job ended" is told once.

use super::*;
use crate::limits::{LimitsConfig, OpClass, Subject};

const ID: &str = "764cabcf-b745-4b3e-ae38-1200304cf45b";

fn limiter(refund: bool) -> Limiter {
    let config: LimitsConfig = toml::from_str(&format!(
        r#"
        default_tier = "default"
        refund_failed_jobs = {refund}
        [tiers.default]
        max_inflight_jobs = 1
        daily_credits = 10
        [credits]
        default_cost = 3
        "#
    ))
    .unwrap();
    Limiter::new(config, None).unwrap()
}

fn subject() -> Subject<'static> {
    Subject {
        principal: "default|alice",
        tier: "default",
    }
}

/// Admits and starts one job (3 credits), returning its record.
async fn started(limiter: &Limiter) -> (FalRequestId, Submitted) {
    let admission = limiter.admit(&subject(), OpClass::Submit, None, 3).await.unwrap();
    let app = AppId::from_segments(&["fal-ai", "flux"]).unwrap();
    let id = FalRequestId::parse(ID).unwrap();
    limiter.job_started(&admission, &app, &id).await;
    let job = Submitted {
        tag: admission.tag().to_owned(),
        app: app.as_str().to_owned(),
        spend: admission.spend(),
        hook: None,
    };
    (id, job)
}

async fn credits_left(limiter: &Limiter) -> u64 {
    let states = limiter.usage(&subject()).await.unwrap();
    states.iter().find(|s| s.name == "daily-credits").unwrap().remaining
}

#[tokio::test]
async fn a_delivery_frees_the_slot_at_once_and_tells_job_ended() {
    let limiter = limiter(false);
    let (id, job) = started(&limiter).await;
    assert!(
        limiter.admit(&subject(), OpClass::Submit, None, 3).await.is_err(),
        "at its limit"
    );
    let ended = Counting::default();
    let refunded = apply(&limiter, &ended, &id, &job, &Outcome::Ok).await;
    assert!(!refunded);
    assert_eq!(ended.count(), 1);
    assert!(
        limiter.admit(&subject(), OpClass::Submit, None, 3).await.is_ok(),
        "slot freed"
    );
}

#[tokio::test]
async fn a_server_side_failure_is_refunded_only_when_configured() {
    let failed = Outcome::Error {
        error_type: Some("runner_disconnected".into()),
    };
    for (refund, outcome, expected) in [
        (true, failed.clone(), 10),
        (false, failed.clone(), 7),
        (
            true,
            Outcome::Error {
                error_type: Some("validation_error".into()),
            },
            7,
        ),
        (true, Outcome::Error { error_type: None }, 7),
        (true, Outcome::Ok, 7),
    ] {
        let limiter = limiter(refund);
        let (id, job) = started(&limiter).await;
        assert_eq!(credits_left(&limiter).await, 7);
        let refunded = apply(&limiter, &Counting::default(), &id, &job, &outcome).await;
        assert_eq!(refunded, expected == 10, "{refund} {outcome:?}");
        assert_eq!(credits_left(&limiter).await, expected, "{refund} {outcome:?}");
    }
}

#[test]
fn fal_payloads_are_read_as_documented() {
    assert_eq!(
        Outcome::of(br#"{"request_id":"x","status":"OK","payload":{}}"#),
        Outcome::Ok
    );
    let error =
        Outcome::of(br#"{"status":"ERROR","error":"Invalid status code: 500","error_type":"runner_server_error"}"#);
    assert!(error.failed_server_side());
    assert!(!Outcome::of(br#"{"status":"ERROR","error":"Invalid status code: 422"}"#).failed_server_side());
    assert_eq!(Outcome::of(b"not json"), Outcome::Unknown);
    assert_eq!(Outcome::of(br#"{"status":"WHATEVER"}"#), Outcome::Unknown);
}

#[tokio::test]
async fn a_delivery_is_forwarded_only_to_a_hook_the_policy_still_allows() {
    let storage = url::Url::parse("http://127.0.0.1:9/rest.fal.ai").unwrap();
    let webhooks = Webhooks::new(
        WebhooksConfig::off(),
        Parts {
            storage_url: &storage,
            redis: None,
            on_store_error: OnStoreError::default(),
            job_ttl: std::time::Duration::from_secs(60),
            clock: Clock::system(),
            ended: Arc::new(Counting::default()),
        },
    )
    .unwrap();
    let hook = "https://hooks.example.com/hooks/fal?app=1";
    assert_eq!(
        webhooks.forward_url(hook, &|_| true).map(String::from),
        Some(hook.to_owned())
    );
    // A reload dropped its host from `webhooks.allowed_hosts` after the job was submitted.
    assert_eq!(webhooks.forward_url(hook, &|_| false), None);
}
