//! A test bed of SSH hosts (scripts/testbed.sh) for tests and benchmarks: network namespaces
//! with their own addresses, an sshd each, and private `/var/lib/vmthunder`, `/srv` and `/tmp`.
//! Removed on drop, also when the test fails.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

pub struct Testbed {
    pub bed: String,
    pub net: u8,
    /// (name, address), in the order given.
    pub hosts: Vec<(String, String)>,
    pub dir: PathBuf,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/testbed.sh")
}

fn run_script(args: &[&str]) -> std::process::Output {
    let out = Command::new("timeout")
        .arg("300")
        .arg(script())
        .args(args)
        .output()
        .expect("scripts/testbed.sh runs");
    assert!(
        out.status.success(),
        "scripts/testbed.sh {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Testbed {
    /// Hosts `names` on 10.`net`.0.0/24, each link capped at `rate` if given.
    pub fn up(bed: &str, net: u8, names: &[&str], rate: Option<&str>) -> Testbed {
        let net_s = net.to_string();
        let mut args = vec!["up", "-b", bed, "-n", &net_s];
        if let Some(r) = rate {
            args.extend(["-r", r]);
        }
        args.extend(names);
        let dir = PathBuf::from("/var/tmp/vmthunder-testbed").join(bed);
        // The guard exists before the bed does: a failed set-up is torn down too.
        let mut tb = Testbed {
            bed: bed.into(),
            net,
            hosts: Vec::new(),
            dir,
        };
        run_script(&args);
        tb.hosts = std::fs::read_to_string(tb.dir.join("hosts"))
            .unwrap()
            .lines()
            .map(|l| {
                let (n, a) = l.split_once(' ').unwrap();
                (n.to_string(), a.to_string())
            })
            .collect();
        tb
    }

    pub fn address(&self, host: &str) -> &str {
        &self
            .hosts
            .iter()
            .find(|(n, _)| n == host)
            .unwrap_or_else(|| panic!("no host {host}"))
            .1
    }

    /// How the ssh transport reaches `host` (5 s connect timeout, 8 sessions).
    pub fn endpoint(&self, host: &str) -> vmthunder::backend::ssh::Endpoint {
        vmthunder::backend::ssh::Endpoint {
            name: host.into(),
            address: self.address(host).into(),
            user: Some("root".into()),
            port: None,
            identity_file: Some(self.dir.join("id_ed25519")),
            jump: None,
            connect_timeout: 5,
            accept_new: false,
            known_hosts: Some(self.dir.join("known_hosts")),
            config_file: None,
            max_sessions: 8,
        }
    }

    /// The `backend.ssh` block that reaches the bed's hosts.
    pub fn ssh(&self) -> Value {
        json!({
            "user": "root",
            "identity_file": self.dir.join("id_ed25519"),
            "known_hosts": self.dir.join("known_hosts"),
        })
    }

    /// Where `path` (absolute, under /var/lib/vmthunder, /srv or /tmp) of `host` really is.
    pub fn on_host(&self, host: &str, path: &str) -> PathBuf {
        let d = self.dir.join(host);
        for (prefix, sub) in [
            ("/var/lib/vmthunder", "var-lib-vmthunder"),
            ("/srv", "srv"),
            ("/tmp", "tmp"),
        ] {
            if let Some(rest) = path.strip_prefix(prefix) {
                return d.join(sub).join(rest.trim_start_matches('/'));
            }
        }
        panic!("{path} is not private to the bed's hosts")
    }

    /// Copies a local file to `path` on `host`.
    pub fn stage(&self, host: &str, path: &str, from: &Path) {
        let to = self.on_host(host, path);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, &to).unwrap();
    }

    /// Every file and directory under the hosts' `/var/lib/vmthunder`.
    pub fn files(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (h, _) in &self.hosts {
            let mut stack = vec![self.dir.join(h).join("var-lib-vmthunder")];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    out.push(e.path().display().to_string());
                    if e.path().is_dir() {
                        stack.push(e.path());
                    }
                }
            }
        }
        out
    }

    fn ns(&self, host: &str) -> String {
        format!("vmtb-{}-{host}", self.bed)
    }

    /// Processes running in the hosts' namespaces other than their sshd: (host, comm).
    pub fn processes(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (h, _) in &self.hosts {
            let pids = Command::new("ip")
                .args(["netns", "pids", &self.ns(h)])
                .output()
                .unwrap();
            for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                let comm = comm.trim();
                if !comm.is_empty() && comm != "sshd" {
                    out.push((h.clone(), comm.to_string()));
                }
            }
        }
        out
    }

    /// Runs a command inside a host's network namespace (not over ssh).
    pub fn in_ns(&self, host: &str, argv: &[&str]) -> String {
        let out = Command::new("timeout")
            .args(["30", "ip", "netns", "exec", &self.ns(host)])
            .args(argv)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn stop_sshd(&self, host: &str) {
        run_script(&["stop-sshd", "-b", &self.bed, host]);
    }

    pub fn start_sshd(&self, host: &str) {
        run_script(&["start-sshd", "-b", &self.bed, host]);
    }

    /// A qemu-stack cluster over ssh on the bed: the first host is the source of a 64 MiB
    /// image of the test guest, every other host boots `clones` clones of it.
    pub fn cluster_spec(&self, cluster: &str, degree: u32, clones: u32) -> Value {
        let guest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/guest");
        assert!(
            guest.join("vmlinuz").exists(),
            "target/guest is missing: run `bash scripts/setup.sh` (it builds the test guest)"
        );
        let source = &self.hosts[0].0;
        self.stage(source, "/srv/images/tiny.raw", &guest.join("base.raw"));
        for (h, _) in &self.hosts[1..] {
            self.stage(h, "/srv/boot/vmlinuz", &guest.join("vmlinuz"));
            self.stage(h, "/srv/boot/initrd.img", &guest.join("initrd.img"));
        }
        json!({
            "version": 1,
            "cluster": cluster,
            "backend": { "stack": "qemu", "transport": "ssh", "root": "/var/lib/vmthunder",
                         "accel": "tcg", "ssh": self.ssh() },
            "hosts": self.hosts.iter().map(|(n, a)| json!({"name": n, "address": a})).collect::<Vec<_>>(),
            "images": [{ "name": "tiny", "source_host": source, "path": "/srv/images/tiny.raw",
                         "format": "raw", "size": "64MiB" }],
            "tree": { "degree": degree },
            "cache": { "size": "64MiB" },
            "clones": {
                "per_host": clones, "vcpus": 1, "memory": "128MiB", "cow_size": "64MiB",
                "boot": { "kernel": "/srv/boot/vmlinuz", "initrd": "/srv/boot/initrd.img",
                          "append": "console=ttyS0 panic=-1 quiet no_timer_check vmthunder.name={name}" },
                "ready": { "line": "VMTHUNDER-READY", "timeout_secs": 600 }
            }
        })
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let _ = Command::new("timeout")
            .arg("120")
            .arg(script())
            .args(["down", "-b", &self.bed])
            .output();
    }
}
