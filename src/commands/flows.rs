//! `sluice flows pause|resume CONFIG FLOW`: set a flow's state in Kafka. Every process running
//! the flow obeys within a few seconds (a run in progress finishes its batch and stops), and
//! the state outlives restarts. `resume` also makes a deactivated flow active again.

use std::path::Path;
use std::process::ExitCode;

use sluice_engine::runtime::{self, FlowState};

use crate::registry::Registry;

/// Sets `flow` of the config at `path` to `state`.
pub async fn set_state(path: &Path, registry: &Registry, flow: &str, state: FlowState) -> ExitCode {
    let (_cfg, _broker, own) = match super::config_and_cluster(path, registry, Some(flow)).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let before = runtime::flow_states(&own).await.ok().and_then(|mut s| s.remove(flow));
    let reason = match state {
        FlowState::Paused => {
            Some(format!("paused with `sluice flows pause` on {}", sluice_engine::ledger::host_name()))
        }
        _ => None,
    };
    match runtime::set_flow_state(&own, flow, state, reason).await {
        Ok(_) => {
            let was = before.map_or(FlowState::Active, |b| b.state);
            println!("flow {flow}: {} (was {})", state.name(), was.name());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
