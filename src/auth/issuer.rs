//! One configured issuer: its keys (secret, files, JWKS), its required `iss`/`aud`/`typ`, and
//! the mapping of its claims to a [`Caller`]. `verify` is where a token becomes a caller.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{decode, Algorithm, Validation};
use secrecy::ExposeSecret;
use serde_json::{Map, Value};

use super::jwks::Jwks;
use super::keys::{self, Key, KeyError};
use super::token::Peek;
use super::{now, AuthError, Caller, Why};
use super::{Auth, IssuerConfig};

/// Longest `sub` accepted.
const MAX_SUB_LEN: usize = 256;

pub(super) struct Issuer {
    name: Arc<str>,
    config: IssuerConfig,
    fixed: Vec<Key>,
    jwks: Option<Arc<Jwks>>,
    leeway: u64,
    max_lifetime: Duration,
}

impl Issuer {
    /// Builds an issuer, reading its key files; its JWKS is taken over from `previous` issuers
    /// (a reload) when one fetches the same URL with the same settings.
    pub(super) fn new(
        config: &IssuerConfig,
        auth: &Auth,
        client: &reqwest::Client,
        previous: &[Self],
    ) -> Result<Self, KeyError> {
        let mut fixed = Vec::new();
        if let Some(secret) = &config.hs_secret {
            fixed.extend(keys::from_secret(secret.expose_secret().as_bytes(), &config.algorithms));
        }
        for path in &config.key_files {
            fixed.extend(keys::from_file(path, &config.algorithms)?);
        }
        let name: Arc<str> = Arc::from(config.name.as_str());
        let jwks = config.jwks_url.clone().map(|url| {
            previous
                .iter()
                .filter_map(|issuer| issuer.jwks.as_ref())
                .find(|jwks| jwks.serves(&name, &url, &config.algorithms, auth))
                .cloned()
                .unwrap_or_else(|| {
                    Arc::new(Jwks::new(
                        name.clone(),
                        url,
                        client.clone(),
                        config.algorithms.clone(),
                        auth,
                    ))
                })
        });
        Ok(Self {
            name,
            config: config.clone(),
            fixed,
            jwks,
            leeway: auth.leeway.as_secs(),
            max_lifetime: auth.max_lifetime,
        })
    }

    pub(super) fn iss(&self) -> Option<&str> {
        self.config.issuer.as_deref()
    }

    pub(super) fn start_refresh(&self) {
        if let Some(jwks) = &self.jwks {
            jwks.spawn_refresh();
        }
    }

    /// Loads this issuer's JWKS once if nothing keeps it yet; says why when it could not.
    pub(super) async fn load_keys(&self) -> Result<(), String> {
        match &self.jwks {
            Some(jwks) => jwks.load_once().await,
            None => Ok(()),
        }
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    #[cfg(test)]
    pub(super) fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.jwks.as_ref()
    }

    pub(super) fn ready(&self) -> bool {
        self.jwks.as_ref().is_none_or(|jwks| jwks.keys().is_some())
    }

    /// Verifies `token` and maps its claims; returns the caller and the token's `exp`.
    pub(super) async fn verify(&self, token: &str, peek: &Peek) -> Result<(Caller, u64), AuthError> {
        if !self.config.algorithms.is_empty() && !self.config.algorithms.contains(&peek.alg) {
            return Err(AuthError::Invalid(Why::Algorithm));
        }
        if let Some(expected) = &self.config.token_type {
            let typ = peek.typ.as_deref().map(|t| t.trim_start_matches("application/"));
            if !typ.is_some_and(|t| t.eq_ignore_ascii_case(expected)) {
                return Err(AuthError::Invalid(Why::TokenType));
            }
        }
        let candidates = self.candidates(peek).await?;
        let validation = self.validation(peek.alg);
        // A key whose signature checks out says more than one that does not.
        let mut why = None;
        for key in candidates
            .iter()
            .filter(|key| key.alg == peek.alg && (peek.kid.is_none() || key.kid == peek.kid))
        {
            match decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => return self.caller(&data.claims),
                Err(err) => match refusal(&err) {
                    AuthError::Invalid(Why::BadSignature) => {
                        why.get_or_insert(Why::BadSignature);
                    }
                    AuthError::Invalid(reason) => why = Some(reason),
                    other => return Err(other),
                },
            }
        }
        Err(AuthError::Invalid(why.unwrap_or(Why::UnknownKey)))
    }

    /// Whether the issuer allows the token's algorithm and holds a key (fixed or already fetched)
    /// that matches its `kid` and algorithm, as [`Self::verify`] would pick it; fetches nothing.
    pub(super) fn knows_key(&self, peek: &Peek) -> bool {
        if !self.config.algorithms.is_empty() && !self.config.algorithms.contains(&peek.alg) {
            return false;
        }
        let matches = |key: &Key| key.alg == peek.alg && (peek.kid.is_none() || key.kid == peek.kid);
        self.fixed.iter().any(matches)
            || self
                .jwks
                .as_ref()
                .and_then(|jwks| jwks.keys())
                .is_some_and(|keys| keys.iter().any(matches))
    }

    /// Keys that may have signed the token; an unknown `kid` triggers one (rate-limited) refresh.
    async fn candidates(&self, peek: &Peek) -> Result<Vec<Key>, AuthError> {
        let Some(jwks) = &self.jwks else {
            return Ok(self.fixed.clone());
        };
        let knows = |keys: &[Key]| {
            keys.iter()
                .any(|k| k.alg == peek.alg && (peek.kid.is_none() || k.kid == peek.kid))
        };
        let mut keys = jwks.keys();
        if !keys.as_deref().is_some_and(|k| knows(k)) && !knows(&self.fixed) {
            jwks.refresh_for_unknown_kid().await;
            keys = jwks.keys();
        }
        let keys = keys.ok_or(AuthError::KeysUnavailable)?;
        Ok(self.fixed.iter().chain(keys.iter()).cloned().collect())
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &self.config.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &self.config.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    /// Checks what the library leaves alone (`sub` shape, `iat`, lifetime) and maps the claims.
    fn caller(&self, claims: &Map<String, Value>) -> Result<(Caller, u64), AuthError> {
        let subject = match claims.get("sub") {
            Some(Value::String(sub))
                if !sub.is_empty() && sub.len() <= MAX_SUB_LEN && !sub.chars().any(char::is_control) =>
            {
                sub.clone()
            }
            None => return Err(AuthError::Invalid(Why::MissingClaim)),
            _ => return Err(AuthError::Invalid(Why::BadSubject)),
        };
        let number = |key: &str| {
            claims
                .get(key)
                .map(|v| {
                    v.as_f64()
                        .filter(|n| n.is_finite() && *n >= 0.0)
                        .ok_or(AuthError::Invalid(Why::BadClaim))
                })
                .transpose()
        };
        let exp = number("exp")?.ok_or(AuthError::Invalid(Why::MissingClaim))?;
        let now = now() as f64;
        let iat = number("iat")?;
        if iat.is_some_and(|iat| iat > now + self.leeway as f64) {
            return Err(AuthError::Invalid(Why::IssuedInFuture));
        }
        if exp - iat.unwrap_or(now).min(now) > self.max_lifetime.as_secs_f64() {
            return Err(AuthError::Invalid(Why::LifetimeTooLong));
        }
        let tier = match claims.get(&self.config.tier_claim) {
            None | Some(Value::Null) => self.config.default_tier.clone(),
            Some(Value::String(tier)) if !tier.is_empty() && tier.len() <= 64 => tier.clone(),
            Some(_) => return Err(AuthError::Invalid(Why::BadTier)),
        };
        let scopes = match claims.get(&self.config.scopes_claim) {
            Some(Value::String(scopes)) => scopes.split_whitespace().map(str::to_owned).collect(),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        Ok((
            Caller {
                issuer: self.name.clone(),
                subject: subject.into(),
                tier: tier.into(),
                scopes: scopes.into(),
            },
            exp as u64,
        ))
    }
}

/// What jsonwebtoken's refusal means for the caller and the log.
fn refusal(err: &jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    match err.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::InvalidSignature => AuthError::Invalid(Why::BadSignature),
        ErrorKind::InvalidIssuer => AuthError::Invalid(Why::WrongIssuer),
        ErrorKind::InvalidAudience => AuthError::Invalid(Why::WrongAudience),
        ErrorKind::ImmatureSignature => AuthError::Invalid(Why::NotYetValid),
        ErrorKind::MissingRequiredClaim(_) => AuthError::Invalid(Why::MissingClaim),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => AuthError::Invalid(Why::Algorithm),
        ErrorKind::InvalidSubject => AuthError::Invalid(Why::BadSubject),
        ErrorKind::InvalidClaimFormat(_) => AuthError::Invalid(Why::BadClaim),
        _ => AuthError::Invalid(Why::Malformed),
    }
}
