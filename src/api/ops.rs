//! The API's operations beyond a flow's state: connections (shown with secrets masked, and
//! tested), dead letters (browsed and replayed), and starting a run now.

use std::time::Instant;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use sluice_engine::kafka;
use sluice_engine::ledger::Ledger;
use sluice_engine::names::dlq_header;

use super::ApiState;
use super::flows::error;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/connections", get(connections))
        .route("/connections/{name}/test", post(test_connection))
        .route("/flows/{name}/dlq", get(dead_letters))
        .route("/flows/{name}/dlq/replay", post(replay))
}

/// The last test of a connection through the API.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Tested {
    /// Whether the service was reached and logged in to.
    ok: bool,
    /// What it said (or why it failed), secrets redacted.
    message: String,
    /// When, ms since the epoch.
    at_ms: i64,
}

async fn connections(State(s): State<ApiState>) -> Response {
    let tested = s.tested.lock().map(|t| t.clone()).unwrap_or_default();
    let list: Vec<Value> = s
        .cfg
        .connections
        .iter()
        .map(|(name, c)| {
            let flows: Vec<&str> = s
                .cfg
                .flows
                .iter()
                .filter(|f| f.source_connection == *name || f.destination_connection == *name)
                .map(|f| f.name.as_str())
                .collect();
            json!({"name": name, "type": c.kind(), "settings": c.shown(), "flows": flows, "last_test": tested.get(name)})
        })
        .collect();
    axum::Json(json!({ "connections": list })).into_response()
}

async fn test_connection(State(s): State<ApiState>, Path(name): Path<String>) -> Response {
    let Some(conn) = s.cfg.connections.get(&name) else {
        return error(StatusCode::NOT_FOUND, format!("no connection named `{name}`"));
    };
    let ctx = sluice_connectors::Context { connection: &name, own: &s.kafka, flow: "" };
    let (ok, message) = match conn.healthcheck(ctx).await {
        Ok(what) => (true, what),
        Err(e) => (false, e.to_string()),
    };
    let message = sluice_engine::secret::redact(&message).into_owned();
    let t = Tested { ok, message, at_ms: sluice_engine::record::now_ms() };
    if let Ok(mut all) = s.tested.lock() {
        all.insert(name.clone(), t.clone());
    }
    axum::Json(json!({"name": name, "type": conn.kind(), "ok": t.ok, "message": t.message, "at_ms": t.at_ms}))
        .into_response()
}

/// `?limit=N&offset=K`: N dead letters (default 100, at most 1000) after skipping K.
#[derive(Debug, serde::Deserialize)]
struct Page {
    limit: Option<usize>,
    offset: Option<usize>,
}

async fn dead_letters(State(s): State<ApiState>, Path(name): Path<String>, Query(page): Query<Page>) -> Response {
    if s.flow(&name).is_none() {
        return error(StatusCode::NOT_FOUND, format!("no flow named `{name}` runs in this process"));
    }
    let (limit, skip) = (page.limit.unwrap_or(100).min(1000), page.offset.unwrap_or(0));
    let topic = s.kafka.dlq_topic(&name);
    let letters = match kafka::read_topic(&s.kafka, &topic, skip.saturating_add(limit)).await {
        Ok(l) => l,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("reading {topic}: {e}")),
    };
    let text = |b: &Option<Vec<u8>>| b.as_deref().map(|b| String::from_utf8_lossy(b).into_owned());
    let list: Vec<Value> = letters
        .iter()
        .skip(skip)
        .map(|m| {
            let origin =
                match (m.header(dlq_header::TOPIC), m.header(dlq_header::PARTITION), m.header(dlq_header::OFFSET)) {
                    (Some(t), Some(p), Some(o)) => {
                        json!({"topic": t, "partition": p.parse::<i64>().ok(), "offset": o.parse::<i64>().ok()})
                    }
                    _ => Value::Null,
                };
            json!({
                "partition": m.partition,
                "offset": m.offset,
                "stage": m.header(dlq_header::STAGE),
                "error": m.header(dlq_header::ERROR),
                "attempts": m.header(dlq_header::ATTEMPTS).and_then(|a| a.parse::<i64>().ok()),
                "ts_ms": m.header(dlq_header::TS_MS).and_then(|a| a.parse::<i64>().ok()),
                "origin": origin,
                "source": m.header(dlq_header::SOURCE),
                "key": text(&m.key),
                "payload": text(&m.payload),
            })
        })
        .collect();
    axum::Json(json!({ "flow": name, "topic": topic, "dead_letters": list })).into_response()
}

/// Sends the flow's dead letters through its SQL and destination again (as `sluice dlq
/// replay`), and answers when done.
async fn replay(State(s): State<ApiState>, Path(name): Path<String>) -> Response {
    let Some(flow) = s.cfg.flows.iter().find(|f| f.name == name && s.flow(&name).is_some()) else {
        return error(StatusCode::NOT_FOUND, format!("no flow named `{name}` runs in this process"));
    };
    let stage = match crate::plan::plan_flow(flow, Some(&s.cfg.connections)).await {
        Ok(stage) => stage,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("planning the flow's SQL: {e}")),
    };
    let metrics = sluice_engine::telemetry::FlowMetrics::disabled(&flow.name);
    let ctx = crate::run::flow_context(flow, &s.kafka, Ledger::shared(), metrics, &s.shutdown);
    let started = Instant::now();
    match crate::commands::replay_dlq(&s.cfg, flow, &ctx, stage).await {
        Ok(dest) => {
            let c = ctx.ledger.snapshot();
            axum::Json(json!({
                "flow": name,
                "destination": dest,
                "replayed": c.consumed,
                "delivered": c.delivered,
                "filtered": c.filtered,
                "dead_lettered_again": c.sink_dlq,
                "dropped": c.dropped,
                "took_ms": started.elapsed().as_millis() as u64,
            }))
            .into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("replaying the DLQ of flow `{name}`: {e:#}")),
    }
}

/// Starts a run of an on-demand or scheduled flow now (after the one in progress, if any).
pub(super) async fn start_run(State(s): State<ApiState>, Path(name): Path<String>) -> Response {
    let Some((trigger, _)) = s.flow(&name) else {
        return error(StatusCode::NOT_FOUND, format!("no flow named `{name}` runs in this process"));
    };
    let Some(tx) = s.triggers.get(&name) else {
        return error(StatusCode::CONFLICT, format!("flow `{name}` is {trigger}: it runs all the time"));
    };
    match tx.try_send(()) {
        Ok(()) => (StatusCode::ACCEPTED, axum::Json(json!({"flow": name, "run": "requested"}))).into_response(),
        Err(_) => error(StatusCode::CONFLICT, format!("a run of flow `{name}` is already requested")),
    }
}
