//! The record of a volume moving between storage nodes
//! ([`VolumeMove`]), apart from the migration's rules (`migrate.rs`), so
//! that capacity and attachment code can read it.

use serde::{Deserialize, Serialize};
use stratus_store::{Query, Record, Tx};
use stratus_wire::volume::VolumeTask;

use super::model::Volume;
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

/// A volume moving from storage node `from` to `to`; `host` runs `task`
/// now (`to` while it copies, then whichever node holds the file to
/// remove).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeMove {
    pub id: String,
    pub project_id: String,
    pub volume_id: String,
    pub from: String,
    pub to: String,
    pub host: String,
    #[serde(default)]
    pub task: Option<VolumeTask>,
    #[serde(default)]
    pub generation: u64,
    /// The volume's size in GiB.
    pub size_gb: u64,
    /// A retype's new type, set on the volume when it has moved.
    #[serde(default)]
    pub new_type_id: Option<String>,
    /// What the volume's status goes back to.
    pub prior_status: String,
    /// The server whose running VM copies the volume, for a volume in
    /// use: the destination makes an empty file (the fetch task without
    /// a source), then the VM's node mirrors the guest's disk onto it
    /// (its mapping is `swapping` with `swap_from` naming the volume
    /// itself) and the task is `None` until the node reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    pub created_us: i64,
}

record!(
    VolumeMove,
    "volume_move",
    owner = |m| Some(&m.project_id),
    parent = |m| Some(m.host.as_str())
);

/// GiB node `host` is copying in (counted as provisioned there).
pub fn incoming_gb(tx: &Tx, host: &str) -> Result<u64, ApiError> {
    Ok(tx
        .list::<VolumeMove>(&Query::parent(host))?
        .iter()
        .filter(|m| m.task == Some(VolumeTask::Fetch))
        .map(|m| m.size_gb)
        .sum())
}

/// The migration of volume `volume_id` under way, if any.
pub fn of_volume(tx: &Tx, volume_id: &str) -> Result<Option<VolumeMove>, ApiError> {
    Ok(tx
        .list::<VolumeMove>(&Query::all())?
        .into_iter()
        .find(|m| m.volume_id == volume_id))
}

/// The storage node a volume in use is being mirrored to by its VM
/// (the place its server's node opens it at now), if any.
pub fn mirror_target(state: &AppState, volume_id: &str) -> Result<Option<String>, ApiError> {
    Ok(state
        .store
        .list::<VolumeMove>(&Query::all())?
        .into_iter()
        .find(|m| m.volume_id == volume_id && m.server_id.is_some() && m.task.is_none())
        .map(|m| m.to))
}

/// Ends the migration of volume `volume_id` in use once its VM's node
/// has spoken (`Ok`: the guest's disk is the destination's now).
pub fn finish(tx: &Tx, volume_id: &str, outcome: Result<(), String>) -> Result<(), ApiError> {
    let Some(mut m) =
        of_volume(tx, volume_id)?.filter(|m| m.server_id.is_some() && m.task.is_none())
    else {
        return Ok(());
    };
    // Where the guest's disk is decides, whatever else changed on the
    // record meanwhile (an admin's reset of its migration status).
    let volume = tx
        .get::<Volume>(volume_id)?
        .filter(|v| v.host.as_deref() == Some(m.from.as_str()));
    conclude(tx, &mut m, volume, outcome.err())?;
    tx.update(&m)?;
    Ok(())
}

/// Ends move `m` (the caller writes it): with no `error`, volume `v`
/// (still the one that was moving, or `None`) is the destination's now
/// (its host, and a retype's new type) and the source's file goes;
/// otherwise it stays where it was (`migration_status: error`) and the
/// destination's copy goes. Either way its status goes back (to
/// `available` when nothing is attached any more).
pub fn conclude(
    tx: &Tx,
    m: &mut VolumeMove,
    v: Option<Volume>,
    error: Option<String>,
) -> Result<(), ApiError> {
    let mut discard_on = m.to.clone();
    if let Some(mut v) = v {
        if matches!(v.status.as_str(), "maintenance" | "retyping") {
            v.status = if v.attachments.is_empty() {
                "available".to_string()
            } else {
                m.prior_status.clone()
            };
        }
        v.updated_us = now_us();
        match error {
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
                v.fault = Some(e);
            }
        }
        tx.update(&v)?;
    }
    m.host = discard_on;
    m.task = Some(VolumeTask::Discard);
    m.generation += 1;
    Ok(())
}
