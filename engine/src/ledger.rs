//! Per-flow delivery counters, shared by a flow's tasks and read by the progress line.
//!
//! Every record read ends up in exactly one of delivered, filtered, dlq or dropped (or is still
//! in flight), so the counters balance: `read = delivered + filtered + dlq + dropped + in_flight`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters for one flow in one run.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Records the source read (including malformed input).
    pub source_read: AtomicU64,
    /// Records the source wrote to the changes topic, acknowledged by Kafka.
    pub produced: AtomicU64,
    /// Malformed source input written to the DLQ, acknowledged by Kafka.
    pub source_dlq: AtomicU64,
    /// Messages the sink worker consumed.
    pub consumed: AtomicU64,
    /// Rows the sink acknowledged.
    pub delivered: AtomicU64,
    /// Consumed messages that produced no output row (removed by the SQL filter).
    pub filtered: AtomicU64,
    /// Consumed messages the SQL stage refused, written to the DLQ.
    pub sink_dlq: AtomicU64,
    /// Bad records dropped under `errors.policy: drop`, from either half.
    pub dropped: AtomicU64,
}

/// A point-in-time copy of a [`Ledger`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct LedgerSnapshot {
    /// See [`Ledger::source_read`].
    pub source_read: u64,
    /// See [`Ledger::produced`].
    pub produced: u64,
    /// See [`Ledger::source_dlq`].
    pub source_dlq: u64,
    /// See [`Ledger::consumed`].
    pub consumed: u64,
    /// See [`Ledger::delivered`].
    pub delivered: u64,
    /// See [`Ledger::filtered`].
    pub filtered: u64,
    /// See [`Ledger::sink_dlq`].
    pub sink_dlq: u64,
    /// See [`Ledger::dropped`].
    pub dropped: u64,
}

impl LedgerSnapshot {
    /// Everything that went to the DLQ, from either side.
    pub fn dlq(&self) -> u64 {
        self.source_dlq + self.sink_dlq
    }

    /// Records read: by the source, or (for a flow reading a topic directly) by the worker.
    pub fn read(&self) -> u64 {
        if self.source_read > 0 { self.source_read } else { self.consumed }
    }

    /// Records read and not yet delivered, filtered, dead-lettered or dropped. Each record
    /// ends in exactly one of those, so `read = delivered + filtered + dlq + dropped +
    /// in_flight`. (Rows are counted as records: the SQL stage is one row in, at most one out.)
    pub fn in_flight(&self) -> u64 {
        self.read().saturating_sub(self.delivered + self.filtered + self.dlq() + self.dropped)
    }
}

/// How a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Still going.
    Running,
    /// Finished: an on-demand run that delivered everything.
    Succeeded,
    /// Stopped on request (SIGTERM, Ctrl-C).
    Stopped,
    /// Stopped by an error.
    Failed,
}

/// A flow's run record: what `sluice status` shows, kept in the compacted `sluice.runs` topic
/// under the flow's name, so the latest run of each flow is always there to read.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunRecord {
    /// The flow.
    pub flow: String,
    /// This run's id.
    pub run_id: String,
    /// How it stands.
    pub status: RunStatus,
    /// When it started, ms since the epoch.
    pub started_ms: i64,
    /// When this record was written, ms since the epoch.
    pub updated_ms: i64,
    /// The counters.
    pub counts: LedgerSnapshot,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

impl Ledger {
    /// A new, zeroed ledger behind an `Arc`.
    pub fn shared() -> Arc<Ledger> {
        Arc::new(Ledger::default())
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Reads all counters.
    pub fn snapshot(&self) -> LedgerSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LedgerSnapshot {
            source_read: r(&self.source_read),
            produced: r(&self.produced),
            source_dlq: r(&self.source_dlq),
            consumed: r(&self.consumed),
            delivered: r(&self.delivered),
            filtered: r(&self.filtered),
            sink_dlq: r(&self.sink_dlq),
            dropped: r(&self.dropped),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_counts_balance() {
        let s = LedgerSnapshot {
            source_read: 100,
            produced: 98,
            source_dlq: 2,
            consumed: 98,
            delivered: 60,
            filtered: 30,
            sink_dlq: 3,
            dropped: 1,
        };
        assert_eq!(s.read(), 100);
        assert_eq!(s.in_flight(), 4);
        assert_eq!(s.read(), s.delivered + s.filtered + s.dlq() + s.dropped + s.in_flight());
        let direct = LedgerSnapshot { consumed: 10, delivered: 10, ..LedgerSnapshot::default() };
        assert_eq!((direct.read(), direct.in_flight()), (10, 0));
    }
}
