//! The linux stack: LVM, tgt (or LIO) iSCSI targets, open-iscsi sessions, writethrough dm-cache,
//! dm-snapshot and libvirt, on real hosts reached over SSH (or this machine).
//!
//! Per host and image, bottom-up: `lv` (cache data + metadata volumes, or a clone's
//! copy-on-write volume), `session` (a login to the parent's target), `cache` (dm-cache over
//! the session's disk), `target` (tgt export of the image file or of the cache), `snapshot`
//! (dm-snapshot over the cache), `domain` (libvirt). Every command is an argument vector
//! built by a function of its module, and every read parses the tool's machine output
//! (`lvs` JSON, `dmsetup info -c` columns) or its fixed text format (tgtadm, iscsiadm, virsh):
//! those builders and parsers are unit-tested against output captured from the real tools
//! (`fixtures/`, each test naming the version), the whole stack end to end in guest VMs
//! (`tests/linux.rs`).

mod dm;
mod iscsi;
mod lio;
mod lvm;
pub mod names;
mod secret;
mod tgt;
mod virsh;

pub use virsh::console_log;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::ssh::{Endpoint, SshTransport};
use super::transport::Local;
use super::{
    dep_attr, in_parallel, Backend, BackendError, CommandError, Observed, Target, Transport,
};
use crate::plan::{Action, OpKind, Plan};
use crate::resource::{Addr, Desired, Kind, TargetAttrs};
use crate::spec::{Accel, IscsiTarget, Spec, Transport as TransportKind};
use crate::state::State;

/// How long one command may take before it counts as hung (a login waits for udev, an
/// lvcreate for its wipe).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

pub struct LinuxStack {
    transport: Box<dyn Transport>,
    cluster: String,
    /// `<root>/<cluster>`: where each host keeps its clones' cloud-init seeds.
    base: std::path::PathBuf,
    vg: String,
    accel: Accel,
    iscsi_target: IscsiTarget,
    /// Per host, a lock for its target daemon (target ids are picked from what it shows,
    /// and accounts are made and bound in steps) and one for its iSCSI node records.
    host_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    times: crate::model::OpTimes,
    imports: crate::backend::import::Imports,
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The exit status of a failed command, when it ran.
fn exit_code(e: &CommandError) -> Option<i32> {
    e.status.strip_prefix("exited with status ")?.parse().ok()
}

impl LinuxStack {
    pub fn new(spec: &Spec) -> Result<LinuxStack, BackendError> {
        let transport: Box<dyn Transport> = match spec.backend.transport {
            TransportKind::Ssh => {
                Box::new(SshTransport::new(Endpoint::from_spec(spec)).map_err(|e| {
                    BackendError::new(format!("cannot prepare the ssh transport: {e}"))
                })?)
            }
            TransportKind::Local => Box::new(Local { netns: None }),
        };
        Ok(LinuxStack {
            transport,
            cluster: spec.cluster.clone(),
            base: crate::backend::qemu::absolute(&spec.backend.root).join(&spec.cluster),
            vg: spec
                .backend
                .volume_group
                .clone()
                .ok_or_else(|| BackendError::new("the linux stack needs backend.volume_group"))?,
            accel: spec.backend.accel,
            iscsi_target: spec.backend.iscsi_target,
            host_locks: Mutex::new(HashMap::new()),
            times: crate::model::OpTimes::new(&spec.estimate),
            imports: crate::backend::import::Imports::new(spec),
        })
    }

    /// Runs a command on `host`; its standard output.
    fn run(&self, host: &str, argv: &[String]) -> Result<String, BackendError> {
        self.attempt(host, argv)?.map_err(BackendError::from)
    }

    /// Runs a command whose failure the caller looks at: `Err` only when the host could not
    /// be reached, `Ok(Err)` when the command failed.
    fn attempt(
        &self,
        host: &str,
        argv: &[String],
    ) -> Result<Result<String, CommandError>, BackendError> {
        self.attempt_within(host, argv, COMMAND_TIMEOUT)
    }

    /// [`LinuxStack::attempt`] with a bound of its own: a command that may wait on a host
    /// that no longer answers.
    fn attempt_within(
        &self,
        host: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<Result<String, CommandError>, BackendError> {
        match self.transport.run(host, argv, timeout) {
            Ok(o) => Ok(Ok(String::from_utf8_lossy(&o.stdout).into_owned())),
            Err(e) if e.unreachable => Err(e.into()),
            Err(e) => Ok(Err(e)),
        }
    }

    /// The lock of `host`'s target daemon.
    fn tgt_lock(&self, host: &str) -> Arc<Mutex<()>> {
        self.lock_of(host.to_string())
    }

    /// The lock of `host`'s open-iscsi node records: a discovery rewrites the records of
    /// every target at the portal, so one session's settings are not made while another's
    /// discovery runs.
    fn node_lock(&self, host: &str) -> Arc<Mutex<()>> {
        self.lock_of(format!("{host} iscsi nodes"))
    }

    fn lock_of(&self, key: String) -> Arc<Mutex<()>> {
        self.host_locks
            .lock()
            .expect("lock")
            .entry(key)
            .or_default()
            .clone()
    }

    /// The IQN of the image version a target exports (either implementation).
    fn target_iqn(
        &self,
        t: Target<'_>,
        deps: Option<&[(Addr, Observed)]>,
        recorded: &Observed,
    ) -> Result<String, BackendError> {
        match t.desired {
            Desired::Target(TargetAttrs::Image { version, .. }) => Ok(names::iqn(
                &self.cluster,
                &t.addr.image,
                version.as_deref().unwrap_or("1"),
            )),
            // A relay exports what it receives, under the same name.
            _ => match deps {
                Some(d) => Ok(dep_attr(d, Kind::Cache, "iqn")?.to_string()),
                None => recorded
                    .get("iqn")
                    .and_then(|v| v.as_str())
                    .map(String::from)
                    .ok_or_else(|| {
                        BackendError::new(format!("{}: no IQN recorded for it", t.addr))
                    }),
            },
        }
    }
}

/// Holds a lock (a poisoned one too: the daemon's state is re-read under it anyway).
fn hold(lock: &Mutex<()>) -> MutexGuard<'_, ()> {
    lock.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a target listens (either implementation).
fn address(t: Target<'_>) -> &str {
    match t.desired {
        Desired::Target(TargetAttrs::Image { address, .. })
        | Desired::Target(TargetAttrs::Cache { address, .. }) => address,
        _ => unreachable!("target attributes"),
    }
}

/// The refusal to delete a target that initiators are still logged in to (either
/// implementation): `who` names them.
fn still_in_use(t: Target<'_>, iqn: &str, who: &[String]) -> BackendError {
    BackendError::new(format!(
        "{}: refusing to delete target {iqn} on host {}: {} still logged in: {}. Delete their sessions in the same apply, or log them out (iscsiadm -m node -T {iqn} --logout on each)",
        t.addr,
        t.addr.host,
        if who.len() == 1 { "an initiator is" } else { "initiators are" },
        who.join(", ")
    ))
}

/// What each host needs, by the kinds it gets.
fn tools(kind: Kind, target: IscsiTarget) -> &'static [&'static str] {
    match (kind, target) {
        (Kind::Lv, _) => &["lvs", "lvcreate", "lvremove"],
        (Kind::Session, _) => &["iscsiadm", "udevadm", "awk"],
        (Kind::Cache | Kind::Snapshot, _) => &["dmsetup", "blockdev", "dd", "stat"],
        (Kind::Target, IscsiTarget::Tgt) => &["tgtadm", "perl"],
        (Kind::Target, IscsiTarget::Lio) => &["targetcli", "dmsetup", "blockdev"],
        (Kind::Domain, _) => &["virsh"],
        (Kind::Seed, _) => &["genisoimage"],
        (Kind::Bridge, _) => &["ip"],
        (Kind::Vxlan, _) => &["ip", "bridge"],
        (Kind::Ca | Kind::Cert, _) => &[],
        (Kind::Image, _) => &["qemu-img", "sha256sum", "stat"],
    }
}

impl LinuxStack {
    /// Where an import's record lives on its host.
    fn import_dir(&self, a: &Addr) -> std::path::PathBuf {
        self.base.join(&*a.host).join(&*a.image)
    }

    /// Where a clone's seed lives on its host (libvirt's QEMU reads it from there).
    fn seed_path(&self, a: &Addr) -> std::path::PathBuf {
        self.base
            .join(&*a.host)
            .join(&*a.image)
            .join(format!("seed-{}.iso", a.n.unwrap_or(0)))
    }
}

impl LinuxStack {
    /// One host's problems: missing tools, a missing volume group, no initiator name.
    fn check_host(&self, host: &str, kinds: &[Kind]) -> Result<Vec<String>, BackendError> {
        let mut wanted: Vec<&str> = kinds
            .iter()
            .flat_map(|k| tools(*k, self.iscsi_target).iter().copied())
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut argv = args(&[
            "sh",
            "-c",
            r#"for t; do PATH=$PATH:/usr/sbin:/sbin command -v -- "$t" >/dev/null 2>&1 || echo "$t"; done"#,
            "sh",
        ]);
        argv.extend(wanted.iter().map(|s| s.to_string()));
        let mut problems: Vec<String> = self
            .run(host, &argv)?
            .lines()
            .filter(|l| !l.is_empty())
            .map(|t| {
                format!(
                    "host {host}: `{t}` is not installed (Debian: apt install lvm2 dmsetup open-iscsi tgt libvirt-clients libvirt-daemon-system)"
                )
            })
            .collect();
        if !problems.is_empty() {
            return Ok(problems);
        }
        if kinds.iter().any(|k| matches!(k, Kind::Lv)) {
            if let Err(e) = self.list_lvs(host) {
                problems.push(format!(
                    "host {host}: the volume group {:?} cannot be listed: {}",
                    self.vg,
                    e.stderr.as_deref().unwrap_or(&e.message).trim()
                ));
            }
        }
        Ok(problems)
    }
}

impl Backend for LinuxStack {
    fn estimate(&self, kind: Kind, op: OpKind) -> Duration {
        Duration::from_secs_f64(self.times.secs(kind, op))
    }

    fn preflight(&self, plan: &Plan) -> Result<(), Vec<String>> {
        let mut kinds: BTreeMap<&str, Vec<Kind>> = BTreeMap::new();
        let mut session_hosts: Vec<&str> = Vec::new();
        for c in &plan.changes {
            if !matches!(c.action, Action::Create | Action::Replace | Action::Update) {
                continue;
            }
            kinds.entry(&c.addr.host).or_default().push(c.addr.kind);
            if c.action == Action::Update && c.addr.kind == Kind::Session {
                // A moved session re-points its cache's origin shim: device-mapper's tools.
                kinds.entry(&c.addr.host).or_default().push(Kind::Cache);
            }
            if c.addr.kind == Kind::Session {
                session_hosts.push(&c.addr.host);
            }
            if let Some(Desired::Target(crate::resource::TargetAttrs::Image { path, .. })) =
                &c.after
            {
                if !path.starts_with('/') {
                    return Err(vec![format!(
                        "{}: the image path {path:?} must be absolute on the linux stack",
                        c.addr
                    )]);
                }
            }
        }
        let hosts: Vec<(&str, Vec<Kind>)> = kinds.into_iter().collect();
        let mut problems = Vec::new();
        let found: Vec<Result<Vec<String>, BackendError>> =
            in_parallel(&hosts, |(h, k)| self.check_host(h, k));
        for (r, (host, _)) in found.into_iter().zip(&hosts) {
            match r {
                Ok(p) => problems.extend(p),
                Err(e) if e.unreachable_host.is_some() => {
                    tracing::debug!(host, "preflight skipped an unreachable host")
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        // Every host that logs in needs an initiator name of its own: clones of one machine
        // share theirs and knock each other's sessions off.
        let names = in_parallel(&session_hosts, |h| self.initiator_name(h));
        let mut seen: HashMap<String, &str> = HashMap::new();
        for (r, host) in names.into_iter().zip(&session_hosts) {
            match r {
                Ok(n) => {
                    if let Some(other) = seen.insert(n.clone(), host) {
                        problems.push(format!(
                            "hosts {other} and {host} have the same iSCSI initiator name {n}: give each its own in /etc/iscsi/initiatorname.iscsi (iscsi-iname makes one) and restart iscsid"
                        ));
                    }
                }
                Err(e) if e.unreachable_host.is_some() => {}
                Err(e) => problems.push(e.to_string()),
            }
        }
        problems.extend(self.imports.preflight(self.transport.as_ref(), plan));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    fn read(&self, t: Target<'_>, observed: &Observed) -> Result<Option<Observed>, BackendError> {
        match t.addr.kind {
            Kind::Lv => lvm::read(self, t),
            Kind::Session => iscsi::read(self, t, observed),
            Kind::Cache | Kind::Snapshot => dm::read(self, t, observed),
            Kind::Target => match self.iscsi_target {
                IscsiTarget::Tgt => tgt::read(self, t, observed),
                IscsiTarget::Lio => lio::read(self, t, observed),
            },
            Kind::Domain => virsh::read(self, t),
            Kind::Seed => crate::backend::seed::read(
                self.transport.as_ref(),
                &t.addr.host,
                &self.seed_path(t.addr),
            ),
            Kind::Bridge | Kind::Vxlan => crate::backend::net::read(self.transport.as_ref(), t),
            Kind::Ca | Kind::Cert => {
                crate::backend::tls::read(self.transport.as_ref(), &self.base, t, observed)
            }
            Kind::Image => crate::backend::import::read(self.transport.as_ref(), t, observed),
        }
    }

    fn create(&self, t: Target<'_>, deps: &[(Addr, Observed)]) -> Result<Observed, BackendError> {
        match t.addr.kind {
            Kind::Lv => lvm::create(self, t),
            Kind::Session => iscsi::create(self, t, deps),
            Kind::Cache => dm::create_cache(self, t, deps),
            Kind::Snapshot => dm::create_snapshot(self, t, deps),
            Kind::Target => match self.iscsi_target {
                IscsiTarget::Tgt => tgt::create(self, t, deps),
                IscsiTarget::Lio => lio::create(self, t, deps),
            },
            Kind::Domain => virsh::create(self, t, deps),
            Kind::Seed => {
                let Desired::Seed(s) = t.desired else {
                    unreachable!("seed attributes")
                };
                crate::backend::seed::create(
                    self.transport.as_ref(),
                    &t.addr.host,
                    &self.seed_path(t.addr),
                    s,
                )
            }
            Kind::Bridge | Kind::Vxlan => crate::backend::net::create(self.transport.as_ref(), t),
            Kind::Ca | Kind::Cert => {
                crate::backend::tls::create(self.transport.as_ref(), &self.base, t, deps)
            }
            Kind::Image => {
                crate::backend::import::create(&self.imports, self.transport.as_ref(), t)
            }
        }
    }

    fn update(
        &self,
        t: Target<'_>,
        before: &Desired,
        observed: &Observed,
        deps: &[(Addr, Observed)],
    ) -> Result<Observed, BackendError> {
        match t.addr.kind {
            Kind::Session => iscsi::update(self, t, before, observed, deps),
            Kind::Snapshot => dm::update_snapshot(self, t, deps),
            _ => Err(BackendError::new(format!(
                "internal error: the linux stack cannot update {} in place",
                t.addr
            ))),
        }
    }

    fn delete(&self, t: Target<'_>, observed: &Observed) -> Result<(), BackendError> {
        match t.addr.kind {
            Kind::Lv => lvm::delete(self, t),
            Kind::Session => iscsi::delete(self, t, observed),
            Kind::Cache | Kind::Snapshot => dm::delete(self, t),
            Kind::Target => match self.iscsi_target {
                IscsiTarget::Tgt => tgt::delete(self, t, observed),
                IscsiTarget::Lio => lio::delete(self, t, observed),
            },
            Kind::Domain => virsh::delete(self, t),
            Kind::Seed => crate::backend::seed::delete(
                self.transport.as_ref(),
                &t.addr.host,
                &self.seed_path(t.addr),
            ),
            Kind::Bridge | Kind::Vxlan => crate::backend::net::delete(self.transport.as_ref(), t),
            Kind::Ca | Kind::Cert => {
                crate::backend::tls::delete(self.transport.as_ref(), &self.base, t)
            }
            Kind::Image => {
                let dir = self.import_dir(t.addr);
                crate::backend::import::delete(&self.imports, self.transport.as_ref(), t)?;
                // The record's directories are the import's own (when nothing else is there).
                let host = &*t.addr.host;
                if self
                    .transport
                    .remove_dir_if_empty(host, &dir)
                    .unwrap_or(false)
                {
                    let parent = dir.parent().expect("a host directory");
                    let _ = self.transport.remove_dir_if_empty(host, parent);
                }
                Ok(())
            }
        }
    }

    fn capacity(&self, host: &str) -> Result<Option<crate::capacity::Figures>, BackendError> {
        let tag = names::cluster_tag(&self.cluster);
        crate::capacity::discover(self.transport.as_ref(), host, "vg", &self.vg, &tag)
    }

    fn finish(&self, _state: &State) -> Result<(), BackendError> {
        // Every object is created and deleted by its own resource; there is no per-host
        // scaffolding to remove.
        Ok(())
    }
}
