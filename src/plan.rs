//! Loading a config and planning its flows' SQL: what `validate` checks and every command
//! that runs flows starts with.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use sluice_engine::connector::PayloadFormat;
use sluice_engine::kafka::KafkaSettings;
use sluice_sql::SqlStage;

use crate::config::{self, Config, ConfigError, Flow, Trigger};

pub(crate) fn print_config_errors(errors: &[ConfigError]) -> ExitCode {
    for e in errors {
        eprintln!("error: {e}");
    }
    eprintln!("{} problem{} found", errors.len(), if errors.len() == 1 { "" } else { "s" });
    ExitCode::from(2)
}

/// The payload format the SQL stage decodes for a flow's input.
pub(crate) fn input_format(flow: &Flow) -> PayloadFormat {
    match &flow.source {
        sluice_connectors::SourceOptions::Kafka(o) => o.format,
        _ => PayloadFormat::Debezium,
    }
}

/// Plans every flow's SQL; errors point at the `sql:` line.
pub(crate) async fn plan_all(
    flows: &[Flow],
    connections: Option<&std::collections::BTreeMap<String, sluice_connectors::Connection>>,
) -> (Vec<(usize, SqlStage)>, Vec<ConfigError>) {
    let mut stages = Vec::new();
    let mut errors = Vec::new();
    for (i, f) in flows.iter().enumerate() {
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
    connections: Option<&std::collections::BTreeMap<String, sluice_connectors::Connection>>,
) -> Result<SqlStage, String> {
    let stage = SqlStage::new(&f.name, &f.schema, input_format(f), &f.transform).await.map_err(|e| e.to_string())?;
    let Some(connections) = connections.filter(|_| input_format(f) == PayloadFormat::Avro) else { return Ok(stage) };
    let registry = match connections.get(&f.source_connection) {
        Some(sluice_connectors::Connection::Kafka(c)) => {
            sluice_connectors::kafka::registry(&f.source_connection, c).map_err(|e| e.to_string())?
        }
        _ => None,
    };
    match registry {
        Some(r) => Ok(stage.with_registry(r)),
        None => Err(format!(
            "flow `{}`: `format: avro` needs a `schema_registry` on connection `{}`",
            f.name, f.source_connection
        )),
    }
}

/// Loads a config and plans its SQL. On failure, prints every problem — config and SQL alike —
/// and gives the exit code.
pub(crate) async fn load_and_plan(path: &Path) -> Result<(Config, Vec<(usize, SqlStage)>), ExitCode> {
    match config::load(path) {
        Ok(cfg) => {
            let (stages, errors) = plan_all(&cfg.flows, Some(&cfg.connections)).await;
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

/// `sluice validate CONFIG`.
pub async fn validate(path: &Path) -> ExitCode {
    let (cfg, stages) = match load_and_plan(path).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    println!("{}: ok ({} connection(s), {} flow(s))", path.display(), cfg.connections.len(), cfg.flows.len());
    for (i, stage) in stages {
        use sluice_engine::connector::Transform as _;
        let f = &cfg.flows[i];
        println!(
            "\nflow {} ({}): {} -> {}\noutput schema:",
            f.name,
            match f.trigger {
                Trigger::OnDemand => "on_demand",
                Trigger::Continuous => "continuous",
                Trigger::Scheduled => "scheduled",
            },
            f.source_connection,
            f.destination_connection
        );
        for line in sluice_sql::describe_schema(&stage.output_schema()).lines() {
            println!("  {line}");
        }
    }
    ExitCode::SUCCESS
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

/// Builds a flow's sink through the connector registry.
pub(crate) async fn build_sink(
    cfg: &Config,
    flow: &Flow,
    own: &KafkaSettings,
) -> anyhow::Result<Box<dyn sluice_engine::connector::Sink>> {
    // invariant: the loader checked that the connection exists.
    let conn = cfg.connections.get(&flow.destination_connection).context("destination connection vanished")?;
    sluice_connectors::build_sink(
        &flow.destination_connection,
        conn,
        &flow.destination_object,
        &flow.destination,
        own,
        &flow.name,
    )
    .await
    .with_context(|| format!("building destination of flow `{}`", flow.name))
}
