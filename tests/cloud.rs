//! Clones people can use (issue 22), end to end on real components: a Debian 12 cloud image
//! (scripts/build-cloud-image.sh) booting through its own bootloader under TCG on the SSH test
//! bed, cloud-init identity from a NoCloud seed, a cluster network of bridges joined by VXLAN
//! across the hosts' namespaces, and the addresses out. Root only.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::testbed::Testbed;
use common::Cluster;
use serde_json::{json, Value};

/// One vmthunder run at most (two Debian guests booting under TCG on 2 cores).
const RUN_LIMIT: Duration = Duration::from_secs(1200);

/// The cached image (built once, keyed by its inputs, outside the clone).
fn cloud_image() -> PathBuf {
    let out = Command::new("timeout")
        .args(["3600", "bash"])
        .arg(common::repo().join("scripts/build-cloud-image.sh"))
        .output()
        .expect("scripts/build-cloud-image.sh runs");
    assert!(
        out.status.success(),
        "scripts/build-cloud-image.sh: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = PathBuf::from(stdout.lines().last().expect("the image's path").trim());
    assert!(path.is_file(), "{}", path.display());
    path
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `vmthunder ssh CLONE -- CMD` (through the clone's host), its stdout.
fn on_clone(c: &Cluster, clone: &str, cmd: &[&str]) -> String {
    let mut args = vec!["ssh", "-f", "spec.json", clone, "--"];
    args.extend_from_slice(cmd);
    let out = c.run_within(Duration::from_secs(120), &args);
    assert!(out.status.success(), "ssh {clone} {cmd:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// (name, first address) of every clone, from `vmthunder output --json`.
fn clones(c: &Cluster) -> Vec<(String, String)> {
    let out = c.run(&["output", "-f", "spec.json", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["clones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["name"].as_str().unwrap().to_string(),
                k["addresses"][0]["address"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Network devices in a host's namespace besides loopback and the bed's veth.
fn devices(tb: &Testbed, host: &str) -> Vec<String> {
    tb.in_ns(host, &["ip", "-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|d| d.split('@').next().unwrap_or(d).to_string())
        .filter(|d| d.starts_with("vb") || d.starts_with("vx") || d.starts_with("vt"))
        .collect()
}

#[test]
fn a_debian_cloud_image_boots_its_own_bootloader_gets_its_identity_and_talks_across_hosts() {
    let image = cloud_image();
    let tb = Testbed::up("cl", 86, &["src", "node01", "node02"], None);
    tb.stage("src", "/srv/images/debian-12.qcow2", &image);
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("id_ed25519");
    let made = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "vmthunder-test",
            "-f",
        ])
        .arg(&key)
        .status()
        .unwrap();
    assert!(made.success());
    let user_data = keys.path().join("user-data");
    std::fs::write(
        &user_data,
        "#cloud-config\nwrite_files:\n  - path: /etc/vmthunder-test\n    content: \"from user data\\n\"\n",
    )
    .unwrap();
    let spec = |firmware: &str| {
        json!({
            "version": 1,
            "cluster": "cloud",
            "backend": { "stack": "qemu", "transport": "ssh", "root": "/var/lib/vmthunder",
                         "accel": "tcg", "ssh": tb.ssh() },
            "hosts": tb.hosts.iter().map(|(n, a)| json!({"name": n, "address": a})).collect::<Vec<_>>(),
            "images": [{ "name": "debian", "source_host": "src", "path": "/srv/images/debian-12.qcow2",
                         "format": "qcow2" }],
            "networks": [{ "name": "lab", "cidr": "10.186.0.0/24" }],
            "tree": { "degree": 2 },
            "cache": { "size": "3GiB" },
            "clones": {
                "per_host": 1, "vcpus": 1, "memory": "512MiB", "cow_size": "3GiB",
                "firmware": firmware,
                "networks": ["lab"],
                "cloud_init": { "user_data": user_data },
                "ssh_authorized_keys": [key.with_extension("pub")],
                "ready": { "tcp": 22, "timeout_secs": 900 }
            }
        })
    };
    let c = Cluster::new(&spec("bios"));

    let start = Instant::now();
    let out = c.run_within(RUN_LIMIT, &["apply", "-f", "spec.json", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out));
    eprintln!(
        "BIOS apply, boot to SSH included: {:.1} s",
        start.elapsed().as_secs_f64()
    );

    // Identity from the seed, the spec's user data merged with the login, at the address
    // output reports.
    let found = clones(&c);
    assert_eq!(found.len(), 2, "{found:?}");
    for (name, address) in &found {
        assert!(address.starts_with("10.186.0."), "{name}: {address}");
        assert_eq!(on_clone(&c, name, &["hostname"]), *name);
        assert_eq!(
            on_clone(&c, name, &["cat", "/etc/vmthunder-test"]),
            "from user data"
        );
        let ip = on_clone(&c, name, &["ip", "-4", "-o", "addr", "show", "eth0"]);
        assert!(ip.contains(&format!("{address}/24")), "{name}: {ip}");
    }
    // Across the VXLAN: each clone pings the other and talks SSH to it.
    for (i, (name, _)) in found.iter().enumerate() {
        let (_, peer) = &found[1 - i];
        on_clone(&c, name, &["ping", "-c", "2", "-W", "5", peer]);
        let scanned = on_clone(
            &c,
            name,
            &["ssh-keyscan", "-T", "10", "-t", "ed25519", peer],
        );
        assert!(
            scanned.contains("ssh-ed25519"),
            "{name} -> {peer}: {scanned}"
        );
    }
    // Every host with clones has the bridge and the VXLAN; the source has neither.
    for h in ["node01", "node02"] {
        let d = devices(&tb, h);
        assert_eq!(
            d.iter().filter(|x| x.starts_with("vb")).count(),
            1,
            "{h}: {d:?}"
        );
        assert_eq!(
            d.iter().filter(|x| x.starts_with("vx")).count(),
            1,
            "{h}: {d:?}"
        );
        assert_eq!(
            d.iter().filter(|x| x.starts_with("vt")).count(),
            1,
            "{h}: {d:?}"
        );
    }
    assert!(devices(&tb, "src").is_empty());
    let plan = c.run(&["plan", "-f", "spec.json", "--detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));

    // UEFI: the firmware forces the domains' replacement and nothing else; the clones keep
    // their disks (the file written by cloud-init is still there) and their identity.
    std::fs::write(
        c.path().join("spec.json"),
        serde_json::to_vec_pretty(&spec("uefi")).unwrap(),
    )
    .unwrap();
    let plan = c.run(&["plan", "-f", "spec.json", "--json"]);
    let p: Value = serde_json::from_slice(&plan.stdout).unwrap();
    let replaced: Vec<&str> = p["resource_changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["actions"] != json!(["no-op"]))
        .map(|r| r["address"].as_str().unwrap())
        .collect();
    assert_eq!(
        replaced,
        ["domain.node01.debian.0", "domain.node02.debian.0"],
        "{}",
        text(&plan)
    );
    let start = Instant::now();
    let out = c.run_within(RUN_LIMIT, &["apply", "-f", "spec.json", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out));
    eprintln!(
        "UEFI re-apply, boot to SSH included: {:.1} s",
        start.elapsed().as_secs_f64()
    );
    for (name, _) in &found {
        assert_eq!(on_clone(&c, name, &["hostname"]), *name);
        assert_eq!(
            on_clone(&c, name, &["cat", "/etc/vmthunder-test"]),
            "from user data"
        );
        assert_eq!(
            on_clone(
                &c,
                name,
                &["test", "-d", "/sys/firmware/efi", "&&", "echo", "efi"]
            ),
            "efi"
        );
    }
    for h in ["node01", "node02"] {
        let vars = tb
            .on_host(h, "/var/lib/vmthunder/cloud")
            .join(h)
            .join("debian/vm-0.vars.fd");
        assert!(vars.is_file(), "{}", vars.display());
    }

    let start = Instant::now();
    let out = c.run_within(RUN_LIMIT, &["destroy", "-f", "spec.json", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("destroy: {:.1} s", start.elapsed().as_secs_f64());
    for (h, _) in &tb.hosts {
        assert!(devices(&tb, h).is_empty(), "{h}: {:?}", devices(&tb, h));
    }
    assert!(
        tb.files().iter().all(|f| !f.contains("/cloud")),
        "{:?}",
        tb.files()
    );
    assert!(tb.processes().is_empty(), "{:?}", tb.processes());
}
