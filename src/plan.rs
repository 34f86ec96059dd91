//! Loading a config and planning its flows' SQL: what `validate` checks and every command
//! that runs flows starts with.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use sluice_engine::connector::PayloadFormat;
use sluice_engine::kafka::KafkaSettings;
use sluice_sql::SqlStage;

use std::collections::BTreeMap;

use sluice_connectors::Input;

use crate::config::{self, Config, ConfigError, Flow};
use crate::registry::{Connection, Registry};

pub(crate) fn print_config_errors(errors: &[ConfigError]) -> ExitCode {
    for e in errors {
        eprintln!("error: {e}");
    }
    eprintln!("{} problem{} found", errors.len(), if errors.len() == 1 { "" } else { "s" });
    ExitCode::from(2)
}

/// Plans every flow's SQL; errors point at the `sql:` line.
pub(crate) async fn plan_all(
    flows: &[Flow],
    connections: Option<&BTreeMap<String, Connection>>,
) -> (Vec<(usize, SqlStage)>, Vec<ConfigError>) {
    let mut stages = Vec::new();
    let mut errors = Vec::new();
    for (i, f) in flows.iter().enumerate() {
        // Columns still to be read from the source (or that could not be): nothing to plan
        // against yet.
        if f.schema_from_source.is_some() && f.schema.columns.is_empty() {
            continue;
        }
        match plan_flow(f, connections).await {
            Ok(s) => stages.push((i, s)),
            Err(e) => errors.push(f.transform_at.error(e)),
        }
    }
    (stages, errors)
}

/// Plans one flow's SQL stage; Avro input gets the source connection's schema registry (when
/// the connections are known: a config with other errors is only checked for its SQL).
pub(crate) async fn plan_flow(
    f: &Flow,
    connections: Option<&BTreeMap<String, Connection>>,
) -> Result<SqlStage, String> {
    let mut stage = SqlStage::new(&f.name, &f.schema, f.input_format, &f.transform).await.map_err(|e| e.to_string())?;
    // A flow that evolves takes added columns' types from the source when it can tell.
    if let Some(conn) = connections.and_then(|c| c.get(&f.source_connection))
        && f.transform.schema_changes == sluice_sql::SchemaChanges::Evolve
        && conn.discovers_schema(&f.source)
    {
        stage = stage.with_column_source(std::sync::Arc::new(SourceColumns {
            conn: conn.clone(),
            connection: f.source_connection.clone(),
            object: f.source_object.clone(),
            options: f.source.clone(),
            flow: f.name.clone(),
        }));
    }
    let Some(connections) = connections.filter(|_| f.input_format == PayloadFormat::Avro) else { return Ok(stage) };
    let Some(conn) = connections.get(&f.source_connection) else { return Ok(stage) };
    // Building a topic input reaches nothing; it is how the connector hands over its registry.
    let own = KafkaSettings::plaintext("");
    let ctx = sluice_connectors::Context::new(&f.source_connection, &own, &f.name);
    match conn.build_source(ctx, &f.source_object, &f.source, false).map_err(|e| e.to_string())? {
        Input::Topic { registry: Some(r), .. } => Ok(stage.with_registry(r)),
        _ => Err(format!(
            "flow `{}`: `format: avro` needs a `schema_registry` on connection `{}`",
            f.name, f.source_connection
        )),
    }
}

/// A flow's source, asked for its columns again when they change under a running flow.
struct SourceColumns {
    conn: Connection,
    connection: String,
    object: String,
    options: crate::registry::Options,
    flow: String,
}

#[async_trait::async_trait]
impl sluice_sql::ColumnSource for SourceColumns {
    async fn columns(&self) -> Result<Option<sluice_engine::schema::RowSchema>, String> {
        let own = KafkaSettings::plaintext("");
        let ctx = sluice_connectors::Context::new(&self.connection, &own, &self.flow);
        match tokio::time::timeout(DISCOVERY_TIMEOUT, self.conn.discover_schema(ctx, &self.object, &self.options)).await
        {
            Ok(found) => found.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {} s", DISCOVERY_TIMEOUT.as_secs())),
        }
    }
}

/// Loads a config and plans its SQL. On failure, prints every problem — config and SQL alike —
/// and gives the exit code.
pub(crate) async fn load_and_plan(
    path: &Path,
    registry: &Registry,
) -> Result<(Config, Vec<(usize, SqlStage)>), ExitCode> {
    match config::load(path, registry) {
        Ok(mut cfg) => {
            let mut errors = discover_schemas(&mut cfg).await;
            let (stages, sql_errors) = plan_all(&cfg.flows, Some(&cfg.connections)).await;
            errors.extend(sql_errors);
            if errors.is_empty() { Ok((cfg, stages)) } else { Err(print_config_errors(&errors)) }
        }
        Err(rejected) => {
            // The flows that parsed still get their SQL checked, so one pass shows everything.
            let (_, sql_errors) = plan_all(&rejected.flows, None).await;
            let mut errors = rejected.errors;
            errors.extend(sql_errors);
            errors.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
            Err(print_config_errors(&errors))
        }
    }
}

/// How long reading a flow's columns from its source may take.
const DISCOVERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads the columns of flows that declare none from their sources' services (a postgres
/// table's or query's); a source that cannot tell, or cannot be reached, is an error at the
/// flow's `source`.
async fn discover_schemas(cfg: &mut Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let own = KafkaSettings::plaintext("");
    for f in cfg.flows.iter_mut() {
        let Some(at) = f.schema_from_source.clone() else { continue };
        // invariant: the loader checked that the connection exists.
        let Some(conn) = cfg.connections.get(&f.source_connection) else { continue };
        let ctx = sluice_connectors::Context::new(&f.source_connection, &own, &f.name);
        let found = tokio::time::timeout(DISCOVERY_TIMEOUT, conn.discover_schema(ctx, &f.source_object, &f.source));
        match found.await {
            // A topic another flow wrote may carry its `_op`, `_key`, `_ts` columns: the
            // `source` table has its own.
            Ok(Ok(Some(columns))) => {
                f.schema = sluice_engine::schema::RowSchema::new(
                    columns
                        .columns
                        .into_iter()
                        .filter(|(n, _)| !sluice_engine::names::column::HIDDEN.contains(&n.as_str()))
                        .collect(),
                )
            }
            Ok(Ok(None)) => errors.push(
                at.error(format!("missing: a `{}` source needs its columns declared as `name: type`", conn.kind())),
            ),
            Ok(Err(e)) => errors.push(at.error(format!(
                "no `schema:` given, and the columns could not be read from the source: {e}; declare them as \
                 `name: type`"
            ))),
            Err(_) => errors.push(at.error(format!(
                "no `schema:` given, and the source did not give its columns within {} s; declare them as \
                 `name: type`",
                DISCOVERY_TIMEOUT.as_secs()
            ))),
        }
    }
    errors
}

/// Checks that the config has flow `name`; otherwise says which it has, with exit code 2.
pub(crate) fn known_flow(cfg: &Config, name: &str) -> Result<(), ExitCode> {
    if cfg.flows.iter().any(|f| f.name == name) {
        return Ok(());
    }
    let names: Vec<&str> = cfg.flows.iter().map(|f| f.name.as_str()).collect();
    eprintln!("error: no flow named `{name}` (flows: {})", names.join(", "));
    Err(ExitCode::from(2))
}

/// Builds a flow's sink through its connector, and starts its destination's health check: a
/// failing check is a warning (the sink's own retries decide what happens to the flow).
pub(crate) async fn build_sink(
    cfg: &Config,
    flow: &Flow,
    own: &KafkaSettings,
) -> anyhow::Result<Box<dyn sluice_engine::connector::Sink>> {
    // invariant: the loader checked that the connection exists.
    let conn = cfg.connections.get(&flow.destination_connection).context("destination connection vanished")?;
    let ctx = sluice_connectors::Context::new(&flow.destination_connection, own, &flow.name);
    let built = conn
        .build_sink(ctx, &flow.destination_object, &flow.destination)
        .await
        .with_context(|| format!("building destination of flow `{}`", flow.name))?;
    let (name, healthcheck) = (flow.name.clone(), built.healthcheck);
    tokio::spawn(async move {
        match tokio::time::timeout(HEALTHCHECK_TIMEOUT, healthcheck).await {
            Ok(Ok(what)) => tracing::debug!(flow = %name, "destination health check: {what}"),
            Ok(Err(e)) => tracing::warn!(flow = %name, "destination health check failed: {e}"),
            Err(_) => tracing::warn!(
                flow = %name,
                "destination health check: no answer within {} s",
                HEALTHCHECK_TIMEOUT.as_secs()
            ),
        }
    });
    Ok(built.sink)
}

/// How long a destination's health check may take before it counts as failed.
const HEALTHCHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
