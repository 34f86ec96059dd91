//! AppFlow-style tasks, for users who do not write SQL, compiled into one `SELECT` over the
//! `source` table.
//!
//! | task | what it does | SQL it becomes |
//! |---|---|---|
//! | `map` | output column `target` (default: `source`) from `source`, optionally `cast` (a value that does not convert sends its row to the DLQ) | `TRY_CAST("a" AS BIGINT) AS "b"` |
//! | `map_all` | every input column, as it is | `"a", "b", …` |
//! | `merge` | `sources` joined by `separator`, or laid out by `format` (`"{first} {last}"`) | `concat(…)` |
//! | `arithmetic` | `sources[0] op sources[1]` (or `op value`), `op`: add, subtract, multiply, divide | `("a" * "b") AS "t"` |
//! | `mask` | the output column `source` masked: `mode` all / first / last `n` characters, with `char` | `mask(…)` |
//! | `truncate` | the output column `source` cut to `length` characters | `left(…, n)` |
//! | `filter` | keep rows whose input column `source` passes `op` with `value`/`values` | `WHERE …` |
//! | `validate` | a rule on input column `source`, or any SQL `predicate`; a failing row is dropped, dead-lettered with the rule's name, or fails the flow (`action`) | `CASE …` |
//!
//! Output columns come in task order; `_op`, `_key` and `_ts` are always carried (sinks apply
//! deletes with them). Filters and validations read the *input* columns, as AppFlow's do.
//!
//! Validation rules pass nulls, as SQL `CHECK` constraints do, except `non_null`. A rule with
//! `action: dlq` marks the row with the rule's name in a hidden column the stage turns into a
//! DLQ reason; `fail` marks it in another, which fails the batch; `drop` filters the row out.

mod written;

use sluice_core::error::Invalid;
use sluice_core::names::column;

/// The hidden column naming the first `dlq` rule a row broke.
pub const VIOLATION_COLUMN: &str = "__sluice_violation";
/// The hidden column naming the first `fail` rule a row broke.
pub const FAILURE_COLUMN: &str = "__sluice_failure";

pub use written::{Action, MaskMode, Op, Rule, Task, TaskType};

/// A quoted SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A SQL string literal.
pub fn text(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A SQL literal for a config value.
fn literal(v: &serde_json::Value, what: &str) -> Result<String, String> {
    match v {
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::String(s) => Ok(text(s)),
        serde_json::Value::Bool(b) => Ok(b.to_string().to_uppercase()),
        serde_json::Value::Null => Ok("NULL".into()),
        _ => Err(format!("`{what}` must be a number, text or boolean")),
    }
}

fn sql_type(cast: &str) -> Result<String, String> {
    use sluice_core::schema::ColumnType as C;
    let t = C::parse(cast).map_err(|e| format!("`cast`: {e}"))?;
    Ok(match t {
        C::Bool => "BOOLEAN".into(),
        C::Int32 => "INT".into(),
        C::Int64 => "BIGINT".into(),
        C::Float64 => "DOUBLE".into(),
        C::String | C::Json | C::Uuid => "VARCHAR".into(),
        C::Timestamp { .. } => "TIMESTAMP".into(),
        C::Date => "DATE".into(),
        C::Time => "TIME".into(),
        C::Bytes => "BYTEA".into(),
        C::Decimal { precision, scale } => format!("DECIMAL({precision},{scale})"),
        C::Struct(_) | C::List(_) | C::Map(_) => {
            return Err(format!("`cast`: tasks cast to scalar types; `{t}` needs a `sql:` query"));
        }
    })
}

/// The metadata columns every task list carries through.
const META: [&str; 3] = column::HIDDEN;

/// Compiles `tasks` over input columns `columns` into one `SELECT … FROM source`. Errors name
/// the task (`tasks[2]`) and the field.
pub fn compile(tasks: &[Task], columns: &[String]) -> Result<String, Invalid> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut wheres: Vec<String> = Vec::new();
    let mut dlq: Vec<(String, String)> = Vec::new();
    let mut fail: Vec<(String, String)> = Vec::new();
    let known = |c: &str, i: usize, field: &str| -> Result<String, String> {
        if columns.iter().any(|x| x == c) || META.contains(&c) {
            Ok(ident(c))
        } else {
            Err(format!("tasks[{i}]: `{field}`: no input column `{c}` (columns: {})", columns.join(", ")))
        }
    };
    let set =
        |out: &mut Vec<(String, String)>, name: String, expr: String| match out.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = expr,
            None => out.push((name, expr)),
        };
    for (i, t) in tasks.iter().enumerate() {
        let need = |v: Option<&String>, field: &str| -> Result<String, String> {
            v.cloned().ok_or_else(|| format!("tasks[{i}] ({:?}): `{field}` is required", t.kind))
        };
        check_fields(t, i)?;
        match t.kind {
            TaskType::MapAll => {
                for c in columns {
                    set(&mut out, c.clone(), ident(c));
                }
            }
            TaskType::Map => {
                let source = need(t.source.as_ref(), "source")?;
                let mut expr = known(&source, i, "source")?;
                if let Some(cast) = &t.cast {
                    let ty = sql_type(cast).map_err(|e| format!("tasks[{i}]: {e}"))?;
                    // A value that does not convert sends its row to the DLQ, named after the
                    // cast, instead of failing the batch.
                    dlq.push((
                        format!("cast({source} as {cast})"),
                        format!("({expr} IS NULL OR TRY_CAST({expr} AS {ty}) IS NOT NULL) IS FALSE"),
                    ));
                    expr = format!("TRY_CAST({expr} AS {ty})");
                }
                set(&mut out, t.target.clone().unwrap_or(source), expr);
            }
            TaskType::Merge => {
                let target = need(t.target.as_ref(), "target")?;
                if t.sources.len() < 2 {
                    return Err(format!("tasks[{i}] (Merge): `sources` must name two columns or more").into());
                }
                let parts: Vec<String> = match &t.format {
                    Some(f) => layout(f, &t.sources, i, &known)?,
                    None => {
                        let sep = text(t.separator.as_deref().unwrap_or(""));
                        let cols = t.sources.iter().map(|c| known(c, i, "sources")).collect::<Result<Vec<_>, _>>()?;
                        let mut parts = Vec::new();
                        for (k, c) in cols.into_iter().enumerate() {
                            if k > 0 && sep != "''" {
                                parts.push(sep.clone());
                            }
                            parts.push(format!("CAST({c} AS VARCHAR)"));
                        }
                        parts
                    }
                };
                set(&mut out, target, format!("concat({})", parts.join(", ")));
            }
            TaskType::Arithmetic => {
                let target = need(t.target.as_ref(), "target")?;
                let op = match t.op {
                    Some(Op::Add) => "+",
                    Some(Op::Subtract) => "-",
                    Some(Op::Multiply) => "*",
                    Some(Op::Divide) => "/",
                    _ => {
                        return Err(
                            format!("tasks[{i}] (Arithmetic): `op` must be add, subtract, multiply or divide").into()
                        );
                    }
                };
                let left = known(
                    t.sources.first().ok_or(format!("tasks[{i}] (Arithmetic): `sources` is required"))?,
                    i,
                    "sources",
                )?;
                let right = match (t.sources.get(1), &t.value) {
                    (Some(c), None) if t.sources.len() == 2 => known(c, i, "sources")?,
                    (None, Some(v)) => literal(v, "value").map_err(|e| format!("tasks[{i}]: {e}"))?,
                    _ => {
                        return Err(format!(
                            "tasks[{i}] (Arithmetic): give two `sources`, or one `sources` and a `value`"
                        )
                        .into());
                    }
                };
                // Division by zero gives null rather than failing the batch.
                let expr = if op == "/" {
                    format!("(CAST({left} AS DOUBLE) / nullif(CAST({right} AS DOUBLE), 0))")
                } else {
                    format!("({left} {op} {right})")
                };
                set(&mut out, target, expr);
            }
            TaskType::Mask | TaskType::Truncate => {
                let source = need(t.source.as_ref(), "source")?;
                let current = match out.iter().find(|(n, _)| *n == source) {
                    Some((_, e)) => e.clone(),
                    None => known(&source, i, "source")?,
                };
                let value = format!("CAST({current} AS VARCHAR)");
                let expr = if t.kind == TaskType::Mask {
                    let mode = match t.mode.unwrap_or_default() {
                        MaskMode::All => "all",
                        MaskMode::First => "first",
                        MaskMode::Last => "last",
                    };
                    if mode != "all" && t.n.is_none() {
                        return Err(format!("tasks[{i}] (Mask): `n` is required with mode {mode}").into());
                    }
                    let ch = t.char.as_deref().unwrap_or("*");
                    if ch.chars().count() != 1 {
                        return Err(format!("tasks[{i}] (Mask): `char` must be one character").into());
                    }
                    format!("mask({value}, '{mode}', {}, {})", t.n.unwrap_or(0), text(ch))
                } else {
                    let n = t.length.ok_or(format!("tasks[{i}] (Truncate): `length` is required"))?;
                    format!("left({value}, {n})")
                };
                set(&mut out, source, expr);
            }
            TaskType::Filter => {
                let source = need(t.source.as_ref(), "source")?;
                let col = known(&source, i, "source")?;
                let v = || -> Result<String, String> {
                    literal(t.value.as_ref().ok_or(format!("tasks[{i}] (Filter): `value` is required"))?, "value")
                        .map_err(|e| format!("tasks[{i}]: {e}"))
                };
                let pred = match t.op {
                    Some(Op::EqualTo) => format!("{col} = {}", v()?),
                    Some(Op::NotEqualTo) => format!("{col} <> {}", v()?),
                    Some(Op::LessThan) => format!("{col} < {}", v()?),
                    Some(Op::LessThanOrEqualTo) => format!("{col} <= {}", v()?),
                    Some(Op::GreaterThan) => format!("{col} > {}", v()?),
                    Some(Op::GreaterThanOrEqualTo) => format!("{col} >= {}", v()?),
                    Some(Op::Contains) => format!("strpos(CAST({col} AS VARCHAR), CAST({} AS VARCHAR)) > 0", v()?),
                    Some(Op::Between) => {
                        let [lo, hi] = t.values.as_slice() else {
                            return Err(format!("tasks[{i}] (Filter): `between` needs `values: [low, high]`").into());
                        };
                        let lo = literal(lo, "values").map_err(|e| format!("tasks[{i}]: {e}"))?;
                        let hi = literal(hi, "values").map_err(|e| format!("tasks[{i}]: {e}"))?;
                        format!("{col} BETWEEN {lo} AND {hi}")
                    }
                    _ => {
                        return Err(format!(
                            "tasks[{i}] (Filter): `op` must be one of equal_to, not_equal_to, less_than, less_than_or_equal_to, greater_than, greater_than_or_equal_to, between, contains"
                        ).into());
                    }
                };
                wheres.push(format!("({pred})"));
            }
            TaskType::Validate => {
                let rule = t.rule.ok_or(format!("tasks[{i}] (Validate): `rule` is required"))?;
                let col = || -> Result<String, String> { known(&need(t.source.as_ref(), "source")?, i, "source") };
                let pred = match rule {
                    Rule::NonNull => format!("{} IS NOT NULL", col()?),
                    Rule::NonZero => format!("{} <> 0", col()?),
                    Rule::NonNegative => format!("{} >= 0", col()?),
                    Rule::Numeric => {
                        let c = col()?;
                        format!("{c} IS NULL OR TRY_CAST(CAST({c} AS VARCHAR) AS DOUBLE) IS NOT NULL")
                    }
                    Rule::Range => {
                        let c = col()?;
                        let mut parts = Vec::new();
                        if let Some(min) = &t.min {
                            parts.push(format!(
                                "{c} >= {}",
                                literal(min, "min").map_err(|e| format!("tasks[{i}]: {e}"))?
                            ));
                        }
                        if let Some(max) = &t.max {
                            parts.push(format!(
                                "{c} <= {}",
                                literal(max, "max").map_err(|e| format!("tasks[{i}]: {e}"))?
                            ));
                        }
                        if parts.is_empty() {
                            return Err(format!("tasks[{i}] (Validate): `range` needs `min`, `max` or both").into());
                        }
                        parts.join(" AND ")
                    }
                    Rule::Regex => {
                        let p = t.pattern.as_ref().ok_or(format!("tasks[{i}] (Validate): `regex` needs `pattern`"))?;
                        format!("regexp_like(CAST({} AS VARCHAR), {})", col()?, text(p))
                    }
                    Rule::Sql => {
                        let p =
                            t.predicate.as_ref().ok_or(format!("tasks[{i}] (Validate): `sql` needs `predicate`"))?;
                        format!("({p})")
                    }
                };
                let name = t.name.clone().unwrap_or_else(|| match &t.source {
                    Some(s) => format!("{}({s})", rule_name(rule)),
                    None => rule_name(rule).to_owned(),
                });
                // A null outcome (a null input) passes, as in a CHECK constraint.
                let broken = format!("({pred}) IS FALSE");
                match t.action.unwrap_or_default() {
                    Action::Drop => wheres.push(format!("NOT ({broken})")),
                    Action::Dlq => dlq.push((name, broken)),
                    Action::Fail => fail.push((name, broken)),
                }
            }
        }
    }
    if out.is_empty() {
        return Err("tasks: no output columns; add `map` or `map_all` tasks".into());
    }
    for m in META {
        if !out.iter().any(|(n, _)| n == m) {
            out.push((m.to_owned(), ident(m)));
        }
    }
    let mut select: Vec<String> = out.iter().map(|(n, e)| format!("{e} AS {}", ident(n))).collect();
    for (column, rules) in [(VIOLATION_COLUMN, &dlq), (FAILURE_COLUMN, &fail)] {
        if !rules.is_empty() {
            let whens: Vec<String> = rules.iter().map(|(n, b)| format!("WHEN {b} THEN {}", text(n))).collect();
            select.push(format!("CASE {} END AS {}", whens.join(" "), ident(column)));
        }
    }
    let mut sql = format!("SELECT {} FROM source", select.join(", "));
    if !wheres.is_empty() {
        sql.push_str(&format!(" WHERE {}", wheres.join(" AND ")));
    }
    Ok(sql)
}

fn rule_name(r: Rule) -> &'static str {
    match r {
        Rule::NonNull => "non_null",
        Rule::NonZero => "non_zero",
        Rule::NonNegative => "non_negative",
        Rule::Numeric => "numeric",
        Rule::Range => "range",
        Rule::Regex => "regex",
        Rule::Sql => "sql",
    }
}

/// `"{last}, {first}"` as `concat` arguments.
fn layout(
    format: &str,
    sources: &[String],
    i: usize,
    known: &dyn Fn(&str, usize, &str) -> Result<String, String>,
) -> Result<Vec<String>, String> {
    let mut parts = Vec::new();
    let mut rest = format;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(text(&rest[..open]));
        }
        let close = rest[open..].find('}').ok_or(format!("tasks[{i}] (Merge): `format` has `{{` without `}}`"))?;
        let name = &rest[open + 1..open + close];
        if !sources.iter().any(|s| s == name) {
            return Err(format!("tasks[{i}] (Merge): `format` names `{{{name}}}`, which is not in `sources`"));
        }
        parts.push(format!("CAST({} AS VARCHAR)", known(name, i, "format")?));
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        parts.push(text(rest));
    }
    Ok(parts)
}

/// Refuses fields the task's type does not use, so a typo or a misplaced field is an error
/// rather than silently ignored.
fn check_fields(t: &Task, i: usize) -> Result<(), String> {
    let used: &[&str] = match t.kind {
        TaskType::Map => &["source", "target", "cast"],
        TaskType::MapAll => &[],
        TaskType::Merge => &["sources", "target", "separator", "format"],
        TaskType::Arithmetic => &["sources", "target", "op", "value"],
        TaskType::Mask => &["source", "mode", "n", "char"],
        TaskType::Truncate => &["source", "length"],
        TaskType::Filter => &["source", "op", "value", "values"],
        TaskType::Validate => &["source", "rule", "min", "max", "pattern", "predicate", "action", "name"],
    };
    let set: [(&str, bool); 20] = [
        ("source", t.source.is_some()),
        ("sources", !t.sources.is_empty()),
        ("target", t.target.is_some()),
        ("cast", t.cast.is_some()),
        ("separator", t.separator.is_some()),
        ("format", t.format.is_some()),
        ("op", t.op.is_some()),
        ("value", t.value.is_some()),
        ("values", !t.values.is_empty()),
        ("mode", t.mode.is_some()),
        ("n", t.n.is_some()),
        ("char", t.char.is_some()),
        ("length", t.length.is_some()),
        ("rule", t.rule.is_some()),
        ("min", t.min.is_some()),
        ("max", t.max.is_some()),
        ("pattern", t.pattern.is_some()),
        ("predicate", t.predicate.is_some()),
        ("action", t.action.is_some()),
        ("name", t.name.is_some()),
    ];
    for (field, present) in set {
        if present && !used.contains(&field) {
            return Err(format!("tasks[{i}] ({:?}): `{field}` is not a field of this task type", t.kind));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn task(yaml_like: serde_json::Value) -> Task {
        serde_json::from_value(yaml_like).unwrap()
    }

    fn cols() -> Vec<String> {
        ["id", "name", "amount"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn tasks_compile_to_one_select() {
        let tasks = [
            task(serde_json::json!({"type": "map", "source": "id", "target": "order_id"})),
            task(serde_json::json!({"type": "mask", "source": "name", "mode": "first", "n": 2})),
            task(serde_json::json!({"type": "filter", "source": "amount", "op": "greater_than", "value": 5})),
            task(serde_json::json!({"type": "validate", "source": "name", "rule": "non_null"})),
            task(
                serde_json::json!({"type": "validate", "source": "amount", "rule": "range", "max": 10, "action": "drop"}),
            ),
        ];
        let sql = compile(&tasks, &cols()).unwrap();
        assert_eq!(
            sql,
            "SELECT \"id\" AS \"order_id\", mask(CAST(\"name\" AS VARCHAR), 'first', 2, '*') AS \"name\", \
             \"_op\" AS \"_op\", \"_key\" AS \"_key\", \"_ts\" AS \"_ts\", \
             CASE WHEN (\"name\" IS NOT NULL) IS FALSE THEN 'non_null(name)' END AS \"__sluice_violation\" \
             FROM source WHERE (\"amount\" > 5) AND NOT ((\"amount\" <= 10) IS FALSE)"
        );
    }

    #[test]
    fn mistakes_name_the_task_and_field() {
        let e = compile(&[task(serde_json::json!({"type": "truncate", "source": "name"}))], &cols()).unwrap_err();
        assert!(e.0.contains("tasks[0]") && e.0.contains("`length`"), "{e}");
        let e = compile(&[task(serde_json::json!({"type": "map", "source": "name", "cast": "money"}))], &cols())
            .unwrap_err();
        assert!(e.0.contains("unknown type `money`"), "{e}");
        let e =
            compile(&[task(serde_json::json!({"type": "filter", "source": "id", "op": "add", "value": 1}))], &cols())
                .unwrap_err();
        assert!(e.0.contains("`op` must be one of"), "{e}");
        let e = compile(&[task(serde_json::json!({"type": "validate", "source": "id", "rule": "non_null"}))], &cols())
            .unwrap_err();
        assert!(e.0.contains("no output columns"), "{e}");
        let e = compile(
            &[task(
                serde_json::json!({"type": "merge", "sources": ["id", "name"], "target": "x", "format": "{id}-{nme}"}),
            )],
            &cols(),
        )
        .unwrap_err();
        assert!(e.0.contains("{nme}"), "{e}");
        assert_eq!(ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(text("it's"), "'it''s'");
    }
}
