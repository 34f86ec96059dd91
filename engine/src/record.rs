//! The change record: what every source emits and every sluice topic carries.
//!
//! Its JSON form is Debezium's envelope (`before`, `after`, `op`, `source`, `ts_ms`) so any
//! consumer written for Debezium reads `sluice.<flow>.changes` as it is. The Kafka key is the
//! record's id fields as a JSON object. Connector metadata lives in `source`, never in `after`:
//! mixing the two is a regret other engines carry (a user's column named `offset` or `file`
//! would collide with it).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
}

impl Op {
    /// The one-letter code used in the envelope and in SQL's `_op` column.
    pub fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
        }
    }
}

/// One change to one keyed row, as a source saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeRecord {
    /// The row's id fields; becomes the Kafka key so a key's changes stay in one partition, in order.
    #[serde(skip)]
    pub key: Row,
    /// The row before the change, when the source knows it (updates and deletes).
    pub before: Option<Row>,
    /// The row after the change; `None` for deletes.
    pub after: Option<Row>,
    /// What happened.
    pub op: Op,
    /// Where the change came from: connector, flow, object and the connector's own position
    /// fields. Kept apart from the row so metadata never collides with user columns.
    pub source: Row,
    /// When the change happened at the source (or was read), in milliseconds since the epoch.
    pub ts_ms: i64,
}

impl ChangeRecord {
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
    fn ops_round_trip_through_their_codes() {
        for op in [Op::Create, Op::Update, Op::Delete, Op::Read] {
            let s = serde_json::to_string(&op).unwrap();
            assert_eq!(s, format!("\"{}\"", op.code()));
            assert_eq!(serde_json::from_str::<Op>(&s).unwrap(), op);
        }
    }
}
