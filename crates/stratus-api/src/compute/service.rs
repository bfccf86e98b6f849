//! Compute service logic shared by the handlers: configuration, change
//! notification for agents, the heartbeat and the state machine driven by
//! the agents' reports.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde_json::json;
use stratus_store::{Query as StoreQuery, Record, Store};

use super::common::{action_event, instance_not_found, record_action};
use super::config::ComputeConfig;
use super::model::{ComputeNode, Fault, NodeMark, ROOT_DEVICE, Server, ServerGroup, ServerVolume};
use super::states::{power, task, vm};
use crate::identity::policy::Ctx;
use crate::image::model::Image;
use crate::placement::Inventory;
use crate::timeutil::now_us;
use crate::{ApiError, AppState};
use stratus_wire::{
    Assignment, Leftover, NodeRecord, NodeReply, NodeReport, PrecacheImage, RescueImage, TaskReport,
};

/// Compute state held in [`crate::Inner`].
pub struct Compute {
    pub config: ComputeConfig,
    store: Arc<Store>,
    /// Per host: the position its agent polls from, moved on whenever the
    /// agent may have something new to do. Positions are change-log
    /// revisions, so they keep growing across controller restarts and an
    /// agent's position from before a restart is never ahead of a new one.
    changes: Mutex<HashMap<String, HostChannel>>,
    /// Set when the controller shuts down: long polls answer at once so
    /// the listener can close without waiting them out.
    closing: std::sync::atomic::AtomicBool,
    /// Last heartbeat per host, kept in memory between record writes.
    seen: Mutex<HashMap<String, i64>>,
    /// Inventories last written to placement per host.
    inventories: Mutex<HashMap<String, BTreeMap<String, Inventory>>>,
    /// The scheduler thread's queue, once started.
    scheduler: Mutex<Option<std::sync::mpsc::Sender<String>>>,
    /// Per host: what the last full power-state sync saw, so a heartbeat
    /// that reports the same workloads while none of the host's servers
    /// changed skips reading them all again.
    synced: Mutex<HashMap<String, PowerSync>>,
    /// Instance HA's restarts per server (see `ha.rs`).
    pub restarts: super::ha::RestartBudget,
    /// Console URLs issued and not used yet (see `consoles.rs`).
    pub consoles: super::consoles::Tokens,
}

/// The outcome of a host's last full power-state sync (see [`heartbeat`]).
struct PowerSync {
    /// The store's revision read before the host's servers were listed.
    revision: u64,
    /// Newest change-log revision that touched one of the host's servers
    /// or a workload it reported.
    touched: u64,
    at_us: i64,
    starting: bool,
    agent_key: Option<String>,
    instances: BTreeMap<String, stratus_wire::InstanceReport>,
    /// Whether a server was passed over for a report older than its last
    /// task: the next heartbeat has to look again.
    recheck: bool,
    orphans: Vec<String>,
    leftovers: Vec<Leftover>,
}

/// A host agent's long-poll channel: the position it polls from, and the
/// store revision that position is known to cover. The two differ after
/// a wake-up with nothing written (the position moved on by one): a change
/// committed later at that number is not covered and wakes the agent.
struct HostChannel {
    tx: tokio::sync::watch::Sender<u64>,
    covered: u64,
}

impl Compute {
    pub fn new(config: ComputeConfig, store: Arc<Store>) -> Self {
        Compute {
            config,
            store,
            changes: Mutex::new(HashMap::new()),
            closing: std::sync::atomic::AtomicBool::new(false),
            seen: Mutex::new(HashMap::new()),
            inventories: Mutex::new(HashMap::new()),
            scheduler: Mutex::new(None),
            synced: Mutex::new(HashMap::new()),
            restarts: Default::default(),
            consoles: Default::default(),
        }
    }

    /// The scheduler's queue, started by `start` on first use.
    pub fn scheduler_queue(
        &self,
        start: impl FnOnce() -> std::sync::mpsc::Sender<String>,
    ) -> std::sync::mpsc::Sender<String> {
        self.scheduler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(start)
            .clone()
    }

    /// Heartbeats seen since the last flush, for [`flush_heartbeats`].
    fn seen_snapshot(&self) -> HashMap<String, i64> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The store's newest change-log revision (at least 1).
    fn position(&self) -> u64 {
        match self.store.last_revision() {
            Ok(r) => (r.max(1)) as u64,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the change-log position");
                1
            }
        }
    }

    /// The change channel of a host's agent; it starts at the store's
    /// current revision.
    pub fn channel(&self, host: &str) -> tokio::sync::watch::Receiver<u64> {
        let mut changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = changes.get(host) {
            return h.tx.subscribe();
        }
        let at = self.position();
        let tx = tokio::sync::watch::channel(at).0;
        let rx = tx.subscribe();
        changes.insert(host.to_string(), HostChannel { tx, covered: at });
        rx
    }

    /// Moves the channels `which` selects on (to the store's revision,
    /// or on by one where nothing was written, so a waiting poll ends),
    /// unless they already cover revision `seq`.
    fn wake(&self, which: Option<&str>, seq: Option<u64>) {
        let needs = |h: &HostChannel| seq.is_none_or(|s| h.covered < s);
        {
            let changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
            let any = match which {
                Some(host) => changes.get(host).is_some_and(needs),
                None => changes.values().any(needs),
            };
            if !any {
                return;
            }
        }
        let rev = self.position();
        let mut changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let one = |h: &mut HostChannel| {
            if !needs(h) {
                return;
            }
            // What the position covers is what the store had committed
            // (`rev`), never the nudge: a change committed later at the
            // nudged number must still wake the agent.
            h.covered = h.covered.max(rev);
            h.tx.send_modify(|v| *v = (*v + 1).max(rev));
        };
        match which {
            Some(host) => {
                if let Some(h) = changes.get_mut(host) {
                    one(h);
                }
            }
            None => changes.values_mut().for_each(one),
        }
    }

    /// Wakes the agent of `host` for a change at revision `seq`, unless
    /// its position already covers it (the writer woke it itself).
    pub fn notify_upto(&self, host: &str, seq: u64) {
        self.wake(Some(host), Some(seq));
    }

    /// Wakes every agent that waits (after a gap in the change log).
    pub fn notify_all(&self) {
        self.wake(None, None);
    }

    /// Wakes every agent whose position does not cover `seq` (a change
    /// every node may have to wire, such as a security group rule).
    pub fn notify_all_upto(&self, seq: u64) {
        self.wake(None, Some(seq));
    }

    /// Ends every long poll now and makes new ones answer at once (the
    /// controller is shutting down).
    pub fn close(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for h in self
            .changes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            h.tx.send_modify(|v| *v += 1);
        }
    }

    /// Whether [`Compute::close`] was called.
    pub fn is_closing(&self) -> bool {
        self.closing.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Wakes the agent of `host`, if it waits for work: its position moves
    /// to the store's revision (which includes the write that asked for
    /// this), or on by one where nothing was written.
    pub fn notify(&self, host: Option<&str>) {
        if let Some(host) = host {
            self.wake(Some(host), None);
        }
    }

    /// A change at revision `seq` touched a server on `host` (or one it
    /// reported): its next heartbeat runs a full power-state sync.
    fn touch_host(&self, host: &str, seq: u64) {
        if let Some(p) = self
            .synced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(host)
        {
            p.touched = p.touched.max(seq);
        }
    }

    /// A change at `seq` to server `id`: the hosts whose last report
    /// listed it sync in full next time (a server that moved away or was
    /// deleted leaves a copy there to report back).
    fn touch_reporters(&self, id: &str, seq: u64) {
        for p in self
            .synced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values_mut()
        {
            if p.instances.contains_key(id) {
                p.touched = p.touched.max(seq);
            }
        }
    }

    /// Every host syncs in full at its next heartbeat (the change log had
    /// a gap).
    pub fn touch_all(&self) {
        let rev = self.position();
        for p in self
            .synced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values_mut()
        {
            p.touched = p.touched.max(rev);
        }
    }

    /// A full power-state sync of `host` starts: answers the store's
    /// revision it reads from. Changes that touch the host from now on
    /// are kept, so they count against this sync.
    fn begin_sync(&self, host: &str) -> u64 {
        let revision = self.position();
        self.synced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(host.to_string())
            .or_insert_with(|| PowerSync {
                revision: 0,
                touched: 0,
                at_us: 0,
                starting: false,
                agent_key: None,
                instances: BTreeMap::new(),
                recheck: true,
                orphans: Vec::new(),
                leftovers: Vec::new(),
            });
        revision
    }

    /// A full sync of `host` ended with `done`; changes counted since it
    /// began are kept.
    fn end_sync(&self, host: &str, mut done: PowerSync) {
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = synced.get(host) {
            done.touched = done.touched.max(old.touched);
        }
        synced.insert(host.to_string(), done);
    }

    /// The last full sync's answer for `host`, when a heartbeat reporting
    /// `r` can reuse it: the same workloads, nothing of the host's changed
    /// since, and the periodic full sync not yet due.
    fn reusable_sync(
        &self,
        host: &str,
        r: &NodeReport,
        now: i64,
    ) -> Option<(Vec<String>, Vec<Leftover>)> {
        let every = self.config.sync_power_state_interval_s as i64 * 1_000_000;
        let synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        let p = synced.get(host)?;
        let reuse = !p.recheck
            && p.touched <= p.revision
            && now - p.at_us < every
            && p.starting == r.starting
            && p.agent_key == r.agent_key
            && p.instances == r.instances;
        reuse.then(|| (p.orphans.clone(), p.leftovers.clone()))
    }

    /// Heartbeat times kept from before a restart (newer ones win).
    pub fn prime_seen(&self, seen: HashMap<String, i64>) {
        let mut map = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for (host, at) in seen {
            let e = map.entry(host).or_insert(at);
            *e = (*e).max(at);
        }
    }

    /// A heartbeat of `host` arrived at `at`: the node is alive from then
    /// on, however long its report then waits for a worker.
    pub fn saw(&self, host: &str, at: i64) {
        let mut map = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let e = map.entry(host.to_string()).or_insert(at);
        *e = (*e).max(at);
    }

    pub fn last_seen(&self, host: &str) -> Option<i64> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(host)
            .copied()
    }
}

/// Records a heartbeat: the node's record, its placement provider and
/// inventories, and the power states it reports. Answers which reported
/// workloads have no server (orphans) for the agent to reap or log.
pub fn heartbeat(state: &AppState, host: &str, r: &NodeReport) -> Result<NodeReply, ApiError> {
    let now = now_us();
    let cfg = &state.compute.config;
    let existing = state.store.get::<ComputeNode>(host)?;
    let changed = existing.as_ref().is_none_or(|n| {
        n.vcpus != r.vcpus
            || n.memory_mb != r.memory_mb
            || n.disk_gb != r.disk_gb
            || n.agent_url != r.agent_url
            || n.agent_key != r.agent_key
            || n.driver != r.driver
            || n.hypervisor_type != r.hypervisor_type
            || n.hypervisor_version != r.hypervisor_version
            || n.host_ip != r.host_ip
            || n.l3 != r.l3
            || n.features != r.features
    });
    // The provider and its inventory before a new node's record: a node
    // listed as a hypervisor can be scheduled to at once.
    let uuid = existing
        .as_ref()
        .map(|n| n.uuid.clone())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    // Placement: one provider per node with its inventories.
    let mut inv = BTreeMap::new();
    inv.insert(
        "VCPU".to_string(),
        Inventory {
            total: r.vcpus as u64,
            reserved: cfg.reserved_host_cpus,
            min_unit: 1,
            max_unit: r.vcpus as u64,
            step_size: 1,
            allocation_ratio: cfg.cpu_allocation_ratio,
        },
    );
    inv.insert(
        "MEMORY_MB".to_string(),
        Inventory {
            total: r.memory_mb,
            reserved: cfg.reserved_host_memory_mb.min(r.memory_mb),
            min_unit: 1,
            max_unit: r.memory_mb,
            step_size: 1,
            allocation_ratio: cfg.ram_allocation_ratio,
        },
    );
    if r.disk_gb > 0 {
        inv.insert(
            "DISK_GB".to_string(),
            Inventory {
                total: r.disk_gb,
                reserved: cfg.reserved_host_disk_mb.div_ceil(1024).min(r.disk_gb),
                min_unit: 1,
                max_unit: r.disk_gb,
                step_size: 1,
                allocation_ratio: cfg.disk_allocation_ratio,
            },
        );
    }
    let same = state
        .compute
        .inventories
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(host)
        .is_some_and(|old| inv_eq(old, &inv));
    if !same {
        state
            .placement
            .ensure_provider(&uuid, host)
            .map_err(|e| ApiError::internal(format!("placement: {e}")))?;
        state
            .placement
            .set_inventories(&uuid, &inv)
            .map_err(|e| ApiError::internal(format!("placement: {e}")))?;
        let mut traits = vec!["COMPUTE_NODE".to_string()];
        if r.arch == "x86_64" {
            traits.push("HW_ARCH_X86_64".into());
        } else if r.arch == "aarch64" {
            traits.push("HW_ARCH_AARCH64".into());
        }
        let _ = state.placement.set_traits(&uuid, &traits);
        state
            .compute
            .inventories
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host.to_string(), inv);
    }

    let node = if changed {
        state.store.write(|tx| {
            let mut n = tx.get::<ComputeNode>(host)?.unwrap_or(ComputeNode {
                id: host.to_string(),
                seq: 0,
                uuid: uuid.clone(),
                driver: String::new(),
                vcpus: 0,
                memory_mb: 0,
                disk_gb: 0,
                arch: String::new(),
                hypervisor_type: String::new(),
                hypervisor_version: 0,
                cpu_model: String::new(),
                host_ip: String::new(),
                l3: false,
                features: Vec::new(),
                agent_url: None,
                agent_key: None,
                disabled: false,
                disabled_reason: None,
                forced_down: false,
                precache: Vec::new(),
                last_seen_us: now,
                created_us: now,
                updated_us: now,
            });
            n.driver = r.driver.clone();
            n.vcpus = r.vcpus;
            n.memory_mb = r.memory_mb;
            n.disk_gb = r.disk_gb;
            n.arch = r.arch.clone();
            n.hypervisor_type = r.hypervisor_type.clone();
            n.hypervisor_version = r.hypervisor_version;
            n.cpu_model = r.cpu_model.clone();
            n.host_ip = r.host_ip.clone();
            n.l3 = r.l3;
            n.features = r.features.clone();
            n.agent_url = r.agent_url.clone();
            n.agent_key = r.agent_key.clone();
            n.last_seen_us = now;
            n.updated_us = now;
            if n.seq == 0 {
                n.seq = tx.insert(&n)?;
            }
            tx.upsert(&n)?;
            Ok::<_, ApiError>(n)
        })?
    } else {
        existing.expect("checked above")
    };
    state
        .compute
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(host.to_string())
        .and_modify(|t| *t = (*t).max(now))
        .or_insert(now);

    let (orphans, leftovers) = match state.compute.reusable_sync(host, r, now) {
        Some(last) => last,
        None => sync_power_states(state, host, r, now)?,
    };
    // Images to cache ahead (2.81), less those the node now has.
    let mut precache = node.precache.clone();
    if !r.cached.is_empty() && precache.iter().any(|i| r.cached.contains(i)) {
        precache = state.store.write(|tx| {
            let Some(mut n) = tx.get::<ComputeNode>(host)? else {
                return Ok::<_, ApiError>(Vec::new());
            };
            n.precache.retain(|i| !r.cached.contains(i));
            tx.update(&n)?;
            Ok(n.precache)
        })?;
    }
    let mut wanted = Vec::new();
    for id in &precache {
        if let Some(img) = state.store.get::<Image>(id)?
            && img.status == crate::image::model::status::ACTIVE
        {
            wanted.push(PrecacheImage {
                id: id.clone(),
                checksum: img.os_hash_value,
                container_format: img.container_format,
            });
        }
    }
    Ok(NodeReply {
        node: Some(NodeRecord {
            uuid: node.uuid,
            disabled: node.disabled,
        }),
        orphans,
        leftovers,
        precache: wanted,
    })
}

/// Power states, as Nova's `_sync_power_states` does: a workload that
/// stopped by itself is SHUTOFF; one running although it should not is
/// stopped again. Also answers which reported workloads have no server
/// (orphans) and which are copies of servers that have moved on.
fn sync_power_states(
    state: &AppState,
    host: &str,
    r: &NodeReport,
    now: i64,
) -> Result<(Vec<String>, Vec<Leftover>), ApiError> {
    let revision = state.compute.begin_sync(host);
    let servers = state.store.list::<Server>(&StoreQuery::parent(host))?;
    let mut recheck = false;
    let mut touched = false;
    // A listing taken before a task was settled (a spawn that finished
    // while the heartbeat was on its way) must not undo the task.
    let stale = |s: &Server| {
        s.settled
            .as_ref()
            .is_some_and(|m| m.is_after(r.agent_key.as_deref(), r.observed))
    };
    for s in &servers {
        if s.task_state.is_some() {
            continue;
        }
        if stale(s) {
            recheck = true;
            continue;
        }
        let seen = r.instances.get(&s.id).copied();
        let actual = seen.map(|i| i.power_state).unwrap_or(power::NOSTATE);
        // A workload the agent has not caught up with says nothing yet.
        if seen.is_some_and(|i| i.generation != s.generation) {
            recheck = true;
            continue;
        }
        let fix = match s.vm_state.as_str() {
            // Agents restart what should run when they start; at other
            // times a stopped workload means the guest shut down.
            vm::ACTIVE if actual != power::RUNNING && !r.starting => Some((vm::STOPPED, None)),
            vm::STOPPED if actual == power::RUNNING => {
                Some((vm::STOPPED, Some(task::POWERING_OFF)))
            }
            _ => None,
        };
        if fix.is_some() || s.power_state != actual {
            state.store.write(|tx| {
                let Some(mut cur) = tx.get::<Server>(&s.id)? else {
                    return Ok::<_, ApiError>(());
                };
                if cur.task_state.is_some() || cur.generation != s.generation || stale(&cur) {
                    return Ok(());
                }
                cur.power_state = actual;
                let restarted = cur.vm_state == vm::ACTIVE
                    && fix.is_some()
                    && super::ha::restart_in(state, tx, &mut cur)?;
                if restarted {
                    // Instance HA starts it again (see `ha.rs`).
                } else if let Some((v, t)) = fix {
                    tracing::info!(server = %cur.id, host, from = %cur.vm_state, to = v, power = actual, "power state sync");
                    cur.vm_state = v.into();
                    cur.task_state = t.map(str::to_string);
                    if t.is_some() {
                        cur.generation += 1;
                    }
                }
                cur.updated_us = now_us();
                tx.update(&cur)?;
                Ok(())
            })?;
            touched = true;
        }
    }
    if touched {
        state.compute.notify(Some(host));
    }
    let orphans: Vec<&String> = r
        .instances
        .keys()
        .filter(|id| !servers.iter().any(|s| &s.id == *id))
        .collect();
    // An orphan may be a server that was moved or deleted while the node
    // was down: only report ids with no server at all. A server that has
    // moved on (a migration confirmed or reverted, a shelve) leaves a copy
    // the node must remove; the source of a migration waiting for
    // confirmation keeps its copy.
    let mut truly = Vec::new();
    let mut leftovers = Vec::new();
    for id in orphans {
        match state.store.get::<Server>(id)? {
            None => truly.push(id.clone()),
            Some(s) if s.host.as_deref() == Some(host) => {}
            Some(s) => {
                // The destination of a live migration under way holds
                // the copy being streamed to.
                let keep = s
                    .resize
                    .as_ref()
                    .is_some_and(|j| j.source_host.as_deref() == Some(host))
                    || s.resize
                        .as_ref()
                        .is_some_and(|j| j.live && j.dest_host.as_deref() == Some(host));
                if !keep {
                    // With the generation: a node that has since acted on
                    // a newer request for it (the server came back) keeps
                    // its copy.
                    leftovers.push(Leftover {
                        id: id.clone(),
                        generation: s.generation,
                    });
                }
            }
        }
    }
    state.compute.end_sync(
        host,
        PowerSync {
            revision,
            touched: 0,
            at_us: now,
            starting: r.starting,
            agent_key: r.agent_key.clone(),
            instances: r.instances.clone(),
            recheck,
            orphans: truly.clone(),
            leftovers: leftovers.clone(),
        },
    );
    Ok((truly, leftovers))
}

fn inv_eq(a: &BTreeMap<String, Inventory>, b: &BTreeMap<String, Inventory>) -> bool {
    a.len() == b.len()
        && a.iter().zip(b.iter()).all(|((ka, va), (kb, vb))| {
            ka == kb
                && va.total == vb.total
                && va.reserved == vb.reserved
                && va.max_unit == vb.max_unit
                && (va.allocation_ratio - vb.allocation_ratio).abs() < f64::EPSILON
        })
}

/// A volume of a server on node `server_host` as that node sees it:
/// where its file is, and for a volume of another node, that node's NBD
/// export of it.
fn attached_volume(
    state: &AppState,
    v: &ServerVolume,
    server_host: Option<&str>,
) -> Result<stratus_wire::volume::AttachedVolume, ApiError> {
    let vol = state
        .store
        .get::<crate::volume::model::Volume>(&v.volume_id)?;
    let qos = match &vol {
        Some(x) => crate::volume::qos::front_end_limits(state, &x.volume_type_id)?,
        None => Default::default(),
    };
    let size_gb = vol.as_ref().map_or(0, |x| x.size);
    // A volume moving to another storage node under its running guest
    // is opened at the new place (the node mirrors onto it).
    let moving = v
        .swap_from
        .as_ref()
        .is_some_and(|f| f.volume_id == v.volume_id);
    let host = match moving {
        true => crate::volume::moves::mirror_target(state, &v.volume_id)?
            .or_else(|| vol.and_then(|x| x.host)),
        false => vol.and_then(|x| x.host),
    };
    let nbd = match host.as_deref() {
        Some(h) if server_host.is_some_and(|s| s != h) => nbd_target(state, h, &v.volume_id)?,
        _ => None,
    };
    Ok(stratus_wire::volume::AttachedVolume {
        volume_id: v.volume_id.clone(),
        device: v.device.clone(),
        host,
        qos,
        nbd,
        size_gb,
        swap_from: v.swap_from.as_ref().map(|f| f.volume_id.clone()),
    })
}

/// Where another node reaches volume `volume_id` of storage node `host`:
/// the node's NBD server at the address other nodes reach it on.
pub(crate) fn nbd_target(
    state: &AppState,
    host: &str,
    volume_id: &str,
) -> Result<Option<stratus_wire::volume::NbdTarget>, ApiError> {
    let Some(server) = state
        .store
        .get::<crate::volume::model::StorageNode>(host)?
        .and_then(|n| n.nbd)
    else {
        return Ok(None);
    };
    let Some(node) = state.store.get::<ComputeNode>(host)? else {
        return Ok(None);
    };
    let Some(addr) =
        super::agent_client::stream_host(&node.host_ip, node.agent_url.as_deref().unwrap_or(""))
    else {
        return Ok(None);
    };
    Ok(Some(stratus_wire::volume::NbdTarget {
        host: addr
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port: server.port,
        export: volume_id.to_string(),
        psk_identity: server.psk_identity,
        psk_key: server.psk_key,
    }))
}

/// What an agent needs to run `s`.
pub fn assignment(state: &AppState, s: &Server) -> Result<Assignment, ApiError> {
    // An unshelved server boots from its shelved image, a migrated one
    // from its transfer image.
    let job = s.resize.as_ref();
    let transfer = job.and_then(|j| j.transfer_image.as_ref());
    let image_id = match (s.task_state.as_deref(), transfer) {
        (Some(task::RESIZE_FINISH), Some(t)) => t,
        _ => s.shelved_image.as_ref().unwrap_or(&s.image_ref),
    };
    let img = state.store.get::<Image>(image_id)?;
    let flavor = super::resize::flavor_for_task(s);
    let mut keys = serde_json::Map::new();
    let mut key_list = Vec::new();
    if let (Some(n), Some(d)) = (&s.key_name, &s.key_data) {
        keys.insert(n.clone(), json!(d));
        let kind = if d.starts_with("-----BEGIN CERTIFICATE") {
            "x509"
        } else {
            "ssh"
        };
        key_list.push(json!({"name": n, "type": kind, "data": d}));
    }
    let meta = json!({
        "uuid": s.id,
        "name": s.name,
        "hostname": s.hostname,
        "availability_zone": s.availability_zone,
        "project_id": s.project_id,
        "launch_index": s.launch_index,
        "meta": s.metadata,
        "public_keys": keys,
        "keys": key_list,
        "devices": [],
    });
    let rescue = match &s.rescue_image {
        Some(r) => {
            let ri = state.store.get::<Image>(r)?;
            Some(RescueImage {
                image_id: r.clone(),
                container_format: ri
                    .as_ref()
                    .and_then(|i| i.container_format.clone())
                    .unwrap_or_default(),
                disk_format: ri
                    .as_ref()
                    .and_then(|i| i.disk_format.clone())
                    .unwrap_or_default(),
                image_checksum: ri.and_then(|i| i.os_hash_value),
            })
        }
        None => None,
    };
    let live = s.resize.as_ref().filter(|j| j.live).and_then(|j| {
        Some(stratus_wire::LiveMigration {
            uri: j.live_uri.clone()?,
            dest_host: j.dest_host.clone()?,
            abort: j.abort,
            force_complete: j.force_complete,
        })
    });
    Ok(Assignment {
        id: s.id.clone(),
        name: s.name.clone(),
        hostname: s.hostname.clone(),
        generation: s.generation,
        vm_state: s.vm_state.clone(),
        // A live migration's source waits until the destination is ready.
        task_state: s
            .task_state
            .as_deref()
            .filter(|t| *t != task::MIGRATING || live.is_some())
            .map(stratus_wire::Task::from),
        live_migration: live,
        image_id: image_id.clone(),
        container_format: match s.boot_volume() {
            Some(_) => "bare".into(),
            None => img
                .as_ref()
                .and_then(|i| i.container_format.clone())
                .unwrap_or_default(),
        },
        disk_format: match s.boot_volume() {
            Some(_) => "qcow2".into(),
            None => img
                .as_ref()
                .and_then(|i| i.disk_format.clone())
                .unwrap_or_default(),
        },
        image_checksum: img.as_ref().and_then(|i| i.os_hash_value.clone()),
        vcpus: flavor.vcpus,
        memory_mb: flavor.ram,
        disk_gb: flavor.disk,
        user_data: s.user_data.clone(),
        meta_data: meta,
        snapshot_image_id: match (s.task_state.as_deref(), transfer) {
            (Some(task::RESIZE_MIGRATING), Some(t)) => Some(t.clone()),
            _ => s.snapshot.as_ref().map(|j| j.image_id.clone()),
        },
        migration: job.is_some_and(|j| j.is_migration()),
        single_use_image: image_id != &s.image_ref,
        volumes: s
            .volumes
            .iter()
            .filter(|v| v.state != "detaching" && v.device != ROOT_DEVICE)
            .map(|v| attached_volume(state, v, s.host.as_deref()))
            .collect::<Result<Vec<_>, ApiError>>()?,
        boot_volume: s
            .boot_volume()
            .map(|v| attached_volume(state, v, s.host.as_deref()))
            .transpose()?,
        volumes_pending: s.volumes.iter().any(|v| v.state != "attached"),
        volumes_detaching: s
            .volumes
            .iter()
            .filter(|v| v.state == "detaching")
            .map(|v| v.volume_id.clone())
            .collect(),
        rescue,
        should_run: match s.vm_state.as_str() {
            vm::ACTIVE | vm::RESCUED => true,
            vm::RESIZED => s
                .resize
                .as_ref()
                .is_some_and(|j| j.old_vm_state == vm::ACTIVE),
            _ => false,
        },
    })
}

/// Removes a server for good: its record, its allocations and its place
/// in a server group. Its action records stay (2.21 shows them).
pub fn purge(state: &AppState, id: &str) -> Result<(), ApiError> {
    state
        .placement
        .release(id)
        .map_err(|e| ApiError::internal(format!("placement: {e}")))?;
    if let Some(s) = state.store.get::<Server>(id)? {
        super::snapshots::abandon(state, &s);
        super::resize::abandon_claims(state, &s);
    }
    state
        .store
        .write(|tx| {
            if let Some(s) = tx.get::<Server>(id)? {
                crate::volume::attach::release_server(tx, &s)?;
                // delete_on_termination: the volume goes with the server
                // (kept when another server still has it or it has
                // snapshots, as Cinder would refuse the delete).
                // (Neither volume of a swap under way: the new one holds
                // a partial copy, the old one the data.)
                for sv in s
                    .volumes
                    .iter()
                    .filter(|v| v.delete_on_termination && v.swap_from.is_none())
                {
                    let Some(mut v) = tx.get::<crate::volume::model::Volume>(&sv.volume_id)? else {
                        continue;
                    };
                    if !v.attachments.is_empty() {
                        continue;
                    }
                    if let Err(e) = crate::volume::volumes::start_delete(tx, &mut v, false) {
                        tracing::warn!(server = id, volume = %v.id, error = %e.message, "volume kept: not deleted with its server");
                    }
                }
                if let Some(g) = &s.server_group
                    && let Some(mut grp) = tx.get::<ServerGroup>(g)?
                {
                    grp.members.retain(|m| m != id);
                    tx.update(&grp)?;
                }
                action_event(
                    tx,
                    id,
                    "compute_terminate_instance",
                    true,
                    None,
                    s.host.as_deref(),
                )?;
                super::resize::abandon(tx, &s)?;
                crate::network::nova::unplug(tx, &s.nics).map_err(super::nics::nova_error)?;
                account_server(tx, &s, -1)?;
                tx.delete::<Server>(id)?;
                return Ok::<_, ApiError>((s.host, s.shelved_image));
            }
            Ok((None, None))
        })
        .map(|(host, shelved)| {
            if let Some(image) = shelved {
                super::snapshots::drop_image(state, id, &image);
            }
            state.compute.notify(host.as_deref())
        })
}

/// Applies an agent's report of a finished (or failed) task.
pub fn task_done(state: &AppState, host: &str, id: &str, r: &TaskReport) -> Result<(), ApiError> {
    let Some(s) = state.store.get::<Server>(id)? else {
        return Ok(());
    };
    // A snapshot's progress moves its task_state on at the same generation.
    let same_task = s.task_state == r.task
        || s.task_state.as_deref().is_some_and(task::is_image)
            && r.task.as_deref().is_some_and(task::is_image)
        || s.task_state.as_deref().is_some_and(task::is_shelving)
            && r.task.as_deref().is_some_and(task::is_shelving);
    if s.host.as_deref() != Some(host) || s.generation != r.generation || !same_task {
        // Superseded by a newer request: the agent will see that one.
        return Ok(());
    }
    let task_name = s.task_state.clone().unwrap_or_default();
    let shelving = task::is_shelving(&task_name);
    let event = match (task::is_image(&task_name), &s.snapshot) {
        (true, Some(j)) if j.backup.is_some() => "compute_backup_instance".to_string(),
        (true, _) => "compute_snapshot_instance".to_string(),
        _ if shelving => "compute_shelve_instance".to_string(),
        _ if task_name == task::SPAWNING && s.shelved_image.is_some() => {
            "compute_unshelve_instance".to_string()
        }
        _ => format!("compute_{}", task_name.replace('-', "_")),
    };
    if task_name == task::DELETING && r.ok {
        return purge(state, id);
    }
    if task_name == task::SPAWNING && !r.ok {
        return reschedule(
            state,
            &s,
            host,
            r.message.as_deref().unwrap_or("build failed"),
        );
    }
    let now = now_us();
    let mut unshelved = None;
    let (job, next) = state.store.write(|tx| {
        let Some(mut cur) = tx.get::<Server>(id)? else {
            return Ok::<_, ApiError>((None, None));
        };
        if cur.generation != r.generation {
            return Ok((None, None));
        }
        cur.power_state = r.power_state;
        if let (Some(agent), Some(seq)) = (&r.agent_key, r.mark) {
            cur.settled = Some(NodeMark {
                agent: agent.clone(),
                seq,
            });
        }
        let mut next = None;
        if task::is_resize(&task_name) || task_name == task::MIGRATING {
            if !r.ok {
                tracing::warn!(server = %cur.id, task = %task_name, message = ?r.message, "resize or migration step failed on the node");
            }
            next = Some(super::resize::finish(tx, &mut cur, &task_name, r.ok)?);
        } else if r.ok {
            cur.vm_state = match task_name.as_str() {
                task::SPAWNING | task::POWERING_ON | task::REBOOTING | task::REBOOTING_HARD
                | task::UNPAUSING | task::RESUMING => vm::ACTIVE.into(),
                task::POWERING_OFF => vm::STOPPED.into(),
                task::RESCUING => vm::RESCUED.into(),
                task::UNRESCUING => vm::ACTIVE.into(),
                task::PAUSING => vm::PAUSED.into(),
                task::SUSPENDING => vm::SUSPENDED.into(),
                task::REBUILDING => {
                    super::common::evacuation_finished(tx, &cur.id, true)?;
                    if r.power_state == power::RUNNING {
                        vm::ACTIVE.into()
                    } else {
                        vm::STOPPED.into()
                    }
                }
                _ => cur.vm_state.clone(),
            };
            if task_name == task::SPAWNING {
                cur.launched_us = Some(now);
                unshelved = cur.shelved_image.take();
            }
            if task_name == task::UNRESCUING {
                cur.rescue_image = None;
            }
            cur.fault = None;
        } else {
            tracing::warn!(server = %cur.id, task = %task_name, message = ?r.message, "task failed on the node");
            // A failed rescue leaves the server in ERROR, as in Nova (the
            // node has put the original workload back).
            if task_name == task::RESCUING {
                cur.rescue_image = None;
            }
            if task_name == task::REBUILDING {
                super::common::evacuation_finished(tx, &cur.id, false)?;
            }
            if task_name == task::REBUILDING || task_name == task::RESCUING {
                cur.vm_state = vm::ERROR.into();
                cur.fault = Some(Fault {
                    code: 500,
                    message: r
                        .message
                        .clone()
                        .unwrap_or_else(|| {
                            let what = if task_name == task::RESCUING { "rescue" } else { "rebuild" };
                            format!("{what} failed")
                        }),
                    details: String::new(),
                    created_us: now,
                });
            }
        }
        cur.task_state = None;
        if let Some(t) = next.as_ref().and_then(|n| n.task) {
            cur.task_state = Some(t.into());
            cur.generation += 1;
        }
        let job = cur.snapshot.take();
        if shelving
            && r.ok
            && let Some(j) = &job
        {
            super::shelve::offloaded(&mut cur, &j.image_id);
        }
        cur.updated_us = now;
        tx.update(&cur)?;
        action_event(tx, id, &event, r.ok, r.message.as_deref(), Some(host))?;
        Ok((job, next))
    })?;
    if let Some(job) = job {
        super::snapshots::finish(state, id, &job, r.ok);
        if shelving && r.ok {
            // Offloaded: the node holds nothing for it any more.
            state
                .placement
                .release(id)
                .map_err(|e| ApiError::internal(format!("placement: {e}")))?;
        }
    }
    if let Some(image) = unshelved {
        super::snapshots::drop_image(state, id, &image);
    }
    if let Some(next) = next {
        super::resize::after(state, id, next);
    }
    state.compute.notify(Some(host));
    Ok(())
}

/// A build failed on `host`: try another node, or give up with ERROR.
fn reschedule(state: &AppState, s: &Server, host: &str, why: &str) -> Result<(), ApiError> {
    state
        .placement
        .release(&s.id)
        .map_err(|e| ApiError::internal(format!("placement: {e}")))?;
    let attempts = s.tried_hosts.len() + 1;
    let give_up = attempts >= state.compute.config.max_attempts;
    let now = now_us();
    state.store.write(|tx| {
        let Some(mut cur) = tx.get::<Server>(&s.id)? else {
            return Ok::<_, ApiError>(());
        };
        cur.tried_hosts.push(host.to_string());
        cur.host = None;
        cur.node = None;
        cur.generation += 1;
        cur.updated_us = now;
        if give_up {
            // An unshelve that found no node to boot on stays shelved (it
            // can be unshelved again), as in Nova; a build ends in ERROR.
            if cur.shelved_image.is_none() {
                cur.vm_state = vm::ERROR.into();
            }
            cur.task_state = None;
            cur.fault = Some(Fault {
                code: 500,
                message: format!(
                    "Exceeded maximum number of retries. Exceeded max scheduling attempts {} for instance {}. Last exception: {why}",
                    state.compute.config.max_attempts, cur.id
                ),
                details: why.to_string(),
                created_us: now,
            });
            let event = if cur.shelved_image.is_some() {
                "compute_unshelve_instance"
            } else {
                "compute_build_and_run_instance"
            };
            action_event(tx, &cur.id, event, false, Some(why), Some(host))?;
        } else {
            cur.task_state = Some(task::SCHEDULING.into());
        }
        tx.update(&cur)?;
        Ok(())
    })?;
    if !give_up {
        tracing::info!(server = %s.id, host, why, "build failed; rescheduling");
        super::scheduler::submit(state, vec![s.id.clone()]);
    }
    state.compute.notify(Some(host));
    Ok(())
}

/// Counts (`sign` 1) or uncounts (-1) server `s` in its project's usage,
/// as a create and a delete do (a site taking a server from its parent).
pub fn account_server(tx: &stratus_store::Tx, s: &Server, sign: i64) -> Result<(), ApiError> {
    // A resize counts the new flavor from the moment it is asked.
    let counted = super::resize::counted(s);
    super::quotas::account(
        tx,
        &s.project_id,
        &s.user_id,
        counted.vcpus,
        counted.ram,
        sign,
    )
}

/// On start: servers a crash left waiting for the scheduler are handed to
/// it again; deletes of servers on nodes that are gone finish.
pub fn recover(state: &AppState) -> Result<(), ApiError> {
    // When each node was last heard of before the restart.
    state
        .compute
        .prime_seen(state.store.liveness(ComputeNode::KIND)?);
    state.store.write(super::quotas::rebuild_tree_usage)?;
    let servers = state.store.list::<Server>(&StoreQuery::all())?;
    let waiting: Vec<String> = servers
        .iter()
        .filter(|s| super::scheduler::waits_here(state, s))
        .map(|s| s.id.clone())
        .collect();
    if !waiting.is_empty() {
        tracing::info!(
            count = waiting.len(),
            "resuming scheduling of servers a restart interrupted"
        );
        super::scheduler::submit(state, waiting);
    }
    Ok(())
}

/// A change read from the log (see `crate::follow`): wakes the agents of
/// the hosts a changed server is on or moving between, unless the writer
/// already woke them.
pub fn on_change(state: &AppState, c: &stratus_store::Change) {
    if crate::network::nova::is_wiring_kind(&c.kind) {
        state.compute.notify_all_upto(c.seq as u64);
        return;
    }
    if c.kind != Server::KIND {
        return;
    }
    let seq = c.seq as u64;
    state.compute.touch_reporters(&c.id, seq);
    let Some(s) = c
        .body
        .as_deref()
        .and_then(|b| serde_json::from_str::<Server>(b).ok())
    else {
        return;
    };
    let job = s.resize.as_ref();
    let hosts = [
        s.host.as_deref(),
        job.and_then(|j| j.source_host.as_deref()),
        job.and_then(|j| j.dest_host.as_deref()),
    ];
    for h in hosts.into_iter().flatten() {
        state.compute.touch_host(h, seq);
        state.compute.notify_upto(h, seq);
    }
}

/// Writes the heartbeats seen in memory to the store's liveness table,
/// all in one transaction (one disk sync however many nodes there are), so
/// a restarted controller knows when each node was last heard of.
/// Liveness is not desired state: it adds nothing to the change log.
pub fn flush_heartbeats(state: &AppState) -> Result<(), ApiError> {
    let seen = state.compute.seen_snapshot();
    if seen.is_empty() {
        return Ok(());
    }
    state.store.write(|tx| {
        for (host, at) in &seen {
            tx.set_liveness(ComputeNode::KIND, host, *at)?;
        }
        Ok::<_, ApiError>(())
    })
}

/// Delete: on a live node the agent tears the workload down first; a
/// server with no host, or on a node that is down, goes at once (Nova's
/// local delete; the agent reaps the leftover when it comes back).
pub fn request_delete(state: &AppState, ctx: &Ctx, id: &str, req_id: &str) -> Result<(), ApiError> {
    let s = state.store.write(|tx| {
        let mut s = tx
            .get::<Server>(id)?
            .ok_or_else(|| instance_not_found(id))?;
        record_action(tx, &s, "delete", ctx, req_id)?;
        let node_up = match &s.host {
            Some(h) => tx
                .get::<ComputeNode>(h)?
                .is_some_and(|n| super::zones::is_up(state, &n)),
            None => false,
        };
        if node_up {
            s.task_state = Some(task::DELETING.into());
            s.generation += 1;
            s.updated_us = now_us();
            tx.update(&s)?;
        }
        Ok::<_, ApiError>((s, node_up))
    })?;
    if !s.1 {
        super::service::purge(state, id)?;
    }
    state.compute.notify(s.0.host.as_deref());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Probe {
        id: String,
    }
    impl stratus_store::Record for Probe {
        const KIND: &'static str = "probe";
        fn id(&self) -> &str {
            &self.id
        }
    }

    /// A wake-up with nothing written moves the position past the store's
    /// revision; the change committed next at that number must still wake
    /// the agent (it used to look covered, and the agent slept on).
    #[test]
    fn a_change_at_a_nudged_position_still_wakes_the_agent() {
        let store = Arc::new(stratus_store::Store::open_in_memory().unwrap());
        let probe = |id: &str| {
            store
                .write(|tx| tx.insert(&Probe { id: id.into() }))
                .unwrap();
        };
        probe("a");
        let c = Compute::new(ComputeConfig::default(), store.clone());
        let rx = c.channel("n1");
        let start = *rx.borrow();
        c.notify(Some("n1"));
        let nudged = *rx.borrow();
        assert_eq!(nudged, start + 1);
        // A change lands at the nudged number (nothing else was written).
        probe("b");
        let seq = store.last_revision().unwrap() as u64;
        assert_eq!(seq, nudged);
        c.notify_upto("n1", seq);
        assert!(*rx.borrow() > nudged, "the agent was not woken");
        // Covered now: a late notice of the same change wakes nobody.
        let at = *rx.borrow();
        c.notify_upto("n1", seq);
        c.notify_all_upto(seq);
        assert_eq!(*rx.borrow(), at);
    }
}
