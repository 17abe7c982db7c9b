//! `vmthunder output`, `ssh` and `console`, run as the real binary against states a `sim`
//! apply records (it records objects, addresses included, without touching any machine).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn vmthunder(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmthunder"));
    c.current_dir(dir)
        .env_remove("VMTHUNDER_SPEC")
        .env("NO_COLOR", "1");
    c
}

fn run(dir: &Path, args: &[&str]) -> Output {
    let o = vmthunder(dir).args(args).output().unwrap();
    eprintln!(
        "$ vmthunder {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(dir: &Path, args: &[&str]) -> Output {
    let o = run(dir, args);
    assert!(o.status.success(), "vmthunder {args:?}: {}", stderr(&o));
    o
}

fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

/// A sim cluster of three hosts (img0 the source, two with 2 clones each) on network `lab`,
/// with a login key, in a scratch directory; `backend` is merged into the sim backend.
fn cluster(cluster: &str, backend: Value, networks: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(
        keys.join("id_test.pub"),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests test@vmthunder\n",
    )
    .unwrap();
    std::fs::write(keys.join("id_test"), "not a real private key\n").unwrap();
    let mut b = json!({"stack": "sim"});
    for (k, v) in backend.as_object().unwrap() {
        b[k] = v.clone();
    }
    let mut spec = json!({
        "version": 1,
        "cluster": cluster,
        "backend": b,
        "estimate": {"create": {"domain": 0, "session": 0, "cache": 0, "lv": 0, "target": 0,
                                "snapshot": 0, "seed": 0, "bridge": 0, "vxlan": 0}},
        "hosts": [
            {"name": "img0", "address": "10.0.0.1"},
            {"name": "node01", "address": "10.0.1.1"},
            {"name": "node02", "address": "10.0.1.2"}
        ],
        "images": [{"name": "base", "source_host": "img0", "path": "/images/base.qcow2",
                    "size": "1GiB"}],
        "clones": {"per_host": 2, "ssh_authorized_keys": ["keys/id_test.pub"]}
    });
    if networks {
        spec["networks"] = json!([{"name": "lab", "cidr": "10.60.0.0/24"}]);
        spec["clones"]["networks"] = json!(["lab"]);
    }
    std::fs::write(
        dir.path().join("spec.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();
    dir
}

fn apply(dir: &Path) {
    ok(dir, &["apply", "-f", "spec.json", "--auto-approve"]);
}

/// Checks `doc` against the checked-in `schemas/output.schema.json`.
fn conforms(doc: &Value) {
    let schema: Value =
        serde_json::from_slice(&std::fs::read(repo().join("schemas/output.schema.json")).unwrap())
            .unwrap();
    let v = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = v
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

const NAMES: [&str; 4] = [
    "base-node01-0",
    "base-node01-1",
    "base-node02-0",
    "base-node02-1",
];

#[test]
fn checked_in_output_schema_matches_the_types() {
    let checked_in = std::fs::read(repo().join("schemas/output.schema.json")).unwrap();
    assert!(
        checked_in == vmthunder::cli::output::schema_bytes(),
        "schemas/output.schema.json is stale: run `cargo run -- schema output > schemas/output.schema.json`"
    );
    assert_eq!(ok(&repo(), &["schema", "output"]).stdout, checked_in);
}

#[test]
fn output_before_any_apply_is_empty_with_a_hint() {
    let dir = cluster("fresh", json!({}), true);
    let d = dir.path();
    let o = ok(d, &["output", "-f", "spec.json"]);
    assert_eq!(stdout(&o), "");
    assert!(
        stderr(&o).to_lowercase().contains("nothing applied yet")
            && stderr(&o).contains("vmthunder apply -f spec.json"),
        "{}",
        stderr(&o)
    );
    let doc = json_of(&ok(d, &["output", "-f", "spec.json", "--json"]));
    conforms(&doc);
    assert_eq!(
        doc,
        json!({"format_version": "1.0", "cluster": "fresh", "clones": []})
    );
    let inv = json_of(&ok(
        d,
        &["output", "-f", "spec.json", "--format", "ansible-inventory"],
    ));
    assert_eq!(
        inv,
        json!({"_meta": {"hostvars": {}}, "all": {"children": []}})
    );
    // Reading takes no lock and writes nothing.
    assert!(!d.join("state").exists());
}

#[test]
fn output_shows_every_clone_as_table_json_and_inventory() {
    let dir = cluster("lab", json!({}), true);
    let d = dir.path();
    apply(d);
    let state: Value =
        serde_json::from_slice(&std::fs::read(d.join("state/lab.json")).unwrap()).unwrap();
    let recorded = |addr: &str| -> Value {
        state["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["address"] == addr)
            .unwrap()["desired"]
            .clone()
    };

    // JSON: every domain, in address order, with what state records.
    let doc = json_of(&ok(d, &["output", "-f", "spec.json", "--json"]));
    conforms(&doc);
    assert_eq!(doc["format_version"], "1.0");
    assert_eq!(doc["cluster"], "lab");
    let clones = doc["clones"].as_array().unwrap();
    let names: Vec<&str> = clones.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, NAMES);
    for c in clones {
        let address = c["address"].as_str().unwrap();
        let desired = recorded(address);
        assert_eq!(
            address,
            format!("domain.{}.base.{}", c["host"].as_str().unwrap(), c["n"])
        );
        assert_eq!(c["image"], "base");
        assert_eq!(c["uuid"], desired["uuid"]);
        assert_eq!(c["mac"], desired["mac"]);
        let cidr = desired["nics"][0]["address"].as_str().unwrap();
        assert!(
            cidr.starts_with("10.60.0.") && cidr.ends_with("/24"),
            "{cidr}"
        );
        assert_eq!(
            c["addresses"],
            json!([{"network": "lab", "address": cidr.trim_end_matches("/24"), "cidr": cidr}])
        );
        assert_eq!(c["status"], "ready");
        // The sim stack observes nothing and runs no guest.
        assert_eq!(c["observed_status"], Value::Null);
        assert_eq!(c["console"], Value::Null);
    }
    // The schema is not vacuous.
    let schema: Value =
        serde_json::from_slice(&std::fs::read(repo().join("schemas/output.schema.json")).unwrap())
            .unwrap();
    let v = jsonschema::validator_for(&schema).unwrap();
    let mut bad = doc.clone();
    bad["clones"][0]["status"] = "sideways".into();
    assert!(!v.is_valid(&bad));
    let mut bad = doc.clone();
    bad["clones"][0]["address"] = "vm.node01".into();
    assert!(!v.is_valid(&bad));

    // The table: a header and one aligned row per clone, no colour off a terminal.
    let o = ok(d, &["output", "-f", "spec.json"]);
    let text = stdout(&o);
    assert!(!text.contains('\x1b'), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    let header = lines[0];
    assert!(header.starts_with("NAME"), "{header}");
    let status_col = header.find("STATUS").unwrap();
    let address_col = header.find("ADDRESS").unwrap();
    for (line, c) in lines[1..].iter().zip(clones) {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            words,
            [
                c["name"].as_str().unwrap(),
                c["host"].as_str().unwrap(),
                "base",
                c["addresses"][0]["address"].as_str().unwrap(),
                "ready"
            ],
            "{line}"
        );
        assert_eq!(line.find("ready"), Some(status_col), "{text}");
        assert_eq!(line.find("10.60.0."), Some(address_col), "{text}");
    }
    let o = ok(d, &["--color", "always", "output", "-f", "spec.json"]);
    assert!(
        stdout(&o).contains("\x1b[32mready\x1b[0m"),
        "{}",
        stdout(&o)
    );

    // Ansible's inventory: groups per image and host, and how to log in to each clone.
    let inv = json_of(&ok(
        d,
        &["output", "-f", "spec.json", "--format", "ansible-inventory"],
    ));
    assert_eq!(
        inv["all"]["children"],
        json!(["image_base", "host_node01", "host_node02"])
    );
    assert_eq!(inv["image_base"]["hosts"], json!(NAMES));
    assert_eq!(inv["host_node01"]["hosts"], json!(&NAMES[..2]));
    assert_eq!(inv["host_node02"]["hosts"], json!(&NAMES[2..]));
    let key = d.join("keys/id_test").display().to_string();
    let known_hosts = d.join("state/lab.known_hosts").display().to_string();
    for c in clones {
        let vars = &inv["_meta"]["hostvars"][c["name"].as_str().unwrap()];
        assert_eq!(
            vars,
            &json!({
                "ansible_host": c["addresses"][0]["address"],
                "ansible_user": "vmthunder",
                "ansible_ssh_private_key_file": key,
                "ansible_ssh_common_args": format!(
                    "-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={known_hosts}"
                ),
                "vmthunder_host": c["host"],
                "vmthunder_image": "base",
                "vmthunder_uuid": c["uuid"],
                "vmthunder_mac": c["mac"],
                "vmthunder_status": "ready",
            })
        );
    }
}

/// The words a POSIX shell makes of `line`.
fn shell_words(line: &str) -> Vec<String> {
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("printf '%s\\0' {line}"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{line}");
    String::from_utf8(o.stdout)
        .unwrap()
        .split_terminator('\0')
        .map(String::from)
        .collect()
}

fn first_address(dir: &Path, name: &str) -> String {
    let doc = json_of(&ok(dir, &["output", "-f", "spec.json", "--json"]));
    doc["clones"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()["addresses"][0]["address"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn ssh_goes_straight_to_a_clone_with_the_local_transport() {
    let dir = cluster("lab", json!({}), true);
    let d = dir.path();
    apply(d);
    let ip = first_address(d, "base-node01-0");
    let key = d.join("keys/id_test").display().to_string();
    let known_hosts = d.join("state/lab.known_hosts").display().to_string();
    let o = ok(d, &["ssh", "-f", "spec.json", "base-node01-0", "--print"]);
    assert_eq!(
        shell_words(stdout(&o).trim_end()),
        [
            "ssh",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            &format!("UserKnownHostsFile={known_hosts}"),
            "-o",
            "ConnectTimeout=10",
            "-i",
            &key,
            "-o",
            "IdentitiesOnly=yes",
            "-l",
            "vmthunder",
            "--",
            &ip,
        ]
    );
    // By address, with another user and key, and a remote command.
    let ip1 = first_address(d, "base-node01-1");
    let o = ok(
        d,
        &[
            "ssh",
            "-f",
            "spec.json",
            "domain.node01.base.1",
            "-l",
            "root",
            "-i",
            "other key",
            "--print",
            "--",
            "uname",
            "-a",
        ],
    );
    let words = shell_words(stdout(&o).trim_end());
    assert_eq!(
        &words[words.len() - 10..],
        [
            "-i",
            "other key",
            "-o",
            "IdentitiesOnly=yes",
            "-l",
            "root",
            "--",
            &ip1,
            "uname",
            "-a"
        ]
    );
}

#[test]
fn ssh_reaches_a_clone_through_its_host_with_the_ssh_transport() {
    let dir = cluster(
        "remote",
        json!({
            "transport": "ssh",
            "root": "/srv/vmthunder",
            "ssh": {"user": "root", "identity_file": "/etc/vmt/host key", "known_hosts": "/etc/vmt/known_hosts"}
        }),
        true,
    );
    let d = dir.path();
    // The sim stack connects to no host, over ssh neither.
    apply(d);
    let ip = first_address(d, "base-node02-1");
    let o = ok(d, &["ssh", "-f", "spec.json", "base-node02-1", "--print"]);
    let words = shell_words(stdout(&o).trim_end());
    let proxy = words
        .iter()
        .find_map(|w| w.strip_prefix("ProxyCommand="))
        .unwrap_or_else(|| panic!("no ProxyCommand in {words:?}"));
    // ssh runs it with the user's shell: these are its words, the host's settings all there.
    assert_eq!(
        shell_words(proxy),
        [
            "ssh",
            "-i",
            "/etc/vmt/host key",
            "-o",
            "UserKnownHostsFile=/etc/vmt/known_hosts",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ConnectTimeout=10",
            "-W",
            "%h:%p",
            "--",
            "root@10.0.1.2"
        ]
    );
    assert_eq!(&words[words.len() - 4..], ["-l", "vmthunder", "--", &ip]);
    // The inventory goes the same way.
    let inv = json_of(&ok(
        d,
        &["output", "-f", "spec.json", "--format", "ansible-inventory"],
    ));
    let args = inv["_meta"]["hostvars"]["base-node02-1"]["ansible_ssh_common_args"]
        .as_str()
        .unwrap();
    assert!(
        shell_words(args).contains(&format!("ProxyCommand={proxy}")),
        "{args}"
    );
}

#[test]
fn ssh_runs_inside_the_hosts_namespace_with_netns() {
    let dir = cluster("ns", json!({"netns": true}), true);
    let d = dir.path();
    apply(d);
    let ip = first_address(d, "base-node02-0");
    let o = ok(d, &["ssh", "-f", "spec.json", "base-node02-0", "--print"]);
    let words = shell_words(stdout(&o).trim_end());
    assert_eq!(&words[..5], ["ip", "netns", "exec", "vmt-ns-node02", "ssh"]);
    assert_eq!(words.last().unwrap(), &ip);
    assert!(!words.iter().any(|w| w.starts_with("ProxyCommand")));
    let o = ok(
        d,
        &["output", "-f", "spec.json", "--format", "ansible-inventory"],
    );
    assert!(
        stderr(&o).contains("ip netns exec vmt-ns-"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn unknown_clones_are_refused_with_close_names() {
    let dir = cluster("lab", json!({}), true);
    let d = dir.path();
    let o = run(d, &["ssh", "-f", "spec.json", "base-node01-0", "--print"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("nothing applied yet"), "{}", stderr(&o));
    apply(d);
    for cmd in ["ssh", "console"] {
        let o = run(d, &[cmd, "-f", "spec.json", "base-node1-0"]);
        assert_eq!(o.status.code(), Some(1));
        let e = stderr(&o);
        assert!(
            e.contains("no clone named `base-node1-0`")
                && e.contains("did you mean `base-node01-0`"),
            "{e}"
        );
        assert!(e.contains("vmthunder output -f spec.json"), "{e}");
        assert_eq!(stdout(&o), "");
        let o = run(d, &[cmd, "-f", "spec.json", "nothing-like-it-at-all"]);
        assert_eq!(o.status.code(), Some(1));
        assert!(
            stderr(&o).contains("(4 recorded;") && !stderr(&o).contains("did you mean"),
            "{}",
            stderr(&o)
        );
    }
    // An address of another kind is no clone either.
    let o = run(d, &["ssh", "-f", "spec.json", "snapshot.node01.base.0"]);
    assert!(
        stderr(&o).contains("did you mean `domain.node01.base.0`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn clones_without_a_network_have_no_address_to_reach() {
    let dir = cluster("flat", json!({}), false);
    let d = dir.path();
    apply(d);
    let o = run(d, &["ssh", "-f", "spec.json", "base-node01-0", "--print"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("has no network address") && stderr(&o).contains("clones.networks"),
        "{}",
        stderr(&o)
    );
    let o = ok(d, &["output", "-f", "spec.json"]);
    assert!(
        stdout(&o).lines().nth(1).unwrap().contains("  -  "),
        "{}",
        stdout(&o)
    );
    let o = ok(
        d,
        &["output", "-f", "spec.json", "--format", "ansible-inventory"],
    );
    assert!(
        stderr(&o).contains("4 clones have no address"),
        "{}",
        stderr(&o)
    );
    let inv = json_of(&o);
    assert!(inv["_meta"]["hostvars"]["base-node01-0"]
        .get("ansible_host")
        .is_none());
    let doc = json_of(&ok(d, &["output", "-f", "spec.json", "--json"]));
    conforms(&doc);
    assert_eq!(doc["clones"][0]["addresses"], json!([]));
}

#[test]
fn console_on_the_sim_stack_says_there_is_none() {
    let dir = cluster("lab", json!({}), true);
    let d = dir.path();
    apply(d);
    let o = run(d, &["console", "-f", "spec.json", "base-node01-0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o)
            .contains("has no console: the sim stack records objects without running any guest"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stdout(&o), "");
}

/// A state the sim stack recorded, read as a qemu cluster's whose guest logged to a file: the
/// console is read through the local transport (what the qemu stack observes is a path).
#[test]
fn console_prints_and_follows_the_log() {
    let dir = cluster("lab", json!({}), true);
    let d = dir.path();
    apply(d);
    let log = d.join("vm-0.log");
    std::fs::write(&log, "one\ntwo\nthree\n").unwrap();
    let state_file = d.join("state/lab.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    for r in state["resources"].as_array_mut().unwrap() {
        if r["address"] == "domain.node01.base.0" {
            r["observed"] =
                json!({"console": log.display().to_string(), "status": "running", "pid": 1});
        }
    }
    std::fs::write(&state_file, serde_json::to_vec(&state).unwrap()).unwrap();
    let mut spec: Value =
        serde_json::from_slice(&std::fs::read(d.join("spec.json")).unwrap()).unwrap();
    spec["backend"]["stack"] = "qemu".into();
    spec.as_object_mut().unwrap().remove("estimate");
    std::fs::write(d.join("spec.json"), serde_json::to_vec(&spec).unwrap()).unwrap();

    let o = ok(d, &["console", "-f", "spec.json", "base-node01-0"]);
    assert_eq!(stdout(&o), "one\ntwo\nthree\n");
    let o = ok(
        d,
        &[
            "console",
            "-f",
            "spec.json",
            "base-node01-0",
            "--lines",
            "2",
        ],
    );
    assert_eq!(stdout(&o), "two\nthree\n");
    // What output shows of it.
    let doc = json_of(&ok(d, &["output", "-f", "spec.json", "--json"]));
    assert_eq!(doc["clones"][0]["console"], log.display().to_string());
    assert_eq!(doc["clones"][0]["observed_status"], "running");
    let table = stdout(&ok(d, &["output", "-f", "spec.json"]));
    assert!(table.contains("ready (running)"), "{table}");
    // A clone whose log is not there (its guest never started).
    let o = run(d, &["console", "-f", "spec.json", "base-node01-1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));

    // --follow: the last line, then what is appended, until Ctrl-C (SIGINT), exit 0.
    let mut child = vmthunder(d)
        .args([
            "console",
            "-f",
            "spec.json",
            "base-node01-0",
            "--follow",
            "-n",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !String::from_utf8_lossy(&seen).contains(want) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(b) => seen.extend(b),
                Err(_) => panic!(
                    "no {want:?} from console --follow; got {:?}",
                    String::from_utf8_lossy(&seen)
                ),
            }
        }
    };
    wait_for("three\n");
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(b"four\n").unwrap();
    wait_for("four\n");
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    reader.join().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(String::from_utf8_lossy(&seen), "three\nfour\n");
}
