//! Reading a table's snapshot page by page (op `r`), in a `REPEATABLE READ` transaction whose
//! visible transactions are recorded for the stream (see [`super::visible`]).
//!
//! The table is read by one `SELECT` on a connection of the snapshot's own, its rows taken from
//! the stream as pages are asked for. The server keeps sending while sluice turns a page into
//! records and publishes it — up to what the socket buffers hold, then TCP holds it back, so
//! memory stays bounded. (A cursor's `FETCH` per page made the server and sluice take turns:
//! each waited while the other worked.) The connection is apart from the source's other one,
//! which keeps checking the publication and moving the slot between pages: a query there would
//! otherwise wait behind the whole `SELECT`.

use serde_json::{Map, Value, json};
use sluice_engine::connector::SourceItem;
use sluice_engine::error::ConnectorError;
use sluice_engine::record::{ChangeRecord, Row, now_ms};
use tokio_postgres::{SimpleQueryMessage, SimpleQueryRow};

use super::pgoutput::{ColumnTypes, parse_lsn, typed};
use super::publication::qualified;
use super::{CdcSource, source_meta, truncate_record, visible};
use crate::postgres::{classify, quote_ident};

/// A table to snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Snapshot {
    /// `schema.table`.
    pub(super) table: String,
    /// Send a truncate record first: the table was captured before, but changes may have been
    /// missed (it was recreated, or out of the publication), so what sinks hold is stale.
    pub(super) truncate_first: bool,
}

/// The snapshot being read: its table, the column types of its rows, and the rows coming.
pub(super) struct OpenSnapshot {
    pub(super) table: String,
    pub(super) types: ColumnTypes,
    /// The snapshot's connection, in its `REPEATABLE READ` transaction. Dropping it ends the
    /// query and the transaction.
    _client: tokio_postgres::Client,
    /// The `SELECT`'s rows as the server sends them.
    rows: std::pin::Pin<Box<tokio_postgres::SimpleQueryStream>>,
    /// Whether the stream ended: polled again, it would answer that its channel is closed.
    ended: bool,
}

impl CdcSource {
    /// Reads the next page of the snapshot; `None` once every table is done.
    pub(super) async fn snapshot_page(&mut self, max: usize) -> Result<Option<Vec<SourceItem>>, ConnectorError> {
        let doing = self.doing();
        let Some(next) = self.snapshot_todo.front().cloned() else { return Ok(None) };
        let (schema, name) = qualified(&next.table);
        if self.snapshot_open.as_ref().is_none_or(|o| o.table != next.table) {
            if next.truncate_first {
                // Sinks drop what they hold of the table, then the snapshot fills it again.
                if let Some(front) = self.snapshot_todo.front_mut() {
                    front.truncate_first = false;
                }
                let record = truncate_record(&schema, &name, Some("resync"), now_ms());
                return Ok(Some(vec![SourceItem::Record { record, position: self.position() }]));
            }
            let quoted = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
            let client = self.client().await?;
            let types: ColumnTypes = client
                .query(
                    "SELECT attname::text, atttypid::int8 FROM pg_attribute \
                     WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
                    &[&quoted],
                )
                .await
                .map_err(|e| classify(&doing, &e))?
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u32))
                .collect();
            let reader = self.session().await?;
            reader
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(|e| classify(&doing, &e))?;
            // The transaction's first statement takes its snapshot: record which transactions
            // it sees, so the stream skips their changes to this table (see `visible`).
            let view = reader
                .query_one("SELECT pg_current_snapshot()::text, pg_current_wal_lsn()::text", &[])
                .await
                .map_err(|e| classify(&doing, &e))?;
            let (snap, lsn): (String, String) = (view.get(0), view.get(1));
            let view = parse_lsn(&lsn).and_then(|lsn| visible::SnapshotView::parse(&snap, lsn)).ok_or_else(|| {
                ConnectorError::internal(doing.clone(), format!("the server's snapshot {snap} at {lsn} does not parse"))
            })?;
            // The simple protocol returns every value as its text output: the same text pgoutput
            // sends for a change, decoded by the same function.
            let rows =
                reader.simple_query_raw(&format!("SELECT * FROM {quoted}")).await.map_err(|e| classify(&doing, &e))?;
            self.seen.insert(next.table.clone(), view);
            self.snapshot_open = Some(OpenSnapshot {
                table: next.table.clone(),
                types,
                _client: reader,
                rows: Box::pin(rows),
                ended: false,
            });
        }
        let key_cols = self.primary_keys.get(&next.table).cloned().unwrap_or_default();
        let rows = match self.snapshot_open.as_mut() {
            Some(open) => next_rows(open, max).await,
            None => Ok(Vec::new()),
        };
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                // The table is read again from its start on the next poll (its rows so far are
                // sent again: at least once).
                self.snapshot_open = None;
                return Err(classify(&doing, &e));
            }
        };
        if rows.is_empty() {
            // Dropping the connection ends its read-only transaction.
            if let Some(open) = self.snapshot_open.take() {
                self.snapshot_columns.insert(open.table, open.types);
            }
            self.snapshot_todo.pop_front();
            let oid = self.current.get(&next.table).copied().unwrap_or_default();
            self.established.insert(next.table.clone(), oid);
            // The table's snapshot is whole in Kafka once everything before is: a position of
            // its own, so a restart does not take it again.
            return Ok(Some(vec![SourceItem::Checkpoint { position: self.position() }]));
        }
        let types = self.snapshot_open.as_ref().map(|o| &o.types);
        let position = self.position();
        // Each column's type, looked up once a page (every row shares the description); text
        // (25) when the catalog did not say.
        let oids: Vec<u32> = rows
            .first()
            .map(|r| r.columns().iter().map(|c| types.and_then(|t| t.get(c.name())).copied().unwrap_or(25)).collect())
            .unwrap_or_default();
        let mut items = Vec::with_capacity(rows.len());
        for r in rows {
            let mut after = Map::with_capacity(r.columns().len());
            for (i, column) in r.columns().iter().enumerate() {
                let value = match r.get(i) {
                    None => Value::Null,
                    Some(text) => typed(oids.get(i).copied().unwrap_or(25), text),
                };
                after.insert(column.name().to_owned(), value);
            }
            let key: Row = key_cols.iter().map(|k| (k.clone(), after.get(k).cloned().unwrap_or(Value::Null))).collect();
            let mut source = source_meta(&schema, &name, None);
            source.insert("snapshot".into(), json!(true));
            items.push(SourceItem::Record {
                record: ChangeRecord::read(key, after, source),
                position: position.clone(),
            });
        }
        Ok(Some(items))
    }
}

/// Up to `max` rows of the snapshot's `SELECT`; none once it is complete.
async fn next_rows(open: &mut OpenSnapshot, max: usize) -> Result<Vec<SimpleQueryRow>, tokio_postgres::Error> {
    use futures::StreamExt as _;
    let mut rows = Vec::with_capacity(max.min(8192));
    while rows.len() < max && !open.ended {
        match open.rows.next().await {
            Some(Ok(SimpleQueryMessage::Row(r))) => rows.push(r),
            // The row description and the command's completion.
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e),
            None => open.ended = true,
        }
    }
    Ok(rows)
}
