//! `vmthunder output`: the clones state records, for people (a table), for programs (versioned
//! JSON, `schemas/output.schema.json`) and for Ansible (its JSON inventory). Reads the state
//! only: no lock, no host.
//!
//! Also the lookup `vmthunder ssh` and `vmthunder console` share: the recorded clones in
//! address order, and one of them by name or address.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::{emit, fail, load_spec, load_state, store_of, Failure, SpecArg, StateArg};
use crate::paint::Paint;
use crate::resource::{Addr, Desired, DomainAttrs};
use crate::spec::{Spec, Stack};
use crate::state::{Recorded, State, Status};

/// The format of `output --json` this build writes.
pub const OUTPUT_VERSION: &str = "1.0";

#[derive(Debug, Args)]
pub struct OutputArgs {
    #[command(flatten)]
    pub spec: SpecArg,
    #[command(flatten)]
    pub state: StateArg,
    /// Print the versioned JSON form (the same as --format json).
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// table: aligned columns for people. json: {"format_version": "1.0", "clones": [...]}
    /// (`vmthunder schema output`). ansible-inventory: what `ansible-inventory --list`
    /// prints, groups image_<image> and host_<host>, for `ansible -i`.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    AnsibleInventory,
}

/// The document `output --json` prints.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(title = "vmthunder output")]
pub struct OutputDoc {
    /// The output format version, "1.0".
    pub format_version: String,
    /// The cluster the state is of.
    pub cluster: String,
    /// Every recorded clone, in address order.
    pub clones: Vec<CloneOut>,
}

/// One recorded clone.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CloneOut {
    /// Its resource address, `domain.<host>.<image>.<n>`.
    pub address: Addr,
    /// The VM's name (`clones.name`); `vmthunder ssh NAME` logs in to it.
    pub name: String,
    /// The host it runs on.
    pub host: String,
    pub image: String,
    /// Its number among the clones of its image on its host, from 0.
    pub n: u32,
    pub uuid: String,
    /// The MAC of its first NIC.
    pub mac: String,
    /// One per cluster network it is attached to (`clones.networks`), in that order; empty
    /// without networks.
    pub addresses: Vec<NetworkAddress>,
    /// What state records: `ready`, `tainted` (the next apply replaces it) or `missing`
    /// (a refresh found it gone).
    pub status: Status,
    /// What its host last reported (`running`, ...), when it was read.
    pub observed_status: Option<String>,
    /// The path of its serial console log on its host (`vmthunder console`), when it has one.
    pub console: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct NetworkAddress {
    /// The network's name (`networks[].name`).
    pub network: String,
    /// The IPv4 address, e.g. "10.60.3.7".
    pub address: String,
    /// The address with its network's prefix length, e.g. "10.60.3.7/16".
    pub cidr: String,
}

/// The checked-in schema's exact bytes (`schemas/output.schema.json`).
pub fn schema_bytes() -> Vec<u8> {
    let mut s =
        serde_json::to_vec_pretty(&schemars::schema_for!(OutputDoc)).expect("schema serializes");
    s.push(b'\n');
    s
}

/// A recorded clone: its domain record and the attributes it was created with.
pub(super) struct RecordedClone<'a> {
    pub rec: &'a Recorded,
    pub attrs: &'a DomainAttrs,
}

impl RecordedClone<'_> {
    pub fn addresses(&self) -> Vec<NetworkAddress> {
        self.attrs
            .nics
            .iter()
            .filter(|nic| !nic.address.is_empty())
            .map(|nic| NetworkAddress {
                network: nic.network.clone(),
                address: nic
                    .address
                    .split_once('/')
                    .map_or(nic.address.as_str(), |(ip, _)| ip)
                    .to_string(),
                cidr: nic.address.clone(),
            })
            .collect()
    }

    /// The address `ssh` and Ansible reach it at: its first network's.
    pub fn first_address(&self) -> Option<String> {
        self.addresses().into_iter().next().map(|a| a.address)
    }

    /// What its host reported: `status` (qemu stack), or libvirt's `state` (linux stack).
    pub fn observed_status(&self) -> Option<&str> {
        let o = &self.rec.observed;
        o.get("status")
            .or_else(|| o.get("state"))
            .and_then(Value::as_str)
    }
}

/// Where clones' serial console logs are on their hosts: as recorded, else where the spec's
/// stack writes them (a clone whose create failed may have a console that says why). The sim
/// stack runs nothing, so its clones have none.
pub(super) struct Consoles<'s> {
    spec: &'s Spec,
    /// Knows the qemu stack's file layout; made on first use.
    qemu: std::cell::OnceCell<Option<crate::backend::qemu::QemuStack>>,
}

impl<'s> Consoles<'s> {
    pub fn new(spec: &'s Spec) -> Consoles<'s> {
        Consoles {
            spec,
            qemu: std::cell::OnceCell::new(),
        }
    }

    pub fn of(&self, c: &RecordedClone<'_>) -> Option<PathBuf> {
        if let Some(p) = c.rec.observed.get("console").and_then(Value::as_str) {
            return Some(PathBuf::from(p));
        }
        match self.spec.backend.stack {
            Stack::Sim => None,
            Stack::Linux => Some(PathBuf::from(crate::backend::linux::console_log(
                &c.attrs.name,
            ))),
            Stack::Qemu => self
                .qemu
                .get_or_init(|| crate::backend::qemu::QemuStack::new(self.spec).ok())
                .as_ref()
                .map(|stack| crate::backend::qemu::console_path(stack, &c.rec.addr)),
        }
    }
}

/// Every recorded clone, in address order.
pub(super) fn clones(state: &State) -> Vec<RecordedClone<'_>> {
    let mut v: Vec<RecordedClone<'_>> = state
        .resources
        .iter()
        .filter_map(|rec| match &rec.desired {
            Desired::Domain(attrs) => Some(RecordedClone { rec, attrs }),
            _ => None,
        })
        .collect();
    v.sort_by(|a, b| a.rec.addr.cmp(&b.rec.addr));
    v
}

/// Where a state was read, for messages and the files kept beside it.
pub(super) struct StateAt {
    pub name: String,
    /// The clones' SSH host keys (`state/<cluster>.known_hosts`).
    pub known_hosts: PathBuf,
}

/// The spec, where its state is and the state, read as `state list` reads it: no lock.
pub(super) fn load(spec: &SpecArg, state: StateArg) -> Result<(Spec, StateAt, State), Failure> {
    let spec_doc = load_spec(&spec.file)?;
    let store = store_of(&state, &spec_doc)?;
    let state = load_state(&*store, Some(&spec_doc.cluster))?;
    let at = StateAt {
        name: store.name(),
        known_hosts: store.side_file("known_hosts"),
    };
    Ok((spec_doc, at, state))
}

/// What to say when state records no clone.
pub(super) fn nothing_applied(spec: &Path, state: &str) -> String {
    format!(
        "nothing applied yet (no clones recorded in `{}`): run `vmthunder apply -f {}`",
        state,
        spec.display()
    )
}

/// The clone named `query` (its VM name) or at address `query`.
pub(super) fn find<'a, 'b>(
    clones: &'b [RecordedClone<'a>],
    query: &str,
    spec: &Path,
    state: &str,
) -> Result<&'b RecordedClone<'a>, Failure> {
    if clones.is_empty() {
        return Err(fail(nothing_applied(spec, state)));
    }
    if let Some(c) = clones.iter().find(|c| c.rec.addr.to_string() == query) {
        return Ok(c);
    }
    let named: Vec<&RecordedClone<'a>> = clones.iter().filter(|c| c.attrs.name == query).collect();
    match named.as_slice() {
        [one] => return Ok(one),
        [] => {}
        many => {
            return Err(fail(format!(
                "{} clones are named `{query}` ({}): give the address of the one you mean",
                many.len(),
                many.iter()
                    .map(|c| c.rec.addr.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    }
    let addresses: Vec<String> = clones.iter().map(|c| c.rec.addr.to_string()).collect();
    let mut known: Vec<&str> = clones.iter().map(|c| c.attrs.name.as_str()).collect();
    known.extend(addresses.iter().map(String::as_str));
    let mut close = Vec::new();
    // Another kind's address of the same clone (`snapshot.node01.base.0`): its domain.
    if let Ok(mut a) = query.parse::<Addr>() {
        a.kind = crate::resource::Kind::Domain;
        let a = a.to_string();
        if let Some(same) = addresses.iter().find(|x| **x == a) {
            close.push(same.as_str());
            known.retain(|k| *k != same);
        }
    }
    close.extend(close_names(query, known, 3 - close.len()));
    let lister = format!("`vmthunder output -f {}` lists them", spec.display());
    Err(fail(if close.is_empty() {
        format!(
            "no clone named `{query}` in `{}` ({} recorded; {lister})",
            state,
            clones.len()
        )
    } else {
        format!(
            "no clone named `{query}` in `{}`; did you mean {}? ({lister})",
            state,
            close
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }))
}

/// Up to `max` of `known` closest to `query`, closest first (the spec's misspelling helper,
/// asked again without each one it found).
fn close_names<'a>(query: &str, mut known: Vec<&'a str>, max: usize) -> Vec<&'a str> {
    known.sort_unstable();
    known.dedup();
    let mut out = Vec::new();
    while out.len() < max {
        let Some(best) = crate::spec::suggest(query, &known) else {
            break;
        };
        out.push(best);
        known.retain(|k| *k != best);
    }
    out
}

pub(super) fn run(args: OutputArgs, color: bool) -> Result<i32, Failure> {
    let format = if args.json { Format::Json } else { args.format };
    let (spec, at, state) = load(&args.spec, args.state)?;
    let clones = clones(&state);
    if clones.is_empty() {
        eprintln!(
            "{}.",
            capitalized(&nothing_applied(&args.spec.file, &at.name))
        );
    }
    match format {
        Format::Table => {
            if !clones.is_empty() {
                emit(table(&clones, Paint { on: color }).as_bytes())?;
            }
        }
        Format::Json => {
            let doc = OutputDoc {
                format_version: OUTPUT_VERSION.into(),
                cluster: state.cluster.clone(),
                clones: {
                    let consoles = Consoles::new(&spec);
                    clones.iter().map(|c| clone_out(c, &consoles)).collect()
                },
            };
            let mut b = serde_json::to_vec_pretty(&doc).expect("serializes");
            b.push(b'\n');
            emit(&b)?;
        }
        Format::AnsibleInventory => {
            let (inventory, notes) = ansible(&spec, &at.known_hosts, &clones);
            for n in notes {
                eprintln!("Note: {n}");
            }
            let mut b = serde_json::to_vec_pretty(&inventory).expect("serializes");
            b.push(b'\n');
            emit(&b)?;
        }
    }
    Ok(0)
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn clone_out(c: &RecordedClone<'_>, consoles: &Consoles<'_>) -> CloneOut {
    let a = &c.rec.addr;
    CloneOut {
        address: a.clone(),
        name: c.attrs.name.clone(),
        host: a.host.to_string(),
        image: a.image.to_string(),
        n: a.n.unwrap_or(0),
        uuid: c.attrs.uuid.clone(),
        mac: c.attrs.mac.clone(),
        addresses: c.addresses(),
        status: c.rec.status,
        observed_status: c.observed_status().map(String::from),
        console: consoles.of(c).map(|p| p.display().to_string()),
    }
}

fn status_word(s: Status) -> &'static str {
    match s {
        Status::Ready => "ready",
        Status::Tainted => "tainted",
        Status::Missing => "missing",
        Status::Changed => "changed",
    }
}

/// NAME HOST IMAGE ADDRESS STATUS, aligned; the status coloured on terminals.
fn table(clones: &[RecordedClone<'_>], paint: Paint) -> String {
    let rows: Vec<[String; 5]> = clones
        .iter()
        .map(|c| {
            let ips: Vec<String> = c.addresses().into_iter().map(|a| a.address).collect();
            let status = match c.observed_status() {
                Some(o) => format!("{} ({o})", status_word(c.rec.status)),
                None => status_word(c.rec.status).to_string(),
            };
            [
                c.attrs.name.clone(),
                c.rec.addr.host.to_string(),
                c.rec.addr.image.to_string(),
                if ips.is_empty() {
                    "-".into()
                } else {
                    ips.join(", ")
                },
                status,
            ]
        })
        .collect();
    let header = ["NAME", "HOST", "IMAGE", "ADDRESS", "STATUS"];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 5], last: String| {
        let mut s = String::new();
        for (i, cell) in cells[..4].iter().enumerate() {
            s.push_str(cell);
            s.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
        }
        s.push_str(&last);
        s.push('\n');
        s
    };
    let mut out = line(header, header[4].to_string());
    if paint.on {
        out = paint.bold(out.trim_end()) + "\n";
    }
    for (r, c) in rows.iter().zip(clones) {
        let status = match c.rec.status {
            Status::Ready => paint.green(&r[4]),
            Status::Tainted => paint.red(&r[4]),
            Status::Missing | Status::Changed => paint.yellow(&r[4]),
        };
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4]], status));
    }
    out
}

/// A clone as the inventory shows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct InventoryHost {
    pub name: String,
    pub host: String,
    pub image: String,
    pub uuid: String,
    pub mac: String,
    pub status: String,
    /// Its first address, without prefix.
    pub address: Option<String>,
    /// `ansible_ssh_common_args`: ssh options, one shell-quoted line.
    pub ssh_args: Option<String>,
}

fn ansible(spec: &Spec, known_hosts: &Path, clones: &[RecordedClone<'_>]) -> (Value, Vec<String>) {
    let mut notes = Vec::new();
    let clone_opts = super::ssh::clone_options(known_hosts, false);
    let mut routes: BTreeMap<&str, Option<Vec<String>>> = BTreeMap::new();
    let mut netns_hosts = BTreeSet::new();
    let hosts: Vec<InventoryHost> = clones
        .iter()
        .map(|c| {
            let host = &*c.rec.addr.host;
            let route = routes
                .entry(host)
                .or_insert_with(|| match super::ssh::route(spec, host) {
                    Ok(super::ssh::Route::Direct) => Some(Vec::new()),
                    Ok(super::ssh::Route::Netns(ns)) => {
                        netns_hosts.insert(ns);
                        Some(Vec::new())
                    }
                    Ok(super::ssh::Route::Proxy(cmd)) => {
                        Some(vec!["-o".into(), format!("ProxyCommand={cmd}")])
                    }
                    Err(e) => {
                        notes.push(format!(
                            "clones on host {host} have no way through it: {}",
                            e.message
                        ));
                        None
                    }
                });
            let mut args = clone_opts.clone();
            args.extend(route.iter().flatten().cloned());
            InventoryHost {
                name: c.attrs.name.clone(),
                host: host.to_string(),
                image: c.rec.addr.image.to_string(),
                uuid: c.attrs.uuid.clone(),
                mac: c.attrs.mac.clone(),
                status: status_word(c.rec.status).into(),
                address: c.first_address(),
                ssh_args: Some(crate::backend::transport::display_command(&args)),
            }
        })
        .collect();
    if !netns_hosts.is_empty() {
        let first = netns_hosts.iter().next().expect("not empty");
        notes.push(format!(
            "backend.netns: the clones' addresses are reached only inside the hosts' network namespaces; run Ansible in one of them, e.g. `sudo ip netns exec {first} ansible-playbook -i INVENTORY ...`"
        ));
    }
    let key = super::ssh::default_key(spec).map(|k| k.display().to_string());
    let (inventory, more) = inventory(&hosts, &spec.clones.ssh_user, key.as_deref());
    notes.extend(more);
    (inventory, notes)
}

/// An Ansible group name for `name` under `prefix`: letters, digits and `_` only.
pub(crate) fn group_name(prefix: &str, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{prefix}_{clean}")
}

/// Ansible's JSON inventory (the form `ansible-inventory --list` prints) of `hosts`: every
/// clone's variables under `_meta.hostvars`, one group per image and per host, both children
/// of `all`. Also notes for stderr: clones without an address, group names that collide.
pub(crate) fn inventory(
    hosts: &[InventoryHost],
    user: &str,
    key: Option<&str>,
) -> (Value, Vec<String>) {
    let mut hostvars = Map::new();
    let mut groups: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    let mut sources: BTreeMap<String, BTreeSet<(&str, &str)>> = BTreeMap::new();
    let mut unaddressed = Vec::new();
    for h in hosts {
        let mut v = Map::new();
        match &h.address {
            Some(a) => {
                v.insert("ansible_host".into(), a.as_str().into());
            }
            None => unaddressed.push(h.name.as_str()),
        }
        v.insert("ansible_user".into(), user.into());
        if let Some(k) = key {
            v.insert("ansible_ssh_private_key_file".into(), k.into());
        }
        if let Some(a) = h.ssh_args.as_ref().filter(|a| !a.is_empty()) {
            v.insert("ansible_ssh_common_args".into(), a.as_str().into());
        }
        v.insert("vmthunder_host".into(), h.host.as_str().into());
        v.insert("vmthunder_image".into(), h.image.as_str().into());
        v.insert("vmthunder_uuid".into(), h.uuid.as_str().into());
        v.insert("vmthunder_mac".into(), h.mac.as_str().into());
        v.insert("vmthunder_status".into(), h.status.as_str().into());
        hostvars.insert(h.name.clone(), Value::Object(v));
        for (prefix, of) in [("image", &h.image), ("host", &h.host)] {
            let g = group_name(prefix, of);
            sources.entry(g.clone()).or_default().insert((prefix, of));
            groups.entry(g).or_default().insert(&h.name);
        }
    }
    let mut notes = Vec::new();
    if !unaddressed.is_empty() {
        let shown: Vec<&str> = unaddressed.iter().take(5).copied().collect();
        notes.push(format!(
            "{} clone{} no address ({}{}), so no ansible_host: attach clones to a network (clones.networks) to reach them",
            unaddressed.len(),
            if unaddressed.len() == 1 { " has" } else { "s have" },
            shown.join(", "),
            if unaddressed.len() > shown.len() { ", ..." } else { "" }
        ));
    }
    for (g, from) in &sources {
        if from.len() > 1 {
            notes.push(format!(
                "group {g} holds the clones of {}: their names differ only in characters Ansible does not take",
                from.iter()
                    .map(|(p, n)| format!("{p} {n}"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ));
        }
    }
    // Image groups first, then host groups, each sorted.
    let mut children: Vec<&String> = groups.keys().filter(|g| g.starts_with("image_")).collect();
    children.extend(groups.keys().filter(|g| g.starts_with("host_")));
    let mut doc = Map::new();
    doc.insert("_meta".into(), json!({ "hostvars": hostvars }));
    doc.insert("all".into(), json!({ "children": children }));
    for (g, members) in &groups {
        doc.insert(g.clone(), json!({ "hosts": members }));
    }
    (Value::Object(doc), notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, host: &str, image: &str, address: Option<&str>) -> InventoryHost {
        InventoryHost {
            name: name.into(),
            host: host.into(),
            image: image.into(),
            uuid: format!("uuid-of-{name}"),
            mac: "22:00:00:00:00:01".into(),
            status: "ready".into(),
            address: address.map(String::from),
            ssh_args: None,
        }
    }

    #[test]
    fn inventory_groups_clones_by_image_and_host() {
        let hosts = [
            host("web-node-1-0", "node-1", "web", Some("10.60.0.5")),
            host("web-node2-0", "node2", "web", Some("10.60.0.6")),
            host("db-node2-0", "node2", "db.v2", Some("10.60.0.7")),
        ];
        let (inv, notes) = inventory(&hosts, "vmthunder", Some("/keys/id_ed25519"));
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(
            inv["all"]["children"],
            json!(["image_db_v2", "image_web", "host_node2", "host_node_1"])
        );
        assert_eq!(
            inv["image_web"]["hosts"],
            json!(["web-node-1-0", "web-node2-0"])
        );
        assert_eq!(inv["image_db_v2"]["hosts"], json!(["db-node2-0"]));
        assert_eq!(
            inv["host_node2"]["hosts"],
            json!(["db-node2-0", "web-node2-0"])
        );
        assert_eq!(inv["host_node_1"]["hosts"], json!(["web-node-1-0"]));
        assert_eq!(
            inv["_meta"]["hostvars"]["web-node2-0"],
            json!({
                "ansible_host": "10.60.0.6",
                "ansible_user": "vmthunder",
                "ansible_ssh_private_key_file": "/keys/id_ed25519",
                "vmthunder_host": "node2",
                "vmthunder_image": "web",
                "vmthunder_uuid": "uuid-of-web-node2-0",
                "vmthunder_mac": "22:00:00:00:00:01",
                "vmthunder_status": "ready",
            })
        );
        // Every top-level key but _meta is a group, and all's children are all of them.
        let groups: Vec<&String> = inv
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| !k.starts_with('_') && *k != "all")
            .collect();
        assert_eq!(groups.len(), 4);
    }

    #[test]
    fn inventory_notes_clones_without_address_and_colliding_groups() {
        let mut a = host("a-0", "node-1", "base", None);
        a.ssh_args = Some("-o 'ProxyCommand=ssh -W %h:%p root@10.0.0.1'".into());
        let hosts = [a, host("b-0", "node_1", "base", Some("10.60.0.9"))];
        let (inv, notes) = inventory(&hosts, "ops", None);
        let vars = &inv["_meta"]["hostvars"]["a-0"];
        assert!(vars.get("ansible_host").is_none(), "{vars}");
        assert!(vars.get("ansible_ssh_private_key_file").is_none(), "{vars}");
        assert_eq!(vars["ansible_user"], "ops");
        assert_eq!(
            vars["ansible_ssh_common_args"],
            "-o 'ProxyCommand=ssh -W %h:%p root@10.0.0.1'"
        );
        assert_eq!(inv["host_node_1"]["hosts"], json!(["a-0", "b-0"]));
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[0].starts_with("1 clone has no address (a-0)"),
            "{notes:?}"
        );
        assert!(
            notes[1].contains("host node-1 and host node_1"),
            "{notes:?}"
        );
    }

    #[test]
    fn an_empty_inventory_is_still_one_ansible_reads() {
        let (inv, notes) = inventory(&[], "vmthunder", None);
        assert!(notes.is_empty());
        assert_eq!(
            inv,
            json!({"_meta": {"hostvars": {}}, "all": {"children": []}})
        );
    }

    #[test]
    fn group_names_keep_only_what_ansible_takes() {
        assert_eq!(group_name("host", "node-07"), "host_node_07");
        assert_eq!(group_name("image", "deb12.x"), "image_deb12_x");
        assert_eq!(group_name("image", "base_1"), "image_base_1");
    }

    #[test]
    fn close_names_come_closest_first() {
        let known = vec!["base-node01-0", "base-node01-1", "base-node02-0", "other"];
        assert_eq!(
            close_names("base-node1-0", known.clone(), 2),
            ["base-node01-0", "base-node01-1"]
        );
        assert!(close_names("zzzzzzzz", known, 3).is_empty());
    }
}
