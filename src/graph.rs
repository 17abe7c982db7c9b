//! The desired resource DAG: what a spec asks for, given where the tree was placed before.
//!
//! Owns expanding a validated spec into resources with typed attributes and dependency edges,
//! handing out the clone identities (name, UUID, MACs, addresses: derived in
//! `crate::identity`), and the DOT rendering. Resources are emitted in a
//! topological order by construction (a parent's target before its children's sessions), so no
//! sort is needed; cost is linear in the number of resources.

use std::collections::BTreeMap;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

use crate::allot::{AllotError, Allotment};
use crate::health::Health;
use crate::identity::{self, clone_key, mac_candidate, Pool};
use crate::model;
use crate::resource::{
    Addr, BridgeAttrs, CaAttrs, CacheAttrs, CertAttrs, Desired, DomainAttrs, Kind, LvAttrs,
    LvPurpose, Nic, SeedAttrs, SessionAttrs, SnapshotAttrs, TargetAttrs, VxlanAttrs, TLS,
};
use crate::spec::{Cidr, Spec, Stack, Transport};
use crate::state::{Placement, State};

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

/// Days the cluster CA's certificate is valid.
pub const CA_DAYS: u32 = 3650;
/// Days a host's certificate is valid (`apply --replace cert.<host>.tls` renews it).
pub const CERT_DAYS: u32 = 825;

/// With `backend.tls`: the cluster CA and, made on first use, each host's certificate.
struct Certs {
    ca: u32,
    of: HashMap<Arc<str>, u32>,
    tls: Arc<str>,
}

impl Certs {
    fn new(g: &mut Graph, spec: &Spec) -> Certs {
        let tls: Arc<str> = TLS.into();
        let ca = g.push(
            Addr::new(Kind::Ca, &spec.cluster.as_str().into(), &tls, None),
            Desired::Ca(CaAttrs {
                name: format!("vmthunder {} CA", spec.cluster),
                days: CA_DAYS,
            }),
            vec![],
        );
        Certs {
            ca,
            of: HashMap::default(),
            tls,
        }
    }

    /// The certificate resource of `host`, at `address`.
    fn of(&mut self, g: &mut Graph, host: &Arc<str>, address: &str) -> u32 {
        if let Some(&c) = self.of.get(host) {
            return c;
        }
        let c = g.push(
            Addr::new(Kind::Cert, host, &self.tls, None),
            Desired::Cert(CertAttrs {
                subject: crate::pki::distinguished_name(host),
                address: address.to_string(),
                days: CERT_DAYS,
            }),
            vec![self.ca],
        );
        self.of.insert(host.clone(), c);
        c
    }
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
    /// Sessions that move because their recorded parent cannot serve them: the parent and
    /// why.
    pub(crate) repairs: HashMap<Addr, (String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Allot(Vec<AllotError>),
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
    #[error("/networks: networks {a:?} and {b:?} derive the same VXLAN identifier {vni}; give one of them its own \"vni\"")]
    VniCollision { a: String, b: String, vni: u32 },
    #[error("/networks/{index}/cidr: no free address left in {cidr} for {addr} (the state keeps recorded addresses): use a larger prefix")]
    AddressesExhausted {
        index: usize,
        cidr: String,
        addr: Addr,
    },
}

/// Whether all hosts are this machine's one kernel (the local transport without namespaces):
/// then one bridge serves every host's clones, and no VXLAN is needed.
pub fn shared_kernel(spec: &Spec) -> bool {
    spec.backend.stack == Stack::Qemu
        && spec.backend.transport == Transport::Local
        && !spec.backend.netns
}

/// The network resources of one cluster network, as built.
struct NetworkIndex {
    /// Index into `spec.networks`.
    spec_index: usize,
    /// (host, bridge resource) in spec order.
    bridges: Vec<(Arc<str>, u32)>,
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
        Graph::build_with(spec, prior, &Health::default())
    }

    /// [`Graph::build`], placing the children of hosts that `health` says cannot serve them
    /// elsewhere (`tree.repair: "auto"`). A host that does not answer keeps its recorded
    /// export, so that nothing is planned on it.
    pub fn build_with(spec: &Spec, prior: &State, health: &Health) -> Result<Graph, GraphError> {
        let mut g = Graph::default();
        let mut domains: Vec<u32> = Vec::new();
        let mut seeds: Vec<(u32, u32)> = Vec::new();
        let endpoints = Endpoints::new(spec, prior)?;
        let degree = model::degree(spec);
        let allotment = spec.allotment(prior).map_err(GraphError::Allot)?;
        let networks = g.push_networks(spec, &allotment)?;
        let tls = spec.backend.uses_tls();
        let mut certs = tls.then(|| Certs::new(&mut g, spec));
        for (image_index, image) in spec.images.iter().enumerate() {
            let img: Arc<str> = image.name.as_str().into();
            let (hosts, tree) =
                model::image_tree_with(spec, image, degree, Some(&prior.placement), Some(health));
            let recorded = prior.placement.get(&image.name);
            let names: Vec<Arc<str>> = hosts.iter().map(|&h| Arc::<str>::from(h)).collect();
            let mut target_of: Vec<u32> = vec![u32::MAX; names.len()];
            let mut parents = BTreeMap::new();

            for &node in &tree.order {
                let host = &names[node as usize];
                let keeps_export = || {
                    health.unreachable(host, &img)
                        && prior
                            .get(&Addr::new(Kind::Target, host, &img, None))
                            .is_some()
                };
                let has_children = !tree.children[node as usize].is_empty() || keeps_export();
                let (address, port) = endpoints.of(host, image_index);
                let cert: Vec<u32> = certs
                    .as_mut()
                    .map(|c| c.of(&mut g, host, address))
                    .into_iter()
                    .collect();
                // With TLS, an export admits exactly the host's children; one whose host does
                // not answer keeps what it admits (nothing is planned on it).
                let clients = || -> Vec<String> {
                    if !tls {
                        return Vec::new();
                    }
                    if health.unreachable(host, &img) {
                        if let Some(Desired::Target(t)) = prior
                            .get(&Addr::new(Kind::Target, host, &img, None))
                            .map(|r| &r.desired)
                        {
                            return t.clients().to_vec();
                        }
                    }
                    tree.children[node as usize]
                        .iter()
                        .map(|&c| names[c as usize].to_string())
                        .collect()
                };
                let Some(parent) = tree.parent[node as usize] else {
                    // An imported image's file is made first.
                    let mut deps = cert;
                    if let Some(a) = crate::backend::import::attrs(image) {
                        deps.push(g.push(
                            Addr::new(Kind::Image, host, &img, None),
                            Desired::Image(a),
                            Vec::new(),
                        ));
                    }
                    target_of[0] = g.push(
                        Addr::new(Kind::Target, host, &img, None),
                        Desired::Target(TargetAttrs::Image {
                            path: image.path.clone(),
                            format: image.format,
                            size: image.size,
                            address: address.to_string(),
                            port,
                            version: image.version.clone(),
                            tls,
                            clients: clients(),
                        }),
                        deps,
                    );
                    continue;
                };
                let parent_name = &names[parent as usize];
                parents.insert(host.to_string(), parent_name.to_string());
                // Only a refresh that found hosts unhealthy makes repairs.
                let old = recorded
                    .filter(|_| !health.is_empty())
                    .and_then(|r| r.get(&**host));
                if let Some(old) = old {
                    if old.as_str() != &**parent_name {
                        if let Some(why) = health.why(old, &image.name) {
                            g.repairs.insert(
                                Addr::new(Kind::Session, host, &img, None),
                                (old.clone(), why.to_string()),
                            );
                        }
                    }
                }
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
                        tls,
                    }),
                    [target_of[parent as usize]]
                        .into_iter()
                        .chain(cert.iter().copied())
                        .collect(),
                );
                let cache = g.push(
                    Addr::new(Kind::Cache, host, &img, None),
                    Desired::Cache(CacheAttrs {
                        size: spec.cache.size,
                        address: address.to_string(),
                        port,
                        tls,
                    }),
                    [session, lv]
                        .into_iter()
                        .chain(cert.iter().copied())
                        .collect(),
                );
                if has_children {
                    target_of[node as usize] = g.push(
                        Addr::new(Kind::Target, host, &img, None),
                        Desired::Target(TargetAttrs::Cache {
                            address: address.to_string(),
                            port,
                            tls,
                            clients: clients(),
                        }),
                        [cache].into_iter().chain(cert.iter().copied()).collect(),
                    );
                }
                for n in 0..allotment.count(image_index, host) {
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
                    // With TLS the guest reads its disk as its host.
                    let mut deps = vec![snap];
                    deps.extend(cert.iter().copied());
                    let seed = spec.clones.seeded().then(|| {
                        g.push(
                            Addr::new(Kind::Seed, host, &img, Some(n)),
                            Desired::Seed(SeedAttrs {
                                meta_data: String::new(),
                                user_data: String::new(),
                                network_config: None,
                            }),
                            vec![],
                        )
                    });
                    deps.extend(seed);
                    let mut nics = Vec::with_capacity(networks.len());
                    for net in &networks {
                        let (_, bridge) = net
                            .bridges
                            .iter()
                            .find(|(h, _)| h == host)
                            .unwrap_or(&net.bridges[0]);
                        deps.push(*bridge);
                        nics.push(Nic {
                            network: spec.networks[net.spec_index].name.clone(),
                            bridge: identity::bridge_device(
                                &spec.cluster,
                                &spec.networks[net.spec_index].name,
                            ),
                            mac: String::new(),
                            address: String::new(),
                        });
                    }
                    let dom = g.push(
                        Addr::new(Kind::Domain, host, &img, Some(n)),
                        Desired::Domain(DomainAttrs {
                            name: spec.clone_name(&img, host, n),
                            uuid: identity::clone_uuid(&key),
                            mac: String::new(),
                            vcpus: spec.clones.vcpus,
                            memory: spec.clones.memory,
                            boot: spec.clones.boot.clone(),
                            network: spec.clones.network.clone(),
                            firmware: spec.clones.firmware,
                            nics,
                        }),
                        deps,
                    );
                    domains.push(dom);
                    if let Some(seed) = seed {
                        seeds.push((seed, dom));
                    }
                }
            }
            g.placement.insert(image.name.clone(), parents);
        }
        g.assign_identities(&spec.cluster, &domains, prior)?;
        g.assign_addresses(spec, &networks, &domains, prior)?;
        g.render_seeds(spec, &seeds);
        Ok(g)
    }

    /// Every host with clones gets a bridge per network its clones attach to (one bridge in
    /// all when the hosts share this machine's kernel), and with more than one such host a
    /// VXLAN device on it that floods to the others. Addresses are handed out later.
    fn push_networks(
        &mut self,
        spec: &Spec,
        allotment: &Allotment,
    ) -> Result<Vec<NetworkIndex>, GraphError> {
        if spec.clones.networks.is_empty() {
            return Ok(Vec::new());
        }
        let mut runs_clones: HashSet<&str> = HashSet::default();
        for (i, image) in spec.images.iter().enumerate() {
            runs_clones.extend(
                spec.image_hosts(image)
                    .into_iter()
                    .filter(|h| allotment.count(i, h) > 0),
            );
        }
        let hosts: Vec<&crate::spec::Host> = spec
            .hosts
            .iter()
            .filter(|h| runs_clones.contains(h.name.as_str()))
            .collect();
        let shared = shared_kernel(spec);
        let homes = if shared {
            &hosts[..hosts.len().min(1)]
        } else {
            &hosts[..]
        };
        let mut vnis: HashMap<u32, &str> = HashMap::default();
        let mut out = Vec::new();
        for name in &spec.clones.networks {
            let spec_index = spec
                .networks
                .iter()
                .position(|n| &n.name == name)
                .expect("the spec checks clones.networks");
            let net = &spec.networks[spec_index];
            let vni = net
                .vni
                .unwrap_or_else(|| identity::derived_vni(&spec.cluster, name));
            if let Some(other) = vnis.insert(vni, name) {
                return Err(GraphError::VniCollision {
                    a: other.to_string(),
                    b: name.clone(),
                    vni,
                });
            }
            let n: Arc<str> = name.as_str().into();
            let device = identity::bridge_device(&spec.cluster, name);
            let mut bridges = Vec::with_capacity(homes.len());
            for h in homes {
                let host: Arc<str> = h.name.as_str().into();
                let b = self.push(
                    Addr::new(Kind::Bridge, &host, &n, None),
                    Desired::Bridge(BridgeAttrs {
                        device: device.clone(),
                        address: String::new(),
                    }),
                    vec![],
                );
                bridges.push((host, b));
            }
            if homes.len() > 1 {
                for (h, (host, bridge)) in homes.iter().zip(&bridges) {
                    let remotes = homes
                        .iter()
                        .filter(|o| o.name != h.name)
                        .map(|o| o.address.clone())
                        .collect();
                    self.push(
                        Addr::new(Kind::Vxlan, host, &n, None),
                        Desired::Vxlan(VxlanAttrs {
                            device: identity::vxlan_device(&spec.cluster, name),
                            bridge: device.clone(),
                            vni,
                            local: h.address.clone(),
                            port: identity::VXLAN_PORT,
                            remotes,
                        }),
                        vec![*bridge],
                    );
                }
            }
            out.push(NetworkIndex {
                spec_index,
                bridges,
            });
        }
        Ok(out)
    }

    /// Every bridge and every clone's NIC gets an address of its network: the recorded one
    /// while it is still valid and nobody else's, else the one its identity derives (or the
    /// next free one). Recorded addresses are kept first, so no existing clone moves.
    fn assign_addresses(
        &mut self,
        spec: &Spec,
        networks: &[NetworkIndex],
        domains: &[u32],
        prior: &State,
    ) -> Result<(), GraphError> {
        for (k, net) in networks.iter().enumerate() {
            let network = &spec.networks[net.spec_index];
            let cidr = Cidr::parse(&network.cidr).expect("the spec checks CIDRs");
            let mut pool = Pool::new(cidr);
            let mut pending: Vec<(u32, String)> = Vec::new();
            let owners = net
                .bridges
                .iter()
                .map(|(_, b)| *b)
                .chain(domains.iter().copied());
            for i in owners {
                let r = &self.resources[i as usize];
                let recorded = match prior.get(&r.addr).map(|p| &p.desired) {
                    Some(Desired::Bridge(b)) => Some(b.address.as_str()),
                    Some(Desired::Domain(d)) => d
                        .nics
                        .iter()
                        .find(|nic| nic.network == network.name)
                        .map(|nic| nic.address.as_str()),
                    _ => None,
                };
                match recorded.and_then(|a| pool.keep(a)) {
                    Some(a) => self.set_address(i, k, a),
                    None => {
                        let key = match &r.desired {
                            Desired::Bridge(_) => format!("{}/host/{}", spec.cluster, r.addr.host),
                            _ => clone_key(
                                &spec.cluster,
                                &r.addr.image,
                                &r.addr.host,
                                r.addr.n.unwrap_or(0),
                            ),
                        };
                        pending.push((i, format!("{key}/{}", network.name)));
                    }
                }
            }
            for (i, key) in pending {
                let a = pool
                    .take(&key)
                    .ok_or_else(|| GraphError::AddressesExhausted {
                        index: net.spec_index,
                        cidr: network.cidr.clone(),
                        addr: self.resources[i as usize].addr.clone(),
                    })?;
                self.set_address(i, k, a);
            }
        }
        Ok(())
    }

    fn set_address(&mut self, i: u32, nic: usize, address: String) {
        match &mut self.resources[i as usize].desired {
            Desired::Bridge(b) => b.address = address,
            Desired::Domain(d) => d.nics[nic].address = address,
            _ => unreachable!("only bridges and domains have addresses"),
        }
    }

    /// Fills each seed from its clone's identity, once names, MACs and addresses are known.
    fn render_seeds(&mut self, spec: &Spec, seeds: &[(u32, u32)]) {
        let loaded = &spec.clones.loaded;
        let user_data = crate::cloudinit::user_data(
            loaded.user_data.as_deref(),
            &spec.clones.ssh_user,
            &loaded.keys,
        );
        for &(seed, dom) in seeds {
            let Desired::Domain(d) = &self.resources[dom as usize].desired else {
                unreachable!("a seed's clone is a domain")
            };
            let attrs = SeedAttrs {
                meta_data: crate::cloudinit::meta_data(&d.uuid, &d.name),
                user_data: user_data.clone(),
                network_config: crate::cloudinit::network_config(&d.nics),
            };
            self.resources[seed as usize].desired = Desired::Seed(attrs);
        }
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
        // The first NIC on a network is the clone's MAC; each further one takes its own
        // candidates, keyed by the network.
        for &d in domains {
            let r = &self.resources[d as usize];
            let Desired::Domain(attrs) = &r.desired else {
                unreachable!("domains holds domain indices")
            };
            if attrs.nics.len() < 2 {
                continue;
            }
            let key = clone_key(cluster, &r.addr.image, &r.addr.host, r.addr.n.unwrap_or(0));
            let recorded: Vec<(String, String)> = match prior.get(&r.addr).map(|p| &p.desired) {
                Some(Desired::Domain(p)) => p
                    .nics
                    .iter()
                    .map(|n| (n.network.clone(), n.mac.clone()))
                    .collect(),
                _ => Vec::new(),
            };
            let networks: Vec<String> = attrs.nics.iter().map(|n| n.network.clone()).collect();
            for (k, network) in networks.iter().enumerate().skip(1) {
                let nic_key = format!("{key}/{network}");
                let kept = recorded
                    .iter()
                    .find(|(n, _)| n == network)
                    .map(|(_, m)| m.clone())
                    .filter(|m| {
                        (0..4).any(|c| mac_candidate(&nic_key, c) == *m) && !macs.contains(m)
                    });
                let mac = match kept {
                    Some(m) => m,
                    None => (0..64)
                        .map(|c| mac_candidate(&nic_key, c))
                        .find(|m| !macs.contains(m))
                        .ok_or_else(|| {
                            GraphError::MacExhausted(self.resources[d as usize].addr.clone())
                        })?,
                };
                macs.insert(mac.clone());
                if let Desired::Domain(a) = &mut self.resources[d as usize].desired {
                    a.nics[k].mac = mac;
                }
            }
        }
        Ok(())
    }

    fn set_mac(&mut self, d: u32, mac: String) {
        if let Desired::Domain(attrs) = &mut self.resources[d as usize].desired {
            if let Some(first) = attrs.nics.first_mut() {
                first.mac = mac.clone();
            }
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
