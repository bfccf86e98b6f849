//! Carrying out the controller's tasks: each runs once per generation
//! and its outcome is reported until the controller takes it; after a
//! restart, what should run is started again.

use std::sync::atomic::Ordering;

use anyhow::Context;
use stratus_wire::{Assignment, Task, TaskProgress};

use super::*;
use crate::node::images::{fetch_image, upload};
use crate::node::network::sync_network;
use crate::{InstanceSpec, PowerState};

pub(super) fn report(
    sh: &Shared,
    id: &str,
    generation: u64,
    task: &Task,
    ok: bool,
    message: Option<String>,
) {
    let power = sh.driver.power_state(id).nova_code();
    // After the task: any listing taken from now on sees its outcome.
    let mark = sh.clock.fetch_add(1, Ordering::SeqCst) + 1;
    let body = TaskReport {
        generation,
        task: Some(task.to_string()),
        ok,
        power_state: power,
        message,
        agent_key: Some(sh.key.clone()),
        mark: Some(mark),
    };
    sh.unsent
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((id.to_string(), body));
    flush_reports(sh);
}

pub(super) fn flush_reports(sh: &Shared) {
    let pending: Vec<(String, TaskReport)> =
        std::mem::take(&mut *sh.unsent.lock().unwrap_or_else(|e| e.into_inner()));
    let mut keep = Vec::new();
    for (id, body) in pending {
        let url = format!(
            "{}/edge/v1/nodes/{}/servers/{id}/report",
            sh.cfg.controller, sh.cfg.host
        );
        let text = match serde_json::to_string(&body) {
            Ok(t) => t,
            Err(_) => continue,
        };
        match call(sh, "POST", &url, Some(text)) {
            Ok((204, _)) | Ok((404, _)) => {}
            Ok((code, text)) if code < 500 => {
                tracing::warn!(server = %id, code, body = %text, "report refused");
            }
            _ => keep.push((id, body)),
        }
    }
    sh.unsent
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(keep);
}

/// After a restart: servers that should run are started again (Nova's
/// `resume_guests_state_on_host_boot`); running ones are simply adopted.
/// A rescued server's workload is its rescue container (the driver knows
/// it is rescued), started again the same way.
pub(super) fn resume_guests(sh: &Shared, servers: &[Assignment]) {
    for s in servers {
        let rescued = s.vm_state == "rescued";
        let should_run = s.vm_state == "active" || rescued || s.should_run;
        if s.task_state.is_some() || !should_run {
            continue;
        }
        let id = s.id.clone();
        match sh.driver.power_state(&id) {
            PowerState::Running => tracing::info!(server = %id, "adopted running workload"),
            PowerState::NoState if rescued => {
                tracing::info!(server = %id, "rescued workload missing after restart; rescuing it again");
                if let Err(e) = spawn(sh, s).and_then(|()| rescue(sh, s)) {
                    tracing::warn!(server = %id, error = %format!("{e:#}"), "could not rescue again");
                }
            }
            PowerState::NoState => {
                tracing::info!(server = %id, "workload missing after restart; spawning it again");
                if let Err(e) = spawn(sh, s) {
                    tracing::warn!(server = %id, error = %format!("{e:#}"), "could not spawn again");
                }
            }
            _ => {
                tracing::info!(server = %id, "starting workload that should run");
                if let Err(e) = sh.driver.start(&id) {
                    tracing::warn!(server = %id, error = %e, "could not start");
                }
            }
        }
    }
}

pub(super) fn run_task(sh: &Arc<Shared>, s: &Assignment, task: &Task) {
    let id = s.id.clone();
    let generation = s.generation;
    let started = Instant::now();
    let d = &sh.driver;
    let exists = d.power_state(&id) != PowerState::NoState;
    let result: anyhow::Result<()> = (|| {
        match task {
            Task::Spawning => spawn(sh, s)?,
            Task::Rebuilding => {
                d.destroy(&id)?;
                spawn(sh, s)?;
                // A stopped server stays stopped after a rebuild, as in Nova.
                if s.vm_state == "stopped" {
                    d.stop(&id, Duration::from_secs(60))?;
                }
            }
            Task::PoweringOff => d.stop(&id, Duration::from_secs(60))?,
            Task::PoweringOn if !exists => spawn(sh, s)?,
            Task::PoweringOn => d.start(&id)?,
            Task::Rebooting | Task::RebootingHard if !exists => spawn(sh, s)?,
            Task::Rebooting => d.reboot(&id, false)?,
            Task::RebootingHard => d.reboot(&id, true)?,
            Task::Pausing => d.pause(&id)?,
            Task::Suspending => d.suspend(&id)?,
            Task::Unpausing => d.unpause(&id)?,
            Task::Resuming => d.resume(&id)?,
            Task::Deleting => {
                d.destroy(&id)?;
                sh.net.unplug(&id);
                mark_network_dirty(sh);
            }
            // Cold migration, on the source: a clean stop, then the root
            // file system goes into the transfer image. The stopped copy
            // stays until the migration is confirmed or reverted.
            Task::ResizeMigrating => {
                if exists {
                    d.stop(&id, Duration::from_secs(60))?;
                }
                // Run again after a restart: the image may be written.
                if !target_image_active(sh, s)
                    && let Err(e) = snapshot(sh, s, None)
                {
                    // The server stays here, as it was.
                    if s.should_run
                        && let Err(e) = d.start(&id)
                    {
                        tracing::warn!(server = %id, error = %e, "could not start again after a failed migration");
                    }
                    return Err(e);
                }
            }
            // On the destination: boot the transfer image; a server that
            // was stopped stays stopped.
            Task::ResizeFinish => {
                // A copy from an earlier stay here is stale: the transfer
                // image has the server as it is now.
                if exists {
                    d.destroy(&id)?;
                }
                spawn(sh, s)?;
                if !s.should_run {
                    d.stop(&id, Duration::from_secs(60))?;
                }
            }
            // A migration going back: the source starts its copy again
            // if the server ran.
            Task::ResizeReverting if s.migration => {
                if s.should_run {
                    if exists {
                        d.start(&id)?;
                    } else {
                        spawn(sh, s)?;
                    }
                }
            }
            // The assignment carries the flavor to apply: the new one for
            // a resize, the old one for a revert.
            Task::ResizePrep | Task::ResizeReverting => {
                d.resize(&id, s.vcpus, s.memory_mb, s.disk_gb)?
            }
            Task::Rescuing => rescue(sh, s)?,
            Task::Unrescuing => d.unrescue(&id)?,
            // Live migration, on the source: the destination waits at the
            // address the controller names; the VM's memory, devices and
            // disk stream there, and this copy goes once it runs there.
            Task::Migrating => {
                let to = s
                    .live_migration
                    .as_ref()
                    .context("the controller named no live-migration destination")?;
                anyhow::ensure!(!to.abort, "the live migration was aborted before it began");
                let last = std::cell::Cell::new(Instant::now());
                d.migrate_out(&id, &to.uri, &|p| {
                    if last.get().elapsed() >= Duration::from_secs(1) {
                        last.set(Instant::now());
                        send_progress(sh, &id, generation, "migrating", Some(bytes(p)));
                    }
                })?;
                sh.net.unplug(&id);
                mark_network_dirty(sh);
            }
            // A restarted agent may find a snapshot at a later step: it
            // starts over.
            Task::ImageSnapshot
            | Task::ImageBackup
            | Task::ImagePendingUpload
            | Task::ImageUploading => snapshot(sh, s, Some(""))?,
            // Shelve: a clean stop, the shelved image, then the workload
            // and its disk go (the server leaves this node).
            Task::Shelving | Task::ShelvingImagePendingUpload | Task::ShelvingImageUploading => {
                if exists {
                    d.stop(&id, Duration::from_secs(60))?;
                }
                // Run again after a restart: the image may be written (and
                // the workload gone).
                if !target_image_active(sh, s) {
                    snapshot(sh, s, Some("shelving_"))?;
                }
                d.destroy(&id)?;
            }
            Task::Other(other) => anyhow::bail!("unknown task {other}"),
        }
        Ok(())
    })();
    let ms = started.elapsed().as_millis();
    sh.cfg.metrics.task(task, result.is_ok());
    sh.settled
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.clone(), generation);
    match result {
        Ok(()) => {
            tracing::info!(server = %id, task = %task, ms, "task done");
            report(sh, &id, generation, task, true, None);
        }
        Err(e) => {
            let msg = format!("{e:#}");
            tracing::warn!(server = %id, task = %task, error = %msg, "task failed");
            if matches!(task, Task::Spawning | Task::ResizeFinish) {
                let _ = d.destroy(&id);
            }
            report(sh, &id, generation, task, false, Some(msg));
        }
    }
}

/// Writes a snapshot of the instance and uploads it to the image the
/// controller made for it (`PUT /image/v2/images/{id}/file`, the image
/// service's ordinary upload path with its format checks), telling the
/// controller when the upload starts (`steps` prefixes the task_states:
/// `shelving_` for a shelve; `None` reports no steps, as for a
/// migration). The tarball is removed either way.
pub(super) fn snapshot(sh: &Shared, s: &Assignment, steps: Option<&str>) -> anyhow::Result<()> {
    let id = s.id.as_str();
    let generation = s.generation;
    let image_id = s
        .snapshot_image_id
        .as_deref()
        .context("the controller named no image for the snapshot")?;
    let dir = sh.cfg.state_dir.join("snapshots");
    private_dir(&dir)?;
    let file = dir.join(format!("{image_id}.tar"));
    let result = (|| {
        sh.driver
            .snapshot(id, &file)
            .context("writing the snapshot")?;
        if let Some(steps) = steps {
            progress(sh, id, generation, &format!("{steps}image_pending_upload"));
            progress(sh, id, generation, &format!("{steps}image_uploading"));
        }
        upload(sh, image_id, &file)
    })();
    let _ = std::fs::remove_file(&file);
    result
}

/// Whether the image a snapshot-like task writes (`snapshot_image_id`)
/// is already active: an earlier run of the same task, cut short by a
/// restart before its report, finished the upload.
pub(super) fn target_image_active(sh: &Shared, s: &Assignment) -> bool {
    let Some(image_id) = s.snapshot_image_id.as_deref() else {
        return false;
    };
    let url = format!("{}/image/v2/images/{image_id}", sh.cfg.controller);
    match call(sh, "GET", &url, None) {
        Ok((200, body)) => {
            serde_json::from_str::<Value>(&body).is_ok_and(|v| v["status"] == "active")
        }
        _ => false,
    }
}

/// Moves a long task's task_state on; best effort (the final report is
/// what counts).
pub(super) fn progress(sh: &Shared, id: &str, generation: u64, task: &str) {
    send_progress(sh, id, generation, task, None)
}

fn bytes(p: &crate::MigrationProgress) -> stratus_wire::MigrationBytes {
    stratus_wire::MigrationBytes {
        memory_total_bytes: p.memory_total,
        memory_processed_bytes: p.memory_processed,
        memory_remaining_bytes: p.memory_remaining,
        disk_total_bytes: p.disk_total,
        disk_processed_bytes: p.disk_processed,
        disk_remaining_bytes: p.disk_remaining,
    }
}

fn send_progress(
    sh: &Shared,
    id: &str,
    generation: u64,
    task: &str,
    migration: Option<stratus_wire::MigrationBytes>,
) {
    let url = format!(
        "{}/edge/v1/nodes/{}/servers/{id}/progress",
        sh.cfg.controller, sh.cfg.host
    );
    let body = TaskProgress {
        generation,
        task: task.to_string(),
        migration,
    };
    let Ok(body) = serde_json::to_string(&body) else {
        return;
    };
    match call(sh, "POST", &url, Some(body)) {
        Ok((204, _)) => {}
        Ok((code, text)) => tracing::debug!(server = id, code, body = %text, "progress refused"),
        Err(e) => tracing::debug!(server = id, error = %format!("{e:#}"), "progress not sent"),
    }
}

/// Fetches the image (once per node) and starts the workload.
pub(super) fn spawn(sh: &Shared, s: &Assignment) -> anyhow::Result<()> {
    let mut spec = match &s.boot_volume {
        Some(v) => volume_spec(sh, s, v)?,
        None => instance_spec(
            sh,
            s,
            &s.image_id,
            &s.container_format,
            &s.disk_format,
            s.image_checksum.as_deref(),
        )?,
    };
    // A VM's ports are taps: wired again even if the network is as it was.
    let fresh = spec.is_vm() && sh.net.mark_vm(&spec.uuid);
    (spec.netns, spec.dns, spec.vm_nics) = wire_server(sh, &spec.uuid, fresh)?;
    sh.driver.spawn(&spec)?;
    // A shelved or transfer image boots this server only: its download
    // goes once the workload runs from the unpacked copy.
    if s.single_use_image && !spec.image_file.as_os_str().is_empty() {
        let _ = std::fs::remove_file(&spec.image_file);
    }
    Ok(())
}

/// A server's wiring: the namespace a container joins, its subnets'
/// name servers, and a VM's taps.
type Wiring = (Option<PathBuf>, Vec<String>, Vec<crate::VmNic>);

/// Wires a server's ports before its workload starts; the namespace it
/// joins, if it has ports and this node wires them, its subnets' name
/// servers, and (for a VM) its taps.
pub(super) fn wire_server(sh: &Shared, id: &str, force: bool) -> anyhow::Result<Wiring> {
    if sh.net.missing().is_some() {
        return Ok((None, Vec::new(), Vec::new()));
    }
    let net = sync_network(sh, force)?;
    let mut dns: Vec<String> = Vec::new();
    for p in net.ports.iter().filter(|p| p.device_id == id) {
        for d in &p.dns {
            if !dns.contains(d) {
                dns.push(d.clone());
            }
        }
    }
    Ok((sh.net.netns_path(&net, id), dns, sh.net.vm_nics(&net, id)))
}

/// Runs the server from its rescue image (the controller names it in
/// `rescue`): a container with its own root at `/mnt/rescue`, a VM booted
/// from the rescue disk with its own disk second.
pub(super) fn rescue(sh: &Shared, s: &Assignment) -> anyhow::Result<()> {
    let r = s
        .rescue
        .as_ref()
        .context("the controller named no rescue image")?;
    let mut spec = instance_spec(
        sh,
        s,
        &r.image_id,
        &r.container_format,
        &r.disk_format,
        r.image_checksum.as_deref(),
    )?;
    (spec.netns, spec.dns, spec.vm_nics) = wire_server(sh, &spec.uuid, false)?;
    sh.driver.rescue(&spec)?;
    Ok(())
}

/// A volume-backed server: a VM booting from its volume's file, which
/// must be on this node (the controller schedules it here).
fn volume_spec(
    sh: &Shared,
    s: &Assignment,
    v: &stratus_wire::volume::AttachedVolume,
) -> anyhow::Result<InstanceSpec> {
    let path = match (
        &sh.cfg.volumes,
        v.host.as_deref() == Some(sh.cfg.host.as_str()),
    ) {
        (Some(vc), true) => {
            super::volume_files::volume_path(&vc.dir, super::volume_files::safe_id(&v.volume_id)?)
        }
        _ => anyhow::bail!(
            "the boot volume {} is on {}, not on this node",
            v.volume_id,
            v.host.as_deref().unwrap_or("no node")
        ),
    };
    if sh.driver.name() != "fake" && !sh.driver.runs_vms() {
        anyhow::bail!(
            "a volume-backed server is a VM and this node runs no VMs (install qemu-system-x86 and restart its agent)"
        );
    }
    let mut spec = instance_spec(sh, s, "", "bare", "qcow2", None)?;
    spec.root_disk = Some(path);
    Ok(spec)
}

/// What the driver needs to run the server `s` from `image_id`, with the
/// image fetched (none for a volume-backed server's empty `image_id`).
pub(super) fn instance_spec(
    sh: &Shared,
    s: &Assignment,
    image_id: &str,
    container_format: &str,
    disk_format: &str,
    checksum: Option<&str>,
) -> anyhow::Result<InstanceSpec> {
    let id = s.id.as_str();
    if sh.driver.name() != "fake" && crate::is_vm_format(container_format) && !sh.driver.runs_vms()
    {
        anyhow::bail!(
            "image {image_id} is a VM disk (container_format {container_format}) and this node runs no VMs (install qemu-system-x86 and restart its agent)"
        );
    }
    let image_file = if sh.driver.name() == "fake" || image_id.is_empty() {
        PathBuf::new()
    } else {
        fetch_image(sh, image_id, checksum)?
    };
    let user_data = user_data(s)?;
    Ok(InstanceSpec {
        uuid: id.to_string(),
        hostname: if s.hostname.is_empty() {
            "server".to_string()
        } else {
            s.hostname.clone()
        },
        image_id: image_id.to_string(),
        image_file,
        container_format: container_format.to_string(),
        disk_format: disk_format.to_string(),
        vcpus: s.vcpus,
        memory_mb: s.memory_mb,
        disk_gb: s.disk_gb,
        user_data,
        meta_data_json: serde_json::to_vec(&s.meta_data).unwrap_or_default(),
        netns: None,
        dns: Vec::new(),
        vm_nics: Vec::new(),
        root_disk: None,
    })
}
