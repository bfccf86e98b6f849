//! Records of backups, uploads to images and transfers (the records of
//! `backups.rs`, `upload.rs` and `transfers.rs`, here so that the quota
//! and the storage node protocol can read them without depending on
//! those handlers).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use stratus_store::{Record, Tx};
use stratus_wire::volume::VolumeTask;

use super::model::Volume;
use super::{Mv, VCtx, not_found, opt_str};
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

/// A backup. `host` is the storage node running its current `task`
/// (the volume's node for a backup, the target's for a restore).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Backup {
    pub id: String,
    pub project_id: String,
    pub user_id: String,
    pub volume_id: String,
    #[serde(default)]
    pub snapshot_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// The volume's size in GiB (what a restore needs).
    pub size: u64,
    /// `creating`, `available`, `restoring`, `error`.
    pub status: String,
    pub availability_zone: String,
    #[serde(default)]
    pub container: Option<String>,
    /// The backup this one is incremental to.
    #[serde(default)]
    pub parent_id: Option<String>,
    #[serde(default)]
    pub is_incremental: bool,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub task: Option<VolumeTask>,
    #[serde(default)]
    pub generation: u64,
    /// The volume a restore under way writes.
    #[serde(default)]
    pub restore_volume_id: Option<String>,
    /// What the volume (or snapshot) read goes back to afterwards.
    #[serde(default)]
    pub prior_status: Option<String>,
    /// The data: the volume's size in bytes and its chunks in order
    /// (`None`: zeros), recorded by the node at `manifest_generation`.
    #[serde(default)]
    pub size_bytes: u64,
    #[serde(default)]
    pub chunks: Vec<Option<String>>,
    /// The volume's metadata when it was backed up: a restore gives it
    /// back to the volume written (as Cinder's backup metadata does).
    #[serde(default)]
    pub volume_metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub manifest_generation: u64,
    #[serde(default)]
    pub fault: Option<String>,
    /// The backup's own metadata (3.43), not the volume's.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    pub created_us: i64,
    pub updated_us: i64,
}

record!(
    Backup,
    "volume_backup",
    owner = |b| Some(&b.project_id),
    parent = |b| b.host.as_deref(),
    name = |b| b.name.as_deref(),
    created = |b| Some(b.created_us),
    state = |b| Some(b.status.clone())
);

/// An upload of volume `volume_id` into image `image_id`, run by `host`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeUpload {
    /// The upload's own id (the task's).
    pub id: String,
    pub project_id: String,
    pub volume_id: String,
    pub image_id: String,
    pub disk_format: String,
    pub host: Option<String>,
    #[serde(default)]
    pub task: Option<VolumeTask>,
    #[serde(default)]
    pub generation: u64,
    /// What the volume goes back to.
    pub prior_status: String,
    #[serde(default)]
    pub fault: Option<String>,
    pub created_us: i64,
}

record!(
    VolumeUpload,
    "volume_upload",
    owner = |u| Some(&u.project_id),
    parent = |u| u.host.as_deref()
);

/// A volume offered to another project.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeTransfer {
    pub id: String,
    /// The giving project (the volume's).
    pub project_id: String,
    pub volume_id: String,
    #[serde(default)]
    pub name: Option<String>,
    pub salt: String,
    /// sha256(salt + auth_key), hex.
    pub crypt_hash: String,
    /// The volume's snapshots stay with the giver (3.55).
    #[serde(default)]
    pub no_snapshots: bool,
    pub created_us: i64,
}

record!(
    VolumeTransfer,
    "volume_transfer",
    owner = |t| Some(&t.project_id),
    name = |t| t.name.as_deref(),
    created = |t| Some(t.created_us)
);

pub(crate) fn find(tx: &Tx, ctx: &VCtx, id: &str) -> Result<Backup, ApiError> {
    tx.get::<Backup>(id)?
        .filter(|b| ctx.owns(&b.project_id))
        .ok_or_else(|| not_found("Backup", id))
}

/// Gives the restore of `b` into `v` to `v`'s storage node.
pub(crate) fn start_restore(tx: &Tx, b: &mut Backup, v: &Volume) -> Result<i64, ApiError> {
    b.status = "restoring".into();
    b.host = v.host.clone();
    b.task = Some(VolumeTask::Restore);
    b.generation += 1;
    b.restore_volume_id = Some(v.id.clone());
    b.fault = None;
    b.updated_us = now_us();
    Ok(tx.update(b)?)
}

/// The backup a `POST /volumes` body asks to make the volume from
/// (`backup_id`, 3.47; ignored before, as Cinder's older schema does).
/// Checks it as Cinder does (a string; not beside `imageRef`,
/// `snapshot_id` or `source_volid`: 400; the caller's: 404;
/// `available`: 400; a `size` given must hold it: 400) and, when the
/// body gives no `size`, sets it to the backup's. Call it on the body
/// before parsing it; then call [`restore_into_new`] once the volume is
/// inserted.
pub(crate) fn backup_of_create(
    state: &AppState,
    ctx: &VCtx,
    mv: Mv,
    b: &mut Value,
) -> Result<Option<String>, ApiError> {
    let Some(v) = b.get_mut("volume").filter(|v| v.is_object()) else {
        return Ok(None);
    };
    if !mv.at_least(47) {
        return Ok(None);
    }
    let Some(id) = opt_str(v, "backup_id", 255)? else {
        return Ok(None);
    };
    if ["imageRef", "image_id", "snapshot_id", "source_volid"]
        .iter()
        .any(|k| v.get(*k).is_some_and(|x| !x.is_null()))
    {
        return Err(ApiError::bad_request(
            "Invalid input received: only one of imageRef, snapshot_id, source_volid and backup_id may be given.",
        ));
    }
    let bk = state
        .store
        .get::<Backup>(&id)?
        .filter(|x| ctx.owns(&x.project_id))
        .ok_or_else(|| not_found("Backup", &id))?;
    if bk.status != "available" {
        return Err(ApiError::bad_request(format!(
            "Invalid backup: Backup status must be available (it is {}).",
            bk.status
        )));
    }
    match v.get("size") {
        None | Some(Value::Null) => v["size"] = json!(bk.size),
        Some(s) => {
            if s.as_u64().is_some_and(|n| n < bk.size) {
                return Err(ApiError::bad_request(format!(
                    "Invalid input received: Backup size is {}GB and doesn't fit in a volume of size {s}GB.",
                    bk.size
                )));
            }
        }
    }
    Ok(Some(id))
}

/// Makes a just-created volume from backup `backup_id` (3.47).
///
/// Contract, for the volume create path: call it in the same store
/// write, after `tx.insert` of the new volume `volume_id`, which must be
/// placed (`host` set) and at least the backup's size. It checks the
/// backup again (the caller's, `available`, not larger than the volume:
/// 404/400 otherwise, and the caller's write is then rolled back with
/// the error), turns the volume's pending `create` task into the
/// backup's `restore` task on the volume's node (the node writes the
/// whole file from the chunks, so no empty file is made first), sets the
/// volume `restoring-backup` and the backup `restoring`, and returns the
/// volume as updated (render that) with the revision of its last write. The restore settles as any other:
/// volume `available` (with the backed-up volume metadata added) or
/// `error_restoring`, backup back to `available`. The caller wakes the
/// nodes after the commit (`service::written`) as for any create. A
/// volume that found no node (status `error`, no host) is left as it
/// is.
pub(crate) fn restore_into_new(
    tx: &Tx,
    ctx: &VCtx,
    backup_id: &str,
    volume_id: &str,
) -> Result<(Volume, i64), ApiError> {
    let mut b = find(tx, ctx, backup_id)?;
    if b.status != "available" {
        return Err(ApiError::bad_request(format!(
            "Invalid backup: Backup status must be available (it is {}).",
            b.status
        )));
    }
    let mut v = tx
        .get::<Volume>(volume_id)?
        .ok_or_else(|| not_found("Volume", volume_id))?;
    if v.host.is_none() {
        return Ok((v, tx.last_revision()?));
    }
    if v.size < b.size {
        return Err(ApiError::bad_request(format!(
            "Invalid input received: Backup size is {}GB and doesn't fit in a volume of size {}GB.",
            b.size, v.size
        )));
    }
    v.task = None;
    v.status = "restoring-backup".into();
    v.updated_us = now_us();
    tx.update(&v)?;
    let rev = start_restore(tx, &mut b, &v)?;
    Ok((v, rev))
}
