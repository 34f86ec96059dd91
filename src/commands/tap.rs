//! `sluice tap CONFIG FLOW [--stage source|output|dlq] [--limit N]`: a flow's records printed
//! live as they pass, one JSON object per line, without touching the flow's consumer group or
//! offsets (as Vector's `tap`).
//!
//! - `source`: the records the flow's SQL reads (its changes topic, or the topic it reads);
//! - `output`: those records through the flow's own plan, planned here from the same config —
//!   the rows the destination is handed (rows the plan refuses are said on stderr);
//! - `dlq`: dead letters as they are written, with their reasons in the headers.

use std::path::Path;
use std::process::ExitCode;

use serde_json::{Value, json};
use sluice_connectors::Input;
use sluice_engine::connector::{InputMessage, Transform as _};
use sluice_engine::kafka::{StoredMessage, tail_topic};
use tokio::sync::mpsc;

use crate::cluster::{Attach, own_cluster};
use crate::plan::{known_flow, load_and_plan};
use crate::registry::Registry;

/// Which records `tap` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum TapStage {
    /// What the flow's SQL reads.
    Source,
    /// What the flow's SQL gives the destination.
    Output,
    /// Dead letters.
    Dlq,
}

/// The most records put through the plan at once for `--stage output`.
const OUTPUT_BATCH: usize = 500;

/// `sluice tap`.
pub(crate) async fn tap(
    path: &Path,
    registry: &Registry,
    flow: &str,
    stage: TapStage,
    limit: Option<usize>,
) -> ExitCode {
    let (cfg, stages) = match load_and_plan(path, registry).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    if let Err(code) = known_flow(&cfg, flow) {
        return code;
    }
    let Some((i, mut plan)) = stages.into_iter().find(|(i, _)| cfg.flows[*i].name == flow) else {
        eprintln!("error: flow `{flow}` has no plan");
        return ExitCode::from(2);
    };
    let f = &cfg.flows[i];
    let (_broker, own) = match own_cluster(&cfg, Attach::IfRunning).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let (kafka, topic) = match stage {
        TapStage::Dlq => (own.clone(), own.dlq_topic(&f.name)),
        TapStage::Source | TapStage::Output => {
            // invariant: the loader checked that the connection exists.
            let Some(conn) = cfg.connections.get(&f.source_connection) else { return ExitCode::from(2) };
            let ctx = sluice_connectors::Context::new(&f.source_connection, &own, &f.name);
            match conn.build_source(ctx, &f.source_object, &f.source, false) {
                Ok(Input::Topic { kafka, topic, .. }) => (kafka, topic),
                Ok(Input::Source(_)) => (own.clone(), own.changes_topic(&f.name)),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(1);
                }
            }
        }
    };
    let (tx, mut rx) = mpsc::channel::<StoredMessage>(4 * OUTPUT_BATCH);
    let follow = {
        let (kafka, topic) = (kafka.clone(), topic.clone());
        tokio::spawn(async move { tail_topic(&kafka, &topic, tx).await })
    };
    eprintln!("tapping {topic} ({stage:?}); Ctrl-C to stop", stage = stage);
    let mut printed = 0usize;
    let done = |n: usize| limit.is_some_and(|l| n >= l);
    while !done(printed) {
        let Some(first) = rx.recv().await else { break };
        if stage != TapStage::Output {
            println!("{}", describe(&topic, &first));
            printed += 1;
            continue;
        }
        let mut batch = vec![first];
        while batch.len() < OUTPUT_BATCH
            && let Ok(m) = rx.try_recv()
        {
            batch.push(m);
        }
        let inputs: Vec<InputMessage<'_>> = batch
            .iter()
            .map(|m| InputMessage {
                key: m.key.as_deref(),
                payload: m.payload.as_deref(),
                timestamp_ms: m.timestamp_ms,
            })
            .collect();
        let out = match plan.process(&inputs).await {
            Ok(out) => out,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        };
        for r in &out.rejected {
            let m = &batch[r.index];
            eprintln!("refused: partition {} offset {}: {}", m.partition, m.offset, r.reason);
        }
        let mut lines = Vec::new();
        if let Err(e) = sluice_connectors::encode::json_lines(&out.batches, &mut lines) {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
        for line in String::from_utf8_lossy(&lines).lines() {
            if done(printed) {
                break;
            }
            println!("{line}");
            printed += 1;
        }
    }
    drop(rx);
    match follow.await {
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
        _ => ExitCode::SUCCESS,
    }
}

/// A message as one JSON object: where it is, its key and value (as JSON when they are), its
/// headers.
fn describe(topic: &str, m: &StoredMessage) -> Value {
    let as_json = |b: &Option<Vec<u8>>| -> Value {
        match b.as_deref() {
            None => Value::Null,
            Some(b) => serde_json::from_slice(b).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into())),
        }
    };
    let headers: serde_json::Map<String, Value> =
        m.headers.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    json!({
        "topic": topic,
        "partition": m.partition,
        "offset": m.offset,
        "timestamp_ms": m.timestamp_ms,
        "key": as_json(&m.key),
        "value": as_json(&m.payload),
        "headers": headers,
    })
}
