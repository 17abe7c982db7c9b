//! The recorded state: what vmthunder created, where, and with which attributes.
//!
//! Owns the versioned state file, its atomic persistence (temp file, fsync, rename, fsync of
//! the directory, previous version kept as `.backup`, mode 0600) and the lock that serializes
//! writers. Plain data: it never talks to hosts.

mod file;
pub mod journal;
mod lock;
pub mod postgres;
pub mod seal;
pub mod store;
mod surgery;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustc_hash::FxHashMap as HashMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::resource::{Addr, Desired, Kind};

pub use file::FileStore;
pub use journal::{Ignored, Replayed};
pub use lock::{force_unlock, Lock, LockError, LockInfo};
pub use store::{open as open_store, Held, JournalSink, Location, Store};

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
    /// Found with other contents than it was made with (an imported image's file changed
    /// outside vmthunder): the next plan replaces it and everything built on it.
    Changed,
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

/// How records are written to a store and read back: the key that seals their secrets, if
/// one is configured ([`seal`]).
#[derive(Clone, Debug, Default)]
pub struct Codec {
    key: Option<Arc<seal::Key>>,
    /// Refuse to write a secret in clear (the postgres store: a database is shared).
    refuse_clear: bool,
}

impl Codec {
    pub fn new(key: Option<seal::Key>, refuse_clear: bool) -> Codec {
        Codec {
            key: key.map(Arc::new),
            refuse_clear,
        }
    }

    pub fn key(&self) -> Option<&seal::Key> {
        self.key.as_deref()
    }

    /// This codec with `key` instead (`state rekey`).
    pub fn with_key(&self, key: Option<seal::Key>) -> Codec {
        Codec::new(key, self.refuse_clear)
    }

    /// Whether a secret would be refused: the store keeps secrets only sealed and no key is
    /// configured.
    pub fn refuses_secrets(&self) -> bool {
        self.refuse_clear && self.key.is_none()
    }

    /// `r` as it is written: its secrets sealed.
    fn out<'a>(&self, cluster: &str, r: &'a Recorded) -> Result<RecordedOut<'a>, String> {
        let mut out = RecordedOut::of(r);
        match &self.key {
            Some(key) => {
                if let Some(sealed) = seal::sealed_copy(key, cluster, &r.addr, &r.observed) {
                    out.observed = std::borrow::Cow::Owned(sealed);
                }
            }
            None if self.refuse_clear && seal::has_clear_secret(r.addr.kind, &r.observed) => {
                return Err(format!(
                    "{} holds a secret, and this store keeps secrets only sealed: configure a state key (VMTHUNDER_STATE_KEY, state.key_file or --state-key-file)",
                    r.addr
                ));
            }
            None => {}
        }
        Ok(out)
    }

    /// Opens the sealed secrets of `r`, just read.
    fn open(&self, cluster: &str, r: &mut Recorded) -> Result<(), String> {
        seal::open_all(self.key(), cluster, &r.addr, &mut r.observed).map_err(|e| {
            let mut m = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                m.push_str(&format!(": {s}"));
                source = s.source();
            }
            m
        })
    }

    /// The journal line recording `r`.
    pub fn upsert_line(
        &self,
        cluster: &str,
        r: &Recorded,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let rec = self.out(cluster, r)?;
        out.extend_from_slice(b"{\"upsert\":");
        serde_json::to_writer(&mut *out, &rec).expect("resources serialize");
        out.extend_from_slice(b"}\n");
        Ok(())
    }
}

/// A state as [`State::open`] read it, with what it found in the journal.
#[derive(Debug)]
pub struct Loaded {
    pub state: State,
    pub journal: Replayed,
    /// Journal bytes replay left out (a record cut short by a kill): to be told.
    pub ignored: Option<Ignored>,
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
    #[error("state database `{server}`: {message}")]
    Database { server: String, message: String },
    #[error("cannot open the secrets of state `{path}`: {message}")]
    Key { path: String, message: String },
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
    #[error("no state at `{path}`: nothing was ever applied with it (pass -f SPEC to read its cluster's state, or the right --state)")]
    Missing { path: String },
    #[error("refusing to write state `{path}`: {message}; the file was left as it was (the state in memory is broken: a bug, or a plan edited by hand)")]
    Refused { path: String, message: String },
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
            // The first keeps the address: [`State::check`] names a second one.
            index.entry(r.addr.clone()).or_insert(i as u32);
        }
        let state = State {
            serial,
            lineage,
            cluster: cluster.to_string(),
            placement,
            resources,
            index,
        };
        state.check()?;
        Ok(state)
    }

    /// What makes records a state: every address recorded once, with attributes of its own
    /// kind; every dependency recorded; no dependency cycle. Checked on every load (file and
    /// journal) and before every write, so that no command writes a state its loader would
    /// refuse. O(resources + dependencies).
    pub fn check(&self) -> Result<(), String> {
        // Agreement both ways, without hashing: n distinct addresses, each naming a record of
        // that address, name n distinct records, so every record is recorded once.
        let agrees = self.index.len() == self.resources.len()
            && self
                .index
                .iter()
                .all(|(a, &i)| self.resources.get(i as usize).is_some_and(|r| r.addr == *a));
        if !agrees {
            return Err(self.disagreement());
        }
        if let Some(r) = self
            .resources
            .iter()
            .find(|r| r.desired.kind() != r.addr.kind)
        {
            return Err(format!(
                "resource {} has attributes of a {}",
                r.addr,
                r.desired.kind()
            ));
        }
        self.check_deps()
    }

    /// What is wrong when the index and the records disagree (for the message only).
    fn disagreement(&self) -> String {
        let mut seen = rustc_hash::FxHashSet::default();
        match self.resources.iter().find(|r| !seen.insert(&r.addr)) {
            Some(r) => format!("resource {} is recorded twice", r.addr),
            None => "internal error: the index of the records is out of date".to_string(),
        }
    }

    /// Every recorded dependency is itself recorded, and none is circular. A depth-first walk
    /// over `deps` with its own stack (a chain is as deep as the image tree, and a state may
    /// hold millions of records): each record and each dependency is visited once.
    fn check_deps(&self) -> Result<(), String> {
        const NEW: u8 = 0;
        const OPEN: u8 = 1;
        const DONE: u8 = 2;
        let mut mark = vec![NEW; self.resources.len()];
        // (record, how many of its deps were looked at); the records on it are the OPEN ones.
        let mut stack: Vec<(u32, u32)> = Vec::new();
        for root in 0..self.resources.len() {
            if mark[root] != NEW {
                continue;
            }
            mark[root] = OPEN;
            stack.push((root as u32, 0));
            while let Some(top) = stack.last_mut() {
                let (v, k) = *top;
                let r = &self.resources[v as usize];
                let Some(d) = r.deps.get(k as usize) else {
                    mark[v as usize] = DONE;
                    stack.pop();
                    continue;
                };
                top.1 += 1;
                let Some(&w) = self.index.get(d) else {
                    return Err(format!(
                        "resource {} depends on {d}, which is not recorded (a dangling dependency)",
                        r.addr
                    ));
                };
                match mark[w as usize] {
                    NEW => {
                        mark[w as usize] = OPEN;
                        stack.push((w, 0));
                    }
                    OPEN => {
                        let from = stack
                            .iter()
                            .rposition(|&(s, _)| s == w)
                            .expect("an open record is on the stack");
                        let on: Vec<&Addr> = stack[from..]
                            .iter()
                            .map(|&(s, _)| &self.resources[s as usize].addr)
                            .collect();
                        return Err(cycle_message(&on));
                    }
                    _ => {}
                }
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

    /// Reads the state at `path` as every command sees it: the file, then the journal a killed
    /// apply left next to it replayed (read-only: folding it into the file is [`journal::settle`],
    /// under the lock). A missing file is the empty state of `cluster`, or, when the caller does
    /// not know the cluster (`None`), of the cluster the journal names; with neither a file nor
    /// a journal nor a cluster there is nothing to read.
    pub fn open(path: &Path, cluster: Option<&str>) -> Result<Loaded, StateError> {
        State::open_with(path, cluster, &Codec::default())
    }

    /// [`State::open`] with the secrets opened by `codec`.
    pub fn open_with(
        path: &Path,
        cluster: Option<&str>,
        codec: &Codec,
    ) -> Result<Loaded, StateError> {
        let shown = path.display().to_string();
        let mut state = match crate::text::read_regular(path) {
            Ok(bytes) => {
                let state = State::parse(path, &bytes, codec)?;
                if let Some(expected) = cluster.filter(|c| *c != state.cluster) {
                    return Err(StateError::OtherCluster {
                        path: shown,
                        found: state.cluster,
                        expected: expected.to_string(),
                    });
                }
                Some(state)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(StateError::Read {
                    path: shown,
                    source,
                })
            }
        };
        let (journal, ignored) = journal::replay(&mut state, cluster, path, codec)?;
        let state = match state {
            Some(s) => s,
            None => match cluster {
                Some(c) => State::empty(c),
                None => return Err(StateError::Missing { path: shown }),
            },
        };
        Ok(Loaded {
            state,
            journal,
            ignored,
        })
    }

    /// [`State::open`] for a caller that knows the cluster, without the journal's details.
    pub fn load(path: &Path, cluster: &str) -> Result<State, StateError> {
        Ok(State::open(path, Some(cluster))?.state)
    }

    fn parse(path: &Path, bytes: &[u8], codec: &Codec) -> Result<State, StateError> {
        State::from_json(bytes, codec).map_err(|e| match e {
            FromJsonError::Version(found) => StateError::Version {
                path: path.display().to_string(),
                found,
            },
            FromJsonError::Key(message) => StateError::Key {
                path: path.display().to_string(),
                message,
            },
            FromJsonError::Invalid(message) => {
                let mut backup = path.as_os_str().to_owned();
                backup.push(".backup");
                let backup = PathBuf::from(backup);
                let hint = if backup.exists() {
                    format!(
                        "; fix it by hand, or restore `{}` (the version before the last write)",
                        backup.display()
                    )
                } else {
                    "; fix it by hand".to_string()
                };
                StateError::Corrupt {
                    path: path.display().to_string(),
                    message: message + &hint,
                }
            }
        })
    }

    /// Reads a state document (the file's bytes, or a database row's), opening its secrets.
    pub(crate) fn from_json(bytes: &[u8], codec: &Codec) -> Result<State, FromJsonError> {
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
        let cluster = file.cluster;
        let resources = file
            .resources
            .into_iter()
            .map(|r| {
                let mut r = r.into_recorded().map_err(FromJsonError::Invalid)?;
                codec.open(&cluster, &mut r).map_err(FromJsonError::Key)?;
                Ok(r)
            })
            .collect::<Result<Vec<_>, _>>()?;
        State::from_parts(
            &cluster,
            file.serial,
            Some(file.lineage),
            file.placement,
            resources,
        )
        .map_err(FromJsonError::Invalid)
    }

    /// The state file's JSON. Assigns a lineage if the state has none yet.
    pub fn to_json(&mut self) -> Vec<u8> {
        self.to_json_with(&Codec::default())
            .expect("the default codec refuses nothing")
    }

    /// [`State::to_json`] with secrets sealed by `codec`.
    pub fn to_json_with(&mut self, codec: &Codec) -> Result<Vec<u8>, String> {
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
            let line = codec.out(&self.cluster, r)?;
            serde_json::to_writer(&mut out, &line).expect("resources serialize");
        }
        out.extend_from_slice(b"\n  ]\n}\n");
        Ok(out)
    }

    /// Bumps the serial and writes the state atomically to `path`, keeping the previous file
    /// as `<path>.backup`.
    /// Refused, writing nothing, if the state is one [`State::load`] would refuse.
    pub fn persist(&mut self, path: &Path) -> Result<(), StateError> {
        self.persist_with(path, &Codec::default())
    }

    /// [`State::persist`] with secrets sealed by `codec`.
    pub fn persist_with(&mut self, path: &Path, codec: &Codec) -> Result<(), StateError> {
        let bytes = self.next_version(&path.display().to_string(), codec)?;
        write_atomic(path, &bytes).map_err(|source| StateError::Write {
            path: path.display().to_string(),
            source,
        })
    }
}

impl State {
    /// The document of the next version of this state, checked (refused, changing nothing,
    /// if it is one a loader would refuse) and with its serial bumped.
    pub(crate) fn next_version(
        &mut self,
        place: &str,
        codec: &Codec,
    ) -> Result<Vec<u8>, StateError> {
        self.serial += 1;
        self.document(place, codec)
            .inspect_err(|_| self.serial -= 1)
    }

    /// The document of this state as it is (`state push`), checked: refused if it is one a
    /// loader would refuse, or one `codec` may not write.
    pub(crate) fn document(&mut self, place: &str, codec: &Codec) -> Result<Vec<u8>, StateError> {
        let refused = |message| StateError::Refused {
            path: place.to_string(),
            message,
        };
        self.check().map_err(refused)?;
        self.to_json_with(codec).map_err(refused)
    }
}

/// The records on a dependency cycle, in dependency order, as a message: at most 20 named.
fn cycle_message(on: &[&Addr]) -> String {
    const NAMED: usize = 20;
    if let [only] = on {
        return format!("resource {only} depends on itself (a dependency cycle)");
    }
    let mut path: Vec<String> = on.iter().take(NAMED).map(|a| a.to_string()).collect();
    if on.len() > NAMED {
        path.push(format!("({} more)", on.len() - NAMED));
    }
    path.push(on[0].to_string());
    format!(
        "{} resources depend on each other in a cycle: {} (each is recorded as built on the next, so none can be deleted first)",
        on.len(),
        path.join(" -> ")
    )
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

pub(crate) enum FromJsonError {
    Version(u32),
    Invalid(String),
    Key(String),
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
    observed: std::borrow::Cow<'a, serde_json::Map<String, serde_json::Value>>,
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
            observed: std::borrow::Cow::Borrowed(&r.observed),
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

    /// A state file of cluster lab holding `resources` (address, deps), written as by hand.
    fn hand_written(path: &Path, resources: &[(&str, &[&str])]) {
        let resources: Vec<serde_json::Value> = resources
            .iter()
            .map(|(a, deps)| {
                let addr: Addr = a.parse().unwrap();
                serde_json::json!({
                    "address": a, "kind": addr.kind, "host": &*addr.host,
                    "image": &*addr.image, "status": "ready",
                    "desired": {"purpose": "cache", "size": 1}, "deps": deps,
                })
            })
            .collect();
        let doc = serde_json::json!({
            "format_version": 1, "serial": 1, "lineage": "x", "cluster": "lab",
            "resources": resources,
        });
        fs::write(path, doc.to_string()).unwrap();
    }

    #[test]
    fn a_dependency_cycle_is_refused_naming_the_file_and_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lab.json");
        hand_written(
            &path,
            &[
                ("lv.a.img", &[]),
                ("lv.b.img", &["lv.a.img", "lv.d.img"]),
                ("lv.c.img", &["lv.b.img"]),
                ("lv.d.img", &["lv.c.img"]),
            ],
        );
        let err = State::load(&path, "lab").unwrap_err().to_string();
        assert!(err.contains(&format!("`{}`", path.display())), "{err}");
        assert!(
            err.contains("3 resources depend on each other in a cycle: lv.b.img -> lv.d.img -> lv.c.img -> lv.b.img"),
            "{err}"
        );
        assert!(!err.contains("lv.a.img"), "{err}");
        assert!(err.contains("fix it by hand"), "{err}");

        hand_written(
            &path,
            &[("lv.a.img", &[]), ("lv.b.img", &[]), ("lv.a.img", &[])],
        );
        let err = State::load(&path, "lab").unwrap_err().to_string();
        assert!(err.contains("resource lv.a.img is recorded twice"), "{err}");

        hand_written(&path, &[("lv.a.img", &["lv.a.img"])]);
        let err = State::open(&path, None).unwrap_err().to_string();
        assert!(err.contains("lv.a.img depends on itself"), "{err}");
    }

    #[test]
    fn long_cycles_are_named_in_part() {
        let n = 100;
        let mut s = State::empty("lab");
        for i in 0..n {
            s.upsert(lv(
                &format!("lv.h{i}.img"),
                &[&format!("lv.h{}.img", (i + 1) % n)],
            ));
        }
        let err = s.check().unwrap_err();
        assert!(
            err.starts_with("100 resources depend on each other"),
            "{err}"
        );
        assert!(
            err.contains("lv.h19.img -> (80 more) -> lv.h0.img"),
            "{err}"
        );
        assert!(err.len() < 600, "{err}");
    }

    #[test]
    fn deep_chains_are_checked_without_recursion() {
        // Deeper than any call stack would take, one record after the other.
        let n = 300_000;
        let mut resources = Vec::with_capacity(n);
        for i in 0..n {
            let deps: Vec<String> = if i == 0 {
                vec![]
            } else {
                vec![format!("lv.h{}.img", i - 1)]
            };
            let deps: Vec<&str> = deps.iter().map(|d| d.as_str()).collect();
            resources.push(lv(&format!("lv.h{i}.img"), &deps));
        }
        // Dependents first: each walk from a root goes down the whole chain.
        resources.reverse();
        let mut s = State::from_parts("lab", 0, None, Placement::new(), resources).unwrap();
        s.upsert(lv("lv.h0.img", &[&format!("lv.h{}.img", n - 1)]));
        let err = s.check().unwrap_err();
        assert!(
            err.starts_with(&format!("{n} resources depend on each other")),
            "{err}"
        );
    }

    #[test]
    fn persist_refuses_what_load_would_refuse_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lab.json");
        let mut good = State::empty("lab");
        good.upsert(lv("lv.a.img", &[]));
        good.persist(&path).unwrap();
        let written = fs::read(&path).unwrap();

        let refused = |mut s: State| {
            let serial = s.serial;
            let err = s.persist(&path).unwrap_err();
            assert!(matches!(err, StateError::Refused { .. }), "{err:?}");
            assert_eq!(s.serial, serial, "nothing was bumped");
            assert_eq!(fs::read(&path).unwrap(), written, "nothing was written");
            err.to_string()
        };
        let mut s = good.clone();
        s.upsert(lv("lv.x.img", &["lv.nowhere.img"]));
        let err = refused(s);
        assert!(err.starts_with(&format!("refusing to write state `{}`: resource lv.x.img depends on lv.nowhere.img, which is not recorded", path.display())), "{err}");

        let mut s = good.clone();
        s.upsert(lv("lv.b.img", &["lv.c.img"]));
        s.upsert(lv("lv.c.img", &["lv.b.img"]));
        assert!(refused(s).contains("lv.b.img -> lv.c.img -> lv.b.img"));

        let mut s = good.clone();
        s.resources.push(lv("lv.a.img", &[]));
        assert!(refused(s).contains("resource lv.a.img is recorded twice"));

        let mut s = good.clone();
        s.upsert(Recorded {
            desired: Desired::Lv(LvAttrs {
                purpose: LvPurpose::Cache,
                size: Size(1),
            }),
            ..lv("cache.a.img", &["lv.a.img"])
        });
        assert!(refused(s).contains("cache.a.img has attributes of a lv"));

        // Journal compaction checks too: a journal that would make a broken state is refused
        // when loaded, before anything is folded into the file.
        let mut s = good.clone();
        let mut j = journal::Journal::begin(&mut s, &path).unwrap();
        let mut lines = Vec::new();
        journal::upsert_line(&lv("lv.b.img", &["lv.gone.img"]), &mut lines);
        j.append(&lines).unwrap();
        drop(j);
        let err = State::load(&path, "lab").unwrap_err().to_string();
        assert!(
            err.contains("lab.json.journal") && err.contains("lv.gone.img"),
            "{err}"
        );
        assert_eq!(fs::read(&path).unwrap(), written);
    }
}
