//! # sluice
//!
//! The binary's library: it parses the CLI, loads and checks config ([`config`]), starts the
//! embedded broker when asked, builds each flow's source, SQL stage and sink through the
//! connector registry ([`registry`]), and runs them ([`run`], each flow's life in `lifecycle`:
//! paused, deactivated, restarted).
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
mod api;
mod cluster;
mod commands;
mod config;
pub mod conformance;
#[doc(hidden)]
pub mod fuzz;
mod lifecycle;
mod logging;
mod plan;
mod registry;
mod reload;
mod rest_spec;
mod run;
mod stop;
mod supervise;

pub use registry::{Connection, Options, Registry, registry};
/// What a connector is written against: the connector trait and the record model.
pub use sluice_connectors::{BuiltSink, Connector, Context, HealthCheck, Input, Unsupported};
/// The engine: record model, Source/Sink traits, errors, Kafka plumbing.
pub use sluice_engine as engine;

use std::process::ExitCode;

use clap::Parser as _;

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
        let args = commands::Args::parse();
        logging::init(args.log_format);
        commands::dispatch(args, &self.registry)
    }
}
