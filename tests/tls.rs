//! TLS on every NBD edge, on the test bed of sshd hosts in network namespaces
//! (scripts/testbed.sh): the cluster applies with a CA and a certificate per host, clones read
//! the image through TLS relays, and an export admits exactly its children: not another host
//! of the cluster, not a client without TLS, not a certificate of another CA. Re-parenting a
//! host changes who an export admits in place. Root only; needs what `scripts/setup.sh`
//! installs and builds.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::testbed::Testbed;
use common::{sha256, text, Cluster};
use serde_json::Value;

const BED: &str = "tl";
const CLUSTER: &str = "tlsc";
/// What a client that the server's authorization list turns away sees: the server ends the
/// TLS session after the handshake (it logs `TLS x509 authz check for CN=... is denied`).
const DENIED: &str = "Cannot read from TLS channel";

/// `qemu-img info` of an NBD export from inside `host`'s namespace, presenting the
/// credentials in `creds` (a `tls-creds-x509` directory) or none: its exit status and output.
fn probe(host: &str, uri: &str, creds: Option<&Path>) -> (bool, String) {
    let rest = uri.strip_prefix("nbd://").expect("an nbd:// uri");
    let (endpoint, export) = rest.split_once('/').unwrap();
    let (address, port) = endpoint.rsplit_once(':').unwrap();
    let mut cmd = Command::new("timeout");
    cmd.args(["20", "ip", "netns", "exec", &format!("vmtb-{BED}-{host}")]);
    cmd.args(["qemu-img", "info", "--output=json"]);
    match creds {
        Some(dir) => {
            cmd.args([
                "--object",
                &format!(
                    "tls-creds-x509,id=probe,dir={},endpoint=client",
                    dir.display()
                ),
                "--image-opts",
                &format!(
                    "driver=nbd,server.type=inet,server.host={address},server.port={port},export={export},tls-creds=probe"
                ),
            ]);
        }
        None => {
            cmd.arg(uri);
        }
    }
    let out = cmd.output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "from {host} to {uri} with {}: {}\n{said}",
        creds.map_or("no TLS".to_string(), |d| d.display().to_string()),
        if out.status.success() {
            "admitted"
        } else {
            "refused"
        }
    );
    (out.status.success(), said)
}

fn record<'s>(state: &'s Value, addr: &str) -> &'s Value {
    state["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["address"] == addr)
        .unwrap_or_else(|| panic!("{addr} is not recorded"))
}

fn uri_of(state: &Value, addr: &str) -> String {
    record(state, addr)["observed"]["uri"]
        .as_str()
        .unwrap()
        .to_string()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// A client credentials directory that presents a certificate for `host` from a CA of its
/// own. It trusts both CAs: the cluster's, so that it accepts the server, and its own, which
/// QEMU checks its own certificate against before it connects.
fn foreign_client(dir: &Path, cluster_ca: &Path, host: &str, address: &str) -> PathBuf {
    let other = vmthunder::pki::new_ca("elsewhere", 1).unwrap();
    let cert = vmthunder::pki::issue(&other, host, address, 1).unwrap();
    let d = dir.join("foreign");
    std::fs::create_dir_all(&d).unwrap();
    let bundle = std::fs::read_to_string(cluster_ca).unwrap() + &other.cert_pem;
    std::fs::write(d.join("ca-cert.pem"), bundle).unwrap();
    std::fs::write(d.join("client-cert.pem"), cert.cert_pem).unwrap();
    std::fs::write(d.join("client-key.pem"), cert.key_pem).unwrap();
    d
}

#[test]
fn only_the_tree_reads_the_image_and_reparenting_changes_who_is_admitted() {
    let names = ["src", "node01", "node02", "node03"];
    let tb = Testbed::up(BED, 91, &names, None);
    // Degree 2: src -> {node01, node02}; node01 -> {node03}. One clone per host.
    let mut spec = tb.cluster_spec(CLUSTER, 2, 1);
    let c = Cluster::new(&spec);
    let out = c.apply();
    assert!(out.status.success(), "{}", text(&out));
    let state = c.state(CLUSTER);

    // The CA and every host's certificate are recorded, their keys never in what is shown.
    record(&state, &format!("ca.{CLUSTER}.tls"));
    for h in names {
        let cert = record(&state, &format!("cert.{h}.tls"));
        assert_eq!(cert["desired"]["subject"], format!("CN={h}"));
    }
    let shown = c.run(&["state", "show", "cert.node01.tls"]);
    assert!(shown.status.success(), "{}", text(&shown));
    assert!(!text(&shown).contains("PRIVATE KEY"), "{}", text(&shown));

    // On each host: a directory only root can read, files only root can read.
    let tls_dir = |h: &str| tb.on_host(h, &format!("/var/lib/vmthunder/{CLUSTER}/{h}/.tls"));
    for h in names {
        let d = tls_dir(h);
        assert_eq!(mode(&d), 0o700, "{}", d.display());
        for f in [
            "ca-cert.pem",
            "server-cert.pem",
            "server-key.pem",
            "client-cert.pem",
            "client-key.pem",
        ] {
            assert_eq!(mode(&d.join(f)), 0o600, "{h}: {f}");
        }
    }

    // Every clone read its whole disk through TLS relays (the leaf's through two) and it is
    // the image.
    let guest = common::repo().join("target/guest/base.raw");
    let base_sum = sha256(&guest);
    for h in ["node01", "node02", "node03"] {
        let log = tb.on_host(
            h,
            &format!("/var/lib/vmthunder/{CLUSTER}/{h}/tiny/vm-0.log"),
        );
        let console = std::fs::read_to_string(&log).unwrap_or_default();
        let ready = console
            .lines()
            .find(|l| l.contains("VMTHUNDER-READY"))
            .unwrap_or_else(|| panic!("no ready line from {h}: {console}"));
        assert!(
            ready.contains(&format!("disk_sha256={base_sum}")),
            "{h}: {ready}"
        );
    }

    // node01's export admits its child node03, and nobody else.
    let export = uri_of(&state, "target.node01.tiny");
    let (ok, said) = probe("node03", &export, Some(&tls_dir("node03")));
    assert!(ok, "the child is admitted: {said}");
    // Another host of the cluster, with its own valid certificate: not a child.
    let (ok, said) = probe("node02", &export, Some(&tls_dir("node02")));
    assert!(!ok);
    assert!(said.contains(DENIED), "{said}");
    // Without TLS.
    let (ok, said) = probe("node02", &export, None);
    assert!(!ok);
    assert!(said.contains("TLS negotiation required"), "{said}");
    // node03's name, from another CA.
    let scratch = tempfile::tempdir().unwrap();
    let foreign = foreign_client(
        scratch.path(),
        &tls_dir("node03").join("ca-cert.pem"),
        "node03",
        tb.address("node03"),
    );
    let (ok, said) = probe("node02", &export, Some(&foreign));
    assert!(!ok);
    assert!(said.contains(DENIED), "{said}");
    // The export of node01's own clones admits node01 (and, on the same NBD server, its
    // child, which reads the same read-only bytes from `tiny`); no other host.
    let local = export.replace("/tiny", "/local");
    let (ok, said) = probe("node01", &local, Some(&tls_dir("node01")));
    assert!(ok, "{said}");
    let (ok, said) = probe("node02", &local, Some(&tls_dir("node02")));
    assert!(!ok);
    assert!(said.contains(DENIED), "{said}");

    let plan = c.run(&["plan", "-f", "spec.json", "--detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));

    // Degree 1: node02 leaves src for another parent, in place. src admits only node01 from
    // then on; node02 reads on from its new parent.
    let pids = |h: &str| {
        std::fs::read_to_string(tb.on_host(
            h,
            &format!("/var/lib/vmthunder/{CLUSTER}/{h}/tiny/vm-0.pid"),
        ))
        .unwrap()
    };
    let guests_before: Vec<String> = ["node01", "node02", "node03"].map(pids).to_vec();
    // No clone restarted, and the next plan is clean.
    let settled = |before: &[String]| {
        assert_eq!(
            ["node01", "node02", "node03"].map(pids).to_vec(),
            before,
            "no clone restarted"
        );
        let plan = c.run(&["plan", "-f", "spec.json", "--detailed-exitcode"]);
        assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    };
    spec["tree"]["degree"] = 1.into();
    std::fs::write(
        c.path().join("spec.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();
    let out = c.apply();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("0 replaced, 0 destroyed"),
        "{}",
        text(&out)
    );
    let moved = c.state(CLUSTER);
    let new_parent = record(&moved, "session.node02.tiny")["desired"]["parent"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new_parent, "src");
    assert_eq!(
        record(&moved, "target.src.tiny")["desired"]["clients"],
        serde_json::json!(["node01"])
    );
    let source = uri_of(&moved, "target.src.tiny");
    let (ok, said) = probe("node02", &source, Some(&tls_dir("node02")));
    assert!(!ok, "the old child is refused");
    assert!(said.contains(DENIED), "{said}");
    let (ok, said) = probe("node01", &source, Some(&tls_dir("node01")));
    assert!(ok, "{said}");
    let adopted = uri_of(&moved, &format!("target.{new_parent}.tiny"));
    let (ok, said) = probe("node02", &adopted, Some(&tls_dir("node02")));
    assert!(ok, "the new parent admits it: {said}");
    settled(&guests_before);

    // Renewing a host's certificate: its relay loads the new one in place (its server
    // restarts with it, its session connects anew), and no guest restarts.
    let old_cert = std::fs::read(tls_dir(&new_parent).join("server-cert.pem")).unwrap();
    let renew = format!("cert.{new_parent}.tls");
    let out = c.apply_with(&["--replace", &renew]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("1 replaced, 0 destroyed"),
        "{}",
        text(&out)
    );
    let new_cert = std::fs::read(tls_dir(&new_parent).join("server-cert.pem")).unwrap();
    assert_ne!(old_cert, new_cert);
    let renewed = c.state(CLUSTER);
    let adopted = uri_of(&renewed, &format!("target.{new_parent}.tiny"));
    let (ok, said) = probe("node02", &adopted, Some(&tls_dir("node02")));
    assert!(ok, "the child reads from the renewed server: {said}");
    settled(&guests_before);

    // Destroy takes the key material off every host.
    let out = c.run(&["destroy", "-f", "spec.json", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(tb.files(), Vec::<String>::new());
    for h in names {
        assert!(!tls_dir(h).exists(), "{h}");
    }
}
