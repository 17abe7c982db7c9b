//! `session`: an open-iscsi login to the parent's target, with a CHAP account of its own.
//!
//! Create: read this host's initiator name; on the parent, under its target lock, make a
//! fresh CHAP account for this child and bind it and the initiator name to the target; here,
//! discover the target, store the CHAP settings in the node record, log in, wait for udev's
//! `/dev/disk/by-path` link. The secret is generated here, recorded in state (mode 0600) and
//! never printed: commands that carry it are shown with it masked.
//! Delete: log out, drop the node record, then unbind and delete the account on the parent.
//! Update (a move to another parent, or a follow of the parent's rebuilt target): admit this
//! child on the new parent with the recorded secret, log in there unless already logged in,
//! wait for the disk, put the cache's origin shim over it ([`super::dm::repoint_origin`]),
//! then leave the old target (bounded: its host may be dead) and dismiss the old account.

use std::io::Read;

use super::names::{by_path, chap_user, TGT_LUN};
use super::secret::{iscsi_password_argv, ISCSI_NODES};
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
    if !listed(&stack.sessions(host)?, portal, iqn) {
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
    let iqn = dep_attr(deps, Kind::Target, "iqn")?;
    let portal = dep_attr(deps, Kind::Target, "portal")?;
    let initiator = stack.initiator_name(host)?;
    let user = chap_user(&stack.cluster, &t.addr.image, host);
    let secret = new_secret()?;

    // A login left by an interrupted create is dropped: its secret is not known any more.
    if listed(&stack.sessions(host)?, portal, iqn) {
        let _ = stack.attempt(host, &logout_argv(iqn, portal))?;
    }
    let child = Child {
        iqn,
        initiator: &initiator,
        user: &user,
        secret: &secret,
    };
    admit_on(stack, t, parent_of(t), &child)?;
    log_in(stack, t, &child, portal)?;
    let (link, disk) = wait_disk(stack, host, portal, iqn, lun_of(deps))?;
    Ok(session_observed(&child, portal, &link, &disk))
}

/// Whether the host is logged in to `iqn` at `portal`.
fn listed(sessions: &[(String, String)], portal: &str, iqn: &str) -> bool {
    sessions.iter().any(|(p, i)| p == portal && i == iqn)
}

/// The parent admits this child: its initiator name and its account. The parent's target
/// must be there.
fn admit_on(
    stack: &LinuxStack,
    t: Target<'_>,
    parent: &str,
    child: &Child,
) -> Result<(), BackendError> {
    let lock = stack.tgt_lock(parent);
    let _held = super::hold(&lock);
    let admitted = match stack.iscsi_target {
        IscsiTarget::Tgt => super::tgt::admit(stack, parent, child)?,
        IscsiTarget::Lio => super::lio::admit(stack, parent, child)?,
    };
    if !admitted {
        return Err(BackendError::new(format!(
            "{}: the parent's target {} is not on host {parent}; apply again to recreate it",
            t.addr, child.iqn
        )));
    }
    Ok(())
}

/// Discovers the parent's target at `portal`, stores the child's CHAP settings in the node
/// record and logs in (already logged in is fine).
fn log_in(
    stack: &LinuxStack,
    t: Target<'_>,
    child: &Child,
    portal: &str,
) -> Result<(), BackendError> {
    let (host, parent, iqn) = (&*t.addr.host, parent_of(t), child.iqn);
    let lock = stack.node_lock(host);
    let _held = super::hold(&lock);
    let found = parse_discovery(&stack.run(host, &discovery_argv(portal))?);
    if !found.iter().any(|(_, i)| i == iqn) {
        return Err(BackendError::new(format!(
            "{}: discovery at {portal} (host {parent}) does not list {iqn}; it lists {:?}",
            t.addr,
            found.iter().map(|(_, i)| i).collect::<Vec<_>>()
        )));
    }
    for (key, value) in [
        ("node.startup", "manual"),
        ("node.session.auth.authmethod", "CHAP"),
        ("node.session.auth.username", child.user),
    ] {
        stack.run(host, &node_update_argv(iqn, portal, key, value))?;
    }
    // In the record itself: `-o update -v` would put the secret in an argument list.
    stack.run_with_secret(
        host,
        &iscsi_password_argv(ISCSI_NODES, iqn, portal),
        child.secret,
    )?;
    match stack.attempt(host, &login_argv(iqn, portal))? {
        Ok(_) => Ok(()),
        Err(e) if exit_code(&e) == Some(SESS_EXISTS) => Ok(()),
        Err(e) => Err(BackendError::from(e).context(&format!(
            "{}: login to {iqn} at {portal} (host {parent}) as {} failed",
            t.addr, child.initiator
        ))),
    }
}

/// Waits for udev's link of the session's LUN: the link, and the disk it points to.
fn wait_disk(
    stack: &LinuxStack,
    host: &str,
    portal: &str,
    iqn: &str,
    lun: u32,
) -> Result<(String, String), BackendError> {
    let link = by_path(portal, iqn, lun);
    let disk = stack.run(host, &wait_link_argv(&link))?;
    Ok((link, disk.trim().to_string()))
}

/// A session as creates and updates return it.
fn session_observed(child: &Child, portal: &str, link: &str, disk: &str) -> Observed {
    let mut o = Observed::new();
    o.insert("iqn".into(), child.iqn.into());
    o.insert("portal".into(), portal.into());
    o.insert("initiator".into(), child.initiator.into());
    o.insert("chap_user".into(), child.user.into());
    o.insert("chap_secret".into(), child.secret.into());
    o.insert("device".into(), link.into());
    o.insert("disk".into(), disk.into());
    o
}

/// How long leaving a target may take: open-iscsi waits 15 s for a logout's answer
/// (`node.conn[0].timeo.logout_timeout`), and a parent that died does not answer.
const LEAVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Logs out of `iqn` at `portal` and drops its node record; either already gone is fine.
fn leave(
    stack: &LinuxStack,
    host: &str,
    iqn: &str,
    portal: &str,
    timeout: std::time::Duration,
) -> Result<(), BackendError> {
    for argv in [logout_argv(iqn, portal), node_delete_argv(iqn, portal)] {
        match stack.attempt_within(host, &argv, timeout)? {
            Ok(_) => {}
            Err(e) if exit_code(&e) == Some(NO_OBJS_FOUND) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The parent stops admitting the child `recorded` describes. Its target may be gone already
/// (it goes with its accounts), or its host may be down: the login is what mattered, so
/// failures are ignored.
fn dismiss_on(stack: &LinuxStack, parent: &str, recorded: &Observed) {
    let (Some(iqn), Some(user), Some(initiator)) = (
        text(recorded, "iqn"),
        text(recorded, "chap_user"),
        text(recorded, "initiator"),
    ) else {
        return;
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
}

pub(super) fn delete(
    stack: &LinuxStack,
    t: Target<'_>,
    recorded: &Observed,
) -> Result<(), BackendError> {
    let (Some(iqn), Some(portal)) = (text(recorded, "iqn"), text(recorded, "portal")) else {
        return Ok(());
    };
    leave(stack, &t.addr.host, iqn, portal, super::COMMAND_TIMEOUT)?;
    dismiss_on(stack, parent_of(t), recorded);
    Ok(())
}

/// What moving a session from its recorded login `old` to `new` (each a portal and an IQN)
/// still needs, from the logins the host has now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MoveSteps {
    /// Log out of a login to the new target first: it was made with a secret not known.
    pub drop_new: bool,
    /// Discover the new target, store the CHAP settings, log in.
    pub log_in: bool,
    /// Log out of the old target and drop its node record.
    pub leave_old: bool,
    /// Remove this host's account on the old parent (never on the new one: the account's
    /// name is the same on every parent).
    pub dismiss_old: bool,
}

/// The steps of a move. `same_parent`: the new target is on the old parent's host;
/// `secret_known`: the recorded login's CHAP secret is known, and is the new login's too, so
/// a login to the new target left by an interrupted move is reused.
pub fn move_steps(
    sessions: &[(String, String)],
    old: Option<(&str, &str)>,
    new: (&str, &str),
    same_parent: bool,
    secret_known: bool,
) -> Result<MoveSteps, String> {
    let has_new = listed(sessions, new.0, new.1);
    let same = old == Some(new);
    if same && has_new && !secret_known {
        return Err(format!(
            "the login to {} at {} has no recorded CHAP secret, and the cache reads through it: it cannot be renewed in place; replace the session",
            new.1, new.0
        ));
    }
    let drop_new = has_new && !secret_known;
    Ok(MoveSteps {
        drop_new,
        log_in: !has_new || drop_new,
        leave_old: old.is_some() && !same,
        dismiss_old: old.is_some() && !same_parent,
    })
}

/// A session moves to `t`'s parent (or follows its parent's rebuilt target): log in to the
/// new target, put the origin shim over the new disk, leave the old target. The recorded
/// CHAP secret is kept, so every step can be repeated after a kill at any point.
pub(super) fn update(
    stack: &LinuxStack,
    t: Target<'_>,
    before: &Desired,
    recorded: &Observed,
    deps: &[(Addr, Observed)],
) -> Result<Observed, BackendError> {
    let host = &*t.addr.host;
    let parent = parent_of(t);
    let old_parent = match before {
        Desired::Session(s) => s.parent.as_str(),
        _ => parent,
    };
    let iqn = dep_attr(deps, Kind::Target, "iqn")?;
    let portal = dep_attr(deps, Kind::Target, "portal")?;
    let old = text(recorded, "portal").zip(text(recorded, "iqn"));
    let initiator = stack.initiator_name(host)?;
    let user = chap_user(&stack.cluster, &t.addr.image, host);
    let known = text(recorded, "chap_secret");
    let secret = match known {
        Some(s) => s.to_string(),
        None => new_secret()?,
    };
    let steps = move_steps(
        &stack.sessions(host)?,
        old,
        (portal, iqn),
        old_parent == parent,
        known.is_some(),
    )
    .map_err(|e| BackendError::new(format!("{}: {e}", t.addr)))?;

    if steps.drop_new {
        let _ = stack.attempt(host, &logout_argv(iqn, portal))?;
    }
    let child = Child {
        iqn,
        initiator: &initiator,
        user: &user,
        secret: &secret,
    };
    // Always: a rebuilt target has lost its accounts, and a login's account is made anew
    // with the same secret.
    admit_on(stack, t, parent, &child)?;
    if steps.log_in {
        log_in(stack, t, &child, portal)?;
    }
    let (link, disk) = wait_disk(stack, host, portal, iqn, lun_of(deps))?;
    super::dm::repoint_origin(stack, t.addr, &disk)?;
    if let Some((old_portal, old_iqn)) = old.filter(|_| steps.leave_old) {
        leave_old(stack, t, old_portal, old_iqn)?;
    }
    if steps.dismiss_old {
        dismiss_on(stack, old_parent, recorded);
    }
    Ok(session_observed(&child, portal, &link, &disk))
}

/// Leaves the old target, bounded: a parent that died does not answer a logout, and nothing
/// reads through that login any more. Only this host being unreachable fails the move.
fn leave_old(
    stack: &LinuxStack,
    t: Target<'_>,
    portal: &str,
    iqn: &str,
) -> Result<(), BackendError> {
    match leave(stack, &t.addr.host, iqn, portal, LEAVE_TIMEOUT) {
        Err(e) if e.unreachable_host.is_none() => {
            tracing::warn!(addr = %t.addr, iqn, portal, error = %e, "the old login could not be ended; carrying on");
            Ok(())
        }
        r => r,
    }
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

    fn logins(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(p, i)| (p.to_string(), i.to_string()))
            .collect()
    }

    const IQN: &str = "iqn.2014-12.org.vmthunder:c.base.1";
    const OLD: (&str, &str) = ("10.0.0.11:3260", IQN);
    const NEW: (&str, &str) = ("10.0.0.12:3260", IQN);

    #[test]
    fn a_move_does_every_step_once() {
        let fresh = move_steps(&logins(&[OLD]), Some(OLD), NEW, false, true).unwrap();
        assert_eq!(
            fresh,
            MoveSteps {
                drop_new: false,
                log_in: true,
                leave_old: true,
                dismiss_old: true,
            }
        );
        // Killed after the login: it is reused (made with the recorded secret).
        let again = move_steps(&logins(&[OLD, NEW]), Some(OLD), NEW, false, true).unwrap();
        assert_eq!(
            again,
            MoveSteps {
                log_in: false,
                ..fresh
            }
        );
        // Killed after the logout, or the old parent died and its login went: still left
        // (the node record) and dismissed, each as far as it is there.
        let gone = move_steps(&logins(&[NEW]), Some(OLD), NEW, false, true).unwrap();
        assert_eq!(gone, again);
    }

    #[test]
    fn a_move_keeps_what_the_new_login_needs() {
        // The parent's target rebuilt, same attributes: the same login, never left; the
        // account is made again by the admit every move does.
        let rebuilt = move_steps(&logins(&[NEW]), Some(NEW), NEW, true, true).unwrap();
        assert_eq!(rebuilt, MoveSteps::default());
        let lost = move_steps(&[], Some(NEW), NEW, true, true).unwrap();
        assert_eq!(
            lost,
            MoveSteps {
                log_in: true,
                ..MoveSteps::default()
            }
        );
        // Another address of the same parent: its account (one name on every parent) stays.
        let same_host = move_steps(&logins(&[OLD]), Some(OLD), NEW, true, true).unwrap();
        assert!(
            same_host.leave_old && !same_host.dismiss_old,
            "{same_host:?}"
        );
    }

    #[test]
    fn a_move_without_a_recorded_secret_logs_in_anew() {
        let s = move_steps(&logins(&[OLD, NEW]), Some(OLD), NEW, false, false).unwrap();
        assert!(s.drop_new && s.log_in, "{s:?}");
        let none = move_steps(&[], None, NEW, false, false).unwrap();
        assert_eq!(
            none,
            MoveSteps {
                log_in: true,
                ..MoveSteps::default()
            }
        );
        // The one login the cache reads through cannot be renewed in place.
        let e = move_steps(&logins(&[NEW]), Some(NEW), NEW, true, false).unwrap_err();
        assert!(e.contains(IQN) && e.contains("replace"), "{e}");
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
