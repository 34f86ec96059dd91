//! `sluice cdc slots` and `sluice cdc drop-slot`: a postgres connection's replication slots.

use std::path::Path;
use std::process::ExitCode;

use sluice_connectors::PostgresConnector;

use crate::config::{self};
use crate::plan::print_config_errors;
use crate::registry::Registry;

/// `sluice cdc slots CONFIG CONNECTION`, or with `drop`, `sluice cdc drop-slot … SLOT`.
pub async fn cdc_slots(path: &Path, registry: &Registry, connection: &str, drop: Option<&str>) -> ExitCode {
    let cfg = match config::load(path, registry) {
        Ok(c) => c,
        Err(rejected) => return print_config_errors(&rejected.errors),
    };
    let Some(conn) = cfg.connections.get(connection).and_then(|c| c.settings::<PostgresConnector>()) else {
        eprintln!("error: `{connection}` is not a postgres connection of this config");
        return ExitCode::from(2);
    };
    use sluice_connectors::postgres_cdc;
    if let Some(slot) = drop {
        return match postgres_cdc::drop_slot(connection, conn, slot).await {
            Ok(()) => {
                println!("dropped replication slot {slot}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        };
    }
    match postgres_cdc::list_slots(connection, conn).await {
        Ok(slots) => {
            println!("{:<32} {:<10} {:<7} {:<14} lag", "slot", "plugin", "active", "confirmed");
            for s in slots {
                println!("{:<32} {:<10} {:<7} {:<14} {} bytes", s.name, s.plugin, s.active, s.confirmed, s.lag_bytes);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
