//! The flows `sluice run` runs, as a set a reload changes: a flow whose settings (or whose
//! connections' settings, secrets included) changed is stopped — it finishes the batch in
//! hand and commits — and started again; a new flow starts; a removed flow stops; the others
//! are not touched. The management API sees the set as it is now.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use sluice_engine::kafka::KafkaSettings;
use sluice_engine::ledger::Ledger;
use sluice_engine::telemetry::Telemetry;
use sluice_sql::SqlStage;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::Live;
use crate::config::{Config, Flow, Trigger};
use crate::lifecycle::{FlowTask, Outcome, States};

/// What a flow's settings and its connections' settings hash to.
type Fingerprint = (u64, u64, u64);

fn fingerprint(cfg: &Config, flow: &Flow) -> Fingerprint {
    let conn = |name: &str| cfg.connections.get(name).map_or(0, |c| c.fingerprint());
    (flow.fingerprint, conn(&flow.source_connection), conn(&flow.destination_connection))
}

/// A flow's task.
struct Running {
    generation: u64,
    fingerprint: Fingerprint,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

/// How `sluice run` was asked to run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunMode {
    /// The API is on: scheduled flows take runs asked for through it.
    pub(crate) api: bool,
    /// `--serve`: the process stays up after on-demand runs, which the API starts again.
    pub(crate) serve: bool,
    /// `--fresh`: on-demand runs start a new pull.
    pub(crate) fresh: bool,
}

/// The flows of a `sluice run`.
pub(crate) struct Supervisor {
    pub(crate) own: KafkaSettings,
    pub(crate) shutdown: CancellationToken,
    pub(crate) telemetry: Telemetry,
    pub(crate) states: States,
    pub(crate) mode: RunMode,
    /// What the API reads.
    pub(crate) live: Arc<RwLock<Arc<Live>>>,
    running: HashMap<String, Running>,
    /// Flows whose task ended (an on-demand run done), with the settings they ran with: a
    /// reload starts them again only if those changed.
    ended: HashMap<String, Fingerprint>,
    triggers: HashMap<String, mpsc::Sender<()>>,
    generation: u64,
    done_tx: mpsc::UnboundedSender<(u64, Outcome)>,
    done_rx: mpsc::UnboundedReceiver<(u64, Outcome)>,
    cfg: Arc<Config>,
}

impl Supervisor {
    pub(crate) fn new(
        own: KafkaSettings,
        shutdown: CancellationToken,
        telemetry: Telemetry,
        states: States,
        mode: RunMode,
        cfg: Config,
    ) -> Supervisor {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Supervisor {
            own,
            shutdown,
            telemetry,
            states,
            mode,
            live: Arc::default(),
            running: HashMap::new(),
            ended: HashMap::new(),
            triggers: HashMap::new(),
            generation: 0,
            done_tx,
            done_rx,
            cfg: Arc::new(cfg),
        }
    }

    /// Starts `flow` of the current config with `stage`, `ledger` counting its first run.
    pub(crate) fn start(&mut self, flow: Flow, stage: SqlStage, ledger: Arc<Ledger>) {
        let metrics = self.telemetry.flow(&flow.name);
        // With the API on, scheduled flows take runs asked for through it; on-demand flows too
        // when the process stays up after their run (`--serve`).
        let takes = match flow.trigger {
            Trigger::Scheduled => self.mode.api,
            Trigger::OnDemand => self.mode.api && self.mode.serve,
            Trigger::Continuous => false,
        };
        let requests = if takes {
            let (tx, rx) = mpsc::channel(1);
            self.triggers.insert(flow.name.clone(), tx);
            Some(rx)
        } else {
            self.triggers.remove(&flow.name);
            None
        };
        let stop = self.shutdown.child_token();
        let task = FlowTask {
            cfg: (*self.cfg).clone(),
            flow: flow.clone(),
            own: self.own.clone(),
            shutdown: stop.clone(),
            metrics,
            states: self.states.clone(),
            fresh: self.mode.fresh,
            requests,
        };
        self.generation += 1;
        let (generation, done) = (self.generation, self.done_tx.clone());
        let handle = tokio::spawn(async move {
            let outcome = task.run(stage, ledger).await;
            let _ = done.send((generation, outcome));
        });
        let fingerprint = fingerprint(&self.cfg, &flow);
        self.ended.remove(&flow.name);
        self.running.insert(flow.name, Running { generation, fingerprint, stop, handle });
    }

    /// Stops flow `name` and waits until it has finished its batch and committed.
    async fn stop(&mut self, name: &str) {
        if let Some(r) = self.running.remove(name) {
            r.stop.cancel();
            let _ = r.handle.await;
        }
        self.triggers.remove(name);
    }

    /// The next flow task to end: its outcome, unless a reload stopped it (then `None`).
    pub(crate) async fn next_ended(&mut self) -> Option<Option<Outcome>> {
        let (generation, outcome) = self.done_rx.recv().await?;
        let name = outcome.0.clone();
        match self.running.get(&name) {
            Some(r) if r.generation == generation => {
                if let Some(r) = self.running.remove(&name) {
                    self.ended.insert(name.clone(), r.fingerprint);
                }
                self.triggers.remove(&name);
                self.publish();
                Some(Some(outcome))
            }
            _ => Some(None),
        }
    }

    /// Whether no flow runs.
    pub(crate) fn idle(&self) -> bool {
        self.running.is_empty()
    }

    /// Runs `cfg` from now on: changed flows restarted, new ones started, removed ones stopped.
    pub(crate) async fn apply(&mut self, cfg: Config, stages: Vec<(usize, SqlStage)>, only: Option<&str>) {
        let old = self.cfg.clone();
        if format!("{:?}{:?}{:?}", old.kafka, old.telemetry, old.api_listen)
            != format!("{:?}{:?}{:?}", cfg.kafka, cfg.telemetry, cfg.api_listen)
        {
            tracing::warn!("the `kafka`, `telemetry` and `api` sections take effect when sluice is restarted");
        }
        let cfg = Arc::new(cfg);
        let wanted: Vec<&Flow> = cfg.flows.iter().filter(|f| only.is_none_or(|n| n == f.name)).collect();
        let removed: Vec<String> =
            self.running.keys().filter(|n| !wanted.iter().any(|f| f.name == **n)).cloned().collect();
        for name in removed {
            tracing::info!(flow = %name, "reload: the flow is no longer in the config; stopping it");
            self.stop(&name).await;
        }
        self.ended.retain(|n, _| wanted.iter().any(|f| f.name == *n));
        self.cfg = cfg.clone();
        for (i, stage) in stages {
            let Some(flow) = cfg.flows.get(i).filter(|f| only.is_none_or(|n| n == f.name)) else { continue };
            let now = fingerprint(&cfg, flow);
            let before = self.running.get(&flow.name).map(|r| r.fingerprint).or(self.ended.get(&flow.name).copied());
            match before {
                Some(fp) if fp == now => continue,
                Some(_) => {
                    tracing::info!(flow = %flow.name, "reload: the flow's settings changed; restarting it");
                    self.stop(&flow.name).await;
                }
                None => tracing::info!(flow = %flow.name, "reload: a new flow; starting it"),
            }
            self.start(flow.clone(), stage, Ledger::shared());
        }
        self.publish();
    }

    /// Tells the API what runs now.
    pub(crate) fn publish(&self) {
        let flows = self
            .cfg
            .flows
            .iter()
            .filter(|f| self.running.contains_key(&f.name) || self.ended.contains_key(&f.name))
            .map(|f| (f.name.clone(), f.trigger.name(), self.telemetry.flow(&f.name)))
            .collect();
        let live = Live { flows, cfg: Some(self.cfg.clone()), triggers: self.triggers.clone() };
        if let Ok(mut l) = self.live.write() {
            *l = Arc::new(live);
        }
    }
}
