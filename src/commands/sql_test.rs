//! `sluice sql test`: a flow's transform over sample records, without Kafka.

use std::path::Path;
use std::process::ExitCode;

use sluice_engine::connector::PayloadFormat;
use sluice_sql::SqlStage;

use crate::plan::load_and_plan;
use crate::registry::Registry;

/// `sluice sql test CONFIG FLOW --input SAMPLE.jsonl`: the flow's tasks and SQL over sample
/// records, without Kafka or any connection. Prints the output rows as JSON lines, then the
/// records the DLQ would get, with their line and reason.
///
/// Each input line is one record: for flows whose input is a change envelope (every source but
/// a `kafka` topic read as `format: json`), a line with `op` and `after`/`before` is taken as an
/// envelope and any other object as the `after` of a create (`op: c`), so plain rows will do.
/// Flows reading Avro take the same JSON lines (no registry is involved).
pub async fn sql_test(path: &Path, registry: &Registry, name: &str, input: &Path, ts_ms: Option<i64>) -> ExitCode {
    use sluice_engine::connector::{InputMessage, Transform as _};
    let (cfg, stages) = match load_and_plan(path, registry).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let Some((i, mut stage)) = cfg.flows.iter().position(|f| f.name == name).and_then(|i| {
        let stage = stages.into_iter().find(|(j, _)| *j == i)?;
        Some(stage)
    }) else {
        eprintln!("error: no flow named `{name}` in {}", path.display());
        return ExitCode::from(2);
    };
    let text = match std::fs::read_to_string(input) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: reading {}: {e}", input.display());
            return ExitCode::from(2);
        }
    };
    // Avro flows are tried with JSON samples: rows or envelopes, as their Avro records are.
    if cfg.flows[i].input_format == PayloadFormat::Avro {
        let f = &cfg.flows[i];
        stage = match SqlStage::new(&f.name, &f.schema, PayloadFormat::Debezium, &f.transform).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
    }
    let envelope = cfg.flows[i].input_format != PayloadFormat::Json;
    let ts = ts_ms.unwrap_or_else(sluice_engine::record::now_ms);
    // (line number, payload) of every non-blank line.
    let records: Vec<(usize, Vec<u8>)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, line)| {
            let payload = match serde_json::from_str::<serde_json::Value>(line) {
                Ok(serde_json::Value::Object(o))
                    if envelope && !(o.contains_key("op") && (o.contains_key("after") || o.contains_key("before"))) =>
                {
                    serde_json::json!({"op": "c", "before": null, "after": o, "ts_ms": ts}).to_string().into_bytes()
                }
                // Envelopes, and lines that are not objects (the stage says why they fail).
                _ => line.as_bytes().to_vec(),
            };
            (n + 1, payload)
        })
        .collect();
    let messages: Vec<InputMessage<'_>> =
        records.iter().map(|(_, p)| InputMessage { key: None, payload: Some(p), timestamp_ms: Some(ts) }).collect();
    let out = match stage.process(&messages).await {
        Ok(o) => o,
        Err(sluice_engine::error::TransformError::Validation { flow, rule, index }) => {
            let line = records.get(index).map_or(0, |(n, _)| *n);
            eprintln!(
                "error: flow `{flow}`: validation rule `{rule}` (action: fail) failed for the record on line {line}"
            );
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let mut buf = Vec::new();
    if let Err(e) = sluice_connectors::encode::json_lines(&out.batches, &mut buf) {
        eprintln!("error: writing the output rows: {e}");
        return ExitCode::from(1);
    }
    println!("output: {} row{}", out.rows(), if out.rows() == 1 { "" } else { "s" });
    print!("{}", String::from_utf8_lossy(&buf));
    println!("dlq: {} record{}", out.rejected.len(), if out.rejected.len() == 1 { "" } else { "s" });
    for r in &out.rejected {
        let line = records.get(r.index).map_or(0, |(n, _)| *n);
        println!("line {line}: {}", r.reason);
    }
    ExitCode::SUCCESS
}
