//! Fault injection: the at-least-once promise under broken brokers, stopped workers and
//! poisoned input. Real processes, real signals; an oracle checks every record.
//!
//! Oracle: records carry a unique `seq` and a per-key `version`. Nothing may be lost; duplicates
//! are bounded; once duplicates are removed each key's versions arrive in order.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::http::{Destination, Mode, Options};
use common::kafka::Kafka;
use common::oracle::{IN_FLIGHT_WINDOW, oracle};
use common::{counts_of, read_jsonl, run, spawn, wait_until, write};
use serde_json::Value;

fn continuous_config(dir: &Path, kafka: &Kafka, flow: &str, count: u64, rate: u64) -> String {
    write(
        dir,
        "flow.yaml",
        &format!(
            r#"
kafka: {{{kafka}}}
connections:
  gen: {{type: generate}}
  out: {{type: file, path: {out}}}
flows:
  - name: {flow}
    trigger: continuous
    source: {{connection: gen, object: orders, options: {{count: {count}, rate_per_sec: {rate}, keys: 50}}}}
    transform:
      sql: SELECT seq, id, version FROM source
    destination: {{connection: out, object: {flow}.jsonl}}
"#,
            kafka = kafka.yaml(),
            out = dir.join("out").display(),
        ),
    )
}

/// The embedded broker's own fault; on the cluster, `tests/cluster_faults.rs` kills the
/// partitions' leader instead.
#[test]
fn broker_killed_and_restarted_mid_run_loses_nothing() {
    let mut kafka = Kafka::embedded();
    let kafka = &mut kafka;
    let dir = tempfile::tempdir().unwrap();
    let count = 20_000;
    let cfg = continuous_config(dir.path(), kafka, "brokerkill", count, 4000);
    let file = dir.path().join("out/brokerkill.jsonl");
    let p = spawn(&["run", &cfg], dir.path(), &[]);
    assert!(wait_until(Duration::from_secs(60), || read_jsonl(&file).0.len() >= 4000), "{}", p.stderr_so_far());
    kafka.embedded_broker().unwrap().kill9();
    std::thread::sleep(Duration::from_secs(2));
    kafka.embedded_broker().unwrap().restart();
    let all = |f: &Path| counts_of(&read_jsonl(f).0, "seq").len() as u64 >= count;
    let ok = wait_until(Duration::from_secs(150), || all(&file));
    let stderr = p.stderr_so_far();
    let done = p.terminate(Duration::from_secs(30));
    let broker_logs = kafka.embedded_broker().map(|b| b.log_tails(20_000)).unwrap_or_default();
    assert!(ok, "not everything arrived after the broker came back:\n{stderr}\n{broker_logs}");
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let v = oracle(&read_jsonl(&file).0, count);
    // Where duplicates came from: published twice (the topic holds a seq more than once), or
    // delivered again from the topic (the sink read past its last commit).
    let published = kafka.read_topic(&kafka.topic("brokerkill.changes"));
    let in_topic = published.len();
    let distinct_in_topic = published
        .iter()
        .filter_map(|m| serde_json::from_slice::<Value>(&m.payload).ok()?["after"]["seq"].as_i64())
        .collect::<std::collections::HashSet<_>>()
        .len();
    let (republished, reread) = (in_topic - distinct_in_topic, v.delivered - in_topic.min(v.delivered));
    // A kill costs at most one batch on each side: the source's batch in flight (no
    // transactions on this broker: it is published again from the stored position) and the
    // sink's batch delivered but not committed.
    assert!(
        republished <= IN_FLIGHT_WINDOW && reread <= IN_FLIGHT_WINDOW,
        "{v:?}: {republished} published twice, {reread} delivered again\n{}",
        done.stderr
    );
    eprintln!(
        "FAULT broker-kill: sent {count}, lost 0, duplicated {} ({republished} published twice, {reread} delivered again), dlq 0",
        v.duplicates
    );
}

fn sigterm_under_load_drains_with_no_loss_and_no_duplicates(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let count = 40_000;
    let cfg = continuous_config(dir.path(), kafka, "drain", count, 8000);
    let file = dir.path().join("out/drain.jsonl");
    for threshold in [5_000usize, 15_000] {
        let p = spawn(&["run", &cfg], dir.path(), &[]);
        assert!(
            wait_until(Duration::from_secs(90), || read_jsonl(&file).0.len() >= threshold),
            "{}",
            p.stderr_so_far()
        );
        let done = p.terminate(Duration::from_secs(30));
        assert_eq!(done.code(), Some(0), "SIGTERM drains and exits 0:\n{}", done.stderr);
    }
    let p = spawn(&["run", &cfg], dir.path(), &[]);
    let ok = wait_until(Duration::from_secs(120), || read_jsonl(&file).0.len() as u64 >= count);
    let done = p.terminate(Duration::from_secs(30));
    assert!(ok, "{}", done.stderr);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let (rows, torn) = read_jsonl(&file);
    assert_eq!(torn, 0);
    let v = oracle(&rows, count);
    assert_eq!(v.duplicates, 0, "a clean stop re-delivers nothing: {v:?}");
    eprintln!("FAULT sigterm x2: sent {count}, lost 0, duplicated 0, dlq 0");
}

fn poison_pills_go_to_the_dlq_and_the_flow_goes_on(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let good = |i: i64| (Some(format!("{{\"id\":{i}}}")), format!("{{\"id\":{i},\"name\":\"n{i}\"}}").into_bytes());
    let mut msgs: Vec<(Option<String>, Vec<u8>)> = (0..100).map(good).collect();
    let deep = format!("{{\"id\":1000,\"name\":\"deep\",\"x\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
    // Over sluice's 1 MiB record limit. (Not 10 MB: the embedded broker, tansu 0.6, does not
    // return records larger than about 5 MB to any consumer, so no client could read one.)
    let big = format!("{{\"id\":1001,\"name\":\"{}\"}}", "x".repeat(4 * 1024 * 1024));
    let pills: Vec<(&str, Vec<u8>)> = vec![
        ("malformed", b"{\"id\": 5, \"name\": ".to_vec()),
        ("not-utf8", vec![b'{', 0xff, 0xfe, b'}']),
        ("deep", deep.into_bytes()),
        ("big", big.into_bytes()),
        ("not-an-object", b"[1,2,3]".to_vec()),
    ];
    for (i, (name, p)) in pills.iter().enumerate() {
        msgs.insert(10 + i * 20, (Some(format!("pill-{name}")), p.clone()));
    }
    msgs.extend((100..200).map(good));
    let input = kafka.name("dirty");
    kafka.produce(&input, 1, &msgs);
    let cfg = write(
        dir.path(),
        "flow.yaml",
        &format!(
            r#"
kafka: {{{kafka}}}
connections:
  bus: {{type: kafka}}
  out: {{type: file, path: {out}}}
flows:
  - name: dirty
    source:
      connection: bus
      object: {input}
      options: {{format: json}}
      schema: {{id: int64, name: string}}
    transform:
      sql: SELECT id, name FROM source
    destination: {{connection: out, object: clean.jsonl}}
"#,
            kafka = kafka.yaml(),
            out = dir.path().join("out").display(),
        ),
    );
    let done = run(&["run", &cfg], dir.path(), &[], Duration::from_secs(180));
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    assert!(!done.stderr.contains("panicked"), "{}", done.stderr);
    let (rows, _) = read_jsonl(&dir.path().join("out/clean.jsonl"));
    let ids: BTreeSet<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, (0..200).collect::<BTreeSet<i64>>(), "every good record delivered once");
    assert_eq!(rows.len(), 200);
    let dlq = kafka.read_topic(&kafka.topic("dirty.dlq"));
    let keys: BTreeSet<String> = dlq.iter().filter_map(|m| m.key.clone()).collect();
    let expected: BTreeSet<String> = pills.iter().map(|(n, _)| format!("pill-{n}")).collect();
    assert_eq!(keys, expected, "exactly the pills are dead-lettered");
    for m in &dlq {
        let pill = pills.iter().find(|(n, _)| m.key.as_deref() == Some(format!("pill-{n}").as_str())).unwrap();
        if pill.0 == "big" {
            // Over the record limit: cut to fit any cluster, saying so and how large it was;
            // the whole record stays at its origin (topic, partition, offset).
            assert_eq!(m.headers.get("sluice.truncated").map(String::as_str), Some("true"));
            assert!(m.headers["sluice.original_bytes"].parse::<usize>().unwrap() >= pill.1.len());
            assert!(m.payload.len() <= 64 * 1024 && pill.1.starts_with(&m.payload), "a prefix of the record");
        } else {
            assert_eq!(m.payload, pill.1, "the DLQ keeps the original payload of {}", pill.0);
        }
        assert!(!m.headers["sluice.error"].is_empty());
        assert_eq!(m.headers["sluice.topic"], input);
    }
    eprintln!("FAULT poison pills: sent {}, lost 0, duplicated 0, dlq {}", msgs.len(), dlq.len());
}

fn two_workers_one_killed_the_other_takes_over(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let count = 30_000i64;
    // Input: an existing topic with 4 partitions, keyed, versioned per key.
    let msgs: Vec<(Option<String>, Vec<u8>)> = (0..count)
        .map(|seq| {
            let id = seq % 40;
            (
                Some(format!("{{\"id\":{id}}}")),
                format!("{{\"seq\":{seq},\"id\":{id},\"version\":{}}}", seq / 40).into_bytes(),
            )
        })
        .collect();
    let (input, output) = (kafka.name("shared-in"), kafka.name("shared-out"));
    kafka.produce(&input, 4, &msgs);
    let cfg = write(
        dir.path(),
        "flow.yaml",
        &format!(
            r#"
kafka: {{{kafka}}}
connections:
  bus: {{type: kafka}}
flows:
  - name: shared
    trigger: continuous
    source:
      connection: bus
      object: {input}
      options: {{format: json}}
      schema: {{seq: int64, id: int64, version: int64}}
    transform:
      sql: SELECT seq, id, version, _key FROM source
    destination: {{connection: bus, object: {output}}}
"#,
            kafka = kafka.yaml(),
        ),
    );
    // Throttle the sink through small batches so the kill lands mid-stream.
    let a = spawn(&["run", &cfg], dir.path(), &[]);
    let b = spawn(&["run", &cfg], dir.path(), &[]);
    let out_len = || kafka.read_topic(&output).len();
    assert!(wait_until(Duration::from_secs(90), || out_len() >= 1), "{}", a.stderr_so_far());
    a.kill9();
    let ok = wait_until(Duration::from_secs(150), || {
        let rows: Vec<Value> =
            kafka.read_topic(&output).iter().map(|m| serde_json::from_slice(&m.payload).unwrap()).collect();
        counts_of(&rows, "seq").len() as i64 >= count
    });
    let stderr = b.stderr_so_far();
    let done = b.terminate(Duration::from_secs(30));
    eprintln!("survivor's log:\n{stderr}");
    assert!(ok, "the survivor did not deliver everything");
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let rows: Vec<Value> =
        kafka.read_topic(&output).iter().map(|m| serde_json::from_slice(&m.payload).unwrap()).collect();
    let v = oracle(&rows, count as u64);
    assert!(v.duplicates <= IN_FLIGHT_WINDOW, "duplicates beyond the killed worker's in-flight batch: {v:?}");
    eprintln!("FAULT two workers, one killed: sent {count}, lost 0, duplicated {}, dlq 0", v.duplicates);
}

/// `count` records keyed by `id` (40 keys) with a per-key `version`, padded with `pad` bytes,
/// produced to `topic` over `partitions` partitions.
fn produce_versioned(kafka: &Kafka, topic: &str, partitions: i32, count: i64, pad: usize) {
    let filler = "x".repeat(pad);
    let msgs: Vec<(Option<String>, Vec<u8>)> = (0..count)
        .map(|seq| {
            let id = seq % 40;
            let body = format!("{{\"seq\":{seq},\"id\":{id},\"version\":{},\"pad\":\"{filler}\"}}", seq / 40);
            (Some(format!("{{\"id\":{id}}}")), body.into_bytes())
        })
        .collect();
    kafka.produce(topic, partitions, &msgs);
}

/// A flow from topic `input` to the HTTP destination at `url`, with `options` for the sink.
fn http_flow_config(dir: &Path, kafka: &Kafka, flow: &str, input: &str, url: &str, options: &str) -> String {
    let kafka = kafka.yaml();
    write(
        dir,
        "flow.yaml",
        &format!(
            r#"
kafka: {{{kafka}}}
connections:
  bus: {{type: kafka}}
  hook:
    type: http
    url: {url}
    timeout_secs: 1
    allow_private_addresses: true
    auth: {{type: bearer, token: "${{env:HOOK_TOKEN}}"}}
flows:
  - name: {flow}
    source:
      connection: bus
      object: {input}
      options: {{format: json}}
      schema: {{seq: int64, id: int64, version: int64}}
    transform:
      sql: SELECT seq, id, version FROM source
    retry: {{initial_backoff_ms: 100, max_backoff_ms: 1000, max_attempts: 40, max_elapsed_secs: 120}}
    destination:
      connection: hook
      object: /ingest
      options: {options}
"#
        ),
    )
}

/// The rows the destination accepted, with `seq`, `id` and `version`.
fn accepted(dest: &Destination) -> Vec<Value> {
    dest.rows()
}

fn http_destination_failing_hanging_and_resetting_then_recovering_gets_everything(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let count = 20_000i64;
    let hook_in = kafka.name("hook-in");
    produce_versioned(kafka, &hook_in, 3, count, 0);
    let dest = Destination::start(Options { mode: Mode::Error500, hang: Duration::from_secs(3), ..Options::default() });
    let cfg = http_flow_config(dir.path(), kafka, "outage", &hook_in, &dest.url, "{max_rows: 250}");
    let p = spawn(&["run", &cfg], dir.path(), &[("HOOK_TOKEN", "t0ps3cret")]);
    // Three 500s, then two requests hanging past the sink's 1 s timeout, then two reset
    // connections; then the service recovers. Each phase lasts until the worker met it.
    let phase = |what: &str, done: &dyn Fn() -> bool| {
        assert!(wait_until(Duration::from_secs(60), done), "the worker never met the {what}:\n{}", p.stderr_so_far());
    };
    phase("500s", &|| dest.requests() >= 3);
    dest.set_mode(Mode::Hang);
    phase("hangs", &|| dest.requests() >= 5);
    dest.set_mode(Mode::Reset);
    phase("resets", &|| dest.resets() >= 2);
    dest.set_mode(Mode::Healthy);
    let done = p.wait(Duration::from_secs(240));
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    for seen in ["HTTP 500 Internal Server Error: down for maintenance", "timed out", "Connection reset by peer"] {
        assert!(done.stderr.contains(seen), "the log should mention `{seen}`:\n{}", done.stderr);
    }
    assert!(!done.stderr.contains("t0ps3cret"), "the token leaked into the log");
    let v = oracle(&accepted(&dest), count as u64);
    assert!(v.duplicates <= IN_FLIGHT_WINDOW, "{v:?}");
    assert!(kafka.read_topic(&kafka.topic("outage.dlq")).is_empty(), "a retriable failure is never dead-lettered");
    let status = run(&["status", &cfg], dir.path(), &[("HOOK_TOKEN", "t0ps3cret")], Duration::from_secs(60));
    assert!(
        status
            .stdout
            .contains(&format!("read {count} = delivered {count} + filtered 0 + dlq 0 + dropped 0 + in flight 0")),
        "{}",
        status.stdout
    );
    eprintln!(
        "FAULT http 500/hang/reset: sent {count}, lost 0, duplicated {}, dlq 0 ({} requests)",
        v.duplicates,
        dest.requests()
    );
}

fn http_destination_rejecting_specific_records_dead_letters_exactly_those(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let count = 10_000i64;
    let picky_in = kafka.name("picky-in");
    produce_versioned(kafka, &picky_in, 2, count, 0);
    fn reject(row: &Value) -> Option<String> {
        let seq = row["seq"].as_i64()?;
        (seq % 997 == 13).then(|| format!("record {seq}: field seq is not accepted"))
    }
    let dest = Destination::start(Options { reject: Some(reject), ..Options::default() });
    let cfg = http_flow_config(dir.path(), kafka, "picky", &picky_in, &dest.url, "{max_rows: 200}");
    let done = run(&["run", &cfg], dir.path(), &[("HOOK_TOKEN", "t")], Duration::from_secs(180));
    assert_eq!(done.code(), Some(0), "{}", done.stderr);

    let refused: BTreeSet<i64> = (0..count).filter(|s| s % 997 == 13).collect();
    let rows = accepted(&dest);
    let got = counts_of(&rows, "seq");
    assert!(got.values().all(|n| *n == 1), "a clean run delivers each record once");
    let expected: BTreeSet<i64> = (0..count).filter(|s| !refused.contains(s)).collect();
    assert_eq!(got.keys().copied().collect::<BTreeSet<i64>>(), expected, "everything else is delivered");

    let dlq = kafka.read_topic(&kafka.topic("picky.dlq"));
    let mut dead = BTreeSet::new();
    for m in &dlq {
        let row: Value = serde_json::from_slice(&m.payload).unwrap();
        let seq = row["seq"].as_i64().unwrap();
        assert!(dead.insert(seq), "record {seq} dead-lettered twice");
        assert_eq!(m.headers["sluice.stage"], "sink");
        assert_eq!(m.headers["sluice.topic"], picky_in);
        assert_eq!(m.key.as_deref(), Some(format!("{{\"id\":{}}}", seq % 40).as_str()), "the original key");
        let why = &m.headers["sluice.error"];
        assert!(why.contains("HTTP 400") && why.contains(&format!("record {seq}: field seq is not accepted")), "{why}");
        assert!(m.headers["sluice.offset"].parse::<i64>().is_ok());
    }
    assert_eq!(dead, refused, "exactly the refused records are in the DLQ");
    // The worker went past them: the run ended (its committed offsets reached the end) and
    // the ledger balances.
    let status = run(&["status", &cfg], dir.path(), &[("HOOK_TOKEN", "t")], Duration::from_secs(60));
    let n = refused.len();
    assert!(
        status.stdout.contains(&format!(
            "read {count} = delivered {} + filtered 0 + dlq {n} + dropped 0 + in flight 0",
            count as usize - n
        )),
        "{}",
        status.stdout
    );
    eprintln!(
        "FAULT http 400 for {n} records: sent {count}, lost 0, duplicated 0, dlq {n} ({} requests, {} refused)",
        dest.requests(),
        dest.refused()
    );

    // Replayed before the fix, they fail again: back in the DLQ with a second attempt, still
    // naming where they came from.
    let replay = run(&["dlq", "replay", &cfg, "picky"], dir.path(), &[("HOOK_TOKEN", "t")], Duration::from_secs(120));
    assert_eq!(replay.code(), Some(0), "{}", replay.stderr);
    assert!(
        replay.stdout.contains(&format!("replayed {n} dead letter(s)"))
            && replay.stdout.contains(&format!("dead-lettered again {n}")),
        "{}",
        replay.stdout
    );
    let dlq = kafka.read_topic(&kafka.topic("picky.dlq"));
    assert_eq!(dlq.len(), 2 * n);
    let second: Vec<_> = dlq.iter().filter(|m| m.headers["sluice.attempts"] == "2").collect();
    assert_eq!(second.len(), n);
    assert!(second.iter().all(|m| m.headers["sluice.topic"] == picky_in));

    // The destination is fixed: a replay sends exactly the dead letters not replayed yet,
    // once; another finds nothing new.
    dest.set_reject(None);
    let replay = run(&["dlq", "replay", &cfg, "picky"], dir.path(), &[("HOOK_TOKEN", "t")], Duration::from_secs(120));
    assert_eq!(replay.code(), Some(0), "{}", replay.stderr);
    assert!(
        replay.stdout.contains(&format!("replayed {n} dead letter(s)"))
            && replay.stdout.contains(&format!("delivered {n},")),
        "{}",
        replay.stdout
    );
    let got = counts_of(&accepted(&dest), "seq");
    assert_eq!(got.len() as i64, count, "after the replay every record is delivered");
    assert!(got.values().all(|n| *n == 1), "the replay sent only the dead letters");
    let again = run(&["dlq", "replay", &cfg, "picky"], dir.path(), &[("HOOK_TOKEN", "t")], Duration::from_secs(120));
    assert!(again.stdout.contains("replayed 0 dead letter(s)"), "{}{}", again.stdout, again.stderr);
}

/// Peak resident memory of a process so far, in MiB (Linux's VmHWM).
fn peak_rss_mib(pid: nix::unistd::Pid) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? / 1024)
}

/// The bound on a worker's resident memory with a large backlog and a slow destination, for
/// the debug build the tests run: ≈ 115 MiB before the first record (runtime, SQL engine,
/// clients), plus the batch in hand (at most 16 MiB of payloads), librdkafka's prefetch (8 MiB
/// queued, 16 MiB per fetch) and the batch's transient copies (decoded, encoded). Measured:
/// 186–192 MiB with a 100 MB and with a 200 MB backlog alike.
const RSS_BOUND_MIB: u64 = 230;

fn slow_destination_bounds_memory_and_keeps_group_membership(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    // 10,000 records of about 10 KB: a 100 MB backlog.
    let count = 10_000i64;
    let slow_in = kafka.name("slow-in");
    produce_versioned(kafka, &slow_in, 2, count, 10_000);
    let dest = Destination::start(Options { delay: Duration::from_millis(100), ..Options::default() });
    // 50 rows per request at 100 ms each: a 5,000-record batch takes 10 s, the group's whole
    // session timeout, so membership must survive on heartbeats while the worker waits.
    let cfg = http_flow_config(dir.path(), kafka, "slow", &slow_in, &dest.url, "{max_rows: 50}");
    let p = spawn(&["run", &cfg], dir.path(), &[("HOOK_TOKEN", "t")]);
    let pid = p.pid();
    let mut peak = 0;
    let ok = wait_until(Duration::from_secs(240), || {
        peak = peak.max(peak_rss_mib(pid).unwrap_or(0));
        counts_of(&accepted(&dest), "seq").len() as i64 >= count
    });
    peak = peak.max(peak_rss_mib(pid).unwrap_or(0));
    let done = p.wait(Duration::from_secs(60));
    assert!(ok, "not everything arrived:\n{}", done.stderr);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let v = oracle(&accepted(&dest), count as u64);
    assert_eq!(v.duplicates, 0, "a worker that keeps its membership re-delivers nothing: {v:?}");
    assert_eq!(
        done.stderr.matches("partitions assigned").count(),
        1,
        "the worker was evicted and rejoined:\n{}",
        done.stderr
    );
    assert!(!done.stderr.contains("revoked"), "{}", done.stderr);
    assert!(peak > 0 && peak <= RSS_BOUND_MIB, "peak RSS {peak} MiB over the {RSS_BOUND_MIB} MiB bound");
    eprintln!(
        "FAULT slow destination (100 ms/request): sent {count} (~100 MB), lost 0, duplicated 0, dlq 0, peak RSS {peak} MiB"
    );
}

crate::on_both_brokers!(
    sigterm_under_load_drains_with_no_loss_and_no_duplicates,
    poison_pills_go_to_the_dlq_and_the_flow_goes_on,
    two_workers_one_killed_the_other_takes_over,
    http_destination_failing_hanging_and_resetting_then_recovering_gets_everything,
    http_destination_rejecting_specific_records_dead_letters_exactly_those,
    slow_destination_bounds_memory_and_keeps_group_membership,
);
