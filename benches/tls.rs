//! What TLS costs on the image tree (root only): read throughput through a depth-2 tree with
//! TLS on and off, on the test bed with every link capped by `tbf`, in one run.
//!
//! One bed: `src -> mid -> leaf` (degree 1), each link capped at `RATE`. The source holds an
//! `IMAGE_MIB` image of random bytes. Per round and mode (`tls`, `plain`, alternating), a
//! fresh cluster is applied over ssh up to the leaf's clone disk (no guests), and the leaf
//! reads that disk from end to end with `qemu-img convert` into a null target (8 requests
//! in flight, as the host: with its certificate when TLS is on): every block crosses both links cold and
//! is stored in both caches on the way. Then the cluster is destroyed. Reported per mode: the
//! median read rate, and CPU time per MiB read, of the three relays together and of the
//! reader. Raw results go to `target/bench-tls/results.json`.
//!
//! Environment: VMTHUNDER_BENCH_RATE (default "1gbit"), _IMAGE_MIB (512), _ROUNDS (3).

#[path = "../tests/common/testbed.rs"]
mod testbed;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use serde_json::{json, Value};
use testbed::Testbed;

const BED: &str = "bt";
const NET: u8 = 92;
const IMAGE: &str = "/srv/images/bench.raw";
const HOSTS: [&str; 3] = ["src", "mid", "leaf"];

fn env_or(name: &str, default: &str) -> String {
    std::env::var(format!("VMTHUNDER_BENCH_{name}")).unwrap_or_else(|_| default.into())
}

fn checked(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn vmthunder(dir: &Path, args: &[&str]) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmthunder"));
    cmd.args(args).current_dir(dir).env("NO_COLOR", "1");
    checked(cmd, &format!("vmthunder {}", args.join(" ")));
}

fn ticks_per_sec() -> f64 {
    let out = checked(
        {
            let mut c = Command::new("getconf");
            c.arg("CLK_TCK");
            c
        },
        "getconf CLK_TCK",
    );
    out.trim().parse().unwrap_or(100.0)
}

/// CPU seconds (user + system) the bed's relays have used so far.
fn relay_cpu(tb: &Testbed, tick: f64) -> f64 {
    let mut total = 0.0;
    for h in HOSTS {
        let pids = checked(
            {
                let mut c = Command::new("ip");
                c.args(["netns", "pids", &format!("vmtb-{}-{h}", tb.bed)]);
                c
            },
            "ip netns pids",
        );
        for pid in pids.split_whitespace() {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            if !stat.contains("(qemu-storage-d") {
                continue;
            }
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .unwrap()
                .1
                .split_whitespace()
                .collect();
            // utime and stime are fields 14 and 15 of stat: 12 and 13 after the comm.
            let t: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
            total += t / tick;
        }
    }
    total
}

fn spec(tb: &Testbed, cluster: &str, tls: bool, image_mib: u64) -> Value {
    json!({
        "version": 1,
        "cluster": cluster,
        "backend": { "stack": "qemu", "transport": "ssh", "root": "/var/lib/vmthunder",
                     "ssh": tb.ssh(), "tls": tls,
                     "base_port": if tls { 11100 } else { 11200 } },
        "hosts": tb.hosts.iter().map(|(n, a)| json!({"name": n, "address": a})).collect::<Vec<_>>(),
        "images": [{ "name": "bench", "source_host": "src", "path": IMAGE, "format": "raw",
                     "size": format!("{image_mib}MiB") }],
        "tree": { "degree": 1 },
        "cache": { "size": format!("{image_mib}MiB") },
        "clones": { "per_host": 1, "cow_size": format!("{image_mib}MiB") }
    })
}

struct Sample {
    mode: &'static str,
    secs: f64,
    relay_cpu: f64,
    reader_cpu: f64,
}

/// Applies the cluster, reads the leaf's clone disk once, destroys it.
fn one(tb: &Testbed, mode: &'static str, image_mib: u64, tick: f64) -> Sample {
    let tls = mode == "tls";
    let cluster = format!("b{mode}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("spec.json"),
        serde_json::to_vec_pretty(&spec(tb, &cluster, tls, image_mib)).unwrap(),
    )
    .unwrap();
    vmthunder(
        dir.path(),
        &[
            "apply",
            "-f",
            "spec.json",
            "--auto-approve",
            "--target",
            "snapshot.leaf",
        ],
    );
    let disk = tb.on_host(
        "leaf",
        &format!("/var/lib/vmthunder/{cluster}/leaf/bench/lv-cow-0.img"),
    );
    let creds = tb.on_host("leaf", &format!("/var/lib/vmthunder/{cluster}/leaf/.tls"));
    let object = if tls {
        format!(
            "--object tls-creds-x509,id=vmthunder-tls,dir={},endpoint=client",
            creds.display()
        )
    } else {
        String::new()
    };
    // The shell reports its waited children's CPU (cutime, cstime) after the read.
    let script = format!(
        "qemu-img convert {object} -m 8 -f qcow2 -n {} --target-image-opts driver=null-co,size={} && cat /proc/$$/stat",
        disk.display(),
        image_mib << 20
    );
    let before = relay_cpu(tb, tick);
    let start = Instant::now();
    let stat = checked(
        {
            let mut c = Command::new("timeout");
            c.args([
                "900",
                "ip",
                "netns",
                "exec",
                &format!("vmtb-{}-leaf", tb.bed),
                "sh",
                "-c",
                &script,
            ]);
            c
        },
        "qemu-img convert",
    );
    let secs = start.elapsed().as_secs_f64();
    let relay = relay_cpu(tb, tick) - before;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // cutime and cstime are fields 16 and 17: 14 and 15 after the comm.
    let reader = (fields[13].parse::<f64>().unwrap() + fields[14].parse::<f64>().unwrap()) / tick;
    vmthunder(
        dir.path(),
        &["destroy", "-f", "spec.json", "--auto-approve"],
    );
    Sample {
        mode,
        secs,
        relay_cpu: relay,
        reader_cpu: reader,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rate = env_or("RATE", "1gbit");
    let image_mib: u64 = env_or("IMAGE_MIB", "512").parse().unwrap();
    let rounds: usize = env_or("ROUNDS", "3").parse().unwrap();
    let tick = ticks_per_sec();
    let tb = Testbed::up(BED, NET, &HOSTS, Some(&rate));
    let image = tb.on_host("src", IMAGE);
    std::fs::create_dir_all(image.parent().unwrap()).unwrap();
    checked(
        {
            let mut c = Command::new("sh");
            c.args([
                "-c",
                &format!("head -c {}M /dev/urandom > {}", image_mib, image.display()),
            ]);
            c
        },
        "make the image",
    );
    let mut samples = Vec::new();
    for round in 0..rounds {
        for mode in ["tls", "plain"] {
            let s = one(&tb, mode, image_mib, tick);
            eprintln!(
                "round {round} {mode}: {:.1} MiB/s, relays {:.2} ms/MiB, reader {:.2} ms/MiB",
                image_mib as f64 / s.secs,
                s.relay_cpu * 1000.0 / image_mib as f64,
                s.reader_cpu * 1000.0 / image_mib as f64
            );
            samples.push(s);
        }
    }
    let mut results = Vec::new();
    println!("depth-2 tree, links capped at {rate}, {image_mib} MiB read cold through both hops, median of {rounds}:");
    println!("| mode  | MiB/s | relays' CPU ms/MiB | reader's CPU ms/MiB |");
    println!("|-------|------:|-------------------:|--------------------:|");
    let mut rates = std::collections::BTreeMap::new();
    for mode in ["tls", "plain"] {
        let of: Vec<&Sample> = samples.iter().filter(|s| s.mode == mode).collect();
        let mibs = median(of.iter().map(|s| image_mib as f64 / s.secs).collect());
        let relay = median(
            of.iter()
                .map(|s| s.relay_cpu * 1000.0 / image_mib as f64)
                .collect(),
        );
        let reader = median(
            of.iter()
                .map(|s| s.reader_cpu * 1000.0 / image_mib as f64)
                .collect(),
        );
        println!("| {mode:5} | {mibs:5.1} | {relay:18.2} | {reader:19.2} |");
        rates.insert(mode, mibs);
        results.push(json!({ "mode": mode, "mib_per_sec": mibs, "relay_cpu_ms_per_mib": relay,
                             "reader_cpu_ms_per_mib": reader,
                             "runs": of.iter().map(|s| json!({"secs": s.secs, "relay_cpu": s.relay_cpu,
                                                               "reader_cpu": s.reader_cpu})).collect::<Vec<_>>() }));
    }
    println!(
        "TLS reads at {:.1}% of plain.",
        100.0 * rates["tls"] / rates["plain"]
    );
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-tls");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("results.json"),
        serde_json::to_vec_pretty(&json!({ "rate": rate, "image_mib": image_mib,
                                           "rounds": rounds, "modes": results }))
        .unwrap(),
    )
    .unwrap();
}
