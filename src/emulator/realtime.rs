//! `wss://fal.run/{app}/realtime?fal_jwt_token=...`: fal's realtime WebSocket, as a test echo.
//! The upgrade is accepted only with a token this emulator issued ([`super::tokens`]), still
//! unexpired, whose `allowed_apps` name the app's alias (what `@fal-ai/client` asks for);
//! otherwise fal's plain HTTP refusal: 401 without a known, live token, 403 for another app.
//! Each frame is sent back unchanged: the client sends msgpack-encoded objects in binary frames
//! and decodes binary frames as msgpack, so the echo reaches its `onResult` as the input itself.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::route::NAMESPACES;
use super::status::detail;
use super::Emulator;

/// The app alias of a realtime path relative to the run host (`/owner/alias[/sub]/realtime`,
/// `/workflows/owner/alias/realtime`), or `None` when the path is not a realtime path.
pub(crate) fn alias(relative: &str) -> Option<&str> {
    let segments: Vec<&str> = relative.strip_prefix('/')?.split('/').collect();
    let (last, endpoint) = segments.split_last()?;
    let alias_at = if endpoint.first().is_some_and(|first| NAMESPACES.contains(first)) {
        2
    } else {
        1
    };
    let well_formed = *last == "realtime" && endpoint.len() > alias_at && !segments.contains(&"");
    well_formed.then(|| endpoint[alias_at])
}

/// Checks the token in the query, then upgrades and echoes; `parts` is the GET request.
pub(crate) async fn connect(emulator: Emulator, mut parts: Parts, alias: &str) -> Response {
    let query = parts.uri.query().unwrap_or_default();
    let token = url::form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == "fal_jwt_token")
        .map(|(_, value)| value.into_owned());
    let issued = token.as_deref().and_then(|token| emulator.issued_token(token));
    let Some(issued) = issued.filter(|issued| issued.issued_at.elapsed() < issued.expiration) else {
        return detail(StatusCode::UNAUTHORIZED, "Unauthorized");
    };
    if !issued.allowed_apps.iter().any(|app| app == alias) {
        return detail(StatusCode::FORBIDDEN, "Token not allowed for this app");
    }
    match WebSocketUpgrade::from_request_parts(&mut parts, &emulator).await {
        Ok(upgrade) => upgrade.on_upgrade(echo),
        Err(rejection) => rejection.into_response(),
    }
}

async fn echo(mut socket: WebSocket) {
    while let Some(Ok(message)) = socket.recv().await {
        let reply = match message {
            Message::Binary(_) | Message::Text(_) => message,
            Message::Close(_) => break,
            // Pings are answered by the WebSocket layer itself.
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if socket.send(reply).await.is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::alias;

    #[test]
    fn the_alias_is_the_app_segment_before_realtime() {
        assert_eq!(alias("/fal-ai/fast-lcm-diffusion/realtime"), Some("fast-lcm-diffusion"));
        assert_eq!(alias("/fal-ai/flux/dev/realtime"), Some("flux"));
        assert_eq!(alias("/workflows/me/flow/realtime"), Some("flow"));
        for path in [
            "/fal-ai/realtime",
            "/fal-ai/flux",
            "/fal-ai//realtime",
            "/workflows/me/realtime",
            "",
        ] {
            assert_eq!(alias(path), None, "{path}");
        }
    }
}
