//! `/servers/{id}/os-server-password`: the encrypted password a guest
//! posts to the metadata service, in Nova. No guest here posts one (the
//! metadata service takes no password), so it is always empty, and
//! clearing it changes nothing.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::common::{fetch, require_member, require_reader};
use crate::identity::policy::Ctx;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new().route("/servers/{id}/os-server-password", get(show).delete(clear))
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    require_reader(&ctx, "os_compute_api:os-server-password:show")?;
    fetch(&state, &ctx, &id)?;
    Ok(axum::Json(json!({"password": ""})))
}

async fn clear(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_member(&ctx, "os_compute_api:os-server-password:clear")?;
    fetch(&state, &ctx, &id)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
