//! Column types as written in config, and the Arrow types they decode into.
//!
//! A type is text for a scalar (`int64`, `decimal(10,2)`, `timestamp(us)`), and either text
//! (`list<string>`, `map<string, int64>`, `struct<name: string, age: int32>`) or a YAML map for
//! nesting (`{struct: {name: string}}`, `{list: {struct: {sku: int64}}}`, `{map: float64}`).
//! The YAML form reads better for deep structures; both mean the same.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, TimeUnit};
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

/// The field metadata key naming an Arrow extension type (Arrow's canonical key).
pub const EXTENSION_KEY: &str = "ARROW:extension:name";
/// The canonical Arrow extension for text holding one JSON value.
pub const JSON_EXTENSION: &str = "arrow.json";
/// sluice's marker for text holding a UUID (`8-4-4-4-12` hex), so sinks can write it natively.
pub const UUID_EXTENSION: &str = "sluice.uuid";

/// The largest decimal precision (Arrow's Decimal256).
pub const MAX_DECIMAL_PRECISION: u8 = 76;

/// A column type as written in config.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// An instant: `timestamp` (milliseconds), or `timestamp(s|ms|us|ns)`, shown in UTC; JSON
    /// gives it as RFC 3339 text or a number of units since the epoch. `timestamptz` is a
    /// synonym. With `zone: false` (`timestamp_ntz`), a wall-clock time without a zone.
    Timestamp {
        /// The resolution.
        unit: TimeUnit,
        /// Whether it is an instant (UTC) rather than a wall-clock time.
        zone: bool,
    },
    /// `date`
    Date,
    /// `time`: a time of day, in microseconds.
    Time,
    /// `decimal(p,s)`: exact, `p` digits of which `s` after the point (p ≤ 76).
    Decimal {
        /// Total digits.
        precision: u8,
        /// Digits after the point.
        scale: i8,
    },
    /// `json`: any JSON value, kept as its text (queryable with the JSON functions).
    Json,
    /// `bytes`: binary; base64 text in JSON.
    Bytes,
    /// `uuid`: text in the `8-4-4-4-12` form.
    Uuid,
    /// `struct<…>` / `{struct: {…}}`: named fields, in order.
    Struct(Vec<(String, ColumnType)>),
    /// `list<T>` / `{list: T}`
    List(Box<ColumnType>),
    /// `map<string, T>` / `{map: T}`: text keys.
    Map(Box<ColumnType>),
}

impl ColumnType {
    /// `timestamp`: milliseconds, UTC.
    pub const TIMESTAMP: ColumnType = ColumnType::Timestamp { unit: TimeUnit::Millisecond, zone: true };

    /// What can be written, for error messages.
    pub const NAMES: &'static str = "bool, int32, int64, float64, string, date, time, timestamp[(s|ms|us|ns)], \
         timestamp_ntz[(unit)], decimal(p,s), json, bytes, uuid, list<T>, map<string, T>, struct<name: T, …> \
         (or {list: T}, {map: T}, {struct: {name: T}})";

    /// Parses the text form.
    pub fn parse(s: &str) -> Result<ColumnType, String> {
        let mut p = Parser { text: s, at: 0 };
        let t = p.ty()?;
        p.space();
        if p.at < s.len() {
            return Err(format!("unexpected `{}` after the type in `{s}`", &s[p.at..]));
        }
        Ok(t)
    }

    /// The Arrow type the column decodes into.
    pub fn arrow(&self) -> DataType {
        match self {
            ColumnType::Bool => DataType::Boolean,
            ColumnType::Int32 => DataType::Int32,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::String | ColumnType::Json | ColumnType::Uuid => DataType::Utf8,
            ColumnType::Timestamp { unit, zone } => DataType::Timestamp(*unit, zone.then(|| "UTC".into())),
            ColumnType::Date => DataType::Date32,
            ColumnType::Time => DataType::Time64(TimeUnit::Microsecond),
            ColumnType::Decimal { precision, scale } if *precision <= 38 => DataType::Decimal128(*precision, *scale),
            ColumnType::Decimal { precision, scale } => DataType::Decimal256(*precision, *scale),
            ColumnType::Bytes => DataType::Binary,
            ColumnType::Struct(fields) => DataType::Struct(fields.iter().map(|(n, t)| t.field(n)).collect::<Fields>()),
            ColumnType::List(item) => DataType::List(Arc::new(item.field("item"))),
            ColumnType::Map(value) => DataType::Map(
                Arc::new(Field::new(
                    "entries",
                    DataType::Struct(Fields::from(vec![
                        Field::new("key", DataType::Utf8, false),
                        value.field("value"),
                    ])),
                    false,
                )),
                false,
            ),
        }
    }

    /// A nullable Arrow field of this type, with the extension marker a `json` or `uuid`
    /// column carries (sinks write those natively).
    pub fn field(&self, name: &str) -> Field {
        let f = Field::new(name, self.arrow(), true);
        match self {
            ColumnType::Json => f.with_metadata(HashMap::from([(EXTENSION_KEY.into(), JSON_EXTENSION.into())])),
            ColumnType::Uuid => f.with_metadata(HashMap::from([(EXTENSION_KEY.into(), UUID_EXTENSION.into())])),
            _ => f,
        }
    }

    /// Whether this type is, or holds somewhere inside, one matching `pred`.
    pub fn contains(&self, pred: &dyn Fn(&ColumnType) -> bool) -> bool {
        pred(self)
            || match self {
                ColumnType::Struct(fields) => fields.iter().any(|(_, t)| t.contains(pred)),
                ColumnType::List(t) | ColumnType::Map(t) => t.contains(pred),
                _ => false,
            }
    }
}

fn unit_name(unit: TimeUnit) -> &'static str {
    match unit {
        TimeUnit::Second => "s",
        TimeUnit::Millisecond => "ms",
        TimeUnit::Microsecond => "us",
        TimeUnit::Nanosecond => "ns",
    }
}

impl fmt::Display for ColumnType {
    /// The text form, which [`ColumnType::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnType::Bool => f.write_str("bool"),
            ColumnType::Int32 => f.write_str("int32"),
            ColumnType::Int64 => f.write_str("int64"),
            ColumnType::Float64 => f.write_str("float64"),
            ColumnType::String => f.write_str("string"),
            ColumnType::Timestamp { unit: TimeUnit::Millisecond, zone: true } => f.write_str("timestamp"),
            ColumnType::Timestamp { unit, zone: true } => write!(f, "timestamp({})", unit_name(*unit)),
            ColumnType::Timestamp { unit, zone: false } => write!(f, "timestamp_ntz({})", unit_name(*unit)),
            ColumnType::Date => f.write_str("date"),
            ColumnType::Time => f.write_str("time"),
            ColumnType::Decimal { precision, scale } => write!(f, "decimal({precision},{scale})"),
            ColumnType::Json => f.write_str("json"),
            ColumnType::Bytes => f.write_str("bytes"),
            ColumnType::Uuid => f.write_str("uuid"),
            ColumnType::List(t) => write!(f, "list<{t}>"),
            ColumnType::Map(t) => write!(f, "map<string, {t}>"),
            ColumnType::Struct(fields) => {
                f.write_str("struct<")?;
                for (i, (n, t)) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{n}: {t}")?;
                }
                f.write_str(">")
            }
        }
    }
}

/// A recursive-descent reader of the text form.
struct Parser<'a> {
    text: &'a str,
    at: usize,
}

impl Parser<'_> {
    fn space(&mut self) {
        while self.text[self.at..].starts_with(char::is_whitespace) {
            self.at += self.text[self.at..].chars().next().map_or(1, char::len_utf8);
        }
    }

    /// A name: letters, digits, `_` (a field name may also be any text in double quotes).
    fn word(&mut self) -> Result<String, String> {
        self.space();
        let rest = &self.text[self.at..];
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').ok_or_else(|| format!("unclosed `\"` in `{}`", self.text))?;
            self.at += end + 2;
            return Ok(quoted[..end].to_owned());
        }
        let len = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
        if len == 0 {
            return Err(format!("expected a name at `{rest}` in `{}`", self.text));
        }
        self.at += len;
        Ok(rest[..len].to_owned())
    }

    fn eat(&mut self, c: char) -> bool {
        self.space();
        if self.text[self.at..].starts_with(c) {
            self.at += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.eat(c) {
            return Ok(());
        }
        let rest = &self.text[self.at..];
        if rest.is_empty() && matches!(c, ')' | '>') {
            // The usual cause: `{zip: decimal(10,2)}` in YAML's flow style, which ends the
            // value at the comma.
            return Err(format!(
                "`{}` ends before its `{c}`; inside `{{…}}` YAML splits at commas: quote the type \
                 (\"decimal(10,2)\") or write it on a line of its own",
                self.text
            ));
        }
        Err(format!("expected `{c}` at `{rest}` in `{}`", self.text))
    }

    fn number(&mut self) -> Result<u32, String> {
        let w = self.word()?;
        w.parse().map_err(|_| format!("expected a number, found `{w}` in `{}`", self.text))
    }

    fn unit(&mut self) -> Result<TimeUnit, String> {
        if !self.eat('(') {
            return Ok(TimeUnit::Millisecond);
        }
        let u = match self.word()?.as_str() {
            "s" => TimeUnit::Second,
            "ms" => TimeUnit::Millisecond,
            "us" => TimeUnit::Microsecond,
            "ns" => TimeUnit::Nanosecond,
            other => return Err(format!("unknown time unit `{other}`; expected s, ms, us or ns")),
        };
        self.expect(')')?;
        Ok(u)
    }

    fn ty(&mut self) -> Result<ColumnType, String> {
        let name = self.word()?;
        Ok(match name.to_ascii_lowercase().as_str() {
            "bool" | "boolean" => ColumnType::Bool,
            "int32" | "int" | "integer" => ColumnType::Int32,
            "int64" | "bigint" | "long" => ColumnType::Int64,
            "float64" | "double" | "float" => ColumnType::Float64,
            "string" | "text" | "utf8" => ColumnType::String,
            "date" => ColumnType::Date,
            "time" => ColumnType::Time,
            "json" | "jsonb" => ColumnType::Json,
            "bytes" | "binary" | "bytea" => ColumnType::Bytes,
            "uuid" => ColumnType::Uuid,
            "timestamp" | "timestamptz" => ColumnType::Timestamp { unit: self.unit()?, zone: true },
            "timestamp_ntz" => ColumnType::Timestamp { unit: self.unit()?, zone: false },
            "decimal" | "numeric" => {
                self.expect('(')?;
                let precision = self.number()?;
                let scale = if self.eat(',') { self.number()? } else { 0 };
                self.expect(')')?;
                decimal(precision, scale)?
            }
            "list" | "array" => {
                self.expect('<')?;
                let item = self.ty()?;
                self.expect('>')?;
                ColumnType::List(Box::new(item))
            }
            "map" => {
                self.expect('<')?;
                let key = self.ty()?;
                if key != ColumnType::String {
                    return Err(format!("map keys are text: write map<string, T>, not map<{key}, …>"));
                }
                self.expect(',')?;
                let value = self.ty()?;
                self.expect('>')?;
                ColumnType::Map(Box::new(value))
            }
            "struct" => {
                self.expect('<')?;
                let mut fields: Vec<(String, ColumnType)> = Vec::new();
                loop {
                    let n = self.word()?;
                    self.expect(':')?;
                    let t = self.ty()?;
                    if fields.iter().any(|(f, _)| *f == n) {
                        return Err(format!("field `{n}` is named twice in `{}`", self.text));
                    }
                    fields.push((n, t));
                    if !self.eat(',') {
                        break;
                    }
                }
                self.expect('>')?;
                ColumnType::Struct(fields)
            }
            _ => return Err(format!("unknown type `{name}`; expected one of {}", ColumnType::NAMES)),
        })
    }
}

/// A checked `decimal(p,s)`.
fn decimal(precision: u32, scale: u32) -> Result<ColumnType, String> {
    if precision == 0 || precision > u32::from(MAX_DECIMAL_PRECISION) {
        return Err(format!("decimal precision {precision} is outside 1..={MAX_DECIMAL_PRECISION}"));
    }
    if scale > precision {
        return Err(format!("decimal scale {scale} is more than its precision {precision}"));
    }
    Ok(ColumnType::Decimal { precision: precision as u8, scale: scale as i8 })
}

impl<'de> Deserialize<'de> for ColumnType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ColumnType;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a column type: {}", ColumnType::NAMES)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ColumnType, E> {
                ColumnType::parse(v).map_err(E::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ColumnType, A::Error> {
                let Some(kind) = map.next_key::<String>()? else {
                    return Err(de::Error::custom("an empty map is no type; write {struct: …}, {list: …} or {map: …}"));
                };
                let t = match kind.as_str() {
                    "struct" => {
                        let fields: NamedTypes = map.next_value()?;
                        ColumnType::Struct(fields.0)
                    }
                    "list" => ColumnType::List(Box::new(map.next_value()?)),
                    "map" => ColumnType::Map(Box::new(map.next_value()?)),
                    other => {
                        return Err(de::Error::custom(format!(
                            "`{other}` is no nested type; write {{struct: …}}, {{list: …}} or {{map: …}}"
                        )));
                    }
                };
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(de::Error::custom(format!(
                        "a nested type is one of struct, list or map; `{extra}` is one too many"
                    )));
                }
                Ok(t)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// Named fields in order, as a YAML map: a struct's fields, or a row's columns.
pub(crate) struct NamedTypes(pub(crate) Vec<(String, ColumnType)>);

impl<'de> Deserialize<'de> for NamedTypes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NamedTypes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a map of name to type ({})", ColumnType::NAMES)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NamedTypes, A::Error> {
                let mut fields: Vec<(String, ColumnType)> = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    // The deserializer locates an error inside the value (config errors carry
                    // the path and line), so it is passed on as it is.
                    let t: ColumnType = map.next_value()?;
                    if fields.iter().any(|(f, _)| *f == name) {
                        return Err(de::Error::custom(format!("`{name}` is named twice")));
                    }
                    fields.push((name, t));
                }
                Ok(NamedTypes(fields))
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
    fn text_forms_read_back_as_written() {
        for text in [
            "bool",
            "int64",
            "timestamp",
            "timestamp(us)",
            "timestamp_ntz(ns)",
            "decimal(10,2)",
            "decimal(60,0)",
            "json",
            "bytes",
            "uuid",
            "time",
            "list<string>",
            "map<string, list<int64>>",
            "struct<name: string, address: struct<city: string>, items: list<struct<sku: int64>>>",
        ] {
            let t = ColumnType::parse(text).unwrap();
            assert_eq!(t.to_string(), text);
        }
        assert_eq!(ColumnType::parse("numeric(5)").unwrap(), ColumnType::Decimal { precision: 5, scale: 0 });
        assert_eq!(ColumnType::parse("decimal(38,4)").unwrap().arrow(), DataType::Decimal128(38, 4));
        assert_eq!(ColumnType::parse("decimal(39,4)").unwrap().arrow(), DataType::Decimal256(39, 4));
    }

    #[test]
    fn mistakes_say_what_is_wrong() {
        for (text, says) in [
            ("decimal(0,0)", "precision 0"),
            ("decimal(77,2)", "precision 77"),
            ("decimal(4,5)", "scale 5"),
            ("timestamp(h)", "time unit `h`"),
            ("list<string", "ends before its `>`"),
            ("map<int64, string>", "map keys are text"),
            ("struct<a: int64, a: string>", "`a` is named twice"),
            ("varchar", "unknown type `varchar`"),
            ("int64 extra", "unexpected `extra`"),
        ] {
            let e = ColumnType::parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn json_and_uuid_columns_carry_their_extension() {
        let f = ColumnType::Json.field("doc");
        assert_eq!(f.metadata().get(EXTENSION_KEY).map(String::as_str), Some(JSON_EXTENSION));
        assert_eq!(f.data_type(), &DataType::Utf8);
        let nested = ColumnType::parse("list<uuid>").unwrap();
        let DataType::List(item) = nested.arrow() else { panic!() };
        assert_eq!(item.metadata().get(EXTENSION_KEY).map(String::as_str), Some(UUID_EXTENSION));
        assert!(nested.contains(&|t| *t == ColumnType::Uuid));
    }
}
