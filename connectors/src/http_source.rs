//! `http` as a source: a paginated JSON REST API, the shape behind Zendesk's incremental
//! exports, GitHub-style Link headers or a page/offset listing.
//!
//! Each poll fetches one page; its records (found with a JSON pointer, `records: /tickets`)
//! become change records with op `r`, keyed by the `key` fields. Pagination:
//!
//! | `type` | next page |
//! |---|---|
//! | `none` | a single request |
//! | `page` | `param` (default `page`) counts up from `start` (default 1) |
//! | `offset` | `param` (default `offset`) grows by the records received |
//! | `cursor` | `param` (default `cursor`) set to the value at `cursor_from` in the answer; the last page is flagged at `end_from` (Zendesk's `/end_of_stream`) or has no cursor or no records |
//! | `link` | the `rel="next"` URL of the `Link` header |
//!
//! With `incremental:`, an on-demand run goes on from where the last one stopped: with `cursor`
//! pagination, from the last cursor (the first run sends `incremental.param` = `start`); otherwise
//! each run sends `incremental.param` = the largest `incremental.field` value seen so far. That
//! value and the cursor are the source position, stored after Kafka acknowledged the page.
//!
//! 429 and 5xx answers, timeouts and resets are retriable (honouring `Retry-After`); a 401 under
//! OAuth 2.0 fetches a new token; other 4xx fail the flow naming the connection.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use sluice_engine::connector::{Poll, Position, Source, SourceItem};
use sluice_engine::error::ConnectorError;
use sluice_engine::record::{ChangeRecord, Op, now_ms};

use crate::http::{Endpoint, HttpConnection, describe_transport_error, excerpt, retriable_status, retry_after};
use crate::json_text;

/// Per-flow options of an `http` source; the flow's `object` is the path under the
/// connection's URL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceOptions {
    /// JSON pointer to the array of records in an answer (`/tickets`); empty: the answer is the
    /// array.
    #[serde(default)]
    pub records: String,
    /// The record fields identifying a record: the change record's key.
    #[serde(default)]
    pub key: Vec<String>,
    /// Query parameters sent with every request.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// How to reach the next page.
    #[serde(default)]
    pub pagination: Pagination,
    /// Resuming where the last run stopped.
    pub incremental: Option<Incremental>,
    /// Seconds between pulls once a continuous flow has caught up.
    #[serde(default = "default_poll_interval")]
    pub poll_interval_secs: u64,
    /// At most this many requests per second (unset: as fast as the answers come).
    pub rate_limit_per_sec: Option<std::num::NonZeroU32>,
}

fn default_poll_interval() -> u64 {
    5
}

/// How to reach the next page.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pagination {
    /// `none` (default), `page`, `offset`, `cursor` or `link`.
    #[serde(rename = "type", default)]
    pub kind: PageKind,
    /// The query parameter that moves: the page number, the offset or the cursor.
    pub param: Option<String>,
    /// `page`: the first page's number (default 1).
    pub start: Option<u64>,
    /// `page` and `offset`: the page-size parameter (e.g. `per_page`, `limit`), sent with `size`.
    pub size_param: Option<String>,
    /// `page` and `offset`: records per page (default 100).
    pub size: Option<std::num::NonZeroU64>,
    /// `cursor`: JSON pointer to the next cursor in an answer (`/after_cursor`).
    pub cursor_from: Option<String>,
    /// `cursor`: JSON pointer to a flag that is true on the last page (`/end_of_stream`).
    pub end_from: Option<String>,
}

/// A pagination scheme.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PageKind {
    /// One request.
    #[default]
    None,
    /// Page numbers.
    Page,
    /// Offsets.
    Offset,
    /// A cursor from each answer.
    Cursor,
    /// The `Link` header's `rel="next"`.
    Link,
}

/// Where an incremental pull starts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Incremental {
    /// The query parameter carrying the start (`start_time`, `since`, `updated_after`).
    pub param: String,
    /// The record field whose largest value is where the next run starts (`updated_at`).
    /// Unneeded with `cursor` pagination, which resumes from the last cursor.
    pub field: Option<String>,
    /// The very first run's start (`0`, `2026-01-01T00:00:00Z`).
    pub start: Option<String>,
}

/// The next request to make.
#[derive(Debug, Clone, PartialEq)]
enum Next {
    /// The first page, with the incremental start if any.
    First,
    Page(u64),
    Offset(u64),
    Cursor(String),
    Url(String),
    /// No more pages in this pull.
    Done,
}

/// Reads a paginated API.
pub struct HttpSource {
    endpoint: Endpoint,
    object: String,
    options: HttpSourceOptions,
    follow: bool,
    next: Next,
    /// The largest `incremental.field` value seen (or stored).
    since: Option<Value>,
    /// The cursor to resume from in the next run (cursor pagination).
    resume_cursor: Option<String>,
    /// This pull's incremental start parameter, sent with every page.
    run_start: Option<(String, String)>,
    next_pull: Option<Instant>,
    /// When the last request went out, for the rate limit.
    last_request: Option<Instant>,
    /// The rest of a page longer than a poll asked for.
    pending: VecDeque<SourceItem>,
}

impl HttpSource {
    /// A source reading `object` (a path) under connection `name`'s URL.
    pub fn new(
        name: &str,
        conn: &HttpConnection,
        object: &str,
        options: HttpSourceOptions,
        follow: bool,
    ) -> Result<HttpSource, ConnectorError> {
        let wrong = |what: &str| ConnectorError::User(format!("http connection `{name}` as a source: {what}"));
        if options.pagination.kind == PageKind::Cursor && options.pagination.cursor_from.is_none() {
            return Err(wrong("`pagination.type: cursor` needs `cursor_from` (a JSON pointer to the next cursor)"));
        }
        if let Some(inc) = &options.incremental
            && inc.field.is_none()
            && options.pagination.kind != PageKind::Cursor
        {
            return Err(wrong(
                "`incremental` needs `field` (the record field to resume from) unless pagination is `cursor`",
            ));
        }
        Ok(HttpSource {
            endpoint: Endpoint::new(name, conn, object)?,
            object: object.to_owned(),
            options,
            follow,
            next: Next::First,
            since: None,
            resume_cursor: None,
            run_start: None,
            next_pull: None,
            last_request: None,
            pending: VecDeque::new(),
        })
    }

    fn doing(&self) -> String {
        format!("reading GET {} (connection `{}`)", self.endpoint.shown, self.endpoint.connection)
    }

    /// The URL of the next request.
    fn next_url(&self) -> reqwest::Url {
        let p = &self.options.pagination;
        if let Next::Url(u) = &self.next
            && let Ok(url) = reqwest::Url::parse(u)
        {
            return url;
        }
        let mut url = self.endpoint.url.clone();
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in &self.options.params {
                q.append_pair(k, v);
            }
            let size = page_size(p).to_string();
            if let (Some(sp), PageKind::Page | PageKind::Offset) = (&p.size_param, p.kind) {
                q.append_pair(sp, &size);
            }
            match &self.next {
                Next::First => {
                    if let (Some(c), Some(_)) = (&self.resume_cursor, &self.options.incremental) {
                        q.append_pair(p.param.as_deref().unwrap_or("cursor"), c);
                    } else if let Some((k, v)) = &self.run_start {
                        q.append_pair(k, v);
                    }
                    match p.kind {
                        PageKind::Page => {
                            q.append_pair(p.param.as_deref().unwrap_or("page"), &p.start.unwrap_or(1).to_string());
                        }
                        PageKind::Offset => {
                            q.append_pair(p.param.as_deref().unwrap_or("offset"), "0");
                        }
                        _ => {}
                    }
                }
                Next::Page(n) => {
                    q.append_pair(p.param.as_deref().unwrap_or("page"), &n.to_string());
                    if let Some((k, v)) = &self.run_start {
                        q.append_pair(k, v);
                    }
                }
                Next::Offset(n) => {
                    q.append_pair(p.param.as_deref().unwrap_or("offset"), &n.to_string());
                    if let Some((k, v)) = &self.run_start {
                        q.append_pair(k, v);
                    }
                }
                Next::Cursor(c) => {
                    q.append_pair(p.param.as_deref().unwrap_or("cursor"), c);
                }
                Next::Url(_) | Next::Done => {}
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        url
    }

    /// Fetches one page: its body (checked to be JSON) and its `Link: rel="next"` URL.
    async fn fetch(&mut self) -> Result<(String, Option<String>), ConnectorError> {
        let doing = self.doing();
        // A next page's URL comes from the answer (a `Link` header): it is outside input.
        let url = self.next_url();
        self.endpoint.check(&url)?;
        if let (Some(rate), Some(last)) = (self.options.rate_limit_per_sec, self.last_request) {
            let gap = Duration::from_secs(1) / rate.get();
            tokio::time::sleep(gap.saturating_sub(last.elapsed())).await;
        }
        self.last_request = Some(Instant::now());
        let request = self.endpoint.client.get(url);
        let resp = self.endpoint.authorize(request).await?.send().await.map_err(|e| ConnectorError::Retriable {
            context: doing.clone(),
            message: describe_transport_error(&e.without_url()),
            retry_after: None,
        })?;
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        let link = resp.headers().get(reqwest::header::LINK).and_then(|v| v.to_str().ok()).and_then(next_link);
        let body = resp.bytes().await.map_err(|e| ConnectorError::Retriable {
            context: doing.clone(),
            message: describe_transport_error(&e.without_url()),
            retry_after: None,
        })?;
        if status.as_u16() == 401 && self.endpoint.forget_token() {
            return Err(ConnectorError::Retriable {
                context: doing,
                message: "HTTP 401: the OAuth 2.0 token was refused; fetching a new one".into(),
                retry_after: None,
            });
        }
        if !status.is_success() {
            let message = format!("HTTP {status}: {}", excerpt(&String::from_utf8_lossy(&body)));
            return Err(match status.as_u16() {
                code if retriable_status(code) => ConnectorError::Retriable { context: doing, message, retry_after },
                _ => ConnectorError::User(format!("{doing}: {message}")),
            });
        }
        let not_json = |why: String| {
            ConnectorError::User(format!(
                "{doing}: the answer is not JSON ({why}): {}",
                excerpt(&String::from_utf8_lossy(&body))
            ))
        };
        let mut text = String::from_utf8(body.to_vec()).map_err(|e| not_json(e.to_string()))?;
        if text.starts_with('\u{feff}') {
            text.drain(..'\u{feff}'.len_utf8());
        }
        serde_json::from_str::<&RawValue>(&text).map_err(|e| not_json(e.to_string()))?;
        Ok((text, link))
    }

    /// The position after the page just read.
    fn position(&self) -> Position {
        json!({ "cursor": self.resume_cursor, "since": self.since })
    }
}

#[async_trait]
impl Source for HttpSource {
    async fn open(&mut self, resume: Option<Position>) -> Result<(), ConnectorError> {
        if let Some(p) = resume.filter(|_| self.options.incremental.is_some()) {
            self.resume_cursor = p.get("cursor").and_then(Value::as_str).map(str::to_owned);
            self.since = p.get("since").filter(|v| !v.is_null()).cloned();
        }
        self.next = Next::First;
        self.pending.clear();
        Ok(())
    }

    async fn poll(&mut self, max: usize) -> Result<Poll, ConnectorError> {
        // A page is handed out at most `max` items at a time, as the runtime's batches are sized.
        if !self.pending.is_empty() {
            let n = max.clamp(1, self.pending.len());
            return Ok(Poll::Items(self.pending.drain(..n).collect()));
        }
        if self.next_pull.is_some_and(|t| Instant::now() < t) {
            return Ok(Poll::Idle);
        }
        if self.next == Next::Done {
            if !self.follow {
                return Ok(Poll::Exhausted);
            }
            self.next = Next::First;
        }
        self.next_pull = None;
        if self.next == Next::First {
            // Every page of this pull is filtered from the same start, not the moving maximum.
            self.run_start = match (&self.options.incremental, &self.resume_cursor) {
                (Some(inc), None) => {
                    self.since.as_ref().map(text_of).or_else(|| inc.start.clone()).map(|s| (inc.param.clone(), s))
                }
                _ => None,
            };
        }
        let (text, link) = self.fetch().await?;
        let doing = self.doing();
        // invariant: `fetch` checked that the body is JSON.
        // A page that is not JSON (a proxy's error page answered with 200) may pass.
        let body: &RawValue = serde_json::from_str(&text)
            .map_err(|e| ConnectorError::retriable(doing.clone(), format!("reading the answer: {e}")))?;
        let at = |pointer: &str| {
            json_text::pointer(body, pointer).map_err(|e| ConnectorError::User(format!("{doing}: {e}")))
        };
        let records = at(&self.options.records)?.and_then(json_text::array_items);
        let Some(records) = records else {
            return Err(ConnectorError::User(format!(
                "{doing}: no array of records at `{}` in the answer: {}",
                self.options.records,
                excerpt(&text)
            )));
        };
        let p = self.options.pagination.clone();
        let n = records.len() as u64;
        // Where the next request goes, and whether this page was the last.
        self.next = match (p.kind, &self.next) {
            (PageKind::None, _) => Next::Done,
            (PageKind::Link, _) => link.map_or(Next::Done, Next::Url),
            (PageKind::Page, _) if n < page_size(&p) => Next::Done,
            (PageKind::Page, Next::Page(k)) => Next::Page(k + 1),
            (PageKind::Page, _) => Next::Page(p.start.unwrap_or(1) + 1),
            (PageKind::Offset, _) if n < page_size(&p) => Next::Done,
            (PageKind::Offset, Next::Offset(k)) => Next::Offset(k + n),
            (PageKind::Offset, _) => Next::Offset(n),
            (PageKind::Cursor, _) => {
                let value_at = |ptr: Option<&str>| -> Result<Option<Value>, ConnectorError> {
                    Ok(match ptr {
                        Some(ptr) => at(ptr)?.map(json_text::value_of),
                        None => None,
                    })
                };
                let cursor = value_at(p.cursor_from.as_deref())?.filter(|v| !v.is_null()).map(|v| text_of(&v));
                let end = value_at(p.end_from.as_deref())?.and_then(|v| v.as_bool()).unwrap_or(false);
                if let Some(c) = &cursor {
                    // The next run resumes from the last cursor the API gave.
                    self.resume_cursor = Some(c.clone());
                }
                match cursor {
                    Some(c) if !end && n > 0 => Next::Cursor(c),
                    _ => Next::Done,
                }
            }
        };
        let field = self.options.incremental.as_ref().and_then(|i| i.field.clone());
        // Each record keeps its own text (numbers keep their digits); only the key and the
        // incremental field are read out of it.
        let mut rows = Vec::with_capacity(records.len());
        for r in records {
            match json_text::fields_of(r) {
                Ok(fields) => {
                    let get = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| json_text::value_of(v));
                    if let Some(v) = field.as_deref().and_then(get).filter(|v| !v.is_null())
                        && self.since.as_ref().is_none_or(|s| greater(&v, s))
                    {
                        self.since = Some(v);
                    }
                    let key: Map<String, Value> =
                        self.options.key.iter().map(|k| (k.clone(), get(k).unwrap_or(Value::Null))).collect();
                    rows.push(Ok((key, r.to_owned())));
                }
                Err(why) => rows.push(Err((r.get().to_owned(), why))),
            }
        }
        let position = self.position();
        let mut items = Vec::with_capacity(rows.len());
        for row in rows {
            match row {
                Ok((key, after)) => {
                    let mut source = Map::new();
                    source.insert("connector".into(), json!("http"));
                    source.insert("table".into(), json!(self.object));
                    let record = ChangeRecord {
                        key,
                        before: None,
                        after: None,
                        after_json: Some(after),
                        op: Op::Read,
                        source,
                        ts_ms: now_ms(),
                    };
                    items.push(SourceItem::Record { record, position: position.clone() });
                }
                Err((text, why)) => items.push(SourceItem::Malformed {
                    payload: text.into_bytes(),
                    reason: format!("{doing}: a record is not a JSON object without repeated fields: {why}"),
                    position: position.clone(),
                }),
            }
        }
        if self.next == Next::Done && self.follow {
            self.next_pull = Some(Instant::now() + Duration::from_secs(self.options.poll_interval_secs));
        }
        if items.is_empty() {
            return Ok(if self.next == Next::Done && !self.follow { Poll::Exhausted } else { Poll::Idle });
        }
        self.pending.extend(items);
        let n = max.clamp(1, self.pending.len());
        Ok(Poll::Items(self.pending.drain(..n).collect()))
    }

    fn incremental(&self) -> bool {
        self.options.incremental.is_some()
    }
}

/// Records per page for `page` and `offset` pagination.
fn page_size(p: &Pagination) -> u64 {
    p.size.map_or(100, std::num::NonZeroU64::get)
}

/// A JSON value as a query parameter: strings bare, anything else as JSON.
fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Whether `a` is past `b`: numbers by value, anything else by text (ISO timestamps sort so).
fn greater(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x > y,
        _ => text_of(a) > text_of(b),
    }
}

/// The next page's URL from a `Link` header, for the fuzz targets (see `crate::fuzz`).
#[doc(hidden)]
pub fn fuzz_next_link(header: &str) -> Option<String> {
    next_link(header)
}

/// The `rel="next"` URL of a `Link` header (RFC 8288).
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim();
            p.strip_prefix("rel=").is_some_and(|v| v.trim_matches('"').split_whitespace().any(|r| r == "next"))
        });
        is_next.then(|| target.trim().trim_start_matches('<').trim_end_matches('>').to_owned())
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn link_headers_yield_their_next_url() {
        let h =
            r#"<https://api.example.com/items?page=3>; rel="next", <https://api.example.com/items?page=9>; rel="last""#;
        assert_eq!(next_link(h).as_deref(), Some("https://api.example.com/items?page=3"));
        assert_eq!(next_link(r#"<https://x/a?page=1>; rel="prev first""#), None);
        assert_eq!(next_link("<https://x/b>; rel=next").as_deref(), Some("https://x/b"));
    }

    #[test]
    fn incremental_values_compare_as_numbers_or_text() {
        assert!(greater(&json!(10), &json!(9)));
        assert!(greater(&json!("2026-01-02T00:00:00Z"), &json!("2026-01-01T23:59:59Z")));
        assert_eq!(text_of(&json!("abc")), "abc");
        assert_eq!(text_of(&json!(12)), "12");
    }
}
