//! `http`: a web service, as a paginated source ([`crate::http_source`]) or a destination rows
//! are sent to ([`sink`]). This module holds what both sides share: the connection (URL,
//! headers, authentication), the guarded client built from it ([`Endpoint`]), and how an
//! answer's status and `Retry-After` are read.
//!
//! Destinations on loopback, private, link-local and other non-public addresses are refused
//! unless the connection sets `allow_private_addresses: true` (see [`crate::guard`], which every
//! outbound client goes through).

pub mod sink;
pub mod spec;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use sluice_engine::connector::Sink as _;
use sluice_engine::error::ConnectorError;
use sluice_engine::secret::Secret;

use crate::connector::{BuiltSink, Connector, Context, Input};
use crate::guard;

pub use sink::{BodyFormat, HttpMethod, HttpSink, HttpSinkOptions};

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

/// How requests authenticate. `type` picks the scheme; each scheme reads its own fields. `S` is
/// how a secret value is held: a [`Secret`] in a connection, its text with placeholders in a
/// REST spec ([`spec::SpecAuth`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpAuth<S = Secret> {
    /// `bearer`, `basic`, `api_key` or `oauth2`.
    #[serde(rename = "type")]
    pub kind: AuthKind,
    /// The token, for `bearer`.
    pub token: Option<S>,
    /// The user, for `basic`.
    pub username: Option<String>,
    /// The password, for `basic`.
    pub password: Option<S>,
    /// The header carrying the key, for `api_key` (e.g. `X-Api-Key`).
    pub header: Option<String>,
    /// The key, for `api_key`.
    pub key: Option<S>,
    /// The token endpoint, for `oauth2` (client credentials grant).
    pub token_url: Option<String>,
    /// The client id, for `oauth2`.
    pub client_id: Option<String>,
    /// The client secret, for `oauth2`.
    pub client_secret: Option<S>,
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

impl Endpoint {
    /// The service at `object` (a path) under connection `name`'s URL.
    pub(crate) fn new(name: &str, conn: &HttpConnection, object: &str) -> Result<Endpoint, ConnectorError> {
        let wrong = |what: String| ConnectorError::User(format!("http connection `{name}`: {what}"));
        let base = conn.url.trim_end_matches('/');
        let joined = match object.trim_start_matches('/') {
            "" => base.to_owned(),
            path => format!("{base}/{path}"),
        };
        let url = guard::checked_url(&joined, conn.allow_private_addresses).map_err(|e| wrong(e.0))?;
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
                guard::checked_url(token_url, conn.allow_private_addresses).map_err(|e| wrong(e.0))?;
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
        // A token endpoint that answers without a token is the wrong endpoint: asking again
        // will not help.
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
            ConnectorError::User(format!("{doing}: the token endpoint's answer has no access_token: {e}"))
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
