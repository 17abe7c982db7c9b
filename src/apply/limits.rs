//! How many operations run at once: at most `per_host` on one host, and overall as many as
//! the hosts' own limits allow, bounded by what the machine running vmthunder can hold.
//!
//! A global limit such as Terraform's default of 10 exists for a cloud API's rate limit;
//! here the hosts share nothing but the machine that drives them, so by default (`auto`)
//! every host may use its `per_host` slots at once. What bounds that is this machine: one
//! worker thread per running operation (at most [`MAX_WORKERS`]); with the ssh transport
//! the open files its mux clients and forwards hold; with the local transport, where the
//! hosts' processes (relays, booting guests) all run here, its cores. `plan --estimate`
//! and apply compute the same limits, so the estimate replays what apply will do.

use std::str::FromStr;

use super::order::Schedule;
use crate::spec::{Spec, Stack, Transport};

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Operations running at once, overall.
    pub parallelism: usize,
    /// Operations running at once on one host.
    pub per_host: usize,
    pub schedule: Schedule,
}

/// A fixed pair for tests and benchmarks that set their own; the command line uses
/// [`Limits::for_spec`].
impl Default for Limits {
    fn default() -> Self {
        Limits {
            parallelism: 10,
            per_host: DEFAULT_PER_HOST as usize,
            schedule: Schedule::CriticalPath,
        }
    }
}

/// `--per-host`'s default.
pub const DEFAULT_PER_HOST: u32 = 4;

/// Worker threads at most, whatever the spec: each running operation holds one.
pub const MAX_WORKERS: usize = 1024;

/// Operations at once per core of this machine with the local transport: most wait on a
/// process or a guest's boot, but past about four per core booting TCG guests starve each
/// other's monitors past the refresh's read timeout.
const LOCAL_PER_CORE: usize = 4;

/// Open files one operation may hold over ssh (a mux client's three pipes, a monitor's
/// forwarded socket, the reply being read), and what each host's master connection and the
/// process itself keep.
const FILES_PER_OPERATION: u64 = 8;
const FILES_PER_HOST: u64 = 4;
const FILES_RESERVED: u64 = 64;

/// `--parallelism`: a number, or `auto` (the default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Parallelism {
    #[default]
    Auto,
    Fixed(u32),
}

impl FromStr for Parallelism {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match crate::spec::count_or_auto(s) {
            Some(None) => Ok(Parallelism::Auto),
            Some(Some(n)) => Ok(Parallelism::Fixed(n)),
            None => Err(format!(
                "`{s}` is not a number of operations (1 or more) or `auto`"
            )),
        }
    }
}

impl std::fmt::Display for Parallelism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Parallelism::Auto => f.write_str("auto"),
            Parallelism::Fixed(n) => write!(f, "{n}"),
        }
    }
}

impl Limits {
    /// The limits a run of `spec` uses with these flags.
    pub fn for_spec(spec: &Spec, parallelism: Parallelism, per_host: u32) -> Limits {
        let per_host = per_host.max(1) as usize;
        let parallelism = match parallelism {
            Parallelism::Fixed(n) => n as usize,
            Parallelism::Auto => auto(spec, per_host, &Machine::this()),
        };
        Limits {
            parallelism,
            per_host,
            schedule: Schedule::CriticalPath,
        }
    }
}

/// What bounds `auto` on the machine running vmthunder.
#[derive(Clone, Copy, Debug)]
struct Machine {
    cores: usize,
    open_files: u64,
}

impl Machine {
    fn this() -> Machine {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let open_files = rlimit::Resource::NOFILE
            .get_soft()
            .unwrap_or(1024)
            .max(FILES_RESERVED);
        Machine { cores, open_files }
    }
}

fn auto(spec: &Spec, per_host: usize, m: &Machine) -> usize {
    let hosts = spec.hosts.len().max(1);
    let wanted = hosts.saturating_mul(per_host);
    let held = match (spec.backend.stack, spec.backend.transport) {
        // Operations that only sleep: threads are the bound.
        (Stack::Sim, _) => MAX_WORKERS,
        (_, Transport::Local) => m.cores.saturating_mul(LOCAL_PER_CORE),
        (_, Transport::Ssh) => {
            let spare = m
                .open_files
                .saturating_sub(FILES_RESERVED)
                .saturating_sub(FILES_PER_HOST * hosts as u64);
            usize::try_from(spare / FILES_PER_OPERATION).unwrap_or(usize::MAX)
        }
    };
    wanted.min(held).clamp(1, MAX_WORKERS)
}

/// Raises this process's soft limit of open files to its hard limit, as a program that
/// holds a connection per host should (the soft default of 1024 bounds `auto` over ssh).
pub fn raise_open_files() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(hosts: usize, stack: &str, transport: &str) -> Spec {
        let hosts: Vec<serde_json::Value> = (0..hosts)
            .map(|i| serde_json::json!({"name": format!("h{i:03}"), "address": format!("10.0.{}.{}", i / 200, i % 200 + 1)}))
            .collect();
        let v = serde_json::json!({
            "version": 1, "cluster": "c",
            "backend": {"stack": stack, "transport": transport, "root": "/srv/vmthunder"},
            "hosts": hosts,
            "images": [{"name": "img", "source_host": "h000", "path": "/srv/img.qcow2", "size": "1GiB"}],
        });
        Spec::from_value(&v).expect("spec")
    }

    #[test]
    fn parallelism_parses_a_number_or_auto() {
        assert_eq!("auto".parse::<Parallelism>(), Ok(Parallelism::Auto));
        assert_eq!("12".parse::<Parallelism>(), Ok(Parallelism::Fixed(12)));
        for bad in ["0", "-1", "many", ""] {
            let e = bad.parse::<Parallelism>().unwrap_err();
            assert!(e.contains("or `auto`"), "{e}");
        }
    }

    #[test]
    fn auto_lets_every_host_use_its_slots_up_to_what_this_machine_holds() {
        let m = Machine {
            cores: 2,
            open_files: 1_048_576,
        };
        // Independent hosts are not throttled by a global limit.
        assert_eq!(auto(&spec(161, "sim", "local"), 4, &m), 644);
        assert_eq!(auto(&spec(161, "qemu", "ssh"), 4, &m), 644);
        assert_eq!(auto(&spec(3, "qemu", "ssh"), 4, &m), 12);
        // Threads bound it.
        assert_eq!(auto(&spec(1000, "sim", "local"), 4, &m), MAX_WORKERS);
        // The local transport runs everything here: the cores bound it.
        assert_eq!(auto(&spec(161, "qemu", "local"), 4, &m), 8);
        // Open files bound ssh: (1024 - 64 - 4 x 161) / 8.
        let few = Machine {
            cores: 2,
            open_files: 1024,
        };
        assert_eq!(auto(&spec(161, "qemu", "ssh"), 4, &few), 39);
        // A fixed number is taken as given.
        let l = Limits::for_spec(&spec(161, "sim", "local"), Parallelism::Fixed(10), 2);
        assert_eq!((l.parallelism, l.per_host), (10, 2));
    }
}
