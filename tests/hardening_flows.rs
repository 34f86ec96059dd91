//! Flows fed careless or hostile input, with real processes: records larger than the cluster
//! takes (from a file and from an API), values that would change on the way, a stop that must
//! end the process within its bound, a query that would run for ever, and runs after an
//! interrupted one (a clean stop, a kill -9) whose ledger balances.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use common::http::serve;
use common::kafka::Kafka;
use common::oracle::{balanced, status_of};
use common::{read_jsonl, run, spawn, wait_until, write};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(240);

/// A record of `bytes` bytes or so, with id `id`.
fn big(id: i64, bytes: usize) -> Value {
    json!({"id": id, "pad": "x".repeat(bytes)})
}

fn records_over_the_limit_from_a_file_and_an_api_go_to_the_dlq_and_the_flow_goes_on(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("in");
    std::fs::create_dir_all(&data).unwrap();
    // 150 small records with two large ones between them: 1.1 MB and 20 MB.
    let mut lines = Vec::new();
    for id in 0..150i64 {
        if id == 50 {
            lines.push(big(1000, 1_100_000).to_string());
        }
        if id == 100 {
            lines.push(big(1001, 20_000_000).to_string());
        }
        lines.push(json!({"id": id, "pad": "small"}).to_string());
    }
    std::fs::write(data.join("records.jsonl"), lines.join("\n")).unwrap();
    // The same from an API, in one page.
    let page: Vec<Value> = (0..150i64)
        .flat_map(|id| match id {
            50 => vec![big(2000, 1_100_000), json!({"id": id, "pad": "small"})],
            100 => vec![big(2001, 20_000_000), json!({"id": id, "pad": "small"})],
            _ => vec![json!({"id": id, "pad": "small"})],
        })
        .collect();
    let body = json!({"records": page}).to_string();
    let (api, _rt) = serve(Router::new().route("/records", get(move || async move { body.clone() })));
    let cfg = write(
        dir.path(),
        "flows.yaml",
        &format!(
            r#"
kafka: {{{kafka}}}
connections:
  files: {{type: file, path: {data}}}
  api: {{type: http, url: "{api}", allow_private_addresses: true}}
  out: {{type: file, path: {out}}}
flows:
  - name: from_file
    source: {{connection: files, object: records.jsonl, options: {{key: [id]}}, schema: {{id: int64, pad: string}}}}
    transform: {{sql: "SELECT id FROM source"}}
    destination: {{connection: out, object: file.jsonl}}
  - name: from_api
    source: {{connection: api, object: /records, options: {{records: /records, key: [id]}}, schema: {{id: int64, pad: string}}}}
    transform: {{sql: "SELECT id FROM source"}}
    destination: {{connection: out, object: api.jsonl}}
"#,
            kafka = kafka.yaml(),
            data = data.display(),
            out = dir.path().join("out").display(),
        ),
    );
    let done = run(&["run", &cfg], dir.path(), &[], LIMIT);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    for (flow, file, ids) in [("from_file", "file.jsonl", (1000, 1001)), ("from_api", "api.jsonl", (2000, 2001))] {
        let (rows, _) = read_jsonl(&dir.path().join("out").join(file));
        let got: BTreeSet<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
        assert_eq!(got, (0..150).collect::<BTreeSet<i64>>(), "{flow}: every small record, and nothing else");
        assert_eq!(rows.len(), 150, "{flow}");
        let dlq = kafka.read_topic(&kafka.topic(&format!("{flow}.dlq")));
        assert_eq!(dlq.len(), 2, "{flow}: the two large records are dead-lettered");
        let mut sizes = Vec::new();
        for m in &dlq {
            assert_eq!(m.headers.get("sluice.truncated").map(String::as_str), Some("true"), "{flow}");
            assert!(
                m.headers["sluice.error"].contains("over the 975424-byte limit (kafka.max_record_bytes)"),
                "{:?}",
                m.headers
            );
            assert_eq!(m.headers["sluice.stage"], "source");
            assert!(m.payload.len() <= 64 * 1024, "{flow}: cut to fit");
            sizes.push(m.headers["sluice.original_bytes"].parse::<usize>().unwrap());
            let source: Value = serde_json::from_str(&m.headers["sluice.source"]).unwrap();
            if flow == "from_file" {
                assert!(source["line"].as_u64().is_some(), "{source}");
            } else {
                assert_eq!(source["connector"], "http");
            }
        }
        sizes.sort_unstable();
        assert!(sizes[0] > 1_100_000 && sizes[0] < 1_200_000, "{sizes:?}");
        assert!(sizes[1] > 20_000_000, "{sizes:?}");
        let keys: BTreeSet<String> = dlq.iter().filter_map(|m| m.key.clone()).collect();
        assert_eq!(
            keys,
            BTreeSet::from([json!({"id": ids.0}).to_string(), json!({"id": ids.1}).to_string()]),
            "{flow}"
        );
    }
    // A dead letter cut to fit is not replayed as if it were the record: it says so.
    let replay = run(&["dlq", "replay", &cfg, "from_file"], dir.path(), &[], LIMIT);
    assert_eq!(replay.code(), Some(0), "{}", replay.stderr);
    let dlq = kafka.read_topic(&kafka.topic("from_file.dlq"));
    assert_eq!(dlq.len(), 4, "both letters back, once each");
    let refused = dlq.iter().filter(|m| m.headers["sluice.error"].contains("cut to fit the DLQ")).count();
    assert_eq!(refused, 2, "{:?}", dlq.iter().map(|m| m.headers["sluice.error"].clone()).collect::<Vec<_>>());
    assert_eq!(read_jsonl(&dir.path().join("out/file.jsonl")).0.len(), 150, "nothing replayed into the output");
    eprintln!("oversized records: 2 per source dead-lettered, 150 delivered each");
}

fn values_arrive_as_written_or_are_refused_with_the_reason(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("in");
    std::fs::create_dir_all(&data).unwrap();
    // A byte-order mark before the first line; a fraction in an integer column; a number too
    // large for any float; a field named twice; whole numbers written with a point or an
    // exponent.
    let text = "\u{feff}{\"id\": 1, \"n\": 5}\n\
                {\"id\": 2, \"n\": 17.9}\n\
                {\"id\": 3, \"n\": 99999999999999999999}\n\
                {\"id\": 4, \"n\": 1, \"id\": 44}\n\
                {\"id\": 5, \"n\": 17.0}\n\
                {\"id\": 6, \"n\": 1e2, \"x\": 0.10}\n";
    std::fs::write(data.join("v.jsonl"), text).unwrap();
    let cfg = write(
        dir.path(),
        "flows.yaml",
        &format!(
            r#"
kafka: {{{kafka}}}
connections:
  files: {{type: file, path: {data}}}
  out: {{type: file, path: {out}}}
flows:
  - name: values
    source: {{connection: files, object: v.jsonl, schema: {{id: int64, n: int64, x: float64}}}}
    transform: {{sql: "SELECT id, n FROM source"}}
    destination: {{connection: out, object: v.jsonl}}
"#,
            kafka = kafka.yaml(),
            data = data.display(),
            out = dir.path().join("out").display(),
        ),
    );
    let done = run(&["run", &cfg], dir.path(), &[], LIMIT);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let (rows, _) = read_jsonl(&dir.path().join("out/v.jsonl"));
    let got: BTreeMap<i64, i64> = rows.iter().map(|r| (r["id"].as_i64().unwrap(), r["n"].as_i64().unwrap())).collect();
    assert_eq!(got, BTreeMap::from([(1, 5), (5, 17), (6, 100)]), "the BOM is skipped; whole numbers pass");
    let dlq = kafka.read_topic(&kafka.topic("values.dlq"));
    let reason = |needle: &str| {
        dlq.iter()
            .find(|m| String::from_utf8_lossy(&m.payload).contains(needle))
            .map(|m| m.headers["sluice.error"].clone())
            .unwrap_or_else(|| panic!("no dead letter holding {needle}"))
    };
    assert!(reason("17.9").contains("column `n`: 17.9 is not a whole number"), "{}", reason("17.9"));
    // The envelope carries the number as written, so its dead letter shows it as written.
    assert!(reason("99999999999999999999").contains("decode:"), "{}", reason("99999999999999999999"));
    assert!(reason("\"id\": 44").contains("duplicate key `id`"), "{}", reason("\"id\": 44"));
    assert_eq!(dlq.len(), 3);
}

#[test]
fn a_batch_over_its_time_limit_fails_the_flow_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "slow.yaml",
        r#"
kafka: {embedded: {data_dir: .sluice/data}}
connections:
  gen: {type: generate}
  out: {type: stdout}
flows:
  - name: slow
    source: {connection: gen, object: o, options: {count: 3000}}
    transform:
      sql: SELECT count(*) AS n FROM source a, source b, source c, source d
      batch_timeout_secs: 2
    batch: {linger_ms: 1000}
    destination: {connection: out, object: x}
"#,
    );
    let started = Instant::now();
    let done = run(&["run", &cfg], dir.path(), &[], LIMIT);
    assert_eq!(done.code(), Some(1), "{}", done.stderr);
    assert!(done.stderr.contains("took longer than 2 s over one batch"), "{}", done.stderr);
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
}

fn a_stop_request_ends_the_process_within_its_bound_even_when_a_write_hangs(kafka: &mut Kafka) {
    use common::http::{Destination, Mode, Options};
    let dir = tempfile::tempdir().unwrap();
    let dest = Destination::start(Options { mode: Mode::Hang, hang: Duration::from_secs(600), ..Options::default() });
    let cfg = write(
        dir.path(),
        "hang.yaml",
        &format!(
            r#"
kafka: {{{kafka}}}
connections:
  gen: {{type: generate}}
  hook: {{type: http, url: "{url}", allow_private_addresses: true, timeout_secs: 600}}
flows:
  - name: hang
    trigger: continuous
    source: {{connection: gen, object: o, options: {{count: 100}}}}
    destination: {{connection: hook, object: /ingest}}
"#,
            kafka = kafka.yaml(),
            url = dest.url,
        ),
    );
    let p = spawn(&["run", &cfg], dir.path(), &[("SLUICE_STOP_TIMEOUT_SECS", "3")]);
    assert!(wait_until(Duration::from_secs(60), || dest.requests() > 0), "{}", p.stderr_so_far());
    let asked = Instant::now();
    let done = p.terminate(Duration::from_secs(30));
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(10), "the stop took {took:?}");
    assert_eq!(done.code(), Some(1), "{}", done.stderr);
    assert!(done.stderr.contains("did not stop within 3 s"), "{}", done.stderr);
}

fn a_run_after_an_interrupted_one_goes_on_with_it_and_every_ledger_balances(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let count = 200_000u64;
    let cfg = write(
        dir.path(),
        "pull.yaml",
        &format!(
            r#"
kafka: {{{kafka}}}
connections:
  gen: {{type: generate}}
  out: {{type: file, path: {out}}}
flows:
  - name: pull
    source: {{connection: gen, object: o, options: {{count: {count}, rate_per_sec: 10000, keys: 1000}}}}
    destination: {{connection: out, object: pull.jsonl}}
"#,
            kafka = kafka.yaml(),
            out = out.display(),
        ),
    );
    let file = out.join("pull.jsonl");
    let seqs = || -> Vec<i64> { read_jsonl(&file).0.iter().map(|r| r["seq"].as_i64().unwrap()).collect() };
    // 1. A clean stop in the middle; the next run finishes the pull with no duplicate.
    let p = spawn(&["run", &cfg], dir.path(), &[]);
    assert!(wait_until(Duration::from_secs(90), || seqs().len() >= 30_000), "{}", p.stderr_so_far());
    let stopped = p.terminate(Duration::from_secs(60));
    assert_eq!(stopped.code(), Some(0), "{}", stopped.stderr);
    let status = status_of(&cfg, dir.path(), "pull");
    assert!(status.contains("stopped"), "{status}");
    balanced(&status);
    let done = run(&["run", &cfg], dir.path(), &[], LIMIT);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let all = seqs();
    let distinct: BTreeSet<i64> = all.iter().copied().collect();
    assert_eq!(distinct.len() as u64, count, "every record delivered");
    assert_eq!(all.len() as u64, count, "a clean stop re-delivers nothing: {} duplicates", all.len() as u64 - count);
    let status = status_of(&cfg, dir.path(), "pull");
    assert!(status.contains("succeeded") && status.contains("resumed run"), "{status}");
    let n = balanced(&status);
    assert_eq!(n[5], 0, "nothing in flight after a finished run: {status}");

    // 2. A kill -9 in the middle: the run is seen as interrupted, and the next one finishes it;
    //    duplicates stay within what was in flight.
    std::fs::remove_file(&file).unwrap();
    let p = spawn(&["run", &cfg], dir.path(), &[]);
    assert!(wait_until(Duration::from_secs(90), || seqs().len() >= 30_000), "{}", p.stderr_so_far());
    // Another on-demand run of the same flow is refused while this one is live.
    let second = run(&["run", &cfg], dir.path(), &[], LIMIT);
    assert_eq!(second.code(), Some(1), "{}", second.stderr);
    assert!(second.stderr.contains("is already running"), "{}", second.stderr);
    std::thread::sleep(Duration::from_secs(6));
    p.kill9();
    let status = status_of(&cfg, dir.path(), "pull");
    assert!(status.contains("interrupted"), "{status}");
    balanced(&status);
    let done = run(&["run", &cfg], dir.path(), &[], LIMIT);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let all = seqs();
    let distinct: BTreeSet<i64> = all.iter().copied().collect();
    assert_eq!(distinct.len() as u64, count, "every record delivered after the kill");
    let dups = all.len() as u64 - count;
    assert!(dups <= 20_000, "{dups} duplicates: more than the in-flight window");
    let n = balanced(&status_of(&cfg, dir.path(), "pull"));
    assert_eq!(n[5], 0, "nothing in flight after the resumed run");
    eprintln!("FAULT kill -9 mid pull: sent {count}, lost 0, duplicated {dups}; SIGTERM mid pull: duplicated 0");
}

crate::on_both_brokers!(
    a_stop_request_ends_the_process_within_its_bound_even_when_a_write_hangs,
    records_over_the_limit_from_a_file_and_an_api_go_to_the_dlq_and_the_flow_goes_on,
    values_arrive_as_written_or_are_refused_with_the_reason,
    a_run_after_an_interrupted_one_goes_on_with_it_and_every_ledger_balances,
);
