//! Declared row schemas: the columns a flow's SQL sees, written in config as `name: type`.

use std::fmt;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

use crate::error::Invalid;

/// A column type as written in config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// `bool`
    Bool,
    /// `int32`
    Int32,
    /// `int64`
    Int64,
    /// `float64`
    Float64,
    /// `string`
    String,
    /// `timestamp`: milliseconds, UTC; accepts RFC 3339 strings or epoch milliseconds.
    Timestamp,
    /// `date`
    Date,
}

impl ColumnType {
    /// The names accepted in config, for error messages.
    pub const NAMES: &'static str = "bool, int32, int64, float64, string, timestamp, date";

    /// Parses a config type name.
    pub fn parse(s: &str) -> Option<ColumnType> {
        Some(match s {
            "bool" | "boolean" => ColumnType::Bool,
            "int32" | "int" => ColumnType::Int32,
            "int64" | "bigint" | "long" => ColumnType::Int64,
            "float64" | "double" | "float" => ColumnType::Float64,
            "string" | "text" | "utf8" => ColumnType::String,
            "timestamp" => ColumnType::Timestamp,
            "date" => ColumnType::Date,
            _ => return None,
        })
    }

    /// The Arrow type the column decodes into.
    pub fn arrow(self) -> DataType {
        match self {
            ColumnType::Bool => DataType::Boolean,
            ColumnType::Int32 => DataType::Int32,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::String => DataType::Utf8,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            ColumnType::Date => DataType::Date32,
        }
    }
}

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
        Arc::new(Schema::new(self.columns.iter().map(|(n, t)| Field::new(n, t.arrow(), true)).collect::<Vec<_>>()))
    }
}

impl RowSchema {
    /// The columns of an Avro record schema (an `.avsc` file): its fields, or the fields of its
    /// `after` record when it is a change envelope. Nullable unions read as their other branch.
    pub fn from_avro(schema: &apache_avro::Schema) -> Result<RowSchema, Invalid> {
        use apache_avro::Schema as A;
        fn strip(s: &A) -> &A {
            match s {
                A::Union(u) => u.variants().iter().find(|v| !matches!(v, A::Null)).map_or(s, strip),
                other => other,
            }
        }
        let A::Record(record) = schema else { return Err("the Avro schema is not a record".into()) };
        let fields = match record.fields.iter().find(|f| f.name == "after").map(|f| strip(&f.schema)) {
            Some(A::Record(after)) if record.fields.iter().any(|f| f.name == "op") => &after.fields,
            _ => &record.fields,
        };
        let mut columns = Vec::new();
        for f in fields {
            let t = match strip(&f.schema) {
                A::Boolean => ColumnType::Bool,
                A::Int => ColumnType::Int32,
                A::Long => ColumnType::Int64,
                A::Float | A::Double => ColumnType::Float64,
                A::String | A::Enum(_) | A::Uuid => ColumnType::String,
                A::TimestampMillis
                | A::TimestampMicros
                | A::TimestampNanos
                | A::LocalTimestampMillis
                | A::LocalTimestampMicros
                | A::LocalTimestampNanos => ColumnType::Timestamp,
                A::Date => ColumnType::Date,
                other => {
                    return Err(format!(
                        "field `{}`: Avro type {other:?} has no column type; declare the columns instead",
                        f.name
                    )
                    .into());
                }
            };
            columns.push((f.name.clone(), t));
        }
        Ok(RowSchema { columns })
    }

    /// Columns inferred from sample JSON lines (the fields of every object, in first-seen
    /// order): integers, floats, booleans and text; a field whose values mix integers and
    /// floats is a float. Nested objects and arrays have no column type, so a sample with them
    /// is refused, naming the field.
    pub fn infer_from_json_lines(text: &str) -> Result<RowSchema, Invalid> {
        let reader = std::io::BufReader::new(text.as_bytes());
        let (schema, n) = arrow_json::reader::infer_json_schema(reader, None).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the sample has no records".into());
        }
        let mut columns = Vec::new();
        for f in schema.fields() {
            let t = match f.data_type() {
                DataType::Boolean => ColumnType::Bool,
                DataType::Int64 => ColumnType::Int64,
                DataType::Float64 => ColumnType::Float64,
                DataType::Utf8 | DataType::Null => ColumnType::String,
                other => {
                    return Err(format!(
                        "field `{}` holds {other} values; inferred columns are scalars only (declare the columns, or keep the field as text)",
                        f.name()
                    ).into());
                }
            };
            columns.push((f.name().clone(), t));
        }
        Ok(RowSchema { columns })
    }
}

impl<'de> Deserialize<'de> for RowSchema {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RowSchema;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a map of column name to type ({})", ColumnType::NAMES)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RowSchema, A::Error> {
                let mut columns = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    let ty: String = map.next_value()?;
                    let Some(t) = ColumnType::parse(&ty) else {
                        return Err(de::Error::custom(format!(
                            "column `{name}`: unknown type `{ty}`; expected one of {}",
                            ColumnType::NAMES
                        )));
                    };
                    columns.push((name, t));
                }
                Ok(RowSchema { columns })
            }
        }
        deserializer.deserialize_map(V)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn columns_from_an_avro_schema_and_from_a_sample() {
        let avsc = r#"{"type":"record","name":"o","fields":[
            {"name":"id","type":"long"},{"name":"name","type":["null","string"]},
            {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
            {"name":"day","type":{"type":"int","logicalType":"date"}},{"name":"ok","type":"boolean"}]}"#;
        let s = RowSchema::from_avro(&apache_avro::Schema::parse_str(avsc).unwrap()).unwrap();
        assert_eq!(
            s.columns,
            vec![
                ("id".into(), ColumnType::Int64),
                ("name".into(), ColumnType::String),
                ("at".into(), ColumnType::Timestamp),
                ("day".into(), ColumnType::Date),
                ("ok".into(), ColumnType::Bool)
            ]
        );
        let bad = r#"{"type":"record","name":"o","fields":[{"name":"tags","type":{"type":"array","items":"string"}}]}"#;
        let e = RowSchema::from_avro(&apache_avro::Schema::parse_str(bad).unwrap()).unwrap_err();
        assert!(e.0.contains("`tags`"), "{e}");

        let s =
            RowSchema::infer_from_json_lines("{\"id\":1,\"v\":1}\n{\"id\":2,\"v\":2.5,\"name\":\"x\",\"ok\":true}\n")
                .unwrap();
        assert_eq!(
            s.columns,
            vec![
                ("id".into(), ColumnType::Int64),
                ("v".into(), ColumnType::Float64),
                ("name".into(), ColumnType::String),
                ("ok".into(), ColumnType::Bool)
            ]
        );
        let e = RowSchema::infer_from_json_lines("{\"id\":1,\"tags\":[1]}\n").unwrap_err();
        assert!(e.0.contains("`tags`"), "{e}");
    }
}
