//! Reload: a new config becomes the snapshot in force, or changes nothing.
//!
//! The new config is validated by the same code as at startup (`Config::load`, then
//! [`Gate::next`]: schemas compiled, key files read, limits checked), a new issuer's JWKS is
//! fetched while the old snapshot still serves, and only then is the snapshot swapped. Any
//! failure keeps the running snapshot. Settings built into what lives for the process (listeners,
//! worker threads, Redis, the log format, fal's pools, the stores' sizes) keep their running
//! value and are reported as needing a restart.

use std::sync::Arc;

use super::{BuildError, Current};
use crate::config::Config;
use crate::telemetry::metrics;

/// What a successful reload left for a restart.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Restart-only settings that changed and kept their running value (config key names).
    pub restart_needed: Vec<&'static str>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read, parsed or validated.
    #[error("{0}")]
    Config(String),
    /// Schemas, key files, JWKS or limits of the new config are not usable.
    #[error(transparent)]
    Build(#[from] BuildError),
}

impl Current {
    /// Makes `config` the snapshot in force: builds it over the running snapshot's process-lived
    /// parts, loads new issuers' keys, then swaps. On error the running snapshot stays.
    pub async fn reload(self: &Arc<Self>, mut config: Config) -> Result<Reloaded, ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let running = self.load();
        let restart_needed = keep_running(&running.config, &mut config);
        // Schema and key files are read and compiled off the runtime, which keeps accepting.
        let next = tokio::task::spawn_blocking(move || running.next(config))
            .await
            .map_err(|err| ReloadError::Config(format!("the reload task failed: {err}")))??;
        next.auth.load_new_keys().await.map_err(BuildError::from)?;
        next.start();
        self.swap(next);
        Ok(Reloaded { restart_needed })
    }
}

/// Reloads `loaded` (the config file and environment, read again) and reports the outcome: one
/// log line (an error naming the cause, or success with any restart-only changes as a warning)
/// and the `falgate_config_reloads_total` counter. The running config serves on. True when
/// the new config is in force.
pub async fn reload_and_report(current: &Arc<Current>, loaded: Result<Config, String>) -> bool {
    let outcome = match loaded {
        Ok(config) => {
            // What start logs about a config that starts but surprises, the reload logs too.
            for warning in &config.warnings {
                tracing::warn!("{warning}");
            }
            current.reload(config).await
        }
        Err(message) => Err(ReloadError::Config(message)),
    };
    metrics::config_reloaded(outcome.is_ok());
    match outcome {
        Ok(Reloaded { restart_needed }) if restart_needed.is_empty() => {
            tracing::info!("config reloaded");
            true
        }
        Ok(Reloaded { restart_needed }) => {
            tracing::warn!(
                settings = %restart_needed.join(", "),
                "config reloaded; changed settings that need a restart keep their running value"
            );
            true
        }
        Err(err) => {
            tracing::error!(error = %err, "config reload failed; the running config stays in force");
            false
        }
    }
}

/// Puts the running value back into every restart-only setting of `next` and names those that
/// differed.
pub fn keep_running(running: &Config, next: &mut Config) -> Vec<&'static str> {
    let (old, new) = (&running.limits, &mut next.limits);
    [
        ("listen", restore(&running.listen, &mut next.listen)),
        ("admin_listen", restore(&running.admin_listen, &mut next.admin_listen)),
        ("workers", restore(&running.workers, &mut next.workers)),
        ("connections", restore(&running.connections, &mut next.connections)),
        ("drain", restore(&running.drain, &mut next.drain)),
        (
            "request.body_budget_bytes",
            restore(&running.body_budget_bytes, &mut next.body_budget_bytes),
        ),
        (
            // It also sizes the listener's buffer for a request head (`server::Settings`).
            "request.max_headers_total_bytes",
            restore(&running.max_headers_total_bytes, &mut next.max_headers_total_bytes),
        ),
        ("log.format", restore(&running.log_format, &mut next.log_format)),
        ("log.principal_hash_key", {
            // A secret has no `PartialEq`: compare what it holds.
            use secrecy::ExposeSecret;
            let key = |key: &Option<secrecy::SecretString>| key.as_ref().map(|k| k.expose_secret().to_owned());
            let differed = key(&running.principal_hash_key) != key(&next.principal_hash_key);
            next.principal_hash_key = running.principal_hash_key.clone();
            differed
        }),
        ("telemetry", restore(&running.telemetry, &mut next.telemetry)),
        ("redis", restore(&running.redis, &mut next.redis)),
        ("upstream", restore(&running.upstream, &mut next.upstream)),
        ("ownership", restore(&running.ownership, &mut next.ownership)),
        ("events", restore(&running.events, &mut next.events)),
        ("webhooks", restore(&running.webhooks, &mut next.webhooks)),
        (
            "limits.max_tracked_callers",
            restore(&old.max_tracked_callers, &mut new.max_tracked_callers),
        ),
        (
            "limits.idempotency_ttl_seconds",
            restore(&old.idempotency_ttl_seconds, &mut new.idempotency_ttl_seconds),
        ),
        (
            "limits.on_store_error",
            restore(&old.on_store_error, &mut new.on_store_error),
        ),
    ]
    .into_iter()
    .filter_map(|(name, differed)| differed.then_some(name))
    .collect()
}

/// Sets `next` to `running`; true when they differed.
fn restore<T: PartialEq + Clone>(running: &T, next: &mut T) -> bool {
    let differed = running != next;
    if differed {
        next.clone_from(running);
    }
    differed
}

#[cfg(test)]
mod tests;
