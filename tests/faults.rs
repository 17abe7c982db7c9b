//! The executor under faults, on the qemu stack with real relays and TCG guests: vmthunder
//! killed with SIGKILL at many points of an apply and of a destroy, and interrupted with
//! SIGINT once (finish what runs) and twice (stop waiting). After each, the next run must
//! converge with a correct state and no duplicate or orphaned process or file.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// `vmthunder <args> --json` started in the cluster's directory, its events read line by line.
struct Running {
    child: Child,
    events: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Running {
    fn start(c: &Cluster, args: &[&str]) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vmthunder"))
            .args(args)
            .args(["--auto-approve", "--json"])
            .current_dir(c.path())
            .env_remove("VMTHUNDER_SPEC")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON event ({e}): {line}"));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        Running {
            child,
            events,
            seen: Vec::new(),
        }
    }

    /// Reads events until `stop` says so; false if the run ended first. Bounded in time.
    fn until(&mut self, mut stop: impl FnMut(&[Value]) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline {
            match self.events.recv_timeout(Duration::from_secs(1)) {
                Ok(v) => {
                    self.seen.push(v);
                    if stop(&self.seen) {
                        return true;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return false,
            }
        }
        panic!("no trigger within 300 s; events: {:#?}", self.seen);
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Waits for the exit (bounded), collecting every remaining event.
    fn finish(mut self) -> (Option<i32>, Vec<Value>) {
        let deadline = Instant::now() + Duration::from_secs(300);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "vmthunder did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(v) = self.events.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(v);
        }
        (status.code(), self.seen)
    }
}

fn of_type<'a>(events: &'a [Value], t: &str) -> impl Iterator<Item = &'a Value> {
    let t = t.to_string();
    events.iter().filter(move |e| e["type"] == t.as_str())
}

fn count(events: &[Value], t: &str) -> usize {
    of_type(events, t).count()
}

fn started(events: &[Value], kind: &str) -> bool {
    of_type(events, "apply_start").any(|e| e["hook"]["kind"] == kind)
}

/// What a converged cluster looks like on this machine: its files and its processes.
#[derive(Debug, PartialEq)]
struct World {
    files: BTreeSet<String>,
    /// (pid file, pid) for every process of the cluster; each must be the one its file names.
    processes: BTreeSet<String>,
}

fn world(c: &Cluster) -> World {
    let files: BTreeSet<String> = c.files().into_iter().collect();
    let mut processes = BTreeSet::new();
    for pid in c.processes() {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        // The pid file a relay or guest was started with.
        let pidfile = cmd
            .split(' ')
            .find(|a| a.ends_with(".pid"))
            .map(|a| a.trim_start_matches("pidfile=").to_string());
        let owner = pidfile
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .map(|p| p.trim().to_string());
        let name = pidfile
            .as_deref()
            .map(|f| f.rsplit('/').take(3).collect::<Vec<_>>().join("<"))
            .unwrap_or_else(|| format!("no pid file: {cmd}"));
        let mark = if owner.as_deref() == Some(pid.to_string().as_str()) {
            "owner"
        } else {
            "STRAY"
        };
        assert!(
            processes.insert(format!("{name} {mark}")),
            "two processes for {name}: a duplicate ({cmd})"
        );
    }
    World { files, processes }
}

fn converges(c: &Cluster, expected: &World) {
    let out = c.apply();
    assert!(out.status.success(), "{}", text(&out));
    let plan = c.run(&["plan", "-f", "spec.json", "--detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    assert!(!c.path().join("state/t.json.journal").exists());
    assert_eq!(&world(c), expected);
}

fn destroy_converges(c: &Cluster) {
    let out = c.run(&["destroy", "-f", "spec.json", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(c.files(), Vec::<String>::new());
    assert_eq!(c.processes(), Vec::<u32>::new());
    assert_eq!(c.state("t")["resources"], serde_json::json!([]));
}

type Trigger = (&'static str, fn(&[Value]) -> bool);

/// The two tests take turns: each boots TCG guests on every core of a small machine. Side by
/// side (with the rest of CI before them) the kill test failed once in CI, cause not seen
/// (the log was cut) and not reproduced in three runs here; a likely one is a monitor starved
/// past the refresh's 5 s read timeout, which makes an object unknown and the plan exit 2.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn kill_9_at_any_point_then_apply_converges() {
    let _turn = one_at_a_time();
    // img0 -> node01, node02; node01 -> node03; one booting guest per host: 20 operations.
    let c = Cluster::new(&spec(41, 3, 2, 1, true));
    let out = c.apply();
    assert!(out.status.success(), "{}", text(&out));
    let expected = world(&c);
    assert_eq!(expected.processes.len(), 4 + 3, "{expected:#?}");
    assert!(expected.processes.iter().all(|p| p.ends_with("owner")));
    destroy_converges(&c);

    let apply_points: [Trigger; 10] = [
        ("the first start", |e| count(e, "apply_start") >= 1),
        ("2 completed", |e| count(e, "apply_complete") >= 2),
        ("5 completed", |e| count(e, "apply_complete") >= 5),
        ("a session starting", |e| started(e, "session")),
        ("a cache starting", |e| started(e, "cache")),
        ("a relay's target starting", |e| {
            of_type(e, "apply_start").any(|s| s["hook"]["address"] == "target.node01.base")
        }),
        ("a snapshot starting", |e| started(e, "snapshot")),
        ("a guest booting", |e| started(e, "domain")),
        ("12 completed", |e| count(e, "apply_complete") >= 12),
        ("a guest ready, others booting", |e| {
            of_type(e, "apply_complete").any(|s| s["hook"]["kind"] == "domain")
        }),
    ];
    let destroy_points: [Trigger; 3] = [
        ("the first delete", |e| count(e, "apply_start") >= 1),
        ("3 deleted", |e| count(e, "apply_complete") >= 3),
        ("12 deleted", |e| count(e, "apply_complete") >= 12),
    ];
    for (i, (what, trigger)) in apply_points.iter().enumerate() {
        eprintln!("=== kill -9 during apply at: {what}");
        let mut run = Running::start(&c, &["apply", "-f", "spec.json"]);
        assert!(run.until(trigger), "apply ended before {what}");
        run.signal("-KILL");
        let (code, _) = run.finish();
        assert_eq!(code, None, "killed by a signal");
        // The state (with its journal) loads, whatever the instant.
        let list = c.run(&["state", "list", "-f", "spec.json"]);
        assert!(list.status.success(), "{}", text(&list));
        converges(&c, &expected);
        if let Some((what, trigger)) = destroy_points.get(i) {
            eprintln!("=== kill -9 during destroy at: {what}");
            let mut run = Running::start(&c, &["destroy", "-f", "spec.json"]);
            assert!(run.until(trigger), "destroy ended before {what}");
            run.signal("-KILL");
            run.finish();
        }
        destroy_converges(&c);
    }
}

#[test]
fn ctrl_c_once_finishes_running_operations_twice_stops_waiting() {
    let _turn = one_at_a_time();
    let c = Cluster::new(&spec(42, 3, 2, 1, true));

    // Once, while guests boot: nothing new starts, running operations finish and are recorded.
    let mut run = Running::start(&c, &["apply", "-f", "spec.json"]);
    assert!(run.until(|e| started(e, "domain")));
    run.signal("-INT");
    let (code, events) = run.finish();
    assert_eq!(code, Some(130), "{events:#?}");
    let at = events
        .iter()
        .position(|e| e["type"] == "interrupt")
        .expect("an interrupt event");
    assert_eq!(events[at]["hard"], false);
    let running = events[at]["running"].as_u64().unwrap() as usize;
    assert!(running >= 1);
    let after = &events[at..];
    assert_eq!(
        count(after, "apply_start"),
        0,
        "nothing starts after Ctrl-C"
    );
    assert_eq!(
        count(after, "apply_complete") + count(after, "apply_errored"),
        running,
        "every running operation finishes and is reported"
    );
    let summary = events.last().unwrap();
    assert_eq!(summary["type"], "change_summary");
    assert_eq!(summary["changes"]["interrupted"], "graceful");
    assert!(summary["changes"]["not_started"].as_u64().unwrap() > 0);
    // Everything reported complete is in the state file itself (the journal is folded in).
    assert!(!c.path().join("state/t.json.journal").exists());
    let recorded: BTreeSet<String> = c.state("t")["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["address"].as_str().unwrap().to_string())
        .collect();
    for e in of_type(&events, "apply_complete") {
        assert!(recorded.contains(e["hook"]["address"].as_str().unwrap()));
    }
    let out = c.apply();
    assert!(out.status.success(), "{}", text(&out));
    let expected = world(&c);
    destroy_converges(&c);

    // Twice, while guests boot: the wait stops at once, the state is saved, the next apply
    // adopts the abandoned guests rather than starting a second copy.
    let mut run = Running::start(&c, &["apply", "-f", "spec.json"]);
    assert!(run.until(|e| started(e, "domain")));
    let t = Instant::now();
    run.signal("-INT");
    std::thread::sleep(Duration::from_millis(100));
    run.signal("-INT");
    let (code, events) = run.finish();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "a second Ctrl-C stops waiting"
    );
    assert_eq!(code, Some(130));
    assert!(of_type(&events, "interrupt").any(|e| e["hard"] == true));
    let summary = events.last().unwrap();
    assert_eq!(summary["changes"]["interrupted"], "hard");
    assert!(!c.path().join("state/t.json.journal").exists());
    converges(&c, &expected);
    destroy_converges(&c);
}

/// What a kill while QEMU starts leaves: a process under the guest's pid file whose monitor
/// is not up yet, and no domain in state. The next apply waits for it, then stops it and
/// boots the clone, instead of failing on the missing monitor (seen once in CI at "a guest
/// booting"). The stand-in is a process that names the pid file, as QEMU's command line does.
#[test]
fn a_create_meets_a_guest_still_starting_under_its_pid_file() {
    let _turn = one_at_a_time();
    let c = Cluster::new(&spec(43, 1, 2, 1, true));
    let out = c.apply();
    assert!(out.status.success(), "{}", text(&out));
    let expected = world(&c);
    let pidfile = c
        .files()
        .into_iter()
        .find(|f| f.ends_with("/vm-0.pid"))
        .expect("the guest's pid file");
    let monitor = pidfile.replace("vm-0.pid", "vm-0.qmp");
    assert!(std::path::Path::new(&monitor).exists(), "{monitor}");
    let guest = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    assert!(Command::new("kill")
        .args(["-9", &guest])
        .status()
        .unwrap()
        .success());
    while std::path::Path::new(&format!("/proc/{guest}")).exists() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let rm = c.run(&["state", "rm", "-f", "spec.json", "domain.node01"]);
    assert!(rm.status.success(), "{}", text(&rm));
    // Runs until stopped; its command line names the pid file (the cluster's drop stops it
    // if the test fails).
    let mut starting = Command::new("tail")
        .args(["-f", &pidfile])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::fs::write(&pidfile, format!("{}\n", starting.id())).unwrap();
    let _ = std::fs::remove_file(&monitor);

    let out = c.apply();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        starting.try_wait().unwrap().is_some(),
        "the process under the pid file was stopped"
    );
    let plan = c.run(&["plan", "-f", "spec.json", "--detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    assert_eq!(world(&c), expected);
    destroy_converges(&c);
}
