//! The one trait a connector implements: [`Connector`].
//!
//! A connector is a type with a name (the `type:` of a connection), a *connection* type (the
//! shared, secret-holding settings written once under `connections:`) and per-flow *option*
//! types for its source and destination sides. The registry (in the `sluice` crate) parses each
//! with serde, so every struct can deny unknown fields and an error names the exact field and
//! line; then it asks the connector to check and build a flow's source or sink.
//!
//! A connector that can only be one side sets the other side's options to [`Unsupported`]:
//! the registry then refuses such a flow at load time, naming the connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use sluice_engine::avro::SchemaRegistry;
use sluice_engine::connector::{PayloadFormat, Sink, Source};
use sluice_engine::error::ConnectorError;
use sluice_engine::kafka::KafkaSettings;
use sluice_engine::schema::RowSchema;

/// What a connector is told when it builds or checks something.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The connection's name, for messages ("http connection `crm`: …").
    pub connection: &'a str,
    /// sluice's own cluster (a `kafka` connection without servers means it).
    pub own: &'a KafkaSettings,
    /// The flow being built, or `""` when there is none (`sluice connections test`).
    pub flow: &'a str,
    /// The flow's `schema_changes` is `fail`. A source acts on what only it can see: a CDC
    /// source that learns a column's type changed stops the flow naming the change (the SQL
    /// stage, which sees values only, would send each value that no longer fits to the DLQ).
    /// Added and dropped columns are the SQL stage's.
    pub fail_on_schema_change: bool,
}

impl<'a> Context<'a> {
    /// For connection `connection` of flow `flow` (`""` for none) on sluice's cluster `own`;
    /// schema changes left to the SQL stage.
    pub fn new(connection: &'a str, own: &'a KafkaSettings, flow: &'a str) -> Context<'a> {
        Context { connection, own, flow, fail_on_schema_change: false }
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
        /// Where the writer schemas of Avro payloads are, for `format: avro`.
        registry: Option<Arc<dyn SchemaRegistry>>,
    },
}

/// A check that the service behind a connection answers and accepts the credentials. `Ok`
/// says what was checked ("logged in to database shop as sluice").
pub type HealthCheck = Pin<Box<dyn Future<Output = Result<String, ConnectorError>> + Send>>;

/// A flow's sink, and a health check of its destination built from the same settings (as
/// Vector's sinks are built): the runtime runs the check as the flow starts and warns when it
/// fails; the sink's own retries then decide what happens to the flow.
pub struct BuiltSink {
    /// The sink.
    pub sink: Box<dyn Sink>,
    /// Its destination's health check.
    pub healthcheck: HealthCheck,
}

impl BuiltSink {
    /// A sink whose destination has nothing to reach (a local file, standard output).
    pub fn local(sink: Box<dyn Sink>, what: String) -> Self {
        BuiltSink { sink, healthcheck: Box::pin(async move { Ok(what) }) }
    }
}

/// One object a connection offers, for `sluice describe`.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectColumns {
    /// Its name, as a flow's `object:` would give it.
    pub name: String,
    /// Its columns, when the service knows them.
    pub columns: Option<RowSchema>,
}

/// The options of a side a connector does not have: the registry refuses a flow that uses the
/// connector on that side before these would be parsed.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub enum Unsupported {}

/// A connector: its name, its connection type, its per-flow option types, and how to build
/// and check its sources and sinks. See `CONNECTORS.md` for a walk through writing one.
#[async_trait]
pub trait Connector: Send + Sync + 'static {
    /// The name written as a connection's `type:`.
    const NAME: &'static str;
    /// The connection: settings and credentials (as secret references), shared by flows.
    type Connection: DeserializeOwned + Send + Sync + 'static;
    /// A flow's options when the connector is its source; [`Unsupported`] if it cannot be one.
    type SourceOptions: DeserializeOwned + Send + Sync + 'static;
    /// A flow's options when the connector is its destination; [`Unsupported`] if it cannot be.
    type SinkOptions: DeserializeOwned + Send + Sync + 'static;

    /// Reaches the service and logs in, without running a flow (`sluice connections test`).
    async fn healthcheck(&self, ctx: Context<'_>, conn: &Self::Connection) -> Result<String, ConnectorError>;

    /// The row schema the source defines itself for `object`, when it does (a flow may then
    /// omit `schema:`).
    fn source_schema(&self, _object: &str, _options: &Self::SourceOptions) -> Option<RowSchema> {
        None
    }

    /// Whether [`Connector::discover_schema`] can read a flow's columns from the service: a
    /// flow of a source that cannot is refused when its config is loaded if it declares none.
    fn discovers_schema(&self, _options: &Self::SourceOptions) -> bool {
        false
    }

    /// The columns the service itself knows for a flow's `object` (a table's, a query's), read
    /// when the flow declares none: `Ok(None)` when the connector cannot tell (the flow must
    /// then declare them).
    async fn discover_schema(
        &self,
        _ctx: Context<'_>,
        _conn: &Self::Connection,
        _object: &str,
        _options: &Self::SourceOptions,
    ) -> Result<Option<RowSchema>, ConnectorError> {
        Ok(None)
    }

    /// The objects a connection offers (tables, topics, …) with their columns where known,
    /// for `sluice describe`; with `object`, only that one. `Ok(None)` when the connector
    /// cannot list them.
    async fn describe(
        &self,
        _ctx: Context<'_>,
        _conn: &Self::Connection,
        _object: Option<&str>,
    ) -> Result<Option<Vec<ObjectColumns>>, ConnectorError> {
        Ok(None)
    }

    /// How the payloads the flow's SQL reads are encoded: sluice's change envelopes, unless the
    /// source is an existing topic written by someone else.
    fn payload_format(&self, _options: &Self::SourceOptions) -> PayloadFormat {
        PayloadFormat::Debezium
    }

    /// Checks a flow's source settings as far as can be done without reaching the service or
    /// touching files: everything [`Connector::build_source`] would refuse for the settings
    /// alone. `sluice validate` runs it, so a config that validates does not fail at its start.
    fn check_source(
        &self,
        ctx: Context<'_>,
        conn: &Self::Connection,
        object: &str,
        options: &Self::SourceOptions,
    ) -> Result<(), ConnectorError> {
        self.build_source(ctx, conn, object, options, false).map(drop)
    }

    /// Builds a flow's input. `follow` is set for continuous flows: the source then waits for
    /// more instead of ending when it has read everything.
    fn build_source(
        &self,
        ctx: Context<'_>,
        conn: &Self::Connection,
        object: &str,
        options: &Self::SourceOptions,
        follow: bool,
    ) -> Result<Input, ConnectorError>;

    /// Checks a flow's destination settings without reaching the service or touching files
    /// (see [`Connector::check_source`]).
    fn check_sink(
        &self,
        ctx: Context<'_>,
        conn: &Self::Connection,
        object: &str,
        options: &Self::SinkOptions,
    ) -> Result<(), ConnectorError>;

    /// Builds a flow's sink and its destination's health check.
    async fn build_sink(
        &self,
        ctx: Context<'_>,
        conn: &Self::Connection,
        object: &str,
        options: &Self::SinkOptions,
    ) -> Result<BuiltSink, ConnectorError>;
}

/// The error for a side the registry should have refused at load time.
pub fn unsupported(connector: &str, side: &str) -> ConnectorError {
    ConnectorError::User(format!("a `{connector}` connection cannot be a {side}"))
}
