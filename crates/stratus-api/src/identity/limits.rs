//! Unified limits: `/v3/registered_limits` (a service's default per
//! resource) and `/v3/limits` (a project's or domain's own), with the
//! `flat` enforcement model. Services read them to enforce quotas (the
//! image service: `image::quota`).
//!
//! Policy as Keystone's defaults: admins write; anyone authenticated reads
//! registered limits; project limits are read by admins and system
//! readers, or by the project they belong to.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use stratus_store::Query as Q;

use super::model::{Domain, Limit, Project, Region, RegisteredLimit, Service};
use super::policy::Ctx;
use super::quota;
use super::{Obj, filter, new_id, self_link};
use crate::json::Json;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/registered_limits",
            get(list_registered).post(create_registered),
        )
        .route(
            "/registered_limits/{id}",
            get(show_registered)
                .patch(update_registered)
                .delete(delete_registered),
        )
        .route("/limits/model", get(model))
        .route("/limits/usage", get(usage))
        .route("/limits", get(list_limits).post(create_limits))
        .route(
            "/limits/{id}",
            get(show_limit).patch(update_limit).delete(delete_limit),
        )
}

async fn model(State(state): State<AppState>, _ctx: Ctx) -> Result<axum::Json<Value>, ApiError> {
    let m = quota::model_of(&state.store)?;
    Ok(axum::Json(json!({"model": {
        "name": m.name(),
        "description": m.description(),
    }})))
}

/// The engine's meter for a limit on `resource_name` of `service_id`.
fn meter_for(
    state: &AppState,
    tx: &stratus_store::Tx,
    service_id: &str,
    resource: &str,
) -> Result<Option<&'static quota::Meter>, ApiError> {
    let Some(svc) = tx.get::<Service>(service_id)? else {
        return Ok(None);
    };
    Ok(state
        .quota_meters
        .iter()
        .copied()
        .find(|m| m.resource == resource && m.services.contains(&svc.kind.as_str())))
}

/// Checks written limits against the model's rules (inside the write).
fn validate_written(
    state: &AppState,
    tx: &stratus_store::Tx,
    l: &Limit,
    force: bool,
) -> Result<(), ApiError> {
    let Some(m) = meter_for(state, tx, &l.service_id, &l.resource_name)? else {
        return Ok(());
    };
    match (&l.project_id, &l.domain_id) {
        (Some(p), _) => quota::validate(tx, m, p, force),
        (None, Some(d)) => quota::validate_domain(tx, m, d, l.resource_limit),
        _ => Ok(()),
    }
}

/// `GET /v3/limits/usage?project_id=` (Stratus's own): where a project
/// stands on every resource of every service under the deployment's
/// model, with the loans it is part of. Readable by system readers and by
/// those with a role on the project or one of its ancestors.
async fn usage(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    let project = match q.get("project_id") {
        Some(p) => p.clone(),
        None => ctx
            .project_id()
            .ok_or_else(|| ApiError::bad_request("A project_id is required."))?
            .to_string(),
    };
    let mut allowed = ctx.system_reader();
    let mut cur = Some(project.clone());
    while let Some(p) = cur {
        if ctx.project_id() == Some(p.as_str()) {
            allowed = true;
            break;
        }
        cur = state.store.get::<Project>(&p)?.and_then(|x| x.parent_id);
    }
    ctx.allow(allowed, "identity:get_limit")?;
    state.store.fetch::<Project>(&project)?;
    let model = quota::model_of(&state.store)?;
    let rows = state.store.write(|tx| {
        let mut rows = Vec::new();
        for m in &state.quota_meters {
            let f = quota::figures(tx, m, &project)?;
            let loans: Vec<Value> = quota::loans(tx, m, &project)?
                .into_iter()
                .map(|(lender, borrower, amount)| {
                    json!({"lender": lender, "borrower": borrower, "amount": amount})
                })
                .collect();
            let mut v = serde_json::to_value(&f).map_err(|e| ApiError::internal(e.to_string()))?;
            v["service"] = json!(m.services[0]);
            v["resource_name"] = json!(m.resource);
            v["loans"] = Value::Array(loans);
            rows.push(v);
        }
        Ok::<_, ApiError>(rows)
    })?;
    Ok(axum::Json(json!({
        "model": model.name(),
        "project_id": project,
        "usage": rows,
    })))
}

fn registered_view(state: &AppState, l: &RegisteredLimit) -> Value {
    json!({
        "id": l.id,
        "service_id": l.service_id,
        "region_id": l.region_id,
        "resource_name": l.resource_name,
        "default_limit": l.default_limit,
        "description": l.description,
        "links": self_link(state, &format!("registered_limits/{}", l.id)),
    })
}

fn limit_view(state: &AppState, l: &Limit) -> Value {
    json!({
        "id": l.id,
        "service_id": l.service_id,
        "region_id": l.region_id,
        "project_id": l.project_id,
        "domain_id": l.domain_id,
        "resource_name": l.resource_name,
        "resource_limit": l.resource_limit,
        "description": l.description,
        "links": self_link(state, &format!("limits/{}", l.id)),
    })
}

/// The list of objects under `key` in a create body.
fn items(body: Value, key: &'static str, item: &'static str) -> Result<Vec<Obj>, ApiError> {
    match body.get(key) {
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|v| match v {
                Value::Object(m) => Ok(Obj::new(item, m.clone())),
                _ => Err(ApiError::bad_request(format!(
                    "Invalid input for field '{key}': each item must be an object."
                ))),
            })
            .collect(),
        _ => Err(ApiError::bad_request(format!(
            "Invalid input for field '{key}': a non-empty list is required."
        ))),
    }
}

fn check_refs(state: &AppState, service_id: &str, region_id: Option<&str>) -> Result<(), ApiError> {
    if state.store.get::<Service>(service_id)?.is_none() {
        return Err(ApiError::bad_request(format!(
            "Invalid service_id: no service {service_id}."
        )));
    }
    if let Some(r) = region_id
        && state.store.get::<Region>(r)?.is_none()
    {
        return Err(ApiError::bad_request(format!(
            "Invalid region_id: no region {r}."
        )));
    }
    Ok(())
}

fn resource_name(o: &Obj) -> Result<String, ApiError> {
    let n = o.req_str("resource_name")?;
    if n.is_empty() || n.len() > 255 {
        return Err(ApiError::bad_request(
            "Invalid input for field 'resource_name': it must be 1 to 255 characters.",
        ));
    }
    Ok(n)
}

fn non_negative(o: &Obj, field: &str, required: bool) -> Result<Option<i64>, ApiError> {
    match o.int(field)? {
        Some(n) if n < -1 => Err(ApiError::bad_request(format!(
            "Invalid input for field '{field}': it must be -1 (unlimited) or more."
        ))),
        None if required => Err(ApiError::bad_request(format!(
            "Invalid input for field '{field}': it is a required property."
        ))),
        n => Ok(n),
    }
}

fn conflict(what: &str) -> impl Fn(stratus_store::StoreError) -> ApiError + '_ {
    move |e| match e {
        stratus_store::StoreError::Conflict(_) => {
            ApiError::conflict(format!("Duplicate entry: {what} already exists."))
        }
        other => other.into(),
    }
}

// ---- registered limits ------------------------------------------------------

async fn list_registered(
    State(state): State<AppState>,
    _ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    let items = state
        .store
        .list::<RegisteredLimit>(&Q::all())?
        .iter()
        .map(|l| registered_view(&state, l))
        .collect();
    Ok(axum::Json(json!({
        "registered_limits": filter(items, &q),
        "links": {"self": state.identity_url("registered_limits"), "previous": null, "next": null},
    })))
}

async fn create_registered(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(body): Json<Value>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    ctx.require_admin("identity:create_registered_limits")?;
    let mut made = Vec::new();
    for o in items(body, "registered_limits", "registered_limit")? {
        let l = RegisteredLimit {
            id: new_id(),
            service_id: o.req_str("service_id")?,
            region_id: o.str("region_id")?,
            resource_name: resource_name(&o)?,
            default_limit: non_negative(&o, "default_limit", true)?.unwrap_or(0),
            description: o.str("description")?,
        };
        check_refs(&state, &l.service_id, l.region_id.as_deref())?;
        made.push(l);
    }
    state.store.write(|tx| {
        for l in &made {
            tx.insert(l).map_err(conflict("registered limit"))?;
        }
        Ok::<_, ApiError>(())
    })?;
    let views = made
        .iter()
        .map(|l| registered_view(&state, l))
        .collect::<Vec<_>>();
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"registered_limits": views})),
    ))
}

async fn show_registered(
    State(state): State<AppState>,
    _ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let l = state.store.fetch::<RegisteredLimit>(&id)?;
    Ok(axum::Json(
        json!({"registered_limit": registered_view(&state, &l)}),
    ))
}

async fn update_registered(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<axum::Json<Value>, ApiError> {
    ctx.require_admin("identity:update_registered_limit")?;
    let o = Obj::from_body(body, "registered_limit")?;
    let l = state.store.write(|tx| {
        let mut l = tx.fetch::<RegisteredLimit>(&id)?;
        if let Some(s) = o.str("service_id")? {
            l.service_id = s;
        }
        if o.has("region_id") {
            l.region_id = o.str("region_id")?;
        }
        if o.has("resource_name") {
            l.resource_name = resource_name(&o)?;
        }
        if let Some(n) = non_negative(&o, "default_limit", false)? {
            l.default_limit = n;
        }
        if o.has("description") {
            l.description = o.str("description")?;
        }
        check_refs(&state, &l.service_id, l.region_id.as_deref())?;
        tx.update(&l).map_err(conflict("registered limit"))?;
        Ok::<_, ApiError>(l)
    })?;
    Ok(axum::Json(
        json!({"registered_limit": registered_view(&state, &l)}),
    ))
}

async fn delete_registered(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    ctx.require_admin("identity:delete_registered_limit")?;
    state.store.write(|tx| {
        let l = tx.fetch::<RegisteredLimit>(&id)?;
        let in_use = tx.list::<Limit>(&Q::parent(&l.service_id))?.iter().any(|p| {
            p.resource_name == l.resource_name && p.region_id == l.region_id
        });
        if in_use {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "The registered limit is referenced by project or domain limits; delete those first.",
            ));
        }
        tx.delete::<RegisteredLimit>(&id)?;
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- project and domain limits ------------------------------------------------

fn may_read(ctx: &Ctx, l: &Limit) -> bool {
    ctx.system_reader()
        || l.project_id.is_some() && l.project_id.as_deref() == ctx.project_id()
        || l.domain_id.as_deref().is_some_and(|d| ctx.domain_reader(d))
}

async fn list_limits(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    let items = state
        .store
        .list::<Limit>(&Q::all())?
        .iter()
        .filter(|l| may_read(&ctx, l))
        .map(|l| limit_view(&state, l))
        .collect();
    Ok(axum::Json(json!({
        "limits": filter(items, &q),
        "links": {"self": state.identity_url("limits"), "previous": null, "next": null},
    })))
}

async fn create_limits(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(body): Json<Value>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    ctx.require_admin("identity:create_limits")?;
    let mut made = Vec::new();
    for o in items(body, "limits", "limit")? {
        let l = Limit {
            id: new_id(),
            service_id: o.req_str("service_id")?,
            region_id: o.str("region_id")?,
            project_id: o.str("project_id")?,
            domain_id: o.str("domain_id")?,
            resource_name: resource_name(&o)?,
            resource_limit: non_negative(&o, "resource_limit", true)?.unwrap_or(0),
            description: o.str("description")?,
        };
        match (&l.project_id, &l.domain_id) {
            (Some(p), None) => {
                if state.store.get::<Project>(p)?.is_none() {
                    return Err(ApiError::bad_request(format!(
                        "Invalid project_id: no project {p}."
                    )));
                }
            }
            (None, Some(d)) => {
                if state.store.get::<Domain>(d)?.is_none() {
                    return Err(ApiError::bad_request(format!(
                        "Invalid domain_id: no domain {d}."
                    )));
                }
            }
            _ => {
                return Err(ApiError::bad_request(
                    "A limit needs exactly one of project_id or domain_id.",
                ));
            }
        }
        check_refs(&state, &l.service_id, l.region_id.as_deref())?;
        let registered = state
            .store
            .list::<RegisteredLimit>(&Q::parent(&l.service_id))?
            .into_iter()
            .any(|r| r.resource_name == l.resource_name && r.region_id == l.region_id);
        if !registered {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "No registered limit exists for resource {} of service {}: register a default first.",
                    l.resource_name, l.service_id
                ),
            ));
        }
        made.push(l);
    }
    state.store.write(|tx| {
        for l in &made {
            tx.insert(l).map_err(conflict("limit"))?;
        }
        for l in &made {
            validate_written(&state, tx, l, false)?;
        }
        Ok::<_, ApiError>(())
    })?;
    let views = made
        .iter()
        .map(|l| limit_view(&state, l))
        .collect::<Vec<_>>();
    Ok((StatusCode::CREATED, axum::Json(json!({"limits": views}))))
}

async fn show_limit(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let l = state.store.fetch::<Limit>(&id)?;
    ctx.allow(may_read(&ctx, &l), "identity:get_limit")?;
    Ok(axum::Json(json!({"limit": limit_view(&state, &l)})))
}

async fn update_limit(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<axum::Json<Value>, ApiError> {
    ctx.require_admin("identity:update_limit")?;
    let o = Obj::from_body(body, "limit")?;
    // Stratus's own: `force` lets a hierarchical limit go below usage.
    let force = o.bool("force")?.unwrap_or(false);
    o.forbid(&[
        "project_id",
        "domain_id",
        "service_id",
        "region_id",
        "resource_name",
    ])?;
    let l = state.store.write(|tx| {
        let mut l = tx.fetch::<Limit>(&id)?;
        if let Some(n) = non_negative(&o, "resource_limit", false)? {
            l.resource_limit = n;
        }
        if o.has("description") {
            l.description = o.str("description")?;
        }
        tx.update(&l)?;
        validate_written(&state, tx, &l, force)?;
        Ok::<_, ApiError>(l)
    })?;
    Ok(axum::Json(json!({"limit": limit_view(&state, &l)})))
}

async fn delete_limit(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    ctx.require_admin("identity:delete_limit")?;
    state.store.write(|tx| {
        tx.fetch::<Limit>(&id)?;
        tx.delete::<Limit>(&id)?;
        Ok::<_, ApiError>(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}
