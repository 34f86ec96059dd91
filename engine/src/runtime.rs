//! Running a flow: the source task and the sink worker.
//!
//! ```text
//!   Source ──poll──▶ run_source ──produce (idempotent, acks=all)──▶ sluice.<flow>.changes
//!                        │ malformed input                                   │
//!                        └──────────────▶ sluice.<flow>.dlq ◀── rejected ── run_sink ──▶ Sink
//!                                                                  (consumer group, SQL stage)
//! ```
//!
//! The two halves meet only through Kafka, so either can run on another machine. Each keeps one
//! promise: the source stores a position only after Kafka acknowledged every record before it;
//! the sink worker commits an offset only after the sink (or the DLQ) acknowledged every message
//! before it. A crash anywhere therefore re-delivers, never loses.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt as _, StreamExt as _};
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::connector::{InputMessage, Poll, Position, Sink, Source, SourceItem, Transform, WriteContext, Written};
use crate::error::FlowError;
use crate::errors_policy::{ErrorGate, ErrorMode};
use crate::inbox::{Batch, Inbox};
use crate::kafka::{self, KafkaSettings};
use crate::ledger::{Ledger, LedgerSnapshot, RunRecord, RunStatus};
use crate::offsets::OffsetTracker;
use crate::producer::{Delivery, Producer};
use crate::record::now_ms;

/// Tuning shared by both halves of a flow.
#[derive(Debug, Clone)]
pub struct BatchSettings {
    /// Most records per source poll and per sink batch.
    pub max_records: usize,
    /// Most payload bytes per sink batch (a batch always takes at least one message). With
    /// `max_records` this bounds what a worker holds unacknowledged, whatever the backlog.
    pub max_bytes: usize,
    /// How long a sink batch waits to fill once its first message arrived.
    pub linger: Duration,
    /// How a failing destination is retried.
    pub retry: RetryPolicy,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            max_records: 5000,
            max_bytes: 16 << 20,
            linger: Duration::from_millis(50),
            retry: RetryPolicy::default(),
        }
    }
}

/// Bounds on retrying a write that failed with a retriable error: exponential backoff with
/// full jitter, at least what the destination asked for (`Retry-After`), limited by attempts
/// and by total time — then the flow fails with the last error, having committed nothing past
/// the batch.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// The first wait.
    pub initial: Duration,
    /// The longest single wait.
    pub max_delay: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: usize,
    /// Time in all, across attempts.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
            max_attempts: 12,
            max_elapsed: Duration::from_secs(180),
        }
    }
}

/// Writes `batches` to `sink`, retrying retriable failures within `policy`.
pub async fn write_with_retry(
    flow: &str,
    sink: &mut dyn Sink,
    batches: &[arrow_array::RecordBatch],
    write: WriteContext<'_>,
    policy: &RetryPolicy,
    shutdown: &CancellationToken,
) -> Result<Written, FlowError> {
    use backon::BackoffBuilder as _;
    let started = Instant::now();
    let mut delays = backon::ExponentialBuilder::default()
        .with_min_delay(policy.initial)
        .with_max_delay(policy.max_delay)
        .with_max_times(policy.max_attempts.saturating_sub(1))
        .with_jitter()
        .build();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let err = match sink.write(batches, write).await {
            Ok(w) => return Ok(w),
            Err(e) => e,
        };
        let give_up = |source| FlowError::RetriesExhausted {
            flow: flow.to_owned(),
            attempts,
            secs: started.elapsed().as_secs(),
            source: Box::new(source),
        };
        if !err.is_retriable() {
            return Err(FlowError::Connector { flow: flow.to_owned(), source: Box::new(err) });
        }
        let Some(delay) = delays.next() else { return Err(give_up(err)) };
        let delay = delay.max(err.retry_after().unwrap_or_default());
        if started.elapsed() + delay > policy.max_elapsed {
            return Err(give_up(err));
        }
        tracing::warn!(flow, attempt = attempts, wait_ms = delay.as_millis() as u64, error = %err, "write failed; retrying");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return Err(FlowError::StoppedWhileRetrying { flow: flow.to_owned() }),
        }
    }
}

/// Where a sink worker stops: at these high watermarks (partition, next offset), or never.
pub type StopAt = watch::Receiver<Option<Vec<(i32, i64)>>>;

/// Writes to the flow's DLQ topic: the original key and payload, with the reason in headers.
#[derive(Clone)]
pub struct DeadLetters {
    producer: Producer,
    topic: String,
    flow: String,
}

/// Where a dead letter came from, for its headers.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The stage that refused it: `decode`, `sql`, `validate` or `sink`.
    pub stage: &'a str,
    /// The topic, partition and offset it was read from, when it came from Kafka.
    pub kafka: Option<(&'a str, i32, i64)>,
    /// How many times it has failed, this time included (more than 1 after a replay).
    pub attempts: u32,
}

impl DeadLetters {
    /// A DLQ writer for `flow` over `producer`.
    pub fn new(producer: Producer, flow: &str) -> Self {
        DeadLetters { producer, topic: kafka::dlq_topic(flow), flow: flow.to_owned() }
    }

    /// Queues one dead letter; the returned future resolves when Kafka acknowledged it.
    pub async fn send(
        &self,
        key: Option<&[u8]>,
        payload: &[u8],
        reason: &str,
        origin: Origin<'_>,
    ) -> Result<Delivery, KafkaError> {
        let now = now_ms().to_string();
        let attempts = origin.attempts.to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header { key: "sluice.flow", value: Some(self.flow.as_str()) })
            .insert(Header { key: "sluice.stage", value: Some(origin.stage) })
            .insert(Header { key: "sluice.error", value: Some(reason) })
            .insert(Header { key: "sluice.attempts", value: Some(attempts.as_str()) })
            .insert(Header { key: "sluice.ts_ms", value: Some(now.as_str()) });
        if let Some((topic, partition, offset)) = origin.kafka {
            headers = headers
                .insert(Header { key: "sluice.topic", value: Some(topic) })
                .insert(Header { key: "sluice.partition", value: Some(&partition.to_string()) })
                .insert(Header { key: "sluice.offset", value: Some(&offset.to_string()) });
        }
        let mut rec = FutureRecord::<[u8], [u8]>::to(&self.topic).payload(payload).headers(headers);
        if let Some(k) = key {
            rec = rec.key(k);
        }
        enqueue(&self.producer, rec).await
    }
}

/// Hands a record to the producer's queue, waiting while the queue is full.
async fn enqueue<'a>(producer: &Producer, mut rec: FutureRecord<'a, [u8], [u8]>) -> Result<Delivery, KafkaError> {
    loop {
        match producer.send_result(rec) {
            Ok(f) => return Ok(f),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                rec = back;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Waits for Kafka's acknowledgement of every queued record, failing on the first refusal.
async fn confirm(futures: Vec<Delivery>) -> Result<(), KafkaError> {
    for f in futures {
        match f.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(KafkaError::Canceled),
        }
    }
    Ok(())
}

/// Everything a flow's tasks share.
#[derive(Clone)]
pub struct FlowContext {
    /// The flow's name.
    pub flow: String,
    /// sluice's own cluster: changes, DLQ and positions topics live here.
    pub kafka: KafkaSettings,
    /// Batch sizes.
    pub batch: BatchSettings,
    /// Counters.
    pub ledger: Arc<Ledger>,
    /// Cancelled on SIGTERM/SIGINT: both halves finish their batch, commit and stop.
    pub shutdown: CancellationToken,
    /// What to do with bad records.
    pub errors: Arc<ErrorGate>,
    /// This run's id (as in its run record); sinks may name what they write after it.
    pub run_id: String,
}

impl FlowContext {
    fn kafka_err(&self, context: impl Into<String>) -> impl FnOnce(KafkaError) -> FlowError + '_ {
        let context = context.into();
        move |e| FlowError::Kafka { flow: self.flow.clone(), context, message: self.kafka.redact(e) }
    }
}

/// Publishes a flow's run record to [`kafka::RUNS_TOPIC`]: every few seconds while the flow
/// runs, and once more, with the outcome, when it ends.
pub struct RunReporter {
    record: Arc<std::sync::Mutex<RunRecord>>,
    settings: KafkaSettings,
    /// `None` when no producer could be built: the run goes on unreported.
    producer: Option<Producer>,
    ledger: Arc<Ledger>,
    ticker: tokio::task::JoinHandle<()>,
}

/// How often a running flow's record is refreshed.
const REPORT_EVERY: Duration = Duration::from_secs(5);
/// How long the final record may take to publish before the process exits without it.
const FINAL_REPORT_LIMIT: Duration = Duration::from_secs(5);

impl RunReporter {
    /// Starts reporting run `run_id` of `flow`, counted by `ledger`.
    pub fn start(settings: &KafkaSettings, flow: &str, run_id: &str, ledger: Arc<Ledger>) -> RunReporter {
        let now = now_ms();
        let record = Arc::new(std::sync::Mutex::new(RunRecord {
            flow: flow.to_owned(),
            run_id: run_id.to_owned(),
            status: RunStatus::Running,
            started_ms: now,
            updated_ms: now,
            counts: LedgerSnapshot::default(),
            error: None,
        }));
        let producer = settings.producer("sluice.runs").ok();
        let (r, s, l, p) = (record.clone(), settings.clone(), ledger.clone(), producer.clone());
        let ticker = tokio::spawn(async move {
            let Some(producer) = p else { return };
            if s.ensure_topics(&[kafka::RUNS_TOPIC]).await.is_err() {
                return;
            }
            loop {
                // `.ok()` at once: a poisoned lock's error holds the guard, which must not live
                // across the await below.
                let rec = r
                    .lock()
                    .map(|mut rec| {
                        rec.counts = l.snapshot();
                        rec.updated_ms = now_ms();
                        rec.clone()
                    })
                    .ok();
                if let Some(rec) = rec {
                    let _ = publish_run(&producer, &rec).await;
                }
                tokio::time::sleep(REPORT_EVERY).await;
            }
        });
        RunReporter { record, settings: settings.clone(), producer, ledger, ticker }
    }

    /// Publishes the final record with `status` (and the error, if it failed). Bounded: a
    /// cluster that is gone does not hold the process.
    pub async fn finish(self, status: RunStatus, error: Option<String>) {
        self.ticker.abort();
        let Ok(rec) = self.record.lock().map(|mut rec| {
            rec.status = status;
            rec.error = error;
            rec.counts = self.ledger.snapshot();
            rec.updated_ms = now_ms();
            rec.clone()
        }) else {
            return;
        };
        let (settings, producer) = (self.settings, self.producer);
        let publish = async move {
            // The ticker may not have got as far as creating the topic (a short run).
            settings.ensure_topics(&[kafka::RUNS_TOPIC]).await.ok()?;
            publish_run(producer.as_ref()?, &rec).await.ok()
        };
        if tokio::time::timeout(FINAL_REPORT_LIMIT, publish).await.ok().flatten().is_none() {
            tracing::warn!("the run record could not be written to {}", kafka::RUNS_TOPIC);
        }
    }
}

async fn publish_run(producer: &Producer, rec: &RunRecord) -> Result<(), KafkaError> {
    let payload = serde_json::to_vec(rec).unwrap_or_default();
    let f = enqueue(producer, FutureRecord::to(kafka::RUNS_TOPIC).key(rec.flow.as_bytes()).payload(payload.as_slice()))
        .await?;
    confirm(vec![f]).await
}

/// The latest run record of each flow, from [`kafka::RUNS_TOPIC`].
pub async fn latest_runs(settings: &KafkaSettings) -> Result<HashMap<String, RunRecord>, kafka::KafkaSetupError> {
    let mut out = HashMap::new();
    for m in kafka::read_topic(settings, kafka::RUNS_TOPIC, usize::MAX).await? {
        if let Some(rec) = m.payload.as_deref().and_then(|p| serde_json::from_slice::<RunRecord>(p).ok()) {
            // One flow's records share a key, so a partition, so offset order is time order.
            out.insert(rec.flow.clone(), rec);
        }
    }
    Ok(out)
}

/// Reads the last durable position stored for `flow`, if any.
pub async fn load_position(settings: &KafkaSettings, flow: &str) -> Result<Option<Position>, FlowError> {
    let mut last = None;
    for m in kafka::read_topic(settings, kafka::POSITIONS_TOPIC, usize::MAX).await? {
        // One flow's positions share a key, so a partition, so the last one read is the latest.
        if let (true, Some(p)) = (m.key.as_deref() == Some(flow.as_bytes()), m.payload.as_deref()) {
            let v: serde_json::Value = serde_json::from_slice(p).unwrap_or_default();
            last = v.get("position").cloned();
        }
    }
    Ok(last)
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
    let dlq = DeadLetters::new(producer.clone(), &ctx.flow);
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
            Ledger::add(&ctx.ledger.source_read, items.len());
            let mut futures = Vec::with_capacity(items.len());
            let (mut produced, mut dead) = (0u64, 0u64);
            let mut last_position = None;
            for item in items {
                match item {
                    SourceItem::Record { record, position } => {
                        let key = record.key_bytes();
                        let payload = record.payload_bytes();
                        let rec = FutureRecord::to(&topic)
                            .key(key.as_slice())
                            .payload(payload.as_slice())
                            .timestamp(record.ts_ms);
                        futures.push(
                            enqueue(&producer, rec).await.map_err(ctx.kafka_err(format!("producing to {topic}")))?,
                        );
                        produced += 1;
                        last_position = Some(position);
                    }
                    SourceItem::Malformed { payload, reason, position } => {
                        ctx.errors.admit(&ctx.flow, "decode", 1, &reason)?;
                        if ctx.errors.mode() == ErrorMode::Drop {
                            tracing::debug!(flow = %ctx.flow, %reason, "malformed source input dropped");
                            Ledger::add(&ctx.ledger.dropped, 1);
                        } else {
                            tracing::debug!(flow = %ctx.flow, %reason, "malformed source input to the DLQ");
                            let origin = Origin { stage: "decode", kafka: None, attempts: 1 };
                            futures.push(
                                dlq.send(None, &payload, &reason, origin)
                                    .await
                                    .map_err(ctx.kafka_err(format!("producing to {}", kafka::dlq_topic(&ctx.flow))))?,
                            );
                            dead += 1;
                        }
                        last_position = Some(position);
                    }
                }
            }
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
    let body = serde_json::json!({ "flow": ctx.flow, "position": position, "ts_ms": now_ms() });
    let payload = body.to_string();
    let rec = FutureRecord::to(kafka::POSITIONS_TOPIC).key(ctx.flow.as_bytes()).payload(payload.as_bytes());
    let f = enqueue(producer, rec)
        .await
        .map_err(ctx.kafka_err(format!("storing position in {}", kafka::POSITIONS_TOPIC)))?;
    confirm(vec![f]).await.map_err(ctx.kafka_err(format!("storing position in {}", kafka::POSITIONS_TOPIC)))
}

/// What the sink half did in a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct SinkSummary {
    /// Messages consumed.
    pub consumed: u64,
    /// Rows the sink acknowledged.
    pub delivered: u64,
    /// Messages removed by the SQL filter.
    pub filtered: u64,
    /// Messages sent to the DLQ.
    pub dlq: u64,
}

/// Where the sink worker reads from.
pub struct SinkInput {
    /// The cluster holding the topic (sluice's own, or the `kafka` source's).
    pub kafka: KafkaSettings,
    /// The topic.
    pub topic: String,
    /// The consumer group ([`kafka::sink_group`], or [`kafka::replay_group`] for a replay).
    pub group: String,
}

/// The sink worker's consumer context: it notes partitions revoked by a rebalance, so the
/// worker can drop their messages from the batch in hand (the new owner reads them again from
/// the committed offset) and never commits for them again.
#[derive(Default)]
pub struct SinkConsumerContext {
    revoked: std::sync::Mutex<Vec<i32>>,
    /// Set once `revoked` holds something: the worker asks after every message, and a lock per
    /// message would be for nothing almost always.
    any_revoked: std::sync::atomic::AtomicBool,
}

impl SinkConsumerContext {
    fn take_revoked(&self) -> Vec<i32> {
        use std::sync::atomic::Ordering;
        // A revocation noted after the swap sets the flag again, so it is taken next time.
        if !self.any_revoked.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        self.revoked.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default()
    }
}

impl rdkafka::ClientContext for SinkConsumerContext {}

impl rdkafka::consumer::ConsumerContext for SinkConsumerContext {
    fn pre_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if let (rdkafka::consumer::Rebalance::Revoke(tpl), Ok(mut v)) = (rebalance, self.revoked.lock()) {
            v.extend(tpl.elements().iter().map(|e| e.partition()));
            self.any_revoked.store(true, std::sync::atomic::Ordering::Release);
        }
    }

    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        match rebalance {
            rdkafka::consumer::Rebalance::Assign(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(partitions = ?parts, "partitions assigned");
            }
            rdkafka::consumer::Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance failed"),
            rdkafka::consumer::Rebalance::Revoke(_) => {}
        }
    }
}

type SinkConsumer = StreamConsumer<SinkConsumerContext>;

/// Consumes the flow's input topic, runs the transform and the sink, commits what was delivered.
///
/// Stops when `stop_at` names watermarks and every partition's committed offset reached them,
/// or when shutdown is requested (after finishing and committing the batch in hand).
pub async fn run_sink(
    ctx: &FlowContext,
    input: SinkInput,
    mut transform: Box<dyn Transform>,
    mut sink: Box<dyn Sink>,
    mut stop_at: StopAt,
) -> Result<SinkSummary, FlowError> {
    let group = input.group.clone();
    let consumer: SinkConsumer = input.kafka.consumer_with_context(&group, &group, SinkConsumerContext::default())?;
    consumer.subscribe(&[input.topic.as_str()]).map_err(ctx.kafka_err(format!("subscribing to {}", input.topic)))?;
    let dlq_producer = ctx.kafka.dlq_producer(&format!("sluice.{}.dlq", ctx.flow))?;
    let dlq = DeadLetters::new(dlq_producer, &ctx.flow);
    let mut summary = SinkSummary::default();
    // Next offset to read per partition, as far as this worker committed it (or read from the
    // group, for the on-demand stop check).
    let mut committed: HashMap<i32, i64> = HashMap::new();
    let mut tracker = OffsetTracker::new();
    let mut batch = Inbox::with_capacity(ctx.batch.max_records);
    // One message stream for the worker's life: `recv()` would register and unregister a
    // waker (two lock round trips) for every message.
    let mut stream = consumer.stream();
    let mut watchdog = Watchdog::new();
    let mut commit_failing_since: Option<Instant> = None;
    loop {
        if let Some(target) = stop_at.borrow().clone() {
            let done = reached(&consumer, &input.topic, &target, &mut committed)
                .map_err(ctx.kafka_err(format!("reading committed offsets of {group}")))?;
            if done {
                break;
            }
        }
        if ctx.shutdown.is_cancelled() {
            break;
        }
        // Wait for a first message, then fill the batch for at most `linger`.
        let first = tokio::select! {
            m = stream.next() => m,
            _ = tokio::time::sleep(Duration::from_millis(200)) => None,
            _ = stop_at.changed() => None,
            _ = ctx.shutdown.cancelled() => None,
        };
        let Some(first) = first else {
            drop_revoked(&consumer, &mut batch, &mut tracker, &mut committed);
            watchdog.check(&consumer, &input, &ctx.flow);
            continue;
        };
        drop_revoked(&consumer, &mut batch, &mut tracker, &mut committed);
        if !take(ctx, &input.topic, first, &mut batch, &mut tracker)? {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let filling = Instant::now();
        let deadline = tokio::time::Instant::now() + ctx.batch.linger;
        while batch.len() < ctx.batch.max_records && batch.held_bytes() < ctx.batch.max_bytes {
            // What librdkafka already holds is taken without a timer; only an empty queue
            // waits, until the deadline. A queue that never empties fills the batch to its
            // limits, but the deadline is still looked at now and then.
            let m = match stream.next().now_or_never() {
                Some(m) => m,
                None => match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(m) => m,
                    Err(_) => break,
                },
            };
            let Some(m) = m else { break };
            // A rebalance runs inside the poll: what was read before it for a revoked
            // partition is now someone else's to deliver.
            drop_revoked(&consumer, &mut batch, &mut tracker, &mut committed);
            if !take(ctx, &input.topic, m, &mut batch, &mut tracker)? {
                break;
            }
            if batch.len().is_multiple_of(256) && tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        if batch.is_empty() {
            continue;
        }
        let span = tracing::info_span!("batch", flow = %ctx.flow, stage = "sink", topic = %input.topic, partition = %partitions_of(&batch), records = batch.len());
        let n = batch.len();
        let processing = Instant::now();
        let done = if sink.per_partition() {
            // One write per partition, each starting at that partition's first offset here. (A
            // stable sort keeps each partition's messages in offset order.)
            batch.sort_by_partition();
            let mut total = BatchDone { delivered: 0, filtered: 0, dlq: 0 };
            for part in batch.partitions() {
                let d = process_batch(ctx, &input.topic, part, transform.as_mut(), sink.as_mut(), &dlq)
                    .instrument(span.clone())
                    .await?;
                total.delivered += d.delivered;
                total.filtered += d.filtered;
                total.dlq += d.dlq;
            }
            total
        } else {
            process_batch(ctx, &input.topic, batch.batch(), transform.as_mut(), sink.as_mut(), &dlq)
                .instrument(span)
                .await?
        };
        // Every message of the batch is now delivered, filtered or durably dead-lettered.
        for m in batch.messages() {
            tracker.finish(m.partition, m.offset);
        }
        let committing = Instant::now();
        match commit(ctx, &consumer, &input.topic, &mut tracker, &mut committed) {
            Ok(()) => commit_failing_since = None,
            // The finished offsets stay in the tracker and go with the next commit; only a
            // crash before then re-delivers them. A cluster that refuses commits for long is
            // a failure to report, not to wait out forever.
            Err(e) => {
                let since = *commit_failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > COMMIT_FAILURE_LIMIT {
                    return Err(e);
                }
                tracing::warn!(flow = %ctx.flow, error = %e, "commit failed; retrying with the next batch");
            }
        }
        // Where a batch's time goes, for tuning: filling it, writing it, committing it.
        tracing::debug!(
            flow = %ctx.flow,
            records = n,
            fill_ms = processing.duration_since(filling).as_millis() as u64,
            write_ms = committing.duration_since(processing).as_millis() as u64,
            commit_ms = committing.elapsed().as_millis() as u64,
            "batch done"
        );
        watchdog.check(&consumer, &input, &ctx.flow);
        Ledger::add(&ctx.ledger.consumed, n);
        Ledger::add(&ctx.ledger.delivered, done.delivered as usize);
        Ledger::add(&ctx.ledger.filtered, done.filtered as usize);
        Ledger::add(&ctx.ledger.sink_dlq, done.dlq as usize);
        summary.consumed += n as u64;
        summary.delivered += done.delivered;
        summary.filtered += done.filtered;
        summary.dlq += done.dlq;
        batch.clear();
    }
    sink.close().await.map_err(|source| FlowError::Connector { flow: ctx.flow.clone(), source: Box::new(source) })?;
    Ok(summary)
}

/// How long commits may keep failing (a broker restarting, a coordinator moving) before the
/// flow stops with the error.
const COMMIT_FAILURE_LIMIT: Duration = Duration::from_secs(120);

/// Decides what a consume error means. librdkafka reports a broker going away, a transport
/// failure or a coordinator moving as consumer errors while it reconnects on its own; those are
/// logged and the worker goes on. Errors that will not heal (the topic is gone or forbidden)
/// stop the flow.
fn consume_error(ctx: &FlowContext, topic: &str, e: KafkaError) -> Result<(), FlowError> {
    let fatal = matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::Fatal
        )
    );
    if fatal {
        return Err(ctx.kafka_err(format!("consuming {topic}"))(e));
    }
    tracing::warn!(flow = %ctx.flow, topic, error = %ctx.kafka.redact(&e), "consuming; the client reconnects and the worker goes on");
    Ok(())
}

/// Adds a received message to the batch and the tracker; returns whether there was one (a
/// consume error is judged by [`consume_error`]).
fn take(
    ctx: &FlowContext,
    topic: &str,
    received: Result<rdkafka::message::BorrowedMessage<'_>, KafkaError>,
    batch: &mut Inbox,
    tracker: &mut OffsetTracker,
) -> Result<bool, FlowError> {
    match received {
        Ok(m) => {
            tracker.read(m.partition(), m.offset());
            batch.push(&m);
            Ok(true)
        }
        Err(e) => consume_error(ctx, topic, e).map(|()| false),
    }
}

/// Removes from the batch in hand the messages of partitions a rebalance took away, and stops
/// tracking them: the partition's new owner reads them again from the committed offset.
/// Returns whether anything was revoked.
fn drop_revoked(
    consumer: &SinkConsumer,
    batch: &mut Inbox,
    tracker: &mut OffsetTracker,
    committed: &mut HashMap<i32, i64>,
) -> bool {
    let revoked = consumer.context().take_revoked();
    if revoked.is_empty() {
        return false;
    }
    let before = batch.len();
    batch.retain(|m| !revoked.contains(&m.partition));
    for p in &revoked {
        tracker.forget(*p);
    }
    for p in &revoked {
        committed.remove(p);
    }
    tracing::info!(partitions = ?revoked, dropped = before - batch.len(), "partitions revoked; their undelivered messages are left to the new owner");
    true
}

fn partitions_of(batch: &Inbox) -> String {
    let mut ps: Vec<i32> = batch.messages().iter().map(|m| m.partition).collect();
    ps.sort_unstable();
    ps.dedup();
    ps.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
}

/// Counts for one processed batch.
struct BatchDone {
    delivered: u64,
    filtered: u64,
    dlq: u64,
}

async fn process_batch(
    ctx: &FlowContext,
    topic: &str,
    batch: Batch<'_>,
    transform: &mut dyn Transform,
    sink: &mut dyn Sink,
    dlq: &DeadLetters,
) -> Result<BatchDone, FlowError> {
    let inputs: Vec<InputMessage<'_>> = (0..batch.len())
        .map(|i| InputMessage {
            key: batch.key(i),
            payload: batch.payload(i),
            timestamp_ms: batch.messages[i].timestamp_ms,
        })
        .collect();
    let out = transform.process(&inputs).await?;
    if let Some(first) = out.rejected.first() {
        ctx.errors.admit(&ctx.flow, "sql", out.rejected.len() as u64, &first.reason)?;
    }
    let dropping = ctx.errors.mode() == ErrorMode::Drop;
    // Dead letters first: their acknowledgement must precede the commit as much as the sink's.
    let mut futures = Vec::with_capacity(out.rejected.len());
    for r in out.rejected.iter().filter(|_| !dropping) {
        let origin = origin_of(batch, r.index, topic, "sql")?;
        futures.push(
            dlq.send(batch.key(r.index), batch.payload(r.index).unwrap_or_default(), &r.reason, origin)
                .await
                .map_err(ctx.kafka_err(format!("producing to {}", kafka::dlq_topic(&ctx.flow))))?,
        );
    }
    confirm(futures).await.map_err(ctx.kafka_err(format!("confirming delivery to {}", kafka::dlq_topic(&ctx.flow))))?;
    let rows = out.rows();
    let written = if rows > 0 {
        let batch_id = batch_id(topic, batch);
        let write = WriteContext { batch_id: &batch_id, run_id: &ctx.run_id };
        write_with_retry(&ctx.flow, sink, &out.batches, write, &ctx.batch.retry, &ctx.shutdown).await?
    } else {
        Written::all()
    };
    let refused = dead_letter_refused(ctx, topic, batch, &out, &written, dlq, dropping).await?;
    let bad = out.rejected.len();
    if dropping {
        Ledger::add(&ctx.ledger.dropped, bad + refused);
    }
    Ok(BatchDone {
        delivered: rows.saturating_sub(written.rejected.len()) as u64,
        filtered: batch.len().saturating_sub(bad + rows) as u64,
        dlq: if dropping { 0 } else { (bad + refused) as u64 },
    })
}

/// Sends the rows the destination refused to the DLQ (or drops them, as the policy says) and
/// returns how many input messages that was.
///
/// A refused row is traced back to the message it came from through the transform's lineage,
/// so the dead letter carries the original key, payload and offset — what a replay needs. A
/// query without row lineage (an aggregate) has no original; the refused output row itself,
/// as JSON, is the dead letter then.
async fn dead_letter_refused(
    ctx: &FlowContext,
    topic: &str,
    batch: Batch<'_>,
    out: &crate::connector::Transformed,
    written: &Written,
    dlq: &DeadLetters,
    dropping: bool,
) -> Result<usize, FlowError> {
    let Some(first) = written.rejected.first() else { return Ok(0) };
    let n = written.rejected.len();
    ctx.errors.admit(&ctx.flow, "sink", n as u64, &first.reason)?;
    let producing = || ctx.kafka_err(format!("producing to {}", kafka::dlq_topic(&ctx.flow)));
    let mut futures = Vec::with_capacity(n);
    let mut sent = std::collections::HashSet::new();
    for r in &written.rejected {
        match out.origins.as_ref().and_then(|o| o.get(r.index)) {
            Some(&i) => {
                // Two output rows of one message refused: one dead letter for the message.
                if !sent.insert(i) || dropping {
                    continue;
                }
                let origin = origin_of(batch, i, topic, "sink")?;
                futures.push(
                    dlq.send(batch.key(i), batch.payload(i).unwrap_or_default(), &r.reason, origin)
                        .await
                        .map_err(producing())?,
                );
            }
            None => {
                if !sent.insert(usize::MAX - r.index) || dropping {
                    continue;
                }
                let row = output_row_json(&out.batches, r.index)?;
                let origin = Origin { stage: "sink", kafka: None, attempts: 1 };
                futures.push(dlq.send(None, &row, &r.reason, origin).await.map_err(producing())?);
            }
        }
    }
    confirm(futures).await.map_err(ctx.kafka_err(format!("confirming delivery to {}", kafka::dlq_topic(&ctx.flow))))?;
    Ok(sent.len())
}

/// One output row as a JSON object, for a dead letter without an original message.
fn output_row_json(batches: &[arrow_array::RecordBatch], mut index: usize) -> Result<Vec<u8>, FlowError> {
    for b in batches {
        if index < b.num_rows() {
            let mut w = arrow_json::LineDelimitedWriter::new(Vec::new());
            w.write(&b.slice(index, 1))
                .and_then(|()| w.finish())
                .map_err(|e| FlowError::Internal(format!("encoding a refused row as JSON for the DLQ: {e}")))?;
            let mut row = w.into_inner();
            if row.last() == Some(&b'\n') {
                row.pop();
            }
            return Ok(row);
        }
        index -= b.num_rows();
    }
    Err(FlowError::Internal(format!("the sink refused row {index}, past the end of its batch")))
}

/// The origin a dead letter for message `index` of the batch carries (the index as the
/// transform or the sink named it).
fn origin_of<'a>(batch: Batch<'a>, index: usize, topic: &'a str, stage: &'static str) -> Result<Origin<'a>, FlowError> {
    let source = batch.source(index, topic).ok_or_else(|| {
        FlowError::Internal(format!("row {index} traced to no message of a {}-message batch", batch.len()))
    })?;
    Ok(Origin { stage, kafka: Some(source), attempts: batch.attempts(index) })
}

/// A name for a batch that is the same every time the same messages are written: the topic
/// and each partition's offset range ("t/0:100-199,2:7-40").
fn batch_id(topic: &str, batch: Batch<'_>) -> String {
    let mut ranges: std::collections::BTreeMap<i32, (i64, i64)> = std::collections::BTreeMap::new();
    for m in batch.messages {
        let r = ranges.entry(m.partition).or_insert((m.offset, m.offset));
        r.0 = r.0.min(m.offset);
        r.1 = r.1.max(m.offset);
    }
    let parts: Vec<String> = ranges.iter().map(|(p, (lo, hi))| format!("{p}:{lo}-{hi}")).collect();
    format!("{topic}/{}", parts.join(","))
}

/// Commits what the tracker says is finished: per partition, the contiguous prefix of
/// delivered or dead-lettered messages.
///
/// A commit refused because the group is rebalancing or this worker lost its membership is
/// not a failure of the flow: those partitions now belong to another worker, which resumes
/// from the last successful commit and delivers the rest again (duplicates, never loss).
fn commit(
    ctx: &FlowContext,
    consumer: &SinkConsumer,
    topic: &str,
    tracker: &mut OffsetTracker,
    committed: &mut HashMap<i32, i64>,
) -> Result<(), FlowError> {
    let next = tracker.to_commit();
    if next.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for &(p, o) in &next {
        tpl.add_partition_offset(topic, p, Offset::Offset(o))
            .map_err(ctx.kafka_err(format!("committing offsets of {topic}")))?;
    }
    // A synchronous commit blocks this thread until the broker answers; tell the runtime so
    // its other tasks move to another worker meanwhile.
    match tokio::task::block_in_place(|| consumer.commit(&tpl, CommitMode::Sync)) {
        Ok(()) => {
            for (p, o) in next {
                tracker.committed(p, o);
                committed.insert(p, o);
            }
            Ok(())
        }
        Err(KafkaError::ConsumerCommit(code)) if lost_membership(code) => {
            tracing::warn!(flow = %ctx.flow, topic, error = %code, "commit refused during a rebalance; the partitions' new owner redelivers from the last commit");
            Ok(())
        }
        Err(e) => Err(ctx.kafka_err(format!("committing offsets of {topic}"))(e)),
    }
}

/// Whether a commit error means the group moved on without this worker (rather than a fault).
fn lost_membership(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::RebalanceInProgress
            | RDKafkaErrorCode::IllegalGeneration
            | RDKafkaErrorCode::UnknownMemberId
            | RDKafkaErrorCode::FencedInstanceId
            | RDKafkaErrorCode::AssignmentLost
            | RDKafkaErrorCode::State
    )
}

/// Whether every partition's committed offset reached its target watermark.
fn reached(
    consumer: &SinkConsumer,
    topic: &str,
    target: &[(i32, i64)],
    known: &mut HashMap<i32, i64>,
) -> Result<bool, KafkaError> {
    let missing: Vec<i32> =
        target.iter().filter(|(p, high)| *high > 0 && !known.contains_key(p)).map(|(p, _)| *p).collect();
    if !missing.is_empty() {
        // Partitions this worker has not committed in this run: ask the group what it holds.
        let mut tpl = TopicPartitionList::new();
        for p in &missing {
            tpl.add_partition(topic, *p);
        }
        let got = tokio::task::block_in_place(|| consumer.committed_offsets(tpl, Duration::from_secs(10)))?;
        for e in got.elements() {
            if let Offset::Offset(o) = e.offset() {
                known.insert(e.partition(), o);
            }
        }
    }
    Ok(target.iter().all(|(p, high)| *high <= 0 || known.get(p).is_some_and(|o| o >= high)))
}

/// Notices partitions with undelivered records that no live worker is delivering, and rejoins
/// the group so a fresh rebalance hands them out.
///
/// A partition another worker owns is normally that worker's business: it commits as it goes.
/// But if the group's committed offset of a partition this worker does not own trails the
/// partition's end and has not moved for a whole stall window, nobody is delivering it. A
/// broker's group coordinator can end a rebalance that way when a member dies mid-way (the
/// embedded broker assigns a dead member's partitions to the dead member); leaving and
/// rejoining starts a fresh rebalance. A worker that owns every partition never looks, and a
/// healthy group is never disturbed: someone is committing. If rejoining does not help (a live
/// owner is stuck retrying a failing destination), the window doubles each time, up to
/// [`STALL_WINDOW_MAX`], so the group is not kept rebalancing.
struct Watchdog {
    /// When the unowned partitions' progress was last seen to change.
    since: Instant,
    /// The unowned, lagging partitions at the last check: (partition, committed, end).
    last: Option<Vec<(i32, i64, i64)>>,
    next_check: Instant,
    /// How long unowned records may sit still before this worker rejoins.
    window: Duration,
    /// The topic's partition count, once known.
    partitions: Option<usize>,
}

/// The first stall window (three default session timeouts).
const STALL_WINDOW: Duration = Duration::from_secs(15);
/// The longest stall window.
const STALL_WINDOW_MAX: Duration = Duration::from_secs(300);
/// How often the worker looks at the group's progress.
const WATCH_EVERY: Duration = Duration::from_secs(5);

impl Watchdog {
    fn new() -> Self {
        let now = Instant::now();
        Watchdog { since: now, last: None, next_check: now + WATCH_EVERY, window: STALL_WINDOW, partitions: None }
    }

    fn check(&mut self, consumer: &SinkConsumer, input: &SinkInput, flow: &str) {
        let now = Instant::now();
        if now < self.next_check {
            return;
        }
        self.next_check = now + WATCH_EVERY;
        let assigned: Vec<i32> =
            consumer.assignment().map(|a| a.elements().iter().map(|e| e.partition()).collect()).unwrap_or_default();
        if self.partitions.is_some_and(|n| assigned.len() >= n) {
            self.since = now;
            self.last = None;
            return;
        }
        // These calls wait on the network; a failure just skips this round.
        let Ok(progress) =
            tokio::task::block_in_place(|| group_progress(consumer, &input.topic, input.kafka.connect_timeout))
        else {
            return;
        };
        self.partitions = Some(progress.len());
        let unowned: Vec<(i32, i64, i64)> =
            progress.into_iter().filter(|(p, committed, end)| !assigned.contains(p) && committed < end).collect();
        if unowned.is_empty() {
            self.window = STALL_WINDOW;
        }
        if unowned.is_empty() || self.last.as_ref() != Some(&unowned) {
            self.since = now;
            self.last = Some(unowned);
            return;
        }
        if now.duration_since(self.since) < self.window {
            return;
        }
        tracing::warn!(
            flow = %flow,
            topic = %input.topic,
            partitions = ?unowned.iter().map(|(p, _, _)| *p).collect::<Vec<_>>(),
            stalled_secs = now.duration_since(self.since).as_secs(),
            "undelivered records sit in partitions no live worker is delivering; rejoining the group"
        );
        consumer.unsubscribe();
        if let Err(e) = consumer.subscribe(&[input.topic.as_str()]) {
            tracing::warn!(flow = %flow, topic = %input.topic, error = %e, "rejoining the group");
        }
        self.window = (self.window * 2).min(STALL_WINDOW_MAX);
        self.since = now;
        self.last = None;
    }
}

/// Per partition of `topic`: (partition, the group's committed offset or 0, the end offset).
fn group_progress(consumer: &SinkConsumer, topic: &str, timeout: Duration) -> Result<Vec<(i32, i64, i64)>, KafkaError> {
    let md = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition(topic, p.id());
            let (_, high) = consumer.fetch_watermarks(topic, p.id(), timeout)?;
            ends.push((p.id(), high));
        }
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    let mut out = Vec::with_capacity(ends.len());
    for (p, high) in ends {
        let c = committed
            .find_partition(topic, p)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
            .unwrap_or(0);
        out.push((p, c, high));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::error::ConnectorError;
    use async_trait::async_trait;

    /// A destination that fails the first `failures` writes, then accepts.
    struct Flaky {
        failures: usize,
        calls: usize,
        retry_after: Option<Duration>,
    }

    #[async_trait]
    impl Sink for Flaky {
        async fn write(
            &mut self,
            _: &[arrow_array::RecordBatch],
            _: WriteContext<'_>,
        ) -> Result<Written, ConnectorError> {
            self.calls += 1;
            if self.calls <= self.failures {
                return Err(ConnectorError::Retriable {
                    context: "posting batch".into(),
                    message: "503 Service Unavailable".into(),
                    retry_after: self.retry_after,
                });
            }
            Ok(Written::all())
        }
        fn describe(&self) -> String {
            "flaky".into()
        }
    }

    const W: WriteContext<'static> = WriteContext { batch_id: "t/0:0-0", run_id: "r" };

    fn quick() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            max_attempts: 5,
            max_elapsed: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn retriable_failures_are_retried_until_they_pass() {
        let mut s = Flaky { failures: 3, calls: 0, retry_after: None };
        write_with_retry("f", &mut s, &[], W, &quick(), &CancellationToken::new()).await.unwrap();
        assert_eq!(s.calls, 4);
    }

    #[tokio::test]
    async fn retries_are_bounded_by_attempts() {
        let mut s = Flaky { failures: 100, calls: 0, retry_after: None };
        let e = write_with_retry("f", &mut s, &[], W, &quick(), &CancellationToken::new()).await.unwrap_err();
        assert_eq!(s.calls, 5);
        let text = e.to_string();
        assert!(text.contains("giving up after 5 attempts") && text.contains("503"), "{text}");
    }

    #[tokio::test]
    async fn retry_after_is_honoured_and_bounded_by_time() {
        let mut s = Flaky { failures: 1, calls: 0, retry_after: Some(Duration::from_millis(300)) };
        let t = Instant::now();
        write_with_retry("f", &mut s, &[], W, &quick(), &CancellationToken::new()).await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(300), "waited {:?}", t.elapsed());
        let mut s = Flaky { failures: 1, calls: 0, retry_after: Some(Duration::from_secs(60)) };
        let e = write_with_retry("f", &mut s, &[], W, &quick(), &CancellationToken::new()).await.unwrap_err();
        assert!(matches!(e, FlowError::RetriesExhausted { attempts: 1, .. }), "{e}");
    }

    #[tokio::test]
    async fn a_user_error_is_not_retried_and_shutdown_interrupts_waiting() {
        struct Wrong;
        #[async_trait]
        impl Sink for Wrong {
            async fn write(
                &mut self,
                _: &[arrow_array::RecordBatch],
                _: WriteContext<'_>,
            ) -> Result<Written, ConnectorError> {
                Err(ConnectorError::User("column `x` does not exist".into()))
            }
            fn describe(&self) -> String {
                "wrong".into()
            }
        }
        let e = write_with_retry("f", &mut Wrong, &[], W, &quick(), &CancellationToken::new()).await.unwrap_err();
        assert!(matches!(e, FlowError::Connector { .. }), "{e}");

        let stop = CancellationToken::new();
        stop.cancel();
        let mut s = Flaky { failures: 100, calls: 0, retry_after: None };
        let e = write_with_retry("f", &mut s, &[], W, &quick(), &stop).await.unwrap_err();
        assert!(matches!(e, FlowError::StoppedWhileRetrying { .. }), "{e}");
    }
}
