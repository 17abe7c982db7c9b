//! The relay: one qemu-storage-daemon per host and image, holding the `session`, `cache`
//! and `target` of that host's part of the image tree as QMP-managed nodes and exports.
//!
//! A session is an NBD client node named after its parent's endpoint. Moving the host to
//! another parent (an in-place update) adds the node for the new parent, points the cache's
//! backing at it with `blockdev-reopen` (QEMU drains the cache first: reads in flight finish
//! on the old parent, later ones go to the new one; the cache keeps every block), then
//! removes the old node. Each step can be repeated, so a run killed half-way is finished by
//! the next one.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{args, QemuStack, COMMAND_TIMEOUT, QMP_TIMEOUT, READ_TIMEOUT};
use crate::backend::qmp::{Qmp, QmpError};
use crate::backend::{dep_attr, dep_value, BackendError, Observed, Target};
use crate::resource::{Addr, Desired, Kind, SessionAttrs, TargetAttrs};

/// Node names inside a relay.
const IMAGE_FILE: &str = "image-file";
const IMAGE: &str = "image";
/// Session nodes are `session-<hash of the parent's endpoint>`; relays made before in-place
/// moves have one named just `session`.
const SESSION: &str = "session";
const CACHE: &str = "cache";
/// The cache's qcow2 file node (relays made before had an anonymous one).
const CACHE_FILE: &str = "cache-file";
const COR: &str = "cor";
/// Export ids (and the local export's NBD name).
const TARGET_EXPORT: &str = "target";
const LOCAL_EXPORT: &str = "local";
/// With TLS: the prefixes of the ids of the relay's server and client credentials (each
/// followed by the start of its certificate's fingerprint, so that a renewed certificate is
/// loaded as new objects beside the old), and its NBD server's authorization list. Guests
/// and `qemu-img` name their client credentials [`CLIENT_CREDS`].
const SERVER_CREDS: &str = "tls-server-";
const RELAY_CLIENT_CREDS: &str = "tls-client-";
const CLIENT_CREDS: &str = "vmthunder-tls";
const AUTHZ: &str = "authz";

/// The short form of the host's certificate (from the `cert` a resource depends on) that
/// names the objects loaded from it.
fn cert_tag(deps: &[(Addr, Observed)]) -> Result<String, BackendError> {
    let fp = crate::backend::dep_attr(deps, Kind::Cert, "fingerprint")?;
    Ok(fp.chars().take(12).collect())
}

pub(super) struct Relay<'a> {
    stack: &'a QemuStack,
    host: &'a str,
    image: &'a str,
    dir: PathBuf,
}

impl<'a> Relay<'a> {
    pub(super) fn new(stack: &'a QemuStack, host: &'a str, image: &'a str) -> Relay<'a> {
        Relay {
            stack,
            host,
            image,
            dir: stack.dir(host, image),
        }
    }

    fn pidfile(&self) -> PathBuf {
        self.dir.join("relay.pid")
    }

    /// The host's TLS files (`cert.<host>.tls`).
    fn tls_dir(&self) -> PathBuf {
        crate::backend::tls::dir(&self.stack.base, self.host)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("relay.qmp")
    }

    fn pid(&self) -> Result<Option<u32>, BackendError> {
        self.stack.running_pid(self.host, &self.pidfile())
    }

    fn connect(&self, timeout: Duration) -> Result<Qmp, BackendError> {
        let stream = self
            .stack
            .transport
            .connect_unix(self.host, &self.socket())
            .map_err(|e| {
                BackendError::new(format!(
                    "on host {}: cannot reach the relay's monitor `{}`: {e}",
                    self.host,
                    self.socket().display()
                ))
            })?;
        Ok(Qmp::start(stream, &self.socket(), timeout)?)
    }

    /// The monitor of the running relay, if it runs.
    pub(super) fn running(&self) -> Result<Option<Qmp>, BackendError> {
        self.running_within(QMP_TIMEOUT)
    }

    /// The same, giving up on a relay that does not answer within `timeout`.
    fn running_within(&self, timeout: Duration) -> Result<Option<Qmp>, BackendError> {
        match self.pid()? {
            Some(_) => self.connect(timeout).map(Some),
            None => Ok(None),
        }
    }

    /// The monitor of the relay, started if it is not running.
    fn ensure(&self) -> Result<Qmp, BackendError> {
        if let Some(q) = self.running()? {
            return Ok(q);
        }
        let t = &self.stack.transport;
        t.create_dir_all(self.host, &self.dir).map_err(|e| {
            self.stack
                .io_error("cannot create", self.host, &self.dir, e)
        })?;
        let _ = t.remove_file(self.host, &self.socket());
        let _ = t.remove_file(self.host, &self.pidfile());
        let socket = self.socket().display().to_string();
        let pidfile = self.pidfile().display().to_string();
        t.run(
            self.host,
            &args(&[
                "qemu-storage-daemon",
                "--daemonize",
                "--pidfile",
                &pidfile,
                "--chardev",
                &format!("socket,id=mon,path={socket},server=on,wait=off"),
                "--monitor",
                "chardev=mon",
            ]),
            COMMAND_TIMEOUT,
        )?;
        self.connect(QMP_TIMEOUT)
    }

    /// Quits the relay when nothing is left in it, and waits until it is gone.
    fn stop_if_empty(&self, qmp: &mut Qmp) -> Result<(), BackendError> {
        if !nodes(qmp)?.is_empty() || !exports(qmp)?.is_empty() {
            return Ok(());
        }
        let pid = self.pid()?;
        let _ = qmp.execute("quit", json!({}));
        if let Some(pid) = pid {
            wait_gone(
                self.stack,
                self.host,
                pid,
                &self.pidfile().to_string_lossy(),
            );
        }
        let t = &self.stack.transport;
        let _ = t.remove_file(self.host, &self.socket());
        let _ = t.remove_file(self.host, &self.pidfile());
        Ok(())
    }
}

/// Waits up to 10 s for a process to exit, then kills it.
pub(super) fn wait_gone(stack: &QemuStack, host: &str, pid: u32, marker: &str) {
    let start = Instant::now();
    // A host that stops answering ends the wait: the next read finds out.
    while matches!(stack.transport.process_alive(host, pid, marker), Ok(true)) {
        if start.elapsed() > Duration::from_secs(10) {
            let _ = stack.transport.kill(host, pid);
            std::thread::sleep(Duration::from_millis(100));
            if start.elapsed() > Duration::from_secs(15) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn nodes(qmp: &mut Qmp) -> Result<Vec<Value>, BackendError> {
    let v = qmp.execute("query-named-block-nodes", json!({ "flat": true }))?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

fn node<'v>(nodes: &'v [Value], name: &str) -> Option<&'v Value> {
    nodes.iter().find(|n| n["node-name"] == name)
}

fn exports(qmp: &mut Qmp) -> Result<Vec<String>, BackendError> {
    let v = qmp.execute("query-block-exports", json!({}))?;
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

fn uri(address: &str, port: u16, export: &str) -> String {
    if address.contains(':') {
        format!("nbd://[{address}]:{port}/{export}")
    } else {
        format!("nbd://{address}:{port}/{export}")
    }
}

/// A `json:` backing file name of an NBD export reached with TLS, presenting the
/// [`CLIENT_CREDS`] of whoever opens it and expecting `server_name`'s certificate.
fn tls_backing(address: &str, port: u16, export: &str, server_name: &str) -> String {
    // The format layer is spelled out: an overlay names its backing's format (raw) beside it,
    // and QEMU then reads these options as the raw node's.
    let v = json!({ "driver": "raw", "file": {
                    "driver": "nbd",
                    "server": { "type": "inet", "host": address, "port": port.to_string() },
                    "export": export, "tls-creds": CLIENT_CREDS, "tls-hostname": server_name } });
    format!("json:{v}")
}

/// The `--object` argument that defines [`CLIENT_CREDS`] from `dir` for `qemu-img` and
/// guests.
pub(super) fn client_creds_arg(dir: &str) -> String {
    format!(
        "tls-creds-x509,id={CLIENT_CREDS},dir={},endpoint=client",
        dir.replace(',', ",,")
    )
}

/// The ids of the relay's user-created objects.
fn objects(qmp: &mut Qmp) -> Result<Vec<String>, BackendError> {
    let v = qmp.execute("qom-list", json!({ "path": "/objects" }))?;
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .filter(|o| o["type"].as_str().is_some_and(|t| t.starts_with("child<")))
                .filter_map(|o| o["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

/// Creates the TLS credentials `id` from `dir` unless the relay has them.
fn ensure_creds(
    qmp: &mut Qmp,
    host: &str,
    id: &str,
    dir: &std::path::Path,
    server: bool,
) -> Result<(), BackendError> {
    if objects(qmp)?.iter().any(|o| o == id) {
        return Ok(());
    }
    let mut args = json!({ "qom-type": "tls-creds-x509", "id": id, "dir": dir,
                           "endpoint": if server { "server" } else { "client" } });
    if server {
        args["verify-peer"] = true.into();
    }
    qmp.execute("object-add", args).map_err(|e| {
        BackendError::new(format!(
            "on host {host}: cannot load the host's TLS certificate from `{}`: {e} (run `vmthunder apply --replace cert.{host}.{}` to issue it again)",
            dir.display(),
            crate::resource::TLS
        ))
    })?;
    Ok(())
}

/// The rules of the relay's authorization list: who its NBD server admits.
fn admitted(qmp: &mut Qmp) -> Result<Vec<String>, BackendError> {
    let v = qmp.execute(
        "qom-get",
        json!({ "path": format!("/objects/{AUTHZ}"), "property": "rules" }),
    )?;
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["match"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

/// Makes the NBD server admit exactly `subjects` (distinguished names, matched exactly) from
/// its next connection on. Connections already made stay.
fn admit(qmp: &mut Qmp, subjects: &[String]) -> Result<(), BackendError> {
    let rules: Vec<Value> = subjects
        .iter()
        .map(|s| json!({ "match": s, "policy": "allow", "format": "exact" }))
        .collect();
    if !objects(qmp)?.iter().any(|o| o == AUTHZ) {
        qmp.execute(
            "object-add",
            json!({ "qom-type": "authz-list", "id": AUTHZ, "policy": "deny", "rules": rules }),
        )?;
        return Ok(());
    }
    qmp.execute(
        "qom-set",
        json!({ "path": format!("/objects/{AUTHZ}"), "property": "rules", "value": rules }),
    )?;
    Ok(())
}

/// Who the relay admits once `clients` (when given; else the ones it admits now) are its
/// children, and its own host while it has (`own`) the local export.
fn subjects(
    qmp: &mut Qmp,
    host: &str,
    clients: Option<&[String]>,
    own: bool,
) -> Result<Vec<String>, BackendError> {
    let me = crate::pki::distinguished_name(host);
    let mut out: Vec<String> = match clients {
        Some(c) => c
            .iter()
            .map(|c| crate::pki::distinguished_name(c))
            .collect(),
        None if objects(qmp)?.iter().any(|o| o == AUTHZ) => {
            admitted(qmp)?.into_iter().filter(|s| *s != me).collect()
        }
        None => Vec::new(),
    };
    if own {
        out.insert(0, me);
    }
    Ok(out)
}

/// Starts the relay's NBD server unless it runs; with `tls` (the credentials' directory and
/// object id), it serves only TLS and admits the subjects of its authorization list.
fn start_server(
    qmp: &mut Qmp,
    host: &str,
    address: &str,
    port: u16,
    tls: Option<(&std::path::Path, &str)>,
) -> Result<(), BackendError> {
    let mut args = json!({ "addr": { "type": "inet", "data": { "host": address, "port": port.to_string() } } });
    if let Some((dir, id)) = tls {
        ensure_creds(qmp, host, id, dir, true)?;
        if !objects(qmp)?.iter().any(|o| o == AUTHZ) {
            admit(qmp, &[])?;
        }
        args["tls-creds"] = id.into();
        args["tls-authz"] = AUTHZ.into();
    }
    let r = qmp.execute("nbd-server-start", args);
    match r {
        Ok(_) => Ok(()),
        Err(QmpError::Command { desc, .. }) if desc.contains("already running") => Ok(()),
        Err(QmpError::Command { desc, .. }) => Err(BackendError::new(format!(
            "on host {host}: cannot listen on {address}:{port}: {desc} (is another program using the port? change backend.base_port or free it)"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// The relay's NBD server serving with the certificate tagged `tag` (or plain). A server that
/// still serves an older certificate (the host's was renewed) is restarted with the new one:
/// its exports are added again at once, and its clients (children, the host's clones)
/// reconnect.
fn serve(
    relay: &Relay<'_>,
    qmp: &mut Qmp,
    address: &str,
    port: u16,
    tag: Option<&str>,
) -> Result<(), BackendError> {
    let host = relay.host;
    let Some(tag) = tag else {
        return start_server(qmp, host, address, port, None);
    };
    let id = format!("{SERVER_CREDS}{tag}");
    let dir = relay.tls_dir();
    let stale: Vec<String> = objects(qmp)?
        .into_iter()
        .filter(|o| o.starts_with(SERVER_CREDS) && *o != id)
        .collect();
    if stale.is_empty() {
        return start_server(qmp, host, address, port, Some((&dir, &id)));
    }
    ensure_creds(qmp, host, &id, &dir, true)?;
    let had = exports(qmp)?;
    match qmp.execute("nbd-server-stop", json!({})) {
        Ok(_) => {}
        Err(QmpError::Command { desc, .. }) if desc.contains("not running") => {}
        Err(e) => return Err(e.into()),
    }
    let start = Instant::now();
    while !exports(qmp)?.is_empty() {
        if start.elapsed() > Duration::from_secs(10) {
            return Err(BackendError::new(format!(
                "on host {host}: the NBD server's exports still have clients 10 s after it stopped"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    crate::failpoint::hit("server-stopped");
    start_server(qmp, host, address, port, Some((&dir, &id)))?;
    let present = nodes(qmp)?;
    if had.iter().any(|e| e == TARGET_EXPORT) {
        let source = if node(&present, IMAGE).is_some() {
            IMAGE
        } else {
            COR
        };
        add_export(qmp, TARGET_EXPORT, source, relay.image)?;
    }
    if had.iter().any(|e| e == LOCAL_EXPORT) {
        add_export(qmp, LOCAL_EXPORT, COR, LOCAL_EXPORT)?;
    }
    for o in stale {
        let _ = qmp.execute("object-del", json!({ "id": o }));
    }
    Ok(())
}

fn add_export(qmp: &mut Qmp, id: &str, node_name: &str, name: &str) -> Result<(), BackendError> {
    if exports(qmp)?.iter().any(|e| e == id) {
        return Ok(());
    }
    qmp.execute(
        "block-export-add",
        json!({ "type": "nbd", "id": id, "node-name": node_name, "name": name,
                "writable": false, "allocation-depth": true }),
    )?;
    Ok(())
}

/// Removes an export and waits until its clients are gone; stops the NBD server when no
/// export is left.
fn remove_export(qmp: &mut Qmp, id: &str) -> Result<(), BackendError> {
    if exports(qmp)?.iter().any(|e| e == id) {
        qmp.execute("block-export-del", json!({ "id": id }))?;
        let start = Instant::now();
        while exports(qmp)?.iter().any(|e| e == id) {
            if start.elapsed() > Duration::from_secs(10) {
                return Err(BackendError::new(format!(
                    "export {id:?} still has clients after 10 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if exports(qmp)?.is_empty() {
        match qmp.execute("nbd-server-stop", json!({})) {
            Ok(_) => {}
            Err(QmpError::Command { desc, .. }) if desc.contains("not running") => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn del_node(qmp: &mut Qmp, name: &str) -> Result<(), BackendError> {
    if node(&nodes(qmp)?, name).is_some() {
        qmp.execute("blockdev-del", json!({ "node-name": name }))?;
    }
    Ok(())
}

pub(super) fn read(stack: &QemuStack, t: Target<'_>) -> Result<Option<Observed>, BackendError> {
    let relay = Relay::new(stack, &t.addr.host, &t.addr.image);
    let lock = stack.relay_lock(&relay.dir);
    let _g = lock.lock().expect("relay lock");
    let Some(mut qmp) = relay.running_within(READ_TIMEOUT)? else {
        return Ok(None);
    };
    // The session's node, found once: its presence and its name.
    let mut session = None;
    let present = match t.desired {
        Desired::Session(s) => {
            session = session_to(&nodes(&mut qmp)?, &endpoint(s));
            session.is_some()
        }
        Desired::Cache(_) => {
            node(&nodes(&mut qmp)?, COR).is_some()
                && exports(&mut qmp)?.iter().any(|e| e == LOCAL_EXPORT)
        }
        Desired::Target(_) => exports(&mut qmp)?.iter().any(|e| e == TARGET_EXPORT),
        _ => unreachable!("relay kinds only"),
    };
    if !present {
        return Ok(None);
    }
    let mut o = observed(&relay, t);
    if let Some(n) = session {
        o.insert("node".into(), n.into());
    }
    Ok(Some(o))
}

/// Records the session's node as the relay has it (with TLS its name is also the
/// certificate's).
fn session_in(qmp: &mut Qmp, t: Target<'_>, o: &mut Observed) -> Result<(), BackendError> {
    if let Desired::Session(s) = t.desired {
        let present = nodes(qmp)?;
        if let Some(n) = session_to(&present, &endpoint(s)) {
            o.insert("node".into(), n.into());
        }
    }
    Ok(())
}

fn observed(relay: &Relay<'_>, t: Target<'_>) -> Observed {
    let mut o = Observed::new();
    o.insert(
        "monitor".into(),
        relay.socket().display().to_string().into(),
    );
    match t.desired {
        Desired::Target(TargetAttrs::Image { address, port, .. })
        | Desired::Target(TargetAttrs::Cache { address, port, .. }) => {
            o.insert("uri".into(), uri(address, *port, &t.addr.image).into());
        }
        Desired::Cache(c) if c.tls => {
            // The clones' disks name their backing with the credentials to present: the
            // host's own, which the local export admits.
            let dir = relay.tls_dir();
            o.insert(
                "uri".into(),
                tls_backing(&c.address, c.port, LOCAL_EXPORT, relay.host).into(),
            );
            o.insert("tls_dir".into(), dir.display().to_string().into());
        }
        Desired::Cache(c) => {
            o.insert("uri".into(), uri(&c.address, c.port, LOCAL_EXPORT).into());
        }
        Desired::Session(s) => {
            o.insert(
                "parent_uri".into(),
                uri(&s.parent_address, s.parent_port, &t.addr.image).into(),
            );
            o.insert("node".into(), session_node(&endpoint(s)).into());
        }
        _ => {}
    }
    o
}

pub(super) fn create(
    stack: &QemuStack,
    t: Target<'_>,
    deps: &[(Addr, Observed)],
) -> Result<Observed, BackendError> {
    let relay = Relay::new(stack, &t.addr.host, &t.addr.image);
    let lock = stack.relay_lock(&relay.dir);
    let _g = lock.lock().expect("relay lock");
    let mut qmp = relay.ensure()?;
    let lv_size = dep_value(deps, Kind::Lv, "size").and_then(Value::as_u64);
    let r = build(&relay, &mut qmp, t, deps);
    if r.is_err() {
        // Leave nothing half-built behind: the failed resource is recorded tainted, and the
        // objects state does not know about are removed now.
        let _ = teardown(&relay, &mut qmp, t, lv_size);
    }
    r?;
    let mut o = observed(&relay, t);
    if let Some(size) = lv_size {
        o.insert("lv_size".into(), size.into());
    }
    session_in(&mut qmp, t, &mut o)?;
    Ok(o)
}

fn build(
    relay: &Relay<'_>,
    qmp: &mut Qmp,
    t: Target<'_>,
    deps: &[(Addr, Observed)],
) -> Result<(), BackendError> {
    let host = relay.host;
    let image = &*t.addr.image;
    match t.desired {
        Desired::Target(a @ TargetAttrs::Image { path, format, .. }) => {
            let present = nodes(qmp)?;
            if node(&present, IMAGE).is_none() {
                let file = super::absolute(path);
                if node(&present, IMAGE_FILE).is_none() {
                    qmp.execute(
                        "blockdev-add",
                        json!({ "driver": "file", "node-name": IMAGE_FILE,
                                "filename": file, "read-only": true }),
                    )
                    .map_err(|e| {
                        BackendError::new(format!("on host {host}: cannot open the image: {e}"))
                    })?;
                }
                qmp.execute(
                    "blockdev-add",
                    json!({ "driver": format, "node-name": IMAGE, "file": IMAGE_FILE,
                            "read-only": true }),
                )
                .map_err(|e| {
                    BackendError::new(format!(
                        "on host {host}: `{}` is not a readable {} image: {e}",
                        file.display(),
                        serde_json::to_value(format)
                            .unwrap_or_default()
                            .as_str()
                            .unwrap_or("?")
                    ))
                })?;
            }
            serve_children(relay, qmp, a, deps)?;
            add_export(qmp, TARGET_EXPORT, IMAGE, image)
        }
        Desired::Target(a @ TargetAttrs::Cache { .. }) => {
            if node(&nodes(qmp)?, COR).is_none() {
                return Err(BackendError::new(format!(
                    "on host {host}: the relay has no cache to export; the cache was removed outside vmthunder (run `vmthunder apply` to rebuild it)"
                )));
            }
            serve_children(relay, qmp, a, deps)?;
            add_export(qmp, TARGET_EXPORT, COR, image)
        }
        Desired::Session(s) => attach_session(relay, qmp, image, s, deps),
        Desired::Cache(c) => {
            let present = nodes(qmp)?;
            if node(&present, COR).is_none() {
                let lv = dep_attr(deps, Kind::Lv, "path")?;
                let name = crate::backend::dep_value(deps, Kind::Session, "node")
                    .and_then(Value::as_str)
                    .unwrap_or(SESSION);
                let session = node(&present, name).ok_or_else(|| {
                    BackendError::new(format!(
                        "on host {host}: the relay has no session to cache; it was removed outside vmthunder (run `vmthunder apply` to rebuild it)"
                    ))
                })?;
                let size = session["image"]["virtual-size"].as_u64().unwrap_or(0);
                if node(&present, CACHE).is_none() {
                    format_cache(relay, lv, size)?;
                    qmp.execute(
                        "blockdev-add",
                        json!({ "driver": "qcow2", "node-name": CACHE, "backing": name,
                                "file": { "driver": "file", "node-name": CACHE_FILE,
                                          "filename": lv } }),
                    )?;
                }
                qmp.execute(
                    "blockdev-add",
                    json!({ "driver": "copy-on-read", "node-name": COR, "file": CACHE }),
                )?;
            }
            serve_clones(relay, qmp, c, deps)?;
            add_export(qmp, LOCAL_EXPORT, COR, LOCAL_EXPORT)
        }
        _ => unreachable!("relay kinds only"),
    }
}

/// Serves the host's clones (with TLS, admitting its own host beside its children).
fn serve_clones(
    relay: &Relay<'_>,
    qmp: &mut Qmp,
    c: &crate::resource::CacheAttrs,
    deps: &[(Addr, Observed)],
) -> Result<(), BackendError> {
    if !c.tls {
        return serve(relay, qmp, &c.address, c.port, None);
    }
    let who = subjects(qmp, relay.host, None, true)?;
    serve(relay, qmp, &c.address, c.port, Some(&cert_tag(deps)?))?;
    admit(qmp, &who)
}

/// Starts the server of a target (with TLS, admitting exactly its clients, and its own host
/// while the relay has the local export).
fn serve_children(
    relay: &Relay<'_>,
    qmp: &mut Qmp,
    a: &TargetAttrs,
    deps: &[(Addr, Observed)],
) -> Result<(), BackendError> {
    let (TargetAttrs::Image { address, port, .. } | TargetAttrs::Cache { address, port, .. }) = a;
    if !a.tls() {
        return serve(relay, qmp, address, *port, None);
    }
    serve(relay, qmp, address, *port, Some(&cert_tag(deps)?))?;
    let own = exports(qmp)?.iter().any(|e| e == LOCAL_EXPORT);
    let who = subjects(qmp, relay.host, Some(a.clients()), own)?;
    admit(qmp, &who)
}

/// `address:port` of a session's parent export.
fn endpoint(s: &SessionAttrs) -> String {
    format!("{}:{}", s.parent_address, s.parent_port)
}

/// The node name of the session to `endpoint`: short, stable, and a valid QEMU node name.
fn session_node(endpoint: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(endpoint.as_bytes());
    let hex: String = h[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("{SESSION}-{hex}")
}

/// The names of every session node in the relay (old-style `session` included).
fn session_nodes(present: &[Value]) -> Vec<String> {
    present
        .iter()
        .filter(|n| n["drv"] == "nbd")
        .filter_map(|n| n["node-name"].as_str())
        .filter(|name| *name == SESSION || name.starts_with("session-"))
        .map(String::from)
        .collect()
}

/// The session node connected to `endpoint`, if there is one.
fn session_to(present: &[Value], endpoint: &str) -> Option<String> {
    session_nodes(present).into_iter().find(|name| {
        node(present, name)
            .and_then(|n| n["file"].as_str())
            .and_then(backing_endpoint)
            .is_some_and(|e| e == endpoint)
    })
}

/// Makes the relay's session the one to `s`'s parent: connects it (or adopts the node a
/// killed run left), moves the cache onto it if there is a cache, and removes every other
/// session node. Both the create and the in-place move of a session.
fn attach_session(
    relay: &Relay<'_>,
    qmp: &mut Qmp,
    image: &str,
    s: &SessionAttrs,
    deps: &[(Addr, Observed)],
) -> Result<(), BackendError> {
    let host = relay.host;
    let want = endpoint(s);
    let present = nodes(qmp)?;
    // With TLS the node is also the certificate's: a renewed one connects anew beside it.
    let tag = if s.tls { Some(cert_tag(deps)?) } else { None };
    let found = match &tag {
        Some(tag) => {
            let name = session_node(&format!("{want}#{tag}"));
            node(&present, &name).map(|_| name)
        }
        None => session_to(&present, &want),
    };
    let name = match found {
        Some(name) => name,
        None => {
            let mut args = json!({ "driver": "nbd", "read-only": true,
                                   "export": image,
                                   "server": { "type": "inet", "host": s.parent_address,
                                               "port": s.parent_port.to_string() } });
            let name = match &tag {
                Some(tag) => {
                    let creds = format!("{RELAY_CLIENT_CREDS}{tag}");
                    ensure_creds(qmp, host, &creds, &relay.tls_dir(), false)?;
                    args["tls-creds"] = creds.into();
                    args["tls-hostname"] = s.parent.clone().into();
                    session_node(&format!("{want}#{tag}"))
                }
                None => session_node(&want),
            };
            args["node-name"] = name.clone().into();
            // A node of that name to somewhere else cannot be: the name is the endpoint's.
            qmp.execute("blockdev-add", args).map_err(|e| {
                BackendError::new(format!(
                    "on host {host}: cannot connect to {}'s export at {want}: {e}",
                    s.parent
                ))
            })?;
            name
        }
    };
    crate::failpoint::hit("session-attached");
    let present = nodes(qmp)?;
    if let Some(cache) = node(&present, CACHE) {
        // The cache reads through one of the session nodes: with TLS, any other than this
        // one may be it; without, the one to another endpoint.
        let elsewhere = if tag.is_some() {
            session_nodes(&present).iter().any(|o| *o != name)
        } else {
            cache["backing_file"].as_str().map(backing_endpoint) != Some(Some(want.clone()))
        };
        if elsewhere {
            let file = cache_file_node(&present).ok_or_else(|| {
                BackendError::new(format!(
                    "on host {host}: the relay's cache has no file node to keep"
                ))
            })?;
            // The switch waits for reads in flight on the old parent. One that hangs (stopped,
            // or its host unreachable) would hang it for ever: its connection is cut first,
            // and what it was reading fails over to the guests' stop-on-error (a repair
            // resumes them).
            if let Some(old) = cache["backing_file"].as_str().and_then(backing_endpoint) {
                if !answers(relay, &old, image, s.tls) {
                    for other in session_nodes(&present).into_iter().filter(|o| *o != name) {
                        let _ = qmp.execute(
                            "yank",
                            json!({ "instances": [{ "type": "block-node",
                                                     "node-name": other }] }),
                        );
                    }
                }
            }
            qmp.execute(
                "blockdev-reopen",
                json!({ "options": [{ "driver": "qcow2", "node-name": CACHE, "file": file,
                                       "backing": name }] }),
            )
            .map_err(|e| {
                BackendError::new(format!(
                    "on host {host}: cannot move the cache onto {}'s export at {want}: {e}",
                    s.parent
                ))
            })?;
        }
    }
    for other in session_nodes(&nodes(qmp)?) {
        if other != name {
            del_node(qmp, &other)?;
        }
    }
    if let Some(tag) = &tag {
        let keep = format!("{RELAY_CLIENT_CREDS}{tag}");
        for o in objects(qmp)?
            .into_iter()
            .filter(|o| o.starts_with(RELAY_CLIENT_CREDS) && *o != keep)
        {
            let _ = qmp.execute("object-del", json!({ "id": o }));
        }
    }
    Ok(())
}

/// Whether the NBD export at `endpoint` completes a handshake from `relay`'s host within
/// 3 s (a stopped relay accepts TCP connections but never answers).
/// With `tls`, it presents the host's certificate (and checks the export's against its
/// address).
fn answers(relay: &Relay<'_>, endpoint: &str, image: &str, tls: bool) -> bool {
    let (address, port) = endpoint.rsplit_once(':').unwrap_or((endpoint, ""));
    let port: u16 = port.parse().unwrap_or(0);
    let mut argv = args(&["timeout", "3", "qemu-img", "info", "--output=json"]);
    if tls {
        let dir = relay.tls_dir().display().to_string();
        argv.extend(args(&[
            "--object",
            &client_creds_arg(&dir),
            "--image-opts",
            &format!(
                "driver=nbd,server.type=inet,server.host={},server.port={port},export={},tls-creds={CLIENT_CREDS}",
                address.replace(',', ",,"),
                image.replace(',', ",,")
            ),
        ]));
    } else {
        argv.push(uri(address, port, image));
    }
    relay
        .stack
        .transport
        .run(relay.host, &argv, Duration::from_secs(10))
        .is_ok()
}

/// The `address:port` in a backing file name like `nbd://10.0.0.1:10809/base`, or in the
/// `json:` name QEMU gives an NBD node with TLS options.
fn backing_endpoint(backing: &str) -> Option<String> {
    if let Some(j) = backing.strip_prefix("json:") {
        let v: Value = serde_json::from_str(j).ok()?;
        let server = &v["server"];
        let (host, port) = match (&server["host"], &server["port"]) {
            (Value::String(h), Value::String(p)) => (h.clone(), p.clone()),
            _ => (
                v["server.host"].as_str()?.into(),
                v["server.port"].as_str()?.into(),
            ),
        };
        return Some(format!("{host}:{port}"));
    }
    let rest = backing.strip_prefix("nbd://")?;
    let end = rest.find('/').unwrap_or(rest.len());
    Some(rest[..end].trim_start_matches('[').replace("]:", ":"))
}

/// The name of the cache's qcow2 file node: `cache-file`, or the anonymous node of a relay
/// made before it was named.
fn cache_file_node(present: &[Value]) -> Option<String> {
    if node(present, CACHE_FILE).is_some() {
        return Some(CACHE_FILE.into());
    }
    // The only other file node of a relay is the source's image.
    node(present, CACHE)?;
    present
        .iter()
        .find(|n| n["drv"] == "file" && n["node-name"] != IMAGE_FILE)
        .and_then(|n| n["node-name"].as_str().map(String::from))
}

/// Moves a relay's session to another parent in place (see the module's documentation),
/// changes which children a target admits, or loads the host's renewed certificate.
pub(super) fn update(
    stack: &QemuStack,
    t: Target<'_>,
    observed: &Observed,
    deps: &[(Addr, Observed)],
) -> Result<Observed, BackendError> {
    let relay = Relay::new(stack, &t.addr.host, &t.addr.image);
    let lock = stack.relay_lock(&relay.dir);
    let _g = lock.lock().expect("relay lock");
    let mut qmp = relay.running()?.ok_or_else(|| not_running(t))?;
    match t.desired {
        Desired::Target(a) => serve_children(&relay, &mut qmp, a, deps)?,
        Desired::Cache(c) => serve_clones(&relay, &mut qmp, c, deps)?,
        Desired::Session(s) => attach_session(&relay, &mut qmp, &t.addr.image, s, deps)?,
        _ => unreachable!("relay kinds only"),
    }
    let mut o = observed.clone();
    o.extend(self::observed(&relay, t));
    session_in(&mut qmp, t, &mut o)?;
    Ok(o)
}

fn not_running(t: Target<'_>) -> BackendError {
    BackendError::new(format!(
        "on host {}: the relay of image {} is not running; run `vmthunder apply` again to rebuild it",
        t.addr.host, t.addr.image
    ))
}

/// Makes the cache `lv` a qcow2 of the image's size with no backing file of its own (the
/// session is attached as its backing node). A matching qcow2 is kept: a warm cache survives
/// a relay restart.
fn format_cache(relay: &Relay<'_>, lv: &str, size: u64) -> Result<(), BackendError> {
    let t = &relay.stack.transport;
    let info = super::disk::info(relay.stack, relay.host, lv)?;
    if let Some(i) = info {
        if i["format"] == "qcow2"
            && i["virtual-size"].as_u64() == Some(size)
            && i.get("backing-filename").is_none()
        {
            return Ok(());
        }
    }
    t.run(
        relay.host,
        &args(&[
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            lv,
            &size.to_string(),
        ]),
        COMMAND_TIMEOUT,
    )?;
    Ok(())
}

/// Removes what a resource put into the relay.
fn teardown(
    relay: &Relay<'_>,
    qmp: &mut Qmp,
    t: Target<'_>,
    lv_size: Option<u64>,
) -> Result<(), BackendError> {
    match t.desired {
        Desired::Target(a) => {
            remove_export(qmp, TARGET_EXPORT)?;
            if matches!(a, TargetAttrs::Image { .. }) {
                del_node(qmp, IMAGE)?;
                del_node(qmp, IMAGE_FILE)?;
            }
            // Its children are not admitted any more.
            if objects(qmp)?.iter().any(|o| o == AUTHZ) {
                let own = exports(qmp)?.iter().any(|e| e == LOCAL_EXPORT);
                let who = subjects(qmp, relay.host, Some(&[]), own)?;
                admit(qmp, &who)?;
            }
        }
        Desired::Session(_) => {
            for name in session_nodes(&nodes(qmp)?) {
                del_node(qmp, &name)?;
            }
        }
        Desired::Cache(_) => {
            remove_export(qmp, LOCAL_EXPORT)?;
            if objects(qmp)?.iter().any(|o| o == AUTHZ) {
                let who = subjects(qmp, relay.host, None, false)?;
                admit(qmp, &who)?;
            }
            del_node(qmp, COR)?;
            let present = nodes(qmp)?;
            let file = cache_file_node(&present).and_then(|f| {
                node(&present, &f).and_then(|n| n["file"].as_str().map(String::from))
            });
            del_node(qmp, CACHE)?;
            // The cached blocks go with the cache: the lv is plain space again.
            if let (Some(lv), Some(len)) = (file.filter(|f| f.starts_with('/')), lv_size) {
                let path = std::path::Path::new(&lv);
                let t = &relay.stack.transport;
                if let Ok(Some(_)) = t.file_len(relay.host, path) {
                    t.set_len(relay.host, path, len, true)
                        .map_err(|e| relay.stack.io_error("cannot reset", relay.host, path, e))?;
                }
            }
        }
        _ => unreachable!("relay kinds only"),
    }
    relay.stop_if_empty(qmp)
}

pub(super) fn delete(
    stack: &QemuStack,
    t: Target<'_>,
    observed: &Observed,
) -> Result<(), BackendError> {
    let relay = Relay::new(stack, &t.addr.host, &t.addr.image);
    let lock = stack.relay_lock(&relay.dir);
    let _g = lock.lock().expect("relay lock");
    let lv_size = observed.get("lv_size").and_then(Value::as_u64);
    match relay.running()? {
        Some(mut qmp) => teardown(&relay, &mut qmp, t, lv_size),
        None => Ok(()),
    }
}

/// Stops a relay that runs although state records nothing in it (left by a run that was
/// killed between starting it and recording what it built).
pub(super) fn sweep(
    stack: &QemuStack,
    host: &str,
    image: &str,
    recorded: &[&Addr],
) -> Result<(), BackendError> {
    if recorded
        .iter()
        .any(|a| matches!(a.kind, Kind::Session | Kind::Cache | Kind::Target))
    {
        return Ok(());
    }
    let relay = Relay::new(stack, host, image);
    if let Some(pid) = relay.pid()? {
        tracing::info!(
            host,
            image,
            pid,
            "stopping a relay that state does not record"
        );
        if let Ok(mut q) = relay.connect(QMP_TIMEOUT) {
            let _ = q.execute("quit", json!({}));
        }
        wait_gone(stack, host, pid, &relay.pidfile().to_string_lossy());
    }
    let _ = stack.transport.remove_file(host, &relay.socket());
    let _ = stack.transport.remove_file(host, &relay.pidfile());
    Ok(())
}
