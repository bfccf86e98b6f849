//! Block storage records kept in the store: volumes, snapshots, volume
//! types, quota limits and storage nodes. Like every other kind they are
//! written with an entry in the change log, so storage agents, sync and
//! other controllers follow them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use stratus_store::Record;
use stratus_wire::volume::{VolumeSource, VolumeTask};

/// A volume. `status` is Cinder's (`creating`, `available`, `extending`,
/// `deleting`, `error`, ...); `task` is what the storage node is asked
/// to do now, at `generation`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Volume {
    pub id: String,
    pub project_id: String,
    pub user_id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Size in GiB.
    pub size: u64,
    /// The size an extension under way grows it to (counted in quota).
    #[serde(default)]
    pub extend_to: Option<u64>,
    pub status: String,
    pub availability_zone: String,
    /// The storage node holding it; `None` when none could take it.
    #[serde(default)]
    pub host: Option<String>,
    pub volume_type_id: String,
    #[serde(default)]
    pub bootable: bool,
    /// `os-update_readonly_flag`; `None` until set.
    #[serde(default)]
    pub readonly: Option<bool>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub image_metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub source: Option<VolumeSource>,
    #[serde(default)]
    pub task: Option<VolumeTask>,
    /// What a [`VolumeTask::Rewrite`] writes the volume from (its own
    /// `source` stays what it was made from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite_from: Option<VolumeSource>,
    #[serde(default)]
    pub generation: u64,
    /// Why the last task failed (kept for operators; logged).
    #[serde(default)]
    pub fault: Option<String>,
    /// The servers it is attached (or being attached) to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<VolumeAttachment>,
    /// The generic volume group it belongs to (`groups.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// Cinder's `migration_status`: `migrating` while it moves to
    /// another storage node (`migrate.rs`), then `success` or `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_status: Option<String>,
    pub created_us: i64,
    pub updated_us: i64,
}

/// One attachment of a volume (Cinder's `volume_attachment`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VolumeAttachment {
    /// The attachment's own id.
    pub id: String,
    /// The server; `None` for an `os-attach` to a host only.
    #[serde(default)]
    pub server_id: Option<String>,
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub host_name: Option<String>,
    /// `reserved`, `attaching`, `attached` or `detaching` (Cinder's
    /// attach_status).
    pub status: String,
    pub attached_us: i64,
    /// `rw` or `ro` (3.54); `None` reads as `rw`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

record!(
    Volume,
    "volume",
    owner = |v| Some(&v.project_id),
    parent = |v| v.host.as_deref(),
    name = |v| v.name.as_deref(),
    created = |v| Some(v.created_us),
    state = |v| Some(v.status.clone())
);

/// A snapshot of a volume, held as a file on the volume's storage node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: String,
    pub project_id: String,
    pub user_id: String,
    pub volume_id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub size: u64,
    pub status: String,
    #[serde(default)]
    pub host: Option<String>,
    /// The volume's type (for per-type quota).
    pub volume_type_id: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub task: Option<VolumeTask>,
    #[serde(default)]
    pub generation: u64,
    #[serde(default)]
    pub fault: Option<String>,
    /// What `os-update_snapshot_status` last reported (`"80%"`); none:
    /// derived from the status.
    #[serde(default)]
    pub progress: Option<String>,
    /// The group snapshot it was taken for (`group_snapshots.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_snapshot_id: Option<String>,
    pub created_us: i64,
    pub updated_us: i64,
}

record!(
    Snapshot,
    "volume_snapshot",
    owner = |s| Some(&s.project_id),
    parent = |s| s.host.as_deref(),
    name = |s| s.name.as_deref(),
    created = |s| Some(s.created_us),
    state = |s| Some(s.status.clone())
);

/// A volume type: extra specs, and the projects a private one is shared
/// with (`os-volume-type-access`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeType {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub is_public: bool,
    #[serde(default)]
    pub extra_specs: BTreeMap<String, String>,
    #[serde(default)]
    pub projects: Vec<String>,
    /// The QoS specs associated with the type (`qos.rs`).
    #[serde(default)]
    pub qos_specs_id: Option<String>,
    /// Its encryption (`encryption.rs`); none for a plain type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<TypeEncryption>,
    pub created_us: i64,
}

/// Cinder's volume type encryption: how volumes of the type would be
/// encrypted. Kept in the type's record, so it goes with the type and
/// is checked against the type's volumes in one transaction. Volumes of
/// an encrypted type are refused until there is a key manager.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TypeEncryption {
    /// Cinder's `encryption_id`.
    pub id: String,
    /// `luks`, `luks2`, `plain` or an encryptor's class name.
    pub provider: String,
    /// `front-end` (the hypervisor) or `back-end` (the storage).
    pub control_location: String,
    #[serde(default)]
    pub cipher: Option<String>,
    /// Bits.
    #[serde(default)]
    pub key_size: Option<i64>,
    pub created_us: i64,
    #[serde(default)]
    pub updated_us: Option<i64>,
}

record!(
    VolumeType,
    "volume_type",
    name = |t| Some(&t.name),
    unique = |t| Some(t.name.to_lowercase())
);

/// Cinder's QoS specs: limits for the volumes of the types associated
/// with them. `consumer` says who applies them: `front-end` (the
/// hypervisor: QEMU's I/O throttling of a VM's disk), `back-end` (the
/// storage backend; the file backend has none to apply) or `both`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QosSpecs {
    pub id: String,
    pub name: String,
    pub consumer: String,
    #[serde(default)]
    pub specs: BTreeMap<String, String>,
    pub created_us: i64,
}

record!(
    QosSpecs,
    "volume_qos_specs",
    name = |q| Some(&q.name),
    unique = |q| Some(q.name.to_lowercase())
);

/// Quota limits of one project, or of a quota class (`id` is then
/// `class:<name>`, the `default` class giving the defaults). Keys are
/// Cinder's (`volumes`, `gigabytes`, `volumes_<type>`, ...).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeQuota {
    pub id: String,
    pub limits: BTreeMap<String, i64>,
}

record!(VolumeQuota, "volume_quota");

/// A storage node (`stratus agent --volumes DIR`) and the capacity it
/// last reported. When it was last heard of lives in the store's
/// liveness table, outside the change log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StorageNode {
    /// The node's host name.
    pub id: String,
    pub total_capacity_gb: f64,
    pub free_capacity_gb: f64,
    pub max_over_subscription_ratio: f64,
    pub volume_format: String,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub disabled_reason: Option<String>,
    pub created_us: i64,
    /// Its NBD server for VMs on other nodes, as it last reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd: Option<stratus_wire::volume::NbdServer>,
    /// Its backend's name as it reported it; `None` reads as `file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_name: Option<String>,
}

/// The backend (and pool) name of a storage node that names none.
pub const BACKEND: &str = "file";

impl StorageNode {
    /// Its backend (Cinder's `volume_backend_name`, also its pool's name).
    pub fn backend(&self) -> &str {
        self.backend_name.as_deref().unwrap_or(BACKEND)
    }

    /// Cinder's name of its volume service: `<node>@<backend>`.
    pub fn service_host(&self) -> String {
        format!("{}@{}", self.id, self.backend())
    }

    /// Cinder's name of its one pool: `<node>@<backend>#<backend>`.
    pub fn pool_name(&self) -> String {
        format!("{}@{}#{}", self.id, self.backend(), self.backend())
    }
}

record!(StorageNode, "storage_node");

/// A project's default volume type.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DefaultType {
    /// The project's id.
    pub id: String,
    pub volume_type_id: String,
    pub updated_us: i64,
}

record!(DefaultType, "volume_default_type");
