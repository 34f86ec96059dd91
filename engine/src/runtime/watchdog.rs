//! The sink worker's watchdog over partitions no live worker delivers.

use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::sink_worker::{SinkConsumer, SinkInput};

/// Notices partitions with undelivered records that no live worker is delivering, and rejoins
/// the group so a fresh rebalance hands them out.
///
/// A partition another worker owns is normally that worker's business: it commits as it goes.
/// But if the group's committed offset of a partition this worker does not own trails the
/// partition's end and has not moved for a whole stall window, nobody is delivering it. A
/// broker's group coordinator can end a rebalance that way when a member dies mid-way (the
/// embedded broker assigns a dead member's partitions to the dead member); leaving and
/// rejoining starts a fresh rebalance. A worker that owns every partition never looks, and a
/// healthy group is never disturbed: someone is committing. If rejoining does not help (a live
/// owner is stuck retrying a failing destination), the window doubles each time, up to
/// [`STALL_WINDOW_MAX`], so the group is not kept rebalancing — except while the stalled
/// partitions were last committed by this very process: then no other worker ever took them
/// over (its commits would name it), the group lost them (the embedded broker restarted, say),
/// and this worker keeps asking every [`STALL_WINDOW`], up to [`FAST_REJOINS`] times.
pub(super) struct Watchdog {
    /// When the unowned partitions' progress was last seen to change.
    since: Instant,
    /// The unowned, lagging partitions at the last check: (partition, committed). Their ends
    /// are left out: a source still writing moves them while nobody delivers anything.
    last: Option<Vec<(i32, i64)>>,
    next_check: Instant,
    /// How long unowned records may sit still before this worker rejoins.
    window: Duration,
    /// The topic's partition count, once known.
    partitions: Option<usize>,
    /// This process's writer id, as its commits carry it.
    me: String,
    /// Rejoins since the unowned partitions were last seen delivered (or none lagged).
    rejoins: u32,
}

/// The first stall window (the session timeout, 6 s, and a margin for a live owner's commit).
const STALL_WINDOW: Duration = Duration::from_secs(8);
/// The longest stall window.
const STALL_WINDOW_MAX: Duration = Duration::from_secs(300);
/// How often the worker looks at the group's progress.
const WATCH_EVERY: Duration = Duration::from_secs(2);
/// How many rejoins in a row keep the first window when the stalled partitions were this
/// process's own (about a minute and a half of asking before backing off).
const FAST_REJOINS: u32 = 10;

/// The stall window after a rejoin that did not (yet) help: the same while the stalled
/// partitions were this process's own and it has asked fewer than [`FAST_REJOINS`] times,
/// else doubled, up to [`STALL_WINDOW_MAX`].
fn window_after_rejoin(window: Duration, ours: bool, rejoins: u32) -> Duration {
    if ours && rejoins < FAST_REJOINS { window } else { (window * 2).min(STALL_WINDOW_MAX) }
}

impl Watchdog {
    pub(super) fn new() -> Self {
        let now = Instant::now();
        Watchdog {
            since: now,
            last: None,
            next_check: now + WATCH_EVERY,
            window: STALL_WINDOW,
            partitions: None,
            me: super::process::writer_id(),
            rejoins: 0,
        }
    }

    pub(super) fn check(&mut self, consumer: &SinkConsumer, input: &SinkInput, flow: &str) {
        let now = Instant::now();
        if now < self.next_check {
            return;
        }
        self.next_check = now + WATCH_EVERY;
        let assigned: Vec<i32> =
            consumer.assignment().map(|a| a.elements().iter().map(|e| e.partition()).collect()).unwrap_or_default();
        if self.partitions.is_some_and(|n| assigned.len() >= n) {
            self.since = now;
            self.last = None;
            return;
        }
        // These calls wait on the network; a failure just skips this round.
        let Ok(progress) =
            tokio::task::block_in_place(|| group_progress(consumer, &input.topic, input.kafka.connect_timeout))
        else {
            return;
        };
        self.partitions = Some(progress.len());
        let unowned: Vec<(i32, i64, i64, String)> =
            progress.into_iter().filter(|(p, committed, end, _)| !assigned.contains(p) && committed < end).collect();
        // A worker restarted after a kill -9 finds the partitions last committed by its dead
        // predecessor on this host: nobody will deliver them until someone rejoins, so it does
        // at once (once; after that, only the stall window counts).
        let predecessor_gone = self.rejoins == 0
            && !unowned.is_empty()
            && unowned.iter().all(|(_, _, _, writer)| super::process::is_gone(writer));
        let ours = !unowned.is_empty() && unowned.iter().all(|(_, _, _, writer)| *writer == self.me);
        let unowned: Vec<(i32, i64)> = unowned.into_iter().map(|(p, c, _, _)| (p, c)).collect();
        if !predecessor_gone {
            if unowned.is_empty() || self.last.as_ref() != Some(&unowned) {
                // Nothing lagging, or progress since the last look: whatever rejoining did, it
                // is over.
                if unowned.is_empty() || self.last.is_some() {
                    self.rejoins = 0;
                    self.window = STALL_WINDOW;
                }
                self.since = now;
                self.last = Some(unowned);
                return;
            }
            if now.duration_since(self.since) < self.window {
                return;
            }
        }
        tracing::warn!(
            flow = %flow,
            topic = %input.topic,
            partitions = ?unowned.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            stalled_secs = now.duration_since(self.since).as_secs(),
            predecessor_gone,
            last_committed_here = ours,
            rejoin = self.rejoins + 1,
            "undelivered records sit in partitions no live worker is delivering; rejoining the group"
        );
        // Each call waits for the consumer's group thread to take it, without a bound: off the
        // runtime's worker, so a cluster in trouble cannot stall the process's other tasks.
        let rejoined = tokio::task::block_in_place(|| {
            consumer.unsubscribe();
            consumer.subscribe(&[input.topic.as_str()])
        });
        if let Err(e) = rejoined {
            tracing::warn!(flow = %flow, topic = %input.topic, error = %e, "rejoining the group");
        }
        self.rejoins += 1;
        self.window = window_after_rejoin(self.window, ours, self.rejoins);
        self.since = now;
        self.last = None;
    }
}

/// Per partition of `topic`: (partition, the group's committed offset or 0, the end offset, the
/// writer its last commit names).
fn group_progress(
    consumer: &SinkConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<(i32, i64, i64, String)>, KafkaError> {
    let md = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition(topic, p.id());
            let (_, high) = consumer.fetch_watermarks(topic, p.id(), timeout)?;
            ends.push((p.id(), high));
        }
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    let mut out = Vec::with_capacity(ends.len());
    for (p, high) in ends {
        let elem = committed.find_partition(topic, p);
        let c = elem
            .as_ref()
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
            .unwrap_or(0);
        let writer = elem.map(|e| e.metadata().to_owned()).unwrap_or_default();
        out.push((p, c, high, writer));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_stalled_partitions_are_asked_for_at_the_first_window_then_backed_off() {
        let mut w = STALL_WINDOW;
        for rejoins in 1..FAST_REJOINS {
            w = window_after_rejoin(w, true, rejoins);
            assert_eq!(w, STALL_WINDOW, "rejoin {rejoins}");
        }
        w = window_after_rejoin(w, true, FAST_REJOINS);
        assert_eq!(w, STALL_WINDOW * 2);
    }

    #[test]
    fn another_workers_stalled_partitions_back_off_at_once_up_to_the_longest_window() {
        let mut w = STALL_WINDOW;
        w = window_after_rejoin(w, false, 1);
        assert_eq!(w, STALL_WINDOW * 2);
        for rejoins in 2..20 {
            w = window_after_rejoin(w, false, rejoins);
        }
        assert_eq!(w, STALL_WINDOW_MAX);
    }
}
