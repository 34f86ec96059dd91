//! Declared row schemas: the columns a flow's SQL sees, written in config as `name: type`.

use std::fmt;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

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
