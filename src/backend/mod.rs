//! Backends: what creates, reads and deletes the real objects behind resources.
//!
//! One trait for every stack. `read` observes and never mutates (absent is `Ok(None)`),
//! `create` adopts a matching object instead of duplicating it, `delete` treats "already gone"
//! as success, so every operation can be re-run after vmthunder was killed at any instant.
//! Each returns the observed attributes that state records and dependents consume (an
//! export's endpoint, a file path, a pid). Stacks reach hosts through a [`Transport`].

pub mod import;
pub mod linux;
pub mod net;
pub mod netns;
pub mod qemu;
pub mod qmp;
pub mod seed;
pub mod sim;
pub mod ssh;
pub mod tls;
pub mod transport;
pub mod vhdx;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::plan::{OpKind, Plan};
use crate::resource::{Addr, Desired, Kind};
use crate::spec::{Spec, Stack};
use crate::state::State;

pub use transport::{CommandError, Transport};

/// What a backend observed of a real object, recorded in state beside the desired attributes.
pub type Observed = serde_json::Map<String, Value>;

/// The resource an operation works on.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub addr: &'a Addr,
    pub desired: &'a Desired,
    /// A read checks contents in full (an imported image's checksum), not only cheaply.
    pub deep: bool,
    /// A long operation tells here how far it is: (bytes done, bytes in all).
    pub progress: Option<&'a (dyn Fn(u64, u64) + Sync)>,
}

impl<'a> Target<'a> {
    pub fn new(addr: &'a Addr, desired: &'a Desired) -> Target<'a> {
        Target {
            addr,
            desired,
            deep: false,
            progress: None,
        }
    }

    /// Reports progress, when someone listens.
    pub fn advance(&self, done: u64, total: u64) {
        if let Some(p) = self.progress {
            p(done, total);
        }
    }
}

impl fmt::Debug for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("addr", self.addr)
            .field("desired", self.desired)
            .field("deep", &self.deep)
            .finish()
    }
}

/// A failed operation: a message, and the command and its stderr when one failed.
#[derive(Clone, Debug, Default)]
pub struct BackendError {
    pub message: String,
    pub command: Option<String>,
    pub stderr: Option<String>,
    /// Set when the operation failed because this host could not be reached: the executor
    /// reports that once and skips the host's other operations.
    pub unreachable_host: Option<String>,
}

impl BackendError {
    pub fn new(message: impl Into<String>) -> BackendError {
        BackendError {
            message: message.into(),
            ..Default::default()
        }
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(c) = &self.command {
            write!(f, "\n  command: {c}")?;
        }
        if let Some(s) = self.stderr.as_deref().filter(|s| !s.is_empty()) {
            write!(
                f,
                "\n  stderr: {}",
                s.trim_end().replace('\n', "\n          ")
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for BackendError {}

impl From<CommandError> for BackendError {
    fn from(e: CommandError) -> BackendError {
        if e.unreachable {
            return BackendError {
                message: e.status,
                command: None,
                stderr: None,
                unreachable_host: Some(e.host),
            };
        }
        BackendError {
            message: format!("on host {}: a command {}", e.host, e.status),
            command: Some(e.command),
            stderr: Some(e.stderr),
            unreachable_host: None,
        }
    }
}

impl BackendError {
    /// An I/O failure on `host` while doing `what` to `path`; a host that could not be
    /// reached (`NotConnected` from the transport) is marked so.
    pub fn io(what: &str, host: &str, path: &std::path::Path, e: std::io::Error) -> BackendError {
        if e.kind() == std::io::ErrorKind::NotConnected {
            return BackendError {
                message: e.to_string(),
                unreachable_host: Some(host.to_string()),
                ..Default::default()
            };
        }
        BackendError::new(format!("on host {host}: {what} `{}`: {e}", path.display()))
    }
}

impl BackendError {
    /// The same error, its message preceded by what was being done.
    pub fn context(mut self, what: &str) -> BackendError {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl From<qmp::QmpError> for BackendError {
    fn from(e: qmp::QmpError) -> BackendError {
        BackendError::new(e.to_string())
    }
}

pub trait Backend: Send + Sync {
    /// Checks, before anything is touched, that the plan can start: inputs exist, tools are
    /// installed. Returns every problem found.
    fn preflight(&self, plan: &Plan) -> Result<(), Vec<String>>;
    /// Observes the object behind a recorded resource; `None` when it does not exist.
    fn read(&self, t: Target<'_>, observed: &Observed) -> Result<Option<Observed>, BackendError>;
    /// Makes the object exist (adopting a matching one). `deps` are the resource's
    /// dependencies with what was observed of them.
    fn create(&self, t: Target<'_>, deps: &[(Addr, Observed)]) -> Result<Observed, BackendError>;
    /// Changes the object in place from `before` (recorded, with its `observed`) to what
    /// `t` desires, keeping everything built on it. Only for the changes the plan's table of
    /// updatable kinds allows ([`crate::plan::updatable`]); safe to repeat from any point
    /// (a kill half-way leaves the old record, and the next apply updates again).
    fn update(
        &self,
        t: Target<'_>,
        _before: &Desired,
        _observed: &Observed,
        _deps: &[(Addr, Observed)],
    ) -> Result<Observed, BackendError> {
        Err(BackendError::new(format!(
            "internal error: this stack cannot update {} in place",
            t.addr
        )))
    }
    /// Makes the object not exist.
    fn delete(&self, t: Target<'_>, observed: &Observed) -> Result<(), BackendError>;
    /// Roughly how long an operation takes, for scheduling only: among ready operations
    /// the one with the longest estimated chain after it goes first.
    fn estimate(&self, _kind: Kind, _op: OpKind) -> Duration {
        Duration::from_millis(100)
    }
    /// What `host` has for clones, for the capacity table (`crate::capacity`): its CPUs,
    /// memory and the disk this cluster may use there. `None` when the stack runs nothing
    /// real (the sim stack).
    fn capacity(&self, _host: &str) -> Result<Option<crate::capacity::Figures>, BackendError> {
        Ok(None)
    }
    /// After an apply: removes per-host scaffolding (directories, namespaces) of hosts that
    /// `state` no longer records anything on.
    fn finish(&self, state: &State) -> Result<(), BackendError>;
}

/// Whether an observed attribute is a secret (a CHAP password, a private key) of some kind
/// ([`crate::state::seal::sensitive`]): kept in state, sealed when the state has a key, and
/// shown everywhere else as `(sensitive)`.
pub fn is_sensitive(key: &str) -> bool {
    Kind::ALL
        .iter()
        .any(|&k| crate::state::seal::sensitive(k).contains(&key))
}

const SENSITIVE: &str = "(sensitive)";

/// Observed attributes as they may be shown: secrets masked.
pub fn redacted(o: &Observed) -> Observed {
    o.iter()
        .map(|(k, v)| {
            let v = if is_sensitive(k) {
                SENSITIVE.into()
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

/// Attribute changes (name, before, after) as they may be shown: secrets masked.
pub fn redact_changes(c: Vec<(String, Value, Value)>) -> Vec<(String, Value, Value)> {
    c.into_iter()
        .map(|(k, b, a)| {
            if is_sensitive(&k) {
                (k, SENSITIVE.into(), SENSITIVE.into())
            } else {
                (k, b, a)
            }
        })
        .collect()
}

/// The backend a spec asks for.
pub fn for_spec(spec: &Spec) -> Result<Arc<dyn Backend>, BackendError> {
    match spec.backend.stack {
        Stack::Qemu => Ok(Arc::new(qemu::QemuStack::new(spec)?)),
        Stack::Sim => Ok(Arc::new(sim::SimStack::new(spec))),
        Stack::Linux => Ok(Arc::new(linux::LinuxStack::new(spec)?)),
    }
}

/// An observed attribute of a dependency of the given kind.
pub fn dep_value<'a>(
    deps: &'a [(Addr, Observed)],
    kind: crate::resource::Kind,
    key: &str,
) -> Option<&'a Value> {
    deps.iter()
        .find(|(a, _)| a.kind == kind)
        .and_then(|(_, o)| o.get(key))
}

/// A string attribute of a dependency of the given kind.
pub fn dep_attr<'a>(
    deps: &'a [(Addr, Observed)],
    kind: crate::resource::Kind,
    key: &str,
) -> Result<&'a str, BackendError> {
    dep_value(deps, kind, key)
        .and_then(|v| v.as_str())
        .ok_or_else(|| {
            BackendError::new(format!(
                "internal error: no {key:?} observed on the {kind} this depends on"
            ))
        })
}

/// `f` of each item, on up to 16 threads (hosts answer independently; over ssh each call
/// waits mostly on the network). Results in item order.
pub(crate) fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.len() <= 1 {
        return items.iter().map(&f).collect();
    }
    let chunk = items.len().div_ceil(16);
    std::thread::scope(|s| {
        let workers: Vec<_> = items
            .chunks(chunk)
            .map(|part| {
                let f = &f;
                s.spawn(move || part.iter().map(f).collect::<Vec<R>>())
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a worker panicked"))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_wherever_attributes_are_shown() {
        let mut o = Observed::new();
        o.insert("chap_user".into(), "vmt.c.base.node01".into());
        o.insert("chap_secret".into(), "0123456789abcdef01234567".into());
        let shown = serde_json::to_string(&redacted(&o)).unwrap();
        assert!(!shown.contains("0123456789"), "{shown}");
        assert!(shown.contains("(sensitive)") && shown.contains("vmt.c.base.node01"));
        let c = redact_changes(vec![
            ("chap_secret".into(), "a".into(), "b".into()),
            ("pid".into(), 1.into(), 2.into()),
        ]);
        assert_eq!(c[0].1, "(sensitive)");
        assert_eq!(c[1].2, 2);
    }
}
