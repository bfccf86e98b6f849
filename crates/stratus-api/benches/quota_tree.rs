//! What the quota engine adds per create on a 5-level, 1,000-project tree
//! (a benchmark, not a timed test: run it with `scripts/bench-quota`).
//!
//! The tree: 1 root, 6 children, 36 grandchildren, 216 projects on level
//! 4 and 741 leaves on level 5 (1,000 in all), on a real SQLite file
//! (`Durability::Full`, as `stratus up` opens it). Every project already
//! runs one server (a `ComputeUsage` record), so each usage read finds a
//! record, as in a cloud in use. A Keystone `compute` service and a
//! registered limit on `servers` exist, as under unified limits.
//!
//! Each sample is one `store.write` (the write a server create makes)
//! that takes one server at a leaf through `quota::take(&SERVERS, ..)`
//! and then rolls back (the closure returns `Err`), so the tree's usage
//! is the same for every sample and the figures do not drift with N. The
//! fsync of a commit is the same with and without the engine; leaving it
//! out keeps the disk's noise out of the difference. Leaves are taken
//! round-robin.
//!
//! - **baseline**: the same write under `flat` (the check every service
//!   made before the engine: the leaf's own limit against its own usage);
//! - **(a) limits on levels 1-4** under `hierarchical`: the root and every
//!   project above the leaves has a limit, so each is a quota root and a
//!   leaf draws from its parent's pool (the common case);
//! - **(b) root only** under `hierarchical`: only the root has a limit, so
//!   every take sums the usage of the root's whole pool of 1,000 projects
//!   (the worst case).
//!
//! Baseline and scenario samples alternate in blocks, so a noisy
//! neighbour hits both. Env: `QUOTA_BENCH_N` (samples per scenario, default
//! 2000), `QUOTA_BENCH_WARMUP` (unmeasured writes first, default 200).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Map;
use stratus_api::compute::model::{ComputeUsage, QuotaSet};
use stratus_api::compute::quotas::{self as compute_quotas, SERVERS};
use stratus_api::identity::model::{Limit, Project, RegisteredLimit, Service};
use stratus_api::identity::quota::{self, Model};
use stratus_store::{Durability, Query, Store, StoreError};

/// Projects on each level, root first: 1,000 in all, 5 deep.
const LEVELS: [usize; 5] = [1, 6, 36, 216, 741];
/// The Keystone service the limits belong to.
const SERVICE: &str = "svc-compute";
/// Samples per block before switching between baseline and scenario.
const BLOCK: usize = 100;

/// Ends a measured write without committing it.
#[derive(Debug)]
enum Rollback {
    /// The store failed (the sample is void).
    Store(StoreError),
    /// The engine's answer, carried out of the rolled-back write.
    Done(Result<(), String>),
}

impl From<StoreError> for Rollback {
    fn from(e: StoreError) -> Self {
        Rollback::Store(e)
    }
}

/// The tree's project ids by level (root first).
struct Tree {
    levels: Vec<Vec<String>>,
}

impl Tree {
    fn leaves(&self) -> &[String] {
        &self.levels[self.levels.len() - 1]
    }
}

fn project(id: &str, parent: Option<&str>) -> Project {
    Project {
        id: id.to_string(),
        name: id.to_string(),
        domain_id: "default".to_string(),
        description: String::new(),
        enabled: true,
        parent_id: parent.map(str::to_string),
        tags: Vec::new(),
        options: Map::new(),
        extra: Map::new(),
    }
}

/// Builds the tree, one server per project, the service and the
/// registered limit.
fn build(store: &Store) -> Tree {
    let mut levels: Vec<Vec<String>> = Vec::new();
    for (depth, &count) in LEVELS.iter().enumerate() {
        let ids: Vec<String> = (0..count).map(|i| format!("p{depth}-{i:04}")).collect();
        levels.push(ids);
    }
    store
        .write(|tx| {
            tx.insert(&Service {
                id: SERVICE.to_string(),
                kind: "compute".to_string(),
                name: Some("nova".to_string()),
                description: None,
                enabled: true,
            })?;
            tx.insert(&RegisteredLimit {
                id: "rl-servers".to_string(),
                service_id: SERVICE.to_string(),
                region_id: None,
                resource_name: "servers".to_string(),
                default_limit: 10,
                description: None,
            })?;
            for (depth, ids) in levels.iter().enumerate() {
                for (i, id) in ids.iter().enumerate() {
                    // Children are spread evenly over the level above.
                    let parent = (depth > 0).then(|| {
                        let above = &levels[depth - 1];
                        above[i * above.len() / ids.len()].as_str()
                    });
                    tx.insert(&project(id, parent))?;
                    compute_quotas::account(tx, id, "bench-user", 1, 512, 1)
                        .map_err(|e| StoreError::Conflict(e.message))?;
                }
            }
            Ok::<_, StoreError>(())
        })
        .expect("building the tree");
    Tree { levels }
}

/// Replaces every Keystone limit on `servers` with `limits`.
fn set_limits(store: &Store, limits: &[(&str, i64)]) {
    store
        .write(|tx| {
            for l in tx.list::<Limit>(&Query::name("servers"))? {
                tx.delete::<Limit>(&l.id)?;
            }
            for (project, limit) in limits {
                tx.insert(&Limit {
                    id: format!("limit-{project}"),
                    service_id: SERVICE.to_string(),
                    region_id: None,
                    project_id: Some(project.to_string()),
                    domain_id: None,
                    resource_name: "servers".to_string(),
                    resource_limit: *limit,
                    description: None,
                })?;
            }
            Ok::<_, StoreError>(())
        })
        .expect("setting limits");
}

/// One measured write: takes a server at `leaf`, then rolls back.
fn sample(store: &Store, leaf: &str) -> Duration {
    let start = Instant::now();
    let r: Result<(), Rollback> = store.write(|tx| {
        let answer = quota::take(tx, &SERVERS, leaf, 1).map_err(|o| o.why);
        Err(Rollback::Done(answer))
    });
    let took = start.elapsed();
    match r {
        Err(Rollback::Done(Ok(()))) => took,
        Err(Rollback::Done(Err(why))) => panic!("take at {leaf} was refused: {why}"),
        Err(Rollback::Store(e)) => panic!("store failed at {leaf}: {e}"),
        Ok(()) => unreachable!("the write always rolls back"),
    }
}

struct Stats {
    p50: f64,
    p99: f64,
    mean: f64,
}

fn stats(mut us: Vec<f64>) -> Stats {
    us.sort_by(f64::total_cmp);
    let at = |q: f64| us[((us.len() as f64 * q).ceil() as usize).clamp(1, us.len()) - 1];
    Stats {
        p50: at(0.50),
        p99: at(0.99),
        mean: us.iter().sum::<f64>() / us.len() as f64,
    }
}

/// `n` samples under `model` and `n` under `flat`, alternating in blocks
/// over the same leaves. Returns (baseline, scenario) in µs.
fn measure(store: &Store, tree: &Tree, model: Model, n: usize, warmup: usize) -> (Stats, Stats) {
    let leaves = tree.leaves();
    for m in [Model::Flat, model] {
        quota::set_model(store, m).expect("setting the model");
        for i in 0..warmup {
            sample(store, &leaves[i % leaves.len()]);
        }
    }
    let mut base = Vec::with_capacity(n);
    let mut scen = Vec::with_capacity(n);
    let mut next = 0;
    while next < n {
        let block = BLOCK.min(n - next);
        for (m, out) in [(Model::Flat, &mut base), (model, &mut scen)] {
            quota::set_model(store, m).expect("setting the model");
            for i in next..next + block {
                let d = sample(store, &leaves[i % leaves.len()]);
                out.push(d.as_secs_f64() * 1e6);
            }
        }
        next += block;
    }
    (stats(base), stats(scen))
}

/// What the store reads an engine decision is made of cost here: each
/// read once per project of the tree (as a pool walk does), and the bulk
/// reads that could replace them. Median of `rounds` rounds, inside one
/// rolled-back write. Returns (what, reads per round, ms per round).
fn store_reads(store: &Store, tree: &Tree, rounds: usize) -> Vec<(&'static str, usize, f64)> {
    let ids: Vec<&str> = tree.levels.iter().flatten().map(String::as_str).collect();
    type Read<'x> = Box<dyn Fn(&stratus_store::Tx) -> Result<usize, StoreError> + 'x>;
    let ids = &ids;
    let reads: Vec<(&'static str, Read)> = vec![
        (
            "get ComputeUsage (usage), per project",
            Box::new(|tx| {
                for id in ids {
                    tx.get::<ComputeUsage>(id)?;
                }
                Ok(ids.len())
            }),
        ),
        (
            "list Project by parent (children), per project",
            Box::new(|tx| {
                for id in ids {
                    tx.list::<Project>(&Query::parent(id))?;
                }
                Ok(ids.len())
            }),
        ),
        (
            "list Limit by owner+name (Keystone limit), per project",
            Box::new(|tx| {
                for id in ids {
                    tx.list::<Limit>(&Query {
                        owner: Some(id),
                        name: Some("servers"),
                        ..Query::default()
                    })?;
                }
                Ok(ids.len())
            }),
        ),
        (
            "get QuotaSet (service's own limit), per project",
            Box::new(|tx| {
                for id in ids {
                    tx.get::<QuotaSet>(&format!("project/{id}"))?;
                }
                Ok(ids.len())
            }),
        ),
        (
            "bulk: list Project by domain (whole tree)",
            Box::new(|tx| {
                tx.list::<Project>(&Query::owner("default"))?;
                Ok(1)
            }),
        ),
        (
            "bulk: list Limit by name (every limit)",
            Box::new(|tx| {
                tx.list::<Limit>(&Query::name("servers"))?;
                Ok(1)
            }),
        ),
        (
            "bulk: list every ComputeUsage",
            Box::new(|tx| {
                tx.list::<ComputeUsage>(&Query::all())?;
                Ok(1)
            }),
        ),
    ];
    let mut out = Vec::new();
    for (what, read) in &reads {
        let mut ms = Vec::with_capacity(rounds);
        let mut count = 0;
        for _ in 0..rounds {
            let r: Result<(), Rollback> = store.write(|tx| {
                let start = Instant::now();
                count = read(tx)?;
                ms.push(start.elapsed().as_secs_f64() * 1e3);
                Err(Rollback::Done(Ok(())))
            });
            if let Err(Rollback::Store(e)) = r {
                panic!("store read failed: {e}");
            }
        }
        ms.sort_by(f64::total_cmp);
        out.push((*what, count, ms[ms.len() / 2]));
    }
    out
}

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter or other flags mean nothing here.
    let n = env_usize("QUOTA_BENCH_N", 2000).max(1);
    let warmup = env_usize("QUOTA_BENCH_WARMUP", 200);
    let dir: PathBuf =
        std::env::temp_dir().join(format!("stratus-quota-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the bench directory");
    let store = Store::open(&dir.join("store.db"), Durability::Full).expect("opening the store");

    let t0 = Instant::now();
    let tree = build(&store);
    let total: usize = tree.levels.iter().map(Vec::len).sum();
    println!(
        "tree: {total} projects on {} levels ({}), one server each, built in {} ms; \
         {n} samples per scenario, {warmup} warm-up writes",
        tree.levels.len(),
        LEVELS.map(|c| c.to_string()).join(" + "),
        t0.elapsed().as_millis()
    );

    // (a) every project on levels 1-4 is a quota root. A limit covers the
    // project's own server, its pool's and its children's allocations,
    // with room to spare, so every take passes.
    let mut limits_a: Vec<(&str, i64)> = Vec::new();
    let per_level = [100_000, 10_000, 1_000, 100];
    for (depth, ids) in tree.levels[..4].iter().enumerate() {
        for id in ids {
            limits_a.push((id.as_str(), per_level[depth]));
        }
    }
    set_limits(&store, &limits_a);
    let (base_a, a) = measure(&store, &tree, Model::Hierarchical, n, warmup);

    // (b) only the root has a limit: one pool of 1,000 projects.
    set_limits(&store, &[(tree.levels[0][0].as_str(), 100_000)]);
    let (base_b, b) = measure(&store, &tree, Model::Hierarchical, n, warmup);

    println!();
    println!("one store.write per sample (take 1 server at a leaf, then roll back), µs:");
    println!();
    println!(
        "| {:<40} | {:>9} | {:>9} | {:>9} | {:>14} | {:>9} |",
        "scenario", "p50 µs", "p99 µs", "mean µs", "added p99 µs", "p99 ratio"
    );
    println!(
        "|{:-<42}|{:->11}|{:->11}|{:->11}|{:->16}|{:->11}|",
        "", "", "", "", "", ""
    );
    let row = |name: &str, s: &Stats, base: Option<&Stats>| {
        let (added, ratio) = match base {
            Some(b) => (
                format!("{:.1}", s.p99 - b.p99),
                format!("{:.2}x", s.p99 / b.p99),
            ),
            None => ("-".to_string(), "-".to_string()),
        };
        println!(
            "| {:<40} | {:>9.1} | {:>9.1} | {:>9.1} | {:>14} | {:>9} |",
            name, s.p50, s.p99, s.mean, added, ratio
        );
    };
    row("baseline: flat (with limits of (a))", &base_a, None);
    row("(a) hierarchical, limits on levels 1-4", &a, Some(&base_a));
    row("baseline: flat (with limit of (b))", &base_b, None);
    row("(b) hierarchical, root limit only", &b, Some(&base_b));
    println!();
    for (name, s, base) in [("(a)", &a, &base_a), ("(b)", &b, &base_b)] {
        let added_ms = (s.p99 - base.p99) / 1000.0;
        let verdict = if added_ms < 1.0 { "meets" } else { "MISSES" };
        println!("{name}: added p99 {added_ms:.3} ms: {verdict} the aim of < 1 ms");
    }

    println!();
    println!("store reads on this tree (median of 5 rounds), for reading the figures above:");
    println!();
    println!(
        "| {:<55} | {:>6} | {:>9} | {:>9} |",
        "read", "reads", "ms total", "µs each"
    );
    println!("|{:-<57}|{:->8}|{:->11}|{:->11}|", "", "", "", "");
    for (what, count, ms) in store_reads(&store, &tree, 5) {
        println!(
            "| {:<55} | {:>6} | {:>9.2} | {:>9.1} |",
            what,
            count,
            ms,
            ms * 1000.0 / count as f64
        );
    }

    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
