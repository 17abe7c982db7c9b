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
//! | `replace` | recorded          | desired            |
//! | `delete`  | recorded          | none               |

mod ops;
mod render;
mod verify;
mod wire;

use rustc_hash::FxHashSet as HashSet;

use crate::graph::Graph;
use crate::resource::{Addr, Desired};
use crate::state::{Placement, State, Status};

pub use ops::{Op, OpGraph, OpKind};
pub use render::{render, RenderOptions};
pub use verify::Rejected;
pub use wire::{schema_bytes, PlanFileError, PLAN_FORMAT_VERSION};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    NoOp,
    Create,
    Replace,
    Delete,
}

impl Action {
    /// Terraform's `actions` array.
    pub fn terraform_actions(self) -> &'static [&'static str] {
        match self {
            Action::NoOp => &["no-op"],
            Action::Create => &["create"],
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
}

impl Reason {
    pub fn code(&self) -> &'static str {
        match self {
            Reason::Tainted => "replace_because_tainted",
            Reason::Vanished => "replace_because_vanished",
            Reason::AttributesChanged => "replace_because_cannot_update",
            Reason::ByRequest => "replace_by_request",
            Reason::DependencyReplaced(_) => "replace_because_dependency_replaced",
            Reason::NotInSpec => "delete_because_no_resource_config",
            Reason::Destroy => "delete_because_destroy",
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
    pub replace: usize,
    pub destroy: usize,
    pub no_op: usize,
}

#[derive(Clone, Debug, Default)]
pub struct Options {
    pub mode: Option<Mode>,
    /// Address patterns (`domain.node07`, `session.node07.base`) that limit the plan.
    pub targets: Vec<String>,
    /// Addresses to replace even if unchanged.
    pub replace: Vec<Addr>,
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
                Action::Replace => s.replace += 1,
                Action::Delete => s.destroy += 1,
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
                Action::Create | Action::Replace => {
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
        } = graph;
        placement = desired_placement;
        let mut actions: Vec<Action> = Vec::with_capacity(resources.len());
        let addrs: Vec<Addr> = resources.iter().map(|r| r.addr.clone()).collect();
        // Resources arrive in topological order, so every dependency's action is known.
        for r in resources {
            let recorded = state.get(&r.addr);
            let deps: Vec<Addr> = r.deps.iter().map(|&d| addrs[d as usize].clone()).collect();
            let rebuilt_dep = || {
                r.deps
                    .iter()
                    .find(|&&d| matches!(actions[d as usize], Action::Create | Action::Replace))
                    .map(|&d| addrs[d as usize].clone())
            };
            let (action, reason, replace_paths) = match recorded {
                None => (Action::Create, None, Vec::new()),
                Some(rec) if rec.status == Status::Tainted => {
                    (Action::Replace, Some(Reason::Tainted), Vec::new())
                }
                Some(rec) if rec.status == Status::Missing => {
                    (Action::Replace, Some(Reason::Vanished), Vec::new())
                }
                Some(rec) if rec.desired != r.desired => (
                    Action::Replace,
                    Some(Reason::AttributesChanged),
                    changed_paths(&rec.desired, &r.desired),
                ),
                Some(_) if replace.contains(&r.addr) => {
                    (Action::Replace, Some(Reason::ByRequest), Vec::new())
                }
                // Built on other objects than it now should be: it cannot be moved in place.
                Some(rec) if rec.deps != deps => {
                    let moved = rec.deps.iter().find(|d| !deps.contains(d));
                    let dep = moved.or_else(|| deps.iter().find(|d| !rec.deps.contains(d)));
                    (
                        Action::Replace,
                        Some(Reason::DependencyReplaced(
                            dep.cloned().unwrap_or_else(|| r.addr.clone()),
                        )),
                        Vec::new(),
                    )
                }
                Some(_) => match rebuilt_dep() {
                    Some(dep) => (
                        Action::Replace,
                        Some(Reason::DependencyReplaced(dep)),
                        Vec::new(),
                    ),
                    None => (Action::NoOp, None, Vec::new()),
                },
            };
            actions.push(action);
            let (before, prior_deps) = match (action, recorded) {
                (Action::Replace, Some(rec)) => (Some(rec.desired.clone()), rec.deps.clone()),
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
            });
        }
        for r in &state.resources {
            if !desired.contains_key(&r.addr) {
                changes.push(delete(r, Reason::NotInSpec));
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
