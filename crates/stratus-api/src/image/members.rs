//! `/v2/images/{id}/members`: sharing an image with other projects.
//!
//! The owner adds and removes members of a `shared` image; each member
//! project accepts or rejects (only it can). The owner sees every member,
//! a member sees only itself.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use stratus_store::Query;

use super::model::{Image, Member, glance_time};
use super::{fetch_visible, require_owner_member, require_reader};
use crate::identity::model::Project;
use crate::identity::policy::Ctx;
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

/// Glance's `image_member_quota`.
const MAX_MEMBERS: usize = 128;
const STATUSES: &[&str] = &["pending", "accepted", "rejected"];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/images/{id}/members", get(list).post(add))
        .route(
            "/images/{id}/members/{member}",
            get(show).put(set_status).delete(remove),
        )
}

fn render(m: &Member) -> Value {
    json!({
        "image_id": m.image_id,
        "member_id": m.member_id,
        "status": m.status,
        "created_at": glance_time(m.created_at),
        "updated_at": glance_time(m.updated_at),
        "schema": "/v2/schemas/member",
    })
}

fn member_not_found(id: &str, member: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("Member {member} not found for image {id}."),
    )
}

/// The owner (or admin) sees all members; anyone else only themselves.
fn may_see(ctx: &Ctx, img: &Image, m: &Member) -> bool {
    ctx.is_admin()
        || img.is_owned_by(ctx.project_id())
        || ctx.project_id() == Some(m.member_id.as_str())
}

async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_reader(&ctx)?;
    let img = fetch_visible(&state, &ctx, &id)?;
    if img.visibility != "shared" {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "Only shared images have members: image {id} is {}.",
                img.visibility
            ),
        ));
    }
    let members: Vec<Value> = state
        .store
        .list::<Member>(&Query::parent(&id))?
        .iter()
        .filter(|m| may_see(&ctx, &img, m))
        .map(render)
        .collect();
    Ok(Json(
        json!({"members": members, "schema": "/v2/schemas/members"}),
    ))
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, member)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    require_reader(&ctx)?;
    let img = fetch_visible(&state, &ctx, &id)?;
    match state.store.get::<Member>(&Member::key(&id, &member))? {
        Some(m) if may_see(&ctx, &img, &m) => Ok(Json(render(&m))),
        _ => Err(member_not_found(&id, &member)),
    }
}

async fn add(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    crate::json::Json(body): crate::json::Json<Value>,
) -> Result<Json<Value>, ApiError> {
    require_reader(&ctx)?;
    let member = match body.get("member") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 255 => s.clone(),
        _ => {
            return Err(ApiError::bad_request(
                "Request body must be {\"member\": \"<project id>\"}.",
            ));
        }
    };
    let img = fetch_visible(&state, &ctx, &id)?;
    require_owner_member(&ctx, &img, "add members to")?;
    if img.visibility != "shared" {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "Not allowed to create members for image {id}: only images with visibility 'shared' have members (it is '{}').",
                img.visibility
            ),
        ));
    }
    if img.owner.as_deref() == Some(member.as_str()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "The owner of an image cannot be one of its members.",
        ));
    }
    // Glance does not check the project exists; we do when it is one of
    // ours, as a typo would otherwise share with nobody.
    if state.store.get::<Project>(&member)?.is_none() {
        tracing::info!(image = %id, member = %member, "sharing an image with a project this cloud does not know");
    }
    let now = now_us();
    let m = Member {
        id: Member::key(&id, &member),
        image_id: id.clone(),
        member_id: member.clone(),
        status: "pending".into(),
        created_at: now,
        updated_at: now,
    };
    state.store.write(|tx| {
        if tx.exists::<Member>(&m.id)? {
            return Err(ApiError::conflict(format!(
                "Member {member} already exists for image {id}."
            )));
        }
        if tx.list::<Member>(&Query::parent(&id))?.len() >= MAX_MEMBERS {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Maximum number of image members ({MAX_MEMBERS}) exceeded."),
            ));
        }
        tx.insert(&m)?;
        Ok(())
    })?;
    Ok(Json(render(&m)))
}

async fn set_status(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, member)): Path<(String, String)>,
    crate::json::Json(body): crate::json::Json<Value>,
) -> Result<Json<Value>, ApiError> {
    require_reader(&ctx)?;
    let new = match body.get("status").and_then(Value::as_str) {
        Some(s) if STATUSES.contains(&s) => s.to_string(),
        other => {
            return Err(ApiError::bad_request(format!(
                "Invalid status {}: it must be one of pending, accepted, rejected.",
                other.unwrap_or("(missing)")
            )));
        }
    };
    let img = fetch_visible(&state, &ctx, &id)?;
    let m = state.store.write(|tx| {
        let mut m = match tx.get::<Member>(&Member::key(&id, &member))? {
            Some(m) if may_see(&ctx, &img, &m) => m,
            _ => return Err(member_not_found(&id, &member)),
        };
        // Only the member project decides (Glance: even the owner cannot).
        if ctx.project_id() != Some(member.as_str()) || !ctx.has_role("member") {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("Only the member project {member} can accept or reject image {id}."),
            ));
        }
        m.status = new.clone();
        m.updated_at = now_us();
        tx.update(&m)?;
        Ok(m)
    })?;
    Ok(Json(render(&m)))
}

async fn remove(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, member)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    require_reader(&ctx)?;
    let img = fetch_visible(&state, &ctx, &id)?;
    require_owner_member(&ctx, &img, "remove members of")?;
    let gone = state
        .store
        .write(|tx| tx.delete::<Member>(&Member::key(&id, &member)))?;
    if !gone {
        return Err(member_not_found(&id, &member));
    }
    Ok(StatusCode::NO_CONTENT)
}
