//! The cluster spec: what a user writes, version 1.
//!
//! Owns the typed spec, its JSON Schema, reading it from a file and validating it. Validation
//! reports every problem at once, each at its JSON path, and an invalid spec never leaves this
//! module. No I/O beyond reading the spec file.

mod check;
mod decode;
mod inputs;
mod json;
mod networks;
mod schema;
pub mod state;

use std::collections::BTreeMap;
use std::path::Path;

use schemars::JsonSchema;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::resource::{Firmware, Kind};
use crate::size::{Rate, Size};

pub(crate) use decode::suggest;
pub use decode::{Diagnostic, Diagnostics};
pub use inputs::Loaded;
pub use networks::{Cidr, MAX_NETWORKS};
pub use state::{StateBackend, StateSpec};

/// The only spec version this build reads.
pub const SPEC_VERSION: u32 = 1;

/// Clones one host runs of one image at the most: each is a QEMU process with at least 16 MiB
/// of guest memory and its own disk, taps and console; a thousand is beyond what one machine
/// runs.
pub const MAX_CLONES_PER_HOST: u32 = 1024;
/// Hosts in one cluster at the most. A plan of 100,000 hosts x 10 clones takes about 4 GiB and
/// 16 s on a 2-core machine (README, plan benchmark); this keeps a plan of any shape well
/// within a large control machine's memory.
pub const MAX_HOSTS: usize = 250_000;
/// Images in one cluster at the most: every host-image pair is a relay with its own port.
pub const MAX_IMAGES: usize = 1024;
/// Clones in one cluster at the most: 3 resources each. A plan of 1M clones (100,000 hosts x
/// 10) peaks at 4.3 GiB (README, plan benchmark), so about 9 GiB at the limit.
pub const MAX_CLONES: u64 = 2_000_000;
/// A file path the spec passes to a command on a host: no control characters (NUL ends a C
/// string, a newline ends a shell line), and no leading `-`, which a command would take for an
/// option.
pub const PATH_PATTERN: &str = r"^[^\x00-\x1f\x7f-][^\x00-\x1f\x7f]*$";

/// A vmthunder cluster: images, hosts, and how the image tree and the clones are laid out.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "vmthunder cluster spec")]
pub struct Spec {
    /// Path or URL of this JSON Schema, for editors. Ignored by vmthunder.
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Spec format version; must be 1.
    #[schemars(range(min = SPEC_VERSION, max = SPEC_VERSION))]
    pub version: u32,
    /// Cluster name: lowercase letters, digits, `-` and `_`. Names the state file.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$"))]
    pub cluster: String,
    /// Which stack builds the resources and how vmthunder reaches the hosts.
    #[serde(default)]
    pub backend: Backend,
    /// Every machine of the cluster: image sources and compute nodes.
    #[schemars(length(min = 1, max = MAX_HOSTS))]
    pub hosts: Vec<Host>,
    /// Base images to distribute, each from its source host down a tree of caches.
    #[schemars(length(min = 1, max = MAX_IMAGES))]
    pub images: Vec<Image>,
    /// Shape of the distribution tree.
    #[serde(default)]
    pub tree: Tree,
    /// The read cache each host keeps per image.
    #[serde(default)]
    pub cache: CacheSpec,
    /// The VM clones booted on every host.
    #[serde(default)]
    pub clones: Clones,
    /// Cluster networks the clones attach to (`clones.networks`): a bridge on every host
    /// with clones on it, joined across hosts by VXLAN, and an address per clone from the
    /// CIDR.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_NETWORKS))]
    pub networks: Vec<Network>,
    /// The provisioning model behind `plan --estimate`, `tree.degree: "auto"` and the sim
    /// stack.
    #[serde(default, skip_serializing_if = "Estimate::is_default")]
    pub estimate: Estimate,
    /// Where the state is kept (a file, or a PostgreSQL database a team shares) and the key
    /// that seals its secrets.
    #[serde(default, skip_serializing_if = "StateSpec::is_default")]
    pub state: StateSpec,
    /// How many clones of each image each host runs, once placed against a state
    /// ([`Spec::allot`]); not part of the document.
    #[serde(skip)]
    #[schemars(skip)]
    pub(crate) allotment: Option<std::sync::Arc<crate::allot::Allotment>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, JsonSchema, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stack {
    /// qcow2 files, qemu-storage-daemon NBD exports, QEMU guests: runs anywhere QEMU runs.
    Qemu,
    /// LVM, iSCSI (tgt/LIO), dm-cache, dm-snapshot and libvirt on real hosts.
    Linux,
    /// Records objects without touching any machine; for planning and benchmarks.
    Sim,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, JsonSchema, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Commands run on this machine.
    Local,
    /// Commands run on each host over SSH.
    Ssh,
}

#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// `qemu` (default), `linux` or `sim`.
    #[serde(default = "Backend::default_stack")]
    pub stack: Stack,
    /// `local` (default) or `ssh`.
    #[serde(default = "Backend::default_transport")]
    pub transport: Transport,
    /// Directory under which each host keeps its files (relative paths are relative to the
    /// working directory of vmthunder; over SSH it must be absolute).
    #[serde(default = "Backend::default_root")]
    #[schemars(regex(pattern = PATH_PATTERN))]
    pub root: String,
    /// With the local transport: run each host in its own network namespace (root only).
    #[serde(default)]
    pub netns: bool,
    /// linux stack: the LVM volume group that holds cache and copy-on-write volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$"))]
    pub volume_group: Option<String>,
    /// linux stack: the iSCSI target implementation: `tgt` (default, tgtadm) or `lio` (the
    /// kernel's, through targetcli).
    #[serde(default)]
    pub iscsi_target: IscsiTarget,
    /// First TCP port of the image exports (NBD on the qemu stack). Each host-image relay
    /// listens on its host's address at this port plus the image's index; hosts that share an
    /// address (all on 127.0.0.1, say) get consecutive ranges in spec order.
    #[serde(default = "Backend::default_base_port")]
    #[schemars(range(min = 1))]
    pub base_port: u16,
    /// qemu stack: how guests run: `auto` (KVM if it boots a guest, else TCG), `kvm`, `tcg`.
    #[serde(default)]
    pub accel: Accel,
    /// qemu stack: every NBD edge with TLS. vmthunder makes a cluster CA and a certificate per
    /// host; each export admits only its children's certificates (and, for the clones' own
    /// export, its host's). `false` serves plain NBD, for a trusted lab network.
    #[serde(default = "Backend::default_tls")]
    pub tls: bool,
    /// ssh transport: settings for every host; a host's own `ssh` overrides them field by
    /// field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<Ssh>,
    /// How far the clones' vCPUs and memory may exceed each host's capacity
    /// (`hosts[].capacity`, or what `plan` discovers).
    #[serde(default, skip_serializing_if = "Overcommit::is_default")]
    pub overcommit: Overcommit,
}

/// Allowed ratios of what a host's clones ask for to what the host has.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Overcommit {
    /// vCPUs per CPU (default 4.0).
    #[serde(default = "Overcommit::default_vcpus")]
    #[schemars(range(min = 0.01, max = 1000.0))]
    pub vcpus: f64,
    /// Guest memory per byte of the host's memory (default 1.0).
    #[serde(default = "Overcommit::default_memory")]
    #[schemars(range(min = 0.01, max = 100.0))]
    pub memory: f64,
}

impl Overcommit {
    fn default_vcpus() -> f64 {
        4.0
    }
    fn default_memory() -> f64 {
        1.0
    }
    fn is_default(&self) -> bool {
        *self == Overcommit::default()
    }
}

impl Default for Overcommit {
    fn default() -> Self {
        Overcommit {
            vcpus: Overcommit::default_vcpus(),
            memory: Overcommit::default_memory(),
        }
    }
}

/// What a host has for clones; a field left out is discovered by `plan` through the
/// transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    /// CPUs (threads) for guests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub vcpus: Option<u32>,
    /// Memory for guests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Size>,
    /// Space for caches and the clones' copy-on-write disks (the qemu stack: under
    /// `backend.root`; the linux stack: in the volume group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<Size>,
}

/// The provisioning model (`plan --estimate`, `tree.degree: "auto"`, the sim stack): each
/// host's link, the working set every clone reads at boot, and seconds per operation.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Estimate {
    /// Each host's link, in each direction, like tc writes it: "1gbit", "200mbit".
    #[serde(default = "Estimate::default_link_rate")]
    pub link_rate: Rate,
    /// The share of the link rate left for data after packet and protocol headers.
    #[serde(default = "Estimate::default_efficiency")]
    #[schemars(range(min = 0.01, max = 1.0))]
    pub efficiency: f64,
    /// One-way latency of a hop between two hosts, in milliseconds.
    #[serde(default = "Estimate::default_latency_ms")]
    #[schemars(range(min = 0.0, max = 60000.0))]
    pub latency_ms: f64,
    /// How much each clone reads at boot [default: 64MiB, at most the image's size].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_set: Option<Size>,
    /// How far each hop of the tree lags behind its parent: the bytes it has in flight (read
    /// ahead, stored and forwarded) before its child gets them. A host at depth d starts its
    /// stream d windows late. 8MiB was measured on the qemu stack (benches/provision.rs).
    #[serde(default = "Estimate::default_hop_window")]
    pub hop_window: Size,
    /// Seconds per create, by resource kind (the domain's includes the guest's boot; its read
    /// of the working set is added by the model), e.g. {"session": 0.3, "domain": 4}. Kinds
    /// not named take the built-in defaults.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub create: BTreeMap<Kind, f64>,
    /// Seconds per in-place update, by resource kind (a session moving to another parent).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub update: BTreeMap<Kind, f64>,
    /// Seconds per delete, by resource kind.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub delete: BTreeMap<Kind, f64>,
}

impl Estimate {
    fn default_link_rate() -> Rate {
        Rate(1e9)
    }
    fn default_efficiency() -> f64 {
        0.95
    }
    fn default_latency_ms() -> f64 {
        0.1
    }
    fn default_hop_window() -> Size {
        Size(8 << 20)
    }
    fn is_default(&self) -> bool {
        self == &Estimate::default()
    }
}

impl Default for Estimate {
    fn default() -> Self {
        Estimate {
            link_rate: Estimate::default_link_rate(),
            efficiency: Estimate::default_efficiency(),
            latency_ms: Estimate::default_latency_ms(),
            working_set: None,
            hop_window: Estimate::default_hop_window(),
            create: BTreeMap::new(),
            update: BTreeMap::new(),
            delete: BTreeMap::new(),
        }
    }
}

/// Which iSCSI target the linux stack exports images with.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, JsonSchema, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum IscsiTarget {
    /// The user-space tgt daemon (`tgtadm`).
    #[default]
    Tgt,
    /// The kernel's LIO target (`targetcli`).
    Lio,
}

/// How QEMU guests are accelerated.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, JsonSchema, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when `/dev/kvm` can run a guest, otherwise TCG.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl Backend {
    fn default_stack() -> Stack {
        Stack::Qemu
    }
    fn default_transport() -> Transport {
        Transport::Local
    }
    fn default_root() -> String {
        ".vmthunder".into()
    }
    fn default_base_port() -> u16 {
        10809
    }
    fn default_tls() -> bool {
        true
    }

    /// Whether the image tree's edges use TLS: the qemu stack with `tls` on (the linux
    /// stack's iSCSI edges use per-child CHAP instead; the sim stack moves no bytes).
    pub fn uses_tls(&self) -> bool {
        self.tls && self.stack == Stack::Qemu
    }
}

impl Default for Backend {
    fn default() -> Self {
        Backend {
            stack: Stack::Qemu,
            transport: Transport::Local,
            root: Backend::default_root(),
            netns: false,
            volume_group: None,
            iscsi_target: IscsiTarget::Tgt,
            base_port: Backend::default_base_port(),
            accel: Accel::Auto,
            tls: true,
            ssh: None,
            overcommit: Overcommit::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// Host name used in resource addresses: lowercase letters, digits, `-` and `_`.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9_-]*$"))]
    pub name: String,
    /// IP address or DNS name the host is reached at and its exports listen on.
    pub address: String,
    /// SSH settings, with `backend.transport: "ssh"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<Ssh>,
    /// What the host has for clones (`plan` discovers what is left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ssh {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Private key file to authenticate with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = PATH_PATTERN))]
    pub identity_file: Option<String>,
    /// A ProxyJump destination (`user@host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jump: Option<String>,
    /// Seconds to wait for a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub connect_timeout: Option<u32>,
    /// `strict` (default: the key must be in known_hosts) or `accept-new`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key_checking: Option<HostKeyChecking>,
    /// The known_hosts file to check host keys against (default: ssh's own,
    /// `~/.ssh/known_hosts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = PATH_PATTERN))]
    pub known_hosts: Option<String>,
    /// An ssh_config file to use instead of `~/.ssh/config` (which is honoured by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = PATH_PATTERN))]
    pub config_file: Option<String>,
    /// How many commands may run at once over the host's one connection (default 8; keep it
    /// below the server's `MaxSessions`, 10 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub max_sessions: Option<u32>,
}

impl Ssh {
    /// These settings, with each unset field taken from `defaults`.
    pub fn or(&self, defaults: &Ssh) -> Ssh {
        Ssh {
            user: self.user.clone().or_else(|| defaults.user.clone()),
            port: self.port.or(defaults.port),
            identity_file: self
                .identity_file
                .clone()
                .or_else(|| defaults.identity_file.clone()),
            jump: self.jump.clone().or_else(|| defaults.jump.clone()),
            connect_timeout: self.connect_timeout.or(defaults.connect_timeout),
            host_key_checking: self.host_key_checking.or(defaults.host_key_checking),
            known_hosts: self
                .known_hosts
                .clone()
                .or_else(|| defaults.known_hosts.clone()),
            config_file: self
                .config_file
                .clone()
                .or_else(|| defaults.config_file.clone()),
            max_sessions: self.max_sessions.or(defaults.max_sessions),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyChecking {
    Strict,
    AcceptNew,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, JsonSchema, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Qcow2,
    Raw,
}

impl ImageFormat {
    /// The name `qemu-img` and QEMU's block layer use.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Raw => "raw",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// Image name used in resource addresses: lowercase letters, digits, `-` and `_`.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9_-]*$"))]
    pub name: String,
    /// The host that holds the image file and roots its tree.
    pub source_host: String,
    /// Path of the image file on the source host.
    #[schemars(regex(pattern = PATH_PATTERN))]
    pub path: String,
    /// `qcow2` (default) or `raw`.
    #[serde(default = "Image::default_format")]
    pub format: ImageFormat,
    /// Virtual size of the image, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Size>,
    /// Hosts that boot clones of this image; default: every host but the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
    /// Clones per host for this image; overrides `clones.per_host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = MAX_CLONES_PER_HOST))]
    pub clones_per_host: Option<u32>,
    /// Clones of this image in all, instead of a count per host: placed over the image's
    /// hosts by `placement` and their free capacity. Clones already placed stay where they
    /// are (adding a host moves none); only a smaller total removes clones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = MAX_CLONES))]
    pub clones: Option<u64>,
    /// How `clones` (the total) is placed: `spread` (default: each new clone goes to the host
    /// with room for the most more) or `pack` (to the fullest host that still has room, so
    /// whole hosts stay free).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Spread>,
    /// The image's content version: lowercase letters, digits, `.` and `-`. The linux stack
    /// names its iSCSI targets after it (`iqn....:<cluster>.<image>.<version>`, default `1`),
    /// so a new version never meets a stale cache or an old session; changing it replaces
    /// every export of the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9.-]*$"))]
    pub version: Option<String>,
    /// Bring the image in from a disk of another format or machine (P2V, V2V): `from` is
    /// converted with `qemu-img convert` into `path` in `format` on the source host, before
    /// anything of the image's tree is built. Its checksum and size are recorded; a changed
    /// file is drift, and its replacement rebuilds the tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<Import>,
}

/// Where an imported image comes from (`images[].import`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Import {
    /// The disk to import: a file or a block device on `from_host`.
    #[schemars(regex(pattern = PATH_PATTERN))]
    pub from: String,
    /// What `from` holds: `raw` (a `dd` image or a block device), `qcow2`, `vmdk`, `vhdx`,
    /// `vpc` (VHD) or `vdi`. Checked against the file before anything is touched.
    pub format: SourceFormat,
    /// The host that holds `from` (the physical machine or the V2V source), streamed from
    /// there to the source host over the transport; default: the image's source host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_host: Option<String>,
}

/// The format of an import's source, as `qemu-img` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    Raw,
    Qcow2,
    Vmdk,
    Vhdx,
    /// VHD (Virtual PC, Hyper-V's first format).
    Vpc,
    Vdi,
}

impl SourceFormat {
    /// The name `qemu-img` uses (`-f`, and `format` in `qemu-img info`).
    pub fn as_str(self) -> &'static str {
        match self {
            SourceFormat::Raw => "raw",
            SourceFormat::Qcow2 => "qcow2",
            SourceFormat::Vmdk => "vmdk",
            SourceFormat::Vhdx => "vhdx",
            SourceFormat::Vpc => "vpc",
            SourceFormat::Vdi => "vdi",
        }
    }
}

impl Image {
    fn default_format() -> ImageFormat {
        ImageFormat::Qcow2
    }

    /// The host an import reads from.
    pub fn import_host(&self) -> Option<&str> {
        self.import
            .as_ref()
            .map(|i| i.from_host.as_deref().unwrap_or(&self.source_host))
    }
}

/// How an image's total of clones is placed over its hosts (`images[].placement`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, JsonSchema, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Spread {
    /// Each new clone goes to the host with room for the most more clones (ties: the host
    /// with fewest of the image's clones, then spec order): equal hosts get equal shares.
    #[default]
    Spread,
    /// Each new clone goes to the host with room for the fewest more clones that still fits
    /// one (ties: spec order): hosts fill one after another.
    Pack,
}

/// A cluster network: one layer-2 segment across the hosts, with addresses from its CIDR.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Network name used in resource addresses (`bridge.node01.lab`): lowercase letters,
    /// digits, `-` and `_`.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9_-]{0,31}$"))]
    pub name: String,
    /// The network's IPv4 prefix, e.g. "10.60.0.0/16" (8 to 30 bits). Its first address is
    /// kept for a gateway; every host with clones on it takes one address for its bridge, and
    /// every clone one, derived from its identity and kept in state.
    #[schemars(regex(pattern = r"^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}$"))]
    pub cidr: String,
    /// The VXLAN network identifier [default: derived from cluster and network name].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16777215))]
    pub vni: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tree {
    /// Children per node of the distribution tree (1 = chain; the source serves at most this
    /// many hosts), or "auto": the degree the model (`estimate`) finds fastest.
    /// With "auto", placed hosts keep their parents when the chosen degree changes (only
    /// new hosts follow it); give a number to re-place them at that degree, in place.
    #[serde(default = "Tree::default_degree")]
    pub degree: Degree,
    /// "auto" (default): when a refresh finds a host's relay gone or the host not answering,
    /// the plan moves its children in place to a healthy host with a free slot, nearest
    /// ancestor first, and resumes the guests that paused on the failed reads. "off": plan
    /// nothing for it (its subtree waits until it is back).
    #[serde(default)]
    pub repair: Repair,
}

/// `tree.repair`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Repair {
    #[default]
    Auto,
    Off,
}

/// A tree degree: a number, or "auto".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Degree {
    Fixed(#[schemars(range(min = 1))] u32),
    Auto(AutoWord),
}

/// The word "auto".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AutoWord {
    Auto,
}

/// A command-line value that is a number of at least 1 (`Some(Some(n))`) or `auto`
/// (`Some(None)`); `None` for anything else.
pub fn count_or_auto(text: &str) -> Option<Option<u32>> {
    if text == "auto" {
        return Some(None);
    }
    text.parse::<u32>().ok().filter(|n| *n >= 1).map(Some)
}

impl Degree {
    pub const AUTO: Degree = Degree::Auto(AutoWord::Auto);

    /// Parses a `--degree` value: a number of at least 1, or "auto".
    pub fn parse(text: &str) -> Result<Degree, String> {
        match count_or_auto(text) {
            Some(None) => Ok(Degree::AUTO),
            Some(Some(d)) => Ok(Degree::Fixed(d)),
            None => Err(format!(
                "invalid degree {text:?}: expected a number of at least 1 or \"auto\""
            )),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Degree {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Degree, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Degree;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of at least 1 or \"auto\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Degree, E> {
                u32::try_from(v)
                    .map(Degree::Fixed)
                    .map_err(|_| E::custom(format!("degree {v} is too large")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Degree, E> {
                Err(E::custom(format!(
                    "invalid degree {v}: expected a number of at least 1 or \"auto\""
                )))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Degree, E> {
                Degree::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl std::fmt::Display for Degree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Degree::Fixed(d) => write!(f, "{d}"),
            Degree::Auto(_) => f.write_str("auto"),
        }
    }
}

impl Tree {
    fn default_degree() -> Degree {
        Degree::Fixed(2)
    }
}

impl Default for Tree {
    fn default() -> Self {
        Tree {
            degree: Tree::default_degree(),
            repair: Repair::Auto,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// Space for each host's read cache of an image.
    #[serde(default = "CacheSpec::default_size")]
    pub size: Size,
}

impl CacheSpec {
    fn default_size() -> Size {
        Size(1 << 30)
    }
}

impl Default for CacheSpec {
    fn default() -> Self {
        CacheSpec {
            size: CacheSpec::default_size(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Clones {
    /// Clones per host and image (an image's `clones_per_host` overrides it).
    #[serde(default = "Clones::default_per_host")]
    #[schemars(range(max = MAX_CLONES_PER_HOST))]
    pub per_host: u32,
    /// Name template for each clone's VM: `{cluster}`, `{image}`, `{host}` and `{n}` (0-based).
    #[serde(default = "Clones::default_name")]
    pub name: String,
    #[serde(default = "Clones::default_vcpus")]
    #[schemars(range(min = 1, max = 1024))]
    pub vcpus: u32,
    #[serde(default = "Clones::default_memory")]
    pub memory: Size,
    /// Copy-on-write space for each clone's writes.
    #[serde(default = "Clones::default_cow_size")]
    pub cow_size: Size,
    /// Direct kernel boot of each clone (the qemu stack's guests boot this way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<Boot>,
    /// Wait for each guest to print a line on its serial console before its domain counts as
    /// created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<Ready>,
    /// linux stack: where each clone's NIC goes: `bridge:NAME` (a host bridge) or
    /// `network:NAME` (a libvirt network). Default: QEMU's user-mode networking. Cluster
    /// networks (`networks`) are attached with `networks` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(bridge|network):[A-Za-z0-9_.-]+$"))]
    pub network: Option<String>,
    /// Cluster networks (`networks[].name`) each clone gets a NIC on, in this order. Without
    /// any, a clone has one NIC on QEMU's user-mode network, which reaches nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub networks: Vec<String>,
    /// Without `boot`, what boots the clone's own disk: `bios` (default, SeaBIOS) or `uefi`
    /// (OVMF, Debian's `ovmf` package; each clone keeps its own NVRAM variables file).
    #[serde(default, skip_serializing_if = "Firmware::is_bios")]
    pub firmware: Firmware,
    /// A cloud-init NoCloud seed per clone (a `cidata` ISO attached read-only): meta-data
    /// with the clone's UUID and name, the user data below, and a network-config with its
    /// addresses. Given `{}`, or with `ssh_authorized_keys`, every clone gets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<CloudInit>,
    /// Public key files (`id_ed25519.pub`) authorized for `ssh_user` in every clone,
    /// through cloud-init. `vmthunder ssh` logs in with the first one's private key (the same
    /// path without `.pub`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(regex(pattern = PATH_PATTERN)))]
    pub ssh_authorized_keys: Vec<String>,
    /// The user cloud-init creates for logins (passwordless sudo, the keys above).
    #[serde(default = "Clones::default_ssh_user")]
    #[schemars(regex(pattern = r"^[a-z_][a-z0-9_-]{0,31}$"))]
    pub ssh_user: String,
    /// Refuse any plan that destroys a clone's writes (its copy-on-write disk deleted or
    /// replaced) while the clone stays in the spec, naming the addresses (Terraform's
    /// `lifecycle.prevent_destroy`). Plans show such changes either way.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prevent_destroy: bool,
    /// The files above, read when the spec is loaded.
    #[serde(skip)]
    #[schemars(skip)]
    pub loaded: Loaded,
}

/// What cloud-init gets besides identity and addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, JsonSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudInit {
    /// A user-data file (`#cloud-config` YAML, a script, or anything cloud-init takes) for
    /// every clone; the login user and keys are merged in beside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = PATH_PATTERN))]
    pub user_data: Option<String>,
}

/// A kernel, an initramfs and a command line for each clone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    /// Kernel image path on each host.
    #[schemars(regex(pattern = PATH_PATTERN))]
    pub kernel: String,
    /// Initramfs path on each host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = PATH_PATTERN))]
    pub initrd: Option<String>,
    /// Kernel command line; `{name}` becomes the clone's name.
    #[serde(default = "Boot::default_append")]
    pub append: String,
}

impl Boot {
    fn default_append() -> String {
        "console=ttyS0".into()
    }
}

/// When a booted guest counts as up: a console line, a TCP port that answers, or both.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ready {
    /// Text a console line must contain, e.g. `VMTHUNDER-READY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<String>,
    /// A TCP port on the clone's first network address that must accept a connection, e.g.
    /// 22 (needs `clones.networks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tcp: Option<u16>,
    /// How long to wait, in seconds (at most a day).
    #[serde(default = "Ready::default_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_secs: u64,
}

impl Ready {
    fn default_timeout() -> u64 {
        600
    }
}

impl Clones {
    fn default_per_host() -> u32 {
        1
    }
    fn default_name() -> String {
        "{image}-{host}-{n}".into()
    }
    fn default_vcpus() -> u32 {
        1
    }
    fn default_memory() -> Size {
        Size(256 << 20)
    }
    fn default_cow_size() -> Size {
        Size(1 << 30)
    }
    fn default_ssh_user() -> String {
        "vmthunder".into()
    }

    /// Whether every clone gets a cloud-init seed.
    pub fn seeded(&self) -> bool {
        self.cloud_init.is_some() || !self.ssh_authorized_keys.is_empty()
    }
}

impl Default for Clones {
    fn default() -> Self {
        Clones {
            per_host: Clones::default_per_host(),
            name: Clones::default_name(),
            vcpus: Clones::default_vcpus(),
            memory: Clones::default_memory(),
            cow_size: Clones::default_cow_size(),
            boot: None,
            ready: None,
            network: None,
            networks: Vec::new(),
            firmware: Firmware::Bios,
            cloud_init: None,
            ssh_authorized_keys: Vec::new(),
            ssh_user: Clones::default_ssh_user(),
            prevent_destroy: false,
            loaded: Loaded::default(),
        }
    }
}

/// Why a spec could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("failed to read spec `{path}`")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("spec `{path}` is not valid JSON: {source}")]
    Syntax {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("spec `{path}` is invalid ({} error{})", .diagnostics.len(), if .diagnostics.len() == 1 { "" } else { "s" })]
    Invalid {
        path: String,
        diagnostics: Diagnostics,
    },
}

impl Spec {
    /// Reads and validates a spec file.
    pub fn load(path: &Path) -> Result<Spec, SpecError> {
        let shown = path.display().to_string();
        let text = crate::text::read_regular(path).map_err(|source| SpecError::Read {
            path: shown.clone(),
            source,
        })?;
        Spec::from_slice(&text).map_err(|e| match e {
            SpecError::Syntax { source, .. } => SpecError::Syntax {
                path: shown,
                source,
            },
            SpecError::Invalid { diagnostics, .. } => SpecError::Invalid {
                path: shown,
                diagnostics,
            },
            other => other,
        })
    }

    /// Parses and validates a spec from JSON bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Spec, SpecError> {
        let (value, duplicates) = json::parse(bytes).map_err(|source| SpecError::Syntax {
            path: "<input>".into(),
            source,
        })?;
        let mut diags = Diagnostics::default();
        for path in duplicates {
            diags.push(
                path,
                "this key is given twice in its object; give it once (JSON readers disagree on which one counts)",
            );
        }
        Spec::from_value_with(&value, diags)
    }

    /// Validates a parsed JSON document.
    pub fn from_value(value: &serde_json::Value) -> Result<Spec, SpecError> {
        Spec::from_value_with(value, Diagnostics::default())
    }

    fn from_value_with(
        value: &serde_json::Value,
        mut diags: Diagnostics,
    ) -> Result<Spec, SpecError> {
        let draft = decode::decode(value, &mut diags);
        check::check(&draft, &mut diags);
        networks::check(&draft, &mut diags);
        let draft = match draft.finish() {
            Some(mut spec) if diags.is_empty() => {
                inputs::load(&mut spec, &mut diags);
                crate::capacity::check_declared(&spec, &mut diags);
                Some(spec)
            }
            other => other,
        };
        match draft {
            Some(spec) if diags.is_empty() && spec.uses_model() => {
                match crate::model::check(&spec) {
                    None => Ok(spec),
                    Some(d) => Err(SpecError::Invalid {
                        path: "<input>".into(),
                        diagnostics: Diagnostics(vec![d]),
                    }),
                }
            }
            Some(spec) if diags.is_empty() => Ok(spec),
            _ => Err(SpecError::Invalid {
                path: "<input>".into(),
                diagnostics: diags,
            }),
        }
    }

    /// Whether the provisioning model times anything this spec does: the sim stack sleeps its
    /// durations and `"auto"` picks a degree by them. (`plan --estimate` forecasts any spec.)
    fn uses_model(&self) -> bool {
        self.backend.stack == Stack::Sim
            || self.tree.degree == Degree::AUTO
            || !self.estimate.is_default()
    }

    /// SHA-256 of the canonical form, so formatting and key order do not change it.
    pub fn digest(&self) -> String {
        let bytes = serde_json::to_vec(self).expect("a spec always serializes");
        format!("sha256:{:x}", Sha256::digest(bytes))
    }

    /// A host's SSH settings: its own, then `backend.ssh`'s.
    pub fn host_ssh(&self, host: &Host) -> Ssh {
        let defaults = self.backend.ssh.clone().unwrap_or_default();
        host.ssh
            .as_ref()
            .map_or(defaults.clone(), |s| s.or(&defaults))
    }

    /// Each host's position in `hosts`, by name.
    pub fn host_positions(&self) -> std::collections::HashMap<&str, usize> {
        self.hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (h.name.as_str(), i))
            .collect()
    }

    /// Hosts that run clones of `image`, in spec order.
    pub fn image_hosts<'a>(&'a self, image: &'a Image) -> Vec<&'a str> {
        match &image.hosts {
            Some(list) => list.iter().map(String::as_str).collect(),
            None => self
                .hosts
                .iter()
                .map(|h| h.name.as_str())
                .filter(|h| *h != image.source_host)
                .collect(),
        }
    }

    /// Clones per host of an image that gives no total (`images[].clones`).
    pub fn clones_per_host(&self, image: &Image) -> u32 {
        image.clones_per_host.unwrap_or(self.clones.per_host)
    }

    /// Places every image's total (`images[].clones`) against the recorded state `prior`,
    /// with what the hosts were `found` to have, and keeps the result: the graph, the capacity
    /// table and the model then count those clones.
    pub fn allot(
        &mut self,
        prior: &crate::state::State,
        found: &crate::capacity::Found,
    ) -> Result<(), Vec<crate::allot::AllotError>> {
        self.allotment = None;
        let a = crate::allot::Allotment::of(self, prior, found)?;
        self.allotment = Some(std::sync::Arc::new(a));
        Ok(())
    }

    /// The clones of each image on each host: as [`Spec::allot`] placed them, else placed
    /// now against `prior` and the declared capacities alone.
    pub fn allotment(
        &self,
        prior: &crate::state::State,
    ) -> Result<std::sync::Arc<crate::allot::Allotment>, Vec<crate::allot::AllotError>> {
        match &self.allotment {
            Some(a) => Ok(a.clone()),
            None => crate::allot::Allotment::of(self, prior, &Default::default())
                .map(std::sync::Arc::new),
        }
    }

    /// The network named `name`.
    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }

    /// The VM name of clone `n` of `image` on `host`.
    pub fn clone_name(&self, image: &str, host: &str, n: u32) -> String {
        render_template(&self.clones.name, &self.cluster, image, host, n)
    }

    /// The JSON Schema of the spec, as checked in at `schemas/cluster.schema.json`.
    pub fn json_schema() -> serde_json::Value {
        let schema = schemars::schema_for!(Spec);
        serde_json::to_value(schema).expect("schema serializes")
    }
}

/// Placeholders a clone name template may use.
pub const TEMPLATE_FIELDS: [&str; 4] = ["cluster", "image", "host", "n"];

pub(crate) fn render_template(t: &str, cluster: &str, image: &str, host: &str, n: u32) -> String {
    let mut out = String::with_capacity(t.len() + host.len() + image.len());
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        match &after[..close] {
            "cluster" => out.push_str(cluster),
            "image" => out.push_str(image),
            "host" => out.push_str(host),
            "n" => {
                use std::fmt::Write;
                let _ = write!(out, "{n}");
            }
            other => {
                out.push('{');
                out.push_str(other);
                out.push('}');
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests;
