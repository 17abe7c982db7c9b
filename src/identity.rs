//! Clone identities: UUIDs, MACs, addresses, and the names of their network devices.
//!
//! All are derived from the clone's place (`cluster/image/host/n`) with SHA-256, so they are
//! the same on every plan; uniqueness is checked cluster-wide, and what state records is kept
//! while it stays valid, so nothing moves when the cluster grows.

use std::net::Ipv4Addr;

use rustc_hash::FxHashSet as HashSet;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::spec::Cidr;

/// Namespace of clone UUIDs (UUIDv5 of `cluster/image/host/n`).
const CLONE_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_0b7e_2d4a_4c1e_9a53_8e0f_7b1d_c0de);

/// The VXLAN UDP port (IANA, RFC 7348).
pub const VXLAN_PORT: u16 = 4789;

pub fn clone_key(cluster: &str, image: &str, host: &str, n: u32) -> String {
    format!("{cluster}/{image}/{host}/{n}")
}

pub fn clone_uuid(key: &str) -> String {
    Uuid::new_v5(&CLONE_NAMESPACE, key.as_bytes()).to_string()
}

fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn hex(b: &[u8], chars: usize) -> String {
    b.iter()
        .flat_map(|x| [x >> 4, x & 15])
        .take(chars)
        .map(|n| char::from_digit(u32::from(n), 16).expect("a nibble"))
        .collect()
}

/// Candidate `k` of a MAC for `key`: locally administered, unicast, 46 bits from SHA-256.
pub fn mac_candidate(key: &str, k: u32) -> String {
    let b = digest(&[key.as_bytes(), &k.to_le_bytes()]);
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

/// The bridge of a cluster network, the same name on every host: `vb` and 10 hex digits
/// (device names have at most 15 characters).
pub fn bridge_device(cluster: &str, network: &str) -> String {
    format!(
        "vb{}",
        hex(
            &digest(&[b"bridge/", cluster.as_bytes(), b"/", network.as_bytes()]),
            10
        )
    )
}

/// The VXLAN device of a cluster network on each host.
pub fn vxlan_device(cluster: &str, network: &str) -> String {
    format!(
        "vx{}",
        hex(
            &digest(&[b"vxlan/", cluster.as_bytes(), b"/", network.as_bytes()]),
            10
        )
    )
}

/// A clone's tap on a network: unique cluster-wide, so hosts sharing one kernel never meet.
pub fn tap_device(clone_key: &str, network: &str) -> String {
    format!(
        "vt{}",
        hex(
            &digest(&[b"tap/", clone_key.as_bytes(), b"/", network.as_bytes()]),
            12
        )
    )
}

/// A network's VXLAN identifier when the spec gives none: 1 to 2^24 - 2 from cluster and
/// name.
pub fn derived_vni(cluster: &str, network: &str) -> u32 {
    let b = digest(&[b"vni/", cluster.as_bytes(), b"/", network.as_bytes()]);
    1 + u32::from_le_bytes([b[0], b[1], b[2], 0]) % ((1 << 24) - 2)
}

/// The addresses of one network already handed out, and the next ones.
pub struct Pool {
    cidr: Cidr,
    taken: HashSet<u64>,
}

impl Pool {
    pub fn new(cidr: Cidr) -> Pool {
        Pool {
            cidr,
            taken: HashSet::default(),
        }
    }

    /// Keeps `recorded` (`a.b.c.d/p`) for its owner if it is still one of this network's
    /// usable addresses and nobody kept it first.
    pub fn keep(&mut self, recorded: &str) -> Option<String> {
        let (a, p) = recorded.split_once('/')?;
        let a: Ipv4Addr = a.parse().ok()?;
        if p.parse::<u8>().ok()? != self.cidr.prefix_len() {
            return None;
        }
        let i = self.cidr.index_of(a)?;
        self.taken.insert(i).then(|| recorded.to_string())
    }

    /// A new address for `key`: where its hash points, or the next free one after it. `None`
    /// when the network is full (the spec checks rule that out).
    pub fn take(&mut self, key: &str) -> Option<String> {
        let cap = self.cidr.capacity();
        if self.taken.len() as u64 >= cap {
            return None;
        }
        let b = digest(&[b"address/", key.as_bytes()]);
        let start = u64::from_le_bytes(b[..8].try_into().expect("8 bytes")) % cap;
        let i = (0..cap)
            .map(|k| (start + k) % cap)
            .find(|i| !self.taken.contains(i))?;
        self.taken.insert(i);
        Some(format!(
            "{}/{}",
            self.cidr.usable(i),
            self.cidr.prefix_len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_fit_the_kernel_limit_and_differ_by_cluster() {
        for n in [
            bridge_device("c", "lab"),
            vxlan_device("c", "lab"),
            tap_device("c/i/h/0", "lab"),
        ] {
            assert!(n.len() <= 15, "{n}");
        }
        assert_ne!(bridge_device("a", "lab"), bridge_device("b", "lab"));
        assert!((1..(1 << 24) - 1).contains(&derived_vni("c", "lab")));
    }

    #[test]
    fn addresses_are_stable_unique_and_kept() {
        let cidr = Cidr::parse("10.9.0.0/29").unwrap(); // 5 usable: .2 to .6
        let mut p = Pool::new(cidr);
        let a = p.take("x").unwrap();
        let mut again = Pool::new(cidr);
        assert_eq!(again.take("x").unwrap(), a, "derived, not random");
        let rest: Vec<String> = (0..4).map(|i| p.take(&format!("y{i}")).unwrap()).collect();
        let mut all: Vec<&String> = rest.iter().chain([&a]).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 5);
        assert!(all
            .iter()
            .all(|s| !s.starts_with("10.9.0.1/") && !s.starts_with("10.9.0.7/")));
        assert_eq!(p.take("z"), None, "full");
        // Kept once; not twice, not outside the network, not with another prefix.
        let mut k = Pool::new(cidr);
        assert_eq!(k.keep("10.9.0.4/29").as_deref(), Some("10.9.0.4/29"));
        assert_eq!(k.keep("10.9.0.4/29"), None);
        assert_eq!(k.keep("10.9.0.1/29"), None);
        assert_eq!(k.keep("10.9.1.4/29"), None);
        assert_eq!(k.keep("10.9.0.5/24"), None);
    }
}
