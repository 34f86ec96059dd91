//! `sluice runs CONFIG FLOW [--limit N]`: a flow's run history, newest first, as a table.

use std::path::Path;
use std::process::ExitCode;

use sluice_engine::ledger::{Liveness, RunRecord, RunStatus};
use sluice_engine::runtime;

use crate::registry::Registry;

/// `sluice runs CONFIG FLOW [--limit N]`.
pub async fn runs(path: &Path, registry: &Registry, flow: &str, limit: usize) -> ExitCode {
    let (_cfg, _broker, own) = match super::config_and_cluster(path, registry, Some(flow)).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let history = match runtime::run_history(&own).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: reading the run history from {}: {e}", own.runs_topic());
            return ExitCode::from(1);
        }
    };
    let runs: Vec<&RunRecord> = history.iter().rev().filter(|r| r.flow == flow).take(limit).collect();
    if runs.is_empty() {
        println!("flow {flow}: never run");
        return ExitCode::SUCCESS;
    }
    let now = sluice_engine::record::now_ms();
    let host = sluice_engine::ledger::host_name();
    println!(
        "{:<38} {:<11} {:<10} {:<19} {:>9} {:>10} {:>10} {:>9} {:>7} {:>8} {:>9} {:>9}  ERROR",
        "RUN",
        "STATUS",
        "TRIGGER",
        "STARTED (UTC)",
        "TOOK",
        "READ",
        "DELIVERED",
        "FILTERED",
        "DLQ",
        "DROPPED",
        "BYTES IN",
        "BYTES OUT"
    );
    for r in runs {
        let c = &r.counts;
        let status = match (r.status, r.liveness(now, &host)) {
            (RunStatus::Running, Liveness::Interrupted) => "interrupted",
            (RunStatus::Running, _) => "running",
            (RunStatus::Succeeded, _) => "succeeded",
            (RunStatus::Stopped, _) => "stopped",
            (RunStatus::Failed, _) => "failed",
        };
        let started = chrono::DateTime::from_timestamp_millis(r.started_ms)
            .map_or_else(|| r.started_ms.to_string(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string());
        let took = format!("{:.1} s", (r.updated_ms - r.started_ms).max(0) as f64 / 1000.0);
        // One line per run: the error's first line, shortened.
        let error = r.error.as_deref().and_then(|e| e.lines().next()).map(|e| clip(e, 80)).unwrap_or_default();
        println!(
            "{:<38} {:<11} {:<10} {:<19} {:>9} {:>10} {:>10} {:>9} {:>7} {:>8} {:>9} {:>9}  {error}",
            r.run_id,
            status,
            r.trigger.as_deref().unwrap_or("-"),
            started,
            took,
            c.read(),
            c.delivered,
            c.filtered,
            c.dlq(),
            c.dropped,
            bytes(c.bytes_read),
            bytes(c.bytes_written)
        );
        // Where the source stood at the start and the end of the run.
        if r.position_start.is_some() || r.position_end.is_some() {
            let show = |p: &Option<serde_json::Value>| p.as_ref().map_or("-".to_owned(), |v| clip(&v.to_string(), 70));
            println!("  position {} -> {}", show(&r.position_start), show(&r.position_end));
        }
    }
    ExitCode::SUCCESS
}

/// A byte count in KiB, MiB or GiB.
fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn clip(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}
