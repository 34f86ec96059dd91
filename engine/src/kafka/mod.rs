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

mod names;
mod options;
mod read;
mod tail;

use options::Role;
pub use options::{KafkaSecurity, SecurityProtocol, check_option};
pub use read::{StoredMessage, committed_ends, committed_offsets, read_topic, written_ends};
pub use tail::tail_topic;

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
    /// Replication factor for topics sluice creates; -1 takes the cluster's default
    /// (`default.replication.factor`).
    pub replication_factor: i32,
    /// How long to wait for the cluster to answer before calling it unreachable.
    pub connect_timeout: Duration,
    /// The largest record (key plus payload) sluice produces to its own topics; sources check
    /// it before the producer sees a record (see [`DEFAULT_MAX_RECORD_BYTES`]).
    pub max_record_bytes: usize,
    /// The prefix of every topic and consumer group sluice creates on this cluster
    /// ([`DEFAULT_NAMESPACE`]): two deployments sharing a cluster keep apart by it.
    pub namespace: String,
    /// Whether sources write in Kafka transactions (see `runtime::SourceWriter`). Off for the
    /// embedded broker, which cannot commit them.
    pub transactions: bool,
    /// How long the runs topic keeps a run's record; `None` keeps every run.
    pub runs_retention: Option<Duration>,
}

/// The namespace unless the config names another.
pub const DEFAULT_NAMESPACE: &str = "sluice";

pub use sluice_core::names::DEFAULT_MAX_RECORD_BYTES;

/// What a record may add to its key and payload on the wire (headers, framing), on top of
/// `max_record_bytes`, for the producer's own size check.
const RECORD_OVERHEAD_BYTES: usize = 24 * 1024;

/// The longest topic name Kafka accepts.
pub const MAX_TOPIC_NAME: usize = 249;

/// The longest flow name in `namespace`: its topics (`<namespace>.<flow>.changes`, the
/// longest) must fit [`MAX_TOPIC_NAME`].
pub fn max_flow_name(namespace: &str) -> usize {
    MAX_TOPIC_NAME.saturating_sub(namespace.len() + "..changes".len())
}

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
            namespace: DEFAULT_NAMESPACE.to_owned(),
            transactions: true,
            runs_retention: None,
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

    /// The transactional producer of a flow's source (`transactional.id` from
    /// [`KafkaSettings::source_transactional_id`]): a batch of records, its dead letters and the
    /// position after it are committed together or not at all.
    pub fn source_producer(&self, flow: &str) -> Result<Producer, KafkaSetupError> {
        let client_id = format!("{}.{flow}.source", self.namespace);
        let limit = self.max_record_bytes.saturating_add(RECORD_OVERHEAD_BYTES).max(1_000_000).to_string();
        let txn_id = self.source_transactional_id(flow);
        let defaults = [
            ("client.id", client_id.as_str()),
            ("linger.ms", "20"),
            // A record not delivered within the transaction's own timeout could never commit.
            ("message.timeout.ms", "60000"),
            ("transaction.timeout.ms", "60000"),
            ("message.max.bytes", limit.as_str()),
        ];
        let forced = [("enable.idempotence", "true"), ("acks", "all"), ("transactional.id", txn_id.as_str())];
        let cfg = self.config_with(Role::Producer, &defaults, &forced);
        Producer::create(&cfg).map_err(|e| self.client_error(format!("creating Kafka producer `{client_id}`"), e))
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
        self.consumer_built(group, client_id, context, &[])
    }

    /// [`KafkaSettings::consumer_with_context`], with librdkafka's statistics handed to the
    /// context's `stats` every `every` (the sink worker's lag metric reads them).
    pub fn consumer_with_stats<C: rdkafka::consumer::ConsumerContext + 'static>(
        &self,
        group: &str,
        client_id: &str,
        context: C,
        every: Option<std::time::Duration>,
    ) -> Result<StreamConsumer<C>, KafkaSetupError> {
        match every {
            Some(d) => {
                let ms = d.as_millis().max(1).to_string();
                self.consumer_built(group, client_id, context, &[("statistics.interval.ms", ms.as_str())])
            }
            None => self.consumer_built(group, client_id, context, &[]),
        }
    }

    /// A source claim group's consumer: [`KafkaSettings::consumer_with_context`] with a rebalance
    /// timeout (`max.poll.interval.ms`) of 30 s instead of 5 minutes. Its member is polled all
    /// the time (it only holds a partition), and a coordinator waits up to that long for known
    /// members to rejoin: after a whole cluster restarts, the default kept a flow without its
    /// source for minutes.
    pub fn claim_consumer<C: rdkafka::consumer::ConsumerContext + 'static>(
        &self,
        group: &str,
        context: C,
    ) -> Result<StreamConsumer<C>, KafkaSetupError> {
        self.consumer_built(group, group, context, &[("max.poll.interval.ms", "30000")])
    }

    fn consumer_built<C: rdkafka::consumer::ConsumerContext + 'static>(
        &self,
        group: &str,
        client_id: &str,
        context: C,
        extra: &[(&str, &str)],
    ) -> Result<StreamConsumer<C>, KafkaSetupError> {
        let defaults = [
            ("client.id", client_id),
            // A worker that dies holds its partitions (and a source owner its claim) until its
            // session expires. 6 s, Apache Kafka's least allowed (`group.min.session.timeout.ms`),
            // bounds that pause after a crash; heartbeats come from librdkafka's own thread, so a
            // busy runtime does not miss them. Kafka Connect uses 10 s, librdkafka 45 s.
            ("session.timeout.ms", "6000"),
            ("heartbeat.interval.ms", "2000"),
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
            // Once a partition's queue passed those bounds, librdkafka waits this long before
            // it looks again (its default: 1 s). A worker that keeps up drains 8 MiB in far
            // less, then sat idle for the rest: kafka → file with SQL ran at 82,000 records/s
            // on one Kafka node, 365,000 with 10 ms (bench/, 2,000,000 records). Looking every
            // 10 ms while a slow destination holds the queue full costs nothing measurable.
            ("fetch.queue.backoff.ms", "10"),
        ];
        let forced = [
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "false"),
            // A source writes in transactions; records of an aborted one (a fenced owner's, or
            // a batch that failed) are never read. Other clients' transactional topics alike.
            ("isolation.level", "read_committed"),
        ];
        let mut cfg = self.config_with(Role::Consumer, &defaults, &forced);
        for (k, v) in extra {
            cfg.set(*k, *v);
        }
        cfg.create_with_context(context)
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

    /// Sets the runs topic's retention (`kafka.runs_retention_days`) on a topic created before
    /// it was configured; a topic sluice creates gets it at creation. Failing is said, not
    /// fatal: the history is then kept longer than asked.
    pub async fn apply_runs_retention(&self) {
        let Some(retention) = self.runs_retention else { return };
        let topic = self.runs_topic();
        let ms = retention.as_millis().to_string();
        let applied = async {
            self.ensure_topics(&[&topic]).await?;
            let admin: AdminClient<DefaultClientContext> = self
                .client_config()
                .create()
                .map_err(|e| self.client_error("creating Kafka admin client".into(), e))?;
            let config = rdkafka::admin::AlterConfig::new(rdkafka::admin::ResourceSpecifier::Topic(&topic))
                .set("cleanup.policy", "compact,delete")
                .set("retention.ms", &ms);
            let opts = AdminOptions::new().operation_timeout(Some(self.connect_timeout));
            let results = admin
                .alter_configs([&config], &opts)
                .await
                .map_err(|e| self.client_error(format!("setting the retention of {topic}"), e))?;
            for r in results {
                if let Err((_, code)) = r {
                    return Err(KafkaSetupError::Client {
                        context: format!("setting the retention of {topic}"),
                        message: code.to_string(),
                    });
                }
            }
            Ok::<(), KafkaSetupError>(())
        };
        if let Err(e) = applied.await {
            tracing::warn!(error = %e, "the run history is kept without a retention");
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
        let retention_ms = self.runs_retention.map(|r| r.as_millis().to_string());
        let runs = self.runs_topic();
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|t| {
                // The claims topic has one partition: one owner per flow's group.
                let partitions = if *t == self.claims_topic() { 1 } else { self.partitions };
                let topic = NewTopic::new(t, partitions, TopicReplication::Fixed(self.replication_factor));
                match &retention_ms {
                    // Run history with a retention: each run's last record, for so long.
                    Some(ms) if *t == runs => topic.set("cleanup.policy", "compact,delete").set("retention.ms", ms),
                    // Positions and states are keyed by flow and only the latest matters:
                    // compaction keeps the topic small however long sluice runs.
                    _ if self.compacted(t) => topic.set("cleanup.policy", "compact"),
                    _ => topic,
                }
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
