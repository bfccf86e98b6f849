//! `/v3/domains`.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use stratus_store::{Query as Q, Tx};

use super::model::*;
use super::policy::Ctx;
use super::{Obj, conflict_as, filter, list_body, new_id, self_link};
use crate::json::Json;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/domains", get(list).post(create))
        .route("/domains/{id}", get(show).patch(update).delete(remove))
}

pub fn view(state: &AppState, d: &Domain) -> Value {
    json!({
        "id": d.id,
        "name": d.name,
        "description": d.description,
        "enabled": d.enabled,
        "tags": d.tags,
        "options": d.options,
        "links": self_link(state, &format!("domains/{}", d.id)),
    })
}

async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    let all = state.store.list::<Domain>(&Q::all())?;
    let visible: Vec<Domain> = if ctx.system_reader() {
        all
    } else {
        // Others see the domains their token is about.
        let mine = [ctx.user.domain_id.as_str()];
        all.into_iter()
            .filter(|d| {
                mine.contains(&d.id.as_str())
                    || ctx.domain.as_ref().is_some_and(|x| x.id == d.id)
                    || ctx.project_domain.as_ref().is_some_and(|x| x.id == d.id)
            })
            .collect()
    };
    let items = visible.iter().map(|d| view(&state, d)).collect();
    Ok(list_body(&state, "domains", "domains", filter(items, &q)))
}

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(body): Json<Value>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    ctx.require_admin("identity:create_domain")?;
    let o = Obj::from_body(body, "domain")?;
    let name = o.name_max("name", 64)?.ok_or_else(|| {
        ApiError::bad_request("Invalid input for field 'domain': 'name' is a required property.")
    })?;
    let d = Domain {
        id: o.str("explicit_domain_id")?.unwrap_or_else(new_id),
        name: name.clone(),
        description: o.str("description")?.unwrap_or_default(),
        enabled: o.bool("enabled")?.unwrap_or(true),
        tags: o.tags()?.unwrap_or_default(),
        options: o.object("options")?.unwrap_or_default(),
    };
    state.identity_write(|tx| tx.insert(&d).map_err(conflict_as("domain", &name)))?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"domain": view(&state, &d)})),
    ))
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let d = state.store.fetch::<Domain>(&id)?;
    ctx.allow(
        ctx.system_reader()
            || ctx.user.domain_id == id
            || ctx.domain.as_ref().is_some_and(|x| x.id == id)
            || ctx.project_domain.as_ref().is_some_and(|x| x.id == id),
        "identity:get_domain",
    )?;
    Ok(axum::Json(json!({"domain": view(&state, &d)})))
}

async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<axum::Json<Value>, ApiError> {
    ctx.require_admin("identity:update_domain")?;
    let o = Obj::from_body(body, "domain")?;
    let d = state.identity_write(|tx| update_in(tx, &id, &o))?;
    Ok(axum::Json(json!({"domain": view(&state, &d)})))
}

async fn remove(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    ctx.require_admin("identity:delete_domain")?;
    state.identity_write(|tx| super::cascade::delete_domain(tx, &id))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Applies a domain update (`{"domain": ...}`, or a project acting as a
/// domain) to the stored domain `id`.
pub fn update_in(tx: &Tx, id: &str, o: &Obj) -> Result<Domain, ApiError> {
    let mut d = tx.fetch::<Domain>(id)?;
    if let Some(n) = o.name_max("name", 64)? {
        d.name = n;
    }
    if o.has("description") {
        d.description = o.str("description")?.unwrap_or_default();
    }
    if let Some(e) = o.bool("enabled")? {
        d.enabled = e;
    }
    if let Some(t) = o.tags()? {
        d.tags = t;
    }
    if let Some(opts) = o.object("options")? {
        d.options.extend(opts);
    }
    let name = d.name.clone();
    tx.update(&d).map_err(conflict_as("domain", &name))?;
    Ok(d)
}
