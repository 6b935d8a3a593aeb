//! A temporary fal token's body (`client_token`), driven through [`handle`] against the fal
//! emulator on `127.0.0.1:0` (mutation runs build the unit tests only; `tests/it/tokens.rs`
//! checks the same over HTTP): which bodies are refused, with which field and reason, and the
//! exact body forwarded on each route (`/tokens/` and `/tokens/realtime`).

use axum::http::{HeaderMap, HeaderValue};
use serde_json::{json, Value};

use super::tests::{caller, fixture, Fixture};
use super::*;

/// Eight apps that opt in to client tokens (`app-1`…`app-8`) and `realtime-app`; `echo` (in
/// the base config) does not. Tokens last at most fal's default, 120 s (the config's default).
fn tokens_config() -> String {
    let mut config = String::from("token = { burst = 100, per_minute = 6000 }\n");
    let apps = (1..=8).map(|n| format!("app-{n}")).chain(["realtime-app".to_owned()]);
    for app in apps {
        config.push_str(&format!(
            "[endpoints.\"fal-ai/{app}\"]\nclient_tokens = true\nschema = \"tests/fixtures/schemas/any-object.json\"\nunknown_fields = \"allow\"\n"
        ));
    }
    config
}

/// What became of one token request: the body fal was sent, or the refusal's code and, for a
/// 422, the (field, error type) it names.
#[derive(Debug, PartialEq)]
enum Minted {
    Forwarded(Value),
    Refused(&'static str, Option<(String, String)>),
}

async fn mint(fx: &Fixture, realtime: bool, body: Value) -> Minted {
    let before = fx.fal.requests().len();
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let call = Call {
        op: Op::ClientToken { realtime },
    };
    let answered = handle(
        &fx.gate,
        caller("alice", fx.tier),
        call,
        &headers,
        Body::from(body.to_string()),
    )
    .await;
    let saw = fx.fal.requests();
    match answered {
        Ok(response) => {
            assert!(response.status().is_success(), "{}", response.status());
            assert_eq!(saw.len(), before + 1, "one call to fal");
            let sent = saw.last().unwrap();
            let path = if realtime {
                "/rest.fal.ai/tokens/realtime"
            } else {
                "/rest.fal.ai/tokens/"
            };
            assert_eq!((sent.method.as_str(), sent.path.as_str()), ("POST", path));
            Minted::Forwarded(serde_json::from_str(&sent.body).unwrap())
        }
        Err(err) => {
            assert_eq!(saw.len(), before, "a refused token reached fal");
            let field = match &err {
                GateError::Invalid(fields) => {
                    assert_eq!(fields.len(), 1, "{fields:?}");
                    let loc = &fields[0].loc;
                    assert_eq!(loc.len(), 2, "{loc:?}");
                    assert_eq!(loc[0], "body");
                    Some((loc[1].as_str().unwrap().to_owned(), fields[0].kind.clone()))
                }
                _ => None,
            };
            Minted::Refused(err.code(), field)
        }
    }
}

fn refused(field: &str, kind: &str) -> Minted {
    Minted::Refused("validation_failed", Some((field.to_owned(), kind.to_owned())))
}

#[tokio::test]
async fn the_body_forwarded_is_the_checked_apps_and_lifetime_under_each_routes_name() {
    let fx = fixture(0, &tokens_config()).await;
    let cases = [
        // The lifetime asked, kept under the cap; at least one second.
        (
            false,
            json!({"allowed_apps": ["realtime-app"], "token_expiration": 7}),
            json!({"allowed_apps": ["realtime-app"], "token_expiration": 7}),
        ),
        (
            false,
            json!({"allowed_apps": ["realtime-app"], "token_expiration": 1}),
            json!({"allowed_apps": ["realtime-app"], "token_expiration": 1}),
        ),
        // Lowered to the cap; none asked: the cap.
        (
            false,
            json!({"allowed_apps": ["realtime-app"], "token_expiration": 121}),
            json!({"allowed_apps": ["realtime-app"], "token_expiration": 120}),
        ),
        (
            false,
            json!({"allowed_apps": ["realtime-app"]}),
            json!({"allowed_apps": ["realtime-app"], "token_expiration": 120}),
        ),
        // The realtime route names it `duration`, and takes the legacy name too.
        (
            true,
            json!({"allowed_apps": ["realtime-app"], "duration": 30}),
            json!({"allowed_apps": ["realtime-app"], "duration": 30}),
        ),
        (
            true,
            json!({"allowed_apps": ["realtime-app"], "token_expiration": 20}),
            json!({"allowed_apps": ["realtime-app"], "duration": 20}),
        ),
        (
            true,
            json!({"allowed_apps": ["realtime-app"], "duration": 600}),
            json!({"allowed_apps": ["realtime-app"], "duration": 120}),
        ),
        (
            true,
            json!({"allowed_apps": ["realtime-app"]}),
            json!({"allowed_apps": ["realtime-app"], "duration": 120}),
        ),
    ];
    for (realtime, body, forwarded) in cases {
        let what = format!("realtime {realtime}: {body}");
        assert_eq!(mint(&fx, realtime, body).await, Minted::Forwarded(forwarded), "{what}");
    }
}

#[tokio::test]
async fn a_token_names_one_to_eight_app_aliases() {
    let fx = fixture(0, &tokens_config()).await;
    let apps = |n: usize| (1..=n).map(|i| format!("app-{i}")).collect::<Vec<_>>();
    assert_eq!(
        mint(&fx, false, json!({"allowed_apps": apps(8), "token_expiration": 5})).await,
        Minted::Forwarded(json!({"allowed_apps": apps(8), "token_expiration": 5}))
    );
    let list = refused("allowed_apps", "type_error.list");
    for body in [
        json!({"allowed_apps": apps(8).into_iter().chain(["realtime-app".to_owned()]).collect::<Vec<_>>()}),
        json!({"allowed_apps": []}),
        json!({"allowed_apps": "realtime-app"}),
    ] {
        assert_eq!(mint(&fx, false, body.clone()).await, list, "{body}");
    }
    assert_eq!(
        mint(&fx, false, json!({"token_expiration": 5})).await,
        refused("allowed_apps", "value_error.missing")
    );
}

#[tokio::test]
async fn each_app_must_be_a_plain_alias_before_the_policy_is_asked() {
    let fx = fixture(0, &tokens_config()).await;
    // Not aliases: refused as such (422), not as apps the caller may not use (403).
    for alias in [
        ".",
        "..",
        "../realtime-app",
        "fal-ai/realtime-app",
        "realtime app",
        "",
        &"a".repeat(129),
    ] {
        assert_eq!(
            mint(&fx, false, json!({"allowed_apps": [alias]})).await,
            refused("allowed_apps", "type_error.str"),
            "{alias}"
        );
    }
    assert_eq!(
        mint(&fx, false, json!({"allowed_apps": ["realtime-app", 7]})).await,
        refused("allowed_apps", "type_error.str")
    );
    // Aliases of apps not configured, or not opted in: the policy's refusal.
    for alias in ["nowhere", "echo", &"a".repeat(128), "a.b_c-D9"] {
        assert_eq!(
            mint(&fx, false, json!({"allowed_apps": ["realtime-app", alias]})).await,
            Minted::Refused("endpoint_not_allowed", None),
            "{alias}"
        );
    }
}

#[tokio::test]
async fn only_the_routes_own_fields_are_taken() {
    let fx = fixture(0, &tokens_config()).await;
    let apps = json!(["realtime-app"]);
    let cases = [
        (
            false,
            json!({"allowed_apps": apps, "token_expiration": 5, "x": 1}),
            refused("x", "value_error.extra"),
        ),
        (
            false,
            json!({"allowed_apps": apps, "duration": 5}),
            refused("duration", "value_error.extra"),
        ),
        (
            true,
            json!({"allowed_apps": apps, "duration": 5, "x": 1}),
            refused("x", "value_error.extra"),
        ),
        (
            true,
            json!({"allowed_apps": apps, "duration": 5, "token_expiration": 5}),
            refused("duration", "value_error"),
        ),
    ];
    for (realtime, body, answer) in cases {
        let what = format!("realtime {realtime}: {body}");
        assert_eq!(mint(&fx, realtime, body).await, answer, "{what}");
    }
}

#[tokio::test]
async fn a_lifetime_is_a_whole_number_of_seconds_of_at_least_one() {
    let fx = fixture(0, &tokens_config()).await;
    let apps = json!(["realtime-app"]);
    for seconds in [json!(0), json!(-5), json!(1.5), json!("60"), json!(null)] {
        assert_eq!(
            mint(&fx, false, json!({"allowed_apps": apps, "token_expiration": seconds})).await,
            refused("token_expiration", "type_error.integer"),
            "{seconds}"
        );
        assert_eq!(
            mint(&fx, true, json!({"allowed_apps": apps, "duration": seconds})).await,
            refused("duration", "type_error.integer"),
            "{seconds}"
        );
        assert_eq!(
            mint(&fx, true, json!({"allowed_apps": apps, "token_expiration": seconds})).await,
            refused("token_expiration", "type_error.integer"),
            "{seconds}"
        );
    }
}
