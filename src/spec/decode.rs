//! Decoding a spec document that keeps going after an error.
//!
//! Users want every problem at once, each with its JSON path. The document is first checked
//! against the spec's JSON Schema (`schema`), which reports all structural errors; then each
//! part the schema found nothing wrong in is decoded by serde on its own (a host, an image,
//! the clones, ...) and kept in a [`Draft`], so the semantic checks still run on the valid
//! parts.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::{Backend, CacheSpec, Clones, Estimate, Host, Image, Network, Spec, Tree};

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
    /// Records a problem; a message that quotes a huge value is cut (`crate::text::cut`).
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Diagnostic {
            path: crate::text::cut(&path.into()).into_owned(),
            message: crate::text::cut(&message.into()).into_owned(),
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
    pub networks: Vec<Option<Network>>,
    pub estimate: Option<Estimate>,
    pub state: Option<super::StateSpec>,
}

impl Draft {
    /// The spec, when every part decoded. Only a document without diagnostics may be taken
    /// for one: a part the schema faulted decodes without its faulty fields.
    pub fn finish(self) -> Option<Spec> {
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
            networks: self.networks.into_iter().collect::<Option<_>>()?,
            estimate: self.estimate?,
            state: self.state?,
            allotment: None,
        })
    }
}

/// Decodes `value`: the schema's verdict first, then every part that verdict left clean.
pub(crate) fn decode(value: &Value, diags: &mut Diagnostics) -> Draft {
    super::schema::validate(value, diags);
    let dirty = Dirty::of(diags);
    let mut draft = Draft::default();
    let Value::Object(top) = value else {
        return draft;
    };
    let part = |key: &str| -> Option<&Value> {
        let v = top.get(key);
        v.filter(|_| !dirty.within(&format!("/{key}")))
    };
    draft.schema = part("$schema")
        .and_then(|v| leaf(v, "/$schema", diags))
        .flatten();
    draft.version = part("version").and_then(|v| leaf(v, "/version", diags));
    draft.cluster = part("cluster").and_then(|v| leaf(v, "/cluster", diags));
    draft.backend = or_default(top.get("backend"), "/backend", &dirty, diags);
    draft.tree = or_default::<Tree>(top.get("tree"), "/tree", &dirty, diags);
    draft.cache = or_default::<CacheSpec>(top.get("cache"), "/cache", &dirty, diags);
    draft.clones = or_default::<Clones>(top.get("clones"), "/clones", &dirty, diags);
    draft.estimate = or_default::<Estimate>(top.get("estimate"), "/estimate", &dirty, diags);
    draft.state = or_default::<super::StateSpec>(top.get("state"), "/state", &dirty, diags);
    draft.hosts = list::<Host>(top.get("hosts"), "/hosts", &dirty, diags);
    draft.images = list::<Image>(top.get("images"), "/images", &dirty, diags);
    draft.networks = list::<Network>(top.get("networks"), "/networks", &dirty, diags);
    draft
}

/// The paths the schema complained about, to tell which parts are safe to decode.
struct Dirty(std::collections::BTreeSet<String>);

impl Dirty {
    fn of(diags: &Diagnostics) -> Dirty {
        Dirty(diags.iter().map(|d| d.path.clone()).collect())
    }

    /// Whether any complaint is at `path` or below it.
    fn within(&self, path: &str) -> bool {
        let below = format!("{path}/");
        self.0.contains(path)
            || self
                .0
                .range(below.clone()..)
                .next()
                .is_some_and(|p| p.starts_with(&below))
    }

    /// `v` (at `path`) without the object fields and array items the schema faulted.
    fn prune(&self, v: &Value, path: &str) -> Value {
        match v {
            Value::Object(map) => Value::Object(
                map.iter()
                    .filter_map(|(k, item)| {
                        let at = format!("{path}/{}", super::json::token(k));
                        self.keep(item, &at).map(|item| (k.clone(), item))
                    })
                    .collect(),
            ),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, item)| self.keep(item, &format!("{path}/{i}")))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    fn keep(&self, item: &Value, at: &str) -> Option<Value> {
        if self.0.contains(at) {
            None
        } else if self.within(at) {
            Some(self.prune(item, at))
        } else {
            Some(item.clone())
        }
    }
}

/// One part decoded by serde; a failure is reported at the path serde reached.
fn leaf<T: DeserializeOwned>(v: &Value, path: &str, diags: &mut Diagnostics) -> Option<T> {
    match serde_path_to_error::deserialize(v) {
        Ok(t) => Some(t),
        Err(e) => {
            let inner = e.path().iter().fold(String::new(), |mut s, seg| {
                use serde_path_to_error::Segment;
                match seg {
                    Segment::Seq { index } => s.push_str(&format!("/{index}")),
                    Segment::Map { key } | Segment::Enum { variant: key } => {
                        s.push('/');
                        s.push_str(&super::json::token(key));
                    }
                    Segment::Unknown => {}
                }
                s
            });
            diags.push(format!("{path}{inner}"), clean_serde_message(e.inner()));
            None
        }
    }
}

/// A part decoded for the semantic checks. One the schema faulted is decoded without its
/// faulty fields (they take their defaults), so a bad `max_sessions` does not hide a bad
/// `jump` beside it; what that decode says is a consequence and is not reported.
fn part_of<T: DeserializeOwned>(
    v: &Value,
    path: &str,
    dirty: &Dirty,
    diags: &mut Diagnostics,
) -> Option<T> {
    if !dirty.within(path) {
        return leaf(v, path, diags);
    }
    if dirty.0.contains(path) {
        return None;
    }
    leaf(&dirty.prune(v, path), path, &mut Diagnostics::default())
}

/// An optional part: its default when absent, `None` when it is broken.
fn or_default<T: DeserializeOwned + Default>(
    v: Option<&Value>,
    path: &str,
    dirty: &Dirty,
    diags: &mut Diagnostics,
) -> Option<T> {
    match v {
        None => Some(T::default()),
        Some(v) => part_of(v, path, dirty, diags),
    }
}

/// A list of parts, each decoded on its own.
fn list<T: DeserializeOwned>(
    v: Option<&Value>,
    path: &str,
    dirty: &Dirty,
    diags: &mut Diagnostics,
) -> Vec<Option<T>> {
    let Some(Value::Array(items)) = v else {
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| part_of(item, &format!("{path}/{i}"), dirty, diags))
        .collect()
}

pub(crate) fn kind_of(v: &Value) -> &'static str {
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

/// A value as it is quoted in a message: JSON, cut when long.
pub(crate) fn short(v: &Value) -> String {
    crate::text::cut_value(&v.to_string())
}

/// The known field closest to a misspelt one, if any is close.
pub(crate) fn suggest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
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
