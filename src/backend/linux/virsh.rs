//! `domain`: a libvirt domain per clone (`virsh define` + `start`; `destroy` + `undefine`),
//! its disk the clone's snapshot device, its name, UUID and MAC the ones the plan assigned.

use super::{args, LinuxStack};
use crate::backend::{dep_attr, BackendError, Observed, Target};
use crate::resource::{Addr, Desired, DomainAttrs, Kind};

/// libvirt's system connection: domains that outlive the ssh session that made them.
pub const URI: &str = "qemu:///system";

fn virsh(rest: &[&str]) -> Vec<String> {
    ["virsh", "-q", "-c", URI]
        .iter()
        .chain(rest)
        .map(|s| s.to_string())
        .collect()
}

/// Defines a domain from XML given as an argument (through stdin: no file to leave behind).
pub fn define_argv(xml: &str) -> Vec<String> {
    args(&[
        "sh",
        "-c",
        r#"printf '%s' "$1" | virsh -q -c "$2" define /dev/stdin"#,
        "sh",
        xml,
        URI,
    ])
}

pub fn start_argv(name: &str) -> Vec<String> {
    virsh(&["start", name])
}

pub fn destroy_argv(name: &str) -> Vec<String> {
    virsh(&["destroy", name])
}

pub fn undefine_argv(name: &str) -> Vec<String> {
    virsh(&["undefine", name])
}

pub fn domstate_argv(name: &str) -> Vec<String> {
    virsh(&["domstate", name])
}

pub fn dumpxml_argv(name: &str) -> Vec<String> {
    virsh(&["dumpxml", name])
}

/// Where a clone's serial console is written on its host.
pub fn console_log(name: &str) -> String {
    format!("/var/log/libvirt/qemu/{name}.console.log")
}

/// XML text content escaping.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// The domain's XML: `virt` is libvirt's domain type (`kvm`, or `qemu` for TCG).
pub fn domain_xml(d: &DomainAttrs, disk: &str, seed: Option<&str>, virt: &str) -> String {
    let mut os = String::from("    <type arch='x86_64'>hvm</type>\n");
    if let Some(b) = &d.boot {
        os.push_str(&format!("    <kernel>{}</kernel>\n", esc(&b.kernel)));
        if let Some(i) = &b.initrd {
            os.push_str(&format!("    <initrd>{}</initrd>\n", esc(i)));
        }
        let address = d.nics.first().map_or("", |n| n.address.as_str());
        let cmdline = b
            .append
            .replace("{name}", &d.name)
            .replace("{address}", address);
        os.push_str(&format!("    <cmdline>{}</cmdline>\n", esc(&cmdline)));
    } else {
        os.push_str("    <boot dev='hd'/>\n");
    }
    let firmware = if d.boot.is_none() && d.firmware == crate::resource::Firmware::Uefi {
        " firmware='efi'"
    } else {
        ""
    };
    let mut extra = String::new();
    if let Some(seed) = seed {
        extra.push_str(&format!(
            "    <disk type='file' device='disk'>\n      <driver name='qemu' type='raw'/>\n      <source file='{}'/>\n      <target dev='vdb' bus='virtio'/>\n      <readonly/>\n    </disk>\n",
            esc(seed)
        ));
    }
    // Cluster networks: one NIC each on the host's bridge, at the VXLAN's MTU.
    for nic in d.nics.iter().skip(1) {
        extra.push_str(&format!(
            "    <interface type='bridge'>\n      <source bridge='{}'/>\n      <mac address='{}'/>\n      <model type='virtio'/>\n      <mtu size='{}'/>\n    </interface>\n",
            esc(&nic.bridge),
            esc(&nic.mac),
            crate::backend::net::MTU
        ));
    }
    let first = d.nics.first().map(|n| {
        format!(
            "    <interface type='bridge'>\n      <source bridge='{}'/>\n      <mtu size='{}'/>\n",
            esc(&n.bridge),
            crate::backend::net::MTU
        )
    });
    let nic = match d.network.as_deref().and_then(|n| n.split_once(':')) {
        _ if first.is_some() => first.unwrap_or_default(),
        Some(("bridge", b)) => format!(
            "    <interface type='bridge'>\n      <source bridge='{}'/>\n",
            esc(b)
        ),
        Some((_, n)) => format!(
            "    <interface type='network'>\n      <source network='{}'/>\n",
            esc(n)
        ),
        None => "    <interface type='user'>\n".to_string(),
    };
    format!(
        "<domain type='{virt}'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <metadata><vmthunder xmlns='https://vmthunder.dev/xmlns/domain/1'>managed</vmthunder></metadata>
  <memory unit='KiB'>{mem}</memory>
  <vcpu>{vcpus}</vcpu>
  <os{firmware}>
{os}  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none' io='native'/>
      <source dev='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
{extra}{nic}      <mac address='{mac}'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='{console}'/>
    </serial>
  </devices>
</domain>
",
        name = esc(&d.name),
        uuid = esc(&d.uuid),
        mem = d.memory.0 / 1024,
        vcpus = d.vcpus,
        disk = esc(disk),
        mac = esc(&d.mac),
        console = esc(&console_log(&d.name)),
    )
}

/// What `virsh dumpxml` says of the identity and disk of a domain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DomainXml {
    pub name: String,
    pub uuid: String,
    pub macs: Vec<String>,
    pub disks: Vec<String>,
}

/// The value of `attr='...'` (or `"..."`) in an XML tag's text.
fn attr(tag: &str, attr: &str) -> Option<String> {
    let at = tag.find(&format!("{attr}="))? + attr.len() + 1;
    let quote = tag[at..].chars().next()?;
    let rest = &tag[at + 1..];
    Some(rest[..rest.find(quote)?].to_string())
}

fn element(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let at = xml.find(&open)? + open.len();
    let end = xml[at..].find(&format!("</{name}>"))?;
    Some(xml[at..at + end].trim().to_string())
}

/// Reads what vmthunder checks from libvirt's XML (it writes it in a fixed shape: one element
/// per line, attributes quoted with `'`).
pub fn parse_dumpxml(xml: &str) -> DomainXml {
    let mut d = DomainXml {
        name: element(xml, "name").unwrap_or_default(),
        uuid: element(xml, "uuid").unwrap_or_default(),
        ..DomainXml::default()
    };
    for line in xml.lines().map(str::trim) {
        if line.starts_with("<mac ") {
            d.macs.extend(attr(line, "address"));
        } else if line.starts_with("<source ") {
            d.disks.extend(attr(line, "dev"));
        }
    }
    d
}

impl LinuxStack {
    fn virt_type(&self, host: &str) -> Result<&'static str, BackendError> {
        use crate::spec::Accel;
        Ok(match self.accel {
            Accel::Kvm => "kvm",
            Accel::Tcg => "qemu",
            Accel::Auto => {
                let out = self.run(
                    host,
                    &args(&["sh", "-c", "[ -c /dev/kvm ] && echo kvm || echo qemu"]),
                )?;
                if out.trim() == "kvm" {
                    "kvm"
                } else {
                    "qemu"
                }
            }
        })
    }
}

fn attrs(t: Target<'_>) -> &DomainAttrs {
    match t.desired {
        Desired::Domain(d) => d,
        _ => unreachable!("domain attributes"),
    }
}

pub(super) fn read(stack: &LinuxStack, t: Target<'_>) -> Result<Option<Observed>, BackendError> {
    let d = attrs(t);
    let host = &*t.addr.host;
    let xml = match stack.attempt(host, &dumpxml_argv(&d.name))? {
        Ok(x) => x,
        Err(e) if e.stderr.contains("failed to get domain") => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let x = parse_dumpxml(&xml);
    if !x.uuid.eq_ignore_ascii_case(&d.uuid) {
        return Err(BackendError::new(format!(
            "{}: host {host} has a domain {} with UUID {}, not {}: it is not this clone; undefine or rename it",
            t.addr, d.name, x.uuid, d.uuid
        )));
    }
    let state = stack.run(host, &domstate_argv(&d.name))?;
    let mut o = Observed::new();
    o.insert("name".into(), x.name.into());
    o.insert("uuid".into(), x.uuid.into());
    o.insert(
        "mac".into(),
        x.macs.first().cloned().unwrap_or_default().into(),
    );
    o.insert(
        "disk".into(),
        x.disks.first().cloned().unwrap_or_default().into(),
    );
    o.insert("state".into(), state.trim().into());
    Ok(Some(o))
}

pub(super) fn create(
    stack: &LinuxStack,
    t: Target<'_>,
    deps: &[(Addr, Observed)],
) -> Result<Observed, BackendError> {
    let d = attrs(t);
    let host = &*t.addr.host;
    let disk = dep_attr(deps, Kind::Snapshot, "device")?.to_string();
    // A domain left by an interrupted create is adopted (its UUID checked by `read`).
    let running = match read(stack, t)? {
        Some(o) => o.get("state").and_then(|v| v.as_str()) == Some("running"),
        None => {
            let seed = crate::backend::dep_value(deps, Kind::Seed, "path").and_then(|v| v.as_str());
            let xml = domain_xml(d, &disk, seed, stack.virt_type(host)?);
            stack.run(host, &define_argv(&xml))?;
            false
        }
    };
    if !running {
        stack.run(host, &start_argv(&d.name))?;
    }
    read(stack, t)?.ok_or_else(|| {
        BackendError::new(format!(
            "{}: virsh defined {} on host {host} but does not show it",
            t.addr, d.name
        ))
    })
}

pub(super) fn delete(stack: &LinuxStack, t: Target<'_>) -> Result<(), BackendError> {
    let d = attrs(t);
    let host = &*t.addr.host;
    if read(stack, t)?.is_none() {
        return Ok(());
    }
    match stack.attempt(host, &destroy_argv(&d.name))? {
        Ok(_) => {}
        Err(e) if e.stderr.contains("not running") => {}
        Err(e) => return Err(e.into()),
    }
    match stack.attempt(host, &undefine_argv(&d.name))? {
        Ok(_) => Ok(()),
        Err(e) if e.stderr.contains("failed to get domain") => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size::Size;

    fn attrs() -> DomainAttrs {
        DomainAttrs {
            name: "base-node01-0".into(),
            uuid: "6d6bceea-4a69-5c5a-80f6-b3cd43fe8cdc".into(),
            mac: "52:54:00:aa:bb:cc".into(),
            vcpus: 2,
            memory: Size(256 << 20),
            boot: None,
            network: Some("bridge:br0".into()),
            firmware: Default::default(),
            nics: Vec::new(),
        }
    }

    /// A UEFI clone on two cluster networks with a seed: the first NIC carries the clone's
    /// MAC, the seed is a read-only second disk, the firmware libvirt's EFI autoselection.
    #[test]
    fn builds_the_domain_xml_of_a_networked_uefi_clone() {
        let mut d = attrs();
        d.network = None;
        d.firmware = crate::resource::Firmware::Uefi;
        d.nics = ["lab", "data"]
            .iter()
            .enumerate()
            .map(|(i, n)| crate::resource::Nic {
                network: n.to_string(),
                bridge: format!("vb{i}"),
                mac: if i == 0 {
                    d.mac.clone()
                } else {
                    "02:00:00:00:00:09".into()
                },
                address: format!("10.6{i}.0.5/16"),
            })
            .collect();
        let xml = domain_xml(
            &d,
            "/dev/mapper/s",
            Some("/var/lib/vmthunder/c/n/base/seed-0.iso"),
            "qemu",
        );
        insta::assert_snapshot!(xml);
        let back = parse_dumpxml(&xml);
        assert_eq!(back.macs, ["02:00:00:00:00:09", "52:54:00:aa:bb:cc"]);
        assert!(xml.contains("<os firmware='efi'>"), "{xml}");
        assert!(xml.contains("<source bridge='vb0'/>") && xml.contains("<source bridge='vb1'/>"));
    }

    #[test]
    fn builds_the_domain_xml() {
        let xml = domain_xml(&attrs(), "/dev/mapper/vmt.c.base.snap0", None, "qemu");
        insta::assert_snapshot!(xml);
        let back = parse_dumpxml(&xml);
        assert_eq!(back.name, "base-node01-0");
        assert_eq!(back.uuid, "6d6bceea-4a69-5c5a-80f6-b3cd43fe8cdc");
        assert_eq!(back.macs, ["52:54:00:aa:bb:cc"]);
        assert_eq!(back.disks, ["/dev/mapper/vmt.c.base.snap0"]);
        let mut user = attrs();
        user.network = None;
        assert!(domain_xml(&user, "/d", None, "kvm").contains("<interface type='user'>"));
        assert!(define_argv("<domain/>").contains(&"<domain/>".to_string()));
        for (argv, verb) in [
            (start_argv("d"), "start"),
            (destroy_argv("d"), "destroy"),
            (undefine_argv("d"), "undefine"),
            (domstate_argv("d"), "domstate"),
            (dumpxml_argv("d"), "dumpxml"),
        ] {
            assert_eq!(
                argv.join(" "),
                format!("virsh -q -c qemu:///system {verb} d")
            );
        }
    }

    /// A direct kernel boot: kernel, initrd and the command line with the clone's name and
    /// first address put in, escaped; no boot device and no EFI firmware then.
    #[test]
    fn builds_the_domain_xml_of_a_direct_kernel_boot() {
        let mut d = attrs();
        d.firmware = crate::resource::Firmware::Uefi;
        d.boot = Some(crate::spec::Boot {
            kernel: "/srv/boot/vmlinuz".into(),
            initrd: Some("/srv/boot/initrd.img".into()),
            append: "console=ttyS0 vmthunder.name={name} ip={address} a&b".into(),
        });
        d.nics = vec![crate::resource::Nic {
            network: "lab".into(),
            bridge: "vb0".into(),
            mac: d.mac.clone(),
            address: "10.60.0.5/16".into(),
        }];
        let xml = domain_xml(&d, "/dev/mapper/s", None, "qemu");
        let os: Vec<&str> = xml
            .lines()
            .skip_while(|l| !l.contains("<os"))
            .take_while(|l| !l.contains("</os>"))
            .map(str::trim)
            .collect();
        assert_eq!(
            os,
            [
                "<os>",
                "<type arch='x86_64'>hvm</type>",
                "<kernel>/srv/boot/vmlinuz</kernel>",
                "<initrd>/srv/boot/initrd.img</initrd>",
                "<cmdline>console=ttyS0 vmthunder.name=base-node01-0 ip=10.60.0.5/16 a&amp;b</cmdline>",
            ],
            "{xml}"
        );
    }

    /// Captured from libvirt 9.0.0 (Debian 12) in the test guest: `virsh dumpxml` of a domain
    /// vmthunder defined and started.
    #[test]
    fn parses_dumpxml() {
        let x = parse_dumpxml(include_str!("fixtures/virsh-dumpxml.xml"));
        assert_eq!(x.name, "base-node01-0");
        assert_eq!(x.uuid.len(), 36);
        assert_eq!(x.macs.len(), 1);
        assert!(x.disks[0].starts_with("/dev/mapper/vmt."), "{x:?}");
    }
}
