//! OS-EP-FILTER: endpoint groups (`/v3/OS-EP-FILTER/endpoint_groups`),
//! their association with projects, and direct project↔endpoint
//! associations. As with Keystone's default `sql` catalog driver, the
//! associations are recorded and listed but do not filter token catalogs.
//! Admins write; admins and system readers read.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Map, Value, json};
use stratus_store::Query as Q;

use super::catalog::endpoint_view;
use super::model::*;
use super::policy::Ctx;
use super::{Obj, filter, list_body, new_id, self_link};
use crate::json::Json;
use crate::{ApiError, AppState};

const PREFIX: &str = "OS-EP-FILTER";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/OS-EP-FILTER/endpoint_groups", get(list).post(create))
        .route(
            "/OS-EP-FILTER/endpoint_groups/{id}",
            get(show).patch(update).delete(remove),
        )
        .route(
            "/OS-EP-FILTER/endpoint_groups/{id}/projects",
            get(group_projects),
        )
        .route(
            "/OS-EP-FILTER/endpoint_groups/{id}/projects/{project_id}",
            get(show_group_project)
                .put(add_group_project)
                .delete(remove_group_project),
        )
        .route(
            "/OS-EP-FILTER/endpoint_groups/{id}/endpoints",
            get(group_endpoints),
        )
        .route(
            "/OS-EP-FILTER/projects/{project_id}/endpoint_groups",
            get(project_groups),
        )
        .route(
            "/OS-EP-FILTER/projects/{project_id}/endpoints",
            get(project_endpoints),
        )
        .route(
            "/OS-EP-FILTER/projects/{project_id}/endpoints/{endpoint_id}",
            get(check_project_endpoint)
                .put(add_project_endpoint)
                .delete(remove_project_endpoint),
        )
        .route(
            "/OS-EP-FILTER/endpoints/{endpoint_id}/projects",
            get(endpoint_projects),
        )
}

fn view(state: &AppState, g: &EndpointGroup) -> Value {
    json!({
        "id": g.id,
        "name": g.name,
        "description": g.description,
        "filters": g.filters,
        "links": self_link(state, &format!("{PREFIX}/endpoint_groups/{}", g.id)),
    })
}

fn may_read(ctx: &Ctx, action: &str) -> Result<(), ApiError> {
    ctx.allow(ctx.system_reader(), action)
}

/// Refuses attributes an endpoint group does not have (Keystone's schema
/// has `additionalProperties: false`).
fn only_known(o: &Obj) -> Result<(), ApiError> {
    let extra = o.extra(&["name", "description", "filters"]);
    if let Some(k) = extra.keys().next() {
        return Err(ApiError::bad_request(format!(
            "Invalid input for field 'endpoint_group': additional property '{k}' is not allowed."
        )));
    }
    Ok(())
}

/// Checks `filters`: a non-empty object of `service_id`, `region_id` and
/// `interface` only.
fn check_filters(f: &Map<String, Value>) -> Result<(), ApiError> {
    if f.is_empty() {
        return Err(ApiError::bad_request(
            "filters field is required and cannot be empty",
        ));
    }
    for (k, v) in f {
        let ok = match k.as_str() {
            "service_id" => v.is_string(),
            "region_id" => v.is_string() || v.is_null(),
            "interface" => matches!(v.as_str(), Some("public" | "internal" | "admin")),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "Invalid filter '{k}' for endpoint_group: expecting service_id or region_id or interface."
                )));
            }
        };
        if !ok {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field 'endpoint_group.filters.{k}'."
            )));
        }
    }
    Ok(())
}

/// Does `e` pass every filter of `g`?
fn selects(g: &EndpointGroup, e: &Endpoint) -> bool {
    g.filters.iter().all(|(k, v)| match k.as_str() {
        "service_id" => v.as_str() == Some(e.service_id.as_str()),
        "region_id" => v.as_str() == e.region_id.as_deref(),
        "interface" => v.as_str() == Some(e.interface.as_str()),
        _ => false,
    })
}

async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    may_read(&ctx, "identity:list_endpoint_groups")?;
    let items = state
        .store
        .list::<EndpointGroup>(&Q::all())?
        .iter()
        .map(|g| view(&state, g))
        .collect();
    Ok(list_body(
        &state,
        "endpoint_groups",
        &format!("{PREFIX}/endpoint_groups"),
        filter(items, &q),
    ))
}

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(body): Json<Value>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    ctx.require_admin("identity:create_endpoint_group")?;
    let o = Obj::from_body(body, "endpoint_group")?;
    only_known(&o)?;
    let name = o.name("name")?.ok_or_else(|| {
        ApiError::bad_request(
            "Invalid input for field 'endpoint_group': 'name' is a required property.",
        )
    })?;
    let filters = o.object("filters")?.unwrap_or_default();
    check_filters(&filters)?;
    let g = EndpointGroup {
        id: new_id(),
        name,
        description: o.str("description")?,
        filters,
    };
    state.identity_write(|tx| Ok(tx.insert(&g)?))?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"endpoint_group": view(&state, &g)})),
    ))
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    may_read(&ctx, "identity:get_endpoint_group")?;
    let g = state.store.fetch::<EndpointGroup>(&id)?;
    Ok(axum::Json(json!({"endpoint_group": view(&state, &g)})))
}

async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<axum::Json<Value>, ApiError> {
    ctx.require_admin("identity:update_endpoint_group")?;
    let o = Obj::from_body(body, "endpoint_group")?;
    o.require_some()?;
    only_known(&o)?;
    let g = state.identity_write(|tx| {
        let mut g = tx.fetch::<EndpointGroup>(&id)?;
        if let Some(n) = o.name("name")? {
            g.name = n;
        }
        if o.has("description") {
            g.description = o.str("description")?;
        }
        if let Some(f) = o.object("filters")? {
            check_filters(&f)?;
            g.filters = f;
        }
        tx.update(&g)?;
        Ok(g)
    })?;
    Ok(axum::Json(json!({"endpoint_group": view(&state, &g)})))
}

async fn remove(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    ctx.require_admin("identity:delete_endpoint_group")?;
    state.identity_write(|tx| {
        for a in tx.list::<ProjectEndpointGroup>(&Q::parent(&id))? {
            tx.delete::<ProjectEndpointGroup>(&a.id)?;
        }
        if !tx.delete::<EndpointGroup>(&id)? {
            return Err(ApiError::not_found("endpoint group", &id));
        }
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- endpoint groups and projects ---------------------------------------------

fn projects_body(
    state: &AppState,
    path: &str,
    ids: &[String],
) -> Result<axum::Json<Value>, ApiError> {
    let mut items = Vec::new();
    for id in ids {
        if let Some(p) = state.store.get::<Project>(id)? {
            items.push(super::projects::view(state, &p));
        }
    }
    Ok(list_body(state, "projects", path, items))
}

fn endpoints_body(state: &AppState, path: &str, eps: &[Endpoint]) -> axum::Json<Value> {
    let items = eps.iter().map(|e| endpoint_view(state, e)).collect();
    list_body(state, "endpoints", path, items)
}

async fn group_projects(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    may_read(
        &ctx,
        "identity:list_projects_associated_with_endpoint_group",
    )?;
    state.store.fetch::<EndpointGroup>(&id)?;
    let ids: Vec<String> = state
        .store
        .list::<ProjectEndpointGroup>(&Q::parent(&id))?
        .into_iter()
        .map(|a| a.project_id)
        .collect();
    projects_body(
        &state,
        &format!("{PREFIX}/endpoint_groups/{id}/projects"),
        &ids,
    )
}

fn group_project_view(state: &AppState, group_id: &str, project_id: &str) -> Value {
    json!({"project_endpoint_group": {
        "endpoint_group_id": group_id,
        "project_id": project_id,
        "links": self_link(state, &format!("{PREFIX}/endpoint_groups/{group_id}/projects/{project_id}")),
    }})
}

async fn show_group_project(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, project_id)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    may_read(&ctx, "identity:get_endpoint_group_in_project")?;
    state.store.fetch::<Project>(&project_id)?;
    state.store.fetch::<EndpointGroup>(&id)?;
    if state
        .store
        .get::<ProjectEndpointGroup>(&ProjectEndpointGroup::new(&id, &project_id).id)?
        .is_none()
    {
        return Err(ApiError::not_found(
            "endpoint group project association",
            &format!("{id} in {project_id}"),
        ));
    }
    Ok(axum::Json(group_project_view(&state, &id, &project_id)))
}

async fn add_group_project(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, project_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    ctx.require_admin("identity:add_endpoint_group_to_project")?;
    state.identity_write(|tx| {
        tx.fetch::<Project>(&project_id)?;
        tx.fetch::<EndpointGroup>(&id)?;
        tx.upsert(&ProjectEndpointGroup::new(&id, &project_id))?;
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove_group_project(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, project_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    ctx.require_admin("identity:remove_endpoint_group_from_project")?;
    state.identity_write(|tx| {
        tx.fetch::<Project>(&project_id)?;
        tx.fetch::<EndpointGroup>(&id)?;
        if !tx.delete::<ProjectEndpointGroup>(&ProjectEndpointGroup::new(&id, &project_id).id)? {
            return Err(ApiError::not_found(
                "endpoint group project association",
                &format!("{id} in {project_id}"),
            ));
        }
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn group_endpoints(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    may_read(
        &ctx,
        "identity:list_endpoints_associated_with_endpoint_group",
    )?;
    let g = state.store.fetch::<EndpointGroup>(&id)?;
    let eps: Vec<Endpoint> = state
        .store
        .list::<Endpoint>(&Q::all())?
        .into_iter()
        .filter(|e| selects(&g, e))
        .collect();
    Ok(endpoints_body(
        &state,
        &format!("{PREFIX}/endpoint_groups/{id}/endpoints"),
        &eps,
    ))
}

async fn project_groups(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(project_id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    may_read(&ctx, "identity:list_endpoint_groups_for_project")?;
    state.store.fetch::<Project>(&project_id)?;
    let mut items = Vec::new();
    for a in state
        .store
        .list::<ProjectEndpointGroup>(&Q::owner(&project_id))?
    {
        if let Some(g) = state.store.get::<EndpointGroup>(&a.endpoint_group_id)? {
            items.push(view(&state, &g));
        }
    }
    Ok(list_body(
        &state,
        "endpoint_groups",
        &format!("{PREFIX}/projects/{project_id}/endpoint_groups"),
        items,
    ))
}

// ---- projects and endpoints ------------------------------------------------------

/// The endpoints of a project: those associated directly and those its
/// endpoint groups select.
async fn project_endpoints(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(project_id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    may_read(&ctx, "identity:list_endpoints_for_project")?;
    state.store.fetch::<Project>(&project_id)?;
    let direct: Vec<String> = state
        .store
        .list::<ProjectEndpoint>(&Q::owner(&project_id))?
        .into_iter()
        .map(|a| a.endpoint_id)
        .collect();
    let mut groups = Vec::new();
    for a in state
        .store
        .list::<ProjectEndpointGroup>(&Q::owner(&project_id))?
    {
        if let Some(g) = state.store.get::<EndpointGroup>(&a.endpoint_group_id)? {
            groups.push(g);
        }
    }
    let eps: Vec<Endpoint> = state
        .store
        .list::<Endpoint>(&Q::all())?
        .into_iter()
        .filter(|e| direct.contains(&e.id) || groups.iter().any(|g| selects(g, e)))
        .collect();
    Ok(endpoints_body(
        &state,
        &format!("{PREFIX}/projects/{project_id}/endpoints"),
        &eps,
    ))
}

fn association_missing(project_id: &str, endpoint_id: &str) -> ApiError {
    ApiError::not_found(
        "project endpoint",
        &format!("{endpoint_id} in {project_id}"),
    )
}

async fn check_project_endpoint(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((project_id, endpoint_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    may_read(&ctx, "identity:check_endpoint_in_project")?;
    state.store.fetch::<Endpoint>(&endpoint_id)?;
    state.store.fetch::<Project>(&project_id)?;
    if state
        .store
        .get::<ProjectEndpoint>(&ProjectEndpoint::new(&project_id, &endpoint_id).id)?
        .is_none()
    {
        return Err(association_missing(&project_id, &endpoint_id));
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn add_project_endpoint(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((project_id, endpoint_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    ctx.require_admin("identity:add_endpoint_to_project")?;
    state.identity_write(|tx| {
        tx.fetch::<Endpoint>(&endpoint_id)?;
        tx.fetch::<Project>(&project_id)?;
        tx.upsert(&ProjectEndpoint::new(&project_id, &endpoint_id))?;
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove_project_endpoint(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((project_id, endpoint_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    ctx.require_admin("identity:remove_endpoint_from_project")?;
    state.identity_write(|tx| {
        if !tx.delete::<ProjectEndpoint>(&ProjectEndpoint::new(&project_id, &endpoint_id).id)? {
            return Err(association_missing(&project_id, &endpoint_id));
        }
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn endpoint_projects(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(endpoint_id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    may_read(&ctx, "identity:list_projects_for_endpoint")?;
    state.store.fetch::<Endpoint>(&endpoint_id)?;
    let ids: Vec<String> = state
        .store
        .list::<ProjectEndpoint>(&Q::parent(&endpoint_id))?
        .into_iter()
        .map(|a| a.project_id)
        .collect();
    projects_body(
        &state,
        &format!("{PREFIX}/endpoints/{endpoint_id}/projects"),
        &ids,
    )
}
