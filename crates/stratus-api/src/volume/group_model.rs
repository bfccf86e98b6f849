//! Records of Cinder's generic volume groups: group types (admin-managed,
//! with group specs), groups (a set of a project's volumes of given
//! volume types) and group snapshots (one snapshot of every volume of a
//! group, taken together).
//!
//! A group holds no data of its own: its volumes carry `group_id`
//! (`model::Volume`) and the member snapshots of a group snapshot carry
//! `group_snapshot_id` (`model::Snapshot`). The group's and the group
//! snapshot's status follow their members (see `groups::settle_*`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use stratus_store::{Query as StoreQuery, Record, Tx};

use serde_json::{Value, json};

use super::model::{Snapshot, Volume};
use super::{Mv, VCtx, not_found};
use crate::ApiError;
use crate::timeutil::now_us;

/// A group type (`/group_types`): a name and group specs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupType {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub is_public: bool,
    #[serde(default)]
    pub group_specs: BTreeMap<String, String>,
    pub created_us: i64,
}

record!(
    GroupType,
    "volume_group_type",
    name = |t| Some(&t.name),
    unique = |t| Some(t.name.to_lowercase()),
    created = |t| Some(t.created_us)
);

/// A generic volume group. `status`: `creating` (only while volumes made
/// from a source are being made), `available`, `deleting`, `error`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Group {
    pub id: String,
    pub project_id: String,
    pub user_id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub status: String,
    pub availability_zone: String,
    pub group_type_id: String,
    /// The volume types its volumes may have (ids).
    pub volume_type_ids: Vec<String>,
    /// The group snapshot it was made from (`create-from-src`).
    #[serde(default)]
    pub group_snapshot_id: Option<String>,
    /// The group it was cloned from (`create-from-src`).
    #[serde(default)]
    pub source_group_id: Option<String>,
    pub created_us: i64,
    pub updated_us: i64,
}

record!(
    Group,
    "volume_group",
    owner = |g| Some(&g.project_id),
    name = |g| g.name.as_deref(),
    created = |g| Some(g.created_us),
    state = |g| Some(g.status.clone())
);

/// A group snapshot: its member snapshots carry its id. `status`:
/// `creating` until every member is made, then `available` (or `error`
/// when one failed); `deleting` until every member is gone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupSnapshot {
    pub id: String,
    pub project_id: String,
    pub user_id: String,
    pub group_id: String,
    pub group_type_id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub status: String,
    pub created_us: i64,
    pub updated_us: i64,
}

record!(
    GroupSnapshot,
    "volume_group_snapshot",
    owner = |g| Some(&g.project_id),
    parent = |g| Some(&g.group_id),
    name = |g| g.name.as_deref(),
    created = |g| Some(g.created_us),
    state = |g| Some(g.status.clone())
);

// ---- settling with the storage nodes' work (called from `service::task_done`) ----

/// The volumes of a group.
pub(crate) fn group_members(tx: &Tx, g: &Group) -> Result<Vec<Volume>, ApiError> {
    Ok(tx
        .list::<Volume>(&StoreQuery::owner(&g.project_id))?
        .into_iter()
        .filter(|v| v.group_id.as_deref() == Some(g.id.as_str()))
        .collect())
}

/// The member snapshots of a group snapshot.
pub(crate) fn snapshot_members(tx: &Tx, gs: &GroupSnapshot) -> Result<Vec<Snapshot>, ApiError> {
    Ok(tx
        .list::<Snapshot>(&StoreQuery::owner(&gs.project_id))?
        .into_iter()
        .filter(|s| s.group_snapshot_id.as_deref() == Some(gs.id.as_str()))
        .collect())
}

/// Settles a volume's group after a storage task on `v` settled (`v` as
/// it is about to be written; `gone` when it was just deleted): a group
/// being made becomes available (or `error`) when its last volume is
/// made; a group being deleted goes with its last volume.
pub(crate) fn volume_settled(tx: &Tx, v: &Volume, gone: bool) -> Result<(), ApiError> {
    let Some(gid) = &v.group_id else {
        return Ok(());
    };
    let Some(mut g) = tx.get::<Group>(gid)? else {
        return Ok(());
    };
    let mut members = group_members(tx, &g)?;
    members.retain(|x| x.id != v.id);
    if !gone {
        members.push(v.clone());
    }
    match g.status.as_str() {
        "creating" => {
            if members.iter().any(|x| x.status == "creating") {
                return Ok(());
            }
            g.status = if members.iter().any(|x| x.status.starts_with("error")) {
                "error"
            } else {
                "available"
            }
            .into();
        }
        "deleting" if members.is_empty() => {
            tx.delete::<Group>(&g.id)?;
            return Ok(());
        }
        "deleting" if members.iter().any(|x| x.status == "error_deleting") => {
            g.status = "error_deleting".into();
        }
        _ => return Ok(()),
    }
    g.updated_us = now_us();
    tx.update(&g)?;
    Ok(())
}

/// Settles a snapshot's group snapshot after a storage task on `s`
/// settled (`s` as it is about to be written; `gone` when just deleted).
pub(crate) fn snapshot_settled(tx: &Tx, s: &Snapshot, gone: bool) -> Result<(), ApiError> {
    let Some(gid) = &s.group_snapshot_id else {
        return Ok(());
    };
    let Some(mut gs) = tx.get::<GroupSnapshot>(gid)? else {
        return Ok(());
    };
    let mut members = snapshot_members(tx, &gs)?;
    members.retain(|x| x.id != s.id);
    if !gone {
        members.push(s.clone());
    }
    match gs.status.as_str() {
        "creating" => {
            if members.iter().any(|x| x.status == "creating") {
                return Ok(());
            }
            gs.status = if members.iter().any(|x| x.status.starts_with("error")) {
                "error"
            } else {
                "available"
            }
            .into();
        }
        "deleting" if members.is_empty() => {
            tx.delete::<GroupSnapshot>(&gs.id)?;
            return Ok(());
        }
        "deleting" if members.iter().any(|x| x.status == "error_deleting") => {
            gs.status = "error_deleting".into();
        }
        _ => return Ok(()),
    }
    gs.updated_us = now_us();
    tx.update(&gs)?;
    Ok(())
}

/// 3.13: groups; 3.14: group snapshots and groups from a source.
pub(crate) const MV_GROUPS: u16 = 13;
pub(crate) const MV_GROUP_SNAPSHOTS: u16 = 14;
/// 3.58: `project_id` in the group and group snapshot views.
pub(crate) const MV_PROJECT_ID: u16 = 58;

/// A group snapshot the caller may see, or Cinder's 404.
pub(crate) fn find_group_snapshot(
    tx: &Tx,
    ctx: &VCtx,
    id: &str,
) -> Result<GroupSnapshot, ApiError> {
    tx.get::<GroupSnapshot>(id)?
        .filter(|g| ctx.owns(&g.project_id))
        .ok_or_else(|| not_found("GroupSnapshot", id))
}

/// A group the caller may see, or Cinder's 404.
pub(crate) fn find_group(tx: &Tx, ctx: &VCtx, id: &str) -> Result<Group, ApiError> {
    tx.get::<Group>(id)?
        .filter(|g| ctx.owns(&g.project_id))
        .ok_or_else(|| not_found("Group", id))
}

// ---- hooks for the volume and snapshot code (kept here, below them) --------------------------------

/// Adds a volume's `group_id` to its view (from 3.13).
pub(crate) fn volume_view(out: &mut Value, v: &Volume, mv: Mv) {
    if mv.at_least(MV_GROUPS) {
        out["group_id"] = json!(v.group_id);
    }
}

/// Adds a snapshot's `group_snapshot_id` to its view (from 3.14).
pub(crate) fn snapshot_view(out: &mut Value, s: &Snapshot, mv: Mv) {
    if mv.at_least(MV_GROUP_SNAPSHOTS) {
        out["group_snapshot_id"] = json!(s.group_snapshot_id);
    }
}

/// Checks that a new volume may go into group `group_id`: the caller's
/// group, available, and `volume_type` (or the default type) one of its
/// volume types. Returns the group's availability zone (where the volume
/// goes unless asked otherwise, as in Cinder).
pub(crate) fn check_new_volume(
    tx: &Tx,
    ctx: &VCtx,
    group_id: &str,
    volume_type: Option<&str>,
) -> Result<String, ApiError> {
    let g = find_group(tx, ctx, group_id)?;
    if g.status != "available" {
        return Err(ApiError::bad_request(format!(
            "Invalid group: Group {} status must be available, but current status is: {}.",
            g.id, g.status
        )));
    }
    // No type asked: the one volume create will use (the project's
    // 3.62 default, else the deployment's).
    let vt = match volume_type {
        Some(t) => super::types::find(tx, ctx, t)?,
        None => match super::default_types::default_type_for(tx, &g.project_id)? {
            Some(id) => super::types::find(tx, ctx, &id)?,
            None => super::types::find(tx, ctx, super::types::DEFAULT_TYPE)?,
        },
    };
    if !g.volume_type_ids.contains(&vt.id) {
        return Err(ApiError::bad_request(format!(
            "Invalid input received: Invalid volume_type provided: {}. The volume type must be one of the group {}'s types.",
            vt.name, g.id
        )));
    }
    Ok(g.availability_zone)
}

/// A volume of a group is deleted with its group, not on its own.
pub(crate) fn check_volume_delete(v: &Volume) -> Result<(), ApiError> {
    match &v.group_id {
        Some(g) => Err(ApiError::bad_request(format!(
            "Invalid volume: Volume {} belongs to group {g}: remove it from the group or delete the group with delete-volumes.",
            v.id
        ))),
        None => Ok(()),
    }
}

/// A volume of a group stays in its group's project: not transferred.
pub(crate) fn check_volume_transfer(v: &Volume) -> Result<(), ApiError> {
    match &v.group_id {
        Some(g) => Err(ApiError::bad_request(format!(
            "Invalid volume: Volume {} belongs to group {g}; remove it from the group to transfer it.",
            v.id
        ))),
        None => Ok(()),
    }
}

// ---- snapshot hook -------------------------------------------------------------------

/// A snapshot of a group snapshot is deleted with it, not on its own.
pub(crate) fn check_snapshot_delete(s: &Snapshot) -> Result<(), ApiError> {
    match &s.group_snapshot_id {
        Some(g) => Err(ApiError::bad_request(format!(
            "Invalid snapshot: Snapshot {} is part of group snapshot {g} and cannot be deleted on its own.",
            s.id
        ))),
        None => Ok(()),
    }
}
