//! `[telemetry]`: OpenTelemetry trace export. Off unless an OTLP endpoint is configured, by the
//! file (`otlp_endpoint`, or `FALGATE_TELEMETRY__OTLP_ENDPOINT`) or by the standard variables
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) and `OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL,
//! `/v1/traces` appended), in that order. `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`
//! turn export off; `OTEL_SERVICE_NAME` overrides `service_name`.

use serde::Deserialize;
use url::Url;

use super::{ConfigError, Sources};
use crate::telemetry::Telemetry;

/// The raw `[telemetry]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawTelemetry {
    /// OTLP/HTTP base URL of a collector, e.g. `http://otel-collector:4318`.
    pub(crate) otlp_endpoint: Option<String>,
    pub(crate) service_name: String,
    /// Share of new traces recorded (callers' sampled flags are followed).
    pub(crate) sample_ratio: f64,
}

impl Default for RawTelemetry {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "falgate".into(),
            sample_ratio: 1.0,
        }
    }
}

pub(crate) fn telemetry(raw: RawTelemetry, sources: &dyn Sources) -> Result<Telemetry, ConfigError> {
    let set = |name: &str| sources.var(name).filter(|v| !v.trim().is_empty());
    let disabled = set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
    let endpoint = match (raw.otlp_endpoint.filter(|v| !v.trim().is_empty()), disabled) {
        (_, true) => None,
        (Some(base), false) => Some(("telemetry.otlp_endpoint", traces_url(&base))),
        (None, false) => set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .map(|url| ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url))
            .or_else(|| {
                set("OTEL_EXPORTER_OTLP_ENDPOINT").map(|base| ("OTEL_EXPORTER_OTLP_ENDPOINT", traces_url(&base)))
            }),
    };
    let otlp_traces_url = endpoint
        .map(|(key, url)| {
            Url::parse(url.trim())
                .ok()
                .filter(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
                .ok_or_else(|| ConfigError(format!("`{key}` must be an http(s) URL")))
        })
        .transpose()?;
    if !(0.0..=1.0).contains(&raw.sample_ratio) {
        return Err(ConfigError("`telemetry.sample_ratio` must be between 0 and 1".into()));
    }
    let service_name = set("OTEL_SERVICE_NAME").unwrap_or(raw.service_name);
    Ok(Telemetry {
        otlp_traces_url,
        service_name,
        sample_ratio: raw.sample_ratio,
    })
}

/// `OTEL_EXPORTER_OTLP_ENDPOINT` semantics: a base URL to which the signal's path is appended.
fn traces_url(base: &str) -> String {
    format!("{}/v1/traces", base.trim().trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn resolve(raw: RawTelemetry, vars: &[(&str, &str)]) -> Result<Telemetry, ConfigError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        telemetry(raw, &vars)
    }

    #[test]
    fn off_unless_an_endpoint_is_configured() {
        assert_eq!(resolve(RawTelemetry::default(), &[]).unwrap().otlp_traces_url, None);
    }

    #[test]
    fn the_standard_variables_name_the_collector_and_the_service() {
        let t = resolve(
            RawTelemetry::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
                ("OTEL_SERVICE_NAME", "edge"),
            ],
        )
        .unwrap();
        assert_eq!(t.otlp_traces_url.unwrap().as_str(), "http://collector:4318/v1/traces");
        assert_eq!(t.service_name, "edge");
        let signal = resolve(
            RawTelemetry::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:4318/custom"),
            ],
        )
        .unwrap();
        assert_eq!(signal.otlp_traces_url.unwrap().as_str(), "http://b:4318/custom");
    }

    #[test]
    fn the_file_wins_and_the_sdk_switch_turns_it_off() {
        let raw = || RawTelemetry {
            otlp_endpoint: Some("http://file:4318".into()),
            ..RawTelemetry::default()
        };
        let t = resolve(raw(), &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318")]).unwrap();
        assert_eq!(t.otlp_traces_url.unwrap().host_str(), Some("file"));
        let off = resolve(raw(), &[("OTEL_SDK_DISABLED", "true")]).unwrap();
        assert_eq!(off.otlp_traces_url, None);
    }

    #[test]
    fn a_bad_url_or_ratio_names_its_key() {
        let err = resolve(
            RawTelemetry::default(),
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")],
        )
        .unwrap_err();
        assert!(err.0.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{err}");
        let ratio = RawTelemetry {
            sample_ratio: 1.5,
            ..RawTelemetry::default()
        };
        assert!(resolve(ratio, &[]).unwrap_err().0.contains("sample_ratio"));
    }
}
