//! How callers authenticate (`[auth]`, `[auth.issuers.NAME]`): `config` reads it, `auth` owns it.

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use secrecy::SecretString;
use url::Url;

/// Name of the issuer built from the top-level `[auth]` keys.
pub const DEFAULT_ISSUER: &str = "default";

/// How callers authenticate.
#[derive(Debug, Clone)]
pub struct Auth {
    pub issuers: Vec<IssuerConfig>,
    pub leeway: Duration,
    pub max_lifetime: Duration,
    pub max_token_bytes: usize,
    /// Cookie read for the token when no `Authorization` header is sent.
    pub cookie: Option<String>,
    pub token_cache_entries: u64,
    pub jwks_refresh: Duration,
    pub jwks_cooldown: Duration,
    pub jwks_timeout: Duration,
    pub jwks_max_bytes: usize,
    /// Whether a refused token's 401 says why (expired, bad signature, unknown key, …). Not a
    /// config key: `falgate dev` sets it (a frontend developer needs the reason); `serve`
    /// answers every refused token with the same message and logs the reason.
    pub explain_refusals: bool,
}

/// One token issuer.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// Config name; with `sub` it forms the caller's principal, so users of two issuers never collide.
    pub name: String,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud` (one match in an array counts), when set.
    pub audience: Option<String>,
    pub hs_secret: Option<SecretString>,
    pub jwks_url: Option<Url>,
    pub key_files: Vec<PathBuf>,
    /// Algorithms accepted; empty = each key's own (HS256 for a secret).
    pub algorithms: Vec<Algorithm>,
    pub tier_claim: String,
    pub scopes_claim: String,
    pub default_tier: String,
    /// Required `typ` header (e.g. `at+jwt`), when set.
    pub token_type: Option<String>,
}

impl Auth {
    /// The HS256 secret of the default issuer (what `falgate token` signs with).
    pub fn default_hs_secret(&self) -> Option<&SecretString> {
        self.issuers
            .iter()
            .find(|i| i.name == DEFAULT_ISSUER)
            .and_then(|i| i.hs_secret.as_ref())
    }
}
