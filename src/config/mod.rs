//! Loading and checking a sluice config: one YAML file, or every `.yaml`/`.yml` file of a
//! directory (in name order) merged.
//!
//! ```yaml
//! kafka:                 # sluice's own cluster: `embedded:` or `bootstrap_servers:`
//!   embedded: { data_dir: .sluice/data }
//! connections:           # named, typed, reused by many flows
//!   gen: { type: generate }
//!   out: { type: file, path: out }
//! flows:
//!   - name: orders
//!     source: { connection: gen, object: orders, options: { count: 1000 } }
//!     transform: { sql: "SELECT id, amount FROM source WHERE amount > 500" }
//!     destination: { connection: out, object: orders.jsonl }
//!     trigger: on_demand
//! ```
//!
//! Every problem is collected — unknown fields, bad types, missing connections, unresolvable
//! secrets, bad SQL — and reported together, each with its file, line and path.

mod references;
pub mod yaml;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::num::{NonZeroU16, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::IgnoredAny;
use sluice_connectors::{Connection, SinkOptions, SourceOptions};
use sluice_engine::broker::BrokerStorage;
use sluice_engine::errors_policy::ErrorPolicy;
use sluice_engine::kafka::{KafkaSecurity, KafkaSettings};
use sluice_engine::runtime::{BatchSettings, RetryPolicy};
use sluice_engine::schema::RowSchema;

use yaml::{Kind, Node};

/// One problem in a config, with where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The YAML path, e.g. `flows[0].source.connection`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Where a value was written, for errors found after parsing (e.g. by the SQL planner).
#[derive(Debug, Clone, PartialEq)]
pub struct Location {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// The YAML path.
    pub path: String,
}

impl Location {
    /// A [`ConfigError`] at this location.
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError { file: self.file.clone(), line: Some(self.line), path: self.path.clone(), message: message.into() }
    }
}

/// The `kafka:` section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KafkaConfig {
    /// Run a Kafka-protocol broker inside sluice; mutually exclusive with `bootstrap_servers`.
    embedded: Option<EmbeddedConfig>,
    /// An existing cluster, `host:port[,host:port…]`.
    bootstrap_servers: Option<String>,
    /// TLS and SASL settings for the cluster.
    security: Option<KafkaSecurity>,
    /// Extra librdkafka properties, from an allow-list.
    #[serde(default)]
    options: BTreeMap<String, String>,
    /// Partitions of the topics sluice creates (at least 1).
    #[serde(default = "default_partitions")]
    partitions: NonZeroU16,
    /// Replication factor of the topics sluice creates (at least 1).
    #[serde(default = "default_replication")]
    replication_factor: NonZeroU16,
    /// Seconds to wait for the cluster before reporting it unreachable.
    #[serde(default = "default_connect_timeout")]
    connect_timeout_secs: NonZeroU64,
    /// The largest record (key plus payload, in bytes) sluice writes to its own topics and reads
    /// into its SQL stage. A source record over it goes to the DLQ, cut to fit, with its size
    /// and origin; the flow goes on. Raising it past 1,000,000 needs the brokers' (or topics')
    /// `max.message.bytes` raised too.
    #[serde(default = "default_max_record_bytes")]
    max_record_bytes: NonZeroUsize,
}

fn default_partitions() -> NonZeroU16 {
    NonZeroU16::new(3).unwrap_or(NonZeroU16::MIN)
}
fn default_replication() -> NonZeroU16 {
    NonZeroU16::MIN
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
struct EmbeddedConfig {
    /// Where the broker keeps its log.
    data_dir: PathBuf,
    /// Address to listen on; port 0 picks a free one.
    #[serde(default = "default_listen")]
    listen: String,
    /// `sqlite` (durable, the default) or `memory`.
    #[serde(default)]
    storage: StorageKind,
}

fn default_listen() -> String {
    "127.0.0.1:0".into()
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum StorageKind {
    #[default]
    Sqlite,
    Memory,
}

/// sluice's own cluster, resolved.
#[derive(Debug, Clone)]
pub enum KafkaSection {
    /// Start a broker in-process, then use these settings with its address filled in.
    Embedded {
        /// Broker storage.
        storage: BrokerStorage,
        /// Listen address.
        listen: String,
        /// Topic layout and timeouts (`bootstrap_servers` is set once the broker runs).
        settings: KafkaSettings,
    },
    /// An existing cluster.
    External(KafkaSettings),
}

/// How a flow runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Run until the source is exhausted and everything is delivered, then exit.
    #[default]
    OnDemand,
    /// Run until stopped.
    Continuous,
    /// Run as on demand at each time of `schedule:` (a cron expression in a time zone), until
    /// stopped.
    Scheduled,
}

/// A flow's `schedule:` section, for `trigger: scheduled`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleConfig {
    /// A cron expression: `minute hour day month weekday`, with an optional leading seconds
    /// field (`*/30 * * * * *`).
    cron: String,
    /// An IANA time zone name (`Europe/Paris`); UTC by default.
    #[serde(default = "default_timezone")]
    timezone: String,
}

fn default_timezone() -> String {
    "UTC".into()
}

/// When a scheduled flow runs.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The parsed expression.
    pub cron: croner::Cron,
    /// The zone it is read in.
    pub timezone: chrono_tz::Tz,
    /// The expression as written, for messages.
    pub text: String,
}

impl Schedule {
    /// The first time strictly after `after`.
    pub fn next_after(&self, after: chrono::DateTime<chrono::Utc>) -> Option<chrono::DateTime<chrono::Utc>> {
        let local = after.with_timezone(&self.timezone);
        self.cron.find_next_occurrence(&local, false).ok().map(|t| t.with_timezone(&chrono::Utc))
    }
}

/// A flow as written (options are parsed later, once the connection's type is known).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowConfig {
    /// Unique name; names the flow's topics and consumer group.
    name: String,
    /// Where records come from.
    source: EndpointConfig,
    /// The SQL stage.
    transform: Option<TransformConfig>,
    /// Where rows go.
    destination: EndpointConfig,
    /// `on_demand` (default) or `continuous`.
    #[serde(default)]
    trigger: Trigger,
    /// What to do with records that cannot be processed.
    #[serde(default)]
    errors: ErrorPolicy,
    /// How a failing destination is retried.
    #[serde(default)]
    retry: RetryConfig,
    /// When a `trigger: scheduled` flow runs.
    schedule: Option<ScheduleConfig>,
    /// How the sink worker groups records into writes (for an object store: into objects).
    #[serde(default)]
    batch: BatchConfig,
}

/// A flow's `batch:` section: a write (an object, a request, a transaction) closes at whichever
/// limit comes first.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchConfig {
    /// Most records per write (at least 1).
    #[serde(default = "default_batch_records")]
    max_records: NonZeroUsize,
    /// Most payload bytes per write (at least 1; a write always takes one record).
    #[serde(default = "default_batch_bytes")]
    max_bytes: NonZeroUsize,
    /// Milliseconds a write waits to fill once its first record arrived.
    #[serde(default = "default_linger_ms")]
    linger_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_records: default_batch_records(),
            max_bytes: default_batch_bytes(),
            linger_ms: default_linger_ms(),
        }
    }
}

fn default_batch_records() -> NonZeroUsize {
    NonZeroUsize::new(BatchSettings::default().max_records).unwrap_or(NonZeroUsize::MIN)
}

fn default_batch_bytes() -> NonZeroUsize {
    NonZeroUsize::new(BatchSettings::default().max_bytes).unwrap_or(NonZeroUsize::MIN)
}

fn default_linger_ms() -> u64 {
    BatchSettings::default().linger.as_millis() as u64
}

/// A flow's `retry:` section: bounds on retrying a destination's retriable failures
/// (timeouts, resets, 5xx, throttling). Past either bound the flow fails with the last error.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryConfig {
    /// Attempts in all, the first included (at least 1).
    #[serde(default = "default_max_attempts")]
    max_attempts: NonZeroUsize,
    /// Seconds in all, across attempts (at least 1).
    #[serde(default = "default_max_elapsed_secs")]
    max_elapsed_secs: NonZeroU64,
    /// The first wait, in milliseconds; each next wait doubles, with jitter.
    #[serde(default = "default_initial_backoff_ms")]
    initial_backoff_ms: u64,
    /// The longest single wait, in milliseconds.
    #[serde(default = "default_max_backoff_ms")]
    max_backoff_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: default_max_attempts(),
            max_elapsed_secs: default_max_elapsed_secs(),
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
        }
    }
}

fn default_max_attempts() -> NonZeroUsize {
    NonZeroUsize::new(RetryPolicy::default().max_attempts).unwrap_or(NonZeroUsize::MIN)
}

fn default_max_elapsed_secs() -> NonZeroU64 {
    NonZeroU64::new(RetryPolicy::default().max_elapsed.as_secs()).unwrap_or(NonZeroU64::MIN)
}

fn default_initial_backoff_ms() -> u64 {
    RetryPolicy::default().initial.as_millis() as u64
}

fn default_max_backoff_ms() -> u64 {
    RetryPolicy::default().max_delay.as_millis() as u64
}

impl RetryConfig {
    fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(self.initial_backoff_ms),
            max_delay: Duration::from_millis(self.max_backoff_ms),
            max_attempts: self.max_attempts.get(),
            max_elapsed: Duration::from_secs(self.max_elapsed_secs.get()),
        }
    }
}

/// A flow's source or destination as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointConfig {
    /// The name of an entry under `connections:`.
    connection: String,
    /// What to read or write at that connection: a file, a directory, a topic, a table.
    #[serde(default)]
    object: String,
    /// Connector-specific options, checked against the connection's type.
    #[serde(default)]
    #[allow(dead_code)]
    options: IgnoredAny,
    /// Row columns as `name: type` (sources whose connector does not define them).
    #[serde(default)]
    schema: Option<RowSchema>,
    /// Row columns from an Avro schema file (`.avsc`, relative to this config file): its
    /// record's fields, or its `after` record's for a change envelope.
    schema_file: Option<String>,
    /// Row columns inferred from sample JSON lines (relative to this config file), once, when
    /// the config is loaded; `sluice validate` prints them.
    schema_sample: Option<String>,
}

/// `transform:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransformConfig {
    /// AppFlow-style tasks (map, map_all, merge, arithmetic, mask, truncate, filter, validate),
    /// run before `sql`.
    #[serde(default)]
    tasks: Vec<sluice_sql::tasks::Task>,
    /// One `SELECT … FROM source …` query (over the tasks' output when there are tasks).
    sql: Option<String>,
    /// The most memory, in MiB, the query may hold at once (sorts, aggregates, and any one
    /// function's result); default 256.
    memory_limit_mb: Option<NonZeroUsize>,
    /// The most seconds the query may take over one batch; past it the flow fails, naming the
    /// limit. Default 30.
    batch_timeout_secs: Option<NonZeroU64>,
}

/// A checked flow.
#[derive(Debug, Clone)]
pub struct Flow {
    /// Its name.
    pub name: String,
    /// The source connection's name.
    pub source_connection: String,
    /// The source object.
    pub source_object: String,
    /// Source options.
    pub source: SourceOptions,
    /// The row schema the SQL sees.
    pub schema: RowSchema,
    /// The tasks and query.
    pub transform: sluice_sql::TransformSpec,
    /// Where the transform was written (its `sql:` line when it has one), for plan errors.
    pub transform_at: Location,
    /// The destination connection's name.
    pub destination_connection: String,
    /// The destination object.
    pub destination_object: String,
    /// Sink options.
    pub destination: SinkOptions,
    /// How it runs.
    pub trigger: Trigger,
    /// What to do with bad records.
    pub errors: ErrorPolicy,
    /// When it runs, for `trigger: scheduled`.
    pub schedule: Option<Schedule>,
    /// Batch limits and retries.
    pub batch: BatchSettings,
}

/// A loaded, checked config.
#[derive(Debug, Clone)]
pub struct Config {
    /// sluice's cluster.
    pub kafka: KafkaSection,
    /// Connections by name.
    pub connections: BTreeMap<String, Connection>,
    /// Flows in written order.
    pub flows: Vec<Flow>,
}

/// A config that did not load: every problem, plus the flows that did parse on their own, so
/// their SQL can still be checked and reported in the same pass.
#[derive(Debug)]
pub struct Rejected {
    /// Every problem found.
    pub errors: Vec<ConfigError>,
    /// Flows whose own settings were fine.
    pub flows: Vec<Flow>,
}

impl From<ConfigError> for Rejected {
    fn from(e: ConfigError) -> Self {
        Rejected { errors: vec![e], flows: Vec::new() }
    }
}

/// Loads a file or a directory of files. All problems come back together.
pub fn load(path: &Path) -> Result<Config, Rejected> {
    let files = config_files(path)?;
    let mut errors = Vec::new();
    let mut docs = Vec::new();
    for f in files {
        match read_config_file(&f) {
            Ok(text) => match yaml::parse(&text) {
                Ok(mut node) => {
                    references::resolve_all(&mut node, &f, &mut errors);
                    docs.push((f, node));
                }
                Err(e) => errors.push(ConfigError {
                    file: f,
                    line: Some(e.line),
                    path: String::new(),
                    message: format!("invalid YAML: {}", e.message),
                }),
            },
            Err(message) => errors.push(ConfigError { file: f, line: None, path: String::new(), message }),
        }
    }
    let mut loader = Loader { errors, ..Loader::default() };
    for (file, node) in &docs {
        loader.top_level(file, node);
    }
    for (file, node) in &docs {
        if let Some(n) = node.get("connections") {
            loader.connections(file, n);
        }
    }
    for (file, node) in &docs {
        if let Some(n) = node.get("flows") {
            loader.flows(file, n);
        }
    }
    let kafka = loader.kafka.take();
    if kafka.is_none() && loader.errors.is_empty() {
        let file = docs.first().map(|(f, _)| f.clone()).unwrap_or_else(|| path.to_owned());
        loader.errors.push(ConfigError {
            file,
            line: None,
            path: "kafka".into(),
            message: "missing section: say `embedded:` or `bootstrap_servers:`".into(),
        });
    }
    let kafka = match kafka {
        Some(k) if loader.errors.is_empty() => k,
        _ => return Err(Rejected { errors: loader.errors, flows: loader.flows }),
    };
    Ok(Config { kafka, connections: loader.connections, flows: loader.flows })
}

/// The largest config file read. Configs are a few kilobytes; a file of many megabytes is a
/// mistake (or an attack on the loader), refused before it is read.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

fn read_config_file(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let f = std::fs::File::open(path).map_err(|e| format!("reading config: {e}"))?;
    let mut text = String::new();
    f.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text).map_err(|e| format!("reading config: {e}"))?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format!("the file is larger than {} MiB; a config is a few kilobytes", MAX_CONFIG_BYTES >> 20));
    }
    Ok(text)
}

fn config_files(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let err = |message: String| ConfigError { file: path.to_owned(), line: None, path: String::new(), message };
    let meta = std::fs::metadata(path).map_err(|e| err(format!("reading config: {e}")))?;
    if meta.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| err(format!("listing config directory: {e}")))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(err("no .yaml or .yml files in the directory".into()));
    }
    Ok(files)
}

#[derive(Default)]
struct Loader {
    errors: Vec<ConfigError>,
    kafka: Option<KafkaSection>,
    kafka_seen: bool,
    connections: BTreeMap<String, Connection>,
    connection_lines: BTreeMap<String, ()>,
    flows: Vec<Flow>,
    flow_names: HashSet<String>,
    flow_index: usize,
}

impl Loader {
    fn err(&mut self, file: &Path, e: yaml::Error) {
        self.errors.push(ConfigError {
            file: file.to_owned(),
            line: e.line,
            path: e.path.unwrap_or_default(),
            message: e.message,
        });
    }

    fn at(&mut self, file: &Path, node: &Node, path: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: file.to_owned(),
            line: Some(node.line),
            path: path.to_owned(),
            message: message.into(),
        });
    }

    fn top_level(&mut self, file: &Path, root: &Node) {
        let Kind::Map(entries) = &root.kind else {
            self.at(file, root, "", "expected a mapping with `kafka`, `connections` and `flows`");
            return;
        };
        for (k, v) in entries {
            match k.as_str() {
                Some("connections" | "flows") => {}
                Some("kafka") => {
                    if self.kafka_seen {
                        self.at(file, k, "kafka", "defined more than once");
                    } else {
                        self.kafka_seen = true;
                        self.kafka(file, v);
                    }
                }
                other => self.at(
                    file,
                    k,
                    other.unwrap_or("?"),
                    format!(
                        "unknown field `{}`, expected one of `kafka`, `connections`, `flows`",
                        other.unwrap_or("?")
                    ),
                ),
            }
        }
    }

    fn kafka(&mut self, file: &Path, node: &Node) {
        let k: KafkaConfig = match yaml::from_node(node, "kafka") {
            Ok(k) => k,
            Err(e) => return self.err(file, e),
        };
        if let Some(opts) = node.get("options")
            && let Kind::Map(entries) = &opts.kind
        {
            for (key, _) in entries {
                let name = key.as_str().unwrap_or_default();
                if let Err(m) = sluice_engine::kafka::check_option(name) {
                    self.at(file, key, &format!("kafka.options.{name}"), m);
                }
            }
        }
        let timeout = Duration::from_secs(k.connect_timeout_secs.get());
        self.kafka = match (k.embedded, k.bootstrap_servers) {
            (Some(_), Some(_)) | (None, None) => {
                self.at(file, node, "kafka", "set exactly one of `embedded` and `bootstrap_servers`");
                None
            }
            (Some(e), None) => {
                let mut settings = KafkaSettings::plaintext("");
                settings.partitions = i32::from(k.partitions.get());
                settings.replication_factor = i32::from(k.replication_factor.get());
                settings.max_record_bytes = k.max_record_bytes.get();
                settings.connect_timeout = timeout;
                let storage = match e.storage {
                    StorageKind::Sqlite => BrokerStorage::Sqlite(e.data_dir),
                    StorageKind::Memory => BrokerStorage::Memory,
                };
                Some(KafkaSection::Embedded { storage, listen: e.listen, settings })
            }
            (None, Some(servers)) => match KafkaSettings::from_parts(&servers, k.security.as_ref(), &k.options) {
                Ok(mut s) => {
                    s.partitions = i32::from(k.partitions.get());
                    s.replication_factor = i32::from(k.replication_factor.get());
                    s.max_record_bytes = k.max_record_bytes.get();
                    s.connect_timeout = timeout;
                    Some(KafkaSection::External(s))
                }
                // Already reported per option above, with lines.
                Err(_) => None,
            },
        };
    }

    fn connections(&mut self, file: &Path, node: &Node) {
        let Kind::Map(entries) = &node.kind else {
            if !node.is_null() {
                self.at(file, node, "connections", "expected a mapping of connection name to settings");
            }
            return;
        };
        for (k, v) in entries {
            let name = k.as_str().unwrap_or_default().to_owned();
            let path = format!("connections.{name}");
            if self.connection_lines.insert(name.clone(), ()).is_some() {
                self.at(file, k, &path, "connection defined more than once");
                continue;
            }
            let Some(kind) = v.get("type").and_then(Node::as_str) else {
                self.at(
                    file,
                    v,
                    &path,
                    format!("missing field `type`, expected one of {}", quoted(sluice_connectors::KINDS)),
                );
                continue;
            };
            if !sluice_connectors::KINDS.contains(&kind) {
                let at = v.get("type").unwrap_or(v);
                self.at(
                    file,
                    at,
                    &format!("{path}.type"),
                    format!("unknown connector `{kind}`, expected one of {}", quoted(sluice_connectors::KINDS)),
                );
                continue;
            }
            let body = v.without("type");
            match Connection::deserialize_kind(kind, yaml::De::new(&body, &path)) {
                Ok(c) => {
                    // A `kafka` connection's extra librdkafka options pass the same allow-list
                    // as the `kafka:` section's, here, with their lines, not first at `run`.
                    let before = self.errors.len();
                    if let Some(Kind::Map(opts)) = v.get("options").map(|o| &o.kind)
                        && kind == "kafka"
                    {
                        for (key, _) in opts {
                            let option = key.as_str().unwrap_or_default();
                            if let Err(m) = sluice_engine::kafka::check_option(option) {
                                self.at(file, key, &format!("{path}.options.{option}"), m);
                            }
                        }
                    }
                    if self.errors.len() == before {
                        self.connections.insert(name, c);
                    }
                }
                Err(e) => self.err(file, e.located(&path, v.line)),
            }
        }
    }

    fn flows(&mut self, file: &Path, node: &Node) {
        let Kind::Seq(items) = &node.kind else {
            if !node.is_null() {
                self.at(file, node, "flows", "expected a list of flows");
            }
            return;
        };
        for item in items {
            let i = self.flow_index;
            self.flow_index += 1;
            let path = format!("flows[{i}]");
            self.flow(file, item, &path);
        }
    }

    fn flow(&mut self, file: &Path, node: &Node, path: &str) {
        let f: FlowConfig = match yaml::from_node(node, path) {
            Ok(f) => f,
            Err(e) => return self.err(file, e),
        };
        let mut ok = true;
        let name_node = node.get("name").unwrap_or(node);
        if f.name.is_empty() || !f.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            self.at(
                file,
                name_node,
                &format!("{path}.name"),
                "a flow name is letters, digits, `_` and `-` (it names Kafka topics)",
            );
            ok = false;
        } else if f.name.len() > sluice_engine::kafka::MAX_FLOW_NAME {
            self.at(
                file,
                name_node,
                &format!("{path}.name"),
                format!(
                    "a flow name is at most {} characters, this one has {}: it names the topic `{}`, and Kafka allows {} characters",
                    sluice_engine::kafka::MAX_FLOW_NAME,
                    f.name.len(),
                    sluice_engine::kafka::changes_topic("<name>"),
                    sluice_engine::kafka::MAX_TOPIC_NAME,
                ),
            );
            ok = false;
        } else if !self.flow_names.insert(f.name.clone()) {
            self.at(file, name_node, &format!("{path}.name"), format!("flow `{}` defined more than once", f.name));
            ok = false;
        }
        let src_node = node.get("source").unwrap_or(node);
        let dst_node = node.get("destination").unwrap_or(node);
        let source = self.endpoint(file, src_node, &format!("{path}.source"), &f.source.connection, |c, d| {
            sluice_connectors::source_options(c, d)
        });
        let destination =
            self.endpoint(file, dst_node, &format!("{path}.destination"), &f.destination.connection, |c, d| {
                sluice_connectors::sink_options(c, d)
            });
        if f.retry.max_backoff_ms < f.retry.initial_backoff_ms {
            let at = node.get("retry").unwrap_or(node);
            self.at(
                file,
                at,
                &format!("{path}.retry.max_backoff_ms"),
                format!(
                    "{} ms is shorter than `initial_backoff_ms` ({} ms): the longest wait cannot be shorter than the first",
                    f.retry.max_backoff_ms, f.retry.initial_backoff_ms
                ),
            );
            ok = false;
        }
        let schedule = match (&f.trigger, &f.schedule) {
            (Trigger::Scheduled, None) => {
                let at = node.get("trigger").unwrap_or(node);
                self.at(
                    file,
                    at,
                    &format!("{path}.schedule"),
                    "missing: `trigger: scheduled` needs `schedule: {cron: …}`",
                );
                ok = false;
                None
            }
            (_, Some(sc)) => {
                let at = node.get("schedule").unwrap_or(node);
                let parser = croner::parser::CronParser::builder().seconds(croner::parser::Seconds::Optional).build();
                match (parser.parse(&sc.cron), sc.timezone.parse::<chrono_tz::Tz>()) {
                    (Ok(cron), Ok(timezone)) => Some(Schedule { cron, timezone, text: sc.cron.clone() }),
                    (Err(e), _) => {
                        self.at(
                            file,
                            at,
                            &format!("{path}.schedule.cron"),
                            format!("`{}` is not a cron expression: {e}", sc.cron),
                        );
                        ok = false;
                        None
                    }
                    (_, Err(_)) => {
                        self.at(
                            file,
                            at,
                            &format!("{path}.schedule.timezone"),
                            format!("`{}` is not a time zone (use an IANA name such as Europe/Paris)", sc.timezone),
                        );
                        ok = false;
                        None
                    }
                }
            }
            _ => None,
        };
        let (Some(source), Some(destination), true) = (source, destination, ok) else { return };
        // What the connectors would refuse when the flow starts, refused now, at the flow's
        // source or destination line.
        let own = match &self.kafka {
            Some(KafkaSection::Embedded { settings, .. } | KafkaSection::External(settings)) => settings.clone(),
            None => sluice_engine::kafka::KafkaSettings::plaintext(""),
        };
        if let Some(conn) = self.connections.get(&f.source.connection)
            && let Err(e) = sluice_connectors::check_source(&f.source.connection, conn, &f.source.object, &source, &own)
        {
            self.at(file, src_node, &format!("{path}.source"), e.to_string());
            return;
        }
        if let Some(conn) = self.connections.get(&f.destination.connection)
            && let Err(e) = sluice_connectors::check_sink(
                &f.destination.connection,
                conn,
                &f.destination.object,
                &destination,
                &own,
                &f.name,
            )
        {
            self.at(file, dst_node, &format!("{path}.destination"), e.to_string());
            return;
        }
        // Schema files are found next to the config file that names them.
        let beside = |name: &str| file.parent().unwrap_or(Path::new(".")).join(name);
        let declared = match (f.source.schema, &f.source.schema_file, &f.source.schema_sample) {
            (Some(s), None, None) => Some(s),
            (None, None, None) => None,
            (None, Some(avsc), None) => {
                let p = beside(avsc);
                let columns = std::fs::read_to_string(&p)
                    .map_err(|e| format!("reading {}: {e}", p.display()))
                    .and_then(|text| {
                        apache_avro::Schema::parse_str(&text)
                            .map_err(|e| format!("{} is not an Avro schema: {e}", p.display()))
                    })
                    .and_then(|schema| RowSchema::from_avro(&schema).map_err(|e| format!("{}: {e}", p.display())));
                match columns {
                    Ok(c) => Some(c),
                    Err(e) => {
                        self.at(file, src_node, &format!("{path}.source.schema_file"), e);
                        return;
                    }
                }
            }
            (None, None, Some(sample)) => {
                let p = beside(sample);
                let columns =
                    std::fs::read_to_string(&p).map_err(|e| format!("reading {}: {e}", p.display())).and_then(|text| {
                        RowSchema::infer_from_json_lines(&text).map_err(|e| format!("{}: {e}", p.display()))
                    });
                match columns {
                    Ok(c) => Some(c),
                    Err(e) => {
                        self.at(file, src_node, &format!("{path}.source.schema_sample"), e);
                        return;
                    }
                }
            }
            _ => {
                self.at(
                    file,
                    src_node,
                    &format!("{path}.source"),
                    "give the columns one way: `schema`, `schema_file` or `schema_sample`",
                );
                return;
            }
        };
        let schema = match (declared, sluice_connectors::builtin_schema(&source)) {
            (Some(declared), _) => declared,
            (None, Some(builtin)) => builtin,
            (None, None) => {
                let conn = self.connections.get(&f.source.connection).map(Connection::kind).unwrap_or("?");
                self.at(
                    file,
                    src_node,
                    &format!("{path}.source.schema"),
                    format!("missing: a `{conn}` source needs its columns declared as `name: type`"),
                );
                return;
            }
        };
        let (transform, transform_at) = match f.transform {
            Some(t) => {
                let at = node.get("transform");
                let (line, field) = match at.and_then(|t| t.get("sql")) {
                    Some(n) if t.tasks.is_empty() => (n.line, "transform.sql"),
                    _ => (at.map_or(node.line, |n| n.line), "transform"),
                };
                let defaults = sluice_sql::TransformSpec::default();
                let spec = sluice_sql::TransformSpec {
                    tasks: t.tasks,
                    sql: t.sql,
                    memory_limit_bytes: t
                        .memory_limit_mb
                        .map_or(defaults.memory_limit_bytes, |mb| mb.get().saturating_mul(1 << 20)),
                    batch_timeout: t
                        .batch_timeout_secs
                        .map_or(defaults.batch_timeout, |s| Duration::from_secs(s.get())),
                    max_record_bytes: self.max_record_bytes(),
                };
                (spec, Location { file: file.to_owned(), line, path: format!("{path}.{field}") })
            }
            None => (
                sluice_sql::TransformSpec {
                    max_record_bytes: self.max_record_bytes(),
                    ..sluice_sql::TransformSpec::default()
                },
                Location { file: file.to_owned(), line: node.line, path: path.to_string() },
            ),
        };
        self.flows.push(Flow {
            name: f.name,
            source_connection: f.source.connection,
            source_object: f.source.object,
            source,
            schema,
            transform,
            transform_at,
            destination_connection: f.destination.connection,
            destination_object: f.destination.object,
            destination,
            trigger: f.trigger,
            errors: f.errors,
            batch: BatchSettings {
                max_records: f.batch.max_records.get(),
                max_bytes: f.batch.max_bytes.get(),
                linger: Duration::from_millis(f.batch.linger_ms),
                retry: f.retry.policy(),
            },
            schedule,
        });
    }

    /// The record size limit of the `kafka:` section (its default when the section is missing
    /// or bad: that is reported on its own).
    fn max_record_bytes(&self) -> usize {
        match &self.kafka {
            Some(KafkaSection::Embedded { settings, .. } | KafkaSection::External(settings)) => {
                settings.max_record_bytes
            }
            None => sluice_engine::kafka::DEFAULT_MAX_RECORD_BYTES,
        }
    }

    fn endpoint<T>(
        &mut self,
        file: &Path,
        node: &Node,
        path: &str,
        connection: &str,
        parse: impl FnOnce(&Connection, yaml::De<'_>) -> Result<T, yaml::Error>,
    ) -> Option<T> {
        let Some(conn) = self.connections.get(connection) else {
            let at = node.get("connection").unwrap_or(node);
            let known: Vec<&str> = self.connections.keys().map(String::as_str).collect();
            let known =
                if known.is_empty() { "none are defined".to_owned() } else { format!("defined: {}", quoted(&known)) };
            // A connection that failed to parse was already reported; do not report it twice.
            if !self.connection_lines.contains_key(connection) {
                self.at(
                    file,
                    at,
                    &format!("{path}.connection"),
                    format!("unknown connection `{connection}` ({known})"),
                );
            }
            return None;
        };
        let empty = Node::empty_map(node.line);
        let opts = node.get("options").unwrap_or(&empty);
        let opts_path = format!("{path}.options");
        match parse(conn, yaml::De::new(opts, &opts_path)) {
            Ok(t) => Some(t),
            Err(e) => {
                self.err(file, e.located(&opts_path, opts.line));
                None
            }
        }
    }
}

fn quoted(names: &[&str]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn load_str(text: &str) -> Result<Config, Vec<ConfigError>> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, text).unwrap();
        load(&p).map_err(|r| r.errors)
    }

    const GOOD: &str = "\
kafka:
  bootstrap_servers: 127.0.0.1:9092
connections:
  gen: {type: generate}
  out: {type: file, path: out}
flows:
  - name: orders
    source: {connection: gen, object: orders, options: {count: 10}}
    transform:
      sql: SELECT id FROM source
    destination: {connection: out, object: o.jsonl}
";

    #[test]
    fn loads_a_good_config() {
        let c = load_str(GOOD).unwrap();
        assert_eq!(c.flows.len(), 1);
        assert_eq!(c.flows[0].transform_at.line, 10);
    }

    #[test]
    fn reports_every_error_at_once_with_lines() {
        let bad = "\
kafka:
  bootstrap_servers: 127.0.0.1:9092
  options: {plugin.library.paths: x}
connections:
  gen: {type: generate, colour: red}
  out: {type: file, path: out}
  odd: {type: ftp}
flows:
  - name: a
    source: {connection: gen, object: o, options: {count: many}}
    destination: {connection: out, object: o.jsonl}
  - name: b
    source: {connection: nope, object: o}
    destination: {connection: out, object: o.jsonl}
    triger: continuous
";
        let errs = load_str(bad).unwrap_err();
        let text: Vec<String> =
            errs.iter().map(|e| format!("{}:{}: {}", e.line.unwrap_or(0), e.path, e.message)).collect();
        let has = |line: usize, path: &str, words: &str| {
            assert!(
                text.iter().any(|t| t.starts_with(&format!("{line}:{path}:")) && t.contains(words)),
                "no `{line}:{path}: …{words}…` in {text:#?}"
            )
        };
        has(3, "kafka.options.plugin.library.paths", "not allowed");
        has(5, "connections.gen.colour", "unknown field `colour`");
        has(7, "connections.odd.type", "unknown connector `ftp`");
        has(15, "flows[1].triger", "unknown field `triger`");
        assert_eq!(errs.len(), 4, "{text:#?}");
        // With the typos fixed, the flows' own problems show (a flow's options are checked
        // once its connection parses).
        let errs = load_str(&bad.replace("    triger: continuous\n", "").replace(", colour: red", "")).unwrap_err();
        let text: Vec<String> =
            errs.iter().map(|e| format!("{}:{}: {}", e.line.unwrap_or(0), e.path, e.message)).collect();
        assert!(
            text.iter()
                .any(|t| t.starts_with("13:flows[1].source.connection:") && t.contains("unknown connection `nope`")),
            "{text:#?}"
        );
        assert!(text.iter().any(|t| t.starts_with("10:flows[0].source.options.count:")), "{text:#?}");
    }
}
