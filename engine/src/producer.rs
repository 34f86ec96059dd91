//! sluice's Kafka producer: rdkafka's `BaseProducer` with a delivery-report thread that sleeps
//! until librdkafka has something for it.
//!
//! Why not rdkafka's `FutureProducer`: its polling thread calls `poll(100 ms)` in a loop, and
//! that poll re-polls with the time left rounded down to whole milliseconds — so the last
//! fraction of a millisecond of every window is spent polling with a zero timeout, in a tight
//! loop. The benchmark harness's profile showed that as the largest item of a flow's CPU: each
//! producer thread (a flow has three: sink, dead letters, run records) burned ≈ 1 % of a core
//! whether or not it had anything to do, which on a broker-bound run was more than the SQL stage.
//!
//! Here librdkafka writes a byte to a socket whenever the producer's event queue goes from empty
//! to non-empty (`rd_kafka_queue_io_event_enable`); the thread blocks reading that socket, then
//! drains the queue with zero-timeout polls until it is empty. It wakes for real work, or every
//! [`STOP_CHECK`] to see whether the producer was dropped.

#![allow(unsafe_code)]

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::bindings as rdsys;
use rdkafka::client::ClientContext;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::error::KafkaError;
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, FutureRecord, Producer as _, ProducerContext};

/// How often an idle delivery thread looks whether its producer is gone.
const STOP_CHECK: Duration = Duration::from_millis(200);

/// The acknowledgement of one record: `Ok(Ok(()))` once the cluster has it, `Ok(Err(_))` if it
/// refused it or it timed out, `Err(_)` if the producer went away first.
pub type Delivery = tokio::sync::oneshot::Receiver<Result<(), KafkaError>>;

/// Completes each record's [`Delivery`].
pub struct Deliveries;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<tokio::sync::oneshot::Sender<Result<(), KafkaError>>>;

    fn delivery(&self, result: &DeliveryResult<'_>, tx: Self::DeliveryOpaque) {
        // The receiver may be gone (a batch abandoned at shutdown); nothing waits then.
        let _ = tx.send(result.as_ref().map(|_| ()).map_err(|(e, _)| e.clone()));
    }
}

/// A producer handle; clones share one librdkafka client and one delivery thread.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

struct Inner {
    base: Arc<BaseProducer<Deliveries>>,
    stop: Arc<AtomicBool>,
    /// The write end of the wake socket, to wake the thread at once when the producer drops.
    wake: UnixStream,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The producer's main event queue, as a raw librdkafka handle the delivery thread may use.
struct MainQueue(*mut rdsys::rd_kafka_queue_t);

// SAFETY: librdkafka queue handles are thread-safe; the handle is only destroyed by the thread
// that owns it, after its last use.
unsafe impl Send for MainQueue {}

impl Producer {
    /// Creates a producer from `config` and starts its delivery thread.
    pub fn create(config: &ClientConfig) -> Result<Producer, KafkaError> {
        let base = Arc::new(BaseProducer::from_config_and_context(config, Deliveries)?);
        let (mut wake_rx, wake_tx) = UnixStream::pair().map_err(io_error)?;
        // librdkafka writes from its own threads and must never block on a full socket; a
        // missed byte is harmless, as the queue is drained whole on every wake.
        wake_tx.set_nonblocking(true).map_err(io_error)?;
        wake_rx.set_read_timeout(Some(STOP_CHECK)).map_err(io_error)?;
        let wake = wake_tx.try_clone().map_err(io_error)?;
        // SAFETY: the client pointer is valid while `base` lives; the returned handle holds its
        // own reference to the queue and is released by the thread below with
        // `rd_kafka_queue_destroy`, after the io event was switched off.
        let queue = MainQueue(unsafe { rdsys::rd_kafka_queue_get_main(base.client().native_ptr()) });
        const WAKE: &[u8] = b"w";
        // SAFETY: `queue` is valid; librdkafka copies the payload; the socket outlives the
        // registration (it is dropped by the thread after switching the event off).
        unsafe {
            rdsys::rd_kafka_queue_io_event_enable(queue.0, wake_tx.as_raw_fd(), WAKE.as_ptr().cast(), WAKE.len())
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (b, s) = (base.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("sluice-deliveries".into())
            .spawn(move || {
                let queue = queue;
                let mut buf = [0u8; 64];
                loop {
                    // SAFETY: `queue` is valid until destroyed below.
                    let waiting = || unsafe { rdsys::rd_kafka_queue_length(queue.0) };
                    let mut left = waiting();
                    while left > 0 {
                        // A zero timeout serves one waiting event and returns.
                        b.poll(Duration::ZERO);
                        let now = waiting();
                        // An op a poll does not take off the queue must not make this a busy
                        // loop: stop and wait for the next wake (or the timeout) instead.
                        if now >= left {
                            break;
                        }
                        left = now;
                    }
                    if s.load(Ordering::Acquire) {
                        break;
                    }
                    // Woken by librdkafka (the queue has events) or by the timeout (to look at
                    // `stop`); either way the loop drains and checks again.
                    let _ = wake_rx.read(&mut buf);
                }
                // SAFETY: switching the event off before the socket closes; then releasing this
                // thread's queue reference, used no more.
                unsafe {
                    rdsys::rd_kafka_queue_io_event_enable(queue.0, -1, std::ptr::null(), 0);
                    rdsys::rd_kafka_queue_destroy(queue.0);
                }
                drop(wake_tx);
            })
            .map_err(io_error)?;
        Ok(Producer { inner: Arc::new(Inner { base, stop, wake, thread: Some(thread) }) })
    }

    /// Queues `record`; the returned [`Delivery`] resolves with the cluster's answer. A full
    /// queue (or any other refusal to queue) gives the record back with the error.
    // Large `Err`: the record comes back whole so the caller can retry it, as rdkafka's own
    // `send_result` does.
    #[allow(clippy::result_large_err)]
    pub fn send_result<'a, K: ToBytes + ?Sized, P: ToBytes + ?Sized>(
        &self,
        record: FutureRecord<'a, K, P>,
    ) -> Result<Delivery, (KafkaError, FutureRecord<'a, K, P>)> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let base = BaseRecord {
            topic: record.topic,
            partition: record.partition,
            payload: record.payload,
            key: record.key,
            timestamp: record.timestamp,
            headers: record.headers,
            delivery_opaque: Box::new(tx),
        };
        match self.inner.base.send(base) {
            Ok(()) => Ok(rx),
            Err((e, back)) => Err((
                e,
                FutureRecord {
                    topic: back.topic,
                    partition: back.partition,
                    payload: back.payload,
                    key: back.key,
                    timestamp: back.timestamp,
                    headers: back.headers,
                },
            )),
        }
    }
}

/// Transactions, for a producer created with a `transactional.id`. librdkafka's calls block
/// until the coordinator answers, so each runs on tokio's blocking pool.
impl Producer {
    /// Registers the transactional id with its coordinator. Any earlier producer with the same
    /// id is fenced from then on (its open transaction aborted, its later writes refused).
    pub async fn init_transactions(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.blocking(move |p| p.init_transactions(timeout)).await
    }

    /// Starts a transaction: what is sent from now until the commit is one unit.
    pub fn begin_transaction(&self) -> Result<(), KafkaError> {
        self.inner.base.begin_transaction()
    }

    /// Flushes what was sent in the transaction and commits it.
    pub async fn commit_transaction(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.blocking(move |p| p.commit_transaction(timeout)).await
    }

    /// The producer's fatal error, if it has had one (a fenced transactional producer has).
    pub fn fatal_error(&self) -> Option<(rdkafka::types::RDKafkaErrorCode, String)> {
        self.inner.base.client().fatal_error()
    }

    /// Aborts the open transaction: readers with `read_committed` never see its records.
    pub async fn abort_transaction(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.blocking(move |p| p.abort_transaction(timeout)).await
    }

    async fn blocking(
        &self,
        call: impl FnOnce(&BaseProducer<Deliveries>) -> Result<(), KafkaError> + Send + 'static,
    ) -> Result<(), KafkaError> {
        let base = self.inner.base.clone();
        // A panic in the call was printed by the panic hook; the caller sees the call cancelled.
        tokio::task::spawn_blocking(move || call(&base)).await.unwrap_or(Err(KafkaError::Canceled))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Non-blocking; if the socket is full the thread is awake anyway.
        let _ = std::io::Write::write(&mut &self.wake, b"s");
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // `base` drops after this: librdkafka purges what is left and serves the last reports.
    }
}

fn io_error(e: std::io::Error) -> KafkaError {
    KafkaError::ClientCreation(format!("starting the producer's delivery thread: {e}"))
}
