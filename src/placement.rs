//! Tree placement: which host each host pulls an image from.
//!
//! Per image, the hosts form a tree rooted at the source with at most `degree` children per
//! node. A fresh tree is a d-ary heap in spec order (as in the VMThunder prototype). Later
//! placements are stable: a recorded parent is kept while it is still in the tree, is healthy
//! and has room (at most `degree` children, earlier hosts first); hosts without a valid parent
//! (new ones, children of removed ones) fill the shallowest free slots and bring their recorded
//! subtrees with them. A recorded cycle is cut at its first unreached member.
//!
//! [`Options`] changes the tree under running clones without rebuilding it:
//!
//! - `keep_recorded` (for `degree: "auto"`, where the model may pick a smaller degree than
//!   before): a recorded parent keeps *all* its recorded children, even past `degree`, so no
//!   placed host moves; only hosts without a valid recorded parent follow the new degree, i.e.
//!   they only take slots of nodes with fewer than `degree` children. Without it a degree the
//!   user lowered is enforced and the extra children are re-placed.
//! - `unhealthy` (repair): such a node (its relay is gone, it does not answer) serves nobody.
//!   It keeps its own place under its recorded parent (nothing is planned on it) unless that
//!   parent is unhealthy too; it never receives children and is never a free slot. Its recorded
//!   children are re-placed, their subtrees unchanged: at the nearest ancestor of the unhealthy
//!   node (its parent, grandparent, ... the source) with fewer than `degree` children, else at
//!   the shallowest free slot anywhere outside the unhealthy node's former subtree (siblings
//!   land in each other's subtrees only when nothing outside has room). An unhealthy node that
//!   is re-placed ends up a leaf. The source is never unhealthy.
//!
//! Fallback: if no healthy node has a free slot at all (e.g. all leaves are unhealthy, as at
//! the end of a chain), a re-placed child goes to the nearest ancestor of the unhealthy node
//! with at most `degree` children, which so exceeds the degree by one; failing that, and for a
//! host without a place, the shallowest healthy node with at most `degree` children does.
//! Only if every healthy node already exceeds the degree does the source take the host anyway.
//! Placement never fails.
//!
//! O(n log n) in the number of hosts: a heap of free slots, and path-compressed jump pointers
//! for "nearest ancestor with room".

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

/// Node 0 is the source; nodes `1..` are the member hosts in spec order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    /// `parent[i]` of node `i`; `None` for the source.
    pub parent: Vec<Option<u32>>,
    pub children: Vec<Vec<u32>>,
    /// Breadth-first order from the source: every node comes after its parent.
    pub order: Vec<u32>,
    pub depth: Vec<u32>,
}

/// How [`place`] treats the recorded tree.
#[derive(Clone, Copy)]
pub struct Options<'a> {
    /// Children per node for hosts that need a slot (at least 1).
    pub degree: u32,
    /// Keep every valid recorded parent, even past `degree` (for a degree the model chose).
    pub keep_recorded: bool,
    /// Nodes that can not serve children (asked for member nodes only; the source never is).
    pub unhealthy: &'a dyn Fn(u32) -> bool,
}

fn nobody(_: u32) -> bool {
    false
}

impl Options<'static> {
    /// A fixed `degree` that is enforced on recorded parents too; nobody unhealthy.
    pub fn fixed(degree: u32) -> Options<'static> {
        Options {
            degree,
            keep_recorded: false,
            unhealthy: &nobody,
        }
    }
}

/// Places `members` under the source. `recorded(i)` gives the recorded parent of member node
/// `i` (as a node index), if any; indices out of range and self-parents are ignored.
pub fn place(members: usize, opts: &Options, recorded: impl Fn(u32) -> Option<u32>) -> Tree {
    let n = members + 1;
    let degree = opts.degree.max(1) as usize;
    let sick: Vec<bool> = (0..n as u32)
        .map(|i| i != 0 && (opts.unhealthy)(i))
        .collect();
    let mut b = Build {
        degree,
        parent: vec![None; n],
        children: vec![Vec::new(); n],
        depth: vec![u32::MAX; n],
        heap: BinaryHeap::new(),
        seq: 0,
        ready: VecDeque::new(),
        room: (0..n as u32).collect(),
        overflow: None,
        spill: None,
        sick,
    };

    // Keep valid recorded parents, earlier hosts first: at most `degree` children each unless
    // `keep_recorded`. An unhealthy parent holds all its recorded children only until it is
    // reached; then they are re-placed (`Build::repair`).
    for i in 1..n as u32 {
        if let Some(p) = recorded(i).filter(|&p| p != i && (p as usize) < n) {
            let p = p as usize;
            if b.sick[p] || opts.keep_recorded || b.children[p].len() < degree {
                b.parent[i as usize] = Some(p as u32);
                b.children[p].push(i);
            }
        }
    }

    b.depth[0] = 0;
    b.attach(0);
    // Hosts without a parent, in spec order; then any left unreached (a recorded cycle).
    let mut pending: VecDeque<u32> = (1..n as u32)
        .filter(|&i| b.parent[i as usize].is_none())
        .collect();
    let mut cursor = 1usize;
    loop {
        // Re-placing under a reached unhealthy node comes first: its children want slots near it.
        if let Some(u) = b.ready.pop_front() {
            b.repair(u);
            continue;
        }
        if let Some(r) = pending.pop_front() {
            let slot = match b.free_slot() {
                Some(slot) => slot,
                None => b.spill_slot(),
            };
            b.adopt(slot, r);
            b.attach(r);
            continue;
        }
        // A cycle in recorded parents never reaches the source: cut it at its first member.
        while cursor < n && b.depth[cursor] != u32::MAX {
            cursor += 1;
        }
        if cursor == n {
            break;
        }
        let stray = cursor as u32;
        let old = b.parent[cursor]
            .take()
            .expect("unreached nodes have a parent");
        b.children[old as usize].retain(|&c| c != stray);
        pending.push_back(stray);
    }

    let Build {
        parent,
        mut children,
        depth,
        ..
    } = b;
    for list in &mut children {
        list.sort_unstable();
    }
    let mut order = Vec::with_capacity(n);
    let mut queue = VecDeque::from([0u32]);
    while let Some(v) = queue.pop_front() {
        order.push(v);
        queue.extend(children[v as usize].iter().copied());
    }
    Tree {
        parent,
        children,
        order,
        depth,
    }
}

/// The tree under construction. Nodes are *reached* once their depth is set (attached under
/// the source); only reached nodes offer slots.
struct Build {
    degree: usize,
    sick: Vec<bool>,
    parent: Vec<Option<u32>>,
    children: Vec<Vec<u32>>,
    depth: Vec<u32>,
    /// Free slots of reached healthy nodes, shallowest first, then in reaching order. Entries
    /// of nodes filled since are dropped when popped.
    heap: BinaryHeap<Reverse<(u32, u64, u32)>>,
    seq: u64,
    /// Reached unhealthy nodes whose recorded children are still to be re-placed.
    ready: VecDeque<u32>,
    /// Jump pointers towards the source over nodes with `degree` or more children.
    room: Vec<u32>,
    /// The same over nodes with more than `degree` children (the fallback), made when needed.
    overflow: Option<Vec<u32>>,
    /// Reached healthy nodes with at most `degree` children, shallowest first (the fallback),
    /// made when needed.
    spill: Option<BinaryHeap<Reverse<(u32, u32)>>>,
}

impl Build {
    /// Reaches the subtree under `root` (its depth already set), offering its free slots. It
    /// stops at unhealthy nodes, whose children wait for [`Build::repair`].
    fn attach(&mut self, root: u32) {
        let mut queue = VecDeque::from([root]);
        while let Some(v) = queue.pop_front() {
            let vi = v as usize;
            if self.sick[vi] {
                self.ready.push_back(v);
                continue;
            }
            if self.children[vi].len() < self.degree {
                self.heap.push(Reverse((self.depth[vi], self.seq, v)));
                self.seq += 1;
            }
            if let Some(spill) = &mut self.spill {
                if self.children[vi].len() <= self.degree {
                    spill.push(Reverse((self.depth[vi], v)));
                }
            }
            for &c in &self.children[vi] {
                self.depth[c as usize] = self.depth[vi] + 1;
                queue.push_back(c);
            }
        }
    }

    /// Makes `child` (unreached, without a parent) a child of the reached node `slot`.
    fn adopt(&mut self, slot: u32, child: u32) {
        self.parent[child as usize] = Some(slot);
        self.children[slot as usize].push(child);
        self.depth[child as usize] = self.depth[slot as usize] + 1;
    }

    /// The shallowest free slot of a reached healthy node, taken (the node stays offered while
    /// it has room after the caller adopts into it).
    fn free_slot(&mut self) -> Option<u32> {
        while let Some(Reverse(entry @ (_, _, v))) = self.heap.pop() {
            let len = self.children[v as usize].len();
            if len < self.degree {
                if len + 1 < self.degree {
                    self.heap.push(Reverse(entry));
                }
                return Some(v);
            }
        }
        None
    }

    /// Re-places the recorded children of the reached unhealthy node `u`: nearest ancestor with
    /// room, else the shallowest free slot outside `u`'s former subtree (the children are all
    /// placed before their subtrees are reached, so none lands in a sibling's subtree), else
    /// a free slot in the subtrees of the siblings placed so far, else the fallback.
    fn repair(&mut self, u: u32) {
        let kids = std::mem::take(&mut self.children[u as usize]);
        let up = self.parent[u as usize].expect("an unhealthy node is a member");
        let mut reached = 0;
        for (k, &c) in kids.iter().enumerate() {
            let mut slot = nearest(
                &mut self.room,
                &self.parent,
                &self.children,
                up,
                self.degree,
            )
            .or_else(|| self.free_slot());
            if slot.is_none() && reached < k {
                for &s in &kids[reached..k] {
                    self.attach(s);
                }
                reached = k;
                slot = self.free_slot();
            }
            let slot = slot.unwrap_or_else(|| self.overflow_from(up));
            self.parent[c as usize] = None;
            self.adopt(slot, c);
        }
        for &c in &kids[reached..] {
            self.attach(c);
        }
    }

    /// The fallback slot for a child of the unhealthy node whose parent is `up`, when no
    /// healthy node has room: the nearest ancestor-or-self of `up` with at most `degree`
    /// children, else [`Build::spill_slot`].
    fn overflow_from(&mut self, up: u32) -> u32 {
        let n = self.parent.len() as u32;
        let jumps = self.overflow.get_or_insert_with(|| (0..n).collect());
        match nearest(jumps, &self.parent, &self.children, up, self.degree + 1) {
            Some(slot) => slot,
            None => self.spill_slot(),
        }
    }

    /// The fallback slot when no healthy node has room: the shallowest reached healthy node
    /// with at most `degree` children (then lowest index), else the source.
    fn spill_slot(&mut self) -> u32 {
        let degree = self.degree;
        let spill = self.spill.get_or_insert_with(|| {
            (0..self.parent.len())
                .filter(|&v| {
                    self.depth[v] != u32::MAX && !self.sick[v] && self.children[v].len() <= degree
                })
                .map(|v| Reverse((self.depth[v], v as u32)))
                .collect()
        });
        while let Some(Reverse(entry @ (_, v))) = spill.pop() {
            let len = self.children[v as usize].len();
            if len <= degree {
                if len < degree {
                    spill.push(Reverse(entry));
                }
                return v;
            }
        }
        0
    }
}

/// The nearest ancestor-or-self of the reached node `from` with fewer than `limit` children,
/// following and compressing the jump pointers `jumps` (a node's pointer leaves it only once it
/// is full, and nodes never lose children, so skipped nodes stay full). Amortized O(log n).
/// Every ancestor of a reached node is healthy (unhealthy nodes have no children).
fn nearest(
    jumps: &mut [u32],
    parent: &[Option<u32>],
    children: &[Vec<u32>],
    from: u32,
    limit: usize,
) -> Option<u32> {
    let mut x = from;
    let found = loop {
        let j = jumps[x as usize];
        if j != x {
            x = j;
        } else if children[x as usize].len() < limit {
            break Some(x);
        } else if let Some(p) = parent[x as usize] {
            jumps[x as usize] = p;
            x = p;
        } else {
            break None;
        }
    };
    let mut y = from;
    while y != x {
        let next = jumps[y as usize];
        jumps[y as usize] = x;
        y = next;
    }
    found
}

impl Tree {
    pub fn height(&self) -> u32 {
        self.depth.iter().copied().max().unwrap_or(0)
    }
}

/// Maps host names to node indices for [`place`]: the source is 0, members follow.
pub fn index<'a>(source: &'a str, members: &[&'a str]) -> HashMap<&'a str, u32> {
    let mut map = HashMap::with_capacity(members.len() + 1);
    map.insert(source, 0);
    for (i, m) in members.iter().enumerate() {
        map.insert(*m, i as u32 + 1);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(members: usize, degree: u32) -> Tree {
        place(members, &Options::fixed(degree), |_| None)
    }

    /// `recorded` from a table indexed by node (index 0, the source, unused).
    fn table(parents: &[Option<u32>]) -> impl Fn(u32) -> Option<u32> + '_ {
        move |i| parents[i as usize]
    }

    #[test]
    fn fresh_tree_is_a_heap_in_spec_order() {
        let t = fresh(6, 2);
        // As in the prototype: node i (1-based after the source) has parent (i-1)/d.
        let parents: Vec<_> = (1..=6).map(|i| t.parent[i].unwrap()).collect();
        assert_eq!(parents, [0, 0, 1, 1, 2, 2]);
        assert_eq!(t.order, [0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(t.height(), 2);
        let chain = fresh(3, 1);
        assert_eq!(chain.height(), 3);
    }

    #[test]
    fn recorded_parents_are_kept() {
        // Recorded: 1 under 0, 2 under 1, 3 under 1 (not the heap's choice).
        let rec = |i: u32| [None, Some(0), Some(1), Some(1)][i as usize];
        let t = place(3, &Options::fixed(2), rec);
        assert_eq!(t.parent, [None, Some(0), Some(1), Some(1)]);
        // A new host 4 takes the shallowest free slot: the source's second one.
        let t = place(4, &Options::fixed(2), |i| {
            [None, Some(0), Some(1), Some(1), None][i as usize]
        });
        assert_eq!(t.parent[4], Some(0));
    }

    #[test]
    fn removed_host_reparents_only_its_children() {
        // Old tree: 0 -> {1, 2}, 1 -> {3, 4}, 3 -> {5}. Host 1 is removed; renumbered members:
        // old 2->1, 3->2, 4->3, 5->4.
        let rec = |i: u32| [None, Some(0), None, None, Some(2)][i as usize];
        let t = place(4, &Options::fixed(2), rec);
        assert_eq!(t.parent[1], Some(0));
        assert_eq!(
            t.parent[2],
            Some(0),
            "orphan takes the freed slot at the source"
        );
        assert_eq!(t.parent[3], Some(1), "then the shallowest free slot");
        assert_eq!(t.parent[4], Some(2), "grandchildren keep their parent");
    }

    #[test]
    fn degree_is_enforced_and_cycles_are_cut() {
        let t = place(4, &Options::fixed(1), |i| {
            [None, Some(0), Some(0), Some(0), Some(0)][i as usize]
        });
        assert!(t.children.iter().all(|c| c.len() <= 1));
        assert_eq!(t.order.len(), 5);
        let t = place(3, &Options::fixed(2), |i| {
            [None, Some(2), Some(1), Some(0)][i as usize]
        });
        assert_eq!(t.order.len(), 4);
        assert!(t.children.iter().all(|c| c.len() <= 2));
        assert_eq!(t.parent[3], Some(0));
    }

    #[test]
    fn kept_recorded_parents_survive_a_smaller_degree() {
        // A star of 4 under the source, recorded at degree 4; the model now picks 2.
        let rec = [None, Some(0), Some(0), Some(0), Some(0), None];
        let opts = Options {
            keep_recorded: true,
            ..Options::fixed(2)
        };
        let t = place(4, &opts, table(&rec));
        assert_eq!(t.parent[1..], [Some(0); 4], "nobody moves");
        // A new 5th host follows the new degree: not the source (4 > 2 children), but the
        // shallowest node with fewer than 2 children.
        let t = place(5, &opts, table(&rec));
        assert_eq!(t.parent[1..5], [Some(0); 4]);
        assert_eq!(t.parent[5], Some(1));
        assert_eq!(t.children[0].len(), 4);
    }

    #[test]
    fn a_fixed_smaller_degree_re_places_the_extra_children() {
        let rec = [None, Some(0), Some(0), Some(0), Some(0), None];
        let t = place(5, &Options::fixed(2), table(&rec));
        // Earlier hosts keep their slots; 3 and 4 fill host 1, the new 5 goes under 2.
        assert_eq!(
            t.parent,
            [None, Some(0), Some(0), Some(1), Some(1), Some(2)]
        );
        assert!(t.children.iter().all(|c| c.len() <= 2));
    }

    #[test]
    fn children_of_an_unhealthy_node_go_to_its_ancestors_first() {
        // Degree 2. 0 -> {1, 2}; 1 -> {3} (the grandparent, one slot free); 3 -> {4} (the
        // parent, one slot free); 4 is unhealthy with recorded children 5, 6, 7 (5 -> 8,
        // 6 -> 9, 7 -> 10). Elsewhere 2 -> {11, 12}, 11 -> {13, 14}, 12 -> {15, 16}: the
        // shallowest free slots outside are at depth 3 (13..16), deeper than the slots 6
        // brings along at depth 2.
        let rec = [
            None,
            Some(0),
            Some(0),
            Some(1),
            Some(3),
            Some(4),
            Some(4),
            Some(4),
            Some(5),
            Some(6),
            Some(7),
            Some(2),
            Some(2),
            Some(11),
            Some(11),
            Some(12),
            Some(12),
        ];
        let opts = Options {
            unhealthy: &|i| i == 4,
            ..Options::fixed(2)
        };
        let t = place(16, &opts, table(&rec));
        assert_eq!(t.parent[4], Some(3), "the unhealthy node keeps its place");
        assert!(t.children[4].is_empty(), "and serves nobody");
        assert_eq!(t.parent[5], Some(3), "its parent first");
        assert_eq!(t.parent[6], Some(1), "then its grandparent");
        assert_eq!(
            t.parent[7],
            Some(13),
            "then the shallowest free slot outside its former subtree"
        );
        assert_eq!(
            [t.parent[8], t.parent[9], t.parent[10]],
            [Some(5), Some(6), Some(7)],
            "grandchildren keep their parents"
        );
        for i in (1..=3).chain(11..=16) {
            assert_eq!(t.parent[i], rec[i], "host {i} does not move");
        }
        assert_eq!(t.order.len(), 17);
        assert!(t.children.iter().all(|c| c.len() <= 2));
    }

    #[test]
    fn an_unhealthy_node_under_an_unhealthy_one_becomes_a_leaf() {
        // 0 -> 1 -> 2 -> 3, degree 3; 1 and 2 unhealthy, 2 also keeps a child 4 -> 5.
        let rec = [None, Some(0), Some(1), Some(2), Some(2), Some(4)];
        let opts = Options {
            unhealthy: &|i| i == 1 || i == 2 || i == 0,
            ..Options::fixed(3)
        };
        let t = place(5, &opts, table(&rec));
        assert_eq!(
            t.parent[1],
            Some(0),
            "keeps its place under a healthy parent"
        );
        assert_eq!(t.parent[2], Some(0), "re-placed at the nearest ancestor");
        assert!(t.children[1].is_empty() && t.children[2].is_empty());
        assert_eq!(t.parent[3], Some(0));
        assert_eq!(
            t.parent[4],
            Some(3),
            "nothing outside has room: a free slot in its sibling's subtree"
        );
        assert_eq!(t.parent[5], Some(4));
    }

    #[test]
    fn repaired_children_follow_the_new_degree_when_recorded_parents_are_kept() {
        // Degree now 1: the source keeps its two recorded children, 2 is unhealthy; its child
        // 3 may not join the source (full) and goes to the free leaf 1.
        let rec = [None, Some(0), Some(0), Some(2)];
        let opts = Options {
            keep_recorded: true,
            unhealthy: &|i| i == 2,
            ..Options::fixed(1)
        };
        let t = place(3, &opts, table(&rec));
        assert_eq!(t.parent, [None, Some(0), Some(0), Some(1)]);
    }

    #[test]
    fn a_full_tree_exceeds_the_degree_by_one_at_the_nearest_ancestor() {
        // Degree 2. 0 -> {1, 2}, 1 -> {3, 4}; the leaves 2, 3, 4 are unhealthy, 3 has
        // recorded children 5 and 6. No healthy node has a free slot: 5 goes to 1 (3's parent)
        // as its third child; 6 then finds the free slots 5 brings along.
        let rec = [None, Some(0), Some(0), Some(1), Some(1), Some(3), Some(3)];
        let opts = Options {
            unhealthy: &|i| (2..=4).contains(&i),
            ..Options::fixed(2)
        };
        let t = place(6, &opts, table(&rec));
        assert_eq!(t.parent[5], Some(1));
        assert_eq!(t.parent[6], Some(5));
        assert_eq!(t.children[1].len(), 3);
        assert_eq!(t.children[0].len(), 2);
        assert!(t.children[3].is_empty());
        assert_eq!(t.order.len(), 7);
        // A host without a place in such a tree goes to the source the same way.
        let t = place(
            2,
            &Options {
                unhealthy: &|i| i == 1,
                ..Options::fixed(1)
            },
            |i| [None, Some(0), None][i as usize],
        );
        assert_eq!(t.parent, [None, Some(0), Some(0)]);
    }

    #[test]
    fn a_cycle_through_an_unhealthy_node_is_cut() {
        // 1 under 3 (unhealthy), 2 under 1, 3 under 2: nothing reaches the source.
        let rec = [None, Some(3), Some(1), Some(2)];
        let opts = Options {
            unhealthy: &|i| i == 3,
            ..Options::fixed(2)
        };
        let t = place(3, &opts, table(&rec));
        assert_eq!(t.parent, [None, Some(0), Some(1), Some(2)]);
        assert!(t.children[3].is_empty());
    }

    /// xorshift64*: a fixed, dependency-free stream for the large cases.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) % n
        }
    }

    /// A 200,000-host recorded tree (each host under an earlier one, some without or with an
    /// unknown parent, and with `cycles` some under any host), 5% unhealthy.
    fn large(cycles: bool, seed: u64) -> (Vec<Option<u32>>, Vec<bool>) {
        let n = 200_001u64;
        let mut rng = Rng(seed);
        let mut rec = vec![None];
        for i in 1..n {
            rec.push(match rng.below(100) {
                0..=3 => None,
                4..=5 => Some((n + rng.below(10)) as u32),
                6..=7 if cycles => Some(rng.below(n) as u32),
                _ => Some(rng.below(i) as u32),
            });
        }
        let sick = (0..n).map(|i| i > 0 && rng.below(20) == 0).collect();
        (rec, sick)
    }

    /// `slack`: how far past the degree the fallback may take a node (0 where the tree always
    /// has healthy leaves with free slots).
    fn check_invariants(
        t: &Tree,
        rec: &[Option<u32>],
        sick: &[bool],
        opts: &Options,
        slack: usize,
    ) {
        let n = rec.len();
        let degree = opts.degree as usize;
        assert_eq!(t.order.len(), n, "every node is reached");
        let mut seen = vec![false; n];
        for &v in &t.order {
            assert!(!std::mem::replace(&mut seen[v as usize], true));
        }
        assert_eq!(t.parent[0], None);
        for c in 1..n {
            let p = t.parent[c].expect("members have a parent") as usize;
            assert!(t.children[p].contains(&(c as u32)));
            assert_eq!(t.depth[c], t.depth[p] + 1);
        }
        assert_eq!(t.children.iter().map(Vec::len).sum::<usize>(), n - 1);
        for (v, kids) in t.children.iter().enumerate() {
            assert!(!sick[v] || kids.is_empty(), "unhealthy {v} serves {kids:?}");
            if kids.len() > degree + slack {
                // Past the degree (and the fallback) only by keeping recorded children.
                assert!(opts.keep_recorded, "{v} has {} children", kids.len());
                assert!(
                    kids.iter().all(|&c| rec[c as usize] == Some(v as u32)),
                    "{v} has {kids:?}"
                );
            }
        }
    }

    #[test]
    fn large_random_trees_keep_their_invariants() {
        // Degree 1 makes chains whose only leaf is often unhealthy: the fallback at scale.
        let mut spilled = 0;
        for (cycles, keep, degree, seed, slack) in [
            (false, false, 3, 1, 0),
            (false, true, 2, 2, 0),
            (true, true, 3, 3, 0),
            (true, false, 1, 4, 1),
            (false, true, 1, 5, 1),
        ] {
            let (rec, sick) = large(cycles, seed);
            let is_sick = |i: u32| sick[i as usize];
            let opts = Options {
                degree,
                keep_recorded: keep,
                unhealthy: &is_sick,
            };
            let t = place(rec.len() - 1, &opts, table(&rec));
            check_invariants(&t, &rec, &sick, &opts, slack);
            if slack > 0 {
                spilled += t
                    .children
                    .iter()
                    .filter(|c| c.len() > degree as usize && c.len() <= degree as usize + 1)
                    .count();
            }
            if cycles {
                continue;
            }
            // Without cycles nobody with a healthy recorded parent that keeps it moves.
            let mut kept = vec![0usize; rec.len()];
            for c in 1..rec.len() {
                let Some(p) = rec[c].filter(|&p| (p as usize) < rec.len()) else {
                    continue;
                };
                if sick[p as usize] {
                    assert_ne!(t.parent[c], Some(p));
                    continue;
                }
                if keep || kept[p as usize] < degree as usize {
                    kept[p as usize] += 1;
                    assert_eq!(t.parent[c], Some(p), "host {c} moved");
                }
            }
        }
        assert!(spilled > 0, "the degree-1 cases exercise the fallback");
    }
}
