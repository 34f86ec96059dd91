//! `sluice cdc slots` and `sluice cdc drop-slot`: a connection's logical replication slots.

use sluice_engine::error::ConnectorError;

use crate::postgres::{PostgresConnection, classify, client_config, connect};

/// One logical replication slot, for `sluice cdc slots`.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    /// The slot's name.
    pub name: String,
    /// Its output plugin.
    pub plugin: String,
    /// Whether a session is using it now.
    pub active: bool,
    /// How far it has confirmed, as an LSN.
    pub confirmed: String,
    /// WAL bytes the server keeps for it (current position minus confirmed).
    pub lag_bytes: i64,
}

/// The logical replication slots of connection `name`'s database.
pub async fn list_slots(name: &str, conn: &PostgresConnection) -> Result<Vec<SlotInfo>, ConnectorError> {
    let client = connect(name, &client_config(name, conn)?).await?;
    let doing = format!("listing replication slots (postgres connection `{name}`)");
    let rows = client
        .query(
            "SELECT slot_name::text, plugin::text, active, coalesce(confirmed_flush_lsn::text, ''),              coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint              FROM pg_replication_slots WHERE slot_type = 'logical' AND database = current_database() ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| classify(&doing, &e))?;
    Ok(rows
        .iter()
        .map(|r| SlotInfo {
            name: r.get(0),
            plugin: r.get(1),
            active: r.get(2),
            confirmed: r.get(3),
            lag_bytes: r.get(4),
        })
        .collect())
}

/// Drops a replication slot (the server then frees the WAL it kept).
pub async fn drop_slot(name: &str, conn: &PostgresConnection, slot: &str) -> Result<(), ConnectorError> {
    let client = connect(name, &client_config(name, conn)?).await?;
    let doing = format!("dropping replication slot {slot} (postgres connection `{name}`)");
    client.query("SELECT pg_drop_replication_slot($1)", &[&slot]).await.map(drop).map_err(|e| classify(&doing, &e))
}
