//! Declared row schemas: the columns a flow's SQL sees, written in config as `name: type`
//! ([`types`] has the types), read from an Avro schema, or inferred from sample JSON lines.

mod types;

use std::fmt;
use std::sync::Arc;

use arrow_schema::{DataType, Schema, SchemaRef, TimeUnit};
use serde::de::{Deserialize, Deserializer};

use self::types::NamedTypes;
pub use self::types::{ColumnType, EXTENSION_KEY, JSON_EXTENSION, MAX_DECIMAL_PRECISION, UUID_EXTENSION};
use crate::error::Invalid;

/// A flow's input columns, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RowSchema {
    /// `(name, type)` pairs in declaration order.
    pub columns: Vec<(String, ColumnType)>,
}

impl RowSchema {
    /// Builds a schema from pairs.
    pub fn new(columns: Vec<(String, ColumnType)>) -> Self {
        RowSchema { columns }
    }

    /// The Arrow schema of the row (all columns nullable: a delete has no `after`).
    pub fn arrow(&self) -> SchemaRef {
        Arc::new(Schema::new(self.columns.iter().map(|(n, t)| t.field(n)).collect::<Vec<_>>()))
    }

    /// The columns of an Avro record schema (an `.avsc` file): its fields, or the fields of its
    /// `after` record when it is a change envelope. Nullable unions read as their other branch;
    /// records are structs, arrays lists, maps maps; the logical types decimal, uuid, date,
    /// time and timestamps keep their meaning.
    pub fn from_avro(schema: &apache_avro::Schema) -> Result<RowSchema, Invalid> {
        use apache_avro::Schema as A;
        let A::Record(record) = schema else { return Err("the Avro schema is not a record".into()) };
        let fields = match record.fields.iter().find(|f| f.name == "after").map(|f| strip_null(&f.schema)) {
            Some(A::Record(after)) if record.fields.iter().any(|f| f.name == "op") => &after.fields,
            _ => &record.fields,
        };
        let columns = fields
            .iter()
            .map(|f| Ok((f.name.clone(), avro_type(&f.schema).map_err(|e| format!("field `{}`{e}", f.name))?)))
            .collect::<Result<_, String>>()?;
        Ok(RowSchema { columns })
    }

    /// Columns inferred from sample JSON lines (the fields of every object, in first-seen
    /// order): integers, floats, booleans and text, objects as structs and arrays as lists of
    /// what they hold; a field whose values mix integers and floats is a float, and one whose
    /// values mix shapes (an object here, text there) is `json`.
    pub fn infer_from_json_lines(text: &str) -> Result<RowSchema, Invalid> {
        let reader = std::io::BufReader::new(text.as_bytes());
        let (schema, n) =
            arrow_json::reader::infer_json_schema(reader, None).map_err(|e| inferred_mix(&e.to_string()))?;
        if n == 0 {
            return Err("the sample has no records".into());
        }
        let columns = schema
            .fields()
            .iter()
            .map(|f| Ok((f.name().clone(), inferred(f.data_type()).map_err(|e| format!("field `{}`{e}", f.name()))?)))
            .collect::<Result<_, String>>()?;
        Ok(RowSchema { columns })
    }
}

/// arrow-json refuses a sample whose field is an object in one line and a scalar in another;
/// say what to do about it.
fn inferred_mix(e: &str) -> String {
    format!("{e} (a field whose shape varies between records can be declared `json`)")
}

/// The column type of an inferred Arrow type.
fn inferred(t: &DataType) -> Result<ColumnType, String> {
    Ok(match t {
        DataType::Boolean => ColumnType::Bool,
        DataType::Int64 => ColumnType::Int64,
        DataType::Float64 => ColumnType::Float64,
        DataType::Utf8 | DataType::Null => ColumnType::String,
        DataType::List(item) => ColumnType::List(Box::new(inferred(item.data_type()).map_err(|e| format!("[]{e}"))?)),
        DataType::Struct(fields) => ColumnType::Struct(
            fields
                .iter()
                .map(|f| Ok((f.name().clone(), inferred(f.data_type()).map_err(|e| format!(".{}{e}", f.name()))?)))
                .collect::<Result<_, String>>()?,
        ),
        other => return Err(format!(": inferred as {other}, which has no column type; declare the columns")),
    })
}

/// The branch of a `["null", T]` union that is not null.
fn strip_null(s: &apache_avro::Schema) -> &apache_avro::Schema {
    match s {
        apache_avro::Schema::Union(u) => u
            .variants()
            .iter()
            .find(|v| !matches!(v, apache_avro::Schema::Null))
            .filter(|_| u.variants().len() == 2)
            .map_or(s, strip_null),
        other => other,
    }
}

/// The column type of an Avro field's schema; an error is the path below the field and why.
fn avro_type(schema: &apache_avro::Schema) -> Result<ColumnType, String> {
    use apache_avro::Schema as A;
    Ok(match strip_null(schema) {
        A::Boolean => ColumnType::Bool,
        A::Int => ColumnType::Int32,
        A::Long => ColumnType::Int64,
        A::Float | A::Double => ColumnType::Float64,
        A::String | A::Enum(_) => ColumnType::String,
        A::Uuid => ColumnType::Uuid,
        A::Bytes | A::Fixed(_) => ColumnType::Bytes,
        A::Decimal(d) if d.precision <= usize::from(MAX_DECIMAL_PRECISION) => {
            ColumnType::Decimal { precision: d.precision as u8, scale: d.scale as i8 }
        }
        A::TimestampMillis => ColumnType::Timestamp { unit: TimeUnit::Millisecond, zone: true },
        A::TimestampMicros => ColumnType::Timestamp { unit: TimeUnit::Microsecond, zone: true },
        A::TimestampNanos => ColumnType::Timestamp { unit: TimeUnit::Nanosecond, zone: true },
        A::LocalTimestampMillis => ColumnType::Timestamp { unit: TimeUnit::Millisecond, zone: false },
        A::LocalTimestampMicros => ColumnType::Timestamp { unit: TimeUnit::Microsecond, zone: false },
        A::LocalTimestampNanos => ColumnType::Timestamp { unit: TimeUnit::Nanosecond, zone: false },
        A::Date => ColumnType::Date,
        A::TimeMillis | A::TimeMicros => ColumnType::Time,
        A::Array(a) => ColumnType::List(Box::new(avro_type(&a.items).map_err(|e| format!("[]{e}"))?)),
        A::Map(m) => ColumnType::Map(Box::new(avro_type(&m.types).map_err(|e| format!("{{}}{e}"))?)),
        A::Record(r) => ColumnType::Struct(
            r.fields
                .iter()
                .map(|f| Ok((f.name.clone(), avro_type(&f.schema).map_err(|e| format!(".{}{e}", f.name))?)))
                .collect::<Result<_, String>>()?,
        ),
        other => {
            return Err(format!(": Avro type {other:?} has no column type; declare the columns instead"));
        }
    })
}

impl fmt::Display for RowSchema {
    /// One `name: type` line per column, as it could be written under `schema:`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, t) in &self.columns {
            writeln!(f, "{n}: {t}")?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for RowSchema {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(RowSchema { columns: NamedTypes::deserialize(deserializer)?.0 })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn types(s: &RowSchema) -> Vec<(String, String)> {
        s.columns.iter().map(|(n, t)| (n.clone(), t.to_string())).collect()
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(n, t)| ((*n).to_owned(), (*t).to_owned())).collect()
    }

    #[test]
    fn columns_from_an_avro_schema() {
        let avsc = r#"{"type":"record","name":"o","fields":[
            {"name":"id","type":"long"},{"name":"name","type":["null","string"]},
            {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
            {"name":"day","type":{"type":"int","logicalType":"date"}},{"name":"ok","type":"boolean"},
            {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":20,"scale":4}},
            {"name":"ref","type":{"type":"string","logicalType":"uuid"}},
            {"name":"tags","type":{"type":"array","items":"string"}},
            {"name":"attrs","type":["null",{"type":"map","values":"long"}]},
            {"name":"customer","type":{"type":"record","name":"c","fields":[
                {"name":"address","type":{"type":"record","name":"a","fields":[{"name":"city","type":"string"}]}}]}},
            {"name":"seen","type":{"type":"long","logicalType":"timestamp-micros"}}]}"#;
        let s = RowSchema::from_avro(&apache_avro::Schema::parse_str(avsc).unwrap()).unwrap();
        assert_eq!(
            types(&s),
            pairs(&[
                ("id", "int64"),
                ("name", "string"),
                ("at", "timestamp"),
                ("day", "date"),
                ("ok", "bool"),
                ("amount", "decimal(20,4)"),
                ("ref", "uuid"),
                ("tags", "list<string>"),
                ("attrs", "map<string, int64>"),
                ("customer", "struct<address: struct<city: string>>"),
                ("seen", "timestamp(us)"),
            ])
        );
        let bad = r#"{"type":"record","name":"o","fields":[{"name":"x","type":{"type":"array","items":"null"}}]}"#;
        let e = RowSchema::from_avro(&apache_avro::Schema::parse_str(bad).unwrap()).unwrap_err();
        assert!(e.0.contains("field `x`[]: Avro type Null"), "{e}");
    }

    #[test]
    fn columns_inferred_from_a_nested_sample() {
        let sample = concat!(
            r#"{"id":1,"v":1,"customer":{"address":{"city":"Paris"}},"items":[{"sku":1}]}"#,
            "\n",
            r#"{"id":2,"v":2.5,"name":"x","ok":true,"tags":["a"]}"#,
            "\n"
        );
        let s = RowSchema::infer_from_json_lines(sample).unwrap();
        assert_eq!(
            types(&s),
            pairs(&[
                ("id", "int64"),
                ("v", "float64"),
                ("customer", "struct<address: struct<city: string>>"),
                ("items", "list<struct<sku: int64>>"),
                ("name", "string"),
                ("ok", "bool"),
                ("tags", "list<string>"),
            ])
        );
        let e = RowSchema::infer_from_json_lines("{\"a\":{\"b\":1}}\n{\"a\":2}\n").unwrap_err();
        assert!(e.0.contains("declared `json`"), "{e}");
    }
}
