//! Values of every kind end to end, through a real broker: a PostgreSQL table with exact
//! numerics, jsonb, arrays, uuids, bytea, timestamptz, special floats and NULLs, copied by CDC
//! (snapshot and stream) and by a pull into tables the sink creates, compared with the source
//! value by value as PostgreSQL prints them; nested JSON through SQL to JSON lines; and nested
//! JSON to Parquet on the S3 server, read back by pyarrow (an independent reader).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::kafka::Kafka;
use common::pg::{Cleanup, pg, table};
use common::{read_jsonl, run, spawn, wait_until, write};

/// Every column as PostgreSQL prints it, by id.
fn rows(t: &str) -> Vec<Vec<Option<String>>> {
    pg(&format!(
        "SELECT id::text, amount::text, doc::text, tags::text, ref::text, encode(raw, 'hex'), at::text, ratio::text, \
         day::text FROM {t} ORDER BY id"
    ))
}

/// The types the sink gave a table's columns.
fn column_types(t: &str) -> Vec<Vec<Option<String>>> {
    pg(&format!(
        "SELECT column_name, format_type(atttypid, atttypmod) FROM information_schema.columns c \
         JOIN pg_attribute a ON a.attrelid = '{t}'::regclass AND a.attname = c.column_name \
         WHERE c.table_name = '{t}' ORDER BY c.ordinal_position"
    ))
}

fn postgres_values_of_every_kind_arrive_exactly_through_cdc_and_a_pull(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let t = table("types");
    let (cdc, pulled) = (format!("{t}_cdc"), format!("{t}_pull"));
    let _cleanup = Cleanup {
        slots: vec![t.clone()],
        publications: vec![t.clone()],
        tables: vec![t.clone(), cdc.clone(), pulled.clone()],
    };
    pg(&format!(
        r#"CREATE TABLE {t} (id bigint PRIMARY KEY, amount numeric(20,4), doc jsonb, tags text[], ref uuid, raw bytea,
             at timestamptz, ratio double precision, day date);
           INSERT INTO {t} VALUES
             (1, 12345678901234.5678, '{{"a": {{"b": [1, 2.5, "x"]}}, "n": null}}', '{{a,"b c",NULL}}',
              'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\x00ff10', '2024-05-01 10:00:00.123456+02', 'NaN', '2024-02-29'),
             (2, -0.0001, '[1, "two", {{"three": 3}}]', '{{}}', NULL, '\x', '1970-01-01 00:00:00+00', 'Infinity', NULL),
             (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
           CREATE PUBLICATION "{t}" FOR TABLE {t}"#
    ));
    let schema = r#"{id: int64, amount: "decimal(20,4)", doc: json, tags: list<string>, ref: uuid, raw: bytes, at: timestamp(us), ratio: float64, day: date}"#;
    let columns = "id, amount, doc, tags, ref, raw, at, ratio, day";
    let cfg = write(
        dir.path(),
        "types.yaml",
        &format!(
            r#"
kafka: {{{kafka}}}
connections:
  wh: {{type: postgres, database: postgres, user: postgres}}
flows:
  - name: cdc
    trigger: continuous
    source:
      connection: wh
      object: public.{t}
      options: {{mode: cdc, slot: {t}, publication: {t}, heartbeat_secs: 1}}
      schema: {schema}
    transform:
      sql: SELECT {columns}, _op, _key FROM source
    destination: {{connection: wh, object: public.{cdc}, options: {{mode: upsert, key: [id], create_table: true}}}}
    batch: {{linger_ms: 20}}
  - name: pull
    source:
      connection: wh
      object: public.{t}
      options: {{mode: complete}}
    transform:
      sql: SELECT {columns} FROM source
    destination: {{connection: wh, object: public.{pulled}, options: {{create_table: true}}}}
"#,
            kafka = kafka.yaml(),
        ),
    );
    // The pull declares no columns: they are read from the table, as `validate` and
    // `describe` show.
    let wanted = [
        "id: int64",
        "amount: decimal(20,4)",
        "doc: json",
        "tags: list<string>",
        "ref: uuid",
        "raw: bytes",
        "at: timestamp(us)",
        "ratio: float64",
        "day: date",
    ];
    let v = run(&["validate", &cfg], dir.path(), &[], Duration::from_secs(60));
    assert_eq!(v.code(), Some(0), "{}{}", v.stdout, v.stderr);
    let listed = |out: &str| {
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        wanted.iter().all(|w| lines.contains(w))
    };
    let pull_part = v.stdout.split("flow pull").nth(1).unwrap_or_default();
    assert!(pull_part.contains("source columns (read from wh):") && listed(pull_part), "{}", v.stdout);
    let d = run(&["describe", &cfg, "wh", &format!("public.{t}")], dir.path(), &[], Duration::from_secs(60));
    assert_eq!(d.code(), Some(0), "{}{}", d.stdout, d.stderr);
    assert!(d.stdout.starts_with(&format!("{t} (9 columns)")) && listed(&d.stdout), "{}", d.stdout);
    let d = run(&["describe", &cfg, "wh"], dir.path(), &[], Duration::from_secs(60));
    assert!(d.stdout.lines().any(|l| l == format!("{t} (9 columns)")), "every table listed: {}", d.stdout);
    let d = run(&["describe", &cfg, "wh", "public.no_such_table"], dir.path(), &[], Duration::from_secs(60));
    assert_eq!(d.code(), Some(1));
    assert!(d.stderr.contains("no table or view `public.no_such_table`"), "{}", d.stderr);

    let p = spawn(&["run", &cfg], dir.path(), &[]);
    let copied = |to: &str, n: usize| {
        pg(&format!("SELECT count(*) FROM pg_tables WHERE tablename = '{to}'"))[0][0].as_deref() == Some("1")
            && pg(&format!("SELECT count(*) FROM {to}"))[0][0].as_deref() == Some(n.to_string().as_str())
    };
    assert!(wait_until(Duration::from_secs(120), || copied(&cdc, 3) && copied(&pulled, 3)), "{}", p.stderr_so_far());
    // Changes in the stream, with values of every kind.
    pg(&format!(
        r#"UPDATE {t} SET amount = 98765432109876.5432, doc = '{{"changed": true}}', tags = '{{x}}', raw = '\xdeadbeef',
             ratio = '-Infinity' WHERE id = 2;
           INSERT INTO {t} VALUES (4, 0.5, '"text"', '{{"with,comma","with\"quote"}}', '00000000-0000-0000-0000-000000000000',
             '\x0a0d', '2262-04-11 23:47:16.854775+00', 1e-300, '0001-01-01')"#
    ));
    let same = || rows(&cdc) == rows(&t);
    assert!(wait_until(Duration::from_secs(60), same), "{:?}\n{:?}\n{}", rows(&cdc), rows(&t), p.stderr_so_far());
    let done = p.terminate(Duration::from_secs(30));
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    // The pull copied the table as it was before the changes: rows 1 and 3 stand unchanged.
    let (before, now) = (rows(&pulled), rows(&t));
    assert_eq!(before.len(), 3);
    assert_eq!(before[0], now[0]);
    assert_eq!(before[2], now[2]);
    let expected = [
        ("id", "bigint"),
        ("amount", "numeric(20,4)"),
        ("doc", "jsonb"),
        ("tags", "text[]"),
        ("ref", "uuid"),
        ("raw", "bytea"),
        ("at", "timestamp with time zone"),
        ("ratio", "double precision"),
        ("day", "date"),
    ];
    for copy in [&cdc, &pulled] {
        let types: Vec<(String, String)> =
            column_types(copy).into_iter().map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap())).collect();
        let want: Vec<(String, String)> = expected.iter().map(|(n, t)| ((*n).to_owned(), (*t).to_owned())).collect();
        assert_eq!(types, want, "{copy}");
    }
    eprintln!("types: 4 rows of 9 kinds copied exactly by CDC (snapshot + stream) and 3 by a pull");
}

/// Writes `lines` to `in/orders.jsonl` below `dir`; the folder, for a `file` connection.
fn orders(dir: &std::path::Path, lines: &[String]) -> std::path::PathBuf {
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("orders.jsonl"), lines.join("\n") + "\n").unwrap();
    input
}

fn nested_json_lines_through_sql_keep_their_shape(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let mut lines: Vec<String> = (0..500)
        .map(|i| {
            format!(
                r#"{{"id":{i},"customer":{{"name":"c{i}","address":{{"city":"{city}"}}}},"items":[{{"sku":{i},"price":"{i}.25"}},{{"sku":{j},"price":"0.10"}}],"attrs":{{"k":"v{i}"}}}}"#,
                city = if i % 2 == 0 { "Paris" } else { "Lyon" },
                j = i + 1000
            )
        })
        .collect();
    // One line whose city is a number: it goes to the DLQ naming the path, the rest flow.
    lines.push(r#"{"id":9999,"customer":{"name":"bad","address":{"city":7}},"items":[]}"#.to_owned());
    let input = orders(dir.path(), &lines);
    let cfg = write(
        dir.path(),
        "nested.yaml",
        &format!(
            r#"
kafka: {{{kafka}}}
connections:
  in: {{type: file, path: {input}}}
  out: {{type: file, path: {out}}}
flows:
  - name: nested
    source:
      connection: in
      object: orders.jsonl
      schema:
        id: int64
        customer: {{struct: {{name: string, address: {{struct: {{city: string}}}}}}}}
        items: {{list: {{struct: {{sku: int64, price: "decimal(10,2)"}}}}}}
        attrs: {{map: string}}
    transform:
      sql: >
        SELECT id, customer['address']['city'] AS city, item['sku'] AS sku, item['price'] * 2 AS double_price,
               named_struct('name', customer['name'], 'k', attrs['k']) AS who
        FROM (SELECT *, unnest(items) AS item FROM source) WHERE customer['address']['city'] = 'Paris'
    destination: {{connection: out, object: nested.jsonl}}
"#,
            kafka = kafka.yaml(),
            input = input.display(),
            out = dir.path().join("out").display(),
        ),
    );
    let done = run(&["run", &cfg], dir.path(), &[], Duration::from_secs(120));
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let (rows, bad) = read_jsonl(&dir.path().join("out/nested.jsonl"));
    assert_eq!(bad, 0);
    // Decimals are written with their scale, exactly (a JSON reader's float hides that).
    let raw = std::fs::read_to_string(dir.path().join("out/nested.jsonl")).unwrap();
    assert!(raw.contains(r#""sku":0,"double_price":0.50,"#) && raw.contains(r#""double_price":0.20,"#), "{raw:.400}");
    // 250 Paris orders, two items each; every row checked.
    assert_eq!(rows.len(), 500);
    for r in &rows {
        let id = r["id"].as_i64().unwrap();
        assert_eq!(id % 2, 0);
        assert_eq!(r["city"], "Paris");
        let sku = r["sku"].as_i64().unwrap();
        let price = r["double_price"].as_f64().unwrap();
        if sku == id {
            assert_eq!(price, (id * 2) as f64 + 0.5, "{r}");
        } else {
            assert_eq!((sku, price), (id + 1000, 0.2), "{r}");
        }
        assert_eq!(r["who"], serde_json::json!({"name": format!("c{id}"), "k": format!("v{id}")}));
    }
    let dlq = kafka.read_topic(&kafka.topic("nested.dlq"));
    assert_eq!(dlq.len(), 1, "the line with a number for a city is dead-lettered");
    assert!(dlq[0].headers["sluice.error"].contains("customer.address.city: expected text"), "{:?}", dlq[0].headers);
}

fn nested_parquet_on_s3_is_read_back_by_pyarrow_with_its_schema(kafka: &mut Kafka) {
    let py = common::python_with("pyarrow");
    let s3 = common::s3::start_s3();
    std::fs::create_dir_all(s3.dir.path().join("lake-nested")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..300)
        .map(|i| {
            format!(
                r#"{{"id":{i},"customer":{{"name":"c{i}","address":{{"city":"city{c}"}}}},"items":[{{"sku":{i},"price":"{i}.25"}},{{"sku":{j},"price":0.1}}],"attrs":{{"k":"v{i}"}},"amount":"12345678901234.{i:04}"}}"#,
                c = i % 7,
                j = i + 1000,
            )
        })
        .collect();
    let input = orders(dir.path(), &lines);
    let cfg = write(
        dir.path(),
        "parquet.yaml",
        &format!(
            r#"
kafka: {{{kafka}}}
connections:
  in: {{type: file, path: {input}}}
  lake: {{type: s3, endpoint: "{s3}", allow_private_addresses: true, path_style: true, access_key_id: {access}, secret_access_key: "{secret}"}}
flows:
  - name: toparquet
    source:
      connection: in
      object: orders.jsonl
      schema:
        id: int64
        customer: {{struct: {{name: string, address: {{struct: {{city: string}}}}}}}}
        items: {{list: {{struct: {{sku: int64, price: "decimal(10,2)"}}}}}}
        attrs: {{map: string}}
        amount: "decimal(20,4)"
    transform:
      sql: SELECT id, customer, items, attrs, amount FROM source
    destination: {{connection: lake, object: lake-nested, options: {{format: parquet}}}}
"#,
            kafka = kafka.yaml(),
            input = input.display(),
            s3 = s3.url,
            access = common::s3::ACCESS,
            secret = common::s3::SECRET,
        ),
    );
    let done = run(&["run", &cfg], dir.path(), &[], Duration::from_secs(120));
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    // pyarrow reads every object the server stored and prints the schema and the rows.
    let script = r#"
import glob, json, sys
import pyarrow.parquet as pq, pyarrow as pa
files = sorted(f for f in glob.glob(sys.argv[1] + "/**/*.parquet", recursive=True))
t = pa.concat_tables([pq.read_table(f) for f in files])
print(json.dumps({"files": len(files), "schema": [f"{f.name}: {f.type}" for f in t.schema],
                  "rows": sorted(t.to_pylist(), key=lambda r: r["id"])}, default=str))
"#;
    let out =
        std::process::Command::new(&py).args(["-c", script]).arg(s3.dir.path().join("lake-nested")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let schema: Vec<&str> = v["schema"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert_eq!(
        schema,
        vec![
            "id: int64",
            "customer: struct<name: string, address: struct<city: string>>",
            "items: list<item: struct<sku: int64, price: decimal128(10, 2)>>",
            "attrs: map<string, string ('attrs')>",
            "amount: decimal128(20, 4)",
        ],
        "{v}"
    );
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 300);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["id"], i as i64);
        assert_eq!(r["customer"]["address"]["city"], format!("city{}", i % 7));
        assert_eq!(r["items"][0], serde_json::json!({"sku": i, "price": format!("{i}.25")}));
        assert_eq!(r["items"][1], serde_json::json!({"sku": i + 1000, "price": "0.10"}));
        assert_eq!(r["attrs"], serde_json::json!([["k", format!("v{i}")]]));
        assert_eq!(r["amount"], format!("12345678901234.{i:04}"));
    }
    eprintln!("types: 300 nested rows to Parquet in {} object(s), read back by pyarrow exactly", v["files"]);
}

crate::on_both_brokers!(
    postgres_values_of_every_kind_arrive_exactly_through_cdc_and_a_pull,
    nested_json_lines_through_sql_keep_their_shape,
    nested_parquet_on_s3_is_read_back_by_pyarrow_with_its_schema,
);
