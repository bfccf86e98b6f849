//! Volume transfers (`/os-volume-transfer`): a project offers one of its
//! `available` volumes (it becomes `awaiting-transfer`), another project
//! accepts it with the `auth_key` shown once at creation, and the volume
//! and its snapshots become the accepting project's. Deleting the
//! transfer cancels it.
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
use super::{VCtx, blocking, body, not_found, opt_str, param, parse_bool, ts};
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

fn render(state: &AppState, t: &VolumeTransfer, detail: bool) -> Value {
    let base = &state.config.public_url;
    let mut out = json!({
        "id": t.id,
        "name": t.name,
        "volume_id": t.volume_id,
        "links": [
            {"rel": "self", "href": format!("{base}/volume/v3/{}/os-volume-transfer/{}", t.project_id, t.id)},
            {"rel": "bookmark", "href": format!("{base}/volume/{}/os-volume-transfer/{}", t.project_id, t.id)}
        ],
    });
    if detail {
        out["created_at"] = json!(ts(t.created_us));
    }
    out
}

fn find(tx: &Tx, ctx: &VCtx, id: &str) -> Result<VolumeTransfer, ApiError> {
    tx.get::<VolumeTransfer>(id)?
        .filter(|t| ctx.owns(&t.project_id))
        .ok_or_else(|| not_found("Transfer", id))
}

async fn list(s: State<AppState>, ctx: VCtx, q: Query<HashMap<String, String>>) -> J {
    listing(s, ctx, q, false).await
}

async fn list_detail(s: State<AppState>, ctx: VCtx, q: Query<HashMap<String, String>>) -> J {
    listing(s, ctx, q, true).await
}

async fn listing(
    State(state): State<AppState>,
    ctx: VCtx,
    Query(q): Query<HashMap<String, String>>,
    detail: bool,
) -> J {
    let paging = super::paging(&q)?;
    let all = q
        .get("all_tenants")
        .is_some_and(|v| parse_bool(&json!(v)).unwrap_or(true))
        && ctx.is_admin();
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
            .map(|t| render(&state, t, true))
            .collect();
        // Sorted and paged on the detail view (it has `created_at`).
        let items: Vec<Value> = super::page(items, &paging)?
            .into_iter()
            .map(|mut v| {
                if !detail && let Some(o) = v.as_object_mut() {
                    o.remove("created_at");
                }
                v
            })
            .collect();
        Ok(axum::Json(json!({"transfers": items})))
    })
    .await
}

async fn show(State(state): State<AppState>, ctx: VCtx, Path(p): P) -> J {
    blocking(move || {
        let t = state.store.write(|tx| find(tx, &ctx, &param(&p, "id")))?;
        Ok(axum::Json(json!({"transfer": render(&state, &t, true)})))
    })
    .await
}

async fn create(
    State(state): State<AppState>,
    ctx: VCtx,
    raw: Bytes,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    ctx.project()?;
    let b = body(&raw)?;
    let r = b.get("transfer").filter(|s| s.is_object()).ok_or_else(|| {
        ApiError::bad_request("Missing required element 'transfer' in request body.")
    })?;
    let volume_id = opt_str(r, "volume_id", 255)?.ok_or_else(|| {
        ApiError::bad_request("Incorrect request body format: volume_id is required.")
    })?;
    let name = opt_str(r, "name", 255)?;
    blocking(move || {
        let (out, rev) = state.store.write(|tx| {
            let mut v = super::volumes::find(tx, &ctx, &volume_id)?;
            if v.status != "available" {
                return Err(ApiError::bad_request(format!(
                    "Invalid volume: status must be available (it is {}).",
                    v.status
                )));
            }
            super::groups::check_volume_transfer(&v)?;
            let busy = tx
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
                created_us: now,
            };
            tx.insert(&t)?;
            v.status = "awaiting-transfer".into();
            v.updated_us = now;
            let rev = tx.update(&v)?;
            let mut out = render(&state, &t, true);
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
    State(state): State<AppState>,
    ctx: VCtx,
    Path(p): P,
    raw: Bytes,
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
                .filter(|s| s.volume_id == v.id)
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
            let mut out = render(&state, &t, false);
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
