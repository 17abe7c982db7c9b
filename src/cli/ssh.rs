//! `vmthunder ssh`: log in to a clone (or run a command on it) with the system `ssh`, which
//! replaces vmthunder: what it prints and its exit status are ssh's.
//!
//! How the clone's address is reached depends on the transport: over the ssh transport through
//! the clone's host (a `ProxyCommand` ssh to the host with the spec's settings for it); with
//! the local transport and `backend.netns` from inside the host's network namespace; otherwise
//! directly (a bridge on this machine has an address on the network). Clones get fresh host
//! keys, so they are kept in a known_hosts file of the cluster's own, next to its state.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use clap::Args;

use super::output;
use super::{fail, Failure, SpecArg, StateArg};
use crate::backend::transport::{display_command, shell_word};
use crate::spec::{HostKeyChecking, Spec, Transport};

/// Seconds ssh waits for a connection (to the clone, and to its host on the way).
const CONNECT_TIMEOUT: u32 = 10;

#[derive(Debug, Args)]
pub struct SshArgs {
    /// The clone: its VM name (`vmthunder output` lists them) or its address
    /// (domain.node01.base.0).
    #[arg(value_name = "CLONE")]
    pub clone: String,
    #[command(flatten)]
    pub spec: SpecArg,
    #[command(flatten)]
    pub state: StateArg,
    /// Private key to log in with [default: the first of clones.ssh_authorized_keys without
    /// its `.pub`, when that file exists].
    #[arg(short = 'i', value_name = "KEY")]
    pub identity: Option<PathBuf>,
    /// User to log in as [default: clones.ssh_user].
    #[arg(short = 'l', value_name = "USER")]
    pub user: Option<String>,
    /// Print the ssh command line (quoted for a POSIX shell) instead of running it.
    #[arg(long)]
    pub print: bool,
    /// A command to run on the clone instead of a login shell, after `--`. As with ssh, its
    /// words are joined with spaces and run by the clone's shell.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// How the control machine reaches the addresses of a host's clones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route {
    /// Straight to the address.
    Direct,
    /// From inside this network namespace (local transport with `backend.netns`).
    Netns(String),
    /// Through the host: the value of ssh's `ProxyCommand` option.
    Proxy(String),
}

/// How to reach the clones of `host` under `spec`'s transport.
pub(super) fn route(spec: &Spec, host: &str) -> Result<Route, Failure> {
    match spec.backend.transport {
        Transport::Ssh => {
            let h = spec.hosts.iter().find(|h| h.name == host).ok_or_else(|| {
                fail(format!(
                    "host {host} is not in the spec any more, and over the ssh transport its clones are reached through it"
                ))
            })?;
            Ok(Route::Proxy(proxy_command(spec, h)))
        }
        Transport::Local if spec.backend.netns => Ok(Route::Netns(crate::backend::netns::host_ns(
            &spec.cluster,
            host,
        ))),
        Transport::Local => Ok(Route::Direct),
    }
}

/// `%` is the start of a token in what ssh expands (ProxyCommand, IdentityFile,
/// UserKnownHostsFile): a literal one is `%%`.
fn percent(s: &str) -> String {
    s.replace('%', "%%")
}

/// A path as given, made absolute (an inventory is used from other directories); `~` is left
/// for ssh to expand.
fn absolute(p: &str) -> String {
    if p.starts_with('~') {
        return p.to_string();
    }
    std::path::absolute(p).map_or_else(|_| p.to_string(), |a| a.display().to_string())
}

/// The ssh command that connects to the host as vmthunder does (its user, port, key,
/// known_hosts, host key checking, config file and own jump host) and forwards stdin and
/// stdout to the clone's address (`-W %h:%p`), quoted as ssh runs a ProxyCommand: by the
/// user's shell, after expanding `%` tokens. (`-J` would not do: ssh applies none of the
/// jump host's settings but its user and port.)
fn proxy_command(spec: &Spec, host: &crate::spec::Host) -> String {
    let s = spec.host_ssh(host);
    let mut argv: Vec<String> = vec!["ssh".into()];
    let mut opt = |flag: &str, value: String| {
        argv.push(flag.into());
        argv.push(value);
    };
    if let Some(f) = &s.config_file {
        opt("-F", absolute(f));
    }
    if let Some(k) = &s.identity_file {
        opt("-i", percent(&absolute(k)));
    }
    if let Some(p) = s.port {
        opt("-p", p.to_string());
    }
    if let Some(k) = &s.known_hosts {
        opt(
            "-o",
            format!("UserKnownHostsFile={}", percent(&absolute(k))),
        );
    }
    let checking = match s.host_key_checking.unwrap_or(HostKeyChecking::Strict) {
        HostKeyChecking::Strict => "yes",
        HostKeyChecking::AcceptNew => "accept-new",
    };
    opt("-o", format!("StrictHostKeyChecking={checking}"));
    opt(
        "-o",
        format!(
            "ConnectTimeout={}",
            s.connect_timeout.unwrap_or(CONNECT_TIMEOUT)
        ),
    );
    if let Some(j) = &s.jump {
        opt("-J", j.clone());
    }
    let destination = match &s.user {
        Some(u) => format!("{u}@{}", host.address),
        None => host.address.clone(),
    };
    let mut words: Vec<String> = argv.iter().map(|w| shell_word(&percent(w))).collect();
    words.push("-W".into());
    words.push("%h:%p".into());
    words.push("--".into());
    words.push(shell_word(&percent(&destination)));
    words.join(" ")
}

/// The ssh options every login to a clone takes: its host key accepted the first time and
/// kept in the cluster's file, not the user's; and with `timeout`, a connect timeout.
pub(super) fn clone_options(known_hosts: &Path, timeout: bool) -> Vec<String> {
    let file = absolute(&known_hosts.display().to_string());
    let mut o = vec![
        "-o".to_string(),
        "StrictHostKeyChecking=accept-new".to_string(),
        "-o".to_string(),
        format!("UserKnownHostsFile={}", percent(&file)),
    ];
    if timeout {
        o.push("-o".into());
        o.push(format!("ConnectTimeout={CONNECT_TIMEOUT}"));
    }
    o
}

/// The private half of the first `clones.ssh_authorized_keys` (its path without `.pub`),
/// when that file exists.
pub(super) fn default_key(spec: &Spec) -> Option<PathBuf> {
    let public = spec.clones.ssh_authorized_keys.first()?;
    let private = public.strip_suffix(".pub")?;
    Path::new(private)
        .is_file()
        .then(|| PathBuf::from(absolute(private)))
}

/// The argument vector that logs in to `address`, a clone on `host`.
fn command(
    spec: &Spec,
    known_hosts: &Path,
    host: &str,
    address: &str,
    user: &str,
    key: Option<&Path>,
    remote: &[String],
) -> Result<Vec<String>, Failure> {
    let route = route(spec, host)?;
    let mut argv: Vec<String> = Vec::new();
    if let Route::Netns(ns) = &route {
        argv.extend(["ip", "netns", "exec", ns].map(String::from));
    }
    argv.push("ssh".into());
    argv.extend(clone_options(known_hosts, true));
    if let Some(k) = key {
        argv.push("-i".into());
        argv.push(percent(&k.display().to_string()));
        // Only this key: an agent holding many would use up the server's MaxAuthTries first.
        argv.push("-o".into());
        argv.push("IdentitiesOnly=yes".into());
    }
    if let Route::Proxy(p) = &route {
        argv.push("-o".into());
        argv.push(format!("ProxyCommand={p}"));
    }
    argv.push("-l".into());
    argv.push(user.into());
    // `--`: the address and the command are never options, whatever they start with.
    argv.push("--".into());
    argv.push(address.into());
    argv.extend(remote.iter().cloned());
    Ok(argv)
}

pub(super) fn run(args: SshArgs) -> Result<i32, Failure> {
    let (spec, at, state) = output::load(&args.spec, args.state)?;
    let clones = output::clones(&state);
    let c = output::find(&clones, &args.clone, &args.spec.file, &at.name)?;
    let Some(address) = c.first_address() else {
        return Err(fail(format!(
            "clone {} ({}) has no network address: the spec must attach clones to a network (`networks`, and its name in `clones.networks`); `vmthunder apply` then gives each one an address",
            c.attrs.name, c.rec.addr
        )));
    };
    let key = args.identity.or_else(|| default_key(&spec));
    let user = args.user.unwrap_or_else(|| spec.clones.ssh_user.clone());
    let argv = command(
        &spec,
        &at.known_hosts,
        &c.rec.addr.host,
        &address,
        &user,
        key.as_deref(),
        &args.command,
    )?;
    if args.print {
        super::emit(format!("{}\n", display_command(&argv)).as_bytes())?;
        return Ok(0);
    }
    let err = std::process::Command::new(&argv[0]).args(&argv[1..]).exec();
    Err(fail(format!(
        "cannot run `{}`: {err}{}",
        argv[0],
        if err.kind() == std::io::ErrorKind::NotFound {
            " (install OpenSSH's client)"
        } else {
            ""
        }
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(backend: serde_json::Value, host_ssh: Option<serde_json::Value>) -> Spec {
        let mut node = serde_json::json!({"name": "node01", "address": "10.0.1.1"});
        if let Some(s) = host_ssh {
            node["ssh"] = s;
        }
        Spec::from_value(&serde_json::json!({
            "version": 1,
            "cluster": "lab",
            "backend": backend,
            "hosts": [{"name": "img0", "address": "10.0.0.1"}, node],
            "images": [{"name": "base", "source_host": "img0", "path": "/images/base.qcow2"}],
        }))
        .unwrap()
    }

    #[test]
    fn routes_follow_the_transport() {
        let s = spec(serde_json::json!({"stack": "sim"}), None);
        assert_eq!(route(&s, "node01").unwrap(), Route::Direct);
        let s = spec(serde_json::json!({"stack": "qemu", "netns": true}), None);
        assert_eq!(
            route(&s, "node01").unwrap(),
            Route::Netns("vmt-lab-node01".into())
        );
        let s = spec(
            serde_json::json!({"stack": "sim", "transport": "ssh", "root": "/srv/vmt"}),
            None,
        );
        assert_eq!(
            route(&s, "node01").unwrap(),
            Route::Proxy(
                "ssh -o StrictHostKeyChecking=yes -o ConnectTimeout=10 -W %h:%p -- 10.0.1.1".into()
            )
        );
        assert!(route(&s, "node99")
            .unwrap_err()
            .message
            .contains("host node99 is not in the spec"));
    }

    #[test]
    fn the_proxy_command_carries_the_hosts_settings_quoted_for_its_shell() {
        let s = spec(
            serde_json::json!({
                "stack": "sim", "transport": "ssh", "root": "/srv/vmt",
                "ssh": {"user": "root", "identity_file": "/keys/ops key", "port": 2222},
            }),
            Some(serde_json::json!({
                "known_hosts": "/etc/vmt/known_hosts", "jump": "gw@bastion:2200",
                "host_key_checking": "accept-new", "connect_timeout": 5,
                "config_file": "/etc/vmt/100%.conf",
            })),
        );
        let Route::Proxy(p) = route(&s, "node01").unwrap() else {
            panic!("not a proxy")
        };
        assert_eq!(
            p,
            "ssh -F /etc/vmt/100%%.conf -i '/keys/ops key' -p 2222 -o UserKnownHostsFile=/etc/vmt/known_hosts -o StrictHostKeyChecking=accept-new -o ConnectTimeout=5 -J gw@bastion:2200 -W %h:%p -- root@10.0.1.1"
        );
    }
}
