//! `apply` and `destroy`: plan (or load a saved plan), check, confirm, execute, report.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;

use super::events;
use super::progress::{self, View};
use super::{
    emit, fail, load_spec, locked_state, render_options, store_of, ApplyArgs, DestroyArgs, Failure,
    RunArgs,
};
use crate::allot::Allotment;
use crate::apply::{self, Interrupt, Limits, Stop};
use crate::backend;
use crate::capacity::Found;
use crate::graph::Graph;
use crate::plan::{self, Mode, OpGraph, Plan};
use crate::refresh::{self, Refreshed};
use crate::resource::Addr;
use crate::spec::Spec;
use crate::state::{State, Store};

pub(super) fn apply(args: ApplyArgs, color: bool) -> Result<i32, Failure> {
    json_needs_approval(&args.run, args.plan.is_some())?;
    if let Some(every) = args.watch {
        return watch(args, every, color);
    }
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
            let mut spec = saved_spec(&saved, &file)?;
            let store = store_of(&args.state, &spec)?;
            let (_lock, mut state) =
                locked_state(&*store, Some(&spec.cluster), "apply", args.run.lock_timeout)?;
            // The whole plan is checked before anything is touched (settling a journal
            // writes the state).
            saved.check_current(&state)?;
            let mut slot = None;
            let found = allot(&mut spec, &state, true, &mut slot)?;
            saved.verify_saved(&spec, &mut state).map_err(|r| {
                fail(format!(
                    "plan `{}` is not the plan vmthunder makes from its spec and the state: {r}",
                    file.display()
                ))
            })?;
            store.settle(&mut state)?;
            let run = Run {
                store: &*store,
                args: &args.run,
                color,
                saved: true,
            };
            execute(&spec, saved, &mut state, &run, found, slot)
        }
        None => {
            let Some(spec_file) = args.spec.file else {
                return Err(fail(
                    "apply needs a spec (-f SPEC) or a saved plan (vmthunder apply PLANFILE)",
                ));
            };
            let mut spec = load_spec(&spec_file)?;
            let store = store_of(&args.state, &spec)?;
            let (_lock, mut state) =
                locked_state(&*store, Some(&spec.cluster), "apply", args.run.lock_timeout)?;
            store.settle(&mut state)?;
            // The refresh, the placement of totals and the apply share one backend.
            let mut slot = None;
            let drift = if args.refresh.refresh || args.refresh.refresh_only {
                refresh_state(
                    &spec,
                    &mut state,
                    limits_of(&spec, &args.run),
                    args.refresh.checksum,
                    &mut slot,
                )?
            } else {
                Refreshed::default()
            };
            if args.run.json {
                for e in events::drift(&drift) {
                    progress::write_event(&e);
                }
            } else {
                emit(refresh::render(&drift, color).as_bytes())?;
            }
            if args.refresh.refresh_only {
                return record_drift(&drift, &mut state, &*store, &args.run);
            }
            let opts = plan::Options {
                mode: Some(Mode::Normal),
                targets: args.target,
                replace,
                prevent_destroy: spec.clones.prevent_destroy,
            };
            let found = allot(&mut spec, &state, args.refresh.refresh, &mut slot)?;
            let health = crate::health::Health::from_refresh(&drift);
            let plan = make_plan(&spec, &state, &opts, &health)?;
            let run = Run {
                store: &*store,
                args: &args.run,
                color,
                saved: false,
            };
            execute(&spec, plan, &mut state, &run, found, slot)
        }
    }
}

pub(super) fn destroy(args: DestroyArgs, color: bool) -> Result<i32, Failure> {
    json_needs_approval(&args.run, false)?;
    let spec = load_spec(&args.spec.file)?;
    let store = store_of(&args.state, &spec)?;
    let (_lock, mut state) = locked_state(
        &*store,
        Some(&spec.cluster),
        "destroy",
        args.run.lock_timeout,
    )?;
    store.settle(&mut state)?;
    let opts = plan::Options {
        mode: Some(Mode::Destroy),
        targets: args.target,
        replace: Vec::new(),
        prevent_destroy: false,
    };
    let plan = make_plan(&spec, &state, &opts, &Default::default())?;
    let run = Run {
        store: &*store,
        args: &args.run,
        color,
        saved: false,
    };
    execute(&spec, plan, &mut state, &run, Found::new(), None)
}

/// The spec's backend, made on first use and kept in `slot`: a command's refresh and its
/// capacity discovery share one transport (over ssh, one connection per host).
fn backend_in<'a>(
    spec: &Spec,
    slot: &'a mut Option<Arc<dyn backend::Backend>>,
) -> Result<&'a Arc<dyn backend::Backend>, backend::BackendError> {
    if slot.is_none() {
        *slot = Some(backend::for_spec(spec)?);
    }
    Ok(slot.as_ref().expect("just made"))
}

/// Reads every recorded object on its host and folds the findings into `state` (in memory);
/// with `checksums`, imported images are read whole.
pub(super) fn refresh_state(
    spec: &Spec,
    state: &mut State,
    limits: Limits,
    checksums: bool,
    slot: &mut Option<Arc<dyn backend::Backend>>,
) -> Result<Refreshed, Failure> {
    if state.is_empty() {
        return Ok(Refreshed::default());
    }
    let backend = backend_in(spec, slot).map_err(|e| {
        fail(format!(
            "cannot refresh: {e}\n  (pass --refresh=false to plan from the recorded state alone)"
        ))
    })?;
    Ok(refresh::refresh_with(state, backend, limits, checksums))
}

/// The capacity table of `spec` (its totals placed by [`allot`]); with `discover`, what the
/// hosts leave out of their `capacity`, and `found` does not tell, is asked of them (not on
/// the sim stack, whose hosts run nothing).
pub(super) fn capacity(
    spec: &Spec,
    discover: bool,
    slot: &mut Option<Arc<dyn backend::Backend>>,
    found: &mut Found,
) -> Result<crate::capacity::Report, Failure> {
    let allotment = spec
        .allotment(&State::empty(&spec.cluster))
        .map_err(not_placed)?;
    let backend = (discover && spec.backend.stack != crate::spec::Stack::Sim)
        .then(|| backend_in(spec, slot).ok())
        .flatten();
    Ok(crate::capacity::assess(
        spec,
        &allotment,
        backend.map(|b| &**b),
        found,
    ))
}

/// Places the spec's totals (`images[].clones`) against `state` and keeps the placement in
/// `spec`. What their hosts leave out of `capacity` is discovered first (with `discover`;
/// not on the sim stack), through the backend in `slot`. Returns what was found, for the
/// capacity table.
pub(super) fn allot(
    spec: &mut Spec,
    state: &State,
    discover: bool,
    slot: &mut Option<Arc<dyn backend::Backend>>,
) -> Result<Found, Failure> {
    let mut found = Found::new();
    if Allotment::needs_figures(spec) && discover && spec.backend.stack != crate::spec::Stack::Sim {
        // The hosts of totals that leave a figure out, each once, in spec order.
        let at = spec.host_positions();
        let mut asked = vec![false; spec.hosts.len()];
        for img in spec.images.iter().filter(|i| i.clones.is_some()) {
            for h in spec.image_hosts(img) {
                if let Some(&i) = at.get(h) {
                    asked[i] = !crate::capacity::complete(spec.hosts[i].capacity.as_ref());
                }
            }
        }
        let ask: Vec<&str> = spec
            .hosts
            .iter()
            .zip(&asked)
            .filter(|(_, &a)| a)
            .map(|(h, _)| h.name.as_str())
            .collect();
        if !ask.is_empty() {
            let b = backend_in(spec, slot).map_err(|e| {
                fail(format!(
                    "cannot place images[].clones by the hosts' capacity: {e}\n  (declare hosts[].capacity, or pass --refresh=false to place by the declared figures alone)"
                ))
            })?;
            found = crate::capacity::discover_on(&**b, &ask);
        }
    }
    spec.allot(state, &found).map_err(not_placed)?;
    Ok(found)
}

/// The error of totals that do not fit.
fn not_placed(errors: Vec<crate::allot::AllotError>) -> Failure {
    let mut m = String::from("cannot place the clones; nothing was changed:");
    for e in errors {
        m.push_str("\n  ");
        m.push_str(&e.to_string());
    }
    fail(m)
}

/// The error of hosts whose clones do not fit.
pub(super) fn does_not_fit(problems: &[String]) -> String {
    let mut m = format!(
        "the clones do not fit on {} host{} (backend.overcommit allows vCPUs and memory beyond a host's capacity; disk never):",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        m.push_str("\n  ");
        m.push_str(p);
    }
    m
}

/// The refresh's findings as a JSON array (`resource_drift` of `plan --json`).
pub(super) fn drift_json(r: &Refreshed) -> Vec<u8> {
    let v: Vec<events::DriftInfo> = r.drift.iter().map(events::DriftInfo::of).collect();
    serde_json::to_vec_pretty(&v).expect("drift serializes")
}

/// JSON output leaves no one to answer the confirmation prompt.
fn json_needs_approval(run: &RunArgs, saved: bool) -> Result<(), Failure> {
    if run.json && !saved && !run.auto_approve {
        return Err(fail(
            "--json cannot ask for confirmation: pass --auto-approve too (after reviewing `vmthunder plan`)",
        ));
    }
    Ok(())
}

/// `apply --refresh-only`: record what the refresh found, touching no host.
fn record_drift(
    drift: &Refreshed,
    state: &mut State,
    store: &dyn Store,
    run: &RunArgs,
) -> Result<i32, Failure> {
    if !drift.changed() {
        if !run.json {
            println!("No changes. The recorded state matches the hosts.");
        }
        return Ok(0);
    }
    if !run.auto_approve && !confirm_text("record these changes in the state (no host is touched)")?
    {
        println!("Apply cancelled.");
        return Ok(1);
    }
    store.write(state)?;
    if !run.json {
        println!(
            "\nRecorded {} change{} found outside vmthunder in `{}`; no host was touched.",
            drift.drift.len(),
            if drift.drift.len() == 1 { "" } else { "s" },
            store.name()
        );
    }
    Ok(0)
}

fn make_plan(
    spec: &Spec,
    state: &State,
    opts: &plan::Options,
    health: &crate::health::Health,
) -> Result<Plan, Failure> {
    let graph = Graph::build_with(spec, state, health)?;
    let plan = plan::diff(graph, state, opts, Some(spec.digest()))?;
    OpGraph::build(&plan).order(&plan)?;
    Ok(plan)
}

/// The spec a saved plan was made from, checked against its digest.
fn saved_spec(saved: &Plan, file: &std::path::Path) -> Result<Spec, Failure> {
    let value = saved.spec.as_ref().ok_or_else(|| {
        fail(format!(
            "plan `{}` does not carry its spec (it was made by an older vmthunder); nothing was changed; make a new plan",
            file.display()
        ))
    })?;
    let spec = Spec::from_value(value).map_err(|e| {
        fail(format!(
            "the spec inside plan `{}` is not valid: {e}; nothing was changed; make a new plan",
            file.display()
        ))
    })?;
    if saved.spec_digest.as_deref() != Some(spec.digest().as_str()) {
        return Err(fail(format!(
            "plan `{}` was altered after it was saved (its spec does not match its spec_digest); nothing was changed; make a new plan",
            file.display()
        )));
    }
    Ok(spec)
}

/// Where and how a plan is executed.
struct Run<'a> {
    store: &'a dyn Store,
    args: &'a RunArgs,
    color: bool,
    /// The plan was loaded from a file (it was shown when it was made).
    saved: bool,
}

/// Runs `plan`. `found` is what the hosts were found to have so far, and `slot` the backend
/// already made, if any.
fn execute(
    spec: &Spec,
    plan: Plan,
    state: &mut State,
    run: &Run<'_>,
    mut found: Found,
    mut slot: Option<Arc<dyn backend::Backend>>,
) -> Result<i32, Failure> {
    let (store, color, saved) = (run.store, run.color, run.saved);
    let run = run.args;
    let destroying = plan.mode == Mode::Destroy;
    use crate::resource::Kind;
    // What the plan would record a secret of, and what that secret is.
    let secret = plan
        .changes
        .iter()
        .filter(|c| c.after.is_some())
        .find_map(|c| match c.addr.kind {
            Kind::Session if spec.backend.stack == crate::spec::Stack::Linux => {
                Some("the linux stack records a CHAP secret per session")
            }
            Kind::Ca | Kind::Cert => Some(
                "TLS (backend.tls) records the private keys of the cluster CA and of each host",
            ),
            _ => None,
        });
    if let (true, Some(what)) = (store.codec().refuses_secrets(), secret) {
        return Err(fail(format!(
            "cannot apply: {what}, and state `{}` keeps secrets only sealed, but no state key is configured; nothing was changed. Make a key (`head -c 32 /dev/urandom | base64 > state.key; chmod 600 state.key`) and pass it with --state-key-file, state.key_file or VMTHUNDER_STATE_KEY",
            store.name()
        )));
    }
    let backend = backend_in(spec, &mut slot)
        .map_err(|e| fail(e.to_string()))?
        .clone();
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
    if !destroying && crate::capacity::grows(&plan) {
        let allotment = spec.allotment(state).map_err(not_placed)?;
        let report = crate::capacity::assess(spec, &allotment, Some(&*backend), &mut found);
        let problems = report.shortages();
        if !problems.is_empty() {
            return Err(fail(format!(
                "cannot apply; nothing was changed: {}",
                does_not_fit(&problems)
            )));
        }
    }
    if run.json {
        for e in events::planned(&plan) {
            progress::write_event(&e);
        }
        progress::write_event(&events::plan_summary(&plan));
    }
    if !plan.has_changes() {
        // Nothing to run, but leftovers of an interrupted run are still swept.
        let _ = backend.finish(state);
        if !run.json {
            println!(
                "No changes. The hosts match the {}.",
                if destroying {
                    "(empty) destroy plan"
                } else {
                    "spec"
                }
            );
        }
        return Ok(0);
    }
    if !saved && !run.json {
        emit(plan::render(&plan, render_options(color, false)).as_bytes())?;
    }
    if !saved && !run.auto_approve && !confirm(destroying)? {
        println!(
            "{} cancelled.",
            if destroying { "Destroy" } else { "Apply" }
        );
        return Ok(1);
    }
    let limits = limits_of(spec, run);
    let live = !run.json && std::io::stdout().is_terminal();
    let mut view = View::new(run.json, live, color, &plan);
    let interrupt = Arc::new(Interrupt::default());
    let signals = catch_interrupts(&interrupt)?;
    let result = apply::run(
        &plan,
        state,
        store,
        Arc::clone(&backend),
        limits,
        &interrupt,
        &mut |p| view.on(p),
    );
    signals.close();
    let outcome = result?;
    // After a hard interrupt operations may still be running: sweeping now could race them.
    if outcome.interrupted != Some(Stop::Hard) {
        if let Err(e) = backend.finish(state) {
            eprintln!("Warning: cleaning up after the run: {e}");
        }
    }
    view.finish(&outcome, destroying);
    Ok(if outcome.interrupted.is_some() {
        INTERRUPTED
    } else if outcome.ok() {
        0
    } else {
        1
    })
}

/// `apply --watch`: a round of refresh, plan and apply every `every`, until interrupted.
/// A round that fails is reported and the next one tries again; the lock is held only while
/// a round runs, so people and CI can plan in between.
fn watch(args: ApplyArgs, every: std::time::Duration, color: bool) -> Result<i32, Failure> {
    let interrupt = Arc::new(Interrupt::default());
    let signals = catch_interrupts(&interrupt)?;
    let mut round = 0u64;
    loop {
        round += 1;
        let started = std::time::SystemTime::now();
        if !args.run.json {
            println!(
                "\n--- watch round {round} at {} (every {}; Ctrl-C stops) ---",
                humantime::format_rfc3339_seconds(started),
                humantime::format_duration(every)
            );
        }
        let mut once = args.clone();
        once.watch = None;
        match apply(once, color) {
            Ok(0) => {}
            Ok(code) if interrupt.count() > 0 => {
                signals.close();
                return Ok(code.max(INTERRUPTED));
            }
            Ok(code) => eprintln!(
                "watch round {round} ended with status {code}; trying again in {}",
                humantime::format_duration(every)
            ),
            Err(f) => eprintln!(
                "Error: {}\nwatch round {round} failed; trying again in {}",
                f.message,
                humantime::format_duration(every)
            ),
        }
        let wake = std::time::Instant::now() + every;
        while std::time::Instant::now() < wake {
            if interrupt.count() > 0 {
                signals.close();
                return Ok(INTERRUPTED);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

fn limits_of(spec: &Spec, run: &RunArgs) -> Limits {
    Limits::for_spec(spec, run.parallelism, run.per_host)
}

/// The exit status of a run cut short by Ctrl-C (128 + SIGINT, as shells report it).
const INTERRUPTED: i32 = 130;

/// Counts SIGINT and SIGTERM into `interrupt` until the handle is closed.
fn catch_interrupts(interrupt: &Arc<Interrupt>) -> Result<signal_hook::iterator::Handle, Failure> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let handle = signals.handle();
    let interrupt = Arc::clone(interrupt);
    std::thread::spawn(move || {
        for _ in signals.forever() {
            interrupt.raise();
        }
    });
    Ok(handle)
}

fn confirm(destroying: bool) -> Result<bool, Failure> {
    confirm_text(if destroying {
        "destroy every resource above"
    } else {
        "perform these actions"
    })
}

fn confirm_text(what: &str) -> Result<bool, Failure> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(fail(format!(
            "to {what} vmthunder needs confirmation, and stdin is not a terminal: pass --auto-approve (after reviewing `vmthunder plan`)"
        )));
    }
    print!("\nDo you want to {what}? Only 'yes' will be accepted: ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    Ok(line.trim() == "yes")
}
