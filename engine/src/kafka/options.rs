//! What a config may say about a cluster: security settings and the allow-listed librdkafka
//! properties, each given only to the clients that read it.

use super::KafkaSettings;
use crate::error::Invalid;
use crate::secret::Secret;

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
pub(super) enum Role {
    Producer,
    Consumer,
    /// Admin and metadata clients: neither role's tuning applies.
    Other,
}

/// Allowed options that only consumers read.
const CONSUMER_OPTIONS: &[&str] = &[
    "fetch.queue.backoff.ms",
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
    pub(super) fn takes(self, key: &str) -> bool {
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
pub fn check_option(key: &str) -> Result<(), Invalid> {
    if ALLOWED_OPTIONS.contains(&key) || CONSUMER_OPTIONS.contains(&key) || PRODUCER_OPTIONS.contains(&key) {
        return Ok(());
    }
    let why = if key == "isolation.level" {
        " (sluice reads only committed records: read_committed)"
    } else if key.ends_with(".cmd") || key.contains("kinit") {
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
    Err(format!("librdkafka option `{key}` is not allowed{why}").into())
}

impl KafkaSettings {
    /// Settings from config parts; refuses options outside the allow-list.
    pub fn from_parts(
        bootstrap_servers: &str,
        security: Option<&KafkaSecurity>,
        extra: &std::collections::BTreeMap<String, String>,
    ) -> Result<KafkaSettings, Vec<String>> {
        let mut s = KafkaSettings::plaintext(bootstrap_servers);
        let errors: Vec<String> = extra.keys().filter_map(|k| check_option(k).err().map(|e| e.0)).collect();
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
        assert!(e.0.contains("runs a command"), "{e}");
        let e = check_option("plugin.library.paths").unwrap_err();
        assert!(e.0.contains("loads code"), "{e}");
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
