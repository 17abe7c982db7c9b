//! The diff as tables of cases: each builds a spec, applies plans to a state in memory (as a
//! successful apply would record them) and checks the next plan.

use std::collections::BTreeMap;

use super::*;
use crate::graph::Graph;
use crate::resource::Kind;
use crate::spec::Spec;
use crate::state::State;

fn spec_with(hosts: &[&str], degree: u32, clones: u32, extra: serde_json::Value) -> Spec {
    let mut doc = serde_json::json!({
        "version": 1,
        "cluster": "t",
        "hosts": std::iter::once("src").chain(hosts.iter().copied())
            .map(|h| serde_json::json!({"name": h, "address": "127.0.0.1"}))
            .collect::<Vec<_>>(),
        "images": [{"name": "base", "source_host": "src", "path": "base.qcow2"}],
        "tree": {"degree": degree},
        "clones": {"per_host": clones},
    });
    if let (Some(d), Some(e)) = (doc.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            d.insert(k.clone(), v.clone());
        }
    }
    // The tree's own cases; TLS has its own below.
    if doc["backend"].get("tls").is_none() {
        doc["backend"]["tls"] = false.into();
    }
    Spec::from_value(&doc).unwrap_or_else(|e| panic!("{e:?}"))
}

fn spec(hosts: &[&str], degree: u32, clones: u32) -> Spec {
    spec_with(hosts, degree, clones, serde_json::json!({}))
}

fn plan_of(spec: &Spec, state: &State, opts: &Options) -> Plan {
    let graph = Graph::build(spec, state).unwrap();
    let plan = diff(graph, state, opts, None).unwrap();
    OpGraph::build(&plan).order(&plan).expect("acyclic");
    plan
}

fn plan(spec: &Spec, state: &State) -> Plan {
    plan_of(spec, state, &Options::default())
}

/// (address, action) of every change that is not a no-op, sorted.
fn actions(plan: &Plan) -> Vec<(String, Action)> {
    let mut v: Vec<_> = plan
        .changes
        .iter()
        .filter(|c| c.action != Action::NoOp)
        .map(|c| (c.addr.to_string(), c.action))
        .collect();
    v.sort();
    v
}

fn applied(spec: &Spec) -> State {
    let empty = State::empty(&spec.cluster);
    plan(spec, &empty).applied(&empty)
}

fn parents(state: &State) -> BTreeMap<String, String> {
    state.placement["base"].clone()
}

#[test]
fn create_from_empty_then_no_op() {
    let s = spec(&["a", "b", "c"], 2, 2);
    let empty = State::empty("t");
    let p = plan(&s, &empty);
    // Source target + per host (lv, session, cache) + 2 x (lv, snapshot, domain) + target on a.
    let expected = 1 + 3 * (3 + 2 * 3) + 1;
    assert_eq!(
        p.summary(),
        Summary {
            add: expected,
            ..Summary::default()
        }
    );
    assert!(p.changes.iter().all(|c| c.action == Action::Create));
    let state = p.applied(&empty);
    let again = plan(&s, &state);
    assert!(!again.has_changes(), "{:?}", actions(&again));
    assert_eq!(again.summary().no_op, expected);
}

#[test]
fn edges_are_the_real_dependencies() {
    let s = spec(&["a", "b", "c"], 1, 1);
    let p = plan(&s, &State::empty("t"));
    let deps = |a: &str| -> Vec<String> {
        let c = p.changes.iter().find(|c| c.addr.to_string() == a).unwrap();
        c.deps.iter().map(ToString::to_string).collect()
    };
    assert_eq!(deps("target.src.base"), Vec::<String>::new());
    assert_eq!(deps("session.a.base"), ["target.src.base"]);
    assert_eq!(deps("cache.a.base"), ["session.a.base", "lv.a.base"]);
    assert_eq!(deps("target.a.base"), ["cache.a.base"]);
    assert_eq!(deps("session.b.base"), ["target.a.base"]);
    assert_eq!(deps("snapshot.b.base.0"), ["cache.b.base", "lv.b.base.0"]);
    assert_eq!(deps("domain.b.base.0"), ["snapshot.b.base.0"]);
    // Degree 1 is a chain: c is a leaf, so it exports nothing.
    assert!(p
        .changes
        .iter()
        .all(|c| c.addr.to_string() != "target.c.base"));
}

#[test]
fn table_of_changes() {
    struct Case {
        name: &'static str,
        before: Spec,
        after: Spec,
        opts: Options,
        expect: Vec<(&'static str, Action)>,
    }
    let base = spec(&["a", "b"], 2, 1);
    let cases = vec![
        Case {
            name: "unchanged spec is a no-op",
            before: base.clone(),
            after: base.clone(),
            opts: Options::default(),
            expect: vec![],
        },
        Case {
            name: "one more clone creates only its resources",
            before: base.clone(),
            after: spec(&["a", "b"], 2, 2),
            opts: Options::default(),
            expect: vec![
                ("domain.a.base.1", Action::Create),
                ("domain.b.base.1", Action::Create),
                ("lv.a.base.1", Action::Create),
                ("lv.b.base.1", Action::Create),
                ("snapshot.a.base.1", Action::Create),
                ("snapshot.b.base.1", Action::Create),
            ],
        },
        Case {
            name: "a changed attribute replaces the object and what is built on it",
            before: base.clone(),
            after: spec_with(
                &["a", "b"],
                2,
                1,
                serde_json::json!({"clones": {"per_host": 1, "cow_size": "2GiB"}}),
            ),
            opts: Options::default(),
            expect: vec![
                ("domain.a.base.0", Action::Replace),
                ("domain.b.base.0", Action::Replace),
                ("lv.a.base.0", Action::Replace),
                ("lv.b.base.0", Action::Replace),
                ("snapshot.a.base.0", Action::Replace),
                ("snapshot.b.base.0", Action::Replace),
            ],
        },
        Case {
            name: "--replace cascades to dependents only",
            before: base.clone(),
            after: base.clone(),
            opts: Options {
                replace: vec!["snapshot.a.base.0".parse().unwrap()],
                ..Options::default()
            },
            expect: vec![
                ("domain.a.base.0", Action::Replace),
                ("snapshot.a.base.0", Action::Replace),
            ],
        },
        Case {
            name: "one fewer clone deletes its resources",
            before: spec(&["a", "b"], 2, 2),
            after: base.clone(),
            opts: Options::default(),
            expect: vec![
                ("domain.a.base.1", Action::Delete),
                ("domain.b.base.1", Action::Delete),
                ("lv.a.base.1", Action::Delete),
                ("lv.b.base.1", Action::Delete),
                ("snapshot.a.base.1", Action::Delete),
                ("snapshot.b.base.1", Action::Delete),
            ],
        },
        Case {
            name: "a new image path replaces the whole tree but the COW space",
            before: base.clone(),
            after: {
                let mut s = base.clone();
                s.images[0].path = "v2.qcow2".into();
                s
            },
            opts: Options::default(),
            expect: vec![
                ("cache.a.base", Action::Replace),
                ("cache.b.base", Action::Replace),
                ("domain.a.base.0", Action::Replace),
                ("domain.b.base.0", Action::Replace),
                ("session.a.base", Action::Replace),
                ("session.b.base", Action::Replace),
                ("snapshot.a.base.0", Action::Replace),
                ("snapshot.b.base.0", Action::Replace),
                ("target.src.base", Action::Replace),
            ],
        },
        Case {
            name: "destroy deletes everything",
            before: spec(&["a"], 2, 1),
            after: spec(&["a"], 2, 1),
            opts: Options {
                mode: Some(Mode::Destroy),
                ..Options::default()
            },
            expect: vec![
                ("cache.a.base", Action::Delete),
                ("domain.a.base.0", Action::Delete),
                ("lv.a.base", Action::Delete),
                ("lv.a.base.0", Action::Delete),
                ("session.a.base", Action::Delete),
                ("snapshot.a.base.0", Action::Delete),
                ("target.src.base", Action::Delete),
            ],
        },
    ];
    for case in cases {
        let state = applied(&case.before);
        let p = plan_of(&case.after, &state, &case.opts);
        let want: Vec<(String, Action)> = case
            .expect
            .iter()
            .map(|(a, x)| (a.to_string(), *x))
            .collect();
        assert_eq!(actions(&p), want, "case: {}", case.name);
        // Applying the plan converges: the next plan is empty.
        if case.opts.mode.is_none() && case.opts.replace.is_empty() {
            let next = plan(&case.after, &p.applied(&state));
            assert!(
                !next.has_changes(),
                "case {} does not converge: {:?}",
                case.name,
                actions(&next)
            );
        }
    }
}

#[test]
fn tainted_objects_are_replaced_with_their_dependents() {
    let s = spec(&["a"], 2, 1);
    let mut state = applied(&s);
    let i = state.position(&"cache.a.base".parse().unwrap()).unwrap();
    state.resources[i as usize].status = crate::state::Status::Tainted;
    let p = plan(&s, &state);
    let c = p
        .changes
        .iter()
        .find(|c| c.addr.to_string() == "cache.a.base")
        .unwrap();
    assert_eq!(
        (c.action, c.reason.clone()),
        (Action::Replace, Some(Reason::Tainted))
    );
    assert_eq!(
        actions(&p)
            .iter()
            .map(|(a, _)| a.as_str())
            .collect::<Vec<_>>(),
        ["cache.a.base", "domain.a.base.0", "snapshot.a.base.0"]
    );
}

/// Position of each operation in a valid order, keyed by (kind, address).
fn op_positions(p: &Plan) -> std::collections::HashMap<(OpKind, String), usize> {
    OpGraph::build(p)
        .order(p)
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(i, op)| ((op.kind, p.changes[op.change as usize].addr.to_string()), i))
        .collect()
}

#[test]
fn deletes_run_dependents_first_and_replacements_delete_before_create() {
    let s = spec(&["a", "b", "c"], 1, 1);
    let state = applied(&s);
    let destroy = plan_of(
        &s,
        &state,
        &Options {
            mode: Some(Mode::Destroy),
            ..Options::default()
        },
    );
    let pos = op_positions(&destroy);
    for c in &destroy.changes {
        for d in &c.prior_deps {
            assert!(
                pos[&(OpKind::Delete, c.addr.to_string())] < pos[&(OpKind::Delete, d.to_string())],
                "{} must be deleted before {d}",
                c.addr
            );
        }
    }
    // The source's export goes after everything that reads through it (spare volumes aside).
    let source = pos[&(OpKind::Delete, "target.src.base".to_string())];
    for ((_, addr), i) in &pos {
        if !addr.starts_with("lv.") && addr != "target.src.base" {
            assert!(*i < source, "{addr} must be deleted before target.src.base");
        }
    }

    let p = plan_of(
        &s,
        &state,
        &Options {
            replace: vec!["session.b.base".parse().unwrap()],
            ..Options::default()
        },
    );
    let pos = op_positions(&p);
    for c in p.changes.iter().filter(|c| c.action == Action::Replace) {
        let a = c.addr.to_string();
        assert!(pos[&(OpKind::Delete, a.clone())] < pos[&(OpKind::Create, a.clone())]);
        for d in &c.deps {
            if let Some(dc) = pos.get(&(OpKind::Create, d.to_string())) {
                assert!(dc < &pos[&(OpKind::Create, a.clone())]);
            }
        }
    }
    // Replacing b's session rebuilds b and c (below it in the chain), not a.
    let hosts: std::collections::BTreeSet<_> = actions(&p)
        .iter()
        .map(|(a, _)| a.split('.').nth(1).unwrap().to_string())
        .collect();
    assert_eq!(hosts.into_iter().collect::<Vec<_>>(), ["b", "c"]);
}

#[test]
fn adding_a_host_plans_only_that_host() {
    let names: Vec<String> = (0..1000).map(|i| format!("n{i:04}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let state = applied(&spec(&refs, 4, 1));
    let mut more = refs.clone();
    more.push("new");
    let p = plan(&spec(&more, 4, 1), &state);
    let got = actions(&p);
    // The new host lands at the shallowest free slot, under a parent that exported nothing.
    let parent = p.placement["base"]["new"].clone();
    let mut want = vec![
        ("cache.new.base".to_string(), Action::Create),
        ("domain.new.base.0".to_string(), Action::Create),
        ("lv.new.base".to_string(), Action::Create),
        ("lv.new.base.0".to_string(), Action::Create),
        ("session.new.base".to_string(), Action::Create),
        ("snapshot.new.base.0".to_string(), Action::Create),
        (format!("target.{parent}.base"), Action::Create),
    ];
    want.sort();
    assert_eq!(got, want);
    fn depth(host: &str, pl: &BTreeMap<String, String>) -> usize {
        let mut d = 0;
        let mut h = host.to_string();
        while let Some(p) = pl.get(&h) {
            d += 1;
            h = p.clone();
        }
        d
    }
    let max_depth = refs
        .iter()
        .map(|h| depth(h, &parents(&state)))
        .max()
        .unwrap();
    assert!(depth("new", &p.placement["base"]) <= max_depth + 1);
}

#[test]
fn removing_a_host_reparents_only_its_children() {
    // Degree 2 heap: src -> {a, b}; a -> {c, d}; b -> {e, f}; c -> {g}.
    let all = ["a", "b", "c", "d", "e", "f", "g"];
    let state = applied(&spec(&all, 2, 1));
    assert_eq!(parents(&state)["g"], "c");
    let without_a: Vec<&str> = all.iter().copied().filter(|h| *h != "a").collect();
    let p = plan(&spec(&without_a, 2, 1), &state);
    let moved: Vec<&str> = ["b", "c", "d", "e", "f", "g"]
        .into_iter()
        .filter(|h| p.placement["base"][*h] != parents(&state)[*h])
        .collect();
    assert_eq!(moved, ["c", "d"], "only a's children move");
    // a's objects go; c and d move to their new parents in place (their sessions update, and
    // nothing built on them changes); a parent that adopts one may start exporting. g under
    // c, and b's subtree e, f are untouched.
    let mut others = Vec::new();
    for (addr, action) in actions(&p) {
        let host = addr.split('.').nth(1).unwrap().to_string();
        match (host.as_str(), action) {
            ("a", Action::Delete) => {}
            ("c" | "d", Action::Update) => assert!(addr.starts_with("session."), "{addr}"),
            (_, Action::Create) if addr.starts_with("target.") => {}
            _ => others.push((addr, action)),
        }
    }
    assert!(others.is_empty(), "{others:?}");
    assert_eq!(p.summary().change, 2);
    assert_eq!(p.summary().writes_destroyed, 0);
    for c in p.changes.iter().filter(|c| c.action == Action::Update) {
        assert_eq!(c.reason, Some(Reason::Updatable));
        // Every host shares 127.0.0.1 here: the parent and its port change.
        assert_eq!(
            changed_paths(c.before.as_ref().unwrap(), c.after.as_ref().unwrap()),
            ["parent", "parent_port"]
        );
    }
    let next = plan(&spec(&without_a, 2, 1), &p.applied(&state));
    assert!(!next.has_changes());
    // Deleting a's export waits for its children to log out.
    let pos = op_positions(&p);
    for child in ["c", "d"] {
        assert!(
            pos[&(OpKind::Update, format!("session.{child}.base"))]
                < pos[&(OpKind::Delete, "target.a.base".into())]
        );
    }
}

#[test]
fn targets_limit_the_plan_to_what_they_need() {
    let s = spec(&["a", "b", "c"], 1, 1);
    let empty = State::empty("t");
    let p = plan_of(
        &s,
        &empty,
        &Options {
            targets: vec!["domain.b.base.0".into()],
            ..Options::default()
        },
    );
    let got: Vec<String> = actions(&p).into_iter().map(|(a, _)| a).collect();
    assert_eq!(
        got,
        [
            "cache.a.base",
            "cache.b.base",
            "domain.b.base.0",
            "lv.a.base",
            "lv.b.base",
            "lv.b.base.0",
            "session.a.base",
            "session.b.base",
            "snapshot.b.base.0",
            "target.a.base",
            "target.src.base"
        ]
    );
    // A destructive targeted change pulls in what is built on it.
    let state = applied(&s);
    let p = plan_of(
        &s,
        &state,
        &Options {
            mode: Some(Mode::Destroy),
            targets: vec!["cache.b".into()],
            ..Options::default()
        },
    );
    let got: Vec<String> = actions(&p).into_iter().map(|(a, _)| a).collect();
    assert!(
        got.contains(&"domain.c.base.0".to_string()) && got.contains(&"session.c.base".to_string())
    );
    assert!(!got.iter().any(|a| a.contains(".a.")), "{got:?}");
    let err = diff(
        Graph::build(&s, &empty).unwrap(),
        &empty,
        &Options {
            targets: vec!["domain.zz".into()],
            ..Options::default()
        },
        None,
    )
    .unwrap_err();
    assert_eq!(err, PlanError::UnknownTarget("domain.zz".into()));
}

#[test]
fn clone_identities_are_stable_and_unique() {
    let s = spec(&["a", "b"], 2, 3);
    let g1 = Graph::build(&s, &State::empty("t")).unwrap();
    let g2 = Graph::build(&s, &State::empty("t")).unwrap();
    let domains = |g: &Graph| -> Vec<(String, String, String)> {
        g.resources
            .iter()
            .filter_map(|r| match &r.desired {
                Desired::Domain(d) => Some((d.name.clone(), d.uuid.clone(), d.mac.clone())),
                _ => None,
            })
            .collect()
    };
    let d = domains(&g1);
    assert_eq!(d, domains(&g2));
    assert_eq!(d.len(), 6);
    for field in 0..3 {
        let mut v: Vec<&String> = d.iter().map(|t| [&t.0, &t.1, &t.2][field]).collect();
        v.sort();
        v.dedup();
        assert_eq!(v.len(), 6);
    }
    assert_eq!(d[0].0, "base-a-0");
    let mac = &d[0].2;
    let first = u8::from_str_radix(&mac[..2], 16).unwrap();
    assert_eq!(first & 0x03, 0x02, "locally administered unicast: {mac}");
    // Another cluster name gives other identities.
    let mut other = s.clone();
    other.cluster = "u".into();
    assert_ne!(
        domains(&Graph::build(&other, &State::empty("u")).unwrap())[0].1,
        d[0].1
    );
    let _ = Kind::Domain;
}

#[test]
fn saved_plans_go_stale_when_the_state_moves() {
    let s = spec(&["a"], 2, 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.json");
    let empty = State::empty("t");
    let first = plan(&s, &empty);
    assert_eq!(first.check_current(&empty), Ok(()));
    // Saved and read back, the plan is the same data.
    first.save(&dir.path().join("p.json")).unwrap();
    assert_eq!(Plan::load(&dir.path().join("p.json")).unwrap(), first);

    let mut state = first.applied(&empty);
    state.persist(&path).unwrap();
    assert_eq!(
        first.check_current(&state),
        Err(StalePlan::Serial { plan: 0, state: 1 })
    );
    let second = plan(&s, &state);
    assert_eq!(second.check_current(&state), Ok(()));
    let mut other = state.clone();
    other.lineage = Some("another".into());
    assert!(matches!(
        second.check_current(&other),
        Err(StalePlan::Lineage { .. })
    ));
}

#[test]
fn the_linux_stack_exports_on_the_iscsi_port_and_versions_its_image() {
    let mut s = spec_with(
        &["a", "b"],
        1,
        1,
        serde_json::json!({"backend": {"stack": "linux", "volume_group": "vg"}}),
    );
    s.images[0].version = Some("3".into());
    let graph = Graph::build(&s, &State::empty("t")).unwrap();
    let mut sessions = 0;
    for r in &graph.resources {
        match &r.desired {
            crate::resource::Desired::Session(a) => {
                assert_eq!(a.parent_port, crate::graph::ISCSI_PORT);
                sessions += 1;
            }
            crate::resource::Desired::Target(crate::resource::TargetAttrs::Image {
                version,
                port,
                ..
            }) => {
                assert_eq!(version.as_deref(), Some("3"));
                assert_eq!(*port, 3260);
            }
            _ => {}
        }
    }
    assert_eq!(sessions, 2);
}

/// A plan as `plan --out` saves it: carrying its spec and the spec's digest.
fn saved(spec: &Spec, state: &State, opts: &Options) -> Plan {
    let mut p = plan_of(spec, state, opts);
    p.spec_digest = Some(spec.digest());
    p.spec = Some(serde_json::to_value(spec).unwrap());
    p
}

/// What `verify_saved` says of `p`; checks that it leaves the state as it was.
fn verdict(p: &Plan, spec: &Spec, state: &State) -> Result<(), String> {
    let mut st = state.clone();
    let r = p.verify_saved(spec, &mut st).map_err(|e| e.to_string());
    assert_eq!(&st, state, "verification restores the state");
    r
}

fn change_mut<'a>(p: &'a mut Plan, addr: &str) -> &'a mut Change {
    let a: Addr = addr.parse().unwrap();
    p.changes.iter_mut().find(|c| c.addr == a).unwrap()
}

#[test]
fn saved_plans_are_sealed_and_an_edit_anywhere_is_refused() {
    let s = spec(&["a", "b", "c"], 2, 2);
    let empty = State::empty("t");
    let p = saved(&s, &empty, &Options::default());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.json");
    p.save(&file).unwrap();
    assert_eq!(Plan::load(&file).unwrap(), p);
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(doc["format_version"], "2.1");
    assert!(doc["plan_digest"].as_str().unwrap().starts_with("sha256:"));

    // Formatting and key order are not content: the canonical form is the same.
    std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
    assert_eq!(Plan::load(&file).unwrap(), p);

    let load_edited = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut d = doc.clone();
        edit(&mut d);
        std::fs::write(&file, serde_json::to_vec_pretty(&d).unwrap()).unwrap();
        Plan::load(&file).unwrap_err().to_string()
    };
    let change = |d: &mut serde_json::Value, addr: &str| -> usize {
        d["resource_changes"]
            .as_array()
            .unwrap()
            .iter()
            .position(|c| c["address"] == addr)
            .unwrap()
    };
    type Edit<'a> = Box<dyn Fn(&mut serde_json::Value) + 'a>;
    let edits: Vec<(&str, Edit, &str)> = vec![
        (
            "depends_on",
            Box::new(|d| {
                let i = change(d, "session.a.base");
                d["resource_changes"][i]["depends_on"] = serde_json::json!(["lv.nowhere.base"]);
            }),
            "its content does not match its plan_digest",
        ),
        (
            "a deleted create",
            Box::new(|d| {
                let i = change(d, "lv.a.base");
                d["resource_changes"].as_array_mut().unwrap().remove(i);
            }),
            "its content does not match its plan_digest",
        ),
        (
            "after.size",
            Box::new(|d| {
                let i = change(d, "lv.a.base");
                d["resource_changes"][i]["after"]["size"] = "3GiB".into();
            }),
            "its content does not match its plan_digest",
        ),
        (
            "mode",
            Box::new(|d| d["mode"] = "destroy".into()),
            "its content does not match its plan_digest",
        ),
        (
            "lineage",
            Box::new(|d| d["prior_state"]["lineage"] = "x".into()),
            "its content does not match its plan_digest",
        ),
        (
            "the spec",
            Box::new(|d| d["configuration"]["clones"]["per_host"] = 3.into()),
            "its content does not match its plan_digest",
        ),
        (
            "placement",
            Box::new(|d| d["placement"]["base"]["c"] = "b".into()),
            "its content does not match its plan_digest",
        ),
        (
            "a derived host",
            Box::new(|d| {
                let i = change(d, "lv.a.base");
                d["resource_changes"][i]["host"] = "b".into();
            }),
            "lv.a.base: host \"b\" does not match its address",
        ),
        (
            "the summary",
            Box::new(|d| d["summary"]["add"] = 1.into()),
            "its summary does not count its changes",
        ),
    ];
    for (what, edit, expected) in &edits {
        let err = load_edited(edit.as_ref());
        assert!(
            err.contains("was altered after it was saved") && err.contains(expected),
            "{what}: {err}"
        );
        assert!(
            err.ends_with("nothing was changed; make a new plan"),
            "{what}: {err}"
        );
    }
    let err = load_edited(&|d| {
        d.as_object_mut().unwrap().remove("plan_digest");
    });
    assert!(
        err.contains("has no plan_digest") && err.ends_with("make a new plan"),
        "{err}"
    );
    let err = load_edited(&|d| d["format_version"] = "1.0".into());
    assert!(
        err.contains("format version 1.0") && err.ends_with("make a new plan"),
        "{err}"
    );
}

#[test]
fn plans_vmthunder_makes_pass_verification() {
    let s = spec(&["a", "b", "c"], 2, 2);
    let empty = State::empty("t");
    let p = saved(&s, &empty, &Options::default());
    assert_eq!(verdict(&p, &s, &empty), Ok(()));
    let state = p.applied(&empty);
    // No changes.
    assert_eq!(
        verdict(&saved(&s, &state, &Options::default()), &s, &state),
        Ok(())
    );

    // A changed spec: a host dropped (its deletes are on a host the spec no longer has), one
    // added, more clones.
    let grown = spec(&["a", "b", "d"], 2, 3);
    let p = saved(&grown, &state, &Options::default());
    assert!(p
        .changes
        .iter()
        .any(|c| c.action == Action::Delete && &*c.addr.host == "c"));
    assert_eq!(verdict(&p, &grown, &state), Ok(()));

    // Targeted, by request, destroy, targeted destroy.
    let targeted = Options {
        targets: vec!["domain.d".into()],
        ..Options::default()
    };
    let p = saved(&grown, &state, &targeted);
    assert!(p.changes.len() < saved(&grown, &state, &Options::default()).changes.len());
    assert_eq!(verdict(&p, &grown, &state), Ok(()));
    let by_request = Options {
        replace: vec!["cache.a.base".parse().unwrap()],
        ..Options::default()
    };
    assert_eq!(verdict(&saved(&s, &state, &by_request), &s, &state), Ok(()));
    let destroy = Options {
        mode: Some(Mode::Destroy),
        ..Options::default()
    };
    assert_eq!(verdict(&saved(&s, &state, &destroy), &s, &state), Ok(()));
    let targeted_destroy = Options {
        mode: Some(Mode::Destroy),
        targets: vec!["cache.a.base".into()],
        ..Options::default()
    };
    assert_eq!(
        verdict(&saved(&s, &state, &targeted_destroy), &s, &state),
        Ok(())
    );

    // Tainted in the state file.
    let mut tainted = state.clone();
    let i = tainted.position(&"cache.b.base".parse().unwrap()).unwrap();
    tainted.resources[i as usize].status = Status::Tainted;
    assert_eq!(
        verdict(&saved(&s, &tainted, &Options::default()), &s, &tainted),
        Ok(())
    );

    // A refresh at plan time found an object gone: the plan was made from the refreshed
    // state, in memory; the state file still records it ready.
    let mut refreshed = state.clone();
    let i = refreshed
        .position(&"session.a.base".parse().unwrap())
        .unwrap();
    refreshed.resources[i as usize].status = Status::Missing;
    let p = saved(&s, &refreshed, &Options::default());
    assert!(p.summary().replace > 1, "its dependents are rebuilt too");
    assert_eq!(verdict(&p, &s, &state), Ok(()));
    // ... also when the plan is targeted away from something else found gone.
    let i = refreshed
        .position(&"domain.b.base.0".parse().unwrap())
        .unwrap();
    refreshed.resources[i as usize].status = Status::Missing;
    let only_a = Options {
        targets: vec!["domain.c".into()],
        ..Options::default()
    };
    let p = saved(&s, &refreshed, &only_a);
    assert!(p.changes.iter().all(|c| &*c.addr.host != "b"));
    assert_eq!(verdict(&p, &s, &state), Ok(()));
}

#[test]
fn edited_plans_are_refused_naming_the_address_and_the_field() {
    // The digest can be recomputed: these plans are edited as data, as if resealed.
    let s = spec(&["a", "b", "c"], 2, 2);
    let empty = State::empty("t");
    let fresh = saved(&s, &empty, &Options::default());
    let state = fresh.applied(&empty);
    let grown = spec(&["a", "b", "c"], 2, 3);
    let update = saved(&grown, &state, &Options::default());
    let targeted = saved(
        &s,
        &empty,
        &Options {
            targets: vec!["domain.a".into()],
            ..Options::default()
        },
    );
    let mut tainted = state.clone();
    let i = tainted.position(&"cache.b.base".parse().unwrap()).unwrap();
    tainted.resources[i as usize].status = Status::Tainted;
    let repair = saved(&s, &tainted, &Options::default());

    type Edit = Box<dyn Fn(&mut Plan)>;
    let cases: Vec<(&str, &Plan, &Spec, &State, Edit, &str)> = vec![
        (
            "a dangling dependency",
            &fresh,
            &s,
            &empty,
            Box::new(|p| change_mut(p, "session.a.base").deps = vec!["lv.nowhere.base".parse().unwrap()]),
            "session.a.base: depends_on names lv.nowhere.base, which is neither in the plan nor in the state",
        ),
        (
            "a create others depend on, deleted",
            &fresh,
            &s,
            &empty,
            Box::new(|p| p.changes.retain(|c| c.addr.to_string() != "lv.a.base")),
            "cache.a.base: depends_on names lv.a.base, which is neither in the plan nor in the state",
        ),
        (
            "a create nothing depends on, deleted",
            &fresh,
            &s,
            &empty,
            Box::new(|p| p.changes.retain(|c| c.addr.to_string() != "domain.c.base.1")),
            "domain.c.base.1: missing; the plan's spec and the state call for a create of it",
        ),
        (
            "a create renamed to an existing address",
            &fresh,
            &s,
            &empty,
            Box::new(|p| change_mut(p, "lv.b.base.1").addr = "lv.b.base.0".parse().unwrap()),
            "lv.b.base.0: listed more than once",
        ),
        (
            "a duplicated change",
            &fresh,
            &s,
            &empty,
            Box::new(|p| {
                let c = change_mut(p, "domain.a.base.0").clone();
                p.changes.push(c);
            }),
            "domain.a.base.0: listed more than once",
        ),
        (
            "a dependency cycle",
            &fresh,
            &s,
            &empty,
            Box::new(|p| change_mut(p, "target.src.base").deps = vec!["domain.c.base.0".parse().unwrap()]),
            "form a cycle through create target.src.base",
        ),
        (
            "destroy mode on a create plan",
            &fresh,
            &s,
            &empty,
            Box::new(|p| p.mode = Mode::Destroy),
            "target.src.base: a create in a destroy plan (a destroy plan only deletes)",
        ),
        (
            "a changed after.size",
            &fresh,
            &s,
            &empty,
            Box::new(|p| {
                if let Some(Desired::Lv(a)) = &mut change_mut(p, "lv.a.base").after {
                    a.size = crate::size::Size(3 << 30);
                }
            }),
            "lv.a.base: after.size is \"3GiB\", the plan's spec gives",
        ),
        (
            "a resource on an unknown host",
            &fresh,
            &s,
            &empty,
            Box::new(|p| change_mut(p, "domain.c.base.1").addr = "domain.zz.base.1".parse().unwrap()),
            "domain.zz.base.1: host \"zz\" is not a host of the plan's spec",
        ),
        (
            "a placement cycle",
            &fresh,
            &s,
            &empty,
            Box::new(|p| {
                let base = p.placement.get_mut("base").unwrap();
                base.insert("a".into(), "c".into());
            }),
            "placement of image base is a cycle: a pulls from c pulls from a",
        ),
        (
            "a placement that is not the spec's",
            &fresh,
            &s,
            &empty,
            Box::new(|p| {
                p.placement.get_mut("base").unwrap().insert("c".into(), "b".into());
            }),
            "placement of image base: c pulls from b, the plan's spec and the state give a",
        ),
        (
            "a placement on an unknown host",
            &fresh,
            &s,
            &empty,
            Box::new(|p| {
                p.placement.get_mut("base").unwrap().insert("zz".into(), "a".into());
            }),
            "placement of image base: host \"zz\" is neither in the plan's spec nor in the state",
        ),
        (
            "changes out of order",
            &fresh,
            &s,
            &empty,
            Box::new(|p| {
                let n = p.changes.len();
                p.changes.swap(n - 1, n - 2);
            }),
            "out of order",
        ),
        (
            "a create of something recorded",
            &update,
            &grown,
            &state,
            Box::new(|p| {
                let c = change_mut(p, "lv.a.base");
                c.action = Action::Create;
            }),
            "lv.a.base: to be created, but it is already recorded in the state",
        ),
        (
            "a delete of something the spec wants",
            &update,
            &grown,
            &state,
            Box::new(|p| {
                let c = change_mut(p, "domain.a.base.0");
                c.action = Action::Delete;
                c.before = c.after.take();
                c.prior_deps = std::mem::take(&mut c.deps);
                c.reason = Some(Reason::NotInSpec);
            }),
            "domain.a.base.0: actions are [\"delete\"], the plan's spec and the state give [\"no-op\"]",
        ),
        (
            "a no-op that is a create",
            &update,
            &grown,
            &state,
            Box::new(|p| change_mut(p, "domain.a.base.2").action = Action::NoOp),
            "domain.a.base.2: a no-op of something not recorded in the state",
        ),
        (
            "a target added",
            &fresh,
            &s,
            &empty,
            Box::new(|p| p.targets = vec!["domain.a".into()]),
            "domain.b.base.0: a create that the plan's spec and the state do not call for (limited to domain.a)",
        ),
        (
            "a target dropped",
            &targeted,
            &s,
            &empty,
            Box::new(|p| p.targets.clear()),
            "domain.b.base.0: missing; the plan's spec and the state call for a create of it",
        ),
        (
            "a changed reason",
            &repair,
            &s,
            &tainted,
            Box::new(|p| change_mut(p, "cache.b.base").reason = Some(Reason::AttributesChanged)),
            "cache.b.base: reason is replace_because_cannot_update, the plan's spec and the state give replace_because_tainted",
        ),
        (
            "a changed reason_address",
            &repair,
            &s,
            &tainted,
            Box::new(|p| {
                change_mut(p, "snapshot.b.base.0").reason =
                    Some(Reason::DependencyReplaced("lv.b.base.0".parse().unwrap()))
            }),
            "snapshot.b.base.0: reason is replace_because_dependency_replaced (lv.b.base.0), the plan's spec and the state give replace_because_dependency_replaced (cache.b.base)",
        ),
        (
            "a changed prior_depends_on",
            &repair,
            &s,
            &tainted,
            Box::new(|p| {
                change_mut(p, "snapshot.b.base.0").prior_deps.pop();
            }),
            "snapshot.b.base.0: prior_depends_on is [cache.b.base], the state records [cache.b.base, lv.b.base.0]",
        ),
        (
            "an invented replace",
            &update,
            &grown,
            &state,
            Box::new(|p| {
                let c = change_mut(p, "snapshot.a.base.0");
                c.action = Action::Replace;
                c.before = c.after.clone();
                c.prior_deps = c.deps.clone();
                c.reason = Some(Reason::Tainted);
            }),
            "snapshot.a.base.0: actions are [\"delete\", \"create\"], the plan's spec and the state give [\"no-op\"]",
        ),
    ];
    for (what, base, spec, state, edit, expected) in cases {
        assert_eq!(verdict(base, spec, state), Ok(()), "{what}: unedited");
        let mut p = base.clone();
        edit(&mut p);
        let err = verdict(&p, spec, state).unwrap_err();
        assert!(
            err.contains(expected),
            "{what}: expected {expected:?} in\n{err}"
        );
        assert!(
            err.contains("nothing was changed; make a new plan"),
            "{what}: {err}"
        );
    }
}

#[test]
fn a_plan_without_lineage_fits_only_a_state_without_one() {
    let s = spec(&["a"], 2, 1);
    let empty = State::empty("t");
    let mut state = plan(&s, &empty).applied(&empty);
    state.lineage = Some("l".into());
    state.serial = 3;
    let mut p = plan(&s, &state);
    assert_eq!(p.check_current(&state), Ok(()));
    p.prior.lineage = None;
    assert_eq!(
        p.check_current(&state),
        Err(StalePlan::Lineage {
            plan: None,
            state: Some("l".into())
        })
    );
}

fn networked(hosts: &[&str], transport: &str, extra_clones: serde_json::Value) -> Spec {
    let mut doc = serde_json::json!({
        "version": 1,
        "cluster": "t",
        "backend": {"transport": transport, "root": "/var/lib/vmthunder"},
        "hosts": std::iter::once("src").chain(hosts.iter().copied()).enumerate()
            .map(|(i, h)| serde_json::json!({"name": h, "address": format!("10.1.0.{}", 10 + i)}))
            .collect::<Vec<_>>(),
        "images": [{"name": "base", "source_host": "src", "path": "/base.qcow2"}],
        "networks": [{"name": "lab", "cidr": "10.60.0.0/24"}],
        "tree": {"degree": 2},
        "clones": {"per_host": 2, "networks": ["lab"]},
    });
    if let Some(e) = extra_clones.as_object() {
        for (k, v) in e {
            doc["clones"][k] = v.clone();
        }
    }
    Spec::from_value(&doc).unwrap_or_else(|e| panic!("{e:?}"))
}

/// Addresses of every bridge and clone NIC, by resource address.
fn addresses(state: &State) -> BTreeMap<String, String> {
    state
        .resources
        .iter()
        .filter_map(|r| match &r.desired {
            Desired::Bridge(b) => Some((r.addr.to_string(), b.address.clone())),
            Desired::Domain(d) => Some((r.addr.to_string(), d.nics[0].address.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn networks_are_a_bridge_and_a_vxlan_per_host_with_stable_unique_addresses() {
    let s = networked(&["a", "b", "c"], "ssh", serde_json::json!({}));
    let g = Graph::build(&s, &State::empty("t")).unwrap();
    let of = |kind: Kind| g.resources.iter().filter(|r| r.addr.kind == kind).count();
    // The source runs no clones: no bridge there.
    assert_eq!(
        (of(Kind::Bridge), of(Kind::Vxlan), of(Kind::Seed)),
        (3, 3, 0)
    );
    let r = &g.resources[g.get(&"vxlan.b.lab".parse().unwrap()).unwrap() as usize];
    let Desired::Vxlan(x) = &r.desired else {
        panic!()
    };
    assert_eq!(
        (x.local.as_str(), x.remotes.clone()),
        (
            "10.1.0.12",
            vec!["10.1.0.11".to_string(), "10.1.0.13".into()]
        )
    );
    assert_eq!(x.port, 4789);
    // A domain needs its own host's bridge.
    let dom = &g.resources[g.get(&"domain.b.base.1".parse().unwrap()).unwrap() as usize];
    let needs: Vec<String> = dom
        .deps
        .iter()
        .map(|&i| g.resources[i as usize].addr.to_string())
        .collect();
    assert!(needs.contains(&"bridge.b.lab".to_string()), "{needs:?}");

    let state = applied(&s);
    let before = addresses(&state);
    assert_eq!(before.len(), 3 + 6);
    let mut unique: Vec<&String> = before.values().collect();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 9, "{before:?}");
    for a in before.values() {
        let ip: std::net::Ipv4Addr = a.strip_suffix("/24").unwrap().parse().unwrap();
        assert!(
            ip.octets()[..3] == [10, 60, 0] && ip.octets()[3] > 1 && ip.octets()[3] < 255,
            "{a}"
        );
    }
    assert!(actions(&plan(&s, &state)).is_empty());

    // A new host: its own resources, and the others' VXLANs take it into their flood lists;
    // no clone moves or restarts.
    let grown = networked(&["a", "b", "c", "d"], "ssh", serde_json::json!({}));
    let p = plan(&grown, &state);
    let changed = actions(&p);
    assert!(
        changed.iter().all(|(a, act)| a.contains(".d.")
            || (a.starts_with("vxlan.") && *act == Action::Replace)
            || a.starts_with("target.")),
        "{changed:?}"
    );
    assert!(
        changed.contains(&("vxlan.a.lab".into(), Action::Replace)),
        "{changed:?}"
    );
    let after = addresses(&p.applied(&state));
    for (k, v) in &before {
        assert_eq!(after.get(k), Some(v), "{k} moved");
    }
}

#[test]
fn hosts_sharing_this_machines_kernel_share_one_bridge_and_need_no_vxlan() {
    let s = networked(&["a", "b"], "local", serde_json::json!({}));
    let g = Graph::build(&s, &State::empty("t")).unwrap();
    let bridges: Vec<String> = g
        .resources
        .iter()
        .filter(|r| r.addr.kind == Kind::Bridge)
        .map(|r| r.addr.to_string())
        .collect();
    assert_eq!(bridges, ["bridge.a.lab"]);
    assert!(g.resources.iter().all(|r| r.addr.kind != Kind::Vxlan));
    let dom = &g.resources[g.get(&"domain.b.base.0".parse().unwrap()).unwrap() as usize];
    assert!(dom
        .deps
        .iter()
        .any(|&i| g.resources[i as usize].addr.to_string() == "bridge.a.lab"));
}

#[test]
fn a_seed_change_restarts_the_clone_and_keeps_its_disk() {
    let s = networked(&["a"], "ssh", serde_json::json!({"cloud_init": {}}));
    let g = Graph::build(&s, &State::empty("t")).unwrap();
    let seed = &g.resources[g.get(&"seed.a.base.0".parse().unwrap()).unwrap() as usize];
    let Desired::Seed(sd) = &seed.desired else {
        panic!()
    };
    let dom = &g.resources[g.get(&"domain.a.base.0".parse().unwrap()).unwrap() as usize];
    let Desired::Domain(d) = &dom.desired else {
        panic!()
    };
    assert!(
        sd.meta_data.contains(&d.uuid) && sd.meta_data.contains(&d.name),
        "{}",
        sd.meta_data
    );
    let net = sd.network_config.as_deref().unwrap();
    assert!(
        net.contains(&d.mac) && net.contains(&d.nics[0].address),
        "{net}"
    );
    assert!(
        sd.user_data.contains("name: \"vmthunder\""),
        "{}",
        sd.user_data
    );

    let state = applied(&s);
    let other_user = networked(
        &["a"],
        "ssh",
        serde_json::json!({"cloud_init": {}, "ssh_user": "ops"}),
    );
    let p = plan(&other_user, &state);
    let changed = actions(&p);
    assert_eq!(
        changed,
        [
            ("domain.a.base.0".to_string(), Action::Replace),
            ("domain.a.base.1".into(), Action::Replace),
            ("seed.a.base.0".into(), Action::Replace),
            ("seed.a.base.1".into(), Action::Replace),
        ]
    );
    let c = p
        .changes
        .iter()
        .find(|c| c.addr.to_string() == "seed.a.base.0")
        .unwrap();
    assert_eq!(
        c.replace_paths,
        ["user_data"],
        "the plan names what forces it"
    );
}

#[test]
fn a_rebuilt_export_is_followed_in_place_but_a_new_image_rebuilds_the_tree() {
    // src -> {a, b}; a -> {c}.
    let s = spec(&["a", "b", "c"], 2, 1);
    let state = applied(&s);
    assert_eq!(parents(&state)["c"], "a");
    // a's export vanished (its relay restarted without it): c logs in again, in place.
    let mut refreshed = state.clone();
    let i = refreshed
        .position(&"target.a.base".parse().unwrap())
        .unwrap();
    refreshed.resources[i as usize].status = Status::Missing;
    let p = plan(&s, &refreshed);
    assert_eq!(
        actions(&p),
        [
            ("session.c.base".to_string(), Action::Update),
            ("target.a.base".to_string(), Action::Replace),
        ]
    );
    let c = p
        .changes
        .iter()
        .find(|c| c.action == Action::Update)
        .unwrap();
    assert_eq!(
        c.reason,
        Some(Reason::DependencyRebuilt("target.a.base".parse().unwrap()))
    );
    let pos = op_positions(&p);
    assert!(
        pos[&(OpKind::Create, "target.a.base".into())]
            < pos[&(OpKind::Update, "session.c.base".into())]
    );
    assert_eq!(
        verdict(&saved(&s, &refreshed, &Options::default()), &s, &state),
        Ok(())
    );
    // A new image version: the bytes change, so every cache and clone is rebuilt, and the
    // plan says whose writes go.
    let mut v2 = s.clone();
    v2.images[0].version = Some("2".into());
    let p = plan(&v2, &state);
    assert!(p.changes.iter().all(|c| c.action != Action::Update));
    assert_eq!(p.summary().writes_destroyed, 3);
    let text = render(&p, RenderOptions::default());
    assert!(
        text.contains("# destroys the writes of clone base-c-0"),
        "{text}"
    );
    assert!(text.contains("3 clones lose their writes."), "{text}");
}

#[test]
fn prevent_destroy_refuses_plans_that_lose_a_clones_writes() {
    let s = spec(&["a", "b"], 2, 1);
    let state = applied(&s);
    let bigger = spec_with(
        &["a", "b"],
        2,
        1,
        serde_json::json!({"clones": {"per_host": 1, "cow_size": "2GiB", "prevent_destroy": true}}),
    );
    assert!(bigger.clones.prevent_destroy);
    let opts = Options {
        prevent_destroy: true,
        ..Options::default()
    };
    let err = diff(Graph::build(&bigger, &state).unwrap(), &state, &opts, None).unwrap_err();
    let PlanError::PreventDestroy(addrs) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        addrs,
        &[
            "lv.a.base.0",
            "snapshot.a.base.0",
            "lv.b.base.0",
            "snapshot.b.base.0"
        ]
    );
    assert!(
        err.to_string().starts_with("/clones/prevent_destroy:"),
        "{err}"
    );
    // Removing a clone from the spec is asked for: allowed, and not marked.
    let fewer = spec(&["a"], 2, 1);
    let p = diff(Graph::build(&fewer, &state).unwrap(), &state, &opts, None).unwrap();
    assert!(p.changes.iter().all(|c| c.destroys_writes_of.is_none()));
    assert!(p.summary().destroy > 0);
    // Moving hosts in the tree loses nothing: a host removed re-parents its children.
    let s = spec(&["a", "b", "c", "d"], 1, 1);
    let state = applied(&s);
    let p = diff(
        Graph::build(&spec(&["b", "c", "d"], 1, 1), &state).unwrap(),
        &state,
        &opts,
        None,
    )
    .unwrap();
    assert_eq!(p.summary().change, 1, "{:?}", actions(&p));
    assert_eq!(p.summary().replace, 0, "{:?}", actions(&p));
}

#[test]
fn updates_render_with_a_tilde_and_count_as_changes() {
    let s = spec(&["a", "b", "c", "d"], 1, 1);
    let state = applied(&s);
    let p = plan(&spec(&["b", "c", "d"], 1, 1), &state);
    let text = render(&p, RenderOptions::default());
    assert!(text.contains("  ~ update in-place"), "{text}");
    assert!(
        text.contains("# session.b.base will be updated in-place"),
        "{text}"
    );
    assert!(
        text.contains("~ parent         = \"a\" -> \"src\"\n"),
        "{text}"
    );
    assert!(!text.contains("forces replacement"), "{text}");
    assert!(
        text.contains("Plan: 0 to add, 1 to change, 0 to replace, 7 to destroy."),
        "{text}"
    );
    let doc: serde_json::Value = serde_json::from_slice(&p.to_json()).unwrap();
    let change = doc["resource_changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == "session.b.base")
        .unwrap();
    assert_eq!(change["actions"], serde_json::json!(["update"]));
    assert_eq!(change["before"]["parent"], "a");
    assert_eq!(change["after"]["parent"], "src");
    assert_eq!(change["reason"], "update_in_place");
    assert_eq!(doc["summary"]["change"], 1);
}

fn refreshed(state: &State, findings: &[(&str, crate::refresh::Finding)]) -> (State, Health) {
    let mut s = state.clone();
    let mut r = crate::refresh::Refreshed::default();
    for (addr, f) in findings {
        let a: Addr = addr.parse().unwrap();
        if *f == crate::refresh::Finding::Gone {
            let i = s.position(&a).unwrap();
            s.resources[i as usize].status = Status::Missing;
        }
        r.drift.push(crate::refresh::Drift {
            addr: a,
            finding: f.clone(),
        });
    }
    (s, Health::from_refresh(&r))
}

use crate::health::Health;

#[test]
fn a_dead_relay_moves_its_children_in_place_and_keeps_its_own_clones() {
    use crate::refresh::Finding;
    // src -> {a, b}; a -> {c, d}; b -> {e}.
    let s = spec(&["a", "b", "c", "d", "e"], 2, 1);
    let state = applied(&s);
    assert_eq!(parents(&state)["c"], "a");
    // a's relay was killed: its session, cache and export are gone; its clone's disk is not.
    let (dead, health) = refreshed(
        &state,
        &[
            ("session.a.base", Finding::Gone),
            ("cache.a.base", Finding::Gone),
            ("target.a.base", Finding::Gone),
        ],
    );
    let mut paused = dead.clone();
    for d in ["domain.c.base.0", "domain.d.base.0", "domain.a.base.0"] {
        let i = paused.position(&d.parse().unwrap()).unwrap();
        paused.resources[i as usize]
            .observed
            .insert("status".into(), PAUSED_ON_IO_ERROR.into());
    }
    let p = diff(
        Graph::build_with(&s, &paused, &health).unwrap(),
        &paused,
        &Options::default(),
        None,
    )
    .unwrap();
    OpGraph::build(&p).order(&p).unwrap();
    assert_eq!(
        actions(&p),
        [
            ("cache.a.base".to_string(), Action::Replace),
            ("domain.a.base.0".to_string(), Action::Update),
            ("domain.c.base.0".to_string(), Action::Update),
            ("domain.d.base.0".to_string(), Action::Update),
            ("session.a.base".to_string(), Action::Replace),
            ("session.c.base".to_string(), Action::Update),
            ("session.d.base".to_string(), Action::Update),
            ("snapshot.a.base.0".to_string(), Action::Update),
            ("target.a.base".to_string(), Action::Delete),
            ("target.e.base".to_string(), Action::Create),
        ]
    );
    assert_eq!(p.summary().writes_destroyed, 0);
    // Nearest ancestor first: src is full (a, b), so the shallowest healthy free slots.
    assert_eq!(p.placement["base"]["c"], "b");
    assert_eq!(p.placement["base"]["d"], "e");
    let c = p
        .changes
        .iter()
        .find(|c| c.addr.to_string() == "session.c.base")
        .unwrap();
    assert_eq!(
        c.reason,
        Some(Reason::Repair {
            parent: "a".into(),
            why: crate::health::RELAY_GONE.into()
        })
    );
    let text = render(&p, RenderOptions::default());
    assert!(
        text.contains("# (parent a -> b: a lost its relay (its export is gone))"),
        "{text}"
    );
    // Guests resume only after the moves above them; a's export goes once nobody uses it.
    let pos = op_positions(&p);
    let at = |k: OpKind, a: &str| pos[&(k, a.to_string())];
    assert!(at(OpKind::Update, "session.c.base") < at(OpKind::Update, "domain.c.base.0"));
    assert!(at(OpKind::Create, "target.e.base") < at(OpKind::Update, "session.d.base"));
    assert!(at(OpKind::Update, "session.d.base") < at(OpKind::Delete, "target.a.base"));
    assert!(at(OpKind::Update, "snapshot.a.base.0") < at(OpKind::Update, "domain.a.base.0"));
    // The saved plan is the one vmthunder makes again (the refresh's findings are in it).
    let mut saved_plan = p.clone();
    saved_plan.spec = Some(serde_json::to_value(&s).unwrap());
    let mut st = state.clone();
    assert_eq!(
        saved_plan
            .verify_saved(&s, &mut st)
            .map_err(|e| e.to_string()),
        Ok(())
    );
    // Applied, the next plan (all healthy again) changes nothing: a is a leaf now.
    let after = p.applied(&paused);
    assert!(
        !plan(&s, &after).has_changes(),
        "{:?}",
        actions(&plan(&s, &after))
    );
    // With tree.repair off nothing moves.
    let mut off = s.clone();
    off.tree.repair = crate::spec::Repair::Off;
    let p = diff(
        Graph::build_with(&off, &dead, &health).unwrap(),
        &dead,
        &Options::default(),
        None,
    )
    .unwrap();
    assert!(
        p.changes.iter().all(|c| &*c.addr.host == "a"
            || c.action == Action::NoOp
            || c.action == Action::Update),
        "{:?}",
        actions(&p)
    );
    assert_eq!(p.placement["base"]["c"], "a");
}

#[test]
fn nothing_is_planned_on_a_host_that_does_not_answer() {
    use crate::refresh::Finding;
    let s = spec(&["a", "b", "c", "d", "e"], 2, 1);
    let state = applied(&s);
    let (st, health) = refreshed(
        &state,
        &[
            ("domain.a.base.0", Finding::Unknown("timed out".into())),
            ("target.a.base", Finding::Unknown("timed out".into())),
        ],
    );
    let p = diff(
        Graph::build_with(&s, &st, &health).unwrap(),
        &st,
        &Options::default(),
        None,
    )
    .unwrap();
    assert!(
        p.changes
            .iter()
            .all(|c| &*c.addr.host != "a" || c.action == Action::NoOp),
        "{:?}",
        actions(&p)
    );
    let moved: Vec<_> = actions(&p)
        .into_iter()
        .filter(|(_, a)| *a == Action::Update)
        .collect();
    assert_eq!(
        moved,
        [
            ("session.c.base".to_string(), Action::Update),
            ("session.d.base".to_string(), Action::Update)
        ]
    );
    let text = render(&p, RenderOptions::default());
    assert!(
        text.contains("(parent a -> b: a does not answer)"),
        "{text}"
    );
}

#[test]
fn auto_degree_never_moves_placed_hosts() {
    let hosts: Vec<String> = (0..40).map(|i| format!("n{i:02}")).collect();
    let names = |k: usize| hosts[..k].iter().map(String::as_str).collect::<Vec<_>>();
    let auto = |k: usize| {
        spec_with(
            &names(k),
            2,
            1,
            serde_json::json!({"tree": {"degree": "auto"},
                "estimate": {"link_rate": "100mbit", "working_set": "64MiB"}}),
        )
    };
    let small = auto(4);
    let state = applied(&small);
    let before = crate::model::degree(&small);
    let big = auto(40);
    assert_ne!(
        before,
        crate::model::degree(&big),
        "the chosen degree moves"
    );
    let p = plan(&big, &state);
    for (h, parent) in parents(&state) {
        assert_eq!(p.placement["base"][&h], parent, "{h} moved");
    }
    assert!(p.changes.iter().all(|c| c.action != Action::Update));
}

#[test]
fn a_thousand_hosts_lose_an_interior_one_with_at_most_degree_moves() {
    // The measurement: 1,000 hosts x 2 clones, degree 4, applied; node00002 removed.
    let names: Vec<String> = (1..=1000).map(|i| format!("node{i:05}")).collect();
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    let s = spec_with(
        &all,
        4,
        2,
        serde_json::json!({"backend": {"stack": "sim"}, "tree": {"degree": 4}}),
    );
    let state = applied(&s);
    let pl = parents(&state);
    assert!(
        pl.values().any(|p| p == "node00002"),
        "node00002 is interior"
    );
    let without: Vec<&str> = all.iter().copied().filter(|h| *h != "node00002").collect();
    let p = plan(
        &spec_with(
            &without,
            4,
            2,
            serde_json::json!({"backend": {"stack": "sim"},
        "tree": {"degree": 4}}),
        ),
        &state,
    );
    let s2 = p.summary();
    assert!(s2.change <= 4, "{s2:?}");
    assert_eq!(s2.writes_destroyed, 0);
    let rebuilt_clones = p
        .changes
        .iter()
        .filter(|c| matches!(c.addr.kind, Kind::Snapshot | Kind::Domain))
        .filter(|c| c.action == Action::Replace)
        .count();
    assert_eq!(rebuilt_clones, 0);
    assert!(p
        .changes
        .iter()
        .filter(|c| c.action != Action::NoOp)
        .all(|c| &*c.addr.host == "node00002"
            || c.action == Action::Update
            || c.addr.kind == Kind::Target));
}

fn tls_spec(hosts: &[&str], degree: u32) -> Spec {
    spec_with(
        hosts,
        degree,
        1,
        serde_json::json!({"backend": {"stack": "qemu", "tls": true}}),
    )
}

fn clients_of(p: &Plan, addr: &str) -> Vec<String> {
    match p
        .changes
        .iter()
        .find(|c| c.addr.to_string() == addr)
        .and_then(|c| c.after.as_ref())
    {
        Some(Desired::Target(t)) => t.clients().to_vec(),
        other => panic!("{addr}: {other:?}"),
    }
}

#[test]
fn with_tls_every_edge_needs_both_hosts_certificates_and_exports_admit_their_children() {
    // Degree 2: src -> {a, b}; a -> {c}.
    let s = tls_spec(&["a", "b", "c"], 2);
    let p = plan(&s, &State::empty("t"));
    let created: Vec<String> = actions(&p).into_iter().map(|(a, _)| a).collect();
    for a in [
        "ca.t.tls",
        "cert.src.tls",
        "cert.a.tls",
        "cert.b.tls",
        "cert.c.tls",
    ] {
        assert!(created.contains(&a.to_string()), "{a}: {created:?}");
    }
    let deps = |addr: &str| -> Vec<String> {
        let c = p
            .changes
            .iter()
            .find(|c| c.addr.to_string() == addr)
            .unwrap();
        c.deps.iter().map(Addr::to_string).collect()
    };
    assert_eq!(deps("cert.c.tls"), ["ca.t.tls"]);
    assert_eq!(deps("session.c.base"), ["target.a.base", "cert.c.tls"]);
    assert_eq!(deps("target.src.base"), ["cert.src.tls"]);
    assert!(deps("cache.c.base").contains(&"cert.c.tls".to_string()));
    assert!(deps("target.a.base").contains(&"cert.a.tls".to_string()));
    assert_eq!(clients_of(&p, "target.src.base"), ["a", "b"]);
    assert_eq!(clients_of(&p, "target.a.base"), ["c"]);
    let state = p.applied(&State::empty("t"));
    assert!(!plan(&s, &state).has_changes());

    // Without TLS: none of it.
    let plain = spec_with(
        &["a", "b", "c"],
        2,
        1,
        serde_json::json!({"backend": {"tls": false}}),
    );
    let p = plan(&plain, &State::empty("t"));
    assert!(p.changes.iter().all(|c| !c.addr.kind.of_tls()));
    assert!(clients_of(&p, "target.src.base").is_empty());
}

#[test]
fn with_tls_a_moved_host_changes_who_exports_admit_in_place() {
    // src -> {a, b}; a -> {c, d}. a leaves: c and d move, and the exports that adopt them
    // admit them from then on; nothing that holds a clone's writes is touched.
    let all = ["a", "b", "c", "d"];
    let state = applied(&tls_spec(&all, 2));
    let p = plan(&tls_spec(&["b", "c", "d"], 2), &state);
    for (addr, action) in actions(&p) {
        let host = addr.split('.').nth(1).unwrap();
        match (host, action) {
            ("a", Action::Delete) => {}
            ("c" | "d", Action::Update) => assert!(addr.starts_with("session."), "{addr}"),
            (_, Action::Update | Action::Create) if addr.starts_with("target.") => {}
            other => panic!("{addr}: {other:?}"),
        }
    }
    assert_eq!(p.summary().writes_destroyed, 0);
    let mut admitted: Vec<String> = p
        .changes
        .iter()
        .filter_map(|c| match &c.after {
            Some(Desired::Target(t)) => Some(t.clients().to_vec()),
            _ => None,
        })
        .flatten()
        .collect();
    admitted.sort();
    assert_eq!(
        admitted,
        ["b", "c", "d"],
        "every child admitted once, a nowhere"
    );
    let updated: Vec<&Change> = p
        .changes
        .iter()
        .filter(|c| c.action == Action::Update && c.addr.kind == Kind::Target)
        .collect();
    assert!(!updated.is_empty());
    for c in updated {
        assert_eq!(
            changed_paths(c.before.as_ref().unwrap(), c.after.as_ref().unwrap()),
            ["clients"]
        );
    }
    let next = plan(&tls_spec(&["b", "c", "d"], 2), &p.applied(&state));
    assert!(!next.has_changes());
}

#[test]
fn renewing_a_hosts_certificate_keeps_its_relays_and_clones_running() {
    // src -> {a, b}; a -> {c}.
    let s = tls_spec(&["a", "b", "c"], 2);
    let state = applied(&s);
    let opts = Options {
        replace: vec!["cert.a.tls".parse().unwrap()],
        ..Options::default()
    };
    let p = plan_of(&s, &state, &opts);
    let mut got = actions(&p);
    got.sort();
    assert_eq!(
        got,
        [
            ("cache.a.base".to_string(), Action::Update),
            ("cert.a.tls".to_string(), Action::Replace),
            ("domain.a.base.0".to_string(), Action::Update),
            ("session.a.base".to_string(), Action::Update),
            ("target.a.base".to_string(), Action::Update),
        ]
    );
    assert_eq!(p.summary().writes_destroyed, 0);
    let next = plan(&s, &p.applied(&state));
    assert!(!next.has_changes());

    // A new CA: every certificate is issued again, every relay loads its own in place, and
    // the guests restart with theirs; no clone's disk is touched.
    let opts = Options {
        replace: vec!["ca.t.tls".parse().unwrap()],
        ..Options::default()
    };
    let p = plan_of(&s, &state, &opts);
    for (addr, action) in actions(&p) {
        let kind = addr.split('.').next().unwrap();
        let want = match kind {
            "ca" | "cert" | "domain" => Action::Replace,
            "session" | "cache" | "target" => Action::Update,
            _ => panic!("{addr}: {action:?}"),
        };
        assert_eq!(action, want, "{addr}");
    }
    assert_eq!(p.summary().writes_destroyed, 0);
}

#[test]
fn an_imported_image_comes_first_and_a_changed_one_rebuilds_its_tree() {
    let s = spec_with(
        &["a", "b", "c"],
        2,
        1,
        serde_json::json!({"images": [{"name": "base", "source_host": "src",
            "path": "/srv/base.raw", "format": "raw",
            "import": {"from": "/dev/sdb", "format": "raw", "from_host": "a"}}]}),
    );
    let empty = State::empty("t");
    let p = plan(&s, &empty);
    let image: Addr = "image.src.base".parse().unwrap();
    let target = p
        .changes
        .iter()
        .find(|c| c.addr.to_string() == "target.src.base")
        .unwrap();
    assert!(target.deps.contains(&image), "{:?}", target.deps);
    let pos = op_positions(&p);
    assert!(
        pos[&(OpKind::Create, "image.src.base".into())]
            < pos[&(OpKind::Create, "target.src.base".into())]
    );
    let Some(Desired::Image(a)) = &p.changes.iter().find(|c| c.addr == image).unwrap().after else {
        panic!("image attributes")
    };
    assert_eq!(
        (a.from.as_str(), a.from_host.as_deref(), a.path.as_str()),
        ("/dev/sdb", Some("a"), "/srv/base.raw")
    );
    let state = p.applied(&empty);
    assert_eq!(actions(&plan(&s, &state)), []);

    // Its file changed: imported again, and every export, cache and clone on it rebuilt.
    let mut refreshed = state.clone();
    let i = refreshed.position(&image).unwrap();
    refreshed.resources[i as usize].status = Status::Changed;
    let p = plan(&s, &refreshed);
    // Everything but the volumes (space, not bytes of the image) is made anew.
    for c in &p.changes {
        let want = if c.addr.kind == Kind::Lv {
            Action::NoOp
        } else {
            Action::Replace
        };
        assert_eq!(c.action, want, "{}", c.addr);
    }
    assert_eq!(p.summary().writes_destroyed, 3);
    assert!(p.changes.iter().all(|c| c.action != Action::Update));
    assert_eq!(
        p.changes.iter().find(|c| c.addr == image).unwrap().reason,
        Some(Reason::ContentChanged)
    );
    assert_eq!(
        verdict(&saved(&s, &refreshed, &Options::default()), &s, &state),
        Ok(())
    );
    // ... and so when it vanished (its source is read anew: the bytes may differ).
    refreshed.resources[i as usize].status = Status::Missing;
    let p = plan(&s, &refreshed);
    assert_eq!(p.summary().writes_destroyed, 3);
}
