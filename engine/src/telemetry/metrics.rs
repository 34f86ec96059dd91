//! The flows' metrics, kept in one OpenTelemetry meter and read by both exports (OTLP and
//! Prometheus text).
//!
//! The record counts are not counted twice: the run ledgers already count every record once
//! (`read = delivered + filtered + dlq + dropped + in flight`), so the counters here are
//! *observed* from them when an export collects — the metrics can never disagree with the run
//! records or `sluice status`. A flow's ledgers are per run; [`FlowMetrics`] adds up the runs of
//! this process (the ended ones folded into totals), which is what a cumulative counter is.
//!
//! What the ledgers do not hold (histograms of batch sizes and stage times, end-to-end latency,
//! retries, sink errors, rebalances, consumer lag) is recorded here directly, once per
//! batch, never per record: attribute sets are built when the flow's metrics are, so recording
//! allocates nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};

use crate::ledger::{Ledger, LedgerSnapshot};
use crate::runtime::FlowState;

/// A stage of a batch whose time is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The source's poll of its upstream.
    SourcePoll,
    /// Publishing a source batch to Kafka and committing it (with its position).
    SourcePublish,
    /// Decoding consumed payloads into Arrow (part of the transform, when it tells it apart).
    Decode,
    /// The SQL stage (or the whole transform, decoding included, when it cannot tell).
    Sql,
    /// Writing to the destination, retries included.
    SinkWrite,
    /// Committing the consumer's offsets.
    Commit,
}

impl Stage {
    const ALL: [Stage; 6] =
        [Stage::SourcePoll, Stage::SourcePublish, Stage::Decode, Stage::Sql, Stage::SinkWrite, Stage::Commit];

    /// The `stage` attribute's value.
    pub fn name(self) -> &'static str {
        match self {
            Stage::SourcePoll => "source_poll",
            Stage::SourcePublish => "source_publish",
            Stage::Decode => "decode",
            Stage::Sql => "sql",
            Stage::SinkWrite => "sink_write",
            Stage::Commit => "commit",
        }
    }
}

/// Bucket bounds for durations in seconds: 1 ms to 1 min.
const SECONDS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 60.0];
/// Bucket bounds for batch sizes in records.
const RECORDS: [f64; 12] = [1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 25000.0, 50000.0];

/// The instruments recorded directly, created once per process (instruments of one name are
/// one instrument; the flow is an attribute).
#[derive(Clone)]
pub(super) struct Instruments {
    batch_records: Histogram<u64>,
    stage_duration: Histogram<f64>,
    process_duration: Histogram<f64>,
    latency: Histogram<f64>,
    retries: Counter<u64>,
    sink_errors: Counter<u64>,
    rebalances: Counter<u64>,
}

impl Instruments {
    pub(super) fn new(meter: &Meter) -> Instruments {
        Instruments {
            batch_records: meter
                .u64_histogram("sluice.batch.records")
                .with_description("Records in a batch, by stage (source or sink).")
                .with_unit("{record}")
                .with_boundaries(RECORDS.to_vec())
                .build(),
            stage_duration: meter
                .f64_histogram("sluice.stage.duration")
                .with_description(
                    "Time a batch spent in a stage: source_poll, source_publish, decode, sql, sink_write, commit.",
                )
                .with_unit("s")
                .with_boundaries(SECONDS.to_vec())
                .build(),
            process_duration: meter
                .f64_histogram("messaging.process.duration")
                .with_description("Time the sink worker took to process a consumed batch, from transform to commit.")
                .with_unit("s")
                .with_boundaries(SECONDS.to_vec())
                .build(),
            latency: meter
                .f64_histogram("sluice.record.latency")
                .with_description("End to end: from the oldest record's time in a batch to its delivery.")
                .with_unit("s")
                .with_boundaries(SECONDS.to_vec())
                .build(),
            retries: meter
                .u64_counter("sluice.retries")
                .with_description("Retries of a sink write or a source read, by cause.")
                .build(),
            sink_errors: meter
                .u64_counter("sluice.sink.errors")
                .with_description("Failed sink writes, by class: retriable, or fatal (the flow stops).")
                .build(),
            rebalances: meter
                .u64_counter("sluice.rebalances")
                .with_description("Consumer-group rebalances the flow's sink workers took part in.")
                .build(),
        }
    }
}

/// One flow's metrics in this process.
pub struct FlowMetrics {
    name: String,
    instruments: Option<Instruments>,
    /// `flow`.
    flow_attrs: [KeyValue; 1],
    /// `flow`, `stage` for each [`Stage`], in [`Stage::ALL`]'s order.
    stage_attrs: Vec<[KeyValue; 2]>,
    /// `flow`, `stage` = source / sink.
    side_attrs: [[KeyValue; 2]; 2],
    /// `flow`, `messaging.system`.
    messaging_attrs: [KeyValue; 2],
    runs: Mutex<Runs>,
    /// Consumer lag by topic and partition, from the consumer's statistics.
    lag: Mutex<BTreeMap<(String, i32), i64>>,
    /// The flow's state ([`FlowState`] as a number: 0 active, 1 paused, 2 deactivated).
    state: std::sync::atomic::AtomicU8,
    /// How far the source is behind its upstream, in bytes; -1 while it cannot tell.
    source_behind: std::sync::atomic::AtomicI64,
}

/// The runs a flow had in this process: the live ones' ledgers, and the ended ones' totals.
#[derive(Default)]
struct Runs {
    live: Vec<Arc<Ledger>>,
    /// The run in progress: id, start (ms since the epoch), ledger.
    current: Option<(String, i64, Arc<Ledger>)>,
    /// Whether the last run that ended failed.
    last_failed: bool,
    ended: Totals,
    /// The last totals taken, and when: an export's callbacks all read one copy (see
    /// [`FlowMetrics::totals`]).
    cached: Option<(Instant, Totals)>,
}

/// Counts summed over runs. A run's `read` is its ledger's (which tells carried-over records
/// apart), so the totals balance as each run's counts do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Records read (see [`LedgerSnapshot::read`]).
    pub read: u64,
    /// Records delivered.
    pub delivered: u64,
    /// Records filtered out.
    pub filtered: u64,
    /// Records dead-lettered.
    pub dead_lettered: u64,
    /// Records dropped under `errors.policy: drop`.
    pub dropped: u64,
    /// Records read and not yet settled (live runs only).
    pub in_flight: u64,
    /// Messages the sink workers consumed from Kafka.
    pub consumed: u64,
    /// Records the source published to Kafka.
    pub produced: u64,
    /// Bytes of keys and payloads the sink workers consumed.
    pub bytes_read: u64,
    /// Bytes of Arrow data handed to the destination.
    pub bytes_written: u64,
}

impl Totals {
    fn add(&mut self, s: &LedgerSnapshot, live: bool) {
        self.read += s.read();
        self.delivered += s.delivered;
        self.filtered += s.filtered;
        self.dead_lettered += s.dlq();
        self.dropped += s.dropped;
        self.consumed += s.consumed;
        self.produced += s.produced;
        self.bytes_read += s.bytes_read;
        self.bytes_written += s.bytes_written;
        if live {
            self.in_flight += s.in_flight();
        } else {
            // A run that ended with records in flight (stopped, failed) left them to the next
            // run, which counts them as carried over and read again: count them read once, by
            // that run.
            self.read -= s.in_flight();
        }
    }
}

/// How long one copy of the totals serves an export: the callbacks of one collection run
/// within microseconds of each other, and must all see the same copy for the counters to
/// balance in one scrape.
const TOTALS_FRESH: Duration = Duration::from_millis(20);

impl FlowMetrics {
    pub(super) fn new(name: &str, instruments: Option<Instruments>) -> FlowMetrics {
        let flow = KeyValue::new("flow", name.to_owned());
        FlowMetrics {
            name: name.to_owned(),
            instruments,
            flow_attrs: [flow.clone()],
            stage_attrs: Stage::ALL.iter().map(|s| [flow.clone(), KeyValue::new("stage", s.name())]).collect(),
            side_attrs: [
                [flow.clone(), KeyValue::new("stage", "source")],
                [flow.clone(), KeyValue::new("stage", "sink")],
            ],
            messaging_attrs: [flow, KeyValue::new("messaging.system", "kafka")],
            runs: Mutex::new(Runs::default()),
            lag: Mutex::new(BTreeMap::new()),
            state: std::sync::atomic::AtomicU8::new(0),
            source_behind: std::sync::atomic::AtomicI64::new(-1),
        }
    }

    /// Metrics that record nothing: for tools that run a flow's parts outside `sluice run`.
    pub fn disabled(name: &str) -> Arc<FlowMetrics> {
        Arc::new(FlowMetrics::new(name, None))
    }

    /// Whether anything is recorded (some export is on).
    pub fn enabled(&self) -> bool {
        self.instruments.is_some()
    }

    /// The flow's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Run `run_id` starts: its ledger counts towards the flow's totals from now on.
    pub fn attach(&self, ledger: &Arc<Ledger>, run_id: &str) {
        if let Ok(mut runs) = self.runs.lock() {
            runs.live.push(ledger.clone());
            runs.current = Some((run_id.to_owned(), crate::record::now_ms(), ledger.clone()));
        }
    }

    /// A run ended (`failed` or not): its counts are folded into the totals, its ledger let go.
    pub fn detach(&self, ledger: &Arc<Ledger>, failed: bool) {
        if let Ok(mut runs) = self.runs.lock()
            && let Some(i) = runs.live.iter().position(|l| Arc::ptr_eq(l, ledger))
        {
            let l = runs.live.swap_remove(i);
            runs.ended.add(&l.snapshot(), false);
            runs.cached = None;
            runs.last_failed = failed;
            if runs.current.as_ref().is_some_and(|(_, _, c)| Arc::ptr_eq(c, ledger)) {
                runs.current = None;
            }
        }
    }

    /// The run in progress, if one is: its id, start (ms since the epoch) and counts so far.
    pub fn current_run(&self) -> Option<(String, i64, LedgerSnapshot)> {
        let runs = self.runs.lock().ok()?;
        runs.current.as_ref().map(|(id, at, l)| (id.clone(), *at, l.snapshot()))
    }

    /// Whether the last run that ended in this process failed.
    pub fn last_failed(&self) -> bool {
        self.runs.lock().is_ok_and(|r| r.last_failed)
    }

    /// The counts over every run of this process, as of at most [`TOTALS_FRESH`] ago.
    pub fn totals(&self) -> Totals {
        let Ok(mut runs) = self.runs.lock() else { return Totals::default() };
        if let Some((at, t)) = runs.cached
            && at.elapsed() < TOTALS_FRESH
        {
            return t;
        }
        let mut t = runs.ended;
        for l in &runs.live {
            t.add(&l.snapshot(), true);
        }
        runs.cached = Some((Instant::now(), t));
        t
    }

    pub(super) fn flow_attrs(&self) -> &[KeyValue] {
        &self.flow_attrs
    }

    pub(super) fn messaging_attrs(&self) -> &[KeyValue] {
        &self.messaging_attrs
    }

    /// A batch of `records` went through the source (`sink` false) or the sink worker.
    pub fn batch(&self, sink: bool, records: usize) {
        if let Some(i) = &self.instruments {
            i.batch_records.record(records as u64, &self.side_attrs[usize::from(sink)]);
        }
    }

    /// A batch spent `took` in `stage`.
    pub fn stage(&self, stage: Stage, took: Duration) {
        if let Some(i) = &self.instruments {
            let at = Stage::ALL.iter().position(|s| *s == stage).unwrap_or(0);
            i.stage_duration.record(took.as_secs_f64(), &self.stage_attrs[at]);
        }
    }

    /// The sink worker processed a batch in `took`, its oldest record stamped `oldest_ms` (ms
    /// since the epoch).
    pub fn sink_batch(&self, took: Duration, oldest_ms: Option<i64>) {
        let Some(i) = &self.instruments else { return };
        i.process_duration.record(took.as_secs_f64(), &self.messaging_attrs);
        if let Some(ts) = oldest_ms {
            let age_ms = (crate::record::now_ms() - ts).max(0);
            i.latency.record(age_ms as f64 / 1000.0, &self.flow_attrs);
        }
    }

    /// A write or read is retried because of `cause` (an error class, never a message: a
    /// message may hold what a label must not).
    pub fn retry(&self, cause: &'static str) {
        if let Some(i) = &self.instruments {
            i.retries.add(1, &[self.flow_attrs[0].clone(), KeyValue::new("cause", cause)]);
        }
    }

    /// A sink write failed, `retriable` or not.
    pub fn sink_error(&self, retriable: bool) {
        if let Some(i) = &self.instruments {
            let class = if retriable { "retriable" } else { "fatal" };
            i.sink_errors.add(1, &[self.flow_attrs[0].clone(), KeyValue::new("class", class)]);
        }
    }

    /// The flow's consumer group rebalanced.
    pub fn rebalanced(&self) {
        if let Some(i) = &self.instruments {
            i.rebalances.add(1, &self.flow_attrs);
        }
    }

    /// The consumer's lag on a partition, as its statistics last said.
    pub fn set_lag(&self, topic: &str, partition: i32, lag: i64) {
        if self.instruments.is_none() {
            return;
        }
        if let Ok(mut m) = self.lag.lock() {
            match m.get_mut(&(topic.to_owned(), partition)) {
                Some(v) => *v = lag,
                None => {
                    m.insert((topic.to_owned(), partition), lag);
                }
            }
        }
    }

    /// How far the source is behind its upstream, as it last said (`Source::behind_bytes`).
    pub fn set_source_behind(&self, bytes: Option<u64>) {
        let v = bytes.map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX));
        self.source_behind.store(v, std::sync::atomic::Ordering::Relaxed);
    }

    /// How far the source is behind its upstream in bytes, when it can tell.
    pub fn source_behind(&self) -> Option<u64> {
        u64::try_from(self.source_behind.load(std::sync::atomic::Ordering::Relaxed)).ok()
    }

    /// The flow's state is now `state`.
    pub fn set_state(&self, state: FlowState) {
        let n = match state {
            FlowState::Active => 0,
            FlowState::Paused => 1,
            FlowState::Deactivated => 2,
        };
        self.state.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// The flow's state as last set.
    pub fn state(&self) -> FlowState {
        match self.state.load(std::sync::atomic::Ordering::Relaxed) {
            1 => FlowState::Paused,
            2 => FlowState::Deactivated,
            _ => FlowState::Active,
        }
    }

    /// The lags last set, by topic and partition.
    pub fn lags(&self) -> Vec<(String, i32, i64)> {
        self.lag.lock().map(|m| m.iter().map(|((t, p), l)| (t.clone(), *p, *l)).collect()).unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ledger::Ledger;

    #[test]
    fn totals_add_up_runs_and_count_what_an_ended_run_left_in_flight_once() {
        let m = FlowMetrics::new("f", None);
        let first = Ledger::shared();
        m.attach(&first, "r1");
        Ledger::add(&first.source_read, 10);
        Ledger::add(&first.delivered, 7);
        let t = m.totals();
        assert_eq!((t.read, t.delivered, t.in_flight), (10, 7, 3));
        // Stopped with 3 in flight: the next run carries them over and reads them again.
        m.detach(&first, false);
        let second = Ledger::shared();
        m.attach(&second, "r2");
        Ledger::add(&second.source_read, 5);
        Ledger::add(&second.carried, 3);
        Ledger::add(&second.consumed, 8);
        Ledger::add(&second.delivered, 8);
        std::thread::sleep(TOTALS_FRESH);
        let t = m.totals();
        assert_eq!((t.read, t.delivered, t.in_flight), (15, 15, 0));
        assert_eq!(t.read, t.delivered + t.filtered + t.dead_lettered + t.dropped + t.in_flight);
    }
}
