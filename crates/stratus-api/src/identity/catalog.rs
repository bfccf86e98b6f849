//! The service catalog's parts: `/v3/regions`, `/v3/services`, `/v3/endpoints`.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use stratus_store::Query as Q;

use super::model::*;
use super::policy::Ctx;
use super::{Obj, filter, list_body, new_id, self_link};
use crate::json::Json;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/regions", get(list_regions).post(create_region))
        .route(
            "/regions/{id}",
            get(show_region)
                .put(put_region)
                .patch(update_region)
                .delete(delete_region),
        )
        .route("/services", get(list_services).post(create_service))
        .route(
            "/services/{id}",
            get(show_service)
                .patch(update_service)
                .delete(delete_service),
        )
        .route("/endpoints", get(list_endpoints).post(create_endpoint))
        .route(
            "/endpoints/{id}",
            get(show_endpoint)
                .patch(update_endpoint)
                .delete(delete_endpoint),
        )
}

// ---- regions -------------------------------------------------------------------

fn region_view(state: &AppState, r: &Region) -> Value {
    json!({
        "id": r.id,
        "description": r.description,
        "parent_region_id": r.parent_region_id,
        "links": self_link(state, &format!("regions/{}", r.id)),
    })
}

async fn list_regions(
    State(state): State<AppState>,
    _ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    let items = state
        .store
        .list::<Region>(&Q::all())?
        .iter()
        .map(|r| region_view(&state, r))
        .collect();
    Ok(list_body(&state, "regions", "regions", filter(items, &q)))
}

async fn show_region(
    State(state): State<AppState>,
    _ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let r = state.store.fetch::<Region>(&id)?;
    Ok(axum::Json(json!({"region": region_view(&state, &r)})))
}

fn region_from(state: &AppState, o: &Obj, id: String) -> Result<Region, ApiError> {
    let parent = o.str("parent_region_id")?;
    if let Some(p) = &parent
        && state.store.get::<Region>(p)?.is_none()
    {
        return Err(ApiError::not_found("region", p));
    }
    if id.is_empty() || id.len() > 255 {
        return Err(ApiError::bad_request(
            "Invalid input for field 'region.id'.",
        ));
    }
    Ok(Region {
        id,
        description: o.str("description")?.unwrap_or_default(),
        parent_region_id: parent,
    })
}

async fn create_region(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(body): Json<Value>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    ctx.require_admin("identity:create_region")?;
    let o = Obj::from_body(body, "region")?;
    let id = o.str("id").ok().flatten().unwrap_or_else(new_id);
    let r = region_from(&state, &o, id)?;
    state.identity_write(|tx| tx.insert(&r).map_err(super::conflict_as("region", &r.id)))?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"region": region_view(&state, &r)})),
    ))
}

async fn put_region(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    ctx.require_admin("identity:create_region")?;
    let o = Obj::from_body(body, "region")?;
    if o.str("id")?.is_some_and(|x| x != id) {
        return Err(ApiError::bad_request(
            "The region id in the body does not match the URL.",
        ));
    }
    let r = region_from(&state, &o, id)?;
    state.identity_write(|tx| tx.insert(&r).map_err(super::conflict_as("region", &r.id)))?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"region": region_view(&state, &r)})),
    ))
}

async fn update_region(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<axum::Json<Value>, ApiError> {
    ctx.require_admin("identity:update_region")?;
    let o = Obj::from_body(body, "region")?;
    let r = state.identity_write(|tx| {
        let mut r = tx.fetch::<Region>(&id)?;
        if o.has("description") {
            r.description = o.str("description")?.unwrap_or_default();
        }
        if o.has("parent_region_id") {
            let p = o.str("parent_region_id")?;
            if let Some(p) = &p
                && (*p == id || tx.get::<Region>(p)?.is_none())
            {
                return Err(ApiError::bad_request(format!("Invalid parent region {p}.")));
            }
            r.parent_region_id = p;
        }
        tx.update(&r)?;
        Ok(r)
    })?;
    Ok(axum::Json(json!({"region": region_view(&state, &r)})))
}

async fn delete_region(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    ctx.require_admin("identity:delete_region")?;
    state.identity_write(|tx| {
        tx.fetch::<Region>(&id)?;
        if !tx.list::<Region>(&Q::parent(&id))?.is_empty() {
            return Err(ApiError::forbidden(
                "identity:delete_region (the region has child regions)",
            ));
        }
        for e in tx.list::<Endpoint>(&Q::all())? {
            if e.region_id.as_deref() == Some(id.as_str()) {
                return Err(ApiError::forbidden(
                    "identity:delete_region (endpoints still use this region)",
                ));
            }
        }
        tx.delete::<Region>(&id)?;
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- services ------------------------------------------------------------------

fn service_view(state: &AppState, s: &Service) -> Value {
    json!({
        "id": s.id,
        "type": s.kind,
        "name": s.name,
        "description": s.description,
        "enabled": s.enabled,
        "links": self_link(state, &format!("services/{}", s.id)),
    })
}

fn may_read_catalog(ctx: &Ctx) -> Result<(), ApiError> {
    ctx.allow(ctx.system_reader(), "identity:list_services")
}

async fn list_services(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    may_read_catalog(&ctx)?;
    let items = state
        .store
        .list::<Service>(&Q::all())?
        .iter()
        .map(|s| service_view(&state, s))
        .collect();
    Ok(list_body(&state, "services", "services", filter(items, &q)))
}

async fn show_service(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    may_read_catalog(&ctx)?;
    let s = state.store.fetch::<Service>(&id)?;
    Ok(axum::Json(json!({"service": service_view(&state, &s)})))
}

async fn create_service(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(body): Json<Value>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    ctx.require_admin("identity:create_service")?;
    let o = Obj::from_body(body, "service")?;
    let kind = o.name("type")?.ok_or_else(|| {
        ApiError::bad_request("Invalid input for field 'service': 'type' is a required property.")
    })?;
    let s = Service {
        id: new_id(),
        kind,
        name: o.str("name")?,
        description: o.str("description")?,
        enabled: o.bool("enabled")?.unwrap_or(true),
    };
    state.identity_write(|tx| Ok(tx.insert(&s)?))?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"service": service_view(&state, &s)})),
    ))
}

async fn update_service(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<axum::Json<Value>, ApiError> {
    ctx.require_admin("identity:update_service")?;
    let o = Obj::from_body(body, "service")?;
    let s = state.identity_write(|tx| {
        let mut s = tx.fetch::<Service>(&id)?;
        if let Some(t) = o.name("type")? {
            s.kind = t;
        }
        if o.has("name") {
            s.name = o.str("name")?;
        }
        if o.has("description") {
            s.description = o.str("description")?;
        }
        if let Some(e) = o.bool("enabled")? {
            s.enabled = e;
        }
        tx.update(&s)?;
        Ok(s)
    })?;
    Ok(axum::Json(json!({"service": service_view(&state, &s)})))
}

async fn delete_service(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    ctx.require_admin("identity:delete_service")?;
    state.identity_write(|tx| {
        tx.fetch::<Service>(&id)?;
        for e in tx.list::<Endpoint>(&Q::parent(&id))? {
            super::cascade::forget_endpoint(tx, &e.id)?;
            tx.delete::<Endpoint>(&e.id)?;
        }
        tx.delete::<Service>(&id)?;
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- endpoints -----------------------------------------------------------------

pub(super) fn endpoint_view(state: &AppState, e: &Endpoint) -> Value {
    json!({
        "id": e.id,
        "service_id": e.service_id,
        "interface": e.interface,
        "region": e.region_id,
        "region_id": e.region_id,
        "url": e.url,
        "enabled": e.enabled,
        "links": self_link(state, &format!("endpoints/{}", e.id)),
    })
}

/// Checks an endpoint's region. Keystone creates a region named by the
/// legacy `region` attribute; an unknown `region_id` is an error.
fn ensure_endpoint_region(
    tx: &stratus_store::Tx,
    region: &str,
    legacy: bool,
) -> Result<(), ApiError> {
    if tx.get::<Region>(region)?.is_some() {
        return Ok(());
    }
    if !legacy {
        return Err(ApiError::bad_request(format!("Region {region} not found.")));
    }
    tx.insert(&Region {
        id: region.to_string(),
        description: String::new(),
        parent_region_id: None,
    })?;
    Ok(())
}

fn check_interface(i: &str) -> Result<(), ApiError> {
    if matches!(i, "public" | "internal" | "admin") {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "Invalid input for field 'endpoint.interface': '{i}' is not one of public, internal, admin."
        )))
    }
}

fn check_url(u: &str) -> Result<(), ApiError> {
    if u.starts_with("http://") || u.starts_with("https://") {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "Invalid input for field 'endpoint.url': '{u}' is not a URL."
        )))
    }
}

async fn list_endpoints(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    may_read_catalog(&ctx)?;
    let items = state
        .store
        .list::<Endpoint>(&Q::all())?
        .iter()
        .map(|e| endpoint_view(&state, e))
        .collect();
    Ok(list_body(
        &state,
        "endpoints",
        "endpoints",
        filter(items, &q),
    ))
}

async fn show_endpoint(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    may_read_catalog(&ctx)?;
    let e = state.store.fetch::<Endpoint>(&id)?;
    Ok(axum::Json(json!({"endpoint": endpoint_view(&state, &e)})))
}

async fn create_endpoint(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(body): Json<Value>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    ctx.require_admin("identity:create_endpoint")?;
    let o = Obj::from_body(body, "endpoint")?;
    let interface = o.req_str("interface")?;
    check_interface(&interface)?;
    let url = o.req_str("url")?;
    check_url(&url)?;
    let service_id = o.req_str("service_id")?;
    let legacy_region = o.str("region_id")?.is_none();
    let region_id = o.str("region_id")?.or(o.str("region")?);
    let e = Endpoint {
        id: new_id(),
        service_id,
        interface,
        region_id,
        url,
        enabled: o.bool("enabled")?.unwrap_or(true),
    };
    state.identity_write(|tx| {
        if tx.get::<Service>(&e.service_id)?.is_none() {
            return Err(ApiError::bad_request(format!(
                "Service {} not found.",
                e.service_id
            )));
        }
        if let Some(r) = &e.region_id {
            ensure_endpoint_region(tx, r, legacy_region)?;
        }
        tx.insert(&e)?;
        Ok(())
    })?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"endpoint": endpoint_view(&state, &e)})),
    ))
}

async fn update_endpoint(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<axum::Json<Value>, ApiError> {
    ctx.require_admin("identity:update_endpoint")?;
    let o = Obj::from_body(body, "endpoint")?;
    let e = state.identity_write(|tx| {
        let mut e = tx.fetch::<Endpoint>(&id)?;
        if let Some(i) = o.str("interface")? {
            check_interface(&i)?;
            e.interface = i;
        }
        if let Some(u) = o.str("url")? {
            check_url(&u)?;
            e.url = u;
        }
        if let Some(s) = o.str("service_id")? {
            tx.get::<Service>(&s)?
                .ok_or_else(|| ApiError::bad_request(format!("Service {s} not found.")))?;
            e.service_id = s;
        }
        if o.has("region_id") || o.has("region") {
            let r = o.str("region_id")?.or(o.str("region")?);
            if let Some(r) = &r {
                ensure_endpoint_region(tx, r, !o.has("region_id"))?;
            }
            e.region_id = r;
        }
        if let Some(en) = o.bool("enabled")? {
            e.enabled = en;
        }
        tx.update(&e)?;
        Ok(e)
    })?;
    Ok(axum::Json(json!({"endpoint": endpoint_view(&state, &e)})))
}

async fn delete_endpoint(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    ctx.require_admin("identity:delete_endpoint")?;
    state.identity_write(|tx| {
        super::cascade::forget_endpoint(tx, &id)?;
        if !tx.delete::<Endpoint>(&id)? {
            return Err(ApiError::not_found("endpoint", &id));
        }
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}
