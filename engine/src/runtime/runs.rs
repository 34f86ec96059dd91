//! Run records in the compacted `sluice.runs` topic: every run of every flow, each keyed by
//! `flow/run_id`, so compaction keeps each run's last record — the history — rather than only
//! each flow's latest run. (Records written before history was kept are keyed by the flow
//! alone; they read the same.)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::FutureRecord;

use super::dead_letters::{confirm, enqueue};
use crate::kafka::{self, KafkaSettings};
use crate::ledger::{Ledger, LedgerSnapshot, RunRecord, RunStatus};
use crate::producer::Producer;
use crate::record::now_ms;

/// Publishes a flow's run record to the runs topic ([`KafkaSettings::runs_topic`]): every few seconds while the flow
/// runs, and once more, with the outcome, when it ends.
pub struct RunReporter {
    record: Arc<std::sync::Mutex<RunRecord>>,
    settings: KafkaSettings,
    /// `None` when no producer could be built: the run goes on unreported.
    producer: Option<Producer>,
    ledger: Arc<Ledger>,
    ticker: tokio::task::JoinHandle<()>,
}

/// How often a running flow's record is refreshed.
const REPORT_EVERY: Duration = Duration::from_secs(5);
/// How long the final record may take to publish before the process exits without it.
const FINAL_REPORT_LIMIT: Duration = Duration::from_secs(5);

impl RunReporter {
    /// Starts reporting run `run_id` of `flow` (part of pull `pull_id`, going on from run
    /// `resumes` if it resumes one, started by `trigger`), counted by `ledger`.
    pub fn start(
        settings: &KafkaSettings,
        flow: &str,
        run_id: &str,
        pull_id: &str,
        resumes: Option<&str>,
        trigger: &str,
        ledger: Arc<Ledger>,
    ) -> RunReporter {
        let now = now_ms();
        let record = Arc::new(std::sync::Mutex::new(RunRecord {
            flow: flow.to_owned(),
            run_id: run_id.to_owned(),
            status: RunStatus::Running,
            started_ms: now,
            updated_ms: now,
            counts: LedgerSnapshot::default(),
            error: None,
            pull_id: Some(pull_id.to_owned()),
            resumes: resumes.map(str::to_owned),
            host: Some(crate::ledger::host_name()),
            pid: Some(std::process::id()),
            trigger: Some(trigger.to_owned()),
            position_start: None,
            position_end: None,
        }));
        let producer = settings.producer("sluice.runs").ok();
        let (r, s, l, p) = (record.clone(), settings.clone(), ledger.clone(), producer.clone());
        let ticker = tokio::spawn(async move {
            let Some(producer) = p else { return };
            if s.ensure_topics(&[&s.runs_topic()]).await.is_err() {
                return;
            }
            loop {
                // `.ok()` at once: a poisoned lock's error holds the guard, which must not live
                // across the await below.
                let rec = r
                    .lock()
                    .map(|mut rec| {
                        rec.counts = l.snapshot();
                        rec.updated_ms = now_ms();
                        rec.clone()
                    })
                    .ok();
                if let Some(rec) = rec {
                    let _ = publish_run(&producer, &s.runs_topic(), &rec).await;
                }
                tokio::time::sleep(REPORT_EVERY).await;
            }
        });
        RunReporter { record, settings: settings.clone(), producer, ledger, ticker }
    }

    /// Notes where the source stood when the run started (see [`RunRecord::position_start`]).
    pub fn position_start(&self, position: Option<serde_json::Value>) {
        if let Ok(mut rec) = self.record.lock() {
            rec.position_start = position;
        }
    }

    /// Publishes the final record with `status` (and the error, if it failed), and where the
    /// source stood at the end. Bounded: a cluster that is gone does not hold the process.
    pub async fn finish(self, status: RunStatus, error: Option<String>, position_end: Option<serde_json::Value>) {
        self.ticker.abort();
        let Ok(rec) = self.record.lock().map(|mut rec| {
            rec.status = status;
            rec.error = error;
            rec.position_end = position_end;
            rec.counts = self.ledger.snapshot();
            rec.updated_ms = now_ms();
            rec.clone()
        }) else {
            return;
        };
        let (settings, producer) = (self.settings, self.producer);
        let topic = settings.runs_topic();
        let publish = async {
            // The ticker may not have got as far as creating the topic (a short run).
            settings.ensure_topics(&[&topic]).await.ok()?;
            publish_run(producer.as_ref()?, &topic, &rec).await.ok()
        };
        if tokio::time::timeout(FINAL_REPORT_LIMIT, publish).await.ok().flatten().is_none() {
            tracing::warn!("the run record could not be written to {topic}");
        }
    }
}

async fn publish_run(producer: &Producer, topic: &str, rec: &RunRecord) -> Result<(), KafkaError> {
    let payload = serde_json::to_vec(rec).unwrap_or_default();
    let key = format!("{}/{}", rec.flow, rec.run_id);
    let f = enqueue(producer, FutureRecord::to(topic).key(key.as_bytes()).payload(payload.as_slice())).await?;
    confirm(vec![f]).await
}

/// Every run's last record, from the runs topic, oldest first (by start).
pub async fn run_history(settings: &KafkaSettings) -> Result<Vec<RunRecord>, kafka::KafkaSetupError> {
    let records = kafka::read_topic(settings, &settings.runs_topic(), usize::MAX)
        .await?
        .into_iter()
        .filter_map(|m| m.payload.as_deref().and_then(|p| serde_json::from_slice::<RunRecord>(p).ok()));
    Ok(history(records))
}

/// Each run's newest record (runs spread over partitions: their records are ordered by the
/// time they were written, not by offset), oldest run first.
fn history(records: impl Iterator<Item = RunRecord>) -> Vec<RunRecord> {
    let mut by_run: HashMap<(String, String), RunRecord> = HashMap::new();
    for rec in records {
        let key = (rec.flow.clone(), rec.run_id.clone());
        if by_run.get(&key).is_none_or(|seen| seen.updated_ms <= rec.updated_ms) {
            by_run.insert(key, rec);
        }
    }
    let mut runs: Vec<RunRecord> = by_run.into_values().collect();
    runs.sort_by(|a, b| (a.started_ms, a.updated_ms, &a.run_id).cmp(&(b.started_ms, b.updated_ms, &b.run_id)));
    runs
}

/// The latest run record of each flow, from the runs topic.
pub async fn latest_runs(settings: &KafkaSettings) -> Result<HashMap<String, RunRecord>, kafka::KafkaSetupError> {
    // Oldest first: each flow's last insert is its latest run.
    Ok(run_history(settings).await?.into_iter().map(|r| (r.flow.clone(), r)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(flow: &str, run: &str, started: i64, updated: i64, status: RunStatus) -> RunRecord {
        RunRecord {
            flow: flow.into(),
            run_id: run.into(),
            status,
            started_ms: started,
            updated_ms: updated,
            counts: LedgerSnapshot::default(),
            error: None,
            pull_id: None,
            resumes: None,
            host: None,
            pid: None,
            trigger: None,
            position_start: None,
            position_end: None,
        }
    }

    #[test]
    fn each_run_keeps_its_newest_record_whatever_the_read_order() {
        let records = vec![
            rec("a", "r2", 20, 25, RunStatus::Succeeded),
            rec("a", "r1", 10, 12, RunStatus::Running),
            rec("b", "r3", 15, 16, RunStatus::Failed),
            rec("a", "r1", 10, 18, RunStatus::Succeeded),
            rec("a", "r2", 20, 21, RunStatus::Running),
        ];
        let h = history(records.into_iter());
        let seen: Vec<(&str, RunStatus)> = h.iter().map(|r| (r.run_id.as_str(), r.status)).collect();
        assert_eq!(seen, vec![("r1", RunStatus::Succeeded), ("r3", RunStatus::Failed), ("r2", RunStatus::Succeeded)]);
    }
}
