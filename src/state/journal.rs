//! The journal: every operation an apply completes, appended next to the state file and
//! fsynced before the operation counts as done.
//!
//! Rewriting a large state after each operation costs O(state) per operation; the journal
//! costs O(1). The state file is rewritten once, when the apply ends, and the journal is then
//! removed. A journal left behind by a killed apply is replayed whenever the state is loaded,
//! and folded into the state file by the next command that writes state ([`settle`]).
//!
//! Format: JSON lines. The first is a header naming the state it builds on (cluster, lineage,
//! serial) and the placement the apply records; then one `{"upsert": <resource>}` or
//! `{"remove": "<address>"}` per completed operation, in completion order. A torn last line
//! (the process died inside a write) was never fsynced, so never reported: it is ignored.

use std::borrow::Cow;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use super::{Placement, Recorded, RecordedIn, RecordedOut, State, StateError};
use crate::resource::Addr;

const JOURNAL_VERSION: u32 = 1;

/// Group commit gathers what finishes in this long into one fsync.
const MIN_SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_millis(1);

/// `<state>.journal`, next to the state file.
pub fn path_for(state_path: &Path) -> PathBuf {
    let mut name = state_path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".journal");
    state_path.with_file_name(name)
}

#[derive(Serialize, Deserialize)]
struct Header<'a> {
    vmthunder_journal: u32,
    #[serde(borrow)]
    cluster: Cow<'a, str>,
    #[serde(borrow)]
    lineage: Cow<'a, str>,
    /// The serial of the state file this journal builds on.
    serial: u64,
    placement: Placement,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Entry<'a> {
    Upsert(#[serde(borrow)] RecordedIn<'a>),
    Remove(Addr),
}

/// What loading found next to a state file.
#[derive(Debug, PartialEq, Eq)]
pub enum Replayed {
    /// No journal.
    None,
    /// A journal older than the state file (the apply ended but died before removing it).
    Stale,
    /// A journal of an apply that did not end: this many operations were applied.
    Applied(usize),
}

/// Applies the journal next to `state_path`, if any, to `state` (just loaded from that path).
pub(super) fn replay(state: &mut State, state_path: &Path) -> Result<Replayed, StateError> {
    let path = path_for(state_path);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Replayed::None),
        Err(source) => {
            return Err(StateError::Read {
                path: path.display().to_string(),
                source,
            })
        }
    };
    let shown = path.display().to_string();
    let corrupt = |message: String| StateError::Corrupt {
        path: shown.clone(),
        message,
    };
    // Only newline-terminated lines were written whole; the rest is a torn write.
    let complete = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(end) => &bytes[..end],
        None => return Ok(Replayed::Stale),
    };
    let mut lines = complete.split(|&b| b == b'\n');
    let header: Header<'_> = serde_json::from_slice(lines.next().unwrap_or_default())
        .map_err(|e| corrupt(format!("line 1: not a journal header: {e}")))?;
    if header.vmthunder_journal != JOURNAL_VERSION {
        return Err(corrupt(format!(
            "journal version {} is not {JOURNAL_VERSION}",
            header.vmthunder_journal
        )));
    }
    let same_lineage = state.lineage.as_deref().is_none_or(|l| l == header.lineage);
    if header.cluster != state.cluster || !same_lineage {
        return Err(corrupt(format!(
            "it belongs to cluster {:?} lineage {}, not to this state (cluster {:?} lineage {}); move it aside if it is not from this state's last apply",
            header.cluster,
            header.lineage,
            state.cluster,
            state.lineage.as_deref().unwrap_or("(new)")
        )));
    }
    if header.serial < state.serial {
        return Ok(Replayed::Stale);
    }
    if header.serial > state.serial {
        return Err(corrupt(format!(
            "it builds on state serial {} but the state file has serial {}: the state file was replaced by an older one",
            header.serial, state.serial
        )));
    }
    state.lineage = Some(header.lineage.into_owned());
    state.placement = header.placement;
    let lines: Vec<&[u8]> = lines.collect();
    let mut applied = 0;
    for (i, line) in lines.iter().enumerate() {
        // Every newline-terminated line was written whole (and reported once fsynced): one
        // that does not parse is corruption, never a torn write.
        let entry = serde_json::from_slice::<Entry<'_>>(line)
            .map_err(|e| corrupt(format!("line {}: {e}", i + 2)))?;
        match entry {
            Entry::Upsert(r) => {
                let r = r
                    .into_recorded()
                    .map_err(|m| corrupt(format!("line {}: {m}", i + 2)))?;
                state.upsert(r);
            }
            Entry::Remove(addr) => {
                state.remove(&addr);
            }
        }
        applied += 1;
    }
    state.check_deps().map_err(corrupt)?;
    if applied > 0 {
        // Not the state the file's serial names any more: a plan saved against that serial
        // must be refused.
        state.serial = header.serial + 1;
    }
    Ok(Replayed::Applied(applied))
}

/// Folds a leftover journal into the state file: after this, the state file alone is the
/// truth. Call with the lock held, on a state loaded from `state_path`.
pub fn settle(state: &mut State, state_path: &Path) -> Result<bool, StateError> {
    let path = path_for(state_path);
    if !path.exists() {
        return Ok(false);
    }
    if state.lineage.is_some() {
        state.persist(state_path)?;
    }
    remove(&path)?;
    Ok(true)
}

fn remove(path: &Path) -> Result<(), StateError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(StateError::Write {
                path: path.display().to_string(),
                source,
            })
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// An open journal for one apply.
pub struct Journal {
    file: File,
    path: PathBuf,
}

impl Journal {
    /// Starts the journal of an apply that builds on `state` as persisted at `state_path`
    /// (settled: no journal left over). Gives the state its lineage if it has none yet.
    pub fn begin(state: &mut State, state_path: &Path) -> Result<Journal, StateError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = path_for(state_path);
        let write_err = |source| StateError::Write {
            path: path.display().to_string(),
            source,
        };
        let lineage = state
            .lineage
            .get_or_insert_with(|| uuid::Uuid::new_v4().to_string())
            .clone();
        let header = Header {
            vmthunder_journal: JOURNAL_VERSION,
            cluster: Cow::Borrowed(&state.cluster),
            lineage: Cow::Owned(lineage),
            serial: state.serial,
            placement: state.placement.clone(),
        };
        let mut line = serde_json::to_vec(&header).expect("headers serialize");
        line.push(b'\n');
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(write_err)?;
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(write_err)?;
        file.write_all(&line).map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(write_err)?;
        }
        Ok(Journal { file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends whole lines and makes them durable.
    pub fn append(&mut self, lines: &[u8]) -> std::io::Result<()> {
        self.file.write_all(lines)?;
        self.file.sync_data()
    }

    /// Ends the apply: the state is written once, then the journal goes.
    pub fn close(self, state: &mut State, state_path: &Path) -> Result<(), StateError> {
        state.persist(state_path)?;
        drop(self.file);
        remove(&self.path)
    }
}

/// The journal line recording `r`.
pub fn upsert_line(r: &Recorded, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"upsert\":");
    serde_json::to_writer(&mut *out, &RecordedOut::of(r)).expect("resources serialize");
    out.extend_from_slice(b"}\n");
}

/// The journal line forgetting `addr`.
pub fn remove_line(addr: &Addr, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"remove\":");
    serde_json::to_writer(&mut *out, addr).expect("addresses serialize");
    out.extend_from_slice(b"}\n");
}

/// Group commit: lines are queued by one thread and written and fsynced by another, whatever
/// accumulated during the previous fsync going down in one write. `on_durable` hears the
/// sequence number up to which lines are durable (or the error that stopped the journal).
pub struct GroupCommit {
    shared: Arc<(Mutex<Queue>, Condvar)>,
    thread: Option<JoinHandle<Journal>>,
}

#[derive(Default)]
struct Queue {
    lines: Vec<u8>,
    /// Sequence number of the last queued line.
    queued: u64,
    closing: bool,
}

impl GroupCommit {
    pub fn start(
        mut journal: Journal,
        on_durable: impl Fn(Result<u64, std::io::Error>) + Send + 'static,
    ) -> GroupCommit {
        let shared = Arc::new((Mutex::new(Queue::default()), Condvar::new()));
        let theirs = Arc::clone(&shared);
        let thread = std::thread::spawn(move || {
            let (lock, cvar) = &*theirs;
            let mut spare = Vec::new();
            let mut last_sync: Option<std::time::Instant> = None;
            loop {
                // At most one fsync per interval: an fsync costs the same for one line or a
                // thousand, and on a virtual disk it costs CPU the operations need.
                if let Some(wait) =
                    last_sync.and_then(|t| MIN_SYNC_INTERVAL.checked_sub(t.elapsed()))
                {
                    std::thread::sleep(wait);
                }
                let (mut batch, seq) = {
                    let mut q = lock.lock().expect("journal queue");
                    while q.lines.is_empty() && !q.closing {
                        q = cvar.wait(q).expect("journal queue");
                    }
                    if q.lines.is_empty() {
                        return journal;
                    }
                    (
                        std::mem::replace(&mut q.lines, std::mem::take(&mut spare)),
                        q.queued,
                    )
                };
                let result = journal.append(&batch);
                last_sync = Some(std::time::Instant::now());
                match result {
                    Ok(()) => on_durable(Ok(seq)),
                    Err(e) => {
                        on_durable(Err(e));
                        return journal;
                    }
                }
                batch.clear();
                spare = batch;
            }
        });
        GroupCommit {
            shared,
            thread: Some(thread),
        }
    }

    /// Queues complete lines; returns their sequence number.
    pub fn push(&self, lines: &[u8]) -> u64 {
        let (lock, cvar) = &*self.shared;
        let mut q = lock.lock().expect("journal queue");
        q.lines.extend_from_slice(lines);
        q.queued += 1;
        cvar.notify_one();
        q.queued
    }

    /// Writes what is queued and stops; gives the journal back.
    pub fn finish(mut self) -> Journal {
        {
            let (lock, cvar) = &*self.shared;
            lock.lock().expect("journal queue").closing = true;
            cvar.notify_one();
        }
        self.thread
            .take()
            .expect("finished once")
            .join()
            .expect("the journal thread does not panic")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::lv;

    #[test]
    fn a_killed_apply_is_replayed_and_settled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lab.json");
        let mut s = State::empty("lab");
        s.upsert(lv("lv.a.img", &[]));
        s.persist(&path).unwrap();
        let mut j = Journal::begin(&mut s, &path).unwrap();
        let mut lines = Vec::new();
        upsert_line(&lv("lv.b.img", &[]), &mut lines);
        upsert_line(&lv("lv.c.img", &["lv.b.img"]), &mut lines);
        remove_line(&"lv.a.img".parse().unwrap(), &mut lines);
        j.append(&lines).unwrap();
        // A write torn by a kill: never fsynced, never reported.
        j.file.write_all(b"{\"upsert\":{\"addr").unwrap();
        drop(j);

        let mut loaded = State::load(&path, "lab").unwrap();
        let addrs: Vec<String> = loaded
            .resources
            .iter()
            .map(|r| r.addr.to_string())
            .collect();
        assert_eq!(addrs, ["lv.c.img", "lv.b.img"]);
        // Past the file's serial 1: a plan saved against serial 1 is refused.
        assert_eq!(loaded.serial, 2);
        assert!(settle(&mut loaded, &path).unwrap());
        assert!(!path_for(&path).exists());
        let again = State::load(&path, "lab").unwrap();
        assert_eq!(again.serial, 3);
        assert_eq!(again.resources, loaded.resources);
    }

    #[test]
    fn a_first_apply_killed_before_any_state_file_still_replays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lab.json");
        let mut s = State::empty("lab");
        let mut j = Journal::begin(&mut s, &path).unwrap();
        let mut lines = Vec::new();
        upsert_line(&lv("lv.a.img", &[]), &mut lines);
        j.append(&lines).unwrap();
        drop(j);
        let loaded = State::load(&path, "lab").unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded.lineage, s.lineage);
    }

    #[test]
    fn stale_and_foreign_journals_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lab.json");
        let mut s = State::empty("lab");
        s.persist(&path).unwrap();
        let mut j = Journal::begin(&mut s, &path).unwrap();
        let mut lines = Vec::new();
        upsert_line(&lv("lv.a.img", &[]), &mut lines);
        j.append(&lines).unwrap();
        // The apply ended (state rewritten) but died before removing the journal.
        s.upsert(lv("lv.a.img", &[]));
        s.persist(&path).unwrap();
        drop(j);
        let mut loaded = State::load(&path, "lab").unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(replay(&mut loaded, &path).unwrap(), Replayed::Stale);

        // A journal of another lineage is refused, naming the file.
        let other = dir.path().join("other.json");
        let mut o = State::empty("lab");
        o.persist(&other).unwrap();
        fs::copy(path_for(&path), path_for(&other)).unwrap();
        let err = State::load(&other, "lab").unwrap_err().to_string();
        assert!(err.contains("other.json.journal"), "{err}");
    }

    #[test]
    fn group_commit_reports_durable_sequence_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lab.json");
        let mut s = State::empty("lab");
        let j = Journal::begin(&mut s, &path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let gc = GroupCommit::start(j, move |r| tx.send(r.unwrap()).unwrap());
        let mut last = 0;
        for i in 0..100 {
            let mut line = Vec::new();
            upsert_line(&lv(&format!("lv.h{i}.img"), &[]), &mut line);
            last = gc.push(&line);
        }
        let j = gc.finish();
        let durable: Vec<u64> = rx.try_iter().collect();
        assert_eq!(durable.last(), Some(&last));
        assert!(durable.windows(2).all(|w| w[0] < w[1]));
        drop(j);
        assert_eq!(State::load(&path, "lab").unwrap().len(), 100);
    }
}
