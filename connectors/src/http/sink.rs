//! The `http` sink: output rows POSTed (or PUT) to a web service, batched, as a JSON array or
//! NDJSON.
//!
//! Each batch the runtime hands over is cut into requests of at most `max_rows` rows and
//! `max_bytes` bytes. Every request carries an idempotency key derived from the batch's topic,
//! partitions and offsets and the rows' place in it, so a receiver can drop the duplicates that
//! at-least-once delivery implies after a retry or a restart.
//!
//! The answer decides what happens to the rows:
//!
//! | answer | meaning | sluice does |
//! |---|---|---|
//! | 2xx | delivered | commits |
//! | 408, 425, 429, 5xx, timeout, refused or reset connection | may pass | retries the batch with backoff, honouring `Retry-After` |
//! | 3xx, 401, 403, 404, 405, 407 | the connection is wrong | fails the flow, naming the status |
//! | other 4xx (400, 409, 413, 422, …) | some row is refused | splits the request in halves until the refused rows stand alone; those go to the DLQ with the status and the response body |

use arrow_array::RecordBatch;
use async_trait::async_trait;
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use sluice_engine::connector::{Sink, WriteContext, Written};
use sluice_engine::error::ConnectorError;

use super::{Endpoint, HttpConnection, describe_transport_error, excerpt, retriable_status, retry_after};
use crate::encode;
use crate::halving::{Answer, Halving, Settled};

/// Per-flow options of an `http` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkOptions {
    /// `post` (default) or `put`.
    #[serde(default)]
    pub method: HttpMethod,
    /// `json` (each request a JSON array of rows; default) or `ndjson` (one row per line).
    #[serde(default)]
    pub format: BodyFormat,
    /// Most rows in one request.
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
    /// Most bytes in one request body (a single larger row is still sent, alone).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// The header carrying the idempotency key.
    #[serde(default = "default_idempotency_header")]
    pub idempotency_header: String,
}

impl Default for HttpSinkOptions {
    fn default() -> Self {
        HttpSinkOptions {
            method: HttpMethod::default(),
            format: BodyFormat::default(),
            max_rows: default_max_rows(),
            max_bytes: default_max_bytes(),
            idempotency_header: default_idempotency_header(),
        }
    }
}

fn default_max_rows() -> usize {
    500
}

fn default_max_bytes() -> usize {
    1 << 20
}

fn default_idempotency_header() -> String {
    "Idempotency-Key".into()
}

/// The request method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpMethod {
    /// `POST`.
    #[default]
    Post,
    /// `PUT`.
    Put,
}

/// How rows are laid out in a request body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyFormat {
    /// `[{…},{…}]`, `Content-Type: application/json`.
    #[default]
    Json,
    /// `{…}\n{…}\n`, `Content-Type: application/x-ndjson`.
    Ndjson,
}

/// Sends rows to a web service.
pub struct HttpSink {
    endpoint: Endpoint,
    options: HttpSinkOptions,
    idempotency_header: HeaderName,
    /// What the attempts at the current batch settled.
    progress: Progress,
}

/// Which requests of a batch are settled, so that when a later request fails with a retriable
/// error and the runtime hands the same batch over again, only the unsettled rows are resent.
/// (A crash forgets this; the receiver's idempotency keys cover that case.)
#[derive(Default)]
struct Progress {
    batch_id: String,
    /// What the requests of the batch settled.
    settled: Settled,
}

impl HttpSink {
    /// A sink sending to `object` (a path) under connection `name`'s URL.
    pub fn new(
        name: &str,
        conn: &HttpConnection,
        object: &str,
        options: HttpSinkOptions,
    ) -> Result<HttpSink, ConnectorError> {
        let wrong = |what: String| ConnectorError::User(format!("http connection `{name}`: {what}"));
        if options.max_rows == 0 || options.max_bytes == 0 {
            return Err(wrong("`max_rows` and `max_bytes` must be at least 1".into()));
        }
        let idempotency_header = HeaderName::from_bytes(options.idempotency_header.as_bytes())
            .map_err(|_| wrong(format!("`{}` is not a valid header name", options.idempotency_header)))?;
        let endpoint = Endpoint::new(name, conn, object)?;
        Ok(HttpSink { endpoint, options, idempotency_header, progress: Progress::default() })
    }

    fn method(&self) -> reqwest::Method {
        match self.options.method {
            HttpMethod::Post => reqwest::Method::POST,
            HttpMethod::Put => reqwest::Method::PUT,
        }
    }

    /// Sends one request with `rows` and reads what the answer means.
    async fn send(&mut self, rows: &[&[u8]], key: &str) -> Result<Answer, ConnectorError> {
        let (body, content_type) = body_of(rows, self.options.format);
        let doing = format!("{} {} (connection `{}`)", self.method(), self.endpoint.shown, self.endpoint.connection);
        let key = HeaderValue::from_str(key).map_err(|e| {
            ConnectorError::internal(doing.clone(), format!("idempotency key is not a valid header value: {e}"))
        })?;
        let request = self
            .endpoint
            .client
            .request(self.method(), self.endpoint.url.clone())
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .header(self.idempotency_header.clone(), key)
            .body(body);
        let sent = self.endpoint.authorize(request).await?.send().await;
        let resp = match sent {
            Ok(r) => r,
            // Timeouts, refused and reset connections, DNS hiccups: the service may come back.
            // (The URL is left out of the message: `shown` is the safe form of it.)
            Err(e) => {
                let message = describe_transport_error(&e.without_url());
                return Err(ConnectorError::Retriable { context: doing, message, retry_after: None });
            }
        };
        let status = resp.status();
        if status.is_success() {
            return Ok(Answer::Delivered);
        }
        // An expired or revoked OAuth 2.0 token: fetch a new one and try again.
        if status.as_u16() == 401 && self.endpoint.forget_token() {
            return Err(ConnectorError::Retriable {
                context: doing,
                message: "HTTP 401: the OAuth 2.0 token was refused; fetching a new one".into(),
                retry_after: Some(Duration::ZERO),
            });
        }
        let retry_after = retry_after(resp.headers());
        // The body says why; a reply that cannot be read is no reason to lose the status.
        let text = resp.text().await.unwrap_or_default();
        let said = excerpt(&text);
        let message = if said.is_empty() { format!("HTTP {status}") } else { format!("HTTP {status}: {said}") };
        match status.as_u16() {
            code if retriable_status(code) => Err(ConnectorError::Retriable { context: doing, message, retry_after }),
            300..=399 | 401 | 403 | 404 | 405 | 407 => Err(ConnectorError::User(format!(
                "{doing}: {message} — the destination refuses every request; check the connection's url and credentials"
            ))),
            _ => Ok(Answer::Refused(format!("{doing}: {message}"))),
        }
    }
}

#[async_trait]
impl Sink for HttpSink {
    async fn write(&mut self, batches: &[RecordBatch], ctx: WriteContext<'_>) -> Result<Written, ConnectorError> {
        let mut buf = Vec::new();
        encode::json_lines(batches, &mut buf)?;
        // arrow-json escapes newlines inside strings, so each line is exactly one row.
        let rows: Vec<&[u8]> = buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
        // A retry of the same batch skips what earlier attempts settled.
        if self.progress.batch_id != ctx.batch_id {
            self.progress = Progress { batch_id: ctx.batch_id.to_owned(), ..Progress::default() };
        }
        let mut rejected = Vec::new();
        for (start, end) in chunks(&rows, self.options.max_rows, self.options.max_bytes) {
            // A refused request is halved until the refused rows stand alone.
            let mut halving = Halving::new(start, end);
            while let Some((a, b)) = halving.next(&self.progress.settled) {
                let key = format!("{}:{a}-{}", ctx.batch_id, b - 1);
                let answer = self.send(&rows[a..b], &key).await?;
                halving.answer((a, b), answer, &mut self.progress.settled);
            }
            rejected.extend(halving.into_rejected());
        }
        Ok(Written { rejected })
    }

    fn describe(&self) -> String {
        format!("http {} {}", self.method(), self.endpoint.shown)
    }
}

/// Cuts `rows` into `(start, end)` ranges of at most `max_rows` rows and, where a row allows,
/// `max_bytes` bytes.
fn chunks(rows: &[&[u8]], max_rows: usize, max_bytes: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, row) in rows.iter().enumerate() {
        let full = i - start == max_rows || (i > start && bytes + row.len() + 1 > max_bytes);
        if full {
            out.push((start, i));
            (start, bytes) = (i, 0);
        }
        bytes += row.len() + 1;
    }
    if start < rows.len() {
        out.push((start, rows.len()));
    }
    out
}

fn body_of(rows: &[&[u8]], format: BodyFormat) -> (Vec<u8>, &'static str) {
    let mut body = Vec::with_capacity(rows.iter().map(|r| r.len() + 1).sum::<usize>() + 2);
    match format {
        BodyFormat::Json => {
            body.push(b'[');
            for (i, r) in rows.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(r);
            }
            body.push(b']');
            (body, "application/json")
        }
        BodyFormat::Ndjson => {
            for r in rows {
                body.extend_from_slice(r);
                body.push(b'\n');
            }
            (body, "application/x-ndjson")
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::http::{AuthKind, HttpAuth};
    use sluice_engine::secret::Secret;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    #[test]
    fn chunks_respect_rows_and_bytes_and_keep_oversized_rows_alone() {
        let rows: Vec<&[u8]> = vec![b"aaaa", b"bb", b"c", b"dddddddddd", b"e"];
        assert_eq!(chunks(&rows, 2, 1000), vec![(0, 2), (2, 4), (4, 5)]);
        assert_eq!(chunks(&rows, 10, 8), vec![(0, 2), (2, 3), (3, 4), (4, 5)]);
        assert_eq!(chunks(&[], 10, 8), Vec::<(usize, usize)>::new());
    }

    #[test]
    fn bodies_are_json_arrays_or_ndjson() {
        let rows: Vec<&[u8]> = vec![br#"{"a":1}"#, br#"{"a":2}"#];
        assert_eq!(body_of(&rows, BodyFormat::Json).0, br#"[{"a":1},{"a":2}]"#);
        assert_eq!(body_of(&rows, BodyFormat::Ndjson).0, b"{\"a\":1}\n{\"a\":2}\n");
    }

    #[test]
    fn private_destinations_are_refused_unless_allowed_and_secrets_stay_hidden() {
        let mut conn = HttpConnection {
            url: "http://169.254.169.254/latest".into(),
            headers: BTreeMap::new(),
            auth: Some(HttpAuth {
                kind: AuthKind::Bearer,
                token: Some(Secret::new("hunter2")),
                username: None,
                password: None,
                header: None,
                key: None,
                token_url: None,
                client_id: None,
                client_secret: None,
                scope: None,
            }),
            timeout_secs: std::num::NonZeroU64::new(5).unwrap(),
            allow_private_addresses: false,
        };
        let e = HttpSink::new("meta", &conn, "", HttpSinkOptions::default()).err().unwrap().to_string();
        assert!(e.contains("meta") && e.contains("allow_private_addresses"), "{e}");
        conn.allow_private_addresses = true;
        let sink = HttpSink::new("meta", &conn, "/x", HttpSinkOptions::default()).unwrap();
        assert_eq!(sink.describe(), "http POST http://169.254.169.254/latest/x");
        assert!(!format!("{:?}", conn).contains("hunter2"));
        conn.auth = Some(HttpAuth { kind: AuthKind::ApiKey, ..conn.auth.clone().unwrap() });
        let e = HttpSink::new("meta", &conn, "", HttpSinkOptions::default()).err().unwrap().to_string();
        assert!(e.contains("auth `type: api_key` needs `header`"), "{e}");
    }

    /// A loopback server that records each request's rows, refuses rows with `"bad": true`
    /// (400), and fails request number `fail_at` (counting from 1) with a 503.
    async fn server(fail_at: usize) -> (String, Arc<std::sync::Mutex<Vec<Vec<i64>>>>) {
        use axum::http::StatusCode;
        let seen: Arc<std::sync::Mutex<Vec<Vec<i64>>>> = Arc::default();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s2, c2) = (seen.clone(), calls.clone());
        let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
            let (seen, calls) = (s2.clone(), c2.clone());
            async move {
                let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                let rows: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
                if n == fail_at {
                    return (StatusCode::SERVICE_UNAVAILABLE, "busy".to_owned());
                }
                if rows.iter().any(|r| r["bad"] == true) {
                    return (StatusCode::BAD_REQUEST, "bad row".to_owned());
                }
                seen.lock().unwrap().push(rows.iter().map(|r| r["n"].as_i64().unwrap()).collect());
                (StatusCode::OK, String::new())
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), seen)
    }

    fn rows(n: i64, bad: &[i64]) -> RecordBatch {
        use arrow_array::{BooleanArray, Int64Array};
        let schema = Arc::new(arrow_schema::Schema::new(vec![
            arrow_schema::Field::new("n", arrow_schema::DataType::Int64, false),
            arrow_schema::Field::new("bad", arrow_schema::DataType::Boolean, false),
        ]));
        let ns: Vec<i64> = (0..n).collect();
        let flags: Vec<bool> = ns.iter().map(|i| bad.contains(i)).collect();
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(ns)), Arc::new(BooleanArray::from(flags))]).unwrap()
    }

    fn sink(url: &str, max_rows: usize) -> HttpSink {
        let conn = HttpConnection {
            url: url.into(),
            headers: BTreeMap::new(),
            auth: None,
            timeout_secs: std::num::NonZeroU64::new(5).unwrap(),
            allow_private_addresses: true,
        };
        HttpSink::new("t", &conn, "", HttpSinkOptions { max_rows, ..HttpSinkOptions::default() }).unwrap()
    }

    #[tokio::test]
    async fn refused_rows_are_isolated_by_halving_and_the_rest_delivered_once() {
        let (url, seen) = server(0).await;
        let mut s = sink(&url, 8);
        let w = s.write(&[rows(20, &[3, 4, 17])], WriteContext { batch_id: "t/0:0-19", run_id: "r" }).await.unwrap();
        let idx: Vec<usize> = w.rejected.iter().map(|r| r.index).collect();
        assert_eq!(idx, vec![3, 4, 17]);
        assert!(w.rejected[0].reason.contains("HTTP 400 Bad Request: bad row"), "{}", w.rejected[0].reason);
        let mut got: Vec<i64> = seen.lock().unwrap().concat();
        got.sort_unstable();
        let want: Vec<i64> = (0..20).filter(|n| ![3, 4, 17].contains(n)).collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn a_retry_of_the_same_batch_resends_only_what_was_not_settled() {
        let (url, seen) = server(3).await;
        let mut s = sink(&url, 2);
        let ctx = WriteContext { batch_id: "t/0:0-9", run_id: "r" };
        let e = s.write(&[rows(10, &[])], ctx).await.unwrap_err();
        assert!(e.is_retriable() && e.to_string().contains("503"), "{e}");
        assert_eq!(seen.lock().unwrap().len(), 2, "two requests were accepted before the failure");
        assert_eq!(s.write(&[rows(10, &[])], ctx).await.unwrap(), Written::all());
        let got: Vec<i64> = seen.lock().unwrap().concat();
        assert_eq!(got, (0..10).collect::<Vec<i64>>(), "each row once, in order");
        // A different batch starts afresh.
        s.write(&[rows(2, &[])], WriteContext { batch_id: "t/0:10-11", run_id: "r" }).await.unwrap();
        assert_eq!(seen.lock().unwrap().concat().len(), 12);
    }

    #[tokio::test]
    async fn a_dead_service_is_retriable_and_a_wrong_url_is_not() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut s = sink(&format!("http://127.0.0.1:{port}"), 10);
        let e = s.write(&[rows(1, &[])], WriteContext { batch_id: "x", run_id: "r" }).await.unwrap_err();
        assert!(e.is_retriable(), "{e}");
        assert!(e.to_string().contains("connection `t`"), "{e}");
        let app = axum::Router::new().fallback(|| async { (axum::http::StatusCode::UNAUTHORIZED, "who are you") });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mut s = sink(&format!("http://{addr}"), 10);
        let e = s.write(&[rows(1, &[])], WriteContext { batch_id: "x", run_id: "r" }).await.unwrap_err();
        assert!(!e.is_retriable() && e.to_string().contains("401"), "{e}");
    }
}
