//! Checks `telemetry:`: the OTLP endpoint and protocol, content capture and the sample ratio.

use super::Cx;
use crate::config::raw::RawTelemetry;
use crate::config::{OtlpConfig, OtlpProtocol, TelemetryConfig};

impl Cx<'_> {
    pub(super) fn telemetry(&mut self, raw: Option<&RawTelemetry>) -> TelemetryConfig {
        let Some(raw) = raw else { return TelemetryConfig::default() };
        let otlp = raw.otlp.as_ref().and_then(|otlp| {
            let protocol = match otlp.protocol.as_deref() {
                None | Some("grpc") => OtlpProtocol::Grpc,
                Some("http") => OtlpProtocol::Http,
                Some(other) => {
                    self.one_of("telemetry.otlp.protocol", "protocol", other, &["grpc", "http"]);
                    OtlpProtocol::Grpc
                }
            };
            if otlp.endpoint.trim().is_empty() {
                self.key_err("telemetry.otlp", "`otlp` needs `endpoint` (such as http://127.0.0.1:4317)");
                return None;
            }
            let endpoint = self.url("telemetry.otlp.endpoint", "endpoint", &otlp.endpoint);
            Some(OtlpConfig { endpoint, protocol })
        });
        self.ratio("telemetry.sample_ratio", "sample_ratio", raw.sample_ratio);
        TelemetryConfig {
            otlp,
            capture_content: raw.capture_content.unwrap_or(false),
            sample_ratio: raw.sample_ratio.filter(|r| (0.0..=1.0).contains(r)).unwrap_or(1.0),
        }
    }
}
