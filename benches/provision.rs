//! Provisioning speed on the test bed (root only): the VMThunder tree against a star and against
//! full copies, over `tbf`-capped links, with the model's prediction and the lower bound beside
//! each measurement. `scripts/bench-provision.sh` runs it and writes the README table.
//!
//! One bed: a source plus `max(H)` hosts, every link capped at `RATE` in both directions. The
//! source holds an `IMAGE_MIB` image of random bytes; every clone is the test guest in
//! benchmark mode (`vmthunder.read_mib`, scripts/guest-init.sh): it boots, waits for the go
//! (its NIC's link set down over QMP), reads the first `READ_MIB` MiB of its disk and prints a
//! last console line. Per case:
//! - `tree` (degree d; d = H is the star): `vmthunder apply` over ssh builds the cluster up to
//!   the guests waiting; then every guest gets the go at once and the **read phase** runs
//!   until the last clone has read its working set. Only that phase moves image bytes.
//! - `copy-clone`: a full copy of the image per clone (qemu-img convert from an NBD export on
//!   the source), then the same guests boot from the copies and read.
//! - `copy-host`: a full copy per host, then a qcow2 overlay per clone.
//!
//! The measured time is the read phase (tree) or copy + read phase (copies); guest boot is left
//! out of both because here all hosts share this machine's 2 cores under TCG, which a real
//! cluster does not. `apply` wall time is recorded beside it. Bytes sent by the source are its
//! NIC's tx counter over the phase. Raw results go to `target/bench-provision/results.json`
//! one case at a time; the table is printed from them with the model's prediction.
//!
//! Environment: VMTHUNDER_BENCH_HOSTS (default "1,4,8,16,24"), _DEGREES ("1,2,4,H"), _CLONES
//! (2), _RATE ("200mbit"), _IMAGE_MIB (256), _READ_MIB (64), _MODES ("tree,copy-host,
//! copy-clone"), _REPORT (a results.json: print its table and measure nothing).

#[path = "../tests/common/testbed.rs"]
mod testbed;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Barrier;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use testbed::Testbed;
use vmthunder::backend::qmp::Qmp;

const BED: &str = "bp";
const NET: u8 = 88;
const IMAGE: &str = "/srv/images/bench.raw";
const NBD_PORT: u16 = 10900;

struct Config {
    hosts: Vec<usize>,
    degrees: Vec<String>,
    clones: u32,
    rate: String,
    image_mib: u64,
    read_mib: u64,
    modes: Vec<String>,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(format!("VMTHUNDER_BENCH_{name}")).unwrap_or_else(|_| default.into())
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect()
}

impl Config {
    fn from_env() -> Config {
        let num = |name: &str, default: &str| -> u64 {
            env_or(name, default)
                .parse()
                .unwrap_or_else(|_| panic!("VMTHUNDER_BENCH_{name}: not a number"))
        };
        Config {
            hosts: list(&env_or("HOSTS", "1,4,8,16,24"))
                .iter()
                .map(|h| h.parse().expect("VMTHUNDER_BENCH_HOSTS: numbers"))
                .collect(),
            degrees: list(&env_or("DEGREES", "1,2,4,H")),
            clones: num("CLONES", "2") as u32,
            rate: env_or("RATE", "200mbit"),
            image_mib: num("IMAGE_MIB", "256"),
            read_mib: num("READ_MIB", "64"),
            modes: list(&env_or("MODES", "tree,copy-host,copy-clone")),
        }
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn mtime(p: &Path) -> f64 {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64())
        .unwrap_or(f64::NAN)
}

/// Runs `argv` (bounded: 900 s); panics with its output unless it succeeds.
fn run(argv: &[&str]) -> String {
    let mut cmd = Command::new("timeout");
    cmd.arg("900").args(argv);
    checked(cmd, &argv.join(" "))
}

fn vmthunder(dir: &Path, args: &[&str]) -> f64 {
    let start = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmthunder"));
    cmd.args(args).current_dir(dir);
    checked(cmd, &format!("vmthunder {}", args.join(" ")));
    start.elapsed().as_secs_f64()
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

/// One guest of a case: its monitor socket and console file, as this machine sees them.
struct Guest {
    monitor: PathBuf,
    console: PathBuf,
}

impl Guest {
    /// Clone `n` whose files are in `dir` (`vm-<n>.qmp`, `vm-<n>.log`, as the qemu stack names
    /// them).
    fn in_dir(dir: &Path, n: u32) -> Guest {
        Guest {
            monitor: dir.join(format!("vm-{n}.qmp")),
            console: dir.join(format!("vm-{n}.log")),
        }
    }

    fn qmp(&self) -> Qmp {
        let stream = std::os::unix::net::UnixStream::connect(&self.monitor)
            .unwrap_or_else(|e| panic!("{}: {e}", self.monitor.display()));
        Qmp::start(stream, &self.monitor, Duration::from_secs(30)).unwrap()
    }

    /// Panics with the console if the guest reported a failure.
    fn assert_not_failed(&self) {
        let text = std::fs::read(&self.console).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        assert!(
            !text.contains("VMTHUNDER-FAILED"),
            "{}: {text}",
            self.console.display()
        );
    }
}

/// The source's bytes sent so far (its NIC's counter, headers included).
fn tx_bytes(tb: &Testbed) -> u64 {
    tb.in_ns("src", &["cat", "/sys/class/net/eth0/statistics/tx_bytes"])
        .trim()
        .parse()
        .unwrap()
}

fn console_has(p: &Path, what: &str) -> bool {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).contains(what))
        .unwrap_or(false)
}

fn wait_consoles(guests: &[Guest], what: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        let missing: Vec<&Guest> = guests
            .iter()
            .filter(|g| !console_has(&g.console, what))
            .collect();
        if missing.is_empty() {
            return;
        }
        for g in &missing {
            g.assert_not_failed();
        }
        assert!(
            start.elapsed() < limit,
            "{} of {} guests printed no {what} within {} s (first: {})",
            missing.len(),
            guests.len(),
            limit.as_secs(),
            missing[0].console.display()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Pauses each guest (QMP `stop`) as soon as it waits for the go, until `done`: a waiting TCG
/// guest still costs a few percent of a core, and 48 of them would starve the boots of the
/// rest of this 2-core machine. The go resumes them (`read_phase`).
fn pause_waiting(guests: &[Guest], done: &std::sync::atomic::AtomicBool) {
    use std::sync::atomic::Ordering;
    let mut paused = vec![false; guests.len()];
    let start = Instant::now();
    loop {
        let finished = done.load(Ordering::SeqCst);
        for (g, p) in guests.iter().zip(paused.iter_mut()) {
            if !*p && console_has(&g.console, "VMTHUNDER-WAITING") {
                g.qmp().execute("stop", json!({})).unwrap();
                *p = true;
            }
        }
        if finished || paused.iter().all(|&p| p) {
            return;
        }
        for g in guests {
            g.assert_not_failed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(1800),
            "guests still not waiting after 30 minutes"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// This machine's CPU time so far: (busy, all), in clock ticks, from /proc/stat.
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap())
        .collect();
    let all: u64 = fields.iter().sum();
    // idle and iowait
    (all - fields[3] - fields.get(4).copied().unwrap_or(0), all)
}

/// Gives every guest the go at once and waits for every read. Returns (seconds from the first
/// go to the last read's end, each guest's own read seconds).
fn read_phase(guests: &[Guest]) -> (f64, Vec<f64>, f64) {
    let barrier = Barrier::new(guests.len());
    let cpu_before = cpu_ticks();
    let sent: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = guests
            .iter()
            .map(|g| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut q = g.qmp();
                    barrier.wait();
                    let t = now();
                    q.execute("set_link", json!({"name": "net0", "up": false}))
                        .unwrap();
                    q.execute("cont", json!({})).unwrap();
                    t
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    wait_consoles(guests, "VMTHUNDER-READ ", Duration::from_secs(1800));
    let cpu_after = cpu_ticks();
    let busy = (cpu_after.0 - cpu_before.0) as f64 / (cpu_after.1 - cpu_before.1).max(1) as f64;
    let done: Vec<f64> = guests.iter().map(|g| mtime(&g.console)).collect();
    let first = sent.iter().cloned().fold(f64::INFINITY, f64::min);
    let last = done.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let each = sent.iter().zip(&done).map(|(s, d)| d - s).collect();
    (last - first, each, busy)
}

fn hosts_of(h: usize) -> Vec<String> {
    (1..=h).map(|i| format!("node{i:02}")).collect()
}

fn append(c: &Config) -> String {
    format!(
        "console=ttyS0 panic=-1 quiet no_timer_check vmthunder.name={{name}} vmthunder.read_mib={}",
        c.read_mib
    )
}

/// The cluster spec of a tree case: the bed's source and the first `h` hosts.
fn tree_spec(tb: &Testbed, c: &Config, h: usize, degree: usize) -> Value {
    let mut hosts = vec![json!({"name": "src", "address": tb.address("src")})];
    for n in hosts_of(h) {
        hosts.push(json!({"name": n, "address": tb.address(&n)}));
    }
    let image = format!("{}MiB", c.image_mib);
    json!({
        "version": 1,
        "cluster": "bench",
        "backend": { "stack": "qemu", "transport": "ssh", "root": "/var/lib/vmthunder",
                     "accel": "tcg", "ssh": tb.ssh() },
        "hosts": hosts,
        "images": [{ "name": "bench", "source_host": "src", "path": IMAGE, "format": "raw",
                     "size": image }],
        "tree": { "degree": degree },
        "cache": { "size": image },
        "clones": {
            "per_host": c.clones, "vcpus": 1, "memory": "128MiB", "cow_size": "64MiB",
            "boot": { "kernel": "/srv/boot/vmlinuz", "initrd": "/srv/boot/initrd.img",
                      "append": append(c) },
            "ready": { "line": "VMTHUNDER-WAITING", "timeout_secs": 1200 }
        }
    })
}

fn tree_case(tb: &Testbed, c: &Config, h: usize, degree: usize) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let spec = tree_spec(tb, c, h, degree);
    std::fs::write(
        dir.path().join("spec.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();
    let mut guests = Vec::new();
    for n in hosts_of(h) {
        let d = tb.on_host(&n, &format!("/var/lib/vmthunder/bench/{n}/bench"));
        for i in 0..c.clones {
            guests.push(Guest::in_dir(&d, i));
        }
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    let apply = std::thread::scope(|s| {
        s.spawn(|| pause_waiting(&guests, &done));
        let apply = vmthunder(dir.path(), &["apply", "-f", "spec.json", "--auto-approve"]);
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        apply
    });
    let before = tx_bytes(tb);
    let (read, each, busy) = read_phase(&guests);
    let sent = tx_bytes(tb) - before;
    let destroy = vmthunder(
        dir.path(),
        &["destroy", "-f", "spec.json", "--auto-approve"],
    );
    json!({"mode": "tree", "hosts": h, "degree": degree, "spec": spec, "apply_s": apply,
           "read_s": read, "each_read_s": each, "source_sent_bytes": sent,
           "destroy_s": destroy, "cpu_busy": busy})
}

/// Full copies: per clone (`per_clone`) or per host with qcow2 overlays, from an NBD export
/// of the image on the source; then the guests boot from them and read.
fn copy_case(tb: &Testbed, c: &Config, h: usize, per_clone: bool) -> Value {
    let work = "/tmp/bench-copy";
    let pidfile = tb.on_host("src", &format!("{work}/qsd.pid"));
    std::fs::create_dir_all(pidfile.parent().unwrap()).unwrap();
    let image = tb.on_host("src", IMAGE);
    let src = tb.address("src").to_string();
    let ns = |host: &str| format!("vmtb-{BED}-{host}");
    run(&[
        "ip",
        "netns",
        "exec",
        &ns("src"),
        "qemu-storage-daemon",
        "--blockdev",
        &format!("file,node-name=f,filename={},read-only=on", image.display()),
        "--nbd-server",
        &format!("addr.type=inet,addr.host={src},addr.port={NBD_PORT}"),
        "--export",
        "nbd,id=e,node-name=f,name=base",
        "--daemonize",
        "--pidfile",
        &pidfile.display().to_string(),
    ]);
    let nodes = hosts_of(h);
    let uri = format!("nbd://{src}:{NBD_PORT}/base");
    let before = tx_bytes(tb);
    let start = Instant::now();
    std::thread::scope(|s| {
        for n in &nodes {
            let d = tb.on_host(n, work);
            std::fs::create_dir_all(&d).unwrap();
            let copies: Vec<String> = if per_clone {
                (0..c.clones)
                    .map(|i| d.join(format!("disk-{i}.raw")).display().to_string())
                    .collect()
            } else {
                vec![d.join("base.raw").display().to_string()]
            };
            for to in copies {
                let (ns, uri) = (ns(n), uri.clone());
                s.spawn(move || {
                    run(&[
                        "ip", "netns", "exec", &ns, "qemu-img", "convert", "-f", "raw", "-O",
                        "raw", &uri, &to,
                    ])
                });
            }
        }
    });
    let copy = start.elapsed().as_secs_f64();
    let sent = tx_bytes(tb) - before;
    let qsd: String = std::fs::read_to_string(&pidfile).unwrap();
    run(&["kill", qsd.trim()]);
    // The guests: same machine settings as vmthunder's qemu stack, booting from the copies.
    let guest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/guest");
    let mut guests = Vec::new();
    for n in &nodes {
        let d = tb.on_host(n, work);
        for i in 0..c.clones {
            let disk = if per_clone {
                d.join(format!("disk-{i}.raw")).display().to_string()
            } else {
                let o = d.join(format!("overlay-{i}.qcow2")).display().to_string();
                let base = d.join("base.raw").display().to_string();
                run(&[
                    "qemu-img", "create", "-q", "-f", "qcow2", "-b", &base, "-F", "raw", &o,
                ]);
                o
            };
            let fmt = if per_clone { "raw" } else { "qcow2" };
            let g = Guest::in_dir(&d, i);
            let name = format!("bench-{n}-{i}");
            run(&[
                "ip",
                "netns",
                "exec",
                &ns(n),
                "qemu-system-x86_64",
                "-name",
                &name,
                "-accel",
                "tcg",
                "-machine",
                "q35",
                "-m",
                "128M",
                "-smp",
                "1",
                "-nodefaults",
                "-display",
                "none",
                "-daemonize",
                "-pidfile",
                &d.join(format!("vm-{i}.pid")).display().to_string(),
                "-qmp",
                &format!("unix:{},server=on,wait=off", g.monitor.display()),
                "-serial",
                &format!("file:{}", g.console.display()),
                "-kernel",
                &guest_dir.join("vmlinuz").display().to_string(),
                "-initrd",
                &guest_dir.join("initrd.img").display().to_string(),
                "-append",
                &append(c).replace("{name}", &name),
                "-drive",
                &format!("if=none,id=disk0,format={fmt},file={disk}"),
                "-device",
                "virtio-blk-pci,drive=disk0",
                "-netdev",
                "user,id=net0,restrict=on",
                "-device",
                "virtio-net-pci,netdev=net0",
            ]);
            guests.push(g);
        }
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    pause_waiting(&guests, &done);
    let (read, each, busy) = read_phase(&guests);
    for n in &nodes {
        let d = tb.on_host(n, work);
        for i in 0..c.clones {
            if let Ok(pid) = std::fs::read_to_string(d.join(format!("vm-{i}.pid"))) {
                let _ = Command::new("kill").arg(pid.trim()).status();
            }
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    for n in nodes.iter().map(String::as_str).chain(["src"]) {
        let _ = std::fs::remove_dir_all(tb.on_host(n, work));
    }
    let mode = if per_clone { "copy-clone" } else { "copy-host" };
    json!({"mode": mode, "hosts": h, "copy_s": copy, "read_s": copy + read,
           "local_read_s": read, "each_read_s": each, "source_sent_bytes": sent,
           "cpu_busy": busy})
}

fn degrees(c: &Config, h: usize) -> Vec<usize> {
    let set: BTreeSet<usize> = c
        .degrees
        .iter()
        .map(|d| {
            if d == "H" {
                h.max(1)
            } else {
                d.parse::<usize>()
                    .expect("VMTHUNDER_BENCH_DEGREES")
                    .min(h.max(1))
            }
        })
        .collect();
    set.into_iter().collect()
}

fn measure(c: &Config, out: &Path) -> Vec<Value> {
    let max = *c.hosts.iter().max().expect("VMTHUNDER_BENCH_HOSTS");
    let mut names = vec!["src".to_string()];
    names.extend(hosts_of(max));
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    eprintln!(
        "bench: bed of {} hosts, links {} each way",
        names.len(),
        c.rate
    );
    let tb = Testbed::up(BED, NET, &names, Some(&c.rate));
    let guest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/guest");
    assert!(
        guest.join("vmlinuz").exists(),
        "target/guest is missing: run `bash scripts/build-guest.sh`"
    );
    let image = tb.on_host("src", IMAGE);
    std::fs::create_dir_all(image.parent().unwrap()).unwrap();
    run(&[
        "dd",
        "if=/dev/urandom",
        &format!("of={}", image.display()),
        "bs=1M",
        &format!("count={}", c.image_mib),
        "status=none",
    ]);
    for n in &names[1..] {
        tb.stage(n, "/srv/boot/vmlinuz", &guest.join("vmlinuz"));
        tb.stage(n, "/srv/boot/initrd.img", &guest.join("initrd.img"));
    }
    let mut results = Vec::new();
    let save = |results: &Vec<Value>| {
        let doc = json!({"rate": c.rate, "image_mib": c.image_mib, "read_mib": c.read_mib,
                         "clones": c.clones, "results": results});
        std::fs::write(out, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    };
    for &h in &c.hosts {
        for mode in &c.modes {
            let cases: Vec<Value> = match mode.as_str() {
                "tree" => degrees(c, h)
                    .into_iter()
                    .map(|d| {
                        eprintln!("bench: tree H={h} degree={d}");
                        tree_case(&tb, c, h, d)
                    })
                    .collect(),
                "copy-host" | "copy-clone" => {
                    eprintln!("bench: {mode} H={h}");
                    vec![copy_case(&tb, c, h, mode == "copy-clone")]
                }
                other => panic!("VMTHUNDER_BENCH_MODES: unknown mode {other}"),
            };
            for r in cases {
                eprintln!(
                    "bench:   read {:.2} s, source sent {:.1} MiB",
                    r["read_s"].as_f64().unwrap(),
                    r["source_sent_bytes"].as_f64().unwrap() / 1048576.0
                );
                results.push(r);
                save(&results);
            }
        }
    }
    results
}

fn main() {
    let out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-provision");
    std::fs::create_dir_all(&out_dir).unwrap();
    let report_only = std::env::var("VMTHUNDER_BENCH_REPORT").ok();
    let path = match report_only {
        Some(p) => PathBuf::from(p),
        None => {
            let c = Config::from_env();
            let p = out_dir.join("results.json");
            measure(&c, &p);
            p
        }
    };
    let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    print!("{}", report(&doc));
}

/// The model's prediction and the lower bound of one measured case: (predicted, bound, depth).
fn predict(doc: &Value, r: &Value) -> (f64, f64, u32) {
    let rate = doc["rate"].as_str().unwrap();
    let w = doc["read_mib"].as_f64().unwrap() * 1048576.0;
    let estimate = json!({"link_rate": rate, "working_set": format!("{}MiB", doc["read_mib"])});
    let e: vmthunder::spec::Estimate = serde_json::from_value(estimate.clone()).unwrap();
    let link = vmthunder::model::Link::from_estimate(&e);
    let h = r["hosts"].as_u64().unwrap() as usize;
    match r["mode"].as_str().unwrap() {
        "tree" => {
            let mut spec = r["spec"].clone();
            spec["estimate"] = estimate;
            let spec =
                vmthunder::spec::Spec::from_slice(&serde_json::to_vec(&spec).unwrap()).unwrap();
            let image = &spec.images[0];
            let degree = vmthunder::model::degree(&spec);
            let (_, tree) = vmthunder::model::image_tree(&spec, image, degree, None);
            let reads = vmthunder::model::read_secs(&tree, w, &link);
            (
                reads.iter().copied().fold(0.0, f64::max),
                vmthunder::model::lower_bound(&tree, w, &link),
                tree.depth.iter().copied().max().unwrap_or(0),
            )
        }
        mode => {
            let clones = doc["clones"].as_u64().unwrap() as usize;
            let image = doc["image_mib"].as_f64().unwrap() * 1048576.0;
            let per_host = if mode == "copy-clone" { clones } else { 1 };
            let t = vmthunder::model::full_copy_secs(h * per_host, per_host, image, &link);
            (t, link.transfer(image * (h * per_host) as f64), 1)
        }
    }
}

/// The results as a Markdown table, with the goals' ratios after it.
fn report(doc: &Value) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let rate = doc["rate"].as_str().unwrap();
    let read_mib = doc["read_mib"].as_f64().unwrap();
    let _ = writeln!(
        s,
        "Links {rate} each way (tbf), image {} MiB, working set {read_mib} MiB read by each of {} clones per host.\n",
        doc["image_mib"], doc["clones"]
    );
    let _ = writeln!(s, "| H | how | degree | depth | measured | predicted | predicted / measured | lower bound | measured / bound | source sent | CPU busy | apply (boot incl.) |");
    let _ = writeln!(
        s,
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let results = doc["results"].as_array().unwrap();
    let mut tree_times: Vec<(u64, u64, f64)> = Vec::new();
    for r in results {
        let (pred, bound, depth) = predict(doc, r);
        let measured = r["read_s"].as_f64().unwrap();
        let h = r["hosts"].as_u64().unwrap();
        let mode = r["mode"].as_str().unwrap();
        let (how, degree) = match mode {
            "tree" => {
                let d = r["degree"].as_u64().unwrap();
                tree_times.push((h, d, measured));
                (
                    if d == h && h > 1 {
                        "star"
                    } else if d == 1 {
                        "chain"
                    } else {
                        "tree"
                    },
                    d.to_string(),
                )
            }
            "copy-host" => ("copy per host", "-".into()),
            _ => ("copy per clone", "-".into()),
        };
        let sent = r["source_sent_bytes"].as_f64().unwrap() / 1048576.0;
        let apply = r["apply_s"]
            .as_f64()
            .map_or("-".to_string(), |a| format!("{a:.1} s"));
        let busy = r["cpu_busy"]
            .as_f64()
            .map_or("-".to_string(), |b| format!("{:.0}%", b * 100.0));
        let _ = writeln!(
            s,
            "| {h} | {how} | {degree} | {} | {measured:.2} s | {pred:.2} s | {:.2} | {bound:.2} s | {:.2} | {sent:.0} MiB ({:.1} x W) | {busy} | {apply} |",
            if mode == "tree" { depth.to_string() } else { "-".into() },
            pred / measured,
            measured / bound,
            sent / read_mib,
        );
    }
    let single = tree_times.iter().find(|t| t.0 == 1).map(|t| t.2);
    let _ = writeln!(s);
    for d in [1u64, 2, 4] {
        let row: Vec<&(u64, u64, f64)> =
            tree_times.iter().filter(|t| t.1 == d && t.0 >= 4).collect();
        let (Some(first), Some(last)) = (row.first(), row.last()) else {
            continue;
        };
        let _ = write!(
            s,
            "degree {d}: H={} {:.2} s -> H={} {:.2} s ({:.2}x)",
            first.0,
            first.2,
            last.0,
            last.2,
            last.2 / first.2
        );
        if let Some(one) = single {
            let _ = write!(
                s,
                "; {:.2}x the single-host time ({one:.2} s)",
                last.2 / one
            );
        }
        let _ = writeln!(s);
    }
    // What "auto" would choose for the read phase alone (operations taking no time), against
    // the fastest degree measured.
    let mut hs: Vec<u64> = tree_times.iter().map(|t| t.0).filter(|&h| h > 1).collect();
    hs.dedup();
    for h in hs {
        let case = results
            .iter()
            .find(|r| r["mode"] == "tree" && r["hosts"] == h)
            .unwrap();
        let mut spec = case["spec"].clone();
        spec["tree"]["degree"] = json!("auto");
        spec["estimate"] = json!({
            "link_rate": rate, "working_set": format!("{read_mib}MiB"),
            "create": {"lv": 0, "session": 0, "cache": 0, "target": 0, "snapshot": 0, "domain": 0}
        });
        let spec = vmthunder::spec::Spec::from_slice(&serde_json::to_vec(&spec).unwrap()).unwrap();
        let (auto, _) = vmthunder::model::best_degree(&spec);
        let fastest = tree_times
            .iter()
            .filter(|t| t.0 == h)
            .min_by(|a, b| a.2.total_cmp(&b.2))
            .unwrap();
        let _ = writeln!(
            s,
            "H={h}: degree auto picks {auto}; the fastest measured was degree {} ({:.2} s)",
            fastest.1, fastest.2
        );
    }
    let stars: Vec<String> = tree_times
        .iter()
        .filter(|t| t.0 == t.1 && t.0 > 1)
        .map(|t| format!("H={} {:.1} s", t.0, t.2))
        .collect();
    if !stars.is_empty() {
        let _ = writeln!(s, "star: {}", stars.join(", "));
    }
    s
}
