//! Decoding `pgoutput` messages (protocol version 1) into change records, and PostgreSQL's text
//! output of a value into JSON — the one encoding both the snapshot and the stream use, so a
//! row reads the same whichever way it arrived.

use std::collections::HashMap;

use base64::Engine as _;
use serde_json::{Map, Value, json};
use sluice_engine::record::{ChangeRecord, Op, Row, UNAVAILABLE_VALUE};

/// A table as pgoutput describes it.
#[derive(Debug, Clone)]
pub(super) struct Relation {
    pub(super) oid: u32,
    pub(super) schema: String,
    pub(super) table: String,
    /// (name, type OID, part of the key).
    pub(super) columns: Vec<(String, u32, bool)>,
}

/// One decoded message.
#[derive(Debug)]
pub(super) enum Message {
    Relation(Relation),
    /// An insert, update or delete of relation `oid`: the old tuple (key or full row) and the
    /// new one, each column's text or a marker (see [`Tuple`]).
    Change {
        kind: u8,
        oid: u32,
        old: Option<Tuple>,
        new: Option<Tuple>,
    },
    /// `TRUNCATE` of these relations.
    Truncate {
        oids: Vec<u32>,
    },
    /// Begin and commit (the replication client hands them over as events of their own),
    /// origin, type and logical messages: nothing to decode here.
    Other,
}

/// A tuple's columns, by position: `None` is SQL null; `Some(None)` an unchanged TOASTed value
/// the server left out; `Some(Some(text))` the value's text output.
pub(super) type Tuple = Vec<Option<Option<String>>>;

/// Decodes one message; `Err` names what was malformed.
pub(super) fn decode(data: &[u8]) -> Result<Message, String> {
    let mut m = Reader { buf: data, at: 0 };
    Ok(match m.u8().ok_or("empty message")? {
        b'R' => {
            let oid = m.u32().ok_or("relation: id")?;
            let schema = m.cstr().ok_or("relation: schema")?;
            let table = m.cstr().ok_or("relation: name")?;
            let _identity = m.u8().ok_or("relation: replica identity")?;
            let n = m.i16().ok_or("relation: column count")?;
            let mut columns = Vec::with_capacity(n.max(0) as usize);
            for _ in 0..n {
                let flags = m.u8().ok_or("relation: column flags")?;
                let name = m.cstr().ok_or("relation: column name")?;
                let type_oid = m.u32().ok_or("relation: column type")?;
                let _typmod = m.i32().ok_or("relation: column type modifier")?;
                columns.push((name, type_oid, flags & 1 == 1));
            }
            Message::Relation(Relation { oid, schema, table, columns })
        }
        kind @ (b'I' | b'U' | b'D') => {
            let oid = m.u32().ok_or("change: relation id")?;
            let (mut old, mut new) = (None, None);
            while let Some(tag) = m.u8() {
                let tuple = m.tuple().ok_or("change: tuple data")?;
                match tag {
                    b'K' | b'O' => old = Some(tuple),
                    b'N' => new = Some(tuple),
                    other => return Err(format!("change: unknown tuple tag {other}")),
                }
            }
            Message::Change { kind, oid, old, new }
        }
        b'T' => {
            let n = m.u32().ok_or("truncate: relation count")?;
            let _options = m.u8().ok_or("truncate: options")?;
            let oids = (0..n).map(|_| m.u32()).collect::<Option<Vec<u32>>>().ok_or("truncate: relation ids")?;
            Message::Truncate { oids }
        }
        _ => Message::Other,
    })
}

/// The change records of one change. The primary key (not the replica identity, which is every
/// column under `REPLICA IDENTITY FULL`) keys them; a primary-key change is a delete of the old
/// key and a create of the new one, as Debezium does. An unchanged TOASTed value is taken from
/// the old row when the server sent it whole (`REPLICA IDENTITY FULL`), and is
/// [`UNAVAILABLE_VALUE`] otherwise, never null.
pub(super) fn change_records(
    kind: u8,
    rel: &Relation,
    primary_key: &[String],
    old: Option<Tuple>,
    new: Option<Tuple>,
) -> Result<Vec<ChangeRecord>, String> {
    let old = old.map(|t| row_of(rel, t)).transpose()?;
    let new = new.map(|t| row_of(rel, t)).transpose()?;
    let keyed = |c: &(String, u32, bool)| if primary_key.is_empty() { c.2 } else { primary_key.contains(&c.0) };
    let key_of = |row: &Row| -> Row {
        rel.columns
            .iter()
            .filter(|c| keyed(c))
            .map(|c| (c.0.clone(), row.get(&c.0).cloned().unwrap_or(Value::Null)))
            .collect()
    };
    let mut source = Map::new();
    source.insert("connector".into(), json!("postgres_cdc"));
    source.insert("schema".into(), json!(rel.schema));
    source.insert("table".into(), json!(rel.table));
    let rec = |op, key, before, after| ChangeRecord {
        key,
        before,
        after,
        after_json: None,
        op,
        source: source.clone(),
        ts_ms: 0,
    };
    Ok(match (kind, old, new) {
        (b'I', _, Some(new)) => vec![rec(Op::Create, key_of(&new), None, Some(new))],
        (b'U', old, Some(mut new)) => {
            if let Some(old) = &old {
                for (name, value) in new.iter_mut() {
                    if value.as_str() == Some(UNAVAILABLE_VALUE)
                        && let Some(before) = old.get(name).filter(|v| v.as_str() != Some(UNAVAILABLE_VALUE))
                    {
                        *value = before.clone();
                    }
                }
            }
            match old {
                Some(old) if key_of(&old) != key_of(&new) => {
                    vec![rec(Op::Delete, key_of(&old), Some(old), None), rec(Op::Create, key_of(&new), None, Some(new))]
                }
                old => vec![rec(Op::Update, key_of(&new), old, Some(new))],
            }
        }
        (b'D', Some(old), _) => vec![rec(Op::Delete, key_of(&old), Some(old), None)],
        _ => Vec::new(),
    })
}

/// A tuple as a row of typed JSON values.
fn row_of(rel: &Relation, tuple: Tuple) -> Result<Row, String> {
    if tuple.len() > rel.columns.len() {
        return Err(format!("a tuple of {} columns for table {} of {}", tuple.len(), rel.table, rel.columns.len()));
    }
    let mut row = Map::with_capacity(tuple.len());
    for ((name, type_oid, _), value) in rel.columns.iter().zip(tuple) {
        let v = match value {
            None => Value::Null,
            Some(None) => json!(UNAVAILABLE_VALUE),
            Some(Some(text)) => typed(*type_oid, &text),
        };
        row.insert(name.clone(), v);
    }
    Ok(row)
}

/// A row's column types by name, for decoding a snapshot's text values.
pub(super) type ColumnTypes = HashMap<String, u32>;

/// A value's text output (as PostgreSQL prints it with `DateStyle=ISO`, `TimeZone=UTC`) as
/// JSON, by the column's type. Numbers that JSON holds exactly become numbers; `numeric` stays
/// text, so no digit is lost to a float.
pub(super) fn typed(type_oid: u32, text: &str) -> Value {
    // One-dimensional arrays, element by element.
    if let Some(elem) = array_element(type_oid) {
        return Value::Array(pg_array(text).into_iter().map(|v| v.map_or(Value::Null, |s| typed(elem, &s))).collect());
    }
    match type_oid {
        16 => Value::Bool(text == "t"),
        20 | 21 | 23 | 26 => text.parse::<i64>().map_or_else(|_| json!(text), |n| json!(n)),
        700 | 701 => text
            .parse::<f64>()
            .ok()
            .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number))
            .unwrap_or_else(|| json!(text)),
        114 | 3802 => serde_json::from_str(text).unwrap_or_else(|_| json!(text)),
        // Timestamps in RFC 3339 shape ("2026-01-01 10:00:00+00" → "2026-01-01T10:00:00+00:00").
        1114 | 1184 => json!(rfc3339(text)),
        // bytea as base64 (Debezium's and Kafka Connect's JSON form of bytes).
        17 => match text.strip_prefix("\\x").and_then(|h| hex::decode(h).ok()) {
            Some(bytes) => json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
            None => json!(text),
        },
        // numeric keeps every digit as text (Debezium's `decimal.handling.mode=string`); uuid,
        // dates, times and the rest as PostgreSQL prints them.
        _ => json!(text),
    }
}

/// The element type of an array type.
fn array_element(type_oid: u32) -> Option<u32> {
    Some(match type_oid {
        1000 => 16,
        1001 => 17,
        1005 => 21,
        1007 => 23,
        1016 => 20,
        1021 => 700,
        1022 => 701,
        1009 | 1015 => 25,
        1231 => 1700,
        2951 => 2950,
        1115 => 1114,
        1185 => 1184,
        1182 => 1082,
        199 => 114,
        3807 => 3802,
        _ => return None,
    })
}

fn rfc3339(text: &str) -> String {
    let t = text.replacen(' ', "T", 1);
    // "+00" → "+00:00"
    match t.rfind(['+', '-']).filter(|i| *i > 10) {
        Some(i) if t.len() - i == 3 => format!("{t}:00"),
        _ => t,
    }
}

/// The elements of a one-dimensional array literal (`{1,2,NULL,"a b"}`).
fn pg_array(text: &str) -> Vec<Option<String>> {
    let inner = text.trim().trim_start_matches('{').trim_end_matches('}');
    let mut out = Vec::new();
    if inner.is_empty() {
        return out;
    }
    let (mut cur, mut quoted, mut was_quoted, mut chars) = (String::new(), false, false, inner.chars());
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                was_quoted = true;
            }
            '\\' if quoted => cur.extend(chars.next()),
            ',' if !quoted => {
                out.push(if !was_quoted && cur == "NULL" { None } else { Some(std::mem::take(&mut cur)) });
                cur.clear();
                was_quoted = false;
            }
            c => cur.push(c),
        }
    }
    out.push(if !was_quoted && cur == "NULL" { None } else { Some(cur) });
    out
}

/// `0/16B3748` → a number.
pub(super) fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

pub(super) fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Big-endian reads over a pgoutput message.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.buf.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn i16(&mut self) -> Option<i16> {
        self.take(2).and_then(|b| b.try_into().ok()).map(i16::from_be_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes)
    }
    fn i32(&mut self) -> Option<i32> {
        self.take(4).and_then(|b| b.try_into().ok()).map(i32::from_be_bytes)
    }
    fn cstr(&mut self) -> Option<String> {
        let end = self.buf.get(self.at..)?.iter().position(|b| *b == 0)?;
        let s = String::from_utf8_lossy(&self.buf[self.at..self.at + end]).into_owned();
        self.at += end + 1;
        Some(s)
    }
    /// TupleData: column count, then per column `n` (null), `u` (unchanged TOAST) or `t` +
    /// length + text.
    fn tuple(&mut self) -> Option<Tuple> {
        let n = self.i16()?.max(0) as usize;
        let mut row = Vec::with_capacity(n);
        for _ in 0..n {
            row.push(match self.u8()? {
                b'n' => None,
                b'u' => Some(None),
                b't' => {
                    let len = usize::try_from(self.i32()?).ok()?;
                    Some(Some(String::from_utf8_lossy(self.take(len)?).into_owned()))
                }
                _ => return None,
            });
        }
        Some(row)
    }
}

/// How a table's columns changed between two of its relation messages.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct RelationChange {
    /// In words: "column `b` dropped; column `a` retyped int4 → text; column `c` added (text)".
    pub(super) words: String,
    /// Whether a column kept its name and changed its type.
    pub(super) retyped: bool,
}

/// How a table's columns changed between two of its relation messages, or `None`.
pub(super) fn relation_change(old: &Relation, new: &Relation) -> Option<RelationChange> {
    let type_name = |oid: u32| {
        tokio_postgres::types::Type::from_oid(oid).map_or_else(|| format!("type {oid}"), |t| t.name().to_owned())
    };
    let mut changes = Vec::new();
    let mut retyped = false;
    for (name, was, _) in &old.columns {
        match new.columns.iter().find(|(n, _, _)| n == name) {
            None => changes.push(format!("column `{name}` dropped")),
            Some((_, now, _)) if now != was => {
                retyped = true;
                changes.push(format!("column `{name}` retyped {} → {}", type_name(*was), type_name(*now)))
            }
            Some(_) => {}
        }
    }
    for (name, oid, _) in &new.columns {
        if !old.columns.iter().any(|(n, _, _)| n == name) {
            changes.push(format!("column `{name}` added ({})", type_name(*oid)));
        }
    }
    (!changes.is_empty()).then(|| RelationChange { words: changes.join("; "), retyped })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_relation_change_is_put_in_words() {
        let old = rel();
        assert_eq!(relation_change(&old, &rel()), None);
        let mut new = rel();
        new.columns.remove(2);
        new.columns[1].1 = 23;
        new.columns.push(("added".into(), 1700, false));
        let change = relation_change(&old, &new).unwrap();
        assert_eq!(
            change.words,
            "column `v` retyped text → int4; column `big` dropped; column `added` added (numeric)"
        );
        assert!(change.retyped);
        new.columns[1].1 = 25;
        assert!(!relation_change(&old, &new).unwrap().retyped, "a drop and an add are no retyping");
    }

    fn rel() -> Relation {
        Relation {
            oid: 7,
            schema: "public".into(),
            table: "t".into(),
            columns: vec![("id".into(), 23, true), ("v".into(), 25, false), ("big".into(), 25, false)],
        }
    }

    fn t(cols: &[Option<Option<&str>>]) -> Tuple {
        cols.iter().map(|c| c.map(|v| v.map(str::to_owned))).collect()
    }

    #[test]
    fn lsns_round_trip() {
        assert_eq!(parse_lsn("0/215CC10"), Some(0x215CC10));
        assert_eq!(lsn_text(parse_lsn("1A/FF00").unwrap()), "1A/FF00");
    }

    #[test]
    fn values_are_typed_by_their_column() {
        assert_eq!(typed(23, "42"), json!(42));
        assert_eq!(typed(16, "t"), json!(true));
        assert_eq!(typed(1700, "12345678901234.5678"), json!("12345678901234.5678"));
        assert_eq!(typed(3802, r#"{"a": [1]}"#), json!({"a": [1]}));
        assert_eq!(typed(1184, "2026-01-01 10:00:00+00"), json!("2026-01-01T10:00:00+00:00"));
        assert_eq!(typed(1007, "{1,NULL,3}"), json!([1, null, 3]));
        assert_eq!(typed(1009, r#"{a,"b c","x\"y",NULL}"#), json!(["a", "b c", "x\"y", null]));
        assert_eq!(typed(17, r"\x6869"), json!("aGk="));
        assert_eq!(typed(1231, "{1.50,NULL}"), json!(["1.50", null]));
        assert_eq!(typed(701, "NaN"), json!("NaN"));
        assert_eq!(typed(3807, r#"{"{\"a\": 1}"}"#), json!([{"a": 1}]));
    }

    #[test]
    fn a_key_change_is_a_delete_and_a_create() {
        let recs = change_records(
            b'U',
            &rel(),
            &[],
            Some(t(&[Some(Some("1")), Some(Some("a")), None])),
            Some(t(&[Some(Some("2")), Some(Some("a")), None])),
        )
        .unwrap();
        assert_eq!(recs.iter().map(|r| r.op).collect::<Vec<_>>(), vec![Op::Delete, Op::Create]);
        assert_eq!(recs[0].key, *json!({"id": 1}).as_object().unwrap());
        let recs = change_records(b'U', &rel(), &[], None, Some(t(&[Some(Some("1")), Some(Some("b")), None]))).unwrap();
        assert_eq!(recs[0].op, Op::Update);
    }

    #[test]
    fn an_unchanged_toasted_value_comes_from_the_old_row_or_is_marked_unavailable() {
        let new = t(&[Some(Some("1")), Some(Some("b")), Some(None)]);
        // REPLICA IDENTITY FULL: the old row has the value.
        let old = t(&[Some(Some("1")), Some(Some("a")), Some(Some("xxxx"))]);
        let recs = change_records(b'U', &rel(), &[], Some(old), Some(new.clone())).unwrap();
        assert_eq!(recs[0].after.as_ref().unwrap()["big"], json!("xxxx"));
        // The default identity: only the key is known; the value is unavailable, not null.
        let key_only = t(&[Some(Some("1"))]);
        let recs = change_records(b'U', &rel(), &[], Some(key_only), Some(new.clone())).unwrap();
        assert_eq!(recs[0].after.as_ref().unwrap()["big"], json!(UNAVAILABLE_VALUE));
        let recs = change_records(b'U', &rel(), &[], None, Some(new)).unwrap();
        assert_eq!(recs[0].after.as_ref().unwrap()["big"], json!(UNAVAILABLE_VALUE));
    }

    #[test]
    fn truncated_or_garbled_messages_are_errors_not_panics() {
        assert!(decode(b"").is_err());
        assert!(decode(b"R\0\0").is_err());
        assert!(decode(b"I\0\0\0\x07N\0\x01t\xff\xff\xff\xff").is_err());
        assert!(decode(b"T\0\0\0\x02\0\0\0\0\x07").is_err());
        assert!(matches!(decode(b"T\0\0\0\x01\0\0\0\0\x07").unwrap(), Message::Truncate { oids } if oids == vec![7]));
    }
}
