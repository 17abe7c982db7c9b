//! The executor: runs a plan's operations against a backend, in dependency order and in
//! parallel, and records each finished one in state before reporting it.
//!
//! A coordinator (the calling thread) owns the state and the output; worker threads run
//! backend operations and send results back over a channel. An operation starts the moment
//! the operations it waits for are done (no level barriers); among ready ones the one with
//! the longest chain of operations after it goes first, within a global and a per-host
//! limit. A failed operation is reported once and everything that waits on it is skipped;
//! independent branches run to completion.

pub mod limits;
pub mod order;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

pub use limits::{Limits, Parallelism};
pub use order::Schedule;
use order::{skip_after, Ready};

use crate::backend::{Backend, BackendError, Observed, Target};
use crate::plan::{OpGraph, OpKind, Plan};
use crate::resource::{Addr, Desired};
use crate::state::journal::GroupCommit;
use crate::state::{Recorded, State, StateError, Status, Store};

/// How often the coordinator wakes with nothing to do, to notice interrupts and let a live
/// display tick.
const TICK: Duration = Duration::from_millis(100);

/// Interrupt requests (Ctrl-C), raised from a signal handler thread. The first stops new
/// operations and lets running ones finish; the second stops waiting for them.
#[derive(Debug, Default)]
pub struct Interrupt(AtomicU32);

impl Interrupt {
    pub fn raise(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    pub fn count(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

/// What happened, as it happens.
#[derive(Debug)]
pub enum Progress<'a> {
    Started {
        addr: &'a Addr,
        kind: OpKind,
    },
    /// Done and durable in state.
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
    /// Will not run: it waits on `cause`, which failed.
    Skipped {
        addr: &'a Addr,
        kind: OpKind,
        cause: &'a Addr,
    },
    /// An interrupt was received; `hard` when it was the second.
    Interrupted {
        hard: bool,
        running: usize,
    },
    /// A running operation tells how far it is (an import's bytes).
    Advanced {
        addr: &'a Addr,
        kind: OpKind,
        done: u64,
        total: u64,
    },
    /// Nothing happened for a while.
    Tick,
    /// The executor is about to wait for news: a moment to flush buffered output.
    Idle,
}

/// How a run was cut short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Nothing new started; running operations finished and were recorded.
    Graceful,
    /// Running operations were abandoned: whatever they made is swept or adopted next time.
    Hard,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub created: usize,
    pub updated: usize,
    pub deleted: usize,
    /// Creates that replaced an existing resource.
    pub replaced: usize,
    pub failed: Vec<(Addr, OpKind, String)>,
    pub skipped: Vec<(Addr, OpKind)>,
    pub interrupted: Option<Stop>,
    /// Operations that never started because of an interrupt.
    pub not_started: usize,
    /// Operations still running when a hard interrupt stopped the wait.
    pub abandoned: Vec<(Addr, OpKind)>,
    pub wall: Duration,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.skipped.is_empty() && self.interrupted.is_none()
    }
}

struct Job {
    op: u32,
    kind: OpKind,
    addr: Addr,
    desired: Desired,
    /// What is recorded (update).
    before: Option<Desired>,
    /// Dependencies' observations (create, update).
    deps: Vec<(Addr, Observed)>,
    /// The resource's own, as recorded (update, delete).
    observed: Observed,
}

enum Msg {
    Done {
        op: u32,
        elapsed: Duration,
        result: Result<Observed, BackendError>,
    },
    /// A running operation's progress: bytes done of bytes in all.
    Progress {
        op: u32,
        done: u64,
        total: u64,
    },
    /// Journal lines up to this sequence number are on disk.
    Durable(u64),
    JournalFailed(std::io::Error),
}

/// What the coordinator knows of each operation's progress.
struct Tracker {
    /// Per operation: how many operations it still waits for.
    waiting: Vec<u32>,
    skipped: Vec<bool>,
    ready: Ready,
    outcome: Outcome,
    /// Hosts found unreachable in this run, with the operation whose failure reported it:
    /// their other operations are skipped, not failed again.
    down: HashMap<String, u32>,
}

/// A finished operation waiting for its journal line to be durable.
struct Settling {
    seq: u64,
    op: u32,
    elapsed: Duration,
    error: Option<BackendError>,
}

/// Runs `plan` against `backend`, recording into `state` as it goes: each completed operation
/// is appended to the store's journal and made durable before it is reported or anything is
/// built on it; the whole state is written once at the end. `plan` must have
/// been checked against `state`, and `state` settled (no leftover journal).
pub fn run(
    plan: &Plan,
    state: &mut State,
    store: &dyn Store,
    backend: Arc<dyn Backend>,
    limits: Limits,
    interrupt: &Interrupt,
    report: &mut dyn FnMut(Progress<'_>),
) -> Result<Outcome, StateError> {
    let start = Instant::now();
    let graph = OpGraph::build(plan);
    let n = graph.ops.len();
    let waiting: Vec<u32> = graph.before.iter().map(|b| b.len() as u32).collect();
    let after = crate::dag::reversed(&graph.before);
    let weight: Vec<u64> = graph
        .ops
        .iter()
        .map(|op| {
            let kind = plan.changes[op.change as usize].addr.kind;
            // At least 1: with no estimate, the number of operations decides.
            (backend.estimate(kind, op.kind).as_micros() as u64).max(1)
        })
        .collect();
    let mut t = Tracker {
        ready: Ready::new(limits.schedule, &graph.before, &after, &weight),
        waiting,
        skipped: vec![false; n],
        outcome: Outcome::default(),
        down: HashMap::default(),
    };
    drop(weight);
    for i in (0..n as u32).filter(|&i| t.waiting[i as usize] == 0) {
        t.ready.push(i);
    }
    state.placement = plan.placement.clone();
    let journal = store.begin(state)?;
    let journal_path = journal.place();
    let codec = store.codec().clone();

    let (tx, rx) = mpsc::channel::<Msg>();
    let durable_tx = tx.clone();
    let commit = GroupCommit::start(journal, move |r| {
        let _ = durable_tx.send(match r {
            Ok(seq) => Msg::Durable(seq),
            Err(e) => Msg::JournalFailed(e),
        });
    });
    let workers = limits.parallelism.max(1).min(n.max(1));
    let jobs = spawn_workers(workers, &backend, &tx);
    drop(tx);

    // Per host, ready operations waiting for a slot there, best first.
    let mut parked: HashMap<&str, VecDeque<u32>> = HashMap::default();
    let mut running_on: HashMap<&str, usize> = HashMap::default();
    let mut running: HashSet<u32> = HashSet::default();
    let mut settling: VecDeque<Settling> = VecDeque::new();
    let (mut queued, mut durable) = (0u64, 0u64);
    let mut line = Vec::with_capacity(512);
    let mut seen_interrupts = 0;
    let mut starting = true;
    let mut journal_error = None;

    loop {
        let interrupts = interrupt.count();
        if interrupts > seen_interrupts {
            seen_interrupts = interrupts;
            starting = false;
            let hard = interrupts >= 2;
            t.outcome.interrupted = Some(if hard { Stop::Hard } else { Stop::Graceful });
            // Finished but not yet durable counts as running: it is still to be reported.
            report(Progress::Interrupted {
                hard,
                running: running.len() + if hard { 0 } else { settling.len() },
            });
            if hard {
                break;
            }
        }
        while starting && running.len() < workers {
            let Some(i) = t.ready.pop() else { break };
            let op = graph.ops[i as usize];
            let change = &plan.changes[op.change as usize];
            let host: &str = &change.addr.host;
            if let Some(&first) = t.down.get(host) {
                // Its host did not answer: this and what waits on it are skipped, and so is
                // everything parked for that host.
                let mut gone = vec![i];
                gone.extend(parked.remove(host).unwrap_or_default());
                for j in gone {
                    t.skip(j, first, plan, &graph, &after, report);
                }
                continue;
            }
            let on_host = running_on.entry(host).or_default();
            if *on_host >= limits.per_host.max(1) {
                parked.entry(host).or_default().push_back(i);
                continue;
            }
            *on_host += 1;
            running.insert(i);
            let dep_observations = || {
                change
                    .deps
                    .iter()
                    .map(|d| {
                        let o = state.get(d).map(|r| r.observed.clone()).unwrap_or_default();
                        (d.clone(), o)
                    })
                    .collect()
            };
            // What state records of it (update, delete; creates do not look it up).
            let rec = || state.get(&change.addr);
            let recorded_desired = || {
                change
                    .before
                    .clone()
                    .or_else(|| rec().map(|r| r.desired.clone()))
            };
            let recorded_observed = || rec().map(|r| r.observed.clone()).unwrap_or_default();
            let job = match op.kind {
                OpKind::Create => Job {
                    op: i,
                    kind: op.kind,
                    addr: change.addr.clone(),
                    desired: change
                        .after
                        .clone()
                        .expect("creates have desired attributes"),
                    before: None,
                    deps: dep_observations(),
                    observed: Observed::new(),
                },
                OpKind::Update => Job {
                    op: i,
                    kind: op.kind,
                    addr: change.addr.clone(),
                    desired: change
                        .after
                        .clone()
                        .expect("updates have desired attributes"),
                    before: recorded_desired(),
                    deps: dep_observations(),
                    observed: recorded_observed(),
                },
                OpKind::Delete => Job {
                    op: i,
                    kind: op.kind,
                    addr: change.addr.clone(),
                    desired: recorded_desired().expect("deletes have recorded attributes"),
                    before: None,
                    deps: Vec::new(),
                    observed: recorded_observed(),
                },
            };
            report(Progress::Started {
                addr: &change.addr,
                kind: op.kind,
            });
            jobs.send(job)
                .expect("workers outlive the coordinator's sends");
        }
        if running.is_empty() && settling.is_empty() {
            break;
        }
        let msg = match rx.try_recv() {
            Ok(m) => Ok(m),
            Err(_) => {
                report(Progress::Idle);
                rx.recv_timeout(TICK)
            }
        };
        let msg = match msg {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => {
                report(Progress::Tick);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                unreachable!("the coordinator holds the journal's sender")
            }
        };
        match msg {
            Msg::Done {
                op: i,
                elapsed,
                result,
            } => {
                running.remove(&i);
                let op = graph.ops[i as usize];
                let change = &plan.changes[op.change as usize];
                let host: &str = &change.addr.host;
                *running_on.get_mut(host).expect("counted at start") -= 1;
                // One slot freed: one parked operation may take it (re-queuing them all would
                // cost O(parked) per finish).
                if let Some(j) = parked.get_mut(host).and_then(VecDeque::pop_front) {
                    t.ready.push(j);
                }
                line.clear();
                let error = match (op.kind, result) {
                    (OpKind::Create, result) => {
                        let (observed, status, error) = match result {
                            Ok(o) => (o, Status::Ready, None),
                            // Whatever part of it exists is known to state, and replaced next.
                            Err(e) => (Observed::new(), Status::Tainted, Some(e)),
                        };
                        let r = Recorded {
                            addr: change.addr.clone(),
                            desired: change.after.clone().expect("creates have attributes"),
                            observed,
                            deps: change.deps.clone(),
                            status,
                        };
                        if let Err(m) = codec.upsert_line(&state.cluster, &r, &mut line) {
                            journal_error.get_or_insert(std::io::Error::other(m));
                        }
                        state.upsert(r);
                        error
                    }
                    (OpKind::Update, Ok(observed)) => {
                        let r = Recorded {
                            addr: change.addr.clone(),
                            desired: change.after.clone().expect("updates have attributes"),
                            observed,
                            deps: change.deps.clone(),
                            status: Status::Ready,
                        };
                        if let Err(m) = codec.upsert_line(&state.cluster, &r, &mut line) {
                            journal_error.get_or_insert(std::io::Error::other(m));
                        }
                        state.upsert(r);
                        None
                    }
                    // The record stays as it was: the next plan updates it again (updates
                    // are safe to repeat from any point).
                    (OpKind::Update, Err(e)) => Some(e),
                    (OpKind::Delete, Ok(_)) => {
                        crate::state::journal::remove_line(&change.addr, &mut line);
                        state.remove(&change.addr);
                        None
                    }
                    (OpKind::Delete, Err(e)) => Some(e),
                };
                if journal_error.is_some() {
                    // Not recordable, so not reported done: the apply stops here.
                    break;
                }
                if !line.is_empty() {
                    queued = commit.push(&line);
                }
                settling.push_back(Settling {
                    seq: queued,
                    op: i,
                    elapsed,
                    error,
                });
            }
            Msg::Progress { op, done, total } => {
                if running.contains(&op) {
                    let o = graph.ops[op as usize];
                    report(Progress::Advanced {
                        addr: &plan.changes[o.change as usize].addr,
                        kind: o.kind,
                        done,
                        total,
                    });
                }
            }
            Msg::Durable(seq) => durable = seq,
            Msg::JournalFailed(e) => {
                journal_error = Some(e);
                break;
            }
        }
        while settling.front().is_some_and(|s| s.seq <= durable) {
            let s = settling.pop_front().expect("checked");
            t.settle(s, plan, &graph, &after, report);
        }
    }
    drop(jobs);
    let journal = commit.finish();
    if let Some(source) = journal_error {
        return Err(StateError::Write {
            path: journal_path,
            source,
        });
    }
    // Everything queued is durable now.
    while let Some(s) = settling.pop_front() {
        t.settle(s, plan, &graph, &after, report);
    }
    for &i in &running {
        let op = graph.ops[i as usize];
        t.outcome
            .abandoned
            .push((plan.changes[op.change as usize].addr.clone(), op.kind));
    }
    if t.outcome.interrupted.is_some() {
        let done =
            t.outcome.created + t.outcome.updated + t.outcome.deleted + t.outcome.failed.len();
        t.outcome.not_started = n - done - t.outcome.skipped.len() - t.outcome.abandoned.len();
    }
    journal.close(state)?;
    t.outcome.wall = start.elapsed();
    Ok(t.outcome)
}

impl Tracker {
    /// Counts a finished operation whose record is durable, reports it, and releases (or
    /// skips) what waits on it.
    fn settle(
        &mut self,
        s: Settling,
        plan: &Plan,
        graph: &OpGraph,
        after: &[Vec<u32>],
        report: &mut dyn FnMut(Progress<'_>),
    ) {
        if let Some(h) = s.error.as_ref().and_then(|e| e.unreachable_host.as_ref()) {
            if let Some(&first) = self.down.get(h) {
                // That host's failure is reported already.
                self.skip(s.op, first, plan, graph, after, report);
                return;
            }
            self.down.insert(h.clone(), s.op);
        }
        let Tracker {
            waiting,
            skipped,
            ready,
            outcome,
            down: _,
        } = self;
        let i = s.op as usize;
        let op = graph.ops[i];
        let change = &plan.changes[op.change as usize];
        ready.settled(s.op);
        match s.error {
            None => {
                match op.kind {
                    OpKind::Create => {
                        outcome.created += 1;
                        if change.before.is_some() {
                            outcome.replaced += 1;
                        }
                    }
                    OpKind::Update => outcome.updated += 1,
                    OpKind::Delete => outcome.deleted += 1,
                }
                report(Progress::Finished {
                    addr: &change.addr,
                    kind: op.kind,
                    elapsed: s.elapsed,
                });
                for &j in &after[i] {
                    waiting[j as usize] -= 1;
                    if waiting[j as usize] == 0 && !skipped[j as usize] {
                        ready.push(j);
                    }
                }
            }
            Some(error) => {
                let newly = skip_after(s.op, after, skipped);
                report(Progress::Failed {
                    addr: &change.addr,
                    kind: op.kind,
                    elapsed: s.elapsed,
                    error: &error,
                    skipped: newly.len(),
                });
                report_skips(&newly, &change.addr, ready, outcome, plan, graph, report);
                outcome
                    .failed
                    .push((change.addr.clone(), op.kind, error.to_string()));
            }
        }
    }
}

impl Tracker {
    /// Skips operation `i` and everything that waits on it, because operation `cause` failed.
    fn skip(
        &mut self,
        i: u32,
        cause: u32,
        plan: &Plan,
        graph: &OpGraph,
        after: &[Vec<u32>],
        report: &mut dyn FnMut(Progress<'_>),
    ) {
        let cause = &plan.changes[graph.ops[cause as usize].change as usize].addr;
        self.skipped[i as usize] = true;
        let mut all = vec![i];
        all.extend(skip_after(i, after, &mut self.skipped));
        report_skips(
            &all,
            cause,
            &mut self.ready,
            &mut self.outcome,
            plan,
            graph,
            report,
        );
    }
}

/// Reports operations that will not run because `cause` failed, and counts them.
fn report_skips(
    ops: &[u32],
    cause: &Addr,
    ready: &mut Ready,
    outcome: &mut Outcome,
    plan: &Plan,
    graph: &OpGraph,
    report: &mut dyn FnMut(Progress<'_>),
) {
    for &j in ops {
        ready.settled(j);
        let o = graph.ops[j as usize];
        let addr = &plan.changes[o.change as usize].addr;
        report(Progress::Skipped {
            addr,
            kind: o.kind,
            cause,
        });
        outcome.skipped.push((addr.clone(), o.kind));
    }
}

/// Worker threads that run jobs until the job channel closes. They are not joined: after a
/// hard interrupt the coordinator stops waiting for them, and the process exits under them.
fn spawn_workers(
    count: usize,
    backend: &Arc<dyn Backend>,
    done: &mpsc::Sender<Msg>,
) -> mpsc::Sender<Job> {
    let (job_tx, job_rx) = mpsc::channel::<Job>();
    let job_rx = Arc::new(Mutex::new(job_rx));
    for w in 0..count {
        let rx = Arc::clone(&job_rx);
        let tx = done.clone();
        let backend = Arc::clone(backend);
        std::thread::Builder::new()
            .name(format!("worker-{w}"))
            .spawn(move || loop {
                let job = match rx.lock().expect("job queue").recv() {
                    Ok(j) => j,
                    Err(_) => return,
                };
                let t0 = Instant::now();
                let op = job.op;
                let progress = |done: u64, total: u64| {
                    let _ = tx.send(Msg::Progress { op, done, total });
                };
                let target = Target {
                    progress: Some(&progress),
                    ..Target::new(&job.addr, &job.desired)
                };
                // A panic in a backend is that operation's failure, not a run that never ends.
                let result =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match job.kind {
                        OpKind::Create => backend.create(target, &job.deps),
                        OpKind::Update => backend.update(
                            target,
                            job.before.as_ref().unwrap_or(&job.desired),
                            &job.observed,
                            &job.deps,
                        ),
                        OpKind::Delete => backend
                            .delete(target, &job.observed)
                            .map(|()| Observed::new()),
                    }))
                    .unwrap_or_else(|_| {
                        Err(BackendError::new(format!(
                            "internal error: the backend panicked on {}",
                            job.addr
                        )))
                    });
                let msg = Msg::Done {
                    op: job.op,
                    elapsed: t0.elapsed(),
                    result,
                };
                if tx.send(msg).is_err() {
                    return;
                }
            })
            .expect("threads can be spawned");
    }
    job_tx
}
