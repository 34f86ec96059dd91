//! Per-flow delivery counters, shared by a flow's tasks and read by the progress line.
//!
//! Every record read ends up in exactly one of delivered, filtered, dlq or dropped (or is still
//! in flight), so the counters balance: `read = delivered + filtered + dlq + dropped + in_flight`.
//! A run reads what its source reads, plus what an earlier run left in flight in the changes
//! topic (a stopped or killed run's records), which this run delivers and so counts as
//! `carried`. Messages are counted, not rows: a query may give a message several rows, or none.

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
    /// Consumed messages an earlier run had published (carried over into this run).
    pub carried: AtomicU64,
    /// Rows the sink acknowledged (more than `delivered` when a query multiplies rows).
    pub rows: AtomicU64,
    /// Bytes of keys and payloads the sink worker consumed.
    pub bytes_read: AtomicU64,
    /// Bytes of Arrow data the sink worker handed the destination.
    pub bytes_written: AtomicU64,
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
    /// See [`Ledger::carried`].
    #[serde(default)]
    pub carried: u64,
    /// See [`Ledger::rows`].
    #[serde(default)]
    pub rows: u64,
    /// See [`Ledger::bytes_read`].
    #[serde(default)]
    pub bytes_read: u64,
    /// See [`Ledger::bytes_written`].
    #[serde(default)]
    pub bytes_written: u64,
}

impl LedgerSnapshot {
    /// Everything that went to the DLQ, from either side.
    pub fn dlq(&self) -> u64 {
        self.source_dlq + self.sink_dlq
    }

    /// Records read: by the source plus those carried over from an earlier run, or (for a flow
    /// reading a topic directly) by the worker.
    pub fn read(&self) -> u64 {
        (self.source_read + self.carried).max(self.consumed)
    }

    /// Records read and not yet delivered, filtered, dead-lettered or dropped. Each record
    /// ends in exactly one of those, so `read = delivered + filtered + dlq + dropped +
    /// in_flight`.
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

/// A flow's run record: what `sluice status` and `sluice runs` show, kept in the compacted
/// `sluice.runs` topic keyed by flow and run, so every run's last record is there to read.
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
    /// The pull it is part of: its own id, or that of the interrupted run it resumed (and that
    /// run's pull).
    #[serde(default)]
    pub pull_id: Option<String>,
    /// The interrupted run it went on from, if it resumed one.
    #[serde(default)]
    pub resumes: Option<String>,
    /// The machine and process running it, to tell a run that stopped reporting because its
    /// process died from one that is merely slow to report.
    #[serde(default)]
    pub host: Option<String>,
    /// See `host`.
    #[serde(default)]
    pub pid: Option<u32>,
    /// What started it: `on_demand`, `continuous` or `scheduled` (absent in records written
    /// before it was kept).
    #[serde(default)]
    pub trigger: Option<String>,
    /// Where the source stood when the run started: its stored position (a cursor value, an
    /// LSN, a file offset) or, for a flow reading a topic, its group's committed offsets.
    #[serde(default)]
    pub position_start: Option<serde_json::Value>,
    /// Where it stood when the run ended (or at the last report, while it runs).
    #[serde(default)]
    pub position_end: Option<serde_json::Value>,
}

/// How long a running run may go without a fresh record before it counts as interrupted (its
/// process gone without a word, as after a kill -9): six missed reports.
pub const STALE_AFTER_MS: i64 = 30_000;

/// How a run record stands as seen now: a `Running` record whose process is gone, or that has
/// not been refreshed for [`STALE_AFTER_MS`], is [`Liveness::Interrupted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Running, and reporting.
    Live,
    /// Said it was running, but its process is gone (or silent for too long).
    Interrupted,
    /// Ended: succeeded, stopped or failed, as its status says.
    Ended,
}

impl RunRecord {
    /// Whether this run is still going, as far as can be told at `now_ms` on `host`.
    pub fn liveness(&self, now_ms: i64, this_host: &str) -> Liveness {
        if self.status != RunStatus::Running {
            return Liveness::Ended;
        }
        // On this machine the process can be asked directly.
        if let (Some(host), Some(pid)) = (&self.host, self.pid)
            && host == this_host
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            && std::path::Path::new("/proc/self").exists()
        {
            return Liveness::Interrupted;
        }
        if now_ms - self.updated_ms > STALE_AFTER_MS { Liveness::Interrupted } else { Liveness::Live }
    }
}

/// How a new run of a flow begins, given the flow's latest run record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStart {
    /// A new pull: the source starts from the beginning (or, for incremental and continuous
    /// sources, from its stored position, as always).
    Fresh,
    /// The latest run did not finish (stopped, failed, or its process died): this run goes on
    /// with its pull, from the position it stored, and delivers what it left in flight.
    Resume {
        /// The pull to go on with.
        pull_id: String,
        /// The run it goes on from.
        resumes: String,
    },
    /// The latest run is still going, in another process: starting another would pull twice.
    Refuse(String),
}

impl RunStart {
    /// Decides how an on-demand (or scheduled) run of a flow begins. An interrupted run is
    /// resumed rather than started over, so a stop in the middle of a pull costs nothing: the
    /// next run finishes it (`fresh` asks for a new pull anyway). A continuous flow always goes
    /// on from its stored position, so it is always [`RunStart::Fresh`].
    pub fn decide(previous: Option<&RunRecord>, on_demand: bool, fresh: bool, now_ms: i64, host: &str) -> RunStart {
        let Some(prev) = previous else { return RunStart::Fresh };
        match prev.liveness(now_ms, host) {
            Liveness::Live if on_demand => RunStart::Refuse(format!(
                "flow `{}` is already running (run {}{}, last reported {} s ago); two on-demand runs of one flow \
                 would pull the source twice. Wait for it to end, or stop it",
                prev.flow,
                prev.run_id,
                match (&prev.host, prev.pid) {
                    (Some(h), Some(p)) => format!(" on {h}, process {p}"),
                    _ => String::new(),
                },
                (now_ms - prev.updated_ms).max(0) / 1000
            )),
            Liveness::Live => RunStart::Fresh,
            _ if !on_demand || fresh => RunStart::Fresh,
            Liveness::Ended if prev.status == RunStatus::Succeeded => RunStart::Fresh,
            Liveness::Interrupted | Liveness::Ended => RunStart::Resume {
                pull_id: prev.pull_id.clone().unwrap_or_else(|| prev.run_id.clone()),
                resumes: prev.run_id.clone(),
            },
        }
    }
}

/// This machine's name, for run records ("" when it cannot be read).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default()
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
            carried: r(&self.carried),
            rows: r(&self.rows),
            bytes_read: r(&self.bytes_read),
            bytes_written: r(&self.bytes_written),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(status: RunStatus, updated_ms: i64, pid: u32) -> RunRecord {
        RunRecord {
            flow: "f".into(),
            run_id: "r1".into(),
            status,
            started_ms: 0,
            updated_ms,
            counts: LedgerSnapshot::default(),
            error: None,
            pull_id: Some("p0".into()),
            resumes: None,
            host: Some("h".into()),
            pid: Some(pid),
            trigger: None,
            position_start: None,
            position_end: None,
        }
    }

    #[test]
    fn a_run_after_an_interrupted_one_resumes_it_and_a_live_one_is_not_doubled() {
        let me = std::process::id();
        let now = 1_000_000;
        let resume = RunStart::Resume { pull_id: "p0".into(), resumes: "r1".into() };
        // No previous run, or one that succeeded: a new pull.
        assert_eq!(RunStart::decide(None, true, false, now, "h"), RunStart::Fresh);
        let ok = record(RunStatus::Succeeded, now, me);
        assert_eq!(RunStart::decide(Some(&ok), true, false, now, "h"), RunStart::Fresh);
        // Stopped or failed: resumed (unless asked for a new pull).
        for status in [RunStatus::Stopped, RunStatus::Failed] {
            let r = record(status, now, me);
            assert_eq!(RunStart::decide(Some(&r), true, false, now, "h"), resume);
            assert_eq!(RunStart::decide(Some(&r), true, true, now, "h"), RunStart::Fresh);
        }
        // Running, reported just now by a live process (this one): refused.
        let live = record(RunStatus::Running, now - 1000, me);
        assert!(
            matches!(RunStart::decide(Some(&live), true, false, now, "h"), RunStart::Refuse(m) if m.contains("already running"))
        );
        // Running but silent for longer than the stale window: interrupted, resumed.
        let silent = record(RunStatus::Running, now - STALE_AFTER_MS - 1, me);
        assert_eq!(RunStart::decide(Some(&silent), true, false, now, "h"), resume);
        assert_eq!(silent.liveness(now, "h"), Liveness::Interrupted);
        // Running, fresh, but its process on this host is gone (a kill -9): interrupted at once.
        if std::path::Path::new("/proc/self").exists() {
            let dead = record(RunStatus::Running, now - 1000, u32::MAX - 7);
            assert_eq!(dead.liveness(now, "h"), Liveness::Interrupted);
            assert_eq!(RunStart::decide(Some(&dead), true, false, now, "h"), resume);
            // On another host it cannot be asked: only silence counts.
            assert_eq!(dead.liveness(now, "elsewhere"), Liveness::Live);
        }
        // Continuous flows always resume from their position: nothing to decide.
        assert_eq!(RunStart::decide(Some(&silent), false, false, now, "h"), RunStart::Fresh);
    }

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
            ..LedgerSnapshot::default()
        };
        assert_eq!(s.read(), 100);
        assert_eq!(s.in_flight(), 4);
        assert_eq!(s.read(), s.delivered + s.filtered + s.dlq() + s.dropped + s.in_flight());
        let direct = LedgerSnapshot { consumed: 10, delivered: 10, ..LedgerSnapshot::default() };
        assert_eq!((direct.read(), direct.in_flight()), (10, 0));
        // A run after a stopped one: it read 200 at its source and delivered 5 more that the
        // stopped run had left in flight.
        let resumed = LedgerSnapshot {
            source_read: 200,
            produced: 200,
            consumed: 205,
            carried: 5,
            delivered: 205,
            ..LedgerSnapshot::default()
        };
        assert_eq!((resumed.read(), resumed.in_flight()), (205, 0));
    }
}
