//! # sluice-sql
//!
//! The SQL stage, and the only crate that links DataFusion. A map:
//!
//! - [`SqlStage::new`] plans the flow's query once, against a table named `source` whose
//!   columns are the row's declared columns plus `_op` (c/u/d/r/t), `_key` (the Kafka key as
//!   JSON text) and `_ts` (the change time). A delete's columns are its `before` image (null
//!   when the source has none), so a delete passes a filter when the deleted row would have.
//! - [`SqlStage::process`] (the engine's `Transform`) decodes a batch of Kafka payloads straight
//!   into an Arrow `RecordBatch` — in one pass over each JSON payload ([`onepass`]) when the
//!   batch is plain, else through a pre-check and arrow-json ([`decode`], [`precheck`]) — runs
//!   the pre-built physical plan over it ([`step`]) and returns the output batches. Rows that
//!   do not decode are rejected with the reason and go to the DLQ; the rest of their batch
//!   carries on.
//! - [`tasks`]: AppFlow-style tasks (map, merge, mask, filter, validate, …) compiled to one
//!   `SELECT`. A flow with tasks and a `sql:` runs two plans, tasks first; rows that break a
//!   validation rule leave between them (dropped, dead-lettered with the rule's name, or failing
//!   the flow).
//! - [`functions`]: `mask()`, and the JSON functions of `datafusion-functions-json`.
//! - The sandbox ([`sandbox`], [`bounded`]): one bounded `SELECT` per flow (DDL, DML, `COPY`,
//!   `SET`, `EXPLAIN`, recursive CTEs refused when the config is checked; text size and
//!   expression depth limited), no table functions, no URL tables, no spilling to disk, a memory
//!   pool per flow (`memory_limit_mb`) that also bounds what any one function builds and what a
//!   batch's output holds, and a time limit per batch (`batch_timeout_secs`).

mod avro_decode;
mod batch_limit;
pub mod bounded;
mod decode;
#[doc(hidden)]
pub mod differential;
mod drift;
mod evolve;
pub mod functions;
#[cfg(test)]
mod nested_tests;
mod number_text;
mod onepass;
#[cfg(test)]
mod onepass_tests;
mod precheck;
pub mod sandbox;
mod step;
pub mod tasks;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use sluice_core::avro::SchemaRegistry;
use sluice_core::connector::{InputMessage, PayloadFormat, RejectedRow, Transform, Transformed};
use sluice_core::error::{Invalid, TransformError};
use sluice_core::schema::{ColumnType, RowSchema};

pub use evolve::{ColumnSource, SchemaChanges};
pub use precheck::MAX_NESTING;
pub use step::ROW_COLUMN;
use step::{Limits, RunError, Step};

/// The table name queries read from.
pub const SOURCE_TABLE: &str = "source";

/// The memory a flow's query may hold at once unless `memory_limit_mb` says otherwise.
pub const DEFAULT_MEMORY_LIMIT_BYTES: usize = 256 << 20;

/// How long a flow's query may take over one batch unless `batch_timeout_secs` says otherwise.
pub const DEFAULT_BATCH_TIMEOUT: Duration = Duration::from_secs(30);

/// What a flow's `transform:` asks for.
#[derive(Debug, Clone)]
pub struct TransformSpec {
    /// AppFlow-style tasks, run first.
    pub tasks: Vec<tasks::Task>,
    /// A `SELECT … FROM source`, over the tasks' output when there are tasks.
    pub sql: Option<String>,
    /// The most memory the query may hold (sorts, aggregates, joins), and the most any one
    /// function's result or one batch's output may take.
    pub memory_limit_bytes: usize,
    /// The longest the query may take over one batch; past it the flow fails.
    pub batch_timeout: Duration,
    /// The largest payload decoded; a larger one is rejected to the DLQ whole (the cluster's
    /// `kafka.max_record_bytes`).
    pub max_record_bytes: usize,
    /// What to do when the source's rows have columns the row does not declare.
    pub schema_changes: SchemaChanges,
}

impl Default for TransformSpec {
    fn default() -> Self {
        TransformSpec {
            tasks: Vec::new(),
            sql: None,
            memory_limit_bytes: DEFAULT_MEMORY_LIMIT_BYTES,
            batch_timeout: DEFAULT_BATCH_TIMEOUT,
            max_record_bytes: sluice_core::names::DEFAULT_MAX_RECORD_BYTES,
            schema_changes: SchemaChanges::default(),
        }
    }
}

impl TransformSpec {
    /// Just a query.
    pub fn sql(sql: &str) -> TransformSpec {
        TransformSpec { sql: Some(sql.to_owned()), ..TransformSpec::default() }
    }
}

/// A flow's planned SQL stage.
pub struct SqlStage {
    flow: String,
    format: PayloadFormat,
    /// The declared row columns.
    row: SchemaRef,
    /// What arrow-json decodes each payload into (the envelope, or the row itself).
    decode: SchemaRef,
    /// The `source` table: row columns plus `_op`, `_key`, `_ts`.
    input: SchemaRef,
    /// The tasks' query and/or the user's, in order.
    steps: Vec<Step>,
    /// The stage's output without hidden columns.
    output: SchemaRef,
    memory_limit_bytes: usize,
    /// What bounds each run of a step.
    limits: Limits,
    /// The largest payload decoded.
    max_record_bytes: usize,
    /// What payloads are checked for before arrow-json decodes them.
    precheck: precheck::Precheck,
    /// The one-pass decoder that decodes (and checks) a batch of plain payloads without
    /// arrow-json, when the row's types are all ones it builds.
    onepass: Option<onepass::OnePass>,
    /// The declared columns, for decoding Avro.
    columns: RowSchema,
    /// The declared columns as one struct type (to walk payloads against).
    row_type: ColumnType,
    /// Whether payloads take the `serde_json::Value` path (the row has `json` columns).
    json_values: bool,
    /// Whether decoded columns need [`wire::finish`] (the row has `bytes` or `uuid` columns).
    finish: bool,
    /// What the stage was planned from — its `schema_changes` policy among it — to plan it
    /// again when columns are added upstream.
    spec: TransformSpec,
    /// Where the source's columns can be read again (for `evolve`).
    column_source: Option<Arc<dyn ColumnSource>>,
    /// What was said once already: undeclared columns under `ignore`, nested fields left out,
    /// columns missing from the rows (`missing NAME`).
    ignored: std::collections::HashSet<String>,
    /// Where Avro payloads' writer schemas come from.
    registry: Option<Arc<dyn SchemaRegistry>>,
    /// Writer schemas seen, by id.
    schemas: std::collections::HashMap<u32, Arc<apache_avro::Schema>>,
    /// The JSON decoder of the last whole batch and the batch size it was built for, kept for
    /// the next: a decoder's tape buffers are as large as the batch, and building them afresh
    /// for every batch cost page faults on the hot path. (A `Mutex` only to keep the stage
    /// `Sync`; one task uses it.)
    json: std::sync::Mutex<Option<(usize, arrow_json::reader::Decoder)>>,
}

impl std::fmt::Debug for SqlStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStage").field("flow", &self.flow).finish_non_exhaustive()
    }
}

impl SqlStage {
    /// Plans the flow's tasks and/or query (with neither, a projection of the declared
    /// columns).
    pub async fn new(
        flow: &str,
        row: &RowSchema,
        format: PayloadFormat,
        spec: &TransformSpec,
    ) -> Result<SqlStage, TransformError> {
        let plan_err = |why: Invalid| TransformError::Plan { flow: flow.to_owned(), message: why.0 };
        let declared = row;
        let row = row.arrow();
        let input = step::input_schema(&row);
        let memory = spec.memory_limit_bytes.max(1 << 20);
        // One memory pool for the flow's plans, and no disk to spill to: a query that needs more
        // than the limit fails clearly instead of writing temporary files.
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(memory, 1.0)
            .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled))
            .build_arc()
            .map_err(|e| plan_err(Invalid(e.to_string())))?;
        let mut queries = Vec::new();
        if !spec.tasks.is_empty() {
            let columns: Vec<String> = row.fields().iter().map(|f| f.name().clone()).collect();
            queries.push(tasks::compile(&spec.tasks, &columns).map_err(plan_err)?);
        }
        if let Some(sql) = &spec.sql {
            sandbox::check(sql).map_err(plan_err)?;
            queries.push(sql.clone());
        }
        if queries.is_empty() {
            let cols: Vec<String> = row.fields().iter().map(|f| tasks::ident(f.name())).collect();
            queries.push(format!("SELECT {} FROM {SOURCE_TABLE}", cols.join(", ")));
        }
        let mut steps = Vec::new();
        let mut step_input = input.clone();
        for sql in &queries {
            let step = step::plan(&step_input, sql, runtime.clone(), memory).await.map_err(plan_err)?;
            let schema = step.plan.schema();
            step_input = Arc::new(Schema::new(step.keep.iter().map(|i| schema.field(*i).clone()).collect::<Vec<_>>()));
            steps.push(step);
        }
        let output = Arc::new(Schema::new(
            step_input.fields().iter().filter(|f| f.name() != ROW_COLUMN).cloned().collect::<Vec<_>>(),
        ));
        let decode = decode::decode_schema(&wire::wire_schema(declared), format);
        // Rows with `json` columns take the `serde_json::Value` path, which this decoder
        // does not replace.
        let onepass = match format {
            PayloadFormat::Avro => None,
            _ if wire::has_json(declared) => None,
            _ => onepass::OnePass::new(&decode, format == PayloadFormat::Debezium),
        };
        Ok(SqlStage {
            flow: flow.to_owned(),
            format,
            onepass,
            decode,
            row_type: ColumnType::Struct(declared.columns.clone()),
            json_values: wire::has_json(declared),
            finish: declared.columns.iter().any(|(_, t)| wire::needs_finish(t)),
            row,
            input,
            steps,
            output,
            memory_limit_bytes: memory,
            limits: Limits { output_bytes: memory, timeout: spec.batch_timeout },
            max_record_bytes: spec.max_record_bytes,
            precheck: precheck::Precheck::new(
                &ColumnType::Struct(declared.columns.clone()),
                format == PayloadFormat::Debezium,
                wire::has_json(declared),
            ),
            spec: spec.clone(),
            column_source: None,
            ignored: std::collections::HashSet::new(),
            columns: declared.clone(),
            registry: None,
            schemas: std::collections::HashMap::new(),
            json: std::sync::Mutex::new(None),
        })
    }

    /// Reads Avro payloads with writer schemas from `registry` (flows whose input is
    /// `format: avro`).
    pub fn with_registry(mut self, registry: Arc<dyn SchemaRegistry>) -> SqlStage {
        self.registry = Some(registry);
        self
    }

    /// The row columns' schema as declared.
    pub fn row_schema(&self) -> SchemaRef {
        self.row.clone()
    }
}

#[async_trait]
impl Transform for SqlStage {
    fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }

    async fn process(&mut self, input: &[InputMessage<'_>]) -> Result<Transformed, TransformError> {
        let decoding = std::time::Instant::now();
        let (batch, mut rejected) = if self.format == PayloadFormat::Avro {
            let Some(registry) = self.registry.clone() else {
                return Err(TransformError::Execute {
                    flow: self.flow.clone(),
                    message: "Avro input needs a schema registry on the source's connection".into(),
                });
            };
            let (rows, mut rejected) =
                avro_decode::decode_batch(&*registry, &mut self.schemas, &self.row_type, input, self.max_record_bytes)
                    .await
                    .map_err(|message| TransformError::Execute { flow: self.flow.clone(), message })?;
            let batch = self
                .avro_batch(rows, input, &mut rejected)
                .map_err(|message| TransformError::Execute { flow: self.flow.clone(), message })?;
            (batch, rejected)
        } else {
            let mut unknown = Vec::new();
            let mut decoded = self.decode_batch(input, &mut unknown);
            // At most one new plan per batch: the columns it adds are all the batch showed.
            if !unknown.is_empty() && self.schema_changed(&unknown, input).await? {
                decoded = self.decode_batch(input, &mut Vec::new());
            }
            self.drifted(input)?;
            decoded
        };
        let decode_time = Some(decoding.elapsed());
        let mut lineage = true;
        let mut current = batch.into_iter().collect::<Vec<_>>();
        for step in &self.steps {
            let rows: usize = current.iter().map(RecordBatch::num_rows).sum();
            if rows == 0 {
                current.clear();
                break;
            }
            let merged = match current.as_slice() {
                [one] => one.clone(),
                many => datafusion::arrow::compute::concat_batches(&many[0].schema(), many)
                    .map_err(|e| TransformError::Execute { flow: self.flow.clone(), message: e.to_string() })?,
            };
            let out = match step.run(merged.clone(), self.limits).await {
                Ok(out) => out,
                // A row-wise query that fails on some value (a cast, a function's argument):
                // find the rows it fails on, one by one, and let the rest through. Only the
                // batch with the bad row pays for this.
                Err(e) if step.lineage.is_some() && e.may_be_one_row() => {
                    self.row_by_row(step, &merged, &mut rejected).await?
                }
                Err(e) => return Err(self.run_error(e, merged.num_rows())),
            };
            lineage &= step.lineage.is_some();
            current = out
                .into_iter()
                .filter(|b| b.num_rows() > 0)
                .map(|b| step.settle(&self.flow, b, &mut rejected))
                .collect::<Result<Vec<_>, _>>()?;
        }
        rejected.sort_by_key(|r| r.index);
        let mut origins = lineage.then(Vec::new);
        let mut out = Vec::with_capacity(current.len());
        for b in current.into_iter().filter(|b| b.num_rows() > 0) {
            let Ok(i) = b.schema().index_of(ROW_COLUMN) else {
                out.push(b);
                continue;
            };
            if let (Some(o), Some(rows)) =
                (origins.as_mut(), b.column(i).as_any().downcast_ref::<arrow_array::UInt32Array>())
            {
                o.extend(rows.values().iter().map(|r| *r as usize));
            }
            let keep: Vec<usize> = (0..b.num_columns()).filter(|c| *c != i).collect();
            out.push(
                b.project(&keep)
                    .map_err(|e| TransformError::Execute { flow: self.flow.clone(), message: e.to_string() })?,
            );
        }
        Ok(Transformed { batches: out, rejected, origins, decode_time })
    }
}

impl SqlStage {
    /// Runs `step` over each row of `batch` alone; rows it fails on are rejected with the error.
    async fn row_by_row(
        &self,
        step: &Step,
        batch: &RecordBatch,
        rejected: &mut Vec<RejectedRow>,
    ) -> Result<Vec<RecordBatch>, TransformError> {
        let origins =
            batch.column_by_name(ROW_COLUMN).and_then(|c| c.as_any().downcast_ref::<arrow_array::UInt32Array>());
        let mut out = Vec::new();
        for row in 0..batch.num_rows() {
            match step.run(batch.slice(row, 1), self.limits).await {
                Ok(b) => out.extend(b),
                Err(RunError::Query(e)) => rejected.push(RejectedRow {
                    index: origins.map_or(row, |o| o.value(row) as usize),
                    reason: format!("sql: {e}"),
                }),
                Err(e) => return Err(self.run_error(e, 1)),
            }
        }
        Ok(out)
    }

    /// The flow's error for a run that failed as a whole.
    fn run_error(&self, e: RunError, rows: usize) -> TransformError {
        let mib = self.memory_limit_bytes >> 20;
        let message = match e {
            RunError::OutOfMemory(e) => format!(
                "the query needs more memory than the flow's limit of {mib} MiB (transform.memory_limit_mb): {e}"
            ),
            RunError::OutputTooLarge { bytes } => format!(
                "the query's output for one batch of {rows} records grew past {bytes} bytes, more than the flow's \
                 memory limit of {mib} MiB (transform.memory_limit_mb): does it multiply rows (a join, unnest)?"
            ),
            RunError::Timeout => format!(
                "the query took longer than {} s over one batch of {rows} records (transform.batch_timeout_secs); \
                 nothing of the batch was committed",
                self.limits.timeout.as_secs()
            ),
            RunError::Query(e) => e.to_string(),
        };
        TransformError::Execute { flow: self.flow.clone(), message }
    }
}

/// Formats a schema as `name: type` lines, for `sluice validate`.
pub fn describe_schema(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{}: {}{}", f.name(), f.data_type(), if f.is_nullable() { "" } else { " (not null)" }))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use arrow_array::Int64Array;
    use sluice_core::schema::ColumnType;

    fn schema() -> RowSchema {
        RowSchema::new(vec![
            ("id".into(), ColumnType::Int64),
            ("name".into(), ColumnType::String),
            ("amount".into(), ColumnType::Int64),
        ])
    }

    fn msg(p: &'static str) -> InputMessage<'static> {
        InputMessage { key: Some(br#"{"id":1}"#), payload: Some(p.as_bytes()), timestamp_ms: Some(5) }
    }

    #[tokio::test]
    async fn filters_and_projects_envelopes_and_rejects_bad_rows() {
        let mut s = SqlStage::new(
            "t",
            &schema(),
            PayloadFormat::Debezium,
            &TransformSpec::sql("SELECT id, upper(name) AS name, _op, _key FROM source WHERE amount > 10"),
        )
        .await
        .unwrap();
        let input = [
            msg(r#"{"before":null,"after":{"id":1,"name":"a","amount":50},"op":"c","source":{},"ts_ms":1}"#),
            msg(r#"{"before":null,"after":{"id":2,"name":"b","amount":5},"op":"c","source":{},"ts_ms":1}"#),
            msg(r#"{"after":{"id":"x","name":"c","amount":50},"op":"c","ts_ms":1}"#),
            msg(r#"{"after":{"id":4,"name":"d","amount":70},"op":"u","ts_ms":1}"#),
        ];
        for _ in 0..2 {
            let out = s.process(&input).await.unwrap();
            assert_eq!(out.rejected.len(), 1);
            assert_eq!(out.rejected[0].index, 2);
            assert!(out.rejected[0].reason.starts_with("decode:"), "{}", out.rejected[0].reason);
            let b = datafusion::arrow::compute::concat_batches(&out.batches[0].schema(), &out.batches).unwrap();
            let text = datafusion::arrow::util::pretty::pretty_format_batches(&[b]).unwrap().to_string();
            assert!(text.contains("| 1  | A    | c   | {\"id\":1} |"), "{text}");
            assert!(text.contains("| 4  | D    | u   |"), "{text}");
            assert!(!text.contains("| 2 "), "{text}");
        }
    }

    #[tokio::test]
    async fn payloads_that_are_not_utf8_are_rejected_by_name_and_the_rest_flow() {
        let mut s =
            SqlStage::new("t", &schema(), PayloadFormat::Json, &TransformSpec::sql("SELECT id, name FROM source"))
                .await
                .unwrap();
        let in_string: &[u8] = b"{\"id\":2,\"name\":\"b\xff\"}";
        let outside: &[u8] = b"{\"id\":3,\"name\":\"c\"} \xc3";
        let ok = |p: &'static [u8]| InputMessage { key: None, payload: Some(p), timestamp_ms: None };
        let input = [ok(br#"{"id":1,"name":"a"}"#), ok(in_string), ok(outside), ok(br#"{"id":4,"name":"d"}"#)];
        let out = s.process(&input).await.unwrap();
        let rejected: Vec<(usize, &str)> = out.rejected.iter().map(|r| (r.index, r.reason.as_str())).collect();
        assert_eq!(
            rejected,
            vec![(1, "decode: payload is not valid UTF-8"), (2, "decode: payload is not valid UTF-8")]
        );
        assert_eq!(out.rows(), 2);
    }

    #[tokio::test]
    async fn output_rows_trace_back_to_their_input_messages() {
        let input = [
            msg(r#"{"after":{"id":1,"name":"a","amount":50},"op":"c","ts_ms":1}"#),
            msg(r#"{"after":{"id":2,"name":"b","amount":5},"op":"c","ts_ms":1}"#),
            msg(r#"{"after":{"id":"bad"},"op":"c","ts_ms":1}"#),
            msg(r#"{"after":{"id":4,"name":"d","amount":70},"op":"u","ts_ms":1}"#),
        ];
        for sql in [
            "SELECT id, upper(name) AS n FROM source WHERE amount > 10",
            "SELECT n FROM (SELECT id, name AS n, amount FROM source) t WHERE amount > 10 ORDER BY n LIMIT 5",
            "SELECT * FROM source WHERE amount > 10",
        ] {
            let mut s = SqlStage::new("t", &schema(), PayloadFormat::Debezium, &TransformSpec::sql(sql)).await.unwrap();
            assert!(
                s.output_schema().index_of(ROW_COLUMN).is_err(),
                "{sql}: lineage column leaked into the output schema"
            );
            let out = s.process(&input).await.unwrap();
            // Rows 0 and 3 pass; row 2 was rejected; the indices are the input's, not the decoded subset's.
            assert_eq!(out.origins, Some(vec![0, 3]), "{sql}");
            assert!(out.batches.iter().all(|b| b.schema().index_of(ROW_COLUMN).is_err()), "{sql}");
            assert_eq!(out.rejected.iter().map(|r| r.index).collect::<Vec<_>>(), vec![2]);
        }
        let mut agg = SqlStage::new(
            "t",
            &schema(),
            PayloadFormat::Debezium,
            &TransformSpec::sql("SELECT count(*) AS n FROM source"),
        )
        .await
        .unwrap();
        let out = agg.process(&input).await.unwrap();
        assert_eq!(out.origins, None, "an aggregate has no per-row lineage");
        assert_eq!(out.rows(), 1);
    }

    #[tokio::test]
    async fn a_query_over_the_memory_limit_fails_clearly() {
        let spec = TransformSpec {
            sql: Some("SELECT name FROM source ORDER BY name DESC".into()),
            memory_limit_bytes: 1 << 20,
            ..TransformSpec::default()
        };
        let mut s = SqlStage::new("t", &schema(), PayloadFormat::Json, &spec).await.unwrap();
        let payloads: Vec<String> =
            (0..20_000).map(|i| format!(r#"{{"id":{i},"name":"{:0>200}","amount":1}}"#, i)).collect();
        let input: Vec<InputMessage<'_>> = payloads
            .iter()
            .map(|p| InputMessage { key: None, payload: Some(p.as_bytes()), timestamp_ms: None })
            .collect();
        let e = s.process(&input).await.unwrap_err().to_string();
        assert!(e.contains("more memory than the flow's limit of 1 MiB") && e.contains("memory_limit_mb"), "{e}");
        // The same query within its limit.
        let spec = TransformSpec { memory_limit_bytes: 64 << 20, ..spec };
        let mut s = SqlStage::new("t", &schema(), PayloadFormat::Json, &spec).await.unwrap();
        assert_eq!(s.process(&input).await.unwrap().rows(), 20_000);
    }

    #[tokio::test]
    async fn a_topic_payload_naming_a_field_twice_keeps_the_last_value_as_documented() {
        let mut s = SqlStage::new("t", &schema(), PayloadFormat::Json, &TransformSpec::sql("SELECT id FROM source"))
            .await
            .unwrap();
        let input = [InputMessage { key: None, payload: Some(br#"{"id":1,"id":2}"#), timestamp_ms: None }];
        let out = s.process(&input).await.unwrap();
        let ids = out.batches[0].column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0);
        assert_eq!(ids, 2);
    }

    #[tokio::test]
    async fn bad_columns_and_statements_fail_at_plan_time() {
        let e = SqlStage::new("t", &schema(), PayloadFormat::Json, &TransformSpec::sql("SELECT nme FROM source"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("nme"), "{e}");
        let e = SqlStage::new("t", &schema(), PayloadFormat::Json, &TransformSpec::sql("CREATE TABLE x (a int)"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("planning SQL"), "{e}");
    }
}
