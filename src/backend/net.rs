//! Cluster networks on a host, with iproute2: a `bridge` per network, a `vxlan` device that
//! joins it to the other hosts' bridges, and a tap per clone NIC.
//!
//! The VXLAN devices use unicast head-end replication: one all-zeros FDB entry per remote
//! host, so broadcast and unknown frames go to every other host, and learning sends the rest
//! to the host that has the MAC. No multicast is needed on the underlay.
//!
//! Shared by the stacks: the commands are argument vectors run through the host's transport,
//! and `ip -json` output is parsed, never scraped.

use std::time::Duration;

use serde_json::Value;

use super::{BackendError, Observed, Target, Transport};
use crate::resource::{BridgeAttrs, Desired, VxlanAttrs};

/// The MTU of everything on a cluster network: 1500 less VXLAN's 50 bytes of headers, so a
/// full-size frame of a clone still fits an ordinary underlay.
pub const MTU: u16 = 1450;

const TIMEOUT: Duration = Duration::from_secs(30);

fn argv(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn run(t: &dyn Transport, host: &str, v: &[&str]) -> Result<Vec<u8>, BackendError> {
    Ok(t.run(host, &argv(v), TIMEOUT)?.stdout)
}

/// Reads a `bridge` or `vxlan` resource.
pub fn read(t: &dyn Transport, r: Target<'_>) -> Result<Option<Observed>, BackendError> {
    match r.desired {
        Desired::Bridge(b) => read_bridge(t, &r.addr.host, b),
        Desired::Vxlan(x) => read_vxlan(t, &r.addr.host, x),
        _ => unreachable!("network resources only"),
    }
}

/// Creates a `bridge` or `vxlan` resource, adopting a matching device.
pub fn create(t: &dyn Transport, r: Target<'_>) -> Result<Observed, BackendError> {
    match r.desired {
        Desired::Bridge(b) => create_bridge(t, &r.addr.host, b),
        Desired::Vxlan(x) => create_vxlan(t, &r.addr.host, x),
        _ => unreachable!("network resources only"),
    }
}

/// Deletes a `bridge` or `vxlan` resource's device.
pub fn delete(t: &dyn Transport, r: Target<'_>) -> Result<(), BackendError> {
    match r.desired {
        Desired::Bridge(b) => delete_link(t, &r.addr.host, &b.device),
        Desired::Vxlan(x) => delete_link(t, &r.addr.host, &x.device),
        _ => unreachable!("network resources only"),
    }
}

/// `ip -details -json link show dev NAME`: the link, or `None` when there is none.
pub fn link(t: &dyn Transport, host: &str, dev: &str) -> Result<Option<Value>, BackendError> {
    // `ip` fails for a missing device; ask for the list and pick, so a failure means failure.
    let out = run(t, host, &["ip", "-details", "-json", "link", "show"])?;
    Ok(parse_links(&out)?.into_iter().find(|l| l["ifname"] == dev))
}

pub fn parse_links(out: &[u8]) -> Result<Vec<Value>, BackendError> {
    match serde_json::from_slice::<Value>(out) {
        Ok(Value::Array(v)) => Ok(v),
        _ => Err(BackendError::new(format!(
            "cannot parse `ip -json link show` output: {}",
            crate::text::cut(&String::from_utf8_lossy(out))
        ))),
    }
}

fn kind_of(link: &Value) -> &str {
    link["linkinfo"]["info_kind"].as_str().unwrap_or("")
}

/// The IPv4 addresses (`a.b.c.d/p`) on a device.
fn addresses(t: &dyn Transport, host: &str, dev: &str) -> Result<Vec<String>, BackendError> {
    let out = run(t, host, &["ip", "-json", "-4", "addr", "show", "dev", dev])?;
    Ok(parse_addresses(&out))
}

pub fn parse_addresses(out: &[u8]) -> Vec<String> {
    let v: Value = serde_json::from_slice(out).unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| {
            Some(format!(
                "{}/{}",
                a["local"].as_str()?,
                a["prefixlen"].as_u64()?
            ))
        })
        .collect()
}

fn state_of(link: &Value) -> String {
    let up = link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP"));
    (if up { "up" } else { "down" }).to_string()
}

pub fn read_bridge(
    t: &dyn Transport,
    host: &str,
    b: &BridgeAttrs,
) -> Result<Option<Observed>, BackendError> {
    let Some(l) = link(t, host, &b.device)? else {
        return Ok(None);
    };
    if kind_of(&l) != "bridge" {
        return Ok(None);
    }
    let mut o = Observed::new();
    o.insert("device".into(), b.device.clone().into());
    o.insert("addresses".into(), addresses(t, host, &b.device)?.into());
    o.insert("state".into(), state_of(&l).into());
    Ok(Some(o))
}

pub fn create_bridge(
    t: &dyn Transport,
    host: &str,
    b: &BridgeAttrs,
) -> Result<Observed, BackendError> {
    match link(t, host, &b.device)? {
        Some(l) if kind_of(&l) == "bridge" => {}
        Some(l) => {
            return Err(BackendError::new(format!(
                "on host {host}: a {} device `{}` exists, not a bridge; it is not vmthunder's: remove or rename it",
                kind_of(&l),
                b.device
            )))
        }
        None => {
            let mtu = MTU.to_string();
            run(t, host, &["ip", "link", "add", "name", &b.device, "mtu", &mtu, "type", "bridge"])?;
        }
    }
    // The host's own address; others a hand put there stay.
    run(
        t,
        host,
        &["ip", "addr", "replace", &b.address, "dev", &b.device],
    )?;
    run(t, host, &["ip", "link", "set", "dev", &b.device, "up"])?;
    read_bridge(t, host, b)?.ok_or_else(|| {
        BackendError::new(format!(
            "on host {host}: bridge `{}` was made but is not there",
            b.device
        ))
    })
}

/// Removes a device; one already gone is success.
pub fn delete_link(t: &dyn Transport, host: &str, dev: &str) -> Result<(), BackendError> {
    if link(t, host, dev)?.is_none() {
        return Ok(());
    }
    run(t, host, &["ip", "link", "del", "dev", dev]).map(|_| ())
}

/// The remote addresses of a VXLAN device's all-zeros FDB entries (its flood list).
fn flood_list(t: &dyn Transport, host: &str, dev: &str) -> Result<Vec<String>, BackendError> {
    let out = run(t, host, &["bridge", "-json", "fdb", "show", "dev", dev])?;
    Ok(parse_flood_list(&out))
}

pub fn parse_flood_list(out: &[u8]) -> Vec<String> {
    let v: Value = serde_json::from_slice(out).unwrap_or(Value::Null);
    let mut list: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["mac"] == "00:00:00:00:00:00")
        .filter_map(|e| e["dst"].as_str().map(String::from))
        .collect();
    list.sort();
    list.dedup();
    list
}

/// Whether an existing VXLAN device is the one `x` describes (identifier, local address,
/// port, bridge).
fn vxlan_matches(l: &Value, x: &VxlanAttrs) -> bool {
    let d = &l["linkinfo"]["info_data"];
    kind_of(l) == "vxlan"
        && d["id"].as_u64() == Some(u64::from(x.vni))
        && d["local"].as_str() == Some(x.local.as_str())
        && d["port"].as_u64() == Some(u64::from(x.port))
        && l["master"].as_str() == Some(x.bridge.as_str())
}

pub fn read_vxlan(
    t: &dyn Transport,
    host: &str,
    x: &VxlanAttrs,
) -> Result<Option<Observed>, BackendError> {
    let Some(l) = link(t, host, &x.device)? else {
        return Ok(None);
    };
    if kind_of(&l) != "vxlan" {
        return Ok(None);
    }
    let d = &l["linkinfo"]["info_data"];
    let mut o = Observed::new();
    o.insert("device".into(), x.device.clone().into());
    o.insert("vni".into(), d["id"].clone());
    o.insert("local".into(), d["local"].clone());
    o.insert("bridge".into(), l["master"].clone());
    o.insert("remotes".into(), flood_list(t, host, &x.device)?.into());
    o.insert("state".into(), state_of(&l).into());
    Ok(Some(o))
}

pub fn create_vxlan(
    t: &dyn Transport,
    host: &str,
    x: &VxlanAttrs,
) -> Result<Observed, BackendError> {
    if x.local.parse::<std::net::IpAddr>().is_err() {
        return Err(BackendError::new(format!(
            "on host {host}: a VXLAN needs the host's IP address, and {:?} is not one: give hosts[].address as an IP address",
            x.local
        )));
    }
    match link(t, host, &x.device)? {
        Some(l) if vxlan_matches(&l, x) => {}
        Some(l) if kind_of(&l) == "vxlan" => delete_link(t, host, &x.device)?,
        Some(l) => {
            return Err(BackendError::new(format!(
                "on host {host}: a {} device `{}` exists, not a VXLAN; it is not vmthunder's: remove or rename it",
                kind_of(&l),
                x.device
            )))
        }
        None => {}
    }
    if link(t, host, &x.device)?.is_none() {
        let (vni, port, mtu) = (x.vni.to_string(), x.port.to_string(), MTU.to_string());
        run(
            t,
            host,
            &[
                "ip", "link", "add", "name", &x.device, "mtu", &mtu, "type", "vxlan", "id", &vni,
                "local", &x.local, "dstport", &port,
            ],
        )?;
        run(
            t,
            host,
            &["ip", "link", "set", "dev", &x.device, "master", &x.bridge],
        )?;
    }
    // The flood list: exactly the other hosts.
    let have = flood_list(t, host, &x.device)?;
    for gone in have.iter().filter(|a| !x.remotes.contains(a)) {
        run(
            t,
            host,
            &[
                "bridge",
                "fdb",
                "del",
                "00:00:00:00:00:00",
                "dev",
                &x.device,
                "dst",
                gone,
            ],
        )?;
    }
    for new in x.remotes.iter().filter(|a| !have.contains(a)) {
        run(
            t,
            host,
            &[
                "bridge",
                "fdb",
                "append",
                "00:00:00:00:00:00",
                "dev",
                &x.device,
                "dst",
                new,
            ],
        )?;
    }
    run(t, host, &["ip", "link", "set", "dev", &x.device, "up"])?;
    read_vxlan(t, host, x)?.ok_or_else(|| {
        BackendError::new(format!(
            "on host {host}: VXLAN `{}` was made but is not there",
            x.device
        ))
    })
}

/// A clone's tap on `bridge`, made persistent so QEMU opens it by name (`ifname`, no
/// scripts), and kept at the network's MTU.
pub fn ensure_tap(
    t: &dyn Transport,
    host: &str,
    tap: &str,
    bridge: &str,
) -> Result<(), BackendError> {
    match link(t, host, tap)? {
        Some(l) if kind_of(&l) == "tun" => {}
        Some(l) => {
            return Err(BackendError::new(format!(
                "on host {host}: a {} device `{tap}` exists, not a tap; it is not vmthunder's: remove it",
                kind_of(&l)
            )))
        }
        None => {
            run(t, host, &["ip", "tuntap", "add", "dev", tap, "mode", "tap"])?;
        }
    }
    let mtu = MTU.to_string();
    run(
        t,
        host,
        &[
            "ip", "link", "set", "dev", tap, "mtu", &mtu, "master", bridge, "up",
        ],
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Output of iproute2 6.1 (Debian 12) for a bridge with one address, and a VXLAN port of it.
    #[test]
    fn parses_links_addresses_and_flood_lists() {
        let links = br#"[{"ifindex":5,"ifname":"vb0123456789","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1450,"linkinfo":{"info_kind":"bridge","info_data":{}}},
            {"ifindex":6,"ifname":"vx0123456789","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1450,"master":"vb0123456789","linkinfo":{"info_kind":"vxlan","info_data":{"id":4242,"local":"10.77.0.12","port":4789}}}]"#;
        let l = parse_links(links).unwrap();
        assert_eq!(kind_of(&l[0]), "bridge");
        assert_eq!(state_of(&l[0]), "up");
        let x = VxlanAttrs {
            device: "vx0123456789".into(),
            bridge: "vb0123456789".into(),
            vni: 4242,
            local: "10.77.0.12".into(),
            port: 4789,
            remotes: vec![],
        };
        assert!(vxlan_matches(&l[1], &x));
        assert!(!vxlan_matches(&l[1], &VxlanAttrs { vni: 1, ..x }));
        let addrs = br#"[{"ifindex":5,"ifname":"vb0123456789","addr_info":[{"family":"inet","local":"10.60.0.9","prefixlen":16}]}]"#;
        assert_eq!(parse_addresses(addrs), vec!["10.60.0.9/16"]);
        let fdb = br#"[{"mac":"00:00:00:00:00:00","dst":"10.77.0.14","flags":[]},{"mac":"00:00:00:00:00:00","dst":"10.77.0.13","flags":[]},{"mac":"02:11:22:33:44:55","dst":"10.77.0.13","flags":[]}]"#;
        assert_eq!(parse_flood_list(fdb), vec!["10.77.0.13", "10.77.0.14"]);
        assert!(parse_links(b"not json").is_err());
    }
}
