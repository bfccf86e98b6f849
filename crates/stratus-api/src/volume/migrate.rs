//! Volume migration between storage nodes: `os-migrate_volume` (admins)
//! and a retype whose new type the volume's node does not offer
//! (`migration_policy: on-demand`), as Cinder moves a volume between
//! backends.
//!
//! A migration is a [`VolumeMove`] record beside the volume. The
//! destination node copies the volume from the source node's NBD export
//! (the one VMs on other nodes use) into a new file of its own
//! ([`VolumeTask::Fetch`]); the volume stays where it is meanwhile
//! (`maintenance`, or `retyping` for a retype; `migration_status`
//! `migrating`). When the copy is whole, one write moves the volume to
//! the destination (its host, and its new type for a retype) and hands
//! the source's file to the source node to remove
//! ([`VolumeTask::Discard`]); a failed copy leaves the volume where it
//! was (`migration_status` `error`) and the destination removes what it
//! wrote. The record goes once the discard is done, and only then may the
//! volume move again, so a discard never meets a newer copy of the same
//! volume.
//!
//! Only volumes that nothing has attached move: an attached volume's
//! data changes under the copy (Cinder has Nova swap it; here that is a
//! later slice), so it is a 400.

use serde_json::Value;
use stratus_store::{Query, Tx};
use stratus_wire::volume::{VolumeReport, VolumeTask, VolumeWork};

use super::model::{Snapshot, Volume, VolumeType};
pub use super::moves::VolumeMove;
use super::service::{self, Capacity};
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

/// The migration of volume `volume_id` under way, if any.
fn of_volume(tx: &Tx, volume_id: &str) -> Result<Option<VolumeMove>, ApiError> {
    Ok(tx
        .list::<VolumeMove>(&Query::all())?
        .into_iter()
        .find(|m| m.volume_id == volume_id))
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(msg)
}

/// `os-migrate_volume` (admins; the caller checked): `host` names the
/// destination as Cinder does (`node`, `node@backend` or
/// `node@backend#pool`). `force_host_copy` changes nothing (every
/// migration is a host copy), and `lock_volume` is what always happens:
/// the volume is `maintenance` while it moves, so nothing else changes
/// it meanwhile.
pub fn migrate(state: &AppState, tx: &Tx, v: &mut Volume, arg: &Value) -> Result<(), ApiError> {
    let host = arg
        .get("host")
        .and_then(Value::as_str)
        .filter(|h| !h.trim().is_empty())
        .ok_or_else(|| bad("Invalid input received: host must be given."))?;
    for flag in ["force_host_copy", "lock_volume"] {
        if let Some(x) = arg.get(flag)
            && super::parse_bool(x).is_none()
        {
            return Err(bad(format!(
                "Invalid input received: {flag} must be a boolean."
            )));
        }
    }
    let mut parts = host.splitn(2, '@');
    let node = parts.next().unwrap_or_default();
    let (backend, pool) = match parts.next() {
        Some(rest) => match rest.split_once('#') {
            Some((b, p)) => (Some(b), Some(p)),
            None => (Some(rest), None),
        },
        None => (None, None),
    };
    let dest = service::capacities(state, tx)?.into_iter().find(|c| {
        c.node.id == node
            && backend.is_none_or(|b| b == c.node.backend())
            && pool.is_none_or(|p| p == c.node.backend())
            && c.up
            && !c.node.disabled
    });
    let Some(dest) = dest else {
        return Err(bad(format!("No available service named {host}")));
    };
    check(tx, v)?;
    if v.host.as_deref() == Some(dest.node.id.as_str()) {
        return Err(bad(
            "Destination host must be different than the current host.",
        ));
    }
    if dest.zone != v.availability_zone {
        return Err(bad(format!(
            "Invalid host: {host} is in availability zone {}, the volume in {}.",
            dest.zone, v.availability_zone
        )));
    }
    let vtype = tx.get::<VolumeType>(&v.volume_type_id)?;
    if let Some(t) = &vtype
        && !service::satisfies(&service::capabilities(&dest), &t.extra_specs)
    {
        return Err(bad(format!(
            "No valid backend was found. {host} does not offer the volume's type {}: retype it first.",
            t.name
        )));
    }
    if !service::fits(&dest, v.size) {
        return Err(bad(format!(
            "No valid backend was found. {host} has no room for {} GiB.",
            v.size
        )));
    }
    start(state, tx, v, &dest, None, "maintenance")
}

/// A retype of `v` to `to`: `Ok(false)` when its node offers the new
/// type (the record changes, no data moves); `Ok(true)` when it has
/// begun to move to a node that does (`on_demand`; the type changes
/// when it has moved); a 400 when it would have to move and may not, or
/// no node offers the type.
pub fn retype(
    state: &AppState,
    tx: &Tx,
    v: &mut Volume,
    to: &VolumeType,
    on_demand: bool,
) -> Result<bool, ApiError> {
    let Some(host) = v.host.clone() else {
        return Ok(false);
    };
    let caps = service::capacities(state, tx)?;
    let offers = |c: &Capacity| service::satisfies(&service::capabilities(c), &to.extra_specs);
    if caps.iter().any(|c| c.node.id == host && offers(c)) {
        return Ok(false);
    }
    if !on_demand {
        return Err(bad(format!(
            "Invalid volume: Retype requires migration but is not allowed: storage node {host} does not offer volume type {}.",
            to.name
        )));
    }
    check(tx, v)?;
    let dest = service::pick(caps.into_iter().filter(|c| {
        c.node.id != host
            && c.up
            && !c.node.disabled
            && c.zone == v.availability_zone
            && service::fits(c, v.size)
            && offers(c)
    }));
    let Some(dest) = dest else {
        return Err(bad(format!(
            "No valid backend was found. No storage node in zone {} offers volume type {} with room for {} GiB.",
            v.availability_zone, to.name, v.size
        )));
    };
    start(state, tx, v, &dest, Some(to.id.clone()), "retyping")?;
    Ok(true)
}

/// What Cinder asks of a volume before it moves (in its order), and what
/// this implementation cannot move yet.
fn check(tx: &Tx, v: &Volume) -> Result<(), ApiError> {
    if !matches!(v.status.as_str(), "available" | "in-use") {
        return Err(bad(format!(
            "Invalid volume: Volume status must be available or in-use to migrate (it is {}).",
            v.status
        )));
    }
    if v.migration_status.as_deref() == Some("migrating") || of_volume(tx, &v.id)?.is_some() {
        return Err(bad(format!(
            "Invalid volume: Volume {} is already part of an active migration.",
            v.id
        )));
    }
    let has_snapshots = tx
        .list::<Snapshot>(&Query::owner(&v.project_id))?
        .iter()
        .any(|s| s.volume_id == v.id);
    if has_snapshots {
        return Err(bad(format!(
            "Invalid volume: Volume {} must not have snapshots.",
            v.id
        )));
    }
    if v.group_id.is_some() {
        return Err(bad(format!(
            "Invalid volume: Volume {} must not be part of a group.",
            v.id
        )));
    }
    if !v.attachments.is_empty() || v.status == "in-use" {
        return Err(bad(format!(
            "Invalid volume: Volume {} is attached; moving an attached volume to another storage node is not supported, detach it first.",
            v.id
        )));
    }
    if v.task.is_some() {
        return Err(bad(format!(
            "Invalid volume: volume {} is busy: its storage node is working on it.",
            v.id
        )));
    }
    Ok(())
}

/// Records the move of `v` to `dest` (the checks passed).
fn start(
    state: &AppState,
    tx: &Tx,
    v: &mut Volume,
    dest: &Capacity,
    new_type_id: Option<String>,
    status: &str,
) -> Result<(), ApiError> {
    let Some(from) = v.host.clone() else {
        return Err(bad("Invalid volume: the volume is on no storage node."));
    };
    let exports = tx
        .get::<super::model::StorageNode>(&from)?
        .is_some_and(|n| n.nbd.is_some());
    if !exports || crate::compute::service::nbd_target(state, &from, &v.id)?.is_none() {
        return Err(bad(format!(
            "Invalid volume: storage node {from} cannot export volumes to other nodes (no qemu-storage-daemon there), so the volume cannot leave it."
        )));
    }
    // The volume's generation numbers every task on its id, the move's
    // included, so no node mistakes one for another it ran.
    v.generation += 1;
    tx.insert(&VolumeMove {
        id: uuid::Uuid::new_v4().to_string(),
        project_id: v.project_id.clone(),
        volume_id: v.id.clone(),
        from,
        to: dest.node.id.clone(),
        host: dest.node.id.clone(),
        task: Some(VolumeTask::Fetch),
        generation: v.generation,
        size_gb: v.size,
        new_type_id,
        prior_status: v.status.clone(),
        created_us: now_us(),
    })?;
    v.status = status.into();
    v.migration_status = Some("migrating".into());
    v.fault = None;
    Ok(())
}

/// The migration tasks for storage node `host`.
pub fn work(state: &AppState, host: &str) -> Result<Vec<VolumeWork>, ApiError> {
    let mut out = Vec::new();
    for m in state.store.list::<VolumeMove>(&Query::parent(host))? {
        let Some(task) = m.task else { continue };
        let nbd = match task {
            VolumeTask::Fetch => crate::compute::service::nbd_target(state, &m.from, &m.volume_id)?,
            _ => None,
        };
        out.push(VolumeWork {
            id: m.id,
            task,
            generation: m.generation,
            size_gb: m.size_gb,
            source: None,
            volume_id: Some(m.volume_id),
            upload: None,
            nbd,
        });
    }
    Ok(out)
}

/// The volumes storage node `host` exports for another node to copy.
pub fn exports(state: &AppState, host: &str) -> Result<Vec<String>, ApiError> {
    Ok(state
        .store
        .list::<VolumeMove>(&Query::all())?
        .into_iter()
        .filter(|m| m.from == host && m.task == Some(VolumeTask::Fetch))
        .map(|m| m.volume_id)
        .collect())
}

/// Whether `id` names a migration (whose reports [`report`] settles).
pub fn owns_task(state: &AppState, id: &str) -> Result<bool, ApiError> {
    Ok(state.store.get::<VolumeMove>(id)?.is_some())
}

/// Settles node `host`'s report of a migration task; a stale one
/// changes nothing.
pub fn report(state: &AppState, host: &str, id: &str, r: &VolumeReport) -> Result<(), ApiError> {
    let rev = state.store.write(|tx| task_done(tx, host, id, r))?;
    if let Some(rev) = rev {
        service::written(state, rev);
    }
    Ok(())
}

fn task_done(tx: &Tx, host: &str, id: &str, r: &VolumeReport) -> Result<Option<i64>, ApiError> {
    let Some(mut m) = tx.get::<VolumeMove>(id)? else {
        return Ok(None);
    };
    if m.host != host || m.task != Some(r.task) || m.generation != r.generation {
        return Ok(None);
    }
    if r.task == VolumeTask::Discard {
        if let Some(e) = &r.error {
            tracing::warn!(volume = %m.volume_id, node = %host, error = %e, "a migrated volume's old file could not be removed");
        }
        tx.delete::<VolumeMove>(id)?;
        return Ok(Some(tx.last_revision()?));
    }
    let now = now_us();
    // The volume moves only if it is still the one that was copied: on
    // the source, migrating, with nothing attached (an admin's reset or
    // force delete meanwhile ends the move, and the copy goes).
    let volume = tx.get::<Volume>(&m.volume_id)?.filter(|v| {
        v.host.as_deref() == Some(m.from.as_str())
            && v.migration_status.as_deref() == Some("migrating")
            && v.attachments.is_empty()
            && v.task.is_none()
    });
    let mut discard_on = m.to.clone();
    if let Some(mut v) = volume {
        if matches!(v.status.as_str(), "maintenance" | "retyping") {
            v.status = m.prior_status.clone();
        }
        v.updated_us = now;
        match &r.error {
            None => {
                tracing::info!(volume = %v.id, from = %m.from, to = %m.to, "volume migrated");
                v.host = Some(m.to.clone());
                v.migration_status = Some("success".into());
                if let Some(t) = m.new_type_id.take() {
                    v.volume_type_id = t;
                }
                v.generation += 1;
                discard_on = m.from.clone();
            }
            Some(e) => {
                tracing::warn!(volume = %v.id, from = %m.from, to = %m.to, error = %e, "a volume migration failed");
                v.migration_status = Some("error".into());
                v.fault = Some(e.clone());
            }
        }
        tx.update(&v)?;
    }
    m.host = discard_on;
    m.task = Some(VolumeTask::Discard);
    m.generation += 1;
    Ok(Some(tx.update(&m)?))
}
