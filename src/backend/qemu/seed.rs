//! `seed`s: a clone's cloud-init NoCloud seed, `seed-<n>.iso` beside its disk (made by
//! `crate::backend::seed`), attached read-only to the clone.

use std::path::PathBuf;

use super::QemuStack;
use crate::backend::{seed, BackendError, Observed, Target};
use crate::resource::{Addr, Desired, Kind};

pub(super) fn path(stack: &QemuStack, addr: &Addr) -> PathBuf {
    stack
        .dir(&addr.host, &addr.image)
        .join(format!("seed-{}.iso", addr.n.unwrap_or(0)))
}

pub(super) fn read(stack: &QemuStack, t: Target<'_>) -> Result<Option<Observed>, BackendError> {
    seed::read(stack.transport.as_ref(), &t.addr.host, &path(stack, t.addr))
}

pub(super) fn create(stack: &QemuStack, t: Target<'_>) -> Result<Observed, BackendError> {
    let Desired::Seed(s) = t.desired else {
        unreachable!("seed attributes")
    };
    seed::create(
        stack.transport.as_ref(),
        &t.addr.host,
        &path(stack, t.addr),
        s,
    )
}

pub(super) fn delete(stack: &QemuStack, t: Target<'_>) -> Result<(), BackendError> {
    seed::delete(stack.transport.as_ref(), &t.addr.host, &path(stack, t.addr))
}

/// Removes seeds that state does not record.
pub(super) fn sweep(
    stack: &QemuStack,
    host: &str,
    image: &str,
    recorded: &[&Addr],
    names: &[String],
) -> Result<(), BackendError> {
    super::sweep_files(stack, host, image, recorded, names, Kind::Seed, |name| {
        super::numbered(name, "seed-", ".iso")
            .or_else(|| super::numbered(name, "seed-", ".iso.tmp"))
            .map(Some)
    });
    Ok(())
}
