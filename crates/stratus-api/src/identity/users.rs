//! `/v3/users`: users, their passwords, projects and groups.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};
use stratus_store::Query as Q;

use super::model::*;
use super::policy::Ctx;
use super::{Obj, conflict_as, filter, list_body, new_id};
use crate::json::Json;
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

const KNOWN: &[&str] = &[
    "name",
    "domain_id",
    "enabled",
    "password",
    "default_project_id",
    "description",
    "options",
    "password_expires_at",
    "federated",
];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/users", get(list).post(create))
        .route("/users/{id}", get(show).patch(update).delete(remove))
        .route("/users/{id}/password", post(change_password))
        .route("/users/{id}/projects", get(user_projects))
        .route("/users/{id}/groups", get(user_groups))
}

fn can_read(ctx: &Ctx, u: &User) -> bool {
    ctx.user_id() == u.id || ctx.can_read_domain_objects(&u.domain_id)
}

async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    let scope = match (ctx.system_reader(), ctx.reader_domain()) {
        (true, _) => None,
        (false, Some(d)) => Some(d.to_string()),
        (false, None) => return Err(ApiError::forbidden("identity:list_users")),
    };
    let owner = scope.as_deref().or(q.get("domain_id").map(String::as_str));
    let users = state.store.list::<User>(&Q {
        owner,
        ..Q::default()
    })?;
    let items = users
        .iter()
        .map(|u| super::views::user(&state, u))
        .collect();
    Ok(list_body(&state, "users", "users", filter(items, &q)))
}

fn check_password(pw: &str) -> Result<(), ApiError> {
    if pw.is_empty() || pw.len() > 4096 {
        return Err(ApiError::bad_request(
            "Invalid input for field 'user.password': it must be 1 to 4096 characters.",
        ));
    }
    Ok(())
}

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(body): Json<Value>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    ctx.require_admin("identity:create_user")?;
    let o = Obj::from_body(body, "user")?;
    let name = o.name("name")?.ok_or_else(|| {
        ApiError::bad_request("Invalid input for field 'user': 'name' is a required property.")
    })?;
    let domain_id = match o.id_str("domain_id", false)? {
        Some(d) => d,
        None => ctx
            .domain
            .as_ref()
            .or(ctx.project_domain.as_ref())
            .map(|d| d.id.clone())
            .unwrap_or_else(|| DEFAULT_DOMAIN_ID.into()),
    };
    let password = o.str("password")?;
    if let Some(pw) = &password {
        check_password(pw)?;
    }
    if state.store.get::<Domain>(&domain_id)?.is_none() {
        return Err(ApiError::not_found("domain", &domain_id));
    }
    // Like Keystone, a default project that does not exist (yet) is kept.
    let password_hash = match password {
        Some(pw) => Some(state.identity.hashing.hash(pw).await?),
        None => None,
    };
    let u = User {
        id: new_id(),
        name: name.clone(),
        domain_id,
        enabled: o.bool("enabled")?.unwrap_or(true),
        password_set_at_us: password_hash.as_ref().map(|_| now_us()),
        password_hash,
        default_project_id: o.str("default_project_id")?,
        description: o.str("description")?,
        options: o.object("options")?.unwrap_or_default(),
        extra: o.extra(KNOWN),
    };
    state.identity_write(|tx| tx.insert(&u).map_err(conflict_as("user", &name)))?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"user": super::views::user(&state, &u)})),
    ))
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let u = state.store.fetch::<User>(&id)?;
    ctx.allow(can_read(&ctx, &u), "identity:get_user")?;
    Ok(axum::Json(json!({"user": super::views::user(&state, &u)})))
}

async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<axum::Json<Value>, ApiError> {
    ctx.require_admin("identity:update_user")?;
    let o = Obj::from_body(body, "user")?;
    if o.str("domain_id")?.is_some_and(|d| {
        state
            .store
            .get::<User>(&id)
            .ok()
            .flatten()
            .is_some_and(|u| u.domain_id != d)
    }) {
        return Err(ApiError::bad_request(
            "Update of `domain_id` is not allowed.",
        ));
    }
    let new_hash = match o.str("password")? {
        Some(pw) => {
            check_password(&pw)?;
            Some(state.identity.hashing.hash(pw).await?)
        }
        None => None,
    };
    // Like Keystone, a default project that does not exist (yet) is kept.
    let mut revoke = new_hash.is_some();
    let u = state.identity_write(|tx| {
        let mut u = tx.fetch::<User>(&id)?;
        if let Some(n) = o.name("name")? {
            u.name = n;
        }
        if let Some(e) = o.bool("enabled")? {
            revoke |= u.enabled && !e;
            u.enabled = e;
        }
        if let Some(h) = new_hash {
            u.password_hash = Some(h);
            u.password_set_at_us = Some(now_us());
        }
        if o.has("default_project_id") {
            u.default_project_id = o.str("default_project_id")?;
        }
        if o.has("description") {
            u.description = o.str("description")?;
        }
        if let Some(opts) = o.object("options")? {
            u.options.extend(opts);
        }
        o.merge_extra(KNOWN, &mut u.extra);
        let name = u.name.clone();
        tx.update(&u).map_err(conflict_as("user", &name))?;
        Ok(u)
    })?;
    if revoke {
        revoke_user(&state, &u.id)?;
    }
    Ok(axum::Json(json!({"user": super::views::user(&state, &u)})))
}

/// Revokes every token the user holds now.
pub fn revoke_user(state: &AppState, user_id: &str) -> Result<(), ApiError> {
    state.revoke(Revocation {
        user_id: Some(user_id.to_string()),
        issued_before_us: now_us(),
        ..Revocation::default()
    })
}

async fn remove(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    ctx.require_admin("identity:delete_user")?;
    state.identity_write(|tx| super::cascade::delete_user(tx, &id))?;
    revoke_user(&state, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v3/users/{id}/password`: as in Keystone, the original password
/// is the credential (no token is needed, so an expired password can be
/// changed); a wrong one is the usual 401.
async fn change_password(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<StatusCode, ApiError> {
    let o = Obj::from_body(body, "user")?;
    let new_pw = o.req_str("password")?;
    let original = o.req_str("original_password")?;
    check_password(&new_pw)?;
    let u = state.store.get::<User>(&id)?;
    let hash = u.as_ref().and_then(|u| u.password_hash.clone());
    if !state.identity.hashing.verify(original, hash).await? || !u.is_some_and(|u| u.enabled) {
        return Err(ApiError::unauthorized());
    }
    let hash = state.identity.hashing.hash(new_pw).await?;
    state.identity_write(|tx| {
        let mut u = tx.fetch::<User>(&id)?;
        u.password_hash = Some(hash);
        u.password_set_at_us = Some(now_us());
        tx.update(&u)?;
        Ok(())
    })?;
    revoke_user(&state, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn user_projects(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    let u = state.store.fetch::<User>(&id)?;
    ctx.allow(
        ctx.user_id() == id || ctx.can_read_domain_objects(&u.domain_id),
        "identity:list_user_projects",
    )?;
    let items = super::service::user_projects(&state.store, &id)?
        .iter()
        .map(|p| super::projects::view(&state, p))
        .collect();
    Ok(list_body(
        &state,
        "projects",
        &format!("users/{id}/projects"),
        filter(items, &q),
    ))
}

async fn user_groups(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    let u = state.store.fetch::<User>(&id)?;
    ctx.allow(
        ctx.user_id() == id || ctx.can_read_domain_objects(&u.domain_id),
        "identity:list_groups_for_user",
    )?;
    let mut items = Vec::new();
    for gid in super::service::user_group_ids(&state.store, &id)? {
        if let Some(g) = state.store.get::<Group>(&gid)? {
            items.push(super::views::group(&state, &g));
        }
    }
    Ok(list_body(
        &state,
        "groups",
        &format!("users/{id}/groups"),
        filter(items, &q),
    ))
}
