//! The embedded Kafka-protocol broker.
//!
//! `kafka: embedded` and `sluice broker` both run tansu's broker inside this process, persisted
//! in a SQLite file under the data directory. Flows still talk to
//! it through rdkafka over loopback, so the embedded set-up exercises exactly the code a user's
//! Kafka cluster does.
//!
//! One process owns a data directory: a second broker on the same SQLite file would corrupt
//! it or die on "database is locked". So the broker holds an exclusive lock on `LOCK` in the
//! directory for as long as it runs, and writes its process id and address there; another
//! process that finds the directory locked is told who holds it ([`BrokerError::InUse`]), and
//! may reach that broker instead ([`running_broker`]). The lock is the kernel's (`flock`), so a
//! killed process leaves none behind.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use thiserror::Error;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::error::Invalid;

/// Where the embedded broker keeps its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerStorage {
    /// A SQLite file under this directory; survives a kill -9 and restart. (There was a
    /// memory log too; it was removed: whatever it acknowledged died with the process, while
    /// the positions that said it was safe to move on stayed behind in sources' upstreams.)
    Sqlite(PathBuf),
}

/// Starting the embedded broker failed.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// The data directory could not be created.
    #[error("creating broker data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The listen address could not be bound.
    #[error("binding broker listener {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// tansu refused the configuration.
    #[error("starting embedded broker: {0}")]
    Start(String),
    /// Another process runs a broker on the data directory.
    #[error(
        "the embedded broker's data directory {} is in use by another sluice process ({holder}); \
         stop it first, or point this one at another `kafka.embedded.data_dir`",
        path.display()
    )]
    InUse {
        /// The directory.
        path: PathBuf,
        /// Who holds it, as its lock file says ("process 123, broker at 127.0.0.1:9092").
        holder: String,
    },
}

/// The broker running on `dir` in another process, if one does: its `host:port`, from the lock
/// file it keeps there. Commands that only read (`status`, `dlq show`) use it instead of
/// failing when `sluice run` holds the directory.
pub fn running_broker(dir: &Path) -> Option<String> {
    let file = std::fs::File::open(dir.join(LOCK_FILE)).ok()?;
    // A lock we can take means no broker holds it: the file is stale.
    if file.try_lock_shared().is_ok() {
        return None;
    }
    let text = std::fs::read_to_string(dir.join(LOCK_FILE)).ok()?;
    text.lines().find_map(|l| l.strip_prefix("broker ")).map(str::to_owned)
}

/// The lock file in a data directory.
const LOCK_FILE: &str = "LOCK";

/// Takes the data directory's lock for this process and says in it who holds it.
fn lock(dir: &Path, addr: SocketAddr) -> Result<std::fs::File, BrokerError> {
    use std::io::Write as _;
    let path = dir.join(LOCK_FILE);
    let data_dir = |source| BrokerError::DataDir { path: path.clone(), source };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(data_dir)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let pid = text.lines().find_map(|l| l.strip_prefix("pid ")).unwrap_or("?");
            let broker = text.lines().find_map(|l| l.strip_prefix("broker ")).unwrap_or("?");
            return Err(BrokerError::InUse {
                path: dir.to_owned(),
                holder: format!("process {pid}, broker at {broker}"),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(data_dir(e)),
    }
    file.set_len(0).map_err(data_dir)?;
    write!(file, "pid {}\nbroker {addr}\n", std::process::id()).map_err(data_dir)?;
    Ok(file)
}

/// A running embedded broker.
///
/// The broker runs on its own runtime, on its own threads. Sharing the flows' runtime would let
/// a flow's blocking client call (librdkafka's synchronous commit, a file sink's fsync) occupy
/// the very worker thread the broker needs to answer that call — on a two-core machine that is
/// a deadlock, not a slowdown.
#[derive(Debug)]
pub struct EmbeddedBroker {
    /// `host:port` for rdkafka's `bootstrap.servers`.
    pub bootstrap: String,
    /// Cancelled to stop the broker (on drop).
    stop: CancellationToken,
    /// Resolves when the broker's runtime has ended, with the reason if it failed.
    stopped: Option<oneshot::Receiver<Result<(), String>>>,
    /// The data directory's lock, held while the broker runs.
    _lock: Option<std::fs::File>,
}

impl EmbeddedBroker {
    /// Starts a broker listening on `listen` (port 0 picks a free port).
    pub async fn start(storage: BrokerStorage, listen: &str) -> Result<EmbeddedBroker, BrokerError> {
        let addr = resolve_port(listen)?;
        let (storage_url, lock) = match &storage {
            BrokerStorage::Sqlite(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| BrokerError::DataDir { path: dir.clone(), source })?;
                let lock = lock(dir, addr)?;
                (sqlite_url(&dir.join("broker.db"))?, Some(lock))
            }
        };
        let endpoint = Url::parse(&format!("tcp://{addr}")).map_err(|e| BrokerError::Start(e.to_string()))?;
        let stop = CancellationToken::new();
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(), String>>();
        let (stopped_tx, stopped_rx) = oneshot::channel::<Result<(), String>>();
        let token = stop.clone();
        std::thread::Builder::new()
            .name("sluice-broker".into())
            .spawn(move || {
                let BrokerStorage::Sqlite(dir) = &storage;
                let result = supervise(storage_url, endpoint, dir, token, ready_tx);
                let _ = stopped_tx.send(result);
            })
            .map_err(|e| BrokerError::Start(format!("starting broker thread: {e}")))?;
        match ready_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(BrokerError::Start(e)),
            Err(_) => return Err(BrokerError::Start("broker thread ended before it was ready".into())),
        }
        // Wait until the listener accepts connections so the first client does not race it. A
        // broker that says it is ready but never answers is a failed start, not a success the
        // first client finds out about.
        let mut answered = false;
        for _ in 0..250 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                answered = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        if !answered {
            stop.cancel();
            return Err(BrokerError::Start(format!(
                "the broker's listener on {addr} did not accept a connection within 5 s"
            )));
        }
        Ok(EmbeddedBroker { bootstrap: addr.to_string(), stop, stopped: Some(stopped_rx), _lock: lock })
    }

    /// Runs until the broker stops; `Err` says why if it failed.
    pub async fn wait(mut self) -> Result<(), Invalid> {
        match self.stopped.take() {
            Some(rx) => rx.await.unwrap_or_else(|_| Err("broker thread ended unexpectedly".into())).map_err(Invalid),
            None => Ok(()),
        }
    }
}

/// Below this much free space the data directory's disk counts as full: SQLite needs room for
/// its journal and new pages; tansu answers a produce it cannot store with nothing better than
/// "unknown broker error", and may panic on a group write that fails.
const LOW_DISK_BYTES: u64 = 16 << 20;

/// What [`disk_full`] reports: the data directory whose disk is full, and its free bytes.
static DISK_FULL: std::sync::Mutex<Option<(PathBuf, u64)>> = std::sync::Mutex::new(None);

/// If this process's embedded broker is out of disk space: which directory, and how much is
/// left. Producers of a full broker only see "unknown broker error"; the runtime adds this to
/// what it reports so the reason is named.
pub fn disk_full() -> Option<String> {
    let full = DISK_FULL.lock().ok()?.clone()?;
    Some(format!(
        "the embedded broker's data directory {} has no space left on device ({} bytes free); writes resume once space is freed",
        full.0.display(),
        full.1
    ))
}

/// Watches the free space of the data directory's file system every second, and says once when
/// it runs out and once when it is back. Sources hold back while it is out ([`disk_full`]), so
/// SQLite keeps the margin for the broker's own bookkeeping; nothing acknowledged is lost.
async fn watch_disk(dir: PathBuf, stop: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let Ok(vfs) = nix::sys::statvfs::statvfs(&dir) else { continue };
        // The field types differ between platforms (u32 on some); u64 holds either.
        #[allow(clippy::unnecessary_cast)]
        let free = (vfs.blocks_available() as u64).saturating_mul(vfs.fragment_size() as u64);
        let Ok(mut state) = DISK_FULL.lock() else { return };
        match (state.is_some(), free < LOW_DISK_BYTES) {
            (false, true) => {
                tracing::error!(data_dir = %dir.display(), free_bytes = free, margin_bytes = LOW_DISK_BYTES, "the embedded broker's disk is full (no space left on device, or under the margin): sources are held back until space is freed");
                *state = Some((dir.clone(), free));
            }
            (true, true) => *state = Some((dir.clone(), free)),
            (true, false) => {
                tracing::info!(data_dir = %dir.display(), free_bytes = free, "space was freed on the embedded broker's disk; it takes writes again");
                *state = None;
            }
            (false, false) => {}
        }
    }
}

/// Set when a task of the embedded broker panics (see [`watch_panics`]).
static BROKER_PANICKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Notes panics on the broker's threads. tansu 0.6 panics on some storage failures (a full
/// disk: "more or less than one row"); the panic ends one task and leaves a broker that accepts
/// connections but can store nothing. The hook lets [`supervise`] see that and restart it.
fn watch_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name().is_some_and(|n| n.starts_with("sluice-broker")) {
                BROKER_PANICKED.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

/// Runs the broker on this thread until `stop` is cancelled, starting it again on the same
/// data and address whenever it fails or one of its tasks panics: what it acknowledged is in
/// SQLite, and clients reconnect by themselves. Readiness of the first start is reported on
/// `ready`; a first start that fails ends here.
fn supervise(
    storage: Url,
    endpoint: Url,
    dir: &Path,
    stop: CancellationToken,
    ready: oneshot::Sender<Result<(), String>>,
) -> Result<(), String> {
    watch_panics();
    let mut ready = Some(ready);
    let mut wait = std::time::Duration::from_secs(1);
    loop {
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sluice-broker")
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let e = format!("starting broker runtime: {e}");
                return match ready.take() {
                    Some(r) => {
                        let _ = r.send(Err(e.clone()));
                        Err(e)
                    }
                    None => Err(e),
                };
            }
        };
        BROKER_PANICKED.store(false, std::sync::atomic::Ordering::SeqCst);
        rt.spawn(watch_disk(dir.to_owned(), stop.clone()));
        let first = ready.is_some();
        let result = rt.block_on(serve(storage.clone(), endpoint.clone(), stop.clone(), ready.take()));
        rt.shutdown_timeout(std::time::Duration::from_secs(5));
        if stop.is_cancelled()
            || (first && result.is_ok() && !BROKER_PANICKED.load(std::sync::atomic::Ordering::SeqCst))
        {
            return result;
        }
        let why = result.err().unwrap_or_else(|| "a task of the embedded broker panicked".to_owned());
        tracing::error!(error = %why, wait_secs = wait.as_secs(), data_dir = %dir.display(), "the embedded broker failed; starting it again on the same data");
        std::thread::sleep(wait);
        wait = (wait * 2).min(std::time::Duration::from_secs(10));
        if stop.is_cancelled() {
            return Ok(());
        }
    }
}

/// Builds and runs tansu's broker until `stop` is cancelled or one of its tasks panics;
/// reports readiness on `ready` (the first start only).
async fn serve(
    storage: Url,
    endpoint: Url,
    stop: CancellationToken,
    ready: Option<oneshot::Sender<Result<(), String>>>,
) -> Result<(), String> {
    let built = tansu_broker::broker::Broker::<
        tansu_broker::coordinator::group::administrator::Controller<tansu_storage::StorageContainer>,
        tansu_storage::StorageContainer,
    >::builder()
    .node_id(0)
    .cluster_id("sluice")
    .incarnation_id(uuid::Uuid::new_v4())
    .advertised_listener(endpoint.clone())
    .storage(storage)
    .listener(endpoint)
    .silent(true)
    .build()
    .await;
    // A failed first start is the caller's to report; a failed restart is retried.
    let failed = |ready: Option<oneshot::Sender<Result<(), String>>>, e: String| match ready {
        Some(r) => {
            let _ = r.send(Err(e));
            Ok(())
        }
        None => Err(format!("restarting the embedded broker: {e}")),
    };
    let mut broker = match built {
        Ok(b) => b,
        Err(e) => return failed(ready, e.to_string()),
    };
    if let Err(e) = broker.register().await {
        return failed(ready, e.to_string());
    }
    if let Some(r) = ready {
        let _ = r.send(Ok(()));
    } else {
        tracing::info!("the embedded broker is running again");
    }
    let panicked = async {
        while !BROKER_PANICKED.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    };
    tokio::select! {
        r = broker.listen(tokio::time::Instant::now()) => r.map(|_| ()).map_err(|e| format!("embedded broker stopped: {e}")),
        _ = panicked => Err("a task of the embedded broker panicked".to_owned()),
        _ = stop.cancelled() => Ok(()),
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Turns `host:0` into a concrete free port: the broker must advertise the port clients use.
fn resolve_port(listen: &str) -> Result<SocketAddr, BrokerError> {
    let bind = |source| BrokerError::Bind { addr: listen.to_owned(), source };
    let l = TcpListener::bind(listen).map_err(bind)?;
    l.local_addr().map_err(bind)
}

/// tansu joins a `sqlite://` URL's path onto the working directory, and `PathBuf::push` of an
/// absolute path replaces what it is pushed onto; so an absolute file path written after an
/// empty host (`sqlite:////abs/file`) lands exactly at that path.
fn sqlite_url(file: &Path) -> Result<Url, BrokerError> {
    let abs = std::path::absolute(file).map_err(|source| BrokerError::DataDir { path: file.to_owned(), source })?;
    Url::parse(&format!("sqlite:///{}", abs.display())).map_err(|e| BrokerError::Start(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_is_locked_by_its_broker_and_says_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = "127.0.0.1:9999".parse().unwrap();
        assert_eq!(running_broker(dir.path()), None);
        let held = lock(dir.path(), addr).unwrap();
        let e = lock(dir.path(), addr).unwrap_err().to_string();
        assert!(e.contains("in use by another sluice process") && e.contains("127.0.0.1:9999"), "{e}");
        assert_eq!(running_broker(dir.path()).as_deref(), Some("127.0.0.1:9999"));
        drop(held);
        assert_eq!(running_broker(dir.path()), None, "a released lock is stale");
        assert!(lock(dir.path(), addr).is_ok());
    }

    #[test]
    fn sqlite_url_keeps_an_absolute_path() {
        let u = sqlite_url(Path::new("/tmp/x/broker.db")).unwrap();
        let p = u.path().strip_prefix('/').unwrap();
        assert_eq!(p, "/tmp/x/broker.db");
    }
}
