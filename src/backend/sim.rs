//! The sim stack: records objects without touching any machine, each operation taking the
//! duration the spec models for its kind. It exists to measure and plan the engine at
//! 100,000+ resources; every feature is tested on a real stack.

use std::time::Duration;

use super::{Backend, BackendError, Observed, Target};
use crate::plan::{OpKind, Plan};
use crate::resource::{Addr, Kind};
use crate::spec::SimSpec;
use crate::state::State;

pub struct SimStack {
    create: [Duration; Kind::ALL.len()],
    delete: [Duration; Kind::ALL.len()],
}

impl SimStack {
    pub fn new(model: &SimSpec) -> SimStack {
        let table = |m: &std::collections::BTreeMap<Kind, f64>| {
            Kind::ALL.map(|k| Duration::from_secs_f64(m.get(&k).copied().unwrap_or(0.0)))
        };
        SimStack {
            create: table(&model.create),
            delete: table(&model.delete),
        }
    }

    fn take(d: Duration) {
        if !d.is_zero() {
            std::thread::sleep(d);
        }
    }
}

impl Backend for SimStack {
    fn preflight(&self, _: &Plan) -> Result<(), Vec<String>> {
        Ok(())
    }

    fn read(&self, _: Target<'_>, observed: &Observed) -> Result<Option<Observed>, BackendError> {
        Ok(Some(observed.clone()))
    }

    fn create(&self, t: Target<'_>, _: &[(Addr, Observed)]) -> Result<Observed, BackendError> {
        SimStack::take(self.create[t.addr.kind as usize]);
        Ok(Observed::new())
    }

    fn delete(&self, t: Target<'_>, _: &Observed) -> Result<(), BackendError> {
        SimStack::take(self.delete[t.addr.kind as usize]);
        Ok(())
    }

    fn estimate(&self, kind: Kind, op: OpKind) -> Duration {
        match op {
            OpKind::Create => self.create[kind as usize],
            OpKind::Delete => self.delete[kind as usize],
        }
    }

    fn finish(&self, _: &State) -> Result<(), BackendError> {
        Ok(())
    }
}
