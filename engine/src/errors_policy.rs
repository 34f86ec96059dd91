//! What a flow does with a record it cannot process: dead-letter it (the default), drop it
//! (counted), or stop — plus a threshold of bad records per time window past which the flow
//! stops as failed, because a flood of bad records usually means a broken upstream, not a few
//! odd rows.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::error::FlowError;

/// What to do with a bad record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ErrorMode {
    /// Write it to `sluice.<flow>.dlq` with the reason, then go on.
    #[default]
    Dlq,
    /// Count it and go on; nothing is kept.
    Drop,
    /// Stop the flow with the reason; nothing past it is committed.
    Fail,
}

/// A flow's `errors:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorPolicy {
    /// `dlq` (default), `drop` or `fail`.
    #[serde(default)]
    pub policy: ErrorMode,
    /// Stop the flow as failed when more than this many bad records arrive within
    /// `window_secs`. Unset: no limit.
    pub max_errors: Option<u64>,
    /// The window for `max_errors`, in seconds (at least 1).
    #[serde(default = "default_window")]
    pub window_secs: std::num::NonZeroU64,
}

impl Default for ErrorPolicy {
    fn default() -> Self {
        ErrorPolicy { policy: ErrorMode::default(), max_errors: None, window_secs: default_window() }
    }
}

fn default_window() -> std::num::NonZeroU64 {
    std::num::NonZeroU64::new(60).unwrap_or(std::num::NonZeroU64::MIN)
}

/// Counts a flow's bad records against its policy; shared by the source and sink halves.
#[derive(Debug, Default)]
pub struct ErrorGate {
    policy: ErrorPolicy,
    /// Bad records seen in the current window, by arrival time.
    recent: Mutex<VecDeque<(Instant, u64)>>,
}

impl ErrorGate {
    /// A gate enforcing `policy`.
    pub fn new(policy: ErrorPolicy) -> Self {
        ErrorGate { policy, recent: Mutex::new(VecDeque::new()) }
    }

    /// The mode for bad records.
    pub fn mode(&self) -> ErrorMode {
        self.policy.policy
    }

    /// Notes `n` bad records of flow `flow` at `stage`, the first of which failed with
    /// `reason`. `Err` when the policy says the flow must stop.
    pub fn admit(&self, flow: &str, stage: &str, n: u64, reason: &str) -> Result<(), FlowError> {
        if n == 0 {
            return Ok(());
        }
        if self.policy.policy == ErrorMode::Fail {
            return Err(FlowError::BadRecord {
                flow: flow.to_owned(),
                why: format!("{stage}: {reason} (errors.policy is `fail`)"),
            });
        }
        let Some(max) = self.policy.max_errors else { return Ok(()) };
        let window = Duration::from_secs(self.policy.window_secs.get());
        let now = Instant::now();
        let Ok(mut recent) = self.recent.lock() else { return Ok(()) };
        while recent.front().is_some_and(|(t, _)| now.duration_since(*t) > window) {
            recent.pop_front();
        }
        recent.push_back((now, n));
        let total: u64 = recent.iter().map(|(_, k)| k).sum();
        if total > max {
            return Err(FlowError::BadRecord {
                flow: flow.to_owned(),
                why: format!(
                    "{total} bad records within {} s exceed errors.max_errors = {max}; the latest, at {stage}: {reason}",
                    self.policy.window_secs
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fail_stops_at_the_first_bad_record_with_its_reason() {
        let g = ErrorGate::new(ErrorPolicy { policy: ErrorMode::Fail, ..ErrorPolicy::default() });
        assert!(g.admit("f", "sql", 0, "").is_ok());
        let e = g.admit("f", "decode", 1, "line 3: invalid JSON").unwrap_err().to_string();
        assert!(e.contains("line 3: invalid JSON") && e.contains("`fail`"), "{e}");
    }

    #[test]
    fn a_threshold_counts_within_its_window() {
        let g = ErrorGate::new(ErrorPolicy {
            policy: ErrorMode::Dlq,
            max_errors: Some(5),
            window_secs: std::num::NonZeroU64::new(60).unwrap(),
        });
        g.admit("f", "sql", 3, "x").unwrap();
        g.admit("f", "sql", 2, "x").unwrap();
        let e = g.admit("f", "sql", 1, "bad type").unwrap_err().to_string();
        assert!(e.contains("6 bad records within 60 s exceed errors.max_errors = 5") && e.contains("bad type"), "{e}");
        let g = ErrorGate::new(ErrorPolicy {
            policy: ErrorMode::Drop,
            max_errors: Some(1),
            window_secs: std::num::NonZeroU64::MIN,
        });
        g.admit("f", "sql", 1, "x").unwrap();
        std::thread::sleep(Duration::from_millis(1005));
        g.admit("f", "sql", 1, "x").unwrap();
    }
}
