//! One pass over a JSON payload, before arrow-json decodes it, for what arrow-json would change
//! without a word:
//!
//! - a number with a fraction in an integer field (`17.9` would become 17);
//! - a decimal with more digits after the point than its column's scale (arrow-json cuts
//!   them) — or more before it than the column holds;
//! - nesting deeper than [`MAX_NESTING`] (hostile input; refused before any decoder walks it).
//!
//! The pass walks the payload against the row's type: each object key is looked up in the
//! struct (or map) it belongs to, so a field's type is known wherever it is, three levels down
//! or inside a list. It allocates nothing per payload: the stack of open objects and arrays
//! is kept by the caller for a whole batch, and strings — most of a record's bytes — are
//! skipped with `memchr`.
//!
//! The same pass notes the row-level fields a payload has that the row does not declare: a
//! column added upstream (what the flow's `schema_changes` policy is about).
//!
//! Avro payloads do not come through here: their values are typed by the writer's schema, and
//! their decimals are checked with [`decimal_fits`](crate::number_text::decimal_fits) as they
//! are read.

use sluice_core::schema::ColumnType;

use crate::number_text::{Digits, decimal_fits, whole_number};

/// The deepest JSON nesting a payload may have (serde_json's own limit). Deeper input is
/// almost certainly hostile; it is rejected before any decoder walks it.
pub const MAX_NESTING: usize = 128;

/// The row's type as the walk needs it: only what is checked, with field names as bytes.
enum Node {
    /// An integer field.
    Int,
    /// A decimal field.
    Decimal { precision: u8, scale: i8 },
    /// A struct holding something to check.
    Struct(Vec<(Box<[u8]>, Node)>),
    /// A list whose items hold something to check.
    List(Box<Node>),
    /// A map whose values hold something to check.
    Map(Box<Node>),
    /// Anything else: a value whose nesting is only measured.
    Unchecked,
}

impl Node {
    fn of(t: &ColumnType) -> Node {
        let node = match t {
            ColumnType::Int32 | ColumnType::Int64 => Node::Int,
            ColumnType::Decimal { precision, scale } => Node::Decimal { precision: *precision, scale: *scale },
            ColumnType::Struct(fields) => Node::Struct(
                fields
                    .iter()
                    .map(|(n, t)| (n.as_bytes().into(), Node::of(t)))
                    .filter(|(_, n)| !matches!(n, Node::Unchecked))
                    .collect(),
            ),
            ColumnType::List(item) => Node::List(Box::new(Node::of(item))),
            ColumnType::Map(value) => Node::Map(Box::new(Node::of(value))),
            _ => Node::Unchecked,
        };
        match &node {
            Node::Struct(f) if f.is_empty() => Node::Unchecked,
            Node::List(n) | Node::Map(n) if matches!(**n, Node::Unchecked) => Node::Unchecked,
            _ => node,
        }
    }
}

/// An open object or array.
#[derive(Clone, Copy)]
pub(crate) struct Frame<'t> {
    /// Whether it is an object (else an array).
    object: bool,
    /// For an object: whether the next string is a key.
    expect_key: bool,
    /// The object's last key (as byte offsets in the payload), for error messages.
    key: (usize, usize),
    /// The type of the object or array itself, where the schema knows it.
    of: Option<&'t Node>,
    /// The type of the value that comes next: the field named by the last key, or the items.
    next: Option<&'t Node>,
}

/// Walks payloads against one row type. `root` is the row (a struct), or for Debezium
/// envelopes a struct of `after` and `before` rows — whose key is then left out of paths.
pub(crate) struct Precheck {
    root: Node,
    envelope: bool,
    /// Whether payloads are parsed into `serde_json::Value`s before decoding (the row has
    /// `json` columns), which hold numbers as floats: a decimal given as a JSON number with
    /// more digits than a float keeps cannot take that path without changing.
    via_values: bool,
    /// The row's field names.
    row_names: Vec<Box<[u8]>>,
}

/// The most undeclared field names noted for one batch.
const MAX_UNKNOWN: usize = 64;

impl Precheck {
    pub(crate) fn new(row: &ColumnType, envelope: bool, via_values: bool) -> Precheck {
        // The row itself is always walked: its keys are watched for columns added upstream.
        let row_node = || match Node::of(row) {
            Node::Unchecked => Node::Struct(Vec::new()),
            n => n,
        };
        let root = if envelope {
            Node::Struct(vec![(b"after"[..].into(), row_node()), (b"before"[..].into(), row_node())])
        } else {
            row_node()
        };
        // The `source` table's own columns are never new ones (a topic another flow wrote
        // may carry them).
        let hidden = sluice_core::names::column::HIDDEN.iter().map(|n| n.as_bytes().into());
        let row_names = match row {
            ColumnType::Struct(fields) => fields.iter().map(|(n, _)| n.as_bytes().into()).chain(hidden).collect(),
            _ => hidden.collect(),
        };
        Precheck { root, envelope, via_values, row_names }
    }

    /// Why `json` cannot be decoded without a value changing, if it cannot. `stack` is scratch
    /// space, reused from payload to payload; row-level fields the row does not declare are
    /// added to `unknown` (each name once).
    pub(crate) fn check<'t>(
        &'t self,
        json: &[u8],
        stack: &mut Vec<Frame<'t>>,
        unknown: &mut Vec<String>,
    ) -> Option<String> {
        stack.clear();
        let mut i = 0;
        while i < json.len() {
            match json[i] {
                open @ (b'{' | b'[') => {
                    if stack.len() == MAX_NESTING {
                        return Some(too_deep());
                    }
                    let of = self.next_type(stack);
                    if of.is_none_or(|n| matches!(n, Node::Unchecked)) {
                        // Nothing inside to check: only its depth matters.
                        match skip_value(json, i, MAX_NESTING - stack.len()) {
                            Some(end) => i = end,
                            None => return Some(too_deep()),
                        }
                        continue;
                    }
                    let next = match (open, of) {
                        (b'[', Some(Node::List(item))) => Some(&**item),
                        _ => None,
                    };
                    stack.push(Frame { object: open == b'{', expect_key: open == b'{', key: (0, 0), of, next });
                    i += 1;
                }
                b'}' | b']' => {
                    stack.pop();
                    i += 1;
                }
                b',' => {
                    if let Some(f) = stack.last_mut().filter(|f| f.object) {
                        f.expect_key = true;
                    }
                    i += 1;
                }
                b':' => {
                    if let Some(f) = stack.last_mut() {
                        f.expect_key = false;
                    }
                    i += 1;
                }
                b'"' => {
                    let start = i + 1;
                    let end = string_end(json, start);
                    let is_key = stack.last().is_some_and(|f| f.object && f.expect_key);
                    // Only a key the row's checked fields do not name can be a new column.
                    let row_level = is_key && self.at_row(json, stack);
                    match stack.last_mut() {
                        Some(f) if is_key => {
                            f.key = (start, end);
                            let key = &json[start..end];
                            f.next = field_type(f.of, key);
                            if row_level && f.next.is_none() && !self.is_row_name(key) {
                                note_new_field(unknown, key);
                            }
                        }
                        _ => {
                            if let Some(Node::Decimal { precision, scale }) = self.next_type(stack)
                                && let Ok(text) = std::str::from_utf8(&json[start..end])
                                && let Err(why) = decimal_fits(text, *precision, *scale)
                            {
                                return Some(format!("{}: {why}", self.path(json, stack)));
                            }
                        }
                    }
                    i = end + 1;
                }
                b'-' | b'0'..=b'9' => {
                    let start = i;
                    while i < json.len() && matches!(json[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                        i += 1;
                    }
                    let token = &json[start..i];
                    match self.next_type(stack) {
                        Some(Node::Int)
                            if token.iter().any(|c| matches!(c, b'.' | b'e' | b'E')) && !whole_number(token) =>
                        {
                            return Some(format!(
                                "column `{}`: {} is not a whole number, and the column is an integer; the record is \
                                 refused rather than cut (CAST it in the SQL to keep the choice explicit)",
                                self.path(json, stack),
                                String::from_utf8_lossy(token)
                            ));
                        }
                        Some(Node::Decimal { precision, scale }) => {
                            let text = std::str::from_utf8(token).unwrap_or_default();
                            if let Err(why) = decimal_fits(text, *precision, *scale) {
                                return Some(format!("{}: {why}", self.path(json, stack)));
                            }
                            if self.via_values && Digits::parse(text).is_some_and(|d| d.significant() > FLOAT_DIGITS) {
                                return Some(format!(
                                    "{}: {text} has more than {FLOAT_DIGITS} significant digits as a JSON number, \
                                     which a flow with `json` columns reads through a float; give it as text \
                                     (\"{text}\") to keep every digit",
                                    self.path(json, stack)
                                ));
                            }
                        }
                        _ => {}
                    }
                }
                _ => i += 1,
            }
        }
        None
    }

    /// Whether the row declares a field named `key` (the length and first byte rule most names
    /// out without a call to `memcmp`).
    fn is_row_name(&self, key: &[u8]) -> bool {
        self.row_names.iter().any(|n| n.len() == key.len() && n.first() == key.first() && **n == *key)
    }

    /// Whether the innermost open object is the row (the payload, or an envelope's image).
    fn at_row(&self, json: &[u8], stack: &[Frame<'_>]) -> bool {
        match (self.envelope, stack) {
            (false, [_]) => true,
            (true, [image, _]) => matches!(&json[image.key.0..image.key.1], b"after" | b"before"),
            _ => false,
        }
    }

    /// The type of the value that starts here: the root's, or what the enclosing object or
    /// array says comes next.
    fn next_type<'t>(&'t self, stack: &[Frame<'t>]) -> Option<&'t Node> {
        match stack.last() {
            None => Some(&self.root),
            Some(f) => f.next,
        }
    }

    /// The path of the value being read (`customer.address.city`, `items[].qty`).
    fn path(&self, json: &[u8], stack: &[Frame<'_>]) -> String {
        let mut path = String::new();
        let skip = usize::from(self.envelope);
        for f in stack.iter().skip(skip) {
            if f.object {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&String::from_utf8_lossy(&json[f.key.0..f.key.1]));
            } else {
                path.push_str("[]");
            }
        }
        path
    }
}

/// Adds a row-level field the row does not declare to `unknown`, once, up to
/// [`MAX_UNKNOWN`] names a batch.
pub(crate) fn note_new_field(unknown: &mut Vec<String>, key: &[u8]) {
    if unknown.len() >= MAX_UNKNOWN {
        return;
    }
    let name = String::from_utf8_lossy(key);
    if !unknown.iter().any(|u| *u == name) {
        unknown.push(name.into_owned());
    }
}

/// The significant digits any float keeps exactly.
const FLOAT_DIGITS: i64 = 15;

fn too_deep() -> String {
    format!("JSON nested deeper than {MAX_NESTING} levels")
}

/// Where the object or array opening at `at` ends (the offset after its closing bracket, or
/// the payload's length); `None` if it nests more than `room` levels.
fn skip_value(json: &[u8], mut at: usize, room: usize) -> Option<usize> {
    let mut depth = 0usize;
    while at < json.len() {
        match json[at] {
            b'{' | b'[' => {
                depth += 1;
                if depth > room {
                    return None;
                }
            }
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(at + 1);
                }
            }
            b'"' => at = string_end(json, at + 1),
            _ => {}
        }
        at += 1;
    }
    Some(at)
}

/// Where the string starting at `start` (after its opening quote) ends: the offset of its
/// closing quote, or the payload's length.
///
/// Most strings in records are short keys and values: a plain loop finds their end sooner
/// than a call to `memchr` would; long ones are left to `memchr`.
fn string_end(json: &[u8], mut at: usize) -> usize {
    let short = json.len().min(at + 24);
    while at < short {
        match json[at] {
            b'"' => return at,
            b'\\' => at += 2,
            _ => at += 1,
        }
    }
    while let Some(found) = memchr::memchr2(b'"', b'\\', &json[at.min(json.len())..]) {
        let pos = at + found;
        if json[pos] == b'"' {
            return pos;
        }
        at = pos + 2;
    }
    json.len()
}

/// The type of a field of an object of type `of`: a struct's named field, a map's values.
fn field_type<'t>(of: Option<&'t Node>, key: &[u8]) -> Option<&'t Node> {
    match of? {
        // The length and first byte rule most names out without a call to `memcmp`.
        Node::Struct(fields) => {
            fields.iter().find(|(n, _)| n.len() == key.len() && n.first() == key.first() && **n == *key).map(|(_, t)| t)
        }
        Node::Map(value) => Some(value),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn check(row: &str, json: &str, envelope: bool) -> Option<String> {
        let p = Precheck::new(&ColumnType::parse(row).unwrap(), envelope, false);
        p.check(json.as_bytes(), &mut Vec::new(), &mut Vec::new())
    }

    #[test]
    fn fractions_in_integer_fields_are_found_exactly() {
        let row = "struct<id: int64, n: int32, x: float64, name: string, deep: struct<n: int64>>";
        assert!(check(row, r#"{"id":1,"n":17.9}"#, false).unwrap().contains("column `n`: 17.9"));
        assert_eq!(check(row, r#"{"id":1,"n":17.0,"x":2.5}"#, false), None, "x is a float");
        assert_eq!(check(row, r#"{"id":1,"name":"n 17.9","n":3}"#, false), None, "inside a string");
        assert!(check(row, r#"{"id":1,"deep":{"n":17.9}}"#, false).unwrap().contains("column `deep.n`: 17.9"));
        assert_eq!(check(row, r#"{"id":1,"other":{"n":17.9}}"#, false), None, "not a declared field");
        let env = r#"{"before":null,"after":{"id":2,"n":1e-1},"op":"c","source":{"n":0.5},"ts_ms":1}"#;
        assert!(check(row, env, true).unwrap().contains("column `n`: 1e-1"));
        assert_eq!(check(row, r#"{"after":{"id":2},"source":{"n":0.5},"ts_ms":1.5}"#, true), None);
    }

    #[test]
    fn fields_are_found_inside_lists_maps_and_escaped_strings() {
        let row = "struct<items: list<struct<qty: int32, tags: list<string>>>, m: map<string, int64>>";
        let bad = r#"{"items":[{"qty":1,"tags":["a\"b","c"]},{"tags":[],"qty":2.5}]}"#;
        assert!(check(row, bad, false).unwrap().contains("column `items[].qty`: 2.5"));
        assert!(check(row, r#"{"m":{"a":1,"b":1.5}}"#, false).unwrap().contains("column `m.b`: 1.5"));
        assert_eq!(check(row, r#"{"items":[{"qty":1,"tags":["1.5"]}],"m":{"a":2}}"#, false), None);
    }

    #[test]
    fn decimals_are_checked_wherever_they_are() {
        let row = "struct<items: list<struct<price: decimal(10,2)>>, total: decimal(12,2)>";
        let why = check(row, r#"{"items":[{"price":"1.25"},{"price":1.234}],"total":1}"#, false).unwrap();
        assert_eq!(
            why,
            "items[].price: 1.234 has more than 2 digits after the point; the record is refused rather than rounded"
        );
        let why = check(row, r#"{"total":"12345678901.5"}"#, false).unwrap();
        assert_eq!(why, "total: 12345678901.5 has more than 10 digits before the point");

        // Through `serde_json::Value`s, a number keeps a float's digits only.
        let p = Precheck::new(&ColumnType::parse("struct<d: decimal(20,4)>").unwrap(), false, true);
        let check = |json: &[u8]| p.check(json, &mut Vec::new(), &mut Vec::new());
        let why = check(br#"{"d":12345678901234.5678}"#).unwrap();
        assert!(why.starts_with("d: 12345678901234.5678 has more than 15 significant digits"), "{why}");
        assert_eq!(check(br#"{"d":"12345678901234.5678"}"#), None, "text keeps them");
        assert_eq!(check(br#"{"d":1234567890.1234}"#), None);
    }

    #[test]
    fn undeclared_row_fields_are_noted_once_each() {
        for row in ["struct<id: int64, name: string>", "struct<name: string>"] {
            let p = Precheck::new(&ColumnType::parse(row).unwrap(), false, false);
            let mut unknown = Vec::new();
            for json in [r#"{"id":1,"name":"a","new":{"id":2,"x":1},"more":[1]}"#, r#"{"new":3,"name":"b"}"#] {
                assert_eq!(p.check(json.as_bytes(), &mut Vec::new(), &mut unknown), None);
            }
            let want = if row.contains("id") { vec!["new", "more"] } else { vec!["id", "new", "more"] };
            assert_eq!(unknown, want, "{row}: nested fields are not the row's");
        }
        let p = Precheck::new(&ColumnType::parse("struct<id: int64>").unwrap(), true, false);
        let mut unknown = Vec::new();
        let env = r#"{"op":"u","source":{"lsn":1},"before":{"id":1},"after":{"id":1,"added":"x"},"ts_ms":1}"#;
        assert_eq!(p.check(env.as_bytes(), &mut Vec::new(), &mut unknown), None);
        assert_eq!(unknown, vec!["added"], "an envelope's own fields are not the row's");
    }

    #[test]
    fn nesting_is_measured_outside_strings() {
        // Measured in objects and arrays the row does not type too (skipped, but counted).
        let nest =
            |levels: usize, inner: &str| format!(r#"{{"a":{}{inner}{}}}"#, "[".repeat(levels), "]".repeat(levels));
        assert_eq!(check("struct<s: string>", &nest(MAX_NESTING - 1, "1"), false), None);
        assert_eq!(check("struct<s: string>", &nest(MAX_NESTING, "1"), false), Some(too_deep()));
        let quoted = format!(r#"{{"s":"{}"}}"#, "[".repeat(500));
        assert_eq!(check("struct<s: string>", &quoted, false), None, "brackets inside a string do not nest");
        let escaped = format!(r#"{{"s":"\"{}"}}"#, "[".repeat(500));
        assert_eq!(check("struct<s: string>", &escaped, false), None, "an escaped quote does not end the string");
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(check("struct<id: int64>", &deep, false), Some(too_deep()), "the typed walk measures too");
        assert_eq!(check("struct<s: string>", &deep, false), Some(too_deep()));
    }
}
