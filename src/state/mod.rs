//! The recorded state: what vmthunder created, where, and with which attributes.
//!
//! Owns the versioned state file, its atomic persistence (temp file, fsync, rename, fsync of
//! the directory, previous version kept as `.backup`, mode 0600) and the lock that serializes
//! writers. Plain data: it never talks to hosts.

pub mod journal;
mod lock;
mod surgery;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rustc_hash::FxHashMap as HashMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::resource::{Addr, Desired, Kind};

pub use lock::{force_unlock, Lock, LockError, LockInfo};

/// The state file format this build writes and reads.
pub const STATE_FORMAT_VERSION: u32 = 1;

/// Per image: host -> the host it pulls the image from.
pub type Placement = BTreeMap<String, BTreeMap<String, String>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Created and verified.
    Ready,
    /// Partly created or known broken: the next plan replaces it.
    Tainted,
    /// Found gone by a refresh (deleted outside vmthunder): the next plan recreates it and
    /// everything built on it.
    Missing,
}

/// One recorded object.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    pub addr: Addr,
    /// What the spec asked for when it was created.
    pub desired: Desired,
    /// What the backend reported (an export's address, a device path, a pid).
    pub observed: serde_json::Map<String, serde_json::Value>,
    /// Addresses it was created on top of: deleted only after it.
    pub deps: Vec<Addr>,
    pub status: Status,
}

#[derive(Clone, Debug, PartialEq)]
pub struct State {
    pub serial: u64,
    /// Fixed when the state is first written; `None` for a state that does not exist yet.
    pub lineage: Option<String>,
    pub cluster: String,
    pub placement: Placement,
    pub resources: Vec<Recorded>,
    index: HashMap<Addr, u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("failed to read state `{path}`")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("state `{path}` is not a valid vmthunder state: {message}")]
    Corrupt { path: String, message: String },
    #[error("state `{path}` has format version {found}; this vmthunder reads version {STATE_FORMAT_VERSION}")]
    Version { path: String, found: u32 },
    #[error(
        "state `{path}` belongs to cluster {found:?}, not {expected:?}: pass the right --state"
    )]
    OtherCluster {
        path: String,
        found: String,
        expected: String,
    },
    #[error("failed to write state `{path}`")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl State {
    /// An empty state for a cluster that has never been applied.
    pub fn empty(cluster: &str) -> State {
        State {
            serial: 0,
            lineage: None,
            cluster: cluster.to_string(),
            placement: Placement::new(),
            resources: Vec::new(),
            index: HashMap::default(),
        }
    }

    pub fn from_parts(
        cluster: &str,
        serial: u64,
        lineage: Option<String>,
        placement: Placement,
        resources: Vec<Recorded>,
    ) -> Result<State, String> {
        let mut index = HashMap::with_capacity_and_hasher(resources.len(), Default::default());
        for (i, r) in resources.iter().enumerate() {
            if index.insert(r.addr.clone(), i as u32).is_some() {
                return Err(format!("resource {} is recorded twice", r.addr));
            }
            if r.desired.kind() != r.addr.kind {
                return Err(format!(
                    "resource {} has attributes of a {}",
                    r.addr,
                    r.desired.kind()
                ));
            }
        }
        let state = State {
            serial,
            lineage,
            cluster: cluster.to_string(),
            placement,
            resources,
            index,
        };
        state.check_deps()?;
        Ok(state)
    }

    /// Every recorded dependency is itself recorded.
    fn check_deps(&self) -> Result<(), String> {
        for r in &self.resources {
            if let Some(d) = r.deps.iter().find(|d| !self.index.contains_key(*d)) {
                return Err(format!(
                    "resource {} depends on {d}, which is not recorded (a dangling dependency)",
                    r.addr
                ));
            }
        }
        Ok(())
    }

    pub fn get(&self, addr: &Addr) -> Option<&Recorded> {
        self.index.get(addr).map(|&i| &self.resources[i as usize])
    }

    /// Records `r`, replacing what was recorded at its address. O(1).
    pub fn upsert(&mut self, r: Recorded) {
        match self.index.get(&r.addr) {
            Some(&i) => self.resources[i as usize] = r,
            None => {
                self.index
                    .insert(r.addr.clone(), self.resources.len() as u32);
                self.resources.push(r);
            }
        }
    }

    /// Forgets the resource at `addr`; returns its record. O(1) (the last record takes its
    /// place).
    pub fn remove(&mut self, addr: &Addr) -> Option<Recorded> {
        let i = self.index.remove(addr)? as usize;
        let r = self.resources.swap_remove(i);
        if let Some(moved) = self.resources.get(i) {
            self.index.insert(moved.addr.clone(), i as u32);
        }
        Some(r)
    }

    pub fn position(&self, addr: &Addr) -> Option<u32> {
        self.index.get(addr).copied()
    }

    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// The recorded MAC of a domain, to keep clone identities stable.
    pub fn mac_of(&self, addr: &Addr) -> Option<&str> {
        match &self.get(addr)?.desired {
            Desired::Domain(d) => Some(&d.mac),
            _ => None,
        }
    }

    /// Reads `path`; a missing file is an empty state for `cluster`.
    pub fn load(path: &Path, cluster: &str) -> Result<State, StateError> {
        let shown = path.display().to_string();
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut state = State::empty(cluster);
                journal::replay(&mut state, path)?;
                return Ok(state);
            }
            Err(source) => {
                return Err(StateError::Read {
                    path: shown,
                    source,
                })
            }
        };
        let mut state = State::parse(path, &bytes)?;
        if state.cluster != cluster {
            return Err(StateError::OtherCluster {
                path: shown,
                found: state.cluster,
                expected: cluster.to_string(),
            });
        }
        journal::replay(&mut state, path)?;
        Ok(state)
    }

    /// Reads a state file whatever cluster it is for.
    pub fn load_any(path: &Path) -> Result<State, StateError> {
        let shown = path.display().to_string();
        let bytes = fs::read(path).map_err(|source| StateError::Read {
            path: shown.clone(),
            source,
        })?;
        let mut state = State::parse(path, &bytes)?;
        journal::replay(&mut state, path)?;
        Ok(state)
    }

    fn parse(path: &Path, bytes: &[u8]) -> Result<State, StateError> {
        let path = path.display().to_string();
        State::from_json(bytes).map_err(|e| match e {
            FromJsonError::Version(found) => StateError::Version { path, found },
            FromJsonError::Invalid(message) => StateError::Corrupt { path, message },
        })
    }

    fn from_json(bytes: &[u8]) -> Result<State, FromJsonError> {
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        let v: Version =
            serde_json::from_slice(bytes).map_err(|e| FromJsonError::Invalid(e.to_string()))?;
        if v.format_version != STATE_FORMAT_VERSION {
            return Err(FromJsonError::Version(v.format_version));
        }
        let file: StateFileIn =
            serde_json::from_slice(bytes).map_err(|e| FromJsonError::Invalid(e.to_string()))?;
        let resources = file
            .resources
            .into_iter()
            .map(|r| r.into_recorded().map_err(FromJsonError::Invalid))
            .collect::<Result<Vec<_>, _>>()?;
        State::from_parts(
            &file.cluster,
            file.serial,
            Some(file.lineage),
            file.placement,
            resources,
        )
        .map_err(FromJsonError::Invalid)
    }

    /// The state file's JSON. Assigns a lineage if the state has none yet.
    pub fn to_json(&mut self) -> Vec<u8> {
        let lineage = self
            .lineage
            .get_or_insert_with(|| uuid::Uuid::new_v4().to_string())
            .clone();
        // One resource per line: readable, diffable, and half the size of pretty JSON.
        let mut out = Vec::with_capacity(64 + self.resources.len() * 320);
        let lit = |v: &str| serde_json::to_string(v).expect("strings serialize");
        let placement = serde_json::to_string_pretty(&self.placement)
            .expect("placement serializes")
            .replace('\n', "\n  ");
        out.extend_from_slice(
            format!(
                "{{\n  \"format_version\": {STATE_FORMAT_VERSION},\n  \"serial\": {},\n  \"lineage\": {},\n  \"cluster\": {},\n  \"placement\": {placement},\n  \"resources\": [",
                self.serial,
                lit(&lineage),
                lit(&self.cluster),
            )
            .as_bytes(),
        );
        for (i, r) in self.resources.iter().enumerate() {
            out.extend_from_slice(if i == 0 { b"\n    " } else { b",\n    " });
            let line = RecordedOut::of(r);
            serde_json::to_writer(&mut out, &line).expect("resources serialize");
        }
        out.extend_from_slice(b"\n  ]\n}\n");
        out
    }

    /// Bumps the serial and writes the state atomically to `path`, keeping the previous file
    /// as `<path>.backup`.
    pub fn persist(&mut self, path: &Path) -> Result<(), StateError> {
        self.serial += 1;
        let bytes = self.to_json();
        write_atomic(path, &bytes).map_err(|source| StateError::Write {
            path: path.display().to_string(),
            source,
        })
    }
}

/// The state file's shape, for its JSON Schema (the file is written by [`State::to_json`]).
#[derive(JsonSchema)]
#[schemars(title = "vmthunder state")]
#[allow(dead_code)]
struct StateDoc<'a> {
    format_version: u32,
    /// Bumped on every write.
    serial: u64,
    /// Fixed when the state is first written.
    lineage: String,
    cluster: String,
    /// Per image: host -> the host it pulls the image from.
    placement: Placement,
    resources: Vec<RecordedOut<'a>>,
}

/// The JSON Schema of state files (schemas/state.schema.json).
pub fn schema_bytes() -> Vec<u8> {
    let mut s = serde_json::to_vec_pretty(&schemars::schema_for!(StateDoc<'static>))
        .expect("schema serializes");
    s.push(b'\n');
    s
}

enum FromJsonError {
    Version(u32),
    Invalid(String),
}

#[derive(Serialize, JsonSchema)]
struct RecordedOut<'a> {
    address: &'a Addr,
    kind: Kind,
    host: &'a str,
    image: &'a str,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<u32>,
    status: Status,
    desired: &'a Desired,
    observed: &'a serde_json::Map<String, serde_json::Value>,
    deps: &'a [Addr],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFileIn<'a> {
    #[allow(dead_code)]
    format_version: u32,
    serial: u64,
    lineage: String,
    cluster: String,
    #[serde(default)]
    placement: Placement,
    #[serde(borrow)]
    resources: Vec<RecordedIn<'a>>,
}

/// Borrows from the file's bytes where it can: states of large clusters are read often.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordedIn<'a> {
    address: Addr,
    kind: Kind,
    #[serde(borrow)]
    host: std::borrow::Cow<'a, str>,
    #[allow(dead_code)]
    image: serde::de::IgnoredAny,
    #[serde(default)]
    #[allow(dead_code)]
    n: Option<serde::de::IgnoredAny>,
    status: Status,
    #[serde(borrow)]
    desired: &'a RawValue,
    #[serde(default)]
    observed: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    deps: Vec<Addr>,
}

impl RecordedIn<'_> {
    fn into_recorded(self) -> Result<Recorded, String> {
        let desired = Desired::parse(self.address.kind, self.desired.get())
            .map_err(|e| format!("{}: desired: {e}", self.address))?;
        if self.kind != self.address.kind || *self.host != *self.address.host {
            return Err(format!(
                "{}: kind or host does not match the address",
                self.address
            ));
        }
        Ok(Recorded {
            addr: self.address,
            desired,
            observed: self.observed,
            deps: self.deps,
            status: self.status,
        })
    }
}

impl<'a> RecordedOut<'a> {
    fn of(r: &'a Recorded) -> Self {
        RecordedOut {
            address: &r.addr,
            kind: r.addr.kind,
            host: &r.addr.host,
            image: &r.addr.image,
            n: r.addr.n,
            status: r.status,
            desired: &r.desired,
            observed: &r.observed,
            deps: &r.deps,
        }
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new file, never a mix:
/// a temp file in the same directory, fsync, the old file hard-linked to `.backup`, rename,
/// fsync of the directory. Files are created with mode 0600.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("state path has no file name"))?
        .to_string_lossy()
        .into_owned();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        if path.exists() {
            let backup = dir.join(format!("{name}.backup"));
            let _ = fs::remove_file(&backup);
            fs::hard_link(path, &backup).or_else(|_| fs::copy(path, &backup).map(|_| ()))?;
        }
        fs::rename(&tmp, path)?;
        fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::resource::{LvAttrs, LvPurpose};
    use crate::size::Size;

    /// A recorded cache lv at `addr`, built on `deps`.
    pub(crate) fn lv(addr: &str, deps: &[&str]) -> Recorded {
        Recorded {
            addr: addr.parse().unwrap(),
            desired: Desired::Lv(LvAttrs {
                purpose: LvPurpose::Cache,
                size: Size(1 << 30),
            }),
            observed: Default::default(),
            deps: deps.iter().map(|d| d.parse().unwrap()).collect(),
            status: Status::Ready,
        }
    }

    #[test]
    fn persists_atomically_with_backup_and_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/lab.json");
        let mut s = State::empty("lab");
        s.resources.push(lv("lv.node1.base", &[]));
        s = State::from_parts("lab", 0, None, Placement::new(), s.resources).unwrap();
        s.persist(&path).unwrap();
        let lineage = s.lineage.clone().unwrap();
        assert_eq!(s.serial, 1);
        s.persist(&path).unwrap();
        let loaded = State::load(&path, "lab").unwrap();
        assert_eq!(loaded.serial, 2);
        assert_eq!(loaded.lineage.as_deref(), Some(lineage.as_str()));
        assert_eq!(loaded.resources, s.resources);
        let backup = State::load(&dir.path().join("state/lab.json.backup"), "lab").unwrap();
        assert_eq!(backup.serial, 1);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains(".tmp."))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert!(matches!(
            State::load(&path, "other"),
            Err(StateError::OtherCluster { .. })
        ));
    }

    #[test]
    fn missing_file_is_empty_and_corruption_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::load(&dir.path().join("nope.json"), "lab").unwrap();
        assert!(s.is_empty() && s.lineage.is_none() && s.serial == 0);
        let bad = dir.path().join("bad.json");
        fs::write(&bad, r#"{"format_version": 9}"#).unwrap();
        assert!(matches!(
            State::load(&bad, "lab"),
            Err(StateError::Version { found: 9, .. })
        ));
        fs::write(&bad, r#"{"format_version": 1, "serial": 1, "lineage": "x", "cluster": "lab", "resources": [{"address": "lv.a.b", "kind": "lv", "host": "a", "image": "b", "status": "ready", "desired": {"purpose": "cache", "size": 1}, "deps": ["cache.a.b"]}]}"#).unwrap();
        let err = State::load(&bad, "lab").unwrap_err().to_string();
        assert!(err.contains("dangling"), "{err}");
    }
}
