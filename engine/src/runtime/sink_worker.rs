//! The sink worker: consume the flow's input topic in a consumer group, run each batch through
//! the transform and the sink, commit what was delivered.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::{FutureExt as _, StreamExt as _};
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tracing::Instrument;

use super::FlowContext;
use super::batch::{BatchDone, process_batch};
use super::dead_letters::DeadLetters;
use super::watchdog::Watchdog;
use crate::connector::{Sink, Transform};
use crate::error::FlowError;
use crate::inbox::Inbox;
use crate::kafka::KafkaSettings;
use crate::ledger::Ledger;
use crate::offsets::OffsetTracker;
use crate::telemetry::{FlowMetrics, Stage, trace};

/// Where a sink worker stops: at these high watermarks (partition, next offset), or never.
pub type StopAt = watch::Receiver<Option<Vec<(i32, i64)>>>;

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
    /// The consumer group ([`KafkaSettings::sink_group`], or [`KafkaSettings::replay_group`] for a replay).
    pub group: String,
    /// For a flow's own changes topic: each partition's end when the run started. What lies
    /// below was published by earlier runs (a stopped or killed run's records in flight); this
    /// run counts it as carried over, so its ledger balances. Empty for other topics.
    pub earlier: Vec<(i32, i64)>,
}

/// The sink worker's consumer context: it notes partitions revoked by a rebalance, so the
/// worker can drop their messages from the batch in hand (the new owner reads them again from
/// the committed offset) and never commits for them again.
#[derive(Default)]
pub struct SinkConsumerContext {
    /// Where rebalances and the lag from librdkafka's statistics are counted.
    metrics: Option<std::sync::Arc<FlowMetrics>>,
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

impl rdkafka::ClientContext for SinkConsumerContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(m) = &self.metrics else { return };
        for (topic, t) in &statistics.topics {
            // Partition -1 is librdkafka's own bookkeeping; a lag of -1 is not known yet.
            for p in t.partitions.values().filter(|p| p.partition >= 0 && p.consumer_lag >= 0) {
                m.set_lag(topic, p.partition, p.consumer_lag);
            }
        }
    }
}

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
        if let Some(m) = &self.metrics {
            m.rebalanced();
        }
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

pub(super) type SinkConsumer = StreamConsumer<SinkConsumerContext>;

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
    // The lag gauge reads librdkafka's statistics, asked for only when metrics are exported.
    let context = SinkConsumerContext { metrics: Some(ctx.metrics.clone()), ..SinkConsumerContext::default() };
    let stats = ctx.metrics.enabled().then_some(Duration::from_secs(5));
    let consumer: SinkConsumer = input.kafka.consumer_with_stats(&group, &group, context, stats)?;
    consumer.subscribe(&[input.topic.as_str()]).map_err(ctx.kafka_err(format!("subscribing to {}", input.topic)))?;
    let dlq_producer = ctx.kafka.dlq_producer(&format!("sluice.{}.dlq", ctx.flow))?;
    let dlq = DeadLetters::new(dlq_producer, &ctx.flow, &ctx.kafka);
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
    let mut commit_failures = CommitFailures::default();
    let mut stop_check_failing_since: Option<Instant> = None;
    loop {
        // Where this run stops, once known: nothing at or past it is taken (another run's, or
        // letters a replay itself wrote), nor committed.
        let limit = stop_at.borrow().clone();
        if let Some(target) = &limit {
            match reached(&consumer, &input.topic, target, &mut committed) {
                Ok(true) => break,
                Ok(false) => stop_check_failing_since = None,
                // A coordinator moving or loading (a new group on a cluster, a broker restart)
                // answers with an error for a while; as for commits, only a long refusal fails.
                Err(e) => {
                    let since = *stop_check_failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > COMMIT_FAILURE_LIMIT {
                        return Err(ctx.kafka_err(format!("reading committed offsets of {group}"))(e));
                    }
                    tracing::debug!(flow = %ctx.flow, error = %e, "reading the group's committed offsets; retrying");
                }
            }
        }
        if ctx.shutdown.is_cancelled() {
            break;
        }
        // Wait for a first message, then fill the batch for at most `linger`.
        let waiting = Instant::now();
        let first = tokio::select! {
            m = stream.next() => m,
            _ = tokio::time::sleep(Duration::from_millis(200)) => None,
            _ = stop_at.changed() => None,
            _ = ctx.shutdown.cancelled() => None,
        };
        let Some(first) = first else {
            drop_revoked(&consumer, &mut batch, &mut tracker, &mut committed);
            watchdog.check(&consumer, &input, &ctx.flow);
            // Idle: whatever was read is delivered; step over transaction markers.
            skip_markers(&consumer, &mut tracker, limit.as_deref());
            let result = commit(ctx, &consumer, &input.topic, &mut tracker, &mut committed);
            commit_failures.note(result, &ctx.flow)?;
            continue;
        };
        drop_revoked(&consumer, &mut batch, &mut tracker, &mut committed);
        if !take(ctx, &input.topic, first, &mut batch, &mut tracker, limit.as_deref())? {
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
            if !take(ctx, &input.topic, m, &mut batch, &mut tracker, limit.as_deref())? {
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
        if trace::enabled() {
            // The batch continues the trace of the records their source sampled.
            let b = batch.batch();
            let traced: Vec<&str> = (0..b.len()).filter_map(|i| b.traceparent(i)).collect();
            trace::join(&span, &traced);
        }
        let n = batch.len();
        let processing = Instant::now();
        let done = if sink.per_partition() {
            // One write per partition, each starting at that partition's first offset here. (A
            // stable sort keeps each partition's messages in offset order.)
            batch.sort_by_partition();
            let mut total = BatchDone::default();
            for part in batch.partitions() {
                let d = process_batch(ctx, &input.topic, part, transform.as_mut(), sink.as_mut(), &dlq)
                    .instrument(span.clone())
                    .await?;
                total.delivered += d.delivered;
                total.filtered += d.filtered;
                total.dlq += d.dlq;
                total.dropped += d.dropped;
                total.rows += d.rows;
                total.bytes_out += d.bytes_out;
            }
            total
        } else {
            process_batch(ctx, &input.topic, batch.batch(), transform.as_mut(), sink.as_mut(), &dlq)
                .instrument(span)
                .await?
        };
        // Every message of the batch is now delivered, filtered or durably dead-lettered.
        let mut carried = 0;
        let mut oldest: Option<i64> = None;
        for m in batch.messages() {
            tracker.finish(m.partition, m.offset);
            if let Some(ts) = m.timestamp_ms {
                oldest = Some(oldest.map_or(ts, |o| o.min(ts)));
            }
            // Written before this run started: an earlier run read it at its source.
            if input.earlier.iter().any(|(p, end)| *p == m.partition && m.offset < *end) {
                carried += 1;
            }
        }
        let committing = Instant::now();
        let result = commit(ctx, &consumer, &input.topic, &mut tracker, &mut committed);
        commit_failures.note(result, &ctx.flow)?;
        ctx.metrics.stage(Stage::Commit, committing.elapsed());
        ctx.metrics.batch(true, n);
        ctx.metrics.sink_batch(processing.elapsed(), oldest);
        // Where a batch's time goes, for tuning: filling it, writing it, committing it.
        tracing::debug!(
            flow = %ctx.flow,
            records = n,
            wait_ms = filling.duration_since(waiting).as_millis() as u64,
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
        Ledger::add(&ctx.ledger.rows, done.rows as usize);
        Ledger::add(&ctx.ledger.carried, carried as usize);
        Ledger::add(&ctx.ledger.bytes_read, batch.held_bytes());
        Ledger::add(&ctx.ledger.bytes_written, done.bytes_out as usize);
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
    limit: Option<&[(i32, i64)]>,
) -> Result<bool, FlowError> {
    match received {
        Ok(m) if limit.is_some_and(|l| l.iter().any(|(p, end)| *p == m.partition() && m.offset() >= *end)) => Ok(true),
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

/// Moves the tracker of each assigned partition up to the consumer's position: the next offset
/// it would hand out, past transaction markers and aborted records it skips — but not past the
/// run's stop point, if it has one. Called only with an empty batch, so nothing before the
/// position is waiting to be delivered.
fn skip_markers(consumer: &SinkConsumer, tracker: &mut OffsetTracker, limit: Option<&[(i32, i64)]>) {
    let Ok(positions) = consumer.position() else { return };
    for e in positions.elements() {
        if let Offset::Offset(o) = e.offset() {
            let end = limit.and_then(|l| l.iter().find(|(p, _)| *p == e.partition())).map_or(o, |(_, end)| o.min(*end));
            tracker.skip_to(e.partition(), end);
        }
    }
}

fn partitions_of(batch: &Inbox) -> String {
    let mut ps: Vec<i32> = batch.messages().iter().map(|m| m.partition).collect();
    ps.sort_unstable();
    ps.dedup();
    ps.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
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
    // Each commit names its writer, so a worker restarted after a kill -9 can tell that the
    // partitions no one delivers were its dead predecessor's (see the watchdog).
    let writer = super::writer_id();
    for &(p, o) in &next {
        let mut e = tpl.add_partition(topic, p);
        e.set_offset(Offset::Offset(o)).map_err(ctx.kafka_err(format!("committing offsets of {topic}")))?;
        e.set_metadata(writer.as_str());
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

/// Commits that failed, and since when. The finished offsets stay in the tracker and go with the
/// next commit; only a crash before then re-delivers them. A coordinator that moves (its broker
/// died, a session expired) refuses commits for a few seconds: that is waited out. A cluster
/// that refuses commits for [`COMMIT_FAILURE_LIMIT`] is a failure to report, not to wait out
/// forever.
#[derive(Default)]
struct CommitFailures {
    since: Option<Instant>,
    /// When the last warning was logged: an idle worker retries every 200 ms, and one line
    /// every few seconds says as much.
    warned: Option<Instant>,
}

impl CommitFailures {
    fn note(&mut self, result: Result<(), FlowError>, flow: &str) -> Result<(), FlowError> {
        match result {
            Ok(()) => {
                self.since = None;
                self.warned = None;
                Ok(())
            }
            Err(e) => {
                let since = *self.since.get_or_insert_with(Instant::now);
                if since.elapsed() > COMMIT_FAILURE_LIMIT {
                    return Err(e);
                }
                if self.warned.is_none_or(|w| w.elapsed() >= Duration::from_secs(5)) {
                    self.warned = Some(Instant::now());
                    let failing_secs = since.elapsed().as_secs();
                    tracing::warn!(%flow, error = %e, failing_secs, "commit failed; retrying with the next batch");
                }
                Ok(())
            }
        }
    }
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
