use serde_json::json;

use super::*;

fn diagnostics(doc: serde_json::Value) -> Vec<String> {
    match Spec::from_value(&doc) {
        Ok(_) => Vec::new(),
        Err(SpecError::Invalid { diagnostics, .. }) => {
            diagnostics.iter().map(ToString::to_string).collect()
        }
        Err(other) => panic!("{other}"),
    }
}

fn good() -> serde_json::Value {
    json!({
        "version": 1,
        "cluster": "lab",
        "hosts": [
            {"name": "img0", "address": "10.0.0.1"},
            {"name": "node01", "address": "10.0.0.11", "ssh": {"user": "root", "port": 22}},
            {"name": "node02", "address": "10.0.0.12"}
        ],
        "images": [{"name": "base", "source_host": "img0", "path": "images/base.qcow2",
                     "format": "qcow2", "size": "1GiB", "clones_per_host": 3}],
        "tree": {"degree": 2},
        "cache": {"size": 1073741824u64},
        "clones": {"per_host": 2, "name": "{image}-{host}-{n}", "vcpus": 1, "memory": "256MiB",
                   "cow_size": "1GiB"}
    })
}

#[test]
fn a_good_spec_resolves_defaults() {
    let s = Spec::from_value(&good()).unwrap();
    let img = &s.images[0];
    assert_eq!(s.image_hosts(img), ["node01", "node02"]);
    assert_eq!(s.clones_per_host(img), 3);
    assert_eq!(s.cache.size, Size(1 << 30));
    assert_eq!(s.backend, Backend::default());
    assert_eq!(s.clone_name("base", "node01", 2), "base-node01-2");
    // Digest ignores formatting and key order.
    let reordered: serde_json::Value =
        serde_json::from_str(&serde_json::to_string_pretty(&good()).unwrap()).unwrap();
    assert_eq!(Spec::from_value(&reordered).unwrap().digest(), s.digest());
}

#[test]
fn every_error_is_reported_at_once_with_its_path() {
    let bad = json!({
        "version": 2,
        "cluster": "Lab!",
        "backend": {"stack": "xen", "transprot": "ssh"},
        "hosts": [
            {"name": "img0", "address": "10.0.0.1"},
            {"name": "node01", "address": 5},
            {"name": "img0", "address": "10.0.0.3"},
            {"name": "node03", "address": "10.0.0.4", "colour": "red"}
        ],
        "images": [
            {"name": "base", "source_host": "img9", "path": "b.qcow2", "hosts": ["node03", "node03", "nope"]},
            {"name": "base", "source_host": "img0", "path": "b.qcow2", "size": "1XB"}
        ],
        "tree": {"degree": 0},
        "clones": {"per_host": 2, "name": "{image}-{hostname}"}
    });
    let got = diagnostics(bad);
    let want = [
        "/backend/stack: unknown variant `xen`, expected one of `qemu`, `linux`, `sim`",
        "/backend/transprot: unknown field \"transprot\" (did you mean \"transport\"?)",
        "/hosts/1/address: invalid type: integer `5`, expected a string",
        "/hosts/3/colour: unknown field \"colour\"",
        "/images/1/size: invalid size \"1XB\"",
        "/version: unsupported version 2",
        "/cluster: invalid cluster name \"Lab!\"",
        "/hosts/2/name: duplicate host name \"img0\" (first at /hosts/0)",
        "/tree/degree: must be at least 1",
        "/clones/name: unknown placeholder {hostname}",
    ];
    for w in want {
        assert!(
            got.iter().any(|g| g.starts_with(w)),
            "missing {w:?} in:\n{}",
            got.join("\n")
        );
    }
}

#[test]
fn references_and_uniqueness() {
    let mut doc = good();
    doc["images"][0]["source_host"] = json!("img9");
    doc["images"][0]["hosts"] = json!(["node01", "node01", "ghost"]);
    doc["images"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "base", "source_host": "img0", "path": "x", "hosts": ["img0"]}));
    let got = diagnostics(doc);
    for w in [
        "/images/0/source_host: unknown host \"img9\"",
        "/images/0/hosts/1: host \"node01\" is listed twice (first at /images/0/hosts/0)",
        "/images/0/hosts/2: unknown host \"ghost\"",
        "/images/1/name: duplicate image name \"base\" (first at /images/0)",
        "/images/1/hosts/0: \"img0\" is the image's source host",
    ] {
        assert!(
            got.iter().any(|g| g.starts_with(w)),
            "missing {w:?} in:\n{}",
            got.join("\n")
        );
    }
}

#[test]
fn colliding_clone_names_and_addresses() {
    let mut doc = good();
    doc["clones"]["name"] = json!("vm-{n}");
    let got = diagnostics(doc);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("/clones/name: template \"vm-{n}\" gives the same name \"vm-0\" to clone 0 of image \"base\" on host \"node01\" and clone 0 of image \"base\" on host \"node02\""), "{}", got[0]);

    // Duplicate addresses are fine on one machine, not over ssh or with namespaces.
    let mut doc = good();
    doc["hosts"][2]["address"] = json!("10.0.0.11");
    assert!(diagnostics(doc.clone()).is_empty());
    doc["backend"] = json!({"transport": "ssh", "root": "/var/lib/vmthunder"});
    doc["images"][0]["path"] = json!("/srv/base.qcow2");
    let got = diagnostics(doc);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("/hosts/2/address: address \"10.0.0.11\" is also used by /hosts/1"),
        "{got:?}"
    );
}

/// Nothing from a spec may reach the ssh command line as an option or as shell syntax, and
/// over ssh every path names a file on a host.
#[test]
fn ssh_settings_and_addresses_cannot_carry_options_or_shell_syntax() {
    let mut doc = good();
    doc["backend"] = json!({"transport": "ssh", "root": "/var/lib/vmthunder",
                            "ssh": {"jump": "-oProxyCommand=touch /tmp/x", "max_sessions": 0}});
    doc["images"][0]["path"] = json!("/srv/base.qcow2");
    doc["hosts"][0]["address"] = json!("-oProxyCommand=touch /tmp/pwned");
    doc["hosts"][1]["address"] = json!("10.0.0.11;reboot");
    doc["hosts"][2]["ssh"] = json!({"user": "root$(reboot)", "connect_timeout": 0});
    let got = diagnostics(doc);
    for w in [
        "/backend/ssh/jump: invalid jump host",
        "/backend/ssh/max_sessions: use 1 to 64",
        "/hosts/0/address: invalid address \"-oProxyCommand=touch /tmp/pwned\"",
        "/hosts/1/address: invalid address \"10.0.0.11;reboot\"",
        "/hosts/2/ssh/user: invalid user name",
        "/hosts/2/ssh/connect_timeout: use 1 to 3600 seconds",
    ] {
        assert!(
            got.iter().any(|g| g.starts_with(w)),
            "missing {w:?} in:\n{}",
            got.join("\n")
        );
    }
    assert_eq!(got.len(), 6, "{got:?}");

    let mut doc = good();
    doc["backend"] = json!({"transport": "ssh", "root": "state/hosts"});
    doc["clones"]["boot"] = json!({"kernel": "target/guest/vmlinuz"});
    let got = diagnostics(doc);
    for w in [
        "/backend/root: \"state/hosts\" is relative",
        "/images/0/path: \"images/base.qcow2\" is relative",
        "/clones/boot/kernel: \"target/guest/vmlinuz\" is relative",
    ] {
        assert!(
            got.iter().any(|g| g.starts_with(w)),
            "missing {w:?} in {got:?}"
        );
    }
    // The same paths are fine on this machine.
    let mut doc = good();
    doc["clones"]["boot"] = json!({"kernel": "target/guest/vmlinuz"});
    assert!(diagnostics(doc).is_empty());
}

#[test]
fn structural_errors_never_yield_a_spec() {
    for doc in [
        json!([]),
        json!({"version": 1}),
        json!({"version": 1, "cluster": "x", "hosts": {}, "images": []}),
        json!({"version": 1, "cluster": "x", "hosts": [{"name": "a", "address": "1"}], "images": [], "extra": 1}),
    ] {
        assert!(!diagnostics(doc.clone()).is_empty(), "{doc}");
    }
    let missing = diagnostics(json!({"version": 1}));
    assert!(
        missing.contains(&"/: missing required field \"cluster\"".to_string()),
        "{missing:?}"
    );
    assert!(matches!(
        Spec::from_slice(b"{,"),
        Err(SpecError::Syntax { .. })
    ));
}

#[test]
fn degree_auto_and_the_estimate_model_decode_and_report_bad_values_at_their_path() {
    let mut doc = good();
    doc["tree"] = json!({"degree": "auto"});
    doc["estimate"] = json!({"link_rate": "200mbit", "working_set": "64MiB", "latency_ms": 0.5,
                             "create": {"domain": 12.5}});
    let s = Spec::from_value(&doc).unwrap();
    assert_eq!(s.tree.degree, Degree::AUTO);
    assert_eq!(s.estimate.link_rate.bytes_per_sec(), 25e6);
    assert_eq!(s.estimate.working_set, Some(Size(64 << 20)));
    assert_eq!(s.estimate.create[&Kind::Domain], 12.5);
    assert_eq!(s.estimate.hop_window, Size(8 << 20));
    // Round trip: "auto" and the rate serialize back as written.
    let back = serde_json::to_value(&s).unwrap();
    assert_eq!(back["tree"]["degree"], "auto");
    assert_eq!(back["estimate"]["link_rate"], "200mbit");

    doc["tree"] = json!({"degree": "fast"});
    doc["estimate"] = json!({"link_rate": "quick", "efficiency": 0, "latency_ms": -1,
                             "create": {"domain": -3}, "hop_window": 0});
    let got = diagnostics(doc.clone());
    assert!(
        got.iter()
            .any(|d| d.starts_with("/tree/degree: invalid degree \"fast\"")),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|d| d.starts_with("/estimate/link_rate: invalid rate \"quick\"")),
        "{got:?}"
    );
    doc["tree"] = json!({"degree": "auto"});
    doc["estimate"] = json!({"efficiency": 0, "latency_ms": -1, "create": {"domain": -3},
                             "hop_window": 0});
    assert_eq!(
        diagnostics(doc),
        [
            "/estimate/create/domain: -3 is not a duration in seconds between 0 and 86400",
            "/estimate/efficiency: 0 is not a share between 0 (excluded) and 1",
            "/estimate/latency_ms: -1 is not a latency in milliseconds between 0 and 60000",
            "/estimate/hop_window: must be greater than zero",
        ]
    );
}

#[test]
fn image_versions_and_clone_networks_are_checked_at_their_path() {
    let mut doc = good();
    doc["images"][0]["version"] = json!("7.9-2");
    doc["clones"] = json!({"network": "bridge:br0"});
    assert!(diagnostics(doc.clone()).is_empty());
    doc["backend"] = json!({"stack": "linux", "volume_group": "vg", "iscsi_target": "lio"});
    let s = Spec::from_value(&doc).unwrap();
    assert_eq!(s.backend.iscsi_target, IscsiTarget::Lio);
    doc["backend"]["iscsi_target"] = json!("iet");
    let got = diagnostics(doc.clone());
    assert!(
        got[0].starts_with("/backend/iscsi_target: unknown variant `iet`"),
        "{got:?}"
    );
    doc["backend"] = json!({});
    doc["images"][0]["version"] = json!("Seven_9");
    doc["clones"] = json!({"network": "br0"});
    let got = diagnostics(doc);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[0].starts_with("/images/0/version: invalid version \"Seven_9\""),
        "{got:?}"
    );
    assert!(
        got[1].starts_with("/clones/network: invalid network \"br0\""),
        "{got:?}"
    );
}
