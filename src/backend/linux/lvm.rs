//! `lv`: LVM logical volumes in the spec's volume group, tagged `vmthunder` and with their
//! cluster. A cache `lv` is three volumes (dm-cache's data and metadata, and the shim under
//! its origin: `names::origin_name`), a clone's is its copy-on-write volume.

use serde::Deserialize;

use super::names::{cluster_tag, lvs_of, LV_TAG};
use super::{args, LinuxStack};
use crate::backend::{BackendError, Observed, Target};
use crate::resource::{Desired, LvPurpose};

/// One row of `lvs --reportformat json`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Lv {
    pub lv_uuid: String,
    pub lv_name: String,
    pub vg_name: String,
    /// Bytes (`--units b --nosuffix`).
    pub lv_size: String,
    pub lv_attr: String,
    /// Comma-separated.
    pub lv_tags: String,
}

impl Lv {
    pub fn has_tag(&self, tag: &str) -> bool {
        self.lv_tags.split(',').any(|t| t == tag)
    }
    pub fn bytes(&self) -> u64 {
        self.lv_size.trim().parse().unwrap_or(0)
    }
    /// The fifth attribute character is `a` when the volume is active (has a device).
    pub fn active(&self) -> bool {
        self.lv_attr.as_bytes().get(4) == Some(&b'a')
    }
}

const LVS_FIELDS: &str = "lv_uuid,lv_name,vg_name,lv_size,lv_attr,lv_tags";

/// Every logical volume of `vg`, as JSON (exits non-zero when the group does not exist).
pub fn lvs_argv(vg: &str) -> Vec<String> {
    args(&[
        "lvs",
        "--reportformat",
        "json",
        "--units",
        "b",
        "--nosuffix",
        "-o",
        LVS_FIELDS,
        vg,
    ])
}

pub fn parse_lvs(json: &str) -> Result<Vec<Lv>, String> {
    #[derive(Deserialize)]
    struct Report {
        report: Vec<Section>,
    }
    #[derive(Deserialize)]
    struct Section {
        #[serde(default)]
        lv: Vec<Lv>,
    }
    let r: Report =
        serde_json::from_str(json).map_err(|e| format!("unexpected `lvs` output: {e}"))?;
    Ok(r.report.into_iter().flat_map(|s| s.lv).collect())
}

/// Creates a volume of at least `bytes` (LVM rounds up to whole extents), wiping signatures
/// and zeroing its start, tagged as vmthunder's.
pub fn lvcreate_argv(vg: &str, name: &str, bytes: u64, cluster: &str) -> Vec<String> {
    vec![
        "lvcreate".into(),
        "-y".into(),
        "-Wy".into(),
        "-Zy".into(),
        "--addtag".into(),
        LV_TAG.into(),
        "--addtag".into(),
        cluster_tag(cluster),
        "-n".into(),
        name.into(),
        "-L".into(),
        format!("{bytes}b"),
        vg.into(),
    ]
}

pub fn lvremove_argv(vg: &str, name: &str) -> Vec<String> {
    vec!["lvremove".into(), "-y".into(), format!("{vg}/{name}")]
}

pub fn lvchange_activate_argv(vg: &str, name: &str) -> Vec<String> {
    vec!["lvchange".into(), "-ay".into(), format!("{vg}/{name}")]
}

/// The metadata volume of a cache of `bytes`: dm-cache keeps about 16 bytes per block plus
/// its superblock and space maps; 8 MiB (LVM's minimum) covers caches up to hundreds of GiB
/// at 256 KiB blocks, larger caches get a thousandth of their size.
pub fn metadata_bytes(cache_bytes: u64) -> u64 {
    (cache_bytes / 1000).next_multiple_of(1 << 20).max(8 << 20)
}

fn desired(t: Target<'_>) -> (LvPurpose, u64) {
    match t.desired {
        Desired::Lv(a) => (a.purpose, a.size.0),
        _ => unreachable!("lv attributes"),
    }
}

/// The shim volume under a cache's origin: it would hold writes, and none come.
pub const SHIM_BYTES: u64 = 4 << 20;

/// The sizes wanted for each volume of the resource, in [`lvs_of`] order.
fn wanted(t: Target<'_>) -> Vec<u64> {
    match desired(t) {
        (LvPurpose::Cow, size) => vec![size],
        (LvPurpose::Cache, size) => vec![size, metadata_bytes(size), SHIM_BYTES],
    }
}

impl LinuxStack {
    pub(super) fn list_lvs(&self, host: &str) -> Result<Vec<Lv>, BackendError> {
        let out = self.run(host, &lvs_argv(&self.vg))?;
        parse_lvs(&out).map_err(|e| BackendError::new(format!("on host {host}: {e}")))
    }
}

fn observed(stack: &LinuxStack, names: &[String], found: &[&Lv]) -> Observed {
    let mut o = Observed::new();
    let path = |n: &str| format!("/dev/{}/{n}", stack.vg);
    if let [data, meta, shim] = names {
        o.insert("data".into(), path(data).into());
        o.insert("meta".into(), path(meta).into());
        o.insert("shim".into(), path(shim).into());
    } else {
        o.insert("path".into(), path(&names[0]).into());
    }
    o.insert(
        "uuids".into(),
        found
            .iter()
            .map(|l| l.lv_uuid.clone())
            .collect::<Vec<_>>()
            .into(),
    );
    o.insert("size".into(), found[0].bytes().into());
    o
}

pub(super) fn read(stack: &LinuxStack, t: Target<'_>) -> Result<Option<Observed>, BackendError> {
    let names = lvs_of(&stack.cluster, t.addr);
    let all = stack.list_lvs(&t.addr.host)?;
    let found: Vec<&Lv> = names
        .iter()
        .filter_map(|n| all.iter().find(|l| &l.lv_name == n && l.has_tag(LV_TAG)))
        .collect();
    if found.len() < names.len() {
        return Ok(None);
    }
    Ok(Some(observed(stack, &names, &found)))
}

pub(super) fn create(stack: &LinuxStack, t: Target<'_>) -> Result<Observed, BackendError> {
    let host = &*t.addr.host;
    let names = lvs_of(&stack.cluster, t.addr);
    let all = stack.list_lvs(host)?;
    for (name, bytes) in names.iter().zip(wanted(t)) {
        match all.iter().find(|l| &l.lv_name == name) {
            // A volume left by an earlier, interrupted create of this resource is adopted.
            Some(l) if l.has_tag(LV_TAG) && l.has_tag(&cluster_tag(&stack.cluster)) => {
                if !l.active() {
                    stack.run(host, &lvchange_activate_argv(&stack.vg, name))?;
                }
            }
            Some(_) => {
                return Err(BackendError::new(format!(
                    "{}: a logical volume {}/{name} already exists on host {host} and is not tagged {} and {}: vmthunder does not take over volumes it did not create; rename or remove it",
                    t.addr, stack.vg, LV_TAG, cluster_tag(&stack.cluster)
                )))
            }
            None => {
                stack.run(host, &lvcreate_argv(&stack.vg, name, bytes, &stack.cluster))?;
            }
        }
    }
    read(stack, t)?.ok_or_else(|| {
        BackendError::new(format!(
            "{}: lvcreate succeeded on host {host} but `lvs` does not show the volume",
            t.addr
        ))
    })
}

pub(super) fn delete(stack: &LinuxStack, t: Target<'_>) -> Result<(), BackendError> {
    let host = &*t.addr.host;
    let all = stack.list_lvs(host)?;
    for name in lvs_of(&stack.cluster, t.addr) {
        if all.iter().any(|l| l.lv_name == name && l.has_tag(LV_TAG)) {
            stack.run(host, &lvremove_argv(&stack.vg, &name))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders() {
        assert_eq!(
            lvcreate_argv("vg0", "vmt.c.base.cow0", 1 << 30, "c").join(" "),
            "lvcreate -y -Wy -Zy --addtag vmthunder --addtag vmt.cluster.c -n vmt.c.base.cow0 -L 1073741824b vg0"
        );
        assert_eq!(lvremove_argv("vg0", "x").join(" "), "lvremove -y vg0/x");
        assert_eq!(
            lvchange_activate_argv("vg0", "x").join(" "),
            "lvchange -ay vg0/x"
        );
        assert_eq!(
            lvs_argv("vg0").join(" "),
            "lvs --reportformat json --units b --nosuffix -o lv_uuid,lv_name,vg_name,lv_size,lv_attr,lv_tags vg0"
        );
        assert_eq!(metadata_bytes(64 << 20), 8 << 20);
        assert_eq!(metadata_bytes(100 << 30), 103 << 20);
    }

    /// Captured from lvm2 2.03.16 (Debian 12) in the test guest: `lvs` of a group holding a
    /// cache's three volumes, a copy-on-write volume and a volume of someone else's, and of
    /// an empty group.
    #[test]
    fn parses_lvs_json() {
        let lvs = parse_lvs(include_str!("fixtures/lvs.json")).unwrap();
        let ours: Vec<&Lv> = lvs.iter().filter(|l| l.has_tag(LV_TAG)).collect();
        assert_eq!(ours.len(), 4, "{lvs:#?}");
        let data = lvs
            .iter()
            .find(|l| l.lv_name == "vmt.fx.base.data")
            .unwrap();
        assert_eq!(data.bytes(), 32 << 20);
        assert!(data.active());
        assert!(data.has_tag("vmt.cluster.fx"));
        assert_eq!(data.vg_name, "vg_vmthunder");
        assert_eq!(data.lv_uuid.len(), 38);
        let other = lvs.iter().find(|l| !l.has_tag(LV_TAG)).unwrap();
        assert_eq!(other.lv_name, "other");
        assert!(parse_lvs(include_str!("fixtures/lvs-empty.json"))
            .unwrap()
            .is_empty());
        assert!(parse_lvs("  Volume group \"nope\" not found").is_err());
    }
}
