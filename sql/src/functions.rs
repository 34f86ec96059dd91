//! SQL functions sluice adds to DataFusion's own.
//!
//! DataFusion already has what most flows need: `sha256`/`md5`/`digest`, `to_timestamp` and
//! `to_char` for parsing and formatting times, `coalesce`, `nullif`, `regexp_*`, string
//! functions. JSON extraction comes from `datafusion-functions-json` (`json_get_str(doc, 'a',
//! 'b')`, `json_get_int`, `doc->'a'->>'b'`, …). What is left is written here:
//!
//! - `mask(value [, mode [, n [, char]]])`: `value` with characters replaced by `char` (default
//!   `*`): all of them (`mode` `'all'`, the default), the first `n` (`'first'`) or the last `n`
//!   (`'last'`). Nulls stay null.

use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};

/// Every function of this module, to register on a session.
pub fn all() -> Vec<ScalarUDF> {
    vec![ScalarUDF::from(Mask::new())]
}

/// `mask(value [, mode [, n [, char]]])`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Mask {
    signature: Signature,
}

impl Default for Mask {
    fn default() -> Self {
        Self::new()
    }
}

impl Mask {
    /// The function.
    pub fn new() -> Mask {
        Mask { signature: Signature::user_defined(Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for Mask {
    fn name(&self) -> &str {
        "mask"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        if args.is_empty() || args.len() > 4 {
            return plan_err!("mask takes 1 to 4 arguments: mask(value [, mode [, n [, char]]])");
        }
        Ok([DataType::Utf8, DataType::Utf8, DataType::Int64, DataType::Utf8][..args.len()].to_vec())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let values = arrays[0].as_string::<i32>();
        let text_at = |i: usize, row: usize, default: &'static str| -> String {
            match arrays.get(i) {
                Some(a) if a.is_valid(row) => a.as_string::<i32>().value(row).to_owned(),
                _ => default.to_owned(),
            }
        };
        let mut out = StringBuilder::with_capacity(rows, values.value_data().len());
        for row in 0..rows {
            if values.is_null(row) {
                out.append_null();
                continue;
            }
            let value = values.value(row);
            let mode = text_at(1, row, "all");
            let n = match arrays.get(2) {
                Some(a) if a.is_valid(row) => a.as_primitive::<Int64Type>().value(row).max(0) as usize,
                _ => 0,
            };
            let ch = text_at(3, row, "*").chars().next().unwrap_or('*');
            let len = value.chars().count();
            let hidden = |i: usize| match mode.as_str() {
                "all" => true,
                "first" => i < n,
                "last" => i + n >= len,
                _ => false,
            };
            if !matches!(mode.as_str(), "all" | "first" | "last") {
                return exec_err!("mask: mode must be 'all', 'first' or 'last', not '{mode}'");
            }
            let masked: String = value.chars().enumerate().map(|(i, c)| if hidden(i) { ch } else { c }).collect();
            out.append_value(masked);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish()) as ArrayRef))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn mask_hides_all_first_or_last_characters() {
        let ctx = SessionContext::new();
        for f in super::all() {
            ctx.register_udf(f);
        }
        let df = ctx
            .sql(
                "SELECT mask('4111111111111111') AS a, mask('4111111111111111', 'last', 4) AS b, \
                 mask('4111111111111111', 'first', 12, '#') AS c, mask('ab', 'first', 9) AS d, \
                 mask(NULL) AS e, mask('héllo', 'last', 2, 'x') AS f",
            )
            .await
            .unwrap();
        let batches = df.collect().await.unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string();
        assert!(text.contains("| **************** | 411111111111**** | ############1111 | ** |   | hélxx |"), "{text}");
        let e = ctx.sql("SELECT mask('a', 'middle', 1)").await.unwrap().collect().await.unwrap_err();
        assert!(e.to_string().contains("mode must be"), "{e}");
    }
}
