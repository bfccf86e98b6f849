//! Group types (`/group_types`, microversion 3.11): CRUD, group specs
//! and the default group type `default_group_type`. Admins manage them
//! and alone see the group specs and the private ones; everyone reads
//! the public ones.

use std::collections::{BTreeMap, HashMap};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use stratus_store::{Query as StoreQuery, Store, Tx};

use super::group_model::{Group, GroupType};
use super::{Mv, VCtx, blocking, body, not_found, opt_str, param};
use crate::{ApiError, AppState};

/// The name of Cinder's default group type (`[DEFAULT] default_group_type`).
pub const DEFAULT_GROUP_TYPE: &str = "default_group_type";

/// The microversion that brought group types.
const MV_GROUP_TYPES: u16 = 11;

type P = Path<HashMap<String, String>>;
type J = Result<axum::Json<Value>, ApiError>;
type Created = Result<(StatusCode, axum::Json<Value>), ApiError>;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/group_types", get(list).post(create))
        .route("/group_types/default", get(show_default))
        .route("/group_types/{id}", get(show).put(update).delete(delete))
        .route("/group_types/{id}/group_specs", get(specs).post(set_specs))
        .route(
            "/group_types/{id}/group_specs/{key}",
            get(spec).put(put_spec).delete(delete_spec),
        )
}

/// Makes the default group type if there is none; returns it.
pub fn ensure_default_group_type(store: &Store) -> Result<GroupType, ApiError> {
    if let Some(t) = store.get_unique::<GroupType>(DEFAULT_GROUP_TYPE)? {
        return Ok(t);
    }
    store.write(|tx| {
        let t = GroupType {
            id: uuid::Uuid::new_v4().to_string(),
            name: DEFAULT_GROUP_TYPE.into(),
            description: Some("Default group type".into()),
            is_public: true,
            group_specs: BTreeMap::new(),
            created_us: crate::timeutil::now_us(),
        };
        // Two first callers at once: the second finds the first's.
        if let Some(id) = tx.unique_holder(&t)?
            && let Some(existing) = tx.get::<GroupType>(&id)?
        {
            return Ok(existing);
        }
        tx.insert(&t)?;
        Ok(t)
    })
}

/// Cinder's group type view; group specs only for admins (the
/// `group:group_types_specs` policy).
pub(crate) fn render(ctx: &VCtx, t: &GroupType) -> Value {
    let mut out = json!({
        "id": t.id,
        "name": t.name,
        "description": t.description,
        "is_public": t.is_public,
    });
    if ctx.is_admin() {
        out["group_specs"] = json!(t.group_specs);
    }
    out
}

/// A group type by id or name that the caller may see (a 404 otherwise).
pub(crate) fn find(tx: &Tx, ctx: &VCtx, key: &str) -> Result<GroupType, ApiError> {
    let t = match tx.get::<GroupType>(key)? {
        Some(t) => Some(t),
        None => tx
            .list::<GroupType>(&StoreQuery::all())?
            .into_iter()
            .find(|t| t.name == key),
    };
    t.filter(|t| t.is_public || ctx.is_admin())
        .ok_or_else(|| not_found("Group type", key))
}

fn admin(ctx: &VCtx) -> Result<(), ApiError> {
    ctx.admin("group:group_types_manage")
}

fn specs_admin(ctx: &VCtx) -> Result<(), ApiError> {
    ctx.admin("group:group_types_specs")
}

fn bool_of(v: &Value) -> Result<bool, ApiError> {
    super::parse_bool(v).ok_or_else(|| {
        ApiError::bad_request(format!(
            "Invalid value '{v}' for is_public. Accepted values: True or False."
        ))
    })
}

fn specs_of(v: &Value) -> Result<BTreeMap<String, String>, ApiError> {
    super::metadata(v)
        .map_err(|e| ApiError::bad_request(e.message.replace("metadata", "group specs")))
}

async fn list(
    State(state): State<AppState>,
    ctx: VCtx,
    mv: Mv,
    Query(q): Query<HashMap<String, String>>,
) -> J {
    mv.require(MV_GROUP_TYPES)?;
    let mut p = super::paging(&q)?;
    if p.sort.is_empty() {
        p.sort = vec![("name".into(), false)];
    }
    blocking(move || {
        let want_public = match q.get("is_public").map(|s| s.to_ascii_lowercase()) {
            Some(s) if s == "none" && ctx.is_admin() => None,
            Some(s) => super::parse_bool(&Value::String(s)).or(Some(true)),
            None => Some(true),
        };
        let items: Vec<Value> = state
            .store
            .list::<GroupType>(&StoreQuery::all())?
            .iter()
            .filter(|t| t.is_public || ctx.is_admin())
            .filter(|t| want_public.is_none_or(|w| w == t.is_public))
            .map(|t| render(&ctx, t))
            .collect();
        Ok(axum::Json(json!({"group_types": super::page(items, &p)?})))
    })
    .await
}

async fn show(State(state): State<AppState>, ctx: VCtx, mv: Mv, Path(p): P) -> J {
    mv.require(MV_GROUP_TYPES)?;
    blocking(move || {
        let t = state.store.write(|tx| find(tx, &ctx, &param(&p, "id")))?;
        Ok(axum::Json(json!({"group_type": render(&ctx, &t)})))
    })
    .await
}

async fn show_default(State(state): State<AppState>, ctx: VCtx, mv: Mv) -> J {
    mv.require(MV_GROUP_TYPES)?;
    blocking(move || {
        let t = ensure_default_group_type(&state.store)?;
        Ok(axum::Json(json!({"group_type": render(&ctx, &t)})))
    })
    .await
}

async fn create(State(state): State<AppState>, ctx: VCtx, mv: Mv, raw: Bytes) -> Created {
    mv.require(MV_GROUP_TYPES)?;
    admin(&ctx)?;
    let b = body(&raw)?;
    let t = b
        .get("group_type")
        .filter(|t| t.is_object())
        .ok_or_else(|| {
            ApiError::bad_request("Missing required element 'group_type' in request body.")
        })?;
    let name = opt_str(t, "name", 255)?
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("Group type name can not be empty."))?;
    let description = opt_str(t, "description", 255)?;
    let is_public = match t.get("is_public") {
        None | Some(Value::Null) => true,
        Some(v) => bool_of(v)?,
    };
    let group_specs = match t.get("group_specs") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(v) => specs_of(v)?,
    };
    let gt = GroupType {
        id: uuid::Uuid::new_v4().to_string(),
        name: name.clone(),
        description,
        is_public,
        group_specs,
        created_us: crate::timeutil::now_us(),
    };
    blocking(move || {
        state.store.write(|tx| {
            if tx.unique_holder(&gt)?.is_some() {
                return Err(ApiError::conflict(format!(
                    "Group Type {name} already exists."
                )));
            }
            tx.insert(&gt)?;
            Ok(())
        })?;
        Ok((
            StatusCode::ACCEPTED,
            axum::Json(json!({"group_type": render(&ctx, &gt)})),
        ))
    })
    .await
}

async fn update(State(state): State<AppState>, ctx: VCtx, mv: Mv, Path(p): P, raw: Bytes) -> J {
    mv.require(MV_GROUP_TYPES)?;
    admin(&ctx)?;
    let b = body(&raw)?;
    let t = b
        .get("group_type")
        .filter(|t| t.is_object())
        .cloned()
        .ok_or_else(|| {
            ApiError::bad_request("Missing required element 'group_type' in request body.")
        })?;
    let name = opt_str(&t, "name", 255)?;
    let description = opt_str(&t, "description", 255)?;
    let is_public = match t.get("is_public") {
        None | Some(Value::Null) => None,
        Some(v) => Some(bool_of(v)?),
    };
    if name.is_none() && t.get("description").is_none() && is_public.is_none() {
        return Err(ApiError::bad_request(
            "Specify group type name, description or a combination thereof.",
        ));
    }
    blocking(move || {
        let t = state.store.write(|tx| {
            let mut gt = find(tx, &ctx, &param(&p, "id"))?;
            if let Some(n) = name {
                let n = n.trim().to_string();
                if n.is_empty() {
                    return Err(ApiError::bad_request("Group type name can not be empty."));
                }
                gt.name = n;
                if let Some(other) = tx.unique_holder(&gt)?
                    && other != gt.id
                {
                    return Err(ApiError::conflict(format!(
                        "Group Type {} already exists.",
                        gt.name
                    )));
                }
            }
            if t.get("description").is_some() {
                gt.description = description;
            }
            if let Some(b) = is_public {
                gt.is_public = b;
            }
            tx.update(&gt)?;
            Ok(gt)
        })?;
        Ok(axum::Json(json!({"group_type": render(&ctx, &t)})))
    })
    .await
}

async fn delete(
    State(state): State<AppState>,
    ctx: VCtx,
    mv: Mv,
    Path(p): P,
) -> Result<StatusCode, ApiError> {
    mv.require(MV_GROUP_TYPES)?;
    admin(&ctx)?;
    blocking(move || {
        state.store.write(|tx| {
            let t = find(tx, &ctx, &param(&p, "id"))?;
            if tx
                .list::<Group>(&StoreQuery::all())?
                .iter()
                .any(|g| g.group_type_id == t.id)
            {
                return Err(ApiError::bad_request(format!(
                    "Target group type {} is still in use by groups.",
                    t.id
                )));
            }
            tx.delete::<GroupType>(&t.id)?;
            Ok(())
        })
    })
    .await?;
    Ok(StatusCode::ACCEPTED)
}

/// Reads (admins only) a group type's specs.
fn read_type(
    state: &AppState,
    ctx: &VCtx,
    p: &HashMap<String, String>,
) -> Result<GroupType, ApiError> {
    specs_admin(ctx)?;
    state.store.write(|tx| find(tx, ctx, &param(p, "id")))
}

/// Changes a group type's specs (admins only).
fn change_specs(
    state: &AppState,
    ctx: &VCtx,
    p: &HashMap<String, String>,
    f: impl FnOnce(&mut GroupType) -> Result<(), ApiError>,
) -> Result<GroupType, ApiError> {
    specs_admin(ctx)?;
    state.store.write(|tx| {
        let mut t = find(tx, ctx, &param(p, "id"))?;
        f(&mut t)?;
        tx.update(&t)?;
        Ok(t)
    })
}

fn no_key(t: &GroupType, key: &str) -> ApiError {
    not_found(&format!("Group Type {} has no specs with key", t.id), key)
}

async fn specs(State(state): State<AppState>, ctx: VCtx, mv: Mv, Path(p): P) -> J {
    mv.require(MV_GROUP_TYPES)?;
    blocking(move || {
        let t = read_type(&state, &ctx, &p)?;
        Ok(axum::Json(json!({"group_specs": t.group_specs})))
    })
    .await
}

async fn spec(State(state): State<AppState>, ctx: VCtx, mv: Mv, Path(p): P) -> J {
    mv.require(MV_GROUP_TYPES)?;
    blocking(move || {
        let t = read_type(&state, &ctx, &p)?;
        let key = param(&p, "key");
        let v = t.group_specs.get(&key).ok_or_else(|| no_key(&t, &key))?;
        Ok(axum::Json(json!({ key: v })))
    })
    .await
}

async fn set_specs(
    State(state): State<AppState>,
    ctx: VCtx,
    mv: Mv,
    Path(p): P,
    raw: Bytes,
) -> Created {
    mv.require(MV_GROUP_TYPES)?;
    let b = body(&raw)?;
    let specs = specs_of(b.get("group_specs").ok_or_else(|| {
        ApiError::bad_request("Missing required element 'group_specs' in request body.")
    })?)?;
    blocking(move || {
        let s = specs.clone();
        change_specs(&state, &ctx, &p, |t| {
            t.group_specs.extend(s);
            Ok(())
        })?;
        Ok((
            StatusCode::ACCEPTED,
            axum::Json(json!({"group_specs": specs})),
        ))
    })
    .await
}

async fn put_spec(State(state): State<AppState>, ctx: VCtx, mv: Mv, Path(p): P, raw: Bytes) -> J {
    mv.require(MV_GROUP_TYPES)?;
    let specs = specs_of(&body(&raw)?)?;
    let key = param(&p, "key");
    if specs.len() != 1 || !specs.contains_key(&key) {
        return Err(ApiError::bad_request("Request body and URI mismatch"));
    }
    blocking(move || {
        let s = specs.clone();
        change_specs(&state, &ctx, &p, |t| {
            t.group_specs.extend(s);
            Ok(())
        })?;
        Ok(axum::Json(json!(specs)))
    })
    .await
}

async fn delete_spec(
    State(state): State<AppState>,
    ctx: VCtx,
    mv: Mv,
    Path(p): P,
) -> Result<StatusCode, ApiError> {
    mv.require(MV_GROUP_TYPES)?;
    blocking(move || {
        let key = param(&p, "key");
        change_specs(&state, &ctx, &p, |t| {
            t.group_specs
                .remove(&key)
                .map(|_| ())
                .ok_or_else(|| no_key(t, &key))
        })?;
        Ok(StatusCode::ACCEPTED)
    })
    .await
}
