//! `target` with `"iscsi_target": "lio"`: the kernel's iSCSI target, through targetcli.
//!
//! The image file is a `fileio` backstore, a cache a `block` backstore (read-only) over a
//! device-mapper `linear` wrapper of the cache: LIO claims a block device exclusively, and the
//! cache must stay open to the host's clones. The target has one TPG with the backstore as
//! LUN 0, CHAP required and no generated ACLs, so it admits nobody until a child's session
//! adds its ACL: its initiator name, a CHAP account of its own and LUN 0 mapped write-protected.
//! Reads parse `targetcli saveconfig` JSON; logged-in initiators come from configfs.

use serde::Deserialize;

use super::dm::{create_argv, linear_table, ours, remove_argv};
use super::iscsi::Child;
use super::names::export_name;
use super::secret::{lio_auth_argv, LIO_CONFIGFS};
use super::{address, args, still_in_use, LinuxStack};
use crate::backend::{dep_attr, BackendError, Observed, Target};
use crate::graph::ISCSI_PORT;
use crate::resource::{Addr, Desired, Kind, TargetAttrs};

/// The LUN LIO exports the image as.
pub const LIO_LUN: u32 = 0;

/// What `targetcli saveconfig` writes (rtslib-fb's dump), the parts vmthunder reads.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct LioConfig {
    #[serde(default)]
    pub storage_objects: Vec<StorageObject>,
    #[serde(default)]
    pub targets: Vec<LioTarget>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct StorageObject {
    pub name: String,
    pub plugin: String,
    #[serde(default)]
    pub dev: Option<String>,
    #[serde(default)]
    pub readonly: bool,
}

#[derive(Clone, Debug, Deserialize)]
pub struct LioTarget {
    pub wwn: String,
    #[serde(default)]
    pub fabric: String,
    #[serde(default)]
    pub tpgs: Vec<Tpg>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Tpg {
    pub tag: u32,
    #[serde(default)]
    pub luns: Vec<TpgLun>,
    #[serde(default)]
    pub node_acls: Vec<NodeAcl>,
    #[serde(default)]
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct TpgLun {
    pub index: u32,
    /// `/backstores/<plugin>/<name>`.
    pub storage_object: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct NodeAcl {
    pub node_wwn: String,
    #[serde(default)]
    pub mapped_luns: Vec<MappedLun>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct MappedLun {
    pub index: u32,
    pub tpg_lun: u32,
    #[serde(default)]
    pub write_protect: bool,
}

impl LioConfig {
    /// Whether nobody can write through target `t`: its LUN 0's backstore is read-only, or
    /// only ACLs see it (no generated ones) and every ACL maps it write-protected.
    pub fn read_only(&self, t: &LioTarget) -> bool {
        let Some(g) = t.tpg() else {
            return false;
        };
        let backstore = g
            .luns
            .iter()
            .find(|l| l.index == LIO_LUN)
            .and_then(|l| self.object(&l.storage_object));
        if backstore.is_some_and(|o| o.readonly) {
            return true;
        }
        g.attributes
            .get("generate_node_acls")
            .and_then(|v| v.as_u64())
            == Some(0)
            && g.node_acls
                .iter()
                .flat_map(|a| &a.mapped_luns)
                .filter(|m| m.tpg_lun == LIO_LUN)
                .all(|m| m.write_protect && m.index == LIO_LUN)
    }

    pub fn target(&self, iqn: &str) -> Option<&LioTarget> {
        self.targets
            .iter()
            .find(|t| t.wwn == iqn && t.fabric == "iscsi")
    }

    /// The storage object behind `/backstores/<plugin>/<name>`.
    pub fn object(&self, path: &str) -> Option<&StorageObject> {
        let rest = path.strip_prefix("/backstores/")?;
        let (plugin, name) = rest.split_once('/')?;
        self.storage_objects
            .iter()
            .find(|o| o.plugin == plugin && o.name == name)
    }
}

impl LioTarget {
    pub fn tpg(&self) -> Option<&Tpg> {
        self.tpgs.iter().find(|t| t.tag == 1)
    }
}
pub fn parse_saveconfig(json: &str) -> Result<LioConfig, String> {
    serde_json::from_str(json).map_err(|e| format!("unexpected targetcli saveconfig JSON: {e}"))
}

/// The whole configuration as JSON, through a private temporary file.
pub fn saveconfig_argv() -> Vec<String> {
    args(&[
        "sh",
        "-c",
        r#"f=$(mktemp) || exit 1; targetcli saveconfig savefile="$f" >/dev/null && cat -- "$f"; rc=$?; rm -f -- "$f" "$f".*; exit $rc"#,
    ])
}

/// One targetcli command: `targetcli PATH VERB ARG...`.
pub fn targetcli(words: &[&str]) -> Vec<String> {
    std::iter::once("targetcli")
        .chain(words.iter().copied())
        .map(String::from)
        .collect()
}

/// The initiators with an open session on target `iqn`: configfs has, per ACL, an `info`
/// that starts `No active iSCSI Session` when there is none. Prints the logged-in ACL names.
pub fn logged_in_argv(iqn: &str) -> Vec<String> {
    args(&[
        "sh",
        "-c",
        r#"for f in /sys/kernel/config/target/iscsi/"$1"/tpgt_1/acls/*/info; do [ -e "$f" ] || continue; grep -q '^No active iSCSI Session' "$f" || basename "$(dirname "$f")"; done"#,
        "sh",
        iqn,
    ])
}

/// The name of an image's backstore (`fileio` on the source, `block` on a relay).
fn backstore_name(stack: &LinuxStack, image: &str) -> String {
    format!("vmt.{}.{image}", stack.cluster)
}

impl LinuxStack {
    pub(super) fn lio_config(&self, host: &str) -> Result<LioConfig, BackendError> {
        let out = self.run(host, &saveconfig_argv())?;
        parse_saveconfig(&out).map_err(|e| BackendError::new(format!("on host {host}: {e}")))
    }
}

fn observed(cfg: &LioConfig, t: &LioTarget, address: &str) -> Observed {
    let mut o = Observed::new();
    o.insert("iqn".into(), t.wwn.clone().into());
    o.insert("lun".into(), LIO_LUN.into());
    o.insert("portal".into(), format!("{address}:{ISCSI_PORT}").into());
    let object = t
        .tpg()
        .and_then(|g| g.luns.iter().find(|l| l.index == LIO_LUN))
        .and_then(|l| cfg.object(&l.storage_object));
    if let Some(dev) = object.and_then(|o| o.dev.clone()) {
        o.insert("backing_store".into(), dev.into());
    }
    o.insert("readonly".into(), cfg.read_only(t).into());
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
    let cfg = stack.lio_config(&t.addr.host)?;
    Ok(cfg.target(&name).map(|x| observed(&cfg, x, address(t))))
}

pub(super) fn create(
    stack: &LinuxStack,
    t: Target<'_>,
    deps: &[(Addr, Observed)],
) -> Result<Observed, BackendError> {
    let host = &*t.addr.host;
    let name = stack.target_iqn(t, Some(deps), &Observed::new())?;
    let store = backstore_name(stack, &t.addr.image);
    let lock = stack.tgt_lock(host);
    let _held = super::hold(&lock);
    let cfg = stack.lio_config(host)?;
    // The backstore: the image file, or a read-only block device over the cache's wrapper.
    let path = match t.desired {
        Desired::Target(TargetAttrs::Image { path, .. }) => {
            let object = format!("/backstores/fileio/{store}");
            if cfg.object(&object).is_none() {
                let file = format!("file_or_dev={path}");
                let name = format!("name={store}");
                stack.run(
                    host,
                    &targetcli(&[
                        "/backstores/fileio",
                        "create",
                        &name,
                        &file,
                        "write_back=false",
                    ]),
                )?;
            }
            object
        }
        _ => {
            let cache = dep_attr(deps, Kind::Cache, "device")?;
            let (wname, wuuid) = export_name(&stack.cluster, &t.addr.image);
            if ours(&stack.dm_devices(host)?, &wname, &wuuid, t.addr)?.is_none() {
                let table = linear_table(stack.sectors(host, cache)?, cache);
                stack.run(host, &create_argv(&wname, &wuuid, &table))?;
            }
            let object = format!("/backstores/block/{store}");
            if cfg.object(&object).is_none() {
                let dev = format!("dev=/dev/mapper/{wname}");
                let name = format!("name={store}");
                stack.run(
                    host,
                    &targetcli(&["/backstores/block", "create", &name, &dev, "readonly=true"]),
                )?;
            }
            object
        }
    };
    let tpg = format!("/iscsi/{name}/tpg1");
    match cfg.target(&name) {
        Some(x)
            if x.tpg()
                .is_some_and(|g| g.luns.iter().any(|l| l.storage_object == path)) => {}
        Some(_) => {
            stack.run(
                host,
                &targetcli(&[
                    &format!("{tpg}/luns"),
                    "create",
                    &path,
                    "add_mapped_luns=false",
                ]),
            )?;
        }
        None => {
            stack.run(host, &targetcli(&["/iscsi", "create", &name]))?;
            stack.run(
                host,
                &targetcli(&[
                    &format!("{tpg}/luns"),
                    "create",
                    &path,
                    "add_mapped_luns=false",
                ]),
            )?;
        }
    }
    stack.run(
        host,
        &targetcli(&[
            &tpg,
            "set",
            "attribute",
            "authentication=1",
            "generate_node_acls=0",
            "demo_mode_write_protect=1",
        ]),
    )?;
    let cfg = stack.lio_config(host)?;
    let x = cfg.target(&name).ok_or_else(|| {
        BackendError::new(format!(
            "{}: targetcli made {name} on host {host} but saveconfig does not show it",
            t.addr
        ))
    })?;
    Ok(observed(&cfg, x, address(t)))
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
    let cfg = stack.lio_config(host)?;
    if cfg.target(&name).is_some() {
        let who: Vec<String> = stack
            .run(host, &logged_in_argv(&name))?
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if !who.is_empty() {
            return Err(still_in_use(t, &name, &who));
        }
        stack.run(host, &targetcli(&["/iscsi", "delete", &name]))?;
    }
    let store = backstore_name(stack, &t.addr.image);
    for plugin in ["fileio", "block"] {
        if cfg
            .object(&format!("/backstores/{plugin}/{store}"))
            .is_some()
        {
            stack.run(
                host,
                &targetcli(&[&format!("/backstores/{plugin}"), "delete", &store]),
            )?;
        }
    }
    let (wname, wuuid) = export_name(&stack.cluster, &t.addr.image);
    if stack
        .dm_devices(host)?
        .iter()
        .any(|d| d.name == wname && d.uuid == wuuid)
    {
        stack.run(host, &remove_argv(&wname))?;
    }
    Ok(())
}

/// Adds the child's ACL (made anew: a fresh secret), LUN 0 mapped write-protected; false
/// when there is no such target. The caller holds the host's target lock.
pub(super) fn admit(stack: &LinuxStack, host: &str, child: &Child) -> Result<bool, BackendError> {
    let cfg = stack.lio_config(host)?;
    let Some(x) = cfg.target(child.iqn) else {
        return Ok(false);
    };
    let acls = format!("/iscsi/{}/tpg1/acls", child.iqn);
    if x.tpg()
        .is_some_and(|g| g.node_acls.iter().any(|a| a.node_wwn == child.initiator))
    {
        stack.run(host, &targetcli(&[&acls, "delete", child.initiator]))?;
    }
    stack.run(
        host,
        &targetcli(&[&acls, "create", child.initiator, "add_mapped_luns=false"]),
    )?;
    let acl = format!("{acls}/{}", child.initiator);
    stack.run(
        host,
        &targetcli(&[
            &acl,
            "create",
            &format!("mapped_lun={LIO_LUN}"),
            &format!("tpg_lun_or_backstore={LIO_LUN}"),
            "write_protect=1",
        ]),
    )?;
    // What `set auth userid= password=` writes, but with the secret on standard input.
    stack.run_with_secret(
        host,
        &lio_auth_argv(LIO_CONFIGFS, child.iqn, child.initiator, child.user),
        child.secret,
    )?;
    Ok(true)
}

/// Removes the child's ACL, if its target and the ACL are still there.
pub(super) fn dismiss(stack: &LinuxStack, host: &str, child: &Child) -> Result<(), BackendError> {
    let cfg = stack.lio_config(host)?;
    let present = cfg
        .target(child.iqn)
        .and_then(|x| x.tpg())
        .is_some_and(|g| g.node_acls.iter().any(|a| a.node_wwn == child.initiator));
    if present {
        let acls = format!("/iscsi/{}/tpg1/acls", child.iqn);
        stack.run(host, &targetcli(&[&acls, "delete", child.initiator]))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders() {
        assert_eq!(
            targetcli(&["/iscsi", "create", "iqn.x:y"]).join(" "),
            "targetcli /iscsi create iqn.x:y"
        );
        assert!(logged_in_argv("iqn.x:y").contains(&"iqn.x:y".to_string()));
    }

    /// Captured from targetcli-fb 2.1.53 / python3-rtslib-fb 2.1.74 (Debian 12) in the test
    /// guest: a relay's target with one child's ACL, over a read-only block backstore.
    #[test]
    fn parses_saveconfig() {
        let cfg = parse_saveconfig(include_str!("fixtures/targetcli-saveconfig.json")).unwrap();
        let iqn = cfg.targets[0].wwn.clone();
        assert!(iqn.starts_with("iqn.2014-12.org.vmthunder:"), "{iqn}");
        let t = cfg.target(&iqn).unwrap();
        let g = t.tpg().unwrap();
        assert_eq!(g.luns[0].index, 0);
        let object = cfg.object(&g.luns[0].storage_object).unwrap();
        assert_eq!(object.plugin, "block");
        assert!(object.readonly);
        assert!(object
            .dev
            .as_deref()
            .unwrap()
            .starts_with("/dev/mapper/vmt."));
        assert_eq!(g.node_acls.len(), 1);
        assert!(g.node_acls[0].node_wwn.ends_with(":node02"));
        assert!(cfg.read_only(t));
        assert!(parse_saveconfig("{}").unwrap().targets.is_empty());
        assert!(parse_saveconfig("Unknown command").is_err());
    }
}
