//! The management listener of `sluice run --api`, through a real broker: `/health`, `/ready`,
//! `/flows`, and `/metrics` scraped while a flow runs and parsed by the Prometheus client's own
//! text parser (an independent reader), its counters balancing at every scrape and agreeing
//! with the records the destination holds at the end.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::kafka::Kafka;
use common::{read_jsonl, run, spawn, wait_until, write};

const LIMIT: Duration = Duration::from_secs(120);

fn python() -> String {
    common::python_with("prometheus_client")
}

/// GETs `url`; (status, body), through Python's own HTTP client.
fn get(url: &str) -> (u16, String) {
    let script = "import sys, urllib.request, urllib.error\n\
try:\n    r = urllib.request.urlopen(sys.argv[1], timeout=10); print(r.status); print(r.read().decode())\n\
except urllib.error.HTTPError as e:\n    print(e.code); print(e.read().decode())\n";
    let out = std::process::Command::new(python()).args(["-c", script, url]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, body) = text.split_once('\n').unwrap_or((text.as_str(), ""));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

/// Scrapes `/metrics` and parses it with `prometheus_client.parser`: sample name → value for
/// flow `flow`, and the metric families' types.
fn scrape(base: &str, flow: &str) -> (BTreeMap<String, f64>, BTreeMap<String, String>) {
    let script = "import sys, json, urllib.request\n\
from prometheus_client.parser import text_string_to_metric_families\n\
text = urllib.request.urlopen(sys.argv[1] + '/metrics', timeout=10).read().decode()\n\
samples, types = {}, {}\n\
for fam in text_string_to_metric_families(text):\n    types[fam.name] = fam.type\n    for s in fam.samples:\n        if s.labels.get('flow') == sys.argv[2]:\n            samples[s.name] = s.value\n\
print(json.dumps({'samples': samples, 'types': types}))\n";
    let out = std::process::Command::new(python()).args(["-c", script, base, flow]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let samples = v["samples"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_f64().unwrap())).collect();
    let types = v["types"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().into())).collect();
    (samples, types)
}

fn metrics_agree_with_the_ledger_while_a_flow_runs(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let flow = kafka.name("scraped");
    let cfg = write(
        dir.path(),
        "c.yaml",
        &format!(
            "kafka: {{{kafka}}}\nconnections:\n  gen: {{type: generate}}\n  out: {{type: file, path: out}}\nflows:\n  - name: {flow}\n    trigger: continuous\n    source: {{connection: gen, object: o, options: {{rate_per_sec: 400, count: 2000}}}}\n    transform: {{sql: \"SELECT * FROM source WHERE seq % 4 <> 0\"}}\n    destination: {{connection: out, object: m.jsonl}}\n",
            kafka = kafka.yaml()
        ),
    );
    let refused = run(&["run", &cfg, "--api", "0.0.0.0:1"], dir.path(), &[], LIMIT);
    assert_eq!(refused.code(), Some(2));
    assert!(refused.stderr.contains("listens on loopback only"), "{}", refused.stderr);

    let port = common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let p = spawn(&["run", &cfg, "--api", &format!("127.0.0.1:{port}")], dir.path(), &[]);
    assert!(wait_until(LIMIT, || get(&format!("{base}/ready")).0 == 200), "{}", p.stderr_so_far());
    assert_eq!(get(&format!("{base}/health")).0, 200);
    let file = dir.path().join("out/m.jsonl");
    // Scrapes while records flow: every one balances.
    let mut scrapes = 0;
    while read_jsonl(&file).0.len() < 1500 && scrapes < 200 {
        let (s, types) = scrape(&base, &flow);
        assert_eq!(types["sluice_records_delivered"], "counter", "{types:?}");
        assert_eq!(types["sluice_records_in_flight"], "gauge", "{types:?}");
        let settled = s["sluice_records_delivered_total"]
            + s["sluice_records_filtered_total"]
            + s["sluice_records_dead_lettered_total"]
            + s["sluice_records_dropped_total"]
            + s["sluice_records_in_flight"];
        assert_eq!(
            s["sluice_records_read_total"], settled,
            "read = delivered + filtered + dlq + dropped + in flight: {s:?}"
        );
        scrapes += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(scrapes >= 3, "scraped while the flow ran ({scrapes} times)");
    // Once everything is delivered, the counters are the destination's rows exactly.
    let settled = || {
        let (s, _) = scrape(&base, &flow);
        s["sluice_records_read_total"] == 2000.0 && s["sluice_records_in_flight"] == 0.0
    };
    assert!(wait_until(LIMIT, settled), "{}", p.stderr_so_far());
    let (s, _) = scrape(&base, &flow);
    assert_eq!(s["sluice_records_delivered_total"], read_jsonl(&file).0.len() as f64);
    assert_eq!((s["sluice_records_delivered_total"], s["sluice_records_filtered_total"]), (1500.0, 500.0));
    let (status, body) = get(&format!("{base}/flows"));
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let f = v["flows"].as_array().unwrap().iter().find(|f| f["name"] == flow.as_str()).unwrap().clone();
    assert_eq!(f["trigger"], "continuous");
    assert_eq!((f["counts"]["read"].as_u64(), f["counts"]["delivered"].as_u64()), (Some(2000), Some(1500)));
    let done = p.terminate(Duration::from_secs(30));
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    eprintln!("api: /metrics scraped {scrapes} times during the flow, balanced each time");
}

crate::on_both_brokers!(metrics_agree_with_the_ledger_while_a_flow_runs);
