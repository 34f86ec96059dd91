//! Ordered offset tracking: what a sink worker may commit.
//!
//! Records of one partition may finish out of order (parallel batches, a retried write that
//! completes after a later one). A Kafka commit says "everything before this offset is done",
//! so the offset committed for a partition must never pass a record that is neither delivered
//! nor durably in the dead-letter topic. The tracker keeps, per partition, the offsets read but
//! not yet finished, and hands out the contiguous prefix: the lowest unfinished offset, or one
//! past the highest offset seen when nothing is unfinished.
//!
//! Offsets need not be dense (compaction and transaction markers leave gaps); only offsets the
//! worker actually read are tracked.

use std::collections::{HashMap, VecDeque};

/// Per-partition progress of one topic.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<i32, Partition>,
}

#[derive(Debug, Default)]
struct Partition {
    /// Offsets read and not yet finished (`false`), or finished while an earlier one is still
    /// open (`true`), in ascending order. A consumer reads a partition in offset order, so a
    /// read appends and a finish is a binary search: no allocation per record, unlike a map.
    open: VecDeque<(i64, bool)>,
    /// One past the highest offset read.
    next: i64,
    /// The last offset handed out for commit (initially the first offset read), to hand out
    /// each advance once.
    committed: Option<i64>,
}

impl Partition {
    fn commit_point(&self) -> i64 {
        self.open.front().map_or(self.next, |(o, _)| *o)
    }
}

impl OffsetTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        OffsetTracker::default()
    }

    /// Notes that `offset` of `partition` was read and is now in flight.
    pub fn read(&mut self, partition: i32, offset: i64) {
        // The first offset read is where the consumer was positioned: the group's committed
        // offset (or the reset point), so there is nothing to commit until it is finished.
        let p = self
            .partitions
            .entry(partition)
            .or_insert_with(|| Partition { committed: Some(offset), ..Partition::default() });
        match p.open.back() {
            Some((last, _)) if *last >= offset => match p.open.binary_search_by_key(&offset, |(o, _)| *o) {
                Ok(i) => p.open[i].1 = false,
                Err(i) => p.open.insert(i, (offset, false)),
            },
            _ => p.open.push_back((offset, false)),
        }
        p.next = p.next.max(offset + 1);
    }

    /// Notes that `offset` of `partition` is finished: delivered, or durably dead-lettered.
    pub fn finish(&mut self, partition: i32, offset: i64) {
        let Some(p) = self.partitions.get_mut(&partition) else { return };
        // Usually the oldest open offset finishes first (a batch finishes in read order).
        if p.open.front().is_some_and(|(o, _)| *o == offset) {
            p.open.pop_front();
        } else if let Ok(i) = p.open.binary_search_by_key(&offset, |(o, _)| *o) {
            p.open[i].1 = true;
        }
        // Drop the finished prefix: the commit point is the first offset still open.
        while p.open.front().is_some_and(|(_, done)| *done) {
            p.open.pop_front();
        }
    }

    /// The offsets to commit now, per partition: those that advanced since the last call.
    /// Each is the next offset to read, as Kafka's commit expects.
    pub fn to_commit(&mut self) -> Vec<(i32, i64)> {
        let mut out = Vec::new();
        for (&id, p) in &mut self.partitions {
            let point = p.commit_point();
            if point > 0 && p.committed.is_none_or(|c| point > c) {
                out.push((id, point));
            }
        }
        out.sort_unstable();
        out
    }

    /// Records that `offset` was committed for `partition` (after the commit succeeded).
    pub fn committed(&mut self, partition: i32, offset: i64) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            p.committed = Some(p.committed.map_or(offset, |c| c.max(offset)));
        }
    }

    /// The commit point of `partition`, if it was ever read.
    pub fn position(&self, partition: i32) -> Option<i64> {
        self.partitions.get(&partition).map(Partition::commit_point)
    }

    /// How many records are in flight across all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.open.iter().filter(|(_, done)| !*done).count()).sum()
    }

    /// Moves `partition`'s commit point up to `offset` (the consumer's position) when nothing
    /// of it is open: the consumer went past offsets it never hands out — transaction markers,
    /// records of aborted transactions — and committing only up to the last record read would
    /// leave the group short of the partition's end forever.
    pub fn skip_to(&mut self, partition: i32, offset: i64) {
        let p = self.partitions.entry(partition).or_default();
        if p.open.is_empty() && offset > p.next {
            p.next = offset;
        }
    }

    /// Forgets a partition (revoked in a rebalance): its new owner starts at the committed
    /// offset, and nothing read here may be committed by this worker any more.
    pub fn forget(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commits_only_the_contiguous_prefix() {
        let mut t = OffsetTracker::new();
        for o in [10, 11, 13, 14] {
            t.read(0, o);
        }
        assert!(t.to_commit().is_empty(), "nothing finished yet");
        t.finish(0, 11);
        t.finish(0, 13);
        assert!(t.to_commit().is_empty(), "10 is still open");
        t.finish(0, 10);
        assert_eq!(t.to_commit(), vec![(0, 14)], "10, 11 and 13 done; the gap at 12 was never read");
        t.committed(0, 14);
        assert!(t.to_commit().is_empty(), "each advance is handed out once");
        t.finish(0, 14);
        assert_eq!(t.to_commit(), vec![(0, 15)]);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn a_forgotten_partition_is_never_committed() {
        let mut t = OffsetTracker::new();
        t.read(1, 0);
        t.read(2, 0);
        t.forget(1);
        t.finish(1, 0);
        t.finish(2, 0);
        assert_eq!(t.to_commit(), vec![(2, 1)]);
    }

    /// A partition's reads: increasing offsets with random gaps.
    fn offsets() -> impl Strategy<Value = Vec<i64>> {
        prop::collection::vec(1i64..4, 1..200).prop_map(|steps| {
            let mut o = 0;
            steps
                .into_iter()
                .map(|s| {
                    o += s;
                    o
                })
                .collect()
        })
    }

    proptest! {
        /// Whatever order records finish in, a handed-out commit point never passes an
        /// unfinished record, never goes backwards, and ends one past the last record.
        #[test]
        fn never_commits_past_an_unfinished_record(
            (reads, order) in offsets().prop_flat_map(|r| {
                let n = r.len();
                (Just(r), Just((0..n).collect::<Vec<usize>>()).prop_shuffle())
            }),
            commit_every in 1usize..10,
        ) {
            let mut t = OffsetTracker::new();
            for &o in &reads {
                t.read(7, o);
            }
            let mut finished = std::collections::BTreeSet::new();
            let mut last = 0i64;
            for (step, &i) in order.iter().enumerate() {
                t.finish(7, reads[i]);
                finished.insert(reads[i]);
                if step % commit_every == 0 {
                    for (p, c) in t.to_commit() {
                        prop_assert_eq!(p, 7);
                        prop_assert!(c > last, "commit went from {} to {}", last, c);
                        for &o in reads.iter().filter(|o| **o < c) {
                            prop_assert!(finished.contains(&o), "committed {} past unfinished {}", c, o);
                        }
                        t.committed(7, c);
                        last = c;
                    }
                }
            }
            let end = reads.last().copied().unwrap_or(0) + 1;
            prop_assert_eq!(t.position(7), Some(end));
            prop_assert_eq!(t.in_flight(), 0);
        }

        /// Interleaved reads and finishes over several partitions: the commit point of each is
        /// exactly the lowest offset read and not finished (or one past the highest read).
        #[test]
        fn commit_point_is_the_lowest_open_offset(
            ops in prop::collection::vec((0i32..3, any::<bool>(), 0usize..1000), 1..300),
        ) {
            let mut t = OffsetTracker::new();
            let mut next = [0i64; 3];
            let mut high = [0i64; 3];
            let mut open: [std::collections::BTreeSet<i64>; 3] = Default::default();
            for (p, is_read, pick) in ops {
                let pi = p as usize;
                if is_read || open[pi].is_empty() {
                    t.read(p, next[pi]);
                    open[pi].insert(next[pi]);
                    high[pi] = next[pi] + 1;
                    next[pi] += 1 + (pick as i64 % 2);
                } else {
                    let o = *open[pi].iter().nth(pick % open[pi].len()).unwrap();
                    open[pi].remove(&o);
                    t.finish(p, o);
                }
                let expect = open[pi].iter().next().copied().unwrap_or(high[pi]);
                prop_assert_eq!(t.position(p), Some(expect));
                prop_assert_eq!(t.in_flight(), open.iter().map(|s| s.len()).sum::<usize>());
            }
        }
    }

    #[test]
    fn skipping_markers_moves_the_commit_point_only_when_nothing_is_open() {
        let mut t = OffsetTracker::new();
        t.read(0, 10);
        t.read(0, 11);
        t.skip_to(0, 13);
        t.finish(0, 10);
        assert_eq!(t.to_commit(), vec![(0, 11)], "an open record holds the commit point");
        t.finish(0, 11);
        t.skip_to(0, 13);
        assert_eq!(t.to_commit(), vec![(0, 13)], "past the marker at 12");
        t.committed(0, 13);
        t.skip_to(0, 12);
        assert!(t.to_commit().is_empty(), "never backwards");
        // A partition where only a marker was passed.
        t.skip_to(1, 5);
        assert_eq!(t.to_commit(), vec![(1, 5)]);
    }
}
