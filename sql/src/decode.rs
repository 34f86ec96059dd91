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
            let p = surrogate_pairs_as_utf8(p);
            let mut rest: &[u8] = &p;
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

    /// Decodes what it can; returns the good rows' batch and the rejected rows. Row-level
    /// fields the row does not declare are added to `unknown` (when the stage watches for them).
    pub(crate) fn decode_batch(
        &self,
        input: &[InputMessage<'_>],
        unknown: &mut Vec<String>,
    ) -> (Option<RecordBatch>, Vec<RejectedRow>) {
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
                Some(p) => {
                    good.push(m);
                    indices.push(index as u32);
                    payloads.push(p);
                }
                None => rejected.push(RejectedRow { index, reason: "decode: message has no payload".into() }),
            }
        }
        // Most batches: one pass decodes and checks every payload.
        if let Some(fast) = &self.onepass
            && let Ok(d) = fast.decode(&payloads, unknown)
            && let Ok(b) = self.input_batch(&d, &good, &indices)
        {
            return (Some(b), rejected);
        }
        // What arrow-json would change without a word (`17.9` read into an integer column as
        // 17, decimals cut to their scale) is refused instead; so is hostile nesting.
        let mut stack = Vec::new();
        let mut kept = 0;
        for i in 0..payloads.len() {
            match self.precheck.check(payloads[i], &mut stack, unknown) {
                Some(why) => {
                    rejected.push(RejectedRow { index: indices[i] as usize, reason: format!("decode: {why}") })
                }
                None => {
                    good[kept] = good[i];
                    indices[kept] = indices[i];
                    payloads[kept] = payloads[i];
                    kept += 1;
                }
            }
        }
        good.truncate(kept);
        indices.truncate(kept);
        payloads.truncate(kept);
        rejected.sort_by_key(|r| r.index);
        // No UTF-8 check here: the decoder validates every string it reads, so a bad
        // payload fails the batch and the row-by-row path below names it.
        let whole = self.decode_all(&payloads).and_then(|d| self.input_batch(&d, &good, &indices));
        if let Ok(b) = whole {
            return (Some(b), rejected);
        }
        // Slow path, only for a batch holding a bad row: decode rows one by one.
        let mut batches = Vec::new();
        for (index, m) in input.iter().enumerate() {
            let Some(p) = m.payload else { continue };
            if p.len() > self.max_record_bytes || self.precheck.check(p, &mut stack, &mut Vec::new()).is_some() {
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

/// The payload with each escaped UTF-16 surrogate pair (`\\ud840\\udc00`) written as the UTF-8
/// of its character; borrowed when it has none.
///
/// arrow-json 59 joins a pair's halves with `|` where `+` is meant, which gives the wrong
/// character, without a word, for every code point of the even planes: U+20000–U+2FFFF (CJK
/// extensions B to F), the tag characters at U+E0000 (subdivision flag emoji), private use in
/// plane 16. Raw UTF-8 in a JSON string means the same, and it decodes right.
pub(crate) fn surrogate_pairs_as_utf8(payload: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let hex4 = |at: usize| {
        let digits = payload.get(at..at + 4)?;
        u32::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    };
    let mut fixed: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut at = 0;
    while let Some(found) = payload.get(at..).and_then(|rest| memchr::memchr(b'\\', rest)) {
        let i = at + found;
        // Every backslash in valid JSON starts an escape; the one after it is never a new one.
        at = i + 2;
        if payload.get(i + 1) != Some(&b'u') {
            continue;
        }
        let Some(high) = hex4(i + 2).filter(|h| (0xd800..0xdc00).contains(h)) else { continue };
        if payload.get(i + 6..i + 8) != Some(&b"\\u"[..]) {
            continue;
        }
        let Some(low) = hex4(i + 8).filter(|l| (0xdc00..0xe000).contains(l)) else { continue };
        let Some(ch) = char::from_u32(0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00)) else { continue };
        let out = fixed.get_or_insert_with(|| Vec::with_capacity(payload.len()));
        out.extend_from_slice(&payload[copied..i]);
        out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
        copied = i + 12;
        at = copied;
    }
    match fixed {
        None => std::borrow::Cow::Borrowed(payload),
        Some(mut out) => {
            out.extend_from_slice(&payload[copied..]);
            std::borrow::Cow::Owned(out)
        }
    }
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
    fn escaped_surrogate_pairs_become_their_characters() {
        let fix = |s: &str| String::from_utf8(surrogate_pairs_as_utf8(s.as_bytes()).into_owned()).unwrap();
        assert_eq!(fix(r#"{"a":"\ud840\udc00 \ud83d\ude00"}"#), "{\"a\":\"\u{20000} \u{1f600}\"}");
        assert_eq!(fix(r#"{"a":"\\ud840\udc00"}"#), r#"{"a":"\\ud840\udc00"}"#, "an escaped backslash");
        assert_eq!(fix(r#"{"a":"\ud840","b":"\u00e9\"\ud840x"}"#), r#"{"a":"\ud840","b":"\u00e9\"\ud840x"}"#);
        assert!(matches!(surrogate_pairs_as_utf8(b"{}"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(fix("\\"), "\\", "a backslash at the end");
        // What arrow-json does with the pair itself.
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Utf8, true)]));
        let read = |json: &[u8]| {
            let mut d = arrow_json::ReaderBuilder::new(schema.clone()).build_decoder().unwrap();
            d.decode(json).unwrap();
            let b = d.flush().unwrap().unwrap();
            b.column(0).as_any().downcast_ref::<StringArray>().unwrap().value(0).to_owned()
        };
        let pair = br#"{"a":"\ud840\udc00"}"#;
        assert_ne!(read(pair), "\u{20000}", "arrow-json has mended its surrogate pairs: this step can go");
        assert_eq!(read(&surrogate_pairs_as_utf8(pair)), "\u{20000}");
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
}
