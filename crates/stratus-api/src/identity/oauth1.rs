//! `/v3/OS-OAUTH1/consumers`: OAuth1 consumers. Only their management;
//! the OAuth1 request/access token flow is not offered. The secret is made
//! here and shown once, in the answer to the create; it cannot be changed.

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

const KNOWN: &[&str] = &["description", "secret"];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/OS-OAUTH1/consumers", get(list).post(create))
        .route(
            "/OS-OAUTH1/consumers/{id}",
            get(show).patch(update).delete(remove),
        )
}

fn view(state: &AppState, c: &Consumer) -> Value {
    let mut v = json!({
        "id": c.id,
        "description": c.description,
        "links": self_link(state, &format!("OS-OAUTH1/consumers/{}", c.id)),
    });
    if let Some(obj) = v.as_object_mut() {
        for (k, x) in &c.extra {
            obj.entry(k.clone()).or_insert_with(|| x.clone());
        }
    }
    v
}

/// A description: a string or null (Keystone's `nullable(description)`).
fn description(o: &Obj) -> Result<Option<String>, ApiError> {
    o.str("description")
}

async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    ctx.allow(ctx.system_reader(), "identity:list_consumers")?;
    let items = state
        .store
        .list::<Consumer>(&Q::all())?
        .iter()
        .map(|c| view(&state, c))
        .collect();
    Ok(list_body(
        &state,
        "consumers",
        "OS-OAUTH1/consumers",
        filter(items, &q),
    ))
}

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(body): Json<Value>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    ctx.require_admin("identity:create_consumer")?;
    // Keystone takes a missing `consumer` object as an empty one.
    let body = match body {
        Value::Object(m) if !m.contains_key("consumer") => json!({"consumer": {}}),
        other => other,
    };
    let o = Obj::from_body(body, "consumer")?;
    let c = Consumer {
        id: new_id(),
        description: description(&o)?,
        secret: new_id(),
        extra: o.extra(KNOWN),
    };
    state.identity_write(|tx| Ok(tx.insert(&c)?))?;
    let mut v = view(&state, &c);
    v["secret"] = json!(c.secret);
    Ok((StatusCode::CREATED, axum::Json(json!({"consumer": v}))))
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    ctx.allow(ctx.system_reader(), "identity:get_consumer")?;
    let c = state.store.fetch::<Consumer>(&id)?;
    Ok(axum::Json(json!({"consumer": view(&state, &c)})))
}

async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<axum::Json<Value>, ApiError> {
    ctx.require_admin("identity:update_consumer")?;
    let o = Obj::from_body(body, "consumer")?;
    o.require_some()?;
    if o.has("secret") {
        return Err(ApiError::bad_request(
            "Invalid input for field 'consumer': the secret of a consumer cannot be changed.",
        ));
    }
    if o.str("id")?.is_some_and(|x| x != id) {
        return Err(ApiError::bad_request(
            "Cannot change ID: the id in the body does not match the URL.",
        ));
    }
    let c = state.identity_write(|tx| {
        let mut c = tx.fetch::<Consumer>(&id)?;
        if o.has("description") {
            c.description = description(&o)?;
        }
        o.merge_extra(KNOWN, &mut c.extra);
        tx.update(&c)?;
        Ok(c)
    })?;
    Ok(axum::Json(json!({"consumer": view(&state, &c)})))
}

async fn remove(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    ctx.require_admin("identity:delete_consumer")?;
    state.identity_write(|tx| {
        if !tx.delete::<Consumer>(&id)? {
            return Err(ApiError::not_found("consumer", &id));
        }
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}
