//! `sluice status`: each flow's latest run.

use std::path::Path;
use std::process::ExitCode;

use sluice_engine::ledger::{Liveness, RunStatus};
use sluice_engine::runtime::{self};

use crate::registry::Registry;

/// `sluice status CONFIG`: each flow's latest run.
pub async fn status(path: &Path, registry: &Registry) -> ExitCode {
    let (cfg, _broker, own) = match super::config_and_cluster(path, registry, None).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let runs = match runtime::latest_runs(&own).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let states = runtime::flow_states(&own).await.unwrap_or_default();
    let now = sluice_engine::record::now_ms();
    let host = sluice_engine::ledger::host_name();
    for f in &cfg.flows {
        if let Some(s) = states.get(&f.name).filter(|s| s.state != runtime::FlowState::Active) {
            println!("flow {} {}", f.name, crate::lifecycle::describe(s));
        }
        let Some(r) = runs.get(&f.name) else {
            println!("flow {}: never run", f.name);
            continue;
        };
        let c = &r.counts;
        let status = match (r.status, r.liveness(now, &host)) {
            // A run that says it runs but whose process is gone (or silent): it was killed.
            (RunStatus::Running, Liveness::Interrupted) => {
                "interrupted (its process is gone; the next run goes on with it)"
            }
            (RunStatus::Running, _) => "running",
            (RunStatus::Succeeded, _) => "succeeded",
            (RunStatus::Stopped, _) => "stopped (the next run goes on with it)",
            (RunStatus::Failed, _) => "failed",
        };
        let resumed = r.resumes.as_ref().map(|p| format!(" · resumed run {p}")).unwrap_or_default();
        println!(
            "flow {}: {status} · run {}{resumed} · started {} s ago · updated {} s ago\n  read {} = delivered {} + filtered {} + dlq {} + dropped {} + in flight {}",
            f.name,
            r.run_id,
            (now - r.started_ms).max(0) / 1000,
            (now - r.updated_ms).max(0) / 1000,
            c.read(),
            c.delivered,
            c.filtered,
            c.dlq(),
            c.dropped,
            c.in_flight(),
        );
        if let Some(e) = &r.error {
            println!("  error: {e}");
        }
    }
    ExitCode::SUCCESS
}
