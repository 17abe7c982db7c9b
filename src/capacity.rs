//! Host capacity: what each host's clones need, what the host has (`hosts[].capacity`, or
//! what the stack discovers on it), and whether the clones fit under `backend.overcommit`.
//!
//! A host needs, summed over the images it runs clones of: per clone `clones.vcpus`,
//! `clones.memory` and `clones.cow_size` of disk, and per image one cache of `cache.size`.
//! Disk counts what is provisioned (a copy-on-write disk may grow to its full size), and a
//! discovered disk is the free space plus what this cluster already holds on the host, so a
//! cluster that fits keeps fitting after its apply. vCPUs and memory may be overcommitted by
//! the spec's ratios; disk never is.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

use crate::allot::Allotment;
use crate::backend::{in_parallel, Backend, BackendError, Transport};
use crate::plan::{Action, Plan};
use crate::spec::{Capacity, Overcommit, Spec};
use crate::state::State;

/// What one host's clones ask for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Need {
    pub clones: u64,
    pub vcpus: u64,
    pub memory: u64,
    pub disk: u64,
}

/// What a stack found on a host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    pub vcpus: u32,
    pub memory: u64,
    /// `None` when the stack cannot tell.
    pub disk: Option<u64>,
}

/// One figure of a host: its value and where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Figure {
    pub value: Option<u64>,
    /// `spec`, `discovered`, or `unknown`.
    pub source: &'static str,
}

/// A host's line of the capacity table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub host: String,
    pub need: Need,
    pub vcpus: Figure,
    pub memory: Figure,
    pub disk: Figure,
    /// Why the host's figures could not be discovered, if they could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
    /// What does not fit, as a sentence naming the host (`None`: it fits, as far as known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub short: Option<String>,
}

/// The capacity table of a spec.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub overcommit: Ratios,
    pub hosts: Vec<Row>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Ratios {
    pub vcpus: f64,
    pub memory: f64,
}

impl Report {
    /// Every host that does not fit, as sentences.
    pub fn shortages(&self) -> Vec<String> {
        self.hosts.iter().filter_map(|r| r.short.clone()).collect()
    }
}

/// What the stack found on each host it was asked about, or why it could not tell.
pub type Found = HashMap<String, Result<Figures, String>>;

impl Need {
    /// What one clone of `spec` takes: `clones.vcpus`, `clones.memory` and its full
    /// copy-on-write disk.
    pub(crate) fn per_clone(spec: &Spec) -> Need {
        let c = &spec.clones;
        Need {
            clones: 1,
            vcpus: u64::from(c.vcpus),
            memory: c.memory.bytes(),
            disk: c.cow_size.bytes(),
        }
    }

    /// Adds `n` times `each`.
    pub(crate) fn add(&mut self, each: &Need, n: u64) {
        self.clones += n * each.clones;
        self.vcpus += n * each.vcpus;
        self.memory += n * each.memory;
        self.disk += n * each.disk;
    }
}

/// What `host` has, figure by figure (vCPUs, memory, disk): declared, else what `found`
/// says it has; `None` when neither tells.
pub fn has(host: &crate::spec::Host, found: &Found) -> [Option<u64>; 3] {
    let d = host.capacity.unwrap_or_default();
    let f = match found.get(&host.name) {
        Some(Ok(f)) => Some(*f),
        _ => None,
    };
    [
        d.vcpus.map(u64::from).or(f.map(|f| u64::from(f.vcpus))),
        d.memory.map(|m| m.bytes()).or(f.map(|f| f.memory)),
        d.disk.map(|m| m.bytes()).or(f.and_then(|f| f.disk)),
    ]
}

/// What each host's clones need, for every host of the spec in spec order (hosts without
/// clones need nothing), with the clones `allotment` places.
pub fn needs(spec: &Spec, allotment: &Allotment) -> Vec<(String, Need)> {
    let at = spec.host_positions();
    let mut out: Vec<(String, Need)> = spec
        .hosts
        .iter()
        .map(|h| (h.name.clone(), Need::default()))
        .collect();
    let clone = Need::per_clone(spec);
    for (index, image) in spec.images.iter().enumerate() {
        for host in spec.image_hosts(image) {
            let Some(&i) = at.get(host) else { continue };
            let need = &mut out[i].1;
            need.add(&clone, u64::from(allotment.count(index, host)));
            need.disk += spec.cache.size.bytes();
        }
    }
    out
}

/// The table from the spec's declared capacities and, for what they leave out, `found`
/// (per host: what the stack discovered, or why it could not), with the clones `allotment`
/// places. A host neither declares nor discovered is unknown, and not short.
pub fn report(spec: &Spec, allotment: &Allotment, found: &Found) -> Report {
    table(spec, needs(spec, allotment), found)
}

/// [`report`] of the hosts' `needs` (in spec order).
fn table(spec: &Spec, needs: Vec<(String, Need)>, found: &Found) -> Report {
    let over = spec.backend.overcommit;
    let hosts = needs
        .into_iter()
        .zip(&spec.hosts)
        .map(|((host, need), h)| {
            let declared = h.capacity.unwrap_or_default();
            let unknown = match found.get(&host) {
                Some(Err(e)) => Some(e.clone()),
                _ => None,
            };
            let [vcpus, memory, disk] = has(h, found);
            let figure = |declared: bool, value: Option<u64>| Figure {
                value,
                source: match (declared, value) {
                    (true, _) => "spec",
                    (false, Some(_)) => "discovered",
                    (false, None) => "unknown",
                },
            };
            let mut row = Row {
                vcpus: figure(declared.vcpus.is_some(), vcpus),
                memory: figure(declared.memory.is_some(), memory),
                disk: figure(declared.disk.is_some(), disk),
                short: None,
                unknown,
                need,
                host,
            };
            row.short = shortage(&row, over);
            row
        })
        .collect();
    Report {
        overcommit: Ratios {
            vcpus: over.vcpus,
            memory: over.memory,
        },
        hosts,
    }
}

/// Why `row`'s clones do not fit, e.g. `node03: 12 clones need 24 vCPUs and 24 GiB; it has
/// 8 vCPUs x 4.0 and 16 GiB`; `None` when they fit as far as the figures are known.
fn shortage(row: &Row, over: Overcommit) -> Option<String> {
    let n = &row.need;
    let cpus_short = row
        .vcpus
        .value
        .is_some_and(|v| n.vcpus as f64 > v as f64 * over.vcpus + 1e-9);
    let mem_short = row
        .memory
        .value
        .is_some_and(|v| n.memory as f64 > v as f64 * over.memory);
    let disk_short = row.disk.value.is_some_and(|v| n.disk > v);
    if !(cpus_short || mem_short || disk_short) {
        return None;
    }
    let mut need = vec![format!("{} vCPUs", n.vcpus), bytes(n.memory)];
    let mut has = vec![
        match row.vcpus.value {
            Some(v) => format!("{v} vCPUs x {:.1}", over.vcpus),
            None => "unknown vCPUs".into(),
        },
        match row.memory.value {
            Some(v) if over.memory != 1.0 => format!("{} x {:.1}", bytes(v), over.memory),
            Some(v) => bytes(v),
            None => "unknown memory".into(),
        },
    ];
    if disk_short {
        need.push(format!("{} of disk", bytes(n.disk)));
        has.push(format!("{} of disk", bytes(row.disk.value.unwrap_or(0))));
    }
    let clones = if n.clones == 1 {
        "clone needs"
    } else {
        "clones need"
    };
    Some(format!(
        "{}: {} {clones} {}; it has {}",
        row.host,
        n.clones,
        and_list(&need),
        and_list(&has)
    ))
}

fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// Bytes as people read them: `24 GiB`, `1.5 GiB`, `512 MiB`.
pub fn bytes(b: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if b >= size {
            let v = b as f64 / size as f64;
            return if b.is_multiple_of(size) || v >= 100.0 {
                format!("{v:.0} {unit}")
            } else {
                format!("{v:.1} {unit}")
            };
        }
    }
    format!("{b} B")
}

/// The spec's own check: totals that do not fit on their hosts (at `/images/<i>/clones`) and
/// hosts whose declared capacity is too small (at `/hosts/<i>/capacity`). Figures left out
/// are not judged here (`plan` discovers them); nor is the recorded state, whose clones stay
/// where they are.
pub fn check_declared(spec: &Spec, diags: &mut crate::spec::Diagnostics) {
    let declared = spec.hosts.iter().any(|h| h.capacity.is_some());
    if !declared && !Allotment::needs_figures(spec) {
        return;
    }
    let allotment = match Allotment::of(spec, &State::empty(&spec.cluster), &Found::new()) {
        Ok(a) => a,
        Err(errors) => {
            for e in errors {
                diags.push(e.at, e.message);
            }
            return;
        }
    };
    if !declared {
        return;
    }
    let r = report(spec, &allotment, &Found::new());
    for (i, row) in r.hosts.iter().enumerate() {
        if let Some(s) = &row.short {
            diags.push(
                format!("/hosts/{i}/capacity"),
                format!("{s}: give the host fewer clones (clones.per_host, images[].clones_per_host, images[].clones or images[].hosts), smaller clones, or raise backend.overcommit"),
            );
        }
    }
}

/// Whether `c` declares everything, so nothing is left to discover.
pub fn complete(c: Option<&Capacity>) -> bool {
    c.is_some_and(|c| c.vcpus.is_some() && c.memory.is_some() && c.disk.is_some())
}

/// Whether `plan` makes anything that takes a host's capacity (a create or a replace).
pub fn grows(plan: &Plan) -> bool {
    plan.changes
        .iter()
        .any(|c| matches!(c.action, Action::Create | Action::Replace))
}

/// The table for `spec` with the clones `allotment` places: what hosts with clones leave out
/// of their `capacity`, and `found` does not tell yet, is discovered through `backend` (and
/// added to `found`).
pub fn assess(
    spec: &Spec,
    allotment: &Allotment,
    backend: Option<&dyn Backend>,
    found: &mut Found,
) -> Report {
    let needs = needs(spec, allotment);
    if let Some(b) = backend {
        let ask: Vec<&str> = needs
            .iter()
            .zip(&spec.hosts)
            .filter(|((_, n), h)| {
                n.clones > 0 && !complete(h.capacity.as_ref()) && !found.contains_key(&h.name)
            })
            .map(|(_, h)| h.name.as_str())
            .collect();
        found.extend(discover_on(b, &ask));
    }
    table(spec, needs, found)
}

/// What `backend` finds on each of `hosts`, in parallel. A host that does not answer is
/// unknown, not short; one the stack cannot tell about (the sim stack) is left out.
pub fn discover_on(backend: &dyn Backend, hosts: &[&str]) -> Found {
    let found = in_parallel(hosts, |h| match backend.capacity(h) {
        Ok(Some(f)) => Some(Ok(f)),
        Ok(None) => None,
        Err(e) => Some(Err(match e.stderr.as_deref().map(str::trim) {
            Some(s) if !s.is_empty() => format!("{}: {s}", e.message),
            _ => e.message,
        })),
    });
    hosts
        .iter()
        .zip(found)
        .filter_map(|(h, f)| Some((h.to_string(), f?)))
        .collect()
}

/// Whether the table has anything to show: some host's figure is known, or unknown for a
/// reason.
pub fn known(r: &Report) -> bool {
    r.hosts.iter().any(|h| {
        h.unknown.is_some()
            || [h.vcpus, h.memory, h.disk]
                .iter()
                .any(|f| f.value.is_some())
    })
}

/// The shell script a stack runs on a host to discover its figures:
/// `sh -c SCRIPT sh dir ROOT OURS` (free space under the nearest existing directory of
/// ROOT, and what OURS takes) or `sh -c SCRIPT sh vg VG TAG` (the volume group's free
/// space, and the sizes of its volumes tagged TAG).
pub const DISCOVER: &str = r#"set -e
echo "vcpus $(nproc)"
sed -n 's/^MemTotal: *\([0-9]*\) kB$/memory_kib \1/p' /proc/meminfo
case "$1" in
dir)
  p=$2
  while [ ! -e "$p" ]; do p=$(dirname "$p"); done
  echo "free $(df -P -B1 "$p" | awk 'NR == 2 { print $4 }')"
  if [ -d "$3" ]; then echo "ours $(du -s -B1 "$3" | cut -f1)"; fi
  ;;
vg)
  echo "free $(vgs --noheadings --units b --nosuffix -o vg_free "$2" | tr -d ' ')"
  lvs --noheadings --units b --nosuffix -o lv_size -S "lv_tags=$3" "$2" | sed 's/^ */ours /'
  ;;
esac
"#;

/// Runs [`DISCOVER`] (`mode`, `a`, `b` as there) on `host` and parses what it printed: how
/// both real stacks implement [`Backend::capacity`].
pub fn discover(
    transport: &dyn Transport,
    host: &str,
    mode: &str,
    a: &str,
    b: &str,
) -> Result<Option<Figures>, BackendError> {
    let out = transport.run(host, &discover_argv(mode, a, b), DISCOVER_TIMEOUT)?;
    parse_discovery(&String::from_utf8_lossy(&out.stdout))
        .map(Some)
        .map_err(|e| BackendError::new(format!("on host {host}: {e}")))
}

/// How long a host may take to tell its CPUs, memory and free space (`du` of its files).
const DISCOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// The argument list of [`DISCOVER`].
fn discover_argv(mode: &str, a: &str, b: &str) -> Vec<String> {
    ["sh", "-c", DISCOVER, "sh", mode, a, b]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Parses what [`DISCOVER`] printed.
pub fn parse_discovery(out: &str) -> Result<Figures, String> {
    let mut vcpus = None;
    let mut memory = None;
    let mut free = None;
    let mut ours: u64 = 0;
    for line in out.lines() {
        let Some((key, value)) = line.trim().split_once(' ') else {
            continue;
        };
        let value: u64 = value
            .trim()
            .parse()
            .map_err(|_| format!("unexpected line {line:?} in the host's figures"))?;
        match key {
            "vcpus" => vcpus = Some(value),
            "memory_kib" => memory = Some(value * 1024),
            "free" => free = Some(value),
            "ours" => ours += value,
            _ => {}
        }
    }
    Ok(Figures {
        vcpus: vcpus
            .and_then(|v| u32::try_from(v).ok())
            .ok_or("no CPU count (nproc) in the host's figures")?,
        memory: memory.ok_or("no MemTotal in the host's /proc/meminfo")?,
        disk: free.map(|f| f + ours),
    })
}

/// The table as text, for `plan`: per host, needed of available.
pub fn render(r: &Report) -> String {
    // Need and figure in `show`'s unit; a host without clones and without figures shows `-`.
    let cell = |n: u64, f: &Figure, ratio: Option<f64>, show: fn(u64) -> String| match f.value {
        Some(v) => {
            let of = match ratio {
                Some(x) if x != 1.0 => format!("{} x {x:.1}", show(v)),
                _ => show(v),
            };
            let mark = if f.source == "spec" { "" } else { "*" };
            format!("{} of {of}{mark}", show(n))
        }
        None if n == 0 => "-".to_string(),
        None => format!("{} of ?", show(n)),
    };
    let mut rows = vec![[
        "host".to_string(),
        "clones".into(),
        "vcpus".into(),
        "memory".into(),
        "disk".into(),
    ]];
    for h in &r.hosts {
        rows.push([
            h.host.clone(),
            h.need.clones.to_string(),
            cell(h.need.vcpus, &h.vcpus, Some(r.overcommit.vcpus), |v| {
                v.to_string()
            }),
            cell(h.need.memory, &h.memory, Some(r.overcommit.memory), bytes),
            cell(h.need.disk, &h.disk, None, bytes),
        ]);
    }
    let mut width = [0usize; 5];
    for row in &rows {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut s = String::from("\nCapacity (needed of available; * discovered on the host):\n");
    for row in &rows {
        s.push_str("  ");
        for (i, (c, w)) in row.iter().zip(width).enumerate() {
            if i == 0 {
                s.push_str(&format!("{c:<w$}"));
            } else {
                s.push_str(&format!("  {c:>w$}"));
            }
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
    }
    for h in &r.hosts {
        if let Some(e) = &h.unknown {
            s.push_str(&format!("  {}: not discovered: {e}\n", h.host));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hosts `src` (the image's), `node01` and `node03` (with `capacity`); 12 clones of 2
    /// vCPUs, 2 GiB and 4 GiB of disk on each of the latter two.
    fn spec(capacity: serde_json::Value) -> Spec {
        let v = serde_json::json!({
            "version": 1, "cluster": "c", "backend": {"stack": "sim"},
            "hosts": [
                {"name": "src", "address": "10.0.0.1"},
                {"name": "node01", "address": "10.0.0.2"},
                {"name": "node03", "address": "10.0.0.3", "capacity": capacity}
            ],
            "images": [{"name": "base", "source_host": "src", "path": "/srv/base.img"}],
            "clones": {"per_host": 12, "vcpus": 2, "memory": "2GiB", "cow_size": "4GiB"}
        });
        Spec::from_value(&v).unwrap_or_else(|e| panic!("{e}"))
    }

    fn allotted(s: &Spec) -> Allotment {
        Allotment::of(s, &State::empty(&s.cluster), &Found::new()).unwrap()
    }

    #[test]
    fn needs_sum_clones_and_caches_per_host() {
        let s = spec(serde_json::json!({"vcpus": 8, "memory": "32GiB"}));
        let n = needs(&s, &allotted(&s));
        assert_eq!(n[0].1, Need::default(), "the source runs no clone");
        assert_eq!(
            n[2].1,
            Need {
                clones: 12,
                vcpus: 24,
                memory: 24 << 30,
                disk: (12 * 4 + 1) << 30
            }
        );
    }

    /// The spec's diagnostics, one per line.
    fn errors(v: &serde_json::Value) -> String {
        match Spec::from_value(v) {
            Err(crate::spec::SpecError::Invalid { diagnostics, .. }) => diagnostics
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
            other => panic!("not refused by its checks: {other:?}"),
        }
    }

    #[test]
    fn a_declared_capacity_too_small_is_refused_at_the_host() {
        let v = serde_json::json!({
            "version": 1, "cluster": "c", "backend": {"stack": "sim"},
            "hosts": [
                {"name": "src", "address": "10.0.0.1"},
                {"name": "node03", "address": "10.0.0.3",
                 "capacity": {"vcpus": 8, "memory": "16GiB", "disk": "1TiB"}}
            ],
            "images": [{"name": "base", "source_host": "src", "path": "/srv/base.img"}],
            "clones": {"per_host": 12, "vcpus": 2, "memory": "2GiB"}
        });
        let e = errors(&v);
        assert!(
            e.contains("/hosts/1/capacity: node03: 12 clones need 24 vCPUs and 24 GiB; it has 8 vCPUs x 4.0 and 16 GiB"),
            "{e}"
        );
        // Within the ratios it fits; disk is never overcommitted.
        let mut ok = v.clone();
        ok["hosts"][1]["capacity"]["memory"] = "24GiB".into();
        assert!(Spec::from_value(&ok).is_ok());
        let mut disk = ok.clone();
        disk["hosts"][1]["capacity"]["disk"] = "12GiB".into();
        let e = errors(&disk);
        assert!(
            e.contains("need 24 vCPUs, 24 GiB and 13 GiB of disk; it has 8 vCPUs x 4.0, 24 GiB and 12 GiB of disk"),
            "{e}"
        );
        let mut over = v.clone();
        over["backend"]["overcommit"] = serde_json::json!({"memory": 1.5});
        assert!(Spec::from_value(&over).is_ok());
        over["backend"]["overcommit"] = serde_json::json!({"vcpus": 2.0, "memory": 1.5});
        let e = errors(&over);
        assert!(e.contains("it has 8 vCPUs x 2.0 and 16 GiB x 1.5"), "{e}");
        over["backend"]["overcommit"] = serde_json::json!({"vcpus": 0});
        let e = errors(&over);
        assert!(e.contains("/backend/overcommit/vcpus"), "{e}");
    }

    #[test]
    fn discovered_figures_fill_what_the_spec_leaves_out() {
        let s = spec(serde_json::json!({"vcpus": 8, "memory": "24GiB"}));
        let mut found = HashMap::new();
        found.insert(
            "node01".to_string(),
            Ok(Figures {
                vcpus: 4,
                memory: 64 << 30,
                disk: Some(40 << 30),
            }),
        );
        found.insert("node03".to_string(), Err("host unreachable".to_string()));
        let r = report(&s, &allotted(&s), &found);
        let n1 = &r.hosts[1];
        assert_eq!(n1.vcpus.source, "discovered");
        assert_eq!(
            n1.short.as_deref(),
            Some("node01: 12 clones need 24 vCPUs, 24 GiB and 49 GiB of disk; it has 4 vCPUs x 4.0, 64 GiB and 40 GiB of disk")
        );
        let n3 = &r.hosts[2];
        assert_eq!((n3.vcpus.source, n3.disk.source), ("spec", "unknown"));
        assert_eq!(n3.short, None, "unknown figures are not judged");
        let text = render(&r);
        assert!(
            text.contains("node01      12  24 of 4 x 4.0*  24 GiB of 64 GiB*  49 GiB of 40 GiB*"),
            "{text}"
        );
        assert!(
            text.contains("node03: not discovered: host unreachable"),
            "{text}"
        );
    }

    #[test]
    fn discovery_output_parses() {
        let f = parse_discovery("vcpus 2\nmemory_kib 24683584\nfree 73871388672\nours 1048576\n")
            .unwrap();
        assert_eq!(
            f,
            Figures {
                vcpus: 2,
                memory: 24683584 * 1024,
                disk: Some(73871388672 + 1048576)
            }
        );
        // lvs prints one line per tagged volume.
        let f = parse_discovery("vcpus 8\nmemory_kib 1024\nfree 100\nours 10\nours 20\n").unwrap();
        assert_eq!(f.disk, Some(130));
        assert!(parse_discovery("memory_kib 1\n")
            .unwrap_err()
            .contains("nproc"));
        assert!(parse_discovery("vcpus x\n")
            .unwrap_err()
            .contains("unexpected line"));
    }

    #[test]
    fn the_discovery_script_reads_this_machine() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), vec![1u8; 1 << 20]).unwrap();
        let root = dir.path().join("not/yet");
        let out = std::process::Command::new("sh")
            .args(&discover_argv("dir", root.to_str().unwrap(), dir.path().to_str().unwrap())[1..])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let f = parse_discovery(&String::from_utf8_lossy(&out.stdout)).unwrap();
        let cpus = std::thread::available_parallelism().unwrap().get() as u32;
        assert_eq!(f.vcpus, cpus);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let kib: u64 = meminfo
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(f.memory, kib * 1024);
        assert!(f.disk.unwrap() >= 1 << 20, "{f:?}");
    }

    #[test]
    fn bytes_read_like_people_write_them() {
        assert_eq!(bytes(24 << 30), "24 GiB");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
        assert_eq!(bytes(512 << 20), "512 MiB");
        assert_eq!(bytes(12), "12 B");
    }
}
