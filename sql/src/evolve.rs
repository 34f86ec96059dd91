//! Columns added upstream while a flow runs, and the flow's policy for them
//! ([`SchemaChanges`]).
//!
//! The decoder notes row-level fields a batch's payloads have that the flow's row does not
//! declare ([`crate::precheck`]). Then, before anything of the batch is delivered:
//!
//! - `evolve`: the new columns' types are taken from the source when it can tell (a postgres
//!   table's catalog, through a [`ColumnSource`]), else inferred from the first value each
//!   has; the stage is planned again with the new columns after the declared ones, and the
//!   same batch decoded again — so the batch boundary is where the plan changes, and no record
//!   is read under the old plan once the new column is seen. `SELECT *` picks them up.
//! - `fail`: the flow stops with an error naming the columns; nothing of the batch is
//!   committed, so a restart with a new policy or schema reads it again.
//! - `ignore`: the columns are left out, as declared — said once per column in the log, so it
//!   is never silent.
//!
//! A column dropped upstream reads as null — said once, or under `fail` the flow stops; nested
//! fields a struct does not declare are left out, said once per path ([`crate::drift`] looks
//! at the first record of each batch for both). A retyped column's values that no longer fit
//! go to the DLQ with the reason; under `fail`, a CDC source, which sees the type change,
//! stops the flow at it (the connector `Context`'s `fail_on_schema_change`).

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use sluice_core::connector::{InputMessage, PayloadFormat};
use sluice_core::error::TransformError;
use sluice_core::schema::{ColumnType, RowSchema};

use crate::SqlStage;

/// What a flow does when its source's rows have columns its schema does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchemaChanges {
    /// Plan again with the new columns, at a batch boundary.
    Evolve,
    /// Stop the flow, naming the columns.
    Fail,
    /// Leave them out (said once per column in the log).
    #[default]
    Ignore,
}

impl SchemaChanges {
    /// The policy as it is written in a config.
    pub fn name(self) -> &'static str {
        match self {
            SchemaChanges::Evolve => "evolve",
            SchemaChanges::Fail => "fail",
            SchemaChanges::Ignore => "ignore",
        }
    }
}

/// Where a flow's columns can be read again while it runs (the source's service).
#[async_trait]
pub trait ColumnSource: Send + Sync {
    /// The source's columns now; `Ok(None)` when it cannot tell.
    async fn columns(&self) -> Result<Option<RowSchema>, String>;
}

impl SqlStage {
    /// Handles the undeclared columns one batch showed. Returns whether the stage was planned
    /// again (the batch is then decoded again).
    pub(crate) async fn schema_changed(
        &mut self,
        unknown: &[String],
        input: &[InputMessage<'_>],
    ) -> Result<bool, TransformError> {
        match self.spec.schema_changes {
            SchemaChanges::Ignore => {
                // Said once per column: after that, a batch showing it costs a lookup.
                for name in unknown {
                    if self.ignored.contains(name) {
                        continue;
                    }
                    tracing::warn!(
                        flow = %self.flow,
                        "column `{name}` in the source's rows is not in the flow's schema and is left out \
                         (schema_changes: ignore)"
                    );
                    self.ignored.insert(name.clone());
                }
                Ok(false)
            }
            SchemaChanges::Fail => Err(TransformError::Execute {
                flow: self.flow.clone(),
                message: format!(
                    "the source's rows have column(s) {} that the flow's schema does not (schema_changes: fail); \
                     nothing of this batch was delivered. Declare them, or set `schema_changes: evolve` or `ignore`",
                    quoted(unknown)
                ),
            }),
            SchemaChanges::Evolve => {
                let known = match &self.column_source {
                    Some(source) => source.columns().await.unwrap_or_else(|e| {
                        tracing::warn!(flow = %self.flow, "reading the source's columns again: {e}; inferring types");
                        None
                    }),
                    None => None,
                };
                let mut columns = self.columns.columns.clone();
                for name in unknown {
                    let from_source = known.as_ref().and_then(|k| k.columns.iter().find(|(n, _)| n == name));
                    let t = match from_source {
                        Some((_, t)) => t.clone(),
                        None => infer(name, input, self.format),
                    };
                    columns.push((name.clone(), t));
                }
                let schema = RowSchema::new(columns);
                let mut next = SqlStage::new(&self.flow, &schema, self.format, &self.spec).await?;
                next.registry = self.registry.take();
                next.schemas = std::mem::take(&mut self.schemas);
                next.column_source = self.column_source.take();
                let added: Vec<String> =
                    schema.columns[self.columns.columns.len()..].iter().map(|(n, t)| format!("`{n}` {t}")).collect();
                tracing::warn!(
                    flow = %self.flow,
                    "column(s) added upstream: {}; the flow's plan now reads them (schema_changes: evolve)",
                    added.join(", ")
                );
                *self = next;
                Ok(true)
            }
        }
    }

    /// Looks at the batch's first record for what the decoder would leave out without a word
    /// ([`crate::drift`]): each thing said once in the log — or, under `fail`, a column dropped
    /// upstream stops the flow before anything of the batch is delivered.
    pub(crate) fn drifted(&mut self, input: &[InputMessage<'_>]) -> Result<(), TransformError> {
        let Some(first) = input.iter().find_map(|m| m.payload) else { return Ok(()) };
        let drift = crate::drift::sample(first, &self.row_type, self.format);
        if drift.is_empty() {
            return Ok(());
        }
        if !drift.missing.is_empty() && self.spec.schema_changes == SchemaChanges::Fail {
            return Err(TransformError::Execute {
                flow: self.flow.clone(),
                message: format!(
                    "the source's rows no longer have column(s) {} of the flow's schema — dropped upstream? \
                     (schema_changes: fail); nothing of this batch was delivered. Take them out of the schema, \
                     or set `schema_changes: evolve` or `ignore` to read them as null",
                    quoted(&drift.missing)
                ),
            });
        }
        for name in &drift.missing {
            if self.ignored.insert(format!("missing {name}")) {
                tracing::warn!(
                    flow = %self.flow,
                    "column `{name}` of the flow's schema is not in the source's rows (dropped upstream?) and \
                     reads as null (schema_changes: {})",
                    self.spec.schema_changes.name()
                );
            }
        }
        for path in drift.undeclared {
            if !self.ignored.contains(&path) {
                tracing::warn!(
                    flow = %self.flow,
                    "field `{path}` in the source's rows is not in the flow's schema and is left out (nested \
                     fields are not evolved: declare it in its struct's type)"
                );
                self.ignored.insert(path);
            }
        }
        Ok(())
    }

    /// Reads columns from `source` when the flow evolves.
    pub fn with_column_source(mut self, source: Arc<dyn ColumnSource>) -> SqlStage {
        self.column_source = Some(source);
        self
    }
}

/// `a`, `b`
fn quoted(names: &[String]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

/// A new column's type from the first non-null value it has in `input` (text when it has
/// none, or the value's type cannot be inferred).
fn infer(name: &str, input: &[InputMessage<'_>], format: PayloadFormat) -> ColumnType {
    for m in input {
        let Some(v) = m.payload.and_then(|p| serde_json::from_slice::<Value>(p).ok()) else { continue };
        let row = match format {
            PayloadFormat::Debezium => v.get("after").filter(|a| a.is_object()).or_else(|| v.get("before")).cloned(),
            PayloadFormat::Json | PayloadFormat::Avro => Some(v),
        };
        let Some(value) = row.as_ref().and_then(|r| r.get(name)).filter(|v| !v.is_null()) else { continue };
        let line = serde_json::json!({ name: value }).to_string();
        if let Ok(s) = RowSchema::infer_from_json_lines(&line)
            && let Some((_, t)) = s.columns.into_iter().next()
        {
            return t;
        }
        break;
    }
    ColumnType::String
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use sluice_core::connector::Transform as _;

    use super::*;
    use crate::TransformSpec;
    use crate::nested_tests::lines;

    fn envelopes(rows: &[&str]) -> Vec<String> {
        rows.iter().map(|r| format!(r#"{{"op":"c","after":{r},"ts_ms":1}}"#)).collect()
    }

    async fn stage(policy: SchemaChanges) -> SqlStage {
        let row = RowSchema::new(vec![("id".into(), ColumnType::Int64), ("name".into(), ColumnType::String)]);
        // No query: the declared columns, projected — as `SELECT *` would, without `_op`, `_key`, `_ts`.
        let spec = TransformSpec { schema_changes: policy, ..TransformSpec::default() };
        SqlStage::new("t", &row, PayloadFormat::Debezium, &spec).await.unwrap()
    }

    async fn batch(s: &mut SqlStage, rows: &[&str]) -> Result<Vec<String>, TransformError> {
        let payloads = envelopes(rows);
        let input: Vec<InputMessage<'_>> = payloads
            .iter()
            .map(|p| InputMessage { key: None, payload: Some(p.as_bytes()), timestamp_ms: Some(1) })
            .collect();
        s.process(&input).await.map(|out| lines(&out.batches))
    }

    const BEFORE: &str = r#"{"id":1,"name":"a"}"#;
    const AFTER: [&str; 2] = [r#"{"id":2,"name":"b","amount":"1.50","tags":["x"]}"#, r#"{"id":3,"name":"c"}"#];

    #[tokio::test]
    async fn a_column_added_mid_stream_is_planned_in_under_evolve() {
        let mut s = stage(SchemaChanges::Evolve).await;
        assert_eq!(batch(&mut s, &[BEFORE]).await.unwrap(), vec![r#"{"id":1,"name":"a"}"#]);
        // The batch that shows the new columns is the first read with them.
        assert_eq!(
            batch(&mut s, &AFTER).await.unwrap(),
            vec![
                r#"{"id":2,"name":"b","amount":"1.50","tags":["x"]}"#,
                r#"{"id":3,"name":"c","amount":null,"tags":null}"#
            ]
        );
        // Inferred from the values: a decimal's text stays text without a source to ask.
        let columns: Vec<String> = s.columns.columns.iter().map(|(n, t)| format!("{n}: {t}")).collect();
        assert_eq!(columns, ["id: int64", "name: string", "amount: string", "tags: list<string>"]);
    }

    struct Catalog;

    #[async_trait]
    impl ColumnSource for Catalog {
        async fn columns(&self) -> Result<Option<RowSchema>, String> {
            Ok(Some(RowSchema::new(vec![
                ("id".into(), ColumnType::Int64),
                ("name".into(), ColumnType::String),
                ("amount".into(), ColumnType::Decimal { precision: 10, scale: 2 }),
            ])))
        }
    }

    #[tokio::test]
    async fn added_columns_take_the_sources_types_when_it_can_tell() {
        let mut s = stage(SchemaChanges::Evolve).await.with_column_source(Arc::new(Catalog));
        assert_eq!(
            batch(&mut s, &AFTER).await.unwrap()[0],
            r#"{"id":2,"name":"b","amount":1.50,"tags":["x"]}"#,
            "amount is the table's decimal(10,2); tags, unknown to it, inferred"
        );
        assert!(s.column_source.is_some(), "kept for the next change");
    }

    #[tokio::test]
    async fn under_fail_the_batch_fails_naming_the_columns() {
        let mut s = stage(SchemaChanges::Fail).await;
        batch(&mut s, &[BEFORE]).await.unwrap();
        let e = batch(&mut s, &AFTER).await.unwrap_err().to_string();
        assert!(e.contains("column(s) `amount`, `tags` that the flow's schema does not (schema_changes: fail)"), "{e}");
    }

    #[tokio::test]
    async fn a_column_dropped_upstream_stops_the_flow_under_fail_and_reads_as_null_otherwise() {
        let dropped = r#"{"id":4}"#;
        let mut s = stage(SchemaChanges::Fail).await;
        let e = batch(&mut s, &[dropped]).await.unwrap_err().to_string();
        assert!(e.contains("no longer have column(s) `name` of the flow's schema — dropped upstream?"), "{e}");
        for policy in [SchemaChanges::Ignore, SchemaChanges::Evolve] {
            let mut s = stage(policy).await;
            assert_eq!(batch(&mut s, &[dropped]).await.unwrap(), vec![r#"{"id":4,"name":null}"#]);
            batch(&mut s, &[dropped]).await.unwrap();
            assert!(s.ignored.contains("missing name") && s.ignored.len() == 1, "said once");
        }
    }

    #[tokio::test]
    async fn under_ignore_they_are_left_out_as_before() {
        let mut s = stage(SchemaChanges::Ignore).await;
        assert_eq!(batch(&mut s, &AFTER).await.unwrap(), vec![r#"{"id":2,"name":"b"}"#, r#"{"id":3,"name":"c"}"#]);
        assert_eq!(s.ignored.len(), 2, "each said once");
    }
}
