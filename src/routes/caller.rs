//! The [`Caller`] extractor: every proxied route takes one, so no call reaches the pipeline
//! without a verified caller. It authenticates with the request's snapshot ([`Snapshot`]), the
//! same one the pipeline then runs on (`crate::state::Snapshot`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

use crate::auth::{AuthError, Caller};
use crate::error::GateError;
use crate::state::Current;

impl FromRequestParts<Arc<Current>> for Caller {
    type Rejection = GateError;

    /// Failed attempts are rate-limited per client IP, to blunt token guessing: a client over
    /// the rate is refused before its token is verified (a cached verdict costs nothing and is
    /// used as is), and only a failure consumes the rate. A well-formed token that names a
    /// configured issuer and a key it holds is verified whatever the IP's bucket says: behind a
    /// proxy without `trusted_proxies` every client shares one address, and strangers sending
    /// garbage or no token must not lock out users with valid tokens (issue 20). Its failure
    /// still consumes the rate.
    async fn from_request_parts(parts: &mut Parts, current: &Arc<Current>) -> Result<Self, Self::Rejection> {
        let gate = current.of(&mut parts.extensions);
        let client_ip = || {
            let ConnectInfo(peer) = parts.extensions.get::<ConnectInfo<SocketAddr>>()?;
            crate::limits::note_untrusted_forwarder(*peer, &parts.headers, gate.limiter.trusted_proxies());
            Some(crate::limits::client_ip(
                *peer,
                &parts.headers,
                gate.limiter.trusted_proxies(),
            ))
        };
        let verdict = match gate.auth.token(parts) {
            Ok(token) => match gate.auth.cached(token) {
                Some(verdict) => verdict,
                None => {
                    if !gate.auth.names_a_known_key(token) {
                        if let Some(ip) = client_ip() {
                            gate.limiter.precheck_unauthenticated(ip).await?;
                        }
                    }
                    gate.auth.verify_and_cache(token).await
                }
            },
            Err(err) => Err(err),
        };
        match verdict {
            Ok(caller) => Ok(caller),
            Err(AuthError::KeysUnavailable) => Err(AuthError::KeysUnavailable.into()),
            Err(err) => {
                if let Some(ip) = client_ip() {
                    gate.limiter.admit_unauthenticated(ip).await?;
                }
                // Under `falgate dev` the 401 says why; `serve` keeps one message for all.
                match gate.config.auth.explain_refusals {
                    true => Err(GateError::UnauthenticatedExplained(err)),
                    false => Err(err.into()),
                }
            }
        }
    }
}
