//! The playground on `serve`: off unless `[playground] enabled = true`; its page and assets are
//! static, its endpoint list needs a caller.

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::TestGate;

const VPG: &str = "fal-ai/video-prompt-generator";

#[tokio::test]
async fn the_playground_is_off_by_default() {
    let gate = TestGate::spawn().await;
    for path in [
        "/",
        "/playground/app.js",
        "/playground/fal-client.js",
        "/playground/api/endpoints",
    ] {
        let answer = gate.get_as_alice(path).await;
        assert_eq!(answer.status(), StatusCode::NOT_FOUND, "{path}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["code"], "route_not_found", "{path}");
        let post = gate.post_as_alice(path, &serde_json::json!({})).await;
        assert_eq!(post.status(), StatusCode::NOT_FOUND, "POST {path}");
    }
}

#[tokio::test]
async fn an_enabled_playground_serves_its_page_under_a_strict_csp_and_lists_schemas_to_callers_only() {
    let gate = TestGate::builder()
        .config("[playground]\nenabled = true\n")
        .spawn()
        .await;
    let page = crate::support::get(format!("{}/", gate.url)).await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<script type="module" src="/playground/app.js"></script>"#));
    assert!(!html.contains("<script>"), "an inline script");
    let client = crate::support::get(format!("{}/playground/fal-client.js", gate.url))
        .await
        .unwrap();
    assert_eq!(client.headers()["content-type"], "text/javascript; charset=utf-8");
    assert!(client.text().await.unwrap().contains("x-fal-target-url"));
    let missing = crate::support::get(format!("{}/playground/nope.js", gate.url))
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let post = gate.post_as_alice("/", &serde_json::json!({})).await;
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);

    let anonymous = crate::support::get(format!("{}/playground/api/endpoints", gate.url))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let listed: Value = gate
        .get_as_alice("/playground/api/endpoints")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["subject"], "alice");
    let endpoints = listed["endpoints"].as_array().unwrap();
    let endpoint = endpoints
        .iter()
        .find(|e| e["id"] == VPG)
        .expect("the endpoint is listed");
    let schema = &endpoint["schema"];
    assert_eq!(schema["required"][0], "input_concept");
    assert_eq!(schema["properties"]["style"]["default"], "Simple");
    assert!(gate.fal_saw().is_empty());
}

#[tokio::test]
async fn the_schema_listed_is_the_callers_tier_and_endpoints_it_may_not_use_are_left_out() {
    let gate = TestGate::builder()
        .config(
            "[playground]\nenabled = true\n\
             [tiers.free]\nendpoints = []\n\
             [tiers.pro]\nendpoints = [\"fal-ai/video-prompt-generator\"]\n\
             [endpoints.\"fal-ai/video-prompt-generator\".tiers.pro.fields.model]\n\
             allowed = [\"google/gemini-flash-1.5\"]\n",
        )
        .spawn()
        .await;
    let list = |token: String| {
        let url = format!("{}/playground/api/endpoints", gate.url);
        async move {
            crate::support::client()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let free = list(gate.tier_token("u1", "free")).await;
    assert_eq!(free["endpoints"], serde_json::json!([]));
    let pro = list(gate.tier_token("u2", "pro")).await;
    assert_eq!(pro["endpoints"].as_array().unwrap().len(), 1);
    assert_eq!(
        pro["endpoints"][0]["schema"]["properties"]["model"]["enum"],
        serde_json::json!(["google/gemini-flash-1.5"])
    );
}

/// Issue 20: the endpoint list is one caller's answer, like everything under `/api/fal/`:
/// `no-store` and `Vary` on the credentials and the origin, refusals included.
#[tokio::test]
async fn the_endpoint_list_is_never_cached_and_varies_on_the_credentials() {
    let gate = TestGate::builder()
        .config("[playground]\nenabled = true\n")
        .spawn()
        .await;
    let listed = gate.get_as_alice("/playground/api/endpoints").await;
    let anonymous = reqwest::get(format!("{}/playground/api/endpoints", gate.url))
        .await
        .unwrap();
    for answer in [listed, anonymous] {
        assert_eq!(answer.headers()["cache-control"], "no-store", "{}", answer.status());
        let vary: Vec<&str> = answer
            .headers()
            .get_all("vary")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(
            vary.first(),
            Some(&"Authorization, Cookie, Origin"),
            "{}",
            answer.status()
        );
    }
    // The static page is not private.
    let page = reqwest::get(format!("{}/", gate.url)).await.unwrap();
    assert_ne!(
        page.headers().get("vary").map(|v| v.to_str().unwrap()),
        Some("Authorization, Cookie, Origin")
    );
}
