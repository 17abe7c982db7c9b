//! What apply and destroy show while they run: a live display on a terminal, plain
//! Terraform-style lines otherwise, or JSON events (`--json`).

use std::io::{BufWriter, Stdout, Write};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rustc_hash::FxHashMap as HashMap;

use super::events::{self, Body, ErrorDetail, Event};
use crate::apply::{Outcome, Progress, Stop};
use crate::paint::Paint;
use crate::plan::{OpGraph, OpKind, Plan};
use crate::resource::{Addr, Kind};

/// Above this many operations the live display lists failures only, not every completion.
const LIST_LIMIT: usize = 500;

pub(super) enum View {
    Plain {
        color: bool,
        out: BufWriter<Stdout>,
        told: Told,
    },
    Live(Box<Live>),
    Json {
        out: BufWriter<Stdout>,
        told: Told,
    },
}

/// When each running operation's progress was last told (plain lines every 10 s, the first
/// 10 s after its start; JSON events at once and then every second), and when it started.
#[derive(Default)]
pub(super) struct Told {
    at: HashMap<Addr, (Instant, Option<Instant>)>,
}

impl Told {
    /// Whether progress of `addr` is due, `every` after the last (the first `first` after
    /// its start); the time it has run.
    fn due(&mut self, addr: &Addr, every: Duration, first: Duration) -> Option<Duration> {
        let (started, last) = self
            .at
            .entry(addr.clone())
            .or_insert((Instant::now(), None));
        match last {
            Some(l) if l.elapsed() < every => return None,
            None if started.elapsed() < first => return None,
            _ => {}
        }
        *last = Some(Instant::now());
        Some(started.elapsed())
    }

    fn on(&mut self, p: &Progress<'_>) {
        match p {
            Progress::Started { addr, .. } => {
                self.at.insert((*addr).clone(), (Instant::now(), None));
            }
            Progress::Finished { addr, .. } | Progress::Failed { addr, .. } => {
                self.at.remove(*addr);
            }
            _ => {}
        }
    }
}

/// "42% (27.0MiB of 64.0MiB)".
fn share(done: u64, total: u64) -> String {
    let pct = if total == 0 {
        100.0
    } else {
        done as f64 * 100.0 / total as f64
    };
    format!(
        "{pct:.0}% ({} of {})",
        crate::size::Size(done),
        crate::size::Size(total)
    )
}

impl View {
    /// `live` when stdout is a terminal (and not `--json`).
    pub fn new(json: bool, live: bool, color: bool, plan: &Plan) -> View {
        // Lines are buffered and flushed whenever the executor waits, so a fast run is not
        // one write per line and a slow one shows each line at once.
        let out = || BufWriter::with_capacity(1 << 16, std::io::stdout());
        if json {
            View::Json {
                out: out(),
                told: Told::default(),
            }
        } else if live {
            View::Live(Box::new(Live::new(plan, color)))
        } else {
            View::Plain {
                color,
                out: out(),
                told: Told::default(),
            }
        }
    }

    pub fn on(&mut self, p: Progress<'_>) {
        match self {
            View::Plain { out, .. } | View::Json { out, .. } if matches!(p, Progress::Idle) => {
                let _ = out.flush();
            }
            View::Plain { color, out, told } => {
                told.on(&p);
                if let Progress::Advanced {
                    addr,
                    kind,
                    done,
                    total,
                } = p
                {
                    // Like Terraform's "Still creating...", every 10 s.
                    if let Some(ran) =
                        told.due(addr, Duration::from_secs(10), Duration::from_secs(10))
                    {
                        let verb = match kind {
                            OpKind::Create => "creating",
                            OpKind::Update => "modifying",
                            OpKind::Delete => "destroying",
                        };
                        let _ = writeln!(
                            out,
                            "{addr}: Still {verb}... {} [{} elapsed]",
                            share(done, total),
                            secs(ran)
                        );
                    }
                } else if let Some(line) = text(&p, *color, true) {
                    let _ = writeln!(out, "{line}");
                }
            }
            View::Live(live) => live.on(p),
            View::Json { out, told } => {
                told.on(&p);
                if let Progress::Advanced { addr, .. } = p {
                    if told
                        .due(addr, Duration::from_secs(1), Duration::ZERO)
                        .is_none()
                    {
                        return;
                    }
                }
                if let Some(e) = event(&p) {
                    let _ = out.write_all(&e.line());
                }
            }
        }
    }

    /// The closing summary.
    pub fn finish(&mut self, o: &Outcome, destroying: bool) {
        let color = match self {
            View::Plain { color, out, .. } => {
                let _ = out.flush();
                *color
            }
            View::Live(live) => {
                live.clear();
                live.color
            }
            View::Json { out, .. } => {
                let _ = out.flush();
                let first = summary(o, destroying, false);
                let first = first.lines().find(|l| !l.is_empty()).unwrap_or_default();
                write_event(&events::outcome_summary(o, destroying, first.to_string()));
                return;
            }
        };
        say(&summary(o, destroying, color));
    }
}

pub(super) fn write_event(e: &Event) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&e.line()).and_then(|()| out.flush());
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// The plain line for an event; `starts` includes "Creating..." lines.
fn text(p: &Progress<'_>, color: bool, starts: bool) -> Option<String> {
    let verb = |k: OpKind| match k {
        OpKind::Create => ("Creating", "Creation", "creating"),
        OpKind::Update => ("Modifying", "Modifications", "modifying"),
        OpKind::Delete => ("Destroying", "Destruction", "destroying"),
    };
    Some(match p {
        Progress::Started { addr, kind } if starts => format!("{addr}: {}...", verb(*kind).0),
        Progress::Finished {
            addr,
            kind,
            elapsed,
        } => format!("{addr}: {} complete after {}", verb(*kind).1, secs(*elapsed)),
        Progress::Failed {
            addr,
            kind,
            elapsed,
            error,
            skipped,
        } => {
            let label = Paint { on: color }.error();
            let mut m = format!(
                "{label} {} {addr} failed after {}: {error}",
                verb(*kind).2,
                secs(*elapsed)
            );
            if *skipped > 0 {
                m.push_str(&format!(
                    "\n  {skipped} operation{} that depend{} on it will not run.",
                    if *skipped == 1 { "" } else { "s" },
                    if *skipped == 1 { "s" } else { "" }
                ));
            }
            m
        }
        Progress::Interrupted { hard: false, running } => format!(
            "\nInterrupt received: starting nothing new; waiting for {running} running operation{} to finish and be recorded.\nPress Ctrl-C again to stop waiting (what they leave behind is adopted or swept by the next apply).",
            if *running == 1 { "" } else { "s" }
        ),
        Progress::Interrupted { hard: true, running } => format!(
            "\nSecond interrupt: no longer waiting for {running} running operation{}; saving state.",
            if *running == 1 { "" } else { "s" }
        ),
        _ => return None,
    })
}

fn event(p: &Progress<'_>) -> Option<Event> {
    let body = match *p {
        Progress::Started { addr, kind } => Body::ApplyStart {
            hook: events::hook(addr, kind),
        },
        Progress::Finished {
            addr,
            kind,
            elapsed,
        } => Body::ApplyComplete {
            hook: events::hook(addr, kind),
            elapsed_seconds: events::secs(elapsed),
        },
        Progress::Failed {
            addr,
            kind,
            elapsed,
            error,
            skipped,
        } => Body::ApplyErrored {
            hook: events::hook(addr, kind),
            elapsed_seconds: events::secs(elapsed),
            error: ErrorDetail {
                message: error.message.clone(),
                command: error.command.clone(),
                stderr: error.stderr.clone(),
            },
            skipped,
        },
        Progress::Skipped { addr, kind, cause } => Body::ApplySkipped {
            hook: events::hook(addr, kind),
            cause: cause.to_string(),
        },
        Progress::Interrupted { hard, running } => Body::Interrupt { hard, running },
        Progress::Advanced {
            addr,
            kind,
            done,
            total,
        } => Body::ApplyProgress {
            hook: events::hook(addr, kind),
            bytes_done: done,
            bytes_total: total,
        },
        Progress::Tick | Progress::Idle => return None,
    };
    let message = match p {
        Progress::Advanced {
            addr, done, total, ..
        } => format!("{addr}: {}", share(*done, *total)),
        Progress::Skipped { addr, cause, .. } => {
            format!("{addr}: Skipped because {cause} failed")
        }
        other => text(other, false, true)?.trim().to_string(),
    };
    Some(Event::new(message, body))
}

/// The closing lines for people.
fn summary(o: &Outcome, destroying: bool, color: bool) -> String {
    let verb = if destroying { "Destroy" } else { "Apply" };
    let counts = if destroying {
        format!("{} destroyed", o.deleted)
    } else {
        format!(
            "{} added, {} changed, {} replaced, {} destroyed",
            o.created - o.replaced,
            o.updated,
            o.replaced,
            o.deleted - o.replaced.min(o.deleted)
        )
    };
    let p = Paint { on: color };
    if o.ok() {
        return format!(
            "\n{} Resources: {counts}. Wall time {}.",
            p.wrap("1;32", &format!("{verb} complete!")),
            secs(o.wall)
        );
    }
    let mut m = String::new();
    if let Some(stop) = o.interrupted {
        m.push_str(&format!(
            "\n{} Resources: {counts}; {} operation{} not started",
            p.wrap("1;33", &format!("{verb} interrupted.")),
            o.not_started,
            if o.not_started == 1 { "" } else { "s" }
        ));
        if stop == Stop::Hard {
            m.push_str(&format!(
                ", {} abandoned while running ({})",
                o.abandoned.len(),
                list(o.abandoned.iter().map(|(a, _)| a))
            ));
        }
        m.push_str(&format!(". Wall time {}.", secs(o.wall)));
        m.push_str("\nThe state records everything that completed. Run the same command again to continue.");
    }
    if !o.failed.is_empty() || !o.skipped.is_empty() {
        let by_kind = |k: OpKind| o.skipped.iter().filter(|(_, kk)| *kk == k).count();
        let (sc, sd) = (by_kind(OpKind::Create), by_kind(OpKind::Delete));
        m.push_str(&format!(
            "\n{} Resources: {counts}; {} operation{} failed ({}); {} skipped ({sc} creates, {sd} deletes). Wall time {}.",
            p.wrap("1;31", &format!("{verb} failed.")),
            o.failed.len(),
            if o.failed.len() == 1 { "" } else { "s" },
            list(o.failed.iter().map(|(a, _, _)| a)),
            o.skipped.len(),
            secs(o.wall)
        ));
        m.push_str("\nThe state records what succeeded; failed creates are marked tainted and replaced by the next apply.");
    }
    m
}

fn list<'a>(addrs: impl Iterator<Item = &'a Addr>) -> String {
    let all: Vec<String> = addrs.map(|a| a.to_string()).collect();
    if all.len() > 5 {
        format!("{}, and {} more", all[..5].join(", "), all.len() - 5)
    } else {
        all.join(", ")
    }
}

/// The live display: an overall bar with per-kind counts, and what runs now.
pub(super) struct Live {
    multi: MultiProgress,
    bar: ProgressBar,
    status: ProgressBar,
    /// Per kind: operations done, operations planned.
    kinds: [(usize, usize); Kind::ALL.len()],
    running: HashMap<(Addr, OpKind), Instant>,
    /// Running operations' progress: bytes done, bytes in all.
    advanced: HashMap<Addr, (u64, u64)>,
    failed: usize,
    /// List every completion above the display (small runs only).
    verbose: bool,
    color: bool,
}

impl Live {
    fn new(plan: &Plan, color: bool) -> Live {
        let ops = OpGraph::build(plan).ops;
        let mut kinds = [(0, 0); Kind::ALL.len()];
        for op in &ops {
            kinds[plan.changes[op.change as usize].addr.kind as usize].1 += 1;
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let bar = multi.add(ProgressBar::new(ops.len() as u64));
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:24} {pos}/{len} operations  {wide_msg}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        let status = multi.add(ProgressBar::new_spinner());
        status.set_style(ProgressStyle::with_template("  {wide_msg}").expect("a valid template"));
        bar.enable_steady_tick(Duration::from_millis(200));
        Live {
            multi,
            bar,
            status,
            kinds,
            running: HashMap::default(),
            advanced: HashMap::default(),
            failed: 0,
            verbose: ops.len() <= LIST_LIMIT,
            color,
        }
    }

    fn on(&mut self, p: Progress<'_>) {
        match &p {
            Progress::Started { addr, kind } => {
                self.running
                    .insert(((*addr).clone(), *kind), Instant::now());
            }
            Progress::Finished { addr, kind, .. } | Progress::Failed { addr, kind, .. } => {
                self.running.remove(&((*addr).clone(), *kind));
                self.advanced.remove(*addr);
                self.kinds[addr.kind as usize].0 += 1;
                self.bar.inc(1);
                if matches!(p, Progress::Failed { .. }) {
                    self.failed += 1;
                }
            }
            Progress::Skipped { addr, .. } => {
                self.kinds[addr.kind as usize].0 += 1;
                self.bar.inc(1);
            }
            Progress::Advanced {
                addr, done, total, ..
            } => {
                self.advanced.insert((*addr).clone(), (*done, *total));
            }
            Progress::Interrupted { .. } | Progress::Tick | Progress::Idle => {}
        }
        let show = match &p {
            Progress::Finished { .. } => self.verbose,
            Progress::Failed { .. } | Progress::Interrupted { .. } => true,
            _ => false,
        };
        if show {
            if let Some(line) = text(&p, self.color, false) {
                let _ = self.multi.println(line);
            }
        }
        self.redraw();
    }

    fn redraw(&self) {
        let mut m = String::new();
        for k in Kind::ALL {
            let (done, total) = self.kinds[k as usize];
            if total > 0 {
                m.push_str(&format!("{k} {done}/{total}  "));
            }
        }
        if self.failed > 0 {
            m.push_str(&format!("{} failed", self.failed));
        }
        self.bar.set_message(m);
        let mut now: Vec<(&(Addr, OpKind), &Instant)> = self.running.iter().collect();
        now.sort_by_key(|(_, t)| **t);
        let shown: Vec<String> = now
            .iter()
            .take(4)
            .map(|((a, _), t)| match self.advanced.get(a) {
                Some(&(done, total)) => {
                    format!("{a} {} {}", share(done, total), secs(t.elapsed()))
                }
                None => format!("{a} {}", secs(t.elapsed())),
            })
            .collect();
        let more = now.len().saturating_sub(shown.len());
        self.status.set_message(format!(
            "running {}: {}{}",
            now.len(),
            shown.join(", "),
            if more > 0 {
                format!(" (+{more})")
            } else {
                String::new()
            }
        ));
    }

    fn clear(&self) {
        self.status.finish_and_clear();
        self.bar.finish_and_clear();
        let _ = self.multi.clear();
    }
}
