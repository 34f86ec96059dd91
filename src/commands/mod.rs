//! The command line: its arguments ([`Args`]) and one module per subcommand that is not the
//! run itself (`run` composes the flows in `crate::run`).

mod cdc;
mod connections;
mod describe;
mod dlq;
mod flows;
mod runs;
mod sql_test;
mod status;
mod tap;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::registry::Registry;

pub(crate) use dlq::replay as replay_dlq;

/// What a command that reads sluice's cluster starts with: the config at `path` (its problems
/// printed), `flow` checked to be one of its flows when given, and the cluster reached — an
/// embedded broker another process runs is attached to (kept alive while the first value
/// lives). The exit code when any of it fails.
pub(crate) async fn config_and_cluster(
    path: &std::path::Path,
    registry: &Registry,
    flow: Option<&str>,
) -> Result<
    (crate::config::Config, Option<sluice_engine::broker::EmbeddedBroker>, sluice_engine::kafka::KafkaSettings),
    ExitCode,
> {
    let cfg = crate::config::load(path, registry).map_err(|r| crate::plan::print_config_errors(&r.errors))?;
    if let Some(flow) = flow {
        crate::plan::known_flow(&cfg, flow)?;
    }
    let (broker, own) = crate::cluster::own_cluster(&cfg, crate::cluster::Attach::IfRunning).await?;
    Ok((cfg, broker, own))
}

/// sluice: move change records from sources through Kafka and SQL to destinations, at least once.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, long_about = None)]
pub(crate) struct Args {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// How log lines are written on stderr: `text`, or `json` (one object per line, with the
    /// span fields: flow, stage, topic, partition).
    #[arg(long, global = true, env = "SLUICE_LOG_FORMAT", value_enum, default_value_t = crate::logging::LogFormat::Text)]
    pub(crate) log_format: crate::logging::LogFormat,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the flows of a config (all of them, or one with --flow).
    Run {
        /// A YAML file, or a directory of them.
        config: PathBuf,
        /// Run only this flow.
        #[arg(long)]
        flow: Option<String>,
        /// Start on-demand flows from the beginning of their source even where the last run was
        /// interrupted (stopped, failed or killed); by default such a run is resumed.
        #[arg(long)]
        fresh: bool,
        /// Serve the management API (flows, runs, dead letters, connections, metrics) on this
        /// address, e.g. 127.0.0.1:9090 (beyond loopback only with `api.token`).
        #[arg(long)]
        api: Option<std::net::SocketAddr>,
        /// Stay up after on-demand runs end, serving the API, through which they run again
        /// (`POST /flows/{name}/runs`). Needs the API (`--api` or `api.listen`).
        #[arg(long)]
        serve: bool,
    },
    /// Check a config without running it: fields, connections, secrets and each flow's SQL.
    Validate {
        /// A YAML file, or a directory of them.
        config: PathBuf,
    },
    /// List a connection's objects (tables, …) and their columns as sluice types: what a flow
    /// without `schema:` reads for its object.
    Describe {
        /// A YAML file, or a directory of them.
        config: PathBuf,
        /// The connection's name.
        connection: String,
        /// Only this object (e.g. a table, `schema.table`).
        object: Option<String>,
    },
    /// Show a flow's run history, newest first: status, start, duration and counts.
    Runs {
        /// A YAML file, or a directory of them.
        config: PathBuf,
        /// The flow.
        flow: String,
        /// How many runs to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Print a flow's records live as they pass (source, output or dead letters), one JSON
    /// object per line, without touching the flow's consumer group or offsets.
    Tap {
        /// A YAML file, or a directory of them.
        config: PathBuf,
        /// The flow.
        flow: String,
        /// Which records: what the SQL reads, what it gives the destination, or dead letters.
        #[arg(long, value_enum, default_value = "source")]
        stage: tap::TapStage,
        /// Stop after this many records (default: until interrupted).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show each flow's latest run: status and counts.
    Status {
        /// A YAML file, or a directory of them.
        config: PathBuf,
    },
    /// Pause a flow or make it active again (also after a deactivation), in every process.
    Flows {
        #[command(subcommand)]
        command: FlowsCommand,
    },
    /// Inspect a flow's dead-letter topic, or replay it.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Check connections: reach each service and log in, without running a flow.
    Connections {
        #[command(subcommand)]
        command: ConnectionsCommand,
    },
    /// Try a flow's tasks and SQL on sample records, without Kafka or connections.
    Sql {
        #[command(subcommand)]
        command: SqlCommand,
    },
    /// Change data capture: list or drop a postgres connection's replication slots.
    Cdc {
        #[command(subcommand)]
        command: CdcCommand,
    },
    /// Run the embedded Kafka-protocol broker on its own.
    Broker {
        /// Where the broker keeps its log.
        #[arg(long)]
        data_dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9092")]
        listen: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum FlowsCommand {
    /// Pause a flow: no runs until resumed; a run in progress finishes its batch and stops.
    Pause {
        /// A YAML file, or a directory of them.
        config: PathBuf,
        /// The flow.
        flow: String,
    },
    /// Make a paused or deactivated flow active again.
    Resume {
        /// A YAML file, or a directory of them.
        config: PathBuf,
        /// The flow.
        flow: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum CdcCommand {
    /// List the logical replication slots of a postgres connection's database, with their lag.
    Slots {
        /// A YAML file, or a directory of them.
        config: PathBuf,
        /// The postgres connection.
        connection: String,
    },
    /// Drop a replication slot (a flow using it starts over with a snapshot).
    DropSlot {
        /// A YAML file, or a directory of them.
        config: PathBuf,
        /// The postgres connection.
        connection: String,
        /// The slot.
        slot: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConnectionsCommand {
    /// Reach the service of one connection (or all) and log in; exit 1 if any fails.
    Test {
        /// A YAML file, or a directory of them.
        config: PathBuf,
        /// The connection (all of them when omitted).
        name: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SqlCommand {
    /// Run a flow's transform over a file of JSON lines; print the output rows and the records
    /// the DLQ would get, with their reasons.
    Test {
        /// A YAML file, or a directory of them.
        config: PathBuf,
        /// The flow.
        flow: String,
        /// Sample records, one JSON object per line (plain rows or change envelopes).
        #[arg(long)]
        input: PathBuf,
        /// The change time given to plain rows, in milliseconds since the epoch (default: now).
        #[arg(long)]
        ts_ms: Option<i64>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// Print the dead letters of a flow: where each came from, why, and its payload.
    Show {
        /// A YAML file, or a directory of them (for the cluster's address).
        config: PathBuf,
        /// The flow.
        flow: String,
        /// Print at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Send a flow's dead letters through its SQL and destination again (after a fix). Each
    /// dead letter is replayed once; those that fail again return to the DLQ.
    Replay {
        /// A YAML file, or a directory of them.
        config: PathBuf,
        /// The flow.
        flow: String,
    },
}

/// Runs the command `args` names with the connectors of `registry`.
pub(crate) fn dispatch(args: Args, registry: &Registry) -> ExitCode {
    // At least two workers: a flow's SQL stage may hold one worker for a while (a heavy
    // batch), and the timers that bound it must still fire on another.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = rt.block_on(async {
        match args.command {
            Command::Run { config, flow, fresh, api, serve } => {
                crate::run::run(&config, registry, flow.as_deref(), fresh, api, serve).await
            }
            Command::Validate { config } => validate::validate(&config, registry).await,
            Command::Sql { command: SqlCommand::Test { config, flow, input, ts_ms } } => {
                sql_test::sql_test(&config, registry, &flow, &input, ts_ms).await
            }
            Command::Broker { data_dir, listen } => crate::cluster::broker(data_dir, &listen).await,
            Command::Describe { config, connection, object } => {
                describe::describe(&config, registry, &connection, object.as_deref()).await
            }
            Command::Runs { config, flow, limit } => runs::runs(&config, registry, &flow, limit).await,
            Command::Tap { config, flow, stage, limit } => tap::tap(&config, registry, &flow, stage, limit).await,
            Command::Status { config } => status::status(&config, registry).await,
            Command::Flows { command: FlowsCommand::Pause { config, flow } } => {
                flows::set_state(&config, registry, &flow, sluice_engine::runtime::FlowState::Paused).await
            }
            Command::Flows { command: FlowsCommand::Resume { config, flow } } => {
                flows::set_state(&config, registry, &flow, sluice_engine::runtime::FlowState::Active).await
            }
            Command::Dlq { command: DlqCommand::Show { config, flow, limit } } => {
                dlq::dlq_show(&config, registry, &flow, limit).await
            }
            Command::Dlq { command: DlqCommand::Replay { config, flow } } => {
                dlq::dlq_replay(&config, registry, &flow).await
            }
            Command::Cdc { command: CdcCommand::Slots { config, connection } } => {
                cdc::cdc_slots(&config, registry, &connection, None).await
            }
            Command::Cdc { command: CdcCommand::DropSlot { config, connection, slot } } => {
                cdc::cdc_slots(&config, registry, &connection, Some(&slot)).await
            }
            Command::Connections { command: ConnectionsCommand::Test { config, name } } => {
                connections::connections_test(&config, registry, name.as_deref()).await
            }
        }
    });
    // Dropping the runtime waits for every task to yield; one stuck in a computation never
    // would. Everything worth waiting for is done by now.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}
