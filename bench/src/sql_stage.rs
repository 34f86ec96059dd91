//! Micro-benchmark of the SQL stage's hot path on one core: a batch of ≈200-byte JSON payloads
//! decoded into Arrow (arrow-json), filtered and projected by the flow's pre-built DataFusion
//! plan, and encoded back to JSON lines (arrow-json) — what a sink worker does per batch
//! between Kafka and the destination.
//!
//!     cargo run --release -p sluice-bench --bin sql-stage [-- ROWS [BATCH [flat|nested]]]
//!
//! Prints rows/s through decode → filter+project → encode, and the decode-only rate. Runs on a
//! single-threaded runtime, so the figure is per core. `nested` runs ≈1 KB records three levels
//! deep with a list of five structs (a customer with an address and its coordinates, five
//! order lines with exact prices and tags) through a query reaching into them.

use sluice_connectors::generate::{CATEGORIES, NAMES};
use std::time::Instant;

use sluice_engine::connector::{InputMessage, PayloadFormat, Transform as _};
use sluice_engine::schema::{ColumnType, RowSchema};
use sluice_sql::{SqlStage, TransformSpec};

/// The job of issue #6's reference figures: a filter and four projected columns.
const SQL: &str = "SELECT id, upper(name) AS name, category, amount FROM source WHERE amount > 500";

/// The nested job: a filter on a field two levels down, fields reached by path and a list
/// measured.
const NESTED_SQL: &str = "SELECT id, customer['name'] AS name, customer['address']['city'] AS city, \
     array_length(items) AS lines, items[1]['price'] AS first_price, total FROM source \
     WHERE customer['address']['geo']['lat'] > 45.0";

fn nested_schema() -> RowSchema {
    let t = |s: &str| ColumnType::parse(s).unwrap_or(ColumnType::String);
    RowSchema::new(vec![
        ("id".into(), ColumnType::Int64),
        ("seq".into(), ColumnType::Int64),
        (
            "customer".into(),
            t("struct<name: string, email: string, address: struct<street: string, city: string, zip: string, \
               geo: struct<lat: float64, lon: float64>>>"),
        ),
        (
            "items".into(),
            t("list<struct<sku: int64, name: string, qty: int32, price: decimal(10,2), tags: list<string>>>"),
        ),
        ("total".into(), t("decimal(12,2)")),
        ("comment".into(), ColumnType::String),
        ("created".into(), ColumnType::TIMESTAMP),
    ])
}

fn nested_payloads(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let items: Vec<String> = (0..5)
                .map(|k| {
                    format!(
                        r#"{{"sku":{sku},"name":"{cat} item {k} of order {i}, size M, colour blue","qty":{q},"price":"{p}.{c:02}","tags":["{cat}","promo"]}}"#,
                        sku = i * 5 + k,
                        cat = CATEGORIES[(i + k) % 5],
                        q = 1 + k % 3,
                        p = 5 + (i * 7 + k) % 90,
                        c = (i + k * 13) % 100,
                    )
                })
                .collect();
            format!(
                r#"{{"id":{i},"seq":{i},"customer":{{"name":"{name}","email":"{name}{c}@example.com","address":{{"street":"{n} rue de la Paix","city":"{city}","zip":"750{z:02}","geo":{{"lat":{lat},"lon":2.35}}}}}},"items":[{items}],"total":"{t}.50","comment":"left with the concierge if nobody answers; call ahead for deliveries after six, gift wrapped, no invoice in the parcel","created":"2026-11-25T10:{m:02}:{s:02}Z"}}"#,
                name = NAMES[i % 8],
                c = i % 977,
                n = i % 200,
                city = if i % 3 == 0 { "Lyon" } else { "Paris" },
                z = i % 20,
                lat = if i % 3 == 0 { 45.76 } else { 48.85 },
                items = items.join(","),
                t = 50 + i % 400,
                m = i % 60,
                s = (i / 60) % 60,
            )
            .into_bytes()
        })
        .collect()
}

fn payloads(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"id":{i},"seq":{i},"version":{v},"name":"{name}","category":"{cat}","amount":{amount},"note":"order {i} of customer {c} placed via the web shop, paid by credit card, gift","created":"2026-11-25T10:{m:02}:{s:02}Z"}}"#,
                v = i % 7,
                name = NAMES[i % 8],
                cat = CATEGORIES[i % 5],
                amount = (i * 7919) % 1000,
                c = i % 977,
                m = i % 60,
                s = (i / 60) % 60,
            )
            .into_bytes()
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let rows: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2_000_000);
    let batch: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(5_000);
    let nested = args.next().as_deref() == Some("nested");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let flat = RowSchema::new(vec![
        ("id".into(), ColumnType::Int64),
        ("seq".into(), ColumnType::Int64),
        ("version".into(), ColumnType::Int64),
        ("name".into(), ColumnType::String),
        ("category".into(), ColumnType::String),
        ("amount".into(), ColumnType::Int64),
        ("note".into(), ColumnType::String),
        ("created".into(), ColumnType::TIMESTAMP),
    ]);
    let (schema, data, sql) =
        if nested { (nested_schema(), nested_payloads(batch), NESTED_SQL) } else { (flat, payloads(batch), SQL) };
    let avg = data.iter().map(Vec::len).sum::<usize>() / data.len();
    let input: Vec<InputMessage<'_>> = data
        .iter()
        .map(|p| InputMessage { key: Some(b"{\"id\":1}"), payload: Some(p), timestamp_ms: Some(1) })
        .collect();
    rt.block_on(async {
        let mut stage = SqlStage::new("bench", &schema, PayloadFormat::Json, &TransformSpec::sql(sql)).await?;
        let mut pass =
            SqlStage::new("bench", &schema, PayloadFormat::Json, &TransformSpec::sql("SELECT * FROM source")).await?;
        // Warm up (allocator, plan streams).
        for _ in 0..20 {
            stage.process(&input).await?;
        }
        let rounds = rows.div_ceil(batch);
        let (mut out_rows, mut out_bytes) = (0usize, 0usize);
        let started = Instant::now();
        let mut buf = Vec::with_capacity(batch * avg);
        for _ in 0..rounds {
            let out = stage.process(&input).await?;
            buf.clear();
            sluice_connectors::encode::json_lines(&out.batches, &mut buf)?;
            out_rows += out.rows();
            out_bytes += buf.len();
        }
        let full = started.elapsed().as_secs_f64();
        let started = Instant::now();
        for _ in 0..rounds {
            pass.process(&input).await?;
        }
        let decode = started.elapsed().as_secs_f64();
        let total = rounds * batch;
        println!("sql-stage micro-benchmark (one core): {total} rows of {avg} bytes, batches of {batch}");
        println!("  query: {sql}");
        println!(
            "  decode -> filter+project -> encode: {:.0} rows/s ({:.0} MB/s in), {:.2} µs/row; {} rows out, {:.1} MB",
            total as f64 / full,
            (total * avg) as f64 / full / 1e6,
            full * 1e6 / total as f64,
            out_rows,
            out_bytes as f64 / 1e6
        );
        println!(
            "  decode -> SELECT * (no encode):      {:.0} rows/s, {:.2} µs/row",
            total as f64 / decode,
            decode * 1e6 / total as f64
        );
        Ok(())
    })
}
