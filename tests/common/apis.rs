//! Loopback stand-ins for SaaS APIs, shared by the `http` source's tests and the REST spec
//! tests: a Zendesk-style incremental ticket export and a GitHub-style issues listing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Zendesk's incremental ticket export: `start_time` or `cursor`, `after_cursor`, `end_of_stream`.
pub struct Tickets {
    /// Every ticket, in `updated_at` order.
    pub tickets: Mutex<Vec<Value>>,
    /// Requests answered so far (the third gets a 429).
    pub requests: AtomicUsize,
}

pub async fn export(
    State(s): State<Arc<Tickets>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer zd-token") {
        return (StatusCode::UNAUTHORIZED, "no").into_response();
    }
    if s.requests.fetch_add(1, Ordering::SeqCst) == 2 {
        return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "slow down").into_response();
    }
    let all = s.tickets.lock().unwrap().clone();
    let start = match (q.get("cursor"), q.get("start_time")) {
        (Some(c), _) => c.parse::<usize>().unwrap(),
        (None, Some(t)) => {
            let t: i64 = t.parse().unwrap();
            all.iter().position(|x| x["updated_at"].as_i64().unwrap() >= t).unwrap_or(all.len())
        }
        (None, None) => return (StatusCode::BAD_REQUEST, "start_time or cursor required").into_response(),
    };
    let end = (start + 100).min(all.len());
    Json(json!({"tickets": all[start..end], "after_cursor": end.to_string(), "end_of_stream": end == all.len()}))
        .into_response()
}

/// Ticket `id`.
pub fn ticket(id: i64) -> Value {
    json!({"id": id, "subject": format!("ticket {id}"), "updated_at": 1_700_000_000 + id})
}

/// GitHub's issues listing: a bearer token, `since` (ISO 8601, compared as text), `page` and
/// `per_page`, the next page in the `Link` header.
pub struct Issues {
    /// Every issue.
    pub issues: Mutex<Vec<Value>>,
    /// Requests answered so far.
    pub requests: AtomicUsize,
}

/// Issue `id`, last updated at `minute`.
pub fn issue(id: i64, minute: i64) -> Value {
    json!({"id": 1000 + id, "number": id, "title": format!("issue {id}"), "state": "open",
           "updated_at": format!("2026-01-{:02}T{:02}:{:02}:00Z", 1 + minute / 1440, minute / 60 % 24, minute % 60)})
}

/// `GET /repos/{owner}/{repo}/issues`.
pub async fn issues(
    State(s): State<Arc<Issues>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer gh-token") {
        return (StatusCode::UNAUTHORIZED, "Bad credentials").into_response();
    }
    s.requests.fetch_add(1, Ordering::SeqCst);
    let since = q.get("since").cloned().unwrap_or_default();
    let page: usize = q.get("page").map_or(1, |v| v.parse().unwrap());
    let per: usize = q.get("per_page").map_or(30, |v| v.parse().unwrap());
    let mut all: Vec<Value> = s
        .issues
        .lock()
        .unwrap()
        .iter()
        .filter(|i| i["updated_at"].as_str().unwrap() >= since.as_str())
        .cloned()
        .collect();
    all.sort_by(|a, b| a["updated_at"].as_str().cmp(&b["updated_at"].as_str()));
    let start = (page - 1) * per;
    let end = (start + per).min(all.len());
    let mut resp = Json(Value::Array(all[start.min(end)..end].to_vec())).into_response();
    if end < all.len() {
        let host = headers.get("host").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let path = "repos/acme/widgets/issues";
        let next = format!("<http://{host}/{path}?page={}&per_page={per}&since={since}>; rel=\"next\"", page + 1);
        resp.headers_mut().insert("link", next.parse().unwrap());
    }
    resp
}

/// Both APIs on one loopback server, with tickets `0..tickets` and issues `0..issues` (issue `i`
/// updated at minute `i`); their states stay shared with the test, which adds to them.
pub struct Apis {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The ticket export's state.
    pub tickets: Arc<Tickets>,
    /// The issues listing's state.
    pub issues: Arc<Issues>,
    _runtime: tokio::runtime::Runtime,
}

/// Starts [`Apis`].
pub fn serve_apis(tickets: i64, issues: i64) -> Apis {
    let tickets =
        Arc::new(Tickets { tickets: Mutex::new((0..tickets).map(ticket).collect()), requests: AtomicUsize::new(0) });
    let listing = Arc::new(Issues {
        issues: Mutex::new((0..issues).map(|i| issue(i, i)).collect()),
        requests: AtomicUsize::new(0),
    });
    let app = axum::Router::new()
        .route("/api/v2/incremental/tickets/cursor.json", axum::routing::get(export))
        .with_state(tickets.clone())
        .merge(
            axum::Router::new()
                .route("/repos/acme/widgets/issues", axum::routing::get(self::issues))
                .with_state(listing.clone()),
        );
    let (url, runtime) = super::http::serve(app);
    Apis { url, tickets, issues: listing, _runtime: runtime }
}
