//! The management listener of `sluice run --api ADDR` (or `api.listen`): health, readiness, the
//! flows' counts as JSON, and every metric as Prometheus text at `/metrics` — the counts read
//! from the run ledgers the flows count in, so what is scraped agrees with what `status` and
//! the run records say.
//!
//! It listens on loopback only: any other address is refused until the API has its bearer
//! token (issue 17 asks for one before it may listen beyond the machine).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;
use sluice_engine::telemetry::{FlowMetrics, Telemetry};

/// What the listener reads: each flow's name, trigger and metrics, and the process's
/// telemetry. It serves once the cluster is reached and every flow's task is started, so being
/// up is being ready.
#[derive(Clone)]
pub(crate) struct ApiState {
    /// (flow, trigger as written, metrics).
    pub(crate) flows: Arc<Vec<(String, &'static str, Arc<FlowMetrics>)>>,
    /// Renders `/metrics`.
    pub(crate) telemetry: Telemetry,
}

/// Binds `listen` (loopback only), before any flow starts: a bad address stops the run
/// before it begins.
pub(crate) async fn bind(listen: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    if !listen.ip().is_loopback() {
        return Err(format!(
            "--api {listen}: the management API listens on loopback only (127.0.0.1 or ::1) until it has \
             bearer-token authentication"
        ));
    }
    tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("--api {listen}: binding the listener: {e}"))
}

/// Serves on `listener` until the process ends.
pub(crate) fn serve(listener: tokio::net::TcpListener, state: ApiState) -> tokio::task::JoinHandle<()> {
    let app = Router::new()
        .route("/health", get(|| async { axum::Json(json!({"status": "up"})) }))
        .route("/ready", get(|| async { axum::Json(json!({"status": "ready"})) }))
        .route("/flows", get(flows))
        .route("/metrics", get(metrics))
        .with_state(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("the management API stopped: {e}");
        }
    })
}

async fn flows(State(s): State<ApiState>) -> impl IntoResponse {
    let flows: Vec<serde_json::Value> = s
        .flows
        .iter()
        .map(|(name, trigger, metrics)| {
            let t = metrics.totals();
            json!({
                "name": name,
                "trigger": trigger,
                "counts": {
                    "read": t.read, "delivered": t.delivered, "filtered": t.filtered,
                    "dead_lettered": t.dead_lettered, "dropped": t.dropped, "in_flight": t.in_flight,
                },
            })
        })
        .collect();
    axum::Json(json!({ "flows": flows }))
}

/// Every metric, in Prometheus' text format (version 0.0.4), from the same meter the OTLP
/// export reads.
async fn metrics(State(s): State<ApiState>) -> impl IntoResponse {
    let text = s.telemetry.prometheus_text().unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
