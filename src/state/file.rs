//! The file store: `state/<cluster>.json`, its journal `<state>.journal`, its lock
//! `<state>.lock` and its previous version `<state>.backup`, all beside it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::journal::{self, Journal};
use super::store::{Held, JournalSink, Store};
use super::{lock, Codec, Loaded, LockError, LockInfo, State, StateError};

pub struct FileStore {
    path: PathBuf,
    codec: Codec,
}

impl FileStore {
    pub fn new(path: PathBuf, codec: Codec) -> FileStore {
        FileStore { path, codec }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Store for FileStore {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn codec(&self) -> &Codec {
        &self.codec
    }

    fn recoded(&self, codec: Codec) -> Result<Box<dyn Store>, StateError> {
        Ok(Box::new(FileStore::new(self.path.clone(), codec)))
    }

    fn open(&self, cluster: Option<&str>) -> Result<Loaded, StateError> {
        State::open_with(&self.path, cluster, &self.codec)
    }

    fn lock(&self, operation: &str, timeout: Duration) -> Result<Held, LockError> {
        let held = lock::Lock::acquire(&self.path, operation, timeout)?;
        Ok(Held::new(held.info.clone(), Box::new(held)))
    }

    fn force_unlock(&self, id: &str, force: bool) -> Result<LockInfo, LockError> {
        lock::force_unlock(&self.path, id, force)
    }

    fn write(&self, state: &mut State) -> Result<(), StateError> {
        state.persist_with(&self.path, &self.codec)
    }

    fn settle(&self, state: &mut State) -> Result<bool, StateError> {
        journal::settle_with(state, &self.path, &self.codec)
    }

    fn begin(&self, state: &mut State) -> Result<Box<dyn JournalSink>, StateError> {
        Ok(Box::new(FileJournal {
            journal: Journal::begin(state, &self.path)?,
            path: self.path.clone(),
            codec: self.codec.clone(),
        }))
    }

    fn put(&self, state: &mut State) -> Result<(), StateError> {
        let place = self.name();
        let doc = state.document(&place, &self.codec)?;
        super::write_atomic(&self.path, &doc).map_err(|source| StateError::Write {
            path: place,
            source,
        })?;
        // A journal beside it built on what was there: it is not this state's any more.
        let _ = std::fs::remove_file(journal::path_for(&self.path));
        Ok(())
    }

    fn previous(&self) -> Result<Option<State>, StateError> {
        let mut backup = self.path.as_os_str().to_owned();
        backup.push(".backup");
        let backup = PathBuf::from(backup);
        if !backup.exists() {
            return Ok(None);
        }
        Ok(Some(State::open_with(&backup, None, &self.codec)?.state))
    }

    fn side_file(&self, ext: &str) -> PathBuf {
        self.path.with_extension(ext)
    }
}

struct FileJournal {
    journal: Journal,
    path: PathBuf,
    codec: Codec,
}

impl JournalSink for FileJournal {
    fn append(&mut self, lines: &[u8]) -> std::io::Result<()> {
        self.journal.append(lines)
    }

    fn place(&self) -> String {
        self.journal.path().display().to_string()
    }

    fn close(self: Box<Self>, state: &mut State) -> Result<(), StateError> {
        let FileJournal {
            journal,
            path,
            codec,
        } = *self;
        journal.close_with(state, &path, &codec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{Desired, SessionAttrs};
    use crate::state::seal::Key;
    use crate::state::{Placement, Recorded, Status};

    /// A state of cluster lab with one session whose observed CHAP secret is `secret`.
    fn with_secret(secret: &str) -> State {
        let mut observed = serde_json::Map::new();
        observed.insert("chap_user".into(), "vmt-lab-node1".into());
        observed.insert("chap_secret".into(), secret.into());
        let r = Recorded {
            addr: "session.node1.base".parse().unwrap(),
            desired: Desired::Session(SessionAttrs {
                parent: "img0".into(),
                parent_address: "10.0.0.1".into(),
                parent_port: 10809,
                tls: false,
            }),
            observed,
            deps: vec![],
            status: Status::Ready,
        };
        State::from_parts("lab", 0, None, Placement::new(), vec![r]).unwrap()
    }

    #[test]
    fn secrets_are_sealed_on_disk_in_the_file_its_backup_and_its_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lab.json");
        let secret = "0123456789abcdef01234567";
        let key = Key::generate();
        let store = FileStore::new(path.clone(), Codec::new(Some(key.clone()), false));
        let mut s = with_secret(secret);
        store.write(&mut s).unwrap();
        store.write(&mut s).unwrap();
        let mut j = store.begin(&mut s).unwrap();
        let mut line = Vec::new();
        store
            .codec()
            .upsert_line("lab", &s.resources[0], &mut line)
            .unwrap();
        j.append(&line).unwrap();
        for f in ["lab.json", "lab.json.backup", "lab.json.journal"] {
            let bytes = std::fs::read(dir.path().join(f)).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains(secret), "{f}: {text}");
            assert!(text.contains(key.id()), "{f} names the key: {text}");
        }
        let back = store.open(Some("lab")).unwrap().state;
        assert_eq!(back.resources[0].observed["chap_secret"], secret);

        // No key, or another one: refused, naming the record and what to do.
        let none = FileStore::new(path.clone(), Codec::default());
        let err = none.open(Some("lab")).unwrap_err().to_string();
        assert!(
            err.contains("session.node1.base") && err.contains(key.id()),
            "{err}"
        );
        let other = FileStore::new(path.clone(), Codec::new(Some(Key::generate()), false));
        let err = other.open(Some("lab")).unwrap_err().to_string();
        assert!(err.contains("session.node1.base"), "{err}");
    }

    #[test]
    fn a_store_that_refuses_clear_secrets_writes_nothing_without_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lab.json");
        let store = FileStore::new(path.clone(), Codec::new(None, true));
        let mut s = with_secret("s3cr3t");
        let err = store.write(&mut s).unwrap_err().to_string();
        assert!(err.contains("configure a state key"), "{err}");
        assert_eq!(s.serial, 0, "nothing was bumped");
        assert!(!path.exists());
        // In clear where clear is allowed (the file store without a key, as before).
        FileStore::new(path.clone(), Codec::default())
            .write(&mut s)
            .unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().contains("s3cr3t"));
    }
}
