//! `sluice dlq show` and `sluice dlq replay`: a flow's dead letters, read or sent through again.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use sluice_engine::kafka::{self};
use sluice_engine::ledger::Ledger;
use sluice_engine::names::dlq_header;
use sluice_engine::runtime::{self, FlowContext, SinkInput};
use sluice_sql::SqlStage;
use tokio::sync::watch;

use crate::cluster::{Attach, own_cluster};
use crate::config::{Config, Flow};
use crate::plan::{build_sink, known_flow, load_and_plan};
use crate::registry::Registry;
use crate::run::{flow_context, is_stop};

/// `sluice dlq show CONFIG FLOW`.
pub async fn dlq_show(path: &Path, registry: &Registry, flow: &str, limit: usize) -> ExitCode {
    let (_cfg, _broker, own) = match super::config_and_cluster(path, registry, Some(flow)).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let topic = own.dlq_topic(flow);
    let letters = match kafka::read_topic(&own, &topic, limit).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    println!("{topic}: {} dead letter{}", letters.len(), if letters.len() == 1 { "" } else { "s" });
    for m in &letters {
        let h = |k: &str| m.header(k).unwrap_or("?").to_owned();
        println!(
            "\n[{}:{}] stage {} · attempts {} · at {} ms",
            m.partition,
            m.offset,
            h(dlq_header::STAGE),
            h(dlq_header::ATTEMPTS),
            h(dlq_header::TS_MS)
        );
        println!("  error:   {}", h(dlq_header::ERROR));
        if let (Some(t), Some(p), Some(o)) =
            (m.header(dlq_header::TOPIC), m.header(dlq_header::PARTITION), m.header(dlq_header::OFFSET))
        {
            println!("  from:    {t} partition {p} offset {o}");
        }
        if let Some(k) = &m.key {
            println!("  key:     {}", shorten(k));
        }
        println!("  payload: {}", m.payload.as_deref().map_or_else(|| "(none)".to_owned(), shorten));
    }
    ExitCode::SUCCESS
}

/// `sluice dlq replay CONFIG FLOW`: sends the flow's dead letters through its SQL and sink
/// again, after a fix.
///
/// The replay is a sink worker whose input is the DLQ topic, in its own consumer group, so its
/// commits mark what was replayed: a second replay resends only dead letters that arrived
/// since. It stops at the DLQ's end as it was when the replay started; letters that fail again
/// are appended to the DLQ with their attempt count raised (and the original topic, partition
/// and offset kept), for the next replay.
pub async fn dlq_replay(path: &Path, registry: &Registry, name: &str) -> ExitCode {
    let (cfg, stages) = match load_and_plan(path, registry).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    if let Err(code) = known_flow(&cfg, name) {
        return code;
    }
    let Some((i, stage)) = stages.into_iter().find(|(i, _)| cfg.flows[*i].name == name) else {
        eprintln!("error: flow `{name}` has no planned SQL stage");
        return ExitCode::from(1);
    };
    let flow = cfg.flows[i].clone();
    let shutdown = crate::stop::on_signal();
    let (_broker, own) = match own_cluster(&cfg, Attach::IfRunning).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let metrics = sluice_engine::telemetry::FlowMetrics::disabled(&flow.name);
    let ctx = flow_context(&flow, &own, Ledger::shared(), metrics, &shutdown);
    let started = Instant::now();
    match replay(&cfg, &flow, &ctx, stage).await {
        Ok(dest) => {
            let s = ctx.ledger.snapshot();
            println!(
                "flow {name}: replayed {} dead letter(s) to {dest}: delivered {}, filtered {}, dead-lettered again {}, dropped {} in {:.1} s",
                s.consumed,
                s.delivered,
                s.filtered,
                s.sink_dlq,
                s.dropped,
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) if is_stop(&e) => {
            eprintln!("flow `{name}`: replay stopped while retrying a write; run it again to resend the rest");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: replaying the DLQ of flow `{name}`: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Sends `flow`'s dead letters through `stage` and its destination again, up to the DLQ's end
/// as it is now; returns where rows went.
pub(crate) async fn replay(cfg: &Config, flow: &Flow, ctx: &FlowContext, stage: SqlStage) -> anyhow::Result<String> {
    let own = &ctx.kafka;
    let dlq = own.dlq_topic(&flow.name);
    own.ensure_topics(&[&dlq]).await?;
    let sink = build_sink(cfg, flow, own).await?;
    let dest = sink.describe();
    let marks = kafka::committed_ends(own, &dlq).await?;
    let (_stop_tx, stop_rx) = watch::channel(Some(marks));
    let input = SinkInput { kafka: own.clone(), topic: dlq, group: own.replay_group(&flow.name), earlier: Vec::new() };
    runtime::run_sink(ctx, input, Box::new(stage), sink, stop_rx).await?;
    Ok(dest)
}

/// Bytes as text for a terminal: lossy UTF-8, at most 300 characters.
fn shorten(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text.chars().take(300).collect();
    if text.chars().count() > 300 {
        out.push_str(&format!("… ({} bytes)", bytes.len()));
    }
    out
}
