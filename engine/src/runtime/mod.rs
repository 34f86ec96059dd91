//! Running a flow: the source task and the sink worker.
//!
//! ```text
//!   Source ──poll──▶ run_source ──one transaction per batch──▶ <ns>.<flow>.changes
//!     ▲                  │ malformed input, position            │ (read_committed)
//!     │                  └──────▶ <ns>.<flow>.dlq, <ns>.positions    ▼
//!   claim: the one process                       <ns>.<flow>.dlq ◀── rejected ── run_sink ──▶ Sink
//!   holding <ns>.claims in                                     (consumer group, SQL stage)
//!   the flow's claim group
//! ```
//!
//! The two halves meet only through Kafka, so either can run on another machine, and sink
//! workers of one flow in many. Each keeps one promise: the source's batch, its dead letters and
//! the position after it commit together or not at all (and only the claim's holder writes
//! them, fenced by the flow's transactional id); the sink worker commits an offset only after
//! the sink (or the DLQ) acknowledged every message before it. A crash anywhere therefore
//! re-delivers, never loses.
//!
//! Modules: `source_owner` (claim, then run, then stand by), `claim`, `source_task` and
//! `source_read` (the source's half), `sink_worker`, `batch`, `retry`, `dead_letters` and
//! `watchdog` (the sink's half), `runs` (run records), `flow_state` (paused and deactivated
//! flows), `process` (writer ids, and telling a dead predecessor's).

mod batch;
mod claim;
mod dead_letters;
mod flow_state;
mod process;
mod retry;
mod runs;
mod sink_worker;
mod source_owner;
mod source_read;
mod source_task;
mod watchdog;

use std::sync::Arc;

use rdkafka::error::KafkaError;
use tokio_util::sync::CancellationToken;

use crate::error::FlowError;
use crate::errors_policy::ErrorGate;
use crate::kafka::KafkaSettings;
use crate::ledger::Ledger;

pub use claim::SourceClaim;
pub use dead_letters::{DeadLetters, KEPT_BYTES, Origin};
pub use flow_state::{
    FlowState, FlowStateRecord, STATE_POLL, flow_states, set_flow_state, state_of, watch_flow_states,
};
pub use process::writer_id;
pub use retry::{Backoff, BatchSettings, RetryPolicy, write_with_retry};
pub use runs::{RunReporter, latest_runs, run_history};
pub use sink_worker::{SinkConsumerContext, SinkInput, SinkSummary, StopAt, run_sink};
pub use source_owner::{SourceHalf, run_claimed_source};
pub use source_task::{SourceEnd, SourceWriter, StoredPosition, load_position, run_source};

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
    /// The flow's metrics (the ledger's counts among them, once the run is attached).
    pub metrics: Arc<crate::telemetry::FlowMetrics>,
    /// Cancelled on SIGTERM/SIGINT: both halves finish their batch, commit and stop.
    pub shutdown: CancellationToken,
    /// What to do with bad records.
    pub errors: Arc<ErrorGate>,
    /// This run's id (as in its run record); sinks may name what they write after it.
    pub run_id: String,
    /// The pull this run belongs to: its own id, or that of the interrupted run it resumes.
    /// Stored with each source position, so a resumed run knows the position is its pull's.
    pub pull_id: String,
}

impl FlowContext {
    fn kafka_err(&self, context: impl Into<String>) -> impl FnOnce(KafkaError) -> FlowError + '_ {
        let context = context.into();
        move |e| FlowError::Kafka { flow: self.flow.clone(), context, message: self.kafka.redact(e) }
    }
}
