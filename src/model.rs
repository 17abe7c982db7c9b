//! The provisioning model: how long operations take and how fast the image tree moves the
//! working set to every clone, from each host's link rate, the hop latency and per-operation
//! times (the spec's `estimate`). `plan --estimate`, `tree.degree: "auto"` and the sim stack
//! use it, and `benches/provision.rs` compares it with measurements.
//!
//! The data plane: every clone reads the same `working_set` at boot, on demand, through its
//! host's cache, which reads through its parent's export. A parent's uplink is shared by its
//! children, so a host receives at `min(rate of its parent, link / children of its parent)`
//! (a host cannot pass on bytes faster than it gets them); the source serves at `link /
//! children`. Each hop also lags its parent by a window of bytes in flight (`hop_window`) and
//! a round trip, so a host at depth `d` finishes `d` windows and round trips after its
//! stream's transfer time. Clones of one host share its cache: the host pulls the working set
//! once. O(hosts) per tree.

use std::collections::HashMap;

use crate::placement::{self, Tree};
use crate::plan::OpKind;
use crate::resource::{Addr, Kind};
use crate::spec::{Degree, Estimate, Spec};
use crate::state::Placement;

/// The link as the model sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Link {
    /// Payload bytes per second of one host's link, in each direction.
    pub payload: f64,
    /// One-way latency of a hop, seconds.
    pub latency: f64,
    /// Bytes each hop lags behind its parent ([`crate::spec::Estimate::hop_window`]).
    pub window: f64,
}

impl Link {
    pub fn from_estimate(e: &Estimate) -> Link {
        Link {
            payload: e.link_rate.bytes_per_sec() * e.efficiency,
            latency: e.latency_ms / 1000.0,
            window: e.hop_window.bytes() as f64,
        }
    }

    /// Seconds to move `bytes` over one link.
    pub fn transfer(&self, bytes: f64) -> f64 {
        bytes / self.payload
    }
}

/// Per node of `tree` (0 is the source, which reads nothing): the seconds until the node has
/// received `working_set` bytes when every node reads at once.
pub fn read_secs(tree: &Tree, working_set: f64, link: &Link) -> Vec<f64> {
    let n = tree.parent.len();
    let mut rate = vec![f64::INFINITY; n];
    let mut secs = vec![0.0; n];
    if working_set <= 0.0 {
        return secs;
    }
    for &v in &tree.order {
        let Some(p) = tree.parent[v as usize] else {
            continue;
        };
        let share = link.payload / tree.children[p as usize].len() as f64;
        let r = rate[p as usize].min(share);
        rate[v as usize] = r;
        let depth = tree.depth[v as usize] as f64;
        secs[v as usize] =
            working_set / r + depth * (link.window.min(working_set) / r + 2.0 * link.latency);
    }
    secs
}

/// The least time any distribution over `tree` needs: the busiest uplink must send the
/// working set to each of its children, and every host must receive it once.
pub fn lower_bound(tree: &Tree, working_set: f64, link: &Link) -> f64 {
    let fanout = tree.children.iter().map(Vec::len).max().unwrap_or(0).max(1);
    link.transfer(working_set * fanout as f64)
}

/// Seconds for `copies` full copies of `image` bytes pulled from one source at once (its
/// uplink is the bottleneck), each host receiving `per_host` of them.
pub fn full_copy_secs(copies: usize, per_host: usize, image: f64, link: &Link) -> f64 {
    link.transfer(image * copies.max(per_host) as f64) + 2.0 * link.latency
}

/// The working set of `image` under `e`: as given, else 64 MiB (at most the image's size).
pub fn working_set(e: &Estimate, image: &crate::spec::Image) -> f64 {
    match e.working_set {
        Some(w) => w.bytes() as f64,
        None => {
            let w = 64u64 << 20;
            image.size.map_or(w, |s| s.bytes().min(w)) as f64
        }
    }
}

/// One image's tree under the model.
pub struct ImageTree {
    pub image: String,
    pub tree: Tree,
    /// Bytes each clone reads at boot.
    pub working_set: f64,
    /// Per node of `tree`: [`read_secs`].
    pub reads: Vec<f64>,
}

/// Per-operation durations of a cluster: fixed per kind, plus each domain's read of its
/// working set through its host's place in the tree.
pub struct Model {
    times: OpTimes,
    degree: u32,
    link: Link,
    trees: Vec<ImageTree>,
    /// image -> host -> seconds its clones spend reading the working set.
    read: HashMap<String, HashMap<String, f64>>,
    /// image -> seconds its import copies and converts (`images[].import`, by its `size`).
    import: HashMap<String, f64>,
}

/// Bytes per second `qemu-img convert` (and the checksum after it) gets through on one host:
/// benches/import.rs measured 1 GiB of VMDK into raw, half data, half zeros, on this 2-core
/// machine.
pub const IMPORT_RATE: f64 = 300.0 * 1024.0 * 1024.0;

/// Seconds the import of `image` takes beyond its fixed time: its size converted at
/// [`IMPORT_RATE`], after a copy over the link when it comes from another host. Nothing
/// when it has no import or no size.
fn import_secs(image: &crate::spec::Image, link: &Link) -> f64 {
    let (Some(import), Some(size)) = (&image.import, image.size) else {
        return 0.0;
    };
    let bytes = size.bytes() as f64;
    let copy = match &import.from_host {
        Some(h) if *h != image.source_host => link.transfer(bytes),
        _ => 0.0,
    };
    copy + bytes / IMPORT_RATE
}

/// Seconds per kind: `given` where it names the kind, else `defaults`.
fn table(
    given: &std::collections::BTreeMap<Kind, f64>,
    defaults: [f64; Kind::ALL.len()],
) -> [f64; Kind::ALL.len()] {
    Kind::ALL.map(|k| given.get(&k).copied().unwrap_or(defaults[k as usize]))
}

/// The fixed seconds per create and delete of each kind (the spec's `estimate.create` and
/// `estimate.delete` over the defaults), without any tree: what the executor's priorities
/// need.
pub struct OpTimes {
    create: [f64; Kind::ALL.len()],
    update: [f64; Kind::ALL.len()],
    delete: [f64; Kind::ALL.len()],
}

impl OpTimes {
    pub fn new(e: &Estimate) -> OpTimes {
        OpTimes {
            create: table(&e.create, DEFAULT_CREATE),
            update: table(&e.update, DEFAULT_UPDATE),
            delete: table(&e.delete, DEFAULT_DELETE),
        }
    }

    /// Seconds `op` takes for any resource of `kind`, reads left out.
    pub fn secs(&self, kind: Kind, op: OpKind) -> f64 {
        match op {
            OpKind::Create => self.create[kind as usize],
            OpKind::Update => self.update[kind as usize],
            OpKind::Delete => self.delete[kind as usize],
        }
    }
}

impl Model {
    /// The model of `spec`. Trees come from `placement` where it names a host's parent, else
    /// from a fresh placement at the spec's degree ("auto" is resolved here, once).
    pub fn new(spec: &Spec, placement: Option<&Placement>) -> Model {
        let e = &spec.estimate;
        let link = Link::from_estimate(e);
        let degree = degree(spec);
        let mut trees = Vec::new();
        let mut read = HashMap::new();
        let mut import = HashMap::new();
        for image in &spec.images {
            import.insert(image.name.clone(), import_secs(image, &link));
            let (names, tree) = image_tree(spec, image, degree, placement);
            let working_set = working_set(e, image);
            let reads = read_secs(&tree, working_set, &link);
            let by_host: HashMap<String, f64> = names
                .iter()
                .zip(&reads)
                .skip(1)
                .map(|(h, s)| (h.to_string(), *s))
                .collect();
            read.insert(image.name.clone(), by_host);
            trees.push(ImageTree {
                image: image.name.clone(),
                tree,
                working_set,
                reads,
            });
        }
        Model {
            times: OpTimes::new(e),
            degree,
            link,
            trees,
            read,
            import,
        }
    }

    /// The tree degree in use ("auto" resolved).
    pub fn degree(&self) -> u32 {
        self.degree
    }

    pub fn link(&self) -> &Link {
        &self.link
    }

    /// Each image's tree, in spec order.
    pub fn trees(&self) -> &[ImageTree] {
        &self.trees
    }

    /// The fixed seconds per kind, reads left out.
    pub fn times(&self) -> &OpTimes {
        &self.times
    }

    /// Seconds `op` on `addr` takes.
    pub fn secs(&self, addr: &Addr, op: OpKind) -> f64 {
        let fixed = self.times.secs(addr.kind, op);
        if op == OpKind::Create && addr.kind == Kind::Domain {
            let read = self
                .read
                .get(&*addr.image)
                .and_then(|hosts| hosts.get(&*addr.host));
            fixed + read.copied().unwrap_or(0.0)
        } else if op == OpKind::Create && addr.kind == Kind::Image {
            fixed + self.import.get(&*addr.image).copied().unwrap_or(0.0)
        } else {
            fixed
        }
    }
}

/// Seconds per create when the spec names none for a kind, in `Kind::ALL` order (lv, session,
/// cache, target, snapshot, seed, bridge, vxlan, domain, ca, cert, image): a qemu-stack host
/// on local disks, the guest's boot to its ready line included in `domain`, an import's copy
/// added to `image` by its size ([`Model::secs`]).
pub const DEFAULT_CREATE: [f64; Kind::ALL.len()] = [
    0.05, 0.3, 0.15, 0.3, 0.05, 0.2, 0.05, 0.05, 4.0, 0.01, 0.1, 0.3,
];
/// Seconds per in-place update: a session's move to another parent (a new NBD node, the
/// cache's backing switched, the old node removed; measured on the qemu stack). Only sessions
/// update in place.
pub const DEFAULT_UPDATE: [f64; Kind::ALL.len()] =
    [0.0, 0.1, 0.05, 0.05, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
pub const DEFAULT_DELETE: [f64; Kind::ALL.len()] = [
    0.02, 0.1, 0.05, 0.1, 0.02, 0.02, 0.05, 0.05, 0.5, 0.0, 0.05, 0.02,
];

/// The hosts of `image`'s tree (index 0 the source) and the tree: as `placement` records it
/// where it can, else fresh at `degree`.
pub fn image_tree<'s>(
    spec: &'s Spec,
    image: &'s crate::spec::Image,
    degree: u32,
    placement: Option<&Placement>,
) -> (Vec<&'s str>, Tree) {
    image_tree_with(spec, image, degree, placement, None)
}

/// [`image_tree`], with hosts that `health` says cannot serve children left without any
/// (`tree.repair: "auto"`). Under `degree: "auto"` recorded parents keep their children
/// although the chosen degree moved.
pub fn image_tree_with<'s>(
    spec: &'s Spec,
    image: &'s crate::spec::Image,
    degree: u32,
    placement: Option<&Placement>,
    health: Option<&crate::health::Health>,
) -> (Vec<&'s str>, Tree) {
    let members = spec.image_hosts(image);
    let names: Vec<&str> = std::iter::once(image.source_host.as_str())
        .chain(members.iter().copied())
        .collect();
    let index = placement::index(&image.source_host, &members);
    let recorded = placement.and_then(|p| p.get(&image.name));
    let health = health.filter(|_| spec.tree.repair == crate::spec::Repair::Auto);
    let unhealthy =
        |i: u32| health.is_some_and(|h| h.why(names[i as usize], &image.name).is_some());
    let opts = placement::Options {
        keep_recorded: matches!(spec.tree.degree, crate::spec::Degree::Auto(_)),
        unhealthy: &unhealthy,
        ..placement::Options::fixed(degree)
    };
    let tree = placement::place(members.len(), &opts, |i| {
        recorded
            .and_then(|r| r.get(names[i as usize]))
            .and_then(|p| index.get(p.as_str()).copied())
    });
    (names, tree)
}

/// The longest any operation may take under the model: a week. A longer one is a mistake in
/// the spec's `estimate` (or a cluster no link could serve), and the sim stack would sleep it.
pub const MAX_OP_SECS: f64 = 7.0 * 86_400.0;

/// Whether every duration the model derives from `spec` (a clone's read of its image's
/// working set through its place in a fresh tree) is finite and at most [`MAX_OP_SECS`];
/// otherwise a diagnostic at the spec field that makes it long.
pub fn check(spec: &Spec) -> Option<crate::spec::Diagnostic> {
    let e = &spec.estimate;
    let model = Model::new(spec, None);
    let link = model.link;
    let (i, tree, secs) = model
        .trees
        .iter()
        .enumerate()
        .map(|(i, t)| (i, t, t.reads.iter().copied().fold(0.0, f64::max)))
        .max_by(|a, b| a.2.total_cmp(&b.2))?;
    if secs.is_finite() && secs <= MAX_OP_SECS {
        return None;
    }
    // Name what dominates: the stream itself, the hops' windows, or their round trips.
    let depth = tree.tree.depth.iter().copied().max().unwrap_or(0) as f64;
    let stream = tree.working_set / link.payload;
    let windows = depth * link.window.min(tree.working_set) / link.payload;
    let trips = depth * 2.0 * link.latency;
    let path = if trips >= stream.max(windows) {
        "/estimate/latency_ms".to_string()
    } else if windows > stream {
        "/estimate/hop_window".to_string()
    } else if e.working_set.is_some() {
        "/estimate/working_set".to_string()
    } else if spec.images[i].size.is_some_and(|s| s.bytes() < 64 << 20) {
        format!("/images/{i}/size")
    } else {
        "/estimate/link_rate".to_string()
    };
    Some(crate::spec::Diagnostic {
        path,
        message: format!(
            "the model gives the slowest host of image {:?} {secs:.3e} s to read its {} B working set at {} per link ({} hops deep): longer than a week, which no apply waits for; raise estimate.link_rate or lower the working set, hop_window or latency_ms",
            tree.image, tree.working_set, e.link_rate, depth
        ),
    })
}

/// The degree the spec asks for, or for `"auto"` the one the model finds fastest.
pub fn degree(spec: &Spec) -> u32 {
    match spec.tree.degree {
        Degree::Fixed(d) => d,
        Degree::Auto(_) => best_degree(spec).0,
    }
}

/// The degree (1 to the largest tree's host count, at most 64) whose slowest host is ready
/// first, and that time: per host, the setup chain down its depth (target, session, cache per
/// level), then a snapshot and a domain whose read follows [`read_secs`]. Ties go to the
/// smaller degree (less load on the source). O(hosts x degrees).
pub fn best_degree(spec: &Spec) -> (u32, f64) {
    let e = &spec.estimate;
    let link = Link::from_estimate(e);
    let t = OpTimes::new(e);
    let c = |k| t.secs(k, OpKind::Create);
    let level = c(Kind::Target) + c(Kind::Session) + c(Kind::Cache);
    let tail = c(Kind::Snapshot) + c(Kind::Domain);
    let widest = spec
        .images
        .iter()
        .map(|i| spec.image_hosts(i).len())
        .max()
        .unwrap_or(1)
        .clamp(1, 64) as u32;
    let mut best = (1, f64::INFINITY);
    for d in 1..=widest {
        let mut worst = 0.0f64;
        for image in &spec.images {
            let (_, tree) = image_tree(spec, image, d, None);
            let reads = read_secs(&tree, working_set(e, image), &link);
            for (depth, read) in tree.depth.iter().zip(&reads).skip(1) {
                worst = worst.max(*depth as f64 * level + tail + read);
            }
        }
        if worst < best.1 * (1.0 - 1e-9) {
            best = (d, worst);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> Link {
        // 100 MB/s payload, no latency, a 1 MB window.
        Link {
            payload: 100e6,
            latency: 0.0,
            window: 1e6,
        }
    }

    #[test]
    fn star_shares_the_source_and_chains_pay_per_hop() {
        let w = 100e6;
        // Star of 4: the source's uplink is split four ways.
        let star = placement::place(4, &placement::Options::fixed(4), |_| None);
        let r = read_secs(&star, w, &link());
        assert_eq!(r[0], 0.0);
        for &s in &r[1..] {
            assert!((s - (4.0 + 0.04)).abs() < 1e-9, "{s}");
        }
        assert!((lower_bound(&star, w, &link()) - 4.0).abs() < 1e-9);
        // Chain of 4: full rate, one request's store-and-forward per hop.
        let chain = placement::place(4, &placement::Options::fixed(1), |_| None);
        let r = read_secs(&chain, w, &link());
        for (d, s) in r.iter().enumerate().skip(1) {
            assert!((s - (1.0 + d as f64 * 0.01)).abs() < 1e-9, "{s}");
        }
        assert!((lower_bound(&chain, w, &link()) - 1.0).abs() < 1e-9);
        // Binary tree of 6: depth 1 and 2, every parent split two ways.
        let bin = placement::place(6, &placement::Options::fixed(2), |_| None);
        let r = read_secs(&bin, w, &link());
        assert!((r[1] - (2.0 + 0.02)).abs() < 1e-9);
        assert!((r[6] - (2.0 + 0.04)).abs() < 1e-9);
        // Nothing to read, nothing to wait for.
        assert!(read_secs(&bin, 0.0, &link()).iter().all(|&s| s == 0.0));
    }

    #[test]
    fn a_child_is_never_faster_than_its_parent() {
        // source -> 1 -> {2, 3, 4}: host 1 gets the full rate, its children a third each.
        let t = placement::place(4, &placement::Options::fixed(3), |i| {
            if i == 1 {
                Some(0)
            } else {
                Some(1)
            }
        });
        let r = read_secs(&t, 90e6, &link());
        assert!((r[1] - (0.9 + 0.01)).abs() < 1e-9, "{}", r[1]);
        for &s in &r[2..] {
            assert!((s - (2.7 + 0.02 * 3.0)).abs() < 1e-9, "{s}");
        }
    }

    #[test]
    fn full_copies_queue_on_the_source() {
        assert!((full_copy_secs(8, 2, 100e6, &link()) - 8.0).abs() < 1e-9);
    }
}

#[cfg(test)]
mod spec_tests {
    use super::*;
    use crate::resource::Addr;
    use std::sync::Arc;

    fn spec(hosts: usize, estimate: serde_json::Value) -> Spec {
        let mut list = vec![serde_json::json!({"name": "src", "address": "10.0.0.1"})];
        for i in 1..=hosts {
            list.push(
                serde_json::json!({"name": format!("n{i:02}"), "address": format!("10.0.1.{i}")}),
            );
        }
        Spec::from_value(&serde_json::json!({
            "version": 1, "cluster": "m", "backend": {"stack": "sim"}, "hosts": list,
            "images": [{"name": "img", "source_host": "src", "path": "/i.raw", "format": "raw",
                        "size": "1GiB"}],
            "tree": {"degree": "auto"},
            "estimate": estimate
        }))
        .unwrap()
    }

    #[test]
    fn auto_picks_a_deep_tree_when_bytes_dominate_and_a_star_when_setup_does() {
        // 24 hosts, 64 MiB over 200 Mbit/s links, operations instantaneous: the source's
        // fan-out costs a whole working set per child, depth only a window per level.
        let zero = serde_json::json!({"lv": 0, "session": 0, "cache": 0, "target": 0,
                                      "snapshot": 0, "domain": 0});
        let s = spec(
            24,
            serde_json::json!({"link_rate": "200mbit", "working_set": "64MiB",
                                            "create": zero}),
        );
        let (d, t) = best_degree(&s);
        assert_eq!(d, 2, "{t}");
        assert_eq!(degree(&s), 2);
        // Each level costs 10 s of setup and there is nothing to read: one level, the star.
        let s = spec(
            24,
            serde_json::json!({"working_set": 0,
            "create": {"target": 10, "session": 0, "cache": 0, "snapshot": 0, "domain": 0}}),
        );
        assert_eq!(best_degree(&s), (24, 10.0));
    }

    #[test]
    fn a_domain_takes_its_boot_plus_its_hosts_read() {
        let s = spec(
            3,
            serde_json::json!({"link_rate": "80mbit", "efficiency": 1,
            "latency_ms": 0, "working_set": "10MB", "hop_window": "1MB",
            "create": {"domain": 2}}),
        );
        // auto: 3 hosts; the model reads at 10 MB/s per link.
        let m = Model::new(&s, None);
        let (names, tree) = image_tree(&s, &s.images[0], degree(&s), None);
        let reads = read_secs(&tree, 10e6, &Link::from_estimate(&s.estimate));
        for v in 1..names.len() {
            let addr = Addr::new(
                Kind::Domain,
                &Arc::from(names[v]),
                &Arc::from("img"),
                Some(0),
            );
            assert!((m.secs(&addr, OpKind::Create) - (2.0 + reads[v])).abs() < 1e-9);
            assert!(reads[v] >= 1.0, "10 MB at 10 MB/s");
            let snap = Addr::new(
                Kind::Snapshot,
                &Arc::from(names[v]),
                &Arc::from("img"),
                Some(0),
            );
            assert_eq!(
                m.secs(&snap, OpKind::Create),
                DEFAULT_CREATE[Kind::Snapshot as usize]
            );
        }
    }
    #[test]
    fn an_import_takes_its_size_at_the_convert_rate_after_the_link_when_remote() {
        let spec = |from_host: &str| {
            crate::spec::Spec::from_value(&serde_json::json!({
                "version": 1, "cluster": "t",
                "hosts": [{"name": "src", "address": "10.0.0.1"}, {"name": "p2v", "address": "10.0.0.2"},
                          {"name": "n1", "address": "10.0.0.3"}],
                "images": [{"name": "web", "source_host": "src", "path": "/srv/web.raw",
                            "format": "raw", "size": "3GiB", "hosts": ["n1"],
                            "import": {"from": "/dev/sdb", "format": "raw", "from_host": from_host}}],
                "estimate": {"link_rate": "1gbit", "efficiency": 1.0},
            }))
            .unwrap()
        };
        let addr: Addr = "image.src.web".parse().unwrap();
        let local = Model::new(&spec("src"), None).secs(&addr, OpKind::Create);
        let convert = 3.0 * 1024.0 * 1024.0 * 1024.0 / IMPORT_RATE;
        assert!(
            (local - (DEFAULT_CREATE[Kind::Image as usize] + convert)).abs() < 1e-9,
            "{local}"
        );
        let remote = Model::new(&spec("p2v"), None).secs(&addr, OpKind::Create);
        let copy = 3.0 * 1024.0 * 1024.0 * 1024.0 * 8.0 / 1e9;
        assert!(
            (remote - local - copy).abs() < 1e-6,
            "{remote} {local} {copy}"
        );
    }
}
