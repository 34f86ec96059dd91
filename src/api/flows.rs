//! The API's flow routes: state and counts, run history, pause and resume.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use sluice_engine::ledger::{Liveness, RunRecord, RunStatus};
use sluice_engine::runtime::{self, FlowState};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;
use super::model::{ApiError, CurrentRun, ErrorBody, FlowList, FlowView, Lag, RunList, RunView, StateChange, count};
use sluice_engine::telemetry::FlowMetrics;

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(one))
        .routes(routes!(runs, super::ops::start_run))
        .routes(routes!(pause))
        .routes(routes!(resume))
}

/// The flow named in the path, or why not.
pub(super) fn flow_name(s: &ApiState, path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(name) = path.map_err(ApiError::bad_request)?;
    match s.flow(&name) {
        Some(_) => Ok(name),
        None => Err(ApiError::no_flow(&name)),
    }
}

/// A flow as the API shows it.
fn view(s: &ApiState, name: &str, trigger: &str, metrics: &FlowMetrics) -> FlowView {
    let state = s.states.borrow().get(name).cloned();
    let kept = state.as_ref().map_or(FlowState::Active, |r| r.state);
    let current = metrics.current_run();
    let status = match kept {
        FlowState::Paused | FlowState::Deactivated => kept.name(),
        FlowState::Active if current.is_some() => "running",
        FlowState::Active if metrics.last_failed() => "failed",
        FlowState::Active => "idle",
    };
    FlowView {
        name: name.to_owned(),
        trigger: trigger.to_owned(),
        status: status.to_owned(),
        state: kept.name().to_owned(),
        state_reason: state.and_then(|r| r.reason),
        current_run: current.map(|(run_id, started_ms, c)| CurrentRun { run_id, started_ms, counts: (&c).into() }),
        counts: (&metrics.totals()).into(),
        lag: metrics.lags().into_iter().map(|(topic, partition, lag)| Lag { topic, partition, lag }).collect(),
    }
}

/// Every flow of this process: trigger, state, counts, lag.
#[utoipa::path(get, path = "/flows", tag = "flows", responses((status = 200, body = FlowList)))]
async fn list(State(s): State<ApiState>) -> Json<FlowList> {
    let live = s.live();
    Json(FlowList { flows: live.flows.iter().map(|(name, trigger, m)| view(&s, name, trigger, m)).collect() })
}

/// One flow: trigger, state, counts, lag.
#[utoipa::path(
    get, path = "/flows/{name}", tag = "flows",
    params(("name" = String, Path, description = "The flow")),
    responses((status = 200, body = FlowView), (status = 404, body = ErrorBody), (status = 400, body = ErrorBody)),
)]
async fn one(State(s): State<ApiState>, path: Result<Path<String>, PathRejection>) -> Result<Json<FlowView>, ApiError> {
    let Path(name) = path.map_err(ApiError::bad_request)?;
    let Some((trigger, metrics)) = s.flow(&name) else { return Err(ApiError::no_flow(&name)) };
    Ok(Json(view(&s, &name, trigger, &metrics)))
}

/// `?limit=N&before=MS`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct RunsQuery {
    /// At most this many runs (default 20).
    #[param(minimum = 0)]
    limit: Option<i64>,
    /// Only runs started before this time, ms since the epoch.
    before: Option<i64>,
}

/// A flow's run history, newest first.
#[utoipa::path(
    get, path = "/flows/{name}/runs", tag = "flows",
    params(("name" = String, Path, description = "The flow"), RunsQuery),
    responses(
        (status = 200, body = RunList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "the cluster could not be read"),
    ),
)]
async fn runs(
    State(s): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<RunsQuery>, QueryRejection>,
) -> Result<Json<RunList>, ApiError> {
    let name = flow_name(&s, path)?;
    let Query(q) = query.map_err(ApiError::bad_request)?;
    let limit = count("limit", q.limit, 20)?;
    let history = runtime::run_history(&s.kafka)
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("reading the run history: {e}")))?;
    let now = sluice_engine::record::now_ms();
    let host = sluice_engine::ledger::host_name();
    let runs = history
        .iter()
        .rev()
        .filter(|r| r.flow == name && q.before.is_none_or(|b| r.started_ms < b))
        .take(limit)
        .map(|r| run_view(r, now, &host))
        .collect();
    Ok(Json(RunList { flow: name, runs }))
}

/// A run record as the API shows it.
fn run_view(r: &RunRecord, now: i64, host: &str) -> RunView {
    let c = &r.counts;
    let status = match (r.status, r.liveness(now, host)) {
        (_, Liveness::Interrupted) => "interrupted",
        (RunStatus::Running, _) => "running",
        (RunStatus::Succeeded, _) => "succeeded",
        (RunStatus::Stopped, _) => "stopped",
        (RunStatus::Failed, _) => "failed",
    };
    RunView {
        run_id: r.run_id.clone(),
        status: status.to_owned(),
        trigger: r.trigger.clone(),
        started_ms: r.started_ms,
        updated_ms: r.updated_ms,
        error: r.error.clone(),
        resumes: r.resumes.clone(),
        counts: c.into(),
        bytes_read: c.bytes_read,
        bytes_written: c.bytes_written,
        position_start: r.position_start.clone(),
        position_end: r.position_end.clone(),
    }
}

/// Pauses the flow in every process running it: a run in progress finishes its batch and
/// stops; no run starts until it is resumed.
#[utoipa::path(
    post, path = "/flows/{name}/pause", tag = "flows",
    params(("name" = String, Path, description = "The flow")),
    responses(
        (status = 200, body = StateChange), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "the cluster could not be written"),
    ),
)]
async fn pause(
    State(s): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<StateChange>, ApiError> {
    set(&s, flow_name(&s, path)?, FlowState::Paused, Some("paused through the management API".into())).await
}

/// Makes a paused or deactivated flow active again.
#[utoipa::path(
    post, path = "/flows/{name}/resume", tag = "flows",
    params(("name" = String, Path, description = "The flow")),
    responses(
        (status = 200, body = StateChange), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "the cluster could not be written"),
    ),
)]
async fn resume(
    State(s): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<StateChange>, ApiError> {
    set(&s, flow_name(&s, path)?, FlowState::Active, None).await
}

/// Sets the flow's state in Kafka: every process running it obeys within a few seconds.
async fn set(
    s: &ApiState,
    name: String,
    state: FlowState,
    reason: Option<String>,
) -> Result<Json<StateChange>, ApiError> {
    let rec = runtime::set_flow_state(&s.kafka, &name, state, reason)
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("setting the flow's state: {e}")))?;
    Ok(Json(StateChange { name, state: rec.state.name().to_owned(), updated_ms: rec.updated_ms }))
}
