//! `stratus sim-sites`: many simulated edge sites in one process, for
//! benchmarks of a parent (see `stratus_api::sync::sim`). Never a real
//! site: nothing is stored or run.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use stratus_api::sync::sim::{SimStats, run_site};

#[derive(Args, Debug)]
pub struct SimSitesArgs {
    /// The parent's sync listener (https://HOST:PORT).
    #[arg(long)]
    pub parent: String,
    /// A file with one join token per line (`stratus admin site create`);
    /// one simulated site per token.
    #[arg(long, value_name = "FILE")]
    pub tokens: PathBuf,
    /// Where each site keeps its certificate (`site-N.json`), so a
    /// restarted simulation reconnects instead of joining again.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// How long the parent may hold an idle exchange (s), as a real site
    /// asks.
    #[arg(long, default_value_t = 55)]
    pub wait: u64,
    /// Written every second: the sites' figures as one JSON object.
    #[arg(long, value_name = "FILE")]
    pub stats: Option<PathBuf>,
    /// Sites joining at the same time.
    #[arg(long, default_value_t = 32)]
    pub join_parallel: usize,
}

pub fn run(args: SimSitesArgs) -> anyhow::Result<()> {
    let tokens: Vec<String> = std::fs::read_to_string(&args.tokens)
        .with_context(|| format!("reading {}", args.tokens.display()))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    anyhow::ensure!(!tokens.is_empty(), "no tokens in {}", args.tokens.display());
    std::fs::create_dir_all(&args.data_dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let stats = Arc::new(SimStats::new(tokens.len()));
        let gate = Arc::new(tokio::sync::Semaphore::new(args.join_parallel.max(1)));
        for (i, t) in tokens.into_iter().enumerate() {
            let (parent, dir, st, gate) = (
                args.parent.clone(),
                args.data_dir.clone(),
                stats.clone(),
                gate.clone(),
            );
            tokio::spawn(run_site(parent, t, dir, i, args.wait, st, gate));
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let (lo, hi) = stats.revision_range();
            let line = serde_json::json!({
                "sites": stats.revisions.len(),
                "joined": stats.joined.load(Ordering::Relaxed),
                "connected": stats.connected.load(Ordering::Relaxed),
                "exchanges": stats.exchanges.load(Ordering::Relaxed),
                "changes": stats.changes.load(Ordering::Relaxed),
                "bytes_up": stats.bytes_up.load(Ordering::Relaxed),
                "bytes_down": stats.bytes_down.load(Ordering::Relaxed),
                "errors": stats.errors.load(Ordering::Relaxed),
                "min_revision": lo,
                "max_revision": hi,
            });
            match &args.stats {
                Some(f) => {
                    let tmp = f.with_extension("tmp");
                    if std::fs::write(&tmp, line.to_string()).is_ok() {
                        let _ = std::fs::rename(&tmp, f);
                    }
                }
                None => println!("{line}"),
            }
        }
    })
}
