//! The ssh transport: each host's commands run over one multiplexed OpenSSH connection.
//!
//! A master connection per host is opened on first use (with bounded retries and backoff),
//! shared by every operation on that host and closed when the transport is dropped. Commands
//! are argument vectors quoted word by word for the remote POSIX shell, so no value from a spec
//! can inject shell syntax; each runs under the remote `timeout`. At most `max_sessions`
//! commands run at once per connection (sshd refuses the eleventh by default). A host that
//! cannot be reached is remembered as such for the rest of the run, so its later operations
//! fail at once with the same message. Unix sockets on a host (QMP monitors) are reached through
//! a local forward over the same connection.

use std::collections::HashMap;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openssh::{ControlPersist, ForwardType, KnownHosts, Session, SessionBuilder, Socket, Stdio};

use super::transport::{self, CommandError, Output, Transport};
use crate::spec::{HostKeyChecking, Spec};

/// Connection attempts per host before it counts as unreachable.
const ATTEMPTS: u32 = 3;
/// Wait before the second attempt; doubled before each further one.
const BACKOFF: Duration = Duration::from_millis(500);
const DEFAULT_CONNECT_TIMEOUT: u32 = 10;
const DEFAULT_MAX_SESSIONS: u32 = 8;
/// Times a command whose session the server refused is tried again (about 8 s in all).
const REFUSALS: u32 = 100;
/// A master connection left behind (vmthunder killed) exits after this long unused.
const MASTER_IDLE_SECS: usize = 120;

/// How to reach one host, resolved from the spec.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub name: String,
    pub address: String,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_file: Option<PathBuf>,
    pub jump: Option<String>,
    pub connect_timeout: u32,
    pub accept_new: bool,
    pub known_hosts: Option<PathBuf>,
    pub config_file: Option<PathBuf>,
    pub max_sessions: u32,
}

impl Endpoint {
    pub fn from_spec(spec: &Spec) -> Vec<Endpoint> {
        spec.hosts
            .iter()
            .map(|h| {
                let s = spec.host_ssh(h);
                Endpoint {
                    name: h.name.clone(),
                    address: h.address.clone(),
                    user: s.user,
                    port: s.port,
                    identity_file: s.identity_file.map(PathBuf::from),
                    jump: s.jump,
                    connect_timeout: s.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
                    accept_new: s.host_key_checking == Some(HostKeyChecking::AcceptNew),
                    known_hosts: s.known_hosts.map(PathBuf::from),
                    config_file: s.config_file.map(PathBuf::from),
                    max_sessions: s.max_sessions.unwrap_or(DEFAULT_MAX_SESSIONS),
                }
            })
            .collect()
    }

    /// `root@10.0.0.1 port 22 via root@gw`, for messages.
    pub fn describe(&self) -> String {
        let mut s = match &self.user {
            Some(u) => format!("{u}@{}", self.address),
            None => self.address.clone(),
        };
        if let Some(p) = self.port {
            s.push_str(&format!(" port {p}"));
        }
        if let Some(j) = &self.jump {
            s.push_str(&format!(" via {j}"));
        }
        s
    }

    fn builder(&self, control_dir: &Path) -> SessionBuilder {
        let mut b = SessionBuilder::default();
        b.known_hosts_check(if self.accept_new {
            KnownHosts::Add
        } else {
            KnownHosts::Strict
        })
        .connect_timeout(Duration::from_secs(self.connect_timeout.into()))
        .server_alive_interval(Duration::from_secs(15))
        .control_directory(control_dir)
        .control_persist(ControlPersist::IdleFor(
            MASTER_IDLE_SECS.try_into().expect("non-zero"),
        ));
        if let Some(u) = &self.user {
            b.user(u.clone());
        }
        if let Some(p) = self.port {
            b.port(p);
        }
        if let Some(k) = &self.identity_file {
            b.keyfile(k);
        }
        if let Some(j) = &self.jump {
            b.jump_hosts(j.split(','));
        }
        if let Some(k) = &self.known_hosts {
            b.user_known_hosts_file(k);
        }
        if let Some(c) = &self.config_file {
            b.config_file(c);
        }
        b
    }
}

/// A live master connection and the local forwards opened over it.
struct Conn {
    session: Session,
    /// remote socket -> local socket forwarding to it.
    forwards: tokio::sync::Mutex<HashMap<PathBuf, PathBuf>>,
}

struct Remote {
    ep: Endpoint,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    /// Why the host could not be reached, once it could not.
    down: Mutex<Option<String>>,
    slots: tokio::sync::Semaphore,
}

pub struct SshTransport {
    rt: tokio::runtime::Runtime,
    remotes: HashMap<String, Remote>,
    /// Control sockets and forwards; removed on drop.
    dir: PathBuf,
    next_forward: AtomicU64,
    connections: AtomicU64,
}

/// Why a command did not run: the host could not be reached, or the connection broke.
struct Unreachable(String);

impl SshTransport {
    pub fn new(endpoints: Vec<Endpoint>) -> io::Result<SshTransport> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vmthunder-ssh")
            .enable_all()
            .build()?;
        let dir = std::env::temp_dir().join(format!(
            "vmthunder-ssh-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let remotes = endpoints
            .into_iter()
            .map(|ep| {
                let slots = tokio::sync::Semaphore::new(ep.max_sessions as usize);
                (
                    ep.name.clone(),
                    Remote {
                        ep,
                        conn: tokio::sync::Mutex::new(None),
                        down: Mutex::new(None),
                        slots,
                    },
                )
            })
            .collect();
        Ok(SshTransport {
            rt,
            remotes,
            dir,
            next_forward: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        })
    }

    /// How many master connections were opened so far (one per host reached, plus
    /// reconnections after a master died).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    fn remote(&self, host: &str) -> Result<&Remote, Unreachable> {
        self.remotes.get(host).ok_or_else(|| {
            Unreachable(format!(
                "internal error: host {host} is not in the spec's hosts"
            ))
        })
    }

    /// The host's connection, opened if needed.
    async fn conn(&self, r: &Remote) -> Result<Arc<Conn>, Unreachable> {
        let mut slot = r.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        if let Some(why) = r.down.lock().expect("down").clone() {
            return Err(Unreachable(why));
        }
        let builder = r.ep.builder(&self.dir);
        let mut last = String::new();
        let mut attempts = 0;
        while attempts < ATTEMPTS {
            if attempts > 0 {
                tokio::time::sleep(BACKOFF * 2u32.pow(attempts - 1)).await;
            }
            attempts += 1;
            match builder.connect_mux(&r.ep.address).await {
                Ok(session) => {
                    self.connections.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(host = %r.ep.name, "ssh master connection open");
                    let c = Arc::new(Conn {
                        session,
                        forwards: tokio::sync::Mutex::new(HashMap::new()),
                    });
                    *slot = Some(c.clone());
                    return Ok(c);
                }
                Err(e) => {
                    last = connect_error_text(&e);
                    tracing::debug!(host = %r.ep.name, attempt = attempts, error = %last, "ssh connection failed");
                    if !transient(&last) {
                        break;
                    }
                }
            }
        }
        let why = format!(
            "cannot reach host {} over ssh ({}; {attempts} attempt{}): {last}",
            r.ep.name,
            r.ep.describe(),
            if attempts == 1 { "" } else { "s" }
        );
        *r.down.lock().expect("down") = Some(why.clone());
        Err(Unreachable(why))
    }

    /// Forgets a connection whose master is gone, so the next use opens a new one.
    async fn drop_conn(&self, r: &Remote, dead: &Arc<Conn>) {
        let mut slot = r.conn.lock().await;
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, dead)) {
            *slot = None;
        }
    }

    async fn run_async(
        &self,
        host: &str,
        argv: &[String],
        timeout: Duration,
        input: Option<&[u8]>,
    ) -> Result<Output, CommandError> {
        let command = transport::display_command(argv);
        let fail = |status: String, stderr: String, unreachable: bool| CommandError {
            host: host.to_string(),
            command: command.clone(),
            status,
            stderr,
            unreachable,
        };
        let r = self
            .remote(host)
            .map_err(|Unreachable(m)| fail(m, String::new(), true))?;
        let _permit = r.slots.acquire().await.expect("semaphore open");
        let secs = timeout.as_secs().max(1);
        let line = format!("timeout -k 5 {secs} {command}");
        // A command that could not even start (the master died) is retried once on a new
        // connection; one that started is never run twice.
        let mut tries = 0;
        let mut refusals = 0;
        let output = loop {
            tries += 1;
            let conn = self
                .conn(r)
                .await
                .map_err(|Unreachable(m)| fail(m, String::new(), true))?;
            let child = conn
                .session
                .raw_command(&line)
                .stdin(if input.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .await;
            let child = match child {
                Ok(c) => c,
                Err(e) => {
                    let gone = conn.session.check().await.is_err();
                    if gone {
                        self.drop_conn(r, &conn).await;
                        if tries < 2 {
                            tracing::debug!(host, error = %e, "ssh master gone; reconnecting");
                            continue;
                        }
                    } else if refusals < REFUSALS && connect_error_text(&e).contains("refused") {
                        // The server frees a finished command's session a moment after its
                        // exit status arrives, so even under the cap it can briefly count
                        // more: the command did not start, and is tried again shortly.
                        refusals += 1;
                        tries -= 1;
                        tokio::time::sleep(Duration::from_millis(5 * u64::from(refusals.min(20))))
                            .await;
                        continue;
                    }
                    // A live master that refused (a session limit, say) is not a lost host.
                    return Err(fail(
                        format!("could not start over ssh: {}", connect_error_text(&e)),
                        String::new(),
                        gone,
                    ));
                }
            };
            let mut child = child;
            if let (Some(bytes), Some(mut stdin)) = (input, child.stdin().take()) {
                use tokio::io::AsyncWriteExt;
                // A command that exits early closes its end; its status tells what happened.
                let _ = tokio::time::timeout(timeout, stdin.write_all(bytes)).await;
                let _ = stdin.shutdown().await;
            }
            let waited =
                tokio::time::timeout(timeout + Duration::from_secs(10), child.wait_with_output())
                    .await;
            match waited {
                Ok(Ok(o)) => break o,
                Ok(Err(e)) => {
                    // The master went away or the remote process was killed by a signal: the
                    // multiplex protocol cannot tell which.
                    let gone = conn.session.check().await.is_err();
                    if gone {
                        self.drop_conn(r, &conn).await;
                    }
                    return Err(fail(
                        format!(
                            "was cut off ({e}{})",
                            if gone { "; the connection is lost" } else { "" }
                        ),
                        String::new(),
                        gone,
                    ));
                }
                Err(_) => {
                    return Err(fail(
                        format!("timed out after {secs}s"),
                        String::new(),
                        false,
                    ))
                }
            }
        };
        let stderr = String::from_utf8_lossy(&output.stderr)
            .trim_end()
            .to_string();
        match transport::exit_failure(output.status.code(), &output.status, secs) {
            None => Ok(Output {
                stdout: output.stdout,
                stderr: output.stderr,
            }),
            Some(why) => Err(fail(why, stderr, false)),
        }
    }

    /// [`Transport::run_streaming`] on the runtime: `feed` brings the command's input in
    /// chunks (from a thread that reads the caller's reader).
    async fn stream_async(
        &self,
        host: &str,
        argv: &[String],
        feed: Option<tokio::sync::mpsc::Receiver<Vec<u8>>>,
        output: &mut (dyn FnMut(&[u8]) -> io::Result<()> + Send),
        timeout: Duration,
    ) -> Result<Output, CommandError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let command = transport::display_command(argv);
        let fail = |status: String, stderr: String, unreachable: bool| CommandError {
            host: host.to_string(),
            command: command.clone(),
            status,
            stderr,
            unreachable,
        };
        let r = self
            .remote(host)
            .map_err(|Unreachable(m)| fail(m, String::new(), true))?;
        let _permit = r.slots.acquire().await.expect("semaphore open");
        let secs = timeout.as_secs().max(1);
        let line = format!("timeout -k 5 {secs} {command}");
        let conn = self
            .conn(r)
            .await
            .map_err(|Unreachable(m)| fail(m, String::new(), true))?;
        let mut child = match conn
            .session
            .raw_command(&line)
            .stdin(if feed.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .await
        {
            Ok(c) => c,
            Err(e) => {
                let gone = conn.session.check().await.is_err();
                if gone {
                    self.drop_conn(r, &conn).await;
                }
                return Err(fail(
                    format!("could not start over ssh: {}", connect_error_text(&e)),
                    String::new(),
                    gone,
                ));
            }
        };
        let stdin = child.stdin().take();
        let mut stdout = child.stdout().take().expect("piped");
        let mut stderr = child.stderr().take().expect("piped");
        let write_in = async move {
            if let (Some(mut rx), Some(mut stdin)) = (feed, stdin) {
                while let Some(chunk) = rx.recv().await {
                    if stdin.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                let _ = stdin.shutdown().await;
            }
        };
        let read_err = async move {
            let mut b = Vec::new();
            let _ = stderr.read_to_end(&mut b).await;
            b
        };
        // Owns the command's output, so that when it stops early the pipe closes and the
        // command ends instead of blocking on a full pipe.
        let read_out = async move {
            let mut buf = vec![0u8; 1 << 20];
            loop {
                match stdout.read(&mut buf).await {
                    Ok(0) => return None,
                    Ok(n) => {
                        if let Err(e) = output(&buf[..n]) {
                            return Some(e);
                        }
                    }
                    Err(e) => return Some(e),
                }
            }
        };
        let limit = timeout + Duration::from_secs(10);
        let Ok(((), stopped, err_bytes)) =
            tokio::time::timeout(limit, async { tokio::join!(write_in, read_out, read_err) }).await
        else {
            return Err(fail(
                format!("timed out after {secs}s"),
                String::new(),
                false,
            ));
        };
        let stderr = String::from_utf8_lossy(&err_bytes).trim_end().to_string();
        let status = match tokio::time::timeout(limit, child.wait()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let gone = conn.session.check().await.is_err();
                if gone {
                    self.drop_conn(r, &conn).await;
                }
                return Err(fail(format!("was cut off ({e})"), stderr, gone));
            }
            Err(_) => return Err(fail(format!("timed out after {secs}s"), stderr, false)),
        };
        if let Some(e) = stopped {
            return Err(fail(format!("was stopped: {e}"), stderr, false));
        }
        match transport::exit_failure(status.code(), &status, secs) {
            None => Ok(Output {
                stdout: Vec::new(),
                stderr: stderr.into_bytes(),
            }),
            Some(why) => Err(fail(why, stderr, false)),
        }
    }

    async fn forward(&self, host: &str, remote_path: &Path) -> io::Result<PathBuf> {
        let r = self.remote(host).map_err(unreachable_io)?;
        let conn = self.conn(r).await.map_err(unreachable_io)?;
        let mut forwards = conn.forwards.lock().await;
        if let Some(local) = forwards.get(remote_path) {
            return Ok(local.clone());
        }
        let n = self.next_forward.fetch_add(1, Ordering::Relaxed);
        let local = self.dir.join(format!("fwd-{n}.sock"));
        let opened = conn
            .session
            .request_port_forward(
                ForwardType::Local,
                Socket::UnixSocket {
                    path: local.as_path().into(),
                },
                Socket::UnixSocket {
                    path: remote_path.into(),
                },
            )
            .await;
        if let Err(e) = opened {
            let gone = conn.session.check().await.is_err();
            drop(forwards);
            if gone {
                self.drop_conn(r, &conn).await;
                return Err(unreachable_io(Unreachable(format!(
                    "on host {host}: the ssh connection is lost: {e}"
                ))));
            }
            return Err(io::Error::other(format!(
                "on host {host}: cannot forward `{}` over ssh: {e}",
                remote_path.display()
            )));
        }
        forwards.insert(remote_path.to_path_buf(), local.clone());
        Ok(local)
    }

    /// Runs a small POSIX shell script on `host` with `args` as `$1`...
    fn sh(&self, host: &str, script: &str, args: &[&str]) -> Result<Output, CommandError> {
        let argv: Vec<&str> = ["sh", "-c", script, "sh"]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        self.file_command(host, &argv)
    }

    /// A short command of the file operations below (60 s at most).
    fn file_command(&self, host: &str, argv: &[&str]) -> Result<Output, CommandError> {
        let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
        self.run(host, &argv, Duration::from_secs(60))
    }
}

fn unreachable_io(Unreachable(m): Unreachable) -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, m)
}

/// A command's failure as an I/O error: a host that cannot be reached is `NotConnected`.
fn io_error(e: CommandError) -> io::Error {
    if e.unreachable {
        io::Error::new(io::ErrorKind::NotConnected, e.status)
    } else if e.stderr.is_empty() {
        io::Error::other(e.to_string())
    } else {
        io::Error::other(format!("{e}: {}", e.stderr))
    }
}

fn connect_error_text(e: &openssh::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s = format!("{s}: {t}");
        }
        src = inner.source();
    }
    let s = s
        .strip_prefix("failed to connect to the remote host: ")
        .unwrap_or(&s);
    s.lines()
        .filter(|l| !l.starts_with("Warning: Permanently added"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether another attempt may succeed: not for authentication or host key failures.
fn transient(message: &str) -> bool {
    ![
        "Permission denied",
        "Host key verification failed",
        "REMOTE HOST IDENTIFICATION HAS CHANGED",
        "Could not resolve",
        "No such file",
        "Bad configuration",
    ]
    .iter()
    .any(|m| message.contains(m))
}

impl Transport for SshTransport {
    fn run_with_input(
        &self,
        host: &str,
        argv: &[String],
        input: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output, CommandError> {
        self.rt.block_on(self.run_async(host, argv, timeout, input))
    }

    fn run_streaming(
        &self,
        host: &str,
        argv: &[String],
        input: Option<&mut (dyn io::Read + Send)>,
        output: &mut (dyn FnMut(&[u8]) -> io::Result<()> + Send),
        timeout: Duration,
    ) -> Result<Output, CommandError> {
        std::thread::scope(|s| {
            // The caller's reader blocks: it is read on a thread of its own, in chunks
            // handed to the runtime.
            let feed = input.map(|input| {
                let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
                s.spawn(move || {
                    let mut buf = vec![0u8; 1 << 20];
                    loop {
                        match input.read(&mut buf) {
                            Ok(0) => return,
                            Ok(n) => {
                                if tx.blocking_send(buf[..n].to_vec()).is_err() {
                                    return;
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            // The reader knows and reports its own failure.
                            Err(_) => return,
                        }
                    }
                });
                rx
            });
            self.rt
                .block_on(self.stream_async(host, argv, feed, output, timeout))
        })
    }

    fn same_machine(&self) -> bool {
        false
    }

    fn connect_unix(&self, host: &str, path: &Path) -> io::Result<UnixStream> {
        let local = self.rt.block_on(self.forward(host, path))?;
        UnixStream::connect(local)
    }

    fn read_file(&self, host: &str, path: &Path) -> io::Result<Option<Vec<u8>>> {
        let p = path.to_string_lossy();
        match self.sh(host, r#"[ -e "$1" ] || exit 3; exec cat -- "$1""#, &[&p]) {
            Ok(o) => Ok(Some(o.stdout)),
            Err(e) if e.status == "exited with status 3" => Ok(None),
            Err(e) => Err(io_error(e)),
        }
    }

    fn list_dir(&self, host: &str, path: &Path) -> io::Result<Vec<String>> {
        let p = path.to_string_lossy();
        let o = self
            .sh(host, r#"[ -d "$1" ] || exit 0; exec ls -1A -- "$1""#, &[&p])
            .map_err(io_error)?;
        Ok(String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect())
    }

    fn create_dir_all(&self, host: &str, path: &Path) -> io::Result<()> {
        let p = path.to_string_lossy();
        self.file_command(host, &["mkdir", "-p", "--", &p])
            .map(|_| ())
            .map_err(io_error)
    }

    fn remove_dir_if_empty(&self, host: &str, path: &Path) -> io::Result<bool> {
        let p = path.to_string_lossy();
        let o = self
            .sh(
                host,
                r#"if rmdir -- "$1" 2>/dev/null; then echo removed; fi"#,
                &[&p],
            )
            .map_err(io_error)?;
        Ok(o.stdout.starts_with(b"removed"))
    }

    fn remove_file(&self, host: &str, path: &Path) -> io::Result<()> {
        let p = path.to_string_lossy();
        self.file_command(host, &["rm", "-f", "--", &p])
            .map(|_| ())
            .map_err(io_error)
    }

    fn write_file(&self, host: &str, path: &Path, contents: &[u8]) -> io::Result<()> {
        let p = path.to_string_lossy();
        let argv: Vec<String> = [
            "sh",
            "-c",
            r#"umask 077 && cat > "$1.tmp-write" && sync -- "$1.tmp-write" && mv -f -- "$1.tmp-write" "$1""#,
            "sh",
            &p,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        self.rt
            .block_on(self.run_async(host, &argv, Duration::from_secs(60), Some(contents)))
            .map(|_| ())
            .map_err(io_error)
    }

    fn set_len(&self, host: &str, path: &Path, len: u64, reset: bool) -> io::Result<()> {
        let p = path.to_string_lossy();
        let len = len.to_string();
        self.sh(
            host,
            r#"if [ "$3" = reset ]; then : > "$1"; fi; truncate -s "$2" -- "$1" && sync -- "$1""#,
            &[&p, &len, if reset { "reset" } else { "keep" }],
        )
        .map(|_| ())
        .map_err(io_error)
    }

    fn file_len(&self, host: &str, path: &Path) -> io::Result<Option<u64>> {
        let p = path.to_string_lossy();
        let o = self
            .sh(
                host,
                r#"[ -e "$1" ] || exit 0; exec stat -L -c %s -- "$1""#,
                &[&p],
            )
            .map_err(io_error)?;
        let text = String::from_utf8_lossy(&o.stdout);
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        text.parse()
            .map(Some)
            .map_err(|e| io::Error::other(format!("on host {host}: stat printed {text:?}: {e}")))
    }

    fn process_alive(&self, host: &str, pid: u32, marker: &str) -> io::Result<bool> {
        let cmdline = self.read_file(host, Path::new(&format!("/proc/{pid}/cmdline")))?;
        Ok(cmdline.is_some_and(|c| transport::cmdline_has(&c, marker)))
    }

    fn kill(&self, host: &str, pid: u32) -> io::Result<()> {
        match self.run(
            host,
            &["kill".into(), "-9".into(), pid.to_string()],
            Duration::from_secs(10),
        ) {
            Err(e) if e.unreachable => Err(io_error(e)),
            // `kill` fails only when the process is already gone.
            _ => Ok(()),
        }
    }
}

impl Drop for SshTransport {
    fn drop(&mut self) {
        let conns: Vec<Arc<Conn>> = self
            .remotes
            .values_mut()
            .filter_map(|r| r.conn.get_mut().take())
            .collect();
        self.rt.block_on(async {
            for c in conns {
                if let Ok(c) = Arc::try_unwrap(c) {
                    let _ = tokio::time::timeout(Duration::from_secs(5), c.session.close()).await;
                }
            }
        });
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authentication_and_host_key_failures_are_not_retried() {
        assert!(transient(
            "ssh: connect to host 10.0.0.1 port 22: Connection refused"
        ));
        assert!(transient(
            "kex_exchange_identification: read: Connection reset by peer"
        ));
        assert!(!transient("root@10.0.0.1: Permission denied (publickey)."));
        assert!(!transient("Host key verification failed."));
    }

    #[test]
    fn endpoints_take_the_backend_defaults_field_by_field() {
        let spec = Spec::from_slice(
            br#"{"version": 1, "cluster": "c",
                "backend": {"transport": "ssh", "root": "/var/lib/vmthunder",
                            "ssh": {"user": "root", "port": 2222, "max_sessions": 4}},
                "hosts": [{"name": "a", "address": "10.0.0.1"},
                          {"name": "b", "address": "10.0.0.2",
                           "ssh": {"port": 22, "jump": "gw@10.0.0.9"}}],
                "images": [{"name": "i", "source_host": "a", "path": "/srv/i.raw"}]}"#,
        )
        .expect("valid spec");
        let e = Endpoint::from_spec(&spec);
        assert_eq!(e[0].describe(), "root@10.0.0.1 port 2222");
        assert_eq!(e[1].describe(), "root@10.0.0.2 port 22 via gw@10.0.0.9");
        assert_eq!(e[1].max_sessions, 4);
        assert_eq!(e[0].connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert!(!e[0].accept_new);
    }
}
