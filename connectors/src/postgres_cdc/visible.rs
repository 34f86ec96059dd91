//! Which transactions a table's snapshot already holds, so the stream does not apply them again.
//!
//! A snapshot is read in its own `REPEATABLE READ` transaction, some time after the slot's
//! stream position: the table may have changed in between. Those changes are in the snapshot
//! *and* still ahead in the slot, so without care a row's old versions would follow its newer
//! snapshot copy, out of order. So the snapshot transaction records PostgreSQL's own view of
//! which transactions it sees (`pg_current_snapshot()`: `xmin:xmax:xip…`) and the WAL position
//! then; the stream drops the table's changes from exactly those transactions. Every
//! transaction committed after that position is invisible to the snapshot, so once the stream
//! passes it the record is no longer needed. It travels in positions until then, so a restart
//! in between still skips what the snapshot holds.

use serde::{Deserialize, Serialize};

/// A snapshot's visible transactions and the WAL position when it was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SnapshotView {
    /// Transactions below this id had all ended: committed ones are visible.
    pub xmin: u64,
    /// Transactions from this id on had not started: none is visible.
    pub xmax: u64,
    /// Transactions between that were still running: not visible.
    pub xip: Vec<u64>,
    /// `pg_current_wal_lsn()` inside the snapshot (as a number): no transaction committed
    /// after it is visible.
    pub lsn: u64,
}

impl SnapshotView {
    /// Parses `pg_current_snapshot()`'s text (`xmin:xmax:xip1,xip2`), with the LSN read then.
    pub(super) fn parse(text: &str, lsn: u64) -> Option<SnapshotView> {
        let mut parts = text.trim().splitn(3, ':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let xip = match parts.next()?.trim() {
            "" => Vec::new(),
            list => list.split(',').map(|x| x.trim().parse().ok()).collect::<Option<Vec<u64>>>()?,
        };
        Some(SnapshotView { xmin, xmax, xip, lsn })
    }

    /// Whether the snapshot holds the effects of transaction `xid` (32 bits, as pgoutput sends
    /// it; committed, as every streamed transaction is).
    pub(super) fn sees(&self, xid: u32) -> bool {
        // Widen to the snapshot's 64-bit ids: the epoch of `xmax`, or the one before when the
        // 32-bit id would land past it (it wrapped since).
        let epoch = self.xmax & !0xffff_ffff;
        let mut full = epoch | u64::from(xid);
        if full >= self.xmax && epoch > 0 && full - self.xmax > (1 << 31) {
            full -= 1 << 32;
        }
        full < self.xmin || (full < self.xmax && !self.xip.contains(&full))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_pg_current_snapshot_text() {
        let v = SnapshotView::parse("100:105:100,103", 7).unwrap();
        assert_eq!(v, SnapshotView { xmin: 100, xmax: 105, xip: vec![100, 103], lsn: 7 });
        assert_eq!(SnapshotView::parse("42:42:", 1).unwrap().xip, Vec::<u64>::new());
        assert!(SnapshotView::parse("nonsense", 1).is_none());
        assert!(SnapshotView::parse("1:2:x", 1).is_none());
    }

    #[test]
    fn sees_exactly_the_transactions_committed_before_it() {
        let v = SnapshotView::parse("100:105:100,103", 0).unwrap();
        // Ended before the snapshot.
        assert!(v.sees(99));
        assert!(v.sees(1));
        // Between xmin and xmax: visible unless still running then.
        assert!(!v.sees(100));
        assert!(v.sees(101));
        assert!(v.sees(102));
        assert!(!v.sees(103));
        assert!(v.sees(104));
        // Started after.
        assert!(!v.sees(105));
        assert!(!v.sees(4_000_000_000));
    }

    #[test]
    fn widens_32_bit_ids_across_the_epoch() {
        // Epoch 1: xmax = 2^32 + 10. A 32-bit id of 5 is 2^32 + 5 (visible); one of
        // 4_294_967_290 is from epoch 0, long ended (visible); 20 is after (not visible).
        let base = 1u64 << 32;
        let v = SnapshotView { xmin: base + 8, xmax: base + 10, xip: vec![], lsn: 0 };
        assert!(v.sees(5));
        assert!(v.sees(4_294_967_290));
        assert!(!v.sees(20));
        assert!(v.sees(9));
    }
}
