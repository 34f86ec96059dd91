//! The `postgres` connector: pulls by query or change data capture as a source, a table as a
//! destination. The connection and its TLS live in [`super`]; each side in its own module.

use async_trait::async_trait;
use sluice_engine::error::ConnectorError;

use sluice_engine::schema::RowSchema;

use super::sink::{PostgresSink, PostgresSinkOptions};
use super::{PostgresConnection, discover, test_connection};
use crate::connector::{BuiltSink, Connector, Context, Input, ObjectColumns};
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

    fn discovers_schema(&self, _options: &QueryOptions) -> bool {
        true
    }

    async fn discover_schema(
        &self,
        ctx: Context<'_>,
        conn: &PostgresConnection,
        object: &str,
        options: &QueryOptions,
    ) -> Result<Option<RowSchema>, ConnectorError> {
        if let Some(query) = &options.query {
            let relation = format!("({})", query.trim().trim_end_matches(';'));
            return discover::relation_columns(ctx.connection, conn, &relation, "the query").await.map(Some);
        }
        // CDC may capture several tables into one flow: they must agree on their columns.
        let mut found: Option<(String, RowSchema)> = None;
        for table in object.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let what = format!("table `{table}`");
            let columns =
                discover::relation_columns(ctx.connection, conn, &discover::table_relation(table), &what).await?;
            match &found {
                Some((first, c)) if *c != columns => {
                    return Err(ConnectorError::User(format!(
                        "tables `{first}` and `{table}` have different columns; declare the flow's `schema:`"
                    )));
                }
                Some(_) => {}
                None => found = Some((table.to_owned(), columns)),
            }
        }
        Ok(found.map(|(_, c)| c))
    }

    async fn describe(
        &self,
        ctx: Context<'_>,
        conn: &PostgresConnection,
        object: Option<&str>,
    ) -> Result<Option<Vec<ObjectColumns>>, ConnectorError> {
        discover::tables(ctx.connection, conn, object).await.map(Some)
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
            Box::new(CdcSource::new(ctx.connection, conn, object, options, follow, ctx.fail_on_schema_change)?)
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
