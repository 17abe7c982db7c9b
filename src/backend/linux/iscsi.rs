//! `session`: an open-iscsi login to the parent's target, with a CHAP account of its own.
//!
//! Create: read this host's initiator name; on the parent, under its target lock, make a
//! fresh CHAP account for this child and bind it and the initiator name to the target; here,
//! discover the target, store the CHAP settings in the node record, log in, wait for udev's
//! `/dev/disk/by-path` link. The secret is generated here, recorded in state (mode 0600) and
//! never printed: commands that carry it are shown with it masked.
//! Delete: log out, drop the node record, then unbind and delete the account on the parent.

use std::io::Read;

use super::names::{by_path, chap_user, TGT_LUN};
use super::{args, exit_code, LinuxStack};
use crate::backend::{dep_attr, dep_value, BackendError, Observed, Target};
use crate::resource::{Addr, Desired, Kind};
use crate::spec::IscsiTarget;

/// A child host as its parent's target admits it: by initiator name and CHAP account.
pub struct Child<'a> {
    pub iqn: &'a str,
    pub initiator: &'a str,
    pub user: &'a str,
    pub secret: &'a str,
}

/// Where open-iscsi keeps the host's initiator name.
pub const INITIATOR_FILE: &str = "/etc/iscsi/initiatorname.iscsi";
/// `iscsiadm` exit status: no session / no record found.
pub const NO_OBJS_FOUND: i32 = 21;
/// `iscsiadm` exit status: already logged in.
pub const SESS_EXISTS: i32 = 15;

/// The `InitiatorName=` of an initiatorname.iscsi file.
pub fn parse_initiator_name(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix("InitiatorName="))
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
}

/// One line of `iscsiadm -m session`: (portal, IQN), e.g.
/// `tcp: [1] 10.0.0.10:3260,1 iqn.2014-12.org.vmthunder:c.base.1 (non-flash)`.
pub fn parse_sessions(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            f.next()?; // transport
            f.next()?; // [sid]
            let portal = f.next()?.split(',').next()?.to_string();
            let iqn = f.next()?.to_string();
            Some((portal, iqn))
        })
        .collect()
}

/// The targets `iscsiadm -m discovery` found: (portal, IQN), from `10.0.0.10:3260,1 IQN`.
pub fn parse_discovery(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let (portal, iqn) = l.trim().split_once(' ')?;
            Some((
                portal.split(',').next()?.to_string(),
                iqn.trim().to_string(),
            ))
        })
        .collect()
}

pub fn discovery_argv(portal: &str) -> Vec<String> {
    args(&[
        "iscsiadm",
        "-m",
        "discovery",
        "-t",
        "sendtargets",
        "-p",
        portal,
    ])
}

fn node(iqn: &str, portal: &str, rest: &[&str]) -> Vec<String> {
    ["iscsiadm", "-m", "node", "-T", iqn, "-p", portal]
        .iter()
        .chain(rest)
        .map(|s| s.to_string())
        .collect()
}

pub fn node_update_argv(iqn: &str, portal: &str, key: &str, value: &str) -> Vec<String> {
    node(iqn, portal, &["-o", "update", "-n", key, "-v", value])
}

pub fn login_argv(iqn: &str, portal: &str) -> Vec<String> {
    node(iqn, portal, &["--login"])
}

pub fn logout_argv(iqn: &str, portal: &str) -> Vec<String> {
    node(iqn, portal, &["--logout"])
}

pub fn node_delete_argv(iqn: &str, portal: &str) -> Vec<String> {
    node(iqn, portal, &["-o", "delete"])
}

pub fn sessions_argv() -> Vec<String> {
    args(&["iscsiadm", "-m", "session"])
}

/// Waits (up to 30 s) for udev to make `link`, then prints the device it points to.
pub fn wait_link_argv(link: &str) -> Vec<String> {
    args(&[
        "sh",
        "-c",
        r#"udevadm settle -t 30 || true; i=0; while [ ! -e "$1" ]; do i=$((i+1)); [ $i -le 300 ] || { echo "no $1 after 30 s" >&2; exit 1; }; sleep 0.1; done; readlink -f -- "$1""#,
        "sh",
        link,
    ])
}

/// A fresh CHAP secret: 24 hexadecimal digits from this machine's random source (tgt and
/// open-iscsi take 12-16 bytes and more; some initiators want at most 16 characters
/// more, none fewer than 12).
fn new_secret() -> Result<String, BackendError> {
    let mut b = [0u8; 12];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| BackendError::new(format!("cannot read /dev/urandom: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

impl LinuxStack {
    /// A host's iSCSI initiator name.
    pub(super) fn initiator_name(&self, host: &str) -> Result<String, BackendError> {
        let text = self.run(
            host,
            &args(&[
                "sh",
                "-c",
                r#"[ ! -e "$1" ] || cat -- "$1""#,
                "sh",
                INITIATOR_FILE,
            ]),
        )?;
        parse_initiator_name(&text).ok_or_else(|| {
            BackendError::new(format!(
                "host {host} has no iSCSI initiator name in {INITIATOR_FILE}: install open-iscsi there (its set-up writes one), or write InitiatorName=iqn.... with a name of this host's own"
            ))
        })
    }

    fn sessions(&self, host: &str) -> Result<Vec<(String, String)>, BackendError> {
        match self.attempt(host, &sessions_argv())? {
            Ok(out) => Ok(parse_sessions(&out)),
            Err(e) if exit_code(&e) == Some(NO_OBJS_FOUND) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The LUN the parent's target exports the image as (tgt: 1, LIO: 0).
fn lun_of(deps: &[(Addr, Observed)]) -> u32 {
    dep_value(deps, Kind::Target, "lun")
        .and_then(|v| v.as_u64())
        .map_or(TGT_LUN, |n| n as u32)
}

fn parent_of(t: Target<'_>) -> &str {
    match t.desired {
        Desired::Session(s) => &s.parent,
        _ => unreachable!("session attributes"),
    }
}

fn text<'a>(o: &'a Observed, key: &str) -> Option<&'a str> {
    o.get(key).and_then(|v| v.as_str())
}

pub(super) fn read(
    stack: &LinuxStack,
    t: Target<'_>,
    recorded: &Observed,
) -> Result<Option<Observed>, BackendError> {
    let (Some(iqn), Some(portal)) = (text(recorded, "iqn"), text(recorded, "portal")) else {
        return Ok(None);
    };
    let host = &*t.addr.host;
    if !stack
        .sessions(host)?
        .iter()
        .any(|(p, i)| p == portal && i == iqn)
    {
        return Ok(None);
    }
    let mut o = recorded.clone();
    let Some(link) = text(recorded, "device") else {
        return Ok(None);
    };
    let dev = stack.run(
        host,
        &args(&["sh", "-c", r#"readlink -f -- "$1" || true"#, "sh", link]),
    )?;
    o.insert("disk".into(), dev.trim().into());
    Ok(Some(o))
}

pub(super) fn create(
    stack: &LinuxStack,
    t: Target<'_>,
    deps: &[(Addr, Observed)],
) -> Result<Observed, BackendError> {
    let host = &*t.addr.host;
    let parent = parent_of(t);
    let iqn = dep_attr(deps, Kind::Target, "iqn")?.to_string();
    let portal = dep_attr(deps, Kind::Target, "portal")?.to_string();
    let initiator = stack.initiator_name(host)?;
    let user = chap_user(&stack.cluster, &t.addr.image, host);
    let secret = new_secret()?;

    // A login left by an interrupted create is dropped: its secret is not known any more.
    if stack
        .sessions(host)?
        .iter()
        .any(|(p, i)| *p == portal && *i == iqn)
    {
        let _ = stack.attempt(host, &logout_argv(&iqn, &portal))?;
    }

    // The parent admits this child: its initiator name and a fresh account.
    let child = Child {
        iqn: &iqn,
        initiator: &initiator,
        user: &user,
        secret: &secret,
    };
    {
        let lock = stack.tgt_lock(parent);
        let _held = super::hold(&lock);
        let admitted = match stack.iscsi_target {
            IscsiTarget::Tgt => super::tgt::admit(stack, parent, &child)?,
            IscsiTarget::Lio => super::lio::admit(stack, parent, &child)?,
        };
        if !admitted {
            return Err(BackendError::new(format!(
                "{}: the parent's target {iqn} is not on host {parent}; apply again to recreate it",
                t.addr
            )));
        }
    }

    let found = parse_discovery(&stack.run(host, &discovery_argv(&portal))?);
    if !found.iter().any(|(_, i)| *i == iqn) {
        return Err(BackendError::new(format!(
            "{}: discovery at {portal} (host {parent}) does not list {iqn}; it lists {:?}",
            t.addr,
            found.iter().map(|(_, i)| i).collect::<Vec<_>>()
        )));
    }
    for (key, value) in [
        ("node.startup", "manual"),
        ("node.session.auth.authmethod", "CHAP"),
        ("node.session.auth.username", user.as_str()),
    ] {
        stack.run(host, &node_update_argv(&iqn, &portal, key, value))?;
    }
    stack.run_secret(
        host,
        &node_update_argv(&iqn, &portal, "node.session.auth.password", &secret),
        &secret,
    )?;
    match stack.attempt(host, &login_argv(&iqn, &portal))? {
        Ok(_) => {}
        Err(e) if exit_code(&e) == Some(SESS_EXISTS) => {}
        Err(e) => {
            return Err(BackendError::from(e).context(&format!(
                "{}: login to {iqn} at {portal} (host {parent}) as {initiator} failed",
                t.addr
            )))
        }
    }
    let link = by_path(&portal, &iqn, lun_of(deps));
    let disk = stack.run(host, &wait_link_argv(&link))?;

    let mut o = Observed::new();
    o.insert("iqn".into(), iqn.into());
    o.insert("portal".into(), portal.into());
    o.insert("initiator".into(), initiator.into());
    o.insert("chap_user".into(), user.into());
    o.insert("chap_secret".into(), secret.into());
    o.insert("device".into(), link.into());
    o.insert("disk".into(), disk.trim().into());
    Ok(o)
}

pub(super) fn delete(
    stack: &LinuxStack,
    t: Target<'_>,
    recorded: &Observed,
) -> Result<(), BackendError> {
    let (Some(iqn), Some(portal)) = (text(recorded, "iqn"), text(recorded, "portal")) else {
        return Ok(());
    };
    let host = &*t.addr.host;
    for argv in [logout_argv(iqn, portal), node_delete_argv(iqn, portal)] {
        match stack.attempt(host, &argv)? {
            Ok(_) => {}
            Err(e) if exit_code(&e) == Some(NO_OBJS_FOUND) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // The parent stops admitting this child. Its target may be gone already (it goes with
    // its accounts), or its host may be down: the login is what mattered.
    let parent = parent_of(t);
    let (Some(user), Some(initiator)) = (text(recorded, "chap_user"), text(recorded, "initiator"))
    else {
        return Ok(());
    };
    let child = Child {
        iqn,
        initiator,
        user,
        secret: "",
    };
    let lock = stack.tgt_lock(parent);
    let _held = super::hold(&lock);
    let _ = match stack.iscsi_target {
        IscsiTarget::Tgt => super::tgt::dismiss(stack, parent, &child),
        IscsiTarget::Lio => super::lio::dismiss(stack, parent, &child),
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders() {
        assert_eq!(
            node_update_argv("iqn.x:y", "10.0.0.1:3260", "node.startup", "manual").join(" "),
            "iscsiadm -m node -T iqn.x:y -p 10.0.0.1:3260 -o update -n node.startup -v manual"
        );
        assert_eq!(
            login_argv("iqn.x:y", "10.0.0.1:3260").join(" "),
            "iscsiadm -m node -T iqn.x:y -p 10.0.0.1:3260 --login"
        );
        assert_eq!(
            discovery_argv("10.0.0.1:3260").join(" "),
            "iscsiadm -m discovery -t sendtargets -p 10.0.0.1:3260"
        );
        let p = "10.0.0.1:3260";
        assert_eq!(
            logout_argv("iqn.x:y", p).join(" "),
            "iscsiadm -m node -T iqn.x:y -p 10.0.0.1:3260 --logout"
        );
        assert_eq!(
            node_delete_argv("iqn.x:y", p).join(" "),
            "iscsiadm -m node -T iqn.x:y -p 10.0.0.1:3260 -o delete"
        );
        assert_eq!(sessions_argv().join(" "), "iscsiadm -m session");
        let wait = wait_link_argv("/dev/disk/by-path/x");
        assert_eq!(wait[..2], ["sh", "-c"]);
        assert_eq!(wait[4], "/dev/disk/by-path/x");
        let s = new_secret().unwrap();
        assert_eq!(s.len(), 24);
        assert_ne!(s, new_secret().unwrap());
    }

    /// Captured from open-iscsi 2.1.8 (Debian 12) in the test guest.
    #[test]
    fn parses_iscsiadm() {
        let s = parse_sessions(include_str!("fixtures/iscsiadm-session.txt"));
        assert_eq!(s.len(), 1, "{s:?}");
        assert!(s[0].0.ends_with(":3260"), "{s:?}");
        assert!(s[0].1.starts_with("iqn.2014-12.org.vmthunder:"), "{s:?}");
        let d = parse_discovery(include_str!("fixtures/iscsiadm-discovery.txt"));
        assert_eq!(d[0], s[0]);
        assert_eq!(
            parse_initiator_name(include_str!("fixtures/initiatorname.iscsi")).as_deref(),
            Some("iqn.2014-12.org.vmthunder.test:node01")
        );
        assert_eq!(parse_initiator_name("## nothing\n"), None);
    }
}
