//! The config as written: serde structs that deny unknown fields, one per section, with the
//! defaults of every optional setting. The [`super::loader`] turns them into a checked
//! [`super::Config`].

use std::collections::BTreeMap;
use std::num::{NonZeroU16, NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::IgnoredAny;
use sluice_engine::errors_policy::ErrorPolicy;
use sluice_engine::kafka::KafkaSecurity;
use sluice_engine::runtime::{BatchSettings, RetryPolicy};
use sluice_engine::schema::RowSchema;

use super::Trigger;

/// The `kafka:` section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KafkaConfig {
    /// Run a Kafka-protocol broker inside sluice; mutually exclusive with `bootstrap_servers`.
    pub(super) embedded: Option<EmbeddedConfig>,
    /// An existing cluster, `host:port[,host:port…]`.
    pub(super) bootstrap_servers: Option<String>,
    /// TLS and SASL settings for the cluster.
    pub(super) security: Option<KafkaSecurity>,
    /// Extra librdkafka properties, from an allow-list.
    #[serde(default)]
    pub(super) options: BTreeMap<String, String>,
    /// Partitions of the topics sluice creates (at least 1).
    #[serde(default = "default_partitions")]
    pub(super) partitions: NonZeroU16,
    /// Replication factor of the topics sluice creates (at least 1).
    /// Unset: 1 for the embedded broker (it has one node), the cluster's own default
    /// (`default.replication.factor`) for an external cluster.
    pub(super) replication_factor: Option<NonZeroU16>,
    /// Seconds to wait for the cluster before reporting it unreachable.
    #[serde(default = "default_connect_timeout")]
    pub(super) connect_timeout_secs: NonZeroU64,
    /// The largest record (key plus payload, in bytes) sluice writes to its own topics and reads
    /// into its SQL stage. A source record over it goes to the DLQ, cut to fit, with its size
    /// and origin; the flow goes on. Raising it past 1,000,000 needs the brokers' (or topics')
    /// `max.message.bytes` raised too.
    #[serde(default = "default_max_record_bytes")]
    pub(super) max_record_bytes: NonZeroUsize,
    /// The prefix of every topic and consumer group sluice creates (`<namespace>.<flow>.changes`,
    /// `<namespace>.positions`, …): deployments sharing a cluster keep apart by it.
    #[serde(default = "default_namespace")]
    pub(super) namespace: String,
    /// Whether sources write each batch, its dead letters and its position in one Kafka
    /// transaction, which fences a replaced source owner and leaves nothing of a failed batch.
    /// Unset: on for an external cluster, off for the embedded broker (tansu 0.6 cannot commit
    /// transactions, so `true` there is an error). Turn it off only for a Kafka-compatible service
    /// without transactions; then a source owner paused past its session timeout may publish one
    /// more batch after its successor started (duplicates, never loss).
    pub(super) transactions: Option<bool>,
    /// How many days of run history `<namespace>.runs` keeps (each run's last record; older
    /// runs are deleted). Unset: every run is kept.
    pub(super) runs_retention_days: Option<NonZeroU64>,
}

fn default_namespace() -> String {
    sluice_engine::kafka::DEFAULT_NAMESPACE.to_owned()
}

fn default_partitions() -> NonZeroU16 {
    NonZeroU16::new(3).unwrap_or(NonZeroU16::MIN)
}
fn default_connect_timeout() -> NonZeroU64 {
    NonZeroU64::new(15).unwrap_or(NonZeroU64::MIN)
}
fn default_max_record_bytes() -> NonZeroUsize {
    NonZeroUsize::new(sluice_engine::kafka::DEFAULT_MAX_RECORD_BYTES).unwrap_or(NonZeroUsize::MIN)
}

/// `kafka.embedded`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EmbeddedConfig {
    /// Where the broker keeps its log.
    pub(super) data_dir: PathBuf,
    /// Address to listen on; port 0 picks a free one.
    #[serde(default = "default_listen")]
    pub(super) listen: String,
    /// `sqlite`, the only engine: durable across kill -9. (`memory` was removed: it lost
    /// acknowledged records with the process.)
    #[serde(default)]
    pub(super) storage: StorageKind,
}

fn default_listen() -> String {
    "127.0.0.1:0".into()
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(super) enum StorageKind {
    #[default]
    Sqlite,
}

/// A flow's `schedule:` section, for `trigger: scheduled`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ScheduleConfig {
    /// A cron expression: `minute hour day month weekday`, with an optional leading seconds
    /// field (`*/30 * * * * *`).
    pub(super) cron: String,
    /// An IANA time zone name (`Europe/Paris`); UTC by default.
    #[serde(default = "default_timezone")]
    pub(super) timezone: String,
}

fn default_timezone() -> String {
    "UTC".into()
}

/// A flow as written (options are parsed later, once the connection's type is known).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FlowConfig {
    /// Unique name; names the flow's topics and consumer group.
    pub(super) name: String,
    /// Where records come from.
    pub(super) source: SourceConfig,
    /// The SQL stage.
    pub(super) transform: Option<TransformConfig>,
    /// Where rows go.
    pub(super) destination: DestinationConfig,
    /// `on_demand` (default) or `continuous`.
    #[serde(default)]
    pub(super) trigger: Trigger,
    /// What to do with records that cannot be processed.
    #[serde(default)]
    pub(super) errors: ErrorPolicy,
    /// How a failing destination is retried.
    #[serde(default)]
    pub(super) retry: RetryConfig,
    /// When a `trigger: scheduled` flow runs.
    pub(super) schedule: Option<ScheduleConfig>,
    /// How the sink worker groups records into writes (for an object store: into objects).
    #[serde(default)]
    pub(super) batch: BatchConfig,
    /// For a scheduled or continuous flow: after this many failed runs in a row the flow is
    /// deactivated (no runs) until `sluice flows resume`. A failed continuous flow is restarted
    /// until then; without this setting it stays failed.
    pub(super) deactivate_after_failures: Option<std::num::NonZeroU32>,
}

/// A flow's `batch:` section: a write (an object, a request, a transaction) closes at whichever
/// limit comes first. An unset field takes the engine's default ([`BatchSettings`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct BatchConfig {
    /// Most records per write (at least 1).
    pub(super) max_records: NonZeroUsize,
    /// Most payload bytes per write (at least 1; a write always takes one record).
    pub(super) max_bytes: NonZeroUsize,
    /// Milliseconds a write waits to fill once its first record arrived.
    pub(super) linger_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        let d = BatchSettings::default();
        BatchConfig {
            max_records: at_least_one(d.max_records),
            max_bytes: at_least_one(d.max_bytes),
            linger_ms: millis(d.linger),
        }
    }
}

/// A flow's `retry:` section: bounds on retrying a destination's retriable failures
/// (timeouts, resets, 5xx, throttling). Past either bound the flow fails with the last error.
/// An unset field takes the engine's default ([`RetryPolicy`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RetryConfig {
    /// Attempts in all, the first included (at least 1).
    pub(super) max_attempts: NonZeroUsize,
    /// Seconds in all, across attempts (at least 1).
    pub(super) max_elapsed_secs: NonZeroU64,
    /// The first wait, in milliseconds; each next wait doubles, with jitter.
    pub(super) initial_backoff_ms: u64,
    /// The longest single wait, in milliseconds.
    pub(super) max_backoff_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        let d = RetryPolicy::default();
        RetryConfig {
            max_attempts: at_least_one(d.max_attempts),
            max_elapsed_secs: NonZeroU64::new(d.max_elapsed.as_secs()).unwrap_or(NonZeroU64::MIN),
            initial_backoff_ms: millis(d.initial),
            max_backoff_ms: millis(d.max_delay),
        }
    }
}

/// An engine default as a config value (the engine's defaults are never zero).
fn at_least_one(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RetryConfig {
    pub(super) fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(self.initial_backoff_ms),
            max_delay: Duration::from_millis(self.max_backoff_ms),
            max_attempts: self.max_attempts.get(),
            max_elapsed: Duration::from_secs(self.max_elapsed_secs.get()),
        }
    }
}

/// A flow's destination as written: it has no columns of its own (the SQL's output is what it
/// writes), so `schema:` and its kin are refused here rather than ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DestinationConfig {
    /// The name of an entry under `connections:`.
    pub(super) connection: String,
    /// What to write at that connection: a file, a topic, a table, a bucket.
    #[serde(default)]
    pub(super) object: String,
    /// Connector-specific options, checked against the connection's type.
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) options: IgnoredAny,
}

/// A flow's source as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SourceConfig {
    /// The name of an entry under `connections:`.
    pub(super) connection: String,
    /// What to read or write at that connection: a file, a directory, a topic, a table.
    #[serde(default)]
    pub(super) object: String,
    /// Connector-specific options, checked against the connection's type.
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) options: IgnoredAny,
    /// Row columns as `name: type` (sources whose connector does not define them).
    #[serde(default)]
    pub(super) schema: Option<RowSchema>,
    /// Row columns from an Avro schema file (`.avsc`, relative to this config file): its
    /// record's fields, or its `after` record's for a change envelope.
    pub(super) schema_file: Option<String>,
    /// Row columns inferred from sample JSON lines (relative to this config file), once, when
    /// the config is loaded; `sluice validate` prints them.
    pub(super) schema_sample: Option<String>,
    /// What to do when the rows have columns the schema does not (a column added upstream):
    /// `evolve` (plan again with them, at a batch boundary), `fail` (stop the flow, naming
    /// them) or `ignore` (leave them out, said once per column in the log). Default: `evolve`
    /// when the columns are read from the source (no `schema:`), `ignore` when declared.
    pub(super) schema_changes: Option<sluice_sql::SchemaChanges>,
}

/// `transform:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TransformConfig {
    /// AppFlow-style tasks (map, map_all, merge, arithmetic, mask, truncate, filter, validate),
    /// run before `sql`.
    #[serde(default)]
    pub(super) tasks: Vec<sluice_sql::tasks::Task>,
    /// One `SELECT … FROM source …` query (over the tasks' output when there are tasks).
    pub(super) sql: Option<String>,
    /// The most memory, in MiB, the query may hold at once (sorts, aggregates, and any one
    /// function's result); default 256.
    pub(super) memory_limit_mb: Option<NonZeroUsize>,
    /// The most seconds the query may take over one batch; past it the flow fails, naming the
    /// limit. Default 30.
    pub(super) batch_timeout_secs: Option<NonZeroU64>,
}
