//! # sluice-sql
//!
//! The SQL stage, and the only crate that links DataFusion. A map:
//!
//! - [`SqlStage::new`] plans the flow's query once, against a table named `source` whose
//!   columns are the row's declared columns plus `_op` (c/u/d/r), `_key` (the Kafka key as JSON
//!   text) and `_ts` (the change time). A delete's columns are its `before` image (null when the
//!   source has none), so a delete passes a filter when the deleted row would have.
//! - [`SqlStage::process`] (the engine's `Transform`) decodes a batch of Kafka payloads straight
//!   into an Arrow `RecordBatch` with arrow-json's decoder, runs the pre-built physical plan over
//!   it and returns the output batches. Rows that do not decode are rejected with the reason and
//!   go to the DLQ; the rest of their batch carries on.
//!
//! How "plan once, run per batch" works: the `source` table is a streaming table whose one
//! partition yields whatever batch sits in a shared slot. Each call puts the decoded batch in the
//! slot and executes the same physical plan; executing a plan only builds its streams.
//!
//! - [`tasks`]: AppFlow-style tasks (map, merge, mask, filter, validate, …) compiled to one
//!   `SELECT`. A flow with tasks and a `sql:` runs two plans, tasks first; rows that break a
//!   validation rule leave between them (dropped, dead-lettered with the rule's name, or failing
//!   the flow).
//! - [`functions`]: `mask()`, and the JSON functions of `datafusion-functions-json`.
//! - The sandbox: one `SELECT` per flow (DDL, DML, `COPY`, `SET`, `EXPLAIN` refused when the
//!   config is checked), no table functions, no URL tables, no spilling to disk, and a memory
//!   pool per flow (`memory_limit_mb`) whose excess is a clear error.

mod avro_decode;
pub mod functions;
pub mod tasks;

use std::sync::{Arc, Mutex};

use arrow_array::builder::StringBuilder;
use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray, StructArray, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::execution::TaskContext;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use sluice_engine::avro::SchemaRegistry;
use sluice_engine::connector::{InputMessage, PayloadFormat, RejectedRow, Transform, Transformed};
use sluice_engine::error::TransformError;
use sluice_engine::schema::RowSchema;

/// The table name queries read from.
pub const SOURCE_TABLE: &str = "source";

/// The largest payload the stage decodes (Kafka's default `max.message.bytes`); a larger one
/// is rejected to the DLQ whole. A record this size is almost always a mistake upstream, and
/// decoding it would hold the batch's memory hostage.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// The memory a flow's query may hold at once unless `memory_limit_mb` says otherwise.
pub const DEFAULT_MEMORY_LIMIT_BYTES: usize = 256 << 20;

/// What a flow's `transform:` asks for.
#[derive(Debug, Clone)]
pub struct TransformSpec {
    /// AppFlow-style tasks, run first.
    pub tasks: Vec<tasks::Task>,
    /// A `SELECT … FROM source`, over the tasks' output when there are tasks.
    pub sql: Option<String>,
    /// The most memory the query may hold (sorts, aggregates, joins).
    pub memory_limit_bytes: usize,
}

impl Default for TransformSpec {
    fn default() -> Self {
        TransformSpec { tasks: Vec::new(), sql: None, memory_limit_bytes: DEFAULT_MEMORY_LIMIT_BYTES }
    }
}

impl TransformSpec {
    /// Just a query.
    pub fn sql(sql: &str) -> TransformSpec {
        TransformSpec { sql: Some(sql.to_owned()), ..TransformSpec::default() }
    }
}

/// One planned query: its input slot, its physical plan and where its hidden columns sit.
struct Step {
    slot: Arc<Mutex<Option<RecordBatch>>>,
    plan: Arc<dyn ExecutionPlan>,
    task_ctx: Arc<TaskContext>,
    /// The lineage column's index in the plan's output, when the plan kept it.
    lineage: Option<usize>,
    /// The `dlq` rules' column.
    violation: Option<usize>,
    /// The `fail` rules' column.
    failure: Option<usize>,
    /// The columns passed on (to the next step, or out): all but the rule columns.
    keep: Vec<usize>,
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
    /// The declared columns, for decoding Avro.
    columns: RowSchema,
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

/// The `source` partition: yields the batch in the slot, once per execution.
#[derive(Debug)]
struct CurrentBatch {
    schema: SchemaRef,
    slot: Arc<Mutex<Option<RecordBatch>>>,
}

impl PartitionStream for CurrentBatch {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let batch = self.slot.lock().map(|mut s| s.take()).unwrap_or(None);
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), futures::stream::iter(batch.map(Ok))))
    }
}

/// The hidden column that carries each row's index in its input batch through the plan, so an
/// output row can be traced back to the Kafka message it came from (for dead-lettering a row
/// the destination refused). Stripped from every output.
pub const ROW_COLUMN: &str = "__sluice_row";

fn input_schema(row: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = row.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("_op", DataType::Utf8, false));
    fields.push(Field::new("_key", DataType::Utf8, true));
    fields.push(Field::new("_ts", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), true));
    fields.push(Field::new(ROW_COLUMN, DataType::UInt32, false));
    Arc::new(Schema::new(fields))
}

/// Carries [`ROW_COLUMN`] through every projection of a row-wise plan (filters, aliases,
/// sorts and limits keep it by themselves). Plans that merge rows (aggregates, joins, unions)
/// lose it, and then the stage simply has no lineage.
fn with_lineage(
    plan: datafusion::logical_expr::LogicalPlan,
) -> datafusion::error::Result<datafusion::logical_expr::LogicalPlan> {
    use datafusion::common::tree_node::{Transformed as T, TreeNode};
    use datafusion::logical_expr::{LogicalPlan, Projection};
    plan.transform_up(|node| {
        // Nodes that cache a schema (aliases) are rebuilt around their new children as they
        // were, so refresh it before looking at what flows up.
        let node = node.recompute_schema()?;
        let LogicalPlan::Projection(p) = &node else { return Ok(T::yes(node)) };
        let has = |schema: &datafusion::common::DFSchema| schema.fields().iter().any(|f| f.name() == ROW_COLUMN);
        if !has(p.input.schema()) || has(&p.schema) {
            return Ok(T::yes(node));
        }
        let (qualifier, _) = p
            .input
            .schema()
            .iter()
            .find(|(_, f)| f.name() == ROW_COLUMN)
            .ok_or_else(|| datafusion::error::DataFusionError::Internal("lineage column vanished".into()))?;
        let column = datafusion::common::Column::new(qualifier.cloned(), ROW_COLUMN);
        let mut exprs = p.expr.clone();
        exprs.push(datafusion::logical_expr::Expr::Column(column));
        Ok(T::yes(LogicalPlan::Projection(Projection::try_new(exprs, p.input.clone())?)))
    })
    .map(|t| t.data)
}

/// Refuses anything but one query, before DataFusion plans it.
fn check_sandbox(sql: &str) -> Result<(), String> {
    use datafusion::sql::parser::{DFParser, Statement as Df};
    use datafusion::sql::sqlparser::ast::Statement;
    let statements = DFParser::parse_sql(sql).map_err(|e| e.to_string())?;
    let [statement] = Vec::from(statements)
        .try_into()
        .map_err(|all: Vec<Df>| format!("a flow runs exactly one SELECT statement; this has {}", all.len()))?;
    let what = match &statement {
        Df::Statement(s) if matches!(**s, Statement::Query(_)) => return Ok(()),
        Df::Statement(s) => {
            let text = s.to_string();
            let words: Vec<&str> = text.split_whitespace().take(2).collect();
            match words.as_slice() {
                [w @ ("CREATE" | "DROP" | "ALTER"), second, ..] => format!("{w} {second}"),
                [w, ..] => (*w).to_owned(),
                [] => "an empty statement".into(),
            }
        }
        Df::CreateExternalTable(_) => "CREATE EXTERNAL TABLE".into(),
        Df::CopyTo(_) => "COPY".into(),
        Df::Explain(_) => "EXPLAIN".into(),
        Df::Reset(_) => "RESET".into(),
    };
    Err(format!("only a SELECT query is allowed in a flow, not {what}"))
}

/// Plans one query over a `source` table of `input`'s columns.
async fn plan_step(input: &SchemaRef, sql: &str, runtime: Arc<RuntimeEnv>) -> Result<Step, String> {
    let slot = Arc::new(Mutex::new(None));
    // One partition: batches stay in order and each input batch maps to one execution.
    let config = SessionConfig::new().with_target_partitions(1).with_batch_size(8192);
    let mut ctx = SessionContext::new_with_config_rt(config, runtime);
    // No table functions (generate_series could fill the memory; none may read files).
    let udtfs: Vec<String> = ctx.state().table_functions().keys().cloned().collect();
    for name in udtfs {
        ctx.deregister_udtf(&name);
    }
    for f in functions::all() {
        ctx.register_udf(f);
    }
    datafusion_functions_json::register_all(&mut ctx).map_err(|e| e.to_string())?;
    let table = StreamingTable::try_new(
        input.clone(),
        vec![Arc::new(CurrentBatch { schema: input.clone(), slot: slot.clone() })],
    )
    .map_err(|e| e.to_string())?
    .with_infinite_table(false);
    ctx.register_table(SOURCE_TABLE, Arc::new(table)).map_err(|e| e.to_string())?;
    let opts = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
    let df = ctx.sql_with_options(sql, opts).await.map_err(|e| e.to_string())?;
    let logical = with_lineage(df.logical_plan().clone()).map_err(|e| e.to_string())?;
    let plan = ctx.state().create_physical_plan(&logical).await.map_err(|e| e.to_string())?;
    let schema = plan.schema();
    let violation = schema.index_of(tasks::VIOLATION_COLUMN).ok();
    let failure = schema.index_of(tasks::FAILURE_COLUMN).ok();
    let keep = (0..schema.fields().len()).filter(|i| Some(*i) != violation && Some(*i) != failure).collect();
    Ok(Step {
        slot,
        lineage: schema.index_of(ROW_COLUMN).ok(),
        plan,
        task_ctx: ctx.task_ctx(),
        violation,
        failure,
        keep,
    })
}

impl Step {
    /// Runs the plan over one batch.
    async fn run(&self, batch: RecordBatch) -> datafusion::error::Result<Vec<RecordBatch>> {
        if let Ok(mut slot) = self.slot.lock() {
            *slot = Some(batch);
        }
        datafusion::physical_plan::collect(self.plan.clone(), self.task_ctx.clone()).await
    }

    /// Applies the validation columns: a `fail` rule broken stops here; rows that broke a `dlq`
    /// rule become rejections (traced to their input message) and leave the batch. The rule
    /// columns are dropped.
    fn settle(
        &self,
        flow: &str,
        b: RecordBatch,
        rejected: &mut Vec<RejectedRow>,
    ) -> Result<RecordBatch, TransformError> {
        let origin = |row: usize| -> usize {
            self.lineage
                .and_then(|i| b.column(i).as_any().downcast_ref::<arrow_array::UInt32Array>())
                .map_or(row, |o| o.value(row) as usize)
        };
        if let Some(f) = self.failure.and_then(|i| b.column(i).as_any().downcast_ref::<StringArray>())
            && let Some(row) = (0..f.len()).find(|r| f.is_valid(*r))
        {
            return Err(TransformError::Validation {
                flow: flow.to_owned(),
                rule: f.value(row).to_owned(),
                index: origin(row),
            });
        }
        let execute = |e: datafusion::arrow::error::ArrowError| TransformError::Execute {
            flow: flow.to_owned(),
            message: e.to_string(),
        };
        let violation = self
            .violation
            .and_then(|i| b.column(i).as_any().downcast_ref::<StringArray>())
            .filter(|v| v.null_count() < v.len());
        let Some(v) = violation else { return b.project(&self.keep).map_err(execute) };
        for row in (0..v.len()).filter(|r| v.is_valid(*r)) {
            rejected
                .push(RejectedRow { index: origin(row), reason: format!("validate: rule `{}` failed", v.value(row)) });
        }
        let keep = datafusion::arrow::compute::is_null(v).map_err(execute)?;
        datafusion::arrow::compute::filter_record_batch(&b, &keep)
            .map_err(execute)?
            .project(&self.keep)
            .map_err(execute)
    }
}

fn decode_schema(row: &SchemaRef, format: PayloadFormat) -> SchemaRef {
    match format {
        PayloadFormat::Json | PayloadFormat::Avro => row.clone(),
        PayloadFormat::Debezium => Arc::new(Schema::new(vec![
            Field::new("op", DataType::Utf8, true),
            Field::new("ts_ms", DataType::Int64, true),
            Field::new("after", DataType::Struct(row.fields().clone()), true),
            Field::new("before", DataType::Struct(row.fields().clone()), true),
        ])),
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
        let plan_err = |message: String| TransformError::Plan { flow: flow.to_owned(), message };
        let declared = row;
        let row = row.arrow();
        let input = input_schema(&row);
        // One memory pool for the flow's plans, and no disk to spill to: a query that needs more
        // than the limit fails clearly instead of writing temporary files.
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(spec.memory_limit_bytes.max(1 << 20), 1.0)
            .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled))
            .build_arc()
            .map_err(|e| plan_err(e.to_string()))?;
        let mut queries = Vec::new();
        if !spec.tasks.is_empty() {
            let columns: Vec<String> = row.fields().iter().map(|f| f.name().clone()).collect();
            queries.push(tasks::compile(&spec.tasks, &columns).map_err(plan_err)?);
        }
        if let Some(sql) = &spec.sql {
            check_sandbox(sql).map_err(plan_err)?;
            queries.push(sql.clone());
        }
        if queries.is_empty() {
            let cols: Vec<String> = row.fields().iter().map(|f| tasks::ident(f.name())).collect();
            queries.push(format!("SELECT {} FROM {SOURCE_TABLE}", cols.join(", ")));
        }
        let mut steps = Vec::new();
        let mut step_input = input.clone();
        for sql in &queries {
            let step = plan_step(&step_input, sql, runtime.clone()).await.map_err(plan_err)?;
            let schema = step.plan.schema();
            step_input = Arc::new(Schema::new(step.keep.iter().map(|i| schema.field(*i).clone()).collect::<Vec<_>>()));
            steps.push(step);
        }
        let output = Arc::new(Schema::new(
            step_input.fields().iter().filter(|f| f.name() != ROW_COLUMN).cloned().collect::<Vec<_>>(),
        ));
        Ok(SqlStage {
            flow: flow.to_owned(),
            format,
            decode: decode_schema(&row, format),
            row,
            input,
            steps,
            output,
            memory_limit_bytes: spec.memory_limit_bytes,
            columns: declared.clone(),
            registry: None,
            schemas: std::collections::HashMap::new(),
            json: std::sync::Mutex::new(None),
        })
    }

    /// Decodes payloads into one batch of the decode schema; `Err` if any payload is bad.
    fn decode_all(&self, payloads: &[&[u8]]) -> Result<RecordBatch, String> {
        let kept = self.json.lock().ok().and_then(|mut k| k.take()).filter(|(size, _)| *size >= payloads.len());
        let (size, mut d) = match kept {
            Some(k) => k,
            None => {
                let size = payloads.len().max(1);
                let d = arrow_json::ReaderBuilder::new(self.decode.clone())
                    .with_batch_size(size)
                    .build_decoder()
                    .map_err(|e| e.to_string())?;
                (size, d)
            }
        };
        // On an error the decoder is dropped, not kept: it may hold half a row.
        for p in payloads {
            let mut rest: &[u8] = p;
            while !rest.is_empty() {
                let n = d.decode(rest).map_err(|e| e.to_string())?;
                if n == 0 {
                    // The decoder holds a full batch: the payloads hold more values than
                    // there are messages.
                    return Err(format!("expected one JSON object per message, found more than {}", payloads.len()));
                }
                rest = &rest[n..];
            }
        }
        let batch =
            d.flush().map_err(|e| e.to_string())?.unwrap_or_else(|| RecordBatch::new_empty(self.decode.clone()));
        // Flushed, the decoder is empty again (a payload that was not whole would have left a
        // partial row, which `flush` refuses).
        if let Ok(mut k) = self.json.lock() {
            *k = Some((size, d));
        }
        // A payload that is not one whole JSON value can merge with its neighbour; the row count
        // catches that, and the row-by-row path then finds the culprit.
        if batch.num_rows() != payloads.len() {
            return Err(format!(
                "expected one JSON object per message, decoded {} from {}",
                batch.num_rows(),
                payloads.len()
            ));
        }
        Ok(batch)
    }

    /// Builds the `source` batch from decoded payloads and the messages' keys and timestamps.
    fn input_batch(
        &self,
        decoded: &RecordBatch,
        msgs: &[&InputMessage<'_>],
        indices: &[u32],
    ) -> Result<RecordBatch, String> {
        let n = msgs.len();
        let (mut columns, op, ts): (Vec<ArrayRef>, ArrayRef, ArrayRef) = match self.format {
            PayloadFormat::Json | PayloadFormat::Avro => {
                let ts: TimestampMillisecondArray = msgs.iter().map(|m| m.timestamp_ms).collect();
                (
                    decoded.columns().to_vec(),
                    Arc::new(StringArray::from(vec!["c"; n])),
                    Arc::new(ts.with_timezone("UTC")),
                )
            }
            PayloadFormat::Debezium => {
                let after = decoded
                    .column(2)
                    .as_any()
                    .downcast_ref::<StructArray>()
                    .ok_or("envelope `after` is not a struct")?;
                let op = decoded.column(0).clone();
                if op.null_count() > 0 {
                    return Err("envelope has no `op`".into());
                }
                let ts_ms = decoded
                    .column(1)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .ok_or("envelope `ts_ms` is not an integer")?;
                let ts =
                    TimestampMillisecondArray::new(ts_ms.values().clone(), ts_ms.nulls().cloned()).with_timezone("UTC");
                let before = decoded
                    .column(3)
                    .as_any()
                    .downcast_ref::<StructArray>()
                    .ok_or("envelope `before` is not a struct")?;
                // A delete has no `after`: its columns are the `before` image when the
                // envelope has one (so a delete keeps its key columns, and a filter sees the
                // row that was deleted), null otherwise — never the struct's placeholders.
                let cols = if after.null_count() == 0 {
                    after.columns().to_vec()
                } else if before.null_count() == before.len() {
                    after.columns().iter().map(|c| merge_nulls(c, after.nulls())).collect::<Result<Vec<_>, _>>()?
                } else {
                    let has_after = arrow_array::BooleanArray::from(
                        (0..after.len()).map(|i| after.is_valid(i)).collect::<Vec<bool>>(),
                    );
                    after
                        .columns()
                        .iter()
                        .zip(before.columns())
                        .map(|(a, b)| {
                            let b = merge_nulls(b, before.nulls())?;
                            datafusion::arrow::compute::kernels::zip::zip(&has_after, a, &b).map_err(|e| e.to_string())
                        })
                        .collect::<Result<Vec<_>, _>>()?
                };
                (cols, op, Arc::new(ts))
            }
        };
        columns.push(op);
        columns.push(Arc::new(key_column(msgs)));
        columns.push(ts);
        columns.push(Arc::new(arrow_array::UInt32Array::from(indices.to_vec())));
        RecordBatch::try_new(self.input.clone(), columns).map_err(|e| e.to_string())
    }

    /// Decodes what it can; returns the good rows' batch and the rejected rows.
    fn decode_batch(&self, input: &[InputMessage<'_>]) -> (Option<RecordBatch>, Vec<RejectedRow>) {
        let mut rejected = Vec::new();
        let mut good: Vec<&InputMessage<'_>> = Vec::with_capacity(input.len());
        let mut indices: Vec<u32> = Vec::with_capacity(input.len());
        let mut payloads: Vec<&[u8]> = Vec::with_capacity(input.len());
        for (index, m) in input.iter().enumerate() {
            match m.payload {
                Some(p) if p.len() > MAX_RECORD_BYTES => rejected.push(RejectedRow {
                    index,
                    reason: format!("decode: record of {} bytes is over the {MAX_RECORD_BYTES}-byte limit", p.len()),
                }),
                Some(p) if nesting_exceeds(p, MAX_NESTING) => rejected.push(RejectedRow {
                    index,
                    reason: format!("decode: JSON nested deeper than {MAX_NESTING} levels"),
                }),
                // No UTF-8 check here: the decoder validates every string it reads, so a bad
                // payload fails the batch and the row-by-row path below names it.
                Some(p) => {
                    good.push(m);
                    indices.push(index as u32);
                    payloads.push(p);
                }
                None => rejected.push(RejectedRow { index, reason: "decode: message has no payload".into() }),
            }
        }
        let whole = self.decode_all(&payloads).and_then(|d| self.input_batch(&d, &good, &indices));
        if let Ok(b) = whole {
            return (Some(b), rejected);
        }
        // Slow path, only for a batch holding a bad row: decode rows one by one.
        let mut batches = Vec::new();
        for (index, m) in input.iter().enumerate() {
            let Some(p) = m.payload else { continue };
            if p.len() > MAX_RECORD_BYTES || nesting_exceeds(p, MAX_NESTING) {
                continue;
            }
            if std::str::from_utf8(p).is_err() {
                rejected.push(RejectedRow { index, reason: "decode: payload is not valid UTF-8".into() });
                continue;
            }
            match self.decode_all(&[p]).and_then(|d| self.input_batch(&d, &[m], &[index as u32])) {
                Ok(b) => batches.push(b),
                Err(reason) => rejected.push(RejectedRow { index, reason: format!("decode: {reason}") }),
            }
        }
        rejected.sort_by_key(|r| r.index);
        let merged = arrow_select_concat(&self.input, &batches);
        (merged, rejected)
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

/// The deepest JSON nesting a payload may have (serde_json's own limit). Deeper input is
/// almost certainly hostile; it is rejected before any decoder walks it.
pub const MAX_NESTING: usize = 128;

/// Whether `json` nests objects and arrays more than `max` levels deep.
///
/// Cheap on ordinary records: a payload with no more than `max` opening brackets in all cannot
/// nest deeper, and counting bytes is a vectorised loop; only payloads with many brackets get
/// the exact scan, which skips brackets inside strings.
fn nesting_exceeds(json: &[u8], max: usize) -> bool {
    if json.iter().filter(|b| **b == b'{' || **b == b'[').count() <= max {
        return false;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// The `_key` column: each message's key as text, null where there is none or it is not UTF-8.
///
/// Keys are short; checking each alone costs a call per key. Laid end to end they are checked
/// in one pass (with each boundary on a character boundary, as arrow's own constructor checks);
/// only a batch with a key that is not UTF-8 goes key by key.
fn key_column(msgs: &[&InputMessage<'_>]) -> StringArray {
    let mut values = Vec::with_capacity(msgs.iter().map(|m| m.key.map_or(0, <[u8]>::len)).sum());
    let mut offsets = Vec::with_capacity(msgs.len() + 1);
    offsets.push(0i32);
    let mut present = arrow_buffer::BooleanBufferBuilder::new(msgs.len());
    for m in msgs {
        values.extend_from_slice(m.key.unwrap_or_default());
        present.append(m.key.is_some());
        let Ok(end) = i32::try_from(values.len()) else { return key_column_one_by_one(msgs) };
        offsets.push(end);
    }
    let nulls = arrow_buffer::NullBuffer::new(present.finish());
    let offsets = arrow_buffer::OffsetBuffer::new(offsets.into());
    StringArray::try_new(offsets, values.into(), Some(nulls)).unwrap_or_else(|_| key_column_one_by_one(msgs))
}

fn key_column_one_by_one(msgs: &[&InputMessage<'_>]) -> StringArray {
    let mut keys = StringBuilder::with_capacity(msgs.len(), msgs.len() * 16);
    for m in msgs {
        keys.append_option(m.key.and_then(|k| std::str::from_utf8(k).ok()));
    }
    keys.finish()
}

fn merge_nulls(col: &ArrayRef, parent: Option<&arrow_buffer::NullBuffer>) -> Result<ArrayRef, String> {
    let Some(parent) = parent else { return Ok(col.clone()) };
    let merged = arrow_buffer::NullBuffer::union(Some(parent), col.nulls());
    let data = col.to_data().into_builder().nulls(merged).build().map_err(|e| e.to_string())?;
    Ok(arrow_array::make_array(data))
}

fn arrow_select_concat(schema: &SchemaRef, batches: &[RecordBatch]) -> Option<RecordBatch> {
    if batches.is_empty() {
        return None;
    }
    datafusion::arrow::compute::concat_batches(schema, batches).ok()
}

#[async_trait]
impl Transform for SqlStage {
    fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }

    async fn process(&mut self, input: &[InputMessage<'_>]) -> Result<Transformed, TransformError> {
        let (batch, mut rejected) = if self.format == PayloadFormat::Avro {
            let Some(registry) = self.registry.clone() else {
                return Err(TransformError::Execute {
                    flow: self.flow.clone(),
                    message: "Avro input needs a schema registry on the source's connection".into(),
                });
            };
            avro_decode::decode_batch(
                &*registry,
                &mut self.schemas,
                &self.columns,
                &self.input,
                input,
                MAX_RECORD_BYTES,
            )
            .await
            .map_err(|message| TransformError::Execute { flow: self.flow.clone(), message })?
        } else {
            self.decode_batch(input)
        };
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
            let out = match step.run(merged.clone()).await {
                Ok(out) => out,
                // A row-wise query that fails on some value (a cast, a function's argument):
                // find the rows it fails on, one by one, and let the rest through. Only the
                // batch with the bad row pays for this.
                Err(e) if step.lineage.is_some() && !e.to_string().contains("Resources exhausted") => {
                    self.row_by_row(step, &merged, &mut rejected).await?
                }
                Err(e) => return Err(self.execute_error(e)),
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
        Ok(Transformed { batches: out, rejected, origins })
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
            match step.run(batch.slice(row, 1)).await {
                Ok(b) => out.extend(b),
                Err(e) if e.to_string().contains("Resources exhausted") => return Err(self.execute_error(e)),
                Err(e) => rejected.push(RejectedRow {
                    index: origins.map_or(row, |o| o.value(row) as usize),
                    reason: format!("sql: {e}"),
                }),
            }
        }
        Ok(out)
    }

    fn execute_error(&self, e: datafusion::error::DataFusionError) -> TransformError {
        let text = e.to_string();
        let message = if text.contains("Resources exhausted") {
            format!(
                "the query needs more memory than the flow's limit of {} MiB (transform.memory_limit_mb): {text}",
                self.memory_limit_bytes >> 20
            )
        } else {
            text
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
    use sluice_engine::schema::ColumnType;

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

    #[test]
    fn keys_are_text_or_null() {
        let m = |k: Option<&'static [u8]>| InputMessage { key: k, payload: None, timestamp_ms: None };
        let good = [m(Some(b"a")), m(None), m(Some("é".as_bytes())), m(Some(b""))];
        let refs: Vec<&InputMessage<'_>> = good.iter().collect();
        let k = key_column(&refs);
        assert_eq!(k.iter().collect::<Vec<_>>(), vec![Some("a"), None, Some("é"), Some("")]);
        // Two halves of one character in neighbouring keys: valid laid end to end, not alone.
        let split = [m(Some(&[0xc3])), m(Some(&[0xa9])), m(Some(b"b"))];
        let refs: Vec<&InputMessage<'_>> = split.iter().collect();
        assert_eq!(key_column(&refs).iter().collect::<Vec<_>>(), vec![None, None, Some("b")]);
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

    #[test]
    fn nesting_is_measured_outside_strings() {
        assert!(!nesting_exceeds(br#"{"a":[1,{"b":2}]}"#, 3));
        assert!(nesting_exceeds(br#"{"a":[1,{"b":[2]}]}"#, 3));
        let quoted = format!(r#"{{"s":"{}"}}"#, "[".repeat(500));
        assert!(!nesting_exceeds(quoted.as_bytes(), 3), "brackets inside a string do not nest");
        let escaped = format!(r#"{{"s":"\"{}"}}"#, "[".repeat(500));
        assert!(!nesting_exceeds(escaped.as_bytes(), 3), "an escaped quote does not end the string");
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(nesting_exceeds(deep.as_bytes(), 128));
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
