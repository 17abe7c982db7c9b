//! The command line: flags (clap structs whose doc comments are the `--help`), then a call
//! into the library, then a view that renders for people or as JSON. No logic of its own.

mod console;
pub mod events;
pub mod output;
mod progress;
mod run;
mod ssh;
mod surgery;
mod transfer;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::apply::limits::DEFAULT_PER_HOST;
use crate::apply::{Limits, Parallelism};
use crate::forecast;
use crate::graph::Graph;
use crate::paint::Paint;
use crate::plan::{self, Mode, OpGraph, Plan, RenderOptions};
use crate::refresh::{self, Refreshed};
use crate::resource::Addr;
use crate::spec::{Degree, Spec, SpecError};
use crate::state::{self, Held, Location, State, Store};

/// Provision large VM clusters declaratively with the VMThunder image tree.
///
/// A cluster spec (JSON) names images, hosts and how many clones each host boots. vmthunder
/// expands it into a DAG of resources per image and host (lv, session, cache, target,
/// snapshot, domain), diffs it against the recorded state and shows the plan.
///
/// Typical use:
///   vmthunder validate -f examples/lab.json
///   vmthunder plan -f examples/lab.json --out plans/lab.json
///   vmthunder show plans/lab.json
///   vmthunder apply plans/lab.json        (or: apply -f SPEC, which asks first)
///   vmthunder destroy -f examples/lab.json
#[derive(Debug, Parser)]
#[command(name = "vmthunder", version, about, long_about, verbatim_doc_comment)]
pub struct Cli {
    /// When to colour output: auto (only on a terminal, unless NO_COLOR is set), always, never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, global = true)]
    pub color: ColorChoice,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a spec and report every error at once, each with its JSON path.
    Validate {
        #[command(flatten)]
        spec: SpecArg,
        /// Print the result as JSON: {"valid": bool, "diagnostics": [{"path", "message"}]}.
        #[arg(long)]
        json: bool,
    },
    /// Show what apply would change to make the cluster match the spec.
    ///
    /// Exit status: 0 success; 1 error; with --detailed-exitcode, 2 when there are changes.
    Plan(PlanArgs),
    /// Make the hosts match the spec: plan, confirm, then create, replace and delete.
    ///
    /// With a saved plan (`vmthunder plan --out FILE`), runs exactly that plan, and refuses it
    /// if the state changed since. Exit status: 0 when every operation succeeded, 1 otherwise.
    Apply(ApplyArgs),
    /// Delete every resource the state records, dependents first, and every trace on the hosts.
    Destroy(DestroyArgs),
    /// Render a saved plan file for people, or as JSON.
    Show {
        /// A plan saved with `vmthunder plan --out FILE`.
        plan: PathBuf,
        /// Print the plan's JSON form.
        #[arg(long)]
        json: bool,
        /// List every change, however many.
        #[arg(long)]
        full: bool,
    },
    /// Print the desired resource DAG in Graphviz DOT (`| dot -Tsvg > graph.svg`).
    Graph {
        #[command(flatten)]
        spec: SpecArg,
        #[command(flatten)]
        state: StateArg,
    },
    /// List the clones state records: name, host, image, addresses, status
    ///
    /// Like `terraform output`: reads the state only (no lock, no host). As a table for
    /// people, as versioned JSON for programs (`--json`: name, host, image, n, UUID, MAC,
    /// addresses per network, recorded and observed status, console log path; schema
    /// `vmthunder schema output`), or as an Ansible inventory:
    ///   vmthunder output -f SPEC --format ansible-inventory > inventory.json
    ///   ansible -i inventory.json image_base -m ping
    /// Nothing applied yet: no output (an empty document in the JSON forms), exit 0.
    #[command(verbatim_doc_comment)]
    Output(output::OutputArgs),
    /// Log in to a clone with ssh, or run a command on it
    ///
    /// Runs the system `ssh` in place of vmthunder, to the clone's first network address as
    /// `clones.ssh_user`, with the private half of the first `clones.ssh_authorized_keys`.
    /// Over the ssh transport it goes through the clone's host (a ProxyCommand with the
    /// spec's ssh settings for that host); with `backend.netns`, from inside the host's
    /// network namespace (root); otherwise directly. Clones' host keys are accepted the first
    /// time and kept in `state/<cluster>.known_hosts`, not in yours (a clone replaced since
    /// has a new key: `ssh-keygen -R ADDRESS -f state/<cluster>.known_hosts`).
    ///   vmthunder ssh -f SPEC base-node01-0
    ///   vmthunder ssh -f SPEC domain.node01.base.0 -- uname -a
    ///   vmthunder ssh -f SPEC base-node01-0 --print
    #[command(verbatim_doc_comment)]
    Ssh(ssh::SshArgs),
    /// Show a clone's serial console log (what the guest printed while booting)
    ///
    /// Reads the log on the clone's host through the spec's transport. The whole log, or its
    /// last lines with --lines; --follow keeps printing what is appended until Ctrl-C. The sim
    /// stack runs no guest, so its clones have no console.
    Console(console::ConsoleArgs),
    /// Read and change the recorded state; move it between a file and a database; rekey it.
    #[command(subcommand)]
    State(StateCommand),
    /// Adopt an object that exists on its host into state: read it there and record it if it
    /// matches what the spec describes at ADDR. What it is built on must be recorded first.
    Import {
        /// The resource address, e.g. domain.node07.base.0.
        address: String,
        #[command(flatten)]
        spec: SpecArg,
        #[command(flatten)]
        state: StateArg,
        /// Read and show what would be recorded; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove a lock left by a run that hangs or is gone, by its lock ID. Refused while the
    /// holder still runs on this machine, unless --force.
    ForceUnlock {
        /// The ID printed by the command that found the state locked.
        id: String,
        /// Remove the lock even though its holder still runs on this machine (a run started
        /// beside it would do its work a second time).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        spec: OptSpecArg,
        #[command(flatten)]
        state: StateArg,
    },
    /// Print a JSON Schema (checked in under schemas/): of cluster specs, of the events
    /// `apply --json` and `destroy --json` print, of plans (`plan --json`, `--out`), of state
    /// files, of `output --json`.
    Schema {
        #[arg(value_enum, default_value_t = SchemaKind::Cluster)]
        of: SchemaKind,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SchemaKind {
    Cluster,
    Events,
    Plan,
    State,
    Output,
}

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Make a PostgreSQL database ready to keep states: creates schema `vmthunder` and its
    /// tables once (idempotent; needs a role that may create a schema). Then `state push` a
    /// file state into it, or apply.
    ///   vmthunder state init --state postgres://admin@db.internal/vmthunder
    #[command(verbatim_doc_comment)]
    Init {
        #[command(flatten)]
        spec: OptSpecArg,
        #[command(flatten)]
        state: StateArg,
    },
    /// Copy a state file into the spec's store (`--state` or the spec's `state`): how a team
    /// moves from a file to a database. Refused when the store holds a state of another
    /// lineage, a newer one, or an apply's unfinished journal. The file stays as it was.
    ///   vmthunder state push -f cluster.json --state postgres://ci@db/vmthunder state/lab.json
    #[command(verbatim_doc_comment)]
    Push {
        /// The state file to copy.
        #[arg(value_name = "FILE")]
        state_file: PathBuf,
        #[command(flatten)]
        spec: OptSpecArg,
        #[command(flatten)]
        state: StateArg,
    },
    /// Print the stored state as a state file (or write it to --out): a backup, or the way
    /// back from a database to a file. Secrets stay sealed with the configured key.
    Pull {
        /// Write the state to FILE (atomically, mode 0600) instead of standard output.
        #[arg(long, short = 'o', value_name = "FILE")]
        out: Option<PathBuf>,
        #[command(flatten)]
        spec: OptSpecArg,
        #[command(flatten)]
        state: StateArg,
    },
    /// Seal the state's secrets with a new key (rotation; or the first key, sealing secrets
    /// kept in clear). The state is written twice, so the version kept before it is sealed
    /// with the new key too. Then configure the new key wherever the old one was.
    Rekey {
        /// The new key: a file (mode 0600) holding the base64 of 32 random bytes, e.g. made
        /// with `head -c 32 /dev/urandom | base64 > new.key`.
        #[arg(long, value_name = "FILE")]
        new_key_file: PathBuf,
        #[command(flatten)]
        spec: OptSpecArg,
        #[command(flatten)]
        state: StateArg,
    },
    /// Forget resources without touching hosts (the objects stay; a later plan creates them
    /// anew unless they are imported). ADDR may be a prefix: `domain.node07`.
    Rm {
        #[arg(required = true, value_name = "ADDR")]
        addresses: Vec<String>,
        /// Show what would be forgotten; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        spec: OptSpecArg,
        #[command(flatten)]
        state: StateArg,
    },
    /// Rename a recorded resource (same kind); what is built on it follows.
    Mv {
        from: String,
        to: String,
        /// Show what would move; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        spec: OptSpecArg,
        #[command(flatten)]
        state: StateArg,
    },
    /// List every recorded resource address.
    List {
        #[command(flatten)]
        spec: OptSpecArg,
        #[command(flatten)]
        state: StateArg,
    },
    /// Show one recorded resource.
    Show {
        /// A resource address, e.g. session.node01.base.
        address: String,
        #[command(flatten)]
        spec: OptSpecArg,
        #[command(flatten)]
        state: StateArg,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct SpecArg {
    /// The cluster spec (JSON).
    #[arg(
        short = 'f',
        long = "file",
        value_name = "SPEC",
        env = "VMTHUNDER_SPEC"
    )]
    pub file: PathBuf,
}

#[derive(Clone, Debug, Args)]
pub struct OptSpecArg {
    /// The cluster spec, to find its state at state/<cluster>.json.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "SPEC",
        env = "VMTHUNDER_SPEC"
    )]
    pub file: Option<PathBuf>,
}

#[derive(Clone, Debug, Args)]
pub struct StateArg {
    /// Where the state is kept: a file, or a PostgreSQL URL such as
    /// postgres://vmthunder@db.internal/vmthunder?sslmode=verify-full (its password from
    /// PGPASSWORD or ~/.pgpass) [default: the spec's `state`, else state/<cluster>.json].
    #[arg(long = "state", value_name = "PATH|URL", env = "VMTHUNDER_STATE")]
    pub location: Option<String>,
    /// The key that seals secrets in state: a file (mode 0600) holding the base64 of 32
    /// random bytes [default: the spec's state.key_file, else the key in
    /// VMTHUNDER_STATE_KEY].
    #[arg(
        long = "state-key-file",
        value_name = "FILE",
        env = "VMTHUNDER_STATE_KEY_FILE"
    )]
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub spec: SpecArg,
    #[command(flatten)]
    pub state: StateArg,
    /// Save the plan to FILE (e.g. plans/lab.json), with the state's serial and lineage, for
    /// `vmthunder show FILE`.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print the plan as versioned JSON instead of the human form.
    #[arg(long)]
    pub json: bool,
    /// Exit 0 when the spec, the state and the hosts agree, 1 on error, 2 when there are
    /// changes or drift (including objects whose host did not answer): the CI drift check.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Limit the plan to ADDR (or every address under a prefix such as domain.node07) and
    /// what it needs. Repeatable.
    #[arg(long, value_name = "ADDR")]
    pub target: Vec<String>,
    /// Replace ADDR (and what is built on it) even if unchanged. Repeatable.
    #[arg(long, value_name = "ADDR")]
    pub replace: Vec<String>,
    /// Plan to destroy every recorded resource, dependents first.
    #[arg(long)]
    pub destroy: bool,
    /// Also print how long the apply will take and its critical path, from the model in the
    /// spec's `estimate` (link rate, hop latency, working set, seconds per operation).
    #[arg(long)]
    pub estimate: bool,
    /// Use this tree degree instead of the spec's: a number, or `auto` for the one the model
    /// finds fastest (as `tree.degree: "auto"` does). Save the plan with --out to apply it.
    #[arg(long, value_name = "N|auto", value_parser = Degree::parse)]
    pub degree: Option<Degree>,
    /// With --estimate: operations the apply will run at once, overall (as apply's
    /// --parallelism; `auto` computes the same limit apply will use).
    #[arg(long, value_name = "N|auto", default_value_t = Parallelism::Auto, requires = "estimate")]
    pub parallelism: Parallelism,
    /// With --estimate: operations the apply will run at once on one host.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_PER_HOST, requires = "estimate", value_parser = clap::value_parser!(u32).range(1..))]
    pub per_host: u32,
    /// How long to wait for the state lock, e.g. 30s, 2m [default: 0s: fail at once].
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub lock_timeout: Duration,
    /// List every change even in very large plans.
    #[arg(long)]
    pub full: bool,
    /// Also print each host's capacity: what its clones need of what it has (from
    /// `hosts[].capacity`, the rest discovered on the host), also when nothing changes. It
    /// is printed anyway when a host declares capacity or its clones do not fit.
    #[arg(long, conflicts_with = "destroy")]
    pub capacity: bool,
    #[command(flatten)]
    pub refresh: RefreshArgs,
}

#[derive(Clone, Debug, Args)]
pub struct RefreshArgs {
    /// Read every recorded object on its host first (in parallel) and show what changed
    /// outside vmthunder; `--refresh=false` plans from the recorded state alone.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub refresh: bool,
    /// Only refresh: show what changed outside vmthunder (plan), or record it in state
    /// without touching any host (apply).
    #[arg(long, conflicts_with = "refresh")]
    pub refresh_only: bool,
    /// Also compare each imported image's SHA-256 (`images[].import`) with the one recorded
    /// when it was imported, reading every such file whole; without it the refresh compares
    /// their sizes and modification times. A changed image is imported again, and everything
    /// built on it is replaced.
    #[arg(long)]
    pub checksum: bool,
}

#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// Do not ask for confirmation.
    #[arg(long)]
    pub auto_approve: bool,
    /// Operations running at once, overall. `auto`: every host may use its --per-host
    /// slots at once (hosts share nothing), bounded by this machine: at most 1024 worker
    /// threads; over ssh, the open files its connections hold; with the local transport,
    /// 4 per core (the hosts' relays and guests all run here).
    #[arg(long, value_name = "N|auto", default_value_t = Parallelism::Auto)]
    pub parallelism: Parallelism,
    /// Operations running at once on one host.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_PER_HOST, value_parser = clap::value_parser!(u32).range(1..))]
    pub per_host: u32,
    /// How long to wait for the state lock, e.g. 30s, 2m [default: 0s: fail at once].
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub lock_timeout: Duration,
    /// Print one JSON event per line (see `vmthunder schema events`) instead of text; needs
    /// --auto-approve unless applying a saved plan.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Debug, Args)]
pub struct ApplyArgs {
    /// A plan saved with `vmthunder plan --out FILE`; without it, apply plans from -f SPEC.
    #[arg(value_name = "PLANFILE")]
    pub plan: Option<PathBuf>,
    #[command(flatten)]
    pub spec: OptSpecArg,
    #[command(flatten)]
    pub state: StateArg,
    #[command(flatten)]
    pub run: RunArgs,
    /// Limit to ADDR (or every address under a prefix) and what it needs. Repeatable.
    #[arg(long, value_name = "ADDR")]
    pub target: Vec<String>,
    /// Replace ADDR (and what is built on it) even if unchanged. Repeatable.
    #[arg(long, value_name = "ADDR")]
    pub replace: Vec<String>,
    #[command(flatten)]
    pub refresh: RefreshArgs,
    /// Keep the cluster converged: refresh, plan and apply again every DURATION (e.g. 30s),
    /// until Ctrl-C. What a refresh finds broken (a dead relay, a host that does not answer,
    /// guests paused on an I/O error) is repaired without a person. Needs --auto-approve.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "auto_approve", conflicts_with_all = ["plan", "refresh_only"])]
    pub watch: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    #[command(flatten)]
    pub spec: SpecArg,
    #[command(flatten)]
    pub state: StateArg,
    #[command(flatten)]
    pub run: RunArgs,
    /// Destroy only ADDR (or every address under a prefix) and what is built on it.
    #[arg(long, value_name = "ADDR")]
    pub target: Vec<String>,
}

/// A failure that ends the command: what to print, and the exit status.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
}

impl<E: std::error::Error> From<E> for Failure {
    fn from(e: E) -> Failure {
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            message.push_str(&format!("\n  caused by: {s}"));
            source = s.source();
        }
        Failure { message }
    }
}

pub(crate) fn fail(message: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
    }
}

/// Runs the CLI; returns the process exit status.
pub fn main() -> i32 {
    let cli = Cli::parse();
    crate::apply::limits::raise_open_files();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VMTHUNDER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let color = match cli.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
        }
    };
    let json_events = match &cli.command {
        Command::Apply(a) => a.run.json,
        Command::Destroy(d) => d.run.json,
        _ => false,
    };
    match run(cli.command, color) {
        Ok(code) => code,
        Err(mut f) => {
            // The one place every failure is shown: quoted values stay readable however long.
            f.message = crate::text::cut(&f.message).into_owned();
            if json_events {
                progress::write_event(&events::Event::new(
                    f.message.clone(),
                    events::Body::Diagnostic {
                        severity: events::Severity::Error,
                        summary: f.message.clone(),
                    },
                ));
            }
            let err_color = matches!(cli.color, ColorChoice::Always)
                || (matches!(cli.color, ColorChoice::Auto)
                    && std::io::stderr().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none());
            eprintln!("{} {}", Paint { on: err_color }.error(), f.message);
            1
        }
    }
}

fn run(command: Command, color: bool) -> Result<i32, Failure> {
    match command {
        Command::Validate { spec, json } => validate(&spec.file, json),
        Command::Plan(args) => plan_command(args, color),
        Command::Apply(args) => run::apply(args, color),
        Command::Destroy(args) => run::destroy(args, color),
        Command::Show { plan, json, full } => {
            let plan = Plan::load(&plan)?;
            if json {
                emit(&plan.to_json())?;
            } else {
                emit(plan::render(&plan, render_options(color, full)).as_bytes())?;
            }
            Ok(0)
        }
        Command::Graph { spec, state } => {
            let spec = load_spec(&spec.file)?;
            let store = store_of(&state, &spec)?;
            let state = load_state(&*store, Some(&spec.cluster))?;
            let graph = Graph::build(&spec, &state)?;
            emit(graph.to_dot().as_bytes())?;
            Ok(0)
        }
        Command::Output(args) => output::run(args, color),
        Command::Ssh(args) => ssh::run(args),
        Command::Console(args) => console::run(args),
        Command::State(cmd) => state_command(cmd),
        Command::Import {
            address,
            spec,
            state,
            dry_run,
        } => {
            let spec = load_spec(&spec.file)?;
            let store = store_of(&state, &spec)?;
            surgery::import(&spec, &*store, &address, dry_run)
        }
        Command::ForceUnlock {
            id,
            force,
            spec,
            state,
        } => {
            let (store, _) = find_store(spec.file.as_deref(), &state)?;
            let holder = store.force_unlock(&id, force)?;
            println!(
                "Lock {} removed ({} by {}, pid {}). The state at `{}` is unlocked.",
                holder.id,
                holder.operation,
                holder.who,
                holder.pid,
                store.name()
            );
            Ok(0)
        }
        Command::Schema { of } => {
            emit(&match of {
                SchemaKind::Cluster => schema_bytes(),
                SchemaKind::Events => events::schema_bytes(),
                SchemaKind::Plan => plan::schema_bytes(),
                SchemaKind::State => state::schema_bytes(),
                SchemaKind::Output => output::schema_bytes(),
            })?;
            Ok(0)
        }
    }
}

/// The checked-in schema's exact bytes.
pub fn schema_bytes() -> Vec<u8> {
    let mut s = serde_json::to_vec_pretty(&Spec::json_schema()).expect("schema serializes");
    s.push(b'\n');
    s
}

pub(crate) fn render_options(color: bool, full: bool) -> RenderOptions {
    RenderOptions {
        color,
        max_listed: if full { None } else { Some(500) },
    }
}

pub(crate) fn emit(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        // A closed pipe (`| head`) is the reader's choice, not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn load_spec(path: &Path) -> Result<Spec, Failure> {
    Spec::load(path).map_err(|e| match e {
        SpecError::Invalid { path, diagnostics } => {
            let mut m = format!(
                "spec `{path}` is invalid ({} error{}):",
                diagnostics.len(),
                if diagnostics.len() == 1 { "" } else { "s" }
            );
            for d in diagnostics.iter() {
                m.push_str(&format!("\n  {d}"));
            }
            m.push_str("\nFix these and run `vmthunder validate -f ");
            m.push_str(&path);
            m.push_str("` again.");
            fail(m)
        }
        other => other.into(),
    })
}

fn validate(path: &Path, json: bool) -> Result<i32, Failure> {
    if !json {
        let spec = load_spec(path)?;
        let hosts: usize = spec.images.iter().map(|i| spec.image_hosts(i).len()).sum();
        println!(
            "Success! The spec `{}` is valid: cluster {:?}, {} hosts, {} images, {} host-image pairs.",
            path.display(),
            spec.cluster,
            spec.hosts.len(),
            spec.images.len(),
            hosts
        );
        return Ok(0);
    }
    let (valid, diagnostics, error) = match Spec::load(path) {
        Ok(_) => (true, Vec::new(), None),
        Err(SpecError::Invalid { diagnostics, .. }) => (false, diagnostics.0, None),
        Err(other) => (false, Vec::new(), Some(Failure::from(other).message)),
    };
    let doc = serde_json::json!({
        "format_version": "1.0",
        "valid": valid,
        "error_count": diagnostics.len() + usize::from(error.is_some()),
        "diagnostics": diagnostics,
        "error": error,
    });
    let mut bytes = serde_json::to_vec_pretty(&doc).expect("serializes");
    bytes.push(b'\n');
    emit(&bytes)?;
    Ok(if valid { 0 } else { 1 })
}

/// The default state file of `cluster`.
pub(crate) fn default_state_file(cluster: &str) -> PathBuf {
    PathBuf::from("state").join(format!("{cluster}.json"))
}

/// Where `spec`'s state is kept: `--state` (or VMTHUNDER_STATE), else the spec's `state`
/// section, else state/<cluster>.json.
pub(crate) fn location_of(arg: &StateArg, spec: &Spec) -> Location {
    if let Some(l) = &arg.location {
        return Location::parse(l);
    }
    match (spec.state.backend, &spec.state.url, &spec.state.path) {
        (crate::spec::StateBackend::Postgres, Some(url), _) => Location::Postgres(url.clone()),
        (_, _, Some(path)) => Location::File(PathBuf::from(path)),
        _ => Location::File(default_state_file(&spec.cluster)),
    }
}

/// The key that seals secrets: `--state-key-file` (or VMTHUNDER_STATE_KEY_FILE), else the
/// spec's `state.key_file`, else VMTHUNDER_STATE_KEY.
pub(super) fn key_of(
    arg: &StateArg,
    spec: Option<&Spec>,
) -> Result<Option<state::seal::Key>, Failure> {
    let file = arg.key_file.clone().or_else(|| {
        spec.and_then(|s| s.state.key_file.as_ref())
            .map(PathBuf::from)
    });
    Ok(state::seal::configured(file.as_deref())?)
}

/// The store that keeps `spec`'s state.
pub(crate) fn store_of(arg: &StateArg, spec: &Spec) -> Result<Box<dyn Store>, Failure> {
    let key = key_of(arg, Some(spec))?;
    Ok(state::open_store(
        &location_of(arg, spec),
        Some(&spec.cluster),
        key,
    )?)
}

/// Reads the state as every command sees it ([`Store::open`]: a journal left by a killed
/// apply replayed), telling on stderr what of the journal it left out. `cluster`: the spec's,
/// or `None` for whatever cluster the state is for. Takes no lock: readers that only show the
/// state need none; writers take it first ([`locked_state`]).
pub(crate) fn load_state(store: &dyn Store, cluster: Option<&str>) -> Result<State, Failure> {
    let loaded = store.open(cluster)?;
    if let Some(ignored) = &loaded.ignored {
        eprintln!("Warning: {ignored}");
    }
    Ok(loaded.state)
}

/// Takes the lock of the state for `operation`, then reads it ([`load_state`]).
pub(crate) fn locked_state(
    store: &dyn Store,
    cluster: Option<&str>,
    operation: &str,
    timeout: Duration,
) -> Result<(Held, State), Failure> {
    let lock = store.lock(operation, timeout)?;
    let state = load_state(store, cluster)?;
    Ok((lock, state))
}

/// The store from --state, from a spec, or the only state file in state/ (a state whose
/// first apply was killed has only its journal there yet); with the cluster when a spec
/// names it.
fn find_store(
    spec: Option<&Path>,
    arg: &StateArg,
) -> Result<(Box<dyn Store>, Option<String>), Failure> {
    if let Some(spec) = spec {
        let spec = load_spec(spec)?;
        return Ok((store_of(arg, &spec)?, Some(spec.cluster)));
    }
    let key = key_of(arg, None)?;
    let location = match &arg.location {
        Some(l) => Location::parse(l),
        None => Location::File(find_state_file()?),
    };
    Ok((state::open_store(&location, None, key)?, None))
}

/// The only state file in state/.
fn find_state_file() -> Result<PathBuf, Failure> {
    let found: std::collections::BTreeSet<PathBuf> = std::fs::read_dir("state")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .map(|p| match p.extension() {
                    // `lab.json.journal`: the journal of `lab.json`.
                    Some(x) if x == "journal" => p.with_extension(""),
                    _ => p,
                })
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default();
    let found: Vec<PathBuf> = found.into_iter().collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(fail(
            "no state found in state/: pass -f SPEC or --state PATH",
        )),
        _ => Err(fail(format!(
            "several states in state/ ({}): pass -f SPEC or --state PATH",
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn plan_command(args: PlanArgs, color: bool) -> Result<i32, Failure> {
    let mut spec = load_spec(&args.spec.file)?;
    if let Some(d) = args.degree {
        spec.tree.degree = d;
    }
    let replace = args
        .replace
        .iter()
        .map(|a| a.parse::<Addr>().map_err(fail))
        .collect::<Result<Vec<_>, _>>()?;
    let store = store_of(&args.state, &spec)?;
    let (_lock, mut state) = locked_state(&*store, Some(&spec.cluster), "plan", args.lock_timeout)?;
    // The refresh and the capacity discovery reach the hosts through one backend.
    let mut hosts = None;
    let drift = if args.refresh.refresh_only || (args.refresh.refresh && !args.destroy) {
        run::refresh_state(
            &spec,
            &mut state,
            Limits::for_spec(&spec, Parallelism::Auto, DEFAULT_PER_HOST),
            args.refresh.checksum,
            &mut hosts,
        )?
    } else {
        Refreshed::default()
    };
    if args.refresh.refresh_only {
        if args.json {
            emit(&run::drift_json(&drift))?;
        } else if drift.drift.is_empty() {
            emit(b"No changes. The hosts match the recorded state.\n")?;
        } else {
            emit(refresh::render(&drift, color).as_bytes())?;
        }
        return Ok(if args.detailed_exitcode && !drift.drift.is_empty() {
            2
        } else {
            0
        });
    }
    let mut found = run::allot(
        &mut spec,
        &state,
        args.refresh.refresh && !args.destroy,
        &mut hosts,
    )?;
    let graph = Graph::build_with(&spec, &state, &crate::health::Health::from_refresh(&drift))?;
    let opts = plan::Options {
        mode: Some(if args.destroy {
            Mode::Destroy
        } else {
            Mode::Normal
        }),
        targets: args.target,
        replace,
        prevent_destroy: spec.clones.prevent_destroy,
    };
    let mut plan = plan::diff(graph, &state, &opts, Some(spec.digest()))?;
    OpGraph::build(&plan).order(&plan)?;
    plan.spec = Some(serde_json::to_value(&spec).expect("specs serialize"));
    if let Some(out) = &args.out {
        plan.save(out)?;
    }
    let forecast = args.estimate.then(|| {
        let limits = Limits::for_spec(&spec, args.parallelism, args.per_host);
        forecast::forecast(&spec, &plan, limits)
    });
    // Checked when the plan makes anything; shown when asked, declared, or short.
    let report = (!args.destroy && (args.capacity || crate::capacity::grows(&plan)))
        .then(|| run::capacity(&spec, args.refresh.refresh, &mut hosts, &mut found))
        .transpose()?;
    let short = report.as_ref().map(|r| r.shortages()).unwrap_or_default();
    let declared = spec.hosts.iter().any(|h| h.capacity.is_some());
    let capacity = report
        .filter(|r| crate::capacity::known(r) && (args.capacity || declared || !short.is_empty()));
    if args.json {
        if drift.drift.is_empty() && forecast.is_none() && capacity.is_none() {
            emit(&plan.to_json())?;
        } else {
            let mut v: serde_json::Value =
                serde_json::from_slice(&plan.to_json()).expect("plans serialize");
            if !drift.drift.is_empty() {
                // What the refresh found, as Terraform's `resource_drift` (not part of saved
                // plans).
                v["resource_drift"] =
                    serde_json::from_slice(&run::drift_json(&drift)).expect("drift serializes");
            }
            if let Some(f) = &forecast {
                v["estimate"] = serde_json::to_value(f).expect("forecasts serialize");
            }
            if let Some(c) = &capacity {
                v["capacity"] = serde_json::to_value(c).expect("reports serialize");
            }
            emit(&serde_json::to_vec_pretty(&v).expect("plans serialize"))?;
        }
    } else {
        let mut text = refresh::render(&drift, color);
        text.push_str(&plan::render(&plan, render_options(color, args.full)));
        if let Some(c) = &capacity {
            text.push_str(&crate::capacity::render(c));
        }
        if let Some(f) = &forecast {
            text.push_str(&forecast::render(f));
        }
        if let Some(out) = &args.out {
            text.push_str(&format!(
                "\nSaved the plan to `{}`. `vmthunder show {}` renders it again.\n",
                out.display(),
                out.display()
            ));
        }
        emit(text.as_bytes())?;
    }
    if !short.is_empty() {
        return Err(fail(run::does_not_fit(&short)));
    }
    // Unknown objects count: a drift check must not pass while a host does not answer.
    Ok(
        if args.detailed_exitcode && (plan.has_changes() || !drift.drift.is_empty()) {
            2
        } else {
            0
        },
    )
}

fn state_command(cmd: StateCommand) -> Result<i32, Failure> {
    match cmd {
        StateCommand::Init { spec, state } => transfer::init(spec.file.as_deref(), &state),
        StateCommand::Push {
            state_file,
            spec,
            state,
        } => transfer::push(&state_file, spec.file.as_deref(), &state),
        StateCommand::Pull { out, spec, state } => {
            let (store, _) = find_store(spec.file.as_deref(), &state)?;
            transfer::pull(&*store, out.as_deref())
        }
        StateCommand::Rekey {
            new_key_file,
            spec,
            state,
        } => {
            let (store, cluster) = find_store(spec.file.as_deref(), &state)?;
            transfer::rekey(&*store, cluster.as_deref(), &new_key_file)
        }
        StateCommand::Rm {
            addresses,
            dry_run,
            spec,
            state,
        } => {
            let (store, cluster) = find_store(spec.file.as_deref(), &state)?;
            surgery::rm(&*store, cluster.as_deref(), &addresses, dry_run)
        }
        StateCommand::Mv {
            from,
            to,
            dry_run,
            spec,
            state,
        } => {
            let (store, cluster) = find_store(spec.file.as_deref(), &state)?;
            surgery::mv(&*store, cluster.as_deref(), &from, &to, dry_run)
        }
        StateCommand::List { spec, state } => {
            let (store, cluster) = find_store(spec.file.as_deref(), &state)?;
            let state = load_state(&*store, cluster.as_deref())?;
            let mut addrs: Vec<String> =
                state.resources.iter().map(|r| r.addr.to_string()).collect();
            addrs.sort();
            let mut text = addrs.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            emit(text.as_bytes())?;
            Ok(0)
        }
        StateCommand::Show {
            address,
            spec,
            state,
            json,
        } => {
            let addr: Addr = address.parse().map_err(fail)?;
            let (store, cluster) = find_store(spec.file.as_deref(), &state)?;
            let state = load_state(&*store, cluster.as_deref())?;
            let r = state.get(&addr).ok_or_else(|| {
                fail(format!(
                    "no resource {addr} in state `{}`; `vmthunder state list` shows what is recorded",
                    store.name()
                ))
            })?;
            let doc = serde_json::json!({
                "address": r.addr,
                "kind": r.addr.kind,
                "host": &*r.addr.host,
                "image": &*r.addr.image,
                "status": r.status,
                "desired": r.desired,
                "observed": crate::backend::redacted(&r.observed),
                "deps": r.deps,
            });
            if json {
                let mut b = serde_json::to_vec_pretty(&doc).expect("serializes");
                b.push(b'\n');
                emit(&b)?;
            } else {
                let mut text = format!("# {}\n", r.addr);
                for section in ["status", "desired", "observed", "deps"] {
                    text.push_str(&format!(
                        "{section} = {}\n",
                        serde_json::to_string_pretty(&doc[section]).expect("serializes")
                    ));
                }
                emit(text.as_bytes())?;
            }
            Ok(0)
        }
    }
}

/// Parses `0s`, `500ms`, `30s`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 500ms, 30s, 2m"))?;
    Ok(match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("invalid duration {s:?}: use e.g. 500ms, 30s, 2m")),
    })
}
