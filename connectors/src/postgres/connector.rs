//! The `postgres` connector: pulls by query or change data capture as a source, a table as a
//! destination. The connection and its TLS live in [`super`]; each side in its own module.

use async_trait::async_trait;
use sluice_engine::error::ConnectorError;

use super::sink::{PostgresSink, PostgresSinkOptions};
use super::{PostgresConnection, test_connection};
use crate::connector::{BuiltSink, Connector, Context, Input};
use crate::postgres_cdc::CdcSource;
use crate::postgres_query::{PullMode, QueryOptions, QuerySource};

/// The `postgres` connector.
#[derive(Debug, Clone, Copy, Default)]
pub struct PostgresConnector;

#[async_trait]
impl Connector for PostgresConnector {
    const NAME: &'static str = "postgres";
    type Connection = PostgresConnection;
    type SourceOptions = QueryOptions;
    type SinkOptions = PostgresSinkOptions;

    async fn healthcheck(&self, ctx: Context<'_>, conn: &PostgresConnection) -> Result<String, ConnectorError> {
        test_connection(ctx.connection, conn).await
    }

    fn build_source(
        &self,
        ctx: Context<'_>,
        conn: &PostgresConnection,
        object: &str,
        options: &QueryOptions,
        follow: bool,
    ) -> Result<Input, ConnectorError> {
        options
            .check_mode()
            .map_err(|e| ConnectorError::User(format!("postgres connection `{}`: {e}", ctx.connection)))?;
        Ok(Input::Source(if options.mode == PullMode::Cdc {
            Box::new(CdcSource::new(ctx.connection, conn, object, options, follow)?)
        } else {
            Box::new(QuerySource::new(ctx.connection, conn, object, options.clone(), follow)?)
        }))
    }

    fn check_sink(
        &self,
        ctx: Context<'_>,
        conn: &PostgresConnection,
        object: &str,
        options: &PostgresSinkOptions,
    ) -> Result<(), ConnectorError> {
        PostgresSink::new(ctx.connection, conn, object, options.clone()).map(drop)
    }

    async fn build_sink(
        &self,
        ctx: Context<'_>,
        conn: &PostgresConnection,
        object: &str,
        options: &PostgresSinkOptions,
    ) -> Result<BuiltSink, ConnectorError> {
        let sink = Box::new(PostgresSink::new(ctx.connection, conn, object, options.clone())?);
        let (name, conn) = (ctx.connection.to_owned(), conn.clone());
        Ok(BuiltSink { sink, healthcheck: Box::pin(async move { test_connection(&name, &conn).await }) })
    }
}
