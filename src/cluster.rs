//! sluice's own Kafka cluster: the embedded broker (`sluice broker`, `kafka: embedded`) or an
//! external one.

use std::path::PathBuf;
use std::process::ExitCode;

use sluice_engine::broker::{BrokerStorage, EmbeddedBroker, running_broker};
use sluice_engine::kafka::KafkaSettings;

use crate::config::{Config, KafkaSection};

/// `sluice broker`.
pub async fn broker(data_dir: PathBuf, listen: &str) -> ExitCode {
    let storage = BrokerStorage::Sqlite(data_dir.clone());
    let broker = match EmbeddedBroker::start(storage, listen).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    println!("sluice broker listening on {} (data: {})", broker.bootstrap, data_dir.display());
    let shutdown = crate::stop::on_signal();
    tokio::select! {
        r = broker.wait() => {
            eprintln!("error: {}", r.err().unwrap_or_else(|| "the broker stopped".into()));
            ExitCode::from(1)
        }
        _ = shutdown.cancelled() => ExitCode::SUCCESS,
    }
}

/// Whether a command may use the broker another process runs on the embedded data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attach {
    /// It must run its own (`sluice run`: two runs of one config would run every source twice).
    Never,
    /// It may use the running one (commands that inspect or replay).
    IfRunning,
}

/// Starts the embedded broker when the config asks for one; returns it (to keep it alive) and
/// the settings that reach sluice's cluster. With [`Attach::IfRunning`], a broker another
/// process already runs on the data directory is used instead.
pub(crate) async fn own_cluster(
    cfg: &Config,
    attach: Attach,
) -> Result<(Option<EmbeddedBroker>, KafkaSettings), ExitCode> {
    let (storage, listen, settings) = match &cfg.kafka {
        KafkaSection::External(s) => return Ok((None, s.clone())),
        KafkaSection::Embedded { storage, listen, settings } => (storage, listen, settings),
    };
    let mut s = settings.clone();
    // The embedded broker (tansu 0.6) answers every fetch only after a wait, data or not: the
    // fetch's whole max wait, or half of it from 250 ms up. librdkafka's 500 ms default would
    // add 250 ms to every hop of a continuous flow; 50 ms costs an idle consumer twenty
    // fetches a second.
    s.options.push(("fetch.wait.max.ms".into(), "50".into()));
    if let (Attach::IfRunning, BrokerStorage::Sqlite(dir)) = (attach, storage)
        && let Some(running) = running_broker(dir)
    {
        tracing::info!(bootstrap = %running, "using the embedded broker another sluice process runs on the data directory");
        s.bootstrap_servers = running;
        return Ok((None, s));
    }
    match EmbeddedBroker::start(storage.clone(), listen).await {
        Ok(b) => {
            s.bootstrap_servers = b.bootstrap.clone();
            tracing::info!(bootstrap = %b.bootstrap, "embedded broker started");
            Ok((Some(b), s))
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(1))
        }
    }
}
