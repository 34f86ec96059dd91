//! The command line as a user meets it: the quickstart, `validate`, bad configs, an unreachable
//! cluster, and secrets that must never be printed.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::kafka::Kafka;
use common::{counts_of, free_port, read_jsonl, run, write};

const LIMIT: Duration = Duration::from_secs(180);

fn repo_file(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn quickstart_runs_with_no_services_and_says_where_rows_went() {
    // Run the shipped example as the README says, in a scratch directory: it starts its own
    // embedded broker, so nothing else is running here.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("examples")).unwrap();
    std::fs::copy(repo_file("examples/quickstart.yaml"), dir.path().join("examples/quickstart.yaml")).unwrap();
    let done = run(&["run", "examples/quickstart.yaml"], dir.path(), &[], LIMIT);
    assert_eq!(done.code(), Some(0), "stderr:\n{}", done.stderr);
    let (rows, torn) = read_jsonl(&dir.path().join("out/orders.jsonl"));
    assert_eq!(torn, 0);
    assert!(rows.iter().all(|r| r["amount"].as_i64().unwrap() >= 500));
    let seqs = counts_of(&rows, "seq");
    assert_eq!(seqs.len(), rows.len(), "duplicates in a clean run");
    assert!(rows.len() > 40_000 && rows.len() < 60_000, "about half of 100,000 pass the filter: {}", rows.len());
    assert!(done.stdout.contains(&format!("delivered {} to file out/orders.jsonl", rows.len())), "{}", done.stdout);
    assert!(done.stdout.contains("read 100000,"), "{}", done.stdout);
    assert!(dir.path().join(".sluice/data/broker.db").exists(), "the embedded broker persists under data_dir");
}

/// The config docker-compose.yml runs (with its token file where the container has it).
#[test]
fn the_compose_files_config_validates() {
    let dir = tempfile::tempdir().unwrap();
    let token = repo_file("deploy/api-token.txt").display().to_string();
    let text = std::fs::read_to_string(repo_file("examples/docker.yaml")).unwrap();
    assert!(text.contains("/run/secrets/sluice_api_token"));
    let cfg = write(dir.path(), "docker.yaml", &text.replace("/run/secrets/sluice_api_token", &token));
    let done = run(&["validate", &cfg], dir.path(), &[], LIMIT);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
}

#[test]
fn validate_prints_each_flows_output_schema() {
    let dir = tempfile::tempdir().unwrap();
    let done = run(&["validate", &repo_file("examples/quickstart.yaml").display().to_string()], dir.path(), &[], LIMIT);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    for line in ["flow orders (on_demand): synthetic -> local_files", "customer: Utf8", "amount: Int64", "op: Utf8"] {
        assert!(done.stdout.contains(line), "no `{line}` in:\n{}", done.stdout);
    }
}

#[test]
fn validate_names_every_problem_with_its_line_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "bad.yaml",
        "\
kafka:
  bootstrap_servers: 127.0.0.1:1
connections:
  gen: {type: generate}
  out: {type: file, path: out}
flows:
  - name: typo
    source: {connection: gen, object: o}
    destination: {connection: out, object: a.jsonl}
    every: hourly
  - name: dangling
    source: {connection: gen, object: o}
    destination: {connection: warehouse, object: a.jsonl}
  - name: column
    source: {connection: gen, object: o}
    transform:
      sql: SELECT id, amout FROM source
    destination: {connection: out, object: a.jsonl}
",
    );
    let done = run(&["validate", &cfg], dir.path(), &[], LIMIT);
    assert_eq!(done.code(), Some(2), "{}\n{}", done.stdout, done.stderr);
    let err = &done.stderr;
    for expected in [
        format!("{cfg}:10: flows[0].every: unknown field `every`"),
        format!("{cfg}:13: flows[1].destination.connection: unknown connection `warehouse`"),
        format!("{cfg}:17: flows[2].transform.sql: "),
        "3 problems found".to_string(),
    ] {
        assert!(err.contains(&expected), "no `{expected}` in:\n{err}");
    }
    assert!(err.contains("amout"), "the bad column is named:\n{err}");
    // `run` refuses the same config the same way, before touching Kafka.
    let done = run(&["run", &cfg], dir.path(), &[], LIMIT);
    assert_eq!(done.code(), Some(2), "{}", done.stderr);
}

#[test]
fn an_unreachable_cluster_is_a_clear_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write(
        dir.path(),
        "c.yaml",
        &format!(
            "\
kafka:
  bootstrap_servers: 127.0.0.1:{port}
  connect_timeout_secs: 5
connections:
  gen: {{type: generate}}
  out: {{type: file, path: out}}
flows:
  - name: lonely
    source: {{connection: gen, object: o, options: {{count: 10}}}}
    destination: {{connection: out, object: a.jsonl}}
"
        ),
    );
    let started = Instant::now();
    let done = run(&["run", &cfg], dir.path(), &[], Duration::from_secs(60));
    let took = started.elapsed();
    assert_eq!(done.code(), Some(1), "{}", done.stderr);
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(
        done.stderr.contains(&format!("connecting to Kafka at 127.0.0.1:{port}: no broker answered within 5 s")),
        "{}",
        done.stderr
    );
    assert!(!done.stderr.contains("panicked"), "{}", done.stderr);
}

fn a_canary_secret_is_never_printed(kafka: &mut Kafka) {
    const CANARY: &str = "canary-7f3a9c1e-do-not-print";
    let dir = tempfile::tempdir().unwrap();
    let secret_file = write(dir.path(), "pw.txt", &format!("{CANARY}-file\n"));
    let cfg = write(
        dir.path(),
        "c.yaml",
        &format!(
            r#"
kafka: {{{kafka}, connect_timeout_secs: 5}}
connections:
  gen: {{type: generate}}
  # A SASL cluster that is really a plaintext broker: the handshake fails, errors get printed.
  remote:
    type: kafka
    bootstrap_servers: {addr}
    security:
      protocol: sasl_plaintext
      sasl_mechanism: PLAIN
      username: svc
      password: ${{env:SLUICE_TEST_CANARY}}
      ssl_key_password: ${{file:{secret_file}}}
flows:
  - name: leaky
    source: {{connection: gen, object: o, options: {{count: 10}}}}
    destination: {{connection: remote, object: out-topic}}
"#,
            kafka = kafka.yaml(),
            addr = kafka.addr(),
        ),
    );
    let env = [("SLUICE_TEST_CANARY", CANARY), ("SLUICE_LOG", "debug")];
    let validate = run(&["validate", &cfg], dir.path(), &env, LIMIT);
    assert_eq!(validate.code(), Some(0), "{}", validate.stderr);
    let ran = run(&["run", &cfg], dir.path(), &env, LIMIT);
    assert_ne!(ran.code(), Some(0), "a SASL handshake against a plaintext broker cannot succeed");
    // A broken config that names the secret's connection.
    let broken =
        write(dir.path(), "broken.yaml", &std::fs::read_to_string(&cfg).unwrap().replace("username: svc", "user: svc"));
    let bad = run(&["validate", &broken], dir.path(), &env, LIMIT);
    assert_eq!(bad.code(), Some(2));
    for (what, text) in [
        ("validate stdout", &validate.stdout),
        ("validate stderr", &validate.stderr),
        ("run stdout", &ran.stdout),
        ("run stderr", &ran.stderr),
        ("bad validate", &bad.stderr),
    ] {
        assert!(!text.contains(CANARY), "the secret leaked into {what}:\n{text}");
    }
    assert!(ran.stderr.len() > 200, "debug logs were on, so there was plenty to leak into:\n{}", ran.stderr);
}

#[test]
fn help_is_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["validate", "--help"],
        vec!["broker", "--help"],
        vec!["dlq", "--help"],
        vec!["status", "--help"],
        vec!["runs", "--help"],
        vec!["tap", "--help"],
        vec!["describe", "--help"],
        vec!["dlq", "show", "--help"],
        vec!["flows", "pause", "--help"],
        vec!["flows", "resume", "--help"],
    ] {
        let done = run(&args, dir.path(), &[], Duration::from_secs(30));
        assert_eq!(done.code(), Some(0), "{args:?}");
        assert!(done.stdout.contains("Usage:"), "{args:?}: {}", done.stdout);
    }
}

#[test]
fn connections_test_reaches_each_service_and_names_what_fails() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::write(
        dir.path(),
        "conns.yaml",
        &format!(
            r#"
kafka: {{bootstrap_servers: "127.0.0.1:{kafka}"}}
connections:
  files: {{type: file, path: {files}}}
  warehouse: {{type: postgres, database: postgres, user: postgres, password: "${{env:PG_CANARY}}"}}
  missing_db: {{type: postgres, database: sluice_no_such_db, user: postgres}}
  dead_hook: {{type: http, url: "http://127.0.0.1:{http}/hook", allow_private_addresses: true, timeout_secs: 2}}
  internal_hook: {{type: http, url: "http://169.254.169.254/latest"}}
flows: []
"#,
            kafka = common::free_port(),
            http = common::free_port(),
            files = dir.path().display(),
        ),
    );
    let env = [("PG_CANARY", "pg-canary-value")];
    let all = common::run(&["connections", "test", &cfg], dir.path(), &env, Duration::from_secs(60));
    assert_eq!(all.code(), Some(1), "{}{}", all.stdout, all.stderr);
    let line =
        |name: &str| all.stdout.lines().find(|l| l.contains(&format!(" {name} ("))).unwrap_or_default().to_owned();
    assert!(line("files").starts_with("ok"), "{}", all.stdout);
    assert!(
        line("warehouse").starts_with("ok") && line("warehouse").contains("logged in to database postgres"),
        "{}",
        all.stdout
    );
    assert!(
        line("missing_db").starts_with("FAIL") && line("missing_db").contains("sluice_no_such_db"),
        "{}",
        all.stdout
    );
    assert!(
        line("dead_hook").starts_with("FAIL") && line("dead_hook").contains("connection `dead_hook`"),
        "{}",
        all.stdout
    );
    assert!(
        line("internal_hook").starts_with("FAIL") && line("internal_hook").contains("allow_private_addresses"),
        "{}",
        all.stdout
    );
    assert!(!all.stdout.contains("pg-canary-value") && !all.stderr.contains("pg-canary-value"));

    let one = common::run(&["connections", "test", &cfg, "warehouse"], dir.path(), &env, Duration::from_secs(60));
    assert_eq!(one.code(), Some(0), "{}{}", one.stdout, one.stderr);
    assert_eq!(one.stdout.lines().count(), 1);
    let unknown = common::run(&["connections", "test", &cfg, "nope"], dir.path(), &env, Duration::from_secs(60));
    assert_eq!(unknown.code(), Some(2));
    assert!(unknown.stderr.contains("no connection named `nope`"), "{}", unknown.stderr);
}

crate::on_both_brokers!(a_canary_secret_is_never_printed);
