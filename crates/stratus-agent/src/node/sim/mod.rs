//! Simulated nodes: `stratus agent --driver fake --fake-nodes N` runs N
//! nodes in one process, each speaking the whole agent protocol for
//! itself (registering, heartbeating, long-polling its assignments,
//! carrying out and reporting its tasks), over its own HTTP conversation
//! with the controller, as N real agents would.
//!
//! What makes ten thousand of them cheap is sharing everything a node
//! does not need for itself: the nodes are tasks on one small tokio
//! runtime (no thread per node); one login token serves them all (they log
//! in as the same user); heartbeats and reports share a small pool of
//! connections; one listener answers console and diagnostics requests for
//! every node (each node's `agent_url` carries its index). Per node there
//! is its fake driver's map, its bookkeeping (tasks started and settled,
//! reports not yet taken) and the socket its long-poll waits on.
//!
//! The fake driver's calls are instant, so tasks run inline on the
//! runtime; writing a snapshot touches the disk and goes to
//! `spawn_blocking`.

mod http;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use stratus_wire::{
    Assignment, Assignments, NodeReply, NodeReport, PROTOCOL_VERSION, Task, TaskProgress,
    TaskReport,
};
use tokio::net::TcpStream;

use self::http::{Controller, Request, Response};
use super::{Login, OrphanAction};
use crate::{Driver, FakeDriver, HostResources, InstanceSpec, PowerState};

/// How long a login, heartbeat or report may take.
const SHORT_CALL: Duration = Duration::from_secs(20);
/// How long the controller may hold a long-poll (it waits 30 s).
const POLL_CALL: Duration = Duration::from_secs(90);
/// Short calls in flight at once, over all simulated nodes.
const SHORT_CONCURRENCY: usize = 64;
/// Heartbeats in flight at once: a pool of their own, so a flood of task
/// reports never holds a node's heartbeat back (a real agent's heartbeat
/// has its own thread too).
const BEAT_CONCURRENCY: usize = 16;

/// What the simulated nodes are.
pub struct SimConfig {
    pub controller: String,
    /// One name per node.
    pub hosts: Vec<String>,
    /// Every node logs in as this user (a join token joins one node).
    pub login: Login,
    /// Where snapshots are written before their upload.
    pub state_dir: PathBuf,
    /// The listener answering for every node.
    pub listen: SocketAddr,
    /// Its URL as the controller reaches it (default: from `listen`).
    pub advertise: Option<String>,
    pub orphans: OrphanAction,
    pub heartbeat: Duration,
    /// What each node offers.
    pub resources: HostResources,
}

/// What every simulated node shares.
struct Sim {
    cfg: SimConfig,
    controller: Controller,
    /// The heartbeats' own pool.
    beats: Controller,
    token: tokio::sync::Mutex<Option<String>>,
    /// The shared listener's base URL.
    listener_url: String,
    nodes: Vec<Arc<Node>>,
}

/// One simulated node's own state.
struct Node {
    index: usize,
    driver: FakeDriver,
    key: String,
    /// (server, generation) of tasks started, so each runs once.
    started: Mutex<HashSet<(String, u64)>>,
    /// The server generation each workload was last settled at.
    settled: Mutex<HashMap<String, u64>>,
    /// Reports the controller has not taken yet.
    unsent: Mutex<Vec<(String, TaskReport)>>,
    /// Images the controller asked to cache ahead, not yet said cached.
    precached: Mutex<Vec<String>>,
    /// The report clock (see the real agent's).
    clock: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the simulated nodes until the process ends.
pub fn run(cfg: SimConfig) -> anyhow::Result<()> {
    anyhow::ensure!(
        matches!(cfg.login, Login::Password { .. }),
        "simulated nodes log in with a password (a join token joins one node)"
    );
    raise_fd_limit(cfg.hosts.len());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .thread_stack_size(512 * 1024)
        .enable_all()
        .build()
        .context("starting the simulated nodes' runtime")?;
    let controller = Controller::new(&cfg.controller, SHORT_CONCURRENCY)?;
    let beats = Controller::new(&cfg.controller, BEAT_CONCURRENCY)?;
    let listener = std::net::TcpListener::bind(cfg.listen)
        .with_context(|| format!("agent listener on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let listener_url = cfg
        .advertise
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"))
        .trim_end_matches('/')
        .to_string();
    let nodes = (0..cfg.hosts.len())
        .map(|index| {
            Arc::new(Node {
                index,
                driver: FakeDriver::new(cfg.resources.clone()),
                key: super::uuid_like(),
                started: Mutex::new(HashSet::new()),
                settled: Mutex::new(HashMap::new()),
                unsent: Mutex::new(Vec::new()),
                precached: Mutex::new(Vec::new()),
                clock: AtomicU64::new(0),
            })
        })
        .collect();
    let sim = Arc::new(Sim {
        cfg,
        controller,
        beats,
        token: tokio::sync::Mutex::new(None),
        listener_url,
        nodes,
    });
    tracing::info!(nodes = sim.nodes.len(), url = %sim.listener_url, "simulated nodes starting");
    let ls = sim.clone();
    std::thread::Builder::new()
        .name("sim-listener".into())
        .stack_size(256 * 1024)
        .spawn(move || serve(&ls, listener))?;
    rt.block_on(async move {
        let mut all = tokio::task::JoinSet::new();
        for node in &sim.nodes {
            all.spawn(node_main(sim.clone(), node.clone()));
        }
        while all.join_next().await.is_some() {}
    });
    Ok(())
}

/// Each node's long-poll holds a socket: raise the soft open-file limit
/// (up to the hard one) when the nodes need more.
#[allow(unsafe_code)]
fn raise_fd_limit(nodes: usize) {
    let want = (nodes as u64).saturating_add(SHORT_CONCURRENCY as u64 + 256);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read or write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= want {
            return;
        }
        lim.rlim_cur = want.min(lim.rlim_max);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    if lim.rlim_cur < want {
        tracing::warn!(
            limit = lim.rlim_cur,
            wanted = want,
            "the open-file limit is low for this many simulated nodes (raise it with ulimit -n)"
        );
    }
}

impl Sim {
    fn host(&self, node: &Node) -> &str {
        &self.cfg.hosts[node.index]
    }

    async fn token(&self, stale: Option<&str>) -> anyhow::Result<String> {
        let mut t = self.token.lock().await;
        if let Some(cur) = t.as_deref()
            && Some(cur) != stale
        {
            return Ok(cur.to_string());
        }
        let body = self.cfg.login.auth_body().to_string();
        let r = self
            .controller
            .call(
                &Request {
                    method: "POST",
                    path: "/identity/v3/auth/tokens",
                    token: None,
                    content_type: "application/json",
                    body: Some(body.as_bytes()),
                },
                SHORT_CALL,
            )
            .await
            .context("logging in to the controller")?;
        match (r.status, r.subject_token.clone()) {
            (201, Some(tok)) => {
                *t = Some(tok.clone());
                Ok(tok)
            }
            _ => anyhow::bail!(
                "login as {} refused ({}): {}",
                self.cfg.login.who(),
                r.status,
                r.text()
            ),
        }
    }

    /// One authenticated call, on the node's own connection when given
    /// one, else on the shared pool; logs in again once on a 401.
    async fn call(
        &self,
        own: Option<&mut Option<TcpStream>>,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&[u8]>,
    ) -> anyhow::Result<Response> {
        self.call_in(&self.controller, own, method, path, content_type, body)
            .await
    }

    /// [`Sim::call`], with short calls on `pool`.
    async fn call_in(
        &self,
        pool: &Controller,
        mut own: Option<&mut Option<TcpStream>>,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&[u8]>,
    ) -> anyhow::Result<Response> {
        let mut stale = None;
        for _ in 0..2 {
            let token = self.token(stale.as_deref()).await?;
            let req = Request {
                method,
                path,
                token: Some(&token),
                content_type,
                body,
            };
            let r = match own.as_deref_mut() {
                Some(conn) => self.controller.call_on(conn, &req, POLL_CALL).await?,
                None => pool.call(&req, SHORT_CALL).await?,
            };
            if r.status == 401 {
                stale = Some(token);
                continue;
            }
            return Ok(r);
        }
        anyhow::bail!("not authorised by the controller")
    }

    async fn json_call<T: serde::Serialize>(
        &self,
        method: &str,
        path: &str,
        body: &T,
    ) -> anyhow::Result<Response> {
        let body = serde_json::to_vec(body)?;
        self.call(None, method, path, "application/json", Some(&body))
            .await
    }
}

/// One node's life: register, then heartbeat and long-poll for good.
async fn node_main(sim: Arc<Sim>, node: Arc<Node>) {
    // Heartbeats spread over one period, as agents started at different
    // times would send them.
    let n = sim.nodes.len().max(1) as u64;
    let period = sim.cfg.heartbeat;
    let mut warned = false;
    while let Err(e) = heartbeat(&sim, &node, true).await {
        if !warned {
            tracing::warn!(host = sim.host(&node), error = %format!("{e:#}"), "cannot register with the controller; retrying");
            warned = true;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (hs, hn) = (sim.clone(), node.clone());
    tokio::spawn(async move {
        let offset = period.mul_f64((hn.index as u64 % n) as f64 / n as f64);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = heartbeat(&hs, &hn, false).await {
                tracing::warn!(host = hs.host(&hn), error = %format!("{e:#}"), "heartbeat failed");
            }
        }
    });
    poll_loop(&sim, &node).await;
}

async fn heartbeat(sim: &Sim, node: &Node, starting: bool) -> anyhow::Result<()> {
    let cached: Vec<String> = std::mem::take(&mut *lock(&node.precached));
    let res = node.driver.host_resources();
    let observed = node.clock.load(Ordering::SeqCst);
    let instances = super::instance_reports(&node.driver, &lock(&node.settled));
    let report = NodeReport {
        protocol: PROTOCOL_VERSION,
        driver: node.driver.name().to_string(),
        vcpus: res.vcpus,
        memory_mb: res.memory_mb,
        disk_gb: res.disk_gb,
        arch: res.arch,
        hypervisor_type: res.hypervisor_type,
        hypervisor_version: res.hypervisor_version,
        cpu_model: res.cpu_model,
        host_ip: "127.0.0.1".into(),
        l3: false,
        agent_url: Some(format!("{}/node/{}", sim.listener_url, node.index)),
        agent_key: Some(node.key.clone()),
        instances,
        cached: cached.clone(),
        starting,
        observed: Some(observed),
        features: vec![
            stratus_wire::volume::FEATURE_SWAP_VOLUME.into(),
            stratus_wire::volume::FEATURE_ONLINE_EXTEND.into(),
            stratus_wire::volume::FEATURE_CONTAINER_EXTEND.into(),
        ],
    };
    let path = format!("/edge/v1/nodes/{}", sim.host(node));
    let body = serde_json::to_vec(&report)?;
    let beat = sim
        .call_in(
            &sim.beats,
            None,
            "PUT",
            &path,
            "application/json",
            Some(&body),
        )
        .await;
    let r = match beat {
        Ok(r) if r.status == 200 => r,
        other => {
            // Say it again next time.
            lock(&node.precached).extend(cached);
            match other {
                Ok(r) => anyhow::bail!("heartbeat refused ({}): {}", r.status, r.text()),
                Err(e) => return Err(e),
            }
        }
    };
    let reply: NodeReply = serde_json::from_slice(&r.body).unwrap_or_default();
    // The fake driver has every image at once.
    if !reply.precache.is_empty() {
        let mut p = lock(&node.precached);
        for img in reply.precache {
            if !p.contains(&img.id) {
                p.push(img.id);
            }
        }
    }
    for l in &reply.leftovers {
        let newer = lock(&node.settled)
            .get(&l.id)
            .is_some_and(|g| *g > l.generation)
            || lock(&node.started)
                .iter()
                .any(|(i, g)| *i == l.id && *g > l.generation);
        if !newer {
            let _ = node.driver.destroy(&l.id);
        }
    }
    for id in &reply.orphans {
        match sim.cfg.orphans {
            OrphanAction::Reap => {
                tracing::warn!(host = sim.host(node), server = %id, "reaping a workload no server owns");
                let _ = node.driver.destroy(id);
            }
            OrphanAction::Log => tracing::warn!(
                host = sim.host(node),
                server = %id,
                "a workload runs here that no server owns (left alone: --orphans log)"
            ),
            OrphanAction::Noop => {}
        }
    }
    Ok(())
}

async fn poll_loop(sim: &Arc<Sim>, node: &Arc<Node>) {
    let mut conn: Option<TcpStream> = None;
    let mut since = 0u64;
    let mut changed: Option<u64> = None;
    let mut last_full = std::time::Instant::now();
    let mut resumed = false;
    loop {
        flush_reports(sim, node).await;
        // A full list now and then all the same: it is what keeps the
        // bookkeeping of deleted servers from growing.
        if last_full.elapsed() > super::FULL_LIST_EVERY {
            changed = None;
        }
        let only_changed = changed.map(|c| format!("&changed={c}")).unwrap_or_default();
        let path = format!(
            "/edge/v1/nodes/{}/servers?since={since}&wait=30{only_changed}",
            sim.host(node)
        );
        let a: Assignments = match sim.call(Some(&mut conn), "GET", &path, "", None).await {
            Ok(r) if r.status == 200 => match serde_json::from_slice(&r.body) {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(host = sim.host(node), error = %e, "the controller's assignments did not parse");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
            },
            Ok(r) => {
                tracing::warn!(host = sim.host(node), code = r.status, body = %r.text(), "polling the controller failed");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(host = sim.host(node), error = %format!("{e:#}"), "polling the controller failed");
                conn = None;
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        since = a.revision;
        changed = a.changes_from;
        if !a.partial {
            last_full = std::time::Instant::now();
        }
        if !resumed && !a.partial {
            resume_guests(node, &a.servers);
            resumed = true;
        }
        // Forget what no listed server and no workload needs any more, so
        // a long run does not grow the node's bookkeeping (a full list
        // only: a partial one leaves the unchanged servers out).
        if !a.partial {
            let mut keep: HashSet<&str> = a.servers.iter().map(|s| s.id.as_str()).collect();
            let listed = node.driver.list();
            keep.extend(listed.iter().map(|(id, _)| id.as_str()));
            lock(&node.started).retain(|(id, _)| keep.contains(id.as_str()));
            lock(&node.settled).retain(|id, _| keep.contains(id.as_str()));
        }
        for s in a.servers {
            let Some(task) = s.task_state.clone() else {
                lock(&node.settled).insert(s.id, s.generation);
                continue;
            };
            if !lock(&node.started).insert((s.id.clone(), s.generation)) {
                continue;
            }
            let (sim, node) = (sim.clone(), node.clone());
            tokio::spawn(async move { run_task(&sim, &node, &s, &task).await });
        }
    }
}

/// After a (re)start: what should run runs (the fake driver starts empty,
/// so every such server is spawned again).
fn resume_guests(node: &Node, servers: &[Assignment]) {
    for s in servers {
        let rescued = s.vm_state == "rescued";
        let should_run = s.vm_state == "active" || rescued || s.should_run;
        if s.task_state.is_some() || !should_run {
            continue;
        }
        let r = match node.driver.power_state(&s.id) {
            PowerState::Running => Ok(()),
            PowerState::NoState => spec(s).and_then(|spec| {
                node.driver.spawn(&spec)?;
                if rescued {
                    node.driver.rescue(&spec)?;
                }
                Ok(())
            }),
            _ => node.driver.start(&s.id).map_err(Into::into),
        };
        if let Err(e) = r {
            tracing::warn!(server = %s.id, error = %format!("{e:#}"), "could not resume");
        }
    }
}

fn spec(s: &Assignment) -> anyhow::Result<InstanceSpec> {
    let user_data = super::user_data(s)?;
    Ok(InstanceSpec {
        uuid: s.id.clone(),
        hostname: s.hostname.clone(),
        image_id: s.image_id.clone(),
        image_file: PathBuf::new(),
        container_format: s.container_format.clone(),
        disk_format: s.disk_format.clone(),
        vcpus: s.vcpus,
        memory_mb: s.memory_mb,
        disk_gb: s.disk_gb,
        user_data,
        meta_data_json: serde_json::to_vec(&s.meta_data).unwrap_or_default(),
        netns: None,
        dns: Vec::new(),
        vm_nics: Vec::new(),
        root_disk: None,
    })
}

async fn run_task(sim: &Sim, node: &Node, s: &Assignment, task: &Task) {
    let d = &node.driver;
    let id = s.id.as_str();
    let exists = d.power_state(id) != PowerState::NoState;
    let stop = Duration::from_secs(60);
    let spawn = || -> anyhow::Result<()> { Ok(d.spawn(&spec(s)?)?) };
    let result: anyhow::Result<()> = async {
        match task {
            Task::Spawning => spawn()?,
            Task::Rebuilding => {
                d.destroy(id)?;
                spawn()?;
                if s.vm_state == "stopped" {
                    d.stop(id, stop)?;
                }
            }
            Task::PoweringOff => d.stop(id, stop)?,
            Task::PoweringOn if !exists => spawn()?,
            Task::PoweringOn => d.start(id)?,
            Task::Rebooting | Task::RebootingHard if !exists => spawn()?,
            Task::Rebooting => d.reboot(id, false)?,
            Task::RebootingHard => d.reboot(id, true)?,
            Task::Pausing | Task::Suspending => d.pause(id)?,
            Task::Unpausing | Task::Resuming => d.unpause(id)?,
            Task::Deleting => d.destroy(id)?,
            Task::Migrating => anyhow::bail!("simulated nodes do not live-migrate"),
            Task::ResizeMigrating => {
                if exists {
                    d.stop(id, stop)?;
                }
                if !target_image_active(sim, s).await
                    && let Err(e) = snapshot(sim, node, s, None).await
                {
                    if s.should_run {
                        let _ = d.start(id);
                    }
                    return Err(e);
                }
            }
            Task::ResizeFinish => {
                if exists {
                    d.destroy(id)?;
                }
                spawn()?;
                if !s.should_run {
                    d.stop(id, stop)?;
                }
            }
            Task::ResizeReverting if s.migration => {
                if s.should_run {
                    if exists {
                        d.start(id)?;
                    } else {
                        spawn()?;
                    }
                }
            }
            Task::ResizePrep | Task::ResizeReverting => {
                d.resize(id, s.vcpus, s.memory_mb, s.disk_gb)?
            }
            Task::Rescuing => d.rescue(&spec(s)?)?,
            Task::Unrescuing => d.unrescue(id)?,
            Task::ImageSnapshot
            | Task::ImageBackup
            | Task::ImagePendingUpload
            | Task::ImageUploading => snapshot(sim, node, s, Some("")).await?,
            Task::Shelving | Task::ShelvingImagePendingUpload | Task::ShelvingImageUploading => {
                if exists {
                    d.stop(id, stop)?;
                }
                if !target_image_active(sim, s).await {
                    snapshot(sim, node, s, Some("shelving_")).await?;
                }
                d.destroy(id)?;
            }
            Task::Other(other) => anyhow::bail!("unknown task {other}"),
        }
        Ok(())
    }
    .await;
    lock(&node.settled).insert(id.to_string(), s.generation);
    let (ok, message) = match result {
        Ok(()) => {
            tracing::debug!(host = sim.host(node), server = %id, task = %task, "task done");
            (true, None)
        }
        Err(e) => {
            let msg = format!("{e:#}");
            tracing::warn!(host = sim.host(node), server = %id, task = %task, error = %msg, "task failed");
            if matches!(task, Task::Spawning | Task::ResizeFinish) {
                let _ = d.destroy(id);
            }
            (false, Some(msg))
        }
    };
    let mark = node.clock.fetch_add(1, Ordering::SeqCst) + 1;
    let report = TaskReport {
        generation: s.generation,
        task: Some(task.to_string()),
        ok,
        power_state: d.power_state(id).nova_code(),
        message,
        agent_key: Some(node.key.clone()),
        mark: Some(mark),
    };
    lock(&node.unsent).push((id.to_string(), report));
    flush_reports(sim, node).await;
}

async fn flush_reports(sim: &Sim, node: &Node) {
    let pending: Vec<(String, TaskReport)> = std::mem::take(&mut *lock(&node.unsent));
    let mut keep = Vec::new();
    for (id, body) in pending {
        let path = format!("/edge/v1/nodes/{}/servers/{id}/report", sim.host(node));
        match sim.json_call("POST", &path, &body).await {
            Ok(r) if r.status == 204 || r.status == 404 => {}
            Ok(r) if r.status < 500 => {
                tracing::warn!(server = %id, code = r.status, body = %r.text(), "report refused");
            }
            _ => keep.push((id, body)),
        }
    }
    lock(&node.unsent).extend(keep);
}

/// Whether the image a snapshot-like task writes is already active (an
/// earlier run of the task finished the upload).
async fn target_image_active(sim: &Sim, s: &Assignment) -> bool {
    let Some(image_id) = s.snapshot_image_id.as_deref() else {
        return false;
    };
    let path = format!("/image/v2/images/{image_id}");
    match sim.call(None, "GET", &path, "", None).await {
        Ok(r) if r.status == 200 => serde_json::from_slice::<serde_json::Value>(&r.body)
            .is_ok_and(|v| v["status"] == "active"),
        _ => false,
    }
}

/// Writes the (fake) snapshot and uploads it to the image the
/// controller made for it, telling the controller the upload's steps.
async fn snapshot(
    sim: &Sim,
    node: &Node,
    s: &Assignment,
    steps: Option<&str>,
) -> anyhow::Result<()> {
    let image_id = s
        .snapshot_image_id
        .as_deref()
        .context("the controller named no image for the snapshot")?;
    let dir = sim.cfg.state_dir.join("snapshots");
    super::private_dir(&dir)?;
    let file = dir.join(format!("{image_id}.tar"));
    let result = async {
        let data = tokio::task::block_in_place(|| -> anyhow::Result<Vec<u8>> {
            node.driver
                .snapshot(&s.id, &file)
                .context("writing the snapshot")?;
            Ok(std::fs::read(&file)?)
        })?;
        if let Some(steps) = steps {
            for step in ["image_pending_upload", "image_uploading"] {
                let p = TaskProgress {
                    generation: s.generation,
                    task: format!("{steps}{step}"),
                    migration: None,
                };
                let path = format!(
                    "/edge/v1/nodes/{}/servers/{}/progress",
                    sim.host(node),
                    s.id
                );
                let _ = sim.json_call("POST", &path, &p).await;
            }
        }
        let path = format!("/image/v2/images/{image_id}/file");
        let r = sim
            .call(None, "PUT", &path, "application/octet-stream", Some(&data))
            .await
            .context("uploading the snapshot")?;
        if r.status != 204 {
            anyhow::bail!(
                "the image service refused the snapshot ({}): {}",
                r.status,
                r.text()
            );
        }
        Ok(())
    }
    .await;
    let _ = std::fs::remove_file(&file);
    result
}

/// The shared listener: `GET /node/{index}/instances/{id}/console` and
/// `.../diagnostics`, with that node's key.
fn serve(sim: &Arc<Sim>, listener: std::net::TcpListener) {
    for stream in listener.incoming().flatten() {
        let sim = sim.clone();
        let _ = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || {
                super::listener::serve_one(
                    stream,
                    |path| {
                        let rest = path.strip_prefix("/node/")?;
                        let (index, rest) = rest.split_once('/')?;
                        let node = sim.nodes.get(index.parse::<usize>().ok()?)?;
                        Some((
                            node.key.as_str(),
                            &node.driver as &dyn Driver,
                            format!("/{rest}"),
                        ))
                    },
                    None,
                )
            });
    }
}
