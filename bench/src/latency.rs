//! Reads COUNT records of TOPIC from the beginning and prints the end-to-end latency of each
//! (arrival here minus the `sent_us` the load generator put in it): p50, p99, max, in ms.
//!
//!     latency BOOTSTRAP TOPIC COUNT

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

/// The `sent_us` number in a JSON payload, found without parsing the rest.
fn sent_us(payload: &[u8]) -> Option<i64> {
    const FIELD: &[u8] = b"\"sent_us\":";
    let at = payload.windows(FIELD.len()).position(|w| w == FIELD)? + FIELD.len();
    let digits: Vec<u8> = payload[at..].iter().copied().take_while(u8::is_ascii_digit).collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bootstrap, topic, count] = args.as_slice() else {
        return Err("usage: latency BOOTSTRAP TOPIC COUNT".into());
    };
    let count: usize = count.parse()?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("latency-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    consumer.subscribe(&[topic.as_str()])?;
    let mut lat_us = Vec::with_capacity(count);
    let deadline = Instant::now() + Duration::from_secs(600);
    while lat_us.len() < count && Instant::now() < deadline {
        let Some(msg) = consumer.poll(Duration::from_millis(100)) else { continue };
        let msg = msg?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros() as i64;
        if let Some(sent) = msg.payload().and_then(sent_us) {
            lat_us.push(now - sent);
        }
    }
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
    Ok(())
}
