//! One trait per role: [`Source`], [`Transform`], [`Sink`].
//!
//! Data takes one path: a source's records go to the flow's changes topic; a sink worker consumes
//! that topic, hands each batch of messages to the flow's transform (the SQL stage) and the
//! resulting Arrow batches to the sink. Traits are free of Kafka so connectors can be tested on
//! their own.

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use async_trait::async_trait;

use crate::error::{ConnectorError, TransformError};
use crate::record::ChangeRecord;

/// A source's place in its upstream (a sequence number, a file and byte offset, a cursor, an LSN),
/// as opaque JSON. It is stored only once every record before it is durably in Kafka.
pub type Position = serde_json::Value;

/// One thing a source read.
// The large variant is the common one; boxing it would cost an allocation per record.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum SourceItem {
    /// A well-formed change.
    Record {
        /// The change.
        record: ChangeRecord,
        /// The position just after it.
        position: Position,
    },
    /// A position reached without a record: stored once everything before it is in Kafka, as
    /// a record's would be. A source says so when it passes a milestone a restart must not
    /// repeat (a snapshot finished, a table skipped), not on every quiet poll.
    Checkpoint {
        /// The position.
        position: Position,
    },
    /// Input the source could not parse; it goes to the flow's DLQ and the flow goes on.
    Malformed {
        /// The raw input, as read.
        payload: Vec<u8>,
        /// Why it was refused, with where it was (e.g. a line number).
        reason: String,
        /// The position just after it.
        position: Position,
    },
}

/// What a poll of a source gave.
#[derive(Debug)]
pub enum Poll {
    /// Some items, in order.
    Items(Vec<SourceItem>),
    /// Nothing now; poll again later.
    Idle,
    /// Nothing more, ever (for this run).
    Exhausted,
}

/// Reads changes from an upstream system.
#[async_trait]
pub trait Source: Send {
    /// Prepares to read just after `resume`, or from the beginning when it is `None`.
    async fn open(&mut self, resume: Option<Position>) -> Result<(), ConnectorError>;

    /// Returns up to `max` items.
    async fn poll(&mut self, max: usize) -> Result<Poll, ConnectorError>;

    /// Told that every record up to `position` is durably in Kafka and the position stored:
    /// a source whose upstream keeps unacknowledged changes for it (a replication slot) lets
    /// go of them here, never earlier.
    async fn committed(&mut self, _position: &Position) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// Whether an on-demand run continues from the position the last run stored (an
    /// incremental pull) rather than reading everything again (the default).
    fn incremental(&self) -> bool {
        false
    }

    /// How far the source's acknowledged position is behind its upstream's end, in bytes of the
    /// upstream's log (WAL bytes for change data capture), as of the last poll; `None` when it
    /// cannot tell (the default). Exported as the `sluice.source.behind` gauge.
    fn behind_bytes(&self) -> Option<u64> {
        None
    }
}

/// One consumed Kafka message as the transform sees it.
#[derive(Debug, Clone, Copy)]
pub struct InputMessage<'a> {
    /// The message key, if any.
    pub key: Option<&'a [u8]>,
    /// The message payload, if any (a tombstone has none).
    pub payload: Option<&'a [u8]>,
    /// The message timestamp in milliseconds, if the broker gave one.
    pub timestamp_ms: Option<i64>,
}

/// A row the transform could not process, by its index in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRow {
    /// Index into the input slice.
    pub index: usize,
    /// Why, naming the column where there is one.
    pub reason: String,
}

/// A transform's answer for one input batch.
#[derive(Debug, Default)]
pub struct Transformed {
    /// Output rows.
    pub batches: Vec<RecordBatch>,
    /// Input rows that go to the DLQ instead.
    pub rejected: Vec<RejectedRow>,
    /// For each output row, in order, the index of the input message it came from — when the
    /// query is row-wise (an aggregate has no such mapping).
    pub origins: Option<Vec<usize>>,
    /// How much of the transform's time went into decoding payloads, when it can tell (the
    /// rest was its query); reported as its own stage in the metrics.
    pub decode_time: Option<std::time::Duration>,
}

impl Transformed {
    /// The number of output rows.
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// Turns a batch of consumed messages into output rows. The SQL stage implements it.
#[async_trait]
pub trait Transform: Send {
    /// The schema of every output batch.
    fn output_schema(&self) -> SchemaRef;

    /// Processes one batch. A bad row is rejected, never the whole batch.
    async fn process(&mut self, input: &[InputMessage<'_>]) -> Result<Transformed, TransformError>;
}

/// What the runtime tells a sink about the batch it hands over.
#[derive(Debug, Clone, Copy)]
pub struct WriteContext<'a> {
    /// A stable name for the batch, from the topic, partitions and offset ranges its rows came
    /// from ("sluice.orders.changes/0:100-199,2:7-40"). A retry of the same batch gets the same
    /// id, so a destination can deduplicate on it (the `http` sink sends it as an idempotency key).
    pub batch_id: &'a str,
    /// The run this batch is written in (a continuous flow's run lasts as long as its process;
    /// a batch read again after a crash is written in a new run).
    pub run_id: &'a str,
}

/// A sink's answer for one batch: every row not listed in `rejected` is delivered.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Rows the destination refused for good (an HTTP 400 for that record, a constraint
    /// violation), by index across the batches in order. They go to the DLQ with the reason; the
    /// flow goes on.
    pub rejected: Vec<RejectedRow>,
}

impl Written {
    /// Every row was delivered.
    pub fn all() -> Self {
        Written::default()
    }
}

/// Delivers output rows to a destination.
///
/// `write` has three outcomes, which are the at-least-once contract between a sink and the
/// runtime: `Ok` — every row is acknowledged by the destination except those in
/// [`Written::rejected`]; `Err` with a retriable error ([`ConnectorError::is_retriable`]: a
/// timeout, a reset connection, a 5xx, throttling) — nothing is assumed delivered and the runtime
/// writes the whole batch again after a backoff; any other `Err` stops the flow. Offsets are
/// committed only after `Ok`.
#[async_trait]
pub trait Sink: Send {
    /// Writes the batches; returns only once the destination has acknowledged them (durably
    /// written, or accepted by the remote service).
    async fn write(&mut self, batches: &[RecordBatch], ctx: WriteContext<'_>) -> Result<Written, ConnectorError>;

    /// Flushes and releases resources at the end of a run.
    async fn close(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// A short description of where rows go, for the run summary ("file out/orders.jsonl").
    fn describe(&self) -> String;

    /// Whether each write must hold the messages of one partition only. A sink that names what
    /// it writes after the batch (an object store: key from topic, partition and first offset)
    /// asks for this, so that after a crash the batch read again from the committed offset gets
    /// the same name and replaces, rather than duplicates, what was written before.
    fn per_partition(&self) -> bool {
        false
    }
}

/// How the payloads of a flow's input topic are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// A Debezium envelope (`before`, `after`, `op`, `source`, `ts_ms`): sluice's own topics.
    #[default]
    Debezium,
    /// A plain JSON object: the whole object is the row, and the op is `c`.
    Json,
    /// Confluent-framed Avro with schemas from the connection's Schema Registry; a record with
    /// `op` and `after` fields is read as a change envelope, any other as the row.
    Avro,
}
