//! The API's operations beyond a flow's state: connections (shown with secrets masked, and
//! tested), dead letters (browsed and replayed), and starting a run now.

use std::time::Instant;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use sluice_engine::kafka;
use sluice_engine::ledger::Ledger;
use sluice_engine::names::dlq_header;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;
use super::flows::flow_name;
use super::model::{
    ApiError, ConnectionList, ConnectionView, DeadLetter, DeadLetterList, ErrorBody, Origin, ReplayResult,
    RunRequested, TestResult, Tested, count,
};

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(connections))
        .routes(routes!(test_connection))
        .routes(routes!(dead_letters))
        .routes(routes!(replay))
}

/// The config's connections: type, settings with every secret shown as `*****`, the flows
/// using each, and its last test.
#[utoipa::path(get, path = "/connections", tag = "connections", responses((status = 200, body = ConnectionList)))]
async fn connections(State(s): State<ApiState>) -> Json<ConnectionList> {
    let tested = s.tested.lock().map(|t| t.clone()).unwrap_or_default();
    let live = s.live();
    let Some(cfg) = live.cfg.as_ref() else { return Json(ConnectionList { connections: Vec::new() }) };
    let connections = cfg
        .connections
        .iter()
        .map(|(name, c)| ConnectionView {
            name: name.clone(),
            kind: c.kind().to_owned(),
            settings: c.shown().clone(),
            flows: cfg
                .flows
                .iter()
                .filter(|f| f.source_connection == *name || f.destination_connection == *name)
                .map(|f| f.name.clone())
                .collect(),
            last_test: tested.get(name).cloned(),
        })
        .collect();
    Json(ConnectionList { connections })
}

/// Reaches the connection's service and logs in, as `sluice connections test` does.
#[utoipa::path(
    post, path = "/connections/{name}/test", tag = "connections",
    params(("name" = String, Path, description = "The connection")),
    responses((status = 200, body = TestResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
)]
async fn test_connection(
    State(s): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<TestResult>, ApiError> {
    let Path(name) = path.map_err(ApiError::bad_request)?;
    let live = s.live();
    let Some(conn) = live.cfg.as_ref().and_then(|c| c.connections.get(&name)) else {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no connection named `{name}`")));
    };
    let ctx = sluice_connectors::Context::new(&name, &s.kafka, "");
    let (ok, message) = match conn.healthcheck(ctx).await {
        Ok(what) => (true, what),
        Err(e) => (false, e.to_string()),
    };
    let message = sluice_engine::secret::redact(&message).into_owned();
    let tested = Tested { ok, message, at_ms: sluice_engine::record::now_ms() };
    if let Ok(mut all) = s.tested.lock() {
        all.insert(name.clone(), tested.clone());
    }
    Ok(Json(TestResult { name, kind: conn.kind().to_owned(), tested }))
}

/// `?limit=N&offset=K`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Page {
    /// At most this many dead letters (default 100; more than 1000 reads 1000).
    #[param(minimum = 0)]
    limit: Option<i64>,
    /// Skip this many first.
    #[param(minimum = 0)]
    offset: Option<i64>,
}

/// A page of the flow's dead letters, with their reasons and origins.
#[utoipa::path(
    get, path = "/flows/{name}/dlq", tag = "dead letters",
    params(("name" = String, Path, description = "The flow"), Page),
    responses(
        (status = 200, body = DeadLetterList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "the cluster could not be read"),
    ),
)]
async fn dead_letters(
    State(s): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    page: Result<Query<Page>, QueryRejection>,
) -> Result<Json<DeadLetterList>, ApiError> {
    let name = flow_name(&s, path)?;
    let Query(page) = page.map_err(ApiError::bad_request)?;
    let limit = count("limit", page.limit, 100)?.min(1000);
    let skip = count("offset", page.offset, 0)?.min(1_000_000);
    let topic = s.kafka.dlq_topic(&name);
    let letters = kafka::read_topic(&s.kafka, &topic, skip.saturating_add(limit))
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("reading {topic}: {e}")))?;
    let text = |b: &Option<Vec<u8>>| b.as_deref().map(|b| String::from_utf8_lossy(b).into_owned());
    let dead_letters = letters
        .iter()
        .skip(skip)
        .map(|m| {
            let origin =
                match (m.header(dlq_header::TOPIC), m.header(dlq_header::PARTITION), m.header(dlq_header::OFFSET)) {
                    (Some(t), p, o) => Some(Origin {
                        topic: t.to_owned(),
                        partition: p.and_then(|p| p.parse().ok()),
                        offset: o.and_then(|o| o.parse().ok()),
                    }),
                    _ => None,
                };
            DeadLetter {
                partition: m.partition,
                offset: m.offset,
                stage: m.header(dlq_header::STAGE).map(str::to_owned),
                error: m.header(dlq_header::ERROR).map(str::to_owned),
                attempts: m.header(dlq_header::ATTEMPTS).and_then(|a| a.parse().ok()),
                ts_ms: m.header(dlq_header::TS_MS).and_then(|a| a.parse().ok()),
                origin,
                source: m.header(dlq_header::SOURCE).map(str::to_owned),
                key: text(&m.key),
                payload: text(&m.payload),
            }
        })
        .collect();
    Ok(Json(DeadLetterList { flow: name, topic, dead_letters }))
}

/// Sends the flow's dead letters through its SQL and destination again (as `sluice dlq
/// replay`); answers when done. Each is replayed once; those that fail again return to the DLQ.
#[utoipa::path(
    post, path = "/flows/{name}/dlq/replay", tag = "dead letters",
    params(("name" = String, Path, description = "The flow")),
    responses(
        (status = 200, body = ReplayResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 500, body = ErrorBody, description = "the replay failed"),
    ),
)]
async fn replay(
    State(s): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ReplayResult>, ApiError> {
    let name = flow_name(&s, path)?;
    let live = s.live();
    let Some(cfg) = live.cfg.as_ref() else { return Err(ApiError::no_flow(&name)) };
    let Some(flow) = cfg.flows.iter().find(|f| f.name == name) else { return Err(ApiError::no_flow(&name)) };
    let failed = |e: String| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e);
    let stage = crate::plan::plan_flow(flow, Some(&cfg.connections))
        .await
        .map_err(|e| failed(format!("planning the flow's SQL: {e}")))?;
    let metrics = sluice_engine::telemetry::FlowMetrics::disabled(&flow.name);
    let ctx = crate::run::flow_context(flow, &s.kafka, Ledger::shared(), metrics, &s.shutdown);
    let started = Instant::now();
    let destination = crate::commands::replay_dlq(cfg, flow, &ctx, stage)
        .await
        .map_err(|e| failed(format!("replaying the DLQ of flow `{name}`: {e:#}")))?;
    let c = ctx.ledger.snapshot();
    Ok(Json(ReplayResult {
        flow: name,
        destination,
        replayed: c.consumed,
        delivered: c.delivered,
        filtered: c.filtered,
        dead_lettered_again: c.sink_dlq,
        dropped: c.dropped,
        took_ms: started.elapsed().as_millis() as u64,
    }))
}

/// Starts a run of an on-demand or scheduled flow now (after the one in progress, if any).
#[utoipa::path(
    post, path = "/flows/{name}/runs", tag = "flows",
    params(("name" = String, Path, description = "The flow")),
    responses(
        (status = 202, body = RunRequested), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "a continuous flow, or a run already requested"),
    ),
)]
pub(super) async fn start_run(
    State(s): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<RunRequested>), ApiError> {
    let name = flow_name(&s, path)?;
    let trigger = s.flow(&name).map_or("", |(t, _)| t);
    let live = s.live();
    let Some(tx) = live.triggers.get(&name) else {
        let why = match trigger {
            "continuous" => format!("flow `{name}` is continuous: it runs all the time"),
            _ => {
                format!("flow `{name}` runs once in this process: start `sluice run` with --serve to run it again here")
            }
        };
        return Err(ApiError(StatusCode::CONFLICT, why));
    };
    match tx.try_send(()) {
        Ok(()) => Ok((StatusCode::ACCEPTED, Json(RunRequested { flow: name, run: "requested" }))),
        Err(_) => Err(ApiError(StatusCode::CONFLICT, format!("a run of flow `{name}` is already requested"))),
    }
}
