//! Where logs go: standard error, every line passed through the secret redactor first.
//!
//! sluice never formats a secret into a log line itself (see `sluice_engine::secret`), but the
//! libraries it drives may log what they were handed — the AWS SDK logs the S3 access key id at
//! debug level — and `SLUICE_LOG=trace` turns those logs on. So the writer, not each call site,
//! is where secrets are kept out: every registered secret value becomes `*****`.
//!
//! Two formats: text for people, and JSON (`--log-format json`, `SLUICE_LOG_FORMAT=json`) for log
//! pipelines — one object per line with the level, target, message and fields, and the fields
//! of the spans it happened in (`flow`, `stage`, `topic`, `partition`, …), as Vector and
//! Redpanda Connect write theirs. The redactor sees the whole line either way.

use std::io::Write;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Text lines, coloured on a terminal.
    #[default]
    Text,
    /// One JSON object per line, with the fields of the spans it happened in.
    Json,
}

/// Sets up logging: level from `SLUICE_LOG` (default: warnings, and sluice's own info), in
/// `format`, secrets redacted. The trace export's layer sits beside it with a filter of its
/// own, so spans are exported whatever the log level (and none until a config asks for it).
pub fn init(format: LogFormat) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| {
        EnvFilter::new("warn,sluice=info,sluice_engine=info,sluice_connectors=info,sluice_sql=info")
    });
    let ceiling = filter.max_level_hint();
    let fmt = tracing_subscriber::fmt::layer().with_writer(|| RedactingStderr);
    let fmt = match format {
        LogFormat::Text => {
            fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).with_filter(filter).boxed()
        }
        LogFormat::Json => fmt.json().with_current_span(true).with_span_list(true).with_filter(filter).boxed(),
    };
    tracing_subscriber::registry().with(fmt).with(sluice_engine::telemetry::trace::layer()).init();
    // `init` bridges the `log` crate's records at every level, so each one a library writes
    // (rdkafka logs at trace level on every poll) would be built, passed to the subscriber and
    // turned away there: 8 % of a flow's CPU in a profile. Only the log filter shows `log`
    // records (the trace export takes spans), so its ceiling is `log`'s, checked at the call.
    if let Some(ceiling) = ceiling {
        log::set_max_level(as_log(ceiling));
    }
}

/// A `tracing` level filter as the `log` crate's.
fn as_log(level: tracing_subscriber::filter::LevelFilter) -> log::LevelFilter {
    match level.into_level() {
        None => log::LevelFilter::Off,
        Some(tracing::Level::ERROR) => log::LevelFilter::Error,
        Some(tracing::Level::WARN) => log::LevelFilter::Warn,
        Some(tracing::Level::INFO) => log::LevelFilter::Info,
        Some(tracing::Level::DEBUG) => log::LevelFilter::Debug,
        Some(tracing::Level::TRACE) => log::LevelFilter::Trace,
    }
}

/// Standard error, with registered secrets replaced. The formatter writes each event in one
/// `write_all` of the whole line, so a secret never straddles two writes.
struct RedactingStderr;

impl Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().lock().write_all(sluice_engine::secret::redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
