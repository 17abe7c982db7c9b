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

use super::store::JournalSink;
use super::{Codec, Placement, Recorded, RecordedIn, State, StateError};
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
    /// A journal without one whole line, so without its header: an apply killed as it began
    /// it. Nothing to replay (what is left out is in [`Ignored`]).
    Headless,
    /// A journal of an apply that did not end: this many operations were applied.
    Applied(usize),
}

/// Journal bytes that replay leaves out: the end of a journal that is not a whole line.
#[derive(Debug, PartialEq, Eq)]
pub struct Ignored {
    /// The journal: a file's path, or where a database keeps it.
    pub place: String,
    /// How many bytes are left out.
    pub bytes: usize,
    /// Whole lines before them (0: not even the header is whole).
    pub after_lines: usize,
    /// The start of what is left out, cut short, for people to recognize.
    pub head: String,
}

impl Ignored {
    fn of(place: &str, after_lines: usize, rest: &[u8]) -> Ignored {
        const SHOWN: usize = 40;
        let mut head = String::from_utf8_lossy(&rest[..rest.len().min(SHOWN)]).into_owned();
        if rest.len() > SHOWN {
            head.push_str("...");
        }
        Ignored {
            place: place.to_string(),
            bytes: rest.len(),
            after_lines,
            head,
        }
    }
}

impl std::fmt::Display for Ignored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = &self.place;
        match (self.bytes, self.after_lines) {
            (0, _) => write!(
                f,
                "journal `{path}` is empty (an apply killed as it began): nothing to replay; the next command that writes state removes it"
            ),
            (n, 0) => write!(
                f,
                "journal `{path}` holds {n} byte{} but no whole line, so not even a header ({:?}): ignored as an apply killed as it began; the next command that writes state removes it (move it aside first if it is anything else)",
                if n == 1 { "" } else { "s" },
                self.head
            ),
            (n, lines) => write!(
                f,
                "journal `{path}`: ignoring {n} byte{} after line {lines} ({:?}), a record cut short (by a kill, or still being written) that was never reported done",
                if n == 1 { "" } else { "s" },
                self.head
            ),
        }
    }
}

/// Applies the journal next to `state_path`, if any, to `state` (just loaded from that path;
/// `None` when there is no file, and then the journal's header starts an empty state, for
/// `cluster` if the caller names one). Says which journal bytes it left out.
pub(super) fn replay(
    state: &mut Option<State>,
    cluster: Option<&str>,
    state_path: &Path,
    codec: &Codec,
) -> Result<(Replayed, Option<Ignored>), StateError> {
    let path = path_for(state_path);
    let bytes = match crate::text::read_regular(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Replayed::None, None)),
        Err(source) => {
            return Err(StateError::Read {
                path: path.display().to_string(),
                source,
            })
        }
    };
    replay_bytes(state, cluster, &bytes, &path.display().to_string(), codec)
}

/// [`replay`] of a journal's bytes, wherever they were kept (`shown` names the place).
pub(crate) fn replay_bytes(
    state: &mut Option<State>,
    cluster: Option<&str>,
    bytes: &[u8],
    shown: &str,
    codec: &Codec,
) -> Result<(Replayed, Option<Ignored>), StateError> {
    let shown = shown.to_string();
    let path = shown.as_str();
    let corrupt = |message: String| StateError::Corrupt {
        path: shown.clone(),
        message,
    };
    // Only newline-terminated lines were written whole; the rest is a torn write.
    let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else {
        return Ok((Replayed::Headless, Some(Ignored::of(path, 0, bytes))));
    };
    let complete = &bytes[..end];
    let mut lines = complete.split(|&b| b == b'\n');
    let header: Header<'_> = serde_json::from_slice(lines.next().unwrap_or_default())
        .map_err(|e| corrupt(format!("line 1: not a journal header: {e}")))?;
    if header.vmthunder_journal != JOURNAL_VERSION {
        return Err(corrupt(format!(
            "journal version {} is not {JOURNAL_VERSION}",
            header.vmthunder_journal
        )));
    }
    let state = state.get_or_insert_with(|| State::empty(cluster.unwrap_or(&header.cluster)));
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
        return Ok((Replayed::Stale, None));
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
                let mut r = r
                    .into_recorded()
                    .map_err(|m| corrupt(format!("line {}: {m}", i + 2)))?;
                codec
                    .open(&state.cluster, &mut r)
                    .map_err(|message| StateError::Key {
                        path: shown.clone(),
                        message: format!("line {}: {message}", i + 2),
                    })?;
                state.upsert(r);
            }
            Entry::Remove(addr) => {
                state.remove(&addr);
            }
        }
        applied += 1;
    }
    state.check().map_err(corrupt)?;
    if applied > 0 {
        // Not the state the file's serial names any more: a plan saved against that serial
        // must be refused.
        state.serial = header.serial + 1;
    }
    let torn = &bytes[end + 1..];
    let ignored = (!torn.is_empty()).then(|| Ignored::of(path, lines.len() + 1, torn));
    Ok((Replayed::Applied(applied), ignored))
}

/// Folds a leftover journal into the state file: after this, the state file alone is the
/// truth. Call with the lock held, on a state loaded from `state_path`.
pub fn settle(state: &mut State, state_path: &Path) -> Result<bool, StateError> {
    settle_with(state, state_path, &Codec::default())
}

/// [`settle`], writing with `codec`.
pub fn settle_with(
    state: &mut State,
    state_path: &Path,
    codec: &Codec,
) -> Result<bool, StateError> {
    let path = path_for(state_path);
    if !path.exists() {
        return Ok(false);
    }
    if state.lineage.is_some() {
        state.persist_with(state_path, codec)?;
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
        let line = header_line(state);
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
        self.close_with(state, state_path, &Codec::default())
    }

    /// [`Journal::close`], writing with `codec`.
    pub fn close_with(
        self,
        state: &mut State,
        state_path: &Path,
        codec: &Codec,
    ) -> Result<(), StateError> {
        state.persist_with(state_path, codec)?;
        drop(self.file);
        remove(&self.path)
    }
}

/// The first line of a journal that builds on `state`. Gives the state its lineage if it has
/// none yet.
pub(crate) fn header_line(state: &mut State) -> Vec<u8> {
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
    line
}

/// The journal line recording `r` (no secret sealed: [`Codec::upsert_line`] seals them).
pub fn upsert_line(r: &Recorded, out: &mut Vec<u8>) {
    Codec::default()
        .upsert_line("", r, out) // no key: nothing is bound to a cluster
        .expect("the default codec refuses nothing");
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
    thread: Option<JoinHandle<Box<dyn JournalSink>>>,
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
        mut journal: Box<dyn JournalSink>,
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
    pub fn finish(mut self) -> Box<dyn JournalSink> {
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

        let opened = State::open(&path, Some("lab")).unwrap();
        assert_eq!(opened.journal, Replayed::Applied(3));
        let ignored = opened.ignored.expect("the torn write is told");
        assert_eq!((ignored.bytes, ignored.after_lines), (16, 4));
        let told = ignored.to_string();
        assert!(
            told.contains(
                "lab.json.journal`: ignoring 16 bytes after line 4 (\"{\\\"upsert\\\":{\\\"addr\")"
            ),
            "{told}"
        );
        let mut loaded = opened.state;
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
        // A reader that does not know the cluster sees the same state: the journal names it.
        let any = State::open(&path, None).unwrap();
        assert_eq!(any.state, loaded);
        assert_eq!(any.journal, Replayed::Applied(1));
        let err = State::open(&path, Some("other")).unwrap_err().to_string();
        assert!(
            err.contains("lab.json.journal") && err.contains("cluster \"lab\""),
            "{err}"
        );
        // Neither a file nor a journal: empty for a known cluster, nothing to read otherwise.
        let none = dir.path().join("none.json");
        assert!(State::open(&none, Some("lab")).unwrap().state.is_empty());
        let err = State::open(&none, None).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("no state at `{}`", none.display())),
            "{err}"
        );
    }

    #[test]
    fn empty_and_headless_journals_are_told_before_they_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lab.json");
        let mut s = State::empty("lab");
        s.upsert(lv("lv.a.img", &[]));
        s.persist(&path).unwrap();
        let journal = path_for(&path);
        for (bytes, told) in [
            (&b""[..], "is empty (an apply killed as it began)".to_string()),
            (
                &b"{\"vmthunder_journal\":1,\"cluster\":\"lab\",\"lineage\":\"0123456789"[..],
                "holds 60 bytes but no whole line, so not even a header (\"{\\\"vmthunder_journal\\\":1,\\\"cluster\\\":\\\"lab\\\",\\\"...\"): ignored".to_string(),
            ),
        ] {
            fs::write(&journal, bytes).unwrap();
            let opened = State::open(&path, Some("lab")).unwrap();
            assert_eq!(opened.journal, Replayed::Headless);
            assert_eq!(opened.state.len(), 1);
            let ignored = opened.ignored.expect("what is dropped is told");
            assert_eq!(ignored.bytes, bytes.len());
            let message = ignored.to_string();
            assert!(
                message.starts_with(&format!("journal `{}` ", journal.display())),
                "{message}"
            );
            assert!(message.contains(&told), "{message}");
            // Folded by the next writer: the state file is unchanged but for its serial.
            let mut state = opened.state;
            assert!(settle(&mut state, &path).unwrap());
            assert!(!journal.exists());
            assert_eq!(State::load(&path, "lab").unwrap().resources, state.resources);
        }
        // Without a state file, a headless journal is no state at all.
        fs::remove_file(&path).unwrap();
        fs::write(&journal, b"{\"vmth").unwrap();
        let opened = State::open(&path, Some("lab")).unwrap();
        assert!(opened.state.is_empty() && opened.state.lineage.is_none());
        assert_eq!(opened.ignored.map(|i| i.bytes), Some(6));
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
        let loaded = State::open(&path, Some("lab")).unwrap();
        assert_eq!(loaded.state.len(), 1);
        assert_eq!(loaded.journal, Replayed::Stale);

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
        use crate::state::Store;
        let j = crate::state::FileStore::new(path.clone(), Codec::default())
            .begin(&mut s)
            .unwrap();
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
