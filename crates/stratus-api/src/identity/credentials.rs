//! `/v3/credentials` and the EC2 view of them
//! (`/v3/users/{id}/credentials/OS-EC2`). Owners manage their own;
//! admins all. An EC2 credential's id is the SHA-256 of its access key, as
//! in Keystone, so it can be looked up by access key.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use sha2::Digest;
use stratus_store::Query as Q;

use super::model::*;
use super::policy::Ctx;
use super::{Obj, filter, list_body, new_id, self_link};
use crate::json::Json;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/credentials", get(list).post(create))
        .route("/credentials/{id}", get(show).patch(update).delete(remove))
        .route(
            "/users/{user_id}/credentials/OS-EC2",
            get(ec2_list).post(ec2_create),
        )
        .route(
            "/users/{user_id}/credentials/OS-EC2/{access}",
            get(ec2_show).delete(ec2_delete),
        )
}

fn view(state: &AppState, c: &Credential) -> Value {
    json!({
        "id": c.id,
        "user_id": c.user_id,
        "project_id": c.project_id,
        "type": c.kind,
        "blob": c.blob,
        "links": self_link(state, &format!("credentials/{}", c.id)),
    })
}

fn ec2_id(access: &str) -> String {
    sha2::Sha256::digest(access.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn owner_or_admin(ctx: &Ctx, user_id: &str, action: &str) -> Result<(), ApiError> {
    ctx.allow(ctx.user_id() == user_id || ctx.system_reader(), action)
}

fn writer(ctx: &Ctx, user_id: &str, action: &str) -> Result<(), ApiError> {
    ctx.allow(ctx.user_id() == user_id && !ctx.restricted(), action)
}

async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    let owner = if ctx.system_reader() {
        q.get("user_id").cloned()
    } else {
        Some(ctx.user_id().to_string())
    };
    let creds = state.store.list::<Credential>(&Q {
        owner: owner.as_deref(),
        ..Q::default()
    })?;
    let items = creds.iter().map(|c| view(&state, c)).collect();
    Ok(list_body(
        &state,
        "credentials",
        "credentials",
        filter(items, &q),
    ))
}

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(body): Json<Value>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let o = Obj::from_body(body, "credential")?;
    let user_id = o.req_str("user_id")?;
    let kind = o.req_str("type")?;
    let blob = o.req_str("blob")?;
    let project_id = o.str("project_id")?;
    ctx.allow(ctx.user_id() == user_id, "identity:create_credential")?;
    state.store.fetch::<User>(&user_id)?;
    let id = if kind == "ec2" {
        let parsed: Value = serde_json::from_str(&blob).map_err(|_| {
            ApiError::bad_request("Invalid blob in credential: an ec2 blob must be JSON.")
        })?;
        let access = parsed["access"].as_str().ok_or_else(|| {
            ApiError::bad_request("Invalid blob in credential: an ec2 blob needs 'access'.")
        })?;
        if project_id.is_none() {
            return Err(ApiError::bad_request(
                "An ec2 credential needs a project_id.",
            ));
        }
        ec2_id(access)
    } else {
        new_id()
    };
    if let Some(p) = &project_id {
        state.store.fetch::<Project>(p)?;
    }
    let c = Credential {
        id,
        user_id,
        project_id,
        kind,
        blob,
    };
    state.identity_write(|tx| {
        tx.insert(&c)
            .map_err(super::conflict_as("credential", &c.id))
    })?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"credential": view(&state, &c)})),
    ))
}

fn readable(state: &AppState, ctx: &Ctx, id: &str) -> Result<Credential, ApiError> {
    let c = state.store.fetch::<Credential>(id)?;
    owner_or_admin(ctx, &c.user_id, "identity:get_credential")?;
    Ok(c)
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let c = readable(&state, &ctx, &id)?;
    Ok(axum::Json(json!({"credential": view(&state, &c)})))
}

async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<axum::Json<Value>, ApiError> {
    let o = Obj::from_body(body, "credential")?;
    let c = state.identity_write(|tx| {
        let mut c = tx.fetch::<Credential>(&id)?;
        writer(&ctx, &c.user_id, "identity:update_credential")?;
        if let Some(u) = o.str("user_id")? {
            ctx.allow(u == ctx.user_id(), "identity:update_credential")?;
            c.user_id = u;
        }
        if o.has("project_id") {
            c.project_id = o.str("project_id")?;
        }
        if let Some(t) = o.str("type")? {
            c.kind = t;
        }
        if let Some(b) = o.str("blob")? {
            c.blob = b;
        }
        tx.update(&c)?;
        Ok(c)
    })?;
    Ok(axum::Json(json!({"credential": view(&state, &c)})))
}

async fn remove(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.identity_write(|tx| {
        let c = tx.fetch::<Credential>(&id)?;
        writer(&ctx, &c.user_id, "identity:delete_credential")?;
        tx.delete::<Credential>(&id)?;
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- EC2 -----------------------------------------------------------------------

fn ec2_view(state: &AppState, c: &Credential) -> Value {
    let blob: Value = serde_json::from_str(&c.blob).unwrap_or(Value::Null);
    json!({
        "user_id": c.user_id,
        "tenant_id": c.project_id,
        "access": blob["access"],
        "secret": blob["secret"],
        "trust_id": blob.get("trust_id").cloned().unwrap_or(Value::Null),
        "links": {"self": state.identity_url(&format!("users/{}/credentials/OS-EC2/{}", c.user_id, blob["access"].as_str().unwrap_or("")))},
    })
}

async fn ec2_list(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(user_id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    owner_or_admin(&ctx, &user_id, "identity:ec2_list_credentials")?;
    state.store.fetch::<User>(&user_id)?;
    let items = state
        .store
        .list::<Credential>(&Q::owner(&user_id))?
        .iter()
        .filter(|c| c.kind == "ec2")
        .map(|c| ec2_view(&state, c))
        .collect();
    Ok(list_body(
        &state,
        "credentials",
        &format!("users/{user_id}/credentials/OS-EC2"),
        items,
    ))
}

async fn ec2_create(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(user_id): Path<String>,
    Json(body): Json<Value>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    writer(&ctx, &user_id, "identity:ec2_create_credential")?;
    let project_id = body
        .get("tenant_id")
        .or_else(|| body.get("project_id"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::bad_request("Invalid input for field 'tenant_id': it is required.")
        })?
        .to_string();
    state.store.fetch::<User>(&user_id)?;
    state.store.fetch::<Project>(&project_id)?;
    if super::service::effective_role_ids(
        &state.store,
        &user_id,
        &super::service::Target::Project(project_id.clone()),
    )?
    .is_empty()
    {
        return Err(ApiError::forbidden(
            "identity:ec2_create_credential (the user has no role on that project)",
        ));
    }
    let access = new_id();
    let secret = new_id();
    let blob = json!({"access": access, "secret": secret, "trust_id": null}).to_string();
    let c = Credential {
        id: ec2_id(&access),
        user_id,
        project_id: Some(project_id),
        kind: "ec2".into(),
        blob,
    };
    state.identity_write(|tx| Ok(tx.insert(&c)?))?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"credential": ec2_view(&state, &c)})),
    ))
}

fn ec2_find(state: &AppState, user_id: &str, access: &str) -> Result<Credential, ApiError> {
    match state.store.get::<Credential>(&ec2_id(access))? {
        Some(c) if c.user_id == user_id && c.kind == "ec2" => Ok(c),
        _ => Err(ApiError::not_found("credential", access)),
    }
}

async fn ec2_show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((user_id, access)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    owner_or_admin(&ctx, &user_id, "identity:ec2_get_credential")?;
    let c = ec2_find(&state, &user_id, &access)?;
    Ok(axum::Json(json!({"credential": ec2_view(&state, &c)})))
}

async fn ec2_delete(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((user_id, access)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    writer(&ctx, &user_id, "identity:ec2_delete_credential")?;
    let c = ec2_find(&state, &user_id, &access)?;
    state.identity_write(|tx| Ok(tx.delete::<Credential>(&c.id)?))?;
    Ok(StatusCode::NO_CONTENT)
}
