//! Golden-file tests of the SQL stage, through `sluice sql test`: each directory under
//! `tests/golden/` holds a config with a flow `t`, its sample input (`input.jsonl`) and what the
//! command must print (`expected.txt`: exit code, output rows, DLQ rows with reasons, errors).
//!
//! After a deliberate change, `SLUICE_BLESS=1 cargo nextest run --test sql_golden` rewrites
//! the expected files; read the diff before committing it.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

/// 2026-01-01T00:00:00Z: the change time of plain input rows, so `_ts` is the same every run.
const TS_MS: &str = "1767225600000";

fn actual(case: &Path, scratch: &Path) -> String {
    let input = case.join("input.jsonl");
    let config = case.join("flow.yaml");
    let out = common::run(
        &["sql", "test", config.to_str().unwrap(), "t", "--input", input.to_str().unwrap(), "--ts-ms", TS_MS],
        scratch,
        &[],
        Duration::from_secs(60),
    );
    // Paths differ between machines; the file name is what a reader needs.
    let stderr = out.stderr.replace(&format!("{}/", case.display()), "");
    // Log lines start with the time they were written.
    let stderr: String = stderr
        .lines()
        .map(|l| match l.split_once(' ') {
            Some((time, rest)) if time.ends_with('Z') && time.starts_with("20") => format!("{}\n", rest.trim_start()),
            _ => format!("{l}\n"),
        })
        .collect();
    format!("exit: {}\n--- stdout\n{}--- stderr\n{}", out.code().unwrap_or(-1), out.stdout, stderr)
}

#[test]
fn golden_cases() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<_> =
        std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    cases.sort();
    assert!(cases.len() >= 20, "the golden cases went missing from {}", root.display());
    let bless = std::env::var_os("SLUICE_BLESS").is_some();
    let mut failed = Vec::new();
    // The command's output files go to a scratch directory, not beside the cases.
    let scratch = tempfile::tempdir().unwrap();
    for case in &cases {
        let got = actual(case, scratch.path());
        let file = case.join("expected.txt");
        if bless {
            std::fs::write(&file, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&file).unwrap_or_default();
        if got != want {
            failed.push(format!("== {}\n-- expected:\n{want}\n-- got:\n{got}", case.display()));
        }
    }
    assert!(failed.is_empty(), "{} of {} golden cases differ:\n{}", failed.len(), cases.len(), failed.join("\n"));
    eprintln!("{} golden cases match", cases.len());
}
