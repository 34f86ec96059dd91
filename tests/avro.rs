//! Avro through a flow: Confluent-framed Avro in (rows and change envelopes, writer schemas
//! from a Schema Registry), SQL, Avro out (the output schema registered under `<topic>-value`),
//! against a real broker and a loopback HTTP server speaking the registry's REST endpoints.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apache_avro::types::Value;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use common::kafka::Kafka;
use common::{run, write};

const LIMIT: Duration = Duration::from_secs(120);

/// Schemas by id (id = position + 1) and each subject's ids, as a registry keeps them.
#[derive(Default)]
struct Registry {
    schemas: Vec<String>,
    subjects: BTreeMap<String, Vec<u32>>,
    lookups: usize,
}

type Shared = Arc<Mutex<Registry>>;

async fn schema_by_id(State(r): State<Shared>, Path(id): Path<u32>) -> (StatusCode, String) {
    let mut r = r.lock().unwrap();
    r.lookups += 1;
    match r.schemas.get(id as usize - 1) {
        Some(s) => (StatusCode::OK, serde_json::json!({ "schema": s }).to_string()),
        None => (StatusCode::NOT_FOUND, r#"{"error_code":40403,"message":"Schema not found"}"#.into()),
    }
}

async fn latest(State(r): State<Shared>, Path(subject): Path<String>) -> (StatusCode, String) {
    let r = r.lock().unwrap();
    match r.subjects.get(&subject).and_then(|ids| ids.last()) {
        Some(id) => (StatusCode::OK, serde_json::json!({ "schema": r.schemas[*id as usize - 1] }).to_string()),
        None => (StatusCode::NOT_FOUND, r#"{"error_code":40401,"message":"Subject not found"}"#.into()),
    }
}

async fn register(State(r): State<Shared>, Path(subject): Path<String>, body: String) -> (StatusCode, String) {
    let schema = serde_json::from_str::<serde_json::Value>(&body).unwrap()["schema"].as_str().unwrap().to_owned();
    if apache_avro::Schema::parse_str(&schema).is_err() {
        return (StatusCode::UNPROCESSABLE_ENTITY, r#"{"error_code":42201,"message":"Invalid schema"}"#.into());
    }
    let mut r = r.lock().unwrap();
    let id = match r.schemas.iter().position(|s| *s == schema) {
        Some(i) => i as u32 + 1,
        None => {
            r.schemas.push(schema);
            r.schemas.len() as u32
        }
    };
    let ids = r.subjects.entry(subject).or_default();
    if !ids.contains(&id) {
        ids.push(id);
    }
    (StatusCode::OK, serde_json::json!({ "id": id }).to_string())
}

/// A registry on a loopback port; stops when dropped.
struct RegistryServer {
    url: String,
    state: Shared,
    _rt: tokio::runtime::Runtime,
}

fn start_registry() -> RegistryServer {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let state: Shared = Arc::default();
    let app = Router::new()
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/subjects/{subject}/versions", post(register))
        .route("/subjects/{subject}/versions/latest", get(latest))
        .with_state(state.clone());
    let addr = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        addr
    });
    RegistryServer { url: format!("http://{addr}"), state, _rt: rt }
}

const ROW_SCHEMA: &str = r#"{"type":"record","name":"order","fields":[
  {"name":"id","type":"long"},
  {"name":"name","type":["null","string"],"default":null},
  {"name":"status","type":{"type":"enum","name":"status","symbols":["NEW","PAID"]}},
  {"name":"amount","type":"double"},
  {"name":"placed","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#;

const ENVELOPE_SCHEMA: &str = r#"{"type":"record","name":"envelope","fields":[
  {"name":"before","type":["null",{"type":"record","name":"row","fields":[
     {"name":"id","type":"long"},{"name":"name","type":["null","string"]},{"name":"amount","type":"double"}]}],"default":null},
  {"name":"after","type":["null","row"],"default":null},
  {"name":"op","type":"string"},
  {"name":"ts_ms","type":["null","long"],"default":null}]}"#;

fn framed(id: u32, schema: &apache_avro::Schema, value: Value) -> Vec<u8> {
    let datum = apache_avro::to_avro_datum(schema, value).unwrap();
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&datum);
    out
}

fn config(dir: &std::path::Path, kafka: &Kafka, registry: &str, flow: &str, input: &str, output: &str) -> String {
    let kafka = kafka.yaml();
    write(
        dir,
        "avro.yaml",
        &format!(
            r#"
kafka: {{{kafka}}}
connections:
  bus: {{type: kafka, schema_registry: {{url: "{registry}", timeout_secs: 2, allow_private_addresses: true}}}}
flows:
  - name: {flow}
    source:
      connection: bus
      object: {input}
      options: {{format: avro}}
      schema: {{id: int64, name: string, status: string, amount: float64, placed: timestamp}}
    transform:
      sql: SELECT id, upper(name) AS name, status, amount * 2 AS doubled, placed, _op, _key FROM source WHERE amount >= 10
    destination: {{connection: bus, object: {output}, options: {{format: avro}}}}
"#
        ),
    )
}

fn avro_in_sql_avro_out_with_a_schema_registry(kafka: &mut Kafka) {
    let registry = start_registry();
    let rows = apache_avro::Schema::parse_str(ROW_SCHEMA).unwrap();
    let envelopes = apache_avro::Schema::parse_str(ENVELOPE_SCHEMA).unwrap();
    {
        let mut r = registry.state.lock().unwrap();
        r.schemas.push(rows.canonical_form());
        r.schemas.push(serde_json::to_string(&envelopes).unwrap());
    }
    let n = 3_000i64;
    let mut msgs: Vec<(Option<String>, Vec<u8>)> = (0..n)
        .map(|i| {
            let v = Value::Record(vec![
                ("id".into(), Value::Long(i)),
                (
                    "name".into(),
                    if i % 10 == 0 {
                        Value::Union(0, Box::new(Value::Null))
                    } else {
                        Value::Union(1, Box::new(Value::String(format!("n{i}"))))
                    },
                ),
                ("status".into(), Value::Enum((i % 2) as u32, if i % 2 == 0 { "NEW" } else { "PAID" }.into())),
                ("amount".into(), Value::Double((i % 100) as f64)),
                ("placed".into(), Value::TimestampMillis(1_767_225_600_000 + i)),
            ]);
            (Some(format!("{{\"id\":{i}}}")), framed(1, &rows, v))
        })
        .collect();
    // Change envelopes under another schema id: an update and a delete (its before image).
    let image = |id: i64, amount: f64| {
        Value::Union(
            1,
            Box::new(Value::Record(vec![
                ("id".into(), Value::Long(id)),
                ("name".into(), Value::Union(1, Box::new(Value::String("env".into())))),
                ("amount".into(), Value::Double(amount)),
            ])),
        )
    };
    let null = || Value::Union(0, Box::new(Value::Null));
    msgs.push((
        Some("{\"id\":9001}".into()),
        framed(
            2,
            &envelopes,
            Value::Record(vec![
                ("before".into(), image(9001, 1.0)),
                ("after".into(), image(9001, 50.0)),
                ("op".into(), Value::String("u".into())),
                ("ts_ms".into(), Value::Union(1, Box::new(Value::Long(7)))),
            ]),
        ),
    ));
    msgs.push((
        Some("{\"id\":9002}".into()),
        framed(
            2,
            &envelopes,
            Value::Record(vec![
                ("before".into(), image(9002, 70.0)),
                ("after".into(), null()),
                ("op".into(), Value::String("d".into())),
                ("ts_ms".into(), null()),
            ]),
        ),
    ));
    // Bad records: not framed, an id the registry does not know, a truncated datum.
    msgs.push((None, br#"{"id": 1}"#.to_vec()));
    let mut unknown = msgs[7].1.clone();
    unknown[1..5].copy_from_slice(&99u32.to_be_bytes());
    msgs.push((None, unknown));
    let mut truncated = msgs[42].1.clone();
    truncated.truncate(8);
    msgs.push((None, truncated));
    let (input, output) = (kafka.name("orders-avro"), kafka.name("big-orders-avro"));
    kafka.produce(&input, 2, &msgs);

    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), kafka, &registry.url, "avro", &input, &output);
    let done = run(&["run", &cfg], dir.path(), &[], LIMIT);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);

    // Output: Confluent-framed, under the id registered for `big-orders-avro-value`.
    let out_id = registry.state.lock().unwrap().subjects[&format!("{output}-value")][0];
    let out_schema =
        apache_avro::Schema::parse_str(&registry.state.lock().unwrap().schemas[out_id as usize - 1]).unwrap();
    let mut got = BTreeMap::new();
    for m in kafka.read_topic(&output) {
        assert_eq!(&m.payload[..5], &[&[0u8][..], &out_id.to_be_bytes()[..]].concat()[..]);
        let v = apache_avro::from_avro_datum(&out_schema, &mut &m.payload[5..], None).unwrap();
        let row: serde_json::Value = apache_avro::from_value(&v).unwrap();
        let id = row["id"].as_i64().unwrap();
        assert_eq!(m.key.as_deref(), Some(format!("{{\"id\":{id}}}").as_str()), "the key is kept");
        assert!(got.insert(id, row).is_none(), "id {id} twice");
    }
    let expected: Vec<i64> = (0..n).filter(|i| i % 100 >= 10).chain([9001, 9002]).collect();
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), expected);
    let r = &got[&11];
    assert_eq!(r["name"], "N11");
    assert_eq!(r["status"], "PAID");
    assert_eq!(r["doubled"], 22.0);
    assert_eq!(r["placed"], 1_767_225_600_011i64);
    assert_eq!(r["_op"], "c");
    assert_eq!(got[&20]["name"], serde_json::Value::Null);
    assert_eq!((got[&9001]["_op"].as_str(), got[&9001]["doubled"].as_f64()), (Some("u"), Some(100.0)));
    assert_eq!((got[&9002]["_op"].as_str(), got[&9002]["doubled"].as_f64()), (Some("d"), Some(140.0)));

    // The bad records are in the DLQ with their reasons; each schema id was fetched once.
    let dlq = kafka.read_topic(&kafka.topic("avro.dlq"));
    let reasons: Vec<&str> = dlq.iter().map(|m| m.headers["sluice.error"].as_str()).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("first byte is 0x7b")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("schema id 99 is not in the schema registry")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("schema id 1")), "{reasons:?}");
    assert_eq!(registry.state.lock().unwrap().lookups, 3, "ids 1, 2 and 99, each once");

    // A flow reading the output topic without `schema:` takes the latest schema of its
    // `<topic>-value` subject; `describe` lists the topic with those columns.
    let back = write(
        dir.path(),
        "back.yaml",
        &format!(
            r#"
kafka: {{{kafka}}}
connections:
  bus: {{type: kafka, schema_registry: {{url: "{url}", timeout_secs: 2, allow_private_addresses: true}}}}
  out: {{type: stdout}}
flows:
  - name: back
    source: {{connection: bus, object: {output}, options: {{format: avro}}}}
    destination: {{connection: out, object: x}}
"#,
            kafka = kafka.yaml(),
            url = registry.url,
        ),
    );
    let v = run(&["validate", &back], dir.path(), &[], LIMIT);
    assert_eq!(v.code(), Some(0), "{}{}", v.stdout, v.stderr);
    let columns = ["id: int64", "name: string", "status: string", "doubled: float64"];
    let listed = |out: &str| columns.iter().all(|c| out.lines().any(|l| l.trim() == *c));
    assert!(v.stdout.contains("source columns (read from bus):") && listed(&v.stdout), "{}", v.stdout);
    let d = run(&["describe", &back, "bus", &output], dir.path(), &[], LIMIT);
    assert_eq!(d.code(), Some(0), "{}{}", d.stdout, d.stderr);
    assert!(d.stdout.starts_with(&format!("{output} (")) && listed(&d.stdout), "{}", d.stdout);
    assert!(!v.stdout.contains("_op: string"), "the subject's `_op` is the source table's own: {}", v.stdout);
    let d = run(&["describe", &back, "bus"], dir.path(), &[], LIMIT);
    assert!(d.stdout.lines().any(|l| l == input), "a topic without a subject, listed by name: {}", d.stdout);

    // An unreachable registry: bounded retries, then the flow fails naming the connection.
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    let cfg = config(dir.path(), kafka, &dead, "avro-unreachable", &input, &kafka.name("never"));
    let started = std::time::Instant::now();
    let done = run(&["run", &cfg], dir.path(), &[], LIMIT);
    assert_eq!(done.code(), Some(1), "{}", done.stderr);
    assert!(
        done.stderr.contains("schema registry of connection `bus`") && done.stderr.contains("reading schema id"),
        "{}",
        done.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
}

crate::on_both_brokers!(avro_in_sql_avro_out_with_a_schema_registry,);
