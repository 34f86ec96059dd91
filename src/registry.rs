//! The connector registry: which connectors a sluice binary knows, by name.
//!
//! [`registry()`] lists the built-in ones; a program built on sluice adds its own with
//! [`Registry::with`] and hands the result to [`Cli::with_registry`](crate::Cli::with_registry).
//! Adding a connector is its module plus one line in [`registry()`].
//!
//! Each connector is kept behind [`Registered`], the object-safe face of
//! [`Connector`](sluice_connectors::Connector): it parses the connector's own types from the
//! config tree (so errors keep their field path and line) and hands them back as
//! [`Connection`] and [`Options`], which carry the connector that parsed them and can only go
//! back to it.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use sluice_connectors::{
    BuiltSink, Connector, Context, FileConnector, GenerateConnector, HttpConnector, Input, KafkaConnector,
    ObjectColumns, PostgresConnector, S3Connector, StdoutConnector, Unsupported,
};
use sluice_engine::connector::PayloadFormat;
use sluice_engine::error::{ConnectorError, Invalid};
use sluice_engine::schema::RowSchema;

use crate::config::yaml;

/// The built-in connectors.
pub fn registry() -> Registry {
    Registry::empty()
        .with(FileConnector)
        .with(GenerateConnector)
        .with(HttpConnector)
        .with(KafkaConnector)
        .with(PostgresConnector)
        .with(S3Connector)
        .with(StdoutConnector)
}

/// Connectors by name.
#[derive(Clone, Default)]
pub struct Registry {
    connectors: Vec<Arc<dyn Registered>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Registry {
    /// No connectors.
    pub fn empty() -> Self {
        Registry::default()
    }

    /// This registry and `connector`; a connector of the same name is replaced.
    pub fn with<C: Connector>(mut self, connector: C) -> Self {
        self.connectors.retain(|c| c.name() != C::NAME);
        self.connectors.push(Arc::new(Erased(connector)));
        self.connectors.sort_by_key(|c| c.name());
        self
    }

    /// This registry and the REST connector `spec` describes (see [`crate::rest_spec`]).
    pub fn with_spec(mut self, spec: sluice_connectors::http::spec::RestSpec) -> Result<Self, Invalid> {
        spec.check()?;
        if self.get(&spec.name).is_some() {
            return Err(format!("a connector named `{}` exists already; name the spec otherwise", spec.name).into());
        }
        self.connectors.push(Arc::new(crate::rest_spec::SpecConnector::new(spec)));
        self.connectors.sort_by_key(|c| c.name());
        Ok(self)
    }

    /// The connector names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.connectors.iter().map(|c| c.name()).collect()
    }

    /// The connector called `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&Arc<dyn Registered>> {
        self.connectors.iter().find(|c| c.name() == name)
    }
}

/// A parsed connection, with the connector that parsed it.
#[derive(Clone)]
pub struct Connection {
    connector: Arc<dyn Registered>,
    settings: Arc<dyn Any + Send + Sync>,
    /// The settings as written, every secret shown as `*****`, for the management API.
    shown: Arc<serde_json::Value>,
    /// What the settings hash to, secrets included (see `yaml::fingerprint`).
    fingerprint: u64,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Settings are not shown: they hold secret references, and `Debug` output ends up in logs.
        write!(f, "Connection({})", self.kind())
    }
}

/// A flow's parsed source or destination options, with the connector that parsed them.
#[derive(Clone)]
pub struct Options {
    connector: &'static str,
    value: Arc<dyn Any + Send + Sync>,
}

impl Options {
    /// Options parsed by connector `connector`.
    pub(crate) fn new(connector: &'static str, value: Arc<dyn Any + Send + Sync>) -> Self {
        Options { connector, value }
    }

    /// The options, if they are a `T`.
    pub(crate) fn get<T: 'static>(&self) -> Option<&T> {
        self.value.downcast_ref()
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Options({})", self.connector)
    }
}

impl Connection {
    /// The connector's name.
    pub fn kind(&self) -> &'static str {
        self.connector.name()
    }

    /// The settings as written, with every secret shown as `*****`.
    pub fn shown(&self) -> &serde_json::Value {
        &self.shown
    }

    /// What the settings hash to, secrets included: two loads of a config give the same one
    /// only if the connection did not change.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The settings, if this is a connection of connector `C` (for commands that belong to one
    /// connector, such as `sluice cdc slots`).
    pub fn settings<C: Connector>(&self) -> Option<&C::Connection> {
        self.settings.downcast_ref()
    }

    /// Parses a flow's source options for this connection's connector.
    pub(crate) fn source_options(&self, node: &yaml::Node, path: &str) -> Result<Options, yaml::Error> {
        if !self.connector.roles().0 {
            return Err(yaml::Error::at(path, node.line, cannot_be(self.kind(), "source")));
        }
        self.connector.source_options(node, path)
    }

    /// Parses a flow's destination options for this connection's connector.
    pub(crate) fn sink_options(&self, node: &yaml::Node, path: &str) -> Result<Options, yaml::Error> {
        if !self.connector.roles().1 {
            return Err(yaml::Error::at(path, node.line, cannot_be(self.kind(), "destination")));
        }
        self.connector.sink_options(node, path)
    }

    /// The row schema the source defines itself for `object`, when it does.
    pub fn source_schema(&self, object: &str, options: &Options) -> Option<RowSchema> {
        self.connector.source_schema(object, options)
    }

    /// Whether the source can give a flow's columns (see [`Connector::discovers_schema`]).
    pub fn discovers_schema(&self, options: &Options) -> bool {
        self.connector.discovers_schema(options)
    }

    /// The columns the service knows for a flow's `object` (see [`Connector::discover_schema`]).
    pub async fn discover_schema(
        &self,
        ctx: Context<'_>,
        object: &str,
        options: &Options,
    ) -> Result<Option<RowSchema>, ConnectorError> {
        self.connector.discover_schema(self.call(ctx, object, options)).await
    }

    /// The connection's objects and their columns (see [`Connector::describe`]).
    pub async fn describe(
        &self,
        ctx: Context<'_>,
        object: Option<&str>,
    ) -> Result<Option<Vec<ObjectColumns>>, ConnectorError> {
        self.connector.describe(ctx, &*self.settings, object).await
    }

    /// How the payloads the flow's SQL reads are encoded.
    pub fn payload_format(&self, options: &Options) -> PayloadFormat {
        self.connector.payload_format(options)
    }

    /// Checks a flow's source settings without reaching the service (see
    /// [`Connector::check_source`]).
    pub fn check_source(&self, ctx: Context<'_>, object: &str, options: &Options) -> Result<(), ConnectorError> {
        self.connector.check_source(self.call(ctx, object, options))
    }

    /// Builds a flow's input.
    pub fn build_source(
        &self,
        ctx: Context<'_>,
        object: &str,
        options: &Options,
        follow: bool,
    ) -> Result<Input, ConnectorError> {
        self.connector.build_source(self.call(ctx, object, options), follow)
    }

    /// Checks a flow's destination settings without reaching the service.
    pub fn check_sink(&self, ctx: Context<'_>, object: &str, options: &Options) -> Result<(), ConnectorError> {
        self.connector.check_sink(self.call(ctx, object, options))
    }

    /// Builds a flow's sink and its destination's health check.
    pub async fn build_sink(
        &self,
        ctx: Context<'_>,
        object: &str,
        options: &Options,
    ) -> Result<BuiltSink, ConnectorError> {
        self.connector.build_sink(self.call(ctx, object, options)).await
    }

    fn call<'a>(&'a self, ctx: Context<'a>, object: &'a str, options: &'a Options) -> Call<'a> {
        Call { ctx, conn: &*self.settings, object, options }
    }

    /// Reaches the service and logs in (`sluice connections test`).
    pub async fn healthcheck(&self, ctx: Context<'_>) -> Result<String, ConnectorError> {
        self.connector.healthcheck(ctx, &*self.settings).await
    }
}

/// "a `stdout` connection cannot be a source".
fn cannot_be(kind: &str, side: &str) -> String {
    let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    format!("{article} `{kind}` connection cannot be a {side}")
}

/// Parses a connection of connector `kind` from `node` (its body, without `type`).
pub(crate) fn parse_connection(
    connector: &Arc<dyn Registered>,
    node: &yaml::Node,
    path: &str,
) -> Result<Connection, yaml::Error> {
    let settings = connector.connection(node, path)?;
    let mut shown = yaml::from_node::<serde_json::Value>(node, path).unwrap_or_default();
    mask(&mut shown, false);
    let fingerprint = yaml::fingerprint(node);
    Ok(Connection { connector: connector.clone(), settings, shown: Arc::new(shown), fingerprint })
}

/// Replaces every value a reference resolved to (a registered secret) with `*****`, and every
/// value under a name that says secret (`password`, `token`, `secret`, an API key), whatever it is.
fn mask(v: &mut serde_json::Value, secret: bool) {
    match v {
        serde_json::Value::Null => {}
        serde_json::Value::String(s) if secret => *s = "*****".into(),
        serde_json::Value::String(s) => {
            if let std::borrow::Cow::Owned(clean) = sluice_engine::secret::redact(s) {
                *s = clean;
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|i| mask(i, secret)),
        serde_json::Value::Object(fields) => {
            for (k, v) in fields.iter_mut() {
                let k = k.to_ascii_lowercase();
                let named =
                    ["password", "token", "secret", "authorization", "credential"].iter().any(|w| k.contains(w))
                        || k == "key"
                        || k.ends_with("api_key")
                        || k.ends_with("private_key");
                mask(v, secret || named);
            }
        }
        _ if secret => *v = serde_json::Value::from("*****"),
        _ => {}
    }
}

/// One call through the registry: the flow's context, the connection's settings, the object and
/// the options (each parsed by the connector called).
#[derive(Clone, Copy)]
pub(crate) struct Call<'a> {
    pub(crate) ctx: Context<'a>,
    pub(crate) conn: &'a (dyn Any + Send + Sync),
    pub(crate) object: &'a str,
    pub(crate) options: &'a Options,
}

/// The object-safe face of a [`Connector`]: its types parsed from and handed back as `Any`.
#[async_trait]
pub(crate) trait Registered: Send + Sync {
    fn name(&self) -> &'static str;
    /// Whether it can be a source, and a destination.
    fn roles(&self) -> (bool, bool);
    fn connection(&self, node: &yaml::Node, path: &str) -> Result<Arc<dyn Any + Send + Sync>, yaml::Error>;
    fn source_options(&self, node: &yaml::Node, path: &str) -> Result<Options, yaml::Error>;
    fn sink_options(&self, node: &yaml::Node, path: &str) -> Result<Options, yaml::Error>;
    fn source_schema(&self, object: &str, options: &Options) -> Option<RowSchema>;
    fn discovers_schema(&self, _options: &Options) -> bool {
        false
    }
    async fn discover_schema(&self, _call: Call<'_>) -> Result<Option<RowSchema>, ConnectorError> {
        Ok(None)
    }
    async fn describe(
        &self,
        _ctx: Context<'_>,
        _conn: &(dyn Any + Send + Sync),
        _object: Option<&str>,
    ) -> Result<Option<Vec<ObjectColumns>>, ConnectorError> {
        Ok(None)
    }
    fn payload_format(&self, options: &Options) -> PayloadFormat;
    fn check_source(&self, call: Call<'_>) -> Result<(), ConnectorError>;
    fn build_source(&self, call: Call<'_>, follow: bool) -> Result<Input, ConnectorError>;
    fn check_sink(&self, call: Call<'_>) -> Result<(), ConnectorError>;
    async fn build_sink(&self, call: Call<'_>) -> Result<BuiltSink, ConnectorError>;
    async fn healthcheck(&self, ctx: Context<'_>, conn: &(dyn Any + Send + Sync)) -> Result<String, ConnectorError>;
}

struct Erased<C>(C);

/// A value handed to the wrong connector: [`Connection`] and [`Options`] only go back to the
/// connector that parsed them, so this is a bug in sluice.
fn mismatch(connector: &str) -> ConnectorError {
    ConnectorError::Internal {
        context: format!("connector `{connector}`"),
        message: "given settings it did not parse".into(),
    }
}

impl<C: Connector> Erased<C> {
    fn conn<'a>(&self, conn: &'a dyn Any) -> Result<&'a C::Connection, ConnectorError> {
        conn.downcast_ref().ok_or_else(|| mismatch(C::NAME))
    }
    fn source<'a>(&self, options: &'a Options) -> Result<&'a C::SourceOptions, ConnectorError> {
        options.value.downcast_ref().ok_or_else(|| mismatch(C::NAME))
    }
    fn sink<'a>(&self, options: &'a Options) -> Result<&'a C::SinkOptions, ConnectorError> {
        options.value.downcast_ref().ok_or_else(|| mismatch(C::NAME))
    }
}

fn is_unsupported<T: 'static>() -> bool {
    std::any::TypeId::of::<T>() == std::any::TypeId::of::<Unsupported>()
}

#[async_trait]
impl<C: Connector> Registered for Erased<C> {
    fn name(&self) -> &'static str {
        C::NAME
    }

    fn roles(&self) -> (bool, bool) {
        (!is_unsupported::<C::SourceOptions>(), !is_unsupported::<C::SinkOptions>())
    }

    fn connection(&self, node: &yaml::Node, path: &str) -> Result<Arc<dyn Any + Send + Sync>, yaml::Error> {
        Ok(Arc::new(yaml::from_node::<C::Connection>(node, path)?))
    }

    fn source_options(&self, node: &yaml::Node, path: &str) -> Result<Options, yaml::Error> {
        Ok(Options { connector: C::NAME, value: Arc::new(yaml::from_node::<C::SourceOptions>(node, path)?) })
    }

    fn sink_options(&self, node: &yaml::Node, path: &str) -> Result<Options, yaml::Error> {
        Ok(Options { connector: C::NAME, value: Arc::new(yaml::from_node::<C::SinkOptions>(node, path)?) })
    }

    fn source_schema(&self, object: &str, options: &Options) -> Option<RowSchema> {
        self.source(options).ok().and_then(|o| self.0.source_schema(object, o))
    }

    fn discovers_schema(&self, options: &Options) -> bool {
        self.source(options).is_ok_and(|o| self.0.discovers_schema(o))
    }

    async fn discover_schema(&self, c: Call<'_>) -> Result<Option<RowSchema>, ConnectorError> {
        self.0.discover_schema(c.ctx, self.conn(c.conn)?, c.object, self.source(c.options)?).await
    }

    async fn describe(
        &self,
        ctx: Context<'_>,
        conn: &(dyn Any + Send + Sync),
        object: Option<&str>,
    ) -> Result<Option<Vec<ObjectColumns>>, ConnectorError> {
        self.0.describe(ctx, self.conn(conn)?, object).await
    }

    fn payload_format(&self, options: &Options) -> PayloadFormat {
        self.source(options).map_or(PayloadFormat::Debezium, |o| self.0.payload_format(o))
    }

    fn check_source(&self, c: Call<'_>) -> Result<(), ConnectorError> {
        self.0.check_source(c.ctx, self.conn(c.conn)?, c.object, self.source(c.options)?)
    }

    fn build_source(&self, c: Call<'_>, follow: bool) -> Result<Input, ConnectorError> {
        self.0.build_source(c.ctx, self.conn(c.conn)?, c.object, self.source(c.options)?, follow)
    }

    fn check_sink(&self, c: Call<'_>) -> Result<(), ConnectorError> {
        self.0.check_sink(c.ctx, self.conn(c.conn)?, c.object, self.sink(c.options)?)
    }

    async fn build_sink(&self, c: Call<'_>) -> Result<BuiltSink, ConnectorError> {
        self.0.build_sink(c.ctx, self.conn(c.conn)?, c.object, self.sink(c.options)?).await
    }

    async fn healthcheck(&self, ctx: Context<'_>, conn: &(dyn Any + Send + Sync)) -> Result<String, ConnectorError> {
        self.0.healthcheck(ctx, self.conn(conn)?).await
    }
}

#[cfg(test)]
mod mask_tests {
    #[test]
    fn secrets_are_masked_by_name_and_by_value() {
        sluice_engine::secret::register("resolved-canary-value");
        let mut v = serde_json::json!({
            "type": "http", "url": "https://x/resolved-canary-value/y", "keys": 10,
            "auth": {"type": "bearer", "token": "t0k"}, "headers": {"Authorization": "Bearer z"},
            "api_key": 42, "password": null,
        });
        super::mask(&mut v, false);
        assert_eq!(v["url"], "https://x/*****/y");
        assert_eq!((v["auth"]["token"].as_str(), v["auth"]["type"].as_str()), (Some("*****"), Some("bearer")));
        assert_eq!((v["headers"]["Authorization"].as_str(), v["api_key"].as_str()), (Some("*****"), Some("*****")));
        assert_eq!((v["keys"].as_i64(), v["password"].is_null()), (Some(10), true));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_registry_lists_every_connector_once_sorted() {
        let names = registry().names();
        for builtin in ["file", "generate", "http", "kafka", "postgres", "s3", "stdout"] {
            assert!(names.contains(&builtin), "{builtin} missing from {names:?}");
        }
        assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted, each once: {names:?}");
        assert_eq!(registry().with(StdoutConnector).names(), names, "a connector of the same name is replaced");
    }

    #[test]
    fn a_side_a_connector_lacks_is_refused_by_name() {
        let r = registry();
        let node = yaml::Node::empty_map(3);
        let out = parse_connection(r.get("stdout").expect("stdout"), &node, "connections.out").expect("parses");
        let e = out.source_options(&node, "flows[0].source.options").expect_err("not a source");
        assert_eq!(e.message, "a `stdout` connection cannot be a source");
        let g = parse_connection(r.get("generate").expect("generate"), &node, "connections.g").expect("parses");
        let e = g.sink_options(&node, "flows[0].destination.options").expect_err("not a sink");
        assert_eq!(e.message, "a `generate` connection cannot be a destination");
        assert_eq!(e.line, Some(3));
    }
}
