//! The `http` source against real HTTP servers on loopback, through a real broker: a
//! Zendesk-style incremental cursor export (bearer token, a 429 on the way) and a Link-header
//! API behind OAuth 2.0 client credentials with short-lived tokens.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::apis::{Tickets, export, ticket};
use common::http::serve;
use common::kafka::Kafka;
use common::{read_jsonl, run, write};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(180);

fn a_zendesk_style_cursor_export_is_read_whole_then_resumed(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let state =
        Arc::new(Tickets { tickets: Mutex::new((0..1050).map(ticket).collect()), requests: AtomicUsize::new(0) });
    let app = Router::new().route("/api/v2/incremental/tickets/cursor.json", get(export)).with_state(state.clone());
    let (url, _rt) = serve(app);
    let out = dir.path().join("out");
    let cfg = write(
        dir.path(),
        "zd.yaml",
        &format!(
            r#"
kafka: {{{kafka}}}
connections:
  zendesk:
    type: http
    url: {url}/api/v2
    allow_private_addresses: true
    auth: {{type: bearer, token: "${{env:ZD_TOKEN}}"}}
  out: {{type: file, path: {out}}}
flows:
  - name: tickets
    source:
      connection: zendesk
      object: /incremental/tickets/cursor.json
      options:
        records: /tickets
        key: [id]
        pagination: {{type: cursor, param: cursor, cursor_from: /after_cursor, end_from: /end_of_stream}}
        incremental: {{param: start_time, start: "1700000000"}}
      schema: {{id: int64, subject: string, updated_at: int64}}
    transform:
      sql: SELECT id, subject, _op AS op FROM source
    retry: {{initial_backoff_ms: 100}}
    destination: {{connection: out, object: tickets.jsonl}}
"#,
            kafka = kafka.yaml(),
            out = out.display(),
        ),
    );
    let env = [("ZD_TOKEN", "zd-token")];
    let done = run(&["run", &cfg], dir.path(), &env, LIMIT);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    assert!(done.stderr.contains("429"), "the 429 was met and retried:\n{}", done.stderr);
    assert!(!done.stderr.contains("zd-token"));
    let (rows, _) = read_jsonl(&out.join("tickets.jsonl"));
    let mut ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..1050).collect::<Vec<i64>>(), "every ticket once");
    assert!(rows.iter().all(|r| r["op"] == "r" && r["subject"].as_str().unwrap().starts_with("ticket ")));

    // New tickets: the next run resumes from the last cursor and reads only them.
    state.tickets.lock().unwrap().extend((1050..1080).map(ticket));
    let done = run(&["run", &cfg], dir.path(), &env, LIMIT);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let (rows, _) = read_jsonl(&out.join("tickets.jsonl"));
    let mut new: Vec<i64> = rows[1050..].iter().map(|r| r["id"].as_i64().unwrap()).collect();
    new.sort_unstable();
    assert_eq!(new, (1050..1080).collect::<Vec<i64>>());
    eprintln!("http source (cursor): {} tickets, then {}", 1050, new.len());
}

/// A Link-header API behind OAuth 2.0: tokens live one second; items filter by `since`.
struct Items {
    items: Mutex<Vec<Value>>,
    tokens: Mutex<HashMap<String, Instant>>,
    issued: AtomicUsize,
}

async fn token(State(s): State<Arc<Items>>, body: String) -> Response {
    let form: HashMap<String, String> =
        body.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    if form.get("grant_type").map(String::as_str) != Some("client_credentials")
        || form.get("client_secret").map(String::as_str) != Some("cs")
    {
        return (StatusCode::UNAUTHORIZED, "bad client").into_response();
    }
    let n = s.issued.fetch_add(1, Ordering::SeqCst);
    let t = format!("tok{n}");
    s.tokens.lock().unwrap().insert(t.clone(), Instant::now() + Duration::from_secs(1));
    Json(json!({"access_token": t, "token_type": "bearer", "expires_in": 1})).into_response()
}

async fn items(State(s): State<Arc<Items>>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let valid = auth
        .strip_prefix("Bearer ")
        .and_then(|t| s.tokens.lock().unwrap().get(t).copied())
        .is_some_and(|until| Instant::now() < until);
    if !valid {
        return (StatusCode::UNAUTHORIZED, "expired").into_response();
    }
    let since: i64 = q.get("since").map_or(-1, |v| v.parse().unwrap());
    let page: usize = q.get("page").map_or(1, |v| v.parse().unwrap());
    let per: usize = q.get("per_page").map_or(30, |v| v.parse().unwrap());
    let all: Vec<Value> =
        s.items.lock().unwrap().iter().filter(|i| i["updated_at"].as_i64().unwrap() > since).cloned().collect();
    let start = (page - 1) * per;
    let end = (start + per).min(all.len());
    let mut resp = Json(Value::Array(all[start.min(end)..end].to_vec())).into_response();
    if end < all.len() {
        let host = headers.get("host").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let next = format!("<http://{host}/items?page={}&per_page={per}&since={since}>; rel=\"next\"", page + 1);
        resp.headers_mut().insert("link", next.parse().unwrap());
    }
    resp
}

fn a_link_header_api_behind_oauth2_is_paged_and_pulled_incrementally(kafka: &mut Kafka) {
    let dir = tempfile::tempdir().unwrap();
    let item = |id: i64| json!({"id": id, "name": format!("item {id}"), "updated_at": 100 + id});
    let state = Arc::new(Items {
        items: Mutex::new((0..450).map(item).collect()),
        tokens: Mutex::new(HashMap::new()),
        issued: AtomicUsize::new(0),
    });
    let app = Router::new().route("/oauth/token", post(token)).route("/items", get(items)).with_state(state.clone());
    let (url, _rt) = serve(app);
    let out = dir.path().join("out");
    let cfg = write(
        dir.path(),
        "link.yaml",
        &format!(
            r#"
kafka: {{{kafka}}}
connections:
  api:
    type: http
    url: {url}
    allow_private_addresses: true
    auth: {{type: oauth2, token_url: "{url}/oauth/token", client_id: sluice, client_secret: "${{env:CLIENT_SECRET}}"}}
  out: {{type: file, path: {out}}}
flows:
  - name: items
    source:
      connection: api
      object: /items
      options:
        key: [id]
        params: {{per_page: "100"}}
        pagination: {{type: link}}
        incremental: {{param: since, field: updated_at}}
      schema: {{id: int64, name: string, updated_at: int64}}
    retry: {{initial_backoff_ms: 100}}
    destination: {{connection: out, object: items.jsonl}}
"#,
            kafka = kafka.yaml(),
            out = out.display(),
        ),
    );
    let env = [("CLIENT_SECRET", "cs")];
    let done = run(&["run", &cfg], dir.path(), &env, LIMIT);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let (rows, _) = read_jsonl(&out.join("items.jsonl"));
    let ids: BTreeSet<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, (0..450).collect::<BTreeSet<i64>>());
    assert_eq!(rows.len(), 450, "each item once");
    assert!(state.issued.load(Ordering::SeqCst) >= 1);

    // Two items change and three are added; the next run asks `since` the largest updated_at.
    {
        let mut all = state.items.lock().unwrap();
        for id in [5usize, 77] {
            all[id]["updated_at"] = json!(1000 + id);
            all[id]["name"] = json!("changed");
        }
        all.extend((450..453).map(|id| json!({"id": id, "name": "new", "updated_at": 2000 + id})));
    }
    std::thread::sleep(Duration::from_millis(1100)); // the first run's token has expired
    let done = run(&["run", &cfg], dir.path(), &env, LIMIT);
    assert_eq!(done.code(), Some(0), "{}", done.stderr);
    let (rows, _) = read_jsonl(&out.join("items.jsonl"));
    let mut new: Vec<i64> = rows[450..].iter().map(|r| r["id"].as_i64().unwrap()).collect();
    new.sort_unstable();
    assert_eq!(new, vec![5, 77, 450, 451, 452]);
    eprintln!(
        "http source (link, oauth2): 450 items, then {}; {} tokens issued",
        new.len(),
        state.issued.load(Ordering::SeqCst)
    );
}

crate::on_both_brokers!(
    a_zendesk_style_cursor_export_is_read_whole_then_resumed,
    a_link_header_api_behind_oauth2_is_paged_and_pulled_incrementally,
);
