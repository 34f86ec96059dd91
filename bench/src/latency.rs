//! Reads TOPIC from the beginning and prints the end-to-end latency of its records (arrival here
//! minus the `sent_us` the load generator put in each): p50, p99, max, in ms.
//!
//!     latency BOOTSTRAP TOPIC COUNT [WARMUP_MS [WINDOW_S]]
//!
//! Stops after COUNT records (or 15 s without one, or 10 minutes). The partitions are assigned directly, not joined
//! through a consumer group: a group join takes seconds, and records arriving meanwhile would be
//! charged with the reader's start-up instead of the runner's latency. Records sent in the first
//! WARMUP_MS after the reader started (default 0) are read but not counted, so a runner's own
//! start (its group join, its first batch) is not counted either. "ready" goes to stderr once
//! the partitions are assigned. With WINDOW_S (the soak run) it is a live monitor instead: it
//! reads from the topic's end, prints every WINDOW_S seconds `window UNIX_S N P50_MS P99_MS` for
//! the records that arrived in that window, keeps nothing else (an hour's latencies would be
//! GBs) and runs as long as records come (no 10-minute limit: the soak's hour once lost its
//! last 50 minutes of latency to it).

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
    let (bootstrap, topic, count, warmup_ms, window) = match args.as_slice() {
        [b, t, c] => (b, t, c.parse::<usize>()?, 0i64, None),
        [b, t, c, w] => (b, t, c.parse::<usize>()?, w.parse::<i64>()?, None),
        [b, t, c, w, s] => {
            (b, t, c.parse::<usize>()?, w.parse::<i64>()?, Some(Duration::from_secs_f64(s.parse::<f64>()?)))
        }
        _ => return Err("usage: latency BOOTSTRAP TOPIC COUNT [WARMUP_MS [WINDOW_S]]".into()),
    };
    // read_committed is librdkafka's default, which this reader always had.
    let from = if window.is_some() { rdkafka::Offset::End } else { rdkafka::Offset::Beginning };
    let consumer = sluice_bench::read_from(bootstrap, topic, "latency", "read_committed", from)?;
    let counted_from = now_us()? + warmup_ms * 1000;
    eprintln!("ready");
    let mut lat_us = Vec::with_capacity(if window.is_some() { 0 } else { count });
    let mut seen = 0usize;
    let deadline = window.is_none().then(|| Instant::now() + Duration::from_secs(600));
    // A runner that lost or filtered more than expected must not hold the harness: after the
    // first record, 15 s of silence ends the reading.
    let mut last = None::<Instant>;
    let (mut window_lat, mut window_start) = (Vec::new(), Instant::now());
    while seen < count
        && deadline.is_none_or(|d| Instant::now() < d)
        && last.is_none_or(|l| l.elapsed() < Duration::from_secs(15))
    {
        if let Some(w) = window
            && window_start.elapsed() >= w
        {
            print_window(&mut window_lat)?;
            window_start = Instant::now();
        }
        let Some(msg) = consumer.poll(Duration::from_millis(100)) else { continue };
        let msg = msg?;
        let now = now_us()?;
        last = Some(Instant::now());
        seen += 1;
        if let Some(sent) = msg.payload().and_then(sent_us).filter(|s| *s >= counted_from) {
            if window.is_some() { window_lat.push(now - sent) } else { lat_us.push(now - sent) }
        }
    }
    if window.is_some() {
        print_window(&mut window_lat)?;
        println!("latency: {seen} records read");
    } else {
        sluice_bench::print_latency(lat_us);
    }
    Ok(())
}

/// Prints one window's line and empties it.
fn print_window(lat_us: &mut Vec<i64>) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::Write as _;
    lat_us.sort_unstable();
    let at = |q: f64| lat_us.get(((lat_us.len() as f64 * q) as usize).min(lat_us.len().saturating_sub(1)));
    let ms = |v: Option<&i64>| v.map_or(f64::NAN, |v| *v as f64 / 1000.0);
    println!("window {} {} {:.1} {:.1}", now_us()? / 1_000_000, lat_us.len(), ms(at(0.5)), ms(at(0.99)));
    std::io::stdout().flush()?;
    lat_us.clear();
    Ok(())
}
