//! The node agent: registers its node with the controller, heartbeats,
//! long-polls the servers assigned to it, runs them with its driver and
//! reports what it did (a snapshot also uploads its image and reports its
//! steps). It also answers the controller's console requests
//! on a small listener of its own.
//!
//! Everything is driven by the controller's desired state: a task
//! (`spawning`, `powering-off`, ...) with a generation. A task runs once per
//! generation; its outcome is reported until the controller accepts it.
//! After a restart the agent adopts what its driver still runs, starts
//! again what should run, and reaps (or logs) workloads no server owns.

mod backups;
mod client;
mod heartbeat;
mod images;
mod listener;
pub mod metadata;
pub mod metrics;
mod network;
pub mod sim;
mod tasks;
mod volume_bases;
mod volume_export;
mod volume_files;
pub mod volumes;

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use stratus_wire::{Assignment, Assignments, TaskReport};

use crate::Driver;
use crate::net::{Dataplane, HostNetwork};

/// What to do with a workload no server owns (Nova's
/// `running_deleted_instance_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanAction {
    /// Destroy it.
    Reap,
    /// Leave it and log a warning.
    Log,
    /// Leave it quietly.
    Noop,
}

/// A node user's credential (what `stratus agent --join-token` got).
pub use stratus_wire::NodeCredential;

/// Who the agent logs in to the controller as.
#[derive(Clone)]
pub enum Login {
    /// The node's own identity (`stratus admin node-token`, then
    /// `stratus agent --join-token`): its own host's agent API only.
    Node(NodeCredential),
    /// The old way: a user of the default domain with the admin or
    /// `service` role.
    Password {
        username: String,
        password: String,
        project: String,
    },
}

impl Login {
    fn auth_body(&self) -> Value {
        match self {
            Login::Node(n) => json!({"auth": {"identity": {"methods": ["password"],
                "password": {"user": {"id": n.user_id, "password": n.password}}},
                "scope": {"project": {"id": n.project_id}}}}),
            Login::Password {
                username,
                password,
                project,
            } => json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
                "name": username, "domain": {"id": "default"}, "password": password}}},
                "scope": {"project": {"name": project, "domain": {"id": "default"}}}}}),
        }
    }

    fn who(&self) -> String {
        match self {
            Login::Node(n) => format!("node {}", n.host),
            Login::Password { username, .. } => username.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AgentConfig {
    pub controller: String,
    pub host: String,
    pub login: Login,
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    /// URL the controller reaches the listener at (default: from listen).
    pub advertise: Option<String>,
    pub orphans: OrphanAction,
    pub heartbeat: Duration,
    /// VXLAN endpoint (see `--tunnel-ip`).
    pub tunnel_ip: Option<std::net::IpAddr>,
    /// Offer to run routers (`--l3`).
    pub l3: bool,
    /// This agent's metrics (served with `--metrics-listen`, or by the
    /// controller `stratus up` runs it in).
    pub metrics: Arc<metrics::AgentMetrics>,
    /// Be a storage node too, keeping volumes there (`--volumes DIR`).
    pub volumes: Option<volumes::VolumesConfig>,
}

pub(crate) struct Shared {
    cfg: AgentConfig,
    driver: Arc<dyn Driver>,
    http: ureq::Agent,
    token: Mutex<Option<String>>,
    /// (server, generation) of tasks started, so each runs once.
    started: Mutex<HashSet<(String, u64)>>,
    /// The server generation each workload was last settled at.
    settled: Mutex<HashMap<String, u64>>,
    /// Reports the controller has not taken yet.
    unsent: Mutex<Vec<(String, TaskReport)>>,
    key: String,
    agent_url: Mutex<Option<String>>,
    /// Images being fetched ahead for the controller (2.81), and those
    /// fetched since the last heartbeat said so.
    precaching: Mutex<HashSet<String>>,
    precached: Mutex<Vec<String>>,
    /// When each cached image was last found still in the image service.
    image_seen: Mutex<HashMap<String, Instant>>,
    /// The report clock: bumped after every settled task, read before
    /// every listing, so the controller can tell a heartbeat listed before
    /// a task's outcome from one listed after it.
    clock: AtomicU64,
    /// The node's dataplane, and what it last wired.
    net: Dataplane,
    wired: Mutex<Option<HostNetwork>>,
    /// The metadata service for the servers on this node.
    metadata: metadata::Metadata,
    /// Set when the network should be synced again (the network thread
    /// waits on it).
    net_dirty: (Mutex<bool>, std::sync::Condvar),
    /// Servers whose volumes a thread is reconciling, each with the
    /// newer assignment it should reconcile next (one thread per server,
    /// so a stale assignment never runs after a newer one).
    volume_work: Mutex<HashMap<String, Option<Assignment>>>,
}

/// Runs the agent until the process ends. Blocking; call it from a thread.
pub fn run(cfg: AgentConfig, driver: Arc<dyn Driver>) -> anyhow::Result<()> {
    let http = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(90)))
        .timeout_connect(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .new_agent();
    let key = uuid_like();
    let net = if driver.name() == "fake" {
        Dataplane::disabled("the fake driver wires nothing")
    } else {
        let tunnel = cfg
            .tunnel_ip
            .or_else(|| source_address(&cfg.controller))
            .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
            .map(|ip| ip.to_string());
        let dp = Dataplane::probe(cfg.state_dir.join("netns"), tunnel);
        match dp.missing() {
            Some(why) => tracing::warn!(
                missing = why,
                "this node cannot wire networks: its servers get addresses but no connectivity"
            ),
            None => tracing::info!(tunnel = ?dp.tunnel_ip(), "network dataplane ready"),
        }
        dp
    };
    cfg.metrics.set_driver(driver.clone());
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        driver,
        http,
        token: Mutex::new(None),
        started: Mutex::new(HashSet::new()),
        settled: Mutex::new(HashMap::new()),
        unsent: Mutex::new(Vec::new()),
        key,
        agent_url: Mutex::new(None),
        precaching: Mutex::new(HashSet::new()),
        precached: Mutex::new(Vec::new()),
        image_seen: Mutex::new(HashMap::new()),
        clock: AtomicU64::new(0),
        net,
        wired: Mutex::new(None),
        metadata: metadata::Metadata::default(),
        net_dirty: (Mutex::new(true), std::sync::Condvar::new()),
        volume_work: Mutex::new(HashMap::new()),
    });
    start_listener(&shared)?;
    // First heartbeat: register; `starting` tells the controller not to
    // treat stopped workloads as shut down (we start them below).
    let mut first = true;
    loop {
        let r = heartbeat(&shared, first);
        cfg.metrics.heartbeat(r.is_ok());
        match r {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), controller = %cfg.controller, "cannot register with the controller; retrying");
                std::thread::sleep(Duration::from_secs(2));
            }
        }
    }
    first = false;
    let hb = shared.clone();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(hb.cfg.heartbeat);
            let r = heartbeat(&hb, false);
            hb.cfg.metrics.heartbeat(r.is_ok());
            if let Err(e) = r {
                tracing::warn!(error = %format!("{e:#}"), "heartbeat failed");
            } else {
                prune_images(&hb);
            }
        }
    });
    if let Some(vc) = cfg.volumes.clone() {
        let vs = shared.clone();
        std::thread::Builder::new()
            .name("volumes".into())
            .spawn(move || volumes::volume_loop(vs, vc))?;
    }
    if shared.net.missing().is_none() {
        let nt = shared.clone();
        std::thread::spawn(move || network_loop(&nt));
    }
    let mut since = 0u64;
    // Where the last answer read the servers: the next one brings only
    // the servers written after it.
    let mut changed: Option<u64> = None;
    let mut last_full = std::time::Instant::now();
    let mut resumed = first;
    loop {
        flush_reports(&shared);
        // A full list now and then all the same: it is what keeps the
        // bookkeeping of deleted servers from growing.
        if last_full.elapsed() > FULL_LIST_EVERY {
            changed = None;
        }
        let only_changed = changed.map(|c| format!("&changed={c}")).unwrap_or_default();
        let url = format!(
            "{}/edge/v1/nodes/{}/servers?since={since}&wait=30{only_changed}",
            cfg.controller, cfg.host
        );
        let polled = call(&shared, "GET", &url, None);
        cfg.metrics
            .poll(matches!(polled, Ok((code, _)) if code == 200));
        let body = match polled {
            Ok((200, b)) => b,
            Ok((code, b)) => {
                tracing::warn!(code, body = %b, "polling the controller failed");
                std::thread::sleep(Duration::from_secs(2));
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "polling the controller failed");
                std::thread::sleep(Duration::from_secs(2));
                continue;
            }
        };
        let a: Assignments = match serde_json::from_str(&body) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "the controller's assignments did not parse");
                std::thread::sleep(Duration::from_secs(2));
                continue;
            }
        };
        since = a.revision;
        changed = a.changes_from;
        if !a.partial {
            last_full = std::time::Instant::now();
        }
        mark_network_dirty(&shared);
        if !resumed && !a.partial {
            resume_guests(&shared, &a.servers);
            resumed = true;
        }
        for s in a.servers {
            let user_data = s
                .user_data
                .as_deref()
                .and_then(|u| base64::engine::general_purpose::STANDARD.decode(u).ok());
            shared
                .metadata
                .set_server(&s.id, s.meta_data.clone(), user_data);
            // Volumes: reconciled whenever the server has some or one
            // is coming or going, and no task runs (a task's start or
            // reboot takes the recorded volumes along).
            if s.task_state.is_none() && (!s.volumes.is_empty() || s.volumes_pending) {
                volumes::queue_attach(&shared, &s);
            }
            let Some(task) = s.task_state.clone() else {
                shared
                    .settled
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(s.id, s.generation);
                continue;
            };
            if !shared
                .started
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((s.id.clone(), s.generation))
            {
                // A live migration under way that an admin aborts or
                // forces to complete: the running stream is steered.
                if task == stratus_wire::Task::Migrating
                    && let Some(m) = s
                        .live_migration
                        .as_ref()
                        .filter(|m| m.abort || m.force_complete)
                {
                    let (sh, id, abort) = (shared.clone(), s.id.clone(), m.abort);
                    std::thread::spawn(move || {
                        if let Err(e) = sh.driver.steer_migration(&id, abort) {
                            tracing::warn!(server = %id, abort, error = %e, "could not steer the live migration");
                        }
                    });
                }
                continue;
            }
            let sh = shared.clone();
            std::thread::spawn(move || run_task(&sh, &s, &task));
        }
    }
}

fn uuid_like() -> String {
    let mut b = [0u8; 24];
    let _ = getrandom_fill(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn getrandom_fill(b: &mut [u8]) -> std::io::Result<()> {
    std::fs::File::open("/dev/urandom")?.read_exact(b)
}

/// Creates `dir` (and its parents) readable by the owner only.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("securing {}", dir.display()))
}

/// The node report's `instances`: every workload the driver has, with
/// its power state and the server generation the node last settled it at.
pub(crate) fn instance_reports(
    driver: &dyn Driver,
    settled: &HashMap<String, u64>,
) -> std::collections::BTreeMap<String, stratus_wire::InstanceReport> {
    driver
        .list()
        .into_iter()
        .map(|(id, p)| {
            let generation = settled.get(&id).copied().unwrap_or(0);
            let report = stratus_wire::InstanceReport {
                power_state: p.nova_code(),
                generation,
            };
            (id, report)
        })
        .collect()
}

/// An assignment's user data, decoded from base64.
pub(crate) fn user_data(s: &stratus_wire::Assignment) -> anyhow::Result<Option<Vec<u8>>> {
    s.user_data
        .as_deref()
        .map(|u| {
            base64::engine::general_purpose::STANDARD
                .decode(u)
                .map_err(|e| anyhow::anyhow!("user_data is not base64: {e}"))
        })
        .transpose()
}

use client::call;
use heartbeat::{heartbeat, prune_images};
use listener::start_listener;
use network::{mark_network_dirty, network_loop, source_address};
use tasks::{flush_reports, resume_guests, run_task};

/// How often an agent that asks only for changed servers takes the full
/// list all the same.
pub(crate) const FULL_LIST_EVERY: Duration = Duration::from_secs(600);
