//! The management listener of `sluice run --api ADDR` (or `api.listen`): health, readiness, the
//! flows' counts as JSON, and every metric as Prometheus text at `/metrics` — the counts read
//! from the run ledgers the flows count in, so what is scraped agrees with what `status` and
//! the run records say.
//!
//! It listens on loopback unless `api.token` is set; with a token, every route but `/health`
//! (a liveness probe's) asks for it as `Authorization: Bearer …`.

mod flows;
mod ops;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;
use sluice_engine::kafka::KafkaSettings;
use sluice_engine::secret::Secret;
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
    /// What `Authorization: Bearer …` must say, when set.
    pub(crate) token: Option<Secret>,
    /// sluice's cluster: run history and flow states.
    pub(crate) kafka: KafkaSettings,
    /// The flows' states as last read.
    pub(crate) states: crate::lifecycle::States,
    /// The config the process runs: connections and flows.
    pub(crate) cfg: Arc<crate::config::Config>,
    /// Each connection's last test through the API.
    pub(crate) tested: Arc<std::sync::Mutex<std::collections::HashMap<String, ops::Tested>>>,
    /// The process's shutdown, which a replay obeys.
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
    /// Where `POST /flows/{name}/runs` asks an on-demand or scheduled flow's task for a run.
    pub(crate) triggers: Arc<std::collections::HashMap<String, tokio::sync::mpsc::Sender<()>>>,
}

impl ApiState {
    /// The flow named `name`: (trigger, metrics).
    fn flow(&self, name: &str) -> Option<(&'static str, &Arc<FlowMetrics>)> {
        self.flows.iter().find(|(n, _, _)| n == name).map(|(_, t, m)| (*t, m))
    }
}

/// Binds `listen`, before any flow starts: a bad address stops the run before it begins. An
/// address beyond loopback is refused without a token: the API can pause flows and replay dead
/// letters, which nobody else on the network should.
pub(crate) async fn bind(listen: SocketAddr, token: Option<&Secret>) -> Result<tokio::net::TcpListener, String> {
    if !listen.ip().is_loopback() && token.is_none() {
        return Err(format!(
            "--api {listen}: the management API listens beyond loopback (127.0.0.1 or ::1) only with a bearer \
             token: set `api.token: ${{env:SLUICE_API_TOKEN}}` in the config"
        ));
    }
    tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("--api {listen}: binding the listener: {e}"))
}

/// Serves on `listener` until the process ends.
pub(crate) fn serve(listener: tokio::net::TcpListener, state: ApiState) -> tokio::task::JoinHandle<()> {
    let guarded = Router::new()
        .route("/ready", get(|| async { axum::Json(json!({"status": "ready"})) }))
        .route("/metrics", get(metrics))
        .merge(flows::routes())
        .merge(ops::routes())
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), authorized));
    let app = Router::new()
        .route("/health", get(|| async { axum::Json(json!({"status": "up"})) }))
        .merge(guarded)
        .with_state(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("the management API stopped: {e}");
        }
    })
}

/// Lets a request through when no token is set, or when it carries the token.
async fn authorized(
    State(s): State<ApiState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let Some(token) = &s.token else { return next.run(request).await };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| same(g.as_bytes(), token.expose().as_bytes())) {
        return next.run(request).await;
    }
    let body = axum::Json(json!({"error": "this API needs `Authorization: Bearer <api.token>`"}));
    (axum::http::StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Every metric, in Prometheus' text format (version 0.0.4), from the same meter the OTLP
/// export reads.
async fn metrics(State(s): State<ApiState>) -> impl IntoResponse {
    let text = s.telemetry.prometheus_text().unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
