//! Avro payloads (Confluent wire format) into the `source` batch: each datum is read with its
//! writer schema from the registry, turned into the JSON value the declared columns' decoder
//! reads (the same decoder JSON payloads go through, so every type means the same whatever
//! the format), and decoded in one go.
//!
//! A record is a change envelope when it has `op` and `after` fields (what Debezium's Avro
//! converter writes), otherwise it is the row itself (op `c`). A field converts when its Avro
//! value fits the column: ints into any integer or float column, `timestamp-*` logical types
//! or epoch milliseconds into any timestamp (rescaled to its unit), `decimal` into `decimal`
//! with the writer's scale, records into structs, arrays into lists, maps into maps, enums and
//! uuids into text, anything into `json`. A record that does not fit is rejected with the path
//! named; the rest of the batch goes on.

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::schema::{Name, NamesRef, ResolvedSchema};
use apache_avro::types::Value;
use arrow_schema::TimeUnit;
use base64::Engine;
use serde_json::Value as Json;
use sluice_core::avro::{RegistryError, SchemaRegistry, split_wire};
use sluice_core::connector::{InputMessage, RejectedRow};
use sluice_core::schema::ColumnType;

use crate::number_text::decimal_fits;

/// The rows a batch of Avro payloads held, as JSON values, with each one's op, change time and
/// message index.
#[derive(Default)]
pub(crate) struct AvroRows {
    pub(crate) values: Vec<Json>,
    pub(crate) ops: Vec<String>,
    pub(crate) ts: Vec<Option<i64>>,
    pub(crate) rows: Vec<u32>,
}

/// A writer schema and the named types it defines (for `Ref`s to them).
struct Writer<'a> {
    names: NamesRef<'a>,
}

impl<'a> Writer<'a> {
    fn new(schema: &'a Schema) -> Result<Writer<'a>, String> {
        let resolved = ResolvedSchema::try_from(schema).map_err(|e| e.to_string())?;
        Ok(Writer { names: resolved.get_names().clone() })
    }

    /// `s` itself, or the named schema it refers to.
    fn resolve(&self, s: &'a Schema) -> &'a Schema {
        match s {
            Schema::Ref { name } => {
                self.names.get(name).copied().or_else(|| lookup_short(&self.names, name)).unwrap_or(s)
            }
            other => other,
        }
    }
}

fn lookup_short<'a>(names: &NamesRef<'a>, name: &Name) -> Option<&'a Schema> {
    names.iter().find(|(n, _)| n.name == name.name).map(|(_, s)| *s)
}

fn kind(v: &Value) -> String {
    let text = format!("{v:?}");
    text.split(['(', ' ']).next().unwrap_or("value").to_lowercase()
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() { name.to_owned() } else { format!("{path}.{name}") }
}

/// `v` in `unit` when it is in `from`; `None` on overflow.
fn rescale(v: i64, from: TimeUnit, to: TimeUnit) -> Option<i64> {
    fn per_second(u: TimeUnit) -> i64 {
        match u {
            TimeUnit::Second => 1,
            TimeUnit::Millisecond => 1_000,
            TimeUnit::Microsecond => 1_000_000,
            TimeUnit::Nanosecond => 1_000_000_000,
        }
    }
    let (f, t) = (per_second(from), per_second(to));
    if t >= f { v.checked_mul(t / f) } else { Some(v.div_euclid(f / t)) }
}

/// A decimal's text from its two's-complement big-endian unscaled value and its scale.
fn decimal_text(unscaled: &[u8], scale: usize) -> Result<String, String> {
    if unscaled.len() > 32 {
        return Err(format!("a decimal of {} bytes is wider than 256 bits", unscaled.len()));
    }
    let fill = if unscaled.first().is_some_and(|b| b & 0x80 != 0) { 0xff } else { 0 };
    let mut be = [fill; 32];
    be[32 - unscaled.len()..].copy_from_slice(unscaled);
    let n = arrow_buffer::i256::from_be_bytes(be);
    let digits = n.wrapping_abs().to_string();
    let sign = if n.is_negative() { "-" } else { "" };
    if scale == 0 {
        return Ok(format!("{sign}{digits}"));
    }
    let digits = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = digits.split_at(digits.len() - scale);
    Ok(format!("{sign}{int}.{frac}"))
}

/// The JSON value column type `t` reads for Avro value `v` written with schema `s`.
fn to_json(w: &Writer<'_>, v: &Value, s: &Schema, t: &ColumnType, path: &str) -> Result<Json, String> {
    use ColumnType as C;
    let s = w.resolve(s);
    if let (Value::Union(i, inner), Schema::Union(u)) = (v, s) {
        let branch = u.variants().get(*i as usize).ok_or_else(|| format!("{path}: union branch {i} of none"))?;
        return to_json(w, inner, branch, t, path);
    }
    let unit = |from: TimeUnit, x: i64| match t {
        C::Timestamp { unit, .. } => {
            rescale(x, from, *unit).map(Json::from).ok_or_else(|| format!("{path}: timestamp {x} overflows"))
        }
        _ => Err(format!("{path}: a timestamp does not fit a {t} column")),
    };
    Ok(match (v, t) {
        (Value::Null, _) => Json::Null,
        (other, C::Json) => Json::try_from(other.clone()).map_err(|e| format!("{path}: {e}"))?,
        (Value::Boolean(b), C::Bool) => Json::Bool(*b),
        (Value::Int(i), C::Int32 | C::Int64 | C::Float64) => Json::from(*i),
        (Value::Long(i), C::Int64 | C::Float64) => Json::from(*i),
        (Value::Long(i), C::Int32) => {
            Json::from(i32::try_from(*i).map_err(|_| format!("{path}: {i} is out of int32 range"))?)
        }
        (Value::Float(f), C::Float64) => float(f64::from(*f), path)?,
        (Value::Double(f), C::Float64) => float(*f, path)?,
        (Value::String(x) | Value::Enum(_, x), C::String | C::Uuid) => Json::String(x.clone()),
        (Value::Uuid(u), C::String | C::Uuid) => Json::String(u.to_string()),
        (Value::Bytes(b) | Value::Fixed(_, b), C::Bytes) => {
            Json::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        // A writer's scale can exceed the column's: its digits past the column's scale are
        // checked here, as a JSON payload's are before decoding (arrow-json would cut them).
        (Value::Decimal(d), C::Decimal { precision, scale }) => {
            let Schema::Decimal(ds) = s else { return Err(format!("{path}: a decimal without a decimal schema")) };
            let bytes = <Vec<u8>>::try_from(d).map_err(|e| format!("{path}: {e}"))?;
            let text = decimal_text(&bytes, ds.scale).map_err(|e| format!("{path}: {e}"))?;
            decimal_fits(&text, *precision, *scale).map_err(|e| format!("{path}: {e}"))?;
            Json::String(text)
        }
        (Value::String(x), C::Decimal { precision, scale }) => {
            decimal_fits(x, *precision, *scale).map_err(|e| format!("{path}: {e}"))?;
            Json::String(x.clone())
        }
        (Value::Date(d), C::Date) => Json::from(*d),
        (Value::TimeMillis(x), C::Time) => Json::from(i64::from(*x) * 1000),
        (Value::TimeMicros(x), C::Time) => Json::from(*x),
        (Value::TimestampMillis(x) | Value::LocalTimestampMillis(x), _) => unit(TimeUnit::Millisecond, *x)?,
        (Value::TimestampMicros(x) | Value::LocalTimestampMicros(x), _) => unit(TimeUnit::Microsecond, *x)?,
        (Value::TimestampNanos(x) | Value::LocalTimestampNanos(x), _) => unit(TimeUnit::Nanosecond, *x)?,
        // A plain long in a timestamp column is epoch milliseconds; text is RFC 3339.
        (Value::Long(x), C::Timestamp { .. }) => unit(TimeUnit::Millisecond, *x)?,
        (Value::String(x), C::Timestamp { .. } | C::Date | C::Time) => Json::String(x.clone()),
        (Value::Record(fields), C::Struct(columns)) => {
            let Schema::Record(rs) = s else { return Err(format!("{path}: a record without a record schema")) };
            let mut out = serde_json::Map::with_capacity(columns.len());
            for (name, ct) in columns {
                let Some(at) = rs.lookup.get(name) else { continue };
                let (Some((_, fv)), Some(fs)) = (fields.get(*at), rs.fields.get(*at)) else { continue };
                out.insert(name.clone(), to_json(w, fv, &fs.schema, ct, &join(path, name))?);
            }
            Json::Object(out)
        }
        (Value::Array(items), C::List(it)) => {
            let Schema::Array(a) = s else { return Err(format!("{path}: an array without an array schema")) };
            let values = items
                .iter()
                .enumerate()
                .map(|(i, v)| to_json(w, v, &a.items, it, &format!("{path}[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            Json::Array(values)
        }
        (Value::Map(m), C::Map(vt)) => {
            let Schema::Map(ms) = s else { return Err(format!("{path}: a map without a map schema")) };
            let mut out = serde_json::Map::with_capacity(m.len());
            for (k, v) in m {
                out.insert(k.clone(), to_json(w, v, &ms.types, vt, &format!("{path}[{k:?}]"))?);
            }
            Json::Object(out)
        }
        (other, t) => return Err(format!("{path}: {} does not fit a {t} column", kind(other))),
    })
}

/// A float as JSON; NaN and the infinities have no JSON number, and are refused rather than
/// turned into null.
fn float(f: f64, path: &str) -> Result<Json, String> {
    serde_json::Number::from_f64(f)
        .map(Json::Number)
        .ok_or_else(|| format!("{path}: {f} has no JSON number; the record is refused rather than nulled"))
}

/// The field `name` of a record value and its schema.
fn field<'a>(w: &Writer<'a>, value: &'a Value, schema: &'a Schema, name: &str) -> Option<(&'a Value, &'a Schema)> {
    let (Value::Record(fields), Schema::Record(rs)) = (value, w.resolve(schema)) else { return None };
    let at = *rs.lookup.get(name)?;
    Some((&fields.get(at)?.1, &rs.fields.get(at)?.schema))
}

/// Skips a union to the value inside it and that branch's schema.
fn branch<'a>(w: &Writer<'a>, v: &'a Value, s: &'a Schema) -> (&'a Value, &'a Schema) {
    match (v, w.resolve(s)) {
        (Value::Union(i, inner), Schema::Union(u)) => match u.variants().get(*i as usize) {
            Some(b) => branch(w, inner, b),
            None => (v, s),
        },
        (v, s) => (v, s),
    }
}

/// Reads one datum: its op, change time and row (as JSON for the row type).
fn decode(value: &Value, schema: &Schema, row: &ColumnType) -> Result<(String, Option<i64>, Json), String> {
    let w = Writer::new(schema)?;
    let Value::Record(_) = value else { return Err(format!("the datum is a {}, not a record", kind(value))) };
    let envelope = field(&w, value, schema, "op").is_some() && field(&w, value, schema, "after").is_some();
    if !envelope {
        return Ok(("c".to_owned(), None, to_json(&w, value, schema, row, "")?));
    }
    let op = match field(&w, value, schema, "op").map(|(v, s)| branch(&w, v, s).0) {
        Some(Value::String(s)) => s.clone(),
        _ => return Err("envelope `op` is not a string".into()),
    };
    let ts_ms = match field(&w, value, schema, "ts_ms").map(|(v, s)| branch(&w, v, s).0) {
        Some(Value::Long(t)) => Some(*t),
        Some(Value::Int(t)) => Some(i64::from(*t)),
        _ => None,
    };
    // A delete's columns are its `before` image, as for JSON envelopes.
    let image = ["after", "before"].iter().find_map(|name| {
        let (v, s) = field(&w, value, schema, name)?;
        let (v, s) = branch(&w, v, s);
        matches!(v, Value::Record(_)).then_some((v, s))
    });
    let json = match image {
        Some((v, s)) => to_json(&w, v, s, row, "")?,
        None => Json::Null,
    };
    Ok((op, ts_ms, json))
}

/// Reads a batch of Avro payloads as rows of `row` (the declared columns as one struct).
/// Records that cannot be read are rejected; a registry that cannot be reached is an error for
/// the whole batch (it is retried by the caller's policy).
pub(crate) async fn decode_batch(
    registry: &dyn SchemaRegistry,
    cache: &mut HashMap<u32, Arc<Schema>>,
    row: &ColumnType,
    msgs: &[InputMessage<'_>],
    max_bytes: usize,
) -> Result<(AvroRows, Vec<RejectedRow>), String> {
    let mut out = AvroRows::default();
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
            .and_then(|v| decode(&v, &schema, row));
        match decoded {
            Ok((op, ts_ms, json)) => {
                out.values.push(json);
                out.ops.push(op);
                out.ts.push(ts_ms.or(m.timestamp_ms));
                out.rows.push(index as u32);
            }
            Err(e) => rejected.push(reject(e)),
        }
    }
    Ok((out, rejected))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn decimals_keep_every_digit() {
        let n: i128 = 123_456_789_012_345_678;
        assert_eq!(decimal_text(&n.to_be_bytes(), 4).unwrap(), "12345678901234.5678");
        assert_eq!(decimal_text(&(-n).to_be_bytes(), 4).unwrap(), "-12345678901234.5678");
        assert_eq!(decimal_text(&[0x05], 3).unwrap(), "0.005");
        assert_eq!(decimal_text(&[0xff], 2).unwrap(), "-0.01");
        assert_eq!(decimal_text(&[0x01, 0x00], 0).unwrap(), "256");
    }

    #[test]
    fn timestamps_rescale_to_the_column() {
        assert_eq!(rescale(1_500, TimeUnit::Millisecond, TimeUnit::Microsecond), Some(1_500_000));
        assert_eq!(rescale(-1_500, TimeUnit::Microsecond, TimeUnit::Millisecond), Some(-2));
        assert_eq!(rescale(i64::MAX, TimeUnit::Second, TimeUnit::Nanosecond), None);
    }

    #[test]
    fn nested_records_with_refs_decimals_and_maps_become_json() {
        let avsc = r#"{"type":"record","name":"o","fields":[
            {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":20,"scale":4}},
            {"name":"home","type":{"type":"record","name":"addr","fields":[{"name":"city","type":"string"}]}},
            {"name":"work","type":["null","addr"]},
            {"name":"attrs","type":{"type":"map","values":"long"}},
            {"name":"tags","type":{"type":"array","items":"string"}}]}"#;
        let schema = Schema::parse_str(avsc).unwrap();
        let addr = |c: &str| Value::Record(vec![("city".into(), Value::String(c.into()))]);
        let value = Value::Record(vec![
            ("amount".into(), Value::Decimal(apache_avro::Decimal::from(123_456_789_012_345_678i128.to_be_bytes()))),
            ("home".into(), addr("Paris")),
            ("work".into(), Value::Union(1, Box::new(addr("Lyon")))),
            ("attrs".into(), Value::Map([("a".to_owned(), Value::Long(1))].into_iter().collect())),
            ("tags".into(), Value::Array(vec![Value::String("x".into())])),
        ]);
        let row = ColumnType::parse(
            "struct<amount: decimal(20,4), home: struct<city: string>, work: struct<city: string>, \
             attrs: map<string, int64>, tags: json>",
        )
        .unwrap();
        let (op, _, json) = decode(&value, &schema, &row).unwrap();
        assert_eq!(op, "c");
        assert_eq!(
            json.to_string(),
            r#"{"amount":"12345678901234.5678","home":{"city":"Paris"},"work":{"city":"Lyon"},"attrs":{"a":1},"tags":["x"]}"#
        );
        let wrong = ColumnType::parse("struct<home: struct<city: int64>>").unwrap();
        let e = decode(&value, &schema, &wrong).unwrap_err();
        assert_eq!(e, "home.city: string does not fit a int64 column");
    }
}
