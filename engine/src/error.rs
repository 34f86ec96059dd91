//! The engine's errors. Each says what was being done; none is logged where it is returned.

use thiserror::Error;

/// Whose fault an error is, so the runtime and the user know whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// The config or the data is wrong: fix it, do not retry.
    User,
    /// A service outside sluice failed or is unreachable: retrying may help.
    External,
    /// A bug in sluice.
    Internal,
}

/// An error from a connector (a source or a sink).
#[derive(Debug, Error)]
pub enum ConnectorError {
    /// Local file or socket I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. "reading data/orders.jsonl".
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A Kafka client call failed.
    #[error("{context}: {source}")]
    Kafka {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The connector's options or the data do not fit together.
    #[error("{0}")]
    User(String),
    /// The destination failed in a way that may pass: a timeout, a reset connection, a 5xx,
    /// throttling. The runtime backs off and tries again, within bounds.
    #[error("{context}: {message}")]
    Retriable {
        /// What was being done.
        context: String,
        /// What went wrong.
        message: String,
        /// How long the destination asked to be left alone (e.g. HTTP `Retry-After`).
        retry_after: Option<std::time::Duration>,
    },
    /// Anything else a connector reports, with its context.
    #[error("{context}: {message}")]
    Other {
        /// What was being done.
        context: String,
        /// What went wrong.
        message: String,
    },
}

impl ConnectorError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ConnectorError::Io { context: context.into(), source }
    }

    /// Wraps a Kafka error with what was being done.
    pub fn kafka(context: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        ConnectorError::Kafka { context: context.into(), source }
    }

    /// Whose fault this is.
    pub fn domain(&self) -> Domain {
        match self {
            ConnectorError::User(_) => Domain::User,
            ConnectorError::Io { .. }
            | ConnectorError::Kafka { .. }
            | ConnectorError::Retriable { .. }
            | ConnectorError::Other { .. } => Domain::External,
        }
    }

    /// Whether trying the same write again may succeed: external failures may pass, a user's
    /// mistake will not.
    pub fn is_retriable(&self) -> bool {
        self.domain() == Domain::External
    }

    /// The wait the destination asked for, if it asked.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            ConnectorError::Retriable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// An error from the SQL stage.
#[derive(Debug, Error)]
pub enum TransformError {
    /// The query could not be planned (bad column, bad syntax): the user's to fix.
    #[error("planning SQL for flow `{flow}`: {message}")]
    Plan {
        /// The flow whose query failed.
        flow: String,
        /// The planner's message.
        message: String,
    },
    /// Running the planned query over a batch failed.
    #[error("running SQL for flow `{flow}`: {message}")]
    Execute {
        /// The flow whose query failed.
        flow: String,
        /// The executor's message.
        message: String,
    },
    /// A record broke a validation rule whose action is `fail`.
    #[error(
        "flow `{flow}`: validation rule `{rule}` (action: fail) failed for the record at position {index} of its batch"
    )]
    Validation {
        /// The flow.
        flow: String,
        /// The rule's name.
        rule: String,
        /// The record's position in the batch handed to the stage.
        index: usize,
    },
}

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
