//! `sluice run`, `sluice validate` and `sluice broker`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sluice_connectors::Input;
use sluice_engine::broker::{BrokerStorage, EmbeddedBroker};
use sluice_engine::connector::PayloadFormat;
use sluice_engine::error::FlowError;
use sluice_engine::kafka::{self, KafkaSettings};
use sluice_engine::ledger::{Ledger, LedgerSnapshot, RunStatus};
use sluice_engine::runtime::{self, FlowContext, SinkInput};
use sluice_sql::SqlStage;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, ConfigError, Flow, KafkaSection, Trigger};

fn print_config_errors(errors: &[ConfigError]) -> ExitCode {
    for e in errors {
        eprintln!("error: {e}");
    }
    eprintln!("{} problem{} found", errors.len(), if errors.len() == 1 { "" } else { "s" });
    ExitCode::from(2)
}

/// The payload format the SQL stage decodes for a flow's input.
fn input_format(flow: &Flow) -> PayloadFormat {
    match &flow.source {
        sluice_connectors::SourceOptions::Kafka(o) => o.format,
        _ => PayloadFormat::Debezium,
    }
}

/// Plans every flow's SQL; errors point at the `sql:` line.
async fn plan_all(
    flows: &[Flow],
    connections: Option<&std::collections::BTreeMap<String, sluice_connectors::Connection>>,
) -> (Vec<(usize, SqlStage)>, Vec<ConfigError>) {
    let mut stages = Vec::new();
    let mut errors = Vec::new();
    for (i, f) in flows.iter().enumerate() {
        match plan_flow(f, connections).await {
            Ok(s) => stages.push((i, s)),
            Err(e) => errors.push(f.transform_at.error(e)),
        }
    }
    (stages, errors)
}

/// Plans one flow's SQL stage; Avro input gets the source connection's schema registry (when
/// the connections are known: a config with other errors is only checked for its SQL).
async fn plan_flow(
    f: &Flow,
    connections: Option<&std::collections::BTreeMap<String, sluice_connectors::Connection>>,
) -> Result<SqlStage, String> {
    let stage = SqlStage::new(&f.name, &f.schema, input_format(f), &f.transform).await.map_err(|e| e.to_string())?;
    let Some(connections) = connections.filter(|_| input_format(f) == PayloadFormat::Avro) else { return Ok(stage) };
    let registry = match connections.get(&f.source_connection) {
        Some(sluice_connectors::Connection::Kafka(c)) => {
            sluice_connectors::kafka::registry(&f.source_connection, c).map_err(|e| e.to_string())?
        }
        _ => None,
    };
    match registry {
        Some(r) => Ok(stage.with_registry(r)),
        None => Err(format!(
            "flow `{}`: `format: avro` needs a `schema_registry` on connection `{}`",
            f.name, f.source_connection
        )),
    }
}

/// Loads a config and plans its SQL. On failure, prints every problem — config and SQL alike —
/// and gives the exit code.
async fn load_and_plan(path: &Path) -> Result<(Config, Vec<(usize, SqlStage)>), ExitCode> {
    match config::load(path) {
        Ok(cfg) => {
            let (stages, errors) = plan_all(&cfg.flows, Some(&cfg.connections)).await;
            if errors.is_empty() { Ok((cfg, stages)) } else { Err(print_config_errors(&errors)) }
        }
        Err(rejected) => {
            // The flows that parsed still get their SQL checked, so one pass shows everything.
            let (_, sql_errors) = plan_all(&rejected.flows, None).await;
            let mut errors = rejected.errors;
            errors.extend(sql_errors);
            errors.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
            Err(print_config_errors(&errors))
        }
    }
}

/// `sluice validate CONFIG`.
pub async fn validate(path: &Path) -> ExitCode {
    let (cfg, stages) = match load_and_plan(path).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    println!("{}: ok ({} connection(s), {} flow(s))", path.display(), cfg.connections.len(), cfg.flows.len());
    for (i, stage) in stages {
        use sluice_engine::connector::Transform as _;
        let f = &cfg.flows[i];
        println!(
            "\nflow {} ({}): {} -> {}\noutput schema:",
            f.name,
            match f.trigger {
                Trigger::OnDemand => "on_demand",
                Trigger::Continuous => "continuous",
                Trigger::Scheduled => "scheduled",
            },
            f.source_connection,
            f.destination_connection
        );
        for line in sluice_sql::describe_schema(&stage.output_schema()).lines() {
            println!("  {line}");
        }
    }
    ExitCode::SUCCESS
}

/// `sluice broker`.
pub async fn broker(data_dir: PathBuf, listen: &str, memory: bool) -> ExitCode {
    let storage = if memory { BrokerStorage::Memory } else { BrokerStorage::Sqlite(data_dir.clone()) };
    let broker = match EmbeddedBroker::start(storage, listen).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    println!(
        "sluice broker listening on {} (data: {})",
        broker.bootstrap,
        if memory { "memory".into() } else { data_dir.display().to_string() }
    );
    let shutdown = shutdown_signal();
    tokio::select! {
        r = broker.wait() => {
            eprintln!("error: {}", r.err().unwrap_or_else(|| "the broker stopped".into()));
            ExitCode::from(1)
        }
        _ = shutdown.cancelled() => ExitCode::SUCCESS,
    }
}

/// A token cancelled on SIGINT or SIGTERM.
fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown requested: finishing in-flight batches");
        t.cancel();
    });
    token
}

/// Starts the embedded broker when the config asks for one; returns it (to keep it alive) and
/// the settings that reach sluice's cluster.
async fn own_cluster(cfg: &Config) -> Result<(Option<EmbeddedBroker>, KafkaSettings), ExitCode> {
    match &cfg.kafka {
        KafkaSection::External(s) => Ok((None, s.clone())),
        KafkaSection::Embedded { storage, listen, settings } => {
            match EmbeddedBroker::start(storage.clone(), listen).await {
                Ok(b) => {
                    let mut s = settings.clone();
                    s.bootstrap_servers = b.bootstrap.clone();
                    // The embedded broker (tansu 0.6) answers every fetch only after a wait,
                    // data or not: the fetch's whole max wait, or half of it from 250 ms up.
                    // librdkafka's 500 ms default would add 250 ms to every hop of a
                    // continuous flow; 50 ms costs an idle consumer twenty fetches a second.
                    s.options.push(("fetch.wait.max.ms".into(), "50".into()));
                    tracing::info!(bootstrap = %b.bootstrap, "embedded broker started");
                    Ok((Some(b), s))
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Err(ExitCode::from(1))
                }
            }
        }
    }
}

/// Checks that the config has flow `name`; otherwise says which it has, with exit code 2.
fn known_flow(cfg: &Config, name: &str) -> Result<(), ExitCode> {
    if cfg.flows.iter().any(|f| f.name == name) {
        return Ok(());
    }
    let names: Vec<&str> = cfg.flows.iter().map(|f| f.name.as_str()).collect();
    eprintln!("error: no flow named `{name}` (flows: {})", names.join(", "));
    Err(ExitCode::from(2))
}

/// `sluice dlq show CONFIG FLOW`.
pub async fn dlq_show(path: &Path, flow: &str, limit: usize) -> ExitCode {
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(rejected) => return print_config_errors(&rejected.errors),
    };
    if let Err(code) = known_flow(&cfg, flow) {
        return code;
    }
    let (_broker, own) = match own_cluster(&cfg).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let topic = kafka::dlq_topic(flow);
    let letters = match kafka::read_topic(&own, &topic, limit).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    println!("{topic}: {} dead letter{}", letters.len(), if letters.len() == 1 { "" } else { "s" });
    for m in &letters {
        let h = |k: &str| m.header(k).unwrap_or("?").to_owned();
        println!(
            "\n[{}:{}] stage {} · attempts {} · at {} ms",
            m.partition,
            m.offset,
            h("sluice.stage"),
            h("sluice.attempts"),
            h("sluice.ts_ms")
        );
        println!("  error:   {}", h("sluice.error"));
        if let (Some(t), Some(p), Some(o)) =
            (m.header("sluice.topic"), m.header("sluice.partition"), m.header("sluice.offset"))
        {
            println!("  from:    {t} partition {p} offset {o}");
        }
        if let Some(k) = &m.key {
            println!("  key:     {}", shorten(k));
        }
        println!("  payload: {}", m.payload.as_deref().map_or_else(|| "(none)".to_owned(), shorten));
    }
    ExitCode::SUCCESS
}

/// `sluice dlq replay CONFIG FLOW`: sends the flow's dead letters through its SQL and sink
/// again, after a fix.
///
/// The replay is a sink worker whose input is the DLQ topic, in its own consumer group, so its
/// commits mark what was replayed: a second replay resends only dead letters that arrived
/// since. It stops at the DLQ's end as it was when the replay started; letters that fail again
/// are appended to the DLQ with their attempt count raised (and the original topic, partition
/// and offset kept), for the next replay.
pub async fn dlq_replay(path: &Path, name: &str) -> ExitCode {
    let (cfg, stages) = match load_and_plan(path).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    if let Err(code) = known_flow(&cfg, name) {
        return code;
    }
    let Some((i, stage)) = stages.into_iter().find(|(i, _)| cfg.flows[*i].name == name) else {
        eprintln!("error: flow `{name}` has no planned SQL stage");
        return ExitCode::from(1);
    };
    let flow = cfg.flows[i].clone();
    let shutdown = shutdown_signal();
    let (_broker, own) = match own_cluster(&cfg).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let ctx = flow_context(&flow, &own, Ledger::shared(), &shutdown);
    let started = Instant::now();
    match replay(&cfg, &flow, &ctx, stage).await {
        Ok(dest) => {
            let s = ctx.ledger.snapshot();
            println!(
                "flow {name}: replayed {} dead letter(s) to {dest}: delivered {}, filtered {}, dead-lettered again {}, dropped {} in {:.1} s",
                s.consumed,
                s.delivered,
                s.filtered,
                s.sink_dlq,
                s.dropped,
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) if is_stop(&e) => {
            eprintln!("flow `{name}`: replay stopped while retrying a write; run it again to resend the rest");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: replaying the DLQ of flow `{name}`: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Builds a flow's sink through the connector registry.
async fn build_sink(
    cfg: &Config,
    flow: &Flow,
    own: &KafkaSettings,
) -> anyhow::Result<Box<dyn sluice_engine::connector::Sink>> {
    // invariant: the loader checked that the connection exists.
    let conn = cfg.connections.get(&flow.destination_connection).context("destination connection vanished")?;
    sluice_connectors::build_sink(
        &flow.destination_connection,
        conn,
        &flow.destination_object,
        &flow.destination,
        own,
        &flow.name,
    )
    .await
    .with_context(|| format!("building destination of flow `{}`", flow.name))
}

async fn replay(cfg: &Config, flow: &Flow, ctx: &FlowContext, stage: SqlStage) -> anyhow::Result<String> {
    let own = &ctx.kafka;
    let dlq = kafka::dlq_topic(&flow.name);
    own.ensure_topics(&[&dlq]).await?;
    let sink = build_sink(cfg, flow, own).await?;
    let dest = sink.describe();
    let marks = kafka::high_watermarks(own, &dlq).await?;
    let (_stop_tx, stop_rx) = watch::channel(Some(marks));
    let input = SinkInput { kafka: own.clone(), topic: dlq, group: kafka::replay_group(&flow.name) };
    runtime::run_sink(ctx, input, Box::new(stage), sink, stop_rx).await?;
    Ok(dest)
}

/// `sluice cdc slots CONFIG CONNECTION`, or with `drop`, `sluice cdc drop-slot … SLOT`.
pub async fn cdc_slots(path: &Path, connection: &str, drop: Option<&str>) -> ExitCode {
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(rejected) => return print_config_errors(&rejected.errors),
    };
    let Some(sluice_connectors::Connection::Postgres(conn)) = cfg.connections.get(connection) else {
        eprintln!("error: `{connection}` is not a postgres connection of this config");
        return ExitCode::from(2);
    };
    use sluice_connectors::postgres_cdc;
    if let Some(slot) = drop {
        return match postgres_cdc::drop_slot(connection, conn, slot).await {
            Ok(()) => {
                println!("dropped replication slot {slot}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        };
    }
    match postgres_cdc::list_slots(connection, conn).await {
        Ok(slots) => {
            println!("{:<32} {:<10} {:<7} {:<14} lag", "slot", "plugin", "active", "confirmed");
            for s in slots {
                println!("{:<32} {:<10} {:<7} {:<14} {} bytes", s.name, s.plugin, s.active, s.confirmed, s.lag_bytes);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// `sluice connections test CONFIG [NAME]`.
pub async fn connections_test(path: &Path, only: Option<&str>) -> ExitCode {
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(rejected) => return print_config_errors(&rejected.errors),
    };
    let names: Vec<&String> = cfg.connections.keys().filter(|n| only.is_none_or(|o| o == n.as_str())).collect();
    if let (Some(o), true) = (only, names.is_empty()) {
        let all: Vec<&str> = cfg.connections.keys().map(String::as_str).collect();
        eprintln!("error: no connection named `{o}` (connections: {})", all.join(", "));
        return ExitCode::from(2);
    }
    // A `kafka` connection without servers means sluice's own cluster: reach it as `run` would.
    let (_broker, own) = match own_cluster(&cfg).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let mut failed = false;
    for name in names {
        let conn = &cfg.connections[name];
        match sluice_connectors::test_connection(name, conn, &own).await {
            Ok(what) => println!("ok    {name} ({}): {what}", conn.kind()),
            Err(e) => {
                println!("FAIL  {name} ({}): {e}", conn.kind());
                failed = true;
            }
        }
    }
    if failed { ExitCode::from(1) } else { ExitCode::SUCCESS }
}

/// Bytes as text for a terminal: lossy UTF-8, at most 300 characters.
fn shorten(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text.chars().take(300).collect();
    if text.chars().count() > 300 {
        out.push_str(&format!("… ({} bytes)", bytes.len()));
    }
    out
}

/// `sluice run CONFIG [--flow NAME]`.
pub async fn run(path: &Path, only: Option<&str>) -> ExitCode {
    let (cfg, stages) = match load_and_plan(path).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    if let Some(Err(code)) = only.map(|name| known_flow(&cfg, name)) {
        return code;
    }
    let shutdown = shutdown_signal();
    // Keep the embedded broker alive for the whole run.
    let (_broker, own) = match own_cluster(&cfg).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let mut tasks = Vec::new();
    let mut ledgers = Vec::new();
    for (i, stage) in stages {
        let flow = cfg.flows[i].clone();
        if only.is_some_and(|n| n != flow.name) {
            continue;
        }
        let ledger = Ledger::shared();
        ledgers.push((flow.name.clone(), ledger.clone(), flow.trigger));
        let ctx = flow_context(&flow, &own, ledger, &shutdown);
        let cfg = cfg.clone();
        if flow.trigger == Trigger::Scheduled {
            tasks.push(tokio::spawn(scheduled(cfg, flow, own.clone(), shutdown.clone(), stage)));
            continue;
        }
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = one_run(&cfg, &flow, &ctx, stage).await;
            (flow.name.clone(), r, started.elapsed(), ctx.ledger.snapshot())
        }));
    }
    let progress = progress_line(&ledgers, shutdown.clone());
    let mut failed = false;
    for t in tasks {
        match t.await {
            // A scheduled flow printed each run's summary as it ended.
            Ok((_, Ok(dest), _, _)) if dest.is_empty() => {}
            Ok((name, Ok(dest), elapsed, snap)) => println!("{}", summary_line(&name, &snap, elapsed, &dest)),
            Ok((name, Err(e), _, _)) if is_stop(&e) => {
                // A requested stop, not a failure: the batch being retried was not committed
                // and is delivered again on the next run.
                eprintln!(
                    "flow `{name}`: stopped while retrying a write; the uncommitted batch is delivered on the next run"
                );
            }
            Ok((name, Err(e), _, _)) => {
                eprintln!("error: flow `{name}` failed: {e:#}");
                failed = true;
            }
            Err(e) => {
                eprintln!("error: a flow task stopped unexpectedly: {e}");
                failed = true;
            }
        }
    }
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    if failed { ExitCode::from(1) } else { ExitCode::SUCCESS }
}

/// What a flow's tasks share for one run.
fn flow_context(flow: &Flow, own: &KafkaSettings, ledger: Arc<Ledger>, shutdown: &CancellationToken) -> FlowContext {
    FlowContext {
        flow: flow.name.clone(),
        kafka: own.clone(),
        batch: flow.batch.clone(),
        ledger,
        shutdown: shutdown.clone(),
        errors: Arc::new(sluice_engine::errors_policy::ErrorGate::new(flow.errors.clone())),
        run_id: uuid_like(),
    }
}

/// One run of a flow, reported in `sluice.runs` as it goes and when it ends.
async fn one_run(cfg: &Config, flow: &Flow, ctx: &FlowContext, stage: SqlStage) -> anyhow::Result<String> {
    let reporter = runtime::RunReporter::start(&ctx.kafka, &flow.name, &ctx.run_id, ctx.ledger.clone());
    let r = run_flow(cfg, flow, ctx.clone(), stage).await;
    let (status, error) = match &r {
        Ok(_) if ctx.shutdown.is_cancelled() => (RunStatus::Stopped, None),
        Ok(_) => (RunStatus::Succeeded, None),
        Err(e) if is_stop(e) => (RunStatus::Stopped, None),
        Err(e) => (RunStatus::Failed, Some(format!("{e:#}"))),
    };
    reporter.finish(status, error).await;
    r
}

/// A scheduled flow: an on-demand run at each time of its schedule, until shutdown. A run that
/// fails is reported and the next one still happens (as AppFlow's scheduled flows do); a run
/// still going when its next time comes delays that time, never overlaps it.
async fn scheduled(
    cfg: Config,
    flow: Flow,
    own: KafkaSettings,
    shutdown: CancellationToken,
    mut stage: SqlStage,
) -> (String, anyhow::Result<String>, Duration, LedgerSnapshot) {
    let started = Instant::now();
    let name = flow.name.clone();
    let Some(schedule) = flow.schedule.clone() else {
        return (
            name,
            Err(anyhow::anyhow!("a scheduled flow without a schedule")),
            started.elapsed(),
            Ledger::shared().snapshot(),
        );
    };
    let mut last = Ledger::shared().snapshot();
    let mut runs = 0u64;
    loop {
        let Some(next) = schedule.next_after(chrono::Utc::now()) else {
            tracing::warn!(flow = %name, schedule = %schedule.text, "the schedule has no next time; stopping");
            break;
        };
        let wait = (next - chrono::Utc::now()).to_std().unwrap_or_default();
        tracing::info!(flow = %name, at = %next.with_timezone(&schedule.timezone), "next scheduled run");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => break,
        }
        let ctx = flow_context(&flow, &own, Ledger::shared(), &shutdown);
        let run_started = Instant::now();
        let r = one_run(&cfg, &flow, &ctx, stage).await;
        runs += 1;
        last = ctx.ledger.snapshot();
        match &r {
            Ok(dest) => println!("{}", summary_line(&name, &last, run_started.elapsed(), dest)),
            Err(e) => eprintln!("error: flow `{name}`: scheduled run {runs} failed: {e:#}"),
        }
        if shutdown.is_cancelled() {
            break;
        }
        // The stage went with the run; plan the next one's (the SQL was checked at start).
        stage = match plan_flow(&flow, Some(&cfg.connections)).await {
            Ok(s) => s,
            Err(e) => return (name, Err(anyhow::anyhow!(e)), started.elapsed(), last),
        };
    }
    tracing::info!(flow = %name, runs, "scheduled flow stopped");
    (name, Ok(String::new()), started.elapsed(), last)
}

/// Whether a flow's error is a requested stop rather than a failure.
fn is_stop(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<FlowError>(), Some(FlowError::StoppedWhileRetrying { .. }))
}

/// A run id: the start time and the process id, unique enough to tell runs apart (also a
/// valid object-key part: hex digits and a dash).
fn uuid_like() -> String {
    format!("{:x}-{:x}", sluice_engine::record::now_ms(), std::process::id())
}

/// `sluice status CONFIG`: each flow's latest run.
pub async fn status(path: &Path) -> ExitCode {
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(rejected) => return print_config_errors(&rejected.errors),
    };
    let (_broker, own) = match own_cluster(&cfg).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let runs = match runtime::latest_runs(&own).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let now = sluice_engine::record::now_ms();
    for f in &cfg.flows {
        let Some(r) = runs.get(&f.name) else {
            println!("flow {}: never run", f.name);
            continue;
        };
        let c = &r.counts;
        let status = match r.status {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Stopped => "stopped",
            RunStatus::Failed => "failed",
        };
        println!(
            "flow {}: {status} · run {} · started {} s ago · updated {} s ago\n  read {} = delivered {} + filtered {} + dlq {} + dropped {} + in flight {}",
            f.name,
            r.run_id,
            (now - r.started_ms).max(0) / 1000,
            (now - r.updated_ms).max(0) / 1000,
            c.read(),
            c.delivered,
            c.filtered,
            c.dlq(),
            c.dropped,
            c.in_flight(),
        );
        if let Some(e) = &r.error {
            println!("  error: {e}");
        }
    }
    ExitCode::SUCCESS
}

fn summary_line(name: &str, s: &LedgerSnapshot, elapsed: Duration, dest: &str) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    format!(
        "flow {name}: read {}, delivered {} to {dest}, filtered {}, to DLQ {} ({}), dropped {} in {:.2} s ({:.0} records/s)",
        s.source_read.max(s.consumed),
        s.delivered,
        s.filtered,
        s.dlq(),
        kafka::dlq_topic(name),
        s.dropped,
        secs,
        s.source_read.max(s.consumed) as f64 / secs
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
                    let rate = s.source_read.max(s.consumed) as f64 / started.elapsed().as_secs_f64().max(1e-3);
                    format!(
                        "{n}: read {} · delivered {} · DLQ {} · {:.0}/s",
                        s.source_read.max(s.consumed),
                        s.delivered,
                        s.dlq(),
                        rate
                    )
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
    let input = sluice_connectors::build_source(
        &flow.source_connection,
        src_conn,
        &flow.source_object,
        &flow.source,
        own,
        follow,
    )
    .with_context(|| format!("building source of flow `{}`", flow.name))?;
    let changes = kafka::changes_topic(&flow.name);
    let dlq = kafka::dlq_topic(&flow.name);
    match &input {
        Input::Source(_) => own.ensure_topics(&[&changes, &dlq, kafka::POSITIONS_TOPIC]).await?,
        Input::Topic { .. } => own.ensure_topics(&[&dlq]).await?,
    }
    let sink = build_sink(cfg, flow, own).await?;
    let dest = sink.describe();
    let (stop_tx, stop_rx) = watch::channel(None);
    match input {
        Input::Source(source) => {
            let resume = match flow.trigger {
                Trigger::Continuous => runtime::load_position(own, &flow.name).await?,
                // An on-demand run of an incremental source goes on from the last run's position.
                Trigger::OnDemand | Trigger::Scheduled if source.incremental() => {
                    runtime::load_position(own, &flow.name).await?
                }
                // Otherwise it is a full pull: it starts at the beginning of the source.
                Trigger::OnDemand | Trigger::Scheduled => None,
            };
            if let Some(p) = &resume {
                tracing::info!(flow = %flow.name, position = %p, "resuming source");
            }
            let source_half = async {
                runtime::run_source(&ctx, source, resume, true).await?;
                match flow.trigger {
                    Trigger::OnDemand | Trigger::Scheduled => {
                        let marks = kafka::high_watermarks(own, &changes).await?;
                        let _ = stop_tx.send(Some(marks));
                    }
                    Trigger::Continuous => ctx.shutdown.cancelled().await,
                }
                Ok::<(), anyhow::Error>(())
            };
            let input = SinkInput { kafka: own.clone(), topic: changes.clone(), group: kafka::sink_group(&flow.name) };
            let sink_half =
                async { Ok::<_, anyhow::Error>(runtime::run_sink(&ctx, input, Box::new(stage), sink, stop_rx).await?) };
            tokio::try_join!(source_half, sink_half)?;
        }
        Input::Topic { kafka: theirs, topic, .. } => {
            if flow.trigger != Trigger::Continuous {
                let marks = kafka::high_watermarks(&theirs, &topic).await?;
                let _ = stop_tx.send(Some(marks));
            }
            let input = SinkInput { kafka: theirs, topic, group: kafka::sink_group(&flow.name) };
            runtime::run_sink(&ctx, input, Box::new(stage), sink, stop_rx).await?;
        }
    }
    Ok(dest)
}

/// `sluice sql test CONFIG FLOW --input SAMPLE.jsonl`: the flow's tasks and SQL over sample
/// records, without Kafka or any connection. Prints the output rows as JSON lines, then the
/// records the DLQ would get, with their line and reason.
///
/// Each input line is one record: for flows whose input is a change envelope (every source but
/// a `kafka` topic read as `format: json`), a line with `op` and `after`/`before` is taken as an
/// envelope and any other object as the `after` of a create (`op: c`), so plain rows will do.
/// Flows reading Avro take the same JSON lines (no registry is involved).
pub async fn sql_test(path: &Path, name: &str, input: &Path, ts_ms: Option<i64>) -> ExitCode {
    use sluice_engine::connector::{InputMessage, Transform as _};
    let (cfg, stages) = match load_and_plan(path).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let Some((i, mut stage)) = cfg.flows.iter().position(|f| f.name == name).and_then(|i| {
        let stage = stages.into_iter().find(|(j, _)| *j == i)?;
        Some(stage)
    }) else {
        eprintln!("error: no flow named `{name}` in {}", path.display());
        return ExitCode::from(2);
    };
    let text = match std::fs::read_to_string(input) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: reading {}: {e}", input.display());
            return ExitCode::from(2);
        }
    };
    // Avro flows are tried with JSON samples: rows or envelopes, as their Avro records are.
    if input_format(&cfg.flows[i]) == PayloadFormat::Avro {
        let f = &cfg.flows[i];
        stage = match SqlStage::new(&f.name, &f.schema, PayloadFormat::Debezium, &f.transform).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
    }
    let envelope = input_format(&cfg.flows[i]) != PayloadFormat::Json;
    let ts = ts_ms.unwrap_or_else(sluice_engine::record::now_ms);
    // (line number, payload) of every non-blank line.
    let records: Vec<(usize, Vec<u8>)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, line)| {
            let payload = match serde_json::from_str::<serde_json::Value>(line) {
                Ok(serde_json::Value::Object(o))
                    if envelope && !(o.contains_key("op") && (o.contains_key("after") || o.contains_key("before"))) =>
                {
                    serde_json::json!({"op": "c", "before": null, "after": o, "ts_ms": ts}).to_string().into_bytes()
                }
                // Envelopes, and lines that are not objects (the stage says why they fail).
                _ => line.as_bytes().to_vec(),
            };
            (n + 1, payload)
        })
        .collect();
    let messages: Vec<InputMessage<'_>> =
        records.iter().map(|(_, p)| InputMessage { key: None, payload: Some(p), timestamp_ms: Some(ts) }).collect();
    let out = match stage.process(&messages).await {
        Ok(o) => o,
        Err(sluice_engine::error::TransformError::Validation { flow, rule, index }) => {
            let line = records.get(index).map_or(0, |(n, _)| *n);
            eprintln!(
                "error: flow `{flow}`: validation rule `{rule}` (action: fail) failed for the record on line {line}"
            );
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let mut buf = Vec::new();
    if let Err(e) = sluice_connectors::file::encode_json_lines(&out.batches, &mut buf) {
        eprintln!("error: writing the output rows: {e}");
        return ExitCode::from(1);
    }
    println!("output: {} row{}", out.rows(), if out.rows() == 1 { "" } else { "s" });
    print!("{}", String::from_utf8_lossy(&buf));
    println!("dlq: {} record{}", out.rejected.len(), if out.rejected.len() == 1 { "" } else { "s" });
    for r in &out.rejected {
        let line = records.get(r.index).map_or(0, |(n, _)| *n);
        println!("line {line}: {}", r.reason);
    }
    ExitCode::SUCCESS
}
