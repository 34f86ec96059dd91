//! A `sluice run` killed with SIGKILL and started again at once, on both brokers: how soon
//! it delivers again, and that nothing is lost.
//!
//! Two figures are printed (`RESTART …`): how long after the restart the sink worker delivered
//! its first record (its partitions are its own again), and how long until a record the killed
//! process had not yet published arrived (the source runs again). They are measured, not
//! asserted tightly: speed targets live in bench/, and this machine's load varies. The bound
//! here only catches the old behaviour (a restarted worker given nothing for a minute).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::kafka::Kafka;
use common::oracle::{IN_FLIGHT_WINDOW, oracle};
use common::{read_jsonl, spawn, wait_until, write};
use serde_json::Value;

fn a_killed_process_restarted_resumes_within_seconds(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let flow = kafka.name("restart");
    let (count, rate) = (40_000u64, 2000);
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
  - name: {flow}
    trigger: continuous
    source: {{connection: gen, object: orders, options: {{count: {count}, rate_per_sec: {rate}, keys: 50}}}}
    transform:
      sql: SELECT seq, id, version FROM source
    destination: {{connection: out, object: {flow}.jsonl}}
"#,
            kafka = kafka.yaml(),
            out = dir.path().join("out").display(),
        ),
    );
    let file = dir.path().join(format!("out/{flow}.jsonl"));
    let lines = |f: &Path| read_jsonl(f).0;
    let first = spawn(&["run", &cfg], dir.path(), &[]);
    assert!(wait_until(Duration::from_secs(90), || lines(&file).len() >= 8000), "{}", first.stderr_so_far());
    first.kill9();
    let before = lines(&file).len();
    // What the killed process had published: a record beyond it is the new source's.
    let published = kafka
        .read_topic(&kafka.topic(&format!("{flow}.changes")))
        .iter()
        .filter_map(|m| serde_json::from_slice::<Value>(&m.payload).ok()?["after"]["seq"].as_i64())
        .max()
        .unwrap_or(-1);

    let restarted = Instant::now();
    let second = spawn(&["run", &cfg], dir.path(), &[]);
    let sink_back = wait_until(Duration::from_secs(60), || lines(&file).len() > before);
    let sink_in = restarted.elapsed();
    let source_back = wait_until(Duration::from_secs(60), || {
        lines(&file).iter().any(|r| r["seq"].as_i64().is_some_and(|s| s > published))
    });
    let source_in = restarted.elapsed();
    assert!(sink_back && source_back, "the restarted process did not resume within 60 s:\n{}", second.stderr_so_far());
    let ok = wait_until(Duration::from_secs(120), || common::counts_of(&lines(&file), "seq").len() as u64 >= count);
    let stderr = second.stderr_so_far();
    // The restarted process's hand-over, for the record: when it got its partitions and claim.
    for l in stderr.lines().filter(|l| l.contains("assigned") || l.contains("claim") || l.contains("rejoin")).take(8) {
        eprintln!("  {}", l.chars().take(220).collect::<String>());
    }
    let done = second.terminate(Duration::from_secs(30));
    assert!(ok, "not everything arrived after the restart:\n{stderr}");
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let v = oracle(&lines(&file), count);
    assert!(v.duplicates <= IN_FLIGHT_WINDOW, "{v:?}");
    eprintln!(
        "RESTART on the {}: delivering again {:.1} s after the restart, source publishing again by {:.1} s; \
         sent {count}, lost 0, duplicated {}",
        kafka.label(),
        sink_in.as_secs_f64(),
        source_in.as_secs_f64(),
        v.duplicates
    );
}

crate::on_both_brokers!(a_killed_process_restarted_resumes_within_seconds);
