//! What the database knows about a flow's rows: a table's or a query's columns as sluice
//! types (a flow without `schema:` takes them when its config is loaded), and a connection's
//! tables for `sluice describe`.
//!
//! Columns are read by preparing `SELECT *` over the flow's relation — the same relation the
//! pull reads, so a query's computed columns come out as the pull will see them — and each
//! column's type is named by the server's `format_type`, which carries the type modifiers
//! (`numeric(20,4)`, `timestamp(3) with time zone`) that decide the sluice type.

use arrow_schema::TimeUnit;
use sluice_engine::error::ConnectorError;
use sluice_engine::schema::{ColumnType, MAX_DECIMAL_PRECISION, RowSchema};

use super::{PostgresConnection, classify, client_config, connect, quote_ident};
use crate::connector::ObjectColumns;

/// The scale given to a `numeric` declared without one. PostgreSQL's unconstrained numeric
/// has no fixed scale; a value with more digits after the point than this is refused with its
/// reason (never rounded), and a flow that needs more declares its `schema:`.
pub const UNCONSTRAINED_NUMERIC: ColumnType = ColumnType::Decimal { precision: 38, scale: 10 };

/// The columns of `relation` (a quoted table name, or a parenthesised query).
pub(crate) async fn relation_columns(
    name: &str,
    conn: &PostgresConnection,
    relation: &str,
    what: &str,
) -> Result<RowSchema, ConnectorError> {
    let client = connect(name, &client_config(name, conn)?).await?;
    let doing = format!("reading the columns of {what} (postgres connection `{name}`)");
    let statement = client
        .prepare(&format!("SELECT * FROM {relation} AS sluice_columns"))
        .await
        .map_err(|e| classify(&doing, &e))?;
    // Every column's type named in one round trip, in column order.
    let (oids, modifiers): (Vec<u32>, Vec<i32>) =
        statement.columns().iter().map(|c| (c.type_().oid(), c.type_modifier())).unzip();
    let written = client
        .query(
            "SELECT format_type(t, m) FROM unnest($1::oid[], $2::int4[]) WITH ORDINALITY AS c(t, m, i) ORDER BY i",
            &[&oids, &modifiers],
        )
        .await
        .map_err(|e| classify(&doing, &e))?;
    let columns: Vec<(String, ColumnType)> = statement
        .columns()
        .iter()
        .zip(&written)
        .map(|(c, row)| (c.name().to_owned(), column_type(&row.get::<_, String>(0))))
        .collect();
    if columns.is_empty() {
        return Err(ConnectorError::User(format!("{doing}: it has no columns")));
    }
    Ok(RowSchema::new(columns))
}

/// A table's relation as the pulls and CDC write it: `schema.table`, each part quoted.
pub(crate) fn table_relation(table: &str) -> String {
    table.trim().split('.').map(quote_ident).collect::<Vec<_>>().join(".")
}

/// The connection's tables and views outside the system schemas, with their columns (only
/// `object`'s when given).
pub(crate) async fn tables(
    name: &str,
    conn: &PostgresConnection,
    object: Option<&str>,
) -> Result<Vec<ObjectColumns>, ConnectorError> {
    let client = connect(name, &client_config(name, conn)?).await?;
    let doing = format!("listing the tables of postgres connection `{name}`");
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' \
               AND ($1::text IS NULL OR c.oid = to_regclass($1::text)) \
             ORDER BY n.nspname, c.relname, a.attnum",
            &[&object.map(table_relation)],
        )
        .await
        .map_err(|e| classify(&doing, &e))?;
    let mut out: Vec<ObjectColumns> = Vec::new();
    let mut columns: Vec<(String, ColumnType)> = Vec::new();
    let mut current: Option<String> = None;
    for row in rows {
        let (schema, table, column, written): (String, String, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let object = if schema == "public" { table } else { format!("{schema}.{table}") };
        if current.as_ref() != Some(&object)
            && let Some(done) = current.replace(object)
        {
            out.push(ObjectColumns { name: done, columns: Some(RowSchema::new(std::mem::take(&mut columns))) });
        }
        columns.push((column, column_type(&written)));
    }
    if let Some(done) = current {
        out.push(ObjectColumns { name: done, columns: Some(RowSchema::new(columns)) });
    }
    if let (Some(o), true) = (object, out.is_empty()) {
        return Err(ConnectorError::User(format!("{doing}: no table or view `{o}`")));
    }
    Ok(out)
}

/// The sluice type of a column whose type PostgreSQL's `format_type` writes as `written`.
/// Types without a sluice counterpart (`interval`, `inet`, enums, …) are their text.
pub fn column_type(written: &str) -> ColumnType {
    if let Some(item) = written.strip_suffix("[]") {
        return ColumnType::List(Box::new(column_type(item)));
    }
    // `timestamp(3) with time zone`: the base name, then what follows the modifier.
    let (base, modifier, rest) = match written.split_once('(') {
        Some((base, more)) => match more.split_once(')') {
            Some((m, rest)) => (base.trim(), Some(m), rest.trim()),
            None => (base.trim(), None, ""),
        },
        None => (written.trim(), None, ""),
    };
    let base_full = if rest.is_empty() { base.to_owned() } else { format!("{base} {rest}") };
    match base_full.as_str() {
        "boolean" => ColumnType::Bool,
        "smallint" | "integer" => ColumnType::Int32,
        "bigint" => ColumnType::Int64,
        "real" | "double precision" => ColumnType::Float64,
        "numeric" => numeric(modifier),
        "date" => ColumnType::Date,
        "time without time zone" | "time" => ColumnType::Time,
        "timestamp with time zone" => ColumnType::Timestamp { unit: TimeUnit::Microsecond, zone: true },
        "timestamp without time zone" | "timestamp" => {
            ColumnType::Timestamp { unit: TimeUnit::Microsecond, zone: false }
        }
        "json" | "jsonb" => ColumnType::Json,
        "uuid" => ColumnType::Uuid,
        "bytea" => ColumnType::Bytes,
        _ => ColumnType::String,
    }
}

/// `numeric(p,s)`, `numeric(p)` or `numeric`.
fn numeric(modifier: Option<&str>) -> ColumnType {
    let Some(m) = modifier else { return UNCONSTRAINED_NUMERIC };
    let (p, s) = m.split_once(',').unwrap_or((m, "0"));
    match (p.trim().parse::<u8>(), s.trim().parse::<i8>()) {
        (Ok(precision), Ok(scale)) if precision <= MAX_DECIMAL_PRECISION && (0..=precision as i8).contains(&scale) => {
            ColumnType::Decimal { precision, scale }
        }
        // Wider than any decimal (PostgreSQL allows 1000 digits), or a negative scale: text
        // keeps every digit.
        _ => ColumnType::String,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn postgres_types_map_to_sluice_types() {
        let t = |s: &str| column_type(s).to_string();
        assert_eq!(t("integer"), "int32");
        assert_eq!(t("bigint"), "int64");
        assert_eq!(t("numeric(20,4)"), "decimal(20,4)");
        assert_eq!(t("numeric(12)"), "decimal(12,0)");
        assert_eq!(t("numeric"), "decimal(38,10)");
        assert_eq!(t("numeric(1000,2)"), "string");
        assert_eq!(t("timestamp(3) with time zone"), ColumnType::parse("timestamp(us)").unwrap().to_string());
        assert_eq!(t("timestamp without time zone"), ColumnType::parse("timestamp_ntz(us)").unwrap().to_string());
        assert_eq!(t("time(6) without time zone"), "time");
        assert_eq!(t("text[]"), "list<string>");
        assert_eq!(t("character varying(20)"), "string");
        assert_eq!(t("jsonb"), "json");
        assert_eq!(t("uuid"), "uuid");
        assert_eq!(t("bytea"), "bytes");
        assert_eq!(t("interval"), "string");
    }
}
