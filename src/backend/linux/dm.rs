//! `cache` and `snapshot`: raw device-mapper devices made with `dmsetup`.
//!
//! A cache is dm-cache in writethrough mode over the session's disk, with data and metadata
//! on the host's cache volumes: no dirty blocks, so the origin, the cache and what children
//! read are always the same bytes, and it can be removed at any time without a flush. A
//! snapshot is a persistent dm-snapshot over the cache device with the clone's
//! copy-on-write volume: the clone's writes never leave its host, the image is never written.
//! In-place updates re-point a snapshot-type device (the origin shim under a moved session's
//! cache, a clone's snapshot over a rebuilt cache) at its new origin with suspend, reload and
//! resume, its size and copy-on-write device kept.

use super::names::{dm_name, origin_name};
use super::{args, LinuxStack};
use crate::backend::{dep_attr, BackendError, Observed, Target};
use crate::resource::{Addr, Kind};

/// dm-cache's block: 512 sectors (256 KiB), a multiple of 64 sectors as the target requires.
pub const CACHE_BLOCK_SECTORS: u32 = 512;
/// The snapshot's chunk: 16 sectors (8 KiB).
pub const SNAPSHOT_CHUNK_SECTORS: u32 = 16;

/// One row of `dmsetup info -c`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmInfo {
    pub name: String,
    pub uuid: String,
    pub attr: String,
    /// How many openers (a snapshot, a VM, an export) hold it.
    pub open: u32,
    /// The devices it is built on, by kernel name (`sdb`, `dm-3`).
    pub blkdevs: Vec<String>,
}

impl DmInfo {
    /// Whether it is suspended (`s`, the third letter of `dmsetup info`'s attributes): I/O
    /// to it waits until it is resumed.
    pub fn suspended(&self) -> bool {
        self.attr.as_bytes().get(2) == Some(&b's')
    }
}

/// Every device-mapper device, one line each.
pub fn info_argv() -> Vec<String> {
    args(&[
        "dmsetup",
        "info",
        "-c",
        "--noheadings",
        "--separator",
        "|",
        "-o",
        "name,uuid,attr,open,blkdevs_used",
    ])
}

pub fn parse_info(text: &str) -> Vec<DmInfo> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.trim().split('|').collect();
            let [name, uuid, attr, open, devs] = f[..] else {
                return None; // "No devices found"
            };
            Some(DmInfo {
                name: name.to_string(),
                uuid: uuid.to_string(),
                attr: attr.to_string(),
                open: open.trim().parse().ok()?,
                blkdevs: devs
                    .split(',')
                    .filter(|d| !d.is_empty())
                    .map(String::from)
                    .collect(),
            })
        })
        .collect()
}

/// `dmsetup create NAME --uuid UUID --table TABLE`.
pub fn create_argv(name: &str, uuid: &str, table: &str) -> Vec<String> {
    args(&["dmsetup", "create", name, "--uuid", uuid, "--table", table])
}

/// Removes a device, retrying while udev still holds it briefly.
pub fn remove_argv(name: &str) -> Vec<String> {
    args(&["dmsetup", "remove", "--retry", name])
}

pub fn status_argv(name: &str) -> Vec<String> {
    args(&["dmsetup", "status", name])
}

/// The live table of a device, its devices as `major:minor`.
pub fn table_argv(name: &str) -> Vec<String> {
    args(&["dmsetup", "table", name])
}

/// Suspends a device: I/O in flight completes, new I/O waits for the resume.
pub fn suspend_argv(name: &str) -> Vec<String> {
    args(&["dmsetup", "suspend", name])
}

/// Loads `table` as the device's inactive table; the resume makes it live.
pub fn reload_argv(name: &str, table: &str) -> Vec<String> {
    args(&["dmsetup", "reload", name, "--table", table])
}

/// Resumes a device, making a reloaded table live.
pub fn resume_argv(name: &str) -> Vec<String> {
    args(&["dmsetup", "resume", name])
}

/// A block device's number, in hexadecimal, following links (`/dev/mapper/x`).
pub fn devno_argv(dev: &str) -> Vec<String> {
    args(&["stat", "-L", "-c", "%t:%T", dev])
}

/// A block device's number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Devno {
    pub major: u32,
    pub minor: u32,
}

impl std::fmt::Display for Devno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

fn devno_in(text: &str, radix: u32) -> Option<Devno> {
    let (major, minor) = text.trim().split_once(':')?;
    Some(Devno {
        major: u32::from_str_radix(major, radix).ok()?,
        minor: u32::from_str_radix(minor, radix).ok()?,
    })
}

/// `253:3`, as device-mapper tables name devices.
pub fn parse_devno(text: &str) -> Option<Devno> {
    devno_in(text, 10)
}

/// `fd:3`, as [`devno_argv`] prints a device's number.
pub fn parse_stat_devno(text: &str) -> Option<Devno> {
    devno_in(text, 16)
}

/// The live table of a snapshot-type device (an origin shim or a clone's snapshot), from
/// `dmsetup table`: `0 131072 snapshot 253:3 253:4 N 8`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotTable {
    pub sectors: u64,
    pub origin: Devno,
    /// The copy-on-write device, as the table names it (`253:4`).
    pub cow: String,
    /// `P` (persistent) or `N` (transient).
    pub persistence: String,
    pub chunk: u32,
}

pub fn parse_snapshot_table(text: &str) -> Result<SnapshotTable, String> {
    let bad = || format!("unexpected snapshot table {:?}", text.trim());
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let [line] = lines[..] else {
        return Err(bad());
    };
    let f: Vec<&str> = line.split_whitespace().collect();
    let ["0", sectors, "snapshot", origin, cow, persistence, chunk] = f[..] else {
        return Err(bad());
    };
    Ok(SnapshotTable {
        sectors: sectors.parse().map_err(|_| bad())?,
        origin: parse_devno(origin).ok_or_else(bad)?,
        cow: cow.to_string(),
        persistence: persistence.to_string(),
        chunk: chunk.parse().map_err(|_| bad())?,
    })
}

/// What re-pointing a snapshot-type device at another origin still needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retarget {
    /// Already over the origin, and live.
    Keep,
    /// Already over the origin, but left suspended (a run killed after its reload).
    Resume,
    /// Its table over the origin to load, after suspending it unless it already is.
    Reload { suspend: bool },
}

/// The steps left to put a device whose live table is `live` over `origin` of
/// `origin_sectors`: refused (both sizes named) when the origin is not the size it maps.
pub fn retarget_step(
    live: &SnapshotTable,
    suspended: bool,
    origin: Devno,
    origin_sectors: u64,
) -> Result<Retarget, String> {
    if live.origin == origin {
        return Ok(if suspended {
            Retarget::Resume
        } else {
            Retarget::Keep
        });
    }
    if live.sectors != origin_sectors {
        return Err(format!(
            "it maps {} sectors and the new origin {origin} has {origin_sectors}",
            live.sectors
        ));
    }
    Ok(Retarget::Reload {
        suspend: !suspended,
    })
}

/// A writethrough dm-cache table over `origin` of `sectors`.
pub fn cache_table(sectors: u64, meta: &str, data: &str, origin: &str) -> String {
    format!("0 {sectors} cache {meta} {data} {origin} {CACHE_BLOCK_SECTORS} 1 writethrough smq 0")
}

/// The transient snapshot that gives a read-only disk a writable face (see
/// [`origin_name`]): chunks of 4 KiB, nothing persisted.
pub fn shim_table(sectors: u64, disk: &str, shim: &str) -> String {
    format!("0 {sectors} snapshot {disk} {shim} N 8")
}

/// A table that maps all `sectors` of `dev` as they are.
pub fn linear_table(sectors: u64, dev: &str) -> String {
    format!("0 {sectors} linear {dev} 0")
}

/// A persistent snapshot table over `origin` of `sectors`.
pub fn snapshot_table(sectors: u64, origin: &str, cow: &str) -> String {
    format!("0 {sectors} snapshot {origin} {cow} P {SNAPSHOT_CHUNK_SECTORS}")
}

/// The size of a block device in 512-byte sectors.
pub fn getsz_argv(dev: &str) -> Vec<String> {
    args(&["blockdev", "--getsz", dev])
}

/// Zeroes the first 64 KiB of a volume: a stale cache superblock would otherwise be taken as
/// valid.
pub fn zero_header_argv(dev: &str) -> Vec<String> {
    vec![
        "dd".into(),
        "if=/dev/zero".into(),
        format!("of={dev}"),
        "bs=64k".into(),
        "count=1".into(),
        "conv=fsync".into(),
        "status=none".into(),
    ]
}

/// What `dmsetup status` says of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotStatus {
    /// Sectors of the copy-on-write volume in use, of its total, and of them metadata.
    Active {
        used: u64,
        total: u64,
        metadata: u64,
    },
    /// The copy-on-write volume failed: the clone's disk is dead.
    Invalid,
    /// The copy-on-write volume filled up: the clone's disk is dead.
    Overflow,
}

impl SnapshotStatus {
    pub fn word(&self) -> &'static str {
        match self {
            SnapshotStatus::Active { .. } => "active",
            SnapshotStatus::Invalid => "invalid",
            SnapshotStatus::Overflow => "overflow",
        }
    }
}

pub fn parse_snapshot_status(line: &str) -> Result<SnapshotStatus, String> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let bad = || format!("unexpected snapshot status {:?}", line.trim());
    if f.get(2) != Some(&"snapshot") {
        return Err(bad());
    }
    match f.get(3).copied() {
        Some("Invalid") => Ok(SnapshotStatus::Invalid),
        Some("Overflow") => Ok(SnapshotStatus::Overflow),
        Some(frac) => {
            let (used, total) = frac.split_once('/').ok_or_else(bad)?;
            Ok(SnapshotStatus::Active {
                used: used.parse().map_err(|_| bad())?,
                total: total.parse().map_err(|_| bad())?,
                metadata: f.get(4).and_then(|m| m.parse().ok()).unwrap_or(0),
            })
        }
        None => Err(bad()),
    }
}

/// The counters of `dmsetup status` of a cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheStatus {
    pub used_blocks: u64,
    pub total_blocks: u64,
    pub read_hits: u64,
    pub read_misses: u64,
    pub dirty: u64,
    /// The features, where `writethrough` must be.
    pub features: Vec<String>,
}

pub fn parse_cache_status(line: &str) -> Result<CacheStatus, String> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let bad = || format!("unexpected cache status {:?}", line.trim());
    if f.get(2) != Some(&"cache") || f.len() < 15 {
        return Err(bad());
    }
    let num = |i: usize| f[i].parse::<u64>().map_err(|_| bad());
    let (used, total) = f[6].split_once('/').ok_or_else(bad)?;
    let nfeatures = num(14)? as usize;
    Ok(CacheStatus {
        used_blocks: used.parse().map_err(|_| bad())?,
        total_blocks: total.parse().map_err(|_| bad())?,
        read_hits: num(7)?,
        read_misses: num(8)?,
        dirty: num(13)?,
        features: f
            .get(15..15 + nfeatures)
            .ok_or_else(bad)?
            .iter()
            .map(|s| s.to_string())
            .collect(),
    })
}

impl LinuxStack {
    pub(super) fn dm_devices(&self, host: &str) -> Result<Vec<DmInfo>, BackendError> {
        Ok(parse_info(&self.run(host, &info_argv())?))
    }

    /// The device vmthunder made for `addr`, if it exists: found by name and checked by UUID.
    fn dm_device(&self, addr: &Addr) -> Result<Option<DmInfo>, BackendError> {
        let (name, uuid) = dm_name(&self.cluster, addr);
        let all = self.dm_devices(&addr.host)?;
        ours(&all, &name, &uuid, addr)
    }

    pub(super) fn sectors(&self, host: &str, dev: &str) -> Result<u64, BackendError> {
        let out = self.run(host, &getsz_argv(dev))?;
        out.trim().parse().map_err(|_| {
            BackendError::new(format!(
                "on host {host}: `blockdev --getsz {dev}` printed {out:?}, not a number of sectors"
            ))
        })
    }

    fn status_line(&self, host: &str, name: &str) -> Result<String, BackendError> {
        self.run(host, &status_argv(name))
    }

    fn devno(&self, host: &str, dev: &str) -> Result<Devno, BackendError> {
        let out = self.run(host, &devno_argv(dev))?;
        parse_stat_devno(&out).ok_or_else(|| {
            BackendError::new(format!(
                "on host {host}: `stat -L -c %t:%T {dev}` printed {out:?}, not a device number"
            ))
        })
    }

    /// Re-points `dev`, a snapshot-type device of `addr`, at `origin`, keeping its size and
    /// its copy-on-write device: suspend, reload with `table_of(sectors, origin, cow)`,
    /// resume. Each step is skipped when what it makes is already there.
    fn retarget(
        &self,
        addr: &Addr,
        dev: &DmInfo,
        origin: &str,
        table_of: fn(u64, &str, &str) -> String,
    ) -> Result<(), BackendError> {
        let host = &*addr.host;
        let name = &*dev.name;
        let live = parse_snapshot_table(&self.run(host, &table_argv(name))?)
            .map_err(|e| BackendError::new(format!("{addr}: on host {host}: {name}: {e}")))?;
        let devno = self.devno(host, origin)?;
        let sectors = self.sectors(host, origin)?;
        let step = retarget_step(&live, dev.suspended(), devno, sectors).map_err(|e| {
            BackendError::new(format!(
                "{addr}: on host {host}: refusing to put {name} over {origin}: {e}"
            ))
        })?;
        let Retarget::Reload { suspend } = step else {
            if step == Retarget::Resume {
                self.run(host, &resume_argv(name))?;
            }
            return Ok(());
        };
        if suspend {
            self.run(host, &suspend_argv(name))?;
        }
        let table = table_of(live.sectors, origin, &live.cow);
        if let Err(e) = self.run(host, &reload_argv(name, &table)) {
            // Live again on the table it had: a suspended device stalls all I/O above it.
            let _ = self.attempt(host, &resume_argv(name))?;
            return Err(e);
        }
        self.run(host, &resume_argv(name))?;
        Ok(())
    }
}

/// The device named `name` in `all`, if there is one, and it is vmthunder's (has `uuid`).
pub(super) fn ours(
    all: &[DmInfo],
    name: &str,
    uuid: &str,
    addr: &Addr,
) -> Result<Option<DmInfo>, BackendError> {
    match all.iter().find(|d| d.name == name) {
        Some(d) if d.uuid == uuid => Ok(Some(d.clone())),
        Some(d) => Err(BackendError::new(format!(
            "{addr}: a device-mapper device {name} exists on host {} with UUID {:?}, not {uuid:?}: it is not vmthunder's; remove or rename it",
            addr.host, d.uuid
        ))),
        None => Ok(None),
    }
}

fn dm_observed(name: &str, uuid: &str, sectors: Option<u64>) -> Observed {
    let mut o = Observed::new();
    o.insert("name".into(), name.into());
    o.insert("uuid".into(), uuid.into());
    o.insert("device".into(), format!("/dev/mapper/{name}").into());
    if let Some(s) = sectors {
        o.insert("sectors".into(), s.into());
    }
    o
}

pub(super) fn read(
    stack: &LinuxStack,
    t: Target<'_>,
    recorded: &Observed,
) -> Result<Option<Observed>, BackendError> {
    let all = stack.dm_devices(&t.addr.host)?;
    let (name, uuid) = dm_name(&stack.cluster, t.addr);
    let Some(d) = ours(&all, &name, &uuid, t.addr)? else {
        return Ok(None);
    };
    if t.addr.kind == Kind::Cache {
        let (oname, ouuid) = origin_name(&stack.cluster, &t.addr.image);
        if ours(&all, &oname, &ouuid, t.addr)?.is_none() {
            return Ok(None);
        }
    }
    let mut o = dm_observed(&d.name, &d.uuid, None);
    // What dependents were given travels on.
    if let Some(iqn) = recorded.get("iqn") {
        o.insert("iqn".into(), iqn.clone());
    }
    let line = stack.status_line(&t.addr.host, &d.name)?;
    let host = &t.addr.host;
    match t.addr.kind {
        Kind::Snapshot => {
            let s = parse_snapshot_status(&line)
                .map_err(|e| BackendError::new(format!("{}: on host {host}: {e}", t.addr)))?;
            o.insert("state".into(), s.word().into());
            if let SnapshotStatus::Active { used, total, .. } = s {
                o.insert("cow_used_sectors".into(), used.into());
                o.insert("cow_sectors".into(), total.into());
            }
        }
        _ => {
            let s = parse_cache_status(&line)
                .map_err(|e| BackendError::new(format!("{}: on host {host}: {e}", t.addr)))?;
            let mode = if s.features.iter().any(|f| f == "writethrough") {
                "writethrough"
            } else {
                "writeback"
            };
            o.insert("mode".into(), mode.into());
        }
    }
    Ok(Some(o))
}

/// What a create made, read as a refresh reads it.
fn read_back(stack: &LinuxStack, t: Target<'_>) -> Result<Observed, BackendError> {
    read(stack, t, &Observed::new())?.ok_or_else(|| {
        BackendError::new(format!(
            "{}: dmsetup create succeeded on host {} but the device is not there",
            t.addr, t.addr.host
        ))
    })
}

/// The cache over the session's disk (through its writable face), on the host's cache
/// volumes.
pub(super) fn create_cache(
    stack: &LinuxStack,
    t: Target<'_>,
    deps: &[(Addr, crate::backend::Observed)],
) -> Result<Observed, BackendError> {
    let host = &*t.addr.host;
    let (name, uuid) = dm_name(&stack.cluster, t.addr);
    let (oname, ouuid) = origin_name(&stack.cluster, &t.addr.image);
    let disk = dep_attr(deps, Kind::Session, "device")?;
    let iqn = dep_attr(deps, Kind::Session, "iqn")?.to_string();
    let all = stack.dm_devices(host)?;
    let sectors = stack.sectors(host, disk)?;
    if ours(&all, &oname, &ouuid, t.addr)?.is_none() {
        let shim = dep_attr(deps, Kind::Lv, "shim")?;
        let table = shim_table(sectors, disk, shim);
        stack.run(host, &create_argv(&oname, &ouuid, &table))?;
    }
    if ours(&all, &name, &uuid, t.addr)?.is_none() {
        let data = dep_attr(deps, Kind::Lv, "data")?;
        let meta = dep_attr(deps, Kind::Lv, "meta")?;
        stack.run(host, &zero_header_argv(meta))?;
        let table = cache_table(sectors, meta, data, &format!("/dev/mapper/{oname}"));
        stack.run(host, &create_argv(&name, &uuid, &table))?;
    }
    let mut o = read_back(stack, t)?;
    o.insert("iqn".into(), iqn.into());
    Ok(o)
}

/// The clone's copy-on-write disk over the host's cache.
pub(super) fn create_snapshot(
    stack: &LinuxStack,
    t: Target<'_>,
    deps: &[(Addr, crate::backend::Observed)],
) -> Result<Observed, BackendError> {
    let host = &*t.addr.host;
    let (name, uuid) = dm_name(&stack.cluster, t.addr);
    if stack.dm_device(t.addr)?.is_none() {
        let origin = dep_attr(deps, Kind::Cache, "device")?;
        let cow = dep_attr(deps, Kind::Lv, "path")?;
        let sectors = stack.sectors(host, origin)?;
        // The copy-on-write volume is not zeroed here: `lvcreate -Zy` zeroed its header when
        // it was made, and a volume that already holds a snapshot (the device is gone after a
        // host reboot, say) holds the clone's writes, which the persistent snapshot takes up
        // again instead of losing them.
        let table = snapshot_table(sectors, origin, cow);
        stack.run(host, &create_argv(&name, &uuid, &table))?;
    }
    snapshot_observed(stack, t)
}

/// A snapshot as creates and updates return it.
fn snapshot_observed(stack: &LinuxStack, t: Target<'_>) -> Result<Observed, BackendError> {
    let mut o = read_back(stack, t)?;
    // Usage moves with every write of the clone: reported by reads, never drift.
    o.remove("cow_used_sectors");
    Ok(o)
}

/// The clone's snapshot follows its host's rebuilt cache: re-pointed at the cache device the
/// deps report, over the same copy-on-write volume (never recreated nor wiped: it holds the
/// clone's writes).
pub(super) fn update_snapshot(
    stack: &LinuxStack,
    t: Target<'_>,
    deps: &[(Addr, crate::backend::Observed)],
) -> Result<Observed, BackendError> {
    let Some(dev) = stack.dm_device(t.addr)? else {
        return Err(BackendError::new(format!(
            "{}: the snapshot device {} is not on host {}: it cannot be updated in place",
            t.addr,
            dm_name(&stack.cluster, t.addr).0,
            t.addr.host
        )));
    };
    let origin = dep_attr(deps, Kind::Cache, "device")?;
    stack.retarget(t.addr, &dev, origin, snapshot_table)?;
    snapshot_observed(stack, t)
}

/// The host's origin shim of `addr`'s image, put over `disk` (its session moved to another
/// parent): the cache above keeps its blocks. Nothing to do before the shim exists.
pub(super) fn repoint_origin(
    stack: &LinuxStack,
    addr: &Addr,
    disk: &str,
) -> Result<(), BackendError> {
    let (name, uuid) = origin_name(&stack.cluster, &addr.image);
    let all = stack.dm_devices(&addr.host)?;
    match ours(&all, &name, &uuid, addr)? {
        Some(shim) => stack.retarget(addr, &shim, disk, shim_table),
        None => Ok(()),
    }
}

pub(super) fn delete(stack: &LinuxStack, t: Target<'_>) -> Result<(), BackendError> {
    let host = &*t.addr.host;
    let all = stack.dm_devices(host)?;
    let mut names = vec![dm_name(&stack.cluster, t.addr)];
    if t.addr.kind == Kind::Cache {
        names.push(origin_name(&stack.cluster, &t.addr.image));
    }
    // Top first: the cache holds its origin open.
    for (i, (name, uuid)) in names.iter().enumerate() {
        let Some(d) = ours(&all, name, uuid, t.addr)? else {
            continue;
        };
        if i == 0 && d.open > 0 {
            return Err(BackendError::new(format!(
                "{}: device {} on host {host} is still open ({} opener(s): a VM, a snapshot or an export still uses it); delete what is built on it first",
                t.addr, d.name, d.open
            )));
        }
        stack.run(host, &remove_argv(&d.name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables() {
        assert_eq!(
            cache_table(131072, "/dev/vg/m", "/dev/vg/d", "/dev/sdb"),
            "0 131072 cache /dev/vg/m /dev/vg/d /dev/sdb 512 1 writethrough smq 0"
        );
        assert_eq!(
            linear_table(131072, "/dev/mapper/c"),
            "0 131072 linear /dev/mapper/c 0"
        );
        assert_eq!(
            shim_table(131072, "/dev/sdb", "/dev/vg/shim"),
            "0 131072 snapshot /dev/sdb /dev/vg/shim N 8"
        );
        assert_eq!(
            snapshot_table(131072, "/dev/mapper/c", "/dev/vg/cow0"),
            "0 131072 snapshot /dev/mapper/c /dev/vg/cow0 P 16"
        );
        assert_eq!(
            zero_header_argv("/dev/vg/m").join(" "),
            "dd if=/dev/zero of=/dev/vg/m bs=64k count=1 conv=fsync status=none"
        );
        assert_eq!(
            create_argv("n", "VMT-n", "0 8 linear /dev/sda 0"),
            [
                "dmsetup",
                "create",
                "n",
                "--uuid",
                "VMT-n",
                "--table",
                "0 8 linear /dev/sda 0"
            ]
        );
        assert_eq!(remove_argv("n").join(" "), "dmsetup remove --retry n");
        assert_eq!(status_argv("n").join(" "), "dmsetup status n");
        assert_eq!(
            getsz_argv("/dev/sda").join(" "),
            "blockdev --getsz /dev/sda"
        );
        assert_eq!(
            info_argv().join(" "),
            "dmsetup info -c --noheadings --separator | -o name,uuid,attr,open,blkdevs_used"
        );
    }

    /// Captured from dmsetup 1.02.185 (lvm2 2.03.16, Debian 12, kernel 6.1.176) in the test
    /// guest, on a relay host: a cache over its origin shim, a clone's snapshot over it (its VM
    /// running) and the LVM volumes under them.
    #[test]
    fn parses_dmsetup_info() {
        let all = parse_info(include_str!("fixtures/dmsetup-info.txt"));
        let cache = all.iter().find(|d| d.name == "vmt.fx.base.cache").unwrap();
        assert_eq!(cache.uuid, "VMT-vmt.fx.base.cache");
        // A snapshot and the relay's export hold it.
        assert_eq!(cache.open, 2);
        assert_eq!(cache.blkdevs.len(), 3, "{cache:?}");
        let snap = all.iter().find(|d| d.name == "vmt.fx.base.snap0").unwrap();
        assert_eq!(snap.open, 1);
        let origin = all.iter().find(|d| d.name == "vmt.fx.base.origin").unwrap();
        assert_eq!(origin.blkdevs, ["dm-3", "sda"]);
        assert!(all.iter().any(|d| d.uuid.starts_with("LVM-")));
        assert!(parse_info("No devices found\n").is_empty());
    }

    #[test]
    fn parses_snapshot_status() {
        let s =
            parse_snapshot_status(include_str!("fixtures/dmsetup-status-snapshot.txt")).unwrap();
        let SnapshotStatus::Active { used, total, .. } = s else {
            panic!("{s:?}")
        };
        assert!(used > 0 && total > used, "{used}/{total}");
        assert_eq!(
            parse_snapshot_status("0 131072 snapshot Invalid").unwrap(),
            SnapshotStatus::Invalid
        );
        assert_eq!(
            parse_snapshot_status("0 131072 snapshot Overflow\n").unwrap(),
            SnapshotStatus::Overflow
        );
        assert!(parse_snapshot_status("0 131072 linear").is_err());
    }

    #[test]
    fn update_builders() {
        assert_eq!(table_argv("n").join(" "), "dmsetup table n");
        assert_eq!(suspend_argv("n").join(" "), "dmsetup suspend n");
        assert_eq!(resume_argv("n").join(" "), "dmsetup resume n");
        assert_eq!(
            reload_argv("n", "0 8 snapshot 8:16 253:4 N 8"),
            [
                "dmsetup",
                "reload",
                "n",
                "--table",
                "0 8 snapshot 8:16 253:4 N 8"
            ]
        );
        assert_eq!(
            devno_argv("/dev/mapper/c"),
            ["stat", "-L", "-c", "%t:%T", "/dev/mapper/c"]
        );
        // The tables a reload loads: the module's own, over the cow the live table names.
        assert_eq!(
            shim_table(131072, "/dev/sdc", "253:4"),
            "0 131072 snapshot /dev/sdc 253:4 N 8"
        );
    }

    #[test]
    fn parses_device_numbers() {
        assert_eq!(
            parse_stat_devno("fd:3\n"),
            Some(Devno {
                major: 253,
                minor: 3
            })
        );
        assert_eq!(
            parse_stat_devno("8:10").map(|d| d.to_string()).as_deref(),
            Some("8:16")
        );
        assert_eq!(
            parse_devno("253:3").map(|d| d.to_string()).as_deref(),
            Some("253:3")
        );
        assert_eq!(parse_devno("/dev/sdb"), None);
        assert_eq!(parse_stat_devno(""), None);
    }

    /// In the format of dmsetup 1.02.185's `dmsetup table` (written here, not captured: this
    /// machine has no device-mapper): a shim and a clone's snapshot.
    #[test]
    fn parses_snapshot_tables() {
        let t = parse_snapshot_table("0 131072 snapshot 253:3 253:4 N 8\n").unwrap();
        assert_eq!(
            t,
            SnapshotTable {
                sectors: 131072,
                origin: Devno {
                    major: 253,
                    minor: 3
                },
                cow: "253:4".into(),
                persistence: "N".into(),
                chunk: 8,
            }
        );
        let p = parse_snapshot_table("0 131072 snapshot 253:5 253:0 P 16").unwrap();
        assert_eq!((p.persistence.as_str(), p.chunk), ("P", 16));
        for bad in [
            "",
            "0 131072 linear 8:16 0",
            "0 131072 snapshot 253:3 253:4 N",
            "0 131072 snapshot /dev/sdb 253:4 N 8",
            "8 131072 snapshot 253:3 253:4 N 8",
            "0 65536 snapshot 253:3 253:4 N 8\n65536 65536 snapshot 253:3 253:4 N 8",
        ] {
            assert!(parse_snapshot_table(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn retarget_skips_what_is_done() {
        let live = parse_snapshot_table("0 131072 snapshot 8:16 253:4 N 8").unwrap();
        let old = live.origin;
        let new = Devno {
            major: 8,
            minor: 32,
        };
        assert_eq!(retarget_step(&live, false, old, 131072), Ok(Retarget::Keep));
        // Killed after the reload's resume was due: resumed only.
        assert_eq!(
            retarget_step(&live, true, old, 131072),
            Ok(Retarget::Resume)
        );
        assert_eq!(
            retarget_step(&live, false, new, 131072),
            Ok(Retarget::Reload { suspend: true })
        );
        // Killed after the suspend: not suspended again.
        assert_eq!(
            retarget_step(&live, true, new, 131072),
            Ok(Retarget::Reload { suspend: false })
        );
        let e = retarget_step(&live, false, new, 131080).unwrap_err();
        assert!(
            e.contains("131072") && e.contains("131080") && e.contains("8:32"),
            "{e}"
        );
        // Already over it: its size is not looked at.
        assert_eq!(retarget_step(&live, false, old, 1), Ok(Retarget::Keep));
    }

    #[test]
    fn reads_suspension_from_the_attributes() {
        let all = parse_info(include_str!("fixtures/dmsetup-info.txt"));
        assert!(all.iter().all(|d| !d.suspended()), "{all:?}");
        let s = parse_info("vmt.fx.base.origin|VMT-vmt.fx.base.origin|L-sw|1|dm-3,sda\n");
        assert!(s[0].suspended());
        let i = parse_info("vmt.fx.base.origin|VMT-vmt.fx.base.origin|LI-w|1|dm-3,sda\n");
        assert!(!i[0].suspended());
    }

    #[test]
    fn parses_cache_status() {
        let s = parse_cache_status(include_str!("fixtures/dmsetup-status-cache.txt")).unwrap();
        assert!(s.features.iter().any(|f| f == "writethrough"), "{s:?}");
        assert_eq!(s.dirty, 0);
        assert!(s.total_blocks > 0);
        assert!(parse_cache_status("0 8 cache 8").is_err());
    }
}
