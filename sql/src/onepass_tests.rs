//! The one-pass decoder against the general path it stands in for: wherever it gives a batch,
//! the pre-check passes every payload and arrow-json decodes the same batch; where a payload
//! is anything it does not read exactly as they would, it steps aside.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};
use sluice_core::schema::{ColumnType, RowSchema};

use crate::onepass::{OnePass, Unsure};
use crate::precheck::Precheck;

fn row() -> RowSchema {
    let t = |s: &str| ColumnType::parse(s).unwrap();
    RowSchema::new(vec![
        ("id".into(), ColumnType::Int64),
        ("n".into(), ColumnType::Int32),
        ("ok".into(), ColumnType::Bool),
        ("x".into(), ColumnType::Float64),
        ("name".into(), ColumnType::String),
        ("at".into(), ColumnType::TIMESTAMP),
        ("at_us".into(), t("timestamp(us)")),
        ("day".into(), ColumnType::Date),
        ("tod".into(), ColumnType::Time),
        ("price".into(), t("decimal(10,2)")),
        (
            "customer".into(),
            t("struct<name: string, address: struct<city: string, geo: struct<lat: float64>>, vip: bool>"),
        ),
        ("items".into(), t("list<struct<sku: int64, qty: int32, tags: list<string>>>")),
        ("ids".into(), t("list<int64>")),
    ])
}

fn schema(row: &RowSchema, envelope: bool) -> SchemaRef {
    let row = crate::wire::wire_schema(row);
    crate::decode::decode_schema(
        &row,
        if envelope {
            sluice_core::connector::PayloadFormat::Debezium
        } else {
            sluice_core::connector::PayloadFormat::Json
        },
    )
}

/// What the general path makes of these payloads: refused by the pre-check, or arrow-json's
/// batch (or its error).
fn general(row: &RowSchema, envelope: bool, payloads: &[&[u8]]) -> Result<RecordBatch, String> {
    let check = Precheck::new(&ColumnType::Struct(row.columns.clone()), envelope, false);
    for p in payloads {
        if let Some(why) = check.check(p, &mut Vec::new(), &mut Vec::new()) {
            return Err(why);
        }
    }
    let mut d = arrow_json::ReaderBuilder::new(schema(row, envelope))
        .with_batch_size(payloads.len().max(1))
        .build_decoder()
        .map_err(|e| e.to_string())?;
    for p in payloads {
        let n = d.decode(p).map_err(|e| e.to_string())?;
        if n != p.len() {
            return Err("more than one value".into());
        }
    }
    let batch = d.flush().map_err(|e| e.to_string())?.ok_or("nothing")?;
    if batch.num_rows() != payloads.len() {
        return Err("row count".into());
    }
    Ok(batch)
}

fn fast(row: &RowSchema, envelope: bool, payloads: &[&[u8]]) -> Result<RecordBatch, Unsure> {
    let decoder = OnePass::new(&schema(row, envelope), envelope).expect("every type is built");
    decoder.decode(payloads, &mut Vec::new())
}

/// Asserts the one-pass decoder's batch, where it gives one, is the general path's.
fn agree(row: &RowSchema, envelope: bool, payloads: &[&[u8]]) -> bool {
    match fast(row, envelope, payloads) {
        Ok(batch) => {
            let want = general(row, envelope, payloads)
                .unwrap_or_else(|e| panic!("the general path refuses what one pass took: {e}\n{:?}", text(payloads)));
            assert_eq!(batch, want, "{:?}", text(payloads));
            assert_eq!(batch.schema(), want.schema());
            true
        }
        Err(Unsure) => false,
    }
}

fn text(payloads: &[&[u8]]) -> Vec<String> {
    payloads.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect()
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
    for t in ["map<string, int64>", "decimal(40,2)", "bytes"] {
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
    if r.next().is_multiple_of(12) {
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
    let mut r = Rng(0x5eed_1234_abcd_0001);
    let (mut taken, mut left) = (0, 0);
    let mut batch = Vec::new();
    for _ in 0..20_000 {
        let p = value(&mut r, &t);
        if agree(&row, false, &[p.as_bytes()]) {
            taken += 1;
            batch.push(p);
        } else {
            left += 1;
        }
    }
    let all: Vec<&[u8]> = batch.iter().map(|p| p.as_bytes()).collect();
    assert!(agree(&row, false, &all), "the taken payloads as one batch");
    // Both sides are exercised.
    assert!(taken > 1000 && left > 1000, "taken {taken}, left {left}");
}
