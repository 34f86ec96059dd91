//! Telemetry through a real receiver: an OTLP/HTTP endpoint (tests/otlp/receiver.py) that
//! decodes what sluice exports with the OpenTelemetry project's own protobuf classes, while a
//! flow delivers to an HTTP destination that refuses some records. The oracle: the exported
//! counters equal what the destination and the DLQ hold; every record's trace joins its source
//! span to its sink batch, SQL and write spans; every dead letter keeps its record's trace; a
//! canary secret appears in nothing exported.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::http::{Destination, Options};
use common::kafka::Kafka;
use common::{run, write};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(180);
const CANARY: &str = "canary-otel-5b1d-do-not-export";

/// The receiver process; killed when dropped.
struct Receiver {
    child: std::process::Child,
    port: u16,
    out: PathBuf,
}

impl Receiver {
    fn start(dir: &Path) -> Receiver {
        let py = common::python_with("opentelemetry.proto.collector.trace.v1.trace_service_pb2");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/otlp/receiver.py");
        let out = dir.join("otlp.jsonl");
        let mut child =
            std::process::Command::new(py).arg(&script).arg(&out).stdout(std::process::Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| panic!("the receiver said {line:?}"));
        Receiver { child, port, out }
    }

    /// Everything received: (raw text, lines).
    fn received(&self) -> (String, Vec<Value>) {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let lines = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        (text, lines)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last value exported for metric `name` with attributes including `attrs`.
fn last(lines: &[Value], name: &str, attrs: &[(&str, &str)]) -> Option<Value> {
    lines
        .iter()
        .rfind(|l| l["signal"] == "metric" && l["name"] == name && attrs.iter().all(|(k, v)| l["attributes"][*k] == *v))
        .cloned()
}

fn otlp_export_carries_the_counts_and_each_records_trace_from_source_to_sink(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path());
    fn reject(row: &Value) -> Option<String> {
        let seq = row["seq"].as_i64()?;
        (seq % 100 == 7).then(|| format!("record {seq} is not accepted"))
    }
    let dest = Destination::start(Options { reject: Some(reject), ..Options::default() });
    let flow = kafka.name("traced");
    let cfg = write(
        dir.path(),
        "c.yaml",
        &format!(
            r#"
kafka: {{{kafka}}}
telemetry:
  otlp_endpoint: http://127.0.0.1:{port}
  trace_sample_rate: 1.0
  export_interval_secs: 1
  service_name: sluice-telemetry-test
connections:
  gen: {{type: generate}}
  hook:
    type: http
    url: {url}
    allow_private_addresses: true
    auth: {{type: bearer, token: "${{env:HOOK_TOKEN}}"}}
flows:
  - name: {flow}
    source: {{connection: gen, object: o, options: {{count: 1000}}}}
    transform: {{sql: "SELECT * FROM source WHERE seq % 4 <> 0"}}
    destination: {{connection: hook, object: /ingest, options: {{max_rows: 100}}}}
"#,
            kafka = kafka.yaml(),
            port = receiver.port,
            url = dest.url,
        ),
    );
    let env = [("HOOK_TOKEN", CANARY), ("SLUICE_LOG", "debug")];
    let done = run(&["run", &cfg], dir.path(), &env, LIMIT);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    assert!(!done.stderr.contains(CANARY) && !done.stdout.contains(CANARY));

    // The destination's and the DLQ's contents: the oracle.
    let delivered: BTreeSet<i64> = dest.rows().iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    let kept: BTreeSet<i64> = (0..1000).filter(|s| s % 4 != 0).collect();
    let refused: BTreeSet<i64> = kept.iter().copied().filter(|s| s % 100 == 7).collect();
    assert_eq!(delivered, kept.difference(&refused).copied().collect(), "delivered once each");
    let dlq = kafka.read_topic(&kafka.topic(&format!("{flow}.dlq")));
    assert_eq!(dlq.len(), refused.len());

    let (raw, lines) = receiver.received();
    assert!(!raw.contains(CANARY), "the secret reached the telemetry export");
    let f = [("flow", flow.as_str())];
    let value = |name: &str| last(&lines, name, &f).map(|l| l["value"].as_i64().unwrap());
    assert_eq!(value("sluice.records.read"), Some(1000));
    assert_eq!(value("sluice.records.delivered"), Some(delivered.len() as i64));
    assert_eq!(value("sluice.records.filtered"), Some(250));
    assert_eq!(value("sluice.records.dead_lettered"), Some(refused.len() as i64));
    assert_eq!(value("sluice.records.dropped"), Some(0));
    assert_eq!(value("sluice.records.in_flight"), Some(0));
    assert_eq!(value("messaging.client.sent.messages"), Some(1000));
    assert_eq!(value("messaging.client.consumed.messages"), Some(1000));
    let read = last(&lines, "sluice.records.read", &f).unwrap();
    assert_eq!((read["kind"].as_str(), read["monotonic"].as_bool()), (Some("sum"), Some(true)));
    assert_eq!(read["resource"]["service.name"], "sluice-telemetry-test");
    for stage in ["source_poll", "source_publish", "decode", "sql", "sink_write", "commit"] {
        let h = last(&lines, "sluice.stage.duration", &[("flow", flow.as_str()), ("stage", stage)])
            .unwrap_or_else(|| panic!("no {stage} times exported"));
        assert!(h["count"].as_u64().unwrap() > 0 && h["kind"] == "histogram", "{h}");
    }
    let sink_batches = last(&lines, "sluice.batch.records", &[("flow", flow.as_str()), ("stage", "sink")]).unwrap();
    assert_eq!(sink_batches["sum"].as_f64(), Some(1000.0), "every consumed record in some batch");
    assert!(last(&lines, "sluice.record.latency", &f).is_some());
    assert!(last(&lines, "messaging.process.duration", &f).is_some());
    assert!(value("sluice.read").unwrap() > 0 && value("sluice.written").unwrap() > 0);

    // Traces: a publish span per record (the rate is 1), each record's trace reaching the sink.
    let spans: Vec<&Value> = lines.iter().filter(|l| l["signal"] == "span").collect();
    let by_id: BTreeMap<&str, &Value> = spans.iter().map(|s| (s["span_id"].as_str().unwrap(), *s)).collect();
    let publish: Vec<&Value> = spans.iter().copied().filter(|s| s["name"] == "sluice.publish").collect();
    assert_eq!(publish.len(), 1000, "one publish span per record");
    assert!(publish.iter().all(|s| s["kind"] == 4 && s["parent_span_id"] == "" && s["attributes"]["flow"] == flow));
    let traces: BTreeSet<&str> = publish.iter().map(|s| s["trace_id"].as_str().unwrap()).collect();
    assert_eq!(traces.len(), 1000, "each record its own trace");
    // Each sink batch continues the trace of its first record, and links the others'.
    let sink_batches: Vec<&Value> =
        spans.iter().copied().filter(|s| s["name"] == "batch" && s["attributes"]["stage"] == "sink").collect();
    assert!(!sink_batches.is_empty());
    let mut joined = BTreeSet::new();
    for b in &sink_batches {
        let parent = by_id.get(b["parent_span_id"].as_str().unwrap()).expect("a sink batch's parent is exported");
        assert_eq!((parent["name"].as_str(), &parent["trace_id"]), (Some("sluice.publish"), &b["trace_id"]));
        joined.insert(b["trace_id"].as_str().unwrap());
        for l in b["links"].as_array().unwrap() {
            joined.insert(l["trace_id"].as_str().unwrap());
        }
        for child in ["sql", "sink_write"] {
            assert!(
                spans.iter().any(|s| s["name"] == child && s["parent_span_id"] == b["span_id"]),
                "a {child} span under sink batch {}",
                b["span_id"]
            );
        }
    }
    assert!(joined.len() >= sink_batches.len() && joined.is_subset(&traces));
    // A dead letter stays in its record's trace.
    for m in &dlq {
        let tp = m.headers.get("traceparent").expect("a dead letter keeps its record's traceparent");
        let trace = tp.split('-').nth(1).unwrap();
        assert!(traces.contains(trace), "{tp} names a record's trace");
    }
    eprintln!(
        "telemetry: {} metric points and {} spans received over OTLP; {} sink batches joined to their records' traces",
        lines.len() - spans.len(),
        spans.len(),
        sink_batches.len()
    );
}

crate::on_both_brokers!(otlp_export_carries_the_counts_and_each_records_trace_from_source_to_sink);
