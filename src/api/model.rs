//! What the API answers, as types: each is serialized as it is and described in the OpenAPI
//! document (`/openapi.json`) by its `ToSchema` derive, so the document and the answers cannot
//! drift apart.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sluice_engine::ledger::LedgerSnapshot;
use sluice_engine::telemetry::Totals;
use utoipa::ToSchema;

/// An error: what went wrong, in words.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// What went wrong.
    pub(crate) error: String,
}

/// An error answer: its status and message.
#[derive(Debug)]
pub(crate) struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl ApiError {
    pub(crate) fn no_flow(name: &str) -> ApiError {
        ApiError(StatusCode::NOT_FOUND, format!("no flow named `{name}` runs in this process"))
    }

    pub(crate) fn bad_request(e: impl std::fmt::Display) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, e.to_string())
    }
}

/// A count given in a query (`what=v`), `default` when absent; a negative one is a 400.
pub(crate) fn count(what: &str, v: Option<i64>, default: usize) -> Result<usize, ApiError> {
    match v {
        Some(n) if n < 0 => Err(ApiError::bad_request(format!("{what}={n}: not a count"))),
        Some(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        None => Ok(default),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(ErrorBody { error: self.1 })).into_response()
    }
}

/// The process is up (or ready).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Status {
    /// `up` or `ready`.
    pub(crate) status: &'static str,
}

/// Records in each outcome: `read = delivered + filtered + dead_lettered + dropped + in_flight`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Counts {
    /// Read from the source.
    pub(crate) read: u64,
    /// Delivered to the destination.
    pub(crate) delivered: u64,
    /// Removed by the flow's SQL or tasks.
    pub(crate) filtered: u64,
    /// Sent to the dead-letter topic.
    pub(crate) dead_lettered: u64,
    /// Dropped under `errors.policy: drop`.
    pub(crate) dropped: u64,
    /// Read and not settled yet.
    pub(crate) in_flight: u64,
}

impl From<&LedgerSnapshot> for Counts {
    /// One run's counts.
    fn from(c: &LedgerSnapshot) -> Counts {
        Counts {
            read: c.read(),
            delivered: c.delivered,
            filtered: c.filtered,
            dead_lettered: c.dlq(),
            dropped: c.dropped,
            in_flight: c.in_flight(),
        }
    }
}

impl From<&Totals> for Counts {
    /// The counts over this process's runs.
    fn from(t: &Totals) -> Counts {
        Counts {
            read: t.read,
            delivered: t.delivered,
            filtered: t.filtered,
            dead_lettered: t.dead_lettered,
            dropped: t.dropped,
            in_flight: t.in_flight,
        }
    }
}

/// A partition's consumer lag.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Lag {
    /// The topic the sink workers read.
    pub(crate) topic: String,
    /// The partition.
    pub(crate) partition: i32,
    /// Messages between the partition's end and the committed offset.
    pub(crate) lag: i64,
}

/// The run in progress.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CurrentRun {
    /// Its id.
    pub(crate) run_id: String,
    /// When it started, ms since the epoch.
    pub(crate) started_ms: i64,
    /// Its counts so far.
    pub(crate) counts: Counts,
}

/// A flow in this process.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FlowView {
    /// Its name.
    pub(crate) name: String,
    /// `on_demand`, `continuous` or `scheduled`.
    pub(crate) trigger: String,
    /// `running`, `idle` (between runs, or done), `failed` (its last run), `paused` or
    /// `deactivated`.
    pub(crate) status: String,
    /// `active`, `paused` or `deactivated` (as kept in Kafka).
    pub(crate) state: String,
    /// Why it is paused or deactivated.
    pub(crate) state_reason: Option<String>,
    /// The run in progress, with its counts so far.
    pub(crate) current_run: Option<CurrentRun>,
    /// Its counts over this process's runs.
    pub(crate) counts: Counts,
    /// Consumer lag by partition (known once the consumer has reported it).
    pub(crate) lag: Vec<Lag>,
}

/// The flows in this process.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FlowList {
    /// In config order.
    pub(crate) flows: Vec<FlowView>,
}

/// One run of a flow.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RunView {
    /// Its id.
    pub(crate) run_id: String,
    /// `running`, `succeeded`, `stopped`, `failed` or `interrupted`.
    pub(crate) status: String,
    /// What started it.
    pub(crate) trigger: Option<String>,
    /// When it started, ms since the epoch.
    pub(crate) started_ms: i64,
    /// When it last reported, ms since the epoch.
    pub(crate) updated_ms: i64,
    /// Why it failed.
    pub(crate) error: Option<String>,
    /// The interrupted run it went on with.
    pub(crate) resumes: Option<String>,
    /// Its counts.
    pub(crate) counts: Counts,
    /// Bytes of keys and payloads consumed.
    pub(crate) bytes_read: u64,
    /// Bytes of Arrow data handed to the destination.
    pub(crate) bytes_written: u64,
    /// Where the source stood at the start: a stored position (any JSON the connector keeps),
    /// committed offsets, or `"start of source"`.
    pub(crate) position_start: Option<serde_json::Value>,
    /// Where it stood at the end.
    pub(crate) position_end: Option<serde_json::Value>,
}

/// A flow's runs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RunList {
    /// The flow.
    pub(crate) flow: String,
    /// Its runs.
    pub(crate) runs: Vec<RunView>,
}

/// A flow's state, as just set.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StateChange {
    /// The flow.
    pub(crate) name: String,
    /// `active` or `paused`.
    pub(crate) state: String,
    /// When, ms since the epoch.
    pub(crate) updated_ms: i64,
}

/// A run asked for.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RunRequested {
    /// The flow.
    pub(crate) flow: String,
    /// `requested`: it starts now, or after the run in progress.
    pub(crate) run: &'static str,
}

/// A connection's last test.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Tested {
    /// Whether the service was reached and logged in to.
    pub(crate) ok: bool,
    /// What it said, or why it failed (secrets redacted).
    pub(crate) message: String,
    /// When, ms since the epoch.
    pub(crate) at_ms: i64,
}

/// A connection: its settings with every secret shown as `*****`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ConnectionView {
    /// Its name.
    pub(crate) name: String,
    /// Its connector.
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// Its settings as written, secrets masked.
    #[schema(value_type = Object)]
    pub(crate) settings: serde_json::Value,
    /// The flows using it.
    pub(crate) flows: Vec<String>,
    /// Its last test through the API.
    pub(crate) last_test: Option<Tested>,
}

/// The config's connections.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ConnectionList {
    /// By name.
    pub(crate) connections: Vec<ConnectionView>,
}

/// A connection test's result.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TestResult {
    /// The connection.
    pub(crate) name: String,
    /// Its connector.
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// The test.
    #[serde(flatten)]
    pub(crate) tested: Tested,
}

/// Where a dead letter's record was read.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Origin {
    /// The topic.
    pub(crate) topic: String,
    /// The partition.
    pub(crate) partition: Option<i64>,
    /// The offset.
    pub(crate) offset: Option<i64>,
}

/// A dead letter.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeadLetter {
    /// Its partition in the DLQ.
    pub(crate) partition: i32,
    /// Its offset in the DLQ.
    pub(crate) offset: i64,
    /// The stage that refused it: decode, source, sql, sink.
    pub(crate) stage: Option<String>,
    /// Why.
    pub(crate) error: Option<String>,
    /// How many times it failed.
    pub(crate) attempts: Option<i64>,
    /// When it was dead-lettered, ms since the epoch.
    pub(crate) ts_ms: Option<i64>,
    /// Where its record was read, for records that reached Kafka.
    pub(crate) origin: Option<Origin>,
    /// Where the source read it, for records refused before Kafka (JSON text).
    pub(crate) source: Option<String>,
    /// Its key, as text.
    pub(crate) key: Option<String>,
    /// Its payload, as text.
    pub(crate) payload: Option<String>,
}

/// A page of a flow's dead letters.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeadLetterList {
    /// The flow.
    pub(crate) flow: String,
    /// Its DLQ topic.
    pub(crate) topic: String,
    /// The dead letters.
    pub(crate) dead_letters: Vec<DeadLetter>,
}

/// What a replay of the DLQ did.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReplayResult {
    /// The flow.
    pub(crate) flow: String,
    /// Where rows went.
    pub(crate) destination: String,
    /// Dead letters sent through the flow again.
    pub(crate) replayed: u64,
    /// Of them, delivered.
    pub(crate) delivered: u64,
    /// Of them, filtered.
    pub(crate) filtered: u64,
    /// Of them, dead-lettered again.
    pub(crate) dead_lettered_again: u64,
    /// Of them, dropped.
    pub(crate) dropped: u64,
    /// How long it took.
    pub(crate) took_ms: u64,
}
