//! Server rescue and unrescue (`rescue`, `unrescue` actions), as Nova
//! does them.
//!
//! `rescue` (from ACTIVE, STOPPED or ERROR, no task running, not locked)
//! records the rescue image (`rescue_image_ref`, default the server's own
//! image, as Nova's), puts the server into task `rescuing` and answers
//! 200 with the admin password (the one given, or a generated one). The
//! node agent rescues the workload and reports: vm_state `rescued`
//! (status RESCUE), running. A failed rescue leaves the server in ERROR
//! with a fault, as in Nova. `unrescue` (from RESCUED only) is task
//! `unrescuing`, then ACTIVE.
//!
//! What it means for a container server (the container driver, see
//! `stratus-agent`'s `container.rs`): the server's container is stopped;
//! a rescue container runs under the same id from the rescue image, on a
//! throwaway disk of its own, with the same hostname, flavor and config
//! drive (metadata and user data: a user-data script runs again on the
//! fresh rescue disk, as cloud-init would in a Nova rescue image), and
//! with the server's own root file system mounted read-write at
//! `/mnt/rescue`. Console output during the rescue is the rescue
//! container's. Unrescue removes the rescue container and its disk and
//! starts the server's own container again, with whatever was changed
//! under `/mnt/rescue` kept. The node keeps the rescue on its disk, so an
//! agent that restarts finds (or starts again) the rescue container.
//!
//! A virtual machine (the QEMU driver) is rescued as Nova's libvirt driver
//! does it: the guest is shut down, then booted from a fresh overlay of
//! the rescue image (a disk image) with its own disk attached as the
//! second disk and the config drive as before. Unrescue throws the rescue
//! disk away and boots the VM's own disk again.

use super::common::{check_locked, fetch_tx, record_action};
use super::model::Server;
use super::states::wrong_state;
use super::states::{task, vm};
use crate::identity::policy::Ctx;
use crate::image::model::Image;
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

/// The vm_states a server can be rescued from (Nova's
/// `check_instance_state` on `rescue`).
const FROM: &[&str] = &[vm::ACTIVE, vm::STOPPED, vm::ERROR];

/// `rescue`: the rescue password (the one asked for, else a new one).
pub fn rescue(
    state: &AppState,
    ctx: &Ctx,
    s: &Server,
    admin_pass: Option<String>,
    image: Option<String>,
    rid: &str,
) -> Result<String, ApiError> {
    let image = match &image {
        None => s.image_ref.clone(),
        Some(i) => {
            check_image(state, ctx, s, i)?;
            i.clone()
        }
    };
    if image.is_empty() {
        // Booted from a volume: Nova's stable rescue needs an image.
        return Err(ApiError::bad_request(format!(
            "Instance {} cannot be rescued: it has no image to rescue with.",
            s.id
        )));
    }
    let s = state.store.write(|tx| {
        let mut s = fetch_tx(tx, ctx, &s.id)?;
        check_locked(ctx, &s)?;
        if s.task_state.is_some() || !FROM.contains(&s.vm_state.as_str()) || s.host.is_none() {
            return Err(wrong_state("rescue", &s));
        }
        s.rescue_image = Some(image.clone());
        s.task_state = Some(task::RESCUING.into());
        s.generation += 1;
        s.updated_us = now_us();
        tx.update(&s)?;
        record_action(tx, &s, "rescue", ctx, rid)?;
        Ok(s)
    })?;
    state.compute.notify(s.host.as_deref());
    Ok(admin_pass.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_string()))
}

/// A rescue image must be visible to the caller, active, and of the
/// server's kind (a disk image for a VM, a container image for a
/// container).
fn check_image(state: &AppState, ctx: &Ctx, s: &Server, id: &str) -> Result<(), ApiError> {
    let img = match state.store.get::<Image>(id)? {
        Some(i) if crate::image::visible(state, ctx, &i)? => i,
        _ => {
            return Err(ApiError::bad_request(format!(
                "Image {id} could not be found."
            )));
        }
    };
    if img.status != "active" {
        return Err(ApiError::bad_request(format!("Image {id} is not active.")));
    }
    // A VM boots its rescue disk; a container runs a rescue container.
    let server_is_vm = state
        .store
        .get::<Image>(&s.image_ref)?
        .is_some_and(|i| i.boots_vm());
    let format = img.container_format.as_deref().unwrap_or("");
    if server_is_vm && !img.boots_vm() {
        return Err(ApiError::bad_request(format!(
            "Image {id} cannot rescue this server: a virtual machine is rescued from a disk image (container_format bare or ovf), not {format}."
        )));
    }
    if !server_is_vm && !matches!(format, "docker" | "oci") {
        return Err(ApiError::bad_request(format!(
            "Image {id} is not bootable here: the server is a container and is rescued from a container image (container_format docker or oci), not {format}."
        )));
    }
    Ok(())
}

/// `unrescue`: 202; the node puts the server's own workload back.
pub fn unrescue(state: &AppState, ctx: &Ctx, s: &Server, rid: &str) -> Result<(), ApiError> {
    let s = state.store.write(|tx| {
        let mut s = fetch_tx(tx, ctx, &s.id)?;
        check_locked(ctx, &s)?;
        if s.task_state.is_some() || s.vm_state != vm::RESCUED || s.host.is_none() {
            return Err(wrong_state("unrescue", &s));
        }
        s.task_state = Some(task::UNRESCUING.into());
        s.generation += 1;
        s.updated_us = now_us();
        tx.update(&s)?;
        record_action(tx, &s, "unrescue", ctx, rid)?;
        Ok(s)
    })?;
    state.compute.notify(s.host.as_deref());
    Ok(())
}
