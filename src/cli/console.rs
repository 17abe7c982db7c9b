//! `vmthunder console`: a clone's serial console log, read on its host through the spec's
//! transport (over ssh on the host; with the local transport, namespaces or not, the file is
//! on this machine). With `--follow`, what is appended is printed as it comes, until Ctrl-C.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::output;
use super::{fail, Failure, SpecArg, StateArg};
use crate::backend::ssh::{Endpoint, SshTransport};
use crate::backend::transport::{Local, Transport};
use crate::spec::{Spec, Stack, Transport as TransportKind};

/// How often `--follow` looks for more.
const POLL: Duration = Duration::from_millis(500);
/// How long one read of the log on a host may take.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// The clone: its VM name (`vmthunder output` lists them) or its address
    /// (domain.node01.base.0).
    #[arg(value_name = "CLONE")]
    pub clone: String,
    #[command(flatten)]
    pub spec: SpecArg,
    #[command(flatten)]
    pub state: StateArg,
    /// Show only the last N lines [default: the whole log].
    #[arg(short = 'n', long, value_name = "N")]
    pub lines: Option<usize>,
    /// Keep printing what the guest writes (every 0.5 s) until Ctrl-C.
    #[arg(long)]
    pub follow: bool,
}

pub(super) fn run(args: ConsoleArgs) -> Result<i32, Failure> {
    let (spec, at, state) = output::load(&args.spec, args.state)?;
    let clones = output::clones(&state);
    let c = output::find(&clones, &args.clone, &args.spec.file, &at.name)?;
    let name = format!("{} ({})", c.attrs.name, c.rec.addr);
    if spec.backend.stack == Stack::Sim {
        return Err(fail(format!(
            "clone {name} has no console: the sim stack records objects without running any guest, so there is no console log to show"
        )));
    }
    let Some(log) = output::Consoles::new(&spec).of(c) else {
        return Err(fail(format!("no console log is recorded for clone {name}")));
    };
    let host = c.rec.addr.host.to_string();
    let transport = transport(&spec, &host)?;
    let t = &*transport;
    let where_ = || format!("`{}` on host {host}", log.display());
    let read_err = |e: std::io::Error| fail(format!("cannot read {}: {e}", where_()));
    let first = t.read_file(&host, &log).map_err(read_err)?;
    if !args.follow {
        let Some(bytes) = first else {
            return Err(fail(format!(
                "the console log {} of clone {name} does not exist: the guest has not started (or its files were removed outside vmthunder)",
                where_()
            )));
        };
        write_out(last_lines(&bytes, args.lines))?;
        return Ok(0);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    let mut offset = match first {
        Some(bytes) => {
            if !write_out(last_lines(&bytes, args.lines))? {
                return Ok(0);
            }
            bytes.len() as u64
        }
        None => {
            eprintln!("Waiting for the console log {} ...", where_());
            0
        }
    };
    let mut exists = offset > 0;
    // Ctrl-C ends it; the ssh connection is closed on the way out.
    while !sleep_unless(&stop, POLL) {
        let more = match appended(t, &host, &log, &mut offset, &mut exists, &where_) {
            Ok(more) => more,
            // Ctrl-C at a terminal reaches ssh too: a read it broke is no error.
            Err(_) if stop.load(Ordering::Relaxed) => break,
            Err(e) => return Err(read_err(e)),
        };
        if !more.is_empty() && !write_out(&more)? {
            break;
        }
    }
    Ok(0)
}

/// What was appended to `log` since `offset` (which it advances); from the start again when
/// the log was truncated or made anew.
fn appended(
    t: &dyn Transport,
    host: &str,
    log: &Path,
    offset: &mut u64,
    exists: &mut bool,
    where_: &dyn Fn() -> String,
) -> std::io::Result<Vec<u8>> {
    match t.file_len(host, log)? {
        None => {
            if *exists {
                eprintln!("The console log {} is gone; waiting for it ...", where_());
            }
            *exists = false;
            *offset = 0;
            return Ok(Vec::new());
        }
        Some(len) if len < *offset => {
            eprintln!(
                "The console log {} was truncated (the guest started again?); from its start:",
                where_()
            );
            *offset = 0;
        }
        Some(len) if len == *offset => {
            *exists = true;
            return Ok(Vec::new());
        }
        Some(_) => {}
    }
    *exists = true;
    let more = read_from(t, host, log, *offset)?;
    *offset += more.len() as u64;
    Ok(more)
}

/// The transport the spec's stack reads host files with: ssh to the host, or this machine's
/// (a host's network namespace shares this machine's files).
fn transport(spec: &Spec, host: &str) -> Result<Box<dyn Transport>, Failure> {
    match spec.backend.transport {
        TransportKind::Ssh => {
            if !spec.hosts.iter().any(|h| h.name == host) {
                return Err(fail(format!(
                    "host {host} is not in the spec any more: its ssh settings are unknown"
                )));
            }
            let t = SshTransport::new(Endpoint::from_spec(spec))
                .map_err(|e| fail(format!("cannot prepare the ssh transport: {e}")))?;
            Ok(Box::new(t))
        }
        TransportKind::Local => Ok(Box::new(Local { netns: None })),
    }
}

/// The bytes of `log` from `offset` on.
fn read_from(t: &dyn Transport, host: &str, log: &Path, offset: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    if t.same_machine() {
        let mut f = std::fs::File::open(log)?;
        f.seek(SeekFrom::Start(offset))?;
        f.read_to_end(&mut out)?;
    } else {
        let argv: Vec<String> = vec![
            "tail".into(),
            "-c".into(),
            format!("+{}", offset + 1),
            "--".into(),
            log.display().to_string(),
        ];
        out = t
            .run(host, &argv, READ_TIMEOUT)
            .map_err(std::io::Error::other)?
            .stdout;
    }
    Ok(out)
}

/// Sleeps `d` in short steps; true as soon as `stop` is set.
fn sleep_unless(stop: &AtomicBool, d: Duration) -> bool {
    let step = Duration::from_millis(50);
    let mut left = d;
    while !left.is_zero() {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        let s = step.min(left);
        std::thread::sleep(s);
        left -= s;
    }
    stop.load(Ordering::Relaxed)
}

/// Writes to stdout as it is (a console log is the guest's bytes); false when the reader
/// has gone (`| head`).
fn write_out(bytes: &[u8]) -> Result<bool, Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|_| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The last `n` lines of `text` (all of it for `None`); a last line without its newline
/// counts.
fn last_lines(text: &[u8], n: Option<usize>) -> &[u8] {
    let Some(n) = n else { return text };
    if n == 0 {
        return &text[text.len()..];
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut seen = 0;
    for (i, &b) in body.iter().enumerate().rev() {
        if b == b'\n' {
            seen += 1;
            if seen == n {
                return &text[i + 1..];
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_counts_from_the_end() {
        let t = b"one\ntwo\nthree\n";
        assert_eq!(last_lines(t, None), t);
        assert_eq!(last_lines(t, Some(1)), b"three\n");
        assert_eq!(last_lines(t, Some(2)), b"two\nthree\n");
        assert_eq!(last_lines(t, Some(3)), t);
        assert_eq!(last_lines(t, Some(9)), t);
        assert_eq!(last_lines(t, Some(0)), b"");
        assert_eq!(last_lines(b"one\ntwo", Some(1)), b"two");
        assert_eq!(last_lines(b"", Some(2)), b"");
    }
}
