//! A server's addresses by network (`/servers/{id}/ips`,
//! `/servers/{id}/ips/{network}`): Nova's `ips` API, the `addresses` of
//! the server without the extended attributes.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};

use super::common::{fetch, require_reader};
use crate::identity::policy::Ctx;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/servers/{id}/ips", get(index))
        .route("/servers/{id}/ips/{network}", get(by_network))
}

/// Per network name, `{"version", "addr"}` of each address.
fn addresses(
    state: &AppState,
    ctx: &Ctx,
    id: &str,
) -> Result<BTreeMap<String, Vec<Value>>, ApiError> {
    let s = fetch(state, ctx, id)?;
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for n in &s.nics {
        let list = out.entry(n.network_name.clone()).or_default();
        for ip in &n.ips {
            list.push(json!({"version": if ip.contains(':') { 6 } else { 4 }, "addr": ip}));
        }
    }
    Ok(out)
}

async fn index(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    require_reader(&ctx, "os_compute_api:ips:index")?;
    Ok(axum::Json(
        json!({"addresses": addresses(&state, &ctx, &id)?}),
    ))
}

async fn by_network(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, network)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    require_reader(&ctx, "os_compute_api:ips:show")?;
    let mut all = addresses(&state, &ctx, &id)?;
    match all.remove(&network) {
        Some(list) => Ok(axum::Json(json!({ network: list }))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "Instance is not a member of specified network",
        )),
    }
}
