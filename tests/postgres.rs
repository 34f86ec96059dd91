//! The `postgres` sink against the machine's real PostgreSQL (127.0.0.1:5432, user `postgres`),
//! fed through a real broker: change records applied by op, rows the database refuses
//! dead-lettered, and connection mistakes reported clearly.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::{Broker, produce, read_topic, run, write};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(180);

/// Runs SQL on the test database and returns each row's columns as text.
fn pg(sql: &str) -> Vec<Vec<Option<String>>> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (client, conn) =
            tokio_postgres::connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", tokio_postgres::NoTls)
                .await
                .expect("the tests need PostgreSQL on 127.0.0.1:5432 (scripts/test starts it)");
        tokio::spawn(conn);
        let mut out = Vec::new();
        for m in client.simple_query(sql).await.unwrap() {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                out.push((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect());
            }
        }
        out
    })
}

/// A table name no other run uses.
fn table(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}_{}_{}", std::process::id(), nanos % 1_000_000_000)
}

fn config(dir: &Path, addr: &str, flow: &str, input: &str, format: &str, sql: &str, dest: &str) -> String {
    write(
        dir,
        "flow.yaml",
        &format!(
            r#"
kafka:
  bootstrap_servers: {addr}
connections:
  bus: {{type: kafka}}
  wh: {{type: postgres, host: 127.0.0.1, port: 5432, database: postgres, user: postgres, password: "${{env:PG_SECRET}}"}}
  nowhere: {{type: postgres, host: 127.0.0.1, port: {dead}, database: postgres, user: postgres, connect_timeout_secs: 1}}
  nodb: {{type: postgres, database: sluice_no_such_db, user: postgres}}
flows:
  - name: {flow}
    source:
      connection: bus
      object: {input}
      options: {{format: {format}}}
      schema: {{id: int64, name: string, amount: int64, version: int64}}
    transform:
      sql: {sql}
    retry: {{max_attempts: 3, max_elapsed_secs: 10, initial_backoff_ms: 100}}
    destination: {dest}
"#,
            dead = common::free_port(),
        ),
    )
}

#[test]
fn change_records_are_applied_by_op_with_upserts_and_deletes() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let t = table("sluice_changes");
    // 300 keys: created, updated three times, and every seventh deleted at the end.
    let mut msgs = Vec::new();
    let row = |id: i64, v: i64| json!({"id": id, "name": format!("n{id}v{v}"), "amount": id * 10 + v, "version": v});
    for v in 0..4 {
        for id in 0..300i64 {
            let before = if v == 0 { Value::Null } else { row(id, v - 1) };
            let env = json!({"before": before, "after": row(id, v), "op": if v == 0 { "c" } else { "u" }, "source": {}, "ts_ms": 1});
            msgs.push((Some(json!({"id": id}).to_string()), env.to_string().into_bytes()));
        }
    }
    for id in (0..300i64).filter(|i| i % 7 == 0) {
        let env = json!({"before": row(id, 3), "after": null, "op": "d", "source": {}, "ts_ms": 2});
        msgs.push((Some(json!({"id": id}).to_string()), env.to_string().into_bytes()));
    }
    produce(&broker.addr, "pg-changes", 3, &msgs);
    let dest =
        format!("{{connection: wh, object: public.{t}, options: {{mode: upsert, key: [id], create_table: true}}}}");
    let cfg = config(
        dir.path(),
        &broker.addr,
        "apply",
        "pg-changes",
        "debezium",
        "SELECT id, name, amount, version, _op, _key FROM source",
        &dest,
    );
    let done = run(&["run", &cfg], dir.path(), &[("PG_SECRET", "unused-with-trust")], LIMIT);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);

    let got: BTreeMap<i64, (String, i64, i64)> = pg(&format!("SELECT id, name, amount, version FROM {t}"))
        .into_iter()
        .map(|r| {
            let n = |i: usize| r[i].as_deref().unwrap().parse::<i64>().unwrap();
            (n(0), (r[1].clone().unwrap(), n(2), n(3)))
        })
        .collect();
    let expected: BTreeMap<i64, (String, i64, i64)> =
        (0..300i64).filter(|i| i % 7 != 0).map(|id| (id, (format!("n{id}v3"), id * 10 + 3, 3))).collect();
    assert_eq!(got, expected, "the table holds each surviving key's last version, and no deleted key");
    pg(&format!("DROP TABLE {t}"));
    eprintln!("postgres upsert/delete: {} changes applied -> {} rows", msgs.len(), got.len());
}

#[test]
fn rows_the_database_refuses_go_to_the_dlq_and_the_rest_commit() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let t = table("sluice_checked");
    pg(&format!("CREATE TABLE {t} (id bigint PRIMARY KEY, name text NOT NULL, amount bigint CHECK (amount < 900))"));
    let count = 2000i64;
    let bad = |id: i64| id % 150 == 7;
    let msgs: Vec<(Option<String>, Vec<u8>)> = (0..count)
        .map(|id| {
            let amount = if bad(id) { 950 } else { id % 900 };
            (
                Some(json!({"id": id}).to_string()),
                json!({"id": id, "name": format!("n{id}"), "amount": amount}).to_string().into_bytes(),
            )
        })
        .collect();
    produce(&broker.addr, "pg-rows", 2, &msgs);
    let dest = format!("{{connection: wh, object: {t}}}");
    let cfg =
        config(dir.path(), &broker.addr, "checked", "pg-rows", "json", "SELECT id, name, amount FROM source", &dest);
    let done = run(&["run", &cfg], dir.path(), &[("PG_SECRET", "x")], LIMIT);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);

    let ids: Vec<i64> = pg(&format!("SELECT id FROM {t} ORDER BY id"))
        .iter()
        .map(|r| r[0].as_deref().unwrap().parse().unwrap())
        .collect();
    let expected: Vec<i64> = (0..count).filter(|i| !bad(*i)).collect();
    assert_eq!(ids, expected, "every acceptable row inserted once");
    let dlq = read_topic(&broker.addr, "sluice.checked.dlq");
    let dead: BTreeSet<i64> =
        dlq.iter().map(|m| serde_json::from_slice::<Value>(&m.payload).unwrap()["id"].as_i64().unwrap()).collect();
    assert_eq!(dead, (0..count).filter(|i| bad(*i)).collect::<BTreeSet<i64>>());
    for m in &dlq {
        let why = &m.headers["sluice.error"];
        assert!(why.contains("violates check constraint") && why.contains("23514"), "{why}");
        assert_eq!(m.headers["sluice.stage"], "sink");
    }
    pg(&format!("DROP TABLE {t}"));
    eprintln!("postgres refusals: sent {count}, inserted {}, dlq {}", ids.len(), dlq.len());
}

#[test]
fn connection_mistakes_are_clear_errors_that_name_the_connection() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    produce(&broker.addr, "pg-few", 1, &[(None, br#"{"id":1,"name":"a","amount":1}"#.to_vec())]);
    let sql = "SELECT id, name, amount FROM source";
    let cases = [
        ("{connection: wh, object: sluice_no_such_table}", "postgres connection `wh`", "the table does not exist"),
        ("{connection: nodb, object: t}", "postgres connection `nodb`", "sluice_no_such_db"),
        ("{connection: nowhere, object: t}", "postgres connection `nowhere`", "giving up after 3 attempts"),
    ];
    for (dest, names, says) in cases {
        let cfg = config(dir.path(), &broker.addr, "mistake", "pg-few", "json", sql, dest);
        let done = run(&["run", &cfg], dir.path(), &[("PG_SECRET", "s3cr3t-canary")], LIMIT);
        assert_eq!(done.code(), Some(1), "{dest}: {}", done.stderr);
        assert!(
            done.stderr.contains(names) && done.stderr.contains(says),
            "{dest}: expected `{names}` and `{says}`:\n{}",
            done.stderr
        );
        assert!(!done.stderr.contains("s3cr3t-canary"));
    }
}

#[test]
fn incremental_pulls_resume_at_the_cursor_and_complete_pulls_read_everything() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let t = table("sluice_pull");
    // Seven rows share each `updated_at`, so the 5,000-row pages end among equal cursor values.
    pg(&format!(
        "CREATE TABLE {t} (id bigint PRIMARY KEY, name text, amount bigint, version bigint, updated_at timestamptz NOT NULL);
         INSERT INTO {t} SELECT i, 'n' || i, i % 1000, 0, '2026-01-01T00:00:00Z'::timestamptz + (i / 7) * interval '1 second'
         FROM generate_series(0, 11999) AS i"
    ));
    let out = dir.path().join("out");
    let cfg = write(
        dir.path(),
        "pull.yaml",
        &format!(
            r#"
kafka:
  bootstrap_servers: {addr}
connections:
  wh: {{type: postgres, database: postgres, user: postgres}}
  out: {{type: file, path: {out}}}
flows:
  - name: pull_incr
    source:
      connection: wh
      object: public.{t}
      options: {{mode: incremental, cursor: updated_at, key: [id], first_execution_from: "2026-01-01T00:00:10Z"}}
      schema: {{id: int64, name: string, amount: int64, version: int64}}
    transform:
      sql: SELECT id, version, _op AS op FROM source
    destination: {{connection: out, object: incr.jsonl}}
  - name: pull_all
    source:
      connection: wh
      object: ignored
      options: {{mode: complete, query: "SELECT id, name, amount, version FROM public.{t} WHERE amount >= 0"}}
      schema: {{id: int64, name: string, amount: int64, version: int64}}
    destination: {{connection: out, object: all.jsonl}}
"#,
            addr = broker.addr,
            out = out.display(),
        ),
    );
    let seen = |file: &str| -> Vec<(i64, i64)> {
        let (rows, _) = common::read_jsonl(&out.join(file));
        rows.iter().map(|r| (r["id"].as_i64().unwrap(), r["version"].as_i64().unwrap())).collect()
    };

    // First run: everything from the first execution's start (ids 0..69 are before it).
    let done = run(&["run", &cfg, "--flow", "pull_incr"], dir.path(), &[], LIMIT);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let first = seen("incr.jsonl");
    let ids: Vec<i64> = first.iter().map(|r| r.0).collect::<BTreeSet<i64>>().into_iter().collect();
    assert_eq!(ids, (70..12_000).collect::<Vec<i64>>(), "every row past first_execution_from, across page boundaries");
    assert_eq!(first.len(), ids.len(), "each row once");

    // Changes after it: 100 rows updated, 500 inserted. The second run reads exactly those.
    pg(&format!(
        "UPDATE {t} SET version = 1, updated_at = '2026-01-02T00:00:00Z' WHERE id % 120 = 0;
         INSERT INTO {t} SELECT i, 'n' || i, 5, 0, '2026-01-02T00:00:01Z' FROM generate_series(12000, 12499) AS i"
    ));
    let done = run(&["run", &cfg, "--flow", "pull_incr"], dir.path(), &[], LIMIT);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let second: Vec<(i64, i64)> = seen("incr.jsonl")[first.len()..].to_vec();
    let mut expected: Vec<(i64, i64)> = (0..12_000).filter(|i| i % 120 == 0).map(|i| (i, 1)).collect();
    expected.extend((12_000..12_500).map(|i| (i, 0)));
    let mut got = second.clone();
    got.sort_unstable();
    assert_eq!(got, expected, "the second run reads only what changed since the first");

    // A complete pull reads the whole table from one snapshot.
    let done = run(&["run", &cfg, "--flow", "pull_all"], dir.path(), &[], LIMIT);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let all: BTreeSet<i64> = seen("all.jsonl").iter().map(|r| r.0).collect();
    assert_eq!(all.len(), 12_500);
    assert_eq!(seen("all.jsonl").len(), 12_500);
    pg(&format!("DROP TABLE {t}"));
    eprintln!("postgres pulls: incremental {} then {} rows, complete {}", first.len(), second.len(), all.len());
}
