//! The end-to-end latency of records landing as Parquet objects in an S3-protocol server's
//! storage directory (s3s-fs keeps each object as a file): each row's latency is the time its
//! object's file was last written minus the `sent_us` column the load generator put in it.
//!
//!     filelat DIR COUNT [WARMUP_MS]
//!
//! Watches DIR (recursively) until COUNT rows were read from its Parquet files (or 15 s pass
//! without a new one after the first, or 10 minutes). A file that does not parse yet is being
//! written; it is tried again on the next look. Rows sent in the first WARMUP_MS after the
//! watcher started are not counted. Prints the same line as `latency`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow_array::Int64Array;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// The `sent_us` of every row of a complete Parquet file, or `None` if it is not one (yet).
fn sent_of(path: &Path) -> Option<Vec<i64>> {
    let file = std::fs::File::open(path).ok()?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).ok()?.build().ok()?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.ok()?;
        let col = batch.column_by_name("sent_us")?.as_any().downcast_ref::<Int64Array>()?;
        out.extend(col.iter().flatten());
    }
    Some(out)
}

fn micros(t: SystemTime) -> Result<i64, std::time::SystemTimeError> {
    Ok(t.duration_since(UNIX_EPOCH)?.as_micros() as i64)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, count, warmup_ms) = match args.as_slice() {
        [d, c] => (PathBuf::from(d), c.parse::<usize>()?, 0i64),
        [d, c, w] => (PathBuf::from(d), c.parse::<usize>()?, w.parse::<i64>()?),
        _ => return Err("usage: filelat DIR COUNT [WARMUP_MS]".into()),
    };
    let counted_from = micros(SystemTime::now())? + warmup_ms * 1000;
    eprintln!("ready");
    let mut done: HashSet<PathBuf> = HashSet::new();
    let mut lat_us = Vec::with_capacity(count);
    let mut seen = 0usize;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last = None::<Instant>;
    while seen < count && Instant::now() < deadline && last.is_none_or(|l| l.elapsed() < Duration::from_secs(15)) {
        let mut all = Vec::new();
        files(&dir, &mut all);
        all.retain(|p| !done.contains(p));
        for path in all {
            let Some(sent) = sent_of(&path) else { continue };
            let written = micros(std::fs::metadata(&path)?.modified()?)?;
            seen += sent.len();
            lat_us.extend(sent.into_iter().filter(|s| *s >= counted_from).map(|s| written - s));
            done.insert(path);
            last = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    sluice_bench::print_latency(lat_us);
    Ok(())
}
