//! The management listener of `sluice run --api ADDR` (or `api.listen`): health, readiness, the
//! flows' counts as JSON, and every metric as Prometheus text at `/metrics` — the counts read
//! from the run ledgers the flows count in, so what is scraped agrees with what `status` and
//! the run records say.
//!
//! It listens on loopback unless `api.token` is set; with a token, every route but `/health`
//! (a liveness probe's) and `/openapi.json` asks for it as `Authorization: Bearer …`.
//!
//! The OpenAPI 3 document at `/openapi.json` is generated from the handlers' `#[utoipa::path]`
//! annotations and the answer types in `model` (utoipa), then given what only the running
//! process knows: the flow and connection names a path may hold, and the bearer scheme when a
//! token is set.

mod flows;
mod model;
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
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// What the listener reads: each flow's name, trigger and metrics, and the process's
/// telemetry. It serves once the cluster is reached and every flow's task is started, so being
/// up is being ready.
#[derive(Clone)]
pub(crate) struct ApiState {
    /// The flows and config running now (a reload replaces them).
    pub(crate) live: Arc<std::sync::RwLock<Arc<Live>>>,
    /// Renders `/metrics`.
    pub(crate) telemetry: Telemetry,
    /// What `Authorization: Bearer …` must say, when set.
    pub(crate) token: Option<Secret>,
    /// sluice's cluster: run history and flow states.
    pub(crate) kafka: KafkaSettings,
    /// The flows' states as last read.
    pub(crate) states: crate::lifecycle::States,
    /// Each connection's last test through the API.
    pub(crate) tested: Arc<std::sync::Mutex<std::collections::HashMap<String, model::Tested>>>,
    /// The process's shutdown, which a replay obeys.
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
}

/// What the process runs now.
#[derive(Default)]
pub(crate) struct Live {
    /// (flow, trigger as written, metrics), in config order.
    pub(crate) flows: Vec<(String, &'static str, Arc<FlowMetrics>)>,
    /// The config: connections and flows.
    pub(crate) cfg: Option<Arc<crate::config::Config>>,
    /// Where `POST /flows/{name}/runs` asks an on-demand or scheduled flow's task for a run.
    pub(crate) triggers: std::collections::HashMap<String, tokio::sync::mpsc::Sender<()>>,
}

impl ApiState {
    /// What runs now.
    fn live(&self) -> Arc<Live> {
        self.live.read().map(|l| l.clone()).unwrap_or_default()
    }

    /// The flow named `name`: (trigger, metrics).
    fn flow(&self, name: &str) -> Option<(&'static str, Arc<FlowMetrics>)> {
        self.live().flows.iter().find(|(n, _, _)| n == name).map(|(_, t, m)| (*t, m.clone()))
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
    let (guarded, api) = OpenApiRouter::new()
        .routes(routes!(ready))
        .routes(routes!(metrics))
        .merge(flows::routes())
        .merge(ops::routes())
        .split_for_parts();
    let (open, health) = OpenApiRouter::new().routes(routes!(health)).split_for_parts();
    let mut doc = api;
    doc.merge(health);
    let doc = Arc::new(doc);
    let app = Router::new()
        .merge(guarded.route_layer(axum::middleware::from_fn_with_state(state.clone(), authorized)))
        .merge(open)
        .route(
            "/openapi.json",
            get(move |State(s): State<ApiState>| async move { axum::Json(document((*doc).clone(), &s)) }),
        )
        .with_state(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("the management API stopped: {e}");
        }
    })
}

/// The OpenAPI document as served: the generated one, with the names a path may hold (the
/// flows and connections of this process) and, with a token, the bearer scheme on every
/// operation that asks for it (and its 401).
fn document(mut doc: utoipa::openapi::OpenApi, s: &ApiState) -> serde_json::Value {
    doc.info.title = "sluice management API".into();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc.info.description = Some("Flows, runs, dead letters, connections and metrics of a `sluice run` process.".into());
    let mut v = serde_json::to_value(&doc).unwrap_or_default();
    let live = s.live();
    let flows: Vec<&str> = live.flows.iter().map(|(n, _, _)| n.as_str()).collect();
    let conns: Vec<&str> = live.cfg.iter().flat_map(|c| c.connections.keys()).map(String::as_str).collect();
    let error = json!({"description": "the bearer token is missing or wrong",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}});
    if let Some(paths) = v.get_mut("paths").and_then(|p| p.as_object_mut()) {
        for (path, item) in paths.iter_mut() {
            let names: &[&str] = if path.starts_with("/connections/") { &conns } else { &flows };
            let open = path == "/health";
            for op in item.as_object_mut().into_iter().flat_map(|o| o.values_mut()) {
                // OpenAPI requires every response to say what it is.
                for (code, r) in op.get_mut("responses").and_then(|r| r.as_object_mut()).into_iter().flatten() {
                    if r.get("description").is_none_or(|d| d.as_str().is_some_and(str::is_empty)) {
                        let reason = code.parse::<u16>().ok().and_then(|c| axum::http::StatusCode::from_u16(c).ok());
                        r["description"] = json!(reason.and_then(|c| c.canonical_reason()).unwrap_or("answer"));
                    }
                }
                for p in op.get_mut("parameters").and_then(|p| p.as_array_mut()).into_iter().flatten() {
                    if p["in"] == "path" && p["name"] == "name" {
                        p["schema"] = json!({"type": "string", "enum": names});
                    }
                }
                if s.token.is_some() && !open {
                    op["security"] = json!([{"bearer": []}]);
                    op["responses"]["401"] = error.clone();
                }
            }
        }
    }
    if s.token.is_some() {
        v["components"]["securitySchemes"] = json!({"bearer": {"type": "http", "scheme": "bearer"}});
    }
    v
}

/// The process is up.
#[utoipa::path(get, path = "/health", tag = "process", responses((status = 200, body = model::Status)))]
async fn health() -> axum::Json<model::Status> {
    axum::Json(model::Status { status: "up" })
}

/// The process is connected to Kafka and its flows are started.
#[utoipa::path(get, path = "/ready", tag = "process", responses((status = 200, body = model::Status)))]
async fn ready() -> axum::Json<model::Status> {
    axum::Json(model::Status { status: "ready" })
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
    let body = axum::Json(model::ErrorBody { error: "this API needs `Authorization: Bearer <api.token>`".into() });
    (axum::http::StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Every metric, in Prometheus' text format (version 0.0.4), from the same meter the OTLP
/// export reads.
#[utoipa::path(
    get, path = "/metrics", tag = "process",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain")),
)]
async fn metrics(State(s): State<ApiState>) -> impl IntoResponse {
    let text = s.telemetry.prometheus_text().unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
