//! `http`: output rows POSTed (or PUT) to a web service, batched, as a JSON array or NDJSON.
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
//!
//! Destinations on loopback, private, link-local and other non-public addresses are refused
//! unless the connection sets `allow_private_addresses: true` (see [`crate::guard`], which every
//! outbound client goes through).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use arrow_array::RecordBatch;
use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use sluice_engine::connector::{RejectedRow, Sink, WriteContext, Written};
use sluice_engine::error::ConnectorError;
use sluice_engine::secret::Secret;

use crate::file::encode_json_lines;
use crate::guard;

use crate::connector::{BuiltSink, Connector, Context, Input};

/// The `http` connection: where requests go and how they authenticate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConnection {
    /// The base URL (`https://hooks.example.com/v1`); a flow's `object` is a path under it.
    pub url: String,
    /// Headers sent with every request. Values may be secret references (`${env:NAME}`).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// How requests authenticate, if they do.
    pub auth: Option<HttpAuth>,
    /// Seconds a request may take before it counts as failed (and is retried).
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: std::num::NonZeroU64,
    /// Allow loopback, private (RFC 1918, unique-local) and link-local destinations. Off by
    /// default so a flow cannot reach the network behind sluice by accident or by design.
    #[serde(default)]
    pub allow_private_addresses: bool,
}

fn default_timeout_secs() -> std::num::NonZeroU64 {
    std::num::NonZeroU64::new(30).unwrap_or(std::num::NonZeroU64::MIN)
}

/// How requests authenticate. `type` picks the scheme; each scheme reads its own fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpAuth {
    /// `bearer`, `basic`, `api_key` or `oauth2`.
    #[serde(rename = "type")]
    pub kind: AuthKind,
    /// The token, for `bearer`.
    pub token: Option<Secret>,
    /// The user, for `basic`.
    pub username: Option<String>,
    /// The password, for `basic`.
    pub password: Option<Secret>,
    /// The header carrying the key, for `api_key` (e.g. `X-Api-Key`).
    pub header: Option<String>,
    /// The key, for `api_key`.
    pub key: Option<Secret>,
    /// The token endpoint, for `oauth2` (client credentials grant).
    pub token_url: Option<String>,
    /// The client id, for `oauth2`.
    pub client_id: Option<String>,
    /// The client secret, for `oauth2`.
    pub client_secret: Option<Secret>,
    /// The scope to ask for, for `oauth2` (optional).
    pub scope: Option<String>,
}

/// An authentication scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// `Authorization: Basic <base64(username:password)>`.
    Basic,
    /// `<header>: <key>`.
    ApiKey,
    /// OAuth 2.0 client credentials: a bearer token from `token_url`, fetched again before it
    /// expires and when the service answers 401.
    Oauth2,
}

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

/// A connection's service as a client sees it: a guarded client, the URL, and credentials.
/// The sink and the source share it.
pub(crate) struct Endpoint {
    pub(crate) client: reqwest::Client,
    pub(crate) url: reqwest::Url,
    /// The URL as shown in messages: no user info, no query (either may hold a credential).
    pub(crate) shown: String,
    pub(crate) connection: String,
    /// Bearer, basic and OAuth 2.0 credentials, added to each request (reqwest marks them
    /// sensitive); API keys are default headers.
    auth: Option<HttpAuth>,
    /// The OAuth 2.0 token and when to fetch a new one.
    token: Option<(Secret, std::time::Instant)>,
    /// Whether the connection may reach non-public addresses (checked for every URL a request
    /// goes to, such as a next page's from a `Link` header).
    allow_private: bool,
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
    /// Row ranges the destination accepted.
    delivered: HashSet<(usize, usize)>,
    /// Row ranges it refused and that were split in halves.
    split: HashSet<(usize, usize)>,
    /// Single rows it refused, with the reason.
    refused: HashMap<usize, String>,
}

/// What one request's answer means for its rows.
enum Answer {
    Delivered,
    /// The destination refused something in the request; the reason names the status.
    Refused(String),
}

impl Endpoint {
    /// The service at `object` (a path) under connection `name`'s URL.
    pub(crate) fn new(name: &str, conn: &HttpConnection, object: &str) -> Result<Endpoint, ConnectorError> {
        let wrong = |what: String| ConnectorError::User(format!("http connection `{name}`: {what}"));
        let base = conn.url.trim_end_matches('/');
        let joined = match object.trim_start_matches('/') {
            "" => base.to_owned(),
            path => format!("{base}/{path}"),
        };
        let url = guard::checked_url(&joined, conn.allow_private_addresses).map_err(wrong)?;
        let shown = guard::shown(&url);
        let mut headers = HeaderMap::new();
        for (k, v) in &conn.headers {
            let key =
                HeaderName::from_bytes(k.as_bytes()).map_err(|_| wrong(format!("`{k}` is not a valid header name")))?;
            headers
                .insert(key, secret_header(v).map_err(|()| wrong(format!("the value of header `{k}` is not valid")))?);
        }
        if let Some(auth) = &conn.auth {
            check_auth(auth).map_err(wrong)?;
            if let Some(token_url) = &auth.token_url {
                guard::checked_url(token_url, conn.allow_private_addresses).map_err(wrong)?;
            }
            if auth.kind == AuthKind::ApiKey
                && let (Some(header), Some(key)) = (&auth.header, &auth.key)
            {
                let name = HeaderName::from_bytes(header.as_bytes())
                    .map_err(|_| wrong(format!("`{header}` is not a valid header name")))?;
                headers.insert(
                    name,
                    secret_header(key).map_err(|()| wrong("auth `key` is not a valid header value".into()))?,
                );
            }
        }
        // A redirect is reported as the status it is, not followed: a sink's request is not
        // one to repeat at another address.
        let client = guard::client_builder(conn.allow_private_addresses, 0)
            .default_headers(headers)
            .timeout(Duration::from_secs(conn.timeout_secs.get()))
            .connect_timeout(Duration::from_secs(conn.timeout_secs.get().min(10)))
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| wrong(format!("building the HTTP client: {e}")))?;
        Ok(Endpoint {
            client,
            url,
            shown,
            connection: name.to_owned(),
            auth: conn.auth.clone(),
            token: None,
            allow_private: conn.allow_private_addresses,
        })
    }

    /// Refuses a URL this connection may not send to (a literal non-public address, unless
    /// allowed); names are checked when they are resolved.
    pub(crate) fn check(&self, url: &reqwest::Url) -> Result<(), ConnectorError> {
        guard::check_url(url, self.allow_private)
            .map_err(|e| ConnectorError::User(format!("http connection `{}`: {e}", self.connection)))
    }

    /// Adds the credentials to a request, fetching an OAuth 2.0 token first when there is none
    /// or it is about to expire.
    pub(crate) async fn authorize(
        &mut self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, ConnectorError> {
        let Some(auth) = &self.auth else { return Ok(request) };
        Ok(match auth.kind {
            AuthKind::Bearer => match &auth.token {
                Some(t) => request.bearer_auth(t.expose()),
                None => request,
            },
            AuthKind::Basic => match &auth.username {
                Some(u) => request.basic_auth(u, auth.password.as_ref().map(Secret::expose)),
                None => request,
            },
            AuthKind::ApiKey => request,
            AuthKind::Oauth2 => {
                let fresh = self.token.as_ref().is_some_and(|(_, until)| std::time::Instant::now() < *until);
                if !fresh {
                    self.token = Some(self.fetch_token().await?);
                }
                match &self.token {
                    Some((t, _)) => request.bearer_auth(t.expose()),
                    None => request,
                }
            }
        })
    }

    /// Forgets the OAuth 2.0 token (the service refused it), so the next request fetches one.
    /// Returns whether there was one to forget.
    pub(crate) fn forget_token(&mut self) -> bool {
        self.token.take().is_some()
    }

    async fn fetch_token(&self) -> Result<(Secret, std::time::Instant), ConnectorError> {
        let Some(auth) = &self.auth else { return Err(ConnectorError::User("no auth configured".into())) };
        let (Some(url), Some(id), Some(secret)) = (&auth.token_url, &auth.client_id, &auth.client_secret) else {
            return Err(ConnectorError::User(format!(
                "http connection `{}`: oauth2 needs token_url, client_id and client_secret",
                self.connection
            )));
        };
        let doing = format!("fetching an OAuth 2.0 token for connection `{}`", self.connection);
        let mut form =
            vec![("grant_type", "client_credentials"), ("client_id", id.as_str()), ("client_secret", secret.expose())];
        if let Some(scope) = &auth.scope {
            form.push(("scope", scope.as_str()));
        }
        let resp = self.client.post(url).form(&form).send().await.map_err(|e| ConnectorError::Retriable {
            context: doing.clone(),
            message: describe_transport_error(&e.without_url()),
            retry_after: None,
        })?;
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        if retriable_status(status.as_u16()) {
            return Err(ConnectorError::Retriable {
                context: doing,
                message: format!("HTTP {status}"),
                retry_after: None,
            });
        }
        if !status.is_success() {
            return Err(ConnectorError::User(format!(
                "{doing}: HTTP {status}: {} — check client_id and client_secret",
                excerpt(&String::from_utf8_lossy(&body))
            )));
        }
        #[derive(Deserialize)]
        struct TokenAnswer {
            access_token: String,
            expires_in: Option<u64>,
        }
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| ConnectorError::Other {
            context: doing.clone(),
            message: format!("the token endpoint's answer has no access_token: {e}"),
        })?;
        // Renew a little before the service would refuse it.
        let life = Duration::from_secs(answer.expires_in.unwrap_or(3600));
        let until = std::time::Instant::now() + life.saturating_sub(life.min(Duration::from_secs(30)) / 2);
        Ok((Secret::new(answer.access_token), until))
    }
}

/// The wait an answer asks for before trying again (`Retry-After`, in seconds).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Whether an HTTP status may pass if asked again: a timeout, "too early", throttling or a
/// server error (as Kafka Connect's and Vector's HTTP clients treat them).
pub(crate) fn retriable_status(code: u16) -> bool {
    matches!(code, 408 | 425 | 429 | 500..=599)
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
        let key = HeaderValue::from_str(key).map_err(|e| ConnectorError::Other {
            context: doing.clone(),
            message: format!("idempotency key is not a valid header value: {e}"),
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
        encode_json_lines(batches, &mut buf)?;
        // arrow-json escapes newlines inside strings, so each line is exactly one row.
        let rows: Vec<&[u8]> = buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
        // A retry of the same batch skips what earlier attempts settled.
        if self.progress.batch_id != ctx.batch_id {
            self.progress = Progress { batch_id: ctx.batch_id.to_owned(), ..Progress::default() };
        }
        let mut rejected = Vec::new();
        for (start, end) in chunks(&rows, self.options.max_rows, self.options.max_bytes) {
            // Halve a refused request until the refused rows stand alone. Ranges are taken
            // from the end of `todo`, so rows still go out in order.
            let mut todo = vec![(start, end)];
            while let Some((a, b)) = todo.pop() {
                let halves = [(a + (b - a) / 2, b), (a, a + (b - a) / 2)];
                if self.progress.delivered.contains(&(a, b)) {
                    continue;
                }
                if let Some(reason) = self.progress.refused.get(&a).filter(|_| b - a == 1) {
                    rejected.push(RejectedRow { index: a, reason: reason.clone() });
                    continue;
                }
                if self.progress.split.contains(&(a, b)) {
                    todo.extend(halves);
                    continue;
                }
                let key = format!("{}:{a}-{}", ctx.batch_id, b - 1);
                match self.send(&rows[a..b], &key).await? {
                    Answer::Delivered => {
                        self.progress.delivered.insert((a, b));
                    }
                    Answer::Refused(reason) if b - a == 1 => {
                        self.progress.refused.insert(a, reason.clone());
                        rejected.push(RejectedRow { index: a, reason });
                    }
                    Answer::Refused(_) => {
                        self.progress.split.insert((a, b));
                        todo.extend(halves);
                    }
                }
            }
        }
        Ok(Written { rejected })
    }

    fn describe(&self) -> String {
        format!("http {} {}", self.method(), self.endpoint.shown)
    }
}

/// Sends a `GET` to the connection's URL: any answer but a refusal of the credentials shows the
/// service is reachable (a webhook often answers `GET` with 404 or 405).
pub async fn test_connection(name: &str, conn: &HttpConnection) -> Result<String, ConnectorError> {
    let mut endpoint = Endpoint::new(name, conn, "")?;
    let request = endpoint.client.get(endpoint.url.clone());
    let doing = format!("GET {} (connection `{name}`)", endpoint.shown);
    let resp = endpoint.authorize(request).await?.send().await.map_err(|e| ConnectorError::Retriable {
        context: doing.clone(),
        message: describe_transport_error(&e.without_url()),
        retry_after: None,
    })?;
    match resp.status().as_u16() {
        401 | 403 | 407 => {
            Err(ConnectorError::User(format!("{doing}: HTTP {}: the credentials are refused", resp.status())))
        }
        _ => Ok(format!("{} answered HTTP {}", endpoint.shown, resp.status())),
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

/// The start of a response body, on one line, for an error message.
pub(crate) fn excerpt(text: &str) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

/// A transport error and its causes on one line ("error sending request: connection reset").
pub(crate) fn describe_transport_error(e: &reqwest::Error) -> String {
    let mut parts = vec![if e.is_timeout() { "timed out".to_owned() } else { e.to_string() }];
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cause = c.source();
    }
    parts.join(": ")
}

fn secret_header(v: &Secret) -> Result<HeaderValue, ()> {
    let mut value = HeaderValue::from_str(v.expose()).map_err(|_| ())?;
    value.set_sensitive(true);
    Ok(value)
}

/// Checks that the scheme's fields are there, before the first request needs them.
fn check_auth(auth: &HttpAuth) -> Result<(), String> {
    let need = |field: &str| format!("auth `type: {}` needs `{field}`", kind_name(auth.kind));
    match auth.kind {
        AuthKind::Bearer if auth.token.is_none() => Err(need("token")),
        AuthKind::Basic if auth.username.is_none() => Err(need("username")),
        AuthKind::ApiKey if auth.header.is_none() => Err(need("header")),
        AuthKind::ApiKey if auth.key.is_none() => Err(need("key")),
        AuthKind::Oauth2 if auth.token_url.is_none() => Err(need("token_url")),
        AuthKind::Oauth2 if auth.client_id.is_none() => Err(need("client_id")),
        AuthKind::Oauth2 if auth.client_secret.is_none() => Err(need("client_secret")),
        AuthKind::ApiKey => {
            let header = auth.header.as_deref().unwrap_or_default();
            HeaderName::from_bytes(header.as_bytes())
                .map(drop)
                .map_err(|_| format!("`{header}` is not a valid header name"))
        }
        _ => Ok(()),
    }
}

fn kind_name(kind: AuthKind) -> &'static str {
    match kind {
        AuthKind::Bearer => "bearer",
        AuthKind::Basic => "basic",
        AuthKind::ApiKey => "api_key",
        AuthKind::Oauth2 => "oauth2",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
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

/// The `http` connector: a REST API as a paginated source, or an endpoint rows are sent to.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpConnector;

#[async_trait]
impl Connector for HttpConnector {
    const NAME: &'static str = "http";
    type Connection = HttpConnection;
    type SourceOptions = crate::http_source::HttpSourceOptions;
    type SinkOptions = HttpSinkOptions;

    async fn healthcheck(&self, ctx: Context<'_>, conn: &HttpConnection) -> Result<String, ConnectorError> {
        test_connection(ctx.connection, conn).await
    }

    fn build_source(
        &self,
        ctx: Context<'_>,
        conn: &HttpConnection,
        object: &str,
        options: &crate::http_source::HttpSourceOptions,
        follow: bool,
    ) -> Result<Input, ConnectorError> {
        let source = crate::http_source::HttpSource::new(ctx.connection, conn, object, options.clone(), follow)?;
        Ok(Input::Source(Box::new(source)))
    }

    fn check_sink(
        &self,
        ctx: Context<'_>,
        conn: &HttpConnection,
        object: &str,
        options: &HttpSinkOptions,
    ) -> Result<(), ConnectorError> {
        HttpSink::new(ctx.connection, conn, object, options.clone()).map(drop)
    }

    async fn build_sink(
        &self,
        ctx: Context<'_>,
        conn: &HttpConnection,
        object: &str,
        options: &HttpSinkOptions,
    ) -> Result<BuiltSink, ConnectorError> {
        let sink = Box::new(HttpSink::new(ctx.connection, conn, object, options.clone())?);
        // Not reached ahead of the first batch: a request to an endpoint that takes writes may
        // not be harmless (as Vector's http sink, whose health check is opt-in).
        let what = format!("{} is reached with the first batch", sink.describe());
        Ok(BuiltSink { sink, healthcheck: Box::pin(async move { Ok(what) }) })
    }
}
