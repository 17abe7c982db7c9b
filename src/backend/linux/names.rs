//! The names vmthunder gives the objects of the linux stack. Every object is found again by
//! these names (and the tags and UUIDs beside them), never by guessing: a cluster's objects
//! never collide with another cluster's on a shared host, nor with what an administrator made.

use crate::resource::Addr;

/// The IQN naming authority of vmthunder's targets (RFC 3720: `iqn.YYYY-MM.<reversed domain>`).
pub const IQN_AUTHORITY: &str = "iqn.2014-12.org.vmthunder";
/// The tag on every logical volume vmthunder creates.
pub const LV_TAG: &str = "vmthunder";
/// The LUN tgt exports the image as (LUN 0 is its controller).
pub const TGT_LUN: u32 = 1;

/// The tag naming the cluster a logical volume belongs to.
pub fn cluster_tag(cluster: &str) -> String {
    format!("vmt.cluster.{cluster}")
}

/// `vmt.<cluster>.<image>.<what>`: a logical volume's name (LVM allows `.`; names ending in
/// `_cdata`, `_cmeta` and the like are reserved, so the parts use `.`).
pub fn lv_name(cluster: &str, image: &str, what: &str) -> String {
    format!("vmt.{cluster}.{image}.{what}")
}

/// The logical volumes behind an `lv` resource: a cache's data, metadata and shim volumes
/// (see [`origin_name`]), or a clone's copy-on-write volume.
pub fn lvs_of(cluster: &str, addr: &Addr) -> Vec<String> {
    match addr.n {
        Some(n) => vec![lv_name(cluster, &addr.image, &format!("cow{n}"))],
        None => ["data", "meta", "shim"]
            .iter()
            .map(|w| lv_name(cluster, &addr.image, w))
            .collect(),
    }
}

/// The writable face of a session's read-only disk that a cache is built on, and its UUID.
///
/// dm-cache opens its origin for writing, always, and the kernel refuses that on a disk whose
/// target reports it write-protected (`readonly=1`), with EROFS. A transient dm-snapshot
/// opens its origin read-only and is itself writable: the cache goes over it. Nothing ever
/// writes to it (the cache is writethrough, its users only read): a stray write would land in
/// the snapshot's small shim volume, never on the image.
pub fn origin_name(cluster: &str, image: &str) -> (String, String) {
    with_uuid(format!("vmt.{cluster}.{image}.origin"))
}

/// The `linear` wrapper of a relay's cache that LIO exports (it claims a block device
/// exclusively, and the clones' snapshots hold the cache), and its UUID.
pub fn export_name(cluster: &str, image: &str) -> (String, String) {
    with_uuid(format!("vmt.{cluster}.{image}.export"))
}

/// A device-mapper device: its name and its UUID.
pub fn dm_name(cluster: &str, addr: &Addr) -> (String, String) {
    with_uuid(match addr.n {
        Some(n) => format!("vmt.{cluster}.{}.snap{n}", addr.image),
        None => format!("vmt.{cluster}.{}.cache", addr.image),
    })
}

/// A device-mapper name and the UUID vmthunder gives it: `VMT-` and the name.
fn with_uuid(name: String) -> (String, String) {
    let uuid = format!("VMT-{name}");
    (name, uuid)
}

/// An IQN part: IQNs hold lowercase letters, digits, `.`, `-` and `:` only.
fn iqn_part(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '.' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect()
}

/// The target name of an image version: the same on the source and on every relay, since
/// each exports the same bytes.
pub fn iqn(cluster: &str, image: &str, version: &str) -> String {
    format!(
        "{IQN_AUTHORITY}:{}.{}.{}",
        iqn_part(cluster),
        iqn_part(image),
        iqn_part(version)
    )
}

/// The CHAP user a child host logs in to its parent's target of an image with.
pub fn chap_user(cluster: &str, image: &str, child: &str) -> String {
    format!("vmt.{cluster}.{image}.{child}")
}

/// Where udev links the LUN of a session: `/dev/disk/by-path/ip-<portal>-iscsi-<iqn>-lun-<n>`.
pub fn by_path(portal: &str, iqn: &str, lun: u32) -> String {
    format!("/dev/disk/by-path/ip-{portal}-iscsi-{iqn}-lun-{lun}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_derived_from_the_address() {
        let cow: Addr = "lv.node01.base.3".parse().unwrap();
        assert_eq!(lvs_of("rack1", &cow), ["vmt.rack1.base.cow3"]);
        let cache: Addr = "lv.node01.base".parse().unwrap();
        assert_eq!(
            lvs_of("rack1", &cache),
            [
                "vmt.rack1.base.data",
                "vmt.rack1.base.meta",
                "vmt.rack1.base.shim"
            ]
        );
        assert_eq!(origin_name("rack1", "base").0, "vmt.rack1.base.origin");
        let snap: Addr = "snapshot.node01.base.3".parse().unwrap();
        assert_eq!(
            dm_name("rack1", &snap),
            (
                "vmt.rack1.base.snap3".to_string(),
                "VMT-vmt.rack1.base.snap3".to_string()
            )
        );
        assert_eq!(
            iqn("lab_1", "centos", "7.9-2"),
            "iqn.2014-12.org.vmthunder:lab-1.centos.7.9-2"
        );
        assert_eq!(
            by_path("10.0.0.10:3260", &iqn("c", "i", "1"), 1),
            "/dev/disk/by-path/ip-10.0.0.10:3260-iscsi-iqn.2014-12.org.vmthunder:c.i.1-lun-1"
        );
    }
}
