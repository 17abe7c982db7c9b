//! How many clones of each image each host runs.
//!
//! An image gives either a count per host (`images[].clones_per_host`, else `clones.per_host`)
//! or a total (`images[].clones`), which is placed here over the image's hosts by
//! `images[].placement`:
//!
//! - `spread`: each new clone goes to the host with room for the most more clones (ties: the
//!   host with the fewest of the image's clones, then spec order). Equal hosts get equal
//!   shares; a bigger host takes clones until its room is down to the others'.
//! - `pack`: each new clone goes to the host with room for the fewest more clones that still
//!   fits one (ties: spec order), so hosts fill one after another and the rest stay free.
//!
//! A host's room is what it has (`hosts[].capacity`, else what the stack discovered; a figure
//! neither gives is unbounded), vCPUs and memory times `backend.overcommit`, less what it
//! carries already: one cache per image whose tree it is in, the clones of images counted per
//! host, the clones already placed. A host takes at most [`MAX_CLONES_PER_HOST`] of an image.
//!
//! Stable against the recorded state: a host that is still one of the image's hosts keeps its
//! recorded clones (indices up to its highest recorded one), whatever its room, before any new
//! clone is placed. Adding a host moves no clone. Only a smaller total removes clones: `spread`
//! takes them from the host with the most, `pack` from the host with the fewest (ties: later
//! hosts first), always a host's highest index.
//!
//! O((clones + hosts) log hosts): one heap of hosts per image.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

use crate::capacity::{self, Found, Need};
use crate::resource::Kind;
use crate::spec::{Spec, Spread, MAX_CLONES_PER_HOST};
use crate::state::State;

/// The clones of each image on each host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allotment {
    images: Vec<Counts>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Counts {
    /// The same count on every host of the image.
    Each(u32),
    /// A total, placed: host -> count (hosts without clones are absent).
    Placed(HashMap<String, u32>),
}

/// Why a total could not be placed, at the spec path it concerns.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {message}")]
pub struct AllotError {
    pub at: String,
    pub message: String,
}

impl Allotment {
    /// Clones of image `image` (an index into `spec.images`) on `host`, one of its hosts.
    pub fn count(&self, image: usize, host: &str) -> u32 {
        match self.images.get(image) {
            Some(Counts::Each(n)) => *n,
            Some(Counts::Placed(m)) => m.get(host).copied().unwrap_or(0),
            None => 0,
        }
    }

    /// Whether any image gives a total, so that placing it may use the hosts' figures.
    pub fn needs_figures(spec: &Spec) -> bool {
        spec.images.iter().any(|i| i.clones.is_some())
    }

    /// Places every image's total given the recorded state `prior` and what the hosts were
    /// found to have (`found`; empty: the spec's declared capacities alone).
    pub fn of(spec: &Spec, prior: &State, found: &Found) -> Result<Allotment, Vec<AllotError>> {
        let images: Vec<Counts> = spec
            .images
            .iter()
            .map(|img| match img.clones {
                None => Counts::Each(spec.clones_per_host(img)),
                Some(_) => Counts::Placed(HashMap::new()),
            })
            .collect();
        if !Allotment::needs_figures(spec) {
            return Ok(Allotment { images });
        }
        let at = spec.host_positions();
        let index: HashMap<&str, usize> = spec
            .images
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.as_str(), i))
            .collect();
        // Highest recorded clone index + 1, per (image, host).
        let mut recorded: HashMap<(usize, usize), u32> = HashMap::new();
        for r in &prior.resources {
            if r.addr.kind != Kind::Domain {
                continue;
            }
            if let (Some(&i), Some(&h), Some(n)) =
                (index.get(&*r.addr.image), at.get(&*r.addr.host), r.addr.n)
            {
                let e = recorded.entry((i, h)).or_default();
                *e = (*e).max(n.saturating_add(1));
            }
        }
        Allotment::place(spec, &at, &recorded, found, images)
    }

    /// [`Allotment::of`] given the recorded counts per (image index, host index).
    fn place(
        spec: &Spec,
        at: &HashMap<&str, usize>,
        recorded: &HashMap<(usize, usize), u32>,
        found: &Found,
        mut images: Vec<Counts>,
    ) -> Result<Allotment, Vec<AllotError>> {
        let clone = Need::per_clone(spec);
        // What every host carries before any total is placed: caches, and the clones of
        // images counted per host.
        let mut used: Vec<Need> = vec![Need::default(); spec.hosts.len()];
        let members: Vec<Vec<usize>> = spec
            .images
            .iter()
            .map(|img| {
                spec.image_hosts(img)
                    .iter()
                    .filter_map(|h| at.get(h).copied())
                    .collect()
            })
            .collect();
        for (i, img) in spec.images.iter().enumerate() {
            for &h in &members[i] {
                used[h].disk += spec.cache.size.bytes();
                if img.clones.is_none() {
                    used[h].add(&clone, u64::from(spec.clones_per_host(img)));
                }
            }
        }
        // Every total keeps its recorded clones (cut down only to a smaller total) first.
        let mut counts: Vec<Vec<u32>> = vec![Vec::new(); spec.images.len()];
        for (i, img) in spec.images.iter().enumerate() {
            let Some(total) = img.clones else { continue };
            let mut kept: Vec<u32> = members[i]
                .iter()
                .map(|&h| recorded.get(&(i, h)).copied().unwrap_or(0))
                .collect();
            shrink(&mut kept, total, img.placement.unwrap_or_default());
            for (&h, &k) in members[i].iter().zip(&kept) {
                used[h].add(&clone, u64::from(k));
            }
            counts[i] = kept;
        }
        let over = spec.backend.overcommit;
        let has: Vec<[Option<u64>; 3]> =
            spec.hosts.iter().map(|h| capacity::has(h, found)).collect();
        let room = |h: usize, used: &Need| -> u64 {
            let [v, m, d] = has[h];
            let fit = |cap: Option<u64>, ratio: f64, used: u64, each: u64| match cap {
                None => u64::MAX,
                Some(_) if each == 0 => u64::MAX,
                Some(cap) => {
                    let left = cap as f64 * ratio - used as f64;
                    if left < 0.0 {
                        0
                    } else {
                        // The small slack is the shortage check's: 2.0 x 4.0 fits 8 vCPUs.
                        ((left + 1e-9) / each as f64).floor() as u64
                    }
                }
            };
            fit(v, over.vcpus, used.vcpus, clone.vcpus)
                .min(fit(m, over.memory, used.memory, clone.memory))
                .min(fit(d, 1.0, used.disk, clone.disk))
        };
        let mut errors = Vec::new();
        for (i, img) in spec.images.iter().enumerate() {
            let Some(total) = img.clones else { continue };
            let policy = img.placement.unwrap_or_default();
            let hosts = &members[i];
            let count = &mut counts[i];
            let mut placed: u64 = count.iter().map(|&k| u64::from(k)).sum();
            // (key, position in the image's hosts); a popped entry whose key is stale is
            // pushed again with its current key.
            let key = |pos: usize, count: &[u32], used: &[Need]| -> Option<Key> {
                let h = hosts[pos];
                let per_host = u64::from(MAX_CLONES_PER_HOST - count[pos].min(MAX_CLONES_PER_HOST));
                let room = room(h, &used[h]).min(per_host);
                (room > 0).then(|| Key::new(policy, room, count[pos], pos))
            };
            let mut heap: BinaryHeap<Key> = (0..hosts.len())
                .filter_map(|p| key(p, count, &used))
                .collect();
            while placed < total {
                let Some(top) = heap.pop() else { break };
                let pos = top.pos;
                match key(pos, count, &used) {
                    Some(now) if now == top => {
                        count[pos] += 1;
                        used[hosts[pos]].add(&clone, 1);
                        placed += 1;
                        if let Some(next) = key(pos, count, &used) {
                            heap.push(next);
                        }
                    }
                    Some(now) => heap.push(now),
                    None => {}
                }
            }
            if placed < total {
                errors.push(AllotError {
                    at: format!("/images/{i}/clones"),
                    message: no_room(spec, i, total, placed, hosts, count),
                });
            }
            images[i] = Counts::Placed(
                hosts
                    .iter()
                    .zip(count.iter())
                    .filter(|(_, &k)| k > 0)
                    .map(|(&h, &k)| (spec.hosts[h].name.clone(), k))
                    .collect(),
            );
        }
        if errors.is_empty() {
            Ok(Allotment { images })
        } else {
            Err(errors)
        }
    }
}

/// A host's place in the heap: the greatest is served first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    /// Spread: room, then fewer clones; pack: less room. Then earlier hosts.
    rank: (u64, Reverse<u32>),
    pos: usize,
}

impl Key {
    fn new(policy: Spread, room: u64, count: u32, pos: usize) -> Key {
        let rank = match policy {
            Spread::Spread => (room, Reverse(count)),
            Spread::Pack => (u64::MAX - room, Reverse(0)),
        };
        Key { rank, pos }
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> Ordering {
        self.rank
            .cmp(&other.rank)
            .then_with(|| other.pos.cmp(&self.pos))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Cuts `kept` (per host, in spec order) down to `total`: `spread` from the host with the
/// most, `pack` from the host with the fewest (ties: later hosts first).
fn shrink(kept: &mut [u32], total: u64, policy: Spread) {
    let mut sum: u64 = kept.iter().map(|&k| u64::from(k)).sum();
    if sum <= total {
        return;
    }
    // The greatest is cut first.
    let rank = |k: u32, pos: usize| match policy {
        Spread::Spread => (k, pos),
        Spread::Pack => (u32::MAX - k, pos),
    };
    let mut heap: BinaryHeap<(u32, usize)> = kept
        .iter()
        .enumerate()
        .filter(|(_, &k)| k > 0)
        .map(|(p, &k)| rank(k, p))
        .collect();
    while sum > total {
        let Some((_, pos)) = heap.pop() else { break };
        kept[pos] -= 1;
        sum -= 1;
        if kept[pos] > 0 {
            heap.push(rank(kept[pos], pos));
        }
    }
}

/// Why image `i`'s `total` does not fit: how many did, and where.
fn no_room(
    spec: &Spec,
    i: usize,
    total: u64,
    placed: u64,
    hosts: &[usize],
    count: &[u32],
) -> String {
    let img = &spec.images[i];
    let c = &spec.clones;
    let mut where_: Vec<String> = hosts
        .iter()
        .zip(count)
        .filter(|(_, &k)| k > 0)
        .map(|(&h, &k)| format!("{} {k}", spec.hosts[h].name))
        .collect();
    if where_.len() > 6 {
        let more = where_.len() - 5;
        where_.truncate(5);
        where_.push(format!("{more} more"));
    }
    let on = if where_.is_empty() {
        String::new()
    } else {
        format!(" ({})", where_.join(", "))
    };
    format!(
        "{total} clones of image {:?} do not fit on its {} host{}: there is room for {placed}{on} at {} vCPUs, {} and {} of disk each: add hosts or capacity, lower the total, or raise backend.overcommit",
        img.name,
        hosts.len(),
        if hosts.len() == 1 { "" } else { "s" },
        c.vcpus,
        capacity::bytes(c.memory.bytes()),
        capacity::bytes(c.cow_size.bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `src` plus hosts of the given declared (vcpus, memory GiB); clones of 2 vCPUs, 2 GiB.
    fn spec(sizes: &[(u32, u32)], total: u64, placement: &str) -> Spec {
        let mut hosts = vec![json!({"name": "src", "address": "10.0.0.1"})];
        for (i, (v, m)) in sizes.iter().enumerate() {
            hosts.push(
                json!({"name": format!("n{}", i + 1), "address": format!("10.0.0.{}", i + 2),
                "capacity": {"vcpus": v, "memory": format!("{m}GiB")}}),
            );
        }
        Spec::from_value(&json!({
            "version": 1, "cluster": "c", "backend": {"stack": "sim", "overcommit": {"vcpus": 1.0}},
            "hosts": hosts,
            "images": [{"name": "base", "source_host": "src", "path": "/i.qcow2",
                        "clones": total, "placement": placement}],
            "clones": {"vcpus": 2, "memory": "2GiB"}
        }))
        .unwrap()
    }

    fn table(s: &Spec, prior: &State) -> Vec<u32> {
        let a = Allotment::of(s, prior, &Found::new()).unwrap();
        s.hosts[1..].iter().map(|h| a.count(0, &h.name)).collect()
    }

    /// [`table`] with clones recorded on the named hosts.
    fn after(s: &Spec, counts: &[(&str, u32)]) -> Vec<u32> {
        let at = s.host_positions();
        let recorded = counts.iter().map(|(h, k)| ((0, at[h]), *k)).collect();
        let images = vec![Counts::Placed(HashMap::new())];
        let a = Allotment::place(s, &at, &recorded, &Found::new(), images).unwrap();
        s.hosts[1..].iter().map(|h| a.count(0, &h.name)).collect()
    }

    #[test]
    fn spread_fills_equal_hosts_evenly_and_big_hosts_more() {
        assert_eq!(
            table(&spec(&[(8, 8); 3], 7, "spread"), &State::empty("c")),
            [3, 2, 2]
        );
        // Room for 8, 2 and 4 clones: the big host takes clones until its room is the
        // others' (as a free-memory weigher does), then they take turns.
        let s = spec(&[(16, 16), (4, 4), (8, 8)], 9, "spread");
        assert_eq!(table(&s, &State::empty("c")), [6, 1, 2]);
        let s = spec(&[(16, 16), (4, 4), (8, 8)], 14, "spread");
        assert_eq!(table(&s, &State::empty("c")), [8, 2, 4]);
        // Memory is what runs out when it is the smaller figure: n1 has room for 2.
        let s = spec(&[(16, 4), (16, 16)], 6, "spread");
        assert_eq!(table(&s, &State::empty("c")), [0, 6]);
        let s = spec(&[(16, 4), (16, 16)], 10, "spread");
        assert_eq!(table(&s, &State::empty("c")), [2, 8]);
    }

    #[test]
    fn pack_fills_the_fullest_host_first() {
        let s = spec(&[(16, 16), (4, 4), (8, 8)], 9, "pack");
        // Least room first: n2 (2), then n3 (4), then n1.
        assert_eq!(table(&s, &State::empty("c")), [3, 2, 4]);
        let s = spec(&[(8, 8); 3], 5, "pack");
        assert_eq!(table(&s, &State::empty("c")), [4, 1, 0]);
    }

    #[test]
    fn unknown_room_spreads_by_count() {
        let s = Spec::from_value(&json!({
            "version": 1, "cluster": "c", "backend": {"stack": "sim"},
            "hosts": [{"name": "src", "address": "a"}, {"name": "n1", "address": "b"},
                      {"name": "n2", "address": "c"}, {"name": "n3", "address": "d"}],
            "images": [{"name": "base", "source_host": "src", "path": "/i", "clones": 10}]
        }))
        .unwrap();
        assert_eq!(table(&s, &State::empty("c")), [4, 3, 3]);
    }

    #[test]
    fn placed_clones_stay_when_hosts_are_added_or_the_total_grows() {
        let before = spec(&[(8, 8); 2], 6, "spread");
        assert_eq!(table(&before, &State::empty("c")), [3, 3]);
        let st = [("n1", 3), ("n2", 3)];
        // A third host, the same total: nothing moves.
        let added = spec(&[(8, 8); 3], 6, "spread");
        assert_eq!(after(&added, &st), [3, 3, 0]);
        // A bigger total: the new clones go where the room is.
        let grown = spec(&[(8, 8); 3], 9, "spread");
        assert_eq!(after(&grown, &st), [3, 3, 3]);
        // Recorded clones are kept even on a host now too small for them.
        let shrunk_host = spec(&[(4, 4), (8, 8), (8, 8)], 8, "spread");
        assert_eq!(after(&shrunk_host, &st), [3, 3, 2]);
    }

    #[test]
    fn a_smaller_total_removes_from_the_fullest_or_the_emptiest() {
        let st = [("n1", 4), ("n2", 1), ("n3", 2)];
        assert_eq!(after(&spec(&[(8, 8); 3], 5, "spread"), &st), [2, 1, 2]);
        assert_eq!(after(&spec(&[(8, 8); 3], 5, "pack"), &st), [4, 0, 1]);
    }

    #[test]
    fn a_total_that_does_not_fit_says_where_the_room_went() {
        // The spec check places totals against the declared capacities.
        let e =
            std::panic::catch_unwind(|| spec(&[(8, 8), (4, 4)], 9, "spread")).expect_err("refused");
        let e = e.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            e.contains(r#"path: "/images/0/clones", message: "9 clones of image \"base\" do not fit on its 2 hosts: there is room for 6 (n1 4, n2 2) at 2 vCPUs, 2 GiB and 1 GiB of disk each: add hosts"#),
            "{e}"
        );
    }

    #[test]
    fn other_images_take_their_room_first() {
        let s = Spec::from_value(&json!({
            "version": 1, "cluster": "c", "backend": {"stack": "sim", "overcommit": {"vcpus": 1.0}},
            "hosts": [{"name": "src", "address": "a"},
                      {"name": "n1", "address": "b", "capacity": {"vcpus": 8, "memory": "64GiB"}},
                      {"name": "n2", "address": "c", "capacity": {"vcpus": 8, "memory": "64GiB"}}],
            "images": [{"name": "fixed", "source_host": "src", "path": "/f", "hosts": ["n1"], "clones_per_host": 3},
                       {"name": "base", "source_host": "src", "path": "/i", "clones": 4}],
            "clones": {"vcpus": 2}
        }))
        .unwrap();
        let a = Allotment::of(&s, &State::empty("c"), &Found::new()).unwrap();
        assert_eq!((a.count(1, "n1"), a.count(1, "n2")), (1, 3));
        assert_eq!(a.count(0, "n1"), 3);
    }
}
