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
use stratus_store::Record;

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
