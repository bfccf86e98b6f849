//! Records of backups, uploads to images and transfers (the records of
//! `backups.rs`, `upload.rs` and `transfers.rs`, here so that the quota
//! and the storage node protocol can read them without depending on
//! those handlers).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use stratus_store::Record;
use stratus_wire::volume::VolumeTask;

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
