//! `sluice validate`: check a config without running it, and show each flow's output columns.

use std::path::Path;
use std::process::ExitCode;

use crate::plan::load_and_plan;
use crate::registry::Registry;

/// `sluice validate CONFIG`.
pub async fn validate(path: &Path, registry: &Registry) -> ExitCode {
    let (cfg, stages) = match load_and_plan(path, registry).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    println!("{}: ok ({} connection(s), {} flow(s))", path.display(), cfg.connections.len(), cfg.flows.len());
    for (i, stage) in stages {
        use sluice_engine::connector::Transform as _;
        let f = &cfg.flows[i];
        println!("\nflow {} ({}): {} -> {}", f.name, f.trigger.name(), f.source_connection, f.destination_connection);
        if f.schema_from_source.is_some() {
            println!("source columns (read from {}):", f.source_connection);
            for (column, t) in &f.schema.columns {
                println!("  {column}: {t}");
            }
        }
        println!("output schema:");
        for line in sluice_sql::describe_schema(&stage.output_schema()).lines() {
            println!("  {line}");
        }
    }
    ExitCode::SUCCESS
}
