//! Simulated edge sites, for benchmarks only (`stratus sim-sites`): many
//! sites in one process, each joining the parent with its own one-time
//! token and certificate and holding its own mutual-TLS link, exchanging
//! as a real site does (the same long poll, acknowledgements, Fernet key
//! check and gzip). What comes down is counted and acknowledged, not
//! applied: a simulated site has no store and runs nothing. It shows
//! what many sites cost their parent, never stands in for a real site.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use stratus_wire::sync::{Exchange, ExchangeReply, SYNC_VERSION};

use super::link::{Joined, LinkConfig, connect, join_to, joined_from, request};

/// What the simulated sites have done so far, all together.
#[derive(Default)]
pub struct SimStats {
    pub joined: AtomicU64,
    pub connected: AtomicU64,
    pub exchanges: AtomicU64,
    pub changes: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub errors: AtomicU64,
    /// Each site's revision, to tell how far behind the slowest is.
    pub revisions: Vec<AtomicI64>,
}

impl SimStats {
    pub fn new(sites: usize) -> Self {
        SimStats {
            revisions: (0..sites).map(|_| AtomicI64::new(0)).collect(),
            ..Default::default()
        }
    }

    /// The lowest and highest revision any site has acknowledged.
    pub fn revision_range(&self) -> (i64, i64) {
        let v: Vec<i64> = self
            .revisions
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .collect();
        (
            v.iter().copied().min().unwrap_or(0),
            v.iter().copied().max().unwrap_or(0),
        )
    }
}

/// Runs site `i`: join with `token` (or reuse `dir/site-i.json`) once
/// `gate` lets it, then
/// exchange until the process ends, reconnecting after a dropped link.
pub async fn run_site(
    parent: String,
    token: String,
    dir: PathBuf,
    i: usize,
    wait_s: u64,
    stats: Arc<SimStats>,
    gate: Arc<tokio::sync::Semaphore>,
) {
    let file = dir.join(format!("site-{i}.json"));
    // Joins (a key, TLS handshakes and a certificate each) go through a
    // few at a time; the links then stay up side by side.
    let permit = gate.acquire_owned().await;
    let cfg = LinkConfig {
        parent: parent.clone(),
        join_token: Some(token),
    };
    let joined = loop {
        let r = match joined_from(&file) {
            Some(j) => Ok(j),
            None => join_to(&cfg, &file).await,
        };
        match r {
            Ok(j) => break j,
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(site = i, error = %e, "simulated site: cannot join yet");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    drop(permit);
    stats.joined.fetch_add(1, Ordering::Relaxed);
    let mut acked = 0i64;
    let mut keys_hash = String::new();
    loop {
        if let Err(e) = session(&joined, i, wait_s, &mut acked, &mut keys_hash, &stats).await {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(site = i, error = %e, "simulated site: link dropped");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn session(
    joined: &Joined,
    i: usize,
    wait_s: u64,
    acked: &mut i64,
    keys_hash: &mut String,
    stats: &SimStats,
) -> Result<(), String> {
    let addr = super::link::address(&joined.parent)?;
    let tls = joined
        .identity()
        .client_config()
        .map_err(|e| e.to_string())?;
    let (mut sender, rtt) = connect(&addr, tls).await?;
    stats.connected.fetch_add(1, Ordering::Relaxed);
    let _gone = Disconnect(&stats.connected);
    let mut more = false;
    loop {
        let x = Exchange {
            version: SYNC_VERSION,
            acked: *acked,
            software: env!("CARGO_PKG_VERSION").into(),
            wait_s: if more { 0 } else { wait_s },
            keys_hash: keys_hash.clone(),
            rtt_ms: rtt,
            bytes_up: stats.bytes_up.load(Ordering::Relaxed),
            bytes_down: stats.bytes_down.load(Ordering::Relaxed),
            zones: Vec::new(),
        };
        let body = super::gzip(&serde_json::to_vec(&x).map_err(|e| e.to_string())?);
        let (status, text, sent, got) = request(
            &mut sender,
            "POST",
            "/sync/v1/exchange",
            body,
            true,
            Duration::from_secs(x.wait_s + 30),
        )
        .await?;
        stats.bytes_up.fetch_add(sent, Ordering::Relaxed);
        stats.bytes_down.fetch_add(got, Ordering::Relaxed);
        stats.exchanges.fetch_add(1, Ordering::Relaxed);
        if status != 200 {
            return Err(format!("exchange refused ({status})"));
        }
        let reply: ExchangeReply = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
        if let Some(keys) = &reply.fernet_keys {
            *keys_hash = super::keys_hash(keys);
        }
        stats
            .changes
            .fetch_add(reply.changes.len() as u64, Ordering::Relaxed);
        more = reply.more;
        *acked = reply.revision;
        stats.revisions[i].store(reply.revision, Ordering::Relaxed);
    }
}

/// Counts a link down when its session ends, however it ends.
struct Disconnect<'a>(&'a AtomicU64);

impl Drop for Disconnect<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
