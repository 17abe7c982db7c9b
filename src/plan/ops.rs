//! The operations apply runs for a plan, and the order constraints between them.
//!
//! Built from the plan alone (never re-derived from the spec): a create or an update waits for
//! the creates and updates of what it is built on; a delete waits for the deletes of
//! everything recorded as built on it, and for the updates that move off it; a replacement
//! deletes before it creates.

use rustc_hash::FxHashMap as HashMap;

use super::{Action, Plan};
use crate::dag;
use crate::resource::Addr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    Create,
    Update,
    Delete,
}

impl OpKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Create => "create",
            OpKind::Update => "update",
            OpKind::Delete => "delete",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Op {
    pub kind: OpKind,
    /// Index into `Plan::changes`.
    pub change: u32,
}

#[derive(Debug)]
pub struct OpGraph {
    pub ops: Vec<Op>,
    /// `before[i]`: operations that must finish before `ops[i]` starts.
    pub before: Vec<Vec<u32>>,
}

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("internal error: the plan's operations form a cycle through {}", .0.join(", "))]
    Cycle(Vec<String>),
}

/// The operations among what change `start` is built on: directly, or through changes that
/// run none (memoized in `memo`, iteratively: chains may be as deep as the tree).
fn upstream_ops(
    plan: &Plan,
    index: &HashMap<&Addr, usize>,
    op_of: &HashMap<&Addr, u32>,
    memo: &mut HashMap<usize, Vec<u32>>,
    start: usize,
) -> Vec<u32> {
    let passive = |d: &Addr| -> Option<usize> {
        if op_of.contains_key(d) {
            return None;
        }
        index
            .get(d)
            .copied()
            .filter(|&j| plan.changes[j].action == Action::NoOp)
    };
    let mut stack = vec![(start, false)];
    while let Some((i, expanded)) = stack.pop() {
        if memo.contains_key(&i) {
            continue;
        }
        if !expanded {
            stack.push((i, true));
            for d in &plan.changes[i].deps {
                if let Some(j) = passive(d).filter(|j| !memo.contains_key(j)) {
                    stack.push((j, false));
                }
            }
            continue;
        }
        let mut out = Vec::new();
        for d in &plan.changes[i].deps {
            if let Some(&op) = op_of.get(d) {
                out.push(op);
            } else if let Some(j) = passive(d) {
                out.extend(memo.get(&j).into_iter().flatten().copied());
            }
        }
        out.sort_unstable();
        out.dedup();
        memo.insert(i, out);
    }
    memo.get(&start).cloned().unwrap_or_default()
}

impl OpGraph {
    pub fn build(plan: &Plan) -> OpGraph {
        let mut ops = Vec::new();
        let mut create_of: HashMap<&Addr, u32> = HashMap::default();
        let mut delete_of: HashMap<&Addr, u32> = HashMap::default();
        for (i, c) in plan.changes.iter().enumerate() {
            if matches!(c.action, Action::Delete | Action::Replace) {
                delete_of.insert(&c.addr, ops.len() as u32);
                ops.push(Op {
                    kind: OpKind::Delete,
                    change: i as u32,
                });
            }
            if matches!(c.action, Action::Create | Action::Replace) {
                create_of.insert(&c.addr, ops.len() as u32);
                ops.push(Op {
                    kind: OpKind::Create,
                    change: i as u32,
                });
            }
            if c.action == Action::Update {
                // Whatever waits for its create waits for its update.
                create_of.insert(&c.addr, ops.len() as u32);
                ops.push(Op {
                    kind: OpKind::Update,
                    change: i as u32,
                });
            }
        }
        let mut before: Vec<Vec<u32>> = vec![Vec::new(); ops.len()];
        // Only plans with updates need the index (most plans have none).
        let has_updates = plan.changes.iter().any(|c| c.action == Action::Update);
        let index: HashMap<&Addr, usize> = plan
            .changes
            .iter()
            .enumerate()
            .filter(|_| has_updates)
            .map(|(i, c)| (&c.addr, i))
            .collect();
        let mut upstream: HashMap<usize, Vec<u32>> = HashMap::default();
        for (i, c) in plan.changes.iter().enumerate() {
            if c.action == Action::Update {
                // An update waits for every operation above it, also through objects that
                // stay as they are: a guest resumes only after the relay above its own is
                // repaired.
                let ops = upstream_ops(plan, &index, &create_of, &mut upstream, i);
                before[create_of[&c.addr] as usize].extend(ops);
            }
        }
        for c in &plan.changes {
            if let Some(&create) = create_of
                .get(&c.addr)
                .filter(|_| c.action != Action::Update)
            {
                if let Some(&del) = delete_of.get(&c.addr) {
                    before[create as usize].push(del);
                }
                for d in &c.deps {
                    if let Some(&dc) = create_of.get(d) {
                        before[create as usize].push(dc);
                    }
                }
            }
            if c.action == Action::Update {
                // What it moves off is deleted only once it has moved.
                let update = create_of[&c.addr];
                for d in c.prior_deps.iter().filter(|d| !c.deps.contains(d)) {
                    if let Some(&dd) = delete_of.get(d) {
                        before[dd as usize].push(update);
                    }
                }
            }
            if delete_of.contains_key(&c.addr) {
                // Whatever this was built on is deleted only after this is gone.
                for d in &c.prior_deps {
                    if let Some(&dd) = delete_of.get(d) {
                        before[dd as usize].push(delete_of[&c.addr]);
                    }
                }
            }
        }
        OpGraph { ops, before }
    }

    /// A valid sequential order of the operations.
    pub fn order(&self, plan: &Plan) -> Result<Vec<Op>, OpsError> {
        dag::topo_order(&self.before)
            .map(|o| o.into_iter().map(|i| self.ops[i as usize]).collect())
            .map_err(|cycle| {
                OpsError::Cycle(
                    cycle
                        .0
                        .into_iter()
                        .map(|i| {
                            let op = self.ops[i];
                            format!(
                                "{} {}",
                                op.kind.as_str(),
                                plan.changes[op.change as usize].addr
                            )
                        })
                        .collect(),
                )
            })
    }
}
