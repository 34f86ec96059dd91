//! The errors connectors and the SQL stage return. Each says what was being done; none is
//! logged where it is returned.

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
        /// The client's error (boxed: the core does not link a Kafka client).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
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
    /// sluice broke one of its own invariants: a bug to report, never retried.
    #[error("{context}: internal error (please report it): {message}")]
    Internal {
        /// What was being done.
        context: String,
        /// What went wrong.
        message: String,
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
    pub fn kafka(context: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        ConnectorError::Kafka { context: context.into(), source: Box::new(source) }
    }

    /// Whose fault this is.
    pub fn domain(&self) -> Domain {
        match self {
            ConnectorError::User(_) => Domain::User,
            ConnectorError::Internal { .. } => Domain::Internal,
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
