//! The state lock: one writer at a time.
//!
//! An exclusive `flock` on `<state>.lock`, whose content says who holds it. The kernel drops
//! the lock when its holder dies, so a killed run never leaves a lock that blocks the next one;
//! `force-unlock ID` exists for holders that hang (or hold it from another machine through a
//! shared directory): it removes the file, and new runs lock a fresh one. It refuses while the
//! holder is alive on this machine (unless forced): a new run beside a live one would do its
//! work a second time.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

/// Who holds a lock: written into the lock file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub id: String,
    pub operation: String,
    pub who: String,
    /// The machine `pid` runs on (empty in locks written before it was recorded: then the
    /// host part of `who`).
    #[serde(default)]
    pub host: String,
    pub pid: u32,
    /// Seconds since the Unix epoch.
    pub created: u64,
    pub version: String,
}

impl std::fmt::Display for LockInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let age = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs().saturating_sub(self.created))
            .unwrap_or(0);
        write!(
            f,
            "ID {}, operation {}, held by {} (pid {}) for {age}s",
            self.id, self.operation, self.who, self.pid
        )
    }
}

impl LockInfo {
    /// The info of a lock this process takes now for `operation`, with a fresh ID.
    pub fn new(operation: &str) -> LockInfo {
        let host = hostname();
        LockInfo {
            id: uuid::Uuid::new_v4().to_string(),
            operation: operation.to_string(),
            who: format!("{}@{host}", user()),
            host,
            pid: std::process::id(),
            created: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// Whether the holder runs on this machine and is alive (then a new run beside it would
    /// do its work a second time).
    pub fn alive_here(&self) -> bool {
        self.host() == hostname() && alive(self.pid)
    }

    /// The machine the holder runs on.
    pub fn host(&self) -> &str {
        if self.host.is_empty() {
            self.who.rsplit_once('@').map_or("", |(_, h)| h)
        } else {
            &self.host
        }
    }

    /// When the lock was taken, as an RFC 3339 time.
    pub fn since(&self) -> String {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(self.created);
        humantime::format_rfc3339_seconds(t).to_string()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("state is locked: {holder}\nwait for it to finish, retry with --lock-timeout, or if that process is gone run `vmthunder force-unlock {id}`", id = holder.id)]
    Held { holder: Box<LockInfo> },
    #[error("state is locked by a process that has not written its lock info yet (`{path}`)")]
    HeldUnknown { path: String },
    #[error("state `{path}` is not locked")]
    NotLocked { path: String },
    #[error("lock ID {given:?} does not match the current lock: {holder}")]
    WrongId {
        given: String,
        holder: Box<LockInfo>,
    },
    #[error("refusing to remove the lock of state `{path}`: {operation} (lock ID {id}) by {who}, pid {pid}, holds it since {since}, and that process is still running on this machine, so a run started beside it would do its work a second time: wait for it to finish or stop it (`kill {pid}`), or pass --force to remove the lock anyway", operation = holder.operation, id = holder.id, who = holder.who, pid = holder.pid, since = holder.since())]
    HolderAlive { path: String, holder: Box<LockInfo> },
    #[error("failed to lock state `{place}`: {message}")]
    Store { place: String, message: String },
    #[error("failed to lock state at `{path}`")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A held lock; released (file removed, flock dropped) when dropped.
#[derive(Debug)]
pub struct Lock {
    file: File,
    path: PathBuf,
    pub info: LockInfo,
}

fn lock_path(state: &Path) -> PathBuf {
    let mut p = state.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

fn read_info(file: &mut File) -> Option<LockInfo> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

impl Lock {
    /// Takes the lock of the state at `state`, retrying until `timeout` has passed.
    pub fn acquire(state: &Path, operation: &str, timeout: Duration) -> Result<Lock, LockError> {
        let path = lock_path(state);
        let io = |source| LockError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let start = Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io)?;
            match file.try_lock() {
                Ok(()) => {
                    // A force-unlock may have removed the file between open and lock.
                    let same = fs::metadata(&path)
                        .map(|m| m.ino() == file.metadata().map(|f| f.ino()).unwrap_or(0))
                        .unwrap_or(false);
                    if !same {
                        continue;
                    }
                    let info = LockInfo::new(operation);
                    file.set_len(0).map_err(io)?;
                    file.rewind().map_err(io)?;
                    file.write_all(&serde_json::to_vec_pretty(&info).expect("serializes"))
                        .map_err(io)?;
                    file.sync_all().map_err(io)?;
                    return Ok(Lock { file, path, info });
                }
                Err(TryLockError::WouldBlock) => {
                    if start.elapsed() >= timeout {
                        return Err(match read_info(&mut file) {
                            Some(holder) => LockError::Held {
                                holder: Box::new(holder),
                            },
                            None => LockError::HeldUnknown {
                                path: path.display().to_string(),
                            },
                        });
                    }
                    std::thread::sleep(pause.min(timeout.saturating_sub(start.elapsed())));
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(TryLockError::Error(e)) => return Err(io(e)),
            }
        }
    }

    /// Reads who holds the lock of `state`, if anyone does.
    pub fn holder(state: &Path) -> Option<LockInfo> {
        let mut file = File::open(lock_path(state)).ok()?;
        match file.try_lock_shared() {
            Ok(()) => None,
            Err(_) => read_info(&mut file),
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Remove while still holding it, so nobody can lock a file that is about to vanish
        // without noticing (acquire checks the inode).
        let ours = match (fs::metadata(&self.path), self.file.metadata()) {
            (Ok(on_disk), Ok(held)) => on_disk.ino() == held.ino(),
            _ => false,
        };
        if ours {
            let _ = fs::remove_file(&self.path);
        }
        let _ = self.file.unlock();
    }
}

/// Removes the lock of `state` if its ID is `id`; refused while its holder is alive on this
/// machine, unless `force`.
pub fn force_unlock(state: &Path, id: &str, force: bool) -> Result<LockInfo, LockError> {
    let path = lock_path(state);
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LockError::NotLocked {
                path: state.display().to_string(),
            })
        }
        Err(source) => {
            return Err(LockError::Io {
                path: path.display().to_string(),
                source,
            })
        }
    };
    let Some(holder) = read_info(&mut file) else {
        return Err(LockError::NotLocked {
            path: state.display().to_string(),
        });
    };
    if holder.id != id {
        return Err(LockError::WrongId {
            given: id.to_string(),
            holder: Box::new(holder),
        });
    }
    // A free flock means the holder is gone, whatever process has its pid now.
    let held = file.try_lock_shared().is_err();
    if held && !force && holder.host() == hostname() && alive(holder.pid) {
        return Err(LockError::HolderAlive {
            path: state.display().to_string(),
            holder: Box::new(holder),
        });
    }
    fs::remove_file(&path).map_err(|source| LockError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(holder)
}

/// Whether process `pid` of this machine runs (a zombie has exited: its locks are gone).
fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S ...`: the state follows the last `)`.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|s| s != 'Z' && s != 'X'),
        Err(_) => false,
    }
}

fn user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_fails_naming_the_holder_then_succeeds_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("lab.json");
        let first = Lock::acquire(&state, "apply", Duration::ZERO).unwrap();
        let err = Lock::acquire(&state, "plan", Duration::from_millis(100)).unwrap_err();
        match &err {
            LockError::Held { holder } => {
                assert_eq!(**holder, first.info);
                assert_eq!(holder.operation, "apply");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains(&first.info.id));
        assert_eq!(Lock::holder(&state), Some(first.info.clone()));
        drop(first);
        assert_eq!(Lock::holder(&state), None);
        let again = Lock::acquire(&state, "plan", Duration::ZERO).unwrap();
        assert_eq!(again.info.operation, "plan");
    }

    #[test]
    fn waits_up_to_the_timeout_for_a_release() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("lab.json");
        let first = Lock::acquire(&state, "apply", Duration::ZERO).unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            drop(first);
        });
        let second = Lock::acquire(&state, "plan", Duration::from_secs(5));
        t.join().unwrap();
        assert!(second.is_ok());
    }

    #[test]
    fn force_unlock_needs_the_right_id() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("lab.json");
        assert!(matches!(
            force_unlock(&state, "x", false),
            Err(LockError::NotLocked { .. })
        ));
        let hung = Lock::acquire(&state, "apply", Duration::ZERO).unwrap();
        assert!(matches!(
            force_unlock(&state, "wrong", true),
            Err(LockError::WrongId { .. })
        ));
        // Its holder (this process) is alive on this machine: refused unless forced.
        let err = force_unlock(&state, &hung.info.id, false).unwrap_err();
        assert!(matches!(err, LockError::HolderAlive { .. }), "{err:?}");
        let shown = err.to_string();
        for part in [
            hung.info.id.as_str(),
            &format!("pid {}", std::process::id()),
            &hung.info.since(),
            "--force",
        ] {
            assert!(shown.contains(part), "{part}: {shown}");
        }
        assert_eq!(Lock::holder(&state), Some(hung.info.clone()));
        let removed = force_unlock(&state, &hung.info.id, true).unwrap();
        assert_eq!(removed.id, hung.info.id);
        // A new run gets a fresh lock although the hung holder still has its flock.
        let next = Lock::acquire(&state, "apply", Duration::ZERO).unwrap();
        assert_ne!(next.info.id, hung.info.id);
        // The hung holder finishing later must not remove the new lock.
        drop(hung);
        assert_eq!(Lock::holder(&state), Some(next.info.clone()));
    }

    /// Rewrites the holder's info in the lock file of `state`, as another run would have.
    fn pretend(state: &Path, info: &LockInfo) {
        fs::write(lock_path(state), serde_json::to_vec(info).unwrap()).unwrap();
    }

    #[test]
    fn force_unlock_goes_ahead_when_the_holder_is_gone_or_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("lab.json");

        // The flock is held, but the recorded pid has exited.
        let held = Lock::acquire(&state, "apply", Duration::ZERO).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let info = LockInfo {
            pid: gone,
            ..held.info.clone()
        };
        pretend(&state, &info);
        assert_eq!(force_unlock(&state, &info.id, false).unwrap().pid, gone);
        drop(held);

        // The holder runs on another machine (a shared directory): this one cannot tell.
        let held = Lock::acquire(&state, "apply", Duration::ZERO).unwrap();
        let info = LockInfo {
            host: "elsewhere".into(),
            who: "ops@elsewhere".into(),
            ..held.info.clone()
        };
        pretend(&state, &info);
        assert!(force_unlock(&state, &info.id, false).is_ok());
        drop(held);

        // A lock file left by a run that was killed: nobody holds its flock, so whatever
        // process has its pid now (this one) is not the holder.
        let info = LockInfo {
            id: "left".into(),
            ..info
        };
        pretend(
            &state,
            &LockInfo {
                host: hostname(),
                pid: std::process::id(),
                ..info.clone()
            },
        );
        assert_eq!(Lock::holder(&state), None);
        assert!(force_unlock(&state, &info.id, false).is_ok());
        assert!(!lock_path(&state).exists());
    }

    #[test]
    fn locks_of_older_versions_name_their_host_in_who() {
        let info: LockInfo = serde_json::from_str(
            r#"{"id": "x", "operation": "apply", "who": "ops@node9", "pid": 1, "created": 0, "version": "0.1.0"}"#,
        )
        .unwrap();
        assert_eq!(info.host(), "node9");
        assert_eq!(info.since(), "1970-01-01T00:00:00Z");
    }
}
