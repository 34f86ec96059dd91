//! `postgres` with `mode: cdc`: change data capture from the write-ahead log, through logical
//! decoding with the built-in `pgoutput` plugin.
//!
//! ```text
//!   open: publication + slot (created if absent) ─▶ which tables need a snapshot
//!   poll: snapshot pages (op r, REPEATABLE READ), then the replication stream
//!         (START_REPLICATION … LOGICAL, see [`stream`])
//!         ─▶ Begin / Relation / Insert / Update / Delete / Truncate / Commit ─▶ records (c/u/d/t)
//!            handed out as they are decoded (see [`decode`])
//!   committed(position): check the publication still covers every table, then report the
//!         position's LSN (the end of the last transaction wholly acknowledged) as flushed
//! ```
//!
//! The slot's confirmed position moves only in [`Source::committed`] — after Kafka acknowledged
//! every record of the transactions before that LSN and the position was stored — or past
//! stretches with nothing for this flow once everything handed out is acknowledged. A crash in
//! between re-reads them from the slot (and the stored position skips those already in Kafka,
//! down to the change inside a transaction). Each record's source metadata carries the commit's
//! LSN, transaction id and commit time.
//!
//! **What the position holds.** Besides the LSN, the position names every table whose capture is
//! established and the id (OID) the table had then. A table is established once its snapshot
//! is in Kafka — each table's completion is stored as a position of its own, so a crash right
//! after a snapshot does not repeat it. A table with no entry is snapshotted on start; a table
//! whose id changed was dropped and created again, so changes may be missing: it is *resynced*
//! (a truncate record, op `t`, then a fresh snapshot), and keeps its old id in positions until
//! that is done, so a crash in the middle resyncs again.
//!
//! **Snapshot and stream agree.** A snapshot is read after the slot's position (the slot may
//! be older: another process made it and died before its snapshot was stored). Changes made in
//! between are in the snapshot and still ahead in the slot; the snapshot records which
//! transactions it sees and the stream drops the table's changes from exactly those
//! ([`visible`]), so every row arrives in order.
//!
//! **Never past undecoded WAL.** pgoutput is silent about a table its publication does not cover
//! (see [`publication`]): before any slot advance the source checks coverage and ids; a table
//! missing from a publication sluice manages is added back and resynced, one missing from a
//! publication of the user's stops the flow, naming it. Only the flow's tables are decoded;
//! other tables of the publication are passed over.
//!
//! Values are decoded from PostgreSQL's text output in the snapshot and in the stream alike
//! ([`pgoutput::typed`]), in a session with fixed `TimeZone`, `DateStyle` and float digits, so a
//! row reads the same either way (`numeric` stays exact text). An update that leaves a large
//! (TOASTed) value unchanged does not carry it; it is taken from the old row under `REPLICA
//! IDENTITY FULL`, and is `sluice_engine::record::UNAVAILABLE_VALUE` otherwise (sinks that apply changes leave such a
//! column alone). A primary-key change is a delete and a create, as Debezium does. On a quiet
//! publication the slot still advances, every `heartbeat_secs`, as far as the server has decoded.

mod decode;
mod pgoutput;
mod publication;
mod slots;
mod snapshot;
mod stream;
mod visible;

pub use slots::{SlotInfo, drop_slot, list_slots};

/// Decodes one pgoutput message and its values, for the fuzz targets (see `crate::fuzz`).
#[doc(hidden)]
pub fn fuzz_pgoutput(data: &[u8]) -> Result<(), String> {
    pgoutput::decode(data).map(drop)
}

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Map, Value, json};
use sluice_engine::connector::{Poll, Position, Source};
use sluice_engine::error::ConnectorError;
use sluice_engine::record::{ChangeRecord, Op, Row};

use crate::postgres::{PgTarget, PostgresConnection, classify, client_config, connect, quote_ident};
use crate::postgres_query::QueryOptions;
use pgoutput::{Relation, lsn_text, parse_lsn};
use publication::qualified;
use snapshot::{OpenSnapshot, Snapshot};

/// Reads a table's changes from a logical replication slot.
pub struct CdcSource {
    connection: String,
    config: PgTarget,
    /// The flow's tables as `schema.table`.
    tables: Vec<String>,
    slot: String,
    publication: String,
    snapshot: bool,
    follow: bool,
    heartbeat: Duration,
    client: Option<tokio_postgres::Client>,
    /// The replication session's settings, and how long its connection may take.
    replication: pgwire_replication::ReplicationConfig,
    connect_timeout: Duration,
    /// The replication stream, once the snapshots are read (see [`stream`]).
    stream: Option<pgwire_replication::ReplicationClient>,
    /// The transaction being decoded, and its records not handed out yet (see [`decode`]).
    txn: Option<decode::Txn>,
    pending: Vec<ChangeRecord>,
    /// A transaction partly handed out before a restart: its commit LSN and how many of its
    /// change messages are done.
    resume_txn: Option<(u64, u64)>,
    /// An error met after records of the same poll: they go out first, the error next poll.
    failed: Option<ConnectorError>,
    /// For a run on demand: where its end marker is in the WAL, and whether the stream passed it.
    marker: Option<u64>,
    caught_up: bool,
    relations: HashMap<u32, Relation>,
    /// Whether a retyped column stops the flow (its `schema_changes: fail`).
    fail_on_change: bool,
    /// Each snapshotted table's columns as its snapshot read them, until the stream's first
    /// relation message for it — what that message is compared with.
    snapshot_columns: HashMap<String, pgoutput::ColumnTypes>,
    /// Each captured table's primary-key columns, by `schema.table`.
    primary_keys: HashMap<String, Vec<String>>,
    /// Tables whose capture is established, with the id they had: what positions carry.
    established: BTreeMap<String, u32>,
    /// Each table's id as last seen in the catalog.
    current: HashMap<String, u32>,
    /// Tables still to snapshot, in order, and the one being read.
    snapshot_todo: VecDeque<Snapshot>,
    snapshot_open: Option<OpenSnapshot>,
    /// Per table, what its last snapshot already holds, until the stream passes it
    /// (see [`visible`]).
    seen: BTreeMap<String, visible::SnapshotView>,
    /// The end LSN of the last transaction handed out (as a number), to skip ones read again.
    last_lsn: u64,
    /// How far the server has decoded with nothing for this source since the last record
    /// handed out: where the slot may go once that is acknowledged.
    quiet_to: Option<u64>,
    /// The end LSN of the last transaction whose records were handed out, and the last LSN
    /// acknowledged: the slot passes quiet transactions only when the two meet, so it never
    /// passes a record Kafka has not acknowledged, however the runtime paces acknowledgements.
    handed_lsn: u64,
    acked_lsn: u64,
    /// The server's WAL position as last seen, and the furthest the slot was advanced to:
    /// the WAL bytes between them are how far the flow is behind.
    wal_head: u64,
    slot_at: u64,
    last_heartbeat: Instant,
}

impl CdcSource {
    /// A CDC source for the tables in `object` (comma-separated) through connection `name`.
    pub fn new(
        name: &str,
        conn: &PostgresConnection,
        object: &str,
        options: &QueryOptions,
        follow: bool,
        fail_on_change: bool,
    ) -> Result<CdcSource, ConnectorError> {
        let tables: Vec<String> = object
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| {
                let (schema, table) = qualified(t);
                format!("{schema}.{table}")
            })
            .collect();
        if tables.is_empty() {
            return Err(ConnectorError::User(format!(
                "postgres connection `{name}` with `mode: cdc`: set the flow's `object` to the table(s) to capture"
            )));
        }
        let base: String = object
            .split(',')
            .next()
            .unwrap_or_default()
            .trim()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
            .collect();
        let default_name = format!("sluice_{base}");
        let slot = options.slot.clone().unwrap_or_else(|| default_name.clone());
        let publication = options.publication.clone().unwrap_or(default_name);
        Ok(CdcSource {
            connection: name.to_owned(),
            config: client_config(name, conn)?,
            replication: stream::replication_config(conn, &slot, &publication),
            connect_timeout: Duration::from_secs(conn.connect_timeout_secs.get()),
            stream: None,
            txn: None,
            pending: Vec::new(),
            resume_txn: None,
            failed: None,
            marker: None,
            caught_up: false,
            slot,
            publication,
            snapshot: options.snapshot(),
            follow,
            heartbeat: options.heartbeat(),
            tables,
            client: None,
            relations: HashMap::new(),
            fail_on_change,
            snapshot_columns: HashMap::new(),
            primary_keys: HashMap::new(),
            established: BTreeMap::new(),
            current: HashMap::new(),
            snapshot_todo: VecDeque::new(),
            snapshot_open: None,
            seen: BTreeMap::new(),
            last_lsn: 0,
            quiet_to: None,
            handed_lsn: 0,
            acked_lsn: 0,
            wal_head: 0,
            slot_at: 0,
            last_heartbeat: Instant::now(),
        })
    }

    fn doing(&self) -> String {
        format!(
            "capturing changes of {} (postgres connection `{}`, slot {})",
            self.tables.join(", "),
            self.connection,
            self.slot
        )
    }

    async fn client(&mut self) -> Result<&tokio_postgres::Client, ConnectorError> {
        if self.client.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            self.client = Some(self.session().await?);
        }
        self.client.as_ref().ok_or_else(|| ConnectorError::internal(self.doing(), "no connection"))
    }

    /// A new connection, its session set up for reading values as text.
    async fn session(&self) -> Result<tokio_postgres::Client, ConnectorError> {
        let doing = self.doing();
        let client = connect(&self.connection, &self.config).await?;
        // Values are read as text in both the snapshot and the stream: fix what the text
        // depends on, so both print a value the same way whatever the server's defaults.
        client
            .batch_execute(
                "SET TimeZone TO 'UTC'; SET DateStyle TO 'ISO, YMD'; SET IntervalStyle TO 'iso_8601'; \
                 SET extra_float_digits TO 3; SET bytea_output TO 'hex'",
            )
            .await
            .map_err(|e| classify(&doing, &e))?;
        Ok(client)
    }

    /// The position after what has been handed out: the stream's LSN and the established tables.
    fn position(&self) -> Position {
        let mut p = json!({
            "lsn": (self.last_lsn > 0).then(|| lsn_text(self.last_lsn)),
            "snapshot": if self.snapshot_todo.is_empty() { "done" } else { "pending" },
            "oids": self.established,
        });
        if !self.seen.is_empty() {
            p["seen"] = json!(self.seen);
        }
        if let Some(t) = self.txn.as_ref().filter(|t| t.done > 0 && t.skip != u64::MAX) {
            p["txn"] = json!({"lsn": lsn_text(t.commit_lsn), "changes": t.done});
        }
        p
    }

    /// Schedules a snapshot of `table` unless one is already due.
    fn schedule(&mut self, table: &str, truncate_first: bool) {
        if !self.snapshot_todo.iter().any(|s| s.table == table) {
            tracing::info!(table, resync = truncate_first, "snapshotting table");
            self.snapshot_todo.push_back(Snapshot { table: table.to_owned(), truncate_first });
        }
    }

    /// Checks that the publication covers every table under the id it was captured with: adds
    /// a missing table (when sluice manages the publication) and resyncs a table that was out
    /// of it or was created again. An error (a table dropped, a publication of the user's that
    /// misses a table) stops the flow before the slot moves.
    async fn verify(&mut self) -> Result<(), ConnectorError> {
        for s in &self.coverage().await? {
            let stale = self.established.get(&s.name).is_some_and(|oid| *oid != s.oid);
            if stale || (!s.covered && self.established.contains_key(&s.name)) {
                tracing::warn!(table = %s.name, "the table was created again or left the publication; resyncing it");
                self.schedule(&s.name, true);
            }
        }
        Ok(())
    }

    /// Each table's id and coverage now, after adding what a publication sluice manages
    /// misses (an error for one of the user's); the ids are noted as current.
    async fn coverage(&mut self) -> Result<Vec<publication::TableState>, ConnectorError> {
        let doing = self.doing();
        let (publication, tables) = (self.publication.clone(), self.tables.clone());
        let client = self.client().await?;
        let states = publication::coverage(client, &publication, &tables, &doing).await?;
        let missing: Vec<&publication::TableState> = states.iter().filter(|s| !s.covered).collect();
        publication::add_missing(client, &publication, &missing, &doing).await?;
        for s in &states {
            self.current.insert(s.name.clone(), s.oid);
        }
        Ok(states)
    }

    /// A table's primary-key columns.
    async fn key_columns(&mut self, table: &str) -> Result<Vec<String>, ConnectorError> {
        let doing = self.doing();
        let (schema, name) = qualified(table);
        let quoted = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
        let rows = self
            .client()
            .await?
            .query(
                "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = to_regclass($1) AND i.indisprimary ORDER BY a.attnum",
                &[&quoted],
            )
            .await
            .map_err(|e| classify(&doing, &e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Moves the slot to `lsn` once the publication is checked (see [`CdcSource::verify`]).
    /// Through the stream when it is open (the slot is held by it), with SQL otherwise.
    async fn advance_to(&mut self, lsn: u64) -> Result<(), ConnectorError> {
        self.verify().await?;
        if !self.report_flushed(lsn) {
            let (doing, slot) = (self.doing(), self.slot.clone());
            advance(self.client().await?, &slot, &lsn_text(lsn), &doing).await?;
        }
        self.slot_at = self.slot_at.max(lsn);
        Ok(())
    }
}

/// The `source` metadata of a record of `schema.table`.
fn source_meta(schema: &str, table: &str, reason: Option<&str>) -> Row {
    let mut source = Map::new();
    source.insert("connector".into(), json!("postgres_cdc"));
    source.insert("schema".into(), json!(schema));
    source.insert("table".into(), json!(table));
    if let Some(r) = reason {
        source.insert("reason".into(), json!(r));
    }
    source
}

/// A truncate record (op `t`) of `schema.table`.
fn truncate_record(schema: &str, table: &str, reason: Option<&str>, ts_ms: i64) -> ChangeRecord {
    ChangeRecord {
        key: Map::new(),
        before: None,
        after: None,
        after_json: None,
        op: Op::Truncate,
        source: source_meta(schema, table, reason),
        ts_ms,
    }
}

#[async_trait]
impl Source for CdcSource {
    async fn open(&mut self, resume: Option<Position>) -> Result<(), ConnectorError> {
        let doing = self.doing();
        let (slot, publication, tables) = (self.slot.clone(), self.publication.clone(), self.tables.clone());
        let client = self.client().await?;
        let has_pub = client
            .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&publication])
            .await
            .map_err(|e| classify(&doing, &e))?
            .is_some();
        if !has_pub {
            publication::create(client, &publication, &tables, &doing).await?;
        }
        let has_slot = client
            .query_opt("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await
            .map_err(|e| classify(&doing, &e))?
            .is_some();
        if !has_slot {
            client.query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot]).await.map_err(|e| {
                classify(&format!("{doing}: creating the replication slot (is wal_level = logical?)"), &e)
            })?;
        }
        for table in &tables {
            let pk = self.key_columns(table).await?;
            self.primary_keys.insert(table.clone(), pk);
        }
        let resumed_lsn = resume.as_ref().and_then(|p| p.get("lsn")).and_then(Value::as_str).and_then(parse_lsn);
        self.last_lsn = resumed_lsn.unwrap_or(0);
        (self.handed_lsn, self.acked_lsn, self.slot_at) = (self.last_lsn, self.last_lsn, self.last_lsn);
        // A transaction partly handed out: how much of it to pass over when it comes again.
        let txn = resume.as_ref().and_then(|p| p.get("txn"));
        self.resume_txn =
            txn.and_then(|t| Some((t.get("lsn")?.as_str().and_then(parse_lsn)?, t.get("changes")?.as_u64()?)));
        self.lose_stream();
        (self.txn, self.failed, self.marker, self.caught_up) = (None, None, None, false);
        self.pending.clear();
        // The stored position may be ahead of the slot (a crash between storing it and
        // advancing the slot): catch the slot up so those changes are not read again.
        if let Some(lsn) = resumed_lsn {
            advance(self.client().await?, &slot, &lsn_text(lsn), &doing).await?;
        }
        // The tables established before; a position from before sluice stored ids says only
        // whether the whole snapshot was done.
        let stored: Option<BTreeMap<String, u32>> =
            resume.as_ref().and_then(|p| p.get("oids")).and_then(|o| serde_json::from_value(o.clone()).ok());
        let legacy_done =
            stored.is_none() && resume.as_ref().and_then(|p| p.get("snapshot")).and_then(Value::as_str) == Some("done");
        // A new slot has seen none of the tables' history: whatever a position says, start over.
        let stored = if has_slot { stored.unwrap_or_default() } else { BTreeMap::new() };
        // What established tables' snapshots hold that the stream has not passed yet.
        let seen: BTreeMap<String, visible::SnapshotView> = resume
            .as_ref()
            .and_then(|p| p.get("seen"))
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .unwrap_or_default();
        self.seen = seen.into_iter().filter(|(t, v)| stored.contains_key(t) && v.lsn > self.last_lsn).collect();
        for s in &self.coverage().await? {
            match stored.get(&s.name) {
                Some(oid) if *oid == s.oid && s.covered => {
                    self.established.insert(s.name.clone(), *oid);
                }
                // Captured before under another id (dropped and created again), or out of the
                // publication for a while: changes may be missing. Resync, keeping the old id
                // until that is done.
                Some(oid) => {
                    self.established.insert(s.name.clone(), *oid);
                    self.schedule(&s.name, true);
                }
                None if has_slot && legacy_done => {
                    self.established.insert(s.name.clone(), s.oid);
                }
                None if self.snapshot => self.schedule(&s.name, false),
                None => {
                    self.established.insert(s.name.clone(), s.oid);
                }
            }
        }
        Ok(())
    }

    async fn poll(&mut self, max: usize) -> Result<Poll, ConnectorError> {
        if let Some(items) = self.snapshot_page(max).await? {
            return Ok(if items.is_empty() { Poll::Idle } else { Poll::Items(items) });
        }
        self.stream_poll(max).await
    }

    async fn committed(&mut self, position: &Position) -> Result<(), ConnectorError> {
        let Some(lsn) = position.get("lsn").and_then(Value::as_str).and_then(parse_lsn) else { return Ok(()) };
        self.advance_to(lsn).await?;
        self.acked_lsn = self.acked_lsn.max(lsn);
        Ok(())
    }

    fn incremental(&self) -> bool {
        true
    }

    fn behind_bytes(&self) -> Option<u64> {
        (self.wal_head > 0).then(|| self.wal_head.saturating_sub(self.slot_at.max(self.acked_lsn)))
    }
}

/// Moves the slot's confirmed position forward to `lsn` (never back), while no stream holds
/// it; one the previous owner's session still holds (a source just dropped, a process just
/// killed) is waited for, a bounded time.
async fn advance(client: &tokio_postgres::Client, slot: &str, lsn: &str, doing: &str) -> Result<(), ConnectorError> {
    let started = Instant::now();
    loop {
        let result = client
            .query(
                "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn) FROM pg_replication_slots \
                 WHERE slot_name = $1 AND confirmed_flush_lsn < $2::text::pg_lsn",
                &[&slot, &lsn],
            )
            .await;
        match result {
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE)
                    && started.elapsed() < Duration::from_secs(15) =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other.map(drop).map_err(|e| classify(&format!("{doing}: advancing the slot"), &e)),
        }
    }
}
