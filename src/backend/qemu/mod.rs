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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::transport::Local;
use super::{Backend, BackendError, Observed, Target, Transport};
use crate::plan::{Action, OpKind, Plan};
use crate::resource::{Addr, Desired, Kind, TargetAttrs};
use crate::spec::{Accel, Ready, Spec};
use crate::state::State;

/// How long one command may take before it counts as hung.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a QMP command may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(60);
/// A read (refresh) gives up sooner: a monitor that does not answer makes the object
/// unknown, and the rest of the refresh goes on.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

pub struct QemuStack {
    transport: Box<dyn Transport>,
    /// `<root>/<cluster>`, absolute.
    base: PathBuf,
    accel: Accel,
    ready: Option<Ready>,
    /// Every (host, image) pair the spec knows, for the final sweep.
    pairs: Vec<(String, String)>,
    resolved_accel: OnceLock<&'static str>,
    /// With `backend.netns`: each host's namespace.
    netns: Option<super::netns::Netns>,
    /// One lock per relay: its operations never interleave on its monitor.
    relay_locks: Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>,
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
        let transport: Box<dyn Transport> = match &netns {
            Some(n) => Box::new(n.transport()),
            None => Box::new(Local { netns: None }),
        };
        Ok(QemuStack {
            transport,
            netns,
            base: absolute(&spec.backend.root).join(&spec.cluster),
            accel: spec.backend.accel,
            ready: spec.clones.ready.clone(),
            pairs,
            resolved_accel: OnceLock::new(),
            relay_locks: Mutex::new(HashMap::new()),
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

    /// The pid in `pidfile` if that process runs and is the one that wrote it.
    fn running_pid(&self, host: &str, pidfile: &Path) -> Option<u32> {
        let bytes = self.transport.read_file(host, pidfile).ok()??;
        let pid: u32 = String::from_utf8_lossy(&bytes).trim().parse().ok()?;
        self.transport
            .process_alive(host, pid, &pidfile.to_string_lossy())
            .then_some(pid)
    }

    fn io_error(&self, what: &str, host: &str, path: &Path, e: std::io::Error) -> BackendError {
        BackendError::new(format!("on host {host}: {what} `{}`: {e}", path.display()))
    }

    /// Removes the host-image directory, the host directory and the cluster directory when
    /// they are empty.
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

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
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
        // Rough times on this stack: a guest boots to its ready line in seconds (TCG), a
        // session may start a relay, the rest are QMP commands and file operations.
        Duration::from_millis(match (op, kind) {
            (OpKind::Create, Kind::Domain) => 5_000,
            (OpKind::Delete, Kind::Domain) => 500,
            (OpKind::Create, Kind::Session) => 200,
            (OpKind::Create, Kind::Snapshot) => 100,
            (_, Kind::Lv) => 10,
            _ => 50,
        })
    }

    fn preflight(&self, plan: &Plan) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        let mut need_daemon = false;
        let mut need_qemu = false;
        let mut checked: Vec<PathBuf> = Vec::new();
        let mut check_file = |what: &str, addr: &Addr, path: &str, problems: &mut Vec<String>| {
            let abs = absolute(path);
            if checked.contains(&abs) {
                return;
            }
            match std::fs::File::open(&abs) {
                Ok(_) => checked.push(abs),
                Err(e) => problems.push(format!(
                    "{addr}: the {what} `{}` cannot be read on host {}: {e}",
                    abs.display(),
                    addr.host
                )),
            }
        };
        for c in &plan.changes {
            if !matches!(c.action, Action::Create | Action::Replace) {
                continue;
            }
            match &c.after {
                Some(Desired::Target(TargetAttrs::Image { path, .. })) => {
                    need_daemon = true;
                    check_file("image file", &c.addr, path, &mut problems);
                }
                Some(Desired::Domain(d)) => {
                    need_qemu = true;
                    match &d.boot {
                        Some(b) => {
                            check_file("kernel", &c.addr, &b.kernel, &mut problems);
                            if let Some(i) = &b.initrd {
                                check_file("initrd", &c.addr, i, &mut problems);
                            }
                        }
                        None => problems.push(format!(
                            "{}: the qemu stack boots clones from a kernel: set clones.boot.kernel in the spec (scripts/build-guest.sh builds one)",
                            c.addr
                        )),
                    }
                }
                Some(_) => need_daemon = true,
                None => {}
            }
        }
        let mut tools = vec!["qemu-img"];
        if need_daemon {
            tools.push("qemu-storage-daemon");
        }
        if need_qemu {
            tools.push("qemu-system-x86_64");
        }
        for tool in tools {
            if self
                .transport
                .run("localhost", &args(&[tool, "--version"]), COMMAND_TIMEOUT)
                .is_err()
            {
                problems.push(format!(
                    "`{tool}` is not installed on this machine; run scripts/setup.sh (it installs QEMU 10 from bookworm-backports)"
                ));
            }
        }
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
        }
    }

    fn create(&self, t: Target<'_>, deps: &[(Addr, Observed)]) -> Result<Observed, BackendError> {
        if let Some(n) = &self.netns {
            n.ensure(&t.addr.host)?;
        }
        match t.addr.kind {
            Kind::Lv => disk::create_lv(self, t),
            Kind::Snapshot => disk::create_snapshot(self, t, deps),
            Kind::Domain => guest::create(self, t, deps),
            Kind::Session | Kind::Cache | Kind::Target => relay::create(self, t, deps),
        }
    }

    fn delete(&self, t: Target<'_>, observed: &Observed) -> Result<(), BackendError> {
        let r = match t.addr.kind {
            Kind::Lv => disk::delete_lv(self, t),
            Kind::Snapshot => disk::delete_snapshot(self, t, observed),
            Kind::Domain => guest::delete(self, t),
            Kind::Session | Kind::Cache | Kind::Target => relay::delete(self, t, observed),
        };
        if r.is_ok() {
            self.prune_dirs(&t.addr.host, &t.addr.image);
        }
        r
    }

    fn finish(&self, state: &State) -> Result<(), BackendError> {
        let mut recorded: HashMap<(&str, &str), Vec<&Addr>> = HashMap::new();
        for r in &state.resources {
            recorded
                .entry((&*r.addr.host, &*r.addr.image))
                .or_default()
                .push(&r.addr);
        }
        for (host, image) in &self.pairs {
            let addrs = recorded
                .get(&(host.as_str(), image.as_str()))
                .cloned()
                .unwrap_or_default();
            relay::sweep(self, host, image, &addrs)?;
            guest::sweep(self, host, image, &addrs)?;
            disk::sweep(self, host, image, &addrs)?;
            self.prune_dirs(host, image);
        }
        if let Some(n) = &self.netns {
            let keep: std::collections::HashSet<&str> =
                state.resources.iter().map(|r| &*r.addr.host).collect();
            n.prune(&keep)?;
        }
        if !state.resources.iter().any(|r| r.addr.kind == Kind::Domain) {
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
