//! Moving a host to another parent under a reader, on the qemu stack (real relays over
//! loopback; no guests): how long a read stalls while the switch happens, and how long the
//! move takes.
//!
//! Per round: a fresh chain img0 -> node01 -> node02 -> node03 (degree 1) with one clone on
//! node03; a reader (`qemu-io` on node03's clone disk) reads the image 64 KiB at a time, one
//! read every 10 ms, none of it cached yet; 2 s in, node02 leaves the spec and `vmthunder apply`
//! moves node03 onto node01 in place. Reported: the apply's wall time, the session update's own
//! time (from `apply --json`), the longest gap between two reads completing inside the switch's
//! window against the median gap, and failed reads (there must be none).
//!
//! Needs QEMU (scripts/setup.sh) and the test guest's base image (target/guest/base.raw).
//! Environment: VMTHUNDER_BENCH_ROUNDS (default 5).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    dir.join("vmthunder")
}

fn spec(hosts: &[&str], image: &Path) -> Value {
    let mut hs = vec![json!({"name": "img0", "address": "127.0.32.1"})];
    for (i, h) in ["node01", "node02", "node03"].iter().enumerate() {
        if hosts.contains(h) {
            hs.push(json!({"name": h, "address": format!("127.0.32.{}", 11 + i)}));
        }
    }
    json!({
        "version": 1, "cluster": "rp",
        "backend": {"stack": "qemu", "root": ".vmthunder"},
        "hosts": hs,
        "images": [{"name": "base", "source_host": "img0", "path": image, "format": "raw"}],
        "tree": {"degree": 1},
        "cache": {"size": "64MiB"},
        "clones": {"per_host": 1, "cow_size": "64MiB"}
    })
}

fn vmthunder(dir: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("vmthunder runs (cargo bench builds it)");
    assert!(
        out.status.success(),
        "vmthunder {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

struct Round {
    apply: f64,
    update: f64,
    max_gap: f64,
    median_gap: f64,
    reads: usize,
    failed: usize,
}

fn round(image: &Path) -> Round {
    let dir = tempfile::Builder::new()
        .prefix("vmt-rp-")
        .tempdir()
        .unwrap();
    let write = |s: &Value| {
        std::fs::write(dir.path().join("spec.json"), s.to_string()).unwrap();
    };
    write(&spec(&["node01", "node02", "node03"], image));
    let apply = [
        "apply",
        "-f",
        "spec.json",
        "--auto-approve",
        "--target",
        "snapshot",
    ];
    vmthunder(dir.path(), &apply);
    let disk = dir.path().join(".vmthunder/rp/node03/base/lv-cow-0.img");
    let mut reader = Command::new("qemu-io")
        .args(["-r", "-U", "-f", "qcow2"])
        .arg(&disk)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = reader.stdin.take().unwrap();
    let stdout = reader.stdout.take().unwrap();
    let feeder = std::thread::spawn(move || {
        for i in 0..900u64 {
            if writeln!(stdin, "read {} 65536", i * 65536).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = writeln!(stdin, "quit");
    });
    let t0 = Instant::now();
    let collector = std::thread::spawn(move || {
        let mut done = Vec::new();
        let mut failed = 0;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("bytes at offset") {
                done.push(t0.elapsed().as_secs_f64());
            } else if line.contains("failed") {
                failed += 1;
            }
        }
        (done, failed)
    });
    std::thread::sleep(Duration::from_secs(2));
    write(&spec(&["node01", "node03"], image));
    let start = t0.elapsed().as_secs_f64();
    let out = vmthunder(
        dir.path(),
        &[
            "apply",
            "-f",
            "spec.json",
            "--auto-approve",
            "--json",
            "--target",
            "snapshot",
        ],
    );
    let end = t0.elapsed().as_secs_f64();
    let update = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["type"] == "apply_complete" && e["hook"]["action"] == "update")
        .and_then(|e| e["elapsed_seconds"].as_f64())
        .unwrap_or(f64::NAN);
    feeder.join().unwrap();
    let (done, failed) = collector.join().unwrap();
    let _ = reader.wait();
    vmthunder(
        dir.path(),
        &["destroy", "-f", "spec.json", "--auto-approve"],
    );
    let gaps: Vec<(f64, f64)> = done.windows(2).map(|w| (w[1], w[1] - w[0])).collect();
    let mut all: Vec<f64> = gaps.iter().map(|g| g.1).collect();
    all.sort_by(f64::total_cmp);
    let max_gap = gaps
        .iter()
        .filter(|(t, _)| *t >= start && *t <= end + 1.0)
        .map(|g| g.1)
        .fold(0.0, f64::max);
    Round {
        apply: end - start,
        update,
        max_gap,
        median_gap: all.get(all.len() / 2).copied().unwrap_or(f64::NAN),
        reads: done.len(),
        failed,
    }
}

fn main() {
    let image = repo().join("target/guest/base.raw");
    assert!(
        image.exists(),
        "{} is missing: run `bash scripts/setup.sh`",
        image.display()
    );
    let rounds: usize = std::env::var("VMTHUNDER_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    println!("round  apply_s  update_s  max_read_gap_ms  median_gap_ms  reads  failed");
    for r in 1..=rounds {
        let x = round(&image);
        println!(
            "{r:>5}  {:>7.3}  {:>8.3}  {:>15.1}  {:>13.1}  {:>5}  {:>6}",
            x.apply,
            x.update,
            x.max_gap * 1e3,
            x.median_gap * 1e3,
            x.reads,
            x.failed
        );
    }
}
