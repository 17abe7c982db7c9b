//! The postgres store: a team's state in a PostgreSQL database, shared by every operator and
//! CI job that can reach it.
//!
//! Tables in schema `vmthunder` (made once by `vmthunder state init`):
//! - `states`: one row per written version (cluster, serial, lineage, the state document);
//!   the current version and the one before are kept.
//! - `journal`: the apply in progress, one row per group commit (its header first), each
//!   committed before what it records is reported. The next command replays it after a kill.
//! - `locks`: who holds each cluster's lock. The lock itself is a session advisory lock, so
//!   the server drops it when its holder's connection goes (a killed run never leaves one).
//!
//! Everything a command does goes through one connection, the one holding the lock: if that
//! session is ended (`force-unlock`), the holder cannot write any more.

pub mod connect;
mod schema;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::Client;

use super::journal::{self, replay_bytes, Replayed};
use super::store::{Held, JournalSink, Store};
use super::{Codec, FromJsonError, Loaded, LockError, LockInfo, State, StateError};

pub use schema::init;

pub struct PgStore {
    w: Writer,
}

/// What writes need, shared by the store, its lock and an apply's journal.
#[derive(Clone)]
struct Writer {
    client: Arc<Mutex<Client>>,
    server: String,
    cluster: String,
    codec: Codec,
}

impl PgStore {
    /// Connects to the database at `url` and finds the state of `cluster` there (`None`: the
    /// only cluster it holds).
    pub fn connect(url: &str, cluster: Option<&str>, codec: Codec) -> Result<PgStore, StateError> {
        let (mut client, server) = schema::connect_checked(url)?;
        let cluster = match cluster {
            Some(c) => c.to_string(),
            None => only_cluster(&mut client, &server)?,
        };
        Ok(PgStore {
            w: Writer {
                client: Arc::new(Mutex::new(client)),
                server,
                cluster,
                codec,
            },
        })
    }

    pub fn cluster(&self) -> &str {
        &self.w.cluster
    }
}

/// The one cluster whose state the database holds.
fn only_cluster(client: &mut Client, server: &str) -> Result<String, StateError> {
    let rows = client
        .query(
            "SELECT cluster FROM vmthunder.states UNION SELECT cluster FROM vmthunder.journal ORDER BY 1",
            &[],
        )
        .map_err(|e| db_error(server, &e))?;
    let found: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(StateError::Missing {
            path: server.to_string(),
        }),
        many => Err(StateError::Database {
            server: server.to_string(),
            message: format!(
                "it holds the states of several clusters ({}): pass -f SPEC to say which",
                many.join(", ")
            ),
        }),
    }
}

fn db_error(server: &str, e: &postgres::Error) -> StateError {
    let message = match e.as_db_error() {
        Some(d) => d.message().to_string(),
        None => {
            let mut m = e.to_string();
            if let Some(s) = std::error::Error::source(e) {
                m.push_str(&format!(": {s}"));
            }
            m
        }
    };
    StateError::Database {
        server: server.to_string(),
        message,
    }
}

/// A 64-bit advisory lock key per cluster, apart from other applications' keys.
fn lock_key(cluster: &str) -> i64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("vmthunder state lock\0{cluster}"));
    i64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

impl Writer {
    fn name(&self) -> String {
        format!("{} (cluster {})", self.server, self.cluster)
    }

    fn err(&self, e: &postgres::Error) -> StateError {
        db_error(&self.name(), e)
    }

    fn client(&self) -> std::sync::MutexGuard<'_, Client> {
        // A panic while holding it leaves the connection as it was: still usable.
        self.client.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn parse(&self, doc: &[u8]) -> Result<State, StateError> {
        let place = self.name();
        let state = State::from_json(doc, &self.codec).map_err(|e| match e {
            FromJsonError::Version(found) => StateError::Version {
                path: place.clone(),
                found,
            },
            FromJsonError::Key(message) => StateError::Key {
                path: place.clone(),
                message,
            },
            FromJsonError::Invalid(message) => StateError::Corrupt {
                path: place.clone(),
                message,
            },
        })?;
        if state.cluster != self.cluster {
            return Err(StateError::OtherCluster {
                path: place,
                found: state.cluster,
                expected: self.cluster.clone(),
            });
        }
        Ok(state)
    }

    /// Writes `doc` as version `serial` of the state in one transaction: the version before
    /// it kept, older ones dropped, and the journal too when `clear_journal`.
    fn commit(
        &self,
        serial: u64,
        lineage: &str,
        doc: &[u8],
        clear_journal: bool,
    ) -> Result<(), StateError> {
        let mut c = self.client();
        let who = LockInfo::new("write").who;
        let result = (|| {
            let mut tx = c.transaction()?;
            tx.execute(
                "INSERT INTO vmthunder.states (cluster, serial, lineage, doc, written_by) VALUES ($1, $2, $3, $4, $5)",
                &[&self.cluster, &(serial as i64), &lineage, &doc, &who],
            )?;
            tx.execute(
                "DELETE FROM vmthunder.states WHERE cluster = $1 AND serial < $2",
                &[&self.cluster, &(serial as i64 - 1)],
            )?;
            if clear_journal {
                tx.execute(
                    "DELETE FROM vmthunder.journal WHERE cluster = $1",
                    &[&self.cluster],
                )?;
            }
            tx.commit()
        })();
        result.map_err(|e| {
            if e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) {
                StateError::Database {
                    server: self.name(),
                    message: format!("serial {serial} was written by another run meanwhile (one that did not hold the lock): plan again"),
                }
            } else {
                self.err(&e)
            }
        })
    }

    /// The next version of `state`, bumped and written.
    fn write(&self, state: &mut State, clear_journal: bool) -> Result<(), StateError> {
        let doc = state.next_version(&self.name(), &self.codec)?;
        let lineage = state.lineage.clone().expect("to_json assigns a lineage");
        self.commit(state.serial, &lineage, &doc, clear_journal)
            .inspect_err(|_| state.serial -= 1)
    }
}

impl Store for PgStore {
    fn name(&self) -> String {
        self.w.name()
    }

    fn codec(&self) -> &Codec {
        &self.w.codec
    }

    fn recoded(&self, codec: Codec) -> Result<Box<dyn Store>, StateError> {
        Ok(Box::new(PgStore {
            w: Writer {
                codec,
                ..self.w.clone()
            },
        }))
    }

    fn open(&self, cluster: Option<&str>) -> Result<Loaded, StateError> {
        if let Some(c) = cluster.filter(|c| *c != self.w.cluster) {
            return Err(StateError::OtherCluster {
                path: self.name(),
                found: self.w.cluster.clone(),
                expected: c.to_string(),
            });
        }
        let (doc, lines) = {
            let mut c = self.w.client();
            let mut tx = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .map_err(|e| self.w.err(&e))?;
            let doc: Option<Vec<u8>> = tx
                .query_opt(
                    "SELECT doc FROM vmthunder.states WHERE cluster = $1 ORDER BY serial DESC LIMIT 1",
                    &[&self.w.cluster],
                )
                .map_err(|e| self.w.err(&e))?
                .map(|r| r.get(0));
            let rows = tx
                .query(
                    "SELECT lines FROM vmthunder.journal WHERE cluster = $1 ORDER BY seq",
                    &[&self.w.cluster],
                )
                .map_err(|e| self.w.err(&e))?;
            let mut lines = Vec::new();
            for r in &rows {
                lines.extend_from_slice(r.get::<_, &[u8]>(0));
            }
            tx.commit().map_err(|e| self.w.err(&e))?;
            (doc, lines)
        };
        let mut state = doc.map(|d| self.w.parse(&d)).transpose()?;
        let (journal, ignored) = if lines.is_empty() {
            (Replayed::None, None)
        } else {
            let place = format!("{} journal", self.name());
            replay_bytes(
                &mut state,
                Some(&self.w.cluster),
                &lines,
                &place,
                &self.w.codec,
            )?
        };
        Ok(Loaded {
            state: state.unwrap_or_else(|| State::empty(&self.w.cluster)),
            journal,
            ignored,
        })
    }

    fn lock(&self, operation: &str, timeout: Duration) -> Result<Held, LockError> {
        let key = lock_key(&self.w.cluster);
        let failed = |e: postgres::Error| LockError::Store {
            place: self.name(),
            message: e.to_string(),
        };
        let start = Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            let mut c = self.w.client();
            let got: bool = c
                .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                .map_err(failed)?
                .get(0);
            if got {
                let info = LockInfo::new(operation);
                let text = serde_json::to_string(&info).expect("lock info serializes");
                c.execute(
                    "INSERT INTO vmthunder.locks (cluster, info, backend_pid) VALUES ($1, $2, pg_backend_pid())
                     ON CONFLICT (cluster) DO UPDATE SET info = excluded.info, backend_pid = excluded.backend_pid",
                    &[&self.w.cluster, &text],
                )
                .map_err(failed)?;
                drop(c);
                let guard = LockGuard {
                    w: self.w.clone(),
                    key,
                };
                return Ok(Held::new(info, Box::new(guard)));
            }
            if start.elapsed() >= timeout {
                let holder = c
                    .query_opt(
                        "SELECT info FROM vmthunder.locks WHERE cluster = $1",
                        &[&self.w.cluster],
                    )
                    .map_err(failed)?
                    .and_then(|r| serde_json::from_str::<LockInfo>(r.get(0)).ok());
                return Err(match holder {
                    Some(h) => LockError::Held {
                        holder: Box::new(h),
                    },
                    None => LockError::HeldUnknown { path: self.name() },
                });
            }
            drop(c);
            std::thread::sleep(pause.min(timeout.saturating_sub(start.elapsed())));
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    fn force_unlock(&self, id: &str, force: bool) -> Result<LockInfo, LockError> {
        let key = lock_key(&self.w.cluster);
        let failed = |e: postgres::Error| LockError::Store {
            place: self.name(),
            message: e.to_string(),
        };
        let mut c = self.w.client();
        let row = c
            .query_opt(
                "SELECT l.info, l.backend_pid, EXISTS (SELECT 1 FROM pg_locks k WHERE k.locktype = 'advisory' AND k.granted
                   AND k.pid = l.backend_pid AND k.classid::bigint = $2 AND k.objid::bigint = $3)
                 FROM vmthunder.locks l WHERE l.cluster = $1",
                &[&self.w.cluster, &((key >> 32) & 0xffff_ffff), &(key & 0xffff_ffff)],
            )
            .map_err(failed)?;
        let not_locked = || LockError::NotLocked { path: self.name() };
        let Some(row) = row else {
            return Err(not_locked());
        };
        let (text, pid, held): (String, i32, bool) = (row.get(0), row.get(1), row.get(2));
        let Ok(holder) = serde_json::from_str::<LockInfo>(&text) else {
            return Err(not_locked());
        };
        if !held {
            // Left by a holder whose session is gone: its lock went with it.
            let _ = c.execute(
                "DELETE FROM vmthunder.locks WHERE cluster = $1 AND backend_pid = $2",
                &[&self.w.cluster, &pid],
            );
            return Err(not_locked());
        }
        if holder.id != id {
            return Err(LockError::WrongId {
                given: id.to_string(),
                holder: Box::new(holder),
            });
        }
        if !force && holder.alive_here() {
            return Err(LockError::HolderAlive {
                path: self.name(),
                holder: Box::new(holder),
            });
        }
        let ended: bool = c
            .query_one("SELECT pg_terminate_backend($1, 5000)", &[&pid])
            .map_err(failed)?
            .get(0);
        if !ended {
            return Err(LockError::Store {
                place: self.name(),
                message: format!("the holder's database session (backend pid {pid}) did not end: ending another role's session needs that role or pg_signal_backend"),
            });
        }
        c.execute(
            "DELETE FROM vmthunder.locks WHERE cluster = $1 AND backend_pid = $2",
            &[&self.w.cluster, &pid],
        )
        .map_err(failed)?;
        Ok(holder)
    }

    fn write(&self, state: &mut State) -> Result<(), StateError> {
        self.w.write(state, false)
    }

    fn settle(&self, state: &mut State) -> Result<bool, StateError> {
        let mut c = self.w.client();
        let any: bool = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM vmthunder.journal WHERE cluster = $1)",
                &[&self.w.cluster],
            )
            .map_err(|e| self.w.err(&e))?
            .get(0);
        if !any {
            return Ok(false);
        }
        if state.lineage.is_none() {
            c.execute(
                "DELETE FROM vmthunder.journal WHERE cluster = $1",
                &[&self.w.cluster],
            )
            .map_err(|e| self.w.err(&e))?;
            return Ok(true);
        }
        drop(c);
        self.w.write(state, true)?;
        Ok(true)
    }

    fn begin(&self, state: &mut State) -> Result<Box<dyn JournalSink>, StateError> {
        let header = journal::header_line(state);
        let mut c = self.w.client();
        let result = (|| {
            let mut tx = c.transaction()?;
            tx.execute(
                "DELETE FROM vmthunder.journal WHERE cluster = $1",
                &[&self.w.cluster],
            )?;
            tx.execute(
                "INSERT INTO vmthunder.journal (cluster, seq, lines) VALUES ($1, 0, $2)",
                &[&self.w.cluster, &header],
            )?;
            tx.commit()
        })();
        result.map_err(|e| self.w.err(&e))?;
        Ok(Box::new(PgJournal {
            w: self.w.clone(),
            seq: 1,
        }))
    }

    fn previous(&self) -> Result<Option<State>, StateError> {
        let doc: Option<Vec<u8>> = self
            .w
            .client()
            .query_opt(
                "SELECT doc FROM vmthunder.states WHERE cluster = $1 ORDER BY serial DESC OFFSET 1 LIMIT 1",
                &[&self.w.cluster],
            )
            .map_err(|e| self.w.err(&e))?
            .map(|r| r.get(0));
        doc.map(|d| self.w.parse(&d)).transpose()
    }

    fn put(&self, state: &mut State) -> Result<(), StateError> {
        let doc = state.document(&self.name(), &self.w.codec)?;
        let lineage = state.lineage.clone().expect("to_json assigns a lineage");
        self.w.commit(state.serial, &lineage, &doc, true)
    }

    fn side_file(&self, ext: &str) -> PathBuf {
        PathBuf::from("state").join(format!("{}.{ext}", self.w.cluster))
    }
}

/// The advisory lock and its row: both go when dropped (the lock also when the session
/// ends).
struct LockGuard {
    w: Writer,
    key: i64,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let mut c = self.w.client();
        let _ = c.execute(
            "DELETE FROM vmthunder.locks WHERE cluster = $1 AND backend_pid = pg_backend_pid()",
            &[&self.w.cluster],
        );
        let _ = c.query_one("SELECT pg_advisory_unlock($1)", &[&self.key]);
    }
}

struct PgJournal {
    w: Writer,
    seq: i64,
}

impl JournalSink for PgJournal {
    fn append(&mut self, lines: &[u8]) -> std::io::Result<()> {
        // Autocommit: durable (synchronous_commit) when it returns.
        self.w
            .client()
            .execute(
                "INSERT INTO vmthunder.journal (cluster, seq, lines) VALUES ($1, $2, $3)",
                &[&self.w.cluster, &self.seq, &lines],
            )
            .map_err(std::io::Error::other)?;
        self.seq += 1;
        Ok(())
    }

    fn place(&self) -> String {
        format!("{} journal", self.w.name())
    }

    fn close(self: Box<Self>, state: &mut State) -> Result<(), StateError> {
        self.w.write(state, true)
    }
}
