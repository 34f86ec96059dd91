//! What a flow's SQL may do, checked before DataFusion plans it, and the session it runs in.
//!
//! A flow's query comes from a config file, so it is outside input: it must not be able to
//! write, read files or URLs, spill to disk, recurse for ever, or take the process down. The
//! checks here run before DataFusion sees the text:
//!
//! - exactly one `SELECT` (DDL, DML, `COPY`, `SET`, `EXPLAIN` refused);
//! - at most [`MAX_SQL_BYTES`] of text and expressions at most [`MAX_EXPRESSION_DEPTH`] deep:
//!   DataFusion's planner and optimizer walk expressions recursively, and a chain of ten
//!   thousand `+` overflowed the stack (5,000 took 30 s to plan);
//!
//! and the session ([`session_config`]) has no recursive CTEs (`WITH RECURSIVE` can run for
//! ever, and nothing bounds its working table), no table functions, one partition. The
//! functions that could allocate without bound are replaced by bounded ones
//! ([`crate::bounded`]).

use std::ops::ControlFlow;

use datafusion::prelude::SessionConfig;
use datafusion::sql::parser::{DFParser, Statement as Df};
use datafusion::sql::sqlparser::ast::{Expr, Statement, Visit, Visitor};

use sluice_core::error::Invalid;

/// The longest query text a flow may have. Hand-written queries are a few hundred bytes and
/// task lists compile to a few kilobytes.
pub const MAX_SQL_BYTES: usize = 256 * 1024;

/// How deep expressions may nest (`a + b + c` is two deep). A hand-written expression is rarely
/// ten deep; the limit leaves room for generated ones and keeps planning fast and safe.
pub const MAX_EXPRESSION_DEPTH: usize = 256;

/// The stack the check runs on: the parsed tree is as deep as its expressions, and refusing a
/// tree too deep for the planner takes a walk of it (and dropping it, another).
const CHECK_STACK_BYTES: usize = 64 << 20;

/// Refuses anything but one bounded query, before DataFusion plans it.
pub fn check(sql: &str) -> Result<(), Invalid> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(format!(
            "the query is {} KiB long; a flow's query may be at most {} KiB",
            sql.len() / 1024,
            MAX_SQL_BYTES / 1024
        )
        .into());
    }
    let text = sql.to_owned();
    std::thread::Builder::new()
        .name("sluice-sql-check".into())
        .stack_size(CHECK_STACK_BYTES)
        .spawn(move || check_parsed(&text))
        .map_err(|e| format!("checking the query: {e}"))?
        .join()
        .map_err(|_| "checking the query: the check panicked".to_owned())?
        .map_err(Invalid)
}

fn check_parsed(sql: &str) -> Result<(), String> {
    let statements = DFParser::parse_sql(sql).map_err(|e| e.to_string())?;
    let [statement] = Vec::from(statements)
        .try_into()
        .map_err(|all: Vec<Df>| format!("a flow runs exactly one SELECT statement; this has {}", all.len()))?;
    let what = match &statement {
        Df::Statement(s) if matches!(**s, Statement::Query(_)) => {
            let mut depth = Depth::default();
            if let ControlFlow::Break(()) = s.visit(&mut depth) {
                return Err(format!(
                    "an expression of the query nests more than {MAX_EXPRESSION_DEPTH} deep; \
                     split it (a subquery or a CTE per part)"
                ));
            }
            return Ok(());
        }
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

/// Tracks how deep the expression being visited is.
#[derive(Default)]
struct Depth {
    now: usize,
}

impl Visitor for Depth {
    type Break = ();

    fn pre_visit_expr(&mut self, _expr: &Expr) -> ControlFlow<()> {
        self.now += 1;
        if self.now > MAX_EXPRESSION_DEPTH { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    }

    fn post_visit_expr(&mut self, _expr: &Expr) -> ControlFlow<()> {
        self.now -= 1;
        ControlFlow::Continue(())
    }
}

/// The session every flow plan runs in: one partition (batches stay in order and each input
/// batch maps to one execution), no recursive CTEs.
pub fn session_config() -> SessionConfig {
    let mut config = SessionConfig::new().with_target_partitions(1).with_batch_size(8192);
    config.options_mut().execution.enable_recursive_ctes = false;
    config
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn deep_and_long_queries_are_refused_without_overflowing() {
        assert!(check("SELECT id + 1 AS x FROM source WHERE (a > 1 AND b < 2) OR c = 3").is_ok());
        let chain = |n: usize| format!("SELECT {} AS x FROM source", vec!["id"; n].join(" + "));
        assert!(check(&chain(200)).is_ok());
        for n in [300, 10_000, 50_000] {
            let e = check(&chain(n)).unwrap_err();
            assert!(e.0.contains("nests more than 256 deep"), "{n}: {e}");
        }
        let e = check(&format!("SELECT '{}' FROM source", "x".repeat(300_000))).unwrap_err();
        assert!(e.0.contains("at most 256 KiB"), "{e}");
        let e = check("INSERT INTO t VALUES (1)").unwrap_err();
        assert!(e.0.contains("not INSERT"), "{e}");
    }
}
