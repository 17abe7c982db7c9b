//! Plan benchmark: a generated cluster of N hosts x 10 clones, degree 4.
//!
//! For each N (default 1,000 / 10,000 / 100,000; override with `VMTHUNDER_BENCH_HOSTS=1000,10000`)
//! a child process measures, each phase on its own peak-RSS counter:
//! - plan from empty state: parse + validate the spec, build the DAG, diff, check the op order;
//! - plan against a state that already matches: the same plus loading the state file.
//!
//! `VMTHUNDER_BENCH_NETWORK=1` attaches every clone to a cluster network and gives it a
//! cloud-init seed: a bridge and a VXLAN per host and a seed per clone more, and an address
//! per clone and bridge.
//!
//! `VMTHUNDER_BENCH_TOTALS=1` gives the image a total of N x 10 clones instead
//! (`images[].clones`, `placement: spread`) over hosts that declare their capacity, so every
//! clone is placed by room (by the spec check and again by the plan).
//!
//! Run: `cargo bench --bench plan` (release build).

mod common;

use std::time::Instant;

use common::{peak_mib, reset_peak};
use vmthunder::graph::Graph;
use vmthunder::plan::{self, OpGraph, Options};
use vmthunder::spec::Spec;
use vmthunder::state::State;

const CLONES: u32 = 10;
const DEGREE: u32 = 4;

fn networked() -> bool {
    std::env::var("VMTHUNDER_BENCH_NETWORK").is_ok_and(|v| v == "1")
}

fn totals() -> bool {
    std::env::var("VMTHUNDER_BENCH_TOTALS").is_ok_and(|v| v == "1")
}

fn spec_json(hosts: usize) -> Vec<u8> {
    let mut list = vec![serde_json::json!({"name": "img0", "address": "10.0.0.1"})];
    for i in 0..hosts {
        let mut h = serde_json::json!({
            "name": format!("node{i:06}"),
            "address": format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
        });
        if totals() {
            // Hosts of three sizes, room for 16, 12 and 8 clones.
            let gib = [16, 12, 8][i % 3];
            h["capacity"] =
                serde_json::json!({"vcpus": gib, "memory": format!("{gib}GiB"), "disk": "1TiB"});
        }
        list.push(h);
    }
    let mut doc = serde_json::json!({
        "version": 1,
        "cluster": "bench",
        "backend": {"stack": "sim"},
        "hosts": list,
        "images": [{"name": "base", "source_host": "img0", "path": "base.qcow2", "size": "10GiB"}],
        "tree": {"degree": DEGREE},
        "cache": {"size": "4GiB"},
        "clones": {"per_host": CLONES, "cow_size": "2GiB", "memory": "1GiB"}
    });
    if totals() {
        let img = doc["images"][0].as_object_mut().unwrap();
        img.insert("clones".into(), (hosts as u64 * u64::from(CLONES)).into());
        img.insert("placement".into(), "spread".into());
        doc["clones"].as_object_mut().unwrap().remove("per_host");
    }
    if networked() {
        // 100.64.0.0/10 holds 4M addresses, apart from the hosts' 10.0.0.0/8.
        doc["networks"] = serde_json::json!([{"name": "lab", "cidr": "100.64.0.0/10"}]);
        doc["clones"]["networks"] = serde_json::json!(["lab"]);
        doc["clones"]["cloud_init"] = serde_json::json!({});
    }
    serde_json::to_vec(&doc).unwrap()
}

fn plan_once(spec_bytes: &[u8], state: &State) -> (plan::Plan, usize) {
    let spec = Spec::from_slice(spec_bytes).unwrap();
    let graph = Graph::build(&spec, state).unwrap();
    let n = graph.len();
    let p = plan::diff(graph, state, &Options::default(), Some(spec.digest())).unwrap();
    OpGraph::build(&p).order(&p).unwrap();
    (p, n)
}

fn child(hosts: usize) {
    let dir = tempfile::tempdir().unwrap();
    let spec_bytes = spec_json(hosts);
    let empty = State::empty("bench");

    reset_peak();
    let base = peak_mib();
    let t = Instant::now();
    let (p, resources) = plan_once(&spec_bytes, &empty);
    let from_empty = t.elapsed();
    let from_empty_mib = peak_mib();
    assert_eq!(p.summary().add, resources);

    let state_path = dir.path().join("bench.json");
    let mut applied = p.applied(&empty);
    drop(p);
    let t = Instant::now();
    applied.persist(&state_path).unwrap();
    let persist = t.elapsed();
    let state_bytes = std::fs::metadata(&state_path).unwrap().len();
    drop(applied);

    reset_peak();
    let t = Instant::now();
    let state = State::load(&state_path, "bench").unwrap();
    let load = t.elapsed();
    let (p, _) = plan_once(&spec_bytes, &state);
    let no_change = t.elapsed();
    let no_change_mib = peak_mib();
    assert!(!p.has_changes());

    println!(
        "| {hosts:>7} | {resources:>9} | {:>8.3} | {:>7.0} | {:>8.3} | {:>8.3} | {:>7.0} | {:>6.0} | {:>6.2} |",
        from_empty.as_secs_f64(),
        from_empty_mib,
        no_change.as_secs_f64(),
        load.as_secs_f64(),
        no_change_mib,
        state_bytes as f64 / (1 << 20) as f64,
        persist.as_secs_f64(),
    );
    let _ = base;
}

fn main() {
    if let Some(hosts) = common::child_size() {
        child(hosts);
        return;
    }
    let sizes = common::sizes("100", "1000,10000,100000");
    println!(
        "plan benchmark: N hosts x {CLONES} clones{}, degree {DEGREE}{}; times in seconds, memory in MiB (peak RSS of the phase)",
        if totals() { " (as one total placed by spread over hosts with room for 16, 12 and 8)" } else { "" },
        if networked() { ", a network and a seed per clone" } else { "" }
    );
    println!("| hosts   | resources | empty: s | peak MiB | match: s | load: s | peak MiB | state MiB | persist: s |");
    println!("|--------:|----------:|---------:|--------:|---------:|--------:|--------:|-------:|-------:|");
    for size in &sizes {
        common::run_child(size);
    }
}
