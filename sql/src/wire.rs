//! The types payloads carry versus the types of the `source` table.
//!
//! arrow-json decodes most declared types directly (structs, lists, maps, decimals, times,
//! timestamps in any unit). Three need a step around it:
//!
//! - `bytes` arrive as base64 text (what Kafka Connect's JSON converter and Debezium write) or
//!   PostgreSQL's `\x` hex, which arrow-json does not read: they are decoded as text, then
//!   turned into binary column by column ([`finish`]);
//! - `uuid` arrives as text and is checked for its form in the same pass;
//! - (`decimal(p,s)` is decoded as declared: arrow-json would cut digits past the scale
//!   without a word, so a payload holding one is refused before it is decoded — see
//!   [`crate::precheck`]);
//! - `json` is any JSON value kept as its text, which no arrow-json type accepts: a flow that
//!   declares `json` anywhere parses each payload into a `serde_json::Value` first and replaces
//!   those values by their text ([`json_to_text`]). That costs an allocation per record, so only
//!   flows with `json` columns pay it.
//!
//! A payload that does not fit is described by [`mismatch`], which names the path
//! (`customer.address.city: expected string, got number`).

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, BinaryArray, ListArray, MapArray, StringArray, StructArray};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use base64::Engine;
use serde_json::Value;
use sluice_core::schema::{ColumnType, RowSchema};

/// The type arrow-json decodes a column of type `t` into.
pub(crate) fn wire_type(t: &ColumnType) -> DataType {
    if !needs_finish(t) {
        return t.arrow();
    }
    match t {
        ColumnType::Bytes | ColumnType::Uuid => DataType::Utf8,
        ColumnType::Struct(fields) => {
            DataType::Struct(fields.iter().map(|(n, t)| wire_field(n, t)).collect::<Fields>())
        }
        ColumnType::List(item) => DataType::List(Arc::new(wire_field("item", item))),
        ColumnType::Map(value) => DataType::Map(
            Arc::new(Field::new(
                "entries",
                DataType::Struct(Fields::from(vec![
                    Field::new("key", DataType::Utf8, false),
                    wire_field("value", value),
                ])),
                false,
            )),
            false,
        ),
        other => other.arrow(),
    }
}

/// A wire field: the declared field itself (extension markers and all) when nothing inside
/// it needs finishing, so that finished and unfinished columns compare equal to the row's.
fn wire_field(name: &str, t: &ColumnType) -> Field {
    if needs_finish(t) { Field::new(name, wire_type(t), true) } else { t.field(name) }
}

/// The row as arrow-json decodes it.
pub(crate) fn wire_schema(row: &RowSchema) -> SchemaRef {
    Arc::new(Schema::new(row.columns.iter().map(|(n, t)| wire_field(n, t)).collect::<Vec<_>>()))
}

/// Whether a column of this type needs [`finish`] after decoding.
pub(crate) fn needs_finish(t: &ColumnType) -> bool {
    t.contains(&|t| matches!(t, ColumnType::Bytes | ColumnType::Uuid))
}

/// Whether a row with these columns takes the `serde_json::Value` path ([`json_to_text`]).
pub(crate) fn has_json(row: &RowSchema) -> bool {
    row.columns.iter().any(|(_, t)| t.contains(&|t| *t == ColumnType::Json))
}

/// Turns a decoded wire array into the column type's array: base64 text into bytes, uuids
/// checked; the array's nulls are kept. `path` names the column for errors.
pub(crate) fn finish(array: &ArrayRef, t: &ColumnType, path: &str) -> Result<ArrayRef, String> {
    if !needs_finish(t) {
        return Ok(array.clone());
    }
    match t {
        ColumnType::Bytes => {
            let text = array.as_any().downcast_ref::<StringArray>().ok_or_else(|| format!("{path}: not text"))?;
            let engine = base64::engine::general_purpose::STANDARD;
            let mut values = Vec::with_capacity(text.len());
            for (i, v) in text.iter().enumerate() {
                values.push(match v {
                    None => None,
                    // PostgreSQL's own text form (`\x6869`, what `row_to_json` gives for bytea)
                    // cannot be base64, which has no backslash.
                    Some(s) if s.starts_with("\\x") => Some(
                        hex::decode(&s[2..]).map_err(|_| format!("{path}: row {i}: `{}` is not \\x-hex", clip(s)))?,
                    ),
                    Some(s) => Some(
                        engine.decode(s).map_err(|e| format!("{path}: row {i}: `{}` is not base64: {e}", clip(s)))?,
                    ),
                });
            }
            Ok(Arc::new(BinaryArray::from_iter(values)))
        }
        ColumnType::Uuid => {
            let text = array.as_any().downcast_ref::<StringArray>().ok_or_else(|| format!("{path}: not text"))?;
            if let Some(bad) = text.iter().flatten().find(|s| !is_uuid(s)) {
                return Err(format!("{path}: `{}` is not a UUID (8-4-4-4-12 hex digits)", clip(bad)));
            }
            Ok(array.clone())
        }
        ColumnType::Struct(fields) => {
            let s = array.as_any().downcast_ref::<StructArray>().ok_or_else(|| format!("{path}: not a struct"))?;
            let columns = fields
                .iter()
                .zip(s.columns())
                .map(|((n, t), c)| finish(c, t, &join(path, n)))
                .collect::<Result<Vec<_>, _>>()?;
            let DataType::Struct(target) = t.arrow() else { return Err(format!("{path}: not a struct type")) };
            StructArray::try_new(target, columns, s.nulls().cloned())
                .map(|a| Arc::new(a) as ArrayRef)
                .map_err(|e| e.to_string())
        }
        ColumnType::List(item) => {
            let l = array.as_any().downcast_ref::<ListArray>().ok_or_else(|| format!("{path}: not a list"))?;
            let values = finish(l.values(), item, &format!("{path}[]"))?;
            let DataType::List(target) = t.arrow() else { return Err(format!("{path}: not a list type")) };
            ListArray::try_new(target, l.offsets().clone(), values, l.nulls().cloned())
                .map(|a| Arc::new(a) as ArrayRef)
                .map_err(|e| e.to_string())
        }
        ColumnType::Map(value) => {
            let m = array.as_any().downcast_ref::<MapArray>().ok_or_else(|| format!("{path}: not a map"))?;
            let values = finish(m.values(), value, &format!("{path}{{}}"))?;
            let DataType::Map(entries, sorted) = t.arrow() else { return Err(format!("{path}: not a map type")) };
            let DataType::Struct(entry_fields) = entries.data_type() else { return Err(format!("{path}: bad map")) };
            let entries_array = StructArray::try_new(entry_fields.clone(), vec![m.keys().clone(), values], None)
                .map_err(|e| e.to_string())?;
            MapArray::try_new(entries, m.offsets().clone(), entries_array, m.nulls().cloned(), sorted)
                .map(|a| Arc::new(a) as ArrayRef)
                .map_err(|e| e.to_string())
        }
        _ => Ok(array.clone()),
    }
}

/// `8-4-4-4-12` hex digits.
fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter()
            .enumerate()
            .all(|(i, c)| if matches!(i, 8 | 13 | 18 | 23) { *c == b'-' } else { c.is_ascii_hexdigit() })
}

/// A value shortened for an error message.
fn clip(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

/// Replaces the values at `json` positions of `t` inside `v` by their JSON text.
pub(crate) fn json_to_text(v: &mut Value, t: &ColumnType) {
    match (t, v) {
        (_, Value::Null) => {}
        (ColumnType::Json, v) => *v = Value::String(v.to_string()),
        (ColumnType::Struct(fields), Value::Object(o)) => {
            for (n, t) in fields {
                if let Some(v) = o.get_mut(n) {
                    json_to_text(v, t);
                }
            }
        }
        (ColumnType::List(item), Value::Array(a)) => a.iter_mut().for_each(|v| json_to_text(v, item)),
        (ColumnType::Map(value), Value::Object(o)) => o.values_mut().for_each(|v| json_to_text(v, value)),
        _ => {}
    }
}

/// The first place `v` does not fit `t`, as `path: expected …, got …`; `None` if it fits as
/// far as shapes go (a value can still be refused for its content, e.g. a bad timestamp).
pub(crate) fn mismatch(v: &Value, t: &ColumnType, path: &str) -> Option<String> {
    let expected = match (t, v) {
        (_, Value::Null) | (ColumnType::Json, _) => return None,
        (ColumnType::Struct(fields), Value::Object(o)) => {
            return fields.iter().find_map(|(n, t)| o.get(n).and_then(|v| mismatch(v, t, &join(path, n))));
        }
        (ColumnType::List(item), Value::Array(a)) => {
            return a.iter().enumerate().find_map(|(i, v)| mismatch(v, item, &format!("{path}[{i}]")));
        }
        (ColumnType::Map(value), Value::Object(o)) => {
            return o.iter().find_map(|(k, v)| mismatch(v, value, &format!("{path}[{k:?}]")));
        }
        (ColumnType::Bool, Value::Bool(_)) => return None,
        // arrow-json reads numbers written as text too; its own message says when one is not.
        (ColumnType::Int32 | ColumnType::Int64 | ColumnType::Float64, Value::Number(_) | Value::String(_)) => {
            return None;
        }
        (ColumnType::Decimal { .. }, Value::Number(_) | Value::String(_)) => return None,
        (ColumnType::Timestamp { .. } | ColumnType::Date | ColumnType::Time, Value::Number(_) | Value::String(_)) => {
            return None;
        }
        (ColumnType::String | ColumnType::Uuid | ColumnType::Bytes, Value::String(_)) => return None,
        (ColumnType::Struct(_), _) => "an object",
        (ColumnType::List(_), _) => "an array",
        (ColumnType::Map(_), _) => "an object",
        (ColumnType::Bool, _) => "true or false",
        (ColumnType::Int32 | ColumnType::Int64 | ColumnType::Float64, _) => "a number",
        (ColumnType::Decimal { .. }, _) => "a number or its text",
        (ColumnType::Timestamp { .. } | ColumnType::Date | ColumnType::Time, _) => "a number or text",
        (ColumnType::String | ColumnType::Uuid, _) => "text",
        (ColumnType::Bytes, _) => "base64 text",
    };
    Some(format!("{path}: expected {expected} ({t}), got {}", kind(v)))
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() { name.to_owned() } else { format!("{path}.{name}") }
}

/// What a JSON value is, in words.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ty(s: &str) -> ColumnType {
        ColumnType::parse(s).unwrap()
    }

    #[test]
    fn mismatches_name_the_path() {
        let t = ty("struct<customer: struct<address: struct<city: string>>, items: list<struct<sku: int64>>>");
        let v: Value = serde_json::from_str(r#"{"customer":{"address":{"city":7}},"items":[]}"#).unwrap();
        assert_eq!(mismatch(&v, &t, "").unwrap(), "customer.address.city: expected text (string), got a number");
        let v: Value = serde_json::from_str(r#"{"items":[{"sku":1},{"sku":true}]}"#).unwrap();
        assert_eq!(mismatch(&v, &t, "").unwrap(), "items[1].sku: expected a number (int64), got a boolean");
        let v: Value = serde_json::from_str(r#"{"customer":null,"items":[{"sku":1}],"extra":{}}"#).unwrap();
        assert_eq!(mismatch(&v, &t, ""), None);
    }

    #[test]
    fn json_positions_become_text() {
        let t = ty("struct<doc: json, more: list<json>, n: int64>");
        let mut v: Value = serde_json::from_str(r#"{"doc":{"a":[1,2]},"more":[1,"x",null],"n":3}"#).unwrap();
        json_to_text(&mut v, &t);
        assert_eq!(v.to_string(), r#"{"doc":"{\"a\":[1,2]}","more":["1","\"x\"",null],"n":3}"#);
    }

    #[test]
    fn bytes_and_uuids_are_finished_inside_nesting() {
        let t = ty("list<struct<b: bytes, u: uuid>>");
        let rows = r#"{"x":[{"b":"aGk=","u":"123e4567-e89b-12d3-a456-426614174000"},{"b":null,"u":null}]}"#;
        let schema = Arc::new(Schema::new(vec![wire_field("x", &t)]));
        let mut d = arrow_json::ReaderBuilder::new(schema).build_decoder().unwrap();
        d.decode(rows.as_bytes()).unwrap();
        let batch = d.flush().unwrap().unwrap();
        let done = finish(batch.column(0), &t, "x").unwrap();
        assert_eq!(done.data_type(), &t.arrow());
        let list = done.as_any().downcast_ref::<ListArray>().unwrap();
        let s = list.values().as_any().downcast_ref::<StructArray>().unwrap();
        let b = s.column(0).as_any().downcast_ref::<BinaryArray>().unwrap();
        assert_eq!(b.value(0), b"hi");
        assert!(b.is_null(1));

        let bad = r#"{"x":[{"b":"aGk=","u":"not-a-uuid"}]}"#;
        let schema = Arc::new(Schema::new(vec![wire_field("x", &t)]));
        let mut d = arrow_json::ReaderBuilder::new(schema).build_decoder().unwrap();
        d.decode(bad.as_bytes()).unwrap();
        let e = finish(d.flush().unwrap().unwrap().column(0), &t, "x").unwrap_err();
        assert!(e.contains("x[].u: `not-a-uuid` is not a UUID"), "{e}");
    }
}
