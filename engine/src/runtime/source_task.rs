//! The source task: poll the source; publish its records, dead letters and position in one
//! transaction per batch.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use tracing::Instrument;

use super::FlowContext;
use super::dead_letters::{DeadLetters, Origin, confirm, enqueue};
use super::retry::Backoff;
use super::source_read::{Step, next_step, read_while_committing};
use crate::connector::{Position, Source, SourceItem};
use crate::error::FlowError;
use crate::errors_policy::ErrorMode;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::kafka::{self, KafkaSettings};
use crate::ledger::Ledger;
use crate::producer::Producer;
use crate::record::now_ms;
use crate::telemetry::{Stage, trace};

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
    for m in kafka::read_topic(settings, &settings.positions_topic(), usize::MAX).await? {
        // One flow's positions share a key, so a partition, so the last one read is the latest.
        if let (true, Some(p)) = (m.key.as_deref() == Some(flow.as_bytes()), m.payload.as_deref()) {
            last = Some(p.to_vec());
        }
    }
    let Some(bytes) = last else { return Ok(None) };
    let corrupt = |why: String| {
        FlowError::Internal(format!(
            "reading the position of flow `{flow}` from {}: {why}; the source cannot tell where to resume",
            settings.positions_topic()
        ))
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let position = v.get("position").cloned().ok_or_else(|| corrupt("it has no `position`".into()))?;
    let pull_id = v.get("pull_id").and_then(serde_json::Value::as_str).map(str::to_owned);
    Ok(Some(StoredPosition { position, pull_id }))
}

/// How a source's turn as the flow's writer ended.
#[derive(Debug)]
pub enum SourceEnd {
    /// The source has nothing more (an on-demand pull is complete).
    Exhausted,
    /// Shutdown was requested; every committed batch's position is stored.
    Stopped,
    /// Another process owns the source now: the claim was revoked or this producer was fenced.
    /// Whatever this process had not committed was aborted and is the new owner's to publish.
    Lost,
    /// A batch's transaction failed and was aborted (the cluster refused or timed out a write):
    /// nothing of it is visible. The source must start again from the stored position.
    Aborted {
        /// Why.
        error: FlowError,
        /// Whether batches committed before this one in the same turn (the failure is new).
        progressed: bool,
    },
}

/// The writer of a flow's source while this process owns it: a transactional producer
/// registered with the flow's transactional id (or, where the cluster has no transactions, an
/// idempotent one), and the signal that the claim was lost.
pub struct SourceWriter {
    producer: Producer,
    pub(super) lost: tokio_util::sync::CancellationToken,
    pub(super) transactional: bool,
    /// This turn's writer id (see [`super::writer_id`]), in every record's `source.writer` and in
    /// every stored position.
    id: serde_json::Value,
}

/// Set once a cluster said it cannot commit transactions (tansu 0.6, the embedded broker, has
/// no EndTxn, also when reached as an external cluster through `sluice broker`): from then on
/// this process's sources write without them, as `kafka.transactions: false` would.
static NO_TRANSACTIONS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// How long a transaction call may wait for its coordinator.
const TXN_TIMEOUT: Duration = Duration::from_secs(60);

impl SourceWriter {
    /// Registers the flow's transactional id, which fences every earlier writer of the flow (an
    /// earlier owner's open transaction is aborted, its later writes refused). `lost` is
    /// cancelled when this process's claim on the source goes.
    ///
    /// Without transactions (`kafka.transactions: false`) the producer is idempotent only: each
    /// batch is acknowledged before its position is stored, and the position is stored only
    /// while the claim is held.
    pub async fn start(
        ctx: &FlowContext,
        lost: tokio_util::sync::CancellationToken,
    ) -> Result<SourceWriter, FlowError> {
        if !ctx.kafka.transactions || NO_TRANSACTIONS.load(std::sync::atomic::Ordering::Relaxed) {
            let producer = ctx.kafka.producer(&format!("{}.{}.source", ctx.kafka.namespace, ctx.flow))?;
            return Ok(SourceWriter { producer, lost, transactional: false, id: next_turn() });
        }
        let producer = ctx.kafka.source_producer(&ctx.flow)?;
        producer.init_transactions(TXN_TIMEOUT).await.map_err(ctx.kafka_err(format!(
            "registering the source's transactional id {}",
            ctx.kafka.source_transactional_id(&ctx.flow)
        )))?;
        Ok(SourceWriter { producer, lost, transactional: true, id: next_turn() })
    }
}

/// Runs a source until it is exhausted, shutdown is requested or the claim on it is lost.
///
/// Each batch's records, its dead letters and the position after it are one Kafka transaction:
/// all visible to readers (`read_committed`) or none. A position is therefore never stored
/// ahead of the records before it, and a batch that fails leaves nothing behind to duplicate.
/// Only after the commit may the upstream forget what came before (a slot advances).
///
/// While a batch's transaction commits (a round trip to the transaction coordinator and the
/// partitions' leaders), the next batch is already being read: reading the upstream and
/// waiting for Kafka overlap instead of taking turns. Polls go on while the commit does, up to
/// [`GATHER_POLLS`](super::source_read::GATHER_POLLS) of them, and what they read is the next
/// batch: a commit costs about the same whatever its size (Apache Kafka 4.4 took ≈ 100 ms each,
/// as the next transaction waits for the last one's markers), so under a backlog batches grow
/// until reading keeps up with committing, and at a trickle each poll still goes out alone.
/// Without transactions a batch stays within one poll's `max_records`
/// ([`batch_limit`](super::source_read::batch_limit)): there it is what a fault publishes twice.
/// The batch read ahead is published only after the one before it committed and
/// [`Source::committed`] was told; if that commit fails, the batch read ahead is dropped with
/// the source, and the next turn reads it again from the stored position.
pub async fn run_source(
    ctx: &FlowContext,
    mut source: Box<dyn Source>,
    resume: Option<Position>,
    writer: &SourceWriter,
) -> Result<SourceEnd, FlowError> {
    let topic = ctx.kafka.changes_topic(&ctx.flow);
    source
        .open(resume)
        .await
        .map_err(|source| FlowError::Connector { flow: ctx.flow.clone(), source: Box::new(source) })?;
    // A source's upstream may hiccup (a database restarting, a connection reset): retriable
    // errors are retried within the flow's retry policy, counted from the first failure.
    let mut failing: Option<Backoff> = None;
    let mut progressed = false;
    let mut sampling = trace::Sampling::new();
    let mut ahead: VecDeque<Step> = VecDeque::new();
    loop {
        let step = match ahead.pop_front() {
            Some(step) => step,
            None => next_step(ctx, source.as_mut(), writer, &mut failing, ctx.batch.max_records).await,
        };
        let items = match step {
            Step::Items(items) => items,
            Step::Idle => continue,
            Step::End(end) => return Ok(end),
            Step::Fail(e) => return Err(e),
        };
        let span = tracing::info_span!("batch", flow = %ctx.flow, stage = "source", topic = %topic, partition = "all", records = items.len());
        let publishing = Instant::now();
        let queued = async {
            if writer.transactional {
                writer
                    .producer
                    .begin_transaction()
                    .map_err(|e| Failed::classify(ctx, writer, "starting a transaction", e))?;
            }
            let mut sent = publish(ctx, writer, &topic, items, &mut sampling).await?;
            // In the transaction, the position goes with its records; without one, only once
            // they are acknowledged (see `finish`).
            if writer.transactional
                && let Some(position) = &sent.position
            {
                let stored = store_position(ctx, writer, position).await?;
                sent.deliveries.push(stored);
            }
            Ok::<Sent, Failed>(sent)
        }
        .instrument(span.clone())
        .await;
        // The batch is queued; its commit and the next polls run together.
        let (committed, next) = match queued {
            Ok(sent) => {
                let finishing = finish(ctx, writer, &topic, sent).instrument(span);
                if ahead.is_empty() {
                    read_while_committing(ctx, source.as_mut(), writer, &mut failing, finishing).await
                } else {
                    // What was read ahead last time is not all out yet (a batch, then the end
                    // of the turn): nothing more is read before it is.
                    (finishing.await, VecDeque::new())
                }
            }
            Err(e) => (Err(e), VecDeque::new()),
        };
        let sent = match committed {
            Ok(sent) => sent,
            Err(Failed::Lost) => return Ok(SourceEnd::Lost),
            Err(Failed::Flow(e)) => return Err(e),
            Err(Failed::Abort(e)) => {
                // Nothing of the batch is visible (with transactions; without, what was
                // acknowledged is published again: duplicates, never loss). The next turn starts
                // at the stored position.
                if writer.transactional
                    && let Err(abort) = writer.producer.abort_transaction(TXN_TIMEOUT).await
                {
                    tracing::debug!(flow = %ctx.flow, error = %abort, "aborting the failed transaction");
                }
                return Ok(SourceEnd::Aborted { error: e, progressed });
            }
        };
        ahead.extend(next);
        progressed = true;
        ctx.metrics.stage(Stage::SourcePublish, publishing.elapsed());
        ctx.metrics.batch(false, sent.read);
        Ledger::add(&ctx.ledger.source_read, sent.read);
        Ledger::add(&ctx.ledger.produced, sent.produced);
        Ledger::add(&ctx.ledger.source_dlq, sent.dead);
        if let Some(position) = &sent.position {
            // Now the upstream may forget what came before (a slot advances).
            source
                .committed(position)
                .await
                .map_err(|source| FlowError::Connector { flow: ctx.flow.clone(), source: Box::new(source) })?;
        }
    }
}

/// Completes a queued batch: commits its transaction, or, without one, waits for Kafka's
/// acknowledgement of its records, then stores its position and waits for that too — only
/// while this process still owns the source.
async fn finish(ctx: &FlowContext, writer: &SourceWriter, topic: &str, mut sent: Sent) -> Result<Sent, Failed> {
    if writer.transactional {
        commit(ctx, writer, topic).await?;
        return Ok(sent);
    }
    let deliveries = std::mem::take(&mut sent.deliveries);
    wait_acknowledged(ctx, topic, deliveries)
        .await
        .map_err(|e| Failed::classify(ctx, writer, &format!("confirming delivery to {topic}"), e))?;
    if writer.lost.is_cancelled() {
        return Err(Failed::Lost);
    }
    if let Some(position) = &sent.position {
        let stored = store_position(ctx, writer, position).await?;
        let positions = ctx.kafka.positions_topic();
        wait_acknowledged(ctx, &positions, vec![stored])
            .await
            .map_err(|e| Failed::classify(ctx, writer, &format!("storing position in {positions}"), e))?;
    }
    Ok(sent)
}

/// What one batch put in its transaction.
pub(super) struct Sent {
    read: usize,
    produced: usize,
    dead: usize,
    /// The position after the batch, if it moved.
    position: Option<Position>,
    /// Kafka's acknowledgements to wait for (without transactions; a commit covers them).
    deliveries: Vec<crate::producer::Delivery>,
}

/// Why a batch's transaction did not commit.
pub(super) enum Failed {
    /// This producer was fenced: another process writes the flow's source now.
    Lost,
    /// The transaction can be aborted and the batch read again.
    Abort(FlowError),
    /// Neither: the flow stops (a bad record under `fail`, an authorization error).
    Flow(FlowError),
}

impl Failed {
    /// Sorts a producer error: fenced, fatal to the producer, or abortable.
    fn classify(ctx: &FlowContext, writer: &SourceWriter, doing: &str, e: KafkaError) -> Failed {
        if writer.transactional && e.rdkafka_error_code() == Some(RDKafkaErrorCode::UnsupportedFeature) {
            // The batch cannot be committed, nor aborted: what of it reached the broker is
            // there to stay, and the next turn writes it again without a transaction
            // (duplicates, never loss). Said once per process.
            if !NO_TRANSACTIONS.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(flow = %ctx.flow, error = %e, "the Kafka cluster cannot commit transactions; sources write without them (set `kafka.transactions: false` to say so)");
            }
            return Failed::Abort(ctx.kafka_err(doing.to_owned())(e));
        }
        let fatal = writer.producer.fatal_error();
        let fenced = |c: RDKafkaErrorCode| {
            matches!(c, RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
        };
        if e.rdkafka_error_code().is_some_and(fenced) || fatal.as_ref().is_some_and(|(c, _)| fenced(*c)) {
            return Failed::Lost;
        }
        let err = ctx.kafka_err(doing.to_owned())(e);
        if fatal.is_some() { Failed::Flow(err) } else { Failed::Abort(err) }
    }
}

/// Queues a batch's records on the changes topic and its bad inputs on the DLQ.
async fn publish(
    ctx: &FlowContext,
    writer: &SourceWriter,
    topic: &str,
    items: Vec<SourceItem>,
    sampling: &mut trace::Sampling,
) -> Result<Sent, Failed> {
    let limit = ctx.kafka.max_record_bytes;
    let dlq = DeadLetters::new(writer.producer.clone(), &ctx.flow, &ctx.kafka);
    let mut sent = Sent { read: 0, produced: 0, dead: 0, position: None, deliveries: Vec::new() };
    for item in items {
        // What goes to the DLQ instead of the changes topic, and why.
        let (key, payload, reason, source, stage) = match item {
            SourceItem::Checkpoint { position } => {
                sent.position = Some(position);
                continue;
            }
            SourceItem::Record { mut record, position } => {
                sent.read += 1;
                // Which process published it: at most one per flow at a time, as the records
                // can show.
                record.source.insert("writer".into(), writer.id.clone());
                sent.position = Some(position);
                let key = record.key_bytes();
                let payload = record.payload_bytes();
                // Checked here, before the producer: a record the cluster refuses would fail
                // the run at this record on every retry, and nothing after it would ever be
                // delivered.
                let size = key.len() + payload.len();
                if size <= limit {
                    let mut rec =
                        FutureRecord::to(topic).key(key.as_slice()).payload(payload.as_slice()).timestamp(record.ts_ms);
                    // A sampled record carries its trace to the sink worker, under a span of
                    // its own (most records are not sampled, and cost one random number).
                    let traced = if sampling.hit() { Some(trace::publish_span(&ctx.flow, topic)) } else { None };
                    if let Some((_, Some(tp))) = &traced {
                        rec = rec
                            .headers(OwnedHeaders::new().insert(Header { key: trace::TRACEPARENT, value: Some(tp) }));
                    }
                    // With a transaction the commit flushes every record and fails if any was
                    // refused; the acknowledgements are only waited for without one.
                    let delivery = enqueue(&writer.producer, rec)
                        .await
                        .map_err(|e| Failed::classify(ctx, writer, &format!("producing to {topic}"), e))?;
                    drop(traced);
                    if !writer.transactional {
                        sent.deliveries.push(delivery);
                    }
                    sent.produced += 1;
                    continue;
                }
                let reason = format!("record of {size} bytes is over the {limit}-byte limit (kafka.max_record_bytes)");
                (Some(key), payload, reason, Some(serde_json::Value::Object(record.source).to_string()), "source")
            }
            SourceItem::Malformed { payload, reason, position } => {
                sent.read += 1;
                sent.position = Some(position);
                (None, payload, reason, None, "decode")
            }
        };
        ctx.errors.admit(&ctx.flow, stage, 1, &reason).map_err(Failed::Flow)?;
        if ctx.errors.mode() == ErrorMode::Drop {
            tracing::debug!(flow = %ctx.flow, %reason, "bad source input dropped");
            Ledger::add(&ctx.ledger.dropped, 1);
        } else {
            tracing::debug!(flow = %ctx.flow, %reason, "bad source input to the DLQ");
            let origin = Origin { source: source.as_deref(), ..Origin::stage(stage) };
            let delivery = dlq.send(key.as_deref(), &payload, &reason, origin).await.map_err(|e| {
                Failed::classify(ctx, writer, &format!("producing to {}", ctx.kafka.dlq_topic(&ctx.flow)), e)
            })?;
            if !writer.transactional {
                sent.deliveries.push(delivery);
            }
            sent.dead += 1;
        }
    }
    Ok(sent)
}

/// Commits the batch's transaction. While the cluster does not acknowledge (fewer in-sync
/// replicas than `min.insync.replicas`, a leader election), librdkafka keeps retrying and the
/// commit waits; that is said every [`STALL_WARNING`] so an operator sees why the flow is
/// still. A retriable failure of the commit itself is retried, as librdkafka asks.
async fn commit(ctx: &FlowContext, writer: &SourceWriter, topic: &str) -> Result<(), Failed> {
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let call = writer.producer.commit_transaction(TXN_TIMEOUT);
        tokio::pin!(call);
        let result = loop {
            tokio::select! {
                r = &mut call => break r,
                _ = tokio::time::sleep(STALL_WARNING) => tracing::warn!(
                    flow = %ctx.flow,
                    waited_secs = started.elapsed().as_secs(),
                    "Kafka has not acknowledged the source's batch to {topic} yet; waiting (is a broker down, or fewer \
                     in-sync replicas than min.insync.replicas?)"
                ),
            }
        };
        match result {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(e)) if e.is_retriable() && attempts < 3 => continue,
            Err(e) => {
                return Err(Failed::classify(ctx, writer, &format!("committing the source's batch to {topic}"), e));
            }
        }
    }
}

/// Waits for Kafka's acknowledgement of `deliveries` (no transaction), saying every
/// [`STALL_WARNING`] that it still waits, as [`commit`] does.
async fn wait_acknowledged(
    ctx: &FlowContext,
    topic: &str,
    deliveries: Vec<crate::producer::Delivery>,
) -> Result<(), KafkaError> {
    let started = Instant::now();
    let all = confirm(deliveries);
    tokio::pin!(all);
    loop {
        tokio::select! {
            r = &mut all => return r,
            _ = tokio::time::sleep(STALL_WARNING) => tracing::warn!(
                flow = %ctx.flow,
                waited_secs = started.elapsed().as_secs(),
                "Kafka has not acknowledged the source's batch to {topic} yet; waiting (is the broker down?)"
            ),
        }
    }
}

/// How long a commit waits before saying that it waits.
const STALL_WARNING: Duration = Duration::from_secs(10);

/// Queues the flow's position after the batch, in the batch's transaction.
async fn store_position(
    ctx: &FlowContext,
    writer: &SourceWriter,
    position: &Position,
) -> Result<crate::producer::Delivery, Failed> {
    let body = serde_json::json!({
        "flow": ctx.flow,
        "position": position,
        "ts_ms": now_ms(),
        "run_id": ctx.run_id,
        "pull_id": ctx.pull_id,
        "writer": writer.id,
    });
    let payload = body.to_string();
    let topic = ctx.kafka.positions_topic();
    let rec = FutureRecord::to(&topic).key(ctx.flow.as_bytes()).payload(payload.as_bytes());
    enqueue(&writer.producer, rec)
        .await
        .map_err(|e| Failed::classify(ctx, writer, &format!("storing position in {topic}"), e))
}

/// A new turn's writer id, `<host>:<pid>/<turn>`: the process, and which of its turns as a
/// source's owner. Stored with positions and in change records' `source.writer`, so a reader can
/// tell who published what — and check that two turns never published at once.
fn next_turn() -> serde_json::Value {
    static TURNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let turn = TURNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    serde_json::Value::String(format!("{}/{turn}", super::writer_id()))
}
