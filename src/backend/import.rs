//! Importing an image (`images[].import`: P2V, V2V): a disk of another format, or on another
//! machine, converted with `qemu-img convert` into the image's file on its source host, before
//! anything of the image's tree is built. The stacks share it; it needs only a [`Transport`].
//!
//! A create is safe to repeat from any point:
//! - the source is copied (from another host: streamed through this machine) and converted into
//!   files beside the image (`<path>.vmthunder-source`, `<path>.vmthunder-part`), which a new
//!   attempt removes first;
//! - what was made (checksum, size, modification time) is written to a record in vmthunder's
//!   own directory on the host, and only then is the part renamed to the image's path;
//! - a create that finds the image's file with the record's size and time adopts it; one that
//!   finds any other file there refuses to overwrite it.
//!
//! A read compares the file's size and modification time (cheap), and with `deep` its SHA-256.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap as HashMap;
use serde_json::Value;

use super::transport::{CommandError, Transport};
use super::{BackendError, Observed, Target};
use crate::plan::{Action, Plan};
use crate::resource::{Desired, ImageAttrs};
use crate::spec::{ImageFormat, SourceFormat, Spec};

/// The record of an import in vmthunder's directory on the source host.
pub const RECORD: &str = "import.json";
/// How often progress is reported while an import runs.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// Short commands (inspecting a file): 10 minutes at most (a checksum of a big disk).
const SHORT: Duration = Duration::from_secs(600);

/// What the stacks need to import: where each image's import sits in the spec (for messages).
#[derive(Clone, Debug, Default)]
pub struct Imports {
    at: HashMap<String, usize>,
    /// (source host, path) of the images the spec gives as they are (no `import`): a file
    /// there is the user's, which deleting an `image` resource never removes.
    given: rustc_hash::FxHashSet<(String, String)>,
    /// The cluster's directory on every host (`backend.root`/cluster): an import's record is
    /// in `<base>/<host>/<image>/`.
    base: PathBuf,
}

impl Imports {
    pub fn new(spec: &Spec) -> Imports {
        Imports {
            at: spec
                .images
                .iter()
                .enumerate()
                .filter(|(_, i)| i.import.is_some())
                .map(|(n, i)| (i.name.clone(), n))
                .collect(),
            given: spec
                .images
                .iter()
                .filter(|i| i.import.is_none())
                .map(|i| (i.source_host.clone(), i.path.clone()))
                .collect(),
            base: super::qemu::absolute(&spec.backend.root).join(&spec.cluster),
        }
    }

    /// vmthunder's directory for `image` on `host`, which holds the import's record.
    fn record(&self, host: &str, image: &str) -> PathBuf {
        self.base.join(host).join(image).join(RECORD)
    }

    /// Whether `image` is imported (its file is made by its `image` resource).
    pub fn has(&self, image: &str) -> bool {
        self.at.contains_key(image)
    }

    /// The JSON path of an image's import field, e.g. `/images/2/import/from`.
    fn at(&self, image: &str, field: &str) -> String {
        match self.at.get(image) {
            Some(i) => format!("/images/{i}/import/{field}"),
            None => format!("images[{image}].import.{field}"),
        }
    }

    /// Checks every import the plan makes, before anything is touched: the source can be read,
    /// holds the declared format (with `qemu-img info`, where the host that holds it has it),
    /// and fits the image's size. Every problem found, each naming its place in the spec.
    pub fn preflight(&self, transport: &dyn Transport, plan: &Plan) -> Vec<String> {
        let imports: Vec<(&str, &str, &ImageAttrs)> = plan
            .changes
            .iter()
            .filter(|c| matches!(c.action, Action::Create | Action::Replace))
            .filter_map(|c| match &c.after {
                Some(Desired::Image(a)) => Some((&*c.addr.image, &*c.addr.host, a)),
                _ => None,
            })
            .collect();
        super::in_parallel(&imports, |(image, host, a)| {
            let mut problems = Vec::new();
            let from = holder(transport, host, a);
            if let Err(e) = self.check_source(transport, image, from, a, from != *host) {
                problems.push(e);
            }
            let record = self.record(host, image);
            match standing(transport, host, &record, a) {
                Ok(Standing::Foreign) => problems.push(foreign(self, host, image, &a.path)),
                Ok(_) => {}
                Err(e) if e.unreachable_host.is_some() => {}
                Err(e) => problems.push(e.to_string()),
            }
            problems
        })
        .into_iter()
        .flatten()
        .collect()
    }

    /// Inspects the source of `a` (on `host`) and checks it against what the spec says;
    /// `single` when it must be one file (it is copied to another host, or is that copy).
    fn check_source(
        &self,
        transport: &dyn Transport,
        image: &str,
        host: &str,
        a: &ImageAttrs,
        single: bool,
    ) -> Result<Source, String> {
        let at = self.at(image, "from");
        let found = inspect(transport, host, &a.from, a.source_format).map_err(|e| match e {
            Inspect::Unreadable => format!(
                "{at}: `{}` cannot be read on host {host}: give the path of a file or block device there",
                a.from
            ),
            Inspect::NotFormat(why) => format!(
                "{}: `{}` on host {host} is not a {} image ({why}); give the format it holds (raw, qcow2, vmdk, vhdx, vpc or vdi)",
                self.at(image, "format"),
                a.from,
                a.source_format.as_str()
            ),
            Inspect::Chain(why) => format!("{at}: on host {host}: {why}"),
            Inspect::Failed(e) => format!("{at}: {e}"),
        })?;
        if single && !found.others.is_empty() {
            return Err(format!(
                "{at}: `{}` on host {host} reads other files too ({}); only the one file is copied to the source host, where they are not: import it on a host that has them all, or make one file of it there first (`qemu-img convert -O qcow2`)",
                a.from,
                found.others.join(", ")
            ));
        }
        if let (Some(size), Some(v)) = (a.size, found.virtual_size) {
            if v > size.bytes() {
                return Err(format!(
                    "{at}: `{}` on host {host} holds {} ({v} bytes), more than the image's size {size} ({} bytes); raise the size or leave it out",
                    a.from,
                    crate::size::Size(v),
                    size.bytes()
                ));
            }
        }
        Ok(found)
    }
}

/// What inspecting a source found.
#[derive(Clone, Debug)]
struct Source {
    /// Its length in bytes (a block device's size).
    bytes: u64,
    /// The disk's size as the guest sees it, when `qemu-img` could tell (on the host that
    /// holds it); for a raw source its length.
    virtual_size: Option<u64>,
    /// A differencing VHDX: its files, from the child to its base (QEMU cannot read those;
    /// [`super::vhdx`] flattens them).
    chain: Option<Vec<String>>,
    /// The other files it reads, as `qemu-img` tells: backing files and VMDK extents.
    others: Vec<String>,
}

enum Inspect {
    Unreadable,
    NotFormat(String),
    /// A differencing VHDX whose chain is broken.
    Chain(String),
    Failed(String),
}

fn argv(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Looks at `path` on `host`: readable, its length, and (where `qemu-img` is installed) the
/// format and size it holds, the chain of parents it names included.
fn inspect(
    transport: &dyn Transport,
    host: &str,
    path: &str,
    format: SourceFormat,
) -> Result<Source, Inspect> {
    let failed = |e: CommandError| Inspect::Failed(BackendError::from(e).to_string());
    let out = transport
        .run(
            host,
            &argv(&[
                "sh",
                "-c",
                r#"[ -r "$1" ] || exit 3; if [ -b "$1" ]; then blockdev --getsize64 "$1"; else stat -L -c %s "$1"; fi; command -v qemu-img >/dev/null 2>&1 && echo qemu-img; exit 0"#,
                "sh",
                path,
            ]),
            SHORT,
        )
        .map_err(|e| {
            if e.status == "exited with status 3" {
                Inspect::Unreadable
            } else {
                failed(e)
            }
        })?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let bytes: u64 = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| {
            Inspect::Failed(format!("on host {host}: cannot tell the size of `{path}`"))
        })?;
    let has_qemu_img = lines.any(|l| l.trim() == "qemu-img");
    let mut found = Source {
        bytes,
        virtual_size: (format == SourceFormat::Raw).then_some(bytes),
        chain: None,
        others: Vec::new(),
    };
    if format == SourceFormat::Vhdx {
        let files = super::vhdx::Files::new(transport, host);
        let chain = files.scope(|files| {
            super::vhdx::chain(files, path)
                .map(|c| c.map(|c| (c.files, c.reader.virtual_disk_size())))
        });
        match chain {
            Ok(Some((files, size))) => {
                found.virtual_size = Some(size);
                found.chain = Some(files);
                return Ok(found);
            }
            Ok(None) => {}
            Err(why) => return Err(Inspect::Chain(why)),
        }
    }
    if !has_qemu_img {
        return Ok(found);
    }
    // The declared format opens it, with every parent it names (a broken chain fails here,
    // naming the missing file).
    let info = transport.run(
        host,
        &argv(&[
            "qemu-img",
            "info",
            "-U",
            "--backing-chain",
            "--output=json",
            "-f",
            format.as_str(),
            path,
        ]),
        SHORT,
    );
    let info = match info {
        Ok(o) => o,
        Err(e) if e.unreachable => return Err(failed(e)),
        Err(e) => {
            let why = e.stderr.trim().trim_start_matches("qemu-img: ").to_string();
            return Err(Inspect::NotFormat(if why.is_empty() {
                e.status
            } else {
                why
            }));
        }
    };
    let chain: Value = serde_json::from_slice(&info.stdout).unwrap_or(Value::Null);
    found.virtual_size = chain
        .get(0)
        .and_then(|i| i.get("virtual-size"))
        .and_then(Value::as_u64)
        .or(found.virtual_size);
    found.others = other_files(&chain, path);
    if format == SourceFormat::Raw {
        // Raw opens anything: a disk image of another format would be imported as its
        // container's bytes. What does qemu-img find when it probes?
        let probe = transport
            .run(
                host,
                &argv(&["qemu-img", "info", "-U", "--output=json", path]),
                SHORT,
            )
            .map_err(failed)?;
        let probed: Value = serde_json::from_slice(&probe.stdout).unwrap_or(Value::Null);
        if let Some(f) = probed.get("format").and_then(Value::as_str) {
            if f != "raw" {
                return Err(Inspect::NotFormat(format!(
                    "it holds a {f} image; importing it as raw would copy the {f} file itself"
                )));
            }
        }
    }
    Ok(found)
}

/// The host to read the source of `a` on (imported on `host`): its `from_host`, unless every
/// host is this machine (then the file is right here).
fn holder<'a>(transport: &dyn Transport, host: &'a str, a: &'a ImageAttrs) -> &'a str {
    match &a.from_host {
        Some(h) if !transport.same_machine() => h,
        _ => host,
    }
}

/// The files other than `path` that `qemu-img info --backing-chain` says the image reads:
/// its backing files and VMDK extents.
fn other_files(chain: &Value, path: &str) -> Vec<String> {
    let mut others = Vec::new();
    for (i, info) in chain.as_array().into_iter().flatten().enumerate() {
        let file = info
            .get("filename")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if i > 0 {
            others.push(file.to_string());
        }
        let extents = info
            .pointer("/format-specific/data/extents")
            .and_then(Value::as_array);
        for e in extents.into_iter().flatten() {
            if let Some(f) = e.get("filename").and_then(Value::as_str) {
                if f != path && f != file && !others.iter().any(|o| o == f) {
                    others.push(f.to_string());
                }
            }
        }
    }
    others
}

/// The files of an import beside the image.
fn part(path: &str) -> String {
    format!("{path}.vmthunder-part")
}
fn staged(path: &str) -> String {
    format!("{path}.vmthunder-source")
}

/// A file's length and modification time (nanoseconds, as `stat` prints them); `None` when it
/// does not exist.
fn stat(
    transport: &dyn Transport,
    host: &str,
    path: &str,
) -> Result<Option<(u64, String)>, BackendError> {
    let out = transport.run(
        host,
        &argv(&[
            "sh",
            "-c",
            r#"[ -e "$1" ] || exit 3; stat -L -c '%s %.9Y' "$1""#,
            "sh",
            path,
        ]),
        SHORT,
    );
    let out = match out {
        Ok(o) => o,
        Err(e) if e.status == "exited with status 3" => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    match (words.next().and_then(|w| w.parse().ok()), words.next()) {
        (Some(len), Some(mtime)) => Ok(Some((len, mtime.to_string()))),
        _ => Err(BackendError::new(format!(
            "on host {host}: cannot read the size and time of `{path}` from `stat`: {text}"
        ))),
    }
}

fn sha256(
    transport: &dyn Transport,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<String, BackendError> {
    // OpenSSL uses the CPU's SHA instructions (1 GiB in 1.0 s on this machine; coreutils'
    // sha256sum took 6.2 s); sha256sum where it is not installed.
    let out = transport.run(
        host,
        &argv(&[
            "sh",
            "-c",
            r#"if command -v openssl >/dev/null 2>&1; then openssl dgst -sha256 -r "$1"; else sha256sum -- "$1"; fi"#,
            "sh",
            path,
        ]),
        timeout,
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .filter(|h| h.len() == 64)
        .map(String::from)
        .ok_or_else(|| {
            BackendError::new(format!(
                "on host {host}: the checksum command printed {text:?}"
            ))
        })
}

/// How long a copy or conversion of `bytes` may take: ten minutes, plus a second per 4 MiB.
fn allowance(bytes: u64) -> Duration {
    Duration::from_secs(600 + bytes / (4 << 20))
}

/// Reports progress at most every [`PROGRESS_EVERY`].
struct Throttle<'a> {
    t: Target<'a>,
    last: Option<Instant>,
}

impl Throttle<'_> {
    fn tell(&mut self, done: u64, total: u64) {
        if self.last.is_some_and(|l| l.elapsed() < PROGRESS_EVERY) && done < total {
            return;
        }
        self.last = Some(Instant::now());
        self.t.advance(done.min(total), total);
    }
}

/// The percentage in `qemu-img convert -p`'s last progress line of `chunk`, like
/// `    (42.02/100%)`.
fn percent(chunk: &[u8]) -> Option<f64> {
    let text = String::from_utf8_lossy(chunk);
    let last = text.rsplit('(').find(|s| s.contains("/100%"))?;
    last.split('/').next()?.trim().parse().ok()
}

/// Imports `t` (an [`ImageAttrs`]) into its path on its host; `dir` is vmthunder's own
/// directory there, which keeps the record.
pub fn create(
    imports: &Imports,
    transport: &dyn Transport,
    t: Target<'_>,
) -> Result<Observed, BackendError> {
    let Desired::Image(a) = t.desired else {
        unreachable!("image attributes")
    };
    let host = &*t.addr.host;
    let record = imports.record(host, &t.addr.image);
    let dir = record.parent().expect("the record's directory");
    let path = a.path.as_str();
    let part = part(path);
    let staged = staged(path);
    let io = |what: &str, p: &Path, e: std::io::Error| BackendError::io(what, host, p, e);
    let clear = || -> Result<(), BackendError> {
        for f in [&part, &staged] {
            transport
                .remove_file(host, Path::new(f))
                .map_err(|e| io("cannot remove", Path::new(f), e))?;
        }
        Ok(())
    };
    match standing(transport, host, &record, a)? {
        Standing::Done(o) => {
            clear()?;
            return Ok(o);
        }
        Standing::Foreign => {
            return Err(BackendError::new(foreign(
                imports,
                host,
                &t.addr.image,
                path,
            )))
        }
        // Absent, or an earlier import of other attributes: made anew (`mv -f` replaces it).
        Standing::Free | Standing::Stale => {}
    }
    clear()?;
    if let Some(parent) = Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        transport
            .create_dir_all(host, parent)
            .map_err(|e| io("cannot create the directory", parent, e))?;
    }
    let from_host = holder(transport, host, a);
    let mut throttle = Throttle { t, last: None };
    let held = imports
        .check_source(transport, &t.addr.image, from_host, a, from_host != host)
        .map_err(BackendError::new)?;
    // A differencing VHDX is flattened where it is and streamed here as raw; a file on
    // another host is streamed here as it is; then either is converted as a local file.
    let (source, source_format, copied) = if held.chain.is_some() {
        let vsize = held.virtual_size.unwrap_or(held.bytes);
        let total = 2 * vsize;
        flatten(
            transport,
            from_host,
            &a.from,
            host,
            &staged,
            vsize,
            total,
            &mut throttle,
        )?;
        (staged.as_str(), SourceFormat::Raw, vsize)
    } else if from_host != host {
        let total = held.bytes + held.virtual_size.unwrap_or(held.bytes);
        relay(
            transport,
            from_host,
            &a.from,
            host,
            &staged,
            held.bytes,
            total,
            &mut throttle,
        )?;
        (staged.as_str(), a.source_format, held.bytes)
    } else {
        (a.from.as_str(), a.source_format, 0)
    };
    // A copy is inspected where it landed (the machine it came from may have no qemu-img).
    let src = if source == a.from {
        held
    } else {
        let local = ImageAttrs {
            from: source.to_string(),
            source_format,
            from_host: None,
            ..a.clone()
        };
        imports
            .check_source(transport, &t.addr.image, host, &local, true)
            .map_err(|m| BackendError::new(m.replace(source, &a.from)))?
    };
    let vsize = src.virtual_size.unwrap_or(src.bytes);
    let total = copied + vsize;
    // A raw copy that landed here (sparse) is the raw image already: padded to the size, not
    // converted again.
    if source != a.from && source_format == SourceFormat::Raw && a.format == ImageFormat::Raw {
        if let Some(size) = a.size {
            transport
                .set_len(host, Path::new(source), size.bytes(), false)
                .map_err(|e| io("cannot pad", Path::new(source), e))?;
        }
        transport.run(host, &argv(&["mv", "-f", "--", source, &part]), SHORT)?;
        return finish(
            transport,
            t,
            dir,
            &part,
            &staged,
            vsize,
            src.bytes,
            total,
            &mut throttle,
        );
    }
    let mut convert = vec![
        "qemu-img".to_string(),
        "convert".into(),
        "-p".into(),
        "-f".into(),
        source_format.as_str().into(),
        "-O".into(),
        a.format.as_str().into(),
    ];
    if let Some(size) = a.size {
        // Made at the image's size first, so a smaller disk is padded to it.
        transport.run(
            host,
            &argv(&[
                "qemu-img",
                "create",
                "-q",
                "-f",
                a.format.as_str(),
                &part,
                &size.bytes().to_string(),
            ]),
            SHORT,
        )?;
        convert.push("-n".into());
    }
    convert.push(source.to_string());
    convert.push(part.clone());
    let mut progress = |chunk: &[u8]| {
        if let Some(p) = percent(chunk) {
            throttle.tell(copied + (p / 100.0 * vsize as f64) as u64, total);
        }
        Ok(())
    };
    transport
        .run_streaming(host, &convert, None, &mut progress, allowance(vsize))
        .map_err(|e| BackendError::from(e).context(&format!("cannot convert `{}`", a.from)))?;
    finish(
        transport,
        t,
        dir,
        &part,
        &staged,
        vsize,
        src.bytes,
        total,
        &mut throttle,
    )
}

/// Records the import made at `part` (its checksum, size and time, in the record in `dir`)
/// and renames it into place.
#[allow(clippy::too_many_arguments)]
fn finish(
    transport: &dyn Transport,
    t: Target<'_>,
    dir: &Path,
    part: &str,
    staged: &str,
    vsize: u64,
    source_bytes: u64,
    total: u64,
    throttle: &mut Throttle<'_>,
) -> Result<Observed, BackendError> {
    let Desired::Image(a) = t.desired else {
        unreachable!("image attributes")
    };
    let host = &*t.addr.host;
    let path = a.path.as_str();
    let record = dir.join(RECORD);
    let io = |what: &str, p: &Path, e: std::io::Error| BackendError::io(what, host, p, e);
    let sum = sha256(transport, host, part, allowance(vsize))?;
    let Some((bytes, mtime)) = stat(transport, host, part)? else {
        return Err(BackendError::new(format!(
            "on host {host}: `{part}` vanished while it was imported"
        )));
    };
    let mut o = Observed::new();
    o.insert("path".into(), path.into());
    o.insert("sha256".into(), sum.into());
    o.insert("bytes".into(), bytes.into());
    o.insert("mtime".into(), mtime.into());
    o.insert("virtual_size".into(), vsize.into());
    o.insert("source_bytes".into(), source_bytes.into());
    transport
        .create_dir_all(host, dir)
        .map_err(|e| io("cannot create the directory", dir, e))?;
    // On disk before the record says so: a crash must not leave a recorded file with holes.
    transport.run(host, &argv(&["sync", "--", part]), allowance(vsize))?;
    let mut kept = o.clone();
    kept.insert(
        "import".into(),
        serde_json::to_value(a).expect("attributes serialize"),
    );
    let text = serde_json::to_vec_pretty(&kept).expect("observed serializes");
    transport
        .write_file(host, &record, &text)
        .map_err(|e| io("cannot write", &record, e))?;
    transport.run(host, &argv(&["mv", "-f", "--", part, path]), SHORT)?;
    // The import is done and recorded: a copy left behind is removed by the next import or
    // delete, not a reason to import again.
    if let Err(e) = transport.remove_file(host, Path::new(staged)) {
        tracing::warn!(host, file = staged, error = %e, "cannot remove the import's copy");
    }
    throttle.tell(total, total);
    Ok(o)
}

/// What stands at an import's path.
enum Standing {
    /// Nothing.
    Free,
    /// The import of these attributes, as its record says (a run killed after the rename,
    /// before state recorded it): adopted.
    Done(Observed),
    /// A file an earlier import of other attributes made: replaced.
    Stale,
    /// A file vmthunder did not import: never overwritten.
    Foreign,
}

/// The record of the import of `a` on `host`, if there is one for its path.
fn recorded(
    transport: &dyn Transport,
    host: &str,
    record: &Path,
    a: &ImageAttrs,
) -> Result<Option<Observed>, BackendError> {
    let text = transport
        .read_file(host, record)
        .map_err(|e| BackendError::io("cannot read", host, record, e))?;
    Ok(text
        .and_then(|t| serde_json::from_slice::<Observed>(&t).ok())
        .filter(|o| o.get("path").and_then(Value::as_str) == Some(a.path.as_str())))
}

fn standing(
    transport: &dyn Transport,
    host: &str,
    record: &Path,
    a: &ImageAttrs,
) -> Result<Standing, BackendError> {
    let Some((bytes, mtime)) = stat(transport, host, &a.path)? else {
        return Ok(Standing::Free);
    };
    let Some(mut o) = recorded(transport, host, record, a)? else {
        return Ok(Standing::Foreign);
    };
    let same = o.get("bytes").and_then(Value::as_u64) == Some(bytes)
        && o.get("mtime").and_then(Value::as_str) == Some(mtime.as_str())
        && o.remove("import") == Some(serde_json::to_value(a).expect("attributes serialize"));
    Ok(if same {
        Standing::Done(o)
    } else {
        Standing::Stale
    })
}

/// Why an import refuses a file at its path.
fn foreign(imports: &Imports, host: &str, image: &str, path: &str) -> String {
    format!(
        "{}: `{path}` exists already on host {host}, and vmthunder did not import it: move it away, or give another path (to use the file as it is, drop `import`)",
        imports.at(image, "from").replace("/import/from", "/path")
    )
}

/// Streams `from` on `from_host` into `to` on `to_host` through this machine, checking that
/// all `bytes` arrived.
#[allow(clippy::too_many_arguments)]
fn relay(
    transport: &dyn Transport,
    from_host: &str,
    from: &str,
    to_host: &str,
    to: &str,
    bytes: u64,
    total: u64,
    throttle: &mut Throttle<'_>,
) -> Result<(), BackendError> {
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(8);
    let read_argv = argv(&["cat", "--", from]);
    let limit = allowance(bytes);
    let (read, write, arrived) = std::thread::scope(|s| {
        let reader = s.spawn(move || {
            let mut send = |chunk: &[u8]| {
                tx.send(chunk.to_vec())
                    .map_err(|_| std::io::Error::other("the receiving host stopped taking it"))
            };
            transport.run_streaming(from_host, &read_argv, None, &mut send, limit)
        });
        let mut tell = |n| throttle.tell(n, total);
        let chunks = Chunks {
            rx,
            chunk: Vec::new(),
            at: 0,
        };
        let mut input = Counted::new(chunks, &mut tell);
        let write = write_sparse(transport, to_host, to, &mut input, bytes);
        let arrived = input.count;
        drop(input);
        (
            reader.join().expect("the reading thread ends"),
            write,
            arrived,
        )
    });
    let from_shown = format!("`{from}` on host {from_host}");
    // A failed write is the cause when both failed (the reader then only lost its receiver).
    write.map_err(|e| BackendError::from(e).context(&format!("cannot write `{to}`")))?;
    read.map_err(|e| BackendError::from(e).context(&format!("cannot read {from_shown}")))?;
    if arrived != bytes {
        return Err(BackendError::new(format!(
            "{from_shown}: {arrived} of its {bytes} bytes arrived (did it change while it was read?); nothing was imported"
        )));
    }
    Ok(())
}

/// Streams the flattened disk of the differencing VHDX `from` on `from_host` (its chain read
/// where it is) into a sparse raw file `to` on `to_host`, checking that all `bytes` arrived.
#[allow(clippy::too_many_arguments)]
fn flatten(
    transport: &dyn Transport,
    from_host: &str,
    from: &str,
    to_host: &str,
    to: &str,
    bytes: u64,
    total: u64,
    throttle: &mut Throttle<'_>,
) -> Result<(), BackendError> {
    let files = super::vhdx::Files::new(transport, from_host);
    let (written, arrived, failed) = files.scope(|files| {
        let chain = match super::vhdx::chain(files, from) {
            Ok(Some(c)) => c,
            Ok(None) => {
                return (
                    Ok(()),
                    0,
                    Some(format!("`{from}` is no longer a differencing VHDX")),
                )
            }
            Err(why) => return (Ok(()), 0, Some(why)),
        };
        let mut tell = |n| throttle.tell(n, total);
        let mut input = Counted::new(chain.reader, &mut tell);
        let w = write_sparse(transport, to_host, to, &mut input, bytes);
        (w, input.count, input.failed.map(|e| e.to_string()))
    });
    let shown = format!("`{from}` on host {from_host}");
    if let Some(why) = failed {
        return Err(BackendError::new(format!(
            "cannot read the chain of {shown}: {why}; nothing was imported"
        )));
    }
    written.map_err(|e| BackendError::from(e).context(&format!("cannot write `{to}`")))?;
    if arrived != bytes {
        return Err(BackendError::new(format!(
            "{shown}: {arrived} of its {bytes} bytes arrived; nothing was imported"
        )));
    }
    Ok(())
}

/// Writes what `input` yields into a sparse file `to` on `to_host` (`dd conv=sparse`): the
/// receiving end of a copy from another host or of a flattened chain, of `bytes` in all.
fn write_sparse(
    transport: &dyn Transport,
    to_host: &str,
    to: &str,
    input: &mut (dyn Read + Send),
    bytes: u64,
) -> Result<(), CommandError> {
    let write_argv = argv(&[
        "dd",
        &format!("of={to}"),
        "bs=1M",
        "iflag=fullblock",
        "conv=sparse",
        "status=none",
    ]);
    transport
        .run_streaming(
            to_host,
            &write_argv,
            Some(input),
            &mut |_| Ok(()),
            allowance(bytes),
        )
        .map(drop)
}

/// A reader that counts what it hands out, and keeps the error that ended it.
struct Counted<'a, R> {
    inner: R,
    count: u64,
    failed: Option<std::io::Error>,
    on: &'a mut (dyn FnMut(u64) + Send),
}

impl<'a, R> Counted<'a, R> {
    fn new(inner: R, on: &'a mut (dyn FnMut(u64) + Send)) -> Counted<'a, R> {
        Counted {
            inner,
            count: 0,
            failed: None,
            on,
        }
    }
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.count += n as u64;
                (self.on)(self.count);
                Ok(n)
            }
            Err(e) => {
                let shown = std::io::Error::new(e.kind(), e.to_string());
                self.failed = Some(e);
                Err(shown)
            }
        }
    }
}

/// A reader over chunks from a channel (its end is the channel's).
struct Chunks {
    rx: mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.recv() {
                Ok(c) => {
                    self.chunk = c;
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Observes an imported image: gone, or its size and time; its checksum when `t.deep`, or
/// when only its time moved (a `touch`, a restore from backup): then the bytes tell whether
/// it changed, so a new time alone never rebuilds the tree.
pub fn read(
    transport: &dyn Transport,
    t: Target<'_>,
    recorded: &Observed,
) -> Result<Option<Observed>, BackendError> {
    let Desired::Image(a) = t.desired else {
        unreachable!("image attributes")
    };
    let host = &*t.addr.host;
    let Some((bytes, mtime)) = stat(transport, host, &a.path)? else {
        return Ok(None);
    };
    let mut o = Observed::new();
    o.insert("path".into(), a.path.clone().into());
    o.insert("bytes".into(), bytes.into());
    let same_size = recorded.get("bytes").and_then(Value::as_u64) == Some(bytes);
    let moved = recorded.get("mtime").and_then(Value::as_str) != Some(mtime.as_str());
    o.insert("mtime".into(), mtime.into());
    if t.deep || (same_size && moved) {
        o.insert(
            "sha256".into(),
            sha256(transport, host, &a.path, allowance(bytes))?.into(),
        );
    }
    Ok(Some(o))
}

/// Removes what an import made: the record, what an interrupted import left beside the image,
/// and the image file, but only when the record says vmthunder wrote it there (a file a create
/// refused to overwrite stays) and the spec does not now give that file as the image itself
/// (`import` dropped: the imported file is kept as the image).
pub fn delete(
    imports: &Imports,
    transport: &dyn Transport,
    t: Target<'_>,
) -> Result<(), BackendError> {
    let Desired::Image(a) = t.desired else {
        unreachable!("image attributes")
    };
    let host = &*t.addr.host;
    let record = imports.record(host, &t.addr.image);
    let ours = recorded(transport, host, &record, a)?.is_some();
    let given = imports.given.contains(&(host.to_string(), a.path.clone()));
    let mut files: Vec<PathBuf> = vec![part(&a.path).into(), staged(&a.path).into()];
    if ours && !given {
        files.push(a.path.clone().into());
    }
    files.push(record);
    for f in &files {
        transport
            .remove_file(host, f)
            .map_err(|e| BackendError::io("cannot remove", host, f, e))?;
    }
    Ok(())
}

/// The attributes of the `image` resource of an image with `import`.
pub fn attrs(image: &crate::spec::Image) -> Option<ImageAttrs> {
    let i = image.import.as_ref()?;
    Some(ImageAttrs {
        from: i.from.clone(),
        source_format: i.format,
        from_host: i.from_host.clone().filter(|h| *h != image.source_host),
        path: image.path.clone(),
        format: image.format,
        size: image.size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_last_percentage_qemu_img_prints() {
        assert_eq!(percent(b"    (0.00/100%)\r    (42.02/100%)\r"), Some(42.02));
        assert_eq!(percent(b"    (100.00/100%)\n"), Some(100.0));
        assert_eq!(percent(b"nothing here"), None);
    }

    #[test]
    fn a_copy_may_take_ten_minutes_and_a_second_per_4_mib() {
        assert_eq!(allowance(0), Duration::from_secs(600));
        assert_eq!(allowance(40 << 30), Duration::from_secs(600 + 10 * 1024));
    }
}
