//! The scheduler: filters, weighers, and an atomic claim through
//! placement.
//!
//! For each server: ask placement which providers can hold the flavor,
//! drop hosts the filters refuse (down or disabled, zone, forced host,
//! tried already, image properties, aggregate metadata, server group,
//! same/different host, JSON query), order the rest by the weigher, then
//! claim on the first host that still fits. The claim and the server's
//! move to that host are one store transaction under placement's lock, so
//! two concurrent boots can never overcommit a node or break an
//! anti-affinity group. The claim is checked inside that transaction
//! against what every process committed (see `crate::placement`), so
//! several schedulers (one per controller process) never overcommit
//! either.
//!
//! Each process schedules the servers it creates. A server that nobody is
//! scheduling (written by a process that died before it placed it, or
//! straight into the store) is found in the change log: every process
//! notes the servers it sees waiting ([`on_change`]), and the holder of
//! the singleton lease hands those still waiting after [`GRACE`] to its
//! scheduler ([`sweep`]).

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};
use stratus_store::Query as StoreQuery;

use super::common::action_event;
use super::config::Weigher;
use super::model::{Aggregate, ComputeNode, Fault, FlavorCopy, Server, ServerGroup};
use super::states::{task, vm};
use super::zones::{is_up, zone_of};
use crate::image::model::Image;
use crate::placement::{CandidateRequest, ClaimError, ClaimItem, Outcome};
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

/// A migration's destination: (host, provider uuid, what to claim there).
pub type Destination = (String, String, BTreeMap<String, u64>);

/// Where a cold migration of `s` may go: the best node other than its
/// own (or `want`, 2.56's `host`) that passes the filters the server was
/// built with. `Ok(Err(why))` when there is none. Answers (host,
/// provider uuid, the resources to claim there).
pub fn pick_destination(
    state: &AppState,
    s: &Server,
    want: Option<&str>,
) -> Result<Result<Destination, String>, ApiError> {
    let mut probe = s.clone();
    probe.tried_hosts = s.host.iter().cloned().collect();
    // A host forced at boot does not bind a move (as Nova resets
    // force_hosts for move operations).
    if let Some(h) = probe.hints.as_object_mut() {
        h.remove("_forced_host");
    }
    if let Some(h) = want {
        probe.hints["_forced_host"] = Value::String(h.to_string());
    }
    let view = View::load(state)?;
    Ok(match plan(state, &view, &probe, &Pending::default())? {
        Ok(p) => p
            .hosts
            .into_iter()
            .find(|(h, _, _)| Some(h) != s.host.as_ref())
            .map(|(h, rp, _)| (h, rp, p.resources.clone()))
            .ok_or_else(|| "There are not enough hosts available.".to_string()),
        Err(why) => Err(why),
    })
}

/// Whether a server waits for the scheduler: a new build
/// (`scheduling`), an unshelve (`unshelving`) or an evacuation
/// (`rebuilding`, see `ha.rs`), on no node yet.
pub fn waiting(s: &Server) -> bool {
    s.host.is_none()
        && matches!(
            s.task_state.as_deref(),
            Some(task::SCHEDULING | task::UNSHELVING | task::REBUILDING)
        )
}

/// Whether this controller's scheduler places `s`: it waits, and not in
/// the zone of an edge site (that site's scheduler places it, once sync
/// brought it down).
pub fn waits_here(state: &AppState, s: &Server) -> bool {
    waiting(s)
        && !s
            .requested_az
            .as_deref()
            .is_some_and(|z| state.sites.is_site_zone(&state.store, z).unwrap_or(false))
}

/// Hands servers to the scheduler. One scheduler thread takes them in
/// batches: the nodes and aggregates are read once per batch, and claims
/// never wait on each other.
pub fn submit(state: &AppState, ids: Vec<String>) {
    let tx = state.compute.scheduler_queue(|| {
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let st = state.clone();
        std::thread::Builder::new()
            .name("scheduler".into())
            .spawn(move || run(&st, rx))
            .expect("start the scheduler thread");
        tx
    });
    state.unscheduled.queued(&ids, true);
    for id in ids {
        let _ = tx.send(id);
    }
}

/// How long a server may wait for the scheduler before the lease holder
/// takes it as nobody's (its own process schedules it well within this).
pub const GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Servers seen waiting in the change log, and since when; and those in
/// this process's own scheduler queue (the sweep leaves them be).
#[derive(Default)]
pub struct Unscheduled {
    seen: std::sync::Mutex<HashMap<String, std::time::Instant>>,
    queued: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Unscheduled {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, std::time::Instant>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes servers entering (`true`) or leaving this process's queue.
    fn queued(&self, ids: &[String], entering: bool) {
        let mut q = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            if entering {
                q.insert(id.clone());
            } else {
                q.remove(id);
            }
        }
    }

    /// Servers in this process's scheduler queue.
    pub fn queue_len(&self) -> usize {
        self.queued.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Servers seen waiting for a scheduler in the change log.
    pub fn waiting_len(&self) -> usize {
        self.map().len()
    }

    fn is_queued(&self, id: &str) -> bool {
        self.queued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }
}

/// A change read from the log (see `crate::follow`): notes a server that
/// waits for the scheduler, forgets one that no longer does.
pub fn on_change(state: &AppState, c: &stratus_store::Change) {
    use stratus_store::Record;
    if c.kind != Server::KIND {
        return;
    }
    let waits = c
        .body
        .as_deref()
        .and_then(|b| serde_json::from_str::<Server>(b).ok())
        .is_some_and(|s| waits_here(state, &s));
    let mut map = state.unscheduled.map();
    if waits {
        map.entry(c.id.clone())
            .or_insert_with(std::time::Instant::now);
    } else {
        map.remove(&c.id);
    }
}

/// When this process becomes the lease holder: every server waiting now
/// is noted, for [`sweep`] to take after [`GRACE`] if nobody places it.
pub fn note_all_waiting(state: &AppState) -> Result<(), ApiError> {
    let servers = state.store.list::<Server>(&StoreQuery::all())?;
    let mut map = state.unscheduled.map();
    for s in servers.into_iter().filter(|s| waits_here(state, s)) {
        map.entry(s.id).or_insert_with(std::time::Instant::now);
    }
    Ok(())
}

/// On the lease holder, every second: hands the servers waiting for
/// longer than [`GRACE`] to this process's scheduler. A server another
/// scheduler places meanwhile is refused in the claim's transaction, so
/// taking one twice is harmless.
pub fn sweep(state: &AppState) -> Result<(), ApiError> {
    let due: Vec<String> = {
        let now = std::time::Instant::now();
        let mut map = state.unscheduled.map();
        let due: Vec<String> = map
            .iter()
            .filter(|(id, at)| {
                now.duration_since(**at) >= GRACE && !state.unscheduled.is_queued(id)
            })
            .map(|(id, _)| id.clone())
            .collect();
        // Looked at again after another GRACE unless the log says it
        // was placed (or refused) by then.
        for id in &due {
            map.insert(id.clone(), now);
        }
        due
    };
    let mut take = Vec::new();
    for id in due {
        match state.store.get::<Server>(&id)? {
            Some(s) if waits_here(state, &s) => take.push(id),
            _ => {
                state.unscheduled.map().remove(&id);
            }
        }
    }
    if !take.is_empty() {
        tracing::info!(
            count = take.len(),
            "scheduling servers nobody was scheduling"
        );
        submit(state, take);
    }
    Ok(())
}

fn run(state: &AppState, rx: std::sync::mpsc::Receiver<String>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(id) => batch.push(id),
                Err(_) => break,
            }
        }
        // An id handed in twice (by its creator and by the sweep) is
        // planned once.
        let mut seen = std::collections::HashSet::new();
        batch.retain(|id| seen.insert(id.clone()));
        let started = std::time::Instant::now();
        match View::load(state) {
            Ok(view) => {
                let loaded = started.elapsed();
                schedule_batch(state, &view, &batch);
                tracing::debug!(
                    servers = batch.len(),
                    view_ms = loaded.as_millis() as u64,
                    total_ms = started.elapsed().as_millis() as u64,
                    "scheduled a batch"
                );
            }
            // Left waiting: the lease holder's sweep hands them in again.
            Err(e) => tracing::error!(error = %e, "scheduler cannot read the nodes"),
        }
        state.unscheduled.queued(&batch, false);
    }
}

/// What the scheduler reads once per batch: the nodes, the aggregates,
/// and every provider's free capacity and traits.
pub struct View {
    nodes: Vec<ComputeNode>,
    aggs: Vec<Aggregate>,
    /// Per node (same order): its provider's capacity, zone, aggregates.
    cands: Vec<Option<crate::placement::Candidate>>,
    zones: Vec<String>,
    node_aggs: Vec<Vec<usize>>,
    /// Whether each node was up when the batch began (one clock read and
    /// one liveness lookup per node per batch, not per server).
    up: Vec<bool>,
    /// Each node's free [`STANDARD`] resources, so the per-node check of a
    /// usual flavor compares integers rather than looking up class names.
    free_std: Vec<[u64; 3]>,
}

/// The resource classes every flavor asks for, in [`View::free_std`]'s
/// order.
const STANDARD: [&str; 3] = ["VCPU", "MEMORY_MB", "DISK_GB"];

fn standard(m: &BTreeMap<String, u64>) -> [u64; 3] {
    STANDARD.map(|c| m.get(c).copied().unwrap_or(0))
}

impl View {
    pub fn load(state: &AppState) -> Result<Self, ApiError> {
        // Claims other processes made since the log follower last looked.
        if let Err(e) = state.placement.refresh() {
            tracing::warn!(error = %e, "cannot bring placement up to date");
        }
        let mut by_rp: HashMap<String, crate::placement::Candidate> = state
            .placement
            .candidates(&CandidateRequest::default())
            .map_err(ApiError::from)?
            .into_iter()
            .map(|c| (c.provider.clone(), c))
            .collect();
        let nodes = state.store.list::<ComputeNode>(&StoreQuery::all())?;
        let aggs = state.store.list::<Aggregate>(&StoreQuery::all())?;
        let cands: Vec<Option<crate::placement::Candidate>> =
            nodes.iter().map(|n| by_rp.remove(&n.uuid)).collect();
        let zones = nodes.iter().map(|n| zone_of(&aggs, &n.id)).collect();
        let node_aggs = nodes
            .iter()
            .map(|n| {
                aggs.iter()
                    .enumerate()
                    .filter(|(_, a)| a.hosts.contains(&n.id))
                    .map(|(i, _)| i)
                    .collect()
            })
            .collect();
        let up = nodes.iter().map(|n| is_up(state, n)).collect();
        let free_std = cands
            .iter()
            .map(|c: &Option<crate::placement::Candidate>| {
                c.as_ref().map_or([0; 3], |c| standard(&c.free))
            })
            .collect();
        Ok(View {
            nodes,
            aggs,
            cands,
            zones,
            node_aggs,
            up,
            free_std,
        })
    }
}

/// A host as the filters and weighers see it.
struct HostState<'a> {
    /// The node's place in the view (the nodes are in id order).
    index: usize,
    node: &'a ComputeNode,
    zone: &'a str,
    aggs: &'a [usize],
    free: &'a BTreeMap<String, u64>,
    used: &'a BTreeMap<String, u64>,
    /// Taken by earlier servers of the same batch.
    taken: Option<&'a BTreeMap<String, u64>>,
}

impl HostState<'_> {
    fn free(&self, class: &str) -> u64 {
        let t = self.taken.and_then(|t| t.get(class)).copied().unwrap_or(0);
        self.free.get(class).copied().unwrap_or(0).saturating_sub(t)
    }

    fn used(&self, class: &str) -> u64 {
        let t = self.taken.and_then(|t| t.get(class)).copied().unwrap_or(0);
        self.used.get(class).copied().unwrap_or(0) + t
    }
}

fn no_valid_host(state: &AppState, s: &Server, why: &str) -> Result<(), ApiError> {
    let now = now_us();
    let refused = state.store.write(|tx| {
        let Some(mut cur) = tx.get::<Server>(&s.id)? else {
            return Ok::<_, ApiError>(false);
        };
        if !waiting(&cur) {
            return Ok(false);
        }
        // An unshelve that finds no node leaves the server shelved, as in
        // Nova; a build ends in ERROR, and so does an evacuation, back on
        // the node it left.
        if cur.vm_state != vm::SHELVED_OFFLOADED {
            cur.vm_state = vm::ERROR.into();
        }
        if cur.task_state.as_deref() == Some(task::REBUILDING) {
            cur.host = cur.tried_hosts.first().cloned();
            cur.node = cur.host.clone();
            super::common::evacuation_placed(tx, &cur.id, None)?;
        }
        cur.task_state = None;
        cur.updated_us = now;
        // The first line is the message; the rest (the filters that
        // refused each host) only in the details.
        let headline = why.lines().next().unwrap_or(why);
        cur.fault = Some(Fault {
            code: 500,
            message: format!("No valid host was found. {headline}"),
            details: why.to_string(),
            created_us: now,
        });
        tx.update(&cur)?;
        action_event(
            tx,
            &cur.id,
            "conductor_schedule_and_build_instances",
            false,
            Some(why),
            None,
        )?;
        Ok(true)
    })?;
    if refused {
        state.metrics.scheduled(0, 1);
        tracing::warn!(server = %s.id, why, "no valid host");
    }
    Ok(())
}

/// Schedules one server waiting in `building/scheduling`; returns the
/// host it landed on.
/// Where a server may go, best first.
pub struct Plan {
    /// (host, provider uuid, zone).
    hosts: Vec<(String, String, String)>,
    /// The first host's place in the view.
    first: usize,
    resources: BTreeMap<String, u64>,
    group: Option<ServerGroup>,
}

/// Claims made earlier in the same batch, not yet in placement's index.
#[derive(Default)]
pub struct Pending {
    /// By the node's place in the view.
    usage: HashMap<usize, BTreeMap<String, u64>>,
    /// The [`STANDARD`] part of `usage`, by the node's place in the view.
    usage_std: Vec<[u64; 3]>,
    group_hosts: HashMap<String, Vec<String>>,
}

impl Pending {
    fn take(&mut self, node: usize, resources: &BTreeMap<String, u64>) {
        let usage = self.usage.entry(node).or_default();
        for (c, n) in resources {
            *usage.entry(c.clone()).or_default() += n;
        }
        if self.usage_std.len() <= node {
            self.usage_std.resize(node + 1, [0; 3]);
        }
        let add = standard(resources);
        for (k, n) in add.iter().enumerate() {
            self.usage_std[node][k] += n;
        }
    }

    fn taken_std(&self, node: usize) -> [u64; 3] {
        self.usage_std.get(node).copied().unwrap_or([0; 3])
    }
}

/// Filters and weighs the nodes for one server. `Ok(Err(reason))` when no
/// node can take it.
/// The placement resources a flavor asks for (with its `resources:*`
/// extra specs applied, as Nova's `resources_from_flavor`).
/// What server `s` claims with flavor `f`: a volume-backed server's root
/// disk is its volume, so no local disk for it (as Nova's `is_bfv`).
pub fn server_resources(s: &Server, f: &FlavorCopy) -> BTreeMap<String, u64> {
    let mut resources = flavor_resources(f);
    if s.boot_volume().is_some()
        && let Some(d) = resources.get_mut("DISK_GB")
    {
        *d = d.saturating_sub(f.disk);
        if *d == 0 {
            resources.remove("DISK_GB");
        }
    }
    resources
}

pub fn flavor_resources(f: &FlavorCopy) -> BTreeMap<String, u64> {
    let mut resources = BTreeMap::new();
    resources.insert("VCPU".to_string(), f.vcpus as u64);
    resources.insert("MEMORY_MB".to_string(), f.ram);
    let disk = f.disk + f.ephemeral + f.swap.div_ceil(1024);
    if disk > 0 {
        resources.insert("DISK_GB".to_string(), disk);
    }
    for (k, v) in &f.extra_specs {
        if let Some(rc) = k.strip_prefix("resources:")
            && let Ok(n) = v.parse::<u64>()
        {
            if n == 0 {
                resources.remove(rc);
            } else {
                resources.insert(rc.to_string(), n);
            }
        }
    }
    resources
}

pub fn plan(
    state: &AppState,
    view: &View,
    s: &Server,
    pending: &Pending,
) -> Result<Result<Plan, String>, ApiError> {
    let (nodes, aggs) = (&view.nodes, &view.aggs);
    let image = state.store.get::<Image>(&s.image_ref)?;

    // Placement: who can hold the flavor at all. A volume-backed server's
    // root disk is its volume: no local disk for it (as Nova's
    // `is_bfv`).
    let resources = server_resources(s, &s.flavor);
    let mut required = Vec::new();
    let mut forbidden = Vec::new();
    for (k, v) in &s.flavor.extra_specs {
        if let Some(t) = k.strip_prefix("trait:") {
            match v.as_str() {
                "required" => required.push(t.to_string()),
                "forbidden" => forbidden.push(t.to_string()),
                _ => {}
            }
        }
    }
    // Placement: providers with the traits and room for the flavor, from
    // the batch's snapshot less what this batch already took.
    let want_std = standard(&resources);
    let others: Vec<(&String, u64)> = resources
        .iter()
        .filter(|(c, _)| !STANDARD.contains(&c.as_str()))
        .map(|(c, n)| (c, *n))
        .collect();
    let fits = |i: usize,
                c: &crate::placement::Candidate,
                taken: Option<&BTreeMap<String, u64>>|
     -> bool {
        let (free, held) = (view.free_std[i], pending.taken_std(i));
        (0..3).all(|k| want_std[k] == 0 || free[k] >= want_std[k] + held[k])
            && required.iter().all(|t| c.traits.contains(t))
            && !forbidden.iter().any(|t| c.traits.contains(t))
            && others.iter().all(|(class, n)| {
                let taken = taken.and_then(|u| u.get(*class)).copied().unwrap_or(0);
                c.free.get(*class).copied().unwrap_or(0) >= n + taken
            })
    };

    // Filters.
    let group = match &s.server_group {
        Some(g) => state.store.get::<ServerGroup>(g)?,
        None => None,
    };
    let mut member_hosts: Vec<String> = match &group {
        Some(g) => g
            .members
            .iter()
            .filter(|m| *m != &s.id)
            .filter_map(|m| state.store.get::<Server>(m).ok().flatten())
            .filter_map(|m| m.host)
            .collect(),
        None => vec![],
    };
    if let Some(g) = &group
        && let Some(h) = pending.group_hosts.get(&g.id)
    {
        member_hosts.extend(h.iter().cloned());
    }
    let hint_hosts = |key: &str| -> Vec<String> {
        let ids: Vec<String> = match s.hints.get(key) {
            Some(Value::String(x)) => vec![x.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => vec![],
        };
        ids.iter()
            .filter_map(|i| state.store.get::<Server>(i).ok().flatten())
            .filter_map(|m| m.host)
            .collect()
    };
    let same_host = s.hints.get("same_host").map(|_| hint_hosts("same_host"));
    let different_host = hint_hosts("different_host");
    let query = s
        .hints
        .get("query")
        .and_then(Value::as_str)
        .and_then(|q| serde_json::from_str::<Value>(q).ok());
    let forced = s.hints.get("_forced_host").and_then(Value::as_str);
    let img_prop = |k: &str| -> Option<String> {
        image
            .as_ref()
            .and_then(|i| i.properties.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    if let Some(why) = unplaceable_topology(&s.flavor.extra_specs, &img_prop) {
        return Ok(Err(why));
    }
    let want_arch = img_prop("hw_architecture").or_else(|| img_prop("architecture"));
    let want_hv = img_prop("img_hv_type").or_else(|| img_prop("hypervisor_type"));
    // A VM disk needs a node with QEMU; a container image one with an
    // OCI runtime (the fake driver, for scale runs, takes both).
    let want_vm = s.boot_volume().is_some() || image.as_ref().is_some_and(|i| i.boots_vm());
    let runs = |n: &ComputeNode| {
        n.driver == "fake"
            || if want_vm {
                n.driver.contains("qemu")
            } else {
                n.driver.is_empty() || n.driver.contains("container")
            }
    };

    // A site's own zone at its parent is any of its nodes.
    let own = state.sites.own_zone();
    let want_az = s
        .requested_az
        .as_deref()
        .filter(|z| Some(*z) != own.as_deref());
    // Cheap checks first: this loop runs once per node for every server.
    let mut hosts: Vec<HostState> = Vec::new();
    let mut reasons: Vec<(usize, &'static str)> = Vec::new();
    let check_specs = !s.flavor.extra_specs.is_empty();
    for (i, n) in nodes.iter().enumerate() {
        let zone = view.zones[i].as_str();
        let taken = pending.usage.get(&i);
        let cand = view.cands[i].as_ref().filter(|c| fits(i, c, taken));
        let why = if !view.up[i] {
            Some("ComputeFilter: down")
        } else if n.disabled {
            Some("ComputeFilter: disabled")
        } else if want_az.is_some_and(|z| z != zone) {
            Some("AvailabilityZoneFilter")
        } else if forced.is_some_and(|f| f != n.id) {
            Some("forced host")
        } else if s.tried_hosts.contains(&n.id) {
            Some("RetryFilter")
        } else if cand.is_none() {
            Some("placement: not enough free resources or missing traits")
        } else if want_arch
            .as_deref()
            .is_some_and(|a| !arch_matches(a, &n.arch))
        {
            Some("ImagePropertiesFilter: architecture")
        } else if !runs(n) {
            Some(if want_vm {
                "ImagePropertiesFilter: the node runs no VMs (no QEMU)"
            } else {
                "ImagePropertiesFilter: the node runs no containers"
            })
        } else if want_hv.as_deref().is_some_and(|h| {
            // A KVM host runs plain QEMU guests too, as in Nova.
            !(h.eq_ignore_ascii_case(&n.hypervisor_type)
                || h.eq_ignore_ascii_case("qemu") && n.hypervisor_type.eq_ignore_ascii_case("kvm"))
        }) {
            Some("ImagePropertiesFilter: hypervisor type")
        } else if check_specs
            && !aggregate_specs_ok(&s.flavor.extra_specs, aggs, &view.node_aggs[i])
        {
            Some("AggregateInstanceExtraSpecsFilter")
        } else if group.as_ref().is_some_and(|g| g.policy == "affinity")
            && !member_hosts.is_empty()
            && !member_hosts.contains(&n.id)
        {
            Some("ServerGroupAffinityFilter")
        } else if group.as_ref().is_some_and(|g| g.policy == "anti-affinity")
            && member_hosts.iter().filter(|h| *h == &n.id).count() as i64
                >= group
                    .as_ref()
                    .and_then(|g| g.rules.get("max_server_per_host"))
                    .and_then(Value::as_i64)
                    .unwrap_or(1)
        {
            Some("ServerGroupAntiAffinityFilter")
        } else if same_host.as_ref().is_some_and(|h| !h.contains(&n.id)) {
            Some("SameHostFilter")
        } else if different_host.contains(&n.id) {
            Some("DifferentHostFilter")
        } else {
            None
        };
        if let Some(w) = why {
            reasons.push((i, w));
            continue;
        }
        let Some(cand) = cand else { continue };
        let hs = HostState {
            index: i,
            node: n,
            zone,
            aggs: &view.node_aggs[i],
            free: &cand.free,
            used: &cand.used,
            taken,
        };
        if let Some(q) = &query
            && !json_query(q, &hs)
        {
            reasons.push((i, "JsonFilter"));
            continue;
        }
        hosts.push(hs);
    }
    if hosts.is_empty() {
        tracing::info!(server = %s.id, reasons = ?reasons_by_host(&reasons, nodes), "every host filtered out");
        // The fault's details say why, by filter (Nova logs this; a user
        // of a small cloud wants it where they look).
        let mut by_filter: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (i, w) in &reasons {
            by_filter.entry(w).or_default().push(nodes[*i].id.as_str());
        }
        let mut why = String::from("There are not enough hosts available.");
        for (w, hosts) in by_filter {
            let more = hosts.len().saturating_sub(3);
            let mut named = hosts[..hosts.len().min(3)].join(", ");
            if more > 0 {
                named.push_str(&format!(" and {more} more"));
            }
            why.push_str(&format!("\n{w}: {named}"));
        }
        return Ok(Err(why));
    }

    // Weighers: free RAM (spread or pack), then server-group softness.
    let sign = match state.compute.config.weigher {
        Weigher::Spread => 1.0,
        Weigher::Pack => -1.0,
    };
    let free_ram: Vec<u64> = hosts
        .iter()
        .map(|h| view.free_std[h.index][1].saturating_sub(pending.taken_std(h.index)[1]))
        .collect();
    let max_ram = free_ram.iter().copied().max().unwrap_or(1).max(1) as f64;
    let weight = |k: usize, h: &HostState| -> f64 {
        let ram = free_ram[k] as f64 / max_ram;
        let mut w = sign * ram;
        if let Some(g) = &group {
            let on = member_hosts.iter().filter(|x| *x == &h.node.id).count() as f64;
            match g.policy.as_str() {
                "soft-affinity" => w += 10.0 * on,
                "soft-anti-affinity" => w -= 10.0 * on,
                _ => {}
            }
        }
        w
    };
    // Weigh each host once; only the best few are ever tried.
    let mut ranked: Vec<(f64, usize)> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (weight(i, h), i))
        .collect();
    // Ties go to the lower host id: `hosts` is in the view's id order.
    let by_weight = |a: &(f64, usize), b: &(f64, usize)| {
        b.0.partial_cmp(&a.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.1.cmp(&b.1))
    };
    const TRIES: usize = 8;
    if ranked.len() > TRIES {
        ranked.select_nth_unstable_by(TRIES - 1, by_weight);
        ranked.truncate(TRIES);
    }
    ranked.sort_by(by_weight);

    Ok(Ok(Plan {
        first: hosts[ranked[0].1].index,
        hosts: ranked
            .iter()
            .map(|(_, i)| {
                let h = &hosts[*i];
                (h.node.id.clone(), h.node.uuid.clone(), h.zone.to_string())
            })
            .collect(),
        resources,
        group,
    }))
}

/// Moves a scheduled server to its host, inside the claim's transaction;
/// false when it may not go there (no longer waiting, or another member
/// of its anti-affinity group got there first).
fn place(
    tx: &stratus_store::Tx,
    s: &Server,
    host: &str,
    zone: &str,
    anti: bool,
) -> Result<bool, ApiError> {
    let Some(mut cur) = tx.get::<Server>(&s.id)? else {
        return Ok(false);
    };
    if !waiting(&cur) {
        return Ok(false);
    }
    if anti
        && let Some(g) = &s.server_group
        && let Some(grp) = tx.get::<ServerGroup>(g)?
    {
        let max = grp
            .rules
            .get("max_server_per_host")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let mut here = 0;
        for m in grp.members.iter().filter(|m| *m != &s.id) {
            if tx.get::<Server>(m)?.and_then(|x| x.host).as_deref() == Some(host) {
                here += 1;
            }
        }
        if here >= max {
            return Ok(false);
        }
    }
    cur.host = Some(host.to_string());
    cur.node = Some(host.to_string());
    cur.availability_zone = Some(zone.to_string());
    // An evacuated server is rebuilt there; anything else is spawned.
    if cur.task_state.as_deref() == Some(task::REBUILDING) {
        super::common::evacuation_placed(tx, &cur.id, Some(host))?;
    } else {
        cur.task_state = Some(task::SPAWNING.into());
    }
    cur.generation += 1;
    cur.updated_us = now_us();
    tx.update(&cur)?;
    action_event(
        tx,
        &cur.id,
        "conductor_schedule_and_build_instances",
        true,
        None,
        Some(host),
    )?;
    Ok(true)
}

/// Schedules one server waiting in `building/scheduling`, trying its
/// hosts in order; returns the host it landed on.
pub fn schedule_in(state: &AppState, view: &View, id: &str) -> Result<Option<String>, ApiError> {
    let Some(s) = state.store.get::<Server>(id)? else {
        return Ok(None);
    };
    if !waiting(&s) {
        return Ok(None);
    }
    let plan = match plan(state, view, &s, &Pending::default())? {
        Ok(p) => p,
        Err(why) => return no_valid_host(state, &s, &why).map(|_| None),
    };
    let anti = plan
        .group
        .as_ref()
        .is_some_and(|g| g.policy == "anti-affinity");
    for (host, rp, zone) in &plan.hosts {
        let mut allocs = BTreeMap::new();
        allocs.insert(rp.clone(), plan.resources.clone());
        let result = state
            .placement
            .claim(&s.id, &s.project_id, &s.user_id, &allocs, |tx| {
                if place(tx, &s, host, zone, anti)? {
                    Ok(())
                } else {
                    Err(ApiError::conflict("not placeable"))
                }
            });
        match result {
            Ok(()) => {
                state.metrics.scheduled(1, 0);
                return Ok(Some(host.clone()));
            }
            Err(ClaimError::Caller(e)) if e.status.as_u16() == 409 => {
                // Gone, or the group rule: try the next host only for the
                // latter.
                let still = state
                    .store
                    .get::<Server>(&s.id)?
                    .is_some_and(|x| waiting(&x));
                if !still {
                    return Ok(None);
                }
            }
            Err(ClaimError::Caller(e)) => return Err(e),
            Err(e) => {
                tracing::debug!(server = %s.id, host, error = %e, "claim refused; trying the next host");
            }
        }
    }
    no_valid_host(state, &s, "There are not enough hosts available.").map(|_| None)
}

/// Schedules a batch: plans every server against the index plus the
/// batch's own picks, claims all first choices in one transaction, and
/// schedules the few that did not fit one by one.
fn schedule_batch(state: &AppState, view: &View, ids: &[String]) {
    let mut pending = Pending::default();
    let mut items = Vec::new();
    let mut chosen: Vec<(Server, String, String, bool)> = Vec::new();
    let mut retry: Vec<String> = Vec::new();
    for id in ids {
        let s = match state.store.get::<Server>(id) {
            Ok(Some(s)) if waits_here(state, &s) => s,
            Ok(_) => continue,
            Err(e) => {
                tracing::error!(server = %id, error = %e, "scheduling failed");
                continue;
            }
        };
        match plan(state, view, &s, &pending) {
            Ok(Ok(p)) => {
                let (host, rp, zone) = p.hosts[0].clone();
                pending.take(p.first, &p.resources);
                if let Some(g) = &p.group {
                    pending
                        .group_hosts
                        .entry(g.id.clone())
                        .or_default()
                        .push(host.clone());
                }
                let anti = p
                    .group
                    .as_ref()
                    .is_some_and(|g| g.policy == "anti-affinity");
                items.push(ClaimItem {
                    consumer: s.id.clone(),
                    project_id: s.project_id.clone(),
                    user_id: s.user_id.clone(),
                    allocs: BTreeMap::from([(rp, p.resources)]),
                });
                chosen.push((s, host, zone, anti));
            }
            Ok(Err(why)) => {
                if let Err(e) = no_valid_host(state, &s, &why) {
                    tracing::error!(server = %s.id, error = %e, "recording no valid host failed");
                }
            }
            Err(e) => tracing::error!(server = %s.id, error = %e, "scheduling failed"),
        }
    }
    if items.is_empty() {
        return;
    }
    let claiming = std::time::Instant::now();
    let result = state.placement.claim_batch(&items, |tx, i| {
        let (s, host, zone, anti) = &chosen[i];
        place(tx, s, host, zone, *anti)
    });
    tracing::debug!(
        servers = items.len(),
        claim_ms = claiming.elapsed().as_millis() as u64,
        "claimed a batch"
    );
    match result {
        Ok(outcomes) => {
            let mut placed = 0;
            for (i, o) in outcomes.iter().enumerate() {
                match o {
                    Outcome::Claimed => {
                        placed += 1;
                        state.compute.notify(Some(&chosen[i].1));
                    }
                    _ => retry.push(chosen[i].0.id.clone()),
                }
            }
            state.metrics.scheduled(placed, 0);
        }
        Err(e) => {
            tracing::warn!(error = %e, "batch claim failed; scheduling one by one");
            retry.extend(chosen.iter().map(|c| c.0.id.clone()));
        }
    }
    if !retry.is_empty() {
        let fresh = View::load(state);
        let view = fresh.as_ref().unwrap_or(view);
        for id in retry {
            match schedule_in(state, view, &id) {
                Ok(host) => state.compute.notify(host.as_deref()),
                Err(e) => tracing::error!(server = %id, error = %e, "scheduling failed"),
            }
        }
    }
}

/// CPU pinning and huge pages, asked for by the flavor (`hw:cpu_policy`,
/// `hw:mem_page_size`) or the image (`hw_cpu_policy`, `hw_mem_page_size`):
/// no node sets CPUs or huge pages aside for guests, so a server that
/// needs them fits nowhere, and the fault says why (Nova's scheduler finds
/// no PCPU inventory or no NUMA fit and answers NoValidHost the same way).
fn unplaceable_topology(
    specs: &BTreeMap<String, String>,
    img_prop: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    let pick = |spec: &str, prop: &str| {
        specs
            .get(spec)
            .map(|v| (spec.to_string(), v.clone()))
            .or_else(|| img_prop(prop).map(|v| (prop.to_string(), v)))
    };
    if let Some((key, policy)) = pick("hw:cpu_policy", "hw_cpu_policy")
        && matches!(policy.as_str(), "dedicated" | "mixed")
    {
        return Some(format!(
            "{key}={policy} asks for pinned CPUs and no compute node sets CPUs aside for pinning (no PCPU inventory)."
        ));
    }
    if let Some((key, size)) = pick("hw:mem_page_size", "hw_mem_page_size")
        && !matches!(size.as_str(), "small" | "any")
    {
        return Some(format!(
            "{key}={size} asks for huge pages and no compute node offers huge pages to guests."
        ));
    }
    None
}

fn reasons_by_host(reasons: &[(usize, &str)], nodes: &[ComputeNode]) -> Vec<String> {
    reasons
        .iter()
        .map(|(i, w)| format!("{}: {w}", nodes[*i].id))
        .collect()
}

fn arch_matches(want: &str, have: &str) -> bool {
    let norm = |a: &str| match a.to_ascii_lowercase().as_str() {
        "amd64" | "x86_64" | "x64" => "x86_64".to_string(),
        "arm64" | "aarch64" => "aarch64".to_string(),
        other => other.to_string(),
    };
    norm(want) == norm(have)
}

/// `AggregateInstanceExtraSpecsFilter`: flavor extra specs without a
/// scope, or scoped `aggregate_instance_extra_specs:`, must match the
/// metadata of one of the host's aggregates.
fn aggregate_specs_ok(specs: &BTreeMap<String, String>, all: &[Aggregate], aggs: &[usize]) -> bool {
    for (k, v) in specs {
        let key = match k.split_once(':') {
            Some(("aggregate_instance_extra_specs", rest)) => rest,
            Some(_) => continue,
            None => k.as_str(),
        };
        let values: Vec<&str> = aggs
            .iter()
            .filter_map(|&a| all[a].metadata.get(key))
            .flat_map(|m| m.split(','))
            .map(str::trim)
            .collect();
        let want = v.trim();
        let want = want.strip_prefix("s== ").unwrap_or(want);
        if !values.contains(&want) {
            return false;
        }
    }
    true
}

/// Nova's `JsonFilter` query language: `["and", [">=", "$free_ram_mb",
/// 1024], ...]` over the host's state.
fn json_query(q: &Value, h: &HostState) -> bool {
    fn var(name: &str, h: &HostState) -> Value {
        match name.trim_start_matches('$') {
            "free_ram_mb" => json!(h.free("MEMORY_MB")),
            "free_disk_mb" => json!(h.free("DISK_GB") * 1024),
            "total_usable_ram_mb" | "memory_mb" => json!(h.node.memory_mb),
            "vcpus_total" => json!(h.node.vcpus),
            "vcpus_used" => json!(h.used("VCPU")),
            "host" => json!(h.node.id),
            "hypervisor_type" => json!(h.node.hypervisor_type),
            "zone" | "availability_zone" => json!(h.zone),
            "num_aggregates" => json!(h.aggs.len()),
            _ => Value::Null,
        }
    }
    fn eval(q: &Value, h: &HostState) -> Value {
        match q {
            Value::String(s) if s.starts_with('$') => var(s, h),
            Value::Array(a) if !a.is_empty() => {
                let op = a[0].as_str().unwrap_or("");
                let args: Vec<Value> = a[1..].iter().map(|x| eval(x, h)).collect();
                let num = |v: &Value| {
                    v.as_f64()
                        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                };
                let cmp = |f: fn(f64, f64) -> bool| -> Value {
                    match (args.first().and_then(num), args.get(1).and_then(num)) {
                        (Some(x), Some(y)) => json!(f(x, y)),
                        _ => json!(false),
                    }
                };
                match op {
                    "=" | "==" => {
                        json!(
                            args.len() >= 2
                                && args[1..].iter().any(|x| x == &args[0]
                                    || num(x).is_some() && num(x) == num(&args[0]))
                        )
                    }
                    "<" => cmp(|x, y| x < y),
                    ">" => cmp(|x, y| x > y),
                    "<=" => cmp(|x, y| x <= y),
                    ">=" => cmp(|x, y| x >= y),
                    "in" => json!(args.len() >= 2 && args[1..].contains(&args[0])),
                    "not" => json!(!args.iter().all(|x| x.as_bool().unwrap_or(false))),
                    "or" => json!(args.iter().any(|x| x.as_bool().unwrap_or(false))),
                    "and" => json!(args.iter().all(|x| x.as_bool().unwrap_or(false))),
                    _ => json!(false),
                }
            }
            other => other.clone(),
        }
    }
    eval(q, h).as_bool().unwrap_or(true)
}
