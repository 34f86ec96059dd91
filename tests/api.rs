//! The management listener of `sluice run --api`, through a real broker: `/health`, `/ready`,
//! `/flows`, and `/metrics` scraped while a flow runs and parsed by the Prometheus client's own
//! text parser (an independent reader), its counters balancing at every scrape and agreeing
//! with the records the destination holds at the end; the bearer token beyond loopback; and
//! the Grafana dashboard in deploy/ naming only metrics sluice exports.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::http::{Destination, Mode, Options};
use common::kafka::Kafka;
use common::{run, spawn, wait_until, write};

const LIMIT: Duration = Duration::from_secs(120);
const TOKEN: &str = "api-token-canary-3e9d";

fn python() -> String {
    common::python_with("prometheus_client")
}

/// GETs `url` with `token` as bearer, if any; (status, body).
fn get(url: &str, token: Option<&str>) -> (u16, String) {
    common::http_request("GET", url, token)
}

/// A scrape of `/metrics` parsed with `prometheus_client.parser`.
struct Scrape {
    /// Sample name → value, for flow `flow`.
    samples: BTreeMap<String, f64>,
    /// Metric family → type.
    types: BTreeMap<String, String>,
    /// Every sample name, of any flow.
    names: BTreeSet<String>,
}

fn scrape(base: &str, flow: &str) -> Scrape {
    let script = "import sys, json, urllib.request\n\
from prometheus_client.parser import text_string_to_metric_families\n\
req = urllib.request.Request(sys.argv[1] + '/metrics', headers={'Authorization': 'Bearer ' + sys.argv[3]})\n\
text = urllib.request.urlopen(req, timeout=10).read().decode()\n\
samples, types, names = {}, {}, set()\n\
for fam in text_string_to_metric_families(text):\n    types[fam.name] = fam.type\n    for s in fam.samples:\n        names.add(s.name)\n        if s.labels.get('flow') == sys.argv[2] and len(s.labels) == 1:\n            samples[s.name] = s.value\n\
print(json.dumps({'samples': samples, 'types': types, 'names': sorted(names)}))\n";
    let out = std::process::Command::new(python()).args(["-c", script, base, flow, TOKEN]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Scrape {
        samples: v["samples"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_f64().unwrap())).collect(),
        types: v["types"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().into())).collect(),
        names: v["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_owned()).collect(),
    }
}

/// The metric names the dashboard's queries use.
fn dashboard_metrics() -> BTreeSet<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/dashboards/sluice.json");
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_owned()))
        .collect();
    exprs.push(dash["templating"]["list"][0]["definition"].as_str().unwrap().to_owned());
    let mut names = BTreeSet::new();
    for e in exprs {
        // Label names are in matchers (`{…}`) and groupings (`by (…)`); what is left names metrics.
        let mut bare = String::new();
        let mut depth = 0;
        let mut rest = e.as_str();
        while let Some(c) = rest.chars().next() {
            if depth == 0 && (rest.starts_with("by (") || rest.starts_with('{')) {
                depth = 1;
                rest = &rest[rest.find(['(', '{']).unwrap() + 1..];
                continue;
            }
            if depth > 0 && matches!(c, ')' | '}') {
                depth = 0;
            } else if depth == 0 {
                bare.push(c);
            }
            rest = &rest[c.len_utf8()..];
        }
        for word in bare.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
            if word.starts_with("sluice_") || word.starts_with("messaging_") {
                names.insert(word.to_owned());
            }
        }
    }
    names
}

fn metrics_agree_with_the_ledger_while_a_flow_runs(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let flow = kafka.name("scraped");
    // The destination fails at first, so retries and sink errors are counted too.
    let dest = Destination::start(Options { mode: Mode::Error500, ..Options::default() });
    let port = common::free_port();
    let config = |api: &str| {
        format!(
            "kafka: {{{kafka}}}\n{api}connections:\n  gen: {{type: generate}}\n  hook: {{type: http, url: \"{url}\", allow_private_addresses: true}}\nflows:\n  - name: {flow}\n    trigger: continuous\n    source: {{connection: gen, object: o, options: {{rate_per_sec: 400, count: 2000}}}}\n    transform: {{sql: \"SELECT * FROM source WHERE seq % 4 <> 0\"}}\n    retry: {{initial_backoff_ms: 100, max_backoff_ms: 500, max_attempts: 100, max_elapsed_secs: 60}}\n    destination: {{connection: hook, object: /in}}\n",
            kafka = kafka.yaml(),
            url = dest.url,
        )
    };
    // Beyond loopback only with a token.
    let open = write(dir.path(), "open.yaml", &config(""));
    let refused = run(&["run", &open, "--api", "0.0.0.0:1"], dir.path(), &[], LIMIT);
    assert_eq!(refused.code(), Some(2));
    assert!(refused.stderr.contains("only with a bearer token"), "{}", refused.stderr);

    let api = format!("api: {{listen: \"0.0.0.0:{port}\", token: \"${{env:SLUICE_API_TOKEN}}\"}}\n");
    let cfg = write(dir.path(), "c.yaml", &config(&api));
    let base = format!("http://127.0.0.1:{port}");
    let p = spawn(&["run", &cfg], dir.path(), &[("SLUICE_API_TOKEN", TOKEN)]);
    assert!(wait_until(LIMIT, || get(&format!("{base}/ready"), Some(TOKEN)).0 == 200), "{}", p.stderr_so_far());
    assert_eq!(get(&format!("{base}/health"), None).0, 200, "a liveness probe needs no token");
    for route in ["/ready", "/flows", "/metrics"] {
        assert_eq!(get(&format!("{base}{route}"), None).0, 401, "{route} without the token");
        assert_eq!(get(&format!("{base}{route}"), Some("wrong")).0, 401, "{route} with a wrong token");
    }
    // Scrapes while records flow: every one balances — first while the destination refuses
    // writes (records pile up in flight), then once it is healthy (after it refused a write or
    // two: a cluster's consumer group may take a while to join).
    let balanced = || {
        let Scrape { samples: s, types, .. } = scrape(&base, &flow);
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
    };
    let mut scrapes = 0;
    let refusing = std::time::Instant::now();
    while dest.requests() < 2 && refusing.elapsed() < LIMIT {
        balanced();
        scrapes += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    // While it runs, the flow says so, with its run's counts so far.
    let (status, body) = get(&format!("{base}/flows"), Some(TOKEN));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let running = v["flows"].as_array().unwrap().iter().find(|f| f["name"] == flow.as_str()).unwrap().clone();
    assert_eq!((status, running["status"].as_str()), (200, Some("running")), "{running}");
    assert!(running["current_run"]["run_id"].is_string() && running["current_run"]["counts"]["read"].is_u64());
    dest.set_mode(Mode::Healthy);
    while dest.rows().len() < 1500 && scrapes < 200 {
        balanced();
        scrapes += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(scrapes >= 3, "scraped while the flow ran ({scrapes} times)");
    // Once everything is delivered, the counters are the destination's rows exactly.
    let settled = || {
        let s = scrape(&base, &flow).samples;
        s["sluice_records_read_total"] == 2000.0 && s["sluice_records_in_flight"] == 0.0
    };
    assert!(wait_until(LIMIT, settled), "{}", p.stderr_so_far());
    let last = scrape(&base, &flow);
    let s = &last.samples;
    let delivered: BTreeSet<i64> = dest.rows().iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    assert_eq!(s["sluice_records_delivered_total"], delivered.len() as f64);
    assert_eq!((s["sluice_records_delivered_total"], s["sluice_records_filtered_total"]), (1500.0, 500.0));
    assert!(last.names.contains("sluice_retries_total") && last.names.contains("sluice_sink_errors_total"));
    // Every metric the dashboard charts is one sluice exports (the lag gauge appears with the
    // consumer's first statistics, 5 s after it starts).
    let charted = dashboard_metrics();
    let missing = || {
        let names = scrape(&base, &flow).names;
        charted.iter().filter(|m| !names.contains(*m)).cloned().collect::<Vec<String>>()
    };
    assert!(
        wait_until(Duration::from_secs(30), || missing().is_empty()),
        "the dashboard names metrics sluice does not export: {:?}",
        missing()
    );
    assert!(charted.len() >= 15, "{charted:?}");
    let (status, body) = get(&format!("{base}/flows"), Some(TOKEN));
    assert_eq!(status, 200);
    assert!(!body.contains(TOKEN));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let f = v["flows"].as_array().unwrap().iter().find(|f| f["name"] == flow.as_str()).unwrap().clone();
    assert_eq!(f["trigger"], "continuous");
    assert_eq!((f["counts"]["read"].as_u64(), f["counts"]["delivered"].as_u64()), (Some(2000), Some(1500)));
    let done = p.terminate(Duration::from_secs(30));
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    assert!(!done.stderr.contains(TOKEN) && !done.stdout.contains(TOKEN));
    eprintln!(
        "api: /metrics scraped {scrapes} times during the flow, balanced each time; the dashboard's {} metrics all exported",
        charted.len()
    );
}

crate::on_both_brokers!(metrics_agree_with_the_ledger_while_a_flow_runs);

/// `body` of a request through Python's own HTTP client: (status, JSON).
fn call(method: &str, url: &str) -> (u16, serde_json::Value) {
    let (status, body) = common::http_request(method, url, None);
    assert!(!body.contains(TOKEN), "the secret in a response to {method} {url}: {body}");
    (status, serde_json::from_str(body.trim()).unwrap_or(serde_json::Value::Null))
}

/// The API end to end: an on-demand flow run again through it, its connections shown with
/// secrets masked and tested, its dead letters browsed and replayed after a fix.
fn the_api_runs_flows_tests_connections_and_replays_dead_letters(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let flow = kafka.name("ops");
    fn reject(row: &serde_json::Value) -> Option<String> {
        let seq = row["seq"].as_i64()?;
        (seq % 10 == 3).then(|| format!("record {seq} is not accepted"))
    }
    let dest = Destination::start(Options { reject: Some(reject), ..Options::default() });
    let cfg = write(
        dir.path(),
        "c.yaml",
        &format!(
            r#"
kafka: {{{kafka}}}
connections:
  gen: {{type: generate}}
  hook:
    type: http
    url: "{url}"
    allow_private_addresses: true
    auth: {{type: bearer, token: "${{env:HOOK_TOKEN}}"}}
  dead: {{type: http, url: "http://127.0.0.1:{closed}/x", allow_private_addresses: true, timeout_secs: 2}}
flows:
  - name: {flow}
    source: {{connection: gen, object: o, options: {{count: 50}}}}
    destination: {{connection: hook, object: /in}}
"#,
            kafka = kafka.yaml(),
            url = dest.url,
            closed = common::free_port(),
        ),
    );
    let port = common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let p =
        spawn(&["run", &cfg, "--api", &format!("127.0.0.1:{port}"), "--serve"], dir.path(), &[("HOOK_TOKEN", TOKEN)]);
    let runs = || call("GET", &format!("{base}/flows/{flow}/runs")).1["runs"].as_array().cloned().unwrap_or_default();
    let succeeded = |n: usize| move || runs().iter().filter(|r| r["status"] == "succeeded").count() >= n;
    assert!(wait_until(LIMIT, succeeded(1)), "{}", p.stderr_so_far());
    assert!(wait_until(LIMIT, || dest.rows().len() >= 45), "{} rows: {}", dest.rows().len(), p.stderr_so_far());
    assert_eq!(dest.rows().len(), 45, "five records refused");
    let (_, one) = call("GET", &format!("{base}/flows/{flow}"));
    assert_eq!((one["status"].as_str(), one["current_run"].is_null()), (Some("idle"), true), "{one}");

    // Connections: settings with the secret masked, the flows using each, a test of each.
    let (status, conns) = call("GET", &format!("{base}/connections"));
    assert_eq!(status, 200);
    let hook = conns["connections"].as_array().unwrap().iter().find(|c| c["name"] == "hook").unwrap().clone();
    assert_eq!((hook["type"].as_str(), hook["settings"]["auth"]["token"].as_str()), (Some("http"), Some("*****")));
    assert_eq!(hook["flows"], serde_json::json!([flow]));
    let (status, ok) = call("POST", &format!("{base}/connections/hook/test"));
    assert_eq!((status, ok["ok"].as_bool()), (200, Some(true)), "{ok}");
    let (status, bad) = call("POST", &format!("{base}/connections/dead/test"));
    assert_eq!((status, bad["ok"].as_bool()), (200, Some(false)), "{bad}");
    assert!(!bad["message"].as_str().unwrap().is_empty());
    let (_, conns) = call("GET", &format!("{base}/connections"));
    let dead = conns["connections"].as_array().unwrap().iter().find(|c| c["name"] == "dead").unwrap().clone();
    assert_eq!(dead["last_test"]["ok"], false, "{dead}");
    assert_eq!(call("POST", &format!("{base}/connections/nope/test")).0, 404);

    // Dead letters: browsed with their reasons, replayed once the destination takes them.
    let (status, dlq) = call("GET", &format!("{base}/flows/{flow}/dlq?limit=100"));
    assert_eq!(status, 200);
    let letters = dlq["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 5, "{dlq}");
    assert!(letters.iter().all(|l| l["stage"] == "sink" && l["error"].as_str().unwrap().contains("is not accepted")));
    let (_, page) = call("GET", &format!("{base}/flows/{flow}/dlq?limit=2&offset=4"));
    assert_eq!(page["dead_letters"].as_array().unwrap().len(), 1);
    dest.set_reject(None);
    let (status, replayed) = call("POST", &format!("{base}/flows/{flow}/dlq/replay"));
    assert_eq!((status, replayed["replayed"].as_u64(), replayed["delivered"].as_u64()), (200, Some(5), Some(5)));
    let seqs: BTreeSet<i64> = dest.rows().iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (0..50).collect(), "every record delivered after the replay");

    // A run started through the API: a new pull, all 50 delivered again.
    let (status, started) = call("POST", &format!("{base}/flows/{flow}/runs"));
    assert_eq!(status, 202, "{started}");
    assert!(wait_until(LIMIT, succeeded(2)), "{}", p.stderr_so_far());
    assert_eq!(dest.rows().len(), 45 + 5 + 50);
    assert_eq!(call("POST", &format!("{base}/flows/nope/runs")).0, 404);
    // The secret is in no metric either (labels or values), nor in the OpenAPI document.
    let (status, metrics) = get(&format!("{base}/metrics"), None);
    assert!(status == 200 && metrics.contains("sluice_records_delivered_total") && !metrics.contains(TOKEN));
    let (status, doc) = get(&format!("{base}/openapi.json"), None);
    assert!(status == 200 && !doc.contains(TOKEN));
    let done = p.terminate(Duration::from_secs(30));
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    assert!(!done.stderr.contains(TOKEN) && !done.stdout.contains(TOKEN));
}

crate::on_both_brokers!(the_api_runs_flows_tests_connections_and_replays_dead_letters);

/// The OpenAPI document, checked against the running server by a property-based tester
/// (Schemathesis, from PyPI): every operation, with generated valid and invalid inputs, all
/// its checks (status codes, content types, response schemas, auth, negative data) passing.
#[test]
fn the_openapi_document_holds_against_the_running_server() {
    let kafka = Kafka::embedded();
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let cfg = write(
        dir.path(),
        "c.yaml",
        &format!(
            r#"
kafka: {{{kafka}}}
api: {{listen: "127.0.0.1:{port}", token: "${{env:SLUICE_API_TOKEN}}"}}
connections:
  gen: {{type: generate}}
  out: {{type: file, path: out}}
  dead: {{type: http, url: "http://127.0.0.1:{closed}/x", allow_private_addresses: true, timeout_secs: 2}}
flows:
  - name: {cont}
    trigger: continuous
    source: {{connection: gen, object: o, options: {{rate_per_sec: 50}}}}
    destination: {{connection: out, object: c.jsonl}}
  - name: {once}
    source: {{connection: gen, object: o, options: {{count: 10}}}}
    transform: {{sql: "SELECT seq, 10 / (seq % 3) AS x FROM source"}}
    destination: {{connection: out, object: o.jsonl}}
"#,
            kafka = kafka.yaml(),
            closed = common::free_port(),
            cont = kafka.name("cont"),
            once = kafka.name("once"),
        ),
    );
    let p = spawn(&["run", &cfg, "--serve"], dir.path(), &[("SLUICE_API_TOKEN", TOKEN)]);
    let base = format!("http://127.0.0.1:{port}");
    assert!(wait_until(LIMIT, || get(&format!("{base}/ready"), Some(TOKEN)).0 == 200), "{}", p.stderr_so_far());
    let st = common::python_with("schemathesis");
    let st = std::path::Path::new(&st).with_file_name("schemathesis");
    // From the test's directory: Schemathesis keeps a cache where it runs.
    let out = std::process::Command::new(&st)
        .current_dir(dir.path())
        .args(["run", &format!("{base}/openapi.json"), "--max-examples", "10", "--wait-for-schema", "30"])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "Schemathesis found problems:\n{said}\n{}", String::from_utf8_lossy(&out.stderr));
    let summary = said.lines().filter(|l| l.contains("generated") || l.contains("Tested:")).collect::<Vec<_>>();
    eprintln!("openapi: schemathesis {}", summary.join("; ").trim());
    let done = p.terminate(Duration::from_secs(30));
    assert!(!done.stderr.contains(TOKEN) && !done.stdout.contains(TOKEN));
}
