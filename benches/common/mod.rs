//! What the benchmarks share: peak-memory counters and one child process per size.

/// Peak resident set size in MiB since the last reset.
pub fn peak_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

pub fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The sizes to run: `VMTHUNDER_BENCH_HOSTS` (comma-separated), else `debug` under `cargo
/// test --benches` (which runs benches unoptimised: keep it quick), else `release`.
pub fn sizes(debug: &str, release: &str) -> Vec<String> {
    let s = std::env::var("VMTHUNDER_BENCH_HOSTS").unwrap_or_else(|_| {
        if cfg!(debug_assertions) {
            debug.into()
        } else {
            release.into()
        }
    });
    s.split(',')
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect()
}

/// The size this process should measure, when it is a benchmark child.
pub fn child_size() -> Option<usize> {
    std::env::var("VMTHUNDER_BENCH_CHILD")
        .ok()
        .map(|h| h.parse().expect("a host count"))
}

/// Runs this benchmark again as a child process for `size`, so that each size has its own
/// peak-memory counter.
pub fn run_child(size: &str) {
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .env("VMTHUNDER_BENCH_CHILD", size)
        .status()
        .unwrap();
    assert!(status.success(), "benchmark child for {size} hosts failed");
}
