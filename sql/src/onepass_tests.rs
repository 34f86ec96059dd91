//! The one-pass decoder against the general path it stands in for: wherever it gives a batch,
//! the pre-check passes every payload and arrow-json decodes the same batch; where a payload
//! is anything it does not read exactly as they would, it steps aside.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use arrow_schema::{Schema, SchemaRef};
use sluice_core::schema::{ColumnType, RowSchema};

use crate::differential::{self, row, schema};
use crate::onepass::OnePass;

fn agree(row: &RowSchema, envelope: bool, payloads: &[&[u8]]) -> bool {
    differential::agree(row, envelope, payloads).unwrap_or_else(|e| panic!("{e}"))
}

const FULL: &str = r#"{"id":1,"n":-7,"ok":true,"x":2.5e-3,"name":"Ann \"A\" \\ \u00e9\ud83d\ude00\n","at":"2026-11-25T10:00:00.123Z","at_us":"2026-11-25 10:00:00.123456","day":"2026-11-25","tod":"10:11:12.5","price":"12.50","customer":{"name":"Ann","address":{"city":"Paris","geo":{"lat":48.85}},"vip":false},"items":[{"sku":1,"qty":2,"tags":["a","b"]},{"sku":2,"qty":1,"tags":[]}],"ids":[1,2,3]}"#;

#[test]
fn plain_payloads_decode_as_the_general_path_decodes_them() {
    let row = row();
    let cases: Vec<&str> = vec![
        FULL,
        r#"{}"#,
        r#" { "id" : 2 , "price" : 3 , "x" : 1 , "items" : null , "customer" : null } "#,
        r#"{"name":null,"customer":{"address":null},"items":[{"tags":null},null],"ids":[null,-9223372036854775808]}"#,
        r#"{"ids":[9223372036854775807],"x":-0,"price":-0.5,"at":1700000000000,"at_us":1,"day":20000,"tod":3600000000}"#,
        r#"{"id":3,"extra":{"deep":[1,{"a":"\u0041"}],"t":true},"name":"\u00e9t\u00e9","price":1.25}"#,
        r#"{"customer":{"vip":true,"name":"out of order","address":{"geo":{"lat":1e2},"city":"x"}}}"#,
        r#"{"name":"tab	inside","at":"2026-11-25T10:00:00+02:00","price":"0.01"}"#,
        r#"{"attrs":{"a":{"w":1,"tags":["x"]},"b\"q":null,"a":{"w":2}},"counts":{}}"#,
        r#"{"attrs":null,"counts":{"x":1,"y":-2,"z":null}}"#,
    ];
    for c in &cases {
        assert!(agree(&row, false, &[c.as_bytes()]), "one pass stepped aside for {c}");
    }
    // And as one batch.
    let all: Vec<&[u8]> = cases.iter().map(|c| c.as_bytes()).collect();
    assert!(agree(&row, false, &all));
}

#[test]
fn it_steps_aside_for_anything_not_plain() {
    let row = row();
    for c in [
        r#"{"n":17.9}"#,       // a fraction in an integer field
        r#"{"n":17.0}"#,       // whole, but left to the pre-check's rule
        r#"{"id":"17"}"#,      // text in an integer field
        r#"{"n":2147483648}"#, // out of an int32's range
        r#"{"id":99999999999999999999}"#,
        r#"{"price":"1.234"}"#,     // more digits than the scale
        r#"{"price":123456789.5}"#, // more than the precision
        r#"{"name":5}"#,            // a number where text is declared
        r#"{"ok":"true"}"#,
        r#"{"id":1,"id":2}"#,   // a field given twice
        r#"{"na\u006de":"x"}"#, // an escaped key
        r#"{"id":01}"#,         // not JSON numbers
        r#"{"x":1.}"#,
        r#"{"x":.5}"#,
        r#"{"x":1e}"#,
        r#"{"id":1,}"#, // trailing comma
        r#"{"ids":[1,,2]}"#,
        r#"{"id":1} {"id":2}"#, // two values
        r#"[{"id":1}]"#,
        r#"null"#,
        r#"{"name":"\ud800"}"#, // a lone surrogate
        r#"{"name":"\x"}"#,
        r#"{"at":"yesterday"}"#,
        r#"{"customer":"Ann"}"#,
        r#"{"items":{"sku":1}}"#,
        r#"{"counts":{"x":1.5}}"#,
        r#"{"counts":[1]}"#,
        r#"{"id":1"#,
        r#""#,
    ] {
        assert!(!agree(&row, false, &[c.as_bytes()]), "one pass took {c}");
    }
    assert!(!agree(&row, false, &[b"{\"name\":\"\xff\"}"]), "not UTF-8");
    let deep = format!(r#"{{"extra":{}{}}}"#, "[".repeat(200), "]".repeat(200));
    assert!(!agree(&row, false, &[deep.as_bytes()]), "nested too deep");
    let fine = format!(r#"{{"extra":{}{}}}"#, "[".repeat(100), "]".repeat(100));
    assert!(agree(&row, false, &[fine.as_bytes()]));
    // One payload it cannot vouch for makes it step aside for the batch.
    assert!(!agree(&row, false, &[FULL.as_bytes(), br#"{"n":1.5}"#]));
}

#[test]
fn envelopes_decode_as_the_general_path_decodes_them() {
    let row = row();
    let cases = [
        r#"{"before":null,"after":{"id":1,"name":"a","price":"1.00"},"source":{"lsn":12,"x":[1,{"y":null}]},"op":"c","ts_ms":1700000000000,"transaction":null}"#,
        r#"{"before":{"id":1,"name":"a"},"after":null,"op":"d","ts_ms":5}"#,
        r#"{"op":"u","after":{"id":2,"items":[{"sku":3}]},"before":{"id":2}}"#,
    ];
    for c in cases {
        assert!(agree(&row, true, &[c.as_bytes()]), "{c}");
    }
    assert!(!agree(&row, true, &[br#"{"op":"c","after":{"n":0.5}}"#]));
}

#[test]
fn undeclared_row_fields_are_noted_once_each() {
    for (envelope, payloads) in [
        (false, vec![r#"{"id":1,"new":{"id":2,"x":1},"more":[1],"_op":"c"}"#, r#"{"new":3,"customer":{"zip":"1"}}"#]),
        (
            true,
            vec![r#"{"op":"u","source":{"lsn":1},"before":{"id":1},"after":{"id":1,"new":"x","more":1},"ts_ms":1}"#],
        ),
    ] {
        let decoder = OnePass::new(&schema(&row(), envelope), envelope).unwrap();
        let mut unknown = Vec::new();
        let payloads: Vec<&[u8]> = payloads.iter().map(|p| p.as_bytes()).collect();
        decoder.decode(&payloads, &mut unknown).unwrap();
        assert_eq!(unknown, vec!["new", "more"], "nested fields, hidden columns and the envelope's own are not new");
    }
}

#[test]
fn schemas_with_other_types_keep_to_the_general_path() {
    for t in ["list<decimal(40,2)>", "decimal(40,2)", "bytes"] {
        let row = RowSchema::new(vec![("c".into(), ColumnType::parse(t).unwrap())]);
        let s = schema(&row, false);
        let built = OnePass::new(&s, false).is_some();
        // `bytes` is decoded as text and finished afterwards, as on the general path.
        assert_eq!(built, t == "bytes", "{t}");
    }
    let _: SchemaRef = Arc::new(Schema::empty());
}

/// A small deterministic generator (xorshift), so that a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[(self.next() % from.len() as u64) as usize]
    }
}

/// A value for a field of type `t`, mostly of the right shape, sometimes not.
fn value(r: &mut Rng, t: &ColumnType) -> String {
    if r.next().is_multiple_of(30) {
        return r.pick(&["null", "1", "1.5", "\"7\"", "true", "{}", "[]", "-0", "1e2", "\"\"", "\"x\\\"y\""]).into();
    }
    match t {
        ColumnType::Bool => r.pick(&["true", "false"]).into(),
        ColumnType::Int32 | ColumnType::Int64 => {
            r.pick(&["0", "-1", "42", "2147483647", "-2147483648", "9007199254740993", "12.0", "3e1"]).into()
        }
        ColumnType::Float64 => r.pick(&["0.1", "-2.5e-3", "1e300", "7", "-0.0", "123456789.123456789", "5E+2"]).into(),
        ColumnType::String => r
            .pick(&["\"a\"", "\"caf\\u00e9\"", "\"é\"", "\"\\ud83d\\ude00\"", "\"\\n\\t\\/\"", "\"\"", "\"{[,]}\""])
            .into(),
        ColumnType::Timestamp { .. } => r
            .pick(&["\"2026-11-25T10:00:00Z\"", "\"2026-11-25 10:00:00.5\"", "1700000000000", "\"2026-11-25\"", "-1"])
            .into(),
        ColumnType::Date => r.pick(&["\"2026-11-25\"", "20000", "\"1970-01-01\""]).into(),
        ColumnType::Time => r.pick(&["\"10:11:12\"", "\"23:59:59.999999\"", "0"]).into(),
        ColumnType::Decimal { .. } => {
            r.pick(&["\"1.50\"", "2.25", "\"-0.01\"", "7", "\"1.234\"", "1e3", "\"12345678.99\""]).into()
        }
        ColumnType::Struct(fields) => {
            let mut parts = Vec::new();
            for (n, t) in fields {
                if !r.next().is_multiple_of(5) {
                    parts.push(format!("\"{n}\":{}", value(r, t)));
                }
            }
            if r.next().is_multiple_of(4) {
                parts.push(format!(
                    "\"extra{}\":{}",
                    r.next() % 3,
                    r.pick(&["[1,{\"a\":null}]", "\"s\"", "{\"k\":[]}"])
                ));
            }
            if r.next().is_multiple_of(3) {
                let k = (r.next() % (parts.len() as u64 + 1)) as usize;
                let last = parts.pop();
                if let Some(l) = last {
                    parts.insert(k.min(parts.len()), l);
                }
            }
            let sep = r.pick(&[",", " , ", ",\n"]);
            format!("{{{}}}", parts.join(sep))
        }
        ColumnType::Map(v) => {
            let n = r.next() % 3;
            let entries: Vec<String> =
                (0..n).map(|_| format!("{}:{}", r.pick(&["\"k\"", "\"k\\n\"", "\"é\""]), value(r, v))).collect();
            format!("{{{}}}", entries.join(","))
        }
        ColumnType::List(item) => {
            let n = r.next() % 4;
            let items: Vec<String> = (0..n).map(|_| value(r, item)).collect();
            format!("[{}]", items.join(","))
        }
        _ => "null".into(),
    }
}

#[test]
fn random_payloads_agree_with_the_general_path() {
    let row = row();
    let t = ColumnType::Struct(row.columns.clone());
    let seed = std::env::var("SLUICE_ONEPASS_SEED").ok().and_then(|n| n.parse().ok()).unwrap_or(0x5eed_1234_abcd_0001);
    let mut r = Rng(seed);
    let (mut taken, mut left, mut mutants) = (0, 0, 0);
    let mut batch = Vec::new();
    // A longer hunt: SLUICE_ONEPASS_ROUNDS=400000 SLUICE_ONEPASS_SEED=7 (any non-zero seed).
    let rounds = std::env::var("SLUICE_ONEPASS_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(20_000);
    for _ in 0..rounds {
        let p = value(&mut r, &t);
        if agree(&row, false, &[p.as_bytes()]) {
            taken += 1;
            batch.push(p.clone());
        } else {
            left += 1;
        }
        // The same payload with one byte changed, added or removed, as a fuzzer would.
        let mut m = p.into_bytes();
        let at = (r.next() % (m.len() as u64 + 1)) as usize;
        let byte = *r
            .pick(&["\"", "\\", "{", "}", "[", "]", ",", ":", "0", "-", ".", "e", "n", " ", "\u{ff}"])
            .as_bytes()
            .first()
            .unwrap();
        match r.next() % 3 {
            0 if at < m.len() => m[at] = byte,
            1 if at < m.len() => drop(m.remove(at)),
            _ => m.insert(at, byte),
        }
        mutants += usize::from(agree(&row, false, &[&m]));
        agree(&row, true, &[&m]);
    }
    if taken > 0 {
        let all: Vec<&[u8]> = batch.iter().map(|p| p.as_bytes()).collect();
        assert!(agree(&row, false, &all), "the taken payloads as one batch");
    }
    // Both sides are exercised.
    eprintln!("{rounds} payloads: {taken} taken, {left} left to the general path; {mutants} mutants taken");
    assert!(taken > rounds / 20 && left > rounds / 20 && mutants > rounds / 50, "too one-sided");
}
