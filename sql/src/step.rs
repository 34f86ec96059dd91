//! One planned query of a flow — the tasks' or the user's — and running it over one batch.
//!
//! How "plan once, run per batch" works: the `source` table is a streaming table whose one
//! partition yields whatever batch sits in a shared slot. Each run puts the batch in the slot
//! and executes the same physical plan; executing a plan only builds its streams. A plan may
//! scan `source` more than once (a self-join, a `UNION ALL` of two filters): every scan gets
//! the whole batch, so the slot is read, not emptied, and cleared when the run ends. Each run
//! executes a fresh copy of the plan ([`fresh`]): an operator registers its metrics in its plan
//! node every time it is executed, so a node executed once per batch would grow for as long as
//! the flow runs.
//!
//! A run is bounded twice over: its output for one batch may not exceed the flow's memory limit
//! (a cross join or an `unnest` can multiply rows without any operator holding them), and it
//! may not take longer than the flow's batch timeout. Plans run on a runtime of their own
//! ([`query_runtime`]): a heavy query may keep every one of its threads busy, and the flows'
//! runtime — whose timer ends the batch, whose tasks keep Kafka memberships alive — must not be
//! the one starved.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::{Array, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use datafusion::prelude::{SQLOptions, SessionContext};
use futures::StreamExt as _;
use sluice_core::connector::RejectedRow;
use sluice_core::error::{Invalid, TransformError};

use crate::{SOURCE_TABLE, batch_limit, bounded, functions, sandbox, tasks};
use sluice_core::names::column;

/// The hidden column that carries each row's index in its input batch through the plan, so an
/// output row can be traced back to the Kafka message it came from (for dead-lettering a row
/// the destination refused). Stripped from every output.
pub const ROW_COLUMN: &str = "__sluice_row";

/// The `source` table's schema: the row's columns, then `_op`, `_key`, `_ts` and the lineage
/// column.
pub fn input_schema(row: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = row.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(column::OP, DataType::Utf8, false));
    fields.push(Field::new(column::KEY, DataType::Utf8, true));
    fields.push(Field::new(column::TS, DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), true));
    fields.push(Field::new(ROW_COLUMN, DataType::UInt32, false));
    Arc::new(Schema::new(fields))
}

/// Why a run over one batch failed.
#[derive(Debug)]
pub enum RunError {
    /// The query failed; on one value (then the rows are tried one by one) or on all.
    Query(DataFusionError),
    /// An operator needed more memory than the flow's pool has.
    OutOfMemory(DataFusionError),
    /// The output for one batch grew past the memory limit.
    OutputTooLarge {
        /// Bytes of output when it was stopped.
        bytes: usize,
    },
    /// The run took longer than the batch timeout.
    Timeout,
}

impl RunError {
    fn from_datafusion(e: DataFusionError) -> RunError {
        match e.find_root() {
            DataFusionError::ResourcesExhausted(_) => RunError::OutOfMemory(e),
            _ => RunError::Query(e),
        }
    }

    /// Whether the failure may be one row's doing (a cast, a division by zero), so that running
    /// the batch row by row would find the culprits. Resource limits are the whole batch's.
    pub fn may_be_one_row(&self) -> bool {
        matches!(self, RunError::Query(_))
    }
}

/// The runtime queries run on: as many threads as the machine has cores (two at least), apart
/// from the runtime the flows run on. It lives as long as the process (a static is never
/// dropped).
fn query_runtime() -> tokio::runtime::Handle {
    static RUNTIME: std::sync::OnceLock<Option<tokio::runtime::Runtime>> = std::sync::OnceLock::new();
    let rt = RUNTIME.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("sluice-sql")
            .enable_all()
            .build()
            .inspect_err(|e| tracing::warn!(error = %e, "starting the SQL runtime; queries run on the flows' runtime"))
            .ok()
    });
    // Without threads of its own, queries share the caller's runtime (the timeout then fires
    // only when the query yields).
    rt.as_ref().map_or_else(tokio::runtime::Handle::current, |rt| rt.handle().clone())
}

/// What bounds a run.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most bytes of output per batch (the flow's memory limit).
    pub output_bytes: usize,
    /// Longest time per batch.
    pub timeout: Duration,
}

/// One planned query: its input slot, its physical plan and where its hidden columns sit.
pub struct Step {
    slot: Arc<Mutex<Option<RecordBatch>>>,
    pub plan: Arc<dyn ExecutionPlan>,
    task_ctx: Arc<TaskContext>,
    /// The lineage column's index in the plan's output, when the plan kept it.
    pub lineage: Option<usize>,
    /// The `dlq` rules' column.
    violation: Option<usize>,
    /// The `fail` rules' column.
    failure: Option<usize>,
    /// The columns passed on (to the next step, or out): all but the rule columns.
    pub keep: Vec<usize>,
    /// The largest batch any operator may give, set for each run.
    batch_limit: batch_limit::Limit,
}

/// The `source` partition: yields the batch in the slot to every scan of the current run.
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
        // A clone shares the columns' buffers: each scan sees the whole batch at no copy.
        let batch = self.slot.lock().map(|s| s.clone()).unwrap_or(None);
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), futures::stream::iter(batch.map(Ok))))
    }
}

/// Carries [`ROW_COLUMN`] through every projection of a row-wise plan (filters, aliases,
/// sorts and limits keep it by themselves). Plans that merge rows (aggregates) lose it, and
/// then the stage simply has no lineage.
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
            .ok_or_else(|| DataFusionError::Internal("lineage column vanished".into()))?;
        let column = datafusion::common::Column::new(qualifier.cloned(), ROW_COLUMN);
        let mut exprs = p.expr.clone();
        exprs.push(datafusion::logical_expr::Expr::Column(column));
        Ok(T::yes(LogicalPlan::Projection(Projection::try_new(exprs, p.input.clone())?)))
    })
    .map(|t| t.data)
}

/// A copy of `plan` to execute once: every node anew, with metrics of its own and no state from
/// an earlier run (a `TopK`'s dynamic filter), sharing the expressions and the cached properties
/// (no planning is repeated; a few small allocations per node).
///
/// Why: DataFusion's operators add their metrics (rows out, time spent, …) to their node's
/// metrics set on every `execute`, and nothing ever removes them — they are there to be read once
/// a query ends. A plan executed once per batch of a continuous flow kept every batch's: about
/// 2 bytes per record, forever (the soak run's job (b) grew 70 % in 25 minutes). The scan keeps
/// its node on a reset and registers metrics only when it carries a pushed-down `LIMIT`: then
/// it is built again (which recomputes its properties), else kept as it is.
fn fresh(plan: Arc<dyn ExecutionPlan>) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::physical_plan::streaming::StreamingTableExec;
    plan.transform_up(|node| {
        if let Some(scan) = node.downcast_ref::<StreamingTableExec>() {
            if scan.limit().is_none() {
                return Ok(Transformed::no(node));
            }
            let projection = scan.projection().as_ref().map(|p| p.to_vec());
            let scan = StreamingTableExec::try_new(
                scan.partition_schema().clone(),
                scan.partitions().clone(),
                projection.as_ref(),
                scan.projected_output_ordering(),
                scan.is_infinite(),
                scan.limit(),
            )?;
            return Ok(Transformed::yes(Arc::new(scan) as Arc<dyn ExecutionPlan>));
        }
        node.reset_state().map(Transformed::yes)
    })
    .map(|t| t.data)
}

/// Plans one query over a `source` table of `input`'s columns.
pub async fn plan(
    input: &SchemaRef,
    sql: &str,
    runtime: Arc<RuntimeEnv>,
    memory_limit: usize,
) -> Result<Step, Invalid> {
    let slot = Arc::new(Mutex::new(None));
    let mut ctx = SessionContext::new_with_config_rt(sandbox::session_config(), runtime);
    // No table functions (generate_series could fill the memory; none may read files).
    let udtfs: Vec<String> = ctx.state().table_functions().keys().cloned().collect();
    for name in udtfs {
        ctx.deregister_udtf(&name);
    }
    for f in functions::all().into_iter().chain(bounded::all(memory_limit)) {
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
    // Planning folds constant expressions, which runs functions: the bounded ones refuse a
    // constant too large here, before anything is allocated for it.
    let df = ctx.sql_with_options(sql, opts).await.map_err(|e| e.to_string())?;
    let logical = with_lineage(df.logical_plan().clone()).map_err(|e| e.to_string())?;
    let state = ctx.state();
    let optimized = state.optimize(&logical).map_err(|e| e.to_string())?;
    // A bounded function whose arguments are all constants, still a call after folding, was
    // refused by the folder (which keeps the error for run time): refuse it now, with the
    // reason, rather than on every row.
    bounded::check_constants(&optimized)?;
    let plan = state.query_planner().create_physical_plan(&optimized, &state).await.map_err(|e| e.to_string())?;
    let limit = batch_limit::Limit::default();
    let plan = batch_limit::bound(plan, &limit).map_err(|e| e.to_string())?;
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
        batch_limit: limit,
    })
}

impl Step {
    /// Runs the plan over one batch, within `limits`.
    pub async fn run(&self, batch: RecordBatch, limits: Limits) -> Result<Vec<RecordBatch>, RunError> {
        // Any batch inside the plan, and the whole output, may be as large as the input plus
        // the flow's memory limit.
        let bound = limits.output_bytes.saturating_add(batch.get_array_memory_size());
        self.batch_limit.store(bound, std::sync::atomic::Ordering::Relaxed);
        let limits = Limits { output_bytes: bound, ..limits };
        if let Ok(mut slot) = self.slot.lock() {
            *slot = Some(batch);
        }
        let task_ctx = self.task_ctx.clone();
        let plan = fresh(self.plan.clone()).map_err(RunError::from_datafusion)?;
        let collect = query_runtime().spawn(async move {
            let mut stream =
                datafusion::physical_plan::execute_stream(plan, task_ctx).map_err(RunError::from_datafusion)?;
            let (mut out, mut bytes) = (Vec::new(), 0usize);
            while let Some(b) = stream.next().await {
                let b = b.map_err(RunError::from_datafusion)?;
                bytes += b.get_array_memory_size();
                if bytes > limits.output_bytes {
                    return Err(RunError::OutputTooLarge { bytes });
                }
                out.push(b);
            }
            Ok(out)
        });
        let abort = collect.abort_handle();
        let result = match tokio::time::timeout(limits.timeout, collect).await {
            Ok(Ok(r)) => r,
            Ok(Err(join)) => Err(RunError::Query(DataFusionError::Execution(format!("the query task ended: {join}")))),
            Err(_) => {
                abort.abort();
                Err(RunError::Timeout)
            }
        };
        // The slot keeps no batch between runs: it would hold a batch's memory for nothing.
        if let Ok(mut slot) = self.slot.lock() {
            *slot = None;
        }
        result
    }

    /// Applies the validation columns: a `fail` rule broken stops here; rows that broke a `dlq`
    /// rule become rejections (traced to their input message) and leave the batch. The rule
    /// columns are dropped.
    pub fn settle(
        &self,
        flow: &str,
        b: RecordBatch,
        rejected: &mut Vec<RejectedRow>,
    ) -> Result<RecordBatch, TransformError> {
        let origin = |row: usize| -> usize {
            self.lineage
                .and_then(|i| b.column(i).as_any().downcast_ref::<UInt32Array>())
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use arrow_array::Int64Array;

    /// Every metric held by the nodes of `plan`.
    fn metrics_held(plan: &Arc<dyn ExecutionPlan>) -> usize {
        let own = plan.metrics().map_or(0, |m| m.iter().count());
        own + plan.children().into_iter().map(metrics_held).sum::<usize>()
    }

    #[tokio::test]
    async fn a_plan_run_for_every_batch_keeps_nothing_from_the_runs() {
        let input = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let limits = Limits { output_bytes: 1 << 20, timeout: Duration::from_secs(10) };
        // A row-wise plan, a pushed-down LIMIT (metrics in the scan) and a TopK (a dynamic filter
        // that must not carry one batch's bound into the next).
        type Want = fn(&[i64]) -> Vec<i64>;
        let cases: [(&str, Want); 3] = [
            ("SELECT a * 2 AS b FROM source WHERE a > 1", |a| a.iter().filter(|v| **v > 1).map(|v| v * 2).collect()),
            ("SELECT a FROM source LIMIT 2", |a| a[..2].to_vec()),
            ("SELECT a FROM source ORDER BY a DESC LIMIT 2", |a| vec![a[3], a[2]]),
        ];
        for (sql, want) in cases {
            let step = plan(&input, sql, Arc::new(RuntimeEnv::default()), 1 << 20).await.unwrap();
            for run in 0..50i64 {
                // Each batch shifted down, so a bound kept from the last run would cut this one.
                let values: Vec<i64> = (1..=4).map(|v| v - run).collect();
                let batch =
                    RecordBatch::try_new(input.clone(), vec![Arc::new(Int64Array::from(values.clone()))]).unwrap();
                let out = step.run(batch, limits).await.unwrap();
                let got: Vec<i64> = out
                    .iter()
                    .flat_map(|b| b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec())
                    .collect();
                assert_eq!(got, want(&values), "{sql}, run {run}");
            }
            assert_eq!(metrics_held(&step.plan), 0, "{sql}: the planned nodes gathered metrics");
        }
    }
}
