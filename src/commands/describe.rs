//! `sluice describe CONFIG CONNECTION [OBJECT]`: what a connection offers — its tables (or
//! other objects) and their columns as sluice types, as AppFlow lists a connector's entities.
//! A flow without `schema:` gets exactly these columns for its object.

use std::path::Path;
use std::process::ExitCode;

use crate::cluster::{Attach, own_cluster};
use crate::config;
use crate::plan::print_config_errors;
use crate::registry::Registry;

/// How long listing may take.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// `sluice describe CONFIG CONNECTION [OBJECT]`.
pub async fn describe(path: &Path, registry: &Registry, name: &str, object: Option<&str>) -> ExitCode {
    let cfg = match config::load(path, registry) {
        Ok(c) => c,
        Err(rejected) => return print_config_errors(&rejected.errors),
    };
    let Some(conn) = cfg.connections.get(name) else {
        let all: Vec<&str> = cfg.connections.keys().map(String::as_str).collect();
        eprintln!("error: no connection named `{name}` (connections: {})", all.join(", "));
        return ExitCode::from(2);
    };
    // A `kafka` connection without servers means sluice's own cluster: reach it as `run` would.
    let (_broker, own) = match own_cluster(&cfg, Attach::IfRunning).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let ctx = sluice_connectors::Context::new(name, &own, "");
    let objects = match tokio::time::timeout(TIMEOUT, conn.describe(ctx, object)).await {
        Ok(Ok(Some(objects))) => objects,
        Ok(Ok(None)) => {
            eprintln!("error: a `{}` connection cannot list its objects", conn.kind());
            return ExitCode::from(2);
        }
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
        Err(_) => {
            eprintln!("error: connection `{name}` did not list its objects within {} s", TIMEOUT.as_secs());
            return ExitCode::from(1);
        }
    };
    for (i, o) in objects.iter().enumerate() {
        if i > 0 {
            println!();
        }
        match &o.columns {
            Some(columns) => {
                println!(
                    "{} ({} column{})",
                    o.name,
                    columns.columns.len(),
                    if columns.columns.len() == 1 { "" } else { "s" }
                );
                for (column, t) in &columns.columns {
                    println!("  {column}: {t}");
                }
            }
            None => println!("{}", o.name),
        }
    }
    if objects.is_empty() {
        println!("(no objects)");
    }
    ExitCode::SUCCESS
}
