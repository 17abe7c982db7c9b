//! `apply --json` / `destroy --json`: one JSON event per line, versioned, described by
//! `schemas/events.schema.json` (generated from these types: `vmthunder schema events`).
//!
//! The order of a run: `resource_drift` per object the refresh found changed, `planned_change` per change, `change_summary` (operation `plan`), then
//! `apply_start` / `apply_progress` / `apply_complete` / `apply_errored` / `apply_skipped` as operations run,
//! `interrupt` if one was received, and a final `change_summary` (operation `apply` or
//! `destroy`) with what was done. Errors that stop the command early are `diagnostic`s.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::apply::{Outcome, Stop};
use crate::plan::{Action, OpKind, Plan};
use crate::refresh::{Drift, Finding, Refreshed};
use crate::resource::{Addr, Kind};

/// The event format this build writes.
pub const EVENTS_VERSION: &str = "1.0";

/// One line of `--json` output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "vmthunder apply/destroy event")]
pub struct Event {
    /// The event format version, "1.0".
    pub format_version: String,
    /// When it happened (RFC 3339, UTC).
    pub timestamp: String,
    /// The same news as one human-readable line.
    pub message: String,
    #[serde(flatten)]
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Body {
    /// A change the plan makes (sent before anything runs).
    PlannedChange { change: Change },
    /// Counts: planned (operation "plan") or done (operation "apply" / "destroy").
    ChangeSummary { changes: Summary },
    /// An operation started.
    ApplyStart { hook: Hook },
    /// A running operation's progress (an import's bytes), at most once a second each.
    ApplyProgress {
        hook: Hook,
        bytes_done: u64,
        bytes_total: u64,
    },
    /// An operation finished and is recorded in state.
    ApplyComplete { hook: Hook, elapsed_seconds: f64 },
    /// An operation failed; `skipped` operations that wait on it will not run.
    ApplyErrored {
        hook: Hook,
        elapsed_seconds: f64,
        error: ErrorDetail,
        skipped: usize,
    },
    /// An operation will not run because `cause` failed.
    ApplySkipped { hook: Hook, cause: String },
    /// Ctrl-C (or SIGTERM): the first stops new operations, the second (`hard`) stops waiting
    /// for the `running` ones.
    Interrupt { hard: bool, running: usize },
    /// An error that stops the command.
    Diagnostic { severity: Severity, summary: String },
    /// A recorded object found changed outside vmthunder by the refresh before planning.
    ResourceDrift { drift: DriftInfo },
}

/// What a refresh found about one recorded object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DriftInfo {
    pub address: String,
    /// "gone" (deleted outside vmthunder: recreated with what is built on it), "changed"
    /// (observed attributes differ: recorded) or "unknown" (its host did not answer: nothing
    /// is planned for it).
    pub finding: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<AttributeChange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AttributeChange {
    pub attribute: String,
    pub before: serde_json::Value,
    pub after: serde_json::Value,
}

impl DriftInfo {
    pub fn of(d: &Drift) -> DriftInfo {
        let (finding, changes, error) = match &d.finding {
            Finding::Gone => ("gone", Vec::new(), None),
            Finding::Changed(c) => (
                "changed",
                c.iter()
                    .map(|(k, b, a)| AttributeChange {
                        attribute: k.clone(),
                        before: b.clone(),
                        after: a.clone(),
                    })
                    .collect(),
                None,
            ),
            Finding::Unknown(e) => ("unknown", Vec::new(), Some(e.clone())),
        };
        DriftInfo {
            address: d.addr.to_string(),
            finding: finding.into(),
            changes,
            error,
        }
    }
}

pub fn drift(r: &Refreshed) -> impl Iterator<Item = Event> + '_ {
    r.drift.iter().map(|d| {
        let info = DriftInfo::of(d);
        Event::new(
            format!("{}: {} outside vmthunder", info.address, info.finding),
            Body::ResourceDrift { drift: info },
        )
    })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Change {
    pub address: String,
    pub kind: Kind,
    pub host: String,
    /// "create", "replace" or "delete".
    pub action: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Hook {
    pub address: String,
    pub kind: Kind,
    pub host: String,
    /// "create" or "delete" (a replacement is a delete, then a create).
    pub action: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorDetail {
    pub message: String,
    /// The command that failed, shell-quoted, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct Summary {
    /// "plan", "apply" or "destroy".
    pub operation: String,
    pub add: usize,
    /// Updates in place.
    #[serde(default)]
    pub change: usize,
    pub replace: usize,
    pub destroy: usize,
    /// Operations that failed (apply/destroy only).
    #[serde(default)]
    pub failed: usize,
    /// Operations skipped because something they wait on failed.
    #[serde(default)]
    pub skipped: usize,
    /// Operations never started because of an interrupt.
    #[serde(default)]
    pub not_started: usize,
    /// "graceful" or "hard" when the run was interrupted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_seconds: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
}

impl Event {
    pub fn new(message: String, body: Body) -> Event {
        Event {
            format_version: EVENTS_VERSION.to_string(),
            timestamp: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            message,
            body,
        }
    }

    /// The event as one line, newline included.
    pub fn line(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("events serialize");
        v.push(b'\n');
        v
    }
}

pub fn hook(addr: &Addr, kind: OpKind) -> Hook {
    Hook {
        address: addr.to_string(),
        kind: addr.kind,
        host: addr.host.to_string(),
        action: op_name(kind).to_string(),
    }
}

pub fn op_name(kind: OpKind) -> &'static str {
    kind.as_str()
}

pub fn planned(plan: &Plan) -> impl Iterator<Item = Event> + '_ {
    plan.changes
        .iter()
        .filter(|c| c.action != Action::NoOp)
        .map(|c| {
            let action = match c.action {
                Action::Create => "create",
                Action::Update => "update",
                Action::Replace => "replace",
                _ => "delete",
            };
            Event::new(
                format!("{}: Plan to {action}", c.addr),
                Body::PlannedChange {
                    change: Change {
                        address: c.addr.to_string(),
                        kind: c.addr.kind,
                        host: c.addr.host.to_string(),
                        action: action.to_string(),
                    },
                },
            )
        })
}

pub fn plan_summary(plan: &Plan) -> Event {
    let s = plan.summary();
    Event::new(
        format!(
            "Plan: {} to add, {} to change, {} to replace, {} to destroy.",
            s.add, s.change, s.replace, s.destroy
        ),
        Body::ChangeSummary {
            changes: Summary {
                operation: "plan".into(),
                add: s.add,
                change: s.change,
                replace: s.replace,
                destroy: s.destroy,
                ..Summary::default()
            },
        },
    )
}

/// Counts of what a run did, as people and machines see them.
pub fn outcome_summary(o: &Outcome, destroying: bool, message: String) -> Event {
    Event::new(
        message,
        Body::ChangeSummary {
            changes: Summary {
                operation: if destroying { "destroy" } else { "apply" }.into(),
                add: o.created - o.replaced,
                change: o.updated,
                replace: o.replaced,
                destroy: o.deleted - o.replaced.min(o.deleted),
                failed: o.failed.len(),
                skipped: o.skipped.len(),
                not_started: o.not_started,
                interrupted: o.interrupted.map(|s| {
                    match s {
                        Stop::Graceful => "graceful",
                        Stop::Hard => "hard",
                    }
                    .to_string()
                }),
                wall_seconds: Some(secs(o.wall)),
            },
        },
    )
}

pub fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// The checked-in events schema's exact bytes.
pub fn schema_bytes() -> Vec<u8> {
    let mut s =
        serde_json::to_vec_pretty(&schemars::schema_for!(Event)).expect("schema serializes");
    s.push(b'\n');
    s
}
