//! `state rm`, `state mv` and `import`: change what state records, with the lock held, the
//! previous file kept as `.backup`, and `--dry-run` to look first. Only `import` reads a
//! host; none changes one.

use std::time::Duration;

use super::{fail, locked_state, Failure};
use crate::backend::{self, Observed, Target};
use crate::graph::Graph;
use crate::resource::{Addr, Kind};
use crate::spec::Spec;
use crate::state::{Held, Recorded, State, Status, Store};

/// Loads the state at `path` under the lock (a leftover journal replayed), and unless this is
/// a dry run folds the journal into the file.
fn locked(
    store: &dyn Store,
    cluster: Option<&str>,
    operation: &str,
    dry_run: bool,
) -> Result<(Held, State), Failure> {
    let (lock, mut state) = locked_state(store, cluster, operation, Duration::ZERO)?;
    if !dry_run {
        store.settle(&mut state)?;
    }
    Ok((lock, state))
}

pub(super) fn rm(
    store: &dyn Store,
    cluster: Option<&str>,
    patterns: &[String],
    dry_run: bool,
) -> Result<i32, Failure> {
    for p in patterns {
        if p.split('.').count() < 2 {
            return Err(fail(format!(
                "`{p}` is not an address or an address prefix such as domain.node07"
            )));
        }
    }
    let (_lock, mut state) = locked(store, cluster, "state rm", dry_run)?;
    let chosen = state.select_for_removal(patterns).map_err(fail)?;
    let verb = if dry_run { "Would forget" } else { "Forgot" };
    for a in &chosen {
        if !dry_run {
            state.remove(a);
        }
        println!("{verb} {a}");
    }
    if !dry_run {
        store.write(&mut state)?;
    }
    println!(
        "{verb} {} resource{} in `{}`; the objects on the hosts are untouched{}.",
        chosen.len(),
        if chosen.len() == 1 { "" } else { "s" },
        store.name(),
        if dry_run {
            " and nothing was written"
        } else {
            ""
        }
    );
    Ok(0)
}

pub(super) fn mv(
    store: &dyn Store,
    cluster: Option<&str>,
    from: &str,
    to: &str,
    dry_run: bool,
) -> Result<i32, Failure> {
    let from: Addr = from.parse().map_err(fail)?;
    let to: Addr = to.parse().map_err(fail)?;
    let (_lock, mut state) = locked(store, cluster, "state mv", dry_run)?;
    state.rename(&from, &to).map_err(fail)?;
    if dry_run {
        println!("Would move {from} to {to}; nothing was written.");
    } else {
        store.write(&mut state)?;
        println!("Moved {from} to {to} in `{}`.", store.name());
    }
    Ok(0)
}

pub(super) fn import(
    spec: &Spec,
    store: &dyn Store,
    address: &str,
    dry_run: bool,
) -> Result<i32, Failure> {
    let addr: Addr = address.parse().map_err(fail)?;
    let (_lock, mut state) = locked(store, Some(&spec.cluster), "import", dry_run)?;
    if state.get(&addr).is_some() {
        return Err(fail(format!(
            "{addr} is already recorded; `vmthunder state rm {addr}` first to import it again"
        )));
    }
    let graph = Graph::build(spec, &state)?;
    let Some(i) = graph.get(&addr) else {
        return Err(fail(format!(
            "{addr} is not in the spec: only what the spec describes can be imported (`vmthunder plan` lists its addresses)"
        )));
    };
    let res = &graph.resources[i as usize];
    let deps: Vec<Addr> = res
        .deps
        .iter()
        .map(|&d| graph.resources[d as usize].addr.clone())
        .collect();
    let missing: Vec<String> = deps
        .iter()
        .filter(|d| state.get(d).is_none())
        .map(|d| d.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(fail(format!(
            "{addr} is built on {}, which {} not recorded: import {} first",
            missing.join(", "),
            if missing.len() == 1 { "is" } else { "are" },
            if missing.len() == 1 { "it" } else { "them" },
        )));
    }
    let backend = backend::for_spec(spec).map_err(|e| fail(e.to_string()))?;
    let target = Target::new(&addr, &res.desired);
    let observed = match backend.read(target, &Observed::new()) {
        Ok(Some(o)) => o,
        Ok(None) => {
            return Err(fail(format!(
            "{addr}: nothing matching it exists on host {}: nothing to import (apply creates it)",
            addr.host
        )))
        }
        Err(e) => {
            return Err(fail(format!(
                "{addr}: cannot read it on host {}: {e}",
                addr.host
            )))
        }
    };
    let shown = serde_json::to_string(&backend::redacted(&observed)).expect("serializes");
    if dry_run {
        println!(
            "Would import {addr} (found on host {}: {shown}); nothing was written.",
            addr.host
        );
        return Ok(0);
    }
    if addr.kind == Kind::Session {
        // The tree edge it embodies becomes recorded placement.
        if let Some(parent) = graph
            .placement
            .get(&*addr.image)
            .and_then(|m| m.get(&*addr.host))
        {
            state
                .placement
                .entry(addr.image.to_string())
                .or_default()
                .insert(addr.host.to_string(), parent.clone());
        }
    }
    state.upsert(Recorded {
        addr: addr.clone(),
        desired: res.desired.clone(),
        observed,
        deps,
        status: Status::Ready,
    });
    store.write(&mut state)?;
    println!(
        "Imported {addr} from host {} ({shown}) into `{}`.",
        addr.host,
        store.name()
    );
    Ok(0)
}
