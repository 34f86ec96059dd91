//! `sluice-logfmt`: the sluice command line with one more connector, `logfmt`.
//!
//! Everything sluice does works unchanged (`run`, `validate`, `connections test`, …); a config
//! may now also say `type: logfmt`.

mod logfmt;

fn main() -> std::process::ExitCode {
    sluice::Cli::with_registry(sluice::registry().with(logfmt::LogfmtConnector)).run()
}
