//! The spec's `state` section: where the cluster's state is kept, and the key that seals its
//! secrets. `--state` and `VMTHUNDER_STATE` override the place, `--state-key-file` the key.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::decode::Diagnostics;

/// Where the cluster's state is kept: a file (the default) or a PostgreSQL database a team
/// and its CI share.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StateSpec {
    /// `file` (default) or `postgres`.
    #[serde(default)]
    pub backend: StateBackend,
    /// file: the state file [default: state/<cluster>.json].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = super::PATH_PATTERN))]
    pub path: Option<String>,
    /// postgres: a libpq URL, e.g. `postgres://vmthunder@db.internal/vmthunder?sslmode=verify-full`.
    /// Never with a password: it comes from PGPASSWORD or a password file (~/.pgpass,
    /// PGPASSFILE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A file holding the key that seals secrets in state (the base64 of 32 random bytes,
    /// mode 0600), e.g. made with `head -c 32 /dev/urandom | base64 > state.key`. Without
    /// it, VMTHUNDER_STATE_KEY is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = super::PATH_PATTERN))]
    pub key_file: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    /// A JSON file with its journal, lock and previous version beside it.
    #[default]
    File,
    /// A PostgreSQL database (made ready once by `vmthunder state init`).
    Postgres,
}

impl StateSpec {
    pub fn is_default(&self) -> bool {
        *self == StateSpec::default()
    }
}

pub(crate) fn check(s: &StateSpec, diags: &mut Diagnostics) {
    match s.backend {
        StateBackend::File => {
            if s.url.is_some() {
                diags.push(
                    "/state/url",
                    "a URL names a database: set \"backend\": \"postgres\" too, or give the file as \"path\"",
                );
            }
        }
        StateBackend::Postgres => {
            if s.path.is_some() {
                diags.push(
                    "/state/path",
                    "the postgres backend keeps state in its database: give \"url\", not \"path\"",
                );
            }
            match &s.url {
                None => diags.push(
                    "/state",
                    "the postgres backend needs \"url\": a libpq URL such as postgres://vmthunder@db.internal/vmthunder",
                ),
                Some(u) if !crate::state::store::is_postgres_url(u) => diags.push(
                    "/state/url",
                    format!("{u:?} is not a PostgreSQL URL: it starts with postgres:// or postgresql://"),
                ),
                Some(u) if has_password(u) => diags.push(
                    "/state/url",
                    "the URL holds a password, and a spec is read by everyone who reads the repository: put it in PGPASSWORD or a password file (~/.pgpass, PGPASSFILE)",
                ),
                Some(_) => {}
            }
        }
    }
}

/// Whether a URL's user part carries a password (`user:password@`) or its query does.
fn has_password(url: &str) -> bool {
    let after = url.split_once("://").map_or(url, |(_, r)| r);
    let (authority, query) = match after.split_once('?') {
        Some((a, q)) => (a, q),
        None => (after, ""),
    };
    let authority = authority.split('/').next().unwrap_or("");
    let userinfo = authority.rsplit_once('@').map(|(u, _)| u);
    userinfo.is_some_and(|u| u.contains(':'))
        || query.split('&').any(|p| p.starts_with("password="))
}

#[cfg(test)]
mod tests {
    use super::has_password;

    #[test]
    fn passwords_are_found_in_the_user_part_and_the_query() {
        assert!(has_password("postgres://ci:pw@db/vmt"));
        assert!(has_password("postgres://db/vmt?password=pw"));
        assert!(!has_password("postgres://ci@db:5432/vmt?sslmode=require"));
        assert!(!has_password("postgresql:///vmt?host=/run/pg&port=5433"));
    }
}
