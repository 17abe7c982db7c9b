//! The plan for people, in the conventions Terraform users read without thinking:
//! `+` create, `~` update in place, `-` destroy, `-/+` replace,
//! `~ attr = old -> new # forces replacement`, and the
//! `Plan: X to add, Y to change, Z to replace, W to destroy.` line. A change that destroys
//! the writes of a clone staying in the spec says so, and the summary counts them. Colour only when asked (on terminals).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;
use similar::{capture_diff_slices, Algorithm, DiffOp};

use super::{Action, Change, Mode, Plan, Reason};
use crate::paint::Paint;
use crate::resource::Kind;

#[derive(Clone, Copy, Debug, Default)]
pub struct RenderOptions {
    pub color: bool,
    /// Past this many changes, list a summary per kind and host instead of every resource.
    pub max_listed: Option<usize>,
}

/// Renders `plan` for a terminal or a log.
pub fn render(plan: &Plan, opts: RenderOptions) -> String {
    let p = Paint { on: opts.color };
    let mut out = String::new();
    let mut listed: Vec<&Change> = plan
        .changes
        .iter()
        .filter(|c| c.action != Action::NoOp)
        .collect();
    if listed.is_empty() {
        out.push_str(&p.bold("No changes."));
        out.push_str(if plan.mode == Mode::Destroy {
            " No objects need to be destroyed.\n"
        } else {
            " Your cluster matches the spec.\n"
        });
        return out;
    }
    // Grouped the way people read a cluster: per image and host, the host's own resources,
    // then each clone's.
    listed.sort_by(|a, b| {
        let key = |c: &Change| {
            (
                c.addr.image.clone(),
                c.addr.host.clone(),
                c.addr.n,
                c.addr.kind,
            )
        };
        key(a).cmp(&key(b))
    });
    out.push_str("vmthunder used the selected spec and state to make the following plan. Resource actions are indicated with:\n");
    let mut legend = Vec::new();
    let has = |a: Action| listed.iter().any(|c| c.action == a);
    if has(Action::Create) {
        legend.push(format!("  {} create", p.green("+")));
    }
    if has(Action::Update) {
        legend.push(format!("  {} update in-place", p.yellow("~")));
    }
    if has(Action::Delete) {
        legend.push(format!("  {} destroy", p.red("-")));
    }
    if has(Action::Replace) {
        legend.push(format!(
            "{} destroy and then create replacement",
            p.yellow("-/+")
        ));
    }
    for l in legend {
        out.push_str(&l);
        out.push('\n');
    }
    out.push_str("\nvmthunder will perform the following actions:\n");

    match opts.max_listed {
        Some(max) if listed.len() > max => render_grouped(&mut out, &listed, &p),
        _ => {
            for c in &listed {
                out.push('\n');
                render_change(&mut out, c, &p);
            }
        }
    }
    let s = plan.summary();
    let lost = match s.writes_destroyed {
        0 => String::new(),
        1 => format!(" {}", p.red("1 clone loses its writes.")),
        n => format!(" {}", p.red(&format!("{n} clones lose their writes."))),
    };
    let _ = writeln!(
        out,
        "\n{} {} to add, {} to change, {} to replace, {} to destroy.{lost}",
        p.bold("Plan:"),
        s.add,
        s.change,
        s.replace,
        s.destroy
    );
    out
}

fn render_change(out: &mut String, c: &Change, p: &Paint) {
    let (verb, sign) = match c.action {
        Action::Create => ("will be created".to_string(), p.green("  +")),
        Action::Update => ("will be updated in-place".to_string(), p.yellow("  ~")),
        Action::Delete => ("will be destroyed".to_string(), p.red("  -")),
        Action::Replace => ("must be replaced".to_string(), p.yellow("-/+")),
        Action::NoOp => unreachable!("no-ops are not listed"),
    };
    let _ = writeln!(out, "  {} {verb}", p.bold(&format!("# {}", c.addr)));
    if let Some(clone) = &c.destroys_writes_of {
        let _ = writeln!(
            out,
            "  {}",
            p.red(&format!("# destroys the writes of clone {clone}"))
        );
    }
    match &c.reason {
        Some(Reason::Tainted) => {
            let _ = writeln!(out, "  # (it is tainted: an earlier create did not finish)");
        }
        Some(Reason::Vanished) => {
            let _ = writeln!(out, "  # (it vanished outside vmthunder)");
        }
        Some(Reason::ContentChanged) => {
            let _ = writeln!(
                out,
                "  # (its file was changed outside vmthunder: it is imported again)"
            );
        }
        Some(Reason::ByRequest) => {
            let _ = writeln!(out, "  # (replacement requested with --replace)");
        }
        Some(Reason::DependencyReplaced(dep)) => {
            let _ = writeln!(
                out,
                "  # (because it is built on {dep}, which is replaced or moved)"
            );
        }
        Some(Reason::NotInSpec) => {
            let _ = writeln!(out, "  # (because {} is not in the spec)", c.addr);
        }
        Some(Reason::DependencyRebuilt(dep)) => {
            let _ = writeln!(
                out,
                "  # (it follows {dep} in place, which is replaced: the clones above keep running)"
            );
        }
        Some(Reason::Repair { parent, why }) => {
            let to = match &c.after {
                Some(crate::resource::Desired::Session(s)) => s.parent.as_str(),
                _ => "?",
            };
            let _ = writeln!(out, "  # (parent {parent} -> {to}: {parent} {why})");
        }
        Some(Reason::PausedOnIoError) => {
            let _ = writeln!(
                out,
                "  # (its guest is paused on an I/O error of its disk: it is resumed, and the I/O retried, once what is above it is repaired)"
            );
        }
        Some(Reason::Updatable)
        | Some(Reason::AttributesChanged)
        | Some(Reason::Destroy)
        | None => {}
    }
    let _ = writeln!(out, "{sign} {} {{", c.addr);
    let before = c.before.as_ref().map(|d| d.to_value());
    let after = c.after.as_ref().map(|d| d.to_value());
    let lines = |v: &Option<Value>| -> Vec<(String, String)> {
        match v {
            Some(Value::Object(m)) => {
                let mut l: Vec<_> = m.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
                l.sort();
                l
            }
            _ => Vec::new(),
        }
    };
    let (old, new) = (lines(&before), lines(&after));
    let width = old
        .iter()
        .chain(&new)
        .map(|(k, _)| k.len())
        .max()
        .unwrap_or(0);
    let line = |mark: &str, k: &str, v: &str| format!("      {mark} {k:<width$} = {v}\n");
    match c.action {
        Action::Create => {
            for (k, v) in &new {
                out.push_str(&line(&p.green("+"), k, v));
            }
        }
        Action::Delete => {
            for (k, v) in &old {
                out.push_str(&line(&p.red("-"), k, v));
            }
        }
        _ => {
            let mut hidden = 0;
            for op in capture_diff_slices(Algorithm::Myers, &old, &new) {
                match op {
                    DiffOp::Equal { len, .. } => hidden += len,
                    DiffOp::Delete {
                        old_index, old_len, ..
                    } => {
                        for (k, v) in &old[old_index..old_index + old_len] {
                            out.push_str(&line(&p.red("-"), k, v));
                        }
                    }
                    DiffOp::Insert {
                        new_index, new_len, ..
                    } => {
                        for (k, v) in &new[new_index..new_index + new_len] {
                            out.push_str(&line(&p.green("+"), k, v));
                        }
                    }
                    DiffOp::Replace {
                        old_index,
                        old_len,
                        new_index,
                        new_len,
                    } => {
                        let olds = &old[old_index..old_index + old_len];
                        let news = &new[new_index..new_index + new_len];
                        for (k, v) in olds {
                            match news.iter().find(|(nk, _)| nk == k) {
                                Some((_, nv)) => {
                                    let forces = if c.replace_paths.contains(k) {
                                        format!(" {}", p.red("# forces replacement"))
                                    } else {
                                        String::new()
                                    };
                                    out.push_str(&format!(
                                        "      {} {k:<width$} = {v} -> {nv}{forces}\n",
                                        p.yellow("~"),
                                    ))
                                }
                                None => out.push_str(&line(&p.red("-"), k, v)),
                            }
                        }
                        for (k, v) in news {
                            if !olds.iter().any(|(ok, _)| ok == k) {
                                out.push_str(&line(&p.green("+"), k, v));
                            }
                        }
                    }
                }
            }
            if hidden > 0 {
                let _ = writeln!(
                    out,
                    "        # ({hidden} unchanged attribute{} hidden)",
                    if hidden == 1 { "" } else { "s" }
                );
            }
        }
    }
    out.push_str("    }\n");
}

/// For very large plans: counts per action and kind, then per host.
fn render_grouped(out: &mut String, listed: &[&Change], p: &Paint) {
    let mut by_kind: BTreeMap<(Action, Kind), usize> = BTreeMap::new();
    let mut hosts: BTreeMap<&str, [usize; 4]> = BTreeMap::new();
    for c in listed {
        *by_kind.entry((c.action, c.addr.kind)).or_default() += 1;
        let slot = match c.action {
            Action::Create => 0,
            Action::Update => 1,
            Action::Replace => 2,
            _ => 3,
        };
        hosts.entry(&c.addr.host).or_default()[slot] += 1;
    }
    let _ = writeln!(
        out,
        "\n  ({} changes; listing counts. Use --json or `vmthunder show PLANFILE --full` for every resource.)\n",
        listed.len()
    );
    for ((action, kind), count) in &by_kind {
        let sign = match action {
            Action::Create => p.green("  +"),
            Action::Update => p.yellow("  ~"),
            Action::Replace => p.yellow("-/+"),
            _ => p.red("  -"),
        };
        let _ = writeln!(out, "{sign} {count:>9} {kind}");
    }
    let _ = writeln!(out, "\n  on {} hosts", hosts.len());
}
