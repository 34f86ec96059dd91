//! The source task: poll the source, produce its records, confirm them, store the position.

use std::time::{Duration, Instant};

use rdkafka::producer::FutureRecord;
use tracing::Instrument;

use super::FlowContext;
use super::dead_letters::{DeadLetters, Origin, confirm, enqueue};
use crate::connector::{Poll, Position, Source, SourceItem};
use crate::error::FlowError;
use crate::errors_policy::ErrorMode;
use crate::kafka::{self, KafkaSettings};
use crate::ledger::Ledger;
use crate::producer::Producer;
use crate::record::now_ms;

/// A source position as stored, with the pull it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPosition {
    /// The position.
    pub position: Position,
    /// The pull that stored it: the id of the run that started the pull (a run that resumes an
    /// interrupted one goes on with its pull).
    pub pull_id: Option<String>,
}

/// Reads the last durable position stored for `flow`, if any. A stored position that does not
/// parse is an error, not a fresh start: starting over would re-read everything silently.
pub async fn load_position(settings: &KafkaSettings, flow: &str) -> Result<Option<StoredPosition>, FlowError> {
    let mut last = None;
    for m in kafka::read_topic(settings, kafka::POSITIONS_TOPIC, usize::MAX).await? {
        // One flow's positions share a key, so a partition, so the last one read is the latest.
        if let (true, Some(p)) = (m.key.as_deref() == Some(flow.as_bytes()), m.payload.as_deref()) {
            last = Some(p.to_vec());
        }
    }
    let Some(bytes) = last else { return Ok(None) };
    let corrupt = |why: String| {
        FlowError::Internal(format!(
            "reading the position of flow `{flow}` from {}: {why}; the source cannot tell where to resume",
            kafka::POSITIONS_TOPIC
        ))
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let position = v.get("position").cloned().ok_or_else(|| corrupt("it has no `position`".into()))?;
    let pull_id = v.get("pull_id").and_then(serde_json::Value::as_str).map(str::to_owned);
    Ok(Some(StoredPosition { position, pull_id }))
}

/// What the source half did in a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct SourceSummary {
    /// Records acknowledged by Kafka on the changes topic.
    pub produced: u64,
    /// Malformed inputs acknowledged on the DLQ topic.
    pub dlq: u64,
}

/// Runs a source until it is exhausted or shutdown is requested.
///
/// Each poll's records are produced, then confirmed, then the poll's last position is stored:
/// a position never runs ahead of what Kafka holds.
pub async fn run_source(
    ctx: &FlowContext,
    mut source: Box<dyn Source>,
    resume: Option<Position>,
    store_positions: bool,
) -> Result<SourceSummary, FlowError> {
    let topic = kafka::changes_topic(&ctx.flow);
    let producer = ctx.kafka.producer(&format!("sluice.{}.source", ctx.flow))?;
    let dlq = DeadLetters::new(producer.clone(), &ctx.flow, ctx.kafka.max_record_bytes);
    let limit = ctx.kafka.max_record_bytes;
    source
        .open(resume)
        .await
        .map_err(|source| FlowError::Connector { flow: ctx.flow.clone(), source: Box::new(source) })?;
    let mut summary = SourceSummary::default();
    // A source's upstream may hiccup (a database restarting, a connection reset): retriable
    // errors are retried within the flow's retry policy, counted from the first failure.
    let mut failing: Option<(Instant, usize)> = None;
    loop {
        if ctx.shutdown.is_cancelled() {
            break;
        }
        let polled = tokio::select! {
            p = source.poll(ctx.batch.max_records) => p,
            _ = ctx.shutdown.cancelled() => break,
        };
        let polled = match polled {
            Ok(p) => {
                failing = None;
                p
            }
            Err(e) if e.is_retriable() => {
                let (since, attempts) = failing.get_or_insert((Instant::now(), 0));
                *attempts += 1;
                let policy = &ctx.batch.retry;
                let wait = policy
                    .initial
                    .saturating_mul(1 << (*attempts - 1).min(16))
                    .min(policy.max_delay)
                    .max(e.retry_after().unwrap_or_default());
                if *attempts >= policy.max_attempts || since.elapsed() + wait > policy.max_elapsed {
                    return Err(FlowError::RetriesExhausted {
                        flow: ctx.flow.clone(),
                        attempts: *attempts,
                        secs: since.elapsed().as_secs(),
                        source: Box::new(e),
                    });
                }
                tracing::warn!(flow = %ctx.flow, attempt = *attempts, wait_ms = wait.as_millis() as u64, error = %e, "reading the source failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = ctx.shutdown.cancelled() => break,
                }
                continue;
            }
            Err(source) => return Err(FlowError::Connector { flow: ctx.flow.clone(), source: Box::new(source) }),
        };
        let items = match polled {
            Poll::Items(items) => items,
            Poll::Idle => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = ctx.shutdown.cancelled() => break,
                }
                continue;
            }
            Poll::Exhausted => break,
        };
        let span = tracing::info_span!("batch", flow = %ctx.flow, stage = "source", topic = %topic, partition = "all", records = items.len());
        async {
            let mut futures = Vec::with_capacity(items.len());
            let (mut read, mut produced, mut dead) = (0usize, 0u64, 0u64);
            let mut last_position = None;
            for item in items {
                // What goes to the DLQ instead of the changes topic, and why.
                let (key, payload, reason, source, stage) = match item {
                    SourceItem::Checkpoint { position } => {
                        last_position = Some(position);
                        continue;
                    }
                    SourceItem::Record { record, position } => {
                        read += 1;
                        last_position = Some(position);
                        let key = record.key_bytes();
                        let payload = record.payload_bytes();
                        // Checked here, before the producer: a record the cluster refuses would
                        // fail the run at this record on every retry, and nothing after it
                        // would ever be delivered.
                        let size = key.len() + payload.len();
                        if size <= limit {
                            let rec = FutureRecord::to(&topic)
                                .key(key.as_slice())
                                .payload(payload.as_slice())
                                .timestamp(record.ts_ms);
                            futures.push(
                                enqueue(&producer, rec)
                                    .await
                                    .map_err(ctx.kafka_err(format!("producing to {topic}")))?,
                            );
                            produced += 1;
                            continue;
                        }
                        let reason =
                            format!("record of {size} bytes is over the {limit}-byte limit (kafka.max_record_bytes)");
                        (
                            Some(key),
                            payload,
                            reason,
                            Some(serde_json::Value::Object(record.source).to_string()),
                            "source",
                        )
                    }
                    SourceItem::Malformed { payload, reason, position } => {
                        read += 1;
                        last_position = Some(position);
                        (None, payload, reason, None, "decode")
                    }
                };
                ctx.errors.admit(&ctx.flow, stage, 1, &reason)?;
                if ctx.errors.mode() == ErrorMode::Drop {
                    tracing::debug!(flow = %ctx.flow, %reason, "bad source input dropped");
                    Ledger::add(&ctx.ledger.dropped, 1);
                } else {
                    tracing::debug!(flow = %ctx.flow, %reason, "bad source input to the DLQ");
                    let origin = Origin { source: source.as_deref(), ..Origin::stage(stage) };
                    futures.push(
                        dlq.send(key.as_deref(), &payload, &reason, origin)
                            .await
                            .map_err(ctx.kafka_err(format!("producing to {}", kafka::dlq_topic(&ctx.flow))))?,
                    );
                    dead += 1;
                }
            }
            Ledger::add(&ctx.ledger.source_read, read);
            confirm(futures).await.map_err(ctx.kafka_err(format!("confirming delivery to {topic}")))?;
            Ledger::add(&ctx.ledger.produced, produced as usize);
            Ledger::add(&ctx.ledger.source_dlq, dead as usize);
            summary.produced += produced;
            summary.dlq += dead;
            if let (true, Some(position)) = (store_positions, last_position) {
                store_position(ctx, &producer, &position).await?;
                // Now the upstream may forget what came before (a replication slot advances).
                source
                    .committed(&position)
                    .await
                    .map_err(|source| FlowError::Connector { flow: ctx.flow.clone(), source: Box::new(source) })?;
            }
            Ok::<(), FlowError>(())
        }
        .instrument(span)
        .await?;
    }
    Ok(summary)
}

async fn store_position(ctx: &FlowContext, producer: &Producer, position: &Position) -> Result<(), FlowError> {
    let body = serde_json::json!({
        "flow": ctx.flow,
        "position": position,
        "ts_ms": now_ms(),
        "run_id": ctx.run_id,
        "pull_id": ctx.pull_id,
    });
    let payload = body.to_string();
    let rec = FutureRecord::to(kafka::POSITIONS_TOPIC).key(ctx.flow.as_bytes()).payload(payload.as_bytes());
    let f = enqueue(producer, rec)
        .await
        .map_err(ctx.kafka_err(format!("storing position in {}", kafka::POSITIONS_TOPIC)))?;
    confirm(vec![f]).await.map_err(ctx.kafka_err(format!("storing position in {}", kafka::POSITIONS_TOPIC)))
}
