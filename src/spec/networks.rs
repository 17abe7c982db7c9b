//! Cluster networks: their prefixes, and the checks that keep their addresses to themselves.
//!
//! A network is an IPv4 prefix. Its first address is kept for a gateway and its last is the
//! broadcast address; every host with clones on it takes one address for its bridge and every
//! clone one (`crate::identity` hands them out). The checks here run on the decoded spec: the
//! prefix is well formed, large enough, apart from every other network and from the hosts'
//! own addresses, and every name a clone attaches to exists.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::decode::{Diagnostics, Draft};

/// Networks in one cluster at the most: each is a bridge and a VXLAN device per host.
pub const MAX_NETWORKS: usize = 64;
/// Hosts one network spans at the most. Head-end replication sends every broadcast frame
/// (ARP, DHCP) once to each other host, and each host's flood list names all the others, so
/// the cost grows with the square of the hosts; beyond a thousand, split the clones over
/// several networks or clusters.
pub const MAX_NETWORK_HOSTS: usize = 1024;

/// A network's prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr(pub Ipv4Net);

impl Cidr {
    /// Parses `a.b.c.d/p`: the network's own address (host bits zero), 8 to 30 bits.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let net: Ipv4Net = s.parse().map_err(|_| {
            format!("invalid CIDR {s:?}: write an IPv4 prefix like \"10.60.0.0/16\"")
        })?;
        if !(8..=30).contains(&net.prefix_len()) {
            return Err(format!(
                "{s:?} has a /{} prefix: use 8 to 30 bits (a network needs room for a gateway, its hosts' bridges and its clones)",
                net.prefix_len()
            ));
        }
        if net.addr() != net.network() {
            return Err(format!(
                "{s:?} has host bits set: the network is \"{}\"",
                net.trunc()
            ));
        }
        Ok(Cidr(net))
    }

    /// How many addresses bridges and clones can take: all but the network's own, the
    /// gateway and the broadcast address.
    pub fn capacity(&self) -> u64 {
        (1u64 << (32 - self.0.prefix_len())) - 3
    }

    /// The `i`th address bridges and clones can take (`i < capacity()`).
    pub fn usable(&self, i: u64) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.0.network()) + 2 + i as u32)
    }

    /// The index of `a` among the usable addresses, if it is one.
    pub fn index_of(&self, a: Ipv4Addr) -> Option<u64> {
        let i = u64::from(u32::from(a)).checked_sub(u64::from(u32::from(self.0.network())) + 2)?;
        (i < self.capacity()).then_some(i)
    }

    /// The gateway's address: the first after the network's own.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.0.network()) + 1)
    }

    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        self.0.contains(&a)
    }
}

pub(crate) fn check(d: &Draft, diags: &mut Diagnostics) {
    let mut at: HashMap<&str, usize> = HashMap::new();
    let mut parsed: Vec<(usize, Cidr)> = Vec::new();
    let mut vnis: HashMap<u32, usize> = HashMap::new();
    for (i, n) in d.networks.iter().enumerate() {
        let Some(n) = n else { continue };
        if let Some(first) = at.insert(&n.name, i) {
            at.insert(&n.name, first);
            diags.push(
                format!("/networks/{i}/name"),
                format!(
                    "duplicate network name {:?} (first at /networks/{first})",
                    n.name
                ),
            );
        }
        if let Some(v) = n.vni {
            if let Some(first) = vnis.insert(v, i) {
                vnis.insert(v, first);
                diags.push(
                    format!("/networks/{i}/vni"),
                    format!("VNI {v} is also used by /networks/{first}; networks need their own"),
                );
            }
        }
        match Cidr::parse(&n.cidr) {
            Ok(c) => {
                for (j, other) in &parsed {
                    if c.0.contains(&other.0.network()) || other.0.contains(&c.0.network()) {
                        diags.push(
                            format!("/networks/{i}/cidr"),
                            format!(
                                "{} overlaps {} of /networks/{j}: networks must not share addresses",
                                n.cidr, other.0
                            ),
                        );
                    }
                }
                for (h, host) in d.hosts.iter().enumerate() {
                    let Some(host) = host else { continue };
                    if let Ok(a) = host.address.parse::<Ipv4Addr>() {
                        if c.contains(a) {
                            diags.push(
                                format!("/networks/{i}/cidr"),
                                format!(
                                    "{} contains {}, the address of host {:?} (/hosts/{h}/address): a cluster network is for clones; choose a prefix apart from the hosts' network",
                                    n.cidr, a, host.name
                                ),
                            );
                        }
                    }
                }
                parsed.push((i, c));
            }
            Err(m) => diags.push(format!("/networks/{i}/cidr"), m),
        }
    }
    let Some(clones) = &d.clones else { return };
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (k, name) in clones.networks.iter().enumerate() {
        let path = format!("/clones/networks/{k}");
        if let Some(first) = seen.insert(name, k) {
            seen.insert(name, first);
            diags.push(
                path,
                format!("network {name:?} is listed twice (first at /clones/networks/{first}); a clone gets one NIC per network"),
            );
        } else if !at.contains_key(name.as_str()) && d.networks.iter().all(Option::is_some) {
            let known: Vec<&str> = d
                .networks
                .iter()
                .flatten()
                .map(|n| n.name.as_str())
                .collect();
            diags.push(
                path,
                if known.is_empty() {
                    format!("unknown network {name:?}: declare it in \"networks\", e.g. {{\"name\": {name:?}, \"cidr\": \"10.60.0.0/16\"}}")
                } else {
                    format!("unknown network {name:?} (networks: {})", known.join(", "))
                },
            );
        }
    }
    // Room for every clone and bridge on each network.
    if !d.images.iter().all(Option::is_some) || !d.hosts.iter().all(Option::is_some) {
        return;
    }
    let hosts = d.hosts.len() as u64;
    let (mut clones_total, mut bridge_hosts) = (0u64, std::collections::HashSet::new());
    for img in d.images.iter().flatten() {
        let per_host = u64::from(img.clones_per_host.unwrap_or(clones.per_host));
        if img.clones.unwrap_or(per_host) == 0 {
            continue;
        }
        // A total needs an address per clone, and may put clones on any of its hosts.
        let members = img
            .hosts
            .as_ref()
            .map_or(hosts.saturating_sub(1), |l| l.len() as u64);
        clones_total += img.clones.unwrap_or(members * per_host);
        match &img.hosts {
            Some(list) => {
                bridge_hosts.extend(list.iter().map(String::as_str));
            }
            None => {
                bridge_hosts.extend(
                    d.hosts
                        .iter()
                        .flatten()
                        .map(|h| h.name.as_str())
                        .filter(|h| *h != img.source_host),
                );
            }
        }
    }
    let b = d.backend.as_ref();
    let shared = b.is_some_and(|b| {
        b.stack == super::Stack::Qemu && b.transport == super::Transport::Local && !b.netns
    });
    if !clones.networks.is_empty() && !shared && bridge_hosts.len() > MAX_NETWORK_HOSTS {
        diags.push(
            "/clones/networks",
            format!(
                "the clones' networks would span {} hosts; a network spans at most {MAX_NETWORK_HOSTS} (every broadcast is sent to each other host, and each host lists all others): split the hosts over several clusters",
                bridge_hosts.len()
            ),
        );
        return;
    }
    if !clones.networks.is_empty() && !shared {
        for (i, h) in d.hosts.iter().enumerate() {
            let Some(h) = h else { continue };
            if bridge_hosts.contains(h.name.as_str())
                && h.address.parse::<std::net::IpAddr>().is_err()
            {
                diags.push(
                    format!("/hosts/{i}/address"),
                    format!("{:?} is a name: cluster networks join hosts by VXLAN, which needs each host's IP address", h.address),
                );
            }
        }
    }
    for (i, c) in &parsed {
        let Some(n) = d.networks[*i].as_ref() else {
            continue;
        };
        if !clones.networks.contains(&n.name) {
            continue;
        }
        let need = clones_total + bridge_hosts.len() as u64;
        if need > c.capacity() {
            let bits = (64 - (need + 3 - 1).leading_zeros()) as u8;
            diags.push(
                format!("/networks/{i}/cidr"),
                format!(
                    "{} has room for {} addresses, but its {clones_total} clones and {} host bridges need {need}: use a /{} or larger",
                    n.cidr,
                    c.capacity(),
                    bridge_hosts.len(),
                    32u8.saturating_sub(bits)
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_networks_of_8_to_30_bits() {
        let c = Cidr::parse("10.60.0.0/16").unwrap();
        assert_eq!(c.capacity(), 65533);
        assert_eq!(c.usable(0), Ipv4Addr::new(10, 60, 0, 2));
        assert_eq!(c.usable(65532), Ipv4Addr::new(10, 60, 255, 254));
        assert_eq!(c.index_of(Ipv4Addr::new(10, 60, 0, 1)), None);
        assert_eq!(c.index_of(Ipv4Addr::new(10, 60, 255, 255)), None);
        assert_eq!(c.index_of(Ipv4Addr::new(10, 60, 1, 0)), Some(254));
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 60, 0, 1));
        assert!(Cidr::parse("10.60.0.1/16")
            .unwrap_err()
            .contains("\"10.60.0.0/16\""));
        assert!(Cidr::parse("10.60.0.0/31").is_err());
        assert!(Cidr::parse("10.0.0.0/7").is_err());
        assert!(Cidr::parse("10.60.0.0").is_err());
        assert_eq!(Cidr::parse("192.168.7.0/30").unwrap().capacity(), 1);
    }
}
