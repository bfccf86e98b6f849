//! Compute records kept in the store.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use stratus_store::Record;

/// A flavor. `id` is Nova's `flavorid` (any string); extra specs and the
/// projects of a private flavor live in the record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Flavor {
    pub id: String,
    pub name: String,
    pub ram: u64,
    pub vcpus: u32,
    pub disk: u64,
    #[serde(default)]
    pub ephemeral: u64,
    #[serde(default)]
    pub swap: u64,
    #[serde(default = "one")]
    pub rxtx_factor: f64,
    pub is_public: bool,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub extra_specs: BTreeMap<String, String>,
    #[serde(default)]
    pub projects: Vec<String>,
    pub created_us: i64,
    /// Free text (2.55).
    #[serde(default)]
    pub description: Option<String>,
}

fn one() -> f64 {
    1.0
}

record!(
    Flavor,
    "flavor",
    name = |f| Some(&f.name),
    unique = |f| Some(f.name.clone())
);

/// A key pair of one user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Keypair {
    /// `user_id/name`.
    pub id: String,
    /// Nova's integer id (shown in `GET /os-keypairs/{name}`).
    pub seq: i64,
    pub name: String,
    pub user_id: String,
    pub public_key: String,
    pub fingerprint: String,
    #[serde(rename = "type")]
    pub key_type: String,
    pub created_us: i64,
}

impl Keypair {
    pub fn key(user_id: &str, name: &str) -> String {
        format!("{user_id}/{name}")
    }
}

record!(
    Keypair,
    "keypair",
    owner = |k| Some(&k.user_id),
    name = |k| Some(&k.name)
);

/// Quota limits set for a project (and optionally one of its users), or
/// for the `default` quota class. Missing keys fall back to the class,
/// then to Nova's built-in defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuotaSet {
    /// `project/<id>`, `user/<project>/<user>` or `class/<name>`.
    pub id: String,
    pub limits: BTreeMap<String, i64>,
}

record!(QuotaSet, "compute_quota");

/// The flavor a server was built with, copied into the server so that
/// later flavor changes or deletes do not change it (as Nova does).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlavorCopy {
    pub id: String,
    pub name: String,
    pub ram: u64,
    pub vcpus: u32,
    pub disk: u64,
    pub ephemeral: u64,
    pub swap: u64,
    #[serde(default)]
    pub extra_specs: BTreeMap<String, String>,
}

impl FlavorCopy {
    /// The copy a server keeps of `f`.
    pub fn of(f: &Flavor) -> FlavorCopy {
        FlavorCopy {
            id: f.id.clone(),
            name: f.name.clone(),
            ram: f.ram,
            vcpus: f.vcpus,
            disk: f.disk,
            ephemeral: f.ephemeral,
            swap: f.swap,
            extra_specs: f.extra_specs.clone(),
        }
    }
}

/// The fault of a server in ERROR.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fault {
    pub code: u16,
    pub message: String,
    #[serde(default)]
    pub details: String,
    pub created_us: i64,
}

/// A server: the desired state kept by the API and the actual state the
/// node agent reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Server {
    pub id: String,
    pub name: String,
    pub project_id: String,
    pub user_id: String,
    /// Image id; empty for a server booted from a volume.
    pub image_ref: String,
    pub flavor: FlavorCopy,
    #[serde(default)]
    pub key_name: Option<String>,
    #[serde(default)]
    pub key_data: Option<String>,
    /// Base64 as given.
    #[serde(default)]
    pub user_data: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Availability zone asked for at create (None: any).
    #[serde(default)]
    pub requested_az: Option<String>,
    /// The zone it landed in.
    #[serde(default)]
    pub availability_zone: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub node: Option<String>,
    pub vm_state: String,
    #[serde(default)]
    pub task_state: Option<String>,
    #[serde(default)]
    pub power_state: u8,
    #[serde(default)]
    pub locked_by: Option<String>,
    /// Why it was locked (2.73).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_reason: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub access_ipv4: String,
    #[serde(default)]
    pub access_ipv6: String,
    pub reservation_id: String,
    #[serde(default)]
    pub launch_index: u32,
    pub hostname: String,
    #[serde(default)]
    pub config_drive: String,
    pub created_us: i64,
    pub updated_us: i64,
    #[serde(default)]
    pub launched_us: Option<i64>,
    #[serde(default)]
    pub fault: Option<Fault>,
    /// Scheduler hints as given.
    #[serde(default)]
    pub hints: serde_json::Value,
    #[serde(default)]
    pub server_group: Option<String>,
    /// Hosts a build was tried on (for retries).
    #[serde(default)]
    pub tried_hosts: Vec<String>,
    /// Bumped on every request the node agent must act on.
    #[serde(default)]
    pub generation: u64,
    /// The snapshot or backup in progress (task_state `image_*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotJob>,
    /// The image a rescue runs (from `rescue` until `unrescue` is done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescue_image: Option<String>,
    /// A resize or migration from `resize` until it is confirmed or
    /// reverted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<ResizeJob>,
    /// The image a shelved server is kept as, from `shelve` until
    /// `unshelve` has booted it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shelved_image: Option<String>,
    /// When the node last settled a task of this server, on the node's own
    /// report clock. A heartbeat whose listing was taken before that mark
    /// knows nothing about the task's outcome and says nothing about the
    /// server's power state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled: Option<NodeMark>,
    /// The server's ports, as the network service made them (Nova's
    /// network info cache).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<crate::network::nova::Nic>,
    /// On an edge site, for a server its parent sent down: the parent's
    /// generation of it the site has taken (see `crate::sync`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub parent_generation: u64,
    /// Volumes attached or being attached (Nova's volume block device
    /// mappings); the node agent makes the workload have them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<ServerVolume>,
}

/// The device of a volume-backed server's root volume.
pub const ROOT_DEVICE: &str = "/dev/vda";

impl Server {
    /// A volume-backed server's root volume (boot index 0, `/dev/vda`).
    pub fn boot_volume(&self) -> Option<&ServerVolume> {
        self.volumes.iter().find(|v| v.device == ROOT_DEVICE)
    }
}

/// A volume of a server (`os-volume_attachments`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerVolume {
    pub volume_id: String,
    /// `/dev/vdb`, ...
    pub device: String,
    /// The volume's attachment id (Cinder side).
    pub attachment_id: String,
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub delete_on_termination: bool,
    /// `attaching` until the node has it, `attached`, `detaching` until
    /// the node has let it go, `swapping` while the node copies the
    /// volume it replaces (`swap_from`) onto this one.
    pub state: String,
    /// A swap under way (Nova's swap volume): the volume this one
    /// replaces at the same device, still attached until the node has
    /// copied it and moved the guest's disk over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_from: Option<SwapFrom>,
}

/// The volume a swap replaces, and its attachment (Cinder side).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwapFrom {
    pub volume_id: String,
    pub attachment_id: String,
}

impl ServerVolume {
    /// Whether `attachment_id` (Cinder side) is this mapping's own, or
    /// the one of the volume it is replacing.
    pub fn holds(&self, attachment_id: &str) -> bool {
        self.attachment_id == attachment_id
            || self
                .swap_from
                .as_ref()
                .is_some_and(|f| f.attachment_id == attachment_id)
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A point on one agent's report clock: the agent's key (new each time
/// the agent starts) and a sequence number that only grows while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMark {
    pub agent: String,
    pub seq: u64,
}

impl NodeMark {
    /// Whether a listing taken by `agent` at `observed` came before this
    /// mark. A listing from another agent incarnation is newer: the one
    /// that set the mark has stopped.
    pub fn is_after(&self, agent: Option<&str>, observed: Option<u64>) -> bool {
        match (agent, observed) {
            (Some(a), Some(o)) => a == self.agent && self.seq > o,
            // A report without a clock cannot be ordered: take it as
            // older than any settled task.
            _ => true,
        }
    }
}

/// A resize in progress or waiting for `confirmResize` / `revertResize`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResizeJob {
    /// The [`Migration`] record.
    pub migration_id: String,
    pub old_flavor: FlavorCopy,
    pub new_flavor: FlavorCopy,
    /// `active` or `stopped`: what confirm or revert returns the server to.
    pub old_vm_state: String,
    /// A cold migration: the node it leaves (which keeps the stopped
    /// workload until the migration is confirmed or reverted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_host: Option<String>,
    /// A cold migration: the node it goes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest_host: Option<String>,
    /// A cold migration: the hidden image the source node writes the root
    /// file system into and the destination boots (deleted once booted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_image: Option<String>,
    /// A cold migration: the zone the server was in (the destination's
    /// may differ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_zone: Option<String>,
    /// The destination could not boot it: the revert under way ends the
    /// migration in `error`, not `reverted`.
    #[serde(default)]
    pub failed: bool,
    /// A live migration (see `live.rs`): the server runs on at the source
    /// while it streams to `dest_host`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub live: bool,
    /// A live migration: where the destination's QEMU waits
    /// (`tcp:HOST:PORT`), once it is ready; the source's task waits
    /// for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_uri: Option<String>,
    /// A live migration an admin asked to abort (`DELETE
    /// /servers/{id}/migrations/{mid}`) or to complete now
    /// (`force_complete`): the source's agent acts on it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub abort: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force_complete: bool,
}

impl ResizeJob {
    /// A cold migration rather than an in-place resize.
    pub fn is_migration(&self) -> bool {
        self.source_host.is_some()
    }
}

/// A resize or migration, as `os-migrations` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Migration {
    /// The migration's uuid.
    pub id: String,
    /// Nova's integer id.
    pub seq: i64,
    pub server_id: String,
    pub project_id: String,
    pub user_id: String,
    /// `resize` or `migration`.
    pub migration_type: String,
    pub source_compute: String,
    pub dest_compute: String,
    pub old_flavor_id: String,
    pub new_flavor_id: String,
    /// pre-migrating, finished, confirmed, reverted, error; a live
    /// migration: preparing, running, completed, error.
    pub status: String,
    pub created_us: i64,
    pub updated_us: i64,
    /// A live migration's bytes so far, as its source last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<stratus_wire::MigrationBytes>,
}

impl Migration {
    /// A new record of a move of `server` (same flavor) from `source` to
    /// `dest`, numbered when inserted by [`Migration::insert`].
    pub fn moving(
        id: &str,
        server: &Server,
        migration_type: &str,
        source: &str,
        dest: &str,
        status: &str,
        now_us: i64,
    ) -> Migration {
        Migration {
            id: id.to_string(),
            seq: 0,
            server_id: server.id.clone(),
            project_id: server.project_id.clone(),
            user_id: server.user_id.clone(),
            migration_type: migration_type.into(),
            source_compute: source.to_string(),
            dest_compute: dest.to_string(),
            old_flavor_id: server.flavor.id.clone(),
            new_flavor_id: server.flavor.id.clone(),
            status: status.into(),
            created_us: now_us,
            updated_us: now_us,
            progress: None,
        }
    }

    /// Inserts the record with Nova's integer id (its insert sequence).
    pub fn insert(
        mut self,
        tx: &stratus_store::Tx,
    ) -> Result<Migration, stratus_store::StoreError> {
        self.seq = tx.insert(&self)?;
        tx.update(&self)?;
        Ok(self)
    }
}

record!(
    Migration,
    "migration",
    owner = |m| Some(&m.project_id),
    parent = |m| Some(&m.server_id)
);

/// A server being live-migrated to `host`: its ports are wired there
/// before the switch (the destination's taps must exist when QEMU starts
/// waiting for the stream), while they stay bound to the source. Gone
/// once the migration has ended (the node's wiring drops stale ones).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveIncoming {
    /// The server's id.
    pub id: String,
    pub host: String,
}

record!(LiveIncoming, "live_incoming", parent = |m| Some(&m.host));

/// A `createImage` or `createBackup` in progress: the image the node
/// uploads to, and for a backup what rotation keeps afterwards.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotJob {
    pub image_id: String,
    /// `Some` for a backup: its `backup_type` and how many to keep.
    #[serde(default)]
    pub backup: Option<(String, u32)>,
}

record!(
    Server,
    "server",
    owner = |s| Some(&s.project_id),
    parent = |s| s.host.as_deref(),
    name = |s| Some(&s.name),
    // Nova lists servers newest first: the store pages them in that order.
    created = |s| Some(s.created_us),
    // What the status is made of: the metrics count servers by it.
    state = |s| Some(server_state(&s.vm_state, s.task_state.as_deref()))
);

/// A server's lifted store state, `vm_state/task_state` (the task empty
/// when none); [`parse_server_state`] reads it back.
pub fn server_state(vm_state: &str, task_state: Option<&str>) -> String {
    format!("{vm_state}/{}", task_state.unwrap_or(""))
}

/// `(vm_state, task_state)` from a lifted server state.
pub fn parse_server_state(state: &str) -> (&str, Option<&str>) {
    let (vm, task) = state.split_once('/').unwrap_or((state, ""));
    (vm, (!task.is_empty()).then_some(task))
}

/// A server group and its members.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerGroup {
    pub id: String,
    pub name: String,
    pub project_id: String,
    pub user_id: String,
    /// affinity, anti-affinity, soft-affinity, soft-anti-affinity.
    pub policy: String,
    #[serde(default)]
    pub rules: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub members: Vec<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

record!(ServerGroup, "server_group", owner = |g| Some(&g.project_id));

/// A compute node and its `nova-compute` service, as the node agent
/// registers it. `id` is the host name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComputeNode {
    pub id: String,
    /// Nova's integer ids for the service and the hypervisor.
    pub seq: i64,
    /// The placement resource provider (and hypervisor) uuid.
    pub uuid: String,
    pub driver: String,
    pub vcpus: u32,
    pub memory_mb: u64,
    pub disk_gb: u64,
    pub arch: String,
    pub hypervisor_type: String,
    pub hypervisor_version: u64,
    pub cpu_model: String,
    #[serde(default)]
    pub host_ip: String,
    /// The node runs routers (`stratus agent --l3`; `stratus up`'s own
    /// agent does).
    #[serde(default)]
    pub l3: bool,
    /// What its agent says it can do (`NodeReport::features`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// Where the controller reaches the agent (console output).
    #[serde(default)]
    pub agent_url: Option<String>,
    /// The secret the controller shows the agent when it calls it.
    #[serde(default)]
    pub agent_key: Option<String>,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub disabled_reason: Option<String>,
    #[serde(default)]
    pub forced_down: bool,
    /// Images to fetch into the node's cache ahead of any server (2.81);
    /// an image leaves the list when the agent says it has it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub precache: Vec<String>,
    /// The heartbeat that last wrote this record (registration or a change
    /// of resources). Later heartbeats live outside the record, in memory
    /// and the store's liveness table: see `nodes::last_seen`.
    pub last_seen_us: i64,
    pub created_us: i64,
    pub updated_us: i64,
}

record!(ComputeNode, "compute_node");

/// Images to cache on every node of an edge site (Nova 2.81's aggregate
/// image cache, asked of an aggregate whose zone is a site or one below
/// it): it goes down to that site with the sync stream, and the site
/// asks each of its nodes to fetch them, so the data crosses the link
/// once, before anything boots from it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SitePrecache {
    pub id: String,
    /// The site's zone.
    pub zone: String,
    pub images: Vec<String>,
    pub created_us: i64,
}

record!(SitePrecache, "site_precache", parent = |p| Some(&p.zone));

/// A host aggregate; one with `availability_zone` set defines a zone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Aggregate {
    /// Nova's integer id, as a string.
    pub id: String,
    pub uuid: String,
    pub name: String,
    #[serde(default)]
    pub availability_zone: Option<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    pub created_us: i64,
    #[serde(default)]
    pub updated_us: Option<i64>,
}

record!(
    Aggregate,
    "aggregate",
    name = |a| Some(&a.name),
    unique = |a| Some(a.name.clone())
);

/// One action on a server and its events (`os-instance-actions`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceAction {
    /// `server/request_id`.
    pub id: String,
    pub server_id: String,
    pub action: String,
    pub request_id: String,
    pub user_id: String,
    pub project_id: String,
    pub start_us: i64,
    pub updated_us: i64,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub events: Vec<ActionEvent>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionEvent {
    pub event: String,
    pub start_us: i64,
    #[serde(default)]
    pub finish_us: Option<i64>,
    #[serde(default)]
    pub result: Option<String>,
    #[serde(default)]
    pub traceback: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
}

record!(
    InstanceAction,
    "instance_action",
    parent = |a| Some(&a.server_id)
);

/// Instances, cores and RAM a project (and each of its users) uses,
/// changed in the same transaction as the servers themselves, so it is
/// exact and needs no counting.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ComputeUsage {
    /// The project id.
    pub id: String,
    pub instances: i64,
    pub cores: i64,
    pub ram: i64,
    #[serde(default)]
    pub users: BTreeMap<String, [i64; 3]>,
}

impl ComputeUsage {
    /// Adds (or with `sign` -1 removes) one server.
    pub fn add(&mut self, user: &str, vcpus: u32, ram: u64, sign: i64) {
        self.instances += sign;
        self.cores += sign * vcpus as i64;
        self.ram += sign * ram as i64;
        let u = self.users.entry(user.to_string()).or_default();
        u[0] += sign;
        u[1] += sign * vcpus as i64;
        u[2] += sign * ram as i64;
        if u[0] <= 0 {
            self.users.remove(user);
        }
    }
}

record!(ComputeUsage, "compute_usage");

/// Instances, cores and RAM of a project and every project below it: a
/// running total changed with [`ComputeUsage`] (see `quotas::account`),
/// so the quota engine reads a subtree's usage without adding it up.
/// Rebuilt from the `ComputeUsage` records at every start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ComputeTreeUsage {
    /// The project id.
    pub id: String,
    pub instances: i64,
    pub cores: i64,
    pub ram: i64,
}

record!(ComputeTreeUsage, "compute_tree_usage");
