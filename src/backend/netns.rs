//! Network namespaces for the local transport (`backend.netns`): each host gets its own
//! namespace with its spec address on `eth0`, a veth into a bridge that lives in a namespace of
//! its own, so traffic between hosts crosses real interfaces. Created on a host's first
//! operation, removed when state records nothing on it any more. Root only.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::transport::{CommandError, Local, Transport};
use super::BackendError;
use crate::spec::Spec;

const TIMEOUT: Duration = Duration::from_secs(30);

pub struct Netns {
    cluster: String,
    /// host -> address.
    addresses: rustc_hash::FxHashMap<String, String>,
    ready: Mutex<HashSet<String>>,
}

/// The namespace a host of a cluster runs in.
pub fn host_ns(cluster: &str, host: &str) -> String {
    format!("vmt-{cluster}-{host}")
}

fn bridge_ns(cluster: &str) -> String {
    format!("vmt-{cluster}-bridge")
}

/// The bridge-side veth of a host: interface names have at most 15 bytes.
fn veth(host: &str) -> String {
    let h = Sha256::digest(host.as_bytes());
    format!("vt{:02x}{:02x}{:02x}{:02x}", h[0], h[1], h[2], h[3])
}

fn ip(args: &[&str]) -> Vec<String> {
    std::iter::once("ip")
        .chain(args.iter().copied())
        .map(String::from)
        .collect()
}

fn existing() -> HashSet<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

impl Netns {
    pub fn new(spec: &Spec) -> Netns {
        Netns {
            cluster: spec.cluster.clone(),
            addresses: spec
                .hosts
                .iter()
                .map(|h| (h.name.clone(), h.address.clone()))
                .collect(),
            ready: Mutex::new(HashSet::new()),
        }
    }

    /// The transport that runs each host's commands in its namespace.
    pub fn transport(&self) -> Local {
        Local {
            netns: Some(
                self.addresses
                    .keys()
                    .map(|h| (h.clone(), host_ns(&self.cluster, h)))
                    .collect(),
            ),
        }
    }

    /// Makes the host's namespace (and the bridge) exist, once per run.
    pub fn ensure(&self, host: &str) -> Result<(), BackendError> {
        let mut ready = self.ready.lock().expect("netns lock");
        if ready.contains(host) {
            return Ok(());
        }
        let t = Local { netns: None };
        let run = |args: &[&str]| -> Result<(), CommandError> {
            t.run("localhost", &ip(args), TIMEOUT).map(|_| ())
        };
        let have = existing();
        let br = bridge_ns(&self.cluster);
        if !have.contains(&br) {
            run(&["netns", "add", &br])?;
            run(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
            run(&["-n", &br, "link", "set", "br0", "up"])?;
        }
        let ns = host_ns(&self.cluster, host);
        if !have.contains(&ns) {
            let address = self.addresses.get(host).ok_or_else(|| {
                BackendError::new(format!("internal error: no address for host {host}"))
            })?;
            let v = veth(host);
            run(&["netns", "add", &ns])?;
            run(&["-n", &ns, "link", "set", "lo", "up"])?;
            run(&[
                "-n", &br, "link", "add", &v, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            run(&["-n", &br, "link", "set", &v, "master", "br0", "up"])?;
            run(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{address}/16"),
                "dev",
                "eth0",
            ])?;
            run(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        ready.insert(host.to_string());
        Ok(())
    }

    /// Removes the namespaces of hosts not in `keep`, and the bridge when no host is left.
    pub fn prune(&self, keep: &HashSet<&str>) -> Result<(), BackendError> {
        let t = Local { netns: None };
        let have = existing();
        let mut ready = self.ready.lock().expect("netns lock");
        for host in self.addresses.keys() {
            let ns = host_ns(&self.cluster, host);
            if !keep.contains(host.as_str()) && have.contains(&ns) {
                t.run("localhost", &ip(&["netns", "del", &ns]), TIMEOUT)?;
                ready.remove(host);
            }
        }
        let br = bridge_ns(&self.cluster);
        if keep.is_empty() && have.contains(&br) {
            t.run("localhost", &ip(&["netns", "del", &br]), TIMEOUT)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_side_interface_names_fit_the_kernel_limit() {
        for h in ["a", "node-with-a-very-long-name-0001"] {
            assert!(veth(h).len() <= 15);
        }
        assert_ne!(veth("node01"), veth("node02"));
    }
}
