//! Loading and checking a sluice config: one YAML file, or every `.yaml`/`.yml` file of a
//! directory (in name order) merged.
//!
//! ```yaml
//! kafka:                 # sluice's own cluster: `embedded:` or `bootstrap_servers:`
//!   embedded: { data_dir: .sluice/data }
//! connector_specs: []    # REST connector specs (files beside this one), each a connection type
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

mod loader;
mod references;
mod sections;
mod written;
pub mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sluice_engine::broker::BrokerStorage;
use sluice_engine::errors_policy::ErrorPolicy;
use sluice_engine::kafka::KafkaSettings;
use sluice_engine::runtime::BatchSettings;
use sluice_engine::schema::RowSchema;

use loader::Loader;

use crate::registry::{Connection, Options, Registry};

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

impl Trigger {
    /// The trigger as written in a config.
    pub fn name(self) -> &'static str {
        match self {
            Trigger::OnDemand => "on_demand",
            Trigger::Continuous => "continuous",
            Trigger::Scheduled => "scheduled",
        }
    }
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

/// A checked flow.
#[derive(Debug, Clone)]
pub struct Flow {
    /// Its name.
    pub name: String,
    /// The source connection's name.
    pub source_connection: String,
    /// The source object.
    pub source_object: String,
    /// Source options, parsed by the source connection's connector.
    pub source: Options,
    /// How the payloads the SQL reads are encoded (the source connector says).
    pub input_format: sluice_engine::connector::PayloadFormat,
    /// The row schema the SQL sees.
    pub schema: RowSchema,
    /// Where `schema:` would be written, when the flow declares no columns and they are read
    /// from the source's service when the flow is planned ([`crate::plan`]); `schema` is empty
    /// until then.
    pub schema_from_source: Option<Location>,
    /// The tasks and query.
    pub transform: sluice_sql::TransformSpec,
    /// Where the transform was written (its `sql:` line when it has one), for plan errors.
    pub transform_at: Location,
    /// The destination connection's name.
    pub destination_connection: String,
    /// The destination object.
    pub destination_object: String,
    /// Sink options, parsed by the destination connection's connector.
    pub destination: Options,
    /// How it runs.
    pub trigger: Trigger,
    /// What to do with bad records.
    pub errors: ErrorPolicy,
    /// When it runs, for `trigger: scheduled`.
    pub schedule: Option<Schedule>,
    /// Batch limits and retries.
    pub batch: BatchSettings,
    /// Failed runs in a row after which the flow is deactivated (scheduled and continuous flows).
    pub deactivate_after_failures: Option<u32>,
    /// What the flow's settings hash to (see [`yaml::fingerprint`]): a reload restarts the flow
    /// when this, or its connections', changed.
    pub fingerprint: u64,
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
    /// What the `telemetry:` section asks for (the defaults without one).
    pub telemetry: sluice_engine::telemetry::TelemetrySettings,
    /// The management API's address from `api.listen`.
    pub api_listen: Option<std::net::SocketAddr>,
    /// The management API's bearer token from `api.token`.
    pub api_token: Option<sluice_engine::secret::Secret>,
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
pub fn load(path: &Path, registry: &Registry) -> Result<Config, Rejected> {
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
    from_docs(path, &docs, errors, registry)
}

/// Loads config text as if read from file `path` (for the fuzz target and its corpus test: the
/// whole loader but the file reading).
pub(crate) fn load_text(path: &Path, text: &str, registry: &Registry) -> Result<Config, Rejected> {
    let mut errors = Vec::new();
    let mut node = yaml::parse(text).map_err(|e| ConfigError {
        file: path.to_owned(),
        line: Some(e.line),
        path: String::new(),
        message: format!("invalid YAML: {}", e.message),
    })?;
    references::resolve_all(&mut node, path, &mut errors);
    from_docs(path, &[(path.to_owned(), node)], errors, registry)
}

/// The loader over parsed files, with the errors found reading them.
fn from_docs(
    path: &Path,
    docs: &[(PathBuf, yaml::Node)],
    errors: Vec<ConfigError>,
    registry: &Registry,
) -> Result<Config, Rejected> {
    let mut loader = Loader::new(registry.clone(), errors);
    for (file, node) in docs {
        loader.top_level(file, node);
    }
    for (file, node) in docs {
        if let Some(n) = node.get("connections") {
            loader.connections(file, n);
        }
    }
    for (file, node) in docs {
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
    Ok(Config {
        kafka,
        connections: loader.connections,
        flows: loader.flows,
        telemetry: loader.telemetry,
        api_listen: loader.api_listen,
        api_token: loader.api_token,
    })
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn load_str(text: &str) -> Result<Config, Vec<ConfigError>> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, text).unwrap();
        load(&p, &crate::registry()).map_err(|r| r.errors)
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

    /// Nested, exact and extension types are declared as text or as YAML maps; a mistake deep
    /// inside names its own line and path.
    #[test]
    fn nested_column_types_are_declared_and_mistakes_found_where_they_are() {
        let good = "\
kafka: {bootstrap_servers: 127.0.0.1:9092}
connections:
  in: {type: file, path: in}
  out: {type: file, path: out}
flows:
  - name: orders
    source:
      connection: in
      object: o.jsonl
      schema:
        id: int64
        amount: decimal(10,2)
        customer:
          struct:
            name: string
            address: {struct: {city: string, zip: string}}
        items: {list: {struct: {sku: int64, at: timestamp(us)}}}
        tags: list<string>
        attrs: {map: json}
    destination: {connection: out, object: o.jsonl}
";
        let c = load_str(good).unwrap();
        assert_eq!(
            c.flows[0].schema.to_string(),
            "id: int64\namount: decimal(10,2)\ncustomer: struct<name: string, address: struct<city: string, zip: string>>\n\
             items: list<struct<sku: int64, at: timestamp(us)>>\ntags: list<string>\nattrs: map<string, json>\n"
        );
        let bad = good.replace("zip: string}", "zip: \"decimal(99,2)\"}");
        let errs = load_str(&bad).unwrap_err();
        let text: Vec<String> =
            errs.iter().map(|e| format!("{}:{}: {}", e.line.unwrap_or(0), e.path, e.message)).collect();
        assert!(
            text.iter().any(|t| t.starts_with("16:flows[0].source.schema.customer.struct.address.struct.zip:")
                && t.contains("decimal precision 99")),
            "{text:#?}"
        );
        // Inside `{…}` YAML splits at commas: the hint says so.
        let bad = good.replace("zip: string}", "zip: decimal(12,2)}");
        let errs = load_str(&bad).unwrap_err();
        assert!(errs[0].message.contains("quote the type"), "{errs:?}");
        let bad = good.replace("tags: list<string>", "tags: {lst: string}");
        let errs = load_str(&bad).unwrap_err();
        let text: Vec<String> =
            errs.iter().map(|e| format!("{}:{}: {}", e.line.unwrap_or(0), e.path, e.message)).collect();
        assert!(
            text.iter()
                .any(|t| t.starts_with("18:flows[0].source.schema.tags") && t.contains("`lst` is no nested type")),
            "{text:#?}"
        );
    }

    /// Settings that would be ignored are refused, naming them: a side a connector does not
    /// have, columns on a destination, a CDC option on a pull and a pull option on CDC.
    #[test]
    fn settings_that_would_be_ignored_are_refused() {
        let bad = "\
kafka:
  bootstrap_servers: 127.0.0.1:9092
connections:
  gen: {type: generate}
  out: {type: stdout}
  pg: {type: postgres, host: localhost, user: u, database: d}
flows:
  - name: a
    source: {connection: out, object: o}
    destination: {connection: gen, object: o}
  - name: b
    source: {connection: gen, object: o}
    destination: {connection: out, object: o, schema: {id: int64}}
  - name: c
    source: {connection: pg, object: t, schema: {id: int64}, options: {mode: complete, slot: s}}
    destination: {connection: out}
  - name: d
    source: {connection: pg, object: t, schema: {id: int64}, options: {mode: cdc, cursor: id}}
    destination: {connection: out}
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
        has(9, "flows[0].source.options", "a `stdout` connection cannot be a source");
        has(10, "flows[0].destination.options", "a `generate` connection cannot be a destination");
        has(13, "flows[1].destination.schema", "unknown field `schema`");
        has(15, "flows[2].source", "option `slot` applies to `mode: cdc` only");
        has(18, "flows[3].source", "option `cursor` applies to pulls");
        assert_eq!(errs.len(), 5, "{text:#?}");
    }
}
