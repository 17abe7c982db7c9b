//! State store benchmark: the same plan and sim apply of N hosts x 10 clones with the file
//! store and with the postgres store (a private PostgreSQL server started for the run, on a
//! unix socket, fsync on), in one run.
//!
//! Per store: "plan" = open the (empty) store and diff the spec against it; "apply" = the sim
//! apply with every operation taking no time, each finished operation journaled (group
//! commit: one fsync or one committed INSERT per batch), the whole state written once at the
//! end; "replan" = open the applied state again and diff (no changes).
//!
//! Run: `cargo bench --bench state` (`VMTHUNDER_BENCH_HOSTS=1000,10000`, default 10,000 in
//! release, 100 in debug).

#[path = "../tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

use std::time::{Duration, Instant};

use vmthunder::apply::{self, Interrupt, Limits};
use vmthunder::backend;
use vmthunder::graph::Graph;
use vmthunder::plan::{self, Mode, Options, Plan};
use vmthunder::spec::Spec;
use vmthunder::state::{Codec, FileStore, State, Store};

const CLONES: u32 = 10;

fn spec(hosts: usize) -> Spec {
    let zero = serde_json::json!({"lv": 0, "session": 0, "cache": 0, "target": 0,
                                  "snapshot": 0, "domain": 0});
    let estimate = serde_json::json!({"working_set": 0, "create": zero, "delete": zero});
    let mut list = vec![serde_json::json!({"name": "img0", "address": "10.0.0.1"})];
    for i in 0..hosts {
        list.push(serde_json::json!({
            "name": format!("node{i:06}"),
            "address": format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
        }));
    }
    let doc = serde_json::json!({
        "version": 1,
        "cluster": "bench",
        "backend": {"stack": "sim"},
        "estimate": estimate,
        "hosts": list,
        "images": [{"name": "base", "source_host": "img0", "path": "base.qcow2", "size": "10GiB"}],
        "tree": {"degree": 4},
        "cache": {"size": "4GiB"},
        "clones": {"per_host": CLONES, "cow_size": "2GiB", "memory": "1GiB"}
    });
    Spec::from_slice(&serde_json::to_vec(&doc).unwrap()).unwrap()
}

fn make_plan(spec: &Spec, state: &State) -> Plan {
    let graph = Graph::build(spec, state).unwrap();
    let opts = Options {
        mode: Some(Mode::Normal),
        ..Options::default()
    };
    plan::diff(graph, state, &opts, Some(spec.digest())).unwrap()
}

struct Row {
    plan: Duration,
    apply: Duration,
    replan: Duration,
    /// One more whole-state write of the applied state.
    write: Duration,
    ops: usize,
}

fn run(spec: &Spec, store: &dyn Store) -> Row {
    let t = Instant::now();
    let mut state = store.open(Some("bench")).unwrap().state;
    let p = make_plan(spec, &state);
    let planned = t.elapsed();
    let backend = backend::for_spec(spec).unwrap();
    let t = Instant::now();
    let o = apply::run(
        &p,
        &mut state,
        store,
        backend,
        Limits {
            parallelism: 10,
            ..Limits::default()
        },
        &Interrupt::default(),
        &mut |_| {},
    )
    .unwrap();
    let applied = t.elapsed();
    assert!(o.ok() && o.created > 0, "{:?}", o.failed.first());
    let t = Instant::now();
    store.write(&mut state).unwrap();
    let written = t.elapsed();
    drop((p, state));
    let t = Instant::now();
    let state = store.open(Some("bench")).unwrap().state;
    let again = make_plan(spec, &state);
    assert!(!again.has_changes());
    Row {
        plan: planned,
        apply: applied,
        replan: t.elapsed(),
        write: written,
        ops: o.created,
    }
}

fn main() {
    let default = if cfg!(debug_assertions) {
        "100"
    } else {
        "10000"
    };
    let sizes: Vec<usize> = std::env::var("VMTHUNDER_BENCH_HOSTS")
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let server = pg::Pg::start();
    println!(
        "| hosts | store | operations | plan s | apply s | ops/s | replan s | write s | apply vs file |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (i, &hosts) in sizes.iter().enumerate() {
        let spec = spec(hosts);
        let dir = tempfile::tempdir().unwrap();
        let file = FileStore::new(dir.path().join("bench.json"), Codec::default());
        let f = run(&spec, &file);
        let db = format!("bench{i}");
        server.create_db(&db);
        let url = server.url_socket(&db);
        vmthunder::state::postgres::init(&url).unwrap();
        let store =
            vmthunder::state::postgres::PgStore::connect(&url, Some("bench"), Codec::default())
                .unwrap();
        let p = run(&spec, &store);
        for (name, r) in [("file", &f), ("postgres", &p)] {
            println!(
                "| {hosts} | {name} | {} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2}x |",
                r.ops,
                r.plan.as_secs_f64(),
                r.apply.as_secs_f64(),
                r.ops as f64 / r.apply.as_secs_f64(),
                r.replan.as_secs_f64(),
                r.write.as_secs_f64(),
                r.apply.as_secs_f64() / f.apply.as_secs_f64()
            );
        }
    }
}
