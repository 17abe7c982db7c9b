//! Image import throughput (`images[].import`): vmthunder against the same work done by hand.
//!
//! 1. Local: a 1 GiB VMDK (half random data, half zeros) imported into a raw image on this
//!    machine, against `qemu-img convert` of the same file by hand. vmthunder's import also
//!    checks the source (`qemu-img info`), checksums the result (`sha256sum`) and records it.
//! 2. Over ssh (the test bed: scripts/testbed.sh; root only): a 1 GiB raw disk on one host
//!    imported to another, streamed through this machine, against the same by hand
//!    (`ssh p2v cat disk | ssh src 'cat > copy'`, then `qemu-img convert` on src).
//!
//! Run: `cargo bench --bench import` (`VMTHUNDER_BENCH_IMPORT_MIB`, default 1024).

#[path = "../tests/common/testbed.rs"]
mod testbed;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use testbed::Testbed;

fn run(cmd: &mut Command) -> Duration {
    let start = Instant::now();
    let out = cmd.output().unwrap();
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn vmthunder(dir: &Path, args: &[&str]) -> Duration {
    run(Command::new(env!("CARGO_BIN_EXE_vmthunder"))
        .args(args)
        .current_dir(dir))
}

/// A raw disk of `mib` MiB: random data in its first half, zeros after.
fn disk(path: &Path, mib: u64) {
    run(Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "status=none"])
        .arg(format!("count={}", mib / 2))
        .arg(format!("of={}", path.display())));
    run(Command::new("truncate")
        .arg(format!("--size={}M", mib))
        .arg(path));
}

fn rate(mib: u64, d: Duration) -> String {
    format!(
        "{:.2} s ({:.0} MiB/s)",
        d.as_secs_f64(),
        mib as f64 / d.as_secs_f64()
    )
}

fn spec(hosts: serde_json::Value, backend: serde_json::Value, image: serde_json::Value) -> String {
    json!({
        "version": 1, "cluster": "bimp", "backend": backend, "hosts": hosts,
        "images": [image], "tree": {"degree": 2},
        "cache": {"size": "64MiB"}, "clones": {"per_host": 1},
    })
    .to_string()
}

fn main() {
    let mib: u64 = std::env::var("VMTHUNDER_BENCH_IMPORT_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    disk(&d.join("disk.raw"), mib);
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vmdk"])
        .arg(d.join("disk.raw"))
        .arg(d.join("disk.vmdk")));
    let _ = std::fs::remove_file(d.join("disk.raw"));
    let by_hand = run(Command::new("qemu-img")
        .args(["convert", "-p", "-f", "vmdk", "-O", "raw"])
        .arg(d.join("disk.vmdk"))
        .arg(d.join("by-hand.raw")));
    let _ = std::fs::remove_file(d.join("by-hand.raw"));
    std::fs::write(
        d.join("spec.json"),
        spec(
            json!([{"name": "img0", "address": "127.0.0.1"}, {"name": "n1", "address": "127.0.0.2"}]),
            json!({"stack": "qemu", "root": d.join("root")}),
            json!({"name": "big", "source_host": "img0", "path": d.join("big.raw"), "format": "raw",
                   "import": {"from": d.join("disk.vmdk"), "format": "vmdk"}}),
        ),
    )
    .unwrap();
    let ours = vmthunder(
        d,
        &[
            "apply",
            "-f",
            "spec.json",
            "--auto-approve",
            "--target",
            "image",
        ],
    );
    vmthunder(d, &["destroy", "-f", "spec.json", "--auto-approve"]);
    println!("import of a {mib} MiB VMDK (half data, half zeros) into raw, this machine:");
    println!("| qemu-img convert by hand | vmthunder apply (info, convert, sha256, record) |");
    println!("|---|---|");
    println!("| {} | {} |", rate(mib, by_hand), rate(mib, ours));
    drop(dir);

    // Over ssh: the disk is on p2v; the image is made on src.
    let tb = Testbed::up("bi", 88, &["src", "p2v"], None);
    let local = tempfile::tempdir().unwrap();
    disk(&local.path().join("disk.raw"), mib);
    tb.stage("p2v", "/srv/p2v/disk.raw", &local.path().join("disk.raw"));
    drop(local);
    let ssh = |host: &str| {
        let mut c = Command::new("ssh");
        c.args(["-i", &tb.dir.join("id_ed25519").display().to_string()])
            .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                tb.dir.join("known_hosts").display()
            ))
            .arg(format!("root@{}", tb.address(host)));
        c
    };
    let start = Instant::now();
    let mut from = ssh("p2v")
        .arg("cat /srv/p2v/disk.raw")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let st = ssh("src")
        .arg("mkdir -p /srv/by-hand && cat > /srv/by-hand/copy.raw")
        .stdin(from.stdout.take().unwrap())
        .status()
        .unwrap();
    assert!(st.success() && from.wait().unwrap().success());
    let copied = start.elapsed();
    let converted = run(ssh("src").arg(
        "qemu-img convert -f raw -O raw /srv/by-hand/copy.raw /srv/by-hand/out.raw && rm -rf /srv/by-hand",
    ));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hosts: Vec<_> = ["src", "p2v"]
        .iter()
        .map(|h| json!({"name": h, "address": tb.address(h)}))
        .collect();
    std::fs::write(
        d.join("spec.json"),
        spec(
            json!(hosts),
            json!({"stack": "qemu", "transport": "ssh", "root": "/var/lib/vmthunder", "ssh": tb.ssh()}),
            json!({"name": "big", "source_host": "src", "path": "/srv/images/big.raw", "format": "raw",
                   "hosts": ["p2v"],
                   "import": {"from": "/srv/p2v/disk.raw", "format": "raw", "from_host": "p2v"}}),
        ),
    )
    .unwrap();
    let ours = vmthunder(
        d,
        &[
            "apply",
            "-f",
            "spec.json",
            "--auto-approve",
            "--target",
            "image",
        ],
    );
    vmthunder(d, &["destroy", "-f", "spec.json", "--auto-approve"]);
    println!();
    println!(
        "import of a {mib} MiB raw disk from another host over ssh (test bed, via this machine):"
    );
    println!("| by hand: ssh cat | ssh 'cat >' | then qemu-img convert | sum | vmthunder apply |");
    println!("|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} |",
        rate(mib, copied),
        rate(mib, converted),
        rate(mib, copied + converted),
        rate(mib, ours)
    );
}
