//! `/v3/users/{id}/access_rules`: the access rules a user's application
//! credentials are limited to. Rules are made when a credential names
//! them; identical rules of one user are one record with one id. A rule
//! stays after its credentials are gone, until deleted here; it cannot be
//! deleted while a credential uses it.
//!
//! The rules are kept, shown and carried in tokens
//! (`application_credential.access_rules`), but not enforced on other
//! services' requests: Stratus has no middleware matching requests against
//! them yet.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Map, Value, json};
use stratus_store::{Query as Q, Tx};

use super::model::*;
use super::policy::Ctx;
use super::{list_body, new_id};
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/users/{user_id}/access_rules", get(list))
        .route(
            "/users/{user_id}/access_rules/{id}",
            get(show).delete(remove),
        )
}

/// `{id, service, path, method}`, as Keystone shows a rule.
pub fn view(r: &AccessRule) -> Value {
    json!({"id": r.id, "service": r.service, "path": r.path, "method": r.method})
}

const METHODS: &[&str] = &["POST", "GET", "HEAD", "PATCH", "PUT", "DELETE"];

/// Resolves the `access_rules` of an application credential create for
/// `user_id` into stored rules, reusing the user's identical ones (or the
/// one named by `id`) and creating the others. Returns the rendered rules.
pub fn resolve(tx: &Tx, user_id: &str, rules: &[Value]) -> Result<Vec<Value>, ApiError> {
    let bad = |what: &str| {
        ApiError::bad_request(format!(
            "Invalid input for field 'application_credential.access_rules': {what}."
        ))
    };
    let mut existing = tx.list::<AccessRule>(&Q::owner(user_id))?;
    let mut out = Vec::new();
    for item in rules {
        let obj: &Map<String, Value> = item
            .as_object()
            .ok_or_else(|| bad("each rule must be an object"))?;
        if let Some(k) = obj
            .keys()
            .find(|k| !matches!(k.as_str(), "id" | "service" | "path" | "method"))
        {
            return Err(bad(&format!("'{k}' is not an access rule property")));
        }
        let field = |k: &str| -> Result<Option<String>, ApiError> {
            match obj.get(k) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(bad(&format!("'{k}' must be a string"))),
            }
        };
        let id = field("id")?;
        if let Some(id) = &id
            && let Some(r) = existing.iter().find(|r| r.id == *id)
        {
            out.push(view(r));
            continue;
        }
        let (Some(service), Some(path), Some(method)) =
            (field("service")?, field("path")?, field("method")?)
        else {
            return Err(bad("a rule needs 'service', 'path' and 'method'"));
        };
        if service.is_empty() || service.len() > 64 {
            return Err(bad("'service' must be 1 to 64 characters"));
        }
        if !path.starts_with('/') || path.len() > 225 {
            return Err(bad(
                "'path' must start with '/' and be at most 225 characters",
            ));
        }
        if !METHODS.contains(&method.as_str()) {
            return Err(bad(&format!(
                "'method' must be one of {}",
                METHODS.join(", ")
            )));
        }
        if let Some(r) = existing
            .iter()
            .find(|r| r.service == service && r.path == path && r.method == method)
        {
            out.push(view(r));
            continue;
        }
        let id = match id {
            Some(id) if tx.get::<AccessRule>(&id)?.is_some() => {
                return Err(ApiError::not_found("access rule", &id));
            }
            Some(id) => id,
            None => new_id(),
        };
        let r = AccessRule {
            id,
            user_id: user_id.to_string(),
            service,
            path,
            method,
        };
        tx.insert(&r)?;
        out.push(view(&r));
        existing.push(r);
    }
    Ok(out)
}

fn reader(ctx: &Ctx, user_id: &str, action: &str) -> Result<(), ApiError> {
    ctx.allow(ctx.user_id() == user_id || ctx.system_reader(), action)
}

fn fetch(state: &AppState, user_id: &str, id: &str) -> Result<AccessRule, ApiError> {
    state
        .store
        .get::<AccessRule>(id)?
        .filter(|r| r.user_id == user_id)
        .ok_or_else(|| ApiError::not_found("access rule", id))
}

async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(user_id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    reader(&ctx, &user_id, "identity:list_access_rules")?;
    let items = state
        .store
        .list::<AccessRule>(&Q::owner(&user_id))?
        .iter()
        .map(view)
        .collect();
    Ok(list_body(
        &state,
        "access_rules",
        &format!("users/{user_id}/access_rules"),
        items,
    ))
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((user_id, id)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    reader(&ctx, &user_id, "identity:get_access_rule")?;
    let r = fetch(&state, &user_id, &id)?;
    let mut v = view(&r);
    v["links"] = super::self_link(&state, &format!("users/{user_id}/access_rules/{id}"));
    Ok(axum::Json(json!({"access_rule": v})))
}

async fn remove(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((user_id, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    ctx.allow(ctx.user_id() == user_id, "identity:delete_access_rule")?;
    state.identity_write(|tx| {
        let r = tx
            .get::<AccessRule>(&id)?
            .filter(|r| r.user_id == user_id)
            .ok_or_else(|| ApiError::not_found("access rule", &id))?;
        let in_use = tx
            .list::<AppCredential>(&Q::owner(&user_id))?
            .iter()
            .any(|ac| ac.access_rules.iter().any(|a| a["id"] == r.id.as_str()));
        if in_use {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "May not delete access rule in use",
            ));
        }
        tx.delete::<AccessRule>(&id)?;
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}
