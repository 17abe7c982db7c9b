//! Drift on the qemu stack: objects changed outside vmthunder by hand (a guest killed, a
//! relay killed, a clone overlay or a cache file deleted, a relay that stops answering) are
//! found by the refresh before planning, named with their cause, repaired by apply, and
//! the next plan is clean.

mod common;

use std::process::Command;

use common::*;

fn kill(sig: &str, pidfile: &std::path::Path) {
    let pid = std::fs::read_to_string(pidfile).unwrap();
    let st = Command::new("kill")
        .args([sig, pid.trim()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// `plan --detailed-exitcode`: its exit status and output.
fn plan(c: &Cluster, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec!["plan", "-f", "spec.json", "--detailed-exitcode"];
    args.extend_from_slice(extra);
    let out = c.run(&args);
    (out.status.code(), text(&out))
}

fn repaired(c: &Cluster) -> String {
    let out = c.apply();
    assert!(out.status.success(), "{}", text(&out));
    let (code, shown) = plan(c, &[]);
    assert_eq!(code, Some(0), "{shown}");
    text(&out)
}

fn pid_in(file: &std::path::Path) -> String {
    std::fs::read_to_string(file).unwrap().trim().to_string()
}

#[test]
fn drift_is_found_named_and_repaired() {
    // img0 -> node01, node02; node01 -> node03; one booting guest each.
    let c = Cluster::new(&spec(51, 3, 2, 1, true));
    let out = c.apply();
    assert!(out.status.success(), "{}", text(&out));
    let dir = |host: &str| c.path().join(format!(".vmthunder/t/{host}/base"));
    let (code, shown) = plan(&c, &[]);
    assert_eq!(code, Some(0), "{shown}");

    // A guest killed by hand: only it is gone, and only it is recreated.
    kill("-9", &dir("node02").join("vm-0.pid"));
    let (code, shown) = plan(&c, &["--refresh-only"]);
    assert_eq!(code, Some(2), "{shown}");
    assert!(
        shown.contains("Objects changed outside vmthunder"),
        "{shown}"
    );
    assert!(
        shown.contains("domain.node02.base.0 is gone (deleted outside vmthunder)"),
        "{shown}"
    );
    let (code, shown) = plan(&c, &[]);
    assert_eq!(code, Some(2), "{shown}");
    assert!(
        shown.contains("Plan: 0 to add, 0 to change, 1 to replace, 0 to destroy."),
        "{shown}"
    );
    assert!(shown.contains("(it vanished outside vmthunder)"), "{shown}");
    // Without refresh the recorded state still agrees with the spec.
    assert_eq!(plan(&c, &["--refresh=false"]).0, Some(0));
    let applied = repaired(&c);
    assert!(applied.contains("1 replaced"), "{applied}");

    // An export's daemon killed: node01's session, cache and target are gone. Its relay is
    // rebuilt under its clone (whose disk stays), and its child node03 moves in place to a
    // healthy parent (node02: img0 is full), which starts exporting.
    let node01_guest = pid_in(&dir("node01").join("vm-0.pid"));
    kill("-9", &dir("node01").join("relay.pid"));
    let (code, shown) = plan(&c, &[]);
    assert_eq!(code, Some(2), "{shown}");
    for gone in [
        "session.node01.base",
        "cache.node01.base",
        "target.node01.base",
    ] {
        assert!(
            shown.contains(&format!("{gone} is gone")),
            "{gone}: {shown}"
        );
    }
    assert!(
        shown.contains("# (parent node01 -> node02: node01 lost its relay (its export is gone))"),
        "{shown}"
    );
    assert!(
        shown.contains("# target.node02.base will be created"),
        "{shown}"
    );
    assert!(
        !shown.contains("must be replaced\n  # (because it is built on cache.node01"),
        "{shown}"
    );
    assert!(
        !shown.contains("lose"),
        "no clone loses its writes: {shown}"
    );
    repaired(&c);
    assert_eq!(
        pid_in(&dir("node01").join("vm-0.pid")),
        node01_guest,
        "node01's guest runs on"
    );

    // A clone's overlay deleted: its lv and snapshot are gone.
    std::fs::remove_file(dir("node03").join("lv-cow-0.img")).unwrap();
    let (code, shown) = plan(&c, &[]);
    assert_eq!(code, Some(2), "{shown}");
    assert!(shown.contains("lv.node03.base.0 is gone"), "{shown}");
    assert!(shown.contains("snapshot.node03.base.0 is gone"), "{shown}");
    repaired(&c);

    // A cache file deleted: the cache lv is gone, the cache over it and the clone are rebuilt.
    std::fs::remove_file(dir("node02").join("lv-cache.img")).unwrap();
    let (code, shown) = plan(&c, &[]);
    assert_eq!(code, Some(2), "{shown}");
    assert!(shown.contains("lv.node02.base is gone"), "{shown}");
    assert!(shown.contains("cache.node02.base"), "{shown}");
    repaired(&c);

    // apply --refresh-only records the drift in state without touching a host; the next
    // plan (even without refresh) repairs it.
    kill("-9", &dir("node03").join("vm-0.pid"));
    let out = c.run(&[
        "apply",
        "-f",
        "spec.json",
        "--refresh-only",
        "--auto-approve",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("no host was touched"), "{}", text(&out));
    let state = c.state("t");
    let dom = state["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["address"] == "domain.node03.base.0")
        .unwrap();
    assert_eq!(dom["status"], "missing");
    let (code, shown) = plan(&c, &["--refresh=false"]);
    assert_eq!(code, Some(2), "{shown}");
    assert!(shown.contains("domain.node03.base.0"), "{shown}");
    repaired(&c);

    // state rm forgets without touching the host (and refuses to leave a record dangling);
    // import adopts the running guest again instead of booting a second one.
    let pid = || std::fs::read_to_string(dir("node02").join("vm-0.pid")).unwrap();
    let before = pid();
    let out = c.run(&["state", "rm", "snapshot.node02.base.0", "-f", "spec.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("domain.node02.base.0"),
        "{}",
        text(&out)
    );
    let out = c.run(&["state", "rm", "domain.node02.base.0", "-f", "spec.json"]);
    assert!(out.status.success(), "{}", text(&out));
    let (code, shown) = plan(&c, &[]);
    assert_eq!(code, Some(2), "{shown}");
    assert!(shown.contains("Plan: 1 to add"), "{shown}");
    let out = c.run(&[
        "import",
        "domain.node02.base.0",
        "-f",
        "spec.json",
        "--dry-run",
    ]);
    assert!(text(&out).contains("Would import"), "{}", text(&out));
    assert_eq!(plan(&c, &[]).0, Some(2), "a dry run writes nothing");
    let out = c.run(&["import", "domain.node02.base.0", "-f", "spec.json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(plan(&c, &[]).0, Some(0));
    assert_eq!(pid(), before, "the same guest, adopted");
    let out = c.run(&["import", "domain.node02.base.0", "-f", "spec.json"]);
    assert!(text(&out).contains("already recorded"), "{}", text(&out));

    // A relay that does not answer (stopped): its objects are unknown, not gone, and nothing
    // is planned for them.
    let relay = dir("node02").join("relay.pid");
    kill("-STOP", &relay);
    let (code, shown) = plan(&c, &[]);
    kill("-CONT", &relay);
    assert_eq!(code, Some(2), "unknown objects are reported: {shown}");
    // (Objects that share the reason are listed on one line.)
    assert!(
        shown.contains(" unknown: ") && shown.contains("session.node02.base"),
        "{shown}"
    );
    assert!(
        shown.contains("could not be read; nothing is planned"),
        "{shown}"
    );
    // Nothing is planned on node02; its child node03 (placed there by the repair above) would
    // move to a parent that answers.
    assert!(
        shown.contains("# (parent node02 -> ") && shown.contains(": node02 does not answer)"),
        "{shown}"
    );
    assert!(!shown.contains("# session.node02"), "{shown}");
    assert!(!shown.contains("# cache.node02"), "{shown}");
    assert_eq!(plan(&c, &[]).0, Some(0));

    destroy_leaves_nothing(&c);
}
