//! Change data capture against the machine's PostgreSQL, where it used to lose or corrupt
//! changes without a word: a publication that does not cover the table, other tables leaking
//! in, a table dropped and created again, TRUNCATE, unchanged TOASTed values, numerics through
//! a float, and a crash right after the snapshot. Every check compares what was captured with
//! what was done to the database.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::kafka::Kafka;
use common::pg::{Cleanup, pg, table};
use common::{read_jsonl, run, spawn, wait_until, write};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(180);

/// One captured row: `(op, id, the rest)`.
fn captured(file: &Path) -> Vec<(String, Option<i64>, Value)> {
    read_jsonl(file).0.into_iter().map(|r| (r["op"].as_str().unwrap().to_owned(), r["id"].as_i64(), r)).collect()
}

fn flow(name: &str, table: &str, publication: &str, schema: &str, file: &str) -> String {
    format!(
        r#"
  - name: {name}
    trigger: continuous
    source:
      connection: wh
      object: public.{table}
      options: {{mode: cdc, slot: {name}_{table}, publication: {publication}, heartbeat_secs: 1}}
      schema: {schema}
    transform:
      sql: SELECT *, _op AS op FROM source
    destination: {{connection: out, object: {file}}}
    batch: {{linger_ms: 20}}
"#
    )
}

fn config(dir: &Path, kafka: &Kafka, flows: &str) -> String {
    write(
        dir,
        "cdc.yaml",
        &format!(
            "kafka: {{{kafka}}}\nconnections:\n  wh: {{type: postgres, database: postgres, user: postgres}}\n  out: {{type: file, path: {out}}}\nflows:{flows}",
            kafka = kafka.yaml(),
            out = dir.join("out").display()
        ),
    )
}

fn a_publication_that_misses_the_table_is_refused_and_other_tables_stay_out(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let (t, other, publ) = (table("cdc_mine"), table("cdc_other"), table("cdc_users_pub"));
    let _cleanup = Cleanup {
        slots: vec![format!("c_{t}")],
        publications: vec![publ.clone()],
        tables: vec![t.clone(), other.clone()],
    };
    pg(&format!(
        "CREATE TABLE {t} (id bigint PRIMARY KEY, v text); CREATE TABLE {other} (id bigint PRIMARY KEY, v text);
         INSERT INTO {t} VALUES (1, 'a'), (2, 'b');
         CREATE PUBLICATION {publ} FOR TABLE {other}"
    ));
    let out = dir.path().join("out");
    let cfg = config(dir.path(), kafka, &flow("c", &t, &publ, "{id: int64, v: string}", "c.jsonl"));
    // The user's publication does not cover the table: a clear failure, naming both and the fix.
    let done = run(&["run", &cfg], dir.path(), &[], LIMIT);
    assert_eq!(done.code(), Some(1), "{}", done.stderr);
    for words in [publ.as_str(), &format!("public.{t}"), "ALTER PUBLICATION", "would never be read"] {
        assert!(done.stderr.contains(words), "no `{words}` in:\n{}", done.stderr);
    }
    // Meanwhile the table changes; none of it may be lost once the publication is fixed.
    pg(&format!("UPDATE {t} SET v = 'a2' WHERE id = 1; INSERT INTO {t} VALUES (3, 'c')"));
    pg(&format!("ALTER PUBLICATION {publ} ADD TABLE {t}"));
    let p = spawn(&["run", &cfg], dir.path(), &[]);
    let file = out.join("c.jsonl");
    let ids = |f: &Path| captured(f).iter().filter_map(|(_, id, _)| *id).collect::<std::collections::BTreeSet<i64>>();
    assert!(wait_until(Duration::from_secs(60), || ids(&file).len() >= 3), "{}", p.stderr_so_far());
    // Changes of the other table in the same publication never show up.
    pg(&format!(
        "INSERT INTO {other} VALUES (100, 'x'); INSERT INTO {t} VALUES (4, 'd'); INSERT INTO {other} VALUES (101, 'y')"
    ));
    assert!(wait_until(Duration::from_secs(60), || ids(&file).contains(&4)), "{}", p.stderr_so_far());
    std::thread::sleep(Duration::from_secs(2));
    let done = p.terminate(Duration::from_secs(30));
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let rows = captured(&file);
    assert_eq!(ids(&file), [1, 2, 3, 4].into_iter().collect(), "{rows:?}");
    let v1 = rows.iter().rfind(|(_, id, _)| *id == Some(1)).unwrap();
    assert_eq!(v1.2["v"], "a2", "the change made while the publication missed the table is there");
    // A publication sluice did not create is left as the user made it.
    assert_eq!(
        pg(&format!("SELECT count(*) FROM pg_publication_tables WHERE pubname = '{publ}'"))[0][0].as_deref(),
        Some("2")
    );
}

fn truncates_and_a_table_created_again_reach_the_output(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let t = table("cdc_recreated");
    let publ = format!("p_{t}");
    let _cleanup = Cleanup {
        slots: vec![format!("r_{t}"), format!("rp_{t}")],
        publications: vec![publ.clone(), format!("{publ}_rp")],
        tables: vec![t.clone(), format!("{t}_copy")],
    };
    pg(&format!(
        "CREATE TABLE {t} (id bigint PRIMARY KEY, v text); INSERT INTO {t} SELECT i, 'v' || i FROM generate_series(1, 10) i"
    ));
    let out = dir.path().join("out");
    let to_pg = format!(
        r#"
  - name: rp
    trigger: continuous
    source:
      connection: wh
      object: public.{t}
      options: {{mode: cdc, slot: rp_{t}, publication: {publ}_rp, heartbeat_secs: 1}}
      schema: {{id: int64, v: string}}
    transform: {{sql: "SELECT id, v, _op, _key FROM source"}}
    destination: {{connection: wh, object: public.{t}_copy, options: {{mode: upsert, key: [id], create_table: true}}}}
"#
    );
    let flows = flow("r", &t, &publ, "{id: int64, v: string}", "r.jsonl") + to_pg.as_str();
    let cfg = config(dir.path(), kafka, &flows);
    let file = out.join("r.jsonl");
    let api = format!("127.0.0.1:{}", common::free_port());
    let p = spawn(&["run", &cfg, "--api", &api], dir.path(), &[]);
    let ops = |f: &Path| captured(f).into_iter().map(|(op, id, _)| (op, id)).collect::<Vec<_>>();
    // Both flows' first snapshots are in before the table changes: a slot created later (its
    // creation waits for other sessions' transactions) would never see the changes below.
    let copy_rows = || pg(&format!("SELECT count(*) FROM {t}_copy")).first().and_then(|r| r[0].clone());
    assert!(
        wait_until(Duration::from_secs(60), || ops(&file).len() >= 10
            && pg(&format!("SELECT to_regclass('{t}_copy') IS NOT NULL"))[0][0].as_deref() == Some("t")
            && copy_rows().as_deref() == Some("10")),
        "{}",
        p.stderr_so_far()
    );
    // A TRUNCATE is a change of its own (op t), then new rows.
    pg(&format!("TRUNCATE {t}; INSERT INTO {t} VALUES (20, 'after truncate')"));
    assert!(
        wait_until(Duration::from_secs(60), || ops(&file).contains(&("c".into(), Some(20)))),
        "{}",
        p.stderr_so_far()
    );
    // (The truncate is one record, not ordered against other keys' changes: they are in other
    // partitions.)
    assert!(ops(&file).iter().any(|(op, _)| op == "t"), "a truncate record");
    // Dropped and created again: out of the publication sluice manages. It is added back and
    // resynced: a truncate, then a snapshot of the new table.
    pg(&format!(
        "DROP TABLE {t}; CREATE TABLE {t} (id bigint PRIMARY KEY, v text); INSERT INTO {t} VALUES (30, 'new'), (31, 'new')"
    ));
    assert!(
        wait_until(Duration::from_secs(60), || {
            let s = ops(&file);
            s.contains(&("r".into(), Some(30))) && s.contains(&("r".into(), Some(31)))
        }),
        "the recreated table's rows were not captured:\n{}",
        p.stderr_so_far()
    );
    pg(&format!("INSERT INTO {t} VALUES (32, 'streamed')"));
    assert!(
        wait_until(Duration::from_secs(60), || ops(&file).contains(&("c".into(), Some(32)))),
        "{}",
        p.stderr_so_far()
    );
    // The postgres flow has its own slot and pace: wait for it to get as far.
    let copied = || {
        pg(&format!("SELECT v FROM {t}_copy WHERE id = 32")).first().and_then(|r| r[0].clone()).as_deref()
            == Some("streamed")
    };
    assert!(
        wait_until(Duration::from_secs(60), || copied() && kafka.read_topic(&kafka.topic("rp.dlq")).len() >= 2),
        "{}",
        p.stderr_so_far()
    );
    // How far the CDC source is behind the server's WAL, in bytes: known, and small once
    // caught up (the heartbeat advances the slot on a quiet database).
    let behind = || {
        use std::io::{Read as _, Write as _};
        let mut c = std::net::TcpStream::connect(&api).ok()?;
        c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
        let mut text = String::new();
        c.read_to_string(&mut text).ok()?;
        let line = text.lines().find(|l| l.starts_with("sluice_source_behind_bytes{flow=\"r\"}"))?;
        line.rsplit(' ').next()?.parse::<f64>().ok()
    };
    assert!(wait_until(Duration::from_secs(30), || behind().is_some_and(|b| b < 1_000_000.0)), "{:?}", behind());
    let done = p.terminate(Duration::from_secs(30));
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let seen = ops(&file);
    assert_eq!(seen.iter().filter(|(op, _)| op == "t").count(), 2, "the truncate, and the resync's: {seen:?}");
    // A postgres sink refuses a truncate by default, to the DLQ, saying why.
    let dlq = kafka.read_topic(&kafka.topic("rp.dlq"));
    assert_eq!(dlq.len(), 2, "both truncates dead-lettered by the postgres sink");
    assert!(
        dlq.iter().all(|m| m.headers["sluice.error"].contains("changes arrive in order per key")),
        "{:?}",
        dlq[0].headers
    );
}

fn values_are_exact_toasted_values_survive_and_a_finished_snapshot_is_not_taken_again(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let t = table("cdc_values");
    let copy = format!("{t}_copy");
    let (pf, pc) = (format!("pf_{t}"), format!("pc_{t}"));
    let _cleanup = Cleanup {
        slots: vec![format!("f_{t}"), format!("k_{t}")],
        publications: vec![pf.clone(), pc.clone()],
        tables: vec![t.clone(), copy.clone()],
    };
    // A large value, poorly compressible, is stored out of line (TOASTed).
    pg(&format!(
        "CREATE TABLE {t} (id bigint PRIMARY KEY, amount numeric(20,4), big text, note text);
         INSERT INTO {t} SELECT i, 12345678901234.5678, NULL, 'n' FROM generate_series(1, 20000) i;
         INSERT INTO {t} VALUES (0, 12345678901234.5678, (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 200) g), 'n')"
    ));
    let big: String = pg(&format!("SELECT big FROM {t} WHERE id = 0"))[0][0].clone().unwrap();
    assert_eq!(big.len(), 6400);
    let out = dir.path().join("out");
    let schema = "{id: int64, amount: string, big: string, note: string}";
    let flows = flow("f", &t, &pf, schema, "f.jsonl")
        + format!(
            r#"
  - name: k
    trigger: continuous
    source:
      connection: wh
      object: public.{t}
      options: {{mode: cdc, slot: k_{t}, publication: {pc}, heartbeat_secs: 1}}
      schema: {schema}
    transform:
      sql: SELECT id, amount, big, note, _op, _key FROM source
    destination: {{connection: wh, object: public.{copy}, options: {{mode: upsert, key: [id], create_table: true}}}}
"#
        )
        .as_str();
    let cfg = config(dir.path(), kafka, &flows);
    let file = out.join("f.jsonl");
    let snapshot_done = || {
        kafka.read_topic(&kafka.topic("positions")).iter().any(|m| {
            m.key.as_deref() == Some("f")
                && serde_json::from_slice::<Value>(&m.payload).is_ok_and(|v| v["position"]["snapshot"] == "done")
        })
    };
    let p = spawn(&["run", &cfg], dir.path(), &[]);
    assert!(wait_until(Duration::from_secs(120), snapshot_done), "{}", p.stderr_so_far());
    // Killed right after the snapshot's completion was stored.
    p.kill9();
    let p = spawn(&["run", &cfg], dir.path(), &[]);
    pg(&format!(
        "UPDATE {t} SET note = 'changed' WHERE id = 0; UPDATE {t} SET amount = 98765432109876.5432 WHERE id = 1"
    ));
    let rows_of = |id: i64| captured(&file).into_iter().filter(|(_, i, _)| *i == Some(id)).collect::<Vec<_>>();
    assert!(
        wait_until(Duration::from_secs(60), || rows_of(0).iter().any(|(op, _, _)| op == "u")
            && rows_of(1).iter().any(|(op, _, _)| op == "u")),
        "{}",
        p.stderr_so_far()
    );
    assert!(
        wait_until(Duration::from_secs(60), || pg(&format!("SELECT note FROM {copy} WHERE id = 0"))
            .first()
            .and_then(|r| r[0].clone())
            .as_deref()
            == Some("changed")),
        "{}",
        p.stderr_so_far()
    );
    // Numerics are exact in the snapshot and in the stream, in the changes topic itself.
    let snapshot_row = rows_of(2).into_iter().find(|(op, _, _)| op == "r").unwrap().2;
    assert_eq!(snapshot_row["amount"], "12345678901234.5678");
    let update = rows_of(1).into_iter().find(|(op, _, _)| op == "u").unwrap().2;
    assert_eq!(update["amount"], "98765432109876.5432");
    // The unchanged large value is not null: unavailable under the default replica identity,
    // and the upsert leaves the stored value alone.
    let update = rows_of(0).into_iter().find(|(op, _, _)| op == "u").unwrap().2;
    assert_eq!(update["big"], "__sluice_unavailable_value");
    assert_eq!(pg(&format!("SELECT big FROM {copy} WHERE id = 0"))[0][0].as_deref(), Some(big.as_str()));
    // Under REPLICA IDENTITY FULL the old row carries it, and the change has it whole.
    pg(&format!("ALTER TABLE {t} REPLICA IDENTITY FULL; UPDATE {t} SET note = 'again' WHERE id = 0"));
    assert!(
        wait_until(Duration::from_secs(60), || rows_of(0).iter().any(|(_, _, r)| r["note"] == "again")),
        "{}",
        p.stderr_so_far()
    );
    let again = rows_of(0).into_iter().find(|(_, _, r)| r["note"] == "again").unwrap().2;
    assert_eq!(again["big"].as_str(), Some(big.as_str()));
    let done = p.terminate(Duration::from_secs(30));
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    // The snapshot was taken once: 20,001 reads in the changes topic, not one more.
    let reads = kafka
        .read_topic(&kafka.topic("f.changes"))
        .iter()
        .filter(|m| serde_json::from_slice::<Value>(&m.payload).is_ok_and(|v| v["op"] == "r"))
        .count();
    assert_eq!(reads, 20_001, "a crash right after the snapshot must not repeat it");
    let by_op: BTreeMap<String, usize> = captured(&file).into_iter().fold(BTreeMap::new(), |mut m, (op, _, _)| {
        *m.entry(op).or_insert(0) += 1;
        m
    });
    eprintln!("cdc values: captured {by_op:?}; snapshot taken once (20001 reads) across a kill -9");
}

#[test]
fn one_process_holds_an_embedded_data_directory_and_others_read_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "c.yaml",
        r#"
kafka: {embedded: {data_dir: .sluice/data}}
connections:
  gen: {type: generate}
  out: {type: file, path: out}
flows:
  - name: steady
    trigger: continuous
    source: {connection: gen, object: o, options: {rate_per_sec: 100}}
    destination: {connection: out, object: steady.jsonl}
"#,
    );
    let p = spawn(&["run", &cfg], dir.path(), &[]);
    let file = dir.path().join("out/steady.jsonl");
    assert!(wait_until(Duration::from_secs(60), || read_jsonl(&file).0.len() > 10), "{}", p.stderr_so_far());
    let second = run(&["run", &cfg], dir.path(), &[], LIMIT);
    assert_eq!(second.code(), Some(1), "{}", second.stderr);
    assert!(second.stderr.contains("is in use by another sluice process"), "{}", second.stderr);
    assert!(second.stderr.contains(&format!("process {}", p.pid())), "{}", second.stderr);
    // `status` reads through the running broker instead of starting a second one.
    let status = run(&["status", &cfg], dir.path(), &[], LIMIT);
    assert_eq!(status.code(), Some(0), "{}", status.stderr);
    assert!(status.stdout.contains("flow steady: running"), "{}", status.stdout);
    let done = p.terminate(Duration::from_secs(30));
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
}

/// The slot exists before the snapshot is read (another process made it and died, or a user
/// did), and the table changed in between: those changes are in the snapshot and still ahead
/// in the slot. Each row must arrive in order — its snapshot copy, then only later changes —
/// not the snapshot's newer value followed by the older changes again.
fn a_snapshot_taken_after_the_slot_skips_the_changes_it_already_holds(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let t = table("cdc_late_snapshot");
    let (publ, slot) = (format!("p_{t}"), format!("s_{t}"));
    let _cleanup = Cleanup { slots: vec![slot.clone()], publications: vec![publ.clone()], tables: vec![t.clone()] };
    pg(&format!(
        "CREATE TABLE {t} (id bigint PRIMARY KEY, v bigint);
         INSERT INTO {t} SELECT i, 0 FROM generate_series(1, 50) i;
         CREATE PUBLICATION {publ} FOR TABLE {t}"
    ));
    pg(&format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"));
    // Two transactions after the slot, before any snapshot.
    pg(&format!("UPDATE {t} SET v = 1"));
    pg(&format!("UPDATE {t} SET v = 2 WHERE id <= 25"));
    let out = dir.path().join("out");
    let flows = flow("s", &t, &publ, "{id: int64, v: int64}", "s.jsonl");
    let cfg = config(dir.path(), kafka, &flows);
    let p = spawn(&["run", &cfg], dir.path(), &[]);
    let file = out.join("s.jsonl");
    assert!(wait_until(LIMIT, || captured(&file).len() >= 50), "{}", p.stderr_so_far());
    // A change after the snapshot still streams.
    pg(&format!("UPDATE {t} SET v = 3 WHERE id % 2 = 0"));
    assert!(
        wait_until(LIMIT, || captured(&file).iter().filter(|r| r.2["v"] == 3).count() >= 25),
        "{}",
        p.stderr_so_far()
    );
    let done = p.terminate(Duration::from_secs(30));
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let mut seen: BTreeMap<i64, Vec<(String, i64)>> = BTreeMap::new();
    for (op, id, row) in captured(&file) {
        seen.entry(id.unwrap()).or_default().push((op, row["v"].as_i64().unwrap()));
    }
    assert_eq!(seen.len(), 50);
    for (id, changes) in &seen {
        let expected_snapshot = if *id <= 25 { 2 } else { 1 };
        let mut expected = vec![("r".to_owned(), expected_snapshot)];
        if id % 2 == 0 {
            expected.push(("u".to_owned(), 3));
        }
        assert_eq!(changes, &expected, "row {id}: its snapshot copy, then only later changes");
    }
}

/// Lines in a file so far (a cheap count while it grows).
fn lines(file: &Path) -> usize {
    std::fs::read(file).map(|b| b.iter().filter(|&&c| c == b'\n').count()).unwrap_or(0)
}

fn a_large_transaction_streams_in_pieces_and_a_kill_inside_it_resumes_there(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let t = table("cdc_large_txn");
    let flow_name = "big";
    let slot = format!("{flow_name}_{t}");
    let publ = format!("p_{t}");
    let _cleanup = Cleanup { slots: vec![slot.clone()], publications: vec![publ.clone()], tables: vec![t.clone()] };
    pg(&format!("CREATE TABLE {t} (id bigint PRIMARY KEY, v text); INSERT INTO {t} VALUES (0, 'first')"));
    let flows = flow(flow_name, &t, &publ, "{id: int64, v: string}", "big.jsonl");
    let cfg = config(dir.path(), kafka, &flows);
    let file = dir.path().join("out").join("big.jsonl");
    let p = spawn(&["run", &cfg], dir.path(), &[]);
    assert!(wait_until(LIMIT, || lines(&file) >= 1), "{}", p.stderr_so_far());
    // One transaction of N rows: its records are handed out (and written) before the source
    // has read all of it, and a kill lands in its middle.
    let n: usize = 100_000;
    pg(&format!("INSERT INTO {t} SELECT i, repeat('x', 100) || i FROM generate_series(1, {n}) i"));
    assert!(wait_until(LIMIT, || lines(&file) > 1 + n / 10), "{}", p.stderr_so_far());
    let at_kill = lines(&file);
    p.kill9();
    assert!(at_kill < 1 + n, "the whole transaction was through before the kill ({at_kill} lines): nothing tested");
    // The positions stored name a place inside the transaction, not just the one before it.
    let stored: Vec<Value> = kafka
        .read_topic(&kafka.topic("positions"))
        .iter()
        .filter(|m| m.key.as_deref() == Some(flow_name))
        .map(|m| serde_json::from_slice::<Value>(&m.payload).unwrap()["position"].clone())
        .collect();
    let inside = stored.iter().filter(|p| p.get("txn").is_some()).count();
    assert!(inside > 0, "no position inside the transaction was stored: {stored:?}");
    let p = spawn(&["run", &cfg], dir.path(), &[]);
    // Every row arrives (the oracle: each id of the transaction at least once, in order per key).
    assert!(
        wait_until(LIMIT, || {
            let (rows, _) = read_jsonl(&file);
            rows.iter().filter_map(|r| r["id"].as_i64()).collect::<std::collections::BTreeSet<_>>().len() == 1 + n
        }),
        "{} distinct rows of {}:\n{}",
        read_jsonl(&file).0.iter().filter_map(|r| r["id"].as_i64()).collect::<std::collections::BTreeSet<_>>().len(),
        1 + n,
        p.stderr_so_far()
    );
    let done = p.terminate(Duration::from_secs(30));
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let (rows, _) = read_jsonl(&file);
    for r in &rows {
        let id = r["id"].as_i64().unwrap();
        let want = if id == 0 { "first".to_owned() } else { format!("{}{id}", "x".repeat(100)) };
        assert_eq!(r["v"].as_str(), Some(want.as_str()), "row {id}");
        assert_eq!(r["op"].as_str(), Some(if id == 0 { "r" } else { "c" }), "row {id}");
    }
    // Resuming inside the transaction passes over what the last stored position says is done:
    // in the changes topic, those rows of the transaction are there once, not sent again from
    // its start. (The rows are inserted, so decoded, in id order.)
    let done_at = stored.iter().filter_map(|p| p["txn"]["changes"].as_i64()).max().unwrap();
    let mut in_topic: BTreeMap<i64, usize> = BTreeMap::new();
    for m in kafka.read_topic(&kafka.topic(&format!("{flow_name}.changes"))) {
        let envelope: Value = serde_json::from_slice(&m.payload).unwrap();
        *in_topic.entry(envelope["after"]["id"].as_i64().unwrap()).or_default() += 1;
    }
    assert_eq!(in_topic.len(), 1 + n, "every row is in the changes topic");
    let twice = (1..=done_at).filter(|id| in_topic[id] != 1).count();
    assert_eq!(twice, 0, "rows 1..={done_at} (done by the stored position) were published again");
    let again = rows.len() - (1 + n);
    eprintln!(
        "{} rows, {again} delivered twice after a kill at {at_kill}; {inside} positions inside the transaction, \
         the last at change {done_at}",
        rows.len()
    );
}

crate::on_both_brokers!(
    a_large_transaction_streams_in_pieces_and_a_kill_inside_it_resumes_there,
    a_snapshot_taken_after_the_slot_skips_the_changes_it_already_holds,
    a_publication_that_misses_the_table_is_refused_and_other_tables_stay_out,
    truncates_and_a_table_created_again_reach_the_output,
    values_are_exact_toasted_values_survive_and_a_finished_snapshot_is_not_taken_again,
);
