//! The source half of a flow in one process: stand by until this process holds the flow's
//! claim, then run the source as its only writer; start it again from the stored position after
//! a failed transaction; stand by again when another process takes over.

use std::future::Future;
use std::time::{Duration, Instant};

use super::FlowContext;
use super::claim::SourceClaim;
use super::source_task::{SourceEnd, SourceWriter, StoredPosition, load_position, run_source};
use crate::connector::{Position, Source};
use crate::error::FlowError;

/// How a run's source half ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceHalf {
    /// The source has nothing more: an on-demand pull is complete.
    Exhausted,
    /// Shutdown was requested.
    Stopped,
}

/// Runs `flow`'s source whenever this process holds its claim, until the source is exhausted
/// or shutdown is requested.
///
/// `open` builds a fresh source from the stored position (if any) and says where it resumes:
/// a source that was running when the claim went (or a transaction failed) is dropped whole —
/// its connection, its slot, its file handle — so the next turn, here or in another process,
/// starts from what was committed and nothing else.
///
/// A transaction that failed (the cluster refused or timed out the batch) starts the source
/// again, backing off as the flow's retry policy says; when the policy's time (at least
/// [`MIN_PATIENCE`]) runs out without a batch committed, the flow fails with the last error.
pub async fn run_claimed_source<F, Fut>(ctx: &FlowContext, mut open: F) -> Result<SourceHalf, FlowError>
where
    F: FnMut(Option<StoredPosition>) -> Fut,
    Fut: Future<Output = Result<(Box<dyn Source>, Option<Position>), FlowError>>,
{
    let mut claim = SourceClaim::join(&ctx.kafka, &ctx.flow).await?;
    let mut failing: Option<(Instant, usize)> = None;
    let end = loop {
        if !claim.acquired(&ctx.shutdown).await {
            break SourceHalf::Stopped;
        }
        let lost = claim.lost();
        let turn = async {
            // Registering the transactional id first: it aborts whatever an earlier owner left
            // open, so the position read next is the last one committed.
            let writer = SourceWriter::start(ctx, lost).await?;
            let stored = load_position(&ctx.kafka, &ctx.flow).await?;
            let (source, resume) = open(stored).await?;
            if let Some(p) = &resume {
                tracing::info!(flow = %ctx.flow, position = %p, "resuming source");
            }
            run_source(ctx, source, resume, &writer).await
        };
        let failure = match turn.await {
            Ok(SourceEnd::Exhausted) => break SourceHalf::Exhausted,
            Ok(SourceEnd::Stopped) => break SourceHalf::Stopped,
            Ok(SourceEnd::Lost) => {
                tracing::info!(flow = %ctx.flow, "another process runs the source now; standing by");
                failing = None;
                continue;
            }
            Ok(SourceEnd::Aborted { error, progressed }) => {
                if progressed {
                    failing = None;
                }
                error
            }
            // Not reaching the cluster to register or read the position is worth the same
            // retries as a failed batch; anything else stops the flow.
            Err(e @ (FlowError::Kafka { .. } | FlowError::Cluster(_))) => e,
            Err(e) => return Err(e),
        };
        let (since, attempts) = failing.get_or_insert((Instant::now(), 0));
        *attempts += 1;
        let policy = &ctx.batch.retry;
        let wait = policy.initial.saturating_mul(1 << (*attempts - 1).min(16)).min(policy.max_delay);
        if since.elapsed() + wait > policy.max_elapsed.max(MIN_PATIENCE) {
            return Err(failure);
        }
        // A full embedded broker says only "unknown broker error"; name the reason.
        let broker = crate::broker::disk_full().unwrap_or_default();
        tracing::warn!(flow = %ctx.flow, attempt = *attempts, wait_ms = wait.as_millis() as u64, error = %failure, broker, "the source's batch did not commit; starting again from the stored position");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = ctx.shutdown.cancelled() => break SourceHalf::Stopped,
        }
    };
    claim.leave().await;
    Ok(end)
}

/// The least time a source keeps trying to commit before its flow fails, whatever the retry
/// policy of its destination says: a cluster electing leaders or restarting a broker takes
/// tens of seconds, and failing a continuous flow for that would stop it for good.
const MIN_PATIENCE: Duration = Duration::from_secs(180);
