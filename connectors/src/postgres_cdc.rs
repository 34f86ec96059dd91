//! `postgres` with `mode: cdc`: change data capture from the write-ahead log, through logical
//! decoding with the built-in `pgoutput` plugin.
//!
//! ```text
//!   open: publication + slot (created if absent) ─▶ snapshot (op r, REPEATABLE READ)
//!   poll: pg_logical_slot_peek_binary_changes(slot, upto = current WAL position)
//!         ─▶ Begin / Relation / Insert / Update / Delete / Commit ─▶ change records (c/u/d)
//!   committed(position): pg_replication_slot_advance(slot, the commit's end LSN)
//! ```
//!
//! Changes are *peeked*, never consumed, and the slot advances only in
//! [`Source::committed`] — after Kafka acknowledged every record of the transactions before
//! that LSN and the position was stored. A crash in between re-reads them from the slot (and the
//! stored position skips those already in Kafka). Each record's source metadata carries the
//! commit's LSN, transaction id and commit time; records of one transaction share a position.
//!
//! On a quiet database the slot still advances: when nothing of the publication's tables
//! happened up to the current WAL position, the slot is moved there (a heartbeat), so it does
//! not hold back WAL that other tables' traffic writes.
//!
//! The snapshot is taken right after the slot is created, so no change is lost between them; a
//! change made in that instant may arrive both in the snapshot (op `r`) and as a change, which
//! at-least-once allows. A primary-key change becomes a delete of the old key and a create of
//! the new one, as Debezium does.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Map, Value, json};
use sluice_engine::connector::{Poll, Position, Source, SourceItem};
use sluice_engine::error::ConnectorError;
use sluice_engine::record::{ChangeRecord, Op, Row, now_ms};

use crate::postgres::{PgTarget, PostgresConnection, classify, client_config, connect, quote_ident};
use crate::postgres_query::QueryOptions;

/// A table as pgoutput describes it.
#[derive(Debug, Clone)]
struct Relation {
    schema: String,
    table: String,
    /// (name, type OID, part of the key).
    columns: Vec<(String, u32, bool)>,
}

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
    tables: Vec<String>,
    slot: String,
    publication: String,
    snapshot: bool,
    follow: bool,
    heartbeat: Duration,
    client: Option<tokio_postgres::Client>,
    relations: HashMap<u32, Relation>,
    /// Each captured table's primary-key columns, by `schema.table`.
    primary_keys: HashMap<String, Vec<String>>,
    /// Tables still to snapshot, and the open snapshot's table (index into `tables`).
    snapshot_todo: Vec<usize>,
    snapshot_open: Option<usize>,
    /// The end LSN of the last transaction handed out (as a number), to skip re-peeked ones.
    last_lsn: u64,
    /// The end of a run of transactions with nothing for this source, to advance the slot past.
    quiet_to: Option<u64>,
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
    ) -> Result<CdcSource, ConnectorError> {
        let tables: Vec<String> =
            object.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect();
        if tables.is_empty() {
            return Err(ConnectorError::User(format!(
                "postgres connection `{name}` with `mode: cdc`: set the flow's `object` to the table(s) to capture"
            )));
        }
        let base: String =
            tables[0].chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
        let default_name = format!("sluice_{base}");
        Ok(CdcSource {
            connection: name.to_owned(),
            config: client_config(name, conn)?,
            slot: options.slot.clone().unwrap_or_else(|| default_name.clone()),
            publication: options.publication.clone().unwrap_or(default_name),
            snapshot: options.snapshot,
            follow,
            heartbeat: Duration::from_secs(options.heartbeat_secs.max(1)),
            tables,
            client: None,
            relations: HashMap::new(),
            primary_keys: HashMap::new(),
            snapshot_todo: Vec::new(),
            snapshot_open: None,
            last_lsn: 0,
            quiet_to: None,
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
            self.client = Some(connect(&self.connection, &self.config).await?);
            self.snapshot_open = None;
        }
        self.client
            .as_ref()
            .ok_or_else(|| ConnectorError::Other { context: self.doing(), message: "no connection".into() })
    }

    /// Reads the next page of the snapshot; `None` once every table is done.
    async fn snapshot_page(&mut self, max: usize) -> Result<Option<Vec<SourceItem>>, ConnectorError> {
        let doing = self.doing();
        let Some(&t) = self.snapshot_todo.first() else { return Ok(None) };
        let table = self.tables[t].clone();
        let quoted = table.split('.').map(quote_ident).collect::<Vec<_>>().join(".");
        if self.snapshot_open != Some(t) {
            self.client()
                .await?
                .batch_execute(&format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
                     DECLARE sluice_snapshot NO SCROLL CURSOR FOR SELECT row_to_json(q)::text FROM {quoted} AS q"
                ))
                .await
                .map_err(|e| classify(&doing, &e))?;
            self.snapshot_open = Some(t);
        }
        let key_cols = self.key_columns(&table).await?;
        let client = self.client().await?;
        let rows =
            client.query(&format!("FETCH {max} FROM sluice_snapshot"), &[]).await.map_err(|e| classify(&doing, &e))?;
        if rows.is_empty() {
            client.batch_execute("COMMIT").await.map_err(|e| classify(&doing, &e))?;
            self.snapshot_open = None;
            self.snapshot_todo.remove(0);
            return Ok(Some(Vec::new()));
        }
        let (schema, name) = split_table(&table);
        // Until the snapshot is done, a restart takes it again.
        let position = json!({ "lsn": Value::Null, "snapshot": "pending" });
        let mut items = Vec::with_capacity(rows.len());
        for r in rows {
            let text: String = r.get(0);
            let after: Row = serde_json::from_str(&text).unwrap_or_default();
            let key: Row = key_cols.iter().map(|k| (k.clone(), after.get(k).cloned().unwrap_or(Value::Null))).collect();
            let mut source = Map::new();
            source.insert("connector".into(), json!("postgres_cdc"));
            source.insert("schema".into(), json!(schema));
            source.insert("table".into(), json!(name));
            source.insert("snapshot".into(), json!(true));
            let record = ChangeRecord { key, before: None, after: Some(after), op: Op::Read, source, ts_ms: now_ms() };
            items.push(SourceItem::Record { record, position: position.clone() });
        }
        Ok(Some(items))
    }

    /// A table's primary-key columns.
    async fn key_columns(&mut self, table: &str) -> Result<Vec<String>, ConnectorError> {
        let doing = self.doing();
        let rows = self
            .client()
            .await?
            .query(
                "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = to_regclass($1) AND i.indisprimary ORDER BY a.attnum",
                &[&table],
            )
            .await
            .map_err(|e| classify(&doing, &e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Decodes pgoutput messages into records, transaction by transaction.
    fn decode(&mut self, messages: &[(String, Vec<u8>)]) -> Result<Vec<SourceItem>, ConnectorError> {
        let doing = self.doing();
        let bad = |what: &str| ConnectorError::Other {
            context: doing.clone(),
            message: format!("decoding pgoutput: {what}"),
        };
        let mut items = Vec::new();
        let mut txn: Option<Txn> = None;
        for (_, data) in messages {
            let mut m = Reader { buf: data, at: 0 };
            match m.u8().ok_or_else(|| bad("empty message"))? {
                b'B' => {
                    let _final_lsn = m.u64();
                    let ts = m.i64().unwrap_or(0);
                    let xid = m.u32().unwrap_or(0);
                    // PostgreSQL's epoch is 2000-01-01; its timestamps are microseconds.
                    txn = Some(Txn { xid, commit_ts_ms: ts / 1000 + 946_684_800_000, records: Vec::new() });
                }
                b'R' => {
                    let oid = m.u32().ok_or_else(|| bad("relation"))?;
                    let schema = m.cstr().ok_or_else(|| bad("relation schema"))?;
                    let table = m.cstr().ok_or_else(|| bad("relation name"))?;
                    let _identity = m.u8();
                    let n = m.i16().ok_or_else(|| bad("relation columns"))?;
                    let mut columns = Vec::new();
                    for _ in 0..n {
                        let flags = m.u8().ok_or_else(|| bad("column flags"))?;
                        let name = m.cstr().ok_or_else(|| bad("column name"))?;
                        let type_oid = m.u32().ok_or_else(|| bad("column type"))?;
                        let _typmod = m.i32();
                        // The primary key, not the replica identity (which is every column
                        // under REPLICA IDENTITY FULL), keys the records.
                        let key = match self.primary_keys.get(&format!("{schema}.{table}")) {
                            Some(pk) if !pk.is_empty() => pk.contains(&name),
                            _ => flags & 1 == 1,
                        };
                        columns.push((name, type_oid, key));
                    }
                    self.relations.insert(oid, Relation { schema, table, columns });
                }
                kind @ (b'I' | b'U' | b'D') => {
                    let oid = m.u32().ok_or_else(|| bad("change relation"))?;
                    let rel = self.relations.get(&oid).cloned().ok_or_else(|| bad("a change before its relation"))?;
                    let mut old = None;
                    let mut new = None;
                    while let Some(tag) = m.u8() {
                        let tuple = m.tuple(&rel).ok_or_else(|| bad("tuple data"))?;
                        match tag {
                            b'K' | b'O' => old = Some(tuple),
                            b'N' => new = Some(tuple),
                            _ => return Err(bad("unknown tuple tag")),
                        }
                    }
                    let t = txn.as_mut().ok_or_else(|| bad("a change outside a transaction"))?;
                    t.records.extend(change_records(kind, &rel, old, new));
                }
                b'C' => {
                    let _flags = m.u8();
                    let commit_lsn = m.u64().unwrap_or(0);
                    let end_lsn = m.u64().ok_or_else(|| bad("commit"))?;
                    let Some(t) = txn.take() else { continue };
                    // Already in Kafka before a restart: skip.
                    if end_lsn <= self.last_lsn {
                        continue;
                    }
                    self.last_lsn = end_lsn;
                    if t.records.is_empty() {
                        // Nothing of ours (older servers send empty transactions): the slot may
                        // pass it once everything before is acknowledged.
                        self.quiet_to = Some(end_lsn);
                        continue;
                    }
                    self.quiet_to = None;
                    let position = json!({ "lsn": lsn_text(end_lsn), "snapshot": "done" });
                    for mut record in t.records {
                        record.source.insert("lsn".into(), json!(lsn_text(commit_lsn)));
                        record.source.insert("txid".into(), json!(t.xid));
                        record.source.insert("commit_ts_ms".into(), json!(t.commit_ts_ms));
                        record.ts_ms = t.commit_ts_ms;
                        items.push(SourceItem::Record { record, position: position.clone() });
                    }
                }
                // Origin, type, truncate and logical messages carry no rows.
                _ => {}
            }
        }
        Ok(items)
    }
}

#[async_trait]
impl Source for CdcSource {
    async fn open(&mut self, resume: Option<Position>) -> Result<(), ConnectorError> {
        let doing = self.doing();
        let (slot, publication) = (self.slot.clone(), self.publication.clone());
        let tables: Vec<String> =
            self.tables.iter().map(|t| t.split('.').map(quote_ident).collect::<Vec<_>>().join(".")).collect();
        let client = self.client().await?;
        let has_pub = client
            .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&publication])
            .await
            .map_err(|e| classify(&doing, &e))?
            .is_some();
        if !has_pub {
            client
                .batch_execute(&format!(
                    "CREATE PUBLICATION {} FOR TABLE {}",
                    quote_ident(&publication),
                    tables.join(", ")
                ))
                .await
                .map_err(|e| classify(&format!("{doing}: creating the publication"), &e))?;
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
        for table in self.tables.clone() {
            let (schema, name) = split_table(&table);
            let pk = self.key_columns(&table).await?;
            self.primary_keys.insert(format!("{schema}.{name}"), pk);
        }
        let resumed_lsn = resume.as_ref().and_then(|p| p.get("lsn")).and_then(Value::as_str).and_then(parse_lsn);
        let snapshot_done = resume.as_ref().and_then(|p| p.get("snapshot")).and_then(Value::as_str) == Some("done");
        self.last_lsn = resumed_lsn.unwrap_or(0);
        // The stored position may be ahead of the slot (a crash between storing it and
        // advancing the slot): catch the slot up so those changes are not peeked again.
        if let Some(lsn) = resumed_lsn {
            let client = self.client().await?;
            advance(client, &slot, &lsn_text(lsn), &doing).await?;
        }
        // A new slot, or a snapshot a crash interrupted: take it (again).
        if self.snapshot && (!has_slot || !snapshot_done) {
            self.snapshot_todo = (0..self.tables.len()).collect();
        }
        Ok(())
    }

    async fn poll(&mut self, max: usize) -> Result<Poll, ConnectorError> {
        if let Some(items) = self.snapshot_page(max).await? {
            return Ok(if items.is_empty() { Poll::Idle } else { Poll::Items(items) });
        }
        let doing = self.doing();
        let (slot, publication) = (self.slot.clone(), self.publication.clone());
        let client = self.client().await?;
        let upto: String =
            client.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.map_err(|e| classify(&doing, &e))?.get(0);
        let rows = client
            .query(
                "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes($1, $2::text::pg_lsn, $3, \
                 'proto_version', '1', 'publication_names', $4)",
                &[&slot, &upto, &(max as i32), &publication],
            )
            .await
            .map_err(|e| classify(&doing, &e))?;
        let messages: Vec<(String, Vec<u8>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let items = self.decode(&messages)?;
        if !items.is_empty() {
            return Ok(Poll::Items(items));
        }
        // Only transactions with nothing for us: every earlier record is acknowledged (the
        // runtime confirms a poll's records before the next poll), so the slot may pass them.
        if let Some(lsn) = self.quiet_to.take() {
            advance(self.client().await?, &slot, &lsn_text(lsn), &doing).await?;
        }
        if messages.is_empty() {
            // Nothing of ours up to `upto`: let the slot go there so it does not hold back WAL.
            if self.last_heartbeat.elapsed() >= self.heartbeat {
                self.last_heartbeat = Instant::now();
                advance(self.client().await?, &slot, &upto, &doing).await?;
            }
            if !self.follow {
                return Ok(Poll::Exhausted);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(Poll::Idle)
    }

    async fn committed(&mut self, position: &Position) -> Result<(), ConnectorError> {
        let Some(lsn) = position.get("lsn").and_then(Value::as_str).map(str::to_owned) else { return Ok(()) };
        let (doing, slot) = (self.doing(), self.slot.clone());
        advance(self.client().await?, &slot, &lsn, &doing).await
    }

    fn incremental(&self) -> bool {
        true
    }
}

/// One logical replication slot, for `sluice cdc slots`.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    /// The slot's name.
    pub name: String,
    /// Its output plugin.
    pub plugin: String,
    /// Whether a session is using it now.
    pub active: bool,
    /// How far it has confirmed, as an LSN.
    pub confirmed: String,
    /// WAL bytes the server keeps for it (current position minus confirmed).
    pub lag_bytes: i64,
}

/// The logical replication slots of connection `name`'s database.
pub async fn list_slots(name: &str, conn: &PostgresConnection) -> Result<Vec<SlotInfo>, ConnectorError> {
    let client = connect(name, &client_config(name, conn)?).await?;
    let doing = format!("listing replication slots (postgres connection `{name}`)");
    let rows = client
        .query(
            "SELECT slot_name::text, plugin::text, active, coalesce(confirmed_flush_lsn::text, ''),              coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint              FROM pg_replication_slots WHERE slot_type = 'logical' AND database = current_database() ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| classify(&doing, &e))?;
    Ok(rows
        .iter()
        .map(|r| SlotInfo {
            name: r.get(0),
            plugin: r.get(1),
            active: r.get(2),
            confirmed: r.get(3),
            lag_bytes: r.get(4),
        })
        .collect())
}

/// Drops a replication slot (the server then frees the WAL it kept).
pub async fn drop_slot(name: &str, conn: &PostgresConnection, slot: &str) -> Result<(), ConnectorError> {
    let client = connect(name, &client_config(name, conn)?).await?;
    let doing = format!("dropping replication slot {slot} (postgres connection `{name}`)");
    client.query("SELECT pg_drop_replication_slot($1)", &[&slot]).await.map(drop).map_err(|e| classify(&doing, &e))
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

/// The records of one change: a primary-key change is a delete and a create.
fn change_records(kind: u8, rel: &Relation, old: Option<Row>, new: Option<Row>) -> Vec<ChangeRecord> {
    let key_of = |row: &Row| -> Row {
        rel.columns
            .iter()
            .filter(|c| c.2)
            .map(|c| (c.0.clone(), row.get(&c.0).cloned().unwrap_or(Value::Null)))
            .collect()
    };
    let mut source = Map::new();
    source.insert("connector".into(), json!("postgres_cdc"));
    source.insert("schema".into(), json!(rel.schema));
    source.insert("table".into(), json!(rel.table));
    let rec = |op, key, before, after| ChangeRecord { key, before, after, op, source: source.clone(), ts_ms: 0 };
    match (kind, old, new) {
        (b'I', _, Some(new)) => vec![rec(Op::Create, key_of(&new), None, Some(new))],
        (b'U', Some(old), Some(new)) if key_of(&old) != key_of(&new) => {
            vec![rec(Op::Delete, key_of(&old), Some(old), None), rec(Op::Create, key_of(&new), None, Some(new))]
        }
        (b'U', old, Some(new)) => vec![rec(Op::Update, key_of(&new), old, Some(new))],
        (b'D', Some(old), _) => vec![rec(Op::Delete, key_of(&old), Some(old), None)],
        _ => Vec::new(),
    }
}

/// A text value from pgoutput as JSON, by the column's type.
fn typed(type_oid: u32, text: &str) -> Value {
    match type_oid {
        16 => Value::Bool(text == "t"),
        20 | 21 | 23 | 26 => text.parse::<i64>().map_or_else(|_| json!(text), |n| json!(n)),
        700 | 701 => text
            .parse::<f64>()
            .ok()
            .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number))
            .unwrap_or_else(|| json!(text)),
        114 | 3802 => serde_json::from_str(text).unwrap_or_else(|_| json!(text)),
        // Timestamps in RFC 3339 shape ("2026-01-01 10:00:00+00" → "2026-01-01T10:00:00+00:00").
        1114 | 1184 => json!(rfc3339(text)),
        // Arrays of integers, floats, booleans and text.
        1000 | 1005 | 1007 | 1016 | 1021 | 1022 | 1009 | 1015 => {
            let elem = match type_oid {
                1000 => 16,
                1005 => 21,
                1007 => 23,
                1016 => 20,
                1021 => 700,
                1022 => 701,
                _ => 25,
            };
            Value::Array(pg_array(text).into_iter().map(|v| v.map_or(Value::Null, |s| typed(elem, &s))).collect())
        }
        // numeric keeps its precision as text; uuid, bytea (\x…), dates and the rest as text.
        _ => json!(text),
    }
}

fn rfc3339(text: &str) -> String {
    let t = text.replacen(' ', "T", 1);
    // "+00" → "+00:00"
    match t.rfind(['+', '-']).filter(|i| *i > 10) {
        Some(i) if t.len() - i == 3 => format!("{t}:00"),
        _ => t,
    }
}

/// The elements of a one-dimensional array literal (`{1,2,NULL,"a b"}`).
fn pg_array(text: &str) -> Vec<Option<String>> {
    let inner = text.trim().trim_start_matches('{').trim_end_matches('}');
    let mut out = Vec::new();
    if inner.is_empty() {
        return out;
    }
    let (mut cur, mut quoted, mut was_quoted, mut chars) = (String::new(), false, false, inner.chars());
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                was_quoted = true;
            }
            '\\' if quoted => cur.extend(chars.next()),
            ',' if !quoted => {
                out.push(if !was_quoted && cur == "NULL" { None } else { Some(std::mem::take(&mut cur)) });
                cur.clear();
                was_quoted = false;
            }
            c => cur.push(c),
        }
    }
    out.push(if !was_quoted && cur == "NULL" { None } else { Some(cur) });
    out
}

fn split_table(table: &str) -> (String, String) {
    match table.split_once('.') {
        Some((s, t)) => (s.to_owned(), t.to_owned()),
        None => ("public".to_owned(), table.to_owned()),
    }
}

/// `0/16B3748` → a number.
fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Big-endian reads over a pgoutput message.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.buf.get(self.at..self.at + n)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn i16(&mut self) -> Option<i16> {
        self.take(2).and_then(|b| b.try_into().ok()).map(i16::from_be_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes)
    }
    fn i32(&mut self) -> Option<i32> {
        self.take(4).and_then(|b| b.try_into().ok()).map(i32::from_be_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8).and_then(|b| b.try_into().ok()).map(i64::from_be_bytes)
    }
    fn cstr(&mut self) -> Option<String> {
        let end = self.buf.get(self.at..)?.iter().position(|b| *b == 0)?;
        let s = String::from_utf8_lossy(&self.buf[self.at..self.at + end]).into_owned();
        self.at += end + 1;
        Some(s)
    }
    /// TupleData: column count, then per column `n` (null), `u` (unchanged TOAST: left out) or
    /// `t` + length + text.
    fn tuple(&mut self, rel: &Relation) -> Option<Row> {
        let n = self.i16()? as usize;
        let mut row = Map::new();
        for i in 0..n {
            let (name, type_oid, _) = rel.columns.get(i)?;
            match self.u8()? {
                b'n' => {
                    row.insert(name.clone(), Value::Null);
                }
                b'u' => {}
                b't' => {
                    let len = self.i32()? as usize;
                    let text = String::from_utf8_lossy(self.take(len)?).into_owned();
                    row.insert(name.clone(), typed(*type_oid, &text));
                }
                _ => return None,
            }
        }
        Some(row)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lsns_round_trip() {
        assert_eq!(parse_lsn("0/215CC10"), Some(0x215CC10));
        assert_eq!(lsn_text(parse_lsn("1A/FF00").unwrap()), "1A/FF00");
    }

    #[test]
    fn values_are_typed_by_their_column() {
        assert_eq!(typed(23, "42"), json!(42));
        assert_eq!(typed(16, "t"), json!(true));
        assert_eq!(typed(1700, "12.3400"), json!("12.3400"));
        assert_eq!(typed(3802, r#"{"a": [1]}"#), json!({"a": [1]}));
        assert_eq!(typed(1184, "2026-01-01 10:00:00+00"), json!("2026-01-01T10:00:00+00:00"));
        assert_eq!(typed(1007, "{1,NULL,3}"), json!([1, null, 3]));
        assert_eq!(typed(1009, r#"{a,"b c","x\"y",NULL}"#), json!(["a", "b c", "x\"y", null]));
    }

    #[test]
    fn a_key_change_is_a_delete_and_a_create() {
        let rel = Relation {
            schema: "public".into(),
            table: "t".into(),
            columns: vec![("id".into(), 23, true), ("v".into(), 25, false)],
        };
        let row = |id: i64, v: &str| json!({"id": id, "v": v}).as_object().unwrap().clone();
        let recs = change_records(b'U', &rel, Some(row(1, "a")), Some(row(2, "a")));
        assert_eq!(recs.iter().map(|r| r.op).collect::<Vec<_>>(), vec![Op::Delete, Op::Create]);
        assert_eq!(recs[0].key, *json!({"id": 1}).as_object().unwrap());
        let recs = change_records(b'U', &rel, None, Some(row(1, "b")));
        assert_eq!(recs[0].op, Op::Update);
    }
}
