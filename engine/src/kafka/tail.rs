//! Following a topic live from its end, for `sluice tap`: every partition is assigned at its
//! end as of now, under a group of its own that never commits — the flow's consumer group, its
//! offsets and its partition assignment are not touched (as Vector's tap leaves the pipeline
//! alone).

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use tokio::sync::mpsc;

use super::{KafkaSettings, KafkaSetupError, StoredMessage};

/// Sends every message written to `topic` from now on to `out`, until `out` is closed. A topic
/// that does not exist is an error (the flow has not run yet).
pub async fn tail_topic(
    settings: &KafkaSettings,
    topic: &str,
    out: mpsc::Sender<StoredMessage>,
) -> Result<(), KafkaSetupError> {
    let mut cfg = settings.client_config();
    cfg.set("group.id", "sluice.tap").set("enable.auto.commit", "false").set("isolation.level", "read_committed");
    let timeout = settings.connect_timeout;
    let name = topic.to_owned();
    let res = tokio::task::spawn_blocking(move || -> Result<Result<(), String>, KafkaError> {
        let consumer: BaseConsumer = cfg.create()?;
        let md = consumer.fetch_metadata(Some(&name), timeout)?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for t in md.topics().iter().filter(|t| t.error().is_none()) {
            for p in t.partitions() {
                tpl.add_partition_offset(&name, p.id(), rdkafka::Offset::End)?;
            }
        }
        if tpl.count() == 0 {
            return Ok(Err(format!("topic {name} does not exist (has the flow run?)")));
        }
        consumer.assign(&tpl)?;
        while !out.is_closed() {
            let Some(m) = consumer.poll(std::time::Duration::from_millis(200)) else { continue };
            if out.blocking_send(StoredMessage::of(&m?)).is_err() {
                break;
            }
        }
        Ok(Ok(()))
    })
    .await;
    match res {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(message))) => Err(KafkaSetupError::Client { context: format!("tapping {topic}"), message }),
        Ok(Err(e)) => Err(settings.client_error(format!("tapping {topic}"), e)),
        Err(join) => Err(KafkaSetupError::Client {
            context: format!("tapping {topic}"),
            message: format!("task failed: {join}"),
        }),
    }
}
