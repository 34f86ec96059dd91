//! Traces: sluice's `tracing` spans exported over OTLP, and a record's journey joined into one
//! trace.
//!
//! A source stamps a W3C `traceparent` header on the records it samples (at
//! `telemetry.trace_sample_rate`), each under a `sluice.publish` span of its own. The sink
//! worker reads the header: a batch's span takes the first sampled record's trace as its parent
//! and links the others', so that trace shows publish → sink batch → SQL → sink write. A dead
//! letter keeps its record's header.
//!
//! The tracer provider is made when logging is set up (the subscriber's layers are fixed then),
//! before the config is read; its span processor and sampling rate are filled in by
//! [`export_to`] once the config says where traces go. Until then — and always, without an
//! endpoint — nothing is sampled, and the layer's filter lets no span through.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{
    Link, SamplingDecision, SamplingResult, SpanKind, TraceContextExt as _, TraceId, TracerProvider as _,
};
use opentelemetry::{KeyValue, trace::TraceState};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Sampler, SdkTracerProvider, ShouldSample, Span, SpanData, SpanProcessor,
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The header a sampled record carries (W3C Trace Context).
pub const TRACEPARENT: &str = "traceparent";

/// The name of the span a source opens for each record it samples.
const PUBLISH: &str = "sluice.publish";

/// The sampling rate as `f64` bits; 0 until [`export_to`] sets it.
static RATE: AtomicU64 = AtomicU64::new(0);

/// The processor the tracer provider was made with, filled in by [`export_to`].
static EXPORT: OnceLock<BatchSpanProcessor> = OnceLock::new();

/// The provider behind [`layer`], kept to flush it at the end.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The share of records traced (0 when traces go nowhere).
pub fn sample_rate() -> f64 {
    f64::from_bits(RATE.load(Ordering::Relaxed))
}

/// Whether spans are exported at all.
pub fn enabled() -> bool {
    sample_rate() > 0.0
}

/// The `tracing` layer that turns sluice's spans into OpenTelemetry spans. Add it to the
/// subscriber once, at start; it lets spans through only once [`export_to`] enabled traces.
pub fn layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer as _;
    let provider = PROVIDER
        .get_or_init(|| SdkTracerProvider::builder().with_span_processor(Deferred).with_sampler(SluiceSampler).build());
    // Which spans could be exported is known per call site; whether they are depends on the
    // rate, set later (and cleared at shutdown). A plain `filter_fn` would cache its first
    // answer per call site, so a call site first met before traces were on (or while another
    // dispatcher rebuilt the interest cache) would stay off for good: the call site is only
    // told "sometimes", and each span asks again.
    fn exportable(m: &tracing::Metadata<'_>) -> bool {
        m.is_span() && m.target().starts_with("sluice") && *m.level() <= tracing::Level::INFO
    }
    // The level ceiling keeps `tracing`'s global one at what the log filter allows: without
    // it, every debug and trace call site in the process would ask the subscriber each time.
    let filter = tracing_subscriber::filter::DynFilterFn::new(|m, _| enabled() && exportable(m))
        .with_max_level_hint(tracing::Level::INFO)
        .with_callsite_filter(|m| {
            if exportable(m) {
                tracing::subscriber::Interest::sometimes()
            } else {
                tracing::subscriber::Interest::never()
            }
        });
    tracing_opentelemetry::layer().with_tracer(provider.tracer("sluice")).with_filter(filter)
}

/// Sends spans to the OTLP/HTTP endpoint `url`, tracing `rate` of the records. Returns whether
/// a [`layer`] is there to make spans (a process without one exports none).
pub(super) fn export_to(url: &str, resource: Resource, rate: f64) -> Result<bool, String> {
    if PROVIDER.get().is_none() {
        return Ok(false);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("telemetry.otlp_endpoint: setting up the trace export to {url}: {e}"))?;
    let mut processor = BatchSpanProcessor::builder(exporter).build();
    processor.set_resource(&resource);
    if EXPORT.set(processor).is_err() {
        return Err("the trace export is already set up in this process".into());
    }
    RATE.store(rate.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    Ok(true)
}

/// Flushes and stops the trace export (blocking).
pub(super) fn shutdown() {
    RATE.store(0, Ordering::Relaxed);
    if let Some(p) = PROVIDER.get()
        && let Err(e) = p.shutdown_with_timeout(Duration::from_secs(5))
    {
        tracing::debug!(error = %e, "stopping the trace export");
    }
}

/// The span processor the provider is made with, before it is known where spans go.
#[derive(Debug)]
struct Deferred;

impl SpanProcessor for Deferred {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        if let Some(p) = EXPORT.get() {
            p.on_start(span, cx);
        }
    }

    fn on_end(&self, mut span: SpanData) {
        if let Some(p) = EXPORT.get() {
            scrub(&mut span.attributes);
            p.on_end(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        EXPORT.get().map_or(Ok(()), |p| p.force_flush())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        EXPORT.get().map_or(Ok(()), |p| p.shutdown_with_timeout(timeout))
    }
}

/// Replaces registered secrets in string attributes, as the log writer does in log lines: a
/// span's fields are sluice's own and hold none, but this is the last place to be sure.
fn scrub(attributes: &mut [KeyValue]) {
    for kv in attributes.iter_mut() {
        if let opentelemetry::Value::String(v) = &kv.value
            && let std::borrow::Cow::Owned(clean) = crate::secret::redact(v.as_str())
        {
            kv.value = opentelemetry::Value::String(clean.into());
        }
    }
}

/// Follows a span's parent (a sampled record's trace is sampled all the way to the sink); a
/// `sluice.publish` span was sampled by the source already; any other root (a batch without a
/// sampled record) is sampled at the rate, by its trace id.
#[derive(Debug, Clone)]
struct SluiceSampler;

impl ShouldSample for SluiceSampler {
    fn should_sample(
        &self,
        parent: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let rate = sample_rate();
        let (decision, trace_state) = match parent.filter(|cx| cx.has_active_span()) {
            Some(cx) => {
                let span = cx.span();
                let sc = span.span_context();
                let d = if sc.is_sampled() && rate > 0.0 {
                    SamplingDecision::RecordAndSample
                } else {
                    SamplingDecision::Drop
                };
                (d, sc.trace_state().clone())
            }
            None if rate > 0.0 && name == PUBLISH => (SamplingDecision::RecordAndSample, TraceState::default()),
            None => {
                let d = Sampler::TraceIdRatioBased(rate).should_sample(None, trace_id, name, kind, attributes, links);
                (d.decision, TraceState::default())
            }
        };
        SamplingResult { decision, attributes: Vec::new(), trace_state }
    }
}

/// Decides which records are traced: a cheap generator per source task, so a record that is
/// not sampled costs one multiplication.
#[derive(Debug)]
pub struct Sampling {
    rate: f64,
    state: u64,
}

impl Sampling {
    /// At the process's rate.
    pub fn new() -> Sampling {
        // Any non-zero seed; the time keeps processes apart.
        let seed = (crate::record::now_ms() as u64) ^ 0x9E37_79B9_7F4A_7C15 | 1;
        Sampling { rate: sample_rate(), state: seed }
    }

    /// Whether the next record is traced.
    pub fn hit(&mut self) -> bool {
        if self.rate <= 0.0 {
            return false;
        }
        // xorshift64*: the top 53 bits as a fraction in [0, 1).
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let x = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        (x as f64 / (1u64 << 53) as f64) < self.rate
    }
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling::new()
    }
}

/// Opens the `sluice.publish` span of a sampled record of `flow` going to `topic`, and returns
/// it with the `traceparent` to stamp on the record (`None` when no layer makes spans).
pub fn publish_span(flow: &str, topic: &str) -> (tracing::Span, Option<String>) {
    // A root: the record's own trace, not the source batch's.
    let span = tracing::info_span!(
        parent: None,
        "sluice.publish",
        otel.kind = "producer",
        flow = %flow,
        messaging.system = "kafka",
        messaging.operation.type = "send",
        messaging.destination.name = %topic,
    );
    let tp = traceparent(&span.context());
    (span, tp)
}

/// The `traceparent` of `cx`'s span, if it is a valid one.
fn traceparent(cx: &Context) -> Option<String> {
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The trace a `traceparent` header names, if it is well-formed.
fn context_of(traceparent: &str) -> Option<Context> {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// At most this many other records' traces are linked from one batch span.
const MAX_LINKS: usize = 32;

/// Joins the batch `span` (not yet entered) to the traces its records carry: the first one's as
/// its parent, links to the others'.
pub fn join(span: &tracing::Span, traceparents: &[&str]) {
    let mut contexts = traceparents.iter().filter_map(|tp| context_of(tp));
    let Some(first) = contexts.next() else { return };
    // Fails only when no layer makes spans (nothing to join then).
    let _ = span.set_parent(first);
    for cx in contexts.take(MAX_LINKS) {
        span.add_link(cx.span().span_context().clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_survives_the_round_trip_and_nonsense_is_no_trace() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = context_of(tp).expect("a valid traceparent");
        assert_eq!(traceparent(&cx).as_deref(), Some(tp));
        assert!(context_of("00-nonsense").is_none());
        assert!(context_of("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
    }

    #[test]
    fn sampling_hits_about_its_rate_and_never_at_zero() {
        let mut s = Sampling { rate: 0.01, state: 42 };
        let hits = (0..100_000).filter(|_| s.hit()).count();
        assert!((800..1200).contains(&hits), "{hits}");
        let mut none = Sampling { rate: 0.0, state: 42 };
        assert!(!(0..1000).any(|_| none.hit()));
    }
}
