//! `sluice connections test`: reach each connection's service and log in.

use std::path::Path;
use std::process::ExitCode;

use crate::cluster::{Attach, own_cluster};
use crate::config::{self};
use crate::plan::print_config_errors;
use crate::registry::Registry;

/// `sluice connections test CONFIG [NAME]`.
pub async fn connections_test(path: &Path, registry: &Registry, only: Option<&str>) -> ExitCode {
    let cfg = match config::load(path, registry) {
        Ok(c) => c,
        Err(rejected) => return print_config_errors(&rejected.errors),
    };
    let names: Vec<&String> = cfg.connections.keys().filter(|n| only.is_none_or(|o| o == n.as_str())).collect();
    if let (Some(o), true) = (only, names.is_empty()) {
        let all: Vec<&str> = cfg.connections.keys().map(String::as_str).collect();
        eprintln!("error: no connection named `{o}` (connections: {})", all.join(", "));
        return ExitCode::from(2);
    }
    // A `kafka` connection without servers means sluice's own cluster: reach it as `run` would.
    let (_broker, own) = match own_cluster(&cfg, Attach::IfRunning).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let mut failed = false;
    for name in names {
        let conn = &cfg.connections[name];
        let ctx = sluice_connectors::Context::new(name, &own, "");
        match conn.healthcheck(ctx).await {
            Ok(what) => println!("ok    {name} ({}): {what}", conn.kind()),
            Err(e) => {
                println!("FAIL  {name} ({}): {e}", conn.kind());
                failed = true;
            }
        }
    }
    if failed { ExitCode::from(1) } else { ExitCode::SUCCESS }
}
