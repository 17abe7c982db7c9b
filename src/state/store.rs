//! The seam between commands and where state is kept: a file ([`super::FileStore`]) or a
//! PostgreSQL database ([`super::postgres::PgStore`]).
//!
//! Every store keeps one contract: load (with a journal left by a killed apply replayed), a
//! lock with who holds it, a journal whose appends are durable when they return, an atomic
//! whole-state write that keeps the previous version, and secrets sealed by the store's
//! [`Codec`] on the way out and opened on the way in. Commands and the executor see only this.

use std::path::PathBuf;
use std::time::Duration;

use super::{Codec, Loaded, LockError, LockInfo, State, StateError};

/// Where a state is kept, as `--state`, `VMTHUNDER_STATE` or the spec's `state` section names
/// it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    File(PathBuf),
    /// A libpq connection URL (`postgres://` or `postgresql://`).
    Postgres(String),
}

impl Location {
    /// A URL with a postgres scheme names a database; anything else is a file path.
    pub fn parse(s: &str) -> Location {
        if is_postgres_url(s) {
            Location::Postgres(s.to_string())
        } else {
            Location::File(PathBuf::from(s))
        }
    }
}

/// Whether `s` is a PostgreSQL connection URL.
pub fn is_postgres_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// A held state lock: released when dropped (or when its holder dies).
pub struct Held {
    pub info: LockInfo,
    /// What keeps the lock: a flock'ed file, a database session.
    _guard: Box<dyn Send>,
}

impl Held {
    pub fn new(info: LockInfo, guard: Box<dyn Send>) -> Held {
        Held {
            info,
            _guard: guard,
        }
    }
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held").field("info", &self.info).finish()
    }
}

/// An apply's journal in a store.
pub trait JournalSink: Send {
    /// Appends whole lines and makes them durable.
    fn append(&mut self, lines: &[u8]) -> std::io::Result<()>;
    /// Where the journal is kept, for messages.
    fn place(&self) -> String;
    /// Ends the apply: the state is written once, then the journal goes.
    fn close(self: Box<Self>, state: &mut State) -> Result<(), StateError>;
}

/// Where a cluster's state is kept.
pub trait Store: Send + Sync {
    /// Names the state in messages: a file's path, or a database and cluster.
    fn name(&self) -> String;
    /// How records are sealed on the way out and opened on the way in.
    fn codec(&self) -> &Codec;
    /// This store with another codec (`state rekey` writes with the new key).
    fn recoded(&self, codec: Codec) -> Result<Box<dyn Store>, StateError>;
    /// Reads the state, a journal left by a killed apply replayed (read-only). `cluster`:
    /// the spec's, or `None` for whatever cluster the state is for.
    fn open(&self, cluster: Option<&str>) -> Result<Loaded, StateError>;
    /// Takes the lock for `operation`, waiting up to `timeout` for its holder.
    fn lock(&self, operation: &str, timeout: Duration) -> Result<Held, LockError>;
    /// Removes the lock whose ID is `id`; refused while its holder is alive on this machine
    /// unless `force`.
    fn force_unlock(&self, id: &str, force: bool) -> Result<LockInfo, LockError>;
    /// Bumps the serial and writes the whole state atomically, the previous version kept.
    /// Refused, writing nothing, if the state is one a load would refuse.
    fn write(&self, state: &mut State) -> Result<(), StateError>;
    /// Folds a leftover journal into the state: after this, the state alone is the truth.
    /// Call with the lock held, on the state just opened. Whether there was a journal.
    fn settle(&self, state: &mut State) -> Result<bool, StateError>;
    /// Starts the journal of an apply that builds on `state` (settled). Gives the state its
    /// lineage if it has none yet.
    fn begin(&self, state: &mut State) -> Result<Box<dyn JournalSink>, StateError>;
    /// Writes `state` as it is, at its own serial (`state push`): the previous version kept.
    /// Refused, writing nothing, if the state is one a load would refuse.
    fn put(&self, state: &mut State) -> Result<(), StateError>;
    /// The version before the last write, if one is kept.
    fn previous(&self) -> Result<Option<State>, StateError>;
    /// A local file beside the state for what this machine keeps per cluster (the clones'
    /// SSH host keys): `ext` names it.
    fn side_file(&self, ext: &str) -> PathBuf;
}

/// Opens the store at `location` for `cluster` (`None`: the only cluster it holds), with the
/// key that seals secrets, if any.
pub fn open(
    location: &Location,
    cluster: Option<&str>,
    key: Option<super::seal::Key>,
) -> Result<Box<dyn Store>, StateError> {
    match location {
        Location::File(path) => Ok(Box::new(super::FileStore::new(
            path.clone(),
            Codec::new(key, false),
        ))),
        Location::Postgres(url) => Ok(Box::new(super::postgres::PgStore::connect(
            url,
            cluster,
            Codec::new(key, true),
        )?)),
    }
}
