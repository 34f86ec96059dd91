//! The one-pass decoder checked against the general path it stands in for (pre-check, then
//! arrow-json): used by the unit tests and by the `json_onepass` fuzz target, which hunts for
//! a payload the two read differently. Not API; hidden from the docs.

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use sluice_core::connector::PayloadFormat;
use sluice_core::schema::{ColumnType, RowSchema};

use crate::onepass::{OnePass, Unsure};
use crate::precheck::Precheck;

/// A row with every type the one-pass decoder builds, nested every way it nests them.
pub fn row() -> RowSchema {
    let t = |s: &str| ColumnType::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
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
        ("attrs".into(), t("map<string, struct<w: int32, tags: list<string>>>")),
        ("counts".into(), t("map<string, int64>")),
    ])
}

/// The decode schema of `row`: the row itself, or a Debezium envelope around it.
pub(crate) fn schema(row: &RowSchema, envelope: bool) -> SchemaRef {
    let format = if envelope { PayloadFormat::Debezium } else { PayloadFormat::Json };
    crate::decode::decode_schema(&crate::wire::wire_schema(row), format)
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
        let p = &crate::decode::surrogate_pairs_as_utf8(p);
        let n = d.decode(p).map_err(|e| e.to_string())?;
        if n != p.len() {
            return Err("more than one value".into());
        }
    }
    let batch = d.flush().map_err(|e| e.to_string())?.ok_or("nothing decoded")?;
    if batch.num_rows() != payloads.len() {
        return Err("a payload is not one whole value".into());
    }
    Ok(batch)
}

/// Whether the one-pass decoder took the payloads (`Ok(false)`: it stepped aside); `Err`
/// describes a disagreement: it took what the general path refuses, or decoded it differently.
pub fn agree(row: &RowSchema, envelope: bool, payloads: &[&[u8]]) -> Result<bool, String> {
    let Some(decoder) = OnePass::new(&schema(row, envelope), envelope) else {
        return Err("the one-pass decoder does not build this row".into());
    };
    let shown = || payloads.iter().map(|p| String::from_utf8_lossy(p)).collect::<Vec<_>>().join("\n");
    match decoder.decode(payloads, &mut Vec::new()) {
        Err(Unsure) => Ok(false),
        Ok(batch) => match general(row, envelope, payloads) {
            Err(e) => Err(format!("the general path refuses what one pass took ({e}):\n{}", shown())),
            Ok(want) if want != batch || want.schema() != batch.schema() => {
                Err(format!("decoded differently:\n{}\none pass: {batch:?}\ngeneral: {want:?}", shown()))
            }
            Ok(_) => Ok(true),
        },
    }
}
