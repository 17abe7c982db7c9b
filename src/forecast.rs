//! `plan --estimate`: how long applying a plan will take, and its critical path.
//!
//! Replays the executor's scheduling on the plan's operation graph with the model's durations
//! ([`crate::model`]): the same critical-path priority, at most `parallelism` operations at
//! once and `per_host` on one host. Event-driven, O(n log n) in operations.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt::Write as _;

use serde::Serialize;

use crate::apply::order::{Ready, Schedule};
use crate::apply::Limits;
use crate::model::{self, Model};
use crate::plan::{OpGraph, Plan};
use crate::resource::Kind;
use crate::spec::{Degree, Spec};

/// One operation on the critical path.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub address: String,
    pub action: &'static str,
    /// Seconds from the start of the apply.
    pub start: f64,
    pub seconds: f64,
    /// Seconds it was ready but waited for a free worker or a free slot on its host.
    pub queued: f64,
}

/// Per image: how the tree moves its working set.
#[derive(Clone, Debug, Serialize)]
pub struct Flow {
    pub image: String,
    pub degree: u32,
    pub depth: u32,
    pub working_set_bytes: u64,
    /// What the source sends: the working set once per child.
    pub source_sends_bytes: u64,
    /// Seconds until the slowest host has read the working set, all reading at once.
    pub read_seconds: f64,
    /// The least time any distribution over this tree needs for that read.
    pub read_lower_bound_seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Forecast {
    /// Seconds until every operation is done.
    pub seconds: f64,
    pub operations: usize,
    /// The degree in use, and whether "auto" chose it.
    pub degree: u32,
    pub auto: bool,
    pub link_rate: String,
    pub latency_ms: f64,
    pub parallelism: usize,
    pub per_host: usize,
    pub flows: Vec<Flow>,
    pub critical_path: Vec<Step>,
}

/// The forecast of applying `plan` (made from `spec`) under `limits`.
pub fn forecast(spec: &Spec, plan: &Plan, limits: Limits) -> Forecast {
    let model = Model::new(spec, Some(&plan.placement));
    let graph = OpGraph::build(plan);
    let n = graph.ops.len();
    let secs: Vec<f64> = graph
        .ops
        .iter()
        .map(|op| model.secs(&plan.changes[op.change as usize].addr, op.kind))
        .collect();
    let after = crate::dag::reversed(&graph.before);
    let weight: Vec<u64> = secs.iter().map(|s| ((s * 1e6) as u64).max(1)).collect();
    let mut ready = Ready::new(Schedule::CriticalPath, &graph.before, &after, &weight);
    let host_of = |i: u32| -> &str {
        &plan.changes[graph.ops[i as usize].change as usize]
            .addr
            .host
    };

    let mut waiting: Vec<u32> = graph.before.iter().map(|b| b.len() as u32).collect();
    let mut ready_at = vec![0.0f64; n];
    let mut start = vec![0.0f64; n];
    let mut finish = vec![0.0f64; n];
    for i in (0..n as u32).filter(|&i| waiting[i as usize] == 0) {
        ready.push(i);
    }
    let workers = limits.parallelism.max(1);
    let per_host = limits.per_host.max(1);
    let mut running: BinaryHeap<Reverse<(Ms, u32)>> = BinaryHeap::new();
    let mut on_host: HashMap<&str, usize> = HashMap::new();
    let mut parked: HashMap<&str, VecDeque<u32>> = HashMap::new();
    let mut now = 0.0f64;
    loop {
        while running.len() < workers {
            let Some(i) = ready.pop() else { break };
            let h = host_of(i);
            let busy = on_host.entry(h).or_default();
            if *busy >= per_host {
                parked.entry(h).or_default().push_back(i);
                continue;
            }
            *busy += 1;
            start[i as usize] = now;
            finish[i as usize] = now + secs[i as usize];
            running.push(Reverse((Ms(finish[i as usize]), i)));
        }
        let Some(Reverse((Ms(t), i))) = running.pop() else {
            break;
        };
        now = t;
        let h = host_of(i);
        *on_host.get_mut(h).expect("a running operation's host") -= 1;
        if let Some(q) = parked.get_mut(h) {
            while let Some(j) = q.pop_front() {
                ready.push(j);
            }
        }
        for &s in &after[i as usize] {
            waiting[s as usize] -= 1;
            ready_at[s as usize] = ready_at[s as usize].max(now);
            if waiting[s as usize] == 0 {
                ready.push(s);
            }
        }
    }
    let total = finish.iter().copied().fold(0.0, f64::max);

    // The critical path: back from the last operation to finish, through the predecessor that
    // finished last.
    let mut path = Vec::new();
    let mut at = (0..n).max_by(|&a, &b| finish[a].total_cmp(&finish[b]));
    while let Some(i) = at {
        let op = graph.ops[i];
        path.push(Step {
            address: plan.changes[op.change as usize].addr.to_string(),
            action: op.kind.as_str(),
            start: start[i],
            seconds: secs[i],
            queued: start[i] - ready_at[i],
        });
        at = graph.before[i]
            .iter()
            .map(|&p| p as usize)
            .max_by(|&a, &b| finish[a].total_cmp(&finish[b]));
    }
    path.reverse();

    let flows = model
        .trees()
        .iter()
        .map(|t| Flow {
            image: t.image.clone(),
            degree: model.degree(),
            depth: t.tree.depth.iter().copied().max().unwrap_or(0),
            working_set_bytes: t.working_set as u64,
            source_sends_bytes: (t.working_set as u64) * t.tree.children[0].len() as u64,
            read_seconds: t.reads.iter().copied().fold(0.0, f64::max),
            read_lower_bound_seconds: model::lower_bound(&t.tree, t.working_set, model.link()),
        })
        .collect();
    let e = &spec.estimate;
    Forecast {
        seconds: total,
        operations: n,
        degree: model.degree(),
        auto: spec.tree.degree == Degree::AUTO,
        link_rate: e.link_rate.to_string(),
        latency_ms: e.latency_ms,
        parallelism: workers,
        per_host,
        flows,
        critical_path: path,
    }
}

/// Seconds, ordered (they are never NaN here).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Ms(f64);

impl Eq for Ms {}

impl PartialOrd for Ms {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ms {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// "1m 12.5s", "4.2s".
pub fn duration(secs: f64) -> String {
    if secs >= 60.0 {
        let m = (secs / 60.0).floor();
        format!("{m:.0}m {:.1}s", secs - m * 60.0)
    } else {
        format!("{secs:.1}s")
    }
}

fn bytes(b: u64) -> String {
    crate::size::Size(b).to_string()
}

/// The human form, printed after the plan.
pub fn render(f: &Forecast) -> String {
    let mut s = String::new();
    let domains = f
        .critical_path
        .last()
        .is_some_and(|st| st.address.starts_with(Kind::Domain.as_str()));
    let _ = writeln!(
        s,
        "\nEstimate: {} to apply {} operations{} (model: {} links, {} ms a hop; {} at once, {} per host).",
        duration(f.seconds),
        f.operations,
        if domains { ", the last domain ready" } else { "" },
        f.link_rate,
        f.latency_ms,
        f.parallelism,
        f.per_host
    );
    for fl in &f.flows {
        let _ = writeln!(
            s,
            "  image {}: degree {}{}, depth {}; each clone reads {}, the source sends {}; the slowest host has read it after {} (lower bound {}).",
            fl.image,
            fl.degree,
            if f.auto { " (auto)" } else { "" },
            fl.depth,
            bytes(fl.working_set_bytes),
            bytes(fl.source_sends_bytes),
            duration(fl.read_seconds),
            duration(fl.read_lower_bound_seconds)
        );
    }
    if !f.critical_path.is_empty() {
        let _ = writeln!(s, "  critical path ({} operations):", f.critical_path.len());
        for st in &f.critical_path {
            let queued = if st.queued > 0.0005 {
                format!("  (queued {} for a worker)", duration(st.queued))
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "    {:>9}  +{:<8} {} {}{queued}",
                duration(st.start),
                duration(st.seconds),
                st.action,
                st.address
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Graph;
    use crate::plan::{self, Mode, Options};
    use crate::state::State;

    fn plan_of(spec: &Spec) -> Plan {
        let state = State::empty(&spec.cluster);
        let graph = Graph::build(spec, &state).unwrap();
        let opts = Options {
            mode: Some(Mode::Normal),
            ..Options::default()
        };
        plan::diff(graph, &state, &opts, None).unwrap()
    }

    fn chain_spec() -> Spec {
        Spec::from_value(&serde_json::json!({
            "version": 1, "cluster": "f", "backend": {"stack": "sim"},
            "hosts": [{"name": "src", "address": "10.0.0.1"}, {"name": "n01", "address": "10.0.0.2"},
                      {"name": "n02", "address": "10.0.0.3"}],
            "images": [{"name": "img", "source_host": "src", "path": "/i.raw", "format": "raw",
                        "size": "1GiB"}],
            "tree": {"degree": 1},
            "estimate": {"working_set": 0,
                         "create": {"lv": 1, "session": 1, "cache": 1, "target": 1,
                                    "snapshot": 1, "domain": 2}}
        }))
        .unwrap()
    }

    #[test]
    fn the_forecast_follows_the_chain_of_the_tree_and_the_worker_limit() {
        let spec = chain_spec();
        let plan = plan_of(&spec);
        let wide = forecast(
            &spec,
            &plan,
            Limits {
                parallelism: 100,
                per_host: 100,
                ..Limits::default()
            },
        );
        let path: Vec<&str> = wide
            .critical_path
            .iter()
            .map(|s| s.address.as_str())
            .collect();
        assert_eq!(
            path,
            [
                "target.src.img",
                "session.n01.img",
                "cache.n01.img",
                "target.n01.img",
                "session.n02.img",
                "cache.n02.img",
                "snapshot.n02.img.0",
                "domain.n02.img.0"
            ]
        );
        assert_eq!(wide.seconds, 9.0);
        for w in wide.critical_path.windows(2) {
            assert_eq!(w[1].start, w[0].start + w[0].seconds, "{w:?}");
            assert_eq!(w[1].queued, 0.0);
        }
        // One worker: every operation one after another.
        let one = forecast(
            &spec,
            &plan,
            Limits {
                parallelism: 1,
                ..Limits::default()
            },
        );
        let model = Model::new(&spec, Some(&plan.placement));
        let graph = OpGraph::build(&plan);
        let all: f64 = graph
            .ops
            .iter()
            .map(|o| model.secs(&plan.changes[o.change as usize].addr, o.kind))
            .sum();
        assert_eq!(one.seconds, all);
        assert_eq!(one.operations, graph.ops.len());
        assert!(one.critical_path.iter().any(|s| s.queued > 0.0));
        let text = render(&wide);
        assert!(text.contains("Estimate: 9.0s to apply"), "{text}");
        assert!(text.contains("degree 1, depth 2"), "{text}");
    }
}
