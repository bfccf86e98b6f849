//! `/v3/groups` and group membership.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use stratus_store::Query as Q;

use super::model::*;
use super::policy::Ctx;
use super::{Obj, conflict_as, filter, list_body, new_id};
use crate::json::Json;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/groups", get(list).post(create))
        .route("/groups/{id}", get(show).patch(update).delete(remove))
        .route("/groups/{id}/users", get(members))
        .route(
            "/groups/{id}/users/{user_id}",
            get(check_member)
                .head(check_member)
                .put(add_member)
                .delete(remove_member),
        )
}

async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    let scope = match (ctx.system_reader(), ctx.reader_domain()) {
        (true, _) => None,
        (false, Some(d)) => Some(d.to_string()),
        (false, None) => return Err(ApiError::forbidden("identity:list_groups")),
    };
    let owner = scope.as_deref().or(q.get("domain_id").map(String::as_str));
    let groups = state.store.list::<Group>(&Q {
        owner,
        ..Q::default()
    })?;
    let items = groups
        .iter()
        .map(|g| super::views::group(&state, g))
        .collect();
    Ok(list_body(&state, "groups", "groups", filter(items, &q)))
}

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(body): Json<Value>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    ctx.require_admin("identity:create_group")?;
    let o = Obj::from_body(body, "group")?;
    let name = o.name("name")?.ok_or_else(|| {
        ApiError::bad_request("Invalid input for field 'group': 'name' is a required property.")
    })?;
    let domain_id = o.id_str("domain_id", true)?.unwrap_or_else(|| {
        ctx.domain
            .as_ref()
            .or(ctx.project_domain.as_ref())
            .map(|d| d.id.clone())
            .unwrap_or_else(|| DEFAULT_DOMAIN_ID.into())
    });
    let g = Group {
        id: new_id(),
        name: name.clone(),
        domain_id,
        description: o.str("description")?.unwrap_or_default(),
        extra: o.extra(&["name", "domain_id", "description"]),
    };
    state.identity_write(|tx| {
        if tx.get::<Domain>(&g.domain_id)?.is_none() {
            return Err(ApiError::not_found("domain", &g.domain_id));
        }
        tx.insert(&g).map_err(conflict_as("group", &name))
    })?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"group": super::views::group(&state, &g)})),
    ))
}

fn readable(state: &AppState, ctx: &Ctx, id: &str) -> Result<Group, ApiError> {
    let g = state.store.fetch::<Group>(id)?;
    let member = state
        .store
        .get::<Membership>(&Membership::new(id, ctx.user_id()).id)?
        .is_some();
    ctx.allow(
        member || ctx.can_read_domain_objects(&g.domain_id),
        "identity:get_group",
    )?;
    Ok(g)
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let g = readable(&state, &ctx, &id)?;
    Ok(axum::Json(
        json!({"group": super::views::group(&state, &g)}),
    ))
}

async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<axum::Json<Value>, ApiError> {
    ctx.require_admin("identity:update_group")?;
    let o = Obj::from_body(body, "group")?;
    o.forbid(&["domain_id"])?;
    let g = state.identity_write(|tx| {
        let mut g = tx.fetch::<Group>(&id)?;
        if let Some(n) = o.name("name")? {
            g.name = n;
        }
        if o.has("description") {
            g.description = o.str("description")?.unwrap_or_default();
        }
        let name = g.name.clone();
        tx.update(&g).map_err(conflict_as("group", &name))?;
        Ok(g)
    })?;
    Ok(axum::Json(
        json!({"group": super::views::group(&state, &g)}),
    ))
}

async fn remove(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    ctx.require_admin("identity:delete_group")?;
    state.identity_write(|tx| super::cascade::delete_group(tx, &id))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn members(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    let g = state.store.fetch::<Group>(&id)?;
    ctx.allow(
        ctx.can_read_domain_objects(&g.domain_id),
        "identity:list_users_in_group",
    )?;
    let mut items = Vec::new();
    for m in state.store.list::<Membership>(&Q::parent(&id))? {
        if let Some(u) = state.store.get::<User>(&m.user_id)? {
            items.push(super::views::user(&state, &u));
        }
    }
    Ok(list_body(
        &state,
        "users",
        &format!("groups/{id}/users"),
        filter(items, &q),
    ))
}

async fn check_member(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, user_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let g = state.store.fetch::<Group>(&id)?;
    state.store.fetch::<User>(&user_id)?;
    ctx.allow(
        ctx.user_id() == user_id || ctx.can_read_domain_objects(&g.domain_id),
        "identity:check_user_in_group",
    )?;
    match state
        .store
        .get::<Membership>(&Membership::new(&id, &user_id).id)?
    {
        Some(_) => Ok(StatusCode::NO_CONTENT),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("User {user_id} is not a member of group {id}."),
        )),
    }
}

async fn add_member(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, user_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    ctx.require_admin("identity:add_user_to_group")?;
    state.identity_write(|tx| {
        tx.fetch::<Group>(&id)?;
        tx.fetch::<User>(&user_id)?;
        tx.upsert(&Membership::new(&id, &user_id))?;
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove_member(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, user_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    ctx.require_admin("identity:remove_user_from_group")?;
    state.identity_write(|tx| {
        tx.fetch::<Group>(&id)?;
        tx.fetch::<User>(&user_id)?;
        if !tx.delete::<Membership>(&Membership::new(&id, &user_id).id)? {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("User {user_id} is not a member of group {id}."),
            ));
        }
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}
