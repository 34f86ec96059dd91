//! Arrow rows as Avro: the Avro schema of an Arrow schema, and each row of a batch as an Avro
//! record value (for object container files, and Avro payloads).
//!
//! Every Arrow type has one Avro shape: structs are records, lists arrays, maps (text keys)
//! maps, decimals `bytes` with the `decimal` logical type (exact), times of day `time-micros`,
//! timestamps `timestamp-millis`/`-micros` (`local-` without a zone). Types Avro has no word
//! for (intervals, …) travel as their text, the way the rest of sluice renders them; the
//! column's Avro type is then `string`. Columns are first cast to one canonical Arrow type per
//! shape (all small integers to `int`, every list to `array`, …) so the row walk has few cases.
//!
//! Avro names allow only `[A-Za-z_][A-Za-z0-9_]*`: other characters in a column name (a SQL
//! alias such as `upper(name)`) become `_`.
//!
//! Kafka payloads in Avro use Confluent's wire format: a zero byte, the writer schema's id in a
//! Schema Registry (4 bytes, big-endian), then the datum. [`SchemaRegistry`] is how the SQL
//! stage and the kafka sink reach a registry; the client lives with the kafka connector.

use std::sync::Arc;

use apache_avro::types::Value;
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Decimal128Type, Decimal256Type, Float32Type, Float64Type, Int32Type, Int64Type, Time64MicrosecondType,
    TimestampMicrosecondType, TimestampMillisecondType,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Fields, Schema, TimeUnit};

use crate::error::Invalid;

/// A failure to describe or convert rows as Avro.
#[derive(Debug, thiserror::Error)]
pub enum AvroError {
    /// A column whose values cannot be turned into any Avro type.
    #[error("column `{column}` ({ty}) cannot be written as Avro: {message}")]
    Column {
        /// The column.
        column: String,
        /// Its Arrow type.
        ty: String,
        /// Why.
        message: String,
    },
    /// apache-avro refused the schema (a bug here, or a name it rejects).
    #[error("building the Avro schema: {0}")]
    Schema(String),
}

/// The first byte of a Confluent wire-format payload.
pub const MAGIC: u8 = 0;

/// Splits a Confluent wire-format payload into the schema id and the datum.
pub fn split_wire(payload: &[u8]) -> Result<(u32, &[u8]), Invalid> {
    match payload {
        [MAGIC, a, b, c, d, datum @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), datum)),
        [MAGIC, ..] => Err(format!("an Avro payload of {} bytes is too short for its header", payload.len()).into()),
        [first, ..] => Err(format!("not Confluent-framed Avro: first byte is {first:#04x}, not 0x00").into()),
        [] => Err("empty payload".into()),
    }
}

/// Frames an Avro datum in Confluent's wire format.
pub fn frame_wire(id: u32, datum: &[u8], out: &mut Vec<u8>) {
    out.push(MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(datum);
}

/// A failure to get or register a schema.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The registry has no schema with this id: the record cannot be read (a DLQ matter).
    #[error("schema id {0} is not in the schema registry")]
    UnknownId(u32),
    /// The registry refused the request for good (an incompatible schema, bad credentials).
    #[error("{0}")]
    Refused(String),
    /// The registry could not be reached within the retries.
    #[error("{0}")]
    Unavailable(String),
}

/// A Confluent-compatible Schema Registry: writer schemas by id, with the client's cache.
#[async_trait::async_trait]
pub trait SchemaRegistry: Send + Sync + std::fmt::Debug {
    /// The schema registered under `id`.
    async fn schema(&self, id: u32) -> Result<Arc<apache_avro::Schema>, RegistryError>;
    /// Registers `schema` under `subject` (or finds it there); its id.
    async fn register(&self, subject: &str, schema: &apache_avro::Schema) -> Result<u32, RegistryError>;
}

/// The canonical Arrow type a column is cast to before its rows are read (see the module docs).
fn canonical(dt: &DataType) -> DataType {
    use DataType as D;
    match dt {
        D::Null => D::Null,
        D::Boolean => D::Boolean,
        D::Int8 | D::Int16 | D::Int32 | D::UInt8 | D::UInt16 => D::Int32,
        D::Int64 | D::UInt32 | D::UInt64 => D::Int64,
        D::Float16 | D::Float32 => D::Float32,
        D::Float64 => D::Float64,
        D::Binary | D::LargeBinary | D::BinaryView | D::FixedSizeBinary(_) => D::Binary,
        D::Date32 | D::Date64 => D::Date32,
        D::Timestamp(TimeUnit::Second | TimeUnit::Millisecond, tz) => D::Timestamp(TimeUnit::Millisecond, tz.clone()),
        D::Timestamp(TimeUnit::Microsecond | TimeUnit::Nanosecond, tz) => {
            D::Timestamp(TimeUnit::Microsecond, tz.clone())
        }
        D::Struct(fields) => D::Struct(canonical_fields(fields)),
        D::List(item) | D::LargeList(item) | D::ListView(item) | D::LargeListView(item) | D::FixedSizeList(item, _) => {
            D::List(Arc::new(item.as_ref().clone().with_data_type(canonical(item.data_type()))))
        }
        D::Dictionary(_, values) => canonical(values),
        D::Decimal128(..) | D::Decimal256(..) => dt.clone(),
        D::Time32(_) | D::Time64(_) => D::Time64(TimeUnit::Microsecond),
        D::Map(entries, _) => match entries.data_type() {
            D::Struct(kv) if kv.len() == 2 && kv[0].data_type() == &D::Utf8 => {
                D::Map(Arc::new(entries.as_ref().clone().with_data_type(D::Struct(canonical_fields(kv)))), false)
            }
            _ => D::Utf8,
        },
        _ => D::Utf8,
    }
}

fn canonical_fields(fields: &Fields) -> Fields {
    fields.iter().map(|f| f.as_ref().clone().with_data_type(canonical(f.data_type()))).collect()
}

/// A name Avro accepts.
pub fn avro_name(name: &str) -> String {
    let mut out: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// The Avro type (as schema JSON) of a canonical Arrow type; records are named after `path`.
fn type_json(dt: &DataType, path: &str) -> serde_json::Value {
    use serde_json::json;
    match dt {
        DataType::Null => json!("null"),
        DataType::Boolean => json!("boolean"),
        DataType::Int32 => json!("int"),
        DataType::Int64 => json!("long"),
        DataType::Float32 => json!("float"),
        DataType::Float64 => json!("double"),
        DataType::Binary => json!("bytes"),
        DataType::Date32 => json!({"type": "int", "logicalType": "date"}),
        DataType::Timestamp(unit, tz) => {
            let logical = match (unit, tz.is_some()) {
                (TimeUnit::Millisecond, true) => "timestamp-millis",
                (TimeUnit::Millisecond, false) => "local-timestamp-millis",
                (_, true) => "timestamp-micros",
                (_, false) => "local-timestamp-micros",
            };
            json!({"type": "long", "logicalType": logical})
        }
        DataType::Struct(fields) => record_json(fields, path),
        DataType::List(item) => json!({"type": "array", "items": field_type_json(item, &format!("{path}_item"))}),
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => {
                json!({"type": "map", "values": field_type_json(&kv[1], &format!("{path}_value"))})
            }
            _ => json!("string"),
        },
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => {
            json!({"type": "bytes", "logicalType": "decimal", "precision": p, "scale": s})
        }
        DataType::Time64(_) => json!({"type": "long", "logicalType": "time-micros"}),
        _ => json!("string"),
    }
}

/// A field's type: nullable fields are a union with `null` first (so they can default to null).
/// A `uuid` column is a string with the `uuid` logical type.
fn field_type_json(field: &Field, path: &str) -> serde_json::Value {
    let uuid =
        field.metadata().get(crate::schema::EXTENSION_KEY).map(String::as_str) == Some(crate::schema::UUID_EXTENSION);
    let ty = match field.data_type() {
        DataType::Utf8 if uuid => serde_json::json!({"type": "string", "logicalType": "uuid"}),
        t => type_json(t, path),
    };
    if field.is_nullable() && field.data_type() != &DataType::Null { serde_json::json!(["null", ty]) } else { ty }
}

fn record_json(fields: &Fields, name: &str) -> serde_json::Value {
    let fields: Vec<serde_json::Value> = fields
        .iter()
        .map(|f| {
            let field_name = avro_name(f.name());
            let mut out = serde_json::json!({
                "name": field_name,
                "type": field_type_json(f, &format!("{name}_{field_name}")),
            });
            if f.is_nullable() {
                out["default"] = serde_json::Value::Null;
            }
            out
        })
        .collect();
    serde_json::json!({"type": "record", "name": name, "fields": fields})
}

/// Writes rows of one Arrow schema as Avro records.
#[derive(Debug, Clone)]
pub struct AvroRows {
    schema: apache_avro::Schema,
    /// The canonical type of each column, in order.
    columns: Fields,
    /// Avro field names, in column order.
    names: Vec<String>,
}

impl AvroRows {
    /// The Avro record (named `name`) for rows of `arrow`.
    pub fn new(arrow: &Schema, name: &str) -> Result<AvroRows, AvroError> {
        let columns = canonical_fields(arrow.fields());
        let mut names = Vec::with_capacity(columns.len());
        for f in arrow.fields() {
            let n = avro_name(f.name());
            if names.contains(&n) {
                return Err(AvroError::Column {
                    column: f.name().clone(),
                    ty: f.data_type().to_string(),
                    message: format!("its Avro name `{n}` is taken by another column; alias one of them"),
                });
            }
            names.push(n);
        }
        let json = record_json(&columns, &avro_name(name));
        let schema = apache_avro::Schema::parse_str(&json.to_string()).map_err(|e| AvroError::Schema(e.to_string()))?;
        Ok(AvroRows { schema, columns, names })
    }

    /// The Avro schema.
    pub fn schema(&self) -> &apache_avro::Schema {
        &self.schema
    }

    /// The schema's Rabin fingerprint (Avro's 64-bit schema fingerprint) in hex: a stable name
    /// for "this version of the output schema".
    pub fn fingerprint(&self) -> String {
        self.schema.fingerprint::<apache_avro::rabin::Rabin>().to_string()
    }

    /// The batch's rows as Avro record values.
    pub fn values(&self, batch: &RecordBatch) -> Result<Vec<Value>, AvroError> {
        let arrays = batch
            .columns()
            .iter()
            .zip(self.columns.iter())
            .map(|(array, field)| {
                arrow_cast::cast(array, field.data_type()).map_err(|e| AvroError::Column {
                    column: field.name().clone(),
                    ty: array.data_type().to_string(),
                    message: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((0..batch.num_rows())
            .map(|row| {
                Value::Record(
                    self.names
                        .iter()
                        .zip(arrays.iter().zip(self.columns.iter()))
                        .map(|(name, (array, field))| (name.clone(), field_value(array, field, row)))
                        .collect(),
                )
            })
            .collect())
    }
}

fn field_value(array: &ArrayRef, field: &Field, row: usize) -> Value {
    let nullable = field.is_nullable() && field.data_type() != &DataType::Null;
    match (nullable, array.is_null(row)) {
        (true, true) => Value::Union(0, Box::new(Value::Null)),
        (true, false) => Value::Union(1, Box::new(value(array, row))),
        (false, _) => value(array, row),
    }
}

/// One value of a canonical array.
fn value(array: &ArrayRef, row: usize) -> Value {
    match array.data_type() {
        DataType::Boolean => Value::Boolean(array.as_boolean().value(row)),
        DataType::Int32 => Value::Int(array.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => Value::Long(array.as_primitive::<Int64Type>().value(row)),
        DataType::Float32 => Value::Float(array.as_primitive::<Float32Type>().value(row)),
        DataType::Float64 => Value::Double(array.as_primitive::<Float64Type>().value(row)),
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(row).to_owned()),
        DataType::Binary => Value::Bytes(array.as_binary::<i32>().value(row).to_vec()),
        DataType::Date32 => Value::Date(array.as_primitive::<Date32Type>().value(row)),
        DataType::Timestamp(TimeUnit::Millisecond, tz) => {
            let v = array.as_primitive::<TimestampMillisecondType>().value(row);
            if tz.is_some() { Value::TimestampMillis(v) } else { Value::LocalTimestampMillis(v) }
        }
        DataType::Timestamp(_, tz) => {
            let v = array.as_primitive::<TimestampMicrosecondType>().value(row);
            if tz.is_some() { Value::TimestampMicros(v) } else { Value::LocalTimestampMicros(v) }
        }
        DataType::Struct(fields) => {
            let s = array.as_struct();
            Value::Record(
                fields
                    .iter()
                    .zip(s.columns())
                    .map(|(f, col)| (avro_name(f.name()), field_value(col, f, row)))
                    .collect(),
            )
        }
        DataType::List(item) => {
            let items = array.as_list::<i32>().value(row);
            Value::Array((0..items.len()).map(|i| field_value(&items, item, i)).collect())
        }
        DataType::Map(entries, _) => {
            let (map, DataType::Struct(kv)) = (array.as_map(), entries.data_type()) else { return Value::Null };
            let Some(value_field) = kv.get(1) else { return Value::Null };
            let entry = map.value(row);
            let (keys, values) = (entry.column(0).as_string::<i32>(), entry.column(1));
            Value::Map(
                (0..entry.len()).map(|i| (keys.value(i).to_owned(), field_value(values, value_field, i))).collect(),
            )
        }
        // Two's complement, big-endian, as Avro's decimal wants; the scale is the schema's.
        DataType::Decimal128(..) => {
            Value::Decimal(apache_avro::Decimal::from(array.as_primitive::<Decimal128Type>().value(row).to_be_bytes()))
        }
        DataType::Decimal256(..) => {
            Value::Decimal(apache_avro::Decimal::from(array.as_primitive::<Decimal256Type>().value(row).to_be_bytes()))
        }
        DataType::Time64(_) => Value::TimeMicros(array.as_primitive::<Time64MicrosecondType>().value(row)),
        // Only `Null` is left among canonical types.
        _ => Value::Null,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use arrow_array::builder::{Int64Builder, ListBuilder};
    use arrow_array::{
        BooleanArray, Date32Array, Int8Array, StringArray, StructArray, TimestampMillisecondArray, UInt64Array,
    };

    fn batch() -> RecordBatch {
        let mut tags = ListBuilder::new(Int64Builder::new());
        tags.values().append_value(1);
        tags.values().append_value(2);
        tags.append(true);
        tags.append(false);
        let address = StructArray::from(vec![(
            Arc::new(Field::new("city", DataType::Utf8, true)),
            Arc::new(StringArray::from(vec![Some("Lyon"), None])) as ArrayRef,
        )]);
        RecordBatch::try_from_iter(vec![
            ("id", Arc::new(UInt64Array::from(vec![1, 2])) as ArrayRef),
            ("upper(name)", Arc::new(StringArray::from(vec![Some("ADA"), None])) as ArrayRef),
            ("small", Arc::new(Int8Array::from(vec![7, -7])) as ArrayRef),
            ("ok", Arc::new(BooleanArray::from(vec![true, false])) as ArrayRef),
            ("day", Arc::new(Date32Array::from(vec![20_000, 20_001])) as ArrayRef),
            ("_ts", Arc::new(TimestampMillisecondArray::from(vec![1_000, 2_000]).with_timezone("UTC")) as ArrayRef),
            ("tags", Arc::new(tags.finish()) as ArrayRef),
            ("address", Arc::new(address) as ArrayRef),
        ])
        .unwrap()
    }

    #[test]
    fn rows_round_trip_through_an_object_container_file() {
        let b = batch();
        let rows = AvroRows::new(&b.schema(), "orders").unwrap();
        let mut w = apache_avro::Writer::new(rows.schema(), Vec::new());
        for v in rows.values(&b).unwrap() {
            w.append(v).unwrap();
        }
        let bytes = w.into_inner().unwrap();
        let read: Vec<Value> =
            apache_avro::Reader::new(bytes.as_slice()).unwrap().map(|r| r.unwrap()).collect::<Vec<_>>();
        assert_eq!(read.len(), 2);
        let Value::Record(first) = &read[0] else { panic!("{:?}", read[0]) };
        let get = |name: &str| first.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap();
        // Columns without nulls are not nullable here, so they are plain values.
        assert_eq!(get("id"), Value::Long(1));
        assert_eq!(get("upper_name_"), Value::Union(1, Box::new(Value::String("ADA".into()))));
        assert_eq!(get("small"), Value::Int(7));
        assert_eq!(get("_ts"), Value::TimestampMillis(1_000));
        assert_eq!(
            get("tags"),
            Value::Union(
                1,
                Box::new(Value::Array(vec![
                    Value::Union(1, Box::new(Value::Long(1))),
                    Value::Union(1, Box::new(Value::Long(2)))
                ]))
            )
        );
        let Value::Record(second) = &read[1] else { panic!() };
        assert_eq!(second[1], ("upper_name_".into(), Value::Union(0, Box::new(Value::Null))));
        assert_eq!(second[6], ("tags".into(), Value::Union(0, Box::new(Value::Null))));
    }

    #[test]
    fn decimals_maps_and_times_are_written_natively() {
        use arrow_array::builder::{MapBuilder, StringBuilder};
        use arrow_array::{Decimal128Array, Decimal256Array, Time64MicrosecondArray};
        let mut attrs = MapBuilder::new(None, StringBuilder::new(), Int64Builder::new());
        attrs.keys().append_value("a");
        attrs.values().append_value(1);
        attrs.append(true).unwrap();
        let big = arrow_buffer::i256::from_string("-12345678901234567890123456789012345678901234").unwrap();
        let b = RecordBatch::try_from_iter(vec![
            (
                "amount",
                Arc::new(Decimal128Array::from(vec![123_456_789_012_345_678]).with_precision_and_scale(20, 4).unwrap())
                    as ArrayRef,
            ),
            ("big", Arc::new(Decimal256Array::from(vec![big]).with_precision_and_scale(60, 10).unwrap()) as ArrayRef),
            ("attrs", Arc::new(attrs.finish()) as ArrayRef),
            ("at", Arc::new(Time64MicrosecondArray::from(vec![36_672_500_000])) as ArrayRef),
        ])
        .unwrap();
        let rows = AvroRows::new(&b.schema(), "t").unwrap();
        let schema = serde_json::to_string(rows.schema()).unwrap();
        assert!(schema.contains(r#""logicalType":"decimal""#) && schema.contains(r#""precision":20"#), "{schema}");
        assert!(schema.contains(r#""type":"map""#), "{schema}");
        let mut w = apache_avro::Writer::new(rows.schema(), Vec::new());
        for v in rows.values(&b).unwrap() {
            w.append(v).unwrap();
        }
        let bytes = w.into_inner().unwrap();
        let read: Vec<Value> = apache_avro::Reader::new(bytes.as_slice()).unwrap().map(|r| r.unwrap()).collect();
        let Value::Record(row) = &read[0] else { panic!("{:?}", read[0]) };
        let Value::Decimal(d) = &row[0].1 else { panic!("{:?}", row[0]) };
        let unscaled = <Vec<u8>>::try_from(d).unwrap();
        let mut be = [0u8; 16];
        be[16 - unscaled.len()..].copy_from_slice(&unscaled);
        assert_eq!(i128::from_be_bytes(be), 123_456_789_012_345_678);
        let Value::Decimal(d) = &row[1].1 else { panic!("{:?}", row[1]) };
        let mut be = [0xffu8; 32];
        let unscaled = <Vec<u8>>::try_from(d).unwrap();
        be[32 - unscaled.len()..].copy_from_slice(&unscaled);
        assert_eq!(arrow_buffer::i256::from_be_bytes(be), big);
        let one = Value::Union(1, Box::new(Value::Long(1)));
        assert_eq!(row[2].1, Value::Map([("a".to_owned(), one)].into_iter().collect()));
        assert_eq!(row[3].1, Value::TimeMicros(36_672_500_000));
    }

    #[test]
    fn uuid_columns_carry_the_uuid_logical_type() {
        let t = crate::schema::ColumnType::Uuid;
        let field = t.field("ref");
        let schema = Arc::new(Schema::new(vec![field]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(vec![Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), None]))],
        )
        .unwrap();
        let rows = AvroRows::new(&schema, "r").unwrap();
        let text = serde_json::to_string(rows.schema()).unwrap();
        assert!(text.contains(r#"{"type":"string","logicalType":"uuid"}"#), "{text}");
        let mut w = apache_avro::Writer::new(rows.schema(), Vec::new());
        for v in rows.values(&b).unwrap() {
            w.append(v).unwrap();
        }
        let bytes = w.into_inner().unwrap();
        let read: Vec<Value> = apache_avro::Reader::new(&bytes[..]).unwrap().map(Result::unwrap).collect();
        let Value::Record(fields) = &read[0] else { panic!("{read:?}") };
        let Value::Union(1, v) = &fields[0].1 else { panic!("{fields:?}") };
        let Value::Uuid(u) = &**v else { panic!("read back as {v:?}") };
        assert_eq!(u.to_string(), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    }

    #[test]
    fn fingerprints_follow_the_schema() {
        let b = batch();
        let a = AvroRows::new(&b.schema(), "orders").unwrap();
        assert_eq!(a.fingerprint(), AvroRows::new(&b.schema(), "orders").unwrap().fingerprint());
        let fewer = b.project(&[0, 1]).unwrap();
        assert_ne!(a.fingerprint(), AvroRows::new(&fewer.schema(), "orders").unwrap().fingerprint());
    }

    #[test]
    fn clashing_names_are_refused() {
        let b = RecordBatch::try_from_iter(vec![
            ("a b", Arc::new(StringArray::from(vec!["x"])) as ArrayRef),
            ("a_b", Arc::new(StringArray::from(vec!["y"])) as ArrayRef),
        ])
        .unwrap();
        let e = AvroRows::new(&b.schema(), "t").unwrap_err().to_string();
        assert!(e.contains("a_b") && e.contains("alias"), "{e}");
        assert_eq!(avro_name("9lives"), "_9lives");
    }
}
