//! `[endpoints]`: what is allowed for each configured endpoint, and the schema each must name.

use std::collections::BTreeMap;

use super::{file, ConfigError};
use crate::fal::EndpointId;
use crate::policy::EndpointPolicy;
use crate::schema::SchemaSource;

pub(super) fn endpoints(
    raw: BTreeMap<String, file::RawEndpoint>,
) -> Result<BTreeMap<EndpointId, EndpointPolicy>, ConfigError> {
    raw.into_iter()
        .map(|(id, endpoint)| {
            let parsed = EndpointId::parse(&id)
                .map_err(|_| ConfigError(format!("`endpoints.\"{id}\"` is not an endpoint id like owner/alias")))?;
            if endpoint.max_body_bytes == Some(0) {
                return Err(ConfigError(format!(
                    "`endpoints.\"{id}\".max_body_bytes` must be greater than zero"
                )));
            }
            Ok((
                parsed,
                EndpointPolicy {
                    sync_run: endpoint.sync_run,
                    client_tokens: endpoint.client_tokens,
                    max_body_bytes: endpoint.max_body_bytes,
                },
            ))
        })
        .collect()
}

/// Every allowed endpoint must name its schema: an endpoint without one would forward
/// unchecked input, so the config is refused instead (fail closed).
pub(super) fn schema_sources(raw: &BTreeMap<String, file::RawEndpoint>) -> Result<Vec<SchemaSource>, ConfigError> {
    raw.iter()
        .map(|(id, endpoint)| {
            let path = endpoint.schema.as_ref().ok_or_else(|| {
                ConfigError(format!(
                    "`endpoints.\"{id}\".schema` is required: every allowed endpoint names its input schema"
                ))
            })?;
            Ok(SchemaSource {
                endpoint: id.clone(),
                path: path.into(),
                unknown_fields: endpoint.unknown_fields,
                overlay: endpoint.overlay.clone(),
                tier_overlays: endpoint.tiers.clone(),
                trusted_url_prefixes: Vec::new(),
            })
        })
        .collect()
}
