//! A flow's state through real brokers: paused from the CLI while it delivers, still paused
//! after a restart, resumed through the API, and every record delivered once (the oracle);
//! a scheduled and a continuous flow whose destination keeps failing deactivated after their
//! threshold (the continuous one restarted until then), no more runs until resumed, then
//! delivering everything.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::http::{Destination, Mode, Options};
use common::kafka::Kafka;
use common::{counts_of, read_jsonl, run, spawn, wait_until, write};

const LIMIT: Duration = Duration::from_secs(120);

/// POSTs or GETs through Python's own HTTP client: (status, JSON).
fn http(method: &str, url: &str) -> (u16, serde_json::Value) {
    let (status, body) = common::http_request(method, url, None);
    (status, serde_json::from_str(body.trim()).unwrap_or(serde_json::Value::Null))
}

fn a_paused_flow_stops_stays_paused_over_a_restart_and_resumes_losing_nothing(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let flow = kafka.name("pausable");
    let cfg = write(
        dir.path(),
        "c.yaml",
        &format!(
            "kafka: {{{kafka}}}\nconnections:\n  gen: {{type: generate}}\n  out: {{type: file, path: out}}\nflows:\n  - name: {flow}\n    trigger: continuous\n    source: {{connection: gen, object: o, options: {{rate_per_sec: 300, count: 3000}}}}\n    destination: {{connection: out, object: p.jsonl}}\n",
            kafka = kafka.yaml()
        ),
    );
    let file = dir.path().join("out/p.jsonl");
    let delivered = || read_jsonl(&file).0.len();
    let port = common::free_port();
    let api = format!("127.0.0.1:{port}");
    let base = format!("http://{api}/flows/{flow}");
    let p = spawn(&["run", &cfg, "--api", &api], dir.path(), &[]);
    assert!(wait_until(LIMIT, || delivered() >= 300), "{}", p.stderr_so_far());

    let paused = run(&["flows", "pause", &cfg, &flow], dir.path(), &[], LIMIT);
    assert_eq!(paused.code(), Some(0), "{}", paused.stderr);
    assert!(paused.stdout.contains("paused (was active)"), "{}", paused.stdout);
    // Within a poll or two the run finishes its batch and stops; then nothing more arrives.
    std::thread::sleep(Duration::from_secs(6));
    let at_pause = delivered();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(delivered(), at_pause, "a paused flow delivers nothing");
    assert!(at_pause < 3000, "paused before the end ({at_pause})");
    let (status, one) = http("GET", &base);
    assert_eq!((status, one["state"].as_str(), one["status"].as_str()), (200, Some("paused"), Some("paused")), "{one}");
    assert!(one["current_run"].is_null(), "{one}");
    let status_cmd = run(&["status", &cfg], dir.path(), &[], LIMIT);
    assert!(status_cmd.stdout.contains(&format!("flow {flow} is paused")), "{}", status_cmd.stdout);

    // A restart does not resume it: the state is in Kafka.
    let done = p.terminate(Duration::from_secs(30));
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let p = spawn(&["run", &cfg, "--api", &api], dir.path(), &[]);
    assert!(wait_until(LIMIT, || http("GET", &base).0 == 200), "{}", p.stderr_so_far());
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(delivered(), at_pause, "still paused after a restart");
    let metrics = http("GET", &format!("http://{api}/metrics")).0;
    assert_eq!(metrics, 200);

    // Resumed through the API: it goes on from where it stopped.
    let (status, resumed) = http("POST", &format!("{base}/resume"));
    assert_eq!((status, resumed["state"].as_str()), (200, Some("active")), "{resumed}");
    assert!(wait_until(LIMIT, || delivered() >= 3000), "{}", p.stderr_so_far());
    std::thread::sleep(Duration::from_secs(1));
    let counts = counts_of(&read_jsonl(&file).0, "seq");
    let missing: Vec<i64> = (0..3000).filter(|s| !counts.contains_key(s)).collect();
    assert!(missing.is_empty(), "lost {} records: {:?}…", missing.len(), &missing[..missing.len().min(10)]);
    let doubled = counts.values().filter(|n| **n > 1).count();
    assert_eq!(doubled, 0, "stops were graceful: nothing delivered twice");
    let (status, history) = http("GET", &format!("{base}/runs?limit=10"));
    assert_eq!(status, 200);
    let runs = history["runs"].as_array().unwrap();
    assert!(runs.len() >= 2 && runs.iter().any(|r| r["status"] == "stopped"), "{history}");
    assert_eq!(http("GET", &format!("http://{api}/flows/nope")).0, 404);
    let done = p.terminate(Duration::from_secs(30));
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    eprintln!("lifecycle: paused at {at_pause} of 3000, restarted paused, resumed: 3000 delivered once each");
}

fn failing_scheduled_and_continuous_flows_are_deactivated_until_resumed(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let flow = kafka.name("flaky");
    let cont = kafka.name("flakyc");
    let dest = Destination::start(Options { mode: Mode::Error500, ..Options::default() });
    let cfg = write(
        dir.path(),
        "c.yaml",
        &format!(
            r#"
kafka: {{{kafka}}}
connections:
  gen: {{type: generate}}
  hook: {{type: http, url: "{url}", allow_private_addresses: true}}
flows:
  - name: {flow}
    trigger: scheduled
    schedule: {{cron: "*/2 * * * * *"}}
    deactivate_after_failures: 2
    source: {{connection: gen, object: o, options: {{count: 20}}}}
    retry: {{initial_backoff_ms: 100, max_backoff_ms: 100, max_attempts: 2, max_elapsed_secs: 1}}
    destination: {{connection: hook, object: /in}}
  - name: {cont}
    trigger: continuous
    deactivate_after_failures: 2
    source: {{connection: gen, object: c, options: {{count: 20}}}}
    transform: {{sql: "SELECT seq + 1000 AS seq FROM source"}}
    retry: {{initial_backoff_ms: 100, max_backoff_ms: 100, max_attempts: 2, max_elapsed_secs: 1}}
    destination: {{connection: hook, object: /in}}
"#,
            kafka = kafka.yaml(),
            url = dest.url,
        ),
    );
    let p = spawn(&["run", &cfg], dir.path(), &[]);
    let status = || run(&["status", &cfg], dir.path(), &[], LIMIT).stdout;
    assert!(wait_until(LIMIT, || status().contains(&format!("flow {flow} is deactivated"))), "{}", p.stderr_so_far());
    assert!(p.stderr_so_far().contains("deactivated after 2 failed runs in a row"), "{}", p.stderr_so_far());
    let said = status();
    assert!(said.contains("2 failed runs in a row; the last:"), "{said}");
    let runs_now = || {
        let of = |f: &str| run(&["runs", &cfg, f], dir.path(), &[], LIMIT).stdout.lines().count();
        (of(&flow), of(&cont))
    };
    let before = runs_now();
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(runs_now(), before, "a deactivated flow does not run");
    assert!(dest.rows().is_empty());

    dest.set_mode(Mode::Healthy);
    for f in [&flow, &cont] {
        let resumed = run(&["flows", "resume", &cfg, f], dir.path(), &[], LIMIT);
        assert!(resumed.stdout.contains("active (was deactivated)"), "{}", resumed.stdout);
    }
    let all = || {
        let counts = counts_of(&dest.rows(), "seq");
        (0..20).chain(1000..1020).all(|s| counts.contains_key(&s))
    };
    assert!(wait_until(LIMIT, all), "{}", p.stderr_so_far());
    let done = p.terminate(Duration::from_secs(30));
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
}

crate::on_both_brokers!(
    a_paused_flow_stops_stays_paused_over_a_restart_and_resumes_losing_nothing,
    failing_scheduled_and_continuous_flows_are_deactivated_until_resumed,
);
