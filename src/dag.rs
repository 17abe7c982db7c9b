//! A generic dependency DAG over node indices: topological order and cycle reporting.
//!
//! Knows nothing about resources. Nodes are `0..n`; `before[v]` lists the nodes that must come
//! before `v`. Linear in nodes plus edges.

use petgraph::graph::{DiGraph, NodeIndex};

/// Nodes that form a cycle, in no particular order.
#[derive(Debug, PartialEq, Eq)]
pub struct Cycle(pub Vec<usize>);

/// The reverse edges: `after[d]` lists every node whose `before` names `d`, in node order.
pub fn reversed(before: &[Vec<u32>]) -> Vec<Vec<u32>> {
    let mut after: Vec<Vec<u32>> = vec![Vec::new(); before.len()];
    for (v, deps) in before.iter().enumerate() {
        for &d in deps {
            after[d as usize].push(v as u32);
        }
    }
    after
}

/// A topological order of `0..before.len()` where every node follows all of `before[v]`.
/// Among ready nodes the lower index goes first, so an already ordered input is unchanged.
pub fn topo_order(before: &[Vec<u32>]) -> Result<Vec<u32>, Cycle> {
    let n = before.len();
    let mut pending: Vec<u32> = before.iter().map(|b| b.len() as u32).collect();
    let after = reversed(before);
    let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<u32>> = (0..n as u32)
        .filter(|&v| pending[v as usize] == 0)
        .map(std::cmp::Reverse)
        .collect();
    let mut order = Vec::with_capacity(n);
    while let Some(std::cmp::Reverse(v)) = ready.pop() {
        order.push(v);
        for &w in &after[v as usize] {
            pending[w as usize] -= 1;
            if pending[w as usize] == 0 {
                ready.push(std::cmp::Reverse(w));
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    Err(find_cycle(before, &pending))
}

/// The members of one strongly connected component among the nodes left unordered.
fn find_cycle(before: &[Vec<u32>], pending: &[u32]) -> Cycle {
    let mut g: DiGraph<usize, ()> = DiGraph::new();
    let left: Vec<usize> = (0..before.len()).filter(|&v| pending[v] > 0).collect();
    let mut node_of = vec![None; before.len()];
    for &v in &left {
        node_of[v] = Some(g.add_node(v));
    }
    for &v in &left {
        for &d in &before[v] {
            if let (Some(a), Some(b)) = (node_of[v], node_of[d as usize]) {
                g.add_edge(a, b, ());
            }
        }
    }
    let scc = petgraph::algo::tarjan_scc(&g)
        .into_iter()
        .find(|c| c.len() > 1 || g.contains_edge(c[0], c[0]))
        .unwrap_or_default();
    let mut members: Vec<usize> = scc.into_iter().map(|i: NodeIndex| g[i]).collect();
    members.sort_unstable();
    Cycle(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_and_keeps_sorted_inputs() {
        assert_eq!(
            topo_order(&[vec![], vec![0], vec![0, 1]]).unwrap(),
            [0, 1, 2]
        );
        assert_eq!(topo_order(&[vec![2], vec![], vec![1]]).unwrap(), [1, 2, 0]);
    }

    #[test]
    fn reports_the_cycle_members() {
        // 0 <- 1 <- 2 <- 1 (1 and 2 form a cycle); 3 depends on the cycle.
        let err = topo_order(&[vec![], vec![0, 2], vec![1], vec![2]]).unwrap_err();
        assert_eq!(err, Cycle(vec![1, 2]));
        assert_eq!(topo_order(&[vec![0]]).unwrap_err(), Cycle(vec![0]));
    }
}
