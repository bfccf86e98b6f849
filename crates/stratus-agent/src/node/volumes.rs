//! The storage node: with `--volumes DIR` the agent keeps volumes and
//! snapshots as qcow2 files in DIR, made and changed with `qemu-img`.
//!
//! A loop of its own reports the node's capacity (its heartbeat as a
//! storage node), long-polls the tasks pending on its volumes and
//! snapshots (`stratus_wire::volume`), runs each once per generation and
//! reports the outcome until the controller takes it. Every task is
//! idempotent: a new file is written under `.part` and renamed when
//! complete, so a crash at any point leaves either no file or a whole
//! one, and the task run again after a restart ends the same way.

use anyhow::Context;
use stratus_wire::volume::{
    StorageReport, VolumeReport, VolumeSource, VolumeTask, VolumeWork, VolumeWorkList,
};

use super::volume_files::{
    qemu_img, read_quiesced, safe_id, snapshot_path, virtual_size, volume_path,
};
use super::*;

/// Where and how this node keeps volumes.
#[derive(Debug, Clone)]
pub struct VolumesConfig {
    /// The directory holding the volume and snapshot files.
    pub dir: PathBuf,
    /// How far thin volumes may oversubscribe the filesystem.
    pub max_over_subscription_ratio: f64,
    /// The backend's name (`volume_backend_name`), which volume types
    /// select; `file` unless the operator names it.
    pub backend_name: String,
}

const GIB: f64 = (1u64 << 30) as f64;

/// Runs the storage node's loop until the process ends.
pub(super) fn volume_loop(sh: Arc<Shared>, vc: VolumesConfig) {
    let started: Arc<Mutex<HashSet<(String, u64)>>> = Default::default();
    let mut since = 0u64;
    let exporter = match super::volume_export::Exporter::open(&sh.cfg.state_dir, &sh.cfg.host) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "no volume exports to other nodes");
            None
        }
    };
    // An export that could not be made (its file still held by a copy of
    // a server that moved away) is tried again within a second.
    let mut exports_behind = false;
    super::volume_bases::prune(&vc.dir);
    loop {
        if let Err(e) = report_capacity(&sh, &vc, exporter.as_ref()) {
            tracing::warn!(error = %format!("{e:#}"), "cannot report the storage capacity");
            std::thread::sleep(Duration::from_secs(2));
            continue;
        }
        let url = format!(
            "{}/edge/v1/storage/{}/work?since={since}&wait={}",
            sh.cfg.controller,
            sh.cfg.host,
            if exports_behind { 1 } else { 20 }
        );
        let list: VolumeWorkList = match call(&sh, "GET", &url, None) {
            Ok((200, b)) => match serde_json::from_str(&b) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "the controller's volume work did not parse");
                    std::thread::sleep(Duration::from_secs(2));
                    continue;
                }
            },
            Ok((code, b)) => {
                tracing::warn!(code, body = %b, "polling for volume work failed");
                std::thread::sleep(Duration::from_secs(2));
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "polling for volume work failed");
                std::thread::sleep(Duration::from_secs(2));
                continue;
            }
        };
        since = list.revision;
        if let Some(x) = &exporter {
            let r = x.reconcile(&vc.dir, &list.exports);
            if let Err(e) = &r
                && !exports_behind
            {
                tracing::warn!(error = %format!("{e:#}"), "could not change the volume exports; trying again");
            }
            exports_behind = r.is_err();
        }
        for w in list.work {
            if !started
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((w.id.clone(), w.generation))
            {
                continue;
            }
            let (sh, vc, started) = (sh.clone(), vc.clone(), started.clone());
            std::thread::spawn(move || {
                let error = run(&sh, &vc.dir, &w).err().map(|e| format!("{e:#}"));
                if !send_report(&sh, &w, error) {
                    // Not taken: run it again (it is idempotent) when the
                    // controller lists it next.
                    started
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&(w.id.clone(), w.generation));
                }
            });
        }
    }
}

/// The filesystem's size and free space in GiB.
fn filesystem(dir: &Path) -> anyhow::Result<(f64, f64)> {
    let (total, free) =
        crate::host::fs_space(dir).with_context(|| format!("statvfs of {}", dir.display()))?;
    Ok((total as f64 / GIB, free as f64 / GIB))
}

fn report_capacity(
    sh: &Shared,
    vc: &VolumesConfig,
    exporter: Option<&super::volume_export::Exporter>,
) -> anyhow::Result<()> {
    private_dir(&vc.dir)?;
    let (total, free) = filesystem(&vc.dir)?;
    let r = StorageReport {
        total_capacity_gb: (total * 100.0).round() / 100.0,
        free_capacity_gb: (free * 100.0).round() / 100.0,
        max_over_subscription_ratio: vc.max_over_subscription_ratio,
        volume_format: "qcow2".into(),
        nbd: exporter.map(|x| x.server()),
        backend_name: vc.backend_name.clone(),
    };
    let url = format!("{}/edge/v1/storage/{}", sh.cfg.controller, sh.cfg.host);
    match call(sh, "PUT", &url, Some(serde_json::to_string(&r)?))? {
        (204, _) => Ok(()),
        (code, b) => anyhow::bail!("the controller refused the storage report ({code}): {b}"),
    }
}

/// Reports a task's outcome; true once the controller took it (or
/// refused it for good).
fn send_report(sh: &Shared, w: &VolumeWork, error: Option<String>) -> bool {
    let r = VolumeReport {
        task: w.task,
        generation: w.generation,
        error,
    };
    let url = format!(
        "{}/edge/v1/storage/{}/work/{}/report",
        sh.cfg.controller, sh.cfg.host, w.id
    );
    let Ok(body) = serde_json::to_string(&r) else {
        return false;
    };
    for attempt in 0..30 {
        match call(sh, "POST", &url, Some(body.clone())) {
            Ok((204, _)) => return true,
            Ok((code, b)) if (400..500).contains(&code) => {
                tracing::warn!(volume = %w.id, code, body = %b, "the controller refused a volume report");
                return true;
            }
            Ok((code, b)) => {
                tracing::warn!(volume = %w.id, code, body = %b, "reporting a volume task failed")
            }
            Err(e) => {
                tracing::warn!(volume = %w.id, error = %format!("{e:#}"), "reporting a volume task failed")
            }
        }
        std::thread::sleep(Duration::from_secs(1 + attempt.min(4)));
    }
    false
}

/// Runs one task.
fn run(sh: &Shared, dir: &Path, w: &VolumeWork) -> anyhow::Result<()> {
    private_dir(dir)?;
    let id = safe_id(&w.id)?;
    let size = w.size_gb;
    match w.task {
        VolumeTask::Create => {
            let from = match &w.source {
                None => None,
                Some(VolumeSource::Image {
                    id: image,
                    sha512,
                    disk_format,
                }) => {
                    let image = safe_id(image)?;
                    let path = super::images::fetch_image(sh, image, sha512.as_deref())?;
                    let fmt = qemu_format(disk_format);
                    super::volume_bases::check_image(&path, &fmt)?;
                    // A thin overlay on the image where it can be one:
                    // nothing is copied.
                    let dest = volume_path(dir, id);
                    if super::volume_bases::overlay_from_image(
                        dir, &dest, image, &path, &fmt, size,
                    )? {
                        return Ok(());
                    }
                    Some((path, fmt))
                }
                Some(VolumeSource::Volume { id: v }) => {
                    // A clone of a volume in use is read while its holder
                    // is quiesced.
                    let src = volume_path(dir, safe_id(v)?);
                    let dest = volume_path(dir, id);
                    return read_quiesced(sh, &src.clone(), || {
                        make(&dest, Some((src.clone(), "qcow2".to_string())), size)
                    });
                }
                Some(VolumeSource::Snapshot { id: s }) => {
                    Some((snapshot_path(dir, safe_id(s)?), "qcow2".to_string()))
                }
            };
            make(&volume_path(dir, id), from, size)
        }
        VolumeTask::Extend => {
            let path = volume_path(dir, id);
            anyhow::ensure!(
                path.exists(),
                "the volume's file {} is missing",
                path.display()
            );
            // A volume a running VM here has open grows through its QEMU
            // (the guest is told); any other, as a file.
            if virtual_size(&path)? < size << 30 && !sh.driver.grow_volume(&path, size << 30)? {
                qemu_img(&["resize", "-f", "qcow2"], &path, &[&format!("{size}G")])?;
            }
            Ok(())
        }
        VolumeTask::Rewrite => {
            // Revert to a snapshot or reimage: the new contents are made
            // beside the file and renamed over it, so a crash leaves the
            // old data or the new, and a rerun does the same again.
            let from = match &w.source {
                Some(VolumeSource::Image {
                    id: image,
                    sha512,
                    disk_format,
                }) => {
                    let path = super::images::fetch_image(sh, safe_id(image)?, sha512.as_deref())?;
                    let fmt = qemu_format(disk_format);
                    super::volume_bases::check_image(&path, &fmt)?;
                    (path, fmt)
                }
                Some(VolumeSource::Snapshot { id: s }) => {
                    (snapshot_path(dir, safe_id(s)?), "qcow2".to_string())
                }
                other => anyhow::bail!("a volume cannot be rewritten from {other:?}"),
            };
            write(&volume_path(dir, id), Some(from), size)?;
            super::volume_bases::prune(dir);
            Ok(())
        }
        VolumeTask::Delete => {
            remove(&volume_path(dir, id))?;
            super::volume_bases::prune(dir);
            Ok(())
        }
        VolumeTask::Snapshot => {
            let vol = w
                .volume_id
                .as_deref()
                .context("a snapshot task without its volume")?;
            let src = volume_path(dir, safe_id(vol)?);
            anyhow::ensure!(
                src.exists(),
                "the volume's file {} is missing",
                src.display()
            );
            let dest = snapshot_path(dir, id);
            read_quiesced(sh, &src.clone(), || {
                make(&dest, Some((src.clone(), "qcow2".into())), size)
            })
        }
        VolumeTask::DeleteSnapshot => remove(&snapshot_path(dir, id)),
        VolumeTask::Backup | VolumeTask::Restore | VolumeTask::Upload => {
            super::backups::run(sh, dir, w)
        }
        VolumeTask::Fetch => {
            let vol = w
                .volume_id
                .as_deref()
                .context("a fetch task without its volume")?;
            let path = volume_path(dir, safe_id(vol)?);
            match w.nbd.as_ref() {
                Some(from) => fetch(dir, id, &path, from, size),
                // A volume in use moves through its VM's copy: this node
                // makes the empty file the copy fills.
                None => make(&path, None, size),
            }
        }
        VolumeTask::Discard => {
            let vol = w
                .volume_id
                .as_deref()
                .context("a discard task without its volume")?;
            remove(&volume_path(dir, safe_id(vol)?))?;
            super::volume_bases::prune(dir);
            Ok(())
        }
        VolumeTask::Other => anyhow::bail!("this agent does not know the task"),
    }
}

/// `qemu-img`'s name for a Glance disk format.
fn qemu_format(disk_format: &str) -> String {
    match disk_format {
        "iso" => "raw".into(),
        "vhd" => "vpc".into(),
        f => f.into(),
    }
}

/// Makes `path` (empty, or a copy of `from` in its format), `size` GiB:
/// written as `.part` and renamed when whole; an existing file is the
/// outcome of an earlier run of the same task.
fn make(path: &Path, from: Option<(PathBuf, String)>, size: u64) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    write(path, from, size)
}

/// Writes `path` (empty, or a copy of `from`), `size` GiB, as `.part`
/// renamed over whatever was there when whole.
fn write(path: &Path, from: Option<(PathBuf, String)>, size: u64) -> anyhow::Result<()> {
    let part = path.with_extension("qcow2.part");
    let _ = std::fs::remove_file(&part);
    let r = (|| {
        match &from {
            None => qemu_img(
                &["create", "-q", "-f", "qcow2"],
                &part,
                &[&format!("{size}G")],
            )?,
            Some((src, fmt)) => {
                anyhow::ensure!(src.exists(), "the source {} is missing", src.display());
                let src = src.to_string_lossy().to_string();
                // -U: a source in use is read while its holder is
                // quiesced (`read_quiesced`), which keeps QEMU's lock.
                qemu_img(
                    &["convert", "-q", "-U", "-f", fmt, "-O", "qcow2", &src],
                    &part,
                    &[],
                )?;
                fit(&part, size)?;
            }
        }
        std::fs::File::open(&part)?.sync_all()?;
        std::fs::rename(&part, path)?;
        Ok(())
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    r
}

/// Copies a volume of another storage node (its NBD export, TLS with
/// that node's key) into `path`, `size` GiB: `qemu-img convert` reads
/// what the guest would see and writes a new thin qcow2 (zeros are not
/// written), as `.part` renamed over whatever was there when whole, so a
/// rerun after a crash copies again and ends the same.
fn fetch(
    dir: &Path,
    task: &str,
    path: &Path,
    from: &stratus_wire::volume::NbdTarget,
    size: u64,
) -> anyhow::Result<()> {
    let part = path.with_extension("qcow2.part");
    let _ = std::fs::remove_file(&part);
    // The key file lives only while the copy runs.
    let psk = dir.join(format!(".fetch-{task}.psk"));
    let r = (|| {
        let _ = std::fs::remove_dir_all(&psk);
        crate::container_volumes::write_psk(&psk, from)?;
        let tls = format!(
            "tls-creds-psk,id=tls0,endpoint=client,dir={},username={}",
            psk.display(),
            from.psk_identity
        );
        let src = format!(
            "driver=nbd,server.type=inet,server.host={},server.port={},export={},tls-creds=tls0",
            from.host, from.port, from.export
        );
        // The source exports the volume once it has seen the move: a
        // moment after this node may, so the copy is tried for 30 s.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let r = qemu_img(
                &[
                    "convert",
                    "-q",
                    "--object",
                    &tls,
                    "--image-opts",
                    &src,
                    "-O",
                    "qcow2",
                ],
                &part,
                &[],
            );
            match r {
                Ok(()) => break,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!(error = %format!("{e:#}"), "the volume's export is not there yet");
                    let _ = std::fs::remove_file(&part);
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
        fit(&part, size)?;
        std::fs::File::open(&part)?.sync_all()?;
        std::fs::rename(&part, path)?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&psk);
    if r.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    r
}

/// Grows a copy just made (`part`, qcow2) to `size` GiB; a copy larger
/// than that is an error.
fn fit(part: &Path, size: u64) -> anyhow::Result<()> {
    let have = virtual_size(part)?;
    anyhow::ensure!(
        have <= size << 30,
        "the source's virtual size ({have} bytes) does not fit in {size} GiB"
    );
    if have < size << 30 {
        qemu_img(
            &["resize", "-q", "-f", "qcow2"],
            part,
            &[&format!("{size}G")],
        )?;
    }
    Ok(())
}

fn remove(path: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path.with_extension("qcow2.part"));
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Reconciles a server's volumes in a thread of its own, or hands the
/// assignment to the thread already doing it for that server.
pub(super) fn queue_attach(sh: &Arc<Shared>, s: &Assignment) {
    {
        let mut m = sh.volume_work.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(next) = m.get_mut(&s.id) {
            *next = Some(s.clone());
            return;
        }
        m.insert(s.id.clone(), None);
    }
    let (sh, mut a) = (sh.clone(), s.clone());
    std::thread::spawn(move || {
        loop {
            attach_volumes(&sh, &a);
            let mut m = sh.volume_work.lock().unwrap_or_else(|e| e.into_inner());
            match m.get_mut(&a.id).and_then(Option::take) {
                Some(next) => a = next,
                None => {
                    m.remove(&a.id);
                    return;
                }
            }
        }
    });
}

/// Makes a server's workload have the volumes its assignment lists (the
/// driver reconciles against the running VM) and, when an attach or
/// detach waits for it, tells the controller what the workload has now.
fn attach_volumes(sh: &Shared, s: &Assignment) {
    use stratus_wire::volume::{AttachFailure, AttachReport};
    let mut disks = Vec::new();
    let mut failed = Vec::new();
    for v in &s.volumes {
        let here = v.host.as_deref() == Some(sh.cfg.host.as_str());
        match (&sh.cfg.volumes, here, safe_id(&v.volume_id)) {
            (Some(vc), true, Ok(id)) => disks.push(crate::VmDisk {
                volume_id: v.volume_id.clone(),
                path: volume_path(&vc.dir, id),
                device: v.device.clone(),
                qos: v.qos.clone(),
                nbd: None,
                size_gb: v.size_gb,
                swap_from: v.swap_from.clone(),
            }),
            // Another node's volume: over NBD from its export.
            (_, false, Ok(_)) if v.nbd.is_some() => disks.push(crate::VmDisk {
                volume_id: v.volume_id.clone(),
                path: PathBuf::new(),
                device: v.device.clone(),
                qos: v.qos.clone(),
                nbd: v.nbd.clone(),
                size_gb: v.size_gb,
                swap_from: v.swap_from.clone(),
            }),
            _ => failed.push(AttachFailure {
                volume_id: v.volume_id.clone(),
                error: format!(
                    "the volume's file is on {}, not on this node",
                    v.host.as_deref().unwrap_or("no node")
                ),
            }),
        }
    }
    let mut moved = Vec::new();
    let attached = match sh.driver.set_volumes(&s.id, &disks) {
        Ok(()) => {
            // A move asked of the driver is done once it returns: the
            // disk is the new place's.
            moved = disks
                .iter()
                .filter(|d| d.swap_from.as_deref() == Some(d.volume_id.as_str()))
                .map(|d| d.volume_id.clone())
                .collect();
            disks.iter().map(|d| d.volume_id.clone()).collect()
        }
        Err(e) => {
            tracing::warn!(server = %s.id, error = %e, "could not change the server's volumes");
            // Nothing asked of this call is known to be done: attaches
            // roll back, detaches stay attached, and the next reconcile
            // makes the workload match again.
            let ids = disks
                .iter()
                .map(|d| d.volume_id.clone())
                .chain(s.volumes_detaching.iter().cloned());
            failed.extend(ids.map(|volume_id| AttachFailure {
                volume_id,
                error: e.to_string(),
            }));
            Vec::new()
        }
    };
    if !s.volumes_pending {
        return;
    }
    let url = format!(
        "{}/edge/v1/nodes/{}/servers/{}/volumes",
        sh.cfg.controller, sh.cfg.host, s.id
    );
    let Ok(body) = serde_json::to_string(&AttachReport {
        attached,
        failed,
        moved,
    }) else {
        return;
    };
    for attempt in 0..10 {
        match call(sh, "POST", &url, Some(body.clone())) {
            Ok((204, _)) => return,
            Ok((code, b)) if (400..500).contains(&code) => {
                tracing::warn!(server = %s.id, code, body = %b, "the controller refused a volume attach report");
                return;
            }
            Ok((code, b)) => {
                tracing::warn!(server = %s.id, code, body = %b, "reporting volumes failed")
            }
            Err(e) => {
                tracing::warn!(server = %s.id, error = %format!("{e:#}"), "reporting volumes failed")
            }
        }
        std::thread::sleep(Duration::from_secs(1 + attempt.min(4)));
    }
}
