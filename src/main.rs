//! The `sluice` binary: the command line with the built-in connectors.

fn main() -> std::process::ExitCode {
    sluice::Cli::with_registry(sluice::registry()).run()
}
