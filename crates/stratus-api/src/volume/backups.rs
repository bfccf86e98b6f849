//! Backups (`/backups`): create (full or incremental, of a volume or of
//! one of its snapshots), list, show, delete, restore (into a new volume
//! or an existing one), and `os-reset_status` / `os-force_delete` for
//! admins.
//!
//! A backup is read by the agent of the volume's storage node into
//! content-addressed chunks kept by the controller (`chunks.rs`); its
//! record lists them in order. A restore is a task for the node holding
//! the target volume, which fetches the chunks and writes the file. So a
//! backup survives its node and restores onto any node.
//!
//! `export_record` / `import_record` (admins) carry a backup's record,
//! its chunk list included, as base64 JSON: an import needs the chunks
//! still in this controller's store.
//!
//! Microversions: 3.9 `PUT /backups/{id}` (name, description; 3.43
//! also metadata); 3.18 `os-backup-project-attr:project_id` and 3.56
//! `user_id` in the detailed views for admins (Cinder's
//! `backup:backup_project_attribute`); 3.37 sorting by `name`; 3.43
//! backup `metadata`; 3.45 `count` with `with_count=true`; 3.47 a new
//! volume made from a backup ([`restore_into_new`], called by volume
//! create); 3.51 `availability_zone` on create; 3.64 `encryption_key_id`
//! (always null: volumes are not encrypted).
//!
//! Status flow, as Cinder's: backup `creating` -> `available` (volume
//! `backing-up` meanwhile, then back to what it was); restore: backup
//! `restoring`, volume `restoring-backup` -> both `available`. Quota
//! (`backups`, `backup_gigabytes`) is counted from the records, inside
//! the write that adds one.

use std::collections::{BTreeMap, HashMap};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};
use stratus_store::{Query as StoreQuery, Record, Tx};
use stratus_wire::volume::{VolumeReport, VolumeTask, VolumeWork};

use super::backup_model::{Backup, VolumeUpload, find, start_restore};
use super::model::{Snapshot, Volume};
use super::service::{Delta, check_quota, limits, place, usage, written};
use super::types::{DEFAULT_TYPE, find as find_type};
use super::{
    Mv, VCtx, blocking, body, not_found, opt_str, over_limit, param, parse_bool, policy_denied, ts,
};
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

type P = Path<HashMap<String, String>>;
type J = Result<axum::Json<Value>, ApiError>;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/backups", get(list).post(create))
        .route("/backups/detail", get(list_detail))
        .route("/backups/{id}", get(show).delete(delete).put(update))
        .route("/backups/{id}/restore", post(restore))
        .route("/backups/{id}/action", post(action))
        .route("/backups/{id}/export_record", get(export_record))
        .route("/backups/import_record", post(import_record))
}

fn check_backup_quota(tx: &Tx, project: &str, size: u64) -> Result<(), ApiError> {
    use crate::identity::quota as engine;
    if engine::model(tx)? != engine::Model::Flat {
        engine::take(tx, &super::service::BACKUPS, project, 1)
            .map_err(|o| over_limit(format!("BackupLimitExceeded: {}", o.why)))?;
        engine::take(tx, &super::service::BACKUP_GIGABYTES, project, size as i64)
            .map_err(|o| over_limit(format!("VolumeBackupSizeExceedsAvailableQuota: {}", o.why)))?;
        return Ok(());
    }
    let lim = limits(tx, Some(project))?;
    let used = usage(tx, project)?;
    let get = |m: &BTreeMap<String, i64>, k: &str, d: i64| m.get(k).copied().unwrap_or(d);
    let (n, gb) = (get(&lim, "backups", -1), get(&lim, "backup_gigabytes", -1));
    let (un, ugb) = (get(&used, "backups", 0), get(&used, "backup_gigabytes", 0));
    if n >= 0 && un + 1 > n {
        return Err(over_limit(format!(
            "BackupLimitExceeded: Maximum number of backups allowed ({n}) exceeded."
        )));
    }
    if gb >= 0 && ugb + size as i64 > gb {
        return Err(over_limit(format!(
            "VolumeBackupSizeExceedsAvailableQuota: Requested backup exceeds allowed Backup gigabytes quota. Requested {size}G, quota is {gb}G and {ugb}G has been consumed."
        )));
    }
    Ok(())
}

/// Cinder's detailed view of a backup at microversion `mv`, with the
/// admin-only attributes when `admin`.
fn render(state: &AppState, b: &Backup, dependents: bool, mv: Mv, admin: bool) -> Value {
    let base = &state.config.public_url;
    let mut out = json!({
        "id": b.id,
        "name": b.name,
        "description": b.description,
        "status": b.status,
        "availability_zone": b.availability_zone,
        "volume_id": b.volume_id,
        "snapshot_id": b.snapshot_id,
        "size": b.size,
        "object_count": b.chunks.iter().flatten().count(),
        "container": b.container,
        "fail_reason": b.fault,
        "is_incremental": b.is_incremental,
        "has_dependent_backups": dependents,
        "created_at": ts(b.created_us),
        "updated_at": ts(b.updated_us),
        "data_timestamp": ts(b.created_us),
        "links": [
            {"rel": "self", "href": format!("{base}/volume/v3/{}/backups/{}", b.project_id, b.id)},
            {"rel": "bookmark", "href": format!("{base}/volume/{}/backups/{}", b.project_id, b.id)}
        ],
    });
    if mv.at_least(18) && admin {
        out["os-backup-project-attr:project_id"] = json!(b.project_id);
    }
    if mv.at_least(43) {
        out["metadata"] = json!(b.metadata);
    }
    if mv.at_least(56) && admin {
        out["user_id"] = json!(b.user_id);
    }
    if mv.at_least(64) {
        out["encryption_key_id"] = Value::Null;
    }
    out
}

/// Cinder's summary view: what create and update answer.
fn summary(state: &AppState, b: &Backup) -> Value {
    let r = render(state, b, false, Mv(0), false);
    json!({"backup": {"id": r["id"], "name": r["name"], "links": r["links"]}})
}

/// Whether another backup is incremental to `id`.
fn has_dependents(tx: &Tx, b: &Backup) -> Result<bool, ApiError> {
    Ok(tx
        .list::<Backup>(&StoreQuery::owner(&b.project_id))?
        .iter()
        .any(|x| x.parent_id.as_deref() == Some(b.id.as_str())))
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

/// Whether a list query sorts by the key `name` (`sort=name:asc` or
/// `sort_key=name`), which Cinder takes for backups from 3.37 on.
fn sorts_by_name(q: &HashMap<String, String>) -> bool {
    let key = |part: &str| part.split(':').next().unwrap_or("").trim() == "name";
    q.get("sort").is_some_and(|s| s.split(',').any(key))
        || q.get("sort_key").is_some_and(|k| k.split(',').any(key))
}

/// `with_count` (3.45): a boolean, else a 400.
pub(crate) fn with_count(q: &HashMap<String, String>, mv: Mv) -> Result<bool, ApiError> {
    match q.get("with_count") {
        Some(v) if mv.at_least(45) => parse_bool(&json!(v)).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid input received: with_count '{v}' is not a boolean."
            ))
        }),
        _ => Ok(false),
    }
}

async fn listing(
    State(state): State<AppState>,
    ctx: VCtx,
    mv: Mv,
    Query(q): Query<HashMap<String, String>>,
    detail: bool,
) -> J {
    super::filters::reject_invalid(ctx.is_admin(), mv, &q, "backup", &[])?;
    if sorts_by_name(&q) && !mv.at_least(37) {
        return Err(ApiError::bad_request(
            "Invalid input received: Invalid sort key name (sorting backups by name needs microversion 3.37).",
        ));
    }
    let count = with_count(&q, mv)?;
    let admin = ctx.is_admin();
    let paging = super::paging(&q)?;
    let all = super::all_projects(&ctx, &q);
    let own = ctx.project()?.to_string();
    blocking(move || {
        let query = if all {
            StoreQuery::all()
        } else {
            StoreQuery::owner(&own)
        };
        let backups = state.store.list::<Backup>(&query)?;
        let parents: std::collections::HashSet<&str> = backups
            .iter()
            .filter_map(|b| b.parent_id.as_deref())
            .collect();
        let items: Vec<Value> = backups
            .iter()
            .filter(|b| {
                q.get("name")
                    .is_none_or(|n| b.name.as_deref() == Some(n.as_str()))
                    && q.get("status")
                        .is_none_or(|x| x.eq_ignore_ascii_case(&b.status))
                    && q.get("volume_id").is_none_or(|x| *x == b.volume_id)
                    && (!all || q.get("project_id").is_none_or(|x| *x == b.project_id))
            })
            .map(|b| render(&state, b, parents.contains(b.id.as_str()), mv, admin))
            .collect();
        let total = items.len();
        let items = super::page(items, &paging)?;
        let links = super::next_links(
            &state,
            &own,
            if detail { "backups/detail" } else { "backups" },
            &items,
            &paging,
        );
        let items: Vec<Value> = if detail {
            items
        } else {
            items
                .into_iter()
                .map(|v| json!({"id": v["id"], "name": v["name"], "links": v["links"]}))
                .collect()
        };
        let mut out = json!({"backups": items});
        if let Some(l) = links {
            out["backups_links"] = l;
        }
        if count {
            out["count"] = json!(total);
        }
        Ok(axum::Json(out))
    })
    .await
}

async fn show(State(state): State<AppState>, ctx: VCtx, mv: Mv, Path(p): P) -> J {
    blocking(move || {
        let out = state.store.write(|tx| {
            let b = find(tx, &ctx, &param(&p, "id"))?;
            Ok::<_, ApiError>(render(
                &state,
                &b,
                has_dependents(tx, &b)?,
                mv,
                ctx.is_admin(),
            ))
        })?;
        Ok(axum::Json(json!({"backup": out})))
    })
    .await
}

fn flag(v: &Value, key: &str) -> Result<bool, ApiError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(f) => parse_bool(f).ok_or_else(|| {
            ApiError::bad_request(format!("Invalid value '{f}' for {key}: not a boolean."))
        }),
    }
}

/// `PUT /backups/{id}` (3.9): name and description, and from 3.43 the
/// metadata (replaced whole); answers the summary view.
async fn update(State(state): State<AppState>, ctx: VCtx, mv: Mv, Path(p): P, raw: Bytes) -> J {
    mv.require(9)?;
    let b = body(&raw)?;
    let r = b.get("backup").filter(|s| s.is_object()).ok_or_else(|| {
        ApiError::bad_request("Missing required element 'backup' in request body.")
    })?;
    let allowed: &[&str] = if mv.at_least(43) {
        &["name", "description", "metadata"]
    } else {
        &["name", "description"]
    };
    if let Some(k) = r
        .as_object()
        .and_then(|o| o.keys().find(|k| !allowed.contains(&k.as_str())))
    {
        return Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute backup. Additional properties are not allowed ('{k}' was unexpected)"
        )));
    }
    let name = opt_str(r, "name", 255)?;
    let description = opt_str(r, "description", 255)?;
    let metadata = match r.get("metadata") {
        None => None,
        Some(m) => Some(super::metadata(m)?),
    };
    let (set_name, set_desc) = (r.get("name").is_some(), r.get("description").is_some());
    blocking(move || {
        let out = state.store.write(|tx| {
            let mut b = find(tx, &ctx, &param(&p, "id"))?;
            if set_name {
                b.name = name;
            }
            if set_desc {
                b.description = description;
            }
            if let Some(m) = metadata {
                b.metadata = m;
            }
            b.updated_us = now_us();
            tx.update(&b)?;
            Ok::<_, ApiError>(summary(&state, &b))
        })?;
        Ok(axum::Json(out))
    })
    .await
}

async fn create(
    State(state): State<AppState>,
    ctx: VCtx,
    mv: Mv,
    raw: Bytes,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    ctx.project()?;
    let b = body(&raw)?;
    let r = b.get("backup").filter(|s| s.is_object()).ok_or_else(|| {
        ApiError::bad_request("Missing required element 'backup' in request body.")
    })?;
    // Metadata from 3.43, a zone from 3.51 (ignored before, as Cinder's
    // older schemas drop them).
    let backup_metadata = match r.get("metadata") {
        Some(m) if mv.at_least(43) && !m.is_null() => super::metadata(m)?,
        _ => Default::default(),
    };
    let zone = if mv.at_least(51) {
        opt_str(r, "availability_zone", 255)?
    } else {
        None
    };
    let volume_id = opt_str(r, "volume_id", 255)?.ok_or_else(|| {
        ApiError::bad_request("Incorrect request body format: volume_id is required.")
    })?;
    let name = opt_str(r, "name", 255)?;
    let description = opt_str(r, "description", 255)?;
    let container = opt_str(r, "container", 255)?;
    let snapshot_id = opt_str(r, "snapshot_id", 255)?;
    let incremental = flag(r, "incremental")?;
    let force = flag(r, "force")?;
    blocking(move || {
        let (out, rev) = state.store.write(|tx| {
            let mut v = super::volumes::find(tx, &ctx, &volume_id)?;
            let mut snap = match &snapshot_id {
                None => None,
                Some(sid) => {
                    let s = tx
                        .get::<Snapshot>(sid)?
                        .filter(|s| ctx.owns(&s.project_id))
                        .ok_or_else(|| not_found("Snapshot", sid))?;
                    if s.volume_id != v.id {
                        return Err(ApiError::bad_request(format!(
                            "Invalid snapshot: Snapshot {sid} is not of volume {}.",
                            v.id
                        )));
                    }
                    if s.status != "available" {
                        return Err(ApiError::bad_request(format!(
                            "Invalid snapshot: Snapshot to be backed up must be available, but the current status is \"{}\".",
                            s.status
                        )));
                    }
                    Some(s)
                }
            };
            if snap.is_none() {
                match v.status.as_str() {
                    "available" => {}
                    "in-use" if force => {}
                    "in-use" => {
                        return Err(ApiError::bad_request(
                            "Invalid volume: Backup operation of an in-use volume must use the force flag.",
                        ));
                    }
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "Invalid volume: Volume to be backed up must be available or in-use, but the current status is \"{other}\"."
                        )));
                    }
                }
            }
            let Some(host) = snap.as_ref().and_then(|s| s.host.clone()).or(v.host.clone()) else {
                return Err(ApiError::bad_request(
                    "Invalid volume: the volume is on no storage node.",
                ));
            };
            let parent = if incremental {
                let latest = tx
                    .list::<Backup>(&StoreQuery::owner(&v.project_id))?
                    .into_iter()
                    .filter(|b| b.volume_id == v.id && b.status == "available")
                    .max_by_key(|b| b.created_us);
                match latest {
                    Some(b) => Some(b.id),
                    None => {
                        return Err(ApiError::bad_request(
                            "Invalid backup: No backups available to do an incremental backup.",
                        ));
                    }
                }
            } else {
                None
            };
            if let Some(z) = &zone
                && !crate::compute::zones::zone_exists(&state, z)?
            {
                return Err(ApiError::bad_request(format!(
                    "Invalid input received: Availability zone '{z}' is invalid."
                )));
            }
            check_backup_quota(tx, &v.project_id, v.size)?;
            let now = now_us();
            let prior = match &mut snap {
                Some(s) => {
                    let prior = std::mem::replace(&mut s.status, "backing-up".into());
                    s.updated_us = now;
                    tx.update(s)?;
                    prior
                }
                None => {
                    let prior = std::mem::replace(&mut v.status, "backing-up".into());
                    v.updated_us = now;
                    tx.update(&v)?;
                    prior
                }
            };
            let b = Backup {
                id: uuid::Uuid::new_v4().to_string(),
                project_id: v.project_id.clone(),
                user_id: ctx.user_id().to_string(),
                volume_id: v.id.clone(),
                snapshot_id: snapshot_id.clone(),
                name: name.clone(),
                description: description.clone(),
                size: v.size,
                status: "creating".into(),
                availability_zone: zone.clone().unwrap_or_else(|| v.availability_zone.clone()),
                container: container.clone(),
                is_incremental: parent.is_some(),
                parent_id: parent,
                host: Some(host),
                task: Some(VolumeTask::Backup),
                generation: 1,
                restore_volume_id: None,
                prior_status: Some(prior),
                size_bytes: 0,
                chunks: Vec::new(),
                volume_metadata: v.metadata.clone(),
                manifest_generation: 0,
                fault: None,
                metadata: backup_metadata.clone(),
                created_us: now,
                updated_us: now,
            };
            let rev = tx.insert(&b)?;
            Ok((summary(&state, &b), rev))
        })?;
        written(&state, rev);
        Ok((StatusCode::ACCEPTED, axum::Json(out)))
    })
    .await
}

/// The `backup_service` of an exported record (Cinder's names start
/// with `cinder.backup.drivers`, which clients check).
const EXPORT_SERVICE: &str = "cinder.backup.drivers.stratus_chunks";

/// `GET /backups/{id}/export_record` (admins): the backup's record,
/// base64 JSON, enough to import it again after the record is lost. The
/// data are the chunks it names, which stay in the chunk store while a
/// backup names them.
async fn export_record(State(state): State<AppState>, ctx: VCtx, Path(p): P) -> J {
    ctx.admin("backup:export-import")?;
    blocking(move || {
        let b = state.store.write(|tx| find(tx, &ctx, &param(&p, "id")))?;
        if b.status != "available" {
            return Err(ApiError::bad_request(format!(
                "Invalid backup: Backup status must be available (it is {}).",
                b.status
            )));
        }
        let raw = serde_json::to_vec(&b).map_err(|e| ApiError::internal(e.to_string()))?;
        use base64::Engine;
        let url = base64::engine::general_purpose::STANDARD.encode(raw);
        Ok(axum::Json(json!({"backup-record": {
            "backup_service": EXPORT_SERVICE,
            "backup_url": url,
        }})))
    })
    .await
}

/// `POST /backups/import_record` (admins): a backup from an exported
/// record, into the caller's project, `available` at once when every
/// chunk it names is in the chunk store (else 400); its id must be new.
async fn import_record(
    State(state): State<AppState>,
    ctx: VCtx,
    raw: Bytes,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    ctx.admin("backup:export-import")?;
    let project = ctx.project()?.to_string();
    let b = body(&raw)?;
    let r = b
        .get("backup-record")
        .filter(|s| s.is_object())
        .ok_or_else(|| {
            ApiError::bad_request("Missing required element 'backup-record' in request body.")
        })?;
    let service = opt_str(r, "backup_service", 255)?;
    let url = opt_str(r, "backup_url", usize::MAX)?;
    let (Some(service), Some(url)) = (service, url) else {
        return Err(ApiError::bad_request(
            "Incorrect request body format: backup_service and backup_url are required.",
        ));
    };
    if service != EXPORT_SERVICE {
        return Err(ApiError::bad_request(format!(
            "Invalid input received: backup service {service} is not supported (only {EXPORT_SERVICE})."
        )));
    }
    let bad = || ApiError::bad_request("Invalid input received: the backup_url cannot be read.");
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(url.trim())
        .map_err(|_| bad())?;
    let mut imported: Backup = serde_json::from_slice(&decoded).map_err(|_| bad())?;
    if uuid::Uuid::parse_str(&imported.id).is_err() {
        return Err(bad());
    }
    let chunk_size = stratus_wire::volume::CHUNK_SIZE;
    if imported.chunks.len() as u64 != imported.size_bytes.div_ceil(chunk_size)
        || imported.size_bytes > imported.size.saturating_mul(1 << 30)
        || imported
            .chunks
            .iter()
            .flatten()
            .any(|c| !super::chunks::valid_name(c))
    {
        return Err(bad());
    }
    blocking(move || {
        let (out, rev) = state.store.write(|tx| {
            if tx.get::<Backup>(&imported.id)?.is_some() {
                return Err(ApiError::bad_request(format!(
                    "Invalid backup: Backup {} already exists.",
                    imported.id
                )));
            }
            if let Some(c) = imported
                .chunks
                .iter()
                .flatten()
                .find(|c| !super::chunks::has_chunk(&state, c))
            {
                return Err(ApiError::bad_request(format!(
                    "Invalid backup: its data (chunk {c}) is not in the backup store."
                )));
            }
            check_backup_quota(tx, &project, imported.size)?;
            let now = now_us();
            imported.project_id = project.clone();
            imported.user_id = ctx.user_id().to_string();
            imported.status = "available".into();
            // Its chunk list is whole: it needs no parent.
            imported.parent_id = None;
            imported.host = None;
            imported.task = None;
            imported.generation = 0;
            imported.manifest_generation = 0;
            imported.restore_volume_id = None;
            imported.prior_status = None;
            imported.fault = None;
            imported.updated_us = now;
            let rev = tx.insert(&imported)?;
            Ok((summary(&state, &imported), rev))
        })?;
        written(&state, rev);
        Ok((StatusCode::CREATED, axum::Json(out)))
    })
    .await
}

/// Deletes a backup record and the chunks only it held.
fn remove(state: &AppState, tx: &Tx, b: &Backup) -> Result<i64, ApiError> {
    tx.delete::<Backup>(&b.id)?;
    let gone: Vec<String> = b.chunks.iter().flatten().cloned().collect();
    let removed = super::chunks::collect_garbage(state, tx, &gone)?;
    tracing::info!(backup = %b.id, chunks_removed = removed, "backup deleted");
    Ok(tx.last_revision()?)
}

async fn delete(
    State(state): State<AppState>,
    ctx: VCtx,
    Path(p): P,
) -> Result<StatusCode, ApiError> {
    blocking(move || {
        let rev = state.store.write(|tx| {
            let b = find(tx, &ctx, &param(&p, "id"))?;
            if b.status != "available" && b.status != "error" {
                return Err(ApiError::bad_request(format!(
                    "Invalid backup: Backup status must be available or error (it is {}).",
                    b.status
                )));
            }
            if has_dependents(tx, &b)? {
                return Err(ApiError::bad_request(
                    "Invalid backup: Incremental backups exist for this backup.",
                ));
            }
            remove(&state, tx, &b)
        })?;
        written(&state, rev);
        Ok(StatusCode::ACCEPTED)
    })
    .await
}

async fn restore(
    State(state): State<AppState>,
    ctx: VCtx,
    Path(p): P,
    raw: Bytes,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let project = ctx.project()?.to_string();
    let b = body(&raw)?;
    let r = b.get("restore").filter(|s| s.is_object()).ok_or_else(|| {
        ApiError::bad_request("Missing required element 'restore' in request body.")
    })?;
    let volume_id = opt_str(r, "volume_id", 255)?;
    let name = opt_str(r, "name", 255)?;
    blocking(move || {
        let (out, rev) = state.store.write(|tx| {
            let mut b = find(tx, &ctx, &param(&p, "id"))?;
            if b.status != "available" {
                return Err(ApiError::bad_request(format!(
                    "Invalid backup: Backup status must be available (it is {}).",
                    b.status
                )));
            }
            let now = now_us();
            let v = match &volume_id {
                Some(vid) => {
                    let mut v = super::volumes::find(tx, &ctx, vid)?;
                    if v.status != "available" {
                        return Err(ApiError::bad_request(format!(
                            "Invalid volume: Volume to be restored to must be available (it is {}).",
                            v.status
                        )));
                    }
                    if v.size < b.size {
                        return Err(ApiError::bad_request(format!(
                            "Invalid volume: volume size {} is too small to restore backup of size {}.",
                            v.size, b.size
                        )));
                    }
                    if v.host.is_none() {
                        return Err(ApiError::bad_request(
                            "Invalid volume: the volume is on no storage node.",
                        ));
                    }
                    v.status = "restoring-backup".into();
                    v.updated_us = now;
                    tx.update(&v)?;
                    v
                }
                None => new_volume(&state, tx, &ctx, &project, &b, name.clone())?,
            };
            let rev = start_restore(tx, &mut b, &v)?;
            Ok::<_, ApiError>((
                json!({"restore": {"backup_id": b.id, "volume_id": v.id, "volume_name": v.name}}),
                rev,
            ))
        })?;
        written(&state, rev);
        Ok((StatusCode::ACCEPTED, axum::Json(out)))
    })
    .await
}

/// The volume a restore without a target makes: the backup's size, the
/// default type, on a node chosen as for any new volume (in quota).
fn new_volume(
    state: &AppState,
    tx: &Tx,
    ctx: &VCtx,
    project: &str,
    b: &Backup,
    name: Option<String>,
) -> Result<Volume, ApiError> {
    let vtype = find_type(tx, ctx, DEFAULT_TYPE)?;
    check_quota(
        tx,
        project,
        &Delta {
            volumes: 1,
            gigabytes: b.size as i64,
            snapshots: 0,
            type_name: Some(&vtype.name),
        },
        b.size,
    )?;
    let Some((host, zone)) = place(state, tx, None, b.size)? else {
        return Err(ApiError::bad_request(
            "Invalid input received: no storage node can take a volume for the restore.",
        ));
    };
    let now = now_us();
    let v = Volume {
        id: uuid::Uuid::new_v4().to_string(),
        project_id: project.to_string(),
        user_id: ctx.user_id().to_string(),
        name: Some(name.unwrap_or_else(|| format!("restore_backup_{}", b.id))),
        description: None,
        size: b.size,
        extend_to: None,
        status: "restoring-backup".into(),
        availability_zone: zone,
        host: Some(host),
        volume_type_id: vtype.id,
        bootable: false,
        readonly: None,
        metadata: Default::default(),
        image_metadata: Default::default(),
        group_id: None,
        migration_status: None,
        source: None,
        task: None,
        rewrite_from: None,
        generation: 1,
        fault: None,
        attachments: Vec::new(),
        created_us: now,
        updated_us: now,
    };
    tx.insert(&v)?;
    Ok(v)
}

async fn action(
    State(state): State<AppState>,
    ctx: VCtx,
    Path(p): P,
    raw: Bytes,
) -> Result<StatusCode, ApiError> {
    let b = body(&raw)?;
    let (name, arg) = b
        .as_object()
        .and_then(|o| o.iter().next())
        .map(|(k, v)| (k.clone(), v.clone()))
        .ok_or_else(|| ApiError::bad_request("Malformed request body: no action."))?;
    let id = param(&p, "id");
    match name.as_str() {
        "os-reset_status" => {
            if !ctx.is_admin() {
                return Err(policy_denied(
                    "volume_extension:backup_admin_actions:reset_status",
                ));
            }
            let status = arg
                .get("status")
                .and_then(Value::as_str)
                .map(str::to_ascii_lowercase)
                .ok_or_else(|| ApiError::bad_request("Must specify 'status'"))?;
            if status != "available" && status != "error" {
                return Err(ApiError::bad_request(format!(
                    "Invalid input received: Backup status must be available or error (not {status})."
                )));
            }
            blocking(move || {
                let rev = state.store.write(|tx| {
                    let mut b = find(tx, &ctx, &id)?;
                    // A task under way is abandoned: its report will be stale.
                    if b.task.is_some() {
                        settle_abandoned(tx, &b)?;
                    }
                    b.status = status;
                    b.task = None;
                    b.generation += 1;
                    b.updated_us = now_us();
                    Ok::<_, ApiError>(tx.update(&b)?)
                })?;
                written(&state, rev);
                Ok(StatusCode::ACCEPTED)
            })
            .await
        }
        "os-force_delete" => {
            if !ctx.is_admin() {
                return Err(policy_denied(
                    "volume_extension:backup_admin_actions:force_delete",
                ));
            }
            blocking(move || {
                let rev = state.store.write(|tx| {
                    let b = find(tx, &ctx, &id)?;
                    if has_dependents(tx, &b)? {
                        return Err(ApiError::bad_request(
                            "Invalid backup: Incremental backups exist for this backup.",
                        ));
                    }
                    if b.task.is_some() {
                        settle_abandoned(tx, &b)?;
                    }
                    remove(&state, tx, &b)
                })?;
                written(&state, rev);
                Ok(StatusCode::ACCEPTED)
            })
            .await
        }
        other => Err(ApiError::bad_request(format!(
            "There is no such action: {other}"
        ))),
    }
}

/// Puts the volume (or snapshot) a task under way holds back: a backup's
/// source to what it was, a restore's target to `error_restoring`.
fn settle_abandoned(tx: &Tx, b: &Backup) -> Result<(), ApiError> {
    match b.task {
        Some(VolumeTask::Backup) => release_source(tx, b),
        Some(VolumeTask::Restore) => {
            if let Some(vid) = &b.restore_volume_id
                && let Some(mut v) = tx.get::<Volume>(vid)?
                && v.status == "restoring-backup"
            {
                v.status = "error_restoring".into();
                v.updated_us = now_us();
                tx.update(&v)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The volume or snapshot a backup read goes back to its prior status.
fn release_source(tx: &Tx, b: &Backup) -> Result<(), ApiError> {
    let prior = b.prior_status.clone().unwrap_or_else(|| "available".into());
    match &b.snapshot_id {
        Some(sid) => {
            if let Some(mut s) = tx.get::<Snapshot>(sid)?
                && s.status == "backing-up"
            {
                s.status = prior;
                s.updated_us = now_us();
                tx.update(&s)?;
            }
        }
        None => {
            if let Some(mut v) = tx.get::<Volume>(&b.volume_id)?
                && v.status == "backing-up"
            {
                v.status = prior;
                v.updated_us = now_us();
                tx.update(&v)?;
            }
        }
    }
    Ok(())
}

/// The backup and restore tasks pending on storage node `host`.
pub fn work(state: &AppState, host: &str) -> Result<Vec<VolumeWork>, ApiError> {
    let mut out = Vec::new();
    for b in state.store.list::<Backup>(&StoreQuery::parent(host))? {
        let Some(task) = b.task else { continue };
        let (source, volume_id) = match task {
            VolumeTask::Backup => (
                b.snapshot_id
                    .clone()
                    .map(|id| stratus_wire::volume::VolumeSource::Snapshot { id }),
                Some(b.volume_id.clone()),
            ),
            _ => (None, b.restore_volume_id.clone()),
        };
        let size_gb = match (task, &b.restore_volume_id) {
            (VolumeTask::Restore, Some(vid)) => state
                .store
                .get::<Volume>(vid)?
                .map(|v| v.size)
                .unwrap_or(b.size),
            _ => b.size,
        };
        out.push(VolumeWork {
            id: b.id,
            task,
            generation: b.generation,
            size_gb,
            source,
            volume_id,
            upload: None,
            nbd: None,
        });
    }
    out.extend(super::upload::work(state, host)?);
    Ok(out)
}

/// Whether `id` names a backup or an upload (whose reports
/// [`report`] settles) rather than a volume or snapshot.
pub fn owns_task(state: &AppState, id: &str) -> Result<bool, ApiError> {
    Ok(state.store.get::<Backup>(id)?.is_some() || state.store.get::<VolumeUpload>(id)?.is_some())
}

/// Settles a node's report of a backup, restore or upload task on `id`;
/// a stale report changes nothing.
pub fn report(state: &AppState, host: &str, id: &str, r: &VolumeReport) -> Result<(), ApiError> {
    if let Some(rev) = state.store.write(|tx| task_done(tx, host, id, r))? {
        written(state, rev);
    }
    Ok(())
}

fn task_done(tx: &Tx, host: &str, id: &str, r: &VolumeReport) -> Result<Option<i64>, ApiError> {
    let Some(mut b) = tx.get::<Backup>(id)? else {
        return super::upload::task_done(tx, host, id, r);
    };
    if b.host.as_deref() != Some(host) || b.task != Some(r.task) || b.generation != r.generation {
        return Ok(None);
    }
    let now = now_us();
    let mut error = r.error.clone();
    match r.task {
        VolumeTask::Backup => {
            if error.is_none() && b.manifest_generation != b.generation {
                error = Some("the node reported the backup done without its manifest".into());
            }
            release_source(tx, &b)?;
            b.status = if error.is_none() {
                "available"
            } else {
                "error"
            }
            .into();
        }
        VolumeTask::Restore => {
            if let Some(vid) = &b.restore_volume_id
                && let Some(mut v) = tx.get::<Volume>(vid)?
                && v.status == "restoring-backup"
            {
                v.status = if error.is_none() {
                    "available"
                } else {
                    "error_restoring"
                }
                .into();
                if error.is_none() {
                    for (k, val) in &b.volume_metadata {
                        v.metadata.insert(k.clone(), val.clone());
                    }
                }
                v.fault = error.clone();
                v.updated_us = now;
                tx.update(&v)?;
            }
            b.status = "available".into();
            b.restore_volume_id = None;
        }
        _ => return Ok(None),
    }
    if let Some(e) = &error {
        tracing::warn!(backup = %id, task = ?r.task, error = %e, "a backup task failed");
    }
    b.fault = error;
    b.task = None;
    b.updated_us = now;
    Ok(Some(tx.update(&b)?))
}

/// Whether a change to record kind `kind` may give a storage node work.
pub fn wakes_nodes(kind: &str) -> bool {
    kind == Backup::KIND || kind == VolumeUpload::KIND
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sorting_by_name_and_counting_follow_the_microversion() {
        assert!(sorts_by_name(&q(&[("sort", "created_at:desc,name:asc")])));
        assert!(sorts_by_name(&q(&[("sort_key", "name")])));
        assert!(!sorts_by_name(&q(&[("sort", "display_name:asc")])));
        assert!(!sorts_by_name(&q(&[("sort", "status")])));
        assert!(with_count(&q(&[("with_count", "true")]), Mv(45)).unwrap());
        assert!(!with_count(&q(&[("with_count", "true")]), Mv(44)).unwrap());
        assert!(!with_count(&q(&[]), Mv(45)).unwrap());
        assert!(with_count(&q(&[("with_count", "sure")]), Mv(45)).is_err());
    }
}
