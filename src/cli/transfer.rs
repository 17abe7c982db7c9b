//! `state init`, `state push`, `state pull` and `state rekey`: make a database ready, move a
//! state between stores, and seal its secrets with a new key.

use std::path::Path;
use std::time::Duration;

use super::{emit, fail, key_of, load_spec, location_of, locked_state, Failure, StateArg};
use crate::state::{self, seal, Codec, FileStore, Location, Replayed, Store};

/// `state init`: the schema in the database `--state` or the spec names.
pub(super) fn init(spec: Option<&Path>, arg: &StateArg) -> Result<i32, Failure> {
    let location = match (spec, &arg.location) {
        (_, Some(l)) => Location::parse(l),
        (Some(s), None) => location_of(arg, &load_spec(s)?),
        (None, None) => {
            return Err(fail(
                "state init needs the database: pass --state postgres://USER@HOST/DB (or -f SPEC with a postgres `state`)",
            ))
        }
    };
    let Location::Postgres(url) = location else {
        return Err(fail(
            "state init makes a PostgreSQL database ready; a file state needs nothing (pass --state postgres://USER@HOST/DB)",
        ));
    };
    let (server, created) = state::postgres::init(&url)?;
    if created {
        println!("Created the vmthunder schema in {server}. Push a file state into it with `vmthunder state push`, or apply.");
    } else {
        println!("{server} already has the vmthunder schema; nothing was changed.");
    }
    Ok(0)
}

/// `state push FILE`: the file's state into the spec's store, at its own serial.
pub(super) fn push(file: &Path, spec: Option<&Path>, arg: &StateArg) -> Result<i32, Failure> {
    let spec = spec.map(load_spec).transpose()?;
    let key = key_of(arg, spec.as_ref())?;
    let location = match (&spec, &arg.location) {
        (Some(s), _) => location_of(arg, s),
        (None, Some(l)) => Location::parse(l),
        (None, None) => {
            return Err(fail(
                "state push needs the store to push into: pass --state postgres://USER@HOST/DB (or -f SPEC whose `state` names it)",
            ))
        }
    };
    if location == Location::File(file.to_path_buf()) {
        return Err(fail(format!(
            "`{}` is already where the state is kept: pass the store to push into with --state (or a spec whose `state` names it)",
            file.display()
        )));
    }
    if !file.exists() {
        return Err(fail(format!("no state file `{}`", file.display())));
    }
    let source = FileStore::new(file.to_path_buf(), Codec::new(key.clone(), false));
    let loaded = source.open(spec.as_ref().map(|s| s.cluster.as_str()))?;
    if !matches!(loaded.journal, Replayed::None | Replayed::Stale) {
        return Err(fail(format!(
            "`{}` has the journal of an apply that did not finish beside it: run `vmthunder plan --state {}` (or any command that writes it) first, so the file alone is the state",
            file.display(),
            file.display()
        )));
    }
    let mut pushed = loaded.state;
    let store = state::open_store(&location, Some(&pushed.cluster), key)?;
    let (_lock, there) =
        locked_state(&*store, Some(&pushed.cluster), "state push", Duration::ZERO)?;
    let unfinished = store.open(Some(&pushed.cluster))?.journal;
    if matches!(unfinished, Replayed::Applied(_) | Replayed::Headless) {
        return Err(fail(format!(
            "`{}` holds the journal of an apply that did not finish (operations done on hosts that only it records): run `vmthunder plan` against it first, then push again",
            store.name()
        )));
    }
    match (&there.lineage, &pushed.lineage) {
        (Some(theirs), Some(ours)) if theirs != ours => {
            return Err(fail(format!(
                "refusing to push: `{}` holds another state of cluster {:?} (lineage {theirs}, serial {}), not an earlier version of `{}` (lineage {ours}, serial {}); nothing was changed",
                store.name(),
                there.cluster,
                there.serial,
                file.display(),
                pushed.serial
            )));
        }
        (Some(_), Some(_)) if there.serial > pushed.serial => {
            return Err(fail(format!(
                "refusing to push: `{}` holds a newer version of this state (serial {}) than `{}` (serial {}): pull it instead; nothing was changed",
                store.name(),
                there.serial,
                file.display(),
                pushed.serial
            )));
        }
        (Some(_), Some(_)) if there.serial == pushed.serial => {
            if there.resources == pushed.resources && there.placement == pushed.placement {
                println!(
                    "`{}` already holds serial {} of this state; nothing was changed.",
                    store.name(),
                    pushed.serial
                );
                return Ok(0);
            }
            return Err(fail(format!(
                "refusing to push: `{}` and `{}` both hold serial {} of this state, with different records (they diverged); nothing was changed",
                store.name(),
                file.display(),
                pushed.serial
            )));
        }
        _ => {}
    }
    if pushed.lineage.is_none() {
        return Err(fail(format!(
            "`{}` was never written: nothing to push",
            file.display()
        )));
    }
    store.put(&mut pushed)?;
    println!(
        "Pushed `{}` (cluster {:?}, serial {}, {} resources) into `{}`. The file was left as it was: once every user points at the new store (--state, VMTHUNDER_STATE or the spec's `state`), move it out of the way.",
        file.display(),
        pushed.cluster,
        pushed.serial,
        pushed.len(),
        store.name()
    );
    Ok(0)
}

/// `state pull`: the stored state as a state file.
pub(super) fn pull(store: &dyn Store, out: Option<&Path>) -> Result<i32, Failure> {
    let loaded = store.open(None)?;
    let mut s = loaded.state;
    if s.lineage.is_none() {
        return Err(fail(format!(
            "`{}` holds no state yet: nothing to pull",
            store.name()
        )));
    }
    let file_codec = Codec::new(store.codec().key().cloned(), false);
    let doc = s.to_json_with(&file_codec).map_err(fail)?;
    match out {
        Some(path) => {
            state::write_atomic(path, &doc)
                .map_err(|e| fail(format!("cannot write `{}`: {e}", path.display())))?;
            eprintln!(
                "Wrote `{}` (cluster {:?}, serial {}, {} resources) from `{}`.",
                path.display(),
                s.cluster,
                s.serial,
                s.len(),
                store.name()
            );
        }
        None => emit(&doc)?,
    }
    Ok(0)
}

/// `state rekey`: the state written with the new key, twice.
pub(super) fn rekey(
    store: &dyn Store,
    cluster: Option<&str>,
    new_key_file: &Path,
) -> Result<i32, Failure> {
    let new = seal::configured(Some(new_key_file))?.expect("a file names a key");
    let (_lock, mut s) = locked_state(store, cluster, "state rekey", Duration::ZERO)?;
    store.settle(&mut s)?;
    if s.lineage.is_none() {
        return Err(fail(format!(
            "`{}` holds no state yet: nothing to rekey",
            store.name()
        )));
    }
    let old = store.codec().key().map(|k| k.id().to_string());
    let secrets: usize = s
        .resources
        .iter()
        .map(|r| {
            seal::sensitive(r.addr.kind)
                .iter()
                .filter(|a| r.observed.contains_key(**a))
                .count()
        })
        .sum();
    let id = new.id().to_string();
    let rekeyed = store.recoded(store.codec().with_key(Some(new)))?;
    rekeyed.write(&mut s)?;
    rekeyed.write(&mut s)?;
    println!(
        "Sealed {secrets} secret{} of `{}` with key {id} ({}); the version kept before it is sealed with it too. Configure the new key wherever the old one was (--state-key-file, state.key_file or VMTHUNDER_STATE_KEY).",
        if secrets == 1 { "" } else { "s" },
        store.name(),
        match old {
            Some(o) => format!("was {o}"),
            None => "they were in clear".to_string(),
        }
    );
    Ok(0)
}
