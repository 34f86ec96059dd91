//! Reading a source for the source task: one poll at a time ([`next_step`]: held back while the
//! embedded broker's disk is full, a pause when idle, retriable errors backed off within the
//! flow's retry policy), and several polls while a batch commits ([`read_while_committing`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::FlowContext;
use super::retry::Backoff;
use super::source_task::{Failed, Sent, SourceEnd, SourceWriter};
use crate::connector::{Poll, Source, SourceItem};
use crate::error::FlowError;
use crate::telemetry::Stage;

/// How many polls may be gathered into one batch while the batch before it commits.
const GATHER_POLLS: usize = 4;

/// The most records one batch may gather: [`GATHER_POLLS`] full polls where the batch is a Kafka
/// transaction, one poll's worth (`max_records`) where it is not.
///
/// Without a transaction, a batch whose acknowledgement never came (the broker died, the claim
/// went) is published again from the stored position while Kafka may already hold it: every
/// record of it a duplicate. Its size is the bound on duplicates per fault, and the reason to
/// gather — a transaction commit's fixed cost of ≈ 100 ms — does not apply there.
pub(super) fn batch_limit(ctx: &FlowContext, writer: &SourceWriter) -> usize {
    if writer.transactional { ctx.batch.max_records.saturating_mul(GATHER_POLLS) } else { ctx.batch.max_records }
}

/// Polls `source` while `finishing` (the batch before) commits: each poll runs to its end (a
/// source's poll is not cancelled midway: it may have moved its own position), and another
/// starts while the commit is still going, up to [`GATHER_POLLS`] and [`batch_limit`] records,
/// until one is idle or ends the turn. Returns the commit's outcome and what was read: one batch
/// of every record gathered, then the step that stopped the reading, if any.
pub(super) async fn read_while_committing(
    ctx: &FlowContext,
    source: &mut dyn Source,
    writer: &SourceWriter,
    failing: &mut Option<Backoff>,
    finishing: impl std::future::Future<Output = Result<Sent, Failed>>,
) -> (Result<Sent, Failed>, VecDeque<Step>) {
    tokio::pin!(finishing);
    let limit = batch_limit(ctx, writer);
    let mut committed = None;
    let mut gathered: Vec<SourceItem> = Vec::new();
    let mut after = VecDeque::new();
    for _ in 0..GATHER_POLLS {
        let room = limit.saturating_sub(gathered.len()).min(ctx.batch.max_records);
        if room == 0 {
            break;
        }
        let reading = next_step(ctx, source, writer, failing, room);
        tokio::pin!(reading);
        let step = loop {
            tokio::select! {
                step = &mut reading => break step,
                done = &mut finishing, if committed.is_none() => committed = Some(done),
            }
        };
        match step {
            Step::Items(items) if gathered.is_empty() => gathered = items,
            Step::Items(items) => gathered.extend(items),
            // Nothing more waiting: the batch is what was read.
            Step::Idle => break,
            end => {
                after.push_back(end);
                break;
            }
        }
        if committed.is_some() {
            break;
        }
    }
    let committed = match committed {
        Some(done) => done,
        None => finishing.await,
    };
    if !gathered.is_empty() {
        after.push_front(Step::Items(gathered));
    }
    (committed, after)
}

/// What reading the source next gave.
pub(super) enum Step {
    /// A batch to publish.
    Items(Vec<SourceItem>),
    /// Nothing yet (the source was idle, or a retriable error was waited out).
    Idle,
    /// The turn ends.
    End(SourceEnd),
    /// The flow stops.
    Fail(FlowError),
}

/// Reads the source's next batch: holding back while the embedded broker's disk is full,
/// waiting a moment when the source is idle, and backing off from retriable errors within the
/// flow's retry policy (`failing` counts from the first failure). The poll asks for at most
/// `max` records.
pub(super) async fn next_step(
    ctx: &FlowContext,
    source: &mut dyn Source,
    writer: &SourceWriter,
    failing: &mut Option<Backoff>,
    max: usize,
) -> Step {
    if ctx.shutdown.is_cancelled() {
        return Step::End(SourceEnd::Stopped);
    }
    if writer.lost.is_cancelled() {
        return Step::End(SourceEnd::Lost);
    }
    // The embedded broker's disk is nearly full: hold new records back rather than let it
    // run out mid-write (tansu 0.6 can leave its storage inconsistent then), as Redpanda
    // refuses writes below `storage_min_free_bytes`. The broker watch names the reason.
    let mut held_since: Option<Instant> = None;
    while let Some(reason) = crate::broker::disk_full() {
        if held_since.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            held_since = Some(Instant::now());
            tracing::warn!(flow = %ctx.flow, %reason, "holding the source until the broker's disk has room");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = ctx.shutdown.cancelled() => return Step::End(SourceEnd::Stopped),
            _ = writer.lost.cancelled() => return Step::End(SourceEnd::Lost),
        }
    }
    let polling = Instant::now();
    let polled = tokio::select! {
        p = source.poll(max) => p,
        _ = ctx.shutdown.cancelled() => return Step::End(SourceEnd::Stopped),
        _ = writer.lost.cancelled() => return Step::End(SourceEnd::Lost),
    };
    let polled = match polled {
        Ok(p) => {
            *failing = None;
            p
        }
        Err(e) if e.is_retriable() => {
            let backoff = failing.get_or_insert_with(|| Backoff::new(&ctx.batch.retry));
            let Some(wait) = backoff.next(e.retry_after()) else {
                return Step::Fail(FlowError::RetriesExhausted {
                    flow: ctx.flow.clone(),
                    attempts: backoff.attempts(),
                    secs: backoff.elapsed().as_secs(),
                    source: Box::new(e),
                });
            };
            tracing::warn!(flow = %ctx.flow, attempt = backoff.attempts(), wait_ms = wait.as_millis() as u64, error = %e, "reading the source failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = ctx.shutdown.cancelled() => return Step::End(SourceEnd::Stopped),
            }
            return Step::Idle;
        }
        Err(source) => return Step::Fail(FlowError::Connector { flow: ctx.flow.clone(), source: Box::new(source) }),
    };
    match polled {
        Poll::Items(items) => {
            ctx.metrics.stage(Stage::SourcePoll, polling.elapsed());
            ctx.metrics.set_source_behind(source.behind_bytes());
            Step::Items(items)
        }
        Poll::Idle => {
            ctx.metrics.set_source_behind(source.behind_bytes());
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = ctx.shutdown.cancelled() => return Step::End(SourceEnd::Stopped),
                _ = writer.lost.cancelled() => return Step::End(SourceEnd::Lost),
            }
            Step::Idle
        }
        Poll::Exhausted => Step::End(SourceEnd::Exhausted),
    }
}
