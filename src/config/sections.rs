//! The top-level sections besides `kafka`, `connections` and `flows`: `connector_specs`,
//! `telemetry` and `api`.

use std::num::NonZeroU64;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use sluice_connectors::http::spec::RestSpec;

use super::ConfigError;
use super::loader::Loader;
use super::yaml::{self, Kind, Node};

/// The `telemetry:` section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TelemetryConfig {
    /// Where metrics and traces go over OTLP/HTTP (protobuf): the collector's base URL, e.g.
    /// `http://otel-collector:4318` (sluice adds `/v1/metrics` and `/v1/traces`). Unset: no OTLP
    /// export (Prometheus text at the API's `/metrics` works either way).
    otlp_endpoint: Option<String>,
    /// The share of source records whose journey is traced, from 0 to 1 (default 0.01).
    trace_sample_rate: Option<f64>,
    /// Seconds between metric pushes over OTLP (default 10).
    export_interval_secs: Option<NonZeroU64>,
    /// The `service.name` telemetry is reported under (default `sluice`).
    service_name: Option<String>,
}

/// The `api:` section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiConfig {
    /// The management API's address, `host:port`; `sluice run --api` overrides it. An address
    /// beyond loopback needs `token`.
    listen: String,
    /// The bearer token every request but `GET /health` must carry (`Authorization: Bearer …`);
    /// give it as a reference, `${env:SLUICE_API_TOKEN}`.
    token: Option<sluice_engine::secret::Secret>,
}

impl Loader {
    /// `connector_specs:` — REST connector spec files (relative to this config file), each
    /// registered as a connection type before any connection is read.
    pub(super) fn specs(&mut self, file: &Path, node: &Node) {
        let paths: Vec<String> = match yaml::from_node(node, "connector_specs") {
            Ok(p) => p,
            Err(e) => return self.err(file, e),
        };
        for (i, rel) in paths.iter().enumerate() {
            let at = match &node.kind {
                Kind::Seq(items) => items.get(i).unwrap_or(node),
                _ => node,
            };
            let path = file.parent().unwrap_or(Path::new(".")).join(rel);
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    self.at(file, at, &format!("connector_specs[{i}]"), format!("reading {}: {e}", path.display()));
                    continue;
                }
            };
            let spec = match yaml::parse(&text) {
                Ok(root) => match yaml::from_node::<RestSpec>(&root, "") {
                    Ok(spec) => spec,
                    Err(e) => {
                        self.err(&path, e);
                        continue;
                    }
                },
                Err(e) => {
                    self.errors.push(ConfigError {
                        file: path.clone(),
                        line: Some(e.line),
                        path: String::new(),
                        message: format!("invalid YAML: {}", e.message),
                    });
                    continue;
                }
            };
            match self.registry.clone().with_spec(spec) {
                Ok(r) => self.registry = r,
                Err(m) => self.errors.push(ConfigError {
                    file: path,
                    line: Some(1),
                    path: String::new(),
                    message: m.to_string(),
                }),
            }
        }
    }

    /// `telemetry:` — OTLP export and trace sampling.
    pub(super) fn telemetry(&mut self, file: &Path, node: &Node) {
        let t: TelemetryConfig = match yaml::from_node(node, "telemetry") {
            Ok(t) => t,
            Err(e) => return self.err(file, e),
        };
        let at = |key: &str| node.get(key).unwrap_or(node);
        if let Some(url) = &t.otlp_endpoint {
            match url::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                Ok(_) | Err(_) => {
                    let n = at("otlp_endpoint").clone();
                    self.at(
                        file,
                        &n,
                        "telemetry.otlp_endpoint",
                        format!("`{url}` is not an http(s) URL; write the collector's OTLP/HTTP base, e.g. http://localhost:4318"),
                    );
                }
            }
        }
        if let Some(rate) = t.trace_sample_rate
            && !(0.0..=1.0).contains(&rate)
        {
            let n = at("trace_sample_rate").clone();
            self.at(file, &n, "telemetry.trace_sample_rate", format!("{rate} is not between 0 and 1"));
        }
        let d = &mut self.telemetry;
        d.otlp_endpoint = t.otlp_endpoint;
        d.trace_sample_rate = t.trace_sample_rate.unwrap_or(d.trace_sample_rate);
        d.export_interval = t.export_interval_secs.map_or(d.export_interval, |s| Duration::from_secs(s.get()));
        d.service_name = t.service_name.unwrap_or_else(|| d.service_name.clone());
    }

    /// `api:` — the management API's listener.
    pub(super) fn api(&mut self, file: &Path, node: &Node) {
        let a: ApiConfig = match yaml::from_node(node, "api") {
            Ok(a) => a,
            Err(e) => return self.err(file, e),
        };
        self.api_token = a.token;
        match a.listen.parse::<std::net::SocketAddr>() {
            Ok(addr) => self.api_listen = Some(addr),
            Err(e) => {
                let n = node.get("listen").unwrap_or(node).clone();
                self.at(file, &n, "api.listen", format!("`{}` is not host:port ({e})", a.listen));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::{ConfigError, load};

    fn errors_of(sections: &str) -> Result<super::super::Config, Vec<ConfigError>> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        let text =
            format!("kafka: {{bootstrap_servers: \"127.0.0.1:9092\"}}\n{sections}connections: {{}}\nflows: []\n");
        std::fs::write(&p, text).unwrap();
        load(&p, &crate::registry()).map_err(|r| r.errors)
    }

    #[test]
    fn telemetry_and_api_are_read_and_nonsense_is_named_with_its_line() {
        let cfg = errors_of(
            "telemetry:\n  otlp_endpoint: http://collector:4318/\n  trace_sample_rate: 0.1\n  export_interval_secs: 5\napi: {listen: \"127.0.0.1:8081\"}\n",
        )
        .unwrap();
        assert_eq!(cfg.telemetry.otlp_endpoint.as_deref(), Some("http://collector:4318/"));
        assert_eq!((cfg.telemetry.trace_sample_rate, cfg.telemetry.export_interval.as_secs()), (0.1, 5));
        assert_eq!(cfg.api_listen, Some("127.0.0.1:8081".parse().unwrap()));
        let defaults = errors_of("").unwrap();
        assert_eq!((defaults.telemetry.otlp_endpoint, defaults.telemetry.trace_sample_rate), (None, 0.01));

        let bad = errors_of(
            "telemetry:\n  otlp_endpoint: collector:4318\n  trace_sample_rate: 2\napi: {listen: \"localhost\"}\n",
        )
        .unwrap_err();
        let said: Vec<String> = bad.iter().map(ToString::to_string).collect();
        assert!(
            said.iter().any(|e| e.contains(":3: telemetry.otlp_endpoint") && e.contains("not an http(s) URL")),
            "{said:?}"
        );
        assert!(
            said.iter().any(|e| e.contains(":4: telemetry.trace_sample_rate") && e.contains("between 0 and 1")),
            "{said:?}"
        );
        assert!(said.iter().any(|e| e.contains(":5: api.listen")), "{said:?}");
        let on_demand = "connections:\n  g: {type: generate}\n  o: {type: file, path: o}\nflows:\n  - name: f\n    source: {connection: g, object: x}\n    destination: {connection: o, object: y}\n    deactivate_after_failures: 3\n";
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.yaml");
        std::fs::write(&p, format!("kafka: {{bootstrap_servers: \"h:1\"}}\n{on_demand}")).unwrap();
        let e = load(&p, &crate::registry()).map_err(|r| r.errors).unwrap_err();
        assert!(
            e[0].to_string().contains(":9: flows[0].deactivate_after_failures: only scheduled and continuous"),
            "{e:?}"
        );
        let unknown = errors_of("telemetry: {otlp_endpont: x}\n").unwrap_err();
        assert!(unknown[0].to_string().contains("otlp_endpont"), "{unknown:?}");
    }
}
