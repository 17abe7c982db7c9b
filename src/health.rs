//! Which hosts can serve children, from what a refresh found: a host whose relay of an image
//! does not answer (the relay hangs, or the host is unreachable), or is gone (its export
//! vanished). With `tree.repair: "auto"` the
//! graph places their children elsewhere, and the plan moves them in place.

use rustc_hash::FxHashMap as HashMap;

use crate::plan::{Plan, Reason};
use crate::refresh::{Finding, Refreshed};
use crate::resource::Kind;

/// What is wrong with a host as a parent, as the plan says it ("node02 does not answer").
pub const UNREACHABLE: &str = "does not answer";
pub const RELAY_GONE: &str = "lost its relay (its export is gone)";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// (host, image) of relays that did not answer.
    down: HashMap<(String, String), ()>,
    /// (host, image) whose export vanished.
    relays_gone: HashMap<(String, String), ()>,
}

fn relay_kind(k: Kind) -> bool {
    matches!(k, Kind::Session | Kind::Cache | Kind::Target)
}

impl Health {
    /// From a refresh's findings.
    pub fn from_refresh(r: &Refreshed) -> Health {
        let mut h = Health::default();
        for d in &r.drift {
            match &d.finding {
                Finding::Unknown(_) if relay_kind(d.addr.kind) => {
                    h.down
                        .insert((d.addr.host.to_string(), d.addr.image.to_string()), ());
                }
                Finding::Gone if d.addr.kind == Kind::Target => {
                    h.relays_gone
                        .insert((d.addr.host.to_string(), d.addr.image.to_string()), ());
                }
                _ => {}
            }
        }
        h
    }

    /// What a saved plan's repairs say the refresh found (to make the plan again).
    pub fn from_plan(plan: &Plan) -> Health {
        let mut h = Health::default();
        for c in &plan.changes {
            if let Some(Reason::Repair { parent, why }) = &c.reason {
                let key = (parent.clone(), c.addr.image.to_string());
                if why == UNREACHABLE {
                    h.down.insert(key, ());
                } else {
                    h.relays_gone.insert(key, ());
                }
            }
        }
        h
    }

    /// Why `host` cannot serve `image` to children, if it cannot.
    pub fn why(&self, host: &str, image: &str) -> Option<&'static str> {
        let key = (host.to_string(), image.to_string());
        if self.down.contains_key(&key) {
            Some(UNREACHABLE)
        } else if self.relays_gone.contains_key(&key) {
            Some(RELAY_GONE)
        } else {
            None
        }
    }

    /// Whether `host`'s relay of `image` did not answer: nothing may be planned on it.
    pub fn unreachable(&self, host: &str, image: &str) -> bool {
        self.down
            .contains_key(&(host.to_string(), image.to_string()))
    }

    pub fn is_empty(&self) -> bool {
        self.down.is_empty() && self.relays_gone.is_empty()
    }
}
