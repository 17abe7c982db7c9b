//! The checks a saved plan passes before apply touches anything.
//!
//! The seal (`wire`) proves a plan file is what vmthunder wrote, but anyone can recompute a
//! digest. These checks hold for any plan, sealed or not: it must be the plan this vmthunder
//! makes from the spec it carries and the current state.
//!
//! First the cheap structural rules, each refused with its own message: every address once; a
//! destroy plan only deletes; what is created, replaced or kept is on a host and of an image of
//! the spec; what is deleted, replaced or kept is recorded, what is created is not; every
//! `depends_on` names an object that exists after the apply, every `prior_depends_on` one that
//! is recorded and every `reason_address` one of the plan or the state; the operations have no
//! dependency cycle; the placement names known hosts and has no cycle. (Deletes are not held to
//! the spec's hosts: a host dropped from the spec is what they delete.)
//!
//! Then the plan is made again and compared. The desired graph is a pure function of the spec
//! and of the state's placement, recorded ports and recorded MACs. A refresh at plan time
//! changes none of those (it only marks objects `missing` and records observed attributes, in
//! memory), so `Graph::build` on the current state gives exactly the graph the plan was made
//! from. The actions are what `diff` makes of that graph and the state, given three inputs the
//! state file does not hold:
//! - `--target`: recorded in the plan (`targets`) and applied again;
//! - `--replace`: exactly the changes whose reason is `replace_by_request` (one named outside
//!   the targets leaves no trace in the plan, and changes nothing inside it);
//! - the refresh: what it found gone are the replaces for `replace_because_vanished` of
//!   objects recorded `ready`; they are marked `missing` while the plan is made again. One found
//!   gone outside the targeted part leaves no trace, and changes nothing inside it: whatever
//!   its loss rebuilds depends on it, and the part holds everything its members depend on.
//!
//! So the plan made again must equal the saved one change for change, in order, field for
//! field (`after` and `depends_on` as the spec expands, `before` and `prior_depends_on` as
//! recorded, actions and reasons as `diff` decides), and in its placement. What this cannot
//! tell apart: a plan claiming the refresh found a `ready` object gone when it was not. That
//! is a plan vmthunder could have made, and applying it replaces the object, as `--replace`
//! would.
//!
//! All of it is linear in changes plus dependencies (hash maps, one graph build, one diff, one
//! topological sort of the operations) and iterative. Only the first [`LISTED`] problems are
//! named.

use std::collections::BTreeSet;
use std::fmt;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use super::ops::{OpGraph, OpsError};
use super::{changed_paths, diff, Action, Change, Mode, Options, Plan, Reason};
use crate::graph::Graph;
use crate::resource::{Addr, Desired};
use crate::spec::Spec;
use crate::state::{Placement, State, Status};

/// At most this many problems are named.
pub const LISTED: usize = 20;

/// Why a saved plan is refused: nothing was changed.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The first [`LISTED`] problems, each naming the address and the field.
    pub problems: Vec<String>,
    /// How many more were found.
    pub unlisted: usize,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len() + self.unlisted;
        write!(
            f,
            "{n} problem{}; nothing was changed; make a new plan:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        if self.unlisted > 0 {
            write!(f, "\n  ... and {} more", self.unlisted)?;
        }
        Ok(())
    }
}

impl std::error::Error for Rejected {}

#[derive(Default)]
struct Problems {
    list: Vec<String>,
    unlisted: usize,
}

impl Problems {
    fn push(&mut self, p: String) {
        if self.list.len() < LISTED {
            self.list.push(p);
        } else {
            self.unlisted += 1;
        }
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

impl Plan {
    /// Whether this saved plan is the one vmthunder makes from `spec` (the spec it carries)
    /// and `state` (check [`Plan::check_current`] first). `state` is changed while the plan is
    /// made again, and restored before this returns.
    pub fn verify_saved(&self, spec: &Spec, state: &mut State) -> Result<(), Rejected> {
        let mut problems = Problems::default();
        structure(self, spec, state, &mut problems);
        if problems.is_empty() {
            operations(self, &mut problems);
        }
        if problems.is_empty() {
            made_again(self, spec, state, &mut problems);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Rejected {
                problems: problems.list,
                unlisted: problems.unlisted,
            })
        }
    }
}

fn what(action: Action) -> &'static str {
    match action {
        Action::NoOp => "a no-op",
        Action::Create => "a create",
        Action::Update => "an update",
        Action::Replace => "a replace",
        Action::Delete => "a delete",
    }
}

fn list(addrs: &[Addr]) -> String {
    let names: Vec<String> = addrs.iter().map(Addr::to_string).collect();
    format!("[{}]", names.join(", "))
}

/// The structural rules: each names the address and the field at fault.
fn structure(plan: &Plan, spec: &Spec, state: &State, problems: &mut Problems) {
    let hosts: HashSet<&str> = spec.hosts.iter().map(|h| h.name.as_str()).collect();
    let images: HashSet<&str> = spec.images.iter().map(|i| i.name.as_str()).collect();
    let networks: HashSet<&str> = spec.networks.iter().map(|n| n.name.as_str()).collect();
    let mut index: HashMap<&Addr, usize> =
        HashMap::with_capacity_and_hasher(plan.changes.len(), Default::default());
    for (i, c) in plan.changes.iter().enumerate() {
        if index.insert(&c.addr, i).is_some() {
            problems.push(format!("{}: listed more than once", c.addr));
        }
    }
    for c in &plan.changes {
        let at = &c.addr;
        let recorded = state.get(at).is_some();
        if plan.mode == Mode::Destroy && !matches!(c.action, Action::Delete | Action::NoOp) {
            problems.push(format!(
                "{at}: {} in a destroy plan (a destroy plan only deletes)",
                what(c.action)
            ));
        }
        if c.action == Action::Delete {
            if !recorded {
                problems.push(format!(
                    "{at}: to be deleted, but it is not recorded in the state"
                ));
            }
        } else {
            // The CA's address names the cluster where others name a host.
            let host_known = if at.kind == crate::resource::Kind::Ca {
                *at.host == *spec.cluster
            } else {
                hosts.contains(&*at.host)
            };
            if !host_known {
                problems.push(format!(
                    "{at}: host {:?} is not a host of the plan's spec",
                    at.host
                ));
            }
            let image_known = if at.kind.of_tls() {
                &*at.image == crate::resource::TLS
            } else if at.kind.of_network() {
                networks.contains(&*at.image)
            } else {
                images.contains(&*at.image)
            };
            if !image_known {
                problems.push(format!(
                    "{at}: image {:?} is not an image of the plan's spec",
                    at.image
                ));
            }
            match (c.action, recorded) {
                (Action::Create, true) => problems.push(format!(
                    "{at}: to be created, but it is already recorded in the state"
                )),
                (Action::Replace | Action::Update | Action::NoOp, false) => problems.push(format!(
                    "{at}: {} of something not recorded in the state",
                    what(c.action)
                )),
                _ => {}
            }
        }
        for d in &c.deps {
            match index.get(d) {
                Some(&j) if plan.changes[j].action == Action::Delete => problems.push(format!(
                    "{at}: depends_on names {d}, which the plan deletes"
                )),
                Some(_) => {}
                None if state.get(d).is_some() => {}
                None => problems.push(format!(
                    "{at}: depends_on names {d}, which is neither in the plan nor in the state"
                )),
            }
        }
        for d in &c.prior_deps {
            if state.get(d).is_none() {
                problems.push(format!(
                    "{at}: prior_depends_on names {d}, which is not recorded in the state"
                ));
            }
        }
        if let Some(Reason::DependencyReplaced(a)) = &c.reason {
            if !index.contains_key(a) && state.get(a).is_none() {
                problems.push(format!(
                    "{at}: reason_address names {a}, which is neither in the plan nor in the state"
                ));
            }
        }
    }
    placement(&plan.placement, &hosts, &images, state, problems);
}

/// Known images and hosts (the spec's, or the state's placement's: a targeted plan keeps
/// what it does not touch), and no host pulling from itself through others.
fn placement(
    placement: &Placement,
    hosts: &HashSet<&str>,
    images: &HashSet<&str>,
    state: &State,
    problems: &mut Problems,
) {
    let mut known: HashSet<&str> = hosts.clone();
    for parents in state.placement.values() {
        for (h, p) in parents {
            known.insert(h);
            known.insert(p);
        }
    }
    for (image, parents) in placement {
        if !images.contains(image.as_str()) && !state.placement.contains_key(image) {
            problems.push(format!(
                "placement: image {image:?} is neither in the plan's spec nor in the state"
            ));
        }
        for (h, p) in parents {
            for x in [h, p] {
                if !known.contains(x.as_str()) {
                    problems.push(format!(
                        "placement of image {image}: host {x:?} is neither in the plan's spec nor in the state"
                    ));
                }
            }
        }
        // Follow each host's parents until a host already cleared, the root, or the path
        // itself: every host is walked once.
        let mut done: HashSet<&str> = HashSet::default();
        let mut path: Vec<&str> = Vec::new();
        let mut on_path: HashSet<&str> = HashSet::default();
        for start in parents.keys() {
            let mut h = start.as_str();
            loop {
                if done.contains(h) {
                    break;
                }
                if !on_path.insert(h) {
                    let from = path.iter().position(|&x| x == h).unwrap_or(0);
                    let mut cycle: Vec<&str> = path[from..].iter().copied().take(10).collect();
                    cycle.push(h);
                    problems.push(format!(
                        "placement of image {image} is a cycle: {}",
                        cycle.join(" pulls from ")
                    ));
                    break;
                }
                path.push(h);
                match parents.get(h) {
                    Some(p) => h = p.as_str(),
                    None => break,
                }
            }
            done.extend(path.drain(..));
            on_path.clear();
        }
    }
}

/// The operations apply would run have an order (no dependency cycle).
fn operations(plan: &Plan, problems: &mut Problems) {
    if let Err(OpsError::Cycle(ops)) = OpGraph::build(plan).order(plan) {
        const SHOWN: usize = 8;
        let shown: Vec<&str> = ops.iter().take(SHOWN).map(String::as_str).collect();
        let more = match ops.len().saturating_sub(SHOWN) {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        problems.push(format!(
            "depends_on and prior_depends_on form a cycle through {}{more}",
            shown.join(", ")
        ));
    }
}

/// Makes the plan again from `spec` and `state` and names every difference.
fn made_again(plan: &Plan, spec: &Spec, state: &mut State, problems: &mut Problems) {
    // What the refresh at plan time found gone or changed: so while the plan is made again.
    let vanished: Vec<(u32, Status)> = plan
        .changes
        .iter()
        .filter(|c| c.action == Action::Replace)
        .filter_map(|c| match c.reason {
            Some(Reason::Vanished) => Some((c, Status::Missing)),
            Some(Reason::ContentChanged) => Some((c, Status::Changed)),
            _ => None,
        })
        .filter_map(|(c, s)| Some((state.position(&c.addr)?, s)))
        .filter(|&(i, _)| state.resources[i as usize].status == Status::Ready)
        .collect();
    // ... and guests it found paused on an I/O error.
    let paused: Vec<(u32, Option<serde_json::Value>)> = plan
        .changes
        .iter()
        .filter(|c| c.reason == Some(Reason::PausedOnIoError))
        .filter_map(|c| state.position(&c.addr))
        .map(|i| {
            (
                i,
                state.resources[i as usize].observed.get("status").cloned(),
            )
        })
        .collect();
    for &(i, status) in &vanished {
        state.resources[i as usize].status = status;
    }
    for (i, _) in &paused {
        state.resources[*i as usize]
            .observed
            .insert("status".into(), super::PAUSED_ON_IO_ERROR.into());
    }
    let again = make(plan, spec, state);
    for &(i, _) in &vanished {
        state.resources[i as usize].status = Status::Ready;
    }
    for (i, old) in paused {
        let o = &mut state.resources[i as usize].observed;
        match old {
            Some(v) => o.insert("status".into(), v),
            None => o.remove("status"),
        };
    }
    match again {
        Ok(expected) => compare(plan, &expected, problems),
        Err(e) => problems.push(format!("the plan's spec and the state make no plan: {e}")),
    }
}

fn make(plan: &Plan, spec: &Spec, state: &State) -> Result<Plan, String> {
    let replace: Vec<Addr> = plan
        .changes
        .iter()
        .filter(|c| c.reason == Some(Reason::ByRequest))
        .map(|c| c.addr.clone())
        .collect();
    let opts = Options {
        mode: Some(plan.mode),
        targets: plan.targets.clone(),
        replace,
        prevent_destroy: spec.clones.prevent_destroy,
    };
    // A destroy plan deletes what is recorded: it needs no graph.
    let graph = match plan.mode {
        Mode::Destroy => Graph::default(),
        Mode::Normal => Graph::build_with(spec, state, &crate::health::Health::from_plan(plan))
            .map_err(|e| e.to_string())?,
    };
    diff(graph, state, &opts, plan.spec_digest.clone()).map_err(|e| e.to_string())
}

fn compare(plan: &Plan, expected: &Plan, problems: &mut Problems) {
    // The expected plan is already limited to the same targets: a saved plan must equal it.
    if plan.changes == expected.changes && plan.placement == expected.placement {
        return;
    }
    let index: HashMap<&Addr, usize> = expected
        .changes
        .iter()
        .enumerate()
        .map(|(i, c)| (&c.addr, i))
        .collect();
    let limited = match plan.targets.as_slice() {
        [] => String::new(),
        t => format!(" (limited to {})", t.join(", ")),
    };
    let mut seen = vec![false; expected.changes.len()];
    let mut next = 0;
    for c in &plan.changes {
        let Some(&j) = index.get(&c.addr) else {
            problems.push(format!(
                "{}: {} that the plan's spec and the state do not call for{limited}",
                c.addr,
                what(c.action)
            ));
            continue;
        };
        seen[j] = true;
        if j < next {
            problems.push(format!(
                "{}: out of order (a plan lists its changes in the order vmthunder made them)",
                c.addr
            ));
        }
        next = next.max(j + 1);
        let e = &expected.changes[j];
        if c != e {
            differences(c, e, problems);
        }
    }
    for (j, e) in expected.changes.iter().enumerate() {
        if !seen[j] {
            problems.push(format!(
                "{}: missing; the plan's spec and the state call for {} of it{limited}",
                e.addr,
                what(e.action)
            ));
        }
    }
    if plan.placement != expected.placement {
        placement_differences(&plan.placement, &expected.placement, problems);
    }
}

/// Every field of `got` that is not what the spec and the state give (`want`).
fn differences(got: &Change, want: &Change, problems: &mut Problems) {
    let at = &got.addr;
    if got.action != want.action {
        problems.push(format!(
            "{at}: actions are {:?}, the plan's spec and the state give {:?}",
            got.action.terraform_actions(),
            want.action.terraform_actions()
        ));
        return;
    }
    attributes(
        at,
        "after",
        got.after.as_ref(),
        want.after.as_ref(),
        "the plan's spec gives",
        problems,
    );
    if got.deps != want.deps {
        problems.push(format!(
            "{at}: depends_on is {}, the plan's spec gives {}",
            list(&got.deps),
            list(&want.deps)
        ));
    }
    attributes(
        at,
        "before",
        got.before.as_ref(),
        want.before.as_ref(),
        "the state records",
        problems,
    );
    if got.prior_deps != want.prior_deps {
        problems.push(format!(
            "{at}: prior_depends_on is {}, the state records {}",
            list(&got.prior_deps),
            list(&want.prior_deps)
        ));
    }
    if got.reason != want.reason {
        let show = |r: &Option<Reason>| match r {
            None => "none".to_string(),
            Some(r @ Reason::DependencyReplaced(a)) => format!("{} ({a})", r.code()),
            Some(r) => r.code().to_string(),
        };
        problems.push(format!(
            "{at}: reason is {}, the plan's spec and the state give {}",
            show(&got.reason),
            show(&want.reason)
        ));
    }
    if got.replace_paths != want.replace_paths {
        problems.push(format!(
            "{at}: replace_paths is {:?}, the plan's spec and the state give {:?}",
            got.replace_paths, want.replace_paths
        ));
    }
}

/// The attributes that differ, one problem per top-level attribute.
fn attributes(
    at: &Addr,
    which: &str,
    got: Option<&Desired>,
    want: Option<&Desired>,
    source: &str,
    problems: &mut Problems,
) {
    match (got, want) {
        (Some(g), Some(w)) if g != w => {
            let (gv, wv) = (g.to_value(), w.to_value());
            let value = |v: &serde_json::Value, k: &str| {
                v.get(k).map_or("absent".to_string(), |x| x.to_string())
            };
            for path in changed_paths(w, g) {
                problems.push(format!(
                    "{at}: {which}.{path} is {}, {source} {}",
                    value(&gv, &path),
                    value(&wv, &path)
                ));
            }
        }
        (Some(_), None) => problems.push(format!("{at}: has {which}, {source} none")),
        (None, Some(_)) => problems.push(format!("{at}: has no {which}, {source} one")),
        _ => {}
    }
}

/// Where the placements disagree, host by host.
fn placement_differences(got: &Placement, want: &Placement, problems: &mut Problems) {
    let images: BTreeSet<&String> = got.keys().chain(want.keys()).collect();
    for image in images {
        let (g, w) = (got.get(image), want.get(image));
        if g.is_none() != w.is_none() {
            problems.push(format!(
                "placement: image {image} is {}, the plan's spec and the state give {}",
                if g.is_some() { "placed" } else { "absent" },
                if w.is_some() { "a placement" } else { "none" }
            ));
            continue;
        }
        let (Some(g), Some(w)) = (g, w) else { continue };
        if g == w {
            continue;
        }
        let hosts: BTreeSet<&String> = g.keys().chain(w.keys()).collect();
        for host in hosts {
            let (gp, wp) = (g.get(host), w.get(host));
            if gp != wp {
                let show = |p: Option<&String>| p.map_or("nowhere".to_string(), |p| p.clone());
                problems.push(format!(
                    "placement of image {image}: {host} pulls from {}, the plan's spec and the state give {}",
                    show(gp),
                    show(wp)
                ));
            }
        }
    }
}
