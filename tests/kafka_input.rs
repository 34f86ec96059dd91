//! Topics written by another client, read by a flow whose source is the topic itself:
//! batches compressed with each codec Kafka has (zstd, lz4, snappy, gzip), and records written
//! in transactions, some committed and some aborted. sluice reads `read_committed`, so a flow
//! must deliver every committed record once and no aborted one, and an on-demand run must end
//! although the topic ends in transaction markers no consumer is ever given.
//!
//! The oracle checks every record: each id the test produced (and committed) arrives once with
//! its own payload, and nothing else arrives.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::kafka::Kafka;
use common::{read_jsonl, run, write};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, Producer};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(180);

/// Every codec a Kafka producer may write with.
const CODECS: [&str; 4] = ["zstd", "lz4", "snappy", "gzip"];

/// The codecs the embedded broker can serve. tansu 0.6 stores a produced batch's records and
/// encodes them again for each fetch with the batch's codec, and it has no snappy encoder: a
/// fetch of a snappy batch fails and the broker drops the connection. Apache Kafka serves
/// batches as written, so the cluster test covers snappy (see the README's broker notes).
const EMBEDDED_CODECS: [&str; 3] = ["zstd", "lz4", "gzip"];

/// Messages `ids` of the input: a JSON object with the id, the codec it was written with and a
/// text long and repetitive enough that compression has something to do.
fn messages(ids: std::ops::Range<i64>, codec: &str) -> Vec<(Option<String>, Vec<u8>)> {
    ids.map(|i| {
        let text = format!("row {i} ").repeat(8);
        (Some(format!("{{\"id\":{i}}}")), format!(r#"{{"id":{i},"codec":"{codec}","text":"{text}"}}"#).into_bytes())
    })
    .collect()
}

/// Runs one on-demand flow from `topic` to a JSON-lines file and returns what arrived, by id.
fn deliver(kafka: &Kafka, dir: &Path, flow: &str, topic: &str) -> BTreeMap<i64, Value> {
    let cfg = write(
        dir,
        &format!("{flow}.yaml"),
        &format!(
            r#"
kafka: {{{kafka}}}
connections:
  bus: {{type: kafka}}
  files: {{type: file, path: {root}}}
flows:
  - name: {flow}
    source:
      connection: bus
      object: {topic}
      options: {{format: json}}
      schema: {{id: int64, codec: string, text: string}}
    destination: {{connection: files, object: {flow}.jsonl}}
"#,
            kafka = kafka.yaml(),
            root = dir.display(),
        ),
    );
    let done = run(&["run", &cfg], dir, &[], LIMIT);
    assert_eq!(done.code(), Some(0), "the flow from {topic} on the {}:\n{}", kafka.label(), done.stderr);
    let (rows, bad) = read_jsonl(&dir.join(format!("{flow}.jsonl")));
    assert_eq!(bad, 0, "unreadable lines in the output");
    let mut got = BTreeMap::new();
    for row in rows {
        let id = row["id"].as_i64().expect("an id in every row");
        assert!(got.insert(id, row).is_none(), "id {id} delivered twice by an on-demand run of one process");
    }
    got
}

/// Checks that `got` is exactly `expected` ids, each with the codec it was written with.
fn check(got: &BTreeMap<i64, Value>, expected: &BTreeMap<i64, &str>) {
    let missing: Vec<_> = expected.keys().filter(|i| !got.contains_key(i)).take(10).collect();
    let extra: Vec<_> = got.keys().filter(|i| !expected.contains_key(i)).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} delivered, {} expected; missing (first 10) {missing:?}, not expected (first 10) {extra:?}",
        got.len(),
        expected.len()
    );
    for (id, codec) in expected {
        let row = &got[id];
        assert_eq!(row["codec"], *codec, "id {id}");
        assert_eq!(row["text"].as_str().map(str::len), Some(format!("row {id} ").len() * 8), "id {id}");
    }
}

/// One topic, four producers: each writes its share of the ids in batches compressed with its
/// codec (lingering so that batches hold many records, as a busy producer's do).
fn compressed_batches_of_every_codec_are_read(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let topic = kafka.name("compressed-input");
    let mut expected = BTreeMap::new();
    let codecs: &[&str] = if kafka.is_cluster() { &CODECS } else { &EMBEDDED_CODECS };
    for (n, codec) in codecs.iter().enumerate() {
        let ids = (n as i64 * 5_000)..((n as i64 + 1) * 5_000);
        expected.extend(ids.clone().map(|i| (i, *codec)));
        kafka.produce_with(
            &topic,
            3,
            &[("compression.type", codec), ("linger.ms", "20"), ("batch.num.messages", "1000")],
            &messages(ids, codec),
        );
    }
    check(&deliver(kafka, dir.path(), "decompress", &topic), &expected);
}

/// A transactional producer (as a Kafka Streams or Flink job writes): committed and aborted
/// transactions interleaved on three partitions, compressed, and a plain producer's records in
/// between. The flow must deliver the committed and plain records and none of the aborted ones.
fn transactional_input_is_read_committed(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let topic = kafka.name("transactional-input");
    common::create_topic(kafka.addr(), &topic, 3, -1);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka.addr())
        .set("transactional.id", format!("{topic}-writer"))
        .set("compression.type", "zstd")
        .set("linger.ms", "10")
        .create()
        .expect("creating the transactional test producer");
    let timeout = Duration::from_secs(30);
    producer.init_transactions(timeout).expect("initialising transactions");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut expected = BTreeMap::new();
    let (mut committed, mut aborted) = (0, 0);
    for txn in 0..20i64 {
        let commit = txn % 3 != 1;
        let codec = if commit { "zstd-committed" } else { "zstd-aborted" };
        let ids = (txn * 1_000)..((txn + 1) * 1_000);
        producer.begin_transaction().expect("beginning a transaction");
        rt.block_on(common::send_all(&producer, &topic, &messages(ids.clone(), codec)));
        if commit {
            producer.commit_transaction(timeout).expect("committing a transaction");
            expected.extend(ids.map(|i| (i, codec)));
            committed += 1;
        } else {
            producer.abort_transaction(timeout).expect("aborting a transaction");
            aborted += 1;
        }
        // A plain producer's records between the transactions, on the same partitions.
        if txn % 5 == 4 {
            let plain = (100_000 + txn * 100)..(100_000 + (txn + 1) * 100);
            expected.extend(plain.clone().map(|i| (i, "plain")));
            kafka.produce_with(&topic, 3, &[("compression.type", "lz4")], &messages(plain, "plain"));
        }
    }
    assert!(committed > 0 && aborted > 0);
    check(&deliver(kafka, dir.path(), "committed-only", &topic), &expected);
}

crate::on_both_brokers!(compressed_batches_of_every_codec_are_read);

/// Transactions need a broker that commits them; the embedded broker has no `EndTxn` (see the
/// README), so this one runs on the Apache Kafka cluster only.
#[test]
fn transactional_input_is_read_committed_on_the_cluster() {
    transactional_input_is_read_committed(&mut Kafka::cluster());
}
