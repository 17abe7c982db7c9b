//! The plan: desired DAG x recorded state -> the changes that make them agree.
//!
//! Pure data and a pure diff: it never calls a backend, so every rule here is testable from
//! tables of cases. Rendering for people lives in `render`, the versioned JSON form in `wire`,
//! the order apply runs the changes in in `ops`, the checks a saved plan passes before apply
//! runs it in `verify`.
//!
//! | action    | before            | after              |
//! |-----------|-------------------|--------------------|
//! | `no-op`   | recorded (equal)  | desired            |
//! | `create`  | none              | desired            |
//! | `update`  | recorded          | desired            |
//! | `replace` | recorded          | desired            |
//! | `delete`  | recorded          | none               |
//!
//! An `update` changes an object in place: only attributes its kind declares updatable
//! changed ([`updatable`]), or only the objects it is built on moved, and the kind can be
//! re-pointed at them. What is built on an updated object stays as it is.

mod ops;
mod render;
mod verify;
mod wire;

use rustc_hash::FxHashSet as HashSet;

use crate::graph::Graph;
use crate::resource::{Addr, Desired, Kind, TargetAttrs};
use crate::state::{Placement, State, Status};

pub use ops::{Op, OpGraph, OpKind};
pub use render::{render, RenderOptions};
pub use verify::Rejected;
pub use wire::{schema_bytes, PlanFileError, PLAN_FORMAT_VERSION};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    NoOp,
    Create,
    Update,
    Replace,
    Delete,
}

impl Action {
    /// Terraform's `actions` array.
    pub fn terraform_actions(self) -> &'static [&'static str] {
        match self {
            Action::NoOp => &["no-op"],
            Action::Create => &["create"],
            Action::Update => &["update"],
            Action::Replace => &["delete", "create"],
            Action::Delete => &["delete"],
        }
    }
}

/// Why a resource is replaced or deleted. For display and machines; never drives behaviour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The recorded object is tainted (a create failed part-way).
    Tainted,
    /// A refresh found the object gone (deleted outside vmthunder).
    Vanished,
    /// A refresh found its contents changed (an imported image's file written outside
    /// vmthunder).
    ContentChanged,
    /// Desired attributes changed; all of them force replacement.
    AttributesChanged,
    /// `--replace` named it.
    ByRequest,
    /// Something it is built on is created or replaced.
    DependencyReplaced(Addr),
    /// In state but no longer in the spec.
    NotInSpec,
    /// `--destroy` / `destroy`.
    Destroy,
    /// Updatable attributes changed (a session's parent: the host moves in the tree).
    Updatable,
    /// Something it is built on is created or replaced, and it can follow in place (a session
    /// logs in to its parent's new export).
    DependencyRebuilt(Addr),
    /// Its parent cannot serve it: the host moves to another parent in place.
    Repair { parent: String, why: String },
    /// A refresh found its guest paused on an I/O error of its disk (its upstream failed):
    /// it is resumed, after every repair planned above it.
    PausedOnIoError,
}

/// The observed `status` of a domain whose guest paused on an I/O error of its disk (every
/// stack reports it so).
pub const PAUSED_ON_IO_ERROR: &str = "io-error";

/// Whether a recorded domain's guest is paused on an I/O error.
pub fn paused_on_io_error(r: &crate::state::Recorded) -> bool {
    r.addr.kind == Kind::Domain
        && r.observed.get("status").and_then(serde_json::Value::as_str) == Some(PAUSED_ON_IO_ERROR)
}

impl Reason {
    pub fn code(&self) -> &'static str {
        match self {
            Reason::Tainted => "replace_because_tainted",
            Reason::Vanished => "replace_because_vanished",
            Reason::ContentChanged => "replace_because_content_changed",
            Reason::AttributesChanged => "replace_because_cannot_update",
            Reason::ByRequest => "replace_by_request",
            Reason::DependencyReplaced(_) => "replace_because_dependency_replaced",
            Reason::NotInSpec => "delete_because_no_resource_config",
            Reason::Destroy => "delete_because_destroy",
            Reason::Updatable => "update_in_place",
            Reason::DependencyRebuilt(_) => "update_because_dependency_replaced",
            Reason::Repair { .. } => "update_because_parent_unhealthy",
            Reason::PausedOnIoError => "update_because_paused_on_io_error",
        }
    }
}

/// One planned change.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub addr: Addr,
    pub action: Action,
    /// Recorded attributes (replace, delete).
    pub before: Option<Desired>,
    /// Desired attributes (no-op, create, replace).
    pub after: Option<Desired>,
    /// What the new object is built on (no-op, create, replace).
    pub deps: Vec<Addr>,
    /// What the recorded object was built on (replace, delete): it is deleted before them.
    pub prior_deps: Vec<Addr>,
    pub reason: Option<Reason>,
    /// Top-level attributes whose change forces the replacement.
    pub replace_paths: Vec<String>,
    /// The clone whose writes this change destroys (a snapshot or its copy-on-write `lv`
    /// deleted or replaced while the clone stays in the spec).
    pub destroys_writes_of: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Normal,
    Destroy,
}

/// The state a plan was made against; apply refuses a plan whose prior state is not current.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prior {
    pub lineage: Option<String>,
    pub serial: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub cluster: String,
    pub mode: Mode,
    /// The `--target` patterns it was limited to (none: the whole spec and state).
    pub targets: Vec<String>,
    pub prior: Prior,
    pub spec_digest: Option<String>,
    /// The spec the plan was made from, so a saved plan applies on its own.
    pub spec: Option<serde_json::Value>,
    /// The tree placement after apply.
    pub placement: Placement,
    /// Desired changes in topological order of creation, then deletes.
    pub changes: Vec<Change>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub add: usize,
    pub change: usize,
    pub replace: usize,
    pub destroy: usize,
    pub no_op: usize,
    /// Clones whose writes the plan destroys while they stay in the spec.
    pub writes_destroyed: usize,
}

#[derive(Clone, Debug, Default)]
pub struct Options {
    pub mode: Option<Mode>,
    /// Address patterns (`domain.node07`, `session.node07.base`) that limit the plan.
    pub targets: Vec<String>,
    /// Addresses to replace even if unchanged.
    pub replace: Vec<Addr>,
    /// `clones.prevent_destroy`: a plan that destroys the writes of a clone staying in the
    /// spec is an error.
    pub prevent_destroy: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("--target {0:?} matches no resource in the spec or the state")]
    UnknownTarget(String),
    #[error("cannot replace {0}: it is not in the state (nothing to replace yet)")]
    ReplaceUnknown(Addr),
    #[error("cannot replace {0}: it is no longer in the spec and will be deleted")]
    ReplaceRemoved(Addr),
    #[error("--replace cannot be combined with --destroy")]
    ReplaceInDestroy,
    #[error("/clones/prevent_destroy: the plan would destroy the writes of clones that stay in the spec: {}; remove prevent_destroy (or set it to false) to allow it, or change the spec so that their disks are kept", .0.join(", "))]
    PreventDestroy(Vec<String>),
}

/// Why a saved plan cannot be applied to the current state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StalePlan {
    #[error("the plan is for cluster {plan:?}, the state for {state:?}")]
    OtherCluster { plan: String, state: String },
    #[error("the saved plan does not match the given state (lineage {plan:?}, state has {state:?}): it was made against another state")]
    Lineage {
        plan: Option<String>,
        state: Option<String>,
    },
    #[error("the saved plan is stale: it was made at state serial {plan}, the state is now at serial {state}; run `vmthunder plan` again")]
    Serial { plan: u64, state: u64 },
}

impl Plan {
    /// Whether this plan was made against exactly `state`: apply refuses it otherwise.
    pub fn check_current(&self, state: &State) -> Result<(), StalePlan> {
        if self.cluster != state.cluster {
            return Err(StalePlan::OtherCluster {
                plan: self.cluster.clone(),
                state: state.cluster.clone(),
            });
        }
        if self.prior.lineage.is_some() && self.prior.lineage != state.lineage {
            return Err(StalePlan::Lineage {
                plan: self.prior.lineage.clone(),
                state: state.lineage.clone(),
            });
        }
        if self.prior.serial != state.serial {
            return Err(StalePlan::Serial {
                plan: self.prior.serial,
                state: state.serial,
            });
        }
        // No lineage: made before the state was first written, so only for a state that
        // still has none.
        if self.prior.lineage.is_none() && state.lineage.is_some() {
            return Err(StalePlan::Lineage {
                plan: None,
                state: state.lineage.clone(),
            });
        }
        Ok(())
    }

    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for c in &self.changes {
            match c.action {
                Action::NoOp => s.no_op += 1,
                Action::Create => s.add += 1,
                Action::Update => s.change += 1,
                Action::Replace => s.replace += 1,
                Action::Delete => s.destroy += 1,
            }
            // A clone's writes are in its snapshot; its cow lv counts with it.
            if c.addr.kind == Kind::Snapshot && c.destroys_writes_of.is_some() {
                s.writes_destroyed += 1;
            }
        }
        s
    }

    /// The state a complete, successful apply of this plan records (observed attributes
    /// empty: they come from the backend). Untouched resources keep their records and order.
    pub fn applied(&self, prior: &State) -> State {
        let mut gone: HashSet<&Addr> = HashSet::default();
        let mut created = Vec::new();
        for c in &self.changes {
            match c.action {
                Action::NoOp => {}
                Action::Delete => {
                    gone.insert(&c.addr);
                }
                Action::Create | Action::Update | Action::Replace => {
                    gone.insert(&c.addr);
                    created.push(crate::state::Recorded {
                        addr: c.addr.clone(),
                        desired: c.after.clone().expect("creates have desired attributes"),
                        observed: Default::default(),
                        deps: c.deps.clone(),
                        status: Status::Ready,
                    });
                }
            }
        }
        let mut resources: Vec<_> = prior
            .resources
            .iter()
            .filter(|r| !gone.contains(&r.addr))
            .cloned()
            .collect();
        resources.extend(created);
        State::from_parts(
            &prior.cluster,
            prior.serial,
            prior.lineage.clone(),
            self.placement.clone(),
            resources,
        )
        .expect("a plan applied to its own prior state is consistent")
    }

    /// Whether applying it would change anything.
    pub fn has_changes(&self) -> bool {
        self.changes.iter().any(|c| c.action != Action::NoOp)
    }
}

/// Diffs the desired DAG against the recorded state. Consumes the graph: its attributes move
/// into the plan instead of being copied. Linear in resources plus dependencies.
pub fn diff(
    graph: Graph,
    state: &State,
    opts: &Options,
    spec_digest: Option<String>,
) -> Result<Plan, PlanError> {
    let mode = opts.mode.unwrap_or(Mode::Normal);
    if mode == Mode::Destroy && !opts.replace.is_empty() {
        return Err(PlanError::ReplaceInDestroy);
    }
    let replace: HashSet<&Addr> = opts.replace.iter().collect();
    for a in &replace {
        if state.get(a).is_none() {
            return Err(PlanError::ReplaceUnknown((*a).clone()));
        }
        if graph.get(a).is_none() {
            return Err(PlanError::ReplaceRemoved((*a).clone()));
        }
    }
    let prior = Prior {
        lineage: state.lineage.clone(),
        serial: state.serial,
    };
    let mut changes: Vec<Change> = Vec::with_capacity(graph.len() + 16);
    let placement;
    if mode == Mode::Destroy {
        placement = Placement::new();
        for r in &state.resources {
            changes.push(delete(r, Reason::Destroy));
        }
    } else {
        let Graph {
            resources,
            placement: desired_placement,
            index: desired,
            repairs,
        } = graph;
        placement = desired_placement;
        let mut actions: Vec<Action> = Vec::with_capacity(resources.len());
        // Per resource: whether the image bytes behind it change.
        let mut new_content: Vec<bool> = Vec::with_capacity(resources.len());
        // Per resource: replaced because a refresh found it gone.
        let mut vanished: Vec<bool> = Vec::with_capacity(resources.len());
        // Per resource: made anew under a new CA.
        let mut new_trust: Vec<bool> = Vec::with_capacity(resources.len());
        let addrs: Vec<Addr> = resources.iter().map(|r| r.addr.clone()).collect();
        // Resources arrive in topological order, so every dependency's action is known.
        for r in resources {
            let recorded = state.get(&r.addr);
            let deps: Vec<Addr> = r.deps.iter().map(|&d| addrs[d as usize].clone()).collect();
            let (action, reason, replace_paths) = match recorded {
                None => (Action::Create, None, Vec::new()),
                Some(rec) if rec.status == Status::Tainted => {
                    (Action::Replace, Some(Reason::Tainted), Vec::new())
                }
                Some(rec) if rec.status == Status::Missing => {
                    (Action::Replace, Some(Reason::Vanished), Vec::new())
                }
                Some(rec) if rec.status == Status::Changed => {
                    (Action::Replace, Some(Reason::ContentChanged), Vec::new())
                }
                Some(rec) => {
                    let can = updatable(r.addr.kind);
                    let changed = if rec.desired != r.desired {
                        changed_paths(&rec.desired, &r.desired)
                    } else {
                        Vec::new()
                    };
                    let forcing: Vec<String> = changed
                        .iter()
                        .filter(|p| !can.attrs.contains(&p.as_str()))
                        .cloned()
                        .collect();
                    // Built on other objects than it now should be: moved in place when the
                    // kind can be re-pointed at every object that differs.
                    let moved: Vec<&Addr> = rec
                        .deps
                        .iter()
                        .filter(|d| !deps.contains(d))
                        .chain(deps.iter().filter(|d| !rec.deps.contains(d)))
                        .collect();
                    let movable = moved.iter().all(|d| can.follows.contains(&d.kind));
                    // Rebuilt objects it is built on: followed in place only when the old
                    // one is gone already (nothing is torn down under it) and holds the same
                    // image bytes.
                    let rebuilt: Vec<u32> = r
                        .deps
                        .iter()
                        .copied()
                        .filter(|&d| {
                            matches!(actions[d as usize], Action::Create | Action::Replace)
                        })
                        .filter(|&d| rec.deps.contains(&addrs[d as usize]))
                        .collect();
                    let stuck = rebuilt.iter().copied().find(|&d| {
                        let kind = addrs[d as usize].kind;
                        let followed = match kind {
                            // A renewed certificate; under a new CA, guests start afresh.
                            Kind::Cert => !(r.addr.kind == Kind::Domain && new_trust[d as usize]),
                            _ => vanished[d as usize] && !new_content[d as usize],
                        };
                        !(can.follows.contains(&kind) && followed)
                    });
                    let in_place = || match repairs.get(&r.addr) {
                        Some((parent, why)) => Reason::Repair {
                            parent: parent.clone(),
                            why: why.clone(),
                        },
                        None => Reason::Updatable,
                    };
                    let replaced_by = |d: &Addr| {
                        (
                            Action::Replace,
                            Some(Reason::DependencyReplaced(d.clone())),
                            Vec::new(),
                        )
                    };
                    if !forcing.is_empty() {
                        (Action::Replace, Some(Reason::AttributesChanged), forcing)
                    } else if replace.contains(&r.addr) {
                        (Action::Replace, Some(Reason::ByRequest), Vec::new())
                    } else if !movable {
                        replaced_by(moved[0])
                    } else if let Some(d) = stuck {
                        replaced_by(&addrs[d as usize])
                    } else if !changed.is_empty() || !moved.is_empty() {
                        (Action::Update, Some(in_place()), Vec::new())
                    } else if let Some(&d) = rebuilt.first() {
                        (
                            Action::Update,
                            Some(Reason::DependencyRebuilt(addrs[d as usize].clone())),
                            Vec::new(),
                        )
                    } else if paused_on_io_error(rec) {
                        (Action::Update, Some(Reason::PausedOnIoError), Vec::new())
                    } else {
                        (Action::NoOp, None, Vec::new())
                    }
                }
            };
            // The image's bytes change under it: the source's image replaced because its
            // attributes (path, format, size, version) changed, an imported image made
            // again (whatever the reason: its source is read anew), or anything rebuilt on
            // such.
            let image_changed = action == Action::Replace
                && ((recorded.is_some_and(|rec| rec.desired != r.desired)
                    && matches!(r.desired, Desired::Target(TargetAttrs::Image { .. })))
                    || r.addr.kind == Kind::Image
                    || r.deps.iter().any(|&d| new_content[d as usize]));
            new_content.push(image_changed);
            // The CA that certificates are checked against changes.
            new_trust.push(
                matches!(action, Action::Create | Action::Replace)
                    && (r.addr.kind == Kind::Ca && recorded.is_some()
                        || r.deps.iter().any(|&d| new_trust[d as usize])),
            );
            vanished.push(reason == Some(Reason::Vanished));
            actions.push(action);
            let (before, prior_deps) = match (action, recorded) {
                (Action::Replace | Action::Update, Some(rec)) => {
                    (Some(rec.desired.clone()), rec.deps.clone())
                }
                _ => (None, Vec::new()),
            };
            changes.push(Change {
                addr: r.addr,
                action,
                before,
                after: Some(r.desired),
                deps,
                prior_deps,
                reason,
                replace_paths,
                destroys_writes_of: None,
            });
        }
        for r in &state.resources {
            if !desired.contains_key(&r.addr) {
                changes.push(delete(r, Reason::NotInSpec));
            }
        }
        mark_lost_writes(&mut changes, &desired);
        if opts.prevent_destroy {
            let lost: Vec<String> = changes
                .iter()
                .filter(|c| c.destroys_writes_of.is_some())
                .map(|c| c.addr.to_string())
                .collect();
            if !lost.is_empty() {
                return Err(PlanError::PreventDestroy(lost));
            }
        }
    }
    let mut plan = Plan {
        cluster: state.cluster.clone(),
        mode,
        targets: opts.targets.clone(),
        prior,
        spec_digest,
        spec: None,
        placement,
        changes,
    };
    if !opts.targets.is_empty() {
        restrict(&mut plan, state, &opts.targets)?;
    }
    Ok(plan)
}

fn delete(r: &crate::state::Recorded, reason: Reason) -> Change {
    Change {
        addr: r.addr.clone(),
        action: Action::Delete,
        before: Some(r.desired.clone()),
        after: None,
        deps: Vec::new(),
        prior_deps: r.deps.clone(),
        reason: Some(reason),
        replace_paths: Vec::new(),
        destroys_writes_of: None,
    }
}

/// What a kind can change in place; everything else forces replacement.
#[derive(Clone, Copy, Debug)]
pub struct Updatable {
    /// Top-level attributes that may change in place.
    pub attrs: &'static [&'static str],
    /// Kinds of the objects it is built on that it can be re-pointed at, or follow in place
    /// when one is rebuilt after it vanished.
    pub follows: &'static [Kind],
}

/// The table of in-place updates per kind:
/// - a session moves to another parent's export in place (its cache keeps every block and
///   its upstream switches under it), and logs in again to its parent's rebuilt export;
/// - a snapshot (the clone's writes) stays over its host's cache rebuilt after its relay
///   died: the cache is the same image's bytes at the same endpoint;
/// - a TLS target changes the children it admits (its authorization list) in place;
/// - a host's relays load its renewed certificate in place (sessions connect anew, servers
///   restart with it), and its guests keep running: their certificate is still the CA's.
///   Only a new CA restarts the guests (it does not touch their disks).
pub fn updatable(kind: Kind) -> Updatable {
    match kind {
        Kind::Session => Updatable {
            attrs: &["parent", "parent_address", "parent_port"],
            follows: &[Kind::Target, Kind::Cert],
        },
        Kind::Cache => Updatable {
            attrs: &[],
            follows: &[Kind::Cert],
        },
        Kind::Snapshot => Updatable {
            attrs: &[],
            follows: &[Kind::Cache],
        },
        Kind::Target => Updatable {
            attrs: &["clients"],
            follows: &[Kind::Cert],
        },
        Kind::Domain => Updatable {
            attrs: &[],
            follows: &[Kind::Cert],
        },
        _ => Updatable {
            attrs: &[],
            follows: &[],
        },
    }
}

/// Marks every change that destroys a clone's writes (its snapshot or copy-on-write `lv`
/// deleted or replaced) while the clone stays in the spec. `desired` indexes `changes`,
/// which start with the desired resources in graph order.
fn mark_lost_writes(changes: &mut [Change], desired: &rustc_hash::FxHashMap<Addr, u32>) {
    for i in 0..changes.len() {
        let c = &changes[i];
        let holds_writes = match c.addr.kind {
            Kind::Snapshot => true,
            Kind::Lv => c.addr.n.is_some(),
            _ => false,
        };
        if !holds_writes || !matches!(c.action, Action::Replace | Action::Delete) {
            continue;
        }
        let domain = Addr {
            kind: Kind::Domain,
            ..c.addr.clone()
        };
        let name = desired
            .get(&domain)
            .and_then(|&d| match &changes[d as usize].after {
                Some(Desired::Domain(d)) => Some(d.name.clone()),
                _ => None,
            });
        changes[i].destroys_writes_of = name;
    }
}

/// Top-level attribute names whose values differ.
pub fn changed_paths(before: &Desired, after: &Desired) -> Vec<String> {
    let (b, a) = (before.to_value(), after.to_value());
    let empty = serde_json::Map::new();
    let bm = b.as_object().unwrap_or(&empty);
    let am = a.as_object().unwrap_or(&empty);
    let mut keys: Vec<&String> = bm.keys().chain(am.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| bm.get(*k) != am.get(*k))
        .cloned()
        .collect()
}

/// Limits a plan to the targeted resources, what they need, and whatever a destructive change
/// among them would pull out from under (dependents of replaced or deleted objects).
fn restrict(plan: &mut Plan, state: &State, targets: &[String]) -> Result<(), PlanError> {
    use rustc_hash::FxHashMap as HashMap;
    let n = plan.changes.len();
    let index: HashMap<&Addr, usize> = plan
        .changes
        .iter()
        .enumerate()
        .map(|(i, c)| (&c.addr, i))
        .collect();
    // Edges both ways over desired and recorded dependencies.
    let mut needs: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut needed_by: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, c) in plan.changes.iter().enumerate() {
        for d in c.deps.iter().chain(&c.prior_deps) {
            if let Some(&j) = index.get(d) {
                needs[i].push(j);
                needed_by[j].push(i);
            }
        }
    }
    let mut selected = vec![false; n];
    let mut queue = Vec::new();
    for t in targets {
        let mut any = false;
        for (i, c) in plan.changes.iter().enumerate() {
            if c.addr.matches(t) {
                any = true;
                if !selected[i] {
                    selected[i] = true;
                    queue.push(i);
                }
            }
        }
        if !any {
            return Err(PlanError::UnknownTarget(t.clone()));
        }
    }
    while let Some(i) = queue.pop() {
        let destructive = matches!(plan.changes[i].action, Action::Replace | Action::Delete);
        let mut visit = |j: usize, queue: &mut Vec<usize>| {
            if !selected[j] {
                selected[j] = true;
                queue.push(j);
            }
        };
        if plan.changes[i].action != Action::Delete {
            for &j in &needs[i] {
                visit(j, &mut queue);
            }
        }
        if destructive {
            for &j in &needed_by[i] {
                visit(j, &mut queue);
            }
        }
    }
    let mut keep = selected.into_iter();
    plan.changes.retain(|_| keep.next().unwrap_or(false));
    // Only the sessions in the plan move; every other host keeps its recorded parent.
    let mut placement = state.placement.clone();
    for c in &plan.changes {
        if c.addr.kind != crate::resource::Kind::Session {
            continue;
        }
        let hosts = placement.entry(c.addr.image.to_string()).or_default();
        match &c.after {
            Some(Desired::Session(s)) if c.action != Action::Delete => {
                hosts.insert(c.addr.host.to_string(), s.parent.clone());
            }
            _ => {
                hosts.remove(&*c.addr.host);
            }
        }
    }
    placement.retain(|_, hosts| !hosts.is_empty());
    plan.placement = placement;
    Ok(())
}

#[cfg(test)]
mod tests;
