//! `/v3/auth/*`: issuing, validating and revoking tokens, and what a token
//! may be scoped to.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::model::Revocation;
use super::policy::Ctx;
use super::service::{self, AuthBody, Invalid, Target};
use super::{domains, flag, list_body, projects};
use crate::json::Json;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/auth/tokens",
            get(validate_token)
                .head(check_token)
                .post(issue_token)
                .delete(revoke_token),
        )
        .route("/auth/catalog", get(auth_catalog))
        .route("/auth/projects", get(auth_projects))
        .route("/auth/domains", get(auth_domains))
        .route("/auth/system", get(auth_system))
}

fn token_response(status: StatusCode, token: &str, body: &str) -> Response {
    let mut resp = (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(token) {
        resp.headers_mut().insert("x-subject-token", v);
    }
    resp
}

async fn issue_token(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    Json(body): Json<AuthBody>,
) -> Result<Response, ApiError> {
    let data = service::authenticate(&state, &body).await?;
    let token = service::issue(&state, &data);
    let v = service::validate_opts(&state, &token, false, false).map_err(|e| match e {
        Invalid::Store(e) => e,
        _ => ApiError::unauthorized(),
    })?;
    let body = v.body(&state, !flag(&q, "nocatalog"));
    Ok(token_response(StatusCode::CREATED, &token, body))
}

/// What is done with a subject token; each has Keystone's own rule.
#[derive(Clone, Copy, PartialEq)]
enum TokenAction {
    /// GET: admin, system reader, a `service` user, or the token's owner.
    Validate,
    /// HEAD: admin, system reader, or the owner.
    Check,
    /// DELETE: admin or the owner.
    Revoke,
}

/// The subject token of a validate/check/revoke call, with policy applied.
fn subject(
    state: &AppState,
    ctx: &Ctx,
    headers: &HeaderMap,
    allow_expired: bool,
    action: TokenAction,
) -> Result<(String, std::sync::Arc<service::Validated>), ApiError> {
    let tok = headers
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::not_found("token", "(no X-Subject-Token given)"))?;
    let not_found = || ApiError::not_found("token", tok);
    let v = match service::validate(state, tok, allow_expired) {
        Ok(v) => v,
        Err(Invalid::Store(e)) => return Err(e),
        Err(_) => return Err(not_found()),
    };
    let owner = v.user.id == ctx.user_id();
    let (ok, rule) = match action {
        TokenAction::Validate => (
            owner || ctx.system_reader() || ctx.has_role("service"),
            "identity:validate_token",
        ),
        TokenAction::Check => (owner || ctx.system_reader(), "identity:check_token"),
        TokenAction::Revoke => (owner, "identity:revoke_token"),
    };
    ctx.allow(ok, rule)?;
    Ok((tok.to_string(), v))
}

async fn validate_token(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (tok, v) = subject(
        &state,
        &ctx,
        &headers,
        flag(&q, "allow_expired"),
        TokenAction::Validate,
    )?;
    Ok(token_response(
        StatusCode::OK,
        &tok,
        v.body(&state, !flag(&q, "nocatalog")),
    ))
}

async fn check_token(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (tok, _) = subject(
        &state,
        &ctx,
        &headers,
        flag(&q, "allow_expired"),
        TokenAction::Check,
    )?;
    let mut resp = StatusCode::OK.into_response();
    if let Ok(v) = HeaderValue::from_str(&tok) {
        resp.headers_mut().insert("x-subject-token", v);
    }
    Ok(resp)
}

async fn revoke_token(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let (_, v) = subject(&state, &ctx, &headers, false, TokenAction::Revoke)?;
    let audit = v.data.audit_strings().into_iter().next();
    state.revoke(Revocation {
        audit_id: audit,
        issued_before_us: v.data.issued_us,
        ..Revocation::default()
    })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn auth_catalog(
    State(state): State<AppState>,
    ctx: Ctx,
) -> Result<axum::Json<Value>, ApiError> {
    if ctx.data.scope == super::token::Scope::Unscoped {
        return Err(ApiError::forbidden(
            "identity:get_auth_catalog (a catalog cannot be returned for an unscoped token)",
        ));
    }
    Ok(axum::Json(json!({
        "catalog": service::catalog(&state, ctx.user_id(), ctx.project_id())?,
        "links": {"self": state.identity_url("auth/catalog"), "previous": null, "next": null}
    })))
}

async fn auth_projects(
    State(state): State<AppState>,
    ctx: Ctx,
) -> Result<axum::Json<Value>, ApiError> {
    let projects = service::user_projects(&state.store, ctx.user_id())?
        .into_iter()
        .filter(|p| p.enabled)
        .map(|p| projects::view(&state, &p))
        .collect();
    Ok(list_body(&state, "projects", "auth/projects", projects))
}

async fn auth_domains(
    State(state): State<AppState>,
    ctx: Ctx,
) -> Result<axum::Json<Value>, ApiError> {
    let list = service::user_domains(&state.store, ctx.user_id())?
        .into_iter()
        .filter(|d| d.enabled)
        .map(|d| domains::view(&state, &d))
        .collect();
    Ok(list_body(&state, "domains", "auth/domains", list))
}

async fn auth_system(
    State(state): State<AppState>,
    ctx: Ctx,
) -> Result<axum::Json<Value>, ApiError> {
    let has =
        !service::effective_role_ids(&state.store, ctx.user_id(), &Target::System)?.is_empty();
    let system = if has {
        json!([{"all": true}])
    } else {
        json!([])
    };
    Ok(axum::Json(json!({
        "system": system,
        "links": {"self": state.identity_url("auth/system"), "previous": null, "next": null}
    })))
}
