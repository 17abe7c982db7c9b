//! Crash points for tests: with `VMTHUNDER_FAILPOINT=<name>` in its environment, vmthunder
//! kills itself with SIGKILL when it reaches the point of that name, leaving on the hosts
//! exactly what a `kill -9` at that instant leaves. Points:
//! - `session-attached`: a session's new NBD node is in its relay, the cache not yet moved
//!   onto it (the middle of an in-place move).

/// Dies here if the environment names this point.
pub fn hit(name: &str) {
    if std::env::var_os("VMTHUNDER_FAILPOINT").is_some_and(|v| v == name) {
        tracing::warn!(name, "failpoint reached: killing this process");
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &std::process::id().to_string()])
            .status();
        std::process::abort();
    }
}
