//! Finding the rows a destination refuses, by halving: a write of many rows that the
//! destination refuses for something in it (an HTTP 400 for the request, a constraint violation
//! for the statement) is split in two and each half written again, until the refused rows stand
//! alone — they go to the dead-letter topic with the destination's reason, and every other row is
//! delivered. Both the `http` and the `postgres` sink find their refused rows this way.
//!
//! [`Halving`] holds no I/O: the sink asks it for the next range to write, writes it, and tells
//! it what the destination answered. What was settled is kept in [`Settled`], which a sink may
//! keep across a retry of the same batch so that rows already delivered are not sent again.

use std::collections::{HashMap, HashSet};

use sluice_engine::connector::RejectedRow;

/// What the destination did with one range of rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// It took every row.
    Delivered,
    /// It refused something in the range, for this reason.
    Refused(String),
}

/// What earlier writes of the same batch settled.
#[derive(Debug, Default)]
pub struct Settled {
    /// Ranges the destination took.
    delivered: HashSet<(usize, usize)>,
    /// Ranges it refused and that were split in halves.
    split: HashSet<(usize, usize)>,
    /// Single rows it refused, with the reason.
    refused: HashMap<usize, String>,
}

/// The ranges still to write for one range of rows, in row order.
#[derive(Debug)]
pub struct Halving {
    /// Taken from the end, so rows go out in order.
    todo: Vec<(usize, usize)>,
    rejected: Vec<RejectedRow>,
}

impl Halving {
    /// Rows `start..end` to write.
    pub fn new(start: usize, end: usize) -> Self {
        Halving { todo: vec![(start, end)], rejected: Vec::new() }
    }

    /// The next range to write, skipping what `settled` says is done; `None` when nothing is
    /// left.
    pub fn next(&mut self, settled: &Settled) -> Option<(usize, usize)> {
        while let Some((a, b)) = self.todo.pop() {
            if a == b || settled.delivered.contains(&(a, b)) {
                continue;
            }
            if let Some(reason) = settled.refused.get(&a).filter(|_| b - a == 1) {
                self.rejected.push(RejectedRow { index: a, reason: reason.clone() });
                continue;
            }
            if settled.split.contains(&(a, b)) {
                self.halve(a, b);
                continue;
            }
            return Some((a, b));
        }
        None
    }

    /// Records the destination's answer for range `a..b` (the one [`Halving::next`] gave).
    pub fn answer(&mut self, (a, b): (usize, usize), answer: Answer, settled: &mut Settled) {
        match answer {
            Answer::Delivered => {
                settled.delivered.insert((a, b));
            }
            Answer::Refused(reason) if b - a == 1 => {
                settled.refused.insert(a, reason.clone());
                self.rejected.push(RejectedRow { index: a, reason });
            }
            Answer::Refused(_) => {
                settled.split.insert((a, b));
                self.halve(a, b);
            }
        }
    }

    /// The rows refused, each alone, in the order they were found.
    pub fn into_rejected(self) -> Vec<RejectedRow> {
        self.rejected
    }

    fn halve(&mut self, a: usize, b: usize) {
        let mid = a + (b - a) / 2;
        self.todo.push((mid, b));
        self.todo.push((a, mid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a halving against a destination refusing the rows in `bad`; returns the refused
    /// rows and the ranges written.
    fn run(rows: usize, bad: &[usize], settled: &mut Settled) -> (Vec<usize>, Vec<(usize, usize)>) {
        let mut h = Halving::new(0, rows);
        let mut writes = Vec::new();
        while let Some((a, b)) = h.next(settled) {
            writes.push((a, b));
            let answer = if bad.iter().any(|r| (a..b).contains(r)) {
                Answer::Refused(format!("row in {a}..{b}"))
            } else {
                Answer::Delivered
            };
            h.answer((a, b), answer, settled);
        }
        (h.into_rejected().into_iter().map(|r| r.index).collect(), writes)
    }

    #[test]
    fn refused_rows_end_up_alone_and_every_other_row_is_written_once() {
        let (refused, writes) = run(10, &[3, 7], &mut Settled::default());
        assert_eq!(refused, vec![3, 7]);
        let mut taken = vec![0; 10];
        let mut settled = Settled::default();
        for (a, b) in &writes {
            if ![3usize, 7].iter().any(|r| (*a..*b).contains(r)) {
                (*a..*b).for_each(|i| taken[i] += 1);
            }
            settled.delivered.insert((*a, *b));
        }
        assert_eq!(taken, vec![1, 1, 1, 0, 1, 1, 1, 0, 1, 1]);
        assert_eq!(run(4, &[], &mut Settled::default()).1, vec![(0, 4)], "a clean write is one write");
        assert!(run(0, &[], &mut Settled::default()).1.is_empty());
    }

    #[test]
    fn a_second_pass_over_the_same_batch_writes_nothing_settled_again() {
        let mut settled = Settled::default();
        let (first, _) = run(8, &[5], &mut settled);
        let (second, writes) = run(8, &[5], &mut settled);
        assert_eq!(first, second, "the refusals are remembered");
        assert!(writes.is_empty(), "nothing is sent again: {writes:?}");
    }
}
