//! `apply` and `destroy`: plan (or load a saved plan), check, confirm, execute, report.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use super::{
    emit, fail, load_spec, render_options, state_path, ApplyArgs, DestroyArgs, Failure, RunArgs,
};
use crate::apply::{self, Limits, Outcome, Progress};
use crate::backend;
use crate::graph::Graph;
use crate::plan::{self, Mode, OpGraph, OpKind, Plan};
use crate::resource::Addr;
use crate::spec::Spec;
use crate::state::{Lock, State};

pub(super) fn apply(args: ApplyArgs, color: bool) -> Result<i32, Failure> {
    let replace = args
        .replace
        .iter()
        .map(|a| a.parse::<Addr>().map_err(fail))
        .collect::<Result<Vec<_>, _>>()?;
    match args.plan {
        Some(file) => {
            if !args.target.is_empty() || !replace.is_empty() {
                return Err(fail(
                    "--target and --replace shape a new plan; a saved plan runs as it was made (make a new one with `vmthunder plan --target ... --out FILE`)",
                ));
            }
            let saved = Plan::load(&file)?;
            let spec = saved_spec(&saved, &file)?;
            let path = state_path(args.state.path, &spec.cluster);
            let _lock = Lock::acquire(&path, "apply", args.run.lock_timeout)?;
            let mut state = State::load(&path, &spec.cluster)?;
            saved.check_current(&state)?;
            execute(&spec, saved, &mut state, &path, &args.run, color, true)
        }
        None => {
            let Some(spec_file) = args.spec.file else {
                return Err(fail(
                    "apply needs a spec (-f SPEC) or a saved plan (vmthunder apply PLANFILE)",
                ));
            };
            let spec = load_spec(&spec_file)?;
            let path = state_path(args.state.path, &spec.cluster);
            let _lock = Lock::acquire(&path, "apply", args.run.lock_timeout)?;
            let mut state = State::load(&path, &spec.cluster)?;
            let opts = plan::Options {
                mode: Some(Mode::Normal),
                targets: args.target,
                replace,
            };
            let plan = make_plan(&spec, &state, &opts)?;
            execute(&spec, plan, &mut state, &path, &args.run, color, false)
        }
    }
}

pub(super) fn destroy(args: DestroyArgs, color: bool) -> Result<i32, Failure> {
    let spec = load_spec(&args.spec.file)?;
    let path = state_path(args.state.path, &spec.cluster);
    let _lock = Lock::acquire(&path, "destroy", args.run.lock_timeout)?;
    let mut state = State::load(&path, &spec.cluster)?;
    let opts = plan::Options {
        mode: Some(Mode::Destroy),
        targets: args.target,
        replace: Vec::new(),
    };
    let plan = make_plan(&spec, &state, &opts)?;
    execute(&spec, plan, &mut state, &path, &args.run, color, false)
}

fn make_plan(spec: &Spec, state: &State, opts: &plan::Options) -> Result<Plan, Failure> {
    let graph = Graph::build(spec, state)?;
    let plan = plan::diff(graph, state, opts, Some(spec.digest()))?;
    OpGraph::build(&plan).order(&plan)?;
    Ok(plan)
}

/// The spec a saved plan was made from, checked against its digest.
fn saved_spec(saved: &Plan, file: &Path) -> Result<Spec, Failure> {
    let value = saved.spec.as_ref().ok_or_else(|| {
        fail(format!(
            "plan `{}` does not carry its spec (it was made by an older vmthunder); make a new plan",
            file.display()
        ))
    })?;
    let spec = Spec::from_value(value).map_err(|e| {
        fail(format!(
            "the spec inside plan `{}` is not valid: {e}; make a new plan",
            file.display()
        ))
    })?;
    if saved.spec_digest.as_deref() != Some(spec.digest().as_str()) {
        return Err(fail(format!(
            "plan `{}` was altered after it was saved (its spec does not match its digest); make a new plan",
            file.display()
        )));
    }
    Ok(spec)
}

fn execute(
    spec: &Spec,
    plan: Plan,
    state: &mut State,
    path: &Path,
    run: &RunArgs,
    color: bool,
    saved: bool,
) -> Result<i32, Failure> {
    let destroying = plan.mode == Mode::Destroy;
    let backend = backend::for_spec(spec).map_err(|e| fail(e.to_string()))?;
    if let Err(problems) = backend.preflight(&plan) {
        let mut m = format!(
            "cannot {} ({} problem{}); nothing was changed:",
            if destroying { "destroy" } else { "apply" },
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        );
        for p in problems {
            m.push_str("\n  ");
            m.push_str(&p);
        }
        return Err(fail(m));
    }
    if !plan.has_changes() {
        // Nothing to run, but leftovers of an interrupted run are still swept.
        let _ = backend.finish(state);
        println!(
            "No changes. The hosts match the {}.",
            if destroying {
                "(empty) destroy plan"
            } else {
                "spec"
            }
        );
        return Ok(0);
    }
    if !saved {
        emit(plan::render(&plan, render_options(color, false)).as_bytes())?;
    }
    if !saved && !run.auto_approve && !confirm(destroying)? {
        println!(
            "{} cancelled.",
            if destroying { "Destroy" } else { "Apply" }
        );
        return Ok(1);
    }
    let limits = Limits {
        parallelism: run.parallelism as usize,
        per_host: run.per_host as usize,
    };
    let mut out = std::io::stdout();
    let mut report = |p: Progress<'_>| {
        let line = match p {
            Progress::Started { addr, kind } => format!(
                "{addr}: {}...",
                match kind {
                    OpKind::Create => "Creating",
                    OpKind::Delete => "Destroying",
                }
            ),
            Progress::Finished {
                addr,
                kind,
                elapsed,
            } => format!(
                "{addr}: {} complete after {}",
                match kind {
                    OpKind::Create => "Creation",
                    OpKind::Delete => "Destruction",
                },
                secs(elapsed)
            ),
            Progress::Failed {
                addr,
                kind,
                elapsed,
                error,
                skipped,
            } => {
                let label = if color {
                    "\x1b[1;31mError:\x1b[0m"
                } else {
                    "Error:"
                };
                let mut m = format!(
                    "{label} {} {addr} failed after {}: {error}",
                    match kind {
                        OpKind::Create => "creating",
                        OpKind::Delete => "destroying",
                    },
                    secs(elapsed)
                );
                if skipped > 0 {
                    m.push_str(&format!(
                        "\n  {skipped} operation{} that depend{} on it will not run.",
                        if skipped == 1 { "" } else { "s" },
                        if skipped == 1 { "s" } else { "" }
                    ));
                }
                m
            }
        };
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    let outcome = apply::run(&plan, state, path, backend.as_ref(), limits, &mut report)?;
    if let Err(e) = backend.finish(state) {
        eprintln!("Warning: cleaning up after the run: {e}");
    }
    print_summary(&outcome, destroying, color);
    Ok(if outcome.ok() { 0 } else { 1 })
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn print_summary(o: &Outcome, destroying: bool, color: bool) {
    let verb = if destroying { "Destroy" } else { "Apply" };
    let counts = if destroying {
        format!("{} destroyed", o.deleted)
    } else {
        format!(
            "{} added, {} replaced, {} destroyed",
            o.created - o.replaced,
            o.replaced,
            o.deleted - o.replaced.min(o.deleted)
        )
    };
    if o.ok() {
        let head = if color {
            format!("\x1b[1;32m{verb} complete!\x1b[0m")
        } else {
            format!("{verb} complete!")
        };
        println!("\n{head} Resources: {counts}. Wall time {}.", secs(o.wall));
    } else {
        let by_kind = |k: OpKind| o.skipped.iter().filter(|(_, kk)| *kk == k).count();
        let (sc, sd) = (by_kind(OpKind::Create), by_kind(OpKind::Delete));
        println!(
            "\n{verb} failed. Resources: {counts}; {} operation{} failed ({}); {} skipped ({sc} creates, {sd} deletes). Wall time {}.",
            o.failed.len(),
            if o.failed.len() == 1 { "" } else { "s" },
            o.failed
                .iter()
                .map(|(a, _, _)| a.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            o.skipped.len(),
            secs(o.wall)
        );
        println!("The state records what succeeded; failed creates are marked tainted and replaced by the next apply.");
    }
}

fn confirm(destroying: bool) -> Result<bool, Failure> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(fail(format!(
            "{} needs confirmation, and stdin is not a terminal: pass --auto-approve (after reviewing `vmthunder plan`)",
            if destroying { "destroy" } else { "apply" }
        )));
    }
    print!(
        "\nDo you want to {}? Only 'yes' will be accepted: ",
        if destroying {
            "destroy every resource above"
        } else {
            "perform these actions"
        }
    );
    std::io::stdout().flush()?;
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    Ok(line.trim() == "yes")
}
