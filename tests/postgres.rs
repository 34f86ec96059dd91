//! The `postgres` sink against the machine's real PostgreSQL (127.0.0.1:5432, user `postgres`),
//! fed through a real broker: change records applied by op, rows the database refuses
//! dead-lettered, and connection mistakes reported clearly.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::kafka::Kafka;
use common::pg::{pg, table};
use common::{run, write};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(180);

fn config(dir: &Path, kafka: &Kafka, flow: &str, input: &str, format: &str, sql: &str, dest: &str) -> String {
    let kafka = kafka.yaml();
    write(
        dir,
        "flow.yaml",
        &format!(
            r#"
kafka: {{{kafka}}}
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

fn change_records_are_applied_by_op_with_upserts_and_deletes(kafka: &mut Kafka) {
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
    let pg_changes = kafka.name("pg-changes");
    kafka.produce(&pg_changes, 3, &msgs);
    let dest =
        format!("{{connection: wh, object: public.{t}, options: {{mode: upsert, key: [id], create_table: true}}}}");
    let cfg = config(
        dir.path(),
        kafka,
        "apply",
        &pg_changes,
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

fn rows_the_database_refuses_go_to_the_dlq_and_the_rest_commit(kafka: &mut Kafka) {
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
    let pg_rows = kafka.name("pg-rows");
    kafka.produce(&pg_rows, 2, &msgs);
    let dest = format!("{{connection: wh, object: {t}}}");
    let cfg = config(dir.path(), kafka, "checked", &pg_rows, "json", "SELECT id, name, amount FROM source", &dest);
    let done = run(&["run", &cfg], dir.path(), &[("PG_SECRET", "x")], LIMIT);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);

    let ids: Vec<i64> = pg(&format!("SELECT id FROM {t} ORDER BY id"))
        .iter()
        .map(|r| r[0].as_deref().unwrap().parse().unwrap())
        .collect();
    let expected: Vec<i64> = (0..count).filter(|i| !bad(*i)).collect();
    assert_eq!(ids, expected, "every acceptable row inserted once");
    let dlq = kafka.read_topic(&kafka.topic("checked.dlq"));
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

fn connection_mistakes_are_clear_errors_that_name_the_connection(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let pg_few = kafka.name("pg-few");
    kafka.produce(&pg_few, 1, &[(None, br#"{"id":1,"name":"a","amount":1}"#.to_vec())]);
    let sql = "SELECT id, name, amount FROM source";
    let cases = [
        ("{connection: wh, object: sluice_no_such_table}", "postgres connection `wh`", "the table does not exist"),
        ("{connection: nodb, object: t}", "postgres connection `nodb`", "sluice_no_such_db"),
        ("{connection: nowhere, object: t}", "postgres connection `nowhere`", "giving up after 3 attempts"),
    ];
    for (dest, names, says) in cases {
        let cfg = config(dir.path(), kafka, "mistake", &pg_few, "json", sql, dest);
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

fn incremental_pulls_resume_at_the_cursor_and_complete_pulls_read_everything(kafka: &mut Kafka) {
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
kafka: {{{kafka}}}
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
            kafka = kafka.yaml(),
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

/// Each captured change in file order: key id (a delete's comes from its Kafka key), op, and the
/// row's `name` (which tells a change from a redelivery of the same change).
fn captured(file: &Path) -> Vec<(i64, String, String)> {
    let (rows, _) = common::read_jsonl(file);
    rows.iter()
        .map(|r| {
            let id = r["id"].as_i64().unwrap_or_else(|| {
                let k: Value = serde_json::from_str(r["k"].as_str().unwrap()).unwrap();
                k["id"].as_i64().unwrap()
            });
            (id, r["op"].as_str().unwrap().to_owned(), r["name"].to_string())
        })
        .collect()
}

fn change_data_capture_streams_a_script_in_order_and_survives_a_kill(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let t = table("sluice_cdc");
    pg(&format!(
        "CREATE TABLE {t} (id bigint PRIMARY KEY, name text, amount numeric(10,2), tags text[], meta jsonb, at timestamptz);
         ALTER TABLE {t} REPLICA IDENTITY FULL;
         INSERT INTO {t} SELECT i, 'n' || i, i * 1.5, ARRAY['a', 'b'], '{{\"k\": 1}}', now() FROM generate_series(0, 49) AS i"
    ));
    let out = dir.path().join("out");
    let cfg = write(
        dir.path(),
        "cdc.yaml",
        &format!(
            r#"
kafka: {{{kafka}}}
connections:
  wh: {{type: postgres, database: postgres, user: postgres}}
  out: {{type: file, path: {out}}}
flows:
  - name: cdc
    trigger: continuous
    source:
      connection: wh
      object: public.{t}
      options: {{mode: cdc, slot: {t}, publication: {t}, heartbeat_secs: 1}}
      schema: {{id: int64, name: string}}
    transform:
      sql: SELECT id, name, _op AS op, _key AS k FROM source
    destination: {{connection: out, object: cdc.jsonl}}
"#,
            kafka = kafka.yaml(),
            out = out.display(),
        ),
    );
    // The slot, the publication and the table go even if the test fails: a forgotten slot
    // holds back the server's WAL and takes one of its few slots.
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let t = &self.0;
            pg(&format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{t}' AND NOT active"
            ));
            pg(&format!("DROP PUBLICATION IF EXISTS \"{t}\"; DROP TABLE IF EXISTS {t}"));
        }
    }
    let file = out.join("cdc.jsonl");
    let wait_for = |n: usize, p: &common::Sluice| {
        assert!(
            common::wait_until(Duration::from_secs(90), || captured(&file).len() >= n),
            "expected {n} rows, have {}:\n{}",
            captured(&file).len(),
            p.stderr_so_far()
        );
    };
    let _cleanup = Cleanup(t.clone());
    let p = common::spawn(&["run", &cfg], dir.path(), &[]);
    wait_for(50, &p);
    // A script over several transactions, including a primary-key change and a transaction
    // that creates, changes and deletes one row.
    pg(&format!("INSERT INTO {t} (id, name) SELECT i, 'new' || i FROM generate_series(100, 109) AS i"));
    pg(&format!("BEGIN; UPDATE {t} SET name = 'x' WHERE id = 100; UPDATE {t} SET name = 'y' WHERE id = 1; COMMIT"));
    pg(&format!("DELETE FROM {t} WHERE id = 2"));
    pg(&format!("UPDATE {t} SET id = 201 WHERE id = 101"));
    pg(&format!(
        "BEGIN; INSERT INTO {t} (id, name) VALUES (300, 'tmp'); UPDATE {t} SET name = 'tmp2' WHERE id = 300; DELETE FROM {t} WHERE id = 300; COMMIT"
    ));
    wait_for(50 + 10 + 2 + 1 + 2 + 3, &p);
    p.kill9();
    // Changes while the worker is down arrive after the restart.
    pg(&format!("INSERT INTO {t} (id, name) SELECT i, 'late' || i FROM generate_series(400, 404) AS i"));
    let p = common::spawn(&["run", &cfg], dir.path(), &[]);
    wait_for(68 + 5, &p);

    // Per key, the ops in commit order. The kill may redeliver what followed the last committed
    // position (the slot's confirmed LSN, or the sink's committed offset): such a redelivery
    // replays a key's changes from an earlier one onwards, identical (op and row). So each
    // key's history is its distinct changes in first-seen order, and what was captured must be
    // that history with rewinds only: every change is either the next one or a replay of an
    // earlier one, and the captured sequence ends at the last change (a replay runs to the end;
    // stopping short would mean a later change was lost or reordered).
    let rows = captured(&file);
    let mut captured_by_key: BTreeMap<i64, Vec<(String, String)>> = BTreeMap::new();
    for (id, op, name) in &rows {
        captured_by_key.entry(*id).or_default().push((op.clone(), name.clone()));
    }
    let mut by_key: BTreeMap<i64, Vec<(String, String)>> = BTreeMap::new();
    for (id, seq) in &captured_by_key {
        let mut history: Vec<(String, String)> = Vec::new();
        for change in seq {
            if !history.contains(change) {
                history.push(change.clone());
            }
        }
        let mut next = 0;
        for change in seq {
            let at = if history.get(next) == Some(change) {
                next
            } else {
                let earlier = history[..next].iter().position(|c| c == change);
                earlier.unwrap_or_else(|| panic!("key {id}: {change:?} out of order in {seq:?}"))
            };
            next = at + 1;
        }
        assert_eq!(next, history.len(), "key {id}: a replay stopped short of the last change: {seq:?}");
        by_key.insert(*id, history);
    }
    let ops = |id: i64| {
        by_key.get(&id).map(|c| c.iter().map(|(op, _)| op.as_str()).collect::<Vec<_>>().join(",")).unwrap_or_default()
    };
    for id in (0..50).filter(|i| ![1, 2].contains(i)) {
        assert_eq!(ops(id), "r", "snapshot row {id}");
    }
    assert_eq!(ops(1), "r,u");
    assert_eq!(ops(2), "r,d");
    assert_eq!(ops(100), "c,u");
    assert_eq!(ops(101), "c,d", "a key change deletes the old key");
    assert_eq!(ops(201), "c", "and creates the new one");
    assert_eq!(ops(300), "c,u,d");
    for id in (102..110).chain(400..405) {
        assert_eq!(ops(id), "c", "row {id}");
    }

    // A quiet publication: other tables' writes still move the slot on (heartbeats).
    let slot_lsn = || {
        pg(&format!("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = '{t}'"))[0][0]
            .clone()
            .unwrap()
    };
    let lsn_num = |s: &str| {
        let (hi, lo) = s.split_once('/').unwrap();
        (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
    };
    let before = lsn_num(&slot_lsn());
    pg(&format!(
        "CREATE TABLE {t}_other (x int); INSERT INTO {t}_other SELECT generate_series(1, 1000); DROP TABLE {t}_other"
    ));
    assert!(
        common::wait_until(Duration::from_secs(30), || lsn_num(&slot_lsn()) > before),
        "the slot did not advance on a quiet publication"
    );
    let done = p.terminate(Duration::from_secs(30));
    assert_eq!(done.code(), Some(0), "{}", done.stderr);

    // The slot is listed with its lag, and can be dropped.
    let slots = run(&["cdc", "slots", &cfg, "wh"], dir.path(), &[], LIMIT);
    assert_eq!(slots.code(), Some(0), "{}", slots.stderr);
    assert!(
        slots.stdout.lines().any(|l| l.starts_with(&t) && l.contains("pgoutput") && l.ends_with("bytes")),
        "{}",
        slots.stdout
    );
    let dropped = run(&["cdc", "drop-slot", &cfg, "wh", &t], dir.path(), &[], LIMIT);
    assert_eq!(dropped.code(), Some(0), "{}", dropped.stderr);
    assert!(pg(&format!("SELECT 1 FROM pg_replication_slots WHERE slot_name = '{t}'")).is_empty());
    eprintln!("postgres cdc: {} rows captured ({} keys), slot advanced while quiet", rows.len(), by_key.len());
}

#[test]
fn tls_follows_libpq_ssl_modes() {
    // `scripts/test` makes sure the server offers TLS (Debian's snake-oil certificate: self-signed,
    // naming `localhost`, and linked into the system's certificate directory).
    let ssl = pg("SHOW ssl");
    assert_eq!(ssl[0][0].as_deref(), Some("on"), "the TLS test needs `ssl = on` (scripts/test sets it)");
    let cert = pg("SHOW ssl_cert_file")[0][0].clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = "type: postgres, host: 127.0.0.1, database: postgres, user: postgres";
    let cfg = write(
        dir.path(),
        "tls.yaml",
        &format!(
            r#"
kafka: {{bootstrap_servers: "127.0.0.1:1"}}
connections:
  plain: {{{base}, ssl_mode: disable}}
  default: {{{base}}}
  required: {{{base}, ssl_mode: require}}
  pinned: {{{base}, ssl_mode: verify-ca, ssl_root_cert: "{cert}"}}
  by_name: {{type: postgres, host: localhost, database: postgres, user: postgres, ssl_mode: verify-full, ssl_root_cert: "{cert}"}}
  strict: {{{base}, ssl_mode: verify-full, ssl_root_cert: "{cert}"}}
  untrusted: {{{base}, ssl_mode: verify-ca, ssl_root_cert: /etc/ssl/certs/ca-certificates.crt}}
flows: []
"#
        ),
    );
    let test = |name: &str| run(&["connections", "test", &cfg, name], dir.path(), &[], Duration::from_secs(60));
    for (name, says) in [
        ("plain", "without TLS"),
        ("default", "over TLS (TLSv1"),
        ("required", "over TLS (TLSv1"),
        ("pinned", "over TLS (TLSv1"),
        ("by_name", "over TLS (TLSv1"),
    ] {
        let out = test(name);
        assert_eq!(out.code(), Some(0), "{name}: {}{}", out.stdout, out.stderr);
        assert!(out.stdout.contains(says), "{name}: {}", out.stdout);
    }
    // A certificate from an authority not in the root file (the public authorities), or one
    // naming another host than the one connected to (`localhost`, not 127.0.0.1): a clear
    // error naming the connection, at once (retrying would not change the certificate).
    for (name, says) in [("untrusted", "certificate verify failed"), ("strict", "certificate verify failed")] {
        let started = std::time::Instant::now();
        let out = test(name);
        assert_eq!(out.code(), Some(1), "{name}: {}{}", out.stdout, out.stderr);
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(text.contains(says) && text.contains(&format!("`{name}`")), "{name}: {text}");
        assert!(started.elapsed() < Duration::from_secs(30), "{name} took {:?}", started.elapsed());
    }
}

crate::on_both_brokers!(
    change_records_are_applied_by_op_with_upserts_and_deletes,
    rows_the_database_refuses_go_to_the_dlq_and_the_rest_commit,
    connection_mistakes_are_clear_errors_that_name_the_connection,
    incremental_pulls_resume_at_the_cursor_and_complete_pulls_read_everything,
    change_data_capture_streams_a_script_in_order_and_survives_a_kill,
);
