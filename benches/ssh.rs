//! SSH transport benchmark on the test bed (scripts/testbed.sh; root only).
//!
//! 1. Commands per second to one host: over vmthunder's one multiplexed connection (the
//!    ssh transport) versus a new `ssh` process per command, each run one at a time and 8 at a
//!    time (the transport's default per-host session cap).
//! 2. The qemu stack over ssh on a bed of a source plus 6 hosts, degree 2, one TCG guest per
//!    host (as `tests/ssh.rs` builds it): apply, a second plan (refresh of every object), and
//!    destroy, wall time each, through the release binary.
//!
//! Run: `cargo bench --bench ssh` (`VMTHUNDER_BENCH_COMMANDS`, default 400 over the mux).

#[path = "../tests/common/testbed.rs"]
mod testbed;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use testbed::Testbed;
use vmthunder::backend::ssh::SshTransport;
use vmthunder::backend::Transport;

/// Runs `n` commands with `parallel` threads; returns commands per second.
fn rate(n: usize, parallel: usize, one: impl Fn() + Sync) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for w in 0..parallel {
            let one = &one;
            s.spawn(move || {
                for _ in (w..n).step_by(parallel) {
                    one();
                }
            });
        }
    });
    n as f64 / start.elapsed().as_secs_f64()
}

fn vmthunder(dir: &std::path::Path, args: &[&str]) -> Duration {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_vmthunder"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let took = start.elapsed();
    assert!(
        out.status.code().is_some_and(|c| c == 0),
        "vmthunder {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn main() {
    let n: usize = std::env::var("VMTHUNDER_BENCH_COMMANDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let tb = Testbed::up("bx", 86, &["h1"], None);
    let addr = tb.address("h1").to_string();
    let argv = vec!["true".to_string()];
    let t = Arc::new(SshTransport::new(vec![tb.endpoint("h1")]).unwrap());
    t.run("h1", &argv, Duration::from_secs(30)).unwrap(); // connect once
    let per_process = |_: ()| {
        let st = Command::new("ssh")
            .args(["-i", &tb.dir.join("id_ed25519").display().to_string()])
            .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                tb.dir.join("known_hosts").display()
            ))
            .arg(format!("root@{addr}"))
            .arg("true")
            .status()
            .unwrap();
        assert!(st.success());
    };
    println!("commands per second to one host (`true`), this machine:");
    println!("| | one at a time | 8 at a time |");
    println!("|---|---|---|");
    let mux1 = rate(n, 1, || {
        t.run("h1", &argv, Duration::from_secs(30)).unwrap();
    });
    let mux8 = rate(n, 8, || {
        t.run("h1", &argv, Duration::from_secs(30)).unwrap();
    });
    println!("| one multiplexed connection (n={n}) | {mux1:.0}/s | {mux8:.0}/s |");
    let m = (n / 8).max(16);
    let p1 = rate(m, 1, || per_process(()));
    let p8 = rate(m, 8, || per_process(()));
    println!("| a new ssh process per command (n={m}) | {p1:.1}/s | {p8:.1}/s |");
    println!(
        "speed-up: {:.0}x one at a time, {:.0}x 8 at a time; master connections opened: {}",
        mux1 / p1,
        mux8 / p8,
        t.connections()
    );
    drop(t);
    drop(tb);

    let names = [
        "src", "node01", "node02", "node03", "node04", "node05", "node06",
    ];
    let tb = Testbed::up("bc", 87, &names, None);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("spec.json"),
        serde_json::to_vec_pretty(&tb.cluster_spec("bench", 2, 1)).unwrap(),
    )
    .unwrap();
    let apply = vmthunder(dir.path(), &["apply", "-f", "spec.json", "--auto-approve"]);
    let plan = vmthunder(dir.path(), &["plan", "-f", "spec.json"]);
    let destroy = vmthunder(
        dir.path(),
        &["destroy", "-f", "spec.json", "--auto-approve"],
    );
    println!();
    println!("qemu stack over ssh, source + 6 hosts, degree 2, 1 TCG guest each (39 resources):");
    println!("| apply (guests booted) | plan (refresh of 39 objects) | destroy |");
    println!("|---|---|---|");
    println!(
        "| {:.1} s | {:.2} s | {:.1} s |",
        apply.as_secs_f64(),
        plan.as_secs_f64(),
        destroy.as_secs_f64()
    );
}
