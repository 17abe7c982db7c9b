//! The plan's versioned JSON form: what `plan --json` prints and `plan --out` saves.
//!
//! Field names follow Terraform's JSON plan where the meaning is the same (`format_version`,
//! `resource_changes`, `actions`, `before`, `after`, `replace_paths`), so existing tooling and
//! habits carry over. Reading checks everything apply will rely on.
//!
//! A plan file is sealed: `plan_digest` is the SHA-256 of the plan's canonical form, the
//! compact JSON of every other field as this module writes them (struct field order, maps
//! sorted, fields derived from others included). Reading parses the document, checks that
//! every derived field (`kind`, `host`, `image`, `n`, `summary`, a no-op's `before`) agrees
//! with what it is derived from, and recomputes the digest from what it parsed, so no byte of
//! meaning in the file escapes it, while formatting and key order do not matter. A plan
//! whose digest does not match, or that has none, is refused. The digest proves the file is
//! what vmthunder wrote; whether a plan is one vmthunder could have made for the current state
//! is checked by `verify` (someone can recompute a digest).

use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Action, Change, Mode, Plan, Prior, Reason, Summary};
use crate::resource::{Addr, Desired, Kind};
use crate::state::Placement;

/// Bumped whenever a field is added or changes meaning. 2.0: `plan_digest` covers the whole
/// plan (1.0 plans had only `spec_digest`, over the embedded spec) and `targets` is recorded.
pub const PLAN_FORMAT_VERSION: &str = "2.1";

#[derive(Debug, thiserror::Error)]
pub enum PlanFileError {
    #[error("failed to read plan `{path}`")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to write plan `{path}`")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` is not a vmthunder plan: {message}")]
    Invalid { path: String, message: String },
    #[error("plan `{path}` has format version {found}; this vmthunder reads {PLAN_FORMAT_VERSION}: make a new plan")]
    Version { path: String, found: String },
    #[error("plan `{path}` has no plan_digest, so it cannot be checked; nothing was changed; make a new plan")]
    Unsealed { path: String },
    #[error("plan `{path}` was altered after it was saved ({what}); nothing was changed; make a new plan")]
    Altered { path: String, what: String },
}

/// A plan as `plan --json` prints it and `plan --out` saves it.
#[derive(Serialize, JsonSchema)]
#[schemars(title = "vmthunder plan")]
struct PlanOut<'a> {
    format_version: &'static str,
    vmthunder_version: &'a str,
    /// SHA-256 of the plan's canonical form (every other field); apply refuses a plan whose
    /// content does not match it. (Absent only from the canonical form itself.)
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", required)]
    plan_digest: Option<&'a str>,
    cluster: &'a str,
    mode: &'static str,
    /// The `--target` patterns the plan was limited to.
    #[serde(default)]
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    targets: &'a [String],
    prior_state: PriorWire,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    spec_digest: Option<&'a str>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    configuration: Option<&'a serde_json::Value>,
    summary: SummaryWire,
    placement: &'a Placement,
    resource_changes: Vec<ChangeOut<'a>>,
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct PriorWire {
    lineage: Option<String>,
    serial: u64,
}

#[derive(Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
struct SummaryWire {
    add: usize,
    /// Updates in place.
    change: usize,
    replace: usize,
    destroy: usize,
    no_op: usize,
    /// Clones whose writes the plan destroys while they stay in the spec.
    writes_destroyed: usize,
}

impl From<Summary> for SummaryWire {
    fn from(s: Summary) -> SummaryWire {
        SummaryWire {
            add: s.add,
            change: s.change,
            replace: s.replace,
            destroy: s.destroy,
            no_op: s.no_op,
            writes_destroyed: s.writes_destroyed,
        }
    }
}

/// Why a host moves to another parent: the parent it leaves, and what is wrong with it.
#[derive(Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
struct RepairWire {
    parent: String,
    why: String,
}

#[derive(Serialize, JsonSchema)]
struct ChangeOut<'a> {
    address: &'a Addr,
    kind: Kind,
    host: &'a str,
    image: &'a str,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<u32>,
    actions: &'static [&'static str],
    before: Option<&'a Desired>,
    after: Option<&'a Desired>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    reason_address: Option<&'a Addr>,
    /// With `update_because_parent_unhealthy`: the parent left and why.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    repair: Option<RepairWire>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    replace_paths: Vec<[&'a str; 1]>,
    /// The clone whose writes this change destroys although it stays in the spec (a
    /// snapshot or copy-on-write lv deleted or replaced).
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    destroys_writes_of: Option<&'a str>,
    depends_on: &'a [Addr],
    #[serde(default)]
    #[serde(skip_serializing_if = "<[Addr]>::is_empty")]
    prior_depends_on: &'a [Addr],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanIn {
    #[allow(dead_code)]
    format_version: String,
    vmthunder_version: String,
    #[serde(default)]
    plan_digest: Option<String>,
    cluster: String,
    mode: String,
    #[serde(default)]
    targets: Vec<String>,
    prior_state: PriorWire,
    #[serde(default)]
    spec_digest: Option<String>,
    #[serde(default)]
    configuration: Option<serde_json::Value>,
    summary: SummaryWire,
    placement: Placement,
    resource_changes: Vec<ChangeIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeIn {
    address: Addr,
    kind: Kind,
    host: String,
    image: String,
    #[serde(default)]
    n: Option<u32>,
    actions: Vec<String>,
    before: Option<Box<RawValue>>,
    after: Option<Box<RawValue>>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    reason_address: Option<Addr>,
    #[serde(default)]
    repair: Option<RepairWire>,
    #[serde(default)]
    replace_paths: Vec<Vec<String>>,
    #[serde(default)]
    destroys_writes_of: Option<String>,
    #[serde(default)]
    depends_on: Vec<Addr>,
    #[serde(default)]
    prior_depends_on: Vec<Addr>,
}

/// The JSON Schema of plan documents (schemas/plan.schema.json).
pub fn schema_bytes() -> Vec<u8> {
    let mut s = serde_json::to_vec_pretty(&schemars::schema_for!(PlanOut<'static>))
        .expect("schema serializes");
    s.push(b'\n');
    s
}

impl Plan {
    /// The wire form. `vmthunder_version` is this build's when writing, the file's when
    /// checking a file's digest (so a plan saved by another build of the same format reads).
    fn wire<'a>(&'a self, vmthunder_version: &'a str, plan_digest: Option<&'a str>) -> PlanOut<'a> {
        let s: Summary = self.summary();
        PlanOut {
            format_version: PLAN_FORMAT_VERSION,
            vmthunder_version,
            plan_digest,
            cluster: &self.cluster,
            mode: match self.mode {
                Mode::Normal => "normal",
                Mode::Destroy => "destroy",
            },
            targets: &self.targets,
            prior_state: PriorWire {
                lineage: self.prior.lineage.clone(),
                serial: self.prior.serial,
            },
            spec_digest: self.spec_digest.as_deref(),
            configuration: self.spec.as_ref(),
            summary: s.into(),
            placement: &self.placement,
            resource_changes: self
                .changes
                .iter()
                .map(|c| ChangeOut {
                    address: &c.addr,
                    kind: c.addr.kind,
                    host: &c.addr.host,
                    image: &c.addr.image,
                    n: c.addr.n,
                    actions: c.action.terraform_actions(),
                    before: match c.action {
                        Action::NoOp => c.after.as_ref(),
                        _ => c.before.as_ref(),
                    },
                    after: c.after.as_ref(),
                    reason: c.reason.as_ref().map(Reason::code),
                    reason_address: match &c.reason {
                        Some(Reason::DependencyReplaced(a) | Reason::DependencyRebuilt(a)) => {
                            Some(a)
                        }
                        _ => None,
                    },
                    repair: match &c.reason {
                        Some(Reason::Repair { parent, why }) => Some(RepairWire {
                            parent: parent.clone(),
                            why: why.clone(),
                        }),
                        _ => None,
                    },
                    replace_paths: c.replace_paths.iter().map(|p| [p.as_str()]).collect(),
                    destroys_writes_of: c.destroys_writes_of.as_deref(),
                    depends_on: &c.deps,
                    prior_depends_on: &c.prior_deps,
                })
                .collect(),
        }
    }

    /// SHA-256 of the canonical form: the compact wire form without `plan_digest`, streamed
    /// into the hash (no copy of the document is built).
    fn content_digest(&self, vmthunder_version: &str) -> String {
        use sha2::{Digest, Sha256};
        use std::io::Write as _;
        let mut h = Sha256::new();
        // serde_json writes in small pieces: hash them in blocks.
        let mut w = std::io::BufWriter::with_capacity(1 << 16, &mut h);
        serde_json::to_writer(&mut w, &self.wire(vmthunder_version, None))
            .and_then(|()| w.flush().map_err(serde_json::Error::io))
            .expect("plan serializes");
        drop(w);
        format!("sha256:{:x}", h.finalize())
    }

    /// The JSON document, pretty-printed with a trailing newline, sealed with its digest.
    pub fn to_json(&self) -> Vec<u8> {
        let version = env!("CARGO_PKG_VERSION");
        let digest = self.content_digest(version);
        let mut bytes =
            serde_json::to_vec_pretty(&self.wire(version, Some(&digest))).expect("plan serializes");
        bytes.push(b'\n');
        bytes
    }

    /// Writes the plan file atomically (same guarantees as the state file).
    pub fn save(&self, path: &Path) -> Result<(), PlanFileError> {
        crate::state::write_atomic(path, &self.to_json()).map_err(|source| PlanFileError::Write {
            path: path.display().to_string(),
            source,
        })
    }

    /// Reads a plan file and checks its seal: refused unless it is exactly what vmthunder
    /// wrote. Whether it fits the current state is [`Plan::verify_saved`]'s question.
    pub fn load(path: &Path) -> Result<Plan, PlanFileError> {
        let shown = path.display().to_string();
        let bytes = crate::text::read_regular(path).map_err(|source| PlanFileError::Read {
            path: shown.clone(),
            source,
        })?;
        Plan::from_json(&bytes).map_err(|e| match e {
            FromJson::Version(found) => PlanFileError::Version { path: shown, found },
            FromJson::Invalid(message) => PlanFileError::Invalid {
                path: shown,
                message,
            },
            FromJson::Unsealed => PlanFileError::Unsealed { path: shown },
            FromJson::Altered(what) => PlanFileError::Altered { path: shown, what },
        })
    }

    fn from_json(bytes: &[u8]) -> Result<Plan, FromJson> {
        #[derive(Deserialize)]
        struct Version {
            format_version: String,
        }
        let v: Version =
            serde_json::from_slice(bytes).map_err(|e| FromJson::Invalid(e.to_string()))?;
        if v.format_version != PLAN_FORMAT_VERSION {
            return Err(FromJson::Version(v.format_version));
        }
        let p: PlanIn =
            serde_json::from_slice(bytes).map_err(|e| FromJson::Invalid(e.to_string()))?;
        let mode = match p.mode.as_str() {
            "normal" => Mode::Normal,
            "destroy" => Mode::Destroy,
            other => return Err(FromJson::Invalid(format!("unknown mode {other:?}"))),
        };
        // The first derived field that disagrees with what it is derived from: the canonical
        // form re-derives it, so the digest alone would not see the edit.
        let mut inconsistent: Option<String> = None;
        let mut changes = Vec::with_capacity(p.resource_changes.len());
        for c in p.resource_changes {
            let (change, odd) = change_from_wire(c).map_err(FromJson::Invalid)?;
            if inconsistent.is_none() {
                inconsistent = odd;
            }
            changes.push(change);
        }
        let plan = Plan {
            cluster: p.cluster,
            mode,
            targets: p.targets,
            prior: Prior {
                lineage: p.prior_state.lineage,
                serial: p.prior_state.serial,
            },
            spec_digest: p.spec_digest,
            spec: p.configuration,
            placement: p.placement,
            changes,
        };
        let Some(digest) = p.plan_digest else {
            return Err(FromJson::Unsealed);
        };
        if plan.content_digest(&p.vmthunder_version) != digest {
            return Err(FromJson::Altered(
                "its content does not match its plan_digest".into(),
            ));
        }
        let counted: SummaryWire = plan.summary().into();
        if p.summary != counted {
            inconsistent.get_or_insert_with(|| "its summary does not count its changes".into());
        }
        if let Some(what) = inconsistent {
            return Err(FromJson::Altered(what));
        }
        Ok(plan)
    }
}

enum FromJson {
    Version(String),
    Invalid(String),
    Unsealed,
    Altered(String),
}

/// A change read from the wire, and the first of its derived fields that disagrees with what
/// it is derived from (vmthunder never writes one: it was edited).
fn change_from_wire(c: ChangeIn) -> Result<(Change, Option<String>), String> {
    let at = &c.address;
    let actions: Vec<&str> = c.actions.iter().map(String::as_str).collect();
    let action = match actions.as_slice() {
        ["no-op"] => Action::NoOp,
        ["create"] => Action::Create,
        ["update"] => Action::Update,
        ["delete", "create"] => Action::Replace,
        ["delete"] => Action::Delete,
        other => return Err(format!("{at}: unsupported actions {other:?}")),
    };
    let attrs = |raw: Option<Box<RawValue>>, which: &str| -> Result<Option<Desired>, String> {
        match raw {
            Some(r) if r.get() != "null" => Desired::parse(at.kind, r.get())
                .map(Some)
                .map_err(|e| format!("{at}: {which}: {e}")),
            _ => Ok(None),
        }
    };
    let before = attrs(c.before, "before")?;
    let after = attrs(c.after, "after")?;
    let needs_after = matches!(
        action,
        Action::NoOp | Action::Create | Action::Update | Action::Replace
    );
    if needs_after != after.is_some() {
        return Err(format!("{at}: \"after\" does not fit actions {actions:?}"));
    }
    let before_fits = match action {
        // A no-op writes its after as its before: compared below.
        Action::NoOp => true,
        Action::Create => before.is_none(),
        Action::Update | Action::Replace | Action::Delete => before.is_some(),
    };
    if !before_fits {
        return Err(format!("{at}: \"before\" does not fit actions {actions:?}"));
    }
    let dependency_reason = matches!(
        c.reason.as_deref(),
        Some("replace_because_dependency_replaced" | "update_because_dependency_replaced")
    );
    let address = || {
        c.reason_address
            .clone()
            .ok_or_else(|| format!("{at}: reason_address missing"))
    };
    let reason = match c.reason.as_deref() {
        None => None,
        Some("replace_because_tainted") => Some(Reason::Tainted),
        Some("replace_because_vanished") => Some(Reason::Vanished),
        Some("replace_because_content_changed") => Some(Reason::ContentChanged),
        Some("replace_because_cannot_update") => Some(Reason::AttributesChanged),
        Some("replace_by_request") => Some(Reason::ByRequest),
        Some("replace_because_dependency_replaced") => Some(Reason::DependencyReplaced(address()?)),
        Some("update_in_place") => Some(Reason::Updatable),
        Some("update_because_paused_on_io_error") => Some(Reason::PausedOnIoError),
        Some("update_because_dependency_replaced") => Some(Reason::DependencyRebuilt(address()?)),
        Some("update_because_parent_unhealthy") => {
            let r = c
                .repair
                .as_ref()
                .ok_or_else(|| format!("{at}: repair missing"))?;
            Some(Reason::Repair {
                parent: r.parent.clone(),
                why: r.why.clone(),
            })
        }
        Some("delete_because_no_resource_config") => Some(Reason::NotInSpec),
        Some("delete_because_destroy") => Some(Reason::Destroy),
        Some(other) => return Err(format!("{at}: unknown reason {other:?}")),
    };
    let odd = if c.kind != at.kind {
        Some(format!("{at}: kind {} does not match its address", c.kind))
    } else if c.host != *at.host {
        Some(format!(
            "{at}: host {:?} does not match its address",
            c.host
        ))
    } else if c.image != *at.image {
        Some(format!(
            "{at}: image {:?} does not match its address",
            c.image
        ))
    } else if c.n != at.n {
        Some(format!("{at}: n does not match its address"))
    } else if action == Action::NoOp && before != after {
        Some(format!("{at}: a no-op's before differs from its after"))
    } else if c.reason_address.is_some() && !dependency_reason {
        Some(format!("{at}: reason_address without a dependency reason"))
    } else if c.repair.is_some() && c.reason.as_deref() != Some("update_because_parent_unhealthy") {
        Some(format!("{at}: repair without a repair reason"))
    } else if c.replace_paths.iter().any(|p| p.len() != 1) {
        Some(format!(
            "{at}: replace_paths is not a list of one-name paths"
        ))
    } else {
        None
    };
    let change = Change {
        before: if action == Action::NoOp { None } else { before },
        after,
        action,
        deps: c.depends_on,
        prior_deps: c.prior_depends_on,
        reason,
        replace_paths: c.replace_paths.into_iter().flatten().collect(),
        destroys_writes_of: c.destroys_writes_of,
        addr: c.address,
    };
    Ok((change, odd))
}
