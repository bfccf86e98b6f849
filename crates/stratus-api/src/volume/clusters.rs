//! Clusters (`/clusters`, 3.7; 3.26 added replication fields to them):
//! the active/active groups of volume services. Stratus runs none (each
//! storage node is a service of its own), so, as a Cinder without
//! clusters answers, the lists are empty, a cluster is not found and
//! enabling or disabling one is a 404. Admins only, as in Cinder.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};

use super::{Mv, VCtx, body, not_found, param};
use crate::{ApiError, AppState};

type J = Result<axum::Json<Value>, ApiError>;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/clusters", get(list))
        .route("/clusters/detail", get(list))
        .route("/clusters/{name}", get(show).put(update))
}

/// The filters Cinder's cluster lists take (anything else is a 400).
const FILTERS: &[&str] = &[
    "name",
    "binary",
    "is_up",
    "disabled",
    "num_hosts",
    "num_down_hosts",
    "replication_status",
    "frozen",
    "active_backend_id",
];

async fn list(ctx: VCtx, mv: Mv, Query(q): Query<HashMap<String, String>>) -> J {
    mv.require(7)?;
    ctx.admin("clusters:get_all")?;
    if let Some(k) = q.keys().find(|k| !FILTERS.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "Invalid input received: Invalid filter keys: {k}"
        )));
    }
    Ok(axum::Json(json!({"clusters": []})))
}

async fn show(ctx: VCtx, mv: Mv, Path(p): Path<HashMap<String, String>>) -> J {
    mv.require(7)?;
    ctx.admin("clusters:get")?;
    Err(not_found("Cluster", &param(&p, "name")))
}

/// `PUT /clusters/enable` and `/clusters/disable` (the path's last part
/// is the action, as in Cinder).
async fn update(
    ctx: VCtx,
    mv: Mv,
    Path(p): Path<HashMap<String, String>>,
    raw: Bytes,
) -> Result<StatusCode, ApiError> {
    mv.require(7)?;
    ctx.admin("clusters:update")?;
    let action = param(&p, "name");
    if action != "enable" && action != "disable" {
        return Err(not_found("Action", &action));
    }
    let b = body(&raw)?;
    let name = b
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("Missing required element 'name' in request body."))?;
    Err(not_found("Cluster", name))
}
