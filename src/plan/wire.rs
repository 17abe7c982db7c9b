//! The plan's versioned JSON form: what `plan --json` prints and `plan --out` saves.
//!
//! Field names follow Terraform's JSON plan where the meaning is the same (`format_version`,
//! `resource_changes`, `actions`, `before`, `after`, `replace_paths`), so existing tooling and
//! habits carry over. Reading checks everything apply will rely on.

use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Action, Change, Mode, Plan, Prior, Reason, Summary};
use crate::resource::{Addr, Desired, Kind};
use crate::state::Placement;

/// Bumped whenever a field is added or changes meaning.
pub const PLAN_FORMAT_VERSION: &str = "1.0";

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
}

/// A plan as `plan --json` prints it and `plan --out` saves it.
#[derive(Serialize, JsonSchema)]
#[schemars(title = "vmthunder plan")]
struct PlanOut<'a> {
    format_version: &'static str,
    vmthunder_version: &'static str,
    cluster: &'a str,
    mode: &'static str,
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

#[derive(Serialize, Deserialize, JsonSchema)]
struct SummaryWire {
    add: usize,
    replace: usize,
    destroy: usize,
    no_op: usize,
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
    #[serde(default)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    replace_paths: Vec<[&'a str; 1]>,
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
    #[allow(dead_code)]
    vmthunder_version: String,
    cluster: String,
    mode: String,
    prior_state: PriorWire,
    #[serde(default)]
    spec_digest: Option<String>,
    #[serde(default)]
    configuration: Option<serde_json::Value>,
    #[allow(dead_code)]
    summary: SummaryWire,
    placement: Placement,
    resource_changes: Vec<ChangeIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeIn {
    address: Addr,
    #[allow(dead_code)]
    kind: Kind,
    #[allow(dead_code)]
    host: String,
    #[allow(dead_code)]
    image: String,
    #[serde(default)]
    #[allow(dead_code)]
    n: Option<u32>,
    actions: Vec<String>,
    before: Option<Box<RawValue>>,
    after: Option<Box<RawValue>>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    reason_address: Option<Addr>,
    #[serde(default)]
    replace_paths: Vec<Vec<String>>,
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
    /// The JSON document, pretty-printed with a trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        let s: Summary = self.summary();
        let out = PlanOut {
            format_version: PLAN_FORMAT_VERSION,
            vmthunder_version: env!("CARGO_PKG_VERSION"),
            cluster: &self.cluster,
            mode: match self.mode {
                Mode::Normal => "normal",
                Mode::Destroy => "destroy",
            },
            prior_state: PriorWire {
                lineage: self.prior.lineage.clone(),
                serial: self.prior.serial,
            },
            spec_digest: self.spec_digest.as_deref(),
            configuration: self.spec.as_ref(),
            summary: SummaryWire {
                add: s.add,
                replace: s.replace,
                destroy: s.destroy,
                no_op: s.no_op,
            },
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
                        Some(Reason::DependencyReplaced(a)) => Some(a),
                        _ => None,
                    },
                    replace_paths: c.replace_paths.iter().map(|p| [p.as_str()]).collect(),
                    depends_on: &c.deps,
                    prior_depends_on: &c.prior_deps,
                })
                .collect(),
        };
        let mut bytes = serde_json::to_vec_pretty(&out).expect("plan serializes");
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

    pub fn load(path: &Path) -> Result<Plan, PlanFileError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| PlanFileError::Read {
            path: shown.clone(),
            source,
        })?;
        Plan::from_json(&bytes).map_err(|e| match e {
            FromJson::Version(found) => PlanFileError::Version { path: shown, found },
            FromJson::Invalid(message) => PlanFileError::Invalid {
                path: shown,
                message,
            },
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
        let changes = p
            .resource_changes
            .into_iter()
            .map(change_from_wire)
            .collect::<Result<Vec<_>, _>>()
            .map_err(FromJson::Invalid)?;
        Ok(Plan {
            cluster: p.cluster,
            mode,
            prior: Prior {
                lineage: p.prior_state.lineage,
                serial: p.prior_state.serial,
            },
            spec_digest: p.spec_digest,
            spec: p.configuration,
            placement: p.placement,
            changes,
        })
    }
}

enum FromJson {
    Version(String),
    Invalid(String),
}

fn change_from_wire(c: ChangeIn) -> Result<Change, String> {
    let at = &c.address;
    let actions: Vec<&str> = c.actions.iter().map(String::as_str).collect();
    let action = match actions.as_slice() {
        ["no-op"] => Action::NoOp,
        ["create"] => Action::Create,
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
    let needs_after = matches!(action, Action::NoOp | Action::Create | Action::Replace);
    if needs_after != after.is_some() {
        return Err(format!("{at}: \"after\" does not fit actions {actions:?}"));
    }
    let reason = match c.reason.as_deref() {
        None => None,
        Some("replace_because_tainted") => Some(Reason::Tainted),
        Some("replace_because_vanished") => Some(Reason::Vanished),
        Some("replace_because_cannot_update") => Some(Reason::AttributesChanged),
        Some("replace_by_request") => Some(Reason::ByRequest),
        Some("replace_because_dependency_replaced") => Some(Reason::DependencyReplaced(
            c.reason_address
                .ok_or_else(|| format!("{at}: reason_address missing"))?,
        )),
        Some("delete_because_no_resource_config") => Some(Reason::NotInSpec),
        Some("delete_because_destroy") => Some(Reason::Destroy),
        Some(other) => return Err(format!("{at}: unknown reason {other:?}")),
    };
    Ok(Change {
        before: if action == Action::NoOp { None } else { before },
        after,
        action,
        deps: c.depends_on,
        prior_deps: c.prior_depends_on,
        reason,
        replace_paths: c.replace_paths.into_iter().flatten().collect(),
        addr: c.address,
    })
}
