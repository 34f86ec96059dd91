//! Kafka plumbing: the one place that builds rdkafka clients.
//!
//! Every hop of a flow goes through rdkafka, whether the cluster is a real one or the embedded
//! broker, so there is one code path to trust. Clients are built from [`KafkaSettings`], which
//! hold secrets as [`Secret`]s; an rdkafka `ClientConfig` prints its values when debug-formatted,
//! so one is never logged.

use std::time::Duration;

use crate::producer::Producer;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use thiserror::Error;

use crate::secret::Secret;

/// How to reach a Kafka cluster and how to lay out sluice's topics on it.
#[derive(Clone, Debug)]
pub struct KafkaSettings {
    /// `host:port[,host:port…]`.
    pub bootstrap_servers: String,
    /// librdkafka properties that carry no secret (security protocol, allow-listed extras).
    pub options: Vec<(String, String)>,
    /// librdkafka properties whose values are secret (e.g. `sasl.password`).
    pub secrets: Vec<(String, Secret)>,
    /// Partitions for topics sluice creates.
    pub partitions: i32,
    /// Replication factor for topics sluice creates.
    pub replication_factor: i32,
    /// How long to wait for the cluster to answer before calling it unreachable.
    pub connect_timeout: Duration,
    /// The largest record (key plus payload) sluice produces to its own topics; sources check
    /// it before the producer sees a record (see [`DEFAULT_MAX_RECORD_BYTES`]).
    pub max_record_bytes: usize,
}

/// The default record size limit: under librdkafka's and Kafka's own default limits
/// (1,000,000 and 1,048,588 bytes) with room for the record's headers and framing, so a record
/// sluice accepts is one every default cluster takes.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1_000_000 - 24 * 1024;

/// What a record may add to its key and payload on the wire (headers, framing), on top of
/// `max_record_bytes`, for the producer's own size check.
const RECORD_OVERHEAD_BYTES: usize = 24 * 1024;

/// The longest topic name Kafka accepts.
pub const MAX_TOPIC_NAME: usize = 249;

/// The longest flow name: its topics (`sluice.<flow>.changes`, the longest) must fit
/// [`MAX_TOPIC_NAME`].
pub const MAX_FLOW_NAME: usize = MAX_TOPIC_NAME - "sluice..changes".len();

/// Setting up or reaching the cluster failed.
#[derive(Debug, Error)]
pub enum KafkaSetupError {
    /// No broker answered in time.
    #[error(
        "connecting to Kafka at {servers}: no broker answered within {secs} s ({message}); check \
         `kafka.bootstrap_servers` and that the brokers are running"
    )]
    Unreachable {
        /// The bootstrap list tried.
        servers: String,
        /// The timeout, in seconds.
        secs: u64,
        /// The client's error, with secrets redacted.
        message: String,
    },
    /// Building or using a client failed (usually a bad property).
    #[error("{context}: {message}")]
    Client {
        /// What was being done.
        context: String,
        /// The client's error, with secrets redacted: librdkafka quotes property values in its
        /// configuration errors, passwords included.
        message: String,
    },
    /// The broker refused to create a topic.
    #[error("creating topic `{topic}`: {message}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The broker's reason.
        message: String,
    },
}

impl KafkaSettings {
    /// Settings for a plaintext cluster with no extra options (tests, the embedded broker).
    pub fn plaintext(bootstrap_servers: impl Into<String>) -> Self {
        KafkaSettings {
            bootstrap_servers: bootstrap_servers.into(),
            options: Vec::new(),
            secrets: Vec::new(),
            partitions: 3,
            replication_factor: 1,
            connect_timeout: Duration::from_secs(15),
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }

    /// `text` with every secret value of these settings replaced by `*****`.
    ///
    /// librdkafka quotes a property's value when it refuses it ("… not supported in this build:
    /// … ssl.key.password <value>"), so every client error built from these settings passes
    /// through here before it can reach a message or a log line.
    pub fn redact(&self, text: impl std::fmt::Display) -> String {
        let mut out = text.to_string();
        for (_, secret) in &self.secrets {
            if !secret.expose().is_empty() {
                out = out.replace(secret.expose(), "*****");
            }
        }
        out
    }

    fn client_error(&self, context: String, e: KafkaError) -> KafkaSetupError {
        KafkaSetupError::Client { context, message: self.redact(e) }
    }

    /// A client config with the connection settings and nothing role-specific.
    pub fn client_config(&self) -> ClientConfig {
        self.config_with(Role::Other, &[], &[])
    }

    /// A client config: sluice's `defaults` for the role, then the user's options that apply to
    /// the role (which may override a default), then the settings the role's guarantees depend
    /// on (which nothing overrides), then secrets.
    ///
    /// One `options:` map serves every client of a cluster, so a consumer setting is left out of
    /// producers and the other way round: librdkafka would ignore it, with a warning per client.
    fn config_with(&self, role: Role, defaults: &[(&str, &str)], forced: &[(&str, &str)]) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.bootstrap_servers);
        for (k, v) in defaults {
            cfg.set(*k, *v);
        }
        for (k, v) in self.options.iter().filter(|(k, _)| role.takes(k)) {
            cfg.set(k, v);
        }
        for (k, v) in forced {
            cfg.set(*k, *v);
        }
        for (k, v) in &self.secrets {
            cfg.set(k, v.expose());
        }
        cfg
    }

    /// The producer every source writes through: idempotent, acks from all in-sync replicas,
    /// so a retried send never duplicates or reorders within a partition.
    pub fn producer(&self, client_id: &str) -> Result<Producer, KafkaSetupError> {
        // Sources refuse records over `max_record_bytes` before producing them; the producer's
        // own limit leaves room for headers and framing on top.
        let limit = self.max_record_bytes.saturating_add(RECORD_OVERHEAD_BYTES).max(1_000_000);
        self.producer_with(client_id, &limit.to_string())
    }

    /// The producer of a flow's dead letters: as [`KafkaSettings::producer`], but it accepts
    /// messages as large as any the worker can consume, so an oversized record can be
    /// dead-lettered whole instead of stopping the flow.
    pub fn dlq_producer(&self, client_id: &str) -> Result<Producer, KafkaSetupError> {
        self.producer_with(client_id, "134217728")
    }

    fn producer_with(&self, client_id: &str, max_message_bytes: &str) -> Result<Producer, KafkaSetupError> {
        let defaults = [
            ("client.id", client_id),
            // 20 ms, not librdkafka's 5: with idempotence at its in-flight cap and a slow
            // broker, a 5 ms linger keeps the broker thread waking in a loop (the harness
            // measured generate -> kafka at 57 CPU µs per record with 5 ms, 28 with 20, 17.5
            // with 50). A user may set `linger.ms` in the cluster's options.
            ("linger.ms", "20"),
            // Bounded: a message that cannot be delivered fails instead of waiting forever.
            ("message.timeout.ms", "60000"),
            ("message.max.bytes", max_message_bytes),
        ];
        let cfg = self.config_with(Role::Producer, &defaults, &[("enable.idempotence", "true"), ("acks", "all")]);
        Producer::create(&cfg).map_err(|e| self.client_error(format!("creating Kafka producer `{client_id}`"), e))
    }

    /// A consumer in `group` that commits only what the caller tells it to: automatic commit and
    /// automatic offset store are both off, so nothing is committed before it is delivered.
    pub fn consumer(&self, group: &str, client_id: &str) -> Result<StreamConsumer, KafkaSetupError> {
        self.consumer_with_context(group, client_id, rdkafka::consumer::DefaultConsumerContext)
    }

    /// [`KafkaSettings::consumer`] with a context that sees rebalances.
    pub fn consumer_with_context<C: rdkafka::consumer::ConsumerContext + 'static>(
        &self,
        group: &str,
        client_id: &str,
        context: C,
    ) -> Result<StreamConsumer<C>, KafkaSetupError> {
        let defaults = [
            ("client.id", client_id),
            // A worker that dies holds its partitions until its session expires; 10 s (as
            // Vector and Kafka Connect's workers use) bounds that pause after a crash.
            ("session.timeout.ms", "10000"),
            ("heartbeat.interval.ms", "3000"),
            // Brokers that do not return a message larger than the partition fetch size would
            // leave the worker stuck in front of one big record; allow up to 8 MiB (more than
            // sluice accepts as a record, 1 MiB) so it can be read and dead-lettered.
            ("max.partition.fetch.bytes", "8388608"),
            // Backpressure: the worker reads only while it has room in its batch, and librdkafka
            // prefetches only this much ahead of it (its defaults: 64 MiB queued, 50 MiB per
            // fetch), so a slow destination holds consumption back instead of growing memory.
            // `queued.min.messages` stays at librdkafka's 100,000 (the byte bound above is what
            // limits memory): at 10,000 a partition's queue was refilled only once nearly empty,
            // and the worker idled for each whole fetch — 1.2 s per 5 MB on the embedded broker
            // (the harness's kafka → SQL → kafka: 30.5 s for 500,000 records, 20.9 s without).
            ("queued.max.messages.kbytes", "8192"),
            ("fetch.max.bytes", "16777216"),
        ];
        let forced = [
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "false"),
        ];
        self.config_with(Role::Consumer, &defaults, &forced)
            .create_with_context(context)
            .map_err(|e| self.client_error(format!("creating Kafka consumer in group `{group}`"), e))
    }

    /// Fails with a clear error if no broker answers within `connect_timeout`; otherwise returns
    /// the names of the topics the cluster has.
    pub async fn check_reachable(&self) -> Result<Vec<String>, KafkaSetupError> {
        let cfg = self.client_config();
        let timeout = self.connect_timeout;
        let servers = self.bootstrap_servers.clone();
        let res = tokio::task::spawn_blocking(move || {
            let consumer: rdkafka::consumer::BaseConsumer = cfg.create()?;
            consumer
                .fetch_metadata(None, timeout)
                .map(|md| md.topics().iter().map(|t| t.name().to_owned()).collect::<Vec<_>>())
        })
        .await;
        match res {
            Ok(Ok(names)) => Ok(names),
            Ok(Err(e)) => {
                Err(KafkaSetupError::Unreachable { servers, secs: timeout.as_secs(), message: self.redact(e) })
            }
            Err(join) => Err(KafkaSetupError::CreateTopic {
                topic: String::new(),
                message: format!("metadata task failed: {join}"),
            }),
        }
    }

    /// Creates the topics that do not exist yet; existing ones are left as they are.
    pub async fn ensure_topics(&self, topics: &[&str]) -> Result<(), KafkaSetupError> {
        let existing = self.check_reachable().await?;
        // Ask only for what is missing: creating an existing topic is harmless to Kafka, but
        // some brokers log it as an error on every start.
        let missing: Vec<&str> = topics.iter().copied().filter(|t| !existing.iter().any(|e| e == t)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> =
            self.client_config().create().map_err(|e| self.client_error("creating Kafka admin client".into(), e))?;
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|t| {
                let topic = NewTopic::new(t, self.partitions, TopicReplication::Fixed(self.replication_factor));
                // Positions are keyed by flow and only the latest matters: compaction keeps
                // the topic small however long sluice runs.
                if *t == POSITIONS_TOPIC || *t == RUNS_TOPIC { topic.set("cleanup.policy", "compact") } else { topic }
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(self.connect_timeout));
        let results = admin
            .create_topics(new.iter(), &opts)
            .await
            .map_err(|e| self.client_error(format!("creating topics {}", topics.join(", ")), e))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(KafkaSetupError::CreateTopic { topic, message: code.to_string() });
                }
            }
        }
        Ok(())
    }
}

/// The high watermark (next offset to be written) of each partition of `topic`.
pub async fn high_watermarks(settings: &KafkaSettings, topic: &str) -> Result<Vec<(i32, i64)>, KafkaSetupError> {
    let cfg = settings.client_config();
    let timeout = settings.connect_timeout;
    let topic = topic.to_owned();
    let res = tokio::task::spawn_blocking(move || -> Result<Vec<(i32, i64)>, KafkaError> {
        let consumer: rdkafka::consumer::BaseConsumer = cfg.create()?;
        let md = consumer.fetch_metadata(Some(&topic), timeout)?;
        let mut out = Vec::new();
        for t in md.topics() {
            for p in t.partitions() {
                let (_, high) = consumer.fetch_watermarks(&topic, p.id(), timeout)?;
                out.push((p.id(), high));
            }
        }
        Ok(out)
    })
    .await;
    match res {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(settings.client_error("reading topic watermarks".into(), e)),
        Err(join) => Err(KafkaSetupError::CreateTopic {
            topic: String::new(),
            message: format!("watermark task failed: {join}"),
        }),
    }
}

/// One message read back from a topic.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key bytes, if any.
    pub key: Option<Vec<u8>>,
    /// Payload bytes, if any.
    pub payload: Option<Vec<u8>>,
    /// Headers, values as (lossy) text.
    pub headers: Vec<(String, String)>,
}

impl StoredMessage {
    /// The value of header `name`, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Reads `topic` from its start up to its end as of now, at most `limit` messages, in
/// partition then offset order. A topic that does not exist reads as empty.
pub async fn read_topic(
    settings: &KafkaSettings,
    topic: &str,
    limit: usize,
) -> Result<Vec<StoredMessage>, KafkaSetupError> {
    use rdkafka::message::{Headers, Message};
    let cfg = settings.client_config();
    let timeout = settings.connect_timeout;
    let topic_name = topic.to_owned();
    let res = tokio::task::spawn_blocking(move || -> Result<Vec<StoredMessage>, KafkaError> {
        let consumer: rdkafka::consumer::BaseConsumer = {
            let mut cfg = cfg;
            cfg.set("group.id", "sluice.reader").set("enable.auto.commit", "false").create()?
        };
        let md = consumer.fetch_metadata(Some(&topic_name), timeout)?;
        let mut out = Vec::new();
        for t in md.topics() {
            for p in t.partitions() {
                let (low, high) = consumer.fetch_watermarks(&topic_name, p.id(), timeout)?;
                if high <= low {
                    continue;
                }
                let mut tpl = rdkafka::TopicPartitionList::new();
                tpl.add_partition_offset(&topic_name, p.id(), rdkafka::Offset::Offset(low))?;
                consumer.assign(&tpl)?;
                let deadline = std::time::Instant::now() + timeout;
                let mut next = low;
                while next < high && out.len() < limit && std::time::Instant::now() < deadline {
                    let Some(m) = consumer.poll(std::time::Duration::from_millis(200)) else { continue };
                    let m = m?;
                    next = m.offset() + 1;
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|x| {
                                    (
                                        x.key.to_owned(),
                                        String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push(StoredMessage {
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec),
                        headers,
                    });
                }
            }
        }
        Ok(out)
    })
    .await;
    match res {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(settings.client_error(format!("reading {topic}"), e)),
        Err(join) => Err(KafkaSetupError::CreateTopic {
            topic: topic.to_owned(),
            message: format!("reader task failed: {join}"),
        }),
    }
}

/// The topic a flow's source writes its change records to.
pub fn changes_topic(flow: &str) -> String {
    format!("sluice.{flow}.changes")
}

/// The topic a flow's bad records go to, with the reason in headers.
pub fn dlq_topic(flow: &str) -> String {
    format!("sluice.{flow}.dlq")
}

/// The compacted topic holding each flow's last durable source position.
pub const POSITIONS_TOPIC: &str = "sluice.positions";

/// The compacted topic holding each flow's latest run record.
pub const RUNS_TOPIC: &str = "sluice.runs";

/// The consumer group of a flow's sink workers.
pub fn sink_group(flow: &str) -> String {
    format!("sluice.{flow}.sink")
}

/// The consumer group that replays a flow's DLQ: its committed offsets mark the dead letters
/// already sent through the flow again.
pub fn replay_group(flow: &str) -> String {
    format!("sluice.{flow}.replay")
}

/// Security settings for a Kafka cluster, as written in config.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSecurity {
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub protocol: SecurityProtocol,
    /// SASL mechanism, e.g. `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`.
    pub sasl_mechanism: Option<String>,
    /// SASL user name.
    pub username: Option<String>,
    /// SASL password, as `${env:NAME}` or `${file:PATH}`.
    pub password: Option<Secret>,
    /// CA certificate file for verifying the brokers.
    pub ssl_ca_location: Option<String>,
    /// Client certificate file, for mutual TLS.
    pub ssl_certificate_location: Option<String>,
    /// Client private key file, for mutual TLS.
    pub ssl_key_location: Option<String>,
    /// Password of the client private key.
    pub ssl_key_password: Option<Secret>,
}

/// librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no SASL.
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL without TLS.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

/// Which kind of client a config is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Producer,
    Consumer,
    /// Admin and metadata clients: neither role's tuning applies.
    Other,
}

/// Allowed options that only consumers read.
const CONSUMER_OPTIONS: &[&str] = &[
    "fetch.max.bytes",
    "fetch.min.bytes",
    "fetch.wait.max.ms",
    "max.partition.fetch.bytes",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "partition.assignment.strategy",
    "group.instance.id",
    "isolation.level",
];

/// Allowed options that only producers read.
const PRODUCER_OPTIONS: &[&str] = &[
    "linger.ms",
    "batch.num.messages",
    "batch.size",
    "compression.type",
    "compression.level",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "message.timeout.ms",
    "retries",
];

impl Role {
    fn takes(self, key: &str) -> bool {
        let consumer = CONSUMER_OPTIONS.contains(&key);
        let producer = PRODUCER_OPTIONS.contains(&key);
        match self {
            Role::Producer => !consumer,
            Role::Consumer => !producer,
            Role::Other => !consumer && !producer,
        }
    }
}

/// Extra librdkafka properties a config may set: these, and the role-specific ones above.
/// Anything else is refused: some properties run commands (`sasl.kerberos.kinit.cmd`) or load
/// libraries (`plugin.library.paths`), and a config file should not be a way to run code.
const ALLOWED_OPTIONS: &[&str] = &[
    "client.id",
    "client.rack",
    "socket.timeout.ms",
    "socket.keepalive.enable",
    "socket.connection.setup.timeout.ms",
    "connections.max.idle.ms",
    "reconnect.backoff.ms",
    "reconnect.backoff.max.ms",
    "request.timeout.ms",
    "metadata.max.age.ms",
    "topic.metadata.refresh.interval.ms",
    "message.max.bytes",
    "receive.message.max.bytes",
    "retry.backoff.ms",
    "retry.backoff.max.ms",
    "broker.address.family",
    "api.version.request",
    "statistics.interval.ms",
    "ssl.endpoint.identification.algorithm",
    "enable.ssl.certificate.verification",
    "ssl.cipher.suites",
    "ssl.curves.list",
    "sasl.oauthbearer.method",
    "sasl.oauthbearer.client.id",
    "sasl.oauthbearer.token.endpoint.url",
    "sasl.oauthbearer.scope",
];

/// Checks one extra librdkafka property against the allow-list.
pub fn check_option(key: &str) -> Result<(), String> {
    if ALLOWED_OPTIONS.contains(&key) || CONSUMER_OPTIONS.contains(&key) || PRODUCER_OPTIONS.contains(&key) {
        return Ok(());
    }
    let why = if key.ends_with(".cmd") || key.contains("kinit") {
        " (it runs a command)"
    } else if key.contains("library") || key.contains("plugin") || key.contains("engine") {
        " (it loads code)"
    } else if key == "bootstrap.servers"
        || key.starts_with("sasl.")
        || key.starts_with("ssl.")
        || key == "security.protocol"
    {
        " (set it under `bootstrap_servers` or `security:`)"
    } else {
        ""
    };
    Err(format!("librdkafka option `{key}` is not allowed{why}"))
}

impl KafkaSettings {
    /// Settings from config parts; refuses options outside the allow-list.
    pub fn from_parts(
        bootstrap_servers: &str,
        security: Option<&KafkaSecurity>,
        extra: &std::collections::BTreeMap<String, String>,
    ) -> Result<KafkaSettings, Vec<String>> {
        let mut s = KafkaSettings::plaintext(bootstrap_servers);
        let errors: Vec<String> = extra.keys().filter_map(|k| check_option(k).err()).collect();
        if !errors.is_empty() {
            return Err(errors);
        }
        if let Some(sec) = security {
            let proto = match sec.protocol {
                SecurityProtocol::Plaintext => "plaintext",
                SecurityProtocol::Ssl => "ssl",
                SecurityProtocol::SaslPlaintext => "sasl_plaintext",
                SecurityProtocol::SaslSsl => "sasl_ssl",
            };
            s.options.push(("security.protocol".into(), proto.into()));
            let mut opt = |k: &str, v: &Option<String>| {
                if let Some(v) = v {
                    s.options.push((k.into(), v.clone()));
                }
            };
            opt("sasl.mechanism", &sec.sasl_mechanism);
            opt("sasl.username", &sec.username);
            opt("ssl.ca.location", &sec.ssl_ca_location);
            opt("ssl.certificate.location", &sec.ssl_certificate_location);
            opt("ssl.key.location", &sec.ssl_key_location);
            if let Some(p) = &sec.password {
                s.secrets.push(("sasl.password".into(), p.clone()));
            }
            if let Some(p) = &sec.ssl_key_password {
                s.secrets.push(("ssl.key.password".into(), p.clone()));
            }
        }
        s.options.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(s)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn refuses_options_that_run_or_load_code() {
        assert!(check_option("linger.ms").is_ok());
        let e = check_option("sasl.kerberos.kinit.cmd").unwrap_err();
        assert!(e.contains("runs a command"), "{e}");
        let e = check_option("plugin.library.paths").unwrap_err();
        assert!(e.contains("loads code"), "{e}");
        let mut extra = std::collections::BTreeMap::new();
        extra.insert("plugin.library.paths".to_string(), "x".to_string());
        extra.insert("linger.ms".to_string(), "1".to_string());
        assert_eq!(KafkaSettings::from_parts("h:1", None, &extra).unwrap_err().len(), 1);
    }

    #[test]
    fn each_client_gets_only_the_options_of_its_role() {
        let mut s = KafkaSettings::plaintext("h:1");
        for (k, v) in [("linger.ms", "7"), ("fetch.wait.max.ms", "9"), ("socket.timeout.ms", "11")] {
            s.options.push((k.into(), v.into()));
        }
        let producer = s.config_with(Role::Producer, &[], &[]);
        assert_eq!((producer.get("linger.ms"), producer.get("fetch.wait.max.ms")), (Some("7"), None));
        let consumer = s.config_with(Role::Consumer, &[], &[]);
        assert_eq!((consumer.get("linger.ms"), consumer.get("fetch.wait.max.ms")), (None, Some("9")));
        let admin = s.client_config();
        assert_eq!((admin.get("linger.ms"), admin.get("fetch.wait.max.ms")), (None, None));
        for cfg in [producer, consumer, admin] {
            assert_eq!(cfg.get("socket.timeout.ms"), Some("11"));
        }
        for k in ["fetch.wait.max.ms", "linger.ms", "socket.timeout.ms"] {
            assert!(check_option(k).is_ok(), "{k}");
        }
    }
}
