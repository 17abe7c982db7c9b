//! cloud-init NoCloud seeds on a host: the three documents packed into an ISO 9660 image
//! labelled `cidata` by genisoimage (Debian's `genisoimage`), which cloud-init's NoCloud
//! datasource finds on any attached disk. Shared by the stacks; each chooses the path.

use std::path::Path;
use std::time::Duration;

use super::{BackendError, Observed, Transport};
use crate::resource::SeedAttrs;

const TIMEOUT: Duration = Duration::from_secs(120);

fn io_error(what: &str, host: &str, path: &Path, e: std::io::Error) -> BackendError {
    BackendError::io(what, host, path, e)
}

fn observed(path: &Path, len: u64) -> Observed {
    let mut o = Observed::new();
    o.insert("path".into(), path.display().to_string().into());
    o.insert("bytes".into(), len.into());
    o
}

pub fn read(t: &dyn Transport, host: &str, path: &Path) -> Result<Option<Observed>, BackendError> {
    match t.file_len(host, path) {
        Ok(Some(len)) => Ok(Some(observed(path, len))),
        Ok(None) => Ok(None),
        Err(e) => Err(io_error("cannot inspect", host, path, e)),
    }
}

/// Writes the documents into a private directory beside the seed (never on a command line:
/// user data may hold secrets), packs them, and renames the image into place. A seed that
/// exists is made again: a create is asked for only when it is missing or its documents
/// changed.
pub fn create(
    t: &dyn Transport,
    host: &str,
    path: &Path,
    s: &SeedAttrs,
) -> Result<Observed, BackendError> {
    let dir = path.parent().expect("a seed lives in a directory");
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let staging = dir.join(format!("{stem}.d"));
    t.create_dir_all(host, &staging)
        .map_err(|e| io_error("cannot create", host, &staging, e))?;
    let mut docs = vec![
        ("meta-data", s.meta_data.as_str()),
        ("user-data", s.user_data.as_str()),
    ];
    if let Some(n) = &s.network_config {
        docs.push(("network-config", n.as_str()));
    }
    let tmp = path.with_extension("iso.tmp");
    let mut argv: Vec<String> = ["genisoimage", "-quiet", "-output"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    argv.push(tmp.to_string_lossy().into_owned());
    argv.extend(
        ["-volid", "cidata", "-joliet", "-rock"]
            .iter()
            .map(|a| a.to_string()),
    );
    let mut written = Ok(());
    for (name, text) in &docs {
        let f = staging.join(name);
        if let Err(e) = t.write_file(host, &f, text.as_bytes()) {
            written = Err(io_error("cannot write", host, &f, e));
            break;
        }
        argv.push(f.to_string_lossy().into_owned());
    }
    let made = written.and_then(|()| t.run(host, &argv, TIMEOUT).map_err(BackendError::from));
    for (name, _) in &docs {
        let _ = t.remove_file(host, &staging.join(name));
    }
    let _ = t.remove_dir_if_empty(host, &staging);
    made?;
    let mv: Vec<String> = [
        "mv",
        "-f",
        "--",
        &tmp.to_string_lossy(),
        &path.to_string_lossy(),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    t.run(host, &mv, TIMEOUT)?;
    read(t, host, path)?.ok_or_else(|| {
        BackendError::new(format!(
            "on host {host}: seed `{}` was made but is not there",
            path.display()
        ))
    })
}

pub fn delete(t: &dyn Transport, host: &str, path: &Path) -> Result<(), BackendError> {
    for f in [path.to_path_buf(), path.with_extension("iso.tmp")] {
        t.remove_file(host, &f)
            .map_err(|e| io_error("cannot remove", host, &f, e))?;
    }
    Ok(())
}
