//! The controller–agent protocol, defined once for both ends.
//!
//! A node agent dials the controller (edge nodes sit behind NAT) and speaks
//! JSON over the internal `/edge/v1` API:
//!
//! - `PUT /edge/v1/nodes/{host}` with a [`NodeReport`] registers the node
//!   and is its heartbeat; the answer is a [`NodeReply`].
//! - `GET /edge/v1/nodes/{host}/servers?since=REV&wait=S` long-polls the
//!   node's [`Assignments`]: a store revision and every server assigned to
//!   the node, each an [`Assignment`] whose [`Task`] says what to do.
//!   With `&changed=N` (the [`Assignments::changes_from`] of the last
//!   answer) only the servers written since then come back
//!   ([`Assignments::partial`]), so a node with hundreds of servers is not
//!   sent all of them after every change to one.
//! - `POST .../servers/{id}/report` with a [`TaskReport`] settles a task;
//!   `POST .../servers/{id}/progress` with a [`TaskProgress`] moves a long
//!   one on.
//! - `GET /edge/v1/nodes/{host}/network` answers a [`net::HostNetwork`].
//! - `POST /edge/v1/join` redeems a join token; the answer is a
//!   [`JoinReply`] with the node's [`NodeCredential`].
//!
//! **Versioning.** The agent names the protocol it speaks in
//! [`NodeReport::protocol`]. The controller accepts [`PROTOCOL_VERSION`]
//! and the one before it ([`OLDEST_SUPPORTED`]) and refuses anything else
//! with a 400 that names both ([`check_protocol`]), so an agent one release
//! behind keeps working through an upgrade. Every field added to a message
//! is `#[serde(default)]`, so an older peer's JSON still parses, and an
//! unknown task parses to [`Task::Other`] rather than failing the whole
//! assignment list.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod net;
pub mod sync;
pub mod volume;

/// The protocol this build speaks. Version 1 is the untyped protocol of
/// agents that sent no version; 2 adds [`NodeReport::protocol`] and the
/// typed messages here (same JSON shapes).
pub const PROTOCOL_VERSION: u32 = 2;

/// The oldest agent protocol the controller still accepts: one release
/// behind.
pub const OLDEST_SUPPORTED: u32 = PROTOCOL_VERSION - 1;

/// The version an agent that names none speaks.
fn legacy_protocol() -> u32 {
    1
}

/// Whether the controller serves an agent speaking `version`; the error is
/// the message for the 400 the controller answers.
pub fn check_protocol(version: u32) -> Result<(), String> {
    if (OLDEST_SUPPORTED..=PROTOCOL_VERSION).contains(&version) {
        Ok(())
    } else {
        Err(format!(
            "Agent protocol version {version} is not supported: this controller speaks versions {OLDEST_SUPPORTED} to {PROTOCOL_VERSION}; upgrade the agent (or the controller) so that they are at most one release apart"
        ))
    }
}

// ---- heartbeat ------------------------------------------------------------------

/// What an agent says about its node on every heartbeat (the first one
/// registers it).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct NodeReport {
    /// The protocol version the agent speaks ([`PROTOCOL_VERSION`]); an
    /// agent that predates versioning sends none and speaks version 1.
    #[serde(default = "legacy_protocol")]
    pub protocol: u32,
    pub driver: String,
    pub vcpus: u32,
    pub memory_mb: u64,
    pub disk_gb: u64,
    #[serde(default)]
    pub arch: String,
    #[serde(default)]
    pub hypervisor_type: String,
    #[serde(default)]
    pub hypervisor_version: u64,
    #[serde(default)]
    pub cpu_model: String,
    #[serde(default)]
    pub host_ip: String,
    /// The node runs routers.
    #[serde(default)]
    pub l3: bool,
    #[serde(default)]
    pub agent_url: Option<String>,
    #[serde(default)]
    pub agent_key: Option<String>,
    /// Every workload the driver has, by server id.
    #[serde(default)]
    pub instances: BTreeMap<String, InstanceReport>,
    /// Images from the node's `precache` list that it now has.
    #[serde(default)]
    pub cached: Vec<String>,
    /// True on the first report after the agent started.
    #[serde(default)]
    pub starting: bool,
    /// The agent's report clock when it listed `instances` (read before
    /// the listing): a server whose task the agent settled later is not
    /// judged by this listing.
    #[serde(default)]
    pub observed: Option<u64>,
    /// What this agent can do beyond its protocol version
    /// (`volume::FEATURE_*`): the controller asks a node for those only
    /// when it says so, so an older agent is never asked for something
    /// it would silently skip.
    #[serde(default)]
    pub features: Vec<String>,
}

/// One workload as the agent sees it: its power state and the server
/// generation the agent had settled when it looked. The controller acts
/// on a power state only when that generation is the server's current
/// one, so a report taken before a task finished never undoes the task.
#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq)]
pub struct InstanceReport {
    pub power_state: u8,
    #[serde(default)]
    pub generation: u64,
}

/// The controller's answer to a heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct NodeReply {
    /// The node's record as the controller keeps it.
    #[serde(default)]
    pub node: Option<NodeRecord>,
    /// Reported workloads no server owns: reaped or logged, as the
    /// agent's `--orphans` says.
    #[serde(default)]
    pub orphans: Vec<String>,
    /// Copies of servers that now run on another node (a confirmed or
    /// reverted migration): always removed.
    #[serde(default)]
    pub leftovers: Vec<Leftover>,
    /// Images to fetch ahead (Nova's 2.81 image precache).
    #[serde(default)]
    pub precache: Vec<PrecacheImage>,
}

/// The controller's record of a node, in a [`NodeReply`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct NodeRecord {
    /// The node's id (its placement resource provider and hypervisor).
    pub uuid: String,
    /// Disabled for scheduling (`os-services`).
    #[serde(default)]
    pub disabled: bool,
}

/// A server's copy left on a node it moved away from, as of `generation`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Leftover {
    pub id: String,
    #[serde(default)]
    pub generation: u64,
}

/// An image the node should cache ahead.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct PrecacheImage {
    pub id: String,
    /// The image's sha512 (`os_hash_value`).
    #[serde(default)]
    pub checksum: Option<String>,
    #[serde(default)]
    pub container_format: Option<String>,
}

// ---- joining ------------------------------------------------------------------

/// What a node logs in with: its user, password and project, by id (what
/// `stratus agent --join-token` got).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct NodeCredential {
    pub host: String,
    pub user_id: String,
    pub password: String,
    pub project_id: String,
}

/// A node's request to join (`POST /edge/v1/join`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct JoinRequest {
    /// The token from `stratus admin node-token`.
    pub join_token: String,
    /// The node's name (its compute host).
    pub host: String,
}

/// The controller's answer to `POST /edge/v1/join`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct JoinReply {
    pub node: NodeCredential,
}

// ---- assignments ----------------------------------------------------------------

/// The answer of the assignments long-poll: the position to poll from
/// next and every server on the node.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Assignments {
    pub revision: u64,
    #[serde(default)]
    pub servers: Vec<Assignment>,
    /// The store revision the servers were read at: pass it back as
    /// `changed=` to get only what was written after it. None from a
    /// controller that answers only in full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes_from: Option<u64>,
    /// Whether `servers` holds only the servers written since the
    /// `changed=` asked for (none of the unchanged ones, and no word of
    /// servers that left the node or were deleted), not every server.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

/// What the agent must make true for one server.
#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct Assignment {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub hostname: String,
    pub generation: u64,
    #[serde(default)]
    pub vm_state: String,
    /// The task to carry out, once per generation; none when the server
    /// is settled.
    #[serde(default)]
    pub task_state: Option<Task>,
    #[serde(default)]
    pub image_id: String,
    #[serde(default)]
    pub container_format: String,
    #[serde(default)]
    pub disk_format: String,
    #[serde(default)]
    pub image_checksum: Option<String>,
    #[serde(default)]
    pub vcpus: u32,
    #[serde(default)]
    pub memory_mb: u64,
    #[serde(default)]
    pub disk_gb: u64,
    /// Base64, as the server was created with it.
    #[serde(default)]
    pub user_data: Option<String>,
    /// The metadata service's `meta_data.json` for the server.
    #[serde(default)]
    pub meta_data: Value,
    /// The image a snapshot task (`image_*`) uploads to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_image_id: Option<String>,
    /// The image a rescue (`rescuing`, `rescued`) runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescue: Option<RescueImage>,
    /// A live migration (`migrating`): where the destination waits for
    /// the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_migration: Option<LiveMigration>,
    /// Whether the workload should be running when no task is (what an
    /// agent that restarts makes true).
    #[serde(default)]
    pub should_run: bool,
    /// A cold migration is under way (`resize_migrating` on the source,
    /// `resize_finish` on the destination, `resize_reverting` back on the
    /// source).
    #[serde(default)]
    pub migration: bool,
    /// The boot image is this server's own (a shelved or transfer image):
    /// no other server will boot it, so the node keeps no download of it.
    #[serde(default)]
    pub single_use_image: bool,
    /// The volumes the workload should have attached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<volume::AttachedVolume>,
    /// A volume-backed server's root disk (`/dev/vda`): the VM boots
    /// from this volume's file instead of a disk made from an image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_volume: Option<volume::AttachedVolume>,
    /// An attach or detach waits for this node's word
    /// ([`volume::AttachReport`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub volumes_pending: bool,
    /// Volumes being detached (the workload should no longer have them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes_detaching: Vec<String>,
}

/// Where a live migration goes ([`Assignment::live_migration`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveMigration {
    /// QEMU's migration address on the destination, `tcp:HOST:PORT`.
    pub uri: String,
    pub dest_host: String,
    /// An admin asked to abort it: the source cancels the stream and the
    /// guest runs on there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub abort: bool,
    /// An admin asked to complete it now: the source lets the guest pause
    /// as long as the rest of the stream takes (no downtime limit).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force_complete: bool,
}

/// The rescue image of an [`Assignment`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RescueImage {
    pub image_id: String,
    #[serde(default)]
    pub container_format: String,
    /// A VM rescue disk's format (qcow2, raw, ...).
    #[serde(default)]
    pub disk_format: String,
    #[serde(default)]
    pub image_checksum: Option<String>,
}

/// The task states an agent acts on (Nova's `task_state` values, with
/// Stratus's own steps of a cold migration). A task this agent does not
/// know, from a newer controller, is [`Task::Other`]: the agent reports it
/// failed instead of failing to read its assignments.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Task {
    Spawning,
    Rebuilding,
    PoweringOff,
    PoweringOn,
    Rebooting,
    RebootingHard,
    Pausing,
    Unpausing,
    Suspending,
    Resuming,
    Deleting,
    ResizePrep,
    ResizeMigrating,
    ResizeFinish,
    ResizeReverting,
    Rescuing,
    Unrescuing,
    ImageSnapshot,
    ImageBackup,
    ImagePendingUpload,
    ImageUploading,
    Shelving,
    ShelvingImagePendingUpload,
    ShelvingImageUploading,
    /// A live migration: the source streams the VM to
    /// [`Assignment::live_migration`]'s destination.
    Migrating,
    /// Any other task state, kept as the controller spelled it.
    Other(String),
}

/// Every known task with its wire spelling.
const TASKS: &[(Task, &str)] = &[
    (Task::Spawning, "spawning"),
    (Task::Rebuilding, "rebuilding"),
    (Task::PoweringOff, "powering-off"),
    (Task::PoweringOn, "powering-on"),
    (Task::Rebooting, "rebooting"),
    (Task::RebootingHard, "rebooting_hard"),
    (Task::Pausing, "pausing"),
    (Task::Unpausing, "unpausing"),
    (Task::Suspending, "suspending"),
    (Task::Resuming, "resuming"),
    (Task::Deleting, "deleting"),
    (Task::ResizePrep, "resize_prep"),
    (Task::ResizeMigrating, "resize_migrating"),
    (Task::ResizeFinish, "resize_finish"),
    (Task::ResizeReverting, "resize_reverting"),
    (Task::Rescuing, "rescuing"),
    (Task::Unrescuing, "unrescuing"),
    (Task::ImageSnapshot, "image_snapshot"),
    (Task::ImageBackup, "image_backup"),
    (Task::ImagePendingUpload, "image_pending_upload"),
    (Task::ImageUploading, "image_uploading"),
    (Task::Shelving, "shelving"),
    (
        Task::ShelvingImagePendingUpload,
        "shelving_image_pending_upload",
    ),
    (Task::ShelvingImageUploading, "shelving_image_uploading"),
    (Task::Migrating, "migrating"),
];

impl Task {
    /// The wire spelling (Nova's task_state).
    pub fn as_str(&self) -> &str {
        match self {
            Task::Other(s) => s,
            known => TASKS
                .iter()
                .find(|(t, _)| t == known)
                .map(|(_, s)| *s)
                .unwrap_or(""),
        }
    }
}

impl From<&str> for Task {
    fn from(s: &str) -> Task {
        TASKS
            .iter()
            .find(|(_, name)| *name == s)
            .map(|(t, _)| t.clone())
            .unwrap_or_else(|| Task::Other(s.to_string()))
    }
}

impl From<String> for Task {
    fn from(s: String) -> Task {
        match Task::from(s.as_str()) {
            Task::Other(_) => Task::Other(s),
            t => t,
        }
    }
}

impl From<Task> for String {
    fn from(t: Task) -> String {
        match t {
            Task::Other(s) => s,
            t => t.as_str().to_string(),
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---- task outcomes --------------------------------------------------------------

/// The outcome of a task on a server, as the agent reports it.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TaskReport {
    pub generation: u64,
    /// The task_state the agent acted on.
    pub task: Option<String>,
    pub ok: bool,
    pub power_state: u8,
    #[serde(default)]
    pub message: Option<String>,
    /// The agent that settled the task (its `agent_key`) and its report
    /// clock after it did: heartbeats listed before this say nothing about
    /// the outcome.
    #[serde(default)]
    pub agent_key: Option<String>,
    #[serde(default)]
    pub mark: Option<u64>,
}

/// A step of a long task, as the agent reports it: the task_state the
/// server moves to while the task (of `generation`) goes on.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TaskProgress {
    pub generation: u64,
    pub task: String,
    /// A live migration's bytes so far (memory and disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationBytes>,
}

/// A live migration's progress, as Nova's server migrations show it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationBytes {
    pub memory_total_bytes: u64,
    pub memory_processed_bytes: u64,
    pub memory_remaining_bytes: u64,
    pub disk_total_bytes: u64,
    pub disk_processed_bytes: u64,
    pub disk_remaining_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_task_round_trips() {
        for (t, name) in TASKS {
            assert_eq!(t.as_str(), *name);
            assert_eq!(Task::from(*name), *t);
            let j = serde_json::to_value(t).unwrap();
            assert_eq!(j, json!(name));
            assert_eq!(serde_json::from_value::<Task>(j).unwrap(), *t);
        }
    }

    #[test]
    fn an_unknown_task_parses_to_other_and_back() {
        let t: Task = serde_json::from_value(json!("levitating")).unwrap();
        assert_eq!(t, Task::Other("levitating".into()));
        assert_eq!(serde_json::to_value(&t).unwrap(), json!("levitating"));
        // Inside an assignment list, the other servers still parse.
        let a: Assignments = serde_json::from_value(json!({"revision": 3, "servers": [
            {"id": "a", "generation": 1, "task_state": "levitating"},
            {"id": "b", "generation": 2, "task_state": "spawning"},
            {"id": "c", "generation": 2, "task_state": null}]}))
        .unwrap();
        assert_eq!(
            a.servers[0].task_state,
            Some(Task::Other("levitating".into()))
        );
        assert_eq!(a.servers[1].task_state, Some(Task::Spawning));
        assert_eq!(a.servers[2].task_state, None);
    }

    #[test]
    fn node_report_round_trips() {
        let mut r = NodeReport {
            protocol: PROTOCOL_VERSION,
            driver: "fake".into(),
            vcpus: 4,
            memory_mb: 2048,
            disk_gb: 10,
            arch: "x86_64".into(),
            hypervisor_type: "fake".into(),
            hypervisor_version: 1,
            cpu_model: "fake".into(),
            host_ip: "10.0.0.1".into(),
            l3: true,
            agent_url: Some("http://127.0.0.1:1".into()),
            agent_key: Some("k".into()),
            instances: BTreeMap::new(),
            cached: vec!["img".into()],
            starting: true,
            observed: Some(7),
            features: vec![volume::FEATURE_SWAP_VOLUME.into()],
        };
        r.instances.insert(
            "s".into(),
            InstanceReport {
                power_state: 1,
                generation: 3,
            },
        );
        let back: NodeReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&r).unwrap()
        );
    }

    #[test]
    fn an_agent_from_before_versioning_still_parses() {
        // What a version-1 agent sends: no `protocol`, no newer fields.
        let r: NodeReport = serde_json::from_value(json!({
            "driver": "container", "vcpus": 2, "memory_mb": 1024, "disk_gb": 5,
            "instances": {"s": {"power_state": 4}}}))
        .unwrap();
        assert_eq!(r.protocol, 1);
        assert!(check_protocol(r.protocol).is_ok());
        assert_eq!(r.instances["s"].generation, 0);
        assert!(!r.starting && r.observed.is_none() && r.cached.is_empty());
    }

    #[test]
    fn versions_are_accepted_one_release_back_only() {
        assert!(check_protocol(PROTOCOL_VERSION).is_ok());
        assert!(check_protocol(PROTOCOL_VERSION - 1).is_ok());
        for v in [0, PROTOCOL_VERSION + 1] {
            let e = check_protocol(v).unwrap_err();
            assert!(e.contains(&v.to_string()), "{e}");
            assert!(e.contains(&PROTOCOL_VERSION.to_string()), "{e}");
        }
    }

    #[test]
    fn an_old_assignment_and_reply_still_parse() {
        // An assignment from a controller that predates `should_run`,
        // `migration` and `single_use_image`.
        let a: Assignment = serde_json::from_value(json!({
            "id": "s", "name": "n", "hostname": "h", "generation": 4,
            "vm_state": "active", "task_state": "rebooting_hard", "image_id": "i",
            "container_format": "docker", "disk_format": "raw", "image_checksum": null,
            "vcpus": 1, "memory_mb": 512, "disk_gb": 1, "user_data": null,
            "meta_data": {"uuid": "s"}}))
        .unwrap();
        assert_eq!(a.task_state, Some(Task::RebootingHard));
        assert!(!a.should_run && !a.migration && !a.single_use_image);
        assert!(a.rescue.is_none() && a.snapshot_image_id.is_none());
        let round: Assignment = serde_json::from_value(serde_json::to_value(&a).unwrap()).unwrap();
        assert_eq!(round.task_state, a.task_state);
        let reply: NodeReply = serde_json::from_value(json!({"orphans": ["x"]})).unwrap();
        assert_eq!(reply.orphans, vec!["x".to_string()]);
        assert!(reply.leftovers.is_empty() && reply.precache.is_empty());
        let full: NodeReply = serde_json::from_value(json!({"orphans": [],
            "leftovers": [{"id": "m", "generation": 9}],
            "precache": [{"id": "i", "checksum": "c", "container_format": "docker"}]}))
        .unwrap();
        assert_eq!(full.leftovers[0].generation, 9);
        assert_eq!(full.precache[0].checksum.as_deref(), Some("c"));
    }

    #[test]
    fn the_controllers_replies_keep_their_json_shape() {
        // The heartbeat reply as controllers built it by hand before it
        // was typed: an agent of either age reads the typed one the same.
        let reply = NodeReply {
            node: Some(NodeRecord {
                uuid: "u".into(),
                disabled: true,
            }),
            orphans: vec!["o".into()],
            leftovers: vec![Leftover {
                id: "m".into(),
                generation: 3,
            }],
            precache: vec![PrecacheImage {
                id: "i".into(),
                checksum: None,
                container_format: Some("bare".into()),
            }],
        };
        assert_eq!(
            serde_json::to_value(&reply).unwrap(),
            json!({"node": {"uuid": "u", "disabled": true}, "orphans": ["o"],
                   "leftovers": [{"id": "m", "generation": 3}],
                   "precache": [{"id": "i", "checksum": null, "container_format": "bare"}]})
        );
        // A full answer reads as an older controller's did.
        let a = Assignments {
            revision: 7,
            servers: Vec::new(),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&a).unwrap(),
            json!({"revision": 7, "servers": []})
        );
        let a = Assignments {
            revision: 9,
            servers: Vec::new(),
            changes_from: Some(8),
            partial: true,
        };
        let j = serde_json::to_value(&a).unwrap();
        assert_eq!(
            j,
            json!({"revision": 9, "servers": [], "changes_from": 8, "partial": true})
        );
        // An older controller's answer is a full one.
        let old: Assignments = serde_json::from_value(json!({"revision": 3})).unwrap();
        assert!(!old.partial && old.changes_from.is_none());
        let join: JoinReply = serde_json::from_value(json!({"node": {"host": "h",
            "user_id": "u", "password": "p", "project_id": "n"}}))
        .unwrap();
        assert_eq!(join.node.host, "h");
        assert_eq!(
            serde_json::to_value(&join).unwrap()["node"]["project_id"],
            "n"
        );
    }

    #[test]
    fn task_reports_round_trip() {
        let r = TaskReport {
            generation: 2,
            task: Some(Task::PoweringOff.to_string()),
            ok: true,
            power_state: 4,
            message: None,
            agent_key: Some("k".into()),
            mark: Some(5),
        };
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["task"], "powering-off");
        let back: TaskReport = serde_json::from_value(j).unwrap();
        assert_eq!(back.mark, Some(5));
        // An older agent sends no key or mark.
        let old: TaskReport = serde_json::from_value(
            json!({"generation": 1, "task": "spawning", "ok": false, "power_state": 0}),
        )
        .unwrap();
        assert!(old.agent_key.is_none() && old.mark.is_none());
    }
}
