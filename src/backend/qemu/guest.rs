//! `domain`s: daemonized QEMU guests booting from their snapshot, managed over QMP.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

use super::relay::wait_gone;
use super::{args, QemuStack, COMMAND_TIMEOUT, QMP_TIMEOUT, READ_TIMEOUT};
use crate::backend::qmp::Qmp;
use crate::backend::{dep_attr, BackendError, Observed, Target};
use crate::resource::{Addr, Desired, DomainAttrs, Kind};
use crate::spec::{Accel, Boot};

/// Where the accelerator probe's verdict is kept, under `<root>/<cluster>`.
pub(super) const ACCEL_CACHE: &str = "accel";
/// How long a KVM probe guest gets to reach the end of kernel boot.
const KVM_PROBE: Duration = Duration::from_secs(15);

struct Files {
    pidfile: PathBuf,
    monitor: PathBuf,
    console: PathBuf,
}

fn files(stack: &QemuStack, addr: &Addr) -> Files {
    let dir = stack.dir(&addr.host, &addr.image);
    let n = addr.n.unwrap_or(0);
    Files {
        pidfile: dir.join(format!("vm-{n}.pid")),
        monitor: dir.join(format!("vm-{n}.qmp")),
        console: dir.join(format!("vm-{n}.log")),
    }
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
    if let Some(found) = read(stack, t)? {
        // Ours, already running: adopt it (and still wait for it to be ready).
        wait_ready(stack, host, &f)?;
        return Ok(found);
    }
    if let Some(pid) = pid(stack, host, &f)? {
        // Something else runs under our pid file (another UUID): it goes.
        stack.transport.kill(host, pid).ok();
        wait_gone(stack, host, pid, &f.pidfile.to_string_lossy());
    }
    let Some(boot) = &d.boot else {
        return Err(BackendError::new(format!(
            "{}: no kernel to boot; set clones.boot in the spec",
            t.addr
        )));
    };
    let disk = dep_attr(deps, Kind::Snapshot, "path")?.to_string();
    for p in [&f.pidfile, &f.monitor, &f.console] {
        let _ = stack.transport.remove_file(host, p);
    }
    let accel = resolve_accel(stack, host, boot)?;
    let argv = command(d, boot, &disk, &f, accel);
    stack.transport.run(host, &argv, COMMAND_TIMEOUT)?;
    let Some(pid) = pid(stack, host, &f)? else {
        return Err(BackendError::new(format!(
            "on host {host}: QEMU started but is not running; its console `{}` may say why",
            f.console.display()
        )));
    };
    wait_ready(stack, host, &f)?;
    Ok(observed(&f, pid, "running", Some(accel)))
}

fn command(d: &DomainAttrs, boot: &Boot, disk: &str, f: &Files, accel: &str) -> Vec<String> {
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
        "-kernel",
        &super::absolute(&boot.kernel).to_string_lossy(),
    ]);
    if let Some(initrd) = &boot.initrd {
        v.push("-initrd".into());
        v.push(super::absolute(initrd).to_string_lossy().into_owned());
    }
    v.push("-append".into());
    v.push(boot.append.replace("{name}", &d.name));
    v.extend(args(&[
        "-drive",
        &format!(
            "if=none,id=disk0,format=qcow2,file={}",
            disk.replace(',', ",,")
        ),
        "-device",
        "virtio-blk-pci,drive=disk0",
        "-netdev",
        "user,id=net0,restrict=on",
        "-device",
        &format!("virtio-net-pci,netdev=net0,mac={}", d.mac),
    ]));
    v
}

/// Waits for the spec's ready line on the guest's console, if the spec asks for one.
fn wait_ready(stack: &QemuStack, host: &str, f: &Files) -> Result<(), BackendError> {
    let Some(ready) = &stack.ready else {
        return Ok(());
    };
    let start = Instant::now();
    loop {
        let console = stack
            .transport
            .read_file(host, &f.console)
            .ok()
            .flatten()
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&console);
        if text.lines().any(|l| l.contains(&ready.line)) {
            return Ok(());
        }
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
        if pid(stack, host, f)?.is_none() {
            return Err(BackendError {
                message: format!(
                    "on host {host}: the guest exited before printing {:?}; console `{}`",
                    ready.line,
                    f.console.display()
                ),
                command: None,
                stderr: Some(tail),
                unreachable_host: None,
            });
        }
        if start.elapsed() > Duration::from_secs(ready.timeout_secs) {
            return Err(BackendError {
                message: format!(
                    "on host {host}: no {:?} on the console within {} s (clones.ready.timeout_secs); console `{}`",
                    ready.line,
                    ready.timeout_secs,
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

pub(super) fn delete(stack: &QemuStack, t: Target<'_>) -> Result<(), BackendError> {
    let host = &*t.addr.host;
    let f = files(stack, t.addr);
    if let Some(pid) = pid(stack, host, &f)? {
        if let Ok(mut q) = monitor(stack, host, &f, QMP_TIMEOUT) {
            let _ = q.execute("quit", json!({}));
        }
        wait_gone(stack, host, pid, &f.pidfile.to_string_lossy());
    }
    for p in [&f.pidfile, &f.monitor, &f.console] {
        stack
            .transport
            .remove_file(host, p)
            .map_err(|e| stack.io_error("cannot remove", host, p, e))?;
    }
    Ok(())
}

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
fn resolve_accel(stack: &QemuStack, host: &str, boot: &Boot) -> Result<&'static str, BackendError> {
    match stack.accel {
        Accel::Kvm => return Ok("kvm"),
        Accel::Tcg => return Ok("tcg"),
        Accel::Auto => {}
    }
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
