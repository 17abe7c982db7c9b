//! The executor: runs a plan's operations against a backend, in dependency order and in
//! parallel, and records each finished one in state before reporting it.
//!
//! A coordinator (the calling thread) owns the state and the output; worker threads run
//! backend operations and send results back over a channel. An operation starts the moment
//! the operations it waits for are done (no level barriers); among ready ones the one with
//! the longest chain of operations after it goes first, within a global and a per-host
//! limit. A failed operation is reported once and everything that waits on it is skipped;
//! independent branches run to completion.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap as HashMap;

use crate::backend::{Backend, BackendError, Observed, Target};
use crate::plan::{OpGraph, OpKind, Plan};
use crate::resource::{Addr, Desired};
use crate::state::{Recorded, State, StateError, Status};

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Operations running at once, overall.
    pub parallelism: usize,
    /// Operations running at once on one host.
    pub per_host: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            parallelism: 10,
            per_host: 4,
        }
    }
}

/// What happened, as it happens.
#[derive(Debug)]
pub enum Progress<'a> {
    Started {
        addr: &'a Addr,
        kind: OpKind,
    },
    Finished {
        addr: &'a Addr,
        kind: OpKind,
        elapsed: Duration,
    },
    Failed {
        addr: &'a Addr,
        kind: OpKind,
        elapsed: Duration,
        error: &'a BackendError,
        /// Operations skipped because they wait on this one.
        skipped: usize,
    },
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub created: usize,
    pub deleted: usize,
    /// Creates that replaced an existing resource.
    pub replaced: usize,
    pub failed: Vec<(Addr, OpKind, String)>,
    pub skipped: Vec<(Addr, OpKind)>,
    pub wall: Duration,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.skipped.is_empty()
    }
}

struct Job {
    op: u32,
    kind: OpKind,
    addr: Addr,
    desired: Desired,
    /// Dependencies' observations (create) or the resource's own (delete).
    deps: Vec<(Addr, Observed)>,
    observed: Observed,
}

struct Done {
    op: u32,
    elapsed: Duration,
    result: Result<Observed, BackendError>,
}

/// Runs `plan` against `backend`, recording into `state` (persisted to `state_path` after
/// every finished operation). `plan` must have been checked against `state`.
pub fn run(
    plan: &Plan,
    state: &mut State,
    state_path: &Path,
    backend: &dyn Backend,
    limits: Limits,
    report: &mut dyn FnMut(Progress<'_>),
) -> Result<Outcome, StateError> {
    let start = Instant::now();
    let graph = OpGraph::build(plan);
    let n = graph.ops.len();
    let mut waiting: Vec<u32> = graph.before.iter().map(|b| b.len() as u32).collect();
    let mut after: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (i, b) in graph.before.iter().enumerate() {
        for &p in b {
            after[p as usize].push(i as u32);
        }
    }
    let rank = ranks(&after);
    state.placement = plan.placement.clone();

    let mut outcome = Outcome::default();
    let mut ready: BinaryHeap<(u32, Reverse<u32>)> = (0..n as u32)
        .filter(|&i| waiting[i as usize] == 0)
        .map(|i| (rank[i as usize], Reverse(i)))
        .collect();
    let mut parked: HashMap<&str, Vec<u32>> = HashMap::default();
    let mut running_on: HashMap<&str, usize> = HashMap::default();
    let mut skipped = vec![false; n];
    let mut running = 0usize;
    let mut started_at: Vec<Option<Instant>> = vec![None; n];

    let workers = limits.parallelism.max(1).min(n.max(1));
    let (job_tx, job_rx) = mpsc::channel::<Job>();
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (done_tx, done_rx) = mpsc::channel::<Done>();

    std::thread::scope(|scope| -> Result<(), StateError> {
        for _ in 0..workers {
            let rx = Arc::clone(&job_rx);
            let tx = done_tx.clone();
            scope.spawn(move || loop {
                let job = match rx.lock().expect("job queue").recv() {
                    Ok(j) => j,
                    Err(_) => return,
                };
                let t0 = Instant::now();
                let target = Target {
                    addr: &job.addr,
                    desired: &job.desired,
                };
                let result = match job.kind {
                    OpKind::Create => backend.create(target, &job.deps),
                    OpKind::Delete => backend
                        .delete(target, &job.observed)
                        .map(|()| Observed::new()),
                };
                if tx
                    .send(Done {
                        op: job.op,
                        elapsed: t0.elapsed(),
                        result,
                    })
                    .is_err()
                {
                    return;
                }
            });
        }
        drop(done_tx);

        loop {
            // Start what may start.
            while running < workers {
                let Some((_, Reverse(i))) = ready.pop() else {
                    break;
                };
                let op = graph.ops[i as usize];
                let change = &plan.changes[op.change as usize];
                let host: &str = &change.addr.host;
                let on_host = running_on.entry(host).or_default();
                if *on_host >= limits.per_host.max(1) {
                    parked.entry(host).or_default().push(i);
                    continue;
                }
                *on_host += 1;
                running += 1;
                started_at[i as usize] = Some(Instant::now());
                let (desired, deps, observed) = match op.kind {
                    OpKind::Create => (
                        change
                            .after
                            .clone()
                            .expect("creates have desired attributes"),
                        change
                            .deps
                            .iter()
                            .map(|d| {
                                let o =
                                    state.get(d).map(|r| r.observed.clone()).unwrap_or_default();
                                (d.clone(), o)
                            })
                            .collect(),
                        Observed::new(),
                    ),
                    OpKind::Delete => {
                        let rec = state.get(&change.addr);
                        (
                            change
                                .before
                                .clone()
                                .or_else(|| rec.map(|r| r.desired.clone()))
                                .expect("deletes have recorded attributes"),
                            Vec::new(),
                            rec.map(|r| r.observed.clone()).unwrap_or_default(),
                        )
                    }
                };
                report(Progress::Started {
                    addr: &change.addr,
                    kind: op.kind,
                });
                job_tx
                    .send(Job {
                        op: i,
                        kind: op.kind,
                        addr: change.addr.clone(),
                        desired,
                        deps,
                        observed,
                    })
                    .expect("workers outlive the coordinator's sends");
            }
            if running == 0 {
                break;
            }
            let done = done_rx.recv().expect("a worker reports every job");
            running -= 1;
            let i = done.op as usize;
            let op = graph.ops[i];
            let change = &plan.changes[op.change as usize];
            let host: &str = &change.addr.host;
            *running_on.get_mut(host).expect("counted at start") -= 1;
            if let Some(p) = parked.remove(host) {
                ready.extend(p.into_iter().map(|j| (rank[j as usize], Reverse(j))));
            }
            match done.result {
                Ok(observed) => {
                    match op.kind {
                        OpKind::Create => {
                            state.upsert(Recorded {
                                addr: change.addr.clone(),
                                desired: change.after.clone().expect("creates have attributes"),
                                observed,
                                deps: change.deps.clone(),
                                status: Status::Ready,
                            });
                            outcome.created += 1;
                            if change.before.is_some() {
                                outcome.replaced += 1;
                            }
                        }
                        OpKind::Delete => {
                            state.remove(&change.addr);
                            outcome.deleted += 1;
                        }
                    }
                    state.persist(state_path)?;
                    report(Progress::Finished {
                        addr: &change.addr,
                        kind: op.kind,
                        elapsed: done.elapsed,
                    });
                    for &s in &after[i] {
                        waiting[s as usize] -= 1;
                        if waiting[s as usize] == 0 && !skipped[s as usize] {
                            ready.push((rank[s as usize], Reverse(s)));
                        }
                    }
                }
                Err(error) => {
                    if op.kind == OpKind::Create {
                        // Whatever part of it exists is known to state, and replaced next.
                        state.upsert(Recorded {
                            addr: change.addr.clone(),
                            desired: change.after.clone().expect("creates have attributes"),
                            observed: Observed::new(),
                            deps: change.deps.clone(),
                            status: Status::Tainted,
                        });
                        state.persist(state_path)?;
                    }
                    let newly = skip_after(i as u32, &after, &mut skipped);
                    for &s in &newly {
                        let o = graph.ops[s as usize];
                        outcome
                            .skipped
                            .push((plan.changes[o.change as usize].addr.clone(), o.kind));
                    }
                    report(Progress::Failed {
                        addr: &change.addr,
                        kind: op.kind,
                        elapsed: done.elapsed,
                        error: &error,
                        skipped: newly.len(),
                    });
                    outcome
                        .failed
                        .push((change.addr.clone(), op.kind, error.to_string()));
                }
            }
        }
        drop(job_tx);
        Ok(())
    })?;
    outcome.wall = start.elapsed();
    Ok(outcome)
}

/// Marks every operation that transitively waits on `failed` as skipped; returns the newly
/// marked ones.
fn skip_after(failed: u32, after: &[Vec<u32>], skipped: &mut [bool]) -> Vec<u32> {
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

/// Per operation, the number of operations on the longest chain that starts at it.
fn ranks(after: &[Vec<u32>]) -> Vec<u32> {
    // Ordering by the reversed edges puts every operation after all its successors.
    let order = crate::dag::topo_order(after).unwrap_or_else(|_| (0..after.len() as u32).collect());
    let mut rank = vec![1u32; after.len()];
    for &i in &order {
        let best = after[i as usize]
            .iter()
            .map(|&s| rank[s as usize])
            .max()
            .unwrap_or(0);
        rank[i as usize] = 1 + best;
    }
    rank
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_count_the_longest_chain_after_each_operation() {
        // 0 -> 1 -> 2, 0 -> 3
        let after = vec![vec![1, 3], vec![2], vec![], vec![]];
        assert_eq!(ranks(&after), vec![3, 2, 1, 1]);
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
}
