//! What the decoder leaves out without a word, looked for in one record per batch.
//!
//! arrow-json reads the fields a struct declares and skips the others, and reads a field a
//! record lacks as null. For row-level columns the pre-decode pass ([`crate::precheck`]) sees
//! every record and the flow's `schema_changes` policy decides; two changes stay out of its
//! sight, and are looked for here in the first record of each batch:
//!
//! - a field nested in a struct that the struct does not declare (`customer.address.zip`): it
//!   is left out, and said once per path in the log — nested fields are not evolved;
//! - for change-record envelopes, a declared column missing from a row image (`after`, which
//!   holds every column of its table): the column was dropped upstream. Under
//!   `schema_changes: fail` the flow stops naming it; otherwise it reads as null, said once.
//!
//! One record per batch is a sample: a field present in most records is seen within a batch
//! or two, at the cost of one parse per batch rather than a walk of every record.

use serde_json::Value;
use sluice_core::connector::PayloadFormat;
use sluice_core::schema::ColumnType;

/// How many items of each list, and values of each map, are looked into.
const ITEMS_LOOKED_AT: usize = 5;

/// What one record shows that the row's type does not say.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Drift {
    /// Declared row columns the record's row image lacks (change-record envelopes only).
    pub(crate) missing: Vec<String>,
    /// Paths of nested fields their struct does not declare.
    pub(crate) undeclared: Vec<String>,
}

impl Drift {
    pub(crate) fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.undeclared.is_empty()
    }
}

/// Looks at `payload` against the row type `row` (a struct). A payload that is not JSON, or not
/// an object, shows nothing here: the decoder names what is wrong with it.
pub(crate) fn sample(payload: &[u8], row: &ColumnType, format: PayloadFormat) -> Drift {
    let mut drift = Drift::default();
    let ColumnType::Struct(columns) = row else { return drift };
    // A flat row of plain JSON can show neither: no parse then (the common case, every batch).
    if format != PayloadFormat::Debezium && !columns.iter().any(|(_, t)| holds_struct(t)) {
        return drift;
    }
    let Ok(v) = serde_json::from_slice::<Value>(payload) else { return drift };
    let image = match format {
        PayloadFormat::Debezium => {
            // A delete's `before` may hold the key alone; `after` holds every column.
            let Some(after) = v.get("after").filter(|a| a.is_object()) else { return drift };
            if let Some(obj) = after.as_object() {
                drift.missing = columns.iter().filter(|(n, _)| !obj.contains_key(n)).map(|(n, _)| n.clone()).collect();
            }
            after
        }
        PayloadFormat::Json | PayloadFormat::Avro => &v,
    };
    let Some(obj) = image.as_object() else { return drift };
    // Row-level fields are the precheck's; only what is inside declared columns is walked.
    for (name, t) in columns {
        if let Some(value) = obj.get(name) {
            walk(value, t, name, &mut drift.undeclared);
        }
    }
    // The same path from several items is one field.
    drift.undeclared.sort();
    drift.undeclared.dedup();
    drift
}

/// Whether values of type `t` have structs inside (whose undeclared fields could be left out).
fn holds_struct(t: &ColumnType) -> bool {
    match t {
        ColumnType::Struct(_) => true,
        ColumnType::List(inner) | ColumnType::Map(inner) => holds_struct(inner),
        _ => false,
    }
}

/// Notes the paths of undeclared fields inside `v`, whose type is `t`, at `path`.
fn walk(v: &Value, t: &ColumnType, path: &str, out: &mut Vec<String>) {
    match (v, t) {
        (Value::Object(obj), ColumnType::Struct(fields)) => {
            for (key, value) in obj {
                let p = format!("{path}.{key}");
                match fields.iter().find(|(n, _)| n == key) {
                    Some((_, ft)) => walk(value, ft, &p, out),
                    None => out.push(p),
                }
            }
        }
        (Value::Array(items), ColumnType::List(item)) => {
            for value in items.iter().take(ITEMS_LOOKED_AT) {
                walk(value, item, &format!("{path}[]"), out);
            }
        }
        (Value::Object(obj), ColumnType::Map(value_type)) => {
            for value in obj.values().take(ITEMS_LOOKED_AT) {
                walk(value, value_type, &format!("{path}{{}}"), out);
            }
        }
        // Scalars, `json` columns (kept whole) and mismatched shapes (the decoder's to name).
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn row() -> ColumnType {
        ColumnType::parse(
            "struct<id: int64, customer: struct<name: string, address: struct<city: string>>, \
             items: list<struct<sku: int64>>, attrs: map<string, struct<v: int64>>, doc: json>",
        )
        .unwrap()
    }

    #[test]
    fn undeclared_nested_fields_are_named_by_path_once_each() {
        let p = br#"{"id":1,"new_top":1,"customer":{"name":"a","tier":2,"address":{"city":"P","zip":"75"}},
            "items":[{"sku":1,"qty":2},{"sku":2,"qty":1}],"attrs":{"k":{"v":1,"w":2}},"doc":{"free":true}}"#;
        let d = sample(p, &row(), PayloadFormat::Json);
        assert_eq!(d.undeclared, ["attrs{}.w", "customer.address.zip", "customer.tier", "items[].qty"]);
        assert!(d.missing.is_empty(), "a plain JSON record may leave fields out");
    }

    #[test]
    fn an_envelopes_after_image_lacking_a_declared_column_names_it() {
        let row = ColumnType::parse("struct<id: int64, name: string, price: int64>").unwrap();
        let create = br#"{"op":"c","after":{"id":1,"name":"a"},"ts_ms":1}"#;
        assert_eq!(sample(create, &row, PayloadFormat::Debezium).missing, ["price"]);
        // A delete's before image may hold the key alone: nothing missing there.
        let delete = br#"{"op":"d","before":{"id":1},"after":null,"ts_ms":1}"#;
        assert!(sample(delete, &row, PayloadFormat::Debezium).is_empty());
        let whole = br#"{"op":"u","after":{"id":1,"name":"a","price":null},"ts_ms":1}"#;
        assert!(sample(whole, &row, PayloadFormat::Debezium).is_empty());
    }

    #[test]
    fn what_is_not_a_json_object_shows_nothing() {
        for p in [&b"not json"[..], b"[1,2]", b"17", br#"{"op":"c","after":"x"}"#] {
            assert!(sample(p, &row(), PayloadFormat::Json).is_empty());
            assert!(sample(p, &row(), PayloadFormat::Debezium).is_empty());
        }
    }
}
