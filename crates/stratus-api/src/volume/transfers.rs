//! Volume transfers (`/os-volume-transfer`): a project offers one of its
//! `available` volumes (it becomes `awaiting-transfer`), another project
//! accepts it with the `auth_key` shown once at creation, and the volume
//! and its snapshots become the accepting project's. Deleting the
//! transfer cancels it.
//!
//! Microversions: 3.55 `no_snapshots` on create (the snapshots then stay
//! with the giver) and in the detailed views, and the same API under
//! `/volume-transfers` (Cinder added that path with 3.55 and does not
//! gate it; openstacksdk uses it from 3.55 on; here it is a 404 below
//! 3.55); 3.57 `source_project_id`, `destination_project_id` (null) and
//! `accepted` (false: an accepted transfer is gone) in the detailed
//! views; 3.59 sorting (`sort`, `sort_key`/`sort_dir`) and
//! `next` links on the lists (before, the lists come oldest first and
//! only `limit`, `offset` and `marker` apply). 3.70 lets encrypted
//! volumes be transferred; no volume here is encrypted, so nothing
//! changes (Cinder's views gain no field at 3.70 either).
//!
//! The key is kept only as a salted sha256. Accepting checks the
//! accepting project's quota for the volume and its snapshots in the
//! same write that moves them; the giver's usage falls by itself, since
//! usage is counted from the records.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};
use sha2::Digest;
use stratus_store::{Query as StoreQuery, Tx};

use super::backup_model::VolumeTransfer;
use super::model::{Snapshot, Volume, VolumeType};
use super::service::{Delta, check_quota, written};
use super::{Mv, VCtx, blocking, body, not_found, opt_str, param, parse_bool, ts};
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

type P = Path<HashMap<String, String>>;
type J = Result<axum::Json<Value>, ApiError>;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/os-volume-transfer", get(list).post(create))
        .route("/os-volume-transfer/detail", get(list_detail))
        .route("/os-volume-transfer/{id}", get(show).delete(delete))
        .route("/os-volume-transfer/{id}/accept", post(accept))
        .route("/volume-transfers", get(v_list).post(v_create))
        .route("/volume-transfers/detail", get(v_list_detail))
        .route("/volume-transfers/{id}", get(v_show).delete(v_delete))
        .route("/volume-transfers/{id}/accept", post(v_accept))
}

/// The collection a request came in through: its links name it.
const OLD: &str = "os-volume-transfer";
const NEW: &str = "volume-transfers";

async fn v_list(s: State<AppState>, ctx: VCtx, mv: Mv, q: Query<HashMap<String, String>>) -> J {
    mv.require(55)?;
    listing(s, ctx, mv, q, false, NEW).await
}

async fn v_list_detail(
    s: State<AppState>,
    ctx: VCtx,
    mv: Mv,
    q: Query<HashMap<String, String>>,
) -> J {
    mv.require(55)?;
    listing(s, ctx, mv, q, true, NEW).await
}

async fn v_show(s: State<AppState>, ctx: VCtx, mv: Mv, p: P) -> J {
    mv.require(55)?;
    showing(s, ctx, mv, p, NEW).await
}

async fn v_create(
    s: State<AppState>,
    ctx: VCtx,
    mv: Mv,
    raw: Bytes,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    mv.require(55)?;
    creating(s, ctx, mv, raw, NEW).await
}

async fn v_delete(s: State<AppState>, ctx: VCtx, mv: Mv, p: P) -> Result<StatusCode, ApiError> {
    mv.require(55)?;
    delete(s, ctx, p).await
}

async fn v_accept(
    s: State<AppState>,
    ctx: VCtx,
    mv: Mv,
    p: P,
    raw: Bytes,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    mv.require(55)?;
    accepting(s, ctx, p, raw, NEW).await
}

fn hash(salt: &str, key: &str) -> String {
    sha2::Sha256::digest(format!("{salt}{key}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `n` random characters from Cinder's key alphabet.
fn random_key(n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut out = String::new();
    while out.len() < n {
        for b in uuid::Uuid::new_v4().as_bytes() {
            if out.len() < n {
                out.push(ALPHABET[*b as usize % ALPHABET.len()] as char);
            }
        }
    }
    out
}

/// A transfer as Cinder shows it: the summary, or with `detail` the
/// detailed view of microversion `mv`; links into collection `path`.
fn render(state: &AppState, t: &VolumeTransfer, detail: bool, mv: Mv, path: &str) -> Value {
    let base = &state.config.public_url;
    let mut out = json!({
        "id": t.id,
        "name": t.name,
        "volume_id": t.volume_id,
        "links": [
            {"rel": "self", "href": format!("{base}/volume/v3/{}/{path}/{}", t.project_id, t.id)},
            {"rel": "bookmark", "href": format!("{base}/volume/{}/{path}/{}", t.project_id, t.id)}
        ],
    });
    if detail {
        out["created_at"] = json!(ts(t.created_us));
        if mv.at_least(55) {
            out["no_snapshots"] = json!(t.no_snapshots);
        }
        if mv.at_least(57) {
            out["source_project_id"] = json!(t.project_id);
            out["destination_project_id"] = Value::Null;
            out["accepted"] = json!(false);
        }
    }
    out
}

fn find(tx: &Tx, ctx: &VCtx, id: &str) -> Result<VolumeTransfer, ApiError> {
    tx.get::<VolumeTransfer>(id)?
        .filter(|t| ctx.owns(&t.project_id))
        .ok_or_else(|| not_found("Transfer", id))
}

async fn list(s: State<AppState>, ctx: VCtx, mv: Mv, q: Query<HashMap<String, String>>) -> J {
    listing(s, ctx, mv, q, false, OLD).await
}

async fn list_detail(
    s: State<AppState>,
    ctx: VCtx,
    mv: Mv,
    q: Query<HashMap<String, String>>,
) -> J {
    listing(s, ctx, mv, q, true, OLD).await
}

/// The keys a transfer list sorts by (3.59).
const SORTABLE: &[&str] = &["id", "name", "volume_id", "created_at"];

async fn listing(
    State(state): State<AppState>,
    ctx: VCtx,
    mv: Mv,
    Query(q): Query<HashMap<String, String>>,
    detail: bool,
    path: &'static str,
) -> J {
    let mut paging = super::paging(&q)?;
    if !mv.at_least(59) {
        // Before 3.59 a transfer list is not sorted on request: oldest
        // first, as Cinder's `common.limited` pages it.
        paging.sort = vec![("created_at".into(), false), ("id".into(), false)];
    } else if let Some((k, _)) = paging
        .sort
        .iter()
        .find(|(k, _)| !SORTABLE.contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "Invalid input received: Invalid sort key {k}"
        )));
    }
    let all = super::all_projects(&ctx, &q);
    let own = ctx.project()?.to_string();
    blocking(move || {
        let query = if all {
            StoreQuery::all()
        } else {
            StoreQuery::owner(&own)
        };
        let items: Vec<Value> = state
            .store
            .list::<VolumeTransfer>(&query)?
            .iter()
            .filter(|t| {
                q.get("name")
                    .is_none_or(|n| t.name.as_deref() == Some(n.as_str()))
                    && q.get("volume_id").is_none_or(|x| *x == t.volume_id)
            })
            .map(|t| render(&state, t, true, mv, path))
            .collect();
        // Sorted and paged on the detail view (it has `created_at`).
        let items = super::page(items, &paging)?;
        let links = if mv.at_least(59) {
            let coll = if detail {
                format!("{path}/detail")
            } else {
                path.to_string()
            };
            super::next_links(&state, &own, &coll, &items, &paging)
        } else {
            None
        };
        let items: Vec<Value> = items
            .into_iter()
            .map(|mut v| {
                if !detail {
                    v = json!({"id": v["id"], "name": v["name"], "volume_id": v["volume_id"], "links": v["links"]});
                }
                v
            })
            .collect();
        let mut out = json!({"transfers": items});
        if let Some(l) = links {
            out["transfers_links"] = l;
        }
        Ok(axum::Json(out))
    })
    .await
}

async fn show(s: State<AppState>, ctx: VCtx, mv: Mv, p: P) -> J {
    showing(s, ctx, mv, p, OLD).await
}

async fn showing(
    State(state): State<AppState>,
    ctx: VCtx,
    mv: Mv,
    Path(p): P,
    path: &'static str,
) -> J {
    blocking(move || {
        let t = state.store.write(|tx| find(tx, &ctx, &param(&p, "id")))?;
        Ok(axum::Json(
            json!({"transfer": render(&state, &t, true, mv, path)}),
        ))
    })
    .await
}

async fn create(
    s: State<AppState>,
    ctx: VCtx,
    mv: Mv,
    raw: Bytes,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    creating(s, ctx, mv, raw, OLD).await
}

async fn creating(
    State(state): State<AppState>,
    ctx: VCtx,
    mv: Mv,
    raw: Bytes,
    path: &'static str,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    ctx.project()?;
    let b = body(&raw)?;
    let r = b.get("transfer").filter(|s| s.is_object()).ok_or_else(|| {
        ApiError::bad_request("Missing required element 'transfer' in request body.")
    })?;
    // Cinder's schema: `no_snapshots` from 3.55, nothing else unknown.
    let allowed: &[&str] = if mv.at_least(55) {
        &["volume_id", "name", "no_snapshots"]
    } else {
        &["volume_id", "name"]
    };
    if let Some(k) = r
        .as_object()
        .and_then(|o| o.keys().find(|k| !allowed.contains(&k.as_str())))
    {
        return Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute transfer. Additional properties are not allowed ('{k}' was unexpected)"
        )));
    }
    let volume_id = opt_str(r, "volume_id", 255)?.ok_or_else(|| {
        ApiError::bad_request("Incorrect request body format: volume_id is required.")
    })?;
    let name = opt_str(r, "name", 255)?;
    let no_snapshots = match r.get("no_snapshots") {
        None | Some(Value::Null) => false,
        Some(v) => parse_bool(v).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid input for field/attribute no_snapshots. Value: {v}. It is not a boolean."
            ))
        })?,
    };
    blocking(move || {
        let (out, rev) = state.store.write(|tx| {
            let mut v = super::volumes::find(tx, &ctx, &volume_id)?;
            if v.status != "available" {
                return Err(ApiError::bad_request(format!(
                    "Invalid volume: status must be available (it is {}).",
                    v.status
                )));
            }
            super::group_model::check_volume_transfer(&v)?;
            // Snapshots that move must be at rest.
            let busy = !no_snapshots
                && tx
                    .list::<Snapshot>(&StoreQuery::owner(&v.project_id))?
                    .into_iter()
                    .any(|s| s.volume_id == v.id && s.status != "available");
            if busy {
                return Err(ApiError::bad_request(
                    "Invalid volume: a snapshot of the volume is not available.",
                ));
            }
            let now = now_us();
            let (salt, key) = (random_key(8), random_key(16));
            let t = VolumeTransfer {
                id: uuid::Uuid::new_v4().to_string(),
                project_id: v.project_id.clone(),
                volume_id: v.id.clone(),
                name: name.clone(),
                crypt_hash: hash(&salt, &key),
                salt,
                no_snapshots,
                created_us: now,
            };
            tx.insert(&t)?;
            v.status = "awaiting-transfer".into();
            v.updated_us = now;
            let rev = tx.update(&v)?;
            let mut out = render(&state, &t, true, mv, path);
            out["auth_key"] = json!(key);
            Ok::<_, ApiError>((json!({"transfer": out}), rev))
        })?;
        written(&state, rev);
        Ok((StatusCode::ACCEPTED, axum::Json(out)))
    })
    .await
}

async fn delete(
    State(state): State<AppState>,
    ctx: VCtx,
    Path(p): P,
) -> Result<StatusCode, ApiError> {
    blocking(move || {
        let rev = state.store.write(|tx| {
            let t = find(tx, &ctx, &param(&p, "id"))?;
            tx.delete::<VolumeTransfer>(&t.id)?;
            if let Some(mut v) = tx.get::<Volume>(&t.volume_id)?
                && v.status == "awaiting-transfer"
            {
                v.status = "available".into();
                v.updated_us = now_us();
                tx.update(&v)?;
            }
            Ok::<_, ApiError>(tx.last_revision()?)
        })?;
        written(&state, rev);
        Ok(StatusCode::ACCEPTED)
    })
    .await
}

async fn accept(
    s: State<AppState>,
    ctx: VCtx,
    p: P,
    raw: Bytes,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    accepting(s, ctx, p, raw, OLD).await
}

async fn accepting(
    State(state): State<AppState>,
    ctx: VCtx,
    Path(p): P,
    raw: Bytes,
    path: &'static str,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let project = ctx.project()?.to_string();
    let b = body(&raw)?;
    let key = match b.get("accept").filter(|a| a.is_object()) {
        Some(a) => opt_str(a, "auth_key", 255)?,
        None => None,
    }
    .ok_or_else(|| ApiError::bad_request("Incorrect request body format: auth_key is required."))?;
    let id = param(&p, "id");
    blocking(move || {
        let (out, rev) = state.store.write(|tx| {
            // Any project holding the id and key may accept.
            let t = tx
                .get::<VolumeTransfer>(&id)?
                .ok_or_else(|| not_found("Transfer", &id))?;
            if hash(&t.salt, &key) != t.crypt_hash {
                return Err(ApiError::bad_request(format!(
                    "Invalid auth key: Attempt to transfer {id} with invalid auth key."
                )));
            }
            let mut v = tx
                .get::<Volume>(&t.volume_id)?
                .ok_or_else(|| not_found("Volume", &t.volume_id))?;
            if v.status != "awaiting-transfer" {
                return Err(ApiError::bad_request(format!(
                    "Invalid volume: status must be awaiting-transfer (it is {}).",
                    v.status
                )));
            }
            let snaps: Vec<Snapshot> = tx
                .list::<Snapshot>(&StoreQuery::owner(&v.project_id))?
                .into_iter()
                .filter(|s| s.volume_id == v.id && !t.no_snapshots)
                .collect();
            let snap_gb: u64 = snaps.iter().map(|s| s.size).sum();
            let tname = tx.get::<VolumeType>(&v.volume_type_id)?.map(|t| t.name);
            if project != v.project_id {
                check_quota(
                    tx,
                    &project,
                    &Delta {
                        volumes: 1,
                        snapshots: snaps.len() as i64,
                        gigabytes: (v.size + snap_gb) as i64,
                        type_name: tname.as_deref(),
                    },
                    v.size,
                )?;
            }
            let now = now_us();
            for mut s in snaps {
                s.project_id = project.clone();
                s.user_id = ctx.user_id().to_string();
                s.updated_us = now;
                tx.update(&s)?;
            }
            v.project_id = project.clone();
            v.user_id = ctx.user_id().to_string();
            v.status = "available".into();
            v.updated_us = now;
            tx.update(&v)?;
            tx.delete::<VolumeTransfer>(&t.id)?;
            let mut out = render(&state, &t, false, Mv(0), path);
            out["links"] = json!([]);
            Ok::<_, ApiError>((json!({"transfer": out}), tx.last_revision()?))
        })?;
        written(&state, rev);
        Ok((StatusCode::ACCEPTED, axum::Json(out)))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_checked_through_their_salted_hash() {
        let (a, b) = (random_key(16), random_key(16));
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        let salt = random_key(8);
        let h = hash(&salt, &a);
        assert_eq!(h, hash(&salt, &a));
        assert_ne!(h, hash(&salt, &b));
        assert_ne!(h, hash(&random_key(8), &a), "the salt counts");
    }
}
