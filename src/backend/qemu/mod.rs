//! The qemu stack: qcow2 files, qemu-storage-daemon NBD relays and QEMU guests.
//!
//! Layout on each host, under `<root>/<cluster>/<host>/<image>/`:
//! - `relay.pid`, `relay.qmp`: one qemu-storage-daemon per host and image (the "relay"). Its
//!   nodes are the `session` (an NBD client of the parent's export), the `cache` (a qcow2 in
//!   the cache `lv` file, backed by the session, behind a copy-on-read filter, exported as
//!   `local` to this host's clones) and the `target` (the image, or the cache, exported to
//!   children). Resources are added and removed over QMP; the daemon starts with the first
//!   and quits with the last.
//! - `lv-cache.img`, `lv-cow-<n>.img`: the `lv`s, sparse files. A `snapshot` is a qcow2
//!   overlay written into its cow `lv`, backed by the relay's `local` export.
//! - `vm-<n>.pid`, `vm-<n>.qmp`, `vm-<n>.log`: a `domain`, a daemonized QEMU guest whose
//!   serial console goes to the log.

mod disk;
mod guest;
mod relay;
mod seed;

pub use guest::console_path;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::ssh::{Endpoint, SshTransport};
use super::transport::Local;
use super::{in_parallel, Backend, BackendError, Observed, Target, Transport};
use crate::plan::{Action, OpKind, Plan};
use crate::resource::{Addr, Desired, Kind, TargetAttrs};
use crate::spec::{Accel, Ready, Spec, Transport as TransportKind};
use crate::state::State;

/// How long one command may take before it counts as hung.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a QMP command may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(60);
/// A read (refresh) gives up sooner: a monitor that does not answer makes the object
/// unknown, and the rest of the refresh goes on.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A host's accelerator, probed once: `kvm`, `tcg`, or why the probe could not be made.
type AccelVerdict = OnceLock<Result<&'static str, BackendError>>;

pub struct QemuStack {
    transport: Box<dyn Transport>,
    cluster: String,
    /// `clones.networks`, for the taps of clones the sweep stops.
    networks: Vec<String>,
    /// `<root>/<cluster>`, absolute.
    base: PathBuf,
    accel: Accel,
    ready: Option<Ready>,
    /// Every (host, image) pair the spec knows, for the final sweep.
    pairs: Vec<(String, String)>,
    /// Pairs this run deleted something on: the final sweep prunes their directories too,
    /// also when the spec no longer names the host or image.
    deleted_on: Mutex<BTreeSet<(String, String)>>,
    /// Per host (one entry, "", when every host is this machine): the probe's verdict, or
    /// why it could not be made.
    resolved_accel: Mutex<HashMap<String, Arc<AccelVerdict>>>,
    /// With `backend.netns`: each host's namespace.
    netns: Option<super::netns::Netns>,
    /// One lock per relay: its operations never interleave on its monitor.
    relay_locks: Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>,
    /// The model's seconds per kind (the spec's `estimate`), for the executor's priorities.
    times: crate::model::OpTimes,
    imports: super::import::Imports,
}

/// A path from a spec: relative paths are relative to vmthunder's working directory.
pub fn absolute(path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    }
}

impl QemuStack {
    pub fn new(spec: &Spec) -> Result<QemuStack, BackendError> {
        let mut pairs = Vec::new();
        for image in &spec.images {
            pairs.push((image.source_host.clone(), image.name.clone()));
            for h in spec.image_hosts(image) {
                pairs.push((h.to_string(), image.name.clone()));
            }
        }
        let netns = spec.backend.netns.then(|| super::netns::Netns::new(spec));
        let transport: Box<dyn Transport> = match (spec.backend.transport, &netns) {
            (TransportKind::Ssh, _) => {
                Box::new(SshTransport::new(Endpoint::from_spec(spec)).map_err(|e| {
                    BackendError::new(format!("cannot prepare the ssh transport: {e}"))
                })?)
            }
            (_, Some(n)) => Box::new(n.transport()),
            (_, None) => Box::new(Local { netns: None }),
        };
        Ok(QemuStack {
            transport,
            cluster: spec.cluster.clone(),
            networks: spec.clones.networks.clone(),
            netns,
            base: absolute(&spec.backend.root).join(&spec.cluster),
            accel: spec.backend.accel,
            ready: spec.clones.ready.clone(),
            pairs,
            deleted_on: Mutex::new(BTreeSet::new()),
            resolved_accel: Mutex::new(HashMap::new()),
            relay_locks: Mutex::new(HashMap::new()),
            times: crate::model::OpTimes::new(&spec.estimate),
            imports: super::import::Imports::new(spec),
        })
    }

    fn dir(&self, host: &str, image: &str) -> PathBuf {
        self.base.join(host).join(image)
    }

    fn relay_lock(&self, dir: &Path) -> Arc<Mutex<()>> {
        self.relay_locks
            .lock()
            .expect("lock")
            .entry(dir.to_path_buf())
            .or_default()
            .clone()
    }

    /// The pid in `pidfile` if that process runs and is the one that wrote it. An error
    /// only when the host could not be asked.
    fn running_pid(&self, host: &str, pidfile: &Path) -> Result<Option<u32>, BackendError> {
        let bytes = match self.transport.read_file(host, pidfile) {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(None),
            Err(e) => return Err(self.io_error("cannot read", host, pidfile, e)),
        };
        let Ok(pid) = String::from_utf8_lossy(&bytes).trim().parse::<u32>() else {
            return Ok(None);
        };
        let alive = self
            .transport
            .process_alive(host, pid, &pidfile.to_string_lossy())
            .map_err(|e| self.io_error("cannot inspect the process of", host, pidfile, e))?;
        Ok(alive.then_some(pid))
    }

    fn io_error(&self, what: &str, host: &str, path: &Path, e: std::io::Error) -> BackendError {
        BackendError::io(what, host, path, e)
    }

    /// Removes the host-image directory, the host directory and the cluster directory when
    /// they are empty. Only from `finish`, when no operation runs: creates make these
    /// directories and then write into them in separate commands, so a prune beside them (a
    /// delete's, on the same host) could remove a directory a create had just made, and the
    /// create's write then failed (issue 15).
    fn prune_dirs(&self, host: &str, image: &str) {
        let dir = self.dir(host, image);
        let t = &self.transport;
        if t.remove_dir_if_empty(host, &dir).unwrap_or(false)
            && t.remove_dir_if_empty(host, dir.parent().expect("host dir"))
                .unwrap_or(false)
        {
            let _ = t.remove_dir_if_empty(host, &self.base);
        }
    }
}

/// What one host needs before a plan can start there.
#[derive(Default)]
struct Needs {
    tools: BTreeSet<&'static str>,
    /// (what, resource, absolute path)
    files: Vec<(&'static str, Addr, String)>,
}

impl Needs {
    fn file(&mut self, what: &'static str, addr: &Addr, path: &str) {
        let abs = absolute(path).to_string_lossy().into_owned();
        if !self.files.iter().any(|f| f.2 == abs) {
            self.files.push((what, addr.clone(), abs));
        }
    }
}

impl QemuStack {
    /// Checks one host's needs with one command; a host that cannot be reached is left to
    /// fail its own operations.
    fn check_host(&self, host: &str, n: &Needs) -> Vec<String> {
        let mut argv = args(&[
            "sh",
            "-c",
            r#"i=0; for a; do i=$((i+1)); case $a in t:*) command -v -- "${a#t:}" >/dev/null 2>&1 || echo $i;; f:*) [ -r "${a#f:}" ] || echo $i;; esac; done"#,
            "sh",
        ]);
        let tools: Vec<&str> = n.tools.iter().copied().collect();
        argv.extend(tools.iter().map(|t| format!("t:{t}")));
        argv.extend(n.files.iter().map(|f| format!("f:{}", f.2)));
        let out = match self.transport.run(host, &argv, COMMAND_TIMEOUT) {
            Ok(o) => o,
            Err(e) if e.unreachable => {
                tracing::debug!(host, error = %e.status, "preflight skipped an unreachable host");
                return Vec::new();
            }
            Err(e) => return vec![BackendError::from(e).to_string()],
        };
        let local = self.transport.same_machine();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse::<usize>().ok())
            .filter_map(|i| {
                let i = i.checked_sub(1)?;
                Some(match tools.get(i) {
                    Some(tool) if local => format!(
                        "`{tool}` is not installed on this machine; run scripts/setup.sh (it installs QEMU 10 from bookworm-backports)"
                    ),
                    Some(tool) => format!(
                        "`{tool}` is not installed on host {host}; install QEMU 10 there (Debian: qemu-utils, qemu-system-x86)"
                    ),
                    None => {
                        let (what, addr, path) = n.files.get(i - tools.len())?;
                        format!(
                            "{addr}: the {what} `{path}` cannot be read on host {}",
                            if local { &addr.host } else { host }
                        )
                    }
                })
            })
            .collect()
    }
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Removes the files of a host-image directory that belong to resources of `kind` which state
/// does not record (left by a run killed between making one and recording it). `owner` tells
/// a file's resource number (`Some(None)` for the unnumbered one) or that it is not of this
/// kind (`None`).
fn sweep_files(
    stack: &QemuStack,
    host: &str,
    image: &str,
    recorded: &[&Addr],
    names: &[String],
    kind: Kind,
    owner: impl Fn(&str) -> Option<Option<u32>>,
) {
    let dir = stack.dir(host, image);
    for name in names {
        let Some(n) = owner(name) else { continue };
        if !recorded.iter().any(|a| a.kind == kind && a.n == n) {
            tracing::info!(host, file = %name, %kind, "removing a file that state does not record");
            let _ = stack.transport.remove_file(host, &dir.join(name));
        }
    }
}

/// The number in a per-clone file name such as `vm-3.pid` (`numbered(name, "vm-", ".pid")`).
fn numbered(name: &str, prefix: &str, suffix: &str) -> Option<u32> {
    name.strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

impl Backend for QemuStack {
    fn estimate(&self, kind: Kind, op: OpKind) -> Duration {
        // The model's times (the spec's `estimate`, else its defaults for this stack), as
        // `plan --estimate` uses them.
        Duration::from_secs_f64(self.times.secs(kind, op))
    }

    fn preflight(&self, plan: &Plan) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        // What each host must have: tools, and the files it reads (the image on its source
        // host, the kernel on every host that boots clones).
        let mut needs: BTreeMap<&str, Needs> = BTreeMap::new();
        for c in &plan.changes {
            // The CA is made here, on no host.
            if !matches!(c.action, Action::Create | Action::Replace) || c.addr.kind == Kind::Ca {
                continue;
            }
            let n = needs.entry(&c.addr.host).or_default();
            n.tools.insert("qemu-img");
            match &c.after {
                Some(Desired::Target(TargetAttrs::Image { path, .. })) => {
                    n.tools.insert("qemu-storage-daemon");
                    // An imported image's file is made by its import, before the target.
                    if !self.imports.has(&c.addr.image) {
                        n.file("image file", &c.addr, path);
                    }
                }
                Some(Desired::Image(_)) => {
                    n.tools.insert("sha256sum");
                }
                Some(Desired::Domain(d)) => {
                    n.tools.insert("qemu-system-x86_64");
                    match &d.boot {
                        Some(b) => {
                            n.file("kernel", &c.addr, &b.kernel);
                            if let Some(i) = &b.initrd {
                                n.file("initrd", &c.addr, i);
                            }
                        }
                        None if d.firmware == crate::resource::Firmware::Uefi => {
                            n.file("UEFI firmware (Debian: ovmf)", &c.addr, guest::OVMF_CODE);
                            n.file(
                                "UEFI variables template (Debian: ovmf)",
                                &c.addr,
                                guest::OVMF_VARS,
                            );
                        }
                        None => {}
                    }
                    if !d.nics.is_empty() {
                        n.tools.insert("ip");
                    }
                    if self.ready.as_ref().is_some_and(|r| r.tcp.is_some()) {
                        n.tools.insert("bash");
                    }
                }
                Some(Desired::Seed(_)) => {
                    n.tools.insert("genisoimage");
                }
                Some(Desired::Bridge(_)) => {
                    n.tools.insert("ip");
                }
                Some(Desired::Vxlan(_)) => {
                    n.tools.insert("ip");
                    n.tools.insert("bridge");
                }
                Some(_) => {
                    n.tools.insert("qemu-storage-daemon");
                }
                None => {}
            }
        }
        if self.transport.same_machine() {
            // Every host is this machine: one check of everything.
            let mut all = Needs::default();
            for n in std::mem::take(&mut needs).into_values() {
                all.tools.extend(n.tools);
                for f in n.files {
                    if !all.files.iter().any(|g| g.2 == f.2) {
                        all.files.push(f);
                    }
                }
            }
            if !all.tools.is_empty() || !all.files.is_empty() {
                needs.insert("localhost", all);
            }
        }
        let hosts: Vec<(&str, &Needs)> = needs.iter().map(|(h, n)| (*h, n)).collect();
        let found = in_parallel(&hosts, |(h, n)| self.check_host(h, n));
        problems.extend(found.into_iter().flatten());
        problems.extend(self.imports.preflight(self.transport.as_ref(), plan));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    fn read(&self, t: Target<'_>, observed: &Observed) -> Result<Option<Observed>, BackendError> {
        match t.addr.kind {
            Kind::Lv => disk::read_lv(self, t),
            Kind::Snapshot => disk::read_snapshot(self, t, observed),
            Kind::Domain => guest::read(self, t),
            Kind::Session | Kind::Cache | Kind::Target => relay::read(self, t),
            Kind::Seed => seed::read(self, t),
            Kind::Bridge | Kind::Vxlan => super::net::read(self.transport.as_ref(), t),
            Kind::Ca | Kind::Cert => {
                super::tls::read(self.transport.as_ref(), &self.base, t, observed)
            }
            Kind::Image => super::import::read(self.transport.as_ref(), t, observed),
        }
    }

    fn create(&self, t: Target<'_>, deps: &[(Addr, Observed)]) -> Result<Observed, BackendError> {
        if t.addr.kind == Kind::Ca {
            return super::tls::create(self.transport.as_ref(), &self.base, t, deps);
        }
        if let Some(n) = &self.netns {
            n.ensure(&t.addr.host)?;
        }
        match t.addr.kind {
            Kind::Lv => disk::create_lv(self, t),
            Kind::Snapshot => disk::create_snapshot(self, t, deps),
            Kind::Domain => guest::create(self, t, deps),
            Kind::Session | Kind::Cache | Kind::Target => relay::create(self, t, deps),
            Kind::Seed => seed::create(self, t),
            Kind::Bridge | Kind::Vxlan => super::net::create(self.transport.as_ref(), t),
            Kind::Ca | Kind::Cert => {
                super::tls::create(self.transport.as_ref(), &self.base, t, deps)
            }
            Kind::Image => super::import::create(&self.imports, self.transport.as_ref(), t),
        }
    }

    fn update(
        &self,
        t: Target<'_>,
        _before: &Desired,
        observed: &Observed,
        deps: &[(Addr, Observed)],
    ) -> Result<Observed, BackendError> {
        match t.addr.kind {
            Kind::Session | Kind::Cache | Kind::Target => relay::update(self, t, observed, deps),
            Kind::Snapshot => disk::update_snapshot(self, t, observed, deps),
            Kind::Domain => guest::resume(self, t, observed),
            _ => Err(BackendError::new(format!(
                "internal error: {} cannot be updated in place",
                t.addr
            ))),
        }
    }

    fn delete(&self, t: Target<'_>, observed: &Observed) -> Result<(), BackendError> {
        let r = match t.addr.kind {
            Kind::Lv => disk::delete_lv(self, t),
            Kind::Snapshot => disk::delete_snapshot(self, t, observed),
            Kind::Domain => guest::delete(self, t),
            Kind::Session | Kind::Cache | Kind::Target => relay::delete(self, t, observed),
            Kind::Seed => seed::delete(self, t),
            Kind::Bridge | Kind::Vxlan => {
                // Devices, not files: nothing to prune afterwards.
                return super::net::delete(self.transport.as_ref(), t);
            }
            Kind::Ca => return Ok(()),
            // Its directory goes now (it is its own), the host's in `finish`.
            Kind::Cert => super::tls::delete(self.transport.as_ref(), &self.base, t),
            Kind::Image => super::import::delete(&self.imports, self.transport.as_ref(), t),
        };
        if r.is_ok() {
            // Its directories go in `finish`, not now: creates may be running beside it.
            self.deleted_on
                .lock()
                .expect("lock")
                .insert((t.addr.host.to_string(), t.addr.image.to_string()));
        }
        r
    }

    fn capacity(&self, host: &str) -> Result<Option<crate::capacity::Figures>, BackendError> {
        let (root, ours) = (self.base.to_string_lossy(), self.base.join(host));
        let t = self.transport.as_ref();
        crate::capacity::discover(t, host, "dir", &root, &ours.to_string_lossy())
    }

    fn finish(&self, state: &State) -> Result<(), BackendError> {
        let mut recorded: HashMap<(&str, &str), Vec<&Addr>> = HashMap::new();
        for r in &state.resources {
            recorded
                .entry((&*r.addr.host, &*r.addr.image))
                .or_default()
                .push(&r.addr);
        }
        // Every operation of the run has ended (a hard interrupt skips `finish`): nothing
        // creates in these directories while they are swept and pruned.
        let mut extra = std::mem::take(&mut *self.deleted_on.lock().expect("lock"));
        for p in &self.pairs {
            extra.remove(p);
        }
        let mut pairs = self.pairs.clone();
        pairs.extend(extra);
        let swept = in_parallel(&pairs, |(host, image)| {
            let addrs = recorded
                .get(&(host.as_str(), image.as_str()))
                .cloned()
                .unwrap_or_default();
            let swept = relay::sweep(self, host, image, &addrs).and_then(|()| {
                // One listing of the host-image directory serves both file sweeps.
                let dir = self.dir(host, image);
                let names = self.transport.list_dir(host, &dir).unwrap_or_default();
                guest::sweep(self, host, image, &addrs, &names)?;
                seed::sweep(self, host, image, &addrs, &names)?;
                disk::sweep(self, host, image, &addrs, &names)
            });
            match swept {
                // Its operations reported it already; it is swept when it answers again.
                Err(e) if e.unreachable_host.is_some() => {
                    tracing::debug!(host, error = %e, "sweep skipped an unreachable host");
                    Ok(())
                }
                r => r.map(|()| self.prune_dirs(host, image)),
            }
        });
        swept.into_iter().collect::<Result<(), _>>()?;
        if let Some(n) = &self.netns {
            let keep: std::collections::HashSet<&str> =
                state.resources.iter().map(|r| &*r.addr.host).collect();
            n.prune(&keep)?;
        }
        if self.transport.same_machine()
            && !state.resources.iter().any(|r| r.addr.kind == Kind::Domain)
        {
            let _ = std::fs::remove_file(self.base.join(guest::ACCEL_CACHE));
            let _ = self.transport.remove_dir_if_empty("localhost", &self.base);
            // The root too, when this cluster was all that was in it.
            let _ = self
                .transport
                .remove_dir_if_empty("localhost", self.base.parent().expect("root"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::LvAttrs;
    use crate::size::Size;

    fn lv(host: &str, n: u32) -> (Addr, Desired) {
        (
            Addr::new(Kind::Lv, &host.into(), &"img".into(), Some(n)),
            Desired::Lv(LvAttrs {
                purpose: crate::resource::LvPurpose::Cow,
                size: Size(1 << 20),
            }),
        )
    }

    /// Issue 15: a delete that pruned its host's directory beside a create that had made it
    /// but not yet written into it failed the create. Deletes leave directories alone; the
    /// end-of-run sweep removes them, also on hosts the spec no longer names.
    #[test]
    fn deletes_leave_directories_to_the_end_of_run_sweep() {
        let root = tempfile::tempdir().unwrap();
        let spec = Spec::from_value(&serde_json::json!({
            "version": 1, "cluster": "p",
            "backend": {"stack": "qemu", "root": root.path()},
            "hosts": [{"name": "src", "address": "127.0.0.1"},
                      {"name": "n01", "address": "127.0.0.2"}],
            "images": [{"name": "img", "source_host": "src", "path": "/i.raw", "format": "raw"}],
        }))
        .unwrap();
        let stack = QemuStack::new(&spec).unwrap();
        let base = root.path().join("p");
        // n01 is in the spec; "old" was removed from it, and its lv is being destroyed.
        for host in ["n01", "old"] {
            let (addr, desired) = lv(host, 0);
            let t = Target::new(&addr, &desired);
            stack.create(t, &[]).unwrap();
            assert!(base.join(host).join("img/lv-cow-0.img").exists());
            stack.delete(t, &Observed::new()).unwrap();
            // Empty, and kept: a create on this host may have just made it.
            let dir = base.join(host).join("img");
            assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "{host}");
        }
        stack.finish(&State::empty("p")).unwrap();
        assert!(
            !base.exists(),
            "{:?}",
            std::fs::read_dir(&base).map(|d| d.count())
        );
    }
}
