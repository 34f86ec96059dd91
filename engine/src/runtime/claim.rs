//! The source claim: which of the processes running a flow runs its source.
//!
//! Sink workers of one flow share its changes topic through their consumer group, in as many
//! processes as there are. A source cannot be shared that way: two processes reading one file,
//! generator or replication slot would publish everything twice and race on the stored
//! position. So each process joins the flow's *claim group* (`<ns>.<flow>.source`) on the
//! one-partition topic `<ns>.claims`, and Kafka's group protocol hands that partition to exactly
//! one member: the owner runs the source, the others stand by. When the owner dies, is paused
//! past its session timeout or leaves, the group rebalances and a stand-by becomes the owner —
//! as Kafka Connect's workers share connectors through the group protocol. Nothing home-made
//! decides who owns what.
//!
//! Group membership alone cannot stop a paused-then-resumed old owner from writing before it
//! notices it was replaced. That is what the source's transactional producer is for (see
//! `source_task`): the new owner's `init_transactions` fences the old producer, so its open
//! transaction is aborted and its next write refused. The claim elects; the transactional id
//! fences.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::FlowError;
use crate::kafka::KafkaSettings;

/// Sees the claim group's rebalances: holding the claims partition means owning the source.
struct ClaimContext {
    held: watch::Sender<bool>,
    flow: String,
}

impl ClientContext for ClaimContext {}

impl ConsumerContext for ClaimContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // Giving the claim up happens before the rebalance completes, so the source is told
        // to stop as early as Kafka lets the member know.
        if let Rebalance::Revoke(tpl) = rebalance
            && tpl.count() > 0
        {
            tracing::info!(flow = %self.flow, "source claim revoked");
            self.held.send_replace(false);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let held = tpl.count() > 0;
                if held {
                    tracing::info!(flow = %self.flow, "source claim held: this process runs the source");
                }
                self.held.send_replace(held);
            }
            Rebalance::Error(e) => {
                tracing::warn!(flow = %self.flow, error = %e, "source claim rebalance failed");
                self.held.send_replace(false);
            }
            Rebalance::Revoke(_) => {}
        }
    }
}

/// How often the owner says it is alive, and a stand-by looks whether the owner does.
const BEAT: Duration = Duration::from_secs(2);
/// How long an owner may be silent before a stand-by calls the claim abandoned: the session
/// timeout (6 s, after which any coordinator has dropped a silent member) and one beat more.
/// Also the least time between two rejoins; the most is [`STALE_MAX`].
const STALE: Duration = Duration::from_secs(8);
const STALE_MAX: Duration = Duration::from_secs(300);

/// The owner's heartbeat, and a stand-by's watch over it.
///
/// A group coordinator may end a rebalance with the claims partition given to a member that is
/// gone (the embedded broker, tansu 0.6, does so after a kill -9: the restarted process is given
/// nothing and the dead member keeps the partition for a minute or more). Then nobody runs the
/// source. So the owner commits, every [`BEAT`], offset 0 of the claims partition in the claim
/// group with `<writer> <unix ms>` as the commit's metadata — Kafka's own offset storage, read
/// by the group's members — and a stand-by that sees no such beat for [`STALE`] leaves and
/// rejoins the group, which starts a fresh rebalance. On a healthy cluster a live owner always
/// beats and a dead one is replaced within the session timeout, so nobody ever rejoins.
struct Liveness {
    /// Since when this member has not held the claim (or since it joined).
    waiting_since: std::time::Instant,
    /// How long a silence counts as abandonment; doubles after each rejoin that did not help.
    window: Duration,
    /// Whether the next stand-by check looks at the beat at once (on joining, and after
    /// losing the claim): a process restarted after a kill -9 finds its own dead
    /// predecessor's beat and need not wait out the window.
    first_look: bool,
}

impl Liveness {
    fn new() -> Self {
        Liveness { waiting_since: std::time::Instant::now(), window: STALE, first_look: true }
    }

    fn check(&mut self, consumer: &StreamConsumer<ClaimContext>, topic: &str, flow: &str, holding: bool) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, 0);
        if holding {
            self.waiting_since = std::time::Instant::now();
            self.window = STALE;
            self.first_look = true;
            let beat = format!("{} {}", super::writer_id(), crate::record::now_ms());
            if tpl.set_partition_offset(topic, 0, Offset::Offset(0)).is_ok()
                && let Some(mut e) = tpl.find_partition(topic, 0)
            {
                e.set_metadata(beat);
            }
            if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                tracing::debug!(%flow, error = %e, "source claim heartbeat");
            }
            return;
        }
        let first_look = std::mem::take(&mut self.first_look);
        if !first_look && self.waiting_since.elapsed() < self.window {
            return;
        }
        let beat = tokio::task::block_in_place(|| consumer.committed_offsets(tpl, Duration::from_secs(5)));
        // The group's coordinator does not answer (it is down, or the cluster lost its quorum):
        // nobody can claim the source until it does, and the user should hear why it is still.
        let unanswered = beat.as_ref().err().map(ToString::to_string);
        let last_beat = beat.ok().and_then(|t| {
            let e = t.find_partition(topic, 0)?;
            let (writer, ms) = e.metadata().rsplit_once(' ')?;
            let ms: i64 = ms.parse().ok()?;
            Some((writer.to_owned(), crate::record::now_ms().saturating_sub(ms)))
        });
        let owner_gone = first_look && last_beat.as_ref().is_some_and(|(w, _)| super::process::is_gone(w));
        let silent = self.waiting_since.elapsed() >= self.window
            && last_beat.as_ref().is_none_or(|(_, ago)| *ago >= self.window.as_millis() as i64);
        if !owner_gone && !silent {
            return;
        }
        if owner_gone {
            tracing::info!(%flow, owner = %last_beat.as_ref().map(|(w, _)| w.as_str()).unwrap_or_default(), "the source's last owner, a process of this host, is gone; rejoining the claim group for a fresh rebalance");
        } else if let Some(error) = unanswered {
            tracing::warn!(%flow, silent_secs = self.window.as_secs(), %error, "no process has run the source for a while and the cluster does not answer for the claim group: the source waits for the cluster (rejoining the group)");
        } else {
            tracing::warn!(%flow, silent_secs = self.window.as_secs(), "no process has run the source for a while; rejoining the claim group for a fresh rebalance");
        }
        // Each call waits for the consumer's group thread to take it, without a bound: off the
        // runtime's worker, so a cluster in trouble cannot stall the process's other tasks.
        let rejoined = tokio::task::block_in_place(|| {
            consumer.unsubscribe();
            consumer.subscribe(&[topic])
        });
        if let Err(e) = rejoined {
            tracing::warn!(%flow, error = %e, "rejoining the source claim group");
        }
        self.waiting_since = std::time::Instant::now();
        self.window = (self.window * 2).min(STALE_MAX);
    }
}

/// This process's membership in a flow's claim group. Leaving it (dropping) lets a stand-by
/// take the source at once instead of after the session timeout.
pub struct SourceClaim {
    held: watch::Receiver<bool>,
    stop: CancellationToken,
    driver: Option<tokio::task::JoinHandle<()>>,
}

impl SourceClaim {
    /// Joins `flow`'s claim group. The group's members are known by Kafka after their session
    /// timeout's worth of silence: 6 s, as for sink workers.
    pub async fn join(settings: &KafkaSettings, flow: &str) -> Result<SourceClaim, FlowError> {
        let topic = settings.claims_topic();
        settings.ensure_topics(&[&topic]).await?;
        let (tx, held) = watch::channel(false);
        let group = settings.source_group(flow);
        let consumer: StreamConsumer<ClaimContext> =
            settings.claim_consumer(&group, ClaimContext { held: tx, flow: flow.to_owned() })?;
        consumer.subscribe(&[topic.as_str()]).map_err(|e| FlowError::Kafka {
            flow: flow.to_owned(),
            context: format!("joining the source claim group {group}"),
            message: settings.redact(e),
        })?;
        let stop = CancellationToken::new();
        let s = stop.clone();
        let flow = flow.to_owned();
        let mut watch_held = held.clone();
        let driver = tokio::spawn(async move {
            let mut beats = tokio::time::interval(BEAT);
            beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut liveness = Liveness::new();
            loop {
                tokio::select! {
                    // Rebalances are served while the consumer is polled; nothing is ever
                    // written to the claims topic, so the poll only returns errors, or nothing.
                    m = consumer.recv() => {
                        if let Err(e) = m {
                            tracing::debug!(%flow, error = %e, "source claim consumer");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                    _ = beats.tick() => {
                        let holding = *watch_held.borrow_and_update();
                        liveness.check(&consumer, &topic, &flow, holding);
                    }
                    _ = s.cancelled() => break,
                }
            }
            // Leave the group so a stand-by is assigned now, not after the session timeout.
            let _ = tokio::task::spawn_blocking(move || {
                consumer.unsubscribe();
                drop(consumer)
            })
            .await;
        });
        Ok(SourceClaim { held, stop, driver: Some(driver) })
    }

    /// Waits until this process holds the claim (`true`) or `shutdown` is requested (`false`).
    pub async fn acquired(&mut self, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            r = self.held.wait_for(|h| *h) => r.is_ok(),
            _ = shutdown.cancelled() => false,
        }
    }

    /// A token cancelled as soon as this process no longer holds the claim.
    pub fn lost(&self) -> CancellationToken {
        let token = CancellationToken::new();
        let t = token.clone();
        let mut held = self.held.clone();
        tokio::spawn(async move {
            let _ = held.wait_for(|h| !*h).await;
            t.cancel();
        });
        token
    }

    /// Leaves the group and waits until the consumer closed.
    pub async fn leave(mut self) {
        self.stop.cancel();
        if let Some(d) = self.driver.take() {
            let _ = d.await;
        }
    }
}

impl Drop for SourceClaim {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
