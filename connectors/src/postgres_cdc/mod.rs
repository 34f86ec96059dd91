//! `postgres` with `mode: cdc`: change data capture from the write-ahead log, through logical
//! decoding with the built-in `pgoutput` plugin.
//!
//! ```text
//!   open: publication + slot (created if absent) ─▶ which tables need a snapshot
//!   poll: snapshot pages (op r, REPEATABLE READ), then
//!         pg_logical_slot_peek_binary_changes(slot, upto = current WAL position)
//!         ─▶ Begin / Relation / Insert / Update / Delete / Truncate / Commit ─▶ records (c/u/d/t)
//!   committed(position): check the publication still covers every table, then
//!         pg_replication_slot_advance(slot, the commit's end LSN)
//! ```
//!
//! Changes are *peeked*, never consumed, and the slot advances only in
//! [`Source::committed`] — after Kafka acknowledged every record of the transactions before
//! that LSN and the position was stored. A crash in between re-reads them from the slot (and the
//! stored position skips those already in Kafka). Each record's source metadata carries the
//! commit's LSN, transaction id and commit time; records of one transaction share a position.
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
//! database the slot still advances to the current WAL position every `heartbeat_secs`.

mod pgoutput;
mod publication;
mod slots;
mod snapshot;
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
use sluice_engine::connector::{Poll, Position, Source, SourceItem};
use sluice_engine::error::ConnectorError;
use sluice_engine::record::{ChangeRecord, Op, Row};

use crate::postgres::{PgTarget, PostgresConnection, classify, client_config, connect, quote_ident};
use crate::postgres_query::QueryOptions;
use pgoutput::{Message, Relation, lsn_text, parse_lsn};
use publication::qualified;
use snapshot::{OpenSnapshot, Snapshot};

/// The transaction being decoded.
#[derive(Debug, Default)]
struct Txn {
    xid: u32,
    commit_ts_ms: i64,
    records: Vec<ChangeRecord>,
}

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
    /// The end LSN of the last transaction handed out (as a number), to skip re-peeked ones.
    last_lsn: u64,
    /// The end of a run of transactions with nothing for this source, to advance the slot past.
    quiet_to: Option<u64>,
    /// The end LSN of the last transaction whose records were handed out, and the last LSN
    /// acknowledged: the slot passes quiet transactions only when the two meet, so it never
    /// passes a record Kafka has not acknowledged, however the runtime paces acknowledgements.
    handed_lsn: u64,
    acked_lsn: u64,
    /// The server's WAL position at the last poll, and the furthest the slot was advanced to:
    /// the WAL bytes between them are how far the flow is behind.
    wal_head: u64,
    slot_at: u64,
    /// Messages at the head of the last peek that were handed out before (the slot keeps them
    /// until they are acknowledged): the next peek asks for that many more, so reading goes on
    /// ahead of acknowledgements instead of peeking the same transactions again.
    repeeked: usize,
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
        Ok(CdcSource {
            connection: name.to_owned(),
            config: client_config(name, conn)?,
            slot: options.slot.clone().unwrap_or_else(|| default_name.clone()),
            publication: options.publication.clone().unwrap_or(default_name),
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
            repeeked: 0,
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
            self.client = Some(client);
            self.snapshot_open = None;
        }
        self.client.as_ref().ok_or_else(|| ConnectorError::internal(self.doing(), "no connection"))
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

    /// Decodes pgoutput messages into records, transaction by transaction; changes of tables
    /// that are not the flow's are passed over.
    fn decode(&mut self, messages: &[(String, Vec<u8>)]) -> Result<Vec<SourceItem>, ConnectorError> {
        let doing = self.doing();
        // What the server sent and sluice cannot decode will read the same again: not retried.
        let bad = |what: String| ConnectorError::internal(doing.clone(), format!("decoding pgoutput: {what}"));
        let mut items = Vec::new();
        let mut txn: Option<Txn> = None;
        // Messages of the transaction being decoded, counted for `repeeked`.
        let mut in_txn = 0;
        self.repeeked = 0;
        for (_, data) in messages {
            in_txn += 1;
            match pgoutput::decode(data).map_err(bad)? {
                Message::Begin { xid, commit_ts_ms } => {
                    in_txn = 1;
                    txn = Some(Txn { xid, commit_ts_ms, records: Vec::new() });
                }
                Message::Relation(rel) => {
                    // A table's columns changed while it is captured (the server sends the
                    // relation again before the next change): said here, where the change is
                    // known; the flow's `schema_changes` policy meets it in the rows.
                    let name = format!("{}.{}", rel.schema, rel.table);
                    let change = match self.relations.get(&rel.oid) {
                        Some(old) => pgoutput::relation_change(old, &rel),
                        // The first since the table's snapshot: compared with what it read.
                        None => self.snapshot_columns.remove(&name).and_then(|read| {
                            let mut columns: Vec<(String, u32, bool)> =
                                read.into_iter().map(|(n, t)| (n, t, false)).collect();
                            columns.sort();
                            pgoutput::relation_change(&Relation { columns, ..rel.clone() }, &rel)
                        }),
                    };
                    if let Some(change) = change
                        && self.tables.contains(&name)
                    {
                        // Nothing after the change is handed out: what this poll collected
                        // before it is peeked again by the next run, as the slot is not
                        // advanced past it.
                        if change.retyped && self.fail_on_change {
                            return Err(ConnectorError::User(format!(
                                "table {name} changed while captured: {} (schema_changes: fail); nothing after \
                                 the change was published. Change the flow's schema to match, or set \
                                 `schema_changes: ignore` (values that no longer fit go to the DLQ)",
                                change.words
                            )));
                        }
                        tracing::warn!(
                            connection = %self.connection,
                            "table {name} changed while captured: {}",
                            change.words
                        );
                    }
                    self.relations.insert(rel.oid, rel);
                }
                Message::Change { kind, oid, old, new } => {
                    let rel = self.relations.get(&oid).ok_or_else(|| bad("a change before its relation".into()))?;
                    let name = format!("{}.{}", rel.schema, rel.table);
                    if !self.tables.contains(&name) {
                        continue;
                    }
                    let t = txn.as_ref().ok_or_else(|| bad("a change outside a transaction".into()))?;
                    if self.seen.get(&name).is_some_and(|v| v.sees(t.xid)) {
                        // Already in the table's snapshot.
                        continue;
                    }
                    let pk = self.primary_keys.get(&name).map(Vec::as_slice).unwrap_or_default();
                    let records = pgoutput::change_records(kind, rel, pk, old, new).map_err(bad)?;
                    let t = txn.as_mut().ok_or_else(|| bad("a change outside a transaction".into()))?;
                    t.records.extend(records);
                }
                Message::Truncate { oids } => {
                    let t = txn.as_mut().ok_or_else(|| bad("a truncate outside a transaction".into()))?;
                    for oid in oids {
                        let Some(rel) = self.relations.get(&oid) else { continue };
                        let name = format!("{}.{}", rel.schema, rel.table);
                        if !self.tables.contains(&name) || self.seen.get(&name).is_some_and(|v| v.sees(t.xid)) {
                            continue;
                        }
                        t.records.push(ChangeRecord {
                            key: Map::new(),
                            before: None,
                            after: None,
                            after_json: None,
                            op: Op::Truncate,
                            source: source_meta(&rel.schema, &rel.table, None),
                            ts_ms: 0,
                        });
                    }
                }
                Message::Commit { commit_lsn, end_lsn } => {
                    let Some(t) = txn.take() else { continue };
                    // Already in Kafka before a restart: skip.
                    if end_lsn <= self.last_lsn {
                        self.repeeked += in_txn;
                        continue;
                    }
                    self.last_lsn = end_lsn;
                    // Whatever commits from here on, no snapshot taken before saw it.
                    self.seen.retain(|_, v| v.lsn > end_lsn);
                    if t.records.is_empty() {
                        // Nothing of ours: the slot may pass it once everything before is
                        // acknowledged.
                        self.quiet_to = Some(end_lsn);
                        continue;
                    }
                    self.quiet_to = None;
                    self.handed_lsn = end_lsn;
                    let position = self.position();
                    for mut record in t.records {
                        record.source.insert("lsn".into(), json!(lsn_text(commit_lsn)));
                        record.source.insert("txid".into(), json!(t.xid));
                        record.source.insert("commit_ts_ms".into(), json!(t.commit_ts_ms));
                        record.ts_ms = t.commit_ts_ms;
                        items.push(SourceItem::Record { record, position: position.clone() });
                    }
                }
                Message::Other => {}
            }
        }
        Ok(items)
    }

    /// Moves the slot to `lsn` once the publication is checked (see [`CdcSource::verify`]).
    async fn advance_to(&mut self, lsn: &str) -> Result<(), ConnectorError> {
        self.verify().await?;
        let (doing, slot) = (self.doing(), self.slot.clone());
        advance(self.client().await?, &slot, lsn, &doing).await?;
        self.slot_at = self.slot_at.max(parse_lsn(lsn).unwrap_or(0));
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
        // The stored position may be ahead of the slot (a crash between storing it and
        // advancing the slot): catch the slot up so those changes are not peeked again.
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
        let doing = self.doing();
        let (slot, publication) = (self.slot.clone(), self.publication.clone());
        let window = i32::try_from(max + self.repeeked).unwrap_or(i32::MAX);
        let client = self.client().await?;
        let upto: String =
            client.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.map_err(|e| classify(&doing, &e))?.get(0);
        let rows = client
            .query(
                "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes($1, $2::text::pg_lsn, $3, \
                 'proto_version', '1', 'publication_names', $4)",
                &[&slot, &upto, &window, &publication],
            )
            .await
            .map_err(|e| classify(&doing, &e))?;
        self.wal_head = self.wal_head.max(parse_lsn(&upto).unwrap_or(0));
        let messages: Vec<(String, Vec<u8>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let items = self.decode(&messages)?;
        if !items.is_empty() {
            return Ok(Poll::Items(items));
        }
        // Only transactions with nothing for us: once every record handed out is acknowledged,
        // the slot may pass them.
        if self.acked_lsn >= self.handed_lsn
            && let Some(lsn) = self.quiet_to.take()
        {
            self.advance_to(&lsn_text(lsn)).await?;
        }
        // The peek stopped at `upto`, not at its size: nothing new is waiting.
        let caught_up = messages.len() < usize::try_from(window).unwrap_or(usize::MAX);
        if messages.is_empty() && self.last_heartbeat.elapsed() >= self.heartbeat {
            // Nothing at all up to `upto` (so nothing unacknowledged either): let the slot go
            // there so it does not hold back WAL.
            self.last_heartbeat = Instant::now();
            self.advance_to(&upto).await?;
        }
        if caught_up {
            if !self.follow && self.snapshot_todo.is_empty() {
                return Ok(Poll::Exhausted);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(Poll::Idle)
    }

    async fn committed(&mut self, position: &Position) -> Result<(), ConnectorError> {
        let Some(lsn) = position.get("lsn").and_then(Value::as_str).map(str::to_owned) else { return Ok(()) };
        self.advance_to(&lsn).await?;
        self.acked_lsn = self.acked_lsn.max(parse_lsn(&lsn).unwrap_or(0));
        Ok(())
    }

    fn incremental(&self) -> bool {
        true
    }

    fn behind_bytes(&self) -> Option<u64> {
        (self.wal_head > 0).then(|| self.wal_head.saturating_sub(self.slot_at.max(self.acked_lsn)))
    }
}

/// Moves the slot's confirmed position forward to `lsn` (never back).
async fn advance(client: &tokio_postgres::Client, slot: &str, lsn: &str, doing: &str) -> Result<(), ConnectorError> {
    client
        .query(
            "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn) FROM pg_replication_slots \
             WHERE slot_name = $1 AND confirmed_flush_lsn < $2::text::pg_lsn",
            &[&slot, &lsn],
        )
        .await
        .map(drop)
        .map_err(|e| classify(&format!("{doing}: advancing the slot"), &e))
}
