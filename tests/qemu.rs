//! apply and destroy on the qemu stack, with real qemu-storage-daemon relays, real NBD
//! traffic over loopback addresses and real TCG guests.
//!
//! Needs what `scripts/setup.sh` installs and builds (QEMU 10, the test guest in
//! target/guest). Every test works in its own scratch directory and its own 127.0.N.0/24
//! addresses, and its guard destroys the cluster and kills anything left with the scratch
//! path in its command line, also when the test fails.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::{json, Value};

fn pid_of_relay(c: &Cluster, host: &str) -> u32 {
    std::fs::read_to_string(c.path().join(format!(".vmthunder/t/{host}/base/relay.pid")))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_tree_of_relays_serves_the_image_caches_it_and_goes_away() {
    let base = PathBuf::from(guest("base.raw"));
    let base_sum = sha256(&base);
    // A chain img0 -> node01 -> node02 -> node03 (degree 1), one clone each, no guests.
    let c = Cluster::new(&spec(21, 3, 1, 1, false));
    let out = c.apply_with(&["--target", "snapshot"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Apply complete! Resources: 23 added"),
        "{}",
        text(&out)
    );

    // Every completed create is in state with what the backend observed.
    let state = c.state("t");
    let recorded = state["resources"].as_array().unwrap();
    // 18, the CA and the four hosts' certificates.
    assert_eq!(recorded.len(), 23);
    let target = recorded
        .iter()
        .find(|r| r["address"] == "target.img0.base")
        .unwrap();
    assert_eq!(target["observed"]["uri"], "nbd://127.0.21.1:10809/base");

    // A second plan shows no changes.
    let plan = c.run(&[
        "plan",
        "-f",
        "spec.json",
        "--target",
        "snapshot",
        "--detailed-exitcode",
    ]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));

    // The leaf's clone reads the image through three relays.
    let leaf = read_clone(&c, "node03", 0, "leaf.raw");
    assert_eq!(sha256(&leaf), base_sum);

    // Writes to one clone stay in its overlay.
    let overlay = c.path().join(".vmthunder/t/node02/base/lv-cow-0.img");
    let creds = format!(
        "tls-creds-x509,id=vmthunder-tls,dir={},endpoint=client",
        c.path().join(".vmthunder/t/node02/.tls").display()
    );
    let w = Command::new("qemu-io")
        .args([
            "--object",
            &creds,
            "-f",
            "qcow2",
            "-c",
            "write -P 0xab 0 1M",
        ])
        .arg(&overlay)
        .output()
        .unwrap();
    assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stderr));
    let mid = read_clone(&c, "node02", 0, "mid.raw");
    assert_ne!(
        sha256(&mid),
        base_sum,
        "the write is visible in its own clone"
    );
    let again = read_clone(&c, "node03", 0, "leaf2.raw");
    assert_eq!(
        sha256(&again),
        base_sum,
        "other clones and every cache are unchanged"
    );

    // With its parent (node02) and the source killed, node03's cache serves the re-read.
    for host in ["node02", "img0"] {
        let pid = pid_of_relay(&c, host);
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let cached = read_clone(&c, "node03", 0, "leaf3.raw");
    assert_eq!(
        sha256(&cached),
        base_sum,
        "the cache answered without its parent"
    );
    assert_eq!(sha256(&base), base_sum, "the base image is unmodified");

    // Destroy leaves nothing: no process, file, socket or directory.
    let out = c.run(&["destroy", "-f", "spec.json", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Destroy complete! Resources: 23 destroyed"));
    assert_eq!(c.files(), Vec::<String>::new());
    assert_eq!(c.processes(), Vec::<u32>::new());
    assert_eq!(c.state("t")["resources"], json!([]));
}

#[test]
fn guests_of_the_local_example_boot_and_print_their_ready_line() {
    // examples/local.json as shipped, with paths made absolute for the scratch directory.
    let mut s: Value =
        serde_json::from_slice(&std::fs::read(repo().join("examples/local.json")).unwrap())
            .unwrap();
    s.as_object_mut().unwrap().remove("$schema");
    for (ptr, file) in [
        ("/images/0/path", "base.raw"),
        ("/clones/boot/kernel", "vmlinuz"),
        ("/clones/boot/initrd", "initrd.img"),
    ] {
        *s.pointer_mut(ptr).unwrap() = json!(guest(file));
    }
    s["backend"]["accel"] = json!("tcg");
    for h in s["hosts"].as_array_mut().unwrap() {
        // Off the example's own 127.0.1.x, so a running quickstart does not collide.
        let a = h["address"]
            .as_str()
            .unwrap()
            .replace("127.0.1.", "127.0.22.");
        h["address"] = json!(a);
    }
    let c = Cluster::new(&s);
    let out = c.apply();
    assert!(out.status.success(), "{}", text(&out));
    let base_sum = sha256(Path::new(&guest("base.raw")));
    let state = c.state("local");
    let domains: Vec<&Value> = state["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["address"].as_str().unwrap().starts_with("domain."))
        .collect();
    assert_eq!(domains.len(), 12);
    for d in domains {
        let console = std::fs::read_to_string(d["observed"]["console"].as_str().unwrap()).unwrap();
        let ready = console
            .lines()
            .find(|l| l.contains("VMTHUNDER-READY"))
            .unwrap_or_else(|| panic!("no ready line from {}: {console}", d["address"]));
        let a = &d["desired"];
        assert!(
            ready.contains(&format!("name={}", a["name"].as_str().unwrap())),
            "{ready}"
        );
        assert!(
            ready.contains(&format!("uuid={}", a["uuid"].as_str().unwrap())),
            "{ready}"
        );
        assert!(
            ready.contains(&format!("mac={}", a["mac"].as_str().unwrap())),
            "{ready}"
        );
        assert!(
            ready.contains(&format!("disk_sha256={base_sum}")),
            "{ready}"
        );
        assert_eq!(d["observed"]["status"], "running");
    }
    let plan = c.run(&["plan", "-f", "spec.json", "--detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    destroy_leaves_nothing(&c);
}

#[test]
fn a_failing_operation_skips_only_its_dependents_and_is_reported_once() {
    // Two images; the second's relay port on node02 is taken by another program, and a third
    // image is not a qcow2 at all.
    let mut s = spec(23, 3, 2, 1, false);
    let c = Cluster::new(&s);
    let junk = c.path().join("junk.qcow2");
    std::fs::write(&junk, vec![0x5a; 1 << 20]).unwrap();
    s["images"] = json!([
        { "name": "base", "source_host": "img0", "path": guest("base.raw"), "format": "raw" },
        { "name": "other", "source_host": "img0", "path": guest("base.raw"), "format": "raw" },
        { "name": "junk", "source_host": "img0", "path": junk, "format": "qcow2" },
    ]);
    std::fs::write(c.path().join("spec.json"), serde_json::to_vec(&s).unwrap()).unwrap();
    // node02 is 127.0.23.12; the relay of image 1 ("other") listens on base_port + 1.
    let blocker = TcpListener::bind("127.0.23.12:10810").unwrap();
    let out = c.apply_with(&["--target", "snapshot"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert_eq!(
        t.matches("Error: creating cache.node02.other").count(),
        1,
        "{t}"
    );
    assert!(t.contains("cannot listen on 127.0.23.12:10810"), "{t}");
    assert_eq!(
        t.matches("Error: creating target.img0.junk").count(),
        1,
        "{t}"
    );
    assert!(t.contains("is not a readable qcow2 image"), "{t}");
    assert_eq!(t.matches("Error:").count(), 2, "{t}");
    assert!(t.contains("Apply failed."), "{t}");
    // The healthy image is complete; of "other" only node02's branch is missing.
    let state = c.state("t");
    let status = |a: &str| {
        state["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["address"] == a)
            .map(|r| r["status"].as_str().unwrap().to_string())
    };
    assert_eq!(status("snapshot.node03.base.0").as_deref(), Some("ready"));
    assert_eq!(status("snapshot.node01.other.0").as_deref(), Some("ready"));
    assert_eq!(status("cache.node02.other").as_deref(), Some("tainted"));
    assert_eq!(status("snapshot.node02.other.0"), None, "skipped");
    assert_eq!(status("target.img0.junk").as_deref(), Some("tainted"));
    assert_eq!(status("session.node01.junk"), None, "skipped");

    // Once the port is free and the image fixed, apply replaces the tainted and converges.
    drop(blocker);
    Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&junk)
        .arg("1M")
        .status()
        .unwrap();
    let out = c.apply_with(&["--target", "snapshot"]);
    assert!(out.status.success(), "{}", text(&out));
    let plan = c.run(&[
        "plan",
        "-f",
        "spec.json",
        "--target",
        "snapshot",
        "--detailed-exitcode",
    ]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    destroy_leaves_nothing(&c);
}

#[test]
fn bad_input_fails_before_anything_is_touched() {
    // A missing image file.
    let mut s = spec(24, 2, 2, 1, false);
    s["images"][0]["path"] = json!("/nonexistent/base.raw");
    let c = Cluster::new(&s);
    let out = c.apply_with(&["--target", "snapshot"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains(
            "target.img0.base: the image file `/nonexistent/base.raw` cannot be read on host img0"
        ),
        "{t}"
    );
    assert!(t.contains("nothing was changed"), "{t}");
    assert!(!c.path().join(".vmthunder").exists());
    assert!(!c.path().join("state/t.json").exists());

    // A stale saved plan: the state moved on after it was made.
    let c = Cluster::new(&spec(24, 2, 2, 1, false));
    let out = c.run(&[
        "plan",
        "-f",
        "spec.json",
        "--target",
        "snapshot",
        "--out",
        "p.json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = c.apply_with(&["--target", "lv"]);
    assert!(out.status.success(), "{}", text(&out));
    let before = std::fs::read(c.path().join("state/t.json")).unwrap();
    let files = c.files();
    let out = c.run(&["apply", "p.json"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("the saved plan is stale"), "{t}");
    assert_eq!(
        std::fs::read(c.path().join("state/t.json")).unwrap(),
        before
    );
    assert_eq!(c.files(), files);

    // apply without --auto-approve and without a terminal refuses rather than guessing.
    let out = c.run(&["apply", "-f", "spec.json", "--target", "snapshot"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("pass --auto-approve"), "{}", text(&out));
}

#[test]
fn a_saved_plan_applies_exactly_and_only_once() {
    let c = Cluster::new(&spec(25, 2, 2, 1, false));
    let out = c.run(&[
        "plan",
        "-f",
        "spec.json",
        "--target",
        "snapshot",
        "--out",
        "p.json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    // The spec changes after the plan was made: the plan still runs as it was made.
    std::fs::write(c.path().join("spec.json"), b"{ not json").unwrap();
    let out = c.run(&["apply", "p.json"]);
    assert!(out.status.success(), "{}", text(&out));
    // 11, the CA and three certificates.
    assert!(text(&out).contains("Resources: 15 added"), "{}", text(&out));
    let out = c.run(&["apply", "p.json"]);
    assert!(text(&out).contains("stale"), "{}", text(&out));
    std::fs::write(
        c.path().join("spec.json"),
        serde_json::to_vec(&spec(25, 2, 2, 1, false)).unwrap(),
    )
    .unwrap();
}

#[test]
fn with_netns_each_host_serves_from_its_own_namespace() {
    let base_sum = sha256(Path::new(&guest("base.raw")));
    let mut s = spec(26, 3, 1, 1, false);
    s["cluster"] = json!(NETNS_CLUSTER);
    s["backend"]["netns"] = json!(true);
    for (i, h) in s["hosts"].as_array_mut().unwrap().iter_mut().enumerate() {
        h["address"] = json!(format!("10.226.0.{}", i + 1));
    }
    let c = Cluster::new(&s);
    let out = c.apply_with(&["--target", "snapshot"]);
    assert!(out.status.success(), "{}", text(&out));
    let mut have = namespaces(NETNS_CLUSTER);
    have.sort();
    assert_eq!(
        have,
        [
            "vmt-nstest-bridge",
            "vmt-nstest-img0",
            "vmt-nstest-node01",
            "vmt-nstest-node02",
            "vmt-nstest-node03"
        ]
    );
    // node02's export listens on node02's own address, inside its namespace only.
    let ss = Command::new("ip")
        .args(["netns", "exec", "vmt-nstest-node02", "ss", "-Htln"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&ss.stdout).contains("10.226.0.3:10809"));
    // The leaf reads the image across three namespaces and the bridge.
    let overlay = c.path().join(".vmthunder/nstest/node03/base/lv-cow-0.img");
    let dst = c.path().join("leaf.raw");
    let st = Command::new("ip")
        .args([
            "netns",
            "exec",
            "vmt-nstest-node03",
            "qemu-img",
            "convert",
            "-U",
            "-O",
            "raw",
            "--object",
            &format!(
                "tls-creds-x509,id=vmthunder-tls,dir={},endpoint=client",
                c.path().join(".vmthunder/nstest/node03/.tls").display()
            ),
        ])
        .arg(&overlay)
        .arg(&dst)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert_eq!(sha256(&dst), base_sum);
    let out = c.run(&["destroy", "-f", "spec.json", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(namespaces(NETNS_CLUSTER), Vec::<String>::new());
    assert_eq!(c.files(), Vec::<String>::new());
    assert_eq!(c.processes(), Vec::<u32>::new());
}

/// What `qemu-img` makes of `from`, in `format` (with `-o options`), at `to`.
fn qemu_img_convert(from: &Path, format: &str, options: &str, to: &Path) {
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", format, "-o", options])
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
}

/// The `disk_sha256=` each domain's guest printed on its ready line (it reads its whole disk).
fn disk_sums(state: &Value) -> Vec<(String, String)> {
    state["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["address"].as_str().unwrap().starts_with("domain."))
        .map(|d| {
            let console =
                std::fs::read_to_string(d["observed"]["console"].as_str().unwrap()).unwrap();
            let sum = console
                .split("disk_sha256=")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .unwrap_or_else(|| panic!("no disk_sha256 from {}: {console}", d["address"]))
                .to_string();
            (d["address"].as_str().unwrap().to_string(), sum)
        })
        .collect()
}

#[test]
fn imported_vmdk_vhdx_vhd_and_a_differencing_chain_boot_clones_with_the_originals_bytes() {
    let base = PathBuf::from(guest("base.raw"));
    let base_sum = sha256(&base);
    let mut s = spec(27, 1, 2, 1, true);
    let c = Cluster::new(&s);
    let dir = c.path().to_path_buf();
    let p = |f: &str| dir.join(f).display().to_string();
    qemu_img_convert(
        &base,
        "vmdk",
        "subformat=streamOptimized",
        &dir.join("web01.vmdk"),
    );
    qemu_img_convert(&base, "vhdx", "subformat=dynamic", &dir.join("lab.vhdx"));
    // Without force_size a VHD's size is rounded up to whole cylinders, as Virtual PC does.
    qemu_img_convert(
        &base,
        "vpc",
        "subformat=fixed,force_size=on",
        &dir.join("old.vhd"),
    );
    // A Hyper-V differencing VHDX over a parent made from the base: one whole 1 MiB block of
    // 0x5a at 8 MiB in the child, everything else read through to the parent.
    qemu_img_convert(
        &base,
        "vhdx",
        "subformat=dynamic,block_size=1M",
        &dir.join("hv-base.vhdx"),
    );
    let st = Command::new("python3")
        .arg(repo().join("tests/fixtures/vhdx_child.py"))
        .arg(dir.join("hv-base.vhdx"))
        .arg(dir.join("hv-child.vhdx"))
        .args(["8388608", "1048576", "0x5a"])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let mut flat = std::fs::read(&base).unwrap();
    flat[8 << 20..9 << 20].fill(0x5a);
    std::fs::write(dir.join("expected.raw"), &flat).unwrap();
    let chain_sum = sha256(&dir.join("expected.raw"));
    // The chain read through commands (as on another host) yields the same disk.
    {
        use std::io::Read;
        let local = vmthunder::backend::transport::Local { netns: None };
        let files = vmthunder::backend::vhdx::Files::through_commands(&local, "img0");
        let child = p("hv-child.vhdx");
        let read = files.scope(|f| {
            let mut chain = vmthunder::backend::vhdx::chain(f, &child).unwrap().unwrap();
            let mut all = Vec::new();
            chain.reader.read_to_end(&mut all).unwrap();
            (chain.files.len(), all == flat)
        });
        assert_eq!(read, (2, true));
    }
    s["images"] = json!([
        { "name": "web", "source_host": "img0", "path": p("web.raw"), "format": "raw",
          "size": "64MiB", "import": { "from": p("web01.vmdk"), "format": "vmdk" } },
        { "name": "lab", "source_host": "img0", "path": p("lab.qcow2"), "format": "qcow2",
          "import": { "from": p("lab.vhdx"), "format": "vhdx" } },
        // No clone of its own (its checksum is the original's; it keeps CI short).
        { "name": "old", "source_host": "img0", "path": p("old.raw"), "format": "raw",
          "size": "64MiB", "clones_per_host": 0,
          "import": { "from": p("old.vhd"), "format": "vpc" } },
        { "name": "hv", "source_host": "img0", "path": p("hv.raw"), "format": "raw",
          "import": { "from": p("hv-child.vhdx"), "format": "vhdx" } },
    ]);
    let write = |s: &Value| {
        std::fs::write(dir.join("spec.json"), serde_json::to_vec_pretty(s).unwrap()).unwrap()
    };

    // Bad input, each at its place in the spec, and nothing touched.
    let mut bad = s.clone();
    bad["images"][0]["import"]["from"] = json!(p("missing.vmdk"));
    bad["images"][1]["import"]["format"] = json!("vmdk");
    bad["images"][2]["size"] = json!("32MiB");
    std::fs::rename(dir.join("hv-base.vhdx"), dir.join("hv-moved.vhdx")).unwrap();
    // A file of the user's where an import would write.
    std::fs::write(dir.join("lab.qcow2"), b"the user's").unwrap();
    write(&bad);
    let out = c.apply();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    for want in [
        format!(
            "/images/0/import/from: `{}` cannot be read on host img0",
            p("missing.vmdk")
        ),
        format!(
            "/images/1/import/format: `{}` on host img0 is not a vmdk image",
            p("lab.vhdx")
        ),
        format!(
            "/images/2/import/from: `{}` on host img0 holds 64MiB (67108864 bytes), more than the image's size 32MiB",
            p("old.vhd")
        ),
        format!(
            "/images/3/import/from: on host img0: the parent of differencing disk `{}` is missing: it names `hv-base.vhdx`",
            p("hv-child.vhdx")
        ),
        format!(
            "/images/1/path: `{}` exists already on host img0, and vmthunder did not import it",
            p("lab.qcow2")
        ),
        "nothing was changed".to_string(),
    ] {
        assert!(t.contains(&want), "{want}\n{t}");
    }
    assert_eq!(std::fs::read(dir.join("lab.qcow2")).unwrap(), b"the user's");
    std::fs::remove_file(dir.join("lab.qcow2")).unwrap();
    std::fs::rename(dir.join("hv-moved.vhdx"), dir.join("hv-base.vhdx")).unwrap();
    // A disk image declared raw would be imported as its container's bytes.
    bad = s.clone();
    bad["images"][0]["import"]["format"] = json!("raw");
    write(&bad);
    let out = c.apply();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("is not a raw image (it holds a vmdk image"),
        "{}",
        text(&out)
    );
    assert!(!dir.join(".vmthunder").exists());
    assert!(!dir.join("state/t.json").exists());
    for f in ["web.raw", "lab.qcow2", "old.raw", "hv.raw"] {
        assert!(!dir.join(f).exists(), "{f}");
    }

    // The four import, and each image's clone reads the original's bytes (the chain's: the
    // parent's with the child's block).
    write(&s);
    let out = c.apply_with(&["--json"]);
    assert!(out.status.success(), "{}", text(&out));
    // Each import told how far it was, in bytes.
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for image in ["web", "lab", "old", "hv"] {
        let addr = format!("image.img0.{image}");
        let told: Vec<&Value> = events
            .iter()
            .filter(|e| e["type"] == "apply_progress" && e["hook"]["address"] == addr)
            .collect();
        assert!(!told.is_empty(), "no progress of {addr}: {events:?}");
        for e in told {
            let (done, total) = (
                e["bytes_done"].as_u64().unwrap(),
                e["bytes_total"].as_u64().unwrap(),
            );
            assert!(total >= 64 << 20 && done <= total, "{e}");
        }
    }
    let state = c.state("t");
    let sums = disk_sums(&state);
    assert_eq!(sums.len(), 3, "{sums:?}");
    let want = |addr: &str| {
        if addr.contains(".hv.") {
            chain_sum.clone()
        } else {
            base_sum.clone()
        }
    };
    for (addr, sum) in &sums {
        assert_eq!(*sum, want(addr), "{addr}");
    }
    let recorded = |image: &str| {
        let r = state["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["address"] == format!("image.img0.{image}"))
            .unwrap_or_else(|| panic!("no image.img0.{image} in {state}"));
        r["observed"].clone()
    };
    // Raw images hold exactly the original; the qcow2 one the same disk.
    assert_eq!(recorded("web")["sha256"], json!(base_sum));
    assert_eq!(recorded("old")["sha256"], json!(base_sum));
    assert_eq!(recorded("hv")["sha256"], json!(chain_sum));
    assert_eq!(sha256(&dir.join("web.raw")), base_sum);
    assert_eq!(
        recorded("lab")["sha256"],
        json!(sha256(&dir.join("lab.qcow2")))
    );
    let cmp = Command::new("qemu-img")
        .args(["compare", "-U"])
        .arg(dir.join("lab.qcow2"))
        .arg(&base)
        .output()
        .unwrap();
    assert!(
        cmp.status.success(),
        "{}",
        String::from_utf8_lossy(&cmp.stdout)
    );
    let plan = c.run(&["plan", "-f", "spec.json", "--detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));

    // A byte changed in place, its time put back: only the checksum tells.
    let web = dir.join("web.raw");
    let mtime = std::fs::metadata(&web).unwrap().modified().unwrap();
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&web).unwrap();
        f.seek(std::io::SeekFrom::Start(4096)).unwrap();
        f.write_all(b"changed outside vmthunder").unwrap();
        f.set_modified(mtime).unwrap();
    }
    let plan = c.run(&["plan", "-f", "spec.json", "--detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    let plan = c.run(&[
        "plan",
        "-f",
        "spec.json",
        "--detailed-exitcode",
        "--checksum",
    ]);
    let t = text(&plan);
    assert_eq!(plan.status.code(), Some(2), "{t}");
    for want in [
        "image.img0.web must be replaced",
        "its file was changed outside vmthunder: it is imported again",
        "destroys the writes of clone web-node01-0",
        "Plan: 0 to add, 0 to change, 6 to replace, 0 to destroy. 1 clone loses its writes.",
    ] {
        assert!(t.contains(want), "{want}\n{t}");
    }
    // A grown file is seen without reading it.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&web)
        .unwrap()
        .set_len(65 << 20)
        .unwrap();
    let plan = c.run(&["plan", "-f", "spec.json", "--detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(2), "{}", text(&plan));
    let out = c.apply_with(&["--checksum"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sha256(&web), base_sum);
    let plan = c.run(&[
        "plan",
        "-f",
        "spec.json",
        "--detailed-exitcode",
        "--checksum",
    ]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    let sums = disk_sums(&c.state("t"));
    assert!(sums.iter().all(|(a, s)| *s == want(a)), "{sums:?}");
    // A new time alone (a touch, a restore) is not a change of the bytes.
    let touched = Command::new("touch").arg(&web).status().unwrap();
    assert!(touched.success());
    let plan = c.run(&["plan", "-f", "spec.json"]);
    assert!(plan.status.success(), "{}", text(&plan));
    assert!(!text(&plan).contains("must be replaced"), "{}", text(&plan));

    // With `import` dropped, the imported file is the image as it is: kept, also by destroy.
    s["images"][2].as_object_mut().unwrap().remove("import");
    write(&s);
    let out = c.apply();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sha256(&dir.join("old.raw")), base_sum);
    assert!(disk_sums(&c.state("t")).iter().all(|(a, s)| *s == want(a)));

    destroy_leaves_nothing(&c);
    for f in ["web.raw", "lab.qcow2", "hv.raw"] {
        assert!(!dir.join(f).exists(), "{f}");
    }
    assert_eq!(
        sha256(&dir.join("old.raw")),
        base_sum,
        "a given image stays"
    );
    assert!(dir.join("web01.vmdk").exists(), "the sources stay");
}
