//! The sink worker's batch of consumed messages, kept in buffers reused from batch to batch.
//!
//! rdkafka lends each message out of librdkafka's queue; holding it past the next poll means
//! copying it. `OwnedMessage::detach` copies into fresh allocations per message (topic name,
//! key, payload, headers), all freed again once the batch is written — and since the allocator
//! hands freed pages back to the kernel at once (see `src/alloc.rs`), every batch faulted its
//! memory in afresh. Here each key and payload is appended to one byte buffer that keeps its
//! capacity: after the first batches, reading a message allocates nothing.
//!
//! Only a message replayed from a dead-letter topic, or one a source sampled for tracing,
//! carries headers sluice reads (its original position and earlier attempts; a W3C
//! `traceparent`); those are parsed once, when the message is taken, and kept aside, so that a message's entry holds no allocation and emptying the inbox costs nothing
//! per message.

use rdkafka::Message;
use rdkafka::message::Headers as _;
use sluice_core::names::dlq_header;

/// One consumed message: where it was read, and where its bytes are in the [`Inbox`].
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// The partition it was read from.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
    /// The message timestamp in milliseconds, if the broker gave one.
    pub timestamp_ms: Option<i64>,
    /// Start and end of the key in the inbox's bytes.
    key: Option<(usize, usize)>,
    /// Start and end of the payload in the inbox's bytes.
    payload: Option<(usize, usize)>,
    /// For a message replayed from a DLQ: its [`Replay`] in the inbox; `None` for the rest.
    replay: Option<usize>,
}

/// The headers sluice reads: the `sluice.*` ones a dead letter carries into its replay, and the
/// trace a sampled record belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Replay {
    /// The record's W3C `traceparent`, when its source sampled it.
    traceparent: Option<String>,
    /// Topic, partition and offset of the original record.
    original: Option<(String, i32, i64)>,
    /// How many times the message failed before.
    attempts: Option<u32>,
    /// Its payload was cut to fit the DLQ: the whole record is not here to replay.
    truncated: bool,
}

/// Messages read for one batch.
#[derive(Debug, Default)]
pub struct Inbox {
    /// Keys and payloads, back to back.
    bytes: Vec<u8>,
    messages: Vec<Received>,
    /// What replayed dead letters' headers said, for the messages that are such.
    replays: Vec<Replay>,
    /// Key and payload bytes of the messages held (bytes of dropped messages not counted).
    held: usize,
}

impl Inbox {
    /// An empty inbox with room for `messages` messages.
    pub fn with_capacity(messages: usize) -> Inbox {
        Inbox { bytes: Vec::new(), messages: Vec::with_capacity(messages), replays: Vec::new(), held: 0 }
    }

    /// Copies a message in (a `BorrowedMessage` as the consumer lends it, in practice).
    pub fn push<M: Message>(&mut self, m: &M) {
        let key = m.key().map(|k| self.append(k));
        let payload = m.payload().map(|p| self.append(p));
        let replay = m.headers().and_then(|hs| {
            let header =
                |name: &str| hs.iter().find(|h| h.key == name).and_then(|h| std::str::from_utf8(h.value?).ok());
            let original = (|| {
                Some((
                    header(dlq_header::TOPIC)?.to_owned(),
                    header(dlq_header::PARTITION)?.parse().ok()?,
                    header(dlq_header::OFFSET)?.parse().ok()?,
                ))
            })();
            let attempts = header(dlq_header::ATTEMPTS).and_then(|a| a.parse().ok());
            let truncated = header(dlq_header::TRUNCATED) == Some("true");
            let traceparent = header(crate::telemetry::trace::TRACEPARENT).map(str::to_owned);
            let replay = Replay { traceparent, original, attempts, truncated };
            (replay != Replay::default()).then_some(replay)
        });
        let replay = replay.map(|r| {
            self.replays.push(r);
            self.replays.len() - 1
        });
        self.messages.push(Received {
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            key,
            payload,
            replay,
        });
    }

    fn append(&mut self, data: &[u8]) -> (usize, usize) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(data);
        self.held += data.len();
        (start, self.bytes.len())
    }

    /// How many messages it holds.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Key and payload bytes of the messages it holds.
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// The messages, in the order they were read (or sorted by [`Inbox::sort_by_partition`]).
    pub fn messages(&self) -> &[Received] {
        &self.messages
    }

    /// Drops the messages `keep` says no to. Their bytes stay in the buffer until
    /// [`Inbox::clear`]; a rebalance is rare and the batch is bounded.
    pub fn retain(&mut self, mut keep: impl FnMut(&Received) -> bool) {
        self.messages.retain(|m| keep(m));
        self.held = self.messages.iter().map(|m| span_len(&m.key) + span_len(&m.payload)).sum();
    }

    /// Orders the messages by partition, each partition's in offset order (the sort is stable).
    pub fn sort_by_partition(&mut self) {
        self.messages.sort_by_key(|m| m.partition);
    }

    /// All messages, as one batch.
    pub fn batch(&self) -> Batch<'_> {
        Batch { bytes: &self.bytes, replays: &self.replays, messages: &self.messages }
    }

    /// One batch per run of messages of the same partition.
    pub fn partitions(&self) -> impl Iterator<Item = Batch<'_>> {
        self.messages.chunk_by(|a, b| a.partition == b.partition).map(|messages| Batch {
            bytes: &self.bytes,
            replays: &self.replays,
            messages,
        })
    }

    /// Empties it for the next batch, keeping the buffers' capacity.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.messages.clear();
        self.replays.clear();
        self.held = 0;
    }
}

fn span_len(span: &Option<(usize, usize)>) -> usize {
    span.map_or(0, |(start, end)| end - start)
}

/// A run of messages of an [`Inbox`], with access to their bytes.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    bytes: &'a [u8],
    replays: &'a [Replay],
    /// The messages.
    pub messages: &'a [Received],
}

impl<'a> Batch<'a> {
    /// The key of message `i` of this batch.
    pub fn key(&self, i: usize) -> Option<&'a [u8]> {
        self.messages.get(i)?.key.and_then(|(start, end)| self.bytes.get(start..end))
    }

    /// The payload of message `i` of this batch.
    pub fn payload(&self, i: usize) -> Option<&'a [u8]> {
        self.messages.get(i)?.payload.and_then(|(start, end)| self.bytes.get(start..end))
    }

    fn replay(&self, i: usize) -> Option<&'a Replay> {
        self.replays.get(self.messages.get(i)?.replay?)
    }

    /// Where message `i` came from: its own topic, partition and offset — or, for a dead
    /// letter being replayed, those of the original record, which its headers keep.
    pub fn source(&self, i: usize, topic: &'a str) -> Option<(&'a str, i32, i64)> {
        let m = self.messages.get(i)?;
        Some(match self.replay(i).and_then(|r| r.original.as_ref()) {
            Some((t, p, o)) => (t.as_str(), *p, *o),
            None => (topic, m.partition, m.offset),
        })
    }

    /// Whether message `i` is a dead letter whose payload was cut to fit the DLQ.
    pub fn truncated(&self, i: usize) -> bool {
        self.replay(i).is_some_and(|r| r.truncated)
    }

    /// The W3C `traceparent` message `i` carries, if its source sampled it.
    pub fn traceparent(&self, i: usize) -> Option<&'a str> {
        self.replay(i)?.traceparent.as_deref()
    }

    /// How many times message `i` has failed in this flow, counting this time.
    pub fn attempts(&self, i: usize) -> u32 {
        self.replay(i).and_then(|r| r.attempts).unwrap_or(0) + 1
    }

    /// How many messages it has.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};

    use super::*;

    fn message(partition: i32, offset: i64, key: Option<&str>, payload: Option<&str>) -> OwnedMessage {
        OwnedMessage::new(
            payload.map(|p| p.as_bytes().to_vec()),
            key.map(|k| k.as_bytes().to_vec()),
            "t".into(),
            Timestamp::CreateTime(1000 + offset),
            partition,
            offset,
            None,
        )
    }

    #[test]
    fn keeps_each_message_bytes_and_position_and_reuses_its_buffers() {
        let mut inbox = Inbox::with_capacity(4);
        inbox.push(&message(1, 10, Some("k1"), Some("{\"a\":1}")));
        inbox.push(&message(0, 5, None, Some("x")));
        inbox.push(&message(1, 11, Some("k3"), None));
        assert_eq!(inbox.len(), 3);
        assert_eq!(inbox.held_bytes(), 2 + 7 + 1 + 2);
        let b = inbox.batch();
        assert_eq!(b.key(0), Some(&b"k1"[..]));
        assert_eq!(b.payload(0), Some(&b"{\"a\":1}"[..]));
        assert_eq!((b.key(1), b.payload(1)), (None, Some(&b"x"[..])));
        assert_eq!((b.key(2), b.payload(2)), (Some(&b"k3"[..]), None));
        assert_eq!(b.key(3), None, "past the end is nothing, not a panic");
        assert_eq!(b.messages[2].timestamp_ms, Some(1011));
        assert_eq!(b.source(0, "t"), Some(("t", 1, 10)));
        assert_eq!(b.attempts(0), 1);
        assert_eq!(b.source(3, "t"), None);

        // Partition runs keep offset order; what a rebalance drops no longer counts.
        inbox.sort_by_partition();
        type Run<'a> = Vec<(i32, i64, Option<&'a [u8]>)>;
        let runs: Vec<Run<'_>> = inbox
            .partitions()
            .map(|b| (0..b.len()).map(|i| (b.messages[i].partition, b.messages[i].offset, b.key(i))).collect())
            .collect();
        assert_eq!(runs, vec![vec![(0, 5, None)], vec![(1, 10, Some(&b"k1"[..])), (1, 11, Some(&b"k3"[..]))]]);
        inbox.retain(|m| m.partition != 1);
        assert_eq!((inbox.len(), inbox.held_bytes()), (1, 1));
        assert_eq!(inbox.batch().payload(0), Some(&b"x"[..]));

        let capacity = inbox.bytes.capacity();
        inbox.clear();
        assert!(inbox.is_empty() && inbox.held_bytes() == 0);
        inbox.push(&message(2, 0, Some("k"), Some("v")));
        assert_eq!(inbox.bytes.capacity(), capacity, "the buffer is kept between batches");
        assert_eq!(inbox.batch().payload(0), Some(&b"v"[..]));
    }

    #[test]
    fn a_replayed_dead_letter_names_its_original_and_its_attempts() {
        let headers = OwnedHeaders::new()
            .insert(Header { key: "sluice.topic", value: Some("orders") })
            .insert(Header { key: "sluice.partition", value: Some("3") })
            .insert(Header { key: "sluice.offset", value: Some("42") })
            .insert(Header { key: "sluice.attempts", value: Some("2") });
        let mut m = message(0, 7, None, Some("{}"));
        m = m.replace_headers(Some(headers));
        let mut inbox = Inbox::default();
        inbox.push(&m);
        let other = OwnedHeaders::new().insert(Header { key: "trace", value: Some("x") });
        let traced = OwnedHeaders::new().insert(Header { key: "traceparent", value: Some("00-ab-cd-01") });
        inbox.push(&message(1, 9, None, None).replace_headers(Some(traced)));
        inbox.push(&message(0, 8, None, None).replace_headers(Some(other)));
        inbox.push(&m.replace_headers(None));
        // Sorting moves entries, not what they refer to.
        inbox.sort_by_partition();
        let got = inbox.batch();
        assert_eq!(got.source(0, "dlq"), Some(("orders", 3, 42)));
        assert_eq!(got.attempts(0), 3);
        assert_eq!(got.source(1, "dlq"), Some(("dlq", 0, 8)), "other headers mean nothing to sluice");
        assert!(got.messages[1].replay.is_none());
        assert_eq!(got.attempts(1), 1);
        assert_eq!((got.source(2, "dlq"), got.attempts(2)), (Some(("dlq", 0, 7)), 1));
        assert_eq!((got.traceparent(3), got.traceparent(0)), (Some("00-ab-cd-01"), None));
        assert_eq!(got.source(3, "dlq"), Some(("dlq", 1, 9)));
        inbox.clear();
        assert!(inbox.replays.is_empty());
    }
}
