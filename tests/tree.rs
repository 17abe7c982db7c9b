//! Changing the tree under running clones on the qemu stack: real relays, real TCG guests that
//! keep reading blocks nobody has read yet and writing (and re-reading) records on their own
//! disks while hosts move.
//!
//! 1. An interior host leaves the spec: only its children's sessions are updated in place; no
//!    snapshot or domain is replaced, the guests' PIDs stay, their records read back intact and
//!    they see no I/O error.
//! 2. vmthunder is killed with SIGKILL in the middle of such a move (the new NBD node added,
//!    the cache not yet switched): the next apply finishes it.
//! 3. Another interior relay is killed with SIGKILL: the next apply moves its children to a
//!    healthy host in place, rebuilds the dead relay under its own clone, and resumes the
//!    guests that paused on the failed reads; they read on without an error.
//!
//! Needs what `scripts/setup.sh` installs and builds (QEMU 10, the test guest). Addresses
//! 127.0.31.x.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// img0 plus node01..node05, degree 2, one churning guest each:
/// img0 -> {node01, node02}; node01 -> {node03, node04}; node02 -> {node05}.
fn churn_spec(hosts: &[&str]) -> Value {
    let mut s = spec(31, 5, 2, 1, true);
    let append = s["clones"]["boot"]["append"].as_str().unwrap().to_string();
    s["clones"]["boot"]["append"] = json!(format!("{append} vmthunder.churn=1"));
    s["clones"]["ready"] = json!({ "line": "VMTHUNDER-CHURNING", "timeout_secs": 600 });
    s["clones"]["prevent_destroy"] = json!(true);
    // The tree's own moves, as they were measured; tests/tls.rs moves hosts with TLS on.
    s["backend"]["tls"] = json!(false);
    let keep: Vec<Value> = s["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["name"] == "img0" || hosts.contains(&h["name"].as_str().unwrap()))
        .cloned()
        .collect();
    s["hosts"] = json!(keep);
    s
}

fn write_spec(c: &Cluster, s: &Value) {
    std::fs::write(
        c.path().join("spec.json"),
        serde_json::to_vec_pretty(s).unwrap(),
    )
    .unwrap();
}

fn console(c: &Cluster, host: &str) -> String {
    std::fs::read_to_string(c.path().join(format!(".vmthunder/t/{host}/base/vm-0.log")))
        .unwrap_or_default()
}

/// The last `turn=` of a guest's VMTHUNDER-CHURN lines, and every one of them had no errors.
fn last_turn(c: &Cluster, host: &str) -> Option<u64> {
    let log = console(c, host);
    assert!(
        !log.contains("VMTHUNDER-IOERROR") && !log.contains("VMTHUNDER-FAILED"),
        "{host}'s guest saw an I/O error:\n{log}"
    );
    let mut last = None;
    for line in log.lines().filter(|l| l.contains("VMTHUNDER-CHURN ")) {
        assert!(
            line.contains(" errors=0 kernel_errors=0"),
            "{host}'s guest reports errors: {line}"
        );
        last = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("turn="))
            .and_then(|t| t.parse().ok());
    }
    last
}

/// Waits until every guest of `hosts` has reported `turns` more turns than in `from`.
fn churn_on(c: &Cluster, hosts: &[&str], from: &BTreeMap<String, u64>, turns: u64) {
    let start = Instant::now();
    for h in hosts {
        let base = from.get(*h).copied().unwrap_or(0);
        loop {
            if last_turn(c, h).is_some_and(|t| t >= base + turns) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "{h}'s guest did not get past turn {} within 300 s:\n{}",
                base + turns,
                console(c, h)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn turns(c: &Cluster, hosts: &[&str]) -> BTreeMap<String, u64> {
    hosts
        .iter()
        .map(|h| (h.to_string(), last_turn(c, h).unwrap_or(0)))
        .collect()
}

/// Each domain's recorded guest PID.
fn pids(c: &Cluster) -> BTreeMap<String, u64> {
    c.state("t")["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["address"].as_str().unwrap().starts_with("domain."))
        .map(|r| {
            (
                r["address"].as_str().unwrap().to_string(),
                r["observed"]["pid"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn alive(pid: u64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn placement(c: &Cluster) -> BTreeMap<String, String> {
    serde_json::from_value(c.state("t")["placement"]["base"].clone()).unwrap()
}

fn plan_json(c: &Cluster) -> Value {
    let out = c.run(&["plan", "-f", "spec.json", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// (address, action) of every change, no-ops left out.
fn changes(plan: &Value) -> Vec<(String, String)> {
    plan["resource_changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["actions"] != json!(["no-op"]))
        .map(|c| {
            (
                c["address"].as_str().unwrap().to_string(),
                c["actions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap())
                    .collect::<Vec<_>>()
                    .join(","),
            )
        })
        .collect()
}

#[test]
fn the_tree_changes_under_running_clones_and_a_dead_relay_is_repaired_live() {
    let all = ["node01", "node02", "node03", "node04", "node05"];
    let c = Cluster::new(&churn_spec(&all));
    let out = c.run_within(
        Duration::from_secs(900),
        &["apply", "-f", "spec.json", "--auto-approve"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let tree = placement(&c);
    assert_eq!(tree["node03"], "node01");
    assert_eq!(tree["node04"], "node01");
    churn_on(&c, &all, &BTreeMap::new(), 63);

    // 1. node01 leaves: its children move in place.
    let rest = ["node02", "node03", "node04", "node05"];
    write_spec(&c, &churn_spec(&rest));
    let plan = plan_json(&c);
    for (addr, action) in changes(&plan) {
        let host = addr.split('.').nth(1).unwrap();
        match action.as_str() {
            "delete" => assert_eq!(host, "node01", "{addr}"),
            "update" => assert!(
                addr == "session.node03.base" || addr == "session.node04.base",
                "{addr}"
            ),
            "create" => assert!(addr.starts_with("target."), "{addr}"),
            other => panic!("{addr}: {other}"),
        }
    }
    assert_eq!(plan["summary"]["change"], 2, "{plan}");
    assert_eq!(plan["summary"]["replace"], 0, "{plan}");
    assert_eq!(plan["summary"]["writes_destroyed"], 0, "{plan}");
    let before = pids(&c);
    let from = turns(&c, &rest);
    let t0 = Instant::now();
    let out = c.run_within(
        Duration::from_secs(300),
        &["apply", "-f", "spec.json", "--auto-approve"],
    );
    eprintln!(
        "re-parenting apply took {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("2 changed, 0 replaced"),
        "{}",
        text(&out)
    );
    let tree = placement(&c);
    assert_ne!(tree["node03"], "node01");
    assert_ne!(tree["node04"], "node01");
    let after = pids(&c);
    for h in rest {
        let d = format!("domain.{h}.base.0");
        assert_eq!(before[&d], after[&d], "{d} was restarted");
        assert!(alive(after[&d]), "{d} is not running");
    }
    churn_on(&c, &rest, &from, 64);

    // 2. Killed in the middle of a move: node02 leaves too, and vmthunder dies (SIGKILL) once
    //    the first of its children's relays has the NBD node to its new parent.
    let mid = ["node03", "node04", "node05"];
    write_spec(&c, &churn_spec(&mid));
    let killed = c.run_env(
        &[("VMTHUNDER_FAILPOINT", "session-attached")],
        &["apply", "-f", "spec.json", "--auto-approve"],
    );
    assert_eq!(
        killed.status.code(),
        None,
        "killed by a signal: {}",
        text(&killed)
    );
    let from = turns(&c, &mid);
    let out = c.run_within(
        Duration::from_secs(300),
        &["apply", "-f", "spec.json", "--auto-approve"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let plan = plan_json(&c);
    assert_eq!(changes(&plan), Vec::<(String, String)>::new(), "{plan}");
    for h in mid {
        let d = format!("domain.{h}.base.0");
        assert_eq!(before[&d], pids(&c)[&d], "{d} was restarted");
    }
    churn_on(&c, &mid, &from, 64);

    // 3. SIGKILL an interior relay: the next apply repairs the tree around it.
    let tree = placement(&c);
    let interior = mid
        .iter()
        .copied()
        .find(|h| tree.values().any(|p| p == h))
        .expect("an interior host");
    let children: Vec<String> = tree
        .iter()
        .filter(|(_, p)| p.as_str() == interior)
        .map(|(h, _)| h.clone())
        .collect();
    let relay = std::fs::read_to_string(
        c.path()
            .join(format!(".vmthunder/t/{interior}/base/relay.pid")),
    )
    .unwrap();
    let from = turns(&c, &mid);
    assert!(std::process::Command::new("kill")
        .args(["-KILL", relay.trim()])
        .status()
        .unwrap()
        .success());
    // Their guests read blocks their hosts have not cached: they pause on the failed reads.
    std::thread::sleep(Duration::from_secs(3));
    let plan = plan_json(&c);
    assert_eq!(plan["summary"]["writes_destroyed"], 0, "{plan}");
    for child in &children {
        let session = plan["resource_changes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["address"] == format!("session.{child}.base"))
            .unwrap();
        assert_eq!(session["actions"], json!(["update"]), "{session}");
        assert_eq!(session["reason"], "update_because_parent_unhealthy");
        assert_eq!(session["repair"]["parent"], interior);
    }
    let t0 = Instant::now();
    let out = c.run_within(
        Duration::from_secs(300),
        &["apply", "-f", "spec.json", "--auto-approve"],
    );
    eprintln!("repair apply took {:.1} s", t0.elapsed().as_secs_f64());
    assert!(out.status.success(), "{}", text(&out));
    let tree = placement(&c);
    for child in &children {
        assert_ne!(
            &tree[child], interior,
            "{child} still pulls from {interior}"
        );
    }
    for h in mid {
        let d = format!("domain.{h}.base.0");
        assert_eq!(before[&d], pids(&c)[&d], "{d} was restarted");
    }
    churn_on(&c, &mid, &from, 64);
    let plan = plan_json(&c);
    assert_eq!(changes(&plan), Vec::<(String, String)>::new(), "{plan}");

    destroy_leaves_nothing(&c);
}
