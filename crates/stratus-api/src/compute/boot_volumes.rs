//! The volumes a server is created with (`block_device_mapping_v2`
//! entries whose destination is a volume): boot from volume and volumes
//! attached from the start.
//!
//! Volumes are made (or reserved) in the transaction that records the
//! server, so a refused create leaves no volume behind. A volume's file
//! is opened by the QEMU of the node holding it (volumes attach on their
//! own storage node only, see `docs/block-storage.md`), so all of a
//! server's volumes sit on one node and the server is scheduled there.
//! While a volume is still being made the server waits in task state
//! `block_device_mapping`; the storage node's report that it is made
//! hands the server to the scheduler ([`volume_ready`]).

use std::collections::HashMap;

use serde_json::{Value, json};
use stratus_store::{Query as StoreQuery, Tx};

use super::commands::{CreateServer, VolumeFrom, VolumeMapping};
use super::model::{ComputeNode, ROOT_DEVICE, Server};
use super::states::{task, vm};
use crate::identity::policy::Ctx;
use crate::image::model::Image;
use crate::timeutil::now_us;
use crate::volume::VCtx;
use crate::volume::attach::{self, AttachRequest};
use crate::volume::model::Volume;
use crate::volume::volumes::{self as cinder, ImageSource, NewVolume};
use crate::{ApiError, AppState};

/// What is looked up before the create's transaction.
pub struct Prepared {
    /// The images volumes are made from, checked (visible, active, disk
    /// images) and sized.
    images: HashMap<String, ImageSource>,
    /// Compute nodes that run VMs: where a volume made for a server may
    /// go (it must be where the server runs).
    vm_hosts: Vec<String>,
}

fn invalid(why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("Block Device Mapping is Invalid: {why}"))
}

/// Checks the mappings that need no transaction and reads the images.
pub fn prepare(state: &AppState, ctx: &Ctx, c: &CreateServer) -> Result<Prepared, ApiError> {
    if c.max_count > 1
        && c.volumes
            .iter()
            .any(|v| matches!(v.from, VolumeFrom::Volume(_)))
    {
        return Err(ApiError::bad_request(
            "Cannot attach one or more volumes to multiple instances",
        ));
    }
    if c.volumes.len() > 11 {
        return Err(invalid("a server takes at most 11 volumes"));
    }
    let vctx = VCtx(Ctx(ctx.0.clone()));
    let mut images = HashMap::new();
    for v in &c.volumes {
        if let VolumeFrom::Image(id) = &v.from
            && !images.contains_key(id)
        {
            let src = cinder::image_source(state, &vctx, id)
                .map_err(|e| invalid(format!("image {id}: {}", e.message)))?;
            // A volume holds a container image's bytes, but no VM boots
            // them.
            if v.boot_index == Some(0)
                && src
                    .2
                    .get("container_format")
                    .is_some_and(|c| matches!(c.as_str(), "docker" | "oci"))
            {
                return Err(invalid(format!(
                    "image {id} is a container image: a server cannot boot from a volume made of it"
                )));
            }
            images.insert(id.clone(), src);
        }
    }
    let vm_hosts = state
        .store
        .list::<ComputeNode>(&StoreQuery::all())?
        .into_iter()
        .filter(|n| !n.disabled && (n.driver.contains("qemu") || n.driver == "fake"))
        .map(|n| n.id)
        .collect();
    Ok(Prepared { images, vm_hosts })
}

/// A create request for an image made by snapshotting a volume-backed
/// server (`block_device_mapping` in its properties, as Nova writes it):
/// the request with the image's mappings (new volumes from its
/// snapshots) in place of the image; mappings the request gives for the
/// same device win. `None` for any other image.
pub fn image_mappings(img: &Image, c: &CreateServer) -> Result<Option<CreateServer>, ApiError> {
    let Some(raw) = img.properties.get("block_device_mapping") else {
        return Ok(None);
    };
    let list: Vec<Value> = match raw {
        Value::String(s) => serde_json::from_str(s).map_err(|_| {
            invalid(format!(
                "image {}'s block_device_mapping is not a JSON list",
                img.id
            ))
        })?,
        Value::Array(a) => a.clone(),
        _ => return Ok(None),
    };
    let mut volumes = Vec::new();
    for e in &list {
        let text = |k: &str| e.get(k).and_then(Value::as_str).map(str::to_string);
        if text("destination_type").as_deref() != Some("volume") {
            continue;
        }
        let from = match (
            text("source_type").as_deref(),
            text("snapshot_id"),
            text("volume_id"),
        ) {
            (Some("snapshot"), Some(id), _) => VolumeFrom::Snapshot(id),
            (Some("volume"), _, Some(id)) => VolumeFrom::Volume(id),
            _ => continue,
        };
        let device_name = text("device_name");
        if c.volumes
            .iter()
            .any(|v| v.device_name.is_some() && v.device_name == device_name)
        {
            continue;
        }
        volumes.push(VolumeMapping {
            from,
            size: e.get("volume_size").and_then(Value::as_u64),
            boot_index: e
                .get("boot_index")
                .and_then(Value::as_i64)
                .filter(|i| *i >= 0),
            delete_on_termination: e
                .get("delete_on_termination")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            device_name,
            volume_type: text("volume_type"),
            tag: text("tag"),
        });
    }
    if !volumes.iter().any(|v| v.boot_index == Some(0)) {
        return Ok(None);
    }
    let mut out = c.clone();
    out.volumes = volumes
        .into_iter()
        .chain(
            c.volumes
                .iter()
                .filter(|v| v.boot_index != Some(0))
                .cloned(),
        )
        .collect();
    out.image_ref = String::new();
    Ok(Some(out))
}

/// The image a volume-backed server boots, when its root volume is made
/// from an image (for the flavor's checks against it).
pub fn root_image(c: &CreateServer) -> Option<&str> {
    c.volumes.iter().find_map(|v| match &v.from {
        VolumeFrom::Image(id) if v.boot_index == Some(0) => Some(id.as_str()),
        _ => None,
    })
}

/// Makes or reserves the volumes of new server `s` (not yet inserted)
/// in `tx`, records them in `s.volumes`, and points the scheduler at the
/// node holding them. Returns whether a volume is still being made (the
/// server then waits in `block_device_mapping`).
#[allow(clippy::too_many_arguments)]
pub fn attach_new(
    state: &AppState,
    tx: &Tx,
    ctx: &Ctx,
    project: &str,
    c: &CreateServer,
    p: &Prepared,
    s: &mut Server,
    forced_host: Option<&str>,
) -> Result<bool, ApiError> {
    if c.volumes.is_empty() {
        return Ok(false);
    }
    let vctx = VCtx(Ctx(ctx.0.clone()));
    // Existing volumes first: they say where the server must run.
    let mut host: Option<String> = forced_host.map(str::to_string);
    let mut vols: Vec<(&VolumeMapping, Volume)> = Vec::new();
    for m in &c.volumes {
        if let VolumeFrom::Volume(id) = &m.from {
            let v = cinder::find(tx, &vctx, id)
                .map_err(|_| invalid(format!("failed to get volume {id}")))?;
            if m.boot_index == Some(0) && !v.bootable {
                return Err(ApiError::bad_request(format!(
                    "Block Device {id} is not bootable."
                )));
            }
            let at = v
                .host
                .clone()
                .ok_or_else(|| invalid(format!("volume {id} is on no storage node")))?;
            match &host {
                Some(h) if *h != at => {
                    return Err(invalid(format!(
                        "volume {id} is on node {at} and the server's other disks need node {h}: a server's volumes must be on the node it runs on"
                    )));
                }
                _ => host = Some(at),
            }
            vols.push((m, v));
        }
    }
    // New volumes: all on one node that runs VMs (the first one's).
    let zone = c.availability_zone.clone();
    for m in &c.volumes {
        let mut req = NewVolume {
            size: m.size.filter(|n| *n > 0),
            name: Some(match m.boot_index {
                Some(0) => format!("{}-boot", s.name),
                _ => format!("{}-{}", s.name, vols.len()),
            }),
            zone: zone.clone(),
            volume_type: m.volume_type.clone(),
            ..Default::default()
        };
        let image = match &m.from {
            VolumeFrom::Volume(_) => continue,
            VolumeFrom::Image(id) => {
                req.image = Some(id.clone());
                p.images.get(id)
            }
            VolumeFrom::Snapshot(id) => {
                req.snapshot = Some(id.clone());
                None
            }
            VolumeFrom::Blank => None,
        };
        req.host = match &host {
            Some(h) => Some(h.clone()),
            None => Some(pick_node(
                state,
                tx,
                &p.vm_hosts,
                zone.as_deref(),
                m,
                image,
            )?),
        };
        let (v, _) = cinder::create_in(state, tx, &vctx, project, &req, image)
            .map_err(|e| invalid(e.message))?;
        if v.host.is_none() {
            return Err(invalid(format!(
                "no storage node can hold a volume of {} GiB for this server",
                v.size
            )));
        }
        host = v.host.clone();
        vols.push((m, v));
    }
    // Root first, then the others in the order asked.
    vols.sort_by_key(|(m, _)| m.boot_index != Some(0));
    let mut making = false;
    for (m, mut v) in vols {
        let device = match m.boot_index {
            Some(0) => Some(ROOT_DEVICE.to_string()),
            _ => m.device_name.as_ref().map(|d| {
                if d.starts_with("/dev/") {
                    d.clone()
                } else {
                    format!("/dev/{d}")
                }
            }),
        };
        making |= v.status == "creating";
        attach::reserve(
            tx,
            s,
            &mut v,
            AttachRequest {
                device,
                tag: m.tag.clone(),
                delete_on_termination: m.delete_on_termination,
            },
        )
        .map_err(|e| invalid(e.message))?;
    }
    if let Some(h) = host {
        s.hints["_forced_host"] = json!(h);
    }
    if making {
        s.task_state = Some(task::BLOCK_DEVICE_MAPPING.into());
    }
    Ok(making)
}

/// A node that runs VMs and can hold the volume (for a boot volume made
/// from an image, its size at least the image's).
fn pick_node(
    state: &AppState,
    tx: &Tx,
    vm_hosts: &[String],
    zone: Option<&str>,
    m: &VolumeMapping,
    image: Option<&ImageSource>,
) -> Result<String, ApiError> {
    let size = m.size.unwrap_or(0).max(image.map_or(1, |i| i.1));
    let mut best: Option<(String, f64)> = None;
    for c in crate::volume::service::capacities(state, tx)? {
        if !vm_hosts.contains(&c.node.id)
            || !c.up
            || c.node.disabled
            || zone.is_some_and(|z| z != c.zone)
            || !crate::volume::service::fits(&c, size)
        {
            continue;
        }
        let free = c.node.total_capacity_gb * c.node.max_over_subscription_ratio.max(1.0)
            - c.provisioned_gb as f64;
        if best.as_ref().is_none_or(|(_, f)| free > *f) {
            best = Some((c.node.id.clone(), free));
        }
    }
    best.map(|b| b.0).ok_or_else(|| {
        invalid(format!(
            "no node that runs VMs can hold a volume of {size} GiB{}",
            zone.map(|z| format!(" in zone {z}")).unwrap_or_default()
        ))
    })
}

/// A volume made for a server is ready (or failed): a server waiting in
/// `block_device_mapping` for it goes to the scheduler once all its
/// volumes are made, or to ERROR when one could not be. Returns the
/// servers to hand to the scheduler after the commit.
pub fn volume_ready(tx: &Tx, v: &Volume, ok: bool) -> Result<Vec<String>, ApiError> {
    let mut out = Vec::new();
    for a in &v.attachments {
        let Some(sid) = &a.server_id else { continue };
        let Some(mut s) = tx.get::<Server>(sid)? else {
            continue;
        };
        if s.task_state.as_deref() != Some(task::BLOCK_DEVICE_MAPPING) {
            continue;
        }
        let now = now_us();
        if !ok {
            s.vm_state = vm::ERROR.into();
            s.task_state = None;
            s.fault = Some(super::model::Fault {
                code: 500,
                message: format!(
                    "Build of instance {} aborted: Volume {} did not finish being created.",
                    s.id, v.id
                ),
                details: v.fault.clone().unwrap_or_default(),
                created_us: now,
            });
            s.updated_us = now;
            tx.update(&s)?;
            continue;
        }
        let mut all = true;
        for sv in &s.volumes {
            let status = if sv.volume_id == v.id {
                v.status.clone()
            } else {
                tx.get::<Volume>(&sv.volume_id)?
                    .map(|x| x.status)
                    .unwrap_or_default()
            };
            all &= status != "creating";
        }
        if all {
            s.task_state = Some(task::SCHEDULING.into());
            s.updated_us = now;
            tx.update(&s)?;
            out.push(s.id.clone());
        }
    }
    Ok(out)
}
