//! The stream's transactions into records, message by message: records are handed out as they
//! are decoded, so a transaction of any size passes through without being held whole.
//!
//! ```text
//!   Begin(commit LSN, xid, time) ─▶ Txn { changes: 0, skip }
//!   Relation                     ─▶ the table's columns (a change of type said here)
//!   Insert / Update / Delete / Truncate
//!                                ─▶ changes += 1; records unless one of the first `skip`,
//!                                   another table's, or already in the table's snapshot
//!   end of a poll inside it      ─▶ records out with position {lsn: last commit, txn: {lsn, changes}}
//!   Commit(end LSN)              ─▶ records out with position {lsn: end LSN}
//! ```
//!
//! **Positions inside a transaction.** A position names the last transaction fully handed out
//! (its commit's end LSN) and, when a transaction is being handed out, its commit LSN and how
//! many of its change messages are done. Only insert, update, delete and truncate messages are
//! counted — of every table, whether or not they gave a record — because those are the same
//! each time the server decodes the transaction, whatever the session (relation messages are
//! sent again per session). A restart reads the transaction again from the slot and passes over
//! that many; the slot itself never moves past a transaction not wholly acknowledged.

use serde_json::json;
use sluice_engine::connector::SourceItem;
use sluice_engine::error::ConnectorError;
use sluice_engine::record::ChangeRecord;

use super::pgoutput::{self, Message, Relation, lsn_text};
use super::{CdcSource, truncate_record};

/// The transaction being decoded.
#[derive(Debug)]
pub(super) struct Txn {
    pub(super) xid: u32,
    pub(super) commit_ts_ms: i64,
    /// The commit record's LSN, which pgoutput's Begin names before the changes: what positions
    /// inside the transaction know it by.
    pub(super) commit_lsn: u64,
    /// Change messages read so far (see the module map).
    pub(super) changes: u64,
    /// Change messages whose records were handed out already (before a restart, or in an
    /// earlier poll): what a position inside this transaction says is done.
    pub(super) done: u64,
    /// Change messages handed out before a restart, passed over without records; `u64::MAX`
    /// for a transaction handed out whole before.
    pub(super) skip: u64,
    /// Whether records of it were handed out in an earlier poll.
    pub(super) handed: bool,
}

impl CdcSource {
    /// A transaction begins: records of what was handed out before a restart are passed over.
    pub(super) fn begin(&mut self, xid: u32, commit_lsn: u64, commit_time_micros: i64) {
        // Commit records follow each other in the WAL: one that starts before the end of the
        // last transaction handed out is that transaction or an earlier one.
        let skip = if commit_lsn < self.last_lsn {
            u64::MAX
        } else {
            match self.resume_txn {
                Some((lsn, n)) if lsn == commit_lsn => n,
                _ => 0,
            }
        };
        // PostgreSQL's epoch is 2000-01-01; its timestamps are microseconds.
        let commit_ts_ms = commit_time_micros / 1000 + 946_684_800_000;
        let done = if skip == u64::MAX { 0 } else { skip };
        self.txn = Some(Txn { xid, commit_ts_ms, commit_lsn, changes: 0, done, skip, handed: false });
    }

    /// Decodes one pgoutput message inside the stream; its records join `self.pending`.
    pub(super) fn message(&mut self, data: &[u8]) -> Result<(), ConnectorError> {
        match pgoutput::decode(data).map_err(|e| self.undecodable(&e))? {
            Message::Relation(rel) => self.relation(rel)?,
            Message::Change { kind, oid, old, new } => {
                let Some(t) = self.counted() else { return Ok(()) };
                let (xid, ts, lsn) = (t.xid, t.commit_ts_ms, t.commit_lsn);
                let rel = self.relations.get(&oid).ok_or_else(|| self.undecodable("a change before its relation"))?;
                let name = format!("{}.{}", rel.schema, rel.table);
                if !self.wanted(&name, xid) {
                    return Ok(());
                }
                let pk = self.primary_keys.get(&name).map(Vec::as_slice).unwrap_or_default();
                let records = pgoutput::change_records(kind, rel, pk, old, new).map_err(|e| self.undecodable(&e))?;
                for record in records {
                    self.pending.push(stamped(record, xid, ts, lsn));
                }
            }
            Message::Truncate { oids } => {
                let Some(t) = self.counted() else { return Ok(()) };
                let (xid, ts, lsn) = (t.xid, t.commit_ts_ms, t.commit_lsn);
                for oid in oids {
                    let Some(rel) = self.relations.get(&oid) else { continue };
                    if !self.wanted(&format!("{}.{}", rel.schema, rel.table), xid) {
                        continue;
                    }
                    let record = truncate_record(&rel.schema, &rel.table, None, 0);
                    self.pending.push(stamped(record, xid, ts, lsn));
                }
            }
            Message::Other => {}
        }
        Ok(())
    }

    /// Whether a change of `schema.table` in transaction `xid` gives records: not another table
    /// of the publication, nor one the table's snapshot already holds.
    fn wanted(&self, table: &str, xid: u32) -> bool {
        self.tables.iter().any(|t| t == table) && !self.seen.get(table).is_some_and(|v| v.sees(xid))
    }

    /// What the server sent and sluice cannot decode will read the same again: not retried. (Made
    /// only on failure: naming what was being done allocates.)
    fn undecodable(&self, what: &str) -> ConnectorError {
        ConnectorError::internal(self.doing(), format!("decoding pgoutput: {what}"))
    }

    /// Counts a change message of the open transaction; `None` when it gives no records (one
    /// handed out before a restart). A change outside a transaction is not in pgoutput's
    /// protocol version 1; it is passed over like one handed out.
    fn counted(&mut self) -> Option<&Txn> {
        let t = self.txn.as_mut()?;
        t.changes += 1;
        (t.changes > t.skip).then_some(&*t)
    }

    /// A relation message: the table's columns, compared with what was known before.
    fn relation(&mut self, rel: Relation) -> Result<(), ConnectorError> {
        // A table's columns changed while it is captured (the server sends the relation again
        // before the next change): said here, where the change is known; the flow's
        // `schema_changes` policy meets it in the rows.
        let name = format!("{}.{}", rel.schema, rel.table);
        let change = match self.relations.get(&rel.oid) {
            Some(old) => pgoutput::relation_change(old, &rel),
            // The first since the table's snapshot: compared with what it read.
            None => self.snapshot_columns.remove(&name).and_then(|read| {
                let mut columns: Vec<(String, u32, bool)> = read.into_iter().map(|(n, t)| (n, t, false)).collect();
                columns.sort();
                pgoutput::relation_change(&Relation { columns, ..rel.clone() }, &rel)
            }),
        };
        if let Some(change) = change
            && self.tables.contains(&name)
        {
            if change.retyped && self.fail_on_change {
                // Nothing after the change is handed out: what this poll decoded before it
                // goes out first (see `CdcSource::failed`), then the flow stops.
                return Err(ConnectorError::User(format!(
                    "table {name} changed while captured: {} (schema_changes: fail); nothing after \
                     the change was published. Change the flow's schema to match, or set \
                     `schema_changes: ignore` (values that no longer fit go to the DLQ)",
                    change.words
                )));
            }
            tracing::warn!(connection = %self.connection, "table {name} changed while captured: {}", change.words);
        }
        self.relations.insert(rel.oid, rel);
        Ok(())
    }

    /// The open transaction commits at `end_lsn`: its remaining records go out with the
    /// position after it.
    pub(super) fn commit(&mut self, end_lsn: u64, items: &mut Vec<SourceItem>) {
        let Some(t) = self.txn.take() else { return };
        if t.skip == u64::MAX {
            // Handed out whole before a restart.
            return;
        }
        if self.resume_txn.is_some_and(|(lsn, _)| lsn == t.commit_lsn) {
            self.resume_txn = None;
        }
        self.last_lsn = end_lsn;
        // Whatever commits from here on, no snapshot taken before saw it.
        self.seen.retain(|_, v| v.lsn > end_lsn);
        if !t.handed && t.done == 0 && self.pending.is_empty() {
            // Nothing of ours: the slot may pass it once everything before is acknowledged.
            self.quiet_to = Some(self.quiet_to.unwrap_or(0).max(end_lsn));
            return;
        }
        self.quiet_to = None;
        self.handed_lsn = end_lsn;
        let position = self.position();
        if self.pending.is_empty() {
            // Its records went out in earlier polls: the position after it still has to.
            items.push(SourceItem::Checkpoint { position });
        } else {
            items
                .extend(self.pending.drain(..).map(|record| SourceItem::Record { record, position: position.clone() }));
        }
    }

    /// At the end of a poll inside a transaction: the records decoded so far go out, with a
    /// position naming how far into the transaction they reach.
    pub(super) fn flush_partial(&mut self, items: &mut Vec<SourceItem>) {
        let Some(t) = self.txn.as_mut() else { return };
        if self.pending.is_empty() {
            return;
        }
        t.done = t.changes;
        t.handed = true;
        let position = self.position();
        items.extend(self.pending.drain(..).map(|record| SourceItem::Record { record, position: position.clone() }));
    }

    /// The stream ended inside a transaction: what was handed out of it is passed over when
    /// the server sends it again; what was decoded but not handed out is read again.
    pub(super) fn abandon_txn(&mut self) {
        self.pending.clear();
        if let Some(t) = self.txn.take()
            && t.skip != u64::MAX
            && t.done > 0
        {
            self.resume_txn = Some((t.commit_lsn, t.done));
        }
    }
}

/// A record with its transaction's metadata.
fn stamped(mut record: ChangeRecord, xid: u32, commit_ts_ms: i64, commit_lsn: u64) -> ChangeRecord {
    record.source.insert("lsn".into(), json!(lsn_text(commit_lsn)));
    record.source.insert("txid".into(), json!(xid));
    record.source.insert("commit_ts_ms".into(), json!(commit_ts_ms));
    record.ts_ms = commit_ts_ms;
    record
}
