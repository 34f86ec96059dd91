//! The flow's dead-letter topic, and handing records to a producer and waiting for Kafka's
//! acknowledgement.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use crate::kafka::KafkaSettings;
use crate::producer::{Delivery, Producer};
use crate::record::now_ms;
use sluice_core::names::dlq_header;

/// Writes to the flow's DLQ topic: the original key and payload, with the reason in headers.
///
/// A dead letter must fit the cluster as much as any record: one that does not would fail its
/// own write and stop the flow it was meant to keep going. So a letter over the record limit
/// keeps the first [`KEPT_BYTES`] of its payload, says so (`sluice.truncated`), and carries the
/// size it had (`sluice.original_bytes`); its origin headers say where the whole record is.
#[derive(Clone)]
pub struct DeadLetters {
    producer: Producer,
    topic: String,
    flow: String,
    /// The cluster's record limit (`kafka.max_record_bytes`).
    max_record_bytes: usize,
}

/// How much of an oversized dead letter's payload is kept: enough to see what it was.
pub const KEPT_BYTES: usize = 64 * 1024;

/// The most of a key or a reason a dead letter keeps (each is short unless something is wrong).
const KEPT_SHORT_BYTES: usize = 4 * 1024;

/// Where a dead letter came from, for its headers.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The stage that refused it: `source`, `decode`, `sql`, `validate` or `sink`.
    pub stage: &'a str,
    /// The topic, partition and offset it was read from, when it came from Kafka.
    pub kafka: Option<(&'a str, i32, i64)>,
    /// How many times it has failed, this time included (more than 1 after a replay).
    pub attempts: u32,
    /// For a record refused before it reached Kafka: where the source read it (the change
    /// record's `source` metadata as JSON: connector, file and line, table, …).
    pub source: Option<&'a str>,
    /// The record's W3C `traceparent`, kept so the dead letter stays in its trace.
    pub traceparent: Option<&'a str>,
}

impl<'a> Origin<'a> {
    /// A dead letter of `stage` with no further origin, failing for the first time.
    pub fn stage(stage: &'a str) -> Origin<'a> {
        Origin { stage, kafka: None, attempts: 1, source: None, traceparent: None }
    }
}

impl DeadLetters {
    /// A DLQ writer for `flow` over `producer`, to the flow's DLQ on the cluster of `settings`.
    pub fn new(producer: Producer, flow: &str, settings: &KafkaSettings) -> Self {
        DeadLetters {
            producer,
            topic: settings.dlq_topic(flow),
            flow: flow.to_owned(),
            max_record_bytes: settings.max_record_bytes,
        }
    }

    /// Queues one dead letter; the returned future resolves when Kafka acknowledged it.
    pub async fn send(
        &self,
        key: Option<&[u8]>,
        payload: &[u8],
        reason: &str,
        origin: Origin<'_>,
    ) -> Result<Delivery, KafkaError> {
        let now = now_ms().to_string();
        let attempts = origin.attempts.to_string();
        let whole = key.map_or(0, <[u8]>::len) + payload.len() + reason.len();
        let cut = whole > self.max_record_bytes;
        let original_bytes = payload.len().to_string();
        let (key, payload, reason) = if cut {
            (
                key.map(|k| prefix(k, KEPT_SHORT_BYTES)),
                prefix(payload, KEPT_BYTES.min(self.max_record_bytes / 2)),
                std::str::from_utf8(prefix(reason.as_bytes(), KEPT_SHORT_BYTES)).unwrap_or_default(),
            )
        } else {
            (key, payload, reason)
        };
        let mut headers = OwnedHeaders::new()
            .insert(Header { key: dlq_header::FLOW, value: Some(self.flow.as_str()) })
            .insert(Header { key: dlq_header::STAGE, value: Some(origin.stage) })
            .insert(Header { key: dlq_header::ERROR, value: Some(reason) })
            .insert(Header { key: dlq_header::ATTEMPTS, value: Some(attempts.as_str()) })
            .insert(Header { key: dlq_header::TS_MS, value: Some(now.as_str()) });
        if let Some((topic, partition, offset)) = origin.kafka {
            headers = headers
                .insert(Header { key: dlq_header::TOPIC, value: Some(topic) })
                .insert(Header { key: dlq_header::PARTITION, value: Some(&partition.to_string()) })
                .insert(Header { key: dlq_header::OFFSET, value: Some(&offset.to_string()) });
        }
        if let Some(source) = origin.source {
            headers = headers.insert(Header {
                key: dlq_header::SOURCE,
                value: Some(std::str::from_utf8(prefix(source.as_bytes(), KEPT_SHORT_BYTES)).unwrap_or_default()),
            });
        }
        if let Some(tp) = origin.traceparent {
            headers = headers.insert(Header { key: crate::telemetry::trace::TRACEPARENT, value: Some(tp) });
        }
        if cut {
            headers = headers
                .insert(Header { key: dlq_header::TRUNCATED, value: Some("true") })
                .insert(Header { key: dlq_header::ORIGINAL_BYTES, value: Some(original_bytes.as_str()) });
        }
        let mut rec = FutureRecord::<[u8], [u8]>::to(&self.topic).payload(payload).headers(headers);
        if let Some(k) = key {
            rec = rec.key(k);
        }
        enqueue(&self.producer, rec).await
    }
}

/// At most the first `n` bytes of `bytes`, not splitting a UTF-8 character.
fn prefix(bytes: &[u8], n: usize) -> &[u8] {
    if bytes.len() <= n {
        return bytes;
    }
    let mut end = n;
    // A UTF-8 continuation byte is 0b10xxxxxx; back off to the start of its character.
    while end > 0 && (bytes[end] & 0b1100_0000) == 0b1000_0000 {
        end -= 1;
    }
    &bytes[..end]
}

/// Hands a record to the producer's queue, waiting while the queue is full.
pub(super) async fn enqueue<'a>(
    producer: &Producer,
    mut rec: FutureRecord<'a, [u8], [u8]>,
) -> Result<Delivery, KafkaError> {
    loop {
        match producer.send_result(rec) {
            Ok(f) => return Ok(f),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                rec = back;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Waits for Kafka's acknowledgement of every queued record, failing on the first refusal.
pub(super) async fn confirm(futures: Vec<Delivery>) -> Result<(), KafkaError> {
    for f in futures {
        match f.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(KafkaError::Canceled),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::prefix;

    #[test]
    fn prefixes_do_not_split_characters() {
        assert_eq!(prefix(b"abcdef", 3), b"abc");
        assert_eq!(prefix(b"ab", 3), b"ab");
        let e = "aé".as_bytes(); // a, then two bytes
        assert_eq!(prefix(e, 2), b"a");
        assert_eq!(prefix(e, 3), e);
    }
}
