//! `target`: an iSCSI export of the image (on its source host) or of the host's cache (on a
//! relay) through tgt, as LUN 1 of a target named after the image version, read-only.
//!
//! A new target admits nobody: each child's `session` binds its own initiator name and CHAP
//! account to it before logging in, and removes them after logging out. A target is never
//! deleted while an initiator is still connected to it (an I_T nexus).

use super::iscsi::Child;
use super::names::TGT_LUN;
use super::secret::{tgt_new_account_argv, TGT_SOCKET};
use super::{address, still_in_use, LinuxStack};
use crate::backend::{dep_attr, BackendError, Observed, Target};
use crate::graph::ISCSI_PORT;
use crate::resource::{Addr, Desired, Kind, TargetAttrs};

/// One target of `tgtadm --op show --mode target`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TgtTarget {
    pub tid: u32,
    pub iqn: String,
    /// Connected initiators (I_T nexus): (initiator name, address).
    pub nexus: Vec<(String, String)>,
    pub luns: Vec<TgtLun>,
    /// Bound CHAP accounts.
    pub accounts: Vec<String>,
    /// Initiator addresses or names allowed.
    pub acl: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TgtLun {
    pub lun: u32,
    pub readonly: bool,
    /// `None` for the controller LUN 0.
    pub path: Option<String>,
}

impl TgtTarget {
    pub fn lun(&self, n: u32) -> Option<&TgtLun> {
        self.luns.iter().find(|l| l.lun == n)
    }
}

fn tgtadm(rest: &[&str]) -> Vec<String> {
    ["tgtadm", "--lld", "iscsi"]
        .iter()
        .chain(rest)
        .map(|s| s.to_string())
        .collect()
}

pub fn show_argv() -> Vec<String> {
    tgtadm(&["--op", "show", "--mode", "target"])
}

pub fn new_target_argv(tid: u32, iqn: &str) -> Vec<String> {
    tgtadm(&[
        "--op",
        "new",
        "--mode",
        "target",
        "--tid",
        &tid.to_string(),
        "-T",
        iqn,
    ])
}

/// `--mode logicalunit` on the image's LUN of target `tid`.
fn lun(op: &str, tid: u32, rest: &[&str]) -> Vec<String> {
    let (tid, lun) = (tid.to_string(), TGT_LUN.to_string());
    let head = [
        "--op",
        op,
        "--mode",
        "logicalunit",
        "--tid",
        &tid,
        "--lun",
        &lun,
    ];
    tgtadm(&[&head[..], rest].concat())
}

pub fn new_lun_argv(tid: u32, path: &str) -> Vec<String> {
    lun("new", tid, &["--backing-store", path, "--bstype", "rdwr"])
}

/// Read-only is a parameter `--op new` does not take: it is set right after.
pub fn readonly_argv(tid: u32) -> Vec<String> {
    lun("update", tid, &["--params", "readonly=1"])
}

pub fn delete_target_argv(tid: u32) -> Vec<String> {
    tgtadm(&[
        "--op",
        "delete",
        "--mode",
        "target",
        "--tid",
        &tid.to_string(),
    ])
}

/// Allows (`bind`) or stops allowing (`unbind`) an initiator name on a target.
pub fn initiator_argv(op: &str, tid: u32, initiator: &str) -> Vec<String> {
    tgtadm(&[
        "--op",
        op,
        "--mode",
        "target",
        "--tid",
        &tid.to_string(),
        "--initiator-name",
        initiator,
    ])
}

pub fn delete_account_argv(user: &str) -> Vec<String> {
    tgtadm(&["--op", "delete", "--mode", "account", "--user", user])
}

/// Binds (`bind`) or unbinds (`unbind`) a CHAP account to a target.
pub fn account_argv(op: &str, tid: u32, user: &str) -> Vec<String> {
    tgtadm(&[
        "--op",
        op,
        "--mode",
        "account",
        "--tid",
        &tid.to_string(),
        "--user",
        user,
    ])
}

#[derive(Clone, Copy, PartialEq)]
enum Section {
    Other,
    Nexus,
    Luns,
    Accounts,
    Acl,
}

/// Parses the text `tgtadm --op show --mode target` prints (it has no machine format).
pub fn parse_show(text: &str) -> Result<Vec<TgtTarget>, String> {
    let mut targets: Vec<TgtTarget> = Vec::new();
    let mut section = Section::Other;
    for line in text.lines() {
        let l = line.trim();
        if let Some(rest) = line.strip_prefix("Target ") {
            let (tid, name) = rest
                .split_once(": ")
                .ok_or_else(|| format!("unexpected tgtadm line {line:?}"))?;
            targets.push(TgtTarget {
                tid: tid
                    .parse()
                    .map_err(|_| format!("unexpected tgtadm line {line:?}"))?,
                iqn: name.trim().to_string(),
                ..TgtTarget::default()
            });
            section = Section::Other;
            continue;
        }
        let Some(t) = targets.last_mut() else {
            continue;
        };
        match l {
            "System information:" => section = Section::Other,
            "I_T nexus information:" => section = Section::Nexus,
            "LUN information:" => section = Section::Luns,
            "Account information:" => section = Section::Accounts,
            "ACL information:" => section = Section::Acl,
            _ if l.is_empty() => {}
            _ => match section {
                Section::Nexus => {
                    if let Some(i) = l.strip_prefix("Initiator: ") {
                        let name = i.split(" alias:").next().unwrap_or(i).trim();
                        t.nexus.push((name.to_string(), String::new()));
                    } else if let Some(a) = l.strip_prefix("IP Address: ") {
                        if let Some(last) = t.nexus.last_mut() {
                            last.1 = a.trim().to_string();
                        }
                    }
                }
                Section::Luns => {
                    if let Some(n) = l.strip_prefix("LUN: ") {
                        t.luns.push(TgtLun {
                            lun: n
                                .trim()
                                .parse()
                                .map_err(|_| format!("unexpected tgtadm line {line:?}"))?,
                            ..TgtLun::default()
                        });
                    } else if let Some(lun) = t.luns.last_mut() {
                        if let Some(v) = l.strip_prefix("Readonly: ") {
                            lun.readonly = v.trim() == "Yes";
                        } else if let Some(p) = l.strip_prefix("Backing store path: ") {
                            let p = p.trim();
                            lun.path = (p != "None" && !p.is_empty()).then(|| p.to_string());
                        }
                    }
                }
                Section::Accounts => {
                    t.accounts
                        .push(l.split_whitespace().next().unwrap_or(l).to_string());
                }
                Section::Acl => t.acl.push(l.to_string()),
                Section::Other => {}
            },
        }
    }
    Ok(targets)
}

/// The smallest target id not in use.
pub fn free_tid(targets: &[TgtTarget]) -> u32 {
    (1..)
        .find(|n| targets.iter().all(|t| t.tid != *n))
        .expect("a free id")
}

impl LinuxStack {
    pub(super) fn tgt_targets(&self, host: &str) -> Result<Vec<TgtTarget>, BackendError> {
        let out = self.run(host, &show_argv())?;
        parse_show(&out).map_err(|e| BackendError::new(format!("on host {host}: {e}")))
    }
}

fn observed(tgt: &TgtTarget, address: &str) -> Observed {
    let mut o = Observed::new();
    o.insert("iqn".into(), tgt.iqn.clone().into());
    o.insert("lun".into(), TGT_LUN.into());
    o.insert("tid".into(), tgt.tid.into());
    o.insert("portal".into(), format!("{address}:{ISCSI_PORT}").into());
    if let Some(p) = tgt.lun(TGT_LUN).and_then(|l| l.path.clone()) {
        o.insert("backing_store".into(), p.into());
    }
    o.insert(
        "readonly".into(),
        tgt.lun(TGT_LUN).is_some_and(|l| l.readonly).into(),
    );
    o
}

pub(super) fn read(
    stack: &LinuxStack,
    t: Target<'_>,
    recorded: &Observed,
) -> Result<Option<Observed>, BackendError> {
    let Ok(name) = stack.target_iqn(t, None, recorded) else {
        return Ok(None);
    };
    let found = stack
        .tgt_targets(&t.addr.host)?
        .into_iter()
        .find(|x| x.iqn == name);
    Ok(found.map(|x| observed(&x, address(t))))
}

pub(super) fn create(
    stack: &LinuxStack,
    t: Target<'_>,
    deps: &[(Addr, Observed)],
) -> Result<Observed, BackendError> {
    let host = &*t.addr.host;
    let name = stack.target_iqn(t, Some(deps), &Observed::new())?;
    let path = match t.desired {
        Desired::Target(TargetAttrs::Image { path, .. }) => path.clone(),
        _ => dep_attr(deps, Kind::Cache, "device")?.to_string(),
    };
    let lock = stack.tgt_lock(host);
    let _held = super::hold(&lock);
    let targets = stack.tgt_targets(host)?;
    let existing = targets.iter().find(|x| x.iqn == name);
    let tid = match existing {
        Some(x) => x.tid,
        None => {
            let tid = free_tid(&targets);
            stack.run(host, &new_target_argv(tid, &name))?;
            tid
        }
    };
    match existing.and_then(|x| x.lun(TGT_LUN)) {
        Some(l) if l.path.as_deref() != Some(path.as_str()) => {
            return Err(BackendError::new(format!(
                "{}: target {name} on host {host} exports {:?}, not {path:?}; delete it (tgtadm --lld iscsi --op delete --mode target --tid {tid}) or taint this resource",
                t.addr, l.path
            )))
        }
        Some(l) if l.readonly => {}
        Some(_) => {
            stack.run(host, &readonly_argv(tid))?;
        }
        None => {
            stack.run(host, &new_lun_argv(tid, &path))?;
            stack.run(host, &readonly_argv(tid))?;
        }
    }
    let now = stack
        .tgt_targets(host)?
        .into_iter()
        .find(|x| x.iqn == name)
        .ok_or_else(|| {
            BackendError::new(format!(
                "{}: tgtadm made target {name} on host {host} but does not show it",
                t.addr
            ))
        })?;
    if !now.lun(TGT_LUN).is_some_and(|l| l.readonly) {
        return Err(BackendError::new(format!(
            "{}: LUN {TGT_LUN} of {name} on host {host} is not read-only after `--params readonly=1`",
            t.addr
        )));
    }
    Ok(observed(&now, address(t)))
}

pub(super) fn delete(
    stack: &LinuxStack,
    t: Target<'_>,
    recorded: &Observed,
) -> Result<(), BackendError> {
    let host = &*t.addr.host;
    let Ok(name) = stack.target_iqn(t, None, recorded) else {
        return Ok(());
    };
    let lock = stack.tgt_lock(host);
    let _held = super::hold(&lock);
    let Some(x) = stack.tgt_targets(host)?.into_iter().find(|x| x.iqn == name) else {
        return Ok(());
    };
    if !x.nexus.is_empty() {
        let who: Vec<String> = x.nexus.iter().map(|(i, a)| format!("{i} ({a})")).collect();
        return Err(still_in_use(t, &name, &who));
    }
    stack.run(host, &delete_target_argv(x.tid))?;
    // The children's accounts were bound to it only: they go with it.
    for user in &x.accounts {
        if user.starts_with("vmt.") {
            let _ = stack.attempt(host, &delete_account_argv(user))?;
        }
    }
    Ok(())
}

/// Binds a child's initiator name and a fresh CHAP account to the target `child.iqn`; false
/// when there is no such target. The caller holds the host's target lock.
pub(super) fn admit(stack: &LinuxStack, host: &str, child: &Child) -> Result<bool, BackendError> {
    let Some(tid) = stack
        .tgt_targets(host)?
        .into_iter()
        .find(|x| x.iqn == child.iqn)
        .map(|x| x.tid)
    else {
        return Ok(false);
    };
    let _ = stack.attempt(host, &account_argv("unbind", tid, child.user))?;
    let _ = stack.attempt(host, &delete_account_argv(child.user))?;
    // Made over tgtd's socket: tgtadm takes the password only as an argument.
    stack.run_with_secret(
        host,
        &tgt_new_account_argv(child.user, TGT_SOCKET),
        child.secret,
    )?;
    stack.run(host, &account_argv("bind", tid, child.user))?;
    match stack.attempt(host, &initiator_argv("bind", tid, child.initiator))? {
        Ok(_) => {}
        // Already bound (a re-run): tgt says so and changes nothing.
        Err(e) if e.stderr.contains("exist") => {}
        Err(e) => return Err(e.into()),
    }
    Ok(true)
}

/// Unbinds and deletes what [`admit`] made, as far as it is still there.
pub(super) fn dismiss(stack: &LinuxStack, host: &str, child: &Child) -> Result<(), BackendError> {
    if let Some(x) = stack
        .tgt_targets(host)?
        .into_iter()
        .find(|x| x.iqn == child.iqn)
    {
        stack
            .attempt(host, &account_argv("unbind", x.tid, child.user))?
            .ok();
        stack
            .attempt(host, &initiator_argv("unbind", x.tid, child.initiator))?
            .ok();
    }
    stack.attempt(host, &delete_account_argv(child.user))?.ok();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders() {
        assert_eq!(
            new_target_argv(3, "iqn.x:y").join(" "),
            "tgtadm --lld iscsi --op new --mode target --tid 3 -T iqn.x:y"
        );
        assert_eq!(
            new_lun_argv(3, "/dev/mapper/c").join(" "),
            "tgtadm --lld iscsi --op new --mode logicalunit --tid 3 --lun 1 --backing-store /dev/mapper/c --bstype rdwr"
        );
        assert_eq!(
            readonly_argv(3).join(" "),
            "tgtadm --lld iscsi --op update --mode logicalunit --tid 3 --lun 1 --params readonly=1"
        );
        assert_eq!(
            initiator_argv("bind", 3, "iqn.a:b").join(" "),
            "tgtadm --lld iscsi --op bind --mode target --tid 3 --initiator-name iqn.a:b"
        );
        assert_eq!(
            account_argv("unbind", 3, "u").join(" "),
            "tgtadm --lld iscsi --op unbind --mode account --tid 3 --user u"
        );
        assert_eq!(
            delete_target_argv(3).join(" "),
            "tgtadm --lld iscsi --op delete --mode target --tid 3"
        );
        assert_eq!(
            delete_account_argv("u").join(" "),
            "tgtadm --lld iscsi --op delete --mode account --user u"
        );
        assert_eq!(
            show_argv().join(" "),
            "tgtadm --lld iscsi --op show --mode target"
        );
    }

    /// Captured from tgt 1.0.85 (Debian 12) in the test guest: a source target with one
    /// child logged in over CHAP, and a second, empty target.
    #[test]
    fn parses_show() {
        let all = parse_show(include_str!("fixtures/tgtadm-show.txt")).unwrap();
        assert_eq!(all.len(), 2, "{all:#?}");
        let t = &all[0];
        assert_eq!(t.tid, 1);
        assert!(t.iqn.starts_with("iqn.2014-12.org.vmthunder:"), "{t:?}");
        assert_eq!(t.nexus.len(), 1, "{t:?}");
        assert!(t.nexus[0].0.ends_with(":node01"), "{t:?}");
        assert!(!t.nexus[0].1.is_empty(), "{t:?}");
        let lun = t.lun(1).unwrap();
        assert!(lun.readonly);
        assert!(lun.path.is_some());
        assert_eq!(t.lun(0).unwrap().path, None);
        assert_eq!(t.accounts.len(), 1, "{t:?}");
        assert_eq!(t.acl.len(), 1, "{t:?}");
        assert!(all[1].nexus.is_empty() && all[1].accounts.is_empty());
        assert_eq!(free_tid(&all), 3);
        assert_eq!(parse_show("").unwrap(), vec![]);
    }
}
