//! Runs the real binary on the shipped examples and on bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use vmthunder::graph::Graph;
use vmthunder::plan::{self, Options};
use vmthunder::spec::Spec;
use vmthunder::state::{Lock, State};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A scratch directory holding a copy of examples/ and schemas/, as a user's checkout would,
/// and the public key `scripts/build-cloud-image.sh` makes for examples/cloud.json.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("target/cloud-image");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(
        keys.join("id_ed25519.pub"),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPlaceholderKeyForTheExampleOnly vmthunder-example\n",
    )
    .unwrap();
    for sub in ["examples", "schemas"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        for e in std::fs::read_dir(repo().join(sub)).unwrap() {
            let e = e.unwrap();
            if e.path().is_file() {
                std::fs::copy(e.path(), dir.path().join(sub).join(e.file_name())).unwrap();
            }
        }
    }
    dir
}

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmthunder"))
        .args(args)
        .current_dir(dir)
        .env_remove("VMTHUNDER_SPEC")
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Records in `dir/state/` what a successful apply of `spec` would.
fn write_applied_state(dir: &Path, spec: &Path) -> State {
    let spec = Spec::load(&dir.join(spec)).unwrap();
    let empty = State::empty(&spec.cluster);
    let graph = Graph::build(&spec, &empty).unwrap();
    let p = plan::diff(graph, &empty, &Options::default(), None).unwrap();
    let mut state = p.applied(&empty);
    state
        .persist(&dir.join(format!("state/{}.json", spec.cluster)))
        .unwrap();
    state
}

fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    v.sort();
    assert!(!v.is_empty());
    v
}

#[test]
fn shipped_examples_validate_plan_and_reference_the_schema() {
    let dir = workdir();
    for ex in examples() {
        let name = format!("examples/{}", ex.file_name().unwrap().to_string_lossy());
        let o = run(dir.path(), &["validate", "-f", &name]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        // From the spec alone: the ssh examples' hosts do not exist here, and discovering
        // their capacity would wait out three connection timeouts per example (30 s each;
        // discovery is tested on the SSH test bed).
        let o = run(
            dir.path(),
            &[
                "plan",
                "-f",
                &name,
                "--detailed-exitcode",
                "--refresh=false",
            ],
        );
        assert_eq!(o.status.code(), Some(2), "{name}: {}", stderr(&o));
        let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&ex).unwrap()).unwrap();
        assert_eq!(doc["$schema"], "../schemas/cluster.schema.json", "{name}");
    }
}

#[test]
fn checked_in_schema_matches_the_types() {
    let checked_in = std::fs::read(repo().join("schemas/cluster.schema.json")).unwrap();
    assert!(
        checked_in == vmthunder::cli::schema_bytes(),
        "schemas/cluster.schema.json is stale: run `cargo run -- schema > schemas/cluster.schema.json`"
    );
    let o = run(&repo(), &["schema"]);
    assert_eq!(o.stdout, checked_in);
    let events = std::fs::read(repo().join("schemas/events.schema.json")).unwrap();
    assert!(
        events == vmthunder::cli::events::schema_bytes(),
        "schemas/events.schema.json is stale: run `cargo run -- schema events > schemas/events.schema.json`"
    );
    assert_eq!(run(&repo(), &["schema", "events"]).stdout, events);
    for kind in ["plan", "state"] {
        let file = format!("schemas/{kind}.schema.json");
        let checked_in = std::fs::read(repo().join(&file)).unwrap();
        assert!(
            checked_in == run(&repo(), &["schema", kind]).stdout,
            "{file} is stale: run `cargo run -- schema {kind} > {file}`"
        );
    }
}

/// Checks `doc` against the checked-in schema `schemas/<kind>.schema.json`.
fn conforms(kind: &str, doc: &serde_json::Value) {
    let schema: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo().join(format!("schemas/{kind}.schema.json"))).unwrap(),
    )
    .unwrap();
    let v = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = v
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{kind}: {errors:#?}");
}

#[test]
fn real_plans_states_and_events_conform_to_their_schemas() {
    let dir = workdir();
    let o = run(dir.path(), &["plan", "-f", "examples/lab.json", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    conforms("plan", &serde_json::from_slice(&o.stdout).unwrap());

    let o = run(
        dir.path(),
        &[
            "apply",
            "-f",
            "examples/sim.json",
            "--auto-approve",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    for line in stdout(&o).lines() {
        conforms("events", &serde_json::from_str(line).unwrap());
    }
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state/sim.json")).unwrap()).unwrap();
    conforms("state", &state);
    let o = run(
        dir.path(),
        &["plan", "-f", "examples/sim.json", "--destroy", "--json"],
    );
    conforms("plan", &serde_json::from_slice(&o.stdout).unwrap());

    // The schemas are not vacuous: a wrong document fails.
    let schema: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo().join("schemas/state.schema.json")).unwrap())
            .unwrap();
    let v = jsonschema::validator_for(&schema).unwrap();
    let mut bad = state.clone();
    bad["resources"][0]["status"] = "sideways".into();
    assert!(!v.is_valid(&bad));
}

/// Every line is an event of the checked-in schema's types, and reads back unchanged.
fn events_of(o: &Output) -> Vec<serde_json::Value> {
    let schema: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo().join("schemas/events.schema.json")).unwrap())
            .unwrap();
    let types: Vec<&str> = schema["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["properties"]["type"]["const"].as_str().unwrap())
        .collect();
    stdout(o)
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let typed: vmthunder::cli::events::Event =
                serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert_eq!(serde_json::to_value(&typed).unwrap(), v, "{line}");
            assert_eq!(v["format_version"], "1.0");
            assert!(types.contains(&v["type"].as_str().unwrap()), "{line}");
            v
        })
        .collect()
}

#[test]
fn sim_apply_and_destroy_print_json_events_and_keep_no_journal() {
    let dir = workdir();
    let args = [
        "apply",
        "-f",
        "examples/sim.json",
        "--auto-approve",
        "--json",
    ];
    let needs_approval = run(dir.path(), &["apply", "-f", "examples/sim.json", "--json"]);
    assert_eq!(needs_approval.status.code(), Some(1));
    let diag = events_of(&needs_approval);
    assert_eq!(diag.len(), 1);
    assert_eq!(diag[0]["type"], "diagnostic");
    assert!(
        !dir.path().join("state").exists(),
        "refused before anything"
    );

    let o = run(dir.path(), &args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let ev = events_of(&o);
    let of = |t: &str| ev.iter().filter(|e| e["type"] == t).count();
    let planned = of("planned_change");
    assert_eq!(planned, 310);
    assert_eq!(of("apply_start"), planned);
    assert_eq!(of("apply_complete"), planned);
    assert_eq!(ev[planned]["changes"]["operation"], "plan");
    let last = ev.last().unwrap();
    assert_eq!(last["type"], "change_summary");
    assert_eq!(last["changes"]["operation"], "apply");
    assert_eq!(last["changes"]["add"], 310);
    // Nothing completes before it starts, nor before what it needs completed.
    let pos = |t: &str, a: &str| {
        ev.iter()
            .position(|e| e["type"] == t && e["hook"]["address"] == a)
            .unwrap()
    };
    assert!(pos("apply_start", "session.node01.base") > pos("apply_complete", "target.img0.base"));
    assert!(
        pos("apply_complete", "domain.node20.base.3") > pos("apply_start", "domain.node20.base.3")
    );
    assert!(dir.path().join("state/sim.json").exists());
    assert!(!dir.path().join("state/sim.json.journal").exists());
    let state = State::load(&dir.path().join("state/sim.json"), "sim").unwrap();
    assert_eq!(state.len(), 310);

    let o = run(
        dir.path(),
        &[
            "destroy",
            "-f",
            "examples/sim.json",
            "--auto-approve",
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let ev = events_of(&o);
    assert_eq!(ev.last().unwrap()["changes"]["destroy"], 310);
    assert!(State::load(&dir.path().join("state/sim.json"), "sim")
        .unwrap()
        .is_empty());
}

#[test]
fn on_a_terminal_apply_shows_live_progress() {
    let dir = workdir();
    let cmd = format!(
        "{} apply -f examples/sim.json --auto-approve --color never",
        env!("CARGO_BIN_EXE_vmthunder")
    );
    // `script` gives the binary a pseudo-terminal for stdout.
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .current_dir(dir.path())
        .env("TERM", "xterm")
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("operations"), "{out}");
    assert!(out.contains("running "), "{out}");
    assert!(
        out.contains("Apply complete! Resources: 310 added"),
        "{out}"
    );
}

#[test]
fn bad_specs_fail_clearly_and_write_nothing() {
    let dir = workdir();
    std::fs::write(
        dir.path().join("bad.json"),
        r#"{"version": 1, "cluster": "lab", "hosts": [{"name": "img0", "address": "127.0.0.1"}],
            "images": [{"name": "base", "source_host": "img9", "path": "b.qcow2"}],
            "tree": {"degree": 0}, "clones": {"per_hots": 2}}"#,
    )
    .unwrap();
    for args in [
        &["validate", "-f", "bad.json"][..],
        &["plan", "-f", "bad.json"],
        &["plan", "-f", "bad.json", "--out", "plans/x.json"],
        &["graph", "-f", "bad.json"],
    ] {
        let o = run(dir.path(), args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = stderr(&o);
        for line in [
            "Error: spec `bad.json` is invalid (3 errors):",
            "  /images/0/source_host: unknown host \"img9\"",
            "  /tree/degree: invalid value 0: expected a tree degree: a number, or \"auto\"",
            "  /clones/per_hots: unknown field \"per_hots\" (did you mean \"per_host\"?)",
        ] {
            assert!(err.contains(line), "{args:?}: missing {line:?} in\n{err}");
        }
        assert!(stdout(&o).is_empty());
    }
    assert!(!dir.path().join("state").exists(), "no state written");
    assert!(!dir.path().join("plans").exists(), "no plan written");

    let o = run(dir.path(), &["validate", "-f", "bad.json", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["valid"], false);
    assert_eq!(doc["error_count"], 3);
    let paths: Vec<&str> = doc["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"/images/0/source_host"), "{paths:?}");

    // A FIFO (or any file that is not a regular one) is refused at once instead of blocking
    // the command until a writer comes.
    let fifo = dir.path().join("spec.fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for args in [
        &["validate", "-f", "spec.fifo"][..],
        &["plan", "-f", "spec.fifo"],
    ] {
        let started = std::time::Instant::now();
        let o = run(dir.path(), args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&o).contains(
                "failed to read spec `spec.fifo`\n  caused by: it is a FIFO, not a regular file"
            ),
            "{args:?}: {}",
            stderr(&o)
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
    }
    // Saved plans and state files likewise.
    for (args, what) in [
        (
            &["show", "spec.fifo"][..],
            "failed to read plan `spec.fifo`",
        ),
        (&["state", "list", "--state", "spec.fifo"], "spec.fifo"),
    ] {
        let o = run(dir.path(), args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = stderr(&o);
        assert!(
            err.contains(what) && err.contains("it is a FIFO, not a regular file"),
            "{args:?}: {err}"
        );
    }

    std::fs::write(dir.path().join("broken.json"), "{\"version\": 1,").unwrap();
    let o = run(dir.path(), &["plan", "-f", "broken.json"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("spec `broken.json` is not valid JSON"),
        "{}",
        stderr(&o)
    );
    let o = run(dir.path(), &["plan", "-f", "missing.json"]);
    assert!(stderr(&o).contains("failed to read spec `missing.json`"));
}

#[test]
fn plan_json_out_and_show_agree() {
    let dir = workdir();
    let o = run(
        dir.path(),
        &[
            "plan",
            "-f",
            "examples/lab.json",
            "--json",
            "--out",
            "plans/lab.json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["format_version"], "2.1");
    assert_eq!(doc["prior_state"]["serial"], 0);
    assert!(doc["spec_digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(doc["plan_digest"].as_str().unwrap().starts_with("sha256:"));
    let changes = doc["resource_changes"].as_array().unwrap();
    assert!(changes
        .iter()
        .all(|c| c["actions"] == serde_json::json!(["create"])));
    let session = changes
        .iter()
        .find(|c| c["address"] == "session.node03.base")
        .unwrap();
    assert_eq!(session["after"]["parent"], "node01");
    assert_eq!(
        session["depends_on"],
        serde_json::json!(["target.node01.base", "cert.node03.tls"])
    );

    let saved = std::fs::read(dir.path().join("plans/lab.json")).unwrap();
    assert_eq!(saved, o.stdout, "the saved plan is the JSON plan");
    let shown = run(dir.path(), &["show", "plans/lab.json", "--json"]);
    assert_eq!(shown.stdout, saved);
    let human = run(dir.path(), &["plan", "-f", "examples/lab.json"]);
    let shown = run(dir.path(), &["show", "plans/lab.json"]);
    assert_eq!(stdout(&shown), stdout(&human));
    let o = run(dir.path(), &["show", "examples/lab.json"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("is not a vmthunder plan"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn matching_state_plans_no_changes_and_state_reads_back() {
    let dir = workdir();
    let state = write_applied_state(dir.path(), Path::new("examples/lab.json"));
    let o = run(
        dir.path(),
        &[
            "plan",
            "-f",
            "examples/lab.json",
            "--detailed-exitcode",
            "--refresh=false",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "No changes. Your cluster matches the spec.\n");

    let o = run(dir.path(), &["state", "list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let listed: Vec<String> = stdout(&o).lines().map(String::from).collect();
    assert_eq!(listed.len(), state.len());
    assert!(listed.contains(&"domain.node02.base.1".to_string()));
    let o = run(
        dir.path(),
        &["state", "show", "session.node03.base", "--json"],
    );
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["desired"]["parent"], "node01");
    assert_eq!(doc["status"], "ready");
    let o = run(dir.path(), &["state", "show", "session.nope.base"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no resource session.nope.base in state"));

    let o = run(
        dir.path(),
        &[
            "plan",
            "-f",
            "examples/lab.json",
            "--destroy",
            "--detailed-exitcode",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stdout(&o).contains(&format!(
        "Plan: 0 to add, 0 to change, 0 to replace, {} to destroy.",
        state.len()
    )));
}

#[test]
fn a_held_lock_fails_at_once_naming_its_holder() {
    let dir = workdir();
    let state_path = dir.path().join("state/lab.json");
    let lock = Lock::acquire(&state_path, "apply", Duration::ZERO).unwrap();
    let start = Instant::now();
    let o = run(dir.path(), &["plan", "-f", "examples/lab.json"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("state is locked: ID"), "{err}");
    assert!(
        err.contains(&lock.info.id) && err.contains("operation apply"),
        "{err}"
    );
    assert!(start.elapsed() < Duration::from_secs(5));

    // With a timeout it waits for the holder to finish.
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(lock);
    });
    let o = run(
        dir.path(),
        &["plan", "-f", "examples/lab.json", "--lock-timeout", "10s"],
    );
    releaser.join().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    let hung = Lock::acquire(&state_path, "apply", Duration::ZERO).unwrap();
    let o = run(
        dir.path(),
        &["force-unlock", "not-the-id", "-f", "examples/lab.json"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("does not match the current lock"));
    // Its holder (this test) still runs on this machine: removing its lock would let a second
    // run work beside it.
    let o = run(
        dir.path(),
        &["force-unlock", &hung.info.id, "-f", "examples/lab.json"],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    for part in [
        "refusing to remove the lock of state `state/lab.json`: apply".to_string(),
        hung.info.id.clone(),
        format!("pid {}", std::process::id()),
        format!("since {}", hung.info.since()),
        "still running on this machine".to_string(),
        "pass --force".to_string(),
    ] {
        assert!(err.contains(&part), "{part}: {err}");
    }
    assert_eq!(Lock::holder(&state_path), Some(hung.info.clone()));
    let o = run(
        dir.path(),
        &[
            "force-unlock",
            &hung.info.id,
            "--force",
            "-f",
            "examples/lab.json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(dir.path(), &["plan", "-f", "examples/lab.json"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn graph_prints_dot_with_real_edges() {
    let dir = workdir();
    let o = run(dir.path(), &["graph", "-f", "examples/lab.json"]);
    assert!(o.status.success());
    let dot = stdout(&o);
    assert!(dot.starts_with("digraph vmthunder {"));
    assert!(dot.contains("\"session.node01.base\" -> \"target.img0.base\";"));
    assert!(dot.contains("\"domain.node02.base.1\" -> \"snapshot.node02.base.1\";"));
}

#[test]
fn human_plans_read_like_terraform() {
    let dir = workdir();
    let o = run(dir.path(), &["plan", "-f", "examples/lab.json"]);
    insta::assert_snapshot!("plan_create", stdout(&o));

    // Recorded: the lab as applied. Now: node03 removed, bigger clones, one replacement asked.
    write_applied_state(dir.path(), Path::new("examples/lab.json"));
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("examples/lab.json")).unwrap())
            .unwrap();
    doc["hosts"].as_array_mut().unwrap().pop();
    doc["clones"]["memory"] = "256MiB".into();
    std::fs::write(dir.path().join("changed.json"), doc.to_string()).unwrap();
    let o = run(
        dir.path(),
        &[
            "plan",
            "-f",
            "changed.json",
            "--replace",
            "lv.node02.base",
            "--detailed-exitcode",
            "--refresh=false",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    insta::assert_snapshot!("plan_replace_and_delete", stdout(&o));

    let o = run(
        dir.path(),
        &[
            "--color",
            "always",
            "plan",
            "-f",
            "changed.json",
            "--refresh=false",
        ],
    );
    assert!(stdout(&o).contains("\x1b[33m-/+\x1b[0m"));
}

/// `sim0.json`: examples/sim.json with operations that take no time, applied.
fn applied_sim0(dir: &Path) {
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("examples/sim.json")).unwrap()).unwrap();
    let zero: serde_json::Value = ["lv", "session", "cache", "target", "snapshot", "domain"]
        .iter()
        .map(|k| (k.to_string(), serde_json::json!(0)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    doc["estimate"] = serde_json::json!({"working_set": 0, "create": zero, "delete": zero});
    std::fs::write(dir.join("sim0.json"), doc.to_string()).unwrap();
    let o = run(dir, &["apply", "-f", "sim0.json", "--auto-approve"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn state_mv_and_rm_change_only_the_state_with_a_backup() {
    let dir = workdir();
    applied_sim0(dir.path());
    let state = dir.path().join("state/sim.json");
    let list = |d: &Path| stdout(&run(d, &["state", "list", "-f", "sim0.json"]));
    let before = list(dir.path());

    let mv = [
        "state",
        "mv",
        "lv.node01.base.0",
        "lv.node01.base.9",
        "-f",
        "sim0.json",
    ];
    let o = run(dir.path(), &[&mv[..], &["--dry-run"]].concat());
    assert!(stdout(&o).contains("Would move"), "{}", stderr(&o));
    assert_eq!(list(dir.path()), before);
    let o = run(dir.path(), &mv);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.path().join("state/sim.json.backup").exists());
    let s = State::load(&state, "sim").unwrap();
    let snap = s.get(&"snapshot.node01.base.0".parse().unwrap()).unwrap();
    assert!(snap
        .deps
        .iter()
        .any(|d| d.to_string() == "lv.node01.base.9"));
    // The renamed record is not what the spec wants: the plan replaces it.
    let o = run(
        dir.path(),
        &["plan", "-f", "sim0.json", "--detailed-exitcode"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stdout(&o).contains("lv.node01.base.9"), "{}", stdout(&o));
    let o = run(
        dir.path(),
        &[
            "state",
            "mv",
            "lv.node01.base.9",
            "lv.node01.base.0",
            "-f",
            "sim0.json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(
        dir.path(),
        &["plan", "-f", "sim0.json", "--detailed-exitcode"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));

    let rm = ["state", "rm", "domain.node20", "-f", "sim0.json"];
    let o = run(dir.path(), &[&rm[..], &["--dry-run"]].concat());
    assert!(
        stdout(&o).contains("Would forget 4 resources"),
        "{}",
        stdout(&o)
    );
    assert_eq!(list(dir.path()), before);
    let o = run(dir.path(), &rm);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(
        dir.path(),
        &["plan", "-f", "sim0.json", "--detailed-exitcode"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stdout(&o).contains("Plan: 4 to add, 0 to change, 0 to replace, 0 to destroy."));
}

#[test]
fn destroy_target_takes_what_is_built_on_it_and_nothing_else() {
    let dir = workdir();
    applied_sim0(dir.path());

    // node01 serves node03 and node04 (degree 2, spec order).
    let o = run(
        dir.path(),
        &[
            "plan",
            "-f",
            "sim0.json",
            "--destroy",
            "--target",
            "cache.node01.base",
        ],
    );
    let shown = stdout(&o);
    for gone in [
        "cache.node01.base",
        "target.node01.base",
        "domain.node01.base.3",
        "session.node03.base",
        "domain.node04.base.0",
    ] {
        assert!(
            shown.contains(&format!("# {gone} will be destroyed")),
            "{gone}: {shown}"
        );
    }
    assert!(!shown.contains("# lv.node01.base will"), "{shown}");
    assert!(!shown.contains("node02"), "{shown}");

    let o = run(
        dir.path(),
        &[
            "destroy",
            "-f",
            "sim0.json",
            "--target",
            "cache.node01.base",
            "--auto-approve",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let state = State::load(&dir.path().join("state/sim.json"), "sim").unwrap();
    let has = |a: &str| state.get(&a.parse().unwrap()).is_some();
    assert!(!has("cache.node01.base") && !has("domain.node03.base.0"));
    assert!(has("lv.node01.base") && has("session.node01.base") && has("domain.node02.base.0"));
    // apply --target rebuilds the branch with what it needs.
    let o = run(
        dir.path(),
        &[
            "apply",
            "-f",
            "sim0.json",
            "--target",
            "domain.node03",
            "--auto-approve",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let state = State::load(&dir.path().join("state/sim.json"), "sim").unwrap();
    assert!(state.get(&"cache.node01.base".parse().unwrap()).is_some());
    assert!(state
        .get(&"domain.node03.base.3".parse().unwrap())
        .is_some());
    assert!(state
        .get(&"domain.node01.base.0".parse().unwrap())
        .is_none());
}

#[test]
fn plan_estimate_prints_the_forecast_and_auto_picks_the_models_best_degree() {
    let dir = workdir();
    let o = run(
        dir.path(),
        &["plan", "-f", "examples/sim.json", "--estimate", "--json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let e = &v["estimate"];
    assert_eq!(e["operations"], 310, "{e}");
    assert_eq!(e["degree"], 2);
    assert_eq!(e["auto"], false);
    assert!(e["seconds"].as_f64().unwrap() > 0.3, "{e}");
    let path = e["critical_path"].as_array().unwrap();
    assert_eq!(path[0]["address"], "target.img0.base");
    assert!(path.last().unwrap()["address"]
        .as_str()
        .unwrap()
        .starts_with("domain."));
    assert_eq!(e["flows"][0]["source_sends_bytes"], 2 * (64u64 << 20));

    // --degree auto: the model's choice, shown as such; the plan is built with it.
    let o = run(
        dir.path(),
        &[
            "plan",
            "-f",
            "examples/sim.json",
            "--estimate",
            "--degree",
            "auto",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("(auto)"), "{text}");
    assert!(text.contains("Estimate: "), "{text}");
    assert!(text.contains("critical path ("), "{text}");

    // Scheduling flags mean nothing without --estimate; a bad degree names itself.
    let o = run(
        dir.path(),
        &["plan", "-f", "examples/sim.json", "--parallelism", "4"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stderr(&o).contains("--estimate"), "{}", stderr(&o));
    let o = run(
        dir.path(),
        &["plan", "-f", "examples/sim.json", "--degree", "0"],
    );
    assert!(
        stderr(&o).contains("invalid degree \"0\""),
        "{}",
        stderr(&o)
    );
}

/// The records of `dir/state/<file>` as written, to edit by hand.
fn state_doc(dir: &Path, file: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("state").join(file)).unwrap()).unwrap()
}

#[test]
fn a_dependency_cycle_in_the_state_is_refused_by_every_reader() {
    let dir = workdir();
    write_applied_state(dir.path(), Path::new("examples/lab.json"));
    let mut doc = state_doc(dir.path(), "lab.json");
    // session.node03.base is built on target.node01.base: record the target as built on it too.
    let resources = doc["resources"].as_array_mut().unwrap();
    let target = resources
        .iter_mut()
        .find(|r| r["address"] == "target.node01.base")
        .unwrap();
    target["deps"]
        .as_array_mut()
        .unwrap()
        .push("session.node03.base".into());
    std::fs::write(dir.path().join("state/lab.json"), doc.to_string()).unwrap();
    for args in [
        &["state", "list"][..],
        &["state", "show", "lv.node01.base"],
        &["graph", "-f", "examples/lab.json"],
        &["plan", "-f", "examples/lab.json", "--refresh=false"],
        &["state", "rm", "domain.node03.base.0"],
    ] {
        let o = run(dir.path(), args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stdout(&o));
        let err = stderr(&o);
        assert!(
            err.contains("state `state/lab.json` is not a valid vmthunder state: "),
            "{args:?}: {err}"
        );
        assert!(
            err.contains("2 resources depend on each other in a cycle: ")
                && err.contains("target.node01.base")
                && err.contains("session.node03.base"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("internal error"), "{args:?}: {err}");
    }
}

#[test]
fn empty_and_torn_journals_are_told_and_then_folded() {
    let dir = workdir();
    applied_sim0(dir.path());
    let journal = dir.path().join("state/sim.json.journal");
    for (bytes, told) in [
        (
            &b""[..],
            "Warning: journal `state/sim.json.journal` is empty",
        ),
        (
            &b"\x00garbage"[..],
            "Warning: journal `state/sim.json.journal` holds 8 bytes but no whole line",
        ),
    ] {
        std::fs::write(&journal, bytes).unwrap();
        let o = run(dir.path(), &["state", "list"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains(told), "{}", stderr(&o));
        assert_eq!(stdout(&o).lines().count(), 310);
        let o = run(
            dir.path(),
            &["plan", "-f", "sim0.json", "--detailed-exitcode"],
        );
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(stderr(&o).contains(told), "{}", stderr(&o));
        assert!(journal.exists(), "a reader removes nothing");
        let o = run(dir.path(), &["apply", "-f", "sim0.json", "--auto-approve"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains(told), "{}", stderr(&o));
        assert!(!journal.exists(), "the writer folds it in");
    }
}

#[test]
fn every_reader_sees_what_a_killed_first_apply_recorded() {
    let dir = workdir();
    let journal = dir.path().join("state/sim.json.journal");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmthunder"))
        .args([
            "apply",
            "-f",
            "examples/sim.json",
            "--auto-approve",
            "--json",
        ])
        .current_dir(dir.path())
        .env_remove("VMTHUNDER_SPEC")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once a few operations are durable, long before the apply ends.
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read(&journal).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count()) < 6 {
        assert!(Instant::now() < deadline, "the apply journals nothing");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !dir.path().join("state/sim.json").exists(),
        "the apply ended first"
    );
    let replayed = State::load(&dir.path().join("state/sim.json"), "sim").unwrap();
    assert!(
        replayed.len() >= 5 && replayed.len() < 310,
        "{}",
        replayed.len()
    );
    let mut recorded: Vec<String> = replayed
        .resources
        .iter()
        .map(|r| r.addr.to_string())
        .collect();
    recorded.sort();
    let listed = recorded.join("\n") + "\n";

    for args in [
        &["state", "list"][..],
        &["state", "list", "-f", "examples/sim.json"],
    ] {
        let o = run(dir.path(), args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        assert_eq!(stdout(&o), listed, "{args:?}");
    }
    let newest = replayed.resources.last().unwrap().addr.to_string();
    let o = run(dir.path(), &["state", "show", &newest, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(dir.path(), &["graph", "-f", "examples/sim.json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(
        dir.path(),
        &[
            "plan",
            "-f",
            "examples/sim.json",
            "--refresh=false",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let noop = plan["resource_changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["actions"] == serde_json::json!(["no-op"]))
        .count();
    let ready = replayed
        .resources
        .iter()
        .filter(|r| r.status == vmthunder::state::Status::Ready)
        .count();
    assert_eq!(noop, ready, "the plan builds on the same records");
    assert!(journal.exists(), "readers fold nothing");

    // A writer folds the journal in first: the last record made is built on by nothing yet.
    let o = run(dir.path(), &["state", "rm", &newest]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!journal.exists());
    let o = run(dir.path(), &["state", "list"]);
    assert_eq!(
        stdout(&o).lines().count(),
        recorded.len() - 1,
        "{}",
        stderr(&o)
    );
}

/// `mini.json`: a sim cluster (img0 -> node01, node02; node01 -> node03) of `clones` clones
/// per node whose operations take no time: 20 resources with one clone.
fn mini(dir: &Path, clones: u32) {
    let zero: serde_json::Value = ["lv", "session", "cache", "target", "snapshot", "domain"]
        .iter()
        .map(|k| (k.to_string(), serde_json::json!(0)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let hosts: Vec<serde_json::Value> = ["img0", "node01", "node02", "node03"]
        .iter()
        .enumerate()
        .map(|(i, h)| serde_json::json!({"name": h, "address": format!("10.0.0.{}", i + 1)}))
        .collect();
    let doc = serde_json::json!({
        "version": 1,
        "cluster": "mini",
        "backend": {"stack": "sim"},
        "estimate": {"working_set": 0, "create": zero, "delete": zero},
        "hosts": hosts,
        "images": [{"name": "base", "source_host": "img0", "path": "images/base.qcow2", "size": "10GiB"}],
        "tree": {"degree": 2},
        "cache": {"size": "4GiB"},
        "clones": {"per_host": clones, "memory": "1GiB", "cow_size": "2GiB"}
    });
    std::fs::write(dir.join("mini.json"), doc.to_string()).unwrap();
}

/// `plan -f mini.json --out plans/p.json` (plus `extra`), read back.
fn mini_plan(dir: &Path, extra: &[&str]) -> vmthunder::plan::Plan {
    let mut args = vec!["plan", "-f", "mini.json", "--out", "plans/p.json"];
    args.extend_from_slice(extra);
    let o = run(dir, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    vmthunder::plan::Plan::load(&dir.join("plans/p.json")).unwrap()
}

/// `apply plans/edited.json` fails naming `expected`, says nothing was changed, and leaves
/// the state file as it was.
fn apply_refused(dir: &Path, expected: &str) {
    let state = dir.join("state/mini.json");
    let before = std::fs::read(&state).ok();
    let o = run(dir, &["apply", "plans/edited.json"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{expected}: {err}");
    assert!(err.contains(expected), "expected {expected:?} in\n{err}");
    assert!(
        err.contains("nothing was changed; make a new plan"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&state).ok(),
        before,
        "{expected}: state touched"
    );
}

fn change_at<'a>(p: &'a mut vmthunder::plan::Plan, addr: &str) -> &'a mut vmthunder::plan::Change {
    let a: vmthunder::resource::Addr = addr.parse().unwrap();
    p.changes.iter_mut().find(|c| c.addr == a).unwrap()
}

/// The reproducers of issue 15, edited by hand: the digest refuses them all.
#[test]
fn hand_edited_saved_plans_are_refused_before_anything_is_touched() {
    let dir = workdir();
    mini(dir.path(), 1);
    mini_plan(dir.path(), &[]);
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("plans/p.json")).unwrap()).unwrap();
    assert_eq!(doc["format_version"], "2.1");
    let at = |d: &serde_json::Value, addr: &str| {
        d["resource_changes"]
            .as_array()
            .unwrap()
            .iter()
            .position(|c| c["address"] == addr)
            .unwrap()
    };
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let edits: Vec<(&str, Edit)> = vec![
        (
            "a dangling dependency",
            Box::new(move |d| {
                let i = at(d, "session.node01.base");
                d["resource_changes"][i]["depends_on"] = serde_json::json!(["lv.nowhere.base"]);
            }),
        ),
        (
            "a deleted create",
            Box::new(move |d| {
                let i = at(d, "lv.node01.base");
                d["resource_changes"].as_array_mut().unwrap().remove(i);
            }),
        ),
        (
            "a create renamed to an existing address",
            Box::new(move |d| {
                let i = at(d, "lv.node02.base.0");
                d["resource_changes"][i]["address"] = "lv.node01.base.0".into();
            }),
        ),
        (
            "a dependency cycle",
            Box::new(move |d| {
                let i = at(d, "target.img0.base");
                d["resource_changes"][i]["depends_on"] =
                    serde_json::json!(["domain.node03.base.0"]);
            }),
        ),
        ("destroy mode", Box::new(|d| d["mode"] = "destroy".into())),
        (
            "a duplicated change",
            Box::new(move |d| {
                let c = d["resource_changes"][at(d, "domain.node02.base.0")].clone();
                d["resource_changes"].as_array_mut().unwrap().push(c);
            }),
        ),
        (
            "a changed after.size",
            Box::new(move |d| {
                let i = at(d, "lv.node01.base");
                d["resource_changes"][i]["after"]["size"] = "1GiB".into();
            }),
        ),
        (
            "a placement cycle",
            Box::new(|d| d["placement"]["base"]["node01"] = "node03".into()),
        ),
    ];
    for (what, edit) in &edits {
        let mut d = doc.clone();
        edit(&mut d);
        std::fs::write(
            dir.path().join("plans/edited.json"),
            serde_json::to_vec_pretty(&d).unwrap(),
        )
        .unwrap();
        let o = run(dir.path(), &["apply", "plans/edited.json"]);
        assert_eq!(o.status.code(), Some(1), "{what}");
        let err = stderr(&o);
        assert!(
            err.contains("plan `plans/edited.json` was altered after it was saved (its content does not match its plan_digest); nothing was changed; make a new plan"),
            "{what}: {err}"
        );
        let o = run(dir.path(), &["show", "plans/edited.json", "--json"]);
        assert_eq!(o.status.code(), Some(1), "{what}: show launders no edit");
    }
    let mut d = doc.clone();
    d.as_object_mut().unwrap().remove("plan_digest");
    std::fs::write(
        dir.path().join("plans/edited.json"),
        serde_json::to_vec_pretty(&d).unwrap(),
    )
    .unwrap();
    let o = run(dir.path(), &["apply", "plans/edited.json"]);
    assert!(
        stderr(&o).contains("has no plan_digest") && stderr(&o).contains("make a new plan"),
        "{}",
        stderr(&o)
    );
    assert!(
        !dir.path().join("state/mini.json").exists(),
        "no state written"
    );
    // The plan as saved applies.
    let o = run(dir.path(), &["apply", "plans/p.json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("20 added"), "{}", stdout(&o));
}

/// The reproducers of issue 15 with the digest recomputed: the consistency checks refuse
/// them, naming the address and the field, and the state stays readable.
#[test]
fn resealed_saved_plans_vmthunder_would_not_make_are_refused() {
    use vmthunder::plan::{Action, Mode, Plan};
    use vmthunder::resource::Desired;
    let dir = workdir();
    mini(dir.path(), 1);
    let fresh = mini_plan(dir.path(), &[]);
    type Edit = Box<dyn Fn(&mut Plan)>;
    let addr = |a: &str| a.parse::<vmthunder::resource::Addr>().unwrap();
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(move |p| change_at(p, "session.node01.base").deps = vec![addr("lv.nowhere.base")]),
            "session.node01.base: depends_on names lv.nowhere.base, which is neither in the plan nor in the state",
        ),
        (
            Box::new(|p| p.changes.retain(|c| c.addr.to_string() != "lv.node01.base")),
            "cache.node01.base: depends_on names lv.node01.base, which is neither in the plan nor in the state",
        ),
        (
            Box::new(|p| p.changes.retain(|c| c.addr.to_string() != "domain.node03.base.0")),
            "domain.node03.base.0: missing; the plan's spec and the state call for a create of it",
        ),
        (
            Box::new(move |p| change_at(p, "lv.node02.base.0").addr = addr("lv.node01.base.0")),
            "lv.node01.base.0: listed more than once",
        ),
        (
            Box::new(move |p| change_at(p, "target.img0.base").deps = vec![addr("domain.node03.base.0")]),
            "depends_on and prior_depends_on form a cycle through create target.img0.base",
        ),
        (
            Box::new(|p| p.mode = Mode::Destroy),
            "target.img0.base: a create in a destroy plan (a destroy plan only deletes)",
        ),
        (
            Box::new(|p| {
                let c = change_at(p, "domain.node02.base.0").clone();
                p.changes.push(c);
            }),
            "domain.node02.base.0: listed more than once",
        ),
        (
            Box::new(|p| {
                if let Some(Desired::Lv(a)) = &mut change_at(p, "lv.node01.base").after {
                    a.size = vmthunder::size::Size(1 << 30);
                }
            }),
            "lv.node01.base: after.size is \"1GiB\", the plan's spec gives \"4GiB\"",
        ),
        (
            Box::new(move |p| change_at(p, "domain.node03.base.0").addr = addr("domain.node09.base.0")),
            "domain.node09.base.0: host \"node09\" is not a host of the plan's spec",
        ),
        (
            Box::new(|p| {
                p.placement.get_mut("base").unwrap().insert("node01".into(), "node03".into());
            }),
            "placement of image base is a cycle: node01 pulls from node03 pulls from node01",
        ),
    ];
    for (edit, expected) in &cases {
        let mut p = fresh.clone();
        edit(&mut p);
        p.save(&dir.path().join("plans/edited.json")).unwrap();
        apply_refused(dir.path(), expected);
    }
    assert!(
        !dir.path().join("state/mini.json").exists(),
        "no state written"
    );

    let o = run(dir.path(), &["apply", "plans/p.json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // More clones: a plan against a state with a lineage.
    mini(dir.path(), 2);
    let grown = mini_plan(dir.path(), &[]);
    assert!(grown.prior.lineage.is_some());
    let mut p = grown.clone();
    p.prior.lineage = None;
    p.save(&dir.path().join("plans/edited.json")).unwrap();
    let before = std::fs::read(dir.path().join("state/mini.json")).unwrap();
    let o = run(dir.path(), &["apply", "plans/edited.json"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("it was made against another state"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read(dir.path().join("state/mini.json")).unwrap(),
        before
    );
    // Deleting what the spec still wants, with a "delete" shaped like vmthunder's.
    let mut p = grown.clone();
    let c = change_at(&mut p, "domain.node01.base.0");
    assert_eq!(c.action, Action::NoOp);
    c.action = Action::Delete;
    c.before = c.after.take();
    c.prior_deps = std::mem::take(&mut c.deps);
    c.reason = Some(vmthunder::plan::Reason::NotInSpec);
    p.save(&dir.path().join("plans/edited.json")).unwrap();
    apply_refused(
        dir.path(),
        "domain.node01.base.0: actions are [\"delete\"], the plan's spec and the state give [\"no-op\"]",
    );

    // What vmthunder made applies, targeted or not, and the state reads back after each.
    mini_plan(dir.path(), &["--target", "domain.node02"]);
    let o = run(dir.path(), &["apply", "plans/p.json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("3 added"), "{}", stdout(&o));
    mini_plan(dir.path(), &[]);
    let o = run(dir.path(), &["apply", "plans/p.json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(
        dir.path(),
        &["plan", "-f", "mini.json", "--detailed-exitcode"],
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    mini_plan(dir.path(), &["--destroy"]);
    let o = run(dir.path(), &["apply", "plans/p.json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("29 destroyed"), "{}", stdout(&o));
    let o = run(dir.path(), &["state", "list", "-f", "mini.json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
}

#[test]
fn apply_watch_converges_in_rounds_until_interrupted() {
    let dir = workdir();
    let zero = serde_json::json!({"lv": 0, "session": 0, "cache": 0, "target": 0,
                                  "snapshot": 0, "domain": 0});
    let spec = serde_json::json!({
        "version": 1, "cluster": "w", "backend": {"stack": "sim"},
        "hosts": [{"name": "src", "address": "10.0.0.1"}, {"name": "a", "address": "10.0.0.2"},
                  {"name": "b", "address": "10.0.0.3"}],
        "images": [{"name": "img", "source_host": "src", "path": "/i.raw", "format": "raw",
                    "size": "1GiB"}],
        "estimate": {"create": zero, "delete": zero, "working_set": 0}
    });
    std::fs::write(dir.path().join("w.json"), spec.to_string()).unwrap();
    let needs = run(dir.path(), &["apply", "-f", "w.json", "--watch", "1s"]);
    assert_eq!(needs.status.code(), Some(2), "{}", stderr(&needs));
    assert!(
        stderr(&needs).contains("--auto-approve"),
        "{}",
        stderr(&needs)
    );
    // Rounds every second; SIGINT after 4 s (as a Ctrl-C) ends it with 130.
    let o = Command::new("timeout")
        .args(["--preserve-status", "--signal=INT", "--kill-after=30", "4s"])
        .arg(env!("CARGO_BIN_EXE_vmthunder"))
        .args(["apply", "-f", "w.json", "--auto-approve", "--watch", "1s"])
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(130), "{out}{}", stderr(&o));
    assert!(out.contains("--- watch round 1 at "), "{out}");
    assert!(out.contains("--- watch round 2 at "), "{out}");
    assert!(
        out.contains("Apply complete!"),
        "the first round applies: {out}"
    );
    assert!(
        out.contains("No changes. The hosts match the spec."),
        "later rounds find nothing to do: {out}"
    );
}

/// A sim cluster whose image gives a total of `total` clones (2 vCPUs, 2 GiB each) placed by
/// `placement` over hosts of the given declared (vCPUs, GiB).
fn totals(dir: &Path, sizes: &[(u32, u32)], total: u64, placement: &str) {
    let mut hosts = vec![serde_json::json!({"name": "img0", "address": "10.0.0.1"})];
    for (i, (v, m)) in sizes.iter().enumerate() {
        hosts.push(serde_json::json!({"name": format!("node{:02}", i + 1),
            "address": format!("10.0.0.{}", i + 2),
            "capacity": {"vcpus": v, "memory": format!("{m}GiB"), "disk": "1TiB"}}));
    }
    let doc = serde_json::json!({
        "version": 1, "cluster": "tot",
        "backend": {"stack": "sim", "overcommit": {"vcpus": 1.0}},
        "hosts": hosts,
        "images": [{"name": "base", "source_host": "img0", "path": "/srv/base.qcow2",
                    "clones": total, "placement": placement}],
        "clones": {"vcpus": 2, "memory": "2GiB"}
    });
    std::fs::write(dir.join("tot.json"), doc.to_string()).unwrap();
}

/// Clones per host in `plan --json --capacity`, in spec order (the source first).
fn placed(dir: &Path) -> Vec<u64> {
    let o = run(dir, &["plan", "-f", "tot.json", "--json", "--capacity"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["capacity"]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["need"]["clones"].as_u64().unwrap())
        .collect()
}

/// (host, clone index) of every recorded domain, sorted.
fn domains(dir: &Path) -> Vec<(String, u32)> {
    let s = State::load(&dir.join("state/tot.json"), "tot").unwrap();
    let mut v: Vec<(String, u32)> = s
        .resources
        .iter()
        .filter(|r| r.addr.kind == vmthunder::resource::Kind::Domain)
        .map(|r| (r.addr.host.to_string(), r.addr.n.unwrap()))
        .collect();
    v.sort();
    v
}

#[test]
fn totals_are_placed_by_free_capacity_and_placed_clones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Room for 8, 2 and 4 clones. Spread: the biggest host takes clones until its room is
    // the others', then they take turns. Pack: the fullest host that fits fills first.
    totals(d, &[(16, 16), (4, 4), (8, 8)], 9, "spread");
    assert_eq!(placed(d), [0, 6, 1, 2]);
    let text = stdout(&run(d, &["plan", "-f", "tot.json", "--capacity"]));
    assert!(
        text.contains("node01       6  12 of 16  12 GiB of 16 GiB"),
        "{text}"
    );
    totals(d, &[(16, 16), (4, 4), (8, 8)], 9, "pack");
    assert_eq!(placed(d), [0, 3, 2, 4]);
    totals(d, &[(8, 8), (8, 8), (8, 8)], 7, "spread");
    assert_eq!(placed(d), [0, 3, 2, 2]);

    // Applied, then a fourth host, bigger than all: no clone moves, nothing is planned on
    // the placed hosts, and the new host only joins the tree.
    totals(d, &[(16, 16), (4, 4), (8, 8)], 9, "spread");
    let o = run(d, &["apply", "-f", "tot.json", "--auto-approve"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let before = domains(d);
    assert_eq!(before.len(), 9);
    totals(d, &[(16, 16), (4, 4), (8, 8), (32, 32)], 9, "spread");
    let o = run(d, &["plan", "-f", "tot.json", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let changes: Vec<String> = v["resource_changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["actions"] != serde_json::json!(["no-op"]))
        .map(|c| c["address"].as_str().unwrap().to_string())
        .collect();
    assert!(!changes.is_empty());
    assert!(
        changes.iter().all(|a| a.contains(".node04.")),
        "{changes:?}"
    );
    let o = run(d, &["apply", "-f", "tot.json", "--auto-approve"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(domains(d), before);

    // A bigger total: the new clones go where the room is (all three to node04).
    totals(d, &[(16, 16), (4, 4), (8, 8), (32, 32)], 12, "spread");
    let o = run(d, &["apply", "-f", "tot.json", "--auto-approve"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let now = domains(d);
    assert_eq!(now.len(), 12);
    assert!(before.iter().all(|c| now.contains(c)), "{now:?}");
    assert_eq!(now.iter().filter(|(h, _)| h == "node04").count(), 3);

    // A smaller total removes clones from the host with the most, its highest first.
    totals(d, &[(16, 16), (4, 4), (8, 8), (32, 32)], 10, "spread");
    let o = run(d, &["plan", "-f", "tot.json"]);
    let text = stdout(&o);
    assert!(
        text.contains("domain.node01.base.5 will be destroyed")
            && text.contains("domain.node01.base.4 will be destroyed"),
        "{text}"
    );

    // More than the hosts hold: refused at its path, naming the room, and nothing changes.
    let state = std::fs::read(d.join("state/tot.json")).unwrap();
    totals(d, &[(16, 16), (4, 4), (8, 8), (32, 32)], 40, "spread");
    for args in [
        &["plan", "-f", "tot.json"][..],
        &["apply", "-f", "tot.json", "--auto-approve"],
    ] {
        let o = run(d, args);
        assert!(!o.status.success());
        assert!(
            stderr(&o).contains("/images/0/clones: 40 clones of image \"base\" do not fit on its 4 hosts: there is room for 30"),
            "{}",
            stderr(&o)
        );
    }
    assert_eq!(std::fs::read(d.join("state/tot.json")).unwrap(), state);
}

#[test]
fn totals_are_refused_with_per_host_counts_or_without_a_total() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    totals(d, &[(8, 8)], 2, "spread");
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("tot.json")).unwrap()).unwrap();
    doc["images"][0]["clones_per_host"] = serde_json::json!(2);
    std::fs::write(d.join("both.json"), doc.to_string()).unwrap();
    doc["images"][0].as_object_mut().unwrap().remove("clones");
    std::fs::write(d.join("placement.json"), doc.to_string()).unwrap();
    doc["images"][0]["clones"] = serde_json::json!(2);
    doc["images"][0]
        .as_object_mut()
        .unwrap()
        .remove("clones_per_host");
    doc["clones"]["name"] = serde_json::json!("{image}-{host}");
    std::fs::write(d.join("names.json"), doc.to_string()).unwrap();
    for (file, want) in [
        ("both.json", "/images/0/clones: give either clones (a total, placed over the image's hosts) or clones_per_host, not both"),
        ("placement.json", "/images/0/placement: placement places a total: give images[].clones too"),
        ("names.json", "gives the same name \"base-node01\" to clone 0 of image \"base\" on host \"node01\" and clone 1"),
    ] {
        let o = run(d, &["validate", "-f", file]);
        assert!(!o.status.success(), "{file}");
        assert!(stderr(&o).contains(want), "{file}: {}", stderr(&o));
    }
}
