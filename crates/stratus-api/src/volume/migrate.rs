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
//! A volume in use moves as Cinder has Nova move it, by its VM: the
//! destination makes an empty file, then the server's mapping is
//! `swapping` with `swap_from` naming the volume itself, and the VM's
//! node mirrors the running guest's disk onto the new copy (QEMU's block
//! mirror, as for a swap) and says so (`AttachReport::moved`);
//! `moves::finish` then moves the volume, or leaves it where it was.
//! Only a VM's data volume moves that way (active or paused, on a node
//! whose agent advertises `move-volume`); a container's, a root volume
//! or one with several attachments is a 400.

use serde_json::Value;
use stratus_store::{Query, Tx};
use stratus_wire::volume::{VolumeReport, VolumeTask, VolumeWork};

use super::model::{Snapshot, Volume, VolumeType};
use super::moves::VolumeMove;
use super::moves::of_volume;
use super::service::{self, Capacity};
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

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
    let server = check(tx, v)?;
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
    start(state, tx, v, &dest, None, server, "maintenance")
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
    let server = check(tx, v)?;
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
    start(state, tx, v, &dest, Some(to.id.clone()), server, "retyping")?;
    Ok(true)
}

/// What Cinder asks of a volume before it moves (in its order), and what
/// this implementation cannot move yet; the server whose VM copies it
/// when it is attached.
fn check(tx: &Tx, v: &Volume) -> Result<Option<String>, ApiError> {
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
    if v.task.is_some() {
        return Err(bad(format!(
            "Invalid volume: volume {} is busy: its storage node is working on it.",
            v.id
        )));
    }
    if v.attachments.is_empty() && v.status != "in-use" {
        return Ok(None);
    }
    in_use(tx, v).map(Some)
}

/// The server whose running VM can move volume `v` in use (its QEMU
/// mirrors the guest's disk onto the new copy, as Nova's swap does for
/// Cinder): one attachment, to a VM that is active or paused with no
/// task and whose node can do it, as a data volume (not its root), with
/// no other volume change under way. A 400 saying why not otherwise.
fn in_use(tx: &Tx, v: &Volume) -> Result<String, ApiError> {
    use crate::compute::model::Server;
    use crate::compute::states::vm;
    let refuse = |why: String| {
        Err(bad(format!(
            "Invalid volume: volume {} cannot move while attached: {why}",
            v.id
        )))
    };
    let [a] = v.attachments.as_slice() else {
        return refuse(format!("it has {} attachments", v.attachments.len()));
    };
    let Some(s) = a
        .server_id
        .as_deref()
        .map(|sid| tx.get::<Server>(sid))
        .transpose()?
        .flatten()
    else {
        return refuse("it is not attached to a server".into());
    };
    if !s.volumes.iter().any(|x| x.volume_id == v.id) {
        return refuse(format!("server {} does not have it", s.id));
    }
    if s.boot_volume().is_some_and(|b| b.volume_id == v.id) {
        return refuse(format!("it is the root volume of server {}", s.id));
    }
    if s.task_state.is_some() || !matches!(s.vm_state.as_str(), vm::ACTIVE | vm::PAUSED) {
        return refuse(format!(
            "its server {} must be active or paused with no task (it is {}, task {})",
            s.id,
            s.vm_state,
            s.task_state.as_deref().unwrap_or("none")
        ));
    }
    if !crate::compute::volume_attachments::runs_vm(tx, &s)? {
        return refuse(format!(
            "server {} is a container, whose volume is a mounted file system that cannot change under it; detach it first",
            s.id
        ));
    }
    if let Some(x) = s.volumes.iter().find(|x| x.state != "attached") {
        return refuse(format!(
            "volume {} of server {} is {}; wait until that is done",
            x.volume_id, s.id, x.state
        ));
    }
    let can = match s.host.as_deref() {
        Some(h) => crate::compute::volume_attachments::node_can(
            tx,
            h,
            stratus_wire::volume::FEATURE_MOVE_VOLUME,
        )?,
        None => false,
    };
    if !can {
        return refuse(format!(
            "the node of server {} cannot copy a running guest's disk (its agent runs no VMs, or is too old)",
            s.id
        ));
    }
    Ok(s.id)
}

/// Records the move of `v` to `dest` (the checks passed).
fn start(
    state: &AppState,
    tx: &Tx,
    v: &mut Volume,
    dest: &Capacity,
    new_type_id: Option<String>,
    server_id: Option<String>,
    status: &str,
) -> Result<(), ApiError> {
    let Some(from) = v.host.clone() else {
        return Err(bad("Invalid volume: the volume is on no storage node."));
    };
    if let Some(sid) = &server_id {
        // The VM's node reaches the new copy directly on the
        // destination, else over its NBD export.
        let host = tx
            .get::<crate::compute::model::Server>(sid)?
            .and_then(|s| s.host);
        if host.as_deref() != Some(dest.node.id.as_str()) && dest.node.nbd.is_none() {
            return Err(bad(format!(
                "Invalid volume: storage node {} exports no volumes to other nodes (no qemu-storage-daemon there), and the volume's server runs on {}.",
                dest.node.id,
                host.as_deref().unwrap_or("no node")
            )));
        }
    }
    // An available volume is read from the source's export (one in use
    // is read by its VM, where it reads it now).
    let exports = tx
        .get::<super::model::StorageNode>(&from)?
        .is_some_and(|n| n.nbd.is_some());
    if server_id.is_none()
        && (!exports || crate::compute::service::nbd_target(state, &from, &v.id)?.is_none())
    {
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
        server_id,
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
        // A volume in use is copied by its VM: the destination only
        // makes the empty file.
        let nbd = match task {
            VolumeTask::Fetch if m.server_id.is_none() => {
                crate::compute::service::nbd_target(state, &m.from, &m.volume_id)?
            }
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
/// (The source's export while a copy runs; the destination's, to a VM
/// on a third node, while that VM mirrors a volume in use onto it. The
/// source keeps exporting a volume in use to its VM elsewhere as any
/// attached volume.)
pub fn exports(state: &AppState, host: &str) -> Result<Vec<String>, ApiError> {
    let mut out = Vec::new();
    for m in state.store.list::<VolumeMove>(&Query::all())? {
        let copying = m.from == host && m.task == Some(VolumeTask::Fetch) && m.server_id.is_none();
        let mirrored = m.to == host
            && m.task.is_none()
            && match m.server_id.as_deref() {
                Some(sid) => state
                    .store
                    .get::<crate::compute::model::Server>(sid)?
                    .and_then(|s| s.host)
                    .is_some_and(|h| h != host),
                None => false,
            };
        if copying || mirrored {
            out.push(m.volume_id);
        }
    }
    Ok(out)
}

/// Whether `id` names a migration (whose reports [`report`] settles).
pub fn owns_task(state: &AppState, id: &str) -> Result<bool, ApiError> {
    Ok(state.store.get::<VolumeMove>(id)?.is_some())
}

/// Settles node `host`'s report of a migration task; a stale one
/// changes nothing.
pub fn report(state: &AppState, host: &str, id: &str, r: &VolumeReport) -> Result<(), ApiError> {
    let mut wake = None;
    let rev = state.store.write(|tx| {
        wake = None;
        task_done(tx, host, id, r, &mut wake)
    })?;
    if let Some(rev) = rev {
        service::written(state, rev);
    }
    if let Some(h) = wake {
        state.compute.notify(Some(&h));
    }
    Ok(())
}

/// The mirror of volume `volume_id` begins on its server `sid`'s node:
/// the mapping is `swapping` with `swap_from` naming the volume itself,
/// so the node's next assignment opens the new copy and mirrors onto it.
/// The server's node (to wake), or `None` when the server cannot do it
/// any more (gone, stopped, busy).
fn begin_mirror(tx: &Tx, sid: &str, volume_id: &str) -> Result<Option<String>, ApiError> {
    use crate::compute::states::vm;
    let Some(mut s) = tx.get::<crate::compute::model::Server>(sid)? else {
        return Ok(None);
    };
    if s.task_state.is_some() || !matches!(s.vm_state.as_str(), vm::ACTIVE | vm::PAUSED) {
        return Ok(None);
    }
    if s.volumes.iter().any(|x| x.state != "attached") {
        return Ok(None);
    }
    let Some(sv) = s.volumes.iter_mut().find(|x| x.volume_id == volume_id) else {
        return Ok(None);
    };
    sv.swap_from = Some(crate::compute::model::SwapFrom {
        volume_id: volume_id.to_string(),
        attachment_id: sv.attachment_id.clone(),
    });
    sv.state = "swapping".into();
    s.updated_us = now_us();
    tx.update(&s)?;
    Ok(Some(s.host.clone().unwrap_or_default()))
}

fn task_done(
    tx: &Tx,
    host: &str,
    id: &str,
    r: &VolumeReport,
    wake: &mut Option<String>,
) -> Result<Option<i64>, ApiError> {
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
    // The volume moves only if it is still the one that was copied: on
    // the source, migrating, with nothing attached (an admin's reset or
    // force delete meanwhile ends the move, and the copy goes).
    let volume = tx.get::<Volume>(&m.volume_id)?.filter(|v| {
        v.host.as_deref() == Some(m.from.as_str())
            && v.migration_status.as_deref() == Some("migrating")
            && (m.server_id.is_some() || v.attachments.is_empty())
            && v.task.is_none()
    });
    let mut error = r.error.clone();
    // A volume in use: its empty copy is ready, and its VM's node copies
    // the guest's disk onto it ([`super::moves::finish`] ends it).
    if let (Some(sid), Some(_), None) = (m.server_id.clone(), &volume, &error) {
        match begin_mirror(tx, &sid, &m.volume_id)? {
            Some(h) => {
                *wake = Some(h);
                m.task = None;
                return Ok(Some(tx.update(&m)?));
            }
            None => {
                error = Some(format!(
                    "server {sid} stopped, changed or went before it could copy the volume"
                ))
            }
        }
    }
    super::moves::conclude(tx, &mut m, volume, error)?;
    Ok(Some(tx.update(&m)?))
}
