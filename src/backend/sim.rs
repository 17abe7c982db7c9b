//! The sim stack: records objects without touching any machine, each operation taking the
//! time the provisioning model ([`crate::model`], the spec's `estimate`) gives it: fixed per
//! kind, plus each domain's read of the working set from its host's place in the tree. It
//! exists to measure and plan the engine at 100,000+ resources; every feature is tested on a
//! real stack.

use std::time::Duration;

use super::{Backend, BackendError, Observed, Target};
use crate::model::Model;
use crate::plan::{OpKind, Plan};
use crate::resource::{Addr, Kind};
use crate::spec::Spec;
use crate::state::State;

pub struct SimStack {
    model: Model,
}

impl SimStack {
    /// Trees as a fresh apply of `spec` places them.
    pub fn new(spec: &Spec) -> SimStack {
        SimStack {
            model: Model::new(spec, None),
        }
    }

    fn take(&self, addr: &Addr, op: OpKind) {
        let secs = self.model.secs(addr, op);
        if secs > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(secs));
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
        self.take(t.addr, OpKind::Create);
        Ok(Observed::new())
    }

    fn update(
        &self,
        t: Target<'_>,
        _: &crate::resource::Desired,
        observed: &Observed,
        _: &[(Addr, Observed)],
    ) -> Result<Observed, BackendError> {
        self.take(t.addr, OpKind::Update);
        Ok(observed.clone())
    }

    fn delete(&self, t: Target<'_>, _: &Observed) -> Result<(), BackendError> {
        self.take(t.addr, OpKind::Delete);
        Ok(())
    }

    fn estimate(&self, kind: Kind, op: OpKind) -> Duration {
        Duration::from_secs_f64(self.model.times().secs(kind, op))
    }

    fn finish(&self, _: &State) -> Result<(), BackendError> {
        Ok(())
    }
}
