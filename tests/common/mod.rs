//! Helpers shared by the integration tests that run clusters on the qemu stack.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod pg;
pub mod testbed;

use serde_json::{json, Value};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn guest(file: &str) -> String {
    let p = repo().join("target/guest").join(file);
    assert!(
        p.exists(),
        "{} is missing: run `bash scripts/setup.sh` (it builds the test guest)",
        p.display()
    );
    p.display().to_string()
}

pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A cluster in a scratch directory; destroyed (and any stray process killed) on drop.
pub struct Cluster {
    pub dir: tempfile::TempDir,
}

impl Cluster {
    pub fn new(spec: &Value) -> Cluster {
        let dir = tempfile::Builder::new().prefix("vmt-").tempdir().unwrap();
        std::fs::write(
            dir.path().join("spec.json"),
            serde_json::to_vec_pretty(spec).unwrap(),
        )
        .unwrap();
        Cluster { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(Command::new(env!("CARGO_BIN_EXE_vmthunder")), args)
    }

    /// `run`, interrupted after `limit` (SIGINT, as a Ctrl-C; SIGKILL 60 s later): a hung
    /// run fails the test (`timeout` exits 124) instead of hanging it.
    pub fn run_within(&self, limit: std::time::Duration, args: &[&str]) -> Output {
        let mut timeout = Command::new("timeout");
        timeout
            .args(["--signal=INT", "--kill-after=60"])
            .arg(format!("{}s", limit.as_secs()))
            .arg(env!("CARGO_BIN_EXE_vmthunder"));
        self.command(timeout, args)
    }

    /// `run` with extra environment variables.
    pub fn run_env(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmthunder"));
        cmd.envs(env.iter().copied());
        self.command(cmd, args)
    }

    fn command(&self, mut cmd: Command, args: &[&str]) -> Output {
        let out = cmd
            .args(args)
            .current_dir(self.path())
            .env_remove("VMTHUNDER_SPEC")
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        eprintln!(
            "$ vmthunder {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn apply(&self) -> Output {
        self.apply_with(&[])
    }

    /// `apply -f spec.json --auto-approve` plus `extra`.
    pub fn apply_with(&self, extra: &[&str]) -> Output {
        let mut args = vec!["apply", "-f", "spec.json", "--auto-approve"];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    pub fn state(&self, cluster: &str) -> Value {
        let p = self.path().join("state").join(format!("{cluster}.json"));
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    }

    /// Processes whose command line mentions this cluster's directory.
    pub fn processes(&self) -> Vec<u32> {
        let needle = self.path().display().to_string();
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
                if String::from_utf8_lossy(&cmd).contains(&needle) {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// Files left under the backend root.
    pub fn files(&self) -> Vec<String> {
        let root = self.path().join(".vmthunder");
        let mut out = Vec::new();
        let mut stack = vec![root];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                out.push(e.path().display().to_string());
                if e.path().is_dir() {
                    stack.push(e.path());
                }
            }
        }
        if self.path().join(".vmthunder").exists() {
            out.push(".vmthunder itself".into());
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.path().join("spec.json").exists() {
            let _ = Command::new(env!("CARGO_BIN_EXE_vmthunder"))
                .args(["destroy", "-f", "spec.json", "--auto-approve"])
                .current_dir(self.path())
                .output();
        }
        for pid in self.processes() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        for ns in namespaces(NETNS_CLUSTER) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

/// The cluster name of the network-namespace test (its namespaces are `vmt-<cluster>-*`).
pub const NETNS_CLUSTER: &str = "nstest";

pub fn namespaces(cluster: &str) -> Vec<String> {
    let prefix = format!("vmt-{cluster}-");
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// A spec: `img0` plus `hosts` nodes on 127.0.`net`.x, the test guest's base image.
pub fn spec(net: u8, hosts: usize, degree: u32, clones: u32, boot: bool) -> Value {
    let mut hs = vec![json!({ "name": "img0", "address": format!("127.0.{net}.1") })];
    for i in 1..=hosts {
        hs.push(
            json!({ "name": format!("node{i:02}"), "address": format!("127.0.{net}.{}", 10 + i) }),
        );
    }
    let mut clones_v = json!({ "per_host": clones, "memory": "128MiB", "cow_size": "64MiB" });
    if boot {
        clones_v["boot"] = json!({
            "kernel": guest("vmlinuz"),
            "initrd": guest("initrd.img"),
            "append": "console=ttyS0 panic=-1 quiet no_timer_check vmthunder.name={name}"
        });
        clones_v["ready"] = json!({ "line": "VMTHUNDER-READY", "timeout_secs": 600 });
    }
    json!({
        "version": 1,
        "cluster": "t",
        "backend": { "stack": "qemu", "root": ".vmthunder", "accel": "tcg" },
        "hosts": hs,
        "images": [{ "name": "base", "source_host": "img0", "path": guest("base.raw"),
                     "format": "raw" }],
        "tree": { "degree": degree },
        "cache": { "size": "64MiB" },
        "clones": clones_v,
    })
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Reads a clone's whole disk (its overlay, through every relay above it) into a file.
pub fn read_clone(c: &Cluster, host: &str, n: u32, out: &str) -> PathBuf {
    let overlay = c
        .path()
        .join(format!(".vmthunder/t/{host}/base/lv-cow-{n}.img"));
    let dst = c.path().join(out);
    let mut cmd = Command::new("qemu-img");
    cmd.args(["convert", "-U", "-O", "raw"]);
    // With TLS the overlay's backing reads the cache as the host, with its certificate.
    let tls = c.path().join(format!(".vmthunder/t/{host}/.tls"));
    if tls.exists() {
        cmd.args([
            "--object",
            &format!(
                "tls-creds-x509,id=vmthunder-tls,dir={},endpoint=client",
                tls.display()
            ),
        ]);
    }
    let st = cmd.arg(&overlay).arg(&dst).output().unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    dst
}

/// Destroys the cluster and checks that no process, file, socket or directory is left.
pub fn destroy_leaves_nothing(c: &Cluster) {
    let out = c.run(&["destroy", "-f", "spec.json", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Destroy complete!"), "{}", text(&out));
    assert_eq!(c.files(), Vec::<String>::new());
    assert_eq!(c.processes(), Vec::<u32>::new());
}
