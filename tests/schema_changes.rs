//! A column added to a PostgreSQL table under running CDC flows, through a real broker, with
//! each `schema_changes` policy: `evolve` (columns read from the table) plans the new column in
//! and the postgres sink adds it to its table, exactly typed; `ignore` leaves it out and says
//! so; `fail` stops its flow naming the column, with nothing of that batch delivered, and a
//! restart under `evolve` delivers it. A column dropped mid-stream: the source says so as the
//! relation changes, `ignore` reads it as null and says so once, `fail` stops naming it.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::kafka::Kafka;
use common::pg::{Cleanup, pg, table};
use common::{read_jsonl, spawn, wait_until, write};

/// One continuous CDC flow from `t` per policy, each with its own slot. `fail` comes first:
/// `run` reports a flow's failure when it has reported those before it.
fn config(kafka: &Kafka, t: &str, out: &std::path::Path, fail_policy: &str) -> String {
    format!(
        r#"
kafka: {{{kafka}}}
connections:
  wh: {{type: postgres, database: postgres, user: postgres}}
  out: {{type: file, path: {out}}}
flows:
  - name: fail
    trigger: continuous
    source:
      connection: wh
      object: public.{t}
      options: {{mode: cdc, slot: {t}_f, publication: {t}, heartbeat_secs: 1}}
      schema: {{id: int64, name: string}}
      schema_changes: {fail_policy}
    destination: {{connection: out, object: fail.jsonl}}
    batch: {{linger_ms: 20}}
  - name: evolve
    trigger: continuous
    source:
      connection: wh
      object: public.{t}
      options: {{mode: cdc, slot: {t}_e, publication: {t}, heartbeat_secs: 1}}
    destination: {{connection: wh, object: public.{t}_copy, options: {{mode: upsert, key: [id], create_table: true}}}}
    batch: {{linger_ms: 20}}
  - name: ignore
    trigger: continuous
    source:
      connection: wh
      object: public.{t}
      options: {{mode: cdc, slot: {t}_i, publication: {t}, heartbeat_secs: 1}}
      schema: {{id: int64, name: string}}
    destination: {{connection: out, object: ignore.jsonl}}
    batch: {{linger_ms: 20}}
"#,
        kafka = kafka.yaml(),
        out = out.display(),
    )
}

fn a_column_added_mid_stream_follows_each_policy(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let t = table("evolving");
    let copy = format!("{t}_copy");
    let _cleanup = Cleanup {
        slots: vec![format!("{t}_e"), format!("{t}_i"), format!("{t}_f")],
        publications: vec![t.clone()],
        tables: vec![t.clone(), copy.clone()],
    };
    pg(&format!(
        "CREATE TABLE {t} (id bigint PRIMARY KEY, name text); INSERT INTO {t} VALUES (1, 'a'); \
         CREATE PUBLICATION \"{t}\" FOR TABLE {t}"
    ));
    let cfg = write(dir.path(), "c.yaml", &config(kafka, &t, &out, "fail"));
    let copied = |n: usize| {
        pg(&format!("SELECT count(*) FROM pg_tables WHERE tablename = '{copy}'"))[0][0].as_deref() == Some("1")
            && pg(&format!("SELECT count(*) FROM {copy}"))[0][0].as_deref() == Some(n.to_string().as_str())
    };
    let lines = |name: &str| read_jsonl(&out.join(name)).0;
    let p = spawn(&["run", &cfg], dir.path(), &[]);
    let started = || copied(1) && lines("ignore.jsonl").len() == 1 && lines("fail.jsonl").len() == 1;
    assert!(wait_until(Duration::from_secs(120), started), "{}", p.stderr_so_far());

    pg(&format!("ALTER TABLE {t} ADD COLUMN amount numeric(10,2); INSERT INTO {t} VALUES (2, 'b', 1.50)"));
    // evolve: the copy gains the column, typed as the source's, with the exact value.
    assert!(wait_until(Duration::from_secs(60), || copied(2)), "{}", p.stderr_so_far());
    let amounts = pg(&format!("SELECT id::text, amount::text FROM {copy} ORDER BY id"));
    assert_eq!(amounts, vec![vec![Some("1".into()), None], vec![Some("2".into()), Some("1.50".into())]]);
    let types = pg(&format!(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = '{copy}'::regclass AND attname = 'amount'"
    ));
    assert_eq!(types[0][0].as_deref(), Some("numeric(10,2)"));
    // ignore: the row without the column, and a word in the log.
    assert!(wait_until(Duration::from_secs(60), || lines("ignore.jsonl").len() == 2), "{}", p.stderr_so_far());
    assert_eq!(lines("ignore.jsonl")[1], serde_json::json!({"id": 2, "name": "b"}));
    assert!(
        p.stderr_so_far().contains("column `amount` in the source's rows is not in the flow's schema and is left out")
    );
    // fail: the flow stops naming the column; row 2 is not delivered.
    assert!(
        wait_until(Duration::from_secs(60), || p
            .stderr_so_far()
            .contains("column(s) `amount` that the flow's schema does not (schema_changes: fail)")),
        "{}",
        p.stderr_so_far()
    );
    let done = p.terminate(Duration::from_secs(30));
    assert_eq!(lines("fail.jsonl").len(), 1, "nothing of the failed batch delivered");

    // Restarted under `evolve`, the failed flow delivers the row it stopped at, with the column
    // typed as the table has it (asked again when the column appears).
    let cfg = write(dir.path(), "c.yaml", &config(kafka, &t, &out, "evolve"));
    let p = spawn(&["run", &cfg, "--flow", "fail"], dir.path(), &[]);
    assert!(
        wait_until(Duration::from_secs(90), || lines("fail.jsonl").len() == 2),
        "{}\n{}",
        done.stderr,
        p.stderr_so_far()
    );
    let text = std::fs::read_to_string(out.join("fail.jsonl")).unwrap();
    assert_eq!(text.lines().nth(1), Some(r#"{"id":2,"name":"b","amount":1.50}"#), "exact, as numeric(10,2)");
    p.terminate(Duration::from_secs(30));
    eprintln!("schema changes: evolve added numeric(10,2) to the copy, ignore left it out, fail stopped and resumed");
}

crate::on_both_brokers!(a_column_added_mid_stream_follows_each_policy);

/// A continuous CDC flow from `t` with `schema_changes: fail` and one with `ignore`, both with
/// the declared `schema`, each writing `NAME.jsonl` under `out`.
fn fail_and_ignore(kafka: &Kafka, t: &str, out: &std::path::Path, schema: &str) -> String {
    let flow = |name: &str, slot: &str| {
        format!(
            r#"
  - name: {name}
    trigger: continuous
    source:
      connection: wh
      object: public.{t}
      options: {{mode: cdc, slot: {t}_{slot}, publication: {t}, heartbeat_secs: 1}}
      schema: {schema}
      schema_changes: {name}
    destination: {{connection: out, object: {name}.jsonl}}
    batch: {{linger_ms: 20}}"#
        )
    };
    format!(
        "kafka: {{{kafka}}}\nconnections:\n  wh: {{type: postgres, database: postgres, user: postgres}}\n  \
         out: {{type: file, path: {out}}}\nflows:{fail}{ignore}\n",
        kafka = kafka.yaml(),
        out = out.display(),
        fail = flow("fail", "f"),
        ignore = flow("ignore", "i"),
    )
}

/// A table under the two flows of [`fail_and_ignore`], running, each having delivered the
/// table's first row; the table, its slots and publication dropped at the end.
struct Watched {
    /// The table.
    t: String,
    /// The running `sluice run`.
    p: common::Sluice,
    /// Where the flows write.
    out: std::path::PathBuf,
    _cleanup: Cleanup,
    _dir: tempfile::TempDir,
}

impl Watched {
    /// Creates table `name` (`id bigint PRIMARY KEY` and `columns`) holding `(1, first)`, and
    /// runs the flows with the declared `schema` until both delivered it.
    fn start(kafka: &Kafka, name: &str, columns: &str, first: &str, schema: &str) -> Watched {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let t = table(name);
        let cleanup = Cleanup {
            slots: vec![format!("{t}_i"), format!("{t}_f")],
            publications: vec![t.clone()],
            tables: vec![t.clone()],
        };
        pg(&format!(
            "CREATE TABLE {t} (id bigint PRIMARY KEY, {columns}); INSERT INTO {t} VALUES (1, {first}); \
             CREATE PUBLICATION \"{t}\" FOR TABLE {t}"
        ));
        let cfg = write(dir.path(), "c.yaml", &fail_and_ignore(kafka, &t, &out, schema));
        let p = spawn(&["run", &cfg], dir.path(), &[]);
        let w = Watched { t, p, out, _cleanup: cleanup, _dir: dir };
        let started = || w.lines("ignore.jsonl").len() == 1 && w.lines("fail.jsonl").len() == 1;
        assert!(wait_until(Duration::from_secs(120), started), "{}", w.p.stderr_so_far());
        w
    }

    /// The rows flow file `name` holds.
    fn lines(&self, name: &str) -> Vec<serde_json::Value> {
        read_jsonl(&self.out.join(name)).0
    }
}

fn a_column_dropped_mid_stream_reads_as_null_or_stops_the_flow(kafka: &mut Kafka) {
    let Watched { t, p, out, _cleanup, _dir } = Watched::start(
        kafka,
        "shrinking",
        "name text, note text",
        "'a', 'x'",
        "{id: int64, name: string, note: string}",
    );
    let lines = |name: &str| read_jsonl(&out.join(name)).0;
    assert_eq!(lines("ignore.jsonl")[0], serde_json::json!({"id": 1, "name": "a", "note": "x"}));

    pg(&format!("ALTER TABLE {t} DROP COLUMN note; INSERT INTO {t} VALUES (2, 'b')"));
    // ignore: the row with the column null, and a word in the log; the source said it too.
    assert!(wait_until(Duration::from_secs(60), || lines("ignore.jsonl").len() == 2), "{}", p.stderr_so_far());
    assert_eq!(lines("ignore.jsonl")[1], serde_json::json!({"id": 2, "name": "b", "note": null}));
    let said = p.stderr_so_far();
    assert!(
        said.contains("column `note` of the flow's schema is not in the source's rows (dropped upstream?)"),
        "{said}"
    );
    assert!(said.contains(&format!("table public.{t} changed while captured: column `note` dropped")), "{said}");
    // fail: the flow stops naming the column; row 2 is not delivered.
    assert!(
        wait_until(Duration::from_secs(60), || p
            .stderr_so_far()
            .contains("no longer have column(s) `note` of the flow's schema — dropped upstream?")),
        "{}",
        p.stderr_so_far()
    );
    p.terminate(Duration::from_secs(30));
    assert_eq!(lines("fail.jsonl").len(), 1, "nothing of the failed batch delivered");
    eprintln!("schema changes: a dropped column read as null under ignore, stopped the flow under fail");
}

crate::on_both_brokers!(a_column_dropped_mid_stream_reads_as_null_or_stops_the_flow);

fn a_column_retyped_mid_stream_stops_the_flow_under_fail(kafka: &mut Kafka) {
    let Watched { t, p, out, _cleanup, _dir } =
        Watched::start(kafka, "retyped", "qty int4", "5", "{id: int64, qty: int64}");
    let lines = |name: &str| read_jsonl(&out.join(name)).0;

    pg(&format!("ALTER TABLE {t} ALTER COLUMN qty TYPE text; INSERT INTO {t} VALUES (2, 'many'), (3, '7')"));
    // ignore: the source names the change; the value that no longer fits goes to the DLQ with
    // its reason, the one that still does is delivered.
    assert!(wait_until(Duration::from_secs(60), || lines("ignore.jsonl").len() == 2), "{}", p.stderr_so_far());
    assert_eq!(lines("ignore.jsonl")[1], serde_json::json!({"id": 3, "qty": 7}));
    let dlq = kafka.read_topic(&kafka.topic("ignore.dlq"));
    assert_eq!(dlq.len(), 1, "row 2 dead-lettered");
    assert!(
        p.stderr_so_far()
            .contains(&format!("table public.{t} changed while captured: column `qty` retyped int4 → text"))
    );
    // fail: the flow stops naming the change, before anything after it is published.
    assert!(
        wait_until(Duration::from_secs(60), || p.stderr_so_far().contains(
            "column `qty` retyped int4 → text (schema_changes: fail); nothing after the change was published"
        )),
        "{}",
        p.stderr_so_far()
    );
    p.terminate(Duration::from_secs(30));
    assert_eq!(lines("fail.jsonl").len(), 1, "nothing after the change delivered");
    assert!(kafka.read_topic(&kafka.topic("fail.changes")).len() == 1, "nothing after the change published");
    eprintln!("schema changes: a retyped column stopped the flow under fail, dead-lettered its misfits under ignore");
}

crate::on_both_brokers!(a_column_retyped_mid_stream_stops_the_flow_under_fail);
