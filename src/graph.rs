//! The desired resource DAG: what a spec asks for, given where the tree was placed before.
//!
//! Owns expanding a validated spec into resources with typed attributes and dependency edges,
//! the clone identities (name, UUID, MAC), and the DOT rendering. Resources are emitted in a
//! topological order by construction (a parent's target before its children's sessions), so no
//! sort is needed; cost is linear in the number of resources.

use std::collections::BTreeMap;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::model;
use crate::resource::{
    Addr, CacheAttrs, Desired, DomainAttrs, Kind, LvAttrs, LvPurpose, SessionAttrs, SnapshotAttrs,
    TargetAttrs,
};
use crate::spec::{Spec, Stack};
use crate::state::{Placement, State};

/// Namespace of clone UUIDs (UUIDv5 of `cluster/image/host/n`).
const CLONE_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_0b7e_2d4a_4c1e_9a53_8e0f_7b1d_c0de);

/// The iSCSI port (RFC 3720) the linux stack's targets listen on.
pub const ISCSI_PORT: u16 = 3260;

/// Where each host-image relay listens: its host's address and a port. A relay keeps the
/// port state records for it (so adding or removing hosts never moves another host's
/// exports); a new one takes `base_port` plus its image's index, offset by a range of
/// `images.len()` ports per earlier host sharing its address, or the lowest free port above.
///
/// On the linux stack every export is an iSCSI target of the host's one target daemon, on the
/// iSCSI port.
struct Endpoints<'s> {
    addresses: HashMap<&'s str, &'s str>,
    ports: HashMap<(&'s str, u32), u16>,
    fixed: Option<u16>,
}

impl<'s> Endpoints<'s> {
    fn new(spec: &'s Spec, prior: &State) -> Result<Endpoints<'s>, GraphError> {
        let images = spec.images.len() as u32;
        let base = u32::from(spec.backend.base_port);
        let addresses: HashMap<&str, &str> = spec
            .hosts
            .iter()
            .map(|h| (h.name.as_str(), h.address.as_str()))
            .collect();
        let mut used: HashSet<(&str, u16)> = HashSet::default();
        let mut ports: HashMap<(&str, u32), u16> = HashMap::default();
        let mut pending = Vec::new();
        let mut rank: HashMap<&str, u32> = HashMap::default();
        for h in &spec.hosts {
            let r = rank.entry(h.address.as_str()).or_default();
            let host_rank = *r;
            *r += 1;
            for (i, image) in spec.images.iter().enumerate() {
                let key = (h.name.as_str(), i as u32);
                match recorded_port(prior, &h.name, &image.name) {
                    Some(p) if used.insert((h.address.as_str(), p)) => {
                        ports.insert(key, p);
                    }
                    _ => pending.push((key, h.address.as_str(), host_rank)),
                }
            }
        }
        for (key, address, host_rank) in pending {
            let wanted = base + host_rank * images + key.1;
            let free = (wanted..=u32::from(u16::MAX))
                .filter_map(|p| u16::try_from(p).ok())
                .find(|p| used.insert((address, *p)))
                .ok_or_else(|| GraphError::PortsExhausted {
                    host: key.0.to_string(),
                    image: spec.images[key.1 as usize].name.clone(),
                    address: address.to_string(),
                    from: wanted,
                })?;
            ports.insert(key, free);
        }
        let fixed = (spec.backend.stack == Stack::Linux).then_some(ISCSI_PORT);
        Ok(Endpoints {
            addresses,
            ports,
            fixed,
        })
    }

    fn of(&self, host: &str, image_index: usize) -> (&'s str, u16) {
        let address = self.addresses.get(host).copied().unwrap_or("");
        let port = self.fixed.unwrap_or_else(|| {
            self.ports
                .get(&(host, image_index as u32))
                .copied()
                .unwrap_or(0)
        });
        (address, port)
    }
}

/// The port state records for a host's relay of an image (on its cache or its target).
fn recorded_port(prior: &State, host: &str, image: &str) -> Option<u16> {
    let (h, i): (Arc<str>, Arc<str>) = (host.into(), image.into());
    [Kind::Cache, Kind::Target].into_iter().find_map(|kind| {
        match prior
            .get(&Addr::new(kind, &h, &i, None))
            .map(|r| &r.desired)
        {
            Some(Desired::Cache(c)) => Some(c.port),
            Some(Desired::Target(TargetAttrs::Image { port, .. }))
            | Some(Desired::Target(TargetAttrs::Cache { port, .. })) => Some(*port),
            _ => None,
        }
    })
}

/// One resource the spec asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub addr: Addr,
    pub desired: Desired,
    /// Indices of the resources this one needs, into [`Graph::resources`].
    pub deps: Vec<u32>,
}

/// The desired DAG, in topological order.
#[derive(Debug, Default)]
pub struct Graph {
    pub resources: Vec<Resource>,
    pub placement: Placement,
    pub(crate) index: HashMap<Addr, u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("internal error: clone UUID {uuid} of {a} collides with {b}")]
    UuidCollision { uuid: String, a: Addr, b: Addr },
    #[error("/backend/base_port: no free port from {from} to 65535 on address {address:?} for the export of image {image:?} on host {host:?} (the state keeps the ports of existing exports): lower backend.base_port, or give hosts that share an address their own")]
    PortsExhausted {
        host: String,
        image: String,
        address: String,
        from: u32,
    },
    #[error("internal error: no free MAC address for {0} after 64 tries")]
    MacExhausted(Addr),
}

impl Graph {
    pub fn get(&self, addr: &Addr) -> Option<u32> {
        self.index.get(addr).copied()
    }

    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// Expands `spec` into resources. `prior` supplies the recorded placement (kept where
    /// still valid) and the recorded MACs of existing clones (kept unless they now collide).
    pub fn build(spec: &Spec, prior: &State) -> Result<Graph, GraphError> {
        let mut g = Graph::default();
        let mut domains: Vec<u32> = Vec::new();
        let endpoints = Endpoints::new(spec, prior)?;
        let degree = model::degree(spec);
        for (image_index, image) in spec.images.iter().enumerate() {
            let img: Arc<str> = image.name.as_str().into();
            let (hosts, tree) = model::image_tree(spec, image, degree, Some(&prior.placement));
            let names: Vec<Arc<str>> = hosts.iter().map(|&h| Arc::<str>::from(h)).collect();
            let clones = spec.clones_per_host(image);
            let mut target_of: Vec<u32> = vec![u32::MAX; names.len()];
            let mut parents = BTreeMap::new();

            for &node in &tree.order {
                let host = &names[node as usize];
                let has_children = !tree.children[node as usize].is_empty();
                let (address, port) = endpoints.of(host, image_index);
                let Some(parent) = tree.parent[node as usize] else {
                    target_of[0] = g.push(
                        Addr::new(Kind::Target, host, &img, None),
                        Desired::Target(TargetAttrs::Image {
                            path: image.path.clone(),
                            format: image.format,
                            size: image.size,
                            address: address.to_string(),
                            port,
                            version: image.version.clone(),
                        }),
                        vec![],
                    );
                    continue;
                };
                let parent_name = &names[parent as usize];
                parents.insert(host.to_string(), parent_name.to_string());
                let lv = g.push(
                    Addr::new(Kind::Lv, host, &img, None),
                    Desired::Lv(LvAttrs {
                        purpose: LvPurpose::Cache,
                        size: spec.cache.size,
                    }),
                    vec![],
                );
                let (parent_address, parent_port) = endpoints.of(parent_name, image_index);
                let session = g.push(
                    Addr::new(Kind::Session, host, &img, None),
                    Desired::Session(SessionAttrs {
                        parent: parent_name.to_string(),
                        parent_address: parent_address.to_string(),
                        parent_port,
                    }),
                    vec![target_of[parent as usize]],
                );
                let cache = g.push(
                    Addr::new(Kind::Cache, host, &img, None),
                    Desired::Cache(CacheAttrs {
                        size: spec.cache.size,
                        address: address.to_string(),
                        port,
                    }),
                    vec![session, lv],
                );
                if has_children {
                    target_of[node as usize] = g.push(
                        Addr::new(Kind::Target, host, &img, None),
                        Desired::Target(TargetAttrs::Cache {
                            address: address.to_string(),
                            port,
                        }),
                        vec![cache],
                    );
                }
                for n in 0..clones {
                    let cow = g.push(
                        Addr::new(Kind::Lv, host, &img, Some(n)),
                        Desired::Lv(LvAttrs {
                            purpose: LvPurpose::Cow,
                            size: spec.clones.cow_size,
                        }),
                        vec![],
                    );
                    let snap = g.push(
                        Addr::new(Kind::Snapshot, host, &img, Some(n)),
                        Desired::Snapshot(SnapshotAttrs {
                            cow_size: spec.clones.cow_size,
                        }),
                        vec![cache, cow],
                    );
                    let key = clone_key(&spec.cluster, &img, host, n);
                    let dom = g.push(
                        Addr::new(Kind::Domain, host, &img, Some(n)),
                        Desired::Domain(DomainAttrs {
                            name: spec.clone_name(&img, host, n),
                            uuid: Uuid::new_v5(&CLONE_NAMESPACE, key.as_bytes()).to_string(),
                            mac: String::new(),
                            vcpus: spec.clones.vcpus,
                            memory: spec.clones.memory,
                            boot: spec.clones.boot.clone(),
                            network: spec.clones.network.clone(),
                        }),
                        vec![snap],
                    );
                    domains.push(dom);
                }
            }
            g.placement.insert(image.name.clone(), parents);
        }
        g.assign_identities(&spec.cluster, &domains, prior)?;
        Ok(g)
    }

    fn push(&mut self, addr: Addr, desired: Desired, deps: Vec<u32>) -> u32 {
        let i = self.resources.len() as u32;
        self.index.insert(addr.clone(), i);
        self.resources.push(Resource {
            addr,
            desired,
            deps,
        });
        i
    }

    /// Checks UUIDs and gives every domain a unique MAC: existing clones keep their recorded
    /// MAC when it is one of their own candidates; the others take their first free candidate.
    fn assign_identities(
        &mut self,
        cluster: &str,
        domains: &[u32],
        prior: &State,
    ) -> Result<(), GraphError> {
        let mut uuids: HashMap<String, u32> =
            HashMap::with_capacity_and_hasher(domains.len(), Default::default());
        let mut macs: HashSet<String> =
            HashSet::with_capacity_and_hasher(domains.len(), Default::default());
        let mut unassigned = Vec::new();
        for &d in domains {
            let r = &self.resources[d as usize];
            let Desired::Domain(attrs) = &r.desired else {
                unreachable!("domains holds domain indices")
            };
            if let Some(first) = uuids.insert(attrs.uuid.clone(), d) {
                return Err(GraphError::UuidCollision {
                    uuid: attrs.uuid.clone(),
                    a: r.addr.clone(),
                    b: self.resources[first as usize].addr.clone(),
                });
            }
            let key = clone_key(cluster, &r.addr.image, &r.addr.host, r.addr.n.unwrap_or(0));
            let kept = prior.mac_of(&r.addr).filter(|mac| {
                (0..4).any(|k| mac_candidate(&key, k) == *mac) && !macs.contains(*mac)
            });
            match kept {
                Some(mac) => {
                    let mac = mac.to_string();
                    macs.insert(mac.clone());
                    self.set_mac(d, mac);
                }
                None => unassigned.push((d, key)),
            }
        }
        for (d, key) in unassigned {
            let mac = (0..64)
                .map(|k| mac_candidate(&key, k))
                .find(|m| !macs.contains(m))
                .ok_or_else(|| GraphError::MacExhausted(self.resources[d as usize].addr.clone()))?;
            macs.insert(mac.clone());
            self.set_mac(d, mac);
        }
        Ok(())
    }

    fn set_mac(&mut self, d: u32, mac: String) {
        if let Desired::Domain(attrs) = &mut self.resources[d as usize].desired {
            attrs.mac = mac;
        }
    }

    /// The DAG in Graphviz DOT: one cluster per host, edges from a resource to what it needs.
    pub fn to_dot(&self) -> String {
        let mut out = String::from(
            "digraph vmthunder {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n",
        );
        let mut by_host: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, r) in self.resources.iter().enumerate() {
            by_host.entry(&r.addr.host).or_default().push(i);
        }
        for (host, list) in &by_host {
            let _ = writeln!(
                out,
                "  subgraph \"cluster_{host}\" {{\n    label=\"{host}\";"
            );
            for &i in list {
                let _ = writeln!(out, "    \"{}\";", self.resources[i].addr);
            }
            out.push_str("  }\n");
        }
        for r in &self.resources {
            for &d in &r.deps {
                let _ = writeln!(
                    out,
                    "  \"{}\" -> \"{}\";",
                    r.addr, self.resources[d as usize].addr
                );
            }
        }
        out.push_str("}\n");
        out
    }
}

fn clone_key(cluster: &str, image: &str, host: &str, n: u32) -> String {
    format!("{cluster}/{image}/{host}/{n}")
}

/// Candidate `k` of a clone's MAC: locally administered, unicast, 46 bits from SHA-256.
fn mac_candidate(key: &str, k: u32) -> String {
    let mut h = Sha256::new();
    h.update(key.as_bytes());
    h.update(k.to_le_bytes());
    let b = h.finalize();
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        (b[0] & 0xfc) | 0x02,
        b[1],
        b[2],
        b[3],
        b[4],
        b[5]
    )
}
