//! State surgery: forgetting and renaming records, never touching hosts. Every change keeps
//! the state's invariant that every recorded dependency is itself recorded.

use super::{Recorded, State};
use crate::resource::Addr;

impl State {
    /// The records `patterns` select (whole addresses or prefixes of whole parts), for
    /// `state rm`. Refused, naming them, if other records are built on them and are not
    /// selected too: forgetting only the base would leave them dangling.
    pub fn select_for_removal(&self, patterns: &[String]) -> Result<Vec<Addr>, String> {
        // A recorded address means itself (`lv.h.img` is not also `lv.h.img.0`); anything
        // else is a prefix of whole parts.
        let selects = |p: &String, a: &Addr| match p.parse::<Addr>() {
            Ok(exact) if self.get(&exact).is_some() => *a == exact,
            _ => a.matches(p),
        };
        let chosen: Vec<Addr> = self
            .resources
            .iter()
            .filter(|r| patterns.iter().any(|p| selects(p, &r.addr)))
            .map(|r| r.addr.clone())
            .collect();
        if let Some(p) = patterns
            .iter()
            .find(|p| !chosen.iter().any(|a| selects(p, a)))
        {
            return Err(format!("no resource in state matches {p}"));
        }
        let set: std::collections::HashSet<&Addr> = chosen.iter().collect();
        let mut blocking: Vec<String> = self
            .resources
            .iter()
            .filter(|r| !set.contains(&r.addr) && r.deps.iter().any(|d| set.contains(d)))
            .map(|r| r.addr.to_string())
            .collect();
        if !blocking.is_empty() {
            blocking.sort();
            return Err(format!(
                "{} recorded resource{} built on what you chose would be left without {} base: {}; remove {} too (a prefix such as `domain.node07` selects many)",
                blocking.len(),
                if blocking.len() == 1 { " is" } else { "s are" },
                if blocking.len() == 1 { "its" } else { "their" },
                blocking.join(", "),
                if blocking.len() == 1 { "it" } else { "them" },
            ));
        }
        Ok(chosen)
    }

    /// Renames the record at `from` to `to` (same kind), and every dependency on it.
    pub fn rename(&mut self, from: &Addr, to: &Addr) -> Result<(), String> {
        if from.kind != to.kind {
            return Err(format!(
                "{from} is a {} and {to} a {}: a record keeps its kind",
                from.kind, to.kind
            ));
        }
        if self.get(to).is_some() {
            return Err(format!("{to} is already recorded"));
        }
        let Some(r) = self.remove(from) else {
            return Err(format!("no resource {from} in state"));
        };
        self.upsert(Recorded {
            addr: to.clone(),
            ..r
        });
        for r in &mut self.resources {
            for d in &mut r.deps {
                if d == from {
                    *d = to.clone();
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::state::tests::lv;
    use crate::state::State;

    fn state() -> State {
        let mut s = State::empty("lab");
        s.upsert(lv("lv.a.img", &[]));
        s.upsert(lv("lv.a.img.0", &["lv.a.img"]));
        s.upsert(lv("lv.b.img", &[]));
        s
    }

    #[test]
    fn removal_refuses_to_leave_dangling_records() {
        let s = state();
        let err = s
            .select_for_removal(&["lv.a.img".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("lv.a.img.0"), "{err}");
        let both = s
            .select_for_removal(&["lv.a.img".into(), "lv.a.img.0".into()])
            .unwrap();
        assert_eq!(both.len(), 2, "exact addresses select only themselves");
        let all = s.select_for_removal(&["lv.a".into()]).unwrap();
        assert_eq!(all.len(), 2);
        assert!(s.select_for_removal(&["lv.zz".into()]).is_err());
    }

    #[test]
    fn rename_moves_dependencies_along() {
        let mut s = state();
        s.rename(&"lv.a.img".parse().unwrap(), &"lv.c.img".parse().unwrap())
            .unwrap();
        let dep = &s.get(&"lv.a.img.0".parse().unwrap()).unwrap().deps[0];
        assert_eq!(dep.to_string(), "lv.c.img");
        assert!(s
            .rename(&"lv.b.img".parse().unwrap(), &"lv.c.img".parse().unwrap())
            .is_err());
        assert!(s
            .rename(
                &"lv.b.img".parse().unwrap(),
                &"cache.b.img".parse().unwrap()
            )
            .is_err());
    }
}
