//! The realtime WebSocket echo: the upgrade needs a token issued here, live, for the app's alias;
//! then each frame comes back unchanged.

use axum::body::Body;
use axum::http::StatusCode;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::tests::{call, emulator};
use crate::emulator::Emulator;

const PATH: &str = "/fal.run/fal-ai/live-app/realtime";

async fn issue(emulator: &Emulator, apps: &[&str], seconds: u64) -> String {
    let body = serde_json::json!({ "allowed_apps": apps, "token_expiration": seconds });
    let reply = call(emulator, "POST", "/rest.fal.ai/tokens/", body.to_string()).await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.json().as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn the_upgrade_is_refused_without_a_live_token_for_the_app() {
    let emulator = emulator();
    let other_app = issue(&emulator, &["other-app"], 60).await;
    let expired = issue(&emulator, &["live-app"], 0).await;
    let cases = [
        (String::new(), StatusCode::UNAUTHORIZED),
        ("?fal_jwt_token=emu-token-forged".to_owned(), StatusCode::UNAUTHORIZED),
        (format!("?fal_jwt_token={expired}"), StatusCode::UNAUTHORIZED),
        (format!("?fal_jwt_token={other_app}"), StatusCode::FORBIDDEN),
    ];
    for (query, wanted) in cases {
        let reply = call(&emulator, "GET", &format!("{PATH}{query}"), Body::empty()).await;
        assert_eq!(reply.status, wanted, "{query}");
    }
    let recorded = emulator.requests().iter().filter(|r| r.path == PATH).count();
    assert_eq!(recorded, 4, "every realtime attempt is recorded");
}

#[tokio::test]
async fn an_issued_token_connects_and_frames_are_echoed() {
    let emulator = emulator();
    let token = issue(&emulator, &["live-app"], 60).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(crate::emulator::serve(
        listener,
        emulator.clone(),
        std::future::pending(),
    ));

    let forged = format!("ws://{addr}{PATH}?fal_jwt_token=emu-token-forged");
    match tokio_tungstenite::connect_async(forged).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), StatusCode::UNAUTHORIZED),
        other => panic!(
            "a forged token must be refused, got {:?}",
            other.map(|(_, r)| r.status())
        ),
    }

    let url = format!("ws://{addr}{PATH}?fal_jwt_token={token}");
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("upgrade");
    // msgpack of {"prompt": "hi"}, as @fal-ai/client sends it.
    let frame = vec![0x81, 0xa6, b'p', b'r', b'o', b'm', b'p', b't', 0xa2, b'h', b'i'];
    socket.send(Message::Binary(frame.clone().into())).await.expect("send");
    let echoed = socket.next().await.expect("a reply").expect("a frame");
    assert_eq!(echoed, Message::Binary(frame.into()));
    socket.send(Message::Text("{\"a\":1}".into())).await.expect("send text");
    let echoed = socket.next().await.expect("a reply").expect("a frame");
    assert_eq!(echoed, Message::Text("{\"a\":1}".into()));
    socket.close(None).await.expect("close");
    server.abort();
}
