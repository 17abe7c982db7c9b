//! Which ready operation goes next: priorities over the operation graph, computed once in
//! O(V + E), and the ready queue that applies them.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// How the executor orders ready operations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Schedule {
    /// The operation with the longest chain of operations after it first.
    #[default]
    CriticalPath,
    /// Level by level, like the original VMThunder scripts: no operation of level k + 1
    /// (its longest chain of predecessors) starts before all of level k are done.
    Levels,
    /// In plan order, as operations become ready.
    Fifo,
}

/// Per operation, the estimated time of the longest chain that starts at it (its own
/// `weight` included).
pub fn ranks(after: &[Vec<u32>], weight: &[u64]) -> Vec<u64> {
    // Ordering by the reversed edges puts every operation after all its successors.
    chain_lengths(after, |i| weight[i])
}

/// Per operation, the number of operations on the longest chain that ends at it.
pub fn levels(before: &[Vec<u32>]) -> Vec<u64> {
    chain_lengths(before, |_| 1)
}

/// `len[i] = weight(i) + max(len[j] for j in edges[i])`, in an order where every `j` comes
/// first. O(V + E).
fn chain_lengths(edges: &[Vec<u32>], weight: impl Fn(usize) -> u64) -> Vec<u64> {
    let order = crate::dag::topo_order(edges).unwrap_or_else(|_| (0..edges.len() as u32).collect());
    let mut len = vec![0u64; edges.len()];
    for &i in &order {
        let best = edges[i as usize]
            .iter()
            .map(|&j| len[j as usize])
            .max()
            .unwrap_or(0);
        len[i as usize] = weight(i as usize) + best;
    }
    len
}

/// Marks every operation that transitively waits on `failed` as skipped; returns the newly
/// marked ones.
pub fn skip_after(failed: u32, after: &[Vec<u32>], skipped: &mut [bool]) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack = vec![failed];
    while let Some(i) = stack.pop() {
        for &s in &after[i as usize] {
            if !skipped[s as usize] {
                skipped[s as usize] = true;
                out.push(s);
                stack.push(s);
            }
        }
    }
    out
}

/// Ready operations, best first under a [`Schedule`].
pub struct Ready {
    schedule: Schedule,
    heap: BinaryHeap<(u64, Reverse<u32>)>,
    rank: Vec<u64>,
    level: Vec<u64>,
    /// Operations of each level not yet done or skipped (Levels only).
    left: Vec<u32>,
    current: usize,
}

impl Ready {
    /// `weight`: each operation's estimated duration (critical-path priority only).
    pub fn new(
        schedule: Schedule,
        before: &[Vec<u32>],
        after: &[Vec<u32>],
        weight: &[u64],
    ) -> Ready {
        let rank = match schedule {
            Schedule::CriticalPath => ranks(after, weight),
            _ => Vec::new(),
        };
        let (level, left) = match schedule {
            Schedule::Levels => {
                let level = levels(before);
                let mut left = vec![0u32; level.iter().copied().max().unwrap_or(0) as usize + 1];
                for &l in &level {
                    left[l as usize] += 1;
                }
                (level, left)
            }
            _ => (Vec::new(), Vec::new()),
        };
        let mut r = Ready {
            schedule,
            heap: BinaryHeap::new(),
            rank,
            level,
            left,
            current: 0,
        };
        r.advance();
        r
    }

    pub fn push(&mut self, op: u32) {
        let key = match self.schedule {
            Schedule::CriticalPath => self.rank[op as usize],
            Schedule::Levels => u64::MAX - self.level[op as usize],
            Schedule::Fifo => 0,
        };
        self.heap.push((key, Reverse(op)));
    }

    /// The best ready operation that may start now.
    pub fn pop(&mut self) -> Option<u32> {
        let &(_, Reverse(op)) = self.heap.peek()?;
        if self.schedule == Schedule::Levels && self.level[op as usize] as usize > self.current {
            return None;
        }
        self.heap.pop().map(|(_, Reverse(op))| op)
    }

    /// `op` finished, failed or was skipped: it no longer holds its level back.
    pub fn settled(&mut self, op: u32) {
        if self.schedule == Schedule::Levels {
            self.left[self.level[op as usize] as usize] -= 1;
            self.advance();
        }
    }

    fn advance(&mut self) {
        while self.current < self.left.len() && self.left[self.current] == 0 {
            self.current += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_count_the_longest_chain_after_each_operation() {
        // 0 -> 1 -> 2, 0 -> 3
        let after = vec![vec![1, 3], vec![2], vec![], vec![]];
        assert_eq!(ranks(&after, &[1, 1, 1, 1]), vec![3, 2, 1, 1]);
        // A single slow operation outweighs a chain of quick ones.
        assert_eq!(ranks(&after, &[1, 1, 1, 5]), vec![6, 2, 1, 5]);
        let before = vec![vec![], vec![0], vec![1], vec![0]];
        assert_eq!(levels(&before), vec![1, 2, 3, 2]);
    }

    #[test]
    fn a_failure_skips_everything_downstream_once() {
        let after = vec![vec![1, 2], vec![3], vec![3], vec![]];
        let mut skipped = vec![false; 4];
        let mut s = skip_after(0, &after, &mut skipped);
        s.sort();
        assert_eq!(s, vec![1, 2, 3]);
        assert!(skip_after(1, &after, &mut skipped).is_empty());
    }

    #[test]
    fn schedules_pick_differently() {
        // 0 -> 1 -> 2 (a long chain), 3 and 4 alone.
        let before = vec![vec![], vec![0], vec![1], vec![], vec![]];
        let after = vec![vec![1], vec![2], vec![], vec![], vec![]];
        let w = [1; 5];
        let mut cp = Ready::new(Schedule::CriticalPath, &before, &after, &w);
        for op in [3, 0, 4] {
            cp.push(op);
        }
        assert_eq!(cp.pop(), Some(0), "the head of the longest chain first");

        let mut lv = Ready::new(Schedule::Levels, &before, &after, &w);
        for op in [0, 3, 4] {
            lv.push(op);
        }
        assert_eq!([lv.pop(), lv.pop(), lv.pop()], [Some(0), Some(3), Some(4)]);
        lv.settled(0);
        lv.push(1);
        assert_eq!(lv.pop(), None, "level 2 waits for all of level 1");
        lv.settled(3);
        lv.settled(4);
        assert_eq!(lv.pop(), Some(1));
    }
}
