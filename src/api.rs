//! The management listener of `sluice run --api ADDR`: health, readiness, the flows' counts as
//! JSON, and the same counts as Prometheus text at `/metrics`, read from the run ledgers the
//! flows count in (so what is scraped agrees with what `status` and the run records say).
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
use sluice_engine::ledger::Ledger;

/// What the listener reads: each flow's name, trigger and ledger. It serves once the cluster
/// is reached and every flow's task is started, so being up is being ready.
#[derive(Clone)]
pub(crate) struct ApiState {
    /// (flow, trigger as written, ledger).
    pub(crate) flows: Arc<Vec<(String, &'static str, Arc<Ledger>)>>,
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
        .map(|(name, trigger, ledger)| {
            let c = ledger.snapshot();
            json!({
                "name": name,
                "trigger": trigger,
                "counts": {
                    "read": c.read(), "delivered": c.delivered, "filtered": c.filtered,
                    "dead_lettered": c.dlq(), "dropped": c.dropped, "in_flight": c.in_flight(),
                },
            })
        })
        .collect();
    axum::Json(json!({ "flows": flows }))
}

/// The counters, in Prometheus' text format (version 0.0.4).
async fn metrics(State(s): State<ApiState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], prometheus_text(&s.flows))
}

/// One metric per ledger count, labelled by flow. Flow names are sluice identifiers, but are
/// escaped as label values anyway.
fn prometheus_text(flows: &[(String, &'static str, Arc<Ledger>)]) -> String {
    use std::fmt::Write as _;
    let snaps: Vec<(&str, sluice_engine::ledger::LedgerSnapshot)> =
        flows.iter().map(|(n, _, l)| (n.as_str(), l.snapshot())).collect();
    type Get = fn(&sluice_engine::ledger::LedgerSnapshot) -> u64;
    let series: [(&str, &str, &str, Get); 6] = [
        ("sluice_records_read_total", "counter", "Records the flow read from its source.", |c| c.read()),
        ("sluice_records_delivered_total", "counter", "Records delivered to the destination.", |c| c.delivered),
        ("sluice_records_filtered_total", "counter", "Records the flow's SQL or tasks filtered out.", |c| c.filtered),
        ("sluice_records_dead_lettered_total", "counter", "Records sent to the dead-letter topic.", |c| c.dlq()),
        ("sluice_records_dropped_total", "counter", "Records dropped under errors.policy: drop.", |c| c.dropped),
        ("sluice_records_in_flight", "gauge", "Records read and not yet settled.", |c| c.in_flight()),
    ];
    let mut out = String::new();
    for (name, kind, help, get) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (flow, c) in &snaps {
            let flow = flow.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            let _ = writeln!(out, "{name}{{flow=\"{flow}\"}} {}", get(c));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_written_in_prometheus_text() {
        let l = Ledger::shared();
        let text = prometheus_text(&[("a\"b".to_owned(), "continuous", l)]);
        assert!(text.contains("# TYPE sluice_records_delivered_total counter\n"), "{text}");
        assert!(text.contains("sluice_records_read_total{flow=\"a\\\"b\"} 0\n"), "{text}");
        assert!(text.contains("# TYPE sluice_records_in_flight gauge\n"), "{text}");
    }
}
