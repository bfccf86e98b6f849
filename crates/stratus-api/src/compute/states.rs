//! Nova's state model: `vm_state`, `task_state`, `power_state`, and the
//! `status` the API derives from them.

pub mod vm {
    pub const ACTIVE: &str = "active";
    pub const BUILDING: &str = "building";
    pub const PAUSED: &str = "paused";
    pub const SUSPENDED: &str = "suspended";
    pub const STOPPED: &str = "stopped";
    pub const ERROR: &str = "error";
    /// Running its rescue image (`rescue`), until `unrescue`.
    pub const RESCUED: &str = "rescued";
    /// Resized (or migrated) and waiting for `confirmResize` or
    /// `revertResize` (status VERIFY_RESIZE).
    pub const RESIZED: &str = "resized";
    /// Shelved and still on its node (only while offloading).
    pub const SHELVED: &str = "shelved";
    /// Shelved: kept as an image, on no node, holding no resources.
    pub const SHELVED_OFFLOADED: &str = "shelved_offloaded";
    pub const DELETED: &str = "deleted";
}

pub mod task {
    pub const SCHEDULING: &str = "scheduling";
    /// Waiting for the volumes a server was created with to be made.
    pub const BLOCK_DEVICE_MAPPING: &str = "block_device_mapping";
    pub const SPAWNING: &str = "spawning";
    pub const POWERING_OFF: &str = "powering-off";
    pub const POWERING_ON: &str = "powering-on";
    pub const REBOOTING: &str = "rebooting";
    pub const REBOOTING_HARD: &str = "rebooting_hard";
    pub const PAUSING: &str = "pausing";
    pub const UNPAUSING: &str = "unpausing";
    pub const SUSPENDING: &str = "suspending";
    pub const RESUMING: &str = "resuming";
    pub const REBUILDING: &str = "rebuilding";
    pub const DELETING: &str = "deleting";
    pub const RESCUING: &str = "rescuing";
    pub const UNRESCUING: &str = "unrescuing";
    /// `createImage` asked; the node has not written the snapshot yet.
    pub const IMAGE_SNAPSHOT: &str = "image_snapshot";
    /// `createBackup` asked; as `IMAGE_SNAPSHOT`, then rotation.
    pub const IMAGE_BACKUP: &str = "image_backup";
    /// The snapshot is taken; its upload has not begun.
    pub const IMAGE_PENDING_UPLOAD: &str = "image_pending_upload";
    pub const IMAGE_UPLOADING: &str = "image_uploading";
    /// `resize` or `migrate` asked; the node has not applied it yet.
    pub const RESIZE_PREP: &str = "resize_prep";
    /// `migrate` asked: the source node writes the server's disk into the
    /// transfer image.
    pub const RESIZE_MIGRATING: &str = "resize_migrating";
    /// The destination node boots the transfer image.
    pub const RESIZE_FINISH: &str = "resize_finish";
    /// `revertResize` asked.
    pub const RESIZE_REVERTING: &str = "resize_reverting";
    /// `shelve` asked: the node writes the shelved image, then lets the
    /// workload go.
    pub const SHELVING: &str = "shelving";
    pub const SHELVING_IMAGE_PENDING_UPLOAD: &str = "shelving_image_pending_upload";
    pub const SHELVING_IMAGE_UPLOADING: &str = "shelving_image_uploading";
    /// `unshelve` asked: the server waits for a node.
    pub const UNSHELVING: &str = "unshelving";
    /// A live migration (`os-migrateLive`).
    pub const MIGRATING: &str = "migrating";

    /// The task_states of a resize or cold migration step.
    pub fn is_resize(t: &str) -> bool {
        [
            RESIZE_PREP,
            RESIZE_MIGRATING,
            RESIZE_FINISH,
            RESIZE_REVERTING,
        ]
        .contains(&t)
    }

    /// The task_states of a shelve in progress.
    pub fn is_shelving(t: &str) -> bool {
        [
            SHELVING,
            SHELVING_IMAGE_PENDING_UPLOAD,
            SHELVING_IMAGE_UPLOADING,
        ]
        .contains(&t)
    }

    /// The task_states of a snapshot or backup in progress.
    pub fn is_image(t: &str) -> bool {
        [
            IMAGE_SNAPSHOT,
            IMAGE_BACKUP,
            IMAGE_PENDING_UPLOAD,
            IMAGE_UPLOADING,
        ]
        .contains(&t)
    }
}

/// Nova's power states.
pub mod power {
    pub const NOSTATE: u8 = 0;
    pub const RUNNING: u8 = 1;
    pub const PAUSED: u8 = 3;
    pub const SHUTDOWN: u8 = 4;
    pub const CRASHED: u8 = 6;
    pub const SUSPENDED: u8 = 7;
}

/// `status` from `vm_state` and `task_state` (Nova's
/// `common.status_from_state`).
pub fn status(vm_state: &str, task_state: Option<&str>) -> &'static str {
    match vm_state {
        vm::ACTIVE => match task_state {
            Some(task::REBOOTING) => "REBOOT",
            Some(task::REBOOTING_HARD) => "HARD_REBOOT",
            Some(task::REBUILDING) => "REBUILD",
            Some(task::RESIZE_PREP | task::RESIZE_MIGRATING | task::RESIZE_FINISH) => "RESIZE",
            _ => "ACTIVE",
        },
        vm::BUILDING => "BUILD",
        vm::STOPPED => match task_state {
            Some(task::REBUILDING) => "REBUILD",
            Some(task::RESIZE_PREP | task::RESIZE_MIGRATING | task::RESIZE_FINISH) => "RESIZE",
            _ => "SHUTOFF",
        },
        vm::RESIZED => match task_state {
            Some(task::RESIZE_REVERTING) => "REVERT_RESIZE",
            _ => "VERIFY_RESIZE",
        },
        vm::SHELVED => "SHELVED",
        vm::SHELVED_OFFLOADED => "SHELVED_OFFLOADED",
        vm::PAUSED => "PAUSED",
        vm::SUSPENDED => "SUSPENDED",
        vm::RESCUED => "RESCUE",
        vm::ERROR => match task_state {
            Some(task::REBUILDING) => "REBUILD",
            _ => "ERROR",
        },
        vm::DELETED => "DELETED",
        _ => "UNKNOWN",
    }
}

/// The `vm_state`s a `status` filter selects (Nova's
/// `common.task_and_vm_state_from_status`).
pub fn vm_states_for(status: &str) -> Option<&'static [&'static str]> {
    Some(match status.to_ascii_uppercase().as_str() {
        "ACTIVE" | "REBOOT" | "HARD_REBOOT" => &[vm::ACTIVE],
        "BUILD" => &[vm::BUILDING],
        "SHUTOFF" => &[vm::STOPPED],
        "PAUSED" => &[vm::PAUSED],
        "SUSPENDED" => &[vm::SUSPENDED],
        "RESCUE" => &[vm::RESCUED],
        "RESIZE" => &[vm::ACTIVE, vm::STOPPED],
        "VERIFY_RESIZE" | "REVERT_RESIZE" => &[vm::RESIZED],
        "SHELVED" => &[vm::SHELVED],
        "SHELVED_OFFLOADED" => &[vm::SHELVED_OFFLOADED],
        "ERROR" => &[vm::ERROR],
        "DELETED" => &[vm::DELETED],
        "REBUILD" => &[vm::ACTIVE, vm::STOPPED, vm::ERROR],
        _ => return None,
    })
}

/// The statuses a `status` filter also checks against the task (Nova
/// filters these on task_state; the others, which a vm_state shows by
/// default, on vm_state alone).
pub fn task_dependent(status: &str) -> bool {
    matches!(
        status,
        "REBOOT" | "HARD_REBOOT" | "REBUILD" | "RESIZE" | "REVERT_RESIZE"
    )
}

/// Nova's 409 for an action the server's state does not allow.
pub(super) fn wrong_state(action: &str, s: &super::model::Server) -> crate::ApiError {
    let (attr, val) = match &s.task_state {
        Some(t) => ("task_state", t.as_str()),
        None => ("vm_state", s.vm_state.as_str()),
    };
    crate::ApiError::conflict(format!(
        "Cannot '{action}' instance {} while it is in {attr} {val}",
        s.id
    ))
}

/// 409 while one of the server's volumes is being swapped for another
/// (the node is copying it).
pub(crate) fn no_swap(s: &super::model::Server, action: &str) -> Result<(), crate::ApiError> {
    match s.volumes.iter().find(|v| v.state == "swapping") {
        Some(sv) => Err(crate::ApiError::conflict(format!(
            "Cannot '{action}' instance {}: volume {} is being swapped in at {}; wait until the swap is done",
            s.id, sv.volume_id, sv.device
        ))),
        None => Ok(()),
    }
}

/// Whether a server with volumes may move to another node (`action`:
/// migrate, shelve): its attached volumes follow it over NBD
/// from their storage nodes, so each storage node must export; a
/// volume-backed server's root disk does not move (409), nor do the
/// volumes of a server with a volume shared with another server.
pub(crate) fn may_move(
    state: &crate::AppState,
    s: &super::model::Server,
    action: &str,
) -> Result<(), crate::ApiError> {
    if s.volumes.is_empty() {
        return Ok(());
    }
    let refuse = |why: String| {
        Err(crate::ApiError::conflict(format!(
            "Cannot '{action}' instance {}: {why}",
            s.id
        )))
    };
    if s.boot_volume().is_some() {
        return refuse(
            "it boots from a volume, which stays on its storage node (moving volume-backed servers is not supported yet)".into(),
        );
    }
    no_swap(s, action)?;
    for sv in &s.volumes {
        let Some(v) = state
            .store
            .get::<crate::volume::model::Volume>(&sv.volume_id)?
        else {
            continue;
        };
        if v.attachments.len() > 1 {
            return refuse(format!(
                "volume {} is shared with another server, and the servers sharing a volume stay on one node",
                v.id
            ));
        }
        let Some(host) = v.host.as_deref() else {
            continue;
        };
        let exports = state
            .store
            .get::<crate::volume::model::StorageNode>(host)?
            .is_some_and(|n| n.nbd.is_some());
        if !exports {
            return refuse(format!(
                "volume {} is on storage node {host}, which exports no volumes to other nodes (its agent needs qemu-storage-daemon); detach it first",
                v.id
            ));
        }
    }
    Ok(())
}

/// 409 for an action that would move or rebuild the workload of a server
/// with volumes: the node would not take them along yet.
pub(super) fn refuse_with_volumes(
    s: &super::model::Server,
    action: &str,
) -> Result<(), crate::ApiError> {
    if s.volumes.is_empty() {
        return Ok(());
    }
    Err(crate::ApiError::conflict(format!(
        "Cannot '{action}' instance {} while it has volumes attached: detach them first (moving volumes with a server is not supported yet).",
        s.id
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_nova() {
        assert_eq!(status("active", None), "ACTIVE");
        assert_eq!(status("active", Some("rebooting_hard")), "HARD_REBOOT");
        assert_eq!(status("building", Some("scheduling")), "BUILD");
        assert_eq!(status("stopped", None), "SHUTOFF");
        assert_eq!(status("error", None), "ERROR");
        assert_eq!(status("rescued", None), "RESCUE");
        assert_eq!(status("rescued", Some("unrescuing")), "RESCUE");
        assert_eq!(status("active", Some("rescuing")), "ACTIVE");
        assert_eq!(status("active", Some("resize_prep")), "RESIZE");
        assert_eq!(status("resized", None), "VERIFY_RESIZE");
        assert_eq!(status("resized", Some("resize_reverting")), "REVERT_RESIZE");
        assert_eq!(
            status("shelved_offloaded", Some("unshelving")),
            "SHELVED_OFFLOADED"
        );
        assert_eq!(vm_states_for("rescue"), Some(&["rescued"][..]));
        assert_eq!(vm_states_for("verify_resize"), Some(&["resized"][..]));
        assert_eq!(vm_states_for("shutoff"), Some(&["stopped"][..]));
        assert_eq!(vm_states_for("nonsense"), None);
    }
}
