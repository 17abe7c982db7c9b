//! The TLS material of the image tree, for every stack: the cluster CA (`ca.<cluster>.tls`),
//! which lives in state only, and each host's key and certificate (`cert.<host>.tls`), written
//! to a directory only root can read on the host, in the layout QEMU's `tls-creds-x509` reads
//! (the same key and certificate serve as server and as client).
//!
//! Both keys are observed attributes named `private_key`: sealed in state when the state has a
//! key, masked wherever attributes are shown. A certificate whose files vanished or were
//! replaced on the host reads as gone, so the next apply issues it again.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{BackendError, Observed, Target, Transport};
use crate::pki;
use crate::resource::{Addr, Desired, Kind};

/// The directory of a host's TLS files under the cluster's directory on it. No image is
/// named so (image names start with a letter or digit).
pub const DIR: &str = ".tls";

/// The files of a host's directory: (name, which of the two PEMs it holds).
const FILES: [(&str, Pem); 5] = [
    ("ca-cert.pem", Pem::Ca),
    ("server-cert.pem", Pem::Cert),
    ("server-key.pem", Pem::Key),
    ("client-cert.pem", Pem::Cert),
    ("client-key.pem", Pem::Key),
];

#[derive(Clone, Copy)]
enum Pem {
    Ca,
    Cert,
    Key,
}

/// `<cluster dir>/<host>/.tls`: where `host`'s TLS files are, on it.
pub fn dir(base: &Path, host: &str) -> PathBuf {
    base.join(host).join(DIR)
}

fn pki_error(addr: &Addr, e: pki::PkiError) -> BackendError {
    BackendError::new(format!("{addr}: {e}"))
}

fn text<'o>(o: &'o Observed, key: &str) -> Option<&'o str> {
    o.get(key).and_then(Value::as_str)
}

pub fn create(
    t: &dyn Transport,
    base: &Path,
    target: Target<'_>,
    deps: &[(Addr, Observed)],
) -> Result<Observed, BackendError> {
    match target.desired {
        Desired::Ca(ca) => {
            let made =
                pki::new_ca(&target.addr.host, ca.days).map_err(|e| pki_error(target.addr, e))?;
            let mut o = described(target.addr, &made.cert_pem)?;
            o.insert("private_key".into(), made.key_pem.into());
            Ok(o)
        }
        Desired::Cert(c) => {
            let (_, ca) = deps
                .iter()
                .find(|(a, _)| a.kind == Kind::Ca)
                .ok_or_else(|| {
                    BackendError::new(format!("internal error: {} has no CA", target.addr))
                })?;
            let ca = pki::Ca {
                cert_pem: text(ca, "cert").unwrap_or_default().to_string(),
                key_pem: text(ca, "private_key").unwrap_or_default().to_string(),
            };
            let host = &*target.addr.host;
            let issued =
                pki::issue(&ca, host, &c.address, c.days).map_err(|e| pki_error(target.addr, e))?;
            let dir = dir(base, host);
            make_private_dir(t, host, &dir)?;
            for (name, pem) in FILES {
                let contents = match pem {
                    Pem::Ca => &ca.cert_pem,
                    Pem::Cert => &issued.cert_pem,
                    Pem::Key => &issued.key_pem,
                };
                let path = dir.join(name);
                t.write_file(host, &path, contents.as_bytes())
                    .map_err(|e| BackendError::io("cannot write", host, &path, e))?;
            }
            let mut o = described(target.addr, &issued.cert_pem)?;
            o.insert("private_key".into(), issued.key_pem.into());
            o.insert(
                "ca_fingerprint".into(),
                pki::fingerprint(&ca.cert_pem)
                    .map_err(|e| pki_error(target.addr, e))?
                    .into(),
            );
            o.insert("dir".into(), dir.display().to_string().into());
            Ok(o)
        }
        _ => unreachable!("TLS kinds only"),
    }
}

/// The certificate, its fingerprint and when it expires.
fn described(addr: &Addr, cert: &str) -> Result<Observed, BackendError> {
    let mut o = Observed::new();
    o.insert("cert".into(), cert.into());
    o.insert(
        "fingerprint".into(),
        pki::fingerprint(cert)
            .map_err(|e| pki_error(addr, e))?
            .into(),
    );
    o.insert(
        "not_after".into(),
        pki::not_after(cert).map_err(|e| pki_error(addr, e))?.into(),
    );
    Ok(o)
}

/// Makes `dir` with mode 0700 (and its parents).
fn make_private_dir(t: &dyn Transport, host: &str, dir: &Path) -> Result<(), BackendError> {
    let argv: Vec<String> = [
        "sh",
        "-c",
        r#"umask 077 && mkdir -p -- "$1" && chmod 700 -- "$1""#,
        "sh",
        &dir.to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    t.run(host, &argv, std::time::Duration::from_secs(60))?;
    Ok(())
}

pub fn read(
    t: &dyn Transport,
    base: &Path,
    target: Target<'_>,
    observed: &Observed,
) -> Result<Option<Observed>, BackendError> {
    match target.addr.kind {
        // Nothing of it is on a host: it is what state holds.
        Kind::Ca => Ok((text(observed, "cert").is_some()
            && text(observed, "private_key").is_some())
        .then(|| observed.clone())),
        Kind::Cert => {
            let host = &*target.addr.host;
            let dir = dir(base, host);
            let (Some(cert), Some(key)) = (text(observed, "cert"), text(observed, "private_key"))
            else {
                return Ok(None);
            };
            for (name, pem) in FILES {
                let path = dir.join(name);
                let found = t
                    .read_file(host, &path)
                    .map_err(|e| BackendError::io("cannot read", host, &path, e))?;
                let Some(found) = found else {
                    return Ok(None);
                };
                let same = match pem {
                    Pem::Ca => {
                        pki::fingerprint(&String::from_utf8_lossy(&found))
                            .ok()
                            .as_deref()
                            == text(observed, "ca_fingerprint")
                    }
                    Pem::Cert => found == cert.as_bytes(),
                    Pem::Key => found == key.as_bytes(),
                };
                if !same {
                    tracing::info!(host, file = %path.display(), "a TLS file differs from what state records");
                    return Ok(None);
                }
            }
            Ok(Some(observed.clone()))
        }
        _ => unreachable!("TLS kinds only"),
    }
}

pub fn delete(t: &dyn Transport, base: &Path, target: Target<'_>) -> Result<(), BackendError> {
    if target.addr.kind == Kind::Ca {
        return Ok(());
    }
    let host = &*target.addr.host;
    let dir = dir(base, host);
    for (name, _) in FILES {
        let path = dir.join(name);
        t.remove_file(host, &path)
            .map_err(|e| BackendError::io("cannot remove", host, &path, e))?;
    }
    t.remove_dir_if_empty(host, &dir)
        .map_err(|e| BackendError::io("cannot remove", host, &dir, e))?;
    Ok(())
}
