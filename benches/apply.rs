//! Executor benchmark on the `sim` stack (no machine is touched).
//!
//! 1. Engine overhead: apply, then destroy, of N hosts x 10 clones with every operation taking
//!    no time, journal on (fsync per group commit), state written once at the end. Each size
//!    runs in a child process; each phase has its own peak-RSS counter. Sizes:
//!    `VMTHUNDER_BENCH_HOSTS=1000,10000` (default 10,000 in release, 100 in debug).
//!    Between them, a refresh of the applied state (every object read, in parallel under the
//!    same limits; "plan s" is loading the state).
//! 2. Schedule quality: a cluster whose operations take modelled times (the example
//!    durations divided by `VMTHUNDER_BENCH_SCALE`, default 10) under a global and a per-host
//!    limit, run with critical-path priority, level by level (like the original VMThunder
//!    scripts) and in plan order, against the lower bound max(longest weighted chain, work
//!    that cannot start before time t / parallelism + t for every t, busiest host's work /
//!    per-host limit).
//! 3. Estimate against apply: 160 hosts x 1 and x 8 clones, degree 4, 1 Gbit/s links, the
//!    model's default times, the command line's default limits (`--parallelism auto`):
//!    `plan --estimate`'s forecast against a sim apply that takes the model's times for real.
//!
//! Run: `cargo bench --bench apply`.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{peak_mib, reset_peak};
use vmthunder::apply::limits::DEFAULT_PER_HOST;
use vmthunder::apply::{self, Interrupt, Limits, Parallelism, Schedule};
use vmthunder::backend;
use vmthunder::forecast;
use vmthunder::graph::Graph;
use vmthunder::plan::{self, Mode, OpGraph, OpKind, Options, Plan};
use vmthunder::resource::Kind;
use vmthunder::spec::Spec;
use vmthunder::state::State;

const CLONES: u32 = 10;

/// `create`: seconds per create by kind; every other time (deletes, reads) is zero.
fn spec(hosts: usize, clones: u32, degree: u32, create: serde_json::Value) -> Spec {
    let mut zero = serde_json::json!({"lv": 0, "session": 0, "cache": 0, "target": 0,
                                      "snapshot": 0, "domain": 0});
    let delete = zero.clone();
    if let Some(m) = create.as_object() {
        for (k, v) in m {
            zero[k] = v.clone();
        }
    }
    let estimate = serde_json::json!({"working_set": 0, "create": zero, "delete": delete});
    let mut list = vec![serde_json::json!({"name": "img0", "address": "10.0.0.1"})];
    for i in 0..hosts {
        list.push(serde_json::json!({
            "name": format!("node{i:06}"),
            "address": format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
        }));
    }
    let doc = serde_json::json!({
        "version": 1,
        "cluster": "bench",
        "backend": {"stack": "sim"},
        "estimate": estimate,
        "hosts": list,
        "images": [{"name": "base", "source_host": "img0", "path": "base.qcow2", "size": "10GiB"}],
        "tree": {"degree": degree},
        "cache": {"size": "4GiB"},
        "clones": {"per_host": clones, "cow_size": "2GiB", "memory": "1GiB"}
    });
    Spec::from_slice(&serde_json::to_vec(&doc).unwrap()).unwrap()
}

fn make_plan(spec: &Spec, state: &State, mode: Mode) -> Plan {
    let graph = Graph::build(spec, state).unwrap();
    let opts = Options {
        mode: Some(mode),
        ..Options::default()
    };
    plan::diff(graph, state, &opts, Some(spec.digest())).unwrap()
}

fn execute(
    plan: &Plan,
    state: &mut State,
    path: &std::path::Path,
    spec: &Spec,
    limits: Limits,
) -> apply::Outcome {
    let backend = backend::for_spec(spec).unwrap();
    let store = vmthunder::state::FileStore::new(path.to_path_buf(), Default::default());
    let o = apply::run(
        plan,
        state,
        &store,
        backend,
        limits,
        &Interrupt::default(),
        &mut |_| {},
    )
    .unwrap();
    assert!(o.ok(), "{:?}", o.failed.first());
    o
}

fn scale_child(hosts: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.json");
    let spec = spec(hosts, CLONES, 4, serde_json::json!({}));
    let limits = Limits {
        parallelism: std::env::var("VMTHUNDER_BENCH_PARALLELISM")
            .map_or(10, |p| p.parse().unwrap()),
        ..Limits::default()
    };

    reset_peak();
    let t = Instant::now();
    let mut state = State::load(&path, "bench").unwrap();
    let p = make_plan(&spec, &state, Mode::Normal);
    let planned = t.elapsed();
    let ops = OpGraph::build(&p).ops.len();
    let run = Instant::now();
    let o = execute(&p, &mut state, &path, &spec, limits);
    let ran = run.elapsed();
    let total = t.elapsed();
    let apply_mib = peak_mib();
    assert_eq!(o.created, ops);
    let state_mib = std::fs::metadata(&path).unwrap().len() as f64 / (1 << 20) as f64;
    drop((p, state));
    row(
        "apply", hosts, ops, planned, ran, total, apply_mib, state_mib,
    );

    reset_peak();
    let t = Instant::now();
    let mut state = State::load(&path, "bench").unwrap();
    let loaded = t.elapsed();
    let read = Instant::now();
    let backend = backend::for_spec(&spec).unwrap();
    let r = vmthunder::refresh::refresh(&mut state, &backend, limits);
    assert!(r.drift.is_empty() && r.read == ops);
    row(
        "refresh",
        hosts,
        r.read,
        loaded,
        read.elapsed(),
        t.elapsed(),
        peak_mib(),
        0.0,
    );
    drop(state);

    reset_peak();
    let t = Instant::now();
    let mut state = State::load(&path, "bench").unwrap();
    let p = make_plan(&spec, &state, Mode::Destroy);
    let planned = t.elapsed();
    let run = Instant::now();
    let o = execute(&p, &mut state, &path, &spec, limits);
    let ran = run.elapsed();
    let total = t.elapsed();
    assert!(state.is_empty());
    row(
        "destroy",
        hosts,
        o.deleted,
        planned,
        ran,
        total,
        peak_mib(),
        0.0,
    );
}

#[allow(clippy::too_many_arguments)]
fn row(
    what: &str,
    hosts: usize,
    ops: usize,
    planned: Duration,
    ran: Duration,
    total: Duration,
    mib: f64,
    state_mib: f64,
) {
    println!(
        "| {what:<7} | {hosts:>6} | {ops:>7} | {:>7.3} | {:>7.3} | {:>7.3} | {:>9.0} | {:>7.0} | {:>9.1} |",
        planned.as_secs_f64(),
        ran.as_secs_f64(),
        total.as_secs_f64(),
        ops as f64 / ran.as_secs_f64(),
        mib,
        state_mib
    );
}

/// The example durations (seconds) for creates; lv and target are quick.
fn model() -> BTreeMap<Kind, f64> {
    BTreeMap::from([
        (Kind::Lv, 0.1),
        (Kind::Session, 2.0),
        (Kind::Cache, 1.0),
        (Kind::Target, 0.2),
        (Kind::Snapshot, 0.5),
        (Kind::Domain, 3.0),
    ])
}

fn lower_bound(plan: &Plan, secs: &BTreeMap<Kind, f64>, limits: Limits) -> (f64, f64, f64) {
    let g = OpGraph::build(plan);
    let w: Vec<f64> = g
        .ops
        .iter()
        .map(|o| {
            assert_eq!(o.kind, OpKind::Create);
            secs[&plan.changes[o.change as usize].addr.kind]
        })
        .collect();
    let order = vmthunder::dag::topo_order(&g.before).unwrap();
    let mut finish = vec![0.0f64; g.ops.len()];
    for &i in &order {
        let start = g.before[i as usize]
            .iter()
            .map(|&p| finish[p as usize])
            .fold(0.0, f64::max);
        finish[i as usize] = start + w[i as usize];
    }
    let chain = finish.iter().copied().fold(0.0, f64::max);
    // Ramp-up: no operation starts before its earliest start e = finish - w, so at time t at
    // most max(0, t - e) of it is done and the rest needs the workers after t:
    // makespan >= t + sum(max(0, w - max(0, t - e))) / parallelism, for every t.
    let p = limits.parallelism as f64;
    let work = (0..=400)
        .map(|step| {
            let t = chain * step as f64 / 400.0;
            let left: f64 = finish
                .iter()
                .zip(&w)
                .map(|(f, wi)| (wi - (t - (f - wi)).max(0.0)).max(0.0))
                .sum();
            t + left / p
        })
        .fold(0.0, f64::max);
    let mut per_host: BTreeMap<&str, f64> = BTreeMap::new();
    for (o, wi) in g.ops.iter().zip(&w) {
        *per_host
            .entry(&plan.changes[o.change as usize].addr.host)
            .or_default() += wi;
    }
    let host = per_host.values().copied().fold(0.0, f64::max) / limits.per_host as f64;
    (chain, work, host)
}

fn schedule_quality(hosts: usize, clones: u32, scale: f64, parallelism: usize) {
    let secs = model();
    let scaled: BTreeMap<String, f64> = secs
        .iter()
        .map(|(k, v)| (k.to_string(), v / scale))
        .collect();
    let spec = spec(hosts, clones, 2, serde_json::to_value(scaled).unwrap());
    let limits = Limits {
        parallelism,
        per_host: 4,
        schedule: Schedule::CriticalPath,
    };
    let empty = State::empty("bench");
    let p = make_plan(&spec, &empty, Mode::Normal);
    let (chain, work, host) = lower_bound(&p, &secs, limits);
    let bound = chain.max(work).max(host);
    println!(
        "\n{hosts} hosts x {clones} clones, degree 2, parallelism {parallelism}, per host 4; model seconds (runs at 1/{scale} speed)"
    );
    println!("lower bound {bound:.1} s = max(longest chain {chain:.1}, work/parallelism after ramp-up {work:.1}, busiest host/4 {host:.1})");
    println!("| schedule       | makespan s | / bound |");
    println!("|----------------|-----------:|--------:|");
    for (name, schedule) in [
        ("critical path", Schedule::CriticalPath),
        ("level by level", Schedule::Levels),
        ("plan order", Schedule::Fifo),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bench.json");
        let mut state = State::empty("bench");
        let o = execute(&p, &mut state, &path, &spec, Limits { schedule, ..limits });
        let makespan = o.wall.as_secs_f64() * scale;
        println!(
            "| {name:<14} | {makespan:>10.1} | {:>7.3} |",
            makespan / bound
        );
    }
}

/// The model's default times and 1 Gbit/s links (as `plan --estimate` of a spec that gives
/// only the link rate), with the command line's default limits.
fn estimate_against_apply(hosts: usize, clones: u32) {
    let mut doc = serde_json::to_value(spec(hosts, clones, 4, serde_json::json!({}))).unwrap();
    doc["estimate"] = serde_json::json!({"link_rate": "1gbit"});
    let spec = Spec::from_value(&doc).unwrap();
    let limits = Limits::for_spec(&spec, Parallelism::Auto, DEFAULT_PER_HOST);
    let empty = State::empty("bench");
    let p = make_plan(&spec, &empty, Mode::Normal);
    let estimate = forecast::forecast(&spec, &p, limits).seconds;
    let dir = tempfile::tempdir().unwrap();
    let mut state = State::empty("bench");
    let o = execute(
        &p,
        &mut state,
        &dir.path().join("bench.json"),
        &spec,
        limits,
    );
    let wall = o.wall.as_secs_f64();
    println!(
        "| {:>5} x {clones:<2} | {:>5} | {:>11} | {estimate:>10.1} | {wall:>8.1} | {:>+7.1}% |",
        hosts + 1,
        OpGraph::build(&p).ops.len(),
        limits.parallelism,
        (wall / estimate - 1.0) * 100.0
    );
}

fn main() {
    if let Some(hosts) = common::child_size() {
        scale_child(hosts);
        return;
    }
    let debug = cfg!(debug_assertions);
    let sizes = common::sizes("100", "10000");
    println!("apply benchmark, sim stack at zero duration: N hosts x {CLONES} clones, degree 4, parallelism 10, per host 4, journal on");
    println!("| phase   | hosts  | ops     | plan s  | run s   | total s | ops/s     | peak MiB | state MiB |");
    println!("|---------|-------:|--------:|--------:|--------:|--------:|----------:|--------:|----------:|");
    for size in &sizes {
        common::run_child(size);
    }
    let scale: f64 = std::env::var("VMTHUNDER_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if debug { 1000.0 } else { 10.0 });
    let (hosts, clones) = if debug { (10, 2) } else { (100, 4) };
    schedule_quality(hosts, clones, scale, 1000);
    schedule_quality(hosts, clones, scale, 64);
    schedule_quality(hosts, clones, scale, 16);
    println!("\nestimate against sim apply: degree 4, 1gbit, model default times, default limits (--parallelism auto, --per-host 4)");
    println!("| hosts x clones | ops   | parallelism | estimate s | apply s  | apply/estimate |");
    println!("|----------------|------:|------------:|-----------:|---------:|--------:|");
    estimate_against_apply(160, 1);
    estimate_against_apply(160, 8);
}
