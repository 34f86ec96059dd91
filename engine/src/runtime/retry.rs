//! Retrying a destination's passing failures within a flow's bounds, and the batch limits
//! both halves of a flow share.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::connector::{Sink, WriteContext, Written};
use crate::error::FlowError;
use crate::telemetry::FlowMetrics;

/// Tuning shared by both halves of a flow.
#[derive(Debug, Clone)]
pub struct BatchSettings {
    /// Most records per source poll and per sink batch.
    pub max_records: usize,
    /// Most payload bytes per sink batch (a batch always takes at least one message). With
    /// `max_records` this bounds what a worker holds unacknowledged, whatever the backlog.
    pub max_bytes: usize,
    /// How long a sink batch waits to fill once its first message arrived.
    pub linger: Duration,
    /// How a failing destination is retried.
    pub retry: RetryPolicy,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            max_records: 5000,
            max_bytes: 16 << 20,
            // 25 ms: at full speed batches fill by count before the linger ends, so it costs
            // no throughput; at half speed it is most of a record's wait (bench/run.sh, job
            // (b) at 40,000 rec/s on Kafka: p99 108.6 ms with 50, 76.3 ms with 25, the same CPU).
            linger: Duration::from_millis(25),
            retry: RetryPolicy::default(),
        }
    }
}

/// Bounds on retrying a write that failed with a retriable error: exponential backoff with
/// full jitter, at least what the destination asked for (`Retry-After`), limited by attempts
/// and by total time — then the flow fails with the last error, having committed nothing past
/// the batch.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// The first wait.
    pub initial: Duration,
    /// The longest single wait.
    pub max_delay: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: usize,
    /// Time in all, across attempts.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
            max_attempts: 12,
            max_elapsed: Duration::from_secs(180),
        }
    }
}

/// The waits between attempts at one thing that keeps failing, within a [`RetryPolicy`]:
/// exponential, with full jitter (so workers that failed together do not retry together), at
/// least what the service asked for. The one backoff every retry loop of a flow uses — the
/// sink's writes and the source's reads alike.
pub struct Backoff {
    delays: backon::ExponentialBackoff,
    max_elapsed: Duration,
    started: Instant,
    attempts: usize,
}

impl Backoff {
    /// A backoff starting now, for the first failure.
    pub fn new(policy: &RetryPolicy) -> Self {
        use backon::BackoffBuilder as _;
        let delays = backon::ExponentialBuilder::default()
            .with_min_delay(policy.initial)
            .with_max_delay(policy.max_delay)
            .with_max_times(policy.max_attempts.saturating_sub(1))
            .with_jitter()
            .build();
        Backoff { delays, max_elapsed: policy.max_elapsed, started: Instant::now(), attempts: 0 }
    }

    /// Records a failed attempt that asked for at least `retry_after`: the wait before the
    /// next one, or `None` when the policy's attempts or time are spent.
    pub fn next(&mut self, retry_after: Option<Duration>) -> Option<Duration> {
        self.attempts += 1;
        let delay = self.delays.next()?.max(retry_after.unwrap_or_default());
        (self.started.elapsed() + delay <= self.max_elapsed).then_some(delay)
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> usize {
        self.attempts
    }

    /// Time since the first failure.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Writes `batches` to `sink`, retrying retriable failures within `policy`.
pub async fn write_with_retry(
    metrics: &FlowMetrics,
    sink: &mut dyn Sink,
    batches: &[arrow_array::RecordBatch],
    write: WriteContext<'_>,
    policy: &RetryPolicy,
    shutdown: &CancellationToken,
) -> Result<Written, FlowError> {
    let flow = metrics.name();
    let mut backoff = Backoff::new(policy);
    loop {
        let err = match sink.write(batches, write).await {
            Ok(w) => return Ok(w),
            Err(e) => e,
        };
        metrics.sink_error(err.is_retriable());
        if !err.is_retriable() {
            return Err(FlowError::Connector { flow: flow.to_owned(), source: Box::new(err) });
        }
        let Some(delay) = backoff.next(err.retry_after()) else {
            return Err(FlowError::RetriesExhausted {
                flow: flow.to_owned(),
                attempts: backoff.attempts(),
                secs: backoff.elapsed().as_secs(),
                source: Box::new(err),
            });
        };
        // The cause is a class, never the message: a message may hold what a label must not.
        metrics.retry(if err.retry_after().is_some() { "sink_throttled" } else { "sink_retriable" });
        tracing::warn!(flow, attempt = backoff.attempts(), wait_ms = delay.as_millis() as u64, error = %err, "write failed; retrying");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return Err(FlowError::StoppedWhileRetrying { flow: flow.to_owned() }),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::error::ConnectorError;

    use async_trait::async_trait;

    /// A destination that fails the first `failures` writes, then accepts.
    struct Flaky {
        failures: usize,
        calls: usize,
        retry_after: Option<Duration>,
    }

    #[async_trait]
    impl Sink for Flaky {
        async fn write(
            &mut self,
            _: &[arrow_array::RecordBatch],
            _: WriteContext<'_>,
        ) -> Result<Written, ConnectorError> {
            self.calls += 1;
            if self.calls <= self.failures {
                return Err(ConnectorError::Retriable {
                    context: "posting batch".into(),
                    message: "503 Service Unavailable".into(),
                    retry_after: self.retry_after,
                });
            }
            Ok(Written::all())
        }
        fn describe(&self) -> String {
            "flaky".into()
        }
    }

    const W: WriteContext<'static> = WriteContext { batch_id: "t/0:0-0", run_id: "r" };

    fn quick() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            max_attempts: 5,
            max_elapsed: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn retriable_failures_are_retried_until_they_pass() {
        let mut s = Flaky { failures: 3, calls: 0, retry_after: None };
        write_with_retry(&FlowMetrics::disabled("f"), &mut s, &[], W, &quick(), &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(s.calls, 4);
    }

    #[tokio::test]
    async fn retries_are_bounded_by_attempts() {
        let mut s = Flaky { failures: 100, calls: 0, retry_after: None };
        let e = write_with_retry(&FlowMetrics::disabled("f"), &mut s, &[], W, &quick(), &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(s.calls, 5);
        let text = e.to_string();
        assert!(text.contains("giving up after 5 attempts") && text.contains("503"), "{text}");
    }

    #[tokio::test]
    async fn retry_after_is_honoured_and_bounded_by_time() {
        let mut s = Flaky { failures: 1, calls: 0, retry_after: Some(Duration::from_millis(300)) };
        let t = Instant::now();
        write_with_retry(&FlowMetrics::disabled("f"), &mut s, &[], W, &quick(), &CancellationToken::new())
            .await
            .unwrap();
        assert!(t.elapsed() >= Duration::from_millis(300), "waited {:?}", t.elapsed());
        let mut s = Flaky { failures: 1, calls: 0, retry_after: Some(Duration::from_secs(60)) };
        let e = write_with_retry(&FlowMetrics::disabled("f"), &mut s, &[], W, &quick(), &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(e, FlowError::RetriesExhausted { attempts: 1, .. }), "{e}");
    }

    #[tokio::test]
    async fn a_user_error_is_not_retried_and_shutdown_interrupts_waiting() {
        struct Wrong;
        #[async_trait]
        impl Sink for Wrong {
            async fn write(
                &mut self,
                _: &[arrow_array::RecordBatch],
                _: WriteContext<'_>,
            ) -> Result<Written, ConnectorError> {
                Err(ConnectorError::User("column `x` does not exist".into()))
            }
            fn describe(&self) -> String {
                "wrong".into()
            }
        }
        let e = write_with_retry(&FlowMetrics::disabled("f"), &mut Wrong, &[], W, &quick(), &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(e, FlowError::Connector { .. }), "{e}");

        let stop = CancellationToken::new();
        stop.cancel();
        let mut s = Flaky { failures: 100, calls: 0, retry_after: None };
        let e = write_with_retry(&FlowMetrics::disabled("f"), &mut s, &[], W, &quick(), &stop).await.unwrap_err();
        assert!(matches!(e, FlowError::StoppedWhileRetrying { .. }), "{e}");
    }
}
