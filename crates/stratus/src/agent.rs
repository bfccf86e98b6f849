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

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use serde_json::{Value, json};
use stratus_agent::net::{Dataplane, HostNetwork};
use stratus_agent::{Driver, InstanceSpec, PowerState};

/// What to do with a workload no server owns (Nova's
/// `running_deleted_instance_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OrphanAction {
    /// Destroy it.
    Reap,
    /// Leave it and log a warning.
    Log,
    /// Leave it quietly.
    Noop,
}

/// Who the agent logs in to the controller as.
#[derive(Clone)]
pub enum Login {
    /// The node's own identity (`stratus admin node-token`, then
    /// `stratus agent --join-token`): its own host's agent API only.
    Node(stratus_api::identity::node_users::NodeCredential),
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
}

struct Shared {
    cfg: AgentConfig,
    driver: Arc<dyn Driver>,
    http: ureq::Agent,
    token: Mutex<Option<String>>,
    /// (server, generation) of tasks started, so each runs once.
    started: Mutex<HashSet<(String, u64)>>,
    /// The server generation each workload was last settled at.
    settled: Mutex<HashMap<String, u64>>,
    /// Reports the controller has not taken yet.
    unsent: Mutex<Vec<(String, Value)>>,
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
    metadata: crate::metadata::Metadata,
    /// Set when the network should be synced again (the network thread
    /// waits on it).
    net_dirty: (Mutex<bool>, std::sync::Condvar),
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
        metadata: crate::metadata::Metadata::default(),
        net_dirty: (Mutex::new(true), std::sync::Condvar::new()),
    });
    start_listener(&shared)?;
    // First heartbeat: register; `starting` tells the controller not to
    // treat stopped workloads as shut down (we start them below).
    let mut first = true;
    loop {
        match heartbeat(&shared, first) {
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
            if let Err(e) = heartbeat(&hb, false) {
                tracing::warn!(error = %format!("{e:#}"), "heartbeat failed");
            } else {
                prune_images(&hb);
            }
        }
    });
    if shared.net.missing().is_none() {
        let nt = shared.clone();
        std::thread::spawn(move || network_loop(&nt));
    }
    let mut since = 0u64;
    let mut resumed = first;
    loop {
        flush_reports(&shared);
        let url = format!(
            "{}/edge/v1/nodes/{}/servers?since={since}&wait=30",
            cfg.controller, cfg.host
        );
        let body = match call(&shared, "GET", &url, None) {
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
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        since = v["revision"].as_u64().unwrap_or(since);
        mark_network_dirty(&shared);
        let servers = v["servers"].as_array().cloned().unwrap_or_default();
        if !resumed {
            resume_guests(&shared, &servers);
            resumed = true;
        }
        for s in servers {
            let id = s["id"].as_str().unwrap_or("").to_string();
            let generation = s["generation"].as_u64().unwrap_or(0);
            let user_data = s["user_data"]
                .as_str()
                .and_then(|u| base64::engine::general_purpose::STANDARD.decode(u).ok());
            shared
                .metadata
                .set_server(&id, s["meta_data"].clone(), user_data);
            let Some(task) = s["task_state"].as_str().map(str::to_string) else {
                shared
                    .settled
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, generation);
                continue;
            };
            if !shared
                .started
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((id.clone(), generation))
            {
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

// ---- controller calls ------------------------------------------------------------

/// The longest a login, heartbeat or report may take: a controller that
/// accepted the connection but never answers must not hold the agent for
/// the long-poll's 90 s.
const SHORT_CALL: Duration = Duration::from_secs(20);

fn login(sh: &Shared) -> anyhow::Result<String> {
    let c = &sh.cfg;
    let body = c.login.auth_body();
    let mut resp = sh
        .http
        .post(&format!("{}/identity/v3/auth/tokens", c.controller))
        .config()
        .timeout_global(Some(SHORT_CALL))
        .build()
        .header("content-type", "application/json")
        .send(body.to_string())
        .context("logging in to the controller")?;
    let status = resp.status().as_u16();
    let tok = resp
        .headers()
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    match (status, tok) {
        (201, Some(t)) => Ok(t),
        _ => anyhow::bail!("login as {} refused ({status}): {text}", c.login.who()),
    }
}

/// One authenticated call; logs in again once on a 401.
fn call(
    sh: &Shared,
    method: &str,
    url: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, String)> {
    for attempt in 0..2 {
        let token = {
            let mut t = sh.token.lock().unwrap_or_else(|e| e.into_inner());
            if t.is_none() {
                *t = Some(login(sh)?);
            }
            t.clone().expect("set above")
        };
        let mut resp = match (method, body) {
            ("GET", _) => sh.http.get(url).header("x-auth-token", &token).call()?,
            (_, Some(b)) => {
                let req = if method == "PUT" {
                    sh.http.put(url)
                } else {
                    sh.http.post(url)
                };
                req.config()
                    .timeout_global(Some(SHORT_CALL))
                    .build()
                    .header("x-auth-token", &token)
                    .header("content-type", "application/json")
                    .send(b.to_string())?
            }
            _ => anyhow::bail!("bad call"),
        };
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        if status == 401 && attempt == 0 {
            *sh.token.lock().unwrap_or_else(|e| e.into_inner()) = None;
            continue;
        }
        return Ok((status, text));
    }
    anyhow::bail!("not authorised by the controller")
}

fn heartbeat(sh: &Arc<Shared>, starting: bool) -> anyhow::Result<()> {
    let cached: Vec<String> =
        std::mem::take(&mut *sh.precached.lock().unwrap_or_else(|e| e.into_inner()));
    let res = sh.driver.host_resources();
    let settled = sh.settled.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // Before listing: a task settled after this point is newer than the
    // listing.
    let observed = sh.clock.load(Ordering::SeqCst);
    let instances: serde_json::Map<String, Value> = sh
        .driver
        .list()
        .into_iter()
        .map(|(id, p)| {
            let g = settled.get(&id).copied().unwrap_or(0);
            (id, json!({"power_state": p.nova_code(), "generation": g}))
        })
        .collect();
    let body = json!({
        "driver": sh.driver.name(),
        "vcpus": res.vcpus,
        "memory_mb": res.memory_mb,
        "disk_gb": res.disk_gb,
        "arch": res.arch,
        "hypervisor_type": res.hypervisor_type,
        "hypervisor_version": res.hypervisor_version,
        "cpu_model": res.cpu_model,
        "host_ip": sh.net.tunnel_ip().unwrap_or("127.0.0.1"),
        "l3": sh.cfg.l3 && sh.net.missing().is_none(),
        "agent_url": sh.agent_url.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        "agent_key": sh.key,
        "instances": instances,
        "starting": starting,
        "observed": observed,
        "cached": cached,
    });
    let url = format!("{}/edge/v1/nodes/{}", sh.cfg.controller, sh.cfg.host);
    let (code, text) = match call(sh, "PUT", &url, Some(&body)) {
        Ok(r) => r,
        Err(e) => {
            // Say it again next time.
            sh.precached
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(cached);
            return Err(e);
        }
    };
    if code != 200 {
        sh.precached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(cached);
        anyhow::bail!("heartbeat refused ({code}): {text}");
    }
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    for img in v["precache"].as_array().cloned().unwrap_or_default() {
        precache(sh, &img);
    }
    // Copies of servers that now run elsewhere (a confirmed or reverted
    // migration): always removed, as Nova's confirm and revert do.
    for l in v["leftovers"].as_array().cloned().unwrap_or_default() {
        let Some(id) = l["id"].as_str() else { continue };
        let generation = l["generation"].as_u64().unwrap_or(0);
        let newer = sh
            .settled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .is_some_and(|g| *g > generation)
            || sh
                .started
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|(i, g)| i == id && *g > generation);
        if newer {
            continue;
        }
        tracing::info!(
            server = id,
            "removing the copy of a server that moved to another node"
        );
        if let Err(e) = sh.driver.destroy(id) {
            tracing::warn!(server = id, error = %e, "could not remove a moved server's copy");
        }
    }
    for id in v["orphans"].as_array().cloned().unwrap_or_default() {
        let Some(id) = id.as_str() else { continue };
        match sh.cfg.orphans {
            OrphanAction::Reap => {
                tracing::warn!(server = id, "reaping a workload no server owns");
                if let Err(e) = sh.driver.destroy(id) {
                    tracing::warn!(server = id, error = %e, "could not reap");
                }
            }
            OrphanAction::Log => {
                tracing::warn!(
                    server = id,
                    "a workload runs here that no server owns (left alone: --orphans log)"
                )
            }
            OrphanAction::Noop => {}
        }
    }
    Ok(())
}

/// How long an image found in the image service is not asked about again.
const IMAGE_RECHECK: Duration = Duration::from_secs(600);

/// The node's image cache keeps what may boot again: an image no
/// instance here uses and that the image service no longer has (a
/// shelved or transfer image after its boot, an image a user deleted)
/// goes, download and unpacked copy.
fn prune_images(sh: &Shared) {
    let cache = sh.cfg.state_dir.join("image-cache");
    let mut candidates: Vec<String> = sh.driver.unpacked_images();
    if let Ok(rd) = std::fs::read_dir(&cache) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".data") {
                candidates.push(id.to_string());
            }
        }
    }
    candidates.sort();
    candidates.dedup();
    // Only what is not being fetched and was not found lately; the
    // instances are read only when something is left to ask about.
    {
        let busy = sh.precaching.lock().unwrap_or_else(|e| e.into_inner());
        let seen = sh.image_seen.lock().unwrap_or_else(|e| e.into_inner());
        candidates.retain(|id| {
            !busy.contains(id) && seen.get(id).is_none_or(|t| t.elapsed() >= IMAGE_RECHECK)
        });
    }
    if candidates.is_empty() {
        return;
    }
    let Some(in_use) = sh.driver.images_in_use() else {
        return;
    };
    for id in candidates {
        if in_use.contains(&id) {
            continue;
        }
        let url = format!("{}/image/v2/images/{id}", sh.cfg.controller);
        match call(sh, "GET", &url, None) {
            Ok((404, _)) => {
                let removed = sh.driver.remove_image(&id);
                let _ = std::fs::remove_file(cache.join(format!("{id}.data")));
                match removed {
                    Ok(_) => {
                        tracing::info!(image = %id, "pruned an image the image service no longer has")
                    }
                    Err(e) => tracing::warn!(image = %id, error = %e, "could not prune an image"),
                }
            }
            Ok(_) | Err(_) => {
                sh.image_seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, Instant::now());
            }
        }
    }
}

/// Fetches an image into the node's cache in the background (once at a
/// time per image); the next heartbeat tells the controller.
fn precache(sh: &Arc<Shared>, img: &Value) {
    let Some(id) = img["id"].as_str().map(str::to_string) else {
        return;
    };
    if !sh
        .precaching
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.clone())
    {
        return;
    }
    let checksum = img["checksum"].as_str().map(str::to_string);
    let sh = sh.clone();
    std::thread::spawn(move || {
        let result = if sh.driver.name() == "fake" {
            Ok(PathBuf::new())
        } else {
            fetch_image(&sh, &id, checksum.as_deref())
        };
        match result {
            Ok(_) => {
                tracing::info!(image = %id, "image cached ahead");
                sh.precached
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(id.clone());
            }
            Err(e) => {
                tracing::warn!(image = %id, error = %format!("{e:#}"), "could not cache the image ahead; trying again later")
            }
        }
        sh.precaching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    });
}

fn report(sh: &Shared, id: &str, generation: u64, task: &str, ok: bool, message: Option<String>) {
    let power = sh.driver.power_state(id).nova_code();
    // After the task: any listing taken from now on sees its outcome.
    let mark = sh.clock.fetch_add(1, Ordering::SeqCst) + 1;
    let body = json!({"generation": generation, "task": task, "ok": ok, "power_state": power,
        "message": message, "agent_key": sh.key, "mark": mark});
    sh.unsent
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((id.to_string(), body));
    flush_reports(sh);
}

fn flush_reports(sh: &Shared) {
    let pending: Vec<(String, Value)> =
        std::mem::take(&mut *sh.unsent.lock().unwrap_or_else(|e| e.into_inner()));
    let mut keep = Vec::new();
    for (id, body) in pending {
        let url = format!(
            "{}/edge/v1/nodes/{}/servers/{id}/report",
            sh.cfg.controller, sh.cfg.host
        );
        match call(sh, "POST", &url, Some(&body)) {
            Ok((204, _)) | Ok((404, _)) => {}
            Ok((code, text)) if code < 500 => {
                tracing::warn!(server = %id, code, body = %text, "report refused");
            }
            _ => keep.push((id, body)),
        }
    }
    sh.unsent
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(keep);
}

// ---- tasks ------------------------------------------------------------------------------

/// After a restart: servers that should run are started again (Nova's
/// `resume_guests_state_on_host_boot`); running ones are simply adopted.
/// A rescued server's workload is its rescue container (the driver knows
/// it is rescued), started again the same way.
fn resume_guests(sh: &Shared, servers: &[Value]) {
    for s in servers {
        let rescued = s["vm_state"] == "rescued";
        let should_run = s["vm_state"] == "active" || rescued || s["should_run"] == true;
        if s["task_state"].is_string() || !should_run {
            continue;
        }
        let id = s["id"].as_str().unwrap_or("").to_string();
        match sh.driver.power_state(&id) {
            PowerState::Running => tracing::info!(server = %id, "adopted running workload"),
            PowerState::NoState if rescued => {
                tracing::info!(server = %id, "rescued workload missing after restart; rescuing it again");
                if let Err(e) = spawn(sh, s).and_then(|()| rescue(sh, s)) {
                    tracing::warn!(server = %id, error = %format!("{e:#}"), "could not rescue again");
                }
            }
            PowerState::NoState => {
                tracing::info!(server = %id, "workload missing after restart; spawning it again");
                if let Err(e) = spawn(sh, s) {
                    tracing::warn!(server = %id, error = %format!("{e:#}"), "could not spawn again");
                }
            }
            _ => {
                tracing::info!(server = %id, "starting workload that should run");
                if let Err(e) = sh.driver.start(&id) {
                    tracing::warn!(server = %id, error = %e, "could not start");
                }
            }
        }
    }
}

fn run_task(sh: &Arc<Shared>, s: &Value, task: &str) {
    let id = s["id"].as_str().unwrap_or("").to_string();
    let generation = s["generation"].as_u64().unwrap_or(0);
    let started = Instant::now();
    let d = &sh.driver;
    let exists = d.power_state(&id) != PowerState::NoState;
    let result: anyhow::Result<()> = (|| {
        match task {
            "spawning" => spawn(sh, s)?,
            "rebuilding" => {
                d.destroy(&id)?;
                spawn(sh, s)?;
                // A stopped server stays stopped after a rebuild, as in Nova.
                if s["vm_state"] == "stopped" {
                    d.stop(&id, Duration::from_secs(60))?;
                }
            }
            "powering-off" => d.stop(&id, Duration::from_secs(60))?,
            "powering-on" if !exists => spawn(sh, s)?,
            "powering-on" => d.start(&id)?,
            "rebooting" | "rebooting_hard" if !exists => spawn(sh, s)?,
            "rebooting" => d.reboot(&id, false)?,
            "rebooting_hard" => d.reboot(&id, true)?,
            "pausing" | "suspending" => d.pause(&id)?,
            "unpausing" | "resuming" => d.unpause(&id)?,
            "deleting" => {
                d.destroy(&id)?;
                sh.net.unplug(&id);
                mark_network_dirty(sh);
            }
            // Cold migration, on the source: a clean stop, then the root
            // file system goes into the transfer image. The stopped copy
            // stays until the migration is confirmed or reverted.
            "resize_migrating" => {
                if exists {
                    d.stop(&id, Duration::from_secs(60))?;
                }
                // Run again after a restart: the image may be written.
                if !target_image_active(sh, s)
                    && let Err(e) = snapshot(sh, s, None)
                {
                    // The server stays here, as it was.
                    if s["should_run"] == true
                        && let Err(e) = d.start(&id)
                    {
                        tracing::warn!(server = %id, error = %e, "could not start again after a failed migration");
                    }
                    return Err(e);
                }
            }
            // On the destination: boot the transfer image; a server that
            // was stopped stays stopped.
            "resize_finish" => {
                // A copy from an earlier stay here is stale: the transfer
                // image has the server as it is now.
                if exists {
                    d.destroy(&id)?;
                }
                spawn(sh, s)?;
                if s["should_run"] != true {
                    d.stop(&id, Duration::from_secs(60))?;
                }
            }
            // A migration going back: the source starts its copy again
            // if the server ran.
            "resize_reverting" if s["migration"] == true => {
                if s["should_run"] == true {
                    if exists {
                        d.start(&id)?;
                    } else {
                        spawn(sh, s)?;
                    }
                }
            }
            // The assignment carries the flavor to apply: the new one for
            // a resize, the old one for a revert.
            "resize_prep" | "resize_reverting" => d.resize(
                &id,
                s["vcpus"].as_u64().unwrap_or(1) as u32,
                s["memory_mb"].as_u64().unwrap_or(0),
                s["disk_gb"].as_u64().unwrap_or(0),
            )?,
            "rescuing" => rescue(sh, s)?,
            "unrescuing" => d.unrescue(&id)?,
            // A restarted agent may find a snapshot at a later step: it
            // starts over.
            "image_snapshot" | "image_backup" | "image_pending_upload" | "image_uploading" => {
                snapshot(sh, s, Some(""))?
            }
            // Shelve: a clean stop, the shelved image, then the workload
            // and its disk go (the server leaves this node).
            "shelving" | "shelving_image_pending_upload" | "shelving_image_uploading" => {
                if exists {
                    d.stop(&id, Duration::from_secs(60))?;
                }
                // Run again after a restart: the image may be written (and
                // the workload gone).
                if !target_image_active(sh, s) {
                    snapshot(sh, s, Some("shelving_"))?;
                }
                d.destroy(&id)?;
            }
            other => anyhow::bail!("unknown task {other}"),
        }
        Ok(())
    })();
    let ms = started.elapsed().as_millis();
    sh.settled
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.clone(), generation);
    match result {
        Ok(()) => {
            tracing::info!(server = %id, task, ms, "task done");
            report(sh, &id, generation, task, true, None);
        }
        Err(e) => {
            let msg = format!("{e:#}");
            tracing::warn!(server = %id, task, error = %msg, "task failed");
            if task == "spawning" || task == "resize_finish" {
                let _ = d.destroy(&id);
            }
            report(sh, &id, generation, task, false, Some(msg));
        }
    }
}

/// Writes a snapshot of the instance and uploads it to the image the
/// controller made for it (`PUT /image/v2/images/{id}/file`, the image
/// service's ordinary upload path with its format checks), telling the
/// controller when the upload starts (`steps` prefixes the task_states:
/// `shelving_` for a shelve; `None` reports no steps, as for a
/// migration). The tarball is removed either way.
fn snapshot(sh: &Shared, s: &Value, steps: Option<&str>) -> anyhow::Result<()> {
    let id = s["id"].as_str().unwrap_or("");
    let generation = s["generation"].as_u64().unwrap_or(0);
    let image_id = s["snapshot_image_id"]
        .as_str()
        .context("the controller named no image for the snapshot")?;
    let dir = sh.cfg.state_dir.join("snapshots");
    crate::datadir::private_dir(&dir)?;
    let file = dir.join(format!("{image_id}.tar"));
    let result = (|| {
        sh.driver
            .snapshot(id, &file)
            .context("writing the snapshot")?;
        if let Some(steps) = steps {
            progress(sh, id, generation, &format!("{steps}image_pending_upload"));
            progress(sh, id, generation, &format!("{steps}image_uploading"));
        }
        upload(sh, image_id, &file)
    })();
    let _ = std::fs::remove_file(&file);
    result
}

/// Whether the image a snapshot-like task writes (`snapshot_image_id`)
/// is already active: an earlier run of the same task, cut short by a
/// restart before its report, finished the upload.
fn target_image_active(sh: &Shared, s: &Value) -> bool {
    let Some(image_id) = s["snapshot_image_id"].as_str() else {
        return false;
    };
    let url = format!("{}/image/v2/images/{image_id}", sh.cfg.controller);
    match call(sh, "GET", &url, None) {
        Ok((200, body)) => {
            serde_json::from_str::<Value>(&body).is_ok_and(|v| v["status"] == "active")
        }
        _ => false,
    }
}

/// Moves a long task's task_state on; best effort (the final report is
/// what counts).
fn progress(sh: &Shared, id: &str, generation: u64, task: &str) {
    let url = format!(
        "{}/edge/v1/nodes/{}/servers/{id}/progress",
        sh.cfg.controller, sh.cfg.host
    );
    let body = json!({"generation": generation, "task": task});
    match call(sh, "POST", &url, Some(&body)) {
        Ok((204, _)) => {}
        Ok((code, text)) => tracing::debug!(server = id, code, body = %text, "progress refused"),
        Err(e) => tracing::debug!(server = id, error = %format!("{e:#}"), "progress not sent"),
    }
}

/// The token for calls outside [`call`] (streamed bodies).
fn token(sh: &Shared) -> anyhow::Result<String> {
    let mut t = sh.token.lock().unwrap_or_else(|e| e.into_inner());
    if t.is_none() {
        *t = Some(login(sh)?);
    }
    Ok(t.clone().expect("set above"))
}

fn upload(sh: &Shared, image_id: &str, file: &Path) -> anyhow::Result<()> {
    let url = format!("{}/image/v2/images/{image_id}/file", sh.cfg.controller);
    for attempt in 0..2 {
        let token = token(sh)?;
        let f = std::fs::File::open(file)?;
        let mut resp = sh
            .http
            .put(&url)
            .config()
            .timeout_global(Some(Duration::from_secs(3600)))
            .build()
            .header("x-auth-token", &token)
            .header("content-type", "application/octet-stream")
            .send(f)
            .context("uploading the snapshot")?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        match status {
            204 => return Ok(()),
            401 if attempt == 0 => {
                *sh.token.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            _ => anyhow::bail!("the image service refused the snapshot ({status}): {text}"),
        }
    }
    anyhow::bail!("not authorised by the image service")
}

/// The address this machine reaches `url`'s host from (no packet is
/// sent: a UDP socket is only connected).
fn source_address(url: &str) -> Option<std::net::IpAddr> {
    let rest = url.split("://").nth(1)?;
    let authority = rest.split('/').next()?;
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&authority)
        .ok()?
        .next()?;
    let bind = if addr.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let sock = std::net::UdpSocket::bind(bind).ok()?;
    sock.connect(addr).ok()?;
    sock.local_addr().ok().map(|a| a.ip())
}

fn mark_network_dirty(sh: &Shared) {
    let (m, cv) = &sh.net_dirty;
    *m.lock().unwrap_or_else(|e| e.into_inner()) = true;
    cv.notify_one();
}

/// Keeps the node's wiring what the controller says: syncs whenever the
/// controller woke the agent, and every 30 s in any case.
fn network_loop(sh: &Shared) {
    loop {
        // A wake-up wires what changed; every 30 s without one, all of
        // it is checked again (something outside may have touched it).
        let full = {
            let (m, cv) = &sh.net_dirty;
            let mut dirty = m.lock().unwrap_or_else(|e| e.into_inner());
            if !*dirty {
                dirty = cv
                    .wait_timeout(dirty, Duration::from_secs(30))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            let woken = *dirty;
            *dirty = false;
            !woken
        };
        if let Err(e) = sync_network(sh, full) {
            tracing::warn!(error = %format!("{e:#}"), "network sync failed; retrying");
            std::thread::sleep(Duration::from_secs(2));
            mark_network_dirty(sh);
        }
    }
}

/// Fetches what this node must wire and wires it (only when it changed,
/// unless `force`). Returns what is wired.
fn sync_network(sh: &Shared, force: bool) -> anyhow::Result<HostNetwork> {
    // Fetch and apply under one lock: an answer fetched before another
    // one was applied must never be applied after it (it would sweep a
    // newer server's namespace).
    let mut wired = sh.wired.lock().unwrap_or_else(|e| e.into_inner());
    let url = format!(
        "{}/edge/v1/nodes/{}/network",
        sh.cfg.controller, sh.cfg.host
    );
    let net: HostNetwork = match call(sh, "GET", &url, None)? {
        (200, b) => serde_json::from_str(&b).context("the controller's network answer")?,
        (code, b) => anyhow::bail!("the controller answered {code} for the network: {b}"),
    };
    if force || wired.as_ref() != Some(&net) {
        let keep: std::collections::BTreeSet<String> =
            sh.driver.list().into_iter().map(|(id, _)| id).collect();
        sh.net.apply(&net, &keep, force)?;
        *wired = Some(net.clone());
    }
    sh.metadata.sync(&net, |id| sh.net.metadata_listener(id));
    Ok(net)
}

/// Fetches the image (once per node) and starts the workload.
fn spawn(sh: &Shared, s: &Value) -> anyhow::Result<()> {
    let mut spec = instance_spec(
        sh,
        s,
        s["image_id"].as_str().unwrap_or(""),
        s["container_format"].as_str().unwrap_or(""),
        s["image_checksum"].as_str(),
    )?;
    (spec.netns, spec.dns) = wire_server(sh, &spec.uuid)?;
    sh.driver.spawn(&spec)?;
    // A shelved or transfer image boots this server only: its download
    // goes once the workload runs from the unpacked copy.
    if s["single_use_image"] == true && !spec.image_file.as_os_str().is_empty() {
        let _ = std::fs::remove_file(&spec.image_file);
    }
    Ok(())
}

/// Wires a server's ports before its workload starts; the namespace it
/// joins, if it has ports and this node wires them, and its subnets'
/// name servers.
fn wire_server(sh: &Shared, id: &str) -> anyhow::Result<(Option<PathBuf>, Vec<String>)> {
    if sh.net.missing().is_some() {
        return Ok((None, Vec::new()));
    }
    let net = sync_network(sh, false)?;
    let mut dns: Vec<String> = Vec::new();
    for p in net.ports.iter().filter(|p| p.device_id == id) {
        for d in &p.dns {
            if !dns.contains(d) {
                dns.push(d.clone());
            }
        }
    }
    Ok((sh.net.netns_path(&net, id), dns))
}

/// Runs the server from its rescue image (the controller names it in
/// `rescue`), with its own root at `/mnt/rescue`.
fn rescue(sh: &Shared, s: &Value) -> anyhow::Result<()> {
    let r = &s["rescue"];
    let image_id = r["image_id"]
        .as_str()
        .context("the controller named no rescue image")?;
    let mut spec = instance_spec(
        sh,
        s,
        image_id,
        r["container_format"].as_str().unwrap_or(""),
        r["image_checksum"].as_str(),
    )?;
    (spec.netns, spec.dns) = wire_server(sh, &spec.uuid)?;
    sh.driver.rescue(&spec)?;
    Ok(())
}

/// What the driver needs to run the server `s` from `image_id`, with the
/// image fetched.
fn instance_spec(
    sh: &Shared,
    s: &Value,
    image_id: &str,
    container_format: &str,
    checksum: Option<&str>,
) -> anyhow::Result<InstanceSpec> {
    let id = s["id"].as_str().unwrap_or("");
    if sh.driver.name() != "fake" && !matches!(container_format, "docker" | "oci") {
        anyhow::bail!(
            "the {} driver runs container images (container_format docker or oci); image {image_id} is {container_format}",
            sh.driver.name()
        );
    }
    let image_file = if sh.driver.name() == "fake" {
        PathBuf::new()
    } else {
        fetch_image(sh, image_id, checksum)?
    };
    let user_data = match s["user_data"].as_str() {
        Some(u) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(u)
                .context("user_data is not base64")?,
        ),
        None => None,
    };
    Ok(InstanceSpec {
        uuid: id.to_string(),
        hostname: s["hostname"].as_str().unwrap_or("server").to_string(),
        image_id: image_id.to_string(),
        image_file,
        container_format: container_format.to_string(),
        vcpus: s["vcpus"].as_u64().unwrap_or(1) as u32,
        memory_mb: s["memory_mb"].as_u64().unwrap_or(512),
        disk_gb: s["disk_gb"].as_u64().unwrap_or(0),
        user_data,
        meta_data_json: serde_json::to_vec(&s["meta_data"]).unwrap_or_default(),
        netns: None,
        dns: Vec::new(),
    })
}

/// Downloads an image's data into the node's cache (`images/<id>.data`),
/// checking its sha512; concurrent spawns of one image wait for one
/// download.
fn fetch_image(sh: &Shared, image_id: &str, sha512: Option<&str>) -> anyhow::Result<PathBuf> {
    static LOCKS: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let dir = sh.cfg.state_dir.join("image-cache");
    crate::datadir::private_dir(&dir)?;
    let path = dir.join(format!("{image_id}.data"));
    loop {
        if path.exists() {
            return Ok(path);
        }
        {
            let mut l = LOCKS.lock().unwrap_or_else(|e| e.into_inner());
            if !l.iter().any(|x| x == image_id) {
                l.push(image_id.to_string());
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let result = download(sh, image_id, sha512, &dir, &path);
    LOCKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|x| x != image_id);
    result.map(|_| path)
}

fn download(
    sh: &Shared,
    image_id: &str,
    sha512: Option<&str>,
    dir: &Path,
    path: &Path,
) -> anyhow::Result<()> {
    use sha2::Digest;
    use std::io::Write;
    let url = format!("{}/image/v2/images/{image_id}/file", sh.cfg.controller);
    let token = token(sh)?;
    let mut resp = sh
        .http
        .get(&url)
        .header("x-auth-token", &token)
        .call()
        .context("downloading the image")?;
    if resp.status().as_u16() != 200 {
        anyhow::bail!("image {image_id} download answered {}", resp.status());
    }
    let tmp = dir.join(format!("{image_id}.part"));
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?
    };
    let mut hasher = sha2::Sha512::new();
    let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        f.write_all(&buf[..n])?;
    }
    f.sync_all()?;
    let got: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if let Some(want) = sha512
        && want != got
    {
        let _ = std::fs::remove_file(&tmp);
        anyhow::bail!("image {image_id} arrived damaged (sha512 mismatch)");
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

// ---- the agent's own listener ------------------------------------------------------------

fn start_listener(sh: &Arc<Shared>) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(sh.cfg.listen)
        .with_context(|| format!("agent listener on {}", sh.cfg.listen))?;
    let addr = listener.local_addr()?;
    let url = sh
        .cfg
        .advertise
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    *sh.agent_url.lock().unwrap_or_else(|e| e.into_inner()) = Some(url.clone());
    tracing::info!(%url, host = %sh.cfg.host, driver = sh.driver.name(), "node agent listening");
    let sh = sh.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let sh = sh.clone();
            std::thread::spawn(move || serve_one(&sh, stream));
        }
    });
    Ok(())
}

/// A minimal HTTP/1.1 answer for `GET /instances/{id}/console?length=N`
/// and `GET /instances/{id}/diagnostics`.
fn serve_one(sh: &Shared, mut stream: std::net::TcpStream) {
    use std::io::{BufRead, BufReader, Write};
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut key = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.trim().eq_ignore_ascii_case("x-stratus-agent-key")
        {
            key = Some(v.trim().to_string());
        }
    }
    let target = line.split_whitespace().nth(1).unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let length = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("length="))
        .and_then(|v| v.parse::<usize>().ok());
    let mut content_type = "text/plain; charset=utf-8";
    let (status, body) = if key.as_deref() != Some(sh.key.as_str()) {
        ("403 Forbidden", "wrong or missing agent key".to_string())
    } else if let Some(id) = path
        .strip_prefix("/instances/")
        .and_then(|r| r.strip_suffix("/diagnostics"))
    {
        match sh.driver.diagnostics(id) {
            Ok(items) => {
                content_type = "application/json";
                let m: serde_json::Map<String, Value> = items
                    .into_iter()
                    .map(|(k, v)| (k, Value::from(v)))
                    .collect();
                ("200 OK", Value::Object(m).to_string())
            }
            Err(e) => ("404 Not Found", e.to_string()),
        }
    } else if let Some(id) = path
        .strip_prefix("/instances/")
        .and_then(|r| r.strip_suffix("/console"))
    {
        match sh.driver.console_output(id, length) {
            Ok(text) => ("200 OK", text),
            Err(e) => ("404 Not Found", e.to_string()),
        }
    } else {
        ("404 Not Found", "unknown path".to_string())
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}
