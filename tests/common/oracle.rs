//! The oracle of the fault tests: every record of a generated range checked.
//!
//! Records carry a unique `seq` and a per-key (`id`) `version`. Nothing may be lost; duplicates
//! are bounded by the caller (the in-flight window per fault); once duplicates are removed each
//! key's versions arrive in order.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::{counts_of, run};

/// The most records a worker holds unacknowledged: one batch (the runtime's default
/// `max_records`). A kill re-delivers at most that many per kill.
pub const IN_FLIGHT_WINDOW: usize = 5000;

/// What the oracle found.
#[derive(Debug)]
#[allow(dead_code)] // printed in the fault summary lines
pub struct Verdict {
    /// Rows delivered.
    pub delivered: usize,
    /// Distinct `seq`s among them.
    pub distinct: usize,
    /// Rows delivered more than once.
    pub duplicates: usize,
}

/// Checks rows with `seq`, `id` and `version` against the generated range `0..count`.
pub fn oracle(rows: &[Value], count: u64) -> Verdict {
    let seqs = counts_of(rows, "seq");
    let missing: Vec<u64> = (0..count).filter(|s| !seqs.contains_key(&(*s as i64))).collect();
    assert!(missing.is_empty(), "lost {} records, e.g. {:?}", missing.len(), &missing[..missing.len().min(10)]);
    assert_eq!(seqs.len() as u64, count, "records outside the generated range arrived");
    let mut last: HashMap<i64, i64> = HashMap::new();
    let mut seen = BTreeSet::new();
    for r in rows {
        let (seq, id, version) = (field(r, "seq"), field(r, "id"), field(r, "version"));
        if !seen.insert(seq) {
            continue;
        }
        if let Some(prev) = last.insert(id, version) {
            assert!(version > prev, "key {id}: version {version} arrived after {prev}");
        }
    }
    Verdict { delivered: rows.len(), distinct: seqs.len(), duplicates: rows.len() - seqs.len() }
}

fn field(r: &Value, name: &str) -> i64 {
    r[name].as_i64().unwrap_or_else(|| panic!("a row without `{name}`: {r}"))
}

/// `sluice status` for `flow`: its run line and ledger line.
pub fn status_of(cfg: &str, dir: &Path, flow: &str) -> String {
    let s = run(&["status", cfg], dir, &[], Duration::from_secs(120));
    assert_eq!(s.code(), Some(0), "{}", s.stderr);
    let at = s.stdout.find(&format!("flow {flow}:")).unwrap_or_else(|| panic!("{}", s.stdout));
    s.stdout[at..].lines().take(2).collect::<Vec<_>>().join("\n")
}

/// Checks that a status's ledger balances (`read = delivered + filtered + dlq + dropped + in
/// flight`); returns those six numbers.
pub fn balanced(status: &str) -> Vec<u64> {
    let nums: Vec<u64> = status.split(['=', '+', ' ']).filter_map(|w| w.trim_end_matches(',').parse().ok()).collect();
    assert!(nums.len() >= 6, "no ledger in: {status}");
    let n = &nums[nums.len() - 6..];
    assert_eq!(n[0], n[1] + n[2] + n[3] + n[4] + n[5], "the ledger balances: {status}");
    n.to_vec()
}
