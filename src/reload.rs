//! When `sluice run` reads its config again: on SIGHUP, or when a file of the config (the file,
//! or a `.yaml`/`.yml` file of the directory) is changed, added or removed. Files are compared
//! by modification time and size every second — no watcher to install, and it works the same
//! on every filesystem (a bind-mounted ConfigMap included).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How often the files are looked at.
const POLL: Duration = Duration::from_secs(1);

/// How long after a change the config is read: an editor (or `kubectl`) may write in steps.
const SETTLE: Duration = Duration::from_millis(300);

/// What a config path holds now: each file's name, modification time and size.
fn snapshot(path: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let files: Vec<PathBuf> = match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map(|d| {
                    d.filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                        .collect()
                })
                .unwrap_or_default();
            files.sort();
            files
        }
        _ => vec![path.to_owned()],
    };
    files
        .into_iter()
        .map(|f| {
            let m = std::fs::metadata(&f).ok();
            let modified = m.as_ref().and_then(|m| m.modified().ok());
            let len = m.map_or(0, |m| m.len());
            (f, modified, len)
        })
        .collect()
}

/// Sends why the config should be read again, each time it should, until `stop`.
pub(crate) fn watch(path: PathBuf, stop: CancellationToken) -> mpsc::Receiver<&'static str> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "SIGHUP cannot be watched; config changes are still seen");
                None
            }
        };
        let mut seen = snapshot(&path);
        loop {
            let why = tokio::select! {
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
                _ = tokio::time::sleep(POLL) => {
                    let now = snapshot(&path);
                    if now == seen {
                        continue;
                    }
                    tokio::time::sleep(SETTLE).await;
                    "a config file changed"
                }
                _ = stop.cancelled() => return,
            };
            seen = snapshot(&path);
            if tx.send(why).await.is_err() {
                return;
            }
        }
    });
    rx
}
