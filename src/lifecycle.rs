//! A flow's life in `sluice run`: when it may run, and what happens after a run ends.
//!
//! A flow runs only while its state (kept in Kafka, see `runtime::flow_state`) is active: a
//! paused or deactivated flow waits, and a run in progress when its flow is paused finishes
//! its batch, commits and stops (the next run goes on from there). On-demand flows run once;
//! continuous flows run until stopped, and with `deactivate_after_failures` a failed one is
//! restarted; scheduled flows run at each time of their schedule. A scheduled or continuous
//! flow whose runs fail `deactivate_after_failures` times in a row is deactivated — AppFlow's
//! error deactivation threshold — until `sluice flows resume` (or the API) makes it active.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_engine::kafka::KafkaSettings;
use sluice_engine::ledger::{Ledger, LedgerSnapshot, RunStatus};
use sluice_engine::runtime::{self, FlowState, FlowStateRecord, state_of};
use sluice_engine::telemetry::FlowMetrics;
use sluice_sql::SqlStage;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Flow, Trigger};
use crate::plan::plan_flow;
use crate::run::{flow_context, one_run, summary_line};

/// What a flow's task ends with: its name, the last run's result (where rows went), how long
/// it ran and the last run's counts.
pub(crate) type Outcome = (String, anyhow::Result<String>, Duration, LedgerSnapshot);

/// The flows' states as last read from Kafka.
pub(crate) type States = watch::Receiver<HashMap<String, FlowStateRecord>>;

/// One flow's task in `sluice run`.
pub(crate) struct FlowTask {
    pub(crate) cfg: Config,
    pub(crate) flow: Flow,
    pub(crate) own: KafkaSettings,
    pub(crate) shutdown: CancellationToken,
    pub(crate) metrics: Arc<FlowMetrics>,
    pub(crate) states: States,
    /// `--fresh`: on-demand runs start a new pull.
    pub(crate) fresh: bool,
    /// Runs asked for through the API (`POST /flows/{name}/runs`), for on-demand and scheduled
    /// flows when the API is on: an on-demand flow then waits for them after its run.
    pub(crate) requests: Option<tokio::sync::mpsc::Receiver<()>>,
}

impl FlowTask {
    /// Runs the flow as its trigger says, `ledger` counting its first run.
    pub(crate) async fn run(mut self, stage: SqlStage, ledger: Arc<Ledger>) -> Outcome {
        let started = Instant::now();
        let name = self.flow.name.clone();
        let r = match self.flow.trigger {
            Trigger::OnDemand => self.on_demand(stage, &ledger).await,
            Trigger::Continuous => self.continuous(stage, &ledger).await,
            Trigger::Scheduled => self.scheduled(stage, &ledger).await,
        };
        (name, r, started.elapsed(), ledger.snapshot())
    }

    async fn on_demand(&mut self, stage: SqlStage, ledger: &Arc<Ledger>) -> anyhow::Result<String> {
        let mut r = self.on_demand_run(stage, ledger.clone(), self.fresh).await;
        // With the API on, the flow runs again whenever it is asked to, until shutdown.
        while self.requests.is_some() {
            let asked = match self.requests.as_mut() {
                Some(rx) => tokio::select! {
                    got = rx.recv() => got.is_some(),
                    _ = self.shutdown.cancelled() => false,
                },
                None => false,
            };
            if !asked {
                break;
            }
            if let Err(e) = &r {
                eprintln!("error: flow `{}` failed: {e:#}", self.flow.name);
            }
            r = match self.stage(&mut None).await {
                Ok(stage) => self.on_demand_run(stage, Ledger::shared(), false).await,
                Err(e) => Err(e),
            };
            if let Ok(dest) = &r {
                let name = &self.flow.name;
                tracing::info!(flow = %name, destination = %dest, "run asked through the API done");
            }
        }
        r
    }

    /// One on-demand run, unless the flow is paused or deactivated.
    async fn on_demand_run(&mut self, stage: SqlStage, ledger: Arc<Ledger>, fresh: bool) -> anyhow::Result<String> {
        let state = self.current();
        if state.state != FlowState::Active {
            self.metrics.set_state(state.state);
            eprintln!("flow `{}` {}: not run", self.flow.name, describe(&state));
            return Ok(String::new());
        }
        let token = self.run_token();
        let ctx = flow_context(&self.flow, &self.own, ledger, self.metrics.clone(), &token);
        let r = one_run(&self.cfg, &self.flow, &ctx, stage, fresh).await;
        token.cancel();
        r
    }

    async fn continuous(&mut self, stage: SqlStage, first: &Arc<Ledger>) -> anyhow::Result<String> {
        let mut stage = Some(stage);
        let mut ledger = Some(first.clone());
        let mut failures = self.prior_failures().await;
        loop {
            if !self.until_active(&mut failures).await {
                return Ok(String::new());
            }
            let stage = self.stage(&mut stage).await?;
            let token = self.run_token();
            let ledger = ledger.take().unwrap_or_else(Ledger::shared);
            let ctx = flow_context(&self.flow, &self.own, ledger, self.metrics.clone(), &token);
            let r = one_run(&self.cfg, &self.flow, &ctx, stage, false).await;
            let paused = token.is_cancelled() && !self.shutdown.is_cancelled();
            token.cancel();
            if self.shutdown.is_cancelled() {
                return r;
            }
            match r {
                // Paused: wait to be resumed, then go on from the stored positions.
                _ if paused => tracing::info!(flow = %self.flow.name, "paused: the run stopped after its batch"),
                Ok(dest) => return Ok(dest),
                Err(e) => {
                    let Some(limit) = self.flow.deactivate_after_failures else { return Err(e) };
                    failures += 1;
                    eprintln!("error: flow `{}` failed ({failures} in a row): {e:#}", self.flow.name);
                    if failures >= limit {
                        self.deactivate(failures, &e).await;
                        continue;
                    }
                    // Restarted after a pause that grows with the failures, as Redpanda Connect
                    // restarts a failed pipeline.
                    let wait = Duration::from_secs(1 << (failures - 1).min(5));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.shutdown.cancelled() => return Err(e),
                    }
                }
            }
        }
    }

    /// A scheduled flow: an on-demand run at each time of its schedule, until shutdown. A run
    /// that fails is reported and the next one still happens (as AppFlow's scheduled flows do);
    /// a run still going when its next time comes delays that time, never overlaps it.
    async fn scheduled(&mut self, stage: SqlStage, first: &Arc<Ledger>) -> anyhow::Result<String> {
        let name = self.flow.name.clone();
        let Some(schedule) = self.flow.schedule.clone() else {
            anyhow::bail!("a scheduled flow without a schedule");
        };
        let mut stage = Some(stage);
        let mut ledger = Some(first.clone());
        let mut runs = 0u64;
        let mut failures = self.prior_failures().await;
        // A state written after this (a resume after a deactivation) forgives the failures.
        let mut seen_state_ms = self.current().updated_ms;
        loop {
            let Some(next) = schedule.next_after(chrono::Utc::now()) else {
                tracing::warn!(flow = %name, schedule = %schedule.text, "the schedule has no next time; stopping");
                break;
            };
            let wait = (next - chrono::Utc::now()).to_std().unwrap_or_default();
            tracing::info!(flow = %name, at = %next.with_timezone(&schedule.timezone), "next scheduled run");
            let asked = async {
                match self.requests.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                // A run asked for through the API: now, and the schedule goes on after it.
                Some(()) = asked => tracing::info!(flow = %name, "run asked through the API"),
                _ = self.shutdown.cancelled() => break,
            }
            let state = self.current();
            if state.state != FlowState::Active {
                self.metrics.set_state(state.state);
                tracing::info!(flow = %name, state = state.state.name(), "scheduled run skipped: the flow is not active");
                continue;
            }
            if state.updated_ms > seen_state_ms {
                seen_state_ms = state.updated_ms;
                failures = 0;
            }
            self.metrics.set_state(FlowState::Active);
            let stage = self.stage(&mut stage).await?;
            let token = self.run_token();
            let ledger = ledger.take().unwrap_or_else(Ledger::shared);
            let ctx = flow_context(&self.flow, &self.own, ledger.clone(), self.metrics.clone(), &token);
            let run_started = Instant::now();
            let r = one_run(&self.cfg, &self.flow, &ctx, stage, false).await;
            token.cancel();
            runs += 1;
            let counts = ledger.snapshot();
            match &r {
                Ok(dest) => {
                    failures = 0;
                    let dlq = self.own.dlq_topic(&name);
                    println!("{}", summary_line(&name, &counts, run_started.elapsed(), dest, &dlq));
                }
                Err(e) => {
                    eprintln!("error: flow `{name}`: scheduled run {runs} failed: {e:#}");
                    failures += 1;
                    if self.flow.deactivate_after_failures.is_some_and(|limit| failures >= limit) {
                        self.deactivate(failures, e).await;
                    }
                }
            }
            if self.shutdown.is_cancelled() {
                break;
            }
        }
        tracing::info!(flow = %name, runs, "scheduled flow stopped");
        Ok(String::new())
    }

    /// The SQL stage for the next run: the one planned at start, the first time; after that a
    /// new one (a stage goes with its run; the SQL was checked at start).
    async fn stage(&self, planned: &mut Option<SqlStage>) -> anyhow::Result<SqlStage> {
        match planned.take() {
            Some(s) => Ok(s),
            None => plan_flow(&self.flow, Some(&self.cfg.connections)).await.map_err(|e| anyhow::anyhow!(e)),
        }
    }

    /// The flow's state as last read.
    fn current(&self) -> FlowStateRecord {
        let states = self.states.borrow();
        states.get(&self.flow.name).cloned().unwrap_or_else(|| FlowStateRecord {
            flow: self.flow.name.clone(),
            state: FlowState::Active,
            reason: None,
            updated_ms: 0,
        })
    }

    /// Waits until the flow is active; false when shutdown came first. A flow made active
    /// again starts counting failures afresh.
    async fn until_active(&mut self, failures: &mut u32) -> bool {
        let mut said = false;
        loop {
            let state = self.current();
            if state.state == FlowState::Active {
                self.metrics.set_state(FlowState::Active);
                if said {
                    *failures = 0;
                    tracing::info!(flow = %self.flow.name, "resumed");
                }
                return true;
            }
            if !said {
                self.metrics.set_state(state.state);
                tracing::info!(flow = %self.flow.name, state = state.state.name(), "not running: {}", describe(&state));
                said = true;
            }
            tokio::select! {
                r = self.states.changed() => if r.is_err() { return false },
                _ = self.shutdown.cancelled() => return false,
            }
        }
    }

    /// A token for one run: cancelled on shutdown, or as soon as the flow stops being active
    /// (the run then finishes its batch, commits and stops).
    fn run_token(&self) -> CancellationToken {
        let token = self.shutdown.child_token();
        let (t, name, mut states) = (token.clone(), self.flow.name.clone(), self.states.clone());
        tokio::spawn(async move {
            loop {
                if state_of(&states.borrow_and_update(), &name) != FlowState::Active {
                    t.cancel();
                    return;
                }
                tokio::select! {
                    r = states.changed() => if r.is_err() { return },
                    _ = t.cancelled() => return,
                }
            }
        });
        token
    }

    /// Failed runs in a row in the flow's history since it was last made active, so a restart
    /// of the process does not forget them.
    async fn prior_failures(&self) -> u32 {
        if self.flow.deactivate_after_failures.is_none() {
            return 0;
        }
        let since = self.current().updated_ms;
        let Ok(history) = runtime::run_history(&self.own).await else { return 0 };
        let ours = history.iter().rev().filter(|r| r.flow == self.flow.name && r.started_ms >= since);
        ours.take_while(|r| r.status == RunStatus::Failed).count() as u32
    }

    /// Deactivates the flow after `failures` failed runs in a row, the last with `error`, and
    /// waits until the process has read it back (so the next turn sees it).
    async fn deactivate(&mut self, failures: u32, error: &anyhow::Error) {
        let name = self.flow.name.clone();
        let reason = format!("{failures} failed runs in a row; the last: {error:#}");
        let reason = sluice_engine::secret::redact(&reason).into_owned();
        match runtime::set_flow_state(&self.own, &name, FlowState::Deactivated, Some(reason)).await {
            Ok(_) => {
                eprintln!(
                    "error: flow `{name}` deactivated after {failures} failed runs in a row; `sluice flows resume CONFIG \
                     {name}` runs it again"
                );
                self.metrics.set_state(FlowState::Deactivated);
                let seen = self.states.wait_for(|s| state_of(s, &name) != FlowState::Active);
                let _ = tokio::time::timeout(runtime::STATE_POLL * 5, seen).await;
            }
            Err(e) => eprintln!("error: flow `{name}`: deactivating it after {failures} failed runs: {e}"),
        }
    }
}

/// "is paused (since …: reason)" for messages.
pub(crate) fn describe(state: &FlowStateRecord) -> String {
    let since = chrono::DateTime::from_timestamp_millis(state.updated_ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default();
    let reason = state.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
    format!(
        "is {} (since {since}{reason}); `sluice flows resume CONFIG {}` makes it active",
        state.state.name(),
        state.flow
    )
}
