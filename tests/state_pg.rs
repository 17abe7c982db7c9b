//! Recorded state in PostgreSQL, on private real servers (tests/common/pg.rs). Root only; needs
//! PostgreSQL 15 (`bash scripts/setup.sh` installs it).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::pg::Pg;

// --- harness self-test ---
// The tests of tests/common/pg.rs itself, down to "end of harness self-test".

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.display().to_string();
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

/// Whether `pid` is a live process (not a zombie).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .map(|(_, r)| r.trim_start().chars().next()),
            Some(Some('Z' | 'X'))
        ),
        Err(_) => false,
    }
}

/// Start, superuser over the socket, passwords and TLS over TCP, and a drop that leaves
/// neither a process nor the temp dir.
#[test]
fn harness_starts_authenticates_and_cleans_up() {
    let begun = Instant::now();
    let pg = Pg::start();
    eprintln!("started in {:?} on port {}", begun.elapsed(), pg.port());
    assert_eq!(pg.psql("postgres", "select 1"), "1");
    assert_eq!(pg.psql("postgres", "show fsync"), "on");

    pg.create_user("alice", "s3cret pass'word");
    pg.create_db("app");
    pg.grant_db("app", "alice");
    let tcp = format!("host=127.0.0.1 port={} user=alice dbname=app", pg.port());
    let who = "select current_user || ',' || current_database()";
    assert_eq!(
        pg.psql_conn(&tcp, Some("s3cret pass'word"), who).unwrap(),
        "alice,app"
    );
    let wrong = pg.psql_conn(&tcp, Some("wrong"), "select 1").unwrap_err();
    assert!(wrong.contains("password authentication failed"), "{wrong}");
    let none = pg.psql_conn(&tcp, None, "select 1").unwrap_err();
    assert!(none.contains("password"), "{none}");
    // Over the socket only the superuser is trusted.
    let sock_alice = format!(
        "host={} port={} user=alice dbname=app",
        pg.socket_dir().display(),
        pg.port()
    );
    assert!(pg.psql_conn(&sock_alice, None, "select 1").is_err());

    // TLS: required, and verified against the harness's CA for localhost and 127.0.0.1.
    let ssl_of_me = "select ssl from pg_stat_ssl where pid = pg_backend_pid()";
    let require = format!("{tcp} sslmode=require");
    assert_eq!(
        pg.psql_conn(&require, Some("s3cret pass'word"), ssl_of_me)
            .unwrap(),
        "t"
    );
    let plain = format!("{tcp} sslmode=disable");
    assert_eq!(
        pg.psql_conn(&plain, Some("s3cret pass'word"), ssl_of_me)
            .unwrap(),
        "f"
    );
    for host in ["localhost", "127.0.0.1"] {
        let verify = format!(
            "host={host} port={} user=alice dbname=app sslmode=verify-full sslrootcert={}",
            pg.port(),
            pg.ca_cert().display()
        );
        assert_eq!(
            pg.psql_conn(&verify, Some("s3cret pass'word"), ssl_of_me)
                .unwrap(),
            "t",
            "{verify}"
        );
    }

    // The URLs the harness hands out work with libpq.
    assert_eq!(
        pg.psql_conn(&pg.url_socket("app"), None, who).unwrap(),
        "postgres,app"
    );
    assert_eq!(
        pg.psql_conn(&pg.url_tcp("alice", "app"), Some("s3cret pass'word"), who)
            .unwrap(),
        "alice,app"
    );

    let dir = pg.dir().to_path_buf();
    let procs = pg.processes();
    assert!(procs.len() > 1, "postmaster and children: {procs:?}");
    assert!(!processes_mentioning(&dir).is_empty());
    let begun = Instant::now();
    drop(pg);
    eprintln!("stopped and removed in {:?}", begun.elapsed());
    assert_eq!(processes_mentioning(&dir), Vec::<u32>::new());
    let left: Vec<u32> = procs.into_iter().filter(|&p| alive(p)).collect();
    assert_eq!(left, Vec::<u32>::new(), "server processes left");
    assert!(!dir.exists(), "{} is left", dir.display());
}

/// `stop` makes the server unreachable (and is idempotent); `restart` brings the same data
/// back on the same port, after crash recovery.
#[test]
fn harness_stop_and_restart() {
    let pg = Pg::start();
    pg.psql(
        "postgres",
        "create table t (x int); insert into t values (42)",
    );
    let url = pg.url_socket("postgres");
    pg.stop();
    pg.stop();
    assert!(!pg.is_running());
    let err = pg.psql_conn(&url, None, "select 1").unwrap_err();
    assert!(
        err.contains("No such file") || err.contains("connect"),
        "{err}"
    );
    let begun = Instant::now();
    pg.restart();
    eprintln!("restarted in {:?}", begun.elapsed());
    assert_eq!(pg.psql("postgres", "select x from t"), "42");
}

/// A panic in a test still stops the server and removes its directory.
#[test]
fn harness_cleans_up_after_a_panic() {
    let dir = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let pg = Pg::start();
        *dir.lock().unwrap() = Some(pg.dir().to_path_buf());
        pg.psql("postgres", "select no_such_column");
    });
    assert!(result.is_err(), "the bad SQL panics");
    let dir = dir.into_inner().unwrap().expect("started");
    assert_eq!(processes_mentioning(&dir), Vec::<u32>::new());
    assert!(!dir.exists(), "{} is left", dir.display());
}

/// Set in the environment of the test process that `harness_watchdog_cleans_up_after_sigkill`
/// starts and kills.
const CHILD_ENV: &str = "VMT_PG_HARNESS_CHILD";

/// Only in that child (a no-op otherwise): starts a server, says where, and waits to be killed.
#[test]
fn harness_watchdog_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let pg = Pg::start();
    println!("PG {} {}", pg.pid().unwrap(), pg.dir().display());
    std::thread::sleep(Duration::from_secs(120));
}

/// A test process killed with SIGKILL (no unwinding, no drop) leaves no server and no temp
/// dir: the watchdog cleans up.
#[test]
fn harness_watchdog_cleans_up_after_sigkill() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["harness_watchdog_child", "--exact", "--nocapture"])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let Some(line) = stdout
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("PG "))
    else {
        let out = child.wait_with_output().unwrap();
        panic!(
            "the child test process started no server:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (pid, dir) = line[3..].split_once(' ').unwrap();
    let (pid, dir): (u32, PathBuf) = (pid.parse().unwrap(), dir.into());
    assert!(alive(pid));
    child.kill().unwrap();
    child.wait().unwrap();
    let begun = Instant::now();
    while (alive(pid) || dir.exists()) && begun.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("watchdog cleaned up in {:?}", begun.elapsed());
    assert!(!alive(pid), "postmaster {pid} survived its test process");
    assert_eq!(processes_mentioning(&dir), Vec::<u32>::new());
    assert!(!dir.exists(), "{} is left", dir.display());
}

// --- end of harness self-test ---

// --- the postgres state store ---
// One server for these tests (its watchdog stops it when the test process exits); each test
// has its own database.

use std::sync::OnceLock;

use common::{text, Cluster};
use serde_json::{json, Value};

static SERVER: OnceLock<Pg> = OnceLock::new();

fn server() -> &'static Pg {
    SERVER.get_or_init(Pg::start)
}

/// A fresh database `name`, made ready with `vmthunder state init`; its socket URL.
fn database(name: &str) -> String {
    let pg = server();
    pg.create_db(name);
    let url = pg.url_socket(name);
    let out = Command::new(env!("CARGO_BIN_EXE_vmthunder"))
        .args(["state", "init", "--state", &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Created the vmthunder schema"),
        "{}",
        text(&out)
    );
    url
}

/// A fresh database `name` owned by a new role `user`, made ready by that role over TCP; its
/// TCP URL (without the password).
fn database_of(name: &str, user: &str, password: &str) -> String {
    let pg = server();
    pg.create_db(name);
    pg.create_user(user, password);
    pg.grant_db(name, user);
    let url = pg.url_tcp(user, name);
    let out = Command::new(env!("CARGO_BIN_EXE_vmthunder"))
        .args(["state", "init", "--state", &url])
        .env("PGPASSWORD", password)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    url
}

/// How many resources a first apply of the cluster's spec creates (`plan --json`).
fn planned(c: &Cluster) -> usize {
    let out = c.run(&["plan", "-f", "spec.json", "--json", "--state", "empty.json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["summary"]["add"].as_u64().unwrap() as usize
}

/// `psql` on database `db` (one value per line).
fn sql(db: &str, q: &str) -> String {
    server().psql(db, q)
}

/// A sim cluster of `hosts` nodes with `clones` each; a domain takes `domain_secs`.
fn sim(hosts: usize, clones: u32, domain_secs: f64) -> Value {
    let mut hs = vec![json!({"name": "img0", "address": "10.9.0.1"})];
    for i in 1..=hosts {
        hs.push(json!({"name": format!("node{i:02}"), "address": format!("10.9.0.{}", 10 + i)}));
    }
    let zero = json!({"lv": 0, "session": 0, "cache": 0, "target": 0, "snapshot": 0,
                      "domain": domain_secs});
    json!({
        "version": 1, "cluster": "t", "backend": {"stack": "sim"},
        "estimate": {"working_set": 0, "create": zero,
                     "delete": {"lv": 0, "session": 0, "cache": 0, "target": 0, "snapshot": 0, "domain": 0}},
        "hosts": hs,
        "images": [{"name": "base", "source_host": "img0", "path": "/images/base.qcow2", "size": "1GiB"}],
        "tree": {"degree": 2},
        "clones": {"per_host": clones},
    })
}

/// `vmthunder ARGS` in the cluster's directory with the state in `url`.
fn at(c: &Cluster, url: &str, args: &[&str]) -> std::process::Output {
    c.run_env(&[("VMTHUNDER_STATE", url)], args)
}

/// `plan --detailed-exitcode` against `url`: its exit code.
fn drift_check(c: &Cluster, url: &str) -> Option<i32> {
    at(c, url, &["plan", "-f", "spec.json", "--detailed-exitcode"])
        .status
        .code()
}

/// How many resources the current state in database `db` records, and its serial.
fn recorded(db: &str) -> (usize, u64) {
    let row = sql(
        db,
        "SELECT serial || ' ' || convert_from(doc, 'UTF8') FROM vmthunder.states WHERE cluster = 't' ORDER BY serial DESC LIMIT 1",
    );
    let (serial, doc) = row.split_once(' ').expect("a state row");
    let v: Value = serde_json::from_str(doc).unwrap();
    (
        v["resources"].as_array().unwrap().len(),
        serial.parse().unwrap(),
    )
}

/// `vmthunder ARGS --auto-approve --json` started in the background with the state in `url`,
/// and its events as they come.
fn spawn_json(
    c: &Cluster,
    url: &str,
    args: &[&str],
) -> (std::process::Child, std::sync::mpsc::Receiver<Value>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmthunder"))
        .args(args)
        .args(["--auto-approve", "--json"])
        .current_dir(c.path())
        .env("VMTHUNDER_STATE", url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if tx.send(v).is_err() {
                    return;
                }
            }
        }
    });
    (child, rx)
}

/// Waits (at most 120 s) until `n` operations of the run completed.
fn completed(rx: &std::sync::mpsc::Receiver<Value>, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut done = 0;
    while done < n {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "only {done} of {n} operations completed in 120 s"
        );
        match rx.recv_timeout(left) {
            Ok(v) if v["type"] == "apply_complete" => done += 1,
            Ok(_) => {}
            Err(e) => panic!("the run ended after {done} of {n} operations: {e}"),
        }
    }
}

/// Waits for `child` at most 120 s; its exit code (None: killed by a signal).
fn wait(mut child: std::process::Child) -> (Option<i32>, String) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (st.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the run did not end within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_sim_apply_is_recorded_in_the_database_and_seen_by_a_second_process() {
    let url = database("sim_apply");
    let c = Cluster::new(&sim(3, 2, 0.0));
    let expected = planned(&c);
    let out = at(&c, &url, &["apply", "-f", "spec.json", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out));
    let (n, serial) = recorded("sim_apply");
    assert_eq!(n, expected, "{}", text(&out));
    assert_eq!(serial, 1);
    assert_eq!(
        sql("sim_apply", "SELECT count(*) FROM vmthunder.journal"),
        "0"
    );
    assert_eq!(
        sql("sim_apply", "SELECT count(*) FROM vmthunder.locks"),
        "0"
    );
    assert!(!c.path().join("state").exists(), "no file state was made");
    // Another process (the CI view) agrees with spec and state.
    assert_eq!(drift_check(&c, &url), Some(0));
    let list = at(&c, &url, &["state", "list"]);
    assert_eq!(text(&list).lines().filter(|l| l.contains('.')).count(), n);
    // The spec changed: the CI view sees it.
    std::fs::write(
        c.path().join("spec.json"),
        serde_json::to_vec(&sim(3, 3, 0.0)).unwrap(),
    )
    .unwrap();
    assert_eq!(drift_check(&c, &url), Some(2));
}

#[test]
fn a_qemu_apply_is_recorded_in_the_database_and_drift_by_hand_is_seen() {
    let url = database("qemu_apply");
    let c = Cluster::new(&common::spec(63, 2, 2, 1, false));
    let expected = planned(&c);
    // TLS keys are secrets: the database takes them only sealed.
    let out = at(&c, &url, &["apply", "-f", "spec.json", "--auto-approve"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("TLS (backend.tls) records the private keys")
            && text(&out).contains("nothing was changed"),
        "{}",
        text(&out)
    );
    assert_eq!(c.processes(), Vec::<u32>::new());
    let key = key_file(c.path(), "state.key");
    let key = key.to_str().unwrap();
    let at = |c: &Cluster, url: &str, args: &[&str]| {
        c.run_env(
            &[("VMTHUNDER_STATE", url), ("VMTHUNDER_STATE_KEY_FILE", key)],
            args,
        )
    };
    let drift_check = |c: &Cluster, url: &str| {
        at(c, url, &["plan", "-f", "spec.json", "--detailed-exitcode"])
            .status
            .code()
    };
    let out = at(&c, &url, &["apply", "-f", "spec.json", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!c.path().join("state").exists(), "no file state was made");
    let (n, _) = recorded("qemu_apply");
    assert_eq!(n, expected);
    let docs = sql(
        "qemu_apply",
        "SELECT string_agg(convert_from(doc, 'UTF8'), '') FROM vmthunder.states",
    );
    assert!(docs.contains("\"private_key\":{\"data\""), "{docs}");
    assert!(!docs.contains("PRIVATE KEY"), "a key in the clear: {docs}");
    assert_eq!(drift_check(&c, &url), Some(0));
    // A relay killed by hand: a second process's refresh finds it.
    let pid = std::fs::read_to_string(c.path().join(".vmthunder/t/node01/base/relay.pid")).unwrap();
    assert!(Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap()
        .success());
    assert_eq!(drift_check(&c, &url), Some(2));
    let out = at(&c, &url, &["apply", "-f", "spec.json", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(drift_check(&c, &url), Some(0));
    let out = at(&c, &url, &["destroy", "-f", "spec.json", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(c.processes(), Vec::<u32>::new());
    assert_eq!(recorded("qemu_apply").0, 0);
}

#[test]
fn a_second_apply_fails_at_once_naming_the_first() {
    let url = database("concurrent");
    let c = Cluster::new(&sim(2, 2, 1.5));
    let expected = planned(&c);
    let (first, events) = spawn_json(&c, &url, &["apply", "-f", "spec.json"]);
    completed(&events, 1);
    let t = Instant::now();
    let second = at(&c, &url, &["apply", "-f", "spec.json", "--auto-approve"]);
    let waited = t.elapsed();
    assert_eq!(second.status.code(), Some(1), "{}", text(&second));
    let shown = text(&second);
    assert!(shown.contains("state is locked"), "{shown}");
    assert!(shown.contains(&format!("(pid {})", first.id())), "{shown}");
    assert!(shown.contains("operation apply"), "{shown}");
    assert!(
        waited < Duration::from_secs(5),
        "failed at once: {waited:?}"
    );
    // With --lock-timeout it waits for the first, then finds nothing to do.
    let third = at(
        &c,
        &url,
        &[
            "apply",
            "-f",
            "spec.json",
            "--auto-approve",
            "--lock-timeout",
            "2m",
        ],
    );
    assert!(third.status.success(), "{}", text(&third));
    assert!(text(&third).contains("No changes"), "{}", text(&third));
    let (code, err) = wait(first);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(recorded("concurrent").0, expected);
    assert_eq!(drift_check(&c, &url), Some(0));
}

#[test]
fn a_kill_9_mid_apply_loses_no_record_and_the_next_apply_converges() {
    let url = database("kill9");
    let c = Cluster::new(&sim(3, 2, 0.4));
    let expected = planned(&c);
    let (mut run, events) = spawn_json(&c, &url, &["apply", "-f", "spec.json"]);
    completed(&events, 8);
    run.kill().unwrap();
    let (code, _) = wait(run);
    assert_eq!(code, None, "killed by a signal");
    let journaled = sql("kill9", "SELECT count(*) FROM vmthunder.journal");
    assert!(
        journaled.parse::<u32>().unwrap() >= 2,
        "header and records: {journaled}"
    );
    // The journal replays for every reader, and the killed holder's lock went with it.
    let list = at(&c, &url, &["state", "list"]);
    assert!(list.status.success(), "{}", text(&list));
    let listed = text(&list).lines().filter(|l| l.contains('.')).count();
    assert!(listed >= 8, "{listed} recorded");
    let plan = at(&c, &url, &["plan", "-f", "spec.json", "--refresh=false"]);
    let to_add = expected - listed;
    assert!(
        text(&plan).contains(&format!("Plan: {to_add} to add,")),
        "{}",
        text(&plan)
    );
    let out = at(&c, &url, &["apply", "-f", "spec.json", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sql("kill9", "SELECT count(*) FROM vmthunder.journal"), "0");
    assert_eq!(recorded("kill9").0, expected);
    assert_eq!(drift_check(&c, &url), Some(0));
}

#[test]
fn force_unlock_ends_the_holders_session_and_the_holder_stops() {
    let url = database("unlock");
    let c = Cluster::new(&sim(2, 3, 1.0));
    let (holder, events) = spawn_json(&c, &url, &["apply", "-f", "spec.json"]);
    completed(&events, 1);
    let locked = at(&c, &url, &["plan", "-f", "spec.json"]);
    let shown = text(&locked);
    let id = shown
        .split("force-unlock ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no lock ID in: {shown}"))
        .trim_end_matches('`')
        .to_string();
    // Alive on this machine: refused without --force.
    let refused = at(&c, &url, &["force-unlock", &id]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused).contains("still running on this machine"),
        "{}",
        text(&refused)
    );
    let forced = at(&c, &url, &["force-unlock", &id, "--force"]);
    assert!(forced.status.success(), "{}", text(&forced));
    // Its session is gone, so is its right to write: it stops at its next record.
    let (code, err) = wait(holder);
    assert_eq!(code, Some(1), "{err}");
    let out = at(&c, &url, &["apply", "-f", "spec.json", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(drift_check(&c, &url), Some(0));
}

/// `head -c 32 /dev/urandom | base64` into `dir/name`, mode 0600.
fn key_file(dir: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let out = Command::new("sh")
        .args(["-c", "head -c 32 /dev/urandom | base64"])
        .output()
        .unwrap();
    let p = dir.join(name);
    std::fs::write(&p, &out.stdout).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

#[test]
fn push_then_pull_round_trips_and_another_lineage_is_refused() {
    let url = database("push");
    let c = Cluster::new(&sim(2, 1, 0.0));
    let out = c.apply();
    assert!(out.status.success(), "{}", text(&out));
    let file = std::fs::read(c.path().join("state/t.json")).unwrap();
    let push = c.run(&[
        "state",
        "push",
        "-f",
        "spec.json",
        "--state",
        &url,
        "state/t.json",
    ]);
    assert!(push.status.success(), "{}", text(&push));
    let pull = c.run(&["state", "pull", "--state", &url]);
    assert!(pull.status.success(), "{}", text(&pull));
    assert_eq!(
        pull.stdout, file,
        "pull gives back the pushed file byte for byte"
    );
    let again = c.run(&[
        "state",
        "push",
        "-f",
        "spec.json",
        "--state",
        &url,
        "state/t.json",
    ]);
    assert!(
        text(&again).contains("already holds serial 1"),
        "{}",
        text(&again)
    );
    // The team now works from the database.
    assert_eq!(drift_check(&c, &url), Some(0));

    // Another cluster named t (another lineage) is not pushed over it.
    let other = Cluster::new(&sim(1, 1, 0.0));
    assert!(other.apply().status.success());
    let refused = other.run(&[
        "state",
        "push",
        "-f",
        "spec.json",
        "--state",
        &url,
        "state/t.json",
    ]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused).contains("another state of cluster \"t\""),
        "{}",
        text(&refused)
    );
    assert!(
        text(&refused).contains("nothing was changed"),
        "{}",
        text(&refused)
    );
    let pull = c.run(&["state", "pull", "--state", &url]);
    assert_eq!(pull.stdout, file, "unchanged");
    // An older version of the same lineage is refused too.
    assert!(at(
        &c,
        &url,
        &[
            "apply",
            "-f",
            "spec.json",
            "--auto-approve",
            "--replace",
            "domain.node01.base.0"
        ]
    )
    .status
    .success());
    let stale = c.run(&[
        "state",
        "push",
        "-f",
        "spec.json",
        "--state",
        &url,
        "state/t.json",
    ]);
    assert!(text(&stale).contains("newer version"), "{}", text(&stale));
    // Pulled into a file, it is the file state again.
    let back = c.run(&["state", "pull", "--state", &url, "-o", "state/t.json"]);
    assert!(back.status.success(), "{}", text(&back));
    let plan = c.run(&["plan", "-f", "spec.json", "--detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
}

/// The file state of cluster t with a CHAP secret in its first session, as the linux stack
/// records one.
fn with_secret(c: &Cluster, secret: &str) {
    let path = c.path().join("state/t.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let r = v["resources"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|r| r["kind"] == "session")
        .unwrap();
    r["observed"]["chap_secret"] = json!(secret);
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[test]
fn secrets_are_sealed_in_the_database_and_in_files_and_keys_are_checked() {
    let url = database("secrets");
    let c = Cluster::new(&sim(1, 1, 0.0));
    assert!(c.apply().status.success());
    let secret = "5ec7e7c4a9b0d1e2f3a4b5c6";
    with_secret(&c, secret);
    let k1 = key_file(c.path(), "k1");
    let k2 = key_file(c.path(), "k2");
    let k1s = k1.display().to_string();
    let k2s = k2.display().to_string();

    // Without a key, the database refuses to hold it.
    let refused = c.run(&["state", "push", "--state", &url, "state/t.json"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused).contains("configure a state key"),
        "{}",
        text(&refused)
    );
    assert_eq!(sql("secrets", "SELECT count(*) FROM vmthunder.states"), "0");

    let push = c.run(&[
        "state",
        "push",
        "--state",
        &url,
        "--state-key-file",
        &k1s,
        "state/t.json",
    ]);
    assert!(push.status.success(), "{}", text(&push));
    let stored = sql(
        "secrets",
        "SELECT convert_from(doc, 'UTF8') FROM vmthunder.states",
    );
    assert!(!stored.contains(secret), "in clear in the database");
    assert!(stored.contains("aes-256-gcm"), "{stored}");
    // The key is checked: none, the wrong one.
    let none = c.run(&["state", "list", "--state", &url]);
    assert_eq!(none.status.code(), Some(1));
    assert!(
        text(&none).contains("no key is configured"),
        "{}",
        text(&none)
    );
    let wrong = c.run(&["state", "list", "--state", &url, "--state-key-file", &k2s]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        text(&wrong).contains("but the configured key is"),
        "{}",
        text(&wrong)
    );
    // `state show` never prints it.
    let show = c.run(&[
        "state",
        "show",
        "--state",
        &url,
        "--state-key-file",
        &k1s,
        "session.node01.base",
    ]);
    assert!(show.status.success(), "{}", text(&show));
    assert!(!text(&show).contains(secret) && text(&show).contains("(sensitive)"));
    // A file pulled with the key keeps it sealed.
    let pulled = c.run(&[
        "state",
        "pull",
        "--state",
        &url,
        "--state-key-file",
        &k1s,
        "-o",
        "pulled.json",
    ]);
    assert!(pulled.status.success(), "{}", text(&pulled));
    let pulled = std::fs::read_to_string(c.path().join("pulled.json")).unwrap();
    assert!(!pulled.contains(secret) && pulled.contains("aes-256-gcm"));

    // Rekey: the new key opens both kept versions, the old one neither.
    let rekey = c.run(&[
        "state",
        "rekey",
        "--state",
        &url,
        "--state-key-file",
        &k1s,
        "--new-key-file",
        &k2s,
    ]);
    assert!(rekey.status.success(), "{}", text(&rekey));
    assert!(text(&rekey).contains("Sealed 1 secret"), "{}", text(&rekey));
    let old = c.run(&["state", "list", "--state", &url, "--state-key-file", &k1s]);
    assert_eq!(old.status.code(), Some(1), "{}", text(&old));
    let new = c.run(&["state", "list", "--state", &url, "--state-key-file", &k2s]);
    assert!(new.status.success(), "{}", text(&new));
    let versions = sql("secrets", "SELECT count(*) FROM vmthunder.states");
    assert_eq!(versions, "2");
    let stored = sql(
        "secrets",
        "SELECT string_agg(convert_from(doc, 'UTF8'), '') FROM vmthunder.states",
    );
    assert!(!stored.contains(secret));
    let id = |text: &str| -> String {
        text.split("\"key\":\"")
            .nth(1)
            .unwrap()
            .chars()
            .take(16)
            .collect()
    };
    assert_eq!(
        stored.matches(&id(&stored)).count(),
        2,
        "both versions under one key"
    );
    assert_ne!(id(&stored), id(&pulled), "the old key opens nothing");
}

#[test]
fn bad_connections_are_named_and_change_nothing() {
    let pg = server();
    let tcp = database_of("bad", "vmt", "right-password");
    let url = pg.url_socket("bad");
    let c = Cluster::new(&sim(1, 1, 0.0));
    let wrong = c.run_env(
        &[("PGPASSWORD", "wrong")],
        &[
            "apply",
            "-f",
            "spec.json",
            "--auto-approve",
            "--state",
            &tcp,
        ],
    );
    assert_eq!(wrong.status.code(), Some(1));
    let shown = text(&wrong);
    assert!(
        shown.contains(&format!("127.0.0.1:{}", pg.port())),
        "{shown}"
    );
    assert!(shown.contains("password"), "{shown}");
    // A password on the command line is refused before connecting.
    let visible = c.run(&[
        "plan",
        "-f",
        "spec.json",
        "--state",
        &format!(
            "postgresql://vmt:right-password@127.0.0.1:{}/bad",
            pg.port()
        ),
    ]);
    assert!(text(&visible).contains("PGPASSWORD"), "{}", text(&visible));
    assert!(
        !text(&visible).contains("right-password"),
        "{}",
        text(&visible)
    );
    // Nobody listens.
    let closed = c.run(&[
        "plan",
        "-f",
        "spec.json",
        "--state",
        "postgresql://vmt@127.0.0.1:1/bad",
    ]);
    assert_eq!(closed.status.code(), Some(1));
    assert!(text(&closed).contains("127.0.0.1:1"), "{}", text(&closed));
    assert!(
        text(&closed).contains("is the server running"),
        "{}",
        text(&closed)
    );
    // A database without the schema.
    pg.create_db("bare");
    let bare = c.run(&[
        "apply",
        "-f",
        "spec.json",
        "--auto-approve",
        "--state",
        &pg.url_socket("bare"),
    ]);
    assert_eq!(bare.status.code(), Some(1));
    assert!(
        text(&bare).contains("no vmthunder schema"),
        "{}",
        text(&bare)
    );
    assert!(text(&bare).contains("state init"), "{}", text(&bare));
    assert_eq!(
        sql(
            "bare",
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'vmthunder'"
        ),
        "0"
    );
    // A key file others can read.
    let key = key_file(c.path(), "k");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let exposed = at(
        &c,
        &url,
        &[
            "apply",
            "-f",
            "spec.json",
            "--auto-approve",
            "--state-key-file",
            &key.display().to_string(),
        ],
    );
    assert!(text(&exposed).contains("chmod 600"), "{}", text(&exposed));
    // The linux stack makes CHAP secrets: with no key the apply is refused before any host.
    let mut linux = sim(1, 1, 0.0);
    linux["backend"] = json!({"stack": "linux", "volume_group": "vg0"});
    std::fs::write(
        c.path().join("linux.json"),
        serde_json::to_vec(&linux).unwrap(),
    )
    .unwrap();
    let out = at(&c, &url, &["apply", "-f", "linux.json", "--auto-approve"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("records a CHAP secret"),
        "{}",
        text(&out)
    );
    // Nothing of all that reached the database.
    assert_eq!(sql("bad", "SELECT count(*) FROM vmthunder.states"), "0");
    assert_eq!(sql("bad", "SELECT count(*) FROM vmthunder.journal"), "0");
    assert!(!c.path().join("state").exists());
    // The right password, from a password file, works.
    let pgpass = c.path().join("pgpass");
    std::fs::write(
        &pgpass,
        format!("127.0.0.1:{}:bad:vmt:right-password\n", pg.port()),
    )
    .unwrap();
    std::fs::set_permissions(&pgpass, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let ok = c.run_env(
        &[("PGPASSFILE", &pgpass.display().to_string())],
        &[
            "apply",
            "-f",
            "spec.json",
            "--auto-approve",
            "--state",
            &tcp,
        ],
    );
    assert!(ok.status.success(), "{}", text(&ok));
}

#[test]
fn tls_to_the_server_is_used_as_the_url_asks() {
    let pg = server();
    let _ = database_of("tls", "tlsuser", "tls-password");
    let c = Cluster::new(&sim(1, 1, 0.0));
    let env = [("PGPASSWORD", "tls-password")];
    let base = format!("postgresql://tlsuser@localhost:{}/tls", pg.port());
    let ca = pg.ca_cert().display().to_string();
    let sessions = || {
        pg.log()
            .lines()
            .filter(|l| l.contains("connection authorized: user=tlsuser"))
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
    };
    for (query, tls) in [
        ("sslmode=disable".to_string(), false),
        ("sslmode=require".to_string(), true),
        (format!("sslmode=verify-full&sslrootcert={ca}"), true),
        (format!("sslmode=verify-ca&sslrootcert={ca}"), true),
    ] {
        let before = sessions().len();
        let out = c.run_env(
            &env,
            &[
                "plan",
                "-f",
                "spec.json",
                "--state",
                &format!("{base}?{query}"),
            ],
        );
        assert!(out.status.success(), "{query}: {}", text(&out));
        let after = sessions();
        assert!(after.len() > before, "{query}: no session logged");
        assert!(
            after[before..]
                .iter()
                .all(|l| l.contains("SSL enabled") == tls),
            "{query}: {:?}",
            &after[before..]
        );
    }
    // A CA that did not sign the server's certificate: refused, naming the server.
    let out = c.run_env(
        &env,
        &[
            "plan",
            "-f",
            "spec.json",
            "--state",
            &format!("{base}?sslmode=verify-full&sslrootcert=/etc/ssl/certs/ca-certificates.crt"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains(&format!("localhost:{}", pg.port())),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).to_lowercase().contains("certificate"),
        "{}",
        text(&out)
    );
}
