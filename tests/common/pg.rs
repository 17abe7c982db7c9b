//! A private, real PostgreSQL 15 server for integration tests: its own data directory, unix
//! socket and TCP port on 127.0.0.1 (TLS on, with a fresh CA), all in a temp dir that is
//! removed on drop, also when the test panics. Several may run side by side.
//!
//! Authentication: `trust` for the superuser `postgres` over the unix socket; `scram-sha-256`
//! for everyone else, and for everyone over TCP (so a wrong password fails).
//!
//! The server runs as the `postgres` system user (PostgreSQL refuses root) and is the test
//! process's own child, so the test reaps it. `fsync` and the other durability settings keep
//! their defaults; only memory (`shared_buffers`) is set low.
//!
//! Should the test process die without unwinding (SIGKILL, `timeout`, an abort, a `Pg` kept in
//! a `static`, which is never dropped), a watchdog (`sh`, waiting for EOF on a pipe only this
//! process holds) stops the server and removes the temp dir.
//!
//! Not every user needs every helper: include it with `dead_code` allowed (`tests/common/mod.rs`
//! allows it for all its modules; `#[path = "../tests/common/pg.rs"] #[allow(dead_code)] mod
//! pg;` elsewhere). No `#![allow]` here, which would duplicate such an outer one.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Where Debian's `postgresql-15` puts the server programs.
pub const BIN: &str = "/usr/lib/postgresql/15/bin";
/// The client (Debian's wrapper picks the newest installed libpq client).
pub const PSQL: &str = "/usr/bin/psql";
/// The superuser, and the system user the server runs as.
pub const SUPERUSER: &str = "postgres";

/// How long `start` waits for the server to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stop` waits for the postmaster to exit after `pg_ctl stop -m immediate`.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Start attempts on fresh ports when the chosen port was taken meanwhile.
const PORT_ATTEMPTS: usize = 5;
/// The watchdog's script; `$1` is the temp dir. It only signals the pid in `postmaster.pid`
/// while that process's command line names this data directory; it waits for that (not for
/// `kill -0`, which a zombie passes: the orphaned postmaster is init's to reap).
const WATCHDOG: &str = r#"
trap '' HUP INT TERM
dir=$1
while read -r _; do :; done
# Whether process $1 runs with this data directory (a zombie's command line is empty).
ours() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$dir/data"; }
pid=$(head -n 1 "$dir/data/postmaster.pid" 2>/dev/null)
case $pid in
*[!0-9]* | '') ;;
*)
    if ours "$pid"; then
        kill -QUIT "$pid"
        i=0
        while ours "$pid" && [ "$i" -lt 500 ]; do
            sleep 0.02
            i=$((i + 1))
        done
        ours "$pid" && kill -KILL "$pid"
    fi
    ;;
esac
rm -rf -- "$dir"
"#;
/// Longest unix socket path the kernel accepts (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// How to set up a server; `PgOptions::default()` is what `Pg::start` uses.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// TLS on the server (`ssl = on`, a server certificate signed by a fresh CA). Default on.
    pub ssl: bool,
    /// Extra `postgresql.conf` lines, after the harness's own (later lines win),
    /// e.g. `"max_connections = 20"`.
    pub settings: Vec<String>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            ssl: true,
            settings: Vec::new(),
        }
    }
}

/// A running private PostgreSQL server; stopped and deleted on drop.
pub struct Pg {
    /// Everything: `data/`, `sock/`, `tls/`, `server.log`. Dropped after `Drop::drop` stopped
    /// the server.
    dir: tempfile::TempDir,
    /// `dir/data`, `PGDATA`.
    data: PathBuf,
    /// `dir/sock`, where the unix socket is.
    socket: PathBuf,
    port: u16,
    owner: Owner,
    /// The postmaster (our child: it is `postgres` itself, run as the `postgres` user).
    server: Mutex<Option<Child>>,
    /// Cleans up when this process dies without dropping `Pg` (its stdin is the pipe).
    watchdog: Option<Child>,
}

/// The uid and gid of the `postgres` system user.
#[derive(Clone, Copy, Debug)]
struct Owner {
    uid: u32,
    gid: u32,
}

/// Whether PostgreSQL 15's server programs are installed (`scripts/setup.sh` installs them).
pub fn available() -> bool {
    Path::new(BIN).join("initdb").is_file() && Path::new(PSQL).is_file()
}

impl Pg {
    /// A fresh server with the default options. Panics, with the reason and the server log,
    /// when it cannot start within 30 s.
    pub fn start() -> Pg {
        Pg::start_with(PgOptions::default())
    }

    /// A fresh server set up as `opts` says.
    pub fn start_with(opts: PgOptions) -> Pg {
        assert!(
            available(),
            "PostgreSQL 15 is not installed ({BIN}/initdb or {PSQL} is missing): \
             run `bash scripts/setup.sh`"
        );
        let owner = postgres_user();
        let dir = tempfile::Builder::new()
            .prefix("vmt-pg-")
            .tempdir()
            .expect("create a temp dir for PostgreSQL");
        // From here on a panic drops `pg`, which stops whatever was started.
        let mut pg = Pg {
            data: dir.path().join("data"),
            socket: dir.path().join("sock"),
            dir,
            port: 0,
            owner,
            server: Mutex::new(None),
            watchdog: None,
        };
        pg.watchdog = Some(pg.spawn_watchdog());
        pg.check_socket_path_fits();
        pg.make_dirs();
        pg.initdb();
        if opts.ssl {
            pg.make_certificates();
        }
        pg.write_hba();
        pg.include_harness_conf();
        pg.launch_on_free_port(&opts);
        pg
    }

    /// The temp dir holding everything (`data/`, `sock/`, `tls/`, `server.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The directory holding the server's unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        &self.socket
    }

    /// The TCP port on 127.0.0.1 (also part of the unix socket's name).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA certificate (PEM) that signed the server's certificate, which is valid for
    /// `localhost` and `127.0.0.1`. Only with `ssl` on.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir().join("tls/ca.crt")
    }

    /// The server's log (its stderr), appended to across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("server.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A URL for the superuser over the unix socket, which both libpq and tokio-postgres 0.7
    /// parse: `postgresql:///DB?host=/tmp/vmt-pg-XXXX/sock&port=PORT&user=postgres`.
    pub fn url_socket(&self, db: &str) -> String {
        format!(
            "postgresql:///{}?host={}&port={}&user={SUPERUSER}",
            encode(db, false),
            encode(&self.socket_dir().display().to_string(), true),
            self.port
        )
    }

    /// A URL for `user` over TCP, without a password: `postgresql://USER@127.0.0.1:PORT/DB`.
    pub fn url_tcp(&self, user: &str, db: &str) -> String {
        format!(
            "postgresql://{}@127.0.0.1:{}/{}",
            encode(user, false),
            self.port,
            encode(db, false)
        )
    }

    /// Runs `sql` (one or more statements) as the superuser over the unix socket with
    /// `psql -X -A -t -q -v ON_ERROR_STOP=1`; returns its trimmed stdout (rows one a line,
    /// columns separated by `|`). Panics with psql's stderr when it fails.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let conninfo = format!(
            "host={} port={} user={SUPERUSER} dbname={}",
            conninfo_value(&self.socket_dir().display().to_string()),
            self.port,
            conninfo_value(db)
        );
        match psql_run(&conninfo, None, sql) {
            Ok(out) => out,
            Err(e) => panic!("psql on database {db:?} failed: {e}\nSQL: {sql}"),
        }
    }

    /// Runs `sql` with psql on any libpq connection string or URL (`password` goes in
    /// `PGPASSWORD`): `Ok(trimmed stdout)`, or `Err(stderr)` when psql fails (a refused
    /// connection, a wrong password, an SQL error).
    pub fn psql_conn(
        &self,
        conninfo: &str,
        password: Option<&str>,
        sql: &str,
    ) -> Result<String, String> {
        psql_run(conninfo, password, sql)
    }

    /// Creates database `name` (owned by the superuser).
    pub fn create_db(&self, name: &str) {
        self.psql("postgres", &format!("CREATE DATABASE {}", ident(name)));
    }

    /// Creates a role `name` that may log in with `password` (scram-sha-256); it owns nothing.
    pub fn create_user(&self, name: &str, password: &str) {
        self.psql(
            "postgres",
            &format!(
                "CREATE ROLE {} LOGIN PASSWORD {}",
                ident(name),
                literal(password)
            ),
        );
    }

    /// Makes `user` the owner of database `db` (so it may create tables in its `public`).
    pub fn grant_db(&self, db: &str, user: &str) {
        self.psql(
            "postgres",
            &format!("ALTER DATABASE {} OWNER TO {}", ident(db), ident(user)),
        );
    }

    /// The postmaster's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        let mut server = self.server();
        let child = server.as_mut()?;
        match child.try_wait() {
            Ok(None) => Some(child.id()),
            _ => None,
        }
    }

    /// The postmaster and its children (backends, checkpointer, ...), while it runs.
    pub fn processes(&self) -> Vec<u32> {
        match self.pid() {
            Some(pid) => {
                let mut all = vec![pid];
                all.extend(children_of(pid));
                all
            }
            None => Vec::new(),
        }
    }

    /// Whether the server is running (it may have been stopped, or have crashed).
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Stops the server at once, like a crash (`pg_ctl stop -m immediate`; SIGKILL if it has
    /// not exited within 10 s): no checkpoint, committed data stay (WAL, `fsync = on`) and the
    /// next start runs crash recovery. Idempotent; the files stay until drop. Afterwards
    /// connections are refused (the socket file is gone, nothing listens on the port).
    pub fn stop(&self) {
        if let Err(e) = self.shutdown() {
            panic!(
                "stopping PostgreSQL: {e}\n--- server log ---\n{}",
                self.log()
            );
        }
    }

    /// Stops the server (as `stop`) if it runs and starts it again on the same port and data,
    /// so URLs handed out stay valid. Panics if it cannot start (e.g. the port was taken).
    pub fn restart(&self) {
        self.stop();
        if let Err(e) = self.launch() {
            panic!("restarting PostgreSQL: {e}");
        }
    }

    // --- setup -----------------------------------------------------------------------------

    /// The watchdog: `sh` reading its stdin, a pipe whose write end only this process holds
    /// (std opens pipes close-on-exec, so no other child inherits it). When this process dies
    /// the pipe reaches EOF and the watchdog stops the postmaster and removes the temp dir; it
    /// ignores SIGINT, SIGTERM and SIGHUP, which a Ctrl-C or a `timeout` sends to the whole
    /// process group. A normal drop kills it after stopping the server.
    fn spawn_watchdog(&self) -> Child {
        Command::new("sh")
            .args(["-c", WATCHDOG, "pg-watchdog"])
            .arg(self.dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the PostgreSQL watchdog (sh)")
    }

    /// Panics early, with a hint, when the socket path would be too long for the kernel.
    fn check_socket_path_fits(&self) {
        let longest = self.socket_dir().join(".s.PGSQL.65535");
        let len = longest.as_os_str().len();
        assert!(
            len <= MAX_SOCKET_PATH,
            "the PostgreSQL socket path {} is {len} bytes, more than the kernel's \
             {MAX_SOCKET_PATH}: set TMPDIR to a shorter directory",
            longest.display()
        );
    }

    /// Creates `sock/` and `tls/`, and hands the temp dir and `sock/` to the postgres user.
    fn make_dirs(&self) {
        for sub in ["sock", "tls"] {
            fs::create_dir(self.dir().join(sub)).expect("create a PostgreSQL subdirectory");
        }
        self.give_to_postgres(self.dir(), 0o700);
        self.give_to_postgres(self.socket_dir(), 0o700);
    }

    /// `chown postgres:postgres` and `chmod mode`.
    fn give_to_postgres(&self, path: &Path, mode: u32) {
        chown(path, Some(self.owner.uid), Some(self.owner.gid)).unwrap_or_else(|e| {
            panic!(
                "chown {} to postgres: {e} (tests run as root)",
                path.display()
            )
        });
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {} : {e}", path.display()));
    }

    /// `initdb` as the postgres user: UTF8, C locale, superuser `postgres`.
    fn initdb(&self) {
        let out = self
            .as_postgres(&Path::new(BIN).join("initdb"))
            .arg("-D")
            .arg(self.data_dir())
            .args([
                "-U",
                SUPERUSER,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-instructions",
            ])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A self-signed CA (`tls/ca.crt`) and a server certificate it signs for `localhost` and
    /// `127.0.0.1` (`tls/server.crt`, `tls/server.key` mode 0600 owned by postgres). EC P-256
    /// keys: instant to make, and rustls and libpq both take them.
    fn make_certificates(&self) {
        let tls = self.dir().join("tls");
        let key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256";
        openssl(
            &tls,
            &format!(
                "req -x509 -new {key} -days 3650 -keyout ca.key -out ca.crt \
                 -subj /CN=vmthunder-test-CA -addext basicConstraints=critical,CA:TRUE \
                 -addext keyUsage=critical,keyCertSign,cRLSign"
            ),
        );
        openssl(
            &tls,
            &format!("req -new {key} -keyout server.key -out server.csr -subj /CN=localhost"),
        );
        fs::write(
            tls.join("server.ext"),
            "basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature\n\
             extendedKeyUsage = serverAuth\n\
             subjectAltName = DNS:localhost, IP:127.0.0.1\n",
        )
        .expect("write server.ext");
        openssl(
            &tls,
            "x509 -req -sha256 -days 3650 -in server.csr -CA ca.crt -CAkey ca.key \
             -CAcreateserial -extfile server.ext -out server.crt",
        );
        self.give_to_postgres(&tls.join("server.key"), 0o600);
        self.give_to_postgres(&tls.join("server.crt"), 0o644);
        fs::set_permissions(&tls, fs::Permissions::from_mode(0o755)).expect("chmod tls/");
    }

    /// `pg_hba.conf`: trust for the superuser on the socket, scram-sha-256 for the rest.
    fn write_hba(&self) {
        fs::write(
            self.data_dir().join("pg_hba.conf"),
            "# Written by the vmthunder test harness (tests/common/pg.rs).\n\
             # TYPE  DATABASE  USER      ADDRESS       METHOD\n\
             local   all       postgres                trust\n\
             local   all       all                     scram-sha-256\n\
             host    all       all       127.0.0.1/32  scram-sha-256\n",
        )
        .expect("write pg_hba.conf");
    }

    /// Makes `postgresql.conf` read `harness.conf`, which `write_conf` (re)writes.
    fn include_harness_conf(&self) {
        let conf = self.data_dir().join("postgresql.conf");
        let mut text = fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str("\n# The vmthunder test harness's settings (tests/common/pg.rs).\n");
        text.push_str("include 'harness.conf'\n");
        fs::write(&conf, text).expect("write postgresql.conf");
    }

    /// `harness.conf`: where to listen, TLS, little memory, then `opts.settings`.
    fn write_conf(&self, opts: &PgOptions) {
        let mut lines = vec![
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("port = {}", self.port),
            format!(
                "unix_socket_directories = {}",
                literal(&self.socket_dir().display().to_string())
            ),
            "max_connections = 50".into(),
            "shared_buffers = 16MB".into(),
            "logging_collector = off".into(),
            "log_connections = on".into(),
        ];
        if opts.ssl {
            let tls = self.dir().join("tls");
            lines.push("ssl = on".into());
            lines.push(format!(
                "ssl_cert_file = {}",
                literal(&tls.join("server.crt").display().to_string())
            ));
            lines.push(format!(
                "ssl_key_file = {}",
                literal(&tls.join("server.key").display().to_string())
            ));
        }
        lines.extend(opts.settings.iter().cloned());
        lines.push(String::new());
        fs::write(self.data_dir().join("harness.conf"), lines.join("\n"))
            .expect("write harness.conf");
    }

    /// Starts the server on a port nobody listens on; when another process took the port
    /// between our probe and the server's bind, tries another.
    fn launch_on_free_port(&mut self, opts: &PgOptions) {
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            self.port = free_port();
            self.write_conf(opts);
            match self.launch() {
                Ok(()) => return,
                Err(e)
                    if e.contains("could not bind") || e.contains("could not create any TCP") =>
                {
                    last = e;
                }
                Err(e) => panic!("starting PostgreSQL: {e}"),
            }
        }
        panic!("starting PostgreSQL: no free port in {PORT_ATTEMPTS} attempts; last: {last}");
    }

    /// Runs `postgres -D data` as the postgres user and waits (30 s at most) until it accepts
    /// connections; on failure it is killed and the error carries the server log.
    fn launch(&self) -> Result<(), String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("open {}: {e}", self.log_path().display()))?;
        let child = self
            .as_postgres(&Path::new(BIN).join("postgres"))
            .arg("-D")
            .arg(self.data_dir())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {BIN}/postgres: {e}"))?;
        let pid = child.id();
        *self.server() = Some(child);
        let begun = Instant::now();
        loop {
            let exited = self
                .server()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.server().take();
                return Err(format!(
                    "postgres exited ({status}) while starting\n--- server log ---\n{}",
                    self.log()
                ));
            }
            if self.ready(pid) {
                return Ok(());
            }
            if begun.elapsed() > START_TIMEOUT {
                let _ = self.shutdown();
                return Err(format!(
                    "not ready after {START_TIMEOUT:?}\n--- server log ---\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether postmaster `pid` says it accepts connections (`postmaster.pid` is its own, not
    /// one left by a killed predecessor, and its line 8 is `ready`: what `pg_ctl -w` waits for)
    /// and its socket exists.
    fn ready(&self, pid: u32) -> bool {
        let pidfile =
            fs::read_to_string(self.data_dir().join("postmaster.pid")).unwrap_or_default();
        let lines: Vec<&str> = pidfile.lines().map(str::trim).collect();
        lines.first() == Some(&pid.to_string().as_str())
            && lines.get(7) == Some(&"ready")
            && self
                .socket_dir()
                .join(format!(".s.PGSQL.{}", self.port))
                .exists()
    }

    // --- teardown --------------------------------------------------------------------------

    /// Stops the postmaster if it runs: `pg_ctl stop -m immediate -W` (SIGQUIT: the postmaster
    /// takes its children down with it; `-W` as we wait for our child ourselves, every 5 ms
    /// where pg_ctl polls every 100 ms), SIGKILL for it and its children if it has not exited
    /// within 10 s. Never panics (it runs in `drop`, maybe while unwinding).
    fn shutdown(&self) -> Result<(), String> {
        let mut server = self.server();
        let Some(mut child) = server.take() else {
            return Ok(());
        };
        if let Ok(Some(_)) = child.try_wait() {
            return Ok(());
        }
        let pid = child.id();
        let children = children_of(pid);
        let _ = self
            .as_postgres(&Path::new(BIN).join("pg_ctl"))
            .arg("-D")
            .arg(self.data_dir())
            .args(["stop", "-m", "immediate", "-W"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let begun = Instant::now();
        while begun.elapsed() < STOP_TIMEOUT {
            if let Ok(Some(_)) = child.try_wait() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
        for c in children {
            kill9_if_postgres(c);
        }
        Err(format!(
            "postmaster {pid} ignored `pg_ctl stop -m immediate` for {STOP_TIMEOUT:?}; killed it"
        ))
    }

    /// The postmaster slot, also after a panic poisoned it.
    fn server(&self) -> MutexGuard<'_, Option<Child>> {
        self.server.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `program` as the postgres user, in the temp dir, with a clean environment.
    fn as_postgres(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.uid(self.owner.uid)
            .gid(self.owner.gid)
            .current_dir(self.dir())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LC_ALL", "C");
        cmd
    }
}

impl Drop for Pg {
    /// Stops the server; the temp dir goes right after (the `dir` field's own drop).
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("pg harness: {e}");
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

// --- helpers -----------------------------------------------------------------------------------

/// The `postgres` system user from /etc/passwd.
fn postgres_user() -> Owner {
    let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == SUPERUSER)
        .map(|f| Owner {
            uid: f[2].parse().expect("postgres uid"),
            gid: f[3].parse().expect("postgres gid"),
        })
        .expect("no `postgres` user in /etc/passwd: run `bash scripts/setup.sh`")
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the kernel's pick for port 0).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local address").port()
}

/// Runs the `openssl` CLI in `dir` with `args` (split at whitespace); panics with its output
/// on failure.
fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .output()
        .expect("run openssl (is it installed?)");
    assert!(
        out.status.success(),
        "openssl {} failed:\n{}",
        args.split_whitespace().collect::<Vec<_>>().join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `psql -X -A -t -q -v ON_ERROR_STOP=1 -d CONNINFO` with `sql` on stdin.
fn psql_run(conninfo: &str, password: Option<&str>, sql: &str) -> Result<String, String> {
    use std::io::Write;
    let mut cmd = Command::new(PSQL);
    // None of the caller's libpq settings (PGHOST, PGSSLMODE, ...): only `conninfo` counts.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.args([
        "-X",
        "-A",
        "-t",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        conninfo,
    ])
    .env("LC_ALL", "C")
    .env("PGCONNECT_TIMEOUT", "10")
    .env("PGPASSFILE", "/nonexistent/pgpass")
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    let mut child = cmd.spawn().map_err(|e| format!("spawn {PSQL}: {e}"))?;
    let mut stdin = child.stdin.take().expect("psql stdin");
    // A failed write (psql quit early) shows in its exit status and stderr.
    let _ = stdin.write_all(sql.as_bytes());
    drop(stdin);
    let out = child
        .wait_with_output()
        .map_err(|e| format!("wait for psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "psql ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Pids whose parent is `pid` (from /proc/*/stat).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// SIGKILL for `pid` if it still is a PostgreSQL process (its command line says `postgres`).
fn kill9_if_postgres(pid: u32) {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if String::from_utf8_lossy(&cmdline).starts_with("postgres") {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
}

/// An SQL identifier, quoted.
fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// An SQL string literal (also a `postgresql.conf` string value).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A libpq conninfo value, quoted.
fn conninfo_value(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Percent-encodes all but unreserved URL characters (and `/` when `keep_slash`).
fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
