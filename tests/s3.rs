//! The `s3` sink against a real S3-protocol server process (s3s-fs, which `scripts/test`
//! installs), read back with aws-sdk-s3 and the parquet crate.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::kafka::Kafka;
use common::s3::{ACCESS, SECRET, start_s3};
use common::{counts_of, run, spawn, wait_until, write};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(180);
fn client(url: &str, rt: &tokio::runtime::Runtime) -> aws_sdk_s3::Client {
    let _guard = rt.enter();
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(ACCESS, SECRET, None, None, "test"))
        .endpoint_url(url)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Every object of `bucket`: key -> bytes.
fn objects(c: &aws_sdk_s3::Client, rt: &tokio::runtime::Runtime, bucket: &str) -> HashMap<String, Vec<u8>> {
    rt.block_on(async {
        let mut out = HashMap::new();
        let list = c.list_objects_v2().bucket(bucket).send().await.unwrap();
        for o in list.contents() {
            let key = o.key().unwrap().to_owned();
            let body = c.get_object().bucket(bucket).key(&key).send().await.unwrap().body.collect().await.unwrap();
            out.insert(key, body.into_bytes().to_vec());
        }
        out
    })
}

/// A Parquet object's column names and types, and its rows as JSON.
fn parquet_rows(bytes: &[u8]) -> (Vec<String>, Vec<Value>) {
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes.to_vec()))
            .unwrap()
            .build()
            .unwrap();
    let mut names = Vec::new();
    let mut rows = Vec::new();
    for b in reader {
        let b = b.unwrap();
        names = b.schema().fields().iter().map(|f| format!("{}:{}", f.name(), f.data_type())).collect();
        let mut buf = Vec::new();
        let mut w = arrow_json::LineDelimitedWriter::new(&mut buf);
        w.write(&b).unwrap();
        w.finish().unwrap();
        rows.extend(
            buf.split(|c| *c == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice::<Value>(l).unwrap()),
        );
    }
    (names, rows)
}

fn config(dir: &Path, kafka: &Kafka, s3: &str, body: &str) -> String {
    let kafka = kafka.yaml();
    write(
        dir,
        "s3.yaml",
        &format!(
            r#"
kafka: {{{kafka}}}
connections:
  gen: {{type: generate}}
  bus: {{type: kafka}}
  lake: {{type: s3, endpoint: "{s3}", allow_private_addresses: true, path_style: true, access_key_id: {ACCESS}, secret_access_key: "${{env:S3_SECRET}}"}}
  wrong_key: {{type: s3, endpoint: "{s3}", allow_private_addresses: true, path_style: true, access_key_id: {ACCESS}, secret_access_key: not-the-secret}}
flows:
{body}
"#
        ),
    )
}

fn parquet_objects_round_trip_and_a_kill_leaves_no_duplicate(kafka: &mut Kafka) {
    let s3 = start_s3();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = client(&s3.url, &rt);
    rt.block_on(c.create_bucket().bucket("lake-parquet").send()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A topic with fixed offsets as input, so every duplicate would be the sink's.
    let count = 60_000i64;
    let msgs: Vec<(Option<String>, Vec<u8>)> = (0..count)
        .map(|seq| {
            let id = seq % 40;
            let row = format!(
                "{{\"seq\":{seq},\"id\":{id},\"version\":{},\"name\":\"n{seq}\",\"amount\":{}}}",
                seq / 40,
                seq % 1000
            );
            (Some(format!("{{\"id\":{id}}}")), row.into_bytes())
        })
        .collect();
    let to_lake = kafka.name("to-lake");
    kafka.produce(&to_lake, 3, &msgs);
    let cfg = config(
        dir.path(),
        kafka,
        &s3.url,
        &r#"  - name: tolake
    trigger: continuous
    source:
      connection: bus
      object: {to_lake}
      options: {format: json}
      schema: {seq: int64, id: int64, version: int64, name: string, amount: int64}
    transform:
      sql: SELECT seq, id, version, name, amount FROM source
    destination: {connection: lake, object: lake-parquet, options: {format: parquet, compression: zstd}}"#
            .replace("{to_lake}", &to_lake),
    );
    let env = [("S3_SECRET", SECRET)];
    let keys = || rt.block_on(c.list_objects_v2().bucket("lake-parquet").send()).unwrap().contents().len();
    let p = spawn(&["run", &cfg], dir.path(), &env);
    assert!(wait_until(Duration::from_secs(90), || keys() >= 2), "{}", p.stderr_so_far());
    p.kill9();
    let killed_at = keys();
    let rows = || -> Vec<Value> { objects(&c, &rt, "lake-parquet").values().flat_map(|b| parquet_rows(b).1).collect() };
    let p = spawn(&["run", &cfg], dir.path(), &env);
    let ok = wait_until(Duration::from_secs(120), || counts_of(&rows(), "seq").len() as i64 >= count);
    let done = p.terminate(Duration::from_secs(30));
    assert!(ok, "{}", done.stderr);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    assert!(!done.stderr.contains(SECRET));

    let all = objects(&c, &rt, "lake-parquet");
    let mut rows = Vec::new();
    for (key, bytes) in &all {
        assert!(key.starts_with(&format!("tolake/{to_lake}/")) && key.ends_with(".parquet"), "{key}");
        let (names, r) = parquet_rows(bytes);
        assert_eq!(names, ["seq:Int64", "id:Int64", "version:Int64", "name:Utf8", "amount:Int64"], "{key}");
        rows.extend(r);
    }
    let seen = counts_of(&rows, "seq");
    assert_eq!(seen.len() as i64, count, "every record in some object");
    let dups = rows.len() - seen.len();
    assert_eq!(dups, 0, "an upload retried after the kill replaced its object instead of adding one");
    eprintln!("s3 parquet: {count} records in {} objects ({killed_at} when killed), 0 duplicates", all.len());
}

fn jsonl_gzip_and_csv_objects_and_clear_errors(kafka: &mut Kafka) {
    let s3 = start_s3();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = client(&s3.url, &rt);
    rt.block_on(c.create_bucket().bucket("lake-text").send()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let flows_with = |dest: &str, extra: &str| {
        format!(
            r#"  - name: text
    source: {{connection: gen, object: orders, options: {{count: 3000, keys: 10}}}}
    transform:
      sql: SELECT seq, name, _ts FROM source
    destination: {dest}{extra}"#
        )
    };
    let flows = |dest: &str| flows_with(dest, "");
    let env = [("S3_SECRET", SECRET)];
    let cfg = config(
        dir.path(),
        kafka,
        &s3.url,
        &flows(
            "{connection: lake, object: lake-text, options: {compression: gzip, path: \"{flow}/{date}/{hour}/{partition}-{first_offset}.{ext}\"}}",
        ),
    );
    let done = run(&["run", &cfg], dir.path(), &env, LIMIT);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let mut rows = Vec::new();
    for (key, bytes) in objects(&c, &rt, "lake-text") {
        assert!(key.starts_with("text/20") && key.ends_with(".jsonl.gz"), "{key}");
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(bytes.as_slice()), &mut text).unwrap();
        rows.extend(text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()));
    }
    assert_eq!(counts_of(&rows, "seq").len(), 3000);

    let cfg = config(
        dir.path(),
        kafka,
        &s3.url,
        // Objects roll at the flow's batch limits: here 400 records.
        &flows_with(
            "{connection: lake, object: lake-text, options: {format: csv, path: \"csv/{partition}-{first_offset}.{ext}\"}}",
            "\n    batch: {max_records: 400, linger_ms: 1000}",
        ),
    );
    let done = run(&["run", &cfg], dir.path(), &env, LIMIT);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let csv_rows: usize = objects(&c, &rt, "lake-text")
        .iter()
        .filter(|(k, _)| k.starts_with("csv/"))
        .map(|(_, b)| {
            let text = String::from_utf8(b.clone()).unwrap();
            assert!(text.starts_with("seq,name,_ts\n"), "{text:.60}");
            assert!(text.lines().count() - 1 <= 400, "an object rolled past max_records");
            text.lines().count() - 1
        })
        .sum();
    assert!(csv_rows >= 3000, "{csv_rows}");

    // Objects over the part size go up in parts: 5,000 rows of ~2 KB is a 10 MB object (the
    // batch lingers long enough to fill, however slowly the broker serves the fetches).
    let big: Vec<(Option<String>, Vec<u8>)> = (0..5000)
        .map(|seq| (None, format!("{{\"seq\":{seq},\"name\":\"{}\"}}", "x".repeat(2000)).into_bytes()))
        .collect();
    let big_rows = kafka.name("big-rows");
    kafka.produce(&big_rows, 1, &big);
    let cfg = config(
        dir.path(),
        kafka,
        &s3.url,
        &r#"  - name: big
    source: {connection: bus, object: big-rows, options: {format: json}, schema: {seq: int64, name: string}}
    destination: {connection: lake, object: lake-text, options: {path: "big/{first_offset}.{ext}", part_size_bytes: 5242880}}
    batch: {linger_ms: 2000}"#
            .replace("object: big-rows", &format!("object: {big_rows}")),
    );
    let done = run(&["run", &cfg], dir.path(), &env, LIMIT);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let big_objects: Vec<(String, Vec<u8>)> =
        objects(&c, &rt, "lake-text").into_iter().filter(|(k, _)| k.starts_with("big/")).collect();
    let big_rows: Vec<Value> = big_objects
        .iter()
        .flat_map(|(_, b)| {
            String::from_utf8(b.clone())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(counts_of(&big_rows, "seq").len(), 5000);
    assert!(big_objects.iter().any(|(_, b)| b.len() > 5 << 20), "no object was large enough to need parts");

    // A missing bucket and a wrong secret: clear errors naming the connection, never the secret.
    for (dest, says) in [
        ("{connection: lake, object: no-such-bucket}", "NoSuchBucket"),
        ("{connection: wrong_key, object: lake-text}", "SignatureDoesNotMatch"),
    ] {
        let cfg = config(dir.path(), kafka, &s3.url, &flows(dest));
        let done = run(&["run", &cfg], dir.path(), &env, LIMIT);
        assert_eq!(done.code(), Some(1), "{}", done.stderr);
        assert!(done.stderr.contains(says) && done.stderr.contains("s3 connection `"), "{says}:\n{}", done.stderr);
        assert!(!done.stderr.contains(SECRET) && !done.stderr.contains("not-the-secret"));
    }
}

fn avro_objects_partitioned_by_field_with_run_and_schema_version(kafka: &mut Kafka) {
    let s3 = start_s3();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = client(&s3.url, &rt);
    rt.block_on(c.create_bucket().bucket("lake-avro").send()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        kafka,
        &s3.url,
        r#"  - name: avro
    source: {connection: gen, object: orders, options: {count: 4000, keys: 25}}
    transform:
      sql: SELECT seq, id, category, upper(name) AS name, amount, _ts FROM source
    destination:
      connection: lake
      object: lake-avro
      options:
        format: avro
        compression: zstd
        path: "{flow}/category={field:category}/{date}/v{schema_version}/{run_id}/{partition}-{first_offset}.{ext}""#,
    );
    let done = run(&["run", &cfg], dir.path(), &[("S3_SECRET", SECRET)], LIMIT);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let all = objects(&c, &rt, "lake-avro");
    let mut rows = Vec::new();
    let mut versions = std::collections::BTreeSet::new();
    let mut runs = std::collections::BTreeSet::new();
    for (key, bytes) in &all {
        let parts: Vec<&str> = key.split('/').collect();
        assert_eq!(parts.len(), 6, "{key}");
        assert!(parts[0] == "avro" && parts[2].starts_with("20") && key.ends_with(".avro"), "{key}");
        let category = parts[1].strip_prefix("category=").unwrap();
        versions.insert(parts[3].to_owned());
        runs.insert(parts[4].to_owned());
        let reader = apache_avro::Reader::new(bytes.as_slice()).unwrap();
        let schema = serde_json::to_string(reader.writer_schema()).unwrap();
        assert!(schema.contains("\"name\":\"seq\"") && schema.contains("timestamp-millis"), "{schema}");
        for r in reader {
            let row = apache_avro::from_value::<Value>(&r.unwrap()).unwrap();
            // Every row sits in the object of its own category.
            assert_eq!(row["category"], category, "{key}: {row}");
            rows.push(row);
        }
    }
    assert_eq!(versions.len(), 1, "one output schema, one version: {versions:?}");
    assert_eq!(runs.len(), 1, "one run: {runs:?}");
    let seen = counts_of(&rows, "seq");
    assert_eq!(seen.len(), 4000, "every record in some object");
    assert_eq!(rows.len(), 4000, "no record twice");
    assert!(rows.iter().all(|r| r["name"].as_str().unwrap().chars().all(|c| c.is_ascii_uppercase())));
    let categories = all.keys().map(|k| k.split('/').nth(1).unwrap()).collect::<std::collections::BTreeSet<_>>();
    assert_eq!(categories.len(), 5, "{categories:?}");

    // A column the output does not have: a clear error before any object is written.
    let cfg = config(
        dir.path(),
        kafka,
        &s3.url,
        r#"  - name: avro2
    source: {connection: gen, object: orders, options: {count: 10}}
    destination: {connection: lake, object: lake-avro, options: {path: "x/{field:country}/{first_offset}.{ext}"}}"#,
    );
    let done = run(&["run", &cfg], dir.path(), &[("S3_SECRET", SECRET)], LIMIT);
    assert_eq!(done.code(), Some(1), "{}", done.stderr);
    assert!(done.stderr.contains("{field:country}") && done.stderr.contains("no column `country`"), "{}", done.stderr);
}

crate::on_both_brokers!(
    parquet_objects_round_trip_and_a_kill_leaves_no_duplicate,
    jsonl_gzip_and_csv_objects_and_clear_errors,
    avro_objects_partitioned_by_field_with_run_and_schema_version,
);
