//! JSON text from outside (file lines, API answers) read without losing what it says.
//!
//! Parsed into `serde_json::Value`, a record would lose digits (`99999999999999999999` becomes
//! `1e20`, `1.10` becomes `1.1`) and, when a name appears twice, silently keep the last value.
//! So sources that read JSON text keep each record's own text ([`RawValue`]) and pick out only
//! the fields they need (the key, a cursor). A record whose top-level object names a field
//! twice is refused: which of the two values is meant cannot be known, and parsers disagree on
//! it (Jackson and serde_json keep the last, others the first).

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;
use sluice_engine::error::Invalid;

/// A UTF-8 byte-order mark, which some tools write at the start of a text file.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A JSON object's top-level fields as their own text, in order.
pub type Fields<'a> = Vec<(String, &'a RawValue)>;

/// Reads `text` as one JSON object: its fields, or why it is not one (invalid JSON, another
/// kind of value, a field named twice).
pub fn object_fields(text: &str) -> Result<Fields<'_>, Invalid> {
    let raw: &RawValue = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    fields_of(raw)
}

/// The fields of an object given as raw JSON, refusing duplicate names.
pub fn fields_of(raw: &RawValue) -> Result<Fields<'_>, Invalid> {
    let kind = match raw.get().trim_start().as_bytes().first() {
        Some(b'{') => None,
        Some(b'[') => Some("an array"),
        Some(b'"') => Some("a string"),
        Some(b't' | b'f') => Some("a boolean"),
        Some(b'n') => Some("null"),
        _ => Some("a number"),
    };
    if let Some(kind) = kind {
        return Err(format!("expected a JSON object, found {kind}").into());
    }
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let fields = de.deserialize_map(FieldsVisitor).map_err(|e| e.to_string())?;
    let mut names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("duplicate key `{}`: a field may appear once in a record", w[0]).into());
    }
    Ok(fields)
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(name) = map.next_key::<String>()? {
            let value: &'de RawValue = map.next_value()?;
            out.push((name, value));
        }
        Ok(out)
    }
}

/// A field's value as JSON (for a key or a cursor: small values, read once).
pub fn value_of(raw: &RawValue) -> Value {
    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
}

/// The value at a JSON pointer (`/a/0/b`) inside `raw`, without parsing what is not on the
/// way; `None` when nothing is there.
pub fn pointer<'a>(raw: &'a RawValue, pointer: &str) -> Result<Option<&'a RawValue>, Invalid> {
    if pointer.is_empty() {
        return Ok(Some(raw));
    }
    let Some(path) = pointer.strip_prefix('/') else {
        return Err(format!("`{pointer}` is not a JSON pointer (it starts with `/`)").into());
    };
    let mut at = raw;
    for token in path.split('/') {
        let token = token.replace("~1", "/").replace("~0", "~");
        let next = match at.get().trim_start().as_bytes().first() {
            Some(b'{') => {
                let fields: Vec<(String, &'a RawValue)> = serde_json::Deserializer::from_str(at.get())
                    .deserialize_map(FieldsVisitor)
                    .map_err(|e| e.to_string())?;
                fields.into_iter().find(|(n, _)| *n == token).map(|(_, v)| v)
            }
            Some(b'[') => {
                let items: Vec<&'a RawValue> = serde_json::from_str(at.get()).map_err(|e| e.to_string())?;
                token.parse::<usize>().ok().and_then(|i| items.get(i).copied())
            }
            _ => None,
        };
        match next {
            Some(v) => at = v,
            None => return Ok(None),
        }
    }
    Ok(Some(at))
}

/// The items of a JSON array given as raw JSON, or `None` if it is not an array.
pub fn array_items(raw: &RawValue) -> Option<Vec<&RawValue>> {
    if raw.get().trim_start().as_bytes().first() != Some(&b'[') {
        return None;
    }
    serde_json::from_str(raw.get()).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn objects_keep_their_text_and_refuse_a_field_named_twice() {
        let f = object_fields(r#"{"id": 99999999999999999999, "x": 1.10, "s": "a\"b"}"#).unwrap();
        let got: Vec<(&str, &str)> = f.iter().map(|(n, v)| (n.as_str(), v.get())).collect();
        assert_eq!(got, vec![("id", "99999999999999999999"), ("x", "1.10"), ("s", r#""a\"b""#)]);
        assert!(object_fields(r#"{"id": 1, "id": 2}"#).unwrap_err().0.contains("duplicate key `id`"));
        assert!(object_fields("[1]").unwrap_err().0.contains("found an array"));
        assert!(object_fields("17").unwrap_err().0.contains("found a number"));
        assert!(object_fields("{\"a\":").unwrap_err().0.starts_with("invalid JSON"));
        // Nested objects are the record's own business.
        assert!(object_fields(r#"{"a": {"b": 1, "b": 2}}"#).is_ok());
    }

    #[test]
    fn pointers_walk_objects_and_arrays() {
        let raw: &RawValue = serde_json::from_str(r#"{"data": {"items": [{"n": 1}, {"n": 2}]}, "a/b": 3}"#).unwrap();
        assert_eq!(pointer(raw, "/data/items/1/n").unwrap().unwrap().get(), "2");
        assert_eq!(pointer(raw, "/a~1b").unwrap().unwrap().get(), "3");
        assert!(pointer(raw, "/nope").unwrap().is_none());
        assert_eq!(array_items(pointer(raw, "/data/items").unwrap().unwrap()).unwrap().len(), 2);
        assert!(pointer(raw, "data").is_err());
    }
}
