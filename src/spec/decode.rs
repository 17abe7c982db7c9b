//! Structural decoding of a spec document that keeps going after an error.
//!
//! serde stops at the first problem; users want all of them at once, each with its JSON path.
//! Every object is read field by field here, leaves through serde, and whatever decoded is kept
//! in a [`Draft`] so the semantic checks can still run on the valid parts.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use super::{Backend, CacheSpec, Clones, Estimate, Host, Image, Spec, Ssh, Tree};

/// One problem in a spec, at a JSON Pointer path (`/images/0/source_host`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        write!(f, "{path}: {}", self.message)
    }
}

/// Every problem found, in document order of discovery.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Diagnostic {
            path: path.into(),
            message: message.into(),
        });
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }
}

/// A spec as far as it decoded: `None` where a part had structural errors.
#[derive(Debug, Default)]
pub(crate) struct Draft {
    pub schema: Option<String>,
    pub version: Option<u32>,
    pub cluster: Option<String>,
    pub backend: Option<Backend>,
    pub hosts: Vec<Option<Host>>,
    pub images: Vec<Option<Image>>,
    pub tree: Option<Tree>,
    pub cache: Option<CacheSpec>,
    pub clones: Option<Clones>,
    pub estimate: Option<Estimate>,
    /// False when a required top-level part is missing or broken.
    pub complete: bool,
}

impl Draft {
    pub fn finish(self) -> Option<Spec> {
        if !self.complete {
            return None;
        }
        Some(Spec {
            schema: self.schema,
            version: self.version?,
            cluster: self.cluster?,
            backend: self.backend?,
            hosts: self.hosts.into_iter().collect::<Option<_>>()?,
            images: self.images.into_iter().collect::<Option<_>>()?,
            tree: self.tree?,
            cache: self.cache?,
            clones: self.clones?,
            estimate: self.estimate?,
        })
    }
}

/// Reads one JSON object field by field, recording problems under its path.
struct Obj<'v, 'd> {
    map: &'v Map<String, Value>,
    path: String,
    known: Vec<&'static str>,
    diags: &'d mut Diagnostics,
    ok: bool,
}

impl<'v, 'd> Obj<'v, 'd> {
    fn open(value: &'v Value, path: String, diags: &'d mut Diagnostics) -> Option<Obj<'v, 'd>> {
        match value {
            Value::Object(map) => Some(Obj {
                map,
                path,
                known: Vec::new(),
                diags,
                ok: true,
            }),
            other => {
                diags.push(
                    path,
                    format!("invalid type: {}, expected an object", kind_of(other)),
                );
                None
            }
        }
    }

    fn raw(&mut self, key: &'static str) -> Option<&'v Value> {
        self.known.push(key);
        self.map.get(key)
    }

    fn child(&self, key: &str) -> String {
        format!("{}/{}", self.path, key)
    }

    fn leaf<T: DeserializeOwned>(&mut self, key: &'static str, value: &Value) -> Option<T> {
        match T::deserialize(value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.ok = false;
                self.diags.push(self.child(key), clean_serde_message(&e));
                None
            }
        }
    }

    /// A required leaf.
    fn req<T: DeserializeOwned>(&mut self, key: &'static str) -> Option<T> {
        match self.raw(key) {
            Some(v) => self.leaf(key, v),
            None => {
                self.ok = false;
                let path = self.path.clone();
                self.diags
                    .push(path, format!("missing required field \"{key}\""));
                None
            }
        }
    }

    /// An optional leaf; `Ok(None)` when absent or null, `Err(())` when present but invalid.
    fn opt<T: DeserializeOwned>(&mut self, key: &'static str) -> Result<Option<T>, ()> {
        match self.raw(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => self.leaf(key, v).map(Some).ok_or(()),
        }
    }

    /// An optional leaf with a default.
    fn or<T: DeserializeOwned>(&mut self, key: &'static str, default: T) -> Option<T> {
        self.opt(key).ok().map(|v| v.unwrap_or(default))
    }

    /// Reports unknown fields and tells whether everything read was valid.
    fn close(self) -> bool {
        let mut ok = self.ok;
        for key in self.map.keys() {
            if !self.known.contains(&key.as_str()) {
                ok = false;
                let mut expected = self.known.clone();
                expected.retain(|k| !k.starts_with('$'));
                self.diags.push(
                    format!("{}/{}", self.path, escape(key)),
                    format!(
                        "unknown field \"{key}\"{}, expected one of {}",
                        suggest(key, &expected)
                            .map(|s| format!(" (did you mean \"{s}\"?)"))
                            .unwrap_or_default(),
                        expected
                            .iter()
                            .map(|k| format!("\"{k}\""))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
        ok
    }
}

pub(crate) fn decode(value: &Value, diags: &mut Diagnostics) -> Draft {
    let mut draft = Draft::default();
    let Some(mut top) = Obj::open(value, String::new(), diags) else {
        return draft;
    };
    draft.schema = top.opt("$schema").ok().flatten();
    draft.version = top.req("version");
    draft.cluster = top.req("cluster");

    draft.backend = match top.raw("backend") {
        None => Some(Backend::default()),
        Some(v) => decode_backend(v, top.child("backend"), top.diags),
    };
    draft.hosts = decode_list(&mut top, "hosts", decode_host);
    draft.images = decode_list(&mut top, "images", decode_image);
    draft.tree = match top.raw("tree") {
        None => Some(Tree::default()),
        Some(v) => decode_tree(v, top.child("tree"), top.diags),
    };
    draft.cache = match top.raw("cache") {
        None => Some(CacheSpec::default()),
        Some(v) => decode_cache(v, top.child("cache"), top.diags),
    };
    draft.clones = match top.raw("clones") {
        None => Some(Clones::default()),
        Some(v) => decode_clones(v, top.child("clones"), top.diags),
    };
    draft.estimate = match top.raw("estimate") {
        None => Some(Estimate::default()),
        Some(v) => decode_estimate(v, top.child("estimate"), top.diags),
    };
    draft.complete = top.close();
    draft
}

fn decode_list<T>(
    top: &mut Obj<'_, '_>,
    key: &'static str,
    item: fn(&Value, String, &mut Diagnostics) -> Option<T>,
) -> Vec<Option<T>> {
    let path = top.child(key);
    match top.raw(key) {
        None => {
            top.ok = false;
            top.diags
                .push("", format!("missing required field \"{key}\""));
            Vec::new()
        }
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| item(v, format!("{path}/{i}"), top.diags))
            .collect(),
        Some(other) => {
            top.ok = false;
            top.diags.push(
                path,
                format!("invalid type: {}, expected an array", kind_of(other)),
            );
            Vec::new()
        }
    }
}

fn decode_backend(v: &Value, path: String, diags: &mut Diagnostics) -> Option<Backend> {
    let mut o = Obj::open(v, path, diags)?;
    let d = Backend::default();
    let stack = o.or("stack", d.stack);
    let transport = o.or("transport", d.transport);
    let root = o.or("root", d.root);
    let netns = o.or("netns", false);
    let volume_group = o.opt("volume_group");
    let iscsi_target = o.or("iscsi_target", d.iscsi_target);
    let base_port = o.or("base_port", d.base_port);
    let accel = o.or("accel", d.accel);
    let ssh = match o.raw("ssh") {
        None | Some(Value::Null) => Some(None),
        Some(sv) => {
            let p = o.child("ssh");
            decode_ssh(sv, p, o.diags).map(Some)
        }
    };
    let ok = o.close();
    let backend = Backend {
        stack: stack?,
        transport: transport?,
        root: root?,
        netns: netns?,
        volume_group: volume_group.ok()?,
        iscsi_target: iscsi_target?,
        base_port: base_port?,
        accel: accel?,
        ssh: ssh?,
    };
    ok.then_some(backend)
}

fn decode_host(v: &Value, path: String, diags: &mut Diagnostics) -> Option<Host> {
    let mut o = Obj::open(v, path, diags)?;
    let name = o.req("name");
    let address = o.req("address");
    let ssh = match o.raw("ssh") {
        None | Some(Value::Null) => Some(None),
        Some(sv) => {
            let p = o.child("ssh");
            decode_ssh(sv, p, o.diags).map(Some)
        }
    };
    let ok = o.close();
    let (name, address, ssh) = (name?, address?, ssh?);
    ok.then_some(Host { name, address, ssh })
}

fn decode_ssh(v: &Value, path: String, diags: &mut Diagnostics) -> Option<Ssh> {
    let mut o = Obj::open(v, path, diags)?;
    let user = o.opt("user");
    let port = o.opt("port");
    let identity_file = o.opt("identity_file");
    let jump = o.opt("jump");
    let connect_timeout = o.opt("connect_timeout");
    let host_key_checking = o.opt("host_key_checking");
    let known_hosts = o.opt("known_hosts");
    let config_file = o.opt("config_file");
    let max_sessions = o.opt("max_sessions");
    let ok = o.close();
    let ssh = Ssh {
        user: user.ok()?,
        port: port.ok()?,
        identity_file: identity_file.ok()?,
        jump: jump.ok()?,
        connect_timeout: connect_timeout.ok()?,
        host_key_checking: host_key_checking.ok()?,
        known_hosts: known_hosts.ok()?,
        config_file: config_file.ok()?,
        max_sessions: max_sessions.ok()?,
    };
    ok.then_some(ssh)
}

fn decode_image(v: &Value, path: String, diags: &mut Diagnostics) -> Option<Image> {
    let mut o = Obj::open(v, path, diags)?;
    let name = o.req("name");
    let source_host = o.req("source_host");
    let path = o.req("path");
    let format = o.or("format", Image::default_format());
    let size = o.opt("size");
    let hosts = o.opt("hosts");
    let clones_per_host = o.opt("clones_per_host");
    let version = o.opt("version");
    let ok = o.close();
    let image = Image {
        name: name?,
        source_host: source_host?,
        path: path?,
        format: format?,
        size: size.ok()?,
        hosts: hosts.ok()?,
        clones_per_host: clones_per_host.ok()?,
        version: version.ok()?,
    };
    ok.then_some(image)
}

fn decode_tree(v: &Value, path: String, diags: &mut Diagnostics) -> Option<Tree> {
    let mut o = Obj::open(v, path, diags)?;
    let degree = o.or("degree", Tree::default_degree());
    let ok = o.close();
    let tree = Tree { degree: degree? };
    ok.then_some(tree)
}

fn decode_cache(v: &Value, path: String, diags: &mut Diagnostics) -> Option<CacheSpec> {
    let mut o = Obj::open(v, path, diags)?;
    let size = o.or("size", CacheSpec::default_size());
    let ok = o.close();
    let cache = CacheSpec { size: size? };
    ok.then_some(cache)
}

fn decode_clones(v: &Value, path: String, diags: &mut Diagnostics) -> Option<Clones> {
    let mut o = Obj::open(v, path, diags)?;
    let per_host = o.or("per_host", Clones::default_per_host());
    let name = o.or("name", Clones::default_name());
    let vcpus = o.or("vcpus", Clones::default_vcpus());
    let memory = o.or("memory", Clones::default_memory());
    let cow_size = o.or("cow_size", Clones::default_cow_size());
    let boot = o.opt("boot");
    let ready = o.opt("ready");
    let network = o.opt("network");
    let ok = o.close();
    let clones = Clones {
        per_host: per_host?,
        name: name?,
        vcpus: vcpus?,
        memory: memory?,
        cow_size: cow_size?,
        boot: boot.ok()?,
        ready: ready.ok()?,
        network: network.ok()?,
    };
    ok.then_some(clones)
}

fn decode_estimate(v: &Value, path: String, diags: &mut Diagnostics) -> Option<Estimate> {
    let mut o = Obj::open(v, path, diags)?;
    let d = Estimate::default();
    let link_rate = o.or("link_rate", d.link_rate);
    let efficiency = o.or("efficiency", d.efficiency);
    let latency_ms = o.or("latency_ms", d.latency_ms);
    let working_set = o.opt("working_set");
    let hop_window = o.or("hop_window", d.hop_window);
    let create = o.or("create", d.create);
    let delete = o.or("delete", d.delete);
    let ok = o.close();
    let estimate = Estimate {
        link_rate: link_rate?,
        efficiency: efficiency?,
        latency_ms: latency_ms?,
        working_set: working_set.ok()?,
        hop_window: hop_window?,
        create: create?,
        delete: delete?,
    };
    ok.then_some(estimate)
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// serde_json appends " at line 0 column 0" when deserializing from a `Value`; drop it.
fn clean_serde_message(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    }
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The known field closest to a misspelt one, if any is close.
fn suggest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
