//! Default volume types per project (`/default-types`, 3.62): the type a
//! volume of that project gets when its create names none, before the
//! cloud's `__DEFAULT__`. One record per project (`volume_default_type`,
//! id = the project's id). Admins only, as Cinder's defaults
//! (`volume_extension:default_*`).
//!
//! Volume create asks [`default_type_for`].

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use stratus_store::{Query as StoreQuery, Tx};

use super::model::VolumeType;
use super::{Mv, VCtx, blocking, body, opt_str, param};
use crate::identity::model::Project;
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

type P = Path<HashMap<String, String>>;
type J = Result<axum::Json<Value>, ApiError>;

pub use super::model::DefaultType;

/// The id of the volume type project `project` has as its default, if
/// one is set (and its type still exists). Volume create calls it when
/// the request names no type, and falls back to `__DEFAULT__` on `None`.
pub(crate) fn default_type_for(tx: &Tx, project: &str) -> Result<Option<String>, ApiError> {
    let Some(d) = tx.get::<DefaultType>(project)? else {
        return Ok(None);
    };
    Ok(tx.get::<VolumeType>(&d.volume_type_id)?.map(|t| t.id))
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/default-types", get(list))
        .route("/default-types/{target}", get(show).put(set).delete(unset))
}

fn view(d: &DefaultType) -> Value {
    json!({"project_id": d.id, "volume_type_id": d.volume_type_id})
}

fn not_set(project: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("Default type for project {project} could not be found."),
    )
}

/// The project a path names must exist (a 404 otherwise).
fn project(tx: &Tx, id: &str) -> Result<(), ApiError> {
    if tx.get::<Project>(id)?.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("Project {id} could not be found."),
        ));
    }
    Ok(())
}

async fn list(State(state): State<AppState>, ctx: VCtx, mv: Mv) -> J {
    mv.require(62)?;
    ctx.admin("volume_extension:default_get_all")?;
    blocking(move || {
        let all = state.store.list::<DefaultType>(&StoreQuery::all())?;
        let out: Vec<Value> = all.iter().map(view).collect();
        Ok(axum::Json(json!({"default_types": out})))
    })
    .await
}

async fn show(State(state): State<AppState>, ctx: VCtx, mv: Mv, Path(p): P) -> J {
    mv.require(62)?;
    ctx.admin("volume_extension:default_get")?;
    let target = param(&p, "target");
    blocking(move || {
        let id = state
            .store
            .write(|tx| default_type_for(tx, &target))?
            .ok_or_else(|| not_set(&target))?;
        Ok(axum::Json(
            json!({"default_type": {"project_id": target, "volume_type_id": id}}),
        ))
    })
    .await
}

async fn set(State(state): State<AppState>, ctx: VCtx, mv: Mv, Path(p): P, raw: Bytes) -> J {
    mv.require(62)?;
    ctx.admin("volume_extension:default_set_or_update")?;
    let target = param(&p, "target");
    let b = body(&raw)?;
    let d = b
        .get("default_type")
        .filter(|d| d.is_object())
        .ok_or_else(|| {
            ApiError::bad_request("Missing required element 'default_type' in request body.")
        })?;
    if let Some(k) = d
        .as_object()
        .and_then(|o| o.keys().find(|k| *k != "volume_type"))
    {
        return Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute default_type. Additional properties are not allowed ('{k}' was unexpected)"
        )));
    }
    let vtype = opt_str(d, "volume_type", 255)?
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(
                "Invalid input for field/attribute volume_type: a type name or id is required.",
            )
        })?;
    blocking(move || {
        let out = state.store.write(|tx| {
            project(tx, &target)?;
            let t = super::types::find(tx, &ctx, &vtype)?;
            let d = DefaultType {
                id: target.clone(),
                volume_type_id: t.id,
                updated_us: now_us(),
            };
            if tx.get::<DefaultType>(&target)?.is_some() {
                tx.update(&d)?;
            } else {
                tx.insert(&d)?;
            }
            Ok::<_, ApiError>(view(&d))
        })?;
        Ok(axum::Json(json!({"default_type": out})))
    })
    .await
}

async fn unset(
    State(state): State<AppState>,
    ctx: VCtx,
    mv: Mv,
    Path(p): P,
) -> Result<StatusCode, ApiError> {
    mv.require(62)?;
    ctx.admin("volume_extension:default_unset")?;
    let target = param(&p, "target");
    blocking(move || {
        state.store.write(|tx| {
            if tx.get::<DefaultType>(&target)?.is_none() {
                return Err(not_set(&target));
            }
            tx.delete::<DefaultType>(&target)?;
            Ok::<_, ApiError>(())
        })?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}
