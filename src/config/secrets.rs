//! fal credentials, read only from `FAL_KEY`, `FAL_KEY_ID` + `FAL_KEY_SECRET`, or `FAL_KEY_FILE`
//! into `upstream::FalCredentials`.

use super::env::Sources;
pub use crate::upstream::FalCredentials;

impl FalCredentials {
    /// Reads the credentials from exactly one of the three sources.
    pub fn from_sources(sources: &dyn Sources) -> Result<Self, String> {
        let key = sources.var("FAL_KEY").filter(|v| !v.is_empty());
        let pair = (sources.var("FAL_KEY_ID"), sources.var("FAL_KEY_SECRET"));
        let file = sources.var("FAL_KEY_FILE").filter(|v| !v.is_empty());
        let pair = match pair {
            (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => Some(format!("{id}:{secret}")),
            (None, None) => None,
            _ => return Err("FAL_KEY_ID and FAL_KEY_SECRET must be set together".into()),
        };
        let raw = match (key, pair, file) {
            (Some(key), None, None) => key,
            (None, Some(pair), None) => pair,
            (None, None, Some(path)) => read_key_file(&path)?,
            (None, None, None) => {
                return Err("no fal credentials: set FAL_KEY, FAL_KEY_ID and FAL_KEY_SECRET, or FAL_KEY_FILE".into())
            }
            _ => return Err("set only one of FAL_KEY, FAL_KEY_ID/FAL_KEY_SECRET and FAL_KEY_FILE".into()),
        };
        Self::checked(raw)
    }
}

fn read_key_file(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_owned())
        .map_err(|err| format!("FAL_KEY_FILE {path} cannot be read: {err}"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn a_derived_key_is_stable_per_fal_key_and_purpose_and_not_the_key() {
        let key = FalCredentials::new("fk-one-0123456789".into());
        let derived = key.derived_key("purpose");
        assert_eq!(
            derived,
            FalCredentials::new("fk-one-0123456789".into()).derived_key("purpose")
        );
        assert_ne!(derived, key.derived_key("another purpose"));
        assert_ne!(
            derived,
            FalCredentials::new("fk-two-0123456789".into()).derived_key("purpose")
        );
        assert!(!hex::encode(derived).contains(&hex::encode("fk-one")));
    }

    #[test]
    fn key_id_and_secret_are_joined_with_a_colon() {
        let creds = FalCredentials::from_sources(&env(&[("FAL_KEY_ID", "id"), ("FAL_KEY_SECRET", "sec")])).unwrap();
        assert_eq!(creds.authorization(), "Key id:sec");
    }

    #[test]
    fn key_file_is_read_and_trimmed() {
        let path = std::env::temp_dir().join(format!("falgate-key-{}", uuid::Uuid::new_v4()));
        std::fs::write(&path, "fk-from-file\n").unwrap();
        let creds = FalCredentials::from_sources(&env(&[("FAL_KEY_FILE", path.to_str().unwrap())])).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(creds.authorization(), "Key fk-from-file");
    }

    #[test]
    fn missing_half_pair_and_two_sources_are_refused() {
        assert!(FalCredentials::from_sources(&env(&[])).is_err());
        assert!(FalCredentials::from_sources(&env(&[("FAL_KEY_ID", "id")])).is_err());
        assert!(FalCredentials::from_sources(&env(&[("FAL_KEY", "a"), ("FAL_KEY_FILE", "/x")])).is_err());
        assert!(FalCredentials::from_sources(&env(&[("FAL_KEY", "a b")])).is_err());
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let creds = FalCredentials::new("fk-canary".into());
        assert!(!format!("{creds:?}").contains("fk-canary"));
    }
}
