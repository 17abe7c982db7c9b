//! `domain`s: daemonized QEMU guests booting from their snapshot, managed over QMP.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

use super::relay::wait_gone;
use super::{args, QemuStack, COMMAND_TIMEOUT, QMP_TIMEOUT, READ_TIMEOUT};
use crate::backend::qmp::Qmp;
use crate::backend::{dep_attr, dep_value, net, BackendError, Observed, Target};
use crate::resource::{Addr, Desired, DomainAttrs, Firmware, Kind};
use crate::spec::{Accel, Boot};

/// Debian's OVMF (package `ovmf`): the firmware, and the template of each clone's own NVRAM
/// variables (4 MiB flash layout, no Secure Boot keys enrolled).
pub(super) const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub(super) const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Where the accelerator probe's verdict is kept, under `<root>/<cluster>`.
pub(super) const ACCEL_CACHE: &str = "accel";
/// How long a KVM probe guest gets to reach the end of kernel boot.
const KVM_PROBE: Duration = Duration::from_secs(15);

struct Files {
    pidfile: PathBuf,
    monitor: PathBuf,
    console: PathBuf,
    /// The clone's UEFI variables (only with `firmware: uefi`).
    vars: PathBuf,
}

fn files(stack: &QemuStack, addr: &Addr) -> Files {
    let dir = stack.dir(&addr.host, &addr.image);
    let n = addr.n.unwrap_or(0);
    Files {
        pidfile: dir.join(format!("vm-{n}.pid")),
        monitor: dir.join(format!("vm-{n}.qmp")),
        console: dir.join(format!("vm-{n}.log")),
        vars: dir.join(format!("vm-{n}.vars.fd")),
    }
}

/// The console log of a clone (for `vmthunder console`).
pub fn console_path(stack: &QemuStack, addr: &Addr) -> PathBuf {
    files(stack, addr).console
}

/// The tap of each of a clone's NICs, by network.
fn taps(stack: &QemuStack, addr: &Addr, networks: &[String]) -> Vec<String> {
    let key =
        crate::identity::clone_key(&stack.cluster, &addr.image, &addr.host, addr.n.unwrap_or(0));
    networks
        .iter()
        .map(|n| crate::identity::tap_device(&key, n))
        .collect()
}

/// Removes what a clone has besides its process: taps and UEFI variables.
fn remove_extras(
    stack: &QemuStack,
    addr: &Addr,
    networks: &[String],
    f: &Files,
) -> Result<(), BackendError> {
    let host = &*addr.host;
    for tap in taps(stack, addr, networks) {
        net::delete_link(stack.transport.as_ref(), host, &tap)?;
    }
    stack
        .transport
        .remove_file(host, &f.vars)
        .map_err(|e| stack.io_error("cannot remove", host, &f.vars, e))
}

fn attrs<'a>(t: Target<'a>) -> &'a DomainAttrs {
    match t.desired {
        Desired::Domain(d) => d,
        _ => unreachable!("domain attributes"),
    }
}

fn pid(stack: &QemuStack, host: &str, f: &Files) -> Result<Option<u32>, BackendError> {
    stack.running_pid(host, &f.pidfile)
}

fn monitor(
    stack: &QemuStack,
    host: &str,
    f: &Files,
    timeout: Duration,
) -> Result<Qmp, BackendError> {
    let stream = stack
        .transport
        .connect_unix(host, &f.monitor)
        .map_err(|e| stack.io_error("cannot reach the guest's monitor", host, &f.monitor, e))?;
    Ok(Qmp::start(stream, &f.monitor, timeout)?)
}

fn observed(f: &Files, pid: u32, status: &str, accel: Option<&str>) -> Observed {
    let mut o = Observed::new();
    o.insert("pid".into(), pid.into());
    o.insert("monitor".into(), f.monitor.display().to_string().into());
    o.insert("console".into(), f.console.display().to_string().into());
    o.insert("status".into(), status.into());
    if let Some(a) = accel {
        o.insert("accel".into(), a.into());
    }
    o
}

/// How long a guest that runs under our pid file gets to open its monitor before a create
/// stops it: a run killed while QEMU started leaves one whose monitor is not up yet.
const MONITOR_STARTING: Duration = Duration::from_secs(15);

/// [`read`] for a create: a guest whose monitor does not answer (yet) is waited for, then
/// left to the caller to stop (`None`), instead of failing the create.
fn adoptable(
    stack: &QemuStack,
    t: Target<'_>,
    f: &Files,
) -> Result<Option<Observed>, BackendError> {
    let start = Instant::now();
    loop {
        match read(stack, t) {
            Ok(found) => return Ok(found),
            Err(e) if e.unreachable_host.is_some() => return Err(e),
            Err(e) => {
                if pid(stack, &t.addr.host, f)?.is_none() {
                    return Ok(None);
                }
                if start.elapsed() > MONITOR_STARTING {
                    tracing::info!(host = &*t.addr.host, error = %e, "a guest under our pid file does not answer; it is stopped");
                    return Ok(None);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Running or stopped, from QMP; `None` when no guest of ours runs.
pub(super) fn read(stack: &QemuStack, t: Target<'_>) -> Result<Option<Observed>, BackendError> {
    let host = &*t.addr.host;
    let f = files(stack, t.addr);
    let Some(pid) = pid(stack, host, &f)? else {
        return Ok(None);
    };
    let mut q = monitor(stack, host, &f, READ_TIMEOUT)?;
    let status = q.execute("query-status", json!({}))?;
    let uuid = q.execute("query-uuid", json!({}))?;
    if uuid["UUID"].as_str() != Some(attrs(t).uuid.as_str()) {
        return Ok(None);
    }
    Ok(Some(observed(
        &f,
        pid,
        status["status"].as_str().unwrap_or("unknown"),
        None,
    )))
}

pub(super) fn create(
    stack: &QemuStack,
    t: Target<'_>,
    deps: &[(Addr, Observed)],
) -> Result<Observed, BackendError> {
    let host = &*t.addr.host;
    let d = attrs(t);
    let f = files(stack, t.addr);
    if let Some(found) = adoptable(stack, t, &f)? {
        // Ours, already running: adopt it (and still wait for it to be ready).
        wait_ready(stack, host, &f, d)?;
        return Ok(found);
    }
    if let Some(pid) = pid(stack, host, &f)? {
        // Something else runs under our pid file (another UUID): it goes.
        stack.transport.kill(host, pid).ok();
        wait_gone(stack, host, pid, &f.pidfile.to_string_lossy());
    }
    let disk = dep_attr(deps, Kind::Snapshot, "path")?.to_string();
    let seed = dep_value(deps, Kind::Seed, "path").and_then(|v| v.as_str());
    for p in [&f.pidfile, &f.monitor, &f.console] {
        let _ = stack.transport.remove_file(host, p);
    }
    let networks: Vec<String> = d.nics.iter().map(|n| n.network.clone()).collect();
    let taps = taps(stack, t.addr, &networks);
    for (tap, nic) in taps.iter().zip(&d.nics) {
        net::ensure_tap(stack.transport.as_ref(), host, tap, &nic.bridge)?;
    }
    if d.boot.is_none() && d.firmware == Firmware::Uefi {
        // The clone's own variables, from the template once: a restarted clone keeps its
        // boot entries.
        stack.transport.run(
            host,
            &args(&[
                "sh",
                "-c",
                r#"[ -e "$2" ] || cp -- "$1" "$2""#,
                "sh",
                OVMF_VARS,
                &f.vars.to_string_lossy(),
            ]),
            COMMAND_TIMEOUT,
        )?;
    }
    let accel = resolve_accel(stack, host, d.boot.as_ref())?;
    let mut argv = command(d, &disk, seed, &taps, &f, accel);
    if let Some(dir) = dep_value(deps, Kind::Snapshot, "tls_dir").and_then(|v| v.as_str()) {
        // The disk's backing reads the host's cache over TLS, as the host.
        argv.extend(args(&["-object", &super::relay::client_creds_arg(dir)]));
    }
    stack.transport.run(host, &argv, COMMAND_TIMEOUT)?;
    let Some(pid) = pid(stack, host, &f)? else {
        return Err(BackendError::new(format!(
            "on host {host}: QEMU started but is not running; its console `{}` may say why",
            f.console.display()
        )));
    };
    wait_ready(stack, host, &f, d)?;
    Ok(observed(&f, pid, "running", Some(accel)))
}

/// QEMU's option syntax doubles a comma inside a value.
fn opt(path: &str) -> String {
    path.replace(',', ",,")
}

fn command(
    d: &DomainAttrs,
    disk: &str,
    seed: Option<&str>,
    taps: &[String],
    f: &Files,
    accel: &str,
) -> Vec<String> {
    let mut v = args(&[
        "qemu-system-x86_64",
        "-name",
        &d.name,
        "-uuid",
        &d.uuid,
        "-accel",
        accel,
        "-machine",
        "q35",
        "-m",
        &format!("{}M", (d.memory.0 >> 20).max(16)),
        "-smp",
        &d.vcpus.to_string(),
        "-nodefaults",
        "-display",
        "none",
        "-daemonize",
        "-pidfile",
        &f.pidfile.to_string_lossy(),
        "-qmp",
        &format!("unix:{},server=on,wait=off", f.monitor.display()),
        "-serial",
        &format!("file:{}", f.console.display()),
    ]);
    match (&d.boot, d.firmware) {
        (Some(boot), _) => {
            v.push("-kernel".into());
            v.push(super::absolute(&boot.kernel).to_string_lossy().into_owned());
            if let Some(initrd) = &boot.initrd {
                v.push("-initrd".into());
                v.push(super::absolute(initrd).to_string_lossy().into_owned());
            }
            v.push("-append".into());
            v.push(boot_append(&boot.append, d));
        }
        // SeaBIOS, QEMU's default, boots the first disk.
        (None, Firmware::Bios) => {}
        (None, Firmware::Uefi) => v.extend(args(&[
            "-drive",
            &format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                opt(OVMF_CODE)
            ),
            "-drive",
            &format!(
                "if=pflash,format=raw,unit=1,file={}",
                opt(&f.vars.to_string_lossy())
            ),
        ])),
    }
    v.extend(args(&[
        "-drive",
        // A failed read or write of the clone's disk (its upstream relay died) pauses the
        // guest instead of failing its I/O; a repair resumes it, and QEMU retries the I/O.
        &format!(
            "if=none,id=disk0,format=qcow2,file={},werror=stop,rerror=stop",
            opt(disk)
        ),
        "-device",
        // The firmware boots this disk first (never the seed); a kernel boots from its option
        // ROM, which takes the first boot index itself.
        if d.boot.is_some() {
            "virtio-blk-pci,drive=disk0"
        } else {
            "virtio-blk-pci,drive=disk0,bootindex=1"
        },
    ]));
    if let Some(seed) = seed {
        v.extend(args(&[
            "-drive",
            &format!("if=none,id=seed0,format=raw,readonly=on,file={}", opt(seed)),
            "-device",
            "virtio-blk-pci,drive=seed0",
        ]));
    }
    if d.nics.is_empty() {
        v.extend(args(&[
            "-netdev",
            "user,id=net0,restrict=on",
            "-device",
            &format!("virtio-net-pci,netdev=net0,mac={}", d.mac),
        ]));
    }
    for (k, (nic, tap)) in d.nics.iter().zip(taps).enumerate() {
        v.extend(args(&[
            "-netdev",
            &format!("tap,id=net{k},ifname={tap},script=no,downscript=no"),
            "-device",
            &format!(
                "virtio-net-pci,netdev=net{k},mac={},host_mtu={}",
                nic.mac,
                net::MTU
            ),
        ]));
    }
    v
}

/// The kernel command line: `{name}`, and `{address}` (the first NIC's, with prefix) for
/// guests that take their address from it.
fn boot_append(append: &str, d: &DomainAttrs) -> String {
    let address = d.nics.first().map_or("", |n| n.address.as_str());
    append
        .replace("{name}", &d.name)
        .replace("{address}", address)
}

/// Waits for what the spec's `clones.ready` asks: a line on the guest's console, then a TCP
/// port on its first address that accepts a connection (tried from its host, which has an
/// address on the bridge).
fn wait_ready(
    stack: &QemuStack,
    host: &str,
    f: &Files,
    d: &DomainAttrs,
) -> Result<(), BackendError> {
    let Some(ready) = &stack.ready else {
        return Ok(());
    };
    let start = Instant::now();
    if let Some(line) = &ready.line {
        wait_line(stack, host, f, line, ready.timeout_secs, start)?;
    }
    if let Some(port) = ready.tcp {
        let Some(nic) = d.nics.first() else {
            return Err(BackendError::new("clones.ready.tcp needs clones.networks: a clone without an address cannot be connected to"));
        };
        let ip = nic.address.split('/').next().unwrap_or("");
        let probe = args(&[
            "bash",
            "-c",
            r#"exec 3<>"/dev/tcp/$1/$2""#,
            "bash",
            ip,
            &port.to_string(),
        ]);
        loop {
            match stack.transport.run(host, &probe, Duration::from_secs(5)) {
                Ok(_) => break,
                Err(e) if e.unreachable => return Err(e.into()),
                Err(_) => {}
            }
            if pid(stack, host, f)?.is_none() {
                return Err(BackendError::new(format!(
                    "on host {host}: the guest exited before {ip}:{port} answered; console `{}`",
                    f.console.display()
                )));
            }
            if start.elapsed() > Duration::from_secs(ready.timeout_secs) {
                return Err(BackendError::new(format!(
                    "on host {host}: {ip}:{port} did not accept a connection within {} s (clones.ready.timeout_secs); console `{}`",
                    ready.timeout_secs,
                    f.console.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    Ok(())
}

fn wait_line(
    stack: &QemuStack,
    host: &str,
    f: &Files,
    line: &str,
    timeout_secs: u64,
    start: Instant,
) -> Result<(), BackendError> {
    loop {
        let console = stack
            .transport
            .read_file(host, &f.console)
            .ok()
            .flatten()
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&console);
        if text.lines().any(|l| l.contains(line)) {
            return Ok(());
        }
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
        if pid(stack, host, f)?.is_none() {
            return Err(BackendError {
                message: format!(
                    "on host {host}: the guest exited before printing {:?}; console `{}`",
                    line,
                    f.console.display()
                ),
                command: None,
                stderr: Some(tail),
                unreachable_host: None,
            });
        }
        if start.elapsed() > Duration::from_secs(timeout_secs) {
            return Err(BackendError {
                message: format!(
                    "on host {host}: no {:?} on the console within {} s (clones.ready.timeout_secs); console `{}`",
                    line,
                    timeout_secs,
                    f.console.display()
                ),
                command: None,
                stderr: Some(tail),
                unreachable_host: None,
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How long a resume keeps retrying a guest that pauses again on an I/O error.
const RESUME_PATIENCE: Duration = Duration::from_secs(30);

/// QMP's run state of a guest paused on an I/O error of its disk (`werror`/`rerror=stop`):
/// what the plan looks for in a domain's observed `status`.
const IO_ERROR: &str = crate::plan::PAUSED_ON_IO_ERROR;

/// Resumes a guest paused on an I/O error (its disk's upstream was repaired): QEMU retries
/// the failed I/O, so the guest never sees it. Refused if it pauses again at once.
pub(super) fn resume(
    stack: &QemuStack,
    t: Target<'_>,
    observed: &Observed,
) -> Result<Observed, BackendError> {
    let host = &*t.addr.host;
    let f = files(stack, t.addr);
    let Some(pid) = pid(stack, host, &f)? else {
        return Err(BackendError::new(format!(
            "on host {host}: the guest of {} is not running; run `vmthunder apply` again to start it",
            t.addr
        )));
    };
    let mut q = monitor(stack, host, &f, QMP_TIMEOUT)?;
    let status = |q: &mut Qmp| -> Result<String, BackendError> {
        let s = q.execute("query-status", json!({}))?;
        Ok(s["status"].as_str().unwrap_or("unknown").to_string())
    };
    // A disk that still fails pauses it again within moments. Its NBD client may take a few
    // seconds to reconnect to a relay that was rebuilt (it retries with back-off), so the
    // resume is retried for a while.
    let start = Instant::now();
    let mut now = status(&mut q)?;
    while now == IO_ERROR && start.elapsed() < RESUME_PATIENCE {
        q.execute("cont", json!({}))?;
        std::thread::sleep(Duration::from_millis(500));
        now = status(&mut q)?;
    }
    if now == IO_ERROR {
        return Err(BackendError::new(format!(
            "on host {host}: the guest of {} paused again on an I/O error: its disk's upstream still fails (check the relays above {host})",
            t.addr
        )));
    }
    let mut o = observed.clone();
    o.insert("pid".into(), pid.into());
    o.insert("status".into(), now.into());
    Ok(o)
}

pub(super) fn delete(stack: &QemuStack, t: Target<'_>) -> Result<(), BackendError> {
    let host = &*t.addr.host;
    let f = files(stack, t.addr);
    if let Some(pid) = pid(stack, host, &f)? {
        if attrs(t).boot.is_none() {
            shut_down(stack, host, pid, &f);
        }
        if let Ok(mut q) = monitor(stack, host, &f, QMP_TIMEOUT) {
            let _ = q.execute("quit", json!({}));
        }
        wait_gone(stack, host, pid, &f.pidfile.to_string_lossy());
    }
    let networks: Vec<String> = attrs(t).nics.iter().map(|n| n.network.clone()).collect();
    remove_extras(stack, t.addr, &networks, &f)?;
    for p in [&f.pidfile, &f.monitor, &f.console] {
        stack
            .transport
            .remove_file(host, p)
            .map_err(|e| stack.io_error("cannot remove", host, p, e))?;
    }
    Ok(())
}

/// Asks the guest's OS to power off (ACPI, as a press of the power button) and waits for
/// QEMU to exit, at most [`SHUTDOWN_TIMEOUT`]. A clone that boots its own disk is a real OS
/// whose page cache holds writes: a hard stop loses what it had not written back, which was
/// seen as empty SSH host keys on the next boot of a kept disk. (The test guest's direct
/// kernel boot has no ACPI handler and writes synchronously; it is stopped at once.)
fn shut_down(stack: &QemuStack, host: &str, pid: u32, f: &Files) {
    let Ok(mut q) = monitor(stack, host, f, QMP_TIMEOUT) else {
        return;
    };
    if q.execute("system_powerdown", json!({})).is_err() {
        return;
    }
    drop(q);
    let marker = f.pidfile.to_string_lossy();
    let start = Instant::now();
    while matches!(stack.transport.process_alive(host, pid, &marker), Ok(true)) {
        if start.elapsed() > SHUTDOWN_TIMEOUT {
            tracing::warn!(
                host,
                pid,
                "the guest did not power off in time; stopping it"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// How long a clone's OS gets to power off before it is stopped.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(90);

/// Stops guests that run although state does not record them.
pub(super) fn sweep(
    stack: &QemuStack,
    host: &str,
    image: &str,
    recorded: &[&Addr],
    names: &[String],
) -> Result<(), BackendError> {
    for name in names {
        let Some(n) = super::numbered(name, "vm-", ".pid") else {
            continue;
        };
        if recorded
            .iter()
            .any(|a| a.kind == Kind::Domain && a.n == Some(n))
        {
            continue;
        }
        let addr = Addr {
            kind: Kind::Domain,
            host: host.into(),
            image: image.into(),
            n: Some(n),
        };
        let f = files(stack, &addr);
        if let Some(pid) = pid(stack, host, &f)? {
            tracing::info!(
                host,
                image,
                n,
                pid,
                "stopping a guest that state does not record"
            );
            stack.transport.kill(host, pid).ok();
            wait_gone(stack, host, pid, &f.pidfile.to_string_lossy());
        }
        let _ = remove_extras(stack, &addr, &stack.networks, &f);
        for p in [&f.pidfile, &f.monitor, &f.console] {
            let _ = stack.transport.remove_file(host, p);
        }
    }
    Ok(())
}

/// The accelerator guests on `host` run with: the spec's choice, or for `auto` KVM only if
/// a probe guest under KVM gets through kernel boot in time (a `/dev/kvm` that exists may
/// still not run stock guests, e.g. under a PVM nested hypervisor). Probed once per host and
/// run; on this machine's own hosts also remembered under the cluster's directory until its
/// last domain is gone.
fn resolve_accel(
    stack: &QemuStack,
    host: &str,
    boot: Option<&Boot>,
) -> Result<&'static str, BackendError> {
    match stack.accel {
        Accel::Kvm => return Ok("kvm"),
        Accel::Tcg => return Ok("tcg"),
        Accel::Auto => {}
    }
    let Some(boot) = boot else {
        // No kernel of the spec's to probe with: KVM when the host offers it.
        let t = &stack.transport;
        return match t.run(host, &args(&["test", "-w", "/dev/kvm"]), COMMAND_TIMEOUT) {
            Ok(_) => Ok("kvm"),
            Err(e) if e.unreachable => Err(e.into()),
            Err(_) => Ok("tcg"),
        };
    };
    let local = stack.transport.same_machine();
    let key = if local { "" } else { host };
    let cell = stack
        .resolved_accel
        .lock()
        .expect("accel lock")
        .entry(key.to_string())
        .or_default()
        .clone();
    cell.get_or_init(|| {
        let cache = stack.base.join(ACCEL_CACHE);
        if local {
            match std::fs::read_to_string(&cache).as_deref().map(str::trim) {
                Ok("kvm") => return Ok("kvm"),
                Ok("tcg") => return Ok("tcg"),
                _ => {}
            }
        }
        let verdict = if kvm_boots(stack, host, boot)? {
            "kvm"
        } else {
            "tcg"
        };
        if local {
            let _ = std::fs::create_dir_all(&stack.base);
            let _ = std::fs::write(&cache, verdict);
        }
        tracing::info!(host, verdict, "accelerator probed");
        Ok(verdict)
    })
    .clone()
}

/// Boots a probe guest under KVM on `host` and judges by what it prints in time.
fn kvm_boots(stack: &QemuStack, host: &str, boot: &Boot) -> Result<bool, BackendError> {
    let t = &stack.transport;
    match t.run(host, &args(&["test", "-w", "/dev/kvm"]), COMMAND_TIMEOUT) {
        Ok(_) => {}
        Err(e) if e.unreachable => return Err(e.into()),
        Err(_) => return Ok(false),
    }
    t.create_dir_all(host, &stack.base)
        .map_err(|e| stack.io_error("cannot create", host, &stack.base, e))?;
    let log = stack.base.join(format!("accel-probe-{host}.log"));
    let pidfile = stack.base.join(format!("accel-probe-{host}.pid"));
    let mut argv = args(&[
        "qemu-system-x86_64",
        "-accel",
        "kvm",
        "-machine",
        "q35",
        "-m",
        "128M",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-daemonize",
        "-pidfile",
        &pidfile.to_string_lossy(),
        "-serial",
        &format!("file:{}", log.display()),
        "-kernel",
        &super::absolute(&boot.kernel).to_string_lossy(),
        "-append",
        "console=ttyS0 panic=-1 loglevel=6",
    ]);
    if let Some(i) = &boot.initrd {
        argv.push("-initrd".into());
        argv.push(super::absolute(i).to_string_lossy().into_owned());
    }
    let started = t.run(host, &argv, COMMAND_TIMEOUT);
    // The guest never exits on its own: what it printed in time decides.
    let start = Instant::now();
    let booted = started.is_ok()
        && loop {
            let text = t.read_file(host, &log).ok().flatten().unwrap_or_default();
            let text = String::from_utf8_lossy(&text);
            if text.contains("Freeing unused kernel") || text.contains("Run /init") {
                break true;
            }
            if start.elapsed() > KVM_PROBE || matches!(stack.running_pid(host, &pidfile), Ok(None))
            {
                break false;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
    if let Ok(Some(pid)) = stack.running_pid(host, &pidfile) {
        let _ = t.kill(host, pid);
        wait_gone(stack, host, pid, &pidfile.to_string_lossy());
    }
    let _ = t.remove_file(host, &log);
    let _ = t.remove_file(host, &pidfile);
    Ok(booted)
}
