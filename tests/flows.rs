//! End-to-end flows against a `sluice broker` child process: every hop real (source → Kafka
//! topic → DataFusion → sink), every record checked by an oracle.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::kafka::Kafka;
use common::{counts_of, read_jsonl, run, spawn, wait_until, write};
use serde_json::{Value, json};
use sluice_connectors::generate::{GenerateOptions, GenerateSource};

const LIMIT: Duration = Duration::from_secs(180);

/// The rows `generate` makes for `count` records with these settings, as the oracle sees them.
fn generated(count: u64, keys: u64, seed: u64) -> Vec<Value> {
    let mut g = GenerateSource::new("orders", GenerateOptions { count: Some(count), rate_per_sec: 0, keys, seed })
        .expect("building oracle generator");
    (0..count).map(|n| Value::Object(g.record(n).after.expect("generated rows have `after`"))).collect()
}

fn on_demand_flow_delivers_exactly_the_generated_records(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let (count, keys, seed) = (20_000u64, 500u64, 11u64);
    let cfg = write(
        dir.path(),
        "flow.yaml",
        &format!(
            r#"
kafka: {{{kafka}, partitions: 3}}
connections:
  gen: {{type: generate}}
  out: {{type: file, path: {out}}}
flows:
  - name: exact
    source: {{connection: gen, object: orders, options: {{count: {count}, keys: {keys}, seed: {seed}}}}}
    transform:
      sql: SELECT seq, id, upper(name) AS name, amount, _op AS op FROM source WHERE amount >= 300
    destination: {{connection: out, object: exact.jsonl}}
"#,
            kafka = kafka.yaml(),
            out = dir.path().join("out").display(),
        ),
    );
    let done = run(&["run", &cfg], dir.path(), &[], LIMIT);
    assert_eq!(done.code(), Some(0), "stderr:\n{}", done.stderr);

    // Oracle: exactly the generated records that pass the filter, each once, shaped by the SQL.
    let all = generated(count, keys, seed);
    let expected: Vec<&Value> = all.iter().filter(|r| r["amount"].as_i64().unwrap() >= 300).collect();
    let (rows, torn) = read_jsonl(&dir.path().join("out/exact.jsonl"));
    assert_eq!(torn, 0);
    let seen = counts_of(&rows, "seq");
    assert_eq!(rows.len(), expected.len(), "delivered {} rows, expected {}", rows.len(), expected.len());
    assert!(seen.values().all(|n| *n == 1), "a record was delivered twice");
    let by_seq: std::collections::HashMap<i64, &Value> = rows.iter().map(|r| (r["seq"].as_i64().unwrap(), r)).collect();
    for e in expected {
        let seq = e["seq"].as_i64().unwrap();
        let got = by_seq.get(&seq).unwrap_or_else(|| panic!("seq {seq} missing"));
        let name = e["name"].as_str().unwrap().to_uppercase();
        let op = if e["version"].as_i64().unwrap() == 0 { "c" } else { "u" };
        assert_eq!(**got, json!({"seq": seq, "id": e["id"], "name": name, "amount": e["amount"], "op": op}));
    }
    // The summary accounts for every record read.
    assert!(done.stdout.contains(&format!("read {count},")), "{}", done.stdout);
    assert!(done.stdout.contains(&format!("filtered {}", count as usize - rows.len())), "{}", done.stdout);

    // `sluice status` shows the run, and its counts balance.
    let status = run(&["status", &cfg], dir.path(), &[], LIMIT);
    assert_eq!(status.code(), Some(0), "{}", status.stderr);
    let expect = format!(
        "read {count} = delivered {} + filtered {} + dlq 0 + dropped 0 + in flight 0",
        rows.len(),
        count as usize - rows.len()
    );
    assert!(status.stdout.contains("flow exact: succeeded") && status.stdout.contains(&expect), "{}", status.stdout);

    // The changes topic carries Debezium envelopes keyed by id.
    let msgs = kafka.read_topic(&kafka.topic("exact.changes"));
    assert_eq!(msgs.len(), count as usize);
    let m = &msgs[0];
    let env: Value = serde_json::from_slice(&m.payload).unwrap();
    for field in ["before", "after", "op", "source", "ts_ms"] {
        assert!(env.get(field).is_some(), "envelope without `{field}`: {env}");
    }
    assert_eq!(m.key.as_deref(), Some(format!("{{\"id\":{}}}", env["after"]["id"]).as_str()));
    assert_eq!(env["source"]["connector"], "generate");
    assert!(env["after"].get("connector").is_none(), "metadata leaked into `after`");
}

fn continuous_flow_killed_and_restarted_loses_nothing(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let count = 30_000u64;
    let out = dir.path().join("out");
    let cfg = write(
        dir.path(),
        "flow.yaml",
        &format!(
            r#"
kafka: {{{kafka}}}
connections:
  gen: {{type: generate}}
  out: {{type: file, path: {out}}}
flows:
  - name: forever
    trigger: continuous
    source: {{connection: gen, object: orders, options: {{count: {count}, rate_per_sec: 6000, keys: 100}}}}
    transform:
      sql: SELECT seq, id, version FROM source
    destination: {{connection: out, object: forever.jsonl}}
"#,
            kafka = kafka.yaml(),
            out = out.display(),
        ),
    );
    let file = out.join("forever.jsonl");
    let delivered = |f: &Path| read_jsonl(f).0.len();
    let mut kills = 0;
    let mut torn_total = 0;
    // Kill it three times at growing progress, mid-stream; each restart resumes.
    for threshold in [4_000usize, 12_000, 20_000] {
        let p = spawn(&["run", &cfg], dir.path(), &[]);
        assert!(
            wait_until(Duration::from_secs(90), || delivered(&file) >= threshold),
            "no progress to {threshold} rows; stderr:\n{}",
            p.stderr_so_far()
        );
        p.kill9();
        kills += 1;
        torn_total += read_jsonl(&file).1;
    }
    let p = spawn(&["run", &cfg], dir.path(), &[]);
    let all_there = |f: &Path| {
        let (rows, _) = read_jsonl(f);
        counts_of(&rows, "seq").len() == count as usize
    };
    let ok = wait_until(Duration::from_secs(120), || all_there(&file));
    let stderr = p.stderr_so_far();
    let done = p.terminate(Duration::from_secs(30));
    assert!(ok, "not every record arrived; stderr:\n{stderr}");
    assert_eq!(done.code(), Some(0), "SIGTERM should drain and exit 0; stderr:\n{}", done.stderr);

    // Oracle: every generated seq at least once; per key, versions in order once duplicates go.
    let (rows, torn) = read_jsonl(&file);
    assert!(torn <= kills && torn_total <= kills * kills, "torn lines: {torn}");
    let seqs = counts_of(&rows, "seq");
    let missing: Vec<u64> = (0..count).filter(|s| !seqs.contains_key(&(*s as i64))).collect();
    assert!(missing.is_empty(), "lost {} records, e.g. {:?}", missing.len(), &missing[..missing.len().min(10)]);
    let dups = rows.len() - seqs.len();
    assert!(dups <= kills * 5000, "more duplicates ({dups}) than one in-flight batch per kill");
    eprintln!(
        "FAULT worker SIGKILL x{kills}: sent {count}, lost 0, duplicated {dups}, dlq 0 ({} delivered)",
        rows.len()
    );
    let mut last: std::collections::HashMap<i64, i64> = std::collections::HashMap::new();
    let mut seen = BTreeSet::new();
    for r in &rows {
        let (seq, id, version) =
            (r["seq"].as_i64().unwrap(), r["id"].as_i64().unwrap(), r["version"].as_i64().unwrap());
        if !seen.insert(seq) {
            continue;
        }
        if let Some(prev) = last.insert(id, version) {
            assert!(version > prev, "key {id}: version {version} after {prev}");
        }
    }
}

fn malformed_file_lines_go_to_the_dlq_with_their_line_and_the_flow_goes_on(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("in");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("people.jsonl"),
        "{\"id\":1,\"name\":\"ada\",\"age\":36}\n{\"id\":2,\"name\":\"grace\",\"age\":85}\n{\"id\":3,\"name\":oops}\n{\"id\":4,\"name\":\"alan\",\"age\":\"forty-one\"}\n{\"id\":5,\"name\":\"edsger\",\"age\":72}\n",
    )
    .unwrap();
    let cfg = write(
        dir.path(),
        "flow.yaml",
        &format!(
            r#"
kafka: {{{kafka}}}
connections:
  files: {{type: file, path: {root}}}
flows:
  - name: people
    source:
      connection: files
      object: in/people.jsonl
      options: {{key: [id]}}
      schema: {{id: int64, name: string, age: int64}}
    transform:
      sql: SELECT id, name FROM source WHERE age > 40
    destination: {{connection: files, object: out/people.jsonl}}
"#,
            kafka = kafka.yaml(),
            root = dir.path().display(),
        ),
    );
    let done = run(&["run", &cfg], dir.path(), &[], LIMIT);
    assert_eq!(done.code(), Some(0), "stderr:\n{}", done.stderr);
    let (rows, _) = read_jsonl(&dir.path().join("out/people.jsonl"));
    let ids: BTreeSet<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, BTreeSet::from([2, 5]));

    // Line 3 is not JSON (refused by the source); line 4 does not fit the schema (refused by
    // the SQL stage's decoder). Both are in the DLQ with the reason; nothing else is.
    let dlq = kafka.read_topic(&kafka.topic("people.dlq"));
    assert_eq!(dlq.len(), 2, "{dlq:#?}");
    let decode = dlq
        .iter()
        .find(|m| m.headers.get("sluice.error").is_some_and(|e| e.contains("line 3")))
        .expect("line 3 in the DLQ");
    assert_eq!(decode.payload, b"{\"id\":3,\"name\":oops}");
    assert_eq!(decode.headers["sluice.stage"], "decode");
    assert_eq!(decode.headers["sluice.flow"], "people");
    let schema = dlq
        .iter()
        .find(|m| m.headers.get("sluice.stage").is_some_and(|s| s == "sql"))
        .expect("schema misfit in the DLQ");
    assert!(String::from_utf8_lossy(&schema.payload).contains("forty-one"));
    assert!(schema.headers.contains_key("sluice.offset") && schema.headers.contains_key("sluice.partition"));
    assert!(done.stdout.contains("to DLQ 2"), "{}", done.stdout);

    // `sluice dlq show` tells the user what happened to each.
    let shown = run(&["dlq", "show", &cfg, "people"], dir.path(), &[], LIMIT);
    assert_eq!(shown.code(), Some(0), "{}", shown.stderr);
    let out = &shown.stdout;
    assert!(out.contains(&format!("{}: 2 dead letters", kafka.topic("people.dlq"))), "{out}");
    assert!(out.contains("stage decode") && out.contains("line 3: invalid JSON"), "{out}");
    assert!(
        out.contains("stage sql") && out.contains(&format!("from:    {} partition", kafka.topic("people.changes"))),
        "{out}"
    );
    assert!(out.contains("forty-one"), "{out}");
}

fn kafka_topic_in_sql_kafka_topic_out(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let n = 5_000i64;
    let msgs: Vec<(Option<String>, Vec<u8>)> = (0..n)
        .map(|i| {
            (
                Some(format!("{{\"id\":{i}}}")),
                format!("{{\"id\":{i},\"amount\":{},\"name\":\"n{i}\"}}", i % 1000).into_bytes(),
            )
        })
        .collect();
    let (input, output) = (kafka.name("payments"), kafka.name("big-payments"));
    kafka.produce(&input, 2, &msgs);
    let cfg = write(
        dir.path(),
        "flow.yaml",
        &format!(
            r#"
kafka: {{{kafka}}}
connections:
  bus: {{type: kafka}}
flows:
  - name: big-payments
    source:
      connection: bus
      object: {input}
      options: {{format: json}}
      schema: {{id: int64, amount: int64, name: string}}
    transform:
      sql: SELECT id, amount * 2 AS doubled, _key FROM source WHERE amount > 500
    destination: {{connection: bus, object: {output}}}
"#,
            kafka = kafka.yaml(),
        ),
    );
    let done = run(&["run", &cfg], dir.path(), &[], LIMIT);
    assert_eq!(done.code(), Some(0), "stderr:\n{}", done.stderr);
    let out = kafka.read_topic(&output);
    let expected: BTreeSet<i64> = (0..n).filter(|i| i % 1000 > 500).collect();
    let mut got = BTreeSet::new();
    for m in &out {
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        let id = v["id"].as_i64().unwrap();
        assert_eq!(v["doubled"].as_i64().unwrap(), (id % 1000) * 2);
        assert!(v.get("_key").is_none(), "`_key` becomes the message key, not a field");
        assert_eq!(m.key.as_deref(), Some(format!("{{\"id\":{id}}}").as_str()));
        assert!(got.insert(id), "id {id} twice");
    }
    assert_eq!(got, expected);
    // No copy of the input topic was made.
    assert!(kafka.read_topic(&kafka.topic("big-payments.changes")).is_empty());
}

fn error_policies_drop_or_stop_on_bad_records(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.jsonl"), "{\"id\":1}\n{\"id\":2}\nnot json\n{\"id\":\"three\"}\n{\"id\":5}\n")
        .unwrap();
    let config = |flow: &str, errors: &str| {
        write(
            dir.path(),
            &format!("{flow}.yaml"),
            &format!(
                r#"
kafka: {{{kafka}}}
connections:
  files: {{type: file, path: {root}}}
flows:
  - name: {flow}
    source: {{connection: files, object: in.jsonl, schema: {{id: int64}}}}
    destination: {{connection: files, object: {flow}.out.jsonl}}
    errors: {errors}
"#,
                kafka = kafka.yaml(),
                root = dir.path().display(),
            ),
        )
    };
    // drop: both bad records are counted and gone; the good ones arrive.
    let done = run(&["run", &config("dropper", "{policy: drop}")], dir.path(), &[], LIMIT);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    assert!(done.stdout.contains("to DLQ 0") && done.stdout.contains("dropped 2"), "{}", done.stdout);
    let ids: BTreeSet<i64> =
        read_jsonl(&dir.path().join("dropper.out.jsonl")).0.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, BTreeSet::from([1, 2, 5]));
    assert!(kafka.read_topic(&kafka.topic("dropper.dlq")).is_empty());

    // fail: the first bad record stops the flow with its reason and exit code 1.
    let strict = config("strict", "{policy: fail}");
    let done = run(&["run", &strict], dir.path(), &[], LIMIT);
    assert_eq!(done.code(), Some(1), "{}", done.stderr);
    assert!(done.stderr.contains("stopped by a bad record") && done.stderr.contains("line 3"), "{}", done.stderr);
    let status = run(&["status", &strict], dir.path(), &[], LIMIT);
    assert!(
        status.stdout.contains("flow strict: failed")
            && status.stdout.contains("error: ")
            && status.stdout.contains("line 3"),
        "{}",
        status.stdout
    );

    // A threshold: more than one bad record per minute stops the flow, naming the limit.
    let done = run(&["run", &config("limited", "{max_errors: 1, window_secs: 60}")], dir.path(), &[], LIMIT);
    assert_eq!(done.code(), Some(1), "{}", done.stderr);
    assert!(done.stderr.contains("exceed errors.max_errors = 1"), "{}", done.stderr);
}

fn a_scheduled_flow_runs_at_each_time_of_its_cron_schedule(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cfg = write(
        dir.path(),
        "sched.yaml",
        &format!(
            r#"
kafka: {{{kafka}}}
connections:
  gen: {{type: generate}}
  out: {{type: file, path: {out}}}
flows:
  - name: sched
    trigger: scheduled
    schedule: {{cron: "*/3 * * * * *", timezone: Europe/Paris}}
    source: {{connection: gen, object: orders, options: {{count: 100, keys: 10}}}}
    destination: {{connection: out, object: sched.jsonl}}
"#,
            kafka = kafka.yaml(),
            out = out.display(),
        ),
    );
    let p = spawn(&["run", &cfg], dir.path(), &[]);
    let file = out.join("sched.jsonl");
    assert!(wait_until(Duration::from_secs(60), || read_jsonl(&file).0.len() >= 200), "{}", p.stderr_so_far());
    let done = p.terminate(Duration::from_secs(30));
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let runs = done.stdout.lines().filter(|l| l.starts_with("flow sched: read 100,")).count();
    assert!(runs >= 2, "two scheduled runs, each summarised:\n{}", done.stdout);
    assert_eq!(read_jsonl(&file).0.len(), 100 * runs, "each run pulled the source once");

    // A schedule that does not parse is a config error with its line.
    let bad =
        write(dir.path(), "bad.yaml", &std::fs::read_to_string(&cfg).unwrap().replace("*/3 * * * * *", "every minute"));
    let v = run(&["validate", &bad], dir.path(), &[], LIMIT);
    assert_eq!(v.code(), Some(2), "{}", v.stderr);
    assert!(v.stderr.contains("bad.yaml:9:") && v.stderr.contains("schedule.cron"), "{}", v.stderr);
}

/// Every run is kept: `sluice runs` lists a flow's runs newest first with their counts, and
/// `status` still shows the latest.
fn each_run_is_kept_in_the_history(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let flow = kafka.name("history");
    let cfg = write(
        dir.path(),
        "c.yaml",
        &format!(
            "kafka: {{{kafka}}}\nconnections:\n  gen: {{type: generate}}\n  out: {{type: file, path: out}}\nflows:\n  - name: {flow}\n    source: {{connection: gen, object: o, options: {{count: 40}}}}\n    transform: {{sql: \"SELECT * FROM source WHERE seq % 4 <> 0\"}}\n    destination: {{connection: out, object: h.jsonl}}\n",
            kafka = kafka.yaml()
        ),
    );
    for _ in 0..3 {
        let done = run(&["run", &cfg], dir.path(), &[], LIMIT);
        assert_eq!(done.code(), Some(0), "{}", done.stderr);
    }
    let table = run(&["runs", &cfg, &flow], dir.path(), &[], LIMIT);
    assert_eq!(table.code(), Some(0), "{}", table.stderr);
    let lines: Vec<&str> = table.stdout.lines().filter(|l| !l.starts_with("  position ")).collect();
    assert!(lines[0].starts_with("RUN") && lines[0].contains("BYTES OUT"), "{}", table.stdout);
    assert_eq!(lines.len(), 4, "a header and three runs: {}", table.stdout);
    // Each full pull starts at the start of the source and ends where the generator stopped.
    let windows: Vec<&str> = table.stdout.lines().filter(|l| l.starts_with("  position ")).collect();
    assert_eq!(windows.len(), 3, "{}", table.stdout);
    assert!(windows.iter().all(|w| w.starts_with("  position \"start of source\" -> ")), "{}", table.stdout);
    for line in &lines[1..] {
        let cells: Vec<&str> = line.split_whitespace().collect();
        // run, status, trigger, date, time, took ("0.4 s" is two words), read, delivered,
        // filtered, dlq, dropped
        assert_eq!((cells[1], cells[2]), ("succeeded", "on_demand"), "{line}");
        assert_eq!(&cells[7..12], ["40", "30", "10", "0", "0"], "{line}");
    }
    let ids: Vec<&str> = lines[1..].iter().map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 3, "three runs, each once");
    let newest = run(&["runs", &cfg, &flow, "--limit", "1"], dir.path(), &[], LIMIT);
    assert_eq!(newest.stdout.lines().nth(1).unwrap().split_whitespace().next(), Some(ids[0]));
    assert_eq!(newest.stdout.lines().filter(|l| !l.starts_with("  position ")).count(), 2);
    let status = run(&["status", &cfg], dir.path(), &[], LIMIT);
    assert!(status.stdout.contains(&format!("flow {flow}: succeeded · run {}", ids[0])), "{}", status.stdout);
    let none = run(&["runs", &cfg, "nope"], dir.path(), &[], LIMIT);
    assert_eq!(none.code(), Some(2));
}

/// `sluice tap` prints a running flow's records live — what its SQL reads, and what it gives
/// the destination — and the flow, whose consumer group it leaves alone, delivers every record.
fn tap_prints_records_live_without_touching_the_flow(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let flow = kafka.name("tapped");
    let cfg = write(
        dir.path(),
        "c.yaml",
        &format!(
            "kafka: {{{kafka}}}\nconnections:\n  gen: {{type: generate}}\n  out: {{type: file, path: out}}\nflows:\n  - name: {flow}\n    trigger: continuous\n    source: {{connection: gen, object: o, options: {{rate_per_sec: 200, count: 3000}}}}\n    transform: {{sql: \"SELECT id, seq, upper(name) AS shout FROM source WHERE seq % 2 = 0\"}}\n    destination: {{connection: out, object: t.jsonl}}\n",
            kafka = kafka.yaml()
        ),
    );
    let file = dir.path().join("out/t.jsonl");
    let p = spawn(&["run", &cfg], dir.path(), &[]);
    assert!(wait_until(LIMIT, || read_jsonl(&file).0.len() > 20), "{}", p.stderr_so_far());
    let source = run(&["tap", &cfg, &flow, "--limit", "5"], dir.path(), &[], LIMIT);
    assert_eq!(source.code(), Some(0), "{}", source.stderr);
    let lines: Vec<Value> = source.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 5, "{}", source.stdout);
    for l in &lines {
        assert_eq!(l["value"]["op"], "c", "the change envelope as published: {l}");
        assert!(l["value"]["after"]["name"].is_string() && l["offset"].is_i64(), "{l}");
    }
    let output = run(&["tap", &cfg, &flow, "--stage", "output", "--limit", "5"], dir.path(), &[], LIMIT);
    assert_eq!(output.code(), Some(0), "{}", output.stderr);
    let rows: Vec<Value> = output.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 5, "{}", output.stdout);
    for r in &rows {
        let keys: BTreeSet<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, BTreeSet::from(["id", "seq", "shout"]), "{r}");
        assert_eq!(r["seq"].as_i64().unwrap() % 2, 0, "the flow's filter: {r}");
        assert_eq!(r["shout"].as_str().unwrap().to_uppercase(), r["shout"].as_str().unwrap());
    }
    // The flow goes on and delivers every record once: the taps took nothing from its group.
    assert!(wait_until(LIMIT, || read_jsonl(&file).0.len() >= 1500), "{}", p.stderr_so_far());
    let done = p.terminate(Duration::from_secs(30));
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let seqs: Vec<i64> = read_jsonl(&file).0.iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs.iter().collect::<BTreeSet<_>>().len(), 1500, "each kept record once");
    assert_eq!(seqs.len(), 1500);
}

/// `sluice tap --stage dlq` prints dead letters as they are written, with their reasons.
fn tap_prints_dead_letters_with_their_reasons(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let flow = kafka.name("tapdlq");
    let cfg = write(
        dir.path(),
        "c.yaml",
        &format!(
            "kafka: {{{kafka}}}\nconnections:\n  gen: {{type: generate}}\n  out: {{type: file, path: out}}\nflows:\n  - name: {flow}\n    trigger: continuous\n    source: {{connection: gen, object: o, options: {{rate_per_sec: 300, count: 6000}}}}\n    transform: {{sql: \"SELECT id, seq, 100 / (seq % 50) AS r FROM source\"}}\n    destination: {{connection: out, object: d.jsonl}}\n",
            kafka = kafka.yaml()
        ),
    );
    let p = spawn(&["run", &cfg], dir.path(), &[]);
    let file = dir.path().join("out/d.jsonl");
    assert!(wait_until(LIMIT, || read_jsonl(&file).0.len() > 20), "{}", p.stderr_so_far());
    let tapped = run(&["tap", &cfg, &flow, "--stage", "dlq", "--limit", "3"], dir.path(), &[], LIMIT);
    assert_eq!(tapped.code(), Some(0), "{}", tapped.stderr);
    let lines: Vec<Value> = tapped.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{}", tapped.stdout);
    for l in &lines {
        assert!(l["headers"]["sluice.error"].as_str().unwrap().to_lowercase().contains("divide by zero"), "{l}");
        assert_eq!(l["value"]["after"]["seq"].as_i64().unwrap() % 50, 0, "the record that failed: {l}");
    }
    let done = p.terminate(Duration::from_secs(30));
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
}

crate::on_both_brokers!(
    tap_prints_dead_letters_with_their_reasons,
    tap_prints_records_live_without_touching_the_flow,
    each_run_is_kept_in_the_history,
    on_demand_flow_delivers_exactly_the_generated_records,
    continuous_flow_killed_and_restarted_loses_nothing,
    malformed_file_lines_go_to_the_dlq_with_their_line_and_the_flow_goes_on,
    kafka_topic_in_sql_kafka_topic_out,
    error_policies_drop_or_stop_on_bad_records,
    a_scheduled_flow_runs_at_each_time_of_its_cron_schedule,
);
