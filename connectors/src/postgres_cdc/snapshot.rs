//! Reading a table's snapshot page by page (op `r`), in a `REPEATABLE READ` transaction whose
//! visible transactions are recorded for the stream (see [`super::visible`]).

use serde_json::{Map, Value, json};
use sluice_engine::connector::SourceItem;
use sluice_engine::error::ConnectorError;
use sluice_engine::record::{ChangeRecord, Row, now_ms};

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

/// The snapshot being read: its table and the column types of its rows.
pub(super) struct OpenSnapshot {
    pub(super) table: String,
    pub(super) types: ColumnTypes,
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
            client
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(|e| classify(&doing, &e))?;
            // The transaction's first statement takes its snapshot: record which transactions
            // it sees, so the stream skips their changes to this table (see `visible`).
            let view = client
                .query_one("SELECT pg_current_snapshot()::text, pg_current_wal_lsn()::text", &[])
                .await
                .map_err(|e| classify(&doing, &e))?;
            let (snap, lsn): (String, String) = (view.get(0), view.get(1));
            let view = parse_lsn(&lsn).and_then(|lsn| visible::SnapshotView::parse(&snap, lsn)).ok_or_else(|| {
                ConnectorError::internal(doing.clone(), format!("the server's snapshot {snap} at {lsn} does not parse"))
            })?;
            client
                .batch_execute(&format!("DECLARE sluice_snapshot NO SCROLL CURSOR FOR SELECT * FROM {quoted}"))
                .await
                .map_err(|e| classify(&doing, &e))?;
            self.seen.insert(next.table.clone(), view);
            self.snapshot_open = Some(OpenSnapshot { table: next.table.clone(), types });
        }
        let key_cols = self.primary_keys.get(&next.table).cloned().unwrap_or_default();
        let client = self.client().await?;
        // The simple protocol returns every value as its text output: the same text pgoutput
        // sends for a change, decoded by the same function.
        let messages = client
            .simple_query(&format!("FETCH {max} FROM sluice_snapshot"))
            .await
            .map_err(|e| classify(&doing, &e))?;
        let rows: Vec<tokio_postgres::SimpleQueryRow> = messages
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .collect();
        if rows.is_empty() {
            client.batch_execute("COMMIT").await.map_err(|e| classify(&doing, &e))?;
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
        let mut items = Vec::with_capacity(rows.len());
        for r in rows {
            let mut after = Map::with_capacity(r.columns().len());
            for (i, column) in r.columns().iter().enumerate() {
                let value = match r.get(i) {
                    None => Value::Null,
                    Some(text) => typed(types.and_then(|t| t.get(column.name())).copied().unwrap_or(25), text),
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
