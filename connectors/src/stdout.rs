//! `stdout`: rows as JSON lines on standard output, for trying flows out.

use std::io::Write;

use arrow_array::RecordBatch;
use async_trait::async_trait;
use serde::Deserialize;
use sluice_engine::connector::{Sink, WriteContext, Written};
use sluice_engine::error::ConnectorError;

use crate::encode;

use crate::connector::{BuiltSink, Connector, Context, Input, Unsupported};

/// The `stdout` connector: a destination only.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdoutConnector;

#[async_trait]
impl Connector for StdoutConnector {
    const NAME: &'static str = "stdout";
    type Connection = StdoutConnection;
    type SourceOptions = Unsupported;
    type SinkOptions = StdoutOptions;

    async fn healthcheck(&self, _: Context<'_>, _: &StdoutConnection) -> Result<String, ConnectorError> {
        Ok("standard output; nothing to reach".into())
    }

    fn build_source(
        &self,
        _: Context<'_>,
        _: &StdoutConnection,
        _: &str,
        o: &Unsupported,
        _: bool,
    ) -> Result<Input, ConnectorError> {
        match *o {}
    }

    fn check_sink(
        &self,
        _: Context<'_>,
        _: &StdoutConnection,
        _: &str,
        _: &StdoutOptions,
    ) -> Result<(), ConnectorError> {
        Ok(())
    }

    async fn build_sink(
        &self,
        _: Context<'_>,
        _: &StdoutConnection,
        _: &str,
        _: &StdoutOptions,
    ) -> Result<BuiltSink, ConnectorError> {
        Ok(BuiltSink::local(Box::new(StdoutSink), "standard output; nothing to reach".into()))
    }
}

/// The `stdout` connection: nothing to configure.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutConnection {}

/// Per-flow options of a `stdout` sink.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StdoutOptions {}

/// Writes rows to standard output.
pub struct StdoutSink;

#[async_trait]
impl Sink for StdoutSink {
    async fn write(&mut self, batches: &[RecordBatch], _: WriteContext<'_>) -> Result<Written, ConnectorError> {
        let mut buf = Vec::new();
        encode::json_lines(batches, &mut buf)?;
        let mut out = std::io::stdout().lock();
        out.write_all(&buf).and_then(|()| out.flush()).map_err(|e| ConnectorError::io("writing rows to stdout", e))?;
        Ok(Written::all())
    }

    fn describe(&self) -> String {
        "stdout".into()
    }
}
