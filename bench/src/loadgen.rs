//! Produces the benchmark's input: COUNT JSON records of ≈200 bytes to TOPIC, as fast as the
//! broker takes them or at RATE records/s, each carrying its send time (`sent_us`, µs since the
//! epoch) for end-to-end latency.
//!
//!     loadgen BOOTSTRAP TOPIC COUNT [RATE]

use sluice_connectors::generate::{CATEGORIES, NAMES};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (bootstrap, topic, count, rate) = match args.as_slice() {
        [b, t, c] => (b, t, c.parse::<usize>()?, 0f64),
        [b, t, c, r] => (b, t, c.parse::<usize>()?, r.parse::<f64>()?),
        _ => return Err("usage: loadgen BOOTSTRAP TOPIC COUNT [RATE]".into()),
    };
    sluice_bench::ensure_topics(bootstrap, &[topic.as_str()])?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", if rate > 0.0 { "1" } else { "5" })
        .set("queue.buffering.max.messages", "200000")
        .create()?;
    let started = Instant::now();
    let mut line = String::with_capacity(256);
    for i in 0..count {
        if rate > 0.0 {
            // Keep to the offered rate: never ahead of where the clock says we should be.
            let due = Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let sent_us = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros() as i64;
        line.clear();
        use std::fmt::Write as _;
        write!(
            line,
            r#"{{"id":{i},"seq":{i},"name":"{}","category":"{}","amount":{},"note":"order {i} of customer {} via the web shop","sent_us":{sent_us}}}"#,
            NAMES[i % 8],
            CATEGORIES[i % 5],
            (i * 7919) % 1000,
            i % 977
        )?;
        let key = format!("{{\"id\":{}}}", i % 50_000);
        let mut record = BaseRecord::to(topic).payload(line.as_bytes()).key(key.as_bytes());
        while let Err((e, back)) = producer.send(record) {
            if !matches!(e.rdkafka_error_code(), Some(rdkafka::types::RDKafkaErrorCode::QueueFull)) {
                return Err(e.into());
            }
            producer.poll(Duration::from_millis(1));
            record = back;
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60))?;
    let secs = started.elapsed().as_secs_f64();
    println!("loadgen: {count} records in {secs:.2} s ({:.0} records/s)", count as f64 / secs);
    Ok(())
}
