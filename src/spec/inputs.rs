//! Files a spec names that vmthunder itself reads when it loads the spec: cloud-init user
//! data and SSH public keys. (Image files and kernels are read on the hosts instead.)
//!
//! Read once, here, so that an unreadable or wrong file is an error at its JSON path before
//! anything is planned, and so that the plan (and a saved plan's check) sees their contents.

use std::path::Path;

use super::decode::Diagnostics;
use super::Spec;

/// User data at the most: a seed is a small ISO written on every host for every clone.
pub const MAX_USER_DATA: usize = 1 << 20;
/// A public key file at the most.
const MAX_KEY_FILE: usize = 64 << 10;

/// The contents of the files `clones` names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// `clones.cloud_init.user_data`'s text.
    pub user_data: Option<String>,
    /// Every public key line of `clones.ssh_authorized_keys`, in order.
    pub keys: Vec<String>,
}

pub(crate) fn load(spec: &mut Spec, diags: &mut Diagnostics) {
    let c = &spec.clones;
    let mut loaded = Loaded::default();
    if let Some(path) = c.cloud_init.as_ref().and_then(|ci| ci.user_data.as_ref()) {
        let at = "/clones/cloud_init/user_data";
        match read(path, MAX_USER_DATA) {
            Ok(text) if text.trim().is_empty() => diags.push(
                at,
                format!("`{path}` is empty; leave user_data out instead"),
            ),
            Ok(text) => loaded.user_data = Some(text),
            Err(m) => diags.push(at, m),
        }
    }
    for (i, path) in c.ssh_authorized_keys.iter().enumerate() {
        let at = format!("/clones/ssh_authorized_keys/{i}");
        match read(path, MAX_KEY_FILE) {
            Ok(text) => match keys(&text) {
                Ok(found) if found.is_empty() => {
                    diags.push(at, format!("`{path}` holds no public key"))
                }
                Ok(found) => loaded.keys.extend(found),
                Err(m) => diags.push(at, format!("`{path}`: {m}")),
            },
            Err(m) => diags.push(at, m),
        }
    }
    spec.clones.loaded = loaded;
}

fn read(path: &str, max: usize) -> Result<String, String> {
    let bytes = crate::text::read_regular(Path::new(path))
        .map_err(|e| format!("cannot read `{path}`: {e}"))?;
    if bytes.len() > max {
        return Err(format!(
            "`{path}` has {} bytes; at most {max} are taken",
            bytes.len()
        ));
    }
    String::from_utf8(bytes).map_err(|_| format!("`{path}` is not UTF-8 text"))
}

/// The public keys in an `authorized_keys`-style text: one per line, comments and blank lines
/// skipped. A private key is refused, so it never reaches a seed.
fn keys(text: &str) -> Result<Vec<String>, String> {
    if text.contains("PRIVATE KEY") {
        return Err("this is a private key; give its public half (the `.pub` file)".into());
    }
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let kind = line.split_whitespace().next().unwrap_or("");
        let known = kind.starts_with("ssh-")
            || kind.starts_with("ecdsa-sha2-")
            || kind.starts_with("sk-ssh-")
            || kind.starts_with("sk-ecdsa-");
        if !known || line.split_whitespace().count() < 2 {
            return Err(format!(
                "line {} is not an SSH public key (expected \"ssh-ed25519 AAAA... comment\")",
                n + 1
            ));
        }
        out.push(line.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_give_their_public_keys_and_refuse_private_ones() {
        let k = keys("# mine\nssh-ed25519 AAAAC3Nz a@b\n\necdsa-sha2-nistp256 AAAA x\n").unwrap();
        assert_eq!(k.len(), 2);
        assert!(keys("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n")
            .unwrap_err()
            .contains("public half"));
        assert!(keys("hello world\n").unwrap_err().contains("line 1"));
    }
}
