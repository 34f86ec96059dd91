//! The raw limit for the benchmark harness: consume a topic and produce every payload, untouched,
//! to another, with librdkafka and nothing else (at least once: the producer is flushed before
//! the consumer's offsets are committed, as sluice does).
//!
//!     passthrough BOOTSTRAP FROM TO COUNT
//!
//! Prints records/s once COUNT records were forwarded.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bootstrap, from, to, count] = args.as_slice() else {
        return Err("usage: passthrough BOOTSTRAP FROM TO COUNT".into());
    };
    let count: usize = count.parse()?;
    sluice_bench::ensure_topics(bootstrap, &[from.as_str(), to.as_str()])?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("passthrough-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // The harness gives every runner's consumer the same fetch wait (see bench/run.sh).
        .set("fetch.wait.max.ms", std::env::var("SLUICE_BENCH_FETCH_WAIT_MS").as_deref().unwrap_or("500"))
        .create()?;
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("linger.ms", "5").create()?;
    consumer.subscribe(&[from.as_str()])?;
    let mut done = 0usize;
    let mut started = None;
    let mut ready = false;
    while done < count {
        let polled = consumer.poll(Duration::from_millis(100));
        if !ready && consumer.assignment().is_ok_and(|a| a.count() > 0) {
            // For the harness's latency runs: the load starts once the group handed us the topic.
            eprintln!("partitions assigned");
            ready = true;
        }
        let Some(msg) = polled else {
            producer.poll(Duration::ZERO);
            continue;
        };
        let msg = match msg {
            Ok(m) => m,
            // The topic's metadata may not have reached this client yet; librdkafka retries.
            Err(e) if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition) => {
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        started.get_or_insert_with(Instant::now);
        let mut record = BaseRecord::<[u8], [u8]>::to(to).payload(msg.payload().unwrap_or_default());
        if let Some(k) = msg.key() {
            record = record.key(k);
        }
        while let Err((e, back)) = producer.send(record) {
            if !matches!(e.rdkafka_error_code(), Some(rdkafka::types::RDKafkaErrorCode::QueueFull)) {
                return Err(e.into());
            }
            producer.poll(Duration::from_millis(1));
            record = back;
        }
        done += 1;
        if done.is_multiple_of(5000) || done == count {
            producer.flush(Duration::from_secs(30))?;
            consumer.commit_consumer_state(CommitMode::Sync)?;
        }
    }
    let secs = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    println!("passthrough: {done} records in {secs:.2} s ({:.0} records/s)", done as f64 / secs.max(1e-9));
    Ok(())
}
