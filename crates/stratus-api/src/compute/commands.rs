//! The compute core's commands: what a caller asks of servers, as typed
//! values. Handlers build them from requests (`parse.rs`, with the
//! request's microversion already applied); the core (`core.rs`) runs
//! them. Any other transport (a sync stream, a CLI) builds them directly.
//! No JSON bodies, no microversions, no HTTP here.

use std::collections::BTreeMap;

use serde_json::Value;

use super::model::Server;
use crate::network::nova::Requested;

/// Server create: the fields of Nova's `POST /servers`, checked for shape;
/// the references (flavor, image, key pair, zone, host, group) are
/// resolved by the core.
#[derive(Debug, Clone)]
pub struct CreateServer {
    pub name: String,
    pub flavor_ref: String,
    pub image_ref: String,
    /// A key pair of the caller's, by name.
    pub key_name: Option<String>,
    /// Base64, checked.
    pub user_data: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub access_ipv4: String,
    pub access_ipv6: String,
    pub min_count: u32,
    pub max_count: u32,
    pub networks: Requested,
    pub security_groups: Option<Vec<String>>,
    pub availability_zone: Option<String>,
    /// The `zone:host` form's host (admins only; checked by the handler).
    pub forced_host: Option<String>,
    /// 2.74's `host` and `hypervisor_hostname` (admins only).
    pub host: Option<String>,
    pub hypervisor_hostname: Option<String>,
    /// Scheduler hints as given (an object).
    pub hints: Value,
    /// The block device mappings whose destination is a volume (Nova's
    /// `block_device_mapping_v2`); the image-backed local root disk and
    /// local blank disks are not listed.
    pub volumes: Vec<VolumeMapping>,
}

/// Where a volume of a new server comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeFrom {
    /// An existing volume, attached as it is.
    Volume(String),
    /// A new volume made from this image.
    Image(String),
    /// A new volume made from this volume snapshot.
    Snapshot(String),
    /// A new empty volume.
    Blank,
}

/// One `destination_type: volume` block device mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeMapping {
    pub from: VolumeFrom,
    /// GiB, for a volume made for the server.
    pub size: Option<u64>,
    /// 0 is the root disk: the server boots from this volume.
    pub boot_index: Option<i64>,
    pub delete_on_termination: bool,
    pub device_name: Option<String>,
    pub volume_type: Option<String>,
    pub tag: Option<String>,
}

/// What create made: the servers, in launch order, and their
/// reservation id.
#[derive(Debug)]
pub struct Created {
    pub reservation_id: String,
    pub servers: Vec<Server>,
}

/// Which state `os-resetState` sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    Active,
    Error,
}

/// `rebuild`: a new image and what else may change with it. For each
/// optional field, `None` keeps the server's value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rebuild {
    pub image_ref: String,
    pub name: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub description: Option<Option<String>>,
    /// 2.54: a key pair by name, or `Some(None)` to remove it.
    pub key_name: Option<Option<String>>,
    /// 2.57: new user data, or `Some(None)` to remove it.
    pub user_data: Option<Option<String>>,
}

/// `createImage` and `createBackup`: the image to make.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRequest {
    pub name: String,
    pub metadata: BTreeMap<String, String>,
    /// `createBackup`: backup type and rotation.
    pub backup: Option<(String, u32)>,
}

/// A change to one server (Nova's server actions, and delete).
#[derive(Debug, Clone, PartialEq)]
pub enum ServerAction {
    Start,
    Stop,
    Reboot {
        hard: bool,
    },
    Pause,
    Unpause,
    Suspend,
    Resume,
    /// 2.73: with an optional reason.
    Lock {
        reason: Option<String>,
    },
    Unlock,
    ResetState(ResetTo),
    Rebuild(Rebuild),
    /// A flavor by id.
    Resize {
        flavor_ref: String,
    },
    ConfirmResize,
    RevertResize,
    /// 2.56: an optional destination host.
    Migrate {
        host: Option<String>,
    },
    /// `os-migrateLive`: to a host, or where the scheduler says.
    LiveMigrate {
        host: Option<String>,
    },
    /// Nova's `evacuate`: off a node that is down (see `ha.rs`).
    Evacuate {
        host: Option<String>,
        admin_pass: Option<String>,
    },
    Shelve,
    ShelveOffload,
    /// 2.77: an optional zone.
    Unshelve {
        availability_zone: Option<String>,
    },
    Rescue {
        admin_pass: Option<String>,
        image_ref: Option<String>,
    },
    Unrescue,
    CreateImage(ImageRequest),
    CreateBackup(ImageRequest),
    AddSecurityGroup {
        name: String,
    },
    RemoveSecurityGroup {
        name: String,
    },
    AddFloatingIp {
        address: String,
        fixed_address: Option<String>,
    },
    RemoveFloatingIp {
        address: String,
    },
    Delete,
}

/// What an action gives back beyond "accepted".
#[derive(Debug)]
pub enum Outcome {
    /// Started (or done); nothing to say.
    Accepted,
    /// Rescue: the rescue password.
    Rescued { admin_pass: String },
    /// Evacuate: the password (shown before 2.14).
    Evacuated { admin_pass: String },
    /// Rebuild: the server as it is now.
    Rebuilt(Box<Server>),
    /// createImage/createBackup: the new image, and whether a backup's
    /// rotation keeps any.
    Image { image_id: String, kept: bool },
}
