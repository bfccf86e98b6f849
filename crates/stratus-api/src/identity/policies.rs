//! `/v3/policies`: opaque policy blobs other services may fetch. Keystone
//! stores them without looking inside; so do we. Admins write; admins and
//! system readers read.

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

const KNOWN: &[&str] = &["type", "blob"];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/policies", get(list).post(create))
        .route("/policies/{id}", get(show).patch(update).delete(remove))
}

fn view(state: &AppState, p: &Policy) -> Value {
    let mut v = json!({
        "id": p.id,
        "type": p.kind,
        "blob": p.blob,
        "links": self_link(state, &format!("policies/{}", p.id)),
    });
    if let Some(obj) = v.as_object_mut() {
        for (k, x) in &p.extra {
            obj.entry(k.clone()).or_insert_with(|| x.clone());
        }
    }
    v
}

/// `type` is at most 255 characters, as in Keystone's schema.
fn check_type(t: &str) -> Result<(), ApiError> {
    if t.chars().count() > 255 {
        return Err(ApiError::bad_request(
            "Invalid input for field 'policy.type': it is longer than 255 characters.",
        ));
    }
    Ok(())
}

async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    ctx.allow(ctx.system_reader(), "identity:list_policies")?;
    let items = state
        .store
        .list::<Policy>(&Q::all())?
        .iter()
        .map(|p| view(&state, p))
        .collect();
    Ok(list_body(&state, "policies", "policies", filter(items, &q)))
}

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(body): Json<Value>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    ctx.require_admin("identity:create_policy")?;
    let o = Obj::from_body(body, "policy")?;
    let kind = o.req_str("type")?;
    check_type(&kind)?;
    let p = Policy {
        id: new_id(),
        kind,
        blob: o.req_str("blob")?,
        extra: o.extra(KNOWN),
    };
    state.identity_write(|tx| Ok(tx.insert(&p)?))?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"policy": view(&state, &p)})),
    ))
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    ctx.allow(ctx.system_reader(), "identity:get_policy")?;
    let p = state.store.fetch::<Policy>(&id)?;
    Ok(axum::Json(json!({"policy": view(&state, &p)})))
}

async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<axum::Json<Value>, ApiError> {
    ctx.require_admin("identity:update_policy")?;
    let o = Obj::from_body(body, "policy")?;
    o.require_some()?;
    if o.str("id")?.is_some_and(|x| x != id) {
        return Err(ApiError::bad_request(
            "Cannot change ID: the id in the body does not match the URL.",
        ));
    }
    let p = state.identity_write(|tx| {
        let mut p = tx.fetch::<Policy>(&id)?;
        if let Some(t) = o.str("type")? {
            check_type(&t)?;
            p.kind = t;
        }
        if let Some(b) = o.str("blob")? {
            p.blob = b;
        }
        o.merge_extra(KNOWN, &mut p.extra);
        tx.update(&p)?;
        Ok(p)
    })?;
    Ok(axum::Json(json!({"policy": view(&state, &p)})))
}

async fn remove(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    ctx.require_admin("identity:delete_policy")?;
    state.identity_write(|tx| {
        if !tx.delete::<Policy>(&id)? {
            return Err(ApiError::not_found("policy", &id));
        }
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}
