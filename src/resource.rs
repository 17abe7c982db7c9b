//! Resources: their kinds, their addresses and the attributes a spec asks of them.
//!
//! Plain data shared by the graph, the state and the plan. Desired attributes are typed per
//! kind; every one of them forces replacement when it changes (there are no in-place updates of
//! block devices or exports).
//!
//! Most addresses name an image (`cache.node07.base`); a network's resources name the network
//! in that place instead (`bridge.node07.lab`).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::size::Size;
use crate::spec::ImageFormat;

/// What a resource is. Ordered bottom-up (creation order on one host), then the TLS material
/// added later (kept last, so that older states sort as they did).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Space for a cache or a clone's copy-on-write data.
    Lv,
    /// A login to the parent's export of the image.
    Session,
    /// A local read cache over the session.
    Cache,
    /// A read-only export of the image to children.
    Target,
    /// A copy-on-write disk per clone.
    Snapshot,
    /// A clone's cloud-init NoCloud seed (identity, user data, address).
    Seed,
    /// A host's Linux bridge of a cluster network (the clones' taps join it).
    Bridge,
    /// A host's VXLAN device joining its bridge to the other hosts' (unicast, head-end
    /// replication).
    Vxlan,
    /// The VM of a clone.
    Domain,
    /// The cluster's certificate authority for NBD TLS (`ca.<cluster>.tls`): a key and a
    /// self-signed certificate kept in state; no host holds its key.
    Ca,
    /// A host's TLS key and certificate (`cert.<host>.tls`), signed by the cluster CA, in a
    /// root-only directory on the host: its relays serve and connect with it.
    Cert,
    /// An image brought in by `images[].import`: the source converted into the image's file
    /// on its source host (P2V, V2V). Kept last, like the TLS kinds, for older states' order.
    Image,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::Lv,
        Kind::Session,
        Kind::Cache,
        Kind::Target,
        Kind::Snapshot,
        Kind::Seed,
        Kind::Bridge,
        Kind::Vxlan,
        Kind::Domain,
        Kind::Ca,
        Kind::Cert,
        Kind::Image,
    ];

    /// Whether the address's middle part names a network, not an image.
    pub fn of_network(self) -> bool {
        matches!(self, Kind::Bridge | Kind::Vxlan)
    }

    /// Whether the address's middle part is [`TLS`], not an image.
    pub fn of_tls(self) -> bool {
        matches!(self, Kind::Ca | Kind::Cert)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Lv => "lv",
            Kind::Session => "session",
            Kind::Cache => "cache",
            Kind::Target => "target",
            Kind::Snapshot => "snapshot",
            Kind::Seed => "seed",
            Kind::Bridge => "bridge",
            Kind::Vxlan => "vxlan",
            Kind::Domain => "domain",
            Kind::Ca => "ca",
            Kind::Cert => "cert",
            Kind::Image => "image",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("unknown resource kind {s:?} (expected lv, session, cache, target, snapshot, seed, bridge, vxlan, domain, ca, cert or image)")
            })
    }
}

/// A resource address: `<kind>.<host>.<image>[.<n>]`, e.g. `snapshot.node07.base.3`.
///
/// Host and image names are shared, so the hundreds of thousands of addresses of a large
/// cluster cost no string allocations of their own.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr {
    pub kind: Kind,
    pub host: Arc<str>,
    pub image: Arc<str>,
    pub n: Option<u32>,
}

impl Addr {
    pub fn new(kind: Kind, host: &Arc<str>, image: &Arc<str>, n: Option<u32>) -> Addr {
        Addr {
            kind,
            host: host.clone(),
            image: image.clone(),
            n,
        }
    }

    /// Whether `pattern` selects this address: the whole address, or a prefix of whole
    /// components (`domain.node07` selects every domain on node07).
    pub fn matches(&self, pattern: &str) -> bool {
        let full = self.to_string();
        full == pattern
            || (full.starts_with(pattern) && full.as_bytes().get(pattern.len()) == Some(&b'.'))
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.kind, self.host, self.image)?;
        if let Some(n) = self.n {
            write!(f, ".{n}")?;
        }
        Ok(())
    }
}

impl FromStr for Addr {
    type Err = String;
    fn from_str(s: &str) -> Result<Addr, String> {
        let parts: Vec<&str> = s.split('.').collect();
        let bad = || {
            format!("invalid resource address {s:?}: expected <kind>.<host>.<image>[.<n>], like session.node07.base or domain.node07.base.0")
        };
        if !(3..=4).contains(&parts.len()) || parts[1].is_empty() || parts[2].is_empty() {
            return Err(bad());
        }
        let kind: Kind = parts[0].parse()?;
        let n = match parts.get(3) {
            Some(n) => Some(n.parse().map_err(|_| bad())?),
            None => None,
        };
        Ok(Addr {
            kind,
            host: parts[1].into(),
            image: parts[2].into(),
            n,
        })
    }
}

impl Serialize for Addr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Addr, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Addr {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Address".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A resource address: <kind>.<host>.<image>[.<n>]",
            "pattern": "^(lv|session|cache|target|snapshot|seed|bridge|vxlan|domain|ca|cert|image)\\.[a-z0-9][a-z0-9_-]*\\.[a-z0-9][a-z0-9_-]*(\\.[0-9]+)?$"
        })
    }
}

/// What an `lv` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LvPurpose {
    Cache,
    Cow,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LvAttrs {
    pub purpose: LvPurpose,
    pub size: Size,
}

/// What a `target` exports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "origin", rename_all = "lowercase", deny_unknown_fields)]
pub enum TargetAttrs {
    /// The base image file on the source host.
    Image {
        path: String,
        format: ImageFormat,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<Size>,
        /// Where the export listens.
        address: String,
        port: u16,
        /// The image's content version (`images[].version`), when the spec gives one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
        /// Serves with TLS (`backend.tls`), admitting only `clients`.
        #[serde(default, skip_serializing_if = "is_false")]
        tls: bool,
        /// With TLS: the hosts whose certificates the export admits (its children).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        clients: Vec<String>,
    },
    /// The host's cache of the image, re-exported to its children.
    Cache {
        address: String,
        port: u16,
        #[serde(default, skip_serializing_if = "is_false")]
        tls: bool,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        clients: Vec<String>,
    },
}

impl TargetAttrs {
    /// The hosts a TLS export admits.
    pub fn clients(&self) -> &[String] {
        match self {
            TargetAttrs::Image { clients, .. } | TargetAttrs::Cache { clients, .. } => clients,
        }
    }

    pub fn tls(&self) -> bool {
        match self {
            TargetAttrs::Image { tls, .. } | TargetAttrs::Cache { tls, .. } => *tls,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionAttrs {
    /// The host whose target this session logs in to.
    pub parent: String,
    /// The parent's address, where its export listens.
    pub parent_address: String,
    /// The port of the parent's export.
    pub parent_port: u16,
    /// Connects with TLS: presents the host's certificate and checks the parent's against
    /// the cluster CA (`backend.tls`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub tls: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheAttrs {
    pub size: Size,
    /// Where the host's image relay listens (its clones read the cache there).
    pub address: String,
    pub port: u16,
    /// The clones read it over TLS with their host's own certificate, the only one it
    /// admits (`backend.tls`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub tls: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotAttrs {
    pub cow_size: Size,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DomainAttrs {
    pub name: String,
    pub uuid: String,
    pub mac: String,
    pub vcpus: u32,
    pub memory: Size,
    /// Direct kernel boot, when the spec gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<crate::spec::Boot>,
    /// The NIC's `bridge:NAME` or `network:NAME` (linux stack), when the spec gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The firmware that boots the clone's own disk when there is no `boot`: BIOS unless
    /// `uefi`.
    #[serde(default, skip_serializing_if = "Firmware::is_bios")]
    pub firmware: Firmware,
    /// One NIC per cluster network (`clones.networks`), in spec order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<Nic>,
}

/// A clone's NIC on a cluster network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    /// The network's name (`networks[].name`).
    pub network: String,
    /// The host's bridge device the NIC's tap joins.
    pub bridge: String,
    pub mac: String,
    /// The clone's address with the network's prefix length, e.g. `10.60.3.7/16`.
    pub address: String,
}

/// How a clone without a kernel of its own boots its disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// SeaBIOS, the image's own BIOS bootloader.
    #[default]
    Bios,
    /// OVMF, the image's EFI bootloader; each clone keeps its own NVRAM variables.
    Uefi,
}

impl Firmware {
    pub fn is_bios(&self) -> bool {
        *self == Firmware::Bios
    }
}

/// A clone's cloud-init NoCloud seed: the three documents it holds, rendered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SeedAttrs {
    /// `meta-data`: instance-id (the clone's UUID) and local-hostname (its name).
    pub meta_data: String,
    /// `user-data`: the spec's `clones.cloud_init.user_data` with the login user and
    /// `clones.ssh_authorized_keys` merged in.
    pub user_data: String,
    /// `network-config` (version 2): the clone's static addresses, by MAC; absent without
    /// networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_config: Option<String>,
}

/// A host's bridge of a cluster network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BridgeAttrs {
    /// The device name (at most 15 characters), the same on every host.
    pub device: String,
    /// The host's own address on the bridge (so the host reaches its clones), with prefix.
    pub address: String,
}

/// A host's VXLAN device of a cluster network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VxlanAttrs {
    pub device: String,
    /// The bridge it is a port of.
    pub bridge: String,
    /// The VXLAN network identifier, from cluster and network.
    pub vni: u32,
    /// The host's underlay address (its spec address).
    pub local: String,
    /// UDP port (4789, IANA's).
    pub port: u16,
    /// The underlay addresses of the other hosts on the network: every broadcast and unknown
    /// frame is sent to each (head-end replication; no multicast needed).
    pub remotes: Vec<String>,
}

/// The cluster CA. Its key and certificate are made on the control machine and observed
/// (the key sealed in state when the state has a key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CaAttrs {
    /// The CA certificate's common name.
    pub name: String,
    /// Days the certificate is valid from its creation.
    pub days: u32,
}

/// A host's TLS identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertAttrs {
    /// The certificate's subject, which exports' authorization lists match: `CN=<host>`.
    pub subject: String,
    /// The host's address, in the certificate's subject alternative names beside its name.
    pub address: String,
    /// Days the certificate is valid from its creation.
    pub days: u32,
}

/// An imported image (`images[].import`): where it comes from and what it becomes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageAttrs {
    /// The source: a file or block device on `from_host`.
    pub from: String,
    pub source_format: crate::spec::SourceFormat,
    /// The host that holds the source, when it is not the image's source host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_host: Option<String>,
    /// The image file written on the source host.
    pub path: String,
    pub format: ImageFormat,
    /// The image's virtual size (`images[].size`): a smaller source is padded to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Size>,
}

/// The observed attributes that tell an object's contents: a refresh that finds one of them
/// changed marks the object [`crate::state::Status::Changed`], and the plan replaces it and
/// everything built on it.
pub fn content_attrs(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Image => &["bytes", "sha256"],
        _ => &[],
    }
}

/// The middle part of the addresses of the TLS resources.
pub const TLS: &str = "tls";

/// Desired attributes, one variant per kind. Serialized as the bare attribute object; the
/// kind beside it says which variant it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Desired {
    Lv(LvAttrs),
    Session(SessionAttrs),
    Cache(CacheAttrs),
    Target(TargetAttrs),
    Snapshot(SnapshotAttrs),
    Seed(SeedAttrs),
    Bridge(BridgeAttrs),
    Vxlan(VxlanAttrs),
    Domain(DomainAttrs),
    Ca(CaAttrs),
    Cert(CertAttrs),
    Image(ImageAttrs),
}

impl Desired {
    pub fn kind(&self) -> Kind {
        match self {
            Desired::Lv(_) => Kind::Lv,
            Desired::Session(_) => Kind::Session,
            Desired::Cache(_) => Kind::Cache,
            Desired::Target(_) => Kind::Target,
            Desired::Snapshot(_) => Kind::Snapshot,
            Desired::Seed(_) => Kind::Seed,
            Desired::Bridge(_) => Kind::Bridge,
            Desired::Vxlan(_) => Kind::Vxlan,
            Desired::Domain(_) => Kind::Domain,
            Desired::Ca(_) => Kind::Ca,
            Desired::Cert(_) => Kind::Cert,
            Desired::Image(_) => Kind::Image,
        }
    }

    /// Reads the attribute object of a resource of `kind`.
    pub fn parse(kind: Kind, json: &str) -> Result<Desired, serde_json::Error> {
        Ok(match kind {
            Kind::Lv => Desired::Lv(serde_json::from_str(json)?),
            Kind::Session => Desired::Session(serde_json::from_str(json)?),
            Kind::Cache => Desired::Cache(serde_json::from_str(json)?),
            Kind::Target => Desired::Target(serde_json::from_str(json)?),
            Kind::Snapshot => Desired::Snapshot(serde_json::from_str(json)?),
            Kind::Seed => Desired::Seed(serde_json::from_str(json)?),
            Kind::Bridge => Desired::Bridge(serde_json::from_str(json)?),
            Kind::Vxlan => Desired::Vxlan(serde_json::from_str(json)?),
            Kind::Domain => Desired::Domain(serde_json::from_str(json)?),
            Kind::Ca => Desired::Ca(serde_json::from_str(json)?),
            Kind::Cert => Desired::Cert(serde_json::from_str(json)?),
            Kind::Image => Desired::Image(serde_json::from_str(json)?),
        })
    }

    /// The attributes as a JSON object, for diffs and machine output.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("attributes serialize")
    }
}

impl Serialize for Desired {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Desired::Lv(a) => a.serialize(s),
            Desired::Session(a) => a.serialize(s),
            Desired::Cache(a) => a.serialize(s),
            Desired::Target(a) => a.serialize(s),
            Desired::Snapshot(a) => a.serialize(s),
            Desired::Seed(a) => a.serialize(s),
            Desired::Bridge(a) => a.serialize(s),
            Desired::Vxlan(a) => a.serialize(s),
            Desired::Domain(a) => a.serialize(s),
            Desired::Ca(a) => a.serialize(s),
            Desired::Cert(a) => a.serialize(s),
            Desired::Image(a) => a.serialize(s),
        }
    }
}

impl JsonSchema for Desired {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "DesiredAttributes".into()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let variants = [
            g.subschema_for::<LvAttrs>(),
            g.subschema_for::<SessionAttrs>(),
            g.subschema_for::<CacheAttrs>(),
            g.subschema_for::<TargetAttrs>(),
            g.subschema_for::<SnapshotAttrs>(),
            g.subschema_for::<SeedAttrs>(),
            g.subschema_for::<BridgeAttrs>(),
            g.subschema_for::<VxlanAttrs>(),
            g.subschema_for::<DomainAttrs>(),
            g.subschema_for::<CaAttrs>(),
            g.subschema_for::<CertAttrs>(),
            g.subschema_for::<ImageAttrs>(),
        ];
        schemars::json_schema!({
            "description": "The attributes of a resource; which shape applies depends on its kind.",
            "anyOf": variants
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip() {
        for s in [
            "session.node07.base",
            "snapshot.node07.base.3",
            "lv.img-0.my_image.0",
        ] {
            let a: Addr = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
        for bad in [
            "",
            "session",
            "vm.node1.base",
            "lv.node1",
            "lv.node1.base.x",
            "lv..base",
        ] {
            assert!(bad.parse::<Addr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn prefix_matching_is_by_component() {
        let a: Addr = "domain.node07.base.3".parse().unwrap();
        assert!(a.matches("domain.node07.base.3"));
        assert!(a.matches("domain.node07"));
        assert!(a.matches("domain"));
        assert!(!a.matches("domain.node0"));
        assert!(!a.matches("domain.node07.base.30"));
    }

    #[test]
    fn desired_round_trips_through_its_kind() {
        let d = Desired::Target(TargetAttrs::Image {
            path: "images/base.qcow2".into(),
            format: ImageFormat::Qcow2,
            size: Some(Size(1 << 30)),
            address: "10.0.0.1".into(),
            port: 10809,
            version: None,
            tls: false,
            clients: vec![],
        });
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(
            json,
            r#"{"origin":"image","path":"images/base.qcow2","format":"qcow2","size":"1GiB","address":"10.0.0.1","port":10809}"#
        );
        assert_eq!(Desired::parse(Kind::Target, &json).unwrap(), d);
        assert!(Desired::parse(Kind::Lv, &json).is_err());
    }
}
