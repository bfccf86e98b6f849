//! Volumes (`/volumes`): create (empty, from an image, a snapshot or
//! another volume), list with Cinder's filters and paging, show, update,
//! delete (with `cascade`), metadata, and the actions `os-extend`,
//! `os-set_bootable`, `os-update_readonly_flag` and, for admins,
//! `os-reset_status` and `os-force_delete`.
//!
//! Create and extend check quota in the same write transaction that
//! records the change; the volume is placed on a storage node there too,
//! and that node's agent makes the file (see `agent.rs`).

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};
use stratus_store::{Query as StoreQuery, Tx};
use stratus_wire::volume::{VolumeSource, VolumeTask};

use super::model::{Snapshot, Volume, VolumeType};
use super::service::{Delta, check_quota, place_on, place_typed, written};
use super::types::{DEFAULT_TYPE, find as find_type};
use super::{Mv, VCtx, blocking, body, not_found, opt_str, param, policy_denied, ts};
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

type P = Path<HashMap<String, String>>;
type J = Result<axum::Json<Value>, ApiError>;

const GIB: u64 = 1 << 30;

/// Disk formats `qemu-img convert` reads into a volume.
const DISK_FORMATS: &[&str] = &["raw", "qcow2", "vmdk", "vdi", "vhd", "vhdx", "iso"];

/// The statuses a volume may be deleted in (Cinder's).
const DELETABLE: &[&str] = &[
    "available",
    "error",
    "error_restoring",
    "error_extending",
    "error_managing",
];

/// The statuses `os-reset_status` takes.
const STATUSES: &[&str] = &[
    "available",
    "error",
    "creating",
    "deleting",
    "in-use",
    "attaching",
    "detaching",
    "error_deleting",
    "maintenance",
    "reserved",
    "extending",
    "error_extending",
];

/// The migration statuses `os-reset_status` takes (Cinder's, with `none`
/// for no migration).
const MIGRATION_STATUSES: &[&str] = &[
    "none",
    "migrating",
    "error",
    "success",
    "completing",
    "starting",
    "deleting",
];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/volumes", get(list).post(create))
        .route("/volumes/detail", get(list_detail))
        .route("/volumes/summary", get(summary))
        .route("/volumes/{id}", get(show).put(update).delete(delete))
        .route(
            "/volumes/{id}/metadata",
            get(meta).post(meta_merge).put(meta_replace),
        )
        .route(
            "/volumes/{id}/metadata/{key}",
            get(meta_key).put(meta_put).delete(meta_delete),
        )
        .route("/volumes/{id}/action", post(action))
}

pub(crate) fn render(
    state: &AppState,
    ctx: &VCtx,
    v: &Volume,
    vtype: Option<&VolumeType>,
    pools: &super::service::Pools,
    mv: Mv,
) -> Value {
    let type_name = vtype.map(|t| t.name.as_str()).unwrap_or_default();
    let base = &state.config.public_url;
    let mut metadata: serde_json::Map<String, Value> = v
        .metadata
        .iter()
        .map(|(k, x)| (k.clone(), json!(x)))
        .collect();
    if let Some(ro) = v.readonly {
        metadata.insert("readonly".into(), json!(if ro { "True" } else { "False" }));
    }
    let (snapshot_id, source_volid) = match &v.source {
        Some(VolumeSource::Snapshot { id }) => (json!(id), Value::Null),
        Some(VolumeSource::Volume { id }) => (Value::Null, json!(id)),
        _ => (Value::Null, Value::Null),
    };
    let mut out = json!({
        "id": v.id,
        "name": v.name,
        "description": v.description,
        "size": v.size,
        "status": v.status,
        "availability_zone": v.availability_zone,
        "created_at": ts(v.created_us),
        "updated_at": ts(v.updated_us),
        "attachments": v.attachments.iter().filter(|a| a.status == "attached" || a.status == "detaching").map(|a| json!({
            "id": v.id,
            "attachment_id": a.id,
            "volume_id": v.id,
            "server_id": a.server_id,
            "host_name": a.host_name,
            "device": a.device,
            "attached_at": ts(a.attached_us),
        })).collect::<Vec<_>>(),
        "bootable": if v.bootable { "true" } else { "false" },
        "encrypted": false,
        "multiattach": vtype.is_some_and(super::attach::type_multiattach),
        "metadata": metadata,
        "replication_status": null,
        "consistencygroup_id": null,
        "snapshot_id": snapshot_id,
        "source_volid": source_volid,
        "user_id": v.user_id,
        "volume_type": type_name,
        "os-vol-tenant-attr:tenant_id": v.project_id,
        "links": [
            {"rel": "self", "href": format!("{base}/volume/v3/{}/volumes/{}", v.project_id, v.id)},
            {"rel": "bookmark", "href": format!("{base}/volume/{}/volumes/{}", v.project_id, v.id)}
        ],
    });
    if !v.image_metadata.is_empty() {
        out["volume_image_metadata"] = json!(v.image_metadata);
    }
    if ctx.is_admin() {
        out["os-vol-host-attr:host"] = json!(v.host.as_deref().map(|h| pools.of(h)));
        out["os-vol-mig-status-attr:migstat"] = json!(v.migration_status);
        out["os-vol-mig-status-attr:name_id"] = Value::Null;
        out["migration_status"] = json!(v.migration_status);
        if mv.at_least(21) {
            out["provider_id"] = Value::Null;
        }
        if mv.at_least(61) {
            // No clustered (active/active) volume services.
            out["cluster_name"] = Value::Null;
        }
    }
    if mv.at_least(48) {
        // Each volume is its own file: no target shared between volumes
        // that a consumer would have to lock.
        out["shared_targets"] = json!(false);
        out["service_uuid"] = json!(v.host.as_deref().map(service_uuid));
    }
    if mv.at_least(63) {
        out["volume_type_id"] = json!(v.volume_type_id);
    }
    if mv.at_least(65) {
        out["consumes_quota"] = json!(true);
    }
    super::group_model::volume_view(&mut out, v, mv);
    out
}

/// The id of storage node `host`'s volume service (`service_uuid`, 3.48):
/// a UUID made from the host's name, so it stays the same across
/// restarts and controllers.
pub(crate) fn service_uuid(host: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("cinder-volume:{host}@file").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    // A name-based UUID's version and variant bits.
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(b).to_string()
}

fn types_by_id(tx: &Tx) -> Result<HashMap<String, VolumeType>, ApiError> {
    Ok(tx
        .list::<VolumeType>(&StoreQuery::all())?
        .into_iter()
        .map(|t| (t.id.clone(), t))
        .collect())
}

/// A volume the caller may see, or Cinder's 404.
pub(crate) fn find(tx: &Tx, ctx: &VCtx, id: &str) -> Result<Volume, ApiError> {
    tx.get::<Volume>(id)?
        .filter(|v| ctx.owns(&v.project_id))
        .ok_or_else(|| not_found("Volume", id))
}

fn one(state: &AppState, ctx: &VCtx, tx: &Tx, v: &Volume, mv: Mv) -> Result<Value, ApiError> {
    let t = tx.get::<VolumeType>(&v.volume_type_id)?;
    let pools = super::service::Pools::load(state)?;
    Ok(json!({"volume": render(state, ctx, v, t.as_ref(), &pools, mv)}))
}

/// Cinder's answer to a create or an update: the volume without the
/// extensions' attributes (host, project, migration, image metadata).
fn changed(state: &AppState, ctx: &VCtx, tx: &Tx, v: &Volume, mv: Mv) -> Result<Value, ApiError> {
    let mut out = one(state, ctx, tx, v, mv)?;
    if let Some(o) = out["volume"].as_object_mut() {
        o.retain(|k, _| !k.starts_with("os-vol-") && k != "volume_image_metadata");
    }
    Ok(out)
}

async fn list(s: State<AppState>, ctx: VCtx, mv: Mv, q: Query<HashMap<String, String>>) -> J {
    listing(s, ctx, mv, q, false).await
}

async fn list_detail(
    s: State<AppState>,
    ctx: VCtx,
    mv: Mv,
    q: Query<HashMap<String, String>>,
) -> J {
    listing(s, ctx, mv, q, true).await
}

async fn listing(
    State(state): State<AppState>,
    ctx: VCtx,
    mv: Mv,
    Query(q): Query<HashMap<String, String>>,
    detail: bool,
) -> J {
    super::filters::reject_invalid(ctx.is_admin(), mv, &q, "volume", &[])?;
    let paging = super::paging(&q)?;
    let all = super::all_projects(&ctx, &q);
    let own = ctx.project()?.to_string();
    let meta_filter: Option<HashMap<String, String>> = match q.get("metadata") {
        None => None,
        Some(m) => Some(parse_meta_filter(m)?),
    };
    // 3.4: volumes made from images with this metadata.
    let glance_filter: Option<HashMap<String, String>> = match q.get("glance_metadata") {
        Some(m) if mv.at_least(4) => Some(parse_meta_filter(m)?),
        _ => None,
    };
    // 3.60: created_at / updated_at compared with an operator.
    let times = if mv.at_least(60) {
        super::filters::time_filters(&q)?
    } else {
        Vec::new()
    };
    let with_count = mv.at_least(45)
        && q.get("with_count")
            .is_some_and(|c| super::parse_bool(&json!(c)).unwrap_or(false));
    blocking(move || {
        let query = if all {
            StoreQuery::all()
        } else {
            StoreQuery::owner(&own)
        };
        let vols = state.store.list::<Volume>(&query)?;
        let types = state.store.write(types_by_id)?;
        let pools = super::service::Pools::load(&state)?;
        let project_filter = if all { q.get("project_id") } else { None };
        let mut items = Vec::new();
        for v in vols {
            let vtype = types.get(&v.volume_type_id);
            let tname = vtype.map(|t| t.name.as_str()).unwrap_or_default();
            if !super::filters::text_matches(&q, "name", v.name.as_deref(), mv)
                || !super::filters::text_matches(&q, "description", v.description.as_deref(), mv)
                || !super::filters::text_matches_ci(&q, "status", &v.status, mv)
                || q.get("availability_zone")
                    .is_some_and(|z| *z != v.availability_zone)
                || (mv.at_least(10)
                    && q.get("group_id")
                        .is_some_and(|g| v.group_id.as_deref() != Some(g.as_str())))
                || project_filter.is_some_and(|p| *p != v.project_id)
                || q.get("bootable")
                    .is_some_and(|b| super::parse_bool(&json!(b)).is_some_and(|b| b != v.bootable))
                || q.get("size")
                    .is_some_and(|s| s.parse::<u64>().ok() != Some(v.size))
                || q.get("migration_status")
                    .is_some_and(|m| v.migration_status.as_deref() != Some(m.as_str()))
                || q.get("volume_type")
                    .is_some_and(|t| *t != tname && *t != v.volume_type_id)
                || meta_filter
                    .as_ref()
                    .is_some_and(|m| m.iter().any(|(k, x)| v.metadata.get(k) != Some(x)))
                || glance_filter
                    .as_ref()
                    .is_some_and(|m| m.iter().any(|(k, x)| v.image_metadata.get(k) != Some(x)))
                || !times.iter().all(|t| t.holds(v.created_us, v.updated_us))
            {
                continue;
            }
            items.push(render(&state, &ctx, &v, vtype, &pools, mv));
        }
        let count = items.len();
        let items = super::page(items, &paging)?;
        let path = if detail { "volumes/detail" } else { "volumes" };
        let links = super::next_links(&state, &own, path, &items, &paging);
        let items: Vec<Value> = if detail {
            items
        } else {
            items
                .into_iter()
                .map(|v| json!({"id": v["id"], "name": v["name"], "links": v["links"]}))
                .collect()
        };
        let mut out = json!({"volumes": items});
        if let Some(l) = links {
            out["volumes_links"] = l;
        }
        if with_count {
            out["count"] = json!(count);
        }
        Ok(axum::Json(out))
    })
    .await
}

/// `GET /volumes/summary` (3.12; `metadata` 3.36): how many volumes, how
/// many GiB, and the metadata values in use.
async fn summary(
    State(state): State<AppState>,
    ctx: VCtx,
    mv: Mv,
    Query(q): Query<HashMap<String, String>>,
) -> J {
    mv.require(12)?;
    let all = super::all_projects(&ctx, &q);
    let own = ctx.project()?.to_string();
    blocking(move || {
        let query = if all {
            StoreQuery::all()
        } else {
            StoreQuery::owner(&own)
        };
        let vols = state.store.list::<Volume>(&query)?;
        let mut meta: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for v in &vols {
            for (k, x) in &v.metadata {
                let values = meta.entry(k.clone()).or_default();
                if !values.contains(x) {
                    values.push(x.clone());
                }
            }
        }
        let mut out = json!({
            "total_count": vols.len(),
            "total_size": vols.iter().map(|v| v.size).sum::<u64>(),
        });
        if mv.at_least(36) {
            out["metadata"] = json!(meta);
        }
        Ok(axum::Json(json!({"volume-summary": out})))
    })
    .await
}

/// The `metadata` list filter: a dict written as Python or JSON.
fn parse_meta_filter(m: &str) -> Result<HashMap<String, String>, ApiError> {
    let fixed = m.replace('\'', "\"");
    let v: Value = serde_json::from_str(&fixed)
        .map_err(|_| ApiError::bad_request(format!("Invalid metadata filter: {m}")))?;
    Ok(super::metadata(&v)?.into_iter().collect())
}

async fn show(State(state): State<AppState>, ctx: VCtx, mv: Mv, Path(p): P) -> J {
    blocking(move || {
        let out = state.store.write(|tx| {
            let v = find(tx, &ctx, &param(&p, "id"))?;
            one(&state, &ctx, tx, &v, mv)
        })?;
        Ok(axum::Json(out))
    })
    .await
}

/// What a create request asks for, validated.
#[derive(Debug, Clone, Default)]
pub(crate) struct NewVolume {
    pub size: Option<u64>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub zone: Option<String>,
    pub volume_type: Option<String>,
    pub metadata: std::collections::BTreeMap<String, String>,
    pub image: Option<String>,
    pub snapshot: Option<String>,
    pub source_volume: Option<String>,
    /// The storage node to put it on (Nova's boot volumes go where the
    /// server will run); `None` lets the capacity filter choose.
    pub host: Option<String>,
    /// The generic volume group it goes into (`groups.rs`).
    pub group_id: Option<String>,
}

/// Where a volume's data comes from, the smallest size that holds it and
/// the image metadata it keeps ([`image_source`]).
pub(crate) type ImageSource = (
    VolumeSource,
    u64,
    std::collections::BTreeMap<String, String>,
);

fn parse_create(b: &Value) -> Result<NewVolume, ApiError> {
    let v = b.get("volume").filter(|v| v.is_object()).ok_or_else(|| {
        ApiError::bad_request("Missing required element 'volume' in request body.")
    })?;
    let size = match v.get("size") {
        None | Some(Value::Null) => None,
        Some(s) => {
            let n = s
                .as_u64()
                .or_else(|| s.as_str().and_then(|x| x.trim().parse().ok()))
                .filter(|n| *n >= 1 && *n <= i32::MAX as u64)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "Invalid input received: Volume size '{s}' must be an integer and greater than 0."
                    ))
                })?;
            Some(n)
        }
    };
    let image = opt_str(v, "imageRef", 255)?.or(opt_str(v, "image_id", 255)?);
    let snapshot = opt_str(v, "snapshot_id", 255)?;
    let source_volume = opt_str(v, "source_volid", 255)?;
    if [&image, &snapshot, &source_volume]
        .iter()
        .filter(|x| x.is_some())
        .count()
        > 1
    {
        return Err(ApiError::bad_request(
            "Invalid input received: only one of imageRef, snapshot_id and source_volid may be given.",
        ));
    }
    if size.is_none() && image.is_none() && snapshot.is_none() && source_volume.is_none() {
        return Err(ApiError::bad_request(
            "Invalid input received: Volume size '' must be an integer and greater than 0.",
        ));
    }
    Ok(NewVolume {
        size,
        name: opt_str(v, "name", 255)?.or(opt_str(v, "display_name", 255)?),
        description: opt_str(v, "description", 255)?.or(opt_str(v, "display_description", 255)?),
        zone: opt_str(v, "availability_zone", 255)?,
        volume_type: opt_str(v, "volume_type", 255)?,
        metadata: match v.get("metadata") {
            None | Some(Value::Null) => Default::default(),
            Some(m) => super::metadata(m)?,
        },
        image,
        snapshot,
        source_volume,
        host: None,
        group_id: opt_str(v, "group_id", 255)?,
    })
}

/// The root disk's snapshot of an image Nova made from a volume-backed
/// server (its `block_device_mapping` property), when `id` is one.
fn nova_snapshot_of(state: &AppState, ctx: &VCtx, id: &str) -> Result<Option<String>, ApiError> {
    let Some(img) = state
        .store
        .get::<crate::image::model::Image>(id)?
        .filter(|i| crate::image::visible(state, ctx, i).unwrap_or(false))
    else {
        return Ok(None);
    };
    let list: Vec<Value> = match img.properties.get("block_device_mapping") {
        Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_default(),
        Some(Value::Array(a)) => a.clone(),
        _ => return Ok(None),
    };
    let snapshot = |e: &Value| {
        (e.get("source_type").and_then(Value::as_str) == Some("snapshot"))
            .then(|| {
                e.get("snapshot_id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .flatten()
    };
    Ok(list
        .iter()
        .find(|e| e.get("boot_index").and_then(Value::as_i64) == Some(0))
        .and_then(snapshot))
}

/// The image to make a volume from: visible to the caller, active, and a
/// disk image; with the smallest size (GiB) that holds it and the image
/// metadata the volume keeps.
pub(crate) fn image_source(
    state: &AppState,
    ctx: &VCtx,
    id: &str,
) -> Result<ImageSource, ApiError> {
    let img = state
        .store
        .get::<crate::image::model::Image>(id)?
        .filter(|i| crate::image::visible(state, ctx, i).unwrap_or(false))
        .ok_or_else(|| not_found("Image", id))?;
    if img.status != "active" {
        return Err(ApiError::bad_request(format!(
            "Invalid image identifier or unable to access requested image: image {id} is {}, not active.",
            img.status
        )));
    }
    let fmt = img.disk_format.clone().unwrap_or_default();
    // As Cinder: the disk format decides (the data is copied or
    // converted as that format); the container format is not looked at.
    if !DISK_FORMATS.contains(&fmt.as_str()) {
        return Err(ApiError::bad_request(format!(
            "Image {id} is not a disk image (disk_format {fmt:?}, container_format {:?}): a volume can only be made from {}.",
            img.container_format.as_deref().unwrap_or(""),
            DISK_FORMATS.join(", ")
        )));
    }
    let bytes = img.virtual_size.or(img.size).unwrap_or(0);
    let min = bytes.div_ceil(GIB).max(img.min_disk).max(1);
    let meta = super::service::image_meta(&img);
    Ok((
        VolumeSource::Image {
            id: img.id.clone(),
            sha512: img.os_hash_value.clone(),
            disk_format: fmt,
        },
        min,
        meta,
    ))
}

async fn create(
    State(state): State<AppState>,
    ctx: VCtx,
    mv: Mv,
    raw: Bytes,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let project = ctx.project()?.to_string();
    let mut raw_body = body(&raw)?;
    // 3.47: from a backup (backups.rs; restored after the insert below).
    let backup = super::backup_model::backup_of_create(&state, &ctx, mv, &mut raw_body)?;
    let mut req = parse_create(&raw_body)?;
    if !mv.at_least(super::group_model::MV_GROUPS) {
        req.group_id = None;
    }
    blocking(move || {
        // 3.46: an image Nova made by snapshotting a volume-backed server
        // holds no data; the volume is made from the root disk's snapshot
        // it names.
        if mv.at_least(46)
            && let Some(i) = req.image.clone()
            && let Some(snap) = nova_snapshot_of(&state, &ctx, &i)?
        {
            req.image = None;
            req.snapshot = Some(snap);
        }
        let image = match &req.image {
            Some(i) => Some(image_source(&state, &ctx, i)?),
            None => None,
        };
        let (out, rev) = state.store.write(|tx| {
            let mut req = req.clone();
            if let Some(g) = &req.group_id {
                let zone =
                    super::group_model::check_new_volume(tx, &ctx, g, req.volume_type.as_deref())?;
                req.zone.get_or_insert(zone);
            }
            let (v, rev) = create_in(&state, tx, &ctx, &project, &req, image.as_ref())?;
            let (v, rev) = match &backup {
                Some(id) => super::backup_model::restore_into_new(tx, &ctx, id, &v.id)?,
                None => (v, rev),
            };
            Ok::<_, ApiError>((changed(&state, &ctx, tx, &v, mv)?, rev))
        })?;
        written(&state, rev);
        Ok((StatusCode::ACCEPTED, axum::Json(out)))
    })
    .await
}

/// Records a new volume in `tx` (quota checked, storage node chosen) and
/// returns it with the revision it was written at; the caller wakes the
/// storage nodes once the transaction is committed ([`written`]).
pub(crate) fn create_in(
    state: &AppState,
    tx: &Tx,
    ctx: &VCtx,
    project: &str,
    req: &NewVolume,
    image: Option<&ImageSource>,
) -> Result<(Volume, i64), ApiError> {
    let vtype = match &req.volume_type {
        Some(t) => find_type(tx, ctx, t)?,
        // The project's default type (3.62, set by an admin), else the
        // deployment's; at every microversion, as Cinder.
        None => match super::default_types::default_type_for(tx, project)?
            .map(|id| tx.get::<VolumeType>(&id))
            .transpose()?
            .flatten()
        {
            Some(t) => t,
            None => find_type(tx, ctx, DEFAULT_TYPE)?,
        },
    };
    super::encryption::refuse_encrypted(&vtype)?;
    // Where the data comes from, the smallest size that holds it,
    // and (for copies) the node that has it.
    let (source, min, host, zone, image_meta, bootable) = if let Some((src, min, meta)) = &image {
        (Some(src.clone()), *min, None, None, meta.clone(), true)
    } else if let Some(sid) = &req.snapshot {
        let s = tx
            .get::<Snapshot>(sid)?
            .filter(|s| ctx.owns(&s.project_id))
            .ok_or_else(|| not_found("Snapshot", sid))?;
        if s.status != "available" {
            return Err(ApiError::bad_request(format!(
                "Invalid snapshot: Originating snapshot status must be one of 'available' values (it is {}).",
                s.status
            )));
        }
        let parent = tx.get::<Volume>(&s.volume_id)?;
        (
            Some(VolumeSource::Snapshot { id: s.id.clone() }),
            s.size,
            s.host.clone(),
            parent.as_ref().map(|p| p.availability_zone.clone()),
            parent.map(|p| p.image_metadata).unwrap_or_default(),
            false,
        )
    } else if let Some(vid) = &req.source_volume {
        let src = find(tx, ctx, vid)?;
        if src.status != "available" && src.status != "in-use" {
            return Err(ApiError::bad_request(format!(
                "Invalid volume: Volume {vid} status must be available or in-use to be cloned (it is {}).",
                src.status
            )));
        }
        (
            Some(VolumeSource::Volume { id: src.id.clone() }),
            src.size,
            src.host.clone(),
            Some(src.availability_zone.clone()),
            src.image_metadata.clone(),
            src.bootable,
        )
    } else {
        (None, 1, None, None, Default::default(), false)
    };
    let size = req.size.unwrap_or(min);
    if size < min {
        let what = match &source {
            Some(VolumeSource::Image { .. }) => "Image virtual size",
            Some(VolumeSource::Snapshot { .. }) => "Snapshot size",
            _ => "Source volume size",
        };
        return Err(ApiError::bad_request(format!(
            "Invalid input received: {what} is {min}GB and doesn't fit in a volume of size {size}GB."
        )));
    }
    if let (Some(asked), Some(z)) = (&req.zone, &zone)
        && asked != z
    {
        return Err(ApiError::bad_request(format!(
            "Invalid input received: the source is in availability zone {z}, not {asked}."
        )));
    }
    let zone_asked = req.zone.clone().or(zone);
    // `RESKEY:availability_zones` (3.52): the zones a type's volumes may
    // be in.
    let type_zones: Option<Vec<String>> =
        vtype.extra_specs.get("RESKEY:availability_zones").map(|l| {
            l.split(',')
                .map(|z| z.trim().to_string())
                .filter(|z| !z.is_empty())
                .collect()
        });
    if let (Some(z), Some(zones)) = (&zone_asked, &type_zones)
        && !zones.contains(z)
    {
        return Err(ApiError::bad_request(format!(
            "Invalid input received: Availability zone '{z}' is not among the volume type's availability zones ({}).",
            zones.join(", ")
        )));
    }
    if let Some(z) = &zone_asked
        && !crate::compute::zones::zone_exists(state, z)?
    {
        return Err(ApiError::bad_request(format!(
            "Invalid input received: Availability zone '{z}' is invalid."
        )));
    }
    check_quota(
        tx,
        project,
        &Delta {
            volumes: 1,
            gigabytes: size as i64,
            snapshots: 0,
            type_name: Some(&vtype.name),
        },
        size,
    )?;
    let placed = match (host, &req.host) {
        (Some(h), Some(want)) if &h != want => {
            return Err(ApiError::bad_request(format!(
                "Invalid input received: the source is on storage node {h}, not {want}."
            )));
        }
        (Some(h), _) => Some((h, zone_asked.clone().unwrap_or_else(|| "nova".into()))),
        (None, Some(want)) => place_on(
            state,
            tx,
            want,
            zone_asked.as_deref(),
            size,
            &vtype.extra_specs,
        )?,
        (None, None) => match (&zone_asked, &type_zones) {
            // The type's zones (3.52), in the order it lists them.
            (None, Some(zones)) => {
                let mut found = None;
                for z in zones {
                    found = place_typed(state, tx, Some(z), size, &vtype.extra_specs)?;
                    if found.is_some() {
                        break;
                    }
                }
                found
            }
            _ => place_typed(state, tx, zone_asked.as_deref(), size, &vtype.extra_specs)?,
        },
    };
    let now = now_us();
    let mut v = Volume {
        id: uuid::Uuid::new_v4().to_string(),
        project_id: project.to_string(),
        user_id: ctx.user_id().to_string(),
        name: req.name.clone(),
        description: req.description.clone(),
        size,
        extend_to: None,
        status: "creating".into(),
        availability_zone: zone_asked
            .clone()
            .unwrap_or_else(|| crate::compute::zones::DEFAULT_ZONE.into()),
        host: None,
        volume_type_id: vtype.id.clone(),
        bootable,
        readonly: None,
        metadata: req.metadata.clone(),
        image_metadata: image_meta,
        source,
        task: None,
        rewrite_from: None,
        generation: 1,
        fault: None,
        attachments: Vec::new(),
        group_id: req.group_id.clone(),
        migration_status: None,
        created_us: now,
        updated_us: now,
    };
    match placed {
        Some((h, z)) => {
            v.host = Some(h);
            v.availability_zone = z;
            v.task = Some(VolumeTask::Create);
        }
        None => {
            // Cinder's scheduler: the volume exists, in error.
            tracing::warn!(volume = %v.id, size, "no storage node can take the volume");
            v.status = "error".into();
            v.fault = Some("No valid backend was found.".into());
            super::messages::record_tx(
                tx,
                &v.project_id,
                "VOLUME",
                &v.id,
                super::messages::Event::ScheduleAllocate,
                None,
            )?;
        }
    }
    let rev = tx.insert(&v)?;
    Ok((v, rev))
}

async fn update(State(state): State<AppState>, ctx: VCtx, mv: Mv, Path(p): P, raw: Bytes) -> J {
    let b = body(&raw)?;
    let u = b
        .get("volume")
        .filter(|v| v.is_object())
        .cloned()
        .ok_or_else(|| {
            ApiError::bad_request("Missing required element 'volume' in request body.")
        })?;
    let name = opt_str(&u, "name", 255)?.or(opt_str(&u, "display_name", 255)?);
    let description = opt_str(&u, "description", 255)?.or(opt_str(&u, "display_description", 255)?);
    let metadata = match u.get("metadata") {
        None | Some(Value::Null) => None,
        Some(m) => Some(super::metadata(m)?),
    };
    blocking(move || {
        let out = state.store.write(|tx| {
            let mut v = find(tx, &ctx, &param(&p, "id"))?;
            if u.get("name").is_some() || u.get("display_name").is_some() {
                v.name = name;
            }
            if u.get("description").is_some() || u.get("display_description").is_some() {
                v.description = description;
            }
            if let Some(m) = metadata {
                v.metadata = m;
            }
            v.updated_us = now_us();
            tx.update(&v)?;
            changed(&state, &ctx, tx, &v, mv)
        })?;
        Ok(axum::Json(out))
    })
    .await
}

/// Asks the node to remove a volume (and, with `cascade`, its snapshots);
/// a volume on no node goes at once.
pub(crate) fn start_delete(tx: &Tx, v: &mut Volume, cascade: bool) -> Result<i64, ApiError> {
    let snaps: Vec<Snapshot> = tx
        .list::<Snapshot>(&StoreQuery::owner(&v.project_id))?
        .into_iter()
        .filter(|s| s.volume_id == v.id)
        .collect();
    if !snaps.is_empty() && !cascade {
        return Err(ApiError::bad_request(format!(
            "Invalid volume: Volume {} still has {} dependent snapshots.",
            v.id,
            snaps.len()
        )));
    }
    for mut s in snaps {
        if s.status != "available" && s.status != "error" && s.status != "error_deleting" {
            return Err(ApiError::bad_request(format!(
                "Invalid volume: Snapshot {} is {}, it cannot be deleted with its volume.",
                s.id, s.status
            )));
        }
        if s.host.is_none() {
            tx.delete::<Snapshot>(&s.id)?;
            continue;
        }
        s.status = "deleting".into();
        s.task = Some(VolumeTask::DeleteSnapshot);
        s.generation += 1;
        s.updated_us = now_us();
        tx.update(&s)?;
    }
    if v.host.is_none() {
        tx.delete::<Volume>(&v.id)?;
        return Ok(tx.last_revision()?);
    }
    v.status = "deleting".into();
    v.task = Some(VolumeTask::Delete);
    v.extend_to = None;
    v.generation += 1;
    v.updated_us = now_us();
    Ok(tx.update(v)?)
}

async fn delete(
    State(state): State<AppState>,
    ctx: VCtx,
    mv: Mv,
    Path(p): P,
    Query(q): Query<HashMap<String, String>>,
) -> Result<StatusCode, ApiError> {
    let flag = |k: &str| {
        q.get(k)
            .is_some_and(|c| super::parse_bool(&json!(c)).unwrap_or(false))
    };
    let cascade = flag("cascade");
    // 3.23: an admin may delete a volume in any status but attached.
    let force = mv.at_least(23) && flag("force");
    if force && !ctx.is_admin() {
        return Err(policy_denied("volume:force_delete"));
    }
    blocking(move || {
        let rev = state.store.write(|tx| {
            let mut v = find(tx, &ctx, &param(&p, "id"))?;
            if force {
                if !v.attachments.is_empty() {
                    return Err(ApiError::bad_request("Invalid volume: Volume is attached."));
                }
                rewriting(&v)?;
                super::group_model::check_volume_delete(&v)?;
                return start_delete(tx, &mut v, cascade);
            }
            if !DELETABLE.contains(&v.status.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "Invalid volume: Volume status must be available or error or error_restoring or error_extending or error_managing and must not be migrating, attached, belong to a group, have snapshots or be disassociated from snapshots after volume transfer (it is {}).",
                    v.status
                )));
            }
            super::group_model::check_volume_delete(&v)?;
            start_delete(tx, &mut v, cascade)
        })?;
        written(&state, rev);
        Ok(StatusCode::ACCEPTED)
    })
    .await
}

/// A 400 while the node rewrites the volume's file (revert, reimage): a
/// delete racing the rename could leave the file behind.
fn rewriting(v: &Volume) -> Result<(), ApiError> {
    if v.task == Some(VolumeTask::Rewrite) {
        return Err(ApiError::bad_request(format!(
            "Invalid volume: volume {} is {}: its storage node is rewriting it; reset its status first to give that up.",
            v.id, v.status
        )));
    }
    Ok(())
}

/// Reverts `v` to snapshot `sid` (3.40): the volume's latest snapshot,
/// available, of the volume's size; the node writes the snapshot's data
/// over the volume's.
fn revert(tx: &Tx, ctx: &VCtx, v: &mut Volume, sid: &str) -> Result<(), ApiError> {
    let snap = tx
        .get::<Snapshot>(sid)?
        .filter(|s| ctx.owns(&s.project_id))
        .ok_or_else(|| not_found("Snapshot", sid))?;
    if snap.volume_id != v.id {
        return Err(ApiError::bad_request(format!(
            "Invalid snapshot: snapshot {sid} is not of volume {}.",
            v.id
        )));
    }
    if v.status != "available" {
        return Err(ApiError::bad_request(format!(
            "Invalid volume: Volume status must be available to revert (it is {}).",
            v.status
        )));
    }
    if snap.status != "available" {
        return Err(ApiError::bad_request(format!(
            "Invalid snapshot: Snapshot status must be available to revert (it is {}).",
            snap.status
        )));
    }
    let latest = tx
        .list::<Snapshot>(&StoreQuery::owner(&v.project_id))?
        .into_iter()
        .filter(|s| s.volume_id == v.id)
        .max_by_key(|s| (s.created_us, s.id.clone()));
    if latest.as_ref().map(|s| s.id.as_str()) != Some(sid) {
        return Err(ApiError::bad_request(format!(
            "Invalid volume: volume {} can only be reverted to its latest snapshot.",
            v.id
        )));
    }
    if snap.size != v.size {
        return Err(ApiError::bad_request(format!(
            "Invalid volume: volume {} is {} GiB and the snapshot {} GiB; it can only be reverted to a snapshot of its size.",
            v.id, v.size, snap.size
        )));
    }
    // The snapshot is read until the node is done: not deletable.
    let mut snap = snap;
    snap.status = "restoring".into();
    snap.updated_us = now_us();
    tx.update(&snap)?;
    v.rewrite_from = Some(VolumeSource::Snapshot { id: snap.id });
    v.status = "reverting".into();
    v.task = Some(VolumeTask::Rewrite);
    v.generation += 1;
    Ok(())
}

// ---- metadata --------------------------------------------------------------

fn change_meta(
    state: &AppState,
    ctx: &VCtx,
    id: &str,
    f: impl FnOnce(&mut Volume) -> Result<(), ApiError>,
) -> Result<Volume, ApiError> {
    state.store.write(|tx| {
        let mut v = find(tx, ctx, id)?;
        f(&mut v)?;
        v.updated_us = now_us();
        tx.update(&v)?;
        Ok(v)
    })
}

fn meta_body(
    raw: &[u8],
    key: &str,
) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
    let b = body(raw)?;
    let m = b.get(key).ok_or_else(|| {
        ApiError::bad_request(format!("Malformed request body: missing '{key}'."))
    })?;
    super::metadata(m)
}

async fn meta(State(state): State<AppState>, ctx: VCtx, Path(p): P) -> J {
    blocking(move || {
        let v = state.store.write(|tx| find(tx, &ctx, &param(&p, "id")))?;
        Ok(axum::Json(json!({"metadata": v.metadata})))
    })
    .await
}

async fn meta_merge(State(state): State<AppState>, ctx: VCtx, Path(p): P, raw: Bytes) -> J {
    let m = meta_body(&raw, "metadata")?;
    blocking(move || {
        let v = change_meta(&state, &ctx, &param(&p, "id"), |v| {
            v.metadata.extend(m);
            Ok(())
        })?;
        Ok(axum::Json(json!({"metadata": v.metadata})))
    })
    .await
}

async fn meta_replace(State(state): State<AppState>, ctx: VCtx, Path(p): P, raw: Bytes) -> J {
    let m = meta_body(&raw, "metadata")?;
    blocking(move || {
        let v = change_meta(&state, &ctx, &param(&p, "id"), |v| {
            v.metadata = m;
            Ok(())
        })?;
        Ok(axum::Json(json!({"metadata": v.metadata})))
    })
    .await
}

async fn meta_key(State(state): State<AppState>, ctx: VCtx, Path(p): P) -> J {
    blocking(move || {
        let v = state.store.write(|tx| find(tx, &ctx, &param(&p, "id")))?;
        let key = param(&p, "key");
        let val = v
            .metadata
            .get(&key)
            .ok_or_else(|| not_found(&format!("Volume {} has no metadata with key", v.id), &key))?;
        Ok(axum::Json(json!({"meta": {key: val}})))
    })
    .await
}

async fn meta_put(State(state): State<AppState>, ctx: VCtx, Path(p): P, raw: Bytes) -> J {
    let m = meta_body(&raw, "meta")?;
    let key = param(&p, "key");
    if m.len() != 1 || !m.contains_key(&key) {
        return Err(ApiError::bad_request("Request body and URI mismatch"));
    }
    blocking(move || {
        let mm = m.clone();
        change_meta(&state, &ctx, &param(&p, "id"), |v| {
            v.metadata.extend(mm);
            Ok(())
        })?;
        Ok(axum::Json(json!({"meta": m})))
    })
    .await
}

async fn meta_delete(
    State(state): State<AppState>,
    ctx: VCtx,
    Path(p): P,
) -> Result<StatusCode, ApiError> {
    blocking(move || {
        let key = param(&p, "key");
        change_meta(&state, &ctx, &param(&p, "id"), |v| {
            v.metadata.remove(&key).map(|_| ()).ok_or_else(|| {
                not_found(&format!("Volume {} has no metadata with key", v.id), &key)
            })
        })?;
        Ok(StatusCode::OK)
    })
    .await
}

// ---- actions ---------------------------------------------------------------

async fn action(
    State(state): State<AppState>,
    ctx: VCtx,
    mv: Mv,
    Path(p): P,
    raw: Bytes,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let b = body(&raw)?;
    let Some((name, arg)) = b
        .as_object()
        .and_then(|o| o.iter().next())
        .map(|(k, v)| (k.clone(), v.clone()))
    else {
        return Err(ApiError::bad_request("Malformed request body: no action."));
    };
    let id = param(&p, "id");
    blocking(move || {
        // Cinder answers most actions 202 without a body; some 200, some
        // with one.
        let mut status = StatusCode::ACCEPTED;
        let mut answer: Option<Value> = None;
        let rev = state.store.write(|tx| {
            status = StatusCode::ACCEPTED;
            answer = None;
            let mut v = find(tx, &ctx, &id)?;
            let now = now_us();
            match name.as_str() {
                "os-extend" => {
                    let new = arg
                        .get("new_size")
                        .and_then(|s| s.as_u64().or_else(|| s.as_str().and_then(|x| x.parse().ok())))
                        .filter(|n| *n <= i32::MAX as u64)
                        .ok_or_else(|| ApiError::bad_request("Invalid input received: new_size must be an integer."))?;
                    // 3.42: a volume in use grows too, where its
                    // server's QEMU can grow it.
                    let in_use = v.status == "in-use" && mv.at_least(42);
                    if in_use {
                        crate::compute::volume_attachments::may_grow_in_use(tx, &v)?;
                    } else if v.status != "available" {
                        return Err(ApiError::bad_request(format!(
                            "Invalid volume: Volume status must be 'available' to extend (it is {}).",
                            v.status
                        )));
                    }
                    if new <= v.size {
                        return Err(ApiError::bad_request(format!(
                            "Invalid input received: New size for extend must be greater than current size. (current: {}, extended: {new}).",
                            v.size
                        )));
                    }
                    let tname = tx.get::<VolumeType>(&v.volume_type_id)?.map(|t| t.name);
                    check_quota(
                        tx,
                        &v.project_id,
                        &Delta { volumes: 0, snapshots: 0, gigabytes: (new - v.size) as i64, type_name: tname.as_deref() },
                        new,
                    )?;
                    let lim = super::service::limits(tx, Some(&v.project_id))?;
                    let per = lim.get("per_volume_gigabytes").copied().unwrap_or(-1);
                    if per >= 0 && new as i64 > per {
                        return Err(super::over_limit(format!(
                            "VolumeSizeExceedsLimit: Requested volume size {new}G is larger than maximum allowed limit {per}G."
                        )));
                    }
                    v.status = "extending".into();
                    v.extend_to = Some(new);
                    v.task = Some(VolumeTask::Extend);
                    v.generation += 1;
                }
                "os-set_bootable" => {
                    let flag = arg.get("bootable").and_then(super::parse_bool).ok_or_else(|| {
                        ApiError::bad_request("Invalid input received: bootable must be a boolean.")
                    })?;
                    v.bootable = flag;
                    status = StatusCode::OK;
                }
                "os-set_image_metadata" => {
                    let m = arg.get("metadata").ok_or_else(|| {
                        ApiError::bad_request("Malformed request body: metadata is required.")
                    })?;
                    for (k, x) in super::metadata(m)? {
                        v.image_metadata.insert(k, x);
                    }
                    status = StatusCode::OK;
                    answer = Some(json!({"metadata": v.image_metadata}));
                }
                "os-unset_image_metadata" => {
                    let key = arg.get("key").and_then(Value::as_str).ok_or_else(|| {
                        ApiError::bad_request("Malformed request body: key is required.")
                    })?;
                    if v.image_metadata.remove(key).is_none() {
                        return Err(not_found("Volume image metadata key", key));
                    }
                    status = StatusCode::OK;
                }
                "os-show_image_metadata" => {
                    status = StatusCode::OK;
                    answer = Some(json!({"metadata": v.image_metadata}));
                    return Ok(0);
                }
                "os-retype" => {
                    let want = arg.get("new_type").and_then(Value::as_str).ok_or_else(|| {
                        ApiError::bad_request("Invalid input received: new_type is required.")
                    })?;
                    if !matches!(v.status.as_str(), "available" | "in-use") {
                        return Err(ApiError::bad_request(format!(
                            "Invalid volume: Volume status must be available or in-use to retype (it is {}).",
                            v.status
                        )));
                    }
                    let to = find_type(tx, &ctx, want)?;
                    super::encryption::refuse_encrypted(&to)?;
                    if to.id == v.volume_type_id {
                        return Err(ApiError::bad_request(
                            "Invalid input received: Retype requires a different volume type.",
                        ));
                    }
                    let on_demand = match arg.get("migration_policy") {
                        None | Some(Value::Null) => false,
                        Some(Value::String(p)) if p == "never" => false,
                        Some(Value::String(p)) if p == "on-demand" => true,
                        Some(p) => {
                            return Err(ApiError::bad_request(format!(
                                "Invalid input received: migration_policy must be 'never' or 'on-demand' (it is {p})."
                            )));
                        }
                    };
                    // The new type's quota takes the volume.
                    let lim = super::service::limits(tx, Some(&v.project_id))?;
                    let used = super::service::usage(tx, &v.project_id)?;
                    for (k, add) in [("volumes", 1), ("gigabytes", v.size as i64)] {
                        let key = format!("{k}_{}", to.name);
                        let limit = lim.get(&key).copied().unwrap_or(-1);
                        let in_use = used.get(&key).copied().unwrap_or(0);
                        if limit >= 0 && in_use + add > limit {
                            return Err(super::over_limit(format!(
                                "Quota exceeded for {key}: requested {add}, {in_use} of {limit} in use."
                            )));
                        }
                    }
                    // A node that offers the new type keeps the volume
                    // (only the record changes); otherwise the volume
                    // moves to one that does, when the caller allows it,
                    // and takes the type once it is there.
                    if !super::migrate::retype(&state, tx, &mut v, &to, on_demand)? {
                        v.volume_type_id = to.id;
                    }
                }
                "os-migrate_volume" => {
                    if !ctx.is_admin() {
                        return Err(policy_denied("volume_extension:volume_admin_actions:migrate_volume"));
                    }
                    super::migrate::migrate(&state, tx, &mut v, &arg)?;
                }
                "os-force_detach" => {
                    if !ctx.is_admin() {
                        return Err(policy_denied("volume_extension:volume_admin_actions:force_detach"));
                    }
                    let which = arg.get("attachment_id").and_then(Value::as_str).map(str::to_string);
                    match which {
                        Some(a) => v.attachments.retain(|x| x.id != a),
                        None => v.attachments.clear(),
                    }
                    v.status = super::attach::status_of(&v).into();
                }
                "os-update_readonly_flag" => {
                    let flag = arg.get("readonly").and_then(super::parse_bool).ok_or_else(|| {
                        ApiError::bad_request("Invalid input received: readonly must be a boolean.")
                    })?;
                    if v.status != "available" {
                        return Err(ApiError::bad_request(format!(
                            "Invalid volume: Volume status must be available to update readonly flag (it is {}).",
                            v.status
                        )));
                    }
                    v.readonly = Some(flag);
                }
                "os-reset_status" => {
                    if !ctx.is_admin() {
                        return Err(policy_denied("volume_extension:volume_admin_actions:reset_status"));
                    }
                    // Cinder's `migration_status` reset: `none` clears it.
                    if let Some(m) = arg.get("migration_status") {
                        let m = m.as_str().map(str::to_ascii_lowercase).filter(|m| MIGRATION_STATUSES.contains(&m.as_str())).ok_or_else(|| {
                            ApiError::bad_request(format!("Must specify a valid migration status: {m} is not one"))
                        })?;
                        v.migration_status = Some(m).filter(|m| m != "none");
                        if arg.get("status").is_none() {
                            v.updated_us = now;
                            return Ok(tx.update(&v)?);
                        }
                    }
                    let status = arg.get("status").and_then(Value::as_str).map(str::to_ascii_lowercase).ok_or_else(|| {
                        ApiError::bad_request("Must specify 'status'")
                    })?;
                    if !STATUSES.contains(&status.as_str()) {
                        return Err(ApiError::bad_request(format!("Must specify a valid status: {status} is not one")));
                    }
                    // A revert or reimage the admin gives up on is not
                    // run later over whatever the volume has become.
                    if v.task == Some(VolumeTask::Rewrite) {
                        v.task = None;
                        v.rewrite_from = None;
                        v.generation += 1;
                    }
                    v.status = status;
                }
                "os-reserve" => {
                    if v.status != "available" {
                        return Err(ApiError::bad_request(format!(
                            "Invalid volume: Volume status must be available to reserve, but the current status is: {}.",
                            v.status
                        )));
                    }
                    v.status = "attaching".into();
                }
                "os-unreserve" => {
                    if v.status == "attaching" {
                        v.status = super::attach::status_of(&v).into();
                    }
                }
                "os-begin_detaching" => {
                    if v.status != "in-use" {
                        return Err(ApiError::bad_request(format!(
                            "Invalid volume: Unable to detach volume. Volume status must be 'in-use' and attach_status must be 'attached' to detach (it is {}).",
                            v.status
                        )));
                    }
                    v.status = "detaching".into();
                }
                "os-roll_detaching" => {
                    if v.status == "detaching" {
                        v.status = "in-use".into();
                    }
                }
                "os-attach" => {
                    let text = |k: &str| arg.get(k).and_then(Value::as_str).map(str::to_string);
                    let server = text("instance_uuid");
                    let host = text("host_name");
                    if server.is_none() && host.is_none() {
                        return Err(ApiError::bad_request(
                            "Invalid request to attach volume to an invalid target",
                        ));
                    }
                    if let Some(m) = text("mode").filter(|m| m != "rw" && m != "ro") {
                        return Err(ApiError::bad_request(format!(
                            "Invalid request to attach volume with an invalid mode. Attaching mode should be 'rw' or 'ro' (it is {m})."
                        )));
                    }
                    if v.status != "available" && v.status != "attaching" && !(v.status == "in-use" && super::attach::multiattach(tx, &v)?) {
                        return Err(ApiError::bad_request(format!(
                            "Invalid volume: Volume status must be available or attaching to attach (it is {}).",
                            v.status
                        )));
                    }
                    v.attachments.push(super::model::VolumeAttachment {
                        id: uuid::Uuid::new_v4().to_string(),
                        server_id: server,
                        device: text("mountpoint"),
                        host_name: host,
                        status: "attached".into(),
                        attached_us: now,
                        mode: text("mode"),
                    });
                    v.status = super::attach::status_of(&v).into();
                }
                "os-detach" => {
                    let which = arg.get("attachment_id").and_then(Value::as_str).map(str::to_string);
                    let pos = match &which {
                        Some(a) => v.attachments.iter().position(|x| &x.id == a),
                        None if v.attachments.len() == 1 => Some(0),
                        None => None,
                    };
                    if v.attachments.is_empty() {
                        // Nothing attached: nothing to do, as Cinder.
                        return Ok(0);
                    }
                    let Some(pos) = pos else {
                        return Err(ApiError::bad_request(format!(
                            "Invalid volume: Volume {} has {} attachments; give the attachment_id of the one to detach.",
                            v.id,
                            v.attachments.len()
                        )));
                    };
                    v.attachments.remove(pos);
                    v.status = super::attach::status_of(&v).into();
                }
                "revert" if mv.at_least(40) => {
                    let sid = arg.get("snapshot_id").and_then(Value::as_str).ok_or_else(|| {
                        ApiError::bad_request("Invalid input received: snapshot_id is required.")
                    })?;
                    revert(tx, &ctx, &mut v, sid)?;
                }
                "os-reimage" if mv.at_least(68) => {
                    let image_id = arg.get("image_id").and_then(Value::as_str).ok_or_else(|| {
                        ApiError::bad_request("Invalid input received: image_id is required.")
                    })?;
                    let reserved_too = arg
                        .get("reimage_reserved")
                        .map(|r| super::parse_bool(r).ok_or_else(|| ApiError::bad_request("Invalid input received: reimage_reserved must be a boolean.")))
                        .transpose()?
                        .unwrap_or(false);
                    if reserved_too && !ctx.is_admin() {
                        return Err(policy_denied("volume:reimage_reserved"));
                    }
                    if v.task.is_some() {
                        return Err(ApiError::bad_request(format!(
                            "Invalid volume: volume {} is {}: its storage node is working on it.",
                            v.id, v.status
                        )));
                    }
                    // Nothing may have the volume open while its file is
                    // replaced: only reservations (3.27) may exist.
                    if v.attachments.iter().any(|a| a.status != "reserved") {
                        return Err(ApiError::bad_request(format!(
                            "Invalid volume: volume {} is attached; detach it before reimaging.",
                            v.id
                        )));
                    }
                    let ok = v.status == "available" || v.status == "error" || (reserved_too && v.status == "reserved");
                    if !ok {
                        return Err(ApiError::bad_request(format!(
                            "Invalid volume: Volume status must be available or error{} to reimage (it is {}).",
                            if reserved_too { " or reserved" } else { "" },
                            v.status
                        )));
                    }
                    if v.host.is_none() {
                        return Err(ApiError::bad_request("Invalid volume: the volume is on no storage node."));
                    }
                    let (src, min, _) = image_source(&state, &ctx, image_id)?;
                    if min > v.size {
                        return Err(ApiError::bad_request(format!(
                            "Invalid input received: Image virtual size is {min}GB and doesn't fit in a volume of size {}GB.",
                            v.size
                        )));
                    }
                    // The image metadata changes when the data has
                    // (`service::task_done`).
                    v.rewrite_from = Some(src);
                    v.status = "downloading".into();
                    v.task = Some(VolumeTask::Rewrite);
                    v.generation += 1;
                }
                "os-force_delete" => {
                    if !ctx.is_admin() {
                        return Err(policy_denied("volume_extension:volume_admin_actions:force_delete"));
                    }
                    if !v.attachments.is_empty() {
                        return Err(ApiError::bad_request("Invalid volume: Volume is attached."));
                    }
                    rewriting(&v)?;
                    super::group_model::check_volume_delete(&v)?;
                    return start_delete(tx, &mut v, false);
                }
                other => {
                    return Err(ApiError::bad_request(format!(
                        "There is no such action: {other}"
                    )));
                }
            }
            v.updated_us = now;
            Ok(tx.update(&v)?)
        })?;
        if rev > 0 {
            written(&state, rev);
        }
        Ok(match answer {
            Some(a) => (status, axum::Json(a)).into_response(),
            None => status.into_response(),
        })
    })
    .await
}
