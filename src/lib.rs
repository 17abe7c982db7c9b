//! vmthunder: provision large VM clusters declaratively with the VMThunder image tree.
//!
//! Dependencies point one way: `cli` -> `plan` -> {`graph`, `state`} -> {`spec`, `resource`}.
//! `plan` never talks to hosts, so the diff is testable from tables of cases.

pub mod allot;
pub mod apply;
pub mod backend;
pub mod capacity;
pub mod cli;
pub mod cloudinit;
pub mod dag;
pub mod failpoint;
pub mod forecast;
pub mod graph;
pub mod health;
pub mod identity;
pub mod model;
pub mod paint;
pub mod pki;
pub mod placement;
pub mod plan;
pub mod refresh;
pub mod resource;
pub mod size;
pub mod spec;
pub mod state;
pub mod text;
