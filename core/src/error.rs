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

/// An error from a connector (a source or a sink). The variant says whose fault it is and
/// whether the runtime tries again: retrying is opt-in — only [`ConnectorError::Retriable`],
/// Kafka client errors and I/O errors of a passing kind (a timeout, a reset connection, a full
/// disk) are retried; a user's mistake and a bug in sluice stop the flow at once with the
/// message. A record the destination refuses is not an error at all: it is an outcome
/// ([`Written::rejected`](crate::connector::Written), or a source's `Malformed` item), and goes
/// to the dead-letter topic while the flow goes on.
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

    /// A failure that may pass (a service down, throttling): the runtime tries again.
    pub fn retriable(context: impl Into<String>, message: impl Into<String>) -> Self {
        ConnectorError::Retriable { context: context.into(), message: message.into(), retry_after: None }
    }

    /// A broken invariant of sluice's own: never retried, reported as a bug.
    pub fn internal(context: impl Into<String>, message: impl Into<String>) -> Self {
        ConnectorError::Internal { context: context.into(), message: message.into() }
    }

    /// Whose fault this is.
    pub fn domain(&self) -> Domain {
        match self {
            ConnectorError::User(_) => Domain::User,
            ConnectorError::Internal { .. } => Domain::Internal,
            ConnectorError::Io { .. } | ConnectorError::Kafka { .. } | ConnectorError::Retriable { .. } => {
                Domain::External
            }
        }
    }

    /// Whether trying the same thing again may succeed. Only errors that say so are retried:
    /// an I/O error whose kind may pass, a Kafka client error, a [`ConnectorError::Retriable`].
    pub fn is_retriable(&self) -> bool {
        match self {
            ConnectorError::Retriable { .. } | ConnectorError::Kafka { .. } => true,
            ConnectorError::Io { source, .. } => passing(source.kind()),
            ConnectorError::User(_) | ConnectorError::Internal { .. } => false,
        }
    }

    /// The wait the destination asked for, if it asked.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            ConnectorError::Retriable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Input that is not what it should be — a setting, a schema, a statement, a payload's framing
/// — and why, in words for whoever wrote it. Whose fault that is, and so whether the caller
/// refuses a record, a config line or a flow, is the caller's to say: it adds what it was doing
/// and picks the [`ConnectorError`] or [`TransformError`] variant.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<String> for Invalid {
    fn from(why: String) -> Self {
        Invalid(why)
    }
}

impl From<Invalid> for String {
    fn from(why: Invalid) -> Self {
        why.0
    }
}

impl From<&str> for Invalid {
    fn from(why: &str) -> Self {
        Invalid(why.to_owned())
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

/// Whether an I/O error of this kind may pass if tried again: a network hiccup, a timeout, a
/// full disk that may be freed. Missing files, refused permissions and bad data do not.
fn passing(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        kind,
        K::Interrupted
            | K::TimedOut
            | K::WouldBlock
            | K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::BrokenPipe
            | K::UnexpectedEof
            | K::AddrInUse
            | K::AddrNotAvailable
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::NetworkDown
            | K::StorageFull
            | K::ResourceBusy
            | K::QuotaExceeded
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error as IoError, ErrorKind};

    #[test]
    fn only_errors_that_may_pass_are_retried() {
        let io = |kind| ConnectorError::io("writing out/x.jsonl", IoError::from(kind));
        assert!(io(ErrorKind::StorageFull).is_retriable());
        assert!(io(ErrorKind::ConnectionReset).is_retriable());
        assert!(!io(ErrorKind::PermissionDenied).is_retriable());
        assert!(!io(ErrorKind::NotFound).is_retriable());
        assert!(ConnectorError::retriable("posting batch", "HTTP 503").is_retriable());
        assert!(!ConnectorError::internal("encoding rows as JSON", "bad type").is_retriable());
        assert!(!ConnectorError::User("column `x` does not exist".into()).is_retriable());
        assert_eq!(ConnectorError::internal("a", "b").domain(), Domain::Internal);
        assert_eq!(
            ConnectorError::internal("encoding rows", "bad type").to_string(),
            "encoding rows: internal error (please report it): bad type"
        );
    }
}
