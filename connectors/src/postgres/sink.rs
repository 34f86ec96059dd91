//! `postgres`: output rows written to a PostgreSQL table, one transaction per batch.
//!
//! Rows travel to the server as one JSON array per statement and are turned into the table's
//! row type by PostgreSQL itself (`json_populate_recordset`), so each column gets the table's
//! own type conversion and a batch is a single round trip, whatever its size:
//!
//! | `mode` | statement |
//! |---|---|
//! | `insert` (default) | `INSERT … SELECT … FROM json_populate_recordset(…)`: every row appended |
//! | `upsert` | `INSERT … ON CONFLICT (key) DO UPDATE`: one row per key |
//! | `update` | `UPDATE … FROM json_populate_recordset(…)` by key: missing keys are left alone |
//! | `delete` | `DELETE … USING json_populate_recordset(…)` by key |
//!
//! Change records are applied by op when the query selects `_op`: in `upsert` and `update`
//! modes a `d` row deletes its key (read from the row's key columns, or from `_key`, the Kafka
//! key, when a delete carries no row), and a `t` (a source table's `TRUNCATE`) truncates the
//! table, in its place among the batch's changes (`insert` mode, which only appends, refuses it
//! to the DLQ). Within a batch the last change of a key wins, so a key created and deleted in one
//! batch ends deleted. A column whose value is the unavailable marker (a CDC update's unchanged
//! TOASTed value, `__sluice_unavailable_value`) is left as the table has it. Columns named
//! `_op`, `_key` and `_ts` are never written.
//!
//! A row PostgreSQL refuses for its data (SQLSTATE classes 22 and 23: a bad value, a check,
//! unique or not-null violation) is isolated by halving the statement under savepoints and
//! goes to the DLQ with the server's message; the rest of the batch commits. A lost connection
//! or a server shutting down is retried (the next attempt reconnects); a missing table or
//! column, a refused login or a missing database fails the flow, naming the connection.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{DataType, SchemaRef};
use async_trait::async_trait;
use serde::Deserialize;
use sluice_engine::connector::{RejectedRow, Sink, WriteContext, Written};
use sluice_engine::error::ConnectorError;
use tokio_postgres::error::SqlState;

use super::plan::{Plan, json_array};
use super::{PgTarget, PostgresConnection, classify, client_config, connect, quote_ident, server_message};
use crate::halving::{Answer, Halving, Settled};
use sluice_engine::names::column;

/// How rows change the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// Append every row.
    #[default]
    Insert,
    /// Insert, or update the row with the same key.
    Upsert,
    /// Update the row with the same key; rows whose key is absent change nothing.
    Update,
    /// Delete the row with the same key.
    Delete,
}

/// Per-flow options of a `postgres` sink; the flow's `object` is the table (`schema.table` or
/// `table`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkOptions {
    /// `insert` (default), `upsert`, `update` or `delete`.
    #[serde(default)]
    pub mode: WriteMode,
    /// The columns identifying a row (required by `upsert`, `update` and `delete`; for `upsert`
    /// they need a unique index, which `create_table` makes the primary key).
    #[serde(default)]
    pub key: Vec<String>,
    /// Create the table from the flow's output columns if it does not exist.
    #[serde(default)]
    pub create_table: bool,
    /// What a `TRUNCATE` of the source table (op `t`) does: `refuse` (the default) sends it to
    /// the DLQ, saying why; `apply` truncates the table in its place among the batch's changes.
    #[serde(default)]
    pub truncate: TruncatePolicy,
}

/// What the sink does with a `TRUNCATE` (op `t`).
///
/// Changes reach the sink in order per key, not across keys: a truncate, which changes every
/// key, can overtake or trail other keys' changes that came before or after it at the source
/// (they are in other partitions of the changes topic). Applied blindly it could delete rows
/// written after it, or keep rows written before it. It is safe to apply when the changes
/// topic has one partition (`kafka.partitions: 1`), where every change is in order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TruncatePolicy {
    /// To the DLQ with the reason; the table is left as it is.
    #[default]
    Refuse,
    /// Truncate the table (use with a one-partition changes topic).
    Apply,
}

/// Columns of the SQL output that steer the sink rather than being written.
const META: [&str; 3] = column::HIDDEN;

/// Writes rows to a PostgreSQL table.
pub struct PostgresSink {
    connection: String,
    config: PgTarget,
    table: String,
    options: PostgresSinkOptions,
    client: Option<tokio_postgres::Client>,
    /// The output columns the table was last checked for (and created or extended for, if
    /// asked).
    prepared: Option<SchemaRef>,
}

/// What a statement's failure means.
enum Failure {
    /// The data of some row: isolate it.
    Row(String),
    /// Anything else, already classified.
    Stop(ConnectorError),
}

impl PostgresSink {
    /// A sink writing to table `object` through connection `name`.
    pub fn new(
        name: &str,
        conn: &PostgresConnection,
        object: &str,
        options: PostgresSinkOptions,
    ) -> Result<PostgresSink, ConnectorError> {
        let wrong = |what: String| ConnectorError::User(format!("postgres connection `{name}`: {what}"));
        if object.trim().is_empty() {
            return Err(wrong("the flow's destination `object` must name a table".into()));
        }
        if options.mode != WriteMode::Insert && options.key.is_empty() {
            return Err(wrong("`key` must list the key columns for modes upsert, update and delete".into()));
        }
        let config = client_config(name, conn)?;
        let table = object.split('.').map(quote_ident).collect::<Vec<_>>().join(".");
        Ok(PostgresSink { connection: name.to_owned(), config, table, options, client: None, prepared: None })
    }

    fn doing(&self) -> String {
        format!("writing to table {} (postgres connection `{}`)", self.table, self.connection)
    }

    /// The open connection, opening it if there is none or it broke.
    async fn client(&mut self) -> Result<&tokio_postgres::Client, ConnectorError> {
        if self.client.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            self.client = Some(connect(&self.connection, &self.config).await?);
        }
        self.client.as_ref().ok_or_else(|| ConnectorError::internal("connecting to postgres", "no connection"))
    }

    /// Creates the table if asked and checks that it exists and has every output column —
    /// again whenever the output's columns change (a column added upstream): with
    /// `create_table`, columns the table lacks are added to it.
    async fn prepare(&mut self, schema: &SchemaRef) -> Result<(), ConnectorError> {
        if self.prepared.as_ref().is_some_and(|p| p.fields() == schema.fields()) {
            return Ok(());
        }
        let doing = self.doing();
        let create = self.options.create_table.then(|| {
            let add: Vec<String> = schema
                .fields()
                .iter()
                .map(|f| {
                    format!(
                        "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}",
                        self.table,
                        quote_ident(f.name()),
                        pg_type(f)
                    )
                })
                .collect();
            format!("{}; {}", create_table_sql(&self.table, schema, &self.options.key), add.join("; "))
        });
        let table = self.table.clone();
        let client = self.client().await?;
        if let Some(sql) = create {
            client.batch_execute(&sql).await.map_err(|e| classify(&format!("{doing}: creating the table"), &e))?;
        }
        // A missing table is the user's to fix; say so before the first batch rather than as
        // a row error.
        let found: Option<String> =
            client.query_one("SELECT to_regclass($1)::text", &[&table]).await.map_err(|e| classify(&doing, &e))?.get(0);
        if found.is_none() {
            return Err(ConnectorError::User(format!(
                "{doing}: the table does not exist; create it, or set `create_table: true` in the sink's options"
            )));
        }
        let have: Vec<String> = client
            .query(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 \
                 AND NOT attisdropped",
                &[&table],
            )
            .await
            .map_err(|e| classify(&doing, &e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let missing: Vec<String> =
            schema.fields().iter().filter(|f| !have.contains(f.name())).map(|f| format!("`{}`", f.name())).collect();
        if !missing.is_empty() {
            return Err(ConnectorError::User(format!(
                "{doing}: the table has no column {}; add it, or set `create_table: true` in the sink's options so \
                 that columns added upstream are added to the table",
                missing.join(", ")
            )));
        }
        self.prepared = Some(schema.clone());
        Ok(())
    }

    /// Runs one statement over `rows` inside the open transaction, halving it under savepoints
    /// until refused rows stand alone. Returns the refused rows (by position in `rows`).
    async fn apply(&mut self, sql: &str, rows: &[&[u8]]) -> Result<Vec<(usize, String)>, ConnectorError> {
        let doing = self.doing();
        let client = self.client().await?;
        // The transaction is not retried piecemeal (a failed batch rolls back whole), so what
        // one pass settles is not kept.
        let mut settled = Settled::default();
        let mut halving = Halving::new(0, rows.len());
        while let Some((a, b)) = halving.next(&settled) {
            let body = json_array(&rows[a..b]);
            client.batch_execute("SAVEPOINT sluice_rows").await.map_err(|e| classify(&doing, &e))?;
            let answer = match client.execute(sql, &[&body]).await {
                Ok(_) => {
                    client.batch_execute("RELEASE SAVEPOINT sluice_rows").await.map_err(|e| classify(&doing, &e))?;
                    Answer::Delivered
                }
                Err(e) => {
                    let reason = match failure(&doing, &e) {
                        Failure::Row(reason) => reason,
                        Failure::Stop(err) => return Err(err),
                    };
                    client
                        .batch_execute("ROLLBACK TO SAVEPOINT sluice_rows; RELEASE SAVEPOINT sluice_rows")
                        .await
                        .map_err(|e| classify(&doing, &e))?;
                    Answer::Refused(reason)
                }
            };
            halving.answer((a, b), answer, &mut settled);
        }
        Ok(halving.into_rejected().into_iter().map(|r| (r.index, r.reason)).collect())
    }
}

#[async_trait]
impl Sink for PostgresSink {
    async fn write(&mut self, batches: &[RecordBatch], _: WriteContext<'_>) -> Result<Written, ConnectorError> {
        let Some(first) = batches.first() else { return Ok(Written::all()) };
        let data_cols: Vec<usize> =
            (0..first.num_columns()).filter(|i| !META.contains(&first.schema().field(*i).name().as_str())).collect();
        let data_schema = Arc::new(
            first.schema().project(&data_cols).map_err(|e| ConnectorError::internal(self.doing(), e.to_string()))?,
        );
        self.prepare(&data_schema).await?;
        let plan = Plan::of(batches, &data_cols, &self.options)?;
        let columns: Vec<String> = data_schema.fields().iter().map(|f| quote_ident(f.name())).collect();
        let doing = self.doing();
        self.client().await?.batch_execute("BEGIN").await.map_err(|e| classify(&doing, &e))?;
        let mut rejected: Vec<RejectedRow> =
            plan.refused.iter().map(|(index, reason)| RejectedRow { index: *index, reason: reason.clone() }).collect();
        let result = async {
            if plan.truncate {
                let table = self.table.clone();
                self.client()
                    .await?
                    .batch_execute(&format!("TRUNCATE TABLE {table}"))
                    .await
                    .map_err(|e| classify(&format!("{doing}: applying a TRUNCATE"), &e))?;
            }
            for (sql, rows) in plan.statements(&self.table, &columns, &self.options) {
                let lines: Vec<&[u8]> = rows.iter().map(|(_, line)| line.as_slice()).collect();
                for (i, reason) in self.apply(&sql, &lines).await? {
                    rejected.push(RejectedRow { index: rows[i].0, reason });
                }
            }
            self.client().await?.batch_execute("COMMIT").await.map_err(|e| classify(&doing, &e))
        }
        .await;
        if let Err(e) = result {
            // Leave no transaction open behind a failed batch; if the connection is gone,
            // so is the transaction.
            if let Some(c) = self.client.as_ref().filter(|c| !c.is_closed()) {
                let _ = c.batch_execute("ROLLBACK").await;
            }
            return Err(e);
        }
        rejected.sort_by_key(|r| r.index);
        Ok(Written { rejected })
    }

    fn describe(&self) -> String {
        format!("postgres table {} (connection `{}`)", self.table, self.connection)
    }
}

/// `CREATE TABLE IF NOT EXISTS` for the output columns, keyed by `key`.
fn create_table_sql(table: &str, schema: &SchemaRef, key: &[String]) -> String {
    let mut cols: Vec<String> =
        schema.fields().iter().map(|f| format!("{} {}", quote_ident(f.name()), pg_type(f))).collect();
    if !key.is_empty() {
        cols.push(format!("PRIMARY KEY ({})", key.iter().map(|k| quote_ident(k)).collect::<Vec<_>>().join(", ")));
    }
    format!("CREATE TABLE IF NOT EXISTS {table} ({})", cols.join(", "))
}

/// The PostgreSQL type for an output column: exact decimals as `numeric(p,s)`, `json` columns
/// as `jsonb`, `uuid` columns as `uuid`, lists of scalars as arrays; structs, maps and lists of
/// them as `jsonb` (PostgreSQL's composite types would need a type created per struct).
fn pg_type(f: &arrow_schema::Field) -> String {
    use sluice_engine::schema::{EXTENSION_KEY, JSON_EXTENSION, UUID_EXTENSION};
    match (f.data_type(), f.metadata().get(EXTENSION_KEY).map(String::as_str)) {
        (DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View, Some(JSON_EXTENSION)) => "jsonb".into(),
        (DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View, Some(UUID_EXTENSION)) => "uuid".into(),
        (DataType::Decimal128(p, s) | DataType::Decimal256(p, s), _) if *s >= 0 => {
            format!("numeric({p},{s})")
        }
        (DataType::List(item) | DataType::LargeList(item), _) => match pg_type(item) {
            t if t == "jsonb" => t,
            t => format!("{t}[]"),
        },
        (t, _) => pg_scalar(t).into(),
    }
}

fn pg_scalar(t: &DataType) -> &'static str {
    match t {
        DataType::Boolean => "boolean",
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint",
        DataType::Int32 | DataType::UInt16 => "integer",
        DataType::Int64 | DataType::UInt32 => "bigint",
        DataType::UInt64 | DataType::Decimal128(..) | DataType::Decimal256(..) => "numeric",
        DataType::Float16 | DataType::Float32 => "real",
        DataType::Float64 => "double precision",
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text",
        DataType::Timestamp(_, Some(_)) => "timestamptz",
        DataType::Timestamp(_, None) => "timestamp",
        DataType::Date32 | DataType::Date64 => "date",
        DataType::Time32(_) | DataType::Time64(_) => "time",
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytea",
        // Structs and maps arrive as JSON objects.
        _ => "jsonb",
    }
}

/// Sorts a failed statement: a row's data, or something that stops the batch.
fn failure(context: &str, e: &tokio_postgres::Error) -> Failure {
    match e.code().map(SqlState::code) {
        Some(code) if code.starts_with("22") || code.starts_with("23") => Failure::Row(server_message(e)),
        _ => Failure::Stop(classify(context, e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::postgres::SslMode;
    use sluice_engine::secret::Secret;

    #[test]
    fn a_key_is_required_where_rows_are_matched() {
        let conn = PostgresConnection {
            host: "127.0.0.1".into(),
            port: 5432,
            database: "d".into(),
            user: "u".into(),
            password: Some(Secret::new("hunter2")),
            connect_timeout_secs: std::num::NonZeroU64::MIN,
            ssl_mode: SslMode::default(),
            ssl_root_cert: None,
            ssl_cert: None,
            ssl_key: None,
        };
        let opts = PostgresSinkOptions { mode: WriteMode::Upsert, ..PostgresSinkOptions::default() };
        let e = PostgresSink::new("wh", &conn, "t", opts).err().unwrap().to_string();
        assert!(e.contains("wh") && e.contains("`key`"), "{e}");
        assert!(!format!("{conn:?}").contains("hunter2"));
        let missing = PostgresConnection { ssl_root_cert: Some("/no/such/ca.pem".into()), ..conn };
        let e = PostgresSink::new("wh", &missing, "t", PostgresSinkOptions::default()).err().unwrap().to_string();
        assert!(e.contains("wh") && e.contains("ssl_root_cert") && e.contains("/no/such/ca.pem"), "{e}");
    }
}
