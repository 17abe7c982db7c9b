//! Hyper-V differencing VHDX chains, flattened for import (`images[].import` of a child VHDX).
//!
//! QEMU reads dynamic and fixed VHDX files but refuses differencing ones, so a child is read
//! with the `vhdx-core` crate: its parent is found beside it by the file name in its parent
//! locator (MS-VHDX 2.6.2.6: `relative_path`, else `absolute_win32_path`, else `volume_path`),
//! checked against the child's `parent_linkage` (the parent's DataWriteGuid when the child was
//! made; a parent written since would give the child wrong bytes), and so on up the chain.
//! The reader over the whole chain yields the flattened disk, which the import streams to its
//! host as raw.
//!
//! The files are read where they are: straight from disk when every host is this machine,
//! else through the transport in windows of [`WINDOW`] bytes (`dd`), so nothing is copied
//! first and no tool beyond coreutils is needed on the host that holds them.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::mpsc;

use vhdx::region::parse_region_table;
use vhdx::{Backing, ReadSeekSend, VhdxError, VhdxReader};

use super::transport::Transport;

/// The bytes one remote read fetches.
const WINDOW: usize = 4 << 20;
/// Differencing disks a chain may stack (Hyper-V's own chains are short; this stops loops).
const MAX_DEPTH: usize = 64;
const METADATA_TABLE: &[u8; 8] = b"metadata";

/// A remote read: offset, length, and where its bytes go.
type Request = (u64, usize, mpsc::SyncSender<io::Result<Vec<u8>>>);

/// Reads files on a host for readers that must own their source (`vhdx-core` keeps each
/// file as a boxed `'static` reader): the files' readers ask this one, which holds the
/// transport, over a channel.
pub struct Files<'t> {
    transport: &'t dyn Transport,
    host: &'t str,
    direct: bool,
    requests: std::sync::Mutex<Option<mpsc::Sender<(String, Request)>>>,
    queue: std::sync::Mutex<Option<mpsc::Receiver<(String, Request)>>>,
}

impl<'t> Files<'t> {
    /// Files on `host`, read straight from disk when every host is this machine.
    pub fn new(transport: &'t dyn Transport, host: &'t str) -> Files<'t> {
        Files::with(transport, host, transport.same_machine())
    }

    /// Files on `host` read through the transport's commands (`dd`) even when the host is
    /// this machine: how files on other hosts are read, for tests and benchmarks.
    pub fn through_commands(transport: &'t dyn Transport, host: &'t str) -> Files<'t> {
        Files::with(transport, host, false)
    }

    fn with(transport: &'t dyn Transport, host: &'t str, direct: bool) -> Files<'t> {
        let (requests, queue) = mpsc::channel();
        Files {
            transport,
            host,
            direct,
            requests: std::sync::Mutex::new(Some(requests)),
            queue: std::sync::Mutex::new(Some(queue)),
        }
    }

    /// Runs `f` with these files readable: their remote reads are answered on a thread
    /// beside it until `f` has returned and dropped every reader it opened.
    pub fn scope<R>(&self, f: impl FnOnce(&Files<'t>) -> R) -> R {
        /// Closes the files however `f` ends (a panic too), so that the server returns.
        struct Closing<'a, 't>(&'a Files<'t>);
        impl Drop for Closing<'_, '_> {
            fn drop(&mut self) {
                self.0.close();
            }
        }
        std::thread::scope(|s| {
            s.spawn(|| self.serve());
            let _closing = Closing(self);
            f(self)
        })
    }

    /// Answers the readers' requests until [`Files::close`] and every reader is gone: run it
    /// on a scoped thread beside them.
    pub fn serve(&self) {
        let Some(queue) = self.queue.lock().expect("queue").take() else {
            return;
        };
        for (path, (offset, len, reply)) in queue {
            let _ = reply.send(self.read_at(&path, offset, len));
        }
    }

    fn read_at(&self, path: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let argv: Vec<String> = [
            "dd",
            &format!("if={path}"),
            "iflag=skip_bytes,count_bytes",
            &format!("skip={offset}"),
            &format!("count={len}"),
            "bs=1M",
            "status=none",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        self.transport
            .run(self.host, &argv, std::time::Duration::from_secs(120))
            .map(|o| o.stdout)
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// The length of `path`, `None` when it does not exist.
    fn len(&self, path: &str) -> io::Result<Option<u64>> {
        self.transport
            .file_len(self.host, std::path::Path::new(path))
    }

    /// No more readers will be opened: [`Files::serve`] returns once the open ones are gone.
    pub fn close(&self) {
        self.requests.lock().expect("requests").take();
    }

    /// A reader of `path`; `None` when it does not exist.
    pub fn open(&self, path: &str) -> io::Result<Option<Box<dyn ReadSeekSend>>> {
        if self.direct {
            return match std::fs::File::open(path) {
                Ok(f) => Ok(Some(Box::new(f))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            };
        }
        let Some(len) = self.len(path)? else {
            return Ok(None);
        };
        let requests = self
            .requests
            .lock()
            .expect("requests")
            .clone()
            .ok_or_else(|| io::Error::other("the files were closed"))?;
        Ok(Some(Box::new(Remote {
            path: path.to_string(),
            requests,
            len,
            pos: 0,
            window: (0, Vec::new()),
        })))
    }
}

/// A file on a host, read through [`Files`] a window at a time.
struct Remote {
    path: String,
    requests: mpsc::Sender<(String, Request)>,
    len: u64,
    pos: u64,
    /// The last window read: its offset and bytes.
    window: (u64, Vec<u8>),
}

impl Read for Remote {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let (start, bytes) = &self.window;
        let inside = self.pos >= *start && self.pos < start + bytes.len() as u64;
        if !inside {
            let (tx, rx) = mpsc::sync_channel(1);
            self.requests
                .send((self.path.clone(), (self.pos, WINDOW, tx)))
                .map_err(|_| io::Error::other("the reading side stopped"))?;
            let got = rx
                .recv()
                .map_err(|_| io::Error::other("the reading side stopped"))??;
            if got.is_empty() {
                return Ok(0);
            }
            self.window = (self.pos, got);
        }
        let (start, bytes) = &self.window;
        let at = (self.pos - start) as usize;
        let n = buf.len().min(bytes.len() - at);
        buf[..n].copy_from_slice(&bytes[at..at + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Remote {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| io::Error::other("seek before the start"))?;
        Ok(self.pos)
    }
}

/// A differencing chain: the files from the child down to its base, and a reader of the
/// flattened disk.
pub struct Chain {
    pub files: Vec<String>,
    pub reader: VhdxReader,
}

/// Opens `path` as a VHDX with every parent it names. `Ok(None)` when it is not a
/// differencing VHDX (QEMU reads it, or says what it is not); `Err` says what is wrong with
/// the chain, naming the file.
pub fn chain(files: &Files<'_>, path: &str) -> Result<Option<Chain>, String> {
    let opened = |p: &str| -> Result<Box<dyn ReadSeekSend>, String> {
        files
            .open(p)
            .map_err(|e| format!("cannot read `{p}`: {e}"))?
            .ok_or_else(|| format!("`{p}` does not exist"))
    };
    let mut names = vec![path.to_string()];
    let base = loop {
        let p = names.last().expect("a file").clone();
        match VhdxReader::open_reader(opened(&p)?) {
            // Not a child: QEMU reads it.
            Ok(_) if names.len() == 1 => return Ok(None),
            Ok(r) => break r,
            Err(VhdxError::DifferencingNotSupported) => {}
            Err(VhdxError::Io(e)) => return Err(format!("cannot read `{p}`: {e}")),
            Err(_) if names.len() == 1 => return Ok(None),
            Err(e) => {
                return Err(format!(
                    "`{p}`, a parent in the chain, is not a readable VHDX: {e}"
                ))
            }
        }
        if names.len() > MAX_DEPTH {
            return Err(format!(
                "`{path}` names more than {MAX_DEPTH} parents (a loop?)"
            ));
        }
        let (name, linkage) = locator(&mut *opened(&p)?).map_err(|e| format!("`{p}`: {e}"))?;
        let dir = std::path::Path::new(&p)
            .parent()
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = if dir.is_empty() {
            name.clone()
        } else {
            format!("{dir}/{name}")
        };
        let Some(mut r) = files
            .open(&parent)
            .map_err(|e| format!("cannot read `{parent}`: {e}"))?
        else {
            return Err(format!(
                "the parent of differencing disk `{p}` is missing: it names `{name}`, which is not beside it (`{parent}`); copy the parent there"
            ));
        };
        let written = data_write_guid(&mut *r).map_err(|e| format!("`{parent}`: {e}"))?;
        if !written.eq_ignore_ascii_case(linkage.trim_matches(|c| c == '{' || c == '}')) {
            return Err(format!(
                "`{parent}` was written after its child `{p}` was made (its DataWriteGuid is {{{written}}}, the child's parent_linkage {linkage}): the chain's bytes would be wrong; merge it on the Hyper-V host, or give its original parent"
            ));
        }
        names.push(parent);
    };
    let mut reader = base;
    for p in names[..names.len() - 1].iter().rev() {
        let mut r = opened(p)?;
        let len = r
            .seek(SeekFrom::End(0))
            .map_err(|e| format!("cannot read `{p}`: {e}"))?;
        let backing = Backing::Reader {
            inner: std::sync::Mutex::new(r),
            len,
        };
        reader = VhdxReader::from_backing_with_parent(backing, reader)
            .map_err(|e| format!("`{p}` is not a readable VHDX: {e}"))?;
    }
    Ok(Some(Chain {
        files: names,
        reader,
    }))
}

fn read_exact_at(r: &mut dyn ReadSeekSend, offset: u64, len: usize) -> Result<Vec<u8>, String> {
    r.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
    let mut b = vec![0u8; len];
    r.read_exact(&mut b).map_err(|e| e.to_string())?;
    Ok(b)
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The parent's file name and the child's `parent_linkage`, from its parent locator.
fn locator(r: &mut dyn ReadSeekSend) -> Result<(String, String), String> {
    let len = r.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
    let head = read_exact_at(r, 0, (1 << 20).min(len as usize))?;
    let regions = parse_region_table(&head, 0x3_0000, len)
        .or_else(|_| parse_region_table(&head, 0x4_0000, len))
        .map_err(|e| e.to_string())?;
    let meta = read_exact_at(
        r,
        regions.metadata.file_offset,
        regions.metadata.length as usize,
    )?;
    let bad = || "its parent locator cannot be read".to_string();
    if meta.get(..8) != Some(METADATA_TABLE) {
        return Err("no metadata table".into());
    }
    let entries = le_u16(&meta, 10).ok_or_else(bad)? as usize;
    let item = (0..entries.min(2047))
        .map(|i| 32 + 32 * i)
        .find(|&at| meta.get(at..at + 16) == Some(&vhdx::metadata::GUID_PARENT_LOCATOR[..]))
        .ok_or("it is a differencing disk without a parent locator")?;
    let offset = le_u32(&meta, item + 16).ok_or_else(bad)? as usize;
    let length = le_u32(&meta, item + 20).ok_or_else(bad)? as usize;
    let loc = meta.get(offset..offset + length).ok_or_else(bad)?;
    let count = le_u16(loc, 18).ok_or_else(bad)? as usize;
    let text = |at: usize, n: usize| -> Option<String> {
        let b = loc.get(at..at + n)?;
        let units: Vec<u16> = b
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16(&units).ok()
    };
    let mut kv = std::collections::HashMap::new();
    for i in 0..count.min(256) {
        let e = 20 + 12 * i;
        let (ko, vo) = (
            le_u32(loc, e).ok_or_else(bad)?,
            le_u32(loc, e + 4).ok_or_else(bad)?,
        );
        let (kl, vl) = (
            le_u16(loc, e + 8).ok_or_else(bad)?,
            le_u16(loc, e + 10).ok_or_else(bad)?,
        );
        let k = text(ko as usize, kl as usize).ok_or_else(bad)?;
        let v = text(vo as usize, vl as usize).ok_or_else(bad)?;
        kv.insert(k, v);
    }
    let path = ["relative_path", "absolute_win32_path", "volume_path"]
        .iter()
        .find_map(|k| kv.get(*k))
        .ok_or("its parent locator names no parent path")?;
    let name = path
        .rsplit(['\\', '/'])
        .next()
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .ok_or_else(|| format!("its parent locator names no file: {path:?}"))?;
    let linkage = kv
        .get("parent_linkage")
        .ok_or("its parent locator has no parent_linkage")?;
    Ok((name.to_string(), linkage.clone()))
}

/// The DataWriteGuid of a VHDX's current header (the valid one with the higher sequence).
fn data_write_guid(r: &mut dyn ReadSeekSend) -> Result<String, String> {
    let head = read_exact_at(r, 0, 0x3_0000)?;
    let active = vhdx::header::parse_active_header(&head).map_err(|e| e.to_string())?;
    for at in [0x1_0000usize, 0x2_0000] {
        if head.get(at..at + 4) == Some(b"head")
            && le_u64(&head, at + 8) == Some(active.sequence_number)
        {
            let b: [u8; 16] = head[at + 32..at + 48].try_into().expect("16 bytes");
            return Ok(uuid::Uuid::from_bytes_le(b).to_string());
        }
    }
    Err("no valid header".into())
}
