//! Waits until TOPIC holds COUNT records (read committed) and prints when the last of them was
//! seen: how CDC runners are timed to "the last record in the topic".
//!
//!     topicwait BOOTSTRAP TOPIC COUNT [TIMEOUT_S]
//!
//! The topic is made first (sluice's partition count) if it does not exist, so neither runner
//! waits for it, and read from the beginning of each partition, assigned directly (no group
//! join). Only records are counted: a transactional producer's commit markers take offsets
//! but are not records, so the end offsets alone would over-count sluice's changes topics.
//! Prints `seen COUNT at UNIX_MS` on stdout; exits 1 with what it saw if the timeout (default
//! 900 s) passes first.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (bootstrap, topic, count, timeout_s) = match args.as_slice() {
        [b, t, c] => (b, t, c.parse::<u64>()?, 900),
        [b, t, c, s] => (b, t, c.parse::<u64>()?, s.parse::<u64>()?),
        _ => return Err("usage: topicwait BOOTSTRAP TOPIC COUNT [TIMEOUT_S]".into()),
    };
    let consumer = sluice_bench::read_from_start(bootstrap, topic, "topicwait", "read_committed")?;
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    let mut seen = 0u64;
    while seen < count {
        if Instant::now() > deadline {
            eprintln!("topicwait: {seen} of {count} records in {topic} after {timeout_s} s");
            std::process::exit(1);
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => seen += 1,
            Some(Err(e)) => eprintln!("topicwait: reading {topic}: {e}"),
            None => {}
        }
    }
    println!("seen {seen} at {}", SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis());
    Ok(())
}
