//! `/v3/OS-TRUST/trusts`: a trustor delegates some of its roles on a
//! project to a trustee, who then authenticates with an
//! `OS-TRUST:trust` scope (see `service::authenticate`).
//!
//! Policy is Keystone's default: the trustor creates and deletes; the
//! trustor, the trustee, an admin or a system reader reads. Redelegation
//! (a trust made from a trust-scoped token) is not offered: asking for it
//! is a 403 that says so.

use std::collections::{HashMap, HashSet};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use stratus_store::{Query as Q, StoreError};

use super::model::*;
use super::policy::Ctx;
use super::service::{self, Target};
use super::{Obj, list_body, new_id, roles};
use crate::json::Json;
use crate::timeutil::{iso_us, now_us, parse_iso};
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/OS-TRUST/trusts", get(list).post(create))
        .route("/OS-TRUST/trusts/", get(list).post(create))
        .route("/OS-TRUST/trusts/{id}", get(show).delete(remove))
        .route("/OS-TRUST/trusts/{id}/roles", get(list_roles))
        .route("/OS-TRUST/trusts/{id}/roles/{role_id}", get(show_role))
}

/// Fields the create body may carry besides extra attributes.
const KNOWN: &[&str] = &[
    "trustor_user_id",
    "trustee_user_id",
    "project_id",
    "impersonation",
    "roles",
    "expires_at",
    "remaining_uses",
    "allow_redelegation",
    "redelegation_count",
    "roles_links",
];

/// The summary Keystone lists (no roles).
fn summary(state: &AppState, t: &Trust) -> Value {
    let mut v = json!({
        "id": t.id,
        "trustor_user_id": t.trustor_user_id,
        "trustee_user_id": t.trustee_user_id,
        "project_id": t.project_id,
        "impersonation": t.impersonation,
        "expires_at": t.expires_at_us.map(iso_us),
        "remaining_uses": t.remaining_uses,
        "redelegated_trust_id": null,
        "redelegation_count": 0,
        "links": {"self": state.identity_url(&format!("OS-TRUST/trusts/{}", t.id))},
    });
    for (k, x) in &t.extra {
        v[k] = x.clone();
    }
    v
}

fn role_views(state: &AppState, t: &Trust) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::new();
    for rid in &t.role_ids {
        if let Some(r) = state.store.get::<Role>(rid)? {
            out.push(roles::view(state, &r));
        }
    }
    Ok(out)
}

fn roles_links(state: &AppState, t: &Trust) -> Value {
    json!({
        "self": state.identity_url(&format!("OS-TRUST/trusts/{}/roles", t.id)),
        "previous": null,
        "next": null,
    })
}

fn view(state: &AppState, t: &Trust) -> Result<Value, ApiError> {
    let mut v = summary(state, t);
    v["roles"] = json!(role_views(state, t)?);
    v["roles_links"] = roles_links(state, t);
    Ok(v)
}

/// A trust that exists, has not expired and has uses left, else 404.
fn live(state: &AppState, id: &str) -> Result<Trust, ApiError> {
    service::live_trust(&state.store, id)?.ok_or_else(|| ApiError::not_found("trust", id))
}

fn party(ctx: &Ctx, t: &Trust) -> bool {
    ctx.user_id() == t.trustor_user_id || ctx.user_id() == t.trustee_user_id
}

/// Keystone refuses trust management with a restricted application
/// credential.
fn unrestricted(ctx: &Ctx) -> Result<(), ApiError> {
    if ctx.restricted() {
        return Err(ApiError::forbidden(
            "Using method 'application_credential' is not allowed for managing trusts",
        ));
    }
    Ok(())
}

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(body): Json<Value>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let o = Obj::from_body(body, "trust")?;
    let trustor = o.req_str("trustor_user_id")?;
    let trustee = o.req_str("trustee_user_id")?;
    let impersonation = o.bool("impersonation")?.ok_or_else(|| {
        ApiError::bad_request(
            "Invalid input for field 'trust': 'impersonation' is a required property.",
        )
    })?;
    let project_id = o.str("project_id")?;
    let remaining_uses = o.int("remaining_uses")?;
    if remaining_uses.is_some_and(|n| n < 1) {
        return Err(ApiError::bad_request(
            "Invalid input for field 'trust.remaining_uses': it must be a positive integer or null.",
        ));
    }
    let redelegation_count = o.int("redelegation_count")?;
    if redelegation_count.is_some_and(|n| n < 0) {
        return Err(ApiError::bad_request(
            "Invalid input for field 'trust.redelegation_count': it must not be negative.",
        ));
    }
    let expires = o.str("expires_at")?;
    let role_refs = match o.value("roles") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "Invalid input for field 'trust.roles': it must be a list.",
            ));
        }
    };
    unrestricted(&ctx)?;
    if ctx.trust.is_some() {
        return Err(ApiError::forbidden(
            "identity:create_trust (trust redelegation is not supported by this cloud: a trust-scoped token cannot create a trust)",
        ));
    }
    if o.bool("allow_redelegation")? == Some(true) && redelegation_count != Some(0) {
        return Err(ApiError::forbidden(
            "identity:create_trust (trust redelegation is not supported by this cloud: allow_redelegation must be false)",
        ));
    }
    if project_id.is_some() && role_refs.is_empty() {
        return Err(ApiError::forbidden("At least one role should be specified"));
    }
    if ctx.user_id() != trustor {
        return Err(ApiError::forbidden(
            "The authenticated user should match the trustor",
        ));
    }
    state.store.fetch::<User>(&trustee)?;
    let role_ids = resolve_roles(&state, &role_refs)?;
    // The trustor must hold every role on the project (implied ones count).
    let held: HashSet<String> = match &project_id {
        Some(p) => {
            state.store.fetch::<Project>(p)?;
            let mut actors: HashSet<String> = service::user_group_ids(&state.store, &trustor)?
                .into_iter()
                .collect();
            actors.insert(trustor.clone());
            let direct = service::applicable_assignments(
                &state.store,
                &actors,
                &Target::Project(p.clone()),
            )?
            .into_iter()
            .map(|a| a.role_id)
            .collect();
            service::expand_implied(&state.store, direct)?
        }
        None => HashSet::new(),
    };
    if let Some(missing) = role_ids.iter().find(|r| !held.contains(*r)) {
        return Err(ApiError::not_found("role", missing));
    }
    let expires_at_us = match expires {
        None => None,
        Some(s) => {
            let t = parse_iso(&s).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Invalid input for field 'trust.expires_at': '{s}' is not a valid date-time."
                ))
            })?;
            if t <= now_us() {
                return Err(ApiError::bad_request(
                    "The 'expires_at' must not be before now.",
                ));
            }
            Some(t)
        }
    };
    let t = Trust {
        id: new_id(),
        trustor_user_id: trustor,
        trustee_user_id: trustee,
        project_id,
        impersonation,
        role_ids,
        expires_at_us,
        remaining_uses,
        extra: o.extra(KNOWN),
    };
    state.identity_write(|tx| {
        tx.insert(&t).map_err(|e| match e {
            StoreError::Conflict(_) => ApiError::conflict(
                "Conflict occurred attempting to store trust - Duplicate entry found.",
            ),
            other => other.into(),
        })
    })?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"trust": view(&state, &t)?})),
    ))
}

/// Role references (`{"id"}` or `{"name"}` of a global role) to ids.
fn resolve_roles(state: &AppState, refs: &[Value]) -> Result<Vec<String>, ApiError> {
    let mut ids = Vec::new();
    for r in refs {
        let obj = r.as_object().filter(|m| m.len() == 1).ok_or_else(|| {
            ApiError::bad_request(
                "Invalid input for field 'trust.roles': each role is an object with only an 'id' or a 'name'.",
            )
        })?;
        let id = match (
            obj.get("id").and_then(Value::as_str),
            obj.get("name").and_then(Value::as_str),
        ) {
            (Some(id), _) => id.to_string(),
            (None, Some(name)) => {
                state
                    .store
                    .get_unique::<Role>(&format!("/{}", name.to_lowercase()))?
                    .ok_or_else(|| ApiError::not_found("role", name))?
                    .id
            }
            _ => {
                return Err(ApiError::bad_request(
                    "Invalid input for field 'trust.roles': each role needs an 'id' or a 'name'.",
                ));
            }
        };
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    let trusts = if let Some(u) = q.get("trustor_user_id") {
        ctx.allow(
            ctx.system_reader() || ctx.user_id() == u,
            "identity:list_trusts_for_trustor",
        )?;
        state.store.list::<Trust>(&Q::owner(u))?
    } else if let Some(u) = q.get("trustee_user_id") {
        ctx.allow(
            ctx.system_reader() || ctx.user_id() == u,
            "identity:list_trusts_for_trustee",
        )?;
        state.store.list::<Trust>(&Q::parent(u))?
    } else {
        ctx.allow(ctx.system_reader(), "identity:list_trusts")?;
        if q.is_empty() {
            state.store.list::<Trust>(&Q::all())?
        } else {
            // Keystone lists nothing for filters it does not know.
            Vec::new()
        }
    };
    let items = trusts.iter().map(|t| summary(&state, t)).collect();
    Ok(list_body(&state, "trusts", "OS-TRUST/trusts", items))
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let t = live(&state, &id)?;
    ctx.allow(ctx.system_reader() || party(&ctx, &t), "identity:get_trust")?;
    Ok(axum::Json(json!({"trust": view(&state, &t)?})))
}

async fn remove(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let t = live(&state, &id)?;
    ctx.allow(ctx.user_id() == t.trustor_user_id, "identity:delete_trust")?;
    unrestricted(&ctx)?;
    state.identity_write(|tx| {
        if !tx.delete::<Trust>(&id)? {
            return Err(ApiError::not_found("trust", &id));
        }
        Ok(())
    })?;
    state.revoke(Revocation {
        trust_id: Some(id),
        issued_before_us: now_us(),
        ..Revocation::default()
    })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_roles(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let t = live(&state, &id)?;
    ctx.allow(
        ctx.system_reader() || party(&ctx, &t),
        "identity:list_roles_for_trust",
    )?;
    Ok(axum::Json(json!({
        "roles": role_views(&state, &t)?,
        "links": roles_links(&state, &t),
    })))
}

async fn show_role(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, role_id)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    let t = live(&state, &id)?;
    ctx.allow(
        ctx.system_reader() || party(&ctx, &t),
        "identity:get_role_for_trust",
    )?;
    if !t.role_ids.contains(&role_id) {
        return Err(ApiError::not_found("role", &role_id));
    }
    let r = state.store.fetch::<Role>(&role_id)?;
    Ok(axum::Json(json!({"role": roles::view(&state, &r)})))
}

/// Deletes the trusts a user gives or receives (when the user is deleted).
pub fn delete_for_user(tx: &stratus_store::Tx, user_id: &str) -> Result<(), ApiError> {
    for t in tx.list::<Trust>(&Q::owner(user_id))? {
        tx.delete::<Trust>(&t.id)?;
    }
    for t in tx.list::<Trust>(&Q::parent(user_id))? {
        tx.delete::<Trust>(&t.id)?;
    }
    Ok(())
}

/// Deletes the trusts on a project (when the project is deleted).
pub fn delete_for_project(tx: &stratus_store::Tx, project_id: &str) -> Result<(), ApiError> {
    for t in tx.list::<Trust>(&Q::name(project_id))? {
        tx.delete::<Trust>(&t.id)?;
    }
    Ok(())
}
