//! Kafka payloads into the `source` table's Arrow batch: arrow-json's decoder straight into the
//! declared columns, with the envelope's `op`, the key and the change time beside them. A batch
//! holding a bad payload is decoded again row by row, which names each bad one.

use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray, StructArray, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use sluice_core::connector::{InputMessage, PayloadFormat, RejectedRow};

use crate::avro_decode::AvroRows;
use crate::{SqlStage, wire};

pub(crate) fn decode_schema(row: &SchemaRef, format: PayloadFormat) -> SchemaRef {
    match format {
        PayloadFormat::Json | PayloadFormat::Avro => row.clone(),
        PayloadFormat::Debezium => Arc::new(Schema::new(vec![
            Field::new("op", DataType::Utf8, true),
            Field::new("ts_ms", DataType::Int64, true),
            Field::new("after", DataType::Struct(row.fields().clone()), true),
            Field::new("before", DataType::Struct(row.fields().clone()), true),
        ])),
    }
}

impl SqlStage {
    /// Decodes payloads into one batch of the decode schema; `Err` if any payload is bad.
    fn decode_all(&self, payloads: &[&[u8]]) -> Result<RecordBatch, String> {
        let kept = self.json.lock().ok().and_then(|mut k| k.take()).filter(|(size, _)| *size >= payloads.len());
        let (size, mut d) = match kept {
            Some(k) => k,
            None => {
                let size = payloads.len().max(1);
                let d = arrow_json::ReaderBuilder::new(self.decode.clone())
                    .with_batch_size(size)
                    .build_decoder()
                    .map_err(|e| e.to_string())?;
                (size, d)
            }
        };
        // On an error the decoder is dropped, not kept: it may hold half a row.
        if self.json_values {
            // `json` columns: each payload becomes a value whose `json` positions are text.
            let mut values = Vec::with_capacity(payloads.len());
            for p in payloads {
                let mut v: serde_json::Value = serde_json::from_slice(p).map_err(|e| format!("not JSON: {e}"))?;
                self.json_positions_to_text(&mut v);
                values.push(v);
            }
            d.serialize(&values).map_err(|e| e.to_string())?;
        }
        for p in payloads.iter().filter(|_| !self.json_values) {
            let mut rest: &[u8] = p;
            while !rest.is_empty() {
                let n = d.decode(rest).map_err(|e| e.to_string())?;
                if n == 0 {
                    // The decoder holds a full batch: the payloads hold more values than
                    // there are messages.
                    return Err(format!("expected one JSON object per message, found more than {}", payloads.len()));
                }
                rest = &rest[n..];
            }
        }
        let batch =
            d.flush().map_err(|e| e.to_string())?.unwrap_or_else(|| RecordBatch::new_empty(self.decode.clone()));
        // Flushed, the decoder is empty again (a payload that was not whole would have left a
        // partial row, which `flush` refuses).
        if let Ok(mut k) = self.json.lock() {
            *k = Some((size, d));
        }
        // A payload that is not one whole JSON value can merge with its neighbour; the row count
        // catches that, and the row-by-row path then finds the culprit.
        if batch.num_rows() != payloads.len() {
            return Err(format!(
                "expected one JSON object per message, decoded {} from {}",
                batch.num_rows(),
                payloads.len()
            ));
        }
        Ok(batch)
    }

    /// Replaces the values of `json` columns in a parsed payload (the row, or an envelope's
    /// images) by their text.
    fn json_positions_to_text(&self, v: &mut serde_json::Value) {
        match self.format {
            PayloadFormat::Debezium => {
                for image in ["after", "before"] {
                    if let Some(row) = v.get_mut(image) {
                        wire::json_to_text(row, &self.row_type);
                    }
                }
            }
            PayloadFormat::Json | PayloadFormat::Avro => wire::json_to_text(v, &self.row_type),
        }
    }

    /// Why one payload does not fit the columns, naming the path, when its shape is the
    /// reason (what arrow-json says does not name it).
    fn shape_mismatch(&self, payload: &[u8]) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
        match self.format {
            PayloadFormat::Debezium => ["after", "before"]
                .iter()
                .find_map(|image| v.get(image).and_then(|row| wire::mismatch(row, &self.row_type, ""))),
            PayloadFormat::Json | PayloadFormat::Avro => wire::mismatch(&v, &self.row_type, ""),
        }
    }

    /// Builds the `source` batch from decoded payloads and the messages' keys and timestamps.
    fn input_batch(
        &self,
        decoded: &RecordBatch,
        msgs: &[&InputMessage<'_>],
        indices: &[u32],
    ) -> Result<RecordBatch, String> {
        let n = msgs.len();
        let (mut columns, op, ts): (Vec<ArrayRef>, ArrayRef, ArrayRef) = match self.format {
            PayloadFormat::Json | PayloadFormat::Avro => {
                let ts: TimestampMillisecondArray = msgs.iter().map(|m| m.timestamp_ms).collect();
                let columns = if self.finish {
                    decoded
                        .columns()
                        .iter()
                        .zip(&self.columns.columns)
                        .map(|(c, (name, t))| wire::finish(c, t, name))
                        .collect::<Result<Vec<_>, _>>()?
                } else {
                    decoded.columns().to_vec()
                };
                (columns, Arc::new(StringArray::from(vec!["c"; n])), Arc::new(ts.with_timezone("UTC")))
            }
            PayloadFormat::Debezium => {
                let (after, before) = if self.finish {
                    (
                        wire::finish(decoded.column(2), &self.row_type, "")?,
                        wire::finish(decoded.column(3), &self.row_type, "")?,
                    )
                } else {
                    (decoded.column(2).clone(), decoded.column(3).clone())
                };
                let after = after.as_any().downcast_ref::<StructArray>().ok_or("envelope `after` is not a struct")?;
                let op = decoded.column(0).clone();
                if op.null_count() > 0 {
                    return Err("envelope has no `op`".into());
                }
                let ts_ms = decoded
                    .column(1)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .ok_or("envelope `ts_ms` is not an integer")?;
                let ts =
                    TimestampMillisecondArray::new(ts_ms.values().clone(), ts_ms.nulls().cloned()).with_timezone("UTC");
                let before =
                    before.as_any().downcast_ref::<StructArray>().ok_or("envelope `before` is not a struct")?;
                // A delete has no `after`: its columns are the `before` image when the
                // envelope has one (so a delete keeps its key columns, and a filter sees the
                // row that was deleted), null otherwise — never the struct's placeholders.
                let cols = if after.null_count() == 0 {
                    after.columns().to_vec()
                } else if before.null_count() == before.len() {
                    after.columns().iter().map(|c| merge_nulls(c, after.nulls())).collect::<Result<Vec<_>, _>>()?
                } else {
                    let has_after = arrow_array::BooleanArray::from(
                        (0..after.len()).map(|i| after.is_valid(i)).collect::<Vec<bool>>(),
                    );
                    after
                        .columns()
                        .iter()
                        .zip(before.columns())
                        .map(|(a, b)| {
                            let b = merge_nulls(b, before.nulls())?;
                            datafusion::arrow::compute::kernels::zip::zip(&has_after, a, &b).map_err(|e| e.to_string())
                        })
                        .collect::<Result<Vec<_>, _>>()?
                };
                (cols, op, Arc::new(ts))
            }
        };
        columns.push(op);
        columns.push(Arc::new(key_column(msgs)));
        columns.push(ts);
        columns.push(Arc::new(arrow_array::UInt32Array::from(indices.to_vec())));
        RecordBatch::try_new(self.input.clone(), columns).map_err(|e| e.to_string())
    }

    /// The `source` batch of rows read from Avro payloads; a row the columns' decoder refuses
    /// (a timestamp's text that is no timestamp, …) is rejected alone.
    pub(crate) fn avro_batch(
        &self,
        mut rows: AvroRows,
        msgs: &[InputMessage<'_>],
        rejected: &mut Vec<RejectedRow>,
    ) -> Result<Option<RecordBatch>, String> {
        if self.json_values {
            rows.values.iter_mut().for_each(|v| wire::json_to_text(v, &self.row_type));
        }
        let one = |values: &[serde_json::Value], at: std::ops::Range<usize>| -> Result<RecordBatch, String> {
            let mut d = arrow_json::ReaderBuilder::new(self.decode.clone())
                .with_batch_size(values.len().max(1))
                .build_decoder()
                .map_err(|e| e.to_string())?;
            d.serialize(values).map_err(|e| e.to_string())?;
            let decoded = d.flush().map_err(|e| e.to_string())?.ok_or("no rows decoded")?;
            let mut columns = decoded
                .columns()
                .iter()
                .zip(&self.columns.columns)
                .map(|(c, (name, t))| if self.finish { wire::finish(c, t, name) } else { Ok(c.clone()) })
                .collect::<Result<Vec<_>, _>>()?;
            let idx = &rows.rows[at.clone()];
            columns.push(Arc::new(StringArray::from_iter_values(&rows.ops[at.clone()])));
            let accepted: Vec<&InputMessage<'_>> = idx.iter().filter_map(|&i| msgs.get(i as usize)).collect();
            columns.push(Arc::new(key_column(&accepted)));
            columns.push(Arc::new(TimestampMillisecondArray::from(rows.ts[at].to_vec()).with_timezone("UTC")));
            columns.push(Arc::new(arrow_array::UInt32Array::from(idx.to_vec())));
            RecordBatch::try_new(self.input.clone(), columns).map_err(|e| e.to_string())
        };
        if rows.values.is_empty() {
            return Ok(None);
        }
        if let Ok(b) = one(&rows.values, 0..rows.values.len()) {
            return Ok(Some(b));
        }
        let mut batches = Vec::new();
        for i in 0..rows.values.len() {
            match one(&rows.values[i..=i], i..i + 1) {
                Ok(b) => batches.push(b),
                Err(e) => {
                    rejected.push(RejectedRow { index: rows.rows[i] as usize, reason: format!("decode: avro: {e}") })
                }
            }
        }
        rejected.sort_by_key(|r| r.index);
        Ok(arrow_select_concat(&self.input, &batches))
    }

    /// Decodes what it can; returns the good rows' batch and the rejected rows.
    pub(crate) fn decode_batch(&self, input: &[InputMessage<'_>]) -> (Option<RecordBatch>, Vec<RejectedRow>) {
        let mut rejected = Vec::new();
        let mut good: Vec<&InputMessage<'_>> = Vec::with_capacity(input.len());
        let mut indices: Vec<u32> = Vec::with_capacity(input.len());
        let mut payloads: Vec<&[u8]> = Vec::with_capacity(input.len());
        for (index, m) in input.iter().enumerate() {
            match m.payload {
                Some(p) if p.len() > self.max_record_bytes => rejected.push(RejectedRow {
                    index,
                    reason: format!(
                        "decode: record of {} bytes is over the {}-byte limit (kafka.max_record_bytes)",
                        p.len(),
                        self.max_record_bytes
                    ),
                }),
                Some(p) if nesting_exceeds(p, MAX_NESTING) => rejected.push(RejectedRow {
                    index,
                    reason: format!("decode: JSON nested deeper than {MAX_NESTING} levels"),
                }),
                // arrow-json reads `17.9` into an integer column as 17: a value changed without
                // a word. Such a record is refused instead (a cast in the SQL keeps the choice
                // with the flow).
                Some(p)
                    if !self.int_columns.is_empty()
                        && let Some(why) =
                            lossy_integer(p, &self.int_columns, self.format == PayloadFormat::Debezium) =>
                {
                    rejected.push(RejectedRow { index, reason: format!("decode: {why}") })
                }
                // No UTF-8 check here: the decoder validates every string it reads, so a bad
                // payload fails the batch and the row-by-row path below names it.
                Some(p) => {
                    good.push(m);
                    indices.push(index as u32);
                    payloads.push(p);
                }
                None => rejected.push(RejectedRow { index, reason: "decode: message has no payload".into() }),
            }
        }
        let whole = self.decode_all(&payloads).and_then(|d| self.input_batch(&d, &good, &indices));
        if let Ok(b) = whole {
            return (Some(b), rejected);
        }
        // Slow path, only for a batch holding a bad row: decode rows one by one.
        let mut batches = Vec::new();
        for (index, m) in input.iter().enumerate() {
            let Some(p) = m.payload else { continue };
            if p.len() > self.max_record_bytes
                || nesting_exceeds(p, MAX_NESTING)
                || (!self.int_columns.is_empty()
                    && lossy_integer(p, &self.int_columns, self.format == PayloadFormat::Debezium).is_some())
            {
                continue;
            }
            if std::str::from_utf8(p).is_err() {
                rejected.push(RejectedRow { index, reason: "decode: payload is not valid UTF-8".into() });
                continue;
            }
            match self.decode_all(&[p]).and_then(|d| self.input_batch(&d, &[m], &[index as u32])) {
                Ok(b) => batches.push(b),
                Err(reason) => {
                    let reason = self.shape_mismatch(p).unwrap_or(reason);
                    rejected.push(RejectedRow { index, reason: format!("decode: {reason}") })
                }
            }
        }
        rejected.sort_by_key(|r| r.index);
        let merged = arrow_select_concat(&self.input, &batches);
        (merged, rejected)
    }
}

/// The deepest JSON nesting a payload may have (serde_json's own limit). Deeper input is
/// almost certainly hostile; it is rejected before any decoder walks it.
pub const MAX_NESTING: usize = 128;

/// Whether `json` nests objects and arrays more than `max` levels deep.
///
/// Cheap on ordinary records: a payload with no more than `max` opening brackets in all cannot
/// nest deeper, and counting bytes is a vectorised loop; only payloads with many brackets get
/// the exact scan, which skips brackets inside strings.
fn nesting_exceeds(json: &[u8], max: usize) -> bool {
    if json.iter().filter(|b| **b == b'{' || **b == b'[').count() <= max {
        return false;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Finds a number written into an integer column (one of `int_columns`, at the row's level:
/// the top-level object, or an envelope's `after`/`before`) with a fraction or an exponent that
/// leaves it not a whole number; says which.
///
/// Most payloads have no such number, and are let through by a byte scan for a digit followed
/// by `.`, `e` or `E`; only the others are walked token by token.
pub(crate) fn lossy_integer(json: &[u8], int_columns: &[String], envelope: bool) -> Option<String> {
    if !json.windows(2).any(|w| w[0].is_ascii_digit() && matches!(w[1], b'.' | b'e' | b'E')) {
        return None;
    }
    /// An open object or array, and for an object the key whose value comes next.
    struct Frame {
        object: bool,
        expect_key: bool,
        key: (usize, usize),
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < json.len() {
        let b = json[i];
        match b {
            b'{' | b'[' => {
                stack.push(Frame { object: b == b'{', expect_key: b == b'{', key: (0, 0) });
                i += 1;
            }
            b'}' | b']' => {
                stack.pop();
                i += 1;
            }
            b',' => {
                if let Some(f) = stack.last_mut().filter(|f| f.object) {
                    f.expect_key = true;
                }
                i += 1;
            }
            b':' => {
                if let Some(f) = stack.last_mut() {
                    f.expect_key = false;
                }
                i += 1;
            }
            b'"' => {
                let start = i + 1;
                i = start;
                while i < json.len() && json[i] != b'"' {
                    i += if json[i] == b'\\' { 2 } else { 1 };
                }
                if let Some(f) = stack.last_mut().filter(|f| f.object && f.expect_key) {
                    f.key = (start, i.min(json.len()));
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < json.len() && matches!(json[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                    i += 1;
                }
                let token = &json[start..i];
                let at_row = match stack.len() {
                    1 if !envelope => true,
                    2 if envelope => {
                        let (s, e) = stack[0].key;
                        matches!(&json[s..e], b"after" | b"before")
                    }
                    _ => false,
                };
                if at_row
                    && token.iter().any(|c| matches!(c, b'.' | b'e' | b'E'))
                    && let Some(f) = stack.last()
                    && let Some(column) = int_columns.iter().find(|c| c.as_bytes() == &json[f.key.0..f.key.1])
                    && !whole_number(token)
                {
                    return Some(format!(
                        "column `{column}`: {} is not a whole number, and the column is an integer; the record is \
                         refused rather than cut (CAST it in the SQL to keep the choice explicit)",
                        String::from_utf8_lossy(token)
                    ));
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// Whether a JSON number's text is a whole number (`17`, `17.0`, `1.5e1`, `2E3`), exactly, by
/// its digits: no float is involved.
fn whole_number(token: &[u8]) -> bool {
    let text = std::str::from_utf8(token).unwrap_or_default().trim_start_matches('-');
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], text[at + 1..].parse::<i64>().unwrap_or(0)),
        None => (text, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: Vec<u8> = int.bytes().chain(frac.bytes()).collect();
    // Where the decimal point falls among the digits once the exponent is applied.
    let point = int.len() as i64 + exponent;
    digits.iter().enumerate().all(|(i, d)| (i as i64) < point || *d == b'0')
}

/// The `_key` column: each message's key as text, null where there is none or it is not UTF-8.
///
/// Keys are short; checking each alone costs a call per key. Laid end to end they are checked
/// in one pass (with each boundary on a character boundary, as arrow's own constructor checks);
/// only a batch with a key that is not UTF-8 goes key by key.
pub(crate) fn key_column(msgs: &[&InputMessage<'_>]) -> StringArray {
    let mut values = Vec::with_capacity(msgs.iter().map(|m| m.key.map_or(0, <[u8]>::len)).sum());
    let mut offsets = Vec::with_capacity(msgs.len() + 1);
    offsets.push(0i32);
    let mut present = arrow_buffer::BooleanBufferBuilder::new(msgs.len());
    for m in msgs {
        values.extend_from_slice(m.key.unwrap_or_default());
        present.append(m.key.is_some());
        let Ok(end) = i32::try_from(values.len()) else { return key_column_one_by_one(msgs) };
        offsets.push(end);
    }
    let nulls = arrow_buffer::NullBuffer::new(present.finish());
    let offsets = arrow_buffer::OffsetBuffer::new(offsets.into());
    StringArray::try_new(offsets, values.into(), Some(nulls)).unwrap_or_else(|_| key_column_one_by_one(msgs))
}

fn key_column_one_by_one(msgs: &[&InputMessage<'_>]) -> StringArray {
    let mut keys = StringBuilder::with_capacity(msgs.len(), msgs.len() * 16);
    for m in msgs {
        keys.append_option(m.key.and_then(|k| std::str::from_utf8(k).ok()));
    }
    keys.finish()
}

fn merge_nulls(col: &ArrayRef, parent: Option<&arrow_buffer::NullBuffer>) -> Result<ArrayRef, String> {
    let Some(parent) = parent else { return Ok(col.clone()) };
    let merged = arrow_buffer::NullBuffer::union(Some(parent), col.nulls());
    let data = col.to_data().into_builder().nulls(merged).build().map_err(|e| e.to_string())?;
    Ok(arrow_array::make_array(data))
}

fn arrow_select_concat(schema: &SchemaRef, batches: &[RecordBatch]) -> Option<RecordBatch> {
    if batches.is_empty() {
        return None;
    }
    datafusion::arrow::compute::concat_batches(schema, batches).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fractions_in_integer_columns_are_found_exactly() {
        let ints = vec!["id".to_owned(), "n".to_owned()];
        for whole in ["17", "17.0", "17.000", "1.5e1", "2E3", "-4.0", "1e0", "120e-1"] {
            assert!(whole_number(whole.as_bytes()), "{whole}");
        }
        for part in ["17.9", "1.25e1", "1e-1", "0.5", "-0.01"] {
            assert!(!whole_number(part.as_bytes()), "{part}");
        }
        let lossy = |p: &str, env: bool| lossy_integer(p.as_bytes(), &ints, env);
        assert!(lossy(r#"{"id":1,"n":17.9}"#, false).unwrap().contains("column `n`: 17.9"));
        assert_eq!(lossy(r#"{"id":1,"n":17.0,"x":2.5}"#, false), None, "x is not an integer column");
        assert_eq!(lossy(r#"{"id":1,"name":"n 17.9","n":3}"#, false), None, "inside a string");
        assert_eq!(lossy(r#"{"id":1,"deep":{"n":17.9}}"#, false), None, "not at the row's level");
        let env = r#"{"before":null,"after":{"id":2,"n":1e-1},"op":"c","source":{"n":0.5},"ts_ms":1}"#;
        assert!(lossy(env, true).unwrap().contains("column `n`: 1e-1"));
        assert_eq!(lossy(r#"{"after":{"id":2},"source":{"n":0.5},"ts_ms":1.5}"#, true), None);
    }

    #[test]
    fn keys_are_text_or_null() {
        let m = |k: Option<&'static [u8]>| InputMessage { key: k, payload: None, timestamp_ms: None };
        let good = [m(Some(b"a")), m(None), m(Some("é".as_bytes())), m(Some(b""))];
        let refs: Vec<&InputMessage<'_>> = good.iter().collect();
        let k = key_column(&refs);
        assert_eq!(k.iter().collect::<Vec<_>>(), vec![Some("a"), None, Some("é"), Some("")]);
        // Two halves of one character in neighbouring keys: valid laid end to end, not alone.
        let split = [m(Some(&[0xc3])), m(Some(&[0xa9])), m(Some(b"b"))];
        let refs: Vec<&InputMessage<'_>> = split.iter().collect();
        assert_eq!(key_column(&refs).iter().collect::<Vec<_>>(), vec![None, None, Some("b")]);
    }

    #[test]
    fn nesting_is_measured_outside_strings() {
        assert!(!nesting_exceeds(br#"{"a":[1,{"b":2}]}"#, 3));
        assert!(nesting_exceeds(br#"{"a":[1,{"b":[2]}]}"#, 3));
        let quoted = format!(r#"{{"s":"{}"}}"#, "[".repeat(500));
        assert!(!nesting_exceeds(quoted.as_bytes(), 3), "brackets inside a string do not nest");
        let escaped = format!(r#"{{"s":"\"{}"}}"#, "[".repeat(500));
        assert!(!nesting_exceeds(escaped.as_bytes(), 3), "an escaped quote does not end the string");
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(nesting_exceeds(deep.as_bytes(), 128));
    }
}
