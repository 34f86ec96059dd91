//! Reading what sluice keeps on its cluster: watermarks, committed offsets and whole small
//! topics.

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use super::{KafkaSettings, KafkaSetupError};

/// The end of what is committed in each partition of `topic` (a `read_committed` reader's high
/// watermark: the last stable offset, before any open transaction): where a run that reads
/// someone else's topic stops.
pub async fn committed_ends(settings: &KafkaSettings, topic: &str) -> Result<Vec<(i32, i64)>, KafkaSetupError> {
    ends(settings, topic, "read_committed").await
}

/// The end of everything written to each partition of `topic`, in transactions or not (the
/// partitions' high watermarks): where a run stops once its own source's last transaction
/// committed. Not [`committed_ends`]: a commit returns once the coordinator has decided it,
/// and each partition's last stable offset moves past the transaction only when its marker is
/// written a moment later — read in between, it would end the run before that transaction's
/// records (an on-demand run on a cluster ended with a third of its records undelivered so).
pub async fn written_ends(settings: &KafkaSettings, topic: &str) -> Result<Vec<(i32, i64)>, KafkaSetupError> {
    ends(settings, topic, "read_uncommitted").await
}

async fn ends(settings: &KafkaSettings, topic: &str, isolation: &str) -> Result<Vec<(i32, i64)>, KafkaSetupError> {
    let mut cfg = settings.client_config();
    // librdkafka asks for the offsets a reader of this isolation level would see.
    cfg.set("isolation.level", isolation);
    let timeout = settings.connect_timeout;
    let topic = topic.to_owned();
    let res = tokio::task::spawn_blocking(move || -> Result<Vec<(i32, i64)>, KafkaError> {
        let consumer: rdkafka::consumer::BaseConsumer = cfg.create()?;
        // A topic just created is known to some brokers before others, and a partition may
        // be between leaders: those answers heal within moments (see `settled_watermarks`).
        let md = consumer.fetch_metadata(Some(&topic), timeout)?;
        let mut out = Vec::new();
        for t in md.topics() {
            for p in t.partitions() {
                let (_, high) = settled_watermarks(&consumer, &topic, p.id(), timeout)?;
                out.push((p.id(), high));
            }
        }
        Ok(out)
    })
    .await;
    match res {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(settings.client_error("reading topic watermarks".into(), e)),
        Err(join) => Err(KafkaSetupError::CreateTopic {
            topic: String::new(),
            message: format!("watermark task failed: {join}"),
        }),
    }
}

/// The offsets consumer group `group` committed on `topic`'s partitions (those without one
/// left out). Read by a consumer of the group that never subscribes, so it does not join the
/// group or disturb its members.
pub async fn committed_offsets(
    settings: &KafkaSettings,
    group: &str,
    topic: &str,
) -> Result<Vec<(i32, i64)>, KafkaSetupError> {
    let mut cfg = settings.client_config();
    cfg.set("group.id", group).set("enable.auto.commit", "false");
    let timeout = settings.connect_timeout;
    let topic = topic.to_owned();
    let res = tokio::task::spawn_blocking(move || -> Result<Vec<(i32, i64)>, KafkaError> {
        let consumer: rdkafka::consumer::BaseConsumer = cfg.create()?;
        let md = consumer.fetch_metadata(Some(&topic), timeout)?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for t in md.topics() {
            for p in t.partitions() {
                tpl.add_partition(&topic, p.id());
            }
        }
        let got = consumer.committed_offsets(tpl, timeout)?;
        let mut out: Vec<(i32, i64)> = got
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                rdkafka::Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect();
        out.sort_unstable();
        Ok(out)
    })
    .await;
    match res {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(settings.client_error(format!("reading the offsets group {group} committed"), e)),
        Err(join) => Err(KafkaSetupError::Client {
            context: format!("reading the offsets group {group} committed"),
            message: join.to_string(),
        }),
    }
}

/// A partition's watermarks, asked again while the partition is between leaders (a loaded
/// cluster, a topic just made), until `timeout`.
fn settled_watermarks(
    consumer: &rdkafka::consumer::BaseConsumer,
    topic: &str,
    partition: i32,
    timeout: std::time::Duration,
) -> Result<(i64, i64), KafkaError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match consumer.fetch_watermarks(topic, partition, timeout) {
            Err(e)
                if std::time::Instant::now() < deadline
                    && matches!(
                        e.rdkafka_error_code(),
                        Some(
                            RDKafkaErrorCode::UnknownTopicOrPartition
                                | RDKafkaErrorCode::LeaderNotAvailable
                                | RDKafkaErrorCode::NotLeaderForPartition
                        )
                    ) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            r => return r,
        }
    }
}

/// One message read back from a topic.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key bytes, if any.
    pub key: Option<Vec<u8>>,
    /// Payload bytes, if any.
    pub payload: Option<Vec<u8>>,
    /// Headers, values as (lossy) text.
    pub headers: Vec<(String, String)>,
    /// The message's timestamp, ms since the epoch, when it has one.
    pub timestamp_ms: Option<i64>,
}

impl StoredMessage {
    /// A copy of a consumed message.
    pub(super) fn of<M: rdkafka::message::Message>(m: &M) -> StoredMessage {
        use rdkafka::message::Headers;
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|x| (x.key.to_owned(), String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        StoredMessage {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: m.timestamp().to_millis(),
        }
    }

    /// The value of header `name`, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Reads `topic` from its start up to its end as of now, at most `limit` messages, in
/// partition then offset order. A topic that does not exist reads as empty.
///
/// Only committed records are read (`read_committed`): a position or run record written in a
/// transaction that was aborted (a fenced source owner's) never happened. A partition's end is
/// where the broker says it is (partition EOF), not the high watermark, which may sit past
/// transaction markers no message is ever returned for. A partition that gives nothing for
/// `connect_timeout` before its end is an error: returning what was read so far would pass a
/// stale record for the latest.
pub async fn read_topic(
    settings: &KafkaSettings,
    topic: &str,
    limit: usize,
) -> Result<Vec<StoredMessage>, KafkaSetupError> {
    use rdkafka::message::Message;
    let cfg = settings.client_config();
    let timeout = settings.connect_timeout;
    let topic_name = topic.to_owned();
    let res = tokio::task::spawn_blocking(move || -> Result<Vec<StoredMessage>, KafkaError> {
        let consumer: rdkafka::consumer::BaseConsumer = {
            let mut cfg = cfg;
            cfg.set("group.id", "sluice.reader")
                .set("enable.auto.commit", "false")
                .set("enable.partition.eof", "true")
                .set("isolation.level", "read_committed")
                .create()?
        };
        let md = consumer.fetch_metadata(Some(&topic_name), timeout)?;
        let mut out = Vec::new();
        for t in md.topics() {
            for p in t.partitions() {
                let (low, high) = settled_watermarks(&consumer, &topic_name, p.id(), timeout)?;
                if high <= low {
                    continue;
                }
                let mut tpl = rdkafka::TopicPartitionList::new();
                tpl.add_partition_offset(&topic_name, p.id(), rdkafka::Offset::Offset(low))?;
                consumer.assign(&tpl)?;
                let mut quiet_since = std::time::Instant::now();
                while out.len() < limit {
                    let m = match consumer.poll(std::time::Duration::from_millis(200)) {
                        None if quiet_since.elapsed() >= timeout => {
                            return Err(KafkaError::MessageConsumption(RDKafkaErrorCode::RequestTimedOut));
                        }
                        None => continue,
                        Some(Err(KafkaError::PartitionEOF(_))) => break,
                        Some(m) => m?,
                    };
                    quiet_since = std::time::Instant::now();
                    out.push(StoredMessage::of(&m));
                    if m.offset() + 1 >= high {
                        break;
                    }
                }
            }
        }
        Ok(out)
    })
    .await;
    match res {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::RequestTimedOut))) => Err(KafkaSetupError::Client {
            context: format!("reading {topic}"),
            message: format!(
                "a partition gave nothing for {} s before its end; is the cluster healthy?",
                timeout.as_secs()
            ),
        }),
        Ok(Err(e)) => Err(settings.client_error(format!("reading {topic}"), e)),
        Err(join) => Err(KafkaSetupError::CreateTopic {
            topic: topic.to_owned(),
            message: format!("reader task failed: {join}"),
        }),
    }
}
