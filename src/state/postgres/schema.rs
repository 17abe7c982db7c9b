//! The tables of the state database, made once by `vmthunder state init`, and the check that
//! every other command finds them.

use postgres::Client;

use super::connect::Target;
use super::db_error;
use crate::state::StateError;

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i32 = 1;

const DDL: &str = "
CREATE SCHEMA IF NOT EXISTS vmthunder;
CREATE TABLE IF NOT EXISTS vmthunder.meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE IF NOT EXISTS vmthunder.states (
    cluster text NOT NULL,
    serial bigint NOT NULL,
    lineage text NOT NULL,
    doc bytea NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now(),
    written_by text NOT NULL,
    PRIMARY KEY (cluster, serial)
);
-- State documents are large and written whole: stored out of line, uncompressed.
ALTER TABLE vmthunder.states ALTER COLUMN doc SET STORAGE EXTERNAL;
CREATE TABLE IF NOT EXISTS vmthunder.journal (
    cluster text NOT NULL,
    seq bigint NOT NULL,
    lines bytea NOT NULL,
    PRIMARY KEY (cluster, seq)
);
CREATE TABLE IF NOT EXISTS vmthunder.locks (
    cluster text PRIMARY KEY,
    info text NOT NULL,
    backend_pid integer NOT NULL
);
";

/// Whether the URL came from `VMTHUNDER_STATE` (the environment), where a password may be.
fn password_allowed(url: &str) -> bool {
    std::env::var("VMTHUNDER_STATE").is_ok_and(|v| v == url)
}

fn connect(url: &str) -> Result<(Client, String), StateError> {
    let target = Target::parse(url, password_allowed(url)).map_err(|e| StateError::Database {
        server: e.server,
        message: e.message,
    })?;
    let client = target.connect().map_err(|e| StateError::Database {
        server: e.server,
        message: e.message,
    })?;
    Ok((client, target.shown))
}

/// Connects and checks that the database holds the schema this build knows.
pub(super) fn connect_checked(url: &str) -> Result<(Client, String), StateError> {
    let (mut client, server) = connect(url)?;
    let row = client.query_opt(
        "SELECT value FROM vmthunder.meta WHERE key = 'schema_version'",
        &[],
    );
    use postgres::error::SqlState;
    let missing = || {
        StateError::Database {
        server: server.clone(),
        message: "the database has no vmthunder schema: create it once with `vmthunder state init --state URL` (as a role that may create schemas), then `vmthunder state push` a file state into it or apply".into(),
    }
    };
    match row {
        Ok(Some(r)) => {
            let v: String = r.get(0);
            if v != SCHEMA_VERSION.to_string() {
                return Err(StateError::Database {
                    server: server.clone(),
                    message: format!("the database's vmthunder schema has version {v}; this vmthunder uses version {SCHEMA_VERSION}"),
                });
            }
        }
        Ok(None) => return Err(missing()),
        Err(e)
            if e.code() == Some(&SqlState::UNDEFINED_TABLE)
                || e.code() == Some(&SqlState::INVALID_SCHEMA_NAME) =>
        {
            return Err(missing())
        }
        Err(e) => return Err(db_error(&server, &e)),
    }
    Ok((client, server))
}

/// Creates the schema at `url` if it is not there (`vmthunder state init`). Returns the
/// server as shown and whether anything was created.
pub fn init(url: &str) -> Result<(String, bool), StateError> {
    let (mut client, server) = connect(url)?;
    let run = |client: &mut Client| -> Result<bool, postgres::Error> {
        let mut tx = client.transaction()?;
        let existed: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'vmthunder')",
                &[],
            )?
            .get(0);
        tx.batch_execute(DDL)?;
        tx.execute(
            "INSERT INTO vmthunder.meta (key, value) VALUES ('schema_version', $1) ON CONFLICT (key) DO NOTHING",
            &[&SCHEMA_VERSION.to_string()],
        )?;
        tx.commit()?;
        Ok(!existed)
    };
    let created = run(&mut client).map_err(|e| db_error(&server, &e))?;
    Ok((server, created))
}
