//! What a node agent's own identity may do beyond its agent endpoints:
//! join (`POST /edge/v1/join`, redeeming a join token for the node's
//! credential, see `identity::node_users`), and reach the image data of
//! the servers assigned to it: read the images they boot or are rescued
//! from (including private images of other projects, shelved and
//! transfer images) and the images asked to be cached ahead on the node,
//! and upload the image a snapshot, shelve or migration of one of its
//! servers writes, while that task runs.

use std::collections::HashSet;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use stratus_store::Query as StoreQuery;
use stratus_wire::JoinReply;

use super::model::{ComputeNode, Server};
use crate::identity::node_users;
use crate::identity::policy::Ctx;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new().route("/edge/v1/join", post(join))
}

pub use stratus_wire::JoinRequest;

async fn join(
    State(state): State<AppState>,
    raw: Bytes,
) -> Result<(StatusCode, axum::Json<JoinReply>), ApiError> {
    let r: JoinRequest = crate::json::decode(&raw)?;
    let st = state.clone();
    let cred = tokio::task::spawn_blocking(move || node_users::redeem(&st, &r.join_token, &r.host))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok((StatusCode::CREATED, axum::Json(JoinReply { node: cred })))
}

/// The images `host`'s servers use now (boot, rescue, the image a task
/// writes) and the images it is asked to cache ahead.
fn node_images(state: &AppState, host: &str) -> Result<HashSet<String>, ApiError> {
    let mut out = HashSet::new();
    for s in state.store.list::<Server>(&StoreQuery::parent(host))? {
        if s.host.as_deref() != Some(host) {
            continue;
        }
        let a = super::service::assignment(state, &s)?;
        out.insert(a.image_id);
        out.extend(a.rescue.map(|r| r.image_id));
        out.extend(a.snapshot_image_id);
    }
    if let Some(n) = state.store.get::<ComputeNode>(host)? {
        out.extend(n.precache);
    }
    Ok(out)
}

/// Whether the caller is a node agent that may read image `image_id`.
pub fn node_may_read(state: &AppState, ctx: &Ctx, image_id: &str) -> Result<bool, ApiError> {
    match ctx.node_host() {
        Some(host) => Ok(node_images(state, host)?.contains(image_id)
            || crate::volume::service::makes_from_image(state, host, image_id)?),
        None => Ok(false),
    }
}

/// Whether the caller is a node agent that may upload the data of image
/// `image_id`: the image a running snapshot-like task of one of its
/// servers writes.
pub fn node_may_upload(state: &AppState, ctx: &Ctx, image_id: &str) -> Result<bool, ApiError> {
    let Some(host) = ctx.node_host() else {
        return Ok(false);
    };
    for s in state.store.list::<Server>(&StoreQuery::parent(host))? {
        if s.host.as_deref() != Some(host) || s.task_state.is_none() {
            continue;
        }
        let a = super::service::assignment(state, &s)?;
        if a.snapshot_image_id.as_deref() == Some(image_id) {
            return Ok(true);
        }
    }
    Ok(false)
}
