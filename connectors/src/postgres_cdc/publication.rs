//! Which of a flow's tables the publication covers, and keeping it so.
//!
//! pgoutput sends the changes of a publication's tables and nothing else; a table the
//! publication does not cover is silent. Silence is dangerous: the source would advance the
//! slot past WAL holding the table's changes, and they could never be read again. This happens
//! when a publication existed before the flow without one of its tables, and when a table is
//! dropped and created again (which takes it out of every publication that named it). So the
//! source asks, before it starts and before every slot advance, which tables are covered and
//! under which id ([`coverage`]).
//!
//! A publication sluice created carries a comment saying so; sluice adds what such a
//! publication misses (as Debezium's `publication.autocreate.mode: filtered`). Another one is
//! the user's: a table it misses is an error naming the table and the statement that fixes it.

use sluice_engine::error::ConnectorError;

use crate::postgres::{classify, quote_ident};

/// The comment that marks a publication sluice created and may change.
pub(super) const MANAGED: &str = "managed by sluice: tables are added as flows need them";

/// A table of the flow as the catalog has it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TableState {
    /// `schema.table`, as the flow's tables are named in positions.
    pub(super) name: String,
    /// Its id now; a different id than before means it was dropped and created again.
    pub(super) oid: u32,
    /// Whether the publication covers it.
    pub(super) covered: bool,
}

/// `schema.table` for a written table name (`public` when no schema is given).
pub(super) fn qualified(table: &str) -> (String, String) {
    match table.split_once('.') {
        Some((s, t)) => (s.to_owned(), t.to_owned()),
        None => ("public".to_owned(), table.to_owned()),
    }
}

/// Each table's id and whether `publication` covers it. A table that does not exist is an
/// error: its changes cannot be captured.
pub(super) async fn coverage(
    client: &tokio_postgres::Client,
    publication: &str,
    tables: &[String],
    doing: &str,
) -> Result<Vec<TableState>, ConnectorError> {
    let mut out = Vec::with_capacity(tables.len());
    for table in tables {
        let (schema, name) = qualified(table);
        let quoted = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
        let row = client
            .query_opt(
                "SELECT c.oid::int8, \
                 EXISTS (SELECT 1 FROM pg_publication_tables p \
                         WHERE p.pubname = $1 AND p.schemaname = $2 AND p.tablename = $3) \
                 FROM pg_class c WHERE c.oid = to_regclass($4)",
                &[&publication, &schema, &name, &quoted],
            )
            .await
            .map_err(|e| classify(&format!("{doing}: checking the publication"), &e))?;
        let Some(row) = row else {
            return Err(ConnectorError::User(format!(
                "{doing}: table {schema}.{name} does not exist (was it dropped?); its changes cannot be captured: \
                 create it again, or take it out of the flow's `object`"
            )));
        };
        let oid: i64 = row.get(0);
        out.push(TableState { name: format!("{schema}.{name}"), oid: oid as u32, covered: row.get(1) });
    }
    Ok(out)
}

/// Whether sluice created `publication` (and so may add tables to it).
pub(super) async fn managed(
    client: &tokio_postgres::Client,
    publication: &str,
    doing: &str,
) -> Result<bool, ConnectorError> {
    let row = client
        .query_opt(
            "SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|e| classify(doing, &e))?;
    Ok(row.and_then(|r| r.get::<_, Option<String>>(0)).is_some_and(|c| c == MANAGED))
}

/// Creates `publication` for `tables`, marked as sluice's own.
pub(super) async fn create(
    client: &tokio_postgres::Client,
    publication: &str,
    tables: &[String],
    doing: &str,
) -> Result<(), ConnectorError> {
    let list = tables.iter().map(|t| quoted_table(t)).collect::<Vec<_>>().join(", ");
    let p = quote_ident(publication);
    client
        .batch_execute(&format!("CREATE PUBLICATION {p} FOR TABLE {list}; COMMENT ON PUBLICATION {p} IS '{MANAGED}'"))
        .await
        .map_err(|e| classify(&format!("{doing}: creating the publication"), &e))
}

/// Adds the tables `missing` to `publication` when sluice manages it; otherwise says which table
/// is missing and how to fix it.
pub(super) async fn add_missing(
    client: &tokio_postgres::Client,
    publication: &str,
    missing: &[&TableState],
    doing: &str,
) -> Result<(), ConnectorError> {
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.iter().map(|t| quoted_table(&t.name)).collect::<Vec<_>>().join(", ");
    if !managed(client, publication, doing).await? {
        let names = missing.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ");
        return Err(ConnectorError::User(format!(
            "{doing}: publication {publication} does not include table {names}, so its changes would never be read. \
             Add it (ALTER PUBLICATION {p} ADD TABLE {list}), or let sluice manage the publication \
             (COMMENT ON PUBLICATION {p} IS '{MANAGED}')",
            p = quote_ident(publication)
        )));
    }
    tracing::info!(publication, tables = %list, "adding tables to the publication");
    client
        .batch_execute(&format!("ALTER PUBLICATION {} ADD TABLE {list}", quote_ident(publication)))
        .await
        .map_err(|e| classify(&format!("{doing}: adding {list} to publication {publication}"), &e))
}

fn quoted_table(name: &str) -> String {
    let (schema, table) = qualified(name);
    format!("{}.{}", quote_ident(&schema), quote_ident(&table))
}
