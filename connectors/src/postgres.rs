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
//! key, when a delete carries no row). Within a batch the last change of a key wins, so a key
//! created and deleted in one batch ends deleted. Columns named `_op`, `_key` and `_ts` are
//! never written.
//!
//! A row PostgreSQL refuses for its data (SQLSTATE classes 22 and 23: a bad value, a check,
//! unique or not-null violation) is isolated by halving the statement under savepoints and
//! goes to the DLQ with the server's message; the rest of the batch commits. A lost connection
//! or a server shutting down is retried (the next attempt reconnects); a missing table or
//! column, a refused login or a missing database fails the flow, naming the connection.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Array, RecordBatch, StringArray};
use arrow_schema::{DataType, SchemaRef};
use async_trait::async_trait;
use serde::Deserialize;
use sluice_engine::connector::{RejectedRow, Sink, WriteContext, Written};
use sluice_engine::error::ConnectorError;
use sluice_engine::secret::Secret;
use tokio_postgres::error::SqlState;

use crate::file::encode_json_lines;

/// The `postgres` connection: a server, a database and a login.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConnection {
    /// The server's host name or address.
    #[serde(default = "default_host")]
    pub host: String,
    /// The server's port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The database.
    pub database: String,
    /// The login role.
    pub user: String,
    /// The role's password (a secret reference such as `${env:PGPASSWORD}`), if it needs one.
    pub password: Option<Secret>,
    /// Seconds to wait for a connection before the attempt counts as failed (and is retried).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// TLS, with libpq's `sslmode` words: `disable`, `prefer` (the default: TLS when the server
    /// offers it, unverified), `require` (TLS or fail; the certificate is checked only when
    /// `ssl_root_cert` is given, as in libpq), `verify-ca` (the certificate must chain to a
    /// trusted authority) or `verify-full` (and name the host).
    #[serde(default)]
    pub ssl_mode: SslMode,
    /// A PEM file of the authorities to trust instead of the system's (a private CA), as libpq's
    /// `sslrootcert`.
    pub ssl_root_cert: Option<PathBuf>,
    /// A PEM client certificate, for servers that authenticate clients by certificate.
    pub ssl_cert: Option<PathBuf>,
    /// The PEM private key of `ssl_cert`.
    pub ssl_key: Option<PathBuf>,
}

/// How a connection uses TLS (libpq's `sslmode`, without `allow`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Never.
    Disable,
    /// When the server offers it; the certificate is not checked.
    #[default]
    Prefer,
    /// Always; the certificate is checked only against a given `ssl_root_cert`.
    Require,
    /// Always, with a certificate from a trusted authority.
    VerifyCa,
    /// Always, with a trusted certificate naming the host.
    VerifyFull,
}

fn default_host() -> String {
    "127.0.0.1".into()
}

fn default_port() -> u16 {
    5432
}

fn default_connect_timeout() -> u64 {
    10
}

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
}

/// Columns of the SQL output that steer the sink rather than being written.
const META: [&str; 3] = ["_op", "_key", "_ts"];

/// Writes rows to a PostgreSQL table.
pub struct PostgresSink {
    connection: String,
    config: PgTarget,
    table: String,
    options: PostgresSinkOptions,
    client: Option<tokio_postgres::Client>,
    /// Set once the table is known to exist (created, if asked).
    prepared: bool,
}

/// What it takes to open a connection: client settings and the TLS connector.
#[derive(Clone)]
pub(crate) struct PgTarget {
    config: tokio_postgres::Config,
    tls: postgres_openssl::MakeTlsConnector,
}

/// Client settings and TLS for connection `name`.
pub(crate) fn client_config(name: &str, conn: &PostgresConnection) -> Result<PgTarget, ConnectorError> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&conn.host)
        .port(conn.port)
        .dbname(&conn.database)
        .user(&conn.user)
        .application_name("sluice")
        .connect_timeout(Duration::from_secs(conn.connect_timeout_secs.max(1)))
        .ssl_mode(match conn.ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        });
    if let Some(p) = &conn.password {
        config.password(p.expose());
    }
    Ok(PgTarget { config, tls: tls_connector(name, conn)? })
}

/// An OpenSSL connector checking the server's certificate as `ssl_mode` says.
fn tls_connector(name: &str, conn: &PostgresConnection) -> Result<postgres_openssl::MakeTlsConnector, ConnectorError> {
    use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
    let file_err = |field: &str, path: &std::path::Path, e: openssl::error::ErrorStack| {
        ConnectorError::User(format!("postgres connection `{name}`: `{field}` ({}): {e}", path.display()))
    };
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(|e| ConnectorError::Other {
        context: format!("setting up TLS for postgres connection `{name}`"),
        message: e.to_string(),
    })?;
    if let Some(ca) = &conn.ssl_root_cert {
        // As in libpq, a root certificate file is the whole trust: the system's authorities
        // are not consulted, so a private CA's file pins the server to that CA.
        let pem = std::fs::read(ca).map_err(|e| {
            ConnectorError::User(format!("postgres connection `{name}`: `ssl_root_cert` ({}): {e}", ca.display()))
        })?;
        let mut store = openssl::x509::store::X509StoreBuilder::new().map_err(|e| file_err("ssl_root_cert", ca, e))?;
        for cert in openssl::x509::X509::stack_from_pem(&pem).map_err(|e| file_err("ssl_root_cert", ca, e))? {
            store.add_cert(cert).map_err(|e| file_err("ssl_root_cert", ca, e))?;
        }
        builder.set_verify_cert_store(store.build()).map_err(|e| file_err("ssl_root_cert", ca, e))?;
    }
    if let Some(cert) = &conn.ssl_cert {
        builder.set_certificate_chain_file(cert).map_err(|e| file_err("ssl_cert", cert, e))?;
    }
    if let Some(key) = &conn.ssl_key {
        builder.set_private_key_file(key, SslFiletype::PEM).map_err(|e| file_err("ssl_key", key, e))?;
    }
    let verify = match conn.ssl_mode {
        SslMode::Disable | SslMode::Prefer => false,
        SslMode::Require => conn.ssl_root_cert.is_some(),
        SslMode::VerifyCa | SslMode::VerifyFull => true,
    };
    builder.set_verify(if verify { SslVerifyMode::PEER } else { SslVerifyMode::NONE });
    let mut tls = postgres_openssl::MakeTlsConnector::new(builder.build());
    if conn.ssl_mode != SslMode::VerifyFull {
        // Only verify-full checks that the certificate names the host.
        tls.set_callback(|c, _| {
            c.set_verify_hostname(false);
            Ok(())
        });
    }
    Ok(tls)
}

/// Opens a connection for connection `name`.
pub(crate) async fn connect(name: &str, target: &PgTarget) -> Result<tokio_postgres::Client, ConnectorError> {
    let context = format!("connecting to postgres connection `{name}`");
    let (client, connection) = target.config.connect(target.tls.clone()).await.map_err(|e| {
        // A certificate that does not verify, or a server without TLS when it is required,
        // will not change by retrying.
        let mut text = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            // OpenSSL repeats its error stack at each level; keep what is new.
            let c_text = c.to_string();
            let new: Vec<&str> = c_text.split(": ").filter(|part| !text.contains(part)).collect();
            if !new.is_empty() {
                text.push_str(": ");
                text.push_str(&new.join(": "));
            }
            cause = c.source();
        }
        if text.starts_with("error performing TLS handshake") {
            ConnectorError::User(format!("{context}: {text}"))
        } else {
            classify(&context, &e)
        }
    })?;
    // The connection object drives the socket; it ends when the client is dropped.
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

/// Logs in and asks the server who and what it is.
pub async fn test_connection(name: &str, conn: &PostgresConnection) -> Result<String, ConnectorError> {
    let mut sink = PostgresSink::new(name, conn, "-", PostgresSinkOptions::default())?;
    let client = sink.client().await?;
    let row = client
        .query_one(
            "SELECT current_user::text, current_database()::text, current_setting('server_version'), \
             (SELECT CASE WHEN ssl THEN 'over TLS (' || version || ')' ELSE 'without TLS' END \
              FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
            &[],
        )
        .await
        .map_err(|e| classify(&format!("postgres connection `{name}`"), &e))?;
    let (user, db, version, tls): (String, String, String, Option<String>) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    Ok(format!(
        "logged in to database {db} as {user} (PostgreSQL {version}) at {}:{} {}",
        conn.host,
        conn.port,
        tls.unwrap_or_else(|| "without TLS".into())
    ))
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
        Ok(PostgresSink { connection: name.to_owned(), config, table, options, client: None, prepared: false })
    }

    fn doing(&self) -> String {
        format!("writing to table {} (postgres connection `{}`)", self.table, self.connection)
    }

    /// The open connection, opening it if there is none or it broke.
    async fn client(&mut self) -> Result<&tokio_postgres::Client, ConnectorError> {
        if self.client.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            self.client = Some(connect(&self.connection, &self.config).await?);
        }
        self.client.as_ref().ok_or_else(|| ConnectorError::Other {
            context: "connecting to postgres".into(),
            message: "no connection".into(),
        })
    }

    /// Creates the table if asked and checks that it exists.
    async fn prepare(&mut self, schema: &SchemaRef) -> Result<(), ConnectorError> {
        if self.prepared {
            return Ok(());
        }
        let doing = self.doing();
        let create = self.options.create_table.then(|| create_table_sql(&self.table, schema, &self.options.key));
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
        self.prepared = true;
        Ok(())
    }

    /// Runs one statement over `rows` inside the open transaction, halving it under savepoints
    /// until refused rows stand alone. Returns the refused rows (by position in `rows`).
    async fn apply(&mut self, sql: &str, rows: &[&[u8]]) -> Result<Vec<(usize, String)>, ConnectorError> {
        let doing = self.doing();
        let client = self.client().await?;
        let mut refused = Vec::new();
        let mut todo = vec![(0, rows.len())];
        while let Some((a, b)) = todo.pop() {
            if a == b {
                continue;
            }
            let body = json_array(&rows[a..b]);
            client.batch_execute("SAVEPOINT sluice_rows").await.map_err(|e| classify(&doing, &e))?;
            match client.execute(sql, &[&body]).await {
                Ok(_) => {
                    client.batch_execute("RELEASE SAVEPOINT sluice_rows").await.map_err(|e| classify(&doing, &e))?
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
                    if b - a == 1 {
                        refused.push((a, reason));
                    } else {
                        let mid = a + (b - a) / 2;
                        todo.push((mid, b));
                        todo.push((a, mid));
                    }
                }
            }
        }
        Ok(refused)
    }
}

#[async_trait]
impl Sink for PostgresSink {
    async fn write(&mut self, batches: &[RecordBatch], _: WriteContext<'_>) -> Result<Written, ConnectorError> {
        let Some(first) = batches.first() else { return Ok(Written::all()) };
        let data_cols: Vec<usize> =
            (0..first.num_columns()).filter(|i| !META.contains(&first.schema().field(*i).name().as_str())).collect();
        let data_schema = Arc::new(
            first
                .schema()
                .project(&data_cols)
                .map_err(|e| ConnectorError::Other { context: self.doing(), message: e.to_string() })?,
        );
        self.prepare(&data_schema).await?;
        let plan = Plan::of(batches, &data_cols, &self.options)?;
        let columns: Vec<String> = data_schema.fields().iter().map(|f| quote_ident(f.name())).collect();
        let doing = self.doing();
        self.client().await?.batch_execute("BEGIN").await.map_err(|e| classify(&doing, &e))?;
        let mut rejected = Vec::new();
        let result = async {
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

/// An output row's index in the batch and a JSON object for it.
type RowJson = (usize, Vec<u8>);

/// A batch sorted into what to write and what to delete, one entry per key where there is a key.
struct Plan {
    /// The rows' data columns.
    writes: Vec<RowJson>,
    /// The keys to delete.
    deletes: Vec<RowJson>,
}

impl Plan {
    fn of(batches: &[RecordBatch], data_cols: &[usize], options: &PostgresSinkOptions) -> Result<Plan, ConnectorError> {
        let encode_err = |e: arrow_schema::ArrowError| ConnectorError::Other {
            context: "encoding rows for postgres".into(),
            message: e.to_string(),
        };
        let keyed = options.mode != WriteMode::Insert;
        let mut plan = Plan { writes: Vec::new(), deletes: Vec::new() };
        // (output row index, delete?, row JSON, key JSON), in order.
        let mut rows: Vec<(usize, bool, Vec<u8>, String)> = Vec::new();
        let mut base = 0;
        for b in batches {
            let data = b.project(data_cols).map_err(encode_err)?;
            let mut buf = Vec::new();
            encode_json_lines(std::slice::from_ref(&data), &mut buf)?;
            let lines = buf.split(|c| *c == b'\n').filter(|l| !l.is_empty());
            if !keyed {
                plan.writes.extend(lines.enumerate().map(|(i, line)| (base + i, line.to_vec())));
                base += b.num_rows();
                continue;
            }
            // Keys as canonical JSON objects, encoded for the whole batch at once.
            let key_idx = options
                .key
                .iter()
                .map(|k| b.schema().index_of(k).map_err(|_| missing_column(options, k)))
                .collect::<Result<Vec<usize>, _>>()?;
            let key_cols = b.project(&key_idx).map_err(encode_err)?;
            let mut kbuf = Vec::new();
            encode_json_lines(std::slice::from_ref(&key_cols), &mut kbuf)?;
            let key_lines = kbuf.split(|c| *c == b'\n').filter(|l| !l.is_empty());
            let ops = text_column(b, "_op");
            let kafka_keys = text_column(b, "_key");
            for (i, (line, key_line)) in lines.zip(key_lines).enumerate() {
                let delete =
                    options.mode == WriteMode::Delete || ops.is_some_and(|o| o.is_valid(i) && o.value(i) == "d");
                let has_key = key_cols.columns().iter().all(|c| c.is_valid(i));
                let key = if has_key {
                    String::from_utf8_lossy(key_line).into_owned()
                } else if delete {
                    // A delete without a row: its key is in the Kafka key.
                    let kk = kafka_keys.filter(|k| k.is_valid(i)).map(|k| k.value(i));
                    kk.and_then(|kk| key_from_json(kk, &options.key)).ok_or_else(|| missing_key(options, base + i))?
                } else {
                    return Err(missing_key(options, base + i));
                };
                rows.push((base + i, delete, line.to_vec(), key));
            }
            base += b.num_rows();
        }
        // The last change of each key wins.
        let mut last: HashMap<&str, usize> = HashMap::with_capacity(rows.len());
        for (n, (_, _, _, key)) in rows.iter().enumerate() {
            last.insert(key.as_str(), n);
        }
        let winners: Vec<bool> = rows.iter().enumerate().map(|(n, r)| last.get(r.3.as_str()) == Some(&n)).collect();
        for ((i, delete, line, key), win) in rows.into_iter().zip(winners) {
            match (win, delete) {
                (false, _) => {}
                (true, true) => plan.deletes.push((i, key.into_bytes())),
                (true, false) => plan.writes.push((i, line)),
            }
        }
        Ok(plan)
    }

    /// The statements to run, each with its rows.
    fn statements<'a>(
        &'a self,
        table: &str,
        columns: &[String],
        options: &PostgresSinkOptions,
    ) -> Vec<(String, &'a [RowJson])> {
        let cols = columns.join(", ");
        let rows = format!("json_populate_recordset(null::{table}, $1::text::json)");
        let key: Vec<String> = options.key.iter().map(|k| quote_ident(k)).collect();
        let matches = key.iter().map(|k| format!("t.{k} = r.{k}")).collect::<Vec<_>>().join(" AND ");
        let mut out = Vec::new();
        if !self.deletes.is_empty() {
            out.push((format!("DELETE FROM {table} AS t USING {rows} AS r WHERE {matches}"), self.deletes.as_slice()));
        }
        if !self.writes.is_empty() {
            let sql = match options.mode {
                WriteMode::Insert => format!("INSERT INTO {table} ({cols}) SELECT {cols} FROM {rows}"),
                WriteMode::Upsert => {
                    let set: Vec<String> =
                        columns.iter().filter(|c| !key.contains(c)).map(|c| format!("{c} = EXCLUDED.{c}")).collect();
                    let action =
                        if set.is_empty() { "NOTHING".to_owned() } else { format!("UPDATE SET {}", set.join(", ")) };
                    format!(
                        "INSERT INTO {table} ({cols}) SELECT {cols} FROM {rows} ON CONFLICT ({}) DO {action}",
                        key.join(", ")
                    )
                }
                WriteMode::Update => {
                    let set: Vec<String> =
                        columns.iter().filter(|c| !key.contains(c)).map(|c| format!("{c} = r.{c}")).collect();
                    format!("UPDATE {table} AS t SET {} FROM {rows} AS r WHERE {matches}", set.join(", "))
                }
                WriteMode::Delete => unreachable_delete(),
            };
            out.push((sql, self.writes.as_slice()));
        }
        out
    }
}

/// In `delete` mode every row is planned as a delete, so no write statement is built.
fn unreachable_delete() -> String {
    "SELECT 1 WHERE false".into()
}

fn missing_key(options: &PostgresSinkOptions, row: usize) -> ConnectorError {
    ConnectorError::User(format!(
        "row {row} has no value for key column(s) {}; select them in the flow's SQL (or `_key` for deletes)",
        options.key.join(", ")
    ))
}

/// The key columns of a JSON object (a Kafka key) as a JSON object in key order, or `None`
/// when one is missing or null.
fn key_from_json(text: &str, key: &[String]) -> Option<String> {
    let row: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).ok()?;
    let mut out = serde_json::Map::new();
    for k in key {
        match row.get(k) {
            Some(v) if !v.is_null() => {
                out.insert(k.clone(), v.clone());
            }
            _ => return None,
        }
    }
    Some(serde_json::Value::Object(out).to_string())
}

fn missing_column(options: &PostgresSinkOptions, column: &str) -> ConnectorError {
    ConnectorError::User(format!(
        "key column `{column}` is not in the flow's output; select it in the SQL (key: {})",
        options.key.join(", ")
    ))
}

fn text_column<'a>(b: &'a RecordBatch, name: &str) -> Option<&'a StringArray> {
    b.column_by_name(name)?.as_any().downcast_ref::<StringArray>()
}

fn json_array(rows: &[&[u8]]) -> String {
    let mut s = String::with_capacity(rows.iter().map(|r| r.len() + 1).sum::<usize>() + 2);
    s.push('[');
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&String::from_utf8_lossy(r));
    }
    s.push(']');
    s
}

/// `CREATE TABLE IF NOT EXISTS` for the output columns, keyed by `key`.
fn create_table_sql(table: &str, schema: &SchemaRef, key: &[String]) -> String {
    let mut cols: Vec<String> =
        schema.fields().iter().map(|f| format!("{} {}", quote_ident(f.name()), pg_type(f.data_type()))).collect();
    if !key.is_empty() {
        cols.push(format!("PRIMARY KEY ({})", key.iter().map(|k| quote_ident(k)).collect::<Vec<_>>().join(", ")));
    }
    format!("CREATE TABLE IF NOT EXISTS {table} ({})", cols.join(", "))
}

/// The PostgreSQL type for an output column.
fn pg_type(t: &DataType) -> &'static str {
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
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytea",
        // Lists, structs and maps arrive as JSON.
        _ => "jsonb",
    }
}

/// Quotes an identifier for SQL.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Sorts a failed statement: a row's data, or something that stops the batch.
fn failure(context: &str, e: &tokio_postgres::Error) -> Failure {
    match e.code().map(SqlState::code) {
        Some(code) if code.starts_with("22") || code.starts_with("23") => Failure::Row(server_message(e)),
        _ => Failure::Stop(classify(context, e)),
    }
}

/// The server's own words for an error, with its detail when it gave one.
fn server_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{} ({}): {d}", db.message(), db.code().code()),
            None => format!("{} ({})", db.message(), db.code().code()),
        },
        None => e.to_string(),
    }
}

/// Whether an error may pass (the connection, the server's state) or needs the user.
pub(crate) fn classify(context: &str, e: &tokio_postgres::Error) -> ConnectorError {
    let message = server_message(e);
    let retriable = match e.code().map(SqlState::code) {
        // Connection problems, serialization failures and deadlocks, resource shortages,
        // the server shutting down or starting up.
        Some(code) => ["08", "40", "53", "57P", "58"].iter().any(|p| code.starts_with(p)),
        // No SQLSTATE: I/O, a closed connection, a timeout.
        None => true,
    };
    if retriable {
        let message = match std::error::Error::source(e) {
            Some(cause) if !message.contains(&cause.to_string()) => format!("{message}: {cause}"),
            _ => message,
        };
        ConnectorError::Retriable { context: context.to_owned(), message, retry_after: None }
    } else {
        ConnectorError::User(format!("{context}: {message}"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use arrow_array::Int64Array;
    use arrow_schema::{Field, Schema};

    fn batch(ids: &[i64], ops: &[&str], keys: &[Option<&str>]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("v", DataType::Int64, true),
            Field::new("_op", DataType::Utf8, false),
            Field::new("_key", DataType::Utf8, true),
        ]));
        let id: Int64Array = ids.iter().map(|i| if *i < 0 { None } else { Some(*i) }).collect();
        let v: Int64Array = (0..ids.len() as i64).map(Some).collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(id),
                Arc::new(v),
                Arc::new(StringArray::from(ops.to_vec())),
                Arc::new(StringArray::from(keys.to_vec())),
            ],
        )
        .unwrap()
    }

    #[test]
    fn the_last_change_of_a_key_wins_and_row_less_deletes_use_the_kafka_key() {
        let b = batch(
            &[1, 2, 1, -1, 3],
            &["c", "c", "u", "d", "c"],
            &[Some(r#"{"id":1}"#), Some(r#"{"id":2}"#), Some(r#"{"id":1}"#), Some(r#"{"id":2}"#), None],
        );
        let opts = PostgresSinkOptions { mode: WriteMode::Upsert, key: vec!["id".into()], create_table: false };
        let plan = Plan::of(&[b], &[0, 1], &opts).unwrap();
        let writes: Vec<(usize, String)> =
            plan.writes.iter().map(|(i, l)| (*i, String::from_utf8(l.clone()).unwrap())).collect();
        assert_eq!(writes, vec![(2, r#"{"id":1,"v":2}"#.to_owned()), (4, r#"{"id":3,"v":4}"#.to_owned())]);
        let deletes: Vec<(usize, String)> =
            plan.deletes.iter().map(|(i, l)| (*i, String::from_utf8(l.clone()).unwrap())).collect();
        assert_eq!(deletes, vec![(3, r#"{"id":2}"#.to_owned())]);
    }

    #[test]
    fn insert_mode_appends_everything_and_statements_quote_names() {
        let b = batch(&[1, 1], &["c", "d"], &[None, None]);
        let plan = Plan::of(&[b], &[0, 1], &PostgresSinkOptions::default()).unwrap();
        assert_eq!(plan.writes.len(), 2);
        assert!(plan.deletes.is_empty());
        let sql = plan.statements("\"s\".\"t\"", &["\"id\"".into(), "\"v\"".into()], &PostgresSinkOptions::default());
        assert_eq!(
            sql[0].0,
            "INSERT INTO \"s\".\"t\" (\"id\", \"v\") SELECT \"id\", \"v\" FROM json_populate_recordset(null::\"s\".\"t\", $1::text::json)"
        );
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }

    #[test]
    fn a_key_is_required_where_rows_are_matched() {
        let conn = PostgresConnection {
            host: "127.0.0.1".into(),
            port: 5432,
            database: "d".into(),
            user: "u".into(),
            password: Some(Secret::new("hunter2")),
            connect_timeout_secs: 1,
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
