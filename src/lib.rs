//! # sluice
//!
//! The binary's library: it parses the CLI, loads and checks config ([`config`]), starts the
//! embedded broker when asked, builds each flow's source, SQL stage and sink through the
//! connector registry ([`registry`]), and runs them ([`run`]).
//!
//! A program built on sluice adds its own connectors and gets the whole CLI with them:
//!
//! ```no_run
//! # struct MyConnector;
//! # fn with(r: sluice::Registry) -> sluice::Registry { r }
//! fn main() -> std::process::ExitCode {
//!     sluice::Cli::with_registry(with(sluice::registry())).run()
//!     // with a real connector: `sluice::registry().with(MyConnector)`
//! }
//! ```
//!
//! Exit codes: 0 success, 1 a flow failed, 2 the config is invalid.

mod alloc;
mod cluster;
mod config;
mod inspect;
mod logging;
mod plan;
mod registry;
mod rest_spec;
mod run;
mod sql_test;
mod stop;

pub use registry::{Connection, Options, Registry, registry};
/// What a connector is written against: the connector trait and the record model.
pub use sluice_connectors::{BuiltSink, Connector, Context, HealthCheck, Input, Unsupported};
/// The engine: record model, Source/Sink traits, errors, Kafka plumbing.
pub use sluice_engine as engine;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// sluice: move change records from sources through Kafka and SQL to destinations, at least once.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, long_about = None)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    },
    /// Check a config without running it: fields, connections, secrets and each flow's SQL.
    Validate {
        /// A YAML file, or a directory of them.
        config: PathBuf,
    },
    /// Show each flow's latest run: status and counts.
    Status {
        /// A YAML file, or a directory of them.
        config: PathBuf,
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
enum CdcCommand {
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
enum ConnectionsCommand {
    /// Reach the service of one connection (or all) and log in; exit 1 if any fails.
    Test {
        /// A YAML file, or a directory of them.
        config: PathBuf,
        /// The connection (all of them when omitted).
        name: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum SqlCommand {
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
enum DlqCommand {
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

/// The sluice command line with a given set of connectors.
#[derive(Debug)]
pub struct Cli {
    registry: Registry,
}

impl Cli {
    /// The command line knowing the connectors of `registry` ([`registry()`] for sluice's own).
    pub fn with_registry(registry: Registry) -> Self {
        Cli { registry }
    }

    /// Parses the process's arguments, runs the command and gives its exit code.
    pub fn run(self) -> ExitCode {
        alloc::give_memory_back();
        let args = Args::parse();
        logging::init();
        self.run_args(args)
    }

    fn run_args(self, args: Args) -> ExitCode {
        let registry = &self.registry;
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
                Command::Run { config, flow, fresh } => run::run(&config, registry, flow.as_deref(), fresh).await,
                Command::Validate { config } => plan::validate(&config, registry).await,
                Command::Sql { command: SqlCommand::Test { config, flow, input, ts_ms } } => {
                    sql_test::sql_test(&config, registry, &flow, &input, ts_ms).await
                }
                Command::Broker { data_dir, listen } => cluster::broker(data_dir, &listen).await,
                Command::Status { config } => inspect::status(&config, registry).await,
                Command::Dlq { command: DlqCommand::Show { config, flow, limit } } => {
                    inspect::dlq_show(&config, registry, &flow, limit).await
                }
                Command::Dlq { command: DlqCommand::Replay { config, flow } } => {
                    inspect::dlq_replay(&config, registry, &flow).await
                }
                Command::Cdc { command: CdcCommand::Slots { config, connection } } => {
                    inspect::cdc_slots(&config, registry, &connection, None).await
                }
                Command::Cdc { command: CdcCommand::DropSlot { config, connection, slot } } => {
                    inspect::cdc_slots(&config, registry, &connection, Some(&slot)).await
                }
                Command::Connections { command: ConnectionsCommand::Test { config, name } } => {
                    inspect::connections_test(&config, registry, name.as_deref()).await
                }
            }
        });
        // Dropping the runtime waits for every task to yield; one stuck in a computation never
        // would. Everything worth waiting for is done by now.
        rt.shutdown_timeout(std::time::Duration::from_secs(2));
        code
    }
}
