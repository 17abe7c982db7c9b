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
        "/backend/stack: unknown value \"xen\", expected one of \"qemu\", \"linux\", \"sim\"",
        "/backend/transprot: unknown field \"transprot\" (did you mean \"transport\"?)",
        "/hosts/1/address: invalid type: number 5, expected a string",
        "/hosts/3/colour: unknown field \"colour\"",
        "/images/1/size: invalid value \"1XB\": expected a size: a number of bytes",
        "/version: 2 is out of range: use at most 1",
        "/cluster: invalid value \"Lab!\": it must match ^[a-z0-9][a-z0-9_-]{0,62}$ (cluster name",
        "/hosts/2/name: duplicate host name \"img0\" (first at /hosts/0)",
        "/tree/degree: invalid value 0: expected a tree degree: a number, or \"auto\"",
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
        "/backend/ssh/max_sessions: 0 is out of range: use at least 1",
        "/hosts/0/address: invalid address \"-oProxyCommand=touch /tmp/pwned\"",
        "/hosts/1/address: invalid address \"10.0.0.11;reboot\"",
        "/hosts/2/ssh/user: invalid user name",
        "/hosts/2/ssh/connect_timeout: 0 is out of range: use at least 1",
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
            .any(|d| d.starts_with("/tree/degree: invalid value \"fast\": expected a tree degree")),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|d| d
                .starts_with("/estimate/link_rate: invalid value \"quick\": expected a link rate")),
        "{got:?}"
    );
    doc["tree"] = json!({"degree": "auto"});
    doc["estimate"] = json!({"efficiency": 0, "latency_ms": -1, "create": {"domain": -3},
                             "hop_window": 0});
    assert_eq!(
        diagnostics(doc),
        [
            "/estimate/efficiency: 0 is out of range: use at least 0.01 (the share of the link rate left for data after packet and protocol headers)",
            "/estimate/latency_ms: -1 is out of range: use at least 0.0 (one-way latency of a hop between two hosts, in milliseconds)",
            "/estimate/create/domain: -3 is not a duration in seconds between 0 and 86400",
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
        got[0].starts_with(
            "/backend/iscsi_target: unknown value \"iet\", expected one of \"tgt\", \"lio\""
        ),
        "{got:?}"
    );
    doc["backend"] = json!({});
    doc["images"][0]["version"] = json!("Seven_9");
    doc["clones"] = json!({"network": "br0"});
    let got = diagnostics(doc);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[1].starts_with("/images/0/version: invalid value \"Seven_9\": it must match"),
        "{got:?}"
    );
    assert!(
        got[0].starts_with(
            "/clones/network: invalid value \"br0\": it must match ^(bridge|network):"
        ),
        "{got:?}"
    );
}

/// `diagnostics` of a document given as text (duplicate keys survive only there).
fn text_diagnostics(text: &str) -> Vec<String> {
    match Spec::from_slice(text.as_bytes()) {
        Ok(_) => Vec::new(),
        Err(SpecError::Invalid { diagnostics, .. }) => {
            diagnostics.iter().map(ToString::to_string).collect()
        }
        Err(other) => panic!("{other}"),
    }
}

fn assert_has(got: &[String], want: &str) {
    assert!(
        got.iter().any(|g| g.starts_with(want)),
        "missing {want:?} in:\n{}",
        got.join("\n")
    );
}

#[test]
fn a_key_given_twice_is_an_error_at_its_path_not_the_last_one_winning() {
    let mut text = serde_json::to_string(&good()).unwrap();
    text.insert_str(1, r#""backend": {"stack": "sim", "stack": "qemu"}, "#);
    let got = text_diagnostics(&text);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_has(
        &got,
        "/backend/stack: this key is given twice in its object",
    );
    let text = text.replace(r#""cluster":"lab""#, r#""cluster":"lab","cluster":"lab2""#);
    assert_has(
        &text_diagnostics(&text),
        "/cluster: this key is given twice",
    );
}

/// Every field the schema does not make nullable refuses `null` instead of taking its
/// default; a struct refuses an array (serde alone reads `["x", 1]` as a `Ready`).
#[test]
fn null_for_a_field_with_a_default_and_an_array_for_a_struct_are_refused() {
    let mut doc = good();
    doc["backend"] = json!({"stack": null, "transport": null, "netns": null, "base_port": null});
    doc["tree"] = json!({"degree": null});
    doc["cache"] = json!({"size": null});
    doc["clones"]["per_host"] = json!(null);
    doc["clones"]["ready"] = json!(["x", 1]);
    doc["images"][0]["format"] = json!(null);
    let got = diagnostics(doc);
    for w in [
        "/backend/stack: unknown value null, expected one of \"qemu\", \"linux\", \"sim\"",
        "/backend/transport: unknown value null, expected one of \"local\", \"ssh\"",
        "/backend/netns: invalid type: null, expected a boolean",
        "/backend/base_port: invalid type: null, expected an integer",
        "/tree/degree: invalid value null: expected a tree degree",
        "/cache/size: invalid type: null, expected an integer or a string",
        "/clones/per_host: invalid type: null, expected an integer",
        "/clones/ready: invalid type: array [\"x\",1], expected an object or null",
        "/images/0/format: invalid type: null, expected a string",
    ] {
        assert_has(&got, w);
    }
    assert_eq!(got.len(), 9, "{got:?}");
    // Optional fields without a default still take null as "not given".
    let mut doc = good();
    doc["clones"]["boot"] = json!(null);
    doc["images"][0]["hosts"] = json!(null);
    assert!(diagnostics(doc).is_empty());
}

#[test]
fn export_ports_stay_within_1_to_65535_after_they_are_assigned() {
    let mut doc = good();
    doc["backend"] = json!({"base_port": 0});
    assert_has(
        &diagnostics(doc.clone()),
        "/backend/base_port: 0 is out of range: use at least 1",
    );
    doc["backend"] = json!({"base_port": 65535});
    assert!(
        diagnostics(doc.clone()).is_empty(),
        "one image per address fits"
    );
    doc["images"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "two", "source_host": "img0", "path": "two.qcow2"}));
    assert_has(
        &diagnostics(doc.clone()),
        "/backend/base_port: 1 host at address \"10.0.0.1\" with 2 images needs ports 65535 to 65536, past 65535",
    );
    // Hosts sharing an address take consecutive ranges.
    doc["backend"] = json!({"base_port": 65531});
    for h in doc["hosts"].as_array_mut().unwrap() {
        h["address"] = json!("127.0.0.1");
    }
    assert_has(
        &diagnostics(doc.clone()),
        "/backend/base_port: 3 hosts at address \"127.0.0.1\" with 2 images need ports 65531 to 65536, past 65535",
    );
    doc["backend"] = json!({"base_port": 65530});
    assert!(diagnostics(doc.clone()).is_empty());
    // The linux stack puts every export on the iSCSI port.
    doc["backend"] = json!({"base_port": 65535, "stack": "linux", "volume_group": "vg"});
    assert!(diagnostics(doc).is_empty());
}

#[test]
fn rates_shares_and_sizes_are_bounded_by_what_links_and_disks_can_be() {
    let mut doc = good();
    doc["estimate"] = json!({"efficiency": 1e-300, "link_rate": 1e-300});
    let got = diagnostics(doc.clone());
    assert_has(
        &got,
        "/estimate/efficiency: 1e-300 is out of range: use at least 0.01",
    );
    assert_has(
        &got,
        "/estimate/link_rate: invalid value 1e-300: expected a link rate",
    );
    doc["estimate"] = json!({"link_rate": "0.0000001bit"});
    assert_has(
        &diagnostics(doc.clone()),
        "/estimate/link_rate: invalid rate \"0.0000001bit\": use 1kbit to 10tbit",
    );
    doc["estimate"] = json!({"link_rate": "99tbit"});
    assert_has(
        &diagnostics(doc.clone()),
        "/estimate/link_rate: invalid rate \"99tbit\"",
    );
    doc["estimate"] = json!({});
    for (at, field) in [
        ("/estimate/hop_window", "hop_window"),
        ("/estimate/working_set", "working_set"),
    ] {
        doc["estimate"] = json!({field: u64::MAX});
        assert_has(
            &diagnostics(doc.clone()),
            &format!("{at}: invalid value 18446744073709551615: expected a size"),
        );
        doc["estimate"] = json!({field: "8192PiB"});
        assert!(!diagnostics(doc.clone()).is_empty());
        doc["estimate"] = json!({field: "8388608TiB"});
        assert_has(
            &diagnostics(doc.clone()),
            &format!("{at}: invalid size \"8388608TiB\": too large"),
        );
    }
    doc["estimate"] = json!({});
    doc["images"][0]["size"] = json!(u64::MAX);
    assert_has(
        &diagnostics(doc),
        "/images/0/size: invalid value 18446744073709551615: expected a size",
    );
}

/// A duration the model derives (the sim stack sleeps it) is finite and at most a week.
#[test]
fn every_duration_the_model_derives_is_bounded_with_an_error_at_the_field_that_makes_it_long() {
    let mut doc = good();
    doc["backend"] = json!({"stack": "sim"});
    for (estimate, at) in [
        (
            json!({"hop_window": i64::MAX, "working_set": i64::MAX}),
            "/estimate/working_set",
        ),
        (
            json!({"link_rate": "1kbit", "efficiency": 0.01}),
            "/estimate/link_rate",
        ),
        (json!({"latency_ms": 60000, "link_rate": "10tbit"}), ""),
    ] {
        doc["estimate"] = estimate;
        let got = diagnostics(doc.clone());
        if at.is_empty() {
            assert!(
                got.is_empty(),
                "a minute per hop over 2 hops is fine: {got:?}"
            );
            continue;
        }
        assert_eq!(got.len(), 1, "{got:?}");
        assert_has(
            &got,
            &format!("{at}: the model gives the slowest host of image \"base\""),
        );
        assert!(got[0].contains("longer than a week"), "{got:?}");
    }
    // The same spec on the qemu stack with a default estimate does not consult the model.
    doc["backend"] = json!({});
    doc["estimate"] = json!({});
    assert!(diagnostics(doc).is_empty());
}

#[test]
fn paths_given_to_commands_refuse_control_characters_and_a_leading_dash() {
    for bad in ["-rf", "a\u{0}b", "a\nb", "\u{7f}x"] {
        let mut doc = good();
        doc["backend"] = json!({"stack": "linux", "volume_group": bad, "root": bad});
        doc["images"][0]["path"] = json!(bad);
        doc["clones"]["boot"] = json!({"kernel": bad, "initrd": bad});
        let got = diagnostics(doc);
        for at in [
            "/backend/volume_group",
            "/backend/root",
            "/images/0/path",
            "/clones/boot/kernel",
            "/clones/boot/initrd",
        ] {
            assert_has(&got, &format!("{at}: invalid value"));
        }
    }
}

#[test]
fn the_expansion_is_bounded_before_it_runs() {
    let mut doc = good();
    doc["images"][0]
        .as_object_mut()
        .unwrap()
        .remove("clones_per_host");
    doc["clones"]["per_host"] = json!(4294967295u64);
    let started = std::time::Instant::now();
    let got = diagnostics(doc.clone());
    assert_has(
        &got,
        "/clones/per_host: 4294967295 is out of range: use at most 1024",
    );
    doc["clones"]["per_host"] = json!(4294967296u64);
    assert_has(
        &diagnostics(doc.clone()),
        "/clones/per_host: 4294967296 is out of range",
    );
    // Within the per-host limit but too many in all: refused before any name is rendered.
    doc["clones"]["per_host"] = json!(1024);
    let hosts: Vec<_> = (0..2000)
        .map(|i| json!({"name": format!("n{i}"), "address": format!("10.1.{}.{}", i / 250, i % 250)}))
        .collect();
    doc["hosts"] = json!(hosts);
    doc["images"][0]["source_host"] = json!("n0");
    let got = diagnostics(doc);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_has(
        &got,
        "/clones/per_host: the spec asks for 1999 x 1024 = 2046976 clones in all",
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn a_huge_value_is_quoted_cut_with_its_length() {
    let mut doc = good();
    let huge = format!("-{}", "x".repeat(100_000));
    doc["images"][0]["path"] = json!(huge);
    doc["hosts"][1]["address"] = json!(format!(";{}", "y".repeat(100_000)));
    let got = diagnostics(doc);
    assert_eq!(got.len(), 2, "{got:?}");
    for g in &got {
        assert!(g.len() < 1500, "{} characters: {}", g.len(), &g[..200]);
        assert!(g.contains("characters"), "{g}");
    }
}

/// Every field whose schema does not admit `null` refuses it, wherever it sits, instead of
/// silently taking its default: found from the schema itself, so a new field is covered too.
#[test]
fn no_field_the_schema_makes_non_nullable_takes_null() {
    let schema = Spec::json_schema();
    let admits_null = |p: &serde_json::Value| {
        let text = p.to_string();
        text.contains("\"null\"")
    };
    let places = [
        ("Backend", "/backend"),
        ("Tree", "/tree"),
        ("CacheSpec", "/cache"),
        ("Clones", "/clones"),
        ("Estimate", "/estimate"),
        ("Host", "/hosts/1"),
        ("Image", "/images/0"),
        ("Ssh", "/hosts/1/ssh"),
        ("Boot", "/clones/boot"),
        ("Ready", "/clones/ready"),
    ];
    let mut base = good();
    base["clones"]["boot"] = json!({"kernel": "/k"});
    base["clones"]["ready"] = json!({"line": "READY"});
    base["estimate"] = json!({});
    base["backend"] = json!({});
    let mut checked = 0;
    for (def, at) in places {
        let props = schema["$defs"][def]["properties"].as_object().unwrap();
        for (name, p) in props {
            if admits_null(p) {
                continue;
            }
            let mut doc = base.clone();
            doc.pointer_mut(at).unwrap()[name] = serde_json::Value::Null;
            let got = diagnostics(doc);
            let path = format!("{at}/{name}: ");
            assert!(
                got.iter().any(|g| g.starts_with(&path)),
                "null at {at}/{name} was not refused: {got:?}"
            );
            checked += 1;
        }
    }
    for top in [
        "version", "cluster", "hosts", "images", "backend", "tree", "cache", "clones",
    ] {
        let mut doc = base.clone();
        doc[top] = serde_json::Value::Null;
        assert!(
            !diagnostics(doc).is_empty(),
            "null at /{top} was not refused"
        );
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} fields checked");
}

/// Issue 22's bad input: each an error at its JSON path, and no spec.
#[test]
fn networks_cloud_init_and_firmware_are_checked_at_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id.pub");
    std::fs::write(&key, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA me@here\n").unwrap();
    let private = dir.path().join("id");
    std::fs::write(
        &private,
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n",
    )
    .unwrap();
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut doc = good();
        doc["networks"] = json!([{"name": "lab", "cidr": "10.60.0.0/16"}]);
        doc["clones"]["networks"] = json!(["lab"]);
        edit(&mut doc);
        diagnostics(doc)
    };
    // The good one, with keys and user data.
    let user_data = dir.path().join("user-data");
    std::fs::write(&user_data, "#cloud-config\npackages: [htop]\n").unwrap();
    let mut doc = good();
    doc["networks"] = json!([{"name": "lab", "cidr": "10.60.0.0/16"}]);
    doc["clones"]["networks"] = json!(["lab"]);
    doc["clones"]["ssh_authorized_keys"] = json!([key]);
    doc["clones"]["cloud_init"] = json!({"user_data": user_data});
    doc["clones"]["ready"] = json!({"tcp": 22});
    let spec = Spec::from_value(&doc).unwrap();
    assert_eq!(spec.clones.loaded.keys.len(), 1);
    assert!(spec
        .clones
        .loaded
        .user_data
        .as_deref()
        .unwrap()
        .contains("htop"));
    assert!(spec.clones.seeded());

    // A CIDR too small: 2 hosts x 3 clones + 2 bridges = 8 addresses, a /29 holds 5.
    let d = with(&|d| d["networks"][0]["cidr"] = json!("10.60.0.0/29"));
    assert_has(&d, "/networks/0/cidr: 10.60.0.0/29 has room for 5 addresses, but its 6 clones and 2 host bridges need 8: use a /28 or larger");
    // Host bits set; not a prefix at all.
    assert_has(
        &with(&|d| d["networks"][0]["cidr"] = json!("10.60.1.0/16")),
        "/networks/0/cidr: \"10.60.1.0/16\" has host bits set: the network is \"10.60.0.0/16\"",
    );
    assert_has(
        &with(&|d| d["networks"][0]["cidr"] = json!("10.60.0.0/33")),
        "/networks/0/cidr: invalid CIDR",
    );
    // Overlapping networks.
    let d = with(&|d| {
        d["networks"] =
            json!([{"name": "lab", "cidr": "10.60.0.0/16"}, {"name": "db", "cidr": "10.60.8.0/24"}])
    });
    assert_has(
        &d,
        "/networks/1/cidr: 10.60.8.0/24 overlaps 10.60.0.0/16 of /networks/0",
    );
    // A network that holds a host's address.
    let d = with(&|d| d["networks"][0]["cidr"] = json!("10.0.0.0/24"));
    assert_has(&d, "/networks/0/cidr: 10.0.0.0/24 contains 10.0.0.1, the address of host \"img0\" (/hosts/0/address)");
    // An unknown network, and one listed twice.
    let d = with(&|d| d["clones"]["networks"] = json!(["lab", "lba", "lab"]));
    assert_has(
        &d,
        "/clones/networks/1: unknown network \"lba\" (networks: lab)",
    );
    assert_has(&d, "/clones/networks/2: network \"lab\" is listed twice");
    // Unreadable user data and key files; a private key; not a key.
    let d = with(&|d| d["clones"]["cloud_init"] = json!({"user_data": "/nonexistent/user-data"}));
    assert_has(
        &d,
        "/clones/cloud_init/user_data: cannot read `/nonexistent/user-data`",
    );
    let d = with(&|d| d["clones"]["ssh_authorized_keys"] = json!([key, "/nonexistent/id.pub"]));
    assert_has(
        &d,
        "/clones/ssh_authorized_keys/1: cannot read `/nonexistent/id.pub`",
    );
    let d = with(&|d| d["clones"]["ssh_authorized_keys"] = json!([private]));
    assert_has(&d, "/clones/ssh_authorized_keys/0: ");
    assert!(
        d.iter()
            .any(|m| m.contains("private key; give its public half")),
        "{d:?}"
    );
    // Firmware with a kernel; a ready check with nothing to check; TCP without a network.
    let d = with(&|d| {
        d["clones"]["boot"] = json!({"kernel": "/k"});
        d["clones"]["firmware"] = json!("uefi");
    });
    assert_has(
        &d,
        "/clones/firmware: clones with `boot` start their kernel directly",
    );
    assert_has(
        &with(&|d| d["clones"]["firmware"] = json!("coreboot")),
        "/clones/firmware: unknown value \"coreboot\"",
    );
    assert_has(
        &with(&|d| d["clones"]["ready"] = json!({"timeout_secs": 5})),
        "/clones/ready: give \"line\"",
    );
    let d = with(&|d| {
        d["clones"]["networks"] = json!([]);
        d["clones"]["ready"] = json!({"tcp": 22});
    });
    assert_has(&d, "/clones/ready/tcp: a TCP check needs an address");
    // Two networks with one VNI.
    let d = with(
        &|d| d["networks"] = json!([{"name": "lab", "cidr": "10.60.0.0/16", "vni": 7}, {"name": "db", "cidr": "10.61.0.0/16", "vni": 7}]),
    );
    assert_has(&d, "/networks/1/vni: VNI 7 is also used by /networks/0");
}

#[test]
fn a_network_spans_at_most_a_thousand_and_twenty_four_hosts() {
    let hosts: Vec<serde_json::Value> = (0..1100)
        .map(|i| json!({"name": format!("n{i}"), "address": format!("10.0.{}.{}", i / 200, i % 200 + 1)}))
        .collect();
    let doc = json!({
        "version": 1, "cluster": "big", "backend": {"stack": "sim", "transport": "ssh", "root": "/v"},
        "hosts": hosts,
        "images": [{"name": "base", "source_host": "n0", "path": "/b.qcow2"}],
        "networks": [{"name": "lab", "cidr": "10.64.0.0/16"}],
        "clones": {"networks": ["lab"]}
    });
    assert_has(&diagnostics(doc), "/clones/networks: the clones' networks would span 1099 hosts; a network spans at most 1024");
}

#[test]
fn hosts_joined_by_vxlan_need_ip_addresses() {
    let mut doc = good();
    doc["backend"] = json!({"transport": "ssh", "root": "/var/lib/vmthunder"});
    doc["hosts"][1]["address"] = json!("node01.example");
    doc["networks"] = json!([{"name": "lab", "cidr": "10.60.0.0/16"}]);
    doc["clones"]["networks"] = json!(["lab"]);
    assert_has(
        &diagnostics(doc.clone()),
        "/hosts/1/address: \"node01.example\" is a name",
    );
    // One kernel for all: no VXLAN, names are fine.
    doc["backend"] = json!({});
    assert!(diagnostics(doc).is_empty());
}

#[test]
fn imports_are_checked_at_their_path() {
    let mut doc = good();
    doc["images"][0]["import"] =
        json!({"from": "/srv/p2v/web01.vmdk", "format": "vmdk", "from_host": "node02"});
    let s = Spec::from_value(&doc).unwrap();
    assert_eq!(s.images[0].import_host(), Some("node02"));
    doc["images"][0]["import"] = json!({"from": "-rf", "format": "vhd", "from_host": "p2v"});
    let got = diagnostics(doc.clone());
    assert_has(&got, "/images/0/import/from: invalid value \"-rf\"");
    assert_has(
        &got,
        "/images/0/import/format: unknown value \"vhd\", expected one of \"raw\", \"qcow2\", \"vmdk\", \"vhdx\", \"vdi\", \"vpc\"",
    );
    doc["images"][0]["import"] = json!({"from": "disk.raw", "format": "raw", "from_host": "p2v"});
    let got = diagnostics(doc.clone());
    assert_has(&got, "/images/0/import/from_host: unknown host \"p2v\"");
    doc["images"][0]["import"] =
        json!({"from": "p2v/disk.raw", "format": "raw", "from_host": "node01"});
    let got = diagnostics(doc.clone());
    assert_has(&got, "/images/0/import/from: \"p2v/disk.raw\" is relative");
    // On the source host, into the file it reads.
    doc["images"][0]["import"] = json!({"from": "images/base.qcow2", "format": "qcow2"});
    let got = diagnostics(doc.clone());
    assert_has(
        &got,
        "/images/0/import/from: \"images/base.qcow2\" is the image's own path",
    );
    doc["images"][0]["import"] =
        json!({"from": "images/web.vmdk", "format": "vmdk", "size": "1GiB"});
    let got = diagnostics(doc);
    assert_has(&got, "/images/0/import/size: unknown field");
}
