//! The documents of a clone's cloud-init NoCloud seed: `meta-data`, `user-data` and
//! `network-config` (version 2), rendered from the clone's identity and the spec.
//!
//! Pure text; the stacks write them onto the hosts and pack them (`seed` resources). Values
//! are written as JSON strings, which YAML reads as double-quoted scalars, so no name, key
//! or comment can change the documents' structure.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::resource::Nic;

fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// `instance-id` is the clone's UUID (a new UUID is a new instance to cloud-init, which then
/// runs its per-instance modules again), `local-hostname` its name.
pub fn meta_data(uuid: &str, name: &str) -> String {
    format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        quoted(uuid),
        quoted(name)
    )
}

/// Static addresses by MAC; interfaces are named `eth0`, `eth1`... in `clones.networks`
/// order. The network's gateway is not a default route: nothing on a cluster network routes.
/// No router advertisements are awaited either (systemd-networkd would otherwise hold the
/// interface, and cloud-init and sshd behind it, for 10 s).
pub fn network_config(nics: &[Nic]) -> Option<String> {
    if nics.is_empty() {
        return None;
    }
    let mut out = String::from("version: 2\nethernets:\n");
    for (i, nic) in nics.iter().enumerate() {
        let _ = write!(
            out,
            "  eth{i}:\n    match:\n      macaddress: {}\n    set-name: eth{i}\n    addresses: [{}]\n    accept-ra: false\n",
            quoted(&nic.mac),
            quoted(&nic.address)
        );
    }
    Some(out)
}

/// The login user with passwordless sudo and the spec's keys (a `#cloud-config` document).
fn login(user: &str, keys: &[String], with_default: bool) -> String {
    let mut out = String::from("#cloud-config\nusers:\n");
    if with_default {
        out.push_str("  - default\n");
    }
    let _ = writeln!(out, "  - name: {}", quoted(user));
    out.push_str(
        "    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n    shell: /bin/bash\n    lock_passwd: true\n",
    );
    if !keys.is_empty() {
        out.push_str("    ssh_authorized_keys:\n");
        for k in keys {
            let _ = writeln!(out, "      - {}", quoted(k));
        }
    }
    out
}

/// The user data: the login user alone, or, beside the spec's own user data, a MIME
/// multipart message whose second part cloud-init merges into the first (lists appended,
/// existing keys kept), so the user's `users`, `packages` or script stay as written.
pub fn user_data(own: Option<&str>, user: &str, keys: &[String]) -> String {
    let Some(own) = own else {
        return login(user, keys, true);
    };
    let ours = login(user, keys, false);
    let boundary = format!(
        "vmthunder-{:x}",
        Sha256::digest([own.as_bytes(), ours.as_bytes()].concat())
    );
    let first = own.lines().next().unwrap_or("").trim();
    let own_type = match first {
        l if l.starts_with("#!") => "text/x-shellscript",
        l if l.starts_with("#cloud-config") => "text/cloud-config",
        l if l.starts_with("#include") => "text/x-include-url",
        l if l.starts_with("#cloud-boothook") => "text/cloud-boothook",
        l if l.starts_with("## template: jinja") => "text/jinja2",
        _ => "text/plain",
    };
    let mut out = String::new();
    let _ = write!(
        out,
        "Content-Type: multipart/mixed; boundary=\"{boundary}\"\nMIME-Version: 1.0\n\n\
         --{boundary}\nContent-Type: {own_type}; charset=\"utf-8\"\nMIME-Version: 1.0\n\n{own}"
    );
    if !own.ends_with('\n') {
        out.push('\n');
    }
    let _ = write!(
        out,
        "--{boundary}\nContent-Type: text/cloud-config; charset=\"utf-8\"\nMIME-Version: 1.0\n\
         Merge-Type: list(append)+dict(no_replace,recurse_list)+str()\n\n{ours}--{boundary}--\n"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_quote_what_they_carry() {
        assert_eq!(
            meta_data("u-1", "web-0"),
            "instance-id: \"u-1\"\nlocal-hostname: \"web-0\"\n"
        );
        let nics = [Nic {
            network: "lab".into(),
            bridge: "vb0".into(),
            mac: "02:00:00:00:00:01".into(),
            address: "10.60.0.7/16".into(),
        }];
        let n = network_config(&nics).unwrap();
        assert!(n.contains("macaddress: \"02:00:00:00:00:01\""), "{n}");
        assert!(n.contains("addresses: [\"10.60.0.7/16\"]"), "{n}");
        assert_eq!(network_config(&[]), None);
        let u = user_data(None, "vmthunder", &["ssh-ed25519 AAAA a\"b".into()]);
        assert!(u.starts_with("#cloud-config\nusers:\n  - default\n"), "{u}");
        assert!(u.contains(r#"- "ssh-ed25519 AAAA a\"b""#), "{u}");
    }

    #[test]
    fn own_user_data_is_kept_whole_and_merged_with_the_login() {
        let own = "#!/bin/sh\necho hi > /tmp/hi\n";
        let u = user_data(Some(own), "ops", &["ssh-ed25519 AAAA k".into()]);
        assert!(u.starts_with("Content-Type: multipart/mixed; boundary=\"vmthunder-"));
        assert!(u.contains("Content-Type: text/x-shellscript"), "{u}");
        assert!(u.contains(own), "{u}");
        assert!(u.contains("Merge-Type: list(append)"), "{u}");
        assert!(
            u.contains("  - name: \"ops\"") && !u.contains("- default"),
            "{u}"
        );
        let boundary = u.split('"').nth(1).unwrap();
        assert!(u.ends_with(&format!("--{boundary}--\n")));
        assert_eq!(u.matches(&format!("--{boundary}\n")).count(), 2);
    }
}
