//! Connecting to the state database as libpq would: a URL, the `PG*` environment variables
//! for what it leaves out, the password from `PGPASSWORD` or a password file (`PGPASSFILE`,
//! `~/.pgpass`), and TLS as `sslmode` asks (`disable`, `prefer`, `require`, `verify-ca`,
//! `verify-full`, with `sslrootcert`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use postgres::config::{Host, SslMode};
use postgres::{Client, Config};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// How the server's certificate is checked (libpq's `sslmode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tls {
    Disable,
    /// TLS if the server offers it, unchecked.
    Prefer,
    /// TLS, certificate unchecked (encrypted, not authenticated), as libpq does.
    Require,
    /// TLS, certificate signed by a trusted CA, any name.
    VerifyCa,
    /// TLS, certificate signed by a trusted CA for the host connected to.
    VerifyFull,
}

/// A parsed state URL: what to connect to, and how it is shown (never with a password).
pub struct Target {
    pub config: Config,
    pub tls: Tls,
    root_cert: Option<PathBuf>,
    /// `postgres://user@host:port/db`, for messages.
    pub shown: String,
}

/// A connection failure, said for people.
#[derive(Debug)]
pub struct ConnectError {
    pub server: String,
    pub message: String,
}

impl Target {
    /// Parses `url`, filling in what it leaves out from the `PG*` environment variables.
    /// `password_allowed`: the URL may carry a password (it came from the environment).
    pub fn parse(url: &str, password_allowed: bool) -> Result<Target, ConnectError> {
        let bad = |message: String| ConnectError {
            server: strip_password(url),
            message,
        };
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut tls = None;
        let mut root_cert = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "sslmode" => tls = Some(parse_mode(&decode(v)).map_err(bad)?),
                "sslrootcert" => root_cert = Some(PathBuf::from(decode(v))),
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config: Config = rest
            .parse()
            .map_err(|e| bad(format!("not a PostgreSQL URL: {e}")))?;
        if config.get_password().is_some() && !password_allowed {
            return Err(bad(
                "the URL holds a password, which would be seen by anyone who can read this command line or the spec: put it in PGPASSWORD or a password file (~/.pgpass, or PGPASSFILE), or pass the whole URL in VMTHUNDER_STATE".into(),
            ));
        }
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if config.get_hosts().is_empty() {
            let host = env("PGHOST").unwrap_or_else(|| "/var/run/postgresql".into());
            config.host(&host);
        }
        if config.get_ports().is_empty() {
            if let Some(p) = env("PGPORT").and_then(|p| p.parse().ok()) {
                config.port(p);
            }
        }
        if config.get_user().is_none() {
            let user = env("PGUSER")
                .or_else(|| env("USER"))
                .unwrap_or_else(|| "postgres".into());
            config.user(&user);
        }
        if config.get_dbname().is_none() {
            if let Some(db) = env("PGDATABASE") {
                config.dbname(&db);
            }
        }
        if config.get_connect_timeout().is_none() {
            let secs = env("PGCONNECT_TIMEOUT")
                .and_then(|s| s.parse().ok())
                .unwrap_or(10);
            config.connect_timeout(Duration::from_secs(secs));
        }
        let tls = match tls {
            Some(t) => t,
            None => match env("PGSSLMODE") {
                Some(m) => parse_mode(&m).map_err(bad)?,
                None => Tls::Prefer,
            },
        };
        let root_cert = root_cert.or_else(|| env("PGSSLROOTCERT").map(PathBuf::from));
        let shown = show(&config);
        if config.get_password().is_none() {
            if let Some(pw) = password_for(&config) {
                config.password(pw);
            }
        }
        Ok(Target {
            config,
            tls,
            root_cert,
            shown,
        })
    }

    /// Connects, with TLS as asked.
    pub fn connect(&self) -> Result<Client, ConnectError> {
        let unix = self
            .config
            .get_hosts()
            .iter()
            .all(|h| matches!(h, Host::Unix(_)));
        let mut config = self.config.clone();
        let result = match (self.tls, unix) {
            (Tls::Disable, _) | (Tls::Prefer, true) => {
                config.ssl_mode(SslMode::Disable);
                config.connect(postgres::NoTls)
            }
            (_, true) => {
                return Err(self.error(
                    "sslmode asks for TLS, which PostgreSQL does not offer over a unix socket: connect over TCP (host=NAME) or drop sslmode".into(),
                ))
            }
            (mode, false) => {
                config.ssl_mode(if mode == Tls::Prefer {
                    SslMode::Prefer
                } else {
                    SslMode::Require
                });
                let tls = self.rustls().map_err(|m| self.error(m))?;
                config.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
            }
        };
        result.map_err(|e| self.error(explain(&e, &self.config)))
    }

    fn error(&self, message: String) -> ConnectError {
        ConnectError {
            server: self.shown.clone(),
            message,
        }
    }

    /// The TLS client configuration `sslmode` asks for.
    fn rustls(&self) -> Result<rustls::ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?;
        let verifier: Arc<dyn ServerCertVerifier> = match self.tls {
            Tls::Prefer | Tls::Require => Arc::new(Unchecked(provider)),
            Tls::VerifyCa | Tls::VerifyFull => {
                let roots = self.roots()?;
                let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| format!("TLS setup: {e}"))?;
                if self.tls == Tls::VerifyCa {
                    Arc::new(AnyName(webpki))
                } else {
                    webpki
                }
            }
            Tls::Disable => unreachable!("no TLS"),
        };
        Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth())
    }

    /// The CAs a verifying `sslmode` trusts: `sslrootcert`, `~/.postgresql/root.crt`, or
    /// the system's bundle.
    fn roots(&self) -> Result<rustls::RootCertStore, String> {
        let home = std::env::var_os("HOME").map(|h| Path::new(&h).join(".postgresql/root.crt"));
        let file = match (&self.root_cert, home) {
            (Some(f), _) => f.clone(),
            (None, Some(h)) if h.exists() => h,
            _ => PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
        };
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(&file)
            .map_err(|e| format!("cannot read sslrootcert `{}`: {e}", file.display()))?;
        for c in certs {
            let c = c.map_err(|e| format!("sslrootcert `{}`: {e}", file.display()))?;
            roots
                .add(c)
                .map_err(|e| format!("sslrootcert `{}`: {e}", file.display()))?;
        }
        if roots.is_empty() {
            return Err(format!(
                "sslrootcert `{}` holds no certificate",
                file.display()
            ));
        }
        Ok(roots)
    }
}

fn parse_mode(m: &str) -> Result<Tls, String> {
    Ok(match m {
        "disable" => Tls::Disable,
        "allow" | "prefer" => Tls::Prefer,
        "require" => Tls::Require,
        "verify-ca" => Tls::VerifyCa,
        "verify-full" => Tls::VerifyFull,
        other => {
            return Err(format!(
                "sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full"
            ))
        }
    })
}

/// Percent-decoding of a URL query value.
fn decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|&c| hex(c)),
            b.get(i + 2).and_then(|&c| hex(c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `url` with any password replaced, for messages about a URL that did not parse.
fn strip_password(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.split('?').next().unwrap_or(url).to_string(),
    }
}

/// `postgres://user@host:port/db`.
fn show(c: &Config) -> String {
    let host = match c.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => String::new(),
    };
    let port = c.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        c.get_user().unwrap_or(""),
        c.get_dbname().or(c.get_user()).unwrap_or("")
    )
}

/// The password for `c`: `PGPASSWORD`, else the first matching line of the password file
/// (`PGPASSFILE` or `~/.pgpass`; like libpq, ignored unless only its owner can read it).
fn password_for(c: &Config) -> Option<String> {
    if let Some(pw) = std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()) {
        return Some(pw);
    }
    let file = std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pgpass")))?;
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(&file).ok()?;
    if !meta.is_file() || meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "password file `{}` is ignored: it must be a file only its owner can read (chmod 600)",
            file.display()
        );
        return None;
    }
    let text = std::fs::read_to_string(&file).ok()?;
    let host = match c.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        // libpq matches a socket directory as `localhost`.
        _ => "localhost".into(),
    };
    let port = c.get_ports().first().copied().unwrap_or(5432).to_string();
    let user = c.get_user().unwrap_or("");
    let db = c.get_dbname().unwrap_or(user);
    pgpass_lookup(&text, &host, &port, db, user)
}

/// The password of the first line of a libpq password file matching these fields (`*`
/// matches anything; `\:` and `\\` are escapes).
pub fn pgpass_lookup(text: &str, host: &str, port: &str, db: &str, user: &str) -> Option<String> {
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = Vec::with_capacity(5);
        let mut cur = String::new();
        let mut chars = line.chars();
        while let Some(ch) = chars.next() {
            match ch {
                '\\' => cur.extend(chars.next()),
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        fields.push(cur);
        if fields.len() != 5 {
            continue;
        }
        let matches = |f: &str, v: &str| f == "*" || f == v;
        if matches(&fields[0], host)
            && matches(&fields[1], port)
            && matches(&fields[2], db)
            && matches(&fields[3], user)
        {
            return fields.pop();
        }
    }
    None
}

/// A connection error as people need it: what failed, and what to do.
fn explain(e: &postgres::Error, c: &Config) -> String {
    use postgres::error::SqlState;
    let user = c.get_user().unwrap_or("");
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        let hint = if *code == SqlState::INVALID_PASSWORD {
            format!("the password of user {user:?} was refused: check PGPASSWORD or the password file (~/.pgpass, PGPASSFILE)")
        } else if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION {
            format!("user {user:?} may not connect (pg_hba.conf, or no such role): ask the database's administrator")
        } else if *code == SqlState::INVALID_CATALOG_NAME {
            "the database does not exist: create it (createdb), then `vmthunder state init`"
                .to_string()
        } else {
            String::new()
        };
        return if hint.is_empty() {
            db.message().to_string()
        } else {
            format!("{}: {hint}", db.message())
        };
    }
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    if message.contains("password missing") {
        return format!("the server asks for a password of user {user:?}: set PGPASSWORD or add it to a password file (~/.pgpass, PGPASSFILE)");
    }
    if message.contains("Connection refused")
        || message.contains("No such file")
        || message.contains("timed out")
        || message.contains("error connecting")
    {
        return format!("{message}: is the server running and accepting connections there?");
    }
    message
}

/// Accepts any certificate: `sslmode=require` encrypts without authenticating the server,
/// as libpq does. Handshake signatures are still checked.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain must lead to a trusted CA; the name is not checked.
#[derive(Debug)]
struct AnyName(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_files_match_like_libpq() {
        let text =
            "# comment\nother:5432:*:ci:nope\nlocalhost:*:vmt:ci:s\\:ecret\n*:*:*:*:fallback\n";
        assert_eq!(
            pgpass_lookup(text, "localhost", "5433", "vmt", "ci").as_deref(),
            Some("s:ecret")
        );
        assert_eq!(
            pgpass_lookup(text, "db1", "5432", "x", "y").as_deref(),
            Some("fallback")
        );
        assert_eq!(pgpass_lookup("a:b:c\n", "a", "b", "c", "d"), None);
    }

    #[test]
    fn urls_with_passwords_are_refused_unless_from_the_environment() {
        let err = Target::parse("postgres://ci:hunter2@db.example:5432/vmt", false)
            .err()
            .unwrap();
        assert!(err.message.contains("PGPASSWORD"), "{}", err.message);
        assert!(!err.server.contains("hunter2"), "{}", err.server);
        let ok = Target::parse(
            "postgres://ci:hunter2@db.example:5432/vmt?sslmode=verify-full&sslrootcert=%2Fx%2Fca.pem",
            true,
        )
        .unwrap();
        assert_eq!(ok.tls, Tls::VerifyFull);
        assert_eq!(ok.root_cert.as_deref(), Some(Path::new("/x/ca.pem")));
        assert_eq!(ok.shown, "postgres://ci@db.example:5432/vmt");
        let err = Target::parse("postgres://db/vmt?sslmode=sometimes", false)
            .err()
            .unwrap();
        assert!(err.message.contains("verify-full"), "{}", err.message);
    }
}
