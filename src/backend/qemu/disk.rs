//! `lv`s (sparse files of the requested size) and `snapshot`s (qcow2 overlays written into a
//! clone's cow `lv`, backed by the host relay's `local` export of its cache).

use std::path::PathBuf;

use serde_json::Value;

use super::{args, QemuStack, COMMAND_TIMEOUT};
use crate::backend::{dep_attr, dep_value, BackendError, Observed, Target};
use crate::resource::{Addr, Desired, Kind, LvPurpose};

fn lv_path(stack: &QemuStack, addr: &Addr, purpose: LvPurpose) -> PathBuf {
    let dir = stack.dir(&addr.host, &addr.image);
    match (purpose, addr.n) {
        (LvPurpose::Cow, Some(n)) => dir.join(format!("lv-cow-{n}.img")),
        (LvPurpose::Cow, None) => dir.join("lv-cow.img"),
        (LvPurpose::Cache, _) => dir.join("lv-cache.img"),
    }
}

fn lv_of(t: Target<'_>) -> (LvPurpose, u64) {
    match t.desired {
        Desired::Lv(a) => (a.purpose, a.size.0),
        _ => unreachable!("lv attributes"),
    }
}

fn lv_observed(path: &std::path::Path, size: u64) -> Observed {
    let mut o = Observed::new();
    o.insert("path".into(), path.display().to_string().into());
    o.insert("size".into(), size.into());
    o
}

pub(super) fn read_lv(stack: &QemuStack, t: Target<'_>) -> Result<Option<Observed>, BackendError> {
    let (purpose, size) = lv_of(t);
    let path = lv_path(stack, t.addr, purpose);
    match stack.transport.file_len(&t.addr.host, &path) {
        Ok(Some(_)) => Ok(Some(lv_observed(&path, size))),
        Ok(None) => Ok(None),
        Err(e) => Err(stack.io_error("cannot inspect", &t.addr.host, &path, e)),
    }
}

pub(super) fn create_lv(stack: &QemuStack, t: Target<'_>) -> Result<Observed, BackendError> {
    let (purpose, size) = lv_of(t);
    let host = &*t.addr.host;
    let path = lv_path(stack, t.addr, purpose);
    let tr = &stack.transport;
    let dir = path.parent().expect("lv dir");
    tr.create_dir_all(host, dir)
        .map_err(|e| stack.io_error("cannot create", host, dir, e))?;
    // An existing file is adopted as it is: a cache or snapshot may already live in it. A
    // zero-length one is what a killed create leaves.
    let existing = tr
        .file_len(host, &path)
        .map_err(|e| stack.io_error("cannot inspect", host, &path, e))?;
    if existing.unwrap_or(0) == 0 {
        tr.set_len(host, &path, size, false)
            .map_err(|e| stack.io_error("cannot create", host, &path, e))?;
    }
    Ok(lv_observed(&path, size))
}

pub(super) fn delete_lv(stack: &QemuStack, t: Target<'_>) -> Result<(), BackendError> {
    let (purpose, _) = lv_of(t);
    let path = lv_path(stack, t.addr, purpose);
    stack
        .transport
        .remove_file(&t.addr.host, &path)
        .map_err(|e| stack.io_error("cannot remove", &t.addr.host, &path, e))
}

/// `qemu-img info` of a file, without opening its backing chain; `None` if unreadable. An
/// error only when the host could not be asked.
pub(super) fn info(
    stack: &QemuStack,
    host: &str,
    path: &str,
) -> Result<Option<Value>, BackendError> {
    match stack.transport.run(
        host,
        &args(&["qemu-img", "info", "-U", "--output=json", path]),
        COMMAND_TIMEOUT,
    ) {
        Ok(out) => Ok(serde_json::from_slice(&out.stdout).ok()),
        Err(e) if e.unreachable => Err(e.into()),
        Err(_) => Ok(None),
    }
}

fn snapshot_path(stack: &QemuStack, addr: &Addr) -> PathBuf {
    lv_path(stack, addr, LvPurpose::Cow)
}

pub(super) fn read_snapshot(
    stack: &QemuStack,
    t: Target<'_>,
    observed: &Observed,
) -> Result<Option<Observed>, BackendError> {
    let path = snapshot_path(stack, t.addr);
    let Some(i) = info(stack, &t.addr.host, &path.to_string_lossy())? else {
        return Ok(None);
    };
    let backing = observed.get("backing").and_then(Value::as_str);
    let ok =
        i["format"] == "qcow2" && (backing.is_none() || i["backing-filename"].as_str() == backing);
    Ok(ok.then(|| observed.clone()))
}

pub(super) fn create_snapshot(
    stack: &QemuStack,
    t: Target<'_>,
    deps: &[(Addr, Observed)],
) -> Result<Observed, BackendError> {
    let host = &*t.addr.host;
    let lv = dep_attr(deps, Kind::Lv, "path")?.to_string();
    let lv_size = dep_value(deps, Kind::Lv, "size")
        .cloned()
        .unwrap_or(Value::Null);
    let backing = dep_attr(deps, Kind::Cache, "uri")?.to_string();
    let adopt = info(stack, host, &lv)?.is_some_and(|i| {
        i["format"] == "qcow2" && i["backing-filename"].as_str() == Some(backing.as_str())
    });
    // With TLS the backing names the credentials the host's own certificate is loaded as.
    let tls_dir = dep_value(deps, Kind::Cache, "tls_dir").and_then(Value::as_str);
    if !adopt {
        let mut argv = args(&["qemu-img", "create", "-q", "-f", "qcow2"]);
        if let Some(dir) = tls_dir {
            argv.extend(args(&["--object", &super::relay::client_creds_arg(dir)]));
        }
        argv.extend(args(&["-b", &backing, "-F", "raw", &lv]));
        stack.transport.run(host, &argv, COMMAND_TIMEOUT)?;
    }
    let mut o = Observed::new();
    o.insert("path".into(), lv.into());
    o.insert("backing".into(), backing.into());
    o.insert("lv_size".into(), lv_size);
    if let Some(dir) = tls_dir {
        o.insert("tls_dir".into(), dir.into());
    }
    Ok(o)
}

/// Keeps a clone's disk over its host's rebuilt cache: the overlay is left exactly as it is
/// (it holds the clone's writes); it must still be backed by the cache's export.
pub(super) fn update_snapshot(
    stack: &QemuStack,
    t: Target<'_>,
    observed: &Observed,
    deps: &[(Addr, Observed)],
) -> Result<Observed, BackendError> {
    let host = &*t.addr.host;
    let path = snapshot_path(stack, t.addr);
    let backing = dep_attr(deps, Kind::Cache, "uri")?;
    let i = info(stack, host, &path.to_string_lossy())?;
    let fits = i
        .as_ref()
        .is_some_and(|i| i["format"] == "qcow2" && i["backing-filename"].as_str() == Some(backing));
    if !fits {
        return Err(BackendError::new(format!(
            "on host {host}: the disk of {} (`{}`) is not a qcow2 overlay of {backing}; it was left untouched (it holds the clone's writes): inspect it, then `vmthunder apply --replace {}` to start the clone afresh",
            t.addr,
            path.display(),
            t.addr
        )));
    }
    let mut o = observed.clone();
    o.insert("backing".into(), backing.into());
    Ok(o)
}

pub(super) fn delete_snapshot(
    stack: &QemuStack,
    t: Target<'_>,
    observed: &Observed,
) -> Result<(), BackendError> {
    let host = &*t.addr.host;
    let path = snapshot_path(stack, t.addr);
    let tr = &stack.transport;
    // The clone's writes go; the lv stays, as plain space of its size.
    if tr
        .file_len(host, &path)
        .map_err(|e| stack.io_error("cannot inspect", host, &path, e))?
        .is_some()
    {
        let len = observed.get("lv_size").and_then(Value::as_u64).unwrap_or(0);
        tr.set_len(host, &path, len, true)
            .map_err(|e| stack.io_error("cannot reset", host, &path, e))?;
    }
    Ok(())
}

/// Removes lv files that state does not record (left by a run killed between creating one
/// and recording it).
pub(super) fn sweep(
    stack: &QemuStack,
    host: &str,
    image: &str,
    recorded: &[&Addr],
    names: &[String],
) -> Result<(), BackendError> {
    super::sweep_files(stack, host, image, recorded, names, Kind::Lv, |name| {
        if name == "lv-cache.img" {
            Some(None)
        } else {
            super::numbered(name, "lv-cow-", ".img").map(Some)
        }
    });
    Ok(())
}
