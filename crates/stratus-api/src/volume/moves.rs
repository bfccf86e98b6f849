//! The record of a volume moving between storage nodes
//! ([`VolumeMove`]), apart from the migration's rules (`migrate.rs`), so
//! that capacity and attachment code can read it.

use serde::{Deserialize, Serialize};
use stratus_store::{Query, Record, Tx};
use stratus_wire::volume::VolumeTask;

use crate::ApiError;

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
