//! Who is calling: [`Authenticator`] turns the inbound `Authorization` header (or the configured
//! token cookie) into a verified [`Caller`]; it is the only code that reads them. The extractor
//! that runs it for every proxied route is `routes::caller`, so a request reaches the pipeline
//! only with a verified `Caller`.
//!
//! Tokens are JWTs from one of the configured issuers: HS256/384/512 secrets, or RS/PS/ES/EdDSA
//! public keys from a JWKS URL or local files. The algorithm is pinned by the key, never taken
//! from the token. Verified tokens are cached (bounded, never past `exp`). A reload builds a new
//! `Authenticator` ([`Authenticator::next`]): key files are read again and the token cache
//! starts empty, while a JWKS whose URL and settings are unchanged is taken over, keys and all.

mod issuer;
mod jwks;
mod keys;
mod mint;
mod settings;
mod token;

pub use self::settings::{Auth, IssuerConfig, DEFAULT_ISSUER};

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;
use moka::sync::Cache;
use sha2::{Digest, Sha256};

pub use keys::KeyError;
pub use mint::mint_hs256;

use crate::clock::Clock;
use issuer::Issuer;

/// Longest a verified token stays cached, whatever its `exp` (bounds the effect of key removal).
const CACHE_TTL: Duration = Duration::from_secs(300);

/// A verified caller: the proof that authentication ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The configured issuer's name.
    pub issuer: Arc<str>,
    /// The token's `sub`.
    pub subject: Arc<str>,
    /// The tier from the issuer's tier claim, or its default tier.
    pub tier: Arc<str>,
    /// Scopes from the issuer's scopes claim.
    pub scopes: Arc<[String]>,
}

impl Caller {
    /// The stable principal that owns requests, limits and quotas: `issuer|subject`. Issuer names
    /// never contain `|`, so two callers never share a principal.
    pub fn principal(&self) -> String {
        format!("{}|{}", self.issuer, self.subject)
    }
}

/// Why a caller was not authenticated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("a bearer token is required")]
    Missing,
    #[error("the authorization header must be `Bearer <token>`")]
    Scheme,
    #[error("the bearer token has expired")]
    Expired,
    /// Refused for the reason given; the caller sees only that the token is not valid, the
    /// access line says why.
    #[error("the bearer token is not valid")]
    Invalid(Why),
    /// The issuer's keys could not be loaded yet (JWKS never fetched): not the caller's fault.
    #[error("the token's signing keys are not available yet")]
    KeysUnavailable,
}

/// Why a token was refused, for the log (never the token, its claims or its subject).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Not three base64url segments of JSON, `alg: none`, a `crit` header, …
    Malformed,
    /// Longer than `auth.max_token_bytes`.
    TooLarge,
    /// No configured issuer has the token's `iss` (or, without one, none accepts tokens without).
    UnknownIssuer,
    /// The algorithm is not one the issuer allows.
    Algorithm,
    /// The `typ` header is not the issuer's required token type.
    TokenType,
    /// No key of the issuer matches the token's `kid` and algorithm.
    UnknownKey,
    BadSignature,
    WrongIssuer,
    WrongAudience,
    /// `nbf` in the future.
    NotYetValid,
    /// A required claim (`exp`, `sub`, `iss`, `aud`) is missing.
    MissingClaim,
    /// `sub` empty, too long, not a string or with control characters.
    BadSubject,
    /// `iat` in the future.
    IssuedInFuture,
    /// `exp` further from `iat` (or now) than `auth.max_lifetime`.
    LifetimeTooLong,
    /// The tier claim is not a short string.
    BadTier,
    /// Another claim has the wrong type (`exp`, `iat` not numbers, …).
    BadClaim,
}

impl Why {
    /// A short phrase for the log line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed token",
            Self::TooLarge => "token too large",
            Self::UnknownIssuer => "unknown issuer",
            Self::Algorithm => "algorithm not allowed",
            Self::TokenType => "wrong token type",
            Self::UnknownKey => "unknown signing key",
            Self::BadSignature => "bad signature",
            Self::WrongIssuer => "wrong issuer",
            Self::WrongAudience => "wrong audience",
            Self::NotYetValid => "not yet valid (nbf)",
            Self::MissingClaim => "required claim missing",
            Self::BadSubject => "invalid subject",
            Self::IssuedInFuture => "issued in the future (iat)",
            Self::LifetimeTooLong => "lifetime longer than auth.max_lifetime",
            Self::BadTier => "invalid tier claim",
            Self::BadClaim => "invalid claim",
        }
    }
}

impl AuthError {
    /// The client's message with the reason: `falgate dev`'s 401 (never the token or claims).
    pub fn explained(&self) -> String {
        match self {
            Self::Invalid(why) => format!("the bearer token is not valid: {}", why.as_str()),
            other => other.to_string(),
        }
    }

    /// Why the token was refused, for the log line.
    pub fn log_reason(&self) -> &'static str {
        match self {
            Self::Missing => "no token",
            Self::Scheme => "not a bearer token",
            Self::Expired => "expired",
            Self::Invalid(why) => why.as_str(),
            Self::KeysUnavailable => "signing keys not loaded",
        }
    }
}

/// Checks tokens against every configured issuer. Built once at startup.
pub struct Authenticator {
    issuers: Vec<Issuer>,
    /// None when `auth.token_cache_entries = 0`.
    cache: Option<Cache<[u8; 32], Cached>>,
    leeway: u64,
    max_token_bytes: usize,
    cookie: Option<String>,
    /// Reads `now` for cached verdicts (a cached token is never used past its `exp`).
    clock: Clock,
}

#[derive(Clone)]
struct Cached {
    caller: Caller,
    exp: u64,
}

impl Authenticator {
    /// Builds the issuers (loading key files; JWKS are fetched by [`Authenticator::start`]).
    pub fn new(config: &Auth) -> Result<Self, KeyError> {
        Self::with_clock(config, Clock::system())
    }

    /// [`Self::new`] with cached verdicts judged at `clock`'s time. Signature and claim checks
    /// of an uncached token use the machine's time (the JWT library reads it).
    pub fn with_clock(config: &Auth, clock: Clock) -> Result<Self, KeyError> {
        Self::build(config, &[], clock)
    }

    /// The authenticator of a reloaded config: key files read again, a fresh token cache (a
    /// cached caller may carry a tier or issuer the new config maps differently), and every
    /// JWKS whose URL and settings did not change taken over from `self` with its keys and
    /// refresh task. New JWKS are fetched by [`Self::load_new_keys`].
    pub fn next(&self, config: &Auth) -> Result<Self, KeyError> {
        Self::build(config, &self.issuers, self.clock.clone())
    }

    fn build(config: &Auth, previous: &[Issuer], clock: Clock) -> Result<Self, KeyError> {
        let client = jwks::client(config)?;
        let issuers = config
            .issuers
            .iter()
            .map(|issuer| Issuer::new(issuer, config, &client, previous))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            issuers,
            cache: (config.token_cache_entries > 0).then(|| {
                Cache::builder()
                    .max_capacity(config.token_cache_entries)
                    .time_to_live(CACHE_TTL)
                    .build()
            }),
            leeway: config.leeway.as_secs(),
            max_token_bytes: config.max_token_bytes,
            cookie: config.cookie.clone(),
            clock,
        })
    }

    /// Fetches every JWKS once and keeps them fresh in the background (a JWKS taken over by
    /// [`Self::next`] keeps its one refresh task).
    pub fn start(&self) {
        for issuer in &self.issuers {
            issuer.start_refresh();
        }
    }

    /// Fetches, once, the JWKS of each issuer that no refresh task keeps yet (a reload's new
    /// issuers), so the new config serves with every key loaded. Errs naming the first issuer
    /// whose keys could not be loaded.
    pub async fn load_new_keys(&self) -> Result<(), KeyError> {
        for issuer in &self.issuers {
            if let Err(why) = issuer.load_keys().await {
                return Err(KeyError::Unavailable(issuer.name().to_owned(), why));
            }
        }
        Ok(())
    }

    /// Whether every issuer's keys are loaded (readiness).
    pub fn ready(&self) -> bool {
        self.issuers.iter().all(Issuer::ready)
    }

    /// Verifies one token and returns its caller.
    pub async fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        match self.cached(token) {
            Some(verdict) => verdict,
            None => self.verify_and_cache(token).await,
        }
    }

    /// The verdict on a token verified before (still cached), without verifying anything.
    pub fn cached(&self, token: &str) -> Option<Result<Caller, AuthError>> {
        let cache = self.cache.as_ref()?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let cached = cache.get(&digest)?;
        Some(match self.clock.unix_seconds() <= cached.exp + self.leeway {
            true => Ok(cached.caller),
            false => Err(AuthError::Expired),
        })
    }

    /// Verifies a token (signature, claims) and caches the caller.
    pub async fn verify_and_cache(&self, token: &str) -> Result<Caller, AuthError> {
        if token.len() > self.max_token_bytes {
            return Err(AuthError::Invalid(Why::TooLarge));
        }
        let Some(cache) = &self.cache else {
            return self.verify(token).await.map(|(caller, _)| caller);
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let (caller, exp) = self.verify(token).await?;
        cache.insert(
            digest,
            Cached {
                caller: caller.clone(),
                exp,
            },
        );
        Ok(caller)
    }

    async fn verify(&self, token: &str) -> Result<(Caller, u64), AuthError> {
        let peek = token::peek(token)?;
        let issuer = self
            .issuer_for(peek.iss.as_deref())
            .ok_or(AuthError::Invalid(Why::UnknownIssuer))?;
        issuer.verify(token, &peek).await
    }

    /// Whether `token` is well formed and names what this gate knows: parseable header and
    /// claims, a configured issuer, an algorithm it allows and a key it holds for the token's
    /// `kid` (HS256 secrets included), checked without verifying or fetching anything. Such a
    /// token is verified even when its client's IP is over the failed-authentication rate
    /// (`routes::caller`): behind a proxy many users share one address, and strangers' garbage
    /// must not lock them out. A forged one still costs its IP the failure.
    pub fn names_a_known_key(&self, token: &str) -> bool {
        if token.len() > self.max_token_bytes {
            return false;
        }
        let Ok(peek) = token::peek(token) else {
            return false;
        };
        self.issuer_for(peek.iss.as_deref())
            .is_some_and(|issuer| issuer.knows_key(&peek))
    }

    /// The issuer whose `iss` matches, else the one issuer that requires none.
    fn issuer_for(&self, iss: Option<&str>) -> Option<&Issuer> {
        iss.and_then(|iss| self.issuers.iter().find(|issuer| issuer.iss() == Some(iss)))
            .or_else(|| self.issuers.iter().find(|issuer| issuer.iss().is_none()))
    }

    /// The token from `Authorization: Bearer`, else from the configured cookie.
    pub fn token<'a>(&self, parts: &'a Parts) -> Result<&'a str, AuthError> {
        let mut values = parts.headers.get_all(AUTHORIZATION).iter();
        if let Some(value) = values.next() {
            if values.next().is_some() {
                return Err(AuthError::Scheme);
            }
            return bearer(value.to_str().map_err(|_| AuthError::Scheme)?);
        }
        let name = self.cookie.as_deref().ok_or(AuthError::Missing)?;
        cookie(parts, name).ok_or(AuthError::Missing)
    }
}

/// `Bearer <token>`, the scheme case-insensitive (RFC 9110), exactly one space.
fn bearer(value: &str) -> Result<&str, AuthError> {
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Scheme)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err(AuthError::Scheme);
    }
    Ok(token)
}

fn cookie<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod tests_edges;
