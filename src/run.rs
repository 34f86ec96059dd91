//! `sluice run`: every flow of a config (or one), on demand, continuously or on a schedule.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sluice_connectors::Input;
use sluice_engine::error::FlowError;
use sluice_engine::kafka::{self, KafkaSettings};
use sluice_engine::ledger::{Ledger, LedgerSnapshot, RunStatus};
use sluice_engine::runtime::{self, FlowContext, SinkInput};
use sluice_engine::telemetry::{FlowMetrics, Telemetry};
use sluice_sql::SqlStage;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Attach, own_cluster};
use crate::config::{Config, Flow, Trigger};
use crate::lifecycle::Outcome;
use crate::plan::{build_sink, known_flow, load_and_plan};
use crate::registry::Registry;
use crate::supervise::{RunMode, Supervisor};
use sluice_engine::ledger::RunStart;

/// `sluice run CONFIG [--flow NAME] [--fresh] [--api ADDR] [--serve]`. With `fresh`, on-demand
/// flows start a new pull even where the last run was interrupted (by default they go on with
/// it). With `serve` (and the API on), the process stays up after its on-demand runs, and the
/// API starts them again.
pub async fn run(
    path: &Path,
    registry: &Registry,
    only: Option<&str>,
    fresh: bool,
    api: Option<std::net::SocketAddr>,
    serve: bool,
) -> ExitCode {
    let (cfg, stages) = match load_and_plan(path, registry).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    if let Some(Err(code)) = only.map(|name| known_flow(&cfg, name)) {
        return code;
    }
    let api = api.or(cfg.api_listen);
    if serve && api.is_none() {
        eprintln!("error: --serve keeps the process up for the management API: give --api ADDR or `api.listen`");
        return ExitCode::from(2);
    }
    // Set up before any flow starts, so every batch is counted; `/metrics` needs the meter
    // even without an OTLP endpoint.
    let telemetry = match Telemetry::install(&cfg.telemetry, api.is_some()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let shutdown = crate::stop::on_signal();
    // Keep the embedded broker alive for the whole run.
    let (_broker, own) = match own_cluster(&cfg, Attach::Never).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let api_listener = match api {
        Some(listen) => match crate::api::bind(listen, cfg.api_token.as_ref()).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    own.apply_runs_retention().await;
    // Paused and deactivated flows do not start. A cluster that cannot be read here is said so
    // by each flow as it starts (the states are then read again in the background).
    let first = match runtime::flow_states(&own).await {
        Ok(states) => states,
        Err(e) => {
            tracing::debug!(error = %e, "reading the flows' states");
            Default::default()
        }
    };
    let states = runtime::watch_flow_states(own.clone(), first, shutdown.clone());
    let mut sup = Supervisor::new(
        own.clone(),
        shutdown.clone(),
        telemetry.clone(),
        states.clone(),
        RunMode { api: api.is_some(), serve, fresh },
        cfg.clone(),
    );
    let mut ledgers = Vec::new();
    for (i, stage) in stages {
        let flow = cfg.flows[i].clone();
        if only.is_some_and(|n| n != flow.name) {
            continue;
        }
        let ledger = Ledger::shared();
        ledgers.push((flow.name.clone(), ledger.clone(), flow.trigger));
        sup.start(flow, stage, ledger);
    }
    sup.publish();
    // Connected to the cluster and every flow's task started: ready.
    let _api = api_listener.map(|listen| {
        crate::api::serve(
            listen,
            crate::api::ApiState {
                live: sup.live.clone(),
                telemetry: telemetry.clone(),
                token: cfg.api_token.clone(),
                kafka: own.clone(),
                states: states.clone(),
                tested: Arc::default(),
                shutdown: shutdown.clone(),
            },
        )
    });
    let progress = progress_line(&ledgers, shutdown.clone());
    let mut reloads = crate::reload::watch(path.to_owned(), shutdown.clone());
    let mut failed = false;
    while !sup.idle() {
        tokio::select! {
            Some(ended) = sup.next_ended() => {
                if let Some(outcome) = ended {
                    failed |= report(outcome, &own);
                }
            }
            Some(why) = reloads.recv(), if !shutdown.is_cancelled() => reload(path, registry, only, &mut sup, why).await,
        }
    }
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    // What is pending goes out over OTLP before the process ends.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    if failed { ExitCode::from(1) } else { ExitCode::SUCCESS }
}

/// Says how a flow's task ended; true when it failed.
fn report((name, result, elapsed, snap): Outcome, own: &KafkaSettings) -> bool {
    match result {
        // A scheduled flow printed each run's summary as it ended.
        Ok(dest) if dest.is_empty() => false,
        Ok(dest) => {
            println!("{}", summary_line(&name, &snap, elapsed, &dest, &own.dlq_topic(&name)));
            false
        }
        Err(e) if is_stop(&e) => {
            // A requested stop, not a failure: the batch being retried was not committed and
            // is delivered again on the next run.
            eprintln!(
                "flow `{name}`: stopped while retrying a write; the uncommitted batch is delivered on the next run"
            );
            false
        }
        Err(e) => {
            eprintln!("error: flow `{name}` failed: {e:#}");
            true
        }
    }
}

/// Reads the config again and runs it; a config with problems is refused (they are printed as
/// `validate` prints them) and everything keeps running on the one before.
async fn reload(path: &Path, registry: &Registry, only: Option<&str>, sup: &mut Supervisor, why: &str) {
    tracing::info!(why, "reading the config again");
    let (cfg, stages) = match load_and_plan(path, registry).await {
        Ok(x) => x,
        Err(_) => {
            eprintln!("error: the changed config is refused (problems above); every flow keeps running as before");
            return;
        }
    };
    if let Some(name) = only
        && known_flow(&cfg, name).is_err()
    {
        eprintln!("error: the changed config has no flow `{name}`; every flow keeps running as before");
        return;
    }
    sup.apply(cfg, stages, only).await;
}

/// What a flow's tasks share for one run.
pub(crate) fn flow_context(
    flow: &Flow,
    own: &KafkaSettings,
    ledger: Arc<Ledger>,
    metrics: Arc<FlowMetrics>,
    shutdown: &CancellationToken,
) -> FlowContext {
    let run_id = uuid_like();
    FlowContext {
        pull_id: run_id.clone(),
        flow: flow.name.clone(),
        kafka: own.clone(),
        batch: flow.batch.clone(),
        ledger,
        metrics,
        shutdown: shutdown.clone(),
        errors: Arc::new(sluice_engine::errors_policy::ErrorGate::new(flow.errors.clone())),
        run_id,
    }
}

/// One run of a flow, reported in `sluice.runs` as it goes and when it ends. An on-demand run
/// after an interrupted one goes on with it (see [`RunStart::decide`]).
pub(crate) async fn one_run(
    cfg: &Config,
    flow: &Flow,
    ctx: &FlowContext,
    stage: SqlStage,
    fresh: bool,
) -> anyhow::Result<String> {
    let mut ctx = ctx.clone();
    // A cluster that does not answer is said so plainly, before anything is read from it.
    ctx.kafka.check_reachable().await?;
    let previous = runtime::latest_runs(&ctx.kafka).await?.remove(&flow.name);
    let on_demand = flow.trigger != Trigger::Continuous;
    let host = sluice_engine::ledger::host_name();
    let resumes = match RunStart::decide(previous.as_ref(), on_demand, fresh, sluice_engine::record::now_ms(), &host) {
        RunStart::Refuse(why) => anyhow::bail!(why),
        RunStart::Fresh => None,
        RunStart::Resume { pull_id, resumes } => {
            tracing::info!(flow = %flow.name, run = %ctx.run_id, %resumes, "the last run did not finish; going on with it");
            ctx.pull_id = pull_id;
            Some(resumes)
        }
    };
    let reporter = runtime::RunReporter::start(
        &ctx.kafka,
        &flow.name,
        &ctx.run_id,
        &ctx.pull_id,
        resumes.as_deref(),
        flow.trigger.name(),
        ctx.ledger.clone(),
    );
    reporter.position_start(position_now(cfg, flow, &ctx.kafka, Some(resumes.is_some())).await);
    ctx.metrics.attach(&ctx.ledger, &ctx.run_id);
    let r = run_flow(cfg, flow, ctx.clone(), stage).await;
    let failed = r.as_ref().is_err_and(|e| !is_stop(e));
    ctx.metrics.detach(&ctx.ledger, failed);
    let position_end = position_now(cfg, flow, &ctx.kafka, None).await;
    let (status, error) = match &r {
        Ok(_) if ctx.shutdown.is_cancelled() => (RunStatus::Stopped, None),
        Ok(_) => (RunStatus::Succeeded, None),
        Err(e) if is_stop(e) => (RunStatus::Stopped, None),
        Err(e) => (RunStatus::Failed, Some(format!("{e:#}"))),
    };
    reporter.finish(status, error, position_end).await;
    r
}

/// Whether a flow's error is a requested stop rather than a failure.
pub(crate) fn is_stop(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<FlowError>(), Some(FlowError::StoppedWhileRetrying { .. }))
}

/// A run id: the start time and the process id, unique enough to tell runs apart (also a
/// valid object-key part: hex digits and a dash).
pub(crate) fn uuid_like() -> String {
    format!("{:x}-{:x}", sluice_engine::record::now_ms(), std::process::id())
}

pub(crate) fn summary_line(name: &str, s: &LedgerSnapshot, elapsed: Duration, dest: &str, dlq: &str) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    // Rows differ from records only when the query gives a record several rows (or folds them).
    let rows = if s.rows != s.delivered { format!(" ({} rows)", s.rows) } else { String::new() };
    let carried = if s.carried > 0 {
        format!(" ({} of them left in flight by an earlier run)", s.carried)
    } else {
        String::new()
    };
    format!(
        "flow {name}: read {}{carried}, delivered {}{rows} to {dest}, filtered {}, to DLQ {} ({}), dropped {} in {:.2} s ({:.0} records/s)",
        s.read(),
        s.delivered,
        s.filtered,
        s.dlq(),
        dlq,
        s.dropped,
        secs,
        s.read() as f64 / secs
    )
}

/// A progress line on a terminal for on-demand runs; nothing otherwise.
fn progress_line(
    ledgers: &[(String, Arc<Ledger>, Trigger)],
    stop: CancellationToken,
) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() || !ledgers.iter().any(|(_, _, t)| *t == Trigger::OnDemand) {
        return None;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    let ledgers: Vec<(String, Arc<Ledger>)> = ledgers.iter().map(|(n, l, _)| (n.clone(), l.clone())).collect();
    let b = bar.clone();
    let started = Instant::now();
    tokio::spawn(async move {
        while !b.is_finished() && !stop.is_cancelled() {
            let parts: Vec<String> = ledgers
                .iter()
                .map(|(n, l)| {
                    let s = l.snapshot();
                    let rate = s.read() as f64 / started.elapsed().as_secs_f64().max(1e-3);
                    format!("{n}: read {} · delivered {} · DLQ {} · {:.0}/s", s.read(), s.delivered, s.dlq(), rate)
                })
                .collect();
            b.set_message(parts.join("  |  "));
            b.tick();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    Some(bar)
}

/// Runs one flow to its end; returns a description of where rows went.
async fn run_flow(cfg: &Config, flow: &Flow, ctx: FlowContext, stage: SqlStage) -> anyhow::Result<String> {
    let own = &ctx.kafka;
    // invariant: the loader checked that both connections exist.
    let src_conn = cfg.connections.get(&flow.source_connection).context("source connection vanished")?;
    let follow = flow.trigger == Trigger::Continuous;
    let changes = own.changes_topic(&flow.name);
    let dlq = own.dlq_topic(&flow.name);
    let build = || {
        let ctx = sluice_connectors::Context {
            fail_on_schema_change: flow.transform.schema_changes == sluice_sql::SchemaChanges::Fail,
            ..sluice_connectors::Context::new(&flow.source_connection, own, &flow.name)
        };
        src_conn.build_source(ctx, &flow.source_object, &flow.source, follow)
    };
    let input = build().with_context(|| format!("building source of flow `{}`", flow.name))?;
    match &input {
        Input::Source(_) => own.ensure_topics(&[&changes, &dlq, &own.positions_topic()]).await?,
        Input::Topic { .. } => own.ensure_topics(&[&dlq]).await?,
    }
    let sink = build_sink(cfg, flow, own).await?;
    let dest = sink.describe();
    let (stop_tx, stop_rx) = watch::channel(None);
    match input {
        Input::Source(first) => {
            let incremental = first.incremental();
            drop(first);
            // What sits in the changes topic now was published by earlier runs; whatever of it
            // this run delivers is counted as carried over.
            let earlier = kafka::committed_ends(own, &changes).await?;
            // Each turn as the source's owner builds the source afresh and resumes it from the
            // stored position as the trigger says.
            let open = |stored: Option<runtime::StoredPosition>| {
                let source = build().map_err(|e| FlowError::Connector { flow: flow.name.clone(), source: Box::new(e) });
                let resume = match flow.trigger {
                    Trigger::Continuous => stored.map(|s| s.position),
                    // An on-demand run of an incremental source goes on from the last run's
                    // position.
                    Trigger::OnDemand | Trigger::Scheduled if incremental => stored.map(|s| s.position),
                    // Otherwise it is a full pull from the beginning of the source — unless the
                    // position was stored by this very pull (the run resumes an interrupted
                    // one, or an earlier turn of this run stored it).
                    Trigger::OnDemand | Trigger::Scheduled => {
                        stored.filter(|s| s.pull_id.as_deref() == Some(ctx.pull_id.as_str())).map(|s| s.position)
                    }
                };
                async move {
                    match source? {
                        Input::Source(s) => Ok((s, resume)),
                        Input::Topic { .. } => Err(FlowError::Internal("a source became a topic".into())),
                    }
                }
            };
            let source_half = async {
                let end = runtime::run_claimed_source(&ctx, open).await?;
                match (flow.trigger, end) {
                    (Trigger::OnDemand | Trigger::Scheduled, runtime::SourceHalf::Exhausted) => {
                        // Everything the source wrote, its last transaction's markers or not.
                        let marks = kafka::written_ends(own, &changes).await?;
                        let _ = stop_tx.send(Some(marks));
                    }
                    // Stopped: the sink half sees the same shutdown and finishes its batch.
                    _ => ctx.shutdown.cancelled().await,
                }
                Ok::<(), anyhow::Error>(())
            };
            let input =
                SinkInput { kafka: own.clone(), topic: changes.clone(), group: own.sink_group(&flow.name), earlier };
            let sink_half =
                async { Ok::<_, anyhow::Error>(runtime::run_sink(&ctx, input, Box::new(stage), sink, stop_rx).await?) };
            tokio::try_join!(source_half, sink_half)?;
        }
        Input::Topic { kafka: theirs, topic, .. } => {
            if flow.trigger != Trigger::Continuous {
                let marks = kafka::committed_ends(&theirs, &topic).await?;
                let _ = stop_tx.send(Some(marks));
            }
            let input = SinkInput { kafka: theirs, topic, group: own.sink_group(&flow.name), earlier: Vec::new() };
            runtime::run_sink(&ctx, input, Box::new(stage), sink, stop_rx).await?;
        }
    }
    Ok(dest)
}

/// Where `flow`'s source stands now, for the run record: the source's stored position (a
/// cursor value, an LSN, a file offset), or, for a flow reading a topic, the offsets its group
/// committed there. `None` when it cannot be told within a few seconds. At a run's start
/// (`starting` says whether it resumes an interrupted run), a full pull that does not go on
/// from a stored position starts at `"start of source"`.
async fn position_now(
    cfg: &Config,
    flow: &Flow,
    own: &KafkaSettings,
    starting: Option<bool>,
) -> Option<serde_json::Value> {
    let conn = cfg.connections.get(&flow.source_connection)?;
    let ctx = sluice_connectors::Context::new(&flow.source_connection, own, &flow.name);
    let input = conn.build_source(ctx, &flow.source_object, &flow.source, flow.trigger == Trigger::Continuous).ok()?;
    let read = async {
        match input {
            Input::Source(s) => {
                let full_pull = flow.trigger != Trigger::Continuous && !s.incremental();
                if full_pull && starting == Some(false) {
                    return Some(serde_json::Value::from("start of source"));
                }
                runtime::load_position(own, &flow.name).await.ok().flatten().map(|p| p.position)
            }
            Input::Topic { kafka: theirs, topic, .. } => {
                let offsets = kafka::committed_offsets(&theirs, &own.sink_group(&flow.name), &topic).await.ok()?;
                let by_partition: serde_json::Map<String, serde_json::Value> =
                    offsets.into_iter().map(|(p, o)| (p.to_string(), o.into())).collect();
                Some(serde_json::json!({ "topic": topic, "offsets": by_partition }))
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.ok().flatten()
}
