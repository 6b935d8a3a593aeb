//! What a caller may do: the endpoint allowlist, the sync-run rule, webhooks and uploads.
//! [`Policy::authorize`] returns a [`Grant`], the proof that a call is allowed.

use std::collections::BTreeMap;

use crate::auth::Caller;
use crate::config::{EndpointPolicy, Toggle};
use crate::error::GateError;
use crate::fal::{AppId, Call, EndpointId, Op};

/// The allow rules, built once from config.
pub struct Policy {
    endpoints: BTreeMap<EndpointId, EndpointPolicy>,
    uploads: Toggle,
}

/// Proof that a call passed the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The configured endpoint entry that allowed it (None for storage uploads).
    pub endpoint: Option<EndpointId>,
}

impl Policy {
    /// Builds the policy from the validated config.
    pub fn new(endpoints: BTreeMap<EndpointId, EndpointPolicy>, uploads: Toggle) -> Self {
        Self { endpoints, uploads }
    }

    /// Decides whether `caller` may make `call`.
    pub fn authorize(&self, _caller: &Caller, call: &Call) -> Result<Grant, GateError> {
        match &call.op {
            Op::Submit { endpoint, webhook } => {
                let (entry, rules) = self.endpoint(endpoint)?;
                if webhook.is_some() && !rules.webhooks {
                    return Err(forbidden(
                        "webhook_not_allowed",
                        "webhooks are not allowed for this endpoint",
                    ));
                }
                Ok(Grant {
                    endpoint: Some(entry),
                })
            }
            Op::Run { endpoint } => {
                let (entry, rules) = self.endpoint(endpoint)?;
                if !rules.sync_run {
                    return Err(forbidden(
                        "sync_run_not_allowed",
                        "synchronous runs are not allowed for this endpoint; use the queue",
                    ));
                }
                Ok(Grant {
                    endpoint: Some(entry),
                })
            }
            Op::Status { app, .. }
            | Op::StatusStream { app, .. }
            | Op::Result { app, .. }
            | Op::Cancel { app, .. } => self.app(app).map(|entry| Grant {
                endpoint: Some(entry),
            }),
            Op::StorageInitiate if self.uploads == Toggle::Allow => Ok(Grant { endpoint: None }),
            Op::StorageInitiate => Err(forbidden(
                "uploads_not_allowed",
                "file uploads are not allowed",
            )),
        }
    }

    /// The configured entry equal to `endpoint` or a parent of it (`fal-ai/flux` allows `fal-ai/flux/dev`).
    fn endpoint(&self, endpoint: &EndpointId) -> Result<(EndpointId, EndpointPolicy), GateError> {
        let id = endpoint.as_str();
        self.endpoints
            .iter()
            .filter(|(entry, _)| {
                id == entry.as_str()
                    || id
                        .strip_prefix(entry.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            })
            .max_by_key(|(entry, _)| entry.as_str().len())
            .map(|(entry, rules)| (entry.clone(), *rules))
            .ok_or_else(|| GateError::EndpointNotAllowed(id.to_owned()))
    }

    /// An entry whose app is `app`: status, result and cancel name only the app.
    fn app(&self, app: &AppId) -> Result<EndpointId, GateError> {
        self.endpoints
            .keys()
            .find(|entry| &entry.app() == app)
            .cloned()
            .ok_or_else(|| GateError::EndpointNotAllowed(app.as_str().to_owned()))
    }
}

fn forbidden(code: &'static str, message: &'static str) -> GateError {
    GateError::Forbidden { code, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fal::{parse_queue_path, FalRequestId};

    fn policy() -> Policy {
        let rules = [
            ("fal-ai/video-prompt-generator", true),
            ("fal-ai/flux", false),
        ];
        let endpoints = rules
            .iter()
            .map(|(id, sync)| {
                (
                    EndpointId::parse(id).unwrap(),
                    EndpointPolicy {
                        sync_run: *sync,
                        webhooks: false,
                    },
                )
            })
            .collect();
        Policy::new(endpoints, Toggle::Deny)
    }

    fn caller() -> Caller {
        Caller {
            sub: "u".into(),
            tier: None,
        }
    }

    fn submit(path: &str) -> Call {
        Call {
            op: parse_queue_path(path, None).unwrap(),
        }
    }

    #[test]
    fn listed_endpoint_and_its_sub_paths_are_allowed_and_others_not() {
        assert!(policy()
            .authorize(&caller(), &submit("/fal-ai/video-prompt-generator"))
            .is_ok());
        assert!(policy()
            .authorize(&caller(), &submit("/fal-ai/flux/dev"))
            .is_ok());
        for path in [
            "/fal-ai/fluxx",
            "/other/app",
            "/fal-ai/video-prompt-generatorx",
        ] {
            let err = policy().authorize(&caller(), &submit(path)).unwrap_err();
            assert_eq!(err.code(), "endpoint_not_allowed", "{path}");
        }
    }

    #[test]
    fn sync_run_needs_the_endpoint_flag() {
        let run = |id: &str| Call {
            op: Op::Run {
                endpoint: EndpointId::parse(id).unwrap(),
            },
        };
        assert!(policy()
            .authorize(&caller(), &run("fal-ai/video-prompt-generator"))
            .is_ok());
        assert_eq!(
            policy()
                .authorize(&caller(), &run("fal-ai/flux/dev"))
                .unwrap_err()
                .code(),
            "sync_run_not_allowed"
        );
    }

    #[test]
    fn status_of_an_unlisted_app_and_denied_uploads_and_webhooks_are_refused() {
        let id = FalRequestId::parse("764cabcf-b745-4b3e-ae38-1200304cf45b").unwrap();
        let status = Call {
            op: Op::Result {
                app: AppId::from_segments(&["other", "app"]).unwrap(),
                id,
            },
        };
        assert_eq!(
            policy().authorize(&caller(), &status).unwrap_err().code(),
            "endpoint_not_allowed"
        );
        let upload = Call {
            op: Op::StorageInitiate,
        };
        assert_eq!(
            policy().authorize(&caller(), &upload).unwrap_err().code(),
            "uploads_not_allowed"
        );
        let hooked = Call {
            op: parse_queue_path("/fal-ai/flux/dev", Some("fal_webhook=https://x.example"))
                .unwrap(),
        };
        assert_eq!(
            policy().authorize(&caller(), &hooked).unwrap_err().code(),
            "webhook_not_allowed"
        );
    }
}
