//! Instance high availability, as Masakari adds it to an OpenStack cloud:
//! a workload that stops without anyone asking is started again, and the
//! servers of a node that stays down are rebuilt on the other nodes
//! (Nova's `evacuate`). On by default at an edge site controller, where
//! nobody may be at hand while the link to the root is cut
//! (`--instance-ha`); a server with the metadata `HA_Enabled=False` is
//! left alone.
//!
//! Evacuation is also Nova's admin action: `POST /servers/{id}/action
//! {"evacuate": {...}}` (`openstack server evacuate`). Only the servers
//! of a node that is down (or forced down) can be evacuated. The server
//! leaves its node, its allocation there is dropped and the scheduler
//! places it again like a new build (task `rebuilding`), on another node
//! that passes the filters it was built with; the node rebuilds it from
//! its image. An evacuated server that was stopped stays stopped. There
//! is no shared storage, so the root disk starts again from the image,
//! as a Nova evacuation without shared storage does. When the old node
//! comes back, its copy is a leftover and the node removes it. A
//! migration record of type `evacuation` follows the move
//! (`os-migrations`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use stratus_store::{Query as StoreQuery, Tx};

use super::common::{check_locked, fetch_tx, record_action_by};
use super::model::{ComputeNode, Migration, Server};
use super::states::{task, vm, wrong_state};
use super::zones::{is_up, last_seen};
use crate::identity::policy::Ctx;
use crate::placement::Allocation;
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

/// How many restarts a workload gets within [`RESTART_WINDOW`] before it
/// is left stopped (SHUTOFF, as Nova would show it).
pub const MAX_RESTARTS: usize = 3;
pub const RESTART_WINDOW: Duration = Duration::from_secs(600);

/// The user id instance actions of instance HA are recorded under.
pub const HA_USER: &str = "instance-ha";

/// Whether instance HA looks after `s`: unless its metadata says
/// `HA_Enabled` false (in any case, as Masakari reads it).
pub fn protected(s: &Server) -> bool {
    !s.metadata
        .get("HA_Enabled")
        .is_some_and(|v| v.eq_ignore_ascii_case("false"))
}

/// Restarts per server within the window, in this process.
#[derive(Default)]
pub struct RestartBudget {
    restarts: Mutex<HashMap<String, Vec<Instant>>>,
}

impl RestartBudget {
    /// Takes one restart for `id`; false when it has had its share.
    pub fn take(&self, id: &str) -> bool {
        let mut m = self.restarts.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        m.retain(|_, v| {
            v.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
            !v.is_empty()
        });
        let v = m.entry(id.to_string()).or_default();
        if v.len() >= MAX_RESTARTS {
            return false;
        }
        v.push(now);
        true
    }
}

/// Inside the power-state sync's transaction: a server that should run
/// but whose workload stopped by itself is started again (task
/// `powering-on`, an instance action `start` by [`HA_USER`]). False when
/// instance HA is off, the server opted out or has used up its restarts;
/// the sync then shows it SHUTOFF, as Nova does.
pub fn restart_in(state: &AppState, tx: &Tx, cur: &mut Server) -> Result<bool, ApiError> {
    if !state.compute.config.instance_ha || !protected(cur) {
        return Ok(false);
    }
    if !state.compute.restarts.take(&cur.id) {
        tracing::warn!(server = %cur.id, "workload stopped again; restarted too often, leaving it stopped");
        return Ok(false);
    }
    tracing::info!(server = %cur.id, host = ?cur.host, "workload stopped by itself; starting it again");
    cur.task_state = Some(task::POWERING_ON.into());
    cur.generation += 1;
    let rid = format!("req-ha-{}", uuid::Uuid::new_v4());
    record_action_by(tx, cur, "start", HA_USER, &rid)?;
    Ok(true)
}

/// Nova's `evacuate` admin action (the caller's rights are checked by the
/// handler): `host`, when given, must be another known node.
pub fn evacuate(
    state: &AppState,
    ctx: &Ctx,
    s: &Server,
    host: Option<String>,
    rid: &str,
) -> Result<(), ApiError> {
    let Some(source) = s.host.clone() else {
        return Err(wrong_state("evacuate", s));
    };
    // A site's own nodes and their liveness are the site's to judge.
    if let Some(z) = &s.requested_az
        && state.sites.is_site_zone(&state.store, z)?
    {
        return Err(ApiError::bad_request(format!(
            "Instance {} runs at the edge site of zone {z}: that site re-places the servers of its failed nodes itself (evacuate it through the site's own API).",
            s.id
        )));
    }
    let node = state.store.get::<ComputeNode>(&source)?;
    if node.as_ref().is_some_and(|n| is_up(state, n)) {
        return Err(ApiError::bad_request(format!(
            "Compute service of {source} is still in use."
        )));
    }
    if let Some(h) = &host {
        if h == &source {
            return Err(ApiError::bad_request(
                "The target host can't be the same one.",
            ));
        }
        if state.store.get::<ComputeNode>(h)?.is_none() {
            return Err(ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                format!("Compute host {h} could not be found."),
            ));
        }
    }
    let id = s.id.clone();
    state.store.write(|tx| {
        let mut cur = fetch_tx(tx, ctx, &id)?;
        check_locked(ctx, &cur)?;
        begin_in(tx, &mut cur, host.as_deref(), ctx.user_id(), rid)
    })?;
    super::scheduler::submit(state, vec![id]);
    Ok(())
}

/// Moves `cur` off its node for the scheduler, in `tx`.
fn begin_in(
    tx: &Tx,
    cur: &mut Server,
    host: Option<&str>,
    user_id: &str,
    rid: &str,
) -> Result<(), ApiError> {
    let ok_state = matches!(cur.vm_state.as_str(), vm::ACTIVE | vm::STOPPED | vm::ERROR);
    let Some(source) = cur.host.clone() else {
        return Err(wrong_state("evacuate", cur));
    };
    if cur.task_state.is_some() || !ok_state {
        return Err(wrong_state("evacuate", cur));
    }
    if tx.get::<Allocation>(&cur.id)?.is_some() {
        tx.delete::<Allocation>(&cur.id)?;
    }
    if let Some(h) = cur.hints.as_object_mut() {
        h.remove("_forced_host");
    }
    if let Some(h) = host {
        cur.hints["_forced_host"] = serde_json::Value::String(h.to_string());
    }
    let now = now_us();
    Migration::moving(
        &uuid::Uuid::new_v4().to_string(),
        cur,
        "evacuation",
        &source,
        "",
        "accepted",
        now,
    )
    .insert(tx)?;
    // An ERROR server comes back running, as Nova rebuilds it.
    if cur.vm_state == vm::ERROR {
        cur.vm_state = vm::ACTIVE.into();
    }
    cur.tried_hosts = vec![source];
    cur.host = None;
    cur.node = None;
    cur.task_state = Some(task::REBUILDING.into());
    cur.fault = None;
    cur.generation += 1;
    cur.updated_us = now;
    tx.update(&*cur)?;
    record_action_by(tx, cur, "evacuate", user_id, rid)?;
    Ok(())
}

/// The lease holder's pass: with instance HA on, evacuates the servers
/// of every node down for longer than `--evacuate-after`, each only when
/// the scheduler has somewhere to put it (a site whose every node is down
/// keeps its servers where they are until one returns).
pub fn sweep(state: &AppState) -> Result<(), ApiError> {
    let cfg = &state.compute.config;
    if !cfg.instance_ha {
        return Ok(());
    }
    let after = cfg.evacuate_after_s.max(cfg.service_down_time_s) as i64 * 1_000_000;
    let now = now_us();
    let nodes = state.store.list::<ComputeNode>(&StoreQuery::all())?;
    if !nodes.iter().any(|n| is_up(state, n)) {
        return Ok(());
    }
    for n in nodes.iter().filter(|n| !is_up(state, n)) {
        // Forced down is the operator's word that the node is fenced.
        if !n.forced_down && now - last_seen(state, n) < after {
            continue;
        }
        for s in state.store.list::<Server>(&StoreQuery::parent(&n.id))? {
            if s.task_state.is_some()
                || !matches!(s.vm_state.as_str(), vm::ACTIVE | vm::STOPPED)
                || !protected(&s)
            {
                continue;
            }
            match super::scheduler::pick_destination(state, &s, None)? {
                Ok(_) => {}
                Err(why) => {
                    tracing::debug!(server = %s.id, host = %n.id, why, "cannot evacuate yet");
                    continue;
                }
            }
            let rid = format!("req-ha-{}", uuid::Uuid::new_v4());
            let moved = state.store.write(|tx| {
                let Some(mut cur) = tx.get::<Server>(&s.id)? else {
                    return Ok::<_, ApiError>(false);
                };
                if cur.host.as_deref() != Some(n.id.as_str()) || cur.generation != s.generation {
                    return Ok(false);
                }
                begin_in(tx, &mut cur, None, HA_USER, &rid)?;
                Ok(true)
            })?;
            if moved {
                tracing::warn!(server = %s.id, host = %n.id, "node down; evacuating its server");
                super::scheduler::submit(state, vec![s.id.clone()]);
            }
        }
    }
    Ok(())
}
