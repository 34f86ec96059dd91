//! Golden cases for every column type and the nested functions: payloads in, the `source`
//! table through SQL, rows out as JSON lines (what a JSON sink writes).

#![allow(clippy::unwrap_used)]

use arrow_array::RecordBatch;
use sluice_core::connector::{InputMessage, PayloadFormat, Transform};
use sluice_core::schema::{ColumnType, RowSchema};

use crate::{SqlStage, TransformSpec};

fn schema(columns: &[(&str, &str)]) -> RowSchema {
    RowSchema::new(columns.iter().map(|(n, t)| ((*n).to_owned(), ColumnType::parse(t).unwrap())).collect())
}

pub(crate) fn lines(batches: &[RecordBatch]) -> Vec<String> {
    let mut w = arrow_json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow_json::writer::LineDelimited>(Vec::new());
    for b in batches {
        w.write(b).unwrap();
    }
    w.finish().unwrap();
    String::from_utf8(w.into_inner()).unwrap().lines().map(str::to_owned).collect()
}

/// Runs `sql` over `payloads` (JSON rows); the output lines and the rejected rows' reasons.
async fn run(
    row: &RowSchema,
    format: PayloadFormat,
    sql: &str,
    payloads: &[&'static str],
) -> (Vec<String>, Vec<(usize, String)>, Option<Vec<usize>>) {
    let mut s = SqlStage::new("t", row, format, &TransformSpec::sql(sql)).await.unwrap();
    let input: Vec<InputMessage<'static>> = payloads
        .iter()
        .map(|p| InputMessage { key: None, payload: Some(p.as_bytes()), timestamp_ms: Some(1) })
        .collect();
    let out = s.process(&input).await.unwrap();
    let rejected = out.rejected.iter().map(|r| (r.index, r.reason.clone())).collect();
    (lines(&out.batches), rejected, out.origins)
}

fn order() -> RowSchema {
    schema(&[
        ("id", "int64"),
        ("customer", "struct<name: string, address: struct<city: string, zip: string>>"),
        ("items", "list<struct<sku: int64, qty: int32, price: decimal(10,2)>>"),
        ("tags", "map<string, string>"),
    ])
}

const ORDER: &str = r#"{"id":1,"customer":{"name":"Ann","address":{"city":"Paris","zip":"75001"}},"items":[{"sku":10,"qty":2,"price":"1.50"},{"sku":11,"qty":1,"price":2.25}],"tags":{"channel":"web"}}"#;
const ORDER2: &str = r#"{"id":2,"customer":{"name":"Bob","address":null},"items":[],"tags":null}"#;
const BAD_CITY: &str =
    r#"{"id":3,"customer":{"name":"Cy","address":{"city":7}},"items":[{"sku":12,"qty":1,"price":"9.99"}]}"#;

#[tokio::test]
async fn nested_fields_are_reached_by_path_and_written_back_nested() {
    let (out, rejected, _) = run(
        &order(),
        PayloadFormat::Json,
        "SELECT id, customer['address']['city'] AS city, customer.name AS name, array_length(items) AS n, \
         tags['channel'] AS channel, items[1]['price'] AS first_price, named_struct('who', customer.name, 'n', id) AS s, \
         make_array(id, id * 10) AS ids FROM source",
        &[ORDER, ORDER2],
    )
    .await;
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(
        out,
        vec![
            r#"{"id":1,"city":"Paris","name":"Ann","n":2,"channel":"web","first_price":1.50,"s":{"who":"Ann","n":1},"ids":[1,10]}"#,
            r#"{"id":2,"city":null,"name":"Bob","n":0,"channel":null,"first_price":null,"s":{"who":"Bob","n":2},"ids":[2,20]}"#,
        ]
    );
    // `SELECT *` writes nested values as nested JSON, not as text.
    let (out, _, _) =
        run(&order(), PayloadFormat::Json, "SELECT id, customer, items, tags FROM source WHERE id = 1", &[ORDER]).await;
    assert_eq!(
        out,
        vec![
            r#"{"id":1,"customer":{"name":"Ann","address":{"city":"Paris","zip":"75001"}},"items":[{"sku":10,"qty":2,"price":1.50},{"sku":11,"qty":1,"price":2.25}],"tags":{"channel":"web"}}"#
        ]
    );
}

#[tokio::test]
async fn unnest_makes_one_row_per_item_traced_to_its_message_and_a_bad_record_goes_alone() {
    let (out, rejected, origins) = run(
        &order(),
        PayloadFormat::Json,
        "SELECT id, item.sku AS sku, item.price * item.qty AS total, item['price'] * 2 AS twice \
         FROM (SELECT id, unnest(items) AS item FROM source)",
        &[ORDER, BAD_CITY, ORDER2],
    )
    .await;
    assert_eq!(rejected, vec![(1, "decode: customer.address.city: expected text (string), got a number".to_owned())]);
    assert_eq!(
        out,
        vec![r#"{"id":1,"sku":10,"total":3.00,"twice":3.00}"#, r#"{"id":1,"sku":11,"total":2.25,"twice":4.50}"#]
    );
    // Both output rows came from message 0: an acknowledgement or a dead letter for either
    // names that message.
    assert_eq!(origins, Some(vec![0, 0]));
}

#[tokio::test]
async fn decimals_stay_exact_through_arithmetic() {
    let row = schema(&[("id", "int64"), ("amount", "decimal(20,4)"), ("big", "decimal(50,10)")]);
    let (out, rejected, _) = run(
        &row,
        PayloadFormat::Debezium,
        "SELECT id, amount, amount + amount AS twice, big FROM source",
        &[
            r#"{"op":"c","after":{"id":1,"amount":"12345678901234.5678","big":"1234567890123456789012345678901234567890.0123456789"},"ts_ms":1}"#,
            r#"{"op":"c","after":{"id":2,"amount":0.1,"big":null},"ts_ms":1}"#,
            r#"{"op":"c","after":{"id":3,"amount":"1.23456","big":null},"ts_ms":1}"#,
            r#"{"op":"c","after":{"id":4,"amount":"123456789012345678","big":null},"ts_ms":1}"#,
            r#"{"op":"c","after":{"id":5,"amount":"-0.0001","big":null},"ts_ms":1}"#,
        ],
    )
    .await;
    assert_eq!(
        out[..2],
        [
            r#"{"id":1,"amount":12345678901234.5678,"twice":24691357802469.1356,"big":1234567890123456789012345678901234567890.0123456789}"#,
            r#"{"id":2,"amount":0.1000,"twice":0.2000,"big":null}"#,
        ]
    );
    // A value with more digits after the point than the column has is not rounded silently.
    assert_eq!(out[2], r#"{"id":5,"amount":-0.0001,"twice":-0.0002,"big":null}"#);
    assert_eq!(rejected.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(
        rejected[0].1,
        "decode: amount: 1.23456 has more than 4 digits after the point; the record is refused rather than rounded"
    );
    assert_eq!(rejected[1].1, "decode: amount: 123456789012345678 has more than 16 digits before the point");
}

#[tokio::test]
async fn json_bytes_uuid_time_and_timestamp_units() {
    let row = schema(&[
        ("doc", "json"),
        ("raw", "bytes"),
        ("ref", "uuid"),
        ("at", "time"),
        ("seen", "timestamp(us)"),
        ("local", "timestamp_ntz(ms)"),
        ("day", "date"),
    ]);
    let (out, rejected, _) = run(
        &row,
        PayloadFormat::Json,
        "SELECT json_get_str(doc, 'a') AS a, doc, length(raw) AS raw_len, ref, at, seen, local, day FROM source",
        &[
            r#"{"doc":{"a":"x","n":[1,2]},"raw":"aGVsbG8=","ref":"123e4567-e89b-12d3-a456-426614174000","at":"10:11:12.5","seen":"2024-05-01T10:00:00.123456Z","local":"2024-05-01T10:00:00","day":"2024-05-01"}"#,
            r#"{"doc":[1,"two"],"raw":null,"ref":null,"at":null,"seen":1714557600123456,"local":null,"day":null}"#,
            r#"{"doc":null,"raw":"not base64!","ref":null}"#,
            r#"{"ref":"123"}"#,
        ],
    )
    .await;
    assert_eq!(
        out,
        vec![
            r#"{"a":"x","doc":"{\"a\":\"x\",\"n\":[1,2]}","raw_len":5,"ref":"123e4567-e89b-12d3-a456-426614174000","at":"10:11:12.500","seen":"2024-05-01T10:00:00.123456Z","local":"2024-05-01T10:00:00","day":"2024-05-01"}"#,
            r#"{"a":null,"doc":"[1,\"two\"]","raw_len":null,"ref":null,"at":null,"seen":"2024-05-01T10:00:00.123456Z","local":null,"day":null}"#,
        ]
    );
    let reasons: Vec<&str> = rejected.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(rejected.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![2, 3], "{reasons:?}");
    assert!(reasons[0].contains("raw") && reasons[0].contains("not base64"), "{reasons:?}");
    assert!(reasons[1].contains("`123` is not a UUID"), "{reasons:?}");
}

#[tokio::test]
async fn floats_keep_nan_and_infinities_and_bytes_read_postgres_hex() {
    let row = schema(&[("f", "float64"), ("raw", "bytes")]);
    let (out, rejected, _) = run(
        &row,
        PayloadFormat::Json,
        "SELECT CAST(f AS VARCHAR) AS f, length(raw) AS n FROM source",
        &[r#"{"f":"NaN","raw":"\\x6869"}"#, r#"{"f":"Infinity"}"#, r#"{"f":"-Infinity"}"#, r#"{"f":1.5}"#],
    )
    .await;
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(
        out,
        vec![r#"{"f":"NaN","n":2}"#, r#"{"f":"inf","n":null}"#, r#"{"f":"-inf","n":null}"#, r#"{"f":"1.5","n":null}"#]
    );
}
