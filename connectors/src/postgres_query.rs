//! `postgres` as a source: AppFlow-style pulls of a table or a query.
//!
//! - `mode: incremental` (default) reads the rows whose `cursor` column (a timestamp or an
//!   increasing id) is past the last run's, in pages ordered by `(cursor, key…)`. The position
//!   stored after Kafka acknowledged a page is the last row's `(cursor, key…)`, so a page boundary
//!   that falls among rows sharing a cursor value loses none of them, and an on-demand run goes on
//!   where the previous run stopped. `first_execution_from` sets where the very first run starts.
//! - `mode: complete` reads everything, every run, from one consistent snapshot (a `REPEATABLE
//!   READ` transaction and a server-side cursor).
//!
//! Rows become change records with op `r` (a pull cannot tell an insert from an update), the
//! `key` columns as the record key and the row as `after`. A continuous flow pulls again every
//! `poll_interval_secs` once it has caught up. Connection problems are retriable (the runtime
//! retries within the flow's `retry:` bounds and the next poll reconnects); a bad query, a missing
//! table or column, or a refused login fail the flow naming the connection.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sluice_engine::connector::{Poll, Position, Source, SourceItem};
use sluice_engine::error::ConnectorError;
use sluice_engine::record::ChangeRecord;
use tokio_postgres::types::ToSql;

use crate::postgres::{PgTarget, PostgresConnection, classify, client_config, connect, quote_ident};

/// How much a run reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullMode {
    /// Only rows past the last run's cursor.
    #[default]
    Incremental,
    /// Every row, every run.
    Complete,
    /// Change data capture from the write-ahead log ([`crate::postgres_cdc`]); `object` lists
    /// the tables, comma-separated.
    Cdc,
}

/// Per-flow options of a `postgres` source; the flow's `object` is the table, unless `query`
/// is given.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryOptions {
    /// A `SELECT` to pull from instead of the table named by `object`.
    pub query: Option<String>,
    /// `incremental` (default) or `complete`.
    #[serde(default)]
    pub mode: PullMode,
    /// The column that grows with every change (e.g. `updated_at`, or an increasing id);
    /// required by `incremental`.
    pub cursor: Option<String>,
    /// The columns identifying a row: the change record's key, and (incremental) the tie-break
    /// between rows sharing a cursor value. Required by `incremental`.
    #[serde(default)]
    pub key: Vec<String>,
    /// Where the first incremental run starts: a cursor value such as `2026-01-01T00:00:00Z`
    /// (rows at or past it). Unset: from the first row.
    pub first_execution_from: Option<String>,
    /// Seconds between pulls once a continuous flow has caught up (default 5).
    pub poll_interval_secs: Option<u64>,
    /// `cdc`: the replication slot (created if absent; default `sluice_<first table>`).
    pub slot: Option<String>,
    /// `cdc`: the publication (created for the tables if absent; default as the slot).
    pub publication: Option<String>,
    /// `cdc`: read the tables' rows (op `r`) before streaming changes, when the slot is new
    /// (default true).
    pub snapshot: Option<bool>,
    /// `cdc`: seconds between moving an idle slot to the current WAL position (default 10).
    pub heartbeat_secs: Option<std::num::NonZeroU64>,
}

impl QueryOptions {
    /// Seconds between pulls once caught up.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_secs(self.poll_interval_secs.unwrap_or(5))
    }

    /// Whether a new CDC slot starts with a snapshot.
    pub fn snapshot(&self) -> bool {
        self.snapshot.unwrap_or(true)
    }

    /// How often an idle CDC slot is moved on.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs.map_or(10, std::num::NonZeroU64::get))
    }

    /// Refuses an option the chosen mode would ignore: a pull has no slot, a change stream no
    /// cursor, so writing one is a mistake worth naming rather than a setting silently dropped.
    pub fn check_mode(&self) -> Result<(), ConnectorError> {
        let cdc = self.mode == PullMode::Cdc;
        let given: [(&str, bool, bool); 9] = [
            ("query", self.query.is_some(), false),
            ("cursor", self.cursor.is_some(), false),
            ("key", !self.key.is_empty(), false),
            ("first_execution_from", self.first_execution_from.is_some(), false),
            ("poll_interval_secs", self.poll_interval_secs.is_some(), false),
            ("slot", self.slot.is_some(), true),
            ("publication", self.publication.is_some(), true),
            ("snapshot", self.snapshot.is_some(), true),
            ("heartbeat_secs", self.heartbeat_secs.is_some(), true),
        ];
        match given.iter().find(|(_, set, for_cdc)| *set && *for_cdc != cdc) {
            None => Ok(()),
            Some((field, _, true)) => Err(ConnectorError::User(format!(
                "option `{field}` applies to `mode: cdc` only; this source pulls by query"
            ))),
            Some((field, _, false)) => Err(ConnectorError::User(format!(
                "option `{field}` applies to pulls (`mode: incremental` or `complete`) only, not to `mode: cdc`"
            ))),
        }
    }
}

/// Pulls rows from PostgreSQL.
pub struct QuerySource {
    connection: String,
    config: PgTarget,
    /// `(SELECT …)` or a quoted table name, to be aliased `q`.
    relation: String,
    /// What the records' `source.table` says.
    object: String,
    options: QueryOptions,
    follow: bool,
    client: Option<tokio_postgres::Client>,
    /// The SQL type names of the cursor and key columns, learnt once per connection.
    types: Option<Vec<String>>,
    /// The last row read: its cursor and key values, as text.
    after: Option<Vec<String>>,
    /// A continuous flow that caught up waits until then.
    next_pull: Option<Instant>,
    /// Complete mode: rows fetched from the open snapshot, or `None` when none is open.
    snapshot: Option<u64>,
}

impl QuerySource {
    /// A source reading `object` (a table) or `options.query` through connection `name`.
    pub fn new(
        name: &str,
        conn: &PostgresConnection,
        object: &str,
        options: QueryOptions,
        follow: bool,
    ) -> Result<QuerySource, ConnectorError> {
        let wrong = |what: &str| ConnectorError::User(format!("postgres connection `{name}` as a source: {what}"));
        let relation = match (&options.query, object.trim()) {
            (Some(q), _) => format!("({})", q.trim().trim_end_matches(';')),
            (None, "") => return Err(wrong("set the flow's `object` to a table, or `query` in the options")),
            (None, table) => table.split('.').map(quote_ident).collect::<Vec<_>>().join("."),
        };
        if options.mode == PullMode::Cdc {
            return Err(wrong("`mode: cdc` is read by the CDC source"));
        }
        if options.mode == PullMode::Incremental && (options.cursor.is_none() || options.key.is_empty()) {
            return Err(wrong(
                "`mode: incremental` needs `cursor` (the column that grows with every change) and `key` (the columns identifying a row)",
            ));
        }
        Ok(QuerySource {
            connection: name.to_owned(),
            config: client_config(name, conn)?,
            relation,
            object: options.query.as_ref().map_or_else(|| object.to_owned(), |_| "query".to_owned()),
            options,
            follow,
            client: None,
            types: None,
            after: None,
            next_pull: None,
            snapshot: None,
        })
    }

    fn doing(&self) -> String {
        format!("reading {} (postgres connection `{}`)", self.object, self.connection)
    }

    async fn client(&mut self) -> Result<&tokio_postgres::Client, ConnectorError> {
        if self.client.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            self.client = Some(connect(&self.connection, &self.config).await?);
            // A new session has no open snapshot.
            self.snapshot = None;
        }
        self.client.as_ref().ok_or_else(|| ConnectorError::internal(self.doing(), "no connection"))
    }

    /// The cursor column followed by the key columns, quoted, as `q.col`.
    fn order_columns(&self) -> Vec<String> {
        self.options.cursor.iter().chain(&self.options.key).map(|c| format!("q.{}", quote_ident(c))).collect()
    }

    /// Turns rows of `(row JSON, position…)` into source items.
    fn items(
        &self,
        rows: &[tokio_postgres::Row],
        mut position: impl FnMut(&tokio_postgres::Row) -> Position,
    ) -> Vec<SourceItem> {
        let mut items = Vec::with_capacity(rows.len());
        for r in rows {
            let text: String = r.get(0);
            let after: Map<String, Value> = match exact_row(&text) {
                Ok(m) => m,
                Err(e) => {
                    items.push(SourceItem::Malformed {
                        payload: text.into_bytes(),
                        reason: format!("{}: the row is not a JSON object: {e}", self.doing()),
                        position: position(r),
                    });
                    continue;
                }
            };
            let key: Map<String, Value> =
                self.options.key.iter().map(|k| (k.clone(), after.get(k).cloned().unwrap_or(Value::Null))).collect();
            let mut source = Map::new();
            source.insert("connector".into(), json!("postgres"));
            source.insert("table".into(), json!(self.object));
            if let Some(c) = &self.options.cursor {
                source.insert("cursor".into(), after.get(c).cloned().unwrap_or(Value::Null));
            }
            items.push(SourceItem::Record { record: ChangeRecord::read(key, after, source), position: position(r) });
        }
        items
    }

    async fn pull_incremental(&mut self, max: usize) -> Result<Vec<SourceItem>, ConnectorError> {
        let doing = self.doing();
        let order = self.order_columns();
        let relation = self.relation.clone();
        if self.types.is_none() {
            // The types of the cursor and key columns, so stored positions (text) can be cast back.
            let probe = format!("SELECT {} FROM {relation} AS q", order.join(", "));
            let stmt = self.client().await?.prepare(&probe).await.map_err(|e| classify(&doing, &e))?;
            self.types = Some(stmt.columns().iter().map(|c| c.type_().name().to_owned()).collect());
        }
        let types = self.types.clone().unwrap_or_default();
        let cast = |i: usize| format!("CAST(${}::text AS {})", i + 1, types.get(i).map_or("text", String::as_str));
        let mut params: Vec<String> = Vec::new();
        let filter = match (&self.after, &self.options.first_execution_from) {
            (Some(after), _) => {
                params.clone_from(after);
                let bound: Vec<String> = (0..after.len()).map(cast).collect();
                format!("WHERE ({}) > ({})", order.join(", "), bound.join(", "))
            }
            (None, Some(from)) => {
                params.push(from.clone());
                format!("WHERE {} >= {}", order[0], cast(0))
            }
            (None, None) => String::new(),
        };
        let texts: Vec<String> = order.iter().map(|c| format!("{c}::text")).collect();
        let sql = format!(
            "SELECT row_to_json(q)::text, {} FROM {relation} AS q {filter} ORDER BY {} LIMIT {max}",
            texts.join(", "),
            order.join(", ")
        );
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let rows = self.client().await?.query(&sql, &refs).await.map_err(|e| classify(&doing, &e))?;
        let n = order.len();
        let position = |r: &tokio_postgres::Row| {
            let vals: Vec<Option<String>> = (1..=n).map(|i| r.get::<_, Option<String>>(i)).collect();
            json!({ "after": vals })
        };
        let items = self.items(&rows, position);
        if let Some(last) = rows.last() {
            self.after = Some((1..=n).map(|i| last.get::<_, Option<String>>(i).unwrap_or_default()).collect());
        }
        Ok(items)
    }

    async fn pull_complete(&mut self, max: usize) -> Result<(Vec<SourceItem>, bool), ConnectorError> {
        let doing = self.doing();
        if self.snapshot.is_none() {
            let relation = self.relation.clone();
            let client = self.client().await?;
            client
                .batch_execute(&format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
                     DECLARE sluice_pull NO SCROLL CURSOR FOR SELECT row_to_json(q)::text FROM {relation} AS q"
                ))
                .await
                .map_err(|e| classify(&doing, &e))?;
            self.snapshot = Some(0);
        }
        let client = self.client().await?;
        let rows =
            client.query(&format!("FETCH {max} FROM sluice_pull"), &[]).await.map_err(|e| classify(&doing, &e))?;
        if rows.is_empty() {
            client.batch_execute("COMMIT").await.map_err(|e| classify(&doing, &e))?;
            self.snapshot = None;
            return Ok((Vec::new(), true));
        }
        let start = self.snapshot.unwrap_or(0);
        let items = {
            let mut n = start;
            self.items(&rows, |_| {
                n += 1;
                json!({ "row": n })
            })
        };
        self.snapshot = Some(start + rows.len() as u64);
        Ok((items, false))
    }
}

#[async_trait]
impl Source for QuerySource {
    async fn open(&mut self, resume: Option<Position>) -> Result<(), ConnectorError> {
        if self.options.mode == PullMode::Incremental {
            self.after = resume
                .as_ref()
                .and_then(|p| p.get("after"))
                .and_then(Value::as_array)
                .map(|vals| vals.iter().map(|v| v.as_str().unwrap_or_default().to_owned()).collect());
        }
        Ok(())
    }

    async fn poll(&mut self, max: usize) -> Result<Poll, ConnectorError> {
        if self.next_pull.is_some_and(|t| Instant::now() < t) {
            return Ok(Poll::Idle);
        }
        self.next_pull = None;
        let (items, finished) = match self.options.mode {
            PullMode::Incremental => {
                let items = self.pull_incremental(max).await?;
                let caught_up = items.len() < max;
                (items, caught_up)
            }
            PullMode::Complete | PullMode::Cdc => self.pull_complete(max).await?,
        };
        if finished && self.follow {
            self.next_pull = Some(Instant::now() + self.options.poll_interval());
        }
        Ok(match (items.is_empty(), finished, self.follow) {
            (false, _, _) => Poll::Items(items),
            (true, true, false) => Poll::Exhausted,
            (true, _, _) => Poll::Idle,
        })
    }

    fn incremental(&self) -> bool {
        self.options.mode == PullMode::Incremental
    }
}

/// A row from `row_to_json`, its top-level numbers kept exact: PostgreSQL writes `numeric`
/// values as JSON numbers with every digit, and a JSON number read into a float loses the
/// ones past 15 or so (`12345678901234.5678` became `…4.568`). A number that is an integer, or
/// a float whose shortest text is the number's own, stays a number; any other keeps its text, as
/// the CDC source keeps `numeric` (Debezium's `decimal.handling.mode=string`). `decimal`
/// columns read either form exactly.
fn exact_row(text: &str) -> Result<Map<String, Value>, serde_json::Error> {
    let mut row: Map<String, Value> = serde_json::from_str(text)?;
    // Most rows hold no float at all; only those that do are read a second time, raw.
    if !row.values().any(Value::is_f64) {
        return Ok(row);
    }
    let raw: std::collections::HashMap<String, Box<serde_json::value::RawValue>> = serde_json::from_str(text)?;
    for (k, v) in row.iter_mut() {
        if let (Some(f), Some(r)) = (v.as_f64(), raw.get(k)) {
            let t = r.get();
            if f.to_string() != t {
                *v = Value::String(t.to_owned());
            }
        }
    }
    Ok(row)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn numbers_from_row_to_json_keep_every_digit() {
        let row =
            super::exact_row(r#"{"a": 12345678901234.5678, "b": 42, "c": 1.5, "d": -0.0001, "e": {"x": 1}, "f": "t"}"#)
                .unwrap();
        assert_eq!(row["a"], serde_json::json!("12345678901234.5678"));
        assert_eq!(row["b"], serde_json::json!(42));
        assert_eq!(row["c"], serde_json::json!(1.5));
        assert_eq!(row["d"], serde_json::json!(-0.0001));
        assert_eq!(row["e"], serde_json::json!({"x": 1}));
        assert_eq!(row["f"], serde_json::json!("t"));
    }
}
