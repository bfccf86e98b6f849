//! Managing existing storage (3.8): `/manageable_volumes`,
//! `/manageable_snapshots` and their `detail` lists, and the manage
//! requests themselves.
//!
//! The file backend keeps only the files it made, named by the records'
//! ids; it has no foreign storage to offer. So the lists are empty, as
//! Cinder's are for a driver without the feature, and a request to
//! manage something is refused with a 400 that says why (Cinder would
//! accept it and leave the volume in `error_managing`).

use std::collections::HashMap;

use axum::Router;
use axum::extract::Query;
use axum::routing::get;
use serde_json::{Value, json};

use super::{Mv, VCtx};
use crate::ApiError;
use crate::AppState;

type J = Result<axum::Json<Value>, ApiError>;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/manageable_volumes", get(volumes).post(manage_volume))
        .route("/manageable_volumes/detail", get(volumes))
        .route(
            "/manageable_snapshots",
            get(snapshots).post(manage_snapshot),
        )
        .route("/manageable_snapshots/detail", get(snapshots))
}

fn check(ctx: &VCtx, mv: Mv, q: &HashMap<String, String>) -> Result<(), ApiError> {
    mv.require(8)?;
    ctx.admin("volume_extension:list_manageable")?;
    if !q.contains_key("host") && !q.contains_key("cluster") {
        return Err(ApiError::bad_request(
            "Invalid input received: host or cluster must be given.",
        ));
    }
    Ok(())
}

async fn volumes(ctx: VCtx, mv: Mv, Query(q): Query<HashMap<String, String>>) -> J {
    check(&ctx, mv, &q)?;
    Ok(axum::Json(json!({"manageable-volumes": []})))
}

async fn snapshots(ctx: VCtx, mv: Mv, Query(q): Query<HashMap<String, String>>) -> J {
    check(&ctx, mv, &q)?;
    Ok(axum::Json(json!({"manageable-snapshots": []})))
}

fn refuse(ctx: &VCtx, mv: Mv, rule: &str) -> J {
    mv.require(8)?;
    ctx.admin(rule)?;
    Err(ApiError::bad_request(
        "Invalid input received: the file backend manages only the volumes and snapshots it made; it cannot take over existing storage.",
    ))
}

async fn manage_volume(ctx: VCtx, mv: Mv) -> J {
    refuse(&ctx, mv, "volume_extension:volume_manage")
}

async fn manage_snapshot(ctx: VCtx, mv: Mv) -> J {
    refuse(&ctx, mv, "snapshot_extension:snapshot_manage")
}
