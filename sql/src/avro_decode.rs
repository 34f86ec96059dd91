//! Avro payloads (Confluent wire format) into the `source` batch: each datum is read with its
//! writer schema from the registry and its fields appended straight to the declared columns'
//! Arrow builders.
//!
//! A record is a change envelope when it has `op` and `after` fields (what Debezium's Avro
//! converter writes), otherwise it is the row itself (op `c`). A field converts when its Avro
//! value fits the column: ints into any integer or float column, `timestamp-*` or epoch
//! milliseconds into `timestamp`, enums and uuids into `string`, … A record that does not fit
//! is rejected with the field named; the rest of the batch goes on.

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::types::Value;
use arrow_array::builder::{
    BooleanBuilder, Date32Builder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch, UInt32Array};
use arrow_schema::SchemaRef;
use sluice_core::avro::{RegistryError, SchemaRegistry, split_wire};
use sluice_core::connector::{InputMessage, RejectedRow};
use sluice_core::schema::{ColumnType, RowSchema};

/// One converted field.
enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

/// What a datum is: an envelope's parts, or a row.
struct Decoded {
    op: String,
    ts_ms: Option<i64>,
    cells: Vec<Cell>,
}

fn unwrap_union(v: &Value) -> &Value {
    match v {
        Value::Union(_, inner) => unwrap_union(inner),
        other => other,
    }
}

fn field<'a>(fields: &'a [(String, Value)], name: &str) -> Option<&'a Value> {
    fields.iter().find(|(n, _)| n == name).map(|(_, v)| unwrap_union(v))
}

fn cell(v: &Value, ty: ColumnType) -> Result<Cell, String> {
    use ColumnType as C;
    Ok(match (unwrap_union(v), ty) {
        (Value::Null, _) => Cell::Null,
        (Value::Boolean(b), C::Bool) => Cell::Bool(*b),
        (Value::Int(i), C::Int32 | C::Int64 | C::Date) => Cell::Int(i64::from(*i)),
        (Value::Long(i), C::Int64 | C::Timestamp) => Cell::Int(*i),
        (Value::Long(i), C::Int32) => {
            Cell::Int(i64::from(i32::try_from(*i).map_err(|_| format!("{i} is out of int32 range"))?))
        }
        (Value::Int(i), C::Float64) => Cell::Float(f64::from(*i)),
        (Value::Long(i), C::Float64) => Cell::Float(*i as f64),
        (Value::Float(f), C::Float64) => Cell::Float(f64::from(*f)),
        (Value::Double(f), C::Float64) => Cell::Float(*f),
        (Value::String(s) | Value::Enum(_, s), C::String) => Cell::Text(s.clone()),
        (Value::Uuid(u), C::String) => Cell::Text(u.to_string()),
        (Value::Date(d), C::Date) => Cell::Int(i64::from(*d)),
        (Value::TimestampMillis(t) | Value::LocalTimestampMillis(t), C::Timestamp) => Cell::Int(*t),
        (Value::TimestampMicros(t) | Value::LocalTimestampMicros(t), C::Timestamp) => Cell::Int(t.div_euclid(1000)),
        (Value::TimestampNanos(t) | Value::LocalTimestampNanos(t), C::Timestamp) => Cell::Int(t.div_euclid(1_000_000)),
        (Value::String(s), C::Timestamp) => Cell::Int(
            arrow_cast::parse::string_to_timestamp_nanos(s).map_err(|e| format!("`{s}` is not a timestamp: {e}"))?
                / 1_000_000,
        ),
        (other, ty) => return Err(format!("{} does not fit a {ty:?} column", kind(other))),
    })
}

fn kind(v: &Value) -> String {
    let text = format!("{v:?}");
    text.split(['(', ' ']).next().unwrap_or("value").to_lowercase()
}

/// Reads one datum as the row's cells.
fn decode(value: &Value, row: &RowSchema) -> Result<Decoded, String> {
    let Value::Record(fields) = value else { return Err(format!("the datum is a {}, not a record", kind(value))) };
    let envelope = field(fields, "op").is_some() && fields.iter().any(|(n, _)| n == "after");
    let (op, ts_ms, image) = if envelope {
        let op = match field(fields, "op") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err("envelope `op` is not a string".into()),
        };
        let ts_ms = match field(fields, "ts_ms") {
            Some(Value::Long(t)) => Some(*t),
            Some(Value::Int(t)) => Some(i64::from(*t)),
            _ => None,
        };
        // A delete's columns are its `before` image, as for JSON envelopes.
        let image = match (field(fields, "after"), field(fields, "before")) {
            (Some(Value::Record(a)), _) => Some(a),
            (_, Some(Value::Record(b))) => Some(b),
            _ => None,
        };
        (op, ts_ms, image)
    } else {
        ("c".to_owned(), None, Some(fields))
    };
    let cells = match image {
        None => row.columns.iter().map(|_| Cell::Null).collect(),
        Some(image) => row
            .columns
            .iter()
            .map(|(name, ty)| match field(image, name) {
                None => Ok(Cell::Null),
                Some(v) => cell(v, *ty).map_err(|e| format!("field `{name}`: {e}")),
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(Decoded { op, ts_ms, cells })
}

/// Column builders for the declared columns.
enum Builder {
    Bool(BooleanBuilder),
    I32(Int32Builder),
    I64(Int64Builder),
    F64(Float64Builder),
    Str(StringBuilder),
    Ts(TimestampMillisecondBuilder),
    Date(Date32Builder),
}

impl Builder {
    fn new(ty: ColumnType, n: usize) -> Builder {
        match ty {
            ColumnType::Bool => Builder::Bool(BooleanBuilder::with_capacity(n)),
            ColumnType::Int32 => Builder::I32(Int32Builder::with_capacity(n)),
            ColumnType::Int64 => Builder::I64(Int64Builder::with_capacity(n)),
            ColumnType::Float64 => Builder::F64(Float64Builder::with_capacity(n)),
            ColumnType::String => Builder::Str(StringBuilder::with_capacity(n, n * 16)),
            ColumnType::Timestamp => Builder::Ts(TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC")),
            ColumnType::Date => Builder::Date(Date32Builder::with_capacity(n)),
        }
    }

    fn append(&mut self, c: Cell) {
        match (self, c) {
            (Builder::Bool(b), Cell::Bool(v)) => b.append_value(v),
            (Builder::I32(b), Cell::Int(v)) => b.append_value(v as i32),
            (Builder::I64(b), Cell::Int(v)) => b.append_value(v),
            (Builder::F64(b), Cell::Float(v)) => b.append_value(v),
            (Builder::Str(b), Cell::Text(v)) => b.append_value(v),
            (Builder::Ts(b), Cell::Int(v)) => b.append_value(v),
            (Builder::Date(b), Cell::Int(v)) => b.append_value(v as i32),
            (Builder::Bool(b), _) => b.append_null(),
            (Builder::I32(b), _) => b.append_null(),
            (Builder::I64(b), _) => b.append_null(),
            (Builder::F64(b), _) => b.append_null(),
            (Builder::Str(b), _) => b.append_null(),
            (Builder::Ts(b), _) => b.append_null(),
            (Builder::Date(b), _) => b.append_null(),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Builder::Bool(mut b) => Arc::new(b.finish()),
            Builder::I32(mut b) => Arc::new(b.finish()),
            Builder::I64(mut b) => Arc::new(b.finish()),
            Builder::F64(mut b) => Arc::new(b.finish()),
            Builder::Str(mut b) => Arc::new(b.finish()),
            Builder::Ts(mut b) => Arc::new(b.finish()),
            Builder::Date(mut b) => Arc::new(b.finish()),
        }
    }
}

/// Decodes a batch of Avro payloads into the `source` batch (`input` schema: row columns,
/// `_op`, `_key`, `_ts`, lineage). Records that cannot be read are rejected; a registry that
/// cannot be reached is an error for the whole batch (it is retried by the caller's policy).
pub(crate) async fn decode_batch(
    registry: &dyn SchemaRegistry,
    cache: &mut HashMap<u32, Arc<apache_avro::Schema>>,
    row: &RowSchema,
    input: &SchemaRef,
    msgs: &[InputMessage<'_>],
    max_bytes: usize,
) -> Result<(Option<RecordBatch>, Vec<RejectedRow>), String> {
    let n = msgs.len();
    let mut builders: Vec<Builder> = row.columns.iter().map(|(_, t)| Builder::new(*t, n)).collect();
    let mut ops = StringBuilder::with_capacity(n, n);
    let (mut ts, mut rows) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut rejected = Vec::new();
    for (index, m) in msgs.iter().enumerate() {
        let reject = |reason: String| RejectedRow { index, reason: format!("decode: avro: {reason}") };
        let Some(payload) = m.payload else {
            rejected.push(reject("message has no payload".into()));
            continue;
        };
        if payload.len() > max_bytes {
            rejected.push(reject(format!("record of {} bytes is over the {max_bytes}-byte limit", payload.len())));
            continue;
        }
        let (id, mut datum) = match split_wire(payload) {
            Ok(x) => x,
            Err(e) => {
                rejected.push(reject(e.to_string()));
                continue;
            }
        };
        let schema = match cache.get(&id) {
            Some(s) => s.clone(),
            None => match registry.schema(id).await {
                Ok(s) => {
                    cache.insert(id, s.clone());
                    s
                }
                Err(e @ RegistryError::UnknownId(_)) => {
                    rejected.push(reject(e.to_string()));
                    continue;
                }
                Err(e) => return Err(format!("reading schema id {id} from the schema registry: {e}")),
            },
        };
        let decoded = apache_avro::from_avro_datum(&schema, &mut datum, None)
            .map_err(|e| format!("schema id {id}: {e}"))
            .and_then(|v| decode(&v, row));
        match decoded {
            Ok(d) => {
                for (b, c) in builders.iter_mut().zip(d.cells) {
                    b.append(c);
                }
                ops.append_value(&d.op);
                ts.push(d.ts_ms.or(m.timestamp_ms));
                rows.push(index as u32);
            }
            Err(e) => rejected.push(reject(e)),
        }
    }
    if rows.is_empty() {
        return Ok((None, rejected));
    }
    let mut columns: Vec<ArrayRef> = builders.into_iter().map(Builder::finish).collect();
    columns.push(Arc::new(ops.finish()));
    let accepted: Vec<&InputMessage<'_>> = rows.iter().filter_map(|&i| msgs.get(i as usize)).collect();
    columns.push(Arc::new(crate::decode::key_column(&accepted)));
    columns.push(Arc::new(arrow_array::TimestampMillisecondArray::from(ts).with_timezone("UTC")));
    columns.push(Arc::new(UInt32Array::from(rows)));
    let batch = RecordBatch::try_new(input.clone(), columns).map_err(|e| e.to_string())?;
    Ok((Some(batch), rejected))
}
