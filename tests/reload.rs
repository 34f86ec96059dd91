//! Hot reload of a running `sluice run` over a config directory, through real brokers: a
//! flow's SQL changed (it restarts alone and goes on where it stopped), a flow added, a flow
//! removed, a value read from a `${file:…}` reference changed and read again on SIGHUP, and an
//! invalid file refused with its line while everything keeps running. The oracle: the changed
//! flow delivers every record (no gap across its restart), the untouched flow is never
//! restarted.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::kafka::Kafka;
use common::{read_jsonl, spawn, wait_until, write};

const LIMIT: Duration = Duration::from_secs(120);

fn flow_yaml(name: &str, sql: &str, object: &str) -> String {
    format!(
        "  - name: {name}\n    trigger: continuous\n    source: {{connection: gen, object: {object}, options: {{rate_per_sec: 100, count: 3000}}}}\n    transform: {{sql: \"{sql}\"}}\n    destination: {{connection: out, object: {object}.jsonl}}\n"
    )
}

fn rows(dir: &Path, object: &str) -> Vec<serde_json::Value> {
    read_jsonl(&dir.join(format!("out/{object}.jsonl"))).0
}

fn a_running_process_takes_a_changed_config(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    let (a, b, c) = (kafka.name("rl_a"), kafka.name("rl_b"), kafka.name("rl_c"));
    write(&conf, "tag.txt", "first\n");
    let head = format!(
        "kafka: {{{kafka}}}\nconnections:\n  gen: {{type: generate}}\n  out: {{type: file, path: {out}}}\n",
        kafka = kafka.yaml(),
        out = dir.path().join("out").display()
    );
    write(&conf, "0-base.yaml", &head);
    let tag = conf.join("tag.txt").display().to_string();
    let v1 = "SELECT seq, 'v1' AS version FROM source";
    let b_sql = format!("SELECT seq, '${{file:{tag}}}' AS tag FROM source");
    let flows = |a_sql: &str, with_b: bool, with_c: bool| {
        let mut f = String::from("flows:\n");
        f += &flow_yaml(&a, a_sql, "a");
        if with_b {
            f += &flow_yaml(&b, &b_sql, "b");
        }
        if with_c {
            f += &flow_yaml(&c, "SELECT seq FROM source", "c");
        }
        f
    };
    write(&conf, "1-flows.yaml", &flows(v1, true, false));
    let conf_arg = conf.display().to_string();
    let p = spawn(&["run", &conf_arg], dir.path(), &[("SLUICE_LOG", "info")]);
    assert!(wait_until(LIMIT, || rows(dir.path(), "a").len() >= 200), "{}", p.stderr_so_far());

    // 1. A's SQL changes: A restarts alone; its new rows carry the new column.
    write(&conf, "1-flows.yaml", &flows("SELECT seq, 'v2' AS version FROM source", true, false));
    let v2 = || rows(dir.path(), "a").iter().filter(|r| r["version"] == "v2").count() >= 100;
    assert!(wait_until(LIMIT, v2), "{}", p.stderr_so_far());
    let log = p.stderr_so_far();
    assert!(log.contains(&format!("flow={a}")) && log.contains("the flow's settings changed; restarting it"), "{log}");

    // 2. An invalid file: refused with its line; everything keeps running on the old config.
    write(&conf, "2-bad.yaml", "flows:\n  - name: broken\n    sourse: {connection: gen, object: x}\n");
    assert!(wait_until(LIMIT, || p.stderr_so_far().contains("the changed config is refused")), "{}", p.stderr_so_far());
    let log = p.stderr_so_far();
    assert!(log.contains("2-bad.yaml:3") && log.contains("sourse"), "{log}");
    let before = rows(dir.path(), "a").len();
    assert!(wait_until(LIMIT, || rows(dir.path(), "a").len() > before + 100), "A still delivers");
    std::fs::remove_file(conf.join("2-bad.yaml")).unwrap();

    // 3. C added, B removed.
    write(&conf, "1-flows.yaml", &flows("SELECT seq, 'v2' AS version FROM source", false, true));
    assert!(wait_until(LIMIT, || rows(dir.path(), "c").len() >= 100), "{}", p.stderr_so_far());
    assert!(p.stderr_so_far().contains("the flow is no longer in the config; stopping it"));
    std::thread::sleep(Duration::from_secs(2));
    let b_at_removal = rows(dir.path(), "b").len();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(rows(dir.path(), "b").len(), b_at_removal, "a removed flow delivers nothing more");
    assert!(b_at_removal > 0 && rows(dir.path(), "b").iter().all(|r| r["tag"] == "first"));

    // 4. B back, and a `${file:…}` value changed: read again on SIGHUP.
    write(&conf, "1-flows.yaml", &flows("SELECT seq, 'v2' AS version FROM source", true, true));
    let b_again = || rows(dir.path(), "b").len() > b_at_removal + 50;
    assert!(wait_until(LIMIT, b_again), "{}", p.stderr_so_far());
    write(&conf, "tag.txt", "second\n");
    nix::sys::signal::kill(p.pid(), nix::sys::signal::Signal::SIGHUP).unwrap();
    let second = || rows(dir.path(), "b").iter().any(|r| r["tag"] == "second");
    assert!(wait_until(LIMIT, second), "{}", p.stderr_so_far());

    // Every record of A delivered, across its restart: no gap.
    assert!(wait_until(LIMIT, || rows(dir.path(), "a").len() >= 3000), "{}", p.stderr_so_far());
    let seqs: BTreeSet<i64> = rows(dir.path(), "a").iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    let missing: Vec<i64> = (0..3000).filter(|s| !seqs.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "A lost {} records across the reload: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let log = p.stderr_so_far();
    let restarts_of_c = log.lines().filter(|l| l.contains(&format!("flow={c}")) && l.contains("restarting")).count();
    assert_eq!(restarts_of_c, 0, "C never changed, so never restarted:\n{log}");
    let done = p.terminate(Duration::from_secs(30));
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    eprintln!(
        "reload: SQL change, invalid file, add, remove, re-add and a SIGHUP taken while running; A delivered all 3000"
    );
}

crate::on_both_brokers!(a_running_process_takes_a_changed_config);
