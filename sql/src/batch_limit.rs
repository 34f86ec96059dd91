//! A bound on every operator's output batch: no batch inside a plan may exceed the flow's
//! memory limit plus the size of the input batch.
//!
//! DataFusion's memory pool counts what operators *hold* (sort buffers, hash tables); what an
//! operator *produces* — a projection's new columns, a join's output — is not counted. Most of
//! that is as large as the input, but a query can make it larger at every step: each level of
//! a chain of CTEs that doubles a string (`s || s`) doubles the batch, and thirty levels is a
//! billion times the input. The functions that grow a value in one call are bounded where they
//! are called ([`crate::bounded`]); this wrapper, put above every operator of a plan, bounds the
//! rest: the first batch past the limit stops the query with a resource error, so at most about
//! twice the limit is ever allocated.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt as _;

/// The largest batch an operator may give, in bytes; set before each run (the flow's memory
/// limit plus the run's input batch).
pub type Limit = Arc<AtomicUsize>;

/// Puts a [`BatchLimitExec`] above every operator of `plan` that has inputs.
pub fn bound(plan: Arc<dyn ExecutionPlan>, limit: &Limit) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        if node.children().is_empty() {
            return Ok(Transformed::no(node));
        }
        Ok(Transformed::yes(Arc::new(BatchLimitExec { input: node, limit: limit.clone() }) as Arc<dyn ExecutionPlan>))
    })
    .map(|t| t.data)
}

/// Passes its input's batches on, refusing one larger than the limit.
#[derive(Debug)]
pub struct BatchLimitExec {
    input: Arc<dyn ExecutionPlan>,
    limit: Limit,
}

impl DisplayAs for BatchLimitExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BatchLimitExec: limit={}", self.limit.load(Ordering::Relaxed))
    }
}

impl ExecutionPlan for BatchLimitExec {
    fn name(&self) -> &str {
        "BatchLimitExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(format!("BatchLimitExec has one input, given {}", children.len())));
        }
        Ok(Arc::new(BatchLimitExec { input: children.swap_remove(0), limit: self.limit.clone() }))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let (limit, operator) = (self.limit.clone(), self.input.name().to_owned());
        let checked = input.map(move |batch| {
            let batch = batch?;
            let (size, max) = (batch.get_array_memory_size(), limit.load(Ordering::Relaxed));
            if size > max {
                return Err(DataFusionError::ResourcesExhausted(format!(
                    "{operator} gave a batch of {size} bytes, more than the {max} bytes a batch may take"
                )));
            }
            Ok(batch)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.input.schema(), checked)))
    }
}
