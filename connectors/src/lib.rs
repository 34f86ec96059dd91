//! # sluice-connectors
//!
//! One module per connector, and one registry (this file) that knows them all:
//!
//! | connector  | source | sink | module |
//! |------------|--------|------|--------|
//! | `generate` | yes    |      | [`generate`] |
//! | `file`     | yes    | yes  | [`file`] |
//! | `http`     | yes    | yes  | [`http_source`], [`http`] |
//! | `kafka`    | yes    | yes  | [`kafka`] |
//! | `postgres` | yes    | yes  | [`postgres_query`] (pulls), [`postgres_cdc`] (change data capture), [`postgres`] (sink) |
//! | `s3`       |        | yes  | [`s3`] |
//! | `stdout`   |        | yes  | [`stdout`] |
//!
//! A connector is a *connection* type (settings and credentials, written once under
//! `connections:` and shared by flows) plus per-flow *options* types for its source and sink
//! sides. Config is parsed in two steps — first the connection's `type`, then its body and the
//! flows' options with that connector's types — so every struct can deny unknown fields and
//! errors name the exact field.

pub mod file;
pub mod generate;
pub mod guard;
pub mod http;
pub mod http_source;
pub mod json_text;
pub mod kafka;
pub mod postgres;
pub mod postgres_cdc;
pub mod postgres_query;
pub mod s3;
pub mod schema_registry;
pub mod stdout;

use serde::de::{Deserialize, Deserializer, Error as _};
use sluice_engine::connector::{PayloadFormat, Sink, Source};
use sluice_engine::error::ConnectorError;
use sluice_engine::kafka::KafkaSettings;
use sluice_engine::schema::RowSchema;

/// A named connection's settings, by connector.
#[derive(Debug, Clone)]
pub enum Connection {
    /// `type: generate`
    Generate(generate::GenerateConnection),
    /// `type: file`
    File(file::FileConnection),
    /// `type: http`
    Http(http::HttpConnection),
    /// `type: kafka`
    Kafka(kafka::KafkaConnection),
    /// `type: postgres`
    Postgres(postgres::PostgresConnection),
    /// `type: s3`
    S3(s3::S3Connection),
    /// `type: stdout`
    Stdout(stdout::StdoutConnection),
}

/// The connector names accepted as a connection's `type`.
pub const KINDS: &[&str] = &["generate", "file", "http", "kafka", "postgres", "s3", "stdout"];

impl Connection {
    /// Parses a connection body (everything but `type`) for connector `kind`.
    pub fn deserialize_kind<'de, D: Deserializer<'de>>(kind: &str, d: D) -> Result<Connection, D::Error> {
        Ok(match kind {
            "generate" => Connection::Generate(Deserialize::deserialize(d)?),
            "file" => Connection::File(Deserialize::deserialize(d)?),
            "http" => Connection::Http(Deserialize::deserialize(d)?),
            "kafka" => Connection::Kafka(Deserialize::deserialize(d)?),
            "postgres" => Connection::Postgres(Deserialize::deserialize(d)?),
            "s3" => Connection::S3(Deserialize::deserialize(d)?),
            "stdout" => Connection::Stdout(Deserialize::deserialize(d)?),
            other => return Err(D::Error::unknown_variant(other, KINDS)),
        })
    }

    /// The connector's name.
    pub fn kind(&self) -> &'static str {
        match self {
            Connection::Generate(_) => "generate",
            Connection::File(_) => "file",
            Connection::Http(_) => "http",
            Connection::Kafka(_) => "kafka",
            Connection::Postgres(_) => "postgres",
            Connection::S3(_) => "s3",
            Connection::Stdout(_) => "stdout",
        }
    }
}

/// A flow's source options, by connector.
#[derive(Debug, Clone)]
pub enum SourceOptions {
    /// For `generate`.
    Generate(generate::GenerateOptions),
    /// For `file`.
    File(file::FileSourceOptions),
    /// For `kafka`.
    Kafka(kafka::KafkaSourceOptions),
    /// For `http`: a paginated REST API.
    Http(http_source::HttpSourceOptions),
    /// For `postgres`: an incremental or complete pull by query.
    PostgresQuery(postgres_query::QueryOptions),
}

/// A flow's sink options, by connector.
#[derive(Debug, Clone)]
pub enum SinkOptions {
    /// For `file`.
    File(file::FileSinkOptions),
    /// For `http`.
    Http(http::HttpSinkOptions),
    /// For `kafka`.
    Kafka(kafka::KafkaSinkOptions),
    /// For `postgres`.
    Postgres(postgres::PostgresSinkOptions),
    /// For `s3`.
    S3(s3::S3SinkOptions),
    /// For `stdout`.
    Stdout(stdout::StdoutOptions),
}

/// Parses a flow's source options for the connector of `conn`.
pub fn source_options<'de, D: Deserializer<'de>>(conn: &Connection, d: D) -> Result<SourceOptions, D::Error> {
    Ok(match conn {
        Connection::Generate(_) => SourceOptions::Generate(Deserialize::deserialize(d)?),
        Connection::File(_) => SourceOptions::File(Deserialize::deserialize(d)?),
        Connection::Kafka(_) => SourceOptions::Kafka(Deserialize::deserialize(d)?),
        Connection::Stdout(_) => return Err(D::Error::custom("a `stdout` connection cannot be a source")),
        Connection::S3(_) => {
            return Err(D::Error::custom("an `s3` connection cannot be a source yet (only a destination)"));
        }
        Connection::Http(_) => SourceOptions::Http(Deserialize::deserialize(d)?),
        Connection::Postgres(_) => SourceOptions::PostgresQuery(Deserialize::deserialize(d)?),
    })
}

/// Parses a flow's sink options for the connector of `conn`.
pub fn sink_options<'de, D: Deserializer<'de>>(conn: &Connection, d: D) -> Result<SinkOptions, D::Error> {
    Ok(match conn {
        Connection::File(_) => SinkOptions::File(Deserialize::deserialize(d)?),
        Connection::Http(_) => SinkOptions::Http(Deserialize::deserialize(d)?),
        Connection::Postgres(_) => SinkOptions::Postgres(Deserialize::deserialize(d)?),
        Connection::Kafka(_) => SinkOptions::Kafka(Deserialize::deserialize(d)?),
        Connection::Stdout(_) => SinkOptions::Stdout(Deserialize::deserialize(d)?),
        Connection::S3(_) => SinkOptions::S3(Deserialize::deserialize(d)?),
        Connection::Generate(_) => return Err(D::Error::custom("a `generate` connection cannot be a destination")),
    })
}

/// The row schema a source defines itself, when it does (a flow may then omit `schema:`).
pub fn builtin_schema(options: &SourceOptions) -> Option<RowSchema> {
    match options {
        SourceOptions::Generate(_) => Some(generate::schema()),
        SourceOptions::File(_) | SourceOptions::Kafka(_) | SourceOptions::PostgresQuery(_) | SourceOptions::Http(_) => {
            None
        }
    }
}

/// What a flow reads.
pub enum Input {
    /// A connector that publishes change records to the flow's changes topic.
    Source(Box<dyn Source>),
    /// An existing topic, consumed directly by the sink worker.
    Topic {
        /// The cluster holding it.
        kafka: KafkaSettings,
        /// The topic.
        topic: String,
        /// How its payloads are encoded.
        format: PayloadFormat,
    },
}

/// Builds a flow's input from connection `name`. `own` is sluice's cluster; `follow` is set for
/// continuous flows (a source then waits for more instead of ending when it has read all).
pub fn build_source(
    name: &str,
    conn: &Connection,
    object: &str,
    options: &SourceOptions,
    own: &KafkaSettings,
    follow: bool,
) -> Result<Input, ConnectorError> {
    Ok(match (conn, options) {
        (Connection::Generate(_), SourceOptions::Generate(o)) => {
            Input::Source(Box::new(generate::GenerateSource::new(object, o.clone())?))
        }
        (Connection::File(c), SourceOptions::File(o)) => {
            Input::Source(Box::new(file::FileSource::new(c, object, o.clone())?))
        }
        (Connection::Http(c), SourceOptions::Http(o)) => {
            Input::Source(Box::new(http_source::HttpSource::new(name, c, object, o.clone(), follow)?))
        }
        (Connection::Postgres(c), SourceOptions::PostgresQuery(o)) if o.mode == postgres_query::PullMode::Cdc => {
            Input::Source(Box::new(postgres_cdc::CdcSource::new(name, c, object, o, follow)?))
        }
        (Connection::Postgres(c), SourceOptions::PostgresQuery(o)) => {
            Input::Source(Box::new(postgres_query::QuerySource::new(name, c, object, o.clone(), follow)?))
        }
        (Connection::Kafka(c), SourceOptions::Kafka(o)) => {
            Input::Topic { kafka: c.settings(own)?, topic: object.to_owned(), format: o.format }
        }
        _ => {
            return Err(ConnectorError::User(format!(
                "connection of type `{}` does not match its options",
                conn.kind()
            )));
        }
    })
}

/// Checks a flow's source settings as far as can be done without reaching the service or
/// touching files: everything [`build_source`] would refuse for the settings alone (a missing
/// option that another one needs, a URL the connection may not reach, a TLS file that does not
/// read). `sluice validate` runs it, so a config that validates does not fail at its start.
pub fn check_source(
    name: &str,
    conn: &Connection,
    object: &str,
    options: &SourceOptions,
    own: &KafkaSettings,
) -> Result<(), ConnectorError> {
    match (conn, options) {
        (Connection::Generate(_), SourceOptions::Generate(o)) => {
            generate::GenerateSource::new(object, o.clone()).map(drop)
        }
        // The files are read at run time; they may not exist yet.
        (Connection::File(_), SourceOptions::File(_)) => Ok(()),
        (Connection::Http(c), SourceOptions::Http(o)) => {
            http_source::HttpSource::new(name, c, object, o.clone(), false).map(drop)
        }
        (Connection::Postgres(c), SourceOptions::PostgresQuery(o)) if o.mode == postgres_query::PullMode::Cdc => {
            postgres_cdc::CdcSource::new(name, c, object, o, false).map(drop)
        }
        (Connection::Postgres(c), SourceOptions::PostgresQuery(o)) => {
            postgres_query::QuerySource::new(name, c, object, o.clone(), false).map(drop)
        }
        (Connection::Kafka(c), SourceOptions::Kafka(o)) => check_kafka(name, c, own, o.format == PayloadFormat::Avro),
        _ => Err(ConnectorError::User(format!("connection of type `{}` does not match its options", conn.kind()))),
    }
}

/// Checks a flow's destination settings without reaching the service or touching files (see
/// [`check_source`]).
pub fn check_sink(
    name: &str,
    conn: &Connection,
    object: &str,
    options: &SinkOptions,
    own: &KafkaSettings,
    flow: &str,
) -> Result<(), ConnectorError> {
    match (conn, options) {
        // The file is created at run time.
        (Connection::File(_), SinkOptions::File(_)) | (Connection::Stdout(_), SinkOptions::Stdout(_)) => Ok(()),
        (Connection::Http(c), SinkOptions::Http(o)) => http::HttpSink::new(name, c, object, o.clone()).map(drop),
        (Connection::S3(c), SinkOptions::S3(o)) => s3::S3Sink::new(name, c, object, o.clone(), flow).map(drop),
        (Connection::Postgres(c), SinkOptions::Postgres(o)) => {
            postgres::PostgresSink::new(name, c, object, o.clone()).map(drop)
        }
        (Connection::Kafka(c), SinkOptions::Kafka(o)) => check_kafka(name, c, own, o.format == kafka::SinkFormat::Avro),
        _ => Err(ConnectorError::User(format!("connection of type `{}` does not match its options", conn.kind()))),
    }
}

/// A `kafka` connection's settings, and its schema registry when Avro needs one.
fn check_kafka(name: &str, c: &kafka::KafkaConnection, own: &KafkaSettings, avro: bool) -> Result<(), ConnectorError> {
    c.settings(own)?;
    if avro && kafka::registry(name, c)?.is_none() {
        return Err(ConnectorError::User(format!(
            "kafka connection `{name}`: `format: avro` needs the connection's `schema_registry`"
        )));
    }
    Ok(())
}

/// Checks that connection `name` can be used: the service answers and accepts the credentials.
/// Returns what was checked, for `sluice connections test`. `own` is sluice's cluster.
pub async fn test_connection(name: &str, conn: &Connection, own: &KafkaSettings) -> Result<String, ConnectorError> {
    match conn {
        Connection::Generate(_) => Ok("synthetic data; nothing to reach".into()),
        Connection::Stdout(_) => Ok("standard output; nothing to reach".into()),
        Connection::File(c) => file::test_connection(name, c),
        Connection::Http(c) => http::test_connection(name, c).await,
        Connection::Kafka(c) => {
            let settings = c.settings(own)?;
            let topics = settings.check_reachable().await.map_err(|e| ConnectorError::Other {
                context: format!("kafka connection `{name}`"),
                message: e.to_string(),
            })?;
            Ok(format!("cluster {} answered; {} topic(s) visible", settings.bootstrap_servers, topics.len()))
        }
        Connection::Postgres(c) => postgres::test_connection(name, c).await,
        Connection::S3(c) => s3::test_connection(name, c).await,
    }
}

/// Builds a flow's sink from connection `name`. `own` is sluice's cluster.
pub async fn build_sink(
    name: &str,
    conn: &Connection,
    object: &str,
    options: &SinkOptions,
    own: &KafkaSettings,
    flow: &str,
) -> Result<Box<dyn Sink>, ConnectorError> {
    Ok(match (conn, options) {
        (Connection::File(c), SinkOptions::File(o)) => Box::new(file::FileSink::new(c, object, o.clone())?),
        (Connection::Stdout(_), SinkOptions::Stdout(_)) => Box::new(stdout::StdoutSink),
        (Connection::Http(c), SinkOptions::Http(o)) => Box::new(http::HttpSink::new(name, c, object, o.clone())?),
        (Connection::S3(c), SinkOptions::S3(o)) => Box::new(s3::S3Sink::new(name, c, object, o.clone(), flow)?),
        (Connection::Postgres(c), SinkOptions::Postgres(o)) => {
            Box::new(postgres::PostgresSink::new(name, c, object, o.clone())?)
        }
        (Connection::Kafka(c), SinkOptions::Kafka(o)) => {
            let registry = match o.format {
                kafka::SinkFormat::Json => None,
                kafka::SinkFormat::Avro => Some(kafka::registry(name, c)?.ok_or_else(|| {
                    ConnectorError::User(format!(
                        "kafka connection `{name}`: `format: avro` needs the connection's `schema_registry`"
                    ))
                })?),
            };
            Box::new(kafka::KafkaSink::new(&c.settings(own)?, object, flow, registry).await?)
        }
        _ => {
            return Err(ConnectorError::User(format!(
                "connection of type `{}` does not match its options",
                conn.kind()
            )));
        }
    })
}
