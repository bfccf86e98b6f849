//! The storage node protocol: how an agent started with `--volumes DIR`
//! learns what volumes and snapshots to make, change or remove, and tells
//! the controller what it did.
//!
//! - `PUT /edge/v1/storage/{host}` with a [`StorageReport`] registers the
//!   storage node and is its heartbeat (capacity included).
//! - `GET /edge/v1/storage/{host}/work?since=REV&wait=S` long-polls the
//!   node's [`VolumeWorkList`]: every volume and snapshot on the node with
//!   a task pending.
//! - `POST /edge/v1/storage/{host}/work/{id}/report` with a
//!   [`VolumeReport`] settles one task (at its generation; a stale report
//!   is ignored).
//!
//! Every task is idempotent on the agent (a file is made under a temporary
//! name and renamed when complete), so after a crash the agent runs the
//! same task again and reaches the same end.

use serde::{Deserialize, Serialize};

/// A storage node's capacity, as Cinder's volume service reports it to
/// its scheduler. Provisioned capacity is counted by the controller from
/// the volumes it placed here.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StorageReport {
    /// Size of the filesystem holding the volume directory, in GiB.
    pub total_capacity_gb: f64,
    /// Free space on it, in GiB.
    pub free_capacity_gb: f64,
    /// How far thin volumes may oversubscribe the filesystem.
    pub max_over_subscription_ratio: f64,
    /// The volume file format this node makes (`qcow2`).
    #[serde(default)]
    pub volume_format: String,
    /// Where this node exports volumes to VMs on other nodes (NBD over
    /// TLS with a pre-shared key); `None` when it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd: Option<NbdServer>,
    /// Its backend's name (Cinder's `volume_backend_name`, which volume
    /// types select with an extra spec); empty from an older agent, which
    /// reads as `file`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backend_name: String,
}

/// A storage node's NBD server: `qemu-storage-daemon` on `port` of the
/// node's address, TLS with the pre-shared key `psk_key` (hex) for the
/// identity `psk_identity`. The key travels only between the node, the
/// controller and the nodes whose VMs use the node's volumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NbdServer {
    pub port: u16,
    pub psk_identity: String,
    pub psk_key: String,
}

/// A volume a VM reaches over the network: the NBD export `export`
/// (the volume's id) at `host:port`, with the server's TLS key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NbdTarget {
    pub host: String,
    pub port: u16,
    pub export: String,
    pub psk_identity: String,
    pub psk_key: String,
}

/// What to do with one volume or snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeTask {
    /// Make the volume's file (empty, or from its [`VolumeSource`]).
    Create,
    /// Grow the volume's file to `size_gb`.
    Extend,
    /// Remove the volume's file.
    Delete,
    /// Copy the volume (`volume_id`) into the snapshot's file.
    Snapshot,
    /// Remove the snapshot's file.
    DeleteSnapshot,
    /// Read the volume (`volume_id`) or snapshot (`source`) into
    /// content-addressed chunks held by the controller (see
    /// [`BackupManifest`]); the work's `id` is the backup's.
    Backup,
    /// Write the backup `id`'s chunks into volume `volume_id`.
    Restore,
    /// Convert volume `volume_id` and upload it to the image service as
    /// image [`VolumeWork::upload`].
    Upload,
    /// Write the volume's file again from [`VolumeWork::source`] (a
    /// snapshot: revert, 3.40; an image: reimage, 3.68), at its size.
    Rewrite,
    /// Copy volume `volume_id` from another storage node
    /// ([`VolumeWork::nbd`], its export there) into this node's file for
    /// it: a volume migration (`os-migrate_volume`, or a retype that
    /// needs another backend). The work's `id` is the migration's.
    Fetch,
    /// Remove the file of volume `volume_id` that a migration left on
    /// this node (the source's after it, or a copy it gave up on).
    Discard,
    /// A task this agent does not know (a newer controller).
    #[serde(other)]
    Other,
}

/// Where a new volume's data comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VolumeSource {
    /// An image of the image service, downloaded and converted.
    Image {
        id: String,
        /// sha512 of its data, checked after download.
        #[serde(default)]
        sha512: Option<String>,
        /// Its `disk_format` (`qcow2`, `raw`, ...).
        disk_format: String,
    },
    /// A copy of another volume on this node.
    Volume { id: String },
    /// A copy of a snapshot on this node.
    Snapshot { id: String },
}

/// One pending task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeWork {
    /// The volume's or snapshot's id.
    pub id: String,
    pub task: VolumeTask,
    /// Bumped for every new task on the same id: a task runs once per
    /// generation, and only a report at the current generation counts.
    pub generation: u64,
    /// The volume's (or snapshot's) size in GiB.
    pub size_gb: u64,
    #[serde(default)]
    pub source: Option<VolumeSource>,
    /// For snapshot tasks: the volume the snapshot is of; for backup,
    /// restore and upload tasks: the volume read or written.
    #[serde(default)]
    pub volume_id: Option<String>,
    /// For upload tasks: the image to write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<ImageUpload>,
    /// For fetch tasks: where the volume is read from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd: Option<NbdTarget>,
}

/// Where an upload task sends a volume's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageUpload {
    pub image_id: String,
    /// `raw` or `qcow2`.
    pub disk_format: String,
}

/// The size of a backup chunk: 4 MiB.
pub const CHUNK_SIZE: u64 = 4 << 20;

/// What a backup holds: the volume's bytes as fixed chunks of
/// [`CHUNK_SIZE`] named by their sha256 (hex), in order; `None` for a
/// chunk of zeros (not stored). `PUT /edge/v1/backups/{id}/manifest`
/// records it (every named chunk must be on the controller by then), and
/// `GET` of the same path gives it to a restore.
///
/// Chunks: `POST /edge/v1/backups/{id}/missing` with [`ChunkList`]
/// answers the ones the controller lacks; `PUT` and `GET
/// /edge/v1/backups/{id}/chunks/{sha256}` move one (checked against its
/// name on both ends).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupManifest {
    /// The generation of the backup task that read it.
    pub generation: u64,
    /// The volume's size in bytes.
    pub size_bytes: u64,
    pub chunk_size: u64,
    pub chunks: Vec<Option<String>>,
}

/// A list of chunk names (sha256, hex).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkList {
    pub chunks: Vec<String>,
}

/// The answer to a storage node's long poll.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VolumeWorkList {
    /// Where to poll from next.
    pub revision: u64,
    pub work: Vec<VolumeWork>,
    /// The volumes this node must export over NBD now (attached to VMs
    /// on other nodes); every other export goes.
    #[serde(default)]
    pub exports: Vec<String>,
}

/// The outcome of one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeReport {
    pub task: VolumeTask,
    pub generation: u64,
    /// Why it failed; `None` when it succeeded.
    #[serde(default)]
    pub error: Option<String>,
}

/// An agent swaps a running VM's volume for another
/// ([`AttachedVolume::swap_from`]).
pub const FEATURE_SWAP_VOLUME: &str = "swap-volume";
/// An agent grows a volume a running VM of its node has open, through
/// that VM's QEMU.
pub const FEATURE_ONLINE_EXTEND: &str = "online-extend";
/// An agent grows a volume a container of its node has mounted: the
/// volume's daemon grows the file, the loop device and the file system.
pub const FEATURE_CONTAINER_EXTEND: &str = "container-extend";
/// An agent moves a running VM's volume to another storage node's copy
/// of it ([`AttachedVolume::swap_from`] naming the volume itself), and
/// says so in [`AttachReport::moved`].
pub const FEATURE_MOVE_VOLUME: &str = "move-volume";

/// A volume a server should have attached ([`crate::Assignment::volumes`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedVolume {
    pub volume_id: String,
    /// The name Nova gave it (`/dev/vdb`): the agent's device id follows
    /// it, so a volume keeps its place across restarts.
    pub device: String,
    /// The storage node holding its file (attaching works only on it).
    #[serde(default)]
    pub host: Option<String>,
    /// Front-end QoS limits of its type (Cinder's keys, e.g.
    /// `total_iops_sec`), applied by the hypervisor.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub qos: std::collections::BTreeMap<String, u64>,
    /// Where a VM on another node than `host` reaches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd: Option<NbdTarget>,
    /// Its size in GiB (0 from a controller that does not say): the
    /// guest's disk is grown to it when smaller.
    #[serde(default)]
    pub size_gb: u64,
    /// The volume this one replaces at `device` (a swap under way): the
    /// node copies it onto this one, and only then lets it go. When it
    /// names this volume itself, the volume is moving to another storage
    /// node (a migration): the guest's disk is copied from where it is
    /// now onto the place `host`/`nbd` name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_from: Option<String>,
}

/// What a node did with a server's volumes:
/// `POST /edge/v1/nodes/{host}/servers/{id}/volumes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachReport {
    /// The volumes the workload has now (or gets at its next start).
    #[serde(default)]
    pub attached: Vec<String>,
    /// Volumes that could not be attached or detached, and why.
    #[serde(default)]
    pub failed: Vec<AttachFailure>,
    /// Moving volumes (see [`AttachedVolume::swap_from`]) whose disk is
    /// now the new place's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moved: Vec<String>,
}

/// One volume a node could not attach or detach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachFailure {
    pub volume_id: String,
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_round_trips_and_unknown_tasks_parse() {
        let w = VolumeWork {
            id: "v".into(),
            task: VolumeTask::Create,
            generation: 3,
            size_gb: 2,
            source: Some(VolumeSource::Image {
                id: "i".into(),
                sha512: None,
                disk_format: "qcow2".into(),
            }),
            volume_id: None,
            upload: None,
            nbd: None,
        };
        let s = serde_json::to_string(&w).unwrap();
        assert_eq!(serde_json::from_str::<VolumeWork>(&s).unwrap(), w);
        let t: VolumeTask = serde_json::from_str("\"retype\"").unwrap();
        assert_eq!(t, VolumeTask::Other);
    }

    #[test]
    fn backup_tasks_and_manifests_round_trip() {
        let t: VolumeTask = serde_json::from_str("\"backup\"").unwrap();
        assert_eq!(t, VolumeTask::Backup);
        assert_eq!(
            serde_json::to_string(&VolumeTask::Upload).unwrap(),
            "\"upload\""
        );
        let m = BackupManifest {
            generation: 2,
            size_bytes: CHUNK_SIZE + 1,
            chunk_size: CHUNK_SIZE,
            chunks: vec![Some("ab".repeat(32)), None],
        };
        let s = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<BackupManifest>(&s).unwrap(), m);
        // A work item of an older controller (no `upload`) still parses.
        let w: VolumeWork = serde_json::from_str(
            r#"{"id":"v","task":"restore","generation":1,"size_gb":1,"volume_id":"x"}"#,
        )
        .unwrap();
        assert_eq!(w.upload, None);
    }
}
