//! Functions that build values far larger than their inputs, bounded by the flow's memory
//! limit.
//!
//! DataFusion's memory pool counts what operators hold (sorts, aggregates, join tables), not what
//! a scalar function allocates for its result: `repeat('x', 1000000000)` built a 1 GB string
//! under a 256 MiB limit — while the config was being validated, since constant arguments are
//! folded when the query is planned — and `unnest(range(0, 50000000))` reached 3 GB. Each
//! function here is DataFusion's own, wrapped: before calling it, the wrapper works out an upper
//! bound of the result's size from the arguments and refuses the call if it is over the limit.
//! A constant call is refused when the flow is validated; a call on column values fails for the
//! rows that ask too much (they go to the DLQ with the reason) and not for the rest.
//!
//! | function | result bound |
//! |---|---|
//! | `repeat(s, n)` | `len(s) × n` |
//! | `lpad`/`rpad(s, n [, fill])` | `4n` (n characters of up to 4 bytes) |
//! | `replace(s, from, to)` | `len(s) + matches × len(to)` |
//! | `regexp_replace(s, re, r [, flags])` | `len(s) × (1 + backrefs) + (len(s) + 1) × len(r)` |
//! | `range`/`generate_series(start, stop, step)` | `8 ×` the element count; integers only |
//! | `array_repeat(e, n)` | `n ×` the element's size |
//! | `array_resize(a, n [, v])` | `16n` |

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, Int64Array};
use arrow_schema::{DataType, FieldRef};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

use sluice_core::error::Invalid;

/// The bounded functions for a flow whose memory limit is `limit` bytes, to register over
/// DataFusion's own (same names, same aliases).
pub fn all(limit: usize) -> Vec<ScalarUDF> {
    use datafusion::functions::{regex, string, unicode};
    use datafusion::functions_nested::{range, repeat, resize};
    let wrap = |inner: Arc<ScalarUDF>, kind| ScalarUDF::new_from_impl(Bounded { inner: (*inner).clone(), limit, kind });
    vec![
        wrap(string::repeat(), Kind::Repeat),
        wrap(unicode::lpad(), Kind::Pad),
        wrap(unicode::rpad(), Kind::Pad),
        wrap(string::replace(), Kind::Replace),
        wrap(regex::regexp_replace(), Kind::RegexpReplace),
        wrap(range::range_udf(), Kind::Range),
        wrap(range::gen_series_udf(), Kind::Range),
        wrap(repeat::array_repeat_udf(), Kind::ArrayRepeat),
        wrap(resize::array_resize_udf(), Kind::ArrayResize),
    ]
}

/// Refuses a plan that calls a bounded function with constant arguments over its bound: such a
/// call would fail on every row, so it is a mistake in the query, reported when it is planned.
pub fn check_constants(plan: &datafusion::logical_expr::LogicalPlan) -> Result<(), Invalid> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let mut found = Ok(());
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                if let Expr::ScalarFunction(f) = e
                    && let Some(b) = (f.func.inner().as_ref() as &dyn std::any::Any).downcast_ref::<Bounded>()
                {
                    let constants: Option<Vec<ColumnarValue>> = f
                        .args
                        .iter()
                        .map(|a| match a {
                            Expr::Literal(v, _) => Some(ColumnarValue::Scalar(v.clone())),
                            _ => None,
                        })
                        .collect();
                    if let Some(args) = constants
                        && let Err(e) = b.check(&args, 1)
                    {
                        found = Err(match e {
                            datafusion::error::DataFusionError::Execution(m) => m,
                            other => other.to_string(),
                        });
                        return Ok(TreeNodeRecursion::Stop);
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    });
    found.map_err(Invalid)
}

/// Which bound applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Repeat,
    Pad,
    Replace,
    RegexpReplace,
    Range,
    ArrayRepeat,
    ArrayResize,
}

/// A DataFusion function whose calls are refused when their result could exceed `limit` bytes.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: ScalarUDF,
    limit: usize,
    kind: Kind,
}

impl Bounded {
    /// An upper bound of the bytes the call's result takes.
    fn bound(&self, args: &[ColumnarValue], rows: usize) -> Result<u128> {
        // Constant arguments make one value, whatever the batch size.
        let rows = if args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_))) { 1 } else { rows };
        let arg = |i: usize| args.get(i);
        let mut total: u128 = 0;
        for row in 0..rows {
            let len = |i: usize| arg(i).map_or(0, |a| text_len(a, row)) as u128;
            let int = |i: usize| arg(i).and_then(|a| int_at(a, row));
            let n = |i: usize| int(i).unwrap_or(0).max(0) as u128;
            total += match self.kind {
                Kind::Repeat => len(0) * n(1),
                Kind::Pad => 4 * n(1),
                Kind::Replace => {
                    let (s, from, to) = (len(0), len(1), len(2));
                    let matches = s.checked_div(from).unwrap_or(s + 1);
                    s + matches * to
                }
                Kind::RegexpReplace => {
                    let (s, r) = (len(0), len(2));
                    let backrefs = arg(2).map_or(0, |a| text_at(a, row).matches(['$', '\\']).count()) as u128;
                    s * (1 + backrefs) + (s + 1) * r
                }
                Kind::Range => {
                    let (start, stop, step) = match args.len() {
                        1 => (Some(0), int(0), Some(1)),
                        2 => (int(0), int(1), Some(1)),
                        _ => (int(0), int(1), int(2)),
                    };
                    match (start, stop, step) {
                        (Some(a), Some(b), Some(s)) if s != 0 => {
                            8 * ((i128::from(b) - i128::from(a)).unsigned_abs() / i128::from(s).unsigned_abs() + 1)
                        }
                        _ => 0,
                    }
                }
                Kind::ArrayRepeat => n(1) * arg(0).map_or(8, value_size) as u128,
                Kind::ArrayResize => 16 * n(1),
            };
        }
        Ok(total)
    }
}

impl Bounded {
    /// Refuses a call whose result could exceed the limit.
    fn check(&self, args: &[ColumnarValue], rows: usize) -> Result<()> {
        let bound = self.bound(args, rows)?;
        if bound > self.limit as u128 {
            return exec_err!(
                "{} would build up to {bound} bytes, more than the flow's memory limit of {} MiB (transform.memory_limit_mb)",
                self.inner.name(),
                self.limit >> 20
            );
        }
        Ok(())
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        // Ranges of dates and times step by intervals whose length depends on the calendar; only
        // integer ranges are bounded here, so only they are allowed.
        if self.kind == Kind::Range
            && let Some(f) = args.arg_fields.iter().find(|f| !f.data_type().is_integer() && !f.data_type().is_null())
        {
            return plan_err!(
                "{}: only integer ranges are allowed in a flow ({} is not an integer): a range of dates or times has no bound the flow can check",
                self.inner.name(),
                f.data_type()
            );
        }
        self.inner.inner().return_field_from_args(args)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        self.check(&args.args, args.number_rows)?;
        self.inner.invoke_with_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.inner().simplify(args, info)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.output_ordering(inputs)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

/// The byte length of a string argument at `row` (0 for null or not a string).
fn text_len(v: &ColumnarValue, row: usize) -> usize {
    text_at(v, row).len()
}

/// A string argument at `row` ("" for null or not a string).
fn text_at(v: &ColumnarValue, row: usize) -> &str {
    match v {
        ColumnarValue::Scalar(s) => match s {
            ScalarValue::Utf8(Some(t)) | ScalarValue::LargeUtf8(Some(t)) | ScalarValue::Utf8View(Some(t)) => t,
            _ => "",
        },
        ColumnarValue::Array(a) if a.is_null(row) => "",
        ColumnarValue::Array(a) => match a.data_type() {
            DataType::Utf8 => a.as_string::<i32>().value(row),
            DataType::LargeUtf8 => a.as_string::<i64>().value(row),
            DataType::Utf8View => a.as_string_view().value(row),
            _ => "",
        },
    }
}

/// An integer argument at `row`, if it is one.
fn int_at(v: &ColumnarValue, row: usize) -> Option<i64> {
    match v {
        ColumnarValue::Scalar(s) => match s.cast_to(&DataType::Int64).ok()? {
            ScalarValue::Int64(i) => i,
            _ => None,
        },
        ColumnarValue::Array(a) if a.data_type().is_integer() => {
            let cast: ArrayRef = datafusion::arrow::compute::cast(a, &DataType::Int64).ok()?;
            let ints = cast.as_any().downcast_ref::<Int64Array>()?;
            ints.is_valid(row).then(|| ints.value(row))
        }
        ColumnarValue::Array(_) => None,
    }
}

/// About how many bytes one value of the argument takes.
fn value_size(v: &ColumnarValue) -> usize {
    match v {
        ColumnarValue::Scalar(s) => s.size(),
        ColumnarValue::Array(a) => (a.get_array_memory_size() / a.len().max(1)).max(8),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use datafusion::prelude::SessionContext;

    async fn run(sql: &str) -> Result<String, String> {
        let ctx = SessionContext::new();
        for f in super::all(1 << 20) {
            ctx.register_udf(f);
        }
        let batches = ctx.sql(sql).await.map_err(|e| e.to_string())?.collect().await.map_err(|e| e.to_string())?;
        Ok(datafusion::arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string())
    }

    #[tokio::test]
    async fn small_results_pass_and_huge_ones_are_refused_before_they_are_built() {
        let ok = run("SELECT repeat('ab', 3) AS r, lpad('7', 3, '0') AS p, cardinality(range(1, 10)) AS n, \
                      replace('aXa', 'X', 'yy') AS s, regexp_replace('a-b', '-', '+') AS g")
        .await
        .unwrap();
        assert!(ok.contains("| ababab | 007 | 9 | ayya | a+b |"), "{ok}");
        for sql in [
            "SELECT repeat('x', 1000000000)",
            "SELECT repeat(repeat(repeat('x', 1000), 1000), 1000)",
            "SELECT lpad('x', 1000000000)",
            "SELECT cardinality(range(0, 50000000))",
            "SELECT cardinality(generate_series(1, 9000000000000000000))",
            "SELECT array_repeat(1, 1000000000)",
            "SELECT replace(repeat('x', 500000), '', repeat('y', 100))",
        ] {
            let e = run(sql).await.unwrap_err();
            assert!(e.contains("more than the flow's memory limit of 1 MiB"), "{sql}: {e}");
        }
        let e = run("SELECT range(DATE '2000-01-01', DATE '3000-01-01', INTERVAL '1' DAY)").await.unwrap_err();
        assert!(e.contains("only integer ranges"), "{e}");
    }
}
