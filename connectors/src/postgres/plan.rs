//! How a batch of output rows becomes statements: what to write and what to delete, the last
//! change of each key winning.

use std::collections::HashMap;

use arrow_array::{Array, RecordBatch, StringArray};
use sluice_engine::error::ConnectorError;

use sluice_engine::record::UNAVAILABLE_VALUE;

use super::quote_ident;
use super::sink::{PostgresSinkOptions, TruncatePolicy, WriteMode};
use crate::encode;
use sluice_engine::names::column;

/// An output row's index in the batch and a JSON object for it.
pub(super) type RowJson = (usize, Vec<u8>);

/// Rows written by one statement: those whose unavailable columns are the same, which the
/// statement leaves as they are.
#[derive(Debug, Default)]
pub(super) struct Writes {
    /// Columns (unquoted) the rows carry no value for: a CDC update's unchanged TOASTed values,
    /// which arrive as [`UNAVAILABLE_VALUE`].
    pub(super) keep: Vec<String>,
    /// The rows, their unavailable columns taken out.
    pub(super) rows: Vec<RowJson>,
}

/// A batch sorted into what to write and what to delete, one entry per key where there is a key.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// Empty the table first: the batch holds a `TRUNCATE` (op `t`), and what came before the
    /// last one in the batch is superseded by it.
    pub(super) truncate: bool,
    /// The keys to delete.
    pub(super) deletes: Vec<RowJson>,
    /// The rows to write, by the columns they leave alone.
    pub(super) writes: Vec<Writes>,
    /// Rows this mode cannot apply, with the reason (a `TRUNCATE` in `insert` mode).
    pub(super) refused: Vec<(usize, String)>,
}

/// What one change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Write,
    Delete,
    Truncate,
}

impl Plan {
    pub(super) fn of(
        batches: &[RecordBatch],
        data_cols: &[usize],
        options: &PostgresSinkOptions,
    ) -> Result<Plan, ConnectorError> {
        let encode_err =
            |e: arrow_schema::ArrowError| ConnectorError::internal("encoding rows for postgres", e.to_string());
        let keyed = options.mode != WriteMode::Insert;
        let mut plan = Plan::default();
        // (output row index, change, row JSON, key JSON), in order.
        let mut rows: Vec<(usize, Change, Vec<u8>, String)> = Vec::new();
        let mut base = 0;
        for b in batches {
            let data = b.project(data_cols).map_err(encode_err)?;
            let mut buf = Vec::new();
            encode::json_lines_for_postgres(std::slice::from_ref(&data), &mut buf)?;
            let lines = buf.split(|c| *c == b'\n').filter(|l| !l.is_empty());
            let ops = text_column(b, column::OP);
            let op = |i: usize| ops.filter(|o| o.is_valid(i)).map(|o| o.value(i));
            if !keyed {
                for (i, line) in lines.enumerate() {
                    if op(i) == Some("t") {
                        plan.refused.push((
                            base + i,
                            "a TRUNCATE (op t) is not applied in `mode: insert`, which only appends; use upsert, \
                             update or delete with `truncate: apply` to apply changes, or filter `_op = 't'` out in the SQL"
                                .into(),
                        ));
                    } else {
                        rows.push((base + i, Change::Write, line.to_vec(), String::new()));
                    }
                }
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
            encode::json_lines_for_postgres(std::slice::from_ref(&key_cols), &mut kbuf)?;
            let key_lines = kbuf.split(|c| *c == b'\n').filter(|l| !l.is_empty());
            let kafka_keys = text_column(b, column::KEY);
            for (i, (line, key_line)) in lines.zip(key_lines).enumerate() {
                if op(i) == Some("t") {
                    if options.truncate == TruncatePolicy::Apply {
                        rows.push((base + i, Change::Truncate, Vec::new(), String::new()));
                    } else {
                        plan.refused.push((base + i, TRUNCATE_REFUSED.into()));
                    }
                    continue;
                }
                let delete = options.mode == WriteMode::Delete || op(i) == Some("d");
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
                rows.push((base + i, if delete { Change::Delete } else { Change::Write }, line.to_vec(), key));
            }
            base += b.num_rows();
        }
        // A truncate supersedes every change before it: the table is emptied first, then what
        // came after the last truncate is applied.
        let after_truncate = rows.iter().rposition(|r| r.1 == Change::Truncate).map_or(0, |t| t + 1);
        plan.truncate = after_truncate > 0;
        let rows = rows.split_off(after_truncate);
        // The last change of each key wins (insert mode keeps every row: no key).
        let mut last: HashMap<&str, usize> = HashMap::with_capacity(rows.len());
        if keyed {
            for (n, (_, _, _, key)) in rows.iter().enumerate() {
                last.insert(key.as_str(), n);
            }
        }
        let winners: Vec<bool> =
            rows.iter().enumerate().map(|(n, r)| !keyed || last.get(r.3.as_str()) == Some(&n)).collect();
        // A winning change that leaves out a value (unavailable: an unchanged TOASTed value)
        // takes it from the key's change before it in the batch, which the win supersedes.
        let mut rows = rows;
        if keyed {
            let mut previous: HashMap<String, usize> = HashMap::new();
            for n in 0..rows.len() {
                let (_, change, _, key) = &rows[n];
                match change {
                    Change::Write => {
                        if let Some(&p) = previous.get(key)
                            && rows[n].2.windows(UNAVAILABLE_VALUE.len()).any(|w| w == UNAVAILABLE_VALUE.as_bytes())
                        {
                            let filled = fill_unavailable(&rows[n].2, &rows[p].2);
                            rows[n].2 = filled;
                        }
                        previous.insert(rows[n].3.clone(), n);
                    }
                    Change::Delete | Change::Truncate => {
                        previous.remove(key);
                    }
                }
            }
        }
        let mut groups: std::collections::BTreeMap<Vec<String>, Vec<RowJson>> = std::collections::BTreeMap::new();
        for ((i, change, line, key), win) in rows.into_iter().zip(winners) {
            match (win, change) {
                (false, _) | (_, Change::Truncate) => {}
                (true, Change::Delete) => plan.deletes.push((i, key.into_bytes())),
                (true, Change::Write) => {
                    let (keep, line) = without_unavailable(line);
                    groups.entry(keep).or_default().push((i, line));
                }
            }
        }
        plan.writes = groups.into_iter().map(|(keep, rows)| Writes { keep, rows }).collect();
        Ok(plan)
    }

    /// The statements to run, each with its rows (after a `TRUNCATE`, when [`Plan::truncate`]).
    pub(super) fn statements<'a>(
        &'a self,
        table: &str,
        columns: &[String],
        options: &PostgresSinkOptions,
    ) -> Vec<(String, &'a [RowJson])> {
        let rows = format!("json_populate_recordset(null::{table}, $1::text::json)");
        let key: Vec<String> = options.key.iter().map(|k| quote_ident(k)).collect();
        let matches = key.iter().map(|k| format!("t.{k} = r.{k}")).collect::<Vec<_>>().join(" AND ");
        let mut out = Vec::new();
        if !self.deletes.is_empty() {
            out.push((format!("DELETE FROM {table} AS t USING {rows} AS r WHERE {matches}"), self.deletes.as_slice()));
        }
        for w in self.writes.iter().filter(|w| !w.rows.is_empty()) {
            let kept: Vec<String> = w.keep.iter().map(|c| quote_ident(c)).collect();
            let written: Vec<&String> = columns.iter().filter(|c| !kept.contains(c)).collect();
            let cols = written.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ");
            let sql = match options.mode {
                WriteMode::Insert => format!("INSERT INTO {table} ({cols}) SELECT {cols} FROM {rows}"),
                WriteMode::Upsert => {
                    let set: Vec<String> =
                        written.iter().filter(|c| !key.contains(c)).map(|c| format!("{c} = EXCLUDED.{c}")).collect();
                    let action =
                        if set.is_empty() { "NOTHING".to_owned() } else { format!("UPDATE SET {}", set.join(", ")) };
                    format!(
                        "INSERT INTO {table} ({cols}) SELECT {cols} FROM {rows} ON CONFLICT ({}) DO {action}",
                        key.join(", ")
                    )
                }
                WriteMode::Update => {
                    let set: Vec<String> =
                        written.iter().filter(|c| !key.contains(c)).map(|c| format!("{c} = r.{c}")).collect();
                    if set.is_empty() {
                        continue;
                    }
                    format!("UPDATE {table} AS t SET {} FROM {rows} AS r WHERE {matches}", set.join(", "))
                }
                WriteMode::Delete => unreachable_delete(),
            };
            out.push((sql, w.rows.as_slice()));
        }
        out
    }
}

/// Why a `TRUNCATE` is refused by default (see [`TruncatePolicy`]).
const TRUNCATE_REFUSED: &str = "a TRUNCATE of the source table (op t) is not applied: changes arrive in order per key, \
    and a truncate changes every key, so applying it could delete rows written after it or keep rows written before it. \
    Empty the table by hand, or set `truncate: apply` on the sink with a one-partition changes topic (kafka.partitions: 1)";

/// `later` with each unavailable value taken from `earlier` where `earlier` has one.
fn fill_unavailable(later: &[u8], earlier: &[u8]) -> Vec<u8> {
    type Obj = serde_json::Map<String, serde_json::Value>;
    let (Ok(mut row), Ok(before)) = (serde_json::from_slice::<Obj>(later), serde_json::from_slice::<Obj>(earlier))
    else {
        return later.to_vec();
    };
    for (k, v) in row.iter_mut() {
        if v.as_str() == Some(UNAVAILABLE_VALUE)
            && let Some(b) = before.get(k).filter(|b| b.as_str() != Some(UNAVAILABLE_VALUE))
        {
            *v = b.clone();
        }
    }
    serde_json::to_vec(&row).unwrap_or_else(|_| later.to_vec())
}

/// A row's JSON without its unavailable columns, and their names (sorted). Only rows that hold
/// the marker are parsed; the rest pass as they are.
fn without_unavailable(line: Vec<u8>) -> (Vec<String>, Vec<u8>) {
    let marker = format!("\"{UNAVAILABLE_VALUE}\"");
    if !line.windows(marker.len()).any(|w| w == marker.as_bytes()) {
        return (Vec::new(), line);
    }
    let Ok(mut row) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&line) else {
        return (Vec::new(), line);
    };
    let mut keep: Vec<String> =
        row.iter().filter(|(_, v)| v.as_str() == Some(UNAVAILABLE_VALUE)).map(|(k, _)| k.clone()).collect();
    keep.sort();
    for k in &keep {
        row.remove(k);
    }
    (keep, serde_json::to_vec(&row).unwrap_or(line))
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

pub(super) fn json_array(rows: &[&[u8]]) -> String {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use arrow_array::Int64Array;
    use arrow_schema::{DataType, Field, Schema};
    use std::sync::Arc;

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
        let opts =
            PostgresSinkOptions { mode: WriteMode::Upsert, key: vec!["id".into()], ..PostgresSinkOptions::default() };
        let plan = Plan::of(&[b], &[0, 1], &opts).unwrap();
        let writes: Vec<(usize, String)> =
            plan.writes[0].rows.iter().map(|(i, l)| (*i, String::from_utf8(l.clone()).unwrap())).collect();
        assert_eq!(writes, vec![(2, r#"{"id":1,"v":2}"#.to_owned()), (4, r#"{"id":3,"v":4}"#.to_owned())]);
        let deletes: Vec<(usize, String)> =
            plan.deletes.iter().map(|(i, l)| (*i, String::from_utf8(l.clone()).unwrap())).collect();
        assert_eq!(deletes, vec![(3, r#"{"id":2}"#.to_owned())]);
    }

    #[test]
    fn insert_mode_appends_everything_and_statements_quote_names() {
        let b = batch(&[1, 1], &["c", "d"], &[None, None]);
        let plan = Plan::of(&[b], &[0, 1], &PostgresSinkOptions::default()).unwrap();
        assert_eq!(plan.writes[0].rows.len(), 2);
        assert!(plan.deletes.is_empty());
        let sql = plan.statements("\"s\".\"t\"", &["\"id\"".into(), "\"v\"".into()], &PostgresSinkOptions::default());
        assert_eq!(
            sql[0].0,
            "INSERT INTO \"s\".\"t\" (\"id\", \"v\") SELECT \"id\", \"v\" FROM json_populate_recordset(null::\"s\".\"t\", $1::text::json)"
        );
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }

    #[test]
    fn a_truncate_empties_the_table_and_supersedes_what_came_before_it() {
        let b = batch(
            &[1, 2, -1, 3, 1],
            &["c", "c", "t", "c", "u"],
            &[Some(r#"{"id":1}"#), Some(r#"{"id":2}"#), None, Some(r#"{"id":3}"#), Some(r#"{"id":1}"#)],
        );
        let opts = PostgresSinkOptions {
            mode: WriteMode::Upsert,
            key: vec!["id".into()],
            truncate: TruncatePolicy::Apply,
            ..PostgresSinkOptions::default()
        };
        let plan = Plan::of(std::slice::from_ref(&b), &[0, 1], &opts).unwrap();
        assert!(plan.truncate);
        let written: Vec<usize> = plan.writes.iter().flat_map(|w| w.rows.iter().map(|r| r.0)).collect();
        assert_eq!(written, vec![3, 4], "only the changes after the truncate are applied");
        // Insert mode only appends: it refuses the truncate by name and writes the rest.
        let plan = Plan::of(&[b], &[0, 1], &PostgresSinkOptions::default()).unwrap();
        assert!(!plan.truncate);
        assert_eq!(plan.refused.iter().map(|r| r.0).collect::<Vec<_>>(), vec![2]);
        assert!(plan.refused[0].1.contains("TRUNCATE"), "{:?}", plan.refused);
        // By default it is refused in every mode, saying why.
        let opts =
            PostgresSinkOptions { mode: WriteMode::Upsert, key: vec!["id".into()], ..PostgresSinkOptions::default() };
        let plan = Plan::of(&[batch(&[1, -1], &["c", "t"], &[None, None])], &[0, 1], &opts).unwrap();
        assert!(!plan.truncate);
        assert_eq!(plan.refused.len(), 1);
        assert!(plan.refused[0].1.contains("arrive in order per key"), "{:?}", plan.refused);
    }

    #[test]
    fn a_later_change_missing_a_value_takes_it_from_the_one_it_supersedes() {
        let filled = fill_unavailable(
            format!(r#"{{"id":1,"big":"{UNAVAILABLE_VALUE}","v":2}}"#).as_bytes(),
            br#"{"id":1,"big":"xxxx","v":1}"#,
        );
        assert_eq!(filled, br#"{"id":1,"big":"xxxx","v":2}"#);
    }

    #[test]
    fn unavailable_values_leave_their_columns_alone() {
        let (keep, line) = without_unavailable(format!(r#"{{"id":1,"big":"{UNAVAILABLE_VALUE}","v":2}}"#).into_bytes());
        assert_eq!(keep, vec!["big".to_owned()]);
        assert_eq!(line, br#"{"id":1,"v":2}"#);
        let plan = Plan { writes: vec![Writes { keep, rows: vec![(0, line)] }], ..Plan::default() };
        let opts =
            PostgresSinkOptions { mode: WriteMode::Upsert, key: vec!["id".into()], ..PostgresSinkOptions::default() };
        let sql = plan.statements("t", &["\"id\"".into(), "\"big\"".into(), "\"v\"".into()], &opts);
        assert_eq!(
            sql[0].0,
            "INSERT INTO t (\"id\", \"v\") SELECT \"id\", \"v\" FROM json_populate_recordset(null::t, $1::text::json) \
             ON CONFLICT (\"id\") DO UPDATE SET \"v\" = EXCLUDED.\"v\""
        );
    }
}
