//! What the harness's binaries share: making their topics, reading one from its beginning,
//! and the one latency line `bench/run.sh` parses.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Makes `topics` (sluice's partition count) if they do not exist yet. Done up front: a client
/// of a topic the broker has not created waits for its metadata, which would be counted as time.
pub fn ensure_topics(bootstrap: &str, topics: &[&str]) -> Result<(), Box<dyn std::error::Error>> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(sluice_engine::kafka::KafkaSettings::plaintext(bootstrap).ensure_topics(topics))?;
    Ok(())
}

/// A consumer of every partition of `topic` from its beginning, made first if missing. The
/// partitions are assigned directly, not joined through a consumer group: a group join takes
/// seconds, which the reader would charge to what it times. `name` names its group id (with
/// this process's id); `isolation` is librdkafka's `isolation.level`.
pub fn read_from_start(
    bootstrap: &str,
    topic: &str,
    name: &str,
    isolation: &str,
) -> Result<BaseConsumer, Box<dyn std::error::Error>> {
    read_from(bootstrap, topic, name, isolation, Offset::Beginning)
}

/// As [`read_from_start`], from `from` in every partition (`Offset::End`: what arrives from now).
pub fn read_from(
    bootstrap: &str,
    topic: &str,
    name: &str,
    isolation: &str,
    from: Offset,
) -> Result<BaseConsumer, Box<dyn std::error::Error>> {
    ensure_topics(bootstrap, &[topic])?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{name}-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
    let mut tpl = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), from)?;
        }
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// Prints `latency: N records, p50 … ms, p99 … ms, max … ms` for these latencies in µs.
pub fn print_latency(mut lat_us: Vec<i64>) {
    lat_us.sort_unstable();
    let at = |q: f64| lat_us.get(((lat_us.len() as f64 * q) as usize).min(lat_us.len().saturating_sub(1))).copied();
    let ms = |v: Option<i64>| v.map_or(f64::NAN, |v| v as f64 / 1000.0);
    println!(
        "latency: {} records, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat_us.len(),
        ms(at(0.5)),
        ms(at(0.99)),
        ms(lat_us.last().copied())
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentiles_of_nothing_do_not_panic() {
        super::print_latency(Vec::new());
        super::print_latency(vec![3, 1, 2]);
    }
}
