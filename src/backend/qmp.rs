//! A minimal QMP client: the JSON monitor protocol of qemu-storage-daemon and QEMU.
//!
//! One command at a time; asynchronous events that arrive in between are skipped. Every read
//! and write is bounded by the timeout given at connect.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket `{path}`: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP socket `{path}`: unexpected reply {reply}")]
    Protocol { path: String, reply: String },
    /// The command ran and failed; `class` is QEMU's error class.
    #[error("{command}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

pub struct Qmp {
    path: String,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Commands sent so far: each carries an id of this process and its number.
    sent: u64,
}

impl Qmp {
    /// Takes a connected monitor socket (`path` names it in errors), reads the greeting and
    /// leaves capabilities negotiation mode.
    pub fn start(stream: UnixStream, path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let p = path.display().to_string();
        let io = |source| QmpError::Io {
            path: p.clone(),
            source,
        };
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        let mut qmp = Qmp {
            path: p.clone(),
            reader: BufReader::new(stream),
            writer,
            sent: 0,
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol {
                path: p,
                reply: greeting.to_string(),
            });
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source: match source.kind() {
                    // What a read timeout looks like on a Unix socket.
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                        std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the monitor did not answer in time",
                        )
                    }
                    _ => source,
                },
            })?;
        if n == 0 {
            return Err(QmpError::Io {
                path: self.path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the monitor closed the connection",
                ),
            });
        }
        serde_json::from_str(&line).map_err(|_| QmpError::Protocol {
            path: self.path.clone(),
            reply: line.trim_end().to_string(),
        })
    }

    /// Runs `command` with `arguments` (an object) and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        // The monitor answers whatever it was still running for a client that went away (a
        // vmthunder killed mid-command) on the next connection: only the reply that carries
        // this command's id is its answer.
        self.sent += 1;
        let id = format!("vmthunder-{}-{}", std::process::id(), self.sent);
        let mut msg = json!({ "execute": command, "id": id });
        if arguments.as_object().is_some_and(|a| !a.is_empty()) {
            msg["arguments"] = arguments;
        }
        let mut bytes = serde_json::to_vec(&msg).expect("serializes");
        bytes.push(b'\n');
        self.writer
            .write_all(&bytes)
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source,
            })?;
        loop {
            let mut reply = self.read_message()?;
            if reply.get("event").is_some() || reply.get("id").and_then(Value::as_str) != Some(&id)
            {
                continue;
            }
            if let Some(ret) = reply.get_mut("return") {
                return Ok(ret.take());
            }
            if let Some(err) = reply.get("error") {
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: err["class"].as_str().unwrap_or("").to_string(),
                    desc: err["desc"].as_str().unwrap_or("").to_string(),
                });
            }
            return Err(QmpError::Protocol {
                path: self.path.clone(),
                reply: reply.to_string(),
            });
        }
    }
}
