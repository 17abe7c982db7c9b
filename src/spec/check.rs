//! Semantic checks of a decoded spec: names, references, uniqueness, ranges.
//!
//! Runs on whatever decoded, so one broken host does not hide a bad reference elsewhere.

use std::collections::HashMap;

use super::decode::{Diagnostics, Draft};
use super::{render_template, Stack, Transport, MAX_CLONES, TEMPLATE_FIELDS};

pub(crate) fn check(d: &Draft, diags: &mut Diagnostics) {
    let backend = d.backend.as_ref();
    if let Some(b) = backend {
        if b.stack == Stack::Linux && b.volume_group.is_none() {
            diags.push(
                "/backend",
                "the linux stack needs \"volume_group\": the LVM volume group for cache and copy-on-write volumes",
            );
        }
        if b.netns && b.transport != Transport::Local {
            diags.push(
                "/backend/netns",
                "network namespaces are created by the local transport only; over ssh each host is its own machine",
            );
        }
        if b.root.trim().is_empty() {
            diags.push("/backend/root", "must not be empty");
        } else if b.transport == Transport::Ssh && !b.root.starts_with('/') {
            diags.push(
                "/backend/root",
                format!(
                    "{:?} is relative: over ssh, paths are on the hosts; give an absolute path",
                    b.root
                ),
            );
        }
        if b.stack == Stack::Qemu && b.root.contains([',', '\n']) {
            // QEMU's option syntax separates fields with commas.
            diags.push(
                "/backend/root",
                format!(
                    "{:?}: the qemu stack's paths cannot contain ',' or a newline",
                    b.root
                ),
            );
        }
        if let Some(ssh) = &b.ssh {
            check_ssh(ssh, "/backend/ssh", diags);
        }
    }
    if let Some(e) = &d.estimate {
        check_estimate(e, diags);
    }
    if let Some(s) = &d.state {
        super::state::check(s, diags);
    }
    let over_ssh = backend.is_some_and(|b| b.transport == Transport::Ssh);
    if let (true, Some(boot)) = (over_ssh, d.clones.as_ref().and_then(|c| c.boot.as_ref())) {
        for (field, path) in [
            ("kernel", Some(&boot.kernel)),
            ("initrd", boot.initrd.as_ref()),
        ] {
            if let Some(p) = path.filter(|p| !p.starts_with('/')) {
                diags.push(
                    format!("/clones/boot/{field}"),
                    format!("{p:?} is relative: over ssh it is a file on each host; give an absolute path"),
                );
            }
        }
    }
    let unique_addresses = backend.is_some_and(|b| b.transport == Transport::Ssh || b.netns);

    // Hosts: names and addresses.
    let mut host_at: HashMap<&str, usize> = HashMap::with_capacity(d.hosts.len());
    let mut address_at: HashMap<&str, usize> = HashMap::new();
    for (i, h) in d.hosts.iter().enumerate() {
        let Some(h) = h else { continue };
        if let Some(first) = host_at.insert(&h.name, i) {
            host_at.insert(&h.name, first);
            diags.push(
                format!("/hosts/{i}/name"),
                format!("duplicate host name {:?} (first at /hosts/{first})", h.name),
            );
        }
        if let Some(ssh) = &h.ssh {
            check_ssh(ssh, &format!("/hosts/{i}/ssh"), diags);
        }
        if !is_address(&h.address) {
            diags.push(
                format!("/hosts/{i}/address"),
                format!("invalid address {:?}: use an IP address or a DNS name (letters, digits, '.', '-', ':')", h.address),
            );
        } else if unique_addresses {
            if let Some(first) = address_at.insert(&h.address, i) {
                address_at.insert(&h.address, first);
                diags.push(
                    format!("/hosts/{i}/address"),
                    format!(
                        "address {:?} is also used by /hosts/{first}; with {} every host needs its own address",
                        h.address,
                        if backend.is_some_and(|b| b.netns) { "netns" } else { "the ssh transport" }
                    ),
                );
            }
        }
    }
    let host_known = |name: &str| host_at.contains_key(name);
    let hosts_complete = d.hosts.iter().all(Option::is_some);

    // Images: names, references, host lists.
    let mut image_at: HashMap<&str, usize> = HashMap::new();
    for (i, img) in d.images.iter().enumerate() {
        let Some(img) = img else { continue };
        if let Some(first) = image_at.insert(&img.name, i) {
            image_at.insert(&img.name, first);
            diags.push(
                format!("/images/{i}/name"),
                format!(
                    "duplicate image name {:?} (first at /images/{first})",
                    img.name
                ),
            );
        }
        if hosts_complete && !host_known(&img.source_host) {
            diags.push(
                format!("/images/{i}/source_host"),
                format!("unknown host {:?}", img.source_host),
            );
        }
        if img.path.trim().is_empty() {
            diags.push(format!("/images/{i}/path"), "must not be empty");
        } else if over_ssh && !img.path.starts_with('/') {
            diags.push(
                format!("/images/{i}/path"),
                format!("{:?} is relative: over ssh the image is a file on its source host; give an absolute path", img.path),
            );
        }
        if let Some(v) = &img.version {
            let ok = v.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && v.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
            if !ok || v.len() > 64 {
                diags.push(
                    format!("/images/{i}/version"),
                    format!("invalid version {v:?}: use up to 64 lowercase letters, digits, '.' or '-' (it becomes part of an iSCSI name)"),
                );
            }
        }
        if img.clones.is_some() && img.clones_per_host.is_some() {
            diags.push(
                format!("/images/{i}/clones"),
                "give either clones (a total, placed over the image's hosts) or clones_per_host, not both",
            );
        }
        if img.placement.is_some() && img.clones.is_none() {
            diags.push(
                format!("/images/{i}/placement"),
                "placement places a total: give images[].clones too (with clones_per_host every host gets that many)",
            );
        }
        if let Some(imp) = &img.import {
            check_import(img, imp, i, over_ssh, &host_known, hosts_complete, diags);
        }
        if let Some(list) = &img.hosts {
            let mut seen: HashMap<&str, usize> = HashMap::with_capacity(list.len());
            for (j, h) in list.iter().enumerate() {
                let at = format!("/images/{i}/hosts/{j}");
                if hosts_complete && !host_known(h) {
                    diags.push(at, format!("unknown host {h:?}"));
                } else if *h == img.source_host {
                    diags.push(
                        at,
                        format!("{h:?} is the image's source host; it serves the image and boots no clones of it"),
                    );
                } else if let Some(first) = seen.insert(h, j) {
                    seen.insert(h, first);
                    diags.push(
                        at,
                        format!("host {h:?} is listed twice (first at /images/{i}/hosts/{first})"),
                    );
                }
            }
        }
    }

    if let Some(c) = &d.cache {
        if c.size.bytes() == 0 {
            diags.push("/cache/size", "must be greater than zero");
        }
    }
    if let Some(c) = &d.clones {
        if c.memory.bytes() < (16 << 20) {
            diags.push("/clones/memory", "must be at least 16MiB");
        }
        if c.cow_size.bytes() == 0 {
            diags.push("/clones/cow_size", "must be greater than zero");
        }
        if c.boot.is_some() && c.firmware != crate::resource::Firmware::Bios {
            diags.push(
                "/clones/firmware",
                "clones with `boot` start their kernel directly; `firmware` is for clones that boot their own disk: remove one of them",
            );
        }
        if let Some(r) = &c.ready {
            if r.line.is_none() && r.tcp.is_none() {
                diags.push(
                    "/clones/ready",
                    "give \"line\" (text on the console), \"tcp\" (a port that answers), or both",
                );
            }
            if r.tcp.is_some() && c.networks.is_empty() {
                diags.push(
                    "/clones/ready/tcp",
                    "a TCP check needs an address: attach the clones to a network with clones.networks",
                );
            }
        }
        if over_ssh {
            for (i, p) in c.ssh_authorized_keys.iter().enumerate() {
                if p.trim().is_empty() {
                    diags.push(
                        format!("/clones/ssh_authorized_keys/{i}"),
                        "must not be empty",
                    );
                }
            }
        }
        if check_totals(d, diags) {
            check_template(d, &c.name, diags);
        }
    }
}

/// The cluster's size within what one plan can hold ([`MAX_CLONES`]), and every export port
/// a fresh placement hands out within 1-65535. False when the clones are too many to expand.
fn check_totals(d: &Draft, diags: &mut Diagnostics) -> bool {
    if !d.images.iter().all(Option::is_some) || !d.hosts.iter().all(Option::is_some) {
        return true;
    }
    let hosts = d.hosts.len() as u64;
    let default_per_host = d.clones.as_ref().map_or(1, |c| c.per_host);
    let mut clones: u64 = 0;
    let mut biggest = ("/clones/per_host".to_string(), 0u64);
    let mut terms = Vec::new();
    for (i, img) in d.images.iter().flatten().enumerate() {
        let members = img
            .hosts
            .as_ref()
            .map_or(hosts.saturating_sub(1), |l| l.len() as u64);
        let (these, at) = match (img.clones, img.clones_per_host) {
            (Some(total), _) => {
                terms.push(total.to_string());
                (total, format!("/images/{i}/clones"))
            }
            (None, Some(n)) => {
                terms.push(format!("{members} x {n}"));
                (
                    members * u64::from(n),
                    format!("/images/{i}/clones_per_host"),
                )
            }
            (None, None) => {
                terms.push(format!("{members} x {default_per_host}"));
                (
                    members * u64::from(default_per_host),
                    "/clones/per_host".to_string(),
                )
            }
        };
        clones += these;
        if these > biggest.1 {
            biggest = (at, these);
        }
    }
    if clones > MAX_CLONES {
        diags.push(
            biggest.0,
            format!("the spec asks for {}{clones} clones in all; one cluster holds at most {MAX_CLONES} (a plan of a million clones takes about 4.3 GiB of memory): use fewer clones per host or split the cluster", if terms.len() <= 4 { format!("{} = ", terms.join(" + ")) } else { String::new() }),
        );
        return false;
    }
    if let Some(b) = d.backend.as_ref().filter(|b| b.stack != Stack::Linux) {
        let mut sharing: HashMap<&str, u64> = HashMap::new();
        for h in d.hosts.iter().flatten() {
            *sharing.entry(h.address.as_str()).or_default() += 1;
        }
        let (address, most) = sharing
            .iter()
            .max_by_key(|(a, n)| (**n, std::cmp::Reverse(**a)))
            .map_or(("", 0), |(a, n)| (*a, *n));
        let images = d.images.len() as u64;
        let last = u64::from(b.base_port) + most * images - 1;
        if most > 0 && last > u64::from(u16::MAX) {
            diags.push(
                "/backend/base_port",
                format!(
                    "{} host{} at address {address:?} with {images} image{} need{} ports {} to {last}, past 65535: lower base_port or give the hosts their own addresses",
                    most,
                    if most == 1 { "" } else { "s" },
                    if images == 1 { "" } else { "s" },
                    if most == 1 { "s" } else { "" },
                    b.base_port,
                ),
            );
        }
    }
    true
}

/// Template syntax, rendered name validity, and that no two clones get the same name.
fn check_template(d: &Draft, template: &str, diags: &mut Diagnostics) {
    let mut rest = template;
    let mut bad = false;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) if TEMPLATE_FIELDS.contains(&&after[..close]) => rest = &after[close + 1..],
            Some(close) => {
                diags.push(
                    "/clones/name",
                    format!(
                        "unknown placeholder {{{}}}: use {{cluster}}, {{image}}, {{host}} or {{n}}",
                        &after[..close]
                    ),
                );
                bad = true;
                rest = &after[close + 1..];
            }
            None => {
                diags.push("/clones/name", "unclosed '{' in template");
                bad = true;
                break;
            }
        }
    }
    if bad || !d.images.iter().all(Option::is_some) || !d.hosts.iter().all(Option::is_some) {
        return;
    }
    let Some(cluster) = &d.cluster else { return };
    let default_per_host = d.clones.as_ref().map_or(1, |c| c.per_host);
    let mut seen: HashMap<String, (usize, &str, u32)> = HashMap::new();
    let all_hosts: Vec<&str> = d.hosts.iter().flatten().map(|h| h.name.as_str()).collect();
    for (i, img) in d.images.iter().flatten().enumerate() {
        let members: Vec<&str> = match &img.hosts {
            Some(list) => list.iter().map(String::as_str).collect(),
            None => all_hosts
                .iter()
                .copied()
                .filter(|h| *h != img.source_host)
                .collect(),
        };
        // A total's clones on a host are not known before placement: its names are checked
        // for an even share per host, and at least two (so a template without {n} is caught),
        // which keeps the check linear in the total.
        let per_host = match img.clones {
            Some(total) => {
                let share = total.div_ceil(members.len().max(1) as u64);
                (share.max(2).min(total) as u32).min(super::MAX_CLONES_PER_HOST)
            }
            None => img.clones_per_host.unwrap_or(default_per_host),
        };
        for host in members {
            for n in 0..per_host {
                let name = render_template(template, cluster, &img.name, host, n);
                if let Some(bad_char) = name
                    .chars()
                    .find(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(*c)))
                {
                    diags.push(
                        "/clones/name",
                        format!("template gives {name:?}, which contains {bad_char:?}; VM names may use letters, digits, '-', '_' and '.'"),
                    );
                    return;
                }
                if name.is_empty() || name.len() > 64 {
                    diags.push(
                        "/clones/name",
                        format!("template gives {name:?}; VM names must have 1-64 characters"),
                    );
                    return;
                }
                if let Some((fi, fh, fnn)) = seen.get(&name) {
                    let first_image = d.images[*fi].as_ref().map_or("", |m| m.name.as_str());
                    diags.push(
                        "/clones/name",
                        format!(
                            "template {template:?} gives the same name {name:?} to clone {fnn} of image {first_image:?} on host {fh:?} and clone {n} of image {:?} on host {host:?}; include {{image}}, {{host}} and {{n}} as needed",
                            img.name
                        ),
                    );
                    return;
                }
                seen.insert(name, (i, host, n));
            }
        }
    }
}

/// SSH settings: nothing in them may reach the ssh command line as an option or shell syntax.
/// An image's `import`: where it reads from, and that it does not read the file it writes.
fn check_import(
    img: &super::Image,
    imp: &super::Import,
    i: usize,
    over_ssh: bool,
    host_known: &dyn Fn(&str) -> bool,
    hosts_complete: bool,
    diags: &mut Diagnostics,
) {
    let at = format!("/images/{i}/import");
    if imp.from.trim().is_empty() {
        diags.push(format!("{at}/from"), "must not be empty");
        return;
    }
    if let Some(h) = &imp.from_host {
        if hosts_complete && !host_known(h) {
            diags.push(
                format!("{at}/from_host"),
                format!("unknown host {h:?}: list the machine you import from in hosts (with how to reach it)"),
            );
        }
    }
    let remote = imp
        .from_host
        .as_ref()
        .is_some_and(|h| *h != img.source_host);
    if (over_ssh || remote) && !imp.from.starts_with('/') {
        diags.push(
            format!("{at}/from"),
            format!(
                "{:?} is relative: the source is a file on host {:?}; give an absolute path",
                imp.from,
                img.import_host().unwrap_or_default()
            ),
        );
    }
    if !remote
        && crate::backend::qemu::absolute(&imp.from) == crate::backend::qemu::absolute(&img.path)
    {
        diags.push(
            format!("{at}/from"),
            format!(
                "{:?} is the image's own path: an import writes a new file at /images/{i}/path; give another path there",
                imp.from
            ),
        );
    }
}

fn check_ssh(ssh: &super::Ssh, at: &str, diags: &mut Diagnostics) {
    if let Some(u) = &ssh.user {
        let mut chars = u.chars();
        let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok {
            diags.push(
                format!("{at}/user"),
                format!("invalid user name {u:?}: use letters, digits, '_', '.' and '-'"),
            );
        }
    }
    if let Some(j) = &ssh.jump {
        let ok = j.split(',').all(|hop| {
            let (user, rest) = hop.rsplit_once('@').unwrap_or(("x", hop));
            let user_ok = !user.is_empty()
                && !user.starts_with('-')
                && user
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            user_ok && is_address(rest)
        });
        if !ok {
            diags.push(
                format!("{at}/jump"),
                format!(
                    "invalid jump host {j:?}: use [user@]host[:port], several separated by ','"
                ),
            );
        }
    }
    for (field, v) in [
        ("identity_file", &ssh.identity_file),
        ("known_hosts", &ssh.known_hosts),
        ("config_file", &ssh.config_file),
    ] {
        if v.as_deref().is_some_and(|p| p.trim().is_empty()) {
            diags.push(format!("{at}/{field}"), "must not be empty");
        }
    }
}

/// A host address: an IP address (v4, v6, optionally in brackets) or a DNS name. Never
/// starts with '-', so it cannot be taken for an option of the ssh client.
pub(crate) fn is_address(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:_[]".contains(c))
}

fn check_estimate(e: &super::Estimate, diags: &mut Diagnostics) {
    for (verb, table) in [
        ("create", &e.create),
        ("update", &e.update),
        ("delete", &e.delete),
    ] {
        for (kind, secs) in table {
            if !(0.0..=86_400.0).contains(secs) {
                diags.push(
                    format!("/estimate/{verb}/{kind}"),
                    format!("{secs} is not a duration in seconds between 0 and 86400"),
                );
            }
        }
    }
    if e.hop_window.bytes() == 0 {
        diags.push("/estimate/hop_window", "must be greater than zero");
    }
}
