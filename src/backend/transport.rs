//! How a stack's commands and file operations reach the host that owns a resource.
//!
//! Stacks build argument vectors (never shell strings) and call these; the local transport
//! runs them on this machine, optionally inside the host's network namespace. The SSH
//! transport implements the same trait over a multiplexed connection.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A command that failed: what ran, where, and what it said.
#[derive(Debug, thiserror::Error)]
#[error("on host {host}: `{command}` {status}")]
pub struct CommandError {
    pub host: String,
    pub command: String,
    /// "exited with status 1", "timed out after 120s", "could not start: ...".
    pub status: String,
    pub stderr: String,
    /// The command did not run, or its outcome is unknown, because the host could not be
    /// reached (then `status` says why).
    pub unreachable: bool,
}

#[derive(Debug)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

pub trait Transport: Send + Sync {
    /// Runs `argv` on `host` and waits at most `timeout`; a non-zero exit is an error that
    /// carries stderr.
    fn run(&self, host: &str, argv: &[String], timeout: Duration) -> Result<Output, CommandError> {
        self.run_with_input(host, argv, None, timeout)
    }
    /// [`Transport::run`] with `input`, if any, on the command's standard input (otherwise
    /// it reads nothing): how a secret reaches a command without appearing in any argument
    /// list (`/proc/*/cmdline` is world-readable).
    fn run_with_input(
        &self,
        host: &str,
        argv: &[String],
        input: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output, CommandError>;
    /// Runs `argv` on `host` for a long copy: its standard input read from `input` (else it
    /// reads nothing) and its standard output handed to `output` chunk by chunk as it comes,
    /// so nothing is held whole in memory. An error from `output` stops the command. A
    /// non-zero exit is an error with stderr; the returned stdout is empty. Never retried:
    /// what it read cannot be read again.
    fn run_streaming(
        &self,
        host: &str,
        argv: &[String],
        input: Option<&mut (dyn Read + Send)>,
        output: &mut (dyn FnMut(&[u8]) -> std::io::Result<()> + Send),
        timeout: Duration,
    ) -> Result<Output, CommandError>;
    /// Whether every host is this machine (files and tools are checked once, here).
    fn same_machine(&self) -> bool {
        true
    }
    /// Opens a unix socket on `host` (a QMP monitor).
    fn connect_unix(&self, host: &str, path: &Path) -> std::io::Result<UnixStream>;
    /// Reads a whole file; `None` when it does not exist.
    fn read_file(&self, host: &str, path: &Path) -> std::io::Result<Option<Vec<u8>>>;
    /// The names in a directory; empty when it does not exist.
    fn list_dir(&self, host: &str, path: &Path) -> std::io::Result<Vec<String>>;
    /// Creates the directory and its parents.
    fn create_dir_all(&self, host: &str, path: &Path) -> std::io::Result<()>;
    /// Removes a directory if it is empty; `Ok(false)` when it is not empty or absent.
    fn remove_dir_if_empty(&self, host: &str, path: &Path) -> std::io::Result<bool>;
    /// Removes a file; absent is success.
    fn remove_file(&self, host: &str, path: &Path) -> std::io::Result<()>;
    /// Writes a whole file, readable by its owner only (mode 0600), through a temporary file
    /// renamed into place: never half written. The contents never appear on a command line.
    fn write_file(&self, host: &str, path: &Path, contents: &[u8]) -> std::io::Result<()>;
    /// Creates (if needed) a sparse file of exactly `len` bytes, discarding its contents when
    /// `reset`.
    fn set_len(&self, host: &str, path: &Path, len: u64, reset: bool) -> std::io::Result<()>;
    /// The length of a file; `None` when it does not exist.
    fn file_len(&self, host: &str, path: &Path) -> std::io::Result<Option<u64>>;
    /// Whether process `pid` is alive and its command line contains `marker` (so a recycled
    /// pid is never mistaken for ours).
    fn process_alive(&self, host: &str, pid: u32, marker: &str) -> std::io::Result<bool>;
    /// Sends SIGKILL to `pid` (already gone is success).
    fn kill(&self, host: &str, pid: u32) -> std::io::Result<()>;
}

/// Commands run here, as child processes; with `netns`, inside each host's namespace.
pub struct Local {
    /// host name -> network namespace name.
    pub netns: Option<rustc_hash::FxHashMap<String, String>>,
}

impl Local {
    fn wrap(&self, host: &str, argv: &[String]) -> Vec<String> {
        match self.netns.as_ref().and_then(|m| m.get(host)) {
            Some(ns) => ["ip", "netns", "exec", ns.as_str()]
                .into_iter()
                .map(String::from)
                .chain(argv.iter().cloned())
                .collect(),
            None => argv.to_vec(),
        }
    }
}

/// Whether a process's `/proc/PID/cmdline` names `marker` in one of its arguments. A
/// zombie's is empty: it is not running.
pub fn cmdline_has(cmdline: &[u8], marker: &str) -> bool {
    !cmdline.is_empty()
        && String::from_utf8_lossy(cmdline)
            .split('\0')
            .any(|a| a.contains(marker))
}

/// One word for a POSIX shell: as it is when it holds nothing a shell would interpret,
/// otherwise single-quoted (a `'` inside becomes `'\''`). The ssh transport sends commands
/// built from these; messages show them.
pub fn shell_word(a: &str) -> String {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-_./:,@+".contains(&b);
    // `=` and `%` only inside a word (`=x` at the start is an expansion in zsh).
    if !a.is_empty()
        && plain(a.as_bytes()[0])
        && a.bytes().all(|b| plain(b) || b == b'=' || b == b'%')
    {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

/// An argument vector as one POSIX shell command line (see [`shell_word`]).
pub fn display_command(argv: &[String]) -> String {
    argv.iter()
        .map(|a| shell_word(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `argv` under coreutils' `timeout`: a TERM after `timeout`, a KILL 5 s later.
pub fn timed_argv(argv: &[String], timeout: Duration) -> Vec<String> {
    ["timeout", "-k", "5", &timeout.as_secs().max(1).to_string()]
        .into_iter()
        .map(String::from)
        .chain(argv.iter().cloned())
        .collect()
}

/// What the exit of a command run under `timeout` (`timed_argv`, or the remote `timeout` of
/// the ssh transport) says went wrong: `None` when it succeeded; 124 and 137 are `timeout`'s.
pub fn exit_failure(
    code: Option<i32>,
    status: &dyn std::fmt::Display,
    secs: u64,
) -> Option<String> {
    match code {
        Some(0) => None,
        Some(124) | Some(137) => Some(format!("timed out after {secs}s")),
        Some(c) => Some(format!("exited with status {c}")),
        None => Some(format!("was killed ({status})")),
    }
}

/// Hands what `from` yields to `output` until its end; the error that stopped it, if any.
pub fn pump(
    from: &mut dyn Read,
    output: &mut (dyn FnMut(&[u8]) -> std::io::Result<()> + Send),
) -> Option<std::io::Error> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => {
                if let Err(e) = output(&buf[..n]) {
                    return Some(e);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Some(e),
        }
    }
}

/// How long a connect to a monitor socket may wait.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to a Unix socket without blocking for ever: a process that is stopped (or hangs)
/// never accepts, and once its listen backlog is full a plain `connect` would wait until it
/// does. Such a socket is reported as `WouldBlock`/`TimedOut` at once or after `timeout`.
pub fn connect_unix_within(path: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket
        .connect_timeout(&SockAddr::unix(path)?, timeout)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the process behind it does not accept connections (stopped or hung)",
                )
            } else {
                e
            }
        })?;
    socket.set_nonblocking(false)?;
    Ok(UnixStream::from(std::os::fd::OwnedFd::from(socket)))
}

impl Transport for Local {
    fn run_with_input(
        &self,
        host: &str,
        argv: &[String],
        input: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output, CommandError> {
        let argv = self.wrap(host, argv);
        let err = |status: String, stderr: String| CommandError {
            host: host.to_string(),
            command: display_command(&argv),
            status,
            stderr,
            unreachable: false,
        };
        // In a process group of its own: a Ctrl-C at the terminal interrupts vmthunder, which
        // lets running commands finish, rather than killing them under it.
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .process_group(0)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| err(format!("could not start: {e}"), String::new()))?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            // On a thread of its own, as the output is read: a command that does not read
            // it never blocks this one past the timeout (nor is its exit an error here).
            let input = input.to_vec();
            std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
        }
        // Drain both pipes on their own threads so a chatty child never blocks.
        let mut out = child.stdout.take().expect("piped");
        let mut errp = child.stderr.take().expect("piped");
        let t_out = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = out.read_to_end(&mut b);
            b
        });
        let t_err = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = errp.read_to_end(&mut b);
            b
        });
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if start.elapsed() >= timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(err(format!("could not wait: {e}"), String::new())),
            }
        };
        let stdout = t_out.join().unwrap_or_default();
        let stderr = t_err.join().unwrap_or_default();
        match status {
            None => Err(err(
                format!("timed out after {}s", timeout.as_secs()),
                String::from_utf8_lossy(&stderr).into_owned(),
            )),
            Some(s) if s.success() => Ok(Output { stdout, stderr }),
            Some(s) => Err(err(
                match s.code() {
                    Some(c) => format!("exited with status {c}"),
                    None => format!("was killed ({s})"),
                },
                String::from_utf8_lossy(&stderr).trim_end().to_string(),
            )),
        }
    }

    fn run_streaming(
        &self,
        host: &str,
        argv: &[String],
        input: Option<&mut (dyn Read + Send)>,
        output: &mut (dyn FnMut(&[u8]) -> std::io::Result<()> + Send),
        timeout: Duration,
    ) -> Result<Output, CommandError> {
        // `timeout` ends it (and, 5 s after a TERM, kills it) however its pipes stand.
        let timed = timed_argv(argv, timeout);
        let argv = self.wrap(host, &timed);
        let err = |status: String, stderr: String| CommandError {
            host: host.to_string(),
            command: display_command(&argv),
            status,
            stderr,
            unreachable: false,
        };
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .process_group(0)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| err(format!("could not start: {e}"), String::new()))?;
        let stdin = child.stdin.take();
        let mut out = child.stdout.take().expect("piped");
        let mut errp = child.stderr.take().expect("piped");
        let pid = child.id();
        let (stopped, stderr) = std::thread::scope(|s| {
            if let (Some(input), Some(mut stdin)) = (input, stdin) {
                // Its end closes when the copy ends, which is the command's end of input.
                s.spawn(move || std::io::copy(input, &mut stdin));
            }
            let errs = s.spawn(move || {
                let mut b = Vec::new();
                let _ = errp.read_to_end(&mut b);
                b
            });
            let stopped = pump(&mut out, output);
            if stopped.is_some() {
                // What it writes is not wanted any more: ask it to stop (`timeout` passes
                // the signal on).
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
            drop(out);
            (stopped, errs.join().unwrap_or_default())
        });
        let status = child
            .wait()
            .map_err(|e| err(format!("could not wait: {e}"), String::new()))?;
        let stderr = String::from_utf8_lossy(&stderr).trim_end().to_string();
        if let Some(e) = stopped {
            return Err(err(format!("was stopped: {e}"), stderr));
        }
        match exit_failure(status.code(), &status, timeout.as_secs().max(1)) {
            None => Ok(Output {
                stdout: Vec::new(),
                stderr: stderr.into_bytes(),
            }),
            Some(why) => Err(err(why, stderr)),
        }
    }

    fn connect_unix(&self, _host: &str, path: &Path) -> std::io::Result<UnixStream> {
        connect_unix_within(path, CONNECT_TIMEOUT)
    }

    fn read_file(&self, _host: &str, path: &Path) -> std::io::Result<Option<Vec<u8>>> {
        match std::fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn list_dir(&self, _host: &str, path: &Path) -> std::io::Result<Vec<String>> {
        match std::fs::read_dir(path) {
            Ok(d) => Ok(d
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    fn create_dir_all(&self, _host: &str, path: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn remove_dir_if_empty(&self, _host: &str, path: &Path) -> std::io::Result<bool> {
        match std::fs::remove_dir(path) {
            Ok(()) => Ok(true),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::DirectoryNotEmpty
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn remove_file(&self, _host: &str, path: &Path) -> std::io::Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    fn write_file(&self, _host: &str, path: &Path, contents: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = path.with_extension("tmp-write");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    fn set_len(&self, _host: &str, path: &Path, len: u64, reset: bool) -> std::io::Result<()> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(reset)
            .open(path)?;
        f.set_len(len)?;
        f.sync_all()
    }

    fn file_len(&self, _host: &str, path: &Path) -> std::io::Result<Option<u64>> {
        match std::fs::metadata(path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn process_alive(&self, _host: &str, pid: u32, marker: &str) -> std::io::Result<bool> {
        Ok(std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| cmdline_has(&c, marker)))
    }

    fn kill(&self, host: &str, pid: u32) -> std::io::Result<()> {
        let r = self.run(
            host,
            &["kill".into(), "-9".into(), pid.to_string()],
            Duration::from_secs(10),
        );
        // `kill` fails only when the process is already gone.
        let _ = r;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_report_status_and_stderr() {
        let t = Local { netns: None };
        let out = t
            .run("h", &["echo".into(), "hi".into()], Duration::from_secs(5))
            .unwrap();
        assert_eq!(out.stdout, b"hi\n");
        let e = t
            .run(
                "h",
                &["sh".into(), "-c".into(), "echo oops >&2; exit 3".into()],
                Duration::from_secs(5),
            )
            .err()
            .unwrap();
        assert_eq!(e.status, "exited with status 3");
        assert_eq!(e.stderr, "oops");
        assert!(e.to_string().contains("on host h"), "{e}");
        let e = t
            .run(
                "h",
                &["sleep".into(), "5".into()],
                Duration::from_millis(100),
            )
            .err()
            .unwrap();
        assert!(e.status.starts_with("timed out"), "{}", e.status);
    }

    #[test]
    fn displayed_commands_quote_what_a_shell_would_split() {
        let argv: Vec<String> = ["qemu-img", "create", "-b", "a b", "it's"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            display_command(&argv),
            r"qemu-img create -b 'a b' 'it'\''s'"
        );
    }

    /// Hostile words survive a real shell unchanged and run nothing.
    #[test]
    fn quoted_words_reach_a_shell_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("injected");
        let m = marker.display().to_string();
        let hostile = [
            format!("$(touch {m})"),
            format!("`touch {m}`"),
            format!("'; touch {m}; '"),
            format!("\"; touch {m}; \""),
            format!("a\nb; touch {m}"),
            "=ls".to_string(),
            "~root".to_string(),
            "*".to_string(),
            "-n".to_string(),
            String::new(),
            "x\\'y".to_string(),
            "%1 a=b".to_string(),
        ];
        let mut argv = vec!["printf".to_string(), "%s\\0".to_string()];
        argv.extend(hostile.iter().cloned());
        let line = display_command(&argv);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&line)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{line}");
        let got: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .split_terminator('\0')
            .map(String::from)
            .collect();
        assert_eq!(got, hostile);
        assert!(!marker.exists(), "a quoted word ran a command: {line}");
    }
}
