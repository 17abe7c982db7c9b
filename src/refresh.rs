//! Refresh: read every recorded object through its backend, in parallel, and fold what was
//! found into the (in-memory) state before planning.
//!
//! An object that is gone is marked `missing`, so the plan recreates it and everything built
//! on it. One whose observed attributes changed gets the new ones recorded. One whose host did
//! not answer is *unknown*: it stays as recorded, and nothing is planned because of it.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap as HashMap;
use serde_json::Value;

use crate::apply::Limits;
use crate::backend::{Backend, BackendError, Observed, Target};
use crate::paint::Paint;
use crate::resource::Addr;
use crate::state::{State, Status};

/// What a refresh found about one recorded object.
#[derive(Clone, Debug, PartialEq)]
pub enum Finding {
    /// It does not exist any more.
    Gone,
    /// It exists; these observed attributes differ: (name, recorded, now).
    Changed(Vec<(String, Value, Value)>),
    /// Its host could not tell: the error.
    Unknown(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Drift {
    pub addr: Addr,
    pub finding: Finding,
}

#[derive(Debug, Default)]
pub struct Refreshed {
    /// In state order.
    pub drift: Vec<Drift>,
    /// Objects read.
    pub read: usize,
    pub wall: Duration,
}

impl Refreshed {
    /// Drift that changes what is recorded (unknown objects do not).
    pub fn changed(&self) -> bool {
        self.drift
            .iter()
            .any(|d| !matches!(d.finding, Finding::Unknown(_)))
    }
}

/// Reads every `ready` object of `state` (tainted and missing ones are replaced anyway),
/// `limits.parallelism` at a time and at most `limits.per_host` per host, and records the
/// findings in `state`. Nothing is written to disk.
pub fn refresh(state: &mut State, backend: &Arc<dyn Backend>, limits: Limits) -> Refreshed {
    refresh_with(state, backend, limits, false)
}

/// [`refresh`]; with `deep`, contents are checked in full (the checksums of imported
/// images), not only cheaply (their sizes and modification times).
pub fn refresh_with(
    state: &mut State,
    backend: &Arc<dyn Backend>,
    limits: Limits,
    deep: bool,
) -> Refreshed {
    let start = Instant::now();
    let todo: Vec<u32> = (0..state.len() as u32)
        .filter(|&i| state.resources[i as usize].status == Status::Ready)
        .collect();
    let results = read_all(state, &todo, backend.as_ref(), limits, deep);
    let mut out = Refreshed {
        read: todo.len(),
        ..Refreshed::default()
    };
    for (i, result) in todo.into_iter().zip(results) {
        let r = &mut state.resources[i as usize];
        let finding = match result {
            Ok(None) => {
                r.status = Status::Missing;
                Finding::Gone
            }
            Ok(Some(now)) => {
                let diff = differences(&r.observed, &now);
                if diff.is_empty() {
                    continue;
                }
                for (k, _, v) in &diff {
                    r.observed.insert(k.clone(), v.clone());
                }
                // Other bytes than those everything above it was built on.
                let content = crate::resource::content_attrs(r.addr.kind);
                if diff.iter().any(|(k, _, _)| content.contains(&k.as_str())) {
                    r.status = Status::Changed;
                }
                Finding::Changed(crate::backend::redact_changes(diff))
            }
            Err(e) => Finding::Unknown(e.to_string()),
        };
        out.drift.push(Drift {
            addr: r.addr.clone(),
            finding,
        });
    }
    out.wall = start.elapsed();
    out
}

/// Attributes present in both whose values differ. A read may report less than a create did
/// (how a guest was started, say): what it does not report is not drift.
fn differences(recorded: &Observed, now: &Observed) -> Vec<(String, Value, Value)> {
    now.iter()
        .filter_map(|(k, v)| match recorded.get(k) {
            Some(old) if old != v => Some((k.clone(), old.clone(), v.clone())),
            _ => None,
        })
        .collect()
}

type ReadResult = Result<Option<Observed>, BackendError>;

/// The reads not yet started, per host, and how many run on each host now.
struct Shared<'a> {
    queues: HashMap<&'a str, VecDeque<usize>>,
    busy: HashMap<&'a str, usize>,
    hosts: Vec<&'a str>,
    /// Where the round-robin over hosts goes on.
    next: usize,
    left: usize,
}

impl<'a> Shared<'a> {
    /// The next read of a host below `limit`, taking hosts in turn.
    fn take(&mut self, limit: usize) -> Option<(usize, &'a str)> {
        for step in 0..self.hosts.len() {
            let h = self.hosts[(self.next + step) % self.hosts.len()];
            if self.busy.get(h).copied().unwrap_or(0) >= limit {
                continue;
            }
            if let Some(k) = self.queues.get_mut(h).and_then(VecDeque::pop_front) {
                self.next = (self.next + step + 1) % self.hosts.len();
                *self.busy.entry(h).or_default() += 1;
                return Some((k, h));
            }
        }
        None
    }
}

/// The reads, in parallel under the limits; results in the order of `todo`.
fn read_all(
    state: &State,
    todo: &[u32],
    backend: &dyn Backend,
    limits: Limits,
    deep: bool,
) -> Vec<ReadResult> {
    // Queue per host, taken round-robin, so one big host does not hold the others back.
    let mut per_host: HashMap<&str, VecDeque<usize>> = HashMap::default();
    let mut hosts: Vec<&str> = Vec::new();
    for (k, &i) in todo.iter().enumerate() {
        let host: &str = &state.resources[i as usize].addr.host;
        per_host
            .entry(host)
            .or_insert_with(|| {
                hosts.push(host);
                VecDeque::new()
            })
            .push_back(k);
    }
    let shared = Mutex::new(Shared {
        queues: per_host,
        busy: HashMap::default(),
        hosts,
        next: 0,
        left: todo.len(),
    });
    let wake = Condvar::new();
    let results: Vec<Mutex<Option<ReadResult>>> = todo.iter().map(|_| Mutex::new(None)).collect();
    let per_host_limit = limits.per_host.max(1);
    let workers = limits.parallelism.max(1).min(todo.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let (k, host) = {
                    let mut s = shared.lock().expect("refresh queue");
                    loop {
                        if s.left == 0 {
                            return;
                        }
                        if let Some(job) = s.take(per_host_limit) {
                            s.left -= 1;
                            break job;
                        }
                        s = wake.wait(s).expect("refresh queue");
                    }
                };
                let r = &state.resources[todo[k] as usize];
                let target = Target {
                    deep,
                    ..Target::new(&r.addr, &r.desired)
                };
                // A panic must not leave the host's count raised (and the others waiting).
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    backend.read(target, &r.observed)
                }))
                .unwrap_or_else(|_| {
                    Err(BackendError::new(format!(
                        "internal error: the backend panicked reading {}",
                        r.addr
                    )))
                });
                *results[k].lock().expect("result slot") = Some(result);
                let mut s = shared.lock().expect("refresh queue");
                *s.busy.get_mut(host).expect("counted") -= 1;
                wake.notify_all();
            });
        }
    });
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .expect("result slot")
                .expect("every read ran")
        })
        .collect()
}

/// The "Objects changed outside vmthunder" section, for people.
pub fn render(r: &Refreshed, color: bool) -> String {
    let mut out = String::new();
    if r.drift.is_empty() {
        return out;
    }
    let p = Paint { on: color };
    let _ = writeln!(out, "\n{}\n", p.bold("Objects changed outside vmthunder"));
    let _ = writeln!(
        out,
        "vmthunder read {} recorded object{} and found:\n",
        r.read,
        if r.read == 1 { "" } else { "s" }
    );
    let mut unknown_by_reason: Vec<(&str, Vec<&Addr>)> = Vec::new();
    for d in &r.drift {
        match &d.finding {
            Finding::Gone => {
                let _ = writeln!(
                    out,
                    "  {} {} is gone (deleted outside vmthunder)",
                    p.red("-"),
                    d.addr
                );
            }
            Finding::Changed(diff) => {
                let _ = writeln!(out, "  {} {} changed:", p.yellow("~"), d.addr);
                for (k, old, new) in diff {
                    let _ = writeln!(out, "      {k} = {old} -> {new}");
                }
            }
            Finding::Unknown(e) => {
                let first = e.lines().next().unwrap_or_default();
                match unknown_by_reason.iter_mut().find(|(r, _)| *r == first) {
                    Some((_, addrs)) => addrs.push(&d.addr),
                    None => unknown_by_reason.push((first, vec![&d.addr])),
                }
            }
        }
    }
    // Objects that could not be read for one reason (a host that does not answer) are listed
    // together, once.
    for (reason, addrs) in &unknown_by_reason {
        let q = p.wrap("35", "?");
        if let [one] = addrs.as_slice() {
            let _ = writeln!(out, "  {q} {one} is unknown: {reason}");
        } else {
            let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
            let _ = writeln!(
                out,
                "  {q} {} objects are unknown: {reason}\n      {}",
                addrs.len(),
                list.join(", ")
            );
        }
    }
    let unknown = r
        .drift
        .iter()
        .filter(|d| matches!(d.finding, Finding::Unknown(_)))
        .count();
    if unknown > 0 {
        let _ = writeln!(
            out,
            "\n{unknown} object{} could not be read; nothing is planned for {} until {} host answers.",
            if unknown == 1 { "" } else { "s" },
            if unknown == 1 { "it" } else { "them" },
            if unknown == 1 { "its" } else { "their" },
        );
    }
    if r.changed() {
        let _ = writeln!(
            out,
            "\nUnless the spec changed to match, the plan below repairs this: what is gone is created again, with everything built on it."
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Plan;
    use crate::state::tests::lv;

    /// A backend that answers reads from a table: for this module's logic only.
    struct Table(HashMap<String, ReadResult>);

    impl Backend for Table {
        fn preflight(&self, _: &Plan) -> Result<(), Vec<String>> {
            Ok(())
        }
        fn read(&self, t: Target<'_>, _: &Observed) -> ReadResult {
            self.0[&t.addr.to_string()].clone()
        }
        fn create(&self, _: Target<'_>, _: &[(Addr, Observed)]) -> Result<Observed, BackendError> {
            unreachable!()
        }
        fn delete(&self, _: Target<'_>, _: &Observed) -> Result<(), BackendError> {
            unreachable!()
        }
        fn finish(&self, _: &State) -> Result<(), BackendError> {
            Ok(())
        }
    }

    #[test]
    fn gone_changed_unknown_and_unchanged_are_told_apart() {
        let mut s = State::empty("lab");
        for a in ["lv.a.img", "lv.b.img", "lv.c.img", "lv.d.img"] {
            let mut r = lv(a, &[]);
            r.observed.insert("pid".into(), 1.into());
            s.upsert(r);
        }
        let same: Observed = [("pid".to_string(), Value::from(1))].into_iter().collect();
        let moved: Observed = [("pid".to_string(), Value::from(2))].into_iter().collect();
        let table = Table(HashMap::from_iter([
            ("lv.a.img".to_string(), Ok(Some(same))),
            ("lv.b.img".to_string(), Ok(None)),
            ("lv.c.img".to_string(), Ok(Some(moved))),
            (
                "lv.d.img".to_string(),
                Err(BackendError::new("on host d: connection refused")),
            ),
        ]));
        let backend: Arc<dyn Backend> = Arc::new(table);
        let r = refresh(&mut s, &backend, Limits::default());
        assert_eq!(r.read, 4);
        let found: Vec<(String, &Finding)> = r
            .drift
            .iter()
            .map(|d| (d.addr.to_string(), &d.finding))
            .collect();
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(found[0], ("lv.b.img".into(), &Finding::Gone));
        assert!(matches!(found[1].1, Finding::Changed(d) if d[0].0 == "pid"));
        assert!(matches!(found[2].1, Finding::Unknown(e) if e.contains("refused")));
        let status = |a: &str| s.get(&a.parse().unwrap()).unwrap().status;
        assert_eq!(status("lv.b.img"), Status::Missing);
        assert_eq!(status("lv.d.img"), Status::Ready, "unknown is not gone");
        assert_eq!(
            s.get(&"lv.c.img".parse().unwrap()).unwrap().observed["pid"],
            2
        );
        let text = render(&r, false);
        assert!(text.contains("lv.b.img is gone"), "{text}");
        assert!(text.contains("pid = 1 -> 2"), "{text}");
        assert!(text.contains("lv.d.img is unknown"), "{text}");
    }
    /// Reads an imported image as the qemu stack does: size and time, the checksum when deep.
    struct Image;

    impl Backend for Image {
        fn preflight(&self, _: &Plan) -> Result<(), Vec<String>> {
            Ok(())
        }
        fn read(&self, t: Target<'_>, _: &Observed) -> ReadResult {
            let mut o: Observed = [("bytes".to_string(), Value::from(1))]
                .into_iter()
                .collect();
            if t.deep {
                o.insert("sha256".into(), "new".into());
            }
            Ok(Some(o))
        }
        fn create(&self, _: Target<'_>, _: &[(Addr, Observed)]) -> Result<Observed, BackendError> {
            unreachable!()
        }
        fn delete(&self, _: Target<'_>, _: &Observed) -> Result<(), BackendError> {
            unreachable!()
        }
        fn finish(&self, _: &State) -> Result<(), BackendError> {
            Ok(())
        }
    }

    #[test]
    fn an_image_with_other_bytes_is_changed_and_only_a_deep_read_sees_its_checksum() {
        let mut s = State::empty("lab");
        let mut r = lv("lv.src.img", &[]);
        r.addr = "image.src.img".parse().unwrap();
        r.desired = crate::resource::Desired::Image(crate::resource::ImageAttrs {
            from: "/dev/sdb".into(),
            source_format: crate::spec::SourceFormat::Raw,
            from_host: None,
            path: "/srv/img.raw".into(),
            format: crate::spec::ImageFormat::Raw,
            size: None,
        });
        r.observed.insert("bytes".into(), 1.into());
        r.observed.insert("sha256".into(), "old".into());
        s.upsert(r);
        let backend: Arc<dyn Backend> = Arc::new(Image);
        let addr = "image.src.img".parse().unwrap();
        let r = refresh(&mut s, &backend, Limits::default());
        assert!(r.drift.is_empty(), "{:?}", r.drift);
        assert_eq!(s.get(&addr).unwrap().status, Status::Ready);
        let r = refresh_with(&mut s, &backend, Limits::default(), true);
        assert!(
            matches!(&r.drift[0].finding, Finding::Changed(d) if d[0].0 == "sha256"),
            "{:?}",
            r.drift
        );
        assert_eq!(s.get(&addr).unwrap().status, Status::Changed);
    }
}
