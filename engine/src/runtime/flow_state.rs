//! Whether a flow may run: active, paused by someone, or deactivated after failing too often
//! (AppFlow's error deactivation). Kept in the compacted `<namespace>.flow-states` topic keyed
//! by flow, so a pause survives restarts and every process sharing the cluster obeys it — the
//! cluster is the one place state lives, as Kafka Connect keeps connector state in its status
//! topic.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::producer::FutureRecord;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::dead_letters::{confirm, enqueue};
use crate::kafka::{self, KafkaSettings, KafkaSetupError};
use crate::record::now_ms;

/// A flow's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowState {
    /// Runs as its trigger says.
    #[default]
    Active,
    /// Paused by an operator: no runs until resumed.
    Paused,
    /// Stopped after `deactivate_after_failures` failed runs in a row: no runs until resumed.
    Deactivated,
}

impl FlowState {
    /// How it is written (`active`, `paused`, `deactivated`).
    pub fn name(self) -> &'static str {
        match self {
            FlowState::Active => "active",
            FlowState::Paused => "paused",
            FlowState::Deactivated => "deactivated",
        }
    }
}

/// A flow's state as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FlowStateRecord {
    /// The flow.
    pub flow: String,
    /// Its state.
    pub state: FlowState,
    /// Why: who paused it, or the error of the run that deactivated it.
    #[serde(default)]
    pub reason: Option<String>,
    /// When it was set, ms since the epoch.
    pub updated_ms: i64,
}

/// Sets `flow`'s state, waiting for Kafka's acknowledgement.
pub async fn set_flow_state(
    settings: &KafkaSettings,
    flow: &str,
    state: FlowState,
    reason: Option<String>,
) -> Result<FlowStateRecord, KafkaSetupError> {
    let topic = settings.flow_states_topic();
    settings.ensure_topics(&[&topic]).await?;
    let producer = settings.producer("sluice.flow-states")?;
    let rec = FlowStateRecord { flow: flow.to_owned(), state, reason, updated_ms: now_ms() };
    let payload = serde_json::to_vec(&rec).unwrap_or_default();
    let failed = |e: rdkafka::error::KafkaError| KafkaSetupError::Client {
        context: format!("writing flow `{flow}`'s state to {topic}"),
        message: settings.redact(e),
    };
    let f = enqueue(&producer, FutureRecord::to(&topic).key(flow.as_bytes()).payload(payload.as_slice()))
        .await
        .map_err(failed)?;
    confirm(vec![f]).await.map_err(failed)?;
    Ok(rec)
}

/// Every flow's latest stored state (flows never set are active, and absent here).
pub async fn flow_states(settings: &KafkaSettings) -> Result<HashMap<String, FlowStateRecord>, KafkaSetupError> {
    let topic = settings.flow_states_topic();
    settings.ensure_topics(&[&topic]).await?;
    let mut latest: HashMap<String, FlowStateRecord> = HashMap::new();
    for m in kafka::read_topic(settings, &topic, usize::MAX).await? {
        let Some(rec) = m.payload.as_deref().and_then(|p| serde_json::from_slice::<FlowStateRecord>(p).ok()) else {
            continue;
        };
        if latest.get(&rec.flow).is_none_or(|seen| seen.updated_ms <= rec.updated_ms) {
            latest.insert(rec.flow.clone(), rec);
        }
    }
    Ok(latest)
}

/// How often a running process looks at the flows' states: how long a pause takes to act.
pub const STATE_POLL: Duration = Duration::from_secs(2);

/// Watches the flows' states for a running process: the receiver holds the latest read, and
/// changes as they are read. A read that fails keeps the last known states (a broker restarting
/// does not pause or resume anything).
pub fn watch_flow_states(
    settings: KafkaSettings,
    first: HashMap<String, FlowStateRecord>,
    stop: CancellationToken,
) -> watch::Receiver<HashMap<String, FlowStateRecord>> {
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(STATE_POLL) => {}
                _ = stop.cancelled() => return,
            }
            match flow_states(&settings).await {
                Ok(states) => {
                    tx.send_if_modified(|old| {
                        let changed = *old != states;
                        if changed {
                            *old = states;
                        }
                        changed
                    });
                }
                Err(e) => tracing::debug!(error = %e, "reading the flows' states; keeping the last known"),
            }
        }
    });
    rx
}

/// `flow`'s state in `states`.
pub fn state_of(states: &HashMap<String, FlowStateRecord>, flow: &str) -> FlowState {
    states.get(flow).map_or(FlowState::Active, |r| r.state)
}
