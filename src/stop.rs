//! Stopping the process: SIGTERM or Ctrl-C asks every flow to finish the batch in hand, commit
//! it and exit; a second signal, or a stop that takes longer than its bound, ends the process at
//! once.
//!
//! The signals are watched on a thread of their own, with its own small runtime, rather than as
//! a task of the flows' runtime: a stop must work even when every worker of that runtime is
//! busy (a heavy query, a blocked client call), which is exactly when it is needed. Ending the
//! process without the drain is a crash as far as delivery goes — nothing past the last commit
//! was committed, so the next run delivers it again — which is why it is safe as a last resort.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How long a requested stop may take before the process exits anyway, unless
/// `SLUICE_STOP_TIMEOUT_SECS` says otherwise.
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// A token cancelled on the first SIGTERM or SIGINT; the process exits on the second, or when
/// the stop is not done within the bound.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    let limit = std::env::var("SLUICE_STOP_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(DEFAULT_STOP_TIMEOUT, Duration::from_secs);
    let spawned = std::thread::Builder::new().name("sluice-stop".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return eprintln!("error: watching for stop signals: {e}"),
        };
        rt.block_on(watch(t, limit));
    });
    if let Err(e) = spawned {
        eprintln!("error: watching for stop signals: {e}");
    }
    token
}

async fn watch(token: CancellationToken, limit: Duration) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return eprintln!("error: watching for stop signals: the signal handlers could not be installed");
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!(timeout_secs = limit.as_secs(), "stop requested: finishing in-flight batches");
    token.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = tokio::time::sleep(limit) => {
            eprintln!(
                "error: the flows did not stop within {} s of the stop request (SLUICE_STOP_TIMEOUT_SECS); \
                 exiting now: what was not committed is delivered again by the next run",
                limit.as_secs()
            );
            std::process::exit(1);
        }
    }
    eprintln!("second stop request: exiting now; what was not committed is delivered again by the next run");
    std::process::exit(130);
}
