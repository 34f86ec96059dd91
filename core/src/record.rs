//! The change record: what every source emits and every sluice topic carries.
//!
//! Its JSON form is Debezium's envelope (`before`, `after`, `op`, `source`, `ts_ms`) so any
//! consumer written for Debezium reads `sluice.<flow>.changes` as it is. The Kafka key is the
//! record's id fields as a JSON object. Connector metadata lives in `source`, never in `after`:
//! mixing the two is a regret other engines carry (a user's column named `offset` or `file`
//! would collide with it).

use serde::ser::SerializeStruct as _;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The value a change carries for a column whose value the source does not have (PostgreSQL
/// leaves a large unchanged value out of an update's row): not null — unknown. Sinks that
/// apply changes leave such a column as it is (Debezium's `__debezium_unavailable_value`).
pub const UNAVAILABLE_VALUE: &str = "__sluice_unavailable_value";

/// A row's fields, in the order the source gave them.
pub type Row = Map<String, Value>;

/// What happened to the row, with Debezium's one-letter codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// A row was inserted.
    #[serde(rename = "c")]
    Create,
    /// A row was changed; `before` is set when the source knows it.
    #[serde(rename = "u")]
    Update,
    /// A row was removed; `after` is empty.
    #[serde(rename = "d")]
    Delete,
    /// A row read by a snapshot or a full pull rather than observed changing.
    #[serde(rename = "r")]
    Read,
    /// Every row of the table was removed (SQL `TRUNCATE`); `before` and `after` are empty,
    /// and so is the key. Debezium's `t`.
    #[serde(rename = "t")]
    Truncate,
}

impl Op {
    /// The one-letter code used in the envelope and in SQL's `_op` column.
    pub fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
            Op::Truncate => "t",
        }
    }
}

/// One change to one keyed row, as a source saw it.
#[derive(Debug, Clone, Deserialize)]
pub struct ChangeRecord {
    /// The row's id fields; becomes the Kafka key so a key's changes stay in one partition, in order.
    #[serde(skip)]
    pub key: Row,
    /// The row before the change, when the source knows it (updates and deletes).
    pub before: Option<Row>,
    /// The row after the change; `None` for deletes.
    pub after: Option<Row>,
    /// The row after the change as the source's JSON text wrote it, when the source read JSON
    /// text (a file, an API): sent in place of `after`, so every number keeps the digits it
    /// was written with (`99999999999999999999` does not become `1e20` on the way).
    #[serde(skip)]
    pub after_json: Option<Box<RawValue>>,
    /// What happened.
    pub op: Op,
    /// Where the change came from: connector, flow, object and the connector's own position
    /// fields. Kept apart from the row so metadata never collides with user columns.
    pub source: Row,
    /// When the change happened at the source (or was read), in milliseconds since the epoch.
    pub ts_ms: i64,
}

impl PartialEq for ChangeRecord {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
            && self.before == other.before
            && self.after == other.after
            && self.after_json.as_ref().map(|r| r.get()) == other.after_json.as_ref().map(|r| r.get())
            && self.op == other.op
            && self.source == other.source
            && self.ts_ms == other.ts_ms
    }
}

/// The envelope, field by field: `after` is the source's own JSON text when it kept it.
impl Serialize for ChangeRecord {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("ChangeRecord", 5)?;
        m.serialize_field("before", &self.before)?;
        match &self.after_json {
            Some(raw) => m.serialize_field("after", raw)?,
            None => m.serialize_field("after", &self.after)?,
        }
        m.serialize_field("op", &self.op)?;
        m.serialize_field("source", &self.source)?;
        m.serialize_field("ts_ms", &self.ts_ms)?;
        m.end()
    }
}

impl ChangeRecord {
    /// A row read by a snapshot or a full pull (op `r`), now.
    pub fn read(key: Row, after: Row, source: Row) -> ChangeRecord {
        ChangeRecord { key, before: None, after: Some(after), after_json: None, op: Op::Read, source, ts_ms: now_ms() }
    }

    /// The Kafka key bytes: the id fields as a JSON object.
    pub fn key_bytes(&self) -> Vec<u8> {
        // invariant: a map of JSON values always serializes.
        serde_json::to_vec(&self.key).unwrap_or_default()
    }

    /// The Kafka payload bytes: the Debezium envelope.
    pub fn payload_bytes(&self) -> Vec<u8> {
        // invariant: the envelope holds only JSON values, so serialization cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(v: Value) -> Row {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn envelope_is_debezium_shaped() {
        let rec = ChangeRecord {
            key: row(json!({"id": 7})),
            before: None,
            after: Some(row(json!({"id": 7, "name": "ada"}))),
            after_json: None,
            op: Op::Create,
            source: row(json!({"connector": "generate", "seq": 7})),
            ts_ms: 1_700_000_000_000,
        };
        let v: Value = serde_json::from_slice(&rec.payload_bytes()).unwrap();
        assert_eq!(
            v,
            json!({
                "before": null,
                "after": {"id": 7, "name": "ada"},
                "op": "c",
                "source": {"connector": "generate", "seq": 7},
                "ts_ms": 1_700_000_000_000i64
            })
        );
        assert_eq!(rec.key_bytes(), br#"{"id":7}"#);
    }

    #[test]
    fn json_text_from_the_source_is_carried_as_written() {
        let text = r#"{"id": 99999999999999999999, "x": 1.10}"#;
        let rec = ChangeRecord {
            key: Map::new(),
            before: None,
            after: None,
            after_json: Some(RawValue::from_string(text.to_owned()).unwrap()),
            op: Op::Read,
            source: Map::new(),
            ts_ms: 1,
        };
        let payload = String::from_utf8(rec.payload_bytes()).unwrap();
        assert_eq!(payload, format!(r#"{{"before":null,"after":{text},"op":"r","source":{{}},"ts_ms":1}}"#));
    }

    #[test]
    fn ops_round_trip_through_their_codes() {
        for op in [Op::Create, Op::Update, Op::Delete, Op::Read, Op::Truncate] {
            let s = serde_json::to_string(&op).unwrap();
            assert_eq!(s, format!("\"{}\"", op.code()));
            assert_eq!(serde_json::from_str::<Op>(&s).unwrap(), op);
        }
    }
}
