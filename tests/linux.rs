//! The linux stack end to end, on real LVM, device-mapper, tgt, open-iscsi and libvirt: this
//! machine's kernel has none of device-mapper, iSCSI or NBD, so the hosts are three Debian 12
//! guest VMs under QEMU (TCG), built from Debian packages by scripts/build-linux-guest.sh and
//! booted on a bridge of this machine by scripts/linux-guests.sh.
//!
//! img0 (the image) -> node01 -> node02 (degree 1: node01 is a relay), one clone on each node,
//! a libvirt domain over its snapshot; with tgt, then again with LIO, where node01's export is
//! then deleted by hand: node02 moves onto img0 in place, and back once node01 serves again.
//!
//! The clones boot their firmware only (their disk, the test image, holds no boot sector, so
//! SeaBIOS idles): what is checked is the domain's lifecycle and the data under it. A guest
//! kernel under TCG inside a TCG guest took about 65% of its host's vCPU for as long as the
//! domain ran and never got past 0.2 s of its own boot; the direct kernel boot's XML is
//! checked by the libvirt builder's tests, and real kernels boot on the qemu stack's tests.
//!
//! Takes about 15 minutes (3 more when the guest image is built first). Root only; set
//! VMTHUNDER_SKIP_LINUX_E2E=1 to skip it.

mod common;

use std::process::{Command, Output};

use common::*;
use serde_json::json;

const BED: &str = "lt";
const NET: &str = "62";
const HOSTS: [&str; 3] = ["img0", "node01", "node02"];

fn script(name: &str) -> String {
    repo().join("scripts").join(name).display().to_string()
}

/// The guests, stopped and removed on drop (also when the test fails).
struct Guests;

impl Guests {
    fn up() -> Guests {
        let g = Guests;
        let mut args = vec!["up", "-b", BED, "-n", NET];
        args.extend(HOSTS);
        let out = Command::new(script("linux-guests.sh"))
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "guests did not come up:\n{}",
            text(&out)
        );
        g
    }

    /// Runs a shell command on a guest; its output (stdout and stderr) and whether it
    /// succeeded. Bounded: a command that hangs (or leaves something holding the session
    /// open) fails after 10 minutes instead of hanging the test.
    fn sh(&self, host: &str, cmd: &str) -> (bool, String) {
        let out: Output = Command::new("timeout")
            .args(["--kill-after=10", "600"])
            .arg(script("linux-guests.sh"))
            .args(["ssh", "-b", BED, host, cmd])
            .output()
            .unwrap();
        (out.status.success(), text(&out))
    }

    fn ok(&self, host: &str, cmd: &str) -> String {
        let (ok, out) = self.sh(host, cmd);
        assert!(ok, "on {host}: `{cmd}` failed:\n{out}");
        out
    }
}

impl Drop for Guests {
    fn drop(&mut self) {
        let _ = Command::new(script("linux-guests.sh"))
            .args(["down", "-b", BED])
            .status();
    }
}

/// Logs every program a host starts, with its arguments as `/proc/PID/cmdline` shows them
/// to any user, read the moment the kernel's process connector reports the exec (a poll of
/// `/proc` would miss commands that last milliseconds). Run as root on each guest.
const SAMPLER: &str = r#"use strict; use warnings; use Socket; use IO::Handle;
my $out = shift;
open(my $log, ">>", $out) or die "$out: $!";
$log->autoflush(1);
socket(my $s, 16, SOCK_DGRAM, 11) or die "netlink: $!";
setsockopt($s, SOL_SOCKET, SO_RCVBUF, 1 << 22);
bind($s, pack("SSLL", 16, 0, $$, 1)) or die "bind: $!";
my $cn = pack("LLLLSS", 1, 1, 0, 0, 4, 0) . pack("L", 1);
send($s, pack("LSSLL", 16 + length($cn), 3, 0, 0, $$) . $cn, 0) or die "send: $!";
print $log "sampler ready\n";
while (1) {
  defined(recv($s, my $buf, 65536, 0)) or next;
  next if length($buf) < 56;
  next unless unpack("L", substr($buf, 36, 4)) == 2;
  my $pid = unpack("L", substr($buf, 52, 4));
  open(my $f, "<", "/proc/$pid/cmdline") or next;
  local $/;
  my $c = <$f>;
  next unless defined $c && length $c;
  $c =~ tr/\0/ /;
  print $log "$c\n";
}
"#;

const SAMPLES: &str = "/root/cmdlines.log";
/// A short-lived command the sampler must see: it proves the sampler catches commands as
/// brief as the tools vmthunder runs.
const CONTROL: &str = "vmt-sampler-control";

impl Guests {
    /// Starts [`SAMPLER`] on every host and waits until it listens. `setsid -f` leaves it
    /// none of the ssh session's descriptors (a backgrounded `&&` list keeps them, and ssh
    /// waits for it to end).
    fn sample_cmdlines(&self) {
        use base64::Engine;
        let code = base64::engine::general_purpose::STANDARD.encode(SAMPLER);
        for h in HOSTS {
            self.ok(
                h,
                &format!(
                    "echo {code} | base64 -d > /root/sampler.pl && rm -f {SAMPLES} || exit 1; \
                     setsid -f perl /root/sampler.pl {SAMPLES} </dev/null >/root/sampler.err 2>&1; \
                     i=0; until grep -q 'sampler ready' {SAMPLES} 2>/dev/null; do \
                     i=$((i+1)); [ $i -le 100 ] || {{ cat /root/sampler.err; exit 1; }}; sleep 0.1; done; \
                     for i in 1 2 3 4 5 6 7 8 9 10; do sh -c : {CONTROL}; done"
                ),
            );
        }
    }

    /// What the samplers logged on `host`.
    fn samples(&self, host: &str) -> String {
        self.ok(host, &format!("cat {SAMPLES}"))
    }
}

/// The CHAP secrets state records.
fn chap_secrets(c: &Cluster) -> Vec<String> {
    c.state("e2e")["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["observed"]["chap_secret"].as_str().map(String::from))
        .collect()
}

/// No command line sampled on any host carried one of `secrets`, while the samplers saw
/// their control and the CHAP commands themselves (`what`, on the host named).
fn assert_no_secret_sampled(g: &Guests, secrets: &[String], what: &[(&str, &str)]) {
    for h in HOSTS {
        let log = g.samples(h);
        let lines = log.lines().count();
        let control = log.lines().filter(|l| l.contains(CONTROL)).count();
        eprintln!("{h}: {lines} command lines sampled, {control} of 10 controls");
        assert!(
            control > 0,
            "the sampler on {h} missed every control:\n{log}"
        );
        for s in secrets {
            let hits: Vec<&str> = log.lines().filter(|l| l.contains(s.as_str())).collect();
            assert!(
                hits.is_empty(),
                "on {h}, a CHAP secret in a command line: {hits:#?}"
            );
        }
    }
    for (h, needle) in what {
        let log = g.samples(h);
        assert!(
            log.lines().any(|l| l.contains(needle)),
            "the sampler on {h} never saw `{needle}`:\n{log}"
        );
    }
}

fn address(i: usize) -> String {
    format!("10.{NET}.0.{}", 10 + i)
}

fn spec(iscsi_target: &str) -> serde_json::Value {
    let key = repo().join("target/linux-guest/id_ed25519");
    json!({
        "version": 1,
        "cluster": "e2e",
        "backend": {
            "stack": "linux", "transport": "ssh", "root": "/var/lib/vmthunder",
            "volume_group": "vg_vmthunder", "iscsi_target": iscsi_target,
            "ssh": {
                "user": "root",
                "identity_file": key.display().to_string(),
                "known_hosts": format!("/var/tmp/vmthunder-linux-guests/{BED}/known_hosts"),
            }
        },
        "hosts": HOSTS.iter().enumerate().map(|(i, h)| json!({"name": h, "address": address(i)})).collect::<Vec<_>>(),
        "images": [{
            "name": "base", "source_host": "img0", "path": "/srv/images/base.raw",
            "format": "raw", "size": "64MiB", "version": "7"
        }],
        "tree": { "degree": 1 },
        "cache": { "size": "32MiB" },
        "clones": { "per_host": 1, "memory": "128MiB", "cow_size": "32MiB" }
    })
}

/// A write to the disk `host`'s session to `parent`'s target has (LUN `lun`) fails: the
/// target exports it read-only.
fn assert_read_only(g: &Guests, host: &str, parent: &str, iqn: &str, lun: u32) {
    let link = format!("/dev/disk/by-path/ip-{parent}:3260-iscsi-{iqn}-lun-{lun}");
    let disk = g.ok(host, &format!("readlink -f {link}"));
    let (wrote, why) = g.sh(
        host,
        &format!(
            "dd if=/dev/zero of={} bs=4k count=1 oflag=direct",
            disk.trim()
        ),
    );
    assert!(!wrote, "on {host}: a write to {link} succeeded: {why}");
}

/// sha256 of the first `mib` MiB of `path` on `host`.
fn digest(g: &Guests, host: &str, path: &str, mib: u32) -> String {
    let out = g.ok(
        host,
        &format!("dd if={path} bs=1M count={mib} iflag=direct status=none | sha256sum"),
    );
    out.split_whitespace().next().unwrap().to_string()
}

/// What vmthunder may have left on a host: LVs, dm devices, sessions, tgt targets and CHAP
/// accounts (none to list once tgtd is stopped for the LIO run), domains.
fn leftovers(g: &Guests, host: &str) -> String {
    g.ok(
        host,
        "lvs --noheadings -o lv_name vg_vmthunder; dmsetup ls | grep -v '^No devices found'; \
         iscsiadm -m session 2>/dev/null; \
         tgtadm --lld iscsi --op show --mode target 2>/dev/null; \
         tgtadm --lld iscsi --op show --mode account 2>/dev/null | grep -v '^Account list:'; \
         virsh -q -c qemu:///system list --all --name; true",
    )
    .trim()
    .to_string()
}

#[test]
fn linux_stack_end_to_end_in_guest_vms() {
    if std::env::var_os("VMTHUNDER_SKIP_LINUX_E2E").is_some() {
        eprintln!("skipped: VMTHUNDER_SKIP_LINUX_E2E is set");
        return;
    }
    let build = Command::new(script("build-linux-guest.sh"))
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", text(&build));
    let g = Guests::up();
    // Every command every host runs, from here to the end, is sampled for CHAP secrets.
    g.sample_cmdlines();
    let c = Cluster::new(&spec("tgt"));

    // Apply: 14 resources on three hosts.
    let out = c.apply();
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("14 added"), "{shown}");

    // The CHAP secrets are in the state file (mode 0600), and nowhere in what was printed.
    let state_path = c.path().join("state/e2e.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&state_path).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let mut secrets = chap_secrets(&c);
    assert_eq!(secrets.len(), 2, "one per session");
    let show = c.run(&["state", "show", "session.node02.base", "-f", "spec.json"]);
    for s in &secrets {
        assert!(!shown.contains(s.as_str()));
        assert!(!text(&show).contains(s.as_str()));
    }
    assert!(text(&show).contains("(sensitive)"), "{}", text(&show));

    // Nothing to do, and every object read back as recorded.
    let plan = c.run(&["plan", "-f", "spec.json", "--detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));

    // What the hosts really have: read-only exports named after the image version, with the
    // child's own initiator name and account, a writethrough cache, a running domain.
    let iqn = "iqn.2014-12.org.vmthunder:e2e.base.7";
    let tgt = g.ok("img0", "tgtadm --lld iscsi --op show --mode target");
    assert!(tgt.contains(&format!("Target 1: {iqn}")), "{tgt}");
    assert!(tgt.contains("Readonly: Yes"), "{tgt}");
    assert!(
        tgt.contains("iqn.2014-12.org.vmthunder.test:node01"),
        "{tgt}"
    );
    assert!(tgt.contains("vmt.e2e.base.node01"), "{tgt}");
    let relay = g.ok("node01", "tgtadm --lld iscsi --op show --mode target");
    assert!(relay.contains(iqn) && relay.contains(":node02"), "{relay}");
    let status = g.ok("node02", "dmsetup status vmt.e2e.base.cache");
    assert!(status.contains(" writethrough "), "{status}");
    let state = g.ok("node02", "virsh -c qemu:///system domstate base-node02-0");
    assert_eq!(state.trim(), "running");
    // The session's disk refuses writes: the target exports it read-only.
    assert_read_only(&g, "node01", &address(0), iqn, 1);

    // Data read through node02's clone disk (its snapshot, over its cache, over node01's
    // cache, over the image) is the image (the last MiB is left out, as a booting clone may
    // write there).
    let image = digest(&g, "img0", "/srv/images/base.raw", 63);
    assert_eq!(
        digest(&g, "node02", "/dev/mapper/vmt.e2e.base.snap0", 63),
        image
    );
    assert_eq!(
        digest(&g, "node01", "/dev/mapper/vmt.e2e.base.cache", 64),
        digest(&g, "img0", "/srv/images/base.raw", 64)
    );

    // A target is not deleted while a child is logged in that this destroy does not log out:
    // forget node02's resources (their objects stay), and the relay's target is refused.
    let rm = c.run(&[
        "state",
        "rm",
        "-f",
        "spec.json",
        "domain.node02",
        "snapshot.node02",
        "cache.node02",
        "session.node02",
        "lv.node02",
    ]);
    assert!(rm.status.success(), "{}", text(&rm));
    let refused = c.run(&["destroy", "-f", "spec.json", "--auto-approve"]);
    let said = text(&refused);
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains("refusing to delete target") && said.contains(":node02"),
        "{said}"
    );
    assert!(g.ok("node02", "iscsiadm -m session").contains(iqn));
    // Taken down by hand, as an administrator would; then the destroy finishes.
    g.ok(
        "node02",
        &format!(
            "virsh -c qemu:///system destroy base-node02-0; virsh -c qemu:///system undefine base-node02-0; \
             dmsetup remove vmt.e2e.base.snap0 vmt.e2e.base.cache vmt.e2e.base.origin; \
             iscsiadm -m node -T {iqn} --logout; iscsiadm -m node -T {iqn} -o delete; \
             lvremove -y vg_vmthunder"
        ),
    );
    let out = c.run(&["destroy", "-f", "spec.json", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out));

    // Nothing is left: no LV, dm device, session, target or domain on any host.
    for h in HOSTS {
        assert_eq!(leftovers(&g, h), "", "left on {h}");
    }
    assert_eq!(c.state("e2e")["resources"], json!([]));
    drop(c);

    // The same cluster with the kernel's LIO target instead of tgt (they share the port).
    for h in HOSTS {
        g.ok(h, "systemctl stop tgt");
    }
    let c = Cluster::new(&spec("lio"));
    let out = c.apply();
    assert!(out.status.success(), "{}", text(&out));
    secrets.extend(chap_secrets(&c));
    assert_eq!(secrets.len(), 4, "one per session and run");
    let plan = c.run(&["plan", "-f", "spec.json", "--detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    let acls = g.ok("node01", &format!("targetcli ls /iscsi/{iqn}/tpg1/acls"));
    assert!(acls.contains(":node02"), "{acls}");
    assert_read_only(&g, "node02", &address(1), iqn, 0);
    assert_eq!(
        digest(&g, "node02", "/dev/mapper/vmt.e2e.base.snap0", 63),
        image
    );

    // node01's export vanishes (deleted by hand, as a crashed target would lose it): the
    // refresh finds it gone, and node02 moves onto img0 in place (a login to img0's target,
    // its origin shim suspended, reloaded over the new disk and resumed, a logout from
    // node01's). Its cache, its clone's snapshot and its domain stay. (img0 takes a second
    // child, one over the degree: there is no other healthy slot.)
    let domid = |g: &Guests| g.ok("node02", "virsh -c qemu:///system domid base-node02-0");
    let before = domid(&g);
    g.ok("node01", &format!("targetcli /iscsi delete {iqn}"));
    let moved = |g: &Guests, to: usize, from: usize| {
        let out = c.apply();
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("1 changed, 0 replaced"),
            "{}",
            text(&out)
        );
        let sessions = g.ok("node02", "iscsiadm -m session");
        assert!(sessions.contains(&address(to)), "{sessions}");
        assert!(!sessions.contains(&address(from)), "{sessions}");
        assert_eq!(domid(g), before, "the same domain runs on");
        assert_eq!(
            digest(g, "node02", "/dev/mapper/vmt.e2e.base.snap0", 63),
            image
        );
    };
    let plan = c.run(&["plan", "-f", "spec.json"]);
    assert!(
        text(&plan)
            .contains("# (parent node01 -> img0: node01 lost its relay (its export is gone))"),
        "{}",
        text(&plan)
    );
    moved(&g, 0, 1);
    // node01 serves again: the degree (1) puts node02 back under it, in place again.
    let plan = c.run(&["plan", "-f", "spec.json", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(doc["summary"]["change"], 1, "{doc}");
    assert_eq!(doc["summary"]["replace"], 0, "{doc}");
    moved(&g, 1, 0);
    let plan = c.run(&["plan", "-f", "spec.json", "--detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    let out = c.run(&["destroy", "-f", "spec.json", "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out));
    // Two runs' accounts on tgt and LIO, four logins and two moves later: no secret was
    // ever in a command line.
    assert_no_secret_sampled(
        &g,
        &secrets,
        &[
            ("img0", "LLa64LlQQLLLLLL"),
            ("node01", "iscsiadm -m node"),
            ("node02", "iscsiadm -m node"),
            ("node01", "tpgt_1/acls"),
        ],
    );
    for h in HOSTS {
        assert_eq!(leftovers(&g, h), "", "left on {h}");
        let lio = g.ok(h, "targetcli ls / | grep -c 'vmt\\.' || true");
        assert_eq!(lio.trim(), "0", "LIO objects left on {h}");
    }
    drop(c);
    drop(g);
}
