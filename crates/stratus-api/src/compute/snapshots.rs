//! Server snapshots and backups (`createImage`, `createBackup`), as Nova
//! makes them.
//!
//! The API creates the image record at once (`queued`, owned by the
//! server's project, with the properties Nova sets), puts the server into
//! task_state `image_snapshot` (`image_backup`) and answers 202. The node
//! agent writes the instance's root file system as an image tarball,
//! moves the task to `image_pending_upload` and `image_uploading`
//! (`progress`), uploads the tarball through the image service's ordinary
//! upload path (so its format checks apply), and reports. A failure
//! deletes the image; either way the task is cleared and the vm_state
//! stays what it was. A backup's success deletes the oldest backups of the
//! same type beyond its rotation.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde_json::{Map, Value, json};
use stratus_store::Query as StoreQuery;

use super::commands::ImageRequest;
use super::common::{check_locked, fetch_tx, record_action};
use super::model::{Server, SnapshotJob};
use super::quotas::{self, Resource};
use super::states::{task, vm};
use crate::identity::model::{Project, User};
use crate::identity::policy::Ctx;
use crate::image::model::{Image, status};
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

/// The vm_states a server can be snapshotted in (Nova's
/// `check_instance_state` on `snapshot` and `backup`).
const FROM: &[&str] = &[vm::ACTIVE, vm::STOPPED, vm::PAUSED, vm::SUSPENDED];

/// Source image properties a snapshot does not inherit (Nova's
/// `NON_INHERITABLE_IMAGE_PROPERTIES` and the default
/// `non_inheritable_image_properties`); `trait:*` neither.
const NOT_INHERITED: &[&str] = &[
    "img_signature",
    "img_signature_hash_method",
    "img_signature_key_type",
    "img_signature_certificate_uuid",
    "cache_in_nova",
    "bittorrent",
];

/// What a request asks for.
struct Request {
    name: String,
    metadata: BTreeMap<String, String>,
    /// `createBackup`: backup_type and rotation.
    backup: Option<(String, u32)>,
    /// `shelve`: the image keeps the server while it is on no node.
    shelve: bool,
}

impl Request {
    fn of(r: ImageRequest) -> Self {
        Request {
            name: r.name,
            metadata: r.metadata,
            backup: r.backup,
            shelve: false,
        }
    }
}

/// The new image's custom properties: the source image's inheritable
/// ones, what Nova adds, then the request's metadata (which wins).
fn properties(
    state: &AppState,
    ctx: &Ctx,
    s: &Server,
    source: Option<&Image>,
    req: &Request,
) -> Result<Map<String, Value>, ApiError> {
    let mut p = Map::new();
    if let Some(src) = source {
        for (k, v) in &src.properties {
            if !NOT_INHERITED.contains(&k.as_str()) && !k.starts_with("trait:") {
                p.insert(k.clone(), v.clone());
            }
        }
    }
    let mut set = |k: &str, v: &str| {
        p.insert(k.to_string(), json!(v));
    };
    set("instance_uuid", &s.id);
    set("user_id", ctx.user_id());
    set("base_image_ref", &s.image_ref);
    set("image_location", "snapshot");
    set("image_state", "available");
    set("owner_id", &s.project_id);
    if let Some(pr) = state.store.get::<Project>(&s.project_id)? {
        set("owner_project_name", &pr.name);
    }
    if let Some(u) = state.store.get::<User>(&s.user_id)? {
        set("owner_user_name", &u.name);
    }
    match &req.backup {
        Some((kind, _)) => {
            set("image_type", "backup");
            set("backup_type", kind);
        }
        None => set("image_type", "snapshot"),
    }
    for (k, v) in &req.metadata {
        set(k, v);
    }
    Ok(p)
}

/// A new queued image for the root file system of `s`: private to its
/// project, with the source image's formats and minimums.
fn image_of(
    s: &Server,
    source: Option<&Image>,
    name: &str,
    properties: Map<String, Value>,
    hidden: bool,
) -> Image {
    let now = now_us();
    // A VM's disk is written as qcow2 whatever its image was (Nova's
    // snapshot_image_format = qcow2).
    let vm = source.is_some_and(|i| i.boots_vm());
    Image {
        id: uuid::Uuid::new_v4().to_string(),
        name: Some(name.to_string()),
        owner: Some(s.project_id.clone()),
        status: status::QUEUED.into(),
        visibility: "private".into(),
        disk_format: Some(if vm {
            "qcow2".into()
        } else {
            source
                .and_then(|i| i.disk_format.clone())
                .unwrap_or_else(|| "raw".into())
        }),
        container_format: Some(
            source
                .and_then(|i| i.container_format.clone())
                .unwrap_or_else(|| "docker".into()),
        ),
        size: None,
        virtual_size: None,
        checksum: None,
        os_hash_algo: None,
        os_hash_value: None,
        protected: false,
        min_ram: source.map(|i| i.min_ram).unwrap_or(0),
        min_disk: source.map(|i| i.min_disk).unwrap_or(0).max(s.flavor.disk),
        os_hidden: hidden,
        tags: Vec::new(),
        properties,
        created_at: now,
        updated_at: now,
        blob: None,
        staged: None,
        tasks: Vec::new(),
    }
}

/// The hidden image a cold migration carries the server's root file
/// system in, from the source node to the destination (see `resize.rs`).
pub(super) fn transfer_image(tx: &stratus_store::Tx, s: &Server) -> Result<String, ApiError> {
    let source = tx.get::<Image>(&s.image_ref)?;
    let mut props = Map::new();
    props.insert("instance_uuid".into(), json!(s.id));
    props.insert("image_type".into(), json!("migration"));
    let img = image_of(
        s,
        source.as_ref(),
        &format!("{}-migration", s.name),
        props,
        true,
    );
    tx.insert(&img)?;
    Ok(img.id)
}

/// Checks the request against the quotas, creates the image and starts
/// the task; answers the new image.
fn start(
    state: &AppState,
    ctx: &Ctx,
    id: &str,
    req: Request,
    rid: &str,
) -> Result<Image, ApiError> {
    let action = if req.shelve {
        "shelve"
    } else if req.backup.is_some() {
        "createBackup"
    } else {
        "createImage"
    };
    let over = |msg: String| ApiError::new(StatusCode::FORBIDDEN, msg);
    let (s, img) = state.store.write(|tx| {
        let mut s = fetch_tx(tx, ctx, id)?;
        if req.backup.is_some() || req.shelve {
            check_locked(ctx, &s)?;
        }
        if s.task_state.is_some() || !FROM.contains(&s.vm_state.as_str()) || s.host.is_none() {
            return Err(super::states::wrong_state(action, &s));
        }
        if s.boot_volume().is_some() {
            if req.backup.is_some() {
                return Err(ApiError::bad_request(
                    "Backup is not supported for volume-backed instances.",
                ));
            }
            if req.shelve {
                return Err(ApiError::conflict(format!(
                    "Cannot '{action}' instance {}: it boots from a volume",
                    s.id
                )));
            }
        }
        let lim = quotas::limit_tx(tx, &s.project_id, None, Resource::MetadataItems)?;
        if lim >= 0 && req.metadata.len() as i64 > lim {
            return Err(over(format!(
                "Quota exceeded for metadata_items: Requested {}, but already used 0 of {lim} metadata_items",
                req.metadata.len()
            )));
        }
        // Glance's image_count_total; Nova answers a refusal with 403.
        crate::image::quota::check_count(&state.store, tx, &s.project_id)
            .map_err(|e| over(e.message))?;
        let source = tx.get::<Image>(&s.image_ref)?;
        let now = now_us();
        let props = properties(state, ctx, &s, source.as_ref(), &req)?;
        if s.boot_volume().is_some() {
            let img = volume_backed_image(tx, ctx, &s, &req.name, props)?;
            record_action(tx, &s, action, ctx, rid)?;
            return Ok((s, img));
        }
        let img = image_of(&s, source.as_ref(), &req.name, props, false);
        tx.insert(&img)?;
        s.task_state = Some(
            if req.shelve {
                task::SHELVING
            } else if req.backup.is_some() {
                task::IMAGE_BACKUP
            } else {
                task::IMAGE_SNAPSHOT
            }
            .into(),
        );
        s.snapshot = Some(SnapshotJob {
            image_id: img.id.clone(),
            backup: req.backup.clone(),
        });
        s.generation += 1;
        s.updated_us = now;
        tx.update(&s)?;
        record_action(tx, &s, action, ctx, rid)?;
        Ok((s, img))
    })?;
    if s.boot_volume().is_none() {
        state.compute.notify(s.host.as_deref());
    }
    tracing::info!(server = %s.id, image = %img.id, action, "snapshot requested");
    Ok(img)
}

/// Nova's snapshot of a volume-backed server: a snapshot of each of its
/// volumes (forced, as they are in use: the storage node reads each
/// while the VM is paused) and an image with no data that names them in
/// its `block_device_mapping`, so that booting the image makes new
/// volumes from the snapshots. The image is active at once; its
/// snapshots become available when the node has made them.
fn volume_backed_image(
    tx: &stratus_store::Tx,
    ctx: &Ctx,
    s: &Server,
    name: &str,
    mut props: Map<String, Value>,
) -> Result<Image, ApiError> {
    use crate::volume::model::Volume;
    let vctx = crate::volume::VCtx(Ctx(ctx.0.clone()));
    let mut bdm = Vec::new();
    let mut root_meta = BTreeMap::new();
    for sv in &s.volumes {
        let Some(v) = tx.get::<Volume>(&sv.volume_id)? else {
            continue;
        };
        let (snap, _) = crate::volume::snapshots::create_in(
            tx,
            &vctx,
            &v,
            Some(format!("snapshot for {name}")),
            None,
            BTreeMap::new(),
        )?;
        let root = sv.device == super::model::ROOT_DEVICE;
        if root {
            root_meta = v.image_metadata.clone();
        }
        bdm.push(json!({
            "source_type": "snapshot",
            "destination_type": "volume",
            "snapshot_id": snap.id,
            "volume_size": v.size,
            "device_name": sv.device,
            "boot_index": if root { json!(0) } else { Value::Null },
            "delete_on_termination": sv.delete_on_termination,
            "tag": sv.tag,
            "volume_type": Value::Null,
            "disk_bus": "virtio",
            "device_type": "disk",
            "guest_format": Value::Null,
            "no_device": Value::Null,
            "image_id": Value::Null,
            "volume_id": Value::Null,
        }));
    }
    props.insert(
        "block_device_mapping".into(),
        json!(Value::Array(bdm).to_string()),
    );
    props.insert("bdm_v2".into(), json!("True"));
    props.insert("root_device_name".into(), json!(super::model::ROOT_DEVICE));
    let mut img = image_of(s, None, name, props, false);
    // As the root volume's image was, when it was made from one.
    img.disk_format = Some(
        root_meta
            .get("disk_format")
            .cloned()
            .unwrap_or_else(|| "qcow2".into()),
    );
    img.container_format = Some(
        root_meta
            .get("container_format")
            .cloned()
            .unwrap_or_else(|| "bare".into()),
    );
    img.min_ram = root_meta
        .get("min_ram")
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    img.status = status::ACTIVE.into();
    img.size = Some(0);
    tx.insert(&img)?;
    Ok(img)
}

/// `createImage`.
pub fn create_image(
    state: &AppState,
    ctx: &Ctx,
    id: &str,
    req: ImageRequest,
    rid: &str,
) -> Result<(String, bool), ApiError> {
    let img = start(state, ctx, id, Request::of(req), rid)?;
    Ok((img.id, true))
}

/// `shelve`: the server's root file system becomes the image
/// `<name>-shelved` (as a snapshot), then the node lets the workload go
/// (see `shelve.rs`).
pub(super) fn shelve(state: &AppState, ctx: &Ctx, s: &Server, rid: &str) -> Result<(), ApiError> {
    let req = Request {
        name: format!("{}-shelved", s.name),
        metadata: BTreeMap::new(),
        backup: None,
        shelve: true,
    };
    start(state, ctx, &s.id, req, rid).map(|_| ())
}

/// `createBackup`: as `createImage`, then rotation. Nova gives a
/// `Location` (the compute image URL) only when rotation keeps any.
pub fn create_backup(
    state: &AppState,
    ctx: &Ctx,
    id: &str,
    req: ImageRequest,
    rid: &str,
) -> Result<(String, bool), ApiError> {
    let keep = req.backup.as_ref().is_some_and(|(_, r)| *r > 0);
    let img = start(state, ctx, id, Request::of(req), rid)?;
    Ok((img.id, keep))
}

/// The agent's progress on a snapshot: `image_pending_upload`, then
/// `image_uploading`. Taken only while the same task (generation) runs;
/// the generation is not bumped, so the agent does not start it again.
pub fn progress(
    state: &AppState,
    host: &str,
    id: &str,
    generation: u64,
    to: &str,
) -> Result<(), ApiError> {
    let image = [task::IMAGE_PENDING_UPLOAD, task::IMAGE_UPLOADING].contains(&to);
    let shelving = [
        task::SHELVING_IMAGE_PENDING_UPLOAD,
        task::SHELVING_IMAGE_UPLOADING,
    ]
    .contains(&to);
    if !image && !shelving {
        return Err(ApiError::bad_request(format!(
            "{to} is not a snapshot task_state"
        )));
    }
    state.store.write(|tx| {
        let Some(mut s) = tx.get::<Server>(id)? else {
            return Ok(());
        };
        let same_kind = if shelving {
            task::is_shelving
        } else {
            task::is_image
        };
        if s.host.as_deref() != Some(host)
            || s.generation != generation
            || !s.task_state.as_deref().is_some_and(same_kind)
        {
            return Ok(());
        }
        s.task_state = Some(to.into());
        s.updated_us = now_us();
        tx.update(&s)?;
        Ok(())
    })
}

/// After the node's report on a snapshot task (the server's task is
/// already cleared): a failure deletes the image unless it went active;
/// a backup's success rotates.
pub fn finish(state: &AppState, server_id: &str, job: &SnapshotJob, ok: bool) {
    let result = if ok {
        match &job.backup {
            Some((kind, rotation)) => rotate(state, server_id, kind, *rotation),
            None => Ok(()),
        }
    } else {
        match state.store.get::<Image>(&job.image_id) {
            Ok(Some(img)) if img.status != status::ACTIVE => {
                crate::image::purge_image(state, &img.id)
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e.into()),
        }
    };
    if let Err(e) = result {
        tracing::warn!(server = server_id, image = %job.image_id, error = %e,
            "cleaning up after a snapshot failed");
    }
}

/// Nova's `_rotate_backups`: keeps the newest `rotation` active backups of
/// this type of this server, deletes the rest.
fn rotate(state: &AppState, server_id: &str, kind: &str, rotation: u32) -> Result<(), ApiError> {
    let prop = |i: &Image, k: &str| {
        i.properties
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let mut backups: Vec<Image> = state
        .store
        .list::<Image>(&StoreQuery::all())?
        .into_iter()
        .filter(|i| {
            i.status == status::ACTIVE
                && prop(i, "instance_uuid").as_deref() == Some(server_id)
                && prop(i, "image_type").as_deref() == Some("backup")
                && prop(i, "backup_type").as_deref() == Some(kind)
        })
        .collect();
    backups.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    for old in backups.iter().skip(rotation as usize) {
        tracing::info!(server = server_id, image = %old.id, rotation, "rotating out an old backup");
        crate::image::purge_image(state, &old.id)?;
    }
    Ok(())
}

/// Deletes an image that only ever belonged to one server (its shelved
/// or transfer image) once it has served; best effort.
pub fn drop_image(state: &AppState, server_id: &str, image_id: &str) {
    if let Err(e) = crate::image::purge_image(state, image_id) {
        tracing::warn!(server = server_id, image = image_id, error = %e,
            "could not delete the server's own image");
    }
}

/// A server is going away: a snapshot it had in progress will never be
/// written.
pub fn abandon(state: &AppState, s: &Server) {
    if let Some(job) = &s.snapshot {
        finish(state, &s.id, job, false);
    }
}
