//! A connector from outside the repository: `examples/custom-connector` is built as its own
//! crate (its own workspace, depending on `sluice` by path as another repository would by
//! version) and its binary — the whole sluice CLI plus a `logfmt` sink — runs a flow on the test
//! broker. The oracle checks every record: each is in the sink's file once, or, refused by the
//! sink, in the flow's dead-letter topic once with the sink's reason.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::kafka::Kafka;
use common::write;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(180);

/// Builds the example crate once per test process, in this workspace's target directory so the
/// dependencies built for the suite are reused, with this workspace's lock file (the versions
/// the suite was built with; the example keeps none of its own). `scripts/test` builds it the
/// same way before the tests start, so here it is normally found up to date.
fn example_binary() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        // target/debug/sluice → target
        let target = Path::new(env!("CARGO_BIN_EXE_sluice")).parent().unwrap().parent().unwrap().to_owned();
        let example = repo.join("examples/custom-connector");
        // Written whole, then renamed: the tests of this file may start at the same time.
        let tmp = example.join(format!("Cargo.lock.{}", std::process::id()));
        std::fs::copy(repo.join("Cargo.lock"), &tmp).unwrap();
        std::fs::rename(&tmp, example.join("Cargo.lock")).unwrap();
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args(["build", "--manifest-path"]).arg(example.join("Cargo.toml")).env("CARGO_TARGET_DIR", &target);
        // The test runner sets `CARGO_MANIFEST_DIR` and its kin for this process; a build script
        // that watches one (ring's does) would see a change and rebuild half the tree. The build
        // gets the environment `scripts/test` built the example in.
        for (name, _) in std::env::vars_os() {
            if let Some(name) = name.to_str().filter(|n| n.starts_with("CARGO_") && *n != "CARGO_HOME") {
                cargo.env_remove(name);
            }
        }
        cargo.env("CARGO_TARGET_DIR", &target);
        let out = cargo.output().expect("running cargo");
        assert!(out.status.success(), "building the example failed:\n{}", String::from_utf8_lossy(&out.stderr));
        target.join("debug/sluice-logfmt")
    })
}

/// Runs the example binary to its end.
fn example(args: &[&str], cwd: &Path) -> (Option<i32>, String, String) {
    let mut child = Command::new(example_binary())
        .args(args)
        .current_dir(cwd)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting sluice-logfmt");
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("sluice-logfmt {args:?} did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn a_connector_from_outside_the_repository_runs_a_flow(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let flow = kafka.name("logfmt");
    let count = 3_000i64;
    let cfg = write(
        dir.path(),
        "flow.yaml",
        &format!(
            r#"
kafka: {{{kafka}, partitions: 3}}
connections:
  gen: {{type: generate}}
  logs: {{type: logfmt, dir: {out}}}
flows:
  - name: {flow}
    source: {{connection: gen, object: orders, options: {{count: {count}, keys: 50, seed: 3}}}}
    transform:
      sql: >
        SELECT seq, name, amount,
               CASE WHEN seq % 100 = 7 THEN repeat('x', 300) ELSE 'ok' END AS note
        FROM source
    destination: {{connection: logs, object: orders.log, options: {{max_line_bytes: 200}}}}
"#,
            kafka = kafka.yaml(),
            out = dir.path().join("out").display(),
        ),
    );

    // The rest of the CLI works with the added connector: `validate` and `connections test`.
    let (code, stdout, stderr) = example(&["validate", &cfg], dir.path());
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("note: Utf8"), "{stdout}");
    let (code, stdout, stderr) = example(&["connections", "test", &cfg, "logs"], dir.path());
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("ok    logs (logfmt): directory"), "{stdout}");

    let (code, stdout, stderr) = example(&["run", &cfg], dir.path());
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");

    // Oracle: every seq is delivered once, or refused once to the DLQ with the sink's reason.
    let text = std::fs::read_to_string(dir.path().join("out/orders.log")).unwrap();
    let mut delivered = BTreeMap::new();
    for line in text.lines() {
        let seq: i64 = line.strip_prefix("seq=").and_then(|r| r.split(' ').next()).unwrap().parse().unwrap();
        *delivered.entry(seq).or_insert(0) += 1;
        assert!(line.ends_with("note=ok"), "{line}");
    }
    let dlq = kafka.read_topic(&kafka.topic(&format!("{flow}.dlq")));
    let mut refused = BTreeMap::new();
    for m in &dlq {
        assert!(m.headers["sluice.error"].contains("over max_line_bytes (200)"), "{:?}", m.headers);
        let envelope: Value = serde_json::from_slice(&m.payload).unwrap();
        *refused.entry(envelope["after"]["seq"].as_i64().unwrap()).or_insert(0) += 1;
    }
    for seq in 0..count {
        let (d, r) = (delivered.get(&seq).copied().unwrap_or(0), refused.get(&seq).copied().unwrap_or(0));
        if seq % 100 == 7 {
            assert_eq!((d, r), (0, 1), "seq {seq}: refused by the sink, so dead-lettered once");
        } else {
            assert_eq!((d, r), (1, 0), "seq {seq}: delivered once");
        }
    }
    assert_eq!(delivered.len() + refused.len(), count as usize, "nothing else arrived");
}

crate::on_both_brokers!(a_connector_from_outside_the_repository_runs_a_flow);

#[test]
fn a_custom_connectors_settings_are_checked_like_the_builtin_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "bad.yaml",
        "\
kafka: {bootstrap_servers: 127.0.0.1:1}
connections:
  gen: {type: generate}
  logs: {type: logfmt, dir: out, colour: red}
  more: {type: logfmt, dir: out}
flows:
  - name: a
    source: {connection: more, object: x}
    destination: {connection: gen, object: y}
  - name: b
    source: {connection: gen, object: x}
    destination: {connection: more, object: y, options: {max_line_byte: 10}}
",
    );
    let (code, _, stderr) = example(&["validate", &cfg], dir.path());
    assert_eq!(code, Some(2), "{stderr}");
    for want in [
        "bad.yaml:4: connections.logs.colour: unknown field `colour`",
        "bad.yaml:8: flows[0].source.options: a `logfmt` connection cannot be a source",
        "bad.yaml:12: flows[1].destination.options.max_line_byte: unknown field `max_line_byte`",
    ] {
        assert!(stderr.contains(want), "no `{want}` in:\n{stderr}");
    }
    // The built-in binary does not know the connector, and says which it knows.
    let done = common::run(&["validate", &cfg], dir.path(), &[], LIMIT);
    assert!(done.stderr.contains("unknown connector `logfmt`, expected one of `file`, `generate`"), "{}", done.stderr);
}
