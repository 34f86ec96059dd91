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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
