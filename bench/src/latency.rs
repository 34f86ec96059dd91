//! Reads TOPIC from the beginning and prints the end-to-end latency of its records (arrival here
//! minus the `sent_us` the load generator put in each): p50, p99, max, in ms.
//!
//!     latency BOOTSTRAP TOPIC COUNT [WARMUP_MS]
//!
//! Stops after COUNT records (or 15 s without one, or 10 minutes). The partitions are assigned directly, not joined
//! through a consumer group: a group join takes seconds, and records arriving meanwhile would be
//! charged with the reader's start-up instead of the runner's latency. Records sent in the first
//! WARMUP_MS after the reader started (default 0) are read but not counted, so a runner's own
//! start (its group join, its first batch) is not counted either. "ready" goes to stderr once
//! the partitions are assigned.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::message::Message;

/// The `sent_us` number in a JSON payload, found without parsing the rest.
fn sent_us(payload: &[u8]) -> Option<i64> {
    const FIELD: &[u8] = b"\"sent_us\":";
    let at = payload.windows(FIELD.len()).position(|w| w == FIELD)? + FIELD.len();
    let digits: Vec<u8> = payload[at..].iter().copied().take_while(u8::is_ascii_digit).collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

fn now_us() -> Result<i64, std::time::SystemTimeError> {
    Ok(SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros() as i64)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (bootstrap, topic, count, warmup_ms) = match args.as_slice() {
        [b, t, c] => (b, t, c.parse::<usize>()?, 0i64),
        [b, t, c, w] => (b, t, c.parse::<usize>()?, w.parse::<i64>()?),
        _ => return Err("usage: latency BOOTSTRAP TOPIC COUNT [WARMUP_MS]".into()),
    };
    // read_committed is librdkafka's default, which this reader always had.
    let consumer = sluice_bench::read_from_start(bootstrap, topic, "latency", "read_committed")?;
    let counted_from = now_us()? + warmup_ms * 1000;
    eprintln!("ready");
    let mut lat_us = Vec::with_capacity(count);
    let mut seen = 0usize;
    let deadline = Instant::now() + Duration::from_secs(600);
    // A runner that lost or filtered more than expected must not hold the harness: after the
    // first record, 15 s of silence ends the reading.
    let mut last = None::<Instant>;
    while seen < count && Instant::now() < deadline && last.is_none_or(|l| l.elapsed() < Duration::from_secs(15)) {
        let Some(msg) = consumer.poll(Duration::from_millis(100)) else { continue };
        let msg = msg?;
        let now = now_us()?;
        last = Some(Instant::now());
        seen += 1;
        if let Some(sent) = msg.payload().and_then(sent_us).filter(|s| *s >= counted_from) {
            lat_us.push(now - sent);
        }
    }
    sluice_bench::print_latency(lat_us);
    Ok(())
}
