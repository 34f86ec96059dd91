//! Turning the parsed files into a checked [`Config`]: every section deserialized on its own, so
//! one mistake does not hide the next, every problem collected with its file, line and path.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use sluice_engine::broker::BrokerStorage;
use sluice_engine::connector::PayloadFormat;
use sluice_engine::kafka::KafkaSettings;
use sluice_engine::runtime::BatchSettings;
use sluice_engine::schema::RowSchema;

use super::written::{FlowConfig, KafkaConfig, StorageKind};
use super::yaml::{self, Kind, Node};
use super::{ConfigError, Flow, KafkaSection, Location, Schedule, Trigger};
use crate::registry::{Connection, Options, Registry, parse_connection};

pub(super) struct Loader {
    /// The connectors known: the program's, and the REST specs the config lists.
    pub(super) registry: Registry,
    pub(super) errors: Vec<ConfigError>,
    pub(super) kafka: Option<KafkaSection>,
    pub(super) kafka_seen: bool,
    pub(super) connections: BTreeMap<String, Connection>,
    pub(super) connection_lines: BTreeMap<String, ()>,
    pub(super) flows: Vec<Flow>,
    pub(super) flow_names: HashSet<String>,
    pub(super) flow_index: usize,
    /// The `telemetry:` section (defaults without one).
    pub(super) telemetry: sluice_engine::telemetry::TelemetrySettings,
    /// `api.listen`, when set.
    pub(super) api_listen: Option<std::net::SocketAddr>,
    /// `api.token`, when set.
    pub(super) api_token: Option<sluice_engine::secret::Secret>,
}

impl Loader {
    pub(super) fn new(registry: Registry, errors: Vec<ConfigError>) -> Self {
        Loader {
            registry,
            errors,
            kafka: None,
            kafka_seen: false,
            connections: BTreeMap::new(),
            connection_lines: BTreeMap::new(),
            flows: Vec::new(),
            flow_names: HashSet::new(),
            flow_index: 0,
            telemetry: sluice_engine::telemetry::TelemetrySettings::default(),
            api_listen: None,
            api_token: None,
        }
    }

    pub(super) fn err(&mut self, file: &Path, e: yaml::Error) {
        self.errors.push(ConfigError {
            file: file.to_owned(),
            line: e.line,
            path: e.path.unwrap_or_default(),
            message: e.message,
        });
    }

    pub(super) fn at(&mut self, file: &Path, node: &Node, path: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: file.to_owned(),
            line: Some(node.line),
            path: path.to_owned(),
            message: message.into(),
        });
    }

    pub(super) fn top_level(&mut self, file: &Path, root: &Node) {
        let Kind::Map(entries) = &root.kind else {
            self.at(file, root, "", "expected a mapping with `kafka`, `connections` and `flows`");
            return;
        };
        for (k, v) in entries {
            match k.as_str() {
                Some("connections" | "flows") => {}
                Some("connector_specs") => self.specs(file, v),
                Some("telemetry") => self.telemetry(file, v),
                Some("api") => self.api(file, v),
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
                        "unknown field `{}`, expected one of `kafka`, `telemetry`, `api`, `connector_specs`, `connections`, `flows`",
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
        let namespace_ok = !k.namespace.is_empty()
            && k.namespace.len() <= 100
            && k.namespace.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !namespace_ok {
            let at = node.get("namespace").unwrap_or(node);
            self.at(
                file,
                at,
                "kafka.namespace",
                "a namespace is 1 to 100 letters, digits, `.`, `_` and `-` (it starts every topic name)",
            );
        }
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
        let retention = k.runs_retention_days.map(|d| Duration::from_secs(d.get().saturating_mul(86_400)));
        self.kafka = match (k.embedded, k.bootstrap_servers) {
            (Some(_), Some(_)) | (None, None) => {
                self.at(file, node, "kafka", "set exactly one of `embedded` and `bootstrap_servers`");
                None
            }
            (Some(e), None) => {
                let mut settings = KafkaSettings::plaintext("");
                settings.partitions = i32::from(k.partitions.get());
                settings.replication_factor = k.replication_factor.map_or(1, |r| i32::from(r.get()));
                settings.max_record_bytes = k.max_record_bytes.get();
                settings.namespace = k.namespace.clone();
                settings.connect_timeout = timeout;
                settings.transactions = false;
                settings.runs_retention = retention;
                if k.transactions == Some(true) {
                    let at = node.get("transactions").unwrap_or(node);
                    self.at(
                        file,
                        at,
                        "kafka.transactions",
                        "the embedded broker (tansu 0.6) cannot commit Kafka transactions; leave it unset or set `false`",
                    );
                }
                let storage = match e.storage {
                    StorageKind::Sqlite => BrokerStorage::Sqlite(e.data_dir),
                };
                Some(KafkaSection::Embedded { storage, listen: e.listen, settings })
            }
            (None, Some(servers)) => match KafkaSettings::from_parts(&servers, k.security.as_ref(), &k.options) {
                Ok(mut s) => {
                    s.partitions = i32::from(k.partitions.get());
                    s.replication_factor = k.replication_factor.map_or(-1, |r| i32::from(r.get()));
                    s.max_record_bytes = k.max_record_bytes.get();
                    s.namespace = k.namespace.clone();
                    s.connect_timeout = timeout;
                    s.transactions = k.transactions.unwrap_or(true);
                    s.runs_retention = retention;
                    Some(KafkaSection::External(s))
                }
                // Already reported per option above, with lines.
                Err(_) => None,
            },
        };
    }

    pub(super) fn connections(&mut self, file: &Path, node: &Node) {
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
                    format!("missing field `type`, expected one of {}", quoted(&self.registry.names())),
                );
                continue;
            };
            let Some(connector) = self.registry.get(kind) else {
                let at = v.get("type").unwrap_or(v);
                self.at(
                    file,
                    at,
                    &format!("{path}.type"),
                    format!("unknown connector `{kind}`, expected one of {}", quoted(&self.registry.names())),
                );
                continue;
            };
            let body = v.without("type");
            match parse_connection(connector, &body, &path) {
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

    pub(super) fn flows(&mut self, file: &Path, node: &Node) {
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
        } else if f.name.len() > sluice_engine::kafka::max_flow_name(&self.namespace()) {
            self.at(
                file,
                name_node,
                &format!("{path}.name"),
                format!(
                    "a flow name is at most {} characters, this one has {}: it names the topic `{}.<name>.changes`, and Kafka allows {} characters",
                    sluice_engine::kafka::max_flow_name(&self.namespace()),
                    f.name.len(),
                    self.namespace(),
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
        let source =
            self.endpoint(file, src_node, &format!("{path}.source"), &f.source.connection, Connection::source_options);
        let destination = self.endpoint(
            file,
            dst_node,
            &format!("{path}.destination"),
            &f.destination.connection,
            Connection::sink_options,
        );
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
        if f.deactivate_after_failures.is_some() && f.trigger == Trigger::OnDemand {
            let at = node.get("deactivate_after_failures").unwrap_or(node);
            let why = "only scheduled and continuous flows are deactivated (an on-demand run's failure is its own)";
            self.at(file, at, &format!("{path}.deactivate_after_failures"), why);
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
        let ctx = |connection| sluice_connectors::Context::new(connection, &own, &f.name);
        if let Some(conn) = self.connections.get(&f.source.connection)
            && let Err(e) = conn.check_source(ctx(&f.source.connection), &f.source.object, &source)
        {
            self.at(file, src_node, &format!("{path}.source"), e.to_string());
            return;
        }
        if let Some(conn) = self.connections.get(&f.destination.connection)
            && let Err(e) = conn.check_sink(ctx(&f.destination.connection), &f.destination.object, &destination)
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
        let src_conn = self.connections.get(&f.source.connection);
        let builtin = src_conn.and_then(|c| c.source_schema(&f.source.object, &source));
        let input_format = src_conn.map_or(PayloadFormat::Debezium, |c| c.payload_format(&source));
        // Without declared columns, the source's own (the generator's) or, when the flow is
        // planned, what the service says (a postgres table's); a source that cannot tell is
        // refused then, at this line.
        let (schema, schema_from_source) = match (declared, builtin) {
            (Some(declared), _) => (declared, None),
            (None, Some(builtin)) => (builtin, None),
            (None, None) if src_conn.is_some_and(|c| c.discovers_schema(&source)) => {
                let at = Location { file: file.to_owned(), line: src_node.line, path: format!("{path}.source.schema") };
                (RowSchema::default(), Some(at))
            }
            (None, None) => {
                let conn = src_conn.map(Connection::kind).unwrap_or("?");
                self.at(
                    file,
                    src_node,
                    &format!("{path}.source.schema"),
                    format!("missing: a `{conn}` source needs its columns declared as `name: type`"),
                );
                return;
            }
        };
        let schema_changes = f.source.schema_changes.unwrap_or(if schema_from_source.is_some() {
            sluice_sql::SchemaChanges::Evolve
        } else {
            sluice_sql::SchemaChanges::Ignore
        });
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
                    schema_changes,
                };
                (spec, Location { file: file.to_owned(), line, path: format!("{path}.{field}") })
            }
            None => (
                sluice_sql::TransformSpec {
                    max_record_bytes: self.max_record_bytes(),
                    schema_changes,
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
            input_format,
            schema,
            schema_from_source,
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
            deactivate_after_failures: f.deactivate_after_failures.map(std::num::NonZeroU32::get),
            fingerprint: yaml::fingerprint(node),
        });
    }

    /// The namespace of the `kafka:` section (its default when the section is missing or bad).
    fn namespace(&self) -> String {
        match &self.kafka {
            Some(KafkaSection::Embedded { settings, .. } | KafkaSection::External(settings)) => {
                settings.namespace.clone()
            }
            None => sluice_engine::kafka::DEFAULT_NAMESPACE.to_owned(),
        }
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

    fn endpoint(
        &mut self,
        file: &Path,
        node: &Node,
        path: &str,
        connection: &str,
        parse: impl FnOnce(&Connection, &Node, &str) -> Result<Options, yaml::Error>,
    ) -> Option<Options> {
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
        match parse(conn, opts, &opts_path) {
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
