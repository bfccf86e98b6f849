//! `/v3/users/{id}/application_credentials`: credentials a user makes for
//! an application, bound to one project and a subset of the user's roles
//! there. The secret is shown once, at creation; only its hash is kept.
//! Access rules named at creation are kept as the user's shared records
//! (see `access_rules`).

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use stratus_store::Query as Q;

use super::model::*;
use super::policy::Ctx;
use super::{Obj, conflict_as, filter, list_body, new_id, self_link};
use crate::json::Json;
use crate::timeutil::{iso_naive, now_us, parse_iso};
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/users/{user_id}/application_credentials",
            get(list).post(create),
        )
        .route(
            "/users/{user_id}/application_credentials/{id}",
            get(show).delete(remove),
        )
}

fn view(state: &AppState, a: &AppCredential) -> Result<Value, ApiError> {
    let mut roles = Vec::new();
    for rid in &a.role_ids {
        if let Some(r) = state.store.get::<Role>(rid)? {
            roles.push(json!({"id": r.id, "name": r.name, "domain_id": r.domain_id}));
        }
    }
    Ok(json!({
        "id": a.id,
        "name": a.name,
        "description": a.description,
        "user_id": a.user_id,
        "project_id": a.project_id,
        "roles": roles,
        "expires_at": a.expires_at_us.map(iso_naive),
        "unrestricted": a.unrestricted,
        "access_rules": a.access_rules,
        "system": null,
        "links": self_link(state, &format!("users/{}/application_credentials/{}", a.user_id, a.id)),
    }))
}

fn owner_or_admin(ctx: &Ctx, user_id: &str, action: &str) -> Result<(), ApiError> {
    ctx.allow(ctx.user_id() == user_id || ctx.system_reader(), action)
}

async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(user_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    owner_or_admin(&ctx, &user_id, "identity:list_application_credentials")?;
    state.store.fetch::<User>(&user_id)?;
    let mut items = Vec::new();
    for a in state.store.list::<AppCredential>(&Q::owner(&user_id))? {
        items.push(view(&state, &a)?);
    }
    Ok(list_body(
        &state,
        "application_credentials",
        &format!("users/{user_id}/application_credentials"),
        filter(items, &q),
    ))
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((user_id, id)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    owner_or_admin(&ctx, &user_id, "identity:get_application_credential")?;
    let a = state.store.fetch::<AppCredential>(&id)?;
    if a.user_id != user_id {
        return Err(ApiError::not_found("application credential", &id));
    }
    Ok(axum::Json(
        json!({"application_credential": view(&state, &a)?}),
    ))
}

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(user_id): Path<String>,
    Json(body): Json<Value>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    if ctx.user_id() != user_id {
        return Err(ApiError::forbidden(
            "identity:create_application_credential",
        ));
    }
    if ctx.restricted() {
        return Err(ApiError::forbidden(
            "identity:create_application_credential (a restricted application credential cannot create another)",
        ));
    }
    if ctx.trust.is_some() {
        return Err(ApiError::forbidden(
            "identity:create_application_credential (a trust-scoped token cannot create an application credential)",
        ));
    }
    let project_id = ctx
        .project_id()
        .ok_or_else(|| {
            ApiError::forbidden(
                "identity:create_application_credential (a project-scoped token is required)",
            )
        })?
        .to_string();
    let o = Obj::from_body(body, "application_credential")?;
    let name = o.name("name")?.ok_or_else(|| {
        ApiError::bad_request(
            "Invalid input for field 'application_credential': 'name' is a required property.",
        )
    })?;
    let secret = match o.str("secret")? {
        Some(s) if s.is_empty() => {
            return Err(ApiError::bad_request(
                "Invalid input for field 'application_credential.secret': it is empty.",
            ));
        }
        Some(s) => s,
        None => super::bootstrap::random_secret(48),
    };
    let expires_at_us = match o.str("expires_at")? {
        None => None,
        Some(s) => {
            let t = parse_iso(&s).ok_or_else(|| {
                ApiError::bad_request(format!("Invalid input for field 'application_credential.expires_at': '{s}' is not a date-time."))
            })?;
            if t <= now_us() {
                return Err(ApiError::bad_request(
                    "The application credential would already have expired.",
                ));
            }
            Some(t)
        }
    };
    // Roles: a subset of the token's roles; by default all of them.
    let mut role_ids = Vec::new();
    match o.value("roles") {
        None | Some(Value::Null) => role_ids.extend(ctx.roles.iter().map(|r| r.id.clone())),
        Some(Value::Array(list)) if list.is_empty() => {
            role_ids.extend(ctx.roles.iter().map(|r| r.id.clone()))
        }
        Some(Value::Array(list)) => {
            for r in list {
                let found = match (
                    r.get("id").and_then(Value::as_str),
                    r.get("name").and_then(Value::as_str),
                ) {
                    (Some(id), _) => ctx.roles.iter().find(|x| x.id == id),
                    (None, Some(n)) => ctx.roles.iter().find(|x| x.name == n),
                    _ => {
                        return Err(ApiError::bad_request(
                            "Each role needs an 'id' or a 'name'.",
                        ));
                    }
                };
                let found = found.ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "Invalid application credential: you do not hold role {r} on project {project_id}."
                    ))
                })?;
                if !role_ids.contains(&found.id) {
                    role_ids.push(found.id.clone());
                }
            }
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "Invalid input for field 'application_credential.roles': it must be a list.",
            ));
        }
    }
    let rule_specs = match o.value("access_rules") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "Invalid input for field 'application_credential.access_rules': it must be a list.",
            ));
        }
    };
    let secret_hash = state.identity.hashing.hash(secret.clone()).await?;
    let mut a = AppCredential {
        id: new_id(),
        name: name.clone(),
        user_id,
        project_id,
        description: o.str("description")?,
        secret_hash,
        expires_at_us,
        role_ids,
        unrestricted: o.bool("unrestricted")?.unwrap_or(false),
        access_rules: Vec::new(),
    };
    state.identity_write(|tx| {
        a.access_rules = super::access_rules::resolve(tx, &a.user_id, &rule_specs)?;
        tx.insert(&a)
            .map_err(conflict_as("application_credential", &name))
    })?;
    let mut v = view(&state, &a)?;
    v["secret"] = json!(secret);
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"application_credential": v})),
    ))
}

async fn remove(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((user_id, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    ctx.allow(
        ctx.user_id() == user_id && !ctx.restricted(),
        "identity:delete_application_credential",
    )?;
    state.identity_write(|tx| {
        let a = tx.fetch::<AppCredential>(&id)?;
        if a.user_id != user_id {
            return Err(ApiError::not_found("application credential", &id));
        }
        tx.delete::<AppCredential>(&id)?;
        Ok(())
    })?;
    state.revoke(Revocation {
        app_cred_id: Some(id),
        issued_before_us: now_us(),
        ..Revocation::default()
    })?;
    Ok(StatusCode::NO_CONTENT)
}
