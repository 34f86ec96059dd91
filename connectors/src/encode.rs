//! The row encoders sinks share, straight from the Arrow columns (no per-row values built):
//! JSON lines and CSV. An encoder that fails was handed something it was built to encode, so
//! its failure is a bug in sluice, never retried.
//!
//! JSON is arrow-json's, with two differences ([`SinkJson`]): a `json` column's value is
//! written as the JSON it holds, not as a string of it, and NaN and the infinities as `"NaN"`,
//! `"Infinity"`, `"-Infinity"` rather than null. Bytes stay arrow-json's hex text (what a
//! `sha256()` column has always been written as), except for PostgreSQL, which gets its `\x`
//! form.
//! Structs are objects, lists arrays, maps objects and decimals exact numbers.
//!
//! CSV has no nesting: a struct, list or map column's cells are their JSON text (as the JSON
//! encoder above writes it), which spreadsheet users can read and `json_*` functions parse —
//! rather than flattening into one column per leaf, which a list cannot have.

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, BinaryArray, Float64Array, RecordBatch, StringArray};
use arrow_json::writer::{Encoder, EncoderFactory, EncoderOptions, NullableEncoder};
use arrow_schema::{ArrowError, DataType, Field, FieldRef, Schema};
use sluice_engine::error::ConnectorError;
use sluice_engine::schema::{EXTENSION_KEY, JSON_EXTENSION};

/// The encoders sinks' JSON uses in place of arrow-json's defaults.
#[derive(Debug)]
pub struct SinkJson {
    /// Bytes in PostgreSQL's `\x` hex text form (what `json_populate_record` reads into a
    /// `bytea`) rather than arrow-json's plain hex.
    pg_bytes: bool,
}

impl EncoderFactory for SinkJson {
    fn make_default_encoder<'a>(
        &self,
        field: &'a FieldRef,
        array: &'a dyn Array,
        _options: &'a EncoderOptions,
    ) -> Result<Option<NullableEncoder<'a>>, ArrowError> {
        if field.metadata().get(EXTENSION_KEY).map(String::as_str) == Some(JSON_EXTENSION)
            && let Some(text) = array.as_any().downcast_ref::<StringArray>()
        {
            return Ok(Some(NullableEncoder::new(Box::new(RawJson(text)), text.nulls().cloned())));
        }
        // arrow-json writes NaN and the infinities as null; they are written as the text
        // Jackson and Kafka Connect use instead, and the decoders read back.
        if let Some(floats) = array.as_any().downcast_ref::<Float64Array>()
            && floats.iter().flatten().any(|v| !v.is_finite())
        {
            return Ok(Some(NullableEncoder::new(Box::new(Floats(floats)), floats.nulls().cloned())));
        }
        if self.pg_bytes
            && let Some(bytes) = array.as_any().downcast_ref::<BinaryArray>()
        {
            return Ok(Some(NullableEncoder::new(Box::new(PgHex(bytes)), bytes.nulls().cloned())));
        }
        Ok(None)
    }
}

/// A `json` column: its text as it is when it is one JSON value (as the decoders made it),
/// otherwise as a string, so a line is never broken by what a query put there.
struct RawJson<'a>(&'a StringArray);

impl Encoder for RawJson<'_> {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        let text = self.0.value(idx);
        if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() && !text.contains('\n') {
            out.extend_from_slice(text.as_bytes());
        } else {
            // A `String` serializes infallibly.
            out.extend_from_slice(serde_json::to_string(text).unwrap_or_default().as_bytes());
        }
    }
}

/// Floats, with `"NaN"`, `"Infinity"` and `"-Infinity"` for the values JSON has no number for.
struct Floats<'a>(&'a Float64Array);

impl Encoder for Floats<'_> {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        use std::io::Write as _;
        let v = self.0.value(idx);
        let _ = match v {
            v if v.is_nan() => out.write_all(b"\"NaN\""),
            f64::INFINITY => out.write_all(b"\"Infinity\""),
            f64::NEG_INFINITY => out.write_all(b"\"-Infinity\""),
            // `Debug` is the shortest text that reads back as the same float, `.0` included
            // (`-42.0`), as arrow-json writes it.
            v => write!(out, "{v:?}"),
        };
    }
}

/// Bytes as PostgreSQL's `\x` hex text.
struct PgHex<'a>(&'a BinaryArray);

impl Encoder for PgHex<'_> {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\"\\\\x");
        out.extend_from_slice(hex::encode(self.0.value(idx)).as_bytes());
        out.push(b'"');
    }
}

/// Encodes batches as JSON lines (nulls written out), appending to `out`. arrow-json escapes
/// newlines inside strings, so each line is exactly one row.
pub fn json_lines(batches: &[RecordBatch], out: &mut Vec<u8>) -> Result<(), ConnectorError> {
    json_lines_with(batches, out, SinkJson { pg_bytes: false })
}

/// [`json_lines`] for PostgreSQL's `json_populate_recordset`: bytes as `\x` hex.
pub fn json_lines_for_postgres(batches: &[RecordBatch], out: &mut Vec<u8>) -> Result<(), ConnectorError> {
    json_lines_with(batches, out, SinkJson { pg_bytes: true })
}

fn json_lines_with(batches: &[RecordBatch], out: &mut Vec<u8>, style: SinkJson) -> Result<(), ConnectorError> {
    let mut w = arrow_json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .with_encoder_factory(Arc::new(style))
        .build::<_, arrow_json::writer::LineDelimited>(out);
    for b in batches {
        w.write(b).map_err(|e| ConnectorError::internal("encoding rows as JSON", e.to_string()))?;
    }
    w.finish().map_err(|e| ConnectorError::internal("encoding rows as JSON", e.to_string()))
}

/// Encodes batches as CSV with a header line, appending to `out`; nested columns' cells are
/// their JSON text.
pub fn csv(batches: &[RecordBatch], out: &mut Vec<u8>) -> Result<(), ConnectorError> {
    let mut w = arrow_csv::WriterBuilder::new().with_header(true).build(out);
    for b in batches {
        let b = nested_as_json_text(b)?;
        w.write(&b).map_err(|e| ConnectorError::internal("encoding rows as CSV", e.to_string()))?;
    }
    Ok(())
}

fn is_nested(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Struct(_)
            | DataType::List(_)
            | DataType::LargeList(_)
            | DataType::ListView(_)
            | DataType::LargeListView(_)
            | DataType::FixedSizeList(..)
            | DataType::Map(..)
    )
}

/// The batch with each nested column replaced by a text column of its values' JSON.
fn nested_as_json_text(b: &RecordBatch) -> Result<RecordBatch, ConnectorError> {
    if !b.schema().fields().iter().any(|f| is_nested(f.data_type())) {
        return Ok(b.clone());
    }
    let fail = |e: ArrowError| ConnectorError::internal("encoding nested columns as JSON text for CSV", e.to_string());
    let mut fields = Vec::with_capacity(b.num_columns());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(b.num_columns());
    for (f, c) in b.schema().fields().iter().zip(b.columns()) {
        if !is_nested(f.data_type()) {
            fields.push(f.clone());
            columns.push(c.clone());
            continue;
        }
        // One column under a one-letter name: each line is `{"v":…}`, the value in the middle.
        let one = Arc::new(Schema::new(vec![f.as_ref().clone().with_name("v")]));
        let mut lines = Vec::new();
        json_lines(&[RecordBatch::try_new(one, vec![c.clone()]).map_err(fail)?], &mut lines)?;
        let text =
            String::from_utf8(lines).map_err(|e| ConnectorError::internal("encoding rows as CSV", e.to_string()))?;
        let cells: StringArray = text
            .lines()
            .enumerate()
            .map(|(i, line)| (!c.is_null(i)).then(|| line.get(5..line.len().saturating_sub(1)).unwrap_or_default()))
            .collect();
        fields.push(Arc::new(Field::new(f.name(), DataType::Utf8, true)));
        columns.push(Arc::new(cells));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(fail)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Int64Array, StringArray};

    use super::*;

    #[test]
    fn json_columns_are_written_as_json_bytes_as_hex_and_nesting_as_nesting() {
        use arrow_array::{BinaryArray, StructArray};
        use arrow_schema::{Field, Schema};
        use sluice_engine::schema::ColumnType;
        let doc = ColumnType::Json.field("doc");
        let inner = Arc::new(Field::new("inner", ColumnType::Json.arrow(), true).with_metadata(doc.metadata().clone()));
        let nested = StructArray::from(vec![(
            inner.clone(),
            Arc::new(StringArray::from(vec![Some("[1,2]"), None])) as ArrayRef,
        )]);
        let schema = Arc::new(Schema::new(vec![
            doc,
            Field::new("raw", arrow_schema::DataType::Binary, true),
            Field::new("s", nested.data_type().clone(), true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some(r#"{"a":1}"#), Some("not json")])),
                Arc::new(BinaryArray::from_opt_vec(vec![Some(b"hi"), None])),
                Arc::new(nested),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        json_lines(&[batch], &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"doc\":{\"a\":1},\"raw\":\"6869\",\"s\":{\"inner\":[1,2]}}\n{\"doc\":\"not json\",\"raw\":null,\"s\":{\"inner\":null}}\n"
        );
    }

    #[test]
    fn floats_json_has_no_number_for_are_written_as_text_not_null() {
        let batch = RecordBatch::try_from_iter([(
            "f",
            Arc::new(arrow_array::Float64Array::from(vec![Some(f64::NAN), Some(f64::INFINITY), Some(-1.5), None]))
                as ArrayRef,
        )])
        .unwrap();
        let mut out = Vec::new();
        json_lines(&[batch], &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"f\":\"NaN\"}\n{\"f\":\"Infinity\"}\n{\"f\":-1.5}\n{\"f\":null}\n"
        );
    }

    #[test]
    fn rows_become_lines_with_nulls_written_out() {
        let batch = RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
            ("name", Arc::new(StringArray::from(vec![Some("a\nb"), None])) as ArrayRef),
        ])
        .unwrap();
        let mut out = Vec::new();
        json_lines(std::slice::from_ref(&batch), &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "{\"id\":1,\"name\":\"a\\nb\"}\n{\"id\":2,\"name\":null}\n");
        let mut out = Vec::new();
        csv(&[batch], &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "id,name\n1,\"a\nb\"\n2,\n");
    }

    #[test]
    fn nested_csv_cells_are_their_json_text() {
        use sluice_engine::schema::ColumnType;
        let t = ColumnType::parse("list<struct<sku: int64, tags: list<string>>>").unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true), t.field("items")]));
        let mut d = arrow_json::ReaderBuilder::new(schema).build_decoder().unwrap();
        d.decode(br#"{"id":1,"items":[{"sku":7,"tags":["a,b","c"]}]} {"id":2,"items":null}"#).unwrap();
        let batch = d.flush().unwrap().unwrap();
        let mut out = Vec::new();
        csv(&[batch], &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "id,items\n1,\"[{\"\"sku\"\":7,\"\"tags\"\":[\"\"a,b\"\",\"\"c\"\"]}]\"\n2,\n"
        );
    }
}
