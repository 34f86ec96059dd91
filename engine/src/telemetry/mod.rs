//! Telemetry: the flows' metrics and traces, in one OpenTelemetry stack (the version line the
//! embedded broker links), exported over OTLP/HTTP when `telemetry.otlp_endpoint` is set and
//! as Prometheus text at the management API's `/metrics`.
//!
//! - [`metrics`]: [`FlowMetrics`], one per flow: counters observed from the run ledgers, and
//!   the histograms and counters recorded once per batch.
//! - [`trace`]: the sampler, the W3C `traceparent` a source stamps on the records it samples,
//!   and joining a sink batch's spans to those records' traces.
//!
//! The meter provider is sluice's own, not OpenTelemetry's global one: the embedded broker
//! records its own metrics through the global provider, which stays a no-op, so neither its
//! cost nor its names reach sluice's exports.

pub mod metrics;
pub mod trace;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};

pub use metrics::{FlowMetrics, Stage, Totals};

/// What the config's `telemetry` section asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySettings {
    /// OTLP/HTTP base URL (`http://collector:4318`); metrics go to `/v1/metrics`, traces to
    /// `/v1/traces`. `None`: nothing is exported over OTLP.
    pub otlp_endpoint: Option<String>,
    /// Share of source records whose journey is traced, 0 to 1.
    pub trace_sample_rate: f64,
    /// How often metrics are pushed over OTLP.
    pub export_interval: Duration,
    /// The `service.name` resource attribute.
    pub service_name: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            otlp_endpoint: None,
            trace_sample_rate: 0.01,
            export_interval: Duration::from_secs(10),
            service_name: "sluice".into(),
        }
    }
}

/// The process's telemetry: hands out each flow's [`FlowMetrics`] and renders `/metrics`.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` when nothing exports metrics: flows' metrics then record nothing.
    meter: Option<(Meter, SdkMeterProvider)>,
    prometheus: Option<prometheus::Registry>,
    flows: Arc<Mutex<Vec<Arc<FlowMetrics>>>>,
    instruments: Option<metrics::Instruments>,
    tracing: bool,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("metrics", &self.inner.meter.is_some())
            .field("prometheus", &self.inner.prometheus.is_some())
            .field("tracing", &self.inner.tracing)
            .finish()
    }
}

impl Telemetry {
    /// No exports: metrics record nothing, no trace is sampled.
    pub fn off() -> Telemetry {
        Telemetry {
            inner: Arc::new(Inner {
                meter: None,
                prometheus: None,
                flows: Arc::default(),
                instruments: None,
                tracing: false,
            }),
        }
    }

    /// Sets telemetry up as `settings` say, with a Prometheus registry for `/metrics` when
    /// `prometheus`. Traces are exported only when the process's tracing subscriber carries
    /// [`trace::layer`]. Errors name the setting at fault.
    pub fn install(settings: &TelemetrySettings, prometheus: bool) -> Result<Telemetry, String> {
        let otlp = settings.otlp_endpoint.as_deref().map(|e| e.trim_end_matches('/').to_owned());
        if otlp.is_none() && !prometheus {
            return Ok(Telemetry::off());
        }
        let resource = Resource::builder().with_service_name(settings.service_name.clone()).build();
        let mut builder = SdkMeterProvider::builder().with_resource(resource.clone());
        let registry = if prometheus {
            let registry = prometheus::Registry::new();
            let exporter = opentelemetry_prometheus::exporter()
                .with_registry(registry.clone())
                .without_scope_info()
                .without_target_info()
                .build()
                .map_err(|e| format!("setting up the Prometheus export: {e}"))?;
            builder = builder.with_reader(exporter);
            Some(registry)
        } else {
            None
        };
        let mut tracing = false;
        if let Some(base) = &otlp {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_endpoint(format!("{base}/v1/metrics"))
                .with_timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| format!("telemetry.otlp_endpoint {base}: setting up the metrics export: {e}"))?;
            builder =
                builder.with_reader(PeriodicReader::builder(exporter).with_interval(settings.export_interval).build());
            tracing = trace::export_to(&format!("{base}/v1/traces"), resource, settings.trace_sample_rate)?;
        }
        let provider = builder.build();
        let meter = provider.meter("sluice");
        let flows: Arc<Mutex<Vec<Arc<FlowMetrics>>>> = Arc::default();
        observe(&meter, &flows);
        let instruments = metrics::Instruments::new(&meter);
        Ok(Telemetry {
            inner: Arc::new(Inner {
                meter: Some((meter, provider)),
                prometheus: registry,
                flows,
                instruments: Some(instruments),
                tracing,
            }),
        })
    }

    /// The metrics of flow `name` (the same ones however often asked).
    pub fn flow(&self, name: &str) -> Arc<FlowMetrics> {
        let Ok(mut flows) = self.inner.flows.lock() else { return FlowMetrics::disabled(name) };
        if let Some(f) = flows.iter().find(|f| f.name() == name) {
            return f.clone();
        }
        let f = Arc::new(FlowMetrics::new(name, self.inner.instruments.clone()));
        flows.push(f.clone());
        f
    }

    /// Every metric in Prometheus' text format (0.0.4), or `None` without the Prometheus export.
    pub fn prometheus_text(&self) -> Option<String> {
        use prometheus::Encoder as _;
        let registry = self.inner.prometheus.as_ref()?;
        let mut out = Vec::new();
        if let Err(e) = prometheus::TextEncoder::new().encode(&registry.gather(), &mut out) {
            tracing::warn!(error = %e, "rendering /metrics");
        }
        Some(String::from_utf8_lossy(&out).into_owned())
    }

    /// Pushes what is pending over OTLP and stops the exports; blocks up to a few seconds
    /// (call it off the async runtime).
    pub fn shutdown(&self) {
        if let Some((_, provider)) = &self.inner.meter
            && let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(5))
        {
            tracing::debug!(error = %e, "stopping the metrics export");
        }
        if self.inner.tracing {
            trace::shutdown();
        }
    }
}

/// Registers the counters and gauges observed from the flows' ledgers and lag tables.
fn observe(meter: &Meter, flows: &Arc<Mutex<Vec<Arc<FlowMetrics>>>>) {
    type Get = fn(&Totals) -> u64;
    // (name, description, unit, messaging attributes, the count): the records' fate, then
    // OpenTelemetry's messaging conventions (messages a client sent or consumed), then bytes.
    let counters: [(&'static str, &'static str, &'static str, bool, Get); 9] = [
        ("sluice.records.read", "Records the flow read from its source.", "", false, |t| t.read),
        ("sluice.records.delivered", "Records delivered to the destination.", "", false, |t| t.delivered),
        ("sluice.records.filtered", "Records the flow's SQL or tasks filtered out.", "", false, |t| t.filtered),
        ("sluice.records.dead_lettered", "Records sent to the dead-letter topic.", "", false, |t| t.dead_lettered),
        ("sluice.records.dropped", "Records dropped under errors.policy: drop.", "", false, |t| t.dropped),
        ("messaging.client.sent.messages", "Records the flow's source published to Kafka.", "{message}", true, |t| {
            t.produced
        }),
        (
            "messaging.client.consumed.messages",
            "Messages the flow's sink workers consumed from Kafka.",
            "{message}",
            true,
            |t| t.consumed,
        ),
        ("sluice.read", "Bytes of record keys and payloads the sink workers consumed.", "By", false, |t| t.bytes_read),
        (
            "sluice.written",
            "Bytes of Arrow data handed to the destination (an estimate of what it wrote).",
            "By",
            false,
            |t| t.bytes_written,
        ),
    ];
    for (name, description, unit, messaging, get) in counters {
        let flows = flows.clone();
        let mut counter = meter.u64_observable_counter(name).with_description(description);
        if !unit.is_empty() {
            counter = counter.with_unit(unit);
        }
        counter
            .with_callback(move |o| {
                for f in flows.lock().iter().flat_map(|v| v.iter()) {
                    let attrs = if messaging { f.messaging_attrs() } else { f.flow_attrs() };
                    o.observe(get(&f.totals()), attrs);
                }
            })
            .build();
    }
    let f = flows.clone();
    meter
        .u64_observable_gauge("sluice.records.in_flight")
        .with_description("Records read and not yet delivered, filtered, dead-lettered or dropped.")
        .with_callback(move |o| {
            for f in f.lock().iter().flat_map(|v| v.iter()) {
                o.observe(f.totals().in_flight, f.flow_attrs());
            }
        })
        .build();
    let f = flows.clone();
    meter
        .u64_observable_gauge("sluice.flow.state")
        .with_description("1 for the flow's current state (active, paused, deactivated), 0 for the others.")
        .with_callback(move |o| {
            use crate::runtime::FlowState;
            for f in f.lock().iter().flat_map(|v| v.iter()) {
                let now = f.state();
                for s in [FlowState::Active, FlowState::Paused, FlowState::Deactivated] {
                    let attrs = [f.flow_attrs()[0].clone(), KeyValue::new("state", s.name())];
                    o.observe(u64::from(now == s), &attrs);
                }
            }
        })
        .build();
    let f = flows.clone();
    meter
        .u64_observable_gauge("sluice.source.behind")
        .with_description(
            "How far the source's acknowledged position is behind its upstream's end (WAL bytes for CDC), where it can tell.",
        )
        .with_unit("By")
        .with_callback(move |o| {
            for f in f.lock().iter().flat_map(|v| v.iter()) {
                if let Some(b) = f.source_behind() {
                    o.observe(b, f.flow_attrs());
                }
            }
        })
        .build();
    let f = flows.clone();
    meter
        .i64_observable_gauge("sluice.consumer.lag")
        .with_description("Messages between a partition's end and the sink worker's position, by topic and partition.")
        .with_unit("{message}")
        .with_callback(move |o| {
            for f in f.lock().iter().flat_map(|v| v.iter()) {
                for (topic, partition, lag) in f.lags() {
                    let attrs = [
                        f.flow_attrs()[0].clone(),
                        KeyValue::new("messaging.destination.name", topic),
                        KeyValue::new("messaging.destination.partition.id", partition.to_string()),
                    ];
                    o.observe(lag, &attrs);
                }
            }
        })
        .build();
}
