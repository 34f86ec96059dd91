//! Declarative REST connectors in the registry: each spec file a config lists under
//! `connector_specs:` becomes a connection type (see `sluice_connectors::http::spec` for the
//! spec itself). A spec's connections are parsed here, from the config tree, so a mistake in
//! one names its field and line as for any other connector; the `http` source reads its objects.

use std::any::Any;
use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::sync::Arc;

use async_trait::async_trait;
use sluice_connectors::connector::unsupported;
use sluice_connectors::http::spec::{RESERVED, RestSpec, SpecConnection, SpecSourceOptions};
use sluice_connectors::http::test_connection;
use sluice_connectors::http_source::HttpSource;
use sluice_connectors::{BuiltSink, Context, Input, ObjectColumns};
use sluice_engine::connector::PayloadFormat;
use sluice_engine::error::ConnectorError;
use sluice_engine::schema::RowSchema;

use crate::config::yaml::{self, Kind, Node};
use crate::registry::{Call, Options, Registered};

/// A spec, registered under its name.
pub(crate) struct SpecConnector {
    spec: RestSpec,
    /// The spec's name, kept for the process's life as every registered name is (a config
    /// loads its specs once).
    name: &'static str,
}

impl SpecConnector {
    pub(crate) fn new(spec: RestSpec) -> Self {
        let name = Box::leak(spec.name.clone().into_boxed_str());
        SpecConnector { spec, name }
    }

    fn conn<'a>(&self, conn: &'a dyn Any) -> Result<&'a SpecConnection, ConnectorError> {
        conn.downcast_ref().ok_or_else(|| ConnectorError::internal(self.name, "given a connection it did not parse"))
    }

    fn options<'a>(&self, options: &'a Options) -> Result<&'a SpecSourceOptions, ConnectorError> {
        options.get().ok_or_else(|| ConnectorError::internal(self.name, "given options it did not parse"))
    }
}

#[async_trait]
impl Registered for SpecConnector {
    fn name(&self) -> &'static str {
        self.name
    }

    fn roles(&self) -> (bool, bool) {
        (true, false)
    }

    fn connection(&self, node: &Node, path: &str) -> Result<Arc<dyn Any + Send + Sync>, yaml::Error> {
        let entries = match &node.kind {
            Kind::Map(entries) => entries.as_slice(),
            _ if node.is_null() => &[],
            _ => return Err(yaml::Error::at(path, node.line, "expected a mapping of the spec's parameters")),
        };
        let (mut values, mut timeout, mut allow_private) = (BTreeMap::new(), None, false);
        for (k, v) in entries {
            let key = k.as_str().unwrap_or_default();
            let at = format!("{path}.{key}");
            match key {
                "allow_private_addresses" => allow_private = yaml::from_node::<bool>(v, &at)?,
                "timeout_secs" => timeout = Some(yaml::from_node::<NonZeroU64>(v, &at)?),
                _ if self.spec.parameters.contains_key(key) => {
                    values.insert(key.to_owned(), yaml::from_node::<String>(v, &at)?);
                }
                _ => {
                    let expected: Vec<String> = self
                        .spec
                        .parameters
                        .keys()
                        .map(String::as_str)
                        .chain(RESERVED)
                        .map(|p| format!("`{p}`"))
                        .collect();
                    return Err(yaml::Error::at(
                        &at,
                        k.line,
                        format!("unknown field `{key}`, expected one of {}", expected.join(", ")),
                    ));
                }
            }
        }
        let name = path.rsplit('.').next().unwrap_or(path);
        let conn = self
            .spec
            .connection(name, &values, timeout, allow_private)
            .map_err(|e| yaml::Error::at(path, node.line, e.to_string()))?;
        Ok(Arc::new(conn))
    }

    fn source_options(&self, node: &Node, path: &str) -> Result<Options, yaml::Error> {
        Ok(Options::new(self.name, Arc::new(yaml::from_node::<SpecSourceOptions>(node, path)?)))
    }

    fn sink_options(&self, node: &Node, path: &str) -> Result<Options, yaml::Error> {
        Err(yaml::Error::at(path, node.line, unsupported(self.name, "destination").to_string()))
    }

    fn source_schema(&self, object: &str, _: &Options) -> Option<RowSchema> {
        self.spec.objects.get(object).and_then(|o| o.schema.clone())
    }

    fn payload_format(&self, _: &Options) -> PayloadFormat {
        PayloadFormat::Debezium
    }

    /// The spec's objects (its API's entities), with the columns it declares for each.
    async fn describe(
        &self,
        ctx: Context<'_>,
        _conn: &(dyn Any + Send + Sync),
        object: Option<&str>,
    ) -> Result<Option<Vec<ObjectColumns>>, ConnectorError> {
        if let Some(o) = object.filter(|o| !self.spec.objects.contains_key(*o)) {
            return Err(ConnectorError::User(format!(
                "connection `{}` ({}): no object `{o}` (objects: {})",
                ctx.connection,
                self.name,
                self.spec.objects.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(Some(
            self.spec
                .objects
                .iter()
                .filter(|(name, _)| object.is_none_or(|o| o == name.as_str()))
                .map(|(name, o)| ObjectColumns { name: name.clone(), columns: o.schema.clone() })
                .collect(),
        ))
    }

    fn check_source(&self, call: Call<'_>) -> Result<(), ConnectorError> {
        self.build_source(call, false).map(drop)
    }

    fn build_source(&self, c: Call<'_>, follow: bool) -> Result<Input, ConnectorError> {
        let o = self.spec.object(c.object)?;
        let opts = self.spec.source_options(o, self.options(c.options)?);
        let source = HttpSource::new(c.ctx.connection, &self.conn(c.conn)?.http, &o.path, opts, follow)?;
        Ok(Input::Source(Box::new(source)))
    }

    fn check_sink(&self, _: Call<'_>) -> Result<(), ConnectorError> {
        Err(unsupported(self.name, "destination"))
    }

    async fn build_sink(&self, _: Call<'_>) -> Result<BuiltSink, ConnectorError> {
        Err(unsupported(self.name, "destination"))
    }

    async fn healthcheck(&self, ctx: Context<'_>, conn: &(dyn Any + Send + Sync)) -> Result<String, ConnectorError> {
        test_connection(ctx.connection, &self.conn(conn)?.http).await
    }
}
