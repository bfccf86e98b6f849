//! The heartbeat (the node report, which also registers the node) and
//! what its answer asks for: reaping orphans and moved copies, caching
//! images ahead; and the pruning of the node's image cache.

use std::sync::atomic::Ordering;

use stratus_wire::{NodeReply, NodeReport, PROTOCOL_VERSION, PrecacheImage};

use super::*;
use crate::node::images::fetch_image;

/// What this agent can be asked beyond the protocol's base. Moving a
/// volume under a running guest needs a driver that copies it (QEMU's
/// block mirror): a fake server would report it moved with nothing
/// copied.
fn features(sh: &Shared) -> Vec<String> {
    let mut out = vec![
        stratus_wire::volume::FEATURE_SWAP_VOLUME.to_string(),
        stratus_wire::volume::FEATURE_ONLINE_EXTEND.to_string(),
        stratus_wire::volume::FEATURE_CONTAINER_EXTEND.to_string(),
    ];
    if sh.driver.runs_vms() {
        out.push(stratus_wire::volume::FEATURE_MOVE_VOLUME.to_string());
    }
    out
}

pub(super) fn heartbeat(sh: &Arc<Shared>, starting: bool) -> anyhow::Result<()> {
    let cached: Vec<String> =
        std::mem::take(&mut *sh.precached.lock().unwrap_or_else(|e| e.into_inner()));
    let res = sh.driver.host_resources();
    let settled = sh.settled.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // Before listing: a task settled after this point is newer than the
    // listing.
    let observed = sh.clock.load(Ordering::SeqCst);
    let instances = instance_reports(sh.driver.as_ref(), &settled);
    let report = NodeReport {
        protocol: PROTOCOL_VERSION,
        driver: sh.driver.name().to_string(),
        vcpus: res.vcpus,
        memory_mb: res.memory_mb,
        disk_gb: res.disk_gb,
        arch: res.arch,
        hypervisor_type: res.hypervisor_type,
        hypervisor_version: res.hypervisor_version,
        cpu_model: res.cpu_model,
        host_ip: sh.net.tunnel_ip().unwrap_or("127.0.0.1").to_string(),
        l3: sh.cfg.l3 && sh.net.missing().is_none(),
        agent_url: sh
            .agent_url
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        agent_key: Some(sh.key.clone()),
        instances,
        starting,
        observed: Some(observed),
        cached: cached.clone(),
        features: features(sh),
    };
    let body = serde_json::to_string(&report)?;
    let url = format!("{}/edge/v1/nodes/{}", sh.cfg.controller, sh.cfg.host);
    let (code, text) = match call(sh, "PUT", &url, Some(body)) {
        Ok(r) => r,
        Err(e) => {
            // Say it again next time.
            sh.precached
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(cached);
            return Err(e);
        }
    };
    if code != 200 {
        sh.precached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(cached);
        anyhow::bail!("heartbeat refused ({code}): {text}");
    }
    let reply: NodeReply = serde_json::from_str(&text).unwrap_or_default();
    for img in &reply.precache {
        precache(sh, img);
    }
    // Copies of servers that now run elsewhere (a confirmed or reverted
    // migration): always removed, as Nova's confirm and revert do.
    for l in &reply.leftovers {
        let (id, generation) = (l.id.as_str(), l.generation);
        let newer = sh
            .settled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .is_some_and(|g| *g > generation)
            || sh
                .started
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|(i, g)| i == id && *g > generation);
        if newer {
            continue;
        }
        tracing::info!(
            server = id,
            "removing the copy of a server that moved to another node"
        );
        if let Err(e) = sh.driver.destroy(id) {
            tracing::warn!(server = id, error = %e, "could not remove a moved server's copy");
        }
    }
    for id in &reply.orphans {
        let id = id.as_str();
        match sh.cfg.orphans {
            OrphanAction::Reap => {
                tracing::warn!(server = id, "reaping a workload no server owns");
                if let Err(e) = sh.driver.destroy(id) {
                    tracing::warn!(server = id, error = %e, "could not reap");
                }
            }
            OrphanAction::Log => {
                tracing::warn!(
                    server = id,
                    "a workload runs here that no server owns (left alone: --orphans log)"
                )
            }
            OrphanAction::Noop => {}
        }
    }
    Ok(())
}

/// How long an image found in the image service is not asked about again.
pub(super) const IMAGE_RECHECK: Duration = Duration::from_secs(600);

/// The node's image cache keeps what may boot again: an image no
/// instance here uses and that the image service no longer has (a
/// shelved or transfer image after its boot, an image a user deleted)
/// goes, download and unpacked copy.
pub(super) fn prune_images(sh: &Shared) {
    let cache = sh.cfg.state_dir.join("image-cache");
    let mut candidates: Vec<String> = sh.driver.unpacked_images();
    if let Ok(rd) = std::fs::read_dir(&cache) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".data") {
                candidates.push(id.to_string());
            }
        }
    }
    candidates.sort();
    candidates.dedup();
    // Only what is not being fetched and was not found lately; the
    // instances are read only when something is left to ask about.
    {
        let busy = sh.precaching.lock().unwrap_or_else(|e| e.into_inner());
        let seen = sh.image_seen.lock().unwrap_or_else(|e| e.into_inner());
        candidates.retain(|id| {
            !busy.contains(id) && seen.get(id).is_none_or(|t| t.elapsed() >= IMAGE_RECHECK)
        });
    }
    if candidates.is_empty() {
        return;
    }
    let Some(in_use) = sh.driver.images_in_use() else {
        return;
    };
    for id in candidates {
        if in_use.contains(&id) {
            continue;
        }
        let url = format!("{}/image/v2/images/{id}", sh.cfg.controller);
        match call(sh, "GET", &url, None) {
            Ok((404, _)) => {
                let removed = sh.driver.remove_image(&id);
                let _ = std::fs::remove_file(cache.join(format!("{id}.data")));
                match removed {
                    Ok(_) => {
                        tracing::info!(image = %id, "pruned an image the image service no longer has")
                    }
                    Err(e) => tracing::warn!(image = %id, error = %e, "could not prune an image"),
                }
            }
            Ok(_) | Err(_) => {
                sh.image_seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, Instant::now());
            }
        }
    }
}

/// Fetches an image into the node's cache in the background (once at a
/// time per image); the next heartbeat tells the controller.
pub(super) fn precache(sh: &Arc<Shared>, img: &PrecacheImage) {
    let id = img.id.clone();
    if !sh
        .precaching
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.clone())
    {
        return;
    }
    let checksum = img.checksum.clone();
    let sh = sh.clone();
    std::thread::spawn(move || {
        let result = if sh.driver.name() == "fake" {
            Ok(PathBuf::new())
        } else {
            fetch_image(&sh, &id, checksum.as_deref())
        };
        match result {
            Ok(_) => {
                tracing::info!(image = %id, "image cached ahead");
                sh.precached
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(id.clone());
            }
            Err(e) => {
                tracing::warn!(image = %id, error = %format!("{e:#}"), "could not cache the image ahead; trying again later")
            }
        }
        sh.precaching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    });
}
