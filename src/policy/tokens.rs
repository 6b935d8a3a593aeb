//! Which apps a caller may mint a temporary fal token for (`POST rest.fal.ai/tokens/`). fal
//! scopes a token by app alias only (`allowed_apps: ["flux"]`), so an alias is allowed only when
//! every configured endpoint with that alias opted in (`client_tokens = true`) and the caller's
//! tier may use it: an alias shared with an endpoint that did not opt in is refused (fail closed).

use super::{tier_allows, Grant, Policy, PolicyError};

impl Policy {
    /// Refuses unless the tier of `grant` may mint a token for each alias in `aliases`.
    pub fn check_token_apps(&self, grant: &Grant<'_>, aliases: &[String]) -> Result<(), PolicyError> {
        for alias in aliases {
            let mut entries = self
                .apps
                .iter()
                .filter(|(app, _)| app.as_str().rsplit('/').next() == Some(alias.as_str()))
                .peekable();
            if entries.peek().is_none() {
                return Err(PolicyError::EndpointNotAllowed(alias.clone()));
            }
            for (_, entry) in entries {
                let opted_in = self.endpoints.get(entry).is_some_and(|rules| rules.client_tokens);
                if !opted_in || !tier_allows(grant.tier, entry) {
                    return Err(PolicyError::TokenAppNotAllowed(alias.clone()));
                }
            }
        }
        Ok(())
    }
}
