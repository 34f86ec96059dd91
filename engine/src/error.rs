//! The engine's errors: the core's ([`ConnectorError`], [`TransformError`]) and the one that
//! stops a flow ([`FlowError`]). Each says what was being done; none is logged where it is
//! returned.

use thiserror::Error;

pub use sluice_core::error::{ConnectorError, Domain, Invalid, TransformError};

/// An error that stops a flow.
#[derive(Debug, Error)]
pub enum FlowError {
    /// A source or sink failed.
    #[error("flow `{flow}`: {source}")]
    Connector {
        /// The flow.
        flow: String,
        /// What failed (boxed: connector errors are large, and results carrying them are
        /// returned on every batch).
        #[source]
        source: Box<ConnectorError>,
    },
    /// The SQL stage failed.
    #[error(transparent)]
    Transform(#[from] TransformError),
    /// Talking to Kafka failed.
    #[error("flow `{flow}`: {context}: {message}")]
    Kafka {
        /// The flow.
        flow: String,
        /// What was being done.
        context: String,
        /// The client's error, with the cluster's secrets redacted.
        message: String,
    },
    /// A bad record stopped the flow, as its error policy says.
    #[error("flow `{flow}`: stopped by a bad record: {why}")]
    BadRecord {
        /// The flow.
        flow: String,
        /// Which record, where, and why.
        why: String,
    },
    /// A write kept failing after every retry the policy allows.
    #[error("flow `{flow}`: giving up after {attempts} attempts over {secs} s: {source}")]
    RetriesExhausted {
        /// The flow.
        flow: String,
        /// Attempts made.
        attempts: usize,
        /// Seconds spent.
        secs: u64,
        /// The last failure.
        #[source]
        source: Box<ConnectorError>,
    },
    /// Shutdown was requested while a write was being retried; the batch was not committed
    /// and is delivered again after a restart.
    #[error("flow `{flow}`: stopped while retrying a write")]
    StoppedWhileRetrying {
        /// The flow.
        flow: String,
    },
    /// sluice broke one of its own invariants: a bug to report.
    #[error("internal error (please report it): {0}")]
    Internal(String),
    /// The Kafka cluster could not be reached or set up.
    #[error(transparent)]
    Cluster(#[from] crate::kafka::KafkaSetupError),
}
