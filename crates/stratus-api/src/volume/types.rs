//! Volume types (`/types`): CRUD, extra specs, access for private types
//! (`os-volume-type-access`) and the default type `__DEFAULT__`.
//! Admins manage types; everyone reads the public ones and the private
//! ones shared with their project.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use stratus_store::{Query as StoreQuery, Store, Tx};

use super::model::{Volume, VolumeType};
use super::{VCtx, blocking, body, not_found, opt_str, param};
use crate::{ApiError, AppState};

/// The name of the type volumes get when none is asked for.
pub const DEFAULT_TYPE: &str = "__DEFAULT__";

type P = Path<HashMap<String, String>>;
type J = Result<axum::Json<Value>, ApiError>;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/types", get(list).post(create))
        .route("/types/default", get(show_default))
        .route("/types/{id}", get(show).put(update).delete(delete))
        .route("/types/{id}/extra_specs", get(specs).post(set_specs))
        .route(
            "/types/{id}/extra_specs/{key}",
            get(spec).put(put_spec).delete(delete_spec),
        )
        .route("/types/{id}/os-volume-type-access", get(access))
        .route("/types/{id}/action", axum::routing::post(action))
}

/// Makes the default volume type if there is none (as Cinder's database
/// migration does).
pub fn ensure_default_type(store: &Store) -> Result<(), ApiError> {
    if store
        .get_unique::<VolumeType>(&DEFAULT_TYPE.to_lowercase())?
        .is_some()
    {
        return Ok(());
    }
    store.write(|tx| {
        tx.insert(&VolumeType {
            id: uuid::Uuid::new_v4().to_string(),
            name: DEFAULT_TYPE.into(),
            description: Some("Default Volume Type".into()),
            is_public: true,
            extra_specs: Default::default(),
            projects: vec![],
            qos_specs_id: None,
            encryption: None,
            created_us: crate::timeutil::now_us(),
        })?;
        Ok::<_, ApiError>(())
    })
}

pub(crate) fn render(t: &VolumeType) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "description": t.description,
        "is_public": t.is_public,
        "os-volume-type-access:is_public": t.is_public,
        "extra_specs": t.extra_specs,
        "qos_specs_id": t.qos_specs_id,
    })
}

/// Cinder's answer to a type create (no QoS id) or update (nor the
/// access extension's field).
fn render_changed(t: &VolumeType, update: bool) -> Value {
    let mut v = render(t);
    if let Some(o) = v.as_object_mut() {
        o.remove("qos_specs_id");
        if update {
            o.remove("os-volume-type-access:is_public");
        }
    }
    v
}

/// Whether the caller may see `t`.
pub(crate) fn visible(ctx: &VCtx, t: &VolumeType) -> bool {
    t.is_public
        || ctx.is_admin()
        || ctx
            .project_id()
            .is_some_and(|p| t.projects.iter().any(|x| x == p))
}

/// A type by id or name that the caller may see (a 404 otherwise).
pub(crate) fn find(tx: &Tx, ctx: &VCtx, key: &str) -> Result<VolumeType, ApiError> {
    let t = match tx.get::<VolumeType>(key)? {
        Some(t) => Some(t),
        None => tx
            .list::<VolumeType>(&StoreQuery::all())?
            .into_iter()
            .find(|t| t.name == key),
    };
    t.filter(|t| visible(ctx, t))
        .ok_or_else(|| not_found("Volume type", key))
}

fn type_id(p: &HashMap<String, String>) -> String {
    param(p, "id")
}

async fn list(
    State(state): State<AppState>,
    ctx: VCtx,
    mv: super::Mv,
    Query(q): Query<HashMap<String, String>>,
) -> J {
    // 3.52: types whose extra specs include these.
    let spec_filter = match q.get("extra_specs") {
        Some(m) if mv.at_least(52) => {
            let fixed = m.replace('\'', "\"");
            let v: Value = serde_json::from_str(&fixed)
                .map_err(|_| ApiError::bad_request(format!("Invalid extra_specs filter: {m}")))?;
            Some(super::metadata(&v)?)
        }
        _ => None,
    };
    blocking(move || {
        let want_public = match q.get("is_public").map(|s| s.to_ascii_lowercase()) {
            Some(s) if s == "none" && ctx.is_admin() => None,
            Some(s) => super::parse_bool(&Value::String(s)).or(Some(true)),
            None => Some(true),
        };
        let items: Vec<Value> = state
            .store
            .list::<VolumeType>(&StoreQuery::all())?
            .iter()
            .filter(|t| visible(&ctx, t))
            .filter(|t| {
                spec_filter
                    .as_ref()
                    .is_none_or(|m| m.iter().all(|(k, x)| t.extra_specs.get(k) == Some(x)))
            })
            .filter(|t| match want_public {
                // Cinder: a member listing public types also sees the
                // private ones shared with them.
                Some(true) => t.is_public || !ctx.is_admin(),
                Some(false) => !t.is_public,
                None => true,
            })
            .map(render)
            .collect();
        let p = super::paging(&q)?;
        let mut p = p;
        if p.sort.is_empty() {
            p.sort = vec![("name".into(), false)];
        }
        Ok(axum::Json(json!({"volume_types": super::page(items, &p)?})))
    })
    .await
}

async fn show(State(state): State<AppState>, ctx: VCtx, Path(p): P) -> J {
    blocking(move || {
        let t = state.store.write(|tx| find(tx, &ctx, &type_id(&p)))?;
        Ok(axum::Json(json!({"volume_type": render(&t)})))
    })
    .await
}

async fn show_default(State(state): State<AppState>, _ctx: VCtx) -> J {
    blocking(move || {
        let t = state
            .store
            .get_unique::<VolumeType>(&DEFAULT_TYPE.to_lowercase())?
            .ok_or_else(|| not_found("Default volume type", DEFAULT_TYPE))?;
        Ok(axum::Json(json!({"volume_type": render(&t)})))
    })
    .await
}

fn specs_of(v: &Value) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
    super::metadata(v)
        .map_err(|e| ApiError::bad_request(e.message.replace("metadata", "extra specs")))
}

async fn create(
    State(state): State<AppState>,
    ctx: VCtx,
    raw: Bytes,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    ctx.admin("volume_extension:types_manage")?;
    let b = body(&raw)?;
    let t = b
        .get("volume_type")
        .filter(|t| t.is_object())
        .ok_or_else(|| {
            ApiError::bad_request("Missing required element 'volume_type' in request body.")
        })?;
    let name = opt_str(t, "name", 255)?
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("Volume type name can not be empty."))?;
    let description = opt_str(t, "description", 255)?;
    let is_public = match t
        .get("os-volume-type-access:is_public")
        .or(t.get("is_public"))
    {
        None | Some(Value::Null) => true,
        Some(v) => super::parse_bool(v).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid value '{v}' for is_public. Accepted values: True or False."
            ))
        })?,
    };
    let extra_specs = match t.get("extra_specs") {
        None | Some(Value::Null) => Default::default(),
        Some(v) => specs_of(v)?,
    };
    let vt = VolumeType {
        id: uuid::Uuid::new_v4().to_string(),
        name: name.clone(),
        description,
        is_public,
        extra_specs,
        projects: vec![],
        qos_specs_id: None,
        encryption: None,
        created_us: crate::timeutil::now_us(),
    };
    blocking(move || {
        state.store.write(|tx| {
            if tx.unique_holder(&vt)?.is_some() {
                return Err(ApiError::conflict(format!(
                    "Volume Type {name} already exists."
                )));
            }
            tx.insert(&vt)?;
            Ok(())
        })?;
        Ok((
            StatusCode::OK,
            axum::Json(json!({"volume_type": render_changed(&vt, false)})),
        ))
    })
    .await
}

async fn update(State(state): State<AppState>, ctx: VCtx, Path(p): P, raw: Bytes) -> J {
    ctx.admin("volume_extension:types_manage")?;
    let b = body(&raw)?;
    let t = b
        .get("volume_type")
        .filter(|t| t.is_object())
        .cloned()
        .ok_or_else(|| {
            ApiError::bad_request("Missing required element 'volume_type' in request body.")
        })?;
    let name = opt_str(&t, "name", 255)?;
    let description = opt_str(&t, "description", 255)?;
    let is_public = match t.get("is_public") {
        None | Some(Value::Null) => None,
        Some(v) => Some(super::parse_bool(v).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid value '{v}' for is_public. Accepted values: True or False."
            ))
        })?),
    };
    if name.is_none() && description.is_none() && is_public.is_none() {
        return Err(ApiError::bad_request(
            "Specify volume type name, description, is_public or a combination thereof.",
        ));
    }
    blocking(move || {
        let t = state.store.write(|tx| {
            let mut t = find(tx, &ctx, &type_id(&p))?;
            if let Some(n) = name {
                let n = n.trim().to_string();
                if n.is_empty() {
                    return Err(ApiError::bad_request("Volume type name can not be empty."));
                }
                if t.name == DEFAULT_TYPE && n != t.name {
                    return Err(ApiError::bad_request(
                        "The default volume type cannot be renamed.",
                    ));
                }
                t.name = n;
                if let Some(other) = tx.unique_holder(&t)?
                    && other != t.id
                {
                    return Err(ApiError::conflict(format!(
                        "Volume Type {} already exists.",
                        t.name
                    )));
                }
            }
            if description.is_some() {
                t.description = description;
            }
            if let Some(b) = is_public {
                t.is_public = b;
            }
            tx.update(&t)?;
            Ok(t)
        })?;
        Ok(axum::Json(json!({"volume_type": render_changed(&t, true)})))
    })
    .await
}

async fn delete(
    State(state): State<AppState>,
    ctx: VCtx,
    Path(p): P,
) -> Result<StatusCode, ApiError> {
    ctx.admin("volume_extension:types_manage")?;
    blocking(move || {
        state.store.write(|tx| {
            let t = find(tx, &ctx, &type_id(&p))?;
            if t.name == DEFAULT_TYPE {
                return Err(ApiError::bad_request(
                    "Default volume type can not be deleted.",
                ));
            }
            if tx
                .list::<Volume>(&StoreQuery::all())?
                .iter()
                .any(|v| v.volume_type_id == t.id)
            {
                return Err(ApiError::bad_request(format!(
                    "Target volume type is still in use: volume type {} has volumes.",
                    t.id
                )));
            }
            if let Some(d) = tx
                .list::<super::model::DefaultType>(&StoreQuery::all())?
                .into_iter()
                .find(|d| d.volume_type_id == t.id)
            {
                return Err(ApiError::bad_request(format!(
                    "Unable to delete volume type {}: it is the default volume type of project {} (3.62 default-types).",
                    t.id, d.id
                )));
            }
            tx.delete::<VolumeType>(&t.id)?;
            Ok(())
        })
    })
    .await?;
    Ok(StatusCode::ACCEPTED)
}

async fn specs(State(state): State<AppState>, ctx: VCtx, Path(p): P) -> J {
    blocking(move || {
        let t = state.store.write(|tx| find(tx, &ctx, &type_id(&p)))?;
        Ok(axum::Json(json!({"extra_specs": t.extra_specs})))
    })
    .await
}

async fn spec(State(state): State<AppState>, ctx: VCtx, Path(p): P) -> J {
    blocking(move || {
        let t = state.store.write(|tx| find(tx, &ctx, &type_id(&p)))?;
        let key = param(&p, "key");
        let v = t.extra_specs.get(&key).ok_or_else(|| {
            not_found(
                &format!("Volume Type {} has no extra specs with key", t.id),
                &key,
            )
        })?;
        Ok(axum::Json(json!({ key: v })))
    })
    .await
}

/// Changes a type's extra specs (admins only); refused for a type in use
/// by volumes only in Cinder's stricter modes, so allowed here.
fn change_specs(
    state: &AppState,
    ctx: &VCtx,
    p: &HashMap<String, String>,
    f: impl FnOnce(&mut VolumeType) -> Result<(), ApiError>,
) -> Result<VolumeType, ApiError> {
    ctx.admin("volume_extension:types_extra_specs:create")?;
    state.store.write(|tx| {
        let mut t = find(tx, ctx, &type_id(p))?;
        f(&mut t)?;
        tx.update(&t)?;
        Ok(t)
    })
}

async fn set_specs(State(state): State<AppState>, ctx: VCtx, Path(p): P, raw: Bytes) -> J {
    let b = body(&raw)?;
    let specs = specs_of(b.get("extra_specs").ok_or_else(|| {
        ApiError::bad_request("Missing required element 'extra_specs' in request body.")
    })?)?;
    blocking(move || {
        let s = specs.clone();
        change_specs(&state, &ctx, &p, |t| {
            t.extra_specs.extend(s);
            Ok(())
        })?;
        Ok(axum::Json(json!({"extra_specs": specs})))
    })
    .await
}

async fn put_spec(State(state): State<AppState>, ctx: VCtx, Path(p): P, raw: Bytes) -> J {
    let b = body(&raw)?;
    let key = param(&p, "key");
    let specs = specs_of(&b)?;
    if specs.len() != 1 || !specs.contains_key(&key) {
        return Err(ApiError::bad_request("Request body and URI mismatch"));
    }
    blocking(move || {
        let s = specs.clone();
        change_specs(&state, &ctx, &p, |t| {
            t.extra_specs.extend(s);
            Ok(())
        })?;
        Ok(axum::Json(serde_json::to_value(&specs).unwrap_or_default()))
    })
    .await
}

async fn delete_spec(
    State(state): State<AppState>,
    ctx: VCtx,
    Path(p): P,
) -> Result<StatusCode, ApiError> {
    blocking(move || {
        let key = param(&p, "key");
        change_specs(&state, &ctx, &p, |t| {
            t.extra_specs.remove(&key).map(|_| ()).ok_or_else(|| {
                not_found(
                    &format!("Volume Type {} has no extra specs with key", t.id),
                    &key,
                )
            })
        })?;
        Ok(StatusCode::ACCEPTED)
    })
    .await
}

async fn access(State(state): State<AppState>, ctx: VCtx, Path(p): P) -> J {
    ctx.admin("volume_extension:volume_type_access")?;
    blocking(move || {
        let t = state.store.write(|tx| find(tx, &ctx, &type_id(&p)))?;
        if t.is_public {
            return Err(ApiError::not_found(
                "volume type access",
                &format!(
                    "{}: access list is not available for public volume types",
                    t.id
                ),
            ));
        }
        let list: Vec<Value> = t
            .projects
            .iter()
            .map(|pr| json!({"volume_type_id": t.id, "project_id": pr}))
            .collect();
        Ok(axum::Json(json!({"volume_type_access": list})))
    })
    .await
}

async fn action(
    State(state): State<AppState>,
    ctx: VCtx,
    Path(p): P,
    raw: Bytes,
) -> Result<StatusCode, ApiError> {
    ctx.admin("volume_extension:volume_type_access:addProjectAccess")?;
    let b = body(&raw)?;
    let (add, project) = if let Some(a) = b.get("addProjectAccess") {
        (
            true,
            a.get("project").and_then(Value::as_str).map(str::to_string),
        )
    } else if let Some(a) = b.get("removeProjectAccess") {
        (
            false,
            a.get("project").and_then(Value::as_str).map(str::to_string),
        )
    } else {
        return Err(ApiError::bad_request(
            "Invalid request body: no known action.",
        ));
    };
    let project =
        project.ok_or_else(|| ApiError::bad_request("Access list requires a project."))?;
    blocking(move || {
        state.store.write(|tx| {
            let mut t = find(tx, &ctx, &type_id(&p))?;
            if t.is_public {
                return Err(ApiError::bad_request(
                    "Invalid volume type: access cannot be set on a public volume type.",
                ));
            }
            let has = t.projects.contains(&project);
            match (add, has) {
                (true, true) => {
                    return Err(ApiError::conflict(format!(
                        "Volume type access for {} / {project} combination already exists.",
                        t.id
                    )));
                }
                (false, false) => {
                    return Err(ApiError::not_found(
                        "volume type access",
                        &format!("{} / {project}", t.id),
                    ));
                }
                (true, false) => t.projects.push(project.clone()),
                (false, true) => t.projects.retain(|x| *x != project),
            }
            tx.update(&t)?;
            Ok(())
        })
    })
    .await?;
    Ok(StatusCode::ACCEPTED)
}
