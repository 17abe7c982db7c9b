//! Tree placement: which host each host pulls an image from.
//!
//! Per image, the hosts form a tree rooted at the source with at most `degree` children per
//! node. A fresh tree is a d-ary heap in spec order (as in the VMThunder prototype). Later
//! placements are stable: a recorded parent is kept while it is still in the tree and has
//! room; hosts without a valid parent (new ones, children of removed ones) fill the shallowest
//! free slots and bring their recorded subtrees with them. O(n log n) in the number of hosts.

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

/// Places `members` under `source`. `recorded(i)` gives the recorded parent of member node `i`
/// (as a node index), if any.
pub fn place(members: usize, degree: u32, recorded: impl Fn(u32) -> Option<u32>) -> Tree {
    let n = members + 1;
    let degree = degree.max(1) as usize;
    let mut parent: Vec<Option<u32>> = vec![None; n];
    let mut children: Vec<Vec<u32>> = vec![Vec::new(); n];

    // Keep valid recorded parents, at most `degree` children each, earlier hosts first.
    for i in 1..n as u32 {
        if let Some(p) = recorded(i).filter(|&p| p != i && (p as usize) < n) {
            if children[p as usize].len() < degree {
                parent[i as usize] = Some(p);
                children[p as usize].push(i);
            }
        }
    }

    let mut depth = vec![u32::MAX; n];
    let mut heap: BinaryHeap<Reverse<(u32, u64, u32)>> = BinaryHeap::new();
    let mut seq = 0u64;
    // Walks the subtree under `root` (already attached at `depth[root]`), offering free slots.
    let mut attach_subtree =
        |root: u32,
         depth: &mut Vec<u32>,
         children: &Vec<Vec<u32>>,
         heap: &mut BinaryHeap<Reverse<(u32, u64, u32)>>| {
            let mut queue = VecDeque::from([root]);
            while let Some(v) = queue.pop_front() {
                if children[v as usize].len() < degree {
                    heap.push(Reverse((depth[v as usize], seq, v)));
                    seq += 1;
                }
                for &c in &children[v as usize] {
                    depth[c as usize] = depth[v as usize] + 1;
                    queue.push_back(c);
                }
            }
        };
    depth[0] = 0;
    attach_subtree(0, &mut depth, &children, &mut heap);

    // Hosts without a parent, in spec order; then any left unreached (a recorded cycle).
    let mut pending: Vec<u32> = (1..n as u32)
        .filter(|&i| parent[i as usize].is_none())
        .collect();
    loop {
        for &r in &pending {
            let Reverse((d, s, slot)) = heap.pop().expect("a tree always has a free slot");
            parent[r as usize] = Some(slot);
            children[slot as usize].push(r);
            if children[slot as usize].len() < degree {
                heap.push(Reverse((d, s, slot)));
            }
            depth[r as usize] = d + 1;
            attach_subtree(r, &mut depth, &children, &mut heap);
        }
        // A cycle in recorded parents never reaches the source: cut it at its first member.
        let Some(stray) = (1..n as u32).find(|&i| depth[i as usize] == u32::MAX) else {
            break;
        };
        let old = parent[stray as usize]
            .take()
            .expect("unreached nodes have a parent");
        children[old as usize].retain(|&c| c != stray);
        pending = vec![stray];
    }

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
        place(members, degree, |_| None)
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
        let t = place(3, 2, rec);
        assert_eq!(t.parent, [None, Some(0), Some(1), Some(1)]);
        // A new host 4 takes the shallowest free slot: the source's second one.
        let t = place(4, 2, |i| {
            [None, Some(0), Some(1), Some(1), None][i as usize]
        });
        assert_eq!(t.parent[4], Some(0));
    }

    #[test]
    fn removed_host_reparents_only_its_children() {
        // Old tree: 0 -> {1, 2}, 1 -> {3, 4}, 3 -> {5}. Host 1 is removed; renumbered members:
        // old 2->1, 3->2, 4->3, 5->4.
        let rec = |i: u32| [None, Some(0), None, None, Some(2)][i as usize];
        let t = place(4, 2, rec);
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
        let t = place(4, 1, |i| {
            [None, Some(0), Some(0), Some(0), Some(0)][i as usize]
        });
        assert!(t.children.iter().all(|c| c.len() <= 1));
        assert_eq!(t.order.len(), 5);
        let t = place(3, 2, |i| [None, Some(2), Some(1), Some(0)][i as usize]);
        assert_eq!(t.order.len(), 4);
        assert!(t.children.iter().all(|c| c.len() <= 2));
        assert_eq!(t.parent[3], Some(0));
    }
}
