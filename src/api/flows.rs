//! The API's flow routes: state and counts, run history, pause and resume.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use sluice_engine::ledger::{Liveness, RunRecord};
use sluice_engine::runtime::{self, FlowState, FlowStateRecord};

use super::ApiState;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/flows", get(list))
        .route("/flows/{name}", get(one))
        .route("/flows/{name}/runs", get(runs).post(super::ops::start_run))
        .route("/flows/{name}/pause", post(pause))
        .route("/flows/{name}/resume", post(resume))
}

/// A JSON error with its status.
pub(super) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn no_such_flow(name: &str) -> Response {
    error(StatusCode::NOT_FOUND, format!("no flow named `{name}` runs in this process"))
}

/// A flow as the API shows it.
fn flow_json(s: &ApiState, name: &str, trigger: &str) -> Value {
    let Some((_, metrics)) = s.flow(name) else { return Value::Null };
    let t = metrics.totals();
    let state = s.states.borrow().get(name).cloned();
    let lag: Vec<Value> = metrics
        .lags()
        .into_iter()
        .map(|(topic, partition, lag)| json!({"topic": topic, "partition": partition, "lag": lag}))
        .collect();
    json!({
        "name": name,
        "trigger": trigger,
        "state": state.as_ref().map_or(FlowState::Active, |r| r.state).name(),
        "state_reason": state.and_then(|r| r.reason),
        "counts": {
            "read": t.read, "delivered": t.delivered, "filtered": t.filtered,
            "dead_lettered": t.dead_lettered, "dropped": t.dropped, "in_flight": t.in_flight,
        },
        "lag": lag,
    })
}

async fn list(State(s): State<ApiState>) -> Response {
    let flows: Vec<Value> = s.flows.iter().map(|(name, trigger, _)| flow_json(&s, name, trigger)).collect();
    axum::Json(json!({ "flows": flows })).into_response()
}

async fn one(State(s): State<ApiState>, Path(name): Path<String>) -> Response {
    match s.flow(&name) {
        Some((trigger, _)) => axum::Json(flow_json(&s, &name, trigger)).into_response(),
        None => no_such_flow(&name),
    }
}

/// `?limit=N&before=MS`: at most N runs (default 20), started before MS (ms since the epoch).
#[derive(Debug, serde::Deserialize)]
struct RunsQuery {
    limit: Option<usize>,
    before: Option<i64>,
}

async fn runs(State(s): State<ApiState>, Path(name): Path<String>, Query(q): Query<RunsQuery>) -> Response {
    if s.flow(&name).is_none() {
        return no_such_flow(&name);
    }
    let history = match runtime::run_history(&s.kafka).await {
        Ok(h) => h,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("reading the run history: {e}")),
    };
    let now = sluice_engine::record::now_ms();
    let host = sluice_engine::ledger::host_name();
    let runs: Vec<Value> = history
        .iter()
        .rev()
        .filter(|r| r.flow == name && q.before.is_none_or(|b| r.started_ms < b))
        .take(q.limit.unwrap_or(20))
        .map(|r| run_json(r, now, &host))
        .collect();
    axum::Json(json!({ "flow": name, "runs": runs })).into_response()
}

/// A run record as the API shows it.
fn run_json(r: &RunRecord, now: i64, host: &str) -> Value {
    let c = &r.counts;
    let status = match r.liveness(now, host) {
        Liveness::Interrupted => "interrupted",
        _ => match r.status {
            sluice_engine::ledger::RunStatus::Running => "running",
            sluice_engine::ledger::RunStatus::Succeeded => "succeeded",
            sluice_engine::ledger::RunStatus::Stopped => "stopped",
            sluice_engine::ledger::RunStatus::Failed => "failed",
        },
    };
    json!({
        "run_id": r.run_id,
        "status": status,
        "trigger": r.trigger,
        "started_ms": r.started_ms,
        "updated_ms": r.updated_ms,
        "error": r.error,
        "resumes": r.resumes,
        "counts": {
            "read": c.read(), "delivered": c.delivered, "filtered": c.filtered,
            "dead_lettered": c.dlq(), "dropped": c.dropped, "in_flight": c.in_flight(),
        },
        "bytes_read": c.bytes_read,
        "bytes_written": c.bytes_written,
        "position_start": r.position_start,
        "position_end": r.position_end,
    })
}

async fn pause(State(s): State<ApiState>, Path(name): Path<String>) -> Response {
    set(s, name, FlowState::Paused, Some("paused through the management API".into())).await
}

async fn resume(State(s): State<ApiState>, Path(name): Path<String>) -> Response {
    set(s, name, FlowState::Active, None).await
}

/// Sets the flow's state in Kafka: every process running it obeys within a few seconds.
async fn set(s: ApiState, name: String, state: FlowState, reason: Option<String>) -> Response {
    if s.flow(&name).is_none() {
        return no_such_flow(&name);
    }
    match runtime::set_flow_state(&s.kafka, &name, state, reason).await {
        Ok(FlowStateRecord { state, updated_ms, .. }) => {
            axum::Json(json!({"name": name, "state": state.name(), "updated_ms": updated_ms})).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("setting the flow's state: {e}")),
    }
}
